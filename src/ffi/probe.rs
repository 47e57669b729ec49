//! The prober from C: `lbagent_probe` asks one agent and blocks; `lbagent_prober` is the
//! non-blocking form for event loops (one UDP socket, any number of probes in flight).

use std::collections::VecDeque;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::agent::lbagent_status;
use super::error::{lbagent_result, set_last_error};
use super::{c_bytes, copy_to_c_buffer};
use crate::client::{self, Answer, Completion, ProbeError, ProbeOptions, Prober};
use crate::config::DEFAULT_PORT;
use lbagent_result::*;

const LIVE: u64 = 0x4c42_5052_4f42_4521;
const FREED: u64 = 0x4445_4144_5052_4f42;

/// Longest target, service or options string read from C: anything longer is invalid anyway.
const TARGET_READ_LIMIT: usize = 1024;
const SERVICE_READ_LIMIT: usize = 256;
const OPTIONS_READ_LIMIT: usize = 4096;

/// A non-blocking prober, created by `lbagent_prober_new` and released by
/// `lbagent_prober_free`. Opaque.
pub struct lbagent_prober {
    magic: AtomicU64,
    inner: Mutex<ProberState>,
    fd: c_int,
}

struct ProberState {
    prober: Prober,
    /// Finished probes not yet handed to the caller (more than fit in its array).
    ready: VecDeque<Completion>,
    scratch: Vec<Completion>,
}

/// One finished probe, as filled in by `lbagent_prober_receive`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct lbagent_probe_result {
    /// The token given to `lbagent_prober_send`.
    pub token: u64,
    /// An `lbagent_result`: `LBAGENT_OK` when `status` holds the agent's answer; otherwise why
    /// there is none: `LBAGENT_ERR_TIMEOUT`, `LBAGENT_ERR_REFUSED`, `LBAGENT_ERR_UNREACHABLE`,
    /// `LBAGENT_ERR_NOT_AN_AGENT`, `LBAGENT_ERR_VERSION_MISMATCH`, `LBAGENT_ERR_AUTH_REQUIRED`,
    /// `LBAGENT_ERR_WRONG_KEY` (a prober with a key) or `LBAGENT_ERR_SYSTEM`.
    pub result: c_int,
    /// Round-trip time in microseconds (0 when there is no answer).
    pub rtt_us: u32,
    /// The answer; all zero unless `result` is `LBAGENT_OK`. The server should receive new
    /// connections exactly when `state` is `LBAGENT_STATE_UP` and `weight_pct` is above 0.
    pub status: lbagent_status,
}

fn status_of(a: &Answer) -> lbagent_status {
    let mut status = lbagent_status {
        state: a.state as c_int,
        reason: c_int::from(a.reason_code),
        weight_pct: a.weight_pct.into(),
        in_use: a.in_use,
        capacity: a.capacity,
        generation: a.generation,
        since_ms: a.since_ms,
        instance_id: a.instance_id,
        message: [0; 256],
    };
    // SAFETY: a local buffer of 256 bytes.
    unsafe { copy_to_c_buffer(a.message.as_bytes(), status.message.as_mut_ptr(), 256) };
    status
}

fn empty_status() -> lbagent_status {
    lbagent_status {
        state: 0,
        reason: 0,
        weight_pct: 0,
        in_use: 0,
        capacity: 0,
        generation: 0,
        since_ms: 0,
        instance_id: 0,
        message: [0; 256],
    }
}

/// A required C string: its bytes as UTF-8, or the result to return.
fn required_str<'a>(
    ptr: *const c_char,
    limit: usize,
    what: &str,
) -> Result<&'a str, lbagent_result> {
    // SAFETY: the caller passes NULL or a NUL-terminated string.
    match unsafe { c_bytes(ptr, limit) } {
        None => {
            set_last_error(format_args!("{what} is NULL"));
            Err(LBAGENT_ERR_NULL_ARGUMENT)
        }
        Some(b) => std::str::from_utf8(b).map_err(|_| {
            set_last_error(format_args!("{what} is not valid UTF-8"));
            LBAGENT_ERR_INVALID_ARGUMENT
        }),
    }
}

/// An optional C string: NULL is "".
fn optional_str<'a>(
    ptr: *const c_char,
    limit: usize,
    what: &str,
) -> Result<&'a str, lbagent_result> {
    if ptr.is_null() {
        return Ok("");
    }
    required_str(ptr, limit, what)
}

fn options_from(ptr: *const c_char) -> Result<ProbeOptions, lbagent_result> {
    let text = optional_str(ptr, OPTIONS_READ_LIMIT, "options")?;
    ProbeOptions::default().with_config(text).map_err(|why| {
        set_last_error(why);
        LBAGENT_ERR_CONFIG
    })
}

fn probe_failed(e: &ProbeError) -> lbagent_result {
    set_last_error(e);
    e.into()
}

/// Asks the agent at `target` for its status and waits for the answer (at most the timeout).
///
/// - `target`: `HOST[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address; the port defaults to 4950.
///   Names are resolved (this may block on DNS; the non-blocking prober takes numeric
///   addresses only).
/// - `service`: the service to ask about; NULL or "" is the whole server.
/// - `options`: NULL, or `key=value` pairs like the agent's configuration: `timeout_ms=N`
///   (1..=60000, default 1000); `key_file=PATH` (seal the probe with the file's first key, or
///   with `key_id=N`, and accept only answers sealed with it).
/// - `out`: filled with the answer on success only.
///
/// Returns `LBAGENT_OK`, or why there is no answer: `LBAGENT_ERR_TIMEOUT`,
/// `LBAGENT_ERR_REFUSED`, `LBAGENT_ERR_UNREACHABLE`, `LBAGENT_ERR_NOT_AN_AGENT`,
/// `LBAGENT_ERR_VERSION_MISMATCH`, `LBAGENT_ERR_AUTH_REQUIRED`, `LBAGENT_ERR_WRONG_KEY`; or
/// `LBAGENT_ERR_NULL_ARGUMENT`
/// (`target` or `out`), `LBAGENT_ERR_INVALID_ARGUMENT` (a bad target or service name),
/// `LBAGENT_ERR_CONFIG` (bad options), `LBAGENT_ERR_SYSTEM`. Every failure sets the last
/// error, which says what happened.
///
/// The server should receive new connections exactly when `out->state` is
/// `LBAGENT_STATE_UP` and `out->weight_pct` is above 0. Thread-safe. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_probe(
    target: *const c_char,
    service: *const c_char,
    options: *const c_char,
    out: *mut lbagent_status,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let target = match required_str(target, TARGET_READ_LIMIT, "lbagent_probe: target") {
            Ok(t) => t,
            Err(r) => return r,
        };
        if out.is_null() {
            set_last_error("lbagent_probe: out is NULL");
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        let service = match optional_str(service, SERVICE_READ_LIMIT, "lbagent_probe: service") {
            Ok(s) => s,
            Err(r) => return r,
        };
        let options = match options_from(options) {
            Ok(o) => ProbeOptions {
                service: service.to_owned(),
                ..o
            },
            Err(r) => return r,
        };
        let result = client::resolve_target(target, DEFAULT_PORT)
            .and_then(|addr| client::probe(addr, &options));
        match result {
            Ok(answer) => {
                // SAFETY: `out` is non-NULL and points to a writable `lbagent_status`.
                unsafe { *out = status_of(&answer) };
                LBAGENT_OK
            }
            Err(e) => probe_failed(&e),
        }
    })
}

fn live_prober<'a>(handle: *const lbagent_prober) -> Result<&'a lbagent_prober, lbagent_result> {
    if handle.is_null() {
        return Err(LBAGENT_ERR_NULL_ARGUMENT);
    }
    // SAFETY: non-NULL handles come from `lbagent_prober_new`; the magic catches most uses
    // after `lbagent_prober_free`.
    let h = unsafe { &*handle };
    if h.magic.load(Ordering::Acquire) != LIVE {
        return Err(LBAGENT_ERR_BAD_HANDLE);
    }
    Ok(h)
}

/// Creates a non-blocking prober: one UDP socket (dual-stack when the host has IPv6) on which
/// any number of probes can be in flight.
///
/// `options`: NULL, or `key=value` pairs: `timeout_ms=N` (1..=60000, default 1000), the
/// timeout of every probe sent through it; `key_file=PATH` [`key_id=N`], a key that seals
/// every probe (only answers sealed with it count; otherwise a probe finishes as
/// `LBAGENT_ERR_WRONG_KEY` or `LBAGENT_ERR_TIMEOUT`). With a key, a probe with no valid
/// answer by half its timeout is followed by one unsealed probe: if the agent answers that,
/// it is alive but dropped the sealed probe, and the probe finishes at once as
/// `LBAGENT_ERR_WRONG_KEY`, not `LBAGENT_ERR_TIMEOUT`. `lbagent_prober_timeout_ms` counts
/// those half-way sends too.
///
/// On success writes the handle to `*out` (owned by the caller, released with
/// `lbagent_prober_free`). Returns `LBAGENT_OK`, `LBAGENT_ERR_NULL_ARGUMENT` (`out`),
/// `LBAGENT_ERR_CONFIG` (bad options) or `LBAGENT_ERR_SYSTEM` (no socket); the last error says
/// why. Thread-safe.
///
/// The event loop:
/// 1. `lbagent_prober_send` for each target;
/// 2. wait until `lbagent_prober_fd` is readable (POLLIN) or `lbagent_prober_timeout_ms`
///    milliseconds have passed;
/// 3. `lbagent_prober_receive`: every finished probe, answered, failed or timed out, comes
///    out exactly once with its token; repeat from 2 while `lbagent_prober_pending` > 0.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_prober_new(
    options: *const c_char,
    out: *mut *mut lbagent_prober,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        if out.is_null() {
            set_last_error("lbagent_prober_new: out is NULL");
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        let options = match options_from(options) {
            Ok(o) => o,
            Err(r) => return r,
        };
        match Prober::new(options) {
            Ok(prober) => {
                use std::os::fd::AsRawFd;
                let fd = prober.as_raw_fd();
                let handle = Box::new(lbagent_prober {
                    magic: AtomicU64::new(LIVE),
                    inner: Mutex::new(ProberState {
                        prober,
                        ready: VecDeque::new(),
                        scratch: Vec::new(),
                    }),
                    fd,
                });
                // SAFETY: `out` is non-NULL and points to writable storage for a pointer.
                unsafe { *out = Box::into_raw(handle) };
                LBAGENT_OK
            }
            Err(e) => {
                set_last_error(format_args!("lbagent_prober_new: {e}"));
                LBAGENT_ERR_SYSTEM
            }
        }
    })
}

/// The prober's socket, to wait on for POLLIN (or EPOLLIN) in the caller's event loop; -1 for
/// NULL or a handle that is not live. The descriptor belongs to the prober: do not read,
/// write or close it. It is close-on-exec. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_fd(prober: *const lbagent_prober) -> c_int {
    ffi_boundary!(-1, {
        match live_prober(prober) {
            Ok(p) => p.fd,
            Err(_) => -1,
        }
    })
}

/// Sends one probe about `service` (NULL or "" = the whole server) to `target` and returns at
/// once; the probe finishes through `lbagent_prober_receive` with `token`, which the library
/// only hands back.
///
/// `target` is numeric, never resolved: `IPv4[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address;
/// the port defaults to 4950.
///
/// Returns `LBAGENT_OK` (the probe is in flight), or, with nothing in flight and the last
/// error set: `LBAGENT_ERR_NULL_ARGUMENT`, `LBAGENT_ERR_BAD_HANDLE`,
/// `LBAGENT_ERR_INVALID_ARGUMENT` (not a numeric address, port 0, a bad service name),
/// `LBAGENT_ERR_UNREACHABLE` (no route), `LBAGENT_ERR_SYSTEM`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_send(
    prober: *mut lbagent_prober,
    target: *const c_char,
    service: *const c_char,
    token: u64,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let p = match live_prober(prober) {
            Ok(p) => p,
            Err(r) => {
                set_last_error("lbagent_prober_send: prober is NULL or not a live handle");
                return r;
            }
        };
        let target = match required_str(target, TARGET_READ_LIMIT, "lbagent_prober_send: target") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let service =
            match optional_str(service, SERVICE_READ_LIMIT, "lbagent_prober_send: service") {
                Ok(s) => s,
                Err(r) => return r,
            };
        let sent = client::parse_ip_target(target, DEFAULT_PORT)
            .and_then(|addr| p.inner.lock().prober.send(addr, service, token));
        match sent {
            Ok(()) => LBAGENT_OK,
            Err(e) => probe_failed(&e),
        }
    })
}

/// Collects finished probes without blocking: reads every answer and ICMP error waiting on
/// the socket, expires the probes whose timeout has passed, and writes up to `capacity`
/// results to `results`, each finished probe exactly once. `*count` receives how many were
/// written. When `*count == capacity` more may be waiting: call again (they are kept, and
/// `lbagent_prober_timeout_ms` returns 0 meanwhile).
///
/// Returns `LBAGENT_OK`, or `LBAGENT_ERR_NULL_ARGUMENT` (`prober`, `count`, or `results` with
/// a non-zero `capacity`) / `LBAGENT_ERR_BAD_HANDLE`; `*count` is then untouched.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_receive(
    prober: *mut lbagent_prober,
    results: *mut lbagent_probe_result,
    capacity: usize,
    count: *mut usize,
) -> lbagent_result {
    ffi_boundary!(LBAGENT_ERR_PANIC, {
        let p = match live_prober(prober) {
            Ok(p) => p,
            Err(r) => return r,
        };
        if count.is_null() || (results.is_null() && capacity > 0) {
            return LBAGENT_ERR_NULL_ARGUMENT;
        }
        let mut guard = p.inner.lock();
        let state = &mut *guard;
        state.scratch.clear();
        state.prober.receive(&mut state.scratch);
        state.ready.extend(state.scratch.drain(..));
        let mut written = 0;
        while written < capacity {
            let Some(c) = state.ready.pop_front() else {
                break;
            };
            let filled = match &c.result {
                Ok(answer) => lbagent_probe_result {
                    token: c.token,
                    result: LBAGENT_OK as c_int,
                    rtt_us: u32::try_from(answer.rtt.as_micros()).unwrap_or(u32::MAX),
                    status: status_of(answer),
                },
                Err(e) => lbagent_probe_result {
                    token: c.token,
                    result: lbagent_result::from(e) as c_int,
                    rtt_us: 0,
                    status: empty_status(),
                },
            };
            // SAFETY: `results` holds `capacity` writable elements and `written < capacity`.
            unsafe { results.add(written).write(filled) };
            written += 1;
        }
        // SAFETY: `count` is non-NULL and points to a writable size_t.
        unsafe { *count = written };
        LBAGENT_OK
    })
}

/// Milliseconds until `lbagent_prober_receive` has a probe to expire or, with a key, an
/// unsealed diagnostic probe to send (rounded up), 0 when
/// finished probes are waiting to be collected, -1 when nothing is in flight (wait on the
/// descriptor alone, or not at all). Use it as the timeout of poll()/epoll_wait(). -1 for NULL
/// or a handle that is not live. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_timeout_ms(prober: *mut lbagent_prober) -> c_int {
    ffi_boundary!(-1, {
        let Ok(p) = live_prober(prober) else {
            return -1;
        };
        let mut state = p.inner.lock();
        if !state.ready.is_empty() {
            return 0;
        }
        match state.prober.next_timeout() {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                c_int::try_from(ms).unwrap_or(c_int::MAX)
            }
        }
    })
}

/// Probes sent and not yet collected by `lbagent_prober_receive` (in flight, or finished and
/// waiting). 0 for NULL or a handle that is not live. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_pending(prober: *const lbagent_prober) -> usize {
    ffi_boundary!(0, {
        match live_prober(prober) {
            Ok(p) => {
                let state = p.inner.lock();
                state.prober.in_flight() + state.ready.len()
            }
            Err(_) => 0,
        }
    })
}

/// Closes the prober's socket and frees it; probes in flight are dropped. NULL is a no-op; a
/// handle already freed is ignored when detected. The handle must not be used again, nor
/// concurrently with this call.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_free(prober: *mut lbagent_prober) {
    ffi_boundary!((), {
        if live_prober(prober).is_err() {
            return;
        }
        // SAFETY: a live handle from `lbagent_prober_new`, given back by its owner.
        let handle = unsafe { Box::from_raw(prober) };
        handle.magic.store(FREED, Ordering::Release);
        drop(handle);
    })
}
