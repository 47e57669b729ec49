//! The formats on the wire, as pure functions (no I/O, no clock, no status board): each is
//! easy to test and fuzz on its own.
//!
//! - [`wire`]: protocol v1 (PROBE, STATUS, ERROR), byte for byte as `docs/PROTOCOL.md`;
//! - [`auth`]: the authentication trailer that seals a PROBE or a STATUS;
//! - [`text`]: the text line that keepalived, ldirectord and HAProxy understand;
//! - [`agent_check`]: HAProxy's agent-check exchange over TCP (the request line and the answer);
//! - [`http`]: the HTTP health endpoint's request and answer;
//! - [`control`]: the operator's control socket (`lbagent-ctl`): its request line and reply;
//! - [`metrics`]: the Prometheus text exposition of `GET /metrics`.

pub mod agent_check;
pub mod auth;
pub mod control;
pub mod http;
pub mod metrics;
pub mod text;
pub mod wire;
