//! `GET /metrics` (`metrics=on`) over real TCP on loopback: what it says follows the board and
//! the counters, Prometheus' own `promtool check metrics` accepts it, the worst case (256
//! services with 64-byte names) is whole, also when scraped from several clients at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::prometheus::{promtool_accepts, sample};
use lbagent::{Agent, State};

/// An answer: status code, head and body.
struct Scrape {
    code: u16,
    head: String,
    body: String,
}

fn scrape_with(stream: &mut TcpStream, method: &str) -> Scrape {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Scrape {
        code: head[9..12].parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn scrape(http: SocketAddr) -> Scrape {
    scrape_with(&mut TcpStream::connect(http).unwrap(), "GET")
}

fn content_length(s: &Scrape) -> usize {
    s.head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn metrics_agent(extra: &str) -> (Agent, SocketAddr, SocketAddr) {
    let (agent, udp) = common::agent(&format!("http=127.0.0.1:0 metrics=on {extra}"));
    let http = agent.http_addrs()[0];
    (agent, udp, http)
}

#[test]
fn metrics_follow_the_board_and_the_counters_and_promtool_accepts_them() {
    let (agent, udp, http) = metrics_agent("services=game,chat watchdog_ms=5000");
    let s = scrape(http);
    assert_eq!(s.code, 200);
    assert!(
        s.head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        s.head
    );
    assert_eq!(
        sample(&s.body, "lbagent_state{service=\"\",state=\"starting\"}"),
        Some(1.0)
    );
    assert!(
        s.body
            .contains("# TYPE lbagent_heartbeat_age_seconds gauge")
            && sample(&s.body, "lbagent_heartbeat_age_seconds").is_none(),
        "no heartbeat yet: no sample"
    );
    promtool_accepts(&s.body);

    agent.set_state("", State::Up, None).unwrap();
    agent.heartbeat().unwrap();
    agent
        .set_state("game", State::Drain, Some("deploy"))
        .unwrap();
    agent.set_weight("chat", 40).unwrap();
    agent.set_load("chat", 7, 64).unwrap();
    let _ = common::ask_text(udp, &"x".repeat(32));
    let s = scrape(http);
    for (series, value) in [
        ("lbagent_state{service=\"\",state=\"up\"}", 1.0),
        ("lbagent_state{service=\"\",state=\"starting\"}", 0.0),
        ("lbagent_state{service=\"game\",state=\"drain\"}", 1.0),
        ("lbagent_serving{service=\"game\"}", 0.0),
        ("lbagent_serving{service=\"chat\"}", 1.0),
        ("lbagent_weight_percent{service=\"chat\"}", 40.0),
        ("lbagent_in_use{service=\"chat\"}", 7.0),
        ("lbagent_capacity{service=\"chat\"}", 64.0),
        ("lbagent_reason_code{service=\"game\"}", 0.0),
        ("lbagent_watchdog_seconds", 5.0),
        ("lbagent_answered_total{kind=\"text\"}", 1.0),
        ("lbagent_datagrams_received_total", 1.0),
        ("lbagent_dropped_total{reason=\"rate_limited\"}", 0.0),
        // The first scrape, counted once it was written.
        ("lbagent_answered_total{kind=\"http\"}", 1.0),
    ] {
        assert_eq!(sample(&s.body, series), Some(value), "{series}\n{}", s.body);
    }
    assert!(sample(&s.body, "lbagent_heartbeat_age_seconds").unwrap() < 5.0);
    assert!(s.body.contains(&format!(
        "lbagent_build_info{{version=\"{}\",instance_id=\"{:016x}\"}} 1",
        lbagent::VERSION,
        agent.instance_id()
    )));
    promtool_accepts(&s.body);
    // HEAD: the same head, no body.
    let h = scrape_with(&mut TcpStream::connect(http).unwrap(), "HEAD");
    assert_eq!((h.code, h.body.as_str()), (200, ""));
    assert!(h.head.contains("Content-Length: "), "{}", h.head);

    // metrics=on needs the HTTP endpoint.
    let e = Agent::start("listen=127.0.0.1:0 metrics=on")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"metrics\"") && e.contains("http="), "{e}");
}

#[test]
fn the_largest_answer_is_whole_also_scraped_at_once() {
    // 256 services with 64-byte names: the largest exposition there is.
    let names: Vec<String> = (0..256)
        .map(|i| format!("{i:03}{}", "s".repeat(61)))
        .collect();
    let (agent, _, http) = metrics_agent(&format!("initial_state=up services={}", names.join(",")));
    for (i, name) in names.iter().enumerate() {
        agent
            .set_state(name, State::Maint, Some(&"m".repeat(255)))
            .unwrap();
        agent.set_load(name, u32::MAX, i as u32).unwrap();
    }
    let s = scrape(http);
    assert_eq!(s.code, 200);
    let length = content_length(&s);
    assert_eq!(length, s.body.len());
    assert!(length > 256 * 1000, "{length} bytes");
    for name in &names {
        assert_eq!(
            sample(
                &s.body,
                &format!("lbagent_state{{service=\"{name}\",state=\"maint\"}}")
            ),
            Some(1.0),
            "{name}"
        );
    }
    assert!(s.body.ends_with("} 1\n"), "whole, to the last line");
    promtool_accepts(&s.body);

    // Scrapes at once: each answer is whole (at most two are built at a time; the kernel's
    // send buffer takes a whole answer on loopback, so a third is never kept waiting here).
    let readers: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || (0..5).map(|_| scrape(http)).collect::<Vec<_>>()))
        .collect();
    for reader in readers {
        for s in reader.join().unwrap() {
            assert_eq!((s.code, content_length(&s)), (200, s.body.len()));
            assert!(s.body.len() > length - 100 && s.body.ends_with("} 1\n"));
        }
    }
}
