//! The reference evaluator: the policy contract's semantics applied to one packet.
//!
//! Input: a resolved [`Policy`] and a [`Packet`] (the first packet of a new
//! connection). Output: a [`Decision`] — the verdict and the deciding rule(s).
//! It is written to be obviously correct, not fast: it is the oracle the compiled
//! ruleset is checked against, and the engine of `explain` and `[[tests]]`.
//! Must not: share code with the compiler's decision structures.

use crate::model::{Action, DefaultVerdict, Flow, IfaceId, Policy, Proto, RuleId, Side, ZoneId};
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
    /// Anti-spoofing: the source address belongs to a zone's networks, but the
    /// packet arrived on an interface outside that zone. Always dropped.
    Spoofed,
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

/// Sources that are never bound to a zone: they are per link (IPv4 169.254/16,
/// IPv6 fe80::/10) or mean "no address yet" (0.0.0.0, ::).
pub fn antispoof_exempt(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_unspecified() || v.is_link_local(),
        IpAddr::V6(v) => v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The zones a source address is bound to by anti-spoofing, if it is bound.
///
/// Among the zones that have interfaces and list networks, those whose networks
/// contain `addr` most narrowly (the smallest containing range, as a route's
/// longest prefix) are its home. It is bound unless it is exempt or a home zone
/// opted out (`antispoof = false`).
pub fn source_home(p: &Policy, addr: IpAddr) -> Option<Vec<ZoneId>> {
    if antispoof_exempt(addr) {
        return None;
    }
    let width = |n: &crate::model::addr::AddrSet| -> Option<u128> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                n.v4.ranges().iter().find(|(l, h)| *l <= a && a <= *h).map(|(l, h)| u128::from(h - l))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                n.v6.ranges().iter().find(|(l, h)| *l <= a && a <= *h).map(|(l, h)| h - l)
            }
        }
    };
    let found: Vec<(ZoneId, u128)> = p
        .zones
        .iter()
        .enumerate()
        .filter(|(_, z)| !z.ifaces.is_empty())
        .filter_map(|(i, z)| z.networks.as_ref().and_then(width).map(|w| (i, w)))
        .collect();
    let best = found.iter().map(|x| x.1).min()?;
    let home: Vec<ZoneId> = found.into_iter().filter(|x| x.1 == best).map(|x| x.0).collect();
    home.iter().all(|&z| p.zones[z].antispoof).then_some(home)
}

/// Is this packet spoofed: does its source belong to a zone it did not arrive
/// from? Only packets that arrive on an interface (input, forward) are judged;
/// loopback input is accepted before this question is asked.
/// Returns the source's home zones when it is.
pub fn spoofed(p: &Policy, pkt: &Packet) -> Option<Vec<ZoneId>> {
    if pkt.hook == Hook::Output {
        return None;
    }
    let home = source_home(p, pkt.src)?;
    let arrived = pkt.iif.as_deref().and_then(|d| p.zone_of_device(d));
    (!arrived.is_some_and(|z| home.contains(&z))).then_some(home)
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
    // Never rejected: a reply would go to the address that was forged.
    if spoofed(p, pkt).is_some() {
        return none(Verdict::Drop, Reason::Spoofed);
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
            let pin = |d: &Option<crate::model::IfName>| d.as_ref().map(|d| d.as_str().to_string());
            let iif = if hook == Hook::Output { None } else { pin(&f.iif).or_else(|| dev(ia)) };
            let oif = if hook == Hook::Input { None } else { pin(&f.oif).or_else(|| dev(ib)) };
            let pkt = Packet { hook, iif, oif, src, dst, proto, port };
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

    fn monitoring(extra: &str) -> Policy {
        policy(&format!("{BASE}{extra}\n[[rules]]\nname = \"monitoring\"\nfrom = [\"192.0.2.30\", \"2001:db8:10::30\"]\nto = \"rack\"\nallow = [\"snmp\"]\n"))
    }

    /// Issue 9, item 5: a rack source arriving on the WAN is a spoof, dropped
    /// before any rule (it used to be accepted by the rule written for the host).
    #[test]
    fn wan_packet_with_a_rack_source_is_dropped_as_spoofed() {
        let p = monitoring("");
        let legit = pkt(Hook::Forward, Some("eth1"), Some("eth1"), "192.0.2.30", "192.0.2.3", Proto::Udp, 161);
        assert_eq!((evaluate(&p, &legit).verdict, evaluate(&p, &legit).reason), (Verdict::Accept, Reason::Allowed));
        for (src, dst) in [("192.0.2.30", "192.0.2.3"), ("2001:db8:10::30", "2001:db8:10::3")] {
            let spoofed = pkt(Hook::Forward, Some("eth0"), Some("eth1"), src, dst, Proto::Udp, 161);
            let d = evaluate(&p, &spoofed);
            assert_eq!((d.verdict, d.reason, d.allow.len()), (Verdict::Drop, Reason::Spoofed, 0), "{src}");
            assert_eq!(super::spoofed(&p, &spoofed), Some(vec![1]));
            // Also to the appliance, and from a device the policy does not declare.
            let input = pkt(Hook::Input, Some("eth0"), None, src, dst, Proto::Udp, 161);
            assert_eq!(evaluate(&p, &input).reason, Reason::Spoofed);
            let undeclared = pkt(Hook::Forward, Some("eth3"), Some("eth1"), src, dst, Proto::Udp, 161);
            assert_eq!(evaluate(&p, &undeclared).reason, Reason::Spoofed);
        }
        // Spoofs are dropped even when the default is reject: a reset or ICMP
        // error would go to the forged address.
        let p = policy(&BASE.replace("default = \"drop\"", "default = \"reject\""));
        let spoofed = pkt(Hook::Forward, Some("eth0"), Some("eth1"), "192.0.2.30", "192.0.2.3", Proto::Tcp, 22);
        assert_eq!(evaluate(&p, &spoofed).verdict, Verdict::Drop);
    }

    #[test]
    fn antispoof_false_lets_the_zones_networks_arrive_anywhere() {
        let p = monitoring("");
        let mut open = p.clone();
        open.zones[1].antispoof = false;
        let via_wan = pkt(Hook::Forward, Some("eth0"), Some("eth1"), "192.0.2.30", "192.0.2.3", Proto::Udp, 161);
        assert_eq!(evaluate(&p, &via_wan).reason, Reason::Spoofed);
        // Opted out: the source is unbound, and the host's rule matches wherever it arrives.
        assert_eq!(evaluate(&open, &via_wan).reason, Reason::Allowed);
        // Parsed from the policy file too.
        let text = BASE.replace("[zones.rack]\n", "[zones.rack]\nantispoof = false\n");
        assert!(!policy(&text).zones[1].antispoof);
    }

    #[test]
    fn unbound_and_per_link_sources_are_never_spoofed() {
        let p = policy(&format!("{BASE}[zones.lab]\nnetworks = [\"169.254.0.0/16\", \"fe80::/10\"]\n[interfaces.lab]\ndevice = \"eth2\"\nzone = \"lab\"\n"));
        // An internet address on the rack interface: in no zone's networks, unbound.
        assert_eq!(source_home(&p, "203.0.113.9".parse().unwrap()), None);
        // Link-local and unspecified sources are per link, even if a zone lists them.
        for a in ["169.254.1.1", "fe80::1", "0.0.0.0", "::"] {
            assert_eq!(source_home(&p, a.parse().unwrap()), None, "{a}");
        }
        let ll = pkt(Hook::Input, Some("eth0"), None, "fe80::1", "fe80::2", Proto::Tcp, 22);
        assert_ne!(evaluate(&p, &ll).reason, Reason::Spoofed);
    }

    #[test]
    fn nested_networks_bind_a_source_to_the_narrowest_zone() {
        let p = policy(&format!("{BASE}[zones.dmz]\nnetworks = [\"192.0.2.128/25\"]\n[interfaces.dmz]\ndevice = \"eth2\"\nzone = \"dmz\"\n"));
        let dmz = p.zones.iter().position(|z| z.name == "dmz").unwrap();
        assert_eq!(source_home(&p, "192.0.2.130".parse().unwrap()), Some(vec![dmz]));
        assert_eq!(source_home(&p, "192.0.2.30".parse().unwrap()), Some(vec![1]));
        assert_eq!(p.iface_for_addr("192.0.2.130".parse().unwrap()), p.iface_by_device("eth2"));
        let on_rack = pkt(Hook::Forward, Some("eth1"), Some("eth0"), "192.0.2.130", "203.0.113.9", Proto::Tcp, 443);
        assert_eq!(evaluate(&p, &on_rack).reason, Reason::Spoofed);
    }

    #[test]
    fn expired_rules_allow_nothing() {
        let p = policy(&format!("{BASE}\n[[rules]]\nname = \"old\"\nfrom = \"any\"\nto = \"db03\"\nallow = [\"ssh\"]\nexpires = 2026-11-22\n"));
        let d = evaluate(&p, &pkt(Hook::Forward, Some("eth0"), Some("eth1"), "203.0.113.5", "192.0.2.20", Proto::Tcp, 22));
        assert_eq!(d.verdict, Verdict::Drop);
    }
}
