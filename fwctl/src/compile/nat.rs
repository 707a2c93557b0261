//! NAT: port forwards as maps (one lookup per family), masquerade/SNAT as a short
//! list of rules that may not overlap (so their order cannot matter).
//!
//! Input: the policy's `dnat` and `snat`. Output: sets and the `nat_pre` /
//! `nat_post` chains. Must not: emit two translations for the same packet.

use super::ir::*;
use super::CompileError;
use crate::model::addr::Ranges;
use crate::model::{Dnat, Policy, Side};
use std::collections::HashMap;
use std::net::IpAddr;

/// A port forward expands to one element per port; this bounds a single forward.
pub const MAX_FORWARD_PORTS: u32 = 4096;

pub fn compile(p: &Policy, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Result<(), CompileError> {
    dnat(p, sets, chains)?;
    snat(p, sets, chains)
}

/// The address families a port forward translates: with a `destination`, that
/// address's family; without, every family its target has.
pub fn forward_families(d: &Dnat) -> Vec<bool> {
    match d.destination {
        Some(a) => vec![a.is_ipv6()],
        None => [(false, d.to_v4.is_some()), (true, d.to_v6.is_some())].into_iter().filter(|f| f.1).map(|f| f.0).collect(),
    }
}

fn dnat(p: &Policy, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Result<(), CompileError> {
    // (v6, with destination) -> elements
    let mut maps: HashMap<(bool, bool), Vec<Elem>> = HashMap::new();
    // (device, dest or None, proto, port) -> index of the forward that claims it.
    // Forwards are told apart by position, never by name.
    let mut claimed: HashMap<(String, Option<IpAddr>, u8, u16), usize> = HashMap::new();
    let what = |proto: u8| if proto == 6 { "tcp" } else { "udp" };
    for (ix, d) in p.dnat.iter().enumerate() {
        let dev = p.ifaces[d.iface].device.to_string();
        let mut count = 0u32;
        for (proto, ranges) in [(6u8, &d.services.tcp), (17u8, &d.services.udp)] {
            for &(lo, hi) in ranges.ranges() {
                count += u32::from(hi - lo) + 1;
                if count > MAX_FORWARD_PORTS {
                    return Err(CompileError::Nat(format!("port forward `{}` covers more than {MAX_FORWARD_PORTS} ports", d.name), Some(d.span)));
                }
                for port in lo..=hi {
                    let to_port = d.to_port.unwrap_or(port);
                    let dest = d.destination;
                    let key = (dev.clone(), dest, proto, port);
                    if let Some(&other) = claimed.get(&key).filter(|&&o| o != ix) {
                        return Err(CompileError::Nat(
                            format!("port forwards `{}` and `{}` both claim {}/{port} on `{}`", p.dnat[other].name, d.name, what(proto), p.ifaces[d.iface].key),
                            Some(d.span),
                        ));
                    }
                    claimed.insert(key, ix);
                    for v6 in forward_families(d) {
                        let data = match (v6, d.to_v4, d.to_v6) {
                            (true, _, Some(a)) => Val::NatV6(u128::from(a), to_port),
                            (false, Some(a), _) => Val::NatV4(u32::from(a), to_port),
                            _ => continue,
                        };
                        let mut k = vec![Val::Ifname(dev.clone())];
                        match dest {
                            Some(IpAddr::V4(a)) => k.push(Val::V4(a.into(), a.into())),
                            Some(IpAddr::V6(a)) => k.push(Val::V6(a.into(), a.into())),
                            None => {}
                        }
                        k.push(Val::Proto(proto));
                        k.push(Val::Port(port, port));
                        maps.entry((v6, dest.is_some())).or_default().push(Elem { key: k, data: Some(data), comment: Some(super::clean(&d.name)) });
                    }
                }
            }
        }
    }
    // Also refuse a forward without destination next to one with, for the same port.
    let mut any_ports: HashMap<(String, u8, u16), usize> = HashMap::new();
    for ((dev, dest, proto, port), &ix) in &claimed {
        if dest.is_none() {
            any_ports.insert((dev.clone(), *proto, *port), ix);
        }
    }
    let mut clashes: Vec<(usize, usize, u8, u16, String)> = vec![];
    for ((dev, dest, proto, port), &ix) in &claimed {
        if dest.is_some() {
            if let Some(&other) = any_ports.get(&(dev.clone(), *proto, *port)) {
                if other != ix {
                    clashes.push((other.min(ix), other.max(ix), *proto, *port, dev.clone()));
                }
            }
        }
    }
    if let Some((a, b, proto, port, dev)) = clashes.into_iter().min() {
        return Err(CompileError::Nat(format!("port forwards `{}` and `{}` both claim {}/{port} on device {dev}", p.dnat[a].name, p.dnat[b].name, what(proto)), Some(p.dnat[b].span)));
    }
    let mut rules = vec![];
    for (v6, with_dest) in [(false, true), (false, false), (true, true), (true, false)] {
        let Some(mut elements) = maps.remove(&(v6, with_dest)) else { continue };
        elements.sort_by(|a, b| a.key.cmp(&b.key));
        let (fam, addr_t, nf) = if v6 { ("ip6", KeyType::Ipv6Addr, "ipv6") } else { ("ip", KeyType::Ipv4Addr, "ipv4") };
        let name = format!("dnat{}{}", if v6 { 6 } else { 4 }, if with_dest { "" } else { "_any" });
        let mut key = vec![KeyType::Ifname];
        if with_dest {
            key.push(addr_t);
        }
        key.extend([KeyType::InetProto, KeyType::InetService]);
        sets.push(Set {
            name: name.clone(),
            key,
            data: Some(if v6 { SetData::NatV6 } else { SetData::NatV4 }),
            interval: false,
            counter: false,
            comment: format!("port forwards ({fam})"),
            elements,
        });
        let dest = if with_dest { format!(" . {fam} daddr") } else { String::new() };
        rules.push(format!("meta nfproto {nf} dnat {fam} to iifname{dest} . meta l4proto . th dport map @{name}"));
    }
    if !rules.is_empty() {
        chains.push(Chain { name: "nat_pre".into(), base: Some(BaseChain { kind: "nat".into(), hook: "prerouting".into(), priority: "dstnat".into() }), comment: "port forwarding".into(), rules });
    }
    Ok(())
}

/// One alternative of a NAT `from`: ingress devices (None: any) and sources of
/// one family.
struct Term {
    devs: Option<Vec<String>>,
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

fn terms(p: &Policy, s: &Side) -> Vec<Term> {
    let devs_of = |z: usize| -> Vec<String> { p.zones[z].ifaces.iter().map(|&i| p.ifaces[i].device.to_string()).collect() };
    let mut out = vec![];
    if s.any {
        out.push(Term { devs: None, v4: Ranges::full(), v6: Ranges::full() });
        return out;
    }
    for &z in &s.zones {
        let (v4, v6) = p.zones[z].networks.as_ref().map_or_else(|| (Ranges::full(), Ranges::full()), |n| (n.v4.clone(), n.v6.clone()));
        out.push(Term { devs: Some(devs_of(z)), v4, v6 });
    }
    for (z, a) in &s.scoped {
        out.push(Term { devs: Some(devs_of(*z)), v4: a.v4.clone(), v6: a.v6.clone() });
    }
    if !s.addrs.is_empty() {
        out.push(Term { devs: None, v4: s.addrs.v4.clone(), v6: s.addrs.v6.clone() });
    }
    out
}

/// Which family a source NAT rule translates: masquerade and SNAT to an IPv4
/// address translate IPv4; SNAT to an IPv6 address translates IPv6.
fn v6_rule(s: &crate::model::Snat) -> bool {
    matches!(s.to, Some(IpAddr::V6(_)))
}

fn overlap(a: &Term, b: &Term, v6: bool) -> bool {
    let devs = match (&a.devs, &b.devs) {
        (Some(x), Some(y)) => x.iter().any(|d| y.contains(d)),
        _ => true,
    };
    devs && if v6 { a.v6.intersects(&b.v6) } else { a.v4.intersects(&b.v4) }
}

fn snat(p: &Policy, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Result<(), CompileError> {
    let all: Vec<Vec<Term>> = p.snat.iter().map(|s| terms(p, &s.from)).collect();
    for i in 0..p.snat.len() {
        for j in i + 1..p.snat.len() {
            let v6 = v6_rule(&p.snat[i]);
            if p.snat[i].out == p.snat[j].out && v6 == v6_rule(&p.snat[j]) && all[i].iter().any(|a| all[j].iter().any(|b| overlap(a, b, v6))) {
                let d = |k: usize| format!("from [{}] out {}", p.snat[k].from_text.join(", "), p.ifaces[p.snat[k].out].key);
                return Err(CompileError::Nat(format!("source NAT rules overlap: {} and {}; make their sources disjoint", d(i), d(j)), Some(p.snat[j].span)));
            }
        }
    }
    let mut rules = vec![];
    for (i, (s, ts)) in p.snat.iter().zip(&all).enumerate() {
        let out = &p.ifaces[s.out].device;
        let v6 = v6_rule(s);
        let action = match s.to {
            None => "masquerade".to_string(),
            Some(IpAddr::V4(a)) => format!("snat ip to {a}"),
            Some(IpAddr::V6(a)) => format!("snat ip6 to {a}"),
        };
        let mut emitted = 0;
        for (k, t) in ts.iter().enumerate() {
            let mut r = String::new();
            if let Some(devs) = &t.devs {
                let list = devs.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
                r.push_str(&format!("iifname {{ {list} }} "));
            }
            r.push_str(&format!("oifname \"{out}\" "));
            let (full, empty) = if v6 { (t.v6.is_full(), t.v6.is_empty()) } else { (t.v4.is_full(), t.v4.is_empty()) };
            if empty {
                continue;
            }
            if full {
                r.push_str(if v6 { "meta nfproto ipv6 " } else { "meta nfproto ipv4 " });
            } else {
                let name = format!("snat{i}_{k}_src{}", if v6 { 6 } else { 4 });
                let elements: Vec<Elem> = if v6 {
                    t.v6.ranges().iter().map(|&(l, h)| Elem { key: vec![Val::V6(l, h)], data: None, comment: None }).collect()
                } else {
                    t.v4.ranges().iter().map(|&(l, h)| Elem { key: vec![Val::V4(l, h)], data: None, comment: None }).collect()
                };
                sets.push(Set { name: name.clone(), key: vec![if v6 { KeyType::Ipv6Addr } else { KeyType::Ipv4Addr }], data: None, interval: true, counter: false, comment: "source NAT sources".into(), elements });
                r.push_str(&format!("{} saddr @{name} ", if v6 { "ip6" } else { "ip" }));
            }
            r.push_str(&action);
            rules.push(r);
            emitted += 1;
        }
        if emitted == 0 {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            return Err(CompileError::Nat(format!("source NAT from [{}] translates {fam}, but those sources have no {fam} address", s.from_text.join(", ")), Some(s.span)));
        }
    }
    if !rules.is_empty() {
        chains.push(Chain { name: "nat_post".into(), base: Some(BaseChain { kind: "nat".into(), hook: "postrouting".into(), priority: "srcnat".into() }), comment: "source NAT".into(), rules });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, sim, Capabilities};
    use crate::model::{Date, Policy, Proto};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TODAY: Date = Date { year: 2026, month: 11, day: 23 };

    /// Three interfaces; `web` is dual-stack in `lan`, `old` IPv4-only, `dmzhost`
    /// dual-stack in `dmz`. Each test appends its NAT entries.
    const BASE: &str = r#"
[firewall]
name = "nat-unit"
default = "drop"
[interfaces.wan]
device = "eth0"
zone = "internet"
[interfaces.lan]
device = "eth1"
zone = "lan"
[interfaces.dmz]
device = "eth2"
zone = "dmz"
[zones.internet]
[zones.lan]
networks = ["192.0.2.0/24", "2001:db8:1::/64"]
[zones.dmz]
networks = ["198.51.100.0/24", "2001:db8:2::/64"]
[hosts]
web = ["192.0.2.10", "2001:db8:1::10"]
old = "192.0.2.11"
dmzhost = ["198.51.100.10", "2001:db8:2::10"]
[services]
app = { tcp = [8443], udp = [8443] }
"#;

    fn load(nat: &str) -> crate::check::Loaded {
        crate::check::load_str("nat.toml", &format!("{BASE}{nat}"), TODAY)
    }

    fn policy(nat: &str) -> Policy {
        let l = load(nat);
        assert!(!l.has_errors(), "{:?}", l.diags);
        l.policy.expect("policy")
    }

    fn ruleset(nat: &str) -> Ruleset {
        compile(&policy(nat), Capabilities { flowtable: false }).expect("compiles").ruleset
    }

    fn chain<'a>(rs: &'a Ruleset, name: &str) -> &'a Chain {
        rs.chains.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no chain {name}"))
    }

    fn v4(s: &str) -> u32 {
        s.parse::<Ipv4Addr>().unwrap().into()
    }

    fn v6(s: &str) -> u128 {
        s.parse::<Ipv6Addr>().unwrap().into()
    }

    fn elem(key: Vec<Val>, data: Val, comment: &str) -> Elem {
        Elem { key, data: Some(data), comment: Some(comment.into()) }
    }

    fn nat_sets(rs: &Ruleset) -> Vec<&str> {
        rs.sets.iter().filter(|s| s.name.starts_with("dnat") || s.name.starts_with("snat")).map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn ipv4_forward_with_destination_is_one_element_keyed_by_device_address_protocol_port() {
        let rs = ruleset("[[nat.forward]]\nname = \"web-https\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"https\"\nto = \"web\"\n");
        assert_eq!(nat_sets(&rs), ["dnat4"]);
        let s = rs.set("dnat4").unwrap();
        assert_eq!(s.key, [KeyType::Ifname, KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService]);
        assert_eq!(s.data, Some(SetData::NatV4));
        assert!(!s.interval);
        let d = v4("203.0.113.10");
        assert_eq!(s.elements, [elem(vec![Val::Ifname("eth0".into()), Val::V4(d, d), Val::Proto(6), Val::Port(443, 443)], Val::NatV4(v4("192.0.2.10"), 443), "web-https")]);
        let c = chain(&rs, "nat_pre");
        assert_eq!(c.base, Some(BaseChain { kind: "nat".into(), hook: "prerouting".into(), priority: "dstnat".into() }));
        assert_eq!(c.rules, ["meta nfproto ipv4 dnat ip to iifname . ip daddr . meta l4proto . th dport map @dnat4"]);
        assert!(rs.chains.iter().all(|c| c.name != "nat_post"));
    }

    #[test]
    fn ipv6_forward_with_destination_translates_only_ipv6() {
        let rs = ruleset("[[nat.forward]]\nname = \"web6\"\non = \"wan\"\ndestination = \"2001:db8:ff::10\"\nservice = \"https\"\nto = \"web\"\nto_port = 8443\n");
        assert_eq!(nat_sets(&rs), ["dnat6"]);
        let s = rs.set("dnat6").unwrap();
        assert_eq!(s.key, [KeyType::Ifname, KeyType::Ipv6Addr, KeyType::InetProto, KeyType::InetService]);
        assert_eq!(s.data, Some(SetData::NatV6));
        let d = v6("2001:db8:ff::10");
        assert_eq!(s.elements, [elem(vec![Val::Ifname("eth0".into()), Val::V6(d, d), Val::Proto(6), Val::Port(443, 443)], Val::NatV6(v6("2001:db8:1::10"), 8443), "web6")]);
        assert_eq!(chain(&rs, "nat_pre").rules, ["meta nfproto ipv6 dnat ip6 to iifname . ip6 daddr . meta l4proto . th dport map @dnat6"]);
    }

    /// The home-router defect: a forward without `destination` to a dual-stack
    /// host was compiled for IPv4 only, while `explain` (and the docs) said it
    /// forwards IPv6 too.
    #[test]
    fn forward_without_destination_translates_every_family_of_its_target() {
        let rs = ruleset("[[nat.forward]]\nname = \"app\"\non = \"wan\"\nservice = \"app\"\nto = \"web\"\nto_port = 8080\n");
        assert_eq!(nat_sets(&rs), ["dnat4_any", "dnat6_any"]);
        let s4 = rs.set("dnat4_any").unwrap();
        assert_eq!(s4.key, [KeyType::Ifname, KeyType::InetProto, KeyType::InetService]);
        assert_eq!(s4.data, Some(SetData::NatV4));
        let dev = || Val::Ifname("eth0".into());
        let w4 = v4("192.0.2.10");
        assert_eq!(
            s4.elements,
            [elem(vec![dev(), Val::Proto(6), Val::Port(8443, 8443)], Val::NatV4(w4, 8080), "app"), elem(vec![dev(), Val::Proto(17), Val::Port(8443, 8443)], Val::NatV4(w4, 8080), "app")]
        );
        let s6 = rs.set("dnat6_any").unwrap();
        assert_eq!(s6.key, [KeyType::Ifname, KeyType::InetProto, KeyType::InetService]);
        assert_eq!(s6.data, Some(SetData::NatV6));
        let w6 = v6("2001:db8:1::10");
        assert_eq!(
            s6.elements,
            [elem(vec![dev(), Val::Proto(6), Val::Port(8443, 8443)], Val::NatV6(w6, 8080), "app"), elem(vec![dev(), Val::Proto(17), Val::Port(8443, 8443)], Val::NatV6(w6, 8080), "app")]
        );
        assert_eq!(
            chain(&rs, "nat_pre").rules,
            [
                "meta nfproto ipv4 dnat ip to iifname . meta l4proto . th dport map @dnat4_any",
                "meta nfproto ipv6 dnat ip6 to iifname . meta l4proto . th dport map @dnat6_any",
            ]
        );
        // A target with one family is forwarded in that family only.
        let rs = ruleset("[[nat.forward]]\non = \"wan\"\nservice = \"ssh\"\nto = \"old\"\n");
        assert_eq!(nat_sets(&rs), ["dnat4_any"]);
        assert_eq!(rs.set("dnat4_any").unwrap().elements, [elem(vec![dev(), Val::Proto(6), Val::Port(22, 22)], Val::NatV4(v4("192.0.2.11"), 22), "forward-1")]);
    }

    #[test]
    fn forwards_with_and_without_destination_live_in_separate_maps_looked_up_in_a_fixed_order() {
        let rs = ruleset(
            "[[nat.forward]]\nname = \"a\"\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n\
             [[nat.forward]]\nname = \"b\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"https\"\nto = \"dmzhost\"\n\
             [[nat.forward]]\nname = \"c\"\non = \"wan\"\ndestination = \"2001:db8:ff::10\"\nservice = \"https\"\nto = \"dmzhost\"\n",
        );
        assert_eq!(nat_sets(&rs), ["dnat4", "dnat4_any", "dnat6", "dnat6_any"]);
        let maps: Vec<&str> = chain(&rs, "nat_pre").rules.iter().map(|r| r.rsplit_once('@').unwrap().1).collect();
        assert_eq!(maps, ["dnat4", "dnat4_any", "dnat6", "dnat6_any"]);
    }

    #[test]
    fn masquerade_translates_ipv4_sources_of_its_zone_leaving_by_out() {
        let rs = ruleset("[[nat.masquerade]]\nfrom = \"lan\"\nout = \"wan\"\n");
        assert_eq!(nat_sets(&rs), ["snat0_0_src4"]);
        let s = rs.set("snat0_0_src4").unwrap();
        assert_eq!(s.key, [KeyType::Ipv4Addr]);
        assert!(s.interval && s.data.is_none());
        assert_eq!(s.elements, [Elem { key: vec![Val::V4(v4("192.0.2.0"), v4("192.0.2.255"))], data: None, comment: None }]);
        let c = chain(&rs, "nat_post");
        assert_eq!(c.base, Some(BaseChain { kind: "nat".into(), hook: "postrouting".into(), priority: "srcnat".into() }));
        assert_eq!(c.rules, ["iifname { \"eth1\" } oifname \"eth0\" ip saddr @snat0_0_src4 masquerade"]);
        // `any`: no source set, one IPv4 rule.
        let rs = ruleset("[[nat.masquerade]]\nfrom = \"any\"\nout = \"wan\"\n");
        assert_eq!(chain(&rs, "nat_post").rules, ["oifname \"eth0\" meta nfproto ipv4 masquerade"]);
    }

    #[test]
    fn snat_translates_the_family_of_its_to_address() {
        let rs = ruleset(
            "[[nat.snat]]\nfrom = \"dmz\"\nout = \"wan\"\nto = \"203.0.113.20\"\n\
             [[nat.snat]]\nfrom = \"2001:db8:2::/64\"\nout = \"wan\"\nto = \"2001:db8:ff::20\"\n\
             [[nat.snat]]\nfrom = \"dmz\"\nout = \"lan\"\nto = \"2001:db8:1::1\"\n",
        );
        assert_eq!(nat_sets(&rs), ["snat0_0_src4", "snat1_0_src6", "snat2_0_src6"]);
        assert_eq!(rs.set("snat0_0_src4").unwrap().elements[0].key, [Val::V4(v4("198.51.100.0"), v4("198.51.100.255"))]);
        let net6 = (v6("2001:db8:2::"), v6("2001:db8:2::ffff:ffff:ffff:ffff"));
        assert_eq!(rs.set("snat1_0_src6").unwrap().elements[0].key, [Val::V6(net6.0, net6.1)]);
        assert_eq!(rs.set("snat2_0_src6").unwrap().elements[0].key, [Val::V6(net6.0, net6.1)]);
        assert_eq!(
            chain(&rs, "nat_post").rules,
            [
                "iifname { \"eth2\" } oifname \"eth0\" ip saddr @snat0_0_src4 snat ip to 203.0.113.20",
                "oifname \"eth0\" ip6 saddr @snat1_0_src6 snat ip6 to 2001:db8:ff::20",
                // A zone with interfaces contributes its IPv6 networks on its interfaces.
                "iifname { \"eth2\" } oifname \"eth1\" ip6 saddr @snat2_0_src6 snat ip6 to 2001:db8:1::1",
            ]
        );
    }

    #[test]
    fn overlapping_source_nat_is_refused_at_the_second_entry() {
        let p = policy("[[nat.masquerade]]\nfrom = \"lan\"\nout = \"wan\"\n[[nat.snat]]\nfrom = \"old\"\nout = \"wan\"\nto = \"203.0.113.20\"\n");
        let Err(CompileError::Nat(msg, Some(span))) = compile(&p, Capabilities { flowtable: false }) else { panic!("overlap expected") };
        assert_eq!(span, p.snat[1].span);
        assert!(msg.starts_with("source NAT rules overlap"), "{msg}");
        // Two IPv6 entries are compared by their IPv6 sources (a zone with
        // interfaces contributes its IPv6 networks on them).
        let p = policy("[[nat.snat]]\nfrom = \"dmz\"\nout = \"wan\"\nto = \"2001:db8:ff::20\"\n[[nat.snat]]\nfrom = \"2001:db8:2::10\"\nout = \"wan\"\nto = \"2001:db8:ff::21\"\n");
        assert!(matches!(compile(&p, Capabilities { flowtable: false }), Err(CompileError::Nat(m, Some(s))) if s == p.snat[1].span && m.starts_with("source NAT rules overlap")));
        // Entries of different families never overlap.
        let p = policy("[[nat.masquerade]]\nfrom = \"dmz\"\nout = \"wan\"\n[[nat.snat]]\nfrom = \"dmz\"\nout = \"wan\"\nto = \"2001:db8:ff::20\"\n");
        assert!(compile(&p, Capabilities { flowtable: false }).is_ok());
    }

    #[test]
    fn two_forwards_claiming_one_port_are_refused_naming_both() {
        let p = policy("[[nat.forward]]\nname = \"one\"\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n[[nat.forward]]\nname = \"two\"\non = \"wan\"\nservice = \"ssh\"\nto = \"old\"\n");
        let Err(CompileError::Nat(msg, Some(span))) = compile(&p, Capabilities { flowtable: false }) else { panic!("conflict expected") };
        assert_eq!(span, p.dnat[1].span);
        assert_eq!(msg, "port forwards `one` and `two` both claim tcp/22 on `wan`");
        // One with a destination and one without, on the same port.
        let p = policy("[[nat.forward]]\nname = \"one\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"ssh\"\nto = \"web\"\n[[nat.forward]]\nname = \"two\"\non = \"wan\"\nservice = \"ssh\"\nto = \"old\"\n");
        let Err(CompileError::Nat(msg, Some(span))) = compile(&p, Capabilities { flowtable: false }) else { panic!("conflict expected") };
        assert_eq!(span, p.dnat[1].span);
        assert_eq!(msg, "port forwards `one` and `two` both claim tcp/22 on device eth0");
    }

    /// The conflict check once compared forwards by name: two forwards sharing one
    /// name (an explicit `forward-2` next to the unnamed second forward) both got
    /// into the map, and nft refused the load ("File exists"). The model now
    /// refuses the shared name; the compiler must not rely on it.
    #[test]
    fn conflict_check_tells_forwards_apart_by_position_not_by_name() {
        let mut p = policy("[[nat.forward]]\nname = \"x\"\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n[[nat.forward]]\nname = \"y\"\non = \"wan\"\nservice = \"ssh\"\nto = \"old\"\n");
        p.dnat[1].name = "x".into();
        assert!(matches!(compile(&p, Capabilities { flowtable: false }), Err(CompileError::Nat(_, Some(_)))));
    }

    fn diag_codes(nat: &str) -> Vec<&'static str> {
        load(nat).diags.iter().filter(|d| d.is_error()).map(|d| d.code).collect()
    }

    #[test]
    fn an_explicit_forward_name_may_not_be_an_unnamed_forwards_name() {
        let nat = "[[nat.forward]]\nname = \"forward-2\"\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n[[nat.forward]]\non = \"wan\"\nservice = \"https\"\nto = \"web\"\n";
        assert_eq!(diag_codes(nat), ["duplicate"]);
        // Taking the name of a position that is itself named is fine.
        let nat = "[[nat.forward]]\nname = \"forward-2\"\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n[[nat.forward]]\nname = \"b\"\non = \"wan\"\nservice = \"https\"\nto = \"web\"\n";
        assert_eq!(diag_codes(nat), [] as [&str; 0]);
    }

    #[test]
    fn forward_names_must_fit_an_nft_comment() {
        let named = |n: &str| format!("[[nat.forward]]\nname = {n}\non = \"wan\"\nservice = \"ssh\"\nto = \"web\"\n");
        let max = "n".repeat(crate::model::resolve::NFT_COMMENT_MAX);
        let rs = ruleset(&named(&format!("\"{max}\"")));
        assert_eq!(rs.set("dnat4_any").unwrap().elements[0].comment.as_deref(), Some(max.as_str()));
        assert_eq!(diag_codes(&named(&format!("\"{max}x\""))), ["invalid-name"]);
        // Multi-byte characters count in bytes, as nft counts them.
        assert_eq!(diag_codes(&named(&format!("\"{}\"", "é".repeat(65)))), ["invalid-name"]);
        for bad in ["\"\"", "\"a\\\"b\"", "\"a\\\\b\"", "\"a\\nb\"", "\"a\\u001bb\""] {
            assert_eq!(diag_codes(&named(bad)), ["invalid-name"], "{bad}");
        }
    }

    /// Every forward `explain` (the evaluator) reports is in the compiled ruleset,
    /// with the same target, and the ruleset translates nothing else: over every
    /// forward's ports and a neighbour, both protocols, every interface, and
    /// destinations of both families (the forwards' own and others).
    fn evaluator_and_ruleset_agree_on_forwards(p: &Policy) -> usize {
        let rs = compile(p, Capabilities { flowtable: false }).expect("compiles").ruleset;
        let mut dsts: Vec<IpAddr> = p.dnat.iter().filter_map(|d| d.destination).collect();
        dsts.extend(["203.0.113.77", "192.0.2.10", "2001:db8:ffff::77", "2001:db8:1::10"].map(|s| s.parse::<IpAddr>().unwrap()));
        let mut ports: Vec<u16> = p.dnat.iter().flat_map(|d| d.services.tcp.ranges().iter().chain(d.services.udp.ranges()).flat_map(|&(l, h)| [l, h, h.saturating_add(1)])).collect();
        ports.extend([22, 443]);
        let mut forwarded = 0;
        for i in &p.ifaces {
            for &dst in &dsts {
                for proto in [Proto::Tcp, Proto::Udp] {
                    for &port in &ports {
                        let want = crate::eval::port_forward(p, i.device.as_str(), dst, proto, port);
                        let got = sim::port_forward(&rs, i.device.as_str(), dst, if proto == Proto::Tcp { 6 } else { 17 }, port);
                        let want = want.map(|f| (f.dst, f.port, Some(p.dnat[f.forward].name.clone())));
                        assert_eq!(got, want, "{} {dst} {proto:?}/{port}", i.device.as_str());
                        forwarded += usize::from(got.is_some());
                    }
                }
            }
        }
        // And no element of the maps escaped the comparison.
        let elements: usize = rs.sets.iter().filter(|s| s.name.starts_with("dnat")).map(|s| s.elements.len()).sum();
        assert!(forwarded >= elements, "{forwarded} translations seen, {elements} elements");
        forwarded
    }

    #[test]
    fn every_forward_explain_reports_is_in_the_compiled_ruleset() {
        let shapes = policy(
            "[[nat.forward]]\nname = \"any-both\"\non = \"wan\"\nservice = \"app\"\nto = \"web\"\nto_port = 8080\n\
             [[nat.forward]]\non = \"wan\"\nservice = \"ssh\"\nto = \"old\"\n\
             [[nat.forward]]\nname = \"dest4\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"https\"\nto = \"dmzhost\"\n\
             [[nat.forward]]\nname = \"dest6\"\non = \"wan\"\ndestination = \"2001:db8:ff::10\"\nservice = \"https\"\nto = \"dmzhost\"\nto_port = 8443\n\
             [[nat.forward]]\nname = \"inside\"\non = \"lan\"\nservice = \"dns\"\nto = \"dmzhost\"\n",
        );
        assert!(evaluator_and_ruleset_agree_on_forwards(&shapes) >= 16);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/home-router.toml");
        let l = crate::check::load(&path, TODAY);
        let home = l.policy.expect("home-router loads");
        // nas-remote: IPv4 and IPv6 to any destination arriving on wan.
        assert!(evaluator_and_ruleset_agree_on_forwards(&home) >= 2);
        let rs = compile(&home, Capabilities { flowtable: false }).unwrap().ruleset;
        let nas6 = sim::port_forward(&rs, "eth0", "2001:db8:1::10".parse().unwrap(), 6, 443);
        assert_eq!(nas6, Some(("2001:db8:1::10".parse().unwrap(), 5001, Some("nas-remote".into()))));
    }
}
