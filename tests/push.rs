//! Subscriptions and pushed changes over loopback: a prober that subscribes hears of a change
//! the host makes at once, without probing again; and the bounds hold (who may subscribe, how
//! many, how large and how frequent a push is, how long a lease lasts).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{agent, eventually, scratch_dir};
use lbagent::client::{Completion, ProbeOptions, Prober, load_key};
use lbagent::proto::{auth, wire};
use lbagent::{Agent, Counter, Reason, State};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key_file(name: &str) -> PathBuf {
    let path = scratch_dir(&format!("push-{name}")).join("keys");
    std::fs::write(&path, format!("7 {SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A keyed agent (UP) with `extra` config, and its key file.
fn keyed_agent(name: &str, extra: &str) -> (Agent, SocketAddr, PathBuf) {
    let keys = key_file(name);
    let (agent, addr) = agent(&format!(
        "key_file={} initial_state=up services=game {extra}",
        keys.display()
    ));
    (agent, addr, keys)
}

fn subscribing_prober(key: Option<&PathBuf>, lease: Duration) -> Prober {
    Prober::new(ProbeOptions {
        timeout: Duration::from_millis(2000),
        key: key.map(|p| load_key(p, None).unwrap()),
        subscribe: Some(lease),
        ..ProbeOptions::default()
    })
    .unwrap()
}

/// Receives until `done` says so or 5 s pass; returns everything received.
fn receive_until(
    prober: &mut Prober,
    mut done: impl FnMut(&[Completion]) -> bool,
) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&out) && Instant::now() < deadline {
        prober.receive(&mut out);
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

/// Probes once (subscribing) and returns the answer.
fn probe(
    prober: &mut Prober,
    to: SocketAddr,
    service: &str,
    token: u64,
) -> lbagent::client::Answer {
    prober.send(to, service, token).unwrap();
    let out = receive_until(prober, |out| out.iter().any(|c| c.token == token));
    let c = out
        .into_iter()
        .find(|c| c.token == token)
        .expect("an answer");
    c.result.expect("an answer")
}

#[test]
fn a_sealed_subscription_hears_each_change_at_once() {
    let (agent, addr, keys) = keyed_agent("sealed", "");
    let mut prober = subscribing_prober(Some(&keys), Duration::from_secs(30));
    let answer = probe(&mut prober, addr, "", 1);
    assert!(answer.subscribed && !answer.pushed, "{answer:?}");
    assert_eq!(prober.subscriptions(), 1);
    // The host drains: the change comes without another probe.
    agent.set_state("", State::Drain, Some("deploy")).unwrap();
    let out = receive_until(&mut prober, |out| !out.is_empty());
    let pushed = out[0].result.as_ref().unwrap();
    assert_eq!(out[0].token, 1);
    assert!(pushed.pushed, "{pushed:?}");
    assert_eq!(
        (pushed.state, pushed.message.as_str()),
        (State::Drain, "deploy")
    );
    assert!(pushed.generation > answer.generation);
    assert_eq!(agent.counter(Counter::Pushed), 1);
    // A service's subscription hears the server's changes that reach it, and its own.
    let game = probe(&mut prober, addr, "game", 2);
    assert!(game.subscribed && game.state == State::Drain);
    agent.set_state("game", State::Maint, None).unwrap();
    let out = receive_until(&mut prober, |out| out.iter().any(|c| c.token == 2));
    let pushed = out
        .iter()
        .find(|c| c.token == 2)
        .unwrap()
        .result
        .as_ref()
        .unwrap();
    assert_eq!(pushed.state, State::Maint);
    assert_eq!(prober.stats().pushed, agent.counter(Counter::Pushed));
    // The answers add up: every datagram the agent received is one outcome.
    let received = agent.counter(Counter::Received);
    let outcomes: u64 = Counter::DATAGRAM_OUTCOMES
        .iter()
        .map(|c| agent.counter(*c))
        .sum();
    assert_eq!(received, outcomes);
}

#[test]
fn unsealed_subscriptions_need_subscribe_allow_and_an_allowed_source() {
    // By default (subscribe=auth) an unsealed PROBE is answered, not subscribed.
    let (agent, addr, _keys) = keyed_agent("unsealed", "auth=optional");
    let mut prober = subscribing_prober(None, Duration::from_secs(30));
    let answer = probe(&mut prober, addr, "", 1);
    assert!(!answer.subscribed, "{answer:?}");
    assert_eq!(prober.subscriptions(), 0);
    agent.set_state("", State::Down, None).unwrap();
    // Nothing is pushed: the host's change costs nothing, and no datagram goes out.
    std::thread::sleep(Duration::from_millis(300));
    assert!(receive_until(&mut prober, |_| true).is_empty());
    assert_eq!(agent.counter(Counter::Pushed), 0);
    drop(agent);

    // subscribe=allow takes unsealed subscriptions from allowed sources.
    let (agent, addr) = common::agent("initial_state=up subscribe=allow allow=127.0.0.0/8");
    let answer = probe(&mut prober, addr, "", 2);
    assert!(answer.subscribed);
    agent.set_weight("", 40).unwrap();
    let out = receive_until(&mut prober, |out| !out.is_empty());
    assert_eq!(out[0].result.as_ref().unwrap().weight_pct, 40);
    // subscribe=allow without allow= is a configuration error that says so.
    let e = Agent::start("listen=127.0.0.1:0 subscribe=allow")
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("\"subscribe\"") && e.to_string().contains("allow="),
        "{e}"
    );
    // subscribe=off: nobody.
    let (_agent, addr) = common::agent("initial_state=up subscribe=off allow=127.0.0.0/8");
    assert!(!probe(&mut prober, addr, "", 3).subscribed);
}

/// A subscriber that speaks the protocol by hand: sends a sealed subscribing PROBE of
/// `len` bytes and reads raw datagrams.
struct RawSubscriber {
    socket: UdpSocket,
    key: Arc<lbagent::keys::Key>,
}

impl RawSubscriber {
    fn new(keys: &std::path::Path) -> RawSubscriber {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        RawSubscriber {
            socket,
            key: load_key(keys, None).unwrap(),
        }
    }

    fn subscribe(&self, to: SocketAddr, nonce: u64, lease_ms: u32, len: usize) {
        let mut out = [0u8; wire::PROBE_MAX_LEN];
        let body = wire::encode_probe_with(
            nonce,
            b"",
            Some(lease_ms),
            len - wire::AUTH_TRAILER_LEN,
            &mut out,
        );
        let n = auth::seal(&self.key, &mut out, body, auth::unix_ms());
        assert_eq!(n, len);
        self.socket.send_to(&out[..n], to).unwrap();
    }

    /// Every datagram received within `wait`.
    fn collect(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }
}

fn status_of(datagram: &[u8]) -> wire::StatusFields<'_> {
    match wire::decode_reply(datagram).unwrap() {
        wire::Reply::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn pushes_are_no_larger_than_the_subscription_coalesced_and_sealed() {
    let (agent, addr, keys) = keyed_agent("bounds", "");
    agent
        .set_state("", State::Up, Some(&"x".repeat(200)))
        .unwrap();
    let sub = RawSubscriber::new(&keys);
    // A short PROBE: 80 bytes, room for a sealed STATUS with a 7-byte message.
    sub.subscribe(addr, 0xfeed, 10_000, 80);
    let answer = sub.collect(Duration::from_millis(300));
    assert_eq!(answer.len(), 1);
    assert!(status_of(&answer[0]).flags & wire::FLAG_SUBSCRIBED != 0);
    // A burst of changes: far fewer pushes than changes, the last one says the final state.
    let states = [State::Drain, State::Up, State::Maint, State::Down];
    let wakeups = agent.change_wakeups();
    for i in 0..400 {
        agent
            .set_state(
                "",
                states[i % 4],
                Some(&format!("change {i} {}", "y".repeat(150))),
            )
            .unwrap();
    }
    agent.set_state("", State::Drain, Some("final")).unwrap();
    let pushes = sub.collect(Duration::from_millis(600));
    assert!(!pushes.is_empty());
    // At most a burst of 5, then 50 a second (the changes took well under the 600 ms
    // collected).
    assert!(pushes.len() <= 5 + 600 / 20 + 1, "{} pushes", pushes.len());
    for p in &pushes {
        assert!(
            p.len() <= 80,
            "a {}-byte push for an 80-byte subscription",
            p.len()
        );
        let s = status_of(p);
        assert_eq!(s.nonce, 0xfeed);
        assert!(s.flags & wire::FLAG_PUSHED != 0);
        let verified = auth::open(p, |id| (id == 7).then_some(&*sub.key)).unwrap();
        assert_eq!(verified.key_id, 7);
    }
    let last = status_of(pushes.last().unwrap());
    assert_eq!(last.state, State::Drain as u8);
    assert_eq!(last.message, b"final");
    assert_eq!(agent.counter(Counter::Pushed), pushes.len() as u64);
    // The changes woke the monitor (at most once per change; how often depends on how fast it
    // looks: src/status/bell.rs tests the coalescing, make bench measures it).
    let woke = agent.change_wakeups() - wakeups;
    assert!((1..=401).contains(&woke), "{woke} wake-ups for 401 changes");
}

#[test]
fn a_lease_ends_unless_renewed_and_subscribers_are_bounded() {
    let (agent, addr, keys) = keyed_agent("lease", "max_subscribers=2");
    let subs: Vec<RawSubscriber> = (0..3).map(|_| RawSubscriber::new(&keys)).collect();
    let lease = Duration::from_millis(2000);
    let mut last_subscribed = Instant::now();
    for (i, sub) in subs.iter().enumerate() {
        last_subscribed = Instant::now();
        sub.subscribe(addr, i as u64 + 1, lease.as_millis() as u32, 328);
        let answer = sub.collect(Duration::from_millis(150));
        let granted = status_of(&answer[0]).flags & wire::FLAG_SUBSCRIBED != 0;
        assert_eq!(granted, i < 2, "subscriber {i}: max_subscribers=2");
    }
    agent.set_state("", State::Drain, None).unwrap();
    assert_eq!(subs[0].collect(Duration::from_millis(150)).len(), 1);
    assert_eq!(subs[1].collect(Duration::from_millis(150)).len(), 1);
    assert!(subs[2].collect(Duration::from_millis(150)).is_empty());
    // The leases end: no more pushes, and the agent stops listening.
    let ended = last_subscribed + lease + Duration::from_millis(100);
    std::thread::sleep(ended.saturating_duration_since(Instant::now()));
    agent.set_state("", State::Up, None).unwrap();
    for sub in &subs {
        assert!(sub.collect(Duration::from_millis(200)).is_empty());
    }
    // A lease of 0 ends a subscription at once.
    subs[0].subscribe(addr, 10, 30_000, 328);
    assert_eq!(subs[0].collect(Duration::from_millis(150)).len(), 1);
    subs[0].subscribe(addr, 11, 0, 328);
    let answer = subs[0].collect(Duration::from_millis(150));
    assert!(status_of(&answer[0]).flags & wire::FLAG_SUBSCRIBED == 0);
    agent.set_state("", State::Maint, None).unwrap();
    assert!(subs[0].collect(Duration::from_millis(200)).is_empty());
}

#[test]
fn watchdog_expiry_and_recovery_are_pushed_and_logged() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (agent, addr, keys) = keyed_agent("watchdog", "watchdog_ms=300");
    let sink = lines.clone();
    agent
        .set_log_callback(Some(Arc::new(move |_, line: &str| {
            sink.lock().unwrap().push(line.to_string())
        })))
        .unwrap();
    let mut prober = subscribing_prober(Some(&keys), Duration::from_secs(30));
    agent.heartbeat().unwrap();
    assert!(probe(&mut prober, addr, "", 1).subscribed);
    // No heartbeat: the expiry is pushed though nobody probes and the host calls nothing.
    let out = receive_until(&mut prober, |out| !out.is_empty());
    let pushed = out[0].result.as_ref().unwrap();
    assert_eq!(
        (pushed.state, pushed.reason),
        (State::Down, Some(Reason::WatchdogExpired))
    );
    // The next heartbeat is a recovery, pushed too.
    agent.heartbeat().unwrap();
    let out = receive_until(&mut prober, |out| !out.is_empty());
    let pushed = out[0].result.as_ref().unwrap();
    assert_eq!(
        (pushed.state, pushed.reason),
        (State::Up, Some(Reason::Host))
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            let lines = lines.lock().unwrap();
            lines.iter().any(|l| l.starts_with("watchdog expired"))
                && lines.iter().any(|l| l.starts_with("watchdog recovered"))
        }),
        "{:?}",
        lines.lock().unwrap()
    );
}

#[test]
fn a_slow_start_is_pushed_step_by_step_without_probing_again() {
    // The ramp moves with time alone (no host call rings the bell): the agent still pushes
    // its steps, at most 50 a second, and the last one is the host's full weight.
    let (agent, addr) = common::agent(
        "initial_state=down subscribe=allow allow=127.0.0.0/8 slow_start_ms=2000 \
         slow_start_min_pct=10",
    );
    let mut prober = subscribing_prober(None, Duration::from_secs(30));
    let answer = probe(&mut prober, addr, "", 1);
    assert!(
        answer.subscribed && answer.state == State::Down,
        "{answer:?}"
    );
    agent.set_state("", State::Up, Some("warm")).unwrap();
    let out = receive_until(&mut prober, |out| {
        out.iter()
            .any(|c| c.result.as_ref().is_ok_and(|a| a.weight_pct == 100))
    });
    let weights: Vec<u8> = out
        .iter()
        .map(|c| {
            let a = c.result.as_ref().unwrap();
            assert!(a.pushed && a.state == State::Up, "{a:?}");
            a.weight_pct
        })
        .collect();
    assert_eq!(prober.stats().sent, 1, "pushed, not probed: {weights:?}");
    assert_eq!(weights.last(), Some(&100), "{weights:?}");
    assert!(weights[0] < 50, "the ramp starts low: {weights:?}");
    assert!(weights.len() >= 3, "steps, not one jump: {weights:?}");
    assert!(weights.windows(2).all(|w| w[0] < w[1]), "{weights:?}");
    // 2 s of ramp: the burst of 5 and 50 a second bound what one subscriber is sent.
    assert!(weights.len() <= 5 + 2 * 50 + 10, "{weights:?}");
    // Once the ramp is over nothing moves, and nothing more is pushed.
    std::thread::sleep(Duration::from_millis(300));
    assert!(receive_until(&mut prober, |_| true).is_empty());
}
