//! Drain that knows when it is done, over real sockets: probers of every kind (UDP protocol
//! v1, text line, HAProxy agent-check, HTTP) from several source addresses on loopback ask an
//! agent; after it drains, `drain_status` says who was told and `wait_drained` returns once
//! every prober seen within the window was told `drain_confirm` times and the host's work is
//! done. The attack: a flood of spoofed sources (raw sockets, in a network namespace of the
//! test's own) never completes a drain early.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use lbagent::client::{self, ProbeOptions};
use lbagent::proto::{auth, wire};
use lbagent::{Agent, Error, State};
use socket2::{Domain, Protocol, Socket, Type};

const CONFIG: &str = "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 \
                      services=game initial_state=up rate_per_source=0";

/// A text probe (keepalived's payload) from `from`.
fn text_probe(from: Ipv4Addr, to: SocketAddr, service: &str) -> String {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = if service.is_empty() {
        KEEPALIVED_PAYLOAD.to_vec()
    } else {
        format!("service={service}\n{}", " ".repeat(40)).into_bytes()
    };
    s.send_to(&request, to).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).expect("a text answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A TCP exchange from `from` (agent-check or HTTP), read until the agent closes.
fn tcp_from(from: Ipv4Addr, to: SocketAddr, request: &[u8]) -> String {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(2))
        .unwrap();
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// One probe of each kind, each from its own address.
struct Probers {
    udp: SocketAddr,
    agent_check: SocketAddr,
    http: SocketAddr,
}

impl Probers {
    fn of(agent: &Agent) -> Probers {
        Probers {
            udp: agent.local_addrs()[0],
            agent_check: agent.tcp_agent_addrs()[0],
            http: agent.http_addrs()[0],
        }
    }

    /// Every prober asks once about `service`; returns what the protocol v1 prober was told.
    fn ask_all(&self, service: &str) -> client::Answer {
        text_probe(Ipv4Addr::new(127, 0, 0, 11), self.udp, service);
        let line = format!("service={service}\n");
        tcp_from(
            Ipv4Addr::new(127, 0, 0, 12),
            self.agent_check,
            line.as_bytes(),
        );
        let path = if service.is_empty() {
            "/health".to_string()
        } else {
            format!("/health/{service}")
        };
        tcp_from(
            Ipv4Addr::new(127, 0, 0, 13),
            self.http,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        // Protocol v1 from 127.0.0.1 (the blocking prober binds the wildcard address).
        client::probe(
            self.udp,
            &ProbeOptions {
                service: service.into(),
                ..ProbeOptions::default()
            },
        )
        .expect("a protocol v1 answer")
    }
}

#[test]
fn drain_completes_once_every_prober_was_told_and_the_work_is_done() {
    let agent = Agent::start(&format!("{CONFIG} drain_window_ms=2000 drain_confirm=2")).unwrap();
    let probers = Probers::of(&agent);
    let serving = agent.drain_status("").unwrap();
    assert!(!serving.draining && !serving.complete, "{serving:?}");
    assert_eq!(serving.drain_ms, 0);

    // Four probers, seen while serving: told nothing yet.
    let a = probers.ask_all("");
    assert!(a.is_serving());
    let d = a.drain.expect("the v1 answer carries the drain progress");
    assert!(!d.draining && d.told_you == 0, "{d:?}");
    agent.set_load("", 3, 64).unwrap();
    agent.set_state("", State::Drain, Some("deploy")).unwrap();
    let d = agent.drain_status("").unwrap();
    assert!(d.draining && !d.complete, "{d:?}");
    assert_eq!((d.probers_told, d.probers_pending, d.in_use), (0, 4, 3));

    // Told once each: still pending (drain_confirm=2).
    let a = probers.ask_all("");
    let progress = a.drain.unwrap();
    assert!(progress.draining && !progress.complete, "{progress:?}");
    assert_eq!(progress.told_you, 1);
    assert_eq!(agent.drain_status("").unwrap().probers_pending, 4);
    // Told twice each: every prober knows, but work is in progress.
    let a = probers.ask_all("");
    let progress = a.drain.unwrap();
    assert_eq!((progress.told_you, progress.probers_told), (2, 4));
    assert!(!progress.complete, "in_use is 3: {progress:?}");
    let d = agent.drain_status("").unwrap();
    assert_eq!((d.probers_told, d.probers_pending), (4, 0));
    assert!(!d.complete);
    match agent.wait_drained("", Duration::from_millis(50)) {
        Err(e @ Error::NotDrained(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("4 of 4 probers told") && text.contains("in_use 3"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The work is done: complete, and the next answer says so.
    agent.set_load("", 0, 64).unwrap();
    let done = agent.wait_drained("", Duration::from_secs(5)).unwrap();
    assert!(done.complete && done.drain_ms > 0, "{done:?}");
    let a = client::probe(probers.udp, &ProbeOptions::default()).unwrap();
    let progress = a.drain.unwrap();
    assert!(progress.complete, "{progress:?}");

    // A serving answer starts a prober's count again: back up, asked, drained again.
    agent.set_state("", State::Up, None).unwrap();
    text_probe(Ipv4Addr::new(127, 0, 0, 11), probers.udp, "");
    agent.set_state("", State::Drain, None).unwrap();
    let d = agent.drain_status("").unwrap();
    assert_eq!((d.probers_told, d.probers_pending), (3, 1), "{d:?}");
    assert!(!d.complete);
    // A prober that stops asking no longer counts once the window (2 s) has passed.
    assert!(eventually(Duration::from_secs(10), || agent
        .drain_status("")
        .unwrap()
        .complete));
    let d = agent.drain_status("").unwrap();
    assert_eq!((d.probers_told, d.probers_pending), (0, 0), "{d:?}");
}

#[test]
fn a_service_drain_waits_for_the_probers_of_that_service() {
    let agent = Agent::start(&format!("{CONFIG} drain_window_ms=60000 drain_confirm=1")).unwrap();
    let probers = Probers::of(&agent);
    probers.ask_all("game");
    // A director asking about the whole server only.
    text_probe(Ipv4Addr::new(127, 0, 0, 20), probers.udp, "");
    agent.set_load("game", 2, 10).unwrap();
    agent.set_state("game", State::Drain, None).unwrap();
    let d = agent.drain_status("game").unwrap();
    assert!(d.draining && !d.complete);
    assert_eq!((d.probers_pending, d.in_use), (4, 2), "{d:?}");
    // The whole server is still serving.
    assert!(!agent.drain_status("").unwrap().draining);
    probers.ask_all("game");
    agent.set_load("game", 0, 10).unwrap();
    let d = agent.wait_drained("game", Duration::from_secs(5)).unwrap();
    assert_eq!((d.probers_told, d.probers_pending), (4, 0));
    // The whole server drained: every prober counts, the server-wide one too, and the
    // services' load.
    agent.set_load("game", 1, 10).unwrap();
    agent.set_state("", State::Drain, None).unwrap();
    let d = agent.drain_status("").unwrap();
    assert_eq!(
        (d.probers_told, d.probers_pending, d.in_use),
        (4, 1, 1),
        "{d:?}"
    );
    text_probe(Ipv4Addr::new(127, 0, 0, 20), probers.udp, "");
    agent.set_load("game", 0, 10).unwrap();
    assert!(agent.drain_status("").unwrap().complete);
    // No such service.
    assert!(matches!(
        agent.drain_status("nope"),
        Err(Error::UnknownService)
    ));
}

#[test]
fn with_no_prober_only_the_work_counts_and_weight_zero_is_a_drain() {
    let (agent, _) = agent("initial_state=up");
    agent.set_load("", 1, 0).unwrap();
    agent.set_weight("", 0).unwrap();
    let d = agent.drain_status("").unwrap();
    assert!(d.draining && !d.complete && d.state == State::Up, "{d:?}");
    assert!(matches!(
        agent.wait_drained("", Duration::ZERO),
        Err(Error::NotDrained(_))
    ));
    agent.set_load("", 0, 0).unwrap();
    assert!(agent.wait_drained("", Duration::ZERO).unwrap().complete);
    // Serving again: no drain; waiting for one says so.
    agent.set_weight("", 100).unwrap();
    let e = agent
        .wait_drained("", Duration::from_millis(30))
        .unwrap_err();
    assert!(e.to_string().contains("not draining"), "{e}");
}

/// Spoofed UDP datagrams: an IPv4 header with the given source, built by hand and sent on a
/// raw socket (IP_HDRINCL).
fn spoofed(from: Ipv4Addr, port: u16, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let IpAddr::V4(dst) = to.ip() else {
        panic!("IPv4 only")
    };
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xFFFF) + (sum >> 16);
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&port.to_be_bytes());
    p[22..24].copy_from_slice(&to.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    p[28..].copy_from_slice(payload);
    p
}

/// The attack, mounted for real: in a network namespace of its own, a raw socket floods the
/// agent with text and protocol v1 probes from thousands of forged sources, before and during
/// a drain, while a real director asks at its own pace. What must hold: the prober table stays
/// bounded, the drain is never reported complete while the real director has not been told
/// (the flood only delays it), and it completes once the flood is over and the window passed.
/// With `auth=required`, probes forged in the director's own name are not answered with a
/// status, so they cannot count as telling it.
#[test]
fn a_flood_of_spoofed_probers_never_completes_a_drain_early() {
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread, which owns no sockets.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
        ip(&["addr", "add", "10.99.0.2/32", "dev", "lo"]);
        // Answers to the forged sources go nowhere.
        ip(&["route", "add", "blackhole", "198.18.0.0/15"]);
        let keys = scratch_dir("drain-flood").join("keys");
        std::fs::write(&keys, "7 000102030405060708090a0b0c0d0e0f\n").unwrap();
        std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let agent = Agent::start(&format!(
            "listen=10.99.0.1:0 initial_state=up rate_per_source=0 rate_global=0 \
             drain_window_ms=1500 drain_confirm=2 key_file={} auth=required text=on",
            keys.display()
        ))
        .unwrap();
        let to = agent.local_addrs()[0];
        let key = client::load_key(&keys, None).unwrap();
        let mut nonce = 0u64;
        let mut director = |n: usize| {
            // The real director: sealed protocol v1 probes from 10.99.0.2, asking for the
            // drain progress.
            // Like keepalived, it retries a probe that got no answer (a flood can fill the
            // agent's receive buffer).
            let s = UdpSocket::bind("10.99.0.2:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut answers = Vec::new();
            for _ in 0..n {
                let answer = (0..10).find_map(|_| {
                    nonce += 1;
                    let mut buf = [0u8; 512];
                    let len = wire::encode_probe(nonce, b"", 200, &mut buf);
                    buf[7] |= wire::FLAG_DRAIN as u8;
                    let len = auth::seal(&key, &mut buf, len, auth::unix_ms());
                    s.send_to(&buf[..len], to).unwrap();
                    loop {
                        let n = s.recv(&mut buf).ok()?;
                        if let Ok(Some(a)) =
                            client::read_answer_keyed(&buf[..n], nonce, Duration::ZERO, Some(&key))
                        {
                            return Some(a);
                        }
                    }
                });
                answers.push(answer.expect("an answer within ten tries"));
            }
            answers
        };
        let raw = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        let mut sent = 0u32;
        let mut flood = |count: u32| {
            for i in 0..count {
                if i % 100 == 99 {
                    // Bursts of 100: the agent reads them (a debug build is slow); the point
                    // is the number of sources, not the rate.
                    std::thread::sleep(Duration::from_millis(10));
                }
                let n = sent + i;
                let from = Ipv4Addr::from(0xC612_0000 + (n % 60_000) + 1);
                let mut probe = [0u8; 64];
                let payload: &[u8] = if n % 2 == 0 {
                    KEEPALIVED_PAYLOAD
                } else {
                    let len = wire::encode_probe(u64::from(n), b"", 64, &mut probe);
                    &probe[..len]
                };
                let packet = spoofed(from, 40_000 + (n % 20_000) as u16, to, payload);
                let _ = raw.send_to(&packet, &to.into());
            }
            sent += count;
        };

        director(1);
        flood(3000);
        // The flood reached the agent: more probers than the table holds were seen.
        assert!(eventually(Duration::from_secs(5), || agent
            .drain_status("")
            .map(|d| d.probers_untracked)
            .unwrap_or(false)));
        agent.set_state("", State::Drain, None).unwrap();
        let d = agent.drain_status("").unwrap();
        assert!(!d.complete, "{d:?}");
        assert!(
            d.probers_told + d.probers_pending <= 256,
            "bounded table: {d:?}"
        );
        // The director is told twice, while the flood goes on: still not complete.
        for _ in 0..4 {
            director(1);
            flood(1000);
            let d = agent.drain_status("").unwrap();
            assert!(!d.complete, "complete during the flood: {d:?}");
        }
        // Once the flood is over and the window has passed, only the real director counts.
        std::thread::sleep(Duration::from_millis(1600));
        assert!(!agent.drain_status("").unwrap().probers_untracked);
        // Forged probes in the director's own name (not sealed) are answered with ERROR 2
        // only: they do not count as telling it. A fresh drain, seen by the director once
        // while serving.
        agent.set_state("", State::Up, None).unwrap();
        director(1);
        agent.set_state("", State::Drain, None).unwrap();
        for i in 0..200u16 {
            let mut probe = [0u8; 64];
            let len = wire::encode_probe(u64::from(i), b"", 64, &mut probe);
            let packet = spoofed(Ipv4Addr::new(10, 99, 0, 2), 50_000 + i, to, &probe[..len]);
            raw.send_to(&packet, &to.into()).unwrap();
        }
        assert!(eventually(Duration::from_secs(5), || agent
            .counter(lbagent::Counter::AnsweredError)
            >= 200));
        let d = agent.drain_status("").unwrap();
        assert!(!d.probers_untracked && !d.complete, "{d:?}");
        assert_eq!((d.probers_told, d.probers_pending), (0, 1), "{d:?}");
        let answers = director(2);
        let last = answers.last().unwrap().drain.unwrap();
        assert_eq!(last.told_you, 2);
        let d = agent.drain_status("").unwrap();
        assert!(d.complete, "{d:?}");
        assert_eq!(d.probers_told, 1);
    })
    .join()
    .unwrap();
}
