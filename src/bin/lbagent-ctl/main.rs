//! lbagent-ctl: an operator's command for an agent's control socket (`control=PATH`). Takes a
//! server out for maintenance (drain or maint), for a while or until `up`, without touching
//! the application, and shows what the host and the operator say and what directors are told.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use lbagent::State;
use lbagent::proto::control::{self, MAX_FOR_MS, Request};

const AFTER_HELP: &str = "\
Commands:
  drain   no new connections; existing ones finish (directors: weight 0, or out)
  maint   out of service (directors: out)
  up      clear the operator's override: the host's own state is answered again
  status  show the host's view, the operator's override and what directors are told

An override wins over the host's state only toward less serving: draining a server the host
reports DOWN still answers DOWN. With --for it ends by itself. With state_file= in the
agent's configuration it survives a restart of the server.

Who may connect: root, the user that owns the socket (the server's user) or a member of its
group as primary group (the socket is mode 0660).

Exit status: 0 done; 1 the agent refused the command (the reason is printed); 2 no agent
answers at PATH; 64 usage error.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Command {
    Drain,
    Maint,
    Up,
    Status,
}

#[derive(Parser, Debug)]
#[command(
    name = "lbagent-ctl",
    version,
    about = "Take an lbagent-backed server out of service (drain, maint) or back (up) through its control socket, and show its state.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The agent's control socket (its control= key).
    #[arg(value_name = "PATH")]
    socket: PathBuf,

    /// What to do.
    #[arg(value_enum, value_name = "COMMAND")]
    command: Command,

    /// How long the override lasts (drain, maint), such as 90s, 10m or 1h30m; by default
    /// until `up`.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Why (drain, maint): shown to directors and in status, logged by the agent.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (such as 90s, 10m, 1h30m)"))?;
    if d.is_zero() || d.as_millis() > u128::from(MAX_FOR_MS) {
        return Err("expected more than 0 and at most 366 days".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let usage = |why: &str| {
        eprintln!("lbagent-ctl: {why}");
        ExitCode::from(64)
    };
    let takes_options = matches!(cli.command, Command::Drain | Command::Maint);
    if !takes_options && (cli.duration.is_some() || cli.reason.is_some()) {
        return usage("--for and --reason go with drain or maint");
    }
    let reason = cli.reason.as_deref().unwrap_or("");
    if reason.contains(['\n', '\r']) {
        return usage("--reason must be one line");
    }
    let request = match cli.command {
        Command::Status => Request::Status,
        command => Request::Set {
            state: match command {
                Command::Drain => State::Drain,
                Command::Maint => State::Maint,
                _ => State::Up,
            },
            for_ms: cli.duration.map_or(0, |d| d.as_millis() as u64),
            reason: reason.as_bytes(),
        },
    };
    let mut line = Vec::new();
    control::write_request(&request, &mut line);
    let reply = match exchange(&cli, &line) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("lbagent-ctl: {}: {why}", cli.socket.display());
            return ExitCode::from(2);
        }
    };
    let pairs = control::parse_reply(&reply);
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    if let Some((_, why)) = pairs.iter().find(|(k, _)| *k == "error") {
        eprintln!("lbagent-ctl: the agent refused: {why}");
        return ExitCode::from(1);
    }
    if pairs.first() != Some(&("ok", "")) {
        eprintln!(
            "lbagent-ctl: {}: not an lbagent control socket",
            cli.socket.display()
        );
        return ExitCode::from(2);
    }
    let view = |prefix: &str| {
        let message = get(&format!("{prefix}_message"));
        format!(
            "{} ({}), weight {}%{}",
            get(&format!("{prefix}_state")),
            get(&format!("{prefix}_reason")),
            get(&format!("{prefix}_weight")),
            if message.is_empty() {
                String::new()
            } else {
                format!(": \"{message}\"")
            }
        )
    };
    println!("answer:     {}", view("answer"));
    println!("host:       {}", view("host"));
    let operator = match get("operator_state") {
        "none" | "" => "none".to_string(),
        state => {
            let message = get("operator_message");
            let until = match (
                get("operator_left_ms").parse::<u64>(),
                get("operator_until_unix_ms").parse::<u64>(),
            ) {
                (Ok(left), Ok(until)) => format!(
                    " for {} more (until {})",
                    humantime::format_duration(Duration::from_secs(left.div_ceil(1000))),
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(until))
                ),
                _ => " until `lbagent-ctl ... up`".to_string(),
            };
            format!(
                "{state}{until}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": \"{message}\"")
                }
            )
        }
    };
    println!("operator:   {operator}");
    let note = get("state_file");
    if note != "none" {
        println!("state file: {note}");
    }
    if note.starts_with("failed") {
        eprintln!("lbagent-ctl: the override holds, but will not survive a restart");
    }
    ExitCode::SUCCESS
}

/// Sends the request line and reads the whole reply (the agent closes after it).
fn exchange(cli: &Cli, line: &[u8]) -> Result<String, String> {
    let mut stream = UnixStream::connect(&cli.socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("{e}: no agent serves it (is the server running, with control= set?)")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "{e}: the socket is the server's (mode 0660): run as its user, a member of its \
             group, or root"
        ),
        _ => e.to_string(),
    })?;
    let timeout = Some(Duration::from_secs(3));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    stream.write_all(line).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream
        .take(control::MAX_REPLY as u64 + 1)
        .read_to_end(&mut reply)
        .map_err(|e| format!("no reply: {e}"))?;
    if reply.is_empty() {
        return Err("the agent closed without a reply".into());
    }
    String::from_utf8(reply).map_err(|_| "not an lbagent control socket".into())
}
