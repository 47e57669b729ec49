//! `make install` as the README's "Install" section says: its blocks (```` ```sh install-prefix
//! ````, `install-staged`, `install-system`) run as written by bash, then the C and C++ examples
//! they build with pkg-config alone run against the installed library.
//!
//! One substitution, so that a test does not build the release: `make install` installs this
//! test build (`RELEASE=target/debug`) and finds no cargo, as under sudo, so it installs what
//! is there instead of building. The system install runs in a mount namespace of its own, over
//! a tmpfs `/usr/local` and a copy of `/etc`: its `ldconfig` changes nothing outside it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use lbagent::State;
use lbagent::client::{self, ProbeOptions};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What the README says a program prints when it cannot find the library.
const NOT_FOUND: &str = "error while loading shared libraries: liblbagent.so.0: cannot open \
                         shared object file: No such file or directory";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `make install` of this test build, for the README's `make install` (see the file's doc).
fn make_install() -> String {
    format!(
        "make --no-print-directory -C {} install RELEASE={} CARGO=/nonexistent/cargo",
        repo().display(),
        target_dir().display()
    )
}

/// The README's block `sh NAME`, with `make install` replaced (and `make build` dropped: the
/// test build is there already).
fn readme_block(name: &str) -> String {
    let block = doc_block("README.md", "sh", name);
    let block = block.replace("sudo make install", "make install");
    assert!(block.contains("make install"), "{name}: {block}");
    block
        .lines()
        .filter(|l| l.trim() != "make build")
        .collect::<Vec<_>>()
        .join("\n")
        .replace("make install", &make_install())
}

/// A working directory with the examples' sources only (no headers, no library): what the
/// README's commands build must come from the installed files.
fn project(name: &str) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::create_dir_all(dir.join("c-examples")).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    for f in ["demo_server.c", "cpp_server.cpp"] {
        std::fs::copy(
            repo().join("c-examples").join(f),
            dir.join("c-examples").join(f),
        )
        .unwrap();
    }
    dir
}

/// bash running `script` in `dir` with HOME in it and no PKG_CONFIG_PATH or LD_LIBRARY_PATH.
fn bash(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .env("HOME", dir.join("home"))
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LBAGENT_CONFIG");
    cmd
}

fn has_section(file: &Path, section: &str) -> bool {
    let out = run(Command::new("readelf").args(["-S", "--wide"]).arg(file));
    stdout(&out).split_whitespace().any(|word| word == section)
}

/// Runs an example (`demo_server` or `cpp_server`) until a director would send it traffic,
/// then stops it with SIGTERM: it must drain and exit cleanly.
fn serve_until_up(exe: &Path, env: &[(&str, &str)]) {
    let mut cmd = Command::new(exe);
    cmd.arg("0")
        .env("LBAGENT_CONFIG", "listen=127.0.0.1:0 watchdog_ms=5000")
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{exe:?} printed nothing"))
        .unwrap();
    let port: u16 = first
        .split("UDP port ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{exe:?}: {first}"));
    std::thread::spawn(move || for _ in lines {});
    let agent = SocketAddr::from(([127, 0, 0, 1], port));
    let options = ProbeOptions {
        timeout: Duration::from_secs(2),
        ..ProbeOptions::default()
    };
    let up = eventually(Duration::from_secs(20), || {
        client::probe(agent, &options).is_ok_and(|a| a.state == State::Up)
    });
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(up, "{exe:?} never answered UP");
    assert!(status.success(), "{exe:?} exited with {status}");
}

fn ldd(exe: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("ldd");
    cmd.arg(exe).env_remove("LD_LIBRARY_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    stdout(&run(&mut cmd))
}

#[test]
fn install_into_a_prefix_of_ones_own_and_build_the_examples_with_pkg_config() {
    let dir = project("install-prefix");
    let prefix = dir.join("home/lbagent");
    let out = run(&mut bash(&dir, &readme_block("install-prefix")));
    let said = stdout(&out);
    // make install says what a program needs, since the directory is not searched.
    assert!(
        said.contains(&format!(
            "{} is not a directory the dynamic linker searches",
            prefix.join("lib").display()
        )) && said.contains(&format!("-Wl,-rpath,{}", prefix.join("lib").display())),
        "{said}"
    );
    let lib = prefix.join("lib");
    for (name, link) in [
        ("liblbagent.so", Some("liblbagent.so.0")),
        (
            "liblbagent.so.0",
            Some(format!("liblbagent.so.{VERSION}").as_str()),
        ),
        ("liblbagent.a", None),
        ("pkgconfig/lbagent.pc", None),
    ] {
        let path = lib.join(name);
        assert!(path.exists(), "{name} not installed");
        if let Some(target) = link {
            assert_eq!(std::fs::read_link(&path).unwrap(), Path::new(target));
        }
    }
    assert!(lib.join(format!("liblbagent.so.{VERSION}")).is_file());
    for f in ["include/lbagent.h", "include/lbagent.hpp"] {
        assert!(prefix.join(f).is_file(), "{f}");
    }
    for tool in ["lbagent-probe", "lbagent-director"] {
        let path = prefix.join("bin").join(tool);
        assert!(path.is_file(), "{tool}");
        assert!(!has_section(&path, ".debug_info"), "{tool} is not stripped");
    }
    let pc = std::fs::read_to_string(lib.join("pkgconfig/lbagent.pc")).unwrap();
    assert!(
        pc.starts_with(&format!("prefix={}\n", prefix.display())),
        "{pc}"
    );
    assert!(pc.contains(&format!("Version: {VERSION}\n")), "{pc}");

    // The examples built by the README's commands find the library through their rpath...
    let demo = dir.join("demo_server");
    let cpp = dir.join("cpp_server");
    for exe in [&demo, &cpp] {
        assert!(
            ldd(exe, &[]).contains(&format!(
                "liblbagent.so.0 => {}",
                lib.join("liblbagent.so.0").display()
            )),
            "{exe:?}"
        );
        serve_until_up(exe, &[]);
    }

    // ...and without one, as the README says: nothing, then LD_LIBRARY_PATH.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let flat: String = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(NOT_FOUND),
        "the README shows the loader's error"
    );
    run(&mut bash(
        &dir,
        "export PKG_CONFIG_PATH=$HOME/lbagent/lib/pkgconfig\n\
         cc -std=c11 -o demo_no_rpath c-examples/demo_server.c $(pkg-config --cflags --libs lbagent)",
    ));
    let plain = dir.join("demo_no_rpath");
    let out = Command::new(&plain)
        .arg("0")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(NOT_FOUND),
        "{out:?}"
    );
    let lib_path = lib.display().to_string();
    serve_until_up(&plain, &[("LD_LIBRARY_PATH", &lib_path)]);

    // make uninstall takes everything away again.
    run(Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(repo())
        .arg("uninstall")
        .arg(format!("PREFIX={}", prefix.display())));
    let mut left: Vec<PathBuf> = Vec::new();
    let mut todo = vec![prefix.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "left after uninstall: {left:?}");
}

/// The metadata of the files a real install into /usr would write, to see that none changed.
fn usr_files() -> Vec<(PathBuf, Option<SystemTime>)> {
    [
        "/usr/lib/liblbagent.so.0",
        "/usr/lib/liblbagent.a",
        "/usr/lib/pkgconfig/lbagent.pc",
        "/usr/include/lbagent.h",
        "/usr/bin/lbagent-probe",
    ]
    .iter()
    .map(|p| {
        let modified = std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
        (PathBuf::from(p), modified)
    })
    .collect()
}

#[test]
fn install_into_a_staging_tree_for_a_package() {
    let dir = project("install-staged");
    let before = usr_files();
    let said = stdout(&run(&mut bash(&dir, &readme_block("install-staged"))));
    assert_eq!(usr_files(), before, "DESTDIR: nothing is written into /usr");
    assert!(said.contains("staged for /usr"), "{said}");
    let stage = dir.join("stage/usr");
    let lib = stage.join("lib");
    let so = lib.join(format!("liblbagent.so.{VERSION}"));
    assert!(so.is_file() && lib.join("liblbagent.so.0").is_symlink());
    assert!(stage.join("include/lbagent.h").is_file());
    assert!(stage.join("bin/lbagent-director").is_file());
    let pc = std::fs::read_to_string(lib.join("pkgconfig/lbagent.pc")).unwrap();
    assert!(
        pc.starts_with("prefix=/usr\n"),
        "the package's prefix: {pc}"
    );

    // Stripped, and still the whole API.
    let built = target_dir().join("liblbagent.so");
    assert!(
        has_section(&built, ".debug_info"),
        "the test build has debug information"
    );
    assert!(!has_section(&so, ".debug_info"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&so) < size(&built));
    let symbols = stdout(&run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)));
    assert!(symbols.contains(" T lbagent_start\n") && symbols.contains(" T lbagent_heartbeat\n"));
    assert!(!has_section(&lib.join("liblbagent.a"), ".debug_info"));

    // DEBUG_INFO=separate: stripped, with the debug information beside, linked by name.
    let separate = dir.join("separate");
    run(Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(repo())
        .arg("install")
        .arg(format!("RELEASE={}", target_dir().display()))
        .args([
            "CARGO=/nonexistent/cargo",
            "PREFIX=/usr",
            "DEBUG_INFO=separate",
        ])
        .arg(format!("DESTDIR={}", separate.display())));
    let so = separate.join(format!("usr/lib/liblbagent.so.{VERSION}"));
    let probe = separate.join("usr/bin/lbagent-probe");
    for (file, debug) in [
        (
            &so,
            separate.join(format!("usr/lib/.debug/liblbagent.so.{VERSION}.debug")),
        ),
        (&probe, separate.join("usr/bin/.debug/lbagent-probe.debug")),
    ] {
        assert!(!has_section(file, ".debug_info"), "{file:?}");
        assert!(has_section(file, ".gnu_debuglink"), "{file:?}");
        assert!(has_section(&debug, ".debug_info"), "{debug:?}");
    }
    // The stripped tool runs.
    let help = run(Command::new(&probe).arg("--help"));
    assert!(stdout(&help).contains("lbagent-probe"));
    assert_eq!(usr_files(), before);
}

#[test]
fn install_into_the_system_runs_ldconfig() {
    // In a mount namespace: /usr/local is a tmpfs and /etc a copy, so the install and its
    // ldconfig change nothing outside. The programs are built without an rpath, as the README
    // says, and find the library through the linker's cache.
    let dir = project("install-system");
    let block = readme_block("install-system");
    let script = format!(
        "cp -a /etc {etc}\n\
         mount --bind {etc} /etc\n\
         mount -t tmpfs tmpfs /usr/local\n\
         {block}\n\
         echo '--- ldconfig -p'\n\
         ldconfig -p | grep -F 'liblbagent.so.0 '\n\
         echo '--- ldd'\n\
         ldd ./demo_server ./cpp_server\n\
         echo '--- run'\n\
         for exe in ./demo_server ./cpp_server; do\n\
             LBAGENT_CONFIG='listen=127.0.0.1:0 watchdog_ms=soon' $exe 0 2>&1 || echo \"exit $?\"\n\
         done\n",
        etc = dir.join("etc").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(&dir)
        .env("HOME", dir.join("home"))
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LBAGENT_CONFIG");
    let said = stdout(&run(&mut cmd));
    assert!(
        said.contains("ran ldconfig: programs find liblbagent.so.0 in /usr/local/lib"),
        "{said}"
    );
    let section = |name: &str| -> String {
        said.split(&format!("--- {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} in {said}"))
            .split("\n--- ")
            .next()
            .unwrap()
            .to_string()
    };
    assert!(
        section("ldconfig -p").contains("=> /usr/local/lib/liblbagent.so.0"),
        "{said}"
    );
    assert_eq!(
        section("ldd")
            .matches("liblbagent.so.0 => /usr/local/lib/liblbagent.so.0")
            .count(),
        2,
        "{said}"
    );
    // Both ran against the installed library: it read their configuration and refused it.
    let ran = section("run");
    assert_eq!(ran.matches("exit 1").count(), 2, "{ran}");
    assert_eq!(ran.matches("\"watchdog_ms\"").count(), 2, "{ran}");
}

#[test]
fn build_lib_survives_a_copy() {
    // `make libs` of make build, from this test build, into a scratch build directory.
    let dir = scratch_dir("build-lib-copy");
    run(Command::new("make")
        .args(["--no-print-directory", "-C"])
        .arg(repo())
        .arg("libs")
        .arg(format!("RELEASE={}", target_dir().display()))
        .arg(format!("BUILD={}", dir.join("build").display())));
    let copy = dir.join("copied");
    run(Command::new("cp")
        .arg("-r")
        .arg(dir.join("build/lib"))
        .arg(&copy));
    std::fs::remove_dir_all(dir.join("build")).unwrap();
    let real = copy.join(format!("liblbagent.so.{VERSION}"));
    for link in ["liblbagent.so", "liblbagent.so.0"] {
        assert_eq!(
            std::fs::canonicalize(copy.join(link)).unwrap(),
            std::fs::canonicalize(&real).unwrap(),
            "{link}"
        );
    }
    assert_eq!(
        std::fs::metadata(&real).unwrap().len(),
        std::fs::metadata(target_dir().join("liblbagent.so"))
            .unwrap()
            .len()
    );
}
