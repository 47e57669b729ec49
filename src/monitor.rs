//! The monitor thread: waits for datagrams on the listen sockets and answers each one from the
//! status board. It never calls or waits on host code, allocates nothing per datagram, and
//! sleeps in `epoll_wait` with no timeout: no probes, no wake-ups. `stop` wakes it through a
//! datagram socket pair (not `mio::Waker`, so that a forked child can close both ends; not a
//! pipe, whose write could raise SIGPIPE in the host once the thread has gone). The same loop
//! serves the TCP agent-check and HTTP connections (`streams.rs`), which set a timer only while
//! a connection is open.
//!
//! Socket I/O goes through `quinn-udp`, which receives in batches (`recvmmsg`) together with the
//! address each datagram was sent to (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and sends the answer
//! from that same address. keepalived `connect()`s its checker socket and ignores answers from
//! any other address, so this matters on hosts bound to a wildcard address.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crossbeam_channel::Sender;
use mio::net::UnixDatagram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::clock;
use crate::counters::{Counter, Counters};
use crate::error::Error;
use crate::limit::RateLimiter;
use crate::log::{Level, Logger, log_line};
use crate::responder::{Outcome, Policy, Responder};
use crate::status::Board;
use crate::streams::{AgentCheckOptions, ConnectionFds, LISTENER_TOKENS, StreamListener, Streams};
use crate::wire;

/// State shared by the host-facing handle and the monitor thread.
pub(crate) struct Shared {
    pub board: Board,
    pub counters: Counters,
    pub instance_id: u64,
    pub policy: Policy,
    pub logger: Logger,
    /// Tells this process's monitor thread to finish (memory of this process only: `stop` in
    /// a parent does not reach a child that took the agent over).
    pub quit: AtomicBool,
    /// Test hook: the next datagram or connection handled panics (see `Agent::inject_fault`).
    pub inject_fault: AtomicBool,
    /// Test hook: the thread waits this long before letting go of the sockets when it
    /// finishes (see `Agent::inject_exit_delay`).
    pub exit_delay_ms: AtomicU32,
}

/// One bound UDP socket.
pub(crate) struct Listener {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl Listener {
    /// Binds `addr` (IPv6 sockets are IPv6-only, so `0.0.0.0:P` and `[::]:P` can coexist).
    pub(crate) fn bind(addr: SocketAddr) -> Result<Listener, Error> {
        let bind_error = |source| Error::Bind { addr, source };
        // socket2 creates it close-on-exec.
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_error)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(bind_error)?;
        }
        socket.bind(&addr.into()).map_err(bind_error)?;
        let socket: UdpSocket = socket.into();
        // Sets non-blocking mode and asks for each datagram's destination address.
        let state = UdpSocketState::new((&socket).into()).map_err(bind_error)?;
        // quinn-udp also asks for a receive timestamp and the TOS byte (for ECN), which the
        // agent never reads: each costs a control message per datagram, and, while any socket
        // asks for timestamps, the kernel timestamps every packet the host receives.
        use nix::sys::socket::{setsockopt, sockopt};
        let unwanted = |e: nix::Error| bind_error(e.into());
        setsockopt(&socket, sockopt::ReceiveTimestampns, &false).map_err(unwanted)?;
        if addr.is_ipv4() {
            setsockopt(&socket, sockopt::IpRecvTos, &false).map_err(unwanted)?;
        }
        Ok(Listener { socket, state })
    }

    /// The address actually bound (the port is chosen by the system for port 0).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket's descriptor (to close a forked worker's inherited copy).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// How the host side wakes a monitor thread, and the descriptors that thread owns (which a
/// forked child must close, since the thread does not exist there).
pub(crate) struct Wake {
    sender: UnixDatagram,
    pub thread_fds: [RawFd; 2],
    /// The TCP connections the thread has open (they come and go).
    pub connection_fds: Arc<ConnectionFds>,
}

impl Wake {
    /// Wakes the thread (it then checks `quit` and `stopping`). Never raises SIGPIPE.
    pub(crate) fn wake(&self) {
        let _ = self.sender.send(&[1]);
    }
}

/// Datagrams read per system call, and the receive buffer for each.
const BATCH: usize = quinn_udp::BATCH_SIZE;
const BUFFER: usize = 1500;
const WAKER: Token = Token(usize::MAX);
/// Readiness events handled per loop turn.
const EVENTS: usize = 256;
/// Consecutive panics of the loop itself after which the thread gives up (the status then
/// keeps answering "agent fault" through the API; the sockets are closed).
const MAX_LOOP_FAULTS: u32 = 8;

pub(crate) struct Monitor {
    shared: Arc<Shared>,
    poll: Poll,
    wake: UnixDatagram,
    listeners: Arc<[Listener]>,
    streams: Streams,
    buffers: Vec<[u8; BUFFER]>,
    metas: Vec<RecvMeta>,
    handler: Handler,
}

/// Per-datagram state owned by the monitor thread.
struct Handler {
    limiter: RateLimiter,
    reply: [u8; wire::PROBE_MAX_LEN],
    /// Counter values at the last drop report, when it was, and how often to report.
    reported: [u64; Counter::ALL.len()],
    reported_at: u64,
    report_every_ms: u64,
}

impl Monitor {
    /// Registers the sockets with a new poller; returns the monitor and how to wake it.
    pub(crate) fn new(
        shared: Arc<Shared>,
        listeners: Arc<[Listener]>,
        stream_listeners: Arc<[StreamListener]>,
        agent_check: AgentCheckOptions,
        limiter: RateLimiter,
        report_drops_every_ms: u32,
    ) -> Result<(Monitor, Wake), Error> {
        let io_error = |what| move |source| Error::Io { what, source };
        let poll = Poll::new().map_err(io_error("create the poller"))?;
        let (sender, mut receiver) =
            UnixDatagram::pair().map_err(io_error("create the wake-up socket pair"))?;
        poll.registry()
            .register(&mut receiver, WAKER, Interest::READABLE)
            .map_err(io_error("register the wake-up socket"))?;
        for (i, listener) in listeners.iter().enumerate() {
            poll.registry()
                .register(
                    &mut SourceFd(&listener.socket.as_raw_fd()),
                    Token(i),
                    Interest::READABLE,
                )
                .map_err(io_error("register a socket with the poller"))?;
        }
        let streams = Streams::new(stream_listeners, agent_check);
        streams
            .register(poll.registry())
            .map_err(io_error("register a socket with the poller"))?;
        let wake = Wake {
            sender,
            thread_fds: [poll.as_raw_fd(), receiver.as_raw_fd()],
            connection_fds: streams.connection_fds(),
        };
        let monitor = Monitor {
            shared,
            poll,
            wake: receiver,
            listeners,
            streams,
            buffers: vec![[0u8; BUFFER]; BATCH],
            metas: vec![RecvMeta::default(); BATCH],
            handler: Handler {
                limiter,
                reply: [0u8; wire::PROBE_MAX_LEN],
                reported: [0; Counter::ALL.len()],
                reported_at: clock::now_ms(),
                report_every_ms: u64::from(report_drops_every_ms),
            },
        };
        Ok((monitor, wake))
    }

    /// The thread's body: serves until `stop`, then closes the sockets and reports on `done`.
    pub(crate) fn run(mut self, done: Sender<()>) {
        let mut loop_faults = 0;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve_until_stopped())) {
                Ok(Ok(())) => break,
                Ok(Err(())) => {
                    // The poller failed (it never does in practice): report it, do not spin.
                    self.shared.counters.add(Counter::Faults);
                    self.shared.board.record_fault(clock::now_ms());
                    break;
                }
                Err(_) => {
                    self.shared.counters.add(Counter::Faults);
                    self.shared.board.record_fault(clock::now_ms());
                    loop_faults += 1;
                    if loop_faults >= MAX_LOOP_FAULTS || self.shared.board.is_stopping() {
                        break;
                    }
                }
            }
        }
        let delay = self.shared.exit_delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(u64::from(delay)));
        }
        // Let go of the sockets before telling `stop` that we are done (`stop` drops the last
        // reference, which closes them). Open TCP connections are closed here.
        self.streams.close_all(&self.shared);
        drop(self.streams);
        drop(self.listeners);
        drop(self.poll);
        drop(self.wake);
        let _ = done.send(());
    }

    fn serve_until_stopped(&mut self) -> Result<(), ()> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            // No timeout (no wake-ups) unless a TCP connection is open.
            let timeout = self.streams.timeout(std::time::Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(());
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        let mut sink = [0u8; 16];
                        while self.wake.recv(&mut sink).is_ok() {}
                    }
                    Token(t) if t < LISTENER_TOKENS => self.drain(t),
                    token => self
                        .streams
                        .ready(token, &self.shared, self.poll.registry()),
                }
            }
            self.streams
                .after_events(&self.shared, self.poll.registry());
            if self.shared.quit.load(Ordering::Acquire) || self.shared.board.is_stopping() {
                // Answer what is already queued (with STOPPING), then leave.
                for i in 0..self.listeners.len() {
                    self.drain(i);
                }
                return Ok(());
            }
        }
    }

    /// Reads and answers datagrams on one socket until it has none left.
    fn drain(&mut self, index: usize) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        loop {
            let mut slices: [IoSliceMut<'_>; BATCH] = {
                let mut buffers = self.buffers.iter_mut();
                std::array::from_fn(|_| match buffers.next() {
                    Some(b) => IoSliceMut::new(&mut b[..]),
                    None => IoSliceMut::new(&mut []),
                })
            };
            let count =
                match listener
                    .state
                    .recv((&listener.socket).into(), &mut slices, &mut self.metas)
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // WouldBlock: all read. Anything else: give up until the next readiness event.
                    Err(_) => return,
                };
            for (meta, buffer) in self.metas.iter().zip(self.buffers.iter()).take(count) {
                let received = &buffer[..meta.len.min(BUFFER)];
                // With UDP GRO one buffer can hold several datagrams of `stride` bytes.
                let stride = if meta.stride == 0 {
                    received.len().max(1)
                } else {
                    meta.stride
                };
                for datagram in received.chunks(stride) {
                    self.handler.answer(&self.shared, listener, meta, datagram);
                }
                if received.is_empty() {
                    self.handler.answer(&self.shared, listener, meta, &[]);
                }
            }
            // Fewer than a full batch: the queue was empty when the kernel looked. A datagram
            // queued since then raises a new readiness event (epoll reports every arrival to an
            // edge-triggered waiter), so there is no need for one more call to hear WouldBlock:
            // that call was one system call in four per probe on an idle agent.
            if count < BATCH {
                return;
            }
        }
    }
}

impl Handler {
    /// Handles one datagram: decide (panics caught and counted), send, count.
    fn answer(&mut self, shared: &Shared, listener: &Listener, meta: &RecvMeta, datagram: &[u8]) {
        let counters = &shared.counters;
        counters.add(Counter::Received);
        let now = clock::now_ms();
        let limiter = &mut self.limiter;
        let reply = &mut self.reply;
        let decided = catch_unwind(AssertUnwindSafe(|| {
            if shared.inject_fault.swap(false, Ordering::AcqRel) {
                panic!("lbagent: injected fault (test hook)");
            }
            let responder = Responder {
                board: &shared.board,
                policy: &shared.policy,
                instance_id: shared.instance_id,
            };
            responder.respond(limiter, meta.addr, meta.dst_ip, datagram, reply, now)
        }));
        let outcome = match decided {
            Ok(outcome) => outcome,
            Err(_) => {
                // The datagram that hit the fault is dropped (and counted as a fault); later
                // ones are answered "agent fault".
                shared.board.record_fault(now);
                log_line!(
                    shared.logger,
                    Level::Error,
                    "internal fault (panic caught) while answering {}; answering DOWN (agent fault) from now on",
                    meta.addr
                );
                Outcome::Drop(Counter::Faults)
            }
        };
        match outcome {
            Outcome::Drop(counter) => {
                counters.add(counter);
                self.report_drops(shared, now);
            }
            Outcome::Reply(len, counter) => {
                let transmit = Transmit {
                    destination: meta.addr,
                    ecn: None,
                    contents: &self.reply[..len.min(datagram.len())],
                    segment_size: None,
                    src_ip: meta.dst_ip,
                };
                match listener
                    .state
                    .try_send((&listener.socket).into(), &transmit)
                {
                    Ok(()) => counters.add(counter),
                    Err(_) => counters.add(Counter::SendFailed),
                }
            }
        }
    }

    /// Logs, at most every `log_drops_ms`, how many datagrams were dropped and why.
    fn report_drops(&mut self, shared: &Shared, now: u64) {
        if now.saturating_sub(self.reported_at) < self.report_every_ms {
            return;
        }
        let seconds = now.saturating_sub(self.reported_at) / 1000;
        self.reported_at = now;
        let mut parts = [("", 0u64); Counter::ALL.len()];
        let mut total = 0;
        for (i, counter) in Counter::ALL.iter().enumerate() {
            let value = shared.counters.get(*counter);
            let delta = value - self.reported[i];
            self.reported[i] = value;
            if counter.is_drop() && delta > 0 {
                parts[i] = (counter.name(), delta);
                total += delta;
            }
        }
        if total == 0 {
            return;
        }
        struct Parts<'a>(&'a [(&'a str, u64)]);
        impl std::fmt::Display for Parts<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for (name, n) in self.0.iter().filter(|(_, n)| *n > 0) {
                    write!(f, " {name}={n}")?;
                }
                Ok(())
            }
        }
        log_line!(
            shared.logger,
            Level::Warn,
            "dropped {total} datagrams in the last {seconds} s:{}",
            Parts(&parts)
        );
    }
}
