//! What lbagent-probe prints: a line for people, JSON for scripts, a Nagios status line.

use lbagent::client::{Answer, ProbeError};
use serde_json::{Value, json};

use crate::verdict;

/// What was probed, for messages: the target as typed, and the service when one was asked.
pub struct Subject<'a> {
    pub target: &'a str,
    pub service: &'a str,
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.service.is_empty() {
            f.write_str(self.target)
        } else {
            write!(f, "{} service {}", self.target, self.service)
        }
    }
}

fn reason(a: &Answer) -> String {
    a.reason.map_or_else(
        || format!("reason {}", a.reason_code),
        |r| r.describe().to_string(),
    )
}

fn load(a: &Answer) -> String {
    if a.capacity > 0 {
        format!("{}/{}", a.in_use, a.capacity)
    } else {
        format!("{}", a.in_use)
    }
}

/// The default output: everything the answer says, with the round trip.
pub fn answer_line(subject: &Subject<'_>, a: &Answer) -> String {
    let mut line = format!(
        "{subject}: {} ({}), weight {}%, load {}, for {:.1} s, generation {}, rtt {:.2} ms",
        a.state,
        reason(a),
        a.weight_pct,
        load(a),
        f64::from(a.since_ms) / 1000.0,
        a.generation,
        a.rtt.as_secs_f64() * 1000.0,
    );
    if !a.message.is_empty() {
        line.push_str(&format!(": \"{}\"", a.message));
    }
    if let Some(d) = a.drain_shown() {
        line.push_str(&format!(" [{d}, told you {} times]", d.told_you));
    }
    line
}

/// The drain progress as JSON (null from an agent that does not send it).
fn drain_json(a: &Answer) -> Value {
    match a.drain {
        None => Value::Null,
        Some(d) => json!({
            "draining": d.draining,
            "complete": d.complete,
            "probers_told": d.probers_told,
            "probers_pending": d.probers_pending,
            "probers_untracked": d.untracked,
            "told_you": d.told_you,
            "drain_ms": d.drain_ms,
        }),
    }
}

/// The answer's fields as JSON.
pub fn answer_fields(a: &Answer) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "serving": a.is_serving(),
        "state": a.state.name(),
        "reason": a.reason.map_or("unknown", |r| r.name()),
        "reason_code": a.reason_code,
        "weight_pct": a.weight_pct,
        "in_use": a.in_use,
        "capacity": a.capacity,
        "generation": a.generation,
        "since_ms": a.since_ms,
        "instance_id": format!("{:016x}", a.instance_id),
        "message": a.message,
        "drain": drain_json(a),
        "rtt_us": a.rtt.as_micros() as u64,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

/// A failure's fields as JSON.
pub fn error_fields(e: &ProbeError) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "serving": false,
        "error": e.kind(),
        "detail": e.to_string(),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

/// `--json`: one object with the target, the service and the answer or the failure.
pub fn result_json(subject: &Subject<'_>, result: &Result<Answer, ProbeError>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("target".into(), subject.target.into());
    map.insert("service".into(), subject.service.into());
    map.extend(match result {
        Ok(a) => answer_fields(a),
        Err(e) => error_fields(e),
    });
    Value::Object(map)
}

/// `--nagios`: `LBAGENT OK: <what> | <perfdata>`, one line, following the plugin guidelines.
pub fn nagios_line(subject: &Subject<'_>, result: &Result<Answer, ProbeError>) -> String {
    let code = verdict::nagios_status(result);
    let word = verdict::nagios_word(code);
    // '|' starts the performance data: keep it out of the text.
    let text = match result {
        Ok(a) => format!("{subject}: {a}"),
        Err(e) => format!("{subject}: {e}"),
    }
    .replace('|', "/");
    match result {
        Ok(a) => {
            let load_max = if a.capacity > 0 {
                format!(";{}", a.capacity)
            } else {
                String::new()
            };
            format!(
                "LBAGENT {word}: {text} | weight={}%;;;0;100 load={};;;0{load_max} rtt={:.6}s;;;0 state_age={:.3}s;;;0",
                a.weight_pct,
                a.in_use,
                a.rtt.as_secs_f64(),
                f64::from(a.since_ms) / 1000.0,
            )
        }
        Err(_) => format!("LBAGENT {word}: {text}"),
    }
}
