//! lbagent-director run as operators run it: `--metrics` scraped over TCP (and checked by
//! promtool), and systemd's notification protocol (`Type=notify`, `WatchdogSec=`) against a
//! real notification socket the test binds.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::notify::NotifySocket;
use common::prometheus::{promtool_accepts, sample};
use common::{eventually, scratch_dir};
use lbagent::State;

const DIRECTOR: &str = env!("CARGO_BIN_EXE_lbagent-director");

struct Run {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn start(targets: &Path, track: &Path, extra: &[&str], env: &[(&str, String)]) -> Run {
        let mut cmd = Command::new(DIRECTOR);
        cmd.arg("--targets")
            .arg(targets)
            .arg("--track-dir")
            .arg(track)
            .args([
                "--interval",
                "200",
                "--timeout",
                "100",
                "--rise",
                "1",
                "--fall",
                "1",
            ])
            .args(extra)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Run { child, log }
    }

    fn metrics_addr(&self) -> SocketAddr {
        let mut addr = None;
        assert!(eventually(Duration::from_secs(10), || {
            addr = self.log.lock().unwrap().iter().find_map(|l| {
                l.split("GET http://")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                    .map(|a| a.parse().unwrap())
            });
            addr.is_some()
        }));
        addr.unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed test must not leave the director running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_string())
}

#[test]
fn metrics_show_each_target_and_the_loop() {
    let dir = scratch_dir("director-metrics");
    let (a5, addr5) = common::agent("initial_state=up");
    let (a6, addr6) = common::agent("initial_state=up services=game");
    // A target that never answers: a socket that reads nothing.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let targets = dir.join("targets.conf");
    std::fs::write(
        &targets,
        format!(
            "rs5 {addr5}\nrs6 {addr6} service=game\nrs7 {}\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let run = Run::start(&targets, &track, &["--metrics", "127.0.0.1:0"], &[]);
    let addr = run.metrics_addr();
    let scrape = || get(addr, "/metrics").1;
    assert!(eventually(Duration::from_secs(10), || {
        let body = scrape();
        body.contains(&format!(
            "lbagent_director_target_up{{target=\"rs5\",address=\"{addr5}\",service=\"\"}} 1"
        )) && body.contains(&format!(
            "lbagent_director_target_up{{target=\"rs6\",address=\"{addr6}\",service=\"game\"}} 1"
        )) && sample(
            &body,
            "lbagent_director_target_timeouts_total{target=\"rs7\"}",
        )
        .is_some_and(|n| n >= 1.0)
    }));
    a6.set_state("game", State::Drain, Some("deploy")).unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let body = scrape();
        body.contains(&format!(
            "lbagent_director_target_up{{target=\"rs6\",address=\"{addr6}\",service=\"game\"}} 0"
        )) && sample(
            &body,
            "lbagent_director_target_state{target=\"rs6\",state=\"drain\"}",
        ) == Some(1.0)
    }));
    let body = scrape();
    for (series, check) in [
        (
            "lbagent_director_target_state{target=\"rs7\",state=\"no_answer\"}",
            1.0,
        ),
        // Down at start (no track file yet), up, then drained.
        (
            "lbagent_director_target_transitions_total{target=\"rs6\"}",
            2.0,
        ),
        (
            "lbagent_director_target_track_file_written{target=\"rs6\"}",
            1.0,
        ),
        ("lbagent_director_targets{verdict=\"up\"}", 1.0),
        ("lbagent_director_targets{verdict=\"down\"}", 2.0),
    ] {
        assert_eq!(sample(&body, series), Some(check), "{series}\n{body}");
    }
    assert!(
        sample(
            &body,
            "lbagent_director_target_last_answer_age_seconds{target=\"rs5\"}"
        )
        .unwrap()
            < 5.0
    );
    assert!(
        sample(
            &body,
            "lbagent_director_target_last_answer_age_seconds{target=\"rs7\"}"
        )
        .is_none(),
        "never answered: no sample"
    );
    assert!(sample(&body, "lbagent_director_rtt_seconds_count").unwrap() >= 2.0);
    assert!(sample(&body, "lbagent_director_schedule_lag_seconds_count").unwrap() >= 3.0);
    assert!(
        sample(
            &body,
            "lbagent_director_track_writes_total{result=\"written\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(std::fs::read_to_string(track.join("rs6")).unwrap(), "1\n");
    promtool_accepts(&body);
    assert_eq!(get(addr, "/other").0, 404);
    drop((a5, a6));
    run.stop();
}

#[test]
fn under_systemd_ready_status_watchdog_reload_and_stop() {
    let dir = scratch_dir("director-systemd");
    let (agent, addr) = common::agent("initial_state=up");
    let targets = dir.join("targets.conf");
    std::fs::write(&targets, format!("rs5 {addr}\n")).unwrap();
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let mut systemd = NotifySocket::bind(&dir);
    let run = Run::start(
        &targets,
        &track,
        &[],
        &[
            ("NOTIFY_SOCKET", systemd.path.display().to_string()),
            ("WATCHDOG_USEC", "600000".to_string()),
        ],
    );
    systemd.until("READY=1", |m| !m.is_empty());
    assert!(
        systemd.messages[0]
            .1
            .starts_with("READY=1\nSTATUS=1 targets: "),
        "{:?}",
        systemd.messages
    );
    systemd.until("WATCHDOG=1 at half the period", |m| {
        m.iter().filter(|(_, t)| t == "WATCHDOG=1").count() >= 3
    });
    // A verdict change shows in the status.
    agent.set_state("", State::Down, None).unwrap();
    systemd.until("STATUS with the target down", |m| {
        m.iter().any(|(_, t)| t == "STATUS=1 targets: 0 up, 1 down")
    });
    // A frozen loop sends nothing (systemd would restart it); it resumes once thawed.
    run.signal(libc::SIGSTOP);
    let frozen_at = systemd.messages.len();
    std::thread::sleep(Duration::from_millis(1500));
    systemd.until("the frozen time to pass", |_| true);
    // Sent before the stop took effect.
    systemd.drain_queued();
    assert!(
        systemd.since(frozen_at, "WATCHDOG=1") <= 1,
        "{:?}",
        &systemd.messages[frozen_at..]
    );
    run.signal(libc::SIGCONT);
    let thawed_at = systemd.messages.len();
    systemd.until("WATCHDOG=1 after the thaw", |m| {
        m[thawed_at..].iter().any(|(_, t)| t == "WATCHDOG=1")
    });
    // SIGHUP: RELOADING=1, then READY=1 again.
    run.signal(libc::SIGHUP);
    systemd.until("RELOADING=1 then READY=1", |m| {
        let reloading = m.iter().position(|(_, t)| t == "RELOADING=1");
        reloading.is_some_and(|i| m[i..].iter().any(|(_, t)| t.starts_with("READY=1\n")))
    });
    // SIGTERM: STOPPING=1.
    run.signal(libc::SIGTERM);
    systemd.until("STOPPING=1", |m| {
        m.iter()
            .any(|(_, t)| t.starts_with("STOPPING=1\nSTATUS=stopping on SIGTERM"))
    });
    let mut run = run;
    assert!(run.child.wait().unwrap().success());
    drop(agent);
}
