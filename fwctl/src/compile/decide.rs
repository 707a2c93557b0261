//! Policy rules → a decision structure that costs a packet a constant number of lookups.
//!
//! Input: the active rules of a resolved [`Policy`].
//! Output: a [`Decision`]: per-context address→class maps, and decision layers keyed by
//! (source key, destination key, protocol, port) whose elements are disjoint.
//!
//! How: a packet's *context* on each side is the appliance itself (`LOCAL`), an
//! interface zone, or an unknown interface (`OTHER`). In a context, a rule side is
//! either *broad* (matches every address there: `any`, `self`, a zone without
//! networks) or a set of addresses. Addresses are classified by the exact set of
//! rules whose side contains them (their *signature*); a class id is 24 bits, the
//! context id goes in the top 8 bits of the same 32-bit mark. A rule then becomes
//! cells keyed by class (specific side) or by context (broad side) — four layer
//! kinds per action. Deny layers are looked up first, then allow layers: the first
//! hit decides, which is exactly "allowed iff some allow matches and no deny does".
//! Must not: depend on rule order, or emit overlapping elements into one map.

use crate::model::{Action, Policy, Proto, RuleId, ServiceSet, Side};
use std::collections::{BTreeSet, HashMap};

pub const LOCAL: u8 = 1;
pub const OTHER: u8 = 2;
pub const CLASS_MASK: u32 = 0x00ff_ffff;
pub const ZONE_MASK: u32 = 0xff00_0000;

pub fn zone_ctx(zone: usize) -> u8 {
    3 + zone as u8
}

pub fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
        Proto::Icmpv6 => 58,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The address class (mark & CLASS_MASK).
    Class,
    /// The context (mark & ZONE_MASK).
    Zone,
}

impl KeyKind {
    pub fn mask(self) -> u32 {
        match self {
            KeyKind::Class => CLASS_MASK,
            KeyKind::Zone => ZONE_MASK,
        }
    }
    fn letter(self) -> char {
        match self {
            KeyKind::Class => 'c',
            KeyKind::Zone => 'z',
        }
    }
}

/// Address → class, as disjoint intervals covering the whole space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClassMap {
    pub v4: Vec<(u32, u32, u32)>,
    pub v6: Vec<(u128, u128, u32)>,
}

impl ClassMap {
    pub fn lookup(&self, a: std::net::IpAddr) -> u32 {
        fn find<T: Ord + Copy>(v: &[(T, T, u32)], x: T) -> u32 {
            let i = v.partition_point(|&(lo, _, _)| lo <= x);
            if i == 0 {
                return 0;
            }
            let (_, hi, c) = v[i - 1];
            if x <= hi {
                c
            } else {
                0
            }
        }
        match a {
            std::net::IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            std::net::IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }
}

/// One element of a decision layer: the rules it stands for (sorted), whose
/// names become the element comment and whose counters add up per rule.
pub type Rules = Vec<RuleId>;

#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub action: Option<Action>,
    pub src: Option<KeyKind>,
    pub dst: Option<KeyKind>,
    /// (src key, dst key, proto, port) → rules.
    pub exact: Vec<((u32, u32, u8, u16), Rules)>,
    /// (src key, dst key, proto, port range) → rules.
    pub ranges: Vec<((u32, u32, u8, u16, u16), Rules)>,
    /// (src key, dst key, icmp type) → rules.
    pub icmp4: Vec<((u32, u32, u8), Rules)>,
    pub icmp6: Vec<((u32, u32, u8), Rules)>,
}

impl Layer {
    pub fn action(&self) -> Action {
        self.action.expect("layers are built with an action")
    }
    pub fn name(&self) -> String {
        let a = match self.action() {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        format!("{a}_{}{}", self.src.map_or('?', KeyKind::letter), self.dst.map_or('?', KeyKind::letter))
    }
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.ranges.is_empty() && self.icmp4.is_empty() && self.icmp6.is_empty()
    }
    pub fn len(&self) -> usize {
        self.exact.len() + self.ranges.len() + self.icmp4.len() + self.icmp6.len()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Decision {
    /// Context id → source class map (input/forward contexts and LOCAL for output).
    pub src: Vec<(u8, ClassMap)>,
    /// Context id → destination class map.
    pub dst: Vec<(u8, ClassMap)>,
    /// Deny layers first, then allow layers; empty layers are left out.
    pub layers: Vec<Layer>,
    pub src_classes: usize,
    pub dst_classes: usize,
    /// Whether any rule can affect the appliance's own traffic (output path).
    pub output_relevant: bool,
}

impl Decision {
    pub fn src_map(&self, ctx: u8) -> &ClassMap {
        &self.src.iter().find(|(c, _)| *c == ctx).expect("every context has a map").1
    }
    pub fn dst_map(&self, ctx: u8) -> &ClassMap {
        &self.dst.iter().find(|(c, _)| *c == ctx).expect("every context has a map").1
    }
}

/// How a rule side behaves in one context.
enum InCtx {
    No,
    Broad,
    Addrs(crate::model::addr::AddrSet),
}

fn side_in(p: &Policy, s: &Side, ctx: u8) -> InCtx {
    if s.any || (ctx == LOCAL && s.self_) {
        return InCtx::Broad;
    }
    let mut addrs = s.addrs.clone();
    if ctx >= 3 {
        let z = (ctx - 3) as usize;
        if s.zones.contains(&z) {
            match &p.zones[z].networks {
                None => return InCtx::Broad,
                Some(n) => addrs = addrs.union(n),
            }
        }
    }
    if addrs.is_empty() {
        InCtx::No
    } else {
        InCtx::Addrs(addrs)
    }
}

fn zobrist(i: usize) -> u128 {
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (u128::from(next()) << 64) | u128::from(next())
}

/// Assigns class ids by signature; remembers which classes contain each rule.
struct Classifier {
    ids: HashMap<u128, u32>,
    of_rule: Vec<Vec<u32>>,
    keys: Vec<u128>,
}

impl Classifier {
    fn new(rules: usize) -> Classifier {
        let mut ids = HashMap::new();
        ids.insert(0u128, 0u32);
        Classifier { ids, of_rule: vec![vec![]; rules], keys: (0..rules).map(zobrist).collect() }
    }

    /// Sweep one context/family: (lo, hi, rule) intervals → disjoint (lo, hi, class)
    /// covering [MIN, MAX].
    fn sweep<T: crate::model::addr::Point>(&mut self, mut iv: Vec<(T, T, usize)>) -> Vec<(T, T, u32)> {
        let mut events: Vec<(T, bool, usize)> = Vec::with_capacity(iv.len() * 2);
        for &(lo, hi, r) in &iv {
            events.push((lo, true, r));
            if let Some(n) = hi.succ() {
                events.push((n, false, r));
            }
        }
        iv.clear();
        events.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(T, T, u32)> = vec![];
        let mut active: BTreeSet<usize> = BTreeSet::new();
        let mut hash = 0u128;
        let mut pos = T::MIN;
        let mut i = 0;
        loop {
            // Apply all events at `pos`.
            while i < events.len() && events[i].0 == pos {
                let (_, start, r) = events[i];
                if start {
                    active.insert(r);
                } else {
                    active.remove(&r);
                }
                hash ^= self.keys[r];
                i += 1;
            }
            let next = if i < events.len() { events[i].0 } else { T::MAX };
            let end = if i < events.len() { next.pred().expect("next > pos") } else { T::MAX };
            let class = match self.ids.get(&hash) {
                Some(&c) => c,
                None => {
                    let c = self.ids.len() as u32;
                    self.ids.insert(hash, c);
                    for &r in &active {
                        self.of_rule[r].push(c);
                    }
                    c
                }
            };
            match out.last_mut() {
                Some(last) if last.2 == class => last.1 = end,
                _ => out.push((pos, end, class)),
            }
            if i >= events.len() {
                break;
            }
            pos = next;
        }
        out
    }
}

/// Disjoint atoms of (lo, hi, rule) ranges, each with the rules covering it.
fn atoms<T: crate::model::addr::Point>(items: &[(T, T, RuleId)]) -> Vec<(T, T, Rules)> {
    let mut events: Vec<(T, bool, RuleId)> = vec![];
    for &(lo, hi, r) in items {
        events.push((lo, true, r));
        if let Some(n) = hi.succ() {
            events.push((n, false, r));
        }
    }
    events.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<(T, T, Rules)> = vec![];
    let mut active: BTreeSet<RuleId> = BTreeSet::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, r) = events[i];
            if start {
                active.insert(r);
            } else {
                active.remove(&r);
            }
            i += 1;
        }
        if active.is_empty() {
            continue;
        }
        let end = if i < events.len() { events[i].0.pred().expect("ordered") } else { T::MAX };
        let rules: Rules = active.iter().copied().collect();
        match out.last_mut() {
            Some(last) if last.2 == rules && last.1.succ() == Some(pos) => last.1 = end,
            _ => out.push((pos, end, rules)),
        }
    }
    out
}

/// The contexts of each side: LOCAL, OTHER, then one per zone that has interfaces.
pub fn contexts(p: &Policy) -> Vec<u8> {
    let mut v = vec![LOCAL, OTHER];
    v.extend(p.zones.iter().enumerate().filter(|(_, z)| !z.ifaces.is_empty()).map(|(i, _)| zone_ctx(i)));
    v
}

pub fn build(p: &Policy) -> Decision {
    let ctxs = contexts(p);
    let rules: Vec<RuleId> = (0..p.rules.len()).filter(|&r| p.rules[r].active()).collect();
    let n = p.rules.len();
    let mut src_cls = Classifier::new(n);
    let mut dst_cls = Classifier::new(n);
    let mut src_zones: Vec<Vec<u8>> = vec![vec![]; n];
    let mut dst_zones: Vec<Vec<u8>> = vec![vec![]; n];
    let mut src_maps = vec![];
    let mut dst_maps = vec![];
    let mut output_relevant = false;
    for &ctx in &ctxs {
        for (is_src, cls, zones, maps) in
            [(true, &mut src_cls, &mut src_zones, &mut src_maps), (false, &mut dst_cls, &mut dst_zones, &mut dst_maps)]
        {
            let mut v4 = vec![];
            let mut v6 = vec![];
            for &r in &rules {
                let rule = &p.rules[r];
                let side = if is_src { &rule.from } else { &rule.to };
                match side_in(p, side, ctx) {
                    InCtx::No => {}
                    InCtx::Broad => zones[r].push(ctx),
                    InCtx::Addrs(a) => {
                        v4.extend(a.v4.ranges().iter().map(|&(l, h)| (l, h, r)));
                        v6.extend(a.v6.ranges().iter().map(|&(l, h)| (l, h, r)));
                    }
                }
                if is_src && ctx == LOCAL && rule.action == Action::Deny && !matches!(side_in(p, side, ctx), InCtx::No) {
                    output_relevant = true;
                }
            }
            let map = ClassMap { v4: cls.sweep(v4), v6: cls.sweep(v6) };
            maps.push((ctx, map));
        }
    }
    let mut cells: HashMap<(Action, KeyKind, KeyKind, u32, u32), Vec<RuleId>> = HashMap::new();
    for &r in &rules {
        let rule = &p.rules[r];
        let ctx_key = |c: u8| u32::from(c) << 24;
        let srcs: Vec<(KeyKind, u32, Option<u8>)> = src_zones[r]
            .iter()
            .map(|&c| (KeyKind::Zone, ctx_key(c), Some(c)))
            .chain(src_cls.of_rule[r].iter().map(|&c| (KeyKind::Class, c, None)))
            .collect();
        let dsts: Vec<(KeyKind, u32, Option<u8>)> = dst_zones[r]
            .iter()
            .map(|&c| (KeyKind::Zone, ctx_key(c), Some(c)))
            .chain(dst_cls.of_rule[r].iter().map(|&c| (KeyKind::Class, c, None)))
            .collect();
        for &(sk, sv, sc) in &srcs {
            for &(dk, dv, dc) in &dsts {
                if sc == Some(LOCAL) && dc == Some(LOCAL) {
                    continue; // loopback, always accepted
                }
                cells.entry((rule.action, sk, dk, sv, dv)).or_default().push(r);
            }
        }
    }
    let mut layers: Vec<Layer> = vec![];
    let order = [Action::Deny, Action::Allow];
    let kinds = [(KeyKind::Class, KeyKind::Class), (KeyKind::Class, KeyKind::Zone), (KeyKind::Zone, KeyKind::Class), (KeyKind::Zone, KeyKind::Zone)];
    for a in order {
        for (sk, dk) in kinds {
            layers.push(Layer { action: Some(a), src: Some(sk), dst: Some(dk), ..Default::default() });
        }
    }
    let layer_ix = |a: Action, sk: KeyKind, dk: KeyKind| {
        order.iter().position(|x| *x == a).unwrap() * 4 + kinds.iter().position(|k| *k == (sk, dk)).unwrap()
    };
    let mut keys: Vec<_> = cells.keys().copied().collect();
    keys.sort_unstable_by_key(|k| (k.0 == Action::Allow, k.1, k.2, k.3, k.4));
    for k in keys {
        let rs = &cells[&k];
        let layer = &mut layers[layer_ix(k.0, k.1, k.2)];
        let (sv, dv) = (k.3, k.4);
        let svc = |f: &dyn Fn(&ServiceSet) -> Vec<(u16, u16)>| -> Vec<(u16, u16, RuleId)> {
            rs.iter().flat_map(|&r| f(&p.rules[r].services).into_iter().map(move |(a, b)| (a, b, r))).collect()
        };
        for (proto, items) in [
            (6u8, svc(&|s: &ServiceSet| s.tcp.ranges().to_vec())),
            (17u8, svc(&|s: &ServiceSet| s.udp.ranges().to_vec())),
        ] {
            for (lo, hi, rules) in atoms(&items) {
                if lo == hi {
                    layer.exact.push(((sv, dv, proto, lo), rules));
                } else {
                    layer.ranges.push(((sv, dv, proto, lo, hi), rules));
                }
            }
        }
        let icmp = |v6: bool| -> Vec<(u8, u8, RuleId)> {
            rs.iter()
                .flat_map(|&r| {
                    let s = &p.rules[r].services;
                    let set = if v6 { &s.icmpv6 } else { &s.icmp };
                    set.ranges().iter().map(move |&(a, b)| (a, b, r)).collect::<Vec<_>>()
                })
                .collect()
        };
        for (lo, hi, rules) in atoms(&icmp(false)) {
            for t in lo..=hi {
                layer.icmp4.push(((sv, dv, t), rules.clone()));
            }
        }
        for (lo, hi, rules) in atoms(&icmp(true)) {
            for t in lo..=hi {
                layer.icmp6.push(((sv, dv, t), rules.clone()));
            }
        }
    }
    layers.retain(|l| !l.is_empty());
    Decision {
        src: src_maps,
        dst: dst_maps,
        layers,
        src_classes: src_cls.ids.len(),
        dst_classes: dst_cls.ids.len(),
        output_relevant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_split_overlaps() {
        let a = atoms(&[(10u16, 20, 0), (15, 30, 1), (40, 40, 2)]);
        assert_eq!(a, vec![(10, 14, vec![0]), (15, 20, vec![0, 1]), (21, 30, vec![1]), (40, 40, vec![2])]);
    }

    #[test]
    fn sweep_covers_the_whole_space_with_signature_classes() {
        let mut c = Classifier::new(3);
        let m = c.sweep(vec![(10u32, 20, 0), (15, 30, 1), (100, 110, 0), (105, 110, 1)]);
        // [0,9] none, [10,14] {0}, [15,20] {0,1}, [21,30] {1}, [31,99] none, [100,104] {0}, [105,110] {0,1}, rest none
        assert_eq!(m.first().unwrap().0, 0);
        assert_eq!(m.last().unwrap().1, u32::MAX);
        let class_at = |x: u32| m.iter().find(|&&(l, h, _)| l <= x && x <= h).unwrap().2;
        assert_eq!(class_at(12), class_at(102));
        assert_eq!(class_at(17), class_at(107));
        assert_ne!(class_at(12), class_at(17));
        assert_eq!(class_at(5), 0);
        assert_eq!(c.of_rule[0].len(), 2);
    }
}
