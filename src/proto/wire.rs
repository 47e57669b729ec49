//! UDP status protocol, version 1: pure encode and decode functions (no I/O).
//!
//! `docs/PROTOCOL.md` describes every byte; its hex vectors are checked by `tests/protocol.rs`.
//! All integers are big-endian.

/// Every datagram of the protocol starts with these four bytes.
pub const MAGIC: [u8; 4] = *b"LBAP";
/// The protocol version this agent speaks (and the highest one).
pub const VERSION: u8 = 1;

/// Message type of a request sent by a prober.
pub const TYPE_PROBE: u8 = 1;
/// Message type of the answer to a PROBE.
pub const TYPE_STATUS: u8 = 2;
/// Message type of an error answer.
pub const TYPE_ERROR: u8 = 3;

/// Flag bit 0: an authentication trailer ends the datagram.
pub const FLAG_AUTH: u16 = 0x0001;
/// PROBE flag bit 1: subscribe to changes. The 4 bytes after the service name hold the lease
/// asked for, in milliseconds (0 ends the subscription).
pub const FLAG_SUBSCRIBE: u16 = 0x0002;
/// STATUS flag bit 1: the PROBE's subscription is granted (the agent will push changes).
pub const FLAG_SUBSCRIBED: u16 = 0x0002;
/// STATUS flag bit 2: pushed on a change, not asked for; its nonce is the subscribing PROBE's.
pub const FLAG_PUSHED: u16 = 0x0004;
/// The longest lease an agent grants, in milliseconds: a subscriber renews it by probing again.
pub const MAX_LEASE_MS: u32 = 60_000;
/// Flag bit 3: in a PROBE, asks for the drain progress; in a STATUS, the drain progress
/// ([`DrainFields`], `DRAIN_LEN` bytes) follows the message.
pub const FLAG_DRAIN: u16 = 0x0008;
/// Size of the drain progress that follows a STATUS's message.
pub const DRAIN_LEN: usize = 10;

/// Shortest valid PROBE (the prober pads it to make room for the answer).
pub const PROBE_MIN_LEN: usize = 48;
/// Longest valid PROBE, and the longest datagram the agent ever sends.
pub const PROBE_MAX_LEN: usize = 512;
/// Longest service name on the wire.
pub const MAX_NAME_LEN: usize = 64;
/// Size of the STATUS fields before the message.
pub const STATUS_HEADER_LEN: usize = 45;
/// Longest message a STATUS can carry (its length is one byte).
pub const MAX_MESSAGE_LEN: usize = 255;
/// Size of an ERROR.
pub const ERROR_LEN: usize = 18;
/// Size of the authentication trailer (key id, timestamp, truncated MAC).
pub const AUTH_TRAILER_LEN: usize = 4 + 8 + 16;

/// ERROR code: the request's protocol version is not spoken here.
pub const ERROR_UNSUPPORTED_VERSION: u16 = 1;
/// ERROR code: the agent requires authenticated probes.
pub const ERROR_AUTH_REQUIRED: u16 = 2;

/// A decoded PROBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe<'a> {
    /// Flags as sent (bit 0: authentication trailer present).
    pub flags: u16,
    /// Chosen by the prober, echoed in the answer.
    pub nonce: u64,
    /// The service asked about; empty means the whole server. Printable ASCII.
    pub service: &'a [u8],
    /// Length of the datagram: the answer may not be longer.
    pub len: usize,
    /// With `FLAG_SUBSCRIBE`: the lease asked for, in milliseconds (0: unsubscribe).
    pub lease_ms: Option<u32>,
}

/// What a datagram that starts with `LBAP` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// A valid version 1 PROBE.
    Probe(Probe<'a>),
    /// A PROBE in a version this agent does not speak: answered with an ERROR.
    UnsupportedVersion {
        /// The version the prober sent.
        version: u8,
        /// The prober's nonce, echoed in the ERROR.
        nonce: u64,
    },
}

/// Why a datagram is not a request the agent answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// It does not start with `LBAP` (not this protocol; maybe a text request).
    NotProtocol,
    /// Shorter than the message type allows.
    TooShort,
    /// Longer than 512 bytes.
    TooLong,
    /// A type other than the one expected (a STATUS or ERROR sent to an agent, or garbage).
    UnexpectedType(u8),
    /// The service name length is over 64, or runs past the datagram (or its trailer).
    BadNameLength,
    /// The service name has a byte that is not printable ASCII.
    BadNameByte,
    /// A STATUS or ERROR field holds a value outside its range.
    BadField,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Decodes a datagram received by the agent.
pub fn decode_request(datagram: &[u8]) -> Result<Request<'_>, DecodeError> {
    if !datagram.starts_with(&MAGIC) {
        return Err(DecodeError::NotProtocol);
    }
    if datagram.len() > PROBE_MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    if datagram.len() < 16 {
        return Err(DecodeError::TooShort);
    }
    let version = datagram[4];
    let kind = datagram[5];
    let nonce = u64_at(datagram, 8);
    if kind != TYPE_PROBE {
        // Never answer a STATUS or an ERROR: two agents must not be made to talk to each other.
        return Err(DecodeError::UnexpectedType(kind));
    }
    if version != VERSION {
        // The ERROR must fit in the request (answers are never larger than requests).
        if datagram.len() < ERROR_LEN {
            return Err(DecodeError::TooShort);
        }
        return Ok(Request::UnsupportedVersion { version, nonce });
    }
    if datagram.len() < PROBE_MIN_LEN {
        return Err(DecodeError::TooShort);
    }
    let flags = u16_at(datagram, 6);
    let name_len = usize::from(datagram[16]);
    let trailer = if flags & FLAG_AUTH != 0 {
        AUTH_TRAILER_LEN
    } else {
        0
    };
    if name_len > MAX_NAME_LEN || 17 + name_len + trailer > datagram.len() {
        return Err(DecodeError::BadNameLength);
    }
    let service = &datagram[17..17 + name_len];
    if !service.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(DecodeError::BadNameByte);
    }
    let lease_ms = if flags & FLAG_SUBSCRIBE != 0 {
        let at = 17 + name_len;
        if at + 4 + trailer > datagram.len() {
            return Err(DecodeError::BadField);
        }
        Some(u32_at(datagram, at))
    } else {
        None
    };
    Ok(Request::Probe(Probe {
        flags,
        nonce,
        service,
        len: datagram.len(),
        lease_ms,
    }))
}

/// Writes a PROBE into `out` and returns its length: `padded_len` clamped to 48..=512, and at
/// least long enough for the name. `out` must hold 512 bytes.
pub fn encode_probe(nonce: u64, service: &[u8], padded_len: usize, out: &mut [u8]) -> usize {
    encode_probe_with(nonce, service, None, padded_len, out)
}

/// `encode_probe`, subscribing to changes for `lease_ms` (with `Some`: `FLAG_SUBSCRIBE` and the
/// lease after the name; 0 ends a subscription).
pub fn encode_probe_with(
    nonce: u64,
    service: &[u8],
    lease_ms: Option<u32>,
    padded_len: usize,
    out: &mut [u8],
) -> usize {
    let name_len = service.len().min(MAX_NAME_LEN);
    let lease_len = if lease_ms.is_some() { 4 } else { 0 };
    let len = padded_len
        .max(17 + name_len + lease_len)
        .clamp(PROBE_MIN_LEN, PROBE_MAX_LEN);
    out[..len].fill(0);
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = TYPE_PROBE;
    let flags = if lease_ms.is_some() {
        FLAG_SUBSCRIBE
    } else {
        0
    };
    out[6..8].copy_from_slice(&flags.to_be_bytes());
    out[8..16].copy_from_slice(&nonce.to_be_bytes());
    out[16] = name_len as u8;
    out[17..17 + name_len].copy_from_slice(&service[..name_len]);
    if let Some(lease) = lease_ms {
        out[17 + name_len..21 + name_len].copy_from_slice(&lease.to_be_bytes());
    }
    len
}

/// The fields of a STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFields<'a> {
    /// Flags (bit 0: authentication trailer present).
    pub flags: u16,
    /// The probe's nonce.
    pub nonce: u64,
    /// Random at each agent start.
    pub instance_id: u64,
    /// Increases on every change of the answer's state, reason or weight.
    pub generation: u32,
    /// `State` value.
    pub state: u8,
    /// `Reason` value.
    pub reason: u8,
    /// 0..=100.
    pub weight_pct: u16,
    /// Milliseconds since the state last changed, saturating.
    pub since_ms: u32,
    /// Work in progress reported by the host.
    pub in_use: u32,
    /// Capacity reported by the host; 0 = unknown.
    pub capacity: u32,
    /// UTF-8 text from the host.
    pub message: &'a [u8],
}

/// The longest prefix of `text` that is at most `max` bytes and ends on a UTF-8 character
/// boundary (`text` is UTF-8).
pub fn cut_utf8(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    // Step back over continuation bytes (10xxxxxx) to the start of the cut character.
    while end > 0 && text[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &text[..end]
}

/// Writes a STATUS of at most `max_len` bytes into `out` (which holds at least that much) and
/// returns its length, cutting the message at a character boundary to fit. Returns `None`
/// when even an empty message does not fit.
pub fn encode_status(status: &StatusFields<'_>, max_len: usize, out: &mut [u8]) -> Option<usize> {
    let max_len = max_len.min(PROBE_MAX_LEN).min(out.len());
    if max_len < STATUS_HEADER_LEN {
        return None;
    }
    let room = (max_len - STATUS_HEADER_LEN).min(MAX_MESSAGE_LEN);
    let message = cut_utf8(status.message, room);
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = TYPE_STATUS;
    out[6..8].copy_from_slice(&status.flags.to_be_bytes());
    out[8..16].copy_from_slice(&status.nonce.to_be_bytes());
    out[16..24].copy_from_slice(&status.instance_id.to_be_bytes());
    out[24..28].copy_from_slice(&status.generation.to_be_bytes());
    out[28] = status.state;
    out[29] = status.reason;
    out[30..32].copy_from_slice(&status.weight_pct.to_be_bytes());
    out[32..36].copy_from_slice(&status.since_ms.to_be_bytes());
    out[36..40].copy_from_slice(&status.in_use.to_be_bytes());
    out[40..44].copy_from_slice(&status.capacity.to_be_bytes());
    out[44] = message.len() as u8;
    out[45..45 + message.len()].copy_from_slice(message);
    Some(STATUS_HEADER_LEN + message.len())
}

/// How far a drain has come, as a STATUS with flag bit 3 carries it after its message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainFields {
    /// Bit 0: draining (this answer says "no new connections"); bit 1: the drain is complete;
    /// bit 2: more probers asked than the agent can track (the drain cannot be complete).
    pub flags: u8,
    /// Non-serving answers this prober has had in a row, this one included (saturating).
    pub told_you: u8,
    /// Probers seen within the drain window that were told often enough (saturating).
    pub probers_told: u16,
    /// Probers seen within the drain window that were not (yet) (saturating).
    pub probers_pending: u16,
    /// Milliseconds since the answer stopped saying "serving"; 0 while serving.
    pub drain_ms: u32,
}

/// `DrainFields::flags` bit 0: draining.
pub const DRAIN_DRAINING: u8 = 0x01;
/// `DrainFields::flags` bit 1: complete.
pub const DRAIN_COMPLETE: u8 = 0x02;
/// `DrainFields::flags` bit 2: probers untracked.
pub const DRAIN_UNTRACKED: u8 = 0x04;

/// Appends the drain progress to the STATUS in `out[..len]` (sets flag bit 3) and returns the
/// new length. `out` must have `DRAIN_LEN` bytes of room after `len`.
pub fn append_drain(drain: &DrainFields, out: &mut [u8], len: usize) -> usize {
    let flags = u16_at(out, 6) | FLAG_DRAIN;
    out[6..8].copy_from_slice(&flags.to_be_bytes());
    out[len] = drain.flags;
    out[len + 1] = drain.told_you;
    out[len + 2..len + 4].copy_from_slice(&drain.probers_told.to_be_bytes());
    out[len + 4..len + 6].copy_from_slice(&drain.probers_pending.to_be_bytes());
    out[len + 6..len + 10].copy_from_slice(&drain.drain_ms.to_be_bytes());
    len + DRAIN_LEN
}

/// The drain progress of a STATUS decoded by `decode_reply` from `datagram`: present when
/// flag bit 3 is set and the datagram holds it between the message and the trailer.
pub fn decode_drain(datagram: &[u8], status: &StatusFields<'_>) -> Option<DrainFields> {
    if status.flags & FLAG_DRAIN == 0 {
        return None;
    }
    let at = STATUS_HEADER_LEN + status.message.len();
    let trailer = if status.flags & FLAG_AUTH != 0 {
        AUTH_TRAILER_LEN
    } else {
        0
    };
    if at + DRAIN_LEN + trailer > datagram.len() {
        return None;
    }
    Some(DrainFields {
        flags: datagram[at],
        told_you: datagram[at + 1],
        probers_told: u16_at(datagram, at + 2),
        probers_pending: u16_at(datagram, at + 4),
        drain_ms: u32_at(datagram, at + 6),
    })
}

/// Writes an ERROR (18 bytes) into `out` and returns its length.
pub fn encode_error(nonce: u64, code: u16, out: &mut [u8]) -> usize {
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = TYPE_ERROR;
    out[6..8].copy_from_slice(&0u16.to_be_bytes());
    out[8..16].copy_from_slice(&nonce.to_be_bytes());
    out[16..18].copy_from_slice(&code.to_be_bytes());
    ERROR_LEN
}

/// An answer received by a prober.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A STATUS.
    Status(StatusFields<'a>),
    /// An ERROR: `version` is the highest version the agent speaks.
    Error {
        /// Highest version the agent speaks.
        version: u8,
        /// The nonce echoed.
        nonce: u64,
        /// `ERROR_*` code.
        code: u16,
    },
}

/// Decodes a datagram received by a prober. The caller checks the nonce.
pub fn decode_reply(datagram: &[u8]) -> Result<Reply<'_>, DecodeError> {
    if !datagram.starts_with(&MAGIC) {
        return Err(DecodeError::NotProtocol);
    }
    if datagram.len() > PROBE_MAX_LEN {
        return Err(DecodeError::TooLong);
    }
    if datagram.len() < 16 {
        return Err(DecodeError::TooShort);
    }
    let nonce = u64_at(datagram, 8);
    match datagram[5] {
        TYPE_ERROR => {
            if datagram.len() < ERROR_LEN {
                return Err(DecodeError::TooShort);
            }
            Ok(Reply::Error {
                version: datagram[4],
                nonce,
                code: u16_at(datagram, 16),
            })
        }
        TYPE_STATUS => {
            if datagram[4] != VERSION {
                return Err(DecodeError::BadField);
            }
            if datagram.len() < STATUS_HEADER_LEN {
                return Err(DecodeError::TooShort);
            }
            let message_len = usize::from(datagram[44]);
            let flags = u16_at(datagram, 6);
            let trailer = if flags & FLAG_AUTH != 0 {
                AUTH_TRAILER_LEN
            } else {
                0
            };
            if STATUS_HEADER_LEN + message_len + trailer > datagram.len() {
                return Err(DecodeError::TooShort);
            }
            let weight_pct = u16_at(datagram, 30);
            if weight_pct > 100 {
                return Err(DecodeError::BadField);
            }
            Ok(Reply::Status(StatusFields {
                flags,
                nonce,
                instance_id: u64_at(datagram, 16),
                generation: u32_at(datagram, 24),
                state: datagram[28],
                reason: datagram[29],
                weight_pct,
                since_ms: u32_at(datagram, 32),
                in_use: u32_at(datagram, 36),
                capacity: u32_at(datagram, 40),
                message: &datagram[45..45 + message_len],
            }))
        }
        other => Err(DecodeError::UnexpectedType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(nonce: u64, service: &[u8], len: usize) -> Vec<u8> {
        let mut out = [0u8; PROBE_MAX_LEN];
        let n = encode_probe(nonce, service, len, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn probe_round_trip() {
        let p = probe(0x0102030405060708, b"game", 64);
        assert_eq!(p.len(), 64);
        match decode_request(&p).unwrap() {
            Request::Probe(d) => {
                assert_eq!(d.nonce, 0x0102030405060708);
                assert_eq!(d.service, b"game");
                assert_eq!(d.len, 64);
                assert_eq!(d.flags, 0);
                assert_eq!(d.lease_ms, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(probe(1, b"", 0).len(), PROBE_MIN_LEN);
        assert_eq!(probe(1, b"", 10_000).len(), PROBE_MAX_LEN);
    }

    #[test]
    fn subscribing_probe_round_trip() {
        let mut out = [0u8; PROBE_MAX_LEN];
        let n = encode_probe_with(9, b"game", Some(30_000), 64, &mut out);
        assert_eq!(n, 64);
        assert_eq!(&out[6..8], &FLAG_SUBSCRIBE.to_be_bytes());
        match decode_request(&out[..n]).unwrap() {
            Request::Probe(p) => {
                assert_eq!((p.service, p.lease_ms), (&b"game"[..], Some(30_000)));
            }
            other => panic!("{other:?}"),
        }
        // The lease must fit before a trailer.
        let mut t = out;
        t[6..8].copy_from_slice(&(FLAG_SUBSCRIBE | FLAG_AUTH).to_be_bytes());
        t[16] = 16; // the name fits before the trailer (17 + 16 + 28 <= 64), the lease not
        t[17..33].fill(b'a');
        assert_eq!(decode_request(&t[..64]), Err(DecodeError::BadField));
    }

    #[test]
    fn malformed_requests() {
        let good = probe(7, b"svc", 48);
        assert_eq!(decode_request(b"hello"), Err(DecodeError::NotProtocol));
        assert_eq!(decode_request(&good[..47]), Err(DecodeError::TooShort));
        assert_eq!(decode_request(&good[..10]), Err(DecodeError::TooShort));
        let mut long = good.clone();
        long.resize(513, 0);
        assert_eq!(decode_request(&long), Err(DecodeError::TooLong));
        let mut t = good.clone();
        t[5] = 2;
        assert_eq!(decode_request(&t), Err(DecodeError::UnexpectedType(2)));
        let mut t = good.clone();
        t[16] = 65;
        assert_eq!(decode_request(&t), Err(DecodeError::BadNameLength));
        let mut t = good.clone();
        t[17] = b'\n';
        assert_eq!(decode_request(&t), Err(DecodeError::BadNameByte));
        let mut t = good.clone();
        t[6..8].copy_from_slice(&FLAG_AUTH.to_be_bytes());
        t[16] = 30; // 17 + 30 + 28 > 48
        assert_eq!(decode_request(&t), Err(DecodeError::BadNameLength));
        let mut t = good.clone();
        t[4] = 2;
        assert_eq!(
            decode_request(&t),
            Ok(Request::UnsupportedVersion {
                version: 2,
                nonce: 7
            })
        );
        assert_eq!(decode_request(&t[..17]), Err(DecodeError::TooShort));
    }

    #[test]
    fn status_fits_the_request_and_cuts_at_a_character() {
        let message = "état é".as_bytes(); // multibyte characters
        let fields = StatusFields {
            flags: 0,
            nonce: 9,
            instance_id: 1,
            generation: 2,
            state: 2,
            reason: 0,
            weight_pct: 100,
            since_ms: 5,
            in_use: 1,
            capacity: 10,
            message,
        };
        let mut out = [0u8; PROBE_MAX_LEN];
        for max in STATUS_HEADER_LEN..STATUS_HEADER_LEN + message.len() + 2 {
            let n = encode_status(&fields, max, &mut out).unwrap();
            assert!(n <= max);
            match decode_reply(&out[..n]).unwrap() {
                Reply::Status(s) => {
                    assert!(std::str::from_utf8(s.message).is_ok());
                    assert!(message.starts_with(s.message));
                    assert_eq!(s.nonce, 9);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(encode_status(&fields, 44, &mut out), None);
    }

    #[test]
    fn drain_progress_follows_the_message() {
        let fields = StatusFields {
            flags: 0,
            nonce: 9,
            instance_id: 1,
            generation: 2,
            state: 3,
            reason: 0,
            weight_pct: 100,
            since_ms: 5,
            in_use: 0,
            capacity: 10,
            message: b"deploy",
        };
        let drain = DrainFields {
            flags: DRAIN_DRAINING | DRAIN_COMPLETE,
            told_you: 3,
            probers_told: 2,
            probers_pending: 0,
            drain_ms: 4100,
        };
        let mut out = [0u8; PROBE_MAX_LEN];
        let n = encode_status(&fields, 100 - DRAIN_LEN, &mut out).unwrap();
        let n = append_drain(&drain, &mut out, n);
        assert_eq!(n, STATUS_HEADER_LEN + 6 + DRAIN_LEN);
        let Ok(Reply::Status(s)) = decode_reply(&out[..n]) else {
            panic!()
        };
        assert_eq!(s.message, b"deploy");
        assert_eq!(decode_drain(&out[..n], &s), Some(drain));
        // Cut short, or without the flag: no drain progress.
        let Ok(Reply::Status(s)) = decode_reply(&out[..n - 1]) else {
            panic!()
        };
        assert_eq!(decode_drain(&out[..n - 1], &s), None);
        let plain = encode_status(&fields, 100, &mut out).unwrap();
        let Ok(Reply::Status(s)) = decode_reply(&out[..plain]) else {
            panic!()
        };
        assert_eq!(decode_drain(&out[..plain], &s), None);
    }

    #[test]
    fn error_round_trip() {
        let mut out = [0u8; ERROR_LEN];
        assert_eq!(encode_error(5, ERROR_UNSUPPORTED_VERSION, &mut out), 18);
        assert_eq!(
            decode_reply(&out),
            Ok(Reply::Error {
                version: 1,
                nonce: 5,
                code: 1
            })
        );
    }
}
