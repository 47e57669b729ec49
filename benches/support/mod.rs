//! Helpers shared by the benchmarks: where results go, how CPU time and memory are read, and
//! how a result is written (a Markdown table for docs/BENCHMARKS.md and `key=value` lines for
//! the figures its text quotes; `scripts/bench-report.sh` puts them together).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether this is a real run (`cargo bench` passes `--bench`) or the smoke run of the same
/// code that `cargo test --all-targets` makes.
pub fn is_bench_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The cargo target directory (the benchmark runs as target/<profile>/deps/<name>).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// target/bench, created.
pub fn bench_dir() -> PathBuf {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared library built with this benchmark (target/<profile>/liblbagent.so), or the one
/// `LBAGENT_BENCH_LIBRARY` names (to measure another build, such as an older commit's, with
/// the same benchmark: docs/BENCHMARKS.md's before/after figures were made so).
pub fn shared_library() -> PathBuf {
    if let Some(path) = std::env::var_os("LBAGENT_BENCH_LIBRARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("liblbagent.so")
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CLOCK_MONOTONIC in nanoseconds (the clock C programs print with clock_gettime, and the one
/// behind `std::time::Instant`).
pub fn monotonic_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC).as_nanos() as u64
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of one thread of any process, in nanoseconds, from /proc/PID/task/TID/schedstat
/// (the scheduler's own accounting, exact to the nanosecond; /proc/.../stat counts ticks).
pub fn task_cpu(pid: u32, tid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

/// CPU time of a whole (single-threaded or not) process, from /proc/PID/schedstat.
pub fn process_cpu(pid: u32) -> Duration {
    threads(pid).iter().map(|t| task_cpu(pid, *t)).sum()
}

/// Runs the calling thread on `cpus` only (None: on every CPU again).
pub fn pin_self(cpus: Option<usize>) {
    pin(0, cpus);
}

/// Runs every thread of process `pid` on `cpus` only (None: on every CPU again).
pub fn pin_process(pid: u32, cpus: Option<usize>) {
    for tid in threads(pid) {
        pin(tid as libc::pid_t, cpus);
    }
}

fn pin(tid: libc::pid_t, cpu: Option<usize>) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and sched_setaffinity write and
    // read only this local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        // Every CPU the system has (available_parallelism would count only the caller's).
        let count = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        for c in 0..count {
            if cpu.is_none_or(|only| only == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The thread ids of a process.
pub fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The thread of `pid` named `name` (threads name themselves, e.g. "lbagent-monitor").
pub fn thread_named(pid: u32, name: &str) -> Option<u32> {
    threads_named(pid, name).into_iter().next()
}

/// Every thread of `pid` named `name` (one monitor thread per agent).
pub fn threads_named(pid: u32, name: &str) -> Vec<u32> {
    threads(pid)
        .into_iter()
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Voluntary plus involuntary context switches of one thread: how often it was woken.
pub fn context_switches(pid: u32, tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The median of some values (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`-th percentile (nearest rank) of some values (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

/// "min-max" of some values, for the variability column.
pub fn spread(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$}-{max:.digits$}")
}

/// One benchmark's results: Markdown tables in named sections, and named figures.
pub struct Report {
    name: String,
    /// (section name, its tables).
    sections: Vec<(String, String)>,
    values: Vec<(String, String)>,
}

impl Report {
    pub fn new(name: &str) -> Report {
        Report {
            name: name.to_string(),
            sections: vec![(String::new(), String::new())],
            values: Vec::new(),
        }
    }

    /// Starts a section: the tables that follow go to target/bench/NAME.SECTION.md, which
    /// docs/BENCHMARKS.md places as `{{table NAME.SECTION}}`.
    pub fn section(&mut self, section: &str) {
        self.sections.push((section.to_string(), String::new()));
    }

    fn markdown(&mut self) -> &mut String {
        &mut self.sections.last_mut().unwrap().1
    }

    /// Starts a table with these column titles.
    pub fn table(&mut self, columns: &[&str]) {
        let markdown = self.markdown();
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        let _ = writeln!(markdown, "| {} |", columns.join(" | "));
        let _ = writeln!(
            markdown,
            "|{}",
            columns
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
    }

    pub fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.markdown(), "| {} |", cells.join(" | "));
    }

    /// A named figure, quoted by the document's text as `{{name}}`.
    pub fn value(&mut self, key: &str, value: impl ToString) {
        self.values.push((key.to_string(), value.to_string()));
    }

    /// Prints the tables and writes target/bench/NAME.md (every table), NAME.SECTION.md (each
    /// section's) and NAME.values (a smoke run writes NAME-smoke.*, leaving a real run's
    /// results alone).
    pub fn write(&self) {
        let suffix = if is_bench_run() { "" } else { "-smoke" };
        let dir = bench_dir();
        let mut all = String::new();
        for (section, markdown) in &self.sections {
            if markdown.is_empty() {
                continue;
            }
            if !all.is_empty() {
                all.push('\n');
            }
            all.push_str(markdown);
            if !section.is_empty() {
                let path = dir.join(format!("{}{suffix}.{section}.md", self.name));
                std::fs::write(path, markdown).unwrap();
            }
        }
        println!("{all}");
        let md = dir.join(format!("{}{suffix}.md", self.name));
        std::fs::write(&md, &all).unwrap();
        let mut values = String::new();
        for (k, v) in &self.values {
            let _ = writeln!(values, "{k}={v}");
        }
        std::fs::write(dir.join(format!("{}{suffix}.values", self.name)), values).unwrap();
        eprintln!("{}: written to {}", self.name, md.display());
    }
}

/// "met" or "not met" for a target.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Formats nanoseconds with a sensible precision.
pub fn ns(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ns")
    } else if value < 1000.0 {
        format!("{value:.1} ns")
    } else {
        format!("{:.2} us", value / 1000.0)
    }
}

/// Formats microseconds.
pub fn us(value: f64) -> String {
    if value < 100.0 {
        format!("{value:.1} us")
    } else {
        format!("{value:.0} us")
    }
}

/// Builds a C program from benches/c/NAME.c with the flags the project's C examples use, into
/// target/bench/bin/NAME; extra arguments (such as -llbagent) follow the source.
pub fn build_c(name: &str, extra: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = bench_dir().join("bin");
    std::fs::create_dir_all(&out).unwrap();
    let exe = out.join(name);
    let status = std::process::Command::new(std::env::var("CC").unwrap_or("gcc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O2",
        ])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("benches/c").join(format!("{name}.c")))
        .arg("-o")
        .arg(&exe)
        .args(extra)
        .status()
        .expect("gcc runs (apt-get install gcc)");
    assert!(status.success(), "building benches/c/{name}.c failed");
    exe
}
