//! A bounded soak (60 s; LBAGENT_SOAK_SECS to change): garbage (about 6,000 datagrams/s from
//! three sockets) and valid probes while host threads hammer the API. Valid probes keep being
//! answered, memory and file descriptors stay flat, and host calls keep their cost. Its own
//! test binary.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lbagent::{Agent, Counter, State};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn soak() {
    let secs: u64 = std::env::var("LBAGENT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let agent = Arc::new(
        Agent::start(
            "listen=127.0.0.1:0 services=game,chat watchdog_ms=60000 rate_per_source=0 rate_global=0",
        )
        .unwrap(),
    );
    agent.set_state("", State::Up, Some("soak")).unwrap();
    let addr = agent.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();

    // Host threads: every hot-path call, as fast as they can; calls counted per second.
    let host_calls: Arc<Vec<AtomicU64>> =
        Arc::new((0..secs + 1).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    for t in 0..3u32 {
        let (agent, stop, calls) = (agent.clone(), stop.clone(), host_calls.clone());
        threads.push(std::thread::spawn(move || {
            let states = [State::Up, State::Drain, State::Up, State::Maint];
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let service = ["", "game", "chat"][(i % 3) as usize];
                agent.heartbeat().unwrap();
                agent
                    .set_state(
                        service,
                        states[(i / 7 % 4) as usize],
                        Some(if t == 0 { "one" } else { "two" }),
                    )
                    .unwrap();
                agent.set_weight(service, i % 101).unwrap();
                agent.set_load(service, i, 1000).unwrap();
                i = i.wrapping_add(1);
                let second = started.elapsed().as_secs().min(secs) as usize;
                calls[second].fetch_add(4, Ordering::Relaxed);
            }
        }));
    }
    // Garbage from three sockets, bounded to about 2,000 datagrams per second each.
    let garbage_sent = Arc::new(AtomicU64::new(0));
    for g in 0..3u64 {
        let (stop, sent) = (stop.clone(), garbage_sent.clone());
        threads.push(std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut x = 0x1234_5678_9abc_def0u64 ^ g;
            let mut buf = [0u8; 600];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = (x % 600) as usize;
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
                    }
                    if x % 3 == 0 && len >= 4 {
                        buf[..4].copy_from_slice(b"LBAP");
                    }
                    let _ = s.send_to(&buf[..len], addr);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    // The valid prober, on the test thread: one probe every 20 ms.
    let prober = UdpSocket::bind("127.0.0.1:0").unwrap();
    prober.connect(addr).unwrap();
    prober
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut probe = [0u8; 512];
    let mut reply = [0u8; 512];
    let (mut probes, mut first_try, mut lost) = (0u64, 0u64, 0u64);
    let (mut rss_early, mut fds_early) = (0, 0);
    let deadline = started + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let mut answered = false;
        for attempt in 0..3u64 {
            let nonce = probes << 2 | attempt;
            let n = lbagent::proto::wire::encode_probe(nonce, b"game", 128, &mut probe);
            prober.send(&probe[..n]).unwrap();
            let got = loop {
                match prober.recv(&mut reply) {
                    Ok(m) => match lbagent::proto::wire::decode_reply(&reply[..m]) {
                        Ok(lbagent::proto::wire::Reply::Status(s)) if s.nonce == nonce => {
                            break true;
                        }
                        _ => continue, // a late answer to an earlier attempt
                    },
                    Err(_) => break false,
                }
            };
            if got {
                answered = true;
                first_try += u64::from(attempt == 0);
                break;
            }
        }
        lost += u64::from(!answered);
        probes += 1;
        if rss_early == 0 && started.elapsed() >= Duration::from_secs(secs / 6) {
            (rss_early, fds_early) = (rss_kib(), fds());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (rss_late, fds_late) = (rss_kib(), fds());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let per_second: Vec<u64> = host_calls
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let window = (secs / 6).max(1) as usize;
    let early: u64 = per_second[1..1 + window].iter().sum::<u64>() / window as u64;
    let late: u64 = per_second[secs as usize - window..secs as usize]
        .iter()
        .sum::<u64>()
        / window as u64;
    println!(
        "soak {secs} s: {probes} valid probes, {first_try} answered at the first try, {lost} lost; \
         {} garbage datagrams; agent received {}, faults {}; RSS {rss_early} -> {rss_late} KiB; \
         fds {fds_early} -> {fds_late}; host calls/s early {early}, late {late} \
         (~{:.0} ns per call on 3 threads)",
        garbage_sent.load(Ordering::Relaxed),
        agent.counter(Counter::Received),
        agent.counter(Counter::Faults),
        3e9 / late.max(1) as f64,
    );
    assert_eq!(lost, 0, "valid probes went unanswered three times in a row");
    // A datagram can be lost when the machine is overloaded (UDP), hence the retries; but
    // nearly every probe is answered at once.
    assert!(
        first_try * 100 >= probes * 95,
        "{first_try} of {probes} at the first try"
    );
    assert_eq!(agent.counter(Counter::Faults), 0);
    assert_eq!(fds_late, fds_early, "file descriptors grew");
    assert!(
        rss_late <= rss_early + 4096,
        "memory grew: {rss_early} -> {rss_late} KiB"
    );
    // Host calls keep their cost (generous: the machine is shared).
    assert!(
        late * 3 >= early,
        "host calls slowed down: {early}/s -> {late}/s"
    );
}
