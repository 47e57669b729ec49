//! A second sink besides track files: HAProxy's runtime API. A target can name any number of
//! HAProxy stats sockets and the `backend/server` each calls it; the director then sets that
//! server's admin state (`ready`, `drain`, `maint`), health and weight there whenever its
//! verdict or the agent's answer changes. One prober per real server then feeds a fleet of
//! HAProxy instances, instead of every HAProxy probing every server.
//!
//! The commands go through one writer thread, so a slow or missing HAProxy never delays the
//! poll loop: the loop hands over the latest command for a (socket, server) pair and moves on;
//! a command not yet written when a newer one comes is replaced by it. A command that fails is
//! logged once until one succeeds, and tried again at the next change.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use lbagent::State;
use lbagent::client::Answer;

use crate::log::{Level, Log};

/// How long one exchange with HAProxy may take.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// One HAProxy server fed by the director: `haproxy=BACKEND/SERVER@SOCKET` in the targets file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sink {
    /// The stats socket (`stats socket PATH level admin`).
    pub socket: PathBuf,
    /// `backend/server`.
    pub server: String,
}

/// What HAProxy should make of a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    /// Serving, at this percent of its configured weight.
    Ready(u8),
    /// No new connections; existing ones finish.
    Drain,
    /// Administratively out.
    Maint,
    /// Failed, or no answer.
    Down,
}

impl Desired {
    /// From the director's verdict and the agent's last answer (if the last check had one).
    pub fn of(up: bool, answer: Option<&Answer>) -> Desired {
        match answer {
            Some(a) if up => Desired::Ready(a.weight_pct.max(1)),
            None if up => Desired::Ready(100),
            Some(a) if a.state == State::Maint => Desired::Maint,
            Some(a) if a.state == State::Drain || (a.state == State::Up && a.weight_pct == 0) => {
                Desired::Drain
            }
            _ => Desired::Down,
        }
    }

    /// The runtime API line that sets it on `backend/server` (commands separated by `;`).
    pub fn command(self, server: &str) -> String {
        match self {
            Desired::Ready(pct) => format!(
                "set server {server} state ready; set server {server} health up; \
                 set server {server} weight {pct}%"
            ),
            Desired::Drain => {
                format!("set server {server} state drain; set server {server} health up")
            }
            Desired::Maint => format!("set server {server} state maint"),
            Desired::Down => {
                format!("set server {server} state ready; set server {server} health down")
            }
        }
    }
}

/// Counts of the writer thread's exchanges.
#[derive(Default)]
pub struct SinkCounts {
    pub written: AtomicU64,
    pub failed: AtomicU64,
}

/// Whether each sink's last command succeeded (for `--metrics`).
pub type SinkStates = Arc<Mutex<HashMap<Sink, bool>>>;

/// The poll loop's handle on the writer thread.
pub struct Writer {
    sender: Sender<(Sink, String)>,
    pub counts: Arc<SinkCounts>,
    pub sinks: SinkStates,
}

impl Writer {
    /// Starts the writer thread.
    pub fn start() -> std::io::Result<Writer> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let counts = Arc::new(SinkCounts::default());
        let sinks = SinkStates::default();
        let (thread_counts, thread_sinks) = (counts.clone(), sinks.clone());
        std::thread::Builder::new()
            .name("haproxy-sink".into())
            .spawn(move || write_commands(&receiver, &thread_counts, &thread_sinks))?;
        Ok(Writer {
            sender,
            counts,
            sinks,
        })
    }

    /// Hands over the command for `sink` (never blocks).
    pub fn send(&self, sink: &Sink, desired: Desired) {
        let _ = self
            .sender
            .send((sink.clone(), desired.command(&sink.server)));
    }
}

fn write_commands(receiver: &Receiver<(Sink, String)>, counts: &SinkCounts, sinks: &SinkStates) {
    let log = Log::from_env();
    let mut failing: HashMap<Sink, bool> = HashMap::new();
    while let Ok(first) = receiver.recv() {
        // Only the latest command per server matters: drain what is queued, keep the last.
        let mut latest: Vec<(Sink, String)> = vec![first];
        while let Ok((sink, command)) = receiver.try_recv() {
            match latest.iter_mut().find(|(s, _)| *s == sink) {
                Some(entry) => entry.1 = command,
                None => latest.push((sink, command)),
            }
        }
        for (sink, command) in latest {
            let result = exchange(&sink, &command);
            if let Ok(mut states) = sinks.lock() {
                states.insert(sink.clone(), result.is_ok());
            }
            let was_failing = failing.get(&sink).copied().unwrap_or(false);
            match result {
                Ok(()) => {
                    counts.written.fetch_add(1, Ordering::Relaxed);
                    if was_failing {
                        log.line(
                            Level::Info,
                            format_args!(
                                "haproxy {} {}: written again",
                                sink.socket.display(),
                                sink.server
                            ),
                        );
                    }
                    failing.insert(sink, false);
                }
                Err(why) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    if !was_failing {
                        log.line(
                            Level::Error,
                            format_args!(
                                "haproxy {} {}: \"{command}\": {why} (tried again at the next change)",
                                sink.socket.display(),
                                sink.server
                            ),
                        );
                    }
                    failing.insert(sink, true);
                }
            }
        }
    }
}

/// One command over the stats socket; HAProxy answers nothing (empty lines) on success and a
/// message otherwise ("No such server.", "Permission denied").
fn exchange(sink: &Sink, command: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(&sink.socket).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    let reply = reply.trim();
    if reply.is_empty() {
        Ok(())
    } else {
        Err(format!("HAProxy says: {}", reply.replace('\n', " / ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(state: State, weight_pct: u8) -> Answer {
        Answer {
            state,
            reason: None,
            reason_code: 0,
            weight_pct,
            in_use: 0,
            capacity: 0,
            generation: 1,
            since_ms: 0,
            instance_id: 1,
            message: String::new(),
            rtt: Duration::ZERO,
            subscribed: false,
            pushed: false,
            drain: None,
        }
    }

    #[test]
    fn desired_states_and_their_commands() {
        assert_eq!(
            Desired::of(true, Some(&answer(State::Up, 50))),
            Desired::Ready(50)
        );
        assert_eq!(Desired::of(true, None), Desired::Ready(100));
        assert_eq!(
            Desired::of(false, Some(&answer(State::Drain, 100))),
            Desired::Drain
        );
        assert_eq!(
            Desired::of(false, Some(&answer(State::Up, 0))),
            Desired::Drain
        );
        assert_eq!(
            Desired::of(false, Some(&answer(State::Maint, 100))),
            Desired::Maint
        );
        assert_eq!(
            Desired::of(false, Some(&answer(State::Down, 100))),
            Desired::Down
        );
        assert_eq!(Desired::of(false, None), Desired::Down);
        assert_eq!(
            Desired::Ready(50).command("be/s1"),
            "set server be/s1 state ready; set server be/s1 health up; set server be/s1 weight 50%"
        );
        assert_eq!(
            Desired::Maint.command("be/s1"),
            "set server be/s1 state maint"
        );
    }
}
