//! Worker watchdog slots: each worker thread or process heart-beats its own slot; a slot whose
//! heartbeat is older than `worker_timeout_ms` is a stalled worker. Policy (`worker_policy`):
//! `any` stalled worker makes the server DOWN, or the weight is `proportional` to the share of
//! live workers (DOWN when none is live).
//!
//! Slots live in shared memory, so a prefork master sees its forked workers. A slot holds the
//! id of the process that registered it; slots of processes that died are taken back when
//! no slot is free, or released by the master (`release_pid`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::Text;
use crate::sys::shm::{ShmSlice, Zeroable};

/// What a stalled worker does to the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPolicy {
    /// Any stalled worker makes the whole server DOWN (reason "worker stalled").
    Any,
    /// The weight is scaled by live / registered workers; DOWN when none is live.
    Proportional,
}

#[derive(Zeroable)]
#[repr(C)]
pub(crate) struct WorkerSlot {
    /// Owner process id; 0 when free.
    pid: AtomicU64,
    /// Clock time of the last heartbeat.
    heartbeat_at: AtomicU64,
}

/// What the workers say now. Large (the message is inline) but `Copy` and built on the monitor
/// thread for every answer: a boxed message would allocate per probe.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum WorkersEffect {
    /// No slot registered, or all live: no effect.
    None,
    /// Scale the weight by `live / active`.
    Scale { live: u32, active: u32 },
    /// Answer DOWN, reason "worker stalled", with this message.
    Down(Text),
}

pub(crate) struct Workers {
    slots: ShmSlice<WorkerSlot>,
    timeout_ms: u64,
    policy: WorkerPolicy,
}

impl Workers {
    pub(crate) fn new(
        count: usize,
        timeout_ms: u32,
        policy: WorkerPolicy,
    ) -> std::io::Result<Workers> {
        Ok(Workers {
            slots: ShmSlice::new(count)?,
            timeout_ms: u64::from(timeout_ms),
            policy,
        })
    }

    /// Claims a free slot for process `pid`; `None` when every slot is taken by a live process.
    pub(crate) fn register(&self, pid: u32, now: u64) -> Option<usize> {
        for pass in 0..2 {
            for (i, slot) in self.slots.iter().enumerate() {
                // Set the heartbeat first: a slot is never seen active with a stale time.
                if slot.pid.load(Ordering::Acquire) == 0 {
                    slot.heartbeat_at.store(now, Ordering::Release);
                    if slot
                        .pid
                        .compare_exchange(0, u64::from(pid), Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        slot.heartbeat_at.store(now, Ordering::Release);
                        return Some(i);
                    }
                }
            }
            if pass == 0 {
                self.release_dead();
            }
        }
        None
    }

    /// Records a heartbeat: `None` when `slot` is not registered, else whether the worker was
    /// stalled until now (its recovery changes what directors are told).
    pub(crate) fn heartbeat(&self, slot: usize, now: u64) -> Option<bool> {
        match self.slots.get(slot) {
            Some(s) if s.pid.load(Ordering::Relaxed) != 0 => {
                let before = s.heartbeat_at.load(Ordering::Relaxed);
                s.heartbeat_at.store(now, Ordering::Release);
                Some(now.saturating_sub(before) > self.timeout_ms)
            }
            _ => None,
        }
    }

    /// The earliest time after `now` at which a live worker becomes stalled if it does not
    /// heart-beat before.
    pub(crate) fn next_stall(&self, now: u64) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.pid.load(Ordering::Acquire) != 0)
            .map(|s| s.heartbeat_at.load(Ordering::Acquire) + self.timeout_ms + 1)
            .filter(|at| *at > now)
            .min()
    }

    /// Frees a slot; false when it was not registered.
    pub(crate) fn unregister(&self, slot: usize) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|s| s.pid.swap(0, Ordering::AcqRel) != 0)
    }

    /// Frees every slot of process `pid` (a prefork master calls this when it reaps a worker);
    /// returns how many.
    pub(crate) fn release_pid(&self, pid: u32) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.pid
                    .compare_exchange(u64::from(pid), 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .count()
    }

    fn release_dead(&self) {
        for s in self.slots.iter() {
            let pid = s.pid.load(Ordering::Acquire);
            if pid != 0 && !crate::sys::process::alive(pid as u32) {
                let _ = s
                    .pid
                    .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Registered and live workers now, and the first stalled one (slot, pid, age).
    pub(crate) fn census(&self, now: u64) -> (u32, u32, Option<(usize, u64, u64)>) {
        let (mut active, mut live, mut stalled) = (0, 0, None);
        for (i, s) in self.slots.iter().enumerate() {
            let pid = s.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            active += 1;
            let age = now.saturating_sub(s.heartbeat_at.load(Ordering::Acquire));
            if age > self.timeout_ms {
                stalled.get_or_insert((i, pid, age));
            } else {
                live += 1;
            }
        }
        (active, live, stalled)
    }

    /// What the workers do to the answer now.
    pub(crate) fn effect(&self, now: u64) -> WorkersEffect {
        let (active, live, stalled) = self.census(now);
        let Some((slot, pid, age)) = stalled else {
            return WorkersEffect::None;
        };
        if self.policy == WorkerPolicy::Proportional && live > 0 {
            return WorkersEffect::Scale { live, active };
        }
        let mut text = Text::EMPTY;
        let _ = write!(
            text,
            "worker {slot} (pid {pid}) stalled for {age} ms; {live} of {active} workers live"
        );
        WorkersEffect::Down(text)
    }

    /// A number that changes whenever the effect changes (for the generation).
    pub(crate) fn key(&self, now: u64) -> u64 {
        let (active, live, _) = self.census(now);
        u64::from(active) << 32 | u64::from(live)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
