//! `lbagent_drain`: how far a drain has come (`lbagent_drain_status`, `lbagent_wait_drained`).

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::agent::{lbagent, service_bytes, try_agent};
use super::error::lbagent_result;
use super::try_out;
use crate::status::Drain;

/// How far a drain of the whole server or of one service has come, as filled in by
/// `lbagent_drain_status` and `lbagent_wait_drained`.
///
/// A drain is complete when the answer says "no new connections" (`draining`), every prober
/// (a director's source address and kind of check: UDP protocol v1, text line, HAProxy
/// agent-check, HTTP) seen within `drain_window_ms` has been told so at least `drain_confirm`
/// times in a row, and the work in progress reported with `lbagent_set_load` is 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct lbagent_drain {
    /// 1 when complete, 0 otherwise.
    pub complete: c_int,
    /// 1 while the answer says "no new connections" (any state but UP, or UP at weight 0).
    pub draining: c_int,
    /// Probers seen within `drain_window_ms` that were told at least `drain_confirm` times.
    pub probers_told: u32,
    /// Probers seen within `drain_window_ms` that were not (yet).
    pub probers_pending: u32,
    /// 1 when more probers asked within the window than the agent tracks (256): the drain
    /// cannot be complete until the window passes without that.
    pub probers_untracked: c_int,
    /// Milliseconds since the answer stopped saying "serving" (0 while serving).
    pub drain_ms: u32,
    /// Work in progress reported with `lbagent_set_load` (for the whole server, the sum over
    /// the server and its services).
    pub in_use: u64,
    /// The state answered (`LBAGENT_STATE_*`).
    pub state: c_int,
}

impl lbagent_drain {
    fn from_drain(d: &Drain) -> lbagent_drain {
        lbagent_drain {
            complete: c_int::from(d.complete),
            draining: c_int::from(d.draining),
            probers_told: d.probers_told,
            probers_pending: d.probers_pending,
            probers_untracked: c_int::from(d.probers_untracked),
            drain_ms: d.drain_ms,
            in_use: d.in_use,
            state: d.state as c_int,
        }
    }
}

/// Fills `*out` with how far a drain of `service` (NULL or "" = the whole server) has come.
/// To drain: set `LBAGENT_STATE_DRAIN` (or weight 0), keep serving, and stop once `complete`
/// is 1 (or use `lbagent_wait_drained`).
///
/// Returns `LBAGENT_OK`; `LBAGENT_ERR_UNKNOWN_SERVICE`; `LBAGENT_ERR_WRONG_PROCESS` in a
/// process that does not answer probes (a forked worker: ask the master);
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. On error `*out` is untouched and
/// the last error is set.
///
/// Thread-safe; no lock, no allocation, never waits. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_drain_status(
    agent: *const lbagent,
    service: *const c_char,
    out: *mut lbagent_drain,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let service = service_bytes(service);
        let out = try_out(out, "out")?;
        let drain = agent.drain_status_bytes(service)?;
        out.write(lbagent_drain::from_drain(&drain));
        Ok(())
    })
}

/// Waits until the drain of `service` (NULL or "" = the whole server) is complete (see
/// `lbagent_drain`), for at most `timeout_ms` milliseconds (0: checks once, does not wait).
/// Looks every 10 ms; the agent keeps answering probes meanwhile on its own thread.
///
/// Returns `LBAGENT_OK` when complete, `LBAGENT_ERR_TIMEOUT` otherwise (the last error says
/// how far the drain came: probers told, pending, in_use; or that the answer still says
/// serving), or the errors of `lbagent_drain_status`.
///
/// Thread-safe. Blocks the calling thread: not for signal handlers nor for a single-threaded
/// event loop that must keep serving (use `lbagent_drain_status` from the loop instead).
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_wait_drained(
    agent: *mut lbagent,
    service: *const c_char,
    timeout_ms: u32,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let service = service_bytes(service);
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        agent.wait_drained_bytes(service, timeout)?;
        Ok(())
    })
}
