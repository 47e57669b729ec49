//! Helpers shared by the integration tests: agents on loopback, raw UDP exchanges, and the
//! paths of the built library and programs.
#![allow(dead_code)]

pub mod c_build;
pub mod c_prober;
pub mod director;
pub mod haproxy;
pub mod notify;
pub mod prometheus;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lbagent::Agent;

/// Starts an agent on 127.0.0.1 with a system-chosen port, plus `extra` config. Tests probe
/// much faster than a director, so the per-source rate limit is off unless `extra` sets it
/// (tests/security.rs does).
pub fn agent(extra: &str) -> (Agent, SocketAddr) {
    let unlimited = if extra.contains("rate_per_source") {
        ""
    } else {
        "rate_per_source=0"
    };
    let agent =
        Agent::start(&format!("listen=127.0.0.1:0 {unlimited} {extra}")).expect("agent starts");
    let addr = agent.local_addrs()[0];
    (agent, addr)
}

/// A client socket connected to `to` (like keepalived's checker).
pub fn connected(to: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(local).unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends `request` and returns the answer, or None after `wait`.
pub fn exchange(to: SocketAddr, request: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = connected(to);
    s.set_read_timeout(Some(wait)).unwrap();
    s.send(request).unwrap();
    let mut buf = [0u8; 4096];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends `request` and returns the answer, which must come within 2 s.
pub fn ask(to: SocketAddr, request: &[u8]) -> Vec<u8> {
    exchange(to, request, Duration::from_secs(2)).expect("an answer")
}

/// Sends a text request and returns the answer as a string.
pub fn ask_text(to: SocketAddr, request: &str) -> String {
    String::from_utf8(ask(to, request.as_bytes())).expect("an ASCII line")
}

/// Polls `f` until it returns true or `within` passes (for conditions that take time, never
/// as a timing assertion).
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// keepalived's default UDP_CHECK payload (32 bytes).
pub const KEEPALIVED_PAYLOAD: &[u8] = b"keepalived check - keepalived ch";

/// The cargo target directory of this build (…/target/debug).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test binary>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Connects over TCP, sends `request` (may be empty), and reads until the agent closes.
pub fn tcp_exchange(to: SocketAddr, request: &[u8]) -> String {
    try_tcp_exchange(to, request).expect("the agent answers and closes")
}

/// `tcp_exchange` that reports failures (a connection over the limit is reset) instead of
/// panicking, for use inside `eventually`.
pub fn try_tcp_exchange(to: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    if !request.is_empty() {
        s.write_all(request)?;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(String::from_utf8(answer).expect("an ASCII answer"))
}

/// An HTTP answer split into its parts.
#[derive(Debug)]
pub struct HttpAnswer {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends a raw HTTP request and reads the whole answer (the agent always closes).
pub fn http_exchange(to: SocketAddr, request: &str) -> HttpAnswer {
    let raw = tcp_exchange(to, request.as_bytes());
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete HTTP head");
    HttpAnswer {
        code: head[9..12].parse().expect("a status code"),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` with the headers a health checker sends.
pub fn http_get(to: SocketAddr, path: &str) -> HttpAnswer {
    http_exchange(
        to,
        &format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"),
    )
}

/// The body of the fenced block that opens with "```LANG NAME" in a document of the repository.
pub fn doc_block(doc: &str, lang: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let opening = format!("```{lang} {name}");
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == opening)
        .unwrap_or_else(|| panic!("no block {opening} in {doc}"));
    let mut body = String::new();
    for line in lines.take_while(|l| !l.starts_with("```")) {
        body.push_str(line);
        body.push('\n');
    }
    body
}

pub mod netns;
pub mod responder;

/// A fresh, empty directory for one test under the target directory (those of earlier runs of
/// the same test are removed).
pub fn scratch_dir(name: &str) -> PathBuf {
    let root = target_dir().join("test-scratch");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
