//! `make install` (scripts/install.sh) into a temporary prefix, then an out-of-tree consumer
//! built with `pkg-config --cflags --libs lbagent`, run against the installed library.

mod common;

use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_and_build_a_consumer_with_pkg_config() {
    let prefix = common::target_dir().join("install-test");
    let _ = std::fs::remove_dir_all(&prefix);
    // The test build's own artifacts stand in for target/release.
    run(Command::new(common::repo().join("scripts/install.sh"))
        .arg(&prefix)
        .arg(common::target_dir()));
    let version = env!("CARGO_PKG_VERSION");
    let lib = prefix.join("lib");
    for name in [
        "liblbagent.so",
        "liblbagent.so.0",
        "liblbagent.a",
        "pkgconfig/lbagent.pc",
    ] {
        assert!(lib.join(name).exists(), "{name} not installed");
    }
    assert!(lib.join(format!("liblbagent.so.{version}")).is_file());
    assert!(prefix.join("include/lbagent.h").is_file());
    assert!(prefix.join("include/lbagent.hpp").is_file());
    assert!(prefix.join("bin/lbagent-probe").is_file());
    assert!(prefix.join("bin/lbagent-director").is_file());

    let pc_path = lib.join("pkgconfig");
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "lbagent"])
        .env("PKG_CONFIG_PATH", &pc_path));
    assert_eq!(
        run(Command::new("pkg-config")
            .args(["--modversion", "lbagent"])
            .env("PKG_CONFIG_PATH", &pc_path))
        .trim(),
        version
    );
    // An out-of-tree consumer: the demo server, built only from the installed files.
    let exe = prefix.join("consumer");
    let mut cc = Command::new("gcc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(common::repo().join("c-examples/demo_server.c"))
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    run(&mut cc);
    let ldd = run(Command::new("ldd").arg(&exe));
    assert!(
        ldd.contains(&format!(
            "liblbagent.so.0 => {}",
            lib.join("liblbagent.so.0").display()
        )),
        "{ldd}"
    );
    // It runs against the installed library (a config error proves the library answered).
    let out = Command::new(&exe)
        .env("LBAGENT_CONFIG", "watchdog_ms=soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"watchdog_ms\""));
    let _ = std::fs::remove_dir_all(&prefix);
}
