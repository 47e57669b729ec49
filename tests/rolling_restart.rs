//! The proof: a rolling restart under load, side by side, behind a real HAProxy on loopback.
//!
//! Three real servers (`tests/c/rolling_server.c`: 3 s start-up with the port closed, 20 ms of
//! work per request, the library embedded) on 127.0.0.2..4, HAProxy in front, and a load
//! generator sending 300 short requests a second through it, each on a new connection. The
//! servers are restarted one by one: SIGTERM (the server drains, waits with
//! `lbagent_wait_drained`, stops), a new process 0.5 s after the old one exited, then, once
//! HAProxy shows it UP at full weight, 3 s before the next.
//!
//! The same restart runs three times, with docs/LIFECYCLE.md's HAProxy configurations (only
//! addresses, ports and the socket path replaced): judged by the agent (`agent-check`, slow
//! start), and by HAProxy's plain TCP check at its defaults and with `option redispatch`. The
//! lbagent run must lose no request and make none wait beyond the service's own time (plus
//! half a second: any HAProxy retry takes a 1 s turn-around); the baselines are reported, not
//! asserted (`cargo test --test rolling_restart -- --nocapture` prints the table).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::c_build::{Link, build};
use common::haproxy::{Haproxy, free_port, substitute};
use common::*;

const SERVERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];
const DOC_SERVERS: [&str; 3] = ["10.0.0.5:7000", "10.0.0.6:7000", "10.0.0.7:7000"];
/// Requests per second through HAProxy.
const RATE: u32 = 300;
/// The servers' own time per request (ROLLING_SERVICE_MS).
const SERVICE: Duration = Duration::from_millis(20);
/// A request slower than the service's own time by more than this waited somewhere (an
/// HAProxy retry waits 1 s); scheduling on a busy machine stays well below it.
const SLOW_MARGIN: Duration = Duration::from_millis(500);
/// The client gives up after this (then the request failed).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_MS: u32 = 3000;
const RESTART_GAP: Duration = Duration::from_millis(500);
const SETTLE: Duration = Duration::from_secs(3);

/// Ports free on every server address now: the service's, the agent's UDP and TCP ones.
fn ports() -> [u16; 3] {
    let mut found = Vec::new();
    'search: for _ in 0..200 {
        let port = free_port();
        if found.contains(&port) {
            continue;
        }
        for ip in SERVERS {
            if TcpListener::bind((ip, port)).is_err()
                || std::net::UdpSocket::bind((ip, port)).is_err()
            {
                continue 'search;
            }
        }
        found.push(port);
        if found.len() == 3 {
            return [found[0], found[1], found[2]];
        }
    }
    panic!("no ports free on every server address");
}

/// One running server process; its stdout lines come through a channel.
struct Server {
    child: Child,
    lines: Receiver<String>,
}

impl Server {
    /// Starts server `name` on `ip`, with its agent (docs/LIFECYCLE.md's configuration) when
    /// `with_agent`, without one otherwise (the baselines).
    fn start(
        exe: &std::path::Path,
        name: &str,
        ip: Ipv4Addr,
        ports: [u16; 3],
        with_agent: bool,
    ) -> Server {
        let [service, udp, tcp] = ports;
        let config = doc_block("docs/LIFECYCLE.md", "sh", "rolling-agent");
        let config = config
            .trim()
            .strip_prefix("LBAGENT_CONFIG=\"")
            .and_then(|c| c.strip_suffix('"'))
            .expect("LBAGENT_CONFIG=\"...\"");
        let config = substitute(
            config,
            &[
                ("0.0.0.0:4950", format!("{ip}:{udp}")),
                ("0.0.0.0:4951", format!("{ip}:{tcp}")),
            ],
        );
        let mut command = Command::new(exe);
        if with_agent {
            command.env("LBAGENT_CONFIG", config);
        } else {
            command.env_remove("LBAGENT_CONFIG");
        }
        let mut child = command
            .args([name, &ip.to_string(), &service.to_string()])
            .env("ROLLING_STARTUP_MS", STARTUP_MS.to_string())
            .env("ROLLING_SERVICE_MS", SERVICE.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Server { child, lines }
    }

    /// Waits for a stdout line ending in `what`; returns it.
    fn line(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?} from the server: {e}"),
            }
        }
    }

    /// SIGTERM, then waits for it to exit by itself; returns its last lines.
    fn terminate(mut self) -> Vec<String> {
        // SAFETY: signalling our own child, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "the server exited with {status}");
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request's outcome.
#[derive(Clone, Debug)]
struct Sample {
    /// When it was due, from the start of the load.
    due: Duration,
    /// From when it was due until it was answered or failed.
    latency: Duration,
    /// The server (instance) that answered, or why there was no answer.
    outcome: Result<String, String>,
}

/// The load generator: RATE requests a second, each on a new connection, on a schedule (a
/// slow request does not delay the next ones: a pool of workers takes them).
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

fn request(front: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&front, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"hello\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let mut words = answer.split_whitespace();
    match (words.next(), words.next()) {
        (Some("ok"), Some(server)) => Ok(server.to_string()),
        _ => Err(format!("no answer ({answer:?})")),
    }
}

impl Load {
    fn start(front: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::unbounded::<Instant>();
        let started = Instant::now();
        let mut threads = Vec::new();
        for _ in 0..96 {
            let (rx, samples) = (rx.clone(), samples.clone());
            threads.push(std::thread::spawn(move || {
                while let Ok(due) = rx.recv() {
                    let wait = due.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait);
                    let outcome = request(front);
                    let sample = Sample {
                        due: due - started,
                        latency: due.elapsed(),
                        outcome,
                    };
                    samples.lock().unwrap().push(sample);
                }
            }));
        }
        let ticking = stop.clone();
        threads.push(std::thread::spawn(move || {
            let period = Duration::from_secs(1) / RATE;
            let mut due = started;
            while !ticking.load(Ordering::Acquire) {
                due += period;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if tx.send(due).is_err() {
                    break;
                }
            }
        }));
        Load {
            stop,
            samples,
            threads,
        }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.sort_by_key(|s| s.due);
        samples
    }
}

/// What one run measured.
#[derive(Debug)]
struct Report {
    name: &'static str,
    requests: usize,
    failed: usize,
    slow: usize,
    p50: Duration,
    p99: Duration,
    slowest: Duration,
    /// Requests each returning server answered in its first second of answering.
    first_second: Vec<usize>,
    /// Requests each restarted instance took in all.
    served_by_new: Vec<usize>,
    errors: Vec<String>,
}

impl Report {
    fn of(name: &'static str, samples: &[Sample]) -> Report {
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        let failed: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
        let mut errors: Vec<String> = failed
            .iter()
            .filter_map(|s| s.outcome.clone().err())
            .collect();
        errors.sort();
        errors.dedup();
        let mut first_second = Vec::new();
        let mut served_by_new = Vec::new();
        for i in 1..=3 {
            let instance = format!("s{i}#2");
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.outcome.as_deref() == Ok(instance.as_str()))
                .collect();
            served_by_new.push(mine.len());
            // By the time they were answered: requests held back by retries come in a burst.
            let first = mine
                .iter()
                .map(|s| s.due + s.latency)
                .min()
                .unwrap_or_default();
            first_second.push(
                mine.iter()
                    .filter(|s| s.due + s.latency < first + Duration::from_secs(1))
                    .count(),
            );
        }
        Report {
            name,
            requests: samples.len(),
            failed: failed.len(),
            slow: samples
                .iter()
                .filter(|s| s.outcome.is_ok() && s.latency > SERVICE + SLOW_MARGIN)
                .count(),
            p50: at(0.5),
            p99: at(0.99),
            slowest: *latencies.last().unwrap(),
            first_second,
            served_by_new,
            errors,
        }
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            self.name,
            self.requests,
            self.failed,
            self.slow,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
            self.slowest.as_secs_f64() * 1000.0,
            self.first_second
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// One rolling restart, with HAProxy running the ```haproxy BLOCK of docs/LIFECYCLE.md.
fn rolling_restart(name: &'static str, block: &str) -> Report {
    let exe = build("tests/c/rolling_server.c", Link::Dynamic);
    let ports = ports();
    let [service, _, agent_tcp] = ports;
    let front: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let dir = scratch_dir(&format!("rolling-{block}"));
    let mut replacements = vec![
        (
            "/run/haproxy/admin.sock",
            dir.join("admin.sock").display().to_string(),
        ),
        ("10.0.0.100:7000", front.to_string()),
    ];
    for (doc, ip) in DOC_SERVERS.iter().zip(SERVERS) {
        replacements.push((doc, format!("{ip}:{service}")));
    }
    let snippet = doc_block("docs/LIFECYCLE.md", "haproxy", block);
    let with_agent = snippet.contains("agent-check");
    if with_agent {
        replacements.push(("agent-port 4951", format!("agent-port {agent_tcp}")));
    }
    let config = substitute(&snippet, &replacements);

    let mut servers: Vec<Option<Server>> = (0..3)
        .map(|i| {
            let name = format!("s{}#1", i + 1);
            Some(Server::start(&exe, &name, SERVERS[i], ports, with_agent))
        })
        .collect();
    for s in servers.iter().flatten() {
        s.line(": up");
    }
    let haproxy = Haproxy::start(&dir, &config);
    let full_weight = |haproxy: &Haproxy, i: usize| {
        let server = format!("s{}", i + 1);
        assert!(
            eventually(Duration::from_secs(30), || {
                let stat = haproxy.stat("app", &server);
                stat["status"] == "UP" && stat["weight"] == "100"
            }),
            "{server} never UP at full weight; log:\n{}",
            haproxy.log()
        );
    };
    for i in 0..3 {
        full_weight(&haproxy, i);
    }

    let load = Load::start(front);
    std::thread::sleep(SETTLE);
    let mut drained = Vec::new();
    for i in 0..3 {
        let old = servers[i].take().unwrap();
        drained.push(old.terminate().join(" / "));
        std::thread::sleep(RESTART_GAP);
        let name = format!("s{}#2", i + 1);
        let new = Server::start(&exe, &name, SERVERS[i], ports, with_agent);
        new.line(": up");
        servers[i] = Some(new);
        full_weight(&haproxy, i);
        std::thread::sleep(SETTLE);
    }
    let samples = load.finish();
    let report = Report::of(name, &samples);
    println!("{name}: {report:?}");
    for d in drained {
        println!("  {d}");
    }
    // The run happened: the load ran, and every new instance took requests.
    let expected = samples.last().map_or(0, |s| s.due.as_secs()) as usize * RATE as usize;
    assert!(
        report.requests >= expected * 9 / 10,
        "{name}: {} requests, expected about {expected}",
        report.requests
    );
    assert!(
        report.served_by_new.iter().all(|n| *n > 0),
        "{name}: a restarted server took no request: {report:?}"
    );
    report
}

#[test]
fn rolling_restart_behind_haproxy_loses_nothing_with_lbagent() {
    let reports = [
        rolling_restart("lbagent (drain, wait, slow start)", "rolling-lbagent"),
        rolling_restart("plain TCP check, defaults", "rolling-plain"),
        rolling_restart("plain TCP check, option redispatch", "rolling-redispatch"),
    ];
    println!(
        "\n| HAProxy 3 servers, {RATE} req/s | requests | failed | slower than {} ms | p50 | p99 | slowest | first second of each returning server |",
        (SERVICE + SLOW_MARGIN).as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!("{}", r.row());
    }
    for r in &reports[1..] {
        if !r.errors.is_empty() {
            println!("{}: {}", r.name, r.errors.join("; "));
        }
    }
    let lbagent = &reports[0];
    assert_eq!(
        (lbagent.failed, lbagent.slow),
        (0, 0),
        "with lbagent no request may fail or wait: {lbagent:?}"
    );
    // Slow start: a returning server takes less than its share (RATE / 3 a second) at first.
    assert!(
        lbagent.first_second.iter().all(|n| *n < RATE as usize / 3),
        "slow start: {lbagent:?}"
    );
}

/// The keepalived configurations of the IPVS rolling restart (run by tests/lvs/rolling.sh in
/// the VM) are valid: `keepalived -t` accepts them (with the track files' directory here), and
/// lbagent-director accepts the targets file.
#[test]
fn ipvs_rolling_restart_configurations_are_valid() {
    let dir = scratch_dir("rolling-keepalived");
    for name in ["rolling-lbagent", "rolling-plain"] {
        let conf = doc_block("docs/LIFECYCLE.md", "keepalived", name)
            .replace("/run/lbagent/", &format!("{}/", dir.display()));
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).unwrap();
        let out = Command::new("keepalived")
            .args(["-t", "-f"])
            .arg(&path)
            .output()
            .expect("keepalived (make test installs it)");
        assert!(
            out.status.success(),
            "keepalived -t rejects {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let targets = dir.join("targets.conf");
    std::fs::write(
        &targets,
        doc_block("docs/LIFECYCLE.md", "targets", "rolling-lvs"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .args(["--check", "--targets"])
        .arg(&targets)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let agent = doc_block("docs/LIFECYCLE.md", "sh", "rolling-agent-lvs");
    let config = agent
        .trim()
        .trim_start_matches("LBAGENT_CONFIG=\"")
        .trim_end_matches('"');
    let config = lbagent::Config::parse(config).unwrap();
    assert_eq!((config.drain_confirm, config.slow_start_ms), (3, 5000));
}

/// docs/LIFECYCLE.md's shutdown sequence compiles as C11 with warnings as errors.
#[test]
fn the_documented_shutdown_compiles() {
    let dir = scratch_dir("lifecycle-c");
    let source = dir.join("drain.c");
    std::fs::write(
        &source,
        format!(
            "#include \"lbagent.h\"\nstatic void close_listening_socket(void) {{}}\n\
             void shut_down(lbagent *agent);\nvoid shut_down(lbagent *agent) {{\n{}}}\n",
            doc_block("docs/LIFECYCLE.md", "c", "drain")
        ),
    )
    .unwrap();
    let out = Command::new("gcc")
        .args(common::c_build::C_FLAGS)
        .arg("-fsyntax-only")
        .arg("-I")
        .arg(repo().join("include"))
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every block of docs/LIFECYCLE.md is one a test reads (or plain prose output).
#[test]
fn every_block_of_the_lifecycle_doc_is_tested() {
    let doc = std::fs::read_to_string(repo().join("docs/LIFECYCLE.md")).unwrap();
    let openings: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("```"))
        .step_by(2)
        .collect();
    assert_eq!(
        openings,
        [
            "```c drain",
            "```",
            "```sh rolling-agent",
            "```haproxy rolling-lbagent",
            "```haproxy rolling-plain",
            "```haproxy rolling-redispatch",
            "```sh rolling-agent-lvs",
            "```keepalived rolling-lbagent",
            "```targets rolling-lvs",
            "```keepalived rolling-plain",
        ],
        "a block was added to docs/LIFECYCLE.md: give it a tag and a test"
    );
}
