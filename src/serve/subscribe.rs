//! Subscriptions to pushed changes (a protocol v1 PROBE with `FLAG_SUBSCRIBE`): who asked, about
//! what, sealed with which key, until when; and the bounds that keep pushes from being a
//! weapon for someone who spoofs a subscriber's address:
//! - only a PROBE sealed with a valid key subscribes (`subscribe=auth`, the default), or, with
//!   `subscribe=allow`, an unsealed one from a source in `allow=`;
//! - at most `max_subscribers` at once (a full table refuses new ones: they keep polling);
//! - a push is never longer than the PROBE that subscribed, one datagram per change at most,
//!   and at most `PUSH_BURST` at once then `PUSHES_PER_SECOND` per subscriber (changes that
//!   come faster are coalesced: the latest status is pushed when the bucket allows);
//! - a lease ends by itself unless renewed (at most `wire::MAX_LEASE_MS`).
//!
//! The table is owned by the monitor thread and allocated once, at its start.

use std::net::{IpAddr, SocketAddr};

use crate::config::SubscribeMode;
use crate::proto::wire::MAX_LEASE_MS;
use crate::status::Target;

/// Pushes to one subscriber, at most, per second in the long run...
pub const PUSHES_PER_SECOND: u64 = 50;
/// ... and at once, after a quiet spell.
pub const PUSH_BURST: u64 = 5;

/// One subscriber of one target.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Subscription {
    /// Where pushes go (the subscribing PROBE's source).
    pub peer: SocketAddr,
    /// The address the PROBE was sent to: pushes leave from it, like answers.
    pub local: Option<IpAddr>,
    /// The socket (index of `Sockets::udp`) that received it.
    pub listener: usize,
    pub target: Target,
    /// The subscribing PROBE's nonce, echoed in every push.
    pub nonce: u64,
    /// The key that sealed it: pushes are sealed with it too.
    pub key_id: Option<u32>,
    /// The subscribing PROBE's length: no push is longer.
    pub max_len: usize,
    pub expires_at: u64,
    /// The generation last told (in the answer, or pushed): only a change is pushed.
    pub told: u32,
    /// A change waits to be pushed (held back by the rate bound).
    pub due: bool,
    /// The rate bound: a token bucket, in thousandths of a push, as of `tokens_at`.
    pub milli_tokens: u64,
    pub tokens_at: u64,
}

impl Subscription {
    /// Takes a push from the bucket at `now`, if there is one; otherwise returns when there
    /// will be.
    pub(crate) fn take_push(&mut self, now: u64) -> Result<(), u64> {
        let elapsed = now.saturating_sub(self.tokens_at);
        self.tokens_at = now;
        self.milli_tokens =
            (self.milli_tokens + elapsed * PUSHES_PER_SECOND).min(PUSH_BURST * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            Ok(())
        } else {
            Err(now + (1000 - self.milli_tokens).div_ceil(PUSHES_PER_SECOND))
        }
    }
}

/// What became of an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Taken or renewed: the answer carries `FLAG_SUBSCRIBED`.
    Granted,
    /// Ended (a lease of 0), refused by policy, or the table is full.
    NotGranted,
}

/// The live subscriptions.
pub(crate) struct Subscriptions {
    list: Vec<Subscription>,
    max: usize,
    mode: SubscribeMode,
}

impl Subscriptions {
    pub(crate) fn new(max: usize, mode: SubscribeMode) -> Subscriptions {
        Subscriptions {
            list: Vec::with_capacity(max),
            max,
            mode,
        }
    }

    /// Whether a PROBE may subscribe: sealed with a valid key, or (with `subscribe=allow`)
    /// unsealed from an allowed source. The caller has checked the allow-list already (every
    /// datagram from elsewhere is dropped before it is decoded).
    pub(crate) fn admits(&self, sealed: bool) -> bool {
        match self.mode {
            SubscribeMode::Off => false,
            SubscribeMode::Auth => sealed,
            SubscribeMode::Allow => true,
        }
    }

    /// Takes, renews or (with a lease of 0) ends `offer`'s subscription: one per peer and
    /// target, so a renewal replaces the nonce, key, length and lease.
    pub(crate) fn offer(&mut self, offer: Subscription, lease_ms: u32, now: u64) -> Offer {
        self.expire(now);
        let existing = self
            .list
            .iter()
            .position(|s| s.peer == offer.peer && s.target == offer.target);
        if lease_ms == 0 {
            if let Some(i) = existing {
                self.list.swap_remove(i);
            }
            return Offer::NotGranted;
        }
        let sub = Subscription {
            expires_at: now + u64::from(lease_ms.min(MAX_LEASE_MS)),
            ..offer
        };
        match existing {
            Some(i) => {
                // A renewal keeps the rate bound already running.
                let old = self.list[i];
                self.list[i] = Subscription {
                    milli_tokens: old.milli_tokens,
                    tokens_at: old.tokens_at,
                    due: old.due,
                    ..sub
                };
            }
            None if self.list.len() < self.max => self.list.push(Subscription {
                milli_tokens: PUSH_BURST * 1000,
                tokens_at: now,
                ..sub
            }),
            None => return Offer::NotGranted,
        }
        Offer::Granted
    }

    /// Drops the subscriptions whose lease has ended.
    pub(crate) fn expire(&mut self, now: u64) {
        self.list.retain(|s| s.expires_at > now);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.list.iter_mut()
    }

    /// The earliest time something is to be done: a push held back by the rate bound (the
    /// bucket has a push again), or a lease that ends.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.list
            .iter()
            .map(|s| {
                let refilled = s.tokens_at
                    + 1000u64
                        .saturating_sub(s.milli_tokens)
                        .div_ceil(PUSHES_PER_SECOND);
                if s.due {
                    refilled.min(s.expires_at)
                } else {
                    s.expires_at
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(port: u16, target: Target, nonce: u64) -> Subscription {
        Subscription {
            peer: ([127, 0, 0, 1], port).into(),
            local: None,
            listener: 0,
            target,
            nonce,
            key_id: Some(1),
            max_len: 328,
            expires_at: 0,
            told: 0,
            due: false,
            milli_tokens: 0,
            tokens_at: 0,
        }
    }

    #[test]
    fn one_per_peer_and_target_bounded_and_leased() {
        let mut subs = Subscriptions::new(2, SubscribeMode::Auth);
        assert!(subs.admits(true) && !subs.admits(false));
        assert_eq!(
            subs.offer(sub(1, Target::Server, 1), 5000, 1000),
            Offer::Granted
        );
        // A renewal replaces the nonce, not adds.
        assert_eq!(
            subs.offer(sub(1, Target::Server, 2), 5000, 2000),
            Offer::Granted
        );
        assert_eq!(subs.list.len(), 1);
        assert_eq!(subs.iter_mut().next().unwrap().nonce, 2);
        assert_eq!(
            subs.offer(sub(1, Target::Service(0), 3), 5000, 2000),
            Offer::Granted
        );
        // Full: a third peer is refused; the others stay.
        assert_eq!(
            subs.offer(sub(2, Target::Server, 4), 5000, 2000),
            Offer::NotGranted
        );
        assert_eq!(subs.list.len(), 2);
        // The lease is capped and ends by itself.
        assert_eq!(
            subs.offer(sub(1, Target::Server, 5), u32::MAX, 3000),
            Offer::Granted
        );
        assert_eq!(subs.next_deadline(), Some(7000));
        subs.expire(7000);
        assert_eq!(subs.list.len(), 1);
        assert_eq!(subs.iter_mut().next().unwrap().expires_at, 3000 + 60_000);
        // A lease of 0 ends it.
        assert_eq!(
            subs.offer(sub(1, Target::Server, 6), 0, 4000),
            Offer::NotGranted
        );
        assert!(subs.is_empty());
        assert!(!Subscriptions::new(1, SubscribeMode::Off).admits(true));
        assert!(Subscriptions::new(1, SubscribeMode::Allow).admits(false));
    }

    #[test]
    fn pushes_come_in_a_burst_then_at_the_rate() {
        let mut subs = Subscriptions::new(1, SubscribeMode::Auth);
        subs.offer(sub(1, Target::Server, 1), 60_000, 1000);
        let s = subs.iter_mut().next().unwrap();
        for _ in 0..PUSH_BURST {
            assert_eq!(s.take_push(1000), Ok(()));
        }
        assert_eq!(s.take_push(1000), Err(1020), "one more in 1000 / 50 ms");
        assert_eq!(s.take_push(1019), Err(1020));
        assert_eq!(s.take_push(1020), Ok(()));
        // A quiet spell refills the burst, no more.
        assert_eq!(s.take_push(100_000), Ok(()));
        assert_eq!(s.milli_tokens, (PUSH_BURST - 1) * 1000);
    }
}
