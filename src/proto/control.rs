//! The operator's control socket (`control=PATH`, `lbagent-ctl`): one request line, one reply,
//! then the agent closes the connection.
//!
//! Request: `VERB [FOR_MS [REASON...]]\n`, ASCII words separated by one space: `status`, `up`
//! (clears the override), `drain` or `maint` with how long it lasts in milliseconds (0 or
//! none: until `up`) and the operator's reason (the rest of the line).
//!
//! Reply: lines of `key=value` (the value runs to the end of the line; texts never contain a
//! line break). The first line is `ok` or `error=WHY`; then the host's view (`host_*`), the
//! operator's override (`operator_*`) and the answer directors get (`answer_*`), and what
//! became of the state file. `lbagent-ctl` prints it for people.

use std::io::{Cursor, Write};

use crate::state::State;
use crate::status::Status;

/// Longest request line, in bytes (with its reason text).
pub const MAX_REQUEST: usize = 512;
/// Room for the longest reply (three messages of up to 255 bytes, a path, numbers).
pub const MAX_REPLY: usize = 3072;
/// Longest override a request may ask for: 366 days.
pub const MAX_FOR_MS: u64 = 366 * 24 * 3600 * 1000;

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Report both views.
    Status,
    /// Set the override: `Up` clears it; `Drain` or `Maint` for `for_ms` (0: until cleared).
    Set {
        /// Drain, maint or up.
        state: State,
        /// Milliseconds until it ends by itself; 0: never.
        for_ms: u64,
        /// The operator's reason (may be empty).
        reason: &'a [u8],
    },
}

/// Parses one request line (without or with its line end). Errors say what is wrong.
pub fn parse_request(line: &[u8]) -> Result<Request<'_>, &'static str> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.contains(&b'\n') {
        return Err("one request line per connection");
    }
    let mut parts = line.splitn(3, |b| *b == b' ');
    let verb = parts.next().unwrap_or(b"");
    let state = match verb {
        b"status" => {
            return match parts.next() {
                None => Ok(Request::Status),
                Some(_) => Err("status takes no argument"),
            };
        }
        b"up" => State::Up,
        b"drain" => State::Drain,
        b"maint" => State::Maint,
        _ => return Err("unknown command: expected status, up, drain or maint"),
    };
    let for_ms = match parts.next() {
        None | Some(b"") => 0,
        Some(word) => std::str::from_utf8(word)
            .ok()
            .and_then(|w| w.parse::<u64>().ok())
            .filter(|ms| *ms <= MAX_FOR_MS)
            .ok_or("the duration is not a number of milliseconds up to 366 days")?,
    };
    let reason = parts.next().unwrap_or(b"");
    if state == State::Up && (for_ms != 0 || !reason.is_empty()) {
        return Err("up takes no duration and no reason");
    }
    Ok(Request::Set {
        state,
        for_ms,
        reason,
    })
}

/// Writes a request line (for `lbagent-ctl`); `reason` must hold no line break.
pub fn write_request(request: &Request<'_>, out: &mut Vec<u8>) {
    match request {
        Request::Status => out.extend_from_slice(b"status\n"),
        Request::Set {
            state,
            for_ms,
            reason,
        } => {
            out.extend_from_slice(state.name().as_bytes());
            if *state != State::Up {
                out.extend_from_slice(format!(" {for_ms}").as_bytes());
                if !reason.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(reason);
                }
            }
            out.push(b'\n');
        }
    }
}

/// The operator's override as the reply reports it.
#[derive(Clone, Copy, Debug)]
pub struct OverrideReport<'a> {
    /// Drain or maint.
    pub state: State,
    /// The operator's reason.
    pub message: &'a str,
    /// Milliseconds left (`None`: until cleared).
    pub left_ms: Option<u64>,
    /// When it ends, in milliseconds since the Unix epoch (`None`: until cleared).
    pub until_unix_ms: Option<u64>,
}

/// Everything a reply says besides its first line.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// What directors would be told without the override.
    pub host: &'a Status,
    /// The override in force, if any.
    pub operator: Option<OverrideReport<'a>>,
    /// What directors are told.
    pub answer: &'a Status,
    /// What became of the state file: `none` (no `state_file=`), `written PATH`, `failed: WHY`
    /// or `unchanged PATH`.
    pub state_file: &'a str,
}

/// Writes a reply: `ok` (or `error=WHY`) and the report. Returns its length (cut to fit, at a
/// line boundary, should it ever be longer than `out`).
pub fn write_reply(error: Option<&str>, report: &Report<'_>, out: &mut [u8]) -> usize {
    let mut w = Cursor::new(out);
    let mut last_whole = 0;
    let mut line = |w: &mut Cursor<&mut [u8]>, args: std::fmt::Arguments<'_>| {
        if w.write_fmt(args).is_ok() {
            last_whole = w.position() as usize;
        } else {
            w.set_position(last_whole as u64);
        }
    };
    match error {
        None => line(&mut w, format_args!("ok\n")),
        Some(why) => line(&mut w, format_args!("error={}\n", one_line(why))),
    }
    for (prefix, status) in [("host", report.host), ("answer", report.answer)] {
        line(
            &mut w,
            format_args!(
                "{prefix}_state={}\n{prefix}_reason={}\n{prefix}_weight={}\n{prefix}_message={}\n",
                status.state.name(),
                status.reason.name(),
                status.weight_pct,
                status.message.as_str(),
            ),
        );
    }
    match &report.operator {
        None => line(&mut w, format_args!("operator_state=none\n")),
        Some(o) => {
            line(
                &mut w,
                format_args!(
                    "operator_state={}\noperator_message={}\n",
                    o.state.name(),
                    o.message
                ),
            );
            if let (Some(left), Some(until)) = (o.left_ms, o.until_unix_ms) {
                line(
                    &mut w,
                    format_args!("operator_left_ms={left}\noperator_until_unix_ms={until}\n"),
                );
            }
        }
    }
    line(
        &mut w,
        format_args!("state_file={}\n", one_line(report.state_file)),
    );
    last_whole
}

/// A text on one line (line breaks become spaces).
fn one_line(text: &str) -> impl std::fmt::Display + '_ {
    struct OneLine<'a>(&'a str);
    impl std::fmt::Display for OneLine<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            for c in self.0.chars() {
                let c = if c.is_control() { ' ' } else { c };
                write!(f, "{c}")?;
            }
            Ok(())
        }
    }
    OneLine(text)
}

/// Reads a reply into `(key, value)` pairs, in order (`ok` is the pair `("ok", "")`).
pub fn parse_reply(reply: &str) -> Vec<(&str, &str)> {
    reply
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once('=').unwrap_or((l, "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reason;
    use crate::status::{MESSAGE_CAPACITY, Text};

    #[test]
    fn requests_parse_and_round_trip() {
        assert_eq!(parse_request(b"status\n"), Ok(Request::Status));
        assert_eq!(
            parse_request(b"up"),
            Ok(Request::Set {
                state: State::Up,
                for_ms: 0,
                reason: b""
            })
        );
        assert_eq!(
            parse_request(b"drain 600000 kernel update, then reboot\r\n"),
            Ok(Request::Set {
                state: State::Drain,
                for_ms: 600_000,
                reason: b"kernel update, then reboot"
            })
        );
        assert_eq!(
            parse_request(b"maint 0"),
            Ok(Request::Set {
                state: State::Maint,
                for_ms: 0,
                reason: b""
            })
        );
        for bad in [
            &b"down 0"[..],
            b"",
            b"status now",
            b"drain ten",
            b"drain -5",
            b"up 100",
            b"up 0 because",
            b"drain 99999999999999999",
            b"drain 1\nup",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for request in [
            Request::Status,
            Request::Set {
                state: State::Drain,
                for_ms: 5,
                reason: b"a b",
            },
            Request::Set {
                state: State::Maint,
                for_ms: 0,
                reason: b"",
            },
            Request::Set {
                state: State::Up,
                for_ms: 0,
                reason: b"",
            },
        ] {
            let mut line = Vec::new();
            write_request(&request, &mut line);
            assert_eq!(parse_request(&line), Ok(request));
        }
    }

    fn status(state: State, reason: Reason, message: &str) -> Status {
        Status {
            state,
            reason,
            weight_pct: 100,
            in_use: 0,
            capacity: 0,
            generation: 1,
            since_ms: 0,
            message: Text::from_reason(message.as_bytes()),
        }
    }

    #[test]
    fn replies_carry_both_views_and_fit() {
        let host = status(State::Up, Reason::Host, "ready");
        let answer = status(State::Drain, Reason::Operator, "deploy");
        let report = Report {
            host: &host,
            operator: Some(OverrideReport {
                state: State::Drain,
                message: "deploy",
                left_ms: Some(1500),
                until_unix_ms: Some(1_700_000_000_000),
            }),
            answer: &answer,
            state_file: "written /var/lib/x/state",
        };
        let mut out = [0u8; MAX_REPLY];
        let len = write_reply(None, &report, &mut out);
        let text = std::str::from_utf8(&out[..len]).unwrap();
        let pairs = parse_reply(text);
        assert_eq!(pairs[0], ("ok", ""));
        for expected in [
            ("host_state", "up"),
            ("host_message", "ready"),
            ("answer_state", "drain"),
            ("answer_reason", "operator"),
            ("operator_state", "drain"),
            ("operator_left_ms", "1500"),
            ("state_file", "written /var/lib/x/state"),
        ] {
            assert!(pairs.contains(&expected), "{expected:?} in {text}");
        }
        // The longest reply fits: three full messages and a long state file note.
        let long = "\u{7f}x".repeat(MESSAGE_CAPACITY);
        let host = status(State::Up, Reason::Host, &long);
        let answer = status(State::Maint, Reason::Operator, &long);
        let note = format!("failed: {}", "p".repeat(600));
        let report = Report {
            host: &host,
            operator: Some(OverrideReport {
                state: State::Maint,
                message: answer.message.as_str(),
                left_ms: Some(u64::MAX),
                until_unix_ms: Some(u64::MAX),
            }),
            answer: &answer,
            state_file: &note,
        };
        let len = write_reply(Some("line\nbreak"), &report, &mut out);
        let text = std::str::from_utf8(&out[..len]).unwrap();
        assert!(text.ends_with(&format!("state_file={note}\n")), "{text}");
        assert!(text.starts_with("error=line break\n"), "{text}");
    }
}
