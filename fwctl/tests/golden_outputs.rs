//! Golden files for what a person reads besides diagnostics: the compiled ruleset
//! of the reference policy, `explain` answers, `check --json`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden_outputs`, then review
//! the diff before committing. The tunnel section of `fwctl plan`
//! (`outputs/plan-tunnels.{txt,json}`) is checked by a unit test of `vpn::plan`,
//! which needs no running tunnel: `UPDATE_GOLDEN=1 cargo test --lib vpn::plan`.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .args(args)
        .current_dir(&root)
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", "2026-11-23")
        .output()
        .expect("run fwctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/outputs").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(10)
            .map(|(i, (e, a))| format!("line {}:\n  - {e}\n  + {a}", i + 1))
            .collect();
        panic!("{name} differs from {} ({} vs {} lines):\n{}", path.display(), expected.lines().count(), actual.lines().count(), diff.join("\n"));
    }
}

#[test]
fn reference_ruleset() {
    golden("carif-oref.nft", &run(&["compile", "policies/carif-oref", "--assume-caps", "none"]));
}

#[test]
fn reference_ruleset_with_flowtable() {
    golden("home-router-flowtable.nft", &run(&["compile", "policies/examples/home-router.toml", "--assume-caps", "all"]));
}

#[test]
fn explain_answers() {
    let cases: [(&str, &[&str]); 5] = [
        ("explain-internet-db03-mssql.txt", &["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433"]),
        ("explain-partner-db03-mssql.txt", &["--src", "198.51.100.5", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433"]),
        ("explain-admin-self-ssh.txt", &["--src", "10.200.0.2", "--dst", "self", "--proto", "tcp", "--port", "22"]),
        ("explain-port-forward.txt", &["--src", "203.0.113.200", "--dst", "203.0.113.10", "--proto", "tcp", "--port", "443"]),
        ("explain-spoofed-peer.txt", &["--src", "10.200.0.2", "--dst", "192.0.2.3", "--proto", "tcp", "--port", "22", "--in", "wan"]),
    ];
    for (name, args) in cases {
        let mut a = vec!["explain", "policies/carif-oref"];
        a.extend_from_slice(args);
        golden(name, &run(&a));
    }
}

#[test]
fn check_json() {
    golden("check-carif-oref.json", &run(&["check", "policies/carif-oref", "--json"]));
}

/// An IPv6 port forward without `destination` (home-router's `nas-remote`):
/// `explain` reports the translation, and the compiled ruleset (the
/// `dnat6_any` map in `home-router-flowtable.nft`) performs it.
#[test]
fn explain_ipv6_port_forward_without_destination() {
    let out = run(&["explain", "policies/examples/home-router.toml", "--src", "2001:db8:ffff::1", "--dst", "2001:db8:1::10", "--proto", "tcp", "--port", "443"]);
    golden("explain-home-router-ipv6-forward.txt", &out);
}
