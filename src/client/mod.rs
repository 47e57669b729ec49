//! The prober: asks agents for their status over protocol v1.
//!
//! - [`probe`] asks one agent and blocks until the answer or the timeout (what
//!   `lbagent-probe` and the C `lbagent_probe` use).
//! - [`Prober`] is the non-blocking form for event loops: one UDP socket, any number of
//!   probes in flight, answers and timeouts collected by [`Prober::receive`] (what the
//!   director-side poller `lbagent-director`, `lbagent-probe --watch` and the C
//!   `lbagent_prober` use).
//!
//! Both say exactly why there is no answer ([`ProbeError`]): a timeout, an ICMP port
//! unreachable ("refused"), a host or network unreachable, something that is not an lbagent,
//! a protocol version mismatch, an agent that requires authentication, or a wrong key.
//!
//! With a key ([`ProbeOptions::key`]) every PROBE is sealed (HMAC-SHA256 trailer, see
//! `auth.rs`) and only answers sealed with the same key are accepted. Nothing that fails
//! authentication ends a keyed probe early (anyone may forge it): it waits for a sealed answer
//! until its deadline, then fails naming what came instead ([`Hints`]). `keyed.rs` is the one
//! state machine of both forms.

mod answer;
mod blocking;
mod icmp;
mod keyed;
mod prober;
mod push;

pub use answer::{Answer, DrainProgress, ProbeError, read_answer, read_answer_keyed};
pub use blocking::probe;
pub use keyed::Hints;
pub use prober::{Completion, Prober, ProberStats};

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::keys::{Key, KeySet};
use crate::proto::{auth, wire};

/// Default length of a PROBE: room for the longest STATUS (45 + 255 bytes), its drain
/// progress and an authentication trailer, so that the answer is never cut.
pub const DEFAULT_PROBE_LEN: usize =
    wire::STATUS_HEADER_LEN + wire::MAX_MESSAGE_LEN + wire::DRAIN_LEN + wire::AUTH_TRAILER_LEN;

/// Default time to wait for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What to ask and how long to wait.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The service to ask about; empty for the whole server.
    pub service: String,
    /// How long to wait for the answer.
    pub timeout: Duration,
    /// Length of the PROBE datagram (48..=512): the answer is never longer.
    pub probe_len: usize,
    /// Seal every PROBE with this key and accept only answers sealed with it.
    pub key: Option<Arc<Key>>,
    /// Subscribe to pushed changes with every PROBE, asking for this lease (the
    /// non-blocking `Prober` only; the agent grants at most `wire::MAX_LEASE_MS`). Each probe
    /// renews it, so a lease of a few intervals keeps the subscription alive while the prober
    /// polls.
    pub subscribe: Option<Duration>,
}

impl Default for ProbeOptions {
    fn default() -> ProbeOptions {
        ProbeOptions {
            service: String::new(),
            timeout: DEFAULT_TIMEOUT,
            probe_len: DEFAULT_PROBE_LEN,
            key: None,
            subscribe: None,
        }
    }
}

/// Shortest sealed PROBE: a minimal PROBE body plus the trailer (and so room for a sealed
/// STATUS).
pub const MIN_SEALED_PROBE_LEN: usize = wire::PROBE_MIN_LEN + wire::AUTH_TRAILER_LEN;

/// Loads the key a prober signs with from a key file: key `id`, or the file's first key.
pub fn load_key(path: &std::path::Path, id: Option<u32>) -> Result<Arc<Key>, String> {
    let keys = KeySet::load(path)?;
    let key = match id {
        Some(id) => keys
            .get(id)
            .ok_or_else(|| format!("{}: no key with id {id}", path.display()))?,
        None => keys
            .first()
            .ok_or_else(|| format!("{}: no keys", path.display()))?,
    };
    Ok(Arc::new(key.clone()))
}

/// Writes a PROBE for `service` into `out` (512 bytes), subscribing for `lease_ms` if given,
/// sealed with `key` if any, and returns its length. It asks for the drain progress (flag bit
/// 3): agents that do not know the flag ignore it.
pub(crate) fn build_probe(
    nonce: u64,
    service: &[u8],
    lease_ms: Option<u32>,
    probe_len: usize,
    key: Option<&Key>,
    out: &mut [u8],
) -> usize {
    let ask_drain = |out: &mut [u8]| {
        let flags = u16::from_be_bytes([out[6], out[7]]) | wire::FLAG_DRAIN;
        out[6..8].copy_from_slice(&flags.to_be_bytes());
    };
    match key {
        None => {
            let len = wire::encode_probe_with(nonce, service, lease_ms, probe_len, out);
            ask_drain(out);
            len
        }
        Some(key) => {
            let body_len =
                probe_len.clamp(MIN_SEALED_PROBE_LEN, wire::PROBE_MAX_LEN) - wire::AUTH_TRAILER_LEN;
            let body = wire::encode_probe_with(nonce, service, lease_ms, body_len, out);
            ask_drain(out);
            auth::seal(key, out, body, auth::unix_ms())
        }
    }
}

/// Parses `HOST[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address; names are resolved (the first
/// address wins).
pub fn resolve_target(target: &str, default_port: u16) -> Result<SocketAddr, ProbeError> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p.parse::<u16>().map_err(|_| {
                ProbeError::BadTarget(format!("\"{target}\": port \"{p}\" is not 0..=65535"))
            })?;
            (h, port)
        }
        _ => (target, default_port),
    };
    if host.is_empty() {
        return Err(ProbeError::BadTarget(format!("\"{target}\": no host")));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| ProbeError::BadTarget(format!("\"{host}\" does not resolve: {e}")))?
        .next()
        .ok_or_else(|| ProbeError::BadTarget(format!("\"{host}\" has no address")))
}

/// Parses a numeric target without any name lookup (the non-blocking prober must never wait
/// on DNS): `IPv4[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address.
pub fn parse_ip_target(target: &str, default_port: u16) -> Result<SocketAddr, ProbeError> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(ProbeError::BadTarget(format!(
        "\"{target}\": expected a numeric address, IPv4[:PORT] or [IPv6]:PORT (names are not resolved here)"
    )))
}

/// Checks a service name against the wire format: at most 64 bytes of printable ASCII.
pub fn check_service(service: &str) -> Result<(), ProbeError> {
    if service.len() > wire::MAX_NAME_LEN {
        return Err(ProbeError::BadTarget(format!(
            "service name of {} bytes: at most {} bytes",
            service.len(),
            wire::MAX_NAME_LEN
        )));
    }
    if !service.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(ProbeError::BadTarget(format!(
            "service name \"{}\": only printable ASCII",
            service.escape_default()
        )));
    }
    Ok(())
}

impl ProbeOptions {
    /// Reads `key=value` options (the syntax of the agent's configuration; used by the C API):
    /// `timeout_ms=N` (1..=60000), `key_file=PATH` and `key_id=N` (sign with that key of the
    /// file instead of its first). Keys not given keep the values of `self`. The error names
    /// the key and the value.
    pub fn with_config(mut self, text: &str) -> Result<ProbeOptions, String> {
        let pairs = crate::config::words(text).map_err(|e| e.to_string())?;
        let key_id = match pairs.iter().find(|(k, _)| *k == "key_id") {
            None => None,
            Some((_, v)) => Some(v.parse::<u32>().map_err(|_| {
                format!("probe options: invalid value \"{v}\" for key \"key_id\": expected 0..=4294967295")
            })?),
        };
        let mut seen: Vec<&str> = Vec::new();
        for &(key, value) in &pairs {
            if seen.contains(&key) {
                return Err(format!(
                    "probe options: duplicate key \"{key}\" (second value \"{value}\")"
                ));
            }
            seen.push(key);
            match key {
                "timeout_ms" => {
                    let ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| (1..=60_000).contains(ms))
                        .ok_or_else(|| {
                            format!(
                                "probe options: invalid value \"{value}\" for key \"timeout_ms\": expected milliseconds 1..=60000"
                            )
                        })?;
                    self.timeout = Duration::from_millis(ms);
                }
                "subscribe_ms" => {
                    let ms = value
                        .parse::<u32>()
                        .ok()
                        .filter(|ms| *ms <= wire::MAX_LEASE_MS)
                        .ok_or_else(|| {
                            format!(
                                "probe options: invalid value \"{value}\" for key \"subscribe_ms\": expected a lease in milliseconds 0..={} (0: no subscription)",
                                wire::MAX_LEASE_MS
                            )
                        })?;
                    self.subscribe = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
                }
                "key_file" => {
                    self.key = Some(load_key(std::path::Path::new(value), key_id).map_err(|why| {
                        format!("probe options: invalid value \"{value}\" for key \"key_file\": {why}")
                    })?);
                }
                "key_id" if pairs.iter().any(|(k, _)| *k == "key_file") => {}
                "key_id" => {
                    return Err(format!(
                        "probe options: key \"key_id\" (value \"{value}\") needs key_file"
                    ));
                }
                _ => {
                    return Err(format!(
                        "probe options: unknown key \"{key}\" (value \"{value}\"); known keys: timeout_ms, key_file, key_id, subscribe_ms"
                    ));
                }
            }
        }
        Ok(self)
    }
}

fn random_nonce() -> u64 {
    let mut b = [0u8; 8];
    // On failure the nonce is still unpredictable enough for matching answers (not security).
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// What the client's unit tests send as an agent would: STATUS datagrams.
#[cfg(test)]
pub(crate) mod test_datagrams {
    use crate::keys::Key;
    use crate::proto::{auth, wire};

    /// An UP answer for `nonce`: instance 1, generation 1, weight 100, nothing else.
    pub(crate) fn up(nonce: u64) -> wire::StatusFields<'static> {
        wire::StatusFields {
            flags: 0,
            nonce,
            instance_id: 1,
            generation: 1,
            state: crate::State::Up as u8,
            reason: 0,
            weight_pct: 100,
            since_ms: 0,
            in_use: 0,
            capacity: 0,
            message: b"",
        }
    }

    /// `fields` as a STATUS datagram, sealed with `key` when given.
    pub(crate) fn status(fields: &wire::StatusFields, key: Option<&Key>) -> Vec<u8> {
        let mut out = [0u8; wire::PROBE_MAX_LEN];
        let mut len = wire::encode_status(fields, wire::PROBE_MAX_LEN, &mut out).unwrap();
        if let Some(key) = key {
            len = auth::seal(key, &mut out, len, auth::unix_ms());
        }
        out[..len].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            resolve_target("127.0.0.1:5", 1).unwrap(),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            resolve_target("127.0.0.1", 4950).unwrap(),
            "127.0.0.1:4950".parse().unwrap()
        );
        assert_eq!(
            resolve_target("::1", 4950).unwrap(),
            "[::1]:4950".parse().unwrap()
        );
        assert_eq!(
            resolve_target("[::1]:7", 4950).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(resolve_target("localhost:9", 1).unwrap().port(), 9);
        assert!(matches!(
            resolve_target("host:99999", 1),
            Err(ProbeError::BadTarget(_))
        ));
        assert!(matches!(
            resolve_target(":80", 1),
            Err(ProbeError::BadTarget(_))
        ));
    }
}
