//! Entry points for the fuzz targets in `fuzz/` and the benchmarks in `benches/` (hidden from
//! the documentation): the agent's whole decision on one datagram, with its promises checked
//! (`answer_datagram`), or with a configuration of the caller's (`Decider`).

use std::net::SocketAddr;
use std::sync::OnceLock;

use crate::config::Config;
use crate::guard::Policy;
use crate::guard::{Admission, AdmissionOptions};
use crate::keys::KeySet;
use crate::proto::{http, wire};
use crate::serve::answer::{Envelope, Outcome, Responder, Tables};
use crate::serve::subscribe::Subscriptions;
use crate::state::{Reason, State};
use crate::status::{Board, BoardConfig, Target, Text};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Fixture {
    board: Board,
    policy: Policy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let services = ["game".to_string(), "chat".to_string()];
        let board = Board::new(
            &BoardConfig {
                initial: State::Up,
                services: &services,
                watchdog_ms: 0,
                workers: 0,
                worker_timeout_ms: 1000,
                worker_policy: crate::status::WorkerPolicy::Any,
                shaping: crate::status::shaping::ShapingConfig::OFF,
                drain: crate::status::DrainConfig::DEFAULT,
            },
            0,
        )
        .expect("shared memory for the fuzzing board");
        let long = Text::from_reason("é".repeat(200).as_bytes());
        board.set_state(Target::Server, State::Up, Reason::Host, Some(&long), 0);
        let mut config = Config::default();
        config.keys = KeySet::parse(&format!("1 {SECRET}")).ok();
        config.auth = crate::config::AuthMode::Optional;
        Fixture {
            board,
            policy: Policy::from_config(&config),
        }
    })
}

/// Answers `datagram` as the agent would and checks the promises: at most one answer, never
/// longer than the request. Returns the answer's length.
pub fn answer_datagram(datagram: &[u8]) -> Option<usize> {
    let f = fixture();
    let responder = Responder {
        board: &f.board,
        policy: &f.policy,
        instance_id: 7,
    };
    let mut admission = Admission::unlimited();
    let mut subscriptions = Subscriptions::new(4, crate::config::SubscribeMode::Auth);
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    let source: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let tables = Tables {
        admission: &mut admission,
        subscriptions: &mut subscriptions,
    };
    let envelope = Envelope {
        source,
        destination: Some(source.ip()),
        listener: 0,
    };
    match responder.respond(tables, envelope, datagram, &mut out, 1000) {
        Outcome::Reply(len, _) => {
            assert!(
                len <= datagram.len(),
                "{len}-byte answer to {} bytes",
                datagram.len()
            );
            Some(len)
        }
        Outcome::Drop(_) => None,
    }
}

/// The agent's decision on datagrams under a configuration (allow-list, keys, rate limits),
/// with the monitor thread's state (budgets, replay cache) kept across calls: what
/// `benches/admission.rs` times.
pub struct Decider {
    policy: Policy,
    admission: Admission,
    subscriptions: Subscriptions,
    out: [u8; wire::PROBE_MAX_LEN],
}

impl Decider {
    /// A decider for `config` (its `listen` and TCP addresses are not used).
    pub fn new(config: &Config) -> Decider {
        Decider {
            policy: Policy::from_config(config),
            admission: Admission::new(AdmissionOptions::from_config(config)),
            subscriptions: Subscriptions::new(0, config.subscribe),
            out: [0; wire::PROBE_MAX_LEN],
        }
    }

    /// Decides `datagram` from `source` as the monitor thread would at monotonic time `now`
    /// (milliseconds); returns the answer's length, or None for a drop.
    pub fn decide(&mut self, source: SocketAddr, datagram: &[u8], now: u64) -> Option<usize> {
        let f = fixture();
        let responder = Responder {
            board: &f.board,
            policy: &self.policy,
            instance_id: 7,
        };
        let tables = Tables {
            admission: &mut self.admission,
            subscriptions: &mut self.subscriptions,
        };
        let envelope = Envelope {
            source,
            destination: Some(source.ip()),
            listener: 0,
        };
        match responder.respond(tables, envelope, datagram, &mut self.out, now) {
            Outcome::Reply(len, _) => Some(len),
            Outcome::Drop(_) => None,
        }
    }
}

/// Answers `request` (received so far; `full`: no more can come) as the HTTP endpoint would and
/// checks the promises: a complete HTTP/1.1 answer that fits its buffer, whose body is as long
/// as its Content-Length says (or empty, for HEAD). Returns the status code, or None while the
/// request is incomplete.
pub fn answer_http(request: &[u8], full: bool) -> Option<u16> {
    let f = fixture();
    let mut out = [0u8; http::MAX_RESPONSE];
    let board = &f.board;
    match http::respond(
        request,
        full,
        |name| board.status(board.target(name), 1000),
        7,
        &mut out,
    ) {
        http::Answer::Incomplete => {
            assert!(
                !full,
                "an incomplete request that cannot grow must be answered"
            );
            None
        }
        // The monitor thread answers /metrics itself (`proto/metrics.rs`, fuzzed by its tests).
        http::Answer::Metrics { .. } => Some(200),
        http::Answer::Reply { len, .. } => {
            let answer = &out[..len];
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut headers);
            let head_len = match parsed.parse(answer) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("not a complete HTTP answer ({other:?}): {answer:?}"),
            };
            assert_eq!(parsed.version, Some(1));
            let content_length: usize = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("a Content-Length");
            let body = len - head_len;
            assert!(
                body == content_length || body == 0,
                "Content-Length {content_length}, body {body}"
            );
            parsed.code
        }
    }
}
