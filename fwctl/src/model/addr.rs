//! Address and port sets as sorted, disjoint, inclusive ranges.
//!
//! Input: prefixes, addresses, port ranges. Output: exact set algebra (union,
//! intersection, containment) used by the resolver, the evaluator and the compiler.
//! Must not: approximate. Every operation is exact over the whole value space.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Values that ranges can be made of.
pub trait Point: Copy + Ord + std::fmt::Debug {
    const MIN: Self;
    const MAX: Self;
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

macro_rules! point {
    ($t:ty) => {
        impl Point for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            fn succ(self) -> Option<Self> {
                self.checked_add(1)
            }
            fn pred(self) -> Option<Self> {
                self.checked_sub(1)
            }
        }
    };
}
point!(u8);
point!(u16);
point!(u32);
point!(u128);

/// A set of values as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ranges<T: Point> {
    r: Vec<(T, T)>,
}

impl<T: Point> Ranges<T> {
    pub fn empty() -> Self {
        Ranges { r: vec![] }
    }
    pub fn full() -> Self {
        Ranges { r: vec![(T::MIN, T::MAX)] }
    }
    pub fn single(lo: T, hi: T) -> Self {
        assert!(lo <= hi);
        Ranges { r: vec![(lo, hi)] }
    }
    pub fn from_ranges(mut v: Vec<(T, T)>) -> Self {
        v.sort();
        let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            if let Some(last) = out.last_mut() {
                if last.1.succ().is_none_or(|n| lo <= n) {
                    if hi > last.1 {
                        last.1 = hi;
                    }
                    continue;
                }
            }
            out.push((lo, hi));
        }
        Ranges { r: out }
    }
    pub fn ranges(&self) -> &[(T, T)] {
        &self.r
    }
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.r == [(T::MIN, T::MAX)]
    }
    pub fn contains(&self, x: T) -> bool {
        match self.r.binary_search_by(|&(lo, _)| lo.cmp(&x)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.r[i - 1].1 >= x,
        }
    }
    pub fn union(&self, o: &Self) -> Self {
        let mut v = self.r.clone();
        v.extend_from_slice(&o.r);
        Self::from_ranges(v)
    }
    pub fn intersect(&self, o: &Self) -> Self {
        let (mut i, mut j, mut out) = (0, 0, vec![]);
        while i < self.r.len() && j < o.r.len() {
            let lo = self.r[i].0.max(o.r[j].0);
            let hi = self.r[i].1.min(o.r[j].1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if self.r[i].1 < o.r[j].1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges { r: out }
    }
    /// The values of `self` that are not in `o`.
    pub fn difference(&self, o: &Self) -> Self {
        let mut out = vec![];
        let mut j = 0;
        for &(lo, hi) in &self.r {
            let mut cur = Some(lo);
            while j < o.r.len() && o.r[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            while let Some(c) = cur {
                if k >= o.r.len() || o.r[k].0 > hi {
                    out.push((c, hi));
                    break;
                }
                let (olo, ohi) = o.r[k];
                if olo > c {
                    out.push((c, olo.pred().expect("olo > c")));
                }
                cur = if ohi >= hi { None } else { ohi.succ() };
                k += 1;
            }
        }
        Ranges { r: out }
    }
    pub fn intersects(&self, o: &Self) -> bool {
        !self.intersect(o).is_empty()
    }
    /// Every value of `self` is in `o`.
    pub fn is_subset(&self, o: &Self) -> bool {
        self.r.iter().all(|&(lo, hi)| match o.r.binary_search_by(|&(l, _)| l.cmp(&lo)) {
            Ok(k) => o.r[k].1 >= hi,
            Err(0) => false,
            Err(k) => o.r[k - 1].0 <= lo && o.r[k - 1].1 >= hi,
        })
    }
    pub fn first(&self) -> Option<T> {
        self.r.first().map(|r| r.0)
    }
}

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrSet {
    pub v4: Ranges<u32>,
    pub v6: Ranges<u128>,
}

impl AddrSet {
    pub fn empty() -> Self {
        AddrSet::default()
    }
    pub fn full() -> Self {
        AddrSet { v4: Ranges::full(), v6: Ranges::full() }
    }
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.v4.is_full() && self.v6.is_full()
    }
    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
    pub fn union(&self, o: &Self) -> Self {
        AddrSet { v4: self.v4.union(&o.v4), v6: self.v6.union(&o.v6) }
    }
    pub fn intersect(&self, o: &Self) -> Self {
        AddrSet { v4: self.v4.intersect(&o.v4), v6: self.v6.intersect(&o.v6) }
    }
    pub fn is_subset(&self, o: &Self) -> bool {
        self.v4.is_subset(&o.v4) && self.v6.is_subset(&o.v6)
    }
    pub fn difference(&self, o: &Self) -> Self {
        AddrSet { v4: self.v4.difference(&o.v4), v6: self.v6.difference(&o.v6) }
    }
    pub fn add_net(&mut self, n: &Net) {
        match n {
            Net::V4(a, len) => self.v4 = self.v4.union(&v4_range(*a, *len)),
            Net::V6(a, len) => self.v6 = self.v6.union(&v6_range(*a, *len)),
        }
    }
    pub fn of(nets: &[Net]) -> Self {
        let mut v4 = vec![];
        let mut v6 = vec![];
        for n in nets {
            match n {
                Net::V4(a, l) => v4.extend_from_slice(v4_range(*a, *l).ranges()),
                Net::V6(a, l) => v6.extend_from_slice(v6_range(*a, *l).ranges()),
            }
        }
        AddrSet { v4: Ranges::from_ranges(v4), v6: Ranges::from_ranges(v6) }
    }
    /// Add an inclusive range of one family (mixed families add nothing).
    pub fn add_range(&mut self, lo: IpAddr, hi: IpAddr) {
        match (lo, hi) {
            (IpAddr::V4(l), IpAddr::V4(h)) => self.v4 = self.v4.union(&Ranges::single(u32::from(l), u32::from(h))),
            (IpAddr::V6(l), IpAddr::V6(h)) => self.v6 = self.v6.union(&Ranges::single(u128::from(l), u128::from(h))),
            _ => {}
        }
    }
    pub fn has_v4(&self) -> bool {
        !self.v4.is_empty()
    }
    pub fn has_v6(&self) -> bool {
        !self.v6.is_empty()
    }
    /// A representative address of each family present (the first one).
    pub fn first_v4(&self) -> Option<Ipv4Addr> {
        self.v4.first().map(Ipv4Addr::from)
    }
    pub fn first_v6(&self) -> Option<Ipv6Addr> {
        self.v6.first().map(Ipv6Addr::from)
    }
}

/// An address or prefix, as validated from the policy (host bits must be zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    pub fn addr(a: IpAddr) -> Net {
        match a {
            IpAddr::V4(a) => Net::V4(a.into(), 32),
            IpAddr::V6(a) => Net::V6(a.into(), 128),
        }
    }
    pub fn first(&self) -> IpAddr {
        match *self {
            Net::V4(a, _) => IpAddr::V4(a.into()),
            Net::V6(a, _) => IpAddr::V6(a.into()),
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Net::V4(a, 32) => write!(f, "{}", Ipv4Addr::from(a)),
            Net::V6(a, 128) => write!(f, "{}", Ipv6Addr::from(a)),
            Net::V4(a, l) => write!(f, "{}/{l}", Ipv4Addr::from(a)),
            Net::V6(a, l) => write!(f, "{}/{l}", Ipv6Addr::from(a)),
        }
    }
}

/// Why an address or prefix was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum NetError {
    Syntax,
    PrefixTooLong(u8),
    HostBits(String),
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): on the wire the packet is
    /// IPv4, so an IPv6 match on it never matches. Carries the IPv4 spelling.
    Mapped(String),
}

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:0:0/96`) stands for.
fn mapped_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let x = u128::from(a);
    (x >> 32 == 0xffff).then(|| Ipv4Addr::from(x as u32))
}

/// Parse one address (no prefix). IPv4-mapped IPv6 addresses are refused.
pub fn parse_addr(s: &str) -> Result<IpAddr, NetError> {
    let ip: IpAddr = s.parse().map_err(|_| NetError::Syntax)?;
    if let IpAddr::V6(a) = ip {
        if let Some(v4) = mapped_v4(a) {
            return Err(NetError::Mapped(v4.to_string()));
        }
    }
    Ok(ip)
}

/// Whether a name would read as an address: it parses as an address or a CIDR
/// (even one refused for host bits or a long prefix), or it is made of digits and
/// dots only (`10.1`, `2024`), which people and `inet_aton` read as addresses.
/// Such a name would shadow the address it spells.
pub fn looks_like_address(s: &str) -> bool {
    let digits_and_dots = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') && s.chars().any(|c| c.is_ascii_digit());
    digits_and_dots || s.parse::<IpAddr>().is_ok() || !matches!(parse_net(s), Err(NetError::Syntax))
}

/// Parse `"192.0.2.1"`, `"192.0.2.0/24"`, `"2001:db8::/64"`. Host bits must be zero;
/// IPv4-mapped IPv6 addresses and prefixes inside `::ffff:0:0/96` are refused.
pub fn parse_net(s: &str) -> Result<Net, NetError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| NetError::Syntax)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(l) if l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty() => l.parse().map_err(|_| NetError::Syntax)?,
        Some(_) => return Err(NetError::Syntax),
        None => max,
    };
    if len > max {
        return Err(NetError::PrefixTooLong(max));
    }
    if let (IpAddr::V6(a), true) = (ip, len >= 96) {
        if let Some(v4) = mapped_v4(a) {
            let v4 = if len == 128 { v4.to_string() } else { format!("{v4}/{}", len - 96) };
            return Err(NetError::Mapped(v4));
        }
    }
    let net = match ip {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            if a & !mask != 0 {
                return Err(NetError::HostBits(format!("{}/{len}", Ipv4Addr::from(a & mask))));
            }
            Net::V4(a, len)
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            if a & !mask != 0 {
                return Err(NetError::HostBits(format!("{}/{len}", Ipv6Addr::from(a & mask))));
            }
            Net::V6(a, len)
        }
    };
    Ok(net)
}

pub fn v4_range(a: u32, len: u8) -> Ranges<u32> {
    let span = if len == 0 { u32::MAX } else { (1u32 << (32 - len as u32)).wrapping_sub(1) };
    Ranges::single(a, a | span)
}

pub fn v6_range(a: u128, len: u8) -> Ranges<u128> {
    let span = if len == 0 { u128::MAX } else { (1u128 << (128 - len as u32)).wrapping_sub(1) };
    Ranges::single(a, a | span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_nets() {
        assert_eq!(parse_net("192.0.2.0/24"), Ok(Net::V4(0xc0000200, 24)));
        assert_eq!(parse_net("192.0.2.1/24"), Err(NetError::HostBits("192.0.2.0/24".into())));
        assert_eq!(parse_net("192.0.2.1/33"), Err(NetError::PrefixTooLong(32)));
        assert_eq!(parse_net("2001:db8::/32"), Ok(Net::V6(0x20010db8 << 96, 32)));
        assert_eq!(parse_net("nope"), Err(NetError::Syntax));
        assert_eq!(parse_net("0.0.0.0/0"), Ok(Net::V4(0, 0)));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_refused_with_its_ipv4_spelling() {
        assert_eq!(parse_net("::ffff:192.0.2.1"), Err(NetError::Mapped("192.0.2.1".into())));
        assert_eq!(parse_net("::ffff:c000:200/120"), Err(NetError::Mapped("192.0.2.0/24".into())));
        assert_eq!(parse_addr("::ffff:192.0.2.1"), Err(NetError::Mapped("192.0.2.1".into())));
        // A prefix that merely contains the mapped range is an ordinary IPv6 prefix.
        assert!(parse_net("::/64").is_ok());
        assert!(parse_addr("2001:db8::1").is_ok());
    }

    #[test]
    fn names_that_read_as_addresses() {
        for s in ["198.51.100.7", "192.0.2.1/24", "10.1", "2024", "1.2.3.4/99", "::1", "0"] {
            assert!(looks_like_address(s), "{s}");
        }
        for s in ["db03", "web-1", "wg0.alice", "v1.2", ".", ""] {
            assert!(!looks_like_address(s), "{s}");
        }
    }

    #[test]
    fn merge_adjacent() {
        let r = Ranges::from_ranges(vec![(5u16, 7), (1, 4), (10, 12)]);
        assert_eq!(r.ranges(), &[(1, 7), (10, 12)]);
        assert!(Ranges::from_ranges(vec![(0u8, 10), (11, 255)]).is_full());
    }

    fn arb() -> impl Strategy<Value = Ranges<u8>> {
        proptest::collection::vec((any::<u8>(), any::<u8>()), 0..6)
            .prop_map(|v| Ranges::from_ranges(v.into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect()))
    }

    proptest! {
        #[test]
        fn algebra_matches_membership(a in arb(), b in arb()) {
            let u = a.union(&b);
            let i = a.intersect(&b);
            let d = a.difference(&b);
            for x in 0..=255u8 {
                prop_assert_eq!(u.contains(x), a.contains(x) || b.contains(x));
                prop_assert_eq!(d.contains(x), a.contains(x) && !b.contains(x));
                prop_assert_eq!(i.contains(x), a.contains(x) && b.contains(x));
            }
            let sub = (0..=255u8).all(|x| !a.contains(x) || b.contains(x));
            prop_assert_eq!(a.is_subset(&b), sub);
        }
    }
}
