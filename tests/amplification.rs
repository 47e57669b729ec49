//! Anti-amplification, proven over loopback: 100,000 datagrams of random length (0..600) and
//! content, and 20,000 mutated valid probes (some authenticated), each followed by a valid
//! sentinel probe so that every answer can be matched to its request. Every answer is at most
//! as long as its request, at most one answer per request, the agent never stops answering,
//! and its counters add up to what was sent.

mod common;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use lbagent::keys::KeySet;
use lbagent::proto::auth;
use lbagent::proto::wire::{self, Reply};
use lbagent::{Agent, Counter, State};

/// xorshift64*: a small deterministic generator (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[test]
fn no_answer_is_larger_than_its_request() {
    let dir = common::target_dir().join("amplification-test");
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("keys");
    std::fs::write(&key_path, format!("5 {SECRET}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keys = KeySet::parse(&format!("5 {SECRET}")).unwrap();
    let key = keys.first().unwrap().clone();

    let agent = Agent::start(&format!(
        "listen=127.0.0.1:0 services=game,chat key_file={} auth=optional text=on \
         rate_per_source=0 rate_global=0",
        key_path.display()
    ))
    .unwrap();
    agent
        .set_state("", State::Up, Some(&"reason ".repeat(40)))
        .unwrap();
    let addr = agent.local_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let seed = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut rng = Rng(seed);
    let mut request = [0u8; 1024];
    let mut sentinel = [0u8; wire::PROBE_MAX_LEN];
    let mut answer = [0u8; 2048];
    let (mut answered, mut sent) = (0u64, 0u64);

    for i in 0..120_000u64 {
        let len = if i < 100_000 {
            // Random length and content.
            let len = rng.below(600) as usize;
            rng.fill(&mut request[..len]);
            len
        } else {
            // A valid probe, maybe sealed, then mutated.
            let service: &[u8] = [&b""[..], b"game", b"nope"][rng.below(3) as usize];
            let mut len = 48 + rng.below(465) as usize;
            let sealed = rng.below(2) == 0 && len >= 80;
            if sealed {
                wire::encode_probe(i, service, len - wire::AUTH_TRAILER_LEN, &mut request);
                len = auth::seal(
                    &key,
                    &mut request,
                    len - wire::AUTH_TRAILER_LEN,
                    auth::unix_ms(),
                );
            } else {
                len = wire::encode_probe(i, service, len, &mut request);
            }
            match rng.below(4) {
                0 => {
                    let at = rng.below(len as u64) as usize;
                    request[at] ^= 1 << rng.below(8);
                }
                1 => len = rng.below(len as u64) as usize,
                2 => {
                    let extra = rng.below(100) as usize;
                    rng.fill(&mut request[len..len + extra]);
                    len += extra;
                }
                _ => {}
            }
            len
        };
        socket.send(&request[..len]).unwrap();
        // The sentinel's nonce is random: no mutation of a request can make it up.
        let sentinel_nonce = rng.next();
        let sentinel_len = wire::encode_probe(sentinel_nonce, b"", 48, &mut sentinel);
        socket.send(&sentinel[..sentinel_len]).unwrap();
        sent += 2;
        // Everything before the sentinel's STATUS answers the request (one socket, loopback,
        // one monitor thread: order is kept).
        let mut replies_to_request = 0;
        loop {
            let n = socket
                .recv(&mut answer)
                .unwrap_or_else(|e| panic!("no answer to sentinel {i} (seed {seed:#x}): {e}"));
            if matches!(wire::decode_reply(&answer[..n]), Ok(Reply::Status(s)) if s.nonce == sentinel_nonce)
            {
                break;
            }
            assert!(
                n <= len,
                "request {i} of {len} bytes got a {n}-byte answer (seed {seed:#x}): {:?}",
                &request[..len]
            );
            replies_to_request += 1;
            assert!(
                replies_to_request <= 1,
                "two answers to request {i} (seed {seed:#x})"
            );
            answered += 1;
        }
    }
    // Counters add up to what was sent.
    // (An answer is counted just after it is sent: let the last count land.)
    let outcomes = || -> u64 {
        Counter::DATAGRAM_OUTCOMES
            .iter()
            .map(|c| agent.counter(*c))
            .sum()
    };
    assert!(
        common::eventually(Duration::from_secs(5), || {
            agent.counter(Counter::Received) == sent && outcomes() == sent
        }),
        "received {} and outcomes {} of {sent} sent",
        agent.counter(Counter::Received),
        outcomes()
    );
    assert_eq!(agent.counter(Counter::Faults), 0);
    assert_eq!(agent.counter(Counter::SendFailed), 0);
    let answers = agent.counter(Counter::AnsweredStatus)
        + agent.counter(Counter::AnsweredText)
        + agent.counter(Counter::AnsweredError);
    assert_eq!(answers, answered + 120_000, "answers seen vs counted");
    println!(
        "sent {sent}: answered {answered} random/mutated requests; dropped: malformed {}, \
         looks-like-reply {}, auth failed {}, auth stale {}",
        agent.counter(Counter::DroppedMalformed),
        agent.counter(Counter::DroppedLooksLikeReply),
        agent.counter(Counter::DroppedAuthFailed),
        agent.counter(Counter::DroppedAuthStale),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
