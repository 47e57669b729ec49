//! The poller: one thread and one UDP socket (`lbagent::client::Prober`) for every target.
//!
//! Each target is probed once per interval, at a time shifted by a random jitter so that
//! thousands of checks spread evenly instead of arriving in bursts; the first check of each
//! target falls at a random point of the first interval. Answers and timeouts come back
//! through the same socket; rise/fall decide each target's verdict, and its track file is
//! rewritten (atomically) only when the verdict differs from what the file says. Nothing forks,
//! nothing blocks but `epoll_wait`.
//!
//! With `--subscribe` (the default) every probe also asks the agent to push changes (protocol
//! v1 subscriptions, renewed by each probe): a change the host makes reaches the track file and
//! the HAProxy servers at once, and polling stays the liveness check. Agents that do not grant
//! a subscription (older agents, or unsealed probes to an agent that takes sealed ones only)
//! are simply polled. What an agent says about itself is applied at once (a drain, a failure
//! the host reports, the watchdog's expiry: no `--fall` streak); `--rise` and `--fall` apply to
//! what the poller finds out itself: answers that say serving after a failure, and probes
//! that get no answer.
//!
//! `--metrics ADDR:PORT` serves the figures of `metrics.rs` from this loop. Under systemd
//! (`Type=notify`), the loop says READY=1 once the targets are loaded, STATUS= when the
//! verdicts change, RELOADING=1 around a reload, STOPPING=1 on SIGTERM, and WATCHDOG=1 at half
//! of `WatchdogSec=` while it keeps its schedule (no probe sent later than a whole watchdog
//! period behind it): a loop that hangs, or falls that far behind, is restarted by systemd.
//!
//! SIGHUP reloads the targets file: unchanged targets keep their verdict, streak and schedule;
//! a target whose address, service or key changed starts its streak over from its current
//! verdict; a removed target's file is set to 1 (failed), since keepalived reads a missing file
//! as OK. SIGTERM and SIGINT stop the poller; the files keep their last values.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbagent::client::{Answer, Completion, ProbeError, ProbeOptions, Prober};
use lbagent::keys::Key;
use lbagent::systemd::Notifier;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::haproxy::{Desired, Writer};
use crate::health::Health;
use crate::log::{Level, Log};
use crate::metrics::{LoopFigures, MetricsServer, counter, gauge, label};
use crate::targets::{self, Target};
use crate::track::TrackDir;

const PROBER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// `--metrics`: the listener, then its connections.
const METRICS: usize = 2;
/// Probes due this close to now are sent in the same wake-up: a few milliseconds early is
/// nothing against a jittered interval, and each wake-up costs a context switch.
const SLACK: Duration = Duration::from_millis(5);

/// How targets are checked.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Each interval is stretched or shrunk by up to this percent, at random.
    pub jitter_pct: u32,
    /// A summary line this often; zero for none.
    pub stats_every: Duration,
    /// Ask agents to push changes (renewed by every probe).
    pub subscribe: bool,
}

/// A small, fast generator for the jitter (xorshift64*): spreading checks needs no more.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Jitter(u64::from_ne_bytes(seed) | 1)
    }

    /// A uniform value in 0..1.
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Slot {
    target: Target,
    /// The key that seals its probes (`key=` in the targets file), looked up once.
    key: Option<Arc<Key>>,
    /// The prober token; stays the same while the target is unchanged across reloads.
    id: u64,
    health: Health,
    in_flight: bool,
    /// When the verdict last changed (or the target was loaded).
    since: Instant,
    /// What the track file says: `None` when unknown.
    file_ok: Option<bool>,
    /// The last write of the file failed (logged once until a write succeeds).
    write_failed: bool,
    /// The agent's last answer; kept through failed checks until `--fall` of them in a row
    /// (a lost datagram must not reset an HAProxy server's weight or drain).
    answer: Option<Answer>,
    /// Failed checks in a row since the last answer.
    misses: u32,
    /// What the HAProxy servers were last told (`None`: nothing yet).
    sinks_told: Option<Desired>,
    /// What the weight file says (`weight=N` targets), when known.
    weight_file: Option<i64>,
    /// When the last answer came (`--metrics`).
    answered_at: Option<Instant>,
    /// Verdict changes and probes that got no answer in time, since loaded.
    transitions: u64,
    timeouts: u64,
}

#[derive(Default)]
struct Counts {
    transitions: u64,
    /// Checks not sent because the previous one was still in flight.
    skipped: u64,
}

/// The whole poller.
pub struct Poller {
    settings: Settings,
    log: Log,
    track: TrackDir,
    targets_path: PathBuf,
    /// The targets' keys, by key file.
    keys: targets::Keys,
    slots: Vec<Slot>,
    index: HashMap<u64, usize>,
    schedule: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    prober: Prober,
    jitter: Jitter,
    completions: Vec<Completion>,
    /// The HAProxy runtime API writer (started when a target names an HAProxy server).
    haproxy: Option<Writer>,
    counts: Counts,
    started: Instant,
    /// Taken first thing, so that a SIGHUP or SIGTERM during a long load is queued, not fatal.
    signals: Signals,
    /// `--metrics`.
    metrics: Option<MetricsServer>,
    figures: LoopFigures,
    /// systemd (`NOTIFY_SOCKET`), and half its watchdog period.
    systemd: Option<(Notifier, Option<Duration>)>,
}

fn verdict_word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

/// Makes the track file say the slot's verdict, if it does not already.
fn sync_file(track: &TrackDir, log: &Log, slot: &mut Slot, figures: &mut LoopFigures) {
    let up = slot.health.is_up();
    if slot.file_ok == Some(up) {
        return;
    }
    let name = &slot.target.name;
    match track.write(name, up) {
        Ok(()) => {
            figures.track_writes += 1;
            slot.file_ok = Some(up);
            if slot.write_failed {
                slot.write_failed = false;
                log.line(
                    Level::Info,
                    format_args!(
                        "{name}: track file {} written again",
                        track.path(name).display()
                    ),
                );
            }
        }
        Err(e) => {
            figures.track_write_failures += 1;
            if !slot.write_failed {
                slot.write_failed = true;
                log.line(
                    Level::Error,
                    format_args!(
                        "{name}: cannot write track file {}: {e} (retried at each check)",
                        track.path(name).display()
                    ),
                );
            }
        }
    }
}

/// Tells the slot's HAProxy servers what they should make of it, if that changed (starting
/// the writer thread the first time one is named).
fn sync_sinks(haproxy: &mut Option<Writer>, log: &Log, slot: &mut Slot) {
    if slot.target.haproxy.is_empty() {
        return;
    }
    if slot.health.is_up() && slot.answer.is_none() {
        // Up from the track file, not yet from an answer: nothing to tell before the first
        // answer says at what weight.
        return;
    }
    let desired = Desired::of(slot.health.is_up(), slot.answer.as_ref());
    if slot.sinks_told == Some(desired) {
        return;
    }
    if haproxy.is_none() {
        match Writer::start() {
            Ok(w) => *haproxy = Some(w),
            Err(e) => {
                log.line(
                    Level::Error,
                    format_args!("cannot start the HAProxy writer thread: {e}"),
                );
                return;
            }
        }
    }
    if let Some(writer) = haproxy {
        for sink in &slot.target.haproxy {
            writer.send(sink, desired);
        }
        slot.sinks_told = Some(desired);
    }
}

/// What a weight file says for an agent at `pct` percent of a real server of weight
/// `weight`: the difference keepalived adds (0 at 100 %; a serving percent keeps weight 1).
pub fn weight_offset(weight: u32, pct: u8) -> i64 {
    let scaled = (u64::from(weight) * u64::from(pct.min(100)) + 50) / 100;
    scaled.max(1) as i64 - i64::from(weight)
}

/// Makes a `weight=N` target's weight file follow the agent's percent while it serves (while it
/// does not, the verdict file takes it out and the weight file keeps its last value).
fn sync_weight(track: &TrackDir, log: &Log, slot: &mut Slot, answer: &Answer) {
    let Some(weight) = slot.target.weight else {
        return;
    };
    if !answer.is_serving() {
        return;
    }
    let offset = weight_offset(weight, answer.weight_pct);
    if slot.weight_file == Some(offset) {
        return;
    }
    let name = format!("{}{}", slot.target.name, targets::WEIGHT_SUFFIX);
    match track.write_number(&name, offset) {
        Ok(()) => slot.weight_file = Some(offset),
        Err(e) => log.line(
            Level::Error,
            format_args!(
                "{}: cannot write weight file {}: {e} (retried at each check)",
                slot.target.name,
                track.path(&name).display()
            ),
        ),
    }
}

fn describe(result: &Result<Answer, ProbeError>) -> String {
    match result {
        Ok(a) => a.to_string(),
        Err(e) => e.to_string(),
    }
}

impl Poller {
    /// Loads the targets and the track files' current values.
    pub fn new(
        settings: Settings,
        log: Log,
        track: TrackDir,
        targets_path: PathBuf,
        targets: Vec<Target>,
        keys: targets::Keys,
    ) -> Result<Poller, String> {
        // A lease of a few intervals: every probe renews it, and one lost probe does not end
        // it (the agent grants at most a minute).
        let lease = (settings.interval * 3 + settings.timeout).min(Duration::from_secs(60));
        let options = ProbeOptions {
            timeout: settings.timeout,
            subscribe: settings.subscribe.then_some(lease),
            ..ProbeOptions::default()
        };
        let signals = Signals::new([SIGHUP, SIGTERM, SIGINT])
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        let prober = Prober::new(options).map_err(|e| format!("cannot open a socket: {e}"))?;
        let mut poller = Poller {
            settings,
            log,
            track,
            targets_path,
            keys,
            slots: Vec::new(),
            index: HashMap::new(),
            schedule: BinaryHeap::new(),
            next_id: 0,
            prober,
            jitter: Jitter::new(),
            completions: Vec::new(),
            haproxy: None,
            counts: Counts::default(),
            started: Instant::now(),
            signals,
            metrics: None,
            figures: LoopFigures::new(),
            systemd: None,
        };
        if poller.track.syncs() {
            poller.log.line(
                Level::Warning,
                format_args!(
                    "{} is not on tmpfs: every change is fsync'ed, and many changes at once \
                     delay the checks; a directory under /run is recommended",
                    poller.track.path("").display()
                ),
            );
        }
        let now = Instant::now();
        for target in targets {
            let slot = poller.new_slot(target, None, now);
            poller.slots.push(slot);
        }
        poller.reindex();
        // Loading thousands of files takes a while: spread the first checks from now on,
        // not from when each target was loaded (which would start with a burst).
        poller.schedule.clear();
        let now = Instant::now();
        for id in 0..poller.next_id {
            poller.schedule_first(id, now);
        }
        let up = poller.slots.iter().filter(|s| s.health.is_up()).count();
        poller.log.line(
            Level::Info,
            format_args!(
                "started: {} targets from {}, {} up and {} down as their track files say; \
                 interval {} ms +-{}%, timeout {} ms, rise {}, fall {}; track files in {}",
                poller.slots.len(),
                poller.targets_path.display(),
                up,
                poller.slots.len() - up,
                settings.interval.as_millis(),
                settings.jitter_pct,
                settings.timeout.as_millis(),
                settings.rise,
                settings.fall,
                poller.track.path("").display(),
            ),
        );
        Ok(poller)
    }

    /// A slot for a new target: its verdict is what its track file says (`initial` when the
    /// caller knows better), or down when the file says nothing, in which case the file is
    /// written at once (keepalived reads a missing file as OK). Its first check falls at a
    /// random point of the next interval.
    /// The loaded key of `target`'s key file, if it names one.
    fn key_of(&self, target: &Target) -> Option<Arc<Key>> {
        target.key.as_ref().and_then(|p| self.keys.get(p)).cloned()
    }

    fn new_slot(&mut self, target: Target, initial: Option<bool>, now: Instant) -> Slot {
        let file_ok = self.track.read(&target.name);
        let up = initial.or(file_ok).unwrap_or(false);
        let id = self.next_id;
        self.next_id += 1;
        self.schedule_first(id, now);
        let key = self.key_of(&target);
        let mut slot = Slot {
            target,
            key,
            id,
            health: Health::new(up),
            in_flight: false,
            since: now,
            file_ok,
            write_failed: false,
            answer: None,
            misses: 0,
            sinks_told: None,
            weight_file: None,
            answered_at: None,
            transitions: 0,
            timeouts: 0,
        };
        sync_file(&self.track, &self.log, &mut slot, &mut self.figures);
        sync_sinks(&mut self.haproxy, &self.log, &mut slot);
        slot
    }

    /// The first check of a new target falls at a random point of the next interval.
    fn schedule_first(&mut self, id: u64, now: Instant) {
        let first = now + self.settings.interval.mul_f64(self.jitter.unit());
        self.schedule.push(Reverse((first, id)));
    }

    fn reindex(&mut self) {
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
    }

    /// Serves `--metrics` on `addr` from the loop; returns the address bound.
    pub fn serve_metrics(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr, String> {
        let server = MetricsServer::bind(addr, METRICS)
            .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
        let bound = server
            .local_addr()
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        self.metrics = Some(server);
        Ok(bound)
    }

    /// Tells systemd through `notifier` (`NOTIFY_SOCKET`), with its watchdog period if any.
    pub fn notify_systemd(&mut self, notifier: Notifier, watchdog: Option<Duration>) {
        self.systemd = Some((notifier, watchdog.map(|w| w / 2)));
    }

    fn notify(&self, message: &str) {
        if let Some((n, _)) = &self.systemd {
            let _ = n.send(message.as_bytes());
        }
    }

    fn status_line(&self) -> String {
        let up = self.slots.iter().filter(|s| s.health.is_up()).count();
        format!(
            "STATUS={} targets: {up} up, {} down",
            self.slots.len(),
            self.slots.len() - up
        )
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(mut self) -> Result<(), String> {
        let mut poll = Poll::new().map_err(|e| format!("cannot create a poller: {e}"))?;
        poll.registry()
            .register(
                &mut SourceFd(&self.prober.as_raw_fd()),
                PROBER,
                Interest::READABLE,
            )
            .map_err(|e| format!("cannot watch the socket: {e}"))?;
        poll.registry()
            .register(&mut self.signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        let mut metrics = self.metrics.take();
        if let Some(m) = &mut metrics {
            m.register(poll.registry())
                .map_err(|e| format!("cannot watch the metrics socket: {e}"))?;
        }
        let mut events = Events::with_capacity(64);
        let mut next_stats = Instant::now() + self.settings.stats_every;
        self.notify(&format!("READY=1\n{}", self.status_line()));
        let mut told_transitions = self.counts.transitions;
        let mut next_watchdog = Instant::now();
        loop {
            let now = Instant::now();
            let lag = self.send_due(now);
            if !self.settings.stats_every.is_zero() && now >= next_stats {
                self.log_stats("running");
                next_stats = now + self.settings.stats_every;
            }
            if self.counts.transitions != told_transitions {
                told_transitions = self.counts.transitions;
                self.notify(&self.status_line());
            }
            let watchdog_every = self.systemd.as_ref().and_then(|(_, every)| *every);
            if let Some(every) = watchdog_every {
                if now >= next_watchdog {
                    next_watchdog = now + every;
                    // Progress: the loop turns, and keeps its schedule within a whole period.
                    if lag < every * 2 {
                        self.notify("WATCHDOG=1");
                    }
                }
            }
            let wait = [
                self.schedule
                    .peek()
                    .map(|Reverse((due, _))| due.saturating_duration_since(now)),
                self.prober.next_timeout(),
                metrics
                    .as_ref()
                    .and_then(MetricsServer::next_deadline)
                    .map(|d| d.saturating_duration_since(now)),
                watchdog_every.map(|_| next_watchdog.saturating_duration_since(now)),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Err(e) = poll.poll(&mut events, wait) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("waiting for events: {e}"));
                }
            }
            for event in events.iter() {
                if let Some(m) = metrics.as_mut().filter(|m| m.owns(event.token())) {
                    m.ready(event.token(), poll.registry(), &mut || {
                        self.render_metrics()
                    });
                    continue;
                }
                if event.token() != SIGNALS {
                    continue;
                }
                let pending: Vec<i32> = self.signals.pending().collect();
                for signal in pending {
                    if signal == SIGHUP {
                        self.notify("RELOADING=1");
                        self.reload();
                        self.notify(&format!("READY=1\n{}", self.status_line()));
                    } else {
                        let name = if signal == SIGTERM {
                            "SIGTERM"
                        } else {
                            "SIGINT"
                        };
                        self.notify(&format!("STOPPING=1\nSTATUS=stopping on {name}"));
                        self.log_stats(&format!("stopping on {name}"));
                        return Ok(());
                    }
                }
            }
            if let Some(m) = &mut metrics {
                m.after_turn(poll.registry(), &mut || self.render_metrics());
            }
            self.collect();
        }
    }

    /// The `--metrics` exposition (`metrics.rs` says what is in it).
    fn render_metrics(&self) -> String {
        let now = Instant::now();
        let mut out = String::with_capacity(256 + self.slots.len() * 600);
        let names: Vec<String> = self.slots.iter().map(|s| label(&s.target.name)).collect();
        let per_target = |out: &mut String,
                          name: &str,
                          help: &str,
                          kind: &str,
                          value: &dyn Fn(&Slot) -> Option<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (slot, target) in self.slots.iter().zip(&names) {
                if let Some(v) = value(slot) {
                    let _ = writeln!(out, "{name}{{target=\"{target}\"}} {v}");
                }
            }
        };
        let _ = writeln!(
            out,
            "# HELP lbagent_director_target_up The verdict: 1 while the track file says 0 (the real server gets traffic).\n\
             # TYPE lbagent_director_target_up gauge"
        );
        for (slot, target) in self.slots.iter().zip(&names) {
            let _ = writeln!(
                out,
                "lbagent_director_target_up{{target=\"{target}\",address=\"{}\",service=\"{}\"}} {}",
                slot.target.addr,
                label(&slot.target.service),
                u8::from(slot.health.is_up())
            );
        }
        let _ = writeln!(
            out,
            "# HELP lbagent_director_target_state The state in the agent's last answer (no_answer: the last check had none); one series per target, the current one.\n\
             # TYPE lbagent_director_target_state gauge"
        );
        for (slot, target) in self.slots.iter().zip(&names) {
            let state = slot.answer.as_ref().map_or("no_answer", |a| a.state.name());
            let _ = writeln!(
                out,
                "lbagent_director_target_state{{target=\"{target}\",state=\"{state}\"}} 1"
            );
        }
        per_target(
            &mut out,
            "lbagent_director_target_last_answer_age_seconds",
            "Seconds since the target's agent last answered (no sample before its first answer).",
            "gauge",
            &|s| {
                s.answered_at
                    .map(|at| format!("{:.3}", now.duration_since(at).as_secs_f64()))
            },
        );
        per_target(
            &mut out,
            "lbagent_director_target_rtt_seconds",
            "The round trip of the target's last answer.",
            "gauge",
            &|s| {
                s.answer
                    .as_ref()
                    .filter(|a| !a.pushed)
                    .map(|a| format!("{:.6}", a.rtt.as_secs_f64()))
            },
        );
        per_target(
            &mut out,
            "lbagent_director_target_transitions_total",
            "Verdict changes of the target since it was loaded.",
            "counter",
            &|s| Some(s.transitions.to_string()),
        );
        per_target(
            &mut out,
            "lbagent_director_target_timeouts_total",
            "Probes of the target that got no answer in time.",
            "counter",
            &|s| Some(s.timeouts.to_string()),
        );
        per_target(
            &mut out,
            "lbagent_director_target_track_file_written",
            "1 when the target's track file says its verdict; 0 while writing it fails.",
            "gauge",
            &|s| Some(u8::from(s.file_ok == Some(s.health.is_up())).to_string()),
        );
        self.figures.render(&mut out);
        let st = self.prober.stats();
        counter(
            &mut out,
            "lbagent_director_probes_total",
            "Probes by outcome (answered, timed_out, failed: refused, unreachable, not an agent, wrong key).",
            &[
                ("outcome=\"sent\"", st.sent),
                ("outcome=\"answered\"", st.answered),
                ("outcome=\"timed_out\"", st.timed_out),
                ("outcome=\"failed\"", st.failed),
            ],
        );
        counter(
            &mut out,
            "lbagent_director_pushed_total",
            "Changes pushed by subscribed agents.",
            &[("", st.pushed)],
        );
        counter(
            &mut out,
            "lbagent_director_checks_skipped_total",
            "Checks not sent because the previous one of the target was still waiting for its answer.",
            &[("", self.counts.skipped)],
        );
        counter(
            &mut out,
            "lbagent_director_transitions_total",
            "Verdict changes, every target.",
            &[("", self.counts.transitions)],
        );
        let up = self.slots.iter().filter(|s| s.health.is_up()).count() as u64;
        gauge(
            &mut out,
            "lbagent_director_targets",
            "Targets, by verdict.",
            &[
                ("verdict=\"up\"", up),
                ("verdict=\"down\"", self.slots.len() as u64 - up),
            ],
        );
        let (written, failed) = self.haproxy.as_ref().map_or((0, 0), |w| {
            use std::sync::atomic::Ordering::Relaxed;
            (
                w.counts.written.load(Relaxed),
                w.counts.failed.load(Relaxed),
            )
        });
        counter(
            &mut out,
            "lbagent_director_haproxy_commands_total",
            "Commands sent to HAProxy runtime APIs (haproxy= sinks), by result.",
            &[
                ("result=\"written\"", written),
                ("result=\"failed\"", failed),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP lbagent_director_haproxy_sink_ok 1 when the sink's last command succeeded.\n\
             # TYPE lbagent_director_haproxy_sink_ok gauge"
        );
        if let Some(states) = self.haproxy.as_ref().and_then(|w| w.sinks.lock().ok()) {
            let mut sinks: Vec<_> = states.iter().collect();
            sinks.sort_by(|a, b| (&a.0.socket, &a.0.server).cmp(&(&b.0.socket, &b.0.server)));
            for (sink, ok) in sinks {
                let _ = writeln!(
                    out,
                    "lbagent_director_haproxy_sink_ok{{socket=\"{}\",server=\"{}\"}} {}",
                    label(&sink.socket.display().to_string()),
                    label(&sink.server),
                    u8::from(*ok)
                );
            }
        }
        gauge(
            &mut out,
            "lbagent_director_build_info",
            "The director's version; value 1.",
            &[(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)],
        );
        out
    }

    /// Sends the probes that are due; returns how late the latest one went out.
    fn send_due(&mut self, now: Instant) -> Duration {
        let mut latest = Duration::ZERO;
        while let Some(&Reverse((due, id))) = self.schedule.peek() {
            if due > now + SLACK {
                break;
            }
            self.schedule.pop();
            let lag = now.saturating_duration_since(due);
            self.figures.lag.observe(lag);
            latest = latest.max(lag);
            let Some(&i) = self.index.get(&id) else {
                continue; // removed by a reload
            };
            let spread = f64::from(self.settings.jitter_pct) / 100.0;
            let factor = 1.0 + spread * (2.0 * self.jitter.unit() - 1.0);
            // After a stall, start again from now rather than sending a burst.
            let next = (due + self.settings.interval.mul_f64(factor)).max(now);
            self.schedule.push(Reverse((next, id)));
            let slot = &mut self.slots[i];
            if slot.in_flight {
                self.counts.skipped += 1;
                continue;
            }
            let key = slot.key.clone();
            match self
                .prober
                .send_keyed(slot.target.addr, &slot.target.service, id, key)
            {
                Ok(()) => slot.in_flight = true,
                // Not sent (no route, for example): that is this check's result.
                Err(e) => self.record(i, Err(e)),
            }
        }
        latest
    }

    fn collect(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        self.prober.receive(&mut completions);
        for c in completions.drain(..) {
            if let Some(&i) = self.index.get(&c.token) {
                let pushed = matches!(&c.result, Ok(a) if a.pushed);
                if !pushed {
                    self.slots[i].in_flight = false;
                }
                self.record(i, c.result);
            }
        }
        self.completions = completions;
    }

    /// One check's result (or a pushed change) for slot `i`: the verdict, the log line of a
    /// transition, the track file and the HAProxy servers.
    fn record(&mut self, i: usize, result: Result<Answer, ProbeError>) {
        let (rise, fall) = (self.settings.rise, self.settings.fall);
        let slot = &mut self.slots[i];
        // What the agent says about itself is taken at once (a pushed change included);
        // what the poller finds out needs --rise answers or --fall silences in a row.
        let (flipped, at_once) = match &result {
            Ok(a) if !a.is_serving() => (slot.health.set(false), true),
            Ok(a) if a.pushed => (slot.health.set(true), true),
            Ok(_) => (slot.health.record(true, rise, fall), false),
            Err(_) => (slot.health.record(false, rise, fall), false),
        };
        match &result {
            Ok(a) => {
                slot.answer = Some(a.clone());
                slot.misses = 0;
            }
            Err(_) => {
                slot.misses += 1;
                if slot.misses >= fall {
                    // The agent is gone: the HAProxy servers are told DOWN.
                    slot.answer = None;
                }
            }
        }
        match &result {
            Ok(a) => {
                slot.answered_at = Some(Instant::now());
                if !a.pushed {
                    self.figures.rtt.observe(a.rtt);
                }
            }
            Err(ProbeError::Timeout(_)) => slot.timeouts += 1,
            Err(_) => {}
        }
        if let Some(checks) = flipped {
            slot.transitions += 1;
            let now = Instant::now();
            let up = slot.health.is_up();
            let held = now - slot.since;
            slot.since = now;
            self.counts.transitions += 1;
            let how = match (at_once, &result) {
                (true, Ok(a)) if a.pushed => "at once, pushed by the agent".to_string(),
                (true, _) => "at once, as the agent says".to_string(),
                (false, _) => format!(
                    "after {checks} {} check{}",
                    if up { "successful" } else { "failed" },
                    if checks == 1 { "" } else { "s" }
                ),
            };
            self.log.line(
                Level::Notice,
                format_args!(
                    "{}: {} -> {} {how} ({:.1} s {}): {}",
                    slot.target,
                    verdict_word(!up),
                    verdict_word(up),
                    held.as_secs_f64(),
                    verdict_word(!up),
                    describe(&result)
                ),
            );
        }
        // The weight first: a server that comes back is let in at the weight it asks for,
        // never at the full weight its weight file last said.
        if let Ok(answer) = &result {
            sync_weight(&self.track, &self.log, slot, answer);
        }
        sync_file(&self.track, &self.log, slot, &mut self.figures);
        sync_sinks(&mut self.haproxy, &self.log, slot);
    }

    fn reload(&mut self) {
        let new = match targets::load(&self.targets_path) {
            Ok((t, keys)) => {
                self.keys = keys;
                t
            }
            Err(e) => {
                self.log.line(
                    Level::Error,
                    format_args!(
                        "reload failed, the {} targets in force are kept: {e}",
                        self.slots.len()
                    ),
                );
                return;
            }
        };
        let now = Instant::now();
        let mut old: HashMap<String, Slot> = self
            .slots
            .drain(..)
            .map(|s| (s.target.name.clone(), s))
            .collect();
        let (mut unchanged, mut changed, mut added) = (0, 0, 0);
        let mut slots = Vec::with_capacity(new.len());
        for target in new {
            match old.remove(&target.name) {
                Some(mut slot) if slot.target.same_check(&target) => {
                    // The same file, perhaps with a new key in it (read again at reload).
                    slot.key = self.key_of(&target);
                    if slot.target.haproxy != target.haproxy {
                        // New HAProxy servers are told where this one stands.
                        slot.sinks_told = None;
                    }
                    if slot.target.weight != target.weight {
                        slot.weight_file = None;
                    }
                    slot.target = target;
                    sync_sinks(&mut self.haproxy, &self.log, &mut slot);
                    unchanged += 1;
                    slots.push(slot);
                }
                Some(slot) => {
                    changed += 1;
                    let up = slot.health.is_up();
                    self.log.line(
                        Level::Info,
                        format_args!(
                            "{}: changed (was {}): checks start over, the verdict stays {}",
                            target,
                            slot.target,
                            verdict_word(up)
                        ),
                    );
                    slots.push(self.new_slot(target, Some(up), now));
                }
                None => {
                    added += 1;
                    let slot = self.new_slot(target, None, now);
                    self.log.line(
                        Level::Info,
                        format_args!(
                            "{}: added, {} as its track file says",
                            slot.target,
                            verdict_word(slot.health.is_up())
                        ),
                    );
                    slots.push(slot);
                }
            }
        }
        let removed = old.len();
        for (_, slot) in old {
            let said = match self.track.write(&slot.target.name, false) {
                Ok(()) => "its track file now says 1 (failed)".to_string(),
                Err(e) => format!("cannot set its track file to 1: {e}"),
            };
            self.log.line(
                Level::Notice,
                format_args!("{}: removed from the targets file: {said}", slot.target),
            );
        }
        self.slots = slots;
        self.reindex();
        self.log.line(
            Level::Info,
            format_args!(
                "reloaded {}: {} targets ({unchanged} unchanged, {changed} changed, {added} added, {removed} removed)",
                self.targets_path.display(),
                self.slots.len()
            ),
        );
    }

    fn log_stats(&self, what: &str) {
        let up = self.slots.iter().filter(|s| s.health.is_up()).count();
        let st = self.prober.stats();
        let sinks = self.haproxy.as_ref().map_or((0, 0), |w| {
            use std::sync::atomic::Ordering::Relaxed;
            (
                w.counts.written.load(Relaxed),
                w.counts.failed.load(Relaxed),
            )
        });
        self.log.line(
            Level::Info,
            format_args!(
                "{what}: {} targets, {up} up, {} down; probes sent {}, answered {}, failed {}, \
                 timed out {}, ignored {}; {} wrong-key diagnostics sent; {} pushed changes \
                 from {} subscriptions; {} transitions; {} skipped; HAProxy commands {} \
                 written, {} failed; {:.0} s",
                self.slots.len(),
                self.slots.len() - up,
                st.sent,
                st.answered,
                st.failed,
                st.timed_out,
                st.ignored,
                st.diagnostics,
                st.pushed,
                self.prober.subscriptions(),
                self.counts.transitions,
                self.counts.skipped,
                sinks.0,
                sinks.1,
                self.started.elapsed().as_secs_f64()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::weight_offset;

    #[test]
    fn weight_offsets_give_the_percent_of_the_weight() {
        assert_eq!(weight_offset(100, 100), 0);
        assert_eq!(weight_offset(100, 50), -50);
        assert_eq!(weight_offset(100, 10), -90);
        assert_eq!(
            weight_offset(100, 0),
            -99,
            "a serving server keeps weight 1"
        );
        assert_eq!(weight_offset(3, 50), -1);
        assert_eq!(weight_offset(65_535, 1), 655 - 65_535);
    }
}
