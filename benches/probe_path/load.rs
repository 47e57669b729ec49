//! The load tool of `make bench`: probers that measure what a responder on loopback gives
//! them. It does not know who answers (lbagent, or one of the C baselines of benches/c/): it
//! sends the same requests to each and times the answers.
//!
//! - [`udp_round_trips`]: one prober, one probe in flight: the round trip of each.
//! - [`udp_throughput`]: several probers at once, each keeping a window of probes in flight;
//!   they send and receive with `sendmmsg`/`recvmmsg`, so that a prober spends less per probe
//!   than the responder it measures.
//! - [`udp_paced`]: probes at a steady rate from one socket.
//! - [`tcp_round_trips`]: connect, send the request (HTTP only), read to the end, close.
//! - [`first_answer`]: probes back to back until an answer says what is awaited.
//!
//! Every UDP request is the PROBE `lbagent-probe` sends (protocol v1, padded to
//! `DEFAULT_PROBE_LEN`, 338 bytes, so that the longest answer fits); an echo answers it with
//! the same bytes, lbagent with a STATUS (45 bytes here).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lbagent::client::DEFAULT_PROBE_LEN;
use lbagent::proto::wire;

/// The request every UDP prober sends.
pub fn probe_request() -> Vec<u8> {
    let mut buf = [0u8; wire::PROBE_MAX_LEN];
    let len = wire::encode_probe(0x6c62_6167_656e_7421, b"", DEFAULT_PROBE_LEN, &mut buf);
    buf[..len].to_vec()
}

/// The HTTP request of an HTTP health checker.
pub const HTTP_REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n";

fn connected_udp(target: SocketAddr, timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(target).unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket
}

/// Round trips of `count` probes sent one at a time, in microseconds; panics when one gets
/// no answer within a second (nothing is lost on loopback with one probe in flight).
pub fn udp_round_trips(target: SocketAddr, count: usize) -> Vec<f64> {
    let socket = connected_udp(target, Duration::from_secs(1));
    let request = probe_request();
    let mut buf = [0u8; 2048];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        socket.send(&request).unwrap();
        let n = socket.recv(&mut buf).expect("an answer within a second");
        times.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(n > 0);
    }
    times
}

/// What [`udp_throughput`] measured.
pub struct Throughput {
    /// Answers received per second, all probers together.
    pub rate: f64,
    /// The responder's CPU time per answer (from `responder_cpu`), microseconds.
    pub cpu_per_answer_us: f64,
    /// The share of one core the responder used meanwhile.
    pub busy: f64,
    /// Probes given up for lost (no answer within 20 ms; the window is sent again).
    pub lost: u64,
}

/// `probers` threads, each with its own socket and `window` probes in flight, for `warm_up`
/// and then `window_time` measured. `responder_cpu` reads the responder's CPU time, so that the
/// result also says whether the responder was the bottleneck (busy near 100 %).
pub fn udp_throughput(
    target: SocketAddr,
    probers: usize,
    window: usize,
    warm_up: Duration,
    measured: Duration,
    responder_cpu: &dyn Fn() -> Duration,
) -> Throughput {
    let answered = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(probers + 1);
    std::thread::scope(|s| {
        for _ in 0..probers {
            s.spawn(|| {
                let socket = connected_udp(target, Duration::from_millis(20));
                let mut batch = Batch::new(window);
                barrier.wait();
                let mut outstanding = batch.send(&socket, window);
                while !stop.load(Ordering::Relaxed) {
                    match batch.receive(&socket) {
                        Some(n) => {
                            answered.fetch_add(n as u64, Ordering::Relaxed);
                            outstanding = outstanding.saturating_sub(n);
                            outstanding += batch.send(&socket, window - outstanding);
                        }
                        None => {
                            lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                            outstanding = batch.send(&socket, window);
                        }
                    }
                }
            });
        }
        barrier.wait();
        std::thread::sleep(warm_up);
        let (a0, c0, t0) = (
            answered.load(Ordering::Relaxed),
            responder_cpu(),
            Instant::now(),
        );
        std::thread::sleep(measured);
        let (a1, c1, t1) = (
            answered.load(Ordering::Relaxed),
            responder_cpu(),
            Instant::now(),
        );
        stop.store(true, Ordering::Relaxed);
        let answers = (a1 - a0).max(1) as f64;
        let wall = (t1 - t0).as_secs_f64();
        let cpu = (c1 - c0).as_secs_f64();
        Throughput {
            rate: answers / wall,
            cpu_per_answer_us: cpu / answers * 1e6,
            busy: cpu / wall,
            lost: lost.load(Ordering::Relaxed),
        }
    })
}

/// Buffers for `sendmmsg`/`recvmmsg` on a connected socket.
struct Batch {
    request: Vec<u8>,
    buffers: Vec<[u8; 512]>,
    iov: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(size: usize) -> Batch {
        // SAFETY: all-zero mmsghdr and iovec are valid (null pointers, zero lengths).
        let zero_header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Batch {
            request: probe_request(),
            buffers: vec![[0u8; 512]; size],
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                size
            ],
            headers: vec![zero_header; size],
        }
    }

    fn point(&mut self, n: usize, to_request: bool) {
        for i in 0..n {
            self.iov[i] = if to_request {
                libc::iovec {
                    iov_base: self.request.as_ptr() as *mut libc::c_void,
                    iov_len: self.request.len(),
                }
            } else {
                libc::iovec {
                    iov_base: self.buffers[i].as_mut_ptr().cast(),
                    iov_len: self.buffers[i].len(),
                }
            };
            // SAFETY: all-zero is a valid msghdr.
            self.headers[i].msg_hdr = unsafe { std::mem::zeroed() };
            self.headers[i].msg_hdr.msg_iov = &mut self.iov[i];
            self.headers[i].msg_hdr.msg_iovlen = 1;
        }
    }

    /// Sends `n` probes; returns how many went out.
    fn send(&mut self, socket: &UdpSocket, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.point(n, true);
        // SAFETY: `n` headers pointing at the request, valid for the call.
        let sent =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), self.headers.as_mut_ptr(), n as u32, 0) };
        sent.max(0) as usize
    }

    /// Waits (up to the socket's timeout) for answers; returns how many arrived, None on
    /// timeout.
    fn receive(&mut self, socket: &UdpSocket) -> Option<usize> {
        let n = self.buffers.len();
        self.point(n, false);
        // SAFETY: `n` headers pointing at our buffers, valid for the call.
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        (got > 0).then_some(got as usize)
    }
}

/// Sends `rate` probes per second for `duration`, each at its own time (not in bursts), and
/// waits for each answer; returns how many were answered.
pub fn udp_paced(target: SocketAddr, rate: u32, duration: Duration) -> u64 {
    let socket = connected_udp(target, Duration::from_secs(1));
    let request = probe_request();
    let mut buf = [0u8; 2048];
    let period = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut answered = 0;
    let mut next = start;
    while next < start + duration {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        socket.send(&request).unwrap();
        if socket.recv(&mut buf).is_ok() {
            answered += 1;
        }
        next += period;
    }
    answered
}

/// Round trips of `count` TCP exchanges (connect, the HTTP request when `http`, read until
/// the responder closes), in microseconds. Each answer must start with `expect`.
pub fn tcp_round_trips(target: SocketAddr, http: bool, count: usize, expect: &[u8]) -> Vec<f64> {
    let mut times = Vec::with_capacity(count);
    let mut answer = Vec::with_capacity(512);
    for _ in 0..count {
        answer.clear();
        let start = Instant::now();
        let mut stream = TcpStream::connect(target).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if http {
            stream.write_all(HTTP_REQUEST).unwrap();
        }
        stream.read_to_end(&mut answer).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(
            answer.starts_with(expect),
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    times
}

/// Probes back to back until an answer's state (a protocol v1 STATUS) is `state`; returns
/// CLOCK_MONOTONIC in nanoseconds when that answer arrived. Panics after `within`.
pub fn first_answer(target: SocketAddr, state: lbagent::State, within: Duration) -> u64 {
    let socket = connected_udp(target, Duration::from_secs(1));
    let request = probe_request();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        socket.send(&request).unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let at = crate::support::monotonic_ns();
        if let Ok(wire::Reply::Status(fields)) = wire::decode_reply(&buf[..n]) {
            if fields.state == state as u8 {
                return at;
            }
        }
    }
    panic!("no answer said {state:?} within {within:?}");
}
