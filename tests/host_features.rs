//! Host self-checks, worker watchdog slots and the log callback, seen from a prober over
//! loopback UDP.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lbagent::client::{self, ProbeOptions};
use lbagent::{Error, LogLevel, Reason, State};

fn probe(addr: SocketAddr, service: &str) -> client::Answer {
    let options = ProbeOptions {
        service: service.into(),
        timeout: Duration::from_millis(1000),
        ..ProbeOptions::default()
    };
    client::probe(addr, &options).expect("an answer within a second")
}

#[test]
fn checks_pass_fail_time_out_and_never_delay_answers() {
    let (agent, addr) = agent("services=game initial_state=up");
    // 0 passes, 1 fails, 2 hangs for 3 s.
    let mode = Arc::new(AtomicU32::new(0));
    let m = mode.clone();
    agent
        .add_check(
            "game",
            "db",
            Duration::from_millis(50),
            Duration::from_millis(500),
            move || match m.load(Ordering::Relaxed) {
                0 => Ok(()),
                1 => Err("connection refused".into()),
                _ => {
                    std::thread::sleep(Duration::from_secs(3));
                    Ok(())
                }
            },
        )
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || probe(addr, "game").is_serving()));
    // The whole server is not affected by a service's check.
    mode.store(1, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || probe(addr, "game")
        .state
        == State::Down));
    let a = probe(addr, "game");
    assert_eq!(
        (a.reason, a.message.as_str()),
        (Some(Reason::CheckFailed), "db: connection refused")
    );
    assert!(probe(addr, "").is_serving());
    // A hung check: the service goes down as timed out, and answers keep coming at once.
    mode.store(2, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    let timed_out = eventually(Duration::from_secs(5), || {
        let started = Instant::now();
        let a = probe(addr, "game");
        slowest = slowest.max(started.elapsed());
        a.reason == Some(Reason::CheckTimedOut)
    });
    assert!(timed_out, "{:?}", probe(addr, "game"));
    assert!(probe(addr, "game").message.starts_with("db: timed out"));
    // Answers never waited for the check (the probe's own timeout is one second).
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    mode.store(0, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(8), || probe(addr, "game").is_serving()));
    // Names are unique; unknown names and services are errors.
    assert!(matches!(
        agent.add_check("game", "db", Duration::from_secs(1), Duration::ZERO, || Ok(
            ()
        )),
        Err(Error::Exists)
    ));
    assert!(matches!(
        agent.add_check("nope", "x", Duration::from_secs(1), Duration::ZERO, || Ok(
            ()
        )),
        Err(Error::UnknownService)
    ));
    assert!(matches!(agent.remove_check("nope"), Err(Error::NotFound)));
    agent.remove_check("db").unwrap();
    assert!(probe(addr, "game").is_serving());
}

#[test]
fn a_new_check_fails_until_it_first_passes_and_whole_server_checks_apply_everywhere() {
    let (agent, addr) = agent("services=game initial_state=up");
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let g = gate.clone();
    agent
        .add_check(
            "",
            "disk",
            Duration::from_millis(50),
            Duration::ZERO,
            move || {
                drop(g.lock().unwrap());
                Ok(())
            },
        )
        .unwrap();
    // The first run is blocked: "no result yet" is a failure, for every service.
    let a = probe(addr, "game");
    assert_eq!(
        (a.state, a.message.as_str()),
        (State::Down, "disk: no result yet")
    );
    drop(held);
    assert!(eventually(Duration::from_secs(5), || probe(addr, "game").is_serving()));
    // Stopping does not wait for ever on checks.
    let started = Instant::now();
    agent.stop(Some(Duration::from_secs(5))).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn stalled_worker_threads() {
    let (agent, addr) = agent("initial_state=up workers=4 worker_timeout_ms=300");
    let agent = Arc::new(agent);
    let a = agent.worker_register().unwrap();
    let b = agent.worker_register().unwrap();
    assert_ne!(a, b);
    let stop = Arc::new(AtomicU32::new(0));
    let beat = {
        let (agent, stop) = (agent.clone(), stop.clone());
        std::thread::spawn(move || {
            while stop.load(Ordering::Relaxed) == 0 {
                agent.worker_heartbeat(a).unwrap();
                agent.worker_heartbeat(b).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Worker b hangs; a keeps going.
            while stop.load(Ordering::Relaxed) == 1 {
                agent.worker_heartbeat(a).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    assert!(probe(addr, "").is_serving());
    stop.store(1, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || probe(addr, "").state
        == State::Down));
    let down = probe(addr, "");
    assert_eq!(down.reason, Some(Reason::WorkerStalled));
    assert!(
        down.message.contains(&format!("worker {b}")),
        "{}",
        down.message
    );
    agent.worker_unregister(b).unwrap();
    assert!(probe(addr, "").is_serving());
    assert!(matches!(agent.worker_heartbeat(b), Err(Error::NotFound)));
    stop.store(2, Ordering::Relaxed);
    beat.join().unwrap();
    let (no_slots, _) = common::agent("");
    assert!(matches!(
        no_slots.worker_register(),
        Err(Error::NoWorkerSlots)
    ));
}

#[test]
fn proportional_worker_policy_scales_the_weight() {
    let (agent, addr) =
        agent("initial_state=up workers=4 worker_timeout_ms=300 worker_policy=proportional");
    let slots: Vec<usize> = (0..4).map(|_| agent.worker_register().unwrap()).collect();
    assert!(matches!(agent.worker_register(), Err(Error::NoWorkerSlots)));
    let deadline = Instant::now() + Duration::from_secs(5);
    // Three of four keep beating.
    let mut weight = 100;
    while Instant::now() < deadline {
        for s in &slots[..3] {
            agent.worker_heartbeat(*s).unwrap();
        }
        weight = probe(addr, "").weight_pct;
        if weight == 75 {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(weight, 75);
}

#[test]
fn log_callback_receives_lines_on_the_logger_thread() {
    let (agent, addr) = agent("log_drops_ms=1");
    let lines: Arc<Mutex<Vec<(LogLevel, String, String)>>> = Arc::default();
    let sink = lines.clone();
    agent
        .set_log_callback(Some(Arc::new(move |level, line: &str| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            sink.lock().unwrap().push((level, line.to_string(), thread));
        })))
        .unwrap();
    // Two malformed datagrams, far enough apart for a drop summary.
    exchange(addr, b"LBAP", Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(20));
    exchange(addr, b"LBAP", Duration::from_millis(50));
    assert!(eventually(Duration::from_secs(3), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l, _)| l.contains("dropped_malformed="))
    }));
    let lines = lines.lock().unwrap();
    let (level, _, thread) = lines
        .iter()
        .find(|(_, l, _)| l.contains("dropped_malformed="))
        .unwrap();
    assert_eq!(*level, LogLevel::Warn);
    assert_eq!(
        thread, "lbagent-log",
        "callbacks run on the logger thread, never the monitor"
    );
}
