//! What an agent answered: decoding a datagram received for a probe into an [`Answer`], or
//! into why it is none ([`ProbeError`]).

use std::fmt;
use std::io;
use std::time::Duration;

use super::keyed::Hints;
use crate::keys::Key;
use crate::proto::auth::{self, AuthError};
use crate::proto::wire::{self, Reply};
use crate::state::{Reason, State};

/// An agent's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The state (`State::Unknown` also for a value this version does not know).
    pub state: State,
    /// Why, when the code is one this version knows.
    pub reason: Option<Reason>,
    /// The raw reason code.
    pub reason_code: u8,
    /// Percent of the weight configured on the director.
    pub weight_pct: u8,
    /// Work in progress.
    pub in_use: u32,
    /// Capacity (0 = unknown).
    pub capacity: u32,
    /// Increases on every change of state, reason or weight.
    pub generation: u32,
    /// Milliseconds since the state last changed.
    pub since_ms: u32,
    /// Random at each agent start.
    pub instance_id: u64,
    /// The host's reason text.
    pub message: String,
    /// How far a drain has come, when the agent sends it (agents since the drain extension
    /// of protocol v1; `None` from older ones).
    pub drain: Option<DrainProgress>,
    /// Round-trip time of this probe (zero for a pushed answer).
    pub rtt: Duration,
    /// The agent granted the probe's subscription: it pushes changes until the lease ends.
    pub subscribed: bool,
    /// Pushed by the agent on a change, not asked for.
    pub pushed: bool,
}

/// How far a drain has come, as the agent told this prober.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// The answer says "no new connections".
    pub draining: bool,
    /// Every prober seen within the agent's drain window was told so often enough, and the
    /// host reports no work in progress.
    pub complete: bool,
    /// More probers asked than the agent can track: the drain cannot be complete yet.
    pub untracked: bool,
    /// Non-serving answers this prober has had in a row, this one included.
    pub told_you: u8,
    /// Probers seen within the drain window that were told often enough.
    pub probers_told: u16,
    /// Probers seen within the drain window that were not (yet).
    pub probers_pending: u16,
    /// Milliseconds since the answer stopped saying "serving".
    pub drain_ms: u32,
}

impl DrainProgress {
    fn from_wire(d: &wire::DrainFields) -> DrainProgress {
        DrainProgress {
            draining: d.flags & wire::DRAIN_DRAINING != 0,
            complete: d.flags & wire::DRAIN_COMPLETE != 0,
            untracked: d.flags & wire::DRAIN_UNTRACKED != 0,
            told_you: d.told_you,
            probers_told: d.probers_told,
            probers_pending: d.probers_pending,
            drain_ms: d.drain_ms,
        }
    }
}

impl fmt::Display for DrainProgress {
    /// `drain complete: 2 of 2 probers told, 4.1 s` or `draining: 1 of 3 probers told, ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.draining {
            return f.write_str("not draining");
        }
        write!(
            f,
            "{}: {} of {} probers told{}, {:.1} s",
            if self.complete {
                "drain complete"
            } else {
                "draining"
            },
            self.probers_told,
            u32::from(self.probers_told) + u32::from(self.probers_pending),
            if self.untracked {
                " (more probers than tracked)"
            } else {
                ""
            },
            f64::from(self.drain_ms) / 1000.0
        )
    }
}

impl Answer {
    /// True when the server should receive new connections: up, with a weight above zero.
    pub fn is_serving(&self) -> bool {
        self.state == State::Up && self.weight_pct > 0
    }

    /// The drain progress worth showing: while the host takes the server out on purpose
    /// (drain, maintenance, stopping, or up at weight 0), not while it starts or is down.
    pub fn drain_shown(&self) -> Option<DrainProgress> {
        let taken_out = matches!(self.state, State::Drain | State::Maint | State::Stopping)
            || (self.state == State::Up && self.weight_pct == 0);
        self.drain.filter(|d| d.draining && taken_out)
    }
}

impl fmt::Display for Answer {
    /// The state in a few words: `up (set by host), weight 100%, load 3/64: "ready"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.state)?;
        match self.reason {
            Some(r) => write!(f, "{r}")?,
            None => write!(f, "reason {}", self.reason_code)?,
        }
        write!(f, "), weight {}%, load {}", self.weight_pct, self.in_use)?;
        if self.capacity > 0 {
            write!(f, "/{}", self.capacity)?;
        }
        if !self.message.is_empty() {
            write!(f, ": \"{}\"", self.message)?;
        }
        if let Some(d) = self.drain_shown() {
            write!(f, " [{d}]")?;
        }
        Ok(())
    }
}

/// Why a probe got no valid answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeError {
    /// The target is not `HOST[:PORT]` or the name does not resolve.
    BadTarget(String),
    /// No answer within the timeout.
    Timeout(Duration),
    /// ICMP port unreachable: nothing listens on that UDP port.
    Refused,
    /// ICMP host or network unreachable (or no route): the host is down or cannot be reached.
    Unreachable(io::Error),
    /// The answer is not protocol v1: something else listens there.
    NotAnAgent(&'static str),
    /// The agent speaks another protocol version.
    VersionMismatch {
        /// Highest version the agent speaks.
        agent_version: u8,
    },
    /// The agent requires authenticated probes.
    AuthRequired,
    /// With a key: the agent answered the unsealed diagnostic probe but not the sealed one
    /// by the deadline (an unknown key id, another secret, clocks further apart than its
    /// `auth_window_ms`, or no `key_file` there). The text says which, and what else came.
    WrongKey(String),
    /// With a key: no sealed answer by the deadline, but replies that did not authenticate
    /// came (forged, or from something that is not the agent with this key); `hints` counts
    /// them. Never reported before the deadline.
    Unauthenticated {
        /// The probe's timeout.
        timeout: Duration,
        /// What came instead.
        hints: Hints,
    },
    /// A local socket error.
    Io(io::Error),
}

impl ProbeError {
    /// A one-word name for scripts (`--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::BadTarget(_) => "bad-target",
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Refused => "refused",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::NotAnAgent(_) => "not-an-agent",
            ProbeError::VersionMismatch { .. } => "version-mismatch",
            ProbeError::AuthRequired => "auth-required",
            ProbeError::WrongKey(_) => "wrong-key",
            ProbeError::Unauthenticated { .. } => "unauthenticated",
            ProbeError::Io(_) => "io",
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::BadTarget(why) => write!(f, "bad target: {why}"),
            ProbeError::Timeout(t) => write!(
                f,
                "timeout: no answer within {} ms (agent not running, port filtered, or source not allowed)",
                t.as_millis()
            ),
            ProbeError::Refused => {
                f.write_str("refused: ICMP port unreachable (nothing listens on that UDP port)")
            }
            ProbeError::Unreachable(e) => write!(f, "unreachable: {e} (host down or no route)"),
            ProbeError::NotAnAgent(what) => write!(f, "not an lbagent: {what}"),
            ProbeError::VersionMismatch { agent_version } => write!(
                f,
                "version mismatch: the agent speaks protocol version {agent_version}, this prober {}",
                wire::VERSION
            ),
            ProbeError::AuthRequired => f.write_str(
                "authentication required: the agent only answers authenticated probes (use a key)",
            ),
            ProbeError::WrongKey(why) => write!(f, "wrong key: {why}"),
            ProbeError::Unauthenticated { timeout, hints } => write!(
                f,
                "no authenticated answer within {} ms; saw {hints}",
                timeout.as_millis()
            ),
            ProbeError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// The nonce of a protocol v1 answer, if `datagram` is one.
pub(crate) fn answer_nonce(datagram: &[u8]) -> Option<u64> {
    (datagram.len() >= 16 && datagram.starts_with(&wire::MAGIC)).then(|| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&datagram[8..16]);
        u64::from_be_bytes(n)
    })
}

/// Maps a socket error to what it says about the target: ICMP errors reported on the socket
/// are answers too.
pub(crate) fn io_error(e: io::Error) -> ProbeError {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ProbeError::Refused,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
            ProbeError::Unreachable(e)
        }
        _ => ProbeError::Io(e),
    }
}

/// Interprets a datagram received in answer to the probe with `nonce`; `Ok(None)` for a stale
/// answer to another probe (keep waiting).
pub fn read_answer(
    datagram: &[u8],
    nonce: u64,
    rtt: Duration,
) -> Result<Option<Answer>, ProbeError> {
    read_answer_keyed(datagram, nonce, rtt, None)
}

/// `read_answer` for a probe sealed with `key`: an answer that does not authenticate with it
/// is `WrongKey`. (A probe ignores such answers and waits for a valid one until its deadline;
/// see `keyed.rs`.)
pub fn read_answer_keyed(
    datagram: &[u8],
    nonce: u64,
    rtt: Duration,
    key: Option<&Key>,
) -> Result<Option<Answer>, ProbeError> {
    match decode(datagram, nonce, rtt, key) {
        Decoded::Answer(answer) => Ok(Some(answer)),
        Decoded::Stale => Ok(None),
        other => Err(other.into_error(key)),
    }
}

/// What a datagram received for the probe with `nonce` is.
pub(crate) enum Decoded {
    /// A valid answer (sealed with the key, when there is one).
    Answer(Answer),
    /// An answer to another probe (another nonce).
    Stale,
    /// Not protocol v1.
    NotProtocol,
    /// The probe came back unchanged.
    Echo,
    /// A malformed protocol v1 answer.
    Malformed,
    /// With a key: a STATUS with the nonce and no seal.
    Unsealed,
    /// With a key: a STATUS sealed with another key id.
    OtherKey(u32),
    /// With a key: a STATUS sealed with the key id whose MAC is wrong.
    BadMac,
    /// ERROR "authentication required".
    AuthRequired,
    /// ERROR "unsupported version": the agent's highest version.
    Version(u8),
}

impl Decoded {
    /// The error a reply that is not an answer stands for (for a probe sealed with `key`).
    pub(crate) fn into_error(self, key: Option<&Key>) -> ProbeError {
        let wrong_key = |why: String| ProbeError::WrongKey(why);
        match self {
            Decoded::NotProtocol => ProbeError::NotAnAgent(
                "the answer is not lbagent protocol (another UDP service on that port?)",
            ),
            Decoded::Echo => {
                ProbeError::NotAnAgent("the probe came back unchanged (a UDP echo service?)")
            }
            Decoded::Malformed | Decoded::Answer(_) | Decoded::Stale => {
                ProbeError::NotAnAgent("a malformed lbagent answer")
            }
            Decoded::Unsealed => {
                wrong_key("the answer is not sealed (the agent has no key_file?)".into())
            }
            Decoded::OtherKey(id) => wrong_key(format!(
                "the answer is sealed with key id {id}, not {}",
                key.map_or(0, Key::id)
            )),
            Decoded::BadMac => wrong_key(format!(
                "the answer does not authenticate with key id {} (forged, or another secret)",
                key.map_or(0, Key::id)
            )),
            Decoded::AuthRequired if key.is_some() => {
                wrong_key("the agent answered \"authentication required\" to a sealed probe".into())
            }
            Decoded::AuthRequired => ProbeError::AuthRequired,
            Decoded::Version(agent_version) => ProbeError::VersionMismatch { agent_version },
        }
    }
}

/// Decodes a datagram received for the probe with `nonce`, sealed with `key` if any.
pub(crate) fn decode(datagram: &[u8], nonce: u64, rtt: Duration, key: Option<&Key>) -> Decoded {
    match wire::decode_reply(datagram) {
        Ok(Reply::Status(s)) => {
            if s.nonce != nonce {
                return Decoded::Stale;
            }
            if let Some(key) = key {
                match auth::open(datagram, |id| (id == key.id()).then_some(key)) {
                    Ok(_) => {}
                    Err(AuthError::Missing) => return Decoded::Unsealed,
                    Err(AuthError::UnknownKey(id)) => return Decoded::OtherKey(id),
                    Err(_) => return Decoded::BadMac,
                }
            }
            Decoded::Answer(Answer {
                state: State::from_u8(s.state).unwrap_or(State::Unknown),
                reason: Reason::from_u8(s.reason),
                reason_code: s.reason,
                weight_pct: s.weight_pct.min(100) as u8,
                in_use: s.in_use,
                capacity: s.capacity,
                generation: s.generation,
                since_ms: s.since_ms,
                instance_id: s.instance_id,
                message: String::from_utf8_lossy(s.message).into_owned(),
                drain: wire::decode_drain(datagram, &s).map(|d| DrainProgress::from_wire(&d)),
                rtt,
                subscribed: s.flags & wire::FLAG_SUBSCRIBED != 0
                    && s.flags & wire::FLAG_PUSHED == 0,
                pushed: s.flags & wire::FLAG_PUSHED != 0,
            })
        }
        Ok(Reply::Error {
            nonce: n,
            version,
            code,
        }) => {
            if n != nonce {
                return Decoded::Stale;
            }
            match code {
                wire::ERROR_AUTH_REQUIRED => Decoded::AuthRequired,
                _ => Decoded::Version(version),
            }
        }
        Err(wire::DecodeError::NotProtocol) => Decoded::NotProtocol,
        Err(wire::DecodeError::UnexpectedType(wire::TYPE_PROBE)) => Decoded::Echo,
        Err(_) => Decoded::Malformed,
    }
}
