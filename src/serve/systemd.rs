//! systemd as a listener of the watch (`systemd=on`, under a unit with `Type=notify`):
//!
//! - `READY=1` when the host first reports the whole server UP (the start is over), whatever
//!   the operator's override says (a drain kept in `state_file=` across a restart must not
//!   hold the start back until systemd's start timeout kills the server);
//! - `STATUS=` with the state, the reason, the weight and the message, on every change of what
//!   directors are told about the whole server (the bell, and the deadlines the watch keeps);
//! - `WATCHDOG=1` every half of `WatchdogSec=`, from a timer of the watch, only while the
//!   host's heartbeats are fresh: within `watchdog_ms` (the agent's own watchdog has not
//!   expired) or, without it, within `WatchdogSec=`. A hung server, which directors already
//!   take out (answered DOWN), is then restarted by systemd. The host's calls are unchanged;
//! - `STOPPING=1` only at `lbagent_stop` (never when the host drains: that would start
//!   systemd's stop timeout while connections finish).
//!
//! Messages are written into a fixed buffer: nothing is allocated.

use std::io::{Cursor, Write};

use crate::shared::Shared;
use crate::state::{Reason, State};
use crate::status::{Status, Target};
use crate::sys::notify::{Notifier, NotifyTarget};

/// What systemd has been told.
pub(crate) struct SystemdListener {
    notifier: Notifier,
    /// Half of `WatchdogSec=`, in milliseconds (0: no watchdog).
    every_ms: u64,
    /// How old the last heartbeat may be for `WATCHDOG=1` when `watchdog_ms` is off.
    window_ms: u64,
    ready_sent: bool,
    /// The generation of the whole server's status last told.
    told: Option<u32>,
    next_watchdog_at: u64,
    stopping_sent: bool,
    buf: [u8; 512],
}

impl SystemdListener {
    pub(crate) fn open(target: NotifyTarget) -> std::io::Result<SystemdListener> {
        let watchdog_ms = target.watchdog.map_or(0, |d| d.as_millis() as u64);
        Ok(SystemdListener {
            notifier: Notifier::open(target)?,
            every_ms: watchdog_ms / 2,
            window_ms: watchdog_ms,
            ready_sent: false,
            told: None,
            next_watchdog_at: 0,
            stopping_sent: false,
            buf: [0; 512],
        })
    }

    /// When the next `WATCHDOG=1` is due, if systemd has a watchdog for us.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (self.every_ms > 0 && !self.stopping_sent).then_some(self.next_watchdog_at)
    }

    /// A look of the watch at clock time `now`.
    pub(crate) fn look(&mut self, shared: &Shared, server: &Status, now: u64) {
        if self.stopping_sent {
            return;
        }
        if self.told != Some(server.generation) {
            self.told = Some(server.generation);
            let ready = !self.ready_sent
                && (server.state == State::Up
                    || shared.board.host_status(Target::Server, now).state == State::Up);
            self.ready_sent |= ready;
            let len = self.status_message(server, ready);
            let _ = self.notifier.send(&self.buf[..len]);
        }
        if self.every_ms > 0 && now >= self.next_watchdog_at {
            self.next_watchdog_at = now + self.every_ms;
            if self.heartbeats_fresh(shared, now) {
                let _ = self.notifier.send(b"WATCHDOG=1");
            }
        }
    }

    /// At `lbagent_stop`: `STOPPING=1`, with the status that says so.
    pub(crate) fn stopping(&mut self, shared: &Shared, now: u64) {
        if self.stopping_sent || !shared.board.is_stopping() {
            return;
        }
        self.stopping_sent = true;
        let server = shared.board.status(Target::Server, now);
        let mut w = Cursor::new(&mut self.buf[..]);
        let _ = w.write_all(b"STOPPING=1\n");
        let start = w.position() as usize;
        let len = start + write_status(&server, &mut self.buf[start..]);
        let _ = self.notifier.send(&self.buf[..len]);
    }

    fn heartbeats_fresh(&self, shared: &Shared, now: u64) -> bool {
        let board = &shared.board;
        let last = board.heartbeat_at();
        if last == 0 {
            return false;
        }
        let window = match board.watchdog_ms() {
            0 => self.window_ms,
            ms => ms,
        };
        now.saturating_sub(last) <= window
    }

    fn status_message(&mut self, server: &Status, ready: bool) -> usize {
        let mut start = 0;
        if ready {
            self.buf[..8].copy_from_slice(b"READY=1\n");
            start = 8;
        }
        start + write_status(server, &mut self.buf[start..])
    }
}

/// `STATUS=up (set by host), weight 100%: ready` (cut to fit `out`).
fn write_status(status: &Status, out: &mut [u8]) -> usize {
    let mut w = Cursor::new(out);
    let reason = if status.reason == Reason::Host {
        "set by host"
    } else {
        status.reason.describe()
    };
    let _ = write!(
        w,
        "STATUS={} ({reason}), weight {}%",
        status.state.name(),
        status.weight_pct
    );
    let message = status.message.as_str();
    if !message.is_empty() && message != status.reason.describe() {
        let _ = write!(w, ": {message}");
    }
    w.position() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Text;

    #[test]
    fn status_lines() {
        let mut out = [0u8; 512];
        let s = Status {
            state: State::Drain,
            reason: Reason::Operator,
            weight_pct: 100,
            in_use: 0,
            capacity: 0,
            generation: 3,
            since_ms: 0,
            message: Text::from_static("kernel update"),
        };
        let len = write_status(&s, &mut out);
        assert_eq!(
            std::str::from_utf8(&out[..len]).unwrap(),
            "STATUS=drain (set by operator), weight 100%: kernel update"
        );
        let long = Status {
            message: Text::from_reason(&[b'x'; 255]),
            ..s
        };
        let mut small = [0u8; 40];
        assert_eq!(write_status(&long, &mut small), 40, "cut, never failing");
    }
}
