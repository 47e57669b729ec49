//! `GET /metrics` (`metrics=on`): the agent in Prometheus' text exposition format (version
//! 0.0.4), pure: it writes what it is given into a caller's buffer.
//!
//! Per target (`service=""` is the whole server, then each service of `services=`), what
//! directors are told: `lbagent_state{service,state}` (1 for the current state, 0 for the
//! others), `lbagent_serving`, `lbagent_weight_percent`, `lbagent_reason_code`,
//! `lbagent_in_use`, `lbagent_capacity`, `lbagent_state_age_seconds`. Then the host's
//! heartbeat age, the watchdog, the operator's override, and every counter of `counters.rs`,
//! grouped by what it counts (answers by kind, drops by reason, ...), and the build.
//!
//! Service names hold only `[A-Za-z0-9_.:/@+-]`, so label values need no escaping.

use std::io::{self, Write};

use crate::counters::Counter;
use crate::state::State;
use crate::status::Status;

/// The states a target can be in (`Unknown` only answers unknown names).
const STATES: [State; 6] = [
    State::Starting,
    State::Up,
    State::Drain,
    State::Maint,
    State::Down,
    State::Stopping,
];

/// Where each counter goes: its metric family and, within it, its label.
fn family(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    // Exhaustive on purpose: a new counter does not compile until it has a place here.
    match counter {
        Counter::Received => ("lbagent_datagrams_received_total", None),
        Counter::AnsweredStatus => ("lbagent_answered_total", Some(("kind", "status"))),
        Counter::AnsweredText => ("lbagent_answered_total", Some(("kind", "text"))),
        Counter::AnsweredError => ("lbagent_answered_total", Some(("kind", "error"))),
        Counter::AnsweredAgent => ("lbagent_answered_total", Some(("kind", "agent_check"))),
        Counter::AnsweredHttp => ("lbagent_answered_total", Some(("kind", "http"))),
        Counter::DroppedNotAllowed => ("lbagent_dropped_total", Some(("reason", "not_allowed"))),
        Counter::DroppedSourcePort => ("lbagent_dropped_total", Some(("reason", "source_port"))),
        Counter::DroppedNotUnicast => ("lbagent_dropped_total", Some(("reason", "not_unicast"))),
        Counter::DroppedMalformed => ("lbagent_dropped_total", Some(("reason", "malformed"))),
        Counter::DroppedTextOff => ("lbagent_dropped_total", Some(("reason", "text_off"))),
        Counter::DroppedLooksLikeReply => (
            "lbagent_dropped_total",
            Some(("reason", "looks_like_reply")),
        ),
        Counter::DroppedRateLimited => ("lbagent_dropped_total", Some(("reason", "rate_limited"))),
        Counter::DroppedGlobalLimit => ("lbagent_dropped_total", Some(("reason", "global_limit"))),
        Counter::DroppedAuthFailed => ("lbagent_dropped_total", Some(("reason", "auth_failed"))),
        Counter::DroppedAuthStale => ("lbagent_dropped_total", Some(("reason", "auth_stale"))),
        Counter::DroppedReplay => ("lbagent_dropped_total", Some(("reason", "replay"))),
        Counter::DroppedKeyLimit => ("lbagent_dropped_total", Some(("reason", "key_limit"))),
        Counter::SendFailed => ("lbagent_send_failed_total", None),
        Counter::Faults => ("lbagent_faults_total", None),
        Counter::ConnAccepted => ("lbagent_connections_accepted_total", None),
        Counter::HttpBadRequest => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "http_bad_request")),
        ),
        Counter::ConnDroppedLimit => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "limit")),
        ),
        Counter::ConnDroppedNotAllowed => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "not_allowed")),
        ),
        Counter::ConnTimedOut => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "timed_out")),
        ),
        Counter::ConnFailed => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "failed")),
        ),
        Counter::ConnDroppedSourceLimit => (
            "lbagent_connections_unanswered_total",
            Some(("reason", "source_limit")),
        ),
        Counter::HostUnknownService => ("lbagent_host_unknown_service_total", None),
        Counter::Pushed => ("lbagent_pushed_total", None),
        Counter::PushFailed => ("lbagent_push_failed_total", None),
        Counter::ControlAnswered => ("lbagent_control_total", Some(("outcome", "answered"))),
        Counter::ControlRefused => ("lbagent_control_total", Some(("outcome", "refused"))),
        Counter::ControlFailed => ("lbagent_control_total", Some(("outcome", "failed"))),
    }
}

/// Each counter family's help, in the order they are written.
const COUNTER_FAMILIES: [(&str, &str); 11] = [
    (
        "lbagent_datagrams_received_total",
        "UDP datagrams received (each ends in exactly one answered, dropped, send_failed or faults outcome).",
    ),
    (
        "lbagent_answered_total",
        "Probes answered, by kind: protocol v1 STATUS, text line, protocol v1 ERROR, HAProxy agent-check, HTTP.",
    ),
    (
        "lbagent_dropped_total",
        "UDP datagrams dropped without an answer, by reason.",
    ),
    (
        "lbagent_send_failed_total",
        "Answers that could not be sent.",
    ),
    (
        "lbagent_faults_total",
        "Internal panics caught by the agent (it then answers DOWN, agent fault).",
    ),
    (
        "lbagent_connections_accepted_total",
        "TCP connections accepted on tcp_agent= and http= addresses.",
    ),
    (
        "lbagent_connections_unanswered_total",
        "TCP connections closed without a health answer, by reason (http_bad_request: answered 400 or 431).",
    ),
    (
        "lbagent_host_unknown_service_total",
        "Host calls that named a service not in services= (each returned an error).",
    ),
    (
        "lbagent_pushed_total",
        "STATUS datagrams pushed to subscribed directors on a change.",
    ),
    (
        "lbagent_push_failed_total",
        "Pushes that could not be sent.",
    ),
    (
        "lbagent_control_total",
        "Control socket connections (control=, lbagent-ctl), by outcome.",
    ),
];

/// What the exposition says besides the targets and the counters.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The library's version.
    pub version: &'a str,
    /// Random at each start (in hex, as `lbagent-probe` shows it).
    pub instance_id: u64,
    /// Milliseconds since the host's last heartbeat (`None`: none yet).
    pub heartbeat_age_ms: Option<u64>,
    /// `watchdog_ms` (0: off).
    pub watchdog_ms: u64,
    /// The operator's override in force: its state and the milliseconds left (`None`: until
    /// cleared).
    pub operator: Option<(State, Option<u64>)>,
}

/// Longest line about one target, with a service name of the longest kind (64 bytes).
const MAX_TARGET_LINE: usize = 128;
/// Lines about one target: one per state, then six.
const TARGET_LINES: usize = STATES.len() + 6;
/// Everything but the targets' lines: help texts, counters, facts.
const FIXED: usize = 8 * 1024;

/// The longest exposition for `targets` targets (the whole server and each service).
pub fn max_len(targets: usize) -> usize {
    FIXED + targets * TARGET_LINES * MAX_TARGET_LINE
}

/// Calls its argument with each target's name and status, in order (one pass per family).
pub type Targets<'a> =
    dyn Fn(&mut dyn FnMut(&str, &Status) -> io::Result<()>) -> io::Result<()> + 'a;

/// A per-target gauge: its name, its help, and its value.
type Gauge = (&'static str, &'static str, fn(&Status) -> u64);

/// Writes the exposition: `targets` yields each target's name ("" for the whole server) and
/// status, as many times as asked (one pass per family); `counter` reads a counter.
pub fn write<W: Write>(
    w: &mut W,
    facts: &Facts<'_>,
    targets: &Targets<'_>,
    counter: &dyn Fn(Counter) -> u64,
) -> io::Result<()> {
    head(
        w,
        "lbagent_state",
        "gauge",
        "What directors are told: 1 for the state of the whole server (service=\"\") and of each service, 0 for the others.",
    )?;
    targets(&mut |name, s| {
        for state in STATES {
            writeln!(
                w,
                "lbagent_state{{service=\"{name}\",state=\"{}\"}} {}",
                state.name(),
                u8::from(s.state == state)
            )?;
        }
        Ok(())
    })?;
    let per_target: [Gauge; 5] = [
        (
            "lbagent_serving",
            "1 while new connections should come: state up with a weight above 0.",
            |s| u64::from(s.is_serving()),
        ),
        (
            "lbagent_weight_percent",
            "The weight answered, in percent of the weight configured on the director.",
            |s| u64::from(s.weight_pct),
        ),
        (
            "lbagent_reason_code",
            "Why the state is what it is: 0 host, 1 watchdog expired, 2 check failed, 3 agent stopping, 5 agent fault, 6 check timed out, 7 worker stalled, 8 start timed out, 9 operator (docs/PROTOCOL.md).",
            |s| u64::from(s.reason as u8),
        ),
        (
            "lbagent_in_use",
            "Work in progress reported by the host (lbagent_set_load).",
            |s| u64::from(s.in_use),
        ),
        (
            "lbagent_capacity",
            "Capacity reported by the host (0: unknown).",
            |s| u64::from(s.capacity),
        ),
    ];
    for (name, help, value) in per_target {
        head(w, name, "gauge", help)?;
        targets(&mut |service, s| writeln!(w, "{name}{{service=\"{service}\"}} {}", value(s)))?;
    }
    head(
        w,
        "lbagent_state_age_seconds",
        "gauge",
        "Seconds since the state answered last changed.",
    )?;
    targets(&mut |service, s| {
        writeln!(
            w,
            "lbagent_state_age_seconds{{service=\"{service}\"}} {}",
            Seconds(u64::from(s.since_ms))
        )
    })?;

    head(
        w,
        "lbagent_heartbeat_age_seconds",
        "gauge",
        "Seconds since the host's last heartbeat (no sample before the first).",
    )?;
    if let Some(age) = facts.heartbeat_age_ms {
        writeln!(w, "lbagent_heartbeat_age_seconds {}", Seconds(age))?;
    }
    head(
        w,
        "lbagent_watchdog_seconds",
        "gauge",
        "watchdog_ms: a heartbeat older than this answers DOWN (0: off).",
    )?;
    writeln!(w, "lbagent_watchdog_seconds {}", Seconds(facts.watchdog_ms))?;
    head(
        w,
        "lbagent_operator_override",
        "gauge",
        "1 while an operator's override (lbagent-ctl drain or maint) is in force.",
    )?;
    for state in [State::Drain, State::Maint] {
        let on = facts.operator.is_some_and(|(s, _)| s == state);
        writeln!(
            w,
            "lbagent_operator_override{{state=\"{}\"}} {}",
            state.name(),
            u8::from(on)
        )?;
    }
    head(
        w,
        "lbagent_operator_override_seconds_left",
        "gauge",
        "Seconds until the operator's override ends by itself (no sample without one, or when it lasts until cleared).",
    )?;
    if let Some((_, Some(left))) = facts.operator {
        writeln!(
            w,
            "lbagent_operator_override_seconds_left {}",
            Seconds(left)
        )?;
    }

    for (family_name, help) in COUNTER_FAMILIES {
        head(w, family_name, "counter", help)?;
        for c in Counter::ALL {
            let (name, label) = family(c);
            if name != family_name {
                continue;
            }
            match label {
                Some((k, v)) => writeln!(w, "{name}{{{k}=\"{v}\"}} {}", counter(c))?,
                None => writeln!(w, "{name} {}", counter(c))?,
            }
        }
    }
    head(
        w,
        "lbagent_build_info",
        "gauge",
        "The agent's version and instance id (random at each start); value 1.",
    )?;
    writeln!(
        w,
        "lbagent_build_info{{version=\"{}\",instance_id=\"{:016x}\"}} 1",
        facts.version, facts.instance_id
    )?;
    Ok(())
}

fn head<W: Write>(w: &mut W, name: &str, kind: &str, help: &str) -> io::Result<()> {
    writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}")
}

/// Milliseconds written as seconds with three decimals.
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reason;
    use crate::status::Text;

    fn status(state: State, weight: u8) -> Status {
        Status {
            state,
            reason: Reason::Host,
            weight_pct: weight,
            in_use: 3,
            capacity: 64,
            generation: 1,
            since_ms: 1500,
            message: Text::EMPTY,
        }
    }

    fn render(names: &[String], statuses: &[Status], facts: &Facts<'_>) -> String {
        let mut out = Vec::new();
        write(
            &mut out,
            facts,
            &|f| {
                for (n, s) in names.iter().zip(statuses) {
                    f(n, s)?;
                }
                Ok(())
            },
            &|c| c as u64 * 10,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    const FACTS: Facts<'static> = Facts {
        version: "0.1.0",
        instance_id: 0xa1b2,
        heartbeat_age_ms: Some(250),
        watchdog_ms: 3000,
        operator: Some((State::Drain, Some(60_000))),
    };

    #[test]
    fn families_samples_and_every_counter() {
        let names = vec![String::new(), "game".to_string()];
        let text = render(
            &names,
            &[status(State::Up, 100), status(State::Drain, 50)],
            &FACTS,
        );
        for line in [
            "lbagent_state{service=\"\",state=\"up\"} 1",
            "lbagent_state{service=\"\",state=\"drain\"} 0",
            "lbagent_state{service=\"game\",state=\"drain\"} 1",
            "lbagent_serving{service=\"game\"} 0",
            "lbagent_weight_percent{service=\"game\"} 50",
            "lbagent_in_use{service=\"\"} 3",
            "lbagent_state_age_seconds{service=\"\"} 1.500",
            "lbagent_heartbeat_age_seconds 0.250",
            "lbagent_watchdog_seconds 3.000",
            "lbagent_operator_override{state=\"drain\"} 1",
            "lbagent_operator_override_seconds_left 60.000",
            "lbagent_dropped_total{reason=\"rate_limited\"} 120",
            "lbagent_answered_total{kind=\"http\"} 180",
            "lbagent_build_info{version=\"0.1.0\",instance_id=\"000000000000a1b2\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every counter is there, each once.
        for c in Counter::ALL {
            let (name, label) = family(c);
            let prefix = match label {
                Some((k, v)) => format!("{name}{{{k}=\"{v}\"}} "),
                None => format!("{name} "),
            };
            assert_eq!(
                text.lines().filter(|l| l.starts_with(&prefix)).count(),
                1,
                "{c:?}"
            );
            assert!(COUNTER_FAMILIES.iter().any(|(n, _)| *n == name), "{name}");
        }
        // Every family is declared once, before its samples, and its samples are together.
        let mut seen: Vec<&str> = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&name), "{name} twice");
                seen.push(name);
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{line}");
            }
        }
    }

    #[test]
    fn the_longest_exposition_fits_its_bound() {
        let names: Vec<String> = std::iter::once(String::new())
            .chain((0..256).map(|i| format!("{i:03}{}", "x".repeat(61))))
            .collect();
        let worst = Status {
            in_use: u32::MAX,
            capacity: u32::MAX,
            since_ms: u32::MAX,
            reason: Reason::StartTimedOut,
            ..status(State::Stopping, 100)
        };
        let statuses = vec![worst; names.len()];
        let facts = Facts {
            heartbeat_age_ms: Some(u64::MAX),
            watchdog_ms: u64::from(u32::MAX),
            operator: Some((State::Maint, Some(u64::MAX))),
            instance_id: u64::MAX,
            ..FACTS
        };
        let text = render(&names, &statuses, &facts);
        assert!(
            text.len() <= max_len(names.len()),
            "{} > {}",
            text.len(),
            max_len(names.len())
        );
        // And the bound is not wildly above it.
        assert!(max_len(names.len()) < text.len() * 2, "{}", text.len());
    }
}
