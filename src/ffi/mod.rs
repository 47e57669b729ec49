//! The C ABI: converts pointers, maps errors, catches panics; nothing else lives here.
//!
//! Every entry point is written literally as `#[unsafe(no_mangle)] pub extern "C" fn` so that
//! cbindgen reads it as written, and wraps its body in `ffi_boundary!` so that no panic ever
//! crosses into C. `include/lbagent.h` is generated from these files by build.rs.

// Entry points check every pointer before use; C callers cannot mark calls unsafe anyway.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// C names: `lbagent`, `lbagent_status`, `lbagent_result`.
#![allow(non_camel_case_types)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Runs the body, turning a panic into `$default`.
macro_rules! ffi_boundary {
    ($default:expr, $body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => $default,
        }
    };
}

mod agent;
mod checks;
mod error;
mod probe;
mod workers;

use std::ffi::{CStr, c_char};

/// The bytes of a NUL-terminated C string, reading at most `limit` bytes (a longer string is
/// cut there). `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to memory readable up to its NUL or `limit` bytes.
unsafe fn c_bytes<'a>(ptr: *const c_char, limit: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees readability up to the NUL or `limit`; strnlen reads no
    // further than either.
    let len = unsafe { libc::strnlen(ptr, limit) };
    // SAFETY: `len` bytes from `ptr` were just found readable.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// A whole C string (for configuration text, which has no natural limit). `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per the caller's contract.
        Some(unsafe { CStr::from_ptr(ptr) })
    }
}

/// Copies `text` into `buf` of `len` bytes as a NUL-terminated string, cut at a UTF-8
/// character boundary when it does not fit. Does nothing when `buf` is NULL or `len` is 0.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
unsafe fn copy_to_c_buffer(text: &[u8], buf: *mut c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    let cut = crate::wire::cut_utf8(text, len - 1);
    // SAFETY: `buf` is writable for `len` bytes and `cut.len() + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(cut.as_ptr(), buf.cast::<u8>(), cut.len());
        *buf.add(cut.len()) = 0;
    }
}
