//! The per-packet cost must not grow with the policy: the kernel rule count of a
//! 10 000-rule policy equals that of a 100-rule policy (the rules only differ by one
//! two-rule log chain per logged rule, reached only by that rule's own traffic),
//! and the rules a new connection can traverse are the same set.

use fwctl::check::load_str;
use fwctl::compile::{compile, Capabilities};
use fwctl::model::Date;

fn compiled(n: usize) -> (fwctl::compile::Compiled, usize) {
    let text = fwctl::gen::policy(&fwctl::gen::Shape::for_rules(n), 42);
    let loaded = load_str("gen.toml", &text, Date { year: 2026, month: 11, day: 23 });
    assert!(!loaded.has_errors());
    let p = loaded.policy.unwrap();
    let logged = p.rules.iter().filter(|r| r.log && r.active()).count();
    (compile(&p, Capabilities { flowtable: false }).unwrap(), logged)
}

/// Rules outside the per-rule log chains and the decision chain: the fixed
/// dispatch and classification a new connection walks.
fn path_rules(c: &fwctl::compile::Compiled) -> usize {
    c.ruleset.chains.iter().filter(|ch| !ch.name.starts_with("log_") && ch.name != "decide").map(|ch| ch.rules.len()).sum()
}

/// Decision-map lookups: one per non-empty (action, source field, destination
/// field, map type); bounded by 2 × 3 × 3 × 4 whatever the policy size.
fn lookups(c: &fwctl::compile::Compiled) -> usize {
    c.ruleset.chains.iter().find(|ch| ch.name == "decide").unwrap().rules.len()
}

#[test]
fn kernel_rule_count_does_not_grow_with_the_policy() {
    let (small, small_logged) = compiled(100);
    let (large, large_logged) = compiled(10_000);
    assert!(large.ruleset.stats.rules_compiled == 10_000 && small.ruleset.stats.rules_compiled == 100);
    assert_eq!(path_rules(&small), path_rules(&large), "rules on the packet path differ");
    // The decision maps: the same handful at both sizes (a kind of map present in
    // one generated policy may be absent from the other), never more than the bound.
    assert!(lookups(&large) <= 72 && lookups(&small) <= 72);
    assert!(lookups(&large).abs_diff(lookups(&small)) <= 2, "decide lookups: {} vs {}", lookups(&small), lookups(&large));
    let total = |c: &fwctl::compile::Compiled, logged: usize| c.ruleset.kernel_rule_count() - 2 * logged;
    assert!(total(&large, large_logged).abs_diff(total(&small, small_logged)) <= 2);
    eprintln!(
        "100 rules: {} kernel rules ({} dispatch, {} decision lookups), {} elements; 10000 rules: {} kernel rules ({} dispatch, {} decision lookups), {} elements",
        small.ruleset.kernel_rule_count(),
        path_rules(&small),
        lookups(&small),
        small.ruleset.stats.elements,
        large.ruleset.kernel_rule_count(),
        path_rules(&large),
        lookups(&large),
        large.ruleset.stats.elements
    );
}
