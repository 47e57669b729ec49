//! The status board: what the host reports, shared with the monitor thread without locks.
//!
//! Host calls (`set_state`, `set_weight`, `set_load`, `heartbeat`, worker heartbeats) only
//! load, store and compare-and-swap atomics: no lock, no system call, no allocation. The
//! monitor thread reads the board to answer probes and never waits for a host thread.
//!
//! The board lives in shared memory (`sys/shm.rs`): children forked after `lbagent_start` (the
//! workers of a prefork server) report into the same board the master's monitor reads.
//!
//! Startup: the start ends at the first heartbeat, or when the whole server's state leaves
//! STARTING (at once with another `initial_state`), whichever comes first. The watchdog is
//! armed from then on: a host that warms up without heart-beating is answered STARTING, as it
//! reports, however long that takes, and a host that reports UP but never heart-beats is caught.
//! `start_timeout_ms` bounds the start: past it, a start that has not ended is DOWN, "start
//! timed out", until it ends.
//!
//! What a director is told combines, in this order of precedence:
//! 1. the agent's own conditions: a caught fault (DOWN), `lbagent_stop` (STOPPING), the
//!    host watchdog (DOWN), a start that timed out (DOWN);
//! 2. the state furthest from serving among the host's whole-server state, the service's
//!    state, stalled workers (DOWN) and failing checks (DOWN);
//! 3. an operator's override (`operator.rs`), only when it is further from serving than 2.

pub(crate) mod bell;
mod cell;
pub(crate) mod checks;
pub(crate) mod operator;
pub(crate) mod probers;
pub(crate) mod runner;
pub mod shaping;
pub(crate) mod workers;

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use cell::Cell;
pub use cell::{MESSAGE_CAPACITY, Text};
pub use workers::WorkerPolicy;

use crate::state::{Reason, State};
use crate::sys::shm::{ShmSlice, Zeroable};
use crate::sys::{clock, process};
use bell::Bell;
use checks::Checks;
use operator::Operator;
pub use operator::Override;
pub use probers::ProberKind;
use probers::Probers;
use shaping::{ShapeCell, ShapingConfig};
use workers::{Workers, WorkersEffect};

/// Exactly what a director is told about the whole server or one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The state answered.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// Percent of the weight configured on the director, 0..=100.
    pub weight_pct: u8,
    /// Work in progress reported by the host.
    pub in_use: u32,
    /// Capacity reported by the host (0 = unknown).
    pub capacity: u32,
    /// Increases whenever the state, reason, weight or message answered changes.
    pub generation: u32,
    /// Milliseconds since the state answered last changed (saturating).
    pub since_ms: u32,
    /// The host's reason text, or the agent's own.
    pub message: Text,
}

impl Status {
    /// True when the server should receive new connections: up, with a weight above zero.
    pub fn is_serving(&self) -> bool {
        self.state == State::Up && self.weight_pct > 0
    }
}

/// Which cell a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The whole server (empty service name).
    Server,
    /// The configured service with this index.
    Service(usize),
    /// A name that is not configured.
    Unknown,
}

impl Target {
    /// The cell index: 0 for the server, 1.. for services.
    fn cell(self) -> Option<usize> {
        match self {
            Target::Server => Some(0),
            Target::Service(i) => Some(i + 1),
            Target::Unknown => None,
        }
    }
}

/// The agent-wide part of the board, shared with forked children.
#[derive(Zeroable)]
#[repr(C)]
struct Header {
    /// Clock time of the last heartbeat; 0 before the first.
    heartbeat_at: AtomicU64,
    /// Clock time when the whole server's state first left STARTING; 0 before.
    left_starting_at: AtomicU64,
    /// Clock time of the start (`Board::new`).
    started_at: AtomicU64,
    /// Watchdog transitions observed so far; odd while expired.
    watchdog_flips: AtomicU64,
    watchdog_changed_at: AtomicU64,
    /// Start-timeout transitions observed so far; odd while timed out.
    start_flips: AtomicU64,
    start_changed_at: AtomicU64,
    /// The process whose monitor answers for this board (it alone may stop it), shifted left
    /// by one, with bit 0 set once it stopped. One word, so that a parent's stop and a
    /// child's take-over after a fork cannot interleave badly.
    ownership: AtomicU64,
    stopping_at: AtomicU64,
    faults: AtomicU64,
    fault_at: AtomicU64,
    /// Changes of the workers' census observed so far, the last census, and when it changed.
    worker_flips: AtomicU64,
    worker_key: AtomicU64,
    worker_changed_at: AtomicU64,
}

/// How the board is laid out and judged (from the configuration).
pub(crate) struct BoardConfig<'a> {
    pub initial: State,
    pub services: &'a [String],
    pub watchdog_ms: u32,
    pub workers: usize,
    pub worker_timeout_ms: u32,
    pub worker_policy: WorkerPolicy,
    pub shaping: ShapingConfig,
    pub drain: DrainConfig,
}

/// When a drain is complete (from the configuration: `drain_window_ms`, `drain_confirm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DrainConfig {
    /// Probers seen within this many milliseconds must have been told.
    pub window_ms: u32,
    /// Non-serving answers in a row each of them must have had.
    pub confirm: u32,
}

impl DrainConfig {
    pub(crate) const DEFAULT: DrainConfig = DrainConfig {
        window_ms: 10_000,
        confirm: 2,
    };
}

/// How far a drain has come: what `lbagent_drain_status` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    /// The target's answer says: no new connections (any state but UP, or UP at weight 0).
    pub draining: bool,
    /// Draining, every prober seen within `drain_window_ms` was told so at least
    /// `drain_confirm` times in a row, no prober went unrecorded, and `in_use` is 0.
    pub complete: bool,
    /// Probers seen within the window that were told at least `drain_confirm` times.
    pub probers_told: u32,
    /// Probers seen within the window that were not (yet).
    pub probers_pending: u32,
    /// A prober could not be recorded within the window (more probers than the table holds):
    /// the drain cannot be complete until the window has passed without that.
    pub probers_untracked: bool,
    /// Work in progress the host reports (`set_load`); for the whole server, the sum over
    /// the server and its services.
    pub in_use: u64,
    /// Milliseconds since the answer stopped saying "serving" (0 while serving).
    pub drain_ms: u32,
    /// The state answered.
    pub state: State,
}

/// Everything the host reports and the agent's own conditions, readable by the monitor.
pub(crate) struct Board {
    header: ShmSlice<Header>,
    /// Cell 0 is the whole server; cell i + 1 is service i.
    cells: ShmSlice<Cell>,
    names: Vec<Box<[u8]>>,
    watchdog_ms: u64,
    start_timeout_ms: u64,
    pub(crate) workers: Workers,
    pub(crate) checks: Checks,
    /// The operator's override (`control=`).
    pub(crate) operator: Operator,
    /// Rung on every change of what directors are told, for the monitor's listeners.
    pub(crate) bell: Bell,
    /// Cell i's slow start and load filter (shared memory, like the cells).
    shapes: ShmSlice<ShapeCell>,
    shaping: ShapingConfig,
    /// The probers answered recently (this process's monitor thread writes it).
    pub(crate) probers: Probers,
    drain_confirm: u32,
}

impl Board {
    pub(crate) fn new(config: &BoardConfig<'_>, now: u64) -> std::io::Result<Board> {
        let board = Board {
            header: ShmSlice::new(1)?,
            cells: ShmSlice::new(config.services.len() + 1)?,
            names: config
                .services
                .iter()
                .map(|s| s.as_bytes().to_vec().into_boxed_slice())
                .collect(),
            watchdog_ms: u64::from(config.watchdog_ms),
            start_timeout_ms: 0,
            workers: Workers::new(
                config.workers,
                config.worker_timeout_ms,
                config.worker_policy,
            )?,
            checks: Checks::new()?,
            operator: Operator::new(now)?,
            bell: Bell::new()?,
            shapes: ShmSlice::new(config.services.len() + 1)?,
            shaping: config.shaping,
            probers: Probers::new(config.drain.window_ms),
            drain_confirm: config.drain.confirm,
        };
        board.cells[0].init(config.initial, Reason::Host, None, now);
        // A service starts up: it follows the whole server until the host sets it.
        for cell in &board.cells[1..] {
            cell.init(State::Up, Reason::Host, None, now);
        }
        let h = board.header();
        h.started_at.store(now, Ordering::Relaxed);
        if config.initial != State::Starting {
            h.left_starting_at.store(now.max(1), Ordering::Relaxed);
        }
        h.ownership
            .store(u64::from(process::pid()) << 1, Ordering::Release);
        Ok(board)
    }

    /// Bounds the start (`start_timeout_ms`; 0: no bound).
    pub(crate) fn with_start_timeout(mut self, start_timeout_ms: u32) -> Board {
        self.start_timeout_ms = u64::from(start_timeout_ms);
        self
    }

    fn header(&self) -> &Header {
        &self.header[0]
    }

    /// The watchdog's deadline in milliseconds (0: off).
    pub(crate) fn watchdog_ms(&self) -> u64 {
        self.watchdog_ms
    }

    /// Records that the whole server's state left STARTING (the start ends): one load, and a
    /// compare-and-swap the first time only.
    fn leave_starting(&self, target: Target, state: State, now: impl FnOnce() -> u64) {
        let at = &self.header().left_starting_at;
        if target == Target::Server && state != State::Starting && at.load(Ordering::Relaxed) == 0 {
            let _ = at.compare_exchange(0, now().max(1), Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// The latest sign that the start ended, at the first heartbeat or when the whole server
    /// left STARTING, and what the watchdog counts from; 0 while the start lasts.
    fn alive_at(&self) -> u64 {
        let h = self.header();
        h.heartbeat_at
            .load(Ordering::Acquire)
            .max(h.left_starting_at.load(Ordering::Acquire))
    }

    /// Finds the cell for a service name; empty means the whole server.
    pub(crate) fn target(&self, name: &[u8]) -> Target {
        if name.is_empty() {
            return Target::Server;
        }
        match self.names.iter().position(|n| &**n == name) {
            Some(i) => Target::Service(i),
            None => Target::Unknown,
        }
    }

    /// The configured service names, in order.
    pub(crate) fn service_names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(|n| std::str::from_utf8(n).unwrap_or(""))
    }

    /// The cell index of a target (0: the whole server).
    pub(crate) fn cell_index(&self, target: Target) -> Option<usize> {
        target.cell()
    }

    fn cell(&self, target: Target) -> Option<&Cell> {
        target.cell().and_then(|i| self.cells.get(i))
    }

    /// Sets a cell's state; returns false for an unknown target.
    pub(crate) fn set_state(
        &self,
        target: Target,
        state: State,
        reason: Reason,
        message: Option<&Text>,
        now: u64,
    ) -> bool {
        match self.cell(target) {
            Some(cell) => {
                if cell.set(state, reason, message, now) {
                    self.leave_starting(target, state, || now);
                    self.bell.ring();
                }
                true
            }
            None => false,
        }
    }

    /// `set_state` at the current clock time, read only when the state changes.
    pub(crate) fn set_state_now(
        &self,
        target: Target,
        state: State,
        reason: Reason,
        message: Option<&Text>,
    ) -> bool {
        match self.cell(target) {
            Some(cell) => {
                // Leaving STARTING changes the cell: a call that changed nothing cannot end the
                // start, and does not look at the header (another cache line).
                if cell.set_with_clock(state, reason, message, clock::now_ms) {
                    self.leave_starting(target, state, clock::now_ms);
                    self.bell.ring();
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_weight(&self, target: Target, weight: u8) -> bool {
        let Some(cell) = self.cell(target) else {
            return false;
        };
        if cell.set_weight(weight) {
            self.bell.ring();
        }
        true
    }

    pub(crate) fn set_load(&self, target: Target, in_use: u32, capacity: u32) -> bool {
        self.cell(target)
            .map(|c| c.set_load(in_use, capacity))
            .is_some()
    }

    pub(crate) fn heartbeat(&self, now: u64) {
        let h = self.header();
        // The clock moves once per tick (1-4 ms): most heartbeats store what is there already.
        // Skipping those keeps the cache line shared between the host's threads instead of
        // moving it from core to core at every call.
        if h.heartbeat_at.load(Ordering::Relaxed) != now {
            h.heartbeat_at.store(now, Ordering::Release);
            // A heartbeat after the watchdog (or the start's bound) was seen expired is a
            // recovery: tell listeners.
            let expired = (self.watchdog_ms > 0
                && h.watchdog_flips.load(Ordering::Relaxed) & 1 == 1)
                || (self.start_timeout_ms > 0 && h.start_flips.load(Ordering::Relaxed) & 1 == 1);
            if expired {
                self.bell.ring();
            }
        }
    }

    /// A worker's heartbeat; false when `slot` is not registered.
    pub(crate) fn worker_heartbeat(&self, slot: usize, now: u64) -> bool {
        match self.workers.heartbeat(slot, now) {
            Some(recovered) => {
                if recovered {
                    self.bell.ring();
                }
                true
            }
            None => false,
        }
    }

    /// The earliest clock time after `now` at which a condition judged lazily (the watchdog,
    /// a stalled worker, an overdue check) could change what is answered: the monitor's timer
    /// while it listens for changes. Changes the host makes ring the bell instead.
    pub(crate) fn next_deadline(&self, now: u64) -> Option<u64> {
        let h = self.header();
        let alive_at = self.alive_at();
        // The watchdog counts once the start has ended; until then, the start's own bound.
        let watchdog = (self.watchdog_ms > 0 && alive_at != 0)
            .then(|| alive_at + self.watchdog_ms + 1)
            .filter(|at| *at > now);
        let start = (self.start_timeout_ms > 0 && alive_at == 0)
            .then(|| h.started_at.load(Ordering::Acquire) + self.start_timeout_ms + 1)
            .filter(|at| *at > now);
        [
            watchdog,
            start,
            self.workers.next_stall(now),
            self.checks.next_overdue(now),
            self.operator.next_deadline(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The earliest time a target's shaped weight should be read again to be seen moving (for
    /// subscribers: the watch asks only while it has some).
    pub(crate) fn next_shaping_look(&self, now: u64) -> Option<u64> {
        if !self.shaping.is_on() {
            return None;
        }
        self.shapes
            .iter()
            .filter_map(|shape| shape.next_look(&self.shaping, now))
            .min()
    }

    /// Marks the board stopped, if the calling process owns it; returns whether it does.
    pub(crate) fn begin_stopping(&self, now: u64) -> bool {
        let h = self.header();
        let mine = u64::from(process::pid()) << 1;
        match h
            .ownership
            .compare_exchange(mine, mine | 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                h.stopping_at.store(now, Ordering::Release);
                self.bell.ring();
                true
            }
            Err(current) => current == mine | 1,
        }
    }

    /// True in the process whose monitor thread answers for this board (not in a forked
    /// worker, nor in a parent whose child took the agent over).
    pub(crate) fn answers_here(&self) -> bool {
        self.header().ownership.load(Ordering::Acquire) >> 1 == u64::from(process::pid())
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.header().ownership.load(Ordering::Acquire) & 1 == 1
    }

    /// Makes the calling process the one that answers for this board (after a fork), not
    /// stopped: a parent that stops as it leaves does not stop the child that took over.
    pub(crate) fn take_ownership(&self) {
        self.header()
            .ownership
            .swap(u64::from(process::pid()) << 1, Ordering::AcqRel);
    }

    /// Records a caught internal panic: from now on the agent answers DOWN, "agent fault".
    pub(crate) fn record_fault(&self, now: u64) {
        let h = self.header();
        if h.faults.fetch_add(1, Ordering::AcqRel) == 0 {
            h.fault_at.store(now, Ordering::Release);
            self.bell.ring();
        }
    }

    pub(crate) fn faults(&self) -> u64 {
        self.header().faults.load(Ordering::Acquire)
    }

    /// Counts, once whoever sees it first, each change of a condition that is judged lazily
    /// (when a probe or a status call looks): returns the number of changes so far.
    fn count_flips(
        flips: &AtomicU64,
        changed_at: &AtomicU64,
        key_now: u64,
        key: &AtomicU64,
        at: u64,
    ) -> u64 {
        loop {
            let seen = key.load(Ordering::Acquire);
            let count = flips.load(Ordering::Acquire);
            if seen == key_now {
                return count;
            }
            if key
                .compare_exchange(seen, key_now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                changed_at.store(at, Ordering::Release);
                return flips.fetch_add(1, Ordering::AcqRel) + 1;
            }
        }
    }

    /// Judges a condition that is looked at lazily (when a probe or a status call asks):
    /// `judge()` says whether it holds and since when (or, if not, since when not). Each
    /// change is counted once, by whoever sees it first, in `flips` (odd while it holds), so
    /// that it shows in the generation. Returns `(holds, changes so far, time of the last)`.
    pub(super) fn observe_condition(
        flips: &AtomicU64,
        changed_at: &AtomicU64,
        judge: impl Fn() -> (bool, u64),
    ) -> (bool, u64, u64) {
        loop {
            let (holds, at) = judge();
            let seen = flips.load(Ordering::Acquire);
            if (seen & 1 == 1) == holds {
                return (holds, seen, changed_at.load(Ordering::Acquire));
            }
            if flips
                .compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                changed_at.store(at, Ordering::Release);
                return (holds, seen + 1, at);
            }
        }
    }

    /// Whether the watchdog has expired now (never before the start ended). Returns
    /// `(expired, transitions so far, time of the last transition)`.
    fn observe_watchdog(&self, now: u64) -> (bool, u64, u64) {
        if self.watchdog_ms == 0 {
            return (false, 0, 0);
        }
        let h = self.header();
        Self::observe_condition(&h.watchdog_flips, &h.watchdog_changed_at, || {
            let alive_at = self.alive_at();
            // Expiry happened when the deadline passed; recovery with the heartbeat.
            if alive_at != 0 && now.saturating_sub(alive_at) > self.watchdog_ms {
                (true, alive_at + self.watchdog_ms)
            } else {
                (false, alive_at)
            }
        })
    }

    /// Whether the start has lasted longer than `start_timeout_ms` without ending. Returns
    /// `(timed out, transitions so far, time of the last transition)`.
    fn observe_start(&self, now: u64) -> (bool, u64, u64) {
        if self.start_timeout_ms == 0 {
            return (false, 0, 0);
        }
        let h = self.header();
        Self::observe_condition(&h.start_flips, &h.start_changed_at, || {
            let alive_at = self.alive_at();
            let deadline = h.started_at.load(Ordering::Acquire) + self.start_timeout_ms;
            if alive_at == 0 && now > deadline {
                (true, deadline)
            } else {
                (false, alive_at)
            }
        })
    }

    /// Exactly what a director is told about `target` at clock time `now`.
    pub(crate) fn status(&self, target: Target, now: u64) -> Status {
        self.answer(target, now).0
    }

    /// What a director would be told without the operator's override, before the slow start
    /// and weight from load shape its weight (`lbagent-ctl status` shows both).
    pub(crate) fn host_status(&self, target: Target, now: u64) -> Status {
        self.judge(target, now, false)
    }

    /// Sets the operator's override (`state` drain or maint; up clears it), ending at `until`
    /// (clock time) if given. Rings the bell when what is answered may have changed.
    pub(crate) fn set_override(
        &self,
        state: State,
        message: Option<&Text>,
        until: Option<u64>,
        now: u64,
    ) -> bool {
        let changed = self.operator.set(state, message, until, now);
        if changed {
            self.bell.ring();
        }
        changed
    }

    /// The operator's override as set (expired or not).
    pub(crate) fn operator_override(&self) -> Option<Override> {
        self.operator.get()
    }

    /// Clock time of the last heartbeat (0: none yet).
    pub(crate) fn heartbeat_at(&self) -> u64 {
        self.header().heartbeat_at.load(Ordering::Acquire)
    }

    /// `status`, with the clock time since which the answer has been seen serving, or not
    /// serving (the start of a slow start, or of a drain).
    pub(crate) fn answer(&self, target: Target, now: u64) -> (Status, u64) {
        let status = self.judge(target, now, true);
        let Some(index) = target.cell() else {
            return (status, now);
        };
        let shape = &self.shapes[index];
        let serving = status.is_serving();
        let since = shape.observe(serving, now);
        if !self.shaping.is_on() {
            return (status, since);
        }
        let mut status = status;
        if serving {
            let ramp = shaping::ramp_permille(
                self.shaping.slow_start_ms,
                self.shaping.slow_start_min_pct,
                now.saturating_sub(since),
            );
            let load = match &self.shaping.load {
                Some(config) => {
                    shape.load_factor(config, shaping::spare(status.in_use, status.capacity), now)
                }
                None => 1.0,
            };
            status.weight_pct = shaping::shaped_weight(status.weight_pct, ramp, load);
        }
        let changes = shape.weight_changes(status.weight_pct);
        status.generation = status.generation.wrapping_add(changes as u32);
        (status, since)
    }

    /// How far a drain of `target` has come at `now`.
    pub(crate) fn drain(&self, target: Target, now: u64) -> Drain {
        let (status, since) = self.answer(target, now);
        self.drain_of(target, &status, since, now)
    }

    /// `drain`, from the answer `answer` just gave (`status`, and the time since which it
    /// has been seen serving or not).
    pub(crate) fn drain_of(&self, target: Target, status: &Status, since: u64, now: u64) -> Drain {
        let draining = !status.is_serving();
        let mut drain = Drain {
            draining,
            complete: false,
            probers_told: 0,
            probers_pending: 0,
            probers_untracked: false,
            in_use: u64::from(status.in_use),
            drain_ms: 0,
            state: status.state,
        };
        let Some(cell) = target.cell() else {
            return drain;
        };
        let tally = self
            .probers
            .tally((cell != 0).then_some(cell), self.drain_confirm, now);
        if cell == 0 {
            // The whole server: its own load and every service's.
            drain.in_use = self.cells.iter().map(|c| u64::from(c.read().in_use)).sum();
        }
        drain.probers_told = tally.told;
        drain.probers_pending = tally.pending;
        drain.probers_untracked = tally.overflowed;
        drain.complete = draining && tally.pending == 0 && !tally.overflowed && drain.in_use == 0;
        if draining {
            // The answer stopped saying "serving" when first seen so, or when its state
            // changed, whichever came first (a drain nobody looked at began when it was set).
            let began = if status.state == State::Up {
                since
            } else {
                since.min(now.saturating_sub(u64::from(status.since_ms)))
            };
            drain.drain_ms = u32::try_from(now.saturating_sub(began)).unwrap_or(u32::MAX);
        }
        drain
    }

    /// Records the answer `status` given to a prober about `target` (monitor thread only);
    /// returns the non-serving answers it has had in a row.
    pub(crate) fn record_prober(
        &self,
        addr: std::net::IpAddr,
        kind: ProberKind,
        target: Target,
        status: &Status,
        now: u64,
    ) -> u32 {
        match target.cell() {
            Some(cell) => self
                .probers
                .record(addr, kind, cell, status.is_serving(), now),
            None => 0,
        }
    }

    /// What the host's state, weight and checks (and, `with_operator`, the operator's
    /// override) make of `target`, before the weight is shaped.
    fn judge(&self, target: Target, now: u64, with_operator: bool) -> Status {
        let since = |at: u64| u32::try_from(now.saturating_sub(at)).unwrap_or(u32::MAX);
        let server = self.cells[0].read();
        let own = match target {
            Target::Server => None,
            Target::Service(i) => self.cells.get(i + 1).map(Cell::read),
            Target::Unknown => {
                return Status {
                    state: State::Unknown,
                    reason: Reason::UnknownService,
                    weight_pct: 0,
                    in_use: 0,
                    capacity: 0,
                    generation: 0,
                    since_ms: 0,
                    message: Text::from_static("unknown service"),
                };
            }
        };
        let (expired, watchdog_flips, watchdog_at) = self.observe_watchdog(now);
        let (start_timed_out, start_flips, start_at) = self.observe_start(now);
        let h = self.header();
        let stopping = self.is_stopping();
        let faults = self.faults();

        // The host's view: the whole server and the service, the one further from serving
        // decides; the service's weight is scaled by the server's.
        let host = match own {
            Some(svc) if svc.state.severity() > server.state.severity() => svc,
            _ => server,
        };
        let mut weight = match own {
            Some(svc) => u32::from(server.weight) * u32::from(svc.weight) / 100,
            None => u32::from(server.weight),
        };
        let mut decisive = (
            host.state,
            host.reason,
            host.message,
            server.changed_at.max(own.map_or(0, |c| c.changed_at)),
        );

        // Workers (only when slots are configured).
        let mut worker_flips = 0;
        if !self.workers.is_empty() {
            worker_flips = Self::count_flips(
                &h.worker_flips,
                &h.worker_changed_at,
                self.workers.key(now),
                &h.worker_key,
                now,
            );
            match self.workers.effect(now) {
                WorkersEffect::None => {}
                WorkersEffect::Scale { live, active } => weight = weight * live / active.max(1),
                WorkersEffect::Down(text) => {
                    if State::Down.severity() > decisive.0.severity() {
                        let at = h.worker_changed_at.load(Ordering::Acquire);
                        decisive = (State::Down, Reason::WorkerStalled, text, at);
                    }
                }
            }
        }
        // Checks on the whole server and on the service.
        let checks = self
            .checks
            .view([Some(0), target.cell().filter(|c| *c != 0)], now);
        if let Some((reason, text, at)) = checks.failing {
            if State::Down.severity() > decisive.0.severity() {
                decisive = (State::Down, reason, text, at);
            }
        }

        // Every term only grows, so the sum grows on every change of what is answered.
        let mut generation = server
            .generation
            .wrapping_add(own.map_or(0, |c| c.generation))
            .wrapping_add(watchdog_flips as u32)
            .wrapping_add(start_flips as u32)
            .wrapping_add(u32::from(stopping))
            .wrapping_add(u32::from(faults > 0))
            .wrapping_add(worker_flips as u32)
            .wrapping_add(checks.generation);
        let operator = if with_operator {
            let (in_force, flips, cell_generation, at) = self.operator.observe(now);
            generation = generation
                .wrapping_add(flips as u32)
                .wrapping_add(cell_generation);
            in_force.map(|o| (o, at))
        } else {
            None
        };
        let load = own.unwrap_or(server);
        let mut status = Status {
            state: decisive.0,
            reason: decisive.1,
            weight_pct: weight.min(100) as u8,
            in_use: load.in_use,
            capacity: load.capacity,
            generation,
            since_ms: since(
                decisive
                    .3
                    .max(if watchdog_flips > 0 { watchdog_at } else { 0 })
                    .max(if start_flips > 0 { start_at } else { 0 }),
            ),
            message: decisive.2,
        };
        // The operator's override: only toward less serving.
        if let Some((o, at)) = operator {
            if o.state.severity() > status.state.severity() {
                status.state = o.state;
                status.reason = Reason::Operator;
                status.since_ms = since(at);
                status.message = if o.message.as_bytes().is_empty() {
                    Text::from_static(Reason::Operator.describe())
                } else {
                    o.message
                };
            }
        }
        let overrides = if faults > 0 {
            Some((
                State::Down,
                Reason::AgentFault,
                h.fault_at.load(Ordering::Acquire),
            ))
        } else if stopping {
            Some((
                State::Stopping,
                Reason::AgentStopping,
                h.stopping_at.load(Ordering::Acquire),
            ))
        } else if expired {
            Some((State::Down, Reason::WatchdogExpired, watchdog_at))
        } else if start_timed_out {
            Some((State::Down, Reason::StartTimedOut, start_at))
        } else {
            None
        };
        if let Some((state, reason, at)) = overrides {
            status.state = state;
            status.reason = reason;
            status.since_ms = since(at);
            status.message = Text::from_static(reason.describe());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    fn board_with(watchdog_ms: u32, workers: usize, policy: WorkerPolicy) -> Board {
        let services = ["game".to_string(), "chat".to_string()];
        let config = BoardConfig {
            initial: State::Starting,
            services: &services,
            watchdog_ms,
            workers,
            worker_timeout_ms: 1000,
            worker_policy: policy,
            shaping: ShapingConfig::OFF,
            drain: DrainConfig::DEFAULT,
        };
        Board::new(&config, 1000).unwrap()
    }

    fn board(watchdog_ms: u32) -> Board {
        board_with(watchdog_ms, 0, WorkerPolicy::Any)
    }

    #[test]
    fn text_is_cleaned_and_cut() {
        assert_eq!(Text::from_reason(b"ready").as_str(), "ready");
        assert_eq!(Text::from_reason(b"a\nb\r\0c").as_str(), "a b  c");
        let bad = b"bad \xff\xfe utf8 \xe2\x82";
        assert_eq!(
            Text::from_reason(bad).as_str(),
            String::from_utf8_lossy(bad)
        );
        let long = "é".repeat(200); // 400 bytes
        let t = Text::from_reason(long.as_bytes());
        assert_eq!(t.as_bytes().len(), 254);
        assert!(t.as_str().chars().all(|c| c == 'é'));
        assert_eq!(Text::from_reason(&[b'x'; 10_000]).as_bytes().len(), 255);
    }

    #[test]
    fn initial_and_set() {
        let b = board(0);
        let s = b.status(Target::Server, 1000);
        assert_eq!(
            (s.state, s.reason, s.weight_pct),
            (State::Starting, Reason::Host, 100)
        );
        assert_eq!(s.generation, 0);
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ready")),
            1500,
        );
        let s = b.status(Target::Server, 1600);
        assert_eq!(s.state, State::Up);
        assert_eq!(s.message.as_str(), "ready");
        assert_eq!(s.since_ms, 100);
        assert_eq!(s.generation, 1);
        // The same call again changes nothing.
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ready")),
            1700,
        );
        assert_eq!(b.status(Target::Server, 1700).generation, 1);
        // A new message alone is a change, but not a state change.
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ok")),
            1800,
        );
        let s = b.status(Target::Server, 1900);
        assert_eq!(
            (s.generation, s.since_ms, s.message.as_str()),
            (2, 400, "ok")
        );
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1900);
        assert_eq!(b.status(Target::Server, 1900).message.as_str(), "");
        b.set_weight(Target::Server, 50);
        b.set_weight(Target::Server, 50);
        let s = b.status(Target::Server, 1900);
        assert_eq!((s.weight_pct, s.generation), (50, 4));
        b.set_load(Target::Server, 3, 10);
        let s = b.status(Target::Server, 1900);
        assert_eq!((s.in_use, s.capacity, s.generation), (3, 10, 4));
    }

    #[test]
    fn services_combine_with_the_server() {
        let b = board(0);
        let game = b.target(b"game");
        assert_eq!(game, Target::Service(0));
        assert_eq!(b.target(b"nope"), Target::Unknown);
        assert_eq!(b.target(b""), Target::Server);
        // The server is starting: so is every service.
        assert_eq!(b.status(game, 1000).state, State::Starting);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        assert_eq!(b.status(game, 1000).state, State::Up);
        b.set_state(
            game,
            State::Drain,
            Reason::Host,
            Some(&Text::from_static("deploy")),
            1000,
        );
        let s = b.status(game, 1000);
        assert_eq!((s.state, s.message.as_str()), (State::Drain, "deploy"));
        assert_eq!(b.status(Target::Server, 1000).state, State::Up);
        b.set_weight(Target::Server, 50);
        b.set_weight(game, 50);
        assert_eq!(b.status(game, 1000).weight_pct, 25);
        let u = b.status(Target::Unknown, 1000);
        assert_eq!(
            (u.state, u.reason),
            (State::Unknown, Reason::UnknownService)
        );
        assert!(!b.set_state(Target::Unknown, State::Up, Reason::Host, None, 1000));
    }

    #[test]
    fn watchdog_expires_and_recovers() {
        let b = board(3000);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        let g0 = b.status(Target::Server, 1000).generation;
        assert_eq!(b.status(Target::Server, 4000).state, State::Up);
        let s = b.status(Target::Server, 4500);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WatchdogExpired));
        assert_eq!(s.message.as_str(), "watchdog expired");
        assert_eq!(s.since_ms, 500);
        assert!(s.generation > g0);
        // Services go down with the server.
        assert_eq!(
            b.status(Target::Service(1), 4500).reason,
            Reason::WatchdogExpired
        );
        b.heartbeat(5000);
        let r = b.status(Target::Server, 5100);
        assert_eq!((r.state, r.reason), (State::Up, Reason::Host));
        assert!(r.generation > s.generation);
    }

    #[test]
    fn the_watchdog_waits_for_the_start_to_end() {
        // Warm-up without heartbeats: STARTING as the host says, however long it takes.
        let b = board(3000);
        let s = b.status(Target::Server, 1_000_000);
        assert_eq!((s.state, s.reason), (State::Starting, Reason::Host));
        assert_eq!(s.generation, 0);
        // A host update during warm-up (STARTING, with a text) does not end the start.
        b.set_state(
            Target::Server,
            State::Starting,
            Reason::Host,
            Some(&Text::from_static("loading 40%")),
            1_000_000,
        );
        assert_eq!(b.status(Target::Server, 2_000_000).state, State::Starting);
        // The first heartbeat arms it.
        b.heartbeat(2_000_000);
        assert_eq!(b.status(Target::Server, 2_003_000).state, State::Starting);
        let s = b.status(Target::Server, 2_003_001);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WatchdogExpired));
        assert_eq!(s.since_ms, 1);
    }

    #[test]
    fn up_without_a_heartbeat_arms_the_watchdog() {
        let b = board(3000);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 5000);
        assert!(b.status(Target::Server, 8000).is_serving());
        let s = b.status(Target::Server, 8001);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WatchdogExpired));
        // Going back to STARTING later (a reload) does not disarm it.
        b.heartbeat(9000);
        b.set_state(Target::Server, State::Starting, Reason::Host, None, 9000);
        assert_eq!(b.status(Target::Server, 12_000).state, State::Starting);
        assert_eq!(
            b.status(Target::Server, 12_001).reason,
            Reason::WatchdogExpired
        );
        // A service's state does not end the start.
        let c = board(3000);
        c.set_state(Target::Service(0), State::Up, Reason::Host, None, 1000);
        assert_eq!(c.status(Target::Server, 100_000).state, State::Starting);
    }

    #[test]
    fn another_initial_state_is_a_start_that_ended() {
        let services: [String; 0] = [];
        let config = BoardConfig {
            initial: State::Up,
            services: &services,
            watchdog_ms: 3000,
            workers: 0,
            worker_timeout_ms: 1000,
            worker_policy: WorkerPolicy::Any,
            shaping: ShapingConfig::OFF,
            drain: DrainConfig::DEFAULT,
        };
        let b = Board::new(&config, 1000).unwrap().with_start_timeout(500);
        assert!(b.status(Target::Server, 4000).is_serving());
        assert_eq!(
            b.status(Target::Server, 4001).reason,
            Reason::WatchdogExpired
        );
    }

    #[test]
    fn a_start_that_does_not_end_times_out() {
        let b = board(3000).with_start_timeout(5000);
        let s = b.status(Target::Server, 6000);
        assert_eq!(
            (s.state, s.reason, s.generation),
            (State::Starting, Reason::Host, 0)
        );
        let s = b.status(Target::Server, 6250);
        assert_eq!(
            (s.state, s.reason, s.message.as_str(), s.since_ms),
            (State::Down, Reason::StartTimedOut, "start timed out", 250)
        );
        assert_eq!(s.generation, 1);
        // Every service with it.
        assert_eq!(
            b.status(Target::Service(1), 6250).reason,
            Reason::StartTimedOut
        );
        // The start ends (the first heartbeat): the host's state again, and the watchdog.
        b.heartbeat(7000);
        let r = b.status(Target::Server, 7100);
        assert_eq!((r.state, r.reason), (State::Starting, Reason::Host));
        assert_eq!((r.generation, r.since_ms), (2, 100));
        assert_eq!(
            b.status(Target::Server, 10_001).reason,
            Reason::WatchdogExpired
        );
        // Ended by UP instead, before the deadline: never times out.
        let b = board(0).with_start_timeout(5000);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 2000);
        assert!(b.status(Target::Server, 1_000_000).is_serving());
        // No bound: a start may take any time.
        let b = board(0);
        assert_eq!(
            b.status(Target::Server, u64::MAX / 2).state,
            State::Starting
        );
    }

    #[test]
    fn operator_override_wins_only_toward_less_serving_and_expires() {
        let b = board(0);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        let g0 = b.status(Target::Server, 1000).generation;
        assert!(b.set_override(
            State::Drain,
            Some(&Text::from_static("kernel update")),
            Some(5000),
            2000
        ));
        let s = b.status(Target::Service(0), 2500);
        assert_eq!(
            (s.state, s.reason, s.message.as_str(), s.since_ms),
            (State::Drain, Reason::Operator, "kernel update", 500)
        );
        assert!(s.generation > g0);
        // The host's own view is kept, and shown apart.
        let h = b.host_status(Target::Server, 2500);
        assert_eq!((h.state, h.reason), (State::Up, Reason::Host));
        // The host's DOWN is further from serving: it wins.
        b.set_state(Target::Server, State::Down, Reason::Host, None, 3000);
        assert_eq!(b.status(Target::Server, 3000).state, State::Down);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 3100);
        let before = b.status(Target::Server, 4999);
        assert_eq!(before.state, State::Drain);
        // It ends by itself, as a change (a new generation).
        assert_eq!(b.next_deadline(4000), Some(5001));
        let after = b.status(Target::Server, 5000);
        assert_eq!((after.state, after.reason), (State::Up, Reason::Host));
        assert!(after.generation > before.generation);
        assert_eq!(b.next_deadline(5001), None);
        // Maint until cleared; `up` clears it.
        assert!(b.set_override(State::Maint, None, None, 6000));
        let s = b.status(Target::Server, 9_000_000);
        assert_eq!(
            (s.state, s.reason, s.message.as_str()),
            (State::Maint, Reason::Operator, "set by operator")
        );
        assert!(!b.set_override(State::Maint, None, None, 6000), "no change");
        assert!(b.set_override(State::Up, None, None, 9_000_001));
        assert!(b.operator_override().is_none());
        let s = b.status(Target::Server, 9_000_002);
        assert_eq!((s.state, s.reason), (State::Up, Reason::Host));
        assert!(s.generation > before.generation);
    }

    #[test]
    fn stopping_and_fault_override() {
        let b = board(0);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        b.begin_stopping(2000);
        let s = b.status(Target::Service(0), 2500);
        assert_eq!(
            (s.state, s.reason, s.since_ms),
            (State::Stopping, Reason::AgentStopping, 500)
        );
        b.record_fault(3000);
        let s = b.status(Target::Server, 3000);
        assert_eq!((s.state, s.reason), (State::Down, Reason::AgentFault));
    }

    #[test]
    fn stalled_workers_any_policy() {
        let b = board_with(0, 4, WorkerPolicy::Any);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        let w0 = b.workers.register(1, 1000).unwrap();
        let w1 = b.workers.register(1, 1000).unwrap();
        let g0 = b.status(Target::Server, 1000).generation;
        assert!(b.status(Target::Server, 1500).is_serving());
        b.workers.heartbeat(w0, 2500);
        let s = b.status(Target::Server, 2600);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WorkerStalled));
        assert!(
            s.message
                .as_str()
                .starts_with(&format!("worker {w1} (pid 1) stalled")),
            "{:?}",
            s.message
        );
        assert!(s.generation > g0);
        // Services go down with the server.
        assert_eq!(
            b.status(Target::Service(0), 2600).reason,
            Reason::WorkerStalled
        );
        b.workers.heartbeat(w1, 2600);
        assert!(b.status(Target::Server, 2700).is_serving());
        // A worker that is gone is released by its master.
        assert_eq!(b.workers.release_pid(1), 2);
        assert!(b.status(Target::Server, 9000).is_serving());
    }

    #[test]
    fn stalled_workers_proportional_policy() {
        let b = board_with(0, 4, WorkerPolicy::Proportional);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        b.set_weight(Target::Server, 80);
        let slots: Vec<usize> = (0..4)
            .map(|_| b.workers.register(7, 1000).unwrap())
            .collect();
        assert!(b.workers.register(7, 1000).is_none(), "all slots taken");
        for s in &slots[..3] {
            b.workers.heartbeat(*s, 2500);
        }
        let s = b.status(Target::Server, 2600);
        assert_eq!((s.state, s.weight_pct), (State::Up, 60));
        let s = b.status(Target::Server, 4000);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WorkerStalled));
        assert!(b.workers.unregister(slots[0]));
        assert!(!b.workers.unregister(slots[0]));
    }

    #[test]
    fn checks_start_failing_pass_fail_and_time_out() {
        let b = board(0);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        let game = b.target(b"game");
        let (i, t) = b
            .checks
            .add(b.cell_index(game).unwrap(), b"db", 500, 1000)
            .unwrap();
        assert_eq!(
            b.checks.add(1, b"db", 500, 1000),
            Err(checks::AddError::Duplicate)
        );
        // New checks start failing.
        let s = b.status(game, 1000);
        assert_eq!(
            (s.state, s.reason, s.message.as_str()),
            (State::Down, Reason::CheckFailed, "db: no result yet")
        );
        // The whole server is not affected by a service's check.
        assert!(b.status(Target::Server, 1000).is_serving());
        b.checks.begin_run(i, t, 1100);
        b.checks.finish_run(i, t, true, b"", 1150);
        assert!(b.status(game, 1200).is_serving());
        b.checks.begin_run(i, t, 2000);
        b.checks
            .finish_run(i, t, false, b"connection refused", 2010);
        let s = b.status(game, 2100);
        assert_eq!(
            (s.state, s.message.as_str()),
            (State::Down, "db: connection refused")
        );
        // A run that hangs: judged without waiting for it.
        b.checks.begin_run(i, t, 3000);
        let g = b.status(game, 3100).generation;
        let s = b.status(game, 3600);
        assert_eq!((s.state, s.reason), (State::Down, Reason::CheckTimedOut));
        assert!(s.generation > g);
        b.checks.finish_run(i, t, true, b"", 3700);
        assert_eq!(
            b.status(game, 3700).reason,
            Reason::CheckTimedOut,
            "passed, but too late"
        );
        b.checks.begin_run(i, t, 4000);
        b.checks.finish_run(i, t, true, b"", 4010);
        assert!(b.status(game, 4020).is_serving());
        b.checks.remove(i);
        assert_eq!(b.checks.find(b"db"), None);
        // A check on the whole server applies to every service.
        let (j, _) = b.checks.add(0, b"disk", 0, 5000).unwrap();
        assert_eq!(b.status(game, 5000).reason, Reason::CheckFailed);
        b.checks.remove(j);
        assert!(b.status(game, 5000).is_serving());
        // Records are reused: the active set follows removals and additions.
        let added: Vec<(usize, u64)> = [&b"a"[..], b"b", b"c"]
            .iter()
            .map(|n| b.checks.add(0, n, 0, 6000).unwrap())
            .collect();
        b.checks.remove(added[1].0);
        assert_eq!(b.checks.find(b"b"), None);
        assert_eq!(b.checks.find(b"c"), Some(added[2].0));
        let d = b.checks.add(0, b"d", 0, 6000).unwrap();
        assert_eq!(d.0, added[1].0, "the freed record is taken again");
        assert_eq!(b.checks.find(b"d"), Some(d.0));
        assert_eq!(b.status(game, 6000).reason, Reason::CheckFailed);
        for (i, t) in [added[0], added[2], d] {
            b.checks.finish_run(i, t, true, b"", 6100);
        }
        assert!(
            b.status(game, 6100).is_serving(),
            "every active check passes"
        );
        for (i, _) in [added[0], added[2], d] {
            b.checks.remove(i);
        }
        assert_eq!(b.checks.find(b"d"), None);
    }

    /// Writers publish (state, message) pairs that belong together; the reader must never see
    /// a torn text or a text paired with another writer's state.
    #[test]
    fn concurrent_writers_never_tear() {
        let b = Arc::new(board(0));
        let states = [
            State::Up,
            State::Drain,
            State::Maint,
            State::Down,
            State::Starting,
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for state in states {
            let b = b.clone();
            let stop = stop.clone();
            writers.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Long messages make torn reads likely if the protocol were wrong.
                    let msg = format!("{}:{}:{}", state.name(), i, state.name().repeat(30));
                    b.set_state(
                        Target::Server,
                        state,
                        Reason::Host,
                        Some(&Text::from_reason(msg.as_bytes())),
                        i,
                    );
                    if i % 7 == 0 {
                        b.set_state(Target::Server, state, Reason::Host, None, i);
                    }
                    i += 1;
                }
            }));
        }
        let mut checked = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(700);
        while std::time::Instant::now() < deadline {
            let s = b.status(Target::Server, 0);
            let m = s.message.as_str();
            if !m.is_empty() {
                let name = s.state.name();
                assert!(
                    m.starts_with(name) && m.ends_with(&name.repeat(30)),
                    "{:?} with {m:?}",
                    s.state
                );
                checked += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(checked > 100, "only {checked} readings");
    }
}
