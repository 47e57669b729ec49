//! A sealed probe is good once: the (key id, nonce) pairs accepted within the window.
//!
//! A sealed probe's timestamp must be within `auth_window_ms` of the agent's clock, so a
//! captured probe can be replayed only while its timestamp is fresh. Each accepted probe is
//! remembered until then; a second probe with the same key id and nonce is a replay, dropped
//! and counted (`dropped_replay`), whatever its source address.
//!
//! Memory is fixed when the agent starts ([`CAPACITY`] probes, about 1.8 MB, allocated only
//! with `key_file`): an open-addressing table (linear probing, at most half full, with
//! backward-shift deletion) indexed by a keyed hash (SipHash, random key), and a ring of the
//! accepted probes in the order they came, from which the oldest are forgotten once their
//! timestamps have left the window. Beyond the bound the cache fails closed: to make room it
//! forgets the oldest entry and raises a floor to that entry's timestamp, and every sealed
//! probe whose timestamp is at or below the floor is refused as a possible replay. A replay is
//! therefore never accepted; what the bound can cost is the answers to probers whose clocks
//! lag the others' by more than the cache's span (at the default `rate_per_key` of 1,000 per
//! second, 32,768 probes span 32 s: more than the default window).
//!
//! Owned by the monitor thread alone; nothing is allocated after `new`.

use std::hash::{BuildHasher, RandomState};

/// Sealed probes remembered at most.
pub const CAPACITY: usize = 32_768;

/// One slot of the table. `home` is the slot the entry hashes to, plus one (0: empty).
#[derive(Clone, Copy, Default)]
struct Slot {
    nonce: u64,
    key_id: u32,
    home: u32,
}

/// One accepted probe, in the ring.
#[derive(Clone, Copy, Default)]
struct Seen {
    nonce: u64,
    key_id: u32,
    timestamp_ms: u64,
}

/// Why a sealed probe was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its key id and nonce were accepted already.
    Replay,
    /// Its timestamp is at or below the floor: the cache may have forgotten its first coming.
    BelowFloor,
}

/// The (key id, nonce) pairs accepted within the window.
pub(crate) struct ReplayCache {
    window_ms: u64,
    slots: Box<[Slot]>,
    mask: usize,
    ring: Box<[Seen]>,
    head: usize,
    len: usize,
    floor_ms: u64,
    hasher: RandomState,
}

impl ReplayCache {
    /// A cache for probes fresh within `window_ms`, holding at most `capacity` (0: none, for
    /// an agent without keys).
    pub(crate) fn new(capacity: usize, window_ms: u64) -> ReplayCache {
        let table = if capacity == 0 {
            0
        } else {
            (2 * capacity).next_power_of_two()
        };
        ReplayCache {
            window_ms,
            slots: vec![Slot::default(); table].into_boxed_slice(),
            mask: table.saturating_sub(1),
            ring: vec![Seen::default(); capacity].into_boxed_slice(),
            head: 0,
            len: 0,
            floor_ms: 0,
            hasher: RandomState::new(),
        }
    }

    /// Accepts the probe (remembering it) unless it is a replay or below the floor. `now_ms`
    /// is the agent's clock, Unix milliseconds.
    pub(crate) fn accept(
        &mut self,
        key_id: u32,
        nonce: u64,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refused> {
        if self.ring.is_empty() {
            return Ok(());
        }
        // Forget what can no longer be replayed: its timestamp has left the window.
        while self.len > 0 && self.ring[self.head].timestamp_ms + self.window_ms < now_ms {
            self.pop_oldest();
        }
        if timestamp_ms <= self.floor_ms {
            return Err(Refused::BelowFloor);
        }
        if self.find(key_id, nonce).is_some() {
            return Err(Refused::Replay);
        }
        if self.len == self.ring.len() {
            // Full: forget the oldest, and refuse from now on whatever is not newer than it.
            let oldest = self.pop_oldest();
            self.floor_ms = self.floor_ms.max(oldest.timestamp_ms);
            if timestamp_ms <= self.floor_ms {
                return Err(Refused::BelowFloor);
            }
        }
        self.insert(key_id, nonce);
        let tail = (self.head + self.len) % self.ring.len();
        self.ring[tail] = Seen {
            nonce,
            key_id,
            timestamp_ms,
        };
        self.len += 1;
        Ok(())
    }

    /// Probes remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn pop_oldest(&mut self) -> Seen {
        let oldest = self.ring[self.head];
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
        self.remove(oldest.key_id, oldest.nonce);
        oldest
    }

    fn home(&self, key_id: u32, nonce: u64) -> usize {
        (self.hasher.hash_one((key_id, nonce)) as usize) & self.mask
    }

    fn find(&self, key_id: u32, nonce: u64) -> Option<usize> {
        let mut i = self.home(key_id, nonce);
        loop {
            let s = self.slots[i];
            if s.home == 0 {
                return None;
            }
            if s.nonce == nonce && s.key_id == key_id {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    fn insert(&mut self, key_id: u32, nonce: u64) {
        let home = self.home(key_id, nonce);
        let mut i = home;
        while self.slots[i].home != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            nonce,
            key_id,
            home: home as u32 + 1,
        };
    }

    /// Removes an entry, moving back the entries after it that would no longer be found.
    fn remove(&mut self, key_id: u32, nonce: u64) {
        let Some(mut hole) = self.find(key_id, nonce) else {
            return;
        };
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s.home == 0 {
                break;
            }
            let home = s.home as usize - 1;
            // The entry at j stays if its home lies cyclically in (hole, j].
            let stays = if hole < j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_and_nonce() {
        let mut c = ReplayCache::new(16, 30_000);
        let now = 1_000_000;
        assert_eq!(c.accept(1, 42, now, now), Ok(()));
        assert_eq!(c.accept(1, 42, now, now), Err(Refused::Replay));
        assert_eq!(c.accept(1, 42, now + 5, now + 10), Err(Refused::Replay));
        assert_eq!(c.accept(2, 42, now, now), Ok(()), "another key");
        assert_eq!(c.accept(1, 43, now, now), Ok(()), "another nonce");
        // Once its timestamp has left the window it is forgotten (and refused as stale
        // before it gets here).
        assert_eq!(c.accept(9, 9, now + 30_002, now + 30_002), Ok(()));
        assert_eq!(c.len(), 1);
        assert_eq!(c.accept(1, 42, now + 30_002, now + 30_002), Ok(()));
    }

    #[test]
    fn beyond_the_bound_it_fails_closed() {
        let mut c = ReplayCache::new(64, 30_000);
        let now = 1_000_000;
        for n in 0..64u64 {
            assert_eq!(c.accept(1, n, now + n, now + 100), Ok(()));
        }
        // Full: the next one pushes the oldest out and raises the floor to its timestamp.
        assert_eq!(c.accept(1, 1000, now + 100, now + 100), Ok(()));
        assert_eq!(c.len(), 64);
        // Every forgotten probe is refused, as is anything not newer than it.
        assert_eq!(c.accept(1, 0, now, now + 100), Err(Refused::BelowFloor));
        assert_eq!(c.accept(1, 5000, now, now + 100), Err(Refused::BelowFloor));
        // Those still remembered are replays; newer ones are fine.
        assert_eq!(c.accept(1, 63, now + 63, now + 100), Err(Refused::Replay));
        assert_eq!(c.accept(1, 5001, now + 101, now + 101), Ok(()));
    }

    /// Many insertions and deletions with colliding homes: the table finds exactly what the
    /// ring holds.
    #[test]
    fn table_matches_the_ring() {
        let mut c = ReplayCache::new(100, 1_000);
        let mut now = 10_000;
        for round in 0..50u64 {
            for n in 0..150u64 {
                let nonce = round * 1000 + n;
                let _ = c.accept((n % 3) as u32, nonce, now, now);
                now += 1;
            }
            let held: Vec<Seen> = (0..c.len())
                .map(|i| c.ring[(c.head + i) % c.ring.len()])
                .collect();
            for s in &held {
                assert!(c.find(s.key_id, s.nonce).is_some());
            }
            let used = c.slots.iter().filter(|s| s.home != 0).count();
            assert_eq!(used, held.len());
        }
    }
}
