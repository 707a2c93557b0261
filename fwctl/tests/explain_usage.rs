//! `fwctl explain` refuses values no packet can have, as a usage error (exit 64)
//! with a message naming the flag, before reading the policy: port 0 for TCP/UDP,
//! an ICMP type above 255, an IPv4-mapped IPv6 address (an IPv4 packet never
//! carries one, so the answer would describe a packet that cannot exist).

use std::path::Path;
use std::process::Command;

fn explain(args: &[&str]) -> (i32, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .arg("explain")
        .arg("policies/carif-oref")
        .args(args)
        .current_dir(&root)
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", "2026-11-23")
        .output()
        .expect("run fwctl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn explain_port_zero_is_a_usage_error() {
    for proto in ["tcp", "udp"] {
        let (code, err) = explain(&["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", proto, "--port", "0"]);
        assert_eq!(code, 64, "{proto}: {err}");
        assert_eq!(err, "error: --port must be 1..=65535 for tcp and udp\n");
    }
}

#[test]
fn explain_icmp_type_above_255_is_a_usage_error() {
    let (code, err) = explain(&["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "icmp", "--port", "300"]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(err, "error: for icmp and icmpv6, --port is the ICMP type: 0..=255\n");
    let (code, err) = explain(&["--src", "2001:db8::1", "--dst", "2001:db8:10::5", "--proto", "icmpv6", "--port", "256"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn explain_ipv4_mapped_address_is_a_usage_error() {
    let (code, err) = explain(&["--src", "::ffff:203.0.113.200", "--dst", "::ffff:192.0.2.20", "--proto", "tcp", "--port", "443"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.starts_with("error: --src and --dst take"), "{err}");
}

#[test]
fn explain_boundary_values_are_still_answered() {
    // The largest ICMP type and port 65535 are real values: answered (exit 0).
    let (code, err) = explain(&["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "icmp", "--port", "255"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = explain(&["--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "65535"]);
    assert_eq!(code, 0, "{err}");
}
