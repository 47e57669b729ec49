//! `--watch`: a live view of many targets during a deploy. Every interval all targets are
//! probed at once through one non-blocking `Prober`; a line is printed for each target's first
//! answer and then only when something changes (state, reason, weight, message, a restart,
//! the progress of a drain, or the kind of failure), with a timestamp and the time since that
//! target's previous line. Runs until interrupted.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use lbagent::client::{Answer, Completion, ProbeError, ProbeOptions, Prober};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

use crate::output::{self, Subject};

/// One watched target.
pub struct Watched {
    /// As typed on the command line.
    pub label: String,
    pub addr: SocketAddr,
}

/// What decides whether a new observation is a change worth a line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Answer {
        state: lbagent::State,
        reason_code: u8,
        weight_pct: u8,
        message: String,
        instance_id: u64,
        /// Drain progress: complete, probers told, pending, untracked (not the counters
        /// that move at every probe).
        drain: Option<(bool, u16, u16, bool)>,
    },
    Failure(&'static str),
}

impl Key {
    fn of(result: &Result<Answer, ProbeError>) -> Key {
        match result {
            Ok(a) => Key::Answer {
                state: a.state,
                reason_code: a.reason_code,
                weight_pct: a.weight_pct,
                message: a.message.clone(),
                instance_id: a.instance_id,
                drain: a
                    .drain
                    .filter(|d| d.draining)
                    .map(|d| (d.complete, d.probers_told, d.probers_pending, d.untracked)),
            },
            Err(e) => Key::Failure(e.kind()),
        }
    }

    /// A word for the "from -> to" part of a line.
    fn word(&self) -> &'static str {
        match self {
            Key::Answer { state, .. } => state.name(),
            Key::Failure(kind) => kind,
        }
    }
}

struct Seen {
    key: Key,
    at: Instant,
}

/// Probes `targets` every `interval` until the process is interrupted.
pub fn run(
    targets: &[Watched],
    service: &str,
    options: ProbeOptions,
    interval: Duration,
    json: bool,
) -> Result<(), String> {
    let mut prober = Prober::new(options).map_err(|e| e.to_string())?;
    let mut poll = Poll::new().map_err(|e| format!("cannot create a poller: {e}"))?;
    poll.registry()
        .register(
            &mut SourceFd(&prober.as_raw_fd()),
            Token(0),
            Interest::READABLE,
        )
        .map_err(|e| format!("cannot watch the socket: {e}"))?;
    let mut events = Events::with_capacity(16);
    let mut seen: Vec<Option<Seen>> = targets.iter().map(|_| None).collect();
    let mut done: Vec<Completion> = Vec::new();
    loop {
        let round = Instant::now();
        for (i, target) in targets.iter().enumerate() {
            if let Err(e) = prober.send(target.addr, service, i as u64) {
                done.push(Completion {
                    token: i as u64,
                    target: target.addr,
                    result: Err(e),
                });
            }
        }
        while prober.in_flight() > 0 {
            let wait = prober.next_timeout();
            // An interrupted wait (a signal) just goes round again.
            let _ = poll.poll(&mut events, wait);
            prober.receive(&mut done);
        }
        done.sort_by_key(|c| c.token);
        for c in done.drain(..) {
            let i = c.token as usize;
            let subject = Subject {
                target: &targets[i].label,
                service,
            };
            if let Some(line) = observe(&mut seen[i], &subject, &c.result, json) {
                println!("{line}");
            }
        }
        std::thread::sleep(interval.saturating_sub(round.elapsed()));
    }
}

/// Records an observation; returns the line to print when it is the first or a change.
fn observe(
    seen: &mut Option<Seen>,
    subject: &Subject<'_>,
    result: &Result<Answer, ProbeError>,
    json: bool,
) -> Option<String> {
    let key = Key::of(result);
    let now = Instant::now();
    let previous = match seen {
        Some(s) if s.key == key => return None,
        Some(s) => Some((s.key.word(), now - s.at, restarted(&s.key, &key))),
        None => None,
    };
    *seen = Some(Seen {
        key: key.clone(),
        at: now,
    });
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    if json {
        let mut map = serde_json::Map::new();
        map.insert("time".into(), time.to_string().into());
        map.insert("target".into(), subject.target.into());
        map.insert("service".into(), subject.service.into());
        map.insert(
            "from".into(),
            previous.map_or(Value::Null, |(w, _, _)| w.into()),
        );
        map.insert("to".into(), key.word().into());
        map.insert(
            "after_ms".into(),
            previous.map_or(Value::Null, |(_, d, _)| (d.as_millis() as u64).into()),
        );
        map.insert(
            "restarted".into(),
            previous.is_some_and(|(_, _, r)| r).into(),
        );
        map.extend(match result {
            Ok(a) => output::answer_fields(a),
            Err(e) => output::error_fields(e),
        });
        return Some(Value::Object(map).to_string());
    }
    let what = match result {
        Ok(a) => a.to_string(),
        Err(e) => format!("no answer: {e}"),
    };
    Some(match previous {
        None => format!("{time} {subject}: {what}"),
        Some((from, after, restarted)) => format!(
            "{time} {subject}: {from} -> {what}{} (after {:.1} s)",
            if restarted { " [restarted]" } else { "" },
            after.as_secs_f64()
        ),
    })
}

/// True when both are answers from different agent instances (the server restarted).
fn restarted(before: &Key, now: &Key) -> bool {
    matches!(
        (before, now),
        (Key::Answer { instance_id: a, .. }, Key::Answer { instance_id: b, .. }) if a != b
    )
}
