//! systemd's notification protocol (sd_notify(3)): datagrams of `KEY=VALUE` lines sent to the
//! Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), and the
//! watchdog's period from `WATCHDOG_USEC` (meant for this process when `WATCHDOG_PID` is unset
//! or names it).
//!
//! The environment is read once, by whoever starts (the agent's `systemd=on`, the director);
//! then one socket, opened once, sends every message: no allocation and one `sendto` per
//! message.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, read from the environment.
#[derive(Clone, Debug)]
pub struct NotifyTarget {
    addr: SocketAddr,
    /// What `NOTIFY_SOCKET` says (for logs).
    pub name: String,
    /// systemd's watchdog period for this process (`WatchdogSec=`), if any.
    pub watchdog: Option<Duration>,
}

impl NotifyTarget {
    /// The target from `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`: `Ok(None)` when
    /// the process does not run under systemd (or under a unit without `Type=notify`), an
    /// error when `NOTIFY_SOCKET` is not something a datagram can be sent to.
    pub fn from_env() -> Result<Option<NotifyTarget>, String> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let name = name
            .into_string()
            .map_err(|_| "NOTIFY_SOCKET is not UTF-8".to_string())?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        NotifyTarget::new(&name, watchdog).map(Some)
    }

    /// A target from a `NOTIFY_SOCKET` value.
    pub fn new(name: &str, watchdog: Option<Duration>) -> Result<NotifyTarget, String> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)
        } else {
            return Err(format!(
                "NOTIFY_SOCKET=\"{name}\": expected an absolute path or @name"
            ));
        }
        .map_err(|e| format!("NOTIFY_SOCKET=\"{name}\": {e}"))?;
        Ok(NotifyTarget {
            addr,
            name: name.to_string(),
            watchdog,
        })
    }
}

/// An open notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: NotifyTarget,
}

impl Notifier {
    /// Opens a socket (close-on-exec, non-blocking: a full socket drops a message rather than
    /// stalling its sender) for `target`.
    pub fn open(target: NotifyTarget) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, target })
    }

    /// Sends one message (`READY=1`, `STATUS=...`, several lines at once...).
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        self.socket
            .send_to_addr(message, &self.target.addr)
            .map(|_| ())
    }

    /// Where messages go.
    pub fn target(&self) -> &NotifyTarget {
        &self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("lbagent-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::open(NotifyTarget::new(path.to_str().unwrap(), None).unwrap()).unwrap();
        n.send(b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let name = format!("lbagent-notify-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::open(NotifyTarget::new(&format!("@{name}"), None).unwrap()).unwrap();
        n.send(b"WATCHDOG=1").unwrap();
        let len = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert!(NotifyTarget::new("relative/path", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
