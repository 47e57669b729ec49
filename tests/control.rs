//! The operator's control socket (`control=PATH`) driven by the real `lbagent-ctl`: an override
//! wins only toward less serving, ends by itself, is pushed to subscribers at once, survives a
//! restart through `state_file=`, and only allowed peers (SO_PEERCRED) may set it.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{agent, eventually, scratch_dir};
use lbagent::client::{Completion, ProbeOptions, Prober, probe};
use lbagent::{Agent, Counter, Reason, State};

const CTL: &str = env!("CARGO_BIN_EXE_lbagent-ctl");

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg(socket)
        .args(args)
        .output()
        .expect("lbagent-ctl runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The answer a director gets over UDP (protocol v1).
fn ask(addr: SocketAddr) -> lbagent::client::Answer {
    probe(addr, &ProbeOptions::default()).expect("an answer")
}

fn controlled_agent(name: &str, extra: &str) -> (Agent, SocketAddr, PathBuf) {
    let dir = scratch_dir(&format!("control-{name}"));
    let socket = dir.join("lbagent.sock");
    let (agent, addr) = agent(&format!(
        "initial_state=up control={} {extra}",
        socket.display()
    ));
    (agent, addr, socket)
}

#[test]
fn drain_for_a_while_wins_over_up_is_pushed_at_once_and_ends_by_itself() {
    let (agent, addr, socket) = controlled_agent(
        "drain",
        "subscribe=allow allow=127.0.0.0/8 services=game tcp_agent=127.0.0.1:0 http=127.0.0.1:0",
    );
    // The socket is the host's, mode 0660.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    // A director subscribes.
    let mut prober = Prober::new(ProbeOptions {
        timeout: Duration::from_secs(2),
        subscribe: Some(Duration::from_secs(30)),
        ..ProbeOptions::default()
    })
    .unwrap();
    prober.send(addr, "game", 1).unwrap();
    let first = receive(&mut prober, 1);
    assert!(first.subscribed && first.is_serving(), "{first:?}");

    let out = ctl(
        &socket,
        &["drain", "--for", "3s", "--reason", "kernel update"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("answer:     drain (operator), weight 100%: \"kernel update\""),
        "{text}"
    );
    assert!(text.contains("host:       up (host)"), "{text}");
    assert!(text.contains("operator:   drain for "), "{text}");
    // The subscriber hears it without probing again; a probe says the same.
    let pushed = receive(&mut prober, 1);
    assert!(pushed.pushed, "{pushed:?}");
    assert_eq!(
        (pushed.state, pushed.reason, pushed.message.as_str()),
        (State::Drain, Some(Reason::Operator), "kernel update")
    );
    assert_eq!(ask(addr).state, State::Drain);
    assert_eq!(agent.status("game").reason, Reason::Operator);
    // The text line too (what keepalived's UDP_CHECK reads), HAProxy's agent-check and HTTP.
    assert!(common::ask_text(addr, &"x".repeat(32)).starts_with("drain"));
    let tcp_answer = |to: SocketAddr, request: &[u8]| {
        let mut s = std::net::TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let line = tcp_answer(agent.tcp_agent_addrs()[0], b"\n");
    assert!(line.starts_with("drain up 100% #kernel update"), "{line}");
    let http = tcp_answer(agent.http_addrs()[0], b"GET /health HTTP/1.0\r\n\r\n");
    assert!(http.starts_with("HTTP/1.1 503 "), "{http}");

    // The host's DOWN is further from serving: it wins while it lasts.
    agent.set_state("", State::Down, Some("disk full")).unwrap();
    let s = ask(addr);
    assert_eq!((s.state, s.reason), (State::Down, Some(Reason::Host)));
    agent.set_state("", State::Up, None).unwrap();
    assert_eq!(ask(addr).state, State::Drain);

    // It ends by itself: the subscriber hears that too.
    let started = Instant::now();
    let back = loop {
        let c = receive(&mut prober, 1);
        if c.is_serving() {
            break c;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{c:?}");
    };
    assert!(back.pushed && back.reason == Some(Reason::Host), "{back:?}");
    let text = stdout(&ctl(&socket, &["status"]));
    assert!(text.contains("operator:   none"), "{text}");
    assert!(text.contains("answer:     up (host)"), "{text}");

    // maint until cleared, then up.
    let out = ctl(&socket, &["maint"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("operator:   maint until"),
        "{}",
        stdout(&out)
    );
    assert_eq!(ask(addr).state, State::Maint);
    assert!(ctl(&socket, &["up"]).status.success());
    assert!(ask(addr).is_serving());
    assert_eq!(agent.counter(Counter::ControlAnswered), 4);
    // The owner removes the socket when it stops.
    agent.stop(None).unwrap();
    assert!(!socket.exists());
}

/// The next completion for `token` (answers and pushes, in order).
fn receive(prober: &mut Prober, token: u64) -> lbagent::client::Answer {
    thread_local! {
        static QUEUE: std::cell::RefCell<Vec<Completion>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let found = QUEUE.with_borrow_mut(|queue| {
            prober.receive(queue);
            let i = queue.iter().position(|c| c.token == token)?;
            Some(queue.remove(i))
        });
        if let Some(c) = found {
            return c.result.expect("an answer");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing for token {token}");
}

#[test]
fn the_state_file_keeps_an_override_across_a_restart_and_a_bad_one_stops_the_start() {
    let dir = scratch_dir("control-state-file");
    let socket = dir.join("ctl.sock");
    let state = dir.join("override");
    let config = format!(
        "initial_state=up control={} state_file={}",
        socket.display(),
        state.display()
    );
    let (agent, addr) = common::agent(&config);
    let out = ctl(&socket, &["drain", "--reason", "rack move"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains(&format!("state file: written {}", state.display())),
        "{}",
        stdout(&out)
    );
    assert_eq!(ask(addr).state, State::Drain);
    drop(agent);
    assert!(!socket.exists());

    // A restart: the host says UP at once, the operator's drain holds.
    let (agent, addr) = common::agent(&config);
    let s = ask(addr);
    assert_eq!(
        (s.state, s.reason, s.message.as_str()),
        (State::Drain, Some(Reason::Operator), "rack move")
    );
    assert!(ctl(&socket, &["up"]).status.success());
    assert!(ask(addr).is_serving());
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("state=none")
    );
    drop(agent);

    // An override that ended while the server was down is not applied.
    let out = {
        let (agent, _) = common::agent(&config);
        let out = ctl(&socket, &["maint", "--for", "1s"]);
        drop(agent);
        out
    };
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let (agent, addr) = common::agent(&config);
    assert!(ask(addr).is_serving());
    drop(agent);

    // A corrupt file is an error that names it; the agent does not start.
    std::fs::write(&state, "state=drain\nuntil_unix_ms=tomorrow\n").unwrap();
    let e = Agent::start(&format!("listen=127.0.0.1:0 {config}"))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("\"state_file\"")
            && e.contains(&state.display().to_string())
            && e.contains("line 2"),
        "{e}"
    );
    assert!(!socket.exists(), "nothing bound");
    std::fs::write(&state, "").unwrap();
    let e = Agent::start(&format!("listen=127.0.0.1:0 {config}"))
        .err()
        .expect("an empty file is no override")
        .to_string();
    assert!(e.contains("no state= line"), "{e}");
    // state_file needs control=.
    let e = Agent::start(&format!(
        "listen=127.0.0.1:0 state_file={}",
        state.display()
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("\"state_file\"") && e.contains("control="),
        "{e}"
    );
}

#[test]
fn only_allowed_peers_may_control_and_bad_requests_get_errors() {
    // A directory others may enter, so that "nobody" reaches the socket.
    let dir = std::env::temp_dir().join(format!("lbagent-control-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("ctl.sock");
    let (agent, addr) = common::agent(&format!("initial_state=up control={}", socket.display()));
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", CTL])
            .arg(&socket)
            .args(args)
            .output()
            .expect("setpriv runs")
    };
    // Mode 0660: the file system stops another user.
    let out = as_nobody(&["drain"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("run as its user"), "{}", stderr(&out));
    // Opened to everyone by mistake: the peer's credentials still stop it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["drain"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(ask(addr).is_serving());
    assert_eq!(agent.counter(Counter::ControlRefused), 1);

    // Raw requests: one line, one reply, then the agent closes.
    let raw = |request: &[u8]| {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = raw(b"down 0 because\n");
    assert!(reply.starts_with("error=unknown command"), "{reply}");
    assert!(reply.contains("answer_state=up\n"), "{reply}");
    let reply = raw(b"drain 10x\n");
    assert!(reply.starts_with("error=the duration"), "{reply}");
    let reply = raw(&[b'x'; 600]);
    assert!(reply.starts_with("error=request too long"), "{reply}");
    let reply = raw(b"status\n");
    assert!(reply.starts_with("ok\n"), "{reply}");
    assert!(ask(addr).is_serving());
    // A client that sends nothing is closed at its deadline.
    let mut idle = UnixStream::connect(&socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed without a reply");
    assert!(eventually(Duration::from_secs(2), || agent
        .counter(Counter::ControlFailed)
        == 1));

    // Usage errors of lbagent-ctl.
    for args in [
        &["halt"][..],
        &["up", "--for", "1m"],
        &["drain", "--for", "soon"],
    ] {
        let out = ctl(&socket, args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
    }
    let out = ctl(&dir.join("missing.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("no agent serves it"),
        "{}",
        stderr(&out)
    );

    // A second agent cannot take a socket that is served; a stale one is replaced.
    let e = Agent::start(&format!("listen=127.0.0.1:0 control={}", socket.display()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"control\"") && e.contains("another process serves this socket"),
        "{e}"
    );
    drop(agent);
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let (agent, _) = common::agent(&format!("control={}", socket.display()));
    assert!(ctl(&socket, &["status"]).status.success());
    drop(agent);
    std::fs::write(dir.join("plain"), "x").unwrap();
    let e = Agent::start(&format!(
        "listen=127.0.0.1:0 control={}",
        dir.join("plain").display()
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a socket"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
