//! `make bench` (host calls): what `lbagent_heartbeat`, `lbagent_set_state`,
//! `lbagent_set_weight` and `lbagent_set_load` cost the host, measured with criterion.
//!
//! The calls go through the C ABI of the shared library built with this benchmark
//! (target/release/liblbagent.so, loaded with dlopen and called through the function pointers
//! dlsym returns, which costs what a C host's call through the PLT costs), from one thread and
//! from several threads at once (all calling the same agent, started with a watchdog and a
//! service, answering nobody). The alternatives a C programmer knows, measured the same way:
//!
//! - `sd_notify(0, "WATCHDOG=1")` from libsystemd (a socket, a `sendmsg` and a `close` per
//!   call), to a unix datagram socket that a thread of this process drains, as systemd would;
//! - the same datagram sent with one `sendto` on a socket opened once: the one-syscall floor
//!   of any notify-style design;
//! - `getppid()`: the cheapest system call there is.
//!
//! A second agent has a subscriber (a UDP socket that subscribed to pushed changes, drained by a
//! thread): the same calls on it show what a subscription adds to a host call (nothing on the
//! calls that change nothing; one eventfd `write` per burst of changes). Then 1,000 changes, one
//! at a time, each until its push arrives: the time from the host's call to the pushed datagram
//! in the subscriber's hands, and the monitor thread's CPU per push.
//!
//! Times are the CPU time of the calling thread per call (criterion's samples are made of
//! that). With several threads, each makes the same number of calls at once, and the figure is
//! the average CPU time per call of the threads: what contention between cores costs each
//! caller, without the time a thread waits for a core on a shared machine.
//! Results: target/criterion (criterion's own), target/bench/host_calls.md and .values.

mod support;

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::null;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use support::Report;

const STATE_UP: c_int = 2;
const STATE_DRAIN: c_int = 3;

type Agent = c_void;

/// The library's entry points, as a C host resolves them.
struct Lib {
    start: unsafe extern "C" fn(*const c_char, *mut *mut Agent) -> c_int,
    stop: unsafe extern "C" fn(*mut Agent, u32) -> c_int,
    free: unsafe extern "C" fn(*mut Agent),
    heartbeat: unsafe extern "C" fn(*mut Agent) -> c_int,
    set_state: unsafe extern "C" fn(*mut Agent, *const c_char, c_int, *const c_char) -> c_int,
    set_weight: unsafe extern "C" fn(*mut Agent, *const c_char, c_uint) -> c_int,
    set_load: unsafe extern "C" fn(*mut Agent, *const c_char, u32, u32) -> c_int,
    version: unsafe extern "C" fn() -> *const c_char,
    local_port: unsafe extern "C" fn(*const Agent, usize, *mut u16) -> c_int,
}

/// dlopen + dlsym of a library's functions. The library stays loaded for the process's life.
fn open(path: &str) -> Option<*mut c_void> {
    let path = CString::new(path).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    (!handle.is_null()).then_some(handle)
}

fn symbol(handle: *mut c_void, name: &str) -> *mut c_void {
    let name = CString::new(name).unwrap();
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!f.is_null(), "{name:?} is exported");
    f
}

impl Lib {
    fn load() -> Lib {
        let path = support::shared_library();
        let handle = open(path.to_str().unwrap())
            .unwrap_or_else(|| panic!("dlopen {} (cargo builds it)", path.display()));
        // SAFETY: each symbol has the prototype of include/lbagent.h written here (each
        // transmute's target is the field's declared function pointer type).
        #[allow(clippy::missing_transmute_annotations)]
        unsafe {
            Lib {
                start: std::mem::transmute(symbol(handle, "lbagent_start")),
                stop: std::mem::transmute(symbol(handle, "lbagent_stop")),
                free: std::mem::transmute(symbol(handle, "lbagent_free")),
                heartbeat: std::mem::transmute(symbol(handle, "lbagent_heartbeat")),
                set_state: std::mem::transmute(symbol(handle, "lbagent_set_state")),
                set_weight: std::mem::transmute(symbol(handle, "lbagent_set_weight")),
                set_load: std::mem::transmute(symbol(handle, "lbagent_set_load")),
                version: std::mem::transmute(symbol(handle, "lbagent_version")),
                local_port: std::mem::transmute(symbol(handle, "lbagent_local_port")),
            }
        }
    }
}

/// A pointer that may be shared between the benchmark's threads (the library's calls are
/// thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut Agent);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Runs `call(i)` for i in 0..iters on each of `threads` threads at once; returns the CPU
/// time each thread spent, on average (thread start-up not included). CPU time, not wall
/// time: on a shared machine a thread may wait for a core, which is no cost of the call, while
/// cache lines moving between the threads' cores stall them and are counted.
fn on_threads(threads: usize, iters: u64, call: &(dyn Fn(u64) + Sync)) -> Duration {
    let run = || {
        let start = support::thread_cpu();
        for i in 0..iters {
            call(i);
        }
        support::thread_cpu() - start
    };
    if threads == 1 {
        return run();
    }
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    run()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<Duration>()
            / threads as u32
    })
}

/// The receiving end of the notify-style datagrams: an abstract unix datagram socket drained
/// by a thread, as systemd drains its notify socket.
struct NotifySink {
    name: String,
    stop: &'static AtomicBool,
    thread: Option<std::thread::JoinHandle<()>>,
    sender: OwnedFd,
}

fn unix_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract namespace: a leading NUL, no file.
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    (addr, len as libc::socklen_t)
}

fn dgram_socket() -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl NotifySink {
    fn start() -> NotifySink {
        let name = format!("lbagent-bench-notify-{}", std::process::id());
        let receiver = dgram_socket();
        let (addr, len) = unix_addr(&name);
        // SAFETY: binds our socket to a valid address.
        let r = unsafe {
            libc::bind(
                receiver.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        assert_eq!(r, 0, "bind the notify socket");
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: reads into a local buffer.
                unsafe { libc::recv(receiver.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            }
        });
        let sender = dgram_socket();
        // SAFETY: connects our socket to a valid address.
        let r = unsafe {
            libc::connect(
                sender.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        assert_eq!(r, 0, "connect to the notify socket");
        NotifySink {
            name,
            stop,
            thread: Some(thread),
            sender,
        }
    }

    /// One datagram, one system call.
    fn send(&self) {
        let msg = b"WATCHDOG=1";
        // SAFETY: sends a local buffer on our socket.
        let n = unsafe {
            libc::send(
                self.sender.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        assert_eq!(n, msg.len() as isize);
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.send(); // wakes the drain thread
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

type SdNotify = unsafe extern "C" fn(c_int, *const c_char) -> c_int;

/// libsystemd's sd_notify, pointed at `sink` through NOTIFY_SOCKET (None without libsystemd).
fn sd_notify(sink: &NotifySink) -> Option<SdNotify> {
    let handle = open("libsystemd.so.0")?;
    // SAFETY: called from main before any other thread reads the environment.
    unsafe { std::env::set_var("NOTIFY_SOCKET", format!("@{}", sink.name)) };
    // SAFETY: sd_notify's prototype from sd-daemon.h.
    Some(unsafe { std::mem::transmute::<*mut c_void, SdNotify>(symbol(handle, "sd_notify")) })
}

/// Thread counts measured: one, and as many as the machine has cores (at least two).
/// A subscriber of an agent: a socket that subscribed (unsealed, the agent runs with
/// `subscribe=allow`), renewed and drained by a thread that counts the pushes.
struct Subscriber {
    pushes: &'static std::sync::atomic::AtomicU64,
    stop: &'static AtomicBool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let pushes: &'static std::sync::atomic::AtomicU64 =
            Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let subscribe = |socket: &std::net::UdpSocket| {
            let mut out = [0u8; lbagent::proto::wire::PROBE_MAX_LEN];
            let n = lbagent::proto::wire::encode_probe_with(1, b"", Some(60_000), 328, &mut out);
            socket.send(&out[..n]).unwrap();
        };
        subscribe(&socket);
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("the subscription's answer");
        assert!(
            n > 7
                && u16::from_be_bytes([buf[6], buf[7]]) & lbagent::proto::wire::FLAG_SUBSCRIBED
                    != 0,
            "the subscription is granted"
        );
        let thread = std::thread::spawn(move || {
            let mut renewed = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if renewed.elapsed() > Duration::from_secs(10) {
                    subscribe(&socket);
                    renewed = std::time::Instant::now();
                }
                if let Ok(n) = socket.recv(&mut buf) {
                    if n > 7
                        && u16::from_be_bytes([buf[6], buf[7]]) & lbagent::proto::wire::FLAG_PUSHED
                            != 0
                    {
                        pushes.fetch_add(1, Ordering::Release);
                    }
                }
            }
        });
        Subscriber {
            pushes,
            stop,
            thread: Some(thread),
        }
    }

    fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Acquire)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 1,000 changes, one at a time, each until its push has reached the subscriber: the wall
/// time from the host's call to the push received (median, p99), and the monitor thread's CPU
/// time per push.
fn push_latency(
    lib: &Lib,
    agent: Shared,
    subscriber: &Subscriber,
    count: usize,
) -> (f64, f64, f64) {
    // Every agent's monitor thread: the subscribed agent's works, the others sleep (their CPU
    // is counted too, so nothing is missed whichever thread is which).
    let pid = std::process::id();
    let monitors = support::threads_named(pid, "lbagent-monitor");
    assert!(!monitors.is_empty(), "the monitor threads");
    let monitor_cpu = || -> Duration { monitors.iter().map(|t| support::task_cpu(pid, *t)).sum() };
    let cpu0 = monitor_cpu();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let before = subscriber.pushes();
        let state = if i % 2 == 0 { STATE_DRAIN } else { STATE_UP };
        let t0 = support::monotonic_ns();
        // SAFETY: a live agent and valid arguments.
        unsafe { (lib.set_state)(agent.0, null(), state, null()) };
        while subscriber.pushes() == before {
            std::hint::spin_loop();
        }
        latencies.push((support::monotonic_ns() - t0) as f64);
        // Apart, as a host's changes are: past the push rate bound (50 a second after a
        // burst of 5), so each change is pushed at once.
        std::thread::sleep(Duration::from_millis(25));
    }
    let cpu = monitor_cpu() - cpu0;
    (
        support::median(&mut latencies),
        support::percentile(&mut latencies, 99.0),
        cpu.as_nanos() as f64 / count as f64,
    )
}

/// The baseline of `push_latency`, measured the same way in the same run: a thread that sleeps
/// in `epoll_wait` (with a far timeout, as the monitor thread does while it holds a lease) on
/// an eventfd, and for each wake-up reads it and sends one 51-byte UDP datagram to a socket
/// drained by another thread: the least a push can cost (a wake-up, a read, a send on
/// loopback, whose delivery the sender pays too).
fn wake_and_send_baseline(count: usize) -> (f64, f64, f64) {
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    // SAFETY: plain system calls on descriptors this function owns.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0, "eventfd");
    // SAFETY: as above.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: a valid epoll and eventfd, and a valid event.
    assert_eq!(
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, efd, &mut event) },
        0
    );
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let received: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if receiver.recv(&mut buf).is_ok() {
                received.fetch_add(1, Ordering::Release);
            }
        }
    });
    let (tid_tx, tid_rx) = mpsc::channel();
    let notifier = std::thread::spawn(move || {
        // SAFETY: gettid has no arguments.
        tid_tx
            .send(unsafe { libc::syscall(libc::SYS_gettid) } as u32)
            .unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = [0u8; 51];
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: a valid epoll and a buffer of 8 events.
            let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 8, 60_000) };
            if n > 0 {
                let mut value = [0u8; 8];
                // SAFETY: an 8-byte buffer for an eventfd read.
                unsafe { libc::read(efd, value.as_mut_ptr().cast(), 8) };
                if !stop.load(Ordering::Relaxed) {
                    socket.send_to(&datagram, to).unwrap();
                }
            }
        }
    });
    let pid = std::process::id();
    let tid = tid_rx.recv().unwrap();
    let ring = || {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to an eventfd.
        unsafe { libc::write(efd, one.as_ptr().cast(), 8) };
    };
    std::thread::sleep(Duration::from_millis(50));
    let cpu0 = support::task_cpu(pid, tid);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let before = received.load(Ordering::Acquire);
        let t0 = support::monotonic_ns();
        ring();
        while received.load(Ordering::Acquire) == before {
            std::hint::spin_loop();
        }
        latencies.push((support::monotonic_ns() - t0) as f64);
        std::thread::sleep(Duration::from_millis(25));
    }
    let cpu = support::task_cpu(pid, tid) - cpu0;
    stop.store(true, Ordering::Relaxed);
    ring();
    let _ = notifier.join();
    let _ = drain.join();
    // SAFETY: descriptors opened above, closed once.
    unsafe {
        libc::close(epoll);
        libc::close(efd);
    }
    (
        support::median(&mut latencies),
        support::percentile(&mut latencies, 99.0),
        cpu.as_nanos() as f64 / count as f64,
    )
}

fn thread_counts() -> [usize; 2] {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    [1, cores.max(2)]
}

fn main() {
    let bench = support::is_bench_run();
    let criterion_home = support::target_dir().join("criterion");
    // SAFETY: set before any thread exists; criterion reads it when it starts.
    unsafe { std::env::set_var("CRITERION_HOME", &criterion_home) };
    // Under `cargo test --all-targets` (no --bench) each call runs a few times without
    // criterion, whose argument parser rejects libtest's options such as --test-threads.
    let mut c = bench.then(|| {
        Criterion::default()
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20)
            .configure_from_args()
    });

    let lib = Lib::load();
    let config =
        CString::new("listen=127.0.0.1:0 initial_state=up watchdog_ms=60000 services=game")
            .unwrap();
    let mut agent: *mut Agent = std::ptr::null_mut();
    // SAFETY: a valid config string and out-pointer.
    assert_eq!(unsafe { (lib.start)(config.as_ptr(), &mut agent) }, 0);
    let a = Shared(agent);
    let subscribed_config = CString::new(
        "listen=127.0.0.1:0 initial_state=up watchdog_ms=60000 services=game subscribe=allow \
         allow=127.0.0.0/8",
    )
    .unwrap();
    let mut subscribed_agent: *mut Agent = std::ptr::null_mut();
    // SAFETY: a valid config string and out-pointer.
    assert_eq!(
        unsafe { (lib.start)(subscribed_config.as_ptr(), &mut subscribed_agent) },
        0
    );
    let sa = Shared(subscribed_agent);
    let mut port = 0u16;
    // SAFETY: a live agent and a valid out-pointer.
    assert_eq!(unsafe { (lib.local_port)(sa.0, 0, &mut port) }, 0);
    let subscriber = Subscriber::start(port);
    let sink = NotifySink::start();
    let notify = sd_notify(&sink);
    let watchdog = c"WATCHDOG=1";

    {
        let mut group = c.as_mut().map(|c| c.benchmark_group("host_calls"));
        let mut smoke_runs = 0;
        for threads in thread_counts() {
            let mut bench_fn = |name: &str, call: &(dyn Fn(u64) + Sync)| match group.as_mut() {
                Some(group) => {
                    group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                        b.iter_custom(|iters| on_threads(t, iters, call))
                    });
                }
                None => {
                    on_threads(threads, 100, call);
                    smoke_runs += 1;
                }
            };
            // SAFETY (all calls below): a live agent and valid arguments, as a C host passes them.
            bench_fn("heartbeat", &|_| unsafe {
                black_box((lib.heartbeat)(black_box(a).0));
            });
            bench_fn("set_state_unchanged", &|_| unsafe {
                black_box((lib.set_state)(black_box(a).0, null(), STATE_UP, null()));
            });
            bench_fn("set_state_changing", &|i| unsafe {
                let state = if i & 1 == 0 { STATE_DRAIN } else { STATE_UP };
                black_box((lib.set_state)(black_box(a).0, null(), state, null()));
            });
            bench_fn("set_weight", &|i| unsafe {
                black_box((lib.set_weight)(
                    black_box(a).0,
                    null(),
                    50 + (i & 1) as c_uint,
                ));
            });
            bench_fn("set_load", &|i| unsafe {
                black_box((lib.set_load)(
                    black_box(a).0,
                    null(),
                    (i & 1023) as u32,
                    1024,
                ));
            });
            if threads == 1 {
                bench_fn("subscribed_heartbeat", &|_| unsafe {
                    black_box((lib.heartbeat)(black_box(sa).0));
                });
                bench_fn("subscribed_set_state_unchanged", &|_| unsafe {
                    black_box((lib.set_state)(black_box(sa).0, null(), STATE_UP, null()));
                });
                bench_fn("subscribed_set_load", &|i| unsafe {
                    black_box((lib.set_load)(
                        black_box(sa).0,
                        null(),
                        (i & 1023) as u32,
                        1024,
                    ));
                });
                bench_fn("subscribed_set_state_changing", &|i| unsafe {
                    let state = if i & 1 == 0 { STATE_DRAIN } else { STATE_UP };
                    black_box((lib.set_state)(black_box(sa).0, null(), state, null()));
                });
            }
            bench_fn("version", &|_| unsafe {
                black_box((lib.version)());
            });
            bench_fn("sendto_datagram", &|_| sink.send());
            if let Some(sd_notify) = notify {
                bench_fn("sd_notify", &|_| unsafe {
                    black_box(sd_notify(0, watchdog.as_ptr()));
                });
            }
            bench_fn("getppid", &|_| unsafe {
                black_box(libc::syscall(libc::SYS_getppid));
            });
        }
        match group {
            Some(group) => group.finish(),
            None => println!("host_calls: smoke run, {smoke_runs} calls run 100 times each"),
        }
    }
    if let Some(c) = &c {
        c.final_summary();
    }
    let push_count = if bench { 1000 } else { 20 };
    let pushed = push_latency(&lib, sa, &subscriber, push_count);
    let push_baseline = wake_and_send_baseline(push_count);
    drop(subscriber);
    // SAFETY: our agents, stopped and freed once.
    unsafe {
        (lib.stop)(agent, 1000);
        (lib.free)(agent);
        (lib.stop)(subscribed_agent, 1000);
        (lib.free)(subscribed_agent);
    }
    drop(sink);
    if bench {
        report(&criterion_home, notify.is_some(), pushed, push_baseline);
    }
}

/// criterion's median (ns per call) and its 95 % confidence interval for one benchmark.
fn estimate(home: &std::path::Path, name: &str, threads: usize) -> Option<(f64, f64, f64)> {
    let path = home.join(format!("host_calls/{name}/{threads}/new/estimates.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let median = &json["median"];
    Some((
        median["point_estimate"].as_f64()?,
        median["confidence_interval"]["lower_bound"].as_f64()?,
        median["confidence_interval"]["upper_bound"].as_f64()?,
    ))
}

fn report(
    home: &std::path::Path,
    have_sd_notify: bool,
    pushed: (f64, f64, f64),
    baseline: (f64, f64, f64),
) {
    let [one, many] = thread_counts();
    let get = |name: &str, threads: usize| {
        estimate(home, name, threads).unwrap_or_else(|| panic!("criterion's result for {name}"))
    };
    let mut r = Report::new("host_calls");
    let cell = |(m, lo, hi): (f64, f64, f64)| {
        format!(
            "{} ({}-{})",
            support::ns(m),
            support::ns(lo),
            support::ns(hi)
        )
    };
    r.table(&[
        "call (through the C ABI)",
        "1 thread: median (95 % CI)",
        &format!("{many} threads at once: median (95 % CI)"),
        "one sendto / call (1 thread)",
        &format!("one sendto / call ({many} threads)"),
        "< 20 ns and >= 100x (1 thread; several)",
    ]);
    let sendto = (
        get("sendto_datagram", one).0,
        get("sendto_datagram", many).0,
    );
    let calls = [
        ("heartbeat", "`lbagent_heartbeat`"),
        ("set_state_unchanged", "`lbagent_set_state`, same state"),
        ("set_load", "`lbagent_set_load`, a new value each call"),
        (
            "set_state_changing",
            "`lbagent_set_state`, UP/DRAIN in turn",
        ),
        ("set_weight", "`lbagent_set_weight`, 50/51 in turn"),
    ];
    // The target is about the calls a host makes in its loop (heartbeat, the same state, the
    // load); a change of state or weight is shown too, with its own verdict, but it happens
    // a few times in a process's life (docs/BENCHMARKS.md says what it costs and why).
    let mut all_met = true;
    let mut worst = (0.0f64, f64::INFINITY);
    for (name, title) in calls {
        let (e1, en) = (get(name, one), get(name, many));
        let (r1, rn) = (sendto.0 / e1.0, sendto.1 / en.0);
        let (met1, metn) = (e1.0 < 20.0 && r1 >= 100.0, en.0 < 20.0 && rn >= 100.0);
        r.row(&[
            title.to_string(),
            cell(e1),
            cell(en),
            format!("{r1:.0}x"),
            format!("{rn:.0}x"),
            format!("{}; {}", support::verdict(met1), support::verdict(metn)),
        ]);
        r.value(&format!("{name}_1"), support::ns(e1.0));
        r.value(&format!("{name}_n"), support::ns(en.0));
        r.value(&format!("{name}_ratio_1"), format!("{r1:.0}x"));
        r.value(&format!("{name}_ratio_n"), format!("{rn:.0}x"));
        if name != "set_state_changing" && name != "set_weight" {
            all_met &= met1 && metn;
            worst = (worst.0.max(e1.0).max(en.0), worst.1.min(r1).min(rn));
        }
    }
    let floor = (get("version", one), get("version", many));
    r.row(&[
        "floor: `lbagent_version`, a call that does nothing".to_string(),
        cell(floor.0),
        cell(floor.1),
        String::new(),
        String::new(),
        String::new(),
    ]);
    r.value("version_1", support::ns(floor.0.0));
    r.table(&[
        "alternative (one notify per call)",
        "1 thread: median (95 % CI)",
        &format!("{many} threads at once: median (95 % CI)"),
    ]);
    let alt = |r: &mut Report, name: &str, title: &str| {
        let (e1, en) = (get(name, one), get(name, many));
        r.row(&[title.to_string(), cell(e1), cell(en)]);
        r.value(&format!("{name}_1"), support::ns(e1.0));
        r.value(&format!("{name}_n"), support::ns(en.0));
    };
    if have_sd_notify {
        alt(
            &mut r,
            "sd_notify",
            "`sd_notify(0, \"WATCHDOG=1\")` (libsystemd: socket, sendmsg, close)",
        );
    } else {
        r.value("sd_notify_1", "(no libsystemd)");
        r.value("sd_notify_n", "(no libsystemd)");
    }
    alt(
        &mut r,
        "sendto_datagram",
        "one `sendto` of \"WATCHDOG=1\" on a unix datagram socket opened once",
    );
    alt(&mut r, "getppid", "`getppid()`, the cheapest system call");
    r.table(&[
        "with a subscriber (1 thread)",
        "median (95 % CI)",
        "without a subscriber",
    ]);
    for (name, plain, title) in [
        ("subscribed_heartbeat", "heartbeat", "`lbagent_heartbeat`"),
        (
            "subscribed_set_state_unchanged",
            "set_state_unchanged",
            "`lbagent_set_state`, same state",
        ),
        ("subscribed_set_load", "set_load", "`lbagent_set_load`"),
        (
            "subscribed_set_state_changing",
            "set_state_changing",
            "`lbagent_set_state`, UP/DRAIN in turn (a push each, coalesced)",
        ),
    ] {
        let (e, p) = (get(name, one), get(plain, one));
        r.row(&[title.to_string(), cell(e), support::ns(p.0)]);
        r.value(&format!("{name}_1"), support::ns(e.0));
    }
    r.table(&[
        "a change pushed (1,000, one at a time)",
        "lbagent",
        "baseline: eventfd wake-up, one UDP send (same run)",
        "ratio",
    ]);
    let ratio = |a: f64, b: f64| format!("{:.2}", a / b.max(1.0));
    for (what, a, b) in [
        (
            "host call to the datagram in the subscriber's hands: median",
            pushed.0,
            baseline.0,
        ),
        ("the same: p99", pushed.1, baseline.1),
        (
            "CPU of the sending thread per push (monitor: the look at the board, one sendmsg)",
            pushed.2,
            baseline.2,
        ),
    ] {
        r.row(&[
            what.to_string(),
            support::us(a / 1000.0),
            support::us(b / 1000.0),
            ratio(a, b),
        ]);
    }
    r.value("push_baseline_cpu", support::us(baseline.2 / 1000.0));
    r.value("push_cpu_ratio", ratio(pushed.2, baseline.2));
    r.value("push_latency_median", support::us(pushed.0 / 1000.0));
    r.value("push_latency_p99", support::us(pushed.1 / 1000.0));
    r.value("push_monitor_cpu", support::us(pushed.2 / 1000.0));
    r.value("threads", many);
    r.value("host_calls_worst", support::ns(worst.0));
    r.value("host_calls_worst_ratio", format!("{:.0}x", worst.1));
    r.value("host_calls_verdict", support::verdict(all_met));
    r.write();
}
