//! Every kind of host as a real program, driven over loopback: the legacy host that loads the
//! library with dlopen (found, or absent and running unmonitored), the C++ wrapper and a C++
//! server, and signal handlers that drain and enter maintenance while probes are answered.
//! Built with warnings as errors; run plainly and under valgrind.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::c_build::*;
use common::*;
use lbagent::State;
use lbagent::client::{self, Answer, ProbeOptions};

struct Programs {
    dlopen_host: PathBuf,
    wrapper_cxx11: PathBuf,
    wrapper_cxx17: PathBuf,
    cpp_server: PathBuf,
    signal_storm: PathBuf,
}

/// Builds every program once for the whole test binary.
fn programs() -> &'static Programs {
    static BUILT: OnceLock<Programs> = OnceLock::new();
    BUILT.get_or_init(|| Programs {
        dlopen_host: build("c-examples/dlopen_host.c", Link::Dlopen),
        wrapper_cxx11: build("tests/c/wrapper.cpp", Link::Dynamic),
        wrapper_cxx17: build_as("tests/c/wrapper.cpp", Link::Dynamic, "c++17"),
        cpp_server: build("c-examples/cpp_server.cpp", Link::Dynamic),
        signal_storm: build("tests/c/signal_storm.c", Link::Dynamic),
    })
}

/// How long a child may take to print a line or to exit (valgrind starts slowly).
const PATIENCE: Duration = Duration::from_secs(60);

/// A program running as a child: its stdout read line by line, its stderr kept.
struct Host {
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    lines: Vec<String>,
}

impl Host {
    fn spawn(mut cmd: Command) -> Host {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (tx, stdout) = channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Host {
            child,
            stdout,
            stderr,
            lines: Vec::new(),
        }
    }

    /// Waits for the next stdout line that contains `needle`.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; stdout {:?}, stderr {:?}",
                    self.lines,
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// The port number that follows `prefix` in the next line that has it.
    fn port_after(&mut self, prefix: &str) -> u16 {
        port_after(&self.line(prefix), prefix)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child, which has not been reaped (Host owns it).
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Probes `agent` until an answer says its drain is complete, or the program has exited
    /// (it saw the drain complete first, between two probes); false after `PATIENCE`.
    fn drain_completes(&mut self, agent: SocketAddr) -> bool {
        eventually(PATIENCE, || {
            probe(agent).is_ok_and(|a| a.drain.is_some_and(|d| d.complete))
                || matches!(self.child.try_wait(), Ok(Some(_)))
        })
    }

    /// Waits (bounded) for the program to exit: its status, all its stdout lines, its stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit; stdout {:?}",
                self.lines
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            match self.stdout.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => self.lines.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout not closed"),
            }
        }
        // The stderr reader ends with the pipe; give it a moment to store what it read.
        eventually(Duration::from_secs(5), || {
            Arc::strong_count(&self.stderr) == 1
        });
        let stderr = self.stderr.lock().unwrap().clone();
        (status, std::mem::take(&mut self.lines), stderr)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn command(exe: &Path, under_valgrind: bool) -> Command {
    if under_valgrind {
        valgrind(exe)
    } else {
        Command::new(exe)
    }
}

fn probe(agent: SocketAddr) -> Result<Answer, client::ProbeError> {
    let options = ProbeOptions {
        timeout: Duration::from_secs(3),
        ..ProbeOptions::default()
    };
    client::probe(agent, &options)
}

/// Probes until the answer has `state` and `message`; returns it.
fn wait_for(agent: SocketAddr, state: State, message: &str) -> Answer {
    wait_until(agent, &format!("{state} {message:?}"), |a| {
        a.state == state && a.message == message
    })
}

/// Probes until the answer satisfies `wanted`; returns it.
fn wait_until(agent: SocketAddr, what: &str, wanted: impl Fn(&Answer) -> bool) -> Answer {
    let mut last = None;
    let ok = eventually(Duration::from_secs(30), || {
        let answer = probe(agent).ok();
        let hit = answer.as_ref().is_some_and(&wanted);
        last = answer;
        hit
    });
    assert!(ok, "waited for {what}; last answer {last:?}");
    last.unwrap()
}

/// The port number that follows `prefix` in `line`.
fn port_after(line: &str, prefix: &str) -> u16 {
    let rest = line.split(prefix).nth(1).unwrap_or("");
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port after {prefix:?} in {line:?}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `text` to a UDP echo on loopback and returns what came back.
fn udp_echo(port: u16, text: &str) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.connect(loopback(port)).unwrap();
    s.send(text.as_bytes()).unwrap();
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).expect("an echo");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

// ---- dlopen: the legacy host -------------------------------------------------------------

/// dlopen_host with a clean environment: no LBAGENT_LIBRARY, no LD_LIBRARY_PATH (cargo sets
/// one for tests) unless given in `env`.
fn dlopen_host(env: &[(&str, &str)], under_valgrind: bool) -> Host {
    let mut cmd = command(&programs().dlopen_host, under_valgrind);
    cmd.arg("0")
        .env_remove("LBAGENT_LIBRARY")
        .env_remove("LD_LIBRARY_PATH")
        .env("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=5000");
    for (key, value) in env {
        cmd.env(key, value);
    }
    Host::spawn(cmd)
}

/// The library was found: monitored, serving, drained by SIGTERM, closed with dlclose.
fn dlopen_host_monitored(mut host: Host, library: &Path) {
    let loaded = host.line("agent on UDP port ");
    assert!(
        loaded.contains(&format!("from {},", library.display())),
        "{loaded}"
    );
    let agent = loopback(port_after(&loaded, "agent on UDP port "));
    let echo = host.port_after("echo on UDP 127.0.0.1:");
    wait_for(agent, State::Up, "ready");
    assert_eq!(udp_echo(echo, "hello"), "hello");
    host.signal(libc::SIGTERM);
    // The signal handler drains (no message), the loop then adds its message: the first
    // DRAIN answer may carry either. Each DRAIN answer tells this test's prober once, so wait
    // for the first one only.
    let draining = wait_until(agent, "DRAIN", |a| a.state == State::Drain);
    assert!(
        ["", "shutting down"].contains(&draining.message.as_str()),
        "{draining:?}"
    );
    assert!(!draining.is_serving());
    // It echoes on until its one director (this test) has been told twice.
    assert_eq!(udp_echo(echo, "still there?"), "still there?");
    assert!(host.drain_completes(agent));
    let (status, stdout, stderr) = host.finish();
    assert!(status.success(), "{status}: {stdout:?} {stderr}");
    assert_eq!(stderr, "", "a monitored host logs nothing");
    assert!(
        stdout
            .iter()
            .any(|l| l.contains("still mapped after dlclose: yes (nodelete)")),
        "{stdout:?}"
    );
    assert!(stdout.iter().any(|l| l.contains("stopped after 2 echoes")));
    // Stopped and freed before dlclose: nothing answers any more.
    assert!(probe(agent).is_err());
}

#[test]
fn dlopen_host_finds_the_library_through_ld_library_path() {
    let dir = lib_dir().to_str().unwrap();
    let host = dlopen_host(&[("LD_LIBRARY_PATH", dir)], false);
    dlopen_host_monitored(host, &lib_dir().join("liblbagent.so.0"));
}

#[test]
fn dlopen_host_loads_an_explicit_path() {
    let library = target_dir().join("liblbagent.so");
    let host = dlopen_host(&[("LBAGENT_LIBRARY", library.to_str().unwrap())], false);
    dlopen_host_monitored(host, &library);
}

#[test]
fn dlopen_host_under_valgrind() {
    let dir = lib_dir().to_str().unwrap();
    let host = dlopen_host(&[("LD_LIBRARY_PATH", dir)], true);
    dlopen_host_monitored(host, &lib_dir().join("liblbagent.so.0"));
}

#[test]
fn dlopen_host_serves_unmonitored_with_one_log_line() {
    let empty = out_dir().join("no-library-here");
    std::fs::create_dir_all(&empty).unwrap();
    let library = target_dir().join("liblbagent.so");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("LD_LIBRARY_PATH", empty.to_str().unwrap())],
            "lbagent unavailable (liblbagent.so.0: cannot open shared object file",
        ),
        (
            &[("LBAGENT_LIBRARY", "/nonexistent/liblbagent.so.0")],
            "lbagent unavailable (/nonexistent/liblbagent.so.0: cannot open",
        ),
        (
            &[("LBAGENT_LIBRARY", "libm.so.6")],
            "lbagent unavailable (missing symbol lbagent_start)",
        ),
        (
            &[
                ("LBAGENT_LIBRARY", library.to_str().unwrap()),
                ("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=soon"),
            ],
            "lbagent did not start (lbagent_start: config: invalid value \"soon\" for key \"watchdog_ms\"",
        ),
    ];
    for (env, expected) in cases {
        let mut host = dlopen_host(env, false);
        let echo = host.port_after("echo on UDP 127.0.0.1:");
        assert_eq!(udp_echo(echo, "still serving"), "still serving");
        host.signal(libc::SIGTERM);
        let (status, stdout, stderr) = host.finish();
        assert!(status.success(), "{env:?}: {status}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: exactly one log line: {stderr:?}");
        assert!(lines[0].starts_with("dlopen_host: "), "{stderr}");
        assert!(lines[0].contains(expected), "{env:?}: {stderr}");
        assert!(lines[0].ends_with(": serving unmonitored"), "{stderr}");
        assert!(!stdout.iter().any(|l| l.contains("agent on UDP port")));
        assert!(stdout.iter().any(|l| l.contains("stopped after 1 echoes")));
    }
}

// ---- C++: the wrapper and a server -------------------------------------------------------

#[test]
fn cpp_wrapper_as_cxx11_and_cxx17_and_under_valgrind() {
    let p = programs();
    for (exe, standard) in [(&p.wrapper_cxx11, "C++11"), (&p.wrapper_cxx17, "C++17")] {
        let out = run_ok(&mut Command::new(exe));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("({standard}):")), "{text}");
        assert!(text.contains(", 0 failed"), "{text}");
    }
    for exe in [&p.wrapper_cxx11, &p.wrapper_cxx17] {
        let out = run_ok(&mut valgrind(exe));
        assert!(String::from_utf8_lossy(&out.stdout).contains(", 0 failed"));
    }
}

/// Compiles `source` (C++, -Werror) as `standard` without linking; the compiler's output.
fn compile_cxx(file: &str, source: &str, standard: &str) -> Output {
    let path = out_dir().join(file);
    std::fs::write(&path, source).unwrap();
    Command::new("g++")
        .arg(format!("-std={standard}"))
        .args(CXX_WARNINGS)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-c")
        .arg(&path)
        .arg("-o")
        .arg(path.with_extension("o"))
        .output()
        .unwrap()
}

#[test]
fn cpp_calls_naming_a_service_cannot_be_ignored_silently() {
    // The whole-server calls (signal handlers, tight loops) may be ignored; the ones naming a
    // service may not, unless cast to void on purpose.
    let allowed = "#include \"lbagent.hpp\"\n\
        int main() {\n    lbagentpp::Agent agent;\n\
        agent.heartbeat();\n    agent.set_state(lbagentpp::State::Up);\n\
        agent.set_state(lbagentpp::State::Up, \"ready\");\n    agent.set_weight(50u);\n\
        agent.set_load(1u, 2u);\n    (void)agent.set_state(\"game\", lbagentpp::State::Up);\n\
        (void)agent.set_weight(\"game\", 50u);\n    (void)agent.set_load(\"game\", 1u, 2u);\n\
        return 0;\n}\n";
    for standard in ["c++11", "c++17"] {
        let out = compile_cxx("nodiscard_allowed.cpp", allowed, standard);
        assert!(out.status.success(), "{standard}: {out:?}");
    }
    for (i, call) in [
        "agent.set_state(\"gmae\", lbagentpp::State::Up);",
        "agent.set_weight(\"gmae\", 50u);",
        "agent.set_load(std::string(\"gmae\"), 1u, 2u);",
    ]
    .iter()
    .enumerate()
    {
        let source = format!(
            "#include <string>\n#include \"lbagent.hpp\"\n\
             int main() {{\n    lbagentpp::Agent agent;\n    {call}\n    return 0;\n}}\n"
        );
        for standard in ["c++11", "c++17"] {
            let out = compile_cxx(&format!("nodiscard_{i}.cpp"), &source, standard);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("ignoring return value"),
                "{standard}: {call} compiled: {stderr}"
            );
        }
    }
}

fn cpp_server_walkthrough(under_valgrind: bool) {
    let mut cmd = command(&programs().cpp_server, under_valgrind);
    cmd.arg("0")
        .env("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=5000");
    let mut host = Host::spawn(cmd);
    let ports = host.line("agent on UDP port ");
    let agent = loopback(port_after(&ports, "agent on UDP port "));
    let tcp_port = port_after(&ports, "serving TCP 127.0.0.1:");
    let up = wait_for(agent, State::Up, "ready");
    assert!(up.is_serving());

    let mut tcp = TcpStream::connect(loopback(tcp_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut ask = |line: &str| -> String {
        tcp.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    };
    assert_eq!(ask("hello, agent"), "hello, agent\n");
    assert_eq!(ask("STATS"), "1\n");
    // The load is the connected clients, out of a capacity of 32.
    assert!(eventually(Duration::from_secs(20), || {
        probe(agent).is_ok_and(|a| a.in_use == 1 && a.capacity == 32)
    }));

    host.signal(libc::SIGTERM);
    wait_for(agent, State::Drain, "shutting down");
    // Draining, it still serves, until its one client leaves and its one director (this
    // test) was told twice.
    assert_eq!(ask("still there?"), "still there?\n");
    tcp.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(host.drain_completes(agent));
    let (status, stdout, stderr) = host.finish();
    assert!(status.success(), "{status}: {stdout:?} {stderr}");
    assert!(
        stdout
            .iter()
            .any(|l| l == "cpp_server: stopped after 2 lines")
    );
    assert!(probe(agent).is_err(), "the destructor stopped the agent");
}

#[test]
fn cpp_server_serves_reports_load_and_drains() {
    cpp_server_walkthrough(false);
}

#[test]
fn cpp_server_under_valgrind() {
    cpp_server_walkthrough(true);
}

#[test]
fn cpp_server_reports_a_bad_configuration_from_the_exception() {
    let out = Command::new(&programs().cpp_server)
        .arg("0")
        .env("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("cpp_server: lbagent: lbagent_start: config: invalid value \"soon\""),
        "{stderr}"
    );
    assert!(stderr.contains("\"watchdog_ms\""), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("(invalid configuration)"),
        "{stderr}"
    );
}

// ---- Signals -----------------------------------------------------------------------------

/// The handler-run counts signal_storm prints when it exits.
fn storm_counts(stdout: &[String]) -> std::collections::HashMap<String, i64> {
    let line = stdout
        .iter()
        .find(|l| l.contains("usr1="))
        .unwrap_or_else(|| panic!("no counts in {stdout:?}"));
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Many SIGUSR1 (maintenance), SIGUSR2 (up) and SIGTERM (drain) while a prober thread asks
/// continuously and the program's main thread writes the state with reasons in a loop; a
/// 2 ms timer heart-beats from its handler. Then each signal alone must show in the answers.
fn signal_storm(mode: &str, under_valgrind: bool, signals: usize) {
    let mut cmd = command(&programs().signal_storm, under_valgrind);
    cmd.args([mode, "1500"]).env(
        "LBAGENT_CONFIG",
        "listen=127.0.0.1:0 watchdog_ms=10000 rate_per_source=0 rate_global=0",
    );
    let mut host = Host::spawn(cmd);
    let agent = loopback(host.port_after("agent on UDP port "));
    wait_for(agent, State::Up, "serving");

    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !done.load(Ordering::Relaxed) {
                answers.push(probe(agent));
            }
            answers
        })
    };
    let kinds = [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM];
    for i in 0..signals {
        host.signal(kinds[(i * 7 + i / 5) % 3]);
        if i % 4 == 3 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    // Each signal alone: repeated until the signals still pending have all been handled.
    for (signal, state, message) in [
        (libc::SIGUSR2, State::Up, "serving"),
        (libc::SIGUSR1, State::Maint, "maintenance (SIGUSR1)"),
        (libc::SIGUSR2, State::Up, "serving"),
    ] {
        let mut last = None;
        let ok = eventually(Duration::from_secs(30), || {
            host.signal(signal);
            std::thread::sleep(Duration::from_millis(30));
            last = probe(agent).ok();
            last.as_ref()
                .is_some_and(|a| a.state == state && a.message == message)
        });
        assert!(ok, "after signal {signal}: {last:?}");
    }
    done.store(true, Ordering::Relaxed);
    let answers = prober.join().unwrap();
    assert!(!answers.is_empty());
    for answer in &answers {
        let a = answer.as_ref().expect("every probe answered");
        assert!(
            matches!(a.state, State::Up | State::Maint | State::Drain),
            "{a:?}"
        );
        assert_eq!(a.reason, Some(lbagent::Reason::Host), "{a:?}");
        assert_eq!(a.weight_pct, 100);
    }

    host.signal(libc::SIGTERM);
    wait_for(agent, State::Drain, "draining (SIGTERM)");
    let (status, stdout, stderr) = host.finish();
    assert!(status.success(), "{status}: {stdout:?} {stderr}");
    let counts = storm_counts(&stdout);
    eprintln!(
        "signal_storm {mode}: {} probes answered during the storm; {counts:?}",
        answers.len()
    );
    for key in ["usr1", "usr2", "term", "alrm", "writes"] {
        assert!(counts[key] > 0, "{key}: {counts:?}");
    }
    assert_eq!(counts["write_errors"], 0, "{counts:?}");
    assert_eq!(counts["handler_errors"], 0, "{counts:?}");
    if mode == "mask" {
        assert_eq!(
            counts["off_main"], 0,
            "the agent's threads never run handlers"
        );
        if !under_valgrind {
            assert!(
                counts["interrupted_writes"] > 0,
                "handlers interrupted set_state: {counts:?}"
            );
        }
    }
}

#[test]
fn signal_handlers_interrupting_a_writer_drain_and_maintain() {
    signal_storm("mask", false, 3000);
}

#[test]
fn signal_handlers_on_any_thread_drain_and_maintain() {
    signal_storm("any", false, 3000);
}

#[test]
fn signal_handlers_under_valgrind() {
    signal_storm("mask", true, 600);
}

// ---- The README's snippets -----------------------------------------------------------------

/// The first ````lang` block after the README heading `heading`.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in the README"))
        .1;
    let block = section
        .split_once(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no {lang} block after {heading:?}"))
        .1;
    block.split_once("```").unwrap().0.to_string()
}

/// Compiles `source` as `file` with the examples' flags (no linking: -c).
fn compiles(file: &str, source: &str) {
    let path = out_dir().join(file);
    std::fs::write(&path, source).unwrap();
    let cxx = file.ends_with(".cpp");
    let mut cmd = Command::new(if cxx { "g++" } else { "gcc" });
    if cxx {
        cmd.arg("-std=c++11").args(CXX_WARNINGS);
    } else {
        cmd.args(C_FLAGS);
    }
    cmd.arg("-I")
        .arg(repo().join("include"))
        .arg("-c")
        .arg(&path)
        .arg("-o")
        .arg(path.with_extension("o"));
    run_ok(&mut cmd);
}

#[test]
fn readme_c_quick_start_and_self_check_compile_with_warnings_as_errors() {
    // The quick start is the body of a main(); the self-check a function and a statement.
    let quick_start = readme_block("## C quick start", "c");
    let (includes, body): (Vec<&str>, Vec<&str>) =
        quick_start.lines().partition(|l| l.starts_with("#include"));
    compiles(
        "readme_quick_start.c",
        &format!(
            "#include <stdio.h>\n#include <stdlib.h>\n{}\n\
             static void serve_one_batch(void) {{}}\n\
             static uint32_t clients = 0, max_clients = 64;\n\
             int main(void) {{\n{}\n    return 0;\n}}\n",
            includes.join("\n"),
            body.join("\n")
        ),
    );
    let self_check = readme_block("### Self-checks, worker watchdogs, logging", "c");
    let (function, statement) = self_check
        .split_once("\nif (")
        .expect("the self-check snippet: a function, then `if (lbagent_add_check(...`");
    compiles(
        "readme_self_check.c",
        &format!(
            "#include <stdio.h>\n#include \"lbagent.h\"\n\
             static int db_ping(void *db) {{ return db != NULL; }}\n\
             static const char *db_error(void *db) {{ (void)db; return \"down\"; }}\n\
             {function}\n\
             int main(void) {{\n    lbagent *agent = NULL;\n    void *db = NULL;\n\
             if ({statement}\n    return 0;\n}}\n"
        ),
    );
}

#[test]
fn readme_cpp_and_signal_handler_snippets_compile_with_warnings_as_errors() {
    let cpp = readme_block("## C++: `include/lbagent.hpp`", "cpp");
    let (includes, body): (Vec<&str>, Vec<&str>) =
        cpp.lines().partition(|l| l.starts_with("#include"));
    compiles(
        "readme_cpp.cpp",
        &format!(
            "{}\n#include <cstdint>\nstatic void serve_one_batch() {{}}\n\
             static std::uint32_t clients = 0, max_clients = 64;\n\
             int main() {{\n{}\n}}\n",
            includes.join("\n"),
            body.join("\n")
        ),
    );
    let handlers = readme_block("### Signal handlers", "c");
    compiles(
        "readme_signals.c",
        &format!(
            "#include <signal.h>\n#include \"lbagent.h\"\n{handlers}\n\
             int main(void) {{\n    signal(SIGTERM, on_sigterm);\n    \
             signal(SIGUSR1, on_sigusr1);\n    signal(SIGUSR2, on_sigusr2);\n    \
             return agent != NULL;\n}}\n"
        ),
    );
}
