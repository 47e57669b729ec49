//! The text answer: one ASCII line that keepalived (`UDP_CHECK` with `require_reply`),
//! ldirectord (`negotiate` with a `receive` regex) and HAProxy (agent-check grammar) all
//! understand. `docs/PROTOCOL.md` has the table.
//!
//! - The line starts with `up` if and only if the server should receive new connections, and
//!   each other state starts with its own, different first byte (keepalived compares only a
//!   prefix, so even a cut reply never says `u` for a server that must not get traffic).
//! - It carries the whole state in HAProxy's grammar: a health word (`up`, `down`, `fail`,
//!   `stopped`), an admin word (`ready`, `drain`, `maint`), the weight `N%` and `#reason`.
//!   HAProxy ignores the words it does not know (`init`, `error`), applying the others.
//! - It is never longer than the request, nor than 255 bytes (keepalived's default
//!   `max_reply_length`); parts are left out from the end to fit.

use std::io::Write as _;

use crate::state::State;
use crate::status::Status;

/// The words that open a line, by state; a request that starts with one of them is an
/// agent's answer, not a question, and is not answered (no loops between two agents).
const FIRST_WORDS: [&str; 7] = ["up", "drain", "maint", "fail", "init", "stopped", "error"];

/// A parsed text request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// An empty datagram: no room for any answer.
    Empty,
    /// About the whole server (any text that names no service, such as keepalived's default
    /// payload).
    Server,
    /// `service=NAME` as the first word: about that service.
    Service(&'a [u8]),
    /// Starts like one of our own answers.
    LooksLikeReply,
}

/// Reads a text request: its first line (up to CR, LF or NUL), whose first word may be
/// `service=NAME`; whatever follows is padding that makes room for the answer.
pub fn parse_request(datagram: &[u8]) -> Request<'_> {
    if datagram.is_empty() {
        return Request::Empty;
    }
    let line_end = datagram
        .iter()
        .position(|b| matches!(b, b'\n' | b'\r' | 0))
        .unwrap_or(datagram.len());
    let line = datagram[..line_end].trim_ascii();
    let word_end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b','))
        .unwrap_or(line.len());
    let word = &line[..word_end];
    if let Some(name) = word.strip_prefix(b"service=") {
        return Request::Service(name);
    }
    if FIRST_WORDS.iter().any(|w| w.as_bytes() == word) {
        return Request::LooksLikeReply;
    }
    Request::Server
}

/// The words of the line for a status, first word first.
pub fn words(status: &Status) -> &'static [&'static str] {
    match status.state {
        State::Up if status.weight_pct > 0 => &["up", "ready"],
        // Up with weight 0 takes no new connections: that is a drain.
        State::Up | State::Drain => &["drain", "up"],
        State::Maint => &["maint", "down"],
        State::Down => &["fail", "ready"],
        State::Starting => &["init", "down", "ready"],
        State::Stopping => &["stopped", "ready"],
        State::Unknown => &["error", "down"],
    }
}

/// A small line builder over a fixed buffer.
struct Line<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Line<'_> {
    fn room(&self) -> usize {
        self.out.len() - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        self.out[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Longest line sent: keepalived's default `max_reply_length` fails longer replies.
pub const MAX_LINE: usize = 255;

/// Writes the line for `status` into `out`, at most `max_len` bytes (the request's length),
/// and at most `MAX_LINE`, ending in `\n` when there is room for it, and returns its length.
/// Longer answers are cut from the end: first the reason, then the weight, then the other
/// words; the first word is always kept whole when at least its length plus one fits.
pub fn write_reply(status: &Status, max_len: usize, out: &mut [u8]) -> usize {
    write_line(status, None, max_len, out)
}

/// `write_reply` with `maxconn:N` after the weight (HAProxy's agent-check sets the server's
/// maxconn from it, see `agent_check.rs`), when `maxconn` is given. When the line must be cut,
/// it goes after the reason and before the weight: when it does not fit, neither does the
/// reason.
pub(crate) fn write_line(
    status: &Status,
    maxconn: Option<u32>,
    max_len: usize,
    out: &mut [u8],
) -> usize {
    let max_len = max_len.min(out.len()).min(MAX_LINE);
    let words = words(status);
    let first = words[0].as_bytes();
    if max_len < first.len() + 1 {
        // Not even "word\n": send what fits of the first word (never a misleading prefix,
        // since every state has its own first byte).
        let n = max_len.min(first.len());
        out[..n].copy_from_slice(&first[..n]);
        return n;
    }
    // Build into `out` with one byte kept back for the newline.
    let mut line = Line {
        out: &mut out[..max_len - 1],
        len: 0,
    };
    line.push(first);
    for word in &words[1..] {
        if line.room() < word.len() + 1 {
            break;
        }
        line.push(b" ");
        line.push(word.as_bytes());
    }
    let mut weight = [0u8; 5];
    let weight = format_percent(status.weight_pct, &mut weight);
    let weight_fits = line.room() > weight.len();
    if weight_fits {
        line.push(b" ");
        line.push(weight);
    }
    let mut maxconn_fits = true;
    if let Some(n) = maxconn.filter(|_| weight_fits) {
        let mut word = [0u8; 18];
        let word = format_maxconn(n, &mut word);
        maxconn_fits = line.room() > word.len();
        if maxconn_fits {
            line.push(b" ");
            line.push(word);
        }
    }
    let message = status.message.as_str();
    if weight_fits && maxconn_fits && !message.is_empty() && line.room() >= 3 {
        line.push(b" #");
        for c in message.chars() {
            if line.room() == 0 {
                break;
            }
            // HAProxy reads bytes and ldirectord matches a regex: keep the line plain ASCII.
            let byte = if c.is_ascii() && !c.is_ascii_control() {
                c as u8
            } else {
                b'?'
            };
            line.push(&[byte]);
        }
    }
    let len = line.len;
    out[len] = b'\n';
    len + 1
}

/// Formats `maxconn:N` (no allocation: `io::Write` over the slice).
fn format_maxconn(n: u32, buf: &mut [u8; 18]) -> &[u8] {
    let mut rest = &mut buf[..];
    // "maxconn:" and at most 10 digits always fit in 18 bytes.
    let _ = write!(rest, "maxconn:{n}");
    let len = 18 - rest.len();
    &buf[..len]
}

/// Formats `0..=100` followed by `%`.
fn format_percent(pct: u8, buf: &mut [u8; 5]) -> &[u8] {
    let pct = pct.min(100);
    let mut n = 0;
    if pct >= 100 {
        buf[n] = b'1';
        n += 1;
    }
    if pct >= 10 {
        buf[n] = b'0' + (pct / 10) % 10;
        n += 1;
    }
    buf[n] = b'0' + pct % 10;
    buf[n + 1] = b'%';
    &buf[..n + 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reason;
    use crate::status::Text;

    fn status(state: State, weight_pct: u8, message: &str) -> Status {
        Status {
            state,
            reason: Reason::Host,
            weight_pct,
            in_use: 0,
            capacity: 0,
            generation: 0,
            since_ms: 0,
            message: Text::from_reason(message.as_bytes()),
        }
    }

    fn line(s: &Status, max: usize) -> String {
        let mut out = [0u8; 512];
        let n = write_reply(s, max, &mut out);
        assert!(n <= max);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn full_lines() {
        assert_eq!(
            line(&status(State::Up, 100, "ready"), 512),
            "up ready 100% #ready\n"
        );
        assert_eq!(line(&status(State::Up, 0, ""), 512), "drain up 0%\n");
        assert_eq!(
            line(&status(State::Drain, 50, "deploy"), 512),
            "drain up 50% #deploy\n"
        );
        assert_eq!(
            line(&status(State::Maint, 100, ""), 512),
            "maint down 100%\n"
        );
        assert_eq!(
            line(&status(State::Down, 7, "db gone"), 512),
            "fail ready 7% #db gone\n"
        );
        assert_eq!(
            line(&status(State::Starting, 100, ""), 512),
            "init down ready 100%\n"
        );
        assert_eq!(
            line(&status(State::Stopping, 100, ""), 512),
            "stopped ready 100%\n"
        );
        assert_eq!(
            line(&status(State::Unknown, 0, "unknown service"), 512),
            "error down 0% #unknown service\n"
        );
        assert_eq!(
            line(&status(State::Up, 100, "naïve\u{1F600}"), 512),
            "up ready 100% #na?ve?\n"
        );
    }

    #[test]
    fn the_state_table_of_protocol_md_is_what_is_sent() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let table = doc
            .split_once("| state | line | keepalived `require_reply 7570` | HAProxy shows |\n")
            .expect("the state-to-line table in docs/PROTOCOL.md")
            .1;
        let line_of = |s: &Status| line(s, 512);
        let mut rows = 0;
        for row in table.lines().skip(1).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (label, line) = (cells[1], cells[2].trim_matches('`'));
            let (state, weight, message) = match label {
                "UP, weight > 0" => (State::Up, 100, "reason"),
                "UP, weight 0" => (State::Up, 0, "reason"),
                "DRAIN" => (State::Drain, 100, "reason"),
                "MAINT" => (State::Maint, 100, "reason"),
                "DOWN" => (State::Down, 100, "reason"),
                "STARTING" => (State::Starting, 100, "reason"),
                "STOPPING" => (State::Stopping, 100, "reason"),
                "unknown service" => (State::Unknown, 0, "unknown service"),
                other => panic!("a row the test does not know: {other:?}"),
            };
            assert_eq!(
                line_of(&status(state, weight, message)),
                format!("{line}\n"),
                "{label}"
            );
            let passes = cells[3] == "passes";
            assert_eq!(line.starts_with("up"), passes, "{label}: keepalived column");
            rows += 1;
        }
        assert_eq!(rows, 8);
    }

    #[test]
    fn agent_lines_with_maxconn() {
        let agent_line = |s: &Status, maxconn, max| {
            let mut out = [0u8; 512];
            let n = write_line(s, maxconn, max, &mut out);
            String::from_utf8(out[..n].to_vec()).unwrap()
        };
        let up = status(State::Up, 50, "ready");
        assert_eq!(
            agent_line(&up, Some(64), 255),
            "up ready 50% maxconn:64 #ready\n"
        );
        assert_eq!(
            agent_line(&up, Some(u32::MAX), 255),
            "up ready 50% maxconn:4294967295 #ready\n",
            "the longest number fits (the TCP agent caps it for HAProxy)"
        );
        assert_eq!(agent_line(&up, None, 255), "up ready 50% #ready\n");
        // Cut like the rest: the reason goes first, then maxconn, never the weight for it.
        assert_eq!(agent_line(&up, Some(64), 24), "up ready 50% maxconn:64\n");
        assert_eq!(agent_line(&up, Some(64), 20), "up ready 50%\n");
    }

    #[test]
    fn only_a_serving_server_starts_with_up_and_first_bytes_differ() {
        let mut firsts = Vec::new();
        for state in State::ALL {
            let l = line(&status(state, 100, "x"), 512);
            assert_eq!(l.starts_with("up"), state == State::Up, "{l}");
            firsts.push(l.as_bytes()[0]);
        }
        let mut unique = firsts.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), firsts.len(), "{firsts:?}");
    }

    #[test]
    fn cut_to_the_request() {
        let s = status(State::Up, 100, "a long reason that will not fit");
        // keepalived's default payload is 32 bytes.
        assert_eq!(line(&s, 32), "up ready 100% #a long reason th\n");
        assert_eq!(line(&s, 14), "up ready 100%\n");
        assert_eq!(line(&s, 13), "up ready\n");
        assert_eq!(line(&s, 3), "up\n");
        assert_eq!(line(&s, 2), "up");
        assert_eq!(line(&s, 1), "u");
        assert_eq!(line(&status(State::Drain, 100, ""), 2), "dr");
        let long = status(State::Up, 100, &"x".repeat(255));
        assert_eq!(line(&long, 512).len(), MAX_LINE);
        for max in 0..40 {
            assert!(line(&status(State::Down, 100, "reason"), max).len() <= max);
        }
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request(b""), Request::Empty);
        assert_eq!(
            parse_request(b"keepalived check - keepalived ch"),
            Request::Server
        );
        assert_eq!(
            parse_request(b"service=game\n                 "),
            Request::Service(b"game")
        );
        assert_eq!(
            parse_request(b"  service=chat pad pad"),
            Request::Service(b"chat")
        );
        assert_eq!(parse_request(b"service=\n"), Request::Service(b""));
        assert_eq!(parse_request(b"\n"), Request::Server);
        assert_eq!(parse_request(b"up ready 100%\n"), Request::LooksLikeReply);
        assert_eq!(
            parse_request(b"fail ready 0% #x\n"),
            Request::LooksLikeReply
        );
        assert_eq!(parse_request(b"upgrade please"), Request::Server);
    }
}
