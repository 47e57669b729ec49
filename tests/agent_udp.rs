//! The embedded agent over real UDP sockets on loopback: what a director sees.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;
use lbagent::client::{self, ProbeError, ProbeOptions};
use lbagent::proto::wire;
use lbagent::{Agent, Counter, Reason, State};

fn probe(addr: SocketAddr, service: &str) -> client::Answer {
    let options = ProbeOptions {
        service: service.into(),
        ..ProbeOptions::default()
    };
    client::probe(addr, &options).expect("an answer")
}

#[test]
fn keepalived_default_payload_gets_a_short_verdict_that_says_up_only_while_up() {
    let (agent, addr) = agent("");
    for state in [
        State::Starting,
        State::Up,
        State::Drain,
        State::Maint,
        State::Down,
        State::Stopping,
    ] {
        agent
            .set_state("", state, Some("a reason long enough to be cut off"))
            .unwrap();
        let reply = ask(addr, KEEPALIVED_PAYLOAD);
        assert!(
            reply.len() <= KEEPALIVED_PAYLOAD.len(),
            "{} bytes",
            reply.len()
        );
        assert!(reply.len() >= 2);
        // keepalived: require_reply 7570 ("up") compares a prefix.
        assert_eq!(
            reply.starts_with(b"up"),
            state == State::Up,
            "{state}: {reply:?}"
        );
        assert_ne!(reply[0] == b'u', state != State::Up, "{state}: {reply:?}");
    }
    // Up at weight 0 takes no new connections.
    agent.set_state("", State::Up, None).unwrap();
    agent.set_weight("", 0).unwrap();
    assert!(!ask(addr, KEEPALIVED_PAYLOAD).starts_with(b"up"));
    agent.set_weight("", 60).unwrap();
    assert_eq!(
        ask_text(addr, "keepalived check - keepalived ch"),
        "up ready 60%\n"
    );
}

#[test]
fn text_lines_follow_the_state_table() {
    let (agent, addr) = agent("services=game");
    let pad = " ".repeat(100);
    let line = |svc: &str| ask_text(addr, &format!("service={svc}\n{pad}"));
    agent.set_state("", State::Up, Some("ready")).unwrap();
    assert_eq!(line(""), "up ready 100% #ready\n");
    agent
        .set_state("game", State::Drain, Some("deploy"))
        .unwrap();
    assert_eq!(line("game"), "drain up 100% #deploy\n");
    agent.set_state("game", State::Maint, None).unwrap();
    assert_eq!(line("game"), "maint down 100%\n");
    agent.set_state("game", State::Down, Some("db")).unwrap();
    assert_eq!(line("game"), "fail ready 100% #db\n");
    let unknown = line("nope");
    assert_eq!(unknown, "error down 0% #unknown service\n");
    // ldirectord's usual receive regex ("^up") and keepalived's prefix both fail it.
    assert!(!unknown.starts_with("up") && !unknown.starts_with('u'));
}

#[test]
fn wildcard_agent_answers_from_the_address_probed() {
    let agent = Agent::start("listen=0.0.0.0:0").unwrap();
    let port = agent.local_addrs()[0].port();
    agent.set_state("", State::Up, None).unwrap();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        // An unconnected socket sees the real source of the answer.
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(KEEPALIVED_PAYLOAD, to).unwrap();
        let mut buf = [0u8; 64];
        let (_, from) = s.recv_from(&mut buf).expect("an answer");
        assert_eq!(from, to, "answer to a probe sent to {to} came from {from}");
        // And a connected socket, as keepalived uses, accepts it.
        assert!(probe(to, "").is_serving());
    }
}

/// The same over IPv6 (IPV6_RECVPKTINFO). The host's loopback has only ::1, so this runs in a
/// network namespace of its own: a thread unshares its network namespace (only that thread
/// moves; the `ip` commands and the agent's thread it starts inherit it) and gives its
/// loopback two more addresses.
#[test]
fn wildcard_ipv6_agent_answers_from_the_address_probed() {
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread, which owns no sockets.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let ips = ["::1", "fd00:6c62::2", "fd00:6c62::3"];
        let ip_command = |args: &[&str]| {
            let status = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(status.success(), "ip {args:?}: {status}");
        };
        ip_command(&["link", "set", "lo", "up"]);
        for ip in &ips[1..] {
            ip_command(&["-6", "addr", "add", ip, "dev", "lo", "nodad"]);
        }
        let agent = Agent::start("listen=[::]:0 initial_state=up").unwrap();
        let port = agent.local_addrs()[0].port();
        for (i, ip) in ips.iter().enumerate() {
            let to = SocketAddr::new(ip.parse().unwrap(), port);
            // From another of the addresses: without IPV6_PKTINFO the answer would leave from
            // the address nearest the prober, not from the one probed.
            let from_ip: std::net::IpAddr = ips[(i + 1) % ips.len()].parse().unwrap();
            let s = UdpSocket::bind(SocketAddr::new(from_ip, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(KEEPALIVED_PAYLOAD, to).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf).expect("an answer");
            assert_eq!(from, to, "answer to a probe sent to {to} came from {from}");
            assert!(buf[..n].starts_with(b"up"));
            assert!(probe(to, "").is_serving());
        }
    })
    .join()
    .unwrap();
}

#[test]
fn ipv6_and_several_listen_addresses() {
    let agent = Agent::start("listen=127.0.0.1:0,[::1]:0 initial_state=up").unwrap();
    let addrs = agent.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    for addr in addrs {
        assert_eq!(probe(addr, "").state, State::Up);
        assert!(ask_text(addr, "hello?                   ").starts_with("up"));
    }
}

#[test]
fn status_answer_carries_what_the_host_reported() {
    let (agent, addr) = agent("services=game,chat");
    let a = probe(addr, "");
    assert_eq!((a.state, a.reason), (State::Starting, Some(Reason::Host)));
    assert_eq!(a.instance_id, agent.instance_id());
    agent.set_state("", State::Up, Some("ready")).unwrap();
    agent.set_weight("", 80).unwrap();
    agent.set_load("", 3, 100).unwrap();
    let b = probe(addr, "");
    assert_eq!(b.state, State::Up);
    assert_eq!(b.message, "ready");
    assert_eq!((b.weight_pct, b.in_use, b.capacity), (80, 3, 100));
    assert!(b.generation > a.generation);
    // Services follow the whole server until set, and scale by its weight.
    agent.set_weight("game", 50).unwrap();
    agent.set_load("game", 1, 2).unwrap();
    let g = probe(addr, "game");
    assert_eq!(
        (g.state, g.weight_pct, g.in_use, g.capacity),
        (State::Up, 40, 1, 2)
    );
    agent
        .set_state("chat", State::Down, Some("chat backend gone"))
        .unwrap();
    assert_eq!(probe(addr, "chat").state, State::Down);
    assert_eq!(probe(addr, "").state, State::Up);
    // The API says exactly what the wire says.
    let s = agent.status("chat");
    let w = probe(addr, "chat");
    assert_eq!(
        (s.state, s.generation, s.message.as_str()),
        (w.state, w.generation, w.message.as_str())
    );
}

#[test]
fn unknown_service_is_an_explicit_answer() {
    let (agent, addr) = agent("services=game initial_state=up");
    let a = probe(addr, "nope");
    assert_eq!(
        (a.state, a.reason),
        (State::Unknown, Some(Reason::UnknownService))
    );
    assert!(!a.is_serving());
    assert_eq!(agent.status("nope").state, State::Unknown);
    assert!(matches!(
        agent.set_state("nope", State::Up, None),
        Err(lbagent::Error::UnknownService)
    ));
}

#[test]
fn watchdog_expires_and_the_next_heartbeat_recovers() {
    let (agent, addr) = agent("watchdog_ms=300");
    agent.set_state("", State::Up, Some("ready")).unwrap();
    agent.heartbeat().unwrap();
    assert_eq!(probe(addr, "").state, State::Up);
    // Stop heart-beating: the agent reports the server down by itself.
    assert!(eventually(Duration::from_secs(5), || probe(addr, "").state
        == State::Down));
    let down = probe(addr, "");
    assert_eq!(down.reason, Some(Reason::WatchdogExpired));
    assert_eq!(down.message, "watchdog expired");
    assert!(ask(addr, KEEPALIVED_PAYLOAD).starts_with(b"fail"));
    agent.heartbeat().unwrap();
    let up = probe(addr, "");
    assert_eq!(
        (up.state, up.reason, up.message.as_str()),
        (State::Up, Some(Reason::Host), "ready")
    );
    assert!(up.generation > down.generation);
}

/// The startup rule, as a director sees it: a warm-up without heartbeats is STARTING however
/// long it lasts; the watchdog is armed by the first heartbeat or by leaving STARTING.
#[test]
fn the_watchdog_is_armed_when_the_start_ends() {
    let (agent, addr) = agent("watchdog_ms=200");
    agent
        .set_state("", State::Starting, Some("loading data"))
        .unwrap();
    // Ten watchdog windows without a heartbeat: still what the host says.
    std::thread::sleep(Duration::from_millis(2000));
    let warming = probe(addr, "");
    assert_eq!(
        (warming.state, warming.reason, warming.message.as_str()),
        (State::Starting, Some(Reason::Host), "loading data")
    );
    assert!(ask(addr, KEEPALIVED_PAYLOAD).starts_with(b"init"));
    // UP without a heartbeat arms it: a host that forgot its heartbeats is caught.
    agent.set_state("", State::Up, Some("ready")).unwrap();
    assert!(eventually(Duration::from_secs(5), || probe(addr, "")
        .reason
        == Some(Reason::WatchdogExpired)));
    assert_eq!(probe(addr, "").state, State::Down);
    agent.heartbeat().unwrap();
    assert_eq!(probe(addr, "").state, State::Up);

    // The first heartbeat arms it too, while the server still says STARTING.
    let (agent, addr) = common::agent("watchdog_ms=200");
    agent.heartbeat().unwrap();
    assert!(eventually(Duration::from_secs(5), || probe(addr, "")
        .reason
        == Some(Reason::WatchdogExpired)));
}

#[test]
fn a_start_that_does_not_end_in_start_timeout_ms_is_down() {
    let (agent, addr) = agent("watchdog_ms=5000 start_timeout_ms=300 services=game");
    let first = probe(addr, "");
    assert!(
        eventually(Duration::from_secs(5), || probe(addr, "").state
            == State::Down),
        "first {first:?}"
    );
    let down = probe(addr, "game");
    assert_eq!(
        (down.state, down.reason, down.message.as_str()),
        (State::Down, Some(Reason::StartTimedOut), "start timed out")
    );
    assert!(down.generation > first.generation);
    assert!(ask(addr, KEEPALIVED_PAYLOAD).starts_with(b"fail"));
    assert_eq!(agent.status("").reason, Reason::StartTimedOut);
    // The start ends late: the host's state from then on, and the watchdog.
    agent.set_state("", State::Up, Some("ready")).unwrap();
    let up = probe(addr, "game");
    assert_eq!((up.state, up.reason), (State::Up, Some(Reason::Host)));
    assert!(up.generation > down.generation);
}

#[test]
fn host_calls_naming_an_unknown_service_are_counted() {
    let (agent, _addr) = agent("services=game,chat");
    assert_eq!(agent.counter(Counter::HostUnknownService), 0);
    assert!(matches!(
        agent.set_state("gmae", State::Up, None),
        Err(lbagent::Error::UnknownService)
    ));
    assert!(agent.set_weight("gmae", 50).is_err());
    assert!(agent.set_load("gmae", 1, 2).is_err());
    assert!(
        agent
            .add_check("gmae", "db", Duration::from_secs(1), Duration::ZERO, || Ok(
                ()
            ))
            .is_err()
    );
    assert_eq!(agent.counter(Counter::HostUnknownService), 4);
    // Reading about an unknown service is what a director may do: not counted.
    assert_eq!(agent.status("gmae").state, State::Unknown);
    // Known names and the whole server are not counted either.
    agent.set_state("game", State::Up, None).unwrap();
    agent.set_state("", State::Up, None).unwrap();
    assert_eq!(agent.counter(Counter::HostUnknownService), 4);
    assert_eq!(agent.services().collect::<Vec<_>>(), ["game", "chat"]);
}

#[test]
fn status_is_never_longer_than_its_probe() {
    let (agent, addr) = agent("services=svc initial_state=up rate_per_source=0");
    agent
        .set_state("", State::Up, Some(&"é".repeat(127)))
        .unwrap();
    let s = connected(addr);
    let mut request = [0u8; wire::PROBE_MAX_LEN];
    let mut buf = [0u8; 2048];
    for len in wire::PROBE_MIN_LEN..=wire::PROBE_MAX_LEN {
        for service in [&b""[..], b"svc", b"missing"] {
            let n = wire::encode_probe(len as u64, service, len, &mut request);
            assert_eq!(n, len);
            s.send(&request[..n]).unwrap();
            let got = s.recv(&mut buf).unwrap();
            assert!(got <= len, "{got} > {len}");
            match wire::decode_reply(&buf[..got]).unwrap() {
                wire::Reply::Status(st) => {
                    assert_eq!(st.nonce, len as u64);
                    assert!(std::str::from_utf8(st.message).is_ok());
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    let (agent, addr) = agent("initial_state=up");
    let mut good = [0u8; wire::PROBE_MAX_LEN];
    let n = wire::encode_probe(1, b"", 64, &mut good);
    let good = &good[..n];
    let mut bad: Vec<Vec<u8>> = vec![
        b"LBAP".to_vec(),                 // too short
        good[..47].to_vec(),              // shorter than a PROBE
        [good, &[0u8; 600][..]].concat(), // longer than 512
        b"".to_vec(),                     // empty
    ];
    let mut t = good.to_vec();
    t[5] = 2; // a STATUS sent to an agent
    bad.push(t);
    let mut t = good.to_vec();
    t[16] = 65; // name too long
    bad.push(t);
    let mut t = good.to_vec();
    t[16] = 3;
    t[17..20].copy_from_slice(b"a\x01b"); // control character in the name
    bad.push(t);
    for datagram in &bad {
        assert_eq!(
            exchange(addr, datagram, Duration::from_millis(200)),
            None,
            "{datagram:?}"
        );
    }
    // Still answering.
    assert!(probe(addr, "").is_serving());
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::DroppedMalformed) == bad.len() as u64
    }));
    // Every datagram ends in exactly one outcome (answers are counted once sent).
    assert!(eventually(Duration::from_secs(2), || {
        let outcomes: u64 = Counter::DATAGRAM_OUTCOMES
            .iter()
            .map(|c| agent.counter(*c))
            .sum();
        agent.counter(Counter::Received) == outcomes && outcomes == bad.len() as u64 + 1
    }));
}

#[test]
fn unsupported_version_gets_an_error_answer() {
    let (_agent, addr) = agent("");
    let mut p = [0u8; wire::PROBE_MAX_LEN];
    let n = wire::encode_probe(42, b"", 48, &mut p);
    p[4] = 9;
    let reply = ask(addr, &p[..n]);
    assert_eq!(reply.len(), wire::ERROR_LEN);
    assert_eq!(
        wire::decode_reply(&reply).unwrap(),
        wire::Reply::Error {
            version: 1,
            nonce: 42,
            code: wire::ERROR_UNSUPPORTED_VERSION
        }
    );
    let e = client::read_answer(&reply, 42, Duration::ZERO).unwrap_err();
    assert!(matches!(
        e,
        ProbeError::VersionMismatch { agent_version: 1 }
    ));
}

#[test]
fn text_off_and_allow_list() {
    let (quiet, addr) = agent("text=off");
    assert_eq!(
        exchange(addr, KEEPALIVED_PAYLOAD, Duration::from_millis(200)),
        None
    );
    assert_eq!(probe(addr, "").state, State::Starting);
    assert!(eventually(Duration::from_secs(1), || quiet
        .counter(Counter::DroppedTextOff)
        == 1));

    let (fenced, addr) = agent("allow=10.0.0.0/8");
    assert_eq!(
        exchange(addr, KEEPALIVED_PAYLOAD, Duration::from_millis(200)),
        None
    );
    let options = ProbeOptions {
        timeout: Duration::from_millis(200),
        ..Default::default()
    };
    assert!(matches!(
        client::probe(addr, &options),
        Err(ProbeError::Timeout(_))
    ));
    assert!(eventually(Duration::from_secs(1), || fenced
        .counter(Counter::DroppedNotAllowed)
        == 2));
    let (_agent, addr) = agent("allow=127.0.0.0/8,::1");
    assert_eq!(probe(addr, "").state, State::Starting);
}

#[test]
fn answers_to_answers_are_never_sent() {
    let (agent, addr) = agent("initial_state=up");
    // Another agent's text line, spoofed from a victim: dropped, so two agents cannot loop.
    assert_eq!(
        exchange(addr, b"up ready 100% #ready\n", Duration::from_millis(200)),
        None
    );
    assert!(eventually(Duration::from_secs(1), || agent
        .counter(Counter::DroppedLooksLikeReply)
        == 1));
}

#[test]
fn several_agents_in_one_process_are_independent() {
    let (a, addr_a) = agent("initial_state=up");
    let (b, addr_b) = agent("initial_state=down");
    a.set_state("", State::Drain, Some("a")).unwrap();
    assert_eq!(probe(addr_a, "").state, State::Drain);
    assert_eq!(probe(addr_b, "").state, State::Down);
    assert_ne!(a.instance_id(), b.instance_id());
    a.stop(None).unwrap();
    assert_eq!(probe(addr_b, "").state, State::Down);
}

#[test]
fn stop_answers_stopping_closes_the_socket_and_is_idempotent() {
    let (agent, addr) = agent("initial_state=up");
    assert!(probe(addr, "").is_serving());
    agent.stop(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(agent.status("").state, State::Stopping);
    assert_eq!(agent.status("").reason, Reason::AgentStopping);
    assert!(matches!(
        agent.set_state("", State::Up, None),
        Err(lbagent::Error::Stopped)
    ));
    assert!(matches!(agent.heartbeat(), Err(lbagent::Error::Stopped)));
    // The socket is closed: the port can be bound again at once.
    UdpSocket::bind(addr).expect("port released");
    agent.stop(None).unwrap();
}

#[test]
fn a_stop_that_times_out_says_so_and_can_be_waited_for_again() {
    let (agent, addr) = agent("initial_state=up");
    agent.inject_exit_delay(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    assert!(matches!(
        agent.stop(Some(Duration::from_millis(50))),
        Err(lbagent::Error::Timeout)
    ));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "stop waited for the thread"
    );
    // Stopping has begun all the same: the host's updates are refused, the status is final.
    assert_eq!(agent.status("").state, State::Stopping);
    assert!(matches!(agent.heartbeat(), Err(lbagent::Error::Stopped)));
    // Calling again waits again, this time until the thread has finished.
    agent.stop(None).unwrap();
    UdpSocket::bind(addr).expect("port released");
    agent.stop(Some(Duration::from_millis(50))).unwrap();
}

#[test]
fn a_panic_inside_the_agent_is_caught_and_reported() {
    let (agent, addr) = agent("initial_state=up");
    agent.inject_fault();
    // The datagram that hits the fault is dropped.
    assert_eq!(
        exchange(addr, KEEPALIVED_PAYLOAD, Duration::from_millis(300)),
        None
    );
    // The thread lives on and says it can no longer vouch for the server.
    let a = probe(addr, "");
    assert_eq!((a.state, a.reason), (State::Down, Some(Reason::AgentFault)));
    assert_eq!(agent.counter(Counter::Faults), 1);
    assert_eq!(agent.status("").reason, Reason::AgentFault);
}

#[test]
fn probe_errors_say_what_happened() {
    // Nothing listens: ICMP port unreachable on loopback.
    let free = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = ProbeOptions {
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    assert!(matches!(
        client::probe(free, &options),
        Err(ProbeError::Refused)
    ));
    // A UDP echo service: the probe comes back.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        echo.send_to(&buf[..n], from).unwrap();
    });
    let e = client::probe(echo_addr, &options).unwrap_err();
    assert!(matches!(e, ProbeError::NotAnAgent(_)), "{e}");
    t.join().unwrap();
    // Silence.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = client::probe(silent.local_addr().unwrap(), &options).unwrap_err();
    assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
}

#[test]
fn config_errors_name_the_key_and_the_value() {
    let e = Agent::start("watchdog_ms=soon").err().unwrap().to_string();
    assert!(e.contains("watchdog_ms") && e.contains("soon"), "{e}");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Agent::start(&format!("listen={addr}"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(&addr.to_string()) && e.contains("in use"), "{e}");
}

#[test]
fn a_burst_larger_than_a_batch_is_answered_in_full() {
    // The monitor reads up to a batch of datagrams per call and ends its turn on a short
    // batch, trusting epoll to report the next arrival: nothing may be left unanswered.
    let (agent, addr) = agent("initial_state=up rate_global=0");
    let socket = connected(addr);
    let mut probe = [0u8; lbagent::proto::wire::PROBE_MAX_LEN];
    let len = lbagent::proto::wire::encode_probe(9, b"", 64, &mut probe);
    let mut buf = [0u8; 512];
    for round in 0..20 {
        // 1 to 96 datagrams (a batch is 32); few enough for the default socket buffers.
        let burst = 1 + round * 5;
        for _ in 0..burst {
            socket.send(&probe[..len]).unwrap();
        }
        for i in 0..burst {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("answer {i} of a burst of {burst}: {e}"));
            assert!(n > 0);
        }
    }
    // Counted once sent, which can be just after the prober read the last answer.
    let sent = (0..20).map(|r| 1 + r * 5).sum::<u64>();
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::AnsweredStatus) == sent
    }));
}
