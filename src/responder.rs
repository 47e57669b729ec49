//! Decides the answer to one datagram: pure logic over the status board, no I/O.
//!
//! Order of checks: who is asking (allow-list, source port, unicast destination) before any
//! other work; then protocol v1 or text. Every datagram ends in exactly one counted outcome,
//! and an answer is never longer than the datagram that caused it.

use std::net::{IpAddr, SocketAddr};

use crate::allow::AllowList;
use crate::counters::Counter;
use crate::status::{Board, Status};
use crate::text;
use crate::wire::{self, DecodeError, Request, StatusFields};

/// Source ports of well-known UDP services that reflect traffic (echo, chargen, DNS, NTP,
/// SNMP, CLDAP, SSDP, memcached); a request "from" them is a spoofed reflection attempt.
pub const REFLECTOR_PORTS: [u16; 8] = [7, 19, 53, 123, 161, 389, 1900, 11211];

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
    pub allow: &'a AllowList,
    pub text: bool,
    pub instance_id: u64,
}

impl Responder<'_> {
    /// The answer to `request` from `source`, sent to local address `destination`, written to
    /// `out` (512 bytes or more).
    pub(crate) fn respond(
        &self,
        source: SocketAddr,
        destination: Option<IpAddr>,
        request: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Outcome {
        if !self.allow.admits(source.ip()) {
            return Outcome::Drop(Counter::DroppedNotAllowed);
        }
        if source.port() == 0 || REFLECTOR_PORTS.contains(&source.port()) {
            return Outcome::Drop(Counter::DroppedSourcePort);
        }
        if destination.is_some_and(|d| !is_unicast(d)) {
            return Outcome::Drop(Counter::DroppedNotUnicast);
        }
        if request.starts_with(&wire::MAGIC) {
            return self.respond_v1(request, out, now);
        }
        if !self.text {
            return Outcome::Drop(Counter::DroppedTextOff);
        }
        self.respond_text(request, out, now)
    }

    fn respond_v1(&self, request: &[u8], out: &mut [u8], now: u64) -> Outcome {
        match wire::decode_request(request) {
            Ok(Request::Probe(probe)) => {
                let status = self.board.status(self.board.target(probe.service), now);
                let fields = status_fields(&status, probe.nonce, self.instance_id);
                match wire::encode_status(&fields, probe.len, out) {
                    Some(len) => Outcome::Reply(len, Counter::AnsweredStatus),
                    None => Outcome::Drop(Counter::DroppedMalformed),
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

    fn respond_text(&self, request: &[u8], out: &mut [u8], now: u64) -> Outcome {
        let service = match text::parse_request(request) {
            text::Request::Empty => return Outcome::Drop(Counter::DroppedMalformed),
            text::Request::LooksLikeReply => {
                return Outcome::Drop(Counter::DroppedLooksLikeReply);
            }
            text::Request::Server => &b""[..],
            text::Request::Service(name) => name,
        };
        let status = self.board.status(self.board.target(service), now);
        let len = text::write_reply(&status, request.len(), out);
        Outcome::Reply(len, Counter::AnsweredText)
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

/// False for multicast and broadcast destinations: answering them would make every agent on a
/// network answer one datagram.
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}
