//! systemd's side of the notify protocol in tests: a Unix datagram socket that records every
//! message (`READY=1`, `STATUS=...`, `WATCHDOG=1`, ...) with its arrival time.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct NotifySocket {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` names.
    pub path: PathBuf,
    /// Every message received so far, in order.
    pub messages: Vec<(Instant, String)>,
}

impl NotifySocket {
    /// Binds `DIR/notify`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            messages: Vec::new(),
        }
    }

    /// Receives until `done` holds for the messages so far (at most 15 s).
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&[(Instant, String)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(&self.messages) {
            assert!(
                Instant::now() < deadline,
                "waited 15 s for {what}; got {:#?}",
                self.messages
            );
            self.receive_one();
        }
    }

    /// Receives for `d`.
    pub fn listen_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        self.until("time to pass", |_| Instant::now() >= end);
    }

    /// Takes every message already queued on the socket.
    pub fn drain_queued(&mut self) {
        while self.receive_one() {}
    }

    /// Messages containing `text`.
    pub fn count(&self, text: &str) -> usize {
        self.since(0, text)
    }

    /// Messages containing `text` from the `index`-th on.
    pub fn since(&self, index: usize, text: &str) -> usize {
        self.messages[index..]
            .iter()
            .filter(|(_, m)| m.contains(text))
            .count()
    }

    fn receive_one(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                self.messages.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
                true
            }
            Err(_) => false,
        }
    }
}
