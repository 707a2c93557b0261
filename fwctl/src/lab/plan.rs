//! Which namespaces, addresses and probes mirror a policy (pure).
//!
//! Input: a resolved policy and the packets to check (new connections as the
//! evaluator sees them). Output: a [`Plan`]: one segment per appliance interface
//! (its device name kept in the firewall namespace), the addresses each segment
//! holds, and one probe per packet with the evaluator's expected verdict.
//! Must not: touch the system; the same inputs always give the same plan (so
//! `lab up` and `lab check`, run apart, agree on what exists).

use crate::eval::{appliance_addr, evaluate, flow_packets, Hook, Packet, Verdict};
use crate::model::{Expect, Flow, IfaceId, Policy, Proto};
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub iface: IfaceId,
    /// Device name in the firewall namespace (as in the policy).
    pub device: String,
    /// Short namespace name (the lab prefixes it).
    pub ns: String,
    /// The appliance's addresses on this segment.
    pub fw_addrs: Vec<IpAddr>,
    /// Addresses living behind this interface, in namespace `ns`.
    pub hosts: Vec<IpAddr>,
    /// Addresses living behind this interface in a second namespace `<ns>b`,
    /// bridged to the first, so that flows between two hosts of one segment
    /// cross the firewall (hairpin), as with hosts on separate switch ports.
    pub hosts_b: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    Firewall,
    /// Segment index, and which of its two host namespaces (false: `sN`, true: `sNb`).
    Segment(usize, bool),
}

#[derive(Clone, Debug)]
pub struct PlannedProbe {
    /// What the row is about: "test #3", "matrix".
    pub origin: String,
    pub flow: String,
    pub packet: Packet,
    pub expect: Verdict,
    pub client: Where,
    pub server: Where,
    /// The client sends from a source it does not hold (anti-spoofing probes).
    pub spoofed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub segments: Vec<Segment>,
    pub probes: Vec<PlannedProbe>,
    /// Packets that cannot be reproduced with real packets here, and why.
    pub skipped: Vec<(String, Packet, String)>,
}

/// The packets `lab check` probes: every `[[tests]]` entry, then a matrix of
/// every zone to every host and to the appliance for each service the rules use.
pub fn lab_packets(p: &Policy) -> Vec<(String, String, Packet)> {
    let mut out = vec![];
    for (i, t) in p.tests.iter().enumerate() {
        let flow = format!("{} → {} {}", t.flow.from.text, t.flow.to.text, t.flow.service_text);
        for pkt in flow_packets(p, &t.flow) {
            out.push((format!("test #{}", i + 1), flow.clone(), pkt));
        }
    }
    let mut services: Vec<String> = p.rules.iter().flat_map(|r| r.service_text.iter().cloned()).collect();
    services.sort();
    services.dedup();
    let zones: Vec<&str> = p.zones.iter().filter(|z| !z.ifaces.is_empty()).map(|z| z.name.as_str()).collect();
    let mut dsts: Vec<&str> = p.names.iter().filter(|(_, (n, _))| matches!(n, crate::model::Named::Host(_))).map(|(k, _)| k.as_str()).collect();
    dsts.push("self");
    for z in &zones {
        for d in &dsts {
            for s in &services {
                if let Some(f) = flow(p, z, d, s) {
                    let text = format!("{z} → {d} {s}");
                    for pkt in flow_packets(p, &f) {
                        out.push(("matrix".into(), text.clone(), pkt));
                    }
                }
            }
        }
    }
    let spoofs = spoofed_packets(p, out.iter().map(|x| &x.2));
    out.extend(spoofs);
    out
}

/// At most this many anti-spoofing probes per lab.
pub const MAX_SPOOFED: usize = 32;

/// Anti-spoofing probes: TCP/UDP packets of the other rows whose source is bound
/// to its zone, sent again from the "internet" — the first interface of a zone
/// without networks (else any interface outside the source's zone) — with the
/// same forged source. The evaluator expects them dropped.
pub fn spoofed_packets<'a>(p: &Policy, packets: impl Iterator<Item = &'a Packet>) -> Vec<(String, String, Packet)> {
    let outside = |home: &[crate::model::ZoneId]| -> Option<String> {
        let foreign = |z: &crate::model::Zone| !z.ifaces.is_empty() && !home.iter().any(|h| p.zones[*h].name == z.name);
        let zone = p.zones.iter().find(|z| foreign(z) && z.networks.is_none()).or_else(|| p.zones.iter().find(|z| foreign(z)))?;
        Some(p.ifaces[zone.ifaces[0]].device.to_string())
    };
    let mut out = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for pkt in packets {
        if out.len() >= MAX_SPOOFED || pkt.hook == Hook::Output || !matches!(pkt.proto, Proto::Tcp | Proto::Udp) {
            continue;
        }
        let Some(home) = crate::eval::source_home(p, pkt.src) else { continue };
        let Some(iif) = outside(&home) else { continue };
        let spoof = Packet { iif: Some(iif.clone()), ..pkt.clone() };
        if crate::eval::spoofed(p, &spoof).is_none() || !seen.insert((spoof.src, spoof.dst, spoof.proto.name(), spoof.port)) {
            continue;
        }
        let text = format!("{} forged on {iif} (zone {})", spoof.src, home.iter().map(|z| p.zones[*z].name.as_str()).collect::<Vec<_>>().join("/"));
        out.push(("spoofed".into(), text, spoof));
    }
    out
}

/// A flow between two named endpoints for a named service (None if unknown).
pub fn flow(p: &Policy, from: &str, to: &str, service: &str) -> Option<Flow> {
    let ctx = crate::model::resolve::EndpointCtx { policy: p, claimed: &p.claimed };
    let svc = crate::model::services::builtin(service).or_else(|| custom_service(p, service))?;
    Some(Flow { span: p.rules.first().map(|r| r.span)?, from: ctx.endpoint(from).ok()?, to: ctx.endpoint(to).ok()?, probes: svc.representatives(), service_text: service.into(), iif: None, oif: None })
}

fn custom_service(p: &Policy, name: &str) -> Option<crate::model::ServiceSet> {
    // Custom services are folded into rules; recover one from a rule that names it alone.
    p.rules.iter().find(|r| r.service_text.len() == 1 && r.service_text[0] == name).map(|r| r.services.clone())
}

/// Where an address lives: (segment, second namespace?).
type Placement = std::collections::HashMap<IpAddr, (usize, bool)>;

/// Put `a` in segment `seg`, preferring side `b`; None if it lives elsewhere.
fn place(at: &mut Placement, fw: &[IpAddr], a: IpAddr, seg: usize, b: bool) -> Option<bool> {
    if fw.contains(&a) {
        return None;
    }
    match at.get(&a) {
        Some(&(s, side)) if s == seg => Some(side),
        Some(_) => None,
        None => {
            at.insert(a, (seg, b));
            Some(b)
        }
    }
}

pub fn plan(p: &Policy, packets: Vec<(String, String, Packet)>) -> Plan {
    let mut segments: Vec<Segment> = p
        .ifaces
        .iter()
        .enumerate()
        .map(|(i, f)| Segment {
            iface: i,
            device: f.device.to_string(),
            ns: format!("s{i}"),
            // The appliance's address on this interface, and the public addresses
            // it port-forwards from.
            fw_addrs: {
                let mut v = vec![appliance_addr(p, Some(i), false), appliance_addr(p, Some(i), true)];
                v.extend(p.dnat.iter().filter(|d| d.iface == i).filter_map(|d| d.destination));
                v.dedup();
                v
            },
            hosts: vec![],
            hosts_b: vec![],
        })
        .collect();
    let fw: Vec<IpAddr> = segments.iter().flat_map(|s| s.fw_addrs.clone()).collect();
    let mut plan = Plan::default();
    let seg_of = |dev: &Option<String>| dev.as_deref().and_then(|d| p.iface_by_device(d));
    // Which end is where, before placing addresses.
    let mut ends: Vec<Result<(Option<usize>, Option<usize>), &'static str>> = vec![];
    for (_, _, pkt) in &packets {
        let probeable = match pkt.proto {
            Proto::Icmp => pkt.port == u16::from(crate::model::services::ICMP_ECHO_REQUEST),
            Proto::Icmpv6 => pkt.port == u16::from(crate::model::services::ICMPV6_ECHO_REQUEST),
            _ => true,
        };
        let e = match pkt.hook {
            Hook::Input => seg_of(&pkt.iif).map(|c| (Some(c), None)),
            Hook::Output => seg_of(&pkt.oif).map(|s| (None, Some(s))),
            Hook::Forward => seg_of(&pkt.iif).zip(seg_of(&pkt.oif)).map(|(c, s)| (Some(c), Some(s))),
        };
        // The lab's servers listen on the packet's own destination, and its
        // expectations are the filter's: a packet a port forward translates would
        // be judged against the wrong address and port (NAT is proven by
        // tests/netns_nat.rs instead).
        let forwarded = matches!(pkt.hook, Hook::Input | Hook::Forward)
            && pkt.iif.as_deref().is_some_and(|i| crate::eval::port_forward(p, i, pkt.dst, pkt.proto, pkt.port).is_some());
        ends.push(match (probeable, e) {
            (false, _) => Err("only ICMP echo requests can be probed"),
            (_, _) if forwarded => Err("a port forward translates this packet (the lab does not exercise NAT)"),
            (_, None) => Err("no interface of the policy carries this packet"),
            (_, Some(e)) => Ok(e),
        });
    }
    let spoofed: Vec<bool> = packets.iter().map(|(o, _, _)| o == "spoofed").collect();
    // Place addresses: same-segment pairs first (they need the two sides), then the rest.
    let mut at: Placement = Default::default();
    let mut sides: Vec<Option<(Where, Where)>> = vec![None; packets.len()];
    for pass in [true, false] {
        for (k, (_, _, pkt)) in packets.iter().enumerate() {
            let Ok((c, s)) = ends[k] else { continue };
            let same = c.is_some() && c == s;
            if same != pass {
                continue;
            }
            let client = match c {
                None => fw.contains(&pkt.src).then_some(Where::Firewall),
                // A forged source is not placed: the client sends from it without holding it.
                Some(seg) if spoofed[k] => Some(Where::Segment(seg, false)),
                Some(seg) => place(&mut at, &fw, pkt.src, seg, false).map(|b| Where::Segment(seg, b)),
            };
            let server = match (s, client) {
                (None, _) => fw.contains(&pkt.dst).then_some(Where::Firewall),
                (Some(seg), Some(Where::Segment(cs, cb))) if cs == seg => {
                    place(&mut at, &fw, pkt.dst, seg, !cb).filter(|b| *b != cb).map(|b| Where::Segment(seg, b))
                }
                (Some(seg), _) => place(&mut at, &fw, pkt.dst, seg, false).map(|b| Where::Segment(seg, b)),
            };
            if let (Some(cl), Some(sv)) = (client, server) {
                sides[k] = Some((cl, sv));
            }
        }
    }
    for (k, (origin, flow_text, pkt)) in packets.into_iter().enumerate() {
        match (&ends[k], sides[k]) {
            (Err(why), _) => plan.skipped.push((origin, pkt, why.to_string())),
            (Ok(_), None) => plan.skipped.push((origin, pkt, "an address of this packet already lives elsewhere in the lab".into())),
            (Ok(_), Some((client, server))) => {
                let expect = evaluate(p, &pkt).verdict;
                let spoofed = origin == "spoofed";
                plan.probes.push(PlannedProbe { origin, flow: flow_text, packet: pkt, expect, client, server, spoofed });
            }
        }
    }
    for (a, (seg, b)) in at {
        if b {
            segments[seg].hosts_b.push(a);
        } else {
            segments[seg].hosts.push(a);
        }
    }
    for s in &mut segments {
        s.hosts.sort();
        s.hosts_b.sort();
    }
    plan.segments = segments;
    plan
}

/// Convenience: the plan for a policy's tests and matrix.
pub fn for_policy(p: &Policy) -> Plan {
    plan(p, lab_packets(p))
}

/// Does an observed outcome satisfy an expected verdict?
pub fn agrees(expect: Verdict, observed: crate::sys::probe::Observed) -> bool {
    use crate::sys::probe::Observed;
    matches!((expect, observed), (Verdict::Accept, Observed::Delivered) | (Verdict::Drop, Observed::Dropped) | (Verdict::Reject, Observed::Refused))
}

pub fn expect_of(e: Expect) -> Verdict {
    match e {
        Expect::Allow => Verdict::Accept,
        Expect::Deny => Verdict::Drop,
    }
}

#[cfg(test)]
mod tests {
    /// home-router forwards tcp/443 arriving on wan, whatever its destination, to
    /// the NAS's 5001 (IPv4 and IPv6): the lab once expected the filter's verdict
    /// for such packets, on the original port, and reported mismatches.
    #[test]
    fn packets_a_port_forward_translates_are_not_probed() {
        let l = crate::check::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/examples/home-router.toml")), crate::model::Date { year: 2026, month: 11, day: 23 });
        let p = l.policy.unwrap();
        let plan = super::for_policy(&p);
        let forwarded = |pkt: &crate::eval::Packet| pkt.iif.as_deref().is_some_and(|i| crate::eval::port_forward(&p, i, pkt.dst, pkt.proto, pkt.port).is_some());
        assert!(plan.probes.iter().all(|pp| !forwarded(&pp.packet)), "a probed packet is port-forwarded");
        let skipped: Vec<_> = plan.skipped.iter().filter(|(_, pkt, why)| forwarded(pkt) && why.starts_with("a port forward")).collect();
        assert!(skipped.iter().any(|s| s.1.dst.is_ipv4()) && skipped.iter().any(|s| s.1.dst.is_ipv6()), "{:?}", plan.skipped);
    }

    #[test]
    fn reference_policy_skips_are_explained() {
        let l = crate::check::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/carif-oref")), crate::model::Date { year: 2026, month: 11, day: 23 });
        let p = l.policy.unwrap();
        let plan = super::for_policy(&p);
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for (o, pkt, why) in &plan.skipped {
            *reasons.entry(format!("{why} [{o} {:?}]", pkt.hook)).or_default() += 1;
        }
        for (k, v) in &reasons {
            eprintln!("{v:5} {k}");
        }
    }
}
