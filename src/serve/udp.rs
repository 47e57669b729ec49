//! The UDP side of the monitor thread: the bound sockets, the batched reads, and one answer
//! per datagram (decided by `answer.rs`), sent from the address the datagram was sent to.
//!
//! Socket I/O goes through `quinn-udp`, which receives in batches (`recvmmsg`) together with the
//! address each datagram was sent to (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and sends the answer
//! from that same address. keepalived `connect()`s its checker socket and ignores answers from
//! any other address, so this matters on hosts bound to a wildcard address.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use super::answer::{Envelope, Outcome, Responder, Tables};
use super::subscribe::Subscriptions;
use crate::counters::Counter;
use crate::error::Error;
use crate::guard::Admission;
use crate::log::{Level, log_line};
use crate::proto::wire;
use crate::shared::Shared;
use crate::sys::clock;

/// Datagrams read per system call, and the receive buffer for each.
const BATCH: usize = quinn_udp::BATCH_SIZE;
const BUFFER: usize = 1500;

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
        // quinn-udp turns UDP GRO on: the kernel would then coalesce datagrams of one flow
        // (a sender's UDP_SEGMENT send, or a burst through a GRO-capable device) into one read
        // larger than the agent's 1,500-byte buffers, cutting some and losing others
        // uncounted. Probes are small and few: off, so that every read is one datagram.
        setsockopt(&socket, sockopt::UdpGroSegment, &false).map_err(unwanted)?;
        if addr.is_ipv4() {
            setsockopt(&socket, sockopt::IpRecvTos, &false).map_err(unwanted)?;
        }
        Ok(Listener { socket, state })
    }

    /// The address actually bound (the port is chosen by the system for port 0).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket's descriptor (to register it, and to close a forked worker's copy).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends one datagram to `to`, from local address `from` (the address a request was sent
    /// to; `None`: whatever the system picks).
    pub(crate) fn send(
        &self,
        to: SocketAddr,
        from: Option<std::net::IpAddr>,
        contents: &[u8],
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: from,
        };
        self.state.try_send((&self.socket).into(), &transmit)
    }
}

/// The monitor thread's per-datagram state: receive buffers, the rate limiter, the answer
/// buffer and the drop report.
pub(crate) struct Datagrams {
    buffers: Vec<[u8; BUFFER]>,
    metas: Vec<RecvMeta>,
    admission: Admission,
    reply: [u8; wire::PROBE_MAX_LEN],
    /// Counter values at the last drop report, when it was, and how often to report.
    reported: [u64; Counter::ALL.len()],
    reported_at: u64,
    report_every_ms: u64,
}

impl Datagrams {
    pub(crate) fn new(admission: Admission, report_drops_every_ms: u32) -> Datagrams {
        Datagrams {
            buffers: vec![[0u8; BUFFER]; BATCH],
            metas: vec![RecvMeta::default(); BATCH],
            admission,
            reply: [0u8; wire::PROBE_MAX_LEN],
            reported: [0; Counter::ALL.len()],
            reported_at: clock::now_ms(),
            report_every_ms: u64::from(report_drops_every_ms),
        }
    }

    /// Reads and answers datagrams on `listener` (socket `index`) until it has none left.
    pub(crate) fn drain(
        &mut self,
        shared: &Shared,
        subscriptions: &mut Subscriptions,
        listener: &Listener,
        index: usize,
    ) {
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
            for i in 0..count {
                let meta = self.metas[i];
                let received = meta.len.min(BUFFER);
                // GRO is off (see `bind`): one datagram per buffer, `stride == len`. Were it on,
                // a buffer would hold several datagrams of `stride` bytes.
                let stride = if meta.stride == 0 {
                    received.max(1)
                } else {
                    meta.stride
                };
                let envelope = Envelope {
                    source: meta.addr,
                    destination: meta.dst_ip,
                    listener: index,
                };
                let mut start = 0;
                while start < received {
                    let end = (start + stride).min(received);
                    self.answer(shared, subscriptions, listener, envelope, i, start..end);
                    start = end;
                }
                if received == 0 {
                    self.answer(shared, subscriptions, listener, envelope, i, 0..0);
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

    /// Handles one datagram (`buffers[buffer][range]`): decide (panics caught and counted),
    /// send, count.
    fn answer(
        &mut self,
        shared: &Shared,
        subscriptions: &mut Subscriptions,
        listener: &Listener,
        envelope: Envelope,
        buffer: usize,
        range: std::ops::Range<usize>,
    ) {
        let counters = &shared.counters;
        counters.add(Counter::Received);
        let now = clock::now_ms();
        let datagram = &self.buffers[buffer][range];
        let tables = Tables {
            admission: &mut self.admission,
            subscriptions,
        };
        let reply = &mut self.reply;
        let decided = catch_unwind(AssertUnwindSafe(|| {
            shared.maybe_inject_fault();
            let responder = Responder {
                board: &shared.board,
                policy: &shared.policy,
                instance_id: shared.instance_id,
            };
            responder.respond(tables, envelope, datagram, reply, now)
        }));
        // The datagram that hit a fault is dropped (and counted as a fault); later ones are
        // answered "agent fault".
        let outcome = decided.unwrap_or_else(|_| {
            shared.fault(format_args!("answering {}", envelope.source));
            Outcome::Drop(Counter::Faults)
        });
        match outcome {
            Outcome::Drop(Counter::Faults) => self.report_drops(shared, now),
            Outcome::Drop(counter) => {
                counters.add(counter);
                self.report_drops(shared, now);
            }
            Outcome::Reply(len, counter) => {
                let contents = &self.reply[..len.min(datagram.len())];
                match listener.send(envelope.source, envelope.destination, contents) {
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
