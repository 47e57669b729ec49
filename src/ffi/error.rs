//! Result codes, their static descriptions, the thread-local last error and the version.

use std::cell::RefCell;
use std::ffi::{c_char, c_int};
use std::fmt::Display;

use crate::client::ProbeError;
use crate::error::Error;

/// The outcome of a call. `LBAGENT_OK` is 0; numbers are never reused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// cbindgen:rename-all=None
pub enum lbagent_result {
    /// Success.
    LBAGENT_OK = 0,
    /// A required pointer argument was NULL.
    LBAGENT_ERR_NULL_ARGUMENT = 1,
    /// The handle is not a live agent (freed, or not from `lbagent_start`).
    LBAGENT_ERR_BAD_HANDLE = 2,
    /// An argument is out of range (state, weight, counter, index).
    LBAGENT_ERR_INVALID_ARGUMENT = 3,
    /// The configuration is invalid; the last error names the key and value.
    LBAGENT_ERR_CONFIG = 4,
    /// A listen address could not be bound; the last error names it and says why.
    LBAGENT_ERR_BIND = 5,
    /// A system call failed (thread, poller, socket option); see the last error.
    LBAGENT_ERR_SYSTEM = 6,
    /// The service is not listed in `services=`.
    LBAGENT_ERR_UNKNOWN_SERVICE = 7,
    /// The agent was stopped and takes no more updates.
    LBAGENT_ERR_STOPPED = 8,
    /// The operation timed out.
    LBAGENT_ERR_TIMEOUT = 9,
    /// An internal panic was caught; the call had no effect.
    LBAGENT_ERR_PANIC = 10,
    /// A check with that name exists already.
    LBAGENT_ERR_EXISTS = 11,
    /// No room: every check or worker slot is taken.
    LBAGENT_ERR_FULL = 12,
    /// No such check, or the worker slot is not registered.
    LBAGENT_ERR_NOT_FOUND = 13,
    /// The call does not fit this process: `lbagent_after_fork_*` in the process that started
    /// the agent, or `lbagent_stop` in a forked child that did not take the agent over.
    LBAGENT_ERR_WRONG_PROCESS = 14,
    /// A probe was refused: ICMP port unreachable, nothing listens on that UDP port.
    LBAGENT_ERR_REFUSED = 15,
    /// A probe's target is unreachable: ICMP host or network unreachable, or no route.
    LBAGENT_ERR_UNREACHABLE = 16,
    /// Something that is not an lbagent answered the probe (another UDP service).
    LBAGENT_ERR_NOT_AN_AGENT = 17,
    /// The agent speaks another protocol version.
    LBAGENT_ERR_VERSION_MISMATCH = 18,
    /// The agent answers authenticated probes only.
    LBAGENT_ERR_AUTH_REQUIRED = 19,
    /// With a key: by the deadline the agent had answered the unsealed diagnostic probe but
    /// not the sealed one (its key_file lacks the key, another secret, clocks too far apart,
    /// or no key_file there).
    LBAGENT_ERR_WRONG_KEY = 20,
    /// With a key: no sealed answer by the deadline, but replies that did not authenticate
    /// came (forged, or from something other than the agent with this key); the last error
    /// counts them, the most telling first.
    LBAGENT_ERR_UNAUTHENTICATED = 21,
}

use lbagent_result::*;

impl lbagent_result {
    fn all() -> [lbagent_result; 22] {
        [
            LBAGENT_OK,
            LBAGENT_ERR_NULL_ARGUMENT,
            LBAGENT_ERR_BAD_HANDLE,
            LBAGENT_ERR_INVALID_ARGUMENT,
            LBAGENT_ERR_CONFIG,
            LBAGENT_ERR_BIND,
            LBAGENT_ERR_SYSTEM,
            LBAGENT_ERR_UNKNOWN_SERVICE,
            LBAGENT_ERR_STOPPED,
            LBAGENT_ERR_TIMEOUT,
            LBAGENT_ERR_PANIC,
            LBAGENT_ERR_EXISTS,
            LBAGENT_ERR_FULL,
            LBAGENT_ERR_NOT_FOUND,
            LBAGENT_ERR_WRONG_PROCESS,
            LBAGENT_ERR_REFUSED,
            LBAGENT_ERR_UNREACHABLE,
            LBAGENT_ERR_NOT_AN_AGENT,
            LBAGENT_ERR_VERSION_MISMATCH,
            LBAGENT_ERR_AUTH_REQUIRED,
            LBAGENT_ERR_WRONG_KEY,
            LBAGENT_ERR_UNAUTHENTICATED,
        ]
    }

    fn describe(self) -> &'static std::ffi::CStr {
        match self {
            LBAGENT_OK => c"success",
            LBAGENT_ERR_NULL_ARGUMENT => c"a required pointer argument is NULL",
            LBAGENT_ERR_BAD_HANDLE => c"not a live lbagent handle",
            LBAGENT_ERR_INVALID_ARGUMENT => c"argument out of range",
            LBAGENT_ERR_CONFIG => c"invalid configuration",
            LBAGENT_ERR_BIND => c"cannot bind a listen address",
            LBAGENT_ERR_SYSTEM => c"system call failed",
            LBAGENT_ERR_UNKNOWN_SERVICE => c"unknown service",
            LBAGENT_ERR_STOPPED => c"agent stopped",
            LBAGENT_ERR_TIMEOUT => c"timed out",
            LBAGENT_ERR_PANIC => c"internal error (panic caught)",
            LBAGENT_ERR_EXISTS => c"already exists",
            LBAGENT_ERR_FULL => c"no free slot",
            LBAGENT_ERR_NOT_FOUND => c"not found",
            LBAGENT_ERR_WRONG_PROCESS => c"wrong process for this call (see fork in the README)",
            LBAGENT_ERR_REFUSED => c"refused: nothing listens on that UDP port",
            LBAGENT_ERR_UNREACHABLE => c"unreachable: host down or no route",
            LBAGENT_ERR_NOT_AN_AGENT => c"not an lbagent: another service answered",
            LBAGENT_ERR_VERSION_MISMATCH => c"the agent speaks another protocol version",
            LBAGENT_ERR_AUTH_REQUIRED => c"the agent requires authenticated probes",
            LBAGENT_ERR_WRONG_KEY => {
                c"wrong key: the agent answered an unsealed probe but not the sealed one"
            }
            LBAGENT_ERR_UNAUTHENTICATED => {
                c"no authenticated answer: only replies that did not authenticate"
            }
        }
    }
}

impl From<&Error> for lbagent_result {
    fn from(e: &Error) -> lbagent_result {
        match e {
            Error::Config(_) => LBAGENT_ERR_CONFIG,
            Error::Bind { .. } | Error::BindTcp { .. } => LBAGENT_ERR_BIND,
            Error::Io { .. } => LBAGENT_ERR_SYSTEM,
            Error::InvalidState | Error::InvalidWeight | Error::InvalidCheck => {
                LBAGENT_ERR_INVALID_ARGUMENT
            }
            Error::Exists => LBAGENT_ERR_EXISTS,
            Error::TooMany | Error::NoWorkerSlots => LBAGENT_ERR_FULL,
            Error::NotFound => LBAGENT_ERR_NOT_FOUND,
            Error::WrongProcess => LBAGENT_ERR_WRONG_PROCESS,
            Error::UnknownService => LBAGENT_ERR_UNKNOWN_SERVICE,
            Error::Stopped => LBAGENT_ERR_STOPPED,
            Error::Timeout | Error::NotDrained(_) => LBAGENT_ERR_TIMEOUT,
        }
    }
}

impl From<Error> for lbagent_result {
    fn from(e: Error) -> lbagent_result {
        (&e).into()
    }
}

impl From<&ProbeError> for lbagent_result {
    fn from(e: &ProbeError) -> lbagent_result {
        match e {
            ProbeError::BadTarget(_) => LBAGENT_ERR_INVALID_ARGUMENT,
            ProbeError::Timeout(_) => LBAGENT_ERR_TIMEOUT,
            ProbeError::Refused => LBAGENT_ERR_REFUSED,
            ProbeError::Unreachable(_) => LBAGENT_ERR_UNREACHABLE,
            ProbeError::NotAnAgent(_) => LBAGENT_ERR_NOT_AN_AGENT,
            ProbeError::VersionMismatch { .. } => LBAGENT_ERR_VERSION_MISMATCH,
            ProbeError::AuthRequired => LBAGENT_ERR_AUTH_REQUIRED,
            ProbeError::WrongKey(_) => LBAGENT_ERR_WRONG_KEY,
            ProbeError::Unauthenticated { .. } => LBAGENT_ERR_UNAUTHENTICATED,
            _ => LBAGENT_ERR_SYSTEM,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records the detail of a failed call for `lbagent_last_error` on this thread (only
/// `ffi::run` calls it: see `fallible!`).
pub(super) fn set_last_error(message: impl Display) {
    LAST_ERROR.with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            e.clear();
            use std::fmt::Write;
            let _ = write!(e, "{message}");
        }
    });
}

/// Returns a static, NUL-terminated English description of a result code (an unknown code
/// gives "unknown result code"). The string is never freed. Thread-safe and async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_strerror(result: c_int) -> *const c_char {
    infallible!(c"internal error".as_ptr(), {
        lbagent_result::all()
            .into_iter()
            .find(|r| *r as c_int == result)
            .map_or(c"unknown result code", lbagent_result::describe)
            .as_ptr()
    })
}

/// Copies the detail of the last failed call made on this thread (for example
/// `config: invalid value "soon" for key "watchdog_ms": ...`) into `buf`, NUL-terminated and
/// cut to `len - 1` bytes at a UTF-8 character boundary.
///
/// Returns the full length of the message in bytes, excluding the NUL (like `snprintf`), so
/// a return value `>= len` means it was cut; 0 when no call has failed on this thread. `buf`
/// may be NULL when `len` is 0, to ask for the length. Successful calls leave the last error
/// as it was. Every function that fails sets it ("lbagent_get_status: agent is NULL"), except
/// the hot-path calls (`lbagent_heartbeat`, `lbagent_set_state`, `lbagent_set_weight`,
/// `lbagent_set_load`, `lbagent_worker_heartbeat`), which report through their return code
/// only and never touch the last error.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_last_error(buf: *mut c_char, len: usize) -> usize {
    infallible!(0, {
        LAST_ERROR.with(|e| match e.try_borrow() {
            Ok(e) => {
                // SAFETY: the caller provides `len` writable bytes at `buf` (or NULL).
                unsafe { super::copy_to_c_buffer(e.as_bytes(), buf, len) };
                e.len()
            }
            Err(_) => 0,
        })
    })
}

/// The library version as a static string, such as "0.1.0" (equal to `LBAGENT_VERSION`).
/// Thread-safe and async-signal-safe.
#[unsafe(no_mangle)]
pub extern "C" fn lbagent_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}
