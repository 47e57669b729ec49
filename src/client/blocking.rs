//! The blocking probe: one PROBE, one connected socket, wait for the answer.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::answer::io_error;
use super::icmp::is_pending_icmp;
use super::keyed::{Exchange, Step};
use super::{Answer, ProbeError, ProbeOptions, build_probe, check_service, random_nonce};
use crate::proto::wire;

/// Sends one PROBE to `target` and waits for its STATUS. The socket is connected, like
/// keepalived's, so only answers from the probed address count, and an ICMP port unreachable
/// is reported as `Refused`; answers with another nonce are ignored.
///
/// With a key, nothing that fails authentication (junk, unsealed or wrongly sealed answers,
/// ICMP errors) ends the probe: it waits for a sealed answer until its timeout, sending one
/// unsealed diagnostic probe half-way, then fails as `WrongKey` (the agent answered the
/// diagnostic), `Unauthenticated` (other replies came) or `Timeout` (see `keyed.rs`).
pub fn probe(target: SocketAddr, options: &ProbeOptions) -> Result<Answer, ProbeError> {
    check_service(&options.service)?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(ProbeError::Io)?;
    socket.connect(target).map_err(ProbeError::Io)?;
    let nonce = random_nonce();
    let mut request = [0u8; wire::PROBE_MAX_LEN];
    let service = options.service.as_bytes();
    let len = build_probe(
        nonce,
        service,
        None,
        options.probe_len,
        options.key.as_deref(),
        &mut request,
    );
    let mut exchange = Exchange::new(
        nonce,
        service,
        options.key.clone(),
        Instant::now(),
        options.timeout,
    );
    socket.send(&request[..len]).map_err(io_error)?;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if exchange.diagnostic_due(now) {
            let diagnostic = random_nonce();
            let n = exchange.write_diagnostic(diagnostic, options.probe_len, &mut request);
            // A failure to send it is not the probe's result: it then ends as it would without.
            let _ = socket.send(&request[..n]);
            exchange.diagnostic_sent(diagnostic);
        }
        if now >= exchange.deadline() {
            return Err(exchange.expire());
        }
        let wait = exchange.next_event().saturating_duration_since(now);
        socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(ProbeError::Io)?;
        let step = match socket.recv(&mut buf) {
            Ok(n) => exchange.on_datagram(&buf[..n], Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Step::Wait
            }
            // An ICMP error about a datagram sent on this connected socket.
            Err(e) if is_pending_icmp(&e) => match e.raw_os_error() {
                Some(errno) => exchange.on_icmp(errno),
                None => Step::Wait,
            },
            Err(e) => return Err(io_error(e)),
        };
        if let Step::Done(result) = step {
            return result;
        }
    }
}
