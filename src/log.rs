//! The agent's log: quiet by default (`log=none`), or `log=stderr` / `log=syslog`.
//!
//! Lines go through a small bounded queue to a logger thread, so that the monitor thread never
//! blocks on a slow stderr pipe or syslog socket and never allocates to log. At most
//! `LINES_PER_SECOND` lines per second get through (bursts of `BURST`); the lines left out are
//! counted and reported by the next line that gets through.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::clock;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Nowhere (the default: a library is quiet unless asked).
    None,
    /// Standard error, one line per message: `lbagent[PID]: LEVEL: text`.
    Stderr,
    /// The system log (facility daemon, ident "lbagent").
    Syslog,
}

/// How important a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something unexpected that the agent handled (drops, limits).
    Warn,
    /// Lifecycle: started, stopped.
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
        }
    }

    fn syslog_priority(self) -> libc::c_int {
        match self {
            Level::Error => libc::LOG_ERR,
            Level::Warn => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
        }
    }
}

/// Longest line, in bytes; longer text is cut.
const LINE: usize = 400;
const QUEUE: usize = 64;
const LINES_PER_SECOND: u64 = 10;
const BURST: u64 = 20;

/// A line held inline: sending one copies bytes, never allocates.
struct Line {
    level: Level,
    len: usize,
    text: [u8; LINE],
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE - self.len;
        let cut = crate::wire::cut_utf8(s.as_bytes(), room);
        self.text[self.len..self.len + cut.len()].copy_from_slice(cut);
        self.len += cut.len();
        Ok(())
    }
}

struct Gate {
    sender: Option<Sender<Line>>,
    milli_tokens: u64,
    last_ms: u64,
}

/// The sending side, shared by the agent's threads.
pub(crate) struct Logger {
    gate: Mutex<Gate>,
    suppressed: AtomicU64,
}

impl Logger {
    /// A logger for `target`, with the thread that writes its lines (none for `None`).
    pub(crate) fn new(
        target: LogTarget,
    ) -> std::io::Result<(Logger, Option<std::thread::JoinHandle<()>>)> {
        let (sender, thread) = match target {
            LogTarget::None => (None, None),
            _ => {
                let (tx, rx) = crossbeam_channel::bounded(QUEUE);
                let thread = std::thread::Builder::new()
                    .name("lbagent-log".into())
                    .spawn(move || write_lines(target, rx))?;
                (Some(tx), Some(thread))
            }
        };
        let logger = Logger {
            gate: Mutex::new(Gate {
                sender,
                milli_tokens: BURST * 1000,
                last_ms: clock::now_ms(),
            }),
            suppressed: AtomicU64::new(0),
        };
        Ok((logger, thread))
    }

    /// Logs one line, unless the rate limit or a full queue leaves it out (then counted).
    pub(crate) fn log(&self, level: Level, args: fmt::Arguments<'_>) {
        let mut gate = self.gate.lock();
        let Some(sender) = gate.sender.clone() else {
            return;
        };
        let now = clock::now_ms();
        let elapsed = now.saturating_sub(gate.last_ms);
        gate.last_ms = now;
        gate.milli_tokens = (gate.milli_tokens + elapsed * LINES_PER_SECOND).min(BURST * 1000);
        if gate.milli_tokens < 1000 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        gate.milli_tokens -= 1000;
        drop(gate);
        let mut line = Line {
            level,
            len: 0,
            text: [0; LINE],
        };
        let _ = line.write_fmt(args);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            let _ = write!(
                line,
                " ({suppressed} earlier lines left out by the rate limit)"
            );
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(line) {
            self.suppressed.fetch_add(1 + suppressed, Ordering::Relaxed);
        }
    }

    /// Stops taking lines; the logger thread writes what is queued and exits.
    pub(crate) fn close(&self) {
        self.gate.lock().sender = None;
    }
}

fn write_lines(target: LogTarget, lines: Receiver<Line>) {
    if target == LogTarget::Syslog {
        // SAFETY: the ident is a static NUL-terminated string, as openlog requires.
        unsafe { libc::openlog(c"lbagent".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    }
    let pid = std::process::id();
    for line in lines {
        let text = String::from_utf8_lossy(&line.text[..line.len]);
        match target {
            LogTarget::Syslog => {
                let Ok(c) = std::ffi::CString::new(text.replace('\0', " ")) else {
                    continue;
                };
                // SAFETY: "%s" with one NUL-terminated string argument.
                unsafe { libc::syslog(line.level.syslog_priority(), c"%s".as_ptr(), c.as_ptr()) };
            }
            _ => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "lbagent[{pid}]: {}: {text}",
                    line.level.name()
                );
            }
        }
    }
}

/// Logs through a `Logger` with `format!`-style arguments.
macro_rules! log_line {
    ($logger:expr, $level:expr, $($arg:tt)*) => {
        $logger.log($level, format_args!($($arg)*))
    };
}
pub(crate) use log_line;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_and_counted() {
        let (logger, thread) = Logger::new(LogTarget::Stderr).unwrap();
        for i in 0..100 {
            log_line!(logger, Level::Info, "line {i}");
        }
        // The burst got through; the rest were counted.
        assert!(logger.suppressed.load(Ordering::Relaxed) >= 100 - BURST - 1);
        logger.close();
        thread.unwrap().join().unwrap();
        let (quiet, none) = Logger::new(LogTarget::None).unwrap();
        assert!(none.is_none());
        log_line!(quiet, Level::Error, "nowhere");
    }
}
