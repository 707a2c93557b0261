//! End-to-end, in throwaway network namespaces: the reference policy compiled,
//! loaded with `nft -f` into a firewall namespace, and every `[[tests]]` entry plus
//! a sample of random flows sent as real TCP/UDP/ICMP packets (IPv4 and IPv6). What
//! arrives must be what the reference evaluator says.
//!
//! Needs root, `ip` and `nft`. Under CI (CI set) a missing prerequisite fails the
//! test; elsewhere it is skipped with a message.

use fwctl::compile::{compile, Capabilities};
use fwctl::lab::{self, plan};
use fwctl::model::{Date, Named};
use fwctl::sys::netns::{privileged_or_skip, unique_prefix, Lab};
use std::path::Path;
use std::time::Duration;

const TODAY: Date = Date { year: 2026, month: 11, day: 23 };

fn reference() -> fwctl::model::Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/carif-oref");
    let loaded = fwctl::check::load(&path, TODAY);
    assert!(!loaded.has_errors(), "{:?}", loaded.diags);
    loaded.policy.unwrap()
}

/// Random flows between named endpoints of the policy (deterministic seed per run
/// printed, so a failure can be replayed with FWCTL_SEED).
fn random_flows(p: &fwctl::model::Policy, n: usize) -> Vec<(String, String, fwctl::eval::Packet)> {
    let seed: u64 = std::env::var("FWCTL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("random flow seed: {seed}");
    let mut x = seed;
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let mut names: Vec<String> = p.names.iter().filter(|(_, (n, _))| !matches!(n, Named::Group(..))).map(|(k, _)| k.clone()).collect();
    names.extend(["any".to_string(), "self".to_string(), "198.51.100.77".to_string(), "2001:db8:ffff::9".to_string()]);
    let services = ["ssh", "http", "https", "dns", "ntp", "mysql", "mssql", "rdp", "ping", "wireguard", "snmp", "extranet", "monitoring"];
    let mut out = vec![];
    let mut guard = 0;
    while out.len() < n && guard < n * 20 {
        guard += 1;
        let (f, t, s) = (&names[next(names.len())], &names[next(names.len())], services[next(services.len())]);
        if let Some(flow) = plan::flow(p, f, t, s) {
            for pkt in fwctl::eval::flow_packets(p, &flow) {
                out.push(("random".to_string(), format!("{f} → {t} {s}"), pkt));
            }
        }
    }
    out
}

#[test]
fn reference_policy_real_packets_agree_with_the_evaluator() {
    if !privileged_or_skip() {
        return;
    }
    let p = reference();
    let compiled = compile(&p, Capabilities { flowtable: false }).expect("compiles");
    let script = fwctl::render::nft::script(&compiled.ruleset, "test");
    let mut packets: Vec<_> = plan::lab_packets(&p).into_iter().filter(|(o, _, _)| o.starts_with("test")).collect();
    let tests_total = p.tests.len();
    packets.extend(random_flows(&p, 150));
    let plan = plan::plan(&p, packets);
    let mut lab = Lab::new(&unique_prefix("fwr")).expect("lab");
    lab::up(&mut lab, &plan, Some(&script)).expect("lab up");
    let rows = lab::check(&lab, &plan, Duration::from_millis(800));
    let (table, bad) = lab::table(&rows);
    // Every [[tests]] entry was probed with at least one real packet.
    for i in 1..=tests_total {
        let origin = format!("test #{i}");
        assert!(rows.iter().any(|(pp, _)| pp.origin == origin), "{origin} was not probed; skipped: {:?}", plan.skipped.iter().filter(|s| s.0 == origin).collect::<Vec<_>>());
    }
    let protos: std::collections::BTreeSet<_> = rows.iter().map(|(pp, _)| (pp.packet.proto, pp.packet.src.is_ipv6())).collect();
    assert!(protos.len() >= 6, "TCP, UDP and ICMP over both families expected, got {protos:?}");
    assert_eq!(bad, 0, "real packets disagree with the evaluator:\n{table}");
    eprintln!("{} probes agree ({} skipped as not reproducible in the lab)", rows.len(), plan.skipped.len());
}
