//! The C boundary's one contract, checked from the header itself so that no function can
//! escape it: every function of `include/lbagent.h` is called from C with each bad argument
//! its parameters can take, and
//! - a fallible function returns the expected code (or its documented failure value: -1, 0)
//!   and leaves `lbagent_last_error` as "function_name: what was wrong", naming the argument;
//! - a hot-path function (heartbeat, set_state, set_weight, set_load, worker heartbeat)
//!   returns the expected code and leaves the last error untouched;
//! - freeing a handle twice, or a foreign pointer, is detected the same way for `lbagent` and
//!   `lbagent_prober`, without reading freed memory (the program runs under valgrind).
//!
//! A function or a parameter the rules below do not know fails the test: a new function must
//! say how it fails before it can ship.

mod common;

use common::c_build::{Link, build, out_dir, run_ok, valgrind};
use common::repo;

/// The hot path: these never touch the thread-local last error (signal handlers call them).
const HOT: &[&str] = &[
    "lbagent_heartbeat",
    "lbagent_set_state",
    "lbagent_set_weight",
    "lbagent_set_load",
    "lbagent_worker_heartbeat",
];

/// Functions that cannot fail.
const INFALLIBLE: &[&str] = &[
    "lbagent_strerror",
    "lbagent_last_error",
    "lbagent_version",
    "lbagent_state_name",
    "lbagent_reason_name",
];

struct Param {
    ty: String,
    name: String,
}

struct Function {
    ret: String,
    name: String,
    params: Vec<Param>,
}

/// The function declarations of the header.
fn functions(header: &str) -> Vec<Function> {
    let body = header
        .split("extern \"C\" {")
        .nth(1)
        .expect("the header's extern \"C\" block");
    let mut out = Vec::new();
    let mut decl = String::new();
    for line in body.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with("/*") || line.starts_with('*') {
            continue;
        }
        decl.push_str(line);
        decl.push(' ');
        if !line.ends_with(';') {
            continue;
        }
        let text = std::mem::take(&mut decl)
            .replace("LBAGENT_MUST_USE", "")
            .replace(';', "");
        let text = text.trim();
        let (head, params) = text.split_once('(').expect("a declaration");
        let params = params.trim().trim_end_matches(')');
        let split = head.rfind([' ', '*']).expect("a return type");
        let name = head[split + 1..].trim().to_string();
        let ret = head[..=split].trim().to_string();
        let params = if params.trim() == "void" {
            Vec::new()
        } else {
            params
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    let split = p.rfind([' ', '*']).expect("a parameter");
                    Param {
                        ty: p[..=split].split_whitespace().collect::<Vec<_>>().join(" "),
                        name: p[split + 1..].to_string(),
                    }
                })
                .collect()
        };
        out.push(Function { ret, name, params });
    }
    out
}

/// A parameter's good value and its bad values with the code each must give.
struct Rule {
    valid: &'static str,
    bad: Vec<(&'static str, &'static str)>,
}

fn rule(function: &str, p: &Param) -> Rule {
    let r = |valid, bad: &[(&'static str, &'static str)]| Rule {
        valid,
        bad: bad.to_vec(),
    };
    let hot = HOT.contains(&function);
    let freeing = function.ends_with("_free");
    match (p.ty.as_str(), p.name.as_str()) {
        ("struct lbagent *" | "const struct lbagent *", "agent") => {
            let mut bad = vec![("(struct lbagent *)foreign", "LBAGENT_ERR_BAD_HANDLE")];
            if !freeing {
                bad.push(("NULL", "LBAGENT_ERR_NULL_ARGUMENT"));
            }
            // The hot path checks a magic word, which is in freed memory.
            if !hot {
                bad.push(("freed_agent", "LBAGENT_ERR_BAD_HANDLE"));
            }
            Rule {
                valid: "agent",
                bad,
            }
        }
        ("struct lbagent_prober *" | "const struct lbagent_prober *", "prober") => {
            let mut bad = vec![
                ("(struct lbagent_prober *)foreign", "LBAGENT_ERR_BAD_HANDLE"),
                ("freed_prober", "LBAGENT_ERR_BAD_HANDLE"),
                // An agent is not a prober.
                ("(struct lbagent_prober *)agent", "LBAGENT_ERR_BAD_HANDLE"),
            ];
            if !freeing {
                bad.push(("NULL", "LBAGENT_ERR_NULL_ARGUMENT"));
            }
            Rule {
                valid: "prober",
                bad,
            }
        }
        ("const char *", "config") => r(
            "\"listen=127.0.0.1:0\"",
            &[("\"listen=nowhere\"", "LBAGENT_ERR_CONFIG")],
        ),
        ("const char *", "service" | "reason") => r("NULL", &[]),
        ("const char *", "name") => r("\"n\"", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("const char *", "target") => r(
            "\"127.0.0.1:9\"",
            &[
                ("NULL", "LBAGENT_ERR_NULL_ARGUMENT"),
                ("\"127.0.0.1:99999\"", "LBAGENT_ERR_INVALID_ARGUMENT"),
            ],
        ),
        ("const char *", "options") => r("NULL", &[("\"bogus=1\"", "LBAGENT_ERR_CONFIG")]),
        ("struct lbagent **", "out") => r("&out_agent", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("struct lbagent_prober **", "out") => {
            r("&out_prober", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")])
        }
        ("struct lbagent_status *", "out") => {
            r("&status", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")])
        }
        ("struct lbagent_drain *", "out") => r("&drain", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("uint64_t *", "out") => r("&u64", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("uint16_t *", "out") => r("&u16", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("unsigned int *", "slot") => r("&uint", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("unsigned int *", "released") => r("NULL", &[]),
        ("size_t *", "count") => r("&size", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")]),
        ("struct lbagent_probe_result *", "results") => {
            r("results", &[("NULL", "LBAGENT_ERR_NULL_ARGUMENT")])
        }
        ("size_t", "capacity") => r("4", &[]),
        ("lbagent_check_fn", "callback") => r("check", &[("NULL", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("lbagent_log_fn", "callback") => r("NULL", &[]),
        ("void *", "userdata") => r("NULL", &[]),
        ("lbagent_free_fn", "free_userdata") => r("NULL", &[]),
        ("uint32_t", "interval_ms") => r("1000", &[("0", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("uint32_t", "timeout_ms" | "in_use" | "capacity") => r("0", &[]),
        ("int", "state") => r(
            "LBAGENT_STATE_UP",
            &[("99", "LBAGENT_ERR_INVALID_ARGUMENT")],
        ),
        ("unsigned int", "weight_pct") => r("50", &[("101", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("int", "counter") => r("0", &[("9999", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("size_t", "index") => r("0", &[("99", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("unsigned int", "slot") => r("0", &[("9999", "LBAGENT_ERR_NOT_FOUND")]),
        ("int", "pid") => r("12345", &[("0", "LBAGENT_ERR_INVALID_ARGUMENT")]),
        ("uint64_t", "token") => r("1", &[]),
        (ty, name) => panic!(
            "{function}: no rule for parameter `{ty} {name}`: add its valid and bad values to \
             tests/ffi_contract.rs"
        ),
    }
}

/// How a failed call of `f` shows in its return value: the C expression compared with the
/// expected code, or None for `void`.
fn failure_value(f: &Function, code: &str) -> Option<String> {
    match f.ret.as_str() {
        "enum lbagent_result" => Some(code.to_string()),
        "int" => Some("-1".into()),
        "size_t" => Some("0".into()),
        "void" => None,
        other => panic!(
            "{}: returns `{other}`; say in tests/ffi_contract.rs how it reports a failure",
            f.name
        ),
    }
}

fn c_program(functions: &[Function]) -> (String, usize) {
    let mut cases = String::new();
    let mut count = 0;
    for f in functions {
        if INFALLIBLE.contains(&f.name.as_str()) {
            continue;
        }
        let hot = HOT.contains(&f.name.as_str());
        let rules: Vec<Rule> = f.params.iter().map(|p| rule(&f.name, p)).collect();
        let before = count;
        for (i, (param, rule)) in f.params.iter().zip(&rules).enumerate() {
            for (bad, code) in &rule.bad {
                let args: Vec<&str> = rules
                    .iter()
                    .enumerate()
                    .map(|(j, r)| if i == j { *bad } else { r.valid })
                    .collect();
                let call = format!("{}({})", f.name, args.join(", "));
                let (got, want) = match failure_value(f, code) {
                    Some(want) => (format!("(long)({call})"), want),
                    // void: the call, then nothing to compare.
                    None => (format!("((void)({call}), 0L)"), "0".to_string()),
                };
                cases.push_str(&format!(
                    "    stale(\"{name}\");\n    got = {got};\n    \
                     expect(\"{name}\", \"{param}\", \"{bad_text}\", got, (long)({want}), {hot});\n",
                    name = f.name,
                    param = param.name,
                    bad_text = bad.replace('"', "\\\""),
                    hot = i32::from(hot),
                ));
                count += 1;
            }
        }
        assert!(
            count > before,
            "{}: no bad argument to try; a fallible function must have one",
            f.name
        );
    }
    let program = format!(
        r#"/* Generated by tests/ffi_contract.rs from include/lbagent.h: every fallible function
 * called with each bad argument. */
#include <stdio.h>
#include <string.h>
#include "lbagent.h"

static int failures;
static char stale_text[512];

static int check(void *userdata, char *message, size_t len) {{
    (void)userdata; (void)message; (void)len;
    return 0;
}}

/* Leaves a last error from another function than `not_this`. */
static void stale(const char *not_this) {{
    if (strcmp(not_this, "lbagent_stop") != 0) {{
        if (lbagent_stop(NULL, 0) == LBAGENT_OK) {{ failures++; }}
    }} else {{
        if (lbagent_remove_check(NULL, NULL) == LBAGENT_OK) {{ failures++; }}
    }}
    lbagent_last_error(stale_text, sizeof stale_text);
}}

static void expect(const char *fn, const char *param, const char *bad, long got, long want,
                   int hot) {{
    char msg[512];
    char prefix[128];
    lbagent_last_error(msg, sizeof msg);
    snprintf(prefix, sizeof prefix, "%s: ", fn);
    if (got != want) {{
        printf("FAIL %s(%s = %s): returned %ld, expected %ld\n", fn, param, bad, got, want);
        failures++;
    }} else if (hot && strcmp(msg, stale_text) != 0) {{
        printf("FAIL %s(%s = %s): a hot-path call changed the last error to \"%s\"\n", fn, param,
               bad, msg);
        failures++;
    }} else if (!hot && (strncmp(msg, prefix, strlen(prefix)) != 0 || strstr(msg, param) == NULL)) {{
        printf("FAIL %s(%s = %s): last error \"%s\" does not name the function and %s\n", fn,
               param, bad, msg, param);
        failures++;
    }} else {{
        printf("ok %s(%s = %s): %s\n", fn, param, bad, hot ? "(hot path)" : msg);
    }}
}}

int main(void) {{
    static unsigned char foreign[64];
    struct lbagent *agent = NULL, *freed_agent = NULL, *out_agent = NULL;
    struct lbagent_prober *prober = NULL, *freed_prober = NULL, *out_prober = NULL;
    struct lbagent_status status;
    struct lbagent_drain drain;
    struct lbagent_probe_result results[4];
    uint64_t u64 = 0;
    uint16_t u16 = 0;
    unsigned int uint = 0;
    size_t size = 0;
    long got;
    if (lbagent_start("listen=127.0.0.1:0 tcp_agent=127.0.0.1:0 http=127.0.0.1:0", &agent) != LBAGENT_OK ||
        lbagent_start("listen=127.0.0.1:0", &freed_agent) != LBAGENT_OK ||
        lbagent_prober_new(NULL, &prober) != LBAGENT_OK ||
        lbagent_prober_new(NULL, &freed_prober) != LBAGENT_OK) {{
        printf("setup failed\n");
        return 2;
    }}
    lbagent_free(freed_agent);
    lbagent_prober_free(freed_prober);

{cases}
    (void)out_agent; (void)out_prober; (void)status; (void)drain; (void)results; (void)u64; (void)u16;
    (void)uint; (void)size;
    lbagent_prober_free(prober);
    lbagent_free(agent);
    printf("%d cases, %d failures\n", {count}, failures);
    return failures == 0 ? 0 : 1;
}}
"#
    );
    (program, count)
}

#[test]
fn every_fallible_function_names_itself_in_the_last_error() {
    let header = std::fs::read_to_string(repo().join("include/lbagent.h")).unwrap();
    let functions = functions(&header);
    assert!(functions.len() > 30, "{} functions parsed", functions.len());
    for name in HOT.iter().chain(INFALLIBLE) {
        assert!(
            functions.iter().any(|f| f.name == *name),
            "{name} is not in the header"
        );
    }
    let (program, count) = c_program(&functions);
    let source = out_dir().join("ffi_contract.c");
    std::fs::write(&source, program).unwrap();
    let exe = build(source.to_str().unwrap(), Link::Dynamic);
    // Under valgrind: the freed handles must be detected without reading freed memory.
    let out = run_ok(&mut valgrind(&exe));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{count} cases, 0 failures")),
        "{stdout}"
    );
    // Both kinds of handle are covered the same way.
    for case in [
        "lbagent_free(agent = freed_agent)",
        "lbagent_prober_free(prober = freed_prober)",
        "lbagent_free(agent = (struct lbagent *)foreign)",
        "lbagent_prober_free(prober = (struct lbagent_prober *)foreign)",
    ] {
        assert!(stdout.contains(&format!("ok {case}")), "{case}: {stdout}");
    }
}
