//! lbagent-probe: asks an lbagent what a director should do with its server.
//!
//! Exit codes: 0 serving (send it new connections), 1 not serving (any other state), 2 no
//! valid answer (timeout, ICMP unreachable, not an agent, version mismatch), 64 usage error.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lbagent::client::{self, Answer, ProbeError, ProbeOptions};

const EXIT_SERVING: u8 = 0;
const EXIT_NOT_SERVING: u8 = 1;
const EXIT_NO_ANSWER: u8 = 2;
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "lbagent-probe",
    version,
    about = "Ask an lbagent whether its server should receive new connections.",
    after_help = "\
Exit status:
  0   serving: the server should receive new connections (state up, weight above 0)
  1   not serving: starting, drain, maint, down, stopping, or unknown service
  2   no valid answer: timeout, ICMP port unreachable, not an lbagent, version mismatch
  64  usage error

Examples:
  lbagent-probe 10.0.0.5                  # port 4950, the whole server
  lbagent-probe 10.0.0.5:4950 --service game --timeout 500
  lbagent-probe [fd00::5]:4950 --json"
)]
struct Cli {
    /// The agent: HOST[:PORT], [IPv6]:PORT or a bare IPv6 address (default port 4950).
    target: String,

    /// Ask about this service instead of the whole server.
    #[arg(long, value_name = "NAME", default_value = "")]
    service: String,

    /// Milliseconds to wait for the answer (keep it below the checker's own timeout).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeout: u64,

    /// Print one JSON object on stdout instead of a line of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if cli.service.len() > lbagent::wire::MAX_NAME_LEN {
        eprintln!(
            "lbagent-probe: --service: a service name is at most {} bytes",
            lbagent::wire::MAX_NAME_LEN
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let options = ProbeOptions {
        service: cli.service.clone(),
        timeout: Duration::from_millis(cli.timeout),
        ..ProbeOptions::default()
    };
    let result = client::resolve_target(&cli.target, lbagent::DEFAULT_PORT)
        .and_then(|addr| client::probe(addr, &options));
    match result {
        Ok(answer) => {
            if cli.json {
                println!("{}", answer_json(&cli, &answer));
            } else {
                println!("{}", answer_line(&cli, &answer));
            }
            ExitCode::from(if answer.is_serving() {
                EXIT_SERVING
            } else {
                EXIT_NOT_SERVING
            })
        }
        Err(e) => {
            eprintln!("lbagent-probe: {}: {e}", cli.target);
            if cli.json {
                println!("{}", error_json(&cli, &e));
            }
            ExitCode::from(match e {
                ProbeError::BadTarget(_) => EXIT_USAGE,
                _ => EXIT_NO_ANSWER,
            })
        }
    }
}

fn what(cli: &Cli) -> String {
    if cli.service.is_empty() {
        cli.target.clone()
    } else {
        format!("{} service {}", cli.target, cli.service)
    }
}

fn answer_line(cli: &Cli, a: &Answer) -> String {
    let reason = a.reason.map_or_else(
        || format!("reason {}", a.reason_code),
        |r| r.describe().to_string(),
    );
    let load = if a.capacity > 0 {
        format!("{}/{}", a.in_use, a.capacity)
    } else {
        format!("{}", a.in_use)
    };
    let mut line = format!(
        "{}: {} ({reason}), weight {}%, load {load}, for {:.1} s, generation {}, rtt {:.2} ms",
        what(cli),
        a.state,
        a.weight_pct,
        f64::from(a.since_ms) / 1000.0,
        a.generation,
        a.rtt.as_secs_f64() * 1000.0,
    );
    if !a.message.is_empty() {
        line.push_str(&format!(": \"{}\"", a.message));
    }
    line
}

fn answer_json(cli: &Cli, a: &Answer) -> serde_json::Value {
    serde_json::json!({
        "target": cli.target,
        "service": cli.service,
        "serving": a.is_serving(),
        "state": a.state.name(),
        "reason": a.reason.map_or("unknown", |r| r.name()),
        "reason_code": a.reason_code,
        "weight_pct": a.weight_pct,
        "in_use": a.in_use,
        "capacity": a.capacity,
        "generation": a.generation,
        "since_ms": a.since_ms,
        "instance_id": format!("{:016x}", a.instance_id),
        "message": a.message,
        "rtt_us": a.rtt.as_micros() as u64,
    })
}

fn error_json(cli: &Cli, e: &ProbeError) -> serde_json::Value {
    serde_json::json!({
        "target": cli.target,
        "service": cli.service,
        "serving": false,
        "error": e.kind(),
        "detail": e.to_string(),
    })
}
