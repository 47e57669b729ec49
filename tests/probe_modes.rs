//! lbagent-probe's modes against real agents and impostors on loopback: the exit-code matrix
//! of every mode against every state and every kind of failure, what each mode prints, and
//! the live view (`--watch`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use lbagent::State;
use lbagent::proto::wire;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
        .args(args)
        .output()
        .unwrap()
}

/// A UDP service on loopback answering every datagram with what `answer` returns (None: no
/// answer), until the test process ends.
fn impostor(answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(reply) = answer(&buf[..n]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

fn nonce_of(probe: &[u8]) -> u64 {
    u64::from_be_bytes(probe[8..16].try_into().unwrap())
}

/// An "agent" that answers every PROBE with an ERROR carrying `code`.
fn error_agent(code: u16) -> SocketAddr {
    impostor(move |probe| {
        let mut out = [0u8; wire::ERROR_LEN];
        wire::encode_error(nonce_of(probe), code, &mut out);
        Some(out.to_vec())
    })
}

/// The modes, each as the arguments that select it around a target.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Plain,
    Json,
    Ldirectord,
    Keepalived,
    Dynamic,
    Dynamic10,
    Nagios,
}

const MODES: [Mode; 7] = [
    Mode::Plain,
    Mode::Json,
    Mode::Ldirectord,
    Mode::Keepalived,
    Mode::Dynamic,
    Mode::Dynamic10,
    Mode::Nagios,
];

fn args(mode: Mode, target: SocketAddr, extra: &[&str]) -> Vec<String> {
    let t = target.to_string();
    let port = target.port().to_string();
    let mut a: Vec<String> = match mode {
        Mode::Plain => vec![t],
        Mode::Json => vec!["--json".into(), t],
        // As ldirectord runs it: VIP VPORT RIP RPORT, the agent's port from --agent-port.
        Mode::Ldirectord => vec![
            "--agent-port".into(),
            port,
            "10.0.0.100".into(),
            "7000".into(),
            target.ip().to_string(),
            "7000".into(),
        ],
        Mode::Keepalived => vec!["--keepalived".into(), t],
        Mode::Dynamic => vec!["--keepalived-dynamic".into(), t],
        Mode::Dynamic10 => vec![
            "--keepalived-dynamic".into(),
            "--max-weight".into(),
            "10".into(),
            t,
        ],
        Mode::Nagios => vec!["--nagios".into(), t],
    };
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(mode: Mode, target: SocketAddr, extra: &[&str]) -> Output {
    let a = args(mode, target, extra);
    probe(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Checks one row of the matrix: the expected exit code of each mode, in `MODES` order, and
/// that every output is well-formed for its mode.
fn row(what: &str, target: SocketAddr, extra: &[&str], expected: [i32; 7], failure: Option<&str>) {
    for (mode, want) in MODES.into_iter().zip(expected) {
        let out = run(mode, target, extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{what}, {mode:?}: stdout {stdout} stderr {stderr}"
        );
        match mode {
            Mode::Json => {
                let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(v["serving"], want == 0, "{what}: {v}");
            }
            Mode::Nagios => {
                let word = ["OK", "WARNING", "CRITICAL", "UNKNOWN"][want as usize];
                assert_eq!(
                    stdout.lines().count(),
                    1,
                    "{what}: one status line: {stdout}"
                );
                assert!(
                    stdout.starts_with(&format!("LBAGENT {word}: ")),
                    "{what}: {stdout}"
                );
                // Performance data whenever there is an answer.
                assert_eq!(stdout.contains(" | weight="), failure.is_none(), "{stdout}");
            }
            _ => {}
        }
        if let Some(said) = failure {
            // Every failure says what happened: one line, on stdout for Nagios, else stderr.
            let text = if matches!(mode, Mode::Nagios) {
                &stdout
            } else {
                &stderr
            };
            assert!(text.contains(said), "{what}, {mode:?}: {text}");
            if !matches!(mode, Mode::Nagios) {
                assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
            }
        }
    }
}

#[test]
fn exit_code_matrix_of_every_mode() {
    let (agent, addr) = agent("services=game");
    //                                     plain json ldir keep dyn dyn10 nagios
    let states: [(&str, State, u32, [i32; 7]); 7] = [
        ("starting", State::Starting, 100, [1, 1, 1, 1, 1, 1, 2]),
        ("up", State::Up, 100, [0, 0, 0, 0, 102, 12, 0]),
        ("up at 50%", State::Up, 50, [0, 0, 0, 0, 52, 7, 0]),
        ("up at weight 0", State::Up, 0, [1, 1, 1, 1, 2, 2, 1]),
        ("drain", State::Drain, 100, [1, 1, 1, 1, 2, 2, 1]),
        ("maint", State::Maint, 100, [1, 1, 1, 1, 1, 1, 1]),
        ("down", State::Down, 100, [1, 1, 1, 1, 1, 1, 2]),
    ];
    for (what, state, weight, expected) in states {
        agent.set_state("", state, Some("why")).unwrap();
        agent.set_weight("", weight).unwrap();
        row(what, addr, &[], expected, None);
        // A service follows the whole server until set.
        row(what, addr, &["--service", "game"], expected, None);
    }
    agent.set_state("", State::Up, None).unwrap();
    agent.set_weight("", 100).unwrap();
    row(
        "unknown service",
        addr,
        &["--service", "nope"],
        [1, 1, 1, 1, 1, 1, 3],
        None,
    );
    agent.set_state("", State::Stopping, None).unwrap();
    row("stopping", addr, &[], [1, 1, 1, 1, 1, 1, 2], None);
}

#[test]
fn exit_code_matrix_of_every_failure() {
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    row(
        "no agent",
        closed,
        &[],
        [2, 2, 2, 1, 1, 1, 2],
        Some("refused: ICMP port unreachable"),
    );
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    row(
        "silent port",
        silent.local_addr().unwrap(),
        &["--timeout", "300"],
        [2, 2, 2, 1, 1, 1, 2],
        Some("timeout: no answer within 300 ms"),
    );
    let text_service = impostor(|_| Some(b"hello\n".to_vec()));
    row(
        "a UDP service that is not an lbagent",
        text_service,
        &[],
        [2, 2, 2, 1, 1, 1, 3],
        Some("not an lbagent"),
    );
    let echo = impostor(|d| Some(d.to_vec()));
    row(
        "a UDP echo service",
        echo,
        &[],
        [2, 2, 2, 1, 1, 1, 3],
        Some("not an lbagent: the probe came back unchanged"),
    );
    row(
        "an agent of another protocol version",
        error_agent(wire::ERROR_UNSUPPORTED_VERSION),
        &[],
        [2, 2, 2, 1, 1, 1, 3],
        Some("version mismatch"),
    );
    row(
        "an agent that requires authentication",
        error_agent(wire::ERROR_AUTH_REQUIRED),
        &[],
        [2, 2, 2, 1, 1, 1, 3],
        Some("authentication required"),
    );
}

/// A key file (mode 600, as lbagent-probe requires) holding `line`.
fn key_file(name: &str, line: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch_dir(&format!("probe-modes-{name}")).join("keys");
    std::fs::write(&path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_string()
}

const SECRET: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";
const OTHER: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

/// A wrong key is a failure like the others in every mode: no valid answer (2), down for
/// keepalived (1, also under misc_dynamic, where 2 and up would be a weight), UNKNOWN for
/// Nagios (a configuration problem, not the server's), and one line naming it.
#[test]
fn exit_code_matrix_of_a_wrong_key() {
    let agent_keys = key_file("agent", &format!("7 {SECRET}"));
    let (_agent, addr) = agent(&format!("key_file={agent_keys} initial_state=up"));
    // The right key first, so that a failure below is the key's, not the agent's.
    row(
        "the right key",
        addr,
        &["--key-file", &agent_keys],
        [0, 0, 0, 0, 102, 12, 0],
        None,
    );
    // The agent drops a probe sealed with another secret, or with a key id it does not have,
    // and answers the unsealed diagnostic sent half-way: alive, so a wrong key, not a timeout.
    for (what, line) in [
        ("another secret", format!("7 {OTHER}")),
        ("a key id the agent lacks", format!("9 {SECRET}")),
    ] {
        let wrong = key_file("wrong", &line);
        row(
            what,
            addr,
            &["--key-file", &wrong, "--timeout", "1000"],
            [2, 2, 2, 1, 1, 1, 3],
            Some("wrong key: the agent answers unauthenticated probes but dropped the sealed one"),
        );
    }
    // An agent without keys answers unsealed: no answer a prober with a key can trust (told
    // at the deadline: an unsealed answer may be forged, and ends nothing early).
    let (_plain, plain_addr) = agent("initial_state=up");
    row(
        "an agent without keys",
        plain_addr,
        &["--key-file", &agent_keys, "--timeout", "400"],
        [2, 2, 2, 1, 1, 1, 3],
        Some(
            "wrong key: the agent answers without a seal (no key_file there?); saw 1 answer to the unsealed diagnostic probe, 1 unsealed answer",
        ),
    );
}

/// What --json, the ldirectord form and --watch say about a wrong key.
#[test]
fn wrong_key_in_json_ldirectord_and_watch() {
    let agent_keys = key_file("json-agent", &format!("7 {SECRET}"));
    let wrong = key_file("json-wrong", &format!("7 {OTHER}"));
    let (_agent, addr) = agent(&format!("key_file={agent_keys} initial_state=up"));
    let target = addr.to_string();
    let extra = ["--key-file", wrong.as_str(), "--timeout", "1000"];

    let out = run(Mode::Json, addr, &extra);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["target"].as_str(),
            v["serving"].as_bool(),
            v["error"].as_str()
        ),
        (Some(target.as_str()), Some(false), Some("wrong-key")),
        "{v}"
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("wrong key: ") && detail.contains("key id 7"),
        "{v}"
    );
    assert!(v.get("state").is_none(), "no answer fields: {v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("lbagent-probe: {target}: {detail}"),
        "the same failure on stderr, on one line"
    );

    // The ldirectord form names the agent it probed (RIP at --agent-port), not the VIP.
    let out = run(Mode::Ldirectord, addr, &extra);
    assert_eq!(
        out.status.code(),
        Some(2),
        "non-zero: down for ldirectord: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("lbagent-probe: {target}: wrong key: ")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // keepalived misc_dynamic: down (1), never a weight; the line says why.
    let out = run(Mode::Dynamic, addr, &extra);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong key: "),
        "{out:?}"
    );

    // --watch: the wrong-key target is shown as such, told apart from a good target (the
    // right key) and from a dead one (a timeout), in text and in JSON lines.
    let (_good, good_addr) = agent(&format!("key_file={wrong} initial_state=up"));
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_target = silent.local_addr().unwrap().to_string();
    let good = good_addr.to_string();
    let watched = [
        "--key-file",
        wrong.as_str(),
        "--interval",
        "100",
        "--timeout",
        "300",
        &target,
        &good,
        &silent_target,
    ];
    let watch = Watch::start(&watched);
    let line = watch.expect(&format!("{target}: no answer: wrong key: "));
    assert!(line.contains("key id 7"), "{line}");
    watch.expect(&format!("{good}: up (set by host)"));
    watch.expect(&format!("{silent_target}: no answer: timeout: "));
    drop(watch);
    let mut json = vec!["--json"];
    json.extend_from_slice(&watched);
    let watch = Watch::start(&json);
    let v: serde_json::Value =
        serde_json::from_str(&watch.expect(&format!("\"target\":\"{target}\""))).unwrap();
    assert_eq!(
        (
            v["to"].as_str(),
            v["error"].as_str(),
            v["serving"].as_bool()
        ),
        (Some("wrong-key"), Some("wrong-key"), Some(false)),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap().starts_with("wrong key: "),
        "{v}"
    );
}

#[test]
fn usage_errors_are_failures_in_every_mode() {
    // Under misc_dynamic any exit code from 2 up is a weight: a usage error must exit 1.
    let cases: [(&[&str], i32); 6] = [
        (&["--keepalived-dynamic", "--bogus", "127.0.0.1"], 1),
        (
            &["--keepalived-dynamic", "--max-weight", "254", "127.0.0.1"],
            1,
        ),
        (&["--keepalived-dynamic", "127.0.0.1", "x"], 1),
        (&["--keepalived", "127.0.0.1:99999"], 1),
        (&["--nagios"], 3),
        (&["--keepalived", "--nagios", "127.0.0.1"], 1),
    ];
    for (a, code) in cases {
        let out = probe(a);
        assert_eq!(out.status.code(), Some(code), "{a:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{a:?}: says why");
    }
    let out = probe(&["--nagios", "127.0.0.1", "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("LBAGENT UNKNOWN: usage: "));
    assert_eq!(
        probe(&["--max-weight", "5", "127.0.0.1"]).status.code(),
        Some(64)
    );
    assert_eq!(
        probe(&["--interval", "500", "127.0.0.1"]).status.code(),
        Some(64)
    );
    assert_eq!(probe(&["127.0.0.1", "b", "c"]).status.code(), Some(64));
}

#[test]
fn help_documents_every_mode_and_its_exit_codes() {
    let out = probe(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--keepalived ",
        "--keepalived-dynamic",
        "--max-weight",
        "VIP VPORT RIP RPORT",
        "--agent-port",
        "--nagios",
        "0 OK",
        "1 WARNING",
        "2 CRITICAL",
        "3 UNKNOWN",
        "--json",
        "--watch",
        "--interval",
        "64 usage error",
        "2+W serving",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn output_of_each_mode() {
    let (agent, addr) = agent("initial_state=up");
    agent.set_load("", 3, 64).unwrap();
    agent.set_weight("", 40).unwrap();
    let out = run(Mode::Nagios, addr, &[]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with(&format!("LBAGENT OK: {addr}: up (set by host), weight 40%, load 3/64 | weight=40%;;;0;100 load=3;;;0;64 rtt=")),
        "{line}"
    );
    let out = run(Mode::Dynamic, addr, &[]);
    assert_eq!(out.status.code(), Some(42));
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> keepalived weight 40"));
    let out = run(Mode::Ldirectord, addr, &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("{addr}: up")),
        "the ldirectord form names the agent it probed: {out:?}"
    );
    let out = run(Mode::Json, addr, &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["state"].as_str(),
            v["weight_pct"].as_u64(),
            v["capacity"].as_u64()
        ),
        (Some("up"), Some(40), Some(64))
    );
    // A message with '|' cannot break Nagios's performance data.
    agent.set_state("", State::Drain, Some("a|b")).unwrap();
    let line = String::from_utf8_lossy(&run(Mode::Nagios, addr, &[]).stdout).into_owned();
    assert_eq!(line.matches('|').count(), 1, "{line}");
}

/// A running `lbagent-probe --watch` whose lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
            .arg("--watch")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// The next line containing `needle` (other lines are skipped), within 10 s.
    fn expect(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_each_transition_with_time_since_the_previous() {
    let (a, addr_a) = agent("initial_state=up");
    let (b, addr_b) = agent("initial_state=up");
    let (ta, tb) = (addr_a.to_string(), addr_b.to_string());
    let watch = Watch::start(&["--interval", "100", "--timeout", "300", &ta, &tb]);
    let first = watch.expect(&format!("{ta}: up (set by host)"));
    // An RFC 3339 timestamp in UTC starts the line.
    assert!(
        first.as_bytes()[4] == b'-'
            && first.contains('T')
            && first.split(' ').next().unwrap().ends_with('Z'),
        "{first}"
    );
    watch.expect(&format!("{tb}: up (set by host)"));
    a.set_state("", State::Drain, Some("deploy")).unwrap();
    let line = watch.expect(&format!("{ta}: up -> drain (set by host)"));
    assert!(
        line.contains("\"deploy\"") && line.contains(" (after "),
        "{line}"
    );
    a.set_state("", State::Up, Some("back")).unwrap();
    watch.expect(&format!("{ta}: drain -> up"));
    drop(b); // the agent goes away: its port is closed
    watch.expect(&format!("{tb}: up -> no answer: refused"));
    // A new agent on the same port is a restart.
    let b2 = lbagent::Agent::start(&format!("listen={addr_b} initial_state=up")).unwrap();
    let line = watch.expect(&format!("{tb}: refused -> up"));
    drop(b2);
    assert!(line.contains("(after "), "{line}");
}

#[test]
fn watch_json_lines() {
    let (a, addr) = agent("initial_state=up");
    let t = addr.to_string();
    let watch = Watch::start(&["--json", "--interval", "100", &t]);
    let first: serde_json::Value = serde_json::from_str(&watch.expect("\"to\":\"up\"")).unwrap();
    assert_eq!(first["from"], serde_json::Value::Null);
    a.set_weight("", 0).unwrap();
    let change: serde_json::Value =
        serde_json::from_str(&watch.expect("\"weight_pct\":0")).unwrap();
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("up"), Some("up"))
    );
    assert!(change["after_ms"].as_u64().is_some());
    assert_eq!(change["target"], t.as_str());
}

/// --watch shows a drain's progress: a line when the drain begins, and one when every prober
/// (here the watcher itself, told twice) has been told; --json carries it as an object.
#[test]
fn watch_shows_drain_progress() {
    let (a, addr) = agent("initial_state=up drain_confirm=2");
    let t = addr.to_string();
    let watch = Watch::start(&["--interval", "100", &t]);
    watch.expect(&format!("{t}: up (set by host)"));
    a.set_load("", 1, 10).unwrap();
    a.set_state("", State::Drain, Some("deploy")).unwrap();
    let line = watch.expect(&format!("{t}: up -> drain (set by host)"));
    assert!(line.contains("[draining: "), "{line}");
    // Told twice, but work in progress: not complete until it is done.
    let line = watch.expect("[draining: 1 of 1 probers told");
    assert!(line.contains("load 1/10"), "{line}");
    a.set_load("", 0, 10).unwrap();
    watch.expect("[drain complete: 1 of 1 probers told");
    drop(watch);

    let json = Watch::start(&["--json", "--interval", "100", &t]);
    let line: serde_json::Value = serde_json::from_str(&json.expect("\"complete\":true")).unwrap();
    assert_eq!(line["drain"]["draining"], true);
    assert_eq!(line["drain"]["probers_pending"], 0);
    assert!(line["drain"]["told_you"].as_u64().unwrap() >= 2);
}
