//! Trust and hostile input, agent side, over loopback: authenticated probes and answers, key
//! rotation, auth=required, rate limits, reflector source ports.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use lbagent::keys::{Key, KeySet};
use lbagent::proto::auth;
use lbagent::proto::wire::{self, Reply};
use lbagent::{Counter, State};

const SECRET_1: &str = "6c626167656e742d746573742d6b65792d6f6e652d3031323334353637383930";
const SECRET_2: &str = "6c626167656e742d746573742d6b65792d74776f2d3031323334353637383930";

/// Writes a key file (mode 600) and returns its path.
fn key_file(name: &str, lines: &str) -> PathBuf {
    let dir = target_dir().join("security-test-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", std::process::id()));
    std::fs::write(&path, lines).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn key(id: u32, secret: &str) -> Key {
    let bytes: Vec<u8> = (0..secret.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).unwrap())
        .collect();
    Key::new(id, &bytes).unwrap()
}

/// A PROBE of `len` bytes, sealed with `key` at `timestamp` (None: not sealed).
fn probe(nonce: u64, service: &[u8], len: usize, key: Option<(&Key, u64)>) -> Vec<u8> {
    let mut buf = [0u8; wire::PROBE_MAX_LEN];
    match key {
        None => {
            let n = wire::encode_probe(nonce, service, len, &mut buf);
            buf[..n].to_vec()
        }
        Some((key, ts)) => {
            let body = len - wire::AUTH_TRAILER_LEN;
            wire::encode_probe(nonce, service, body, &mut buf);
            let n = auth::seal(key, &mut buf, body, ts);
            buf[..n].to_vec()
        }
    }
}

fn status_of(reply: &[u8]) -> wire::StatusFields<'_> {
    match wire::decode_reply(reply).unwrap() {
        Reply::Status(s) => s,
        other => panic!("not a STATUS: {other:?}"),
    }
}

#[test]
fn authenticated_probe_gets_a_sealed_answer() {
    let keys = key_file("one", &format!("7 {SECRET_1}\n"));
    let (agent, addr) = agent(&format!("key_file={} initial_state=up", keys.display()));
    let k = key(7, SECRET_1);
    let request = probe(0xfeed, b"", 128, Some((&k, auth::unix_ms())));
    let reply = ask(addr, &request);
    assert!(reply.len() <= request.len());
    let s = status_of(&reply);
    assert_eq!(s.nonce, 0xfeed);
    assert_eq!(s.state, State::Up as u8);
    assert_ne!(s.flags & wire::FLAG_AUTH, 0);
    // The prober checks the MAC, which covers the echoed nonce.
    let set = KeySet::parse(&format!("7 {SECRET_1}")).unwrap();
    let v = auth::open(&reply, |id| set.get(id)).unwrap();
    assert_eq!(v.key_id, 7);
    let mut forged = reply.clone();
    forged[10] ^= 1; // another nonce
    assert!(auth::open(&forged, |id| set.get(id)).is_err());
    // (Counted just after it is sent.)
    assert!(eventually(Duration::from_secs(2), || agent
        .counter(Counter::AnsweredStatus)
        == 1));
}

#[test]
fn bad_macs_unknown_keys_and_stale_probes_are_dropped_and_counted() {
    let keys = key_file("two", &format!("7 {SECRET_1}\n"));
    let (agent, addr) = agent(&format!(
        "key_file={} auth=optional auth_window_ms=30000",
        keys.display()
    ));
    let now = auth::unix_ms();
    let good = key(7, SECRET_1);
    let wrong_secret = key(7, SECRET_2);
    let unknown_id = key(8, SECRET_1);
    let quiet = Duration::from_millis(200);
    let mut tampered = probe(1, b"", 100, Some((&good, now)));
    tampered[20] ^= 0x40;
    for (what, request) in [
        (
            "wrong secret",
            probe(1, b"", 100, Some((&wrong_secret, now))),
        ),
        (
            "unknown key id",
            probe(1, b"", 100, Some((&unknown_id, now))),
        ),
        ("tampered", tampered),
    ] {
        assert_eq!(exchange(addr, &request, quiet), None, "{what}");
    }
    for ts in [now - 31_000, now + 31_000] {
        assert_eq!(
            exchange(addr, &probe(1, b"", 100, Some((&good, ts))), quiet),
            None
        );
    }
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(Counter::DroppedAuthFailed) == 3
            && agent.counter(Counter::DroppedAuthStale) == 2
    }));
    // Within the window either way: answered (each nonce once: a sealed probe is good once).
    for (nonce, ts) in [
        (10, auth::unix_ms() - 28_000),
        (11, auth::unix_ms() + 28_000),
    ] {
        assert!(exchange(addr, &probe(nonce, b"", 100, Some((&good, ts))), quiet).is_some());
    }
    // auth=optional: an unauthenticated probe gets a plain answer.
    let plain = ask(addr, &probe(2, b"", 64, None));
    assert_eq!(status_of(&plain).flags & wire::FLAG_AUTH, 0);
}

#[test]
fn auth_required_answers_unauthenticated_probes_with_error_2_only() {
    let keys = key_file("three", &format!("1 {SECRET_1}\n2 {SECRET_2}\n"));
    let (agent, addr) = agent(&format!("key_file={} initial_state=up", keys.display()));
    let reply = ask(addr, &probe(42, b"", 48, None));
    assert_eq!(reply.len(), wire::ERROR_LEN);
    assert_eq!(
        wire::decode_reply(&reply).unwrap(),
        Reply::Error {
            version: 1,
            nonce: 42,
            code: wire::ERROR_AUTH_REQUIRED
        }
    );
    // Text lines carry no MAC: off unless explicitly enabled.
    assert_eq!(
        exchange(addr, KEEPALIVED_PAYLOAD, Duration::from_millis(200)),
        None
    );
    assert!(eventually(Duration::from_secs(1), || agent
        .counter(Counter::DroppedTextOff)
        == 1));
    // Rotation: both keys of the file are accepted.
    for (id, secret) in [(1, SECRET_1), (2, SECRET_2)] {
        let k = key(id, secret);
        let reply = ask(
            addr,
            &probe(id.into(), b"", 200, Some((&k, auth::unix_ms()))),
        );
        let set = KeySet::parse(&format!("{id} {secret}")).unwrap();
        assert_eq!(auth::open(&reply, |i| set.get(i)).unwrap().key_id, id);
        assert_eq!(status_of(&reply).nonce, u64::from(id));
    }
    // An authenticated probe too short for a sealed STATUS is dropped, never cut below 45.
    let k = key(1, SECRET_1);
    assert_eq!(
        exchange(
            addr,
            &probe(9, b"", 60, Some((&k, auth::unix_ms()))),
            Duration::from_millis(200)
        ),
        None
    );
    let (_text_agent, text_addr) = common::agent(&format!(
        "key_file={} text=on initial_state=up",
        keys.display()
    ));
    assert!(ask_text(text_addr, "keepalived check - keepalived ch").starts_with("up"));
}

#[test]
fn per_source_rate_limit_spares_other_sources() {
    let (agent, addr) = agent("initial_state=up rate_per_source=5 rate_global=0");
    let flood = connected(addr);
    flood
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..50 {
        flood.send(KEEPALIVED_PAYLOAD).unwrap();
    }
    let mut answered = 0;
    let mut buf = [0u8; 64];
    while flood.recv(&mut buf).is_ok() {
        answered += 1;
    }
    // A burst of one second's worth (5), maybe one more token refilled meanwhile.
    assert!((5..=7).contains(&answered), "{answered} answered");
    assert!(agent.counter(Counter::DroppedRateLimited) >= 43);
    // Another source address is answered at once.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.send_to(KEEPALIVED_PAYLOAD, addr).unwrap();
    assert!(other.recv(&mut buf).is_ok());
}

#[test]
fn global_rate_limit() {
    let (agent, addr) = agent("initial_state=up rate_per_source=0 rate_global=3");
    let mut answered = 0;
    for i in 0..12u8 {
        let s = UdpSocket::bind(format!("127.0.0.{}:0", 10 + i)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.send_to(KEEPALIVED_PAYLOAD, addr).unwrap();
        let mut buf = [0u8; 64];
        answered += usize::from(s.recv(&mut buf).is_ok());
    }
    assert!((3..=5).contains(&answered), "{answered}");
    assert!(agent.counter(Counter::DroppedGlobalLimit) >= 7);
}

#[test]
fn reflector_source_ports_are_dropped() {
    let (agent, addr) = agent("initial_state=up");
    let mut sent = 0;
    for port in [7u16, 19, 53, 123, 161, 389, 1900, 11211] {
        // A spoofed "request" from a reflector: bind that source port on a quiet loopback
        // address (we are root in the tests).
        let from: SocketAddr = format!("127.0.0.77:{port}").parse().unwrap();
        let s = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.send_to(KEEPALIVED_PAYLOAD, addr).unwrap();
        let mut buf = [0u8; 64];
        assert!(
            s.recv(&mut buf).is_err(),
            "answered a datagram from port {port}"
        );
        sent += 1;
    }
    assert!(eventually(Duration::from_secs(1), || agent
        .counter(Counter::DroppedSourcePort)
        == sent));
}
