//! `systemd=on` against a real notification socket: the test binds a Unix datagram socket, as
//! systemd does, and runs a host process (this same binary, `--host`) with `NOTIFY_SOCKET`
//! and `WATCHDOG_USEC` pointing at it. Each process gets its own environment, as under
//! systemd, so this binary has no test harness and runs its scenarios in order.
//!
//! What must hold: READY=1 only at the first UP (once); STATUS= on every change; WATCHDOG=1 at
//! half the period only while heartbeats are fresh (none once the agent's watchdog expired,
//! back with the heartbeats); never STOPPING=1 when the host drains, and STOPPING=1 at stop.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::notify::NotifySocket;
use lbagent::{Agent, State};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--host") {
        host(&args[2]);
        return;
    }
    let scenarios: [(&str, fn()); 4] = [
        (
            "notify_protocol_through_a_host_life",
            notify_protocol_through_a_host_life,
        ),
        (
            "ready_comes_when_the_host_is_up_even_under_an_operator_drain",
            ready_comes_when_the_host_is_up_even_under_an_operator_drain,
        ),
        (
            "a_bad_notify_socket_is_a_config_error",
            a_bad_notify_socket_is_a_config_error,
        ),
        (
            "without_notify_socket_nothing_is_sent",
            without_notify_socket_nothing_is_sent,
        ),
    ];
    for (name, scenario) in scenarios {
        println!("test {name} ...");
        scenario();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", scenarios.len());
}

/// The host: an agent with `config`, driven by lines on stdin; prints "started" when ready.
fn host(config: &str) {
    let agent = match Agent::start(config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let beating = Arc::new(AtomicBool::new(false));
    {
        let (agent, beating) = (agent.clone(), beating.clone());
        std::thread::spawn(move || {
            loop {
                if beating.load(Ordering::Relaxed) {
                    let _ = agent.heartbeat();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    println!("started");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        match line.as_str() {
            "up" => agent.set_state("", State::Up, Some("ready")).unwrap(),
            "drain" => agent.set_state("", State::Drain, Some("deploy")).unwrap(),
            "beat" => beating.store(true, Ordering::Relaxed),
            "hang" => beating.store(false, Ordering::Relaxed),
            "stop" => agent.stop(Some(Duration::from_secs(5))).unwrap(),
            _ => break,
        }
        println!("done {line}");
    }
}

struct Host {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Host {
    fn start(config: &str, env: &[(&str, String)]) -> Host {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("--host")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n");
        Host {
            child,
            stdin,
            stdout,
        }
    }

    fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line, format!("done {command}\n"));
    }

    fn end(mut self) {
        writeln!(self.stdin, "exit").unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

/// systemd's side, bound in a scratch directory of its own.
fn systemd(name: &str) -> NotifySocket {
    NotifySocket::bind(&common::scratch_dir(&format!("systemd-{name}")))
}

fn notify_protocol_through_a_host_life() {
    let mut systemd = systemd("life");
    let env = [
        ("NOTIFY_SOCKET", systemd.path.display().to_string()),
        // WatchdogSec=0.4: WATCHDOG=1 every 0.2 s while fresh.
        ("WATCHDOG_USEC", "400000".to_string()),
    ];
    let mut host = Host::start(
        "listen=127.0.0.1:0 systemd=on watchdog_ms=1000 log=stderr",
        &env,
    );
    // Starting: a STATUS, no READY (the start is not over), no WATCHDOG (no heartbeat yet).
    systemd.until("the first STATUS", |m| !m.is_empty());
    assert!(
        systemd.messages[0]
            .1
            .starts_with("STATUS=starting (set by host)"),
        "{:?}",
        systemd.messages
    );
    systemd.listen_for(Duration::from_millis(500));
    assert_eq!(systemd.count("READY=1"), 0, "{:?}", systemd.messages);
    assert_eq!(systemd.count("WATCHDOG=1"), 0, "{:?}", systemd.messages);

    // UP, heart-beating: READY=1 with the status, then WATCHDOG=1 again and again.
    host.tell("beat");
    host.tell("up");
    systemd.until("READY=1", |m| m.iter().any(|(_, t)| t.contains("READY=1")));
    let ready = systemd
        .messages
        .iter()
        .find(|(_, t)| t.contains("READY=1"))
        .unwrap();
    assert_eq!(
        ready.1,
        "READY=1\nSTATUS=up (set by host), weight 100%: ready"
    );
    systemd.until("three WATCHDOG=1", |m| {
        m.iter().filter(|(_, t)| t == "WATCHDOG=1").count() >= 3
    });

    // Draining is a change of status, never STOPPING=1.
    host.tell("drain");
    systemd.until("STATUS=drain", |m| {
        m.iter()
            .any(|(_, t)| t.starts_with("STATUS=drain (set by host)"))
    });
    systemd.listen_for(Duration::from_millis(300));
    assert_eq!(systemd.count("STOPPING"), 0, "{:?}", systemd.messages);

    // The host hangs: once the agent's watchdog expires (DOWN), no more WATCHDOG=1.
    host.tell("up");
    host.tell("hang");
    systemd.until("STATUS=down", |m| {
        m.iter()
            .any(|(_, t)| t.starts_with("STATUS=down (watchdog expired)"))
    });
    let expired_at = systemd.messages.len();
    systemd.listen_for(Duration::from_millis(1000));
    assert_eq!(
        systemd.since(expired_at, "WATCHDOG=1"),
        0,
        "{:?}",
        &systemd.messages[expired_at..]
    );
    // It recovers with the heartbeats.
    host.tell("beat");
    systemd.until("WATCHDOG=1 again", |m| {
        m[expired_at..].iter().any(|(_, t)| t == "WATCHDOG=1")
    });
    assert!(
        systemd.messages[expired_at..]
            .iter()
            .any(|(_, t)| t.starts_with("STATUS=up (set by host)")),
        "{:?}",
        &systemd.messages[expired_at..]
    );
    assert_eq!(systemd.count("READY=1"), 1, "READY once");

    // lbagent_stop: STOPPING=1, and nothing after it.
    host.tell("stop");
    systemd.until("STOPPING=1", |m| {
        m.iter().any(|(_, t)| t.contains("STOPPING=1"))
    });
    let stopping = systemd.messages.last().unwrap().1.clone();
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=stopping (agent stopping)"),
        "{stopping}"
    );
    let at = systemd.messages.len();
    systemd.listen_for(Duration::from_millis(500));
    assert_eq!(systemd.messages.len(), at, "{:?}", &systemd.messages[at..]);
    host.end();
}

fn ready_comes_when_the_host_is_up_even_under_an_operator_drain() {
    // An operator drained the server (kept in state_file= across a restart, or set while it
    // starts): directors are told DRAIN, but the start is over when the host says UP, and
    // systemd must hear READY=1 then, or it kills the server at TimeoutStartSec=.
    let mut systemd = systemd("override");
    let control = systemd.path.with_file_name("control.sock");
    let env = [("NOTIFY_SOCKET", systemd.path.display().to_string())];
    let mut host = Host::start(
        &format!(
            "listen=127.0.0.1:0 systemd=on control={}",
            control.display()
        ),
        &env,
    );
    systemd.until("the first STATUS", |m| !m.is_empty());
    let out = Command::new(env!("CARGO_BIN_EXE_lbagent-ctl"))
        .arg(&control)
        .args(["drain", "--reason", "kernel update"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    systemd.listen_for(Duration::from_millis(300));
    assert_eq!(systemd.count("READY=1"), 0, "{:?}", systemd.messages);
    host.tell("beat");
    host.tell("up");
    systemd.until("READY=1", |m| m.iter().any(|(_, t)| t.contains("READY=1")));
    let ready = systemd
        .messages
        .iter()
        .find(|(_, t)| t.contains("READY=1"))
        .unwrap();
    assert!(
        ready
            .1
            .starts_with("READY=1\nSTATUS=drain (set by operator)"),
        "{:?}",
        systemd.messages
    );
    host.end();
}

fn a_bad_notify_socket_is_a_config_error() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--host", "listen=127.0.0.1:0 systemd=on"])
        .env("NOTIFY_SOCKET", "relative/notify")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"systemd\"") && err.contains("NOTIFY_SOCKET=\"relative/notify\""),
        "{err}"
    );
}

fn without_notify_socket_nothing_is_sent() {
    // systemd=on outside systemd: the agent runs and says so in its log; no socket is needed.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--host",
            "listen=127.0.0.1:0 systemd=on log=stderr initial_state=up",
        ])
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NOTIFY_SOCKET is not set"), "{err}");
}
