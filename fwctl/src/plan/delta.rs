//! Ruleset → ruleset difference: the minimal change a machine executes.
//!
//! Input: the previous and the desired [`Ruleset`]. Output: a [`Delta`] — set
//! elements to delete and add, per set, as nft text and as typed IR elements (for
//! [`super::nl`]) — when the two differ only in set contents; otherwise the chains or set declarations changed and the whole table
//! must be replaced (still in one transaction). Also renders the delta as an
//! `nft -f` script (one transaction) and counts, for the person, what changed.
//! Must not: touch the kernel.

use crate::compile::ir::{Elem, KeyType, Ruleset, Set, SetData};
use crate::render::nft::elem;
use std::collections::{BTreeMap, HashSet};

/// One set's change, with two faces: `removed`/`added` as nft writes them (what a
/// person reads, what the `nft -f` script and the plan JSON carry) and `typed`, the
/// same elements as IR values (what the netlink writer encodes).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetDelta {
    pub set: String,
    /// Keys (maps: the key only, as `delete element` wants it).
    pub removed: Vec<String>,
    pub added: Vec<String>,
    #[serde(skip)]
    pub typed: TypedSetDelta,
}

/// The typed face of a [`SetDelta`]: the set's declaration and the elements, in the
/// same order as the text lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypedSetDelta {
    pub key: Vec<KeyType>,
    pub data: Option<SetData>,
    pub interval: bool,
    /// The set held no element before the change.
    pub was_empty: bool,
    /// Whole elements of the previous ruleset (a writer deletes by key).
    pub removed: Vec<Elem>,
    pub added: Vec<Elem>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    pub sets: Vec<SetDelta>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.added.is_empty() && s.removed.is_empty())
    }
    pub fn counts(&self) -> (usize, usize) {
        (self.sets.iter().map(|s| s.added.len()).sum(), self.sets.iter().map(|s| s.removed.len()).sum())
    }
}

/// What differs between two rulesets, for a person: element changes per set and
/// chains whose rules changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RulesetChange {
    pub sets: Vec<SetDelta>,
    pub sets_added: Vec<String>,
    pub sets_removed: Vec<String>,
    pub chains_changed: Vec<String>,
    /// True when only set elements differ (the change can be applied as a delta).
    pub elements_only: bool,
}

impl RulesetChange {
    /// The element delta, when only set contents differ (as [`delta`] gives it).
    pub fn delta(&self) -> Option<Delta> {
        self.elements_only.then(|| Delta { sets: self.sets.clone() })
    }
}

fn declaration(s: &Set) -> (&Vec<crate::compile::ir::KeyType>, &Option<crate::compile::ir::SetData>, bool, bool) {
    (&s.key, &s.data, s.interval, s.counter)
}

/// The key of an element as nft writes it for `delete element` (maps: key only).
fn key_text(e: &Elem) -> String {
    e.key.iter().map(crate::render::nft::val).collect::<Vec<_>>().join(" . ")
}

fn set_delta(old: &Set, new: &Set) -> SetDelta {
    let o: HashSet<String> = old.elements.iter().map(elem).collect();
    let n: HashSet<String> = new.elements.iter().map(elem).collect();
    let mut removed: Vec<(String, &Elem)> = old.elements.iter().filter(|e| !n.contains(&elem(e))).map(|e| (key_text(e), e)).collect();
    let mut added: Vec<(String, &Elem)> = new.elements.iter().map(|e| (elem(e), e)).filter(|(t, _)| !o.contains(t)).collect();
    removed.sort_by(|a, b| a.0.cmp(&b.0));
    added.sort_by(|a, b| a.0.cmp(&b.0));
    let typed = TypedSetDelta {
        key: new.key.clone(),
        data: new.data.clone(),
        interval: new.interval,
        was_empty: old.elements.is_empty(),
        removed: removed.iter().map(|(_, e)| (*e).clone()).collect(),
        added: added.iter().map(|(_, e)| (*e).clone()).collect(),
    };
    SetDelta { set: new.name.clone(), removed: removed.into_iter().map(|(t, _)| t).collect(), added: added.into_iter().map(|(t, _)| t).collect(), typed }
}

pub fn compare(old: &Ruleset, new: &Ruleset) -> RulesetChange {
    let olds: BTreeMap<&str, &Set> = old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let news: BTreeMap<&str, &Set> = new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut ch = RulesetChange::default();
    let mut decl_same = true;
    for (name, n) in &news {
        match olds.get(name) {
            None => {
                ch.sets_added.push(name.to_string());
                decl_same = false;
            }
            Some(o) => {
                if declaration(o) != declaration(n) {
                    decl_same = false;
                    ch.sets_added.push(name.to_string());
                    ch.sets_removed.push(name.to_string());
                }
                let d = set_delta(o, n);
                if !d.added.is_empty() || !d.removed.is_empty() {
                    ch.sets.push(d);
                }
            }
        }
    }
    for name in olds.keys() {
        if !news.contains_key(name) {
            ch.sets_removed.push(name.to_string());
            decl_same = false;
        }
    }
    let oc: BTreeMap<&str, _> = old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let nc: BTreeMap<&str, _> = new.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    for (name, c) in &nc {
        if oc.get(name).is_none_or(|o| o.rules != c.rules || o.base != c.base) {
            ch.chains_changed.push(name.to_string());
        }
    }
    for name in oc.keys() {
        if !nc.contains_key(name) {
            ch.chains_changed.push(name.to_string());
        }
    }
    ch.elements_only = decl_same && ch.chains_changed.is_empty() && old.flowtable == new.flowtable;
    ch
}

/// The element delta, when only set contents differ.
pub fn delta(old: &Ruleset, new: &Ruleset) -> Option<Delta> {
    let c = compare(old, new);
    c.elements_only.then_some(Delta { sets: c.sets })
}

/// One `nft -f` transaction applying a delta: deletions first, then additions.
pub fn script(table: &str, d: &Delta) -> String {
    let mut out = String::new();
    for s in &d.sets {
        for chunk in s.removed.chunks(512) {
            out.push_str(&format!("delete element inet {table} {} {{ {} }}\n", s.set, chunk.join(", ")));
        }
    }
    for s in &d.sets {
        for chunk in s.added.chunks(512) {
            out.push_str(&format!("add element inet {table} {} {{ {} }}\n", s.set, chunk.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::load_str;
    use crate::compile::{compile, compile_with, Capabilities};
    use crate::model::Date;

    const TODAY: Date = Date { year: 2026, month: 11, day: 23 };

    #[test]
    fn one_host_change_in_a_large_policy_is_a_small_delta() {
        let shape = crate::gen::Shape::for_rules(3000);
        let text = crate::gen::policy(&shape, 9);
        let p1 = load_str("a.toml", &text, TODAY).policy.unwrap();
        let c1 = compile(&p1, Capabilities { flowtable: false }).unwrap();
        // Move one host to another address.
        let (old, new) = ("h17 = [\"10.2.0.6\", \"fd00:2::0:6\"]", "h17 = [\"10.2.3.200\", \"fd00:2::3:c8\"]");
        assert!(text.contains(old), "generator layout changed");
        let p2 = load_str("b.toml", &text.replace(old, new), TODAY).policy.unwrap();
        let c2 = compile_with(&p2, Capabilities { flowtable: false }, Some(&c1.decision.alloc)).unwrap();
        let d = delta(&c1.ruleset, &c2.ruleset).expect("only elements change");
        let (added, removed) = d.counts();
        assert!(added + removed > 0 && added + removed < 40, "delta too large: +{added} -{removed}\n{}", script("fwctl", &d));
        // Without the previous allocation the same edit renumbers many classes.
        let fresh = compile(&p2, Capabilities { flowtable: false }).unwrap();
        let _ = fresh;
    }

    #[test]
    fn identical_rulesets_have_an_empty_delta() {
        let shape = crate::gen::Shape::for_rules(200);
        let p = load_str("a.toml", &crate::gen::policy(&shape, 3), TODAY).policy.unwrap();
        let c1 = compile(&p, Capabilities { flowtable: false }).unwrap();
        let c2 = compile_with(&p, Capabilities { flowtable: false }, Some(&c1.decision.alloc)).unwrap();
        assert!(delta(&c1.ruleset, &c2.ruleset).unwrap().is_empty());
    }
}
