//! Every configuration in docs/DIRECTORS.md, read from the file itself, checked by the real
//! program and exercised against agents on loopback: keepalived's parser (`keepalived -t`),
//! the MISC_CHECK command as keepalived runs it, lbagent-director with its targets file and
//! systemd unit, ldirectord's own parser and checks (tests/ldirectord/harness.pl), the Nagios
//! command and the watch command. Only addresses and install paths are replaced.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use lbagent::{Agent, State};

const PROBE: &str = env!("CARGO_BIN_EXE_lbagent-probe");
const DIRECTOR: &str = env!("CARGO_BIN_EXE_lbagent-director");

/// A tagged code block: ```` ```LANG NAME ````.
struct Snippet {
    lang: String,
    name: String,
    text: String,
}

fn blocks(path: &Path) -> Vec<Snippet> {
    let doc = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("").to_string();
        let name = words.next().unwrap_or("").to_string();
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push(Snippet { lang, name, text });
    }
    out
}

fn directors_doc() -> PathBuf {
    repo().join("docs/DIRECTORS.md")
}

/// The one block tagged `lang name` in docs/DIRECTORS.md.
fn snippet(lang: &str, name: &str) -> String {
    let found: Vec<Snippet> = blocks(&directors_doc())
        .into_iter()
        .filter(|s| s.lang == lang && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one ```{lang} {name} block in DIRECTORS.md");
    found.into_iter().next().unwrap().text
}

/// The snippets this file tests; a new block without a test fails `every_block_is_tested`.
const TESTED: &[(&str, &str)] = &[
    ("keepalived", "udp-check"),
    ("keepalived", "misc-dynamic"),
    ("keepalived", "track-file"),
    ("targets", "lbagent-director"),
    ("systemd", "lbagent-director.service"),
    ("ldirectord", "external"),
    ("sh", "ldirectord-wrapper"),
    ("ldirectord", "simpletcp"),
    ("nagios", "command"),
    ("sh", "watch"),
    // Run against real agents and a real HAProxy by tests/director.rs.
    ("targets", "lbagent-director-push"),
    ("haproxy", "director-sink"),
];

#[test]
fn every_block_is_tested() {
    let found: BTreeSet<(String, String)> = blocks(&directors_doc())
        .into_iter()
        .map(|s| (s.lang, s.name))
        .collect();
    let tested: BTreeSet<(String, String)> = TESTED
        .iter()
        .map(|(l, n)| (l.to_string(), n.to_string()))
        .collect();
    assert_eq!(
        found, tested,
        "every block of DIRECTORS.md is tagged and tested"
    );
}

#[test]
fn readme_udp_check_is_the_one_of_directors_md() {
    let readme: Vec<Snippet> = blocks(&repo().join("README.md"))
        .into_iter()
        .filter(|s| s.lang == "keepalived" && s.name == "udp-check")
        .collect();
    assert_eq!(readme.len(), 1);
    assert_eq!(readme[0].text, snippet("keepalived", "udp-check"));
}

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("directors-doc-{name}"))
}

fn keepalived_check(config: &str, dir: &Path, name: &str) -> Output {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, config).unwrap();
    Command::new("keepalived")
        .args(["-t", "-l", "-f"])
        .arg(&path)
        .output()
        .expect("keepalived runs (make test installs it)")
}

#[test]
fn keepalived_accepts_every_configuration() {
    let dir = scratch("keepalived");
    for name in ["udp-check", "misc-dynamic", "track-file"] {
        let config = snippet("keepalived", name);
        let out = keepalived_check(&config, &dir, name);
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "keepalived -t rejects {name}: {out:?}"
        );
        // keepalived -t really checks, here without IPVS in the kernel: a typo fails.
        let broken = config.replacen("lb_algo", "lb_algorithm", 1);
        let out = keepalived_check(&broken, &dir, &format!("{name}-broken"));
        assert!(
            !out.status.success(),
            "keepalived -t accepts a typo: {out:?}"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown keyword 'lb_algorithm'"));
    }
}

/// The value of `keyword` inside a keepalived block (first occurrence), quotes removed.
fn keepalived_value(config: &str, keyword: &str) -> String {
    config
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(keyword).filter(|r| r.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {keyword}"))
        .split('#')
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string()
}

/// The probe's timeout in an argument list (its default when absent).
fn probe_timeout_ms(args: &[String]) -> u64 {
    args.iter()
        .position(|a| a == "--timeout")
        .map_or(1000, |i| args[i + 1].parse().unwrap())
}

fn run(args: &[String]) -> Output {
    Command::new(&args[0]).args(&args[1..]).output().unwrap()
}

#[test]
fn misc_dynamic_command_as_keepalived_runs_it() {
    let config = snippet("keepalived", "misc-dynamic");
    let misc_path = keepalived_value(&config, "misc_path");
    let misc_timeout: u64 = keepalived_value(&config, "misc_timeout").parse().unwrap();
    let (agent, addr) = agent("initial_state=up");
    // keepalived splits misc_path on white space and executes it, no shell.
    let args: Vec<String> = misc_path
        .split_whitespace()
        .map(|w| match w {
            "/usr/local/bin/lbagent-probe" => PROBE.to_string(),
            "10.0.0.5:4950" => addr.to_string(),
            other => other.to_string(),
        })
        .collect();
    assert!(
        probe_timeout_ms(&args) < misc_timeout * 1000,
        "the probe's timeout is shorter than misc_timeout"
    );
    let code = |args: &[String]| run(args).status.code();
    assert_eq!(code(&args), Some(102), "up at 100%: weight 100");
    agent.set_weight("", 40).unwrap();
    assert_eq!(code(&args), Some(42), "up at 40%: weight 40");
    agent.set_state("", State::Drain, None).unwrap();
    assert_eq!(code(&args), Some(2), "drain: weight 0, kept in the table");
    agent.set_state("", State::Down, None).unwrap();
    assert_eq!(code(&args), Some(1), "down");
    drop(agent);
    assert_eq!(code(&args), Some(1), "no agent");
}

/// An agent on port 4950 of a loopback address of its own (ldirectord's external check,
/// Nagios's $HOSTADDRESS$ and bare addresses use the default port).
fn agent_on_4950(extra: &str) -> (Agent, IpAddr) {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    for attempt in 0..200u64 {
        let x = seed
            .wrapping_add(attempt)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 16;
        let ip = Ipv4Addr::new(
            127,
            100 + (x % 100) as u8,
            (x >> 8) as u8,
            1 + ((x >> 16) % 250) as u8,
        );
        if let Ok(agent) = Agent::start(&format!("listen={ip}:4950 {extra}")) {
            return (agent, IpAddr::V4(ip));
        }
    }
    panic!("no free loopback address for port 4950");
}

/// `text` with the documentation's addresses and paths replaced.
fn localise(text: &str, replacements: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        out = out.replace(from, to);
    }
    out
}

#[test]
fn track_file_poller_configuration() {
    let dir = scratch("poller");
    let keepalived = snippet("keepalived", "track-file");
    let targets = snippet("targets", "lbagent-director");
    let unit = snippet("systemd", "lbagent-director.service");

    // The names and the directory agree across the three snippets.
    let all_files: Vec<PathBuf> = keepalived
        .lines()
        .filter_map(|l| l.trim().strip_prefix("file "))
        .map(PathBuf::from)
        .collect();
    // A verdict file and a weight file (NAME.weight, for weight=N) per real server.
    let (weight_files, files): (Vec<PathBuf>, Vec<PathBuf>) = all_files
        .into_iter()
        .partition(|f| f.extension().is_some_and(|e| e == "weight"));
    assert_eq!((files.len(), weight_files.len()), (2, 2));
    for (file, weight_file) in files.iter().zip(&weight_files) {
        assert_eq!(weight_file, &file.with_extension("weight"));
    }
    // The targets' weight= is the real servers' weight in keepalived.
    for line in targets.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains(" weight=100"), "{line}");
    }
    assert_eq!(keepalived.matches("        weight 100\n").count(), 2);
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let exec: Vec<&str> = exec_start.split_whitespace().collect();
    let value = |flag: &str| exec[exec.iter().position(|w| *w == flag).unwrap() + 1];
    let names: Vec<String> = targets
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    for file in &files {
        assert_eq!(file.parent().unwrap(), Path::new(value("--track-dir")));
        assert!(names.contains(&file.file_name().unwrap().to_str().unwrap().to_string()));
        assert!(keepalived.contains(&format!(
            "track_file {}",
            file.file_name().unwrap().to_str().unwrap()
        )));
    }

    // systemd accepts the unit (with the binary where the test built it).
    let unit_path = dir.join("lbagent-director.service");
    std::fs::write(
        &unit_path,
        unit.replace("/usr/local/bin/lbagent-director", DIRECTOR),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze runs");
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("lbagent-director"))
        .map(String::from)
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{out:?}");
    // The unit the package installs is this one, with the package's path.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/lbagent-director.service"),
    )
    .unwrap();
    assert_eq!(
        shipped,
        unit.replace("/usr/local/bin/", "/usr/bin/"),
        "systemd/lbagent-director.service differs from the block of docs/DIRECTORS.md"
    );

    // The targets file parses, and the unit's command line runs against two agents.
    let (a5, addr5) = agent("initial_state=up");
    let (a6, addr6) = agent("initial_state=up services=game");
    let targets_path = dir.join("targets.conf");
    std::fs::write(
        &targets_path,
        localise(
            &targets,
            &[
                ("10.0.0.5:4950", addr5.to_string()),
                ("10.0.0.6:4950", addr6.to_string()),
            ],
        ),
    )
    .unwrap();
    let check = Command::new(DIRECTOR)
        .args(["--check", "--targets"])
        .arg(&targets_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let track = dir.join("run-lbagent");
    std::fs::create_dir(&track).unwrap();
    let args: Vec<String> = exec
        .iter()
        .map(|w| match *w {
            "/usr/local/bin/lbagent-director" => DIRECTOR.to_string(),
            "/etc/lbagent/targets.conf" => targets_path.to_str().unwrap().to_string(),
            "/run/lbagent" => track.to_str().unwrap().to_string(),
            // Another run may hold the documented port: any free one.
            "127.0.0.1:9792" => "127.0.0.1:0".to_string(),
            other => other.to_string(),
        })
        .collect();
    let timeout = probe_timeout_ms(&args);
    assert!(timeout < value("--interval").parse::<u64>().unwrap());
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = |name: &str| std::fs::read_to_string(track.join(name)).unwrap_or_default();
    let both = |w5: &str, w6: &str| {
        eventually(Duration::from_secs(20), || {
            file("rs5") == w5 && file("rs6") == w6
        })
    };
    assert!(both("0\n", "0\n"));
    // The weight files follow the agents' percent: 0 added at 100 %, -50 at 50 %.
    let weights = |w5: &str, w6: &str| {
        eventually(Duration::from_secs(20), || {
            file("rs5.weight") == w5 && file("rs6.weight") == w6
        })
    };
    assert!(weights("0\n", "0\n"));
    a5.set_weight("", 50).unwrap();
    assert!(weights("-50\n", "0\n"));
    a5.set_weight("", 100).unwrap();
    a6.set_state("game", State::Drain, Some("deploy")).unwrap();
    assert!(both("0\n", "1\n"), "rs6 asks about service game");
    a5.set_state("", State::Down, None).unwrap();
    assert!(both("1\n", "1\n"));
    a5.set_state("", State::Up, None).unwrap();
    a6.set_state("game", State::Up, None).unwrap();
    assert!(both("0\n", "0\n"));
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs ldirectord's parser and one round of its checks on `config`; returns the decision
/// ("up" or "down") for each real server's IP, failing on any error or warning.
fn ldirectord_round(config: &str, dir: &Path) -> BTreeMap<IpAddr, String> {
    let path = dir.join("ldirectord.cf");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("perl")
        .arg(repo().join("tests/ldirectord/harness.pl"))
        .arg("/usr/sbin/ldirectord")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ldirectord rejects the configuration: {stderr}"
    );
    assert!(
        !stderr.contains("Warning") && !stderr.contains("perl warning"),
        "{stderr}"
    );
    // The check commands' own output shares stdout with the decisions.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("real "))
        .map(|l| {
            // real IP:PORT STATE
            let mut w = l.split_whitespace().skip(1);
            let server: std::net::SocketAddr = w.next().unwrap().parse().unwrap();
            assert_eq!(server.port(), 7000, "{l}");
            (server.ip(), w.next().unwrap().to_string())
        })
        .collect()
}

/// The decisions expected for the two real servers.
fn decisions(ip5: IpAddr, d5: &str, ip6: IpAddr, d6: &str) -> BTreeMap<IpAddr, String> {
    BTreeMap::from([(ip5, d5.to_string()), (ip6, d6.to_string())])
}

fn ldirectord_value(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn ldirectord_external_and_its_wrapper() {
    let dir = scratch("ldirectord-external");
    let config = snippet("ldirectord", "external");
    let (a5, ip5) = agent_on_4950("initial_state=up services=game");
    let (a6, ip6) = agent_on_4950("initial_state=up services=game");
    let local = localise(
        &config,
        &[
            ("10.0.0.5", ip5.to_string()),
            ("10.0.0.6", ip6.to_string()),
            ("/usr/local/bin/lbagent-probe", PROBE.to_string()),
        ],
    );
    let checktimeout: u64 = ldirectord_value(&config, "checktimeout").parse().unwrap();
    assert!(probe_timeout_ms(&[]) < checktimeout * 1000);
    assert_eq!(
        ldirectord_round(&local, &dir),
        decisions(ip5, "up", ip6, "up")
    );
    a6.set_state("", State::Drain, None).unwrap();
    assert_eq!(
        ldirectord_round(&local, &dir),
        decisions(ip5, "up", ip6, "down")
    );

    // The wrapper, as checkcommand: asks about service game.
    let wrapper = snippet("sh", "ldirectord-wrapper");
    let script = dir.join("lbagent-ldirectord-check");
    std::fs::write(
        &script,
        wrapper.replace("/usr/local/bin/lbagent-probe", PROBE),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapped_args: Vec<String> = wrapper
        .lines()
        .find(|l| l.starts_with("exec "))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(probe_timeout_ms(&wrapped_args) < checktimeout * 1000);
    let with_wrapper = local.replace(PROBE, script.to_str().unwrap());
    a6.set_state("", State::Up, None).unwrap();
    a5.set_state("game", State::Maint, None).unwrap();
    assert_eq!(
        ldirectord_round(&with_wrapper, &dir),
        decisions(ip5, "down", ip6, "up")
    );
    drop(a6); // no agent: refused
    assert_eq!(
        ldirectord_round(&with_wrapper, &dir),
        decisions(ip5, "down", ip6, "down")
    );
}

#[test]
fn ldirectord_simpletcp_over_udp() {
    let dir = scratch("ldirectord-simpletcp");
    let config = snippet("ldirectord", "simpletcp");
    let request = ldirectord_value(&config, "request");
    assert!(
        request.len() >= 64 && !request.starts_with('/'),
        "{request}"
    );
    let (a5, ip5) = agent_on_4950("initial_state=up");
    let (_a6, ip6) = agent_on_4950("initial_state=up");
    let local = localise(
        &config,
        &[("10.0.0.5", ip5.to_string()), ("10.0.0.6", ip6.to_string())],
    );
    assert_eq!(
        ldirectord_round(&local, &dir),
        decisions(ip5, "up", ip6, "up")
    );
    // "drain up 100% ..." does not match ^up: ldirectord waits for another line, then fails.
    a5.set_state("", State::Drain, Some("deploy")).unwrap();
    assert_eq!(
        ldirectord_round(&local, &dir),
        decisions(ip5, "down", ip6, "up")
    );
    a5.set_state("", State::Up, None).unwrap();
    a5.set_weight("", 0).unwrap();
    assert_eq!(
        ldirectord_round(&local, &dir),
        decisions(ip5, "down", ip6, "up")
    );
}

#[test]
fn nagios_command_line() {
    let command = snippet("nagios", "command");
    let line = command
        .lines()
        .find_map(|l| l.trim().strip_prefix("command_line"))
        .unwrap()
        .trim()
        .to_string();
    let (agent, ip) = agent_on_4950("initial_state=up");
    let args: Vec<String> = line
        .replace("$HOSTADDRESS$", &ip.to_string())
        .replace("/usr/local/bin/lbagent-probe", PROBE)
        .split_whitespace()
        .map(String::from)
        .collect();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("LBAGENT OK: {ip}: up")));
    agent.set_state("", State::Maint, None).unwrap();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("LBAGENT WARNING: "));
}

#[test]
fn watch_command_line() {
    let command = snippet("sh", "watch");
    let (_a5, ip5) = agent_on_4950("initial_state=up");
    let (_a6, ip6) = agent_on_4950("initial_state=drain");
    let args: Vec<String> = localise(
        command.trim(),
        &[("10.0.0.5", ip5.to_string()), ("10.0.0.6", ip6.to_string())],
    )
    .split_whitespace()
    .map(|w| {
        if w == "lbagent-probe" {
            PROBE.to_string()
        } else {
            w.to_string()
        }
    })
    .collect();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let seen: Vec<String> = (0..2).map(|_| lines.next().unwrap().unwrap()).collect();
    let _ = child.kill();
    let _ = child.wait();
    for want in [
        format!(" {ip5}: up (set by host)"),
        format!(" {ip6}: drain (set by host)"),
    ] {
        assert!(seen.iter().any(|l| l.contains(&want)), "{want} in {seen:?}");
    }
}
