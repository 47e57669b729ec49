//! The agent's log: quiet by default (`log=none`), or `log=stderr` / `log=syslog`.
//!
//! Lines go through a small bounded queue to a logger thread, so that the monitor thread never
//! blocks on a slow stderr pipe or syslog socket and never allocates to log. At most
//! `LINES_PER_SECOND` lines per second get through (bursts of `BURST`); the lines left out are
//! counted and reported by the next line that gets through.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use nix::syslog::Severity;

use crate::sys::{clock, process, syslog};

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

/// How important a line is. Exported to C as `lbagent_log_level` (`LBAGENT_LOG_LEVEL_*`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something unexpected that the agent handled (drops, limits, stalls).
    Warn = 1,
    /// Lifecycle: started, stopped, forks.
    Info = 2,
}

/// A host function that receives log lines (on the logger thread).
pub type LogCallback = Arc<dyn Fn(Level, &str) + Send + Sync>;

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
        }
    }

    fn syslog_severity(self) -> Severity {
        match self {
            Level::Error => Severity::LOG_ERR,
            Level::Warn => Severity::LOG_WARNING,
            Level::Info => Severity::LOG_INFO,
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
        let cut = crate::proto::wire::cut_utf8(s.as_bytes(), room);
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

/// Where the logger thread sends lines: the configured target and the host's callback.
struct Sinks {
    target: LogTarget,
    callback: Mutex<Option<LogCallback>>,
}

/// The sending side, shared by the agent's threads.
pub(crate) struct Logger {
    gate: Mutex<Gate>,
    sinks: Arc<Sinks>,
    suppressed: AtomicU64,
}

/// The logger thread, when one runs.
pub(crate) type LogThread = Option<std::thread::JoinHandle<()>>;

impl Logger {
    /// A logger for `target`, with the thread that writes its lines (none for `None`).
    pub(crate) fn new(target: LogTarget) -> std::io::Result<(Logger, LogThread)> {
        let logger = Logger {
            gate: Mutex::new(Gate {
                sender: None,
                milli_tokens: BURST * 1000,
                last_ms: clock::now_ms(),
            }),
            sinks: Arc::new(Sinks {
                target,
                callback: Mutex::new(None),
            }),
            suppressed: AtomicU64::new(0),
        };
        let thread = if target == LogTarget::None {
            None
        } else {
            logger.start_thread()?
        };
        Ok((logger, thread))
    }

    /// Starts a logger thread (again, after a fork: the child has none).
    pub(crate) fn start_thread(&self) -> std::io::Result<LogThread> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let sinks = self.sinks.clone();
        let thread = std::thread::Builder::new()
            .name("lbagent-log".into())
            .spawn(move || write_lines(&sinks, rx))?;
        self.gate.lock().sender = Some(tx);
        Ok(Some(thread))
    }

    /// Sends lines to `callback` too (None removes it). Returns a new logger thread when one
    /// had to be started.
    pub(crate) fn set_callback(&self, callback: Option<LogCallback>) -> std::io::Result<LogThread> {
        let wanted = callback.is_some();
        *self.sinks.callback.lock() = callback;
        if wanted && self.gate.lock().sender.is_none() {
            return self.start_thread();
        }
        Ok(None)
    }

    /// True when lines have somewhere to go (a target or a callback).
    pub(crate) fn wanted(&self) -> bool {
        self.sinks.target != LogTarget::None || self.sinks.callback.lock().is_some()
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

fn write_lines(sinks: &Sinks, lines: Receiver<Line>) {
    process::block_sigpipe_in_this_thread();
    let target = sinks.target;
    if target == LogTarget::Syslog {
        syslog::open();
    }
    let pid = std::process::id();
    for line in lines {
        let text = String::from_utf8_lossy(&line.text[..line.len]);
        let callback = sinks.callback.lock().clone();
        if let Some(callback) = callback {
            // A panicking host callback must not end the logger thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                callback(line.level, &text)
            }));
        }
        match target {
            LogTarget::None => {}
            LogTarget::Syslog => {
                syslog::send(line.level.syslog_severity(), &text.replace('\0', " "))
            }
            LogTarget::Stderr => {
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
