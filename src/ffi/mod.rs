//! The C ABI: converts pointers, maps errors, catches panics; nothing else lives here.
//!
//! One file per C object (`agent.rs`: `lbagent`; `prober.rs`: `lbagent_prober`; ...), each
//! entry point written literally as `#[unsafe(no_mangle)] pub extern "C" fn` so that cbindgen
//! reads it as written (`include/lbagent.h` is generated from these files by build.rs).
//!
//! One contract, kept by the three wrappers below rather than by each function:
//! - [`fallible!`]: every function outside the hot path. Its body returns
//!   `Result<_, Failure>`; a failure, and a caught panic, is recorded as the thread's last
//!   error, "function_name: what was wrong", and returned as its code (or the function's
//!   documented failure value).
//! - [`hot!`]: the host's hot path (heartbeat, set_state, set_weight, set_load, worker
//!   heartbeat): no thread-local, no lock, no allocation; the code alone says what failed.
//! - [`infallible!`]: functions that cannot fail (names, versions): a panic gives a default.
//!
//! Arguments are checked in the order they are declared, each with the `try_*` helpers of
//! this file and of `handle.rs`; the first bad one is reported.

// Entry points check every pointer before use; C callers cannot mark calls unsafe anyway.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// C names: `lbagent`, `lbagent_status`, `lbagent_result`.
#![allow(non_camel_case_types)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The name of the enclosing function (`lbagent_get_status`), for last-error messages.
macro_rules! function_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// A fallible entry point outside the hot path: `$body` returns `Result<(), Failure>`; the
/// function returns `LBAGENT_OK` or the failure's code, with the last error set.
macro_rules! fallible {
    ($body:block) => {
        $crate::ffi::run(
            function_name!(),
            |code| code,
            || {
                let body = || -> Result<(), $crate::ffi::Failure> { $body };
                body().map(|()| $crate::ffi::error::lbagent_result::LBAGENT_OK)
            },
        )
    };
    // A function whose failure is a value (-1, 0, nothing): `$body` returns `Result<T, Failure>`.
    ($failed:expr, $body:block) => {
        $crate::ffi::run(function_name!(), |_| $failed, || $body)
    };
}

/// A hot-path entry point: `$body` returns `Result<(), lbagent_result>`; nothing else is
/// touched on failure (async-signal-safe bodies stay so).
macro_rules! hot {
    ($body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> Result<(), $crate::ffi::error::lbagent_result> { $body },
        )) {
            Ok(Ok(())) => $crate::ffi::error::lbagent_result::LBAGENT_OK,
            Ok(Err(code)) => code,
            Err(_) => $crate::ffi::error::lbagent_result::LBAGENT_ERR_PANIC,
        }
    };
}

/// An entry point that cannot fail: a panic gives `$default`.
macro_rules! infallible {
    ($default:expr, $body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => $default,
        }
    };
}

mod agent;
mod callbacks;
mod drain;
mod error;
mod handle;
mod probe;
mod prober;
mod status;
mod workers;

use std::any::Any;
use std::borrow::Cow;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use error::lbagent_result::{self, *};

/// Why a call failed: its code, and what was wrong (the function's name is added when it is
/// recorded).
pub(crate) struct Failure {
    code: lbagent_result,
    detail: Cow<'static, str>,
}

impl Failure {
    pub(crate) fn new(code: lbagent_result, detail: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            code,
            detail: detail.into(),
        }
    }

    /// A required pointer argument was NULL.
    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(LBAGENT_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
    }

    /// An argument out of range.
    pub(crate) fn invalid(detail: impl Into<Cow<'static, str>>) -> Failure {
        Failure::new(LBAGENT_ERR_INVALID_ARGUMENT, detail)
    }

    fn panicked(payload: &(dyn Any + Send)) -> Failure {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        Failure::new(
            LBAGENT_ERR_PANIC,
            format!("internal error (panic caught, the call had no effect): {message}"),
        )
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Failure {
        Failure::new((&e).into(), e.to_string())
    }
}

impl From<crate::client::ProbeError> for Failure {
    fn from(e: crate::client::ProbeError) -> Failure {
        Failure::new((&e).into(), e.to_string())
    }
}

/// Runs the body of `fallible!`: a failure or a panic is recorded as "name: detail" and
/// turned into the function's value by `failed`.
pub(crate) fn run<T>(
    name: &str,
    failed: impl FnOnce(lbagent_result) -> T,
    body: impl FnOnce() -> Result<T, Failure>,
) -> T {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::panicked(&*payload),
    };
    error::set_last_error(format_args!("{name}: {}", failure.detail));
    failed(failure.code)
}

/// The bytes of a NUL-terminated C string, reading at most `limit` bytes (a longer string is
/// cut there). `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or points to memory readable up to its NUL or `limit` bytes.
unsafe fn c_bytes<'a>(ptr: *const c_char, limit: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees readability up to the NUL or `limit`; strnlen reads no
    // further than either.
    let len = unsafe { libc::strnlen(ptr, limit) };
    // SAFETY: `len` bytes from `ptr` were just found readable.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// A required C string argument, as UTF-8, read up to `limit` bytes.
fn try_str<'a>(ptr: *const c_char, limit: usize, what: &str) -> Result<&'a str, Failure> {
    try_optional_str(ptr, limit, what)?.ok_or_else(|| Failure::null(what))
}

/// An optional C string argument (NULL is `None`), as UTF-8, read up to `limit` bytes.
fn try_optional_str<'a>(
    ptr: *const c_char,
    limit: usize,
    what: &str,
) -> Result<Option<&'a str>, Failure> {
    // SAFETY: the caller passes NULL or a NUL-terminated string, per every function's contract.
    match unsafe { c_bytes(ptr, limit) } {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8"))),
    }
}

/// A whole C string (for configuration text, which has no natural limit). `None` for NULL.
fn try_optional_c_str<'a>(ptr: *const c_char) -> Option<&'a CStr> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per the caller's contract.
        Some(unsafe { CStr::from_ptr(ptr) })
    }
}

/// An out-parameter: where the result goes once the call has succeeded.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// Writes the result (the only write through the pointer).
    fn write(self, value: T) {
        // SAFETY: non-NULL (checked by `try_out`) and writable for a `T`, per the contract.
        unsafe { self.0.write(value) }
    }
}

/// A required out-parameter.
fn try_out<T>(ptr: *mut T, what: &str) -> Result<Out<T>, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    Ok(Out(ptr))
}

/// Copies `text` into `buf` of `len` bytes as a NUL-terminated string, cut at a UTF-8
/// character boundary when it does not fit. Does nothing when `buf` is NULL or `len` is 0.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
unsafe fn copy_to_c_buffer(text: &[u8], buf: *mut c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    let cut = crate::proto::wire::cut_utf8(text, len - 1);
    // SAFETY: `buf` is writable for `len` bytes and `cut.len() + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(cut.as_ptr(), buf.cast::<u8>(), cut.len());
        *buf.add(cut.len()) = 0;
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let mut buf = [0 as c_char; 256];
        let len = error::lbagent_last_error(buf.as_mut_ptr(), buf.len());
        // SAFETY: NUL-terminated by lbagent_last_error.
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(text.to_bytes().len(), len.min(255));
        text.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_is_a_code_and_its_message_is_kept() {
        fn lbagent_example() -> lbagent_result {
            fallible!({
                if true {
                    panic!("the example broke");
                }
                Ok(())
            })
        }
        assert_eq!(lbagent_example(), LBAGENT_ERR_PANIC);
        assert_eq!(
            last_error(),
            "lbagent_example: internal error (panic caught, the call had no effect): the example broke"
        );
        fn lbagent_value() -> i32 {
            fallible!(-1, { Err(Failure::invalid("x is 3")) })
        }
        assert_eq!(lbagent_value(), -1);
        assert_eq!(last_error(), "lbagent_value: x is 3");
    }
}
