//! The agent's clock: coarse monotonic milliseconds.
//!
//! `CLOCK_MONOTONIC_COARSE` is read from the vDSO without a system call (a few nanoseconds),
//! is async-signal-safe (`clock_gettime` is on POSIX's list) and has a resolution of one
//! kernel tick (1-4 ms), ample for watchdogs measured in hundreds of milliseconds.

use nix::time::{ClockId, clock_gettime};

/// Milliseconds since an arbitrary point (boot), never going backwards.
pub fn now_ms() -> u64 {
    // Cannot fail for a valid clock id (CLOCK_MONOTONIC_COARSE exists since Linux 2.6.32).
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(ts) => (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn advances() {
        let a = super::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = super::now_ms();
        assert!(b >= a + 20, "{a} -> {b}");
    }
}
