//! The blocking probe: one PROBE, one connected socket, wait for the answer.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::answer::{answer_nonce, io_error, read_answer_keyed};
use super::keyed::no_valid_answer;
use super::{Answer, ProbeError, ProbeOptions, build_probe, check_service, random_nonce};
use crate::proto::wire;

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
    let len = build_probe(nonce, service, None, options.probe_len, key, &mut request);
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
