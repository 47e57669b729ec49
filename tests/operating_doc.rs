//! docs/OPERATING.md run as written: the example server unit checked by `systemd-analyze
//! verify` and its LBAGENT_CONFIG started; the lbagent-ctl commands run against an agent, with
//! the output the doc shows; and the Prometheus configuration given to Debian's real Prometheus,
//! which scrapes an agent and a director: queries through its HTTP API return the states the
//! test set.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{doc_block, eventually, scratch_dir};
use lbagent::{Agent, State};

const DOC: &str = "docs/OPERATING.md";
const CTL: &str = env!("CARGO_BIN_EXE_lbagent-ctl");

/// Every tagged block of the doc, as (language, name).
fn tagged_blocks() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(common::repo().join(DOC)).unwrap();
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("```") {
            if !inside {
                let mut words = rest.split_whitespace();
                if let (Some(lang), Some(name)) = (words.next(), words.next()) {
                    found.push((lang.to_string(), name.to_string()));
                } else {
                    assert!(rest.trim().is_empty(), "{line}");
                }
            }
            inside = !inside;
        }
    }
    found
}

#[test]
fn every_block_is_tested() {
    let tested = [
        ("yaml", "prometheus.yml"),
        ("systemd", "my-server.service"),
        ("sh", "lbagent-ctl"),
        ("text", "lbagent-ctl-output"),
    ];
    let blocks = tagged_blocks();
    for (lang, name) in &blocks {
        assert!(
            tested.contains(&(lang.as_str(), name.as_str())),
            "```{lang} {name} in {DOC} has no test"
        );
    }
    assert_eq!(blocks.len(), tested.len(), "{blocks:?}");
}

#[test]
fn the_example_server_unit_verifies_and_its_configuration_starts() {
    let dir = scratch_dir("operating-unit");
    let unit = doc_block(DOC, "systemd", "my-server.service");
    // The package ships this block as its example.
    assert_eq!(
        std::fs::read_to_string(common::repo().join("systemd/example-server.service")).unwrap(),
        unit,
        "systemd/example-server.service differs from the block of {DOC}"
    );
    let path = dir.join("my-server.service");
    // The example's server is a stand-in: any program that exists.
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/my-server",
            env!("CARGO_BIN_EXE_lbagent-probe"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("my-server"))
        .map(String::from)
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "{out:?}");
    // Its LBAGENT_CONFIG is valid and starts an agent (with this test's paths and ports).
    let config = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=\"LBAGENT_CONFIG="))
        .and_then(|c| c.strip_suffix('"'))
        .expect("an LBAGENT_CONFIG line");
    let config = config
        .replace("/run/my-server/", &format!("{}/", dir.display()))
        .replace("/var/lib/my-server/", &format!("{}/", dir.display()))
        .replace("0.0.0.0:8080", "127.0.0.1:0");
    let agent = Agent::start(&format!("listen=127.0.0.1:0 {config}")).expect("it starts");
    assert!(dir.join("lbagent.sock").exists());
    drop(agent);
}

fn ctl_lines(socket: &std::path::Path) -> Vec<Vec<String>> {
    doc_block(DOC, "sh", "lbagent-ctl")
        .lines()
        .map(|l| {
            shell_words(l)
                .into_iter()
                .skip(1)
                .map(|w| {
                    if w == "/run/my-server/lbagent.sock" {
                        socket.display().to_string()
                    } else {
                        w
                    }
                })
                .collect()
        })
        .collect()
}

/// Splits a command line on spaces, keeping double-quoted words whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn the_lbagent_ctl_commands_run_and_print_what_the_doc_shows() {
    let dir = scratch_dir("operating-ctl");
    let socket = dir.join("lbagent.sock");
    let state = dir.join("lbagent.state");
    let (agent, _) = common::agent(&format!(
        "initial_state=up control={} state_file={}",
        socket.display(),
        state.display()
    ));
    agent.set_state("", State::Up, Some("ready")).unwrap();
    let commands = ctl_lines(&socket);
    assert_eq!(commands.len(), 3);
    let out = Command::new(CTL).args(&commands[0]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let shown = doc_block(DOC, "text", "lbagent-ctl-output");
    // Line by line, what the doc shows is what the tool prints, but for the times and paths.
    let printed_lines: Vec<&str> = printed.lines().collect();
    let shown_lines: Vec<&str> = shown.lines().collect();
    assert_eq!(printed_lines.len(), shown_lines.len(), "{printed}");
    for (p, s) in printed_lines.iter().zip(&shown_lines) {
        if s.starts_with("operator:") {
            assert!(
                p.starts_with("operator:   drain for 30m")
                    || p.starts_with("operator:   drain for 29m"),
                "{p}"
            );
            assert!(p.ends_with(": \"kernel update\""), "{p}");
        } else if s.starts_with("state file:") {
            assert_eq!(*p, format!("state file: written {}", state.display()));
        } else {
            assert_eq!(p, s);
        }
    }
    for command in &commands[1..] {
        let out = Command::new(CTL).args(command).output().unwrap();
        assert!(out.status.success(), "{command:?}: {out:?}");
    }
    assert!(agent.status("").is_serving(), "up at the end");
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Prometheus answers with chunked encoding: the JSON sits between the chunk sizes.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    Some(body[start..=end].to_string())
}

/// The value of the one sample `query` returns through Prometheus' HTTP API, if any.
fn query(prometheus: SocketAddr, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(prometheus, &format!("/api/v1/query?query={encoded}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_an_agent_and_a_director_and_answers_queries() {
    let dir = scratch_dir("operating-prometheus");
    let socket = dir.join("ctl.sock");
    let (agent, udp) = common::agent(&format!(
        "initial_state=up services=game http=127.0.0.1:0 metrics=on control={}",
        socket.display()
    ));
    let http = agent.http_addrs()[0];
    // A director polling the agent, with its own metrics.
    let targets = dir.join("targets.conf");
    std::fs::write(&targets, format!("rs5 {udp}\n")).unwrap();
    let track = dir.join("track");
    std::fs::create_dir(&track).unwrap();
    let director_port = free_port();
    let director = Command::new(env!("CARGO_BIN_EXE_lbagent-director"))
        .arg("--targets")
        .arg(&targets)
        .arg("--track-dir")
        .arg(&track)
        .args([
            "--interval",
            "200",
            "--timeout",
            "100",
            "--rise",
            "1",
            "--fall",
            "1",
        ])
        .args(["--metrics", &format!("127.0.0.1:{director_port}")])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let director_guard = Killed(director);

    // The documented configuration, with this test's targets and a short interval.
    let config = doc_block(DOC, "yaml", "prometheus.yml")
        .replace("15s", "1s")
        .replace(
            "\"10.0.0.5:8080\", \"10.0.0.6:8080\"",
            &format!("\"{http}\""),
        )
        .replace("127.0.0.1:9792", &format!("127.0.0.1:{director_port}"));
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, &config).unwrap();
    let port = free_port();
    let prometheus_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus (Debian's package) runs");
    let log = child.stderr.take().unwrap();
    let log_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let sink = log_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
    }
    let _prometheus = Killed(child);
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        assert!(
            eventually(Duration::from_secs(60), f),
            "{what}; prometheus said:\n{}",
            log_lines.lock().unwrap().join("\n")
        );
    };

    // Both targets are scraped.
    wait("both jobs up", &mut || {
        query(prometheus_addr, "up{job=\"lbagent\"}") == Some(1.0)
            && query(prometheus_addr, "up{job=\"lbagent-director\"}") == Some(1.0)
    });
    wait("the agent up, the director's target up", &mut || {
        query(prometheus_addr, "lbagent_state{service=\"\",state=\"up\"}") == Some(1.0)
            && query(
                prometheus_addr,
                "lbagent_director_target_up{target=\"rs5\"}",
            ) == Some(1.0)
    });

    // An operator drains the server; the host sets a service's weight.
    let out = Command::new(CTL)
        .arg(&socket)
        .args(["drain", "--reason", "prometheus test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    agent.set_weight("game", 30).unwrap();
    wait(
        "the states the test set, through the query API",
        &mut || {
            query(
                prometheus_addr,
                "lbagent_state{service=\"\",state=\"drain\"}",
            ) == Some(1.0)
                && query(prometheus_addr, "lbagent_reason_code{service=\"\"}") == Some(9.0)
                && query(
                    prometheus_addr,
                    "lbagent_operator_override{state=\"drain\"}",
                ) == Some(1.0)
                && query(prometheus_addr, "lbagent_weight_percent{service=\"game\"}") == Some(30.0)
                && query(
                    prometheus_addr,
                    "lbagent_director_target_up{target=\"rs5\"}",
                ) == Some(0.0)
                && query(
                    prometheus_addr,
                    "lbagent_director_target_state{target=\"rs5\",state=\"drain\"}",
                ) == Some(1.0)
        },
    );
    // A histogram the director fills: round trips were observed.
    wait("round trips observed", &mut || {
        query(prometheus_addr, "lbagent_director_rtt_seconds_count").is_some_and(|n| n > 0.0)
    });
    drop(director_guard);
    drop(agent);
}
