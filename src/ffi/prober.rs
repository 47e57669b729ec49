//! `lbagent_prober`: the non-blocking prober for event loops (one UDP socket, any number of
//! probes in flight).

use std::collections::VecDeque;
use std::ffi::{c_char, c_int};
use std::os::fd::AsRawFd;

use parking_lot::Mutex;

use super::error::lbagent_result::{self, *};
use super::handle::{self, Object};
use super::probe::{SERVICE_READ_LIMIT, TARGET_READ_LIMIT, try_options};
use super::status::lbagent_status;
use super::{Failure, try_optional_str, try_out, try_str};
use crate::client::{self, Completion, Prober};
use crate::config::DEFAULT_PORT;

/// A non-blocking prober, created by `lbagent_prober_new` and released by
/// `lbagent_prober_free`. Opaque.
pub struct lbagent_prober {
    _private: [u8; 0],
}

/// What an `lbagent_prober *` holds.
struct ProberHandle {
    inner: Mutex<ProberState>,
    fd: c_int,
}

impl Object for ProberHandle {
    const LIVE: u64 = 0x4c42_5052_4f42_4521;
    const NAME: &'static str = "prober";
    const CREATED_BY: &'static str = "lbagent_prober_new";
}

struct ProberState {
    prober: Prober,
    /// Finished probes not yet handed to the caller (more than fit in its array).
    ready: VecDeque<Completion>,
    scratch: Vec<Completion>,
}

fn try_prober<'a>(handle: *const lbagent_prober) -> Result<&'a ProberHandle, Failure> {
    handle::get::<ProberHandle, _>(handle)
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
    /// `LBAGENT_ERR_WRONG_KEY`, `LBAGENT_ERR_UNAUTHENTICATED` (a prober with a key) or
    /// `LBAGENT_ERR_SYSTEM`.
    pub result: c_int,
    /// Round-trip time in microseconds, at least 1 for an answer; 0 when there is no answer,
    /// and for a change the agent pushed (with `subscribe_ms=`: `result` is then
    /// `LBAGENT_OK` and `status` the new status, for a token whose probe finished earlier).
    pub rtt_us: u32,
    /// The answer; all zero unless `result` is `LBAGENT_OK`. The server should receive new
    /// connections exactly when `state` is `LBAGENT_STATE_UP` and `weight_pct` is above 0.
    pub status: lbagent_status,
}

impl lbagent_probe_result {
    fn from_completion(c: &Completion) -> lbagent_probe_result {
        match &c.result {
            Ok(answer) => lbagent_probe_result {
                token: c.token,
                result: LBAGENT_OK as c_int,
                rtt_us: if answer.pushed {
                    0
                } else {
                    u32::try_from(answer.rtt.as_micros())
                        .unwrap_or(u32::MAX)
                        .max(1)
                },
                status: lbagent_status::from_answer(answer),
            },
            Err(e) => lbagent_probe_result {
                token: c.token,
                result: lbagent_result::from(e) as c_int,
                rtt_us: 0,
                status: lbagent_status::EMPTY,
            },
        }
    }
}

/// Creates a non-blocking prober: one UDP socket (dual-stack when the host has IPv6) on which
/// any number of probes can be in flight.
///
/// `options`: NULL, or `key=value` pairs: `timeout_ms=N` (1..=60000, default 1000), the
/// timeout of every probe sent through it; `key_file=PATH` [`key_id=N`], a key that seals
/// every probe. With a key only an answer sealed with it completes a probe, and nothing that
/// fails authentication (junk, unsealed or wrongly sealed answers, ICMP errors: anyone may
/// forge them) ends it before its timeout. A probe with no valid answer by half its timeout
/// is followed by one unsealed probe; at the timeout the probe finishes as
/// `LBAGENT_ERR_WRONG_KEY` if the agent answered that one (it is alive but dropped the sealed
/// probe), `LBAGENT_ERR_UNAUTHENTICATED` if other replies came, else `LBAGENT_ERR_TIMEOUT`.
/// `lbagent_prober_timeout_ms` counts the half-way sends too.
/// `subscribe_ms=N` (1..=60000): every probe also subscribes to the agent's changes for a
/// lease of N ms (renewed by each probe); an agent that grants it (the probe is sealed with a
/// key it knows, or it runs with `subscribe=allow`) pushes each change at once, and
/// `lbagent_prober_receive` returns it as one more result for that probe's token, with
/// `rtt_us` 0 (the prober's socket becomes readable: nothing else to wait for).
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
    fallible!({
        let options = try_options(options)?;
        let out = try_out(out, "out")?;
        let prober =
            Prober::new(options).map_err(|e| Failure::new(LBAGENT_ERR_SYSTEM, e.to_string()))?;
        let fd = prober.as_raw_fd();
        out.write(handle::new(ProberHandle {
            inner: Mutex::new(ProberState {
                prober,
                ready: VecDeque::new(),
                scratch: Vec::new(),
            }),
            fd,
        }));
        Ok(())
    })
}

/// The prober's socket, to wait on for POLLIN (or EPOLLIN) in the caller's event loop; -1 for
/// NULL or a handle that is not live (the last error says which). The descriptor belongs to the prober: do not read,
/// write or close it. It is close-on-exec. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_fd(prober: *const lbagent_prober) -> c_int {
    fallible!(-1, { Ok(try_prober(prober)?.fd) })
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
    fallible!({
        let p = try_prober(prober)?;
        let target = try_str(target, TARGET_READ_LIMIT, "target")?;
        let service = try_optional_str(service, SERVICE_READ_LIMIT, "service")?.unwrap_or("");
        let addr = client::parse_ip_target(target, DEFAULT_PORT)?;
        Ok(p.inner.lock().prober.send(addr, service, token)?)
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
#[must_use]
pub extern "C" fn lbagent_prober_receive(
    prober: *mut lbagent_prober,
    results: *mut lbagent_probe_result,
    capacity: usize,
    count: *mut usize,
) -> lbagent_result {
    fallible!({
        let p = try_prober(prober)?;
        if results.is_null() && capacity > 0 {
            return Err(Failure::null("results (with a capacity above 0)"));
        }
        let count = try_out(count, "count")?;
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
            // SAFETY: `results` holds `capacity` writable elements and `written < capacity`.
            unsafe {
                results
                    .add(written)
                    .write(lbagent_probe_result::from_completion(&c))
            };
            written += 1;
        }
        count.write(written);
        Ok(())
    })
}

/// Milliseconds until `lbagent_prober_receive` has a probe to expire or, with a key, an
/// unsealed diagnostic probe to send (rounded up), 0 when
/// finished probes are waiting to be collected, -1 when nothing is in flight (wait on the
/// descriptor alone, or not at all). Use it as the timeout of poll()/epoll_wait(). -1 for NULL
/// or a handle that is not live, with the last error set. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_timeout_ms(prober: *mut lbagent_prober) -> c_int {
    fallible!(-1, {
        let mut state = try_prober(prober)?.inner.lock();
        if !state.ready.is_empty() {
            return Ok(0);
        }
        Ok(match state.prober.next_timeout() {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                c_int::try_from(ms).unwrap_or(c_int::MAX)
            }
        })
    })
}

/// Probes sent and not yet collected by `lbagent_prober_receive` (in flight, or finished and
/// waiting). 0 for NULL or a handle that is not live, with the last error set. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_pending(prober: *const lbagent_prober) -> usize {
    fallible!(0, {
        let state = try_prober(prober)?.inner.lock();
        Ok(state.prober.in_flight() + state.ready.len())
    })
}

/// Closes the prober's socket and frees it; probes in flight are dropped. NULL is a no-op.
/// Freeing a handle twice, or a pointer that is not a prober, is detected without reading its
/// memory and ignored (the last error says so). The handle must not be used again, nor
/// concurrently with this call.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_prober_free(prober: *mut lbagent_prober) {
    fallible!((), { handle::free::<ProberHandle, _>(prober) })
}
