//! Checks that look at the whole process (threads, file descriptors, wake-ups), so they run in
//! their own test binary, one after the other, with no other agents around.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use lbagent::Agent;
use lbagent::client::{self, ProbeOptions};

fn probe_serving(addr: SocketAddr) -> bool {
    client::probe(addr, &ProbeOptions::default())
        .expect("an answer")
        .is_serving()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn monitor_threads() -> Vec<u64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid: u64 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "lbagent-monitor").then_some(tid)
        })
        .collect()
}

fn context_switches(tid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn process_resources() {
    failed_start_leaves_nothing_behind();
    stop_releases_the_thread_and_sockets();
    idle_monitor_thread_does_not_wake_up();
}

fn failed_start_leaves_nothing_behind() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let (threads_before, fds_before) = (threads(), fds());
    // The first address binds, the second does not: the first must be closed again.
    for config in [
        format!("listen=127.0.0.1:0,{taken_addr}"),
        format!("listen=[::1]:0,127.0.0.1:0,{taken_addr}"),
        "services=ok,ok".to_string(),
    ] {
        let err = Agent::start(&config).err().expect("start fails");
        assert!(!err.to_string().is_empty());
        assert_eq!(
            threads(),
            threads_before,
            "a thread was left behind by {config}"
        );
        assert_eq!(
            fds(),
            fds_before,
            "a descriptor was left behind by {config}"
        );
    }
    assert!(eventually(Duration::from_secs(2), || monitor_threads().is_empty()));
}

fn stop_releases_the_thread_and_sockets() {
    let (threads_before, fds_before) = (threads(), fds());
    let (agent, addr) = agent("initial_state=up");
    assert!(probe_serving(addr));
    assert_eq!(monitor_threads().len(), 1);
    agent.stop(None).unwrap();
    // The joined thread's /proc entry can outlive the join by a moment.
    assert!(eventually(Duration::from_secs(2), || monitor_threads().is_empty()));
    drop(agent);
    assert!(eventually(Duration::from_secs(2), || (threads(), fds())
        == (threads_before, fds_before)));
}

fn idle_monitor_thread_does_not_wake_up() {
    let (agent, addr) = agent("initial_state=up watchdog_ms=100");
    assert!(probe_serving(addr));
    let tid = monitor_threads()[0];
    // Let the thread finish the probe and go back to sleep before counting.
    std::thread::sleep(Duration::from_millis(200));
    let before = context_switches(tid);
    // No probes for a while: the thread must sleep through it (no timers, no polling), even
    // with a watchdog configured (it is judged when a probe arrives).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        context_switches(tid),
        before,
        "the idle monitor thread woke up"
    );
    agent.heartbeat().unwrap();
    assert!(probe_serving(addr));
    assert!(
        context_switches(tid) > before,
        "the thread did not wake for a probe"
    );
}
