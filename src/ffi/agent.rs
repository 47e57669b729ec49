//! `lbagent`: the C handle of a running agent.

use std::ffi::{c_char, c_int, c_uint};
use std::time::Duration;

use super::error::lbagent_result::{self, *};
use super::handle::{self, Object};
use super::status::lbagent_status;
use super::{Failure, c_bytes, try_optional_c_str, try_out};
use crate::agent::Agent;
use crate::config::MAX_SERVICE_NAME;
use crate::counters::Counter;
use crate::state::{Reason, State};

/// Longest reason text read from C: the message keeps 255 bytes; reading a little more lets a
/// character cut at byte 255 be repaired, and a 1 MB reason costs no more than a short one.
const REASON_READ_LIMIT: usize = 1024;

/// A running agent, created by `lbagent_start` and released by `lbagent_free`. Opaque.
pub struct lbagent {
    _private: [u8; 0],
}

impl Object for Agent {
    const LIVE: u64 = 0x4c42_4147_454e_5421;
    const NAME: &'static str = "agent";
    const CREATED_BY: &'static str = "lbagent_start";
}

/// The agent behind a handle, for calls outside the hot path.
pub(super) fn try_agent<'a>(handle: *const lbagent) -> Result<&'a Agent, Failure> {
    handle::get::<Agent, _>(handle)
}

/// The agent behind a handle, for the hot path (lock-free, no last error).
pub(super) fn hot_agent<'a>(handle: *const lbagent) -> Result<&'a Agent, lbagent_result> {
    handle::get_hot::<Agent, _>(handle)
}

/// A service name from C: NULL or "" is the whole server. Names longer than any configured
/// name are read only far enough to know they are unknown.
pub(super) fn service_bytes<'a>(name: *const c_char) -> &'a [u8] {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    unsafe { c_bytes(name, MAX_SERVICE_NAME + 1) }.unwrap_or(b"")
}

/// The last error of a call outside the hot path that named an unknown service: the name, and
/// the names it could have been.
pub(super) fn unknown_service(agent: &Agent, service: &[u8]) -> Failure {
    let known: Vec<&str> = agent.services().collect();
    Failure::new(
        LBAGENT_ERR_UNKNOWN_SERVICE,
        format!(
            "unknown service \"{}\": not listed in services= ({})",
            String::from_utf8_lossy(service).escape_default(),
            if known.is_empty() {
                "none are".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
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
    fallible!({
        let config = match try_optional_c_str(config) {
            Some(c) => c
                .to_str()
                .map_err(|_| Failure::new(LBAGENT_ERR_CONFIG, "config is not valid UTF-8"))?
                .to_owned(),
            None => match std::env::var("LBAGENT_CONFIG") {
                Ok(s) => s,
                Err(std::env::VarError::NotPresent) => String::new(),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Failure::new(
                        LBAGENT_ERR_CONFIG,
                        "LBAGENT_CONFIG is not valid UTF-8",
                    ));
                }
            },
        };
        let out = try_out(out, "out")?;
        let agent = Agent::start(&config)?;
        out.write(handle::new(agent));
        Ok(())
    })
}

/// Reports the state of the whole server (`service` NULL or "") or of one configured service.
///
/// `state` is one of `LBAGENT_STATE_STARTING`, `_UP`, `_DRAIN`, `_MAINT`, `_DOWN`,
/// `_STOPPING`. `reason` is an optional UTF-8 text for operators (NULL clears it; it is
/// copied, up to 255 bytes; invalid UTF-8 is repaired and control characters become spaces).
/// Setting what is already set changes nothing (the generation does not move).
///
/// Setting the whole server to any state but STARTING ends the start: the watchdog
/// (`watchdog_ms`) is armed from then on, if the first heartbeat has not armed it already.
///
/// Returns `LBAGENT_OK`; `LBAGENT_ERR_INVALID_ARGUMENT` for `LBAGENT_STATE_UNKNOWN` or a value
/// that is no state; `LBAGENT_ERR_UNKNOWN_SERVICE` for a name not listed in `services=` (also
/// counted in `LBAGENT_COUNTER_HOST_UNKNOWN_SERVICE`, so that a typo is seen even where the
/// result is ignored); `LBAGENT_ERR_STOPPED` after `lbagent_stop`;
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
    hot!({
        let agent = hot_agent(agent)?;
        let state = State::from_i32(state).ok_or(LBAGENT_ERR_INVALID_ARGUMENT)?;
        // SAFETY: NULL or a NUL-terminated string, per the contract.
        let reason = unsafe { c_bytes(reason, REASON_READ_LIMIT) };
        Ok(agent.set_state_bytes(service_bytes(service), state, reason)?)
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
    hot!({ Ok(hot_agent(agent)?.set_weight_bytes(service_bytes(service), weight_pct)?) })
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
    hot!({ Ok(hot_agent(agent)?.set_load_bytes(service_bytes(service), in_use, capacity)?) })
}

/// Tells the watchdog that the host is alive; call it from the main loop. With
/// `watchdog_ms=N`, once the watchdog is armed, when the last heartbeat is more than N ms old
/// every answer says DOWN, reason "watchdog expired", until the next heartbeat.
///
/// The watchdog is armed when the start ends: at the first heartbeat, or when the whole
/// server's state is first set to anything but STARTING (at once with another
/// `initial_state`), whichever comes first. So a host that warms up without heart-beating is
/// answered STARTING, however long that takes (bound it with `start_timeout_ms`), and a host
/// that sets UP without ever heart-beating is DOWN N ms later.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_STOPPED` after `lbagent_stop`, or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Never sets the last error.
///
/// Thread-safe; no lock, no system call (the clock is read from the vDSO), no allocation.
/// Async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_heartbeat(agent: *mut lbagent) -> lbagent_result {
    hot!({ Ok(hot_agent(agent)?.heartbeat()?) })
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
    fallible!({
        let agent = try_agent(agent)?;
        let service = service_bytes(service);
        let out = try_out(out, "out")?;
        let status = agent.status_bytes(service);
        out.write(lbagent_status::from_status(&status, agent.instance_id()));
        Ok(())
    })
}

/// Reads one of the agent's counters (`LBAGENT_COUNTER_*`: datagrams received, answered, and
/// dropped by reason) into `*out`. Counters are only readable here, never over the network.
/// Every received datagram ends in exactly one other counter.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` for an unknown counter, or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_get_counter(
    agent: *const lbagent,
    counter: c_int,
    out: *mut u64,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let counter = Counter::from_i32(counter)
            .ok_or_else(|| Failure::invalid(format!("{counter} is not an LBAGENT_COUNTER_*")))?;
        try_out(out, "out")?.write(agent.counter(counter));
        Ok(())
    })
}

/// Writes the UDP port actually bound for the `index`-th `listen=` address (useful with port
/// 0, which lets the system choose) to `*out`.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_INVALID_ARGUMENT` when `index` is past the last address,
/// or `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_local_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    fallible!({ write_port(try_agent(agent)?.local_addrs(), "listen", index, out) })
}

/// Writes the TCP port actually bound for the `index`-th `tcp_agent=` address (HAProxy
/// agent-check) to `*out`. Same contract as `lbagent_local_port`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_tcp_agent_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    fallible!({ write_port(try_agent(agent)?.tcp_agent_addrs(), "tcp_agent", index, out) })
}

/// Writes the TCP port actually bound for the `index`-th `http=` address (HTTP health
/// endpoint) to `*out`. Same contract as `lbagent_local_port`.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_http_port(
    agent: *const lbagent,
    index: usize,
    out: *mut u16,
) -> lbagent_result {
    fallible!({ write_port(try_agent(agent)?.http_addrs(), "http", index, out) })
}

fn write_port(
    addrs: &[std::net::SocketAddr],
    key: &str,
    index: usize,
    out: *mut u16,
) -> Result<(), Failure> {
    let addr = addrs.get(index).ok_or_else(|| {
        Failure::invalid(format!(
            "index {index}: the configuration has {} {key}= address(es)",
            addrs.len()
        ))
    })?;
    try_out(out, "out")?.write(addr.port());
    Ok(())
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
    fallible!({
        let agent = try_agent(agent)?;
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
        Ok(agent.stop(timeout)?)
    })
}

/// Stops the agent if needed (waiting up to 5 s for its thread) and frees the handle. NULL is
/// a no-op. Freeing a handle twice, or a pointer that is not an agent, is detected without
/// reading its memory and ignored (the last error says so). The handle must not be used
/// again (every call outside the hot path detects a freed handle safely; the hot-path calls
/// catch most such uses, but reading freed memory is undefined), nor concurrently with this
/// call.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_free(agent: *mut lbagent) {
    fallible!((), { handle::free::<Agent, _>(agent) })
}

/// The lower-case name of a state ("up", "drain", ...), or "invalid". Static; never freed.
/// Thread-safe and async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_state_name(state: c_int) -> *const c_char {
    infallible!(c"invalid".as_ptr(), {
        State::from_i32(state)
            .map_or(c"invalid", State::c_name)
            .as_ptr()
    })
}

/// The lower-case name of a reason, with dashes ("host", "watchdog-expired",
/// "start-timed-out", ...; as in `lbagent-probe --json`), or "invalid". Static; never freed.
/// Thread-safe and async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_reason_name(reason: c_int) -> *const c_char {
    infallible!(c"invalid".as_ptr(), {
        u8::try_from(reason)
            .ok()
            .and_then(Reason::from_u8)
            .map_or(c"invalid", Reason::c_name)
            .as_ptr()
    })
}
