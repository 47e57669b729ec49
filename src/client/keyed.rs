//! One probe in flight, sealed or not: what each datagram and ICMP error from its target
//! means for it, when its diagnostic is due, and what it reports at its deadline. The one state
//! machine of the blocking [`probe`](super::probe) and of the non-blocking
//! [`Prober`](super::Prober), which only do the I/O around it.
//!
//! Without a key the first reply decides: an answer, or at once why there is none (not an
//! agent, a malformed answer, a version mismatch, ICMP port or host unreachable).
//!
//! With a key only a STATUS sealed with that key, echoing the probe's nonce, completes the
//! probe. Anything else may be forged by whoever can send to the prober (an off-path sender
//! spraying its port, an observer on the path answering first), so nothing that fails
//! authentication ends the probe early: junk, malformed, unsealed or wrongly sealed answers,
//! ERROR answers and ICMP errors are counted as [`Hints`] while the probe waits for a sealed
//! answer until its deadline. Only then does it fail, naming the most telling hint.
//!
//! Half-way through the timeout a keyed probe still without a valid answer also sends one
//! unsealed diagnostic PROBE (same service and length, a fresh nonce): the agent drops a probe
//! sealed with a key it does not know silently, and an answer to the diagnostic, with no valid
//! answer to the sealed probe by the deadline, tells a wrong key from a dead agent. That answer
//! is unauthenticated too (an observer can see the diagnostic's nonce), so it ends nothing
//! early either: at the deadline it makes the failure [`ProbeError::WrongKey`], the only result
//! that names the key. It is the one reply that shows the key is at fault: the agent (or
//! someone on the path) answered a probe without a seal but not the sealed one, which the agent
//! answers first when it can. Without it, unauthenticated replies make the failure
//! [`ProbeError::Unauthenticated`], and silence [`ProbeError::Timeout`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ProbeError;
use super::answer::{Answer, Decoded, answer_nonce, decode};
use crate::keys::Key;
use crate::proto::wire;

/// What a keyed probe received that did not authenticate, by kind. None of it is trusted; at
/// the deadline it says why there was no valid answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hints {
    /// Answers (STATUS or ERROR) to the unsealed diagnostic probe.
    pub diagnostic_answers: u32,
    /// STATUS answers with the probe's nonce and no seal (an agent without `key_file`?).
    pub unsealed: u32,
    /// Sealed answers with another key id (the last one seen is `other_key_id`).
    pub other_key: u32,
    /// The key id of the last answer sealed with another key.
    pub other_key_id: Option<u32>,
    /// Sealed answers with the probe's key id whose MAC is wrong.
    pub bad_mac: u32,
    /// ERROR answers ("authentication required", "unsupported version") to the sealed probe.
    pub errors: u32,
    /// ICMP port unreachable.
    pub icmp_refused: u32,
    /// ICMP host or network unreachable.
    pub icmp_unreachable: u32,
    /// Datagrams that are not lbagent protocol.
    pub not_protocol: u32,
    /// Malformed lbagent datagrams (also the probe sent back unchanged).
    pub malformed: u32,
}

impl Hints {
    /// True when nothing was received.
    pub fn is_empty(&self) -> bool {
        *self == Hints::default()
    }

    /// Replies received in all.
    pub fn total(&self) -> u32 {
        self.diagnostic_answers
            + self.unsealed
            + self.other_key
            + self.bad_mac
            + self.errors
            + self.icmp_refused
            + self.icmp_unreachable
            + self.not_protocol
            + self.malformed
    }
}

impl fmt::Display for Hints {
    /// The replies, the most telling first: "3 ICMP port unreachable, 12 datagrams that are
    /// not lbagent protocol".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let other_key = match self.other_key_id {
            Some(id) => format!("sealed with key id {id}"),
            None => "sealed with another key".into(),
        };
        let parts: [(u32, &str, &str); 9] = [
            (
                self.diagnostic_answers,
                "answer to the unsealed diagnostic probe",
                "answers to the unsealed diagnostic probe",
            ),
            (self.unsealed, "unsealed answer", "unsealed answers"),
            (self.other_key, "answer", "answers"),
            (
                self.bad_mac,
                "answer whose MAC is wrong",
                "answers whose MAC is wrong",
            ),
            (
                self.errors,
                "unsealed ERROR answer",
                "unsealed ERROR answers",
            ),
            (
                self.icmp_refused,
                "ICMP port unreachable",
                "ICMP port unreachable",
            ),
            (
                self.icmp_unreachable,
                "ICMP host or network unreachable",
                "ICMP host or network unreachable",
            ),
            (
                self.not_protocol,
                "datagram that is not lbagent protocol",
                "datagrams that are not lbagent protocol",
            ),
            (
                self.malformed,
                "malformed lbagent datagram",
                "malformed lbagent datagrams",
            ),
        ];
        let mut first = true;
        for (i, (n, one, many)) in parts.iter().enumerate().filter(|(_, p)| p.0 > 0) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {}", if *n == 1 { one } else { many })?;
            if i == 2 {
                write!(f, " {other_key}")?;
            }
        }
        Ok(())
    }
}

/// What a reply did to the probe.
pub(crate) enum Step {
    /// Nothing decided: keep waiting.
    Wait,
    /// The probe is finished.
    Done(Result<Answer, ProbeError>),
}

/// One probe in flight.
pub(crate) struct Exchange {
    nonce: u64,
    key: Option<Arc<Key>>,
    sent: Instant,
    timeout: Duration,
    /// The service asked about, kept inline (no allocation per probe) for the diagnostic.
    service: [u8; wire::MAX_NAME_LEN],
    service_len: u8,
    /// The diagnostic's nonce, once sent.
    diagnostic: Option<u64>,
    hints: Hints,
}

impl Exchange {
    /// A probe with `nonce` about `service` (at most 64 bytes: `check_service` passed), sealed
    /// with `key` if any, sent at `sent`.
    pub(crate) fn new(
        nonce: u64,
        service: &[u8],
        key: Option<Arc<Key>>,
        sent: Instant,
        timeout: Duration,
    ) -> Exchange {
        let len = service.len().min(wire::MAX_NAME_LEN);
        let mut inline = [0u8; wire::MAX_NAME_LEN];
        inline[..len].copy_from_slice(&service[..len]);
        Exchange {
            nonce,
            key,
            sent,
            timeout,
            service: inline,
            service_len: len as u8,
            diagnostic: None,
            hints: Hints::default(),
        }
    }

    /// The key the probe was sealed with (a subscription it asked for is sealed with it too).
    pub(crate) fn key(&self) -> Option<&Arc<Key>> {
        self.key.as_ref()
    }

    /// When the probe was sent.
    pub(crate) fn sent(&self) -> Instant {
        self.sent
    }

    /// When the probe fails if nothing valid has come.
    pub(crate) fn deadline(&self) -> Instant {
        self.sent + self.timeout
    }

    /// When the diagnostic is due: half-way, for a keyed probe that has not sent it (`None`
    /// otherwise).
    pub(crate) fn diagnostic_at(&self) -> Option<Instant> {
        (self.key.is_some() && self.diagnostic.is_none()).then(|| self.sent + self.timeout / 2)
    }

    /// Whether the diagnostic is due at `now` (and still of use: before the deadline).
    pub(crate) fn diagnostic_due(&self, now: Instant) -> bool {
        self.diagnostic_at().is_some_and(|at| at <= now) && now < self.deadline()
    }

    /// The earliest of the deadline and the diagnostic's time.
    pub(crate) fn next_event(&self) -> Instant {
        match self.diagnostic_at() {
            Some(at) => at.min(self.deadline()),
            None => self.deadline(),
        }
    }

    /// Writes the unsealed diagnostic PROBE with `nonce` into `out` (512 bytes), `probe_len`
    /// long like the sealed one, and returns its length. Call `diagnostic_sent` once it is
    /// sent.
    pub(crate) fn write_diagnostic(&self, nonce: u64, probe_len: usize, out: &mut [u8]) -> usize {
        let service = &self.service[..usize::from(self.service_len)];
        wire::encode_probe(nonce, service, probe_len, out)
    }

    /// The diagnostic with `nonce` was sent.
    pub(crate) fn diagnostic_sent(&mut self, nonce: u64) {
        self.diagnostic = Some(nonce);
    }

    /// The diagnostic's nonce, once sent.
    pub(crate) fn diagnostic(&self) -> Option<u64> {
        self.diagnostic
    }

    /// A datagram from the target, received at `now`.
    pub(crate) fn on_datagram(&mut self, datagram: &[u8], now: Instant) -> Step {
        if self.diagnostic.is_some() && answer_nonce(datagram) == self.diagnostic {
            // Whatever it says (a STATUS, or ERROR "authentication required"), someone answers
            // unsealed probes there. Decided at the deadline, if no valid answer comes.
            self.hints.diagnostic_answers += 1;
            return Step::Wait;
        }
        let rtt = now.saturating_duration_since(self.sent);
        let decoded = decode(datagram, self.nonce, rtt, self.key.as_deref());
        match decoded {
            Decoded::Answer(answer) => Step::Done(Ok(answer)),
            Decoded::Stale => Step::Wait,
            other if self.key.is_none() => Step::Done(Err(other.into_error(None))),
            Decoded::Unsealed => self.hint(|h| h.unsealed += 1),
            Decoded::OtherKey(id) => self.hint(|h| {
                h.other_key += 1;
                h.other_key_id = Some(id);
            }),
            Decoded::BadMac => self.hint(|h| h.bad_mac += 1),
            Decoded::AuthRequired | Decoded::Version(_) => self.hint(|h| h.errors += 1),
            Decoded::NotProtocol => self.hint(|h| h.not_protocol += 1),
            Decoded::Echo | Decoded::Malformed => self.hint(|h| h.malformed += 1),
        }
    }

    /// An ICMP error (its errno) about a datagram this probe sent.
    pub(crate) fn on_icmp(&mut self, errno: i32) -> Step {
        let error = super::answer::io_error(std::io::Error::from_raw_os_error(errno));
        if self.key.is_none() {
            return Step::Done(Err(error));
        }
        match error {
            ProbeError::Refused => self.hint(|h| h.icmp_refused += 1),
            _ => self.hint(|h| h.icmp_unreachable += 1),
        }
    }

    fn hint(&mut self, record: impl FnOnce(&mut Hints)) -> Step {
        record(&mut self.hints);
        Step::Wait
    }

    /// What the probe reports once its deadline has passed without a valid answer.
    pub(crate) fn expire(&mut self) -> ProbeError {
        let hints = std::mem::take(&mut self.hints);
        let Some(key) = self.key.as_deref() else {
            return ProbeError::Timeout(self.timeout);
        };
        if hints.diagnostic_answers > 0 {
            let why = if hints.unsealed > 0 {
                "the agent answers without a seal (no key_file there?)".to_string()
            } else if let Some(id) = hints.other_key_id {
                format!(
                    "the agent answers sealed with key id {id}, not {}",
                    key.id()
                )
            } else if hints.bad_mac > 0 {
                format!(
                    "answers sealed with key id {} do not authenticate (another secret there?)",
                    key.id()
                )
            } else {
                format!(
                    "the agent answers unauthenticated probes but dropped the sealed one (key id {} unknown there, another secret, or clocks further apart than its auth_window_ms)",
                    key.id()
                )
            };
            return ProbeError::WrongKey(format!("{why}; saw {hints}"));
        }
        if hints.is_empty() {
            return ProbeError::Timeout(self.timeout);
        }
        ProbeError::Unauthenticated {
            timeout: self.timeout,
            hints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_datagrams;

    fn key(id: u32, byte: u8) -> Arc<Key> {
        Arc::new(Key::new(id, &[byte; 32]).unwrap())
    }

    fn status(nonce: u64, state: crate::State, seal: Option<&Key>) -> Vec<u8> {
        let fields = wire::StatusFields {
            state: state as u8,
            ..test_datagrams::up(nonce)
        };
        test_datagrams::status(&fields, seal)
    }

    fn forgeries(nonce: u64) -> Vec<Vec<u8>> {
        let mut error = [0u8; 64];
        let n = wire::encode_error(nonce, wire::ERROR_AUTH_REQUIRED, &mut error);
        let mut echo = [0u8; 512];
        let e = wire::encode_probe(nonce, b"", 100, &mut echo);
        let mut bad_mac = status(nonce, crate::State::Down, Some(&key(7, 1)));
        let last = bad_mac.len() - 1;
        bad_mac[last] ^= 1;
        vec![
            b"x".to_vec(),
            b"LBAP".to_vec(),
            echo[..e].to_vec(),
            status(nonce, crate::State::Down, None),
            status(nonce, crate::State::Down, Some(&key(8, 1))),
            bad_mac,
            error[..n].to_vec(),
        ]
    }

    #[test]
    fn without_a_key_the_first_reply_decides() {
        for datagram in forgeries(5) {
            let mut x = Exchange::new(5, b"", None, Instant::now(), Duration::from_secs(1));
            // (Unkeyed, a sealed answer is read without its seal: an answer too.)
            assert!(matches!(
                x.on_datagram(&datagram, Instant::now()),
                Step::Done(_)
            ));
        }
        let mut x = Exchange::new(5, b"", None, Instant::now(), Duration::from_secs(1));
        assert!(matches!(
            x.on_icmp(libc::ECONNREFUSED),
            Step::Done(Err(ProbeError::Refused))
        ));
        assert!(x.diagnostic_at().is_none());
    }

    #[test]
    fn with_a_key_nothing_unauthenticated_decides() {
        let k = key(7, 1);
        let start = Instant::now();
        let mut x = Exchange::new(5, b"game", Some(k.clone()), start, Duration::from_secs(1));
        for datagram in forgeries(5) {
            assert!(matches!(x.on_datagram(&datagram, start), Step::Wait));
        }
        assert!(matches!(x.on_icmp(libc::ECONNREFUSED), Step::Wait));
        assert!(matches!(x.on_icmp(libc::EHOSTUNREACH), Step::Wait));
        assert_eq!(x.diagnostic_at(), Some(start + Duration::from_millis(500)));
        // The real answer still wins.
        match x.on_datagram(&status(5, crate::State::Up, Some(&k)), start) {
            Step::Done(Ok(a)) => assert_eq!(a.state, crate::State::Up),
            _ => panic!("the sealed answer completes the probe"),
        }
    }

    #[test]
    fn at_the_deadline_the_most_telling_hint_is_named() {
        let k = key(7, 1);
        let start = Instant::now();
        let timeout = Duration::from_secs(1);
        // Nothing: a timeout.
        let mut x = Exchange::new(5, b"", Some(k.clone()), start, timeout);
        assert!(matches!(x.expire(), ProbeError::Timeout(_)));
        // Unauthenticated replies: named, counted, the most telling first.
        let mut x = Exchange::new(5, b"", Some(k.clone()), start, timeout);
        for _ in 0..12 {
            let _ = x.on_datagram(b"x", start);
        }
        for _ in 0..3 {
            let _ = x.on_icmp(libc::ECONNREFUSED);
        }
        let e = x.expire();
        assert_eq!(e.kind(), "unauthenticated");
        assert_eq!(
            e.to_string(),
            "no authenticated answer within 1000 ms; saw 3 ICMP port unreachable, 12 datagrams that are not lbagent protocol"
        );
        // An answer to the diagnostic: a wrong key, with what else came.
        let mut x = Exchange::new(5, b"", Some(k.clone()), start, timeout);
        x.diagnostic_sent(99);
        assert!(matches!(
            x.on_datagram(&status(99, crate::State::Up, None), start),
            Step::Wait
        ));
        let _ = x.on_datagram(&status(5, crate::State::Up, None), start);
        let e = x.expire();
        assert_eq!(e.kind(), "wrong-key");
        assert!(e.to_string().contains("without a seal"), "{e}");
        assert!(e.to_string().contains("1 unsealed answer"), "{e}");
    }
}
