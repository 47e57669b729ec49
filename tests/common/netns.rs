//! Attacks mounted for real, contained in a network namespace the test creates: a thread
//! unshares its network namespace (only that thread moves; what it starts, the agent's
//! monitor thread, programs it spawns, inherits it) and brings its loopback up, so every
//! address of 127.0.0.0/8 (and the IPv6 prefixes a test routes to `lo`) is private to it.
//! Spoofed datagrams and forged ICMP errors are written with a raw socket (`IPPROTO_RAW`,
//! the IP header included).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Runs `f` on a thread in a network namespace of its own (loopback up) and returns what it
/// returns; a panic in `f` fails the test.
pub fn in_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread, which owns no sockets.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `ip ARGS` (iproute2) in the calling thread's namespace; it must succeed.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(status.success(), "ip {args:?}: {status}");
}

/// A raw IPv4 socket that sends whole IP packets: any source address, any protocol.
pub struct RawSender {
    socket: Socket,
}

impl RawSender {
    pub fn new() -> RawSender {
        let socket = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("a raw socket (root)");
        RawSender { socket }
    }

    /// Sends a UDP datagram `payload` from `from` (spoofed) to `to`.
    pub fn udp(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let packet = ipv4_udp(from, to, payload);
        self.send(&packet, *to.ip());
    }

    /// Sends an ICMP destination unreachable (`code`: 3 port, 1 host) from `from` to the
    /// sender of `datagram` (a UDP datagram it sent from `client` to `server`), quoting it as
    /// routers and hosts do.
    pub fn icmp_unreachable(
        &self,
        from: Ipv4Addr,
        client: SocketAddrV4,
        server: SocketAddrV4,
        datagram: &[u8],
        code: u8,
    ) {
        let quoted = ipv4_udp(client, server, datagram);
        let quoted = &quoted[..quoted.len().min(20 + 8 + 256)];
        let mut icmp = vec![3, code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let packet = ipv4(from, *client.ip(), libc::IPPROTO_ICMP as u8, &icmp);
        self.send(&packet, *client.ip());
    }

    fn send(&self, packet: &[u8], to: Ipv4Addr) {
        let to: SocketAddr = SocketAddrV4::new(to, 0).into();
        // A full send buffer under a flood is the kernel telling us to slow down: retry.
        for _ in 0..1000 {
            match self.socket.send_to(packet, &to.into()) {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(e) => panic!("raw send to {to}: {e}"),
            }
        }
    }
}

impl Default for RawSender {
    fn default() -> RawSender {
        RawSender::new()
    }
}

/// An IPv4 packet (the kernel fills in the header checksum, the length and the id).
fn ipv4(from: Ipv4Addr, to: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&to.octets());
    p.extend_from_slice(payload);
    p
}

/// An IPv4 UDP packet (UDP checksum 0: none, allowed over IPv4).
pub fn ipv4_udp(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    ipv4(*from.ip(), *to.ip(), libc::IPPROTO_UDP as u8, &udp)
}

/// The Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Calls `each(i)` for `count` values of i at `per_second` on average (in bursts of at most
/// a millisecond's worth), from the calling thread; returns when done, or at `give_up`, or
/// when `each` returns false. Returns how many were called.
pub fn paced(
    count: usize,
    per_second: u32,
    give_up: Duration,
    mut each: impl FnMut(usize) -> bool,
) -> usize {
    let start = Instant::now();
    let step = Duration::from_secs(1) / per_second.max(1);
    for i in 0..count {
        let due = start + step * i as u32;
        let now = Instant::now();
        if now > start + give_up {
            return i;
        }
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        if !each(i) {
            return i + 1;
        }
    }
    count
}

/// A fraction as a percentage with one decimal, for messages.
pub fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 1000.0 / whole as f64).round() / 10.0
}
