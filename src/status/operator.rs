//! The operator's override (`control=PATH`, `lbagent-ctl`): an operator takes the whole server
//! out (drain or maint) without touching the application, for a while or until told otherwise.
//!
//! It wins over the host's view only toward less serving (see `Board::status`): an operator's
//! drain of a server the host reports DOWN still answers DOWN. It ends by itself when given a
//! duration: its expiry is judged lazily, like the watchdog, and counted once in `flips`, so
//! that it shows in the generation and the monitor's listeners hear it (the monitor sets a
//! deadline at `until`).
//!
//! Only the monitor thread writes it (it serves the control socket); probes, the host's status
//! calls and forked workers read it, without locks, from shared memory like the rest of the
//! board.

use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::{Cell, Text};
use crate::state::{Reason, State};
use crate::sys::shm::{ShmSlice, Zeroable};

#[derive(Zeroable)]
#[repr(C)]
struct Times {
    /// Clock time at which the override ends by itself; 0: only when cleared.
    until: AtomicU64,
    /// Transitions of "in force" observed so far; odd while in force.
    flips: AtomicU64,
    changed_at: AtomicU64,
}

/// What the operator set, as it stands at some clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    /// `Drain` or `Maint`.
    pub state: State,
    /// The operator's reason (`--reason`), or empty.
    pub message: Text,
    /// Clock time (milliseconds, `sys::clock`) when it ends by itself; `None`: when cleared.
    pub until: Option<u64>,
    /// Clock time when it was set.
    pub set_at: u64,
}

impl Override {
    /// The states an operator may set (the others come from the host or the agent).
    pub fn settable(state: State) -> bool {
        matches!(state, State::Drain | State::Maint)
    }
}

/// The override's place on the board.
pub(crate) struct Operator {
    /// State `Up` (with reason `Host`) means no override.
    cell: ShmSlice<Cell>,
    times: ShmSlice<Times>,
}

impl Operator {
    pub(crate) fn new(now: u64) -> std::io::Result<Operator> {
        let operator = Operator {
            cell: ShmSlice::new(1)?,
            times: ShmSlice::new(1)?,
        };
        operator.cell[0].init(State::Up, Reason::Host, None, now);
        Ok(operator)
    }

    fn times(&self) -> &Times {
        &self.times[0]
    }

    /// Sets the override (`state` drain or maint), or clears it (`state` up). Returns whether
    /// anything changed. Monitor thread only (one writer).
    pub(crate) fn set(
        &self,
        state: State,
        message: Option<&Text>,
        until: Option<u64>,
        now: u64,
    ) -> bool {
        let (state, reason, message, until) = if Override::settable(state) {
            (state, Reason::Operator, message, until.unwrap_or(0))
        } else {
            (State::Up, Reason::Host, None, 0)
        };
        // An override that ended by itself is cleared first, so that a new one starts afresh
        // (its own `set_at`).
        if self
            .get()
            .is_some_and(|o| o.until.is_some_and(|u| now >= u))
        {
            self.cell[0].set(State::Up, Reason::Host, None, now);
        }
        // A new expiry alone changes nothing a director is told (no generation): the monitor
        // reads it again for its deadline.
        let old_until = self.times().until.swap(until, Ordering::AcqRel);
        self.cell[0].set(state, reason, message, now) || old_until != until
    }

    /// The override set now, whether or not it has expired (the state file, `status`).
    pub(crate) fn get(&self) -> Option<Override> {
        let view = self.cell[0].read();
        if !Override::settable(view.state) {
            return None;
        }
        let until = self.times().until.load(Ordering::Acquire);
        Some(Override {
            state: view.state,
            message: view.message,
            until: (until != 0).then_some(until),
            set_at: view.changed_at,
        })
    }

    /// The override in force at `now` (not expired), with the changes counted so far (for
    /// the generation) and the time of the last one (for `since_ms`).
    pub(crate) fn observe(&self, now: u64) -> (Option<Override>, u64, u32, u64) {
        let view = self.cell[0].read();
        let t = self.times();
        let (_, flips, at) = super::Board::observe_condition(&t.flips, &t.changed_at, || {
            let until = t.until.load(Ordering::Acquire);
            let set = Override::settable(view.state);
            if set && (until == 0 || now < until) {
                (true, view.changed_at)
            } else if set {
                (false, until)
            } else {
                (false, view.changed_at)
            }
        });
        let in_force = (flips & 1 == 1)
            .then(|| self.get())
            .flatten()
            .filter(|o| o.until.is_none_or(|u| now < u));
        (in_force, flips, view.generation, at)
    }

    /// When an override in force ends by itself, if it does and has not yet.
    pub(crate) fn next_deadline(&self, now: u64) -> Option<u64> {
        self.get()
            .and_then(|o| o.until)
            .filter(|until| *until >= now)
            .map(|until| until + 1)
    }
}
