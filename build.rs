//! Generates the C header with cbindgen into OUT_DIR (never writing outside it) and sets the
//! shared library's link options. `tests/header.rs` compares the result with the committed
//! `include/lbagent.h` and rewrites it when LBAGENT_BLESS=1.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let version = env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("major");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("minor");
    let patch = env::var("CARGO_PKG_VERSION_PATCH").expect("patch");

    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    config.after_includes = Some(format!(
        "\n#define LBAGENT_VERSION \"{version}\"\n\
         #define LBAGENT_VERSION_MAJOR {major}\n\
         #define LBAGENT_VERSION_MINOR {minor}\n\
         #define LBAGENT_VERSION_PATCH {patch}\n\
         \n\
         /* Warns when the result of a call that must be checked is ignored. */\n\
         #if defined(__GNUC__) || defined(__clang__)\n\
         #define LBAGENT_MUST_USE __attribute__((warn_unused_result))\n\
         #else\n\
         #define LBAGENT_MUST_USE\n\
         #endif"
    ));
    let header = out_dir.join("lbagent.h");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(&header);
    println!(
        "cargo:rustc-env=LBAGENT_GENERATED_HEADER={}",
        header.display()
    );

    // The shared library: a soname for packaging, and never unloaded (a running monitor thread
    // would be executing unmapped code after dlclose).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblbagent.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src");
}
