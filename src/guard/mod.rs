//! Who gets an answer, before any other work is done for a datagram or a connection: the
//! allow-list of prober networks, the source port and destination checks, and the rate
//! limits. Everything here is owned by the monitor thread or read-only.

pub mod allow;
pub(crate) mod limit;

use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::counters::Counter;
use crate::keys::KeySet;
use allow::AllowList;
use limit::{Limited, RateLimiter};

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
    /// this order: the allow-list, the source port, a unicast destination, then the rate
    /// limits (charged only for datagrams that passed the other checks). `Err` names the
    /// counter of the drop.
    pub(crate) fn admit_datagram(
        &self,
        limiter: &mut RateLimiter,
        source: SocketAddr,
        destination: Option<IpAddr>,
        now: u64,
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
        match limiter.check(source.ip(), now) {
            Ok(()) => Ok(()),
            Err(Limited::Source) => Err(Counter::DroppedRateLimited),
            Err(Limited::Global) => Err(Counter::DroppedGlobalLimit),
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
