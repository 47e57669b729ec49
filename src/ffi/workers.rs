//! Worker watchdog slots and fork support for `lbagent`.

use std::ffi::{c_int, c_uint};

use super::agent::{hot_agent, lbagent, try_agent};
use super::error::lbagent_result;
use super::{Failure, try_out};

/// Claims a worker watchdog slot (`workers=N` in the config) for the calling thread or
/// process and writes its number to `*slot`. Heart-beat it with `lbagent_worker_heartbeat`
/// more often than `worker_timeout_ms`; with `worker_policy=any` one stalled worker makes the
/// server DOWN (reason "worker stalled"), with `proportional` the weight follows the share of
/// live workers. Works across `fork()`: a prefork worker registers its own slot.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_FULL` (no slot configured or free: slots of processes
/// that died are taken back first), `LBAGENT_ERR_STOPPED`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`. Thread-safe. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_worker_register(
    agent: *mut lbagent,
    slot: *mut c_uint,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let out = try_out(slot, "slot")?;
        let index = agent.worker_register()?;
        out.write(c_uint::try_from(index).unwrap_or(c_uint::MAX));
        Ok(())
    })
}

/// Records that the worker in `slot` is alive.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_NOT_FOUND` (the slot is not registered),
/// `LBAGENT_ERR_STOPPED`, or `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Never sets
/// the last error.
///
/// Thread-safe; no lock, no system call, no allocation; async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_worker_heartbeat(agent: *mut lbagent, slot: c_uint) -> lbagent_result {
    hot!({ Ok(hot_agent(agent)?.worker_heartbeat(slot as usize)?) })
}

/// Releases the worker slot `slot` (a worker that exits cleanly).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_NOT_FOUND`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_worker_unregister(agent: *mut lbagent, slot: c_uint) -> lbagent_result {
    fallible!({ Ok(try_agent(agent)?.worker_unregister(slot as usize)?) })
}

/// Releases every worker slot registered by process `pid`: a prefork master calls it when it
/// reaps a worker (`waitpid`), so that a crashed worker stops counting as stalled once it is
/// replaced. Writes how many slots were released to `*released` (may be NULL).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` (pid <= 0), or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_worker_release_pid(
    agent: *mut lbagent,
    pid: c_int,
    released: *mut c_uint,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let pid = u32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Failure::invalid(format!("pid {pid} is not a process id")))?;
        let n = agent.worker_release_pid(pid);
        if !released.is_null() {
            // SAFETY: non-NULL, points to a writable unsigned int (optional out-parameter).
            unsafe { *released = c_uint::try_from(n).unwrap_or(c_uint::MAX) };
        }
        Ok(())
    })
}

/// Call in a child right after `fork()` when the child takes the agent over (a daemonizing
/// server whose parent exits): starts the monitor, logger and check threads in the child,
/// over the inherited sockets and the shared status board. From then on the child owns the
/// agent; the parent's `lbagent_stop` / `lbagent_free` only release the parent's own copies.
/// Call it before any other thread of the child uses the agent.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_WRONG_PROCESS` (not a forked child of the process that
/// started the agent), `LBAGENT_ERR_SYSTEM`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`; the last error says why. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_after_fork_child(agent: *mut lbagent) -> lbagent_result {
    fallible!({ Ok(try_agent(agent)?.after_fork_child()?) })
}

/// Call in a worker right after `fork()` (a prefork server: the master started the agent and
/// keeps answering): closes the worker's copies of the agent's sockets, so that they do not
/// outlive the master. The worker's `lbagent_set_state`, `lbagent_set_weight`,
/// `lbagent_set_load`, `lbagent_heartbeat` and `lbagent_worker_*` calls then report into the
/// master's answers (the status board is in shared memory). `lbagent_free` in the worker
/// releases only the worker's memory.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_WRONG_PROCESS`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`. Async-signal-safe it is not; call it before anything else.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_after_fork_worker(agent: *mut lbagent) -> lbagent_result {
    fallible!({ Ok(try_agent(agent)?.after_fork_worker()?) })
}
