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
    let cases: [(&str, &[&str]); 8] = [
        ("explain-internet-db03-mssql.txt", &["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433"]),
        ("explain-partner-db03-mssql.txt", &["--src", "198.51.100.5", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433"]),
        ("explain-admin-self-ssh.txt", &["--src", "10.200.0.2", "--dst", "self", "--proto", "tcp", "--port", "22"]),
        ("explain-port-forward.txt", &["--src", "203.0.113.200", "--dst", "203.0.113.10", "--proto", "tcp", "--port", "443"]),
        ("explain-spoofed-peer.txt", &["--src", "10.200.0.2", "--dst", "192.0.2.3", "--proto", "tcp", "--port", "22", "--in", "wan"]),
        // Anti-spoofing: the monitoring host's address arriving on the WAN.
        ("explain-spoofed-rack-source.txt", &["--src", "192.0.2.30", "--dst", "192.0.2.3", "--proto", "udp", "--port", "161", "--in", "wan"]),
        ("explain-spoofed-rack-source.json", &["--src", "192.0.2.30", "--dst", "192.0.2.3", "--proto", "udp", "--port", "161", "--in", "wan", "--json"]),
        // A device the policy does not declare takes the ruleset's undeclared path.
        ("explain-undeclared-device.txt", &["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433", "--in", "eth3"]),
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

/// A policy whose source mark needs 33 bits: 2045 address-only zones declared before
/// the one zone with an interface (its id 2048 needs 12 bits), 1023 group classes
/// (10 bits) and 2047 host classes (11 bits). `check` must refuse it, pointing at
/// the zone that sets the width of the zone id (issue 9: no silent narrowing).
/// Generated here (it is 100 KB of TOML); the diagnostic is the golden file.
#[test]
fn check_mark_overflow() {
    use std::fmt::Write as _;
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join("mark-overflow");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut customers = String::from("[zones]\n");
    for i in 0..2045 {
        let _ = writeln!(customers, "c{i} = {{ networks = [\"2001:db8:c:{i:x}::/64\"] }}");
    }
    // Address `x` of a 2^k block has the signature "the rules i whose bit is set in
    // x": rule i names the 2^(k-1-i) blocks of size 2^i where bit i is set.
    let pattern = |prefix: &str, k: u32, i: u32| -> String {
        let size = 1u32 << i;
        (0..(1u32 << k)).step_by(size as usize).filter(|x| x & size != 0).map(|x| format!("\"{prefix}{x:x}/{}\"", 128 - i)).collect::<Vec<_>>().join(", ")
    };
    let mut network = String::from("[firewall]\nname = \"overflow\"\ndefault = \"drop\"\n\n[interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n\n[zones.internet]\n\n[groups]\n");
    for i in 0..10 {
        let _ = writeln!(network, "grp{i} = [{}]", pattern("2001:db8:a::", 10, i));
    }
    for i in 0..10 {
        let _ = writeln!(network, "\n[[rules]]\nname = \"groups-{i}\"\nfrom = \"grp{i}\"\nto = \"self\"\nallow = [\"https\"]");
    }
    for i in 0..11 {
        let _ = writeln!(network, "\n[[rules]]\nname = \"hosts-{i}\"\nfrom = [{}]\nto = \"self\"\nallow = [\"ssh\"]", pattern("2001:db8:f::", 11, i));
    }
    std::fs::write(dir.join("customers.toml"), customers).expect("write");
    std::fs::write(dir.join("network.toml"), network).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .args(["check", "mark-overflow"])
        .current_dir(base)
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", "2026-11-23")
        .output()
        .expect("run fwctl");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "check must refuse a policy whose mark does not fit");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    golden("check-mark-overflow.txt", &text);
}

/// An IPv6 port forward without `destination` (home-router's `nas-remote`):
/// `explain` reports the translation, and the compiled ruleset (the
/// `dnat6_any` map in `home-router-flowtable.nft`) performs it.
#[test]
fn explain_ipv6_port_forward_without_destination() {
    let out = run(&["explain", "policies/examples/home-router.toml", "--src", "2001:db8:ffff::1", "--dst", "2001:db8:1::10", "--proto", "tcp", "--port", "443"]);
    golden("explain-home-router-ipv6-forward.txt", &out);
}
