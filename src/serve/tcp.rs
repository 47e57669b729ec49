//! The TCP side of the monitor thread: HAProxy's agent-check (`tcp_agent=`) and the HTTP
//! health endpoint (`http=`), served by the same loop and from the same status board as the UDP
//! answers, on non-blocking sockets. Nothing here waits: every step reads, writes or accepts
//! until the socket would block, then returns to the loop.
//!
//! Bounds, so that no client can hold the thread or its memory:
//! - at most `MAX_CONNECTIONS` open connections per kind; more are accepted and closed at
//!   once (`conn_dropped_limit`), so a flood of HTTP clients cannot starve HAProxy's agent;
//! - at most `conn_per_source` of them from one source (an IPv4 address, an IPv6 prefix of
//!   `ipv6_source_prefix` bits; `conn_dropped_source_limit`): a TCP source cannot be forged,
//!   so one client holding idle connections cannot take every slot from the real checkers;
//! - once half the slots of a kind are taken, idle connections of that kind (waiting for a
//!   request, or lingering after their answer) get `SCARCE_WAIT` at most, not their usual
//!   deadline;
//! - a deadline per connection (`AGENT_SEND_WAIT`, `REQUEST_TIMEOUT`, `WRITE_TIMEOUT`,
//!   `LINGER`, in `config.rs`); reads go into a fixed buffer;
//! - accepting is done in batches of [`ACCEPT_BATCH`], then the UDP sockets get their turn.
//!
//! While no connection is open the loop sleeps without a timeout (no periodic wake-ups); only
//! open connections set a timer. Connection slots and their buffers are allocated the first
//! time they are needed and then reused: no allocation per connection in steady state.
//!
//! Closing: closing a socket that still has unread input sends a reset, which can destroy
//! the answer before the peer reads it. So once the answer is written the agent reads once:
//! when nothing is waiting (what HAProxy, curl and other checkers send is the request only)
//! it closes at once, the answer then followed by a FIN; otherwise (the peer sent more) it
//! shuts its side down and reads, discarding, until the peer closes or `LINGER` passes. The
//! common exchange thus costs accept, write, read and close, with no poller registration.
//!
//! Fork: the listeners are shared with the host-facing handle (like the UDP sockets), so a
//! child that takes the agent over serves them, and a forked worker closes its copies. The
//! descriptors of open connections are published in [`ConnectionFds`] so that a forked child,
//! where the thread that owns them does not exist, can close its copies too.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::status::{ProberKind, Target};

use super::Sockets;
use super::metrics::Metrics;
use crate::config::{
    AGENT_SEND_WAIT, LINGER, MAX_CONNECTIONS, REQUEST_TIMEOUT, SCARCE_WAIT, WRITE_TIMEOUT,
};
use crate::counters::Counter;
use crate::error::Error;
use crate::guard::limit::source_key;
use crate::proto::{agent_check, http};
use crate::shared::Shared;
use crate::sys::clock;

/// How long a `/metrics` answer may take to be written.
const METRICS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted per listener before the loop serves other sockets.
const ACCEPT_BATCH: usize = 16;
/// Bytes discarded per readiness event while lingering; a peer that sends more is reset.
const LINGER_DISCARD: usize = 4 * BUFFER;
/// A connection's buffer: the request, then the part of the answer not yet written.
const BUFFER: usize = http::MAX_REQUEST;

/// Tokens: UDP sockets use `0..MAX_LISTEN`, the waker `usize::MAX`.
pub(crate) const LISTENER_TOKENS: usize = 1 << 20;
pub(crate) const CONNECTION_TOKENS: usize = 1 << 21;

/// What a TCP listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// HAProxy agent-check: one text line, then close.
    Agent,
    /// HTTP health checks.
    Http,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Agent => 0,
            Kind::Http => 1,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Agent => "tcp_agent",
            Kind::Http => "http",
        }
    }
}

/// One bound TCP listener.
pub(crate) struct StreamListener {
    listener: TcpListener,
    kind: Kind,
}

impl StreamListener {
    /// Binds and listens on `addr` (IPv6 sockets are IPv6-only, like the UDP ones).
    pub(crate) fn bind(kind: Kind, addr: SocketAddr) -> Result<StreamListener, Error> {
        let bind_error = |source| Error::BindTcp {
            key: kind.key(),
            addr,
            source,
        };
        // socket2 creates it close-on-exec.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(bind_error)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(bind_error)?;
        }
        // The agent closes first, leaving TIME_WAIT sockets: a restarted agent must still bind.
        socket.set_reuse_address(true).map_err(bind_error)?;
        socket.bind(&addr.into()).map_err(bind_error)?;
        socket.listen(128).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        Ok(StreamListener {
            listener: TcpListener::from_std(socket.into()),
            kind,
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The socket's descriptor (to register it, and to close a forked worker's copy).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// The descriptors of the open connections, one per connection slot (-1: none). The monitor
/// thread records a descriptor once accepted and forgets it before closing it, so a forked
/// child that reads the table finds only descriptors that were open when it was forked (a
/// connection accepted or closed at that very moment may be missed: a leaked copy, never a
/// wrong close).
pub(crate) struct ConnectionFds([AtomicI32; 2 * MAX_CONNECTIONS]);

impl ConnectionFds {
    fn new() -> ConnectionFds {
        ConnectionFds(std::array::from_fn(|_| AtomicI32::new(-1)))
    }

    fn set(&self, slot: usize, fd: RawFd) {
        if let Some(s) = self.0.get(slot) {
            s.store(fd, Ordering::SeqCst);
        }
    }

    /// The descriptors recorded now.
    pub(crate) fn open(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.0
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .filter(|fd| *fd >= 0)
    }
}

enum Phase {
    /// Reading the request: an optional `agent-send` line, or an HTTP request head.
    Reading,
    /// Writing the answer: `buf[sent..len]` is left; `counter` counts it once all is sent.
    Writing {
        sent: usize,
        len: usize,
        counter: Counter,
    },
    /// The answer is sent and our side shut down: reading until the peer closes.
    Lingering,
}

struct Connection {
    stream: TcpStream,
    /// Who asked (recorded as a prober when answered).
    peer: IpAddr,
    kind: Kind,
    /// Its source (`guard::limit::source_key`), for the per-source share.
    source: u128,
    phase: Phase,
    deadline: Instant,
    received: usize,
    /// The peer shut its side down while we were reading.
    peer_closed: bool,
    /// Agent-check: answer with what was read so far, without waiting for more.
    answer_now: bool,
    /// Writing a `/metrics` answer from this buffer of `Streams::metrics`, not `Slot::buf`.
    metrics: Option<usize>,
}

struct Slot {
    connection: Option<Connection>,
    buf: Box<[u8; BUFFER]>,
}

/// What `progress` decided for a connection.
enum Next {
    /// Wait for the next readiness event or the deadline.
    Wait,
    /// Close it, counting this outcome (None: already counted).
    Close(Option<Counter>),
}

/// The TCP listeners (`Sockets::tcp`) and their open connections.
pub(crate) struct Streams {
    sockets: Arc<Sockets>,
    /// Listeners whose last batch did not empty the accept queue.
    pending_accept: Vec<bool>,
    slots: Vec<Slot>,
    open: [usize; 2],
    /// Answers are built here, then copied into the connection's buffer.
    scratch: Box<[u8; http::MAX_RESPONSE]>,
    agent_check: AgentCheckOptions,
    shares: ConnShares,
    fds: Arc<ConnectionFds>,
    /// `GET /metrics` answers (`metrics=on`).
    metrics: Metrics,
}

/// How connection slots are shared between sources (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnShares {
    /// Connections one source may hold open per kind.
    pub per_source: usize,
    /// IPv6 sources sharing this many leading bits are one source.
    pub ipv6_prefix: u8,
}

/// How the agent-check line is answered (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AgentCheckOptions {
    /// Whether an `agent-send` line is worth waiting for (`services=` is not empty).
    pub wait_for_agent_send: bool,
    /// Whether the line carries `maxconn:CAPACITY` (`agent_maxconn=on`).
    pub maxconn: bool,
}

impl Streams {
    pub(crate) fn new(
        sockets: Arc<Sockets>,
        agent_check: AgentCheckOptions,
        shares: ConnShares,
        metrics_on: bool,
    ) -> Streams {
        Streams {
            pending_accept: vec![false; sockets.tcp.len()],
            sockets,
            slots: Vec::new(),
            open: [0; 2],
            scratch: Box::new([0; http::MAX_RESPONSE]),
            agent_check,
            shares,
            fds: Arc::new(ConnectionFds::new()),
            metrics: Metrics::new(metrics_on),
        }
    }

    /// Registers the listeners with the poller.
    pub(crate) fn register(&self, registry: &Registry) -> io::Result<()> {
        for (i, l) in self.sockets.tcp.iter().enumerate() {
            registry.register(
                &mut SourceFd(&l.raw_fd()),
                Token(LISTENER_TOKENS + i),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// The table of open connection descriptors (for a forked child).
    pub(crate) fn connection_fds(&self) -> Arc<ConnectionFds> {
        self.fds.clone()
    }

    /// How long the loop may sleep: for ever while nothing is open or pending.
    pub(crate) fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.pending_accept.iter().any(|p| *p) {
            return Some(Duration::ZERO);
        }
        self.slots
            .iter()
            .filter_map(|s| s.connection.as_ref())
            .map(|c| c.deadline)
            .min()
            .map(|d| d.saturating_duration_since(now))
    }

    /// Handles a readiness event for one of our tokens.
    pub(crate) fn ready(&mut self, token: Token, shared: &Shared, registry: &Registry) {
        let t = token.0;
        if (LISTENER_TOKENS..CONNECTION_TOKENS).contains(&t) {
            self.accept(t - LISTENER_TOKENS, shared, registry);
        } else if t >= CONNECTION_TOKENS {
            self.progress_guarded(t - CONNECTION_TOKENS, shared, Instant::now());
        }
    }

    /// After the events of one loop turn: continues unfinished accept batches and closes
    /// connections whose deadline passed.
    pub(crate) fn after_events(&mut self, shared: &Shared, registry: &Registry) {
        for i in 0..self.pending_accept.len() {
            if self.pending_accept[i] {
                self.accept(i, shared, registry);
            }
        }
        if self.open == [0, 0] {
            return;
        }
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let expired = self.slots[index]
                .connection
                .as_ref()
                .is_some_and(|c| c.deadline <= now);
            if expired {
                self.expire(index, shared, now);
            }
        }
    }

    fn accept(&mut self, index: usize, shared: &Shared, registry: &Registry) {
        let Some(kind) = self.sockets.tcp.get(index).map(|l| l.kind) else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            match self.sockets.tcp[index].listener.accept() {
                Ok((stream, peer)) => {
                    shared.counters.add(Counter::ConnAccepted);
                    self.admit(stream, peer, kind, shared, registry);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                // WouldBlock: the queue is empty. Anything else (out of descriptors): wait for
                // the next connection rather than spin.
                Err(_) => {
                    self.pending_accept[index] = false;
                    return;
                }
            }
        }
        self.pending_accept[index] = true;
    }

    fn admit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        kind: Kind,
        shared: &Shared,
        registry: &Registry,
    ) {
        if !shared.policy.allow.admits(peer.ip()) {
            shared.counters.add(Counter::ConnDroppedNotAllowed);
            return;
        }
        let source = source_key(peer.ip(), self.shares.ipv6_prefix);
        let held = self
            .slots
            .iter()
            .filter_map(|s| s.connection.as_ref())
            .filter(|c| c.kind == kind && c.source == source)
            .count();
        if held >= self.shares.per_source {
            shared.counters.add(Counter::ConnDroppedSourceLimit);
            return;
        }
        if self.open[kind.index()] >= MAX_CONNECTIONS {
            shared.counters.add(Counter::ConnDroppedLimit);
            return;
        }
        let index = match self.slots.iter().position(|s| s.connection.is_none()) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    connection: None,
                    buf: Box::new([0; BUFFER]),
                });
                self.slots.len() - 1
            }
        };
        self.fds.set(index, stream.as_raw_fd());
        let now = Instant::now();
        let wait = match kind {
            Kind::Agent => AGENT_SEND_WAIT,
            Kind::Http => REQUEST_TIMEOUT,
        };
        self.slots[index].connection = Some(Connection {
            stream,
            peer: peer.ip(),
            kind,
            source,
            phase: Phase::Reading,
            deadline: now + wait,
            received: 0,
            peer_closed: false,
            metrics: None,
            // Without services there is nothing an `agent-send` line could ask: answer now.
            answer_now: kind == Kind::Agent && !self.agent_check.wait_for_agent_send,
        });
        self.open[kind.index()] += 1;
        if self.open[kind.index()] >= MAX_CONNECTIONS / 2 {
            self.hurry_idle(kind, now);
        }
        // Answer first (the request is often there already, and an agent-check without
        // services needs none), then register for what is left: the registration is then off
        // the path of the answer. Registering reports readiness that came meanwhile, so no
        // event is missed.
        if !self.progress_guarded(index, shared, now) {
            return;
        }
        let Some(conn) = self.slots[index].connection.as_mut() else {
            return;
        };
        let token = Token(CONNECTION_TOKENS + index);
        // Once answered, only the peer's close is awaited: asking for WRITABLE too would bring
        // one more wake-up at once, since a new socket is writable.
        let interest = match conn.phase {
            Phase::Lingering => Interest::READABLE,
            _ => Interest::READABLE | Interest::WRITABLE,
        };
        if registry
            .register(&mut conn.stream, token, interest)
            .is_err()
        {
            let answered = matches!(conn.phase, Phase::Lingering);
            self.close(index, (!answered).then_some(Counter::ConnFailed), shared);
        }
    }

    /// Slots are scarce: idle connections of `kind` (waiting for a request, or lingering
    /// after their answer) get `SCARCE_WAIT` at most from `now`.
    fn hurry_idle(&mut self, kind: Kind, now: Instant) {
        let soon = now + SCARCE_WAIT;
        for conn in self.slots.iter_mut().filter_map(|s| s.connection.as_mut()) {
            if conn.kind == kind && !matches!(conn.phase, Phase::Writing { .. }) {
                conn.deadline = conn.deadline.min(soon);
            }
        }
    }

    /// Moves a connection on as far as its socket allows; a panic closes only this connection
    /// and is reported like one while answering a datagram. Returns whether it is still open.
    fn progress_guarded(&mut self, index: usize, shared: &Shared, now: Instant) -> bool {
        let result = catch_unwind(AssertUnwindSafe(|| self.progress(index, shared, now)));
        let next = result.unwrap_or_else(|_| {
            shared.fault(format_args!("serving a TCP connection"));
            Next::Close(Some(Counter::ConnFailed))
        });
        if let Next::Close(counter) = next {
            self.close(index, counter, shared);
            return false;
        }
        true
    }

    fn progress(&mut self, index: usize, shared: &Shared, now: Instant) -> Next {
        loop {
            let Some(slot) = self.slots.get_mut(index) else {
                return Next::Wait;
            };
            let Some(conn) = slot.connection.as_mut() else {
                return Next::Wait;
            };
            match conn.phase {
                Phase::Reading => {
                    shared.maybe_inject_fault();
                    let limit = match conn.kind {
                        Kind::Agent => agent_check::MAX_REQUEST,
                        Kind::Http => BUFFER,
                    };
                    // Without services an agent-check needs no request: answer at once, with no
                    // read that would only say WouldBlock.
                    let nothing_to_read = conn.answer_now && !self.agent_check.wait_for_agent_send;
                    // Edge-triggered: read until the socket is empty (or the buffer full), or
                    // until the request is whole: what follows it is read (and discarded) once
                    // the answer is written, so no readiness is lost, and the read that would
                    // only say WouldBlock is saved.
                    while conn.received < limit && !conn.peer_closed && !nothing_to_read {
                        match read_some(&mut conn.stream, &mut slot.buf[conn.received..limit]) {
                            Ok(0) => conn.peer_closed = true,
                            Ok(n) => {
                                conn.received += n;
                                if request_complete(conn.kind, &slot.buf[..conn.received]) {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return Next::Close(Some(Counter::ConnFailed)),
                        }
                    }
                    let full = conn.received == limit;
                    let (kind, peer_closed) = (conn.kind, conn.peer_closed);
                    match kind {
                        Kind::Agent => {
                            let line_ended = request_complete(kind, &slot.buf[..conn.received]);
                            if !(line_ended || full || peer_closed || conn.answer_now) {
                                return Next::Wait;
                            }
                            self.answer_agent(index, shared, now);
                        }
                        Kind::Http => {
                            let board = &shared.board;
                            let peer = conn.peer;
                            let answer = http::respond(
                                &slot.buf[..conn.received],
                                full,
                                |name| {
                                    let (target, now) = (board.target(name), clock::now_ms());
                                    let status = board.status(target, now);
                                    board.record_prober(
                                        peer,
                                        ProberKind::Http,
                                        target,
                                        &status,
                                        now,
                                    );
                                    status
                                },
                                shared.instance_id,
                                &mut self.scratch,
                            );
                            match answer {
                                http::Answer::Incomplete if peer_closed => {
                                    return Next::Close(Some(Counter::ConnFailed));
                                }
                                http::Answer::Incomplete => return Next::Wait,
                                http::Answer::Reply { len, counter } => {
                                    self.start_writing(index, len, counter, now);
                                }
                                http::Answer::Metrics { head } => {
                                    self.answer_metrics(index, head, shared, now);
                                }
                            }
                        }
                    }
                }
                Phase::Writing { sent, len, counter } => {
                    let data = match conn.metrics {
                        Some(i) => self.metrics.bytes(i),
                        None => &slot.buf[..],
                    };
                    match conn.stream.write(&data[sent..len]) {
                        Ok(0) => return Next::Close(Some(Counter::ConnFailed)),
                        Ok(n) if sent + n < len => {
                            conn.phase = Phase::Writing {
                                sent: sent + n,
                                len,
                                counter,
                            }
                        }
                        Ok(_) => {
                            shared.counters.add(counter);
                            if let Some(buffer) = conn.metrics.take() {
                                self.metrics.release(buffer);
                            }
                            if conn.peer_closed {
                                return Next::Close(None);
                            }
                            // Nothing unread (or the peer has closed): close now, safely.
                            match read_some(&mut conn.stream, &mut slot.buf[..]) {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    return Next::Close(None);
                                }
                                Ok(0) | Err(_) => return Next::Close(None),
                                // More input: linger until the peer closes.
                                Ok(_) => {}
                            }
                            if conn.stream.shutdown(Shutdown::Write).is_err() {
                                return Next::Close(None);
                            }
                            conn.phase = Phase::Lingering;
                            conn.deadline = now + LINGER;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close(Some(Counter::ConnFailed)),
                    }
                }
                Phase::Lingering => {
                    let mut discarded = 0;
                    while discarded < LINGER_DISCARD {
                        match read_some(&mut conn.stream, &mut slot.buf[..]) {
                            Ok(0) => return Next::Close(None),
                            Ok(n) => discarded += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Next::Wait;
                            }
                            Err(_) => return Next::Close(None),
                        }
                    }
                    // A peer that keeps sending after the answer gets reset.
                    return Next::Close(None);
                }
            }
        }
    }

    /// Builds the agent-check line for the request read so far and starts writing it (called
    /// only from `progress`, under its panic guard).
    fn answer_agent(&mut self, index: usize, shared: &Shared, now: Instant) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let Some(conn) = slot.connection.as_ref() else {
            return;
        };
        let board = &shared.board;
        let target = match agent_check::parse_request(&slot.buf[..conn.received]) {
            agent_check::Request::Server => Target::Server,
            // A name that is not configured gets the unknown-service answer.
            agent_check::Request::Service(name) => board.target(name),
        };
        let clock_ms = clock::now_ms();
        let status = board.status(target, clock_ms);
        board.record_prober(conn.peer, ProberKind::AgentCheck, target, &status, clock_ms);
        // TCP has no request-length limit: the whole line, ending in "\n" (HAProxy ignores a
        // line without an end).
        let len =
            agent_check::write_answer(&status, self.agent_check.maxconn, &mut self.scratch[..]);
        self.start_writing(index, len, Counter::AnsweredAgent, now);
    }

    /// Answers `GET /metrics` (HEAD: `head`): the exposition from a metrics buffer, 503 when
    /// every one is in use, 404 with `metrics=off` (called only from `progress`).
    fn answer_metrics(&mut self, index: usize, head: bool, shared: &Shared, now: Instant) {
        let answer = if self.metrics.is_on() {
            self.metrics.answer(head, shared)
        } else {
            let http::Answer::Reply { len, counter } = http::not_found(&mut self.scratch, head)
            else {
                return;
            };
            self.start_writing(index, len, counter, now);
            return;
        };
        let Some((buffer, start, end)) = answer else {
            if let http::Answer::Reply { len, counter } = http::metrics_busy(&mut self.scratch) {
                self.start_writing(index, len, counter, now);
            }
            return;
        };
        let Some(conn) = self
            .slots
            .get_mut(index)
            .and_then(|s| s.connection.as_mut())
        else {
            self.metrics.release(buffer);
            return;
        };
        conn.metrics = Some(buffer);
        conn.phase = Phase::Writing {
            sent: start,
            len: end,
            counter: Counter::AnsweredHttp,
        };
        // A scrape is larger than a health answer: more time to write it.
        conn.deadline = now + METRICS_WRITE_TIMEOUT;
    }

    /// Copies `scratch[..len]` into the connection's buffer and switches it to writing.
    fn start_writing(&mut self, index: usize, len: usize, counter: Counter, now: Instant) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Some(conn) = slot.connection.as_mut() else {
            return;
        };
        let len = len.min(BUFFER).min(self.scratch.len());
        slot.buf[..len].copy_from_slice(&self.scratch[..len]);
        conn.phase = Phase::Writing {
            sent: 0,
            len,
            counter,
        };
        conn.deadline = now + WRITE_TIMEOUT;
    }

    fn expire(&mut self, index: usize, shared: &Shared, now: Instant) {
        let Some(conn) = self.slots[index].connection.as_mut() else {
            return;
        };
        match (&conn.phase, conn.kind) {
            // No `agent-send` line in time: answer about the whole server.
            (Phase::Reading, Kind::Agent) => {
                conn.answer_now = true;
                self.progress_guarded(index, shared, now);
            }
            (Phase::Reading, Kind::Http) | (Phase::Writing { .. }, _) => {
                self.close(index, Some(Counter::ConnTimedOut), shared);
            }
            (Phase::Lingering, _) => self.close(index, None, shared),
        }
    }

    fn close(&mut self, index: usize, counter: Option<Counter>, shared: &Shared) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        // Dropping the stream closes it, which also removes it from the poller. Its descriptor
        // leaves the table first.
        self.fds.set(index, -1);
        if let Some(conn) = slot.connection.take() {
            if let Some(buffer) = conn.metrics {
                self.metrics.release(buffer);
            }
            self.open[conn.kind.index()] -= 1;
            if let Some(counter) = counter {
                shared.counters.add(counter);
            }
        }
    }

    /// At stop: agent connections still waiting get one try at the answer (which now says
    /// STOPPING), then every connection and listener is closed.
    pub(crate) fn close_all(&mut self, shared: &Shared) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if let Some(conn) = self.slots[index].connection.as_mut() {
                if conn.kind == Kind::Agent && matches!(conn.phase, Phase::Reading) {
                    conn.answer_now = true;
                    self.progress_guarded(index, shared, now);
                }
            }
            let unanswered = self.slots[index]
                .connection
                .as_ref()
                .is_some_and(|c| !matches!(c.phase, Phase::Lingering));
            let counter = unanswered.then_some(Counter::ConnFailed);
            self.close(index, counter, shared);
        }
    }
}

/// Whether `request` holds a whole request: an agent-check line, or an HTTP request head
/// (ended by an empty line; httparse accepts bare LF line ends too).
fn request_complete(kind: Kind, request: &[u8]) -> bool {
    match kind {
        Kind::Agent => agent_check::line_complete(request),
        Kind::Http => {
            request.windows(3).any(|w| w == b"\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
        }
    }
}

/// One read, retrying on EINTR.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, request_complete};

    #[test]
    fn a_request_is_whole_at_its_end_and_not_before() {
        assert!(!request_complete(Kind::Agent, b""));
        assert!(!request_complete(Kind::Agent, b"game"));
        assert!(request_complete(Kind::Agent, b"game\n"));
        assert!(request_complete(Kind::Agent, b"game\r"));
        assert!(!request_complete(
            Kind::Http,
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
        ));
        assert!(request_complete(
            Kind::Http,
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(request_complete(Kind::Http, b"GET /health HTTP/1.0\n\n"));
        assert!(!request_complete(Kind::Http, b"GET /health HTTP/1.0\r\n"));
    }
}
