//! A simulated fleet of agents for the poller's tests and benchmark: one thread owning many
//! UDP sockets, each on its own loopback address (127.0.x.y, a port chosen by the system),
//! answering PROBEs with lbagent::proto::wire as the behaviour set for that socket says.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;

use lbagent::proto::wire;
use lbagent::{Reason, State};
use mio::net::UdpSocket as MioUdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

/// How one simulated agent answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Behaviour {
    /// UP at weight 100.
    Up = 0,
    /// UP at weight 0.
    UpWeightZero = 1,
    Drain = 2,
    Down = 3,
    /// No answer at all.
    Silent = 4,
}

impl Behaviour {
    fn from_u8(v: u8) -> Behaviour {
        match v {
            0 => Behaviour::Up,
            1 => Behaviour::UpWeightZero,
            2 => Behaviour::Drain,
            3 => Behaviour::Down,
            _ => Behaviour::Silent,
        }
    }
}

/// The running fleet; stops its thread when dropped.
pub struct Responder {
    addrs: Vec<SocketAddr>,
    behaviours: Arc<Vec<AtomicU8>>,
    answered: Arc<AtomicU64>,
    /// Whether subscribing PROBEs are answered as granted (`FLAG_SUBSCRIBED`).
    grant: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

const WAKER: Token = Token(usize::MAX);

/// Raises the soft limit on open files to the hard limit (many sockets in one process).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Responder {
    /// Starts `count` simulated agents, all `Up`.
    pub fn start(count: usize) -> Responder {
        raise_fd_limit();
        let poll = Poll::new().unwrap();
        let mut sockets = Vec::with_capacity(count);
        let mut addrs = Vec::with_capacity(count);
        for i in 0..count {
            // 127.0.1.1 .. 127.0.x.250: loopback addresses, one per simulated server.
            let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            let std_socket = UdpSocket::bind((ip, 0)).unwrap();
            std_socket.set_nonblocking(true).unwrap();
            addrs.push(std_socket.local_addr().unwrap());
            let mut socket = MioUdpSocket::from_std(std_socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .unwrap();
            sockets.push(socket);
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let behaviours: Arc<Vec<AtomicU8>> = Arc::new(
            (0..count)
                .map(|_| AtomicU8::new(Behaviour::Up as u8))
                .collect(),
        );
        let answered = Arc::new(AtomicU64::new(0));
        let grant = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (behaviours, answered, grant, stop) = (
                behaviours.clone(),
                answered.clone(),
                grant.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || serve(poll, sockets, &behaviours, &answered, &grant, &stop))
        };
        Responder {
            addrs,
            behaviours,
            answered,
            grant,
            stop,
            waker,
            thread: Some(thread),
        }
    }

    /// The address of simulated agent `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// How many simulated agents there are.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Changes how agent `i` answers from now on.
    pub fn set(&self, i: usize, b: Behaviour) {
        self.behaviours[i].store(b as u8, Ordering::Relaxed);
    }

    /// From now on, answers to subscribing PROBEs say the subscription is granted (the
    /// simulated agents never push: this is what the prober's bookkeeping costs).
    pub fn grant_subscriptions(&self, on: bool) {
        self.grant.store(on, Ordering::Relaxed);
    }

    /// STATUS answers sent so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut poll: Poll,
    sockets: Vec<MioUdpSocket>,
    behaviours: &[AtomicU8],
    answered: &AtomicU64,
    grant: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut out = [0u8; wire::PROBE_MAX_LEN];
    while !stop.load(Ordering::Acquire) {
        if poll.poll(&mut events, None).is_err() {
            continue;
        }
        for event in events.iter() {
            let i = event.token().0;
            if i == WAKER.0 {
                continue;
            }
            let socket = &sockets[i];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(wire::Request::Probe(probe)) = wire::decode_request(&buf[..n]) else {
                    continue;
                };
                let (state, weight) =
                    match Behaviour::from_u8(behaviours[i].load(Ordering::Relaxed)) {
                        Behaviour::Silent => continue,
                        Behaviour::Up => (State::Up, 100),
                        Behaviour::UpWeightZero => (State::Up, 0),
                        Behaviour::Drain => (State::Drain, 100),
                        Behaviour::Down => (State::Down, 100),
                    };
                let granted =
                    probe.lease_ms.is_some_and(|l| l > 0) && grant.load(Ordering::Relaxed);
                let fields = wire::StatusFields {
                    flags: if granted { wire::FLAG_SUBSCRIBED } else { 0 },
                    nonce: probe.nonce,
                    instance_id: 0x5151_0000 + i as u64,
                    generation: 1,
                    state: state as u8,
                    reason: Reason::Host as u8,
                    weight_pct: weight,
                    since_ms: 0,
                    in_use: 0,
                    capacity: 0,
                    message: b"simulated",
                };
                if let Some(len) = wire::encode_status(&fields, probe.len, &mut out) {
                    if socket.send_to(&out[..len], from).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
