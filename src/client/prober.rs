//! The non-blocking prober: one UDP socket, any number of probes in flight.
//!
//! `send` writes one PROBE and returns at once; `receive` reads every answer and ICMP error
//! waiting on the socket and expires the probes whose timeout has passed, returning each
//! finished probe once, with the caller's token. An event loop waits for the socket
//! ([`Prober::as_raw_fd`] becomes readable) or for [`Prober::next_timeout`], whichever comes
//! first, then calls `receive`. Nothing blocks, nothing resolves names.
//!
//! Answers are matched by the PROBE's random nonce and must come from the address probed
//! (like keepalived's connected socket); anything else is counted as ignored.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::icmp::{self, Family};
use super::{
    Answer, ProbeError, ProbeOptions, build_probe, check_service, io_error, read_answer_keyed,
};
use crate::auth::Key;
use crate::wire;
use std::sync::Arc;

/// A finished probe.
#[derive(Debug)]
pub struct Completion {
    /// The token given to [`Prober::send`].
    pub token: u64,
    /// The address probed.
    pub target: SocketAddr,
    /// The answer, or why there is none.
    pub result: Result<Answer, ProbeError>,
}

/// What a prober has done since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProberStats {
    /// PROBEs sent.
    pub sent: u64,
    /// Probes finished with an answer.
    pub answered: u64,
    /// Probes finished with an error other than a timeout (refused, not an agent, ...).
    pub failed: u64,
    /// Probes finished by their timeout.
    pub timed_out: u64,
    /// Datagrams that matched no probe in flight: late answers to probes that timed out, or
    /// answers from an address other than the one probed.
    pub ignored: u64,
}

struct InFlight {
    token: u64,
    target: SocketAddr,
    sent: Instant,
    /// The key the probe was sealed with: answers must authenticate with it.
    key: Option<Arc<Key>>,
    /// Why an answer with the right nonce was refused (reported if nothing valid comes).
    rejected: Option<String>,
}

/// Random nonces, drawn from the system in batches (one `getrandom` call per 512 probes).
struct Nonces {
    pool: [u8; 4096],
    used: usize,
}

impl Nonces {
    fn new() -> Nonces {
        Nonces {
            pool: [0; 4096],
            used: 4096,
        }
    }

    fn next(&mut self) -> u64 {
        if self.used == self.pool.len() {
            if getrandom::fill(&mut self.pool).is_err() {
                // Still unpredictable enough to match answers; not a security boundary alone.
                let seed = super::random_nonce();
                for (i, chunk) in self.pool.chunks_mut(8).enumerate() {
                    chunk.copy_from_slice(
                        &(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_ne_bytes(),
                    );
                }
            }
            self.used = 0;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.pool[self.used..self.used + 8]);
        self.used += 8;
        u64::from_ne_bytes(b)
    }
}

/// One UDP socket and the probes in flight on it. Not thread-safe by itself (`&mut self`);
/// the C `lbagent_prober` wraps it in a lock.
pub struct Prober {
    socket: UdpSocket,
    family: Family,
    options: ProbeOptions,
    in_flight: HashMap<u64, InFlight>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    nonces: Nonces,
    request: Box<[u8; wire::PROBE_MAX_LEN]>,
    buf: Box<[u8; 2048]>,
    control: Vec<u8>,
    icmp_errors: Vec<(SocketAddr, i32, Option<u64>)>,
    /// An ICMP error was reported by a `send` or `recv`: the error queue has something to
    /// read. (Every queued error is reported once that way, so the queue is read only then.)
    icmp_pending: bool,
    stats: ProberStats,
}

impl Prober {
    /// Opens the socket. `options` gives the timeout and PROBE length of every probe (its
    /// `service` is not used: each `send` names its own).
    pub fn new(options: ProbeOptions) -> Result<Prober, ProbeError> {
        let (socket, family) = icmp::open_socket().map_err(ProbeError::Io)?;
        Ok(Prober {
            socket,
            family,
            options,
            in_flight: HashMap::new(),
            deadlines: BinaryHeap::new(),
            nonces: Nonces::new(),
            request: Box::new([0; wire::PROBE_MAX_LEN]),
            buf: Box::new([0; 2048]),
            control: icmp::control_buffer(),
            icmp_errors: Vec::new(),
            icmp_pending: false,
            stats: ProberStats::default(),
        })
    }

    /// The options every probe uses.
    pub fn options(&self) -> &ProbeOptions {
        &self.options
    }

    /// Sends a PROBE about `service` ("" = the whole server) to `target`; its completion will
    /// carry `token`. Returns at once. Errors: `BadTarget` (a bad service name, port 0, an
    /// IPv6 target where the host has no IPv6), `Unreachable` (no route), `Io`; the probe is
    /// then not in flight. Sealed with the options' key, if any.
    pub fn send(
        &mut self,
        target: SocketAddr,
        service: &str,
        token: u64,
    ) -> Result<(), ProbeError> {
        let key = self.options.key.clone();
        self.send_keyed(target, service, token, key)
    }

    /// `send`, sealed with `key` (None: unsealed) whatever the options say: a poller with one
    /// key per target. Only answers that authenticate with that key complete the probe; if
    /// none does before the timeout, it completes as `WrongKey` or `Timeout`.
    pub fn send_keyed(
        &mut self,
        target: SocketAddr,
        service: &str,
        token: u64,
        key: Option<Arc<Key>>,
    ) -> Result<(), ProbeError> {
        check_service(service)?;
        let target = icmp::canonical(target);
        if target.port() == 0 || target.ip().is_unspecified() {
            return Err(ProbeError::BadTarget(format!(
                "{target}: not a destination (port 0 or unspecified address)"
            )));
        }
        let destination = match (self.family, target) {
            (Family::DualStack, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (Family::V4Only, SocketAddr::V6(_)) => {
                return Err(ProbeError::BadTarget(format!(
                    "{target}: IPv6 is not available on this host"
                )));
            }
            _ => target,
        };
        let mut nonce = self.nonces.next();
        while self.in_flight.contains_key(&nonce) {
            nonce = self.nonces.next();
        }
        let len = build_probe(
            nonce,
            service.as_bytes(),
            self.options.probe_len,
            key.as_deref(),
            &mut self.request[..],
        );
        let mut retries = 0;
        loop {
            match self.socket.send_to(&self.request[..len], destination) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // An ICMP error for an earlier probe is reported by this call; it is also
                // queued and read by `receive`. Send again.
                Err(e) if icmp::is_pending_icmp(&e) && retries < 8 => {
                    self.icmp_pending = true;
                    retries += 1;
                }
                Err(e) => return Err(io_error(e)),
            }
        }
        let sent = Instant::now();
        self.in_flight.insert(
            nonce,
            InFlight {
                token,
                target,
                sent,
                key,
                rejected: None,
            },
        );
        self.deadlines
            .push(Reverse((sent + self.options.timeout, nonce)));
        self.stats.sent += 1;
        Ok(())
    }

    /// Reads every answer and ICMP error waiting on the socket and expires the probes whose
    /// timeout has passed, appending each finished probe to `out`. Never blocks. Returns how
    /// many were appended.
    pub fn receive(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        loop {
            match self.socket.recv_from(&mut self.buf[..]) {
                Ok((len, from)) => self.on_datagram(len, icmp::canonical(from), out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if icmp::is_pending_icmp(&e) => self.icmp_pending = true,
                // Nothing else is expected from a bound UDP socket; try again next time.
                Err(_) => break,
            }
        }
        self.read_icmp_errors(out);
        self.expire(Instant::now(), out);
        out.len() - before
    }

    /// How long until the next probe times out (zero when one already has); `None` when no
    /// probe is in flight. Wait no longer than this before calling `receive`.
    pub fn next_timeout(&mut self) -> Option<Duration> {
        while let Some(Reverse((deadline, nonce))) = self.deadlines.peek() {
            if self.in_flight.contains_key(nonce) {
                return Some(deadline.saturating_duration_since(Instant::now()));
            }
            // Finished before its deadline: drop the stale entry.
            self.deadlines.pop();
        }
        None
    }

    /// Probes sent and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> ProberStats {
        self.stats
    }

    fn finish(
        &mut self,
        nonce: u64,
        result: Result<Answer, ProbeError>,
        out: &mut Vec<Completion>,
    ) {
        let Some(probe) = self.in_flight.remove(&nonce) else {
            return;
        };
        match &result {
            Ok(_) => self.stats.answered += 1,
            Err(ProbeError::Timeout(_)) => self.stats.timed_out += 1,
            Err(_) => self.stats.failed += 1,
        }
        out.push(Completion {
            token: probe.token,
            target: probe.target,
            result,
        });
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr, out: &mut Vec<Completion>) {
        let datagram = &self.buf[..len];
        if datagram.len() >= 16 && datagram.starts_with(&wire::MAGIC) {
            let mut n = [0u8; 8];
            n.copy_from_slice(&datagram[8..16]);
            let nonce = u64::from_be_bytes(n);
            match self.in_flight.get_mut(&nonce) {
                Some(probe) if probe.target == from => {
                    let rtt = probe.sent.elapsed();
                    let result = match read_answer_keyed(datagram, nonce, rtt, probe.key.as_deref())
                    {
                        Ok(Some(answer)) => Ok(answer),
                        Ok(None) => return, // unreachable: the nonce matched
                        // Not authentic: wait for a valid answer until the deadline.
                        Err(ProbeError::WrongKey(why)) => {
                            probe.rejected = Some(why);
                            self.stats.ignored += 1;
                            return;
                        }
                        Err(e) => Err(e),
                    };
                    self.finish(nonce, result, out);
                }
                _ => self.stats.ignored += 1,
            }
            return;
        }
        // Not this protocol: whatever answers on that port is not an agent. It cannot be matched
        // by nonce, so it finishes the oldest probe in flight to that address.
        match self.oldest_to(from) {
            Some(nonce) => self.finish(
                nonce,
                Err(ProbeError::NotAnAgent(
                    "the answer is not lbagent protocol (another UDP service on that port?)",
                )),
                out,
            ),
            None => self.stats.ignored += 1,
        }
    }

    /// The probe in flight to `target` sent first (a linear scan: only for answers that carry
    /// no nonce, which a healthy fleet does not send).
    fn oldest_to(&self, target: SocketAddr) -> Option<u64> {
        self.in_flight
            .iter()
            .filter(|(_, p)| p.target == target)
            .min_by_key(|(_, p)| p.sent)
            .map(|(nonce, _)| *nonce)
    }

    fn read_icmp_errors(&mut self, out: &mut Vec<Completion>) {
        if !std::mem::take(&mut self.icmp_pending) {
            return;
        }
        self.icmp_errors.clear();
        icmp::drain_errors(
            &self.socket,
            &mut self.buf[..],
            &mut self.control,
            |error| {
                // Linux quotes the datagram that caused the error: its nonce names the probe.
                let nonce = (error.quoted.len() >= 16 && error.quoted.starts_with(&wire::MAGIC))
                    .then(|| {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&error.quoted[8..16]);
                        u64::from_be_bytes(n)
                    });
                self.icmp_errors
                    .push((error.destination, error.errno, nonce));
            },
        );
        let errors = std::mem::take(&mut self.icmp_errors);
        for &(destination, errno, nonce) in &errors {
            let error = || io_error(io::Error::from_raw_os_error(errno));
            match nonce.filter(|n| {
                self.in_flight
                    .get(n)
                    .is_some_and(|p| p.target == destination)
            }) {
                Some(nonce) => self.finish(nonce, Err(error()), out),
                // No usable quote: the error stands for every probe in flight to that address.
                None => {
                    while let Some(nonce) = self.oldest_to(destination) {
                        self.finish(nonce, Err(error()), out);
                    }
                }
            }
        }
        self.icmp_errors = errors;
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Completion>) {
        while let Some(&Reverse((deadline, nonce))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let timeout = self.options.timeout;
            let error = match self
                .in_flight
                .get_mut(&nonce)
                .and_then(|p| p.rejected.take())
            {
                Some(why) => ProbeError::WrongKey(why),
                None => ProbeError::Timeout(timeout),
            };
            self.finish(nonce, Err(error), out);
        }
    }
}

impl AsRawFd for Prober {
    /// The socket: readable when `receive` has answers or errors to read.
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for Prober {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn wait_all(prober: &mut Prober, want: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < want && Instant::now() < deadline {
            prober.receive(&mut out);
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }

    #[test]
    fn refused_and_timeout_are_told_apart() {
        let mut prober = Prober::new(ProbeOptions {
            timeout: Duration::from_millis(300),
            ..ProbeOptions::default()
        })
        .unwrap();
        // IPv4 and IPv6 targets through the one dual-stack socket.
        let closed4 = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let closed6 = UdpSocket::bind("[::1]:0").unwrap().local_addr().unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        for round in 0..3 {
            prober.send(closed4, "", round).unwrap();
            prober.send(closed6, "", 10 + round).unwrap();
            prober
                .send(silent.local_addr().unwrap(), "", 100 + round)
                .unwrap();
        }
        let out = wait_all(&mut prober, 9);
        assert_eq!(out.len(), 9, "{out:?}");
        for c in &out {
            match c.token {
                0..=2 => assert_eq!(c.target, closed4),
                10..=12 => assert_eq!(c.target, closed6),
                _ => {}
            }
            match c.token {
                0..=12 => assert!(matches!(c.result, Err(ProbeError::Refused)), "{c:?}"),
                _ => assert!(matches!(c.result, Err(ProbeError::Timeout(_))), "{c:?}"),
            }
        }
        assert_eq!(prober.in_flight(), 0);
        assert_eq!(prober.next_timeout(), None);
        let stats = prober.stats();
        assert_eq!((stats.sent, stats.failed, stats.timed_out), (9, 6, 3));
    }

    #[test]
    fn non_protocol_answer_is_not_an_agent() {
        let mut prober = Prober::new(ProbeOptions::default()).unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        prober.send(other.local_addr().unwrap(), "", 7).unwrap();
        let mut buf = [0u8; 1024];
        let (_, from) = other.recv_from(&mut buf).unwrap();
        other.send_to(b"hello\n", from).unwrap();
        let out = wait_all(&mut prober, 1);
        assert!(
            matches!(out[0].result, Err(ProbeError::NotAnAgent(_))),
            "{out:?}"
        );
        assert_eq!(out[0].token, 7);
    }

    #[test]
    fn bad_sends_are_refused_before_the_wire() {
        let mut prober = Prober::new(ProbeOptions::default()).unwrap();
        let to: SocketAddr = "127.0.0.1:4950".parse().unwrap();
        assert!(matches!(
            prober.send(to, &"x".repeat(65), 0),
            Err(ProbeError::BadTarget(_))
        ));
        assert!(matches!(
            prober.send(to, "a\nb", 0),
            Err(ProbeError::BadTarget(_))
        ));
        assert!(matches!(
            prober.send("127.0.0.1:0".parse().unwrap(), "", 0),
            Err(ProbeError::BadTarget(_))
        ));
        assert_eq!(prober.in_flight(), 0);
    }
}
