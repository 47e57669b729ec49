//! The weight directors see, shaped after the host's: slow start after a return to service,
//! and (optionally) the spare capacity the host reports.
//!
//! Both are computed lazily, when a status is read (a probe being answered, or
//! `lbagent_get_status` on a host thread): no timer of their own. Only while someone
//! subscribed to pushes does the monitor thread read again on its own, as often as
//! [`ShapeCell::next_look`] says, so that each step is pushed. What they remember lives in
//! one lock-free cell per target in shared memory ([`ShapeCell`]), updated by compare-and-swap
//! by whichever thread reads, so the monitor thread and host threads (and forked workers) see
//! the same ramp.
//!
//! - **Slow start** (`slow_start_ms`, `slow_start_min_pct`): when a target is first seen
//!   serving after not serving (and at start), its weight ramps linearly from the minimum to
//!   the host's weight over the window. Leaving service ends the ramp; the next return starts
//!   a new one. The host's weight changes apply at once, scaled by the ramp.
//! - **Weight from load** (`weight_from_load`): the weight follows the spare capacity
//!   (`1 - in_use / capacity`), smoothed with a time constant, moved only when it is further
//!   than a dead band from what directors were told, at a bounded rate, and never above the
//!   host's own weight. It never takes a server out: a full server keeps 1 %.
//!
//! The pure parts ([`ramp_permille`], [`LoadFilter`]) are public so that a closed-loop
//! simulation can drive them with its own clock (`tests/weight_from_load.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::shm::Zeroable;

/// Reads closer together than this do not move the load filter (they return its last output):
/// a rate limit needs steps large enough to show, and a busy agent reads thousands of times a
/// second.
pub const LOAD_FILTER_MIN_STEP_MS: u64 = 20;

/// How often listeners look at a slow start that ramps: each look that finds a new weight
/// pushes it to subscribers (at most 50 a second each, coalesced beyond that).
pub const RAMP_LOOK_MS: u64 = 100;

/// How often listeners look while weight from load is on (it moves at most
/// `weight_load_rate_pct` a second, so a few looks a second show each step).
pub const LOAD_LOOK_MS: u64 = 250;

/// How the weight is shaped (from the configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapingConfig {
    /// Slow start window in milliseconds; 0 turns slow start off.
    pub slow_start_ms: u32,
    /// Where the ramp starts, in percent of the host's weight.
    pub slow_start_min_pct: u8,
    /// Weight from load, when on.
    pub load: Option<LoadConfig>,
}

impl ShapingConfig {
    /// No shaping: directors see the host's weight.
    pub const OFF: ShapingConfig = ShapingConfig {
        slow_start_ms: 0,
        slow_start_min_pct: 10,
        load: None,
    };

    /// True when some shaping is on.
    pub fn is_on(&self) -> bool {
        self.slow_start_ms > 0 || self.load.is_some()
    }
}

/// How the weight follows the load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadConfig {
    /// Time constant of the exponential smoothing of the spare capacity, in milliseconds.
    pub smoothing_ms: u32,
    /// What directors are told moves only when the smoothed value is further than this from
    /// it, in percent.
    pub dead_band_pct: u8,
    /// At most this many percent per second.
    pub max_rate_pct: u32,
}

/// The ramp factor in thousandths, `elapsed_ms` after the return to service: from
/// `min_pct` to 100 % in a straight line over `window_ms`, 1000 after it (and when off).
pub fn ramp_permille(window_ms: u32, min_pct: u8, elapsed_ms: u64) -> u32 {
    if window_ms == 0 || elapsed_ms >= u64::from(window_ms) {
        return 1000;
    }
    let min = u64::from(min_pct.min(100)) * 10;
    (min + (1000 - min) * elapsed_ms / u64::from(window_ms)) as u32
}

/// The spare capacity, 0.0..=1.0; 1.0 while the capacity is unknown (0).
pub fn spare(in_use: u32, capacity: u32) -> f64 {
    if capacity == 0 {
        return 1.0;
    }
    1.0 - f64::from(in_use.min(capacity)) / f64::from(capacity)
}

/// The weight directors see: the host's `weight` scaled by the ramp and the load factor, at
/// least 1 while the host's weight is above 0 (shaping never takes a server out).
pub fn shaped_weight(weight: u8, ramp_permille: u32, load_factor: f64) -> u8 {
    if weight == 0 {
        return 0;
    }
    let factor = f64::from(ramp_permille.min(1000)) / 1000.0 * load_factor.clamp(0.0, 1.0);
    (f64::from(weight) * factor)
        .round()
        .clamp(1.0, f64::from(weight)) as u8
}

/// The load filter: smoothed spare capacity, and the factor directors are told.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadFilter {
    /// The spare capacity, smoothed (0.0..=1.0).
    pub smoothed: f64,
    /// The factor applied to the host's weight (0.0..=1.0).
    pub output: f64,
    /// True while the output moves toward the smoothed value (it left the dead band).
    pub moving: bool,
    /// Clock time of the last step.
    pub at: u64,
}

impl LoadFilter {
    /// The filter's first reading: directors are told the spare capacity as it is.
    pub fn start(spare: f64, now: u64) -> LoadFilter {
        LoadFilter {
            smoothed: spare,
            output: spare,
            moving: false,
            at: now,
        }
    }

    /// The filter after reading `spare` at `now`.
    pub fn step(self, config: &LoadConfig, spare: f64, now: u64) -> LoadFilter {
        let dt = now.saturating_sub(self.at);
        if dt == 0 {
            return self;
        }
        let alpha = if config.smoothing_ms == 0 {
            1.0
        } else {
            1.0 - (-(dt as f64) / f64::from(config.smoothing_ms)).exp()
        };
        let smoothed = self.smoothed + alpha * (spare.clamp(0.0, 1.0) - self.smoothed);
        let diff = smoothed - self.output;
        let band = f64::from(config.dead_band_pct) / 100.0;
        let mut moving = self.moving || diff.abs() > band;
        let mut output = self.output;
        if moving {
            let step = f64::from(config.max_rate_pct) / 100.0 * dt as f64 / 1000.0;
            if diff.abs() <= step {
                // Arrived: stay here until the smoothed value leaves the band again.
                output = smoothed;
                moving = false;
            } else {
                output += step.copysign(diff);
            }
        }
        LoadFilter {
            smoothed,
            output: output.clamp(0.0, 1.0),
            moving,
            at: now,
        }
    }

    /// Packs into one word: the clock's low 32 bits, then 16 bits each for the smoothed
    /// value and the output (15 bits, with the `moving` flag on top). Never 0.
    fn pack(self) -> u64 {
        let q = |x: f64, max: f64| (x.clamp(0.0, 1.0) * max).round() as u64;
        let at = (self.at as u32 | 1) as u64;
        at << 32
            | q(self.smoothed, 65535.0) << 16
            | u64::from(self.moving) << 15
            | q(self.output, 32767.0)
    }

    fn unpack(bits: u64, now: u64) -> LoadFilter {
        // The clock's low bits: the last step was at most 2^31 ms (24 days) ago, or long
        // enough that the filter has settled anyway.
        let ago = (now as u32).wrapping_sub((bits >> 32) as u32);
        let ago = if ago > u32::MAX / 2 { 0 } else { ago };
        LoadFilter {
            smoothed: ((bits >> 16) & 0xFFFF) as f64 / 65535.0,
            output: (bits & 0x7FFF) as f64 / 32767.0,
            moving: bits & 0x8000 != 0,
            at: now.saturating_sub(u64::from(ago)),
        }
    }
}

/// What shaping remembers about one target (the whole server or a service), in shared memory.
#[derive(Zeroable)]
#[repr(C)]
pub(crate) struct ShapeCell {
    /// Bit 63: serving when last seen; bit 62: seen at all; the rest: clock time when that
    /// was first seen.
    transition: AtomicU64,
    /// The load filter, packed (0: not started).
    filter: AtomicU64,
    /// The last shaped weight seen, plus one (0: none yet), and how often it changed.
    weight_seen: AtomicU64,
    weight_flips: AtomicU64,
}

const SERVING: u64 = 1 << 63;
const SEEN: u64 = 1 << 62;
const TIME: u64 = SEEN - 1;

impl ShapeCell {
    /// When a listener (a subscription, the logger) should next read this target for its
    /// shaped weight to be seen moving: the weight moves with time alone (no host call rings
    /// the bell) while a slow start ramps, and while weight from load is on (the filter steps
    /// when read; `lbagent_set_load` stays a plain store). `None` while nothing can move.
    pub(crate) fn next_look(&self, config: &ShapingConfig, now: u64) -> Option<u64> {
        let bits = self.transition.load(Ordering::Acquire);
        if bits & SEEN == 0 || bits & SERVING == 0 {
            return None;
        }
        let ramp_ends = (bits & TIME) + u64::from(config.slow_start_ms);
        if config.slow_start_ms > 0 && now < ramp_ends {
            return Some((now + RAMP_LOOK_MS).min(ramp_ends));
        }
        config.load.map(|_| now + LOAD_LOOK_MS)
    }

    /// Records whether the target is serving at `now`; returns the clock time from which it
    /// has been seen so (the first reading that saw it, for a return to service; the ramp
    /// starts there).
    pub(crate) fn observe(&self, serving: bool, now: u64) -> u64 {
        let mut bits = self.transition.load(Ordering::Acquire);
        loop {
            if bits & SEEN != 0 && (bits & SERVING != 0) == serving {
                return bits & TIME;
            }
            let next = if serving { SERVING } else { 0 } | SEEN | (now & TIME);
            match self.transition.compare_exchange_weak(
                bits,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return now & TIME,
                Err(actual) => bits = actual,
            }
        }
    }

    /// Steps the load filter with the spare capacity read now; returns its output.
    pub(crate) fn load_factor(&self, config: &LoadConfig, spare: f64, now: u64) -> f64 {
        let mut bits = self.filter.load(Ordering::Acquire);
        for _ in 0..16 {
            let next = if bits == 0 {
                LoadFilter::start(spare, now)
            } else {
                let current = LoadFilter::unpack(bits, now);
                if now.saturating_sub(current.at) < LOAD_FILTER_MIN_STEP_MS {
                    return current.output;
                }
                current.step(config, spare, now)
            };
            match self.filter.compare_exchange(
                bits,
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return LoadFilter::unpack(next.pack(), now).output,
                Err(actual) => bits = actual,
            }
        }
        // Other readers keep stepping it: theirs is as good.
        LoadFilter::unpack(bits, now).output
    }

    /// Counts the changes of the shaped weight (they change what is answered, so the
    /// generation must move); returns the count so far.
    pub(crate) fn weight_changes(&self, weight: u8) -> u64 {
        let key = u64::from(weight) + 1;
        loop {
            let seen = self.weight_seen.load(Ordering::Acquire);
            let flips = self.weight_flips.load(Ordering::Acquire);
            if seen == key {
                return flips;
            }
            if self
                .weight_seen
                .compare_exchange(seen, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The first weight seen is no change.
                if seen == 0 {
                    return flips;
                }
                return self.weight_flips.fetch_add(1, Ordering::AcqRel) + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_is_linear_from_the_minimum() {
        assert_eq!(ramp_permille(0, 10, 0), 1000);
        assert_eq!(ramp_permille(10_000, 10, 0), 100);
        assert_eq!(ramp_permille(10_000, 10, 5000), 550);
        assert_eq!(ramp_permille(10_000, 10, 9999), 999);
        assert_eq!(ramp_permille(10_000, 10, 10_000), 1000);
        assert_eq!(ramp_permille(10_000, 0, 0), 0);
        assert_eq!(ramp_permille(10_000, 100, 0), 1000);
    }

    #[test]
    fn shaped_weight_never_takes_a_server_out() {
        assert_eq!(shaped_weight(100, 1000, 1.0), 100);
        assert_eq!(shaped_weight(100, 100, 1.0), 10);
        assert_eq!(shaped_weight(50, 550, 1.0), 28);
        assert_eq!(shaped_weight(100, 0, 1.0), 1);
        assert_eq!(shaped_weight(100, 1000, 0.0), 1);
        assert_eq!(shaped_weight(0, 1000, 1.0), 0);
        assert_eq!(shaped_weight(80, 500, 0.5), 20);
    }

    #[test]
    fn spare_capacity() {
        assert_eq!(spare(0, 0), 1.0);
        assert_eq!(spare(5, 0), 1.0);
        assert_eq!(spare(25, 100), 0.75);
        assert_eq!(spare(200, 100), 0.0);
    }

    const LOAD: LoadConfig = LoadConfig {
        smoothing_ms: 1000,
        dead_band_pct: 5,
        max_rate_pct: 10,
    };

    #[test]
    fn filter_smooths_ignores_small_changes_and_moves_at_a_bounded_rate() {
        let f = LoadFilter::start(1.0, 0);
        // A small change stays in the dead band: the output does not move.
        let g = f.step(&LOAD, 0.97, 5000);
        assert_eq!(g.output, 1.0);
        assert!(!g.moving);
        // A large one: the output moves 10 % per second at most.
        let mut h = g.step(&LOAD, 0.2, 5100);
        assert!(h.moving);
        assert!((h.output - 0.99).abs() < 1e-9, "{h:?}");
        for t in (5200..=20_000).step_by(100) {
            let next = h.step(&LOAD, 0.2, t);
            assert!((h.output - next.output).abs() <= 0.01 + 1e-9);
            h = next;
        }
        // It arrives, and stops.
        assert!((h.output - 0.2).abs() < 1e-3, "{h:?}");
        assert!(!h.moving);
    }

    #[test]
    fn filter_packs_into_one_word() {
        let f = LoadFilter {
            smoothed: 0.5,
            output: 0.25,
            moving: true,
            at: 7_000_000_123,
        };
        let back = LoadFilter::unpack(f.pack(), 7_000_000_200);
        assert!((back.smoothed - 0.5).abs() < 1e-4);
        assert!((back.output - 0.25).abs() < 1e-4);
        assert!(back.moving);
        assert_eq!(back.at, 7_000_000_123);
        assert_ne!(LoadFilter::start(0.0, 0).pack(), 0);
    }

    #[test]
    fn cell_observes_transitions_and_counts_weight_changes() {
        let c = ShapeCell::zeroed();
        // The first reading, serving or not, is a change.
        assert_eq!(ShapeCell::zeroed().observe(false, 50), 50);
        assert_eq!(c.observe(true, 100), 100);
        assert_eq!(c.observe(true, 200), 100);
        assert_eq!(c.observe(false, 300), 300);
        assert_eq!(c.observe(false, 400), 300);
        assert_eq!(c.observe(true, 500), 500);
        assert_eq!(c.weight_changes(10), 0);
        assert_eq!(c.weight_changes(10), 0);
        assert_eq!(c.weight_changes(20), 1);
        assert_eq!(c.weight_changes(20), 1);
        assert_eq!(c.weight_changes(10), 2);
        // The filter steps at most every LOAD_FILTER_MIN_STEP_MS.
        assert_eq!(c.load_factor(&LOAD, 1.0, 1000), 1.0);
        assert_eq!(c.load_factor(&LOAD, 0.0, 1010), 1.0);
        assert!(c.load_factor(&LOAD, 0.0, 2000) < 1.0);
    }
}
