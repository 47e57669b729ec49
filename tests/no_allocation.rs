//! The promises "host calls do not allocate" and "no allocation per probe or connection in
//! steady state", checked with a counting global allocator. Its own test binary, without
//! libtest: nothing else runs in this process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lbagent::{Agent, State};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// A plain `main` (`harness = false` in Cargo.toml): the allocation count is global to the
/// process, and libtest's own thread allocates while a test runs (it records the running test
/// after starting it), which a loaded machine can move into a measured window.
fn main() {
    host_calls_and_probe_answers_do_not_allocate();
    tcp_agent_and_http_answers_do_not_allocate();
    println!(
        "no_allocation: host calls, UDP, TCP agent, HTTP and /metrics answers allocate nothing"
    );
}

fn host_calls_and_probe_answers_do_not_allocate() {
    let agent = Agent::start(
        "listen=127.0.0.1:0 services=game watchdog_ms=60000 rate_per_source=0 rate_global=0",
    )
    .unwrap();
    let addr = agent.local_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut probe = [0u8; lbagent::proto::wire::PROBE_MAX_LEN];
    let n = lbagent::proto::wire::encode_probe(1, b"game", 128, &mut probe);
    let mut buf = [0u8; 512];
    let mut exchange = |request: &[u8]| {
        socket.send(request).unwrap();
        socket.recv(&mut buf).unwrap();
    };
    // Warm up: first use of each path may allocate (thread-locals, lazy statics).
    for _ in 0..10 {
        exchange(&probe[..n]);
        exchange(common::KEEPALIVED_PAYLOAD);
    }
    agent.set_state("", State::Up, Some("warm")).unwrap();

    let before = allocations();
    for i in 0..10_000u32 {
        agent.heartbeat().unwrap();
        let state = if i % 2 == 0 { State::Up } else { State::Drain };
        agent
            .set_state("", state, Some("a reason that changes the message"))
            .unwrap();
        agent.set_state("game", state, None).unwrap();
        agent.set_weight("", i % 101).unwrap();
        agent.set_load("game", i, 10_000).unwrap();
        // A misspelt service: an error and a count, no allocation.
        assert!(agent.set_state("gmae", state, None).is_err());
    }
    assert_eq!(allocations() - before, 0, "host calls allocated");
    assert_eq!(agent.counter(lbagent::Counter::HostUnknownService), 10_000);

    let before = allocations();
    for _ in 0..1000 {
        exchange(&probe[..n]);
        exchange(common::KEEPALIVED_PAYLOAD);
    }
    assert_eq!(allocations() - before, 0, "answering probes allocated");
    drop(agent);
}

/// One TCP exchange with a fixed buffer (the client side allocates nothing either).
fn tcp_exchange<const N: usize>(to: SocketAddr, request: &[u8], answer: &mut [u8; N]) -> usize {
    let mut s = TcpStream::connect(to).unwrap();
    s.write_all(request).unwrap();
    let mut n = 0;
    loop {
        match s.read(&mut answer[n..]).unwrap() {
            0 => return n,
            k => n += k,
        }
    }
}

/// Connections of each kind held open at once during the warm-up.
const WARM_CONNECTIONS: usize = 8;

fn tcp_agent_and_http_answers_do_not_allocate() {
    let agent = Agent::start(
        "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 services=game initial_state=up \
         metrics=on",
    )
    .unwrap();
    let (tcp, http) = (agent.tcp_agent_addrs()[0], agent.http_addrs()[0]);
    let get = b"GET /health/game HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n";
    let mut answer = [0u8; 2048];
    // Warm up: connection slots and their buffers are allocated on first use, then reused.
    // Steady state means the pool has reached the peak concurrency: even one client at a
    // time can have a few connections open on the agent's side (a new one is often accepted
    // before the close of the last is read), so the warm-up holds several open at once.
    let held: Vec<TcpStream> = (0..WARM_CONNECTIONS)
        .flat_map(|_| [(tcp, &b"service=game\n"[..]), (http, &get[..])])
        .map(|(to, request)| {
            let mut s = TcpStream::connect(to).unwrap();
            s.write_all(request).unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap(); // answered: the agent holds its slot
            s
        })
        .collect();
    drop(held);
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut exposition = [0u8; 16384];
    for _ in 0..10 {
        tcp_exchange(tcp, b"service=game\n", &mut answer);
        tcp_exchange(http, get, &mut answer);
        tcp_exchange(http, scrape, &mut exposition);
    }
    let before = allocations();
    for _ in 0..200 {
        let n = tcp_exchange(tcp, b"service=game\n", &mut answer);
        assert_eq!(&answer[..n], b"up ready 100%\n");
        let n = tcp_exchange(http, get, &mut answer);
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        let n = tcp_exchange(http, scrape, &mut exposition);
        assert!(
            exposition[..n].ends_with(b"} 1\n"),
            "a whole /metrics answer"
        );
    }
    assert_eq!(
        allocations() - before,
        0,
        "TCP, HTTP and /metrics answers allocated"
    );
    drop(agent);
}
