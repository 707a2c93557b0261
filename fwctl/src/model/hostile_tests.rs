//! Regression tests for hostile input at the model boundary (issue 9): every
//! value class is validated with a located error, across every name namespace and
//! across tunnels. Each test names what it guards; they assert on diagnostic codes
//! and the located text, not on message wording.

use crate::check::{load_str, Loaded};
use crate::model::Date;

const TODAY: Date = Date { year: 2026, month: 11, day: 23 };
const K1: &str = "gveskYu57RTRQS+492bJHfzkoY+19NQLBocf3QRrw2I=";
const K2: &str = "Mcf4Scb4CCQGPBhxPMypMsB8XYh/IsqjyDgIgiiJ1A0=";

fn load(text: &str) -> Loaded {
    load_str("t.toml", text, TODAY)
}

/// (code, text under the span) of every error.
fn errors(l: &Loaded) -> Vec<(&'static str, String)> {
    l.diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.span.map(|s| l.sm.text(s.file)[s.start..s.end].to_string()).unwrap_or_default()))
        .collect()
}

const LAN: &str = "[interfaces.lan]\ndevice = \"eth1\"\nzone = \"lan\"\n[zones.lan]\nnetworks = [\"192.0.2.0/24\"]\n[zones.admins]\n";

fn vpn(name: &str, port: Option<u16>, peers: &[(&str, &str, &str)]) -> String {
    let mut s = format!("[vpn.{name}]\nzone = \"admins\"\naddresses = [\"10.{}.0.1/24\"]\nprivate_key_file = \"/etc/fwctl/keys/{name}.key\"\n", 200 + name.len());
    if let Some(p) = port {
        s.push_str(&format!("listen_port = {p}\n"));
    }
    for (n, k, ips) in peers {
        s.push_str(&format!("[[vpn.{name}.peers]]\nname = \"{n}\"\npublic_key = \"{k}\"\nallowed_ips = [{ips}]\n"));
    }
    s
}

#[test]
fn names_that_read_as_addresses_are_refused_in_every_namespace() {
    let cases = [
        ("[hosts]\n\"198.51.100.7\" = \"192.0.2.20\"\n", "\"198.51.100.7\""),
        ("[groups]\n\"192.0.2.0\" = [\"192.0.2.0/25\"]\n", "\"192.0.2.0\""),
        ("[zones.\"10.1\"]\n", "\"10.1\""),
        ("[interfaces.\"2024\"]\ndevice = \"eth5\"\nzone = \"lan\"\n", "\"2024\""),
        ("[services]\n\"8000-8080\" = { tcp = [22] }\n", "\"8000-8080\""),
        ("[vpn.\"10\"]\nzone = \"admins\"\nprivate_key_file = \"/k\"\n", "\"10\""),
    ];
    for (extra, at) in cases {
        let l = load(&format!("{LAN}{extra}"));
        assert_eq!(errors(&l), vec![("invalid-name", at.to_string())], "{extra}");
    }
}

#[test]
fn reserved_names_are_refused_outside_the_address_namespace_too() {
    let l = load(&format!("{LAN}[interfaces.self]\ndevice = \"eth5\"\nzone = \"lan\"\n[services]\nany = {{ tcp = [22] }}\n"));
    assert_eq!(errors(&l), vec![("reserved-name", "self".into()), ("reserved-name", "any".into())]);
}

#[test]
fn rule_names_that_nft_would_expand_or_break_are_refused() {
    for name in ["a$b", "a\\\\b", "a\\\"b", "tab\\tname", "rtl\u{202e}x", " padded", ""] {
        let l = load(&format!("{LAN}[[rules]]\nname = \"{name}\"\nfrom = \"lan\"\nto = \"self\"\nallow = [\"ssh\"]\nlog = true\n"));
        assert_eq!(errors(&l).iter().map(|e| e.0).collect::<Vec<_>>(), vec!["invalid-name"], "{name:?}");
    }
    // Multibyte and punctuation other than `$`, `"` and `\` are fine.
    let l = load(&format!("{LAN}[[rules]]\nname = \"règle #1 (ü) @x * 'q' {{}};\"\nfrom = \"lan\"\nto = \"self\"\nallow = [\"ssh\"]\nlog = true\n"));
    assert_eq!(errors(&l), vec![]);
}

#[test]
fn rule_comment_and_owner_must_be_printable() {
    let l = load(&format!("{LAN}[[rules]]\nname = \"r\"\nfrom = \"lan\"\nto = \"self\"\nallow = [\"ssh\"]\ncomment = \"a\\nb\"\nowner = \"x\\u001b[31m\"\n"));
    assert_eq!(errors(&l).iter().map(|e| e.0).collect::<Vec<_>>(), vec!["invalid-value", "invalid-value"]);
}

#[test]
fn device_names_with_nft_wildcards_or_string_breakers_are_refused() {
    for dev in ["eth*", "e*x", "e\\\\x", "e\\\"x", "e\u{200b}x"] {
        let l = load(&format!("[interfaces.wan]\ndevice = \"{dev}\"\nzone = \"internet\"\n[zones.internet]\n"));
        assert_eq!(errors(&l).iter().map(|e| e.0).collect::<Vec<_>>(), vec!["invalid-device"], "{dev:?}");
    }
    let l = load("[interfaces.wan]\ndevice = \"br-lan.10@x\"\nzone = \"internet\"\n[zones.internet]\n");
    assert_eq!(errors(&l), vec![]);
}

#[test]
fn key_paths_must_be_absolute_and_normalised() {
    for (path, ok) in [
        ("/etc/fwctl/keys/wg0.key", true),
        ("", false),
        ("wg0.key", false),
        ("./wg0.key", false),
        ("/etc/fwctl/keys/", false),
        ("/", false),
        ("/etc//fwctl/wg0.key", false),
        ("/etc/./wg0.key", false),
        ("/etc/fwctl/../wg0.key", false),
    ] {
        let l = load(&format!("[zones.admins]\n[vpn.wg0]\nzone = \"admins\"\nprivate_key_file = \"{path}\"\n[[vpn.wg0.peers]]\nname = \"a\"\npublic_key = \"{K1}\"\nallowed_ips = [\"10.200.0.2/32\"]\npreshared_key_file = \"{path}\"\n"));
        let want: Vec<&str> = if ok { vec![] } else { vec!["invalid-path", "invalid-path"] };
        assert_eq!(errors(&l).iter().map(|e| e.0).collect::<Vec<_>>(), want, "{path:?}");
    }
}

#[test]
fn endpoints_need_a_real_port_and_a_plain_address() {
    for (ep, ok) in [
        ("198.51.100.7:51820", true),
        ("[2001:db8::7]:51820", true),
        ("vpn.example.org:51820", true),
        ("198.51.100.7:0", false),
        ("198.51.100.7:+80", false),
        ("[::ffff:198.51.100.7]:51820", false),
        ("2001:db8::7:51820", false),
        ("10.1:51820", false),
        ("-bad.example:51820", false),
        (":51820", false),
    ] {
        let l = load(&format!("[zones.admins]\n{}endpoint = \"{ep}\"\n", vpn("wg0", None, &[("a", K1, "\"10.200.0.2/32\"")])));
        assert_eq!(errors(&l).is_empty(), ok, "{ep}: {:?}", errors(&l));
    }
}

#[test]
fn listen_ports_are_compared_across_tunnels_including_the_default() {
    let both_default = format!("[zones.admins]\n{}{}", vpn("wg0", None, &[]), vpn("wg1", None, &[]));
    assert_eq!(errors(&load(&both_default)), vec![("duplicate", "wg1".into())]);
    let explicit_then_default = format!("[zones.admins]\n{}{}", vpn("wg0", Some(51820), &[]), vpn("wg1", None, &[]));
    assert_eq!(errors(&load(&explicit_then_default)), vec![("duplicate", "wg1".into())]);
    let distinct = format!("[zones.admins]\n{}{}", vpn("wg0", None, &[]), vpn("wg1", Some(51821), &[]));
    assert_eq!(errors(&load(&distinct)), vec![]);
}

#[test]
fn a_peer_key_is_unique_across_tunnels() {
    let text = format!("[zones.admins]\n{}{}", vpn("wg0", Some(1000), &[("a", K1, "\"10.200.0.2/32\"")]), vpn("wg1", Some(1001), &[("b", K1, "\"10.201.0.2/32\"")]));
    assert_eq!(errors(&load(&text)), vec![("duplicate", format!("\"{K1}\""))]);
}

#[test]
fn allowed_ips_may_not_route_another_tunnels_peer_or_cover_a_zone_network() {
    let other_peer = format!("[zones.admins]\n{}{}", vpn("wg0", Some(1000), &[("a", K1, "\"10.200.0.2/32\"")]), vpn("wg1", Some(1001), &[("b", K2, "\"10.200.0.0/16\"")]));
    assert_eq!(errors(&load(&other_peer)), vec![("overlap", "\"10.200.0.0/16\"".into())]);
    let covers_lan = format!("{LAN}{}", vpn("wg0", None, &[("a", K1, "\"192.0.2.0/23\"")]));
    assert_eq!(errors(&load(&covers_lan)), vec![("overlap", "\"192.0.2.0/23\"".into())]);
    let equals_lan = format!("{LAN}{}", vpn("wg0", None, &[("a", K1, "\"192.0.2.0/24\"")]));
    assert_eq!(errors(&load(&equals_lan)), vec![("overlap", "\"192.0.2.0/24\"".into())]);
    // Strictly inside a zone's network, or a default route (not routed): accepted.
    let inside = format!("{LAN}{}", vpn("wg0", None, &[("a", K1, "\"192.0.2.7/32\"")]));
    assert_eq!(errors(&load(&inside)), vec![]);
    let default_route = format!("{LAN}{}", vpn("wg0", None, &[("a", K1, "\"0.0.0.0/0\"")]));
    assert_eq!(errors(&load(&default_route)), vec![]);
}

#[test]
fn a_vpn_with_bad_values_reports_them_all_and_still_declares_its_peers() {
    let text = format!(
        "{LAN}[vpn.wg0]\nzone = \"admins\"\nlisten_port = 0\nprivate_key_file = \"rel.key\"\n[[vpn.wg0.peers]]\nname = \"a\"\npublic_key = \"{K1}\"\nallowed_ips = [\"10.200.0.2/32\"]\n[[vpn.wg0.peers]]\nname = \"b\"\npublic_key = \"nope\"\nallowed_ips = [\"10.200.0.3/32\"]\n[[rules]]\nname = \"r\"\nfrom = [\"wg0.a\", \"wg0.b\"]\nto = \"lan\"\nallow = [\"ssh\"]\n"
    );
    let codes: Vec<&str> = errors(&load(&text)).iter().map(|e| e.0).collect();
    assert_eq!(codes, vec!["invalid-port", "invalid-path", "invalid-key"]);
}

#[test]
fn ipv4_mapped_addresses_are_refused_wherever_an_address_is_read() {
    let cases = [
        "[hosts]\nh = \"::ffff:192.0.2.9\"\n",
        "[groups]\ng = [\"::ffff:192.0.2.0/120\"]\n",
        "[[rules]]\nname = \"r\"\nfrom = \"::ffff:198.51.100.1\"\nto = \"self\"\nallow = [\"ssh\"]\n",
        "[[nat.snat]]\nfrom = \"lan\"\nout = \"lan\"\nto = \"::ffff:203.0.113.1\"\n",
    ];
    for extra in cases {
        let l = load(&format!("{LAN}{extra}"));
        assert_eq!(errors(&l).iter().map(|e| e.0).collect::<Vec<_>>(), vec!["invalid-address"], "{extra}");
    }
}

#[test]
fn string_dates_must_be_real_days() {
    for (d, ok) in [("2028-02-29", true), ("2026-02-30", false), ("+026-01-01", false), ("2026-02-29", false)] {
        let l = load(&format!("{LAN}[[rules]]\nname = \"r\"\nfrom = \"lan\"\nto = \"self\"\nallow = [\"ssh\"]\nexpires = \"{d}\"\n"));
        assert_eq!(errors(&l).is_empty(), ok, "{d}");
    }
}
