//! Resolved policy → [`Ruleset`] for one `inet fwctl` table.
//!
//! Input: a [`Policy`] and the kernel's [`Capabilities`] (detected by `sys`).
//! Output: sets, maps and chains whose per-packet cost is constant: a new
//! connection goes through a fixed number of lookups (interface dispatch, source
//! class, destination class, a few decision maps) whatever the size of the policy.
//! Established/related traffic is accepted first; essential ICMP and loopback always.
//! Must not: do I/O, or let rule order influence the result.

pub mod antispoof;
pub mod decide;
pub mod ir;
pub mod nat;
pub mod sim;

use crate::model::{Action, DefaultVerdict, Offload, Policy, RuleId};
use decide::{Ctx, Decision, KeyKind, LOCAL, OTHER};
use ir::*;

/// What the running kernel can do (flowtable offload is optional in kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub flowtable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CompileError {
    /// `flowtable = "required"` on a kernel without flowtables.
    FlowtableRequired,
    /// A NAT conflict or limit (message says which), and where.
    Nat(String, Option<crate::diag::Span>),
    /// A side's context id and address classes need more than its 32-bit mark.
    MarkOverflow(decide::MarkOverflow),
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileError::FlowtableRequired => write!(
                f,
                "firewall.offload.flowtable = \"required\", but this kernel has no flowtable support (NF_FLOW_TABLE); use \"auto\" to run without offload"
            ),
            CompileError::Nat(m, _) => write!(f, "{m}"),
            CompileError::MarkOverflow(m) => write!(
                f,
                "the {} mark needs {} bits, more than its 32: {} for the zone id, {} for {} group classes, {} for {} host classes",
                if m.src { "source" } else { "destination" },
                m.total_bits(),
                m.zone_bits,
                m.coarse_bits,
                m.coarse,
                m.fine_bits,
                m.fine
            ),
        }
    }
}

impl std::error::Error for CompileError {}

impl CompileError {
    /// As a diagnostic, pointing at the offending NAT entry when there is one.
    pub fn diagnostic(&self) -> crate::diag::Diagnostic {
        let d = crate::diag::Diagnostic::error("compile", self.to_string());
        match self {
            CompileError::Nat(_, Some(span)) => d.at(*span, "here"),
            CompileError::MarkOverflow(m) => match &m.zone {
                Some((name, span, ctx)) => d
                    .at(*span, format!("zone `{name}` has id {ctx}: the last zone with interfaces sets the width of the zone id"))
                    .note("zone ids follow the order of declaration (files in sorted order); declaring the zones that have interfaces before address-only zones makes the zone id narrower"),
                None => d,
            },
            _ => d,
        }
    }
}

pub const LOG_RATE: &str = "limit rate 10/second burst 20 packets";

/// The whole compilation: decision structure plus its nft rendering.
pub struct Compiled {
    pub decision: Decision,
    pub ruleset: Ruleset,
}

pub fn compile(p: &Policy, caps: Capabilities) -> Result<Compiled, CompileError> {
    compile_with(p, caps, None)
}

/// Compile, keeping the class ids of a previous compilation where signatures are
/// unchanged (so that a small policy change is a small set-element change).
pub fn compile_with(p: &Policy, caps: Capabilities, prev: Option<&decide::Allocation>) -> Result<Compiled, CompileError> {
    let decision = decide::build(p, prev).map_err(CompileError::MarkOverflow)?;
    let mut b = Builder { p, sets: vec![], chains: vec![], notes: vec![] };
    let flowtable = b.flowtable(caps)?;
    b.filter(&decision, flowtable.is_some());
    nat::compile(p, &mut b.sets, &mut b.chains)?;
    let mut rs = Ruleset { table: TABLE.to_string(), sets: b.sets, chains: b.chains, flowtable, notes: b.notes, stats: Stats::default() };
    rs.stats = Stats {
        rules_compiled: p.rules.iter().filter(|r| r.active()).count(),
        rules_expired: p.rules.iter().filter(|r| r.expired).count(),
        src_classes: decision.src_classes,
        dst_classes: decision.dst_classes,
        decision_elements: decision.layers.iter().map(|l| l.len()).sum(),
        kernel_rules: rs.kernel_rule_count(),
        sets: rs.sets.len(),
        elements: rs.sets.iter().map(|s| s.elements.len()).sum(),
    };
    Ok(Compiled { decision, ruleset: rs })
}

struct Builder<'a> {
    p: &'a Policy,
    sets: Vec<Set>,
    chains: Vec<Chain>,
    notes: Vec<String>,
}

/// Register value meaning "no class yet": class values never set the zone bits.
const SENTINEL: u32 = 0xffff_ffff;

/// Below this many single-address elements a family's classification stays one
/// interval map (a short binary search beats two extra rules and a hash lookup).
pub const EXACT_MIN: usize = 8;

/// Split a classification (sorted disjoint intervals covering `0..=top`) into its
/// single addresses and intervals covering the rest: each removed address is
/// absorbed by its lower neighbour (or the upper one at the bottom), adjacent
/// intervals of one class merged. Looking the address up in the singles first and
/// in the intervals on a miss gives the same class as the original. Nothing is
/// split below [`EXACT_MIN`] singles.
pub fn split_exact(all: &[(u128, u128, u32)], top: u128) -> (Vec<(u128, u32)>, Vec<(u128, u128, u32)>) {
    let exact: Vec<(u128, u32)> = all.iter().filter(|r| r.0 == r.1).map(|r| (r.0, r.2)).collect();
    if exact.len() < EXACT_MIN {
        return (vec![], all.to_vec());
    }
    let kept: Vec<(u128, u128, u32)> = all.iter().filter(|r| r.0 != r.1).copied().collect();
    if kept.is_empty() {
        return (exact, vec![(0, top, 0)]);
    }
    let mut out: Vec<(u128, u128, u32)> = vec![];
    for (i, &(lo, _, c)) in kept.iter().enumerate() {
        let lo = if i == 0 { 0 } else { lo };
        let hi = if i + 1 == kept.len() { top } else { kept[i + 1].0 - 1 };
        match out.last_mut() {
            Some(last) if last.2 == c => last.1 = hi,
            _ => out.push((lo, hi, c)),
        }
    }
    (exact, out)
}

fn chain(name: &str, comment: &str, rules: Vec<String>) -> Chain {
    Chain { name: name.into(), base: None, comment: comment.into(), rules }
}

/// The longest log prefix the kernel keeps (`NF_LOG_PREFIXLEN` less the NUL).
pub const LOG_PREFIX_MAX: usize = 127;

/// A rule name safe inside an nft string and in a terminal showing the ruleset
/// (names are validated, this is belt and braces): no quotes, backslashes,
/// control characters or bidirectional overrides.
pub fn clean(s: &str) -> String {
    s.chars().filter(|&c| !crate::text::is_terminal_dangerous(c) && c != '"' && c != '\\').collect()
}

/// `fwctl allow NAME: `, at most [`LOG_PREFIX_MAX`] bytes: a long name is cut (on a
/// character boundary — names may hold multibyte text) so that the prefix still
/// ends in ": ".
fn log_prefix(word: &str, rule_name: &str) -> String {
    let head = format!("fwctl {word} ");
    let name = clean(rule_name);
    format!("{head}{}: ", crate::text::truncate_bytes(&name, LOG_PREFIX_MAX.saturating_sub(head.len() + 2)))
}

fn comment_of(p: &Policy, rules: &[RuleId]) -> String {
    let mut s = String::new();
    for (i, &r) in rules.iter().enumerate() {
        let name = clean(&p.rules[r].name);
        if s.len() + name.len() + 1 > 116 {
            s.push_str(&format!(" +{}", rules.len() - i));
            break;
        }
        if i > 0 {
            s.push(',');
        }
        s.push_str(&name);
    }
    s
}

impl Builder<'_> {
    fn flowtable(&mut self, caps: Capabilities) -> Result<Option<Flowtable>, CompileError> {
        let devices: Vec<String> = self.p.ifaces.iter().filter(|i| !i.vpn).map(|i| i.device.to_string()).collect();
        match (self.p.offload, caps.flowtable) {
            (Offload::Off, _) => Ok(None),
            (Offload::Required, false) => Err(CompileError::FlowtableRequired),
            (Offload::Auto, false) => {
                self.notes.push("flowtable offload skipped: this kernel has no flowtable support (NF_FLOW_TABLE); established traffic is accepted by the forward chain instead".into());
                Ok(None)
            }
            (_, true) if devices.is_empty() => {
                self.notes.push("flowtable offload skipped: the policy declares no physical interface".into());
                Ok(None)
            }
            (_, true) => Ok(Some(Flowtable { name: "ft".into(), devices })),
        }
    }

    fn ctx_name(&self, ctx: Ctx) -> String {
        match (ctx, decide::ctx_zone(ctx).and_then(|z| self.p.zones.get(z))) {
            (LOCAL, _) => "self".into(),
            (_, Some(z)) => format!("zone {}", z.name),
            _ => "an undeclared interface".into(),
        }
    }

    /// Class maps, deduplicated: contexts with the same classification share a map.
    /// Per context and family: the rules that set `reg` (`meta mark` / `ct mark`)
    /// to the address's class.
    fn class_sets(&mut self, side: &str, maps: &[(Ctx, decide::ClassMap)]) -> Vec<(Ctx, Vec<String>)> {
        let mut out = vec![];
        let mut seen: Vec<(&decide::ClassMap, Vec<String>)> = vec![];
        let (who, reg, field) = if side == "src" { ("source", "meta mark", "saddr") } else { ("destination", "ct mark", "daddr") };
        for (ctx, m) in maps {
            if let Some((_, rules)) = seen.iter().find(|(x, _)| *x == m) {
                out.push((*ctx, rules.clone()));
                continue;
            }
            let k = seen.len();
            let mut rules = vec![];
            for (fam, nfproto, key, v4) in [("4", "ipv4", KeyType::Ipv4Addr, true), ("6", "ipv6", KeyType::Ipv6Addr, false)] {
                let elem = |l: u128, h: u128, c: u32| Elem { key: vec![if v4 { Val::V4(l as u32, h as u32) } else { Val::V6(l, h) }], data: Some(Val::Mark(c)), comment: None };
                let all: Vec<(u128, u128, u32)> = if v4 { m.v4.iter().map(|&(l, h, c)| (l as u128, h as u128, c)).collect() } else { m.v6.clone() };
                let top = if v4 { u32::MAX as u128 } else { u128::MAX };
                let (name, xname) = (format!("{side}{fam}_{k}"), format!("{side}{fam}x_{k}"));
                let ip = if v4 { "ip" } else { "ip6" };
                let (exact, intervals) = split_exact(&all, top);
                if !exact.is_empty() {
                    self.sets.push(Set {
                        name: xname.clone(),
                        key: vec![key],
                        data: Some(SetData::Mark),
                        interval: false,
                        counter: false,
                        comment: format!("IPv{fam} {who} single address -> class"),
                        elements: exact.iter().map(|&(a, c)| elem(a, a, c)).collect(),
                    });
                    // Single addresses by hash; the interval map only when that missed
                    // (the register still holds the sentinel, never a class value).
                    rules.push(format!("meta nfproto {nfproto} {reg} set 0x{SENTINEL:08x} {reg} set {ip} {field} map @{xname}"));
                    rules.push(format!("{reg} 0x{SENTINEL:08x} {reg} set {ip} {field} map @{name}"));
                } else {
                    rules.push(format!("{reg} set {ip} {field} map @{name}"));
                }
                self.sets.push(Set {
                    name,
                    key: vec![key],
                    data: Some(SetData::Mark),
                    interval: true,
                    counter: false,
                    comment: format!("IPv{fam} {who} address -> class"),
                    elements: intervals.iter().map(|&(l, h, c)| elem(l, h, c)).collect(),
                });
            }
            seen.push((m, rules.clone()));
            out.push((*ctx, rules));
        }
        out
    }

    fn verdict_for(&mut self, action: Action, rules: &[RuleId]) -> Verdict {
        if let Some(&r) = rules.iter().find(|&&r| self.p.rules[r].log) {
            return Verdict::Goto(format!("log_{r}"));
        }
        match (action, self.p.default) {
            (Action::Allow, _) => Verdict::Goto("allow".into()),
            (Action::Deny, DefaultVerdict::Drop) => Verdict::Drop,
            (Action::Deny, DefaultVerdict::Reject) => Verdict::Goto("refuse".into()),
        }
    }

    fn decision_sets(&mut self, d: &Decision) -> Vec<String> {
        let mut lookups = vec![];
        for layer in &d.layers {
            let name = layer.name();
            let (sk, dk) = (layer.src.expect("set"), layer.dst.expect("set"));
            let (sm, dm) = (layer.smask, layer.dmask);
            // A class field of 0 (no rule names the address) matches no element:
            // a compare skips the lookup. Zone fields are never 0.
            let mut guard = String::new();
            if sk != KeyKind::Zone {
                guard.push_str(&format!("meta mark & 0x{sm:08x} != 0 "));
            }
            if dk != KeyKind::Zone {
                guard.push_str(&format!("ct mark & 0x{dm:08x} != 0 "));
            }
            let key_expr = |tail: &str| format!("{guard}meta mark & 0x{sm:08x} . ct mark & 0x{dm:08x} . {tail}");
            let action = layer.action();
            let what = match action {
                Action::Allow => "allow",
                Action::Deny => "deny",
            };
            let kind = |k: KeyKind| match k {
                KeyKind::Fine => "host class",
                KeyKind::Coarse => "group class",
                KeyKind::Zone => "zone",
            };
            let comment = format!("{what} rules by source {} and destination {}", kind(sk), kind(dk));
            let p = self.p;
            let mk = |b: &mut Self, key: Vec<Val>, rules: &Vec<RuleId>| Elem {
                key,
                data: Some(Val::Verdict(b.verdict_for(action, rules))),
                comment: Some(comment_of(p, rules)),
            };
            if !layer.exact.is_empty() {
                let elements = layer.exact.iter().map(|((s, t, pr, po), rs)| mk(self, vec![Val::Mark(*s), Val::Mark(*t), Val::Proto(*pr), Val::Port(*po, *po)], rs)).collect();
                self.sets.push(Set { name: name.clone(), key: vec![KeyType::Mark, KeyType::Mark, KeyType::InetProto, KeyType::InetService], data: Some(SetData::Verdict), interval: false, counter: true, comment: comment.clone(), elements });
                lookups.push(format!("{} vmap @{name}", key_expr("meta l4proto . th dport")));
            }
            if !layer.ranges.is_empty() {
                let n = format!("{name}_r");
                let elements = layer.ranges.iter().map(|((s, t, pr, lo, hi), rs)| mk(self, vec![Val::Mark(*s), Val::Mark(*t), Val::Proto(*pr), Val::Port(*lo, *hi)], rs)).collect();
                self.sets.push(Set { name: n.clone(), key: vec![KeyType::Mark, KeyType::Mark, KeyType::InetProto, KeyType::InetService], data: Some(SetData::Verdict), interval: true, counter: true, comment: format!("{comment} (port ranges)"), elements });
                lookups.push(format!("{} vmap @{n}", key_expr("meta l4proto . th dport")));
            }
            if !layer.icmp4.is_empty() {
                let n = format!("{name}_icmp");
                let elements = layer.icmp4.iter().map(|((s, t, ty), rs)| mk(self, vec![Val::Mark(*s), Val::Mark(*t), Val::Icmp(*ty)], rs)).collect();
                self.sets.push(Set { name: n.clone(), key: vec![KeyType::Mark, KeyType::Mark, KeyType::IcmpType], data: Some(SetData::Verdict), interval: false, counter: true, comment: format!("{comment} (ICMP)"), elements });
                lookups.push(format!("{} vmap @{n}", key_expr("icmp type")));
            }
            if !layer.icmp6.is_empty() {
                let n = format!("{name}_icmpv6");
                let elements = layer.icmp6.iter().map(|((s, t, ty), rs)| mk(self, vec![Val::Mark(*s), Val::Mark(*t), Val::Icmp(*ty)], rs)).collect();
                self.sets.push(Set { name: n.clone(), key: vec![KeyType::Mark, KeyType::Mark, KeyType::Icmpv6Type], data: Some(SetData::Verdict), interval: false, counter: true, comment: format!("{comment} (ICMPv6)"), elements });
                lookups.push(format!("{} vmap @{n}", key_expr("icmpv6 type")));
            }
        }
        lookups
    }

    fn dispatch_map(&mut self, name: &str, comment: &str, targets: Vec<(String, String)>) -> Option<String> {
        if targets.is_empty() {
            return None;
        }
        let elements = targets.into_iter().map(|(dev, chain)| Elem { key: vec![Val::Ifname(dev)], data: Some(Val::Verdict(Verdict::Goto(chain))), comment: None }).collect();
        self.sets.push(Set { name: name.into(), key: vec![KeyType::Ifname], data: Some(SetData::Verdict), interval: false, counter: false, comment: comment.into(), elements });
        Some(name.into())
    }

    /// Anti-spoofing: the bound sources and, per family, where each is authentic;
    /// the rules that drop a new connection whose source arrived elsewhere: the
    /// zone check (exact, from the policy) and the reverse-path check (`fib`: the
    /// route back to the source must leave by the ingress interface).
    fn antispoof(&mut self) -> Vec<String> {
        let p = self.p;
        let g = antispoof::guard(p);
        let mut rules = vec![];
        for (fam, ip, v4) in [("4", "ip", true), ("6", "ip6", false)] {
            let (key, vals): (KeyType, Vec<Val>) = if v4 {
                (KeyType::Ipv4Addr, g.guarded.v4.ranges().iter().map(|&(l, h)| Val::V4(l, h)).collect())
            } else {
                (KeyType::Ipv6Addr, g.guarded.v6.ranges().iter().map(|&(l, h)| Val::V6(l, h)).collect())
            };
            if vals.is_empty() {
                continue;
            }
            let mut homes = vec![];
            for (z, a) in &g.homes {
                let ranges: Vec<Val> = if v4 { a.v4.ranges().iter().map(|&(l, h)| Val::V4(l, h)).collect() } else { a.v6.ranges().iter().map(|&(l, h)| Val::V6(l, h)).collect() };
                for &i in &p.zones[*z].ifaces {
                    for r in &ranges {
                        homes.push(Elem { key: vec![Val::Ifname(p.ifaces[i].device.to_string()), r.clone()], data: None, comment: None });
                    }
                }
            }
            let (set, home) = (format!("antispoof{fam}"), format!("antispoof_home{fam}"));
            self.sets.push(Set { name: set.clone(), key: vec![key], data: None, interval: true, counter: false, comment: format!("IPv{fam} sources bound to the interfaces of their zone"), elements: vals.into_iter().map(|v| Elem { key: vec![v], data: None, comment: None }).collect() });
            self.sets.push(Set { name: home.clone(), key: vec![KeyType::Ifname, key], data: None, interval: true, counter: false, comment: format!("IPv{fam} bound sources, by the devices they may arrive on"), elements: homes });
            rules.push(format!("{ip} saddr @{set} iifname . {ip} saddr != @{home} counter drop"));
            rules.push(format!("{ip} saddr @{set} fib saddr . iif oif missing counter drop"));
        }
        rules
    }

    fn filter(&mut self, d: &Decision, flowtable: bool) {
        let p = self.p;
        let (icmp4, icmp6) = crate::eval::essential_icmp_types();
        self.sets.push(Set { name: "essential_icmp".into(), key: vec![KeyType::IcmpType], data: None, interval: false, counter: false, comment: "ICMP errors that are always accepted".into(), elements: icmp4.iter().map(|&t| Elem { key: vec![Val::Icmp(t)], data: None, comment: None }).collect() });
        self.sets.push(Set { name: "essential_icmpv6".into(), key: vec![KeyType::Icmpv6Type], data: None, interval: false, counter: false, comment: "ICMPv6 errors and neighbour discovery, always accepted".into(), elements: icmp6.iter().map(|&t| Elem { key: vec![Val::Icmp(t)], data: None, comment: None }).collect() });
        let src = self.class_sets("src", &d.src);
        let dst = self.class_sets("dst", &d.dst);
        let lookups = self.decision_sets(d);
        let (spk, dpk) = (d.src_pack, d.dst_pack);
        let set_src = |ctx: Ctx| -> Vec<String> {
            let (_, rules) = src.iter().find(|x| x.0 == ctx).expect("context");
            let mut v = rules.clone();
            v.push(format!("meta mark set meta mark | 0x{:08x}", spk.zone(ctx)));
            v
        };
        let set_dst = |ctx: Ctx| -> Vec<String> {
            let (_, rules) = dst.iter().find(|x| x.0 == ctx).expect("context");
            let mut v = rules.clone();
            v.push(format!("ct mark set ct mark | 0x{:08x}", dpk.zone(ctx)));
            v
        };
        let zone_ctxs: Vec<Ctx> = decide::contexts(p).into_iter().filter(|&c| decide::ctx_zone(c).is_some()).collect();
        let devs_of = |ctx: Ctx| -> Vec<String> {
            let zone = decide::ctx_zone(ctx).and_then(|z| p.zones.get(z));
            zone.map(|z| z.ifaces.iter().map(|&i| p.ifaces[i].device.to_string()).collect()).unwrap_or_default()
        };

        // The decision: deny layers, then allow layers; falling off the end returns.
        self.chains.push(chain("decide", "new connections: deny maps first, then allow maps", lookups));
        self.chains.push(chain("allow", "accept a new connection, clearing the classification marks", vec!["meta mark set 0x00000000 ct mark set 0x00000000 accept".into()]));
        if p.default == DefaultVerdict::Reject {
            self.chains.push(chain("refuse", "reject: TCP reset, ICMP administratively prohibited otherwise", vec!["meta l4proto tcp reject with tcp reset".into(), "reject with icmpx admin-prohibited".into()]));
        }
        let refuse = if p.default == DefaultVerdict::Reject { "goto refuse" } else { "drop" };
        for (r, rule) in p.rules.iter().enumerate().filter(|(_, r)| r.log && r.active()) {
            let (word, then) = match rule.action {
                Action::Allow => ("allow", "goto allow"),
                Action::Deny => ("deny", refuse),
            };
            let prefix = log_prefix(word, &rule.name);
            self.chains.push(chain(&format!("log_{r}"), &format!("rule {}", clean(&rule.name)), vec![format!("{LOG_RATE} log prefix \"{prefix}\" level info"), then.into()]));
        }

        // Input: source context by ingress interface, destination is the appliance.
        let mut targets = vec![];
        for &ctx in &zone_ctxs {
            let name = format!("in_from_{}", ctx);
            let mut rules = set_src(ctx);
            rules.extend(set_dst(LOCAL));
            rules.push("goto decide".into());
            self.chains.push(chain(&name, &format!("input from {}", self.ctx_name(ctx)), rules));
            targets.extend(devs_of(ctx).into_iter().map(|d| (d, name.clone())));
        }
        let mut rules = set_src(OTHER);
        rules.extend(set_dst(LOCAL));
        rules.push("goto decide".into());
        self.chains.push(chain("in_from_other", "input from an undeclared interface", rules));
        let mut classify = vec![];
        if let Some(m) = self.dispatch_map("in_iif", "input: ingress device -> context", targets) {
            classify.push(format!("iifname vmap @{m}"));
        }
        classify.push("goto in_from_other".into());
        self.chains.push(chain("in_classify", "input: classify a new connection", classify));

        // Forward: one lookup on the (ingress, egress) device pair when both are
        // declared; an undeclared device on either side takes the two-step path
        // (source context by ingress, then destination context by egress).
        let mut dst_targets = vec![];
        for &ctx in &zone_ctxs {
            let name = format!("fwd_to_{ctx}");
            let mut rules = set_dst(ctx);
            rules.push("goto decide".into());
            self.chains.push(chain(&name, &format!("forward to {}", self.ctx_name(ctx)), rules));
            dst_targets.extend(devs_of(ctx).into_iter().map(|d| (d, name.clone())));
        }
        let mut rules = set_dst(OTHER);
        rules.push("goto decide".into());
        self.chains.push(chain("fwd_to_other", "forward to an undeclared interface", rules));
        let oif_map = self.dispatch_map("fwd_oif", "forward: egress device -> context", dst_targets);
        let mut pair_targets = vec![];
        for &from in &zone_ctxs {
            for &to in &zone_ctxs {
                let name = format!("fwd_{from}_{to}");
                let mut rules = set_src(from);
                rules.extend(set_dst(to));
                rules.push("goto decide".into());
                self.chains.push(chain(&name, &format!("forward from {} to {}", self.ctx_name(from), self.ctx_name(to)), rules));
                for i in devs_of(from) {
                    pair_targets.extend(devs_of(to).into_iter().map(|o| (i.clone(), o, name.clone())));
                }
            }
        }
        let mut src_targets = vec![];
        for ctx in zone_ctxs.iter().copied().chain([OTHER]) {
            let name = if ctx == OTHER { "fwd_from_other".to_string() } else { format!("fwd_from_{ctx}") };
            let mut rules = set_src(ctx);
            // From a declared device the egress is undeclared (else the pair map hit).
            if let (OTHER, Some(m)) = (ctx, &oif_map) {
                rules.push(format!("oifname vmap @{m}"));
            }
            rules.push("goto fwd_to_other".into());
            self.chains.push(chain(&name, &format!("forward from {}", self.ctx_name(ctx)), rules));
            if ctx != OTHER {
                src_targets.extend(devs_of(ctx).into_iter().map(|d| (d, name.clone())));
            }
        }
        let mut classify = vec![];
        if !pair_targets.is_empty() {
            let elements = pair_targets.into_iter().map(|(i, o, chain)| Elem { key: vec![Val::Ifname(i), Val::Ifname(o)], data: Some(Val::Verdict(Verdict::Goto(chain))), comment: None }).collect();
            self.sets.push(Set { name: "fwd_pair".into(), key: vec![KeyType::Ifname, KeyType::Ifname], data: Some(SetData::Verdict), interval: false, counter: false, comment: "forward: (ingress, egress) device -> contexts".into(), elements });
            classify.push("iifname . oifname vmap @fwd_pair".into());
        }
        if let Some(m) = self.dispatch_map("fwd_iif", "forward: ingress device -> context", src_targets) {
            classify.push(format!("iifname vmap @{m}"));
        }
        classify.push("goto fwd_from_other".into());
        self.chains.push(chain("fwd_classify", "forward: classify a new connection", classify));

        // Output: only when some deny rule can match the appliance's own traffic.
        if d.output_relevant {
            let mut out_targets = vec![];
            for &ctx in &zone_ctxs {
                let name = format!("out_to_{ctx}");
                let mut rules = set_dst(ctx);
                rules.push("goto decide".into());
                self.chains.push(chain(&name, &format!("output to {}", self.ctx_name(ctx)), rules));
                out_targets.extend(devs_of(ctx).into_iter().map(|d| (d, name.clone())));
            }
            let mut rules = set_dst(OTHER);
            rules.push("goto decide".into());
            self.chains.push(chain("out_to_other", "output to an undeclared interface", rules));
            let mut classify = set_src(LOCAL);
            if let Some(m) = self.dispatch_map("out_oif", "output: egress device -> context", out_targets) {
                classify.push(format!("oifname vmap @{m}"));
            }
            classify.push("goto out_to_other".into());
            self.chains.push(chain("out_classify", "output: classify a new connection", classify));
        }

        // Base chains: policy accept with an explicit final verdict (no fail-open
        // window while a transaction replaces the table).
        let head = |lo: Option<&str>| -> Vec<String> {
            let mut v = vec![];
            if let Some(lo) = lo {
                v.push(format!("{lo} \"lo\" accept"));
            }
            v.push("ct state established,related accept".into());
            v.push("meta l4proto icmp icmp type @essential_icmp accept".into());
            v.push("meta l4proto ipv6-icmp icmpv6 type @essential_icmpv6 accept".into());
            v.push("ct state invalid drop".into());
            v
        };
        let default_tail = |hook: &str| -> Vec<String> {
            let mut v = vec![];
            let word = if p.default == DefaultVerdict::Reject { "reject" } else { "drop" };
            if p.log_default {
                v.push(format!("{LOG_RATE} log prefix \"fwctl {hook} default {word}: \" level info"));
            }
            v.push(format!("counter {refuse}"));
            v
        };
        let spoof = self.antispoof();
        let mut input = head(Some("iifname"));
        input.extend(spoof.iter().cloned());
        input.push("jump in_classify".into());
        input.extend(default_tail("input"));
        let mut forward = vec![];
        if flowtable {
            forward.push("ct state established meta l4proto { tcp, udp } flow add @ft".into());
        }
        forward.extend(head(None));
        forward.extend(spoof);
        forward.push("jump fwd_classify".into());
        forward.extend(default_tail("forward"));
        let mut output = head(Some("oifname"));
        if d.output_relevant {
            output.push("jump out_classify".into());
        }
        output.push("meta mark set 0x00000000 ct mark set 0x00000000 counter accept".into());
        let base = |hook: &str| Some(BaseChain { kind: "filter".into(), hook: hook.into(), priority: "filter".into() });
        self.chains.insert(0, Chain { name: "input".into(), base: base("input"), comment: "traffic to the appliance".into(), rules: input });
        self.chains.insert(1, Chain { name: "forward".into(), base: base("forward"), comment: "traffic crossing the appliance".into(), rules: forward });
        self.chains.insert(2, Chain { name: "output".into(), base: base("output"), comment: "traffic from the appliance".into(), rules: output });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prefix_cuts_a_long_multibyte_rule_name_on_a_character_boundary() {
        // Every alignment of one-, two-, three- and four-byte characters around the cut.
        for c in ['a', 'ü', '€', '😀'] {
            for pad in 0..4 {
                let name = format!("{}{}", "x".repeat(pad), c.to_string().repeat(200));
                for word in ["allow", "deny"] {
                    let p = log_prefix(word, &name);
                    assert!(p.len() <= LOG_PREFIX_MAX, "{} bytes: {p}", p.len());
                    assert!(p.len() > LOG_PREFIX_MAX - 4, "cut no more than one character: {p}");
                    assert!(p.starts_with(&format!("fwctl {word} x")) || pad == 0);
                    assert!(p.ends_with(": "));
                }
            }
        }
        assert_eq!(log_prefix("deny", "short-name"), "fwctl deny short-name: ");
    }

    fn class_at(v: &[(u128, u128, u32)], x: u128) -> u32 {
        v.iter().find(|r| r.0 <= x && x <= r.1).map(|r| r.2).expect("covering")
    }

    /// Random covering classifications of a small space: singles first, then the
    /// intervals, give every address its original class.
    #[test]
    fn split_exact_keeps_every_address_class() {
        let mut rng = crate::gen::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let top = 63u128;
            let mut all = vec![];
            let mut lo = 0u128;
            while lo <= top {
                let len = if rng.chance(60) { 1 } else { 1 + rng.below(6) as u128 };
                let hi = (lo + len - 1).min(top);
                all.push((lo, hi, rng.below(4) as u32));
                lo = hi + 1;
            }
            let (exact, ranges) = split_exact(&all, top);
            let singles = all.iter().filter(|r| r.0 == r.1).count();
            if singles < EXACT_MIN {
                assert!(exact.is_empty() && ranges == all);
                continue;
            }
            assert_eq!(exact.len(), singles);
            assert_eq!(ranges.first().unwrap().0, 0);
            assert_eq!(ranges.last().unwrap().1, top);
            assert!(ranges.windows(2).all(|w| w[0].1 + 1 == w[1].0 && w[0].2 != w[1].2), "disjoint, adjacent, merged: {ranges:?}");
            for x in 0..=top {
                let got = exact.iter().find(|e| e.0 == x).map(|e| e.1).unwrap_or_else(|| class_at(&ranges, x));
                assert_eq!(got, class_at(&all, x), "address {x} in {all:?}");
            }
        }
    }
}
