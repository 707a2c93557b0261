//! Runs the compiled decision structure on a packet, the way the kernel walks the
//! rendered chains: dispatch by interface, classify source and destination, look
//! the key up in each decision map in order.
//!
//! Input: a [`Decision`] and a packet. Output: the verdict and the element's rules.
//! It exists to be compared with the reference evaluator (`eval`) on many random
//! packets; kernel tests then check the rendering with real packets.
//! Must not: consult the policy's rules (only interfaces, zones and default).

use super::decide::{proto_num, Ctx, Decision, LOCAL, OTHER};
use crate::eval::{is_essential_icmp, Hook, Packet, Verdict};
use crate::model::{Action, DefaultVerdict, Policy, Proto, RuleId};
use super::ir::{KeyType, Ruleset, SetData, Val};
use std::collections::HashMap;
use std::net::IpAddr;

type Key = (u32, u32, u8, u16);

/// Hash indexes over a decision's layers, built once.
pub struct Sim<'a> {
    d: &'a Decision,
    layers: Vec<LayerIx>,
}

struct LayerIx {
    action: Action,
    smask: u32,
    dmask: u32,
    exact: HashMap<Key, Vec<RuleId>>,
    ranges: HashMap<(u32, u32, u8), Vec<(u16, u16, Vec<RuleId>)>>,
    icmp4: HashMap<(u32, u32, u8), Vec<RuleId>>,
    icmp6: HashMap<(u32, u32, u8), Vec<RuleId>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOutcome {
    pub verdict: Verdict,
    /// The rules of the element that decided (empty: default, loopback, ICMP).
    pub rules: Vec<RuleId>,
    pub layer: Option<String>,
}

impl<'a> Sim<'a> {
    pub fn new(d: &'a Decision) -> Sim<'a> {
        let layers = d
            .layers
            .iter()
            .map(|l| {
                let mut ranges: HashMap<(u32, u32, u8), Vec<(u16, u16, Vec<RuleId>)>> = HashMap::new();
                for ((s, t, p, lo, hi), r) in &l.ranges {
                    ranges.entry((*s, *t, *p)).or_default().push((*lo, *hi, r.clone()));
                }
                LayerIx {
                    action: l.action(),
                    smask: l.smask,
                    dmask: l.dmask,
                    exact: l.exact.iter().cloned().collect(),
                    ranges,
                    icmp4: l.icmp4.iter().cloned().collect(),
                    icmp6: l.icmp6.iter().cloned().collect(),
                }
            })
            .collect();
        Sim { d, layers }
    }

    pub fn run(&self, p: &Policy, pkt: &Packet) -> SimOutcome {
        let done = |verdict, rules, layer| SimOutcome { verdict, rules, layer };
        let lo = match pkt.hook {
            Hook::Input => pkt.iif.as_deref() == Some("lo"),
            Hook::Output => pkt.oif.as_deref() == Some("lo"),
            Hook::Forward => false,
        };
        if lo || is_essential_icmp(pkt.proto, pkt.port) {
            return done(Verdict::Accept, vec![], None);
        }
        // The anti-spoofing sets, ahead of the classification (input, forward).
        // The kernel's `fib` check agrees where routes follow the zones' networks.
        if pkt.hook != Hook::Output && super::antispoof::guard(p).drops(pkt.iif.as_deref().and_then(|d| p.zone_of_device(d)), pkt.src) {
            return done(Verdict::Drop, vec![], Some("antispoof".into()));
        }
        if pkt.hook == Hook::Output && !self.d.output_relevant {
            return done(Verdict::Accept, vec![], None);
        }
        let ctx_of = |dev: &Option<String>| -> Ctx {
            dev.as_deref().and_then(|d| p.zone_of_device(d)).map(super::decide::zone_ctx).unwrap_or(OTHER)
        };
        let (sctx, dctx) = match pkt.hook {
            Hook::Input => (ctx_of(&pkt.iif), LOCAL),
            Hook::Forward => (ctx_of(&pkt.iif), ctx_of(&pkt.oif)),
            Hook::Output => (LOCAL, ctx_of(&pkt.oif)),
        };
        let s = self.d.src_map(sctx).lookup(pkt.src) | self.d.src_pack.zone(sctx);
        let t = self.d.dst_map(dctx).lookup(pkt.dst) | self.d.dst_pack.zone(dctx);
        let refuse = if p.default == DefaultVerdict::Reject { Verdict::Reject } else { Verdict::Drop };
        let v4 = pkt.src.is_ipv4();
        for (l, layer) in self.layers.iter().zip(&self.d.layers) {
            let (sk, tk) = (s & l.smask, t & l.dmask);
            let hit = match pkt.proto {
                Proto::Tcp | Proto::Udp => {
                    let pn = proto_num(pkt.proto);
                    l.exact.get(&(sk, tk, pn, pkt.port)).cloned().or_else(|| {
                        l.ranges.get(&(sk, tk, pn)).and_then(|v| v.iter().find(|(a, b, _)| *a <= pkt.port && pkt.port <= *b).map(|x| x.2.clone()))
                    })
                }
                Proto::Icmp if v4 => u8::try_from(pkt.port).ok().and_then(|ty| l.icmp4.get(&(sk, tk, ty)).cloned()),
                Proto::Icmpv6 if !v4 => u8::try_from(pkt.port).ok().and_then(|ty| l.icmp6.get(&(sk, tk, ty)).cloned()),
                _ => None,
            };
            if let Some(rules) = hit {
                let v = match l.action {
                    Action::Allow => Verdict::Accept,
                    Action::Deny => refuse,
                };
                return done(v, rules, Some(layer.name()));
            }
        }
        let v = if pkt.hook == Hook::Output { Verdict::Accept } else { refuse };
        done(v, vec![], None)
    }
}

/// Runs the compiled port forwards on the first packet of a new TCP/UDP
/// connection the way the kernel walks them: the rules of the `nat_pre` chain in
/// order, each one lookup in the map it names, keyed by that map's key types
/// (ingress device, destination address if the map has one, protocol, port), the
/// packet's family deciding which maps apply. The first hit translates.
/// Returns the translated destination, port, and the element's comment (the
/// forward's name). Must not consult the policy: only the ruleset.
pub fn port_forward(rs: &Ruleset, iif: &str, dst: IpAddr, proto: u8, port: u16) -> Option<(IpAddr, u16, Option<String>)> {
    let chain = rs.chains.iter().find(|c| c.name == "nat_pre")?;
    for rule in &chain.rules {
        let Some((_, name)) = rule.rsplit_once("map @") else { continue };
        let Some(set) = rs.set(name.trim()) else { continue };
        let v6 = match set.data {
            Some(SetData::NatV4) => false,
            Some(SetData::NatV6) => true,
            _ => continue,
        };
        if v6 != dst.is_ipv6() {
            continue;
        }
        let key: Vec<Val> = set
            .key
            .iter()
            .filter_map(|t| match (t, dst) {
                (KeyType::Ifname, _) => Some(Val::Ifname(iif.to_string())),
                (KeyType::Ipv4Addr, IpAddr::V4(a)) => Some(Val::V4(a.into(), a.into())),
                (KeyType::Ipv6Addr, IpAddr::V6(a)) => Some(Val::V6(a.into(), a.into())),
                (KeyType::InetProto, _) => Some(Val::Proto(proto)),
                (KeyType::InetService, _) => Some(Val::Port(port, port)),
                _ => None,
            })
            .collect();
        if key.len() != set.key.len() {
            continue;
        }
        if let Some(e) = set.elements.iter().find(|e| e.key == key) {
            return match e.data {
                Some(Val::NatV4(a, p)) => Some((IpAddr::V4(a.into()), p, e.comment.clone())),
                Some(Val::NatV6(a, p)) => Some((IpAddr::V6(a.into()), p, e.comment.clone())),
                _ => None,
            };
        }
    }
    None
}
