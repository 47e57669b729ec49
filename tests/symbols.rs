//! The shared library exports exactly the functions declared in the header, carries its
//! soname, and is marked not to be unloaded.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn header_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(common::repo().join("include/lbagent.h")).unwrap();
    let mut names = BTreeSet::new();
    for (i, _) in header.match_indices("lbagent_") {
        let rest = &header[i..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with('(') {
            names.insert(name);
        }
    }
    names
}

#[test]
fn exports_exactly_the_header_functions() {
    let lib = common::target_dir().join("liblbagent.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            (kind == "T").then(|| name.to_string())
        })
        .collect();
    let declared = header_functions();
    assert!(declared.len() >= 14, "{declared:?}");
    assert_eq!(exported, declared);
}

#[test]
fn has_soname_and_nodelete() {
    let lib = common::target_dir().join("liblbagent.so");
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    assert!(
        text.contains(&format!("Library soname: [liblbagent.so.{major}]")),
        "{text}"
    );
    assert!(text.contains("NODELETE"), "{text}");
}
