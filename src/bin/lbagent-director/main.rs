//! lbagent-director: a fork-free poller for keepalived at scale. One process and one UDP
//! socket probe every real server's lbagent; the verdicts go into keepalived `track_file`
//! files, which `FILE_CHECK` watches through inotify. No fork per check (keepalived's
//! MISC_CHECK forks once per real server per interval), so one core polls thousands of real
//! servers. docs/DIRECTORS.md has the keepalived configuration.

mod haproxy;
mod health;
mod log;
mod metrics;
mod poller;
mod targets;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use log::{Level, Log};
use poller::{Poller, Settings};
use track::TrackDir;

const AFTER_HELP: &str = "\
Targets file: one real server per line, fields separated by spaces:
  NAME  ADDRESS  [service=NAME]  [key=PATH]  [weight=N]  [haproxy=BACKEND/SERVER@SOCKET ...]
NAME names the track file DIR/NAME (letters, digits, _ . -); ADDRESS is numeric,
IPv4[:PORT] or [IPv6]:PORT, port 4950 by default; # starts a comment; service= asks about one
service instead of the whole server; key= names a key file for authenticated probes (its first
key seals every probe, and only answers sealed with it count); weight= is the real server's
weight in keepalived: DIR/NAME.weight then follows the agent's weight percent (slow start,
load); each haproxy= names an HAProxy server that the director sets through that HAProxy's
runtime API (stats socket, level admin): state ready, drain or maint, health up or down, and
weight, whenever the verdict or the answer changes.

Push: every probe also subscribes to the agent's changes (unless --no-subscribe); an agent
that grants it (a key= target, or an agent with subscribe=allow) pushes each change at once,
so a drain reaches the files and HAProxy in milliseconds; polling goes on as the liveness
check. What the agent says about itself (drain, down, maint, the watchdog) is applied at
once; --rise and --fall count what the poller finds out itself (answers, timeouts).

Track files: DIR/NAME holds 0 while the server should receive new connections (state up,
weight above 0) and 1 otherwise: at once when the agent says it must not get traffic, after
--rise successful checks in a row to come back, after --fall probes without an answer in a
row to go.
Each change replaces the file atomically (a temporary file renamed over it). At start a
target's verdict is what its file says; a missing file is written as 1 at once. With
weight=N, DIR/NAME.weight holds round(N x percent / 100) - N (at least 1 - N) while the
server serves: keepalived adds it to the weight (track_file ... weight 1).

Signals: SIGHUP reloads the targets file (unchanged targets keep their state; a removed
target's file is set to 1; a file with an error is rejected whole and logged). SIGTERM or
SIGINT stops; the files keep their last values.

Metrics: --metrics ADDR:PORT serves GET /metrics in Prometheus' text format from the poll
loop: each target's verdict, the agent's last state, the age of its last answer, its round
trip, transitions, timeouts, whether its track file is written; round-trip and schedule-lag
histograms; HAProxy commands and sinks.

systemd: run as Type=notify (NOTIFY_SOCKET): READY=1 once the targets are loaded, STATUS=
with the verdicts, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM; with WatchdogSec=,
WATCHDOG=1 at half of it while the poll loop keeps its schedule.

Exit status: 0 stopped by a signal (or --check passed); 1 a bad targets file, track
directory or socket; 64 usage error.

Detection time: milliseconds for a change the agent pushes; about interval x fall + timeout
for an agent that stops answering. See docs/DIRECTORS.md.";

#[derive(Parser, Debug)]
#[command(
    name = "lbagent-director",
    version,
    about = "Poll thousands of lbagents from one process and feed keepalived track files, with no fork per check.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The targets file.
    #[arg(long, value_name = "FILE")]
    targets: PathBuf,

    /// The directory of the track files (it must exist; tmpfs such as /run/lbagent is best).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    track_dir: Option<PathBuf>,

    /// Milliseconds between two checks of a target.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    interval: u64,

    /// Milliseconds to wait for an answer; less than --interval.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeout: u64,

    /// Successful checks in a row that put a target back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    rise: u32,

    /// Failed checks in a row that take a target out.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    fall: u32,

    /// Percent by which each interval is randomly stretched or shrunk, spreading the checks.
    #[arg(long, value_name = "PCT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=50))]
    jitter: u32,

    /// Seconds between summary lines in the log (0: none).
    #[arg(long, value_name = "S", default_value_t = 300)]
    stats_interval: u64,

    /// Do not ask agents to push changes: poll only (by default every probe subscribes, and
    /// agents that grant it push each change at once).
    #[arg(long)]
    no_subscribe: bool,

    /// Serve GET /metrics (Prometheus' text format) on this numeric address, such as
    /// 127.0.0.1:9792.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,

    /// Check the targets file, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let log = Log::from_env();
    let (targets, keys) = match targets::load(&cli.targets) {
        Ok(t) => t,
        Err(e) => {
            log.line(Level::Error, format_args!("{e}"));
            return ExitCode::from(1);
        }
    };
    if cli.check {
        let services = targets.iter().filter(|t| !t.service.is_empty()).count();
        let keys = targets.iter().filter(|t| t.key.is_some()).count();
        println!(
            "{}: {} targets ({services} with a service, {keys} with a key): ok",
            cli.targets.display(),
            targets.len()
        );
        return ExitCode::SUCCESS;
    }
    let interval = Duration::from_millis(cli.interval);
    let timeout = Duration::from_millis(cli.timeout);
    // The shortest jittered interval must leave room for the timeout, or checks overlap.
    let shortest = interval.mul_f64(1.0 - f64::from(cli.jitter) / 100.0);
    if timeout >= shortest {
        eprintln!(
            "lbagent-director: --timeout {} ms must be shorter than the shortest interval, {} ms (--interval {} ms less {}% jitter)",
            cli.timeout,
            shortest.as_millis(),
            cli.interval,
            cli.jitter
        );
        return ExitCode::from(64);
    }
    let Some(dir) = cli.track_dir.as_deref() else {
        return ExitCode::from(64); // clap requires it without --check
    };
    let track = match TrackDir::open(dir) {
        Ok(t) => t,
        Err(e) => {
            log.line(Level::Error, format_args!("{e}"));
            return ExitCode::from(1);
        }
    };
    let settings = Settings {
        interval,
        timeout,
        rise: cli.rise,
        fall: cli.fall,
        jitter_pct: cli.jitter,
        stats_every: Duration::from_secs(cli.stats_interval),
        subscribe: !cli.no_subscribe,
    };
    let systemd = match lbagent::systemd::NotifyTarget::from_env() {
        Ok(target) => target,
        Err(e) => {
            log.line(Level::Error, format_args!("{e}"));
            return ExitCode::from(1);
        }
    };
    let result = Poller::new(settings, log, track, cli.targets.clone(), targets, keys)
        .and_then(|mut poller| {
            if let Some(addr) = cli.metrics {
                let bound = poller.serve_metrics(addr)?;
                Log::from_env().line(
                    Level::Info,
                    format_args!("metrics: GET http://{bound}/metrics"),
                );
            }
            if let Some(target) = systemd {
                let watchdog = target.watchdog;
                let notifier = lbagent::systemd::Notifier::open(target)
                    .map_err(|e| format!("cannot open systemd's notification socket: {e}"))?;
                poller.notify_systemd(notifier, watchdog);
            }
            Ok(poller)
        })
        .and_then(Poller::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            Log::from_env().line(Level::Error, format_args!("{e}"));
            ExitCode::from(1)
        }
    }
}
