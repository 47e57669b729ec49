//! The C side: examples and contract tests compiled with warnings as errors (C11 and C++11,
//! pedantic), linked dynamically and statically, run plainly and under valgrind, and driven
//! with real UDP probes and TCP traffic.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::c_build::*;
use common::*;
use lbagent::client::{self, ProbeOptions};
use lbagent::{Reason, State};

/// Builds every program once for the whole test binary.
fn programs() -> &'static [PathBuf; 6] {
    static BUILT: OnceLock<[PathBuf; 6]> = OnceLock::new();
    BUILT.get_or_init(|| {
        [
            build("tests/c/api_contract.c", Link::Dynamic),
            build("tests/c/api_contract.c", Link::Static),
            build("c-examples/demo_server.c", Link::Dynamic),
            build("tests/c/header.cpp", Link::Dynamic),
            build("tests/c/prober.c", Link::Dynamic),
            build("tests/c/prober.c", Link::Static),
        ]
    })
}

#[test]
fn api_contract_from_c_dynamic_static_and_under_valgrind() {
    let [dynamic, static_exe, _, _, _, _] = programs();
    for exe in [dynamic, static_exe] {
        let out = run_ok(&mut Command::new(exe));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(", 0 failed"), "{text}");
    }
    let out = run_ok(&mut valgrind(dynamic));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 failed"));
}

#[test]
fn prober_from_c_dynamic_static_and_under_valgrind() {
    let [_, _, _, _, dynamic, static_exe] = programs();
    for exe in [dynamic, static_exe] {
        let out = run_ok(&mut Command::new(exe));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(", 0 failed"), "{text}");
    }
    let out = run_ok(&mut valgrind(dynamic));
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 failed"));
}

#[test]
fn header_compiles_and_works_as_cpp() {
    let exe = &programs()[3];
    let out = run_ok(&mut Command::new(exe));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("header.cpp: ok"));
}

/// A running demo_server with its two ports.
struct Demo {
    child: Child,
    agent: SocketAddr,
    tcp: TcpStream,
}

impl Demo {
    fn start(under_valgrind: bool, watchdog_ms: u32) -> Demo {
        let exe = &programs()[2];
        let mut cmd = if under_valgrind {
            valgrind(exe)
        } else {
            Command::new(exe)
        };
        cmd.arg("0")
            .env(
                "LBAGENT_CONFIG",
                format!("listen=127.0.0.1:0 watchdog_ms={watchdog_ms}"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut port_after = |prefix: &str| -> u16 {
            let line = lines.next().unwrap().unwrap();
            let rest = line
                .split(prefix)
                .nth(1)
                .unwrap_or_else(|| panic!("{line}"));
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let agent_port = port_after("UDP port ");
        let tcp_port = port_after("127.0.0.1:");
        // Keep reading stdout in the background so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let tcp = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Demo {
            child,
            agent: SocketAddr::from(([127, 0, 0, 1], agent_port)),
            tcp,
        }
    }

    fn request(&mut self, line: &str) -> String {
        self.tcp.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while self.tcp.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap()
    }

    fn status(&self) -> client::Answer {
        let options = ProbeOptions {
            timeout: Duration::from_secs(3),
            ..ProbeOptions::default()
        };
        client::probe(self.agent, &options).expect("an answer from the demo's agent")
    }

    fn wait_for(&self, state: State) -> client::Answer {
        let mut last = None;
        let ok = eventually(Duration::from_secs(20), || {
            let a = self.status();
            let hit = a.state == state;
            last = Some(a);
            hit
        });
        let last = last.unwrap();
        assert!(ok, "waited for {state}, last answer {last:?}");
        last
    }
}

fn demo_walkthrough(under_valgrind: bool) {
    let mut demo = Demo::start(under_valgrind, 700);
    let first = demo.status();
    assert!(
        matches!(first.state, State::Starting | State::Up),
        "{first:?}"
    );
    let up = demo.wait_for(State::Up);
    assert_eq!(up.message, "ready");
    assert_eq!(demo.request("INCR"), "1");
    assert_eq!(demo.request("PING"), "PONG");
    assert_eq!(demo.status().in_use, 1);
    assert_eq!(demo.request("ADMIN drain deploy"), "OK");
    assert_eq!(demo.status().state, State::Drain);
    assert_eq!(demo.request("ADMIN up"), "OK");
    assert_eq!(demo.request("ADMIN weight 50"), "OK");
    assert_eq!(demo.status().weight_pct, 50);
    // A hang: the event loop stops heart-beating and the watchdog reports it.
    assert_eq!(demo.request("ADMIN hang 3000"), "hanging");
    let hung = demo.wait_for(State::Down);
    assert_eq!(hung.reason, Some(Reason::WatchdogExpired));
    // Recovery: the loop runs again and the host's state is back.
    let mut rest = [0u8; 10];
    demo.tcp.read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b"recovered\n");
    let back = demo.wait_for(State::Up);
    assert_eq!(back.reason, Some(Reason::Host));
    // SIGTERM drains (from the signal handler); the server keeps serving until the drain is
    // complete: its one director (this test) told twice, its one client gone. Then it stops.
    let pid = demo.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let draining = demo.wait_for(State::Drain);
    assert!(!draining.is_serving());
    let progress = draining.drain.expect("drain progress");
    assert!(progress.draining && !progress.complete, "{progress:?}");
    assert_eq!(demo.request("PING"), "PONG", "still serving while draining");
    demo.tcp.shutdown(std::net::Shutdown::Both).unwrap();
    // The answer says complete, or the server saw it first (between two probes) and left.
    assert!(eventually(Duration::from_secs(60), || {
        client::probe(demo.agent, &ProbeOptions::default())
            .is_ok_and(|a| a.drain.is_some_and(|d| d.complete))
            || matches!(demo.child.try_wait(), Ok(Some(_)))
    }));
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "demo_server exited with {status}");
}

#[test]
fn demo_server_walkthrough() {
    demo_walkthrough(false);
}

#[test]
fn demo_server_walkthrough_under_valgrind() {
    demo_walkthrough(true);
}

#[test]
fn log_to_stderr_reports_lifecycle_and_drops_at_a_bounded_rate() {
    let exe = &programs()[2];
    let mut child = Command::new(exe)
        .arg("0")
        .env(
            "LBAGENT_CONFIG",
            "listen=127.0.0.1:0 log=stderr log_drops_ms=300",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let port: u16 = stdout
        .lines()
        .next()
        .unwrap()
        .unwrap()
        .split("UDP port ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let agent = SocketAddr::from(([127, 0, 0, 1], port));
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Malformed datagrams, in two waves more than log_drops_ms apart.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for wave in 0..2 {
        for _ in 0..25 {
            s.send_to(b"LBAP-garbage", agent).unwrap();
        }
        if wave == 0 {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    let mut seen = Vec::new();
    let found_drops = eventually(Duration::from_secs(5), || {
        seen.extend(lines_rx.try_iter());
        seen.iter().any(|l| l.contains("dropped_malformed="))
    });
    assert!(found_drops, "no drop summary in {seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("lbagent[") && l.contains("info: started")),
        "{seen:?}"
    );
    // Fifty drops, one or two summary lines: the log is bounded.
    let summaries = seen
        .iter()
        .filter(|l| l.contains("dropped_malformed="))
        .count();
    assert!(summaries <= 2, "{seen:?}");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(100));
    seen.extend(lines_rx.try_iter());
    assert!(seen.iter().any(|l| l.contains("info: stopped")), "{seen:?}");
}

/// tests/c/no_syscalls.c: the host calls made from a thread in seccomp strict mode, where
/// any system call but read, write and exit kills that thread.
#[test]
fn host_calls_make_no_system_call() {
    for link in [Link::Dynamic, Link::Static] {
        let exe = build("tests/c/no_syscalls.c", link);
        let mut child = Command::new(&exe)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a program that hangs is a failure, not a stuck test run.
        let finished = eventually(Duration::from_secs(60), || {
            child.try_wait().unwrap().is_some()
        });
        if !finished {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            finished && out.status.success(),
            "{}: {} (finished: {finished})\n{}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    }
}

/// c-examples/worker_pool.c: one watchdog slot per worker thread and a self-check with a
/// release function, driven through its stdin.
#[test]
fn worker_pool_threads_slots_and_checks() {
    worker_pool_walkthrough(false);
}

#[test]
fn worker_pool_under_valgrind() {
    worker_pool_walkthrough(true);
}

fn worker_pool_walkthrough(under_valgrind: bool) {
    let exe = build("c-examples/worker_pool.c", Link::Dynamic);
    // valgrind runs one thread at a time, much slower: longer limits, same assertions.
    let (mut cmd, worker_timeout_ms, limit) = if under_valgrind {
        (valgrind(&exe), 2000, Duration::from_secs(30))
    } else {
        (Command::new(&exe), 400, Duration::from_secs(5))
    };
    let mut child = cmd
        .env(
            "LBAGENT_CONFIG",
            format!(
                "listen=127.0.0.1:0 workers=4 worker_timeout_ms={worker_timeout_ms} \
                 rate_per_source=0"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .split("UDP port ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let agent = SocketAddr::from(([127, 0, 0, 1], port));
    let options = ProbeOptions::default();
    let status = || client::probe(agent, &options).expect("an answer");
    let mut say = |command: &str| {
        stdin.write_all(format!("{command}\n").as_bytes()).unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "ok");
    };
    // The first run of the check must pass before the server serves.
    assert!(eventually(limit, || status().is_serving()));
    say("hang 2");
    assert!(eventually(limit, || status().state == State::Down));
    let hung = status();
    assert_eq!(hung.reason, Some(Reason::WorkerStalled));
    assert!(hung.message.starts_with("worker 2 "), "{}", hung.message);
    say("release");
    assert!(eventually(limit, || status().is_serving()));
    say("backend down");
    assert!(eventually(limit, || status().state == State::Down));
    let failing = status();
    assert_eq!(failing.reason, Some(Reason::CheckFailed));
    assert_eq!(failing.message, "backend: backend unavailable");
    say("backend up");
    assert!(eventually(limit, || status().is_serving()));
    stdin.write_all(b"quit\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "worker_pool exited with {status} (userdata not released?)"
    );
}
