//! lbagent: an embeddable health agent for servers behind a load balancer.
//!
//! The host starts an [`Agent`], reports its state, weight and load, and heart-beats from its
//! main loop; a background monitor thread answers the director's probes over UDP (protocol v1
//! and a text line that keepalived, HAProxy and ldirectord understand), and reports the server
//! down by itself when the heartbeats stop.
//!
//! Layout: the core is plain safe Rust —
//! [`config`] (the `key=value` configuration), [`state`] (states and reasons),
//! [`status`] (the lock-free status board), [`wire`] (protocol v1 encode/decode),
//! [`text`] (the text line), `responder` (one datagram in, one answer out),
//! `monitor` (the thread and its sockets), [`agent`] (the host-facing handle) and
//! [`client`] (the prober). The C ABI lives in `ffi`, one file per C object.

#![warn(missing_docs)]

pub mod agent;
pub mod allow;
pub mod auth;
mod checks;
pub mod client;
mod clock;
pub mod config;
pub mod counters;
pub mod error;
mod ffi;
#[doc(hidden)]
pub mod fuzzing;
mod limit;
pub mod log;
mod monitor;
mod process;
mod responder;
mod shm;
pub mod state;
pub mod status;
pub mod text;
pub mod wire;

pub use agent::Agent;
pub use config::{AuthMode, Config, ConfigError, DEFAULT_PORT};
pub use counters::Counter;
pub use error::Error;
pub use log::{Level as LogLevel, LogCallback};
pub use state::{Reason, State};
pub use status::{Status, WorkerPolicy};

/// The library version (also `lbagent_version()` and the header's `LBAGENT_VERSION`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
