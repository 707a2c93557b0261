//! Warnings about a valid policy: rules that can never match, expired rules, rules
//! made redundant by another, zones that match nothing.
//!
//! Input: a resolved [`Policy`]. Output: warning [`Diagnostic`]s.
//! Must not: change the policy, or emit errors (the resolver owns errors).

use super::{Action, Policy, Rule, Side};
use crate::diag::Diagnostic;

pub fn analyze(p: &Policy) -> Vec<Diagnostic> {
    let mut out = vec![];
    for z in &p.zones {
        if z.ifaces.is_empty() && z.networks.as_ref().is_none_or(|n| n.is_empty()) {
            out.push(Diagnostic::warning("empty-zone", format!("zone `{}` has no interface and no networks: it matches nothing", z.name)).at(z.span, "matches nothing"));
        }
    }
    for r in &p.rules {
        if r.expired {
            let e = r.expires.expect("expired implies a date");
            out.push(Diagnostic::warning("expired", format!("rule `{}` expired on {e}: it is not compiled", r.name)).at(r.span, "expired").note("remove it, or move `expires` forward if it is still needed"));
            continue;
        }
        if let Some(why) = never_matches(p, r) {
            out.push(Diagnostic::warning("never-matches", format!("rule `{}` can never match: {why}", r.name)).at(r.span, "this rule has no effect"));
        }
    }
    out.extend(redundant(p));
    out
}

/// Families a side can match: (IPv4, IPv6).
fn families(p: &Policy, s: &Side) -> (bool, bool) {
    if s.any || s.self_ {
        return (true, true);
    }
    let (mut v4, mut v6) = (s.addrs.has_v4(), s.addrs.has_v6());
    for (_, a) in &s.scoped {
        v4 |= a.has_v4();
        v6 |= a.has_v6();
    }
    for &z in &s.zones {
        match &p.zones[z].networks {
            None => return (true, true),
            Some(n) => {
                v4 |= n.has_v4();
                v6 |= n.has_v6();
            }
        }
    }
    (v4, v6)
}

fn never_matches(p: &Policy, r: &Rule) -> Option<String> {
    let (f4, f6) = families(p, &r.from);
    let (t4, t6) = families(p, &r.to);
    let s = &r.services;
    let svc4 = !s.tcp.is_empty() || !s.udp.is_empty() || !s.icmp.is_empty();
    let svc6 = !s.tcp.is_empty() || !s.udp.is_empty() || !s.icmpv6.is_empty();
    let ok4 = f4 && t4 && svc4;
    let ok6 = f6 && t6 && svc6;
    if ok4 || ok6 {
        if r.from.self_ && !r.from.any && r.to.self_ && !r.to.any && r.from.addrs.is_empty() && r.to.addrs.is_empty() && r.from.zones.is_empty() && r.to.zones.is_empty() {
            return Some("traffic from the appliance to itself is loopback, always accepted".into());
        }
        return None;
    }
    let fam = |a: bool, b: bool| match (a, b) {
        (true, false) => "IPv4 only",
        (false, true) => "IPv6 only",
        (true, true) => "IPv4 and IPv6",
        (false, false) => "no address family",
    };
    if !((f4 && t4) || (f6 && t6)) {
        return Some(format!("`from` is {}, `to` is {}", fam(f4, f6), fam(t4, t6)));
    }
    let both = fam(f4 && t4, f6 && t6);
    Some(format!("`from` and `to` are {both}, but its services exist only for {}", fam(svc4, svc6)))
}

/// Is every packet `a` matches also matched by `b`? (Sound, not complete: may say no
/// when the answer is yes, never the reverse.)
fn side_covers(p: &Policy, b: &Side, a: &Side) -> bool {
    if b.any {
        return true;
    }
    if a.any || (a.self_ && !b.self_) {
        return false;
    }
    if !a.addrs.is_subset(&b.addrs) {
        return false;
    }
    let scoped_ok = a.scoped.iter().all(|(z, x)| {
        x.is_subset(&b.addrs) || b.scoped.iter().any(|(bz, y)| bz == z && x.is_subset(y)) || (b.zones.contains(z) && p.zones[*z].networks.as_ref().is_none_or(|n| x.is_subset(n)))
    });
    if !scoped_ok {
        return false;
    }
    a.zones.iter().all(|&z| {
        b.zones.contains(&z) && p.zones[z].networks.is_none()
            || b.zones.contains(&z) && p.zones[z].networks.is_some()
            || p.zones[z].networks.as_ref().is_some_and(|n| n.is_subset(&b.addrs))
    })
}

fn covers(p: &Policy, b: &Rule, a: &Rule) -> bool {
    b.action == a.action
        && (!a.log || b.log)
        && (b.expires.is_none() || a.expires.is_some_and(|ae| b.expires.is_some_and(|be| be >= ae)))
        && a.services.is_subset(&b.services)
        && side_covers(p, &b.to, &a.to)
        && side_covers(p, &b.from, &a.from)
}

/// The days `check` warns ahead of a rule's `expires` (`--expiring-within`).
pub const EXPIRING_WITHIN_DAYS: u32 = 14;

/// Rules still in force that expire within `within` days of `today` (their
/// flows close on their own then): one warning each.
pub fn expiring(p: &Policy, today: super::Date, within: u32) -> Vec<Diagnostic> {
    let mut out = vec![];
    for r in p.rules.iter().filter(|r| r.active()) {
        let Some(e) = r.expires else { continue };
        // `expires` is the last day the rule is in force.
        let left = crate::sys::clock::days_between(today, e);
        if (0..i64::from(within)).contains(&left) {
            let when = match left {
                0 => "today is its last day".to_string(),
                1 => "tomorrow is its last day".to_string(),
                n => format!("in {n} days"),
            };
            out.push(
                Diagnostic::warning("expiring", format!("rule `{}` expires on {e} ({when}): the flows it allows close then", r.name))
                    .at(r.span, "expires soon")
                    .note("move `expires` forward if it is still needed"),
            );
        }
    }
    out
}

/// Above this many rules the pairwise redundancy check is skipped (it is quadratic).
pub const REDUNDANCY_LIMIT: usize = 20_000;

fn redundant(p: &Policy) -> Vec<Diagnostic> {
    let rules: Vec<&Rule> = p.rules.iter().filter(|r| r.active()).collect();
    if rules.len() > REDUNDANCY_LIMIT {
        return vec![Diagnostic::warning("analysis-skipped", format!("redundancy analysis skipped: {} rules is more than {REDUNDANCY_LIMIT}", rules.len()))];
    }
    let mut out = vec![];
    for (i, a) in rules.iter().enumerate() {
        for (j, b) in rules.iter().enumerate() {
            if i == j || !covers(p, b, a) {
                continue;
            }
            // Identical rules: report only the later one.
            if covers(p, a, b) && j > i {
                continue;
            }
            let verb = if a.action == Action::Allow { "allows" } else { "denies" };
            out.push(
                Diagnostic::warning("redundant", format!("rule `{}` is redundant: rule `{}` already {verb} everything it does", a.name, b.name))
                    .at(a.span, "redundant rule")
                    .also(b.span, "covered by this rule"),
            );
            break;
        }
    }
    out
}
