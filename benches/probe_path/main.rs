//! `make bench` (probe path): what lbagent gives a prober and what it costs its host, each
//! against a baseline measured in the same run on the same machine.
//!
//! Programs (benches/c/, built here with gcc):
//! - `agent_host`: a C server that hosts the agent (linked with -llbagent, like any host) and
//!   that the benchmark drives through its stdin;
//! - `udp_echo`: the minimal C UDP responder (recvfrom, sendto), and `udp_echo batch` (recvmmsg,
//!   sendmmsg): the physical limit of any UDP responder on this machine;
//! - `tcp_answer agent|http`: the minimal C TCP responders (accept, write, close).
//!
//! The probers are `load.rs`, the same for every responder. Figures:
//! - UDP round trip (p50, p99), one probe in flight, against the minimal echo;
//! - TCP agent-check and HTTP round trips, against the minimal C TCP responders;
//! - UDP throughput: answers per second with several probers at once, against both echoes;
//! - hosting: wake-ups and CPU of the idle agent, CPU at 1,000 probes per second (against
//!   the echo at the same rate), resident memory added by `lbagent_start`, the stripped size
//!   of the shared library;
//! - detection: from `lbagent_set_state(DOWN)`, and from the last heartbeat (watchdog), to the
//!   first answer that says so.
//!
//! Repetitions alternate between the agent and its baseline, so that a noisy neighbour hurts
//! both; the tables give medians and the spread across repetitions. Results:
//! target/bench/probe_path.md and .values. `cargo test --all-targets` runs the same code at a
//! tiny scale (a smoke run; nothing is asserted about timing).

#[path = "../support/mod.rs"]
mod support;

mod load;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use lbagent::State;
use support::{Report, median, percentile, spread, us};

/// How much of everything a run measures.
#[derive(Clone, Copy)]
struct Scale {
    /// Repetitions of each measure (alternating agent and baseline).
    reps: usize,
    udp_round_trips: usize,
    tcp_round_trips: usize,
    throughput_warm_up: Duration,
    throughput_window: Duration,
    idle: Duration,
    paced: Duration,
    detections: usize,
}

const BENCH: Scale = Scale {
    reps: 5,
    udp_round_trips: 4000,
    tcp_round_trips: 500,
    throughput_warm_up: Duration::from_millis(300),
    throughput_window: Duration::from_millis(1500),
    idle: Duration::from_secs(5),
    paced: Duration::from_millis(1500),
    detections: 15,
};

const SMOKE: Scale = Scale {
    reps: 1,
    udp_round_trips: 50,
    tcp_round_trips: 10,
    throughput_warm_up: Duration::from_millis(50),
    throughput_window: Duration::from_millis(100),
    idle: Duration::from_millis(300),
    paced: Duration::from_millis(200),
    detections: 2,
};

/// Probers and the probes each keeps in flight, for the throughput runs.
const PROBERS: usize = 4;
const WINDOW: usize = 16;
/// The probe rate of the "CPU while probed" figure.
const PACED_RATE: u32 = 1000;
/// The watchdog of the detection run.
const WATCHDOG_MS: u64 = 100;

/// A started program: its stdin for commands and its stdout for answers.
struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Program {
    fn start(exe: &std::path::Path, args: &[&str]) -> Program {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Program {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line, which must be "KEY VALUE"; returns VALUE.
    fn read(&mut self, key: &str) -> u64 {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.strip_prefix(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected {key:?}, got {line:?}"))
    }

    /// The next line, which must be "KEY RSS ANON FILE SHMEM" (KiB); returns the four.
    fn read_memory(&mut self, key: &str) -> Memory {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let values: Vec<u64> = line
            .strip_prefix(key)
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            values.len(),
            4,
            "expected {key:?} and four sizes, got {line:?}"
        );
        Memory {
            rss: values[0],
            anon: values[1],
            file: values[2],
            shmem: values[3],
        }
    }

    /// Sends a command; returns the value of its one-line answer "KEY VALUE".
    fn command(&mut self, command: &str, key: &str) -> u64 {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.read(key)
    }

    /// Asks a host to stop and free its agent, and waits until it has.
    fn quit(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "quit").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "bye\n");
    }

    fn addr(port: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port as u16))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of the host, KiB (from its /proc/self/status).
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

/// A C baseline responder: prints "port N".
fn responder(exe: &std::path::Path, args: &[&str]) -> (Program, SocketAddr) {
    let mut p = Program::start(exe, args);
    let port = p.read("port");
    (p, Program::addr(port))
}

/// The agent in its C host, with the ports of its three listeners.
struct Hosted {
    program: Program,
    before: Memory,
    after: Memory,
    udp: SocketAddr,
    tcp: SocketAddr,
    http: SocketAddr,
}

fn host_agent(exe: &std::path::Path, config: &str) -> Hosted {
    let mut program = Program::start(exe, &[config]);
    let before = program.read_memory("memory_before");
    let after = program.read_memory("memory_after");
    let udp = Program::addr(program.read("udp"));
    let tcp = Program::addr(program.read("tcp"));
    let http = Program::addr(program.read("http"));
    let mut ready = String::new();
    program.stdout.read_line(&mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    Hosted {
        program,
        before,
        after,
        udp,
        tcp,
        http,
    }
}

impl Hosted {
    fn monitor_thread(&self) -> u32 {
        support::thread_named(self.program.pid(), "lbagent-monitor").expect("a monitor thread")
    }
}

/// Runs `measure` on the agent and on its baseline in turn, `reps` times.
fn alternate<T>(reps: usize, mut measure: impl FnMut(bool) -> T) -> (Vec<T>, Vec<T>) {
    let (mut agent, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        baseline.push(measure(false));
        agent.push(measure(true));
    }
    (agent, baseline)
}

/// Round-trip figures of one kind of exchange: p50/p99 of all samples of each side, the
/// ratios, and the spread of the per-repetition p50 ratio.
fn round_trip_rows(
    r: &mut Report,
    key: &str,
    title: &str,
    baseline_title: &str,
    (agent, baseline): (Vec<Vec<f64>>, Vec<Vec<f64>>),
) -> f64 {
    let rep_ratios: Vec<f64> = agent
        .iter()
        .zip(&baseline)
        .map(|(a, b)| median(&mut a.clone()) / median(&mut b.clone()))
        .collect();
    let mut a: Vec<f64> = agent.concat();
    let mut b: Vec<f64> = baseline.concat();
    let (a50, a99) = (median(&mut a), percentile(&mut a, 99.0));
    let (b50, b99) = (median(&mut b), percentile(&mut b, 99.0));
    let (r50, r99) = (a50 / b50, a99 / b99);
    r.row(&[
        title.to_string(),
        us(a50),
        us(a99),
        baseline_title.to_string(),
        us(b50),
        us(b99),
        format!("{r50:.2}"),
        format!("{r99:.2}"),
        spread(&rep_ratios, 2),
    ]);
    r.value(&format!("{key}_p50"), us(a50));
    r.value(&format!("{key}_p99"), us(a99));
    r.value(&format!("{key}_base_p50"), us(b50));
    r.value(&format!("{key}_base_p99"), us(b99));
    r.value(&format!("{key}_ratio_p50"), format!("{r50:.2}"));
    r.value(&format!("{key}_ratio_p99"), format!("{r99:.2}"));
    r.value(&format!("{key}_ratio_spread"), spread(&rep_ratios, 2));
    r50
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let scale = if support::is_bench_run() {
        BENCH
    } else {
        SMOKE
    };
    let lib_dir = library_links();
    let lib_flags = [
        format!("-L{}", lib_dir.display()),
        format!("-Wl,-rpath,{}", lib_dir.display()),
        "-llbagent".to_string(),
    ];
    let agent_host = support::build_c("agent_host", &lib_flags.each_ref().map(String::as_str));
    let udp_echo = support::build_c("udp_echo", &[]);
    let tcp_answer = support::build_c("tcp_answer", &[]);

    let mut r = Report::new("probe_path");
    let config = "listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0 \
                  initial_state=up rate_per_source=0 rate_global=0";
    let mut host = host_agent(&agent_host, config);
    let (echo_program, echo) = responder(&udp_echo, &[]);
    let (batch_program, batch_echo) = responder(&udp_echo, &["batch"]);
    let (agent_answer, tcp_base) = responder(&tcp_answer, &["agent"]);
    let (http_answer, http_base) = responder(&tcp_answer, &["http"]);

    eprintln!("probe path: idle agent for {:?}", scale.idle);
    r.section("idle");
    idle(&mut r, &host, scale);

    eprintln!("probe path: round trips");
    r.section("round_trips");
    r.table(&[
        "round trip on loopback",
        "p50",
        "p99",
        "baseline (same run)",
        "p50",
        "p99",
        "ratio p50",
        "ratio p99",
        "ratio p50, per repetition",
    ]);
    // Where the scheduler puts the prober and the responder decides the round trip on a
    // virtual machine more than anything they do (waking a halted virtual core takes 100 us
    // and more here), so both placements are measured, each pinned.
    let responders = [
        host.program.pid(),
        echo_program.pid(),
        agent_answer.pid(),
        http_answer.pid(),
    ];
    for (suffix, placement, prober_cpu, responder_cpu) in
        [("", "same core", 0, 0), ("_x", "different cores", 0, 1)]
    {
        for pid in responders {
            support::pin_process(pid, Some(responder_cpu));
        }
        support::pin_self(Some(prober_cpu));
        let udp = alternate(scale.reps, |agent| {
            load::udp_round_trips(if agent { host.udp } else { echo }, scale.udp_round_trips)
        });
        let udp_ratio = round_trip_rows(
            &mut r,
            &format!("udp{suffix}"),
            &format!("UDP probe (protocol v1), {placement}"),
            "C UDP echo (recvfrom/sendto)",
            udp,
        );
        let tcp = alternate(scale.reps, |agent| {
            let target = if agent { host.tcp } else { tcp_base };
            load::tcp_round_trips(target, false, scale.tcp_round_trips, b"up")
        });
        let tcp_ratio = round_trip_rows(
            &mut r,
            &format!("tcp{suffix}"),
            &format!("TCP agent-check (connect, read line, close), {placement}"),
            "C TCP responder (accept, write, close)",
            tcp,
        );
        let http = alternate(scale.reps, |agent| {
            let target = if agent { host.http } else { http_base };
            load::tcp_round_trips(target, true, scale.tcp_round_trips, b"HTTP/1.1 200 OK")
        });
        let http_ratio = round_trip_rows(
            &mut r,
            &format!("http{suffix}"),
            &format!("HTTP GET /health, {placement}"),
            "C HTTP responder (accept, read, write, close)",
            http,
        );
        r.value(
            &format!("udp{suffix}_verdict"),
            support::verdict(udp_ratio <= 1.2),
        );
        r.value(
            &format!("tcp{suffix}_verdict"),
            support::verdict(tcp_ratio <= 1.2 && http_ratio <= 1.2),
        );
    }
    for pid in responders {
        support::pin_process(pid, None);
    }
    support::pin_self(None);

    eprintln!("probe path: throughput");
    r.section("throughput");
    throughput(
        &mut r,
        &host,
        (&echo_program, echo),
        (&batch_program, batch_echo),
        scale,
    );

    eprintln!("probe path: CPU at {PACED_RATE} probes/s");
    r.section("paced");
    paced(&mut r, &host, (&echo_program, echo), scale);

    let stdin = host.program.stdin.as_mut().unwrap();
    writeln!(stdin, "memory").unwrap();
    stdin.flush().unwrap();
    let loaded = host.program.read_memory("memory");
    r.section("memory");
    memory_and_size(&mut r, &host, loaded);
    host.program.quit();
    drop(host);

    eprintln!("probe path: detection");
    r.section("detection");
    detection(&mut r, &agent_host, scale);
    r.write();
}

/// target/bench/lib: liblbagent.so and its soname link, pointing at the library built with
/// this benchmark.
fn library_links() -> std::path::PathBuf {
    let dir = support::bench_dir().join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["liblbagent.so", "liblbagent.so.0"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(support::shared_library(), &link).unwrap();
    }
    dir
}

/// Wake-ups and CPU of the agent's threads while nobody probes (after one probe of each kind,
/// so that every listener has been used and every connection closed).
fn idle(r: &mut Report, host: &Hosted, scale: Scale) {
    load::udp_round_trips(host.udp, 1);
    load::tcp_round_trips(host.tcp, false, 1, b"up");
    load::tcp_round_trips(host.http, true, 1, b"HTTP/1.1 200 OK");
    // The agent keeps a closed connection's slot for its linger time (1 s) at most.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = host.program.pid();
    let threads: Vec<(u32, String)> = support::threads(pid)
        .into_iter()
        .filter(|t| *t != pid) // the host's own main thread, asleep in read()
        .map(|t| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm")).unwrap();
            (t, name.trim().to_string())
        })
        .collect();
    let before: Vec<_> = threads
        .iter()
        .map(|(t, _)| {
            (
                support::context_switches(pid, *t),
                support::task_cpu(pid, *t),
            )
        })
        .collect();
    std::thread::sleep(scale.idle);
    r.table(&[
        &format!("agent thread, idle for {} s", scale.idle.as_secs_f64()),
        "wake-ups",
        "CPU time",
    ]);
    let mut total = 0;
    for ((t, name), (switches, cpu)) in threads.iter().zip(before) {
        let woke = support::context_switches(pid, *t) - switches;
        let used = support::task_cpu(pid, *t) - cpu;
        total += woke;
        r.row(&[
            format!("`{name}`"),
            woke.to_string(),
            format!("{} ns", used.as_nanos()),
        ]);
    }
    r.value("idle_threads", threads.len());
    r.value("idle_wakeups", total);
    r.value("idle_seconds", scale.idle.as_secs_f64());
    r.value("idle_verdict", support::verdict(total == 0));
}

fn throughput(
    r: &mut Report,
    host: &Hosted,
    (echo_program, echo): (&Program, SocketAddr),
    (batch_program, batch_echo): (&Program, SocketAddr),
    scale: Scale,
) {
    let (host_pid, monitor) = (host.program.pid(), host.monitor_thread());
    let run = |target: SocketAddr, cpu: &dyn Fn() -> Duration| {
        load::udp_throughput(
            target,
            PROBERS,
            WINDOW,
            scale.throughput_warm_up,
            scale.throughput_window,
            cpu,
        )
    };
    let echo_pid = echo_program.pid();
    let batch_pid = batch_program.pid();
    let (mut agent, mut minimal, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scale.reps {
        minimal.push(run(echo, &|| support::process_cpu(echo_pid)));
        agent.push(run(host.udp, &|| support::task_cpu(host_pid, monitor)));
        batched.push(run(batch_echo, &|| support::process_cpu(batch_pid)));
    }
    r.table(&[
        &format!("UDP throughput, {PROBERS} probers x {WINDOW} probes in flight"),
        "answers/s (median)",
        "spread",
        "responder CPU per answer",
        "responder busy",
        "probes lost",
        "agent / this",
    ]);
    let rate = |v: &[load::Throughput]| median(&mut v.iter().map(|t| t.rate).collect::<Vec<_>>());
    let agent_rate = rate(&agent);
    let mut ratios = Vec::new();
    for (key, title, runs) in [
        ("agent", "lbagent monitor thread", &agent),
        ("echo", "C UDP echo (recvfrom/sendto)", &minimal),
        ("batch", "C UDP echo (recvmmsg/sendmmsg)", &batched),
    ] {
        let rates: Vec<f64> = runs.iter().map(|t| t.rate).collect();
        let cpu = median(&mut runs.iter().map(|t| t.cpu_per_answer_us).collect::<Vec<_>>());
        let busy = median(&mut runs.iter().map(|t| t.busy).collect::<Vec<_>>());
        let lost: u64 = runs.iter().map(|t| t.lost).sum();
        let per_rep: Vec<f64> = agent
            .iter()
            .zip(runs.iter())
            .map(|(a, b)| a.rate / b.rate)
            .collect();
        let ratio = agent_rate / rate(runs);
        ratios.push(ratio);
        r.row(&[
            title.to_string(),
            format!("{:.0}", rate(runs)),
            spread(&rates, 0),
            format!("{cpu:.2} us"),
            format!("{:.0} %", busy * 100.0),
            lost.to_string(),
            format!("{ratio:.2} (per repetition {})", spread(&per_rep, 2)),
        ]);
        r.value(&format!("tput_{key}"), format!("{:.0}", rate(runs)));
        r.value(&format!("tput_{key}_cpu"), format!("{cpu:.2} us"));
        r.value(&format!("tput_{key}_ratio"), format!("{ratio:.2}"));
    }
    r.value("tput_verdict", support::verdict(ratios[1] >= 0.8));
    r.value("probers", PROBERS);
}

/// CPU of the monitor thread at a steady 1,000 probes per second, against the echo's.
fn paced(
    r: &mut Report,
    host: &Hosted,
    (echo_program, echo): (&Program, SocketAddr),
    scale: Scale,
) {
    let (host_pid, monitor) = (host.program.pid(), host.monitor_thread());
    let echo_pid = echo_program.pid();
    let (agent, baseline) = alternate(scale.reps + 1, |agent| {
        let (target, cpu): (SocketAddr, Box<dyn Fn() -> Duration>) = if agent {
            (host.udp, Box::new(|| support::task_cpu(host_pid, monitor)))
        } else {
            (echo, Box::new(|| support::process_cpu(echo_pid)))
        };
        let wakes = || {
            support::context_switches(
                if agent { host_pid } else { echo_pid },
                if agent { monitor } else { echo_pid },
            )
        };
        let (c0, w0) = (cpu(), wakes());
        let answered = load::udp_paced(target, PACED_RATE, scale.paced);
        let (c1, w1) = (cpu(), wakes());
        let per_probe = (c1 - c0).as_secs_f64() / answered.max(1) as f64 * 1e6;
        let share = (c1 - c0).as_secs_f64() / scale.paced.as_secs_f64();
        (per_probe, share, (w1 - w0) as f64 / answered.max(1) as f64)
    });
    r.table(&[
        &format!("at {PACED_RATE} probes/s, one at a time"),
        "CPU per probe",
        "share of one core",
        "wake-ups per probe",
        "agent / this",
    ]);
    let pick = |v: &[(f64, f64, f64)], i: usize| {
        median(&mut v.iter().map(|x| [x.0, x.1, x.2][i]).collect::<Vec<_>>())
    };
    let ratio = pick(&agent, 0) / pick(&baseline, 0);
    for (title, v, ratio) in [
        ("lbagent monitor thread", &agent, "1".to_string()),
        (
            "C UDP echo (recvfrom/sendto)",
            &baseline,
            format!("{ratio:.2}"),
        ),
    ] {
        r.row(&[
            title.to_string(),
            format!("{:.2} us", pick(v, 0)),
            format!("{:.2} %", pick(v, 1) * 100.0),
            format!("{:.2}", pick(v, 2)),
            ratio,
        ]);
    }
    r.value("paced_cpu", format!("{:.2} us", pick(&agent, 0)));
    r.value("paced_share", format!("{:.2} %", pick(&agent, 1) * 100.0));
    r.value("paced_base_cpu", format!("{:.2} us", pick(&baseline, 0)));
    r.value("paced_ratio", format!("{ratio:.2}"));
}

fn memory_and_size(r: &mut Report, host: &Hosted, loaded: Memory) {
    let lib = support::shared_library();
    let stripped = support::bench_dir().join("liblbagent.stripped.so");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&lib)
        .status()
        .expect("strip runs (binutils)");
    assert!(status.success());
    let size = std::fs::metadata(&stripped).unwrap().len();
    let systemd = [
        "/usr/lib/x86_64-linux-gnu/libsystemd.so.0",
        "/lib/x86_64-linux-gnu/libsystemd.so.0",
    ]
    .iter()
    .find_map(|p| std::fs::metadata(p).ok())
    .map(|m| m.len());
    let before = host.before;
    r.table(&[
        "resident memory of the C host, KiB",
        "all (VmRSS)",
        "private (RssAnon)",
        "shared memory (RssShmem)",
        "mapped files (RssFile)",
    ]);
    let row = |r: &mut Report, title: &str, m: Memory| {
        r.row(&[
            title.to_string(),
            m.rss.to_string(),
            m.anon.to_string(),
            m.shmem.to_string(),
            m.file.to_string(),
        ]);
    };
    let minus = |a: Memory, b: Memory| Memory {
        rss: a.rss.saturating_sub(b.rss),
        anon: a.anon.saturating_sub(b.anon),
        file: a.file.saturating_sub(b.file),
        shmem: a.shmem.saturating_sub(b.shmem),
    };
    row(r, "before `lbagent_start` (library loaded)", before);
    let started = minus(host.after, before);
    let after_load = minus(loaded, before);
    row(
        r,
        "added by `lbagent_start` (UDP, TCP agent-check, HTTP)",
        started,
    );
    row(r, "added, after the whole benchmark's load", after_load);
    r.table(&["size", "value"]);
    r.row(&[
        format!(
            "`liblbagent.so`, {} build, stripped",
            if support::is_bench_run() {
                "release"
            } else {
                "debug"
            }
        ),
        format!("{} KiB", size / 1024),
    ]);
    if let Some(s) = systemd {
        r.row(&[
            "for comparison: `libsystemd.so.0` (sd_notify's library), as Debian ships it".into(),
            format!("{} KiB", s / 1024),
        ]);
    }
    r.value("rss_added", format!("{} KiB", started.rss));
    r.value(
        "private_added",
        format!("{} KiB", started.anon + started.shmem),
    );
    r.value("rss_loaded", format!("{} KiB", after_load.rss));
    r.value(
        "private_loaded",
        format!("{} KiB", after_load.anon + after_load.shmem),
    );
    r.value("lib_size", format!("{} KiB", size / 1024));
    r.value(
        "libsystemd_size",
        systemd.map_or("(not installed)".to_string(), |s| {
            format!("{} KiB", s / 1024)
        }),
    );
}

/// From `lbagent_set_state(DOWN)` to the first answer saying DOWN, and from the last heartbeat
/// to the first answer saying DOWN (watchdog), with a prober asking back to back.
fn detection(r: &mut Report, agent_host: &std::path::Path, scale: Scale) {
    let config = format!(
        "listen=127.0.0.1:0 initial_state=up rate_per_source=0 rate_global=0 watchdog_ms={WATCHDOG_MS}"
    );
    let mut host = host_agent(agent_host, &config);
    // On one core, like the "same core" round trips (see there).
    support::pin_process(host.program.pid(), Some(0));
    support::pin_self(Some(0));
    let within = Duration::from_secs(5);
    let mut set_state = Vec::new();
    let mut watchdog = Vec::new();
    for _ in 0..scale.detections {
        host.program.command("up", "at");
        load::first_answer(host.udp, State::Up, within);
        // Asked while the prober is already probing: the command is written first, the
        // prober starts at once, and the host's timestamp is taken just before its call.
        let stdin = host.program.stdin.as_mut().unwrap();
        writeln!(stdin, "down").unwrap();
        stdin.flush().unwrap();
        let seen = load::first_answer(host.udp, State::Down, within);
        let at = host.program.read("at");
        set_state.push(seen.saturating_sub(at) as f64 / 1e3);

        host.program.command("up", "at");
        load::first_answer(host.udp, State::Up, within);
        let at = host.program.command("beat", "at");
        let seen = load::first_answer(host.udp, State::Down, within);
        watchdog.push(seen.saturating_sub(at) as f64 / 1e6);
    }
    host.program.quit();
    support::pin_self(None);
    r.table(&[
        "detection, prober asking back to back, on one core",
        "median",
        "max",
        "floor",
    ]);
    let s50 = median(&mut set_state.clone());
    let smax = set_state.iter().copied().fold(0.0, f64::max);
    r.row(&[
        "`lbagent_set_state(DOWN)` to the first answer saying DOWN".into(),
        us(s50),
        us(smax),
        "one round trip".into(),
    ]);
    let w50 = median(&mut watchdog.clone());
    let wmax = watchdog.iter().copied().fold(0.0, f64::max);
    r.row(&[
        format!("last heartbeat to the first answer saying DOWN (`watchdog_ms={WATCHDOG_MS}`)"),
        format!("{w50:.1} ms"),
        format!("{wmax:.1} ms"),
        format!("{WATCHDOG_MS} ms"),
    ]);
    r.value("detections", scale.detections);
    r.value("detect_state_p50", us(s50));
    r.value("detect_state_max", us(smax));
    r.value("detect_watchdog_p50", format!("{w50:.1} ms"));
    r.value("detect_watchdog_max", format!("{wmax:.1} ms"));
    r.value(
        "detect_watchdog_excess",
        format!("{:.1} ms", w50 - WATCHDOG_MS as f64),
    );
}
