//! The monitor thread: waits for datagrams and TCP connections on the agent's sockets and
//! answers each from the status board. It never calls or waits on host code, allocates
//! nothing per datagram, and sleeps in `epoll_wait` with no timeout: no probes, no wake-ups.
//!
//! - `udp.rs`: the UDP sockets, batched reads, one answer per datagram;
//! - `answer.rs`: the decision for one datagram (pure: guard, protocol v1, text);
//! - `tcp.rs`: HAProxy's agent-check and the HTTP endpoint, served by the same loop, which
//!   sets a timer only while a connection is open;
//! - `watch.rs`, `subscribe.rs`: listening for changes (the board's bell, deadlines) and
//!   pushing them to subscribed directors, with the bounds that keep pushes safe;
//! - this file: the loop, the sockets it serves, and starting, stopping and forgetting (after
//!   a fork) the thread.
//!
//! `stop` wakes the thread through a datagram socket pair (not `mio::Waker`, so that a forked
//! child can close both ends; not a pipe, whose write could raise SIGPIPE in the host once the
//! thread has gone).

pub(crate) mod answer;
pub(crate) mod control;
mod metrics;
pub(crate) mod subscribe;
mod systemd;
pub(crate) mod tcp;
pub(crate) mod udp;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::net::UnixDatagram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::Config;
use crate::error::Error;
use crate::guard::{Admission, AdmissionOptions};
use crate::shared::Shared;
use crate::sys::fd;
use control::{CONTROL_LISTENER, CONTROL_TOKENS, Control, ControlListener, MAX_CONTROL};
use subscribe::Subscriptions;
use tcp::{
    AgentCheckOptions, ConnShares, ConnectionFds, Kind, LISTENER_TOKENS, StreamListener, Streams,
};
use udp::{Datagrams, Listener};
use watch::Watch;

const WAKER: Token = Token(usize::MAX);
const BELL: Token = Token(usize::MAX - 1);
/// Readiness events handled per loop turn.
const EVENTS: usize = 256;
/// Consecutive panics of the loop itself after which the thread gives up (the status then
/// keeps answering "agent fault" through the API; the sockets are closed).
const MAX_LOOP_FAULTS: u32 = 8;

/// The agent's bound sockets, shared by the host-facing handle and the monitor thread (so a
/// child that takes the agent over after a fork serves the same ones); the last reference
/// closes them.
pub(crate) struct Sockets {
    udp: Vec<Listener>,
    tcp: Vec<StreamListener>,
    /// The operator's control socket (`control=`).
    control: Option<ControlListener>,
    /// The addresses bound (with the system's port where 0 was asked), in config order.
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_agent_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
}

impl Sockets {
    /// Binds every address of `config`; a failure closes the ones already bound.
    pub(crate) fn bind(config: &Config) -> Result<Sockets, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let udp = config
            .listen
            .iter()
            .map(|addr| Listener::bind(*addr))
            .collect::<Result<Vec<_>, _>>()?;
        let udp_addrs = udp
            .iter()
            .map(Listener::local_addr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(io("read a bound address"))?;
        let tcp = config
            .tcp_agent
            .iter()
            .map(|addr| StreamListener::bind(Kind::Agent, *addr))
            .chain(
                config
                    .http
                    .iter()
                    .map(|addr| StreamListener::bind(Kind::Http, *addr)),
            )
            .collect::<Result<Vec<_>, _>>()?;
        let (mut tcp_agent_addrs, mut http_addrs) = (Vec::new(), Vec::new());
        for listener in &tcp {
            let addr = listener.local_addr().map_err(io("read a bound address"))?;
            match listener.kind() {
                Kind::Agent => tcp_agent_addrs.push(addr),
                Kind::Http => http_addrs.push(addr),
            }
        }
        let control = config
            .control
            .as_deref()
            .map(ControlListener::bind)
            .transpose()?;
        Ok(Sockets {
            udp,
            tcp,
            control,
            udp_addrs,
            tcp_agent_addrs,
            http_addrs,
        })
    }

    /// In a forked worker, which never serves: closes this process's copies of the sockets
    /// (so that they do not outlive the master) without touching the master's.
    pub(crate) fn close_in_forked_worker(sockets: Arc<Sockets>) {
        for l in &sockets.udp {
            fd::close_inherited(l.raw_fd());
        }
        for l in &sockets.tcp {
            fd::close_inherited(l.raw_fd());
        }
        if let Some(c) = &sockets.control {
            fd::close_inherited(c.raw_fd());
        }
        // Closed by number above: dropping the objects would close the numbers again.
        std::mem::forget(sockets);
    }

    /// The control socket's path, if there is one (the owner removes it when it stops).
    pub(crate) fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(ControlListener::path)
    }
}

/// How the monitor thread serves (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeOptions {
    pub agent_check: AgentCheckOptions,
    pub admission: AdmissionOptions,
    /// Connections one source may hold open per listener kind.
    pub conn_per_source: usize,
    pub log_drops_ms: u32,
    pub subscribe: crate::config::SubscribeMode,
    pub max_subscribers: usize,
    /// Answer `GET /metrics` (`metrics=on`).
    pub metrics: bool,
}

/// How the monitor thread serves, beyond what is `Copy` (from the configuration).
#[derive(Clone, Debug, Default)]
pub(crate) struct ServeExtras {
    /// Where operator overrides are kept (`state_file=`).
    pub state_file: Option<std::path::PathBuf>,
    /// systemd's notification socket (`systemd=on` and `NOTIFY_SOCKET`).
    pub systemd: Option<crate::sys::notify::NotifyTarget>,
}

impl ServeOptions {
    pub(crate) fn from_config(config: &Config) -> ServeOptions {
        ServeOptions {
            agent_check: AgentCheckOptions {
                wait_for_agent_send: !config.services.is_empty(),
                maxconn: config.agent_maxconn,
            },
            admission: AdmissionOptions::from_config(config),
            conn_per_source: config.conn_per_source as usize,
            log_drops_ms: config.log_drops_ms,
            subscribe: config.subscribe,
            max_subscribers: config.max_subscribers as usize,
            metrics: config.metrics,
        }
    }
}

/// A running monitor thread, as its starter holds it.
pub(crate) struct MonitorThread {
    /// Wakes the thread (it then checks `quit` and `stopping`).
    wake: UnixDatagram,
    /// The poller's and the wake-up socket's descriptors, owned by the thread.
    thread_fds: [RawFd; 2],
    /// The TCP connections the thread has open (they come and go).
    connection_fds: Arc<ConnectionFds>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

/// Starts a monitor thread serving `sockets`.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    sockets: Arc<Sockets>,
    options: ServeOptions,
    extras: ServeExtras,
) -> Result<MonitorThread, Error> {
    let io_error = |what| move |source| Error::Io { what, source };
    let poll = Poll::new().map_err(io_error("create the poller"))?;
    let (sender, mut receiver) =
        UnixDatagram::pair().map_err(io_error("create the wake-up socket pair"))?;
    let registry = poll.registry();
    registry
        .register(&mut receiver, WAKER, Interest::READABLE)
        .map_err(io_error("register the wake-up socket"))?;
    for (i, listener) in sockets.udp.iter().enumerate() {
        registry
            .register(
                &mut SourceFd(&listener.raw_fd()),
                Token(i),
                Interest::READABLE,
            )
            .map_err(io_error("register a socket with the poller"))?;
    }
    registry
        .register(
            &mut SourceFd(&shared.board.bell.raw_fd()),
            BELL,
            Interest::READABLE,
        )
        .map_err(io_error("register the change bell"))?;
    let shares = ConnShares {
        per_source: options.conn_per_source,
        ipv6_prefix: options.admission.rates.ipv6_prefix,
    };
    let streams = Streams::new(
        sockets.clone(),
        options.agent_check,
        shares,
        options.metrics,
    );
    streams
        .register(registry)
        .map_err(io_error("register a socket with the poller"))?;
    if let Some(c) = &sockets.control {
        registry
            .register(
                &mut SourceFd(&c.raw_fd()),
                CONTROL_LISTENER,
                Interest::READABLE,
            )
            .map_err(io_error("register the control socket"))?;
    }
    let thread_fds = [poll.as_raw_fd(), receiver.as_raw_fd()];
    let connection_fds = streams.connection_fds();
    let admission = Admission::new(options.admission);
    let monitor = Monitor {
        shared,
        poll,
        wake: receiver,
        sockets,
        datagrams: Datagrams::new(admission, options.log_drops_ms),
        streams,
        control: Control::new(extras.state_file),
        watch: Watch::new(
            Subscriptions::new(options.max_subscribers, options.subscribe),
            extras
                .systemd
                .map(systemd::SystemdListener::open)
                .transpose()
                .map_err(io_error("open systemd's notification socket"))?,
        ),
    };
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("lbagent-monitor".into())
        .spawn(move || monitor.run(done_tx))
        .map_err(io_error("start the monitor thread"))?;
    Ok(MonitorThread {
        wake: sender,
        thread_fds,
        connection_fds,
        done,
        thread,
    })
}

impl MonitorThread {
    /// Wakes the thread, which finishes once `quit` or `stopping` is set, and waits for it
    /// until `deadline` (`None`: for ever). On time-out gives itself back, still running.
    pub(crate) fn finish(self, deadline: Option<Instant>) -> Result<(), MonitorThread> {
        // Never raises SIGPIPE (a datagram socket pair).
        let _ = self.wake.send(&[1]);
        let finished = match deadline {
            None => self.done.recv().is_ok(),
            Some(d) => match self
                .done
                .recv_timeout(d.saturating_duration_since(Instant::now()))
            {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            },
        };
        if !finished {
            return Err(self);
        }
        // The thread has sent its last message: joining returns at once.
        let _ = self.thread.join();
        Ok(())
    }

    /// In a forked child, where the thread does not exist: closes the descriptors only it
    /// used (its poller, its wake-up socket, the TCP connections it had open when this
    /// process was forked) and forgets it.
    pub(crate) fn forget_in_forked_child(self) {
        for fd in self.thread_fds {
            fd::close_inherited(fd);
        }
        for fd in self.connection_fds.open() {
            fd::close_inherited(fd);
        }
        std::mem::forget(self.thread);
        drop(self.wake);
        drop(self.done);
    }
}

struct Monitor {
    shared: Arc<Shared>,
    poll: Poll,
    wake: UnixDatagram,
    sockets: Arc<Sockets>,
    datagrams: Datagrams,
    streams: Streams,
    control: Control,
    watch: Watch,
}

impl Monitor {
    /// The thread's body: serves until `stop`, then closes the sockets and reports on `done`.
    fn run(mut self, done: Sender<()>) {
        let mut loop_faults = 0;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve_until_stopped())) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    // The poller failed (it never does in practice): report it, do not spin.
                    self.shared
                        .fault(format_args!("waiting for the sockets ({e})"));
                    break;
                }
                Err(_) => {
                    self.shared.fault(format_args!("serving"));
                    loop_faults += 1;
                    if loop_faults >= MAX_LOOP_FAULTS || self.shared.board.is_stopping() {
                        break;
                    }
                }
            }
        }
        let delay = self.shared.exit_delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(u64::from(delay)));
        }
        // Let go of the sockets before telling `stop` that we are done (`stop` drops the last
        // reference, which closes them). Open TCP connections are closed here.
        self.streams.close_all(&self.shared);
        drop(self.streams);
        drop(self.sockets);
        drop(self.poll);
        drop(self.wake);
        let _ = done.send(());
    }

    fn serve_until_stopped(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        // The listeners that listen from the start (systemd, the log) take a first look now,
        // not at the first socket event.
        self.watch
            .after_events(&self.shared, &self.sockets.udp, false);
        loop {
            // No timeout (no wake-ups) unless a TCP connection is open or someone listens for
            // changes that a deadline can bring.
            let now = Instant::now();
            let timeout = [
                self.streams.timeout(now),
                self.control.timeout(now),
                self.watch.timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rang = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        let mut sink = [0u8; 16];
                        while self.wake.recv(&mut sink).is_ok() {}
                    }
                    BELL => rang = true,
                    CONTROL_LISTENER => self.accept_control(),
                    Token(t) if (CONTROL_TOKENS..CONTROL_TOKENS + MAX_CONTROL).contains(&t) => {
                        self.control.ready(Token(t), &self.shared);
                    }
                    Token(t) if t < LISTENER_TOKENS => self.drain(t),
                    token => self
                        .streams
                        .ready(token, &self.shared, self.poll.registry()),
                }
            }
            self.streams
                .after_events(&self.shared, self.poll.registry());
            if self.control.expire(Instant::now(), &self.shared) || self.control.pending() {
                // Connections wait in the listen queue for a free slot.
                self.accept_control();
            }
            self.watch
                .after_events(&self.shared, &self.sockets.udp, rang);
            if self.shared.quit.load(Ordering::Acquire) || self.shared.board.is_stopping() {
                self.watch.at_stop(&self.shared);
                // Answer what is already queued (with STOPPING), then leave.
                for i in 0..self.sockets.udp.len() {
                    self.drain(i);
                }
                return Ok(());
            }
        }
    }

    fn accept_control(&mut self) {
        if let Some(listener) = &self.sockets.control {
            self.control
                .accept(listener, &self.shared, self.poll.registry());
        }
    }

    fn drain(&mut self, index: usize) {
        if let Some(listener) = self.sockets.udp.get(index) {
            let subscriptions = &mut self.watch.subscriptions;
            self.datagrams
                .drain(&self.shared, subscriptions, listener, index);
        }
    }
}
