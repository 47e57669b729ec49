//! Server states and reason codes: the vocabulary shared by the API, the wire format and the
//! text replies. The numeric values are part of protocol v1 and of the C ABI; never renumber.

use std::ffi::CStr;
use std::fmt;

/// The state of the whole server or of one service.
///
/// Exported to C as `lbagent_state` (`LBAGENT_STATE_*`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Only in answers about a service that does not exist; rejected by `set_state`.
    Unknown = 0,
    /// The initial state: the server is not ready yet.
    Starting = 1,
    /// Serving: the server should receive new connections.
    Up = 2,
    /// Finishing existing work; takes no new connections.
    Drain = 3,
    /// Administratively out of service (maintenance).
    Maint = 4,
    /// Failed: takes no connections.
    Down = 5,
    /// Shutting down (final).
    Stopping = 6,
}

impl State {
    /// Every state, in numeric order.
    pub const ALL: [State; 7] = [
        State::Unknown,
        State::Starting,
        State::Up,
        State::Drain,
        State::Maint,
        State::Down,
        State::Stopping,
    ];

    /// The state with this wire/ABI value, if any.
    pub fn from_u8(value: u8) -> Option<State> {
        State::ALL.get(usize::from(value)).copied()
    }

    /// The state with this ABI value, if any (C passes states as `int`).
    pub fn from_i32(value: i32) -> Option<State> {
        u8::try_from(value).ok().and_then(State::from_u8)
    }

    /// Lower-case name, as used in configs, logs and JSON.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("")
    }

    /// `name()` as a NUL-terminated string, for C.
    pub fn c_name(self) -> &'static CStr {
        match self {
            State::Unknown => c"unknown",
            State::Starting => c"starting",
            State::Up => c"up",
            State::Drain => c"drain",
            State::Maint => c"maint",
            State::Down => c"down",
            State::Stopping => c"stopping",
        }
    }

    /// Parses a state name (case-insensitive).
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// How far from serving this state is; when the whole server and a service disagree, the
    /// answer is the one with the higher rank.
    pub(crate) fn severity(self) -> u8 {
        match self {
            State::Up => 0,
            State::Drain => 1,
            State::Maint => 2,
            State::Starting => 3,
            State::Down => 4,
            State::Stopping => 5,
            State::Unknown => 6,
        }
    }

    /// True for the states a host may set (`Unknown` is only an answer).
    pub fn settable(self) -> bool {
        self != State::Unknown
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the state is what it is. Exported to C as `lbagent_reason` (`LBAGENT_REASON_*`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The state was set by the host.
    Host = 0,
    /// The host stopped heart-beating for longer than `watchdog_ms`.
    WatchdogExpired = 1,
    /// A host self-check failed.
    CheckFailed = 2,
    /// The agent is stopping (`lbagent_stop`).
    AgentStopping = 3,
    /// The service asked about does not exist.
    UnknownService = 4,
    /// The agent itself failed (a caught internal panic); it cannot vouch for the server.
    AgentFault = 5,
    /// A host self-check ran longer than its timeout.
    CheckTimedOut = 6,
    /// A worker stopped heart-beating its watchdog slot.
    WorkerStalled = 7,
    /// The start did not end (no heartbeat, and the whole server still STARTING) within
    /// `start_timeout_ms`.
    StartTimedOut = 8,
    /// An operator took the server out (`lbagent-ctl drain|maint`, through `control=PATH`).
    Operator = 9,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 10] = [
        Reason::Host,
        Reason::WatchdogExpired,
        Reason::CheckFailed,
        Reason::AgentStopping,
        Reason::UnknownService,
        Reason::AgentFault,
        Reason::CheckTimedOut,
        Reason::WorkerStalled,
        Reason::StartTimedOut,
        Reason::Operator,
    ];

    /// The reason with this wire value, if any.
    pub fn from_u8(value: u8) -> Option<Reason> {
        Reason::ALL.get(usize::from(value)).copied()
    }

    /// Lower-case name with dashes, as used in logs and JSON.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("")
    }

    /// `name()` as a NUL-terminated string, for C.
    pub fn c_name(self) -> &'static CStr {
        match self {
            Reason::Host => c"host",
            Reason::WatchdogExpired => c"watchdog-expired",
            Reason::CheckFailed => c"check-failed",
            Reason::AgentStopping => c"agent-stopping",
            Reason::UnknownService => c"unknown-service",
            Reason::AgentFault => c"agent-fault",
            Reason::CheckTimedOut => c"check-timed-out",
            Reason::WorkerStalled => c"worker-stalled",
            Reason::StartTimedOut => c"start-timed-out",
            Reason::Operator => c"operator",
        }
    }

    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Host => "set by host",
            Reason::WatchdogExpired => "watchdog expired",
            Reason::CheckFailed => "check failed",
            Reason::AgentStopping => "agent stopping",
            Reason::UnknownService => "unknown service",
            Reason::AgentFault => "agent fault",
            Reason::CheckTimedOut => "check timed out",
            Reason::WorkerStalled => "worker stalled",
            Reason::StartTimedOut => "start timed out",
            Reason::Operator => "set by operator",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_protocol_values() {
        let values: Vec<u8> = State::ALL.iter().map(|s| *s as u8).collect();
        assert_eq!(values, vec![0, 1, 2, 3, 4, 5, 6]);
        for s in State::ALL {
            assert_eq!(State::from_u8(s as u8), Some(s));
            assert_eq!(State::from_name(&s.name().to_uppercase()), Some(s));
        }
        assert_eq!(State::from_u8(7), None);
        assert_eq!(State::from_i32(-1), None);
        assert_eq!(State::from_i32(256 + 2), None);
        for r in Reason::ALL {
            assert_eq!(Reason::from_u8(r as u8), Some(r));
        }
        assert_eq!(Reason::from_u8(10), None);
    }
}
