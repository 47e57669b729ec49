//! Rate limits on probes: a token bucket per source address and one for everyone.
//!
//! Owned by the monitor thread alone (no atomics). The per-source buckets live in a fixed
//! table (no allocation per datagram): each address has two candidate slots chosen by a keyed
//! hash (SipHash with a random key, so an attacker cannot aim at a victim's slot); a new
//! address takes an idle slot or evicts the one unused for longest.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;

/// Per-source buckets kept.
const TABLE: usize = 4096;

/// A token bucket in thousandths of a token (integer arithmetic, millisecond clock).
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    key: u128,
    used: bool,
    milli_tokens: u64,
    last_ms: u64,
}

impl Bucket {
    /// Refills at `rate` tokens per second up to `burst`, then takes one token if there is one.
    fn take(&mut self, rate: u64, burst: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        self.milli_tokens = (self.milli_tokens + elapsed.saturating_mul(rate)).min(burst * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Its source sends faster than `rate_per_source`.
    Source,
    /// Everyone together sends faster than `rate_global`.
    Global,
}

/// The limits; a rate of 0 turns that limit off.
pub(crate) struct RateLimiter {
    per_source: u64,
    global: u64,
    hasher: RandomState,
    table: Box<[Bucket]>,
    everyone: Bucket,
}

fn key_of(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | 1 << 127,
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(u128::from(v6), |v4| key_of(v4.into())),
    }
}

impl RateLimiter {
    /// Limits in probes per second (bursts of one second's worth).
    pub(crate) fn new(per_source: u32, global: u32) -> RateLimiter {
        let full = |rate: u32| Bucket {
            milli_tokens: u64::from(rate) * 1000,
            ..Bucket::default()
        };
        RateLimiter {
            per_source: u64::from(per_source),
            global: u64::from(global),
            hasher: RandomState::new(),
            table: vec![Bucket::default(); if per_source > 0 { TABLE } else { 0 }]
                .into_boxed_slice(),
            everyone: full(global),
        }
    }

    /// Charges one datagram from `source` at `now_ms`.
    pub(crate) fn check(&mut self, source: IpAddr, now_ms: u64) -> Result<(), Limited> {
        if self.per_source > 0 {
            let key = key_of(source);
            let slot = self.slot(key, now_ms);
            let bucket = &mut self.table[slot];
            if !bucket.used || bucket.key != key {
                *bucket = Bucket {
                    key,
                    used: true,
                    milli_tokens: self.per_source * 1000,
                    last_ms: now_ms,
                };
            }
            if !bucket.take(self.per_source, self.per_source, now_ms) {
                return Err(Limited::Source);
            }
        }
        if self.global > 0 && !self.everyone.take(self.global, self.global, now_ms) {
            return Err(Limited::Global);
        }
        Ok(())
    }

    /// The slot for `key`: its own if present, else an idle one, else the least recently used
    /// of its two candidates.
    fn slot(&self, key: u128, now_ms: u64) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write_u128(key);
        let hash = h.finish();
        let a = (hash as usize) % TABLE;
        let b = ((hash >> 32) as usize) % TABLE;
        for s in [a, b] {
            if self.table[s].used && self.table[s].key == key {
                return s;
            }
        }
        // A bucket untouched for a second has refilled completely: it is as good as free.
        let idle =
            |s: usize| !self.table[s].used || now_ms.saturating_sub(self.table[s].last_ms) >= 1000;
        if idle(a) {
            a
        } else if idle(b) {
            b
        } else if self.table[a].last_ms <= self.table[b].last_ms {
            a
        } else {
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_bucket() {
        let mut l = RateLimiter::new(10, 0);
        let a = ip("10.0.0.1");
        for _ in 0..10 {
            assert_eq!(l.check(a, 1000), Ok(()));
        }
        assert_eq!(l.check(a, 1000), Err(Limited::Source));
        // Another source is not affected.
        assert_eq!(l.check(ip("10.0.0.2"), 1000), Ok(()));
        // 100 ms later: one more token.
        assert_eq!(l.check(a, 1100), Ok(()));
        assert_eq!(l.check(a, 1100), Err(Limited::Source));
        // IPv4-mapped IPv6 is the same source.
        assert_eq!(l.check(ip("::ffff:10.0.0.1"), 1100), Err(Limited::Source));
    }

    #[test]
    fn global_bucket() {
        let mut l = RateLimiter::new(0, 5);
        for i in 0..5 {
            assert_eq!(l.check(ip(&format!("10.0.0.{i}")), 0), Ok(()));
        }
        assert_eq!(l.check(ip("10.0.1.1"), 0), Err(Limited::Global));
        assert_eq!(l.check(ip("10.0.1.1"), 1000), Ok(()));
    }

    #[test]
    fn many_sources_fit_and_the_table_stays_fixed() {
        let mut l = RateLimiter::new(1, 0);
        // Far more sources than slots: every new source gets its one token.
        for i in 0..20_000u32 {
            let a = IpAddr::V4(i.into());
            assert_eq!(l.check(a, u64::from(i)), Ok(()), "{a}");
        }
        assert_eq!(l.table.len(), TABLE);
        assert!(RateLimiter::new(0, 0).check(ip("::1"), 0).is_ok());
    }
}
