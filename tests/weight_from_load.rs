//! Weight from load, in a closed loop: does it settle, and does it spread the load?
//!
//! A simulation with its own clock (deterministic: a fixed random seed), driving the agent's
//! own load filter (`lbagent::status::shaping`) exactly as the agent does: stepped when a
//! director reads the status. Three servers of different capacities (10, 20 and 40 workers,
//! 100 ms per request on average, requests beyond the workers queue) report `in_use` (working
//! and queued) out of their capacity; a director probes each every second and sends the
//! requests that arrive (Poisson, 70 % of the total capacity) by weighted round-robin or
//! weighted least-connection (IPVS `wrr`, `wlc`). Half-way through, the largest server loses
//! half its workers and says so (capacity 20).
//!
//! What must hold, for both schedulers: after the start and after the change, every weight
//! settles (the time is reported), and then stays within a small swing (no oscillation); the
//! load follows the capacities (utilisations close to each other when the director's weights
//! are in proportion to the nominal capacities, closer than with static weights otherwise).
//! The same loop without smoothing, dead band and rate limit swings far more: the test can
//! tell. `cargo test --test weight_from_load -- --nocapture` prints the figures
//! (docs/LIFECYCLE.md quotes them).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use lbagent::status::shaping::{LoadConfig, LoadFilter, shaped_weight, spare};

const STEP_MS: u64 = 1;
const DURATION_MS: u64 = 400_000;
/// When the largest server loses half its workers.
const CHANGE_AT_MS: u64 = 200_000;
const PROBE_EVERY_MS: u64 = 1000;
const MEAN_SERVICE_MS: f64 = 100.0;
const CAPACITIES: [u32; 3] = [10, 20, 40];
/// Requests per second: half of what the three can do (70 workers / 0.1 s), 70 % of what is
/// left after the change.
const RATE: f64 = 0.5 * 700.0;
/// A window is settled once each weight stays within this many percent of its final mean.
const SETTLED_WITHIN: f64 = 10.0;

/// xorshift64*: a small deterministic generator (the test needs no crate for it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next()).ln()
    }

    fn poisson(&mut self, mean: f64) -> u32 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, self.next());
        while p > limit {
            k += 1;
            p *= self.next();
        }
        k
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scheduler {
    /// Smooth weighted round-robin (nginx's, and IPVS wrr's proportions).
    RoundRobin,
    /// Weighted least-connection (IPVS wlc): fewest connections per unit of weight.
    LeastConnection,
}

#[derive(Clone, Copy, Debug)]
enum Control {
    /// weight_from_load with the given configuration.
    Filtered(LoadConfig),
    /// The spare capacity as it is at each probe: no smoothing, no dead band, no rate limit.
    Raw,
    /// No feedback: the configured weight.
    Static,
}

struct Server {
    workers: u32,
    /// Reported capacity.
    capacity: u32,
    /// The director's configured weight for it.
    configured: u32,
    busy: BinaryHeap<Reverse<u64>>,
    queue: VecDeque<u64>,
    filter: Option<LoadFilter>,
    /// The weight the director uses now (percent of `configured`).
    weight_pct: u8,
    /// Round-robin credit.
    credit: f64,
    /// Work done (busy worker-milliseconds) in the current measuring window.
    worked_ms: u64,
}

impl Server {
    fn in_use(&self) -> u32 {
        (self.busy.len() + self.queue.len()) as u32
    }

    fn effective(&self) -> f64 {
        f64::from(self.configured) * f64::from(self.weight_pct) / 100.0
    }
}

struct Outcome {
    /// Each server's weight at each probe (percent), per second.
    weights: Vec<[u8; 3]>,
    /// Utilisation (busy workers / workers) per server over the settled part of each half.
    utilisation: [[f64; 3]; 2],
    /// Requests that waited in a queue per server over each half, per 1000 requests.
    queued_per_mille: [f64; 2],
}

fn simulate(scheduler: Scheduler, control: Control, configured: [u32; 3]) -> Outcome {
    let mut rng = Rng(0x6c62_6167_656e_7421);
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server {
            workers: CAPACITIES[i],
            capacity: CAPACITIES[i],
            configured: configured[i],
            busy: BinaryHeap::new(),
            queue: VecDeque::new(),
            filter: None,
            weight_pct: 100,
            credit: 0.0,
            worked_ms: 0,
        })
        .collect();
    let mut weights = Vec::new();
    let mut utilisation = [[0.0; 3]; 2];
    let mut queued = [0u64; 2];
    let mut arrived = [0u64; 2];
    let measure = |t: u64| -> Option<usize> {
        // The second half of each half: after it settled.
        if (CHANGE_AT_MS / 2..CHANGE_AT_MS).contains(&t) {
            Some(0)
        } else if (CHANGE_AT_MS + CHANGE_AT_MS / 2..DURATION_MS).contains(&t) {
            Some(1)
        } else {
            None
        }
    };
    let mut now = 0;
    while now < DURATION_MS {
        if now == CHANGE_AT_MS {
            servers[2].workers = 20;
            servers[2].capacity = 20;
        }
        // The director probes each agent once a second (staggered), reading its weight.
        for (i, s) in servers.iter_mut().enumerate() {
            if (now + i as u64 * PROBE_EVERY_MS / 3) % PROBE_EVERY_MS == 0 {
                let free = spare(s.in_use(), s.capacity);
                let factor = match control {
                    Control::Filtered(config) => {
                        let next = match s.filter {
                            None => LoadFilter::start(free, now),
                            Some(f) => f.step(&config, free, now),
                        };
                        s.filter = Some(next);
                        next.output
                    }
                    Control::Raw => free,
                    Control::Static => 1.0,
                };
                s.weight_pct = shaped_weight(100, 1000, factor);
            }
        }
        if now % 1000 == 0 {
            weights.push([
                servers[0].weight_pct,
                servers[1].weight_pct,
                servers[2].weight_pct,
            ]);
        }
        // Arrivals, each sent to one server.
        for _ in 0..rng.poisson(RATE * STEP_MS as f64 / 1000.0) {
            let pick = match scheduler {
                Scheduler::RoundRobin => {
                    let total: f64 = servers.iter().map(Server::effective).sum();
                    for s in servers.iter_mut() {
                        s.credit += s.effective();
                    }
                    let best = (0..3)
                        .max_by(|a, b| servers[*a].credit.total_cmp(&servers[*b].credit))
                        .unwrap();
                    servers[best].credit -= total;
                    best
                }
                Scheduler::LeastConnection => (0..3)
                    .min_by(|a, b| {
                        let load = |i: usize| {
                            (f64::from(servers[i].in_use()) + 1.0) / servers[i].effective()
                        };
                        load(*a).total_cmp(&load(*b))
                    })
                    .unwrap(),
            };
            let s = &mut servers[pick];
            s.queue.push_back(now);
            if let Some(half) = measure(now) {
                arrived[half] += 1;
                if s.busy.len() as u32 >= s.workers {
                    queued[half] += 1;
                }
            }
        }
        // Work: finished requests leave, queued ones start.
        for s in servers.iter_mut() {
            while s.busy.peek().is_some_and(|Reverse(t)| *t <= now) {
                s.busy.pop();
            }
            while (s.busy.len() as u32) < s.workers {
                let Some(_) = s.queue.pop_front() else { break };
                let done = now + rng.exponential(MEAN_SERVICE_MS).round() as u64 + 1;
                s.busy.push(Reverse(done));
            }
            if measure(now).is_some() {
                s.worked_ms += s.busy.len() as u64 * STEP_MS;
            }
        }
        now += STEP_MS;
        for (half, end) in [CHANGE_AT_MS, DURATION_MS].into_iter().enumerate() {
            if now == end {
                // Both windows are half of a half (the halves are equally long).
                let span = (CHANGE_AT_MS / 2) as f64;
                for (i, s) in servers.iter_mut().enumerate() {
                    utilisation[half][i] = s.worked_ms as f64 / (span * f64::from(s.workers));
                    s.worked_ms = 0;
                }
            }
        }
    }
    Outcome {
        weights,
        utilisation,
        queued_per_mille: [
            queued[0] as f64 * 1000.0 / arrived[0].max(1) as f64,
            queued[1] as f64 * 1000.0 / arrived[1].max(1) as f64,
        ],
    }
}

/// For the weights of one half (seconds `from..to`): the settling time (seconds after `from`
/// from which every weight stays within SETTLED_WITHIN of its mean over the last third of the
/// half) and the remaining swing (the largest max - min of a weight over that last third).
fn settling(weights: &[[u8; 3]], from: usize, to: usize) -> (usize, u8) {
    let tail = &weights[to - (to - from) / 3..to];
    let mut settled_at = from;
    let mut swing = 0;
    for i in 0..3 {
        let mean = tail.iter().map(|w| f64::from(w[i])).sum::<f64>() / tail.len() as f64;
        let last_out = (from..to)
            .rev()
            .find(|t| (f64::from(weights[*t][i]) - mean).abs() > SETTLED_WITHIN)
            .map_or(from, |t| t + 1);
        settled_at = settled_at.max(last_out);
        let (lo, hi) = tail
            .iter()
            .fold((u8::MAX, 0), |(lo, hi), w| (lo.min(w[i]), hi.max(w[i])));
        swing = swing.max(hi - lo);
    }
    (settled_at - from, swing)
}

/// The spread of utilisations: largest minus smallest.
fn spread(u: &[f64; 3]) -> f64 {
    u.iter().cloned().fold(f64::MIN, f64::max) - u.iter().cloned().fold(f64::MAX, f64::min)
}

/// The agent's defaults (`weight_from_load=on` and nothing else).
fn defaults() -> LoadConfig {
    lbagent::Config::parse("weight_from_load=on")
        .unwrap()
        .shaping()
        .load
        .unwrap()
}

#[test]
fn weights_settle_and_the_load_follows_capacity() {
    let half = (CHANGE_AT_MS / 1000) as usize;
    let end = (DURATION_MS / 1000) as usize;
    let proportional = [25, 50, 100];
    let equal = [100, 100, 100];
    println!(
        "| scheduler | director weights | control | settling s (start, change) | swing after | utilisation before | after the change | queued per 1000 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for scheduler in [Scheduler::RoundRobin, Scheduler::LeastConnection] {
        for (weights_name, configured) in [("by capacity", proportional), ("equal", equal)] {
            let mut results = Vec::new();
            for (name, control) in [
                ("weight_from_load", Control::Filtered(defaults())),
                ("raw spare capacity", Control::Raw),
                ("static", Control::Static),
            ] {
                let out = simulate(scheduler, control, configured);
                let (t1, s1) = settling(&out.weights, 0, half);
                let (t2, s2) = settling(&out.weights, half, end);
                let fmt = |u: &[f64; 3]| {
                    u.iter()
                        .map(|x| format!("{:.2}", x))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "| {scheduler:?} | {weights_name} | {name} | {t1}, {t2} | {} | {} | {} | {:.0}, {:.0} |",
                    s1.max(s2),
                    fmt(&out.utilisation[0]),
                    fmt(&out.utilisation[1]),
                    out.queued_per_mille[0],
                    out.queued_per_mille[1]
                );
                results.push((name, t1, t2, s1.max(s2), out));
            }
            let (_, t1, t2, swing, ours) = &results[0];
            let (_, _, _, raw_swing, _) = &results[1];
            let (_, _, _, _, fixed) = &results[2];
            let context = format!("{scheduler:?}, weights {weights_name}");
            // Settles, after the start and after the change, and stays put.
            assert!(
                *t1 <= 60 && *t2 <= 60,
                "{context}: settled after {t1} s and {t2} s"
            );
            assert!(
                *swing <= 2 * defaults().dead_band_pct,
                "{context}: swing {swing} after settling"
            );
            // The same loop without smoothing, dead band and rate limit swings more.
            assert!(
                raw_swing > swing,
                "{context}: raw {raw_swing}, ours {swing}"
            );
            // The load follows capacity: never worse spread than static weights, clearly
            // better once the largest server has lost half its workers (static weights leave
            // it overloaded), and fewer requests wait in a queue.
            for half in 0..2 {
                assert!(
                    spread(&ours.utilisation[half]) <= spread(&fixed.utilisation[half]) + 0.02,
                    "{context}: utilisation {:?} vs static {:?}",
                    ours.utilisation[half],
                    fixed.utilisation[half]
                );
            }
            assert!(
                spread(&ours.utilisation[1]) < 0.7 * spread(&fixed.utilisation[1]),
                "{context}: after the change, utilisation {:?} vs static {:?}",
                ours.utilisation[1],
                fixed.utilisation[1]
            );
            assert!(
                ours.queued_per_mille[1] < fixed.queued_per_mille[1],
                "{context}: queued {:?} vs static {:?}",
                ours.queued_per_mille,
                fixed.queued_per_mille
            );
            if configured == proportional {
                // Weights in proportion to capacity: the load is in proportion too.
                assert!(
                    spread(&ours.utilisation[0]) < 0.05,
                    "{context}: utilisation {:?}",
                    ours.utilisation[0]
                );
            }
        }
    }
}
