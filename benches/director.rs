//! `make bench-director`: what the fork-free poller costs, against two baselines measured in
//! the same run on the same simulated fleet (10,000 UDP sockets on loopback answering with
//! lbagent::proto::wire, in this process):
//!
//! - the poller: `lbagent-director` (release) polling 10,000 targets at a 1 s interval; its
//!   CPU time (user + system, from /proc) over a measured window, per check and per 1,000
//!   targets; every target must be up and no probe may time out;
//! - a minimal UDP exchange loop: one blocking socket, `send_to` then `recv_from`, the
//!   cheapest way to ask one question and hear one answer (CPU time of that thread);
//! - MISC_CHECK's way: fork + exec of `lbagent-probe --keepalived-dynamic` per check, as
//!   keepalived runs it (CPU time of the children).
//!
//! The poller runs twice: polling only (`--no-subscribe`), and with every target's subscription
//! granted (as agents with keys grant them): the second run shows what keeping 10,000
//! subscriptions costs (the leases renewed by every probe; the simulated agents push nothing).
//!
//! Results are printed as a Markdown table and written to target/bench/director.md. Bounded:
//! about a minute.

#[path = "../tests/common/responder.rs"]
#[allow(dead_code)]
mod responder;
mod support;

use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lbagent::proto::wire;
use responder::Responder;

const INTERVAL_MS: u64 = 1000;

/// How big a run is: the benchmark under `cargo bench`, a smoke run of the same code (a few
/// seconds, in the debug build) under `cargo test --all-targets`.
#[derive(Clone, Copy)]
struct Scale {
    targets: usize,
    warm_up: Duration,
    window: Duration,
    echo_exchanges: usize,
    forks: usize,
    /// The least share of the interval's checks that must be made (jitter makes a short
    /// window's count vary).
    min_rate: f64,
    /// Where the table goes, under target/bench/.
    report: &'static str,
}

const BENCH: Scale = Scale {
    targets: 10_000,
    warm_up: Duration::from_secs(8),
    window: Duration::from_secs(20),
    echo_exchanges: 50_000,
    forks: 300,
    min_rate: 0.95,
    report: "director.md",
};

const SMOKE: Scale = Scale {
    targets: 200,
    warm_up: Duration::from_secs(3),
    window: Duration::from_secs(2),
    echo_exchanges: 1_000,
    forks: 10,
    min_rate: 0.8,
    report: "director-smoke.md",
};

fn out_dir() -> PathBuf {
    let dir = support::bench_dir().join("director");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// User + system CPU time of a process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of the file, 12 and 13 after "pid (comm) state".
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// CPU time of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The cheapest exchange: send a PROBE, block for the answer; CPU per exchange.
fn echo_baseline(fleet: &Responder, exchanges: usize) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut request = [0u8; wire::PROBE_MAX_LEN];
    let len = wire::encode_probe(7, b"", lbagent::client::DEFAULT_PROBE_LEN, &mut request);
    let mut buf = [0u8; 2048];
    let start = support::thread_cpu();
    for i in 0..exchanges {
        socket
            .send_to(&request[..len], fleet.addr(i % fleet.len()))
            .unwrap();
        socket.recv_from(&mut buf).expect("an answer");
    }
    (support::thread_cpu() - start) / exchanges as u32
}

/// keepalived's MISC_CHECK: fork + exec of the probe per check; CPU per check (the agent
/// has no rate limits: hundreds of probes a second from one address would exceed them).
/// Measured before the fleet's 10,000 sockets exist: a child copies its parent's descriptor
/// table and closes it at exec, which would inflate the cost.
fn fork_baseline(forks: usize) -> Duration {
    let probe = env!("CARGO_BIN_EXE_lbagent-probe");
    let agent = lbagent::Agent::start(
        "listen=127.0.0.1:0 initial_state=up rate_per_source=0 rate_global=0",
    )
    .unwrap();
    let target = agent.local_addrs()[0].to_string();
    let start_children = children_cpu();
    let start_self = support::thread_cpu();
    for _ in 0..forks {
        let status = Command::new(probe)
            .args(["--keepalived-dynamic", &target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(102), "the probe saw a serving agent");
    }
    (children_cpu() - start_children + (support::thread_cpu() - start_self)) / forks as u32
}

/// The track directory on tmpfs, as in production (/run/lbagent): elsewhere every write is
/// fsync'ed.
fn track_dir() -> PathBuf {
    let dir = PathBuf::from(format!(
        "/dev/shm/lbagent-bench-director-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn all_up(track: &Path, targets: usize) -> usize {
    (0..targets)
        .filter(|i| {
            std::fs::read(track.join(format!("t{i:05}")))
                .ok()
                .as_deref()
                == Some(b"0\n")
        })
        .count()
}

struct Poller {
    child: Child,
    log: PathBuf,
    track: PathBuf,
}

fn start_poller(dir: &Path, fleet: &Responder, targets_count: usize, extra: &[&str]) -> Poller {
    let targets = dir.join("targets.conf");
    let mut text = String::new();
    for i in 0..targets_count {
        text.push_str(&format!("t{i:05} {}\n", fleet.addr(i)));
    }
    std::fs::write(&targets, text).unwrap();
    let track = track_dir();
    let log = dir.join("director.log");
    let child = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .arg("--targets")
        .arg(&targets)
        .arg("--track-dir")
        .arg(&track)
        .args([
            "--interval",
            &INTERVAL_MS.to_string(),
            "--timeout",
            "500",
            "--stats-interval",
            "0",
        ])
        .args(extra)
        .env_remove("JOURNAL_STREAM")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Poller { child, log, track }
}

/// What one run of the poller measured.
struct Run {
    checks: u64,
    wall: Duration,
    cpu: Duration,
    rss: u64,
    up: usize,
    timed_out: u64,
    last: String,
}

/// Runs the poller over the fleet for `warm_up`, then measures it for `window`.
fn run_poller(
    dir: &Path,
    fleet: &Responder,
    targets: usize,
    warm_up: Duration,
    window: Duration,
    extra: &[&str],
) -> Run {
    let mut poller = start_poller(dir, fleet, targets, extra);
    let pid = poller.child.id();
    std::thread::sleep(warm_up);
    let cpu0 = process_cpu(pid);
    let answered0 = fleet.answered();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu = process_cpu(pid) - cpu0;
    let checks = fleet.answered() - answered0;
    let wall = t0.elapsed();
    let rss = support::rss_kib(pid);
    let up = all_up(&poller.track, targets);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    poller.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&poller.track);
    let log = std::fs::read_to_string(&poller.log).unwrap();
    let last = log.lines().last().unwrap_or("").to_string();
    let timed_out: u64 = last
        .split("timed out ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("the poller's last line has its counters");

    Run {
        checks,
        wall,
        cpu,
        rss,
        up,
        timed_out,
        last,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    // `cargo bench` passes --bench; `cargo test` runs a smoke run of the same code.
    let scale = if args.iter().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };
    let Scale {
        targets,
        warm_up,
        window,
        echo_exchanges,
        forks,
        min_rate,
        report: report_name,
    } = scale;
    let dir = out_dir();
    eprintln!("director bench: baseline 1, {forks} fork+exec of lbagent-probe");
    let fork = fork_baseline(forks);
    eprintln!("director bench: starting {targets} simulated agents");
    let fleet = Responder::start(targets);
    eprintln!("director bench: baseline 2, {echo_exchanges} blocking UDP exchanges");
    let echo = echo_baseline(&fleet, echo_exchanges);

    eprintln!(
        "director bench: lbagent-director, {targets} targets at {INTERVAL_MS} ms, {} s warm-up, {} s measured",
        warm_up.as_secs(),
        window.as_secs()
    );
    let polled = run_poller(&dir, &fleet, targets, warm_up, window, &["--no-subscribe"]);
    eprintln!("director bench: again, with every target's subscription granted");
    fleet.grant_subscriptions(true);
    let subscribed = run_poller(&dir, &fleet, targets, warm_up, window, &[]);
    let Run {
        checks,
        wall,
        cpu,
        rss,
        up,
        timed_out,
        last,
    } = polled;
    let rate = checks as f64 / wall.as_secs_f64();
    let core_pct = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    let per_check = cpu / checks.max(1) as u32;
    let per_1000_pct = core_pct / (targets as f64 / 1000.0);
    let fork_core_pct = fork.as_secs_f64() * rate * 100.0;
    let ratio_echo = per_check.as_secs_f64() / echo.as_secs_f64();
    let ratio_fork = fork.as_secs_f64() / per_check.as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;

    let mut report = String::new();
    report.push_str(&format!(
        "| measure (one run, {targets} targets, {INTERVAL_MS} ms interval) | value |\n|---|---|\n"
    ));
    let mut row = |k: &str, v: String| report.push_str(&format!("| {k} | {v} |\n"));
    row("checks per second sustained", format!("{rate:.0}"));
    row("probes timed out (whole run)", timed_out.to_string());
    row("targets up at the end", format!("{up} of {targets}"));
    row("poller CPU, share of one core", format!("{core_pct:.2} %"));
    row(
        "poller CPU per 1,000 targets",
        format!("{per_1000_pct:.3} % of a core"),
    );
    row("poller CPU per check", format!("{:.2} us", us(per_check)));
    row("poller resident memory", format!("{} MiB", rss / 1024));
    let sub_rate = subscribed.checks as f64 / subscribed.wall.as_secs_f64();
    let sub_core_pct = subscribed.cpu.as_secs_f64() / subscribed.wall.as_secs_f64() * 100.0;
    let subscriptions: u64 = subscribed
        .last
        .split("pushed changes from ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the poller's last line counts its subscriptions");
    row(
        "with every subscription granted: subscriptions held at the end",
        format!("{subscriptions} of {targets}"),
    );
    row(
        "with every subscription granted: poller CPU, share of one core",
        format!("{sub_core_pct:.2} % ({sub_rate:.0} checks/s)"),
    );
    row(
        "with every subscription granted: poller resident memory",
        format!("{} MiB", subscribed.rss / 1024),
    );
    row(
        "baseline: one blocking UDP exchange",
        format!("{:.2} us CPU", us(echo)),
    );
    row(
        "baseline: one fork+exec of lbagent-probe (MISC_CHECK)",
        format!("{:.0} us CPU", us(fork)),
    );
    row("poller check / UDP exchange", format!("{ratio_echo:.2}x"));
    row(
        "fork+exec check / poller check",
        format!("{ratio_fork:.0}x"),
    );
    row(
        "MISC_CHECK for the same checks per second",
        format!("{fork_core_pct:.0} % of a core"),
    );
    println!("{report}");
    let path = dir.parent().unwrap().join(report_name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(report.as_bytes())
        .unwrap();
    eprintln!("director bench: written to {}", path.display());
    // The figures docs/BENCHMARKS.md quotes (scripts/bench-report.sh).
    let values = [
        ("director_targets", targets.to_string()),
        ("director_rate", format!("{rate:.0}")),
        ("director_core", format!("{core_pct:.2} %")),
        ("director_per_1000", format!("{per_1000_pct:.3} %")),
        ("director_per_check", format!("{:.2} us", us(per_check))),
        ("director_echo", format!("{:.2} us", us(echo))),
        ("director_fork", format!("{:.0} us", us(fork))),
        ("director_ratio_echo", format!("{ratio_echo:.2}")),
        ("director_ratio_fork", format!("{ratio_fork:.0}")),
        ("director_fork_core", format!("{fork_core_pct:.0} %")),
        ("director_rss", format!("{} MiB", rss / 1024)),
        ("director_subscriptions", subscriptions.to_string()),
        ("director_sub_core", format!("{sub_core_pct:.2} %")),
        ("director_sub_rss", format!("{} MiB", subscribed.rss / 1024)),
    ];
    let values: String = values.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path.with_extension("values"), values).unwrap();

    // Sustained means: every check made, none lost, every target up, on less than one core.
    assert!(
        rate > min_rate * targets as f64 * 1000.0 / INTERVAL_MS as f64,
        "only {rate:.0} checks/s"
    );
    assert_eq!(timed_out, 0, "probes timed out: {last}");
    assert_eq!(up, targets, "not every target is up");
    assert!(core_pct < 100.0);
    assert_eq!(
        subscribed.timed_out, 0,
        "probes timed out: {}",
        subscribed.last
    );
    assert_eq!(
        subscribed.up, targets,
        "not every target is up (subscribed)"
    );
    assert!(
        subscriptions as f64 >= min_rate * targets as f64,
        "{subscriptions} subscriptions of {targets}"
    );
}
