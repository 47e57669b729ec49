//! Decides the answer to one datagram: pure logic over the status board, no I/O.
//!
//! Order of checks: who is asking (`guard`: allow-list, source port, unicast destination)
//! before any other work; then, with `key_file`, a sealed PROBE is authenticated (key id,
//! window, MAC), checked against replays and charged to its key's budget, and answered sealed;
//! everything else is charged to the per-source and global rate limits, then answered as
//! protocol v1 or text. Every datagram ends in exactly one counted outcome, and an answer is
//! never longer than the datagram that caused it.

use std::net::{IpAddr, SocketAddr};

use super::subscribe::{Offer, Subscription, Subscriptions};
use crate::counters::Counter;
use crate::guard::{Admission, Policy, Sealed};
use crate::keys::Key;
use crate::proto::auth;
use crate::proto::text;
use crate::proto::wire::{
    self, DecodeError, DrainFields, FLAG_AUTH, FLAG_DRAIN, FLAG_SUBSCRIBED, Probe, Request,
    StatusFields,
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

/// Where a datagram came from and went to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Envelope {
    pub source: SocketAddr,
    /// The local address it was sent to (the answer leaves from it).
    pub destination: Option<IpAddr>,
    /// The socket that received it (index of `Sockets::udp`).
    pub listener: usize,
}

/// What the monitor thread keeps from one datagram to the next.
pub(crate) struct Tables<'a> {
    /// The budgets and the replay cache.
    pub admission: &'a mut Admission,
    /// Taken, renewed or ended by subscribing PROBEs.
    pub subscriptions: &'a mut Subscriptions,
}

impl Responder<'_> {
    /// The answer to `request`, written to `out` (512 bytes or more); `now` is the monitor's
    /// clock (milliseconds).
    pub(crate) fn respond(
        &self,
        tables: Tables<'_>,
        envelope: Envelope,
        request: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Outcome {
        let Tables {
            admission,
            subscriptions,
        } = tables;
        let Envelope {
            source,
            destination,
            ..
        } = envelope;
        if let Err(counter) = self.policy.check_source(source, destination) {
            return Outcome::Drop(counter);
        }
        if !request.starts_with(&wire::MAGIC) {
            if let Err(counter) = admission.charge(source, now) {
                return Outcome::Drop(counter);
            }
            if !self.policy.text {
                return Outcome::Drop(Counter::DroppedTextOff);
            }
            return self.respond_text(source, request, out, now);
        }
        let decoded = wire::decode_request(request);
        // A sealed probe: its key pays for it, not its source address (anyone can forge that).
        if let Ok(Request::Probe(probe)) = &decoded {
            if probe.flags & FLAG_AUTH != 0 {
                let unix_ms = auth::unix_ms();
                match self.policy.authenticate(request, unix_ms) {
                    Sealed::Valid {
                        key,
                        index,
                        trailer,
                    } => {
                        if let Err(counter) =
                            admission.admit_sealed(index, trailer, probe.nonce, unix_ms, now)
                        {
                            return Outcome::Drop(counter);
                        }
                        return self.status(probe, Some(key), (subscriptions, envelope), out, now);
                    }
                    Sealed::Invalid(counter) => {
                        return Outcome::Drop(
                            admission.charge(source, now).err().unwrap_or(counter),
                        );
                    }
                    Sealed::No => {}
                }
            }
        }
        if let Err(counter) = admission.charge(source, now) {
            return Outcome::Drop(counter);
        }
        match decoded {
            Ok(Request::Probe(probe)) if self.policy.auth_required => Outcome::Reply(
                wire::encode_error(probe.nonce, wire::ERROR_AUTH_REQUIRED, out),
                Counter::AnsweredError,
            ),
            Ok(Request::Probe(probe)) => {
                self.status(&probe, None, (subscriptions, envelope), out, now)
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

    /// A STATUS answering `probe`, sealed with `key` if given, with the drain progress when
    /// asked for; the prober is recorded (drain completion counts who was told); a
    /// subscribing PROBE also takes, renews or ends its subscription (granted: the answer says
    /// so).
    fn status(
        &self,
        probe: &Probe<'_>,
        key: Option<&Key>,
        (subscriptions, envelope): (&mut Subscriptions, Envelope),
        out: &mut [u8],
        now: u64,
    ) -> Outcome {
        let target = self.board.target(probe.service);
        let (status, since) = self.board.answer(target, now);
        let told = self.board.record_prober(
            envelope.source.ip(),
            ProberKind::UdpV1,
            target,
            &status,
            now,
        );
        let drain = (probe.flags & FLAG_DRAIN != 0)
            .then(|| drain_fields(self.board, target, &status, since, told, now));
        let mut flags = 0;
        if let Some(lease_ms) = probe.lease_ms {
            let offer = Subscription {
                peer: envelope.source,
                local: envelope.destination,
                listener: envelope.listener,
                target,
                nonce: probe.nonce,
                key_id: key.map(Key::id),
                max_len: probe.len,
                expires_at: 0,
                told: status.generation,
                due: false,
                milli_tokens: 0,
                tokens_at: now,
            };
            let granted = target != Target::Unknown
                && subscriptions.admits(key.is_some())
                && subscriptions.offer(offer, lease_ms, now) == Offer::Granted;
            if granted {
                flags |= FLAG_SUBSCRIBED;
            }
        }
        let sent = (probe.nonce, flags);
        match write_status(
            &status,
            sent,
            self.instance_id,
            (probe.len, drain),
            key,
            out,
        ) {
            Some(len) => Outcome::Reply(len, Counter::AnsweredStatus),
            None => Outcome::Drop(Counter::DroppedMalformed),
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

/// Writes a STATUS for `status` answering `nonce` with `flags`, at most `max_len` bytes, with
/// the drain progress when given and there is room (the message is cut to make room), sealed
/// with `key` if given (the answer to a PROBE, or a push). `None` when it does not fit.
pub(crate) fn write_status(
    status: &Status,
    (nonce, flags): (u64, u16),
    instance_id: u64,
    (max_len, drain): (usize, Option<DrainFields>),
    key: Option<&Key>,
    out: &mut [u8],
) -> Option<usize> {
    let fields = StatusFields {
        flags,
        ..status_fields(status, nonce, instance_id)
    };
    let mut room = match key {
        Some(_) => auth::room_for_sealed(max_len),
        None => max_len,
    };
    let drain = drain.filter(|_| room >= wire::STATUS_HEADER_LEN + wire::DRAIN_LEN);
    if drain.is_some() {
        room -= wire::DRAIN_LEN;
    }
    let mut len = wire::encode_status(&fields, room, out)?;
    if let Some(d) = &drain {
        len = wire::append_drain(d, out, len);
    }
    Some(match key {
        Some(key) => auth::seal(key, out, len, auth::unix_ms()),
        None => len,
    })
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
        let tables = Tables {
            admission: &mut Admission::unlimited(),
            subscriptions: &mut Subscriptions::new(0, crate::config::SubscribeMode::Auth),
        };
        let envelope = Envelope {
            source: ([127, 0, 0, 1], 40000).into(),
            destination: Some(destination),
            listener: 0,
        };
        responder.respond(tables, envelope, &[b'x'; 32], &mut out, 1000)
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
