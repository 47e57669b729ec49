//! HAProxy's agent-check over TCP (`tcp_agent=`): HAProxy connects, may send its
//! `agent-send` string, and reads one line: the text line of `text.rs`, always whole (TCP has
//! no amplification), optionally with `maxconn:N`.
//!
//! Which status the line is about comes from the first line HAProxy sends, if any:
//! - nothing, or an empty line: the whole server;
//! - `service=NAME`, as in text mode over UDP, or HAProxy's own idiom, the bare name
//!   (`agent-send "game\n"`): that service;
//! - any other first word is looked up as a name too, so it gets the unknown-service answer
//!   (which every director reads as not serving), never the whole server's answer by mistake.

use crate::proto::text;
use crate::status::Status;

/// Longest `agent-send` line read.
pub const MAX_REQUEST: usize = 512;

/// What an `agent-send` line asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// No line, or an empty one: the whole server.
    Server,
    /// A named service (`service=NAME` or a bare `NAME`); the caller looks it up.
    Service(&'a [u8]),
}

/// Whether `received` holds a whole line (ended by CR, LF or NUL).
pub fn line_complete(received: &[u8]) -> bool {
    received.iter().any(|b| b"\r\n\0".contains(b))
}

/// Reads what HAProxy sent (everything received so far; may be empty).
pub fn parse_request(received: &[u8]) -> Request<'_> {
    let line_end = received
        .iter()
        .position(|b| matches!(b, b'\n' | b'\r' | 0))
        .unwrap_or(received.len());
    let line = received[..line_end].trim_ascii();
    let word_end = line
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b','))
        .unwrap_or(line.len());
    let word = &line[..word_end];
    if word.is_empty() {
        return Request::Server;
    }
    Request::Service(word.strip_prefix(b"service=").unwrap_or(word))
}

/// Writes the answer line for `status` into `out` (at least [`text::MAX_LINE`] bytes), with
/// `maxconn:N` when `maxconn` is given and the capacity is known; returns its length.
/// HAProxy reads maxconn into an int: a larger capacity is sent as `i32::MAX`.
pub fn write_answer(status: &Status, maxconn: bool, out: &mut [u8]) -> usize {
    let maxconn = (maxconn && status.capacity > 0).then_some(status.capacity.min(i32::MAX as u32));
    text::write_line(status, maxconn, text::MAX_LINE, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse_request(b""), Request::Server);
        assert_eq!(parse_request(b"\n"), Request::Server);
        assert_eq!(parse_request(b"  \r\n"), Request::Server);
        assert_eq!(parse_request(b"game\n"), Request::Service(b"game"));
        assert_eq!(parse_request(b"service=game\n"), Request::Service(b"game"));
        assert_eq!(parse_request(b" chat extra\n"), Request::Service(b"chat"));
        assert_eq!(parse_request(b"hello"), Request::Service(b"hello"));
        assert!(!line_complete(b"game"));
        assert!(line_complete(b"game\n") && line_complete(b"game\r"));
    }
}
