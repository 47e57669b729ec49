//! One lock-free cell of the status board: state, reason, weight, message and generation of
//! the whole server, a service, or a check's verdict.
//!
//! State, reason, weight, message slot and generation live in one 64-bit word, so they always
//! change together. The message text lives in one of a few slots: a writer fills a slot that
//! is not published, then publishes it by swapping the word; readers check a per-slot
//! sequence number (a seqlock) and the word again, so a reader never sees a half-written text
//! or a text paired with the wrong state, and never waits for a writer.
//!
//! Cells live in shared memory (see `sys/shm.rs`), so writers may be other processes: a slot
//! claimed by a process that died is taken back (the only system call here, on a contended
//! path that practically never runs).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::state::{Reason, State};
use crate::sys::shm::Zeroable;

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

impl std::fmt::Write for Text {
    /// Appends, cutting at a character boundary when full (never fails, never allocates).
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if !self.push(c) {
                break;
            }
        }
        Ok(())
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

/// Number of message slots per cell: one published plus room for seven concurrent writers
/// (an eighth waits for another host thread, never for the monitor thread).
const SLOTS: usize = 8;
const NO_SLOT: u8 = 0xFF;
const WORDS: usize = MESSAGE_CAPACITY.div_ceil(8) + 1;

/// One message slot: a seqlock-protected text.
#[derive(Zeroable)]
#[repr(C)]
struct Slot {
    /// Even when stable, odd while being written.
    seq: AtomicU32,
    /// The process id of the writer that claimed it; 0 when free.
    owner: AtomicU32,
    /// Word 0 is the length; the text follows from word 1.
    data: [AtomicU64; WORDS],
}

impl Slot {
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
pub(crate) struct CellView {
    pub state: State,
    pub reason: Reason,
    pub weight: u8,
    pub generation: u32,
    pub changed_at: u64,
    pub in_use: u32,
    pub capacity: u32,
    pub message: Text,
}

/// The reported status of the whole server, of one service, or a check's verdict.
#[derive(Zeroable)]
#[repr(C)]
pub(crate) struct Cell {
    word: AtomicU64,
    /// Clock time of the last state change.
    changed_at: AtomicU64,
    /// `in_use << 32 | capacity`.
    load: AtomicU64,
    slots: [Slot; SLOTS],
}

impl Cell {
    /// Sets a fresh (zeroed) cell to `state`, weight 100, no message.
    pub(crate) fn init(&self, state: State, reason: Reason, message: Option<&Text>, now: u64) {
        let slot = match message {
            Some(text) => {
                self.slots[0].write(text);
                0
            }
            None => NO_SLOT,
        };
        let word = Word {
            state,
            reason,
            weight: 100,
            slot,
            generation: 0,
        };
        self.changed_at.store(now, Ordering::Relaxed);
        self.load.store(0, Ordering::Relaxed);
        self.word.store(word.pack(), Ordering::Release);
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

    pub(crate) fn read(&self) -> CellView {
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
        let me = crate::sys::process::pid();
        loop {
            for (i, slot) in self.slots.iter().enumerate() {
                if slot
                    .owner
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                // Only the owner of a slot publishes it, so once we own it the published
                // slot can only stop being this one, never become it.
                if usize::from(Word::unpack(self.word.load(Ordering::Acquire)).slot) == i {
                    slot.owner.store(0, Ordering::Release);
                    continue;
                }
                slot.write(text);
                return i as u8;
            }
            // Every free slot is being written: by other host threads (wait for them), or by
            // processes that died while writing (take those slots back).
            self.reclaim_from_dead_writers();
            std::hint::spin_loop();
        }
    }

    fn reclaim_from_dead_writers(&self) {
        for slot in &self.slots {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner != 0
                && owner != crate::sys::process::pid()
                && !crate::sys::process::alive(owner)
            {
                let _ = slot
                    .owner
                    .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    fn release(&self, slot: u8) {
        if slot != NO_SLOT {
            self.slots[usize::from(slot)]
                .owner
                .store(0, Ordering::Release);
        }
    }

    /// Sets state, reason and message (`None` clears it). A call that changes nothing does not
    /// bump the generation. Returns whether it changed anything.
    pub(crate) fn set(
        &self,
        state: State,
        reason: Reason,
        message: Option<&Text>,
        now: u64,
    ) -> bool {
        self.set_with_clock(state, reason, message, || now)
    }

    /// `set`, reading the clock only when the state changes (most host calls repeat the state
    /// already set, and the clock is a third of such a call's cost). Returns false when the
    /// cell already held this state and reason without a message (nothing changed), true when
    /// it may have changed.
    #[inline]
    pub(crate) fn set_with_clock(
        &self,
        state: State,
        reason: Reason,
        message: Option<&Text>,
        now: impl FnOnce() -> u64,
    ) -> bool {
        // The call a host makes in its loop: this state, no message, already set. One load.
        const STATE_REASON_SLOT: u64 = 0xFF00_FFFF;
        let unchanged = Word {
            state,
            reason,
            weight: 0,
            slot: NO_SLOT,
            generation: 0,
        }
        .pack();
        if message.is_none() && self.word.load(Ordering::Acquire) & STATE_REASON_SLOT == unchanged {
            return false;
        }
        self.set_changing(state, reason, message, now)
    }

    #[inline(never)]
    fn set_changing(
        &self,
        state: State,
        reason: Reason,
        message: Option<&Text>,
        now: impl FnOnce() -> u64,
    ) -> bool {
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
                return false;
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
                    self.changed_at.store(now(), Ordering::Relaxed);
                }
                self.release(claimed);
                return true;
            }
        }
    }

    /// Sets the weight; returns whether it changed.
    pub(crate) fn set_weight(&self, weight: u8) -> bool {
        let mut bits = self.word.load(Ordering::Acquire);
        loop {
            let current = Word::unpack(bits);
            if current.weight == weight {
                return false;
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
                Ok(_) => return true,
                Err(actual) => bits = actual,
            }
        }
    }

    pub(crate) fn set_load(&self, in_use: u32, capacity: u32) {
        self.load.store(
            u64::from(in_use) << 32 | u64::from(capacity),
            Ordering::Relaxed,
        );
    }
}
