//! Entry points for the fuzz targets in `fuzz/` (hidden from the documentation): the agent's
//! whole decision on one datagram, with its promises checked.

use std::net::SocketAddr;
use std::sync::OnceLock;

use crate::auth::KeySet;
use crate::config::Config;
use crate::limit::RateLimiter;
use crate::responder::{Outcome, Policy, Responder};
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
    let mut limiter = RateLimiter::new(0, 0);
    let mut out = [0u8; crate::wire::PROBE_MAX_LEN];
    let source: SocketAddr = ([127, 0, 0, 1], 40000).into();
    match responder.respond(
        &mut limiter,
        source,
        Some(source.ip()),
        datagram,
        &mut out,
        1000,
    ) {
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
