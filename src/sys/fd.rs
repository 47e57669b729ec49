//! Descriptors closed by number: a forked process's copies of descriptors that belong to
//! threads or objects of its parent (the monitor thread's poller, its open TCP connections,
//! the listening sockets of a prefork master).

use std::os::fd::RawFd;

/// Closes this process's copy of `fd`, which no live object of this process owns (the caller
/// forgets the object that held it). Errors are ignored: there is nothing left to release.
pub(crate) fn close_inherited(fd: RawFd) {
    if fd < 0 {
        return;
    }
    // SAFETY: per the caller's contract the descriptor is owned by nothing in this process
    // (its owner lives in the parent only, or is forgotten), so it is closed exactly once.
    unsafe { libc::close(fd) };
}
