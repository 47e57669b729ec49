//! The prober's socket and the ICMP errors it receives.
//!
//! An unconnected UDP socket hears nothing of ICMP errors unless `IP_RECVERR` /
//! `IPV6_RECVERR` is set; then the kernel queues each error (port unreachable, host
//! unreachable) with the destination of the datagram that caused it and, on Linux, the quoted
//! datagram itself. The prober reads that queue to tell which target refused, at once, instead
//! of waiting for its timeout. (keepalived's `UDP_CHECK` fails on the same ICMP errors, through
//! a connected socket.)
//!
//! While an error is pending, the next `recv` or `send` on the socket fails once with its
//! errno; both callers retry (see `is_pending_icmp`).

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer asked for: a burst of answers must not be dropped while the owner of the
/// prober is busy (writing files, logging). `SO_RCVBUFFORCE` when privileged, else capped by
/// `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 << 20;
/// Send buffer asked for, for bursts of probes.
const SEND_BUFFER: usize = 1 << 20;

/// The address families the socket can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    /// An IPv6 socket that also reaches IPv4 targets through v4-mapped addresses.
    DualStack,
    /// IPv6 is not available on this host: IPv4 targets only.
    V4Only,
}

/// Opens the prober's one socket: non-blocking, close-on-exec, bound to an ephemeral port,
/// dual-stack when IPv6 exists, with ICMP errors queued.
pub(super) fn open_socket() -> io::Result<(UdpSocket, Family)> {
    let (socket, family) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => {
            s.set_only_v6(false)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
            (s, Family::DualStack)
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            (s, Family::V4Only)
        }
        Err(e) => return Err(e),
    };
    socket.set_nonblocking(true)?;
    let socket: UdpSocket = socket.into();
    // Best effort: a smaller buffer still works, it only absorbs smaller bursts.
    if setsockopt(&socket, sockopt::RcvBufForce, &RECV_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &RECV_BUFFER);
    }
    let _ = setsockopt(&socket, sockopt::SndBuf, &SEND_BUFFER);
    // IPv4 errors, also for v4-mapped destinations of a dual-stack socket.
    setsockopt(&socket, sockopt::Ipv4RecvErr, &true).map_err(io::Error::from)?;
    if family == Family::DualStack {
        setsockopt(&socket, sockopt::Ipv6RecvErr, &true).map_err(io::Error::from)?;
    }
    Ok((socket, family))
}

/// True for the errno of an ICMP error: a `recv` or `send` that fails with it only reports an
/// error that is also queued, and is retried.
pub(super) fn is_pending_icmp(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::EPROTO
                | libc::EMSGSIZE
        )
    )
}

/// One queued ICMP error.
pub(super) struct IcmpError<'a> {
    /// Where the datagram that caused it was sent (v4-mapped addresses made plain IPv4).
    pub destination: SocketAddr,
    /// The errno it stands for (`ECONNREFUSED` for port unreachable).
    pub errno: i32,
    /// The start of that datagram as quoted by the ICMP message (may be empty).
    pub quoted: &'a [u8],
}

/// Reads every queued ICMP error, calling `each` for each one. `control` is the scratch
/// buffer for the ancillary data (from `control_buffer`).
pub(super) fn drain_errors(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
    mut each: impl FnMut(IcmpError<'_>),
) {
    loop {
        let (len, destination, errno) = {
            let mut iov = [IoSliceMut::new(buf)];
            match recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(control),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let errno = msg.cmsgs().ok().and_then(|mut cmsgs| {
                        cmsgs.find_map(|c| match c {
                            ControlMessageOwned::Ipv4RecvErr(e, _)
                            | ControlMessageOwned::Ipv6RecvErr(e, _) => Some(e.ee_errno as i32),
                            _ => None,
                        })
                    });
                    (msg.bytes, msg.address.and_then(socket_addr), errno)
                }
                Err(Errno::EINTR) => continue,
                // EAGAIN: the queue is empty. Anything else: nothing more to read now.
                Err(_) => return,
            }
        };
        if let (Some(destination), Some(errno)) = (destination, errno) {
            each(IcmpError {
                destination,
                errno,
                quoted: &buf[..len.min(buf.len())],
            });
        }
    }
}

/// A scratch buffer large enough for the ancillary data of one queued error.
pub(super) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6)
}

fn socket_addr(storage: SockaddrStorage) -> Option<SocketAddr> {
    let addr = if let Some(v4) = storage.as_sockaddr_in() {
        SocketAddr::from((v4.ip(), v4.port()))
    } else if let Some(v6) = storage.as_sockaddr_in6() {
        SocketAddr::from((v6.ip(), v6.port()))
    } else {
        return None;
    };
    Some(canonical(addr))
}

/// The address with a v4-mapped IPv6 address made plain IPv4, so that answers received on a
/// dual-stack socket compare equal to the IPv4 targets they answer.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
