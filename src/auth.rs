//! Authenticated probes and answers: shared keys and the protocol v1 trailer.
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
//! Key files hold one key per line, `ID SECRET` with the secret in hex (16 to 64 bytes); `#`
//! starts a comment. Several keys may be listed at once (rotation): the agent accepts each of
//! them, a prober signs with one. The file must not be readable or writable by group or others.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::wire::{self, AUTH_TRAILER_LEN, FLAG_AUTH};

/// Bytes of the MAC kept in the trailer.
pub const MAC_LEN: usize = 16;
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 16;
/// Longest secret accepted, in bytes (one SHA-256 block).
pub const MAX_SECRET: usize = 64;
/// Most keys in one file.
pub const MAX_KEYS: usize = 64;

/// One shared key.
#[derive(Clone)]
pub struct Key {
    id: u32,
    mac: Hmac<Sha256>,
}

impl Key {
    /// A key from its id and secret bytes (16..=64 bytes).
    pub fn new(id: u32, secret: &[u8]) -> Result<Key, String> {
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(format!(
                "key {id}: the secret is {} bytes; it must be {MIN_SECRET} to {MAX_SECRET}",
                secret.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| format!("key {id}: unusable secret"))?;
        Ok(Key { id, mac })
    }

    /// The key's id, sent in the clear in every trailer.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let full = self.mac.clone().chain_update(data).finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&full[..MAC_LEN]);
        tag
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        // Constant-time comparison of the truncated tag.
        self.mac
            .clone()
            .chain_update(data)
            .verify_truncated_left(tag)
            .is_ok()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        write!(f, "Key {{ id: {} }}", self.id)
    }
}

/// The keys loaded from a key file.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    path: PathBuf,
}

impl PartialEq for KeySet {
    fn eq(&self, other: &KeySet) -> bool {
        self.path == other.path && self.ids().eq(other.ids())
    }
}

impl Eq for KeySet {}

impl KeySet {
    /// Reads a key file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<KeySet, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{shown} is accessible by group or others (mode {mode:03o}); run chmod 600 {shown}"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mut set = KeySet::parse(&text).map_err(|e| format!("{shown}: {e}"))?;
        set.path = path.to_path_buf();
        Ok(set)
    }

    /// Parses key file text.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let lineno = n + 1;
            let mut fields = line.split_whitespace();
            let (Some(id), Some(secret), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {lineno}: expected \"ID SECRET_HEX\""));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| format!("line {lineno}: key id \"{id}\" is not 0..=4294967295"))?;
            let secret = decode_hex(secret)
                .ok_or_else(|| format!("line {lineno}: the secret of key {id} is not hex"))?;
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("line {lineno}: key id {id} is listed twice"));
            }
            keys.push(Key::new(id, &secret).map_err(|e| format!("line {lineno}: {e}"))?);
        }
        if keys.is_empty() {
            return Err("no keys (expected lines \"ID SECRET_HEX\")".into());
        }
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys; at most {MAX_KEYS}", keys.len()));
        }
        Ok(KeySet {
            keys,
            path: PathBuf::new(),
        })
    }

    /// The key with this id.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The first key of the file (what a prober signs with by default).
    pub fn first(&self) -> Option<&Key> {
        self.keys.first()
    }

    /// The key ids, in file order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// The file the keys came from (empty when parsed from text).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

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
    buf[len..len + 4].copy_from_slice(&key.id.to_be_bytes());
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

/// Checks the trailer of `datagram` against `lookup` (key id to key).
pub fn open<'k>(
    datagram: &[u8],
    lookup: impl FnOnce(u32) -> Option<&'k Key>,
) -> Result<Verified, AuthError> {
    if datagram.len() < 8 || u16::from_be_bytes([datagram[6], datagram[7]]) & FLAG_AUTH == 0 {
        return Err(AuthError::Missing);
    }
    if datagram.len() < 16 + AUTH_TRAILER_LEN {
        return Err(AuthError::Truncated);
    }
    let start = datagram.len() - AUTH_TRAILER_LEN;
    let t = &datagram[start..];
    let key_id = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&t[4..12]);
    let key = lookup(key_id).ok_or(AuthError::UnknownKey(key_id))?;
    if !key.verify(&datagram[..start + 12], &t[12..]) {
        return Err(AuthError::BadMac);
    }
    Ok(Verified {
        key_id,
        timestamp_ms: u64::from_be_bytes(ts),
    })
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

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f";

    fn keys() -> KeySet {
        KeySet::parse(&format!("# keys\n7 {SECRET}\n8 {SECRET}ff  # rotated in\n")).unwrap()
    }

    #[test]
    fn key_file_errors_say_where() {
        assert!(KeySet::parse("").unwrap_err().contains("no keys"));
        assert!(KeySet::parse("1").unwrap_err().contains("line 1"));
        assert!(KeySet::parse("x 00").unwrap_err().contains("key id \"x\""));
        assert!(KeySet::parse("1 zz").unwrap_err().contains("not hex"));
        assert!(KeySet::parse("1 0011").unwrap_err().contains("16 to 64"));
        let twice = format!("1 {SECRET}\n\n1 {SECRET}");
        assert!(
            KeySet::parse(&twice)
                .unwrap_err()
                .contains("line 3: key id 1 is listed twice")
        );
        assert_eq!(keys().ids().collect::<Vec<_>>(), vec![7, 8]);
        assert!(!format!("{:?}", keys()).contains(SECRET));
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
