//! Authentication, prober side: the client API (blocking `probe` and non-blocking `Prober`),
//! lbagent-probe, lbagent-director and the C probe and prober seal their probes and accept
//! only answers sealed with the same key; a wrong key (told from a dead agent by the unsealed
//! diagnostic half-way), an agent without keys, and forged answers are each reported for what
//! they are.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use lbagent::client::{self, Completion, ProbeError, ProbeOptions, Prober, ProberStats, load_key};
use lbagent::proto::wire::{self, Reply};
use lbagent::{Agent, Counter, State};

const SECRET: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";
const OTHER: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

fn key_file(name: &str, text: &str) -> PathBuf {
    let dir = scratch_dir(&format!("auth-probers-{name}"));
    let path = dir.join("keys");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An agent (UP) whose key file holds key 7 with SECRET: the agent, its address, the file.
fn keyed_agent(name: &str) -> (Agent, SocketAddr, PathBuf) {
    let keys = key_file(name, &format!("7 {SECRET}\n"));
    let (agent, addr) = agent(&format!("key_file={} initial_state=up", keys.display()));
    (agent, addr, keys)
}

fn options(key: Option<&PathBuf>, timeout_ms: u64) -> ProbeOptions {
    ProbeOptions {
        timeout: Duration::from_millis(timeout_ms),
        key: key.map(|p| load_key(p, None).unwrap()),
        ..ProbeOptions::default()
    }
}

#[test]
fn client_api_with_the_right_key_the_wrong_key_and_no_key() {
    let right = key_file("right", &format!("7 {SECRET}\n"));
    let wrong_secret = key_file("wrong-secret", &format!("7 {OTHER}\n"));
    let wrong_id = key_file("wrong-id", &format!("9 {SECRET}\n"));
    let (agent, addr, _) = keyed_agent("agent");

    let a = client::probe(addr, &options(Some(&right), 1000)).unwrap();
    assert!(a.is_serving());
    // No key, auth=required: the agent says so.
    let e = client::probe(addr, &options(None, 1000)).unwrap_err();
    assert!(matches!(e, ProbeError::AuthRequired), "{e}");
    // A wrong secret or key id: the agent drops the probe silently; the prober's unsealed
    // diagnostic half-way shows the agent is alive, so this is a wrong key, not a timeout.
    for path in [&wrong_secret, &wrong_id] {
        let started = Instant::now();
        let e = client::probe(addr, &options(Some(path), 600)).unwrap_err();
        assert!(matches!(e, ProbeError::WrongKey(_)), "{e}");
        assert!(e.to_string().starts_with("wrong key: "), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(eventually(Duration::from_secs(2), || agent
        .counter(Counter::DroppedAuthFailed)
        == 2));
    // An agent without keys answers unsealed: not accepted from a prober with a key (and
    // told at the deadline, since an unsealed answer may be forged).
    let (_plain, plain_addr) = common::agent("initial_state=up");
    let e = client::probe(plain_addr, &options(Some(&right), 400)).unwrap_err();
    assert!(
        matches!(&e, ProbeError::WrongKey(w) if w.contains("without a seal")),
        "{e}"
    );
    // A dead agent is a timeout, not a wrong key.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = client::probe(silent.local_addr().unwrap(), &options(Some(&right), 300)).unwrap_err();
    assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
}

/// An event loop around `prober`, as a director writes it: wait until the socket is readable
/// or `next_timeout` has passed (and no longer), then `receive`; until nothing is in flight.
fn event_loop(prober: &mut Prober) -> Vec<Completion> {
    let mut out = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(20);
    while prober.in_flight() > 0 && Instant::now() < give_up {
        let wait = prober.next_timeout().unwrap_or(Duration::from_secs(1));
        let mut fds = [libc::pollfd {
            fd: prober.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = wait.as_nanos().div_ceil(1_000_000).min(1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        prober.receive(&mut out);
    }
    out
}

fn result_of(out: &[Completion], token: u64) -> &Result<client::Answer, ProbeError> {
    &out.iter()
        .find(|c| c.token == token)
        .expect("completed")
        .result
}

#[test]
fn prober_tells_a_wrong_key_from_a_dead_agent() {
    let right = key_file("prober-right", &format!("7 {SECRET}\n"));
    let wrong_secret = key_file("prober-wrong-secret", &format!("7 {OTHER}\n"));
    let wrong_id = key_file("prober-wrong-id", &format!("9 {SECRET}\n"));
    let (agent, addr, _) = keyed_agent("prober-agent");
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let key = |p: &PathBuf| Some(load_key(p, None).unwrap());
    // The options' key (send) and a key per target (send_keyed).
    let mut prober = Prober::new(options(Some(&wrong_secret), 600)).unwrap();
    let started = Instant::now();
    prober.send(addr, "", 1).unwrap();
    prober.send_keyed(addr, "", 2, key(&wrong_id)).unwrap();
    prober
        .send_keyed(silent.local_addr().unwrap(), "", 3, key(&wrong_secret))
        .unwrap();
    prober.send_keyed(addr, "", 4, key(&right)).unwrap();
    let out = event_loop(&mut prober);
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The agent drops the sealed probes silently but answers the unsealed diagnostics sent
    // half-way (with ERROR 2, auth=required): alive, so a wrong key, as client::probe says.
    for token in [1, 2] {
        let e = result_of(&out, token).as_ref().unwrap_err();
        assert!(matches!(e, ProbeError::WrongKey(_)), "{e}");
        assert!(e.to_string().starts_with("wrong key: "), "{e}");
        assert!(e.to_string().contains("dropped the sealed one"), "{e}");
    }
    // Nothing answers at all: a timeout, diagnostic or not.
    let e = result_of(&out, 3).as_ref().unwrap_err();
    assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
    assert!(result_of(&out, 4).as_ref().unwrap().is_serving());
    assert_eq!(
        prober.stats(),
        ProberStats {
            sent: 4,
            diagnostics: 3,
            answered: 1,
            failed: 2,
            timed_out: 1,
            ignored: 0,
            pushed: 0,
        }
    );
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::DroppedAuthFailed) == 2 && agent.counter(Counter::AnsweredError) == 2
    }));
    assert_eq!(prober.next_timeout(), None);
}

#[test]
fn prober_with_the_right_key_sends_no_diagnostic() {
    let (agent, addr, agent_keys) = keyed_agent("prober-quiet-agent");
    let mut prober = Prober::new(options(Some(&agent_keys), 4000)).unwrap();
    let sent = Instant::now();
    for (token, service) in [(1, ""), (2, "web"), (3, "")] {
        prober.send(addr, service, token).unwrap();
    }
    let out = event_loop(&mut prober);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.iter().all(|c| c.result.is_ok()), "{out:?}");
    // Past the half-way point of every probe: nothing more is sent.
    std::thread::sleep(
        (sent + Duration::from_millis(2100)).saturating_duration_since(Instant::now()),
    );
    prober.receive(&mut Vec::new());
    assert_eq!(prober.next_timeout(), None);
    assert_eq!(
        prober.stats(),
        ProberStats {
            sent: 3,
            answered: 3,
            ..ProberStats::default()
        }
    );
    assert_eq!(agent.counter(Counter::Received), 3);
    assert_eq!(agent.counter(Counter::AnsweredError), 0);
}

/// A fake agent that answers every PROBE with a STATUS for its nonce saying UP, sealed with
/// `forger_key` (None: not sealed), the way an attacker on the network would.
fn forger(forger_key: Option<&PathBuf>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let key = forger_key.map(|p| load_key(p, None).unwrap());
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(wire::Request::Probe(p)) = wire::decode_request(&buf[..n]) else {
                continue;
            };
            let fields = wire::StatusFields {
                flags: 0,
                nonce: p.nonce,
                instance_id: 1,
                generation: 1,
                state: State::Up as u8,
                reason: 0,
                weight_pct: 100,
                since_ms: 0,
                in_use: 0,
                capacity: 0,
                message: b"forged",
            };
            let mut out = [0u8; 512];
            let mut len =
                wire::encode_status(&fields, p.len - wire::AUTH_TRAILER_LEN, &mut out).unwrap();
            if let Some(key) = &key {
                len =
                    lbagent::proto::auth::seal(key, &mut out, len, lbagent::proto::auth::unix_ms());
            }
            let _ = socket.send_to(&out[..len], from);
        }
    });
    (addr, handle)
}

#[test]
fn forged_answers_are_never_accepted() {
    let right = key_file("forge-right", &format!("7 {SECRET}\n"));
    let forgers_key = key_file("forge-forger", &format!("7 {OTHER}\n"));
    for forged_with in [None, Some(&forgers_key)] {
        let (addr, handle) = forger(forged_with);
        // Without a key the forgery works: that is what keys are for.
        assert_eq!(
            client::probe(addr, &options(None, 500)).unwrap().message,
            "forged"
        );
        let e = client::probe(addr, &options(Some(&right), 500)).unwrap_err();
        assert!(matches!(e, ProbeError::WrongKey(_)), "{e}");
        handle.join().unwrap();
    }
    // A replayed genuine answer carries another nonce: it matches no probe.
    let (_agent, addr, _) = keyed_agent("replay");
    let key = load_key(&right, None).unwrap();
    let s = connected(addr);
    let mut probe = [0u8; 512];
    let body = wire::encode_probe(1, b"", 128 - wire::AUTH_TRAILER_LEN, &mut probe);
    let n = lbagent::proto::auth::seal(&key, &mut probe, body, lbagent::proto::auth::unix_ms());
    s.send(&probe[..n]).unwrap();
    let mut genuine = [0u8; 512];
    let m = s.recv(&mut genuine).unwrap();
    assert!(matches!(
        wire::decode_reply(&genuine[..m]),
        Ok(Reply::Status(_))
    ));
    assert!(matches!(
        client::read_answer_keyed(&genuine[..m], 1, Duration::ZERO, Some(&key)),
        Ok(Some(_))
    ));
    assert!(matches!(
        client::read_answer_keyed(&genuine[..m], 2, Duration::ZERO, Some(&key)),
        Ok(None)
    ));
    let mut tampered = genuine;
    tampered[8..16].copy_from_slice(&2u64.to_be_bytes());
    assert!(matches!(
        client::read_answer_keyed(&tampered[..m], 2, Duration::ZERO, Some(&key)),
        Err(ProbeError::WrongKey(_))
    ));
}

fn probe_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn lbagent_probe_key_file_in_every_mode() {
    let agent_keys = key_file("cli-agent", &format!("1 {OTHER}\n7 {SECRET}\n"));
    let right = key_file("cli-right", &format!("7 {SECRET}\n"));
    let wrong = key_file("cli-wrong", &format!("7 {OTHER}\n"));
    let (_agent, addr) = agent(&format!(
        "key_file={} initial_state=up",
        agent_keys.display()
    ));
    let target = addr.to_string();
    let r = right.to_str().unwrap();
    let w = wrong.to_str().unwrap();
    let a = agent_keys.to_str().unwrap();
    let code = |o: &Output| o.status.code().unwrap();
    assert_eq!(code(&probe_cli(&[&target, "--key-file", r])), 0);
    // Key rotation: the agent's file has both; --key-id picks one.
    assert_eq!(
        code(&probe_cli(&[&target, "--key-file", a, "--key-id", "7"])),
        0
    );
    assert_eq!(
        code(&probe_cli(&[&target, "--key-file", a, "--key-id", "1"])),
        0
    );
    let out = probe_cli(&[&target, "--key-file", w, "--timeout", "1000"]);
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong key"),
        "{out:?}"
    );
    assert_eq!(
        code(&probe_cli(&[
            &target,
            "--key-file",
            w,
            "--timeout",
            "1000",
            "--keepalived"
        ])),
        1
    );
    let out = probe_cli(&[&target, "--key-file", w, "--timeout", "1000", "--nagios"]);
    assert_eq!(
        code(&out),
        3,
        "a wrong key is a configuration problem: UNKNOWN"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrong key"));
    assert_eq!(
        code(&probe_cli(&[
            &target,
            "--key-file",
            r,
            "--keepalived-dynamic"
        ])),
        102
    );
    // No key against auth=required.
    let out = probe_cli(&[&target]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication required"));
    // Bad key files are usage errors that say why.
    let out = probe_cli(&[&target, "--key-file", "/nonexistent/keys"]);
    assert_eq!(code(&out), 64);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/keys"));
    std::fs::set_permissions(&right, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = probe_cli(&[&target, "--key-file", r]);
    assert_eq!(code(&out), 64);
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = probe_cli(&[&target, "--key-file", a, "--key-id", "99"]);
    assert_eq!(code(&out), 64);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key with id 99"));
}

#[test]
fn lbagent_director_seals_each_targets_probes_with_its_key() {
    let right = key_file("dir-right", &format!("7 {SECRET}\n"));
    let wrong = key_file("dir-wrong", &format!("7 {OTHER}\n"));
    let (_agent, addr, _) = keyed_agent("dir-agent");
    let dir = scratch_dir("auth-director");
    let targets = dir.join("targets");
    std::fs::write(
        &targets,
        format!(
            "good {addr} key={}\nbad {addr} key={}\nnone {addr}\n",
            right.display(),
            wrong.display()
        ),
    )
    .unwrap();
    let track = dir.join("track");
    std::fs::create_dir_all(&track).unwrap();
    // "bad" starts up, so its first failed check is a logged transition with its reason.
    std::fs::write(track.join("bad"), "0\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .args([
            "--interval",
            "300",
            "--timeout",
            "200",
            "--rise",
            "1",
            "--fall",
            "1",
        ])
        .arg("--targets")
        .arg(&targets)
        .arg("--track-dir")
        .arg(&track)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push(line);
            }
        })
    };
    let logged = |needles: &[&str]| {
        log.lock()
            .unwrap()
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    };
    let read = |name: &str| std::fs::read_to_string(track.join(name)).unwrap_or_default();
    let ok = eventually(Duration::from_secs(10), || {
        read("good").trim() == "0" && read("bad").trim() == "1"
    });
    // The agent drops bad's sealed probes but answers the unsealed diagnostic: the
    // transition says wrong key, not timeout.
    let wrong_key = eventually(Duration::from_secs(10), || {
        logged(&["bad ", "up -> down", "wrong key: "]).is_some()
    });
    let (good, bad, none) = (read("good"), read("bad"), read("none"));
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    reader.join().unwrap();
    let lines = log.lock().unwrap().join("\n");
    assert!(ok, "good={good:?} bad={bad:?}\n{lines}");
    assert!(wrong_key, "{lines}");
    let stop = logged(&["stopping on SIGTERM"]).expect(&lines);
    assert!(
        stop.contains("wrong-key diagnostics sent") && !stop.contains(" 0 wrong-key"),
        "{stop}"
    );
    assert_eq!(bad.trim(), "1", "a wrong key never makes a target healthy");
    assert_eq!(
        none.trim(),
        "1",
        "an agent with auth=required does not answer unsealed probes"
    );
    // A key file that cannot be read is a targets error that names the line.
    std::fs::write(&targets, format!("x {addr} key=/nonexistent/k\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .arg("--targets")
        .arg(&targets)
        .arg("--check")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":1:") && err.contains("/nonexistent/k"),
        "{err}"
    );
}

#[test]
fn c_probe_with_key_file_option() {
    use common::c_prober::{CStatus, lbagent_probe};
    use std::ffi::{CString, c_int};
    let wrong = key_file("c-wrong", &format!("7 {OTHER}\n"));
    let (_agent, addr, agent_keys) = keyed_agent("c-agent");
    let target = CString::new(addr.to_string()).unwrap();
    let run = |options: String| {
        let options = CString::new(options).unwrap();
        // SAFETY: zeroed memory is a valid status; valid NUL-terminated strings.
        let mut out: CStatus = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            lbagent_probe(
                target.as_ptr(),
                std::ptr::null(),
                options.as_ptr(),
                &mut out,
            )
        };
        (rc, out.state)
    };
    assert_eq!(
        run(format!("key_file={} timeout_ms=500", agent_keys.display())),
        (0, State::Up as c_int)
    );
    assert_eq!(
        run(format!("key_file={} timeout_ms=1000", wrong.display())).0,
        20,
        "LBAGENT_ERR_WRONG_KEY"
    );
    assert_eq!(
        run(format!("key_file={} key_id=3", agent_keys.display())).0,
        4,
        "LBAGENT_ERR_CONFIG"
    );
}

#[test]
fn c_prober_with_key_file_option() {
    let wrong = key_file("c-prober-wrong", &format!("7 {OTHER}\n"));
    let (_agent, addr, agent_keys) = keyed_agent("c-prober-agent");
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Each target's result code, through a C prober with `options`.
    let run = |options: String, targets: &[SocketAddr]| -> Vec<(u64, std::ffi::c_int)> {
        common::c_prober::probe_all(&options, targets)
            .into_iter()
            .enumerate()
            .map(|(token, (rc, _, _))| (token as u64, rc))
            .collect()
    };
    // The agent drops the probe sealed with another secret but answers the diagnostic:
    // LBAGENT_ERR_WRONG_KEY (20); a silent port: LBAGENT_ERR_TIMEOUT (9).
    assert_eq!(
        run(
            format!("key_file={} timeout_ms=1000", wrong.display()),
            &[addr, silent.local_addr().unwrap()]
        ),
        [(0, 20), (1, 9)]
    );
    assert_eq!(
        run(
            format!("key_file={} timeout_ms=600", agent_keys.display()),
            &[addr]
        ),
        [(0, 0)]
    );
}
