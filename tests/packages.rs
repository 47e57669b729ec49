//! `make deb`: the Debian packages are built with debhelper and pass lintian (no error); then,
//! in a mount namespace of their own (overlays over /usr, /etc and /var/lib/dpkg, so that
//! nothing outside changes and no other test sees them), they are installed with dpkg, the C
//! example is built against the installed -dev package with pkg-config alone and run until it
//! answers UP to the installed lbagent-probe, the tools and their man pages work, the
//! director's unit verifies, and `dpkg --purge` removes every file again.

use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn section(said: &str, name: &str) -> String {
    let header = format!("--- {name}");
    let mut lines = said.lines();
    assert!(lines.by_ref().any(|l| l == header), "no {name} in:\n{said}");
    lines
        .take_while(|l| !l.starts_with("--- "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn debian_packages_build_pass_lintian_install_work_and_purge_cleanly() {
    // The version of the packages is the crate's.
    let changelog = std::fs::read_to_string(repo().join("debian/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("lbagent ({VERSION}) ")),
        "debian/changelog's first entry must be version {VERSION}"
    );
    let out = Command::new("make")
        .args(["--no-print-directory", "deb"])
        .current_dir(repo())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make deb failed:\n{log}");
    assert!(
        log.contains("lintian --fail-on error"),
        "lintian ran: {log}"
    );
    let deb = |name: &str| repo().join(format!("build/deb/{name}_{VERSION}_amd64.deb"));
    let debs: Vec<PathBuf> = ["liblbagent0", "liblbagent-dev", "lbagent-tools"]
        .iter()
        .map(|n| deb(n))
        .collect();
    for d in &debs {
        assert!(d.is_file(), "{d:?}");
    }

    let work = std::env::temp_dir().join(format!("lbagent-packages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let script = format!(
        r#"set -euo pipefail
W={work}
mount -t tmpfs tmpfs "$W"
for d in /usr /etc /var/lib/dpkg; do
    mkdir -p "$W/upper$d" "$W/work$d"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$W/upper$d,workdir=$W/work$d" "$d"
done
dpkg -i {debs} >"$W/dpkg.log" 2>&1 || {{ cat "$W/dpkg.log"; exit 1; }}
dpkg -L liblbagent0 liblbagent-dev lbagent-tools | sort -u >"$W/files"
echo '--- pkg-config'
pkg-config --cflags --libs lbagent
gcc -std=c11 -Wall -Wextra -Werror -pedantic {repo}/c-examples/demo_server.c -o "$W/demo_server" \
    $(pkg-config --cflags --libs lbagent)
echo '--- ldd'
ldd "$W/demo_server"
echo '--- run'
LBAGENT_CONFIG='listen=127.0.0.1:0 watchdog_ms=5000' "$W/demo_server" 0 >"$W/demo.out" 2>&1 &
server=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's/.*agent on UDP port \([0-9]*\).*/\1/p' "$W/demo.out")
    [ -n "$port" ] && break
    sleep 0.1
done
answer=
for _ in $(seq 100); do
    if answer=$(lbagent-probe --timeout 500 "127.0.0.1:$port" 2>&1); then break; fi
    sleep 0.2
done
echo "$answer"
kill -TERM $server
wait $server && echo "demo_server exit 0"
echo '--- tools'
for tool in lbagent-probe lbagent-director lbagent-ctl; do "$tool" --version; done
echo '--- man'
for tool in lbagent-probe lbagent-director lbagent-ctl; do
    MANWIDTH=80 man -P cat "$tool" 2>/dev/null | sed -n 1p
done
echo '--- unit'
systemd-analyze verify /lib/systemd/system/lbagent-director.service 2>&1 | grep lbagent-director || echo verified
systemctl is-enabled lbagent-director.service 2>&1 || true
echo '--- purge'
dpkg --purge lbagent-tools liblbagent-dev liblbagent0 >"$W/dpkg.log" 2>&1 || {{ cat "$W/dpkg.log"; exit 1; }}
dpkg -s liblbagent0 >/dev/null 2>&1 && echo "still installed" || echo "not installed"
echo '--- left'
while read -r f; do
    if [ -e "$f" ] && [ ! -d "$f" ]; then echo "$f"; fi
done <"$W/files"
echo '--- end'
"#,
        work = work.display(),
        repo = repo().display(),
        debs = debs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .env_remove("PKG_CONFIG_PATH")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LBAGENT_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let multiarch = "/usr/lib/x86_64-linux-gnu";
    assert_eq!(
        section(&said, "pkg-config").trim(),
        "-llbagent",
        "the system's paths need no flag"
    );
    // /lib is /usr/lib on a merged-/usr system: either path is the package's file.
    let ldd = section(&said, "ldd");
    assert!(
        ldd.contains("liblbagent.so.0 => /usr/lib/x86_64-linux-gnu/liblbagent.so.0")
            || ldd.contains("liblbagent.so.0 => /lib/x86_64-linux-gnu/liblbagent.so.0"),
        "{said}"
    );
    let run = section(&said, "run");
    assert!(run.contains(": up ("), "the example answered UP: {run}");
    assert!(run.contains("demo_server exit 0"), "{run}");
    let tools = section(&said, "tools");
    for tool in ["lbagent-probe", "lbagent-director", "lbagent-ctl"] {
        assert!(tools.contains(&format!("{tool} {VERSION}")), "{tools}");
    }
    let man = section(&said, "man");
    for tool in ["LBAGENT-PROBE(1)", "LBAGENT-DIRECTOR(1)", "LBAGENT-CTL(1)"] {
        assert!(man.contains(tool), "{man}");
    }
    let unit = section(&said, "unit");
    assert!(unit.contains("verified"), "{unit}");
    assert!(
        !unit.contains("\nenabled"),
        "installed, not enabled: {unit}"
    );
    assert!(section(&said, "purge").contains("not installed"), "{said}");
    assert_eq!(section(&said, "left").trim(), "", "files left after purge");
    // Nothing reached the real system.
    assert!(!Path::new(multiarch).join("liblbagent.so.0").exists());
    assert!(!Path::new("/usr/bin/lbagent-ctl").exists());
}
