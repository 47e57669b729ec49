//! Worker watchdog slots and fork support for `lbagent`.

use std::ffi::{c_int, c_uint};

use super::agent::{live_agent, result};
use super::error::{lbagent_result, set_last_error};
use lbagent_result::*;

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
    agent: *mut super::agent::lbagent,
    slot: *mut c_uint,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        if slot.is_null() {
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        match agent.worker_register() {
            Ok(i) => {
                // SAFETY: `slot` is non-NULL and points to a writable unsigned int.
                unsafe { *slot = i as c_uint };
                LBAGENT_OK
            }
            Err(e) => (&e).into(),
        }
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
pub extern "C" fn lbagent_worker_heartbeat(
    agent: *mut super::agent::lbagent,
    slot: c_uint,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => result(a.worker_heartbeat(slot as usize)),
            Err(r) => r,
        }
    })
}

/// Releases the worker slot `slot` (a worker that exits cleanly).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_NOT_FOUND`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_worker_unregister(
    agent: *mut super::agent::lbagent,
    slot: c_uint,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => result(a.worker_unregister(slot as usize)),
            Err(r) => r,
        }
    })
}

/// Releases every worker slot registered by process `pid`: a prefork master calls it when it
/// reaps a worker (`waitpid`), so that a crashed worker stops counting as stalled once it is
/// replaced. Writes how many slots were released to `*released` (may be NULL).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` (pid <= 0), or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_worker_release_pid(
    agent: *mut super::agent::lbagent,
    pid: c_int,
    released: *mut c_uint,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let Ok(pid) = u32::try_from(pid) else {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        };
        if pid == 0 {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        }
        let n = agent.worker_release_pid(pid);
        if !released.is_null() {
            // SAFETY: non-NULL, points to a writable unsigned int.
            unsafe { *released = n as c_uint };
        }
        LBAGENT_OK
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
pub extern "C" fn lbagent_after_fork_child(agent: *mut super::agent::lbagent) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => match a.after_fork_child() {
                Ok(()) => LBAGENT_OK,
                Err(e) => super::error::fail(&e),
            },
            Err(r) => {
                set_last_error("lbagent_after_fork_child: agent is NULL or not a live handle");
                r
            }
        }
    })
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
pub extern "C" fn lbagent_after_fork_worker(agent: *mut super::agent::lbagent) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => match a.after_fork_worker() {
                Ok(()) => LBAGENT_OK,
                Err(e) => super::error::fail(&e),
            },
            Err(r) => r,
        }
    })
}
