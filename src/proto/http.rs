//! The HTTP health endpoint (`http=`): the answer to one request, given how to look up the
//! status of a service. Pure logic, no I/O (`serve/tcp.rs` does that).
//!
//! - `GET /health` asks about the whole server, `GET /health/NAME` about a service.
//! - 200 while the answer is "serving" (UP with weight above 0), 503 otherwise, 404 for an
//!   unknown service or path, 405 for a method other than GET or HEAD, 400 for a malformed
//!   request and 431 for one larger than [`MAX_REQUEST`].
//! - The body is the text line (`up ready 100% #ready`), the same line as over UDP and TCP;
//!   with `Accept: application/json`, a JSON object. HEAD gets the same head, no body.
//! - Every answer says `Connection: close` and `Cache-Control: no-store`.
//!
//! Parsing is httparse's (no allocation); the answer is written into a caller's buffer.

use std::io::{Cursor, Write};

use crate::config::MAX_SERVICE_NAME;
use crate::counters::Counter;
use crate::proto::text;
use crate::state::State;
use crate::status::Status;

/// Largest request read (request line and headers). Health checkers send 60..200 bytes.
pub(crate) const MAX_REQUEST: usize = 4096;
/// Most headers in a request; more is answered 431.
const MAX_HEADERS: usize = 32;
/// Room for the longest answer (head and body); see the test `longest_answer_fits`.
pub(crate) const MAX_RESPONSE: usize = 1536;
/// Room for the longest body.
const MAX_BODY: usize = 1024;

/// What to do with the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The request is not complete yet: read more.
    Incomplete,
    /// Send the first `len` bytes of the output buffer, then close; count `counter` once sent.
    Reply { len: usize, counter: Counter },
    /// `GET /metrics` (or HEAD: `head`): the caller answers with `metrics_head` and the
    /// exposition of `proto/metrics.rs` when `metrics=on`, 404 otherwise (`not_found`).
    Metrics { head: bool },
}

/// Decides the answer to `request` (everything received so far), asking `status_of` for the
/// status of the service named in the path ("" for the whole server). `full` says that no
/// more bytes can be received (the buffer is full), so an incomplete request is too large.
pub(crate) fn respond(
    request: &[u8],
    full: bool,
    status_of: impl FnOnce(&[u8]) -> Status,
    instance_id: u64,
    out: &mut [u8; MAX_RESPONSE],
) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if !full => return Answer::Incomplete,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return plain(out, 431, "request too large\n", Counter::HttpBadRequest);
        }
        Err(_) => return plain(out, 400, "bad request\n", Counter::HttpBadRequest),
    }
    let head = match parsed.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            return write(
                out,
                Head {
                    code: 405,
                    json: false,
                    extra: "Allow: GET, HEAD\r\n",
                    omit_body: false,
                },
                b"only GET and HEAD\n",
                Counter::AnsweredHttp,
            );
        }
    };
    let path = parsed.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path == "/metrics" {
        return Answer::Metrics { head };
    }
    let service = match path.strip_prefix("/health") {
        Some("") => "",
        Some(rest) => match rest.strip_prefix('/') {
            Some(name) if name.len() <= MAX_SERVICE_NAME => name,
            _ => return plain_head(out, 404, "not found\n", head),
        },
        None => return plain_head(out, 404, "not found\n", head),
    };
    let json = wants_json(parsed.headers);
    let status = status_of(service.as_bytes());
    let code = if status.state == State::Unknown {
        404
    } else if status.is_serving() {
        200
    } else {
        503
    };
    let mut body = [0u8; MAX_BODY];
    let body_len = if json {
        write_json(&status, service, instance_id, &mut body)
    } else {
        Some(text::write_reply(&status, text::MAX_LINE, &mut body))
    };
    let Some(body_len) = body_len else {
        // Cannot happen (see `longest_answer_fits`); answer rather than panic.
        return plain(out, 500, "answer too large\n", Counter::AnsweredHttp);
    };
    write(
        out,
        Head {
            code,
            json,
            extra: "",
            omit_body: head,
        },
        &body[..body_len],
        Counter::AnsweredHttp,
    )
}

/// The 404 answer (`GET /metrics` while `metrics=off`).
pub(crate) fn not_found(out: &mut [u8; MAX_RESPONSE], head: bool) -> Answer {
    plain_head(out, 404, "not found\n", head)
}

/// The 503 answer when every metrics buffer is in use (scrapes at once beyond the bound).
pub(crate) fn metrics_busy(out: &mut [u8; MAX_RESPONSE]) -> Answer {
    let head = Head {
        code: 503,
        json: false,
        extra: "Retry-After: 1\r\n",
        omit_body: false,
    };
    write(
        out,
        head,
        b"busy: too many scrapes at once\n",
        Counter::AnsweredHttp,
    )
}

/// The head of a `/metrics` answer whose body is `body_len` bytes long; returns its length
/// (at most `METRICS_HEAD_ROOM`).
pub(crate) fn metrics_head(body_len: usize, out: &mut [u8; METRICS_HEAD_ROOM]) -> usize {
    let mut w = Cursor::new(&mut out[..]);
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {body_len}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    );
    usize::try_from(w.position()).unwrap_or(0)
}

/// Room for the head of a `/metrics` answer.
pub(crate) const METRICS_HEAD_ROOM: usize = 256;

/// True when an `Accept` header lists `application/json` (without `q=0`).
fn wants_json(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                })
            });
            media.eq_ignore_ascii_case("application/json") && !refused
        })
}

/// The status as one JSON object, with the same field names as `lbagent-probe --json`.
fn write_json(status: &Status, service: &str, instance_id: u64, out: &mut [u8]) -> Option<usize> {
    let mut w = Cursor::new(out);
    w.write_all(b"{\"service\":").ok()?;
    write_json_string(&mut w, service).ok()?;
    write!(
        w,
        ",\"serving\":{},\"state\":\"{}\",\"reason\":\"{}\",\"reason_code\":{},\
         \"weight_pct\":{},\"in_use\":{},\"capacity\":{},\"generation\":{},\"since_ms\":{},\
         \"instance_id\":\"{:016x}\",\"message\":",
        status.is_serving(),
        status.state.name(),
        status.reason.name(),
        status.reason as u8,
        status.weight_pct,
        status.in_use,
        status.capacity,
        status.generation,
        status.since_ms,
        instance_id,
    )
    .ok()?;
    write_json_string(&mut w, status.message.as_str()).ok()?;
    w.write_all(b"}\n").ok()?;
    usize::try_from(w.position()).ok()
}

/// Writes `s` as a JSON string (RFC 8259: quote, backslash and control characters escaped).
fn write_json_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(b"\"")?;
    for c in s.chars() {
        match c {
            '"' => w.write_all(b"\\\"")?,
            '\\' => w.write_all(b"\\\\")?,
            '\n' => w.write_all(b"\\n")?,
            '\r' => w.write_all(b"\\r")?,
            '\t' => w.write_all(b"\\t")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => w.write_all(c.encode_utf8(&mut [0; 4]).as_bytes())?,
        }
    }
    w.write_all(b"\"")
}

/// The parts of a response head that vary.
struct Head {
    code: u16,
    json: bool,
    /// Extra header lines, each ending in CRLF.
    extra: &'static str,
    /// HEAD: announce the body's length but do not send it.
    omit_body: bool,
}

fn plain(out: &mut [u8; MAX_RESPONSE], code: u16, body: &str, counter: Counter) -> Answer {
    let head = Head {
        code,
        json: false,
        extra: "",
        omit_body: false,
    };
    write(out, head, body.as_bytes(), counter)
}

fn plain_head(out: &mut [u8; MAX_RESPONSE], code: u16, body: &str, omit_body: bool) -> Answer {
    let head = Head {
        code,
        json: false,
        extra: "",
        omit_body,
    };
    write(out, head, body.as_bytes(), Counter::AnsweredHttp)
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn write(out: &mut [u8; MAX_RESPONSE], head: Head, body: &[u8], counter: Counter) -> Answer {
    let content_type = if head.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut w = Cursor::new(&mut out[..]);
    let written = write!(
        w,
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        head.code,
        reason_phrase(head.code),
        body.len(),
        head.extra,
    )
    .and_then(|()| {
        if head.omit_body {
            Ok(())
        } else {
            w.write_all(body)
        }
    });
    // The buffer is sized for the longest answer (`longest_answer_fits`); should that ever be
    // wrong, a cut answer is sent rather than none.
    debug_assert!(written.is_ok(), "the answer does not fit in MAX_RESPONSE");
    let len = usize::try_from(w.position()).unwrap_or(0);
    Answer::Reply { len, counter }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Reason;
    use crate::status::{Board, Target, Text};

    /// The answer as the agent gives it, from the board at clock time 1000.
    fn respond_from(
        board: &Board,
        instance_id: u64,
        request: &[u8],
        full: bool,
        out: &mut [u8; MAX_RESPONSE],
    ) -> Answer {
        respond(
            request,
            full,
            |name| board.status(board.target(name), 1000),
            instance_id,
            out,
        )
    }

    fn board_with(service: &str) -> Board {
        let config = crate::status::BoardConfig {
            initial: State::Up,
            services: &[service.to_string()],
            watchdog_ms: 0,
            workers: 0,
            worker_timeout_ms: 1000,
            worker_policy: crate::status::WorkerPolicy::Any,
            shaping: crate::status::shaping::ShapingConfig::OFF,
            drain: crate::status::DrainConfig::DEFAULT,
        };
        Board::new(&config, 1000).unwrap()
    }

    fn board() -> Board {
        board_with("game")
    }

    fn ask(board: &Board, request: &str) -> (Answer, String) {
        let mut out = [0u8; MAX_RESPONSE];
        let answer = respond_from(board, 0xa1b2, request.as_bytes(), false, &mut out);
        let text = match answer {
            Answer::Reply { len, .. } => String::from_utf8(out[..len].to_vec()).unwrap(),
            Answer::Incomplete | Answer::Metrics { .. } => String::new(),
        };
        (answer, text)
    }

    fn code(response: &str) -> u16 {
        response[9..12].parse().unwrap()
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").unwrap().1
    }

    #[test]
    fn codes_follow_the_state() {
        let b = board();
        let (a, r) = ask(&b, "GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(
            a,
            Answer::Reply {
                len: r.len(),
                counter: Counter::AnsweredHttp
            }
        );
        assert_eq!(code(&r), 200, "{r}");
        assert_eq!(body(&r), "up ready 100%\n");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Length: 14\r\n"), "{r}");
        for (state, expected) in [
            (State::Drain, 503),
            (State::Maint, 503),
            (State::Down, 503),
            (State::Starting, 503),
            (State::Up, 200),
        ] {
            b.set_state(Target::Server, state, Reason::Host, None, 1000);
            let (_, r) = ask(&b, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(code(&r), expected, "{state}: {r}");
        }
        b.set_weight(Target::Server, 0);
        let (_, r) = ask(&b, "GET /health HTTP/1.1\r\n\r\n");
        assert_eq!((code(&r), body(&r)), (503, "drain up 0%\n"));
    }

    #[test]
    fn services_and_paths() {
        let b = board();
        b.set_state(
            Target::Service(0),
            State::Drain,
            Reason::Host,
            Some(&Text::from_static("deploy")),
            1000,
        );
        let (_, r) = ask(&b, "GET /health/game HTTP/1.1\r\n\r\n");
        assert_eq!((code(&r), body(&r)), (503, "drain up 100% #deploy\n"));
        let (_, r) = ask(&b, "GET /health/nope HTTP/1.1\r\n\r\n");
        assert_eq!(
            (code(&r), body(&r)),
            (404, "error down 0% #unknown service\n")
        );
        let (_, r) = ask(&b, "GET /health?verbose=1 HTTP/1.1\r\n\r\n");
        assert_eq!(code(&r), 200);
        let (_, r) = ask(&b, "GET /health/ HTTP/1.1\r\n\r\n");
        assert_eq!(code(&r), 200, "empty name: the whole server");
        assert_eq!(
            ask(&b, "HEAD /metrics?x=1 HTTP/1.1\r\n\r\n").0,
            Answer::Metrics { head: true }
        );
        for path in [
            "/",
            "/healthz",
            "/health/game/x",
            "/healthgame",
            "/metrics/x",
        ] {
            let (_, r) = ask(&b, &format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert_eq!(code(&r), 404, "{path}");
        }
        let long = format!("GET /health/{} HTTP/1.1\r\n\r\n", "x".repeat(65));
        assert_eq!(code(&ask(&b, &long).1), 404);
    }

    #[test]
    fn head_json_and_methods() {
        let b = board();
        let (_, get) = ask(&b, "GET /health HTTP/1.1\r\n\r\n");
        let (_, head) = ask(&b, "HEAD /health HTTP/1.1\r\n\r\n");
        assert_eq!(
            head,
            format!("{}\r\n\r\n", get.split_once("\r\n\r\n").unwrap().0)
        );
        let (_, r) = ask(
            &b,
            "GET /health HTTP/1.1\r\naccept: text/html, application/json;q=0.9\r\n\r\n",
        );
        assert!(r.contains("Content-Type: application/json\r\n"), "{r}");
        let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
        assert_eq!(v["state"], "up");
        assert_eq!(v["serving"], true);
        assert_eq!(v["weight_pct"], 100);
        assert_eq!(v["instance_id"], "000000000000a1b2");
        let (_, r) = ask(
            &b,
            "GET /health HTTP/1.1\r\nAccept: application/json;q=0\r\n\r\n",
        );
        assert!(r.contains("text/plain"), "{r}");
        let (_, r) = ask(&b, "POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(code(&r), 405);
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
    }

    #[test]
    fn incomplete_malformed_and_too_large() {
        let b = board();
        assert_eq!(ask(&b, "GET /health HTTP/1.1\r\n").0, Answer::Incomplete);
        assert_eq!(ask(&b, "").0, Answer::Incomplete);
        let (a, r) = ask(&b, "GET /he alth HTTP/1.1\r\n\r\n");
        assert!(matches!(
            a,
            Answer::Reply {
                counter: Counter::HttpBadRequest,
                ..
            }
        ));
        assert_eq!(code(&r), 400);
        let mut out = [0u8; MAX_RESPONSE];
        let partial = b"GET /health HTTP/1.1\r\nX: y\r\n";
        let a = respond_from(&b, 0, partial, true, &mut out);
        let Answer::Reply { len, counter } = a else {
            panic!()
        };
        assert_eq!(counter, Counter::HttpBadRequest);
        assert!(out[..len].starts_with(b"HTTP/1.1 431 "));
        let many = format!("GET /health HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(33));
        assert_eq!(code(&ask(&b, &many).1), 431);
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\tnl\n\u{1}",
            "été \u{1F600}",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            write_json_string(&mut out, s).unwrap();
            let parsed: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(parsed, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn longest_answer_fits() {
        let b = board_with(&"g".repeat(64));
        let worst = "\"".repeat(255);
        b.set_state(
            Target::Service(0),
            State::Drain,
            Reason::Host,
            Some(&Text::from_reason(worst.as_bytes())),
            1000,
        );
        b.set_load(Target::Service(0), u32::MAX, u32::MAX);
        let request = format!(
            "GET /health/{} HTTP/1.1\r\nAccept: application/json\r\n\r\n",
            "g".repeat(64)
        );
        let (_, r) = ask(&b, &request);
        let v: serde_json::Value = serde_json::from_str(body(&r)).expect(&r);
        assert_eq!(v["message"].as_str().unwrap(), worst);
        assert_eq!(v["in_use"], u32::MAX);
    }
}
