//! Errors of the Rust API. The C shim maps each to an `lbagent_result` code.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

/// Why an agent call failed.
#[derive(Debug)]
pub enum Error {
    /// The configuration is invalid; the text names the key and value.
    Config(ConfigError),
    /// A listen address could not be bound.
    Bind {
        /// The address from the config.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// A `tcp_agent` or `http` address could not be bound.
    BindTcp {
        /// The config key (`tcp_agent` or `http`).
        key: &'static str,
        /// The address from the config.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// Another system call failed while starting (socket options, poller, thread).
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// `State::Unknown` (or, from C, a value that is no state) was passed to `set_state`.
    InvalidState,
    /// A weight above 100 percent.
    InvalidWeight,
    /// The service name is not in `services=`.
    UnknownService,
    /// The agent was stopped; it no longer takes updates.
    Stopped,
    /// `stop` timed out waiting for the monitor thread.
    Timeout,
    /// A check with that name exists already.
    Exists,
    /// No room: every check slot is in use.
    TooMany,
    /// No such check, or the worker slot is not registered.
    NotFound,
    /// A check's name (1..=64 bytes) or interval (above 0) is invalid.
    InvalidCheck,
    /// No free worker slot (`workers=N` is 0, or all N are registered to live processes).
    NoWorkerSlots,
    /// The call does not fit this process: `after_fork_*` in the process that started the
    /// agent, or `stop` in a forked child that did not take the agent over.
    WrongProcess,
    /// `wait_drained` timed out: the drain as it stood then.
    NotDrained(crate::status::Drain),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Bind { addr, source } => write!(f, "cannot bind UDP {addr}: {source}"),
            Error::BindTcp { key, addr, source } => {
                write!(f, "cannot bind TCP {addr} ({key}=): {source}")
            }
            Error::Io { what, source } => write!(f, "cannot {what}: {source}"),
            Error::InvalidState => {
                f.write_str("invalid state: use starting, up, drain, maint, down or stopping")
            }
            Error::InvalidWeight => f.write_str("invalid weight: percent must be 0..=100"),
            Error::UnknownService => f.write_str("unknown service: not listed in services="),
            Error::Stopped => f.write_str("the agent is stopped"),
            Error::Timeout => f.write_str("timed out waiting for the monitor thread to stop"),
            Error::Exists => f.write_str("a check with that name exists already"),
            Error::TooMany => f.write_str("too many checks (64 at most)"),
            Error::NotFound => f.write_str("no such check or worker slot"),
            Error::InvalidCheck => {
                f.write_str("invalid check: a name of 1..=64 bytes and an interval above 0")
            }
            Error::NoWorkerSlots => {
                f.write_str("no free worker slot (set workers=N, or release slots of gone workers)")
            }
            Error::WrongProcess => f.write_str(
                "wrong process: after_fork_* belongs in a forked child, stop and drain questions in the process that owns the agent",
            ),
            Error::NotDrained(d) if !d.draining => write!(
                f,
                "timed out: not draining (the answer is {}, serving: set drain first)",
                d.state
            ),
            Error::NotDrained(d) => write!(
                f,
                "timed out: drain not complete after {} ms ({} of {} probers told{}, in_use {})",
                d.drain_ms,
                d.probers_told,
                d.probers_told + d.probers_pending,
                if d.probers_untracked {
                    ", more probers than the table holds"
                } else {
                    ""
                },
                d.in_use
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Bind { source, .. }
            | Error::BindTcp { source, .. }
            | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}
