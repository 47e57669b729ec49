//! What happened to every datagram and every TCP connection the agent received: one counter
//! per outcome.
//!
//! The monitor thread writes them, except `host_unknown_service`, which the host's own calls
//! increment (one relaxed atomic add: no lock, no system call); the host reads them through
//! the API (never over the network). Every received datagram ends in exactly one outcome, so
//! `received == sum of Counter::DATAGRAM_OUTCOMES` (a fault of the monitor loop itself, which
//! is not tied to a datagram, would add one to `faults` only).
//!
//! Every accepted TCP connection (`tcp_agent=`, `http=`) ends in exactly one outcome too:
//! `conn_accepted == sum of Counter::CONNECTION_OUTCOMES` once no connection is open. A panic
//! while handling a connection counts under `conn_failed` and `faults`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::shm::ShmSlice;

/// A counter. Exported to C as `lbagent_counter` (`LBAGENT_COUNTER_*`); never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Datagrams received.
    Received = 0,
    /// Answered with a protocol STATUS.
    AnsweredStatus = 1,
    /// Answered with a text line.
    AnsweredText = 2,
    /// Answered with a protocol ERROR (unsupported version).
    AnsweredError = 3,
    /// Dropped: the source address is not in `allow`.
    DroppedNotAllowed = 4,
    /// Dropped: the source port is 0 or a well-known reflector port (7, 19, 53, 123, ...).
    DroppedSourcePort = 5,
    /// Dropped: sent to a multicast or broadcast address.
    DroppedNotUnicast = 6,
    /// Dropped: starts with `LBAP` but is malformed, or is empty.
    DroppedMalformed = 7,
    /// Dropped: a text request while `text=off`.
    DroppedTextOff = 8,
    /// Dropped: looks like an agent's own answer (never answer answers: no loops).
    DroppedLooksLikeReply = 9,
    /// An answer could not be sent (the send failed).
    SendFailed = 10,
    /// Internal panics caught by the agent (the datagram being handled is dropped).
    Faults = 11,
    /// Dropped: its source sent more than `rate_per_source` probes per second.
    DroppedRateLimited = 12,
    /// Dropped: all sources together sent more than `rate_global` probes per second.
    DroppedGlobalLimit = 13,
    /// Dropped: an authenticated probe with an unknown key id or a wrong MAC.
    DroppedAuthFailed = 14,
    /// Dropped: an authenticated probe whose timestamp is outside `auth_window_ms`.
    DroppedAuthStale = 15,
    /// TCP connections accepted on `tcp_agent` and `http` addresses.
    ConnAccepted = 16,
    /// Answered with the agent-check line over TCP (`tcp_agent`).
    AnsweredAgent = 17,
    /// Answered an HTTP request (`http`): 200, 503, 404 or 405.
    AnsweredHttp = 18,
    /// An HTTP request that was malformed (answered 400) or too large (431).
    HttpBadRequest = 19,
    /// Closed at once: the connection limit of its listener kind was reached.
    ConnDroppedLimit = 20,
    /// Closed at once: the source address is not in `allow`.
    ConnDroppedNotAllowed = 21,
    /// Closed without an answer: the request did not arrive in time.
    ConnTimedOut = 22,
    /// Closed without a whole answer: the peer closed or reset first, or a read or write
    /// failed (also counts a caught panic while handling the connection).
    ConnFailed = 23,
    /// Host calls (`set_state`, `set_weight`, `set_load`, `add_check`) that named a service
    /// not listed in `services=` (each returned `LBAGENT_ERR_UNKNOWN_SERVICE`): a typo in a
    /// service name that the host's code ignored still shows here.
    HostUnknownService = 24,
    /// STATUS datagrams pushed to subscribers on a change (not caused by a datagram received).
    Pushed = 25,
    /// Pushes that could not be sent.
    PushFailed = 26,
    /// Dropped: a sealed probe whose key id and nonce were already accepted within the window
    /// (a replay), or older than what the replay cache still remembers (see
    /// `guard/replay.rs`: beyond its bound it refuses rather than forgets).
    DroppedReplay = 27,
    /// Dropped: a sealed probe with a valid MAC over its key's budget (`rate_per_key`).
    DroppedKeyLimit = 28,
    /// Closed at once: its source (an IPv4 address, an IPv6 prefix of `ipv6_source_prefix`
    /// bits) already holds `conn_per_source` open connections of that listener kind.
    ConnDroppedSourceLimit = 29,
    /// Control socket connections (`control=`) answered (`ok` or `error=`).
    ControlAnswered = 30,
    /// Control socket connections refused: the peer's credentials do not allow it.
    ControlRefused = 31,
    /// Control socket connections closed without a whole reply (timed out, or failed).
    ControlFailed = 32,
}

impl Counter {
    /// Every counter, in numeric order.
    pub const ALL: [Counter; 33] = [
        Counter::Received,
        Counter::AnsweredStatus,
        Counter::AnsweredText,
        Counter::AnsweredError,
        Counter::DroppedNotAllowed,
        Counter::DroppedSourcePort,
        Counter::DroppedNotUnicast,
        Counter::DroppedMalformed,
        Counter::DroppedTextOff,
        Counter::DroppedLooksLikeReply,
        Counter::SendFailed,
        Counter::Faults,
        Counter::DroppedRateLimited,
        Counter::DroppedGlobalLimit,
        Counter::DroppedAuthFailed,
        Counter::DroppedAuthStale,
        Counter::ConnAccepted,
        Counter::AnsweredAgent,
        Counter::AnsweredHttp,
        Counter::HttpBadRequest,
        Counter::ConnDroppedLimit,
        Counter::ConnDroppedNotAllowed,
        Counter::ConnTimedOut,
        Counter::ConnFailed,
        Counter::HostUnknownService,
        Counter::Pushed,
        Counter::PushFailed,
        Counter::DroppedReplay,
        Counter::DroppedKeyLimit,
        Counter::ConnDroppedSourceLimit,
        Counter::ControlAnswered,
        Counter::ControlRefused,
        Counter::ControlFailed,
    ];

    /// The outcomes of datagrams: each received datagram adds one to exactly one of them.
    pub const DATAGRAM_OUTCOMES: [Counter; 17] = [
        Counter::AnsweredStatus,
        Counter::AnsweredText,
        Counter::AnsweredError,
        Counter::DroppedNotAllowed,
        Counter::DroppedSourcePort,
        Counter::DroppedNotUnicast,
        Counter::DroppedMalformed,
        Counter::DroppedTextOff,
        Counter::DroppedLooksLikeReply,
        Counter::SendFailed,
        Counter::Faults,
        Counter::DroppedRateLimited,
        Counter::DroppedGlobalLimit,
        Counter::DroppedAuthFailed,
        Counter::DroppedAuthStale,
        Counter::DroppedReplay,
        Counter::DroppedKeyLimit,
    ];

    /// The outcomes of TCP connections: each accepted connection adds one to exactly one of
    /// them when it is closed.
    pub const CONNECTION_OUTCOMES: [Counter; 8] = [
        Counter::AnsweredAgent,
        Counter::AnsweredHttp,
        Counter::HttpBadRequest,
        Counter::ConnDroppedLimit,
        Counter::ConnDroppedNotAllowed,
        Counter::ConnTimedOut,
        Counter::ConnFailed,
        Counter::ConnDroppedSourceLimit,
    ];

    /// The counter with this ABI value, if any.
    pub fn from_i32(value: i32) -> Option<Counter> {
        usize::try_from(value)
            .ok()
            .and_then(|i| Counter::ALL.get(i).copied())
    }

    /// Lower-case name with underscores.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Received => "received",
            Counter::AnsweredStatus => "answered_status",
            Counter::AnsweredText => "answered_text",
            Counter::AnsweredError => "answered_error",
            Counter::DroppedNotAllowed => "dropped_not_allowed",
            Counter::DroppedSourcePort => "dropped_source_port",
            Counter::DroppedNotUnicast => "dropped_not_unicast",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::DroppedTextOff => "dropped_text_off",
            Counter::DroppedLooksLikeReply => "dropped_looks_like_reply",
            Counter::SendFailed => "send_failed",
            Counter::Faults => "faults",
            Counter::DroppedRateLimited => "dropped_rate_limited",
            Counter::DroppedGlobalLimit => "dropped_global_limit",
            Counter::DroppedAuthFailed => "dropped_auth_failed",
            Counter::DroppedAuthStale => "dropped_auth_stale",
            Counter::ConnAccepted => "conn_accepted",
            Counter::AnsweredAgent => "answered_agent",
            Counter::AnsweredHttp => "answered_http",
            Counter::HttpBadRequest => "http_bad_request",
            Counter::ConnDroppedLimit => "conn_dropped_limit",
            Counter::ConnDroppedNotAllowed => "conn_dropped_not_allowed",
            Counter::ConnTimedOut => "conn_timed_out",
            Counter::ConnFailed => "conn_failed",
            Counter::HostUnknownService => "host_unknown_service",
            Counter::Pushed => "pushed",
            Counter::PushFailed => "push_failed",
            Counter::DroppedReplay => "dropped_replay",
            Counter::DroppedKeyLimit => "dropped_key_limit",
            Counter::ConnDroppedSourceLimit => "conn_dropped_source_limit",
            Counter::ControlAnswered => "control_answered",
            Counter::ControlRefused => "control_refused",
            Counter::ControlFailed => "control_failed",
        }
    }

    /// True for the counters of dropped datagrams (not the `conn_*` counters of TCP).
    pub fn is_drop(self) -> bool {
        self.name().starts_with("dropped_")
    }
}

/// The agent's counters, in memory shared with forked children (a prefork worker reads the
/// master's counters).
pub(crate) struct Counters {
    values: ShmSlice<AtomicU64>,
}

impl Counters {
    pub(crate) fn new() -> std::io::Result<Counters> {
        Ok(Counters {
            values: ShmSlice::new(Counter::ALL.len())?,
        })
    }

    pub(crate) fn add(&self, counter: Counter) {
        self.values[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }
}
