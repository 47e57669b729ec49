//! What the host-facing handle, the monitor thread and the check threads share: the status
//! board, the counters, the answering policy and the logger, behind one `Arc`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32};

use crate::counters::{Counter, Counters};
use crate::guard::Policy;
use crate::log::{Level, Logger, log_line};
use crate::status::Board;
use crate::sys::clock;

/// State shared by the host-facing handle and the agent's threads.
pub(crate) struct Shared {
    pub board: Board,
    pub counters: Counters,
    pub instance_id: u64,
    pub policy: Policy,
    pub logger: Logger,
    /// Tells this process's monitor thread to finish (memory of this process only: `stop` in
    /// a parent does not reach a child that took the agent over).
    pub quit: AtomicBool,
    /// Test hook: the next datagram or connection handled panics (see `Agent::inject_fault`).
    pub inject_fault: AtomicBool,
    /// Test hook: the thread waits this long before letting go of the sockets when it
    /// finishes (see `Agent::inject_exit_delay`).
    pub exit_delay_ms: AtomicU32,
}

impl Shared {
    /// Records a panic caught on the monitor thread while doing `what`: counted, logged, and
    /// from now on every answer says DOWN, "agent fault" (the agent can no longer vouch for
    /// the server). The one place where the agent's faults are handled.
    pub(crate) fn fault(&self, what: fmt::Arguments<'_>) {
        self.counters.add(Counter::Faults);
        self.board.record_fault(clock::now_ms());
        log_line!(
            self.logger,
            Level::Error,
            "internal fault (panic caught) while {what}; answering DOWN (agent fault) from now on"
        );
    }

    /// Panics when a test asked for a fault (`Agent::inject_fault`): called where a datagram
    /// or a connection is handled, inside their panic guards.
    pub(crate) fn maybe_inject_fault(&self) {
        if self
            .inject_fault
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            panic!("lbagent: injected fault (test hook)");
        }
    }
}
