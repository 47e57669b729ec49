//! Slow start in every protocol, over real sockets: after a return to service (and at start)
//! the weight every director sees ramps from `slow_start_min_pct` to the host's weight: the
//! protocol v1 weight, the text line's `N%`, HAProxy's agent-check line, the HTTP JSON body,
//! `lbagent-probe --keepalived-dynamic`'s exit code and lbagent-director's weight file. A ramp
//! restarts when the server leaves UP; the host's weight applies at once, scaled.
//!
//! No timing is asserted: a long ramp (10 minutes) shows the low start and its scaling, a
//! short one (1 s) shows the end, reached `eventually`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use lbagent::client::{self, ProbeOptions};
use lbagent::{Agent, State};

const CONFIG: &str = "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 rate_per_source=0";

/// The weight in percent as each protocol carries it, for the whole server.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    v1: u8,
    text: u32,
    agent_check: u32,
    http: u32,
    dynamic_exit: i32,
}

/// The `N%` word of an agent grammar line.
fn percent(line: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix('%'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no N% in {line:?}"))
}

fn seen(agent: &Agent) -> Seen {
    let udp = agent.local_addrs()[0];
    let v1 = client::probe(udp, &ProbeOptions::default()).unwrap();
    let text = ask_text(udp, std::str::from_utf8(KEEPALIVED_PAYLOAD).unwrap());
    let line = tcp_exchange(agent.tcp_agent_addrs()[0], b"");
    let json = http_exchange(
        agent.http_addrs()[0],
        "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
    );
    let body: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let dynamic = Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
        .args(["--keepalived-dynamic", &udp.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    Seen {
        v1: v1.weight_pct,
        text: percent(&text),
        agent_check: percent(&line),
        http: body["weight_pct"].as_u64().unwrap() as u32,
        dynamic_exit: dynamic.code().unwrap(),
    }
}

/// What every protocol shows at `pct` percent (keepalived-dynamic: exit 2 + weight, the
/// weight scaled to --max-weight 100).
fn all_at(pct: u8) -> Seen {
    Seen {
        v1: pct,
        text: u32::from(pct),
        agent_check: u32::from(pct),
        http: u32::from(pct),
        dynamic_exit: 2 + i32::from(pct),
    }
}

/// lbagent-director polling `agent` every 200 ms into `track`, with `weight=100`.
fn director(agent: &Agent, name: &str) -> (Child, std::path::PathBuf) {
    let dir = scratch_dir(name);
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let targets = dir.join("targets.conf");
    std::fs::write(
        &targets,
        format!("rs {} weight=100\n", agent.local_addrs()[0]),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .arg("--targets")
        .arg(&targets)
        .arg("--track-dir")
        .arg(&track)
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
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, track)
}

fn file(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn slow_start_reaches_every_director() {
    // A 10-minute ramp from 10 %: within this test it stays near its start.
    let agent = Agent::start(&format!(
        "{CONFIG} slow_start_ms=600000 slow_start_min_pct=10"
    ))
    .unwrap();
    let (mut poller, track) = director(&agent, "slow-start-director");
    // STARTING: not serving, no ramp yet; the host's weight is shown as it is.
    assert_eq!(seen(&agent).v1, 100);
    agent.set_state("", State::Up, Some("ready")).unwrap();
    let first = seen(&agent);
    assert_eq!(first, all_at(10), "the ramp starts at 10 % everywhere");
    // lbagent-director's files: up, and the weight file at 10 % of 100 (-90 added).
    assert!(eventually(Duration::from_secs(10), || {
        file(track.join("rs")) == "0\n" && file(track.join("rs.weight")) == "-90\n"
    }));
    // The host's weight applies at once, scaled by the ramp.
    agent.set_weight("", 50).unwrap();
    assert_eq!(seen(&agent), all_at(5));
    assert!(eventually(Duration::from_secs(10), || file(
        track.join("rs.weight")
    ) == "-95\n"));
    agent.set_weight("", 100).unwrap();
    let status = agent.status("");
    assert_eq!(status.weight_pct, 10);
    let _ = poller.kill();
    let _ = poller.wait();
}

#[test]
fn a_ramp_ends_at_the_host_weight_and_restarts_when_the_server_leaves_up() {
    let agent = Agent::start(&format!(
        "{CONFIG} initial_state=up slow_start_ms=1000 slow_start_min_pct=20"
    ))
    .unwrap();
    let (mut poller, track) = director(&agent, "slow-start-end");
    // At start: a ramp too (the first reading starts it), which ends at 100 %.
    let start = agent.status("");
    assert!(start.weight_pct < 100, "{start:?}");
    let g0 = start.generation;
    assert!(eventually(Duration::from_secs(10), || seen(&agent) == all_at(100)));
    // Each step of the ramp changed what is answered: the generation moved.
    assert!(agent.status("").generation > g0);
    assert!(eventually(Duration::from_secs(10), || file(
        track.join("rs.weight")
    ) == "0\n"));
    // Drained and back: a new ramp from 20 %.
    agent.set_state("", State::Drain, None).unwrap();
    let drained = agent.status("");
    assert_eq!((drained.state, drained.weight_pct), (State::Drain, 100));
    agent.set_state("", State::Up, None).unwrap();
    let back = seen(&agent);
    assert!(back.v1 < 100 && back.v1 >= 20, "{back:?}");
    assert!(eventually(Duration::from_secs(10), || seen(&agent) == all_at(100)));
    let _ = poller.kill();
    let _ = poller.wait();
}

#[test]
fn a_service_ramps_on_its_own() {
    let agent = Agent::start(&format!(
        "{CONFIG} initial_state=up services=game slow_start_ms=600000"
    ))
    .unwrap();
    let server = agent.status("");
    assert_eq!(server.weight_pct, 10);
    agent.set_state("game", State::Maint, None).unwrap();
    assert_eq!(
        agent.status("game").weight_pct,
        100,
        "not serving: unshaped"
    );
    agent.set_state("game", State::Up, None).unwrap();
    assert_eq!(agent.status("game").weight_pct, 10);
    // The server's own ramp did not restart.
    assert_eq!(agent.status("").weight_pct, 10);
}
