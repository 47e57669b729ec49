//! Log lines on stderr. Under systemd (`JOURNAL_STREAM` is set) each line starts with its
//! syslog priority, `<5>` (sd-daemon(3)), and the journal adds the time; otherwise each line
//! starts with an RFC 3339 UTC timestamp and the program name, like syslog.

use std::io::Write;
use std::time::SystemTime;

/// Syslog priorities used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Cannot do what was asked (a reload that failed, a file that cannot be written).
    Error = 3,
    /// Something to look at.
    Warning = 4,
    /// A transition: a real server taken out or put back.
    Notice = 5,
    /// Start, reload, stop.
    Info = 6,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
        }
    }
}

/// Where log lines go, and in which form.
pub struct Log {
    journal: bool,
    pid: u32,
}

impl Log {
    /// Chooses the form from the environment.
    pub fn from_env() -> Log {
        Log {
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
            pid: std::process::id(),
        }
    }

    /// Writes one line (one write to stderr, so lines never interleave).
    pub fn line(&self, level: Level, message: std::fmt::Arguments<'_>) {
        let line = if self.journal {
            format!("<{}>{message}\n", level as u8)
        } else {
            format!(
                "{} lbagent-director[{}]: {}: {message}\n",
                humantime::format_rfc3339_millis(SystemTime::now()),
                self.pid,
                level.word()
            )
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
