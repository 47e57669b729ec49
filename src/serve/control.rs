//! The operator's control socket (`control=PATH`): a Unix stream socket served by the monitor
//! thread's own loop, like the TCP endpoints (non-blocking, a deadline per connection, fixed
//! buffers, at most [`MAX_CONTROL`] connections at once). No thread of its own: an operator's
//! command is rare, and the monitor already owns the board's override and wakes for sockets.
//!
//! Who may connect: the socket file is created mode 0660, owned by the host's user and group;
//! and the peer's credentials (`SO_PEERCRED`) are checked at accept: root, the socket's owner,
//! or a process whose group is the socket's group. Anyone else gets `error=` and is counted
//! (`control_refused`).
//!
//! One request line, one reply, then close (`proto/control.rs`). A change of the override
//! rings the bell (subscribers hear it at once) and is written to `state_file=` when set,
//! which the reply reports. Commands are logged with the peer's pid and uid. Buffers are
//! fixed per connection slot; a command may allocate (its log line, the state file), which is
//! acceptable for what an operator does by hand, never for what a probe does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::config::{ConfigError, REQUEST_TIMEOUT};
use crate::counters::Counter;
use crate::error::Error;
use crate::log::{Level, log_line};
use crate::proto::control::{self, MAX_REPLY, MAX_REQUEST, OverrideReport, Report, Request};
use crate::shared::Shared;
use crate::state::State;
use crate::state_file::{self, Saved};
use crate::status::{Target, Text};
use crate::sys::clock;

/// Control connections served at once; more wait in the listen queue.
pub(crate) const MAX_CONTROL: usize = 4;
/// Tokens: connections `CONTROL_TOKENS + i`, the listener `CONTROL_TOKENS + MAX_CONTROL`.
pub(crate) const CONTROL_TOKENS: usize = usize::MAX - 16;
pub(crate) const CONTROL_LISTENER: Token = Token(CONTROL_TOKENS + MAX_CONTROL);

/// The bound control socket.
pub(crate) struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
    gid: u32,
}

impl ControlListener {
    /// Binds `path` (mode 0660). A socket file left by a process that is gone is replaced; one
    /// that another process still serves, or a file that is no socket, is an error.
    pub(crate) fn bind(path: &Path) -> Result<ControlListener, Error> {
        let fail = |why: String| {
            Error::Config(ConfigError::bad_value(
                "control",
                &path.display().to_string(),
                why,
            ))
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(fail("the file exists and is not a socket".into()));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(fail(
                        "another process serves this socket (a second agent?)".into(),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| fail(format!("cannot replace a stale socket: {e}")))?;
                }
                Err(e) => return Err(fail(format!("cannot check the existing socket: {e}"))),
            }
        }
        // mio's listener is non-blocking and close-on-exec.
        let listener = UnixListener::bind(path).map_err(|e| fail(format!("cannot bind: {e}")))?;
        let setup = || -> io::Result<(u32, u32)> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            let meta = std::fs::metadata(path)?;
            Ok((meta.uid(), meta.gid()))
        };
        let (uid, gid) = setup().map_err(|e| {
            let _ = std::fs::remove_file(path);
            fail(format!("cannot set its mode: {e}"))
        })?;
        Ok(ControlListener {
            listener,
            path: path.to_path_buf(),
            uid,
            gid,
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The socket's path (removed when the owner stops the agent).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a peer with these credentials may control the agent.
    fn admits(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.uid || gid == self.gid
    }
}

enum Phase {
    Reading { received: usize },
    Writing { sent: usize, len: usize },
}

struct Connection {
    stream: UnixStream,
    phase: Phase,
    deadline: Instant,
    /// The peer, for the log: (pid, uid).
    peer: (i32, u32),
    /// Its credentials do not allow it: the request is read, and refused.
    refused: bool,
}

struct Slot {
    connection: Option<Connection>,
    request: [u8; MAX_REQUEST],
    reply: [u8; MAX_REPLY],
}

/// The control socket's connections, owned by the monitor thread.
pub(crate) struct Control {
    slots: Vec<Slot>,
    state_file: Option<PathBuf>,
    /// Connections were left in the listen queue (every slot was taken).
    pending: bool,
}

impl Control {
    pub(crate) fn new(state_file: Option<PathBuf>) -> Control {
        Control {
            slots: Vec::new(),
            state_file,
            pending: false,
        }
    }

    /// How long the loop may sleep: for ever while no connection is open.
    pub(crate) fn timeout(&self, now: Instant) -> Option<Duration> {
        self.slots
            .iter()
            .filter_map(|s| s.connection.as_ref())
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
    }

    /// Accepts what waits on the listener (up to the free slots).
    pub(crate) fn accept(
        &mut self,
        listener: &ControlListener,
        shared: &Shared,
        registry: &Registry,
    ) {
        loop {
            let Some(index) = self.free_slot() else {
                // Full: the rest waits in the queue until a connection closes.
                self.pending = true;
                return;
            };
            let stream = match listener.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.pending = false;
                    return;
                }
            };
            let credentials = getsockopt(&stream, PeerCredentials);
            let slot = &mut self.slots[index];
            let (peer, admitted) = match credentials {
                Ok(c) => ((c.pid(), c.uid()), listener.admits(c.uid(), c.gid())),
                Err(_) => ((0, u32::MAX), false),
            };
            let now = Instant::now();
            if !admitted {
                log_line!(
                    shared.logger,
                    Level::Warn,
                    "control: refused process {} (uid {}): only root, uid {} or gid {} may \
                     control this agent",
                    peer.0,
                    peer.1,
                    listener.uid,
                    listener.gid
                );
            }
            slot.connection = Some(Connection {
                stream,
                phase: Phase::Reading { received: 0 },
                deadline: now + REQUEST_TIMEOUT,
                peer,
                refused: !admitted,
            });
            let token = Token(CONTROL_TOKENS + index);
            let registered = self.slots[index].connection.as_mut().is_some_and(|c| {
                registry
                    .register(
                        &mut c.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
            });
            if !registered {
                self.slots[index].connection = None;
                shared.counters.add(Counter::ControlFailed);
                continue;
            }
            self.progress(index, shared);
        }
    }

    fn free_slot(&mut self) -> Option<usize> {
        if let Some(i) = self.slots.iter().position(|s| s.connection.is_none()) {
            return Some(i);
        }
        if self.slots.len() >= MAX_CONTROL {
            return None;
        }
        self.slots.push(Slot {
            connection: None,
            request: [0; MAX_REQUEST],
            reply: [0; MAX_REPLY],
        });
        Some(self.slots.len() - 1)
    }

    /// Handles a readiness event of connection `token`.
    pub(crate) fn ready(&mut self, token: Token, shared: &Shared) {
        let index = token.0.wrapping_sub(CONTROL_TOKENS);
        if index < self.slots.len() {
            self.progress(index, shared);
        }
    }

    /// Closes connections whose deadline passed; returns whether a slot was freed (the
    /// listener may then have connections waiting).
    pub(crate) fn expire(&mut self, now: Instant, shared: &Shared) -> bool {
        let mut freed = false;
        for slot in &mut self.slots {
            if slot.connection.as_ref().is_some_and(|c| c.deadline <= now) {
                // Dropping the stream closes it and takes it off the poller.
                slot.connection = None;
                shared.counters.add(Counter::ControlFailed);
                freed = true;
            }
        }
        freed
    }

    /// Whether connections wait in the listen queue and a slot is free for them.
    pub(crate) fn pending(&self) -> bool {
        self.pending
            && (self.slots.len() < MAX_CONTROL || self.slots.iter().any(|s| s.connection.is_none()))
    }

    fn progress(&mut self, index: usize, shared: &Shared) {
        if let Some(counter) = self.step(index, shared) {
            shared.counters.add(counter);
            self.slots[index].connection = None;
        }
    }

    /// Moves a connection on; `Some(outcome)` when it is finished.
    fn step(&mut self, index: usize, shared: &Shared) -> Option<Counter> {
        loop {
            let slot = &mut self.slots[index];
            let conn = slot.connection.as_mut()?;
            match conn.phase {
                Phase::Reading { received } => {
                    if received == MAX_REQUEST {
                        let len = write_plain(&mut slot.reply, "error=request too long\n");
                        conn.phase = Phase::Writing { sent: 0, len };
                        continue;
                    }
                    match conn.stream.read(&mut slot.request[received..]) {
                        Ok(0) => {
                            // The peer closed: answer what came, if anything.
                            if received == 0 {
                                return Some(Counter::ControlFailed);
                            }
                        }
                        Ok(n) => {
                            let received = received + n;
                            conn.phase = Phase::Reading { received };
                            if !slot.request[..received].contains(&b'\n') {
                                continue;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Some(Counter::ControlFailed),
                    }
                    let Phase::Reading { received } = conn.phase else {
                        continue;
                    };
                    let peer = conn.peer;
                    let end = slot.request[..received]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(received, |i| i + 1);
                    let len = if conn.refused {
                        write_plain(
                            &mut slot.reply,
                            "error=permission denied: only root, the socket's owner or its group \
                             may control this agent\n",
                        )
                    } else {
                        execute(
                            &slot.request[..end],
                            peer,
                            shared,
                            self.state_file.as_deref(),
                            &mut slot.reply,
                        )
                    };
                    conn.phase = Phase::Writing { sent: 0, len };
                }
                Phase::Writing { sent, len } => match conn.stream.write(&slot.reply[sent..len]) {
                    Ok(n) if sent + n >= len => {
                        // Closing with unread input would reset the connection and could
                        // destroy the reply: read what the peer sent beyond its line first.
                        let mut sink = [0u8; 1024];
                        for _ in 0..4 {
                            if !matches!(conn.stream.read(&mut sink), Ok(n) if n > 0) {
                                break;
                            }
                        }
                        return Some(if conn.refused {
                            Counter::ControlRefused
                        } else {
                            Counter::ControlAnswered
                        });
                    }
                    Ok(0) => return Some(Counter::ControlFailed),
                    Ok(n) => {
                        conn.phase = Phase::Writing {
                            sent: sent + n,
                            len,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Some(Counter::ControlFailed),
                },
            }
        }
    }
}

fn write_plain(out: &mut [u8; MAX_REPLY], text: &str) -> usize {
    let len = text.len().min(MAX_REPLY);
    out[..len].copy_from_slice(&text.as_bytes()[..len]);
    len
}

/// Runs one request and writes the reply; returns its length.
fn execute(
    line: &[u8],
    peer: (i32, u32),
    shared: &Shared,
    state_file: Option<&Path>,
    out: &mut [u8; MAX_REPLY],
) -> usize {
    let board = &shared.board;
    let mut error: Option<&str> = None;
    let mut note = match state_file {
        None => "none".to_string(),
        Some(p) => format!("unchanged {}", p.display()),
    };
    match control::parse_request(line) {
        Err(why) => error = Some(why),
        Ok(Request::Status) => {}
        Ok(Request::Set {
            state,
            for_ms,
            reason,
        }) => {
            let now = clock::now_ms();
            let text = Text::from_reason(reason);
            let until = (for_ms > 0).then(|| now + for_ms);
            let changed = board.set_override(state, Some(&text), until, now);
            log_line!(
                shared.logger,
                Level::Info,
                "control: process {} (uid {}) set {}{}{}{}",
                peer.0,
                peer.1,
                if state == State::Up {
                    "up: the operator's override is cleared"
                } else {
                    state.name()
                },
                if for_ms > 0 {
                    format!(" for {} s", for_ms as f64 / 1000.0)
                } else {
                    String::new()
                },
                if text.as_bytes().is_empty() {
                    String::new()
                } else {
                    format!(": \"{}\"", text.as_str())
                },
                if changed { "" } else { " (no change)" }
            );
            if let Some(path) = state_file {
                let saved = Saved {
                    state: (state != State::Up).then_some(state),
                    until: (for_ms > 0).then(|| SystemTime::now() + Duration::from_millis(for_ms)),
                    reason: text,
                };
                note = match state_file::store(path, &saved) {
                    Ok(()) => format!("written {}", path.display()),
                    Err(e) => {
                        log_line!(
                            shared.logger,
                            Level::Error,
                            "control: cannot write the state file {}: {e}; the override holds \
                             until the server restarts",
                            path.display()
                        );
                        format!("failed: {}: {e}", path.display())
                    }
                };
            }
        }
    }
    let now = clock::now_ms();
    let host = board.host_status(Target::Server, now);
    let answer = board.status(Target::Server, now);
    let operator = board
        .operator_override()
        .filter(|o| o.until.is_none_or(|u| now < u));
    let message = operator.map(|o| o.message);
    let report = Report {
        host: &host,
        operator: operator.as_ref().map(|o| {
            let left = o.until.map(|u| u.saturating_sub(now));
            OverrideReport {
                state: o.state,
                message: message.as_ref().map_or("", |m| m.as_str()),
                left_ms: left,
                until_unix_ms: left.map(|l| {
                    (SystemTime::now() + Duration::from_millis(l))
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                }),
            }
        }),
        answer: &answer,
        state_file: &note,
    };
    control::write_reply(error, &report, out)
}

/// Reads the state file at start (`None`: there is none yet). An error names the file.
pub(crate) fn read_state_file(path: &Path) -> Result<Option<Saved>, Error> {
    state_file::load(path).map_err(|why| {
        Error::Config(ConfigError::bad_value(
            "state_file",
            &path.display().to_string(),
            why,
        ))
    })
}

/// Applies what the state file held at start: the override, unless it has ended meanwhile.
pub(crate) fn restore(shared: &Shared, path: &Path, saved: &Saved) {
    let (Some(state), Some(left)) = (saved.state, saved.left(SystemTime::now())) else {
        return;
    };
    let now = clock::now_ms();
    let until = left.map(|d| now + d.as_millis().max(1) as u64);
    shared
        .board
        .set_override(state, Some(&saved.reason), until, now);
    log_line!(
        shared.logger,
        Level::Info,
        "control: the operator's override from {} holds: {}{}",
        path.display(),
        state.name(),
        match left {
            Some(d) => format!(" for {:.0} s more", d.as_secs_f64()),
            None => " until cleared (lbagent-ctl up)".into(),
        }
    );
}
