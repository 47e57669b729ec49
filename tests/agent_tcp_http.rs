//! HAProxy's agent-check over TCP (`tcp_agent=`) and the HTTP health endpoint (`http=`), over
//! real sockets on loopback: the same answers as over UDP, and every bound holds.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use lbagent::config::{AGENT_SEND_WAIT, MAX_CONNECTIONS};
use lbagent::{Agent, Counter, State};

/// An agent with UDP, the TCP agent-check and HTTP on 127.0.0.1, ports chosen by the system.
fn tcp_agent(extra: &str) -> (Agent, SocketAddr, SocketAddr, SocketAddr) {
    let agent = Agent::start(&format!(
        "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 {extra}"
    ))
    .expect("agent starts");
    let (udp, tcp, http) = (
        agent.local_addrs()[0],
        agent.tcp_agent_addrs()[0],
        agent.http_addrs()[0],
    );
    (agent, udp, tcp, http)
}

/// Every accepted connection ends in exactly one outcome (once none is open).
fn outcomes_add_up(agent: &Agent) -> bool {
    eventually(Duration::from_secs(5), || {
        let outcomes: u64 = Counter::CONNECTION_OUTCOMES
            .iter()
            .map(|c| agent.counter(*c))
            .sum();
        agent.counter(Counter::ConnAccepted) == outcomes
    })
}

#[test]
fn agent_check_line_is_the_udp_text_line_in_full() {
    let (agent, udp, tcp, _) = tcp_agent("");
    let reason = "a reason longer than keepalived's thirty-two bytes";
    for state in [
        State::Starting,
        State::Up,
        State::Drain,
        State::Maint,
        State::Down,
        State::Stopping,
    ] {
        agent.set_state("", state, Some(reason)).unwrap();
        let line = tcp_exchange(tcp, b"");
        // The same line as a UDP text request with room for all of it.
        assert_eq!(line, ask_text(udp, &" ".repeat(300)), "{state}");
        assert!(line.ends_with(&format!("% #{reason}\n")), "{line:?}");
        assert_eq!(line.starts_with("up "), state == State::Up, "{line:?}");
    }
    agent.set_state("", State::Up, None).unwrap();
    agent.set_weight("", 50).unwrap();
    assert_eq!(tcp_exchange(tcp, b""), "up ready 50%\n");
    assert_eq!(agent.counter(Counter::AnsweredAgent), 7);
    assert!(outcomes_add_up(&agent));
}

#[test]
fn agent_send_names_a_service_and_is_never_required() {
    let (agent, _, tcp, _) = tcp_agent("services=game,chat initial_state=up");
    agent
        .set_state("game", State::Drain, Some("deploy"))
        .unwrap();
    // HAProxy: agent-send "service=game\n".
    assert_eq!(
        tcp_exchange(tcp, b"service=game\n"),
        "drain up 100% #deploy\n"
    );
    assert_eq!(tcp_exchange(tcp, b"service=chat\r\n"), "up ready 100%\n");
    assert_eq!(
        tcp_exchange(tcp, b"service=nope\n"),
        "error down 0% #unknown service\n"
    );
    // No line at all: after a short wait, the whole server.
    let started = Instant::now();
    assert_eq!(tcp_exchange(tcp, b""), "up ready 100%\n");
    assert!(started.elapsed() >= AGENT_SEND_WAIT);
    // A line without its end, then the peer shuts its side: answered at once.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.write_all(b"service=game").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.read_to_string(&mut line).unwrap();
    assert_eq!(line, "drain up 100% #deploy\n");
    // HAProxy's own idiom, the bare name (agent-send "game\n"), names the service too.
    assert_eq!(tcp_exchange(tcp, b"game\n"), "drain up 100% #deploy\n");
    assert_eq!(tcp_exchange(tcp, b"\n"), "up ready 100%\n", "an empty line");
    // Any other first line is a name that is not configured: the unknown-service answer,
    // which fails every director, never the whole server's answer by mistake.
    let unknown = "error down 0% #unknown service\n";
    assert_eq!(tcp_exchange(tcp, b"hello\n"), unknown);
    assert_eq!(
        tcp_exchange(tcp, &[b'x'; 2000]),
        unknown,
        "a long line without an end"
    );
    assert!(outcomes_add_up(&agent));
}

#[test]
fn without_services_the_line_is_written_on_accept() {
    let (_agent, _, tcp, _) = tcp_agent("initial_state=up");
    // No `services=`: nothing to wait for. The line is already there when we look.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut line = String::new();
    s.read_to_string(&mut line).unwrap();
    assert_eq!(line, "up ready 100%\n");
}

#[test]
fn http_codes_follow_the_state() {
    let (agent, _, _, http) = tcp_agent("services=game");
    let a = http_get(http, "/health");
    assert_eq!((a.code, a.body.as_str()), (503, "init down ready 100%\n"));
    agent.set_state("", State::Up, Some("ready")).unwrap();
    let a = http_get(http, "/health");
    assert_eq!((a.code, a.body.as_str()), (200, "up ready 100% #ready\n"));
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(a.header("content-length"), Some("21"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    for (state, code) in [
        (State::Drain, 503),
        (State::Maint, 503),
        (State::Down, 503),
        (State::Up, 200),
    ] {
        agent.set_state("", state, None).unwrap();
        assert_eq!(http_get(http, "/health").code, code, "{state}");
    }
    agent.set_weight("", 0).unwrap();
    assert_eq!(http_get(http, "/health").code, 503, "weight 0");
    agent.set_weight("", 100).unwrap();
    agent
        .set_state("game", State::Drain, Some("deploy"))
        .unwrap();
    let a = http_get(http, "/health/game");
    assert_eq!((a.code, a.body.as_str()), (503, "drain up 100% #deploy\n"));
    let a = http_get(http, "/health/nope");
    assert_eq!(
        (a.code, a.body.as_str()),
        (404, "error down 0% #unknown service\n")
    );
    assert_eq!(http_get(http, "/metrics").code, 404);
    assert_eq!(agent.counter(Counter::AnsweredHttp), 10);
    assert!(outcomes_add_up(&agent));
}

#[test]
fn http_head_json_and_other_methods() {
    let (agent, _, _, http) = tcp_agent("initial_state=up");
    agent.set_load("", 3, 64).unwrap();
    let get = http_get(http, "/health");
    let head = http_exchange(http, "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((head.code, head.head.as_str()), (200, get.head.as_str()));
    assert_eq!(head.body, "", "HEAD has no body");
    let a = http_exchange(
        http,
        "GET /health HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let status = agent.status("");
    assert_eq!(v["state"], "up");
    assert_eq!(v["serving"], true);
    assert_eq!(v["reason"], "host");
    assert_eq!(v["weight_pct"], 100);
    assert_eq!(
        (v["in_use"].as_u64(), v["capacity"].as_u64()),
        (Some(3), Some(64))
    );
    assert_eq!(v["generation"], status.generation);
    assert!(v["since_ms"].is_u64());
    assert_eq!(v["message"], "");
    assert_eq!(v["instance_id"], format!("{:016x}", agent.instance_id()));
    assert_eq!((&v["service"], &v["reason_code"]), (&"".into(), &0.into()));
    // docs/HAPROXY.md shows an answer: it has exactly these fields.
    let doc = std::fs::read_to_string(repo().join("docs/HAPROXY.md")).unwrap();
    let example = doc
        .lines()
        .find(|l| l.starts_with("{\"service\""))
        .expect("the JSON example in docs/HAPROXY.md");
    let example: serde_json::Value = serde_json::from_str(example).unwrap();
    let fields = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        fields(&example),
        fields(&v),
        "docs/HAPROXY.md's JSON example"
    );
    let a = http_exchange(http, "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((a.code, a.header("allow")), (405, Some("GET, HEAD")));
    // HTTP/1.0 (HAProxy's httpchk default) is answered the same way.
    assert_eq!(
        http_exchange(http, "GET /health HTTP/1.0\r\n\r\n").code,
        200
    );
    assert!(outcomes_add_up(&agent));
}

#[test]
fn http_bad_large_and_slow_requests_are_bounded() {
    let (agent, _, _, http) = tcp_agent("initial_state=up");
    assert_eq!(http_exchange(http, "GET /health HTTP/9\r\n\r\n").code, 400);
    assert_eq!(
        http_exchange(http, "\x16\x03\x01 TLS hello\r\n\r\n").code,
        400
    );
    let huge = format!(
        "GET /health HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(5000)
    );
    assert_eq!(http_exchange(http, &huge).code, 431);
    assert_eq!(agent.counter(Counter::HttpBadRequest), 3);
    // A client that connects and says nothing is closed after the request timeout.
    let mut idle = TcpStream::connect(http).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "closed, no answer");
    // One that closes before its request is complete.
    let mut half = TcpStream::connect(http).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    drop(half);
    assert!(eventually(Duration::from_secs(3), || {
        agent.counter(Counter::ConnTimedOut) == 1 && agent.counter(Counter::ConnFailed) == 1
    }));
    assert!(outcomes_add_up(&agent));
}

#[test]
fn connection_limits_are_per_kind_and_never_delay_udp() {
    let (agent, udp, tcp, http) = tcp_agent("initial_state=up services=game");
    // Fill the HTTP side with clients that say nothing, from five addresses (one source may
    // hold 16 connections of a kind: conn_per_source).
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
        .map(|i| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let from: std::net::SocketAddr = format!("127.0.0.{}:0", 1 + i / 16).parse().unwrap();
            s.bind(&from.into()).unwrap();
            s.connect(&http.into()).unwrap();
            s.into()
        })
        .collect();
    assert!(eventually(Duration::from_secs(3), || {
        agent.counter(Counter::ConnDroppedLimit) == 8
    }));
    // The agent-check side and UDP are unaffected.
    assert_eq!(tcp_exchange(tcp, b"service=game\n"), "up ready 100%\n");
    for _ in 0..20 {
        assert!(ask_text(udp, &" ".repeat(64)).starts_with("up ready"));
    }
    // The connection over the limit was closed at once: the next one is, too.
    let mut extra = TcpStream::connect(http).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)));
    drop(idle);
    // Once they are gone (the agent may still be closing them: until then a new connection is
    // over the limit and reset), HTTP answers again.
    let request = format!("GET /health HTTP/1.1\r\nHost: {http}\r\n\r\n");
    assert!(eventually(Duration::from_secs(3), || {
        try_tcp_exchange(http, request.as_bytes()).is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
    }));
    assert!(outcomes_add_up(&agent));
}

#[test]
fn a_connection_flood_does_not_stop_udp_answers() {
    // No datagram rate limit, per source or in all: the probes below come fast (thousands a
    // second while the flood lasts), from one source.
    let (agent, udp, tcp, http) = tcp_agent("initial_state=up rate_per_source=0 rate_global=0");
    let flood = std::thread::spawn(move || {
        // Bounded: 400 connections to each port, closed at once by the client.
        for _ in 0..400 {
            for addr in [tcp, http] {
                if let Ok(s) = TcpStream::connect(addr) {
                    drop(s);
                }
            }
        }
    });
    let mut answered = 0;
    while !flood.is_finished() || answered < 50 {
        assert!(ask_text(udp, &" ".repeat(64)).starts_with("up ready"));
        answered += 1;
    }
    flood.join().unwrap();
    assert_eq!(tcp_exchange(tcp, b""), "up ready 100%\n");
    assert_eq!(http_get(http, "/health").code, 200);
    assert!(eventually(Duration::from_secs(5), || {
        agent.counter(Counter::ConnAccepted) == 802
    }));
    assert!(outcomes_add_up(&agent));
}

#[test]
fn a_panic_while_handling_a_connection_is_caught_and_reported() {
    let (agent, udp, tcp, http) = tcp_agent("initial_state=up");
    agent.inject_fault();
    // The connection being handled is closed without an answer...
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(b"GET /health HTTP/1.1\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{answer:?}");
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::Faults) == 1 && agent.counter(Counter::ConnFailed) == 1
    }));
    // ... and from then on every answer says the agent cannot vouch for the server.
    assert_eq!(tcp_exchange(tcp, b""), "fail ready 100% #agent fault\n");
    assert_eq!(http_get(http, "/health").code, 503);
    assert!(ask_text(udp, &" ".repeat(64)).starts_with("fail ready"));
    assert!(outcomes_add_up(&agent));
}

#[test]
fn allow_list_applies_to_tcp_and_http() {
    let (agent, _, tcp, http) = tcp_agent("initial_state=up allow=10.0.0.0/8");
    for addr in [tcp, http] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "no answer for a source outside allow");
    }
    assert_eq!(agent.counter(Counter::ConnDroppedNotAllowed), 2);
    let (agent, _, tcp, _) = tcp_agent("initial_state=up allow=127.0.0.0/8");
    assert_eq!(tcp_exchange(tcp, b""), "up ready 100%\n");
    drop(agent);
}

#[test]
fn ipv6_and_several_addresses() {
    let agent = Agent::start(
        "listen=[::1]:0 tcp_agent=[::1]:0,127.0.0.1:0 http=[::1]:0,127.0.0.1:0 initial_state=up",
    )
    .unwrap();
    assert_eq!(agent.tcp_agent_addrs().len(), 2);
    for addr in agent.tcp_agent_addrs() {
        assert_eq!(tcp_exchange(*addr, b""), "up ready 100%\n");
    }
    for addr in agent.http_addrs() {
        assert_eq!(http_get(*addr, "/health").code, 200);
    }
}

#[test]
fn stop_answers_stopping_and_closes_the_tcp_sockets() {
    let (agent, _, tcp, http) = tcp_agent("initial_state=up services=game");
    // An agent-check connection waiting for its `agent-send` line when stop comes.
    let mut waiting = TcpStream::connect(tcp).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::ConnAccepted) == 1
    }));
    agent.stop(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    waiting.read_to_string(&mut line).unwrap();
    assert_eq!(line, "stopped ready 100% #agent stopping\n");
    for addr in [tcp, http] {
        let e = TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
}

#[test]
fn config_and_bind_errors_name_the_key_and_value() {
    let e = Agent::start("tcp_agent=localhost:4951")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"tcp_agent\"") && e.contains("\"localhost:4951\""),
        "{e}"
    );
    let e = Agent::start("http=127.0.0.1").err().unwrap().to_string();
    assert!(e.contains("\"http\"") && e.contains("\"127.0.0.1\""), "{e}");
    let e = Agent::start("tcp_agent=127.0.0.1:4951 http=127.0.0.1:4951")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"http\"") && e.contains("tcp_agent"), "{e}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Agent::start(&format!("listen=127.0.0.1:0 http={addr}"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&format!("TCP {addr}")) && e.contains("http="),
        "{e}"
    );
    // Empty: off (the default).
    let agent = Agent::start("listen=127.0.0.1:0 tcp_agent= http=").unwrap();
    assert!(agent.tcp_agent_addrs().is_empty() && agent.http_addrs().is_empty());
}
