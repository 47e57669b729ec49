//! Who gets an answer, before any other work is done for a datagram or a connection: the
//! allow-list of prober networks, the source port and destination checks, the rate limits,
//! and for sealed probes the key, the time window, the MAC, the replay cache and the key's
//! budget. Everything here is owned by the monitor thread or read-only.
//!
//! Order for a datagram: `check_source` (allow-list, source port, unicast destination: cheap,
//! charges nothing); then, with `key_file`, a sealed PROBE is checked by `authenticate` (key
//! id and window first, then the MAC) and, if valid, by `Admission::admit_sealed` (replay,
//! then its key's budget): it is never charged to its source, which anyone can forge. Every
//! other datagram, an invalid seal included, is unauthenticated traffic, charged to its
//! source's and everyone's budgets (`Admission::charge`) before anything else is done.

pub mod allow;
pub(crate) mod limit;
pub(crate) mod replay;

use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::counters::Counter;
use crate::keys::{Key, KeySet};
use crate::proto::auth::{self, Verified};
use allow::AllowList;
use limit::{Limited, RateLimiter, Rates};
use replay::{CAPACITY, ReplayCache};

/// Source ports of well-known UDP services that reflect traffic (echo, chargen, DNS, NTP,
/// SNMP, CLDAP, SSDP, memcached); a request "from" them is a spoofed reflection attempt.
pub const REFLECTOR_PORTS: [u16; 8] = [7, 19, 53, 123, 161, 389, 1900, 11211];

/// Who gets answers and how: the parts of the configuration the monitor thread applies.
pub(crate) struct Policy {
    pub allow: AllowList,
    pub text: bool,
    pub keys: Option<KeySet>,
    pub auth_required: bool,
    pub auth_window_ms: u64,
}

/// What `Policy::authenticate` found in a datagram.
pub(crate) enum Sealed<'k> {
    /// No seal the agent can check (no `key_file`, or no trailer): unauthenticated traffic.
    No,
    /// A seal made with `key` (at `index` in the key file), within the window, whose MAC
    /// checked out.
    Valid {
        key: &'k Key,
        index: usize,
        trailer: Verified,
    },
    /// A seal that does not check out: unauthenticated traffic, dropped under this counter
    /// (`DroppedAuthFailed`: unknown key id or wrong MAC; `DroppedAuthStale`: outside the
    /// window).
    Invalid(Counter),
}

/// The budgets and memory the monitor thread keeps to admit datagrams.
pub(crate) struct Admission {
    pub limiter: RateLimiter,
    pub replay: ReplayCache,
}

/// What `Admission` is made from (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdmissionOptions {
    pub rates: Rates,
    pub auth_window_ms: u32,
}

impl AdmissionOptions {
    pub(crate) fn from_config(config: &Config) -> AdmissionOptions {
        AdmissionOptions {
            rates: Rates {
                per_source: config.rate_per_source,
                global: config.rate_global,
                per_key: config.rate_per_key,
                keys: config.keys.as_ref().map_or(0, KeySet::len),
                ipv6_prefix: config.ipv6_source_prefix,
            },
            auth_window_ms: config.auth_window_ms,
        }
    }
}

impl Admission {
    pub(crate) fn new(options: AdmissionOptions) -> Admission {
        let keyed = options.rates.keys > 0;
        Admission {
            limiter: RateLimiter::new(options.rates),
            replay: ReplayCache::new(
                if keyed { CAPACITY } else { 0 },
                u64::from(options.auth_window_ms),
            ),
        }
    }

    /// No limits, no keys (fuzzing, tests).
    pub(crate) fn unlimited() -> Admission {
        Admission::new(AdmissionOptions::from_config(&Config {
            rate_per_source: 0,
            rate_global: 0,
            rate_per_key: 0,
            ..Config::default()
        }))
    }

    /// Charges an unauthenticated datagram from `source` to its source's and everyone's
    /// budgets.
    pub(crate) fn charge(&mut self, source: SocketAddr, now: u64) -> Result<(), Counter> {
        match self.limiter.check(source.ip(), now) {
            Ok(()) => Ok(()),
            Err(Limited::Source) => Err(Counter::DroppedRateLimited),
            Err(Limited::Global) => Err(Counter::DroppedGlobalLimit),
        }
    }

    /// Admits a probe whose seal is valid (`Sealed::Valid`) unless it is a replay or over its
    /// key's budget. Replays spend no budget. `nonce` is the probe's; `unix_ms` the agent's
    /// wall clock, `now` its monotonic one.
    pub(crate) fn admit_sealed(
        &mut self,
        index: usize,
        trailer: Verified,
        nonce: u64,
        unix_ms: u64,
        now: u64,
    ) -> Result<(), Counter> {
        self.replay
            .accept(trailer.key_id, nonce, trailer.timestamp_ms, unix_ms)
            .map_err(|_| Counter::DroppedReplay)?;
        if !self.limiter.check_key(index, now) {
            return Err(Counter::DroppedKeyLimit);
        }
        Ok(())
    }
}

impl Policy {
    pub(crate) fn from_config(config: &Config) -> Policy {
        Policy {
            allow: config.allow.clone(),
            text: config.text,
            keys: config.keys.clone(),
            auth_required: config.auth_required(),
            auth_window_ms: u64::from(config.auth_window_ms),
        }
    }

    /// Whether a datagram from `source` to local address `destination` may be looked at, in
    /// this order: the allow-list, the source port, a unicast destination. Charges nothing.
    /// `Err` names the counter of the drop.
    pub(crate) fn check_source(
        &self,
        source: SocketAddr,
        destination: Option<IpAddr>,
    ) -> Result<(), Counter> {
        if !self.allow.admits(source.ip()) {
            return Err(Counter::DroppedNotAllowed);
        }
        if source.port() == 0 || REFLECTOR_PORTS.contains(&source.port()) {
            return Err(Counter::DroppedSourcePort);
        }
        if destination.is_some_and(|d| !is_unicast(d)) {
            return Err(Counter::DroppedNotUnicast);
        }
        Ok(())
    }

    /// Checks the seal of `datagram` (a protocol v1 PROBE with flag bit 0) when the agent has
    /// keys: the key id and the time window first, then the MAC (the only costly step).
    /// `unix_ms` is the agent's wall clock.
    pub(crate) fn authenticate(&self, datagram: &[u8], unix_ms: u64) -> Sealed<'_> {
        let Some(keys) = &self.keys else {
            return Sealed::No;
        };
        let trailer = match auth::trailer(datagram) {
            Ok(t) => t,
            Err(auth::AuthError::Missing) => return Sealed::No,
            Err(_) => return Sealed::Invalid(Counter::DroppedAuthFailed),
        };
        let Some((index, key)) = keys.find(trailer.key_id) else {
            return Sealed::Invalid(Counter::DroppedAuthFailed);
        };
        if !auth::fresh(trailer.timestamp_ms, unix_ms, self.auth_window_ms) {
            return Sealed::Invalid(Counter::DroppedAuthStale);
        }
        if !auth::mac_matches(datagram, key) {
            return Sealed::Invalid(Counter::DroppedAuthFailed);
        }
        Sealed::Valid {
            key,
            index,
            trailer,
        }
    }
}

/// False for multicast and broadcast destinations: answering them would make every agent on a
/// network answer one datagram.
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}
