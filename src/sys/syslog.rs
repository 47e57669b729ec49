//! The system log (`log=syslog`), through nix's wrappers.

use nix::syslog::{Facility, LogFlags, Priority, Severity, openlog, syslog};

/// Opens the connection to syslog with the identity "lbagent", the pid, facility daemon.
pub(crate) fn open() {
    let _ = openlog(Some(c"lbagent"), LogFlags::LOG_PID, Facility::LOG_DAEMON);
}

/// Sends one line at `severity` (a syslog level, 0 emergency .. 7 debug).
pub(crate) fn send(severity: Severity, line: &str) {
    let _ = syslog(Priority::new(severity, Facility::LOG_DAEMON), line);
}
