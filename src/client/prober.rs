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
//!
//! A probe sealed with a key completes only with an answer that authenticates with that key;
//! nothing else ends it early (see `keyed.rs`, the state machine every probe in flight runs):
//! at its deadline it fails naming what came instead. Half-way through its timeout a keyed
//! probe still without a valid answer sends one unsealed diagnostic PROBE; those half-way
//! events share the deadlines heap, so [`Prober::next_timeout`] counts them too: the
//! diagnostic is sent by the first `receive` at or after half-way, and not at all if that call
//! comes after the probe's deadline.
//!
//! Datagrams that carry no nonce (not lbagent protocol) and ICMP errors that quote none are
//! about the probes in flight to their source: an index by target finds them without a scan,
//! so a flood of junk at the prober's port costs a hash lookup per datagram.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::icmp::{self, Family};
use std::sync::Arc;

use super::answer::{answer_nonce, io_error};
use super::keyed::{Exchange, Step};
use super::push::{PushRead, Pushes};
use super::{Answer, ProbeError, ProbeOptions, build_probe, check_service};
use crate::keys::Key;
use crate::proto::wire;

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
    /// Probes sent (by `send` and `send_keyed`; diagnostics are not counted here).
    pub sent: u64,
    /// Unsealed diagnostic PROBEs sent half-way through the timeout of keyed probes that had
    /// no valid answer yet (see the module documentation).
    pub diagnostics: u64,
    /// Probes finished with an answer.
    pub answered: u64,
    /// Probes finished with an error other than a timeout (refused, not an agent, wrong key,
    /// unauthenticated, ...).
    pub failed: u64,
    /// Probes finished by their timeout.
    pub timed_out: u64,
    /// Datagrams that completed no probe: late answers to probes (or to their diagnostics)
    /// that had finished, answers from an address other than the one probed, and replies to a
    /// keyed probe that did not authenticate (its hints). An answer to the diagnostic of a
    /// probe in flight is not counted here: it is what the diagnostic is for. Pushed STATUSes
    /// that do not count (see `pushed`) are counted here too.
    pub ignored: u64,
    /// Changes pushed by agents that granted a subscription (`ProbeOptions::subscribe`), each
    /// delivered as a completion whose answer says `pushed`.
    pub pushed: u64,
}

struct InFlight {
    token: u64,
    target: SocketAddr,
    exchange: Exchange,
}

/// What an entry of the deadlines heap stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Half the timeout of a keyed probe: send its diagnostic if it still has no valid answer.
    Diagnose,
    /// The timeout: the probe completes as `WrongKey` or `Timeout`.
    Expire,
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
    /// The nonces of the diagnostics sent for probes in flight, with their probes' nonces.
    diagnostics: HashMap<u64, u64>,
    /// The nonces of the probes in flight to each target, oldest first. Entries left empty
    /// are kept (no allocation per probe to a known target) and pruned when they outnumber
    /// the probes in flight.
    by_target: HashMap<SocketAddr, Vec<u64>>,
    /// When each probe in flight times out and, for keyed probes, when its diagnostic is due.
    /// Entries of probes that finished early stay until they come up and are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    nonces: Nonces,
    request: Box<[u8; wire::PROBE_MAX_LEN]>,
    buf: Box<[u8; 2048]>,
    control: Vec<u8>,
    icmp_errors: Vec<(SocketAddr, i32, Option<u64>)>,
    /// An ICMP error was reported by a `send` or `recv`: the error queue has something to
    /// read. (Every queued error is reported once that way, so the queue is read only then.)
    icmp_pending: bool,
    /// The subscriptions agents granted (with `ProbeOptions::subscribe`).
    pushes: Pushes,
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
            diagnostics: HashMap::new(),
            by_target: HashMap::new(),
            deadlines: BinaryHeap::new(),
            nonces: Nonces::new(),
            request: Box::new([0; wire::PROBE_MAX_LEN]),
            buf: Box::new([0; 2048]),
            control: icmp::control_buffer(),
            icmp_errors: Vec::new(),
            icmp_pending: false,
            pushes: Pushes::default(),
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
    /// key per target. Only answers that authenticate with that key complete the probe; with a
    /// key nothing else ends it before its timeout. If no valid answer has come by half the
    /// timeout, one unsealed diagnostic PROBE is sent too (counted in
    /// [`ProberStats::diagnostics`], not in `sent`). At the timeout the probe completes as
    /// `WrongKey` if the agent answered the diagnostic (it is alive but dropped the sealed
    /// probe: unknown key id, another secret, clocks too far apart), `Unauthenticated` if
    /// other replies came, else `Timeout`.
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
        let Some(destination) = destination(self.family, target) else {
            return Err(ProbeError::BadTarget(format!(
                "{target}: IPv6 is not available on this host"
            )));
        };
        let nonce = self.fresh_nonce();
        let lease_ms = self
            .options
            .subscribe
            .map(|lease| u32::try_from(lease.as_millis()).unwrap_or(u32::MAX));
        let len = build_probe(
            nonce,
            service.as_bytes(),
            lease_ms,
            self.options.probe_len,
            key.as_deref(),
            &mut self.request[..],
        );
        send_datagram(
            &self.socket,
            &self.request[..len],
            destination,
            &mut self.icmp_pending,
        )
        .map_err(io_error)?;
        let sent = Instant::now();
        let exchange = Exchange::new(nonce, service.as_bytes(), key, sent, self.options.timeout);
        if let Some(at) = exchange.diagnostic_at() {
            self.deadlines.push(Reverse((at, nonce, Event::Diagnose)));
        }
        self.deadlines
            .push(Reverse((exchange.deadline(), nonce, Event::Expire)));
        self.in_flight.insert(
            nonce,
            InFlight {
                token,
                target,
                exchange,
            },
        );
        if self.by_target.len() > 2 * self.in_flight.len() + 1024 {
            self.by_target.retain(|_, nonces| !nonces.is_empty());
        }
        self.by_target.entry(target).or_default().push(nonce);
        self.stats.sent += 1;
        Ok(())
    }

    /// A random nonce used by no probe or diagnostic in flight.
    fn fresh_nonce(&mut self) -> u64 {
        loop {
            let nonce = self.nonces.next();
            if !self.in_flight.contains_key(&nonce) && !self.diagnostics.contains_key(&nonce) {
                return nonce;
            }
        }
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
        let now = Instant::now();
        self.on_deadlines(now, out);
        self.pushes.expire(now);
        out.len() - before
    }

    /// How long until the next probe times out or a keyed probe's diagnostic is due (zero
    /// when one already is); `None` when no probe is in flight. Wait no longer than this
    /// before calling `receive`, which also sends the diagnostics due.
    pub fn next_timeout(&mut self) -> Option<Duration> {
        while let Some(&Reverse((at, nonce, event))) = self.deadlines.peek() {
            if self.is_pending(nonce, event) {
                return Some(at.saturating_duration_since(Instant::now()));
            }
            // Finished before its deadline, or no diagnostic needed: drop the stale entry.
            self.deadlines.pop();
        }
        None
    }

    /// Whether a deadlines entry still has something to do.
    fn is_pending(&self, nonce: u64, event: Event) -> bool {
        self.in_flight.get(&nonce).is_some_and(|p| match event {
            Event::Expire => true,
            Event::Diagnose => p.exchange.diagnostic_at().is_some(),
        })
    }

    /// Probes sent and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> ProberStats {
        self.stats
    }

    /// Subscriptions agents granted whose lease has not ended (with
    /// `ProbeOptions::subscribe`).
    pub fn subscriptions(&self) -> usize {
        self.pushes.len()
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
        if let Some(d) = probe.exchange.diagnostic() {
            // Later answers to it are late answers: ignored.
            self.diagnostics.remove(&d);
        }
        if let Some(nonces) = self.by_target.get_mut(&probe.target) {
            nonces.retain(|n| *n != nonce);
        }
        match &result {
            Ok(answer) => {
                self.stats.answered += 1;
                if let Some(lease) = self.options.subscribe {
                    if answer.subscribed {
                        let subscribing = (probe.token, probe.target);
                        let key = probe.exchange.key().cloned();
                        let lease = (probe.exchange.sent(), lease);
                        self.pushes.granted(nonce, subscribing, key, answer, lease);
                    } else {
                        self.pushes.not_granted(probe.token);
                    }
                }
            }
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
        match self.pushes.take(datagram, from) {
            PushRead::NotAPush => {}
            PushRead::Ignored => {
                self.stats.ignored += 1;
                return;
            }
            PushRead::Accepted {
                token,
                target,
                answer,
            } => {
                self.stats.pushed += 1;
                out.push(Completion {
                    token,
                    target,
                    result: Ok(answer),
                });
                return;
            }
        }
        let now = Instant::now();
        // Which probe it is about: by the nonce it echoes (of a probe or of its diagnostic);
        // without one, the oldest probe in flight to its source.
        let nonce = match answer_nonce(datagram) {
            Some(n) => self.diagnostics.get(&n).copied().unwrap_or(n),
            None => match self.oldest_to(from) {
                Some(n) => n,
                None => {
                    self.stats.ignored += 1;
                    return;
                }
            },
        };
        let Some(probe) = self.in_flight.get_mut(&nonce).filter(|p| p.target == from) else {
            self.stats.ignored += 1;
            return;
        };
        let diagnostic_answer = probe.exchange.diagnostic().is_some()
            && answer_nonce(datagram) == probe.exchange.diagnostic();
        match probe.exchange.on_datagram(datagram, now) {
            Step::Done(result) => self.finish(nonce, result, out),
            Step::Wait if diagnostic_answer => {}
            Step::Wait => self.stats.ignored += 1,
        }
    }

    /// The probe in flight to `target` sent first.
    fn oldest_to(&self, target: SocketAddr) -> Option<u64> {
        self.by_target.get(&target)?.first().copied()
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
        let mut about = Vec::new();
        for &(destination, errno, nonce) in &errors {
            // An error caused by a diagnostic is about its probe.
            let nonce = nonce.map(|n| self.diagnostics.get(&n).copied().unwrap_or(n));
            about.clear();
            match nonce.filter(|n| {
                self.in_flight
                    .get(n)
                    .is_some_and(|p| p.target == destination)
            }) {
                Some(nonce) => about.push(nonce),
                // No usable quote: the error stands for every probe in flight to that address.
                None => about.extend(self.by_target.get(&destination).into_iter().flatten()),
            }
            for &nonce in &about {
                let Some(probe) = self.in_flight.get_mut(&nonce) else {
                    continue;
                };
                if let Step::Done(result) = probe.exchange.on_icmp(errno) {
                    self.finish(nonce, result, out);
                }
            }
        }
        self.icmp_errors = errors;
    }

    /// Sends the diagnostics due and expires the probes whose timeout has passed.
    fn on_deadlines(&mut self, now: Instant, out: &mut Vec<Completion>) {
        while let Some(&Reverse((at, nonce, event))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(probe) = self.in_flight.get_mut(&nonce) else {
                continue; // finished early
            };
            match event {
                // Too late to be of use if the probe expires in this same call.
                Event::Diagnose if probe.exchange.diagnostic_due(now) => {
                    self.send_diagnostic(nonce);
                }
                Event::Diagnose => {}
                Event::Expire => {
                    let error = probe.exchange.expire();
                    self.finish(nonce, Err(error), out);
                }
            }
        }
    }

    /// Sends the unsealed diagnostic PROBE of the keyed probe `nonce` (in flight). A failure
    /// to send is not the probe's result: it then just completes as it would without one.
    fn send_diagnostic(&mut self, nonce: u64) {
        let diagnostic = self.fresh_nonce();
        let Some(probe) = self.in_flight.get_mut(&nonce) else {
            return;
        };
        let len = probe.exchange.write_diagnostic(
            diagnostic,
            self.options.probe_len,
            &mut self.request[..],
        );
        let Some(to) = destination(self.family, probe.target) else {
            return; // not sent in the first place
        };
        if send_datagram(
            &self.socket,
            &self.request[..len],
            to,
            &mut self.icmp_pending,
        )
        .is_ok()
        {
            probe.exchange.diagnostic_sent(diagnostic);
            self.diagnostics.insert(diagnostic, nonce);
            self.stats.diagnostics += 1;
        }
    }
}

/// Where to send to reach `target` through a socket of `family`; `None` for an IPv6 target
/// on a host without IPv6.
fn destination(family: Family, target: SocketAddr) -> Option<SocketAddr> {
    match (family, target) {
        (Family::DualStack, SocketAddr::V4(v4)) => Some(SocketAddr::new(
            IpAddr::V6(v4.ip().to_ipv6_mapped()),
            v4.port(),
        )),
        (Family::V4Only, SocketAddr::V6(_)) => None,
        _ => Some(target),
    }
}

/// Sends one datagram, again after EINTR or an ICMP error reported for an earlier one
/// (which sets `icmp_pending`: the error is also queued and read by `receive`).
fn send_datagram(
    socket: &UdpSocket,
    datagram: &[u8],
    to: SocketAddr,
    icmp_pending: &mut bool,
) -> io::Result<()> {
    let mut retries = 0;
    loop {
        match socket.send_to(datagram, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if icmp::is_pending_icmp(&e) && retries < 8 => {
                *icmp_pending = true;
                retries += 1;
            }
            Err(e) => return Err(e),
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

    /// A fake agent: reads the next PROBE (calling `receive` meanwhile, so that diagnostics
    /// due are sent), returning its flags, nonce, service, length and source.
    fn next_probe(
        prober: &mut Prober,
        fake: &UdpSocket,
        out: &mut Vec<Completion>,
    ) -> (u16, u64, Vec<u8>, usize, SocketAddr) {
        fake.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            prober.receive(out);
            if let Ok((n, from)) = fake.recv_from(&mut buf) {
                let Ok(wire::Request::Probe(p)) = wire::decode_request(&buf[..n]) else {
                    panic!("not a PROBE: {:?}", &buf[..n]);
                };
                return (p.flags, p.nonce, p.service.to_vec(), p.len, from);
            }
        }
        panic!("no PROBE came");
    }

    /// A STATUS (UP) for `nonce`, sealed with `key` if given, sent from `from` to `to`.
    fn answer(from: &UdpSocket, to: SocketAddr, nonce: u64, key: Option<&Key>) {
        let datagram =
            crate::client::test_datagrams::status(&crate::client::test_datagrams::up(nonce), key);
        from.send_to(&datagram, to).unwrap();
    }

    /// Receives (and drops) until `ignored` datagrams are counted, or 10 s have passed.
    fn receive_until_ignored(prober: &mut Prober, ignored: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while prober.stats().ignored < ignored && Instant::now() < deadline {
            prober.receive(&mut Vec::new());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn keyed_prober(timeout_ms: u64) -> (Prober, Arc<Key>) {
        let key = Arc::new(Key::new(7, &[0x5a; 32]).unwrap());
        let prober = Prober::new(ProbeOptions {
            timeout: Duration::from_millis(timeout_ms),
            ..ProbeOptions::default()
        })
        .unwrap();
        (prober, key)
    }

    #[test]
    fn diagnostic_is_unsealed_fresh_and_only_its_target_counts() {
        let (mut prober, key) = keyed_prober(400);
        let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = fake.local_addr().unwrap();
        let mut out = Vec::new();
        prober.send_keyed(to, "game", 1, Some(key)).unwrap();
        // The event loop is woken for the diagnostic, not only for the timeout.
        assert!(prober.next_timeout().unwrap() <= Duration::from_millis(200));
        let (flags, sealed, service, _, _) = next_probe(&mut prober, &fake, &mut out);
        assert_eq!(
            (flags & wire::FLAG_AUTH, service.as_slice()),
            (wire::FLAG_AUTH, &b"game"[..])
        );
        // Dropped, like an agent with another key does. Half-way comes the diagnostic.
        let (flags, diagnostic, service, len, from) = next_probe(&mut prober, &fake, &mut out);
        assert_eq!((flags, service.as_slice()), (0, &b"game"[..]));
        assert_eq!(len, prober.options().probe_len.max(17 + 4));
        assert_ne!(diagnostic, sealed);
        assert_eq!(prober.stats().diagnostics, 1);
        assert_eq!(prober.stats().sent, 1);
        // An answer to it from another address does not count.
        answer(&stranger, from, diagnostic, None);
        let out = wait_all(&mut prober, 1);
        assert!(
            matches!(out[0].result, Err(ProbeError::Timeout(_))),
            "{out:?}"
        );
        assert_eq!(prober.stats().ignored, 1);
        // Late answers, to the diagnostic or the probe, are ignored.
        answer(&fake, from, diagnostic, None);
        answer(&fake, from, sealed, None);
        receive_until_ignored(&mut prober, 3);
        assert_eq!(
            prober.stats(),
            ProberStats {
                sent: 1,
                diagnostics: 1,
                timed_out: 1,
                ignored: 3,
                ..ProberStats::default()
            }
        );
        assert_eq!(prober.next_timeout(), None);
    }

    #[test]
    fn answered_diagnostic_is_a_wrong_key_at_the_deadline_and_a_valid_answer_wins() {
        let (mut prober, key) = keyed_prober(400);
        let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = fake.local_addr().unwrap();
        let mut out = Vec::new();
        // The agent answers only the unsealed diagnostic: a wrong key once the deadline has
        // passed (an answer to the diagnostic is unauthenticated: it ends nothing early).
        prober.send_keyed(to, "", 1, Some(key.clone())).unwrap();
        let _ = next_probe(&mut prober, &fake, &mut out);
        let (_, diagnostic, _, _, from) = next_probe(&mut prober, &fake, &mut out);
        answer(&fake, from, diagnostic, None);
        out.extend(wait_all(&mut prober, 1));
        let Err(ProbeError::WrongKey(why)) = &out[0].result else {
            panic!("{out:?}");
        };
        assert!(why.contains("dropped the sealed one"), "{why}");
        assert_eq!(
            prober.stats().ignored,
            0,
            "the diagnostic's answer is not ignored"
        );
        // A valid sealed answer that comes before the diagnostic's answer (a slow agent
        // answering in order) completes the probe; the diagnostic's answer is then late.
        out.clear();
        prober.send_keyed(to, "", 2, Some(key.clone())).unwrap();
        let (_, sealed, _, _, _) = next_probe(&mut prober, &fake, &mut out);
        let (_, diagnostic, _, _, from) = next_probe(&mut prober, &fake, &mut out);
        answer(&fake, from, sealed, Some(&key));
        answer(&fake, from, diagnostic, None);
        out.extend(wait_all(&mut prober, 1));
        assert!(out[0].result.is_ok(), "{out:?}");
        receive_until_ignored(&mut prober, 1);
        assert_eq!(
            prober.stats(),
            ProberStats {
                sent: 2,
                diagnostics: 2,
                answered: 1,
                failed: 1,
                ignored: 1,
                ..ProberStats::default()
            }
        );
        // Without a key there is no diagnostic.
        prober.send_keyed(to, "", 3, None).unwrap();
        let out = wait_all(&mut prober, 1);
        assert!(
            matches!(out[0].result, Err(ProbeError::Timeout(_))),
            "{out:?}"
        );
        assert_eq!(prober.stats().diagnostics, 2);
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
