//! NAT: port forwards as maps (one lookup per family), masquerade/SNAT as a short
//! list of rules that may not overlap (so their order cannot matter).
//!
//! Input: the policy's `dnat` and `snat`. Output: sets and the `nat_pre` /
//! `nat_post` chains. Must not: emit two translations for the same packet.

use super::ir::*;
use super::CompileError;
use crate::model::addr::Ranges;
use crate::model::{Policy, Side};
use std::collections::HashMap;
use std::net::IpAddr;

/// A port forward expands to one element per port; this bounds a single forward.
pub const MAX_FORWARD_PORTS: u32 = 4096;

pub fn compile(p: &Policy, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Result<(), CompileError> {
    dnat(p, sets, chains)?;
    snat(p, sets, chains)
}

fn dnat(p: &Policy, sets: &mut Vec<Set>, chains: &mut Vec<Chain>) -> Result<(), CompileError> {
    // (v6, with destination) -> elements
    let mut maps: HashMap<(bool, bool), Vec<Elem>> = HashMap::new();
    // (device, dest or None, proto, port) -> forward name, to find conflicts.
    let mut claimed: HashMap<(String, Option<IpAddr>, u8, u16), String> = HashMap::new();
    for d in &p.dnat {
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
                    let families: Vec<bool> = match d.destination {
                        Some(a) => vec![a.is_ipv6()],
                        // Without a destination address, only IPv4 is forwarded:
                        // IPv6 hosts are reachable directly (no NAT66 by surprise).
                        None => d.to_v4.map(|_| vec![false]).unwrap_or_default(),
                    };
                    for v6 in families {
                        let dest = d.destination;
                        let key = (dev.clone(), dest, proto, port);
                        if let Some(other) = claimed.get(&key).filter(|o| **o != d.name) {
                            let what = if proto == 6 { "tcp" } else { "udp" };
                            return Err(CompileError::Nat(
                                format!("port forwards `{other}` and `{}` both claim {what}/{port} on `{}`", d.name, p.ifaces[d.iface].key),
                                Some(d.span),
                            ));
                        }
                        claimed.insert(key.clone(), d.name.clone());
                        let data = if v6 {
                            Val::NatV6(u128::from(d.to_v6.expect("family checked")), to_port)
                        } else {
                            Val::NatV4(u32::from(d.to_v4.expect("family checked")), to_port)
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
    let mut any_ports: HashMap<(String, u8, u16), String> = HashMap::new();
    for ((dev, dest, proto, port), name) in &claimed {
        if dest.is_none() {
            any_ports.insert((dev.clone(), *proto, *port), name.clone());
        }
    }
    for ((dev, dest, proto, port), name) in &claimed {
        if dest.is_some() {
            if let Some(other) = any_ports.get(&(dev.clone(), *proto, *port)) {
                if other != name {
                    let what = if *proto == 6 { "tcp" } else { "udp" };
                    let mut pair = [other.clone(), name.clone()];
                    pair.sort();
                    let span = p.dnat.iter().find(|d| d.name == pair[1]).map(|d| d.span);
                    return Err(CompileError::Nat(format!("port forwards `{}` and `{}` both claim {what}/{port} on device {dev}", pair[0], pair[1]), span));
                }
            }
        }
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
