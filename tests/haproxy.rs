//! Interop with a real HAProxy (Debian's package; `make test` installs it) on loopback.
//!
//! HAProxy runs the configuration of docs/HAPROXY.md, with only addresses, ports and the socket
//! path replaced: two servers (127.0.0.2 and 127.0.0.3, each with its own embedded agent and a
//! small TCP service answering its name), one backend judged by `agent-check`, one by
//! `option httpchk`. The test drives one agent through up, drain, down, maint, up and 50 %
//! weight, and checks from the stats socket that HAProxy shows each, that traffic through
//! HAProxy follows, and that curl sees the HTTP codes. It prints how long HAProxy took to show
//! each change (`cargo test --test haproxy -- --nocapture`); that number is never asserted.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::haproxy::{Haproxy, WAIT, free_port, substitute};
use common::*;
use lbagent::{Agent, State};

const S1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const S2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A small TCP service that answers each connection with its name and closes.
struct NameServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    fn start(listener: TcpListener, name: &'static str) -> NameServer {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(format!("{name}\n").as_bytes());
                }
            }
        });
        NameServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Unblocks the accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the same TCP port on both server addresses (a port free on both, chosen now).
fn listener_pair() -> (TcpListener, TcpListener) {
    for _ in 0..50 {
        let a = TcpListener::bind((S1, 0)).unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind((S2, port)) {
            return (a, b);
        }
    }
    panic!("no TCP port free on both {S1} and {S2}");
}

/// One agent per server, with the same agent-check and HTTP ports on both addresses (as in
/// production, where each server runs its agent on the same ports).
fn agent_pair() -> (Agent, Agent) {
    for _ in 0..50 {
        let a = Agent::start(&format!(
            "listen={S1}:0 tcp_agent={S1}:0 http={S1}:0 services=game initial_state=up \
             agent_maxconn=on"
        ))
        .unwrap();
        let (tcp, http) = (a.tcp_agent_addrs()[0].port(), a.http_addrs()[0].port());
        if let Ok(b) = Agent::start(&format!(
            "listen={S2}:0 tcp_agent={S2}:{tcp} http={S2}:{http} services=game initial_state=up"
        )) {
            return (a, b);
        }
    }
    panic!("no agent ports free on both {S1} and {S2}");
}

/// Opens `n` connections through HAProxy; counts which server answered each.
fn spread(front: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let name = tcp_exchange(front, b"");
        *seen.entry(name.trim().to_string()).or_insert(0) += 1;
    }
    seen
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs (make test installs it)");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn curl_code(url: &str) -> u16 {
    curl(&["-o", "/dev/null", "-w", "%{http_code}", url])
        .parse()
        .unwrap()
}

fn admin_state(haproxy: &Haproxy) -> u32 {
    haproxy.server_state("game", "s1")["srv_admin_state"]
        .parse()
        .unwrap()
}

#[test]
fn haproxy_follows_the_embedded_agent() {
    let (agent1, agent2) = agent_pair();
    let (l1, l2) = listener_pair();
    let game_port = l1.local_addr().unwrap().port();
    let (_s1, s2) = (NameServer::start(l1, "s1"), NameServer::start(l2, "s2"));
    let agent_port = agent1.tcp_agent_addrs()[0].port();
    let http_port = agent1.http_addrs()[0].port();
    let front: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let dir = std::env::temp_dir().join(format!("lbagent-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let config = substitute(
        &doc_block("docs/HAPROXY.md", "haproxy", "haproxy.cfg"),
        &[
            (
                "/run/haproxy/admin.sock",
                dir.join("admin.sock").display().to_string(),
            ),
            ("10.0.0.100:7000", front.to_string()),
            ("10.0.0.5:7000", format!("{S1}:{game_port}")),
            ("10.0.0.6:7000", format!("{S2}:{game_port}")),
            ("agent-port 4951", format!("agent-port {agent_port}")),
            ("check port 8080", format!("check port {http_port}")),
        ],
    );
    let haproxy = Haproxy::start(&dir, &config);
    let health = format!("http://{S1}:{http_port}/health");
    let mut delays: Vec<(&str, Duration)> = Vec::new();

    // Both servers up, seen by both backends; traffic goes to both.
    for backend in ["game", "game_http"] {
        for server in ["s1", "s2"] {
            haproxy.wait_for(backend, server, "UP", Some(100));
        }
    }
    let seen = spread(front, 10);
    assert!(
        seen.contains_key("s1") && seen.contains_key("s2"),
        "{seen:?}"
    );
    assert_eq!(curl_code(&health), 200);

    // Drain: no new connections for s1; the HTTP check takes it out too.
    agent1.set_state("", State::Drain, Some("deploy")).unwrap();
    delays.push((
        "drain",
        haproxy.wait_for("game", "s1", "DRAIN (agent)", None),
    ));
    assert_eq!(admin_state(&haproxy) & 0x08, 0x08, "drain set by the agent");
    assert_eq!(
        spread(front, 10).get("s1"),
        None,
        "a drained server got a connection"
    );
    assert_eq!(curl_code(&health), 503);
    haproxy.wait_for("game_http", "s1", "DOWN", None);

    // Down.
    agent1
        .set_state("", State::Down, Some("database gone"))
        .unwrap();
    delays.push(("down", haproxy.wait_for("game", "s1", "DOWN (agent)", None)));
    let state = haproxy.server_state("game", "s1");
    assert_eq!(state["srv_op_state"], "0", "stopped");
    let row = haproxy.stat("game", "s1");
    assert!(
        row["last_agt"].contains("fail (database gone)"),
        "the reason reaches HAProxy: {row:?}"
    );
    assert_eq!(
        spread(front, 10).get("s1"),
        None,
        "a down server got a connection"
    );
    assert_eq!(curl_code(&health), 503);

    // Maintenance.
    agent1.set_state("", State::Maint, None).unwrap();
    delays.push(("maint", haproxy.wait_for("game", "s1", "MAINT", None)));
    assert_eq!(
        admin_state(&haproxy) & 0x01,
        0x01,
        "maintenance set by the agent"
    );
    assert_eq!(spread(front, 10).get("s1"), None);

    // Up again: `ready` brings it out of maintenance.
    agent1.set_state("", State::Up, Some("ready")).unwrap();
    delays.push((
        "up from maint",
        haproxy.wait_for("game", "s1", "UP", Some(100)),
    ));
    assert_eq!(admin_state(&haproxy), 0);
    assert_eq!(haproxy.server_state("game", "s1")["srv_op_state"], "2");
    assert!(spread(front, 10).contains_key("s1"));
    assert_eq!(curl_code(&health), 200);
    haproxy.wait_for("game_http", "s1", "UP", None);

    // Half the weight.
    agent1.set_weight("", 50).unwrap();
    delays.push(("weight 50%", haproxy.wait_for("game", "s1", "UP", Some(50))));
    assert_eq!(haproxy.server_state("game", "s1")["srv_uweight"], "50");
    // Weights 50 and 100, round robin: s1 gets a third of the connections.
    let seen = spread(front, 30);
    assert!((5..=15).contains(&seen["s1"]), "{seen:?}");
    agent1.set_weight("", 100).unwrap();
    delays.push((
        "weight 100%",
        haproxy.wait_for("game", "s1", "UP", Some(100)),
    ));

    // agent_maxconn=on (s1 only): the capacity the host reports for the service HAProxy asks
    // about (agent-send) becomes HAProxy's maxconn for the server (`slim` in show stat); s2
    // says nothing and keeps none.
    agent1.set_load("game", 3, 7).unwrap();
    assert!(
        eventually(WAIT, || haproxy.stat("game", "s1")["slim"] == "7"),
        "s1's maxconn never became 7: {:?}",
        haproxy.stat("game", "s1")
    );
    agent1.set_load("game", 3, 9).unwrap();
    assert!(eventually(WAIT, || haproxy.stat("game", "s1")["slim"] == "9"));
    assert_eq!(haproxy.stat("game", "s2")["slim"], "");

    // The service named by agent-send: draining "game" alone shows in the agent-check
    // backend, not in the HTTP backend that asks about the whole server.
    agent2
        .set_state("game", State::Drain, Some("game update"))
        .unwrap();
    delays.push((
        "service drain (agent-send)",
        haproxy.wait_for("game", "s2", "DRAIN (agent)", None),
    ));
    assert_eq!(spread(front, 10).get("s2"), None);
    let s2_health = format!("http://{S2}:{http_port}/health");
    assert_eq!(curl_code(&s2_health), 200);
    assert_eq!(curl_code(&format!("{s2_health}/game")), 503);
    assert_eq!(haproxy.stat("game_http", "s2")["status"], "UP");
    agent2.set_state("game", State::Up, None).unwrap();
    delays.push((
        "service up",
        haproxy.wait_for("game", "s2", "UP", Some(100)),
    ));

    // Shutting down as the README says: drain, then stop. Once the agent is gone HAProxy keeps
    // the last state it heard (an unreachable agent changes nothing)...
    agent2
        .set_state("", State::Drain, Some("shutting down"))
        .unwrap();
    delays.push((
        "drain before stop",
        haproxy.wait_for("game", "s2", "DRAIN (agent)", None),
    ));
    agent2.stop(Some(Duration::from_secs(5))).unwrap();
    assert!(eventually(WAIT, || haproxy.stat("game", "s2")["last_agt"]
        .contains("Connection refused")));
    assert_eq!(haproxy.stat("game", "s2")["status"], "DRAIN (agent)");
    // ... so only the regular `check` can see the service itself go away.
    drop(s2);
    haproxy.wait_for("game", "s2", "DOWN", None);

    // The detection time, measured at a random phase of HAProxy's 200 ms agent interval:
    // weight changes on s1, each after a random pause of 0..200 ms.
    let mut random_phase = Vec::new();
    for i in 0..20 {
        let pause = getrandom::u32().unwrap() % 200;
        std::thread::sleep(Duration::from_millis(u64::from(pause)));
        let weight = if i % 2 == 0 { 90 } else { 100 };
        agent1.set_weight("", weight).unwrap();
        random_phase.push(haproxy.wait_for("game", "s1", "UP", Some(weight)));
    }

    let version = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let version = version.split_whitespace().nth(2).unwrap_or("?").to_string();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, delay) in &delays {
        println!(
            "HAProxy {version} showed \"{what}\" after {:.0} ms",
            ms(*delay)
        );
    }
    random_phase.sort();
    println!(
        "HAProxy {version}: from a state change in the host to HAProxy showing it \
         (agent-inter 200ms, changes at a random phase, stats socket polled every 5 ms), \
         {} changes: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        random_phase.len(),
        ms(random_phase[random_phase.len() / 2]),
        ms(random_phase[0]),
        ms(random_phase[random_phase.len() - 1]),
    );
}

#[test]
fn curl_sees_the_http_codes() {
    let agent =
        Agent::start("listen=127.0.0.1:0 http=127.0.0.1:0 services=game initial_state=up").unwrap();
    let base = format!("http://{}", agent.http_addrs()[0]);
    assert_eq!(curl_code(&format!("{base}/health")), 200);
    assert_eq!(curl_code(&format!("{base}/health/game")), 200);
    assert_eq!(curl_code(&format!("{base}/health/nope")), 404);
    assert_eq!(curl_code(&format!("{base}/other")), 404);
    let head = curl(&["-I", &format!("{base}/health")]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 14\r\n"), "{head}");
    let post = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("{base}/health"),
    ]);
    assert_eq!(post, "405");
    agent
        .set_state("game", State::Maint, Some("backup"))
        .unwrap();
    assert_eq!(curl_code(&format!("{base}/health/game")), 503);
    let json = curl(&[
        "-H",
        "Accept: application/json",
        &format!("{base}/health/game"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (
            v["service"].as_str(),
            v["state"].as_str(),
            v["serving"].as_bool()
        ),
        (Some("game"), Some("maint"), Some(false))
    );
    assert_eq!(v["message"], "backup");
    let text = curl(&[&format!("{base}/health/game")]);
    assert_eq!(text, "maint down 100% #backup\n");
}

/// Every code block of docs/HAPROXY.md is one a test reads: the four tagged ones (this file)
/// and the JSON answer (tests/agent_tcp_http.rs compares its fields with a real answer).
#[test]
fn every_block_of_the_haproxy_doc_is_tested() {
    let doc = std::fs::read_to_string(repo().join("docs/HAPROXY.md")).unwrap();
    let openings: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("```"))
        .step_by(2)
        .collect();
    assert_eq!(
        openings,
        [
            "```c start",
            "```haproxy haproxy.cfg",
            "```",
            "```yaml kubernetes-readiness",
            "```nginx nginx-plus",
        ],
        "a block was added to docs/HAPROXY.md: give it a tag and a test"
    );
    assert!(doc.contains("```\n$ curl -s -H 'Accept: application/json'"));
}

/// The configuration at the top of docs/HAPROXY.md is valid, with the documented ports.
#[test]
fn documented_configuration_parses() {
    let block = doc_block("docs/HAPROXY.md", "c", "start");
    let config = block
        .split('"')
        .nth(1)
        .expect("a quoted configuration string");
    let c = lbagent::Config::parse(config).unwrap();
    assert_eq!(c.tcp_agent, vec!["0.0.0.0:4951".parse().unwrap()]);
    assert_eq!(c.http, vec!["0.0.0.0:8080".parse().unwrap()]);
    assert_eq!(c.services, vec!["game"]);
}

/// The Kubernetes and nginx snippets cannot run here: check that they ask what the agent
/// serves, and that the agent's answers give the verdicts those checkers expect.
#[test]
fn kubernetes_and_nginx_snippets_match_the_endpoint() {
    let agent = Agent::start("listen=127.0.0.1:0 http=127.0.0.1:0 initial_state=up").unwrap();
    let http = agent.http_addrs()[0];

    let yaml = doc_block("docs/HAPROXY.md", "yaml", "kubernetes-readiness");
    let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).expect("valid YAML");
    let probe = &docs[0]["readinessProbe"];
    let path = probe["httpGet"]["path"].as_str().expect("httpGet.path");
    assert_eq!(probe["httpGet"]["port"].as_i64(), Some(8080));
    assert!(probe["timeoutSeconds"].as_i64().is_some());
    // The kubelet's request: success is 200..=399.
    let kubelet = |path: &str| {
        http_exchange(
            http,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {http}\r\nUser-Agent: kube-probe/1.30\r\n\
                 Accept: */*\r\nConnection: close\r\n\r\n"
            ),
        )
        .code
    };
    let ready = |code: u16| (200..400).contains(&code);
    assert!(ready(kubelet(path)));
    agent
        .set_state("", State::Drain, Some("shutting down"))
        .unwrap();
    assert!(!ready(kubelet(path)), "a draining pod leaves the endpoints");
    agent.set_state("", State::Up, None).unwrap();
    assert!(ready(kubelet(path)));

    let nginx = doc_block("docs/HAPROXY.md", "nginx", "nginx-plus");
    let check = nginx
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("health_check "))
        .expect("a health_check directive");
    let arg = |name: &str| {
        check
            .trim_end_matches(';')
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("health_check has no {name}="))
            .to_string()
    };
    assert_eq!(arg("port"), "8080");
    let matcher = arg("match");
    assert!(
        nginx.contains(&format!("match {matcher} {{\n    status 200;\n}}")),
        "match {matcher} expects status 200:\n{nginx}"
    );
    let uri = arg("uri");
    assert_eq!(http_get(http, &uri).code, 200);
    agent.set_state("", State::Maint, None).unwrap();
    assert_ne!(http_get(http, &uri).code, 200, "nginx marks it failed");
}
