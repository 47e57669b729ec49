//! Helpers shared by the integration tests: agents on loopback, raw UDP exchanges, and the
//! paths of the built library and programs.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lbagent::Agent;

/// Starts an agent on 127.0.0.1 with a system-chosen port, plus `extra` config.
pub fn agent(extra: &str) -> (Agent, SocketAddr) {
    let agent = Agent::start(&format!("listen=127.0.0.1:0 {extra}")).expect("agent starts");
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
