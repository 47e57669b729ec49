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
