//! Host self-checks, board side: each check's verdict and whether it is running, in shared
//! memory, so that the monitor judges a check that hangs (timed out) without waiting for it.
//! The threads that run the callbacks are in `runner.rs`.
//!
//! A new check starts failing ("no result yet") until its first run passes, like Consul's
//! new checks start critical: a service that asks to be checked is not served unchecked.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::{Reason, State};
use crate::status::{Cell, Text};
use crate::sys::shm::{ShmSlice, Zeroable};

/// Most checks per agent (one bit each in the active set).
pub const MAX_CHECKS: usize = 64;
/// Longest check name.
pub const MAX_CHECK_NAME: usize = 64;

const FREE: u64 = 0;
const CLAIMED: u64 = 1;
const ACTIVE: u64 = 2;

#[derive(Zeroable)]
#[repr(C)]
pub(crate) struct CheckRecord {
    /// FREE, CLAIMED (being set up or torn down) or ACTIVE.
    state: AtomicU64,
    /// Changes at every `add`: a runner of a removed check cannot touch its successor.
    ticket: AtomicU64,
    /// Index of the cell the check applies to (0: the whole server).
    cell: AtomicU64,
    timeout_ms: AtomicU64,
    /// Clock time the current run started; 0 when not running.
    running_since: AtomicU64,
    /// Times the check was seen to start or stop being overdue (for the generation).
    overdue_flips: AtomicU64,
    name_len: AtomicU64,
    name: [AtomicU64; MAX_CHECK_NAME / 8],
    /// UP while passing, DOWN while failing; the message says why.
    verdict: Cell,
}

impl CheckRecord {
    fn name(&self) -> Text {
        let len = (self.name_len.load(Ordering::Relaxed) as usize).min(MAX_CHECK_NAME);
        let mut bytes = [0u8; MAX_CHECK_NAME];
        for (i, word) in self.name.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        Text::from_reason(&bytes[..len])
    }

    fn has_name(&self, name: &[u8]) -> bool {
        self.name().as_bytes() == name
    }
}

/// What failing checks do to one answer.
pub(crate) struct ChecksView {
    /// Sum of the generations of the checks that apply (grows on every verdict change).
    pub generation: u32,
    /// The first failing check: reason, message, and when it started failing.
    pub failing: Option<(Reason, Text, u64)>,
}

/// Why a check could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddError {
    Full,
    Duplicate,
}

pub(crate) struct Checks {
    /// Bit i is set while record i is active: every answer asks which checks apply, and
    /// reading one word instead of 64 records (150 KiB, 37 pages) keeps an agent without
    /// checks from touching them at all.
    active: ShmSlice<AtomicU64>,
    records: ShmSlice<CheckRecord>,
}

const _: () = assert!(MAX_CHECKS <= 64);

impl Checks {
    pub(crate) fn new() -> std::io::Result<Checks> {
        Ok(Checks {
            active: ShmSlice::new(1)?,
            records: ShmSlice::new(MAX_CHECKS)?,
        })
    }

    /// The records that are (or are about to be) active, with their index.
    fn active(&self) -> impl Iterator<Item = (usize, &CheckRecord)> {
        let mut bits = self.active[0].load(Ordering::Acquire);
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
        .filter_map(|i| self.records.get(i).map(|r| (i, r)))
        .filter(|(_, r)| r.state.load(Ordering::Acquire) == ACTIVE)
    }

    /// Adds a check on cell `cell`; returns its index and ticket.
    pub(crate) fn add(
        &self,
        cell: usize,
        name: &[u8],
        timeout_ms: u32,
        now: u64,
    ) -> Result<(usize, u64), AddError> {
        if self.find(name).is_some() {
            return Err(AddError::Duplicate);
        }
        let (index, record) = self
            .records
            .iter()
            .enumerate()
            .find(|(_, r)| {
                r.state
                    .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(AddError::Full)?;
        let mut padded = [0u8; MAX_CHECK_NAME];
        let name = &name[..name.len().min(MAX_CHECK_NAME)];
        padded[..name.len()].copy_from_slice(name);
        for (i, word) in record.name.iter().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&padded[i * 8..i * 8 + 8]);
            word.store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        record.name_len.store(name.len() as u64, Ordering::Relaxed);
        record.cell.store(cell as u64, Ordering::Relaxed);
        record
            .timeout_ms
            .store(u64::from(timeout_ms), Ordering::Relaxed);
        record.running_since.store(0, Ordering::Relaxed);
        let mut pending = record.name();
        let _ = write!(pending, ": no result yet");
        record
            .verdict
            .init(State::Down, Reason::CheckFailed, Some(&pending), now);
        let ticket = record.ticket.fetch_add(1, Ordering::AcqRel) + 1;
        record.state.store(ACTIVE, Ordering::Release);
        self.active[0].fetch_or(1 << index, Ordering::AcqRel);
        Ok((index, ticket))
    }

    /// The record `index` if it is still the check that got `ticket`.
    fn current(&self, index: usize, ticket: u64) -> Option<&CheckRecord> {
        self.records.get(index).filter(|r| {
            r.state.load(Ordering::Acquire) == ACTIVE && r.ticket.load(Ordering::Acquire) == ticket
        })
    }

    /// The index of the active check called `name`.
    pub(crate) fn find(&self, name: &[u8]) -> Option<usize> {
        self.active()
            .find(|(_, r)| r.has_name(name))
            .map(|(i, _)| i)
    }

    /// Removes check `index`: from now on it no longer counts.
    pub(crate) fn remove(&self, index: usize) {
        if let Some(r) = self.records.get(index) {
            r.running_since.store(0, Ordering::Release);
            if r.state
                .compare_exchange(ACTIVE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Cleared before the record is free: a new check in it sets the bit again.
                self.active[0].fetch_and(!(1 << index), Ordering::AcqRel);
                r.state.store(FREE, Ordering::Release);
            }
        }
    }

    /// The check's thread starts a run.
    pub(crate) fn begin_run(&self, index: usize, ticket: u64, now: u64) {
        if let Some(r) = self.current(index, ticket) {
            r.running_since.store(now.max(1), Ordering::Release);
        }
    }

    /// The check's thread records a result; returns whether the verdict changed.
    pub(crate) fn finish_run(
        &self,
        index: usize,
        ticket: u64,
        passed: bool,
        message: &[u8],
        now: u64,
    ) -> bool {
        let Some(r) = self.current(index, ticket) else {
            return false;
        };
        let started = r.running_since.swap(0, Ordering::AcqRel);
        let took = now.saturating_sub(started);
        let timeout = r.timeout_ms.load(Ordering::Relaxed);
        let mut text = r.name();
        let (state, reason) = if !passed {
            let _ = text.write_str(": ");
            let _ = text.write_str(if message.is_empty() { "failed" } else { "" });
            let shown = Text::from_reason(message);
            let _ = text.write_str(shown.as_str());
            (State::Down, Reason::CheckFailed)
        } else if timeout > 0 && took > timeout {
            // It passed, but too late: a check that hangs is a failure.
            let _ = write!(text, ": took {took} ms, over its {timeout} ms timeout");
            (State::Down, Reason::CheckTimedOut)
        } else {
            let _ = text.write_str(": ok");
            (State::Up, Reason::Host)
        };
        r.verdict.set(state, reason, Some(&text), now)
    }

    /// The earliest time after `now` at which a running check becomes overdue.
    pub(crate) fn next_overdue(&self, now: u64) -> Option<u64> {
        self.active()
            .filter_map(|(_, r)| {
                let since = r.running_since.load(Ordering::Acquire);
                let timeout = r.timeout_ms.load(Ordering::Relaxed);
                (since != 0 && timeout > 0).then_some(since + timeout + 1)
            })
            .filter(|at| *at > now)
            .min()
    }

    /// What the checks on `cells` (the server's, and a service's) do to an answer at `now`.
    pub(crate) fn view(&self, cells: [Option<usize>; 2], now: u64) -> ChecksView {
        let mut view = ChecksView {
            generation: 0,
            failing: None,
        };
        for (_, r) in self.active() {
            let cell = r.cell.load(Ordering::Relaxed) as usize;
            if !cells.contains(&Some(cell)) {
                continue;
            }
            let verdict = r.verdict.read();
            let running_since = r.running_since.load(Ordering::Acquire);
            let timeout = r.timeout_ms.load(Ordering::Relaxed);
            let overdue =
                timeout > 0 && running_since != 0 && now.saturating_sub(running_since) > timeout;
            // Count each change of "overdue" once, whoever sees it first.
            let flips = loop {
                let flips = r.overdue_flips.load(Ordering::Acquire);
                if (flips & 1 == 1) == overdue {
                    break flips;
                }
                if r.overdue_flips
                    .compare_exchange(flips, flips + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break flips + 1;
                }
            };
            view.generation = view
                .generation
                .wrapping_add(verdict.generation)
                .wrapping_add(flips as u32);
            if view.failing.is_some() {
                continue;
            }
            if overdue {
                let mut text = r.name();
                let _ = write!(
                    text,
                    ": timed out, running for {} ms (timeout {timeout} ms)",
                    now.saturating_sub(running_since)
                );
                view.failing = Some((Reason::CheckTimedOut, text, running_since + timeout));
            } else if verdict.state != State::Up {
                view.failing = Some((verdict.reason, verdict.message, verdict.changed_at));
            }
        }
        view
    }
}
