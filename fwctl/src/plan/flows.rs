//! The flow-level change between two policies: which classes of new connections
//! become allowed or denied, in addresses/ports and policy terms.
//!
//! Input: the old and new resolved policies with their compiled decisions.
//! Output: [`FlowChange`]s. A verdict can only change where a changed rule (added,
//! removed or modified, by name) matches, so only those rules' regions are
//! visited. Each region is split where either decision structure could change its
//! answer (the joint partition of old and new address classes per interface
//! context, and the port boundaries of both policies); one packet per piece is run
//! through both compiled structures ([`Sim`]), so the answer is exact.
//! Must not: touch the kernel, or describe a change it did not compute.

use crate::compile::decide::{ctx_zone, zone_ctx, ClassMap, Ctx, Decision, LOCAL, OTHER};
use crate::compile::sim::Sim;
use crate::diag::SourceMap;
use crate::eval::{Hook, Packet, Verdict};
use crate::model::addr::{AddrSet, Ranges};
use crate::model::{Named, Policy, Proto, Rule};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

/// One side of the comparison.
pub struct Side<'a> {
    pub policy: &'a Policy,
    pub decision: &'a Decision,
    pub sm: &'a SourceMap,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FlowChange {
    /// true: now allowed (was refused); false: now refused (was allowed).
    pub now_allowed: bool,
    pub hook: String,
    pub from_zone: String,
    pub to_zone: String,
    pub src: String,
    pub dst: String,
    pub proto: Proto,
    pub ports: (u16, u16),
    /// The rules that decide it now (or, when no rule refuses it any more and it is
    /// refused by default, the rules that allowed it before), as "name (file:line)".
    pub rules: Vec<String>,
    /// The rules are the old policy's (the flow lost the allow that decided it).
    pub previously: bool,
    /// The allow was lost because its rule(s) expired (the latest date): shown
    /// as `[expired DATE: rule …]`.
    pub expired: Option<String>,
    #[serde(skip)]
    src_range: (IpAddr, IpAddr),
    #[serde(skip)]
    dst_range: (IpAddr, IpAddr),
}

impl FlowChange {
    /// `+ allow internet → host03 (192.0.2.13) tcp/22  [rule dev-ssh (rules.toml:41)]`
    pub fn line(&self) -> String {
        let sign = if self.now_allowed { "+" } else { "-" };
        let ports = if self.ports.0 == self.ports.1 { self.ports.0.to_string() } else { format!("{}-{}", self.ports.0, self.ports.1) };
        let rules = if self.rules.is_empty() {
            String::new()
        } else if let Some(d) = &self.expired {
            format!("  [expired {d}: rule {}]", self.rules.join(", "))
        } else {
            let word = if self.previously { "was allowed by" } else { "rule" };
            format!("  [{word} {}]", self.rules.join(", "))
        };
        format!("{sign} allow {} → {} {}/{ports}{rules}", self.src, self.dst, self.proto.name())
    }
}

/// A context as both sides see it: (old context id, new context id) and a device
/// that lands there (None: the appliance itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Joint {
    old: Ctx,
    new: Ctx,
    device: Option<String>,
    name: String,
}

fn ctx_of(p: &Policy, dev: &str) -> Ctx {
    p.zone_of_device(dev).map(zone_ctx).unwrap_or(OTHER)
}

fn joints(old: &Policy, new: &Policy) -> Vec<Joint> {
    let mut devs: BTreeSet<String> = old.ifaces.iter().chain(&new.ifaces).map(|i| i.device.to_string()).collect();
    devs.insert("fwctl-unknown".into());
    let mut seen = BTreeMap::new();
    for d in devs {
        let key = (ctx_of(old, &d), ctx_of(new, &d));
        seen.entry(key).or_insert_with(|| {
            let name = new.zone_of_device(&d).or_else(|| old.zone_of_device(&d)).map(|z| {
                if new.zone_of_device(&d).is_some() { new.zones[z].name.clone() } else { old.zones[z].name.clone() }
            });
            Joint { old: key.0, new: key.1, name: name.unwrap_or_else(|| "an undeclared interface".into()), device: Some(d) }
        });
    }
    let mut v: Vec<Joint> = seen.into_values().collect();
    v.push(Joint { old: LOCAL, new: LOCAL, device: None, name: "self".into() });
    v
}

/// The addresses that live behind a device (by zone networks; the default zone
/// gets what no zone claims): flows are reported where routing would put them.
fn living(p: &Policy, dev: &str) -> AddrSet {
    let Some(i) = p.iface_by_device(dev) else {
        // An undeclared interface: nothing is routed there in the model.
        return AddrSet::empty();
    };
    let mut claimed = AddrSet::empty();
    for z in &p.zones {
        if let (Some(n), false) = (&z.networks, z.ifaces.is_empty()) {
            claimed = claimed.union(n);
        }
    }
    let zone = &p.zones[p.ifaces[i].zone];
    if zone.ifaces.first() != Some(&i) {
        return AddrSet::empty(); // a second interface of a zone: flows go by the first
    }
    match &zone.networks {
        Some(n) => {
            // Minus more specific zones inside it.
            let mut own = n.clone();
            for z in &p.zones {
                if let (Some(m), false) = (&z.networks, z.ifaces.is_empty()) {
                    if m != n && m.is_subset(n) {
                        own = subtract(&own, m);
                    }
                }
            }
            own
        }
        None if p.iface_for_addr(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)).is_some_and(|x| x == i) || p.zones.iter().find(|z| z.networks.is_none() && !z.ifaces.is_empty()).is_some_and(|z| z.ifaces[0] == i) => subtract(&AddrSet::full(), &claimed),
        None => AddrSet::empty(),
    }
}

fn subtract(a: &AddrSet, b: &AddrSet) -> AddrSet {
    fn sub<T: crate::model::addr::Point>(a: &Ranges<T>, b: &Ranges<T>) -> Ranges<T> {
        let mut out = vec![];
        for &(lo, hi) in a.ranges() {
            let mut start = Some(lo);
            for &(blo, bhi) in b.ranges() {
                let Some(s) = start else { break };
                if bhi < s || blo > hi {
                    continue;
                }
                if blo > s {
                    out.push((s, blo.pred().expect("blo > s")));
                }
                start = bhi.succ().filter(|n| *n <= hi);
            }
            if let Some(s) = start {
                out.push((s, hi));
            }
        }
        Ranges::from_ranges(out)
    }
    AddrSet { v4: sub(&a.v4, &b.v4), v6: sub(&a.v6, &b.v6) }
}

/// Addresses a rule side covers in a context (full when broad), v4 and v6.
fn side_addrs(p: &Policy, s: &crate::model::Side, ctx: Ctx) -> AddrSet {
    if s.any || (ctx == LOCAL && s.self_) {
        return AddrSet::full();
    }
    let mut a = s.addrs.clone();
    if let Some(z) = ctx_zone(ctx) {
        if s.zones.contains(&z) {
            match &p.zones[z].networks {
                None => return AddrSet::full(),
                Some(n) => a = a.union(n),
            }
        }
        for (sz, x) in &s.scoped {
            if *sz == z {
                a = a.union(x);
            }
        }
    }
    a
}

/// Split `within` into pieces where both class maps are constant.
fn pieces<T: crate::model::addr::Point>(within: &Ranges<T>, a: &[(T, T, u32)], b: &[(T, T, u32)]) -> Vec<(T, T)> {
    let mut cuts: Vec<T> = vec![];
    for &(lo, hi) in within.ranges() {
        cuts.push(lo);
        if let Some(n) = hi.succ() {
            cuts.push(n);
        }
    }
    for &(lo, _, _) in a.iter().chain(b) {
        if within.contains(lo) {
            cuts.push(lo);
        }
    }
    cuts.sort();
    cuts.dedup();
    let mut out = vec![];
    for (k, &c) in cuts.iter().enumerate() {
        if !within.contains(c) {
            continue;
        }
        let end = cuts.get(k + 1).and_then(|n| n.pred()).unwrap_or(T::MAX);
        out.push((c, end));
    }
    out
}

fn addr_pieces(set: &AddrSet, a: &ClassMap, b: &ClassMap) -> Vec<(IpAddr, IpAddr)> {
    let mut v: Vec<(IpAddr, IpAddr)> = pieces(&set.v4, &a.v4, &b.v4).into_iter().map(|(l, h)| (IpAddr::V4(l.into()), IpAddr::V4(h.into()))).collect();
    v.extend(pieces(&set.v6, &a.v6, &b.v6).into_iter().map(|(l, h)| (IpAddr::V6(l.into()), IpAddr::V6(h.into()))));
    v
}

fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.from == b.from && a.to == b.to && a.services == b.services && a.action == b.action && a.active() == b.active()
}

/// Names of rules whose matching behaviour differs (added, removed, modified).
fn changed_rules(old: &Policy, new: &Policy) -> BTreeSet<String> {
    let o: BTreeMap<&str, &Rule> = old.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    let n: BTreeMap<&str, &Rule> = new.rules.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut out = BTreeSet::new();
    for (k, r) in &n {
        if o.get(k).is_none_or(|x| !same_rule(x, r)) {
            out.insert(k.to_string());
        }
    }
    for k in o.keys() {
        if !n.contains_key(k) {
            out.insert(k.to_string());
        }
    }
    out
}

fn zones_changed(old: &Policy, new: &Policy) -> bool {
    let z = |p: &Policy| -> Vec<(String, Option<AddrSet>, Vec<String>)> {
        p.zones.iter().map(|z| (z.name.clone(), z.networks.clone(), z.ifaces.iter().map(|&i| p.ifaces[i].device.to_string()).collect())).collect()
    };
    z(old) != z(new)
}

/// Port boundaries of every rule of both policies, per protocol.
fn port_cuts(ps: [&Policy; 2]) -> [BTreeSet<u16>; 4] {
    let mut cuts: [BTreeSet<u16>; 4] = Default::default();
    for p in ps {
        for r in &p.rules {
            for (k, ranges) in [(0, r.services.tcp.ranges().to_vec()), (1, r.services.udp.ranges().to_vec())] {
                for (lo, hi) in ranges {
                    cuts[k].insert(lo);
                    if hi < u16::MAX {
                        cuts[k].insert(hi + 1);
                    }
                }
            }
            for (k, ranges) in [(2, r.services.icmp.ranges().to_vec()), (3, r.services.icmpv6.ranges().to_vec())] {
                for (lo, hi) in ranges {
                    cuts[k].insert(u16::from(lo));
                    cuts[k].insert(u16::from(hi) + 1);
                }
            }
        }
    }
    cuts
}

fn port_pieces(ranges: &[(u16, u16)], cuts: &BTreeSet<u16>) -> Vec<(u16, u16)> {
    let mut out = vec![];
    for &(lo, hi) in ranges {
        let mut start = lo;
        if lo < hi {
            for &c in cuts.range(lo + 1..=hi) {
                out.push((start, c - 1));
                start = c;
            }
        }
        out.push((start, hi));
    }
    out
}

/// Which host (or VPN peer) an address belongs to: the first by name, as a scan
/// of `Policy::names` would find it, without scanning.
struct HostIndex<'a> {
    exact: HashMap<IpAddr, &'a str>,
    /// Hosts given by a range or network, in name order.
    ranged: Vec<(&'a str, &'a AddrSet)>,
}

impl<'a> HostIndex<'a> {
    fn new(p: &'a Policy) -> Self {
        let (mut exact, mut ranged) = (HashMap::new(), vec![]);
        for (name, (n, _)) in &p.names {
            let (Named::Host(a) | Named::Peer(a, _)) = n else { continue };
            let singles = a.v4.ranges().iter().all(|(l, h)| l == h) && a.v6.ranges().iter().all(|(l, h)| l == h);
            if !singles {
                ranged.push((name.as_str(), a));
                continue;
            }
            let addrs = a.v4.ranges().iter().map(|&(l, _)| IpAddr::from(std::net::Ipv4Addr::from(l))).chain(a.v6.ranges().iter().map(|&(l, _)| IpAddr::from(std::net::Ipv6Addr::from(l))));
            for x in addrs {
                exact.entry(x).or_insert(name.as_str());
            }
        }
        HostIndex { exact, ranged }
    }
    fn name_of(&self, a: IpAddr) -> Option<&'a str> {
        let e = self.exact.get(&a).copied();
        let r = self.ranged.iter().find(|(_, s)| s.contains(a)).map(|(n, _)| *n);
        match (e, r) {
            (Some(e), Some(r)) => Some(e.min(r)),
            (e, r) => e.or(r),
        }
    }
}

/// Describe an address range: a host's name when it is exactly one host.
fn describe(hosts: &HostIndex, lo: IpAddr, hi: IpAddr, zone: &str) -> String {
    if lo == hi {
        return match hosts.name_of(lo) {
            Some(name) => format!("{name} ({lo})"),
            None => format!("{zone} {lo}"),
        };
    }
    let full = match (lo, hi) {
        (IpAddr::V4(l), IpAddr::V4(h)) => u32::from(l) == 0 && u32::from(h) == u32::MAX,
        (IpAddr::V6(l), IpAddr::V6(h)) => u128::from(l) == 0 && u128::from(h) == u128::MAX,
        _ => false,
    };
    if full {
        let fam = if lo.is_ipv4() { "IPv4" } else { "IPv6" };
        return format!("{zone} (any {fam})");
    }
    let net = match (lo, hi) {
        (IpAddr::V4(l), IpAddr::V4(h)) => crate::render::nft::val(&crate::compile::ir::Val::V4(l.into(), h.into())),
        (IpAddr::V6(l), IpAddr::V6(h)) => crate::render::nft::val(&crate::compile::ir::Val::V6(l.into(), h.into())),
        _ => format!("{lo}-{hi}"),
    };
    format!("{zone} {net}")
}

/// Above this many probe pieces the change is reported as truncated.
pub const MAX_PIECES: usize = 2_000_000;

pub struct FlowDiff {
    pub changes: Vec<FlowChange>,
    pub truncated: bool,
    pub rules_changed: Vec<String>,
}

pub fn diff(old: &Side, new: &Side) -> FlowDiff {
    let (po, pn) = (old.policy, new.policy);
    let all = zones_changed(po, pn);
    let changed = if all { po.rules.iter().chain(&pn.rules).map(|r| r.name.clone()).collect() } else { changed_rules(po, pn) };
    let (so, sn) = (Sim::new(old.decision), Sim::new(new.decision));
    let cuts = port_cuts([po, pn]);
    let joints = joints(po, pn);
    let living_of: BTreeMap<String, AddrSet> = joints.iter().filter_map(|j| j.device.clone()).map(|d| {
        let l = living(pn, &d);
        (d, l)
    }).collect();
    let mut seen: HashSet<(usize, usize, IpAddr, IpAddr, Proto, u16)> = HashSet::new();
    let mut raw: Vec<FlowChange> = vec![];
    let mut truncated = false;
    let names = |s: &Side| -> Vec<String> { s.policy.rules.iter().map(|r| format!("{} ({})", r.name, s.sm.locate_line(r.span))).collect() };
    let (old_names, new_names) = (names(old), names(new));
    let rule_text = |s: &Side, ids: &[usize]| -> Vec<String> {
        let table = if std::ptr::eq(s.policy, old.policy) { &old_names } else { &new_names };
        ids.iter().map(|&r| table[r].clone()).collect()
    };
    'outer: for (side, is_old) in [(new, false), (old, true)] {
        for rule in side.policy.rules.iter().filter(|r| changed.contains(&r.name)) {
            for (js_i, js) in joints.iter().enumerate() {
                for (jd_i, jd) in joints.iter().enumerate() {
                    if js.device.is_none() && jd.device.is_none() {
                        continue;
                    }
                    let ctx = |j: &Joint| if is_old { j.old } else { j.new };
                    // The appliance's own end only where the side names it (self, any);
                    // other ends only where their addresses live.
                    let end = |j: &Joint, s: &crate::model::Side| -> AddrSet {
                        match &j.device {
                            None if s.any || s.self_ => AddrSet::full(),
                            None => AddrSet::empty(),
                            Some(d) => side_addrs(side.policy, s, ctx(j)).intersect(&living_of[d]),
                        }
                    };
                    let a = end(js, &rule.from);
                    let b = end(jd, &rule.to);
                    if a.is_empty() || b.is_empty() {
                        continue;
                    }
                    let sctx = |j: &Joint, old: bool| if j.device.is_none() { LOCAL } else if old { j.old } else { j.new };
                    let a_pieces = addr_pieces(&a, old.decision.src_map(sctx(js, true)), new.decision.src_map(sctx(js, false)));
                    let b_pieces = addr_pieces(&b, old.decision.dst_map(sctx(jd, true)), new.decision.dst_map(sctx(jd, false)));
                    let hook = match (js.device.is_none(), jd.device.is_none()) {
                        (true, _) => Hook::Output,
                        (_, true) => Hook::Input,
                        _ => Hook::Forward,
                    };
                    let s = &rule.services;
                    let protos: [(Proto, Vec<(u16, u16)>); 4] = [
                        (Proto::Tcp, port_pieces(s.tcp.ranges(), &cuts[0])),
                        (Proto::Udp, port_pieces(s.udp.ranges(), &cuts[1])),
                        (Proto::Icmp, port_pieces(&s.icmp.ranges().iter().map(|&(a, b)| (u16::from(a), u16::from(b))).collect::<Vec<_>>(), &cuts[2])),
                        (Proto::Icmpv6, port_pieces(&s.icmpv6.ranges().iter().map(|&(a, b)| (u16::from(a), u16::from(b))).collect::<Vec<_>>(), &cuts[3])),
                    ];
                    for &(slo, shi) in &a_pieces {
                        for &(dlo, dhi) in &b_pieces {
                            // Different families never meet; a single address talking to
                            // itself never crosses the firewall.
                            if slo.is_ipv4() != dlo.is_ipv4() || (slo == shi && dlo == dhi && slo == dlo) {
                                continue;
                            }
                            for (proto, ports) in &protos {
                                if (*proto == Proto::Icmp && !slo.is_ipv4()) || (*proto == Proto::Icmpv6 && slo.is_ipv4()) {
                                    continue;
                                }
                                for &(plo, phi) in ports {
                                    if !seen.insert((js_i, jd_i, slo, dlo, *proto, plo)) {
                                        continue;
                                    }
                                    if seen.len() > MAX_PIECES {
                                        truncated = true;
                                        break 'outer;
                                    }
                                    let pkt = Packet {
                                        hook,
                                        iif: if hook == Hook::Output { None } else { js.device.clone() },
                                        oif: if hook == Hook::Input { None } else { jd.device.clone() },
                                        src: slo,
                                        dst: dlo,
                                        proto: *proto,
                                        port: plo,
                                    };
                                    let before = so.run(po, &pkt);
                                    let after = sn.run(pn, &pkt);
                                    let (was, is) = (before.verdict == Verdict::Accept, after.verdict == Verdict::Accept);
                                    if was == is {
                                        continue;
                                    }
                                    let previously = !is && after.rules.is_empty();
                                    let rules = if previously { rule_text(old, &before.rules) } else { rule_text(new, &after.rules) };
                                    // Lost because every rule that allowed it has expired in the new policy.
                                    let expired = if previously && !before.rules.is_empty() {
                                        let dates: Option<Vec<crate::model::Date>> = before.rules.iter().map(|&r| pn.rules.iter().find(|x| x.name == po.rules[r].name && x.expired).and_then(|x| x.expires)).collect();
                                        dates.and_then(|d| d.into_iter().max()).map(|d| d.to_string())
                                    } else {
                                        None
                                    };
                                    // The appliance's own end is shown whole, as `self`.
                                    let whole = |lo: IpAddr, hi: IpAddr, local: bool| -> (IpAddr, IpAddr) {
                                        match (local, lo) {
                                            (true, IpAddr::V4(_)) => (IpAddr::V4(0.into()), IpAddr::V4(u32::MAX.into())),
                                            (true, IpAddr::V6(_)) => (IpAddr::V6(0.into()), IpAddr::V6(u128::MAX.into())),
                                            _ => (lo, hi),
                                        }
                                    };
                                    raw.push(FlowChange {
                                        now_allowed: is,
                                        hook: format!("{hook:?}").to_lowercase(),
                                        from_zone: js.name.clone(),
                                        to_zone: jd.name.clone(),
                                        src: String::new(),
                                        dst: String::new(),
                                        proto: *proto,
                                        ports: (plo, phi),
                                        rules,
                                        previously,
                                        expired,
                                        src_range: whole(slo, shi, js.device.is_none()),
                                        dst_range: whole(dlo, dhi, jd.device.is_none()),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Merge adjacent port pieces, then adjacent source ranges, of the same change.
    raw.sort_by(|a, b| (a.now_allowed, &a.from_zone, &a.to_zone, a.src_range, a.dst_range, a.proto, &a.rules, a.ports).cmp(&(b.now_allowed, &b.from_zone, &b.to_zone, b.src_range, b.dst_range, b.proto, &b.rules, b.ports)));
    let mut merged: Vec<FlowChange> = vec![];
    for c in raw {
        if let Some(l) = merged.last_mut() {
            let same = l.now_allowed == c.now_allowed && l.from_zone == c.from_zone && l.to_zone == c.to_zone && l.src_range == c.src_range && l.dst_range == c.dst_range && l.proto == c.proto && l.rules == c.rules;
            if same && l.ports.1.checked_add(1) == Some(c.ports.0) {
                l.ports.1 = c.ports.1;
                continue;
            }
        }
        merged.push(c);
    }
    merged.sort_by(|a, b| (a.now_allowed, &a.from_zone, &a.to_zone, a.dst_range, a.proto, a.ports, &a.rules, a.src_range).cmp(&(b.now_allowed, &b.from_zone, &b.to_zone, b.dst_range, b.proto, b.ports, &b.rules, b.src_range)));
    let mut out: Vec<FlowChange> = vec![];
    for c in merged {
        if let Some(l) = out.last_mut() {
            let same = l.now_allowed == c.now_allowed && l.from_zone == c.from_zone && l.to_zone == c.to_zone && l.dst_range == c.dst_range && l.proto == c.proto && l.ports == c.ports && l.rules == c.rules;
            let adjacent = match (l.src_range.1, c.src_range.0) {
                (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a).checked_add(1) == Some(u32::from(b)),
                (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a).checked_add(1) == Some(u128::from(b)),
                _ => false,
            };
            if same && adjacent {
                l.src_range.1 = c.src_range.1;
                continue;
            }
        }
        out.push(c);
    }
    // Lines that differ only by source range become one line; a zone's whole
    // living space is shown as the zone's name.
    let living_named = |zone: &str| -> Option<&AddrSet> { joints.iter().find(|j| j.name == zone).and_then(|j| j.device.as_ref()).and_then(|d| living_of.get(d)) };
    let covers = |zone: &str, ranges: &[(IpAddr, IpAddr)]| -> bool {
        let Some(l) = living_named(zone) else { return false };
        let mut got = AddrSet::empty();
        for r in ranges {
            got.add_range(r.0, r.1);
        }
        let v4 = ranges.iter().any(|r| r.0.is_ipv4());
        let fam = if v4 { AddrSet { v4: l.v4.clone(), ..AddrSet::empty() } } else { AddrSet { v6: l.v6.clone(), ..AddrSet::empty() } };
        !fam.is_empty() && fam.is_subset(&got)
    };
    let mut grouped: Vec<(FlowChange, Vec<(IpAddr, IpAddr)>)> = vec![];
    let mut index: std::collections::HashMap<(bool, String, String, (IpAddr, IpAddr), Proto, (u16, u16), Vec<String>, bool), usize> = Default::default();
    for c in out {
        let key = (c.now_allowed, c.from_zone.clone(), c.to_zone.clone(), c.dst_range, c.proto, c.ports, c.rules.clone(), c.src_range.0.is_ipv4());
        if let Some(&k) = index.get(&key) {
            grouped[k].1.push(c.src_range);
            continue;
        }
        index.insert(key, grouped.len());
        let r = c.src_range;
        grouped.push((c, vec![r]));
    }
    let hosts = HostIndex::new(pn);
    let mut out = vec![];
    for (mut c, ranges) in grouped {
        c.src = if c.from_zone == "self" || covers(&c.from_zone, &ranges) {
            c.from_zone.clone()
        } else {
            let mut parts: Vec<String> = ranges.iter().take(4).map(|r| describe(&hosts, r.0, r.1, &c.from_zone)).collect();
            if ranges.len() > 4 {
                parts.push(format!("+{} more ranges", ranges.len() - 4));
            }
            parts.join(", ")
        };
        c.dst = if c.to_zone == "self" || covers(&c.to_zone, &[c.dst_range]) { c.to_zone.clone() } else { describe(&hosts, c.dst_range.0, c.dst_range.1, &c.to_zone) };
        out.push(c);
    }
    out.sort_by(|a, b| (b.now_allowed, &a.from_zone, &a.dst, a.proto, a.ports, &a.src).cmp(&(a.now_allowed, &b.from_zone, &b.dst, b.proto, b.ports, &b.src)));
    FlowDiff { changes: out, truncated, rules_changed: changed.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{load_str, Loaded};
    use crate::compile::{compile, Capabilities};

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
host03 = "192.0.2.13"
host04 = "192.0.2.14"
db03 = "192.0.2.20"
[groups]
web = ["host03"]
[[rules]]
name = "public-web"
from = "internet"
to = "web"
allow = ["https"]
"#;

    fn lines(old: &str, new: &str) -> Vec<String> {
        let d = crate::model::Date { year: 2026, month: 11, day: 23 };
        let (lo, ln): (Loaded, Loaded) = (load_str("old.toml", old, d), load_str("new.toml", new, d));
        assert!(!lo.has_errors() && !ln.has_errors(), "{:?} {:?}", lo.diags, ln.diags);
        let (po, pn) = (lo.policy.as_ref().unwrap(), ln.policy.as_ref().unwrap());
        let co = compile(po, Capabilities { flowtable: false }).unwrap();
        let cn = crate::compile::compile_with(pn, Capabilities { flowtable: false }, Some(&co.decision.alloc)).unwrap();
        let d = diff(&Side { policy: po, decision: &co.decision, sm: &lo.sm }, &Side { policy: pn, decision: &cn.decision, sm: &ln.sm });
        d.changes.iter().map(|c| c.line()).collect()
    }

    #[test]
    fn host_added_to_a_group() {
        let got = lines(BASE, &BASE.replace("web = [\"host03\"]", "web = [\"host03\", \"host04\"]"));
        assert_eq!(got, vec!["+ allow internet → host04 (192.0.2.14) tcp/443  [rule public-web (new.toml:20)]"]);
    }

    #[test]
    fn service_changed() {
        let got = lines(BASE, &BASE.replace("allow = [\"https\"]", "allow = [\"http\"]"));
        assert_eq!(
            got,
            vec![
                "+ allow internet → host03 (192.0.2.13) tcp/80  [rule public-web (new.toml:20)]",
                "- allow internet → host03 (192.0.2.13) tcp/443  [was allowed by public-web (old.toml:20)]",
            ]
        );
    }

    #[test]
    fn new_deny_names_the_deny_rule() {
        let new = format!("{BASE}\n[[rules]]\nname = \"block-bad\"\nfrom = \"203.0.113.66\"\nto = \"host03\"\ndeny = [\"https\"]\n");
        assert_eq!(lines(BASE, &new), vec!["- allow internet 203.0.113.66 → host03 (192.0.2.13) tcp/443  [rule block-bad (new.toml:26)]"]);
    }

    #[test]
    fn an_expired_rule_shows_as_expired_in_the_flow_change() {
        let temp = "\n[[rules]]\nname = \"temp-ssh\"\nfrom = \"internet\"\nto = \"host04\"\nallow = [\"ssh\"]\nexpires = 2026-11-22\n";
        let new = format!("{BASE}{temp}");
        // The applied generation was compiled before the date (the rule is in force
        // there); judged today it has expired.
        let then = crate::model::Date { year: 2026, month: 11, day: 20 };
        let today = crate::model::Date { year: 2026, month: 11, day: 23 };
        let (lo, ln) = (load_str("old.toml", &new, then), load_str("new.toml", &new, today));
        let (po, pn) = (lo.policy.as_ref().unwrap(), ln.policy.as_ref().unwrap());
        let co = compile(po, Capabilities { flowtable: false }).unwrap();
        let cn = crate::compile::compile_with(pn, Capabilities { flowtable: false }, Some(&co.decision.alloc)).unwrap();
        let d = diff(&Side { policy: po, decision: &co.decision, sm: &lo.sm }, &Side { policy: pn, decision: &cn.decision, sm: &ln.sm });
        let got: Vec<String> = d.changes.iter().map(|c| c.line()).collect();
        assert_eq!(got, vec!["- allow internet → host04 (192.0.2.14) tcp/22  [expired 2026-11-22: rule temp-ssh (old.toml:26)]"]);
    }

    #[test]
    fn unchanged_policy_has_no_flow_change() {
        assert!(lines(BASE, BASE).is_empty());
    }
}
