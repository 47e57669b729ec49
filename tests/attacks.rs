//! The attacks of the hardening issue, mounted for real in network namespaces the tests create
//! (raw sockets, spoofed sources, forged ICMP errors), each bounded in count and time, with
//! what must hold asserted. Each test prints its figures (`-- --nocapture`): the share of
//! real checks answered during the attack.
//!
//! - An observer that answers every probe first, with every kind of forgery, cannot end a
//!   keyed probe: the client API, `lbagent-probe` in every mode, `lbagent-director`'s track
//!   file and the C prober return the real state; without a key the first reply still decides.
//! - Junk sprayed at the prober's port, spoofed from the agent's address, ends no keyed probe.
//! - Junk spoofed from the director's own address, or from many sources at twice
//!   `rate_global`, does not starve the director's sealed probes (>= 99 % answered).
//! - A captured sealed probe replayed from several sources gets nothing; counted.
//! - Datagrams sent in one UDP_SEGMENT (GSO) send are each answered and counted once.
//! - One source holding idle connections cannot take every TCP slot; UDP is unaffected.
//! - One IPv6 /64 is one source for the rate limit.
//! - Subscriptions (pushed changes): an unsealed subscription spoofed from a victim's address
//!   makes the agent push nothing to it, and one from outside `allow=` gets nothing at all; a
//!   captured sealed subscription replayed from a victim's address gets nothing either.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::netns::{RawSender, in_namespace, ip, paced, percent};
use common::*;
use lbagent::client::{self, Completion, ProbeError, ProbeOptions, Prober, load_key};
use lbagent::keys::Key;
use lbagent::proto::{auth, wire};
use lbagent::{Agent, Counter, State};

const SECRET: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";

fn key_file(name: &str, text: &str) -> PathBuf {
    let dir = scratch_dir(&format!("attacks-{name}"));
    let path = dir.join("keys");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(a.ip().to_ipv4_mapped().unwrap(), a.port()),
    }
}

fn status_datagram(nonce: u64, state: State, seal: Option<&Key>) -> Vec<u8> {
    let fields = wire::StatusFields {
        flags: 0,
        nonce,
        instance_id: 0xbad,
        generation: 1,
        state: state as u8,
        reason: 0,
        weight_pct: 100,
        since_ms: 0,
        in_use: 0,
        capacity: 0,
        message: b"forged",
    };
    let mut out = [0u8; 512];
    let mut len = wire::encode_status(&fields, 300, &mut out).unwrap();
    if let Some(k) = seal {
        len = auth::seal(k, &mut out, len, auth::unix_ms());
    }
    out[..len].to_vec()
}

/// Every kind of forged reply to `probe` an observer can send without the key: junk, text,
/// truncated and malformed protocol, the probe echoed, STATUS DOWN unsealed, sealed with an
/// unknown key id, sealed with the right key id and a wrong MAC, ERROR "authentication
/// required" and ERROR "unsupported version".
fn forgeries(probe: &[u8]) -> Vec<Vec<u8>> {
    let nonce = if probe.len() >= 16 && probe.starts_with(&wire::MAGIC) {
        u64::from_be_bytes(probe[8..16].try_into().unwrap())
    } else {
        0
    };
    let stranger = Key::new(99, &[7; 32]).unwrap();
    let wrong_secret = Key::new(7, &[8; 32]).unwrap();
    let mut error = [0u8; 64];
    let auth_required = wire::encode_error(nonce, wire::ERROR_AUTH_REQUIRED, &mut error);
    let auth_required = error[..auth_required].to_vec();
    let version = wire::encode_error(nonce, wire::ERROR_UNSUPPORTED_VERSION, &mut error);
    vec![
        vec![0],
        b"down forged\n".to_vec(),
        b"LBAP".to_vec(),
        probe.to_vec(),
        status_datagram(nonce, State::Down, None),
        status_datagram(nonce, State::Down, Some(&stranger)),
        status_datagram(nonce, State::Down, Some(&wrong_secret)),
        auth_required,
        error[..version].to_vec(),
    ]
}

/// What the injector does with each datagram.
#[derive(Clone, Copy)]
struct Plan {
    /// Relay it to the agent (and its answer back), after `delay`.
    agent: Option<SocketAddr>,
    delay: Duration,
    /// Send every forgery first (only to sealed probes unless `forge_unsealed`).
    forge: bool,
    forge_unsealed: bool,
}

/// An observer on the path that answers every probe first: a relay at `front` (the address
/// probers are given) that, for each datagram, sends every forgery and forged ICMP port and
/// host unreachable errors back, then relays it to the agent and the agent's answer back.
struct Injector {
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    forged: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Injector {
    fn start(front: SocketAddr, plan: Plan) -> Injector {
        let socket = UdpSocket::bind(front).unwrap();
        let front = socket.local_addr().unwrap();
        let back = UdpSocket::bind("127.0.0.4:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        back.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forged = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, forged) = (stop.clone(), forged.clone());
            std::thread::spawn(move || {
                let raw = RawSender::new();
                let mut clients: HashMap<u64, SocketAddr> = HashMap::new();
                let mut delayed: std::collections::VecDeque<(Instant, Vec<u8>)> =
                    Default::default();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let probe = &buf[..n];
                        let sealed = n >= 8 && probe[7] & 1 != 0;
                        let forge = plan.forge && (sealed || plan.forge_unsealed);
                        for forgery in forgeries(probe).into_iter().filter(|_| forge) {
                            socket.send_to(&forgery, from).unwrap();
                            forged.fetch_add(1, Ordering::Relaxed);
                        }
                        for code in [3, 1].into_iter().filter(|_| forge) {
                            raw.icmp_unreachable(*v4(front).ip(), v4(from), v4(front), probe, code);
                            forged.fetch_add(1, Ordering::Relaxed);
                        }
                        if plan.agent.is_some() {
                            if n >= 16 {
                                let nonce = u64::from_be_bytes(probe[8..16].try_into().unwrap());
                                clients.insert(nonce, from);
                            }
                            delayed.push_back((Instant::now() + plan.delay, probe.to_vec()));
                        }
                    }
                    while delayed.front().is_some_and(|(at, _)| *at <= Instant::now()) {
                        let (_, probe) = delayed.pop_front().unwrap();
                        back.send_to(&probe, plan.agent.unwrap()).unwrap();
                    }
                    while let Ok((n, _)) = back.recv_from(&mut buf) {
                        if n < 16 {
                            continue;
                        }
                        let nonce = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                        if let Some(client) = clients.remove(&nonce) {
                            socket.send_to(&buf[..n], client).unwrap();
                        }
                    }
                }
            })
        };
        Injector {
            front,
            stop,
            forged,
            thread: Some(thread),
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn probe_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
        .args(args)
        .output()
        .unwrap()
}

/// An event loop around `prober` until nothing is in flight (at most 20 s).
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

/// The state the real agent reports in these tests: UP at 60 %, which no forgery says.
fn real_agent(extra: &str) -> (Agent, SocketAddr) {
    let agent = Agent::start(&format!("listen=127.0.0.3:0 initial_state=up {extra}")).unwrap();
    agent.set_weight("", 60).unwrap();
    let addr = agent.local_addrs()[0];
    (agent, addr)
}

fn is_real(a: &client::Answer) -> bool {
    a.state == State::Up && a.weight_pct == 60 && a.message.is_empty()
}

#[test]
fn an_observer_answering_first_cannot_end_a_keyed_probe_in_any_mode() {
    let keys = key_file("observer", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        let (_agent, agent_addr) =
            real_agent(&format!("key_file={} rate_per_source=0", keys.display()));
        let injector = Injector::start(
            "127.0.0.2:0".parse().unwrap(),
            Plan {
                agent: Some(agent_addr),
                delay: Duration::ZERO,
                forge: true,
                forge_unsealed: true,
            },
        );
        let target = injector.front;
        let t = target.to_string();
        let k = keys.to_str().unwrap();
        let options = ProbeOptions {
            key: Some(load_key(&keys, None).unwrap()),
            timeout: Duration::from_millis(1500),
            ..ProbeOptions::default()
        };
        // The blocking probe.
        for _ in 0..5 {
            let a = client::probe(target, &options).expect("the real answer");
            assert!(is_real(&a), "{a:?}");
        }
        // The non-blocking prober, several probes in flight to the same target.
        let mut prober = Prober::new(options.clone()).unwrap();
        for token in 0..10 {
            prober.send(target, "", token).unwrap();
        }
        let out = event_loop(&mut prober);
        assert_eq!(out.len(), 10);
        for c in &out {
            assert!(
                c.result.as_ref().is_ok_and(is_real),
                "token {}: {:?}",
                c.token,
                c.result
            );
        }
        assert_eq!(
            prober.stats().diagnostics,
            0,
            "the real answer came in time"
        );
        // lbagent-probe in every mode: exit codes, JSON, the ldirectord form, --watch.
        let code = |args: &[&str]| probe_cli(args).status.code().unwrap();
        assert_eq!(code(&[&t, "--key-file", k]), 0);
        assert_eq!(code(&[&t, "--key-file", k, "--keepalived"]), 0);
        assert_eq!(code(&[&t, "--key-file", k, "--keepalived-dynamic"]), 62);
        assert_eq!(code(&[&t, "--key-file", k, "--nagios"]), 0);
        let out = probe_cli(&[&t, "--key-file", k, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["serving"].as_bool(), v["weight_pct"].as_u64()),
            (Some(true), Some(60)),
            "{v}"
        );
        let port = target.port().to_string();
        let ldirectord = probe_cli(&[
            "--key-file",
            k,
            "--agent-port",
            &port,
            "192.0.2.1",
            "80",
            "127.0.0.2",
            "80",
        ]);
        assert_eq!(ldirectord.status.code(), Some(0), "{ldirectord:?}");
        let mut watch = Command::new(env!("CARGO_BIN_EXE_lbagent-probe"))
            .args([
                "--watch",
                "--interval",
                "200",
                "--json",
                "--key-file",
                k,
                &t,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(watch.id() as libc::pid_t, libc::SIGTERM) };
        let mut lines = String::new();
        watch
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut lines)
            .unwrap();
        let _ = watch.wait();
        let lines: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!lines.is_empty());
        for v in &lines {
            assert_eq!(v["serving"].as_bool(), Some(true), "{v}");
        }
        // The C prober (lbagent_prober_*, what Python and C++ wrap).
        let results = common::c_prober::probe_all(
            &format!("key_file={} timeout_ms=1500", keys.display()),
            &[target; 4],
        );
        assert_eq!(results, vec![(0, State::Up as i32, 60); 4]);
        // lbagent-director's track file: never 1 (down) while the forgeries say DOWN.
        let dir = scratch_dir("attacks-director");
        let targets = dir.join("targets");
        std::fs::write(&targets, format!("web {target} key={}\n", keys.display())).unwrap();
        let track = dir.join("track");
        std::fs::create_dir_all(&track).unwrap();
        let mut director = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
            .args([
                "--interval",
                "300",
                "--timeout",
                "250",
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
        let read = || std::fs::read_to_string(track.join("web")).unwrap_or_default();
        let up = eventually(Duration::from_secs(10), || read().trim() == "0");
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            seen.push(read());
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(director.id() as libc::pid_t, libc::SIGTERM) };
        let mut log = String::new();
        director
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        let _ = director.wait();
        assert!(up, "{log}");
        assert!(seen.iter().all(|v| v.trim() == "0"), "{seen:?}\n{log}");
        assert!(!log.contains("-> down"), "{log}");
        let forged = injector.forged.load(Ordering::Relaxed);
        eprintln!(
            "observer: {forged} forged replies (9 datagrams and 2 ICMP errors per probe), every keyed probe got the real state"
        );
    });
}

#[test]
fn keyed_probe_without_a_sealed_answer_fails_at_its_deadline_naming_what_came() {
    let keys = key_file("deadline", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        // The agent is gone; only the injector answers, and only the sealed probe (not the
        // unsealed diagnostic, whose answer would make the failure a wrong key).
        let injector = Injector::start(
            "127.0.0.2:0".parse().unwrap(),
            Plan {
                agent: None,
                delay: Duration::ZERO,
                forge: true,
                forge_unsealed: false,
            },
        );
        let target = injector.front;
        let timeout = Duration::from_millis(600);
        let options = ProbeOptions {
            key: Some(load_key(&keys, None).unwrap()),
            timeout,
            ..ProbeOptions::default()
        };
        let started = Instant::now();
        let e = client::probe(target, &options).unwrap_err();
        assert!(
            started.elapsed() >= timeout,
            "ended before its deadline: {e}"
        );
        assert!(matches!(e, ProbeError::Unauthenticated { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("no authenticated answer within 600 ms; saw "),
            "{text}"
        );
        for kind in [
            "unsealed answer",
            "sealed with key id 99",
            "MAC is wrong",
            "ICMP port unreachable",
            "datagram",
        ] {
            assert!(text.contains(kind), "{kind}: {text}");
        }
        eprintln!("deadline: {text}");
        // The C prober: LBAGENT_ERR_UNAUTHENTICATED (21), at the deadline.
        let started = Instant::now();
        let results = common::c_prober::probe_all(
            &format!("key_file={} timeout_ms=600", keys.display()),
            &[target],
        );
        assert!(started.elapsed() >= timeout);
        assert_eq!(results[0].0, 21, "{results:?}");
        // lbagent-probe: no valid answer (2), and the line says why.
        let out = probe_cli(&[
            &target.to_string(),
            "--key-file",
            keys.to_str().unwrap(),
            "--timeout",
            "600",
        ]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("saw ") && stderr.contains("ICMP port unreachable"),
            "{stderr}"
        );
    });
}

#[test]
fn without_a_key_the_first_reply_still_decides_at_once() {
    in_namespace(|| {
        let (_agent, agent_addr) = real_agent("rate_per_source=0");
        let injector = Injector::start(
            "127.0.0.2:0".parse().unwrap(),
            Plan {
                agent: Some(agent_addr),
                delay: Duration::ZERO,
                forge: true,
                forge_unsealed: true,
            },
        );
        let options = ProbeOptions {
            timeout: Duration::from_secs(5),
            ..ProbeOptions::default()
        };
        let started = Instant::now();
        let e = client::probe(injector.front, &options).unwrap_err();
        // Whichever forgery comes first decides: junk (not an agent) or a forged ICMP error.
        assert!(
            matches!(
                e,
                ProbeError::NotAnAgent(_) | ProbeError::Refused | ProbeError::Unreachable(_)
            ),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(4), "not at once");
    });
}

#[test]
fn junk_sprayed_at_the_probers_port_ends_no_keyed_probe() {
    let keys = key_file("spray", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        let (_agent, real) = real_agent(&format!("key_file={} rate_per_source=0", keys.display()));
        // A path with 20 ms of latency (a relay that forges nothing), so that every probe is
        // in flight long enough for the junk to reach it.
        let relay = Injector::start(
            "127.0.0.2:0".parse().unwrap(),
            Plan {
                agent: Some(real),
                delay: Duration::from_millis(20),
                forge: false,
                forge_unsealed: false,
            },
        );
        let agent_addr = relay.front;
        let mut prober = Prober::new(ProbeOptions {
            key: Some(load_key(&keys, None).unwrap()),
            timeout: Duration::from_millis(1000),
            ..ProbeOptions::default()
        })
        .unwrap();
        // The director's fixed port, known to the attacker.
        let port =
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn6>(prober.as_raw_fd())
                .unwrap()
                .port();
        let prober_addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), port);
        let stop = Arc::new(AtomicBool::new(false));
        let sprayer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let raw = RawSender::new();
                // 1-byte datagrams from the agent's address and port, 20,000 per second.
                paced(100_000, 20_000, Duration::from_secs(5), |_| {
                    raw.udp(v4(agent_addr), prober_addr, &[0]);
                    !stop.load(Ordering::Relaxed)
                })
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let mut answered = 0;
        let total = 40;
        for round in 0..4 {
            for i in 0..10 {
                prober.send(agent_addr, "", round * 10 + i).unwrap();
            }
            for c in event_loop(&mut prober) {
                match &c.result {
                    Ok(a) if is_real(a) => answered += 1,
                    other => eprintln!("spray: probe {} got {other:?}", c.token),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let sent = sprayer.join().unwrap();
        eprintln!(
            "spray: {sent} junk datagrams at the prober's port; {answered} of {total} keyed probes answered ({} %)",
            percent(answered, total)
        );
        assert_eq!(answered, total);
    });
}

/// Sends `count` sealed probes through `prober` at `rate` per second to `target` while the
/// caller floods; returns how many got the real answer.
fn sealed_probes_answered(prober: &mut Prober, target: SocketAddr, count: usize) -> usize {
    let mut answered = 0;
    let mut out = Vec::new();
    paced(count, 50, Duration::from_secs(30), |i| {
        prober.send(target, "", i as u64).unwrap();
        prober.receive(&mut out);
        true
    });
    out.extend(event_loop(prober));
    for c in &out {
        match &c.result {
            Ok(a) if is_real(a) => answered += 1,
            Ok(a) => panic!("a forged answer accepted: {a:?}"),
            Err(_) => {}
        }
    }
    assert_eq!(out.len(), count);
    answered
}

#[test]
fn junk_spoofed_from_the_directors_address_does_not_starve_its_sealed_probes() {
    let keys = key_file("own-address", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        // The defaults: 100 per source, 10,000 in all.
        let (agent, agent_addr) = real_agent(&format!("key_file={}", keys.display()));
        let mut director = Prober::new(ProbeOptions {
            key: Some(load_key(&keys, None).unwrap()),
            timeout: Duration::from_millis(500),
            ..ProbeOptions::default()
        })
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let raw = RawSender::new();
                // The director's own address (127.0.0.1), any port, 3,000 per second.
                paced(30_000, 3000, Duration::from_secs(10), |i| {
                    let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 20_000 + (i % 40_000) as u16);
                    raw.udp(from, v4(agent_addr), b"junk");
                    !stop.load(Ordering::Relaxed)
                })
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let count = 100;
        let answered = sealed_probes_answered(&mut director, agent_addr, count);
        stop.store(true, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        eprintln!(
            "own address: {sent} junk datagrams from the director's address at 3,000/s; {answered} of {count} sealed probes answered ({} %); agent dropped {} rate-limited, {} by key budget",
            percent(answered, count),
            agent.counter(Counter::DroppedRateLimited),
            agent.counter(Counter::DroppedKeyLimit),
        );
        assert!(answered * 100 >= count * 99, "{answered} of {count}");
        assert!(
            agent.counter(Counter::DroppedRateLimited) > 0,
            "the flood was limited"
        );
    });
}

#[test]
fn junk_from_many_spoofed_sources_at_twice_rate_global_does_not_starve_sealed_probes() {
    let keys = key_file("many-sources", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        let (agent, agent_addr) =
            real_agent(&format!("key_file={} rate_global=2000", keys.display()));
        let mut director = Prober::new(ProbeOptions {
            key: Some(load_key(&keys, None).unwrap()),
            timeout: Duration::from_millis(500),
            ..ProbeOptions::default()
        })
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let raw = RawSender::new();
                // 4,000 per second (twice rate_global) from 200,000 addresses of 127.0.0.0/8.
                let mut x: u32 = 0x1234_5678;
                paced(40_000, 4000, Duration::from_secs(10), |_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let n = 0x10_0000 + x % 200_000;
                    let from = SocketAddrV4::new(
                        Ipv4Addr::from(0x7f00_0000 | n),
                        1024 + (x >> 20) as u16 % 50_000,
                    );
                    raw.udp(from, v4(agent_addr), b"junk");
                    !stop.load(Ordering::Relaxed)
                })
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let count = 100;
        let answered = sealed_probes_answered(&mut director, agent_addr, count);
        stop.store(true, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        eprintln!(
            "many sources: {sent} junk datagrams at 4,000/s (rate_global=2000); {answered} of {count} sealed probes answered ({} %); agent dropped {} over the global limit",
            percent(answered, count),
            agent.counter(Counter::DroppedGlobalLimit),
        );
        assert!(answered * 100 >= count * 99, "{answered} of {count}");
        assert!(
            agent.counter(Counter::DroppedGlobalLimit) > 0,
            "the flood was limited"
        );
    });
}

#[test]
fn a_replayed_sealed_probe_gets_nothing_from_any_source() {
    let keys = key_file("replay", &format!("7 {SECRET}\n"));
    in_namespace(move || {
        let (agent, agent_addr) = real_agent(&format!("key_file={}", keys.display()));
        let key = load_key(&keys, None).unwrap();
        let mut probe = [0u8; 512];
        let body = wire::encode_probe(0x5eed, b"", 128 - wire::AUTH_TRAILER_LEN, &mut probe);
        let n = auth::seal(&key, &mut probe, body, auth::unix_ms());
        let captured = probe[..n].to_vec();
        // The director's probe, answered.
        let director = UdpSocket::bind("127.0.0.1:0").unwrap();
        director
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        director.send_to(&captured, agent_addr).unwrap();
        let mut buf = [0u8; 512];
        assert!(director.recv_from(&mut buf).is_ok());
        // Replayed 50 times, from five other addresses and the director's own.
        let replayers: Vec<UdpSocket> = (5..=9)
            .map(|i| UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap())
            .chain(std::iter::once(director))
            .collect();
        let mut answers = 0;
        for r in &replayers {
            r.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        for i in 0..50 {
            let r = &replayers[i % replayers.len()];
            r.send_to(&captured, agent_addr).unwrap();
            if r.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
        for r in &replayers {
            r.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while r.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
        let counted = eventually(Duration::from_secs(2), || {
            agent.counter(Counter::DroppedReplay) == 50
        });
        eprintln!(
            "replay: 50 replays of a captured sealed probe from 6 addresses got {answers} answers; dropped_replay {}",
            agent.counter(Counter::DroppedReplay)
        );
        assert_eq!(answers, 0);
        assert!(
            counted,
            "dropped_replay {}",
            agent.counter(Counter::DroppedReplay)
        );
        assert_eq!(agent.counter(Counter::AnsweredStatus), 1);
    });
}

#[test]
fn datagrams_sent_in_one_gso_send_are_each_answered_and_counted_once() {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
    in_namespace(|| {
        let (agent, agent_addr) = real_agent("rate_per_source=0");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Ten 328-byte probes, one UDP_SEGMENT send: one 3,280-byte GSO packet on loopback.
        let mut payload = Vec::new();
        for nonce in 1..=10u64 {
            let mut p = [0u8; 328];
            assert_eq!(wire::encode_probe(nonce, b"", 328, &mut p), 328);
            payload.extend_from_slice(&p);
        }
        let segment: u16 = 328;
        let to = SockaddrIn::from(v4(agent_addr));
        let iov = [std::io::IoSlice::new(&payload)];
        let sent = sendmsg(
            socket.as_raw_fd(),
            &iov,
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::empty(),
            Some(&to),
        )
        .unwrap();
        assert_eq!(sent, payload.len());
        let mut nonces = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            match wire::decode_reply(&buf[..n]) {
                Ok(wire::Reply::Status(s)) => nonces.push(s.nonce),
                other => panic!("not a STATUS: {other:?}"),
            }
        }
        nonces.sort();
        let outcomes = || {
            Counter::DATAGRAM_OUTCOMES
                .iter()
                .map(|c| agent.counter(*c))
                .sum::<u64>()
        };
        let counted = eventually(Duration::from_secs(2), || {
            agent.counter(Counter::Received) == 10 && outcomes() == 10
        });
        eprintln!(
            "gso: 10 probes in one UDP_SEGMENT send: {} answers, received {}, outcomes {}",
            nonces.len(),
            agent.counter(Counter::Received),
            outcomes()
        );
        assert_eq!(nonces, (1..=10).collect::<Vec<u64>>());
        assert!(counted);
        assert_eq!(agent.counter(Counter::AnsweredStatus), 10);
    });
}

/// A TCP connection from `from` (port chosen by the system) to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// One real health check from `from`: an agent-check with `agent-send` "game\n", or an HTTP
/// GET; true when the whole answer came.
fn real_check(from: Ipv4Addr, to: SocketAddr, http: bool) -> bool {
    let Ok(mut s) = connect_from(from, to) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request: &[u8] = if http {
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    } else {
        b"game\n"
    };
    if s.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    if http {
        answer.starts_with(b"HTTP/1.1 200")
    } else {
        answer.starts_with(b"up") && answer.ends_with(b"\n")
    }
}

#[test]
fn one_source_cannot_take_every_tcp_slot_and_udp_is_unaffected() {
    in_namespace(|| {
        let agent = Agent::start(
            "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 services=game \
             initial_state=up rate_per_source=0",
        )
        .unwrap();
        let udp = agent.local_addrs()[0];
        let tcp_agent = agent.tcp_agent_addrs()[0];
        let http = agent.http_addrs()[0];
        let attacker = Ipv4Addr::new(127, 0, 0, 2);
        let checker = Ipv4Addr::new(127, 0, 0, 3);
        let stop = Arc::new(AtomicBool::new(false));
        // The attacker keeps 70 idle connections to http= and 200 to tcp_agent= open,
        // opening a new one whenever the agent closes one; it never sends, never closes.
        let attack = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held: Vec<(SocketAddr, Option<TcpStream>)> = (0..70)
                    .map(|_| (http, None))
                    .chain((0..200).map(|_| (tcp_agent, None)))
                    .collect();
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (to, conn) in held.iter_mut() {
                        let closed = conn.as_mut().is_none_or(|s| {
                            let mut b = [0u8; 256];
                            !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        });
                        if closed {
                            *conn = connect_from(attacker, *to).ok().inspect(|s| {
                                s.set_nonblocking(true).unwrap();
                                opened += 1;
                            });
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        let (mut agent_ok, mut http_ok, mut udp_ok) = (0, 0, 0);
        let total = 40;
        for _ in 0..total {
            agent_ok += usize::from(real_check(checker, tcp_agent, false));
            http_ok += usize::from(real_check(checker, http, true));
            let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(checker), 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s.send_to(KEEPALIVED_PAYLOAD, udp).unwrap();
            let mut buf = [0u8; 64];
            udp_ok += usize::from(
                s.recv_from(&mut buf)
                    .is_ok_and(|(n, _)| buf[..n].starts_with(b"up")),
            );
        }
        stop.store(true, Ordering::Relaxed);
        let opened = attack.join().unwrap();
        eprintln!(
            "tcp slots: one source holding 70 idle http= and 200 idle tcp_agent= connections ({opened} opened): real checks answered: agent-check {agent_ok}/{total} ({} %), HTTP {http_ok}/{total} ({} %), UDP {udp_ok}/{total}; conn_dropped_source_limit {}, conn_dropped_limit {}",
            percent(agent_ok, total),
            percent(http_ok, total),
            agent.counter(Counter::ConnDroppedSourceLimit),
            agent.counter(Counter::ConnDroppedLimit),
        );
        assert!(
            agent_ok * 100 >= total * 99,
            "agent-check {agent_ok}/{total}"
        );
        assert!(http_ok * 100 >= total * 99, "HTTP {http_ok}/{total}");
        assert_eq!(udp_ok, total, "UDP is unaffected");
        assert!(agent.counter(Counter::ConnDroppedSourceLimit) > 0);
    });
}

#[test]
fn one_ipv6_64_is_one_source_for_the_rate_limit() {
    in_namespace(|| {
        // Every address of two /64s is local here (AnyIP), so a socket can use any of them.
        ip(&[
            "-6",
            "route",
            "add",
            "local",
            "fd00:6c62:1::/64",
            "dev",
            "lo",
        ]);
        ip(&[
            "-6",
            "route",
            "add",
            "local",
            "fd00:6c62:2::/64",
            "dev",
            "lo",
        ]);
        // Binding to an address that is local by route, not assigned (this namespace only:
        // /proc/sys/net is the calling thread's).
        std::fs::write("/proc/sys/net/ipv6/ip_nonlocal_bind", "1").unwrap();
        // Sends one text probe from each of `count` fresh addresses of fd00:6c62:PREFIX::/64
        // at once; returns how many the agent answered (its counters).
        let answered_from = |prefix: u16, count: u16, config: &str| {
            let agent = Agent::start(&format!(
                "listen=[::1]:0 initial_state=up rate_per_source=10 {config}"
            ))
            .unwrap();
            let to = agent.local_addrs()[0];
            for i in 0..count {
                let ip = std::net::Ipv6Addr::new(0xfd00, 0x6c62, prefix, 0, 0, 0, 0x100, i + 1);
                let s = UdpSocket::bind(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0))).unwrap();
                s.send_to(KEEPALIVED_PAYLOAD, to).unwrap();
            }
            assert!(eventually(Duration::from_secs(5), || {
                agent.counter(Counter::AnsweredText) + agent.counter(Counter::DroppedRateLimited)
                    == u64::from(count)
            }));
            agent.counter(Counter::AnsweredText) as usize
        };
        // 200 fresh addresses of one /64 in well under a second: one source's budget (10,
        // plus what refills meanwhile).
        let one_64 = answered_from(1, 200, "");
        let per_address = answered_from(1, 200, "ipv6_source_prefix=128");
        eprintln!(
            "ipv6: 200 addresses of one /64 got {one_64} answers (per /64), {per_address} with ipv6_source_prefix=128"
        );
        assert!(one_64 <= 20, "{one_64}");
        assert_eq!(per_address, 200);
        assert_eq!(answered_from(2, 1, ""), 1, "another /64 is another source");
    });
}

#[test]
fn idle_connections_are_cut_sooner_when_slots_are_scarce() {
    in_namespace(|| {
        let agent = Agent::start("listen=127.0.0.1:0 http=127.0.0.1:0 initial_state=up").unwrap();
        let http = agent.http_addrs()[0];
        // 48 idle connections from three sources (16 each: within their share): more than
        // half the 64 slots, so each is kept 100 ms at most instead of the 1 s an HTTP client
        // has for its request.
        let started = Instant::now();
        let mut idle: Vec<TcpStream> = (0..48)
            .map(|i| connect_from(Ipv4Addr::new(127, 0, 0, 2 + i / 16), http).unwrap())
            .collect();
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut b = [0u8; 16];
            assert!(
                matches!(s.read(&mut b), Ok(0) | Err(_)),
                "closed, no answer"
            );
        }
        let took = started.elapsed();
        eprintln!("scarce slots: 48 idle HTTP connections all closed after {took:?}");
        // (Their usual deadline is 1 s: far longer than the 100 ms they get.)
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert!(eventually(Duration::from_secs(2), || {
            agent.counter(Counter::ConnTimedOut) == 48
        }));
    });
}

/// A sealed subscribing PROBE of `len` bytes (what a director sends).
fn sealed_subscription(key: &Key, nonce: u64, len: usize) -> Vec<u8> {
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    let body = wire::encode_probe_with(
        nonce,
        b"",
        Some(60_000),
        len - wire::AUTH_TRAILER_LEN,
        &mut out,
    );
    let n = auth::seal(key, &mut out, body, auth::unix_ms());
    out[..n].to_vec()
}

/// Every datagram `socket` receives within `wait`.
fn received(socket: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn flags_of(datagram: &[u8]) -> u16 {
    u16::from_be_bytes([datagram[6], datagram[7]])
}

/// The host changes state and weight 20 times, far enough apart that each would be pushed.
fn twenty_changes(agent: &Agent) {
    for i in 0..20 {
        let state = if i % 2 == 0 { State::Drain } else { State::Up };
        agent.set_state("", state, None).unwrap();
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn spoofed_subscriptions_push_nothing_to_their_victim() {
    in_namespace(|| {
        let raw = RawSender::new();
        let victim = UdpSocket::bind("127.0.0.9:40000").unwrap();
        let attacker_to_victim = |agent: SocketAddr, probe: &[u8]| {
            raw.udp(v4(victim.local_addr().unwrap()), v4(agent), probe);
        };
        let mut probe = [0u8; wire::PROBE_MAX_LEN];
        let n = wire::encode_probe_with(0xbad, b"", Some(60_000), 328, &mut probe);

        // Default (subscribe=auth): an unsealed subscription is answered like any probe (one
        // STATUS, no larger than it), never granted: the host's changes push nothing.
        let keys = key_file("sub-spoof", &format!("7 {SECRET}\n"));
        let (agent, addr) = real_agent(&format!("key_file={} auth=optional", keys.display()));
        for _ in 0..5 {
            attacker_to_victim(addr, &probe[..n]);
        }
        twenty_changes(&agent);
        let got = received(&victim, Duration::from_millis(300));
        println!(
            "spoofed unsealed subscriptions (subscribe=auth): the victim got {} datagrams for 5 \
             spoofed probes and 20 changes",
            got.len()
        );
        assert_eq!(got.len(), 5, "one answer per spoofed probe, no push");
        assert!(
            got.iter()
                .all(|d| flags_of(d) & wire::FLAG_SUBSCRIBED == 0 && d.len() <= n)
        );
        assert_eq!(agent.counter(Counter::Pushed), 0);
        drop(agent);

        // subscribe=allow: a source outside allow= gets nothing at all.
        let (agent, addr) = real_agent("subscribe=allow allow=127.0.0.3/32");
        for _ in 0..5 {
            attacker_to_victim(addr, &probe[..n]);
        }
        twenty_changes(&agent);
        assert!(received(&victim, Duration::from_millis(300)).is_empty());
        assert_eq!(agent.counter(Counter::DroppedNotAllowed), 5);
        assert_eq!(agent.counter(Counter::Pushed), 0);
    });
}

#[test]
fn a_replayed_sealed_subscription_gets_nothing() {
    in_namespace(|| {
        let keys = key_file("sub-replay", &format!("7 {SECRET}\n"));
        let key = load_key(&keys, None).unwrap();
        let (agent, addr) = real_agent(&format!("key_file={}", keys.display()));
        // The real director subscribes.
        let director = UdpSocket::bind("127.0.0.5:0").unwrap();
        let subscription = sealed_subscription(&key, 0x5eed, 328);
        director.send_to(&subscription, addr).unwrap();
        let answer = received(&director, Duration::from_millis(200));
        assert_eq!(answer.len(), 1);
        assert!(flags_of(&answer[0]) & wire::FLAG_SUBSCRIBED != 0);
        // An attacker replays the captured datagram, spoofed from a victim's address.
        let victim = UdpSocket::bind("127.0.0.9:40001").unwrap();
        let raw = RawSender::new();
        for _ in 0..10 {
            raw.udp(v4(victim.local_addr().unwrap()), v4(addr), &subscription);
        }
        twenty_changes(&agent);
        let victim_got = received(&victim, Duration::from_millis(300));
        let director_got = received(&director, Duration::from_millis(100));
        println!(
            "replayed sealed subscription: the victim got {} datagrams, the real subscriber {} \
             pushes; dropped_replay {}",
            victim_got.len(),
            director_got.len(),
            agent.counter(Counter::DroppedReplay)
        );
        assert!(victim_got.is_empty());
        assert_eq!(agent.counter(Counter::DroppedReplay), 10);
        assert!(
            !director_got.is_empty(),
            "the real subscriber is still served"
        );
        assert!(
            director_got
                .iter()
                .all(|d| flags_of(d) & wire::FLAG_PUSHED != 0 && d.len() <= subscription.len())
        );
    });
}
