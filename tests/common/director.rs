//! lbagent-director run as a process for a test, with its log lines collected.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eventually;

/// A running lbagent-director whose log lines are collected.
pub struct Director {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Director {
    pub fn start(targets: &Path, track: &Path, extra: &[&str]) -> Director {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
            .arg("--targets")
            .arg(targets)
            .arg("--track-dir")
            .arg(track)
            .args(extra)
            .env_remove("JOURNAL_STREAM")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Director { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 30 s) for a log line containing every needle; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let mut found = None;
        let ok = eventually(Duration::from_secs(30), || {
            found = self
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            found.is_some()
        });
        assert!(
            ok,
            "no log line with {needles:?}; log:\n{}",
            self.lines().join("\n")
        );
        found.unwrap()
    }

    pub fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// SIGTERM, then the exit status and the last log line.
    pub fn stop(mut self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        let last = self.wait_log(&["stopping on SIGTERM"]);
        (status.code().unwrap_or(-1), last)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
