//! Policy rules → a decision structure that costs a packet a constant number of lookups.
//!
//! Input: the active rules of a resolved [`Policy`].
//! Output: a [`Decision`]: per-context address→class maps, and decision layers keyed by
//! (source key, destination key, protocol, port) whose elements are disjoint.
//!
//! How: a packet's *context* on each side is the appliance itself (`LOCAL`), an
//! interface zone, or an unknown interface (`OTHER`). In a context, each term of a
//! rule side is *broad* (every address there: `any`, `self`, a zone without
//! networks), *coarse* (a group, a zone's networks) or *fine* (a host, a peer, a
//! literal address or CIDR). Coarse and fine terms are classified separately: an
//! address's class in a family is the exact set of rules whose terms of that
//! family contain it (its *signature*). Keeping families apart stops host-level
//! rules from splitting groups into many classes (which would multiply every
//! group-to-group rule). One 32-bit mark carries, in separate bit fields, the
//! context id, the coarse class and the fine class; each field is as wide as its
//! largest value needs, and a policy whose fields do not fit 32 bits is refused
//! ([`MarkOverflow`]), never truncated. A rule becomes cells keyed by
//! one field on each side — nine layer kinds per action, only the non-empty ones
//! emitted. Deny layers are looked up first, then allow layers: the first hit
//! decides, which is exactly "allowed iff some allow matches and no deny does".
//! Must not: depend on rule order, or emit overlapping elements into one map.

use crate::model::addr::AddrSet;
use crate::model::{Action, Policy, Proto, RuleId, ServiceSet, Side};
use std::collections::{BTreeSet, HashMap};

/// A packet's context id: [`LOCAL`], [`OTHER`], or [`zone_ctx`] of an interface zone.
/// As wide as the mark it is packed into: any number of zones gets distinct ids.
pub type Ctx = u32;

pub const LOCAL: Ctx = 1;
pub const OTHER: Ctx = 2;
/// The context id of the first zone (zone index 0).
const FIRST_ZONE: Ctx = 3;

/// Port ranges narrower than this are expanded into exact elements.
pub const EXPAND_PORTS: u32 = 64;

/// The context id of the zone with index `zone`: `3 + zone`. An index whose id
/// would not fit a [`Ctx`] maps to `Ctx::MAX`, which [`build`] refuses (with the
/// zone's location) before any id is used, so ids of a compiled policy are exact.
pub fn zone_ctx(zone: usize) -> Ctx {
    Ctx::try_from(zone).ok().and_then(|z| z.checked_add(FIRST_ZONE)).unwrap_or(Ctx::MAX)
}

/// The zone index of a zone context id (`None` for [`LOCAL`] and [`OTHER`]).
pub fn ctx_zone(ctx: Ctx) -> Option<usize> {
    ctx.checked_sub(FIRST_ZONE).and_then(|z| usize::try_from(z).ok())
}

pub fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
        Proto::Icmpv6 => 58,
    }
}

/// Which field of a side's mark a layer keys on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The context (zone of the interface, the appliance, or unknown).
    Zone,
    /// The coarse class (groups, zone networks).
    Coarse,
    /// The fine class (hosts, peers, literal addresses).
    Fine,
}

impl KeyKind {
    fn letter(self) -> char {
        match self {
            KeyKind::Zone => 'z',
            KeyKind::Coarse => 'c',
            KeyKind::Fine => 'f',
        }
    }
}

/// Where each field sits in a side's 32-bit mark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packing {
    pub fine_bits: u32,
    pub coarse_bits: u32,
    pub zone_bits: u32,
}

fn bits_for(max: u64) -> u32 {
    64 - max.leading_zeros()
}

impl Packing {
    pub fn shift(&self, k: KeyKind) -> u32 {
        match k {
            KeyKind::Fine => 0,
            KeyKind::Coarse => self.fine_bits,
            KeyKind::Zone => 32 - self.zone_bits,
        }
    }
    pub fn mask(&self, k: KeyKind) -> u32 {
        let width = match k {
            KeyKind::Fine => self.fine_bits,
            KeyKind::Coarse => self.coarse_bits,
            KeyKind::Zone => self.zone_bits,
        };
        if width == 0 {
            0
        } else {
            (((1u64 << width) - 1) << self.shift(k)) as u32
        }
    }
    pub fn put(&self, k: KeyKind, v: u32) -> u32 {
        v << self.shift(k)
    }
    pub fn zone(&self, ctx: Ctx) -> u32 {
        self.put(KeyKind::Zone, ctx)
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
    /// Masks applied to the source mark and the destination (conntrack) mark.
    pub smask: u32,
    pub dmask: u32,
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
    pub src: Vec<(Ctx, ClassMap)>,
    /// Context id → destination class map.
    pub dst: Vec<(Ctx, ClassMap)>,
    /// Deny layers first, then allow layers; empty layers are left out.
    pub layers: Vec<Layer>,
    pub src_classes: usize,
    pub dst_classes: usize,
    pub src_pack: Packing,
    pub dst_pack: Packing,
    /// Whether any rule can affect the appliance's own traffic (output path).
    pub output_relevant: bool,
    /// The class ids given to each signature (input to the next compilation).
    pub alloc: Allocation,
}

impl Decision {
    pub fn src_map(&self, ctx: Ctx) -> &ClassMap {
        &self.src.iter().find(|(c, _)| *c == ctx).expect("every context has a map").1
    }
    pub fn dst_map(&self, ctx: Ctx) -> &ClassMap {
        &self.dst.iter().find(|(c, _)| *c == ctx).expect("every context has a map").1
    }
}

/// A rule side in one context: broad, or coarse and fine address sets.
struct Terms {
    broad: bool,
    coarse: AddrSet,
    fine: AddrSet,
}

impl Terms {
    fn applies(&self) -> bool {
        self.broad || !self.coarse.is_empty() || !self.fine.is_empty()
    }
}

fn terms_in(p: &Policy, s: &Side, ctx: Ctx) -> Terms {
    let mut t = Terms { broad: s.any || (ctx == LOCAL && s.self_), coarse: s.coarse.clone(), fine: s.fine.clone() };
    if let Some(z) = ctx_zone(ctx) {
        if s.zones.contains(&z) {
            match &p.zones[z].networks {
                None => t.broad = true,
                Some(n) => t.coarse = t.coarse.union(n),
            }
        }
        for (sz, a) in &s.scoped {
            if *sz == z {
                t.fine = t.fine.union(a);
            }
        }
    }
    t
}

/// A rule's random-looking 128-bit key, derived from its name so that the same
/// rule has the same key in every compilation (class ids can then be kept stable).
fn rule_key(name: &str) -> u128 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    u128::from_be_bytes(d[..16].try_into().expect("16 bytes"))
}

/// Class ids by signature for one (side, family), carried from one compilation to
/// the next so that unchanged classes keep their ids (and a small policy change is
/// a small change of set elements).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    /// Signature hash (hex) → class id, for src coarse, src fine, dst coarse, dst fine.
    pub families: [std::collections::BTreeMap<String, u32>; 4],
}

/// Assigns class ids by signature; remembers which classes contain each rule.
struct Classifier {
    ids: HashMap<u128, u32>,
    of_rule: Vec<Vec<u32>>,
    keys: Vec<u128>,
    /// Contexts often see the very same terms (address-only terms apply in every
    /// zone): remember the last inputs and their results.
    memo4: Vec<(Vec<(u32, u32, usize)>, Vec<(u32, u32, u32)>)>,
    memo6: Vec<(Vec<(u128, u128, usize)>, Vec<(u128, u128, u32)>)>,
}

impl Classifier {
    fn new(keys: Vec<u128>) -> Classifier {
        let mut ids = HashMap::new();
        ids.insert(0u128, 0u32);
        Classifier { ids, of_rule: vec![vec![]; keys.len()], keys, memo4: vec![], memo6: vec![] }
    }

    /// Renumber classes: ids from `prev` where the signature existed, the lowest
    /// free ids otherwise. Returns the old→new table and the new allocation.
    fn stable_ids(&self, prev: Option<&std::collections::BTreeMap<String, u32>>) -> (Vec<u32>, std::collections::BTreeMap<String, u32>) {
        let mut remap = vec![u32::MAX; self.ids.len()];
        let mut taken = std::collections::BTreeSet::new();
        let mut alloc = std::collections::BTreeMap::new();
        let mut fresh = vec![];
        for (&h, &t) in &self.ids {
            if h == 0 {
                remap[t as usize] = 0;
                continue;
            }
            let key = format!("{h:032x}");
            match prev.and_then(|p| p.get(&key)) {
                Some(&id) if id != 0 && taken.insert(id) => {
                    remap[t as usize] = id;
                    alloc.insert(key, id);
                }
                _ => fresh.push((t, key)),
            }
        }
        fresh.sort();
        let mut next = 1u32;
        for (t, key) in fresh {
            while taken.contains(&next) {
                next += 1;
            }
            taken.insert(next);
            remap[t as usize] = next;
            alloc.insert(key, next);
        }
        (remap, alloc)
    }

    fn sweep4(&mut self, iv: Vec<(u32, u32, usize)>) -> Vec<(u32, u32, u32)> {
        if let Some((_, out)) = self.memo4.iter().find(|(i, _)| *i == iv) {
            return out.clone();
        }
        let out = self.sweep(iv.clone());
        self.memo4.push((iv, out.clone()));
        out
    }

    fn sweep6(&mut self, iv: Vec<(u128, u128, usize)>) -> Vec<(u128, u128, u32)> {
        if let Some((_, out)) = self.memo6.iter().find(|(i, _)| *i == iv) {
            return out.clone();
        }
        let out = self.sweep(iv.clone());
        self.memo6.push((iv, out.clone()));
        out
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
        events.sort_unstable_by_key(|a| a.0);
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
                    // More than u32::MAX classes cannot be packed: the saturated id
                    // needs all 32 bits, which `build` refuses (MarkOverflow).
                    let c = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
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
    // One rule: its ranges are already disjoint and sorted.
    if items.iter().all(|x| x.2 == items[0].2) {
        return items.iter().map(|&(lo, hi, r)| (lo, hi, vec![r])).collect();
    }
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
pub fn contexts(p: &Policy) -> Vec<Ctx> {
    let mut v = vec![LOCAL, OTHER];
    v.extend(p.zones.iter().enumerate().filter(|(_, z)| !z.ifaces.is_empty()).map(|(i, _)| zone_ctx(i)));
    v
}

/// Two full-coverage interval lists → one, with values `a | b`.
fn merge_maps<T: crate::model::addr::Point>(a: &[(T, T, u32)], b: &[(T, T, u32)]) -> Vec<(T, T, u32)> {
    let (mut i, mut j) = (0, 0);
    let mut out: Vec<(T, T, u32)> = vec![];
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        let v = a[i].2 | b[j].2;
        match out.last_mut() {
            Some(last) if last.2 == v => last.1 = hi,
            _ => out.push((lo, hi, v)),
        }
        if a[i].1 == hi {
            i += 1;
        }
        if b[j].1 == hi {
            j += 1;
        }
    }
    out
}

/// Per context, per family, the class intervals (v4, v6) before packing.
type FamilyMaps = (Vec<(u32, u32, u32)>, Vec<(u128, u128, u32)>);

struct SideClasses {
    coarse: Classifier,
    fine: Classifier,
    zones: Vec<Vec<Ctx>>,
    per_ctx: Vec<(Ctx, FamilyMaps, FamilyMaps)>,
}

/// One side's fields (context id, coarse class, fine class) need more than the 32
/// bits of its mark (`meta mark` for the source, `ct mark` for the destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkOverflow {
    /// `true`: the source side (`meta mark`); `false`: the destination (`ct mark`).
    pub src: bool,
    pub zone_bits: u32,
    pub coarse_bits: u32,
    pub fine_bits: u32,
    /// Number of coarse and fine classes on that side (class 0 included).
    pub coarse: usize,
    pub fine: usize,
    /// The interface zone with the highest context id (what sets `zone_bits`):
    /// its name, declaration and id.
    pub zone: Option<(String, crate::diag::Span, Ctx)>,
}

impl MarkOverflow {
    pub fn total_bits(&self) -> u32 {
        self.zone_bits + self.coarse_bits + self.fine_bits
    }
}

/// The decision structure, keeping `prev`'s class ids where signatures are unchanged.
/// Kept ids can be larger than fresh ones (a policy that shrank, or an allocation
/// read back from disk): when they make a mark overflow, the ids are allocated
/// afresh, so whatever `check` accepts (it compiles without `prev`) also applies.
pub fn build(p: &Policy, prev: Option<&Allocation>) -> Result<Decision, MarkOverflow> {
    match build_once(p, prev) {
        Err(_) if prev.is_some() => build_once(p, None),
        r => r,
    }
}

fn build_once(p: &Policy, prev: Option<&Allocation>) -> Result<Decision, MarkOverflow> {
    let ctxs = contexts(p);
    // The interface zone with the highest id decides the width of the zone field.
    let last_zone = p.zones.iter().rposition(|z| !z.ifaces.is_empty());
    let rules: Vec<RuleId> = (0..p.rules.len()).filter(|&r| p.rules[r].active()).collect();
    let n = p.rules.len();
    let keys: Vec<u128> = p.rules.iter().map(|r| rule_key(&r.name)).collect();
    let mut output_relevant = false;
    let mut sides: Vec<SideClasses> = vec![];
    for is_src in [true, false] {
        let mut sc = SideClasses { coarse: Classifier::new(keys.clone()), fine: Classifier::new(keys.clone()), zones: vec![vec![]; n], per_ctx: vec![] };
        for &ctx in &ctxs {
            let (mut c4, mut c6, mut f4, mut f6) = (vec![], vec![], vec![], vec![]);
            for &r in &rules {
                let rule = &p.rules[r];
                let t = terms_in(p, if is_src { &rule.from } else { &rule.to }, ctx);
                if is_src && ctx == LOCAL && rule.action == Action::Deny && t.applies() {
                    output_relevant = true;
                }
                if t.broad {
                    sc.zones[r].push(ctx);
                    continue;
                }
                c4.extend(t.coarse.v4.ranges().iter().map(|&(l, h)| (l, h, r)));
                c6.extend(t.coarse.v6.ranges().iter().map(|&(l, h)| (l, h, r)));
                f4.extend(t.fine.v4.ranges().iter().map(|&(l, h)| (l, h, r)));
                f6.extend(t.fine.v6.ranges().iter().map(|&(l, h)| (l, h, r)));
            }
            let coarse = (sc.coarse.sweep4(c4), sc.coarse.sweep6(c6));
            let fine = (sc.fine.sweep4(f4), sc.fine.sweep6(f6));
            sc.per_ctx.push((ctx, coarse, fine));
        }
        sides.push(sc);
    }
    // Stable class ids: keep the previous compilation's id for each signature.
    let mut alloc = Allocation::default();
    let mut max_ids = [[0u32; 2]; 2];
    for (si, sc) in sides.iter_mut().enumerate() {
        for (fi, fam) in [&mut sc.coarse, &mut sc.fine].into_iter().enumerate() {
            let slot = si * 2 + fi;
            let (remap, a) = fam.stable_ids(prev.map(|p| &p.families[slot]));
            max_ids[si][fi] = a.values().copied().max().unwrap_or(0);
            alloc.families[slot] = a;
            for list in &mut fam.of_rule {
                for c in list.iter_mut() {
                    *c = remap[*c as usize];
                }
            }
            for (_, coarse, fine) in &mut sc.per_ctx {
                let maps = if fi == 0 { coarse } else { fine };
                for x in &mut maps.0 {
                    x.2 = remap[x.2 as usize];
                }
                for x in &mut maps.1 {
                    x.2 = remap[x.2 as usize];
                }
            }
        }
    }
    // The zone field holds the largest context id exactly: a zone index whose id
    // does not fit a `Ctx` got `Ctx::MAX` from `zone_ctx`, whose 32 bits leave no
    // room for the other fields, so it is refused below like any other overflow.
    let max_ctx = last_zone.map_or(OTHER, zone_ctx);
    let zone_bits = bits_for(u64::from(max_ctx));
    let pack = |si: usize| Packing {
        fine_bits: bits_for(u64::from(max_ids[si][1])),
        coarse_bits: bits_for(u64::from(max_ids[si][0])),
        zone_bits,
    };
    let packs = [pack(0), pack(1)];
    for (si, (sc, pk)) in sides.iter().zip(&packs).enumerate() {
        // A zone id of `Ctx::MAX` is saturated (see `zone_ctx`), never a real id.
        if pk.fine_bits + pk.coarse_bits + pk.zone_bits > 32 || max_ctx == Ctx::MAX {
            return Err(MarkOverflow {
                src: si == 0,
                zone_bits: pk.zone_bits,
                coarse_bits: pk.coarse_bits,
                fine_bits: pk.fine_bits,
                coarse: sc.coarse.ids.len(),
                fine: sc.fine.ids.len(),
                zone: last_zone.map(|z| (p.zones[z].name.clone(), p.zones[z].span, zone_ctx(z))),
            });
        }
    }
    let maps: Vec<Vec<(Ctx, ClassMap)>> = sides
        .iter()
        .zip(&packs)
        .map(|(sc, pk)| {
            sc.per_ctx
                .iter()
                .map(|(ctx, c, f)| {
                    let shift_c = |v: &[(u32, u32, u32)]| v.iter().map(|&(l, h, x)| (l, h, pk.put(KeyKind::Coarse, x))).collect::<Vec<_>>();
                    let shift_c6 = |v: &[(u128, u128, u32)]| v.iter().map(|&(l, h, x)| (l, h, pk.put(KeyKind::Coarse, x))).collect::<Vec<_>>();
                    (*ctx, ClassMap { v4: merge_maps(&shift_c(&c.0), &f.0), v6: merge_maps(&shift_c6(&c.1), &f.1) })
                })
                .collect()
        })
        .collect();
    let mut cell_list: Vec<((bool, KeyKind, KeyKind, u32, u32), RuleId)> = vec![];
    for &r in &rules {
        let rule = &p.rules[r];
        let keys = |sc: &SideClasses, pk: &Packing| -> Vec<(KeyKind, u32, Option<Ctx>)> {
            sc.zones[r]
                .iter()
                .map(|&c| (KeyKind::Zone, pk.zone(c), Some(c)))
                .chain(sc.coarse.of_rule[r].iter().map(|&c| (KeyKind::Coarse, pk.put(KeyKind::Coarse, c), None)))
                .chain(sc.fine.of_rule[r].iter().map(|&c| (KeyKind::Fine, pk.put(KeyKind::Fine, c), None)))
                .collect()
        };
        let srcs = keys(&sides[0], &packs[0]);
        let dsts = keys(&sides[1], &packs[1]);
        for &(sk, sv, sc) in &srcs {
            for &(dk, dv, dc) in &dsts {
                if sc == Some(LOCAL) && dc == Some(LOCAL) {
                    continue; // loopback, always accepted
                }
                cell_list.push(((rule.action == Action::Allow, sk, dk, sv, dv), r));
            }
        }
    }
    let kinds = [KeyKind::Fine, KeyKind::Coarse, KeyKind::Zone];
    let mut layers: Vec<Layer> = vec![];
    for a in [Action::Deny, Action::Allow] {
        for sk in kinds {
            for dk in kinds {
                layers.push(Layer { action: Some(a), src: Some(sk), dst: Some(dk), smask: packs[0].mask(sk), dmask: packs[1].mask(dk), ..Default::default() });
            }
        }
    }
    let layer_ix = |a: Action, sk: KeyKind, dk: KeyKind| {
        usize::from(a == Action::Allow) * 9 + kinds.iter().position(|k| *k == sk).unwrap() * 3 + kinds.iter().position(|k| *k == dk).unwrap()
    };
    cell_list.sort_unstable();
    cell_list.dedup();
    let mut start = 0;
    while start < cell_list.len() {
        let k = cell_list[start].0;
        let mut end = start;
        while end < cell_list.len() && cell_list[end].0 == k {
            end += 1;
        }
        let rs: Vec<RuleId> = cell_list[start..end].iter().map(|x| x.1).collect();
        start = end;
        let rs = &rs;
        let action = if k.0 { Action::Allow } else { Action::Deny };
        let layer = &mut layers[layer_ix(action, k.1, k.2)];
        let (sv, dv) = (k.3, k.4);
        let svc = |f: &dyn Fn(&ServiceSet) -> Vec<(u16, u16)>| -> Vec<(u16, u16, RuleId)> {
            rs.iter().flat_map(|&r| f(&p.rules[r].services).into_iter().map(move |(a, b)| (a, b, r))).collect()
        };
        for (proto, items) in [
            (6u8, svc(&|s: &ServiceSet| s.tcp.ranges().to_vec())),
            (17u8, svc(&|s: &ServiceSet| s.udp.ranges().to_vec())),
        ] {
            for (lo, hi, rules) in atoms(&items) {
                // Narrow ranges become exact (hash) elements: a concatenated interval
                // map costs far more per lookup than a hash map (pipapo vs hash).
                if u32::from(hi - lo) < EXPAND_PORTS {
                    for port in lo..=hi {
                        layer.exact.push(((sv, dv, proto, port), rules.clone()));
                    }
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
    let [src_maps, dst_maps]: [Vec<(Ctx, ClassMap)>; 2] = maps.try_into().expect("two sides");
    Ok(Decision {
        src: src_maps,
        dst: dst_maps,
        layers,
        src_classes: sides[0].coarse.ids.len() + sides[0].fine.ids.len(),
        dst_classes: sides[1].coarse.ids.len() + sides[1].fine.ids.len(),
        src_pack: packs[0],
        dst_pack: packs[1],
        output_relevant,
        alloc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let l = crate::check::load_str("t.toml", text, crate::model::Date { year: 2026, month: 11, day: 23 });
        assert!(!l.has_errors(), "{:?}", l.diags);
        l.policy.unwrap()
    }

    /// Context ids are `3 + zone index` at every index, past 255 too, and map back.
    #[test]
    fn zone_context_ids_do_not_wrap() {
        for z in [0usize, 252, 253, 254, 255, 256, 300, 65_533, 1 << 20] {
            let c = zone_ctx(z);
            assert_eq!(u64::from(c), z as u64 + 3);
            assert_eq!(ctx_zone(c), Some(z));
        }
        assert_eq!(ctx_zone(LOCAL), None);
        assert_eq!(ctx_zone(OTHER), None);
        // Past u32: saturated, which `build` can never pack.
        assert_eq!(zone_ctx(usize::MAX), Ctx::MAX);
    }

    /// A previous allocation whose ids are too wide for the mark (read back from a
    /// state file, or kept from a larger policy) does not fail a compilation that
    /// fits with fresh ids.
    #[test]
    fn stale_wide_class_ids_are_allocated_afresh() {
        let p = policy("[interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n[zones.internet]\n[[rules]]\nname = \"r\"\nfrom = \"192.0.2.1\"\nto = \"self\"\nallow = [\"ssh\"]\n");
        let fresh = build(&p, None).expect("fits");
        let mut wide = fresh.alloc.clone();
        for fam in &mut wide.families {
            for id in fam.values_mut() {
                *id = u32::MAX - 1;
            }
        }
        let again = build(&p, Some(&wide)).expect("fits with fresh ids");
        assert_eq!(again.alloc, fresh.alloc);
        assert!(build_once(&p, Some(&wide)).is_err(), "the wide ids alone overflow the mark");
    }

    #[test]
    fn atoms_split_overlaps() {
        let a = atoms(&[(10u16, 20, 0), (15, 30, 1), (40, 40, 2)]);
        assert_eq!(a, vec![(10, 14, vec![0]), (15, 20, vec![0, 1]), (21, 30, vec![1]), (40, 40, vec![2])]);
    }

    #[test]
    fn sweep_covers_the_whole_space_with_signature_classes() {
        let mut c = Classifier::new(vec![11, 22, 33]);
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
