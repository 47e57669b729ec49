//! lbagent: an embeddable health agent for servers behind a load balancer.
//!
//! The host starts an [`Agent`], reports its state, weight and load, and heart-beats from its
//! main loop; a background monitor thread answers the director's probes over UDP (protocol v1
//! and a text line that keepalived, HAProxy and ldirectord understand), HAProxy's agent-check
//! and HTTP, and reports the server down by itself when the heartbeats stop.
//!
//! Where things are (`docs/DEVELOPING.md` has the whole map):
//! - [`agent`]: the host-facing handle, and its threads across start, stop and fork;
//! - [`status`]: the lock-free status board the host writes and the monitor reads, with the
//!   host's self-checks;
//! - `serve`: the monitor thread: its loop, UDP, TCP agent-check and HTTP connections;
//! - [`proto`]: the formats on the wire, pure encode/decode: protocol v1, its authentication
//!   trailer, the text line, the agent-check line, the HTTP answer;
//! - [`guard`]: who gets an answer: allow-list, source checks, rate limits;
//! - [`client`]: the prober side: blocking probe and non-blocking `Prober`;
//! - [`config`], [`keys`], [`state`], [`counters`], [`error`], [`log`]: what the rest shares;
//!   [`state_file`]: the operator's override kept across restarts;
//! - `ffi`: the C ABI (one file per C object) and `sys`: the OS calls, the only two places
//!   where `unsafe` is allowed.

#![warn(missing_docs)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod client;
pub mod config;
pub mod counters;
pub mod error;
#[allow(unsafe_code)]
mod ffi;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod keys;
pub mod log;
pub mod proto;
mod serve;
mod shared;
pub mod state;
pub mod state_file;
pub mod status;
#[allow(unsafe_code)]
mod sys;

pub use agent::Agent;
pub use config::{AuthMode, Config, ConfigError, DEFAULT_PORT};
pub use counters::Counter;
pub use error::Error;
pub use log::{Level as LogLevel, LogCallback};
pub use state::{Reason, State};
pub use status::{Status, WorkerPolicy};

/// systemd's notification protocol (`NOTIFY_SOCKET`), as the agent's `systemd=on` uses it;
/// public for the command-line tools (lbagent-director runs as `Type=notify`).
pub mod systemd {
    pub use crate::sys::notify::{Notifier, NotifyTarget};
}

/// The library version (also `lbagent_version()` and the header's `LBAGENT_VERSION`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
