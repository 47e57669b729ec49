//! Host self-checks, runner side: one thread per check calls the host's function every
//! interval and records the verdict on the board (`checks.rs`). The monitor thread
//! never runs host code: a check that hangs only holds its own thread, and the monitor sees
//! it overdue from the board.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::shared::Shared;
use crate::sys::clock;

/// A check: `Ok(())` passes; `Err(message)` fails with that message.
pub type CheckFn = Box<dyn FnMut() -> Result<(), String> + Send>;

/// One running check.
pub(crate) struct Runner {
    pub name: String,
    /// Its record on the board, and the ticket that proves the record is still its own.
    pub index: usize,
    ticket: u64,
    pub interval: Duration,
    /// The host's function, kept here too so that a forked child can run it again.
    job: Arc<Mutex<CheckFn>>,
    stop: Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    /// Starts a thread that runs `job` at once, then every `interval`.
    pub(crate) fn start(
        shared: Arc<Shared>,
        name: String,
        (index, ticket): (usize, u64),
        interval: Duration,
        job: Arc<Mutex<CheckFn>>,
    ) -> std::io::Result<Runner> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread_job = job.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lbagent-check-{index}"))
            .spawn(move || run(&shared, (index, ticket), interval, &thread_job, &stopped))?;
        Ok(Runner {
            name,
            index,
            ticket,
            interval,
            job,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts the same check again (in a forked child, where the thread does not exist).
    pub(crate) fn restart(&mut self, shared: Arc<Shared>) -> std::io::Result<()> {
        if let Some(old) = self.thread.take() {
            // That thread lives in the parent only: forget its handle, never join it here.
            std::mem::forget(old);
        }
        let fresh = Runner::start(
            shared,
            self.name.clone(),
            (self.index, self.ticket),
            self.interval,
            self.job.clone(),
        )?;
        *self = fresh;
        Ok(())
    }

    /// Tells the thread to finish after the current run (the host's function is never called
    /// again); returns the thread to join, if the caller wants to wait.
    pub(crate) fn finish(mut self) -> Option<std::thread::JoinHandle<()>> {
        let _ = self.stop.try_send(());
        self.thread.take()
    }

    /// Forgets the thread of another process (after a fork).
    pub(crate) fn forget_thread(&mut self) {
        if let Some(old) = self.thread.take() {
            std::mem::forget(old);
        }
    }
}

fn run(
    shared: &Shared,
    (index, ticket): (usize, u64),
    interval: Duration,
    job: &Mutex<CheckFn>,
    stopped: &Receiver<()>,
) {
    loop {
        let started = Instant::now();
        shared
            .board
            .checks
            .begin_run(index, ticket, clock::now_ms());
        let outcome = {
            let mut job = job.lock();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (*job)()))
        };
        let (passed, message) = match &outcome {
            Ok(Ok(())) => (true, ""),
            Ok(Err(message)) => (false, message.as_str()),
            Err(_) => (false, "the check panicked"),
        };
        let changed = shared.board.checks.finish_run(
            index,
            ticket,
            passed,
            message.as_bytes(),
            clock::now_ms(),
        );
        if changed {
            shared.board.bell.ring();
        }
        let wait = interval.saturating_sub(started.elapsed());
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
