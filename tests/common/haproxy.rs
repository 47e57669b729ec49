//! A real HAProxy (Debian's package; `make test` installs it) on loopback, for the tests that
//! run one (tests/haproxy.rs, tests/director.rs, tests/rolling_restart.rs): started with a configuration checked
//! by `haproxy -c`, watched through its stats socket, killed on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::eventually;

/// Generous bound for HAProxy to show a change (agent-inter is 200 ms; a regular check needs
/// `inter x fall`, a few seconds).
pub const WAIT: Duration = Duration::from_secs(15);

/// A running HAProxy, killed (and its files removed) on drop.
pub struct Haproxy {
    child: Child,
    dir: PathBuf,
    /// The stats socket.
    pub socket: PathBuf,
}

impl Haproxy {
    /// Checks the configuration with `haproxy -c`, then runs it in the foreground.
    pub fn start(dir: &Path, config: &str) -> Haproxy {
        let socket = dir.join("admin.sock");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("haproxy runs (make test installs it)");
        assert!(
            check.status.success(),
            "haproxy -c rejects the configuration:\n{}\n{config}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let haproxy = Haproxy {
            child,
            dir: dir.to_path_buf(),
            socket,
        };
        assert!(
            eventually(Duration::from_secs(10), || UnixStream::connect(
                &haproxy.socket
            )
            .is_ok()),
            "no stats socket; log:\n{}",
            haproxy.log()
        );
        haproxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    /// One command on the stats socket.
    pub fn command(&self, command: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// `show stat`: the named columns of one server's row.
    pub fn stat(&self, backend: &str, server: &str) -> HashMap<String, String> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("a CSV header")
            .split(',')
            .collect();
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&backend) && row.get(1) == Some(&server))
            .map(|row| {
                header
                    .iter()
                    .zip(row)
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no row {backend}/{server} in:\n{csv}"))
    }

    /// `show servers state BACKEND`: the named fields of one server.
    pub fn server_state(&self, backend: &str, server: &str) -> HashMap<String, String> {
        let out = self.command(&format!("show servers state {backend}"));
        let header: Vec<&str> = out
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .expect("a header")
            .split_whitespace()
            .collect();
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&backend) && f.get(3) == Some(&server))
            .map(|f| {
                header
                    .iter()
                    .zip(f)
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no {backend}/{server} in:\n{out}"))
    }

    /// Waits until `show stat` gives `status` (and `weight`, when given) for a server; returns
    /// how long it took. "UP" also matches the transitional "UP 1/3" (running, while the
    /// regular check's health climbs back after a maintenance), "DOWN" matches "DOWN 1/2".
    pub fn wait_for(
        &self,
        backend: &str,
        server: &str,
        status: &str,
        weight: Option<u32>,
    ) -> Duration {
        let started = Instant::now();
        let mut last = HashMap::new();
        while started.elapsed() < WAIT {
            last = self.stat(backend, server);
            let weight_ok = weight.is_none_or(|w| last["weight"] == w.to_string());
            if shows(&last["status"], status) && weight_ok {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{backend}/{server} never showed {status} {weight:?}; last: status {} weight {} \
             last agent answer {:?}, check {}; log:\n{}",
            last["status"],
            last["weight"],
            last["last_agt"],
            last["check_desc"],
            self.log()
        );
    }
}

/// `actual` is `expected`, or `expected` followed by a health count such as " 1/3".
pub fn shows(actual: &str, expected: &str) -> bool {
    match actual.strip_prefix(expected) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(' ')
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()),
        None => false,
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces each documented address or port by the test's; each must occur in the snippet.
pub fn substitute(snippet: &str, replacements: &[(&str, String)]) -> String {
    let mut out = snippet.to_string();
    for (from, to) in replacements {
        assert!(
            out.contains(from),
            "the snippet no longer contains {from:?}"
        );
        out = out.replace(from, to);
    }
    out
}
