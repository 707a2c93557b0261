//! Raw policy → [`Policy`]: names resolved, values validated, errors collected.
//!
//! Input: a [`RawPolicy`] and today's date. Output: a [`Policy`] when there is no
//! error, and every diagnostic found (independent errors are all reported).
//! Must not: do I/O, read the clock, or stop at the first error.

use super::addr::{looks_like_address, parse_addr, parse_net, AddrSet, Net, NetError};
use super::services::{builtin, Proto, ServiceSet, BUILTIN_NAMES};
use super::*;
use crate::diag::{suggest, Diagnostic, Span};
use crate::policy::raw::*;
use std::collections::{BTreeMap, HashMap};

const RESERVED: [&str; 2] = ["self", "any"];

/// WireGuard's port when a VPN gives no `listen_port`.
const DEFAULT_LISTEN_PORT: u16 = 51820;

/// One routed allowed IP of a peer, for the checks across tunnels.
struct RoutedPeer {
    vpn: usize,
    peer: String,
    vpn_zone: Option<ZoneId>,
    addrs: AddrSet,
    span: Span,
}

pub fn resolve(raw: &RawPolicy, today: Date, diags: &mut Vec<Diagnostic>) -> Option<Policy> {
    let before = diags.iter().filter(|d| d.is_error()).count();
    let mut r = Resolver { raw, diags, zones: vec![], zone_ix: HashMap::new(), names: BTreeMap::new(), services: HashMap::new(), ifaces: vec![], iface_ix: HashMap::new(), iface_spans: HashMap::new(), device_spans: HashMap::new(), group_memo: HashMap::new() };
    r.version();
    let fw = r.firewall_basics();
    r.zones();
    r.interfaces();
    r.services();
    r.hosts();
    r.groups_declare();
    let vpns = r.vpns();
    r.groups_resolve();
    let rules = r.rules(today);
    let (dnat, snat) = r.nat();
    let claimed = r.claimed(&rules, &dnat);
    let mut policy = Policy {
        name: fw.0,
        default: fw.1,
        log_default: fw.2,
        offload: fw.3,
        management: vec![],
        ifaces: r.ifaces.clone(),
        zones: r.zones.clone(),
        names: r.names.clone(),
        rules,
        dnat,
        snat,
        vpns,
        tests: vec![],
        claimed,
    };
    let ep = EndpointCtx { policy: &policy, claimed: &policy.claimed };
    let management = r.management(&ep);
    let tests = r.tests(&ep);
    policy.management = management;
    policy.tests = tests;
    let after = r.diags.iter().filter(|d| d.is_error()).count();
    (after == before).then_some(policy)
}

struct Resolver<'a> {
    raw: &'a RawPolicy,
    diags: &'a mut Vec<Diagnostic>,
    zones: Vec<Zone>,
    zone_ix: HashMap<String, ZoneId>,
    /// The address namespace: zones, hosts, groups, VPN peers.
    names: BTreeMap<String, (Named, Span)>,
    services: HashMap<String, (ServiceSet, Span)>,
    ifaces: Vec<Iface>,
    iface_ix: HashMap<String, IfaceId>,
    /// Where each interface key and device name was first written.
    iface_spans: HashMap<String, Span>,
    device_spans: HashMap<String, Span>,
    group_memo: HashMap<String, Option<Side>>,
}

fn net_error(what: &str, s: &Sp<String>, e: NetError) -> Diagnostic {
    match e {
        NetError::Syntax => Diagnostic::error("invalid-address", format!("`{}` is not a valid {what}", s.v)).at(s.span, "not an address or CIDR"),
        NetError::PrefixTooLong(max) => Diagnostic::error("invalid-address", format!("prefix length of `{}` exceeds {max}", s.v)).at(s.span, "prefix too long"),
        NetError::HostBits(fixed) => Diagnostic::error("invalid-address", format!("`{}` has host bits set", s.v))
            .at(s.span, format!("did you mean `{fixed}`?")),
        NetError::Mapped(v4) => Diagnostic::error("invalid-address", format!("`{}` is an IPv4-mapped IPv6 address", s.v))
            .at(s.span, format!("write the IPv4 form `{v4}`"))
            .note("IPv4 packets never carry a mapped address, so it would never match"),
    }
}

/// Refuse a name that reads as an address or CIDR: it would shadow the address it
/// spells (`to = "198.51.100.7"` would mean the named thing, not that address).
fn address_like_name(what: &str, name: &Sp<String>) -> Option<Diagnostic> {
    looks_like_address(&name.v).then(|| {
        Diagnostic::error("invalid-name", format!("{what} `{}` reads as an address", name.v))
            .at(name.span, "a name may not be an address or CIDR")
            .note("a reference that parses as an address means that address; choose a name with a letter in it")
    })
}

impl Resolver<'_> {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn version(&mut self) {
        for v in &self.raw.version {
            if v.v != 1 {
                self.diags.push(Diagnostic::error("version", format!("unsupported policy version {}", v.v)).at(v.span, "only version 1 is supported"));
            }
        }
    }

    fn firewall_basics(&mut self) -> (String, DefaultVerdict, bool, Offload) {
        let fw = &self.raw.firewall;
        let name = fw.name.as_ref().map(|n| n.v.clone()).unwrap_or_else(|| "firewall".into());
        if let Some(n) = &fw.name {
            if n.v.is_empty() || n.v.chars().any(|c| !is_printable(c) || crate::text::is_terminal_dangerous(c)) {
                self.diags.push(Diagnostic::error("invalid-value", "firewall name must be non-empty printable text").at(n.span, "here"));
            }
        }
        let default = match fw.default.as_ref().map(|d| (d.v.as_str(), d.span)) {
            None | Some(("drop", _)) => DefaultVerdict::Drop,
            Some(("reject", _)) => DefaultVerdict::Reject,
            Some((other, span)) => {
                self.diags.push(Diagnostic::error("invalid-value", format!("`firewall.default` must be \"drop\" or \"reject\", not \"{other}\"")).at(span, "expected \"drop\" or \"reject\""));
                DefaultVerdict::Drop
            }
        };
        let offload = match fw.flowtable.as_ref().map(|d| (d.v.as_str(), d.span)) {
            None | Some(("auto", _)) => Offload::Auto,
            Some(("off", _)) => Offload::Off,
            Some(("required", _)) => Offload::Required,
            Some((other, span)) => {
                self.diags.push(Diagnostic::error("invalid-value", format!("`flowtable` must be \"auto\", \"off\" or \"required\", not \"{other}\"")).at(span, "expected \"auto\", \"off\" or \"required\""));
                Offload::Auto
            }
        };
        (name, default, fw.log_default.as_ref().is_some_and(|b| b.v), offload)
    }

    /// Register `name` in the address namespace, reporting clashes with both places.
    fn declare(&mut self, name: &Sp<String>, what: Named) -> bool {
        if RESERVED.contains(&name.v.as_str()) {
            self.err(Diagnostic::error("reserved-name", format!("`{}` is a reserved name", name.v)).at(name.span, "reserved: choose another name"));
            return false;
        }
        if !valid_name(&name.v) {
            self.err(Diagnostic::error("invalid-name", format!("`{}` is not a valid name", name.v)).at(name.span, "names use letters, digits, '-', '_' and '.'"));
            return false;
        }
        if let Some(d) = address_like_name("name", name) {
            self.err(d);
            return false;
        }
        if let Some((_, first)) = self.names.get(&name.v) {
            let first = *first;
            self.err(Diagnostic::error("duplicate", format!("`{}` is defined twice", name.v)).at(name.span, "defined again here").also(first, "first defined here"));
            return false;
        }
        self.names.insert(name.v.clone(), (what, name.span));
        true
    }

    fn zones(&mut self) {
        for z in &self.raw.zones {
            let mut nets = None;
            if let Some(list) = &z.networks {
                let mut set = AddrSet::empty();
                for n in list {
                    match parse_net(&n.v) {
                        Ok(net) => set.add_net(&net),
                        Err(e) => self.diags.push(net_error("network", n, e)),
                    }
                }
                nets = Some(set);
            }
            let id = self.zones.len();
            if self.declare(&z.name, Named::Zone(id)) {
                self.zones.push(Zone { name: z.name.v.clone(), ifaces: vec![], networks: nets, antispoof: z.antispoof.as_ref().is_none_or(|b| b.v), span: z.name.span });
                self.zone_ix.insert(z.name.v.clone(), id);
            }
        }
    }

    fn zone_ref(&mut self, z: &Sp<String>, owner: &str) -> Option<ZoneId> {
        if let Some(&id) = self.zone_ix.get(&z.v) {
            return Some(id);
        }
        let d = Diagnostic::error("undefined", format!("{owner}: zone `{}` is not declared", z.v));
        let d = match suggest(&z.v, self.zone_ix.keys().map(|s| s.as_str())) {
            Some(s) => d.at(z.span, format!("did you mean `{s}`?")),
            None => d.at(z.span, "undeclared zone").note(format!("declare it with [zones.{}]", z.v)),
        };
        self.err(d);
        None
    }

    fn add_iface(&mut self, key: &str, dev: &Sp<String>, zone: ZoneId, vpn: bool) -> Option<IfaceId> {
        let device = match IfName::new(&dev.v) {
            Ok(d) => d,
            Err(e) => {
                self.err(Diagnostic::error("invalid-device", format!("invalid device name `{}`: {e}", dev.v)).at(dev.span, "invalid device name"));
                return None;
            }
        };
        if let Some(other) = self.ifaces.iter().find(|i| i.device == device) {
            let msg = format!("device `{}` is used by both `{}` and `{key}`", dev.v, other.key);
            let mut d = Diagnostic::error("duplicate", msg).at(dev.span, "used again here");
            if let Some(first) = self.device_spans.get(&dev.v) {
                d = d.also(*first, "first used here");
            }
            self.err(d);
            return None;
        }
        self.device_spans.insert(dev.v.clone(), dev.span);
        let id = self.ifaces.len();
        self.ifaces.push(Iface { key: key.to_string(), device, zone, vpn });
        self.zones[zone].ifaces.push(id);
        Some(id)
    }

    fn interfaces(&mut self) {
        for i in &self.raw.interfaces {
            if let Some(first) = self.iface_spans.get(&i.name.v) {
                let first = *first;
                self.err(Diagnostic::error("duplicate", format!("interface `{}` is defined twice", i.name.v)).at(i.name.span, "defined again here").also(first, "first defined here"));
                continue;
            }
            self.iface_spans.insert(i.name.v.clone(), i.name.span);
            // Reported, but the interface is still read (its device, its zone).
            if let Some(d) = other_name_error("interface", &i.name) {
                self.err(d);
            }
            let owner = format!("interface `{}`", i.name.v);
            let Some(dev) = &i.device else {
                self.err(Diagnostic::error("missing-key", format!("{owner} has no `device`")).at(i.name.span, "add device = \"eth0\" (the kernel name)"));
                continue;
            };
            let Some(z) = &i.zone else {
                self.err(Diagnostic::error("missing-key", format!("{owner} has no `zone`")).at(i.name.span, "add zone = \"...\""));
                continue;
            };
            let Some(zone) = self.zone_ref(z, &owner) else { continue };
            if let Some(id) = self.add_iface(&i.name.v, dev, zone, false) {
                self.iface_ix.insert(i.name.v.clone(), id);
            }
        }
    }

    fn services(&mut self) {
        for s in &self.raw.services {
            if builtin(&s.name.v).is_some() {
                self.err(Diagnostic::error("builtin-redefined", format!("`{}` is a built-in service and cannot be redefined", s.name.v)).at(s.name.span, "choose another name"));
                continue;
            }
            // Reported, but still defined: rules using it get no second error.
            if let Some(d) = other_name_error("service", &s.name) {
                self.err(d);
            }
            if let Some((_, first)) = self.services.get(&s.name.v) {
                let first = *first;
                self.err(Diagnostic::error("duplicate", format!("service `{}` is defined twice", s.name.v)).at(s.name.span, "defined again here").also(first, "first defined here"));
                continue;
            }
            let mut set = ServiceSet::default();
            let mut ok = true;
            for (ports, slot) in [(&s.tcp, 0), (&s.udp, 1)] {
                let mut rs = vec![];
                for p in ports {
                    match parse_port(&p.v) {
                        Ok(r) => rs.push(r),
                        Err(msg) => {
                            ok = false;
                            self.err(Diagnostic::error("invalid-port", msg).at(p.span, "ports are 1..=65535, as N or \"N-M\""));
                        }
                    }
                }
                let r = addr::Ranges::from_ranges(rs);
                if slot == 0 { set.tcp = r } else { set.udp = r }
            }
            if ok && set.is_empty() {
                self.err(Diagnostic::error("empty-service", format!("service `{}` lists no ports", s.name.v)).at(s.name.span, "add tcp = [...] and/or udp = [...]"));
            }
            self.services.insert(s.name.v.clone(), (set, s.name.span));
        }
    }

    fn hosts(&mut self) {
        for h in &self.raw.hosts {
            let mut set = AddrSet::empty();
            if h.addrs.is_empty() {
                self.err(Diagnostic::error("invalid-address", format!("host `{}` has no address", h.name.v)).at(h.name.span, "add an address"));
            }
            for a in &h.addrs {
                match parse_addr(&a.v) {
                    Ok(ip) => set.add_net(&Net::addr(ip)),
                    Err(NetError::Mapped(v4)) => self.err(net_error("address", a, NetError::Mapped(v4))),
                    Err(_) => {
                        let d = match parse_net(&a.v) {
                            Ok(_) => Diagnostic::error("invalid-address", format!("host `{}` must be an address, not the network `{}`", h.name.v, a.v))
                                .at(a.span, "a network: put it in [groups] or use it as a CIDR"),
                            Err(e) => net_error("address", a, e),
                        };
                        self.err(d);
                    }
                }
            }
            self.declare(&h.name, Named::Host(set));
        }
    }

    fn groups_declare(&mut self) {
        for g in &self.raw.groups {
            let members = g.members.iter().map(|m| m.v.clone()).collect();
            self.declare(&g.name, Named::Group(Side::default(), members));
        }
    }

    fn groups_resolve(&mut self) {
        for g in &self.raw.groups {
            if let Some(side) = self.group(&g.name.v) {
                if let Some(entry) = self.names.get_mut(&g.name.v) {
                    if let Named::Group(s, _) = &mut entry.0 {
                        *s = side;
                    }
                }
            }
        }
    }

    /// A group's addresses (memoised); `None` when the group has an error.
    fn group(&mut self, name: &str) -> Option<Side> {
        if !self.group_memo.contains_key(name) {
            self.resolve_group(name);
        }
        self.group_memo.get(name).cloned().flatten()
    }

    /// Resolve `root` and every group it contains, innermost first, with an explicit
    /// stack: a chain of 10 000 nested groups must not overflow the call stack. A
    /// group met again while it is being resolved is a cycle (`group-cycle`), named
    /// from the group where it starts.
    fn resolve_group(&mut self, root: &str) {
        let raw = self.raw;
        let find = |name: &str| raw.groups.iter().find(|g| g.name.v == name);
        let Some(first) = find(root) else { return };
        // (group, index of the next member to visit); `open` holds the same names.
        let mut stack: Vec<(&RawGroup, usize)> = vec![(first, 0)];
        let mut open: HashMap<&str, usize> = HashMap::from([(first.name.v.as_str(), 0)]);
        while let Some(top) = stack.last_mut() {
            let g = top.0;
            if let Some(m) = g.members.get(top.1) {
                top.1 += 1;
                let is_group = matches!(self.names.get(&m.v), Some((Named::Group(..), _)));
                if !is_group || self.group_memo.contains_key(&m.v) {
                    continue;
                }
                if let Some(&pos) = open.get(m.v.as_str()) {
                    let names: Vec<&str> = stack[pos..].iter().map(|(g, _)| g.name.v.as_str()).chain([m.v.as_str()]).collect();
                    let start = stack[pos].0;
                    self.err(
                        Diagnostic::error("group-cycle", format!("group `{}` contains itself: {}", start.name.v, chain_text(&names)))
                            .at(start.name.span, "cycle starts here"),
                    );
                    self.group_memo.insert(m.v.clone(), None);
                    continue;
                }
                if let Some(inner) = find(&m.v) {
                    open.insert(inner.name.v.as_str(), stack.len());
                    stack.push((inner, 0));
                }
                continue;
            }
            // Every member group is resolved (or known bad): merge the members.
            let mut side = Side::default();
            let mut ok = !matches!(self.group_memo.get(&g.name.v), Some(None));
            for m in &g.members {
                if m.v == "any" || m.v == "self" {
                    self.err(Diagnostic::error("wrong-kind", format!("`{}` cannot be a group member", m.v)).at(m.span, "use it directly in the rule"));
                    ok = false;
                    continue;
                }
                match self.reference(m) {
                    Some(s) => merge(&mut side, &s),
                    None => ok = false,
                }
            }
            self.group_memo.insert(g.name.v.clone(), ok.then_some(side));
            open.remove(g.name.v.as_str());
            stack.pop();
        }
    }

    /// One reference in a `from`/`to`/group: a name, `any`, `self`, an address or CIDR.
    fn reference(&mut self, s: &Sp<String>) -> Option<Side> {
        match s.v.as_str() {
            "any" => return Some(Side { any: true, ..Default::default() }),
            "self" => return Some(Side { self_: true, ..Default::default() }),
            _ => {}
        }
        if let Some((named, _)) = self.names.get(&s.v) {
            return match named.clone() {
                Named::Zone(z) => {
                    let zone = &self.zones[z];
                    if zone.ifaces.is_empty() {
                        let n = zone.networks.clone().unwrap_or_default();
                        Some(Side { addrs: n.clone(), coarse: n, ..Default::default() })
                    } else {
                        Some(Side { zones: vec![z], ..Default::default() })
                    }
                }
                Named::Host(a) => Some(Side { addrs: a.clone(), fine: a, ..Default::default() }),
                Named::Peer(a, zone) => Some(Side { scoped: zone.map(|z| vec![(z, a)]).unwrap_or_default(), ..Default::default() }),
                // A group is a unit for classification: all its addresses are coarse.
                Named::Group(..) => self.group(&s.v.clone()).map(|mut g| {
                    g.coarse = g.addrs.clone();
                    g.fine = AddrSet::empty();
                    g
                }),
            };
        }
        let looks_like_addr = s.v.contains(':') || s.v.chars().next().is_some_and(|c| c.is_ascii_digit());
        if looks_like_addr {
            return match parse_net(&s.v) {
                Ok(n) => {
                    let mut a = AddrSet::empty();
                    a.add_net(&n);
                    Some(Side { addrs: a.clone(), fine: a, ..Default::default() })
                }
                Err(e) => {
                    self.err(net_error("address or CIDR", s, e));
                    None
                }
            };
        }
        let d = if self.services.contains_key(&s.v) || builtin(&s.v).is_some() {
            Diagnostic::error("wrong-kind", format!("`{}` is a service, not a zone, group, host or address", s.v)).at(s.span, "a service here")
        } else if self.iface_ix.contains_key(&s.v) {
            Diagnostic::error("wrong-kind", format!("`{}` is an interface; rules refer to its zone", s.v)).at(s.span, "an interface here")
        } else {
            let names = self.names.keys().map(|k| k.as_str()).chain(RESERVED);
            match suggest(&s.v, names) {
                Some(c) => Diagnostic::error("undefined", format!("`{}` is not defined", s.v)).at(s.span, format!("did you mean `{c}`?")),
                None => Diagnostic::error("undefined", format!("`{}` is not defined", s.v)).at(s.span, "not a zone, group, host, peer, address or CIDR"),
            }
        };
        self.err(d);
        None
    }

    fn side(&mut self, refs: &Refs) -> Option<Side> {
        if refs.v.is_empty() {
            self.err(Diagnostic::error("empty-list", "an empty list matches nothing").at(refs.span, "name at least one zone, group, host or address"));
            return None;
        }
        let mut side = Side::default();
        let mut ok = true;
        for r in &refs.v {
            match self.reference(r) {
                Some(s) => merge(&mut side, &s),
                None => ok = false,
            }
        }
        ok.then_some(side)
    }

    fn service_set(&mut self, refs: &Refs) -> Option<ServiceSet> {
        if refs.v.is_empty() {
            self.err(Diagnostic::error("empty-list", "an empty service list matches nothing").at(refs.span, "name at least one service"));
            return None;
        }
        let mut set = ServiceSet::default();
        let mut ok = true;
        for r in &refs.v {
            match self.service(r) {
                Some(s) => set = set.union(&s),
                None => ok = false,
            }
        }
        ok.then_some(set)
    }

    fn service(&mut self, r: &Sp<String>) -> Option<ServiceSet> {
        if let Some(s) = builtin(&r.v) {
            return Some(s);
        }
        if let Some((s, _)) = self.services.get(&r.v) {
            return Some(s.clone());
        }
        let d = if let Some((named, _)) = self.names.get(&r.v) {
            let kind = match named {
                Named::Zone(_) => "a zone",
                Named::Host(_) => "a host",
                Named::Group(..) => "a group",
                Named::Peer(..) => "a VPN peer",
            };
            Diagnostic::error("wrong-kind", format!("`{}` is {kind}, not a service", r.v)).at(r.span, "expected a service")
        } else {
            let all = BUILTIN_NAMES.iter().copied().chain(self.services.keys().map(|k| k.as_str()));
            match suggest(&r.v, all) {
                Some(c) => Diagnostic::error("undefined", format!("service `{}` is not defined", r.v)).at(r.span, format!("did you mean `{c}`?")),
                None => Diagnostic::error("undefined", format!("service `{}` is not defined", r.v)).at(r.span, "unknown service").note("define it under [services], e.g. name = { tcp = [8443] }"),
            }
        };
        self.err(d);
        None
    }

    fn rules(&mut self, today: Date) -> Vec<Rule> {
        let mut out = vec![];
        let mut seen: HashMap<String, Span> = HashMap::new();
        let raw = self.raw;
        for rr in &raw.rules {
            let Some(name) = &rr.name else {
                self.err(Diagnostic::error("missing-key", "a rule has no `name`").at(rr.span, "add name = \"...\""));
                continue;
            };
            if let Some(first) = seen.get(&name.v) {
                let first = *first;
                self.err(Diagnostic::error("duplicate", format!("rule `{}` is defined twice", name.v)).at(name.span, "defined again here").also(first, "first defined here"));
                continue;
            }
            seen.insert(name.v.clone(), name.span);
            if let Some(d) = rule_name_error(name) {
                self.err(d);
                continue;
            }
            for t in [&rr.comment, &rr.owner].into_iter().flatten() {
                if let Some(c) = t.v.chars().find(|c| !is_printable(*c)) {
                    self.err(Diagnostic::error("invalid-value", format!("rule `{}`: text may not contain {c:?}", name.v)).at(t.span, "control or invisible character"));
                }
            }
            let (action, svc_refs) = match (&rr.allow, &rr.deny) {
                (Some(a), None) => (Action::Allow, a),
                (None, Some(d)) => (Action::Deny, d),
                (Some(_), Some(d)) => {
                    self.err(Diagnostic::error("allow-and-deny", format!("rule `{}` has both `allow` and `deny`", name.v)).at(d.span, "remove one: a rule either allows or denies"));
                    continue;
                }
                (None, None) => {
                    self.err(Diagnostic::error("missing-key", format!("rule `{}` has neither `allow` nor `deny`", name.v)).at(name.span, "add allow = [...] or deny = [...]"));
                    continue;
                }
            };
            let from = match &rr.from {
                Some(f) => self.side(f),
                None => {
                    self.err(Diagnostic::error("missing-key", format!("rule `{}` has no `from`", name.v)).at(name.span, "add from = \"...\""));
                    None
                }
            };
            let to = match &rr.to {
                Some(t) => self.side(t),
                None => {
                    self.err(Diagnostic::error("missing-key", format!("rule `{}` has no `to`", name.v)).at(name.span, "add to = \"...\""));
                    None
                }
            };
            let services = self.service_set(svc_refs);
            let (Some(from), Some(to), Some(services)) = (from, to, services) else { continue };
            let expires = rr.expires.as_ref().map(|e| e.v);
            out.push(Rule {
                name: name.v.clone(),
                span: name.span,
                from,
                to,
                services,
                action,
                log: rr.log.as_ref().is_some_and(|l| l.v),
                expires,
                expired: expires.is_some_and(|e| today > e),
                comment: rr.comment.as_ref().map(|c| c.v.clone()),
                owner: rr.owner.as_ref().map(|c| c.v.clone()),
                from_text: rr.from.as_ref().map(|f| f.v.iter().map(|s| s.v.clone()).collect()).unwrap_or_default(),
                to_text: rr.to.as_ref().map(|f| f.v.iter().map(|s| s.v.clone()).collect()).unwrap_or_default(),
                service_text: svc_refs.v.iter().map(|s| s.v.clone()).collect(),
            });
        }
        out
    }

    fn iface_ref(&mut self, s: &Sp<String>, owner: &str) -> Option<IfaceId> {
        if let Some(&i) = self.iface_ix.get(&s.v) {
            return Some(i);
        }
        if let Some(i) = self.ifaces.iter().position(|i| i.device.as_str() == s.v && i.vpn) {
            return Some(i);
        }
        let d = if let Some(i) = self.ifaces.iter().find(|i| i.device.as_str() == s.v) {
            Diagnostic::error("wrong-kind", format!("{owner}: `{}` is a device name; use the interface key", s.v)).at(s.span, format!("did you mean `{}`?", i.key))
        } else {
            let keys = self.iface_ix.keys().map(|k| k.as_str());
            match suggest(&s.v, keys) {
                Some(c) => Diagnostic::error("undefined", format!("{owner}: interface `{}` is not defined", s.v)).at(s.span, format!("did you mean `{c}`?")),
                None => Diagnostic::error("undefined", format!("{owner}: interface `{}` is not defined", s.v)).at(s.span, "not an [interfaces] key"),
            }
        };
        self.err(d);
        None
    }

    fn nat(&mut self) -> (Vec<Dnat>, Vec<Snat>) {
        let raw = self.raw;
        let mut dnat = vec![];
        let mut names: HashMap<String, Span> = HashMap::new();
        // An unnamed forward is called `forward-N` after its position: those names
        // are taken too, so that every forward has one name of its own (it
        // identifies the forward in messages, plans and the kernel's comments).
        let unnamed: HashMap<String, Span> = raw.dnat.iter().enumerate().filter(|(_, f)| f.name.is_none()).map(|(n, f)| (auto_forward_name(n), f.span)).collect();
        for (n, f) in raw.dnat.iter().enumerate() {
            let mut valid = true;
            let name = match &f.name {
                None => auto_forward_name(n),
                Some(s) => {
                    if let Some(why) = forward_name_problem(&s.v) {
                        valid = false;
                        self.err(Diagnostic::error("invalid-name", format!("port forward name `{}` {why}", crate::text::escape_terminal(&s.v))).at(s.span, "invalid port forward name"));
                    } else if let Some(&other) = unnamed.get(&s.v) {
                        valid = false;
                        self.err(
                            Diagnostic::error("duplicate", format!("port forward `{}` is defined twice", s.v))
                                .at(s.span, "named here")
                                .also(other, "this unnamed forward is already called so")
                                .note("unnamed forwards are called forward-1, forward-2, ... after their position; choose another name"),
                        );
                    } else if let Some(first) = names.insert(s.v.clone(), s.span) {
                        valid = false;
                        self.err(Diagnostic::error("duplicate", format!("port forward `{}` is defined twice", s.v)).at(s.span, "defined again here").also(first, "first defined here"));
                    }
                    if valid { s.v.clone() } else { format!("#{}", n + 1) }
                }
            };
            let owner = format!("port forward `{name}`");
            let iface = match &f.on {
                Some(o) => self.iface_ref(o, &owner),
                None => {
                    self.err(Diagnostic::error("missing-key", format!("{owner} has no `on`")).at(f.span, "add on = \"wan\" (an [interfaces] key)"));
                    None
                }
            };
            let destination = f.destination.as_ref().and_then(|d| match parse_addr(&d.v) {
                Ok(a) => Some(a),
                Err(NetError::Mapped(v4)) => {
                    self.err(net_error("address", d, NetError::Mapped(v4)));
                    None
                }
                Err(_) => {
                    self.err(Diagnostic::error("invalid-address", format!("`{}` is not an address", d.v)).at(d.span, "expected one address"));
                    None
                }
            });
            let services = match &f.service {
                Some(s) => self.service(s),
                None => {
                    self.err(Diagnostic::error("missing-key", format!("{owner} has no `service`")).at(f.span, "add service = \"https\""));
                    None
                }
            };
            if let (Some(svc), Some(s)) = (&services, &f.service) {
                if svc.tcp.is_empty() && svc.udp.is_empty() {
                    self.err(Diagnostic::error("invalid-value", format!("{owner}: service `{}` has no TCP or UDP port to forward", s.v)).at(s.span, "not a port-based service"));
                }
            }
            let to_port = f.to_port.as_ref().and_then(|p| match u16::try_from(p.v) {
                Ok(v) if v > 0 => Some(v),
                _ => {
                    self.err(Diagnostic::error("invalid-port", format!("to_port {} is out of range", p.v)).at(p.span, "ports are 1..=65535"));
                    None
                }
            });
            if let (Some(_), Some(svc), Some(tp)) = (to_port, &services, &f.to_port) {
                let count: u32 = svc.tcp.ranges().iter().chain(svc.udp.ranges()).map(|(a, b)| u32::from(b - a) + 1).sum();
                let single_port = svc.tcp.ranges().iter().chain(svc.udp.ranges()).all(|(a, b)| a == b) && {
                    let mut ports: Vec<u16> = svc.tcp.ranges().iter().chain(svc.udp.ranges()).map(|r| r.0).collect();
                    ports.dedup();
                    ports.len() == 1
                };
                if count > 1 && !single_port {
                    self.err(Diagnostic::error("invalid-value", format!("{owner}: `to_port` needs a service with a single port")).at(tp.span, "the service has several ports"));
                }
            }
            let (mut to_v4, mut to_v6, mut to_text) = (None, None, String::new());
            match &f.to {
                None => self.err(Diagnostic::error("missing-key", format!("{owner} has no `to`")).at(f.span, "add to = \"host\" (a host or an address)")),
                Some(t) => {
                    to_text = t.v.clone();
                    let addrs: Option<Vec<IpAddr>> = match self.names.get(&t.v) {
                        Some((Named::Host(a), _)) => {
                            let mut v = vec![];
                            v.extend(a.v4.ranges().iter().flat_map(|&(l, h)| (l..=h).take(2).map(|x| IpAddr::V4(x.into()))));
                            v.extend(a.v6.ranges().iter().flat_map(|&(l, h)| (l..=h).take(2).map(|x| IpAddr::V6(x.into()))));
                            Some(v)
                        }
                        Some(_) => {
                            self.err(Diagnostic::error("wrong-kind", format!("{owner}: `to` must be a host or an address; `{}` is not a host", t.v)).at(t.span, "expected a host"));
                            None
                        }
                        None => match parse_addr(&t.v) {
                            Ok(a) => Some(vec![a]),
                            Err(NetError::Mapped(v4)) => {
                                self.err(net_error("address", t, NetError::Mapped(v4)));
                                None
                            }
                            Err(_) => {
                                let hosts = self.names.iter().filter(|(_, (n, _))| matches!(n, Named::Host(_))).map(|(k, _)| k.as_str());
                                let label = match suggest(&t.v, hosts) {
                                    Some(c) => format!("did you mean `{c}`?"),
                                    None => "not a host or address".into(),
                                };
                                self.err(Diagnostic::error("undefined", format!("{owner}: `{}` is not defined", t.v)).at(t.span, label));
                                None
                            }
                        },
                    };
                    if let Some(addrs) = addrs {
                        for a in addrs {
                            match a {
                                IpAddr::V4(v) if to_v4.is_none() => to_v4 = Some(v),
                                IpAddr::V6(v) if to_v6.is_none() => to_v6 = Some(v),
                                _ => self.err(Diagnostic::error("ambiguous", format!("{owner}: host `{}` has several addresses of one family", t.v)).at(t.span, "a port forward needs one target address per family")),
                            }
                        }
                    }
                    if let Some(d) = destination {
                        let ok = if d.is_ipv4() { to_v4.is_some() } else { to_v6.is_some() };
                        if !ok && (to_v4.is_some() || to_v6.is_some()) {
                            self.err(Diagnostic::error("family-mismatch", format!("{owner}: destination {d} and target `{}` have no address family in common", t.v)).at(t.span, "no address of the destination's family"));
                        }
                    }
                }
            }
            if let (true, Some(iface), Some(services)) = (valid, iface, services) {
                dnat.push(Dnat { name, span: f.span, iface, destination, service_text: f.service.as_ref().map(|s| s.v.clone()).unwrap_or_default(), services, to_v4, to_v6, to_text, to_port });
            }
        }
        let mut snat = vec![];
        let entries: Vec<(Span, &Option<Refs>, &Option<Sp<String>>, Option<&Sp<String>>, &str)> = raw
            .masquerade
            .iter()
            .map(|m| (m.span, &m.from, &m.out, None, "masquerade"))
            .chain(raw.snat.iter().map(|s| (s.span, &s.from, &s.out, s.to.as_ref(), "snat")))
            .collect();
        for (span, from, out, to, kind) in entries {
            let owner = format!("a {kind} rule");
            let Some(from_refs) = from else {
                self.err(Diagnostic::error("missing-key", format!("{owner} has no `from`")).at(span, "add from = \"...\""));
                continue;
            };
            let Some(out_ref) = out else {
                self.err(Diagnostic::error("missing-key", format!("{owner} has no `out`")).at(span, "add out = \"wan\" (an [interfaces] key)"));
                continue;
            };
            let side = self.side(from_refs);
            let out_if = self.iface_ref(out_ref, &owner);
            let to_addr = match (kind, to) {
                ("snat", None) => {
                    self.err(Diagnostic::error("missing-key", "an snat rule has no `to`").at(span, "add to = \"203.0.113.10\""));
                    continue;
                }
                (_, Some(t)) => match parse_addr(&t.v) {
                    Ok(a) => Some(a),
                    Err(NetError::Mapped(v4)) => {
                        self.err(net_error("address", t, NetError::Mapped(v4)));
                        continue;
                    }
                    Err(_) => {
                        self.err(Diagnostic::error("invalid-address", format!("`{}` is not an address", t.v)).at(t.span, "expected one address"));
                        continue;
                    }
                },
                _ => None,
            };
            if let (Some(from), Some(out)) = (side, out_if) {
                snat.push(Snat { span, from, from_text: from_refs.v.iter().map(|s| s.v.clone()).collect(), out, to: to_addr });
            }
        }
        (dnat, snat)
    }

    fn vpns(&mut self) -> Vec<Vpn> {
        let raw = self.raw;
        let mut out = vec![];
        // Checked across tunnels, not only inside one: the UDP port each listens on
        // (explicit or the default), peers' public keys, peers' routed allowed IPs.
        let mut seen_ports: HashMap<u16, (String, Span, bool)> = HashMap::new();
        let mut peer_keys: HashMap<[u8; 32], (String, Span)> = HashMap::new();
        let mut routed: Vec<RoutedPeer> = vec![];
        for (vi, v) in raw.vpns.iter().enumerate() {
            let owner = format!("vpn `{}`", v.name.v);
            // A VPN with a bad value is still read to the end: its other errors are
            // reported and its peers declared, so that rules naming them do not
            // report a second, false error. Only a VPN without any error is kept.
            let mut ok = true;
            if let Some(d) = other_name_error("vpn", &v.name) {
                self.err(d);
                ok = false;
            }
            let zone = match &v.zone {
                Some(z) => self.zone_ref(z, &owner),
                None => {
                    self.err(Diagnostic::error("missing-key", format!("{owner} has no `zone`")).at(v.name.span, "add zone = \"admins\""));
                    None
                }
            };
            let iface = zone.and_then(|zone| self.add_iface(&v.name.v, &v.name, zone, true));
            let listen_port = match &v.listen_port {
                Some(p) => match u16::try_from(p.v) {
                    Ok(x) if x > 0 => Some((x, p.span, true)),
                    _ => {
                        self.err(Diagnostic::error("invalid-port", format!("listen_port {} is out of range", p.v)).at(p.span, "ports are 1..=65535"));
                        ok = false;
                        None
                    }
                },
                None => Some((DEFAULT_LISTEN_PORT, v.name.span, false)),
            };
            if let Some((port, span, explicit)) = listen_port {
                match seen_ports.get(&port) {
                    Some((other, first, first_explicit)) => {
                        let label = if explicit { "port already used".to_string() } else { format!("no listen_port: listens on the default {port}") };
                        let first_label = if *first_explicit { "first used here".to_string() } else { format!("first used here (the default {port})") };
                        self.err(Diagnostic::error("duplicate", format!("listen_port {port} is used by vpn `{other}` too")).at(span, label).also(*first, first_label));
                    }
                    None => {
                        seen_ports.insert(port, (v.name.v.clone(), span, explicit));
                    }
                }
            }
            let mut addresses = vec![];
            for a in &v.addresses {
                match parse_if_addr(&a.v) {
                    Some(x) => addresses.push(x),
                    None => {
                        ok = false;
                        self.err(Diagnostic::error("invalid-address", format!("`{}` is not an interface address", a.v)).at(a.span, "expected ADDRESS/PREFIX, e.g. 10.200.0.1/24"));
                    }
                }
            }
            let mtu = v.mtu.as_ref().and_then(|m| match u16::try_from(m.v) {
                Ok(x) if (1280..=9000).contains(&x) => Some(x),
                _ => {
                    self.err(Diagnostic::error("invalid-value", format!("mtu {} is out of range", m.v)).at(m.span, "expected 1280..=9000"));
                    None
                }
            });
            match &v.private_key_file {
                None => {
                    self.err(Diagnostic::error("missing-key", format!("{owner} has no `private_key_file`")).at(v.name.span, "add private_key_file = \"/etc/fwctl/keys/NAME.key\""));
                    ok = false;
                }
                Some(pk) => {
                    if let Some(d) = key_path_error("private_key_file", pk) {
                        self.err(d);
                        ok = false;
                    }
                }
            }
            let mut peers = vec![];
            for p in &v.peers {
                let Some(pname) = &p.name else {
                    self.err(Diagnostic::error("missing-key", "a peer has no `name`").at(p.span, "add name = \"...\""));
                    ok = false;
                    continue;
                };
                let mut peer_ok = true;
                let full = Sp::new(format!("{}.{}", v.name.v, pname.v), pname.span);
                let key = match &p.public_key {
                    None => {
                        self.err(Diagnostic::error("missing-key", format!("peer `{}` has no `public_key`", full.v)).at(pname.span, "add public_key = \"...\""));
                        None
                    }
                    Some(k) => match crate::util::base64_decode(&k.v).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                        Some(b) => {
                            if let Some((other, first)) = peer_keys.get(&b) {
                                let msg = format!("peer `{}` reuses the public key of peer `{other}`", full.v);
                                let first = *first;
                                self.err(Diagnostic::error("duplicate", msg).at(k.span, "same key again").also(first, "first used here"));
                            } else {
                                peer_keys.insert(b, (full.v.clone(), k.span));
                            }
                            Some(PublicKey(b))
                        }
                        None => {
                            self.err(Diagnostic::error("invalid-key", format!("public_key of peer `{}` is not a WireGuard key", full.v)).at(k.span, "expected 44 characters of base64 (32 bytes)"));
                            None
                        }
                    },
                };
                let mut allowed = vec![];
                let mut set = AddrSet::empty();
                for a in &p.allowed_ips {
                    match parse_net(&a.v) {
                        Ok(n) => {
                            set.add_net(&n);
                            allowed.push(n);
                            if !matches!(n, Net::V4(_, 0) | Net::V6(_, 0)) {
                                let mut one = AddrSet::empty();
                                one.add_net(&n);
                                routed.push(RoutedPeer { vpn: vi, peer: full.v.clone(), vpn_zone: zone, addrs: one, span: a.span });
                            }
                        }
                        Err(e) => {
                            peer_ok = false;
                            self.err(net_error("allowed IP", a, e));
                        }
                    }
                }
                if p.allowed_ips.is_empty() {
                    peer_ok = false;
                    self.err(Diagnostic::error("missing-key", format!("peer `{}` has no `allowed_ips`", full.v)).at(pname.span, "add allowed_ips = [\"10.200.0.2/32\"]"));
                }
                if let Some(e) = &p.endpoint {
                    if !valid_endpoint(&e.v) {
                        peer_ok = false;
                        self.err(Diagnostic::error("invalid-value", format!("endpoint `{}` is not HOST:PORT", e.v)).at(e.span, "expected e.g. 198.51.100.7:51820 or [2001:db8::1]:51820"));
                    }
                }
                let keepalive = p.keepalive.as_ref().and_then(|k| match u16::try_from(k.v) {
                    Ok(x) => Some(x),
                    Err(_) => {
                        self.err(Diagnostic::error("invalid-value", format!("keepalive {} is out of range", k.v)).at(k.span, "seconds, 0..=65535"));
                        None
                    }
                });
                if let Some(psk) = &p.preshared_key_file {
                    if let Some(d) = key_path_error("preshared_key_file", psk) {
                        peer_ok = false;
                        self.err(d);
                    }
                }
                self.declare(&full, Named::Peer(set, zone));
                let Some(key) = key.filter(|_| peer_ok) else {
                    ok = false;
                    continue;
                };
                peers.push(Peer {
                    name: pname.v.clone(),
                    span: p.span,
                    public_key: key,
                    allowed_ips: allowed,
                    endpoint: p.endpoint.as_ref().map(|e| e.v.clone()),
                    keepalive,
                    preshared_key_file: p.preshared_key_file.as_ref().map(|e| e.v.clone()),
                });
            }
            // Peers' allowed IPs must not overlap: WireGuard routes by them.
            for i in 0..peers.len() {
                for j in i + 1..peers.len() {
                    let a = AddrSet::of(&peers[i].allowed_ips);
                    let b = AddrSet::of(&peers[j].allowed_ips);
                    if !a.intersect(&b).is_empty() {
                        self.err(Diagnostic::error("overlap", format!("peers `{}` and `{}` of {owner} have overlapping allowed_ips", peers[i].name, peers[j].name)).at(peers[j].span, "overlaps").also(peers[i].span, "with this peer"));
                    }
                }
            }
            let (true, Some(zone), Some(iface), Some((listen_port, _, _)), Some(pk)) = (ok, zone, iface, listen_port, &v.private_key_file) else { continue };
            out.push(Vpn {
                name: self.ifaces[iface].device.clone(),
                span: v.name.span,
                zone,
                iface,
                listen_port,
                addresses,
                private_key_file: pk.v.clone(),
                mtu,
                peers,
            });
        }
        self.routed_overlaps(&routed);
        out
    }

    /// Each allowed IP of a peer becomes a route into its tunnel (default routes
    /// excepted: they are not routed). Such a route must not take another tunnel's
    /// peer, nor cover a network of a zone reached through another interface: the
    /// appliance would send that zone's traffic into this tunnel. (A peer address
    /// strictly inside a zone's network is allowed: the zone then declares more
    /// addresses than it uses, and the firewall drops that address arriving on the
    /// zone's interface as spoofed.)
    fn routed_overlaps(&mut self, routed: &[RoutedPeer]) {
        for (j, b) in routed.iter().enumerate() {
            if let Some(a) = routed[..j].iter().find(|a| a.vpn != b.vpn && !a.addrs.intersect(&b.addrs).is_empty()) {
                let msg = format!("allowed_ips of peer `{}` overlap those of peer `{}` of another tunnel", b.peer, a.peer);
                self.err(Diagnostic::error("overlap", msg).at(b.span, "overlaps").also(a.span, "with this allowed IP").note("each address can be routed into one tunnel only"));
            }
            let hit = self.zones.iter().enumerate().find(|(z, zone)| {
                Some(*z) != b.vpn_zone
                    && !zone.ifaces.is_empty()
                    && zone.networks.as_ref().is_some_and(|n| covers_part_of(&b.addrs, n))
            });
            if let Some((_, zone)) = hit {
                let msg = format!("allowed_ips of peer `{}` cover networks of zone `{}`", b.peer, zone.name);
                let (name, span) = (zone.name.clone(), zone.span);
                self.err(Diagnostic::error("overlap", msg).at(b.span, "routed into the tunnel").also(span, format!("zone `{name}` is reached through its own interfaces")).note("the route would divert that zone's traffic into the tunnel"));
            }
        }
    }

    /// Every address the policy names: a "random internet address" must avoid them.
    fn claimed(&self, rules: &[Rule], dnat: &[Dnat]) -> AddrSet {
        let mut c = AddrSet::empty();
        for z in &self.zones {
            if let Some(n) = &z.networks {
                c = c.union(n);
            }
        }
        for (n, _) in self.names.values() {
            match n {
                Named::Host(a) | Named::Peer(a, _) => c = c.union(a),
                Named::Group(s, _) => c = c.union(&s.addrs),
                Named::Zone(_) => {}
            }
        }
        for r in rules {
            if !r.from.addrs.is_full() {
                c = c.union(&r.from.addrs);
            }
            if !r.to.addrs.is_full() {
                c = c.union(&r.to.addrs);
            }
        }
        for d in dnat {
            if let Some(a) = d.destination {
                c.add_net(&Net::addr(a));
            }
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn flow(&mut self, ep: &EndpointCtx, span: Span, from: &Sp<String>, to: &Sp<String>, probes: Vec<(Proto, u16)>, service_text: String, devs: (Option<IfName>, Option<IfName>)) -> Option<Flow> {
        let f = self.endpoint(ep, from);
        let t = self.endpoint(ep, to);
        Some(Flow { span, from: f?, to: t?, probes, service_text, iif: devs.0, oif: devs.1 })
    }

    /// A flow's `in` / `out` (extension): an `[interfaces]` key or a VPN name gives
    /// its device; any other valid device name is a device the policy does not
    /// declare. `in` needs a source that is not `self`, `out` a destination that
    /// is not `self` (the appliance's end has no interface). Err: reported.
    fn flow_devices(&mut self, iif: &Option<Sp<String>>, oif: &Option<Sp<String>>, from_self: bool, to_self: bool) -> Result<(Option<IfName>, Option<IfName>), ()> {
        let mut one = |s: &Option<Sp<String>>, key: &str, is_self: bool| -> Result<Option<IfName>, ()> {
            let Some(s) = s else { return Ok(None) };
            if is_self {
                let end = if key == "in" { "from" } else { "to" };
                self.err(Diagnostic::error("invalid-value", format!("`{key}` names a device, but `{end}` is `self`: the appliance's own end has no interface")).at(s.span, format!("remove `{key}`")));
                return Err(());
            }
            if let Some(i) = self.ifaces.iter().find(|i| i.key == s.v || i.device.as_str() == s.v) {
                return Ok(Some(i.device.clone()));
            }
            IfName::new(&s.v).map(Some).map_err(|e| {
                self.err(Diagnostic::error("invalid-device", format!("invalid device name `{}`: {e}", s.v)).at(s.span, "an [interfaces] key, or a device name"));
            })
        };
        let i = one(iif, "in", from_self);
        let o = one(oif, "out", to_self);
        Ok((i?, o?))
    }

    fn endpoint(&mut self, ep: &EndpointCtx, s: &Sp<String>) -> Option<Endpoint> {
        match ep.endpoint(&s.v) {
            Ok(e) => Some(e),
            Err(msg) => {
                let names = ep.policy.names.keys().map(|k| k.as_str()).chain(RESERVED);
                let d = Diagnostic::error("undefined", msg);
                self.err(match suggest(&s.v, names) {
                    Some(c) => d.at(s.span, format!("did you mean `{c}`?")),
                    None => d.at(s.span, "not a zone, group, host, peer, address or CIDR"),
                });
                None
            }
        }
    }

    fn management(&mut self, ep: &EndpointCtx) -> Vec<Flow> {
        let raw = self.raw;
        let mut out = vec![];
        for m in &raw.firewall.management {
            let (Some(from), Some(to), Some(svc)) = (&m.from, &m.to, &m.service) else {
                self.err(Diagnostic::error("missing-key", "a management flow needs `from`, `to` and `service`").at(m.span, "incomplete"));
                continue;
            };
            let Some(set) = self.service(svc) else { continue };
            let froms: Vec<Option<Endpoint>> = from.v.iter().map(|f| self.endpoint(ep, f)).collect();
            let tos: Vec<Option<Endpoint>> = to.v.iter().map(|t| self.endpoint(ep, t)).collect();
            let from_self = from.v.iter().any(|f| f.v == "self");
            let to_self = to.v.iter().any(|t| t.v == "self");
            let Ok((iif, oif)) = self.flow_devices(&m.iif, &m.oif, from_self, to_self) else { continue };
            for f in froms.iter().flatten() {
                for t in tos.iter().flatten() {
                    out.push(Flow { span: m.span, from: f.clone(), to: t.clone(), probes: set.representatives(), service_text: svc.v.clone(), iif: iif.clone(), oif: oif.clone() });
                }
            }
        }
        out
    }

    fn tests(&mut self, ep: &EndpointCtx) -> Vec<Test> {
        let raw = self.raw;
        let mut out = vec![];
        for t in &raw.tests {
            let (Some(from), Some(to)) = (&t.from, &t.to) else {
                self.err(Diagnostic::error("missing-key", "a test needs `from` and `to`").at(t.span, "incomplete test"));
                continue;
            };
            let expect = match t.expect.as_ref().map(|e| (e.v.as_str(), e.span)) {
                Some(("allow", _)) => Expect::Allow,
                Some(("deny", _)) => Expect::Deny,
                Some((other, span)) => {
                    self.err(Diagnostic::error("invalid-value", format!("`expect` must be \"allow\" or \"deny\", not \"{other}\"")).at(span, "expected \"allow\" or \"deny\""));
                    continue;
                }
                None => {
                    self.err(Diagnostic::error("missing-key", "a test has no `expect`").at(t.span, "add expect = \"allow\" or \"deny\""));
                    continue;
                }
            };
            let (probes, text) = match (&t.service, &t.proto, &t.port) {
                (Some(_), Some(p), _) => {
                    self.err(Diagnostic::error("invalid-value", "a test has both `service` and `proto`: give one or the other").at(p.span, "remove this, or remove `service`"));
                    continue;
                }
                (Some(_), None, Some(p)) => {
                    self.err(Diagnostic::error("invalid-value", "a test has both `service` and `port`: `port` goes with `proto`").at(p.span, "remove this, or replace `service` by `proto`"));
                    continue;
                }
                (Some(s), None, None) => match self.service(s) {
                    Some(set) => (set.representatives(), s.v.clone()),
                    None => continue,
                },
                (None, Some(p), port) => {
                    let Some(proto) = Proto::parse(&p.v) else {
                        self.err(Diagnostic::error("invalid-value", format!("unknown protocol `{}`", p.v)).at(p.span, "expected tcp, udp, icmp or icmpv6"));
                        continue;
                    };
                    let n = match (proto.has_ports(), port) {
                        (true, Some(port)) => match parse_port(&port.v) {
                            Ok((a, b)) if a == b => a,
                            Ok(_) => {
                                self.err(Diagnostic::error("invalid-port", "a test probes one port, not a range").at(port.span, "one port"));
                                continue;
                            }
                            Err(msg) => {
                                self.err(Diagnostic::error("invalid-port", msg).at(port.span, "ports are 1..=65535"));
                                continue;
                            }
                        },
                        (true, None) => {
                            self.err(Diagnostic::error("missing-key", format!("a {} test needs `port`", p.v)).at(p.span, "add port = N"));
                            continue;
                        }
                        (false, Some(port)) => match &port.v {
                            RawPort::Int(i) if (0..=255).contains(i) => *i as u16,
                            _ => {
                                self.err(Diagnostic::error("invalid-value", "an ICMP test's `port` is the ICMP type (0..=255)").at(port.span, "ICMP type"));
                                continue;
                            }
                        },
                        (false, None) => u16::from(if proto == Proto::Icmp { services::ICMP_ECHO_REQUEST } else { services::ICMPV6_ECHO_REQUEST }),
                    };
                    (vec![(proto, n)], format!("{}/{n}", proto.name()))
                }
                _ => {
                    self.err(Diagnostic::error("invalid-value", "a test needs either `service` or `proto` (with `port`)").at(t.span, "give service = \"...\" or proto = \"tcp\", port = N"));
                    continue;
                }
            };
            let Ok(devs) = self.flow_devices(&t.iif, &t.oif, from.v == "self", to.v == "self") else { continue };
            if let Some(flow) = self.flow(ep, t.span, from, to, probes, text, devs) {
                out.push(Test { flow, expect });
            }
        }
        out
    }
}

fn merge(into: &mut Side, s: &Side) {
    into.any |= s.any;
    into.self_ |= s.self_;
    into.addrs = into.addrs.union(&s.addrs);
    into.fine = into.fine.union(&s.fine);
    into.coarse = into.coarse.union(&s.coarse);
    for (z, a) in &s.scoped {
        match into.scoped.iter_mut().find(|(x, _)| x == z) {
            Some((_, b)) => *b = b.union(a),
            None => into.scoped.push((*z, a.clone())),
        }
    }
    into.scoped.sort_by_key(|(z, _)| *z);
    for z in &s.zones {
        if !into.zones.contains(z) {
            into.zones.push(*z);
        }
    }
    into.zones.sort();
}

/// The most bytes nft keeps in a comment; a port forward's name is the comment
/// of its map elements.
pub const NFT_COMMENT_MAX: usize = 128;

/// The name of the unnamed port forward at `index` (0-based) in `[[nat.forward]]`.
pub fn auto_forward_name(index: usize) -> String {
    format!("forward-{}", index + 1)
}

/// Why `s` cannot name a port forward (it travels into nft comments, plans and
/// the audit trail), if it cannot.
fn forward_name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("may not be empty".into());
    }
    if s.chars().any(|c| crate::text::is_terminal_dangerous(c) || c == '"' || c == '\\') {
        return Some("may not contain quotes, backslashes, control or bidirectional characters".into());
    }
    if s.len() > NFT_COMMENT_MAX {
        return Some(format!("is {} bytes long; at most {NFT_COMMENT_MAX} fit an nftables comment", s.len()));
    }
    None
}

/// `a → b → c → a`; a long chain keeps its first and last names and says how many
/// it leaves out, so that a cycle through thousands of groups stays one line.
fn chain_text(names: &[&str]) -> String {
    const KEEP: usize = 4;
    if names.len() <= 2 * KEEP + 1 {
        return names.join(" → ");
    }
    let left = names.len() - 2 * KEEP;
    format!("{} → … {left} more … → {}", names[..KEEP].join(" → "), names[names.len() - KEEP..].join(" → "))
}

/// A rule name reaches nft (log prefixes, set comments), reports and terminals:
/// printable text without `"` or `\\` (they end or escape an nft string) nor `$`
/// (nft expands `$NAME` inside a log prefix, so `check` would pass and the kernel
/// refuse).
fn rule_name_error(name: &Sp<String>) -> Option<Diagnostic> {
    let bad = name.v.chars().find(|c| matches!(c, '"' | '\\' | '$') || !is_printable(*c));
    if !name.v.is_empty() && name.v.trim() == name.v && bad.is_none() {
        return None;
    }
    let label = match bad {
        Some('$') => "`$` would be expanded as an nft variable in the log prefix".to_string(),
        Some(c) => format!("{c:?} is not allowed here"),
        None => "empty, or with leading or trailing spaces".to_string(),
    };
    Some(Diagnostic::error("invalid-name", format!("rule name {:?} may not be empty or contain quotes, backslashes, `$` or control characters", name.v)).at(name.span, label))
}

/// Names outside the address namespace (interface keys, services, VPNs) follow the
/// same rules as names inside it: the name charset, not `any`/`self`, and not
/// something that reads as an address or a port number.
fn other_name_error(what: &str, name: &Sp<String>) -> Option<Diagnostic> {
    if RESERVED.contains(&name.v.as_str()) {
        return Some(Diagnostic::error("reserved-name", format!("`{}` is a reserved name", name.v)).at(name.span, "reserved: choose another name"));
    }
    if !valid_name(&name.v) {
        return Some(Diagnostic::error("invalid-name", format!("{what} name {:?} is not a valid name", name.v)).at(name.span, "names use letters, digits, '-', '_' and '.'"));
    }
    if what == "service" && name.v.contains(|c: char| c.is_ascii_digit()) && name.v.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return Some(Diagnostic::error("invalid-name", format!("service `{}` reads as a port", name.v)).at(name.span, "a service name may not be a port or port range"));
    }
    address_like_name(what, name)
}

/// Whether the prefix `p` (one range of one family) overlaps `nets` other than by
/// lying strictly inside one of its ranges.
fn covers_part_of(p: &AddrSet, nets: &AddrSet) -> bool {
    fn one<T: addr::Point>(p: &addr::Ranges<T>, n: &addr::Ranges<T>) -> bool {
        let Some(&(lo, hi)) = p.ranges().first() else { return false };
        let hits: Vec<&(T, T)> = n.ranges().iter().filter(|&&(a, b)| a <= hi && lo <= b).collect();
        match hits.as_slice() {
            [] => false,
            [&(a, b)] => !(a <= lo && hi <= b && (a, b) != (lo, hi)),
            _ => true,
        }
    }
    one(&p.v4, &nets.v4) || one(&p.v6, &nets.v6)
}

/// A key file path: absolute and normalised (no empty, `.` or `..` component, no
/// trailing `/`), printable. The boot-time restore runs from another directory: a
/// relative path would name another file there, and a new key would be created.
fn key_path_error(key: &str, path: &Sp<String>) -> Option<Diagnostic> {
    let p = path.v.as_str();
    let problem = if p.is_empty() {
        Some("empty")
    } else if !p.starts_with('/') {
        Some("relative: write the absolute path")
    } else if p == "/" || p.ends_with('/') {
        Some("a directory, not a file")
    } else if p[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        Some("not normalised: no `//`, `.` or `..` components")
    } else if p.chars().any(|c| !is_printable(c)) {
        Some("control or invisible character")
    } else if p.len() > 4095 {
        Some("longer than PATH_MAX")
    } else {
        None
    };
    problem.map(|label| Diagnostic::error("invalid-path", format!("`{key}` must be an absolute, normalised file path, not {:?}", path.v)).at(path.span, label))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !s.starts_with('.')
}

fn parse_port(p: &RawPort) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("`{s}` is not a port number"));
        }
        match s.parse::<i64>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            Ok(n) => Err(format!("port {n} is out of range")),
            Err(_) => Err(format!("`{s}` is not a port number")),
        }
    };
    match p {
        RawPort::Int(n) => match u16::try_from(*n) {
            Ok(x) if x > 0 => Ok((x, x)),
            _ => Err(format!("port {n} is out of range")),
        },
        RawPort::Str(s) => match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(a)?, one(b)?);
                if a > b {
                    return Err(format!("port range `{s}` is reversed"));
                }
                Ok((a, b))
            }
            None => one(s).map(|x| (x, x)),
        },
    }
}

fn parse_if_addr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    let ip: IpAddr = parse_addr(a).ok()?;
    if !l.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let len: u8 = l.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

/// `ADDRESS:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`; port 1..=65535 in digits, no
/// IPv4-mapped address.
pub(crate) fn valid_endpoint(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else { return false };
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) || !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return matches!(parse_addr(inner), Ok(IpAddr::V6(_)));
    }
    if host.parse::<IpAddr>().is_ok() {
        // An IPv6 address must be bracketed; an IPv4 one is fine as it is.
        return matches!(parse_addr(host), Ok(IpAddr::V4(_)));
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !looks_like_address(host)
}

/// Chooses concrete addresses for test and management endpoints.
pub struct EndpointCtx<'a> {
    pub policy: &'a Policy,
    pub claimed: &'a AddrSet,
}

impl<'a> EndpointCtx<'a> {
    pub fn endpoint(&self, text: &str) -> Result<Endpoint, String> {
        let p = self.policy;
        let mut points = vec![];
        match text {
            "self" => return Ok(Endpoint { text: text.into(), is_self: true, points }),
            "any" => {
                for a in self.unclaimed() {
                    points.push((a, p.iface_for_addr(a)));
                }
            }
            _ => match p.names.get(text) {
                Some((named, _)) => self.named_points(text, named, &mut points),
                None => match parse_net(text) {
                    Ok(n) => {
                        let a = first_usable(&n);
                        points.push((a, p.iface_for_addr(a)));
                    }
                    Err(_) => return Err(format!("`{text}` is not defined")),
                },
            },
        }
        let mut seen = std::collections::HashSet::new();
        points.retain(|x| seen.insert(*x));
        Ok(Endpoint { text: text.into(), is_self: false, points })
    }

    /// Representative addresses of a named thing. Groups are walked with an explicit
    /// stack, each group once: nesting depth costs neither call stack nor (with
    /// groups shared along a chain) exponential time.
    fn named_points(&self, name: &'a str, named: &'a Named, out: &mut Vec<(IpAddr, Option<IfaceId>)>) {
        let p = self.policy;
        let mut seen = std::collections::HashSet::new();
        let mut work: Vec<(&str, Option<&Named>)> = vec![(name, Some(named))];
        while let Some((name, named)) = work.pop() {
            let Some(named) = named else {
                // A literal member: an address or CIDR.
                if let Ok(n) = parse_net(name) {
                    let a = first_usable(&n);
                    out.push((a, p.iface_for_addr(a)));
                }
                continue;
            };
            self.named_points_one(name, named, out, &mut seen, &mut work);
        }
    }

    fn named_points_one(&self, name: &'a str, named: &'a Named, out: &mut Vec<(IpAddr, Option<IfaceId>)>, seen: &mut std::collections::HashSet<&'a str>, work: &mut Vec<(&'a str, Option<&'a Named>)>) {
        let p = self.policy;
        match named {
            Named::Zone(z) => {
                let zone = &p.zones[*z];
                let iface = zone.ifaces.first().copied();
                match &zone.networks {
                    Some(n) => {
                        for v6 in [false, true] {
                            let free = p.free_addrs(n, v6);
                            // The second free address: the first is the appliance's.
                            if let Some(&a) = free.get(1).or(free.first()) {
                                out.push((a, iface.or_else(|| p.iface_for_addr(a))));
                            }
                        }
                    }
                    None => {
                        for a in self.unclaimed() {
                            out.push((a, iface));
                        }
                    }
                }
            }
            Named::Host(a) => {
                for ip in a.first_v4().map(IpAddr::V4).into_iter().chain(a.first_v6().map(IpAddr::V6)) {
                    out.push((ip, p.iface_for_addr(ip)));
                }
            }
            Named::Peer(a, _) => {
                let vpn_iface = p.vpns.iter().find(|v| name.starts_with(&format!("{}.", v.name))).map(|v| v.iface);
                for ip in a.first_v4().map(IpAddr::V4).into_iter().chain(a.first_v6().map(IpAddr::V6)) {
                    out.push((ip, vpn_iface));
                }
            }
            Named::Group(_, members) => {
                if !seen.insert(name) {
                    return;
                }
                // Each member contributes its own representatives, in member order.
                for m in members.iter().rev() {
                    work.push((m.as_str(), p.names.get(m).map(|(n, _)| n)));
                }
            }
        }
    }

    /// Addresses in no named host, group, zone network or rule CIDR, one per family.
    pub fn unclaimed(&self) -> Vec<IpAddr> {
        let mut out = vec![];
        let v4_pools = [(0xcb00_7100u32, 200u32), (0xc633_6400, 200), (0xc000_0200, 200)];
        'v4: for (base, start) in v4_pools {
            for off in start..255 {
                let a = IpAddr::V4((base + off).into());
                if !self.claimed.contains(a) {
                    out.push(a);
                    break 'v4;
                }
            }
        }
        for n in 1..64u128 {
            let a = IpAddr::V6(((0x2001_0db8_ffffu128 << 80) + n).into());
            if !self.claimed.contains(a) {
                out.push(a);
                break;
            }
        }
        out
    }
}

/// The first address a host could have in a network: the network itself for /31+
/// (or /127+), otherwise network + 1.
pub fn first_usable(n: &Net) -> IpAddr {
    match *n {
        Net::V4(a, l) if l < 31 => IpAddr::V4((a + 1).into()),
        Net::V6(a, l) if l < 127 => IpAddr::V6((a + 1).into()),
        _ => n.first(),
    }
}
