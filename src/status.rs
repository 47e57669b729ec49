//! The status board: what the host reports, shared with the monitor thread without locks.
//!
//! Host calls (`set_state`, `set_weight`, `set_load`, `heartbeat`) only load, store and
//! compare-and-swap atomics: no lock, no system call, no allocation. The monitor thread reads
//! the board to answer probes and never waits for a host thread: a reader retries only when a
//! writer has just published something newer.
//!
//! Each server or service is a [`Cell`]. Its state, reason, weight, message slot and
//! generation live in one 64-bit word, so they always change together. The message text lives
//! in one of a few slots: a writer fills a slot that is not published, then publishes it by
//! swapping the word; readers check a per-slot sequence number (a seqlock) and the word again,
//! so a reader never sees a half-written text or a text paired with the wrong state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use crate::state::{Reason, State};

/// Longest message kept, in bytes (the wire format's limit).
pub const MESSAGE_CAPACITY: usize = 255;

/// A short UTF-8 text held inline (no allocation): a host's reason, cleaned up.
#[derive(Clone, Copy)]
pub struct Text {
    bytes: [u8; MESSAGE_CAPACITY],
    len: u8,
}

impl Text {
    /// The empty text.
    pub const EMPTY: Text = Text {
        bytes: [0; MESSAGE_CAPACITY],
        len: 0,
    };

    /// Makes a message from the host's bytes: invalid UTF-8 becomes U+FFFD, control characters
    /// become spaces (a message is one line), and it is cut at a character boundary to fit.
    pub fn from_reason(input: &[u8]) -> Text {
        let mut text = Text::EMPTY;
        for chunk in input.utf8_chunks() {
            for c in chunk.valid().chars() {
                let c = if c.is_control() { ' ' } else { c };
                if !text.push(c) {
                    return text;
                }
            }
            if !chunk.invalid().is_empty() && !text.push(char::REPLACEMENT_CHARACTER) {
                return text;
            }
        }
        text
    }

    /// A static message (used for the agent's own reasons).
    pub fn from_static(s: &'static str) -> Text {
        Text::from_reason(s.as_bytes())
    }

    fn push(&mut self, c: char) -> bool {
        let mut buf = [0u8; 4];
        let encoded = c.encode_utf8(&mut buf).as_bytes();
        let len = usize::from(self.len);
        if len + encoded.len() > MESSAGE_CAPACITY {
            return false;
        }
        self.bytes[len..len + encoded.len()].copy_from_slice(encoded);
        self.len += encoded.len() as u8;
        true
    }

    /// The text as bytes (always valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Exactly what a director is told about the whole server or one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The state answered.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// Percent of the weight configured on the director, 0..=100.
    pub weight_pct: u8,
    /// Work in progress reported by the host.
    pub in_use: u32,
    /// Capacity reported by the host (0 = unknown).
    pub capacity: u32,
    /// Increases whenever the state, reason, weight or message answered changes.
    pub generation: u32,
    /// Milliseconds since the state answered last changed (saturating).
    pub since_ms: u32,
    /// The host's reason text, or the agent's own.
    pub message: Text,
}

impl Status {
    /// True when the server should receive new connections: up, with a weight above zero.
    pub fn is_serving(&self) -> bool {
        self.state == State::Up && self.weight_pct > 0
    }
}

/// Number of message slots per cell: one published plus room for three concurrent writers
/// (a fourth waits for another host thread, never for the monitor thread).
const SLOTS: usize = 4;
const NO_SLOT: u8 = 0xFF;
const WORDS: usize = MESSAGE_CAPACITY.div_ceil(8) + 1;

/// One message slot: a seqlock-protected text.
struct Slot {
    /// Even when stable, odd while being written.
    seq: AtomicU32,
    /// Claimed by a writer.
    busy: AtomicBool,
    /// Word 0 is the length; the text follows from word 1.
    data: [AtomicU64; WORDS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            seq: AtomicU32::new(0),
            busy: AtomicBool::new(false),
            data: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn write(&self, text: &Text) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.data[0].store(u64::from(text.len), Ordering::Relaxed);
        for (i, chunk) in text.bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.data[i + 1].store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The slot's text, or `None` when a writer touched it meanwhile.
    fn read(&self) -> Option<Text> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let len = self.data[0]
            .load(Ordering::Relaxed)
            .min(MESSAGE_CAPACITY as u64) as usize;
        let mut text = Text::EMPTY;
        for i in 0..len.div_ceil(8) {
            let word = self.data[i + 1].load(Ordering::Relaxed).to_ne_bytes();
            let end = (i * 8 + 8).min(len);
            text.bytes[i * 8..end].copy_from_slice(&word[..end - i * 8]);
        }
        text.len = len as u8;
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != before {
            return None;
        }
        Some(text)
    }
}

/// The fields packed into a cell's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    state: State,
    reason: Reason,
    weight: u8,
    slot: u8,
    generation: u32,
}

impl Word {
    fn pack(self) -> u64 {
        u64::from(self.state as u8)
            | u64::from(self.reason as u8) << 8
            | u64::from(self.weight) << 16
            | u64::from(self.slot) << 24
            | u64::from(self.generation) << 32
    }

    fn unpack(bits: u64) -> Word {
        Word {
            // Only `pack` writes the word, so these values are always valid.
            state: State::from_u8(bits as u8).unwrap_or(State::Unknown),
            reason: Reason::from_u8((bits >> 8) as u8).unwrap_or(Reason::Host),
            weight: (bits >> 16) as u8,
            slot: (bits >> 24) as u8,
            generation: (bits >> 32) as u32,
        }
    }
}

/// A consistent reading of one cell.
#[derive(Clone, Copy, Debug)]
struct CellView {
    state: State,
    reason: Reason,
    weight: u8,
    generation: u32,
    changed_at: u64,
    in_use: u32,
    capacity: u32,
    message: Text,
}

/// The reported status of the whole server or of one service.
pub(crate) struct Cell {
    word: AtomicU64,
    /// Clock time of the last state change.
    changed_at: AtomicU64,
    /// `in_use << 32 | capacity`.
    load: AtomicU64,
    slots: [Slot; SLOTS],
}

impl Cell {
    fn new(state: State, now: u64) -> Cell {
        let word = Word {
            state,
            reason: Reason::Host,
            weight: 100,
            slot: NO_SLOT,
            generation: 0,
        };
        Cell {
            word: AtomicU64::new(word.pack()),
            changed_at: AtomicU64::new(now),
            load: AtomicU64::new(0),
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    /// The published message of `word`, if it is still published.
    fn message_of(&self, word: Word) -> Option<Text> {
        if word.slot == NO_SLOT {
            return Some(Text::EMPTY);
        }
        let text = self.slots[usize::from(word.slot)].read()?;
        // A slot is only rewritten after the word stopped pointing at it; the generation makes
        // sure the word did not come back to the same slot meanwhile.
        (Word::unpack(self.word.load(Ordering::Acquire)) == word).then_some(text)
    }

    fn read_word_and_message(&self) -> (Word, Text) {
        loop {
            let word = Word::unpack(self.word.load(Ordering::Acquire));
            if let Some(text) = self.message_of(word) {
                return (word, text);
            }
            // A host thread published a newer status while we read: read that one.
            std::hint::spin_loop();
        }
    }

    fn read(&self) -> CellView {
        let (word, message) = self.read_word_and_message();
        let load = self.load.load(Ordering::Relaxed);
        CellView {
            state: word.state,
            reason: word.reason,
            weight: word.weight,
            generation: word.generation,
            changed_at: self.changed_at.load(Ordering::Relaxed),
            in_use: (load >> 32) as u32,
            capacity: load as u32,
            message,
        }
    }

    /// Claims a slot that is not published and writes `text` into it.
    fn claim_and_write(&self, text: &Text) -> u8 {
        loop {
            for (i, slot) in self.slots.iter().enumerate() {
                if slot
                    .busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // Only the holder of `busy` publishes a slot, so once we hold it the published
                // slot can only stop being this one, never become it.
                if usize::from(Word::unpack(self.word.load(Ordering::Acquire)).slot) == i {
                    slot.busy.store(false, Ordering::Release);
                    continue;
                }
                slot.write(text);
                return i as u8;
            }
            // More than three host threads are writing this cell's message at once.
            std::hint::spin_loop();
        }
    }

    fn release(&self, slot: u8) {
        if slot != NO_SLOT {
            self.slots[usize::from(slot)]
                .busy
                .store(false, Ordering::Release);
        }
    }

    /// Sets state, reason and message (`None` clears it). A call that changes nothing does not
    /// bump the generation.
    fn set(&self, state: State, reason: Reason, message: Option<&Text>, now: u64) {
        let mut claimed = NO_SLOT;
        loop {
            let bits = self.word.load(Ordering::Acquire);
            let current = Word::unpack(bits);
            let same_message = match message {
                None => current.slot == NO_SLOT,
                Some(text) => {
                    current.slot != NO_SLOT && self.message_of(current).as_ref() == Some(text)
                }
            };
            if current.state == state && current.reason == reason && same_message {
                self.release(claimed);
                return;
            }
            if let (Some(text), NO_SLOT) = (message, claimed) {
                claimed = self.claim_and_write(text);
            }
            let next = Word {
                state,
                reason,
                slot: claimed,
                generation: current.generation.wrapping_add(1),
                ..current
            };
            if self
                .word
                .compare_exchange(bits, next.pack(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if current.state != state {
                    self.changed_at.store(now, Ordering::Relaxed);
                }
                self.release(claimed);
                return;
            }
        }
    }

    fn set_weight(&self, weight: u8) {
        let mut bits = self.word.load(Ordering::Acquire);
        loop {
            let current = Word::unpack(bits);
            if current.weight == weight {
                return;
            }
            let next = Word {
                weight,
                generation: current.generation.wrapping_add(1),
                ..current
            };
            match self.word.compare_exchange_weak(
                bits,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => bits = actual,
            }
        }
    }

    fn set_load(&self, in_use: u32, capacity: u32) {
        self.load.store(
            u64::from(in_use) << 32 | u64::from(capacity),
            Ordering::Relaxed,
        );
    }
}

/// Which cell a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The whole server (empty service name).
    Server,
    /// The configured service with this index.
    Service(usize),
    /// A name that is not configured.
    Unknown,
}

/// Everything the host reports and the agent's own conditions, readable by the monitor.
pub(crate) struct Board {
    server: Cell,
    names: Vec<Box<[u8]>>,
    services: Box<[Cell]>,
    watchdog_ms: u64,
    /// Clock time of the last heartbeat (the start counts as one).
    heartbeat_at: AtomicU64,
    /// Watchdog transitions observed so far; odd while expired.
    watchdog_flips: AtomicU32,
    watchdog_changed_at: AtomicU64,
    stopping: AtomicBool,
    stopping_at: AtomicU64,
    faults: AtomicU32,
    fault_at: AtomicU64,
}

impl Board {
    pub(crate) fn new(initial: State, services: &[String], watchdog_ms: u32, now: u64) -> Board {
        Board {
            server: Cell::new(initial, now),
            names: services
                .iter()
                .map(|s| s.as_bytes().to_vec().into_boxed_slice())
                .collect(),
            // A service starts up: it follows the whole server until the host sets it.
            services: services.iter().map(|_| Cell::new(State::Up, now)).collect(),
            watchdog_ms: u64::from(watchdog_ms),
            heartbeat_at: AtomicU64::new(now),
            watchdog_flips: AtomicU32::new(0),
            watchdog_changed_at: AtomicU64::new(now),
            stopping: AtomicBool::new(false),
            stopping_at: AtomicU64::new(0),
            faults: AtomicU32::new(0),
            fault_at: AtomicU64::new(0),
        }
    }

    /// Finds the cell for a service name; empty means the whole server.
    pub(crate) fn target(&self, name: &[u8]) -> Target {
        if name.is_empty() {
            return Target::Server;
        }
        match self.names.iter().position(|n| &**n == name) {
            Some(i) => Target::Service(i),
            None => Target::Unknown,
        }
    }

    fn cell(&self, target: Target) -> Option<&Cell> {
        match target {
            Target::Server => Some(&self.server),
            Target::Service(i) => self.services.get(i),
            Target::Unknown => None,
        }
    }

    /// Sets a cell's state; returns false for an unknown target.
    pub(crate) fn set_state(
        &self,
        target: Target,
        state: State,
        reason: Reason,
        message: Option<&Text>,
        now: u64,
    ) -> bool {
        match self.cell(target) {
            Some(cell) => {
                cell.set(state, reason, message, now);
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_weight(&self, target: Target, weight: u8) -> bool {
        self.cell(target).map(|c| c.set_weight(weight)).is_some()
    }

    pub(crate) fn set_load(&self, target: Target, in_use: u32, capacity: u32) -> bool {
        self.cell(target)
            .map(|c| c.set_load(in_use, capacity))
            .is_some()
    }

    pub(crate) fn heartbeat(&self, now: u64) {
        self.heartbeat_at.store(now, Ordering::Release);
    }

    pub(crate) fn begin_stopping(&self, now: u64) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.stopping_at.store(now, Ordering::Release);
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Records a caught internal panic: from now on the agent answers DOWN, "agent fault".
    pub(crate) fn record_fault(&self, now: u64) {
        if self.faults.fetch_add(1, Ordering::AcqRel) == 0 {
            self.fault_at.store(now, Ordering::Release);
        }
    }

    pub(crate) fn faults(&self) -> u32 {
        self.faults.load(Ordering::Acquire)
    }

    /// Whether the watchdog has expired now; counts each change so that it shows in the
    /// generation. Returns `(expired, transitions so far, time of the last transition)`.
    fn observe_watchdog(&self, now: u64) -> (bool, u32, u64) {
        if self.watchdog_ms == 0 {
            return (false, 0, 0);
        }
        loop {
            let heartbeat_at = self.heartbeat_at.load(Ordering::Acquire);
            let expired = now.saturating_sub(heartbeat_at) > self.watchdog_ms;
            let flips = self.watchdog_flips.load(Ordering::Acquire);
            if (flips & 1 == 1) == expired {
                return (
                    expired,
                    flips,
                    self.watchdog_changed_at.load(Ordering::Acquire),
                );
            }
            if self
                .watchdog_flips
                .compare_exchange(flips, flips + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // Expiry happened when the deadline passed; recovery with the heartbeat.
                let at = if expired {
                    heartbeat_at + self.watchdog_ms
                } else {
                    heartbeat_at
                };
                self.watchdog_changed_at.store(at, Ordering::Release);
                return (expired, flips + 1, at);
            }
        }
    }

    /// Exactly what a director is told about `target` at clock time `now`.
    pub(crate) fn status(&self, target: Target, now: u64) -> Status {
        let since = |at: u64| u32::try_from(now.saturating_sub(at)).unwrap_or(u32::MAX);
        let server = self.server.read();
        let own = match target {
            Target::Server => None,
            Target::Service(i) => self.services.get(i).map(Cell::read),
            Target::Unknown => {
                return Status {
                    state: State::Unknown,
                    reason: Reason::UnknownService,
                    weight_pct: 0,
                    in_use: 0,
                    capacity: 0,
                    generation: 0,
                    since_ms: 0,
                    message: Text::from_static("unknown service"),
                };
            }
        };
        let (expired, flips, watchdog_at) = self.observe_watchdog(now);
        let stopping = self.is_stopping();
        let faults = self.faults();
        // Every term only grows, so the sum grows on every change of what is answered.
        let generation = server
            .generation
            .wrapping_add(own.map_or(0, |c| c.generation))
            .wrapping_add(flips)
            .wrapping_add(u32::from(stopping))
            .wrapping_add(u32::from(faults > 0));
        // The whole server and the service: the one further from serving decides.
        let decisive = match own {
            Some(svc) if svc.state.severity() > server.state.severity() => svc,
            _ => server,
        };
        let weight_pct = match own {
            Some(svc) => ((u32::from(server.weight) * u32::from(svc.weight)) / 100) as u8,
            None => server.weight,
        };
        let load = own.unwrap_or(server);
        let mut status = Status {
            state: decisive.state,
            reason: decisive.reason,
            weight_pct,
            in_use: load.in_use,
            capacity: load.capacity,
            generation,
            since_ms: since(
                server
                    .changed_at
                    .max(own.map_or(0, |c| c.changed_at))
                    .max(if flips > 0 { watchdog_at } else { 0 }),
            ),
            message: decisive.message,
        };
        let overrides = if faults > 0 {
            Some((
                State::Down,
                Reason::AgentFault,
                self.fault_at.load(Ordering::Acquire),
            ))
        } else if stopping {
            Some((
                State::Stopping,
                Reason::AgentStopping,
                self.stopping_at.load(Ordering::Acquire),
            ))
        } else if expired {
            Some((State::Down, Reason::WatchdogExpired, watchdog_at))
        } else {
            None
        };
        if let Some((state, reason, at)) = overrides {
            status.state = state;
            status.reason = reason;
            status.since_ms = since(at);
            status.message = Text::from_static(reason.describe());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn board(watchdog_ms: u32) -> Board {
        Board::new(
            State::Starting,
            &["game".to_string(), "chat".to_string()],
            watchdog_ms,
            1000,
        )
    }

    #[test]
    fn text_is_cleaned_and_cut() {
        assert_eq!(Text::from_reason(b"ready").as_str(), "ready");
        assert_eq!(Text::from_reason(b"a\nb\r\0c").as_str(), "a b  c");
        let bad = b"bad \xff\xfe utf8 \xe2\x82";
        assert_eq!(
            Text::from_reason(bad).as_str(),
            String::from_utf8_lossy(bad)
        );
        let long = "é".repeat(200); // 400 bytes
        let t = Text::from_reason(long.as_bytes());
        assert_eq!(t.as_bytes().len(), 254);
        assert!(t.as_str().chars().all(|c| c == 'é'));
        assert_eq!(Text::from_reason(&[b'x'; 10_000]).as_bytes().len(), 255);
    }

    #[test]
    fn initial_and_set() {
        let b = board(0);
        let s = b.status(Target::Server, 1000);
        assert_eq!(
            (s.state, s.reason, s.weight_pct),
            (State::Starting, Reason::Host, 100)
        );
        assert_eq!(s.generation, 0);
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ready")),
            1500,
        );
        let s = b.status(Target::Server, 1600);
        assert_eq!(s.state, State::Up);
        assert_eq!(s.message.as_str(), "ready");
        assert_eq!(s.since_ms, 100);
        assert_eq!(s.generation, 1);
        // The same call again changes nothing.
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ready")),
            1700,
        );
        assert_eq!(b.status(Target::Server, 1700).generation, 1);
        // A new message alone is a change, but not a state change.
        b.set_state(
            Target::Server,
            State::Up,
            Reason::Host,
            Some(&Text::from_static("ok")),
            1800,
        );
        let s = b.status(Target::Server, 1900);
        assert_eq!(
            (s.generation, s.since_ms, s.message.as_str()),
            (2, 400, "ok")
        );
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1900);
        assert_eq!(b.status(Target::Server, 1900).message.as_str(), "");
        b.set_weight(Target::Server, 50);
        b.set_weight(Target::Server, 50);
        let s = b.status(Target::Server, 1900);
        assert_eq!((s.weight_pct, s.generation), (50, 4));
        b.set_load(Target::Server, 3, 10);
        let s = b.status(Target::Server, 1900);
        assert_eq!((s.in_use, s.capacity, s.generation), (3, 10, 4));
    }

    #[test]
    fn services_combine_with_the_server() {
        let b = board(0);
        let game = b.target(b"game");
        assert_eq!(game, Target::Service(0));
        assert_eq!(b.target(b"nope"), Target::Unknown);
        assert_eq!(b.target(b""), Target::Server);
        // The server is starting: so is every service.
        assert_eq!(b.status(game, 1000).state, State::Starting);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        assert_eq!(b.status(game, 1000).state, State::Up);
        b.set_state(
            game,
            State::Drain,
            Reason::Host,
            Some(&Text::from_static("deploy")),
            1000,
        );
        let s = b.status(game, 1000);
        assert_eq!((s.state, s.message.as_str()), (State::Drain, "deploy"));
        assert_eq!(b.status(Target::Server, 1000).state, State::Up);
        b.set_weight(Target::Server, 50);
        b.set_weight(game, 50);
        assert_eq!(b.status(game, 1000).weight_pct, 25);
        let u = b.status(Target::Unknown, 1000);
        assert_eq!(
            (u.state, u.reason),
            (State::Unknown, Reason::UnknownService)
        );
        assert!(!b.set_state(Target::Unknown, State::Up, Reason::Host, None, 1000));
    }

    #[test]
    fn watchdog_expires_and_recovers() {
        let b = board(3000);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        let g0 = b.status(Target::Server, 1000).generation;
        assert_eq!(b.status(Target::Server, 4000).state, State::Up);
        let s = b.status(Target::Server, 4500);
        assert_eq!((s.state, s.reason), (State::Down, Reason::WatchdogExpired));
        assert_eq!(s.message.as_str(), "watchdog expired");
        assert_eq!(s.since_ms, 500);
        assert!(s.generation > g0);
        // Services go down with the server.
        assert_eq!(
            b.status(Target::Service(1), 4500).reason,
            Reason::WatchdogExpired
        );
        b.heartbeat(5000);
        let r = b.status(Target::Server, 5100);
        assert_eq!((r.state, r.reason), (State::Up, Reason::Host));
        assert!(r.generation > s.generation);
    }

    #[test]
    fn stopping_and_fault_override() {
        let b = board(0);
        b.set_state(Target::Server, State::Up, Reason::Host, None, 1000);
        b.begin_stopping(2000);
        let s = b.status(Target::Service(0), 2500);
        assert_eq!(
            (s.state, s.reason, s.since_ms),
            (State::Stopping, Reason::AgentStopping, 500)
        );
        b.record_fault(3000);
        let s = b.status(Target::Server, 3000);
        assert_eq!((s.state, s.reason), (State::Down, Reason::AgentFault));
    }

    /// Writers publish (state, message) pairs that belong together; the reader must never see
    /// a torn text or a text paired with another writer's state.
    #[test]
    fn concurrent_writers_never_tear() {
        let b = Arc::new(board(0));
        let states = [
            State::Up,
            State::Drain,
            State::Maint,
            State::Down,
            State::Starting,
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..5usize {
            let b = b.clone();
            let stop = stop.clone();
            writers.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let state = states[w];
                    // Long messages make torn reads likely if the protocol were wrong.
                    let msg = format!("{}:{}:{}", state.name(), i, state.name().repeat(30));
                    b.set_state(
                        Target::Server,
                        state,
                        Reason::Host,
                        Some(&Text::from_reason(msg.as_bytes())),
                        i,
                    );
                    if i % 7 == 0 {
                        b.set_state(Target::Server, state, Reason::Host, None, i);
                    }
                    i += 1;
                }
            }));
        }
        let mut checked = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(700);
        while std::time::Instant::now() < deadline {
            let s = b.status(Target::Server, 0);
            let m = s.message.as_str();
            if !m.is_empty() {
                let name = s.state.name();
                assert!(
                    m.starts_with(name) && m.ends_with(&name.repeat(30)),
                    "{:?} with {m:?}",
                    s.state
                );
                checked += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(checked > 100, "only {checked} readings");
    }
}
