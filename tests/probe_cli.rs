//! lbagent-probe, the first version: exit codes, output and failures, against real agents.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Output};

use common::*;
use lbagent::State;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
        .args(args)
        .output()
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

#[test]
fn exit_code_follows_the_state() {
    let (agent, addr) = agent("services=game");
    let target = addr.to_string();
    let expected = [
        (State::Starting, 1),
        (State::Up, 0),
        (State::Drain, 1),
        (State::Maint, 1),
        (State::Down, 1),
        (State::Stopping, 1),
    ];
    for (state, exit) in expected {
        agent.set_state("", state, Some("why")).unwrap();
        let out = probe(&[&target]);
        assert_eq!(code(&out), exit, "{state}: {out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(line.contains(&format!(": {state} (set by host)")), "{line}");
        assert!(line.contains("\"why\""), "{line}");
    }
    agent.set_state("", State::Up, None).unwrap();
    agent.set_weight("", 0).unwrap();
    assert_eq!(
        code(&probe(&[&target])),
        1,
        "up at weight 0 takes no new connections"
    );
    agent.set_weight("", 100).unwrap();
    assert_eq!(code(&probe(&[&target, "--service", "game"])), 0);
    let out = probe(&[&target, "--service", "nope"]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown (unknown service)"));
}

#[test]
fn json_output() {
    let (agent, addr) = agent("initial_state=up");
    agent.set_load("", 2, 8).unwrap();
    let out = probe(&[&addr.to_string(), "--json"]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "up");
    assert_eq!(v["serving"], true);
    assert_eq!(v["in_use"], 2);
    assert_eq!(v["capacity"], 8);
    assert_eq!(v["instance_id"], format!("{:016x}", agent.instance_id()));
}

#[test]
fn failures_exit_2_with_one_clear_line() {
    let free = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = probe(&[&free.to_string(), "--timeout", "500"]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.lines().count() == 1, "{err}");

    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = probe(&[
        &silent.local_addr().unwrap().to_string(),
        "--timeout",
        "200",
        "--json",
    ]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout: no answer within 200 ms"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], "timeout");
}

#[test]
fn usage_errors_exit_64() {
    assert_eq!(code(&probe(&[])), 64);
    assert_eq!(code(&probe(&["127.0.0.1", "--bogus"])), 64);
    assert_eq!(code(&probe(&["127.0.0.1", "--timeout", "0"])), 64);
    assert_eq!(code(&probe(&["127.0.0.1:99999"])), 64);
    assert_eq!(
        code(&probe(&["127.0.0.1", "--service", &"x".repeat(65)])),
        64
    );
    let help = probe(&["--help"]);
    assert_eq!(code(&help), 0);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit status"));
}
