//! Decides the answer to one datagram: pure logic over the status board, no I/O.
//!
//! Order of checks: who is asking (`guard`: allow-list, source port, unicast destination,
//! rate limits) before any other work; then protocol v1 (with authentication) or text. Every
//! datagram ends in exactly one counted outcome, and an answer is never longer than the
//! datagram that caused it.

use std::net::{IpAddr, SocketAddr};

use crate::counters::Counter;
use crate::guard::Policy;
use crate::guard::limit::RateLimiter;
use crate::proto::auth;
use crate::proto::text;
use crate::proto::wire::{
    self, DecodeError, DrainFields, FLAG_AUTH, FLAG_DRAIN, Request, StatusFields,
};
use crate::status::{Board, ProberKind, Status, Target};

/// What the agent does with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Send the first `len` bytes of the output buffer; count `Counter` once sent.
    Reply(usize, Counter),
    /// Drop it, counted under this counter.
    Drop(Counter),
}

/// The parts of the agent the responder reads.
pub(crate) struct Responder<'a> {
    pub board: &'a Board,
    pub policy: &'a Policy,
    pub instance_id: u64,
}

impl Responder<'_> {
    /// The answer to `request` from `source`, sent to local address `destination`, written to
    /// `out` (512 bytes or more). `limiter` is charged for datagrams that pass the source
    /// checks.
    pub(crate) fn respond(
        &self,
        limiter: &mut RateLimiter,
        source: SocketAddr,
        destination: Option<IpAddr>,
        request: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Outcome {
        if let Err(counter) = self
            .policy
            .admit_datagram(limiter, source, destination, now)
        {
            return Outcome::Drop(counter);
        }
        if request.starts_with(&wire::MAGIC) {
            return self.respond_v1(source, request, out, now);
        }
        if !self.policy.text {
            return Outcome::Drop(Counter::DroppedTextOff);
        }
        self.respond_text(source, request, out, now)
    }

    fn respond_v1(&self, source: SocketAddr, request: &[u8], out: &mut [u8], now: u64) -> Outcome {
        match wire::decode_request(request) {
            Ok(Request::Probe(probe)) => {
                // Authenticated probe: check it, and seal the answer with the same key.
                let key = match (&self.policy.keys, probe.flags & FLAG_AUTH != 0) {
                    (Some(keys), true) => match auth::open(request, |id| keys.get(id)) {
                        Ok(v) => {
                            if !auth::fresh(
                                v.timestamp_ms,
                                auth::unix_ms(),
                                self.policy.auth_window_ms,
                            ) {
                                return Outcome::Drop(Counter::DroppedAuthStale);
                            }
                            keys.get(v.key_id)
                        }
                        Err(_) => return Outcome::Drop(Counter::DroppedAuthFailed),
                    },
                    _ => None,
                };
                if key.is_none() && self.policy.auth_required {
                    return Outcome::Reply(
                        wire::encode_error(probe.nonce, wire::ERROR_AUTH_REQUIRED, out),
                        Counter::AnsweredError,
                    );
                }
                let target = self.board.target(probe.service);
                let (status, since) = self.board.answer(target, now);
                let told =
                    self.board
                        .record_prober(source.ip(), ProberKind::UdpV1, target, &status, now);
                let fields = status_fields(&status, probe.nonce, self.instance_id);
                let mut room = match key {
                    Some(_) => auth::room_for_sealed(probe.len),
                    None => probe.len,
                };
                // The drain progress, when asked for and there is room: it goes before the
                // message, which is cut to make room.
                let drain = (probe.flags & FLAG_DRAIN != 0
                    && room >= wire::STATUS_HEADER_LEN + wire::DRAIN_LEN)
                    .then(|| {
                        room -= wire::DRAIN_LEN;
                        drain_fields(self.board, target, &status, since, told, now)
                    });
                let encoded = wire::encode_status(&fields, room, out).map(|len| match &drain {
                    Some(d) => wire::append_drain(d, out, len),
                    None => len,
                });
                match (encoded, key) {
                    (Some(len), Some(key)) => Outcome::Reply(
                        auth::seal(key, out, len, auth::unix_ms()),
                        Counter::AnsweredStatus,
                    ),
                    (Some(len), None) => Outcome::Reply(len, Counter::AnsweredStatus),
                    (None, _) => Outcome::Drop(Counter::DroppedMalformed),
                }
            }
            Ok(Request::UnsupportedVersion { nonce, .. }) => Outcome::Reply(
                wire::encode_error(nonce, wire::ERROR_UNSUPPORTED_VERSION, out),
                Counter::AnsweredError,
            ),
            Err(
                DecodeError::NotProtocol
                | DecodeError::TooShort
                | DecodeError::TooLong
                | DecodeError::UnexpectedType(_)
                | DecodeError::BadNameLength
                | DecodeError::BadNameByte
                | DecodeError::BadField,
            ) => Outcome::Drop(Counter::DroppedMalformed),
        }
    }

    fn respond_text(
        &self,
        source: SocketAddr,
        request: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Outcome {
        let service = match text::parse_request(request) {
            text::Request::Empty => return Outcome::Drop(Counter::DroppedMalformed),
            text::Request::LooksLikeReply => {
                return Outcome::Drop(Counter::DroppedLooksLikeReply);
            }
            text::Request::Server => &b""[..],
            text::Request::Service(name) => name,
        };
        let target = self.board.target(service);
        let status = self.board.status(target, now);
        self.board
            .record_prober(source.ip(), ProberKind::Text, target, &status, now);
        let len = text::write_reply(&status, request.len(), out);
        Outcome::Reply(len, Counter::AnsweredText)
    }
}

/// The drain progress told to a prober that has had `told` non-serving answers in a row. The
/// probers are only counted while the answer says "no new connections" (a serving answer
/// costs no look at the prober table).
pub(crate) fn drain_fields(
    board: &Board,
    target: Target,
    status: &Status,
    since: u64,
    told: u32,
    now: u64,
) -> DrainFields {
    if status.is_serving() {
        return DrainFields::default();
    }
    let drain = board.drain_of(target, status, since, now);
    let saturate = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    DrainFields {
        flags: wire::DRAIN_DRAINING
            | if drain.complete {
                wire::DRAIN_COMPLETE
            } else {
                0
            }
            | if drain.probers_untracked {
                wire::DRAIN_UNTRACKED
            } else {
                0
            },
        told_you: u8::try_from(told).unwrap_or(u8::MAX),
        probers_told: saturate(drain.probers_told),
        probers_pending: saturate(drain.probers_pending),
        drain_ms: drain.drain_ms,
    }
}

/// The STATUS fields for a status answered to `nonce`.
pub(crate) fn status_fields(status: &Status, nonce: u64, instance_id: u64) -> StatusFields<'_> {
    StatusFields {
        flags: 0,
        nonce,
        instance_id,
        generation: status.generation,
        state: status.state as u8,
        reason: status.reason as u8,
        weight_pct: u16::from(status.weight_pct),
        since_ms: status.since_ms,
        in_use: status.in_use,
        capacity: status.capacity,
        message: status.message.as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::status::BoardConfig;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The outcome of a valid text probe from 127.0.0.1:40000 sent to `destination`.
    fn outcome_for(destination: IpAddr) -> Outcome {
        let board = Board::new(
            &BoardConfig {
                initial: State::Up,
                services: &[],
                watchdog_ms: 0,
                workers: 0,
                worker_timeout_ms: 1000,
                worker_policy: crate::status::WorkerPolicy::Any,
                shaping: crate::status::shaping::ShapingConfig::OFF,
                drain: crate::status::DrainConfig::DEFAULT,
            },
            0,
        )
        .unwrap();
        let policy = Policy::from_config(&crate::config::Config::default());
        let responder = Responder {
            board: &board,
            policy: &policy,
            instance_id: 1,
        };
        let mut out = [0u8; wire::PROBE_MAX_LEN];
        responder.respond(
            &mut RateLimiter::new(0, 0),
            ([127, 0, 0, 1], 40000).into(),
            Some(destination),
            &[b'x'; 32],
            &mut out,
            1000,
        )
    }

    #[test]
    fn only_unicast_destinations_are_answered() {
        for unicast in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            assert!(
                matches!(outcome_for(unicast), Outcome::Reply(..)),
                "{unicast}"
            );
        }
        for group in [
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3)),
            IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
        ] {
            assert_eq!(
                outcome_for(group),
                Outcome::Drop(Counter::DroppedNotUnicast),
                "{group}"
            );
        }
    }
}
