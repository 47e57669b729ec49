//! Shared keys: what a key file holds, and the MAC each key computes.
//!
//! Key files hold one key per line, `ID SECRET` with the secret in hex (16 to 64 bytes); `#`
//! starts a comment. Several keys may be listed at once (rotation): the agent accepts each of
//! them, a prober signs with one. The file must not be readable or writable by group or others.
//! The trailer that carries a key's MAC is `proto/auth.rs`.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::proto::auth::MAC_LEN;

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

    pub(crate) fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let full = self.mac.clone().chain_update(data).finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&full[..MAC_LEN]);
        tag
    }

    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
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

    /// The key with this id and its position in the file (which indexes per-key state).
    pub fn find(&self, id: u32) -> Option<(usize, &Key)> {
        self.keys.iter().enumerate().find(|(_, k)| k.id == id)
    }

    /// How many keys the file holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True for a set without keys (never one loaded from a file).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
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
}
