//! `make bench` (admission): what the monitor thread spends deciding one datagram, before any
//! system call, for what an attacker can send and for what a director sends:
//!
//! - an unsealed PROBE (the baseline), with `allow=` of 1 and of 100,000 networks (admitted,
//!   and a source that is not listed);
//! - with `key_file`: a sealed PROBE whose MAC checks out (key id and window, MAC, replay
//!   cache, key budget, then the sealed answer: two HMACs), and the forgeries junk can be:
//!   a seal with an unknown key id or an old timestamp (dropped before any MAC), and a seal
//!   with the right key id and a wrong MAC (one HMAC: the most work a sender without the key
//!   can cause per datagram);
//! - a 1-byte datagram (junk).
//!
//! Each figure is the median, over repetitions, of the time per datagram of a loop of calls
//! to the agent's decision (`lbagent::fuzzing::Decider`, the code the monitor thread runs
//! between `recvmmsg` and `sendmsg`), on one thread. Results: target/bench/admission.md and
//! .values. `cargo test --all-targets` runs it at a tiny scale (nothing asserted).

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use lbagent::Config;
use lbagent::fuzzing::Decider;
use lbagent::guard::allow::{AllowList, Cidr};
use lbagent::keys::{Key, KeySet};
use lbagent::proto::{auth, wire};
use support::{Report, median, ns};

const SECRET: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";

/// A config with no rate limits (the decision's cost, not the limits'), plus `allow` and keys.
fn config(allow: usize, keys: bool) -> Config {
    let networks = (0..allow as u32)
        .map(|i| {
            // 10.0.0.0, 10.0.0.2, ...: networks that do not merge into one range.
            Cidr::parse(&Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string()).unwrap()
        })
        .collect();
    Config {
        allow: if allow > 0 {
            AllowList::new(networks)
        } else {
            AllowList::default()
        },
        keys: keys.then(|| KeySet::parse(&format!("7 {SECRET}\n")).unwrap()),
        auth: lbagent::AuthMode::Optional,
        rate_per_source: 0,
        rate_global: 0,
        rate_per_key: 0,
        ..Config::default()
    }
}

fn key() -> Key {
    let bytes: Vec<u8> = (0..SECRET.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&SECRET[i..i + 2], 16).unwrap())
        .collect();
    Key::new(7, &bytes).unwrap()
}

/// A 128-byte PROBE with `nonce`, sealed with `key` at `timestamp_ms` if given.
fn probe(nonce: u64, key: Option<(&Key, u64)>) -> Vec<u8> {
    let mut buf = [0u8; wire::PROBE_MAX_LEN];
    match key {
        None => {
            let n = wire::encode_probe(nonce, b"", 128, &mut buf);
            buf[..n].to_vec()
        }
        Some((key, ts)) => {
            let body = wire::encode_probe(nonce, b"", 128 - wire::AUTH_TRAILER_LEN, &mut buf);
            let n = auth::seal(key, &mut buf, body, ts);
            buf[..n].to_vec()
        }
    }
}

/// Nanoseconds per decision over `datagrams` (each decided once per pass), median of `reps`.
fn time(
    decider: &mut Decider,
    source: SocketAddr,
    datagrams: &[Vec<u8>],
    reps: usize,
    expect_answer: bool,
) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        let mut answered = 0;
        for d in datagrams {
            answered +=
                usize::from(black_box(decider.decide(source, black_box(d), 1000)).is_some());
        }
        let elapsed = start.elapsed();
        assert_eq!(
            answered,
            if expect_answer { datagrams.len() } else { 0 },
            "every datagram {}",
            if expect_answer { "answered" } else { "dropped" }
        );
        runs.push(elapsed.as_nanos() as f64 / datagrams.len() as f64);
    }
    median(&mut runs)
}

fn main() {
    let full = support::is_bench_run();
    let (count, reps, allow_big) = if full {
        (20_000, 7, 100_000)
    } else {
        (200, 1, 1_000)
    };
    let mut r = Report::new("admission");
    r.section("admission");
    r.table(&["datagram", "configuration", "outcome", "time per datagram"]);
    let listed: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let unlisted: SocketAddr = "10.0.0.3:40000".parse().unwrap();
    let key = key();
    let stranger = Key::new(99, &[5; 32]).unwrap();
    let forger = Key::new(7, &[5; 32]).unwrap();
    let now = auth::unix_ms();
    let unsealed: Vec<Vec<u8>> = (0..count as u64).map(|n| probe(n, None)).collect();
    // Fresh nonces for every pass (a sealed probe is good once), and timestamps that advance
    // (1 ms per 10 probes) as a director's do, so that the replay cache, once full, forgets
    // the oldest and refuses only what is older still.
    let sealed = |pass: u64| -> Vec<Vec<u8>> {
        (0..count as u64)
            .map(|n| {
                let ts = now - 25_000 + (pass * count as u64 + n) / 10;
                probe(pass << 32 | n, Some((&key, ts)))
            })
            .collect()
    };
    let mut measure = |key_name: &str,
                       what: &str,
                       configuration: String,
                       outcome: &str,
                       config: &Config,
                       source: SocketAddr,
                       datagrams: &[Vec<u8>],
                       answered: bool| {
        let mut decider = Decider::new(config);
        let t = time(&mut decider, source, datagrams, reps, answered);
        r.row(&[what.to_string(), configuration, outcome.to_string(), ns(t)]);
        r.value(key_name, ns(t));
    };
    let plain = config(0, false);
    let one = config(1, false);
    let big = config(allow_big, false);
    measure(
        "adm_unsealed",
        "unsealed PROBE",
        "no allow-list".into(),
        "answered",
        &plain,
        listed,
        &unsealed,
        true,
    );
    measure(
        "adm_allow_1",
        "unsealed PROBE",
        "allow= 1 network".into(),
        "answered",
        &one,
        "10.0.0.0:40000".parse().unwrap(),
        &unsealed,
        true,
    );
    measure(
        "adm_allow_big",
        "unsealed PROBE",
        format!("allow= {allow_big} networks"),
        "answered",
        &big,
        listed,
        &unsealed,
        true,
    );
    measure(
        "adm_allow_big_out",
        "unsealed PROBE",
        format!("allow= {allow_big} networks, source not listed"),
        "dropped (not allowed)",
        &big,
        unlisted,
        &unsealed,
        false,
    );
    measure(
        "adm_junk",
        "1-byte datagram",
        "no allow-list, text off".into(),
        "dropped (text off)",
        &Config {
            text: false,
            ..plain.clone()
        },
        listed,
        &vec![vec![0u8]; count],
        false,
    );
    let keyed = config(0, true);
    // Each pass needs its own nonces: time() passes once per repetition over one set, so
    // measure one repetition per set and take the median here.
    let mut valid = Vec::new();
    let mut decider = Decider::new(&keyed);
    for pass in 0..reps as u64 {
        valid.push(time(&mut decider, listed, &sealed(pass), 1, true));
    }
    let t = median(&mut valid);
    r.row(&[
        "sealed PROBE, valid MAC".into(),
        "key_file".into(),
        "answered, sealed (2 HMACs, replay cache, key budget)".into(),
        ns(t),
    ]);
    r.value("adm_sealed", ns(t));
    let forged = |k: &Key, ts: u64| -> Vec<Vec<u8>> {
        (0..count as u64).map(|n| probe(n, Some((k, ts)))).collect()
    };
    let mut measure = |key_name: &str, what: &str, outcome: &str, datagrams: &[Vec<u8>]| {
        let mut decider = Decider::new(&keyed);
        let t = time(&mut decider, listed, datagrams, reps, false);
        r.row(&[
            what.to_string(),
            "key_file".into(),
            outcome.to_string(),
            ns(t),
        ]);
        r.value(key_name, ns(t));
    };
    measure(
        "adm_unknown_key",
        "sealed PROBE, unknown key id",
        "dropped before the MAC",
        &forged(&stranger, now),
    );
    measure(
        "adm_stale",
        "sealed PROBE, timestamp 60 s old",
        "dropped before the MAC",
        &forged(&key, now - 60_000),
    );
    measure(
        "adm_bad_mac",
        "sealed PROBE, right key id, wrong MAC",
        "dropped after one HMAC",
        &forged(&forger, now),
    );
    // The replay of a valid probe: one HMAC, then the replay cache.
    let replays = sealed(reps as u64);
    let mut decider = Decider::new(&keyed);
    let _ = time(&mut decider, listed, &replays, 1, true);
    let t = time(&mut decider, listed, &replays, reps, false);
    r.row(&[
        "sealed PROBE, replayed".into(),
        "key_file".into(),
        "dropped after one HMAC and the replay cache".into(),
        ns(t),
    ]);
    r.value("adm_replay", ns(t));
    r.write();
}
