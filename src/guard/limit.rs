//! Rate limits on probes: a token bucket per source, one for everyone, and one per key.
//!
//! Unauthenticated datagrams are charged to their source's bucket and to everyone's. A source
//! is an IPv4 address or an IPv6 prefix (`ipv6_source_prefix`, /64 by default: one host
//! commonly owns a whole /64, as DNS response-rate limiting assumes). A sealed probe whose MAC
//! checked out is charged to its key's bucket only (`check_key`): a source address can be
//! forged by anyone, a MAC only by a key holder, so junk cannot spend a director's budget.
//!
//! Owned by the monitor thread alone (no atomics). The per-source buckets live in a fixed
//! table (no allocation per datagram): each source has two candidate slots chosen by a keyed
//! hash (SipHash with a random key, so an attacker cannot aim at a victim's slot); a new
//! source takes an idle slot or evicts the one unused for longest.

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

/// The limits (probes per second); a rate of 0 turns that limit off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    pub per_source: u32,
    pub global: u32,
    pub per_key: u32,
    /// How many keys there are (`check_key` takes an index below this).
    pub keys: usize,
    /// IPv6 sources that share this many leading bits are one source.
    pub ipv6_prefix: u8,
}

/// The limits' state.
pub(crate) struct RateLimiter {
    per_source: u64,
    global: u64,
    per_key: u64,
    ipv6_prefix: u8,
    hasher: RandomState,
    table: Box<[Bucket]>,
    everyone: Bucket,
    keys: Box<[Bucket]>,
}

/// The identity of a source for per-source limits: an IPv4 address (IPv4-mapped IPv6 is its
/// IPv4 address), or the first `ipv6_prefix` bits of an IPv6 address. IPv4 keys are the
/// IPv4-mapped form (`::ffff:a.b.c.d`), which no IPv6 source key equals.
pub(crate) fn source_key(addr: IpAddr, ipv6_prefix: u8) -> u128 {
    match addr.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            match ipv6_prefix {
                0 => 0,
                p if p >= 128 => bits,
                p => bits & !(u128::MAX >> p),
            }
        }
    }
}

impl RateLimiter {
    /// Limits in probes per second (bursts of one second's worth).
    pub(crate) fn new(rates: Rates) -> RateLimiter {
        let full = |rate: u32| Bucket {
            milli_tokens: u64::from(rate) * 1000,
            ..Bucket::default()
        };
        RateLimiter {
            per_source: u64::from(rates.per_source),
            global: u64::from(rates.global),
            per_key: u64::from(rates.per_key),
            ipv6_prefix: rates.ipv6_prefix,
            hasher: RandomState::new(),
            table: vec![Bucket::default(); if rates.per_source > 0 { TABLE } else { 0 }]
                .into_boxed_slice(),
            everyone: full(rates.global),
            keys: vec![full(rates.per_key); rates.keys].into_boxed_slice(),
        }
    }

    /// Limits without keys and with IPv6 sources counted per /64 (tests).
    #[cfg(test)]
    pub(crate) fn unkeyed(per_source: u32, global: u32) -> RateLimiter {
        RateLimiter::new(Rates {
            per_source,
            global,
            per_key: 0,
            keys: 0,
            ipv6_prefix: 64,
        })
    }

    /// Charges one authenticated probe to the key at `index` (in its key file) at `now_ms`.
    pub(crate) fn check_key(&mut self, index: usize, now_ms: u64) -> bool {
        let rate = self.per_key;
        match self.keys.get_mut(index) {
            Some(bucket) if rate > 0 => bucket.take(rate, rate, now_ms),
            _ => true,
        }
    }

    /// Charges one unauthenticated datagram from `source` at `now_ms`.
    pub(crate) fn check(&mut self, source: IpAddr, now_ms: u64) -> Result<(), Limited> {
        if self.per_source > 0 {
            let key = source_key(source, self.ipv6_prefix);
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
        let mut l = RateLimiter::unkeyed(10, 0);
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
        let mut l = RateLimiter::unkeyed(0, 5);
        for i in 0..5 {
            assert_eq!(l.check(ip(&format!("10.0.0.{i}")), 0), Ok(()));
        }
        assert_eq!(l.check(ip("10.0.1.1"), 0), Err(Limited::Global));
        assert_eq!(l.check(ip("10.0.1.1"), 1000), Ok(()));
    }

    #[test]
    fn many_sources_fit_and_the_table_stays_fixed() {
        let mut l = RateLimiter::unkeyed(1, 0);
        // Far more sources than slots: every new source gets its one token.
        for i in 0..20_000u32 {
            let a = IpAddr::V4(i.into());
            assert_eq!(l.check(a, u64::from(i)), Ok(()), "{a}");
        }
        assert_eq!(l.table.len(), TABLE);
        assert!(RateLimiter::unkeyed(0, 0).check(ip("::1"), 0).is_ok());
    }

    #[test]
    fn ipv6_sources_share_their_prefix() {
        let mut l = RateLimiter::unkeyed(2, 0);
        // 2,000 addresses of one /64 are one source.
        let ok = (0..2000u128)
            .filter(|i| {
                let a = IpAddr::V6((0x2001_0db8_0000_0001u128 << 64 | i).into());
                l.check(a, 5000).is_ok()
            })
            .count();
        assert_eq!(ok, 2);
        // Another /64 is another source.
        assert!(l.check(ip("2001:db8:0:2::1"), 5000).is_ok());
        assert_eq!(
            source_key(ip("2001:db8::1"), 128),
            u128::from(ip6("2001:db8::1"))
        );
        assert_eq!(
            source_key(ip("2001:db8::1"), 48),
            source_key(ip("2001:db8:0:ffff::"), 48)
        );
        assert_ne!(
            source_key(ip("2001:db8::1"), 64),
            source_key(ip("2001:db8:0:1::"), 64)
        );
        assert_eq!(
            source_key(ip("::ffff:10.0.0.1"), 64),
            source_key(ip("10.0.0.1"), 64)
        );
        assert_ne!(
            source_key(ip("10.0.0.1"), 64),
            source_key(ip("10.0.0.2"), 64)
        );
    }

    fn ip6(s: &str) -> std::net::Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let mut l = RateLimiter::new(Rates {
            per_source: 1,
            global: 1,
            per_key: 3,
            keys: 2,
            ipv6_prefix: 64,
        });
        assert!((0..3).all(|_| l.check_key(0, 0)));
        assert!(!l.check_key(0, 0));
        assert!(l.check_key(1, 0), "another key's budget is its own");
        // The unauthenticated limits are untouched by keyed probes.
        assert_eq!(l.check(ip("10.0.0.1"), 0), Ok(()));
        assert!(l.check_key(0, 334), "refilled at 3 per second");
    }
}
