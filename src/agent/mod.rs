//! The embeddable agent: the host-facing handle (Rust API; the C API wraps it). The host's
//! calls are here; the threads and sockets behind them, across start, stop and fork, are in
//! `lifecycle.rs`.

mod lifecycle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::Config;
use crate::counters::{Counter, Counters};
use crate::error::Error;
use crate::guard::Policy;
use crate::log::{Level, LogCallback, Logger, log_line};
use crate::serve::{ServeExtras, ServeOptions, Sockets};
use crate::shared::Shared;
use crate::state::{Reason, State};
use crate::status::checks::AddError;
use crate::status::runner::{CheckFn, Runner};
use crate::status::{Board, BoardConfig, Drain, DrainConfig, Status, Target, Text};
use crate::sys::{clock, process};
use lifecycle::Lifecycle;

/// How long dropping an agent waits for its threads before leaving them to finish alone.
const DROP_WAIT: Duration = Duration::from_secs(5);
/// How often `wait_drained` looks.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A running agent: one monitor thread answering probes on the configured sockets.
///
/// Every method takes `&self` and may be called from any thread. The state-reporting methods
/// (`heartbeat`, `set_state`, `set_weight`, `set_load`, `worker_heartbeat`) take no lock, make
/// no system call and do not allocate.
///
/// Fork: the status board is in shared memory. Workers forked after `start` report into it
/// (call [`Agent::after_fork_worker`] in each); a daemonizing child takes the agent over with
/// [`Agent::after_fork_child`].
pub struct Agent {
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    local_addrs: Vec<SocketAddr>,
    tcp_agent_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
}

impl Agent {
    /// Parses `config`, binds every listen address and starts the monitor thread. On error
    /// nothing is left running: no thread, no socket.
    pub fn start(config: &str) -> Result<Agent, Error> {
        Agent::start_with(&Config::parse(config)?)
    }

    /// Starts an agent from a parsed configuration.
    pub fn start_with(config: &Config) -> Result<Agent, Error> {
        let io = |what| move |source| Error::Io { what, source };
        // The operator's override kept across restarts: a file that cannot be read stops the
        // start (before anything is bound), so that a server taken out never comes back UP.
        let saved = config
            .state_file
            .as_deref()
            .map(crate::serve::control::read_state_file)
            .transpose()?
            .flatten();
        // systemd=on: where to tell systemd (nothing when not run by systemd).
        let systemd = if config.systemd {
            crate::sys::notify::NotifyTarget::from_env().map_err(|why| {
                Error::Config(crate::config::ConfigError::bad_value(
                    "systemd",
                    "on",
                    format_args!("{why}"),
                ))
            })?
        } else {
            None
        };
        // Bind everything first: a failure drops (closes) the sockets already bound.
        let sockets = Sockets::bind(config)?;
        let (local_addrs, tcp_agent_addrs, http_addrs) = (
            sockets.udp_addrs.clone(),
            sockets.tcp_agent_addrs.clone(),
            sockets.http_addrs.clone(),
        );
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Io {
            what: "get a random instance id",
            source: std::io::Error::other(e.to_string()),
        })?;
        let board = Board::new(
            &BoardConfig {
                initial: config.initial_state,
                services: &config.services,
                watchdog_ms: config.watchdog_ms,
                workers: config.workers,
                worker_timeout_ms: config.worker_timeout_ms,
                worker_policy: config.worker_policy,
                shaping: config.shaping(),
                drain: DrainConfig {
                    window_ms: config.drain_window_ms,
                    confirm: config.drain_confirm,
                },
            },
            clock::now_ms(),
        )
        .map_err(io("map shared memory for the status board"))?
        .with_start_timeout(config.start_timeout_ms);
        let (logger, log_thread) =
            Logger::new(config.log).map_err(io("start the logger thread"))?;
        let shared = Arc::new(Shared {
            board,
            counters: Counters::new().map_err(io("map shared memory for the counters"))?,
            instance_id: u64::from_ne_bytes(id),
            policy: Policy::from_config(config),
            logger,
            quit: AtomicBool::new(false),
            inject_fault: AtomicBool::new(false),
            exit_delay_ms: AtomicU32::new(0),
        });
        if let (Some(path), Some(saved)) = (&config.state_file, saved) {
            crate::serve::control::restore(&shared, path, &saved);
        }
        let lifecycle = Lifecycle::start(
            &shared,
            sockets,
            ServeOptions::from_config(config),
            ServeExtras {
                state_file: config.state_file.clone(),
                systemd: systemd.clone(),
            },
            log_thread,
        )?;
        if config.systemd {
            log_systemd(&shared, systemd.as_ref());
        }
        let agent = Agent {
            shared,
            lifecycle,
            local_addrs,
            tcp_agent_addrs,
            http_addrs,
        };
        log_line!(
            agent.shared.logger,
            Level::Info,
            "started {}: UDP {}, TCP agent-check {}, HTTP {}, watchdog {}{}, text {}, {}",
            crate::VERSION,
            Addrs(&agent.local_addrs),
            Addrs(&agent.tcp_agent_addrs),
            Addrs(&agent.http_addrs),
            if config.watchdog_ms > 0 {
                format!("{} ms", config.watchdog_ms)
            } else {
                "off".into()
            },
            if config.start_timeout_ms > 0 {
                format!(", start timeout {} ms", config.start_timeout_ms)
            } else {
                String::new()
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
        Ok(agent)
    }

    /// The board's cell for a host call about `service`. An unknown name is counted
    /// (`Counter::HostUnknownService`: one relaxed atomic add, so the hot path stays free of
    /// locks and system calls), so that a typo the host's code ignores still shows.
    fn target(&self, service: &[u8]) -> Result<Target, Error> {
        if self.shared.board.is_stopping() {
            return Err(Error::Stopped);
        }
        match self.shared.board.target(service) {
            Target::Unknown => Err(self.unknown_service()),
            target => Ok(target),
        }
    }

    /// Counts a host call that named an unknown service: off the hot path's straight line.
    #[cold]
    #[inline(never)]
    fn unknown_service(&self) -> Error {
        self.shared.counters.add(Counter::HostUnknownService);
        // The monitor logs it (when a log is set); the bell wakes it if it listens.
        self.shared.board.bell.ring();
        Error::UnknownService
    }

    /// The service names of `services=`, in configuration order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.shared.board.service_names()
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
            .set_state_now(target, state, Reason::Host, text.as_ref());
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

    /// Tells the watchdog that the host is alive. The first heartbeat also ends the start (see
    /// `watchdog_ms` and `start_timeout_ms` in the README): the watchdog is armed from then on.
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

    /// How far a drain of `service` ("" = whole server) has come: whether the answer says
    /// "no new connections", how many of the probers seen within `drain_window_ms` were told
    /// so `drain_confirm` times in a row, the work in progress, and whether that makes the
    /// drain complete. Only in the process that answers probes (not in a forked worker, whose
    /// copy of the prober table is frozen: `Error::WrongProcess`).
    pub fn drain_status(&self, service: &str) -> Result<Drain, Error> {
        self.drain_status_bytes(service.as_bytes())
    }

    pub(crate) fn drain_status_bytes(&self, service: &[u8]) -> Result<Drain, Error> {
        let board = &self.shared.board;
        if !board.answers_here() {
            return Err(Error::WrongProcess);
        }
        match board.target(service) {
            Target::Unknown => Err(Error::UnknownService),
            target => Ok(board.drain(target, clock::now_ms())),
        }
    }

    /// Waits until the drain of `service` is complete (see [`Agent::drain_status`]), checking
    /// every 10 ms, for at most `timeout` (zero: checks once). Returns the last reading, or
    /// `Error::NotDrained` with it when the time is up. Blocks the calling thread: call it
    /// from a thread that may wait (never from a signal handler).
    pub fn wait_drained(&self, service: &str, timeout: Duration) -> Result<Drain, Error> {
        self.wait_drained_bytes(service.as_bytes(), timeout)
    }

    pub(crate) fn wait_drained_bytes(
        &self,
        service: &[u8],
        timeout: Duration,
    ) -> Result<Drain, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let drain = self.drain_status_bytes(service)?;
            if drain.complete {
                return Ok(drain);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::NotDrained(drain));
            }
            std::thread::sleep(left.min(DRAIN_POLL));
        }
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

    // ----- worker watchdog slots -----

    /// Claims a worker slot for the calling thread or process (`workers=N` slots); heart-beat
    /// it with [`Agent::worker_heartbeat`] more often than `worker_timeout_ms`.
    pub fn worker_register(&self) -> Result<usize, Error> {
        if self.shared.board.is_stopping() {
            return Err(Error::Stopped);
        }
        let workers = &self.shared.board.workers;
        if workers.is_empty() {
            return Err(Error::NoWorkerSlots);
        }
        workers
            .register(process::pid(), clock::now_ms())
            .ok_or(Error::NoWorkerSlots)
    }

    /// Records that the worker in `slot` is alive. No lock, no system call, no allocation;
    /// async-signal-safe.
    pub fn worker_heartbeat(&self, slot: usize) -> Result<(), Error> {
        if self.shared.board.is_stopping() {
            return Err(Error::Stopped);
        }
        if self.shared.board.worker_heartbeat(slot, clock::now_ms()) {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Releases a worker slot (a worker that exits cleanly).
    pub fn worker_unregister(&self, slot: usize) -> Result<(), Error> {
        if self.shared.board.workers.unregister(slot) {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Releases every slot of process `pid` (a prefork master that reaped a worker); returns
    /// how many were released.
    pub fn worker_release_pid(&self, pid: u32) -> usize {
        self.shared.board.workers.release_pid(pid)
    }

    // ----- checks -----

    /// Runs `check` on its own thread at once and then every `interval`; while it fails, or
    /// runs longer than `timeout` (zero: no limit), the service (or the whole server for
    /// "") answers DOWN with reason "check failed" or "check timed out". A new check fails
    /// until its first run passes.
    pub fn add_check(
        &self,
        service: &str,
        name: &str,
        interval: Duration,
        timeout: Duration,
        check: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Result<(), Error> {
        self.add_check_boxed(service.as_bytes(), name, interval, timeout, Box::new(check))
    }

    pub(crate) fn add_check_boxed(
        &self,
        service: &[u8],
        name: &str,
        interval: Duration,
        timeout: Duration,
        check: CheckFn,
    ) -> Result<(), Error> {
        if name.is_empty() || name.len() > crate::status::checks::MAX_CHECK_NAME {
            return Err(Error::InvalidCheck);
        }
        if interval.is_zero() {
            return Err(Error::InvalidCheck);
        }
        let target = self.target(service)?;
        let cell = self
            .shared
            .board
            .cell_index(target)
            .ok_or(Error::UnknownService)?;
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut control = self.lifecycle.lock();
        let slot = self
            .shared
            .board
            .checks
            .add(cell, name.as_bytes(), timeout_ms, clock::now_ms())
            .map_err(|e| match e {
                AddError::Duplicate => Error::Exists,
                AddError::Full => Error::TooMany,
            })?;
        let job = Arc::new(Mutex::new(check));
        match Runner::start(self.shared.clone(), name.to_string(), slot, interval, job) {
            Ok(runner) => {
                control.checks.push(runner);
                Ok(())
            }
            Err(source) => {
                self.shared.board.checks.remove(slot.0);
                Err(Error::Io {
                    what: "start a check thread",
                    source,
                })
            }
        }
    }

    /// Removes a check: it no longer counts from now on, and its function is not called
    /// again (a run in progress finishes on its own thread, which then drops the function).
    pub fn remove_check(&self, name: &str) -> Result<(), Error> {
        let mut control = self.lifecycle.lock();
        let i = control
            .checks
            .iter()
            .position(|r| r.name == name)
            .ok_or(Error::NotFound)?;
        let runner = control.checks.swap_remove(i);
        self.shared.board.checks.remove(runner.index);
        // Not joined: a hung check must not hang its remover. The thread ends after its run.
        drop(runner.finish());
        Ok(())
    }

    // ----- log -----

    /// Sends every log line (rate-limited) to `callback`, called on the agent's logger thread,
    /// never on the monitor thread. `None` stops it.
    pub fn set_log_callback(&self, callback: Option<LogCallback>) -> Result<(), Error> {
        let started = self
            .shared
            .logger
            .set_callback(callback)
            .map_err(|source| Error::Io {
                what: "start the logger thread",
                source,
            })?;
        if let Some(thread) = started {
            self.lifecycle.lock().log_thread = Some(thread);
        }
        Ok(())
    }

    // ----- fork -----

    /// In a child forked after `start` that is to take the agent over (a daemonizing server
    /// whose parent exits): starts the monitor thread (and the logger and check threads) in
    /// this process, over the inherited sockets and the shared board. From then on this
    /// process answers and owns the agent; the parent's `stop` or `free` no longer affect it.
    pub fn after_fork_child(&self) -> Result<(), Error> {
        self.lifecycle.after_fork_child(&self.shared)
    }

    /// In a worker forked after `start` (a prefork server): closes the worker's copies of the
    /// agent's sockets (so that they do not outlive the master) and keeps only the shared
    /// board: the worker's `set_state`, `set_weight`, `set_load`, `heartbeat` and worker slot
    /// calls reach the master's answers.
    pub fn after_fork_worker(&self) -> Result<(), Error> {
        self.lifecycle.after_fork_worker(&self.shared)
    }

    // ----- stop -----

    /// Stops answering: from now on the status is STOPPING; the monitor thread answers what is
    /// already queued, closes the sockets and exits; running checks finish. Waits up to
    /// `timeout` (`None`: for ever). Idempotent; after a timeout, calling again waits again.
    ///
    /// In a process that does not own the agent (a forked worker, or a parent whose child took
    /// it over) this releases only what belongs to this process and never stops the owner.
    pub fn stop(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.lifecycle.stop(&self.shared, timeout)
    }

    /// True once `stop` has been called (by the owner).
    pub fn is_stopped(&self) -> bool {
        self.shared.board.is_stopping()
    }

    /// Test hook: makes the monitor thread panic while handling the next datagram or TCP
    /// connection, to show that a fault inside the agent is caught and reported, never
    /// reaching the host.
    #[doc(hidden)]
    pub fn inject_fault(&self) {
        self.shared.inject_fault.store(true, Ordering::Release);
    }

    /// How many times a change woke the monitor thread so far (a `write` to its eventfd
    /// made by a host call, at most one per burst of changes, and only while a director
    /// subscribes or the log listens): for tests and benchmarks.
    #[doc(hidden)]
    pub fn change_wakeups(&self) -> u64 {
        self.shared.board.bell.writes()
    }

    /// Test hook: makes the monitor thread take `delay` to finish once stopped, to show how
    /// `stop` reports a timeout.
    #[doc(hidden)]
    pub fn inject_exit_delay(&self, delay: Duration) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self.shared.exit_delay_ms.store(ms, Ordering::Release);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // If the threads do not finish in time they are left to finish on their own: they
        // only hold their own references to the shared state, so nothing dangles.
        let _ = self.stop(Some(DROP_WAIT));
    }
}

/// Says at start what `systemd=on` does in this process.
fn log_systemd(shared: &Shared, target: Option<&crate::sys::notify::NotifyTarget>) {
    match target {
        Some(target) => log_line!(
            shared.logger,
            Level::Info,
            "systemd: notifying {} (READY at the first UP, STATUS on changes{})",
            target.name,
            match target.watchdog {
                Some(period) => format!(
                    ", WATCHDOG every {} ms while heartbeats are fresh",
                    period.as_millis() / 2
                ),
                None => String::new(),
            }
        ),
        None => log_line!(
            shared.logger,
            Level::Info,
            "systemd=on, but NOTIFY_SOCKET is not set (not run by systemd as Type=notify): \
             nothing is sent"
        ),
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
