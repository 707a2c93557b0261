//! The rack lab: network namespaces mirroring a policy, probed with real packets.
//!
//! Input: a [`plan::Plan`] and a ruleset to load. Output: namespaces
//! (`<prefix>-fw` holding the policy's interface names, `<prefix>-sN` behind each
//! interface) and, for `check`, what each probe observed.
//! Must not: reach outside its own namespaces; every probe is bounded in time.

pub mod plan;

use crate::sys::netns::{Error, Lab};
use crate::sys::probe::{self, Observed, Probe};
use plan::{Plan, PlannedProbe, Where};
use std::net::IpAddr;
use std::time::Duration;

pub const DEFAULT_PREFIX: &str = "fwlab";
pub const FW: &str = "fw";

fn host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Build the namespaces and links of a plan, then load `ruleset` (an `nft -f`
/// script) into the firewall namespace, if given (`fwctl lab up` applies with
/// `fwctl apply` instead).
pub fn up(lab: &mut Lab, plan: &Plan, ruleset: Option<&str>) -> Result<(), Error> {
    let fw = lab.add_ns(FW)?;
    lab.forwarding(&fw, true)?;
    lab.sysctl(&fw, "net.ipv4.conf.all.rp_filter", "0")?;
    // Hairpin flows must keep crossing the firewall: no redirects.
    lab.sysctl(&fw, "net.ipv4.conf.all.send_redirects", "0")?;
    for seg in &plan.segments {
        let ns = lab.add_ns(&seg.ns)?;
        lab.veth(&fw, &seg.device, &ns, "up0")?;
        lab.sysctl(&fw, &format!("net.ipv4.conf.{}.send_redirects", seg.device), "0")?;
        lab.link_up(&fw, &seg.device)?;
        lab.link_up(&ns, "up0")?;
        for a in &seg.fw_addrs {
            lab.addr(&fw, &seg.device, &host(*a))?;
        }
        // Host side: `sN` holds a bridge (its addresses live on it); `sNb`, when
        // needed, is a second host plugged into that bridge.
        let mut homes = vec![(ns.clone(), "up0", &seg.hosts)];
        if !seg.hosts_b.is_empty() {
            let nb = lab.add_ns(&format!("{}b", seg.ns))?;
            lab.exec(&ns, &["ip", "link", "add", "name", "br0", "type", "bridge"])?;
            lab.exec(&ns, &["ip", "link", "set", "dev", "up0", "master", "br0"])?;
            lab.veth(&ns, "hb", &nb, "up0")?;
            lab.exec(&ns, &["ip", "link", "set", "dev", "hb", "master", "br0"])?;
            lab.link_up(&ns, "hb")?;
            lab.link_up(&ns, "br0")?;
            lab.link_up(&nb, "up0")?;
            homes = vec![(ns.clone(), "br0", &seg.hosts), (nb, "up0", &seg.hosts_b)];
        }
        for (home, dev, hosts) in homes {
            lab.sysctl(&home, "net.ipv4.conf.all.accept_redirects", "0")?;
            lab.sysctl(&home, "net.ipv6.conf.all.accept_redirects", "0")?;
            for a in hosts {
                lab.addr(&home, dev, &host(*a))?;
                lab.route(&fw, &host(*a), None, &seg.device)?;
            }
            for a in &seg.fw_addrs {
                lab.route(&home, &host(*a), None, dev)?;
            }
            // Default routes via the appliance's first address of each family.
            for v6 in [false, true] {
                if let Some(a) = seg.fw_addrs.iter().find(|a| a.is_ipv6() == v6) {
                    lab.route(&home, "default", Some(&a.to_string()), dev)?;
                }
            }
        }
    }
    lab.wait_ready(Duration::from_secs(5))?;
    if let Some(r) = ruleset {
        lab.run_nft(&fw, r)?;
    }
    Ok(())
}

pub fn ns_name(lab: &Lab, plan: &Plan, w: Where) -> String {
    match w {
        Where::Firewall => format!("{}-{FW}", lab.prefix()),
        Where::Segment(s, false) => format!("{}-{}", lab.prefix(), plan.segments[s].ns),
        Where::Segment(s, true) => format!("{}-{}b", lab.prefix(), plan.segments[s].ns),
    }
}

/// Send every planned probe (in parallel, each bounded by `timeout`).
pub fn check(lab: &Lab, plan: &Plan, timeout: Duration) -> Vec<(PlannedProbe, Result<Observed, String>)> {
    let probes: Vec<Probe> = plan
        .probes
        .iter()
        .map(|pp| {
            let proto = match pp.packet.proto {
                crate::model::Proto::Tcp => probe::Proto::Tcp,
                crate::model::Proto::Udp => probe::Proto::Udp,
                _ => probe::Proto::Icmp,
            };
            let probe = Probe::new(proto, &ns_name(lab, plan, pp.client), pp.packet.src, &ns_name(lab, plan, pp.server), pp.packet.dst, pp.packet.port);
            if pp.spoofed {
                probe.spoofed()
            } else {
                probe
            }
        })
        .collect();
    let results = probe::run_many(&probes, timeout, 48);
    plan.probes.iter().cloned().zip(results.into_iter().map(|r| r.map_err(|e| e.to_string()))).collect()
}

/// A table of expected vs observed, one row per probe; returns (text, failures).
pub fn table(rows: &[(PlannedProbe, Result<Observed, String>)]) -> (String, usize) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut bad = 0;
    let _ = writeln!(out, "{:<10} {:<44} {:<52} {:<7} {:<10} ", "origin", "flow", "packet", "expect", "observed");
    for (pp, obs) in rows {
        let expect = match pp.expect {
            crate::eval::Verdict::Accept => "allow",
            crate::eval::Verdict::Drop => "drop",
            crate::eval::Verdict::Reject => "reject",
        };
        let (seen, ok) = match obs {
            Ok(o) => {
                let s = match o {
                    Observed::Delivered => "delivered",
                    Observed::Dropped => "dropped",
                    Observed::Refused => "refused",
                };
                (s.to_string(), plan::agrees(pp.expect, *o))
            }
            Err(e) => (format!("error: {e}"), false),
        };
        if !ok {
            bad += 1;
        }
        let pkt = format!("{} → {} {}/{}", pp.packet.src, pp.packet.dst, pp.packet.proto.name(), pp.packet.port);
        let _ = writeln!(out, "{:<10} {:<44} {:<52} {:<7} {:<10} {}", pp.origin, pp.flow, pkt, expect, seen, if ok { "ok" } else { "MISMATCH" });
    }
    (out, bad)
}
