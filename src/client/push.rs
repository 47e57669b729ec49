//! The prober's side of subscriptions: which agents granted this prober a subscription, and
//! how a pushed STATUS is told from a forgery, a stray or a replay.
//!
//! A push counts only when it carries the nonce of a granted subscription, comes from the
//! address that was probed, authenticates with the key the subscribing PROBE was sealed with
//! (when it was), comes from the same agent instance, and has a newer generation than
//! anything seen for that subscription (so an old push replayed later changes nothing).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::answer::{Answer, read_answer_keyed};
use crate::keys::Key;
use crate::proto::wire;

struct Granted {
    token: u64,
    target: SocketAddr,
    key: Option<Arc<Key>>,
    instance_id: u64,
    generation: u32,
    expires: Instant,
}

/// What a datagram was, as far as subscriptions go.
pub(crate) enum PushRead {
    /// Not a pushed STATUS: the caller handles it as an answer.
    NotAPush,
    /// A push that does not count (no such subscription, wrong address or key, stale).
    Ignored,
    /// A new status for the subscription of `token`.
    Accepted {
        token: u64,
        target: SocketAddr,
        answer: Answer,
    },
}

/// The subscriptions agents granted, by the nonce of the PROBE that subscribed.
#[derive(Default)]
pub(crate) struct Pushes {
    granted: HashMap<u64, Granted>,
    /// Each token's current subscription (a renewal replaces the one before).
    by_token: HashMap<u64, u64>,
}

impl Pushes {
    /// The agent granted the subscription of the PROBE `nonce` (sent at `sent`, asking for
    /// `lease`), answering `answer`.
    pub(crate) fn granted(
        &mut self,
        nonce: u64,
        (token, target): (u64, SocketAddr),
        key: Option<Arc<Key>>,
        answer: &Answer,
        (sent, lease): (Instant, Duration),
    ) {
        if let Some(old) = self.by_token.insert(token, nonce) {
            self.granted.remove(&old);
        }
        let lease = lease.min(Duration::from_millis(u64::from(wire::MAX_LEASE_MS)));
        self.granted.insert(
            nonce,
            Granted {
                token,
                target,
                key,
                instance_id: answer.instance_id,
                generation: answer.generation,
                expires: sent + lease,
            },
        );
    }

    /// An answer for `token` that did not renew its subscription ends it here too.
    pub(crate) fn not_granted(&mut self, token: u64) {
        if let Some(old) = self.by_token.remove(&token) {
            self.granted.remove(&old);
        }
    }

    /// Reads `datagram` from `from` as a push.
    pub(crate) fn take(&mut self, datagram: &[u8], from: SocketAddr) -> PushRead {
        let Ok(wire::Reply::Status(status)) = wire::decode_reply(datagram) else {
            return PushRead::NotAPush;
        };
        if status.flags & wire::FLAG_PUSHED == 0 {
            return PushRead::NotAPush;
        }
        let Some(sub) = self.granted.get_mut(&status.nonce) else {
            return PushRead::Ignored;
        };
        if sub.target != from {
            return PushRead::Ignored;
        }
        let answer =
            match read_answer_keyed(datagram, status.nonce, Duration::ZERO, sub.key.as_deref()) {
                Ok(Some(answer)) => answer,
                _ => return PushRead::Ignored,
            };
        let newer = answer.generation.wrapping_sub(sub.generation) as i32 > 0;
        if answer.instance_id != sub.instance_id || !newer {
            return PushRead::Ignored;
        }
        sub.generation = answer.generation;
        PushRead::Accepted {
            token: sub.token,
            target: sub.target,
            answer,
        }
    }

    /// Forgets the subscriptions whose lease has ended.
    pub(crate) fn expire(&mut self, now: Instant) {
        let by_token = &mut self.by_token;
        self.granted.retain(|_, sub| {
            let live = sub.expires > now;
            if !live {
                by_token.remove(&sub.token);
            }
            live
        });
    }

    /// Subscriptions granted and not yet ended.
    pub(crate) fn len(&self) -> usize {
        self.granted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_datagrams;

    const AGENT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 3),
        4950,
    ));

    fn push(nonce: u64, generation: u32, instance_id: u64, key: Option<&Key>) -> Vec<u8> {
        let fields = wire::StatusFields {
            flags: wire::FLAG_PUSHED,
            instance_id,
            generation,
            state: crate::State::Drain as u8,
            ..test_datagrams::up(nonce)
        };
        test_datagrams::status(&fields, key)
    }

    fn answer(generation: u32) -> Answer {
        Answer {
            state: crate::State::Up,
            reason: None,
            reason_code: 0,
            weight_pct: 100,
            in_use: 0,
            capacity: 0,
            generation,
            since_ms: 0,
            instance_id: 9,
            message: String::new(),
            rtt: Duration::ZERO,
            subscribed: true,
            pushed: false,
            drain: None,
        }
    }

    #[test]
    fn only_new_authentic_pushes_from_the_agent_count() {
        let key = Arc::new(Key::new(7, &[0x33; 32]).unwrap());
        let other = Key::new(7, &[0x44; 32]).unwrap();
        let mut pushes = Pushes::default();
        let lease = (Instant::now(), Duration::from_secs(30));
        pushes.granted(0xab, (1, AGENT), Some(key.clone()), &answer(5), lease);
        let elsewhere: SocketAddr = "127.0.0.4:4950".parse().unwrap();
        // Forgeries: unsealed, sealed with another secret, another nonce, another address,
        // another instance; and the answer's own generation again.
        assert!(matches!(
            pushes.take(&push(0xab, 6, 9, None), AGENT),
            PushRead::Ignored
        ));
        assert!(matches!(
            pushes.take(&push(0xab, 6, 9, Some(&other)), AGENT),
            PushRead::Ignored
        ));
        assert!(matches!(
            pushes.take(&push(0xac, 6, 9, Some(&key)), AGENT),
            PushRead::Ignored
        ));
        assert!(matches!(
            pushes.take(&push(0xab, 6, 9, Some(&key)), elsewhere),
            PushRead::Ignored
        ));
        assert!(matches!(
            pushes.take(&push(0xab, 6, 8, Some(&key)), AGENT),
            PushRead::Ignored
        ));
        assert!(matches!(
            pushes.take(&push(0xab, 5, 9, Some(&key)), AGENT),
            PushRead::Ignored
        ));
        // The real one, once; replayed (or an older one later), it changes nothing.
        let real = push(0xab, 6, 9, Some(&key));
        assert!(matches!(
            pushes.take(&real, AGENT),
            PushRead::Accepted { token: 1, .. }
        ));
        assert!(matches!(pushes.take(&real, AGENT), PushRead::Ignored));
        assert!(matches!(
            pushes.take(&push(0xab, 7, 9, Some(&key)), AGENT),
            PushRead::Accepted { .. }
        ));
        assert!(matches!(
            pushes.take(&push(0xab, 6, 9, Some(&key)), AGENT),
            PushRead::Ignored
        ));
        // An answer is not a push.
        let mut not_pushed = push(0xab, 8, 9, None);
        not_pushed[6..8].copy_from_slice(&0u16.to_be_bytes());
        assert!(matches!(
            pushes.take(&not_pushed, AGENT),
            PushRead::NotAPush
        ));
        // A renewal replaces the subscription; an ended lease forgets it.
        pushes.granted(0xcd, (1, AGENT), Some(key.clone()), &answer(7), lease);
        assert!(matches!(
            pushes.take(&push(0xab, 9, 9, Some(&key)), AGENT),
            PushRead::Ignored
        ));
        assert_eq!(pushes.len(), 1);
        pushes.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(pushes.len(), 0);
    }
}
