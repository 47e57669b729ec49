//! lbagent-probe: asks an lbagent what a director should do with its server, and says it the
//! way each checker reads it: an exit code for scripts, keepalived's MISC_CHECK (plain and
//! `misc_dynamic`), ldirectord's external check, a Nagios/Icinga plugin, JSON, or a live view
//! of many servers (`--watch`). `--help` documents every mode and its exit codes.

mod output;
mod verdict;
mod watch;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use lbagent::client::{self, ProbeOptions};

use output::Subject;
use verdict::Mode;

const AFTER_HELP: &str = "\
Exit status, by mode:
  (default)             0 serving (state up, weight above 0); 1 any other state (starting,
                        drain, maint, down, stopping, unknown service); 2 no valid answer
                        (timeout, refused, unreachable, not an lbagent, version mismatch,
                        authentication required, wrong key, unauthenticated); 64 usage error.
  --json                the same exit status; one JSON object on stdout.
  VIP VPORT RIP RPORT   ldirectord `checktype = external` (checkcommand = this program):
                        probes RIP at --agent-port; the same exit status (non-zero = down).
  --keepalived          keepalived MISC_CHECK: 0 serving; 1 anything else, including no
                        answer and usage errors.
  --keepalived-dynamic  keepalived MISC_CHECK with misc_dynamic: 2+W serving, where W is the
                        agent's weight percent scaled to 1..=--max-weight (default 100, at
                        most 253); 2 (IPVS weight 0, existing connections kept) draining
                        (state drain, or up at weight 0); 1 anything else, including no
                        answer and usage errors. Never 0.
  --nagios              Nagios/Icinga plugin: 0 OK serving; 1 WARNING drain, maint, up at
                        weight 0; 2 CRITICAL starting, down, stopping, timeout, refused,
                        unreachable, unauthenticated; 3 UNKNOWN unknown service, not an
                        lbagent, version mismatch, authentication required, wrong key, usage
                        error. One status line with performance data on stdout.
  --watch               a live view: probes every TARGET each --interval and prints a line
                        with a timestamp for each target's first answer and for every change
                        (state, reason, weight, message, restart, drain progress, kind of
                        failure), with the time since that target's previous line. JSON
                        lines with --json. Runs until interrupted.

With --key-file only an answer sealed with the key counts, and nothing else (junk, unsealed
or wrongly sealed answers, ICMP errors: anyone may forge them) ends the probe before
--timeout: it then fails naming what came instead (\"unauthenticated\"), or \"wrong key\" when
the agent answered the unsealed probe sent half-way but not the sealed one.

Every failure says what happened, on stderr (on stdout with --nagios). Keep --timeout below
the checker's own timeout (keepalived misc_timeout, ldirectord checktimeout, the monitoring
system's plugin timeout), so that a silent agent is reported as a timeout, not killed.

Examples:
  lbagent-probe 10.0.0.5                          # port 4950, the whole server
  lbagent-probe 10.0.0.5:4950 --service game --timeout 500
  lbagent-probe --keepalived-dynamic --max-weight 100 10.0.0.5:4950
  lbagent-probe 10.0.0.100 7000 10.0.0.5 7000     # as ldirectord runs it
  lbagent-probe --nagios 10.0.0.5
  lbagent-probe --watch --interval 500 10.0.0.5 10.0.0.6 [fd00::7]:4950
  lbagent-probe --key-file /etc/lbagent/keys 10.0.0.5   # authenticated (docs/SECURITY.md)
See docs/DIRECTORS.md for the checker configurations.";

#[derive(Parser, Debug)]
#[command(
    name = "lbagent-probe",
    version,
    about = "Ask an lbagent whether its server should receive new connections.",
    override_usage = "lbagent-probe [OPTIONS] TARGET\n       \
                      lbagent-probe [OPTIONS] VIP VPORT RIP RPORT\n       \
                      lbagent-probe --watch [--interval MS] [OPTIONS] TARGET...",
    after_help = AFTER_HELP,
    group(ArgGroup::new("mode").multiple(false)),
)]
struct Cli {
    /// The agent: HOST[:PORT], [IPv6]:PORT or a bare IPv6 address (port: --agent-port).
    /// Four values are ldirectord's VIP VPORT RIP RPORT; with --watch, any number of targets.
    #[arg(required = true, value_name = "TARGET")]
    targets: Vec<String>,

    /// Ask about this service instead of the whole server.
    #[arg(long, value_name = "NAME", default_value = "")]
    service: String,

    /// Milliseconds to wait for the answer; keep it below the checker's own timeout.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeout: u64,

    /// The agent's UDP port, for targets given without one and for ldirectord's RIP.
    #[arg(long, value_name = "PORT", default_value_t = lbagent::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    agent_port: u16,

    /// keepalived MISC_CHECK: exit 0 when serving, 1 otherwise.
    #[arg(long, group = "mode")]
    keepalived: bool,

    /// keepalived MISC_CHECK with misc_dynamic: exit 2 + weight, 2 when draining, 1 down.
    #[arg(long, group = "mode")]
    keepalived_dynamic: bool,

    /// With --keepalived-dynamic: the IPVS weight of a server at 100 %, 1..=253.
    #[arg(long, value_name = "N", default_value_t = 100, requires = "keepalived_dynamic", value_parser = clap::value_parser!(u8).range(1..=i64::from(verdict::MAX_DYNAMIC_WEIGHT)))]
    max_weight: u8,

    /// Nagios/Icinga plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line.
    #[arg(long, group = "mode")]
    nagios: bool,

    /// Print JSON on stdout (one object; with --watch, one per line).
    #[arg(long, conflicts_with_all = ["keepalived", "keepalived_dynamic", "nagios"])]
    json: bool,

    /// Watch every TARGET, printing each change with a timestamp, until interrupted.
    #[arg(long, group = "mode")]
    watch: bool,

    /// With --watch: milliseconds between rounds of probes.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "watch", value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    interval: u64,

    /// Seal probes with a key from this key file (lines "ID SECRET_HEX", mode 600) and accept
    /// only answers sealed with it; the agent needs the same key in its key_file.
    #[arg(long, value_name = "PATH")]
    key_file: Option<std::path::PathBuf>,

    /// With --key-file: the id of the key to use (default: the file's first key).
    #[arg(long, value_name = "ID", requires = "key_file")]
    key_id: Option<u32>,
}

impl Cli {
    fn mode(&self) -> Mode {
        if self.keepalived {
            Mode::Keepalived
        } else if self.keepalived_dynamic {
            Mode::KeepalivedDynamic {
                max_weight: self.max_weight,
            }
        } else if self.nagios {
            Mode::Nagios
        } else {
            Mode::Plain
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let lossy: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Whatever goes wrong, exit with a code the checker reads as a failure: under
    // misc_dynamic any code from 2 up would be taken as a weight.
    let fallback = verdict::mode_in_args(&lossy);
    match std::panic::catch_unwind(|| run(args, fallback)) {
        Ok(code) => ExitCode::from(code),
        Err(_) => ExitCode::from(verdict::usage_exit_code(fallback)),
    }
}

fn usage_error(mode: Mode, message: &str) -> u8 {
    if mode == Mode::Nagios {
        println!("LBAGENT UNKNOWN: usage: {message}");
    }
    eprintln!("lbagent-probe: {message}");
    verdict::usage_exit_code(mode)
}

fn run(args: Vec<OsString>, fallback: Mode) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                return 0;
            }
            if fallback == Mode::Nagios {
                let first = e.to_string();
                let first = first
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                println!("LBAGENT UNKNOWN: usage: {first}");
            }
            let _ = e.print();
            return verdict::usage_exit_code(fallback);
        }
    };
    let mode = cli.mode();
    if let Err(e) = client::check_service(&cli.service) {
        return usage_error(mode, &format!("--service: {e}"));
    }
    let key = match &cli.key_file {
        None => None,
        Some(path) => match client::load_key(path, cli.key_id) {
            Ok(key) => Some(key),
            Err(why) => return usage_error(mode, &format!("--key-file: {why}")),
        },
    };
    let options = ProbeOptions {
        service: cli.service.clone(),
        timeout: Duration::from_millis(cli.timeout),
        key,
        ..ProbeOptions::default()
    };
    if cli.watch {
        return watch(&cli, options);
    }
    let (label, target) = match cli.targets.as_slice() {
        [target] => (target.clone(), target.clone()),
        // ldirectord's external check: VIP VPORT RIP RPORT. The agent listens on its own
        // port on the real server, whatever the service's port is.
        [_vip, _vport, rip, _rport] => {
            let host = rip.trim_start_matches('[').trim_end_matches(']');
            let label = if host.contains(':') {
                format!("[{host}]:{}", cli.agent_port)
            } else {
                format!("{host}:{}", cli.agent_port)
            };
            (label, host.to_string())
        }
        other => {
            return usage_error(
                mode,
                &format!(
                    "expected TARGET, or VIP VPORT RIP RPORT (ldirectord), or --watch TARGET...; got {} arguments",
                    other.len()
                ),
            );
        }
    };
    let result = client::resolve_target(&target, cli.agent_port)
        .and_then(|addr| client::probe(addr, &options));
    let subject = Subject {
        target: &label,
        service: &cli.service,
    };
    let code = verdict::exit_code(mode, &result);
    match mode {
        Mode::Nagios => println!("{}", output::nagios_line(&subject, &result)),
        _ if cli.json => {
            if let Err(e) = &result {
                eprintln!("lbagent-probe: {subject}: {e}");
            }
            println!("{}", output::result_json(&subject, &result));
        }
        _ => match &result {
            Ok(answer) => {
                let mut line = output::answer_line(&subject, answer);
                if let Mode::KeepalivedDynamic { .. } = mode {
                    match code {
                        verdict::KEEPALIVED_DOWN => line.push_str(" -> keepalived: down"),
                        w => line.push_str(&format!(" -> keepalived weight {}", w - 2)),
                    }
                }
                println!("{line}");
            }
            Err(e) => eprintln!("lbagent-probe: {subject}: {e}"),
        },
    }
    code
}

fn watch(cli: &Cli, options: ProbeOptions) -> u8 {
    let mut targets = Vec::new();
    for t in &cli.targets {
        match client::resolve_target(t, cli.agent_port) {
            Ok(addr) => targets.push(watch::Watched {
                label: t.clone(),
                addr,
            }),
            Err(e) => return usage_error(Mode::Plain, &format!("{t}: {e}")),
        }
    }
    let interval = Duration::from_millis(cli.interval);
    match watch::run(&targets, &cli.service, options, interval, cli.json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lbagent-probe: {e}");
            verdict::EXIT_NO_ANSWER
        }
    }
}
