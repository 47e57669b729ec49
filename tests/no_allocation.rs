//! The promises "host calls do not allocate" and "no allocation per probe in steady state",
//! checked with a counting global allocator. Its own test binary: nothing else runs here.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
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

#[test]
fn host_calls_and_probe_answers_do_not_allocate() {
    let agent = Agent::start("listen=127.0.0.1:0 services=game watchdog_ms=60000").unwrap();
    let addr = agent.local_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut probe = [0u8; lbagent::wire::PROBE_MAX_LEN];
    let n = lbagent::wire::encode_probe(1, b"game", 128, &mut probe);
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
        agent.set_state("", state, Some("a reason that changes the message")).unwrap();
        agent.set_state("game", state, None).unwrap();
        agent.set_weight("", i % 101).unwrap();
        agent.set_load("game", i, 10_000).unwrap();
    }
    assert_eq!(allocations() - before, 0, "host calls allocated");

    let before = allocations();
    for _ in 0..1000 {
        exchange(&probe[..n]);
        exchange(common::KEEPALIVED_PAYLOAD);
    }
    assert_eq!(allocations() - before, 0, "answering probes allocated");
    drop(agent);
}
