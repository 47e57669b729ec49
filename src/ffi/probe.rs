//! `lbagent_probe`: asks one agent and blocks (the non-blocking form is `prober.rs`).

use std::ffi::c_char;

use super::error::lbagent_result::{self, *};
use super::status::lbagent_status;
use super::{Failure, try_optional_str, try_out, try_str};
use crate::client::{self, ProbeOptions};
use crate::config::DEFAULT_PORT;

/// Longest target, service or options string read from C: anything longer is invalid anyway.
pub(super) const TARGET_READ_LIMIT: usize = 1024;
pub(super) const SERVICE_READ_LIMIT: usize = 256;
const OPTIONS_READ_LIMIT: usize = 4096;

/// Probe options from C: NULL is the defaults.
pub(super) fn try_options(ptr: *const c_char) -> Result<ProbeOptions, Failure> {
    let text = try_optional_str(ptr, OPTIONS_READ_LIMIT, "options")?.unwrap_or("");
    ProbeOptions::default()
        .with_config(text)
        .map_err(|why| Failure::new(LBAGENT_ERR_CONFIG, why))
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
/// `LBAGENT_ERR_VERSION_MISMATCH`, `LBAGENT_ERR_AUTH_REQUIRED`, `LBAGENT_ERR_WRONG_KEY`,
/// `LBAGENT_ERR_UNAUTHENTICATED` (with a key nothing that fails authentication ends the probe
/// before its timeout: see `lbagent_prober_new`); or `LBAGENT_ERR_NULL_ARGUMENT`
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
    fallible!({
        let target = try_str(target, TARGET_READ_LIMIT, "target")?;
        let service = try_optional_str(service, SERVICE_READ_LIMIT, "service")?.unwrap_or("");
        let options = ProbeOptions {
            service: service.to_owned(),
            ..try_options(options)?
        };
        let out = try_out(out, "out")?;
        let answer = client::probe(client::resolve_target(target, DEFAULT_PORT)?, &options)?;
        out.write(lbagent_status::from_answer(&answer));
        Ok(())
    })
}
