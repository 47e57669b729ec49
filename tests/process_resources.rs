//! Checks that look at the whole process (threads, file descriptors, wake-ups), so they run in
//! their own test binary, one after the other, with no other agents around.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
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
    forked_worker_closes_its_copies_of_the_tcp_sockets();
}

fn failed_start_leaves_nothing_behind() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let taken_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_tcp_addr = taken_tcp.local_addr().unwrap();
    let (threads_before, fds_before) = (threads(), fds());
    // The first address binds, the second does not: the first must be closed again.
    for config in [
        format!("listen=127.0.0.1:0,{taken_addr}"),
        format!("listen=[::1]:0,127.0.0.1:0,{taken_addr}"),
        "services=ok,ok".to_string(),
        // UDP and the agent-check bind, HTTP does not.
        format!("listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=[::1]:0,{taken_tcp_addr}"),
        format!("listen=127.0.0.1:0 http=127.0.0.1:0 tcp_agent={taken_tcp_addr}"),
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
    let (agent, addr) = agent("initial_state=up tcp_agent=127.0.0.1:0 http=127.0.0.1:0");
    assert!(probe_serving(addr));
    assert_eq!(http_get(agent.http_addrs()[0], "/health").code, 200);
    assert_eq!(
        tcp_exchange(agent.tcp_agent_addrs()[0], b""),
        "up ready 100%\n"
    );
    // A connection still open at stop is closed too.
    let mut open = TcpStream::connect(agent.http_addrs()[0]).unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(lbagent::Counter::ConnAccepted) == 3
    }));
    assert_eq!(monitor_threads().len(), 1);
    agent.stop(None).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(open.read(&mut [0u8; 16]).unwrap(), 0, "closed by stop");
    drop(open);
    // The joined thread's /proc entry can outlive the join by a moment.
    assert!(eventually(Duration::from_secs(2), || monitor_threads().is_empty()));
    drop(agent);
    assert!(eventually(Duration::from_secs(2), || (threads(), fds())
        == (threads_before, fds_before)));
}

fn idle_monitor_thread_does_not_wake_up() {
    let (agent, addr) = agent(
        "initial_state=up watchdog_ms=100 services=game tcp_agent=127.0.0.1:0 http=127.0.0.1:0",
    );
    let (tcp, http) = (agent.tcp_agent_addrs()[0], agent.http_addrs()[0]);
    assert!(probe_serving(addr));
    // TCP and HTTP answers leave no timer behind once their connections are closed.
    assert_eq!(http_get(http, "/health").code, 200);
    assert_eq!(tcp_exchange(tcp, b"service=game\n"), "up ready 100%\n");
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
    // A client that connects and sends nothing: the thread wakes at the connection's deadline
    // (a timer only while a connection is open), closes it, and sleeps again.
    let mut idle = TcpStream::connect(http).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "closed by the agent"
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = context_switches(tid);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        context_switches(tid),
        before,
        "the monitor thread kept waking after its last connection closed"
    );
}

/// A prefork worker must not keep the agent's TCP ports open: once the master stops, HAProxy's
/// agent-check and HTTP checkers must be refused, not left hanging in a backlog nobody reads.
fn forked_worker_closes_its_copies_of_the_tcp_sockets() {
    let (agent, _) = agent("initial_state=up tcp_agent=127.0.0.1:0 http=127.0.0.1:0");
    let (tcp, http) = (agent.tcp_agent_addrs()[0], agent.http_addrs()[0]);
    // An HTTP connection open at the fork: the worker inherits it too.
    let mut open = TcpStream::connect(http).unwrap();
    assert!(eventually(Duration::from_secs(2), || {
        agent.counter(lbagent::Counter::ConnAccepted) == 1
    }));
    // SAFETY: the child only calls after_fork_worker, sleeps and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match agent.after_fork_worker() {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // Alive until the parent's checks below are done (they take under 1.5 s).
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // Let the worker close its copies, then stop the master.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop(Some(Duration::from_secs(5))).unwrap();
    for addr in [tcp, http] {
        let e = TcpStream::connect(addr).expect_err("the port is closed");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
    // The connection open at the fork was closed by the master and not kept by the worker.
    open.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    match open.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection is still open somewhere: {other:?}"),
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}
