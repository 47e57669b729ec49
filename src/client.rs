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
//! `auth.rs`) and only answers sealed with the same key are accepted: a forged or replayed
//! answer is ignored (and reported as "wrong key" if nothing valid comes).

mod icmp;
mod prober;

pub use prober::{Completion, Prober, ProberStats};

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{self, AuthError, Key, KeySet};
use crate::state::{Reason, State};
use crate::wire::{self, Reply};

/// Default length of a PROBE: room for the longest STATUS (45 + 255 bytes) and an
/// authentication trailer, so that the answer is never cut.
pub const DEFAULT_PROBE_LEN: usize =
    wire::STATUS_HEADER_LEN + wire::MAX_MESSAGE_LEN + wire::AUTH_TRAILER_LEN;

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
}

impl Default for ProbeOptions {
    fn default() -> ProbeOptions {
        ProbeOptions {
            service: String::new(),
            timeout: DEFAULT_TIMEOUT,
            probe_len: DEFAULT_PROBE_LEN,
            key: None,
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

/// Writes a PROBE for `service` into `out` (512 bytes), sealed with `key` if any, and returns
/// its length.
pub(crate) fn build_probe(
    nonce: u64,
    service: &[u8],
    probe_len: usize,
    key: Option<&Key>,
    out: &mut [u8],
) -> usize {
    match key {
        None => wire::encode_probe(nonce, service, probe_len, out),
        Some(key) => {
            let body_len =
                probe_len.clamp(MIN_SEALED_PROBE_LEN, wire::PROBE_MAX_LEN) - wire::AUTH_TRAILER_LEN;
            let body = wire::encode_probe(nonce, service, body_len, out);
            auth::seal(key, out, body, auth::unix_ms())
        }
    }
}

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
    /// Round-trip time of this probe.
    pub rtt: Duration,
}

impl Answer {
    /// True when the server should receive new connections: up, with a weight above zero.
    pub fn is_serving(&self) -> bool {
        self.state == State::Up && self.weight_pct > 0
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
    /// With a key: the answers did not authenticate, or the agent answers unauthenticated
    /// probes but dropped the sealed ones (an unknown key id, another secret, or clocks
    /// further apart than its `auth_window_ms`).
    WrongKey(String),
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
            ProbeError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

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
                        "probe options: unknown key \"{key}\" (value \"{value}\"); known keys: timeout_ms, key_file, key_id"
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

/// Sends one PROBE to `target` and waits for its STATUS. The socket is connected, like
/// keepalived's, so an ICMP port unreachable is reported as `Refused` and only answers from
/// the probed address count; answers with another nonce are ignored.
///
/// With a key, answers that do not authenticate are ignored; if nothing valid has come by half
/// the timeout, one unsealed probe is sent too, to tell a wrong key from a dead agent: an
/// answer to it ends the probe at once as `WrongKey` (the agent answered the sealed probe
/// first if it could), silence as `Timeout`.
pub fn probe(target: SocketAddr, options: &ProbeOptions) -> Result<Answer, ProbeError> {
    check_service(&options.service)?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(ProbeError::Io)?;
    socket.connect(target).map_err(ProbeError::Io)?;
    let key = options.key.as_deref();
    let nonce = random_nonce();
    let mut request = [0u8; wire::PROBE_MAX_LEN];
    let service = options.service.as_bytes();
    let len = build_probe(nonce, service, options.probe_len, key, &mut request);
    let started = Instant::now();
    let deadline = started + options.timeout;
    socket.send(&request[..len]).map_err(io_error)?;
    let mut diagnostic = key.map(|_| Diagnostic {
        at: started + options.timeout / 2,
        nonce: random_nonce(),
        sent: false,
    });
    let mut rejected: Option<String> = None;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        // An answer that failed to authenticate already tells a wrong key: no diagnostic then.
        if let Some(d) = diagnostic
            .as_mut()
            .filter(|d| !d.sent && now >= d.at && rejected.is_none())
        {
            let n = wire::encode_probe(d.nonce, service, options.probe_len, &mut request);
            let _ = socket.send(&request[..n]);
            d.sent = true;
        }
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(no_valid_answer(key, options.timeout, rejected, false));
        }
        let wait = match &diagnostic {
            Some(d) if !d.sent && rejected.is_none() => {
                left.min(d.at.saturating_duration_since(now))
            }
            _ => left,
        };
        socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(ProbeError::Io)?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        let rtt = started.elapsed();
        if diagnostic.is_some_and(|d| answer_nonce(&buf[..n]) == Some(d.nonce)) {
            // Alive, and it answered the sealed probe first if it could.
            return Err(no_valid_answer(key, options.timeout, rejected, true));
        }
        match read_answer_keyed(&buf[..n], nonce, rtt, key) {
            Ok(Some(answer)) => return Ok(answer),
            Ok(None) => {}
            Err(ProbeError::WrongKey(why)) => rejected = Some(why),
            Err(e) => return Err(e),
        }
    }
}

/// With a key: one unsealed probe sent half-way through the timeout; an answer to it shows
/// that the agent is alive and dropped the sealed probe (a wrong key), not dead.
#[derive(Clone, Copy)]
struct Diagnostic {
    at: Instant,
    nonce: u64,
    sent: bool,
}

/// What to report when a probe sealed with `key` (None: unsealed) ends without a valid answer
/// (its deadline passed, or the agent answered the unsealed diagnostic): why an answer was
/// refused, if one was; a wrong key if the agent answered the diagnostic (`agent_alive`); else
/// a timeout. Shared by `probe` and
/// the non-blocking `Prober`.
pub(crate) fn no_valid_answer(
    key: Option<&Key>,
    timeout: Duration,
    rejected: Option<String>,
    agent_alive: bool,
) -> ProbeError {
    match (rejected, key) {
        (Some(why), _) => ProbeError::WrongKey(why),
        (None, Some(key)) if agent_alive => ProbeError::WrongKey(format!(
            "the agent answers unauthenticated probes but dropped the sealed one (key id {} unknown there, another secret, or clocks further apart than its auth_window_ms)",
            key.id()
        )),
        _ => ProbeError::Timeout(timeout),
    }
}

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
fn io_error(e: io::Error) -> ProbeError {
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
/// is `WrongKey` (the caller keeps waiting for a valid one until its deadline).
pub fn read_answer_keyed(
    datagram: &[u8],
    nonce: u64,
    rtt: Duration,
    key: Option<&Key>,
) -> Result<Option<Answer>, ProbeError> {
    match wire::decode_reply(datagram) {
        Ok(Reply::Status(s)) => {
            if s.nonce != nonce {
                return Ok(None);
            }
            if let Some(key) = key {
                match auth::open(datagram, |id| (id == key.id()).then_some(key)) {
                    Ok(_) => {}
                    Err(AuthError::Missing) => {
                        return Err(ProbeError::WrongKey(
                            "the answer is not sealed (the agent has no key_file?)".into(),
                        ));
                    }
                    Err(AuthError::UnknownKey(id)) => {
                        return Err(ProbeError::WrongKey(format!(
                            "the answer is sealed with key id {id}, not {}",
                            key.id()
                        )));
                    }
                    Err(_) => {
                        return Err(ProbeError::WrongKey(format!(
                            "the answer does not authenticate with key id {} (forged, or another secret)",
                            key.id()
                        )));
                    }
                }
            }
            Ok(Some(Answer {
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
                rtt,
            }))
        }
        Ok(Reply::Error {
            nonce: n,
            version,
            code,
        }) => {
            if n != nonce {
                return Ok(None);
            }
            match code {
                // An unauthenticated ERROR cannot override a sealed probe: keep waiting.
                wire::ERROR_AUTH_REQUIRED if key.is_some() => Err(ProbeError::WrongKey(
                    "the agent answered \"authentication required\" to a sealed probe".into(),
                )),
                wire::ERROR_AUTH_REQUIRED => Err(ProbeError::AuthRequired),
                _ => Err(ProbeError::VersionMismatch {
                    agent_version: version,
                }),
            }
        }
        Err(wire::DecodeError::NotProtocol) => Err(ProbeError::NotAnAgent(
            "the answer is not lbagent protocol (another UDP service on that port?)",
        )),
        Err(wire::DecodeError::UnexpectedType(wire::TYPE_PROBE)) => Err(ProbeError::NotAnAgent(
            "the probe came back unchanged (a UDP echo service?)",
        )),
        Err(_) => Err(ProbeError::NotAnAgent("a malformed lbagent answer")),
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
