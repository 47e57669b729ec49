//! The protocol v1 authentication trailer: sealing and opening PROBEs and STATUSes.
//!
//! A PROBE or STATUS with flag bit 0 ends with a 28-byte trailer:
//!
//! | size | field |
//! |---|---|
//! | 4 | key id (u32, big-endian) |
//! | 8 | timestamp, Unix milliseconds (u64, big-endian) |
//! | 16 | MAC: HMAC-SHA256 over every byte before the MAC, truncated to 16 bytes |
//!
//! The agent drops a PROBE whose key id is unknown, whose MAC is wrong (compared in constant
//! time) or whose timestamp is outside its window, and answers a valid one with a STATUS
//! sealed with the same key; the STATUS MAC covers the echoed nonce, so a prober accepts
//! neither a forged nor a replayed answer.
//!
//! The keys themselves and key files are `keys.rs`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::keys::Key;
use crate::proto::wire::{self, AUTH_TRAILER_LEN, FLAG_AUTH};

/// Bytes of the MAC kept in the trailer.
pub const MAC_LEN: usize = 16;

/// Wall-clock Unix milliseconds (trailer timestamps).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seals the message in `buf[..len]` (a PROBE or STATUS): sets flag bit 0, appends key id,
/// timestamp and MAC, and returns the new length. `buf` must have 28 bytes of room after
/// `len`.
pub fn seal(key: &Key, buf: &mut [u8], len: usize, timestamp_ms: u64) -> usize {
    let flags = u16::from_be_bytes([buf[6], buf[7]]) | FLAG_AUTH;
    buf[6..8].copy_from_slice(&flags.to_be_bytes());
    buf[len..len + 4].copy_from_slice(&key.id().to_be_bytes());
    buf[len + 4..len + 12].copy_from_slice(&timestamp_ms.to_be_bytes());
    let tag = key.tag(&buf[..len + 12]);
    buf[len + 12..len + AUTH_TRAILER_LEN].copy_from_slice(&tag);
    len + AUTH_TRAILER_LEN
}

/// What a trailer says, once its MAC checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The key that signed it.
    pub key_id: u32,
    /// The sender's clock, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// Why a sealed message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Flag bit 0 is not set: the message carries no trailer.
    Missing,
    /// Too short to hold a trailer.
    Truncated,
    /// The key id is not among the keys.
    UnknownKey(u32),
    /// The MAC does not match.
    BadMac,
    /// The timestamp is outside the accepted window.
    Stale,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no authentication trailer"),
            AuthError::Truncated => f.write_str("too short for an authentication trailer"),
            AuthError::UnknownKey(id) => write!(f, "unknown key id {id}"),
            AuthError::BadMac => f.write_str("the MAC does not match"),
            AuthError::Stale => f.write_str("the timestamp is outside the accepted window"),
        }
    }
}

/// What a trailer claims before its MAC is checked: the key id and the timestamp. Cheap: the
/// agent looks at these before it spends a MAC computation on a datagram.
pub fn trailer(datagram: &[u8]) -> Result<Verified, AuthError> {
    if datagram.len() < 8 || u16::from_be_bytes([datagram[6], datagram[7]]) & FLAG_AUTH == 0 {
        return Err(AuthError::Missing);
    }
    if datagram.len() < 16 + AUTH_TRAILER_LEN {
        return Err(AuthError::Truncated);
    }
    let t = &datagram[datagram.len() - AUTH_TRAILER_LEN..];
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&t[4..12]);
    Ok(Verified {
        key_id: u32::from_be_bytes([t[0], t[1], t[2], t[3]]),
        timestamp_ms: u64::from_be_bytes(ts),
    })
}

/// Whether the MAC of `datagram` (which `trailer` accepted) is `key`'s.
pub fn mac_matches(datagram: &[u8], key: &Key) -> bool {
    let start = datagram.len() - AUTH_TRAILER_LEN;
    key.verify(&datagram[..start + 12], &datagram[start + 12..])
}

/// Checks the trailer of `datagram` against `lookup` (key id to key).
pub fn open<'k>(
    datagram: &[u8],
    lookup: impl FnOnce(u32) -> Option<&'k Key>,
) -> Result<Verified, AuthError> {
    let claimed = trailer(datagram)?;
    let key = lookup(claimed.key_id).ok_or(AuthError::UnknownKey(claimed.key_id))?;
    if !mac_matches(datagram, key) {
        return Err(AuthError::BadMac);
    }
    Ok(claimed)
}

/// True when `timestamp_ms` is within `window_ms` of `now_ms`, either way.
pub fn fresh(timestamp_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    timestamp_ms.abs_diff(now_ms) <= window_ms
}

/// Length available for a STATUS that must be sealed within `max_len`.
pub fn room_for_sealed(max_len: usize) -> usize {
    max_len.saturating_sub(AUTH_TRAILER_LEN)
}

const _: () = assert!(wire::PROBE_MIN_LEN >= 17 + AUTH_TRAILER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f";

    fn keys() -> KeySet {
        KeySet::parse(&format!("# keys\n7 {SECRET}\n8 {SECRET}ff  # rotated in\n")).unwrap()
    }

    #[test]
    fn seal_and_open() {
        let set = keys();
        let key = set.first().unwrap();
        let mut buf = [0u8; 128];
        buf[..4].copy_from_slice(b"LBAP");
        let len = seal(key, &mut buf, 60, 1234);
        assert_eq!(len, 88);
        let v = open(&buf[..len], |id| set.get(id)).unwrap();
        assert_eq!(
            v,
            Verified {
                key_id: 7,
                timestamp_ms: 1234
            }
        );
        // Any flipped bit is refused.
        for i in 0..len {
            let mut bad = buf;
            bad[i] ^= 0x01;
            let r = open(&bad[..len], |id| set.get(id));
            assert!(r.is_err(), "byte {i}");
        }
        let other = KeySet::parse(&format!("7 {SECRET}aa")).unwrap();
        assert_eq!(
            open(&buf[..len], |id| other.get(id)),
            Err(AuthError::BadMac)
        );
        let none = KeySet::parse(&format!("9 {SECRET}")).unwrap();
        assert_eq!(
            open(&buf[..len], |id| none.get(id)),
            Err(AuthError::UnknownKey(7))
        );
        assert_eq!(
            open(&buf[..30], |id| set.get(id)),
            Err(AuthError::Truncated)
        );
        assert!(fresh(1000, 31_000, 30_000) && !fresh(1000, 31_001, 30_000));
        assert!(fresh(31_000, 1000, 30_000) && !fresh(31_001, 1000, 30_000));
    }
}
