//! The embeddable agent: the host-facing handle (Rust API; the C API wraps it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use mio::Waker;
use parking_lot::Mutex;

use crate::clock;
use crate::config::Config;
use crate::counters::{Counter, Counters};
use crate::error::Error;
use crate::limit::RateLimiter;
use crate::log::{Level, Logger, log_line};
use crate::monitor::{Listener, Monitor, Shared};
use crate::responder::Policy;
use crate::state::{Reason, State};
use crate::status::{Board, Status, Target, Text};
use crate::streams::{Kind, StreamListener};

/// How long dropping an agent waits for its thread before leaving it to finish on its own.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// A running agent: one monitor thread answering probes on the configured sockets.
///
/// Every method takes `&self` and may be called from any thread. The state-reporting methods
/// (`heartbeat`, `set_state`, `set_weight`, `set_load`) take no lock, make no system call and
/// do not allocate.
pub struct Agent {
    shared: Arc<Shared>,
    control: Mutex<Control>,
    local_addrs: Vec<SocketAddr>,
    tcp_agent_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
}

/// What `stop` needs; only host threads touch it, never the monitor thread.
struct Control {
    waker: Arc<Waker>,
    done: Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Parses `config`, binds every listen address and starts the monitor thread. On error
    /// nothing is left running: no thread, no socket.
    pub fn start(config: &str) -> Result<Agent, Error> {
        Agent::start_with(&Config::parse(config)?)
    }

    /// Starts an agent from a parsed configuration.
    pub fn start_with(config: &Config) -> Result<Agent, Error> {
        // Bind everything first: a failure drops (closes) the sockets already bound.
        let listeners = config
            .listen
            .iter()
            .map(|addr| Listener::bind(*addr))
            .collect::<Result<Vec<_>, _>>()?;
        let local_addrs = listeners
            .iter()
            .map(Listener::local_addr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Io {
                what: "read a bound address",
                source,
            })?;
        let stream_listeners = config
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
        let mut tcp_agent_addrs = Vec::new();
        let mut http_addrs = Vec::new();
        for listener in &stream_listeners {
            let addr = listener.local_addr().map_err(|source| Error::Io {
                what: "read a bound address",
                source,
            })?;
            match listener.kind() {
                Kind::Agent => tcp_agent_addrs.push(addr),
                Kind::Http => http_addrs.push(addr),
            }
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Io {
            what: "get a random instance id",
            source: std::io::Error::other(e.to_string()),
        })?;
        let (logger, log_thread) = Logger::new(config.log).map_err(|source| Error::Io {
            what: "start the logger thread",
            source,
        })?;
        let shared = Arc::new(Shared {
            board: Board::new(
                config.initial_state,
                &config.services,
                config.watchdog_ms,
                clock::now_ms(),
            ),
            counters: Counters::default(),
            instance_id: u64::from_ne_bytes(id),
            policy: Policy::from_config(config),
            logger,
            inject_fault: AtomicBool::new(false),
        });
        // From here on, a failure must also stop the logger thread.
        let fail = |shared: &Shared, log_thread: Option<std::thread::JoinHandle<()>>, e: Error| {
            shared.logger.close();
            if let Some(t) = log_thread {
                let _ = t.join();
            }
            e
        };
        let limiter = RateLimiter::new(config.rate_per_source, config.rate_global);
        let (monitor, waker) = match Monitor::new(
            shared.clone(),
            listeners,
            stream_listeners,
            !config.services.is_empty(),
            limiter,
            config.log_drops_ms,
        ) {
            Ok(m) => m,
            Err(e) => return Err(fail(&shared, log_thread, e)),
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let thread = match std::thread::Builder::new()
            .name("lbagent-monitor".into())
            .spawn(move || monitor.run(done_tx))
        {
            Ok(t) => t,
            Err(source) => {
                let e = Error::Io {
                    what: "start the monitor thread",
                    source,
                };
                return Err(fail(&shared, log_thread, e));
            }
        };
        log_line!(
            shared.logger,
            Level::Info,
            "started {}: UDP {}, TCP agent-check {}, HTTP {}, watchdog {}, text {}, {}",
            crate::VERSION,
            Addrs(&local_addrs),
            Addrs(&tcp_agent_addrs),
            Addrs(&http_addrs),
            if config.watchdog_ms > 0 {
                format!("{} ms", config.watchdog_ms)
            } else {
                "off".into()
            },
            if config.text { "on" } else { "off" },
            match (&config.keys, config.auth_required()) {
                (None, _) => "no authentication".to_string(),
                (Some(k), required) => format!(
                    "authentication {} (key ids {})",
                    if required { "required" } else { "optional" },
                    k.ids().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
                ),
            }
        );
        Ok(Agent {
            shared,
            control: Mutex::new(Control {
                waker,
                done: done_rx,
                thread: Some(thread),
                log_thread,
            }),
            local_addrs,
            tcp_agent_addrs,
            http_addrs,
        })
    }

    fn target(&self, service: &[u8]) -> Result<Target, Error> {
        if self.shared.board.is_stopping() {
            return Err(Error::Stopped);
        }
        match self.shared.board.target(service) {
            Target::Unknown => Err(Error::UnknownService),
            target => Ok(target),
        }
    }

    /// Reports the state of the whole server (`service` empty) or of one service, with an
    /// optional reason text (kept up to 255 bytes; control characters become spaces).
    pub fn set_state(
        &self,
        service: &str,
        state: State,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        self.set_state_bytes(service.as_bytes(), state, reason.map(str::as_bytes))
    }

    /// `set_state` with raw bytes (the C API): an invalid UTF-8 reason is repaired.
    pub(crate) fn set_state_bytes(
        &self,
        service: &[u8],
        state: State,
        reason: Option<&[u8]>,
    ) -> Result<(), Error> {
        if !state.settable() {
            return Err(Error::InvalidState);
        }
        let target = self.target(service)?;
        let text = reason.map(Text::from_reason);
        self.shared
            .board
            .set_state(target, state, Reason::Host, text.as_ref(), clock::now_ms());
        Ok(())
    }

    /// Sets the weight, in percent (0..=100) of the weight configured on the director.
    pub fn set_weight(&self, service: &str, weight_pct: u32) -> Result<(), Error> {
        self.set_weight_bytes(service.as_bytes(), weight_pct)
    }

    pub(crate) fn set_weight_bytes(&self, service: &[u8], weight_pct: u32) -> Result<(), Error> {
        let weight = u8::try_from(weight_pct)
            .ok()
            .filter(|w| *w <= 100)
            .ok_or(Error::InvalidWeight)?;
        let target = self.target(service)?;
        self.shared.board.set_weight(target, weight);
        Ok(())
    }

    /// Reports the load: `in_use` units of work out of `capacity` (0 = unknown).
    pub fn set_load(&self, service: &str, in_use: u32, capacity: u32) -> Result<(), Error> {
        self.set_load_bytes(service.as_bytes(), in_use, capacity)
    }

    pub(crate) fn set_load_bytes(
        &self,
        service: &[u8],
        in_use: u32,
        capacity: u32,
    ) -> Result<(), Error> {
        let target = self.target(service)?;
        self.shared.board.set_load(target, in_use, capacity);
        Ok(())
    }

    /// Tells the watchdog that the host is alive.
    pub fn heartbeat(&self) -> Result<(), Error> {
        if self.shared.board.is_stopping() {
            return Err(Error::Stopped);
        }
        self.shared.board.heartbeat(clock::now_ms());
        Ok(())
    }

    /// Exactly what a director asking about `service` ("" = whole server) is told now. An
    /// unknown service gives state `Unknown`.
    pub fn status(&self, service: &str) -> Status {
        self.status_bytes(service.as_bytes())
    }

    pub(crate) fn status_bytes(&self, service: &[u8]) -> Status {
        let board = &self.shared.board;
        board.status(board.target(service), clock::now_ms())
    }

    /// Random at each start; sent in every STATUS so that a restart is visible.
    pub fn instance_id(&self) -> u64 {
        self.shared.instance_id
    }

    /// The bound addresses, in `listen=` order (with the actual port when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The bound `tcp_agent=` addresses (HAProxy agent-check), in config order.
    pub fn tcp_agent_addrs(&self) -> &[SocketAddr] {
        &self.tcp_agent_addrs
    }

    /// The bound `http=` addresses (HTTP health endpoint), in config order.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// The current value of a counter.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.shared.counters.get(counter)
    }

    /// Stops answering: from now on the status is STOPPING; the monitor thread answers what is
    /// already queued, closes the sockets and exits. Waits up to `timeout` (`None`: for ever).
    /// Idempotent; after a timeout, calling again waits again.
    pub fn stop(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.shared.board.begin_stopping(clock::now_ms());
        let mut control = self.control.lock();
        let Some(thread) = control.thread.take() else {
            return Ok(());
        };
        // Best effort: if waking fails the thread still sees `stopping` at its next datagram.
        let _ = control.waker.wake();
        let finished = match timeout {
            None => control.done.recv().is_ok(),
            Some(t) => match control.done.recv_timeout(t) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            },
        };
        if !finished {
            control.thread = Some(thread);
            return Err(Error::Timeout);
        }
        // The thread has sent its last message: joining returns at once.
        let _ = thread.join();
        log_line!(self.shared.logger, Level::Info, "stopped");
        self.shared.logger.close();
        if let Some(t) = control.log_thread.take() {
            let _ = t.join();
        }
        Ok(())
    }

    /// True once `stop` has been called.
    pub fn is_stopped(&self) -> bool {
        self.shared.board.is_stopping()
    }

    /// Test hook: makes the monitor thread panic while handling the next datagram or TCP
    /// connection, to show that a fault inside the agent is caught and reported, never
    /// reaching the host.
    #[doc(hidden)]
    pub fn inject_fault(&self) {
        self.shared
            .inject_fault
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // If the thread does not finish in time it is left to finish on its own: it only
        // holds its own reference to the shared state, so nothing dangles.
        let _ = self.stop(Some(DROP_WAIT));
    }
}

/// Formats a list of addresses as "a, b".
struct Addrs<'a>(&'a [SocketAddr]);

impl std::fmt::Display for Addrs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}
