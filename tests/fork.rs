//! fork(): a prefork master whose workers report through the shared board and heart-beat
//! their own watchdog slots (hangs and crashes noticed), and a daemonizing child that takes
//! the agent over while its parent frees its handle and exits. Real fork(), real C programs.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::c_build::{Link, build};
use common::eventually;
use lbagent::client::{self, ProbeOptions};
use lbagent::{Reason, State};

fn probe(addr: SocketAddr, service: &str) -> client::Answer {
    let options = ProbeOptions {
        service: service.into(),
        timeout: Duration::from_millis(1000),
        ..ProbeOptions::default()
    };
    client::probe(addr, &options).expect("an answer")
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signalling processes this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Lines of a child's stdout, read on a thread.
fn lines(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn next_line(rx: &Receiver<String>, starts: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a line in time");
        if line.starts_with(starts) {
            return line;
        }
    }
}

fn field<T: std::str::FromStr>(line: &str, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == name)
        .unwrap_or_else(|| panic!("{name} in {line}"));
    words[i + 1].parse().unwrap()
}

#[test]
fn prefork_workers_report_hang_and_crash() {
    let exe = build("tests/c/prefork.c", Link::Dynamic);
    let mut master = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    let out = lines(master.stdout.take().unwrap());
    let port: u16 = field(&next_line(&out, "master"), "port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let workers: Vec<i32> = (0..3)
        .map(|_| field(&next_line(&out, "worker"), "worker"))
        .collect();
    assert!(eventually(Duration::from_secs(10), || probe(addr, "").is_serving()));

    // A worker changes the state of a service: the master answers it.
    signal(workers[0], libc::SIGUSR1);
    assert!(eventually(Duration::from_secs(10), || probe(addr, "jobs")
        .state
        == State::Drain));
    assert_eq!(
        probe(addr, "jobs").message,
        format!("drained by worker {}", workers[0])
    );
    assert!(probe(addr, "").is_serving(), "the whole server is still up");

    // A hung worker (stopped) is noticed; when it runs again, so is the recovery.
    signal(workers[1], libc::SIGSTOP);
    assert!(eventually(Duration::from_secs(10), || probe(addr, "")
        .state
        == State::Down));
    let hung = probe(addr, "");
    assert_eq!(hung.reason, Some(Reason::WorkerStalled));
    assert!(
        hung.message.contains(&format!("pid {}", workers[1])),
        "{}",
        hung.message
    );
    signal(workers[1], libc::SIGCONT);
    assert!(eventually(Duration::from_secs(10), || probe(addr, "").is_serving()));

    // A crashed worker: stalled until the master reaps it, releases its slot and replaces it.
    signal(workers[2], libc::SIGKILL);
    let reaped = next_line(&out, "reaped");
    assert_eq!(field::<i32>(&reaped, "reaped"), workers[2]);
    assert_eq!(field::<u32>(&reaped, "released"), 1);
    let replacement: i32 = field(&next_line(&out, "worker"), "worker");
    assert_ne!(replacement, workers[2]);
    assert!(eventually(Duration::from_secs(10), || probe(addr, "").is_serving()));

    signal(master.id() as i32, libc::SIGTERM);
    assert!(master.wait().unwrap().success());
    assert_eq!(next_line(&out, "master done"), "master done");
}

#[test]
fn daemonized_child_takes_the_agent_over() {
    let exe = build("tests/c/daemonize.c", Link::Dynamic);
    let mut parent = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
    let out = lines(parent.stdout.take().unwrap());
    let line = next_line(&out, "child");
    let (child, port): (i32, u16) = (field(&line, "child"), field(&line, "port"));
    // The parent freed its handle and left: that must not stop the child's agent.
    assert!(parent.wait().unwrap().success());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(eventually(Duration::from_secs(10), || {
        let a = probe(addr, "");
        a.is_serving() && a.message == "daemon"
    }));
    // The watchdog follows the child's heartbeats (2 s): still up a while later.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(probe(addr, "").is_serving());
    signal(child, libc::SIGTERM);
    // The child stops its agent and exits: nothing answers any more.
    let options = ProbeOptions {
        timeout: Duration::from_millis(300),
        ..ProbeOptions::default()
    };
    assert!(eventually(Duration::from_secs(10), || client::probe(
        addr, &options
    )
    .is_err()));
}
