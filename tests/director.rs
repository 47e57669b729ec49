//! lbagent-director, the fork-free poller, as a process: a thousand simulated agents on
//! loopback, the track files it writes (contents, atomic replacement seen by a concurrent
//! reader), rise/fall, SIGHUP reload, transition logging and bounded memory; then real agents
//! end to end, and its configuration errors.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::director::Director;
use common::responder::{Behaviour, Responder};
use common::*;
use lbagent::State;

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
}

fn all_files(track: &Path, names: impl Iterator<Item = String>, want: &str) -> bool {
    names.into_iter().all(|n| read(track.join(n)) == want)
}

fn name(i: usize) -> String {
    format!("rs{i:04}")
}

/// The targets file for simulated agents `0..count`, with services and keys on some lines.
fn targets_text(fleet: &Responder, count: usize) -> String {
    let mut text = String::from("# simulated fleet\n");
    for i in 0..count {
        let mut line = format!("{}  {}", name(i), fleet.addr(i));
        if i % 10 == 3 {
            line.push_str("  service=game");
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The seconds in "(12.3 s down)" of a transition line.
fn held_seconds(line: &str) -> f64 {
    let start = line
        .find(" check")
        .and_then(|i| line[i..].find('(').map(|j| i + j + 1));
    let start = start.unwrap_or_else(|| panic!("{line}"));
    line[start..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn a_thousand_targets_on_loopback() {
    const N: usize = 1000;
    let dir = scratch_dir("director-1000");
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let fleet = Responder::start(N + 2);
    let targets = dir.join("targets.conf");
    std::fs::write(&targets, targets_text(&fleet, N)).unwrap();
    // rs0000 starts up as its file says; rs0001 has an empty file (unknown: down).
    std::fs::write(track.join(name(0)), "0\n").unwrap();
    std::fs::write(track.join(name(1)), "").unwrap();

    let director = Director::start(
        &targets,
        &track,
        &[
            "--interval",
            "400",
            "--timeout",
            "200",
            "--rise",
            "2",
            "--fall",
            "2",
        ],
    );
    director.wait_log(&["started: 1000 targets", "1 up and 999 down"]);
    // Every file exists at once, and says failed until two answers came.
    assert!(eventually(Duration::from_secs(10), || {
        all_files(&track, (1..N).map(name), "1\n") || all_files(&track, (0..N).map(name), "0\n")
    }));
    // Then all are up.
    assert!(
        eventually(Duration::from_secs(30), || all_files(
            &track,
            (0..N).map(name),
            "0\n"
        )),
        "log:\n{}",
        director.lines().join("\n")
    );
    let line = director.wait_log(&[&format!("{} 127.0.1.2:", name(1)), "down -> up"]);
    assert!(line.contains("after 2 successful checks"), "{line}");
    assert!(line.contains(": up (set by host), weight 100%"), "{line}");
    // The log line's form: RFC 3339 time, program and pid, level.
    assert!(
        line.contains(" lbagent-director[") && line.contains("]: notice: "),
        "{line}"
    );
    assert!(
        !director
            .lines()
            .iter()
            .any(|l| l.contains(&format!("{} ", name(0))) && l.contains(" -> ")),
        "rs0000 started up from its file and never flipped"
    );
    let warm_rss = director.status_field("VmRSS:");
    let warm_fds = director.fds();

    // Each way of not serving, and the reason in each transition line: what the agent says
    // is taken at once; a silence needs --fall probes in a row.
    let cases = [
        (
            10,
            Behaviour::Down,
            "down (set by host)",
            "at once, as the agent says",
        ),
        (
            11,
            Behaviour::Drain,
            "drain (set by host)",
            "at once, as the agent says",
        ),
        (
            12,
            Behaviour::UpWeightZero,
            "up (set by host), weight 0%",
            "at once, as the agent says",
        ),
        (
            13,
            Behaviour::Silent,
            "timeout: no answer within 200 ms",
            "after 2 failed checks",
        ),
    ];
    for (i, b, _, _) in cases {
        fleet.set(i, b);
    }
    for (i, _, why, how) in cases {
        let line = director.wait_log(&[&format!("{} ", name(i)), "up -> down"]);
        assert!(line.contains(how), "{line}");
        assert!(line.contains(why), "{line}");
        assert!(eventually(Duration::from_secs(5), || read(
            track.join(name(i))
        ) == "1\n"));
    }

    // Atomic replacement: a reader never sees anything but a whole "0\n" or "1\n" while the
    // files of 50 targets flip again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, track) = (stop.clone(), reads.clone(), track.clone());
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                for i in 100..150 {
                    let content = std::fs::read(track.join(name(i))).expect("never missing");
                    assert!(
                        content == b"0\n" || content == b"1\n",
                        "a reader saw {content:?}"
                    );
                    seen.insert(content);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
            seen
        })
    };
    for round in 0..3 {
        let b = if round % 2 == 0 {
            Behaviour::Down
        } else {
            Behaviour::Up
        };
        for i in 100..150 {
            fleet.set(i, b);
        }
        let want = if round % 2 == 0 { "1\n" } else { "0\n" };
        assert!(eventually(Duration::from_secs(15), || all_files(
            &track,
            (100..150).map(name),
            want
        )));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().expect("the reader saw only whole files");
    assert_eq!(seen.len(), 2, "the reader saw both values");
    assert!(reads.load(Ordering::Relaxed) > 1000);
    for i in 100..150 {
        fleet.set(i, Behaviour::Up);
    }

    // SIGHUP with an error in the file: rejected whole, everything kept.
    let good = targets_text(&fleet, N);
    std::fs::write(&targets, format!("{good}rs9999 10.0.0.x\n")).unwrap();
    director.signal(libc::SIGHUP);
    director.wait_log(&[
        "error: reload failed, the 1000 targets in force are kept",
        &format!("targets.conf:{}: field 2 (address) \"10.0.0.x\"", N + 2),
    ]);
    // rs0010 has been down a while; after a valid reload its state and its time in that
    // state are kept.
    let before_reload = Instant::now();
    let mut text = String::from("# reloaded\n");
    for (i, line) in good.lines().skip(1).enumerate() {
        match i {
            998 => text.push_str(&format!("{}  {}\n", name(998), fleet.addr(N))), // changed
            999 => {}                                                             // removed
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text.push_str(&format!("rs1000  {}\n", fleet.addr(N + 1))); // added
    std::fs::write(&targets, text).unwrap();
    director.signal(libc::SIGHUP);
    director.wait_log(&[
        "reloaded",
        "1000 targets (998 unchanged, 1 changed, 1 added, 1 removed)",
    ]);
    director.wait_log(&[&format!("{} ", name(999)), "removed", "now says 1 (failed)"]);
    assert_eq!(read(track.join(name(999))), "1\n");
    director.wait_log(&[
        &format!("{} {}", name(998), fleet.addr(N)),
        "changed",
        "stays up",
    ]);
    director.wait_log(&["rs1000 ", "added, down as its track file says"]);
    assert!(eventually(Duration::from_secs(10), || read(
        track.join("rs1000")
    ) == "0\n"));
    assert_eq!(
        read(track.join(name(998))),
        "0\n",
        "a changed target kept its verdict"
    );
    assert_eq!(read(track.join(name(10))), "1\n");
    let down_before = before_reload.elapsed().as_secs_f64();
    fleet.set(10, Behaviour::Up);
    let line = director.wait_log(&[&format!("{} ", name(10)), "down -> up"]);
    assert!(
        held_seconds(&line) >= down_before,
        "the time down spans the reload ({down_before:.1} s at least): {line}"
    );

    // Bounded memory: thousands more checks later, no growth beyond noise, no fd leak.
    let answered_before = fleet.answered();
    std::thread::sleep(Duration::from_secs(6));
    let checks = fleet.answered() - answered_before;
    assert!(checks > 7_500, "{checks} checks in 6 s");
    let rss = director.status_field("VmRSS:");
    assert!(
        rss < warm_rss + 2048,
        "RSS grew from {warm_rss} kB to {rss} kB"
    );
    assert_eq!(director.fds(), warm_fds);

    let (code, last) = director.stop();
    assert_eq!(code, 0);
    assert!(last.contains("1000 targets"), "{last}");
    // Files keep their last values after a stop; no temporary file is left behind.
    assert_eq!(read(track.join(name(0))), "0\n");
    let leftovers: Vec<_> = std::fs::read_dir(&track)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn real_agents_end_to_end() {
    let dir = scratch_dir("director-real");
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let (a, addr_a) = agent("initial_state=up services=game");
    let (b, addr_b) = agent("initial_state=up");
    let targets = dir.join("targets.conf");
    std::fs::write(
        &targets,
        format!("web-a {addr_a}\ngame-a {addr_a} service=game\nweb-b {addr_b}\n"),
    )
    .unwrap();
    let director = Director::start(
        &targets,
        &track,
        &[
            "--interval",
            "200",
            "--timeout",
            "100",
            "--rise",
            "1",
            "--fall",
            "1",
        ],
    );
    let files = |want: [&str; 3]| {
        eventually(Duration::from_secs(15), || {
            ["web-a", "game-a", "web-b"]
                .iter()
                .zip(want)
                .all(|(n, w)| read(track.join(n)) == w)
        })
    };
    assert!(files(["0\n", "0\n", "0\n"]));
    a.set_state("game", State::Drain, Some("deploy")).unwrap();
    assert!(files(["0\n", "1\n", "0\n"]));
    director.wait_log(&[
        "game-a ",
        "service game",
        "up -> down at once, as the agent says",
        "\"deploy\"",
    ]);
    a.set_state("game", State::Up, None).unwrap();
    drop(b); // the agent stops: refused
    assert!(files(["0\n", "0\n", "1\n"]));
    director.wait_log(&["web-b ", "up -> down", "refused"]);
    let (code, _) = director.stop();
    assert_eq!(code, 0);
}

#[test]
fn configuration_errors() {
    let dir = scratch_dir("director-config");
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let targets = dir.join("targets.conf");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
            .args(args)
            .output()
            .unwrap()
    };
    let t = targets.to_str().unwrap();
    let d = track.to_str().unwrap();

    std::fs::write(&targets, "rs5 127.0.0.1\nrs6 127.0.0.1:4950 service=game\n").unwrap();
    let out = run(&["--check", "--targets", t]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("2 targets (1 with a service, 0 with a key): ok")
    );

    std::fs::write(&targets, "rs5 127.0.0.1\n\nrs6 127.0.0.1 colour=blue\n").unwrap();
    for args in [
        vec!["--check", "--targets", t],
        vec!["--targets", t, "--track-dir", d],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("targets.conf:3: field 3 (option) \"colour=blue\""),
            "{err}"
        );
    }
    std::fs::write(&targets, "rs5 127.0.0.1\n").unwrap();
    let out = run(&["--targets", t, "--track-dir", "/nonexistent/lbagent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lbagent"));
    let out = run(&[
        "--targets",
        t,
        "--track-dir",
        d,
        "--interval",
        "500",
        "--timeout",
        "480",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout 480 ms must be shorter"));
    assert_eq!(run(&["--targets", t]).status.code(), Some(64));
    // One poller per directory.
    let first = Director::start(&targets, &track, &[]);
    first.wait_log(&["started: 1 targets"]);
    let out = run(&["--targets", t, "--track-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another lbagent-director"));
    let help = run(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["--rise", "--fall", "--jitter", "SIGHUP", "Detection time"] {
        assert!(help.contains(needle), "{needle}");
    }
}

/// Simulated agents on loopback that answer every PROBE with UP and record when each one
/// arrived: one socket and one thread per agent, so that an arrival is stamped as soon as the
/// datagram is there.
struct Recorder {
    addrs: Vec<std::net::SocketAddr>,
    arrivals: Arc<Mutex<Vec<Vec<Instant>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(count: usize) -> Recorder {
        let arrivals = Arc::new(Mutex::new(vec![Vec::new(); count]));
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            addrs.push(socket.local_addr().unwrap());
            let (arrivals, stop) = (arrivals.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut out = [0u8; lbagent::proto::wire::PROBE_MAX_LEN];
                while !stop.load(Ordering::Acquire) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let at = Instant::now();
                    let Ok(lbagent::proto::wire::Request::Probe(probe)) =
                        lbagent::proto::wire::decode_request(&buf[..n])
                    else {
                        continue;
                    };
                    arrivals.lock().unwrap()[i].push(at);
                    let fields = lbagent::proto::wire::StatusFields {
                        flags: 0,
                        nonce: probe.nonce,
                        instance_id: 0x7a7a_0000 + i as u64,
                        generation: 1,
                        state: State::Up as u8,
                        reason: lbagent::Reason::Host as u8,
                        weight_pct: 100,
                        since_ms: 0,
                        in_use: 0,
                        capacity: 0,
                        message: b"recorded",
                    };
                    if let Some(len) =
                        lbagent::proto::wire::encode_status(&fields, probe.len, &mut out)
                    {
                        let _ = socket.send_to(&out[..len], from);
                    }
                }
            }));
        }
        Recorder {
            addrs,
            arrivals,
            stop,
            threads,
        }
    }

    /// Stops the agents; the arrival times of each one's probes.
    fn finish(mut self) -> Vec<Vec<Instant>> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }
}

/// The arrival times of the probes of `count` recorded agents, polled for `run_for` by a
/// director with `--interval interval_ms --jitter jitter_pct`.
fn probe_arrivals(
    name: &str,
    count: usize,
    interval_ms: u64,
    jitter_pct: u32,
    run_for: Duration,
) -> Vec<Vec<Instant>> {
    let dir = scratch_dir(name);
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let agents = Recorder::start(count);
    let targets = dir.join("targets.conf");
    let text: String = (0..count)
        .map(|i| format!("j{i:02} {}\n", agents.addrs[i]))
        .collect();
    std::fs::write(&targets, text).unwrap();
    let director = Director::start(
        &targets,
        &track,
        &[
            "--interval",
            &interval_ms.to_string(),
            "--jitter",
            &jitter_pct.to_string(),
            "--timeout",
            "100",
            "--stats-interval",
            "0",
        ],
    );
    director.wait_log(&[
        &format!("started: {count} targets"),
        &format!("interval {interval_ms} ms +-{jitter_pct}%"),
    ]);
    std::thread::sleep(run_for);
    let (code, last) = director.stop();
    assert_eq!(code, 0, "{last}");
    // No check was skipped (the previous one still in flight): every due check was sent.
    assert!(last.contains(" 0 skipped"), "{last}");
    agents.finish()
}

/// The gaps between consecutive probes of each target, in milliseconds, all targets together.
fn gaps_ms(arrivals: &[Vec<Instant>]) -> Vec<f64> {
    arrivals
        .iter()
        .flat_map(|a| a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0))
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How far the first probes of the targets are spread: the last first probe's arrival less
/// the earliest's, in milliseconds.
fn first_probes_span_ms(arrivals: &[Vec<Instant>]) -> f64 {
    let firsts: Vec<Instant> = arrivals.iter().map(|a| a[0]).collect();
    let (min, max) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
    (*max - *min).as_secs_f64() * 1000.0
}

/// --jitter spreads the checks of each target around the interval: consecutive probes of one
/// target arrive interval +-jitter% apart (uniformly, not drifting), and not interval apart
/// to the millisecond as with --jitter 0; with either, the targets' first probes fall at
/// random points of the first interval rather than in one burst. Bounds are generous: the
/// machine running the tests may be busy, so most assertions are on medians and proportions.
#[test]
fn jitter_spreads_each_targets_checks() {
    const TARGETS: usize = 12;
    const INTERVAL: f64 = 300.0;
    const SLACK: f64 = 150.0;
    let describe = |gaps: &[f64]| {
        let mut g = gaps.to_vec();
        g.sort_by(f64::total_cmp);
        format!("{} gaps (ms, sorted): {g:.1?}", g.len())
    };

    // --jitter 30: each interval is 210..=390 ms.
    let arrivals = probe_arrivals(
        "director-jitter-on",
        TARGETS,
        300,
        30,
        Duration::from_millis(3300),
    );
    for (i, a) in arrivals.iter().enumerate() {
        assert!(a.len() >= 6, "target {i}: only {} probes in 3.3 s", a.len());
    }
    let span = first_probes_span_ms(&arrivals);
    assert!(
        (INTERVAL / 4.0..=INTERVAL + SLACK).contains(&span),
        "first probes spread over {span:.1} ms"
    );
    let gaps = gaps_ms(&arrivals);
    let what = describe(&gaps);
    let (low, high) = (INTERVAL * 0.7, INTERVAL * 1.3);
    // (a) Jitter is there: gaps are not all the interval to the millisecond; they spread.
    let exact = gaps.iter().filter(|g| (*g - INTERVAL).abs() <= 1.0).count();
    assert!(
        exact * 4 < gaps.len(),
        "{exact} gaps of exactly the interval; {what}"
    );
    let deviation: Vec<f64> = gaps.iter().map(|g| (g - INTERVAL).abs()).collect();
    assert!(
        median(&deviation) >= 20.0,
        "median deviation from the interval {:.1} ms (+-30% uniform: about 45); {what}",
        median(&deviation)
    );
    let spread = gaps.iter().copied().fold(f64::MIN, f64::max)
        - gaps.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        spread >= 90.0,
        "gaps spread over {spread:.1} ms only; {what}"
    );
    // (b) Within interval +-jitter, with a generous slack (a busy machine delays a few
    // arrivals; this file's other tests run meanwhile).
    let inside = gaps
        .iter()
        .filter(|g| (low - SLACK..=high + SLACK).contains(*g))
        .count();
    assert!(inside * 20 >= gaps.len() * 19, "{inside} inside; {what}");
    // The jitter is centred on the interval: the checks do not drift.
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(
        (mean - INTERVAL).abs() <= 50.0,
        "mean gap {mean:.1} ms; {what}"
    );

    // (c) --jitter 0: gaps cluster at the interval; the first probes are still spread.
    let arrivals = probe_arrivals(
        "director-jitter-off",
        TARGETS,
        300,
        0,
        Duration::from_millis(2700),
    );
    let span = first_probes_span_ms(&arrivals);
    assert!(
        (INTERVAL / 4.0..=INTERVAL + SLACK).contains(&span),
        "first probes spread over {span:.1} ms with --jitter 0"
    );
    let gaps = gaps_ms(&arrivals);
    let what = describe(&gaps);
    assert!(gaps.len() >= TARGETS * 5, "{what}");
    // Generous bounds again: +-30 % jitter gives a median deviation of about 45 ms.
    assert!((median(&gaps) - INTERVAL).abs() <= 25.0, "{what}");
    let deviation: Vec<f64> = gaps.iter().map(|g| (g - INTERVAL).abs()).collect();
    assert!(median(&deviation) <= 15.0, "{what}");
    let close = deviation.iter().filter(|d| **d <= 30.0).count();
    assert!(close * 10 >= gaps.len() * 6, "{close} within 30 ms; {what}");
}

/// A keyed agent and its key file (the director's probes are sealed, so the agent grants
/// their subscriptions).
fn keyed(name: &str, extra: &str) -> (lbagent::Agent, std::net::SocketAddr, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let keys = scratch_dir(&format!("director-keys-{name}")).join("keys");
    std::fs::write(
        &keys,
        "7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (agent, addr) = agent(&format!("key_file={} {extra}", keys.display()));
    (agent, addr, keys)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn pushed_changes_reach_track_files_and_haproxy_at_once() {
    use common::haproxy::Haproxy;
    let dir = scratch_dir("director-push");
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    // Two keyed agents with the same key, as docs/DIRECTORS.md's targets block has them.
    let (_other, addr5, _) = keyed("push5", "initial_state=up");
    let (agent, addr, keys) = keyed("push", "initial_state=up");
    // HAProxy as docs/DIRECTORS.md shows it, fed by the director (its server has no check).
    let hdir = dir.join("haproxy");
    std::fs::create_dir_all(&hdir).unwrap();
    let socket = hdir.join("admin.sock");
    let config = common::doc_block("docs/DIRECTORS.md", "haproxy", "director-sink")
        .replace("/run/haproxy/admin.sock", socket.to_str().unwrap())
        .replace("10.0.0.100:7000", &format!("127.0.0.1:{}", free_tcp_port()))
        .replace("10.0.0.6:7000", "127.0.0.2:9");
    let haproxy = Haproxy::start(&hdir, &config);
    // What `show stat` says of a server that is up and has no check of its own.
    const READY: &str = "no check";
    let targets = dir.join("targets.conf");
    let text = common::doc_block("docs/DIRECTORS.md", "targets", "lbagent-director-push")
        .replace("10.0.0.5:4950", &addr5.to_string())
        .replace("10.0.0.6:4950", &addr.to_string())
        .replace("/etc/lbagent/director.key", keys.to_str().unwrap())
        .replace("/run/haproxy/admin.sock", socket.to_str().unwrap());
    std::fs::write(&targets, text).unwrap();
    std::fs::write(track.join("rs6"), "1\n").unwrap();
    // A long interval, without jitter: after the first probe the next one is 20 s away, so a
    // change seen within 10 s was pushed, not polled.
    const INTERVAL: Duration = Duration::from_secs(20);
    let director = Director::start(
        &targets,
        &track,
        &[
            "--interval",
            "20000",
            "--timeout",
            "500",
            "--jitter",
            "0",
            "--rise",
            "1",
        ],
    );
    // The first probe (at a random point of the first interval) subscribes and puts it up.
    director.wait_log(&["rs6 ", "down -> up"]);
    let first_answer = Instant::now();
    let file_says = |want: &str| eventually(INTERVAL / 2, || read(track.join("rs6")) == want);
    assert!(file_says("0\n"));

    // Host changes, each seen by the track file and HAProxy well before the next poll.
    agent.set_state("", State::Drain, Some("deploy")).unwrap();
    assert!(file_says("1\n"));
    director.wait_log(&["rs6 ", "up -> down at once, pushed by the agent", "drain"]);
    haproxy.wait_for("app", "rs6", "DRAIN", None);
    agent.set_state("", State::Up, None).unwrap();
    assert!(file_says("0\n"));
    haproxy.wait_for("app", "rs6", READY, Some(100));
    agent.set_weight("", 50).unwrap();
    haproxy.wait_for("app", "rs6", READY, Some(50));
    agent.set_state("", State::Maint, None).unwrap();
    haproxy.wait_for("app", "rs6", "MAINT", None);
    agent.set_state("", State::Down, Some("db gone")).unwrap();
    haproxy.wait_for("app", "rs6", "DOWN", None);
    assert!(file_says("1\n"));
    agent.set_weight("", 100).unwrap();
    agent.set_state("", State::Up, None).unwrap();
    haproxy.wait_for("app", "rs6", READY, Some(100));

    // How long a host call takes to show in HAProxy's `show stat`, pushed: 20 transitions.
    let mut delays = Vec::new();
    for i in 0..20 {
        let (state, shown) = if i % 2 == 0 {
            (State::Drain, "DRAIN")
        } else {
            (State::Up, READY)
        };
        // Changes apart, as a host makes them (a burst is coalesced: see tests/push.rs).
        std::thread::sleep(Duration::from_millis(50));
        let called = Instant::now();
        agent.set_state("", state, None).unwrap();
        haproxy.wait_for("app", "rs6", shown, None);
        delays.push(called.elapsed());
    }
    assert!(
        first_answer.elapsed() < INTERVAL,
        "the test outlived the poll interval: the changes above may have been polled"
    );
    delays.sort();
    println!(
        "host call to HAProxy show stat, pushed through lbagent-director: median {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms (20 transitions; show stat polled every 5 ms)",
        percentile(&delays, 0.5).as_secs_f64() * 1000.0,
        percentile(&delays, 0.99).as_secs_f64() * 1000.0,
        delays.last().unwrap().as_secs_f64() * 1000.0,
    );
    assert!(agent.counter(lbagent::Counter::Pushed) >= 25);
    // The other target's first probe falls anywhere in the first interval: wait for it.
    director.wait_log(&["rs5 ", "down -> up"]);
    let (code, last) = director.stop();
    assert_eq!(code, 0);
    assert!(
        last.contains("pushed changes from 2 subscriptions"),
        "{last}"
    );
}

/// A TCP port free now on 127.0.0.1.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
