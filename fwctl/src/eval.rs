//! The reference evaluator: the policy contract's semantics applied to one packet.
//!
//! Input: a resolved [`Policy`] and a [`Packet`] (the first packet of a new
//! connection). Output: a [`Decision`] — the verdict and the deciding rule(s).
//! It is written to be obviously correct, not fast: it is the oracle the compiled
//! ruleset is checked against, and the engine of `explain` and `[[tests]]`.
//! Must not: share code with the compiler's decision structures.

use crate::model::{Action, DefaultVerdict, Flow, IfaceId, Policy, Proto, RuleId, Side};
use std::net::IpAddr;

/// Which netfilter path the packet takes on the appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Addressed to the appliance.
    Input,
    /// Crossing the appliance.
    Forward,
    /// Originated by the appliance.
    Output,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Packet {
    pub hook: Hook,
    /// Ingress device (input, forward).
    pub iif: Option<String>,
    /// Egress device (forward, output).
    pub oif: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// Destination port (TCP/UDP) or ICMP type.
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Loopback traffic of the appliance.
    Loopback,
    /// Essential ICMP/ICMPv6 (neighbour discovery, errors).
    EssentialIcmp,
    /// A deny rule matched.
    Denied,
    /// An allow rule matched and no deny rule did.
    Allowed,
    /// No rule decided: the firewall default (or, for the appliance's own traffic, accept).
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Every active allow rule that matches.
    pub allow: Vec<RuleId>,
    /// Every active deny rule that matches.
    pub deny: Vec<RuleId>,
}

const ESSENTIAL_ICMP: [u8; 3] = [3, 11, 12];
const ESSENTIAL_ICMPV6: [u8; 8] = [1, 2, 3, 4, 133, 134, 135, 136];

pub fn is_essential_icmp(proto: Proto, t: u16) -> bool {
    match proto {
        Proto::Icmp => ESSENTIAL_ICMP.iter().any(|&x| u16::from(x) == t),
        Proto::Icmpv6 => ESSENTIAL_ICMPV6.iter().any(|&x| u16::from(x) == t),
        _ => false,
    }
}

pub fn essential_icmp_types() -> (&'static [u8], &'static [u8]) {
    (&ESSENTIAL_ICMP, &ESSENTIAL_ICMPV6)
}

/// Does `side` match this end of the packet? `dev` is the device on this end,
/// `is_self` whether this end is the appliance.
pub fn side_matches(p: &Policy, side: &Side, dev: Option<&str>, addr: IpAddr, is_self: bool) -> bool {
    if side.any || (side.self_ && is_self) || side.addrs.contains(addr) {
        return true;
    }
    let Some(zone) = dev.and_then(|d| p.zone_of_device(d)) else { return false };
    side.zones.iter().any(|&z| z == zone && p.zones[z].networks.as_ref().is_none_or(|n| n.contains(addr)))
        || side.scoped.iter().any(|(z, a)| *z == zone && a.contains(addr))
}

pub fn rule_matches(p: &Policy, r: RuleId, pkt: &Packet) -> bool {
    let rule = &p.rules[r];
    rule.active()
        && family_ok(pkt)
        && rule.services.contains(pkt.proto, pkt.port)
        && side_matches(p, &rule.from, pkt.iif.as_deref(), pkt.src, pkt.hook == Hook::Output)
        && side_matches(p, &rule.to, pkt.oif.as_deref(), pkt.dst, pkt.hook == Hook::Input)
}

fn family_ok(pkt: &Packet) -> bool {
    let v4 = pkt.src.is_ipv4() && pkt.dst.is_ipv4();
    let v6 = pkt.src.is_ipv6() && pkt.dst.is_ipv6();
    match pkt.proto {
        Proto::Icmp => v4,
        Proto::Icmpv6 => v6,
        _ => v4 || v6,
    }
}

pub fn evaluate(p: &Policy, pkt: &Packet) -> Decision {
    let none = |verdict, reason| Decision { verdict, reason, allow: vec![], deny: vec![] };
    let lo = match pkt.hook {
        Hook::Input => pkt.iif.as_deref() == Some("lo"),
        Hook::Output => pkt.oif.as_deref() == Some("lo"),
        Hook::Forward => false,
    };
    if lo {
        return none(Verdict::Accept, Reason::Loopback);
    }
    if is_essential_icmp(pkt.proto, pkt.port) {
        return none(Verdict::Accept, Reason::EssentialIcmp);
    }
    let mut allow = vec![];
    let mut deny = vec![];
    for r in 0..p.rules.len() {
        if rule_matches(p, r, pkt) {
            match p.rules[r].action {
                Action::Allow => allow.push(r),
                Action::Deny => deny.push(r),
            }
        }
    }
    let refuse = match p.default {
        DefaultVerdict::Drop => Verdict::Drop,
        DefaultVerdict::Reject => Verdict::Reject,
    };
    let (verdict, reason) = if !deny.is_empty() {
        (refuse, Reason::Denied)
    } else if pkt.hook == Hook::Output {
        (Verdict::Accept, if allow.is_empty() { Reason::Default } else { Reason::Allowed })
    } else if !allow.is_empty() {
        (Verdict::Accept, Reason::Allowed)
    } else {
        (refuse, Reason::Default)
    };
    Decision { verdict, reason, allow, deny }
}

/// A port forward applied to a new connection before any filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Forwarded {
    /// Index into `Policy::dnat`.
    pub forward: usize,
    /// The translated (inside) destination address and port.
    pub dst: IpAddr,
    pub port: u16,
}

/// The port forward the policy applies to a new TCP/UDP connection that arrives
/// on device `iif` for `dst`/`port`: one whose `on` is that device, whose
/// `destination` (if any) is `dst`, whose service has the port, and whose target
/// has an address of `dst`'s family. Forwards never overlap (the compiler refuses
/// two that claim one port), so at most one applies.
pub fn port_forward(p: &Policy, iif: &str, dst: IpAddr, proto: Proto, port: u16) -> Option<Forwarded> {
    if !matches!(proto, Proto::Tcp | Proto::Udp) {
        return None;
    }
    p.dnat.iter().enumerate().find_map(|(i, f)| {
        if p.ifaces[f.iface].device.as_str() != iif || f.destination.is_some_and(|x| x != dst) || !f.services.contains(proto, port) {
            return None;
        }
        let to = match dst {
            IpAddr::V4(_) => IpAddr::V4(f.to_v4?),
            IpAddr::V6(_) => IpAddr::V6(f.to_v6?),
        };
        Some(Forwarded { forward: i, dst: to, port: f.to_port.unwrap_or(port) })
    })
}

/// The appliance's own address facing `iface`, for flows to or from `self`: a VPN
/// interface's address, else the first address in the zone's networks that no
/// host uses, else a stable documentation address (never a port-forward
/// destination: traffic to those is forwarded, not delivered to the appliance).
pub fn appliance_addr(p: &Policy, iface: Option<IfaceId>, v6: bool) -> IpAddr {
    let fam = |a: &IpAddr| a.is_ipv6() == v6;
    if let Some(i) = iface {
        if let Some(v) = p.vpns.iter().find(|v| v.iface == i) {
            if let Some((a, _)) = v.addresses.iter().find(|(a, _)| fam(a)) {
                return *a;
            }
        }
        let zone = &p.zones[p.ifaces[i].zone];
        if let Some(n) = &zone.networks {
            if let Some(a) = p.free_addrs(n, v6).first() {
                return *a;
            }
        }
        // A stable, per-interface documentation address.
        return if v6 {
            IpAddr::V6((0x2001_0db8_fff0u128 << 80 | (i as u128 + 1)).into())
        } else {
            IpAddr::V4((0xcb00_7100u32 + 1 + i as u32).into())
        };
    }
    if v6 {
        IpAddr::V6((0x2001_0db8_fff0u128 << 80 | 0xfe).into())
    } else {
        IpAddr::V4(0xcb00_71feu32.into())
    }
}

/// The concrete packets a test or management flow stands for: every pair of
/// representative addresses of the same family, for every protocol of the service.
pub fn flow_packets(p: &Policy, f: &Flow) -> Vec<Packet> {
    let dev = |i: Option<IfaceId>| i.map(|i| p.ifaces[i].device.as_str().to_string());
    let mut out = vec![];
    let pairs: Vec<(IpAddr, Option<IfaceId>, IpAddr, Option<IfaceId>, Hook)> = match (f.from.is_self, f.to.is_self) {
        (true, true) => vec![],
        (false, true) => f
            .from
            .points
            .iter()
            .map(|&(a, i)| (a, i, appliance_addr(p, i, a.is_ipv6()), None, Hook::Input))
            .collect(),
        (true, false) => f
            .to
            .points
            .iter()
            .map(|&(b, i)| (appliance_addr(p, i, b.is_ipv6()), None, b, i, Hook::Output))
            .collect(),
        (false, false) => f
            .from
            .points
            .iter()
            .flat_map(|&(a, ia)| f.to.points.iter().map(move |&(b, ib)| (a, ia, b, ib, Hook::Forward)))
            .filter(|(a, _, b, _, _)| a.is_ipv6() == b.is_ipv6())
            .collect(),
    };
    for (src, ia, dst, ib, hook) in pairs {
        for &(proto, port) in &f.probes {
            let pkt = Packet { hook, iif: if hook == Hook::Output { None } else { dev(ia) }, oif: if hook == Hook::Input { None } else { dev(ib) }, src, dst, proto, port };
            if family_ok(&pkt) {
                out.push(pkt);
            }
        }
    }
    out
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceMap;

    fn policy(text: &str) -> Policy {
        let mut sm = SourceMap::default();
        let f = sm.add("t.toml".into(), text.into());
        let mut raw = crate::policy::raw::RawPolicy::default();
        let mut d = vec![];
        crate::policy::parse_file(&sm, f, &mut raw, &mut d);
        let today = crate::model::Date { year: 2026, month: 11, day: 23 };
        let p = crate::model::resolve::resolve(&raw, today, &mut d);
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        p.unwrap()
    }

    const BASE: &str = r#"
[firewall]
default = "drop"
[interfaces.wan]
device = "eth0"
zone = "internet"
[interfaces.rack]
device = "eth1"
zone = "rack"
[zones.internet]
[zones.rack]
networks = ["192.0.2.0/24", "2001:db8:10::/64"]
[hosts]
db03 = ["192.0.2.20", "2001:db8:10::20"]
[groups]
partners = ["198.51.100.0/24"]
"#;

    fn pkt(hook: Hook, iif: Option<&str>, oif: Option<&str>, src: &str, dst: &str, proto: Proto, port: u16) -> Packet {
        Packet { hook, iif: iif.map(Into::into), oif: oif.map(Into::into), src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto, port }
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_order() {
        let p = policy(&format!(
            "{BASE}\n[[rules]]\nname = \"no-db\"\nfrom = \"internet\"\nto = \"db03\"\ndeny = [\"mssql\"]\n[[rules]]\nname = \"partners-db\"\nfrom = \"partners\"\nto = \"db03\"\nallow = [\"mssql\"]\n"
        ));
        let d = evaluate(&p, &pkt(Hook::Forward, Some("eth0"), Some("eth1"), "198.51.100.7", "192.0.2.20", Proto::Tcp, 1433));
        assert_eq!((d.verdict, d.reason, d.allow, d.deny), (Verdict::Drop, Reason::Denied, vec![1], vec![0]));
    }

    #[test]
    fn zone_with_networks_needs_interface_and_address() {
        let p = policy(&format!("{BASE}\n[[rules]]\nname = \"r\"\nfrom = \"rack\"\nto = \"internet\"\nallow = [\"https\"]\n"));
        let ok = pkt(Hook::Forward, Some("eth1"), Some("eth0"), "192.0.2.5", "203.0.113.9", Proto::Tcp, 443);
        assert_eq!(evaluate(&p, &ok).verdict, Verdict::Accept);
        let spoofed = pkt(Hook::Forward, Some("eth0"), Some("eth0"), "192.0.2.5", "203.0.113.9", Proto::Tcp, 443);
        assert_eq!(evaluate(&p, &spoofed).verdict, Verdict::Drop);
        let foreign = pkt(Hook::Forward, Some("eth1"), Some("eth0"), "198.51.100.5", "203.0.113.9", Proto::Tcp, 443);
        assert_eq!(evaluate(&p, &foreign).verdict, Verdict::Drop);
    }

    #[test]
    fn appliance_traffic_is_accepted_unless_denied() {
        let p = policy(&format!("{BASE}\n[[rules]]\nname = \"r\"\nfrom = \"self\"\nto = \"db03\"\ndeny = [\"ssh\"]\n"));
        let out = pkt(Hook::Output, None, Some("eth1"), "192.0.2.1", "192.0.2.20", Proto::Tcp, 22);
        assert_eq!(evaluate(&p, &out).verdict, Verdict::Drop);
        let out_ok = pkt(Hook::Output, None, Some("eth1"), "192.0.2.1", "192.0.2.20", Proto::Tcp, 80);
        assert_eq!(evaluate(&p, &out_ok).verdict, Verdict::Accept);
    }

    #[test]
    fn essential_icmp_and_loopback() {
        let p = policy(BASE);
        let ptb = pkt(Hook::Forward, Some("eth0"), Some("eth1"), "2001:db8::1", "2001:db8:10::20", Proto::Icmpv6, 2);
        assert_eq!(evaluate(&p, &ptb).reason, Reason::EssentialIcmp);
        let echo = pkt(Hook::Forward, Some("eth0"), Some("eth1"), "2001:db8::1", "2001:db8:10::20", Proto::Icmpv6, 128);
        assert_eq!(evaluate(&p, &echo).verdict, Verdict::Drop);
        let lo = pkt(Hook::Input, Some("lo"), None, "127.0.0.1", "127.0.0.1", Proto::Tcp, 5);
        assert_eq!(evaluate(&p, &lo).reason, Reason::Loopback);
    }

    #[test]
    fn vpn_peer_addresses_only_match_through_the_tunnel() {
        let p = policy(&format!(
            "{BASE}\n[zones.admins]\n[vpn.wg0]\nzone = \"admins\"\nprivate_key_file = \"/x\"\n[[vpn.wg0.peers]]\nname = \"alice\"\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nallowed_ips = [\"10.200.0.2/32\"]\n[[rules]]\nname = \"alice-db\"\nfrom = \"wg0.alice\"\nto = \"db03\"\nallow = [\"ssh\"]\n"
        ));
        let via_tunnel = pkt(Hook::Forward, Some("wg0"), Some("eth1"), "10.200.0.2", "192.0.2.20", Proto::Tcp, 22);
        assert_eq!(evaluate(&p, &via_tunnel).verdict, Verdict::Accept);
        // The same source address arriving from the internet is a spoof.
        let spoofed = pkt(Hook::Forward, Some("eth0"), Some("eth1"), "10.200.0.2", "192.0.2.20", Proto::Tcp, 22);
        assert_eq!(evaluate(&p, &spoofed).verdict, Verdict::Drop);
    }

    #[test]
    fn expired_rules_allow_nothing() {
        let p = policy(&format!("{BASE}\n[[rules]]\nname = \"old\"\nfrom = \"any\"\nto = \"db03\"\nallow = [\"ssh\"]\nexpires = 2026-11-22\n"));
        let d = evaluate(&p, &pkt(Hook::Forward, Some("eth0"), Some("eth1"), "203.0.113.5", "192.0.2.20", Proto::Tcp, 22));
        assert_eq!(d.verdict, Verdict::Drop);
    }
}
