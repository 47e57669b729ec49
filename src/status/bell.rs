//! The change bell: how the monitor thread hears at once that what directors are told has
//! changed, without costing the host a system call per call.
//!
//! Only while something listens for changes (a subscribed director, systemd, the log of
//! watchdog events) does the monitor set `wanted`. Then a change (never a call that repeats
//! what is set) rings: the first ring since the monitor last looked writes to an eventfd,
//! later ones only see `pending` set. So a burst of changes costs the host one `write` in all,
//! and an agent nobody subscribes to costs nothing more than before. `write` is
//! async-signal-safe (a SIGTERM handler that drains may ring), and the flags live in shared
//! memory with the rest of the board, so a prefork worker rings its master's monitor through
//! the inherited eventfd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sys::shm::{ShmSlice, Zeroable};

#[derive(Zeroable)]
#[repr(C)]
struct Flags {
    /// Set by the monitor while something listens for changes.
    wanted: AtomicU64,
    /// Set by the first ring since the monitor last looked; cleared by the monitor.
    pending: AtomicU64,
    /// Rings that wrote to the eventfd (for tests and benchmarks).
    writes: AtomicU64,
}

pub(crate) struct Bell {
    flags: ShmSlice<Flags>,
    fd: EventFd,
}

impl Bell {
    pub(crate) fn new() -> io::Result<Bell> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Bell {
            flags: ShmSlice::new(1)?,
            fd,
        })
    }

    fn flags(&self) -> &Flags {
        &self.flags[0]
    }

    /// Tells the monitor that something changed, if it listens. No lock, no allocation; at
    /// most one `write` until the monitor looks again. Async-signal-safe.
    #[inline]
    pub(crate) fn ring(&self) {
        let flags = self.flags();
        if flags.wanted.load(Ordering::Relaxed) == 0 {
            return;
        }
        // SeqCst pairs with `answered`: either the monitor's clearing comes first and this
        // ring writes, or this ring comes first and the monitor's look after clearing sees
        // the change that was stored before it.
        if flags.pending.swap(1, Ordering::SeqCst) == 0 {
            flags.writes.fetch_add(1, Ordering::Relaxed);
            let _ = self.fd.write(1);
        }
    }

    /// The monitor listens for changes (or stops listening).
    pub(crate) fn want(&self, on: bool) {
        self.flags().wanted.store(u64::from(on), Ordering::SeqCst);
    }

    /// The monitor looks: clears the eventfd and `pending`. Call before reading the board.
    pub(crate) fn answered(&self) {
        let _ = self.fd.read();
        // A read-modify-write: it reads the last ring's write, so what that ring's host stored
        // before it is visible to the monitor's look that follows.
        self.flags().pending.swap(0, Ordering::SeqCst);
    }

    /// How many rings wrote to the eventfd so far.
    pub(crate) fn writes(&self) -> u64 {
        self.flags().writes.load(Ordering::Relaxed)
    }

    /// The eventfd, for the monitor's poller.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_unless_wanted_and_one_write_per_look() {
        let bell = Bell::new().unwrap();
        bell.ring();
        assert_eq!(bell.writes(), 0, "nobody listens: no write");
        bell.want(true);
        for _ in 0..100 {
            bell.ring();
        }
        assert_eq!(
            bell.writes(),
            1,
            "a burst before the monitor looks: one write"
        );
        assert_eq!(bell.fd.read().unwrap(), 1);
        bell.answered();
        bell.ring();
        bell.ring();
        assert_eq!(bell.writes(), 2);
        bell.answered();
        bell.want(false);
        bell.ring();
        assert_eq!(bell.writes(), 2);
    }
}
