//! The hex vectors of docs/PROTOCOL.md, checked against the encoder and decoder, and sent to a
//! real agent where they are requests.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use lbagent::proto::wire::{self, Reply, Request, StatusFields};
use lbagent::state::{Reason, State};
use lbagent::status::{Status, Text};

/// Every ```hex NAME block of the document, decoded.
fn vectors() -> HashMap<String, Vec<u8>> {
    let doc = std::fs::read_to_string(common::repo().join("docs/PROTOCOL.md")).unwrap();
    let mut out = HashMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else {
            continue;
        };
        let mut hex = String::new();
        for body in lines.by_ref() {
            if body.starts_with("```") {
                break;
            }
            hex.extend(body.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.insert(name.trim().to_string(), bytes);
    }
    out
}

fn v(name: &str) -> Vec<u8> {
    vectors()
        .remove(name)
        .unwrap_or_else(|| panic!("no vector {name} in docs/PROTOCOL.md"))
}

fn encode_probe(nonce: u64, service: &[u8], len: usize) -> Vec<u8> {
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    let n = wire::encode_probe(nonce, service, len, &mut out);
    out[..n].to_vec()
}

fn encode_status(fields: &StatusFields<'_>, max: usize) -> Vec<u8> {
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    let n = wire::encode_status(fields, max, &mut out).unwrap();
    out[..n].to_vec()
}

const INSTANCE: u64 = 0xa1b2c3d4e5f60718;

#[test]
fn probe_vectors() {
    let whole = v("probe-whole-server");
    assert_eq!(whole.len(), 48);
    assert_eq!(whole, encode_probe(0x0102030405060708, b"", 48));
    assert!(matches!(
        wire::decode_request(&whole),
        Ok(Request::Probe(p)) if p.nonce == 0x0102030405060708 && p.service.is_empty() && p.len == 48
    ));
    let game = v("probe-service-game");
    assert_eq!(game.len(), 64);
    assert_eq!(game, encode_probe(0x1122334455667788, b"game", 64));
    assert!(matches!(
        wire::decode_request(&game),
        Ok(Request::Probe(p)) if p.service == b"game"
    ));
}

#[test]
fn status_vectors() {
    let up = StatusFields {
        flags: 0,
        nonce: 0x0102030405060708,
        instance_id: INSTANCE,
        generation: 3,
        state: State::Up as u8,
        reason: Reason::Host as u8,
        weight_pct: 100,
        since_ms: 1500,
        in_use: 3,
        capacity: 100,
        message: b"ready",
    };
    let bytes = v("status-up");
    assert_eq!(bytes.len(), 50);
    assert_eq!(bytes, encode_status(&up, 512));
    assert_eq!(wire::decode_reply(&bytes), Ok(Reply::Status(up)));

    let watchdog = StatusFields {
        nonce: 0x1122334455667788,
        generation: 7,
        state: State::Down as u8,
        reason: Reason::WatchdogExpired as u8,
        since_ms: 250,
        in_use: 0,
        capacity: 0,
        message: b"watchdog expired",
        ..up
    };
    let bytes = v("status-watchdog");
    assert_eq!(bytes.len(), 61);
    assert_eq!(bytes, encode_status(&watchdog, 512));
    assert_eq!(wire::decode_reply(&bytes), Ok(Reply::Status(watchdog)));

    let cut = StatusFields {
        generation: 4,
        state: State::Drain as u8,
        weight_pct: 50,
        since_ms: 20,
        in_use: 1,
        capacity: 8,
        message: "été".as_bytes(),
        ..up
    };
    let bytes = v("status-cut-message");
    assert_eq!(bytes.len(), 48);
    assert_eq!(bytes, encode_status(&cut, 48));
    match wire::decode_reply(&bytes).unwrap() {
        Reply::Status(s) => assert_eq!(s.message, "ét".as_bytes()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscription_vectors() {
    let sub = v("probe-subscribe-game");
    assert_eq!(sub.len(), 64);
    let mut out = [0u8; 512];
    let n = wire::encode_probe_with(0x1122334455667788, b"game", Some(30_000), 64, &mut out);
    assert_eq!(sub, &out[..n]);
    assert!(matches!(
        wire::decode_request(&sub),
        Ok(Request::Probe(p)) if p.flags == wire::FLAG_SUBSCRIBE && p.lease_ms == Some(30_000)
    ));
    let granted = StatusFields {
        flags: wire::FLAG_SUBSCRIBED,
        nonce: 0x1122334455667788,
        instance_id: INSTANCE,
        generation: 3,
        state: State::Up as u8,
        reason: Reason::Host as u8,
        weight_pct: 100,
        since_ms: 1500,
        in_use: 3,
        capacity: 100,
        message: b"ready",
    };
    let bytes = v("status-subscribed");
    assert_eq!(bytes, encode_status(&granted, 512));
    assert_eq!(wire::decode_reply(&bytes), Ok(Reply::Status(granted)));
    let pushed = StatusFields {
        flags: wire::FLAG_PUSHED,
        generation: 4,
        state: State::Drain as u8,
        since_ms: 5,
        message: b"deploy",
        ..granted
    };
    let bytes = v("status-pushed");
    assert_eq!(bytes.len(), 51);
    assert_eq!(bytes, encode_status(&pushed, 512));
    // A prober reads both as answers to the subscribing PROBE's nonce.
    let answer = lbagent::client::read_answer(&bytes, 0x1122334455667788, Duration::ZERO)
        .unwrap()
        .unwrap();
    assert!(answer.pushed && !answer.subscribed && answer.state == State::Drain);
}

#[test]
fn drain_vectors() {
    let probe = v("probe-drain");
    assert_eq!(probe.len(), 64);
    match wire::decode_request(&probe).unwrap() {
        Request::Probe(p) => assert_eq!((p.flags, p.len), (wire::FLAG_DRAIN, 64)),
        other => panic!("{other:?}"),
    }
    let fields = StatusFields {
        flags: 0,
        nonce: 0x0102030405060708,
        instance_id: INSTANCE,
        generation: 5,
        state: State::Drain as u8,
        reason: Reason::Host as u8,
        weight_pct: 100,
        since_ms: 400,
        in_use: 0,
        capacity: 64,
        message: b"deploy",
    };
    let drain = wire::DrainFields {
        flags: wire::DRAIN_DRAINING | wire::DRAIN_COMPLETE,
        told_you: 2,
        probers_told: 2,
        probers_pending: 0,
        drain_ms: 400,
    };
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    let n = wire::encode_status(&fields, 64 - wire::DRAIN_LEN, &mut out).unwrap();
    let n = wire::append_drain(&drain, &mut out, n);
    let bytes = v("status-drain");
    assert_eq!(bytes.len(), 61);
    assert_eq!(bytes, out[..n]);
    match wire::decode_reply(&bytes).unwrap() {
        Reply::Status(s) => {
            assert_eq!(s.flags, wire::FLAG_DRAIN);
            assert_eq!(wire::decode_drain(&bytes, &s), Some(drain));
        }
        other => panic!("{other:?}"),
    }
    // Sent to a real agent that drains: the answer carries the progress, within 64 bytes;
    // the same PROBE without the flag gets none.
    let (agent, addr) = common::agent("initial_state=drain");
    let reply = common::ask(addr, &probe);
    assert!(reply.len() <= 64);
    let Ok(Reply::Status(s)) = wire::decode_reply(&reply) else {
        panic!("{reply:?}")
    };
    let progress = wire::decode_drain(&reply, &s).expect("drain progress");
    assert_eq!(progress.flags & wire::DRAIN_DRAINING, wire::DRAIN_DRAINING);
    assert_eq!(progress.told_you, 1);
    let plain = common::ask(addr, &v("probe-whole-server"));
    let Ok(Reply::Status(s)) = wire::decode_reply(&plain) else {
        panic!("{plain:?}")
    };
    assert_eq!((s.flags, wire::decode_drain(&plain, &s)), (0, None));
    // A 48-byte PROBE with the flag has no room for it: a plain STATUS.
    let mut short = probe.clone();
    short.truncate(48);
    let reply = common::ask(addr, &short);
    let Ok(Reply::Status(s)) = wire::decode_reply(&reply) else {
        panic!("{reply:?}")
    };
    assert_eq!(s.flags & wire::FLAG_DRAIN, 0);
    drop(agent);
}

#[test]
fn error_vector() {
    let bytes = v("error-unsupported-version");
    let mut out = [0u8; 18];
    assert_eq!(wire::encode_error(0x0102030405060708, 1, &mut out), 18);
    assert_eq!(bytes, out);
}

#[test]
fn malformed_vectors_are_rejected_and_get_no_answer() {
    let (agent, addr) = common::agent("initial_state=up");
    let names = [
        "malformed-too-short",
        "malformed-name-too-long",
        "malformed-name-byte",
        "malformed-status-to-agent",
    ];
    for name in names {
        let bytes = v(name);
        assert!(wire::decode_request(&bytes).is_err(), "{name}");
        assert_eq!(
            common::exchange(addr, &bytes, Duration::from_millis(200)),
            None,
            "{name}"
        );
    }
    assert!(common::eventually(Duration::from_secs(2), || {
        agent.counter(lbagent::Counter::DroppedMalformed) == names.len() as u64
    }));
    // The valid vectors, sent for real, are answered.
    let reply = common::ask(addr, &v("probe-service-game"));
    assert!(reply.len() <= 64);
}

#[test]
fn text_vectors() {
    let request = v("text-keepalived-request");
    assert_eq!(request, common::KEEPALIVED_PAYLOAD);
    let status = Status {
        state: State::Up,
        reason: Reason::Host,
        weight_pct: 100,
        in_use: 0,
        capacity: 0,
        generation: 0,
        since_ms: 0,
        message: Text::from_reason(b"ready"),
    };
    let mut out = [0u8; 512];
    let n = lbagent::proto::text::write_reply(&status, request.len(), &mut out);
    assert_eq!(out[..n], v("text-keepalived-answer-up")[..]);
    // And from a real agent.
    let (agent, addr) = common::agent("");
    agent.set_state("", State::Up, Some("ready")).unwrap();
    assert_eq!(common::ask(addr, &request), v("text-keepalived-answer-up"));
}

#[test]
fn documented_keepalived_payload_names_the_service() {
    let doc = std::fs::read_to_string(common::repo().join("docs/PROTOCOL.md")).unwrap();
    let hex = doc
        .split("`payload ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap();
    let payload: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let (agent, addr) = common::agent("services=game initial_state=up");
    agent.set_state("game", State::Drain, None).unwrap();
    assert_eq!(common::ask(addr, &payload), b"drain up 100%\n");
}
