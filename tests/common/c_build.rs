//! Building and running the C and C++ programs: warnings as errors, linked dynamically,
//! statically or not at all (for dlopen), and valgrind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::{repo, target_dir};

pub const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];
/// The C++ warnings; the standard is chosen per build (C++11 unless said otherwise).
pub const CXX_WARNINGS: &[&str] = &["-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];

pub fn out_dir() -> PathBuf {
    let dir = target_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A directory holding the shared library under its link name and its soname, as an
/// installation would (the executable records the soname, liblbagent.so.0). Made once per
/// test binary, so that parallel tests never see it half-made.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert_library_is_fresh();
        let dir = out_dir().join("lib");
        std::fs::create_dir_all(&dir).unwrap();
        let lib = target_dir().join("liblbagent.so");
        let soname = format!("liblbagent.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
        for name in ["liblbagent.so", soname.as_str()] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&lib, &link).unwrap();
        }
        dir
    })
}

pub enum Link {
    /// Against liblbagent.so, found through an rpath.
    Dynamic,
    /// Against liblbagent.a.
    Static,
    /// Not at all, and without an rpath: the program loads the library with dlopen.
    Dlopen,
}

/// Compiles one C (C11) or C++ (C++11) source against include/ and the library just built.
pub fn build(source: &str, link: Link) -> PathBuf {
    build_as(source, link, "c++11")
}

/// Like `build`, choosing the C++ standard (`cxx_std`, such as "c++17"); the executable's
/// name carries the standard when it is not C++11.
pub fn build_as(source: &str, link: Link, cxx_std: &str) -> PathBuf {
    let src = repo().join(source);
    let cxx = source.ends_with(".cpp");
    let mut name = Path::new(source)
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    if cxx && cxx_std != "c++11" {
        name = format!("{name}-{cxx_std}");
    }
    if let Link::Static = link {
        name.push_str("-static");
    }
    let exe = out_dir().join(name);
    let mut cmd = Command::new(if cxx { "g++" } else { "gcc" });
    if cxx {
        cmd.arg(format!("-std={cxx_std}")).args(CXX_WARNINGS);
    } else {
        cmd.args(C_FLAGS);
    }
    cmd.arg("-I")
        .arg(repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Dynamic => {
            let lib_dir = lib_dir();
            cmd.arg(format!("-L{}", lib_dir.display()))
                .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
                .arg("-llbagent");
        }
        Link::Static => {
            cmd.arg(target_dir().join("liblbagent.a"))
                .args(["-lpthread", "-ldl", "-lm"]);
        }
        Link::Dlopen => {
            cmd.arg("-ldl");
        }
    }
    run_ok(&mut cmd);
    exe
}

pub fn valgrind(exe: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--quiet",
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect",
        "--show-leak-kinds=definite,indirect",
    ])
    .arg(exe);
    cmd
}

/// `cargo test` does not rebuild the shared library (only `cargo build` does, which `make test`
/// runs first): refuse to test C programs against a library older than the source.
fn assert_library_is_fresh() {
    fn newest(dir: &std::path::Path) -> std::time::SystemTime {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    newest(&e.path())
                } else {
                    meta.modified().unwrap()
                }
            })
            .max()
            .unwrap_or(std::time::UNIX_EPOCH)
    }
    let lib = target_dir().join("liblbagent.so");
    let built = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    assert!(
        built >= newest(&repo().join("src")),
        "{} is older than the source: run `cargo build` first (`make test` does)",
        lib.display()
    );
}
