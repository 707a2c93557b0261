//! [`Ruleset`] → an `nft -f` script that replaces the `inet fwctl` table in one
//! transaction.
//!
//! Input: a compiled ruleset. Output: text. Must not: reorder anything the compiler
//! produced (output is deterministic, golden-tested).

use crate::compile::ir::*;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The whole script: create-if-missing, delete, recreate — one transaction.
pub fn script(rs: &Ruleset, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for n in &rs.notes {
        let _ = writeln!(out, "# note: {n}");
    }
    let _ = writeln!(out, "table inet {}", rs.table);
    let _ = writeln!(out, "delete table inet {}", rs.table);
    out.push_str(&table(rs));
    out
}

/// `table inet fwctl { ... }`
pub fn table(rs: &Ruleset) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table inet {} {{", rs.table);
    if let Some(ft) = &rs.flowtable {
        let devs = ft.devices.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "\tflowtable {} {{\n\t\thook ingress priority filter\n\t\tdevices = {{ {devs} }}\n\t}}\n", ft.name);
    }
    for s in &rs.sets {
        out.push_str(&set(s));
        out.push('\n');
    }
    for (i, c) in rs.chains.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if !c.comment.is_empty() {
            let _ = writeln!(out, "\t\t# {}", c.comment);
        }
        if let Some(b) = &c.base {
            let _ = writeln!(out, "\t\ttype {} hook {} priority {}; policy accept;", b.kind, b.hook, b.priority);
        }
        for r in &c.rules {
            let _ = writeln!(out, "\t\t{r}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

pub fn set(s: &Set) -> String {
    let mut out = String::new();
    let kind = if s.data.is_some() { "map" } else { "set" };
    let key = s.key.iter().map(|k| k.nft()).collect::<Vec<_>>().join(" . ");
    let data = match &s.data {
        None => String::new(),
        Some(SetData::Mark) => " : mark".into(),
        Some(SetData::Verdict) => " : verdict".into(),
        Some(SetData::NatV4) => " : ipv4_addr . inet_service".into(),
        Some(SetData::NatV6) => " : ipv6_addr . inet_service".into(),
    };
    let _ = writeln!(out, "\t{kind} {} {{", s.name);
    let _ = writeln!(out, "\t\ttype {key}{data}");
    if s.interval {
        let _ = writeln!(out, "\t\tflags interval");
    }
    if s.counter {
        let _ = writeln!(out, "\t\tcounter");
    }
    if !s.comment.is_empty() {
        let _ = writeln!(out, "\t\tcomment \"{}\"", s.comment);
    }
    if !s.elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{");
        let n = s.elements.len();
        for (i, e) in s.elements.iter().enumerate() {
            let sep = if i + 1 < n { "," } else { "" };
            let _ = writeln!(out, "\t\t\t{}{sep}", elem(e));
        }
        let _ = writeln!(out, "\t\t}}");
    }
    let _ = writeln!(out, "\t}}");
    out
}

pub fn elem(e: &Elem) -> String {
    let mut s = e.key.iter().map(val).collect::<Vec<_>>().join(" . ");
    if let Some(c) = &e.comment {
        let _ = write!(s, " comment \"{c}\"");
    }
    if let Some(d) = &e.data {
        let _ = write!(s, " : {}", val(d));
    }
    s
}

fn v4_prefix(lo: u32, hi: u32) -> Option<u8> {
    let span = hi.wrapping_sub(lo);
    if lo == 0 && hi == u32::MAX {
        return Some(0);
    }
    let size = span.checked_add(1)?;
    (size.is_power_of_two() && lo & span == 0).then(|| 32 - size.trailing_zeros() as u8)
}

fn v6_prefix(lo: u128, hi: u128) -> Option<u8> {
    let span = hi.wrapping_sub(lo);
    if lo == 0 && hi == u128::MAX {
        return Some(0);
    }
    let size = span.checked_add(1)?;
    (size.is_power_of_two() && lo & span == 0).then(|| 128 - size.trailing_zeros() as u8)
}

pub fn val(v: &Val) -> String {
    match v {
        Val::V4(lo, hi) => match v4_prefix(*lo, *hi) {
            Some(32) => Ipv4Addr::from(*lo).to_string(),
            Some(l) => format!("{}/{l}", Ipv4Addr::from(*lo)),
            None => format!("{}-{}", Ipv4Addr::from(*lo), Ipv4Addr::from(*hi)),
        },
        Val::V6(lo, hi) => match v6_prefix(*lo, *hi) {
            Some(128) => Ipv6Addr::from(*lo).to_string(),
            Some(l) => format!("{}/{l}", Ipv6Addr::from(*lo)),
            None => format!("{}-{}", Ipv6Addr::from(*lo), Ipv6Addr::from(*hi)),
        },
        Val::Mark(m) => format!("0x{m:08x}"),
        Val::Proto(6) => "tcp".into(),
        Val::Proto(17) => "udp".into(),
        Val::Proto(p) => p.to_string(),
        Val::Port(a, b) if a == b => a.to_string(),
        Val::Port(a, b) => format!("{a}-{b}"),
        Val::Icmp(t) => t.to_string(),
        Val::Ifname(n) => format!("\"{n}\""),
        Val::Verdict(Verdict::Accept) => "accept".into(),
        Val::Verdict(Verdict::Drop) => "drop".into(),
        Val::Verdict(Verdict::Goto(c)) => format!("goto {c}"),
        Val::NatV4(a, p) => format!("{} . {p}", Ipv4Addr::from(*a)),
        Val::NatV6(a, p) => format!("{} . {p}", Ipv6Addr::from(*a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_as_nft_expects() {
        assert_eq!(val(&Val::V4(0, u32::MAX)), "0.0.0.0/0");
        assert_eq!(val(&Val::V4(0xc0000200, 0xc00002ff)), "192.0.2.0/24");
        assert_eq!(val(&Val::V4(0xc0000201, 0xc0000201)), "192.0.2.1");
        assert_eq!(val(&Val::V4(0xc0000201, 0xc0000205)), "192.0.2.1-192.0.2.5");
        assert_eq!(val(&Val::V6(0, u128::MAX)), "::/0");
        assert_eq!(val(&Val::Port(1000, 2000)), "1000-2000");
        assert_eq!(val(&Val::Verdict(Verdict::Goto("allow".into()))), "goto allow");
    }
}
