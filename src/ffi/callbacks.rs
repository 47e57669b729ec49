//! Functions of the host that the agent calls on its own threads (never on the monitor
//! thread): self-checks, and the log callback.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::agent::{lbagent, service_bytes, try_agent, unknown_service};
use super::error::lbagent_result;
use super::{Failure, try_str};
use crate::error::Error;
use crate::log::Level;
use crate::status::checks::MAX_CHECK_NAME;

/// A host self-check: returns 0 when it passes, anything else when it fails, and may write a
/// NUL-terminated reason into `message` (`message_len` bytes, at least 256). Called on the
/// check's own thread, never concurrently with itself.
pub type lbagent_check_fn = Option<
    unsafe extern "C" fn(userdata: *mut c_void, message: *mut c_char, message_len: usize) -> c_int,
>;

/// Releases a check's userdata once the check is removed and its last run has returned.
pub type lbagent_free_fn = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// Receives one log line: `level` is an `LBAGENT_LOG_LEVEL_*`, `message` a NUL-terminated
/// UTF-8 line valid during the call only. Called on the agent's logger thread.
pub type lbagent_log_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, level: c_int, message: *const c_char)>;

/// The host's userdata, released with its function (if any) once the agent no longer needs
/// it, and only if the agent took it (`owned`).
struct HostData {
    userdata: *mut c_void,
    free: lbagent_free_fn,
    owned: Arc<AtomicBool>,
}

// SAFETY: the host hands the pointer over for use on the check's thread (documented).
unsafe impl Send for HostData {}
// SAFETY: the log callback's userdata is only passed back to the host's function.
unsafe impl Sync for HostData {}

impl Drop for HostData {
    fn drop(&mut self) {
        if !self.owned.load(Ordering::Acquire) {
            return;
        }
        if let Some(free) = self.free {
            // SAFETY: the host's release function, called once, after the last call of the
            // function that used the userdata.
            unsafe { free(self.userdata) };
        }
    }
}

/// Room for a check's failure message, with its NUL.
const MESSAGE_BUFFER: usize = 256;
/// Longest check name read from C (names are at most 64 bytes; longer is refused).
const NAME_READ_LIMIT: usize = 256;

/// Same as `lbagent_add_check_with_free` with no release function.
#[unsafe(no_mangle)]
#[must_use]
pub extern "C" fn lbagent_add_check(
    agent: *mut lbagent,
    service: *const c_char,
    name: *const c_char,
    callback: lbagent_check_fn,
    userdata: *mut c_void,
    interval_ms: u32,
    timeout_ms: u32,
) -> lbagent_result {
    fallible!({
        add_check(
            agent,
            service,
            name,
            callback,
            userdata,
            None,
            interval_ms,
            timeout_ms,
        )
    })
}

/// Registers a host self-check named `name` (1..=64 bytes, unique) on `service` (NULL or "":
/// the whole server, so every service). The agent calls `callback(userdata, ...)` on a thread
/// of its own at once and then every `interval_ms`; while it fails, or while a run lasts longer
/// than `timeout_ms` (0: no limit), the answers for that service say DOWN with reason "check
/// failed" or "check timed out" and the message "NAME: reason". A new check fails until its
/// first run passes. A callback that hangs never delays probe answers (it holds only its own
/// thread). `free_userdata` (may be NULL) is called on the check's thread once the check is
/// removed (or the agent stopped) and its last run has returned.
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_EXISTS` (name taken), `LBAGENT_ERR_FULL` (64 checks),
/// `LBAGENT_ERR_INVALID_ARGUMENT` (NULL callback, bad name, interval 0),
/// `LBAGENT_ERR_UNKNOWN_SERVICE`, `LBAGENT_ERR_STOPPED`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`; the last error says why. On error `free_userdata` is not called.
/// Thread-safe. Not async-signal-safe.
#[unsafe(no_mangle)]
#[must_use]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn lbagent_add_check_with_free(
    agent: *mut lbagent,
    service: *const c_char,
    name: *const c_char,
    callback: lbagent_check_fn,
    userdata: *mut c_void,
    free_userdata: lbagent_free_fn,
    interval_ms: u32,
    timeout_ms: u32,
) -> lbagent_result {
    fallible!({
        add_check(
            agent,
            service,
            name,
            callback,
            userdata,
            free_userdata,
            interval_ms,
            timeout_ms,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn add_check(
    agent: *mut lbagent,
    service: *const c_char,
    name: *const c_char,
    callback: lbagent_check_fn,
    userdata: *mut c_void,
    free_userdata: lbagent_free_fn,
    interval_ms: u32,
    timeout_ms: u32,
) -> Result<(), Failure> {
    let agent = try_agent(agent)?;
    let service = service_bytes(service);
    let name = try_str(name, NAME_READ_LIMIT, "name")?;
    if name.is_empty() || name.len() > MAX_CHECK_NAME {
        return Err(Failure::invalid(format!(
            "name \"{}\" has {} bytes: 1..={MAX_CHECK_NAME}",
            name.escape_default(),
            name.len()
        )));
    }
    let callback = callback.ok_or_else(|| Failure::invalid("callback is NULL"))?;
    if interval_ms == 0 {
        return Err(Failure::invalid(
            "interval_ms is 0: a check runs every interval_ms > 0",
        ));
    }
    let owned = Arc::new(AtomicBool::new(false));
    let host = HostData {
        userdata,
        free: free_userdata,
        owned: owned.clone(),
    };
    let check = move || {
        let host = &host;
        let mut message = [0 as c_char; MESSAGE_BUFFER];
        // SAFETY: the host's check function with its own userdata and a writable buffer.
        let rc = unsafe { callback(host.userdata, message.as_mut_ptr(), MESSAGE_BUFFER - 1) };
        if rc == 0 {
            return Ok(());
        }
        message[MESSAGE_BUFFER - 1] = 0;
        // SAFETY: the buffer is NUL-terminated (set just above).
        let text = unsafe { std::ffi::CStr::from_ptr(message.as_ptr()) };
        Err(String::from_utf8_lossy(text.to_bytes()).into_owned())
    };
    // On failure the closure is dropped unused, without calling the release function: the
    // host still owns its data.
    agent
        .add_check_boxed(
            service,
            name,
            Duration::from_millis(u64::from(interval_ms)),
            Duration::from_millis(u64::from(timeout_ms)),
            Box::new(check),
        )
        .map_err(|e| match e {
            Error::UnknownService => unknown_service(agent, service),
            e => Failure::from(e),
        })?;
    owned.store(true, Ordering::Release);
    Ok(())
}

/// Removes the check named `name`: it no longer counts from now on, and its callback is not
/// called again (a run in progress finishes on the check's thread, which then calls the
/// release function).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_NOT_FOUND`, or `LBAGENT_ERR_NULL_ARGUMENT` /
/// `LBAGENT_ERR_BAD_HANDLE`. Thread-safe; does not wait for a running callback.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_remove_check(agent: *mut lbagent, name: *const c_char) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let name = try_str(name, NAME_READ_LIMIT, "name")?;
        Ok(agent.remove_check(name)?)
    })
}

/// Sends every log line to `callback(userdata, level, message)` as well as to the `log=`
/// target; NULL stops it. Lines are rate-limited (10 per second, bursts of 20) and delivered
/// on the agent's logger thread, never on the monitor thread; the callback must not call
/// `lbagent_stop` or `lbagent_free`. `userdata` must stay valid until the agent is freed (a
/// line being delivered when the callback is replaced may still reach the old one).
///
/// Returns `LBAGENT_OK`, `LBAGENT_ERR_SYSTEM` (the logger thread could not start), or
/// `LBAGENT_ERR_NULL_ARGUMENT` / `LBAGENT_ERR_BAD_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_set_log_callback(
    agent: *mut lbagent,
    callback: lbagent_log_fn,
    userdata: *mut c_void,
) -> lbagent_result {
    fallible!({
        let agent = try_agent(agent)?;
        let callback = callback.map(|f| {
            let host = HostData {
                userdata,
                free: None,
                owned: Arc::new(AtomicBool::new(false)),
            };
            let forward = move |level: Level, line: &str| {
                let host = &host;
                let Ok(line) = std::ffi::CString::new(line.replace('\0', " ")) else {
                    return;
                };
                // SAFETY: the host's log function with its userdata and a NUL-terminated line.
                unsafe { f(host.userdata, level as c_int, line.as_ptr()) };
            };
            Arc::new(forward) as crate::log::LogCallback
        });
        Ok(agent.set_log_callback(callback)?)
    })
}
