//! `lbagent`: the C handle of a running agent.

use std::ffi::{c_char, c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::{fail, lbagent_result, set_last_error};
use super::{c_bytes, c_str, copy_to_c_buffer};
use crate::agent::Agent;
use crate::config::MAX_SERVICE_NAME;
use crate::counters::Counter;
use crate::error::Error;
use crate::state::State;
use lbagent_result::*;

/// Marks a live handle; overwritten when the handle is freed, so that most uses after
/// `lbagent_free` (and a second free) are caught instead of corrupting memory.
const LIVE: u64 = 0x4c42_4147_454e_5421;
const FREED: u64 = 0x4445_4144_4445_4144;

/// Every live handle. `lbagent_free` and `lbagent_stop` consult it before touching a handle,
/// so a second free (or a stop after free) is detected without reading freed memory.
static LIVE_HANDLES: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

fn registered(handle: *const lbagent) -> bool {
    LIVE_HANDLES
        .lock()
        .map(|live| live.contains(&(handle as usize)))
        .unwrap_or(false)
}

/// Longest reason text read from C: the message keeps 255 bytes; reading a little more lets a
/// character cut at byte 255 be repaired, and a 1 MB reason costs no more than a short one.
const REASON_READ_LIMIT: usize = 1024;

/// A running agent, created by `lbagent_start` and released by `lbagent_free`. Opaque.
pub struct lbagent {
    _private: [u8; 0],
}

/// What an `lbagent *` points to. repr(C) keeps `magic` first, so a foreign pointer is judged
/// by its first 8 bytes only.
#[repr(C)]
struct Handle {
    magic: AtomicU64,
    agent: Agent,
}

/// The status a director is told, as filled in by `lbagent_get_status` (the agent's own view)
/// and by `lbagent_probe` / `lbagent_prober_receive` (an answer received over the network).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct lbagent_status {
    /// One of `LBAGENT_STATE_*`.
    pub state: c_int,
    /// One of `LBAGENT_REASON_*`: why the state is what it is.
    pub reason: c_int,
    /// Percent of the weight configured on the director, 0..=100.
    pub weight_pct: c_uint,
    /// Work in progress, as reported with `lbagent_set_load`.
    pub in_use: u32,
    /// Capacity, as reported with `lbagent_set_load` (0 = unknown).
    pub capacity: u32,
    /// Increases whenever the state, reason, weight or message answered changes.
    pub generation: u32,
    /// Milliseconds since the state answered last changed (saturating).
    pub since_ms: u32,
    /// Random at each `lbagent_start`; probers see a restart as a new id.
    pub instance_id: u64,
    /// The reason text, UTF-8, NUL-terminated.
    pub message: [c_char; 256],
}

/// Borrows the agent behind a handle.
pub(super) fn live_agent<'a>(handle: *const lbagent) -> Result<&'a Agent, lbagent_result> {
    if handle.is_null() {
        return Err(LBAGENT_ERR_NULL_ARGUMENT);
    }
    // SAFETY: non-NULL handles come from `lbagent_start` (a `Handle`); after `lbagent_free` the
    // magic check catches most misuse (what C cannot be stopped from doing is documented as
    // undefined).
    let h = unsafe { &*handle.cast::<Handle>() };
    if h.magic.load(Ordering::Acquire) != LIVE {
        return Err(LBAGENT_ERR_BAD_HANDLE);
    }
    Ok(&h.agent)
}

/// A service name from C: NULL or "" is the whole server. Names longer than any configured
/// name are read only far enough to know they are unknown.
pub(super) fn service_bytes<'a>(name: *const c_char) -> &'a [u8] {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    unsafe { c_bytes(name, MAX_SERVICE_NAME + 1) }.unwrap_or(b"")
}

pub(super) fn result(r: Result<(), Error>) -> lbagent_result {
    match r {
        Ok(()) => LBAGENT_OK,
        Err(e) => (&e).into(),
    }
}

/// Parses `config`, binds the listen addresses and starts the monitor thread.
///
/// `config` is `key=value` pairs separated by spaces, `;` or newlines (see the README); NULL
/// reads the `LBAGENT_CONFIG` environment variable, and when that is unset too, uses the
/// defaults (`listen=0.0.0.0:4950`).
///
/// On success writes a new handle to `*out` (owned by the caller, released with
/// `lbagent_free`) and returns `LBAGENT_OK`. On error `*out` is untouched, nothing is left
/// running (no thread, no socket), and `lbagent_last_error` names the key and value, or the
/// address that could not be bound and why: `LBAGENT_ERR_CONFIG`, `LBAGENT_ERR_BIND`,
/// `LBAGENT_ERR_SYSTEM`, `LBAGENT_ERR_NULL_ARGUMENT` (`out` is NULL).
///
/// Thread-safe. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_start(config: *const c_char, out: *mut *mut lbagent) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        if out.is_null() {
            set_last_error("lbagent_start: out is NULL");
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        // SAFETY: NULL or a NUL-terminated string, per the contract.
        let text = match unsafe { c_str(config) } {
            Some(c) => match c.to_str() {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    set_last_error("config: the configuration string is not valid UTF-8");
                    return LBAGENT_ERR_CONFIG;
                }
            },
            None => match std::env::var("LBAGENT_CONFIG") {
                Ok(s) => s,
                Err(std::env::VarError::NotPresent) => String::new(),
                Err(std::env::VarError::NotUnicode(_)) => {
                    set_last_error("config: LBAGENT_CONFIG is not valid UTF-8");
                    return LBAGENT_ERR_CONFIG;
                }
            },
        };
        match Agent::start(&text) {
            Ok(agent) => {
                let handle = Box::into_raw(Box::new(Handle {
                    magic: AtomicU64::new(LIVE),
                    agent,
                }))
                .cast::<lbagent>();
                if let Ok(mut live) = LIVE_HANDLES.lock() {
                    live.push(handle as usize);
                }
                // SAFETY: `out` is non-NULL and points to writable storage for a pointer.
                unsafe { *out = handle };
                LBAGENT_OK
            }
            Err(e) => fail(&e),
        }
    })
}

/// Reports the state of the whole server (`service` NULL or "") or of one configured service.
///
/// `state` is one of `LBAGENT_STATE_STARTING`, `_UP`, `_DRAIN`, `_MAINT`, `_DOWN`,
/// `_STOPPING`. `reason` is an optional UTF-8 text for operators (NULL clears it; it is
/// copied, up to 255 bytes; invalid UTF-8 is repaired and control characters become spaces).
/// Setting what is already set changes nothing (the generation does not move).
///
/// Returns `LBAGENT_OK`; `LBAGENT_ERR_INVALID_ARGUMENT` for `LBAGENT_STATE_UNKNOWN` or a value
/// that is no state; `LBAGENT_ERR_UNKNOWN_SERVICE`; `LBAGENT_ERR_STOPPED` after `lbagent_stop`;
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE` for a bad handle. Never sets the
/// last error.
///
/// Thread-safe; no lock, no system call, no allocation. Async-signal-safe when `service` and
/// `reason` are both NULL (for example, to drain from a SIGTERM handler).
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_set_state(
    agent: *mut lbagent,
    service: *const c_char,
    state: c_int,
    reason: *const c_char,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let Some(state) = State::from_i32(state) else {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        };
        // SAFETY: NULL or a NUL-terminated string, per the contract.
        let reason = unsafe { c_bytes(reason, REASON_READ_LIMIT) };
        result(agent.set_state_bytes(service_bytes(service), state, reason))
    })
}

/// Sets the weight of the whole server (`service` NULL or "") or of one service, in percent
/// (0..=100) of the weight configured on the director. A service's answer carries its own
/// weight scaled by the whole server's.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` above 100, or the errors of
/// `lbagent_set_state`. Never sets the last error.
///
/// Thread-safe; no lock, no system call, no allocation. Async-signal-safe when `service` is
/// NULL.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_set_weight(
    agent: *mut lbagent,
    service: *const c_char,
    weight_pct: c_uint,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => result(a.set_weight_bytes(service_bytes(service), weight_pct)),
            Err(r) => r,
        }
    })
}

/// Reports the load of the whole server (`service` NULL or "") or of one service: `in_use`
/// units of work out of `capacity` (0 = unknown). Carried in every STATUS; it does not change
/// the state or the generation.
///
/// Returns `LBAGENT_OK` or the errors of `lbagent_set_state`. Never sets the last error.
///
/// Thread-safe; no lock, no system call, no allocation. Async-signal-safe when `service` is
/// NULL.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_set_load(
    agent: *mut lbagent,
    service: *const c_char,
    in_use: u32,
    capacity: u32,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => result(a.set_load_bytes(service_bytes(service), in_use, capacity)),
            Err(r) => r,
        }
    })
}

/// Tells the watchdog that the host is alive; call it from the main loop. With
/// `watchdog_ms=N`, when the last heartbeat (or the start) is more than N ms old, every answer
/// says DOWN, reason "watchdog expired", until the next heartbeat.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_STOPPED` after `lbagent_stop`, or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Never sets the last error.
///
/// Thread-safe; no lock, no system call (the clock is read from the vDSO), no allocation.
/// Async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_heartbeat(agent: *mut lbagent) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        match live_agent(agent) {
            Ok(a) => result(a.heartbeat()),
            Err(r) => r,
        }
    })
}

/// Fills `*out` with exactly what a director asking about `service` (NULL or "" = the whole
/// server) would be told now, including the watchdog's verdict. An unknown service gives
/// `LBAGENT_STATE_UNKNOWN` with `LBAGENT_REASON_UNKNOWN_SERVICE` (and `LBAGENT_OK`). After
/// `lbagent_stop` the state is `LBAGENT_STATE_STOPPING`.
///
/// Returns `LBAGENT_OK`, or `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE` (then `*out`
/// is untouched and the last error is set).
///
/// Thread-safe; no lock, no allocation. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_get_status(
    agent: *const lbagent,
    service: *const c_char,
    out: *mut lbagent_status,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => {
                set_last_error("lbagent_get_status: agent is NULL or not a live handle");
                return r;
            }
        };
        if out.is_null() {
            set_last_error("lbagent_get_status: out is NULL");
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        let status = agent.status_bytes(service_bytes(service));
        let mut filled = lbagent_status {
            state: status.state as c_int,
            reason: status.reason as c_int,
            weight_pct: c_uint::from(status.weight_pct),
            in_use: status.in_use,
            capacity: status.capacity,
            generation: status.generation,
            since_ms: status.since_ms,
            instance_id: agent.instance_id(),
            message: [0; 256],
        };
        let message = status.message.as_bytes();
        // SAFETY: `filled.message` is a local buffer of 256 bytes.
        unsafe { copy_to_c_buffer(message, filled.message.as_mut_ptr(), 256) };
        // SAFETY: `out` is non-NULL and points to a writable `lbagent_status`.
        unsafe { *out = filled };
        LBAGENT_OK
    })
}

/// Reads one of the agent's counters (`LBAGENT_COUNTER_*`: datagrams received, answered, and
/// dropped by reason) into `*out`. Counters are only readable here, never over the network.
/// Every received datagram ends in exactly one other counter.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` for an unknown counter, or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_get_counter(
    agent: *const lbagent,
    counter: c_int,
    out: *mut u64,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let Some(counter) = Counter::from_i32(counter) else {
            return LBAGENT_ERR_INVALID_ARGUMENT;
        };
        if out.is_null() {
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        // SAFETY: `out` is non-NULL and points to a writable uint64_t.
        unsafe { *out = agent.counter(counter) };
        LBAGENT_OK
    })
}

/// Writes the UDP port actually bound for the `index`-th `listen=` address (useful with port
/// 0, which lets the system choose) to `*out`.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` when `index` is past the last address,
/// or `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_local_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        write_port(agent.local_addrs(), index, out)
    })
}

/// Writes the TCP port actually bound for the `index`-th `tcp_agent=` address (HAProxy
/// agent-check) to `*out`. Same contract as `lbagent_local_port`.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_tcp_agent_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        write_port(agent.tcp_agent_addrs(), index, out)
    })
}

/// Writes the TCP port actually bound for the `index`-th `http=` address (HTTP health
/// endpoint) to `*out`. Same contract as `lbagent_local_port`.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_http_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => return r,
        };
        write_port(agent.http_addrs(), index, out)
    })
}

fn write_port(addrs: &[std::net::SocketAddr], index: usize, out: *mut u16) -> lbagent_result {
    let Some(addr) = addrs.get(index) else {
        return LBAGENT_ERR_INVALID_ARGUMENT;
    };
    if out.is_null() {
        return LBAGENT_ERR_NULL_ARGUMENT;
    }
    // SAFETY: `out` is non-NULL and points to a writable uint16_t, per the contract.
    unsafe { *out = addr.port() };
    LBAGENT_OK
}

/// Stops the agent: from this call on every answer says STOPPING; the monitor thread answers
/// what is already queued, closes the sockets and exits; this call waits for it up to
/// `timeout_ms` milliseconds (0 waits for ever). Idempotent: stopping a stopped agent returns
/// `LBAGENT_OK`. The handle stays valid until `lbagent_free`; state updates then return
/// `LBAGENT_ERR_STOPPED`. The timeout covers the monitor thread. Then check threads are joined
/// (with a timeout, one whose callback still runs is left to finish alone; with 0, a hung
/// check blocks this call), and the logger thread (only with `log=` or a log callback), so a
/// log callback must return promptly.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_TIMEOUT` (the thread is still finishing; call again to
/// wait again), or `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`.
///
/// Thread-safe. Not async-signal-safe: from a signal handler, set DRAIN or STOPPING with
/// `lbagent_set_state` and stop from the main loop.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_stop(agent: *mut lbagent, timeout_ms: u32) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        if !agent.is_null() && !registered(agent) {
            set_last_error("lbagent_stop: not a live handle (already freed?)");
            return LBAGENT_ERR_BAD_HANDLE;
        }
        let agent = match live_agent(agent) {
            Ok(a) => a,
            Err(r) => {
                set_last_error("lbagent_stop: agent is NULL or not a live handle");
                return r;
            }
        };
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
        match agent.stop(timeout) {
            Ok(()) => LBAGENT_OK,
            Err(e) => fail(&e),
        }
    })
}

/// Stops the agent if needed (waiting up to 5 s for its thread) and frees the handle. NULL is
/// a no-op. Freeing a handle twice is detected and ignored (the last error says so). The
/// handle must not be used again (only `lbagent_free` and `lbagent_stop` detect a freed
/// handle safely; other calls on it are undefined), nor concurrently with this call.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_free(agent: *mut lbagent) {
    ffi_boundary!((), {
        if agent.is_null() {
            return;
        }
        let removed = LIVE_HANDLES.lock().is_ok_and(|mut live| {
            let before = live.len();
            live.retain(|h| *h != agent as usize);
            live.len() < before
        });
        if !removed {
            set_last_error("lbagent_free: not a live handle (already freed?)");
            return;
        }
        // SAFETY: a live handle from `lbagent_start`, owned by the caller, who gives it back.
        let handle = unsafe { Box::from_raw(agent.cast::<Handle>()) };
        handle.magic.store(FREED, Ordering::Release);
        drop(handle);
    })
}

/// The lower-case name of a state ("up", "drain", ...), or "invalid". Static; never freed.
/// Thread-safe and async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_state_name(state: c_int) -> *const c_char {
    ffi_boundary!(c"invalid".as_ptr(), {
        State::from_i32(state)
            .map_or(c"invalid", State::c_name)
            .as_ptr()
    })
}
