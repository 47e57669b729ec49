//! This process's id, cached (`getpid` is a system call) and forgotten in forked children,
//! whether another process is alive, and the signal mask of the agent's own threads.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

static PID: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    // Async-signal-safe: a store. The child asks the kernel again on first use.
    PID.store(0, Ordering::Relaxed);
}

/// This process's id.
pub(crate) fn pid() -> u32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic (nix has no wrapper).
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// True when process `pid` exists (or exists and we may not signal it).
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 only checks for existence.
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == Errno::EPERM,
    }
}

/// Blocks SIGPIPE for the calling thread (an agent thread that writes to stderr): a closed
/// pipe then fails the write instead of killing the host process.
pub(crate) fn block_sigpipe_in_this_thread() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}
