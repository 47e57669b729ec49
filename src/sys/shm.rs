//! Memory shared with forked children: an anonymous `MAP_SHARED` mapping holding a slice of
//! atomics-only values.
//!
//! The status board lives here so that a prefork server's workers, forked after
//! `lbagent_start`, report into the same board that the master's monitor thread reads.
//! Atomics in a shared mapping work across processes (they are address-free on the
//! platforms Rust supports for these types).

use std::io;
use std::ops::Deref;
use std::ptr::NonNull;

/// What a mapping may hold: types valid when all their bytes are zero (bytemuck's
/// `Zeroable`, derived, so checked field by field) and shared between threads. Only atomics
/// and arrays of them are put there: no pointers, which would mean nothing in another process.
pub(crate) use bytemuck::Zeroable;

/// A slice of `T` in a shared anonymous mapping, zero-filled at creation.
pub(crate) struct ShmSlice<T: Zeroable + Sync> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: `T` is `Sync`; the mapping is only accessed through `&[T]`.
unsafe impl<T: Zeroable + Sync> Send for ShmSlice<T> {}
// SAFETY: as above.
unsafe impl<T: Zeroable + Sync> Sync for ShmSlice<T> {}

impl<T: Zeroable + Sync> ShmSlice<T> {
    /// Maps `len` zeroed values shared with future children of this process.
    pub(crate) fn new(len: usize) -> io::Result<ShmSlice<T>> {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len.max(1))
            .ok_or_else(|| io::Error::other("shared memory size overflows"))?;
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // mmap returns page-aligned memory, enough for any atomic.
        let ptr =
            NonNull::new(ptr.cast::<T>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(ShmSlice { ptr, len, bytes })
    }
}

impl<T: Zeroable + Sync> Deref for ShmSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the mapping holds `len` values of `T`, zero-filled (valid by `Zeroable`),
        // aligned, and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable + Sync> Drop for ShmSlice<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference outlives `self`. Other
        // processes keep their own mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn shared_with_a_forked_child() {
        let shm = ShmSlice::<AtomicU64>::new(4).unwrap();
        assert!(shm.iter().all(|a| a.load(Ordering::Relaxed) == 0));
        // SAFETY: the child only stores to the mapping and exits at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            shm[2].store(42, Ordering::Release);
            // SAFETY: leave the child without running the test harness' destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(shm[2].load(Ordering::Acquire), 42);
    }
}
