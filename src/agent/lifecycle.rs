//! The agent's threads and sockets across start, stop and fork: what only host threads touch
//! (never the monitor thread), behind one lock that host calls on the hot path never take.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::error::Error;
use crate::log::{Level, LogThread, log_line};
use crate::serve::{self, MonitorThread, ServeExtras, ServeOptions, Sockets};
use crate::shared::Shared;
use crate::status::runner::Runner;
use crate::sys::{clock, process};

/// The threads and sockets of an agent, as the process that holds them sees them.
pub(crate) struct Lifecycle {
    control: Mutex<Control>,
    options: ServeOptions,
    extras: ServeExtras,
}

pub(crate) struct Control {
    /// The process whose threads these are; after a fork the child has none of them.
    pid: u32,
    /// The sockets; the last reference closes them.
    sockets: Option<Arc<Sockets>>,
    monitor: Option<MonitorThread>,
    pub log_thread: LogThread,
    pub checks: Vec<Runner>,
}

impl Lifecycle {
    /// Starts the monitor thread over `sockets`. On error nothing is left running: the logger
    /// thread is stopped and the sockets are closed.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        sockets: Sockets,
        options: ServeOptions,
        extras: ServeExtras,
        log_thread: LogThread,
    ) -> Result<Lifecycle, Error> {
        let lifecycle = Lifecycle {
            control: Mutex::new(Control {
                pid: process::pid(),
                sockets: Some(Arc::new(sockets)),
                monitor: None,
                log_thread,
                checks: Vec::new(),
            }),
            options,
            extras,
        };
        {
            let mut control = lifecycle.control.lock();
            if let Err(e) = lifecycle.start_monitor(shared, &mut control) {
                shared.logger.close();
                if let Some(t) = control.log_thread.take() {
                    let _ = t.join();
                }
                control.sockets = None;
                return Err(e);
            }
        }
        Ok(lifecycle)
    }

    /// The host threads' side, locked (checks, the log thread).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock()
    }

    fn start_monitor(&self, shared: &Arc<Shared>, control: &mut Control) -> Result<(), Error> {
        let sockets = control.sockets.clone().ok_or(Error::Stopped)?;
        control.monitor = Some(serve::spawn(
            shared.clone(),
            sockets,
            self.options,
            self.extras.clone(),
        )?);
        Ok(())
    }

    /// See `Agent::after_fork_child`.
    pub(crate) fn after_fork_child(&self, shared: &Arc<Shared>) -> Result<(), Error> {
        let mut control = self.inherit(shared)?;
        shared.board.take_ownership();
        shared.quit.store(false, Ordering::Release);
        self.start_monitor(shared, &mut control)?;
        if shared.logger.wanted() {
            control.log_thread = shared.logger.start_thread().map_err(|source| Error::Io {
                what: "start the logger thread",
                source,
            })?;
        }
        for runner in &mut control.checks {
            runner.restart(shared.clone()).map_err(|source| Error::Io {
                what: "start a check thread",
                source,
            })?;
        }
        log_line!(
            shared.logger,
            Level::Info,
            "taken over by process {}",
            process::pid()
        );
        Ok(())
    }

    /// See `Agent::after_fork_worker`.
    pub(crate) fn after_fork_worker(&self, shared: &Shared) -> Result<(), Error> {
        let mut control = self.inherit(shared)?;
        if let Some(sockets) = control.sockets.take() {
            Sockets::close_in_forked_worker(sockets);
        }
        Ok(())
    }

    /// The common part of both `after_fork_*`: checks that this is a forked child, forgets
    /// the parent's threads and closes the descriptors only they used.
    fn inherit(&self, shared: &Shared) -> Result<MutexGuard<'_, Control>, Error> {
        let mut control = self
            .control
            .try_lock_for(Duration::from_millis(100))
            .ok_or(Error::WrongProcess)?;
        let me = process::pid();
        if control.pid == me {
            return Err(Error::WrongProcess);
        }
        control.pid = me;
        if let Some(m) = control.monitor.take() {
            m.forget_in_forked_child();
        }
        if let Some(t) = control.log_thread.take() {
            std::mem::forget(t);
        }
        shared.logger.close();
        for runner in &mut control.checks {
            runner.forget_thread();
        }
        Ok(control)
    }

    /// See `Agent::stop`.
    pub(crate) fn stop(&self, shared: &Shared, timeout: Option<Duration>) -> Result<(), Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut control = self.control.lock();
        if control.pid != process::pid() {
            // Forked without `after_fork_*`: the threads are the parent's.
            drop(control);
            drop(self.inherit(shared)?);
            return Err(Error::WrongProcess);
        }
        let owner = shared.board.begin_stopping(clock::now_ms());
        shared.quit.store(true, Ordering::Release);
        if let Some(m) = control.monitor.take() {
            if let Err(still_running) = m.finish(deadline) {
                control.monitor = Some(still_running);
                return Err(Error::Timeout);
            }
        }
        // The last reference to the sockets: closes them. The owner also removes the control
        // socket's file (a child that took the agent over owns it now, not its parent).
        if let Some(sockets) = control.sockets.take() {
            if let (true, Some(path)) = (owner, sockets.control_path()) {
                let _ = std::fs::remove_file(path);
            }
        }
        for runner in control.checks.drain(..) {
            // Only the owner takes checks off the shared board.
            if owner {
                shared.board.checks.remove(runner.index);
            }
            if let Some(t) = runner.finish() {
                // A check that hangs is left to finish alone (it no longer counts).
                if t.is_finished() || deadline.is_none() {
                    let _ = t.join();
                }
            }
        }
        log_line!(shared.logger, Level::Info, "stopped");
        shared.logger.close();
        if let Some(t) = control.log_thread.take() {
            let _ = t.join();
        }
        Ok(())
    }
}
