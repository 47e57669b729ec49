//! The allow-list of prober source addresses (`allow=` in the config): IPv4 and IPv6 CIDRs.

use std::fmt;
use std::net::IpAddr;

/// One network in CIDR notation, such as `10.0.0.0/8` or `fd00::/8`. A bare address is a
/// single host (`/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare `ADDR`. Host bits must be zero (`10.0.0.1/8` is refused
    /// as a likely typo).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("\"{addr_text}\" is not an IPv4 or IPv6 address"))?;
        let max = max_prefix(network);
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix \"/{p}\" must be 0..={max}")),
            },
        };
        let cidr = Cidr { network, prefix };
        if mask(cidr.bits(network), prefix, max) != cidr.bits(network) {
            return Err(format!(
                "\"{text}\" has host bits set (did you mean {}/{prefix}?)",
                cidr.masked_network()
            ));
        }
        Ok(cidr)
    }

    /// True when `addr` is inside this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// match IPv4 networks, as a dual-stack socket reports IPv4 peers that way.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        if addr.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let max = max_prefix(addr);
        mask(self.bits(addr), self.prefix, max) == self.bits(self.network)
    }

    fn bits(&self, addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn masked_network(&self) -> IpAddr {
        let max = max_prefix(self.network);
        let bits = mask(self.bits(self.network), self.prefix, max);
        match self.network {
            IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(bits.into()),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// Keeps the top `prefix` bits of an address that is `width` bits wide.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let host_bits = u32::from(width - prefix);
    bits & !((1u128 << host_bits) - 1)
}

/// A list of networks; empty means "everyone" (no `allow=` key given).
///
/// The networks are kept in configuration order (for display and comparison) and, for the
/// per-datagram question, as sorted, merged address ranges per family: one binary search
/// (at most 18 steps for 200,000 networks) whatever the length of the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Cidr>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merged<T: Copy + Ord>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if next(last.1).is_none_or(|n| start <= n) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Whether `x` lies in one of the sorted, disjoint inclusive `ranges`.
fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The first range that starts after x; the one before it is the only candidate.
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && x <= ranges[after - 1].1
}

impl AllowList {
    /// A list that admits only these networks.
    pub fn new(networks: Vec<Cidr>) -> AllowList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in &networks {
            let max = max_prefix(n.network);
            let start = n.bits(n.network);
            let host_bits = u32::from(max - n.prefix);
            let end = if host_bits == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host_bits) - 1)
            };
            match n.network {
                IpAddr::V4(_) => v4.push((start as u32, end as u32)),
                IpAddr::V6(_) => v6.push((start, end)),
            }
        }
        AllowList {
            v4: merged(v4, |x: u32| x.checked_add(1)),
            v6: merged(v6, |x: u128| x.checked_add(1)),
            networks,
        }
    }

    /// True when a prober at `addr` may be answered. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`) are their IPv4 address.
    pub fn admits(&self, addr: IpAddr) -> bool {
        if self.networks.is_empty() {
            return true;
        }
        match addr.to_canonical() {
            IpAddr::V4(v4) => in_ranges(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => in_ranges(&self.v6, u128::from(v6)),
        }
    }

    /// The networks, in configuration order.
    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_networks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.9.9")));
        assert!(!c.contains(ip("::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        assert!(Cidr::parse("127.0.0.2").unwrap().contains(ip("127.0.0.2")));
        assert!(!Cidr::parse("127.0.0.2").unwrap().contains(ip("127.0.0.3")));
    }

    #[test]
    fn ipv6_networks() {
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains(ip("fd12::1")));
        assert!(!c.contains(ip("fe80::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
    }

    #[test]
    fn bad_networks_say_why() {
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(Cidr::parse("bogus").unwrap_err().contains("not an IPv4"));
        assert!(Cidr::parse("::/129").unwrap_err().contains("0..=128"));
    }

    #[test]
    fn empty_list_admits_everyone() {
        assert!(AllowList::default().admits(ip("192.0.2.1")));
        let l = AllowList::new(vec![Cidr::parse("127.0.0.0/8").unwrap()]);
        assert!(l.admits(ip("127.0.0.5")));
        assert!(!l.admits(ip("::1")));
    }

    /// The ranges answer exactly what a scan of the networks answers, for overlapping,
    /// nested, adjacent and extreme networks.
    #[test]
    fn ranges_agree_with_a_linear_scan() {
        let nets = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.255.255.255",
            "11.0.0.0/8",
            "192.168.1.0/24",
            "192.168.3.0/24",
            "255.255.255.255",
            "0.0.0.0",
            "fd00::/8",
            "fd00:1::/32",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::/64",
            "2001:db8:0:1::/64",
        ];
        let list = AllowList::new(nets.iter().map(|n| Cidr::parse(n).unwrap()).collect());
        let cidrs: Vec<Cidr> = list.networks().to_vec();
        let probes = [
            "9.255.255.255",
            "10.0.0.0",
            "10.200.1.1",
            "11.255.255.255",
            "12.0.0.0",
            "192.168.0.255",
            "192.168.1.7",
            "192.168.2.1",
            "192.168.3.255",
            "255.255.255.254",
            "255.255.255.255",
            "0.0.0.0",
            "0.0.0.1",
            "::",
            "::1",
            "::2",
            "fcff::1",
            "fd12::1",
            "fe00::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::5",
            "2001:db8:0:1:ffff::",
            "2001:db8:0:2::",
            "::ffff:10.9.9.9",
            "::ffff:12.0.0.1",
        ];
        for p in probes {
            let a = ip(p);
            assert_eq!(list.admits(a), cidrs.iter().any(|c| c.contains(a)), "{p}");
        }
        // The whole space, either family.
        let all = AllowList::new(vec![Cidr::parse("::/0").unwrap()]);
        assert!(all.admits(ip("::")) && all.admits(ip("ffff::1")) && !all.admits(ip("1.2.3.4")));
        // 200,000 single hosts and networks merge into what they cover.
        let many: Vec<Cidr> = (0..200_000u32)
            .map(|i| {
                Cidr::parse(&std::net::Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string()).unwrap()
            })
            .collect();
        let list = AllowList::new(many);
        assert!(list.admits(ip("10.0.0.0")) && list.admits(ip("10.6.26.126")));
        assert!(!list.admits(ip("10.0.0.1")) && !list.admits(ip("10.6.26.128")));
    }
}
