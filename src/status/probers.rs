//! Who asked: the probers the monitor thread answered recently, per service, and how many
//! non-serving answers each was given in a row. This is what lets the agent say when a drain
//! is complete: every director that asks has been told, often enough to act on it.
//!
//! A prober is a source address and a kind of question (protocol v1, text line, HAProxy
//! agent-check, HTTP) about one cell (the whole server or one service). Source ports are not
//! part of it: keepalived and HAProxy use a new socket, so a new port, for each check.
//!
//! The table has a fixed number of slots (`SLOTS`), allocated once: recording a prober never
//! allocates. Only the monitor thread of the process that answers writes it (one writer);
//! host threads read it (`lbagent_drain_status`) through a sequence number per slot, so a
//! reader never waits for the writer and never sees half of an update. A slot whose prober
//! was last seen longer than the drain window ago is free for another prober. When every slot
//! holds a prober seen within the window, a new prober cannot be recorded: the table notes
//! when that happened, and no drain is complete while such a prober could still be asking
//! (a flood of spoofed sources delays a drain; it never completes one early).
//!
//! The table is in this process's memory, not shared with forked children: a worker of a
//! prefork server reads a copy frozen at its fork (the agent refuses to answer drain questions
//! there; see `Agent::drain_status`).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Probers tracked at once (per agent, every service together).
pub const SLOTS: usize = 256;

/// How a prober asked.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProberKind {
    /// A protocol v1 PROBE over UDP.
    UdpV1 = 1,
    /// A text line over UDP (keepalived `UDP_CHECK`, ldirectord).
    Text = 2,
    /// HAProxy's agent-check over TCP.
    AgentCheck = 3,
    /// An HTTP health check.
    Http = 4,
}

impl ProberKind {
    /// Every kind, in numeric order.
    pub const ALL: [ProberKind; 4] = [
        ProberKind::UdpV1,
        ProberKind::Text,
        ProberKind::AgentCheck,
        ProberKind::Http,
    ];

    /// Lower-case name, for logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ProberKind::UdpV1 => "udp-v1",
            ProberKind::Text => "text",
            ProberKind::AgentCheck => "agent-check",
            ProberKind::Http => "http",
        }
    }
}

/// One prober. `tag` is 0 while the slot was never used.
#[derive(Default)]
struct Slot {
    /// Even when stable, odd while the writer changes the slot.
    seq: AtomicU32,
    /// `cell << 8 | kind`, 0 for a slot never used.
    tag: AtomicU32,
    /// The source address as IPv6 (IPv4 mapped), high and low halves.
    addr: [AtomicU64; 2],
    last_seen: AtomicU64,
    /// Non-serving answers given in a row (reset by a serving answer).
    told: AtomicU32,
}

/// A consistent reading of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prober {
    pub addr: IpAddr,
    pub kind: ProberKind,
    pub cell: usize,
    pub last_seen: u64,
    pub told: u32,
}

/// The probers recently answered.
pub(crate) struct Probers {
    slots: Box<[Slot]>,
    /// Keyed hash of a prober (random key per agent): where its search starts.
    hasher: std::hash::RandomState,
    /// Clock time of the last prober that found no free slot (0: never).
    overflow_at: AtomicU64,
    window_ms: u64,
}

/// What the table says about the probers of a drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Probers seen within the window that were told `confirm` times or more.
    pub told: u32,
    /// Probers seen within the window that were not (yet).
    pub pending: u32,
    /// A prober could not be recorded within the window (the table was full).
    pub overflowed: bool,
}

fn tag(kind: ProberKind, cell: usize) -> u32 {
    (cell as u32) << 8 | kind as u32
}

fn halves(addr: IpAddr) -> [u64; 2] {
    let bits = match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            // ::ffff:a.b.c.d and a.b.c.d are one prober (a dual-stack socket's view).
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    };
    [(bits >> 64) as u64, bits as u64]
}

fn address(halves: [u64; 2]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(u128::from(halves[0]) << 64 | u128::from(halves[1]));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl Probers {
    /// An empty table; probers older than `window_ms` no longer count and their slots are
    /// reused.
    pub(crate) fn new(window_ms: u32) -> Probers {
        Probers {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            hasher: std::hash::RandomState::new(),
            overflow_at: AtomicU64::new(0),
            window_ms: u64::from(window_ms),
        }
    }

    fn recent(&self, last_seen: u64, now: u64) -> bool {
        last_seen != 0 && now.saturating_sub(last_seen) <= self.window_ms
    }

    /// Records an answer given to a prober (monitor thread only: the table's one writer).
    /// Returns the non-serving answers it has had in a row, this one included. No allocation,
    /// no system call; at most one pass over the table.
    pub(crate) fn record(
        &self,
        addr: IpAddr,
        kind: ProberKind,
        cell: usize,
        serving: bool,
        now: u64,
    ) -> u32 {
        // 0 is "never seen" in `last_seen`.
        let now = now.max(1);
        let key = halves(addr);
        let tag = tag(kind, cell);
        let start = self.hasher.hash_one((key, tag)) as usize % SLOTS;
        let mut free = None;
        for i in 0..SLOTS {
            let index = (start + i) % SLOTS;
            let slot = &self.slots[index];
            let slot_tag = slot.tag.load(Ordering::Relaxed);
            if slot_tag == 0 {
                // Never used: the prober is nowhere further along (slots are never emptied).
                free.get_or_insert(index);
                break;
            }
            if slot_tag == tag
                && slot.addr[0].load(Ordering::Relaxed) == key[0]
                && slot.addr[1].load(Ordering::Relaxed) == key[1]
            {
                let told = if serving {
                    0
                } else {
                    slot.told.load(Ordering::Relaxed).saturating_add(1)
                };
                self.write(slot, None, now, told);
                return told;
            }
            if free.is_none() && !self.recent(slot.last_seen.load(Ordering::Relaxed), now) {
                free = Some(index);
            }
        }
        let told = u32::from(!serving);
        match free {
            Some(index) => self.write(&self.slots[index], Some((tag, key)), now, told),
            None => self.overflow_at.store(now, Ordering::Release),
        }
        told
    }

    fn write(&self, slot: &Slot, key: Option<(u32, [u64; 2])>, now: u64, told: u32) {
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        if let Some((tag, addr)) = key {
            slot.tag.store(tag, Ordering::Relaxed);
            slot.addr[0].store(addr[0], Ordering::Relaxed);
            slot.addr[1].store(addr[1], Ordering::Relaxed);
        }
        slot.last_seen.store(now, Ordering::Relaxed);
        slot.told.store(told, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A consistent reading of a slot, `None` if never used; a slot that keeps changing
    /// under the reader is reported as changing (`Err`), never waited for.
    fn read(slot: &Slot) -> Result<Option<Prober>, ()> {
        for _ in 0..64 {
            let before = slot.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let tag = slot.tag.load(Ordering::Relaxed);
            let addr = [
                slot.addr[0].load(Ordering::Relaxed),
                slot.addr[1].load(Ordering::Relaxed),
            ];
            let last_seen = slot.last_seen.load(Ordering::Relaxed);
            let told = slot.told.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if tag == 0 {
                return Ok(None);
            }
            let kind = ProberKind::ALL
                .into_iter()
                .find(|k| *k as u32 == tag & 0xFF)
                .unwrap_or(ProberKind::UdpV1);
            return Ok(Some(Prober {
                addr: address(addr),
                kind,
                cell: (tag >> 8) as usize,
                last_seen,
                told,
            }));
        }
        Err(())
    }

    /// The probers seen within the window at `now` that asked about one of `cells` (`None`:
    /// every cell), each with its reading.
    pub(crate) fn each_recent(
        &self,
        cells: Option<usize>,
        now: u64,
        mut f: impl FnMut(Result<Prober, ()>),
    ) {
        for slot in self.slots.iter() {
            match Self::read(slot) {
                Ok(Some(p)) if self.recent(p.last_seen, now) => {
                    if cells.is_none_or(|c| c == p.cell) {
                        f(Ok(p));
                    }
                }
                Ok(_) => {}
                // Being rewritten right now: a prober was just answered; count it as not told.
                Err(()) => f(Err(())),
            }
        }
    }

    /// Counts the probers of `cell` (`None`: every cell) seen within the window, told at least
    /// `confirm` times or not.
    pub(crate) fn tally(&self, cell: Option<usize>, confirm: u32, now: u64) -> Tally {
        let mut tally = Tally::default();
        self.each_recent(cell, now, |p| match p {
            Ok(p) if p.told >= confirm => tally.told += 1,
            _ => tally.pending += 1,
        });
        tally.overflowed = self.recent(self.overflow_at.load(Ordering::Acquire), now);
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn counts_non_serving_answers_in_a_row_per_prober() {
        let p = Probers::new(10_000);
        assert_eq!(p.record(v4(1), ProberKind::Text, 0, true, 1000), 0);
        assert_eq!(p.record(v4(1), ProberKind::Text, 0, false, 2000), 1);
        assert_eq!(p.record(v4(1), ProberKind::Text, 0, false, 3000), 2);
        // Another kind from the same address is another prober.
        assert_eq!(p.record(v4(1), ProberKind::AgentCheck, 0, false, 3000), 1);
        // Another service is another prober.
        assert_eq!(p.record(v4(1), ProberKind::Text, 1, false, 3000), 1);
        let t = p.tally(Some(0), 2, 3000);
        assert_eq!((t.told, t.pending, t.overflowed), (1, 1, false));
        assert_eq!(p.tally(None, 2, 3000).pending, 2);
        assert_eq!(p.tally(Some(1), 1, 3000).told, 1);
        // A serving answer starts the count again.
        assert_eq!(p.record(v4(1), ProberKind::Text, 0, true, 4000), 0);
        assert_eq!(p.tally(Some(0), 2, 4000).told, 0);
        // Out of the window, a prober no longer counts.
        assert_eq!(p.tally(Some(0), 2, 4000 + 10_001), Tally::default());
    }

    #[test]
    fn ipv4_and_its_mapped_form_are_one_prober() {
        let p = Probers::new(10_000);
        p.record(v4(7), ProberKind::UdpV1, 0, false, 100);
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(p.record(mapped, ProberKind::UdpV1, 0, false, 200), 2);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(p.record(v6, ProberKind::UdpV1, 0, false, 200), 1);
        let mut seen = Vec::new();
        p.each_recent(None, 300, |r| seen.push(r.unwrap().addr));
        seen.sort();
        assert_eq!(seen, vec![v4(7), v6]);
    }

    #[test]
    fn a_full_table_overflows_and_reuses_expired_slots() {
        let p = Probers::new(1000);
        for i in 0..SLOTS as u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            p.record(addr, ProberKind::Text, 0, false, 100);
        }
        let t = p.tally(None, 1, 100);
        assert_eq!((t.told, t.overflowed), (SLOTS as u32, false));
        // One more within the window: not recorded, and the drain cannot complete.
        p.record(v4(250), ProberKind::Http, 0, false, 200);
        assert!(p.tally(None, 1, 200).overflowed);
        assert!(p.tally(None, 1, 1200).overflowed);
        assert!(!p.tally(None, 1, 1201).overflowed);
        // Once the others expired, their slots take new probers.
        assert_eq!(p.record(v4(251), ProberKind::Http, 0, false, 1500), 1);
        assert_eq!(p.record(v4(251), ProberKind::Http, 0, false, 1600), 2);
        let t = p.tally(None, 2, 1600);
        assert_eq!((t.told, t.pending, t.overflowed), (1, 0, false));
    }

    /// A reader on another thread never sees a prober half-written (an address with another
    /// prober's count) while the writer reuses slots for new probers.
    #[test]
    fn readers_see_whole_slots() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let p = Arc::new(Probers::new(5));
        let clock = Arc::new(AtomicU64::new(10));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (p, stop, clock) = (p.clone(), stop.clone(), clock.clone());
            std::thread::spawn(move || {
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let now = clock.fetch_add(10, Ordering::Relaxed) + 10;
                    for i in 1..=200u32 {
                        // Address N is told N % 1000 % 7 times in a row at most.
                        let addr = IpAddr::V4(Ipv4Addr::from(round % 1000 * 1000 + i));
                        p.record(addr, ProberKind::Text, 0, true, now);
                        for _ in 0..i % 7 {
                            p.record(addr, ProberKind::Text, 0, false, now);
                        }
                    }
                    round += 1;
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut checked = 0u64;
        while std::time::Instant::now() < deadline {
            p.each_recent(None, clock.load(Ordering::Relaxed), |r| {
                if let Ok(prober) = r {
                    let IpAddr::V4(v4) = prober.addr else {
                        panic!("{prober:?}")
                    };
                    assert!(prober.told <= u32::from(v4) % 1000 % 7, "{prober:?}");
                    checked += 1;
                }
            });
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(checked > 0);
    }
}
