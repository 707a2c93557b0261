//! The linear baseline shared by the datapath and apply benchmarks: a policy
//! rendered the way a per-rule generator would, one nft rule per policy rule and
//! address family (named sets for multi-element matches, deny rules first).
//! A baseline for comparison, not product code.

use fwctl::model::{Action, Policy, Side};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};


#[derive(Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

/// Named sets, shared between rules that use the same elements (as a generator
/// that names one set per policy group would). Keyed by (type, elements).
#[derive(Default)]
struct Sets {
    by_content: HashMap<(String, Vec<String>), String>,
    defs: String,
    count: usize,
    elements: usize,
}

impl Sets {
    fn named(&mut self, prefix: &str, ty: &str, interval: bool, elems: Vec<String>) -> String {
        let key = (ty.to_string(), elems);
        if let Some(n) = self.by_content.get(&key) {
            return format!("@{n}");
        }
        let name = format!("{prefix}{}", self.count);
        self.count += 1;
        self.elements += key.1.len();
        let flags = if interval { " flags interval;" } else { "" };
        let _ = writeln!(
            self.defs,
            "  set {name} {{ type {ty};{flags} elements = {{ {} }} }}",
            key.1.join(", ")
        );
        self.by_content.insert(key, name.clone());
        format!("@{name}")
    }
}

fn v4_elem(lo: u32, hi: u32) -> (String, bool) {
    let (a, b) = (Ipv4Addr::from(lo), Ipv4Addr::from(hi));
    if lo == hi {
        return (a.to_string(), false);
    }
    let size = u64::from(hi - lo) + 1;
    if size.is_power_of_two() && u64::from(lo).is_multiple_of(size) {
        return (format!("{a}/{}", 32 - size.trailing_zeros()), true);
    }
    (format!("{a}-{b}"), true)
}

fn v6_elem(lo: u128, hi: u128) -> (String, bool) {
    let (a, b) = (Ipv6Addr::from(lo), Ipv6Addr::from(hi));
    if lo == hi {
        return (a.to_string(), false);
    }
    let span = hi - lo;
    if span == u128::MAX {
        return ("::/0".into(), true);
    }
    let size = span + 1;
    if size.is_power_of_two() && lo.is_multiple_of(size) {
        return (format!("{a}/{}", 128 - size.trailing_zeros()), true);
    }
    (format!("{a}-{b}"), true)
}

/// `ip saddr X` / `ip6 daddr @set` for one family's addresses; None if empty.
fn addr_match(
    sets: &mut Sets,
    set: &fwctl::model::addr::AddrSet,
    fam: Fam,
    dir: &str,
) -> Option<String> {
    let (elems, interval): (Vec<String>, bool) = match fam {
        Fam::V4 => {
            let v: Vec<(String, bool)> = set
                .v4
                .ranges()
                .iter()
                .map(|&(l, h)| v4_elem(l, h))
                .collect();
            let i = v.iter().any(|e| e.1);
            (v.into_iter().map(|e| e.0).collect(), i)
        }
        Fam::V6 => {
            let v: Vec<(String, bool)> = set
                .v6
                .ranges()
                .iter()
                .map(|&(l, h)| v6_elem(l, h))
                .collect();
            let i = v.iter().any(|e| e.1);
            (v.into_iter().map(|e| e.0).collect(), i)
        }
    };
    let (kw, ty, prefix) = match fam {
        Fam::V4 => ("ip", "ipv4_addr", "a4_"),
        Fam::V6 => ("ip6", "ipv6_addr", "a6_"),
    };
    match elems.len() {
        0 => None,
        1 if elems[0] == "0.0.0.0/0" || elems[0] == "::/0" => Some(format!(
            "meta nfproto {}",
            if fam == Fam::V4 { "ipv4" } else { "ipv6" }
        )),
        1 => Some(format!("{kw} {dir} {}", elems[0])),
        _ => Some(format!(
            "{kw} {dir} {}",
            sets.named(prefix, ty, interval, elems)
        )),
    }
}

fn ifname_match(sets: &mut Sets, devs: &[String], dir: &str) -> String {
    let kw = if dir == "saddr" { "iifname" } else { "oifname" };
    if devs.len() == 1 {
        format!("{kw} \"{}\"", devs[0])
    } else {
        let elems = devs.iter().map(|d| format!("\"{d}\"")).collect();
        format!("{kw} {}", sets.named("if_", "ifname", false, elems))
    }
}

/// The ways one side of a rule can match in `fam` (usually one); "" is "anything".
fn side_alternatives(p: &Policy, sets: &mut Sets, side: &Side, fam: Fam, dir: &str) -> Vec<String> {
    if side.any {
        return vec![String::new()];
    }
    let mut alts = vec![];
    if let Some(m) = addr_match(sets, &side.addrs, fam, dir) {
        alts.push(m);
    }
    // Zones matched by interface alone share one alternative; zones with networks
    // need their interfaces and their networks.
    let mut bare = vec![];
    for &z in &side.zones {
        let devs: Vec<String> = p.zones[z]
            .ifaces
            .iter()
            .map(|&i| p.ifaces[i].device.as_str().to_string())
            .collect();
        if devs.is_empty() {
            continue;
        }
        match &p.zones[z].networks {
            None => bare.extend(devs),
            Some(nets) => {
                if let Some(a) = addr_match(sets, nets, fam, dir) {
                    alts.push(format!("{} {a}", ifname_match(sets, &devs, dir)));
                }
            }
        }
    }
    if !bare.is_empty() {
        bare.sort();
        bare.dedup();
        alts.push(ifname_match(sets, &bare, dir));
    }
    // `self` is the appliance: not on the forward path.
    alts
}

/// The ways a service set matches in `fam` (ports in one expression, ICMP types in another).
fn service_alternatives(sets: &mut Sets, s: &fwctl::model::ServiceSet, fam: Fam) -> Vec<String> {
    let mut alts = vec![];
    let port = |(l, h): (u16, u16)| {
        if l == h {
            l.to_string()
        } else {
            format!("{l}-{h}")
        }
    };
    let mut entries: Vec<(&str, (u16, u16))> = vec![];
    entries.extend(s.tcp.ranges().iter().map(|&r| ("tcp", r)));
    entries.extend(s.udp.ranges().iter().map(|&r| ("udp", r)));
    if !entries.is_empty() {
        let one_proto = entries.iter().all(|e| e.0 == entries[0].0);
        let interval = entries.iter().any(|e| e.1 .0 != e.1 .1);
        if one_proto && entries.len() == 1 {
            alts.push(format!("{} dport {}", entries[0].0, port(entries[0].1)));
        } else if one_proto {
            let elems = entries.iter().map(|e| port(e.1)).collect();
            let set = sets.named("p_", "inet_service", interval, elems);
            alts.push(format!("{} dport {set}", entries[0].0));
        } else {
            let elems = entries
                .iter()
                .map(|e| format!("{} . {}", e.0, port(e.1)))
                .collect();
            let set = sets.named("s_", "inet_proto . inet_service", interval, elems);
            alts.push(format!("meta l4proto . th dport {set}"));
        }
    }
    let (icmp, kw, ty) = match fam {
        Fam::V4 => (&s.icmp, "icmp", "icmp_type"),
        Fam::V6 => (&s.icmpv6, "icmpv6", "icmpv6_type"),
    };
    let types: Vec<String> = icmp
        .ranges()
        .iter()
        .flat_map(|&(l, h)| (l..=h).map(|t| t.to_string()))
        .collect();
    match types.len() {
        0 => {}
        1 => alts.push(format!("{kw} type {}", types[0])),
        _ => {
            let set = sets.named("t_", ty, false, types);
            alts.push(format!("{kw} type {set}"));
        }
    }
    alts
}

pub struct Linear {
    pub script: String,
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
}

/// Renders `p` the way a per-rule generator would: established first, deny rules,
/// allow rules (policy order, so the appended bench rule is last), final drop.
pub fn linear_script(p: &Policy) -> Linear {
    let mut sets = Sets::default();
    let mut body: Vec<String> = vec![
        "ct state established,related accept".into(),
        "meta l4proto icmp icmp type { destination-unreachable, time-exceeded, parameter-problem } accept".into(),
        "meta l4proto ipv6-icmp icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept".into(),
    ];
    for action in [Action::Deny, Action::Allow] {
        for r in p.rules.iter().filter(|r| r.active() && r.action == action) {
            let verdict = if action == Action::Deny {
                "drop"
            } else {
                "accept"
            };
            let mut seen: Vec<String> = vec![];
            for fam in [Fam::V4, Fam::V6] {
                let from = side_alternatives(p, &mut sets, &r.from, fam, "saddr");
                let to = side_alternatives(p, &mut sets, &r.to, fam, "daddr");
                let svc = service_alternatives(&mut sets, &r.services, fam);
                for f in &from {
                    for t in &to {
                        for s in &svc {
                            let parts: Vec<&str> = [f.as_str(), t.as_str(), s.as_str()]
                                .into_iter()
                                .filter(|x| !x.is_empty())
                                .collect();
                            let line = format!(
                                "{} {verdict} comment \"{}\"",
                                parts.join(" "),
                                fwctl::compile::clean(&r.name)
                            );
                            // A rule with no family-specific match renders the same in both.
                            if !seen.contains(&line) {
                                seen.push(line);
                            }
                        }
                    }
                }
            }
            body.extend(seen);
        }
    }
    body.push("drop".into());
    let mut script = String::with_capacity(body.len() * 100 + sets.defs.len() + 256);
    script.push_str("table inet linear {\n");
    script.push_str(&sets.defs);
    script.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    for l in &body {
        let _ = writeln!(script, "    {l}");
    }
    script.push_str("  }\n}\n");
    Linear {
        script,
        rules: body.len(),
        sets: sets.count,
        elements: sets.elements,
    }
}
