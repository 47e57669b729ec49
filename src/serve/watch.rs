//! Listening for changes: what the monitor thread does when the board's bell rings (the host
//! changed something) or a deadline of a condition judged lazily passes (the watchdog, a
//! stalled worker, an overdue check, a push held back by its rate bound).
//!
//! Listeners: subscribed directors (a STATUS pushed at once, `subscribe.rs`), systemd with
//! `systemd=on` (`systemd.rs`: READY, STATUS, WATCHDOG from a timer kept here, STOPPING) and
//! the log, when `log=` or a callback is set: the watchdog's expiry and recovery, a start that
//! outlasts `start_timeout_ms`, and host calls that name a service not in `services=`.
//! While nobody listens the bell stays silent and no timer is set: an agent nobody subscribes
//! to wakes only for probes.

use std::time::Duration;

use super::answer::write_status;
use super::subscribe::Subscriptions;
use super::systemd::SystemdListener;
use super::udp::Listener;
use crate::counters::Counter;
use crate::log::{Level, log_line};
use crate::proto::wire::{self, FLAG_PUSHED};
use crate::shared::Shared;
use crate::state::Reason;
use crate::status::{Status, Target};
use crate::sys::clock;

/// The monitor thread's listeners and what they were last told.
pub(crate) struct Watch {
    pub subscriptions: Subscriptions,
    /// systemd, with `systemd=on` under a unit that listens.
    systemd: Option<SystemdListener>,
    /// Whether the bell is wanted now (so that it is told only when that changes).
    listening: bool,
    /// The whole server's reason last seen by the log listener.
    logged_reason: Option<Reason>,
    /// The unknown-service count last logged, and when.
    logged_unknown: (u64, u64),
    /// The earliest clock time the next look is due (a deadline), if any.
    due_at: Option<u64>,
    /// The STATUS being pushed.
    buf: [u8; wire::PROBE_MAX_LEN],
}

impl Watch {
    pub(crate) fn new(subscriptions: Subscriptions, systemd: Option<SystemdListener>) -> Watch {
        Watch {
            subscriptions,
            systemd,
            listening: false,
            logged_reason: None,
            logged_unknown: (0, 0),
            due_at: None,
            buf: [0; wire::PROBE_MAX_LEN],
        }
    }

    /// At most one line about unknown service names per this many milliseconds.
    const UNKNOWN_EVERY_MS: u64 = 10_000;

    /// How long the loop may sleep before the next look is due (`None`: for ever).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        let left = self.due_at?.saturating_sub(clock::now_ms());
        // The clock is coarse: a millisecond more rather than a wake-up too early.
        Some(Duration::from_millis(left + 1))
    }

    /// After a loop turn: if the bell rang (`rang`) or a deadline passed, looks at the board
    /// and tells every listener what changed; then sets the bell and the next deadline for
    /// whoever listens now.
    pub(crate) fn after_events(&mut self, shared: &Shared, listeners: &[Listener], rang: bool) {
        let now = clock::now_ms();
        if rang {
            shared.board.bell.answered();
        }
        let deadline_passed = self.due_at.is_some_and(|due| now >= due);
        let logs = shared.logger.wanted();
        if logs {
            self.log_unknown_services(shared, now);
        }
        let listening = logs || !self.subscriptions.is_empty() || self.systemd.is_some();
        if listening != self.listening {
            self.listening = listening;
            shared.board.bell.want(listening);
            if listening {
                // Whatever changed before the bell was wanted is seen by this first look.
                self.look(shared, listeners, logs, now);
            } else {
                self.logged_reason = None;
            }
        } else if listening && (rang || deadline_passed) {
            self.look(shared, listeners, logs, now);
        }
        self.due_at = if self.listening {
            [
                shared.board.next_deadline(now),
                self.subscriptions.next_deadline(),
                // The shaped weight moves with time alone: looked at only for subscribers.
                (!self.subscriptions.is_empty())
                    .then(|| shared.board.next_shaping_look(now))
                    .flatten(),
                self.systemd
                    .as_ref()
                    .and_then(SystemdListener::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min()
        } else {
            None
        };
    }

    fn look(&mut self, shared: &Shared, listeners: &[Listener], logs: bool, now: u64) {
        let board = &shared.board;
        if logs || self.systemd.is_some() {
            let server = board.status(Target::Server, now);
            if logs {
                self.log_watchdog(shared, &server);
            }
            if let Some(systemd) = &mut self.systemd {
                systemd.look(shared, &server, now);
            }
        }
        self.subscriptions.expire(now);
        for sub in self.subscriptions.iter_mut() {
            let status = board.status(sub.target, now);
            if status.generation != sub.told {
                sub.due = true;
            }
            if !sub.due || sub.take_push(now).is_err() {
                continue;
            }
            let key = sub
                .key_id
                .and_then(|id| shared.policy.keys.as_ref()?.get(id));
            let sent = (sub.nonce, FLAG_PUSHED);
            let Some(len) = write_status(
                &status,
                sent,
                shared.instance_id,
                (sub.max_len, None),
                key,
                &mut self.buf,
            ) else {
                continue;
            };
            let Some(listener) = listeners.get(sub.listener) else {
                continue;
            };
            match listener.send(sub.peer, sub.local, &self.buf[..len]) {
                Ok(()) => shared.counters.add(Counter::Pushed),
                Err(_) => shared.counters.add(Counter::PushFailed),
            }
            sub.told = status.generation;
            sub.due = false;
        }
    }

    /// The agent stops (`lbagent_stop`): the listeners that must hear it now, before the thread
    /// leaves.
    pub(crate) fn at_stop(&mut self, shared: &Shared) {
        if let Some(systemd) = &mut self.systemd {
            systemd.stopping(shared, clock::now_ms());
        }
    }

    /// Logs the watchdog's expiry and a start that outlasts `start_timeout_ms`, and their
    /// recoveries, once each, as they happen.
    fn log_watchdog(&mut self, shared: &Shared, server: &Status) {
        let before = self.logged_reason;
        self.logged_reason = Some(server.reason);
        if before == Some(server.reason) {
            return;
        }
        match server.reason {
            Reason::WatchdogExpired => log_line!(
                shared.logger,
                Level::Warn,
                "watchdog expired: no heartbeat for {} ms; answering DOWN until the next one",
                u64::from(server.since_ms) + shared.board.watchdog_ms()
            ),
            Reason::StartTimedOut => log_line!(
                shared.logger,
                Level::Warn,
                "start timed out: no heartbeat and no state but STARTING within start_timeout_ms; \
                 answering DOWN until the start ends"
            ),
            _ => match before {
                Some(Reason::WatchdogExpired) => log_line!(
                    shared.logger,
                    Level::Info,
                    "watchdog recovered: a heartbeat came; answering {} again",
                    server.state
                ),
                Some(Reason::StartTimedOut) => log_line!(
                    shared.logger,
                    Level::Info,
                    "the start ended, late; answering {} again",
                    server.state
                ),
                _ => {}
            },
        }
    }

    /// Logs, at most every `UNKNOWN_EVERY_MS`, that host calls named a service that is not
    /// configured (a typo the host's code may ignore: each call returned an error).
    fn log_unknown_services(&mut self, shared: &Shared, now: u64) {
        let count = shared.counters.get(Counter::HostUnknownService);
        let (logged, at) = self.logged_unknown;
        if count == logged || (logged > 0 && now.saturating_sub(at) < Self::UNKNOWN_EVERY_MS) {
            return;
        }
        self.logged_unknown = (count, now);
        log_line!(
            shared.logger,
            Level::Warn,
            "{} host call(s) named a service that is not in services= ({count} so far): a typo? \
             Each returned LBAGENT_ERR_UNKNOWN_SERVICE, and nothing changed",
            count - logged
        );
    }
}
