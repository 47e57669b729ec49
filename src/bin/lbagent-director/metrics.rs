//! `--metrics ADDR:PORT`: the director in Prometheus' text format, served by the poll loop
//! itself (non-blocking sockets, at most `MAX_CONNECTIONS` at once, a deadline each): no
//! thread, and a scrape never delays a probe by more than the time to render it.
//!
//! Per target: the verdict (`lbagent_director_target_up`), the agent's last answered state
//! (`lbagent_director_target_state`, one series: the current state, or `no_answer`), the age of
//! the last answer, the last round trip, transitions, timeouts, and whether its track file says
//! the verdict. For the loop: a histogram of round trips, a histogram of how late each probe
//! went out behind its schedule, probes sent and answered, and the HAProxy sinks: commands
//! written and failed, and whether each sink's last command succeeded.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 8;
/// How long a scraper has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// Tokens: the listener `base`, connections `base + 1 + i`.
pub struct MetricsServer {
    listener: TcpListener,
    base: usize,
    connections: Vec<Option<Connection>>,
    /// Connections were left in the listen queue (every slot was taken).
    pending: bool,
}

struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    /// The answer, once the request is whole.
    answer: Option<Vec<u8>>,
    sent: usize,
    deadline: Instant,
}

/// Fixed buckets of a histogram, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *bound {
                *count += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// Round-trip buckets: 100 us to 1 s.
pub const RTT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Lateness buckets: 1 ms to 10 s.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The loop-wide figures (besides each target's).
pub struct LoopFigures {
    pub rtt: Histogram,
    pub lag: Histogram,
    pub track_writes: u64,
    pub track_write_failures: u64,
}

impl LoopFigures {
    pub fn new() -> LoopFigures {
        LoopFigures {
            rtt: Histogram::new(RTT_BUCKETS),
            lag: Histogram::new(LAG_BUCKETS),
            track_writes: 0,
            track_write_failures: 0,
        }
    }

    pub fn render(&self, out: &mut String) {
        self.rtt.render(
            out,
            "lbagent_director_rtt_seconds",
            "Round trip of each answered probe, every target.",
        );
        self.lag.render(
            out,
            "lbagent_director_schedule_lag_seconds",
            "How late each probe went out behind its schedule (the poll loop's lag).",
        );
        counter(
            out,
            "lbagent_director_track_writes_total",
            "Track file writes, by result.",
            &[
                ("result=\"written\"", self.track_writes),
                ("result=\"failed\"", self.track_write_failures),
            ],
        );
    }
}

/// Writes a counter family with labelled samples.
pub fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    family(out, name, help, "counter", samples);
}

/// Writes a gauge family with labelled samples.
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, u64)]) {
    family(out, name, help, "gauge", samples);
}

fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value, escaped as the text format wants (backslash, quote, line feed).
pub fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl MetricsServer {
    /// Binds `addr`; the listener takes token `base`, connections the next ones.
    pub fn bind(addr: SocketAddr, base: usize) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        Ok(MetricsServer {
            listener,
            base,
            connections: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            pending: false,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, Token(self.base), Interest::READABLE)
    }

    /// Whether `token` is ours.
    pub fn owns(&self, token: Token) -> bool {
        (self.base..=self.base + MAX_CONNECTIONS).contains(&token.0)
    }

    /// The earliest deadline of an open connection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections.iter().flatten().map(|c| c.deadline).min()
    }

    /// Handles readiness of `token`; `render` builds the exposition when a request is whole.
    pub fn ready(&mut self, token: Token, registry: &Registry, render: &mut dyn FnMut() -> String) {
        if token.0 == self.base {
            self.accept(registry, render);
        } else if let Some(i) = token.0.checked_sub(self.base + 1) {
            self.progress(i, render);
        }
    }

    /// After each loop turn: closes connections past their deadline, and accepts what waited
    /// for a free slot.
    pub fn after_turn(&mut self, registry: &Registry, render: &mut dyn FnMut() -> String) {
        let now = Instant::now();
        for c in &mut self.connections {
            if c.as_ref().is_some_and(|c| c.deadline <= now) {
                *c = None;
            }
        }
        // Edge-triggered: connections left in the queue while every slot was taken bring no
        // new event once a slot is free.
        if self.pending && self.connections.iter().any(Option::is_none) {
            self.accept(registry, render);
        }
    }

    fn accept(&mut self, registry: &Registry, render: &mut dyn FnMut() -> String) {
        loop {
            let Some(i) = self.connections.iter().position(Option::is_none) else {
                self.pending = true;
                return;
            };
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.pending = false;
                    return;
                }
            };
            let token = Token(self.base + 1 + i);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.connections[i] = Some(Connection {
                stream,
                request: Vec::new(),
                answer: None,
                sent: 0,
                deadline: Instant::now() + DEADLINE,
            });
            self.progress(i, render);
        }
    }

    fn progress(&mut self, i: usize, render: &mut dyn FnMut() -> String) {
        let Some(slot) = self.connections.get_mut(i) else {
            return;
        };
        let Some(c) = slot.as_mut() else {
            return;
        };
        if step(c, render).is_some() {
            *slot = None;
        }
    }
}

/// Moves a connection on; `Some(())` when it is finished (answered or failed).
fn step(c: &mut Connection, render: &mut dyn FnMut() -> String) -> Option<()> {
    loop {
        if let Some(answer) = &c.answer {
            match c.stream.write(&answer[c.sent..]) {
                Ok(0) => return Some(()),
                Ok(n) => {
                    c.sent += n;
                    if c.sent == answer.len() {
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                        // Read what the scraper sent beyond its request before closing.
                        let mut sink = [0u8; 1024];
                        while matches!(c.stream.read(&mut sink), Ok(n) if n > 0) {}
                        return Some(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(()),
            }
            continue;
        }
        let mut buf = [0u8; 2048];
        match c.stream.read(&mut buf) {
            Ok(0) => return Some(()),
            Ok(n) => c.request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Some(()),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let answer = match request.parse(&c.request) {
            Ok(httparse::Status::Partial) if c.request.len() < MAX_REQUEST => continue,
            Ok(httparse::Status::Complete(_)) => {
                let path = request.path.unwrap_or("");
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                match (request.method, path) {
                    (Some(m @ ("GET" | "HEAD")), "/metrics") => {
                        let body = render();
                        respond(
                            200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            &body,
                            m == "HEAD",
                        )
                    }
                    (Some("GET" | "HEAD"), _) => respond(404, "text/plain", "not found\n", false),
                    _ => respond(405, "text/plain", "only GET and HEAD\n", false),
                }
            }
            _ => respond(400, "text/plain", "bad request\n", false),
        };
        c.answer = Some(answer);
    }
}

fn respond(code: u16, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let phrase = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
