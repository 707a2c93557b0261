//! Anti-spoofing: which source addresses are bound to which zones' interfaces.
//!
//! Input: the zones of a resolved [`Policy`] (interfaces, networks, `antispoof`).
//! Output: a [`Guard`]: the bound ("guarded") source addresses and, per zone, the
//! ones that are authentic on its interfaces. The compiler renders it as two sets
//! per family and a drop rule (plus a reverse-path `fib` check) in the input and
//! forward chains, ahead of the classification; the simulator walks the same sets.
//! Must not: look at rules, or share code with the evaluator (which states the
//! same semantics point by point, in `eval::source_home`).

use crate::model::addr::{AddrSet, Point, Ranges};
use crate::model::{Policy, ZoneId};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    /// Sources bound to the interfaces of their zone.
    pub guarded: AddrSet,
    /// Per zone (with interfaces, anti-spoofing on): the guarded sources that are
    /// authentic on its interfaces. Only non-empty entries.
    pub homes: Vec<(ZoneId, AddrSet)>,
}

impl Guard {
    /// Is `src`, arriving in zone `zone` (None: an undeclared device), a spoof?
    pub fn drops(&self, zone: Option<ZoneId>, src: IpAddr) -> bool {
        self.guarded.contains(src) && !zone.is_some_and(|z| self.homes.iter().any(|(h, a)| *h == z && a.contains(src)))
    }
}

/// Per-link and unspecified sources, never bound: 0.0.0.0/32, 169.254.0.0/16, ::/128, fe80::/10.
fn exempt() -> AddrSet {
    AddrSet { v4: Ranges::from_ranges(vec![(0, 0), (0xa9fe_0000, 0xa9fe_ffff)]), v6: Ranges::from_ranges(vec![(0, 0), (0xfe80u128 << 112, (0xfec0u128 << 112) - 1)]) }
}

/// The part of zone `z`'s networks (one family) where no other zone's network is
/// narrower: each range of `z`, minus the narrower ranges of the others.
fn narrowest<T: Point + Into<u128>>(nets: &[Ranges<T>], z: usize) -> Ranges<T> {
    let width = |(l, h): (T, T)| h.into() - l.into();
    let mut out = Ranges::empty();
    for &r in nets[z].ranges() {
        let narrower: Vec<(T, T)> = nets.iter().enumerate().filter(|(w, _)| *w != z).flat_map(|(_, n)| n.ranges().iter().copied().filter(|&s| width(s) < width(r))).collect();
        out = out.union(&Ranges::single(r.0, r.1).difference(&Ranges::from_ranges(narrower)));
    }
    out
}

pub fn guard(p: &Policy) -> Guard {
    let zones: Vec<(ZoneId, &AddrSet)> = p.zones.iter().enumerate().filter(|(_, z)| !z.ifaces.is_empty()).filter_map(|(i, z)| z.networks.as_ref().map(|n| (i, n))).collect();
    let v4: Vec<Ranges<u32>> = zones.iter().map(|(_, n)| n.v4.clone()).collect();
    let v6: Vec<Ranges<u128>> = zones.iter().map(|(_, n)| n.v6.clone()).collect();
    let own: Vec<(ZoneId, AddrSet)> = (0..zones.len()).map(|k| (zones[k].0, AddrSet { v4: narrowest(&v4, k), v6: narrowest(&v6, k) })).collect();
    let mut all = AddrSet::empty();
    let mut open = exempt();
    for (z, a) in &own {
        all = all.union(a);
        if !p.zones[*z].antispoof {
            open = open.union(a);
        }
    }
    let guarded = all.difference(&open);
    let homes = own.into_iter().filter(|(z, _)| p.zones[*z].antispoof).map(|(z, a)| (z, a.intersect(&guarded))).filter(|(_, a)| !a.is_empty()).collect();
    Guard { guarded, homes }
}
