//! Drives the pure pipeline: load → resolve → analyze → tests and management flows.
//!
//! Input: a policy path and today's date. Output: the source map, the policy (if
//! valid), every diagnostic, and test results. Must not: touch the kernel.

use crate::diag::{Diagnostic, SourceMap};
use crate::eval::{evaluate, flow_packets, Decision, Packet, Verdict};
use crate::model::{Date, Expect, Flow, Policy};
use std::path::Path;

pub struct Loaded {
    pub sm: SourceMap,
    pub policy: Option<Policy>,
    pub diags: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.is_error())
    }
    pub fn warnings(&self) -> usize {
        self.diags.iter().filter(|d| !d.is_error()).count()
    }
}

/// Load and validate a policy; warnings included, tests not yet run.
pub fn load(path: &Path, today: Date) -> Loaded {
    let mut sm = SourceMap::default();
    let mut diags = vec![];
    let raw = crate::policy::load(path, &mut sm, &mut diags);
    let policy = if diags.iter().any(|d| d.is_error()) { None } else { crate::model::resolve::resolve(&raw, today, &mut diags) };
    if let Some(p) = &policy {
        diags.extend(crate::model::analyze::analyze(p));
    }
    crate::diag::sort(&mut diags);
    Loaded { sm, policy, diags }
}

/// Load from text (one file), for tests and tools.
pub fn load_str(name: &str, text: &str, today: Date) -> Loaded {
    let mut sm = SourceMap::default();
    let f = sm.add(name.into(), text.into());
    let mut raw = crate::policy::raw::RawPolicy::default();
    let mut diags = vec![];
    crate::policy::parse_file(&sm, f, &mut raw, &mut diags);
    let policy = if diags.iter().any(|d| d.is_error()) { None } else { crate::model::resolve::resolve(&raw, today, &mut diags) };
    if let Some(p) = &policy {
        diags.extend(crate::model::analyze::analyze(p));
    }
    crate::diag::sort(&mut diags);
    Loaded { sm, policy, diags }
}

#[derive(Debug)]
pub struct FlowResult {
    pub packets: Vec<(Packet, Decision)>,
    /// The first packet whose verdict contradicts the expectation.
    pub failure: Option<usize>,
}

pub fn run_flow(p: &Policy, f: &Flow, expect: Expect) -> FlowResult {
    let packets: Vec<(Packet, Decision)> = flow_packets(p, f).into_iter().map(|pkt| {
        let d = evaluate(p, &pkt);
        (pkt, d)
    }).collect();
    let failure = packets.iter().position(|(_, d)| (d.verdict == Verdict::Accept) != (expect == Expect::Allow));
    FlowResult { packets, failure }
}

/// Run the policy's `[[tests]]`: one result per test, in file order.
pub fn run_tests(p: &Policy) -> Vec<FlowResult> {
    p.tests.iter().map(|t| run_flow(p, &t.flow, t.expect)).collect()
}

/// Human description of a rule list with locations: "`public-web` (rules.toml:3)".
pub fn rules_text(p: &Policy, sm: &SourceMap, rules: &[usize]) -> String {
    rules.iter().map(|&r| format!("`{}` ({})", p.rules[r].name, sm.locate_line(p.rules[r].span))).collect::<Vec<_>>().join(", ")
}

pub fn packet_text(pkt: &Packet) -> String {
    format!("{} → {} {}/{}", pkt.src, pkt.dst, pkt.proto.name(), pkt.port)
}

/// Why a packet got its verdict, for failure messages: the deciding rules, the
/// default, or anti-spoofing (naming the zone the source belongs to).
fn why_text(p: &Policy, sm: &SourceMap, pkt: &Packet, d: &Decision) -> String {
    if d.reason == crate::eval::Reason::Spoofed {
        let zones = crate::eval::spoofed(p, pkt).unwrap_or_default().iter().map(|&z| format!("`{}`", p.zones[z].name)).collect::<Vec<_>>().join(" / ");
        return format!("spoofed: {} belongs to zone {zones} but arrived on {} (anti-spoofing)", pkt.src, pkt.iif.as_deref().unwrap_or("?"));
    }
    match (d.deny.is_empty(), d.allow.is_empty()) {
        (false, _) => format!("denied by {}", rules_text(p, sm, &d.deny)),
        (true, false) => format!("allowed by {}", rules_text(p, sm, &d.allow)),
        (true, true) => "no rule matches: the default applies".to_string(),
    }
}

/// Test failures and test definitions that produce no packet become errors.
pub fn test_diagnostics(p: &Policy, sm: &SourceMap, results: &[FlowResult]) -> Vec<Diagnostic> {
    let mut out = vec![];
    for (i, (t, r)) in p.tests.iter().zip(results).enumerate() {
        let what = format!("test #{} ({} → {}, {}, expect {})", i + 1, t.flow.from.text, t.flow.to.text, t.flow.service_text, match t.expect {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        });
        if r.packets.is_empty() {
            out.push(Diagnostic::error("test-no-packet", format!("{what}: no packet can be built (no address family in common, or from and to are both self)")).at(t.flow.span, "this test checks nothing"));
            continue;
        }
        if let Some(k) = r.failure {
            let (pkt, d) = &r.packets[k];
            let verdict = match d.verdict {
                Verdict::Accept => "accepted",
                Verdict::Drop => "dropped",
                Verdict::Reject => "rejected",
            };
            let why = why_text(p, sm, pkt, d);
            let mut diag = Diagnostic::error("test-failed", format!("{what} failed: {} was {verdict}; {why}", packet_text(pkt))).at(t.flow.span, "this test fails");
            for &rid in d.deny.iter().chain(&d.allow) {
                diag = diag.also(p.rules[rid].span, format!("rule `{}`", p.rules[rid].name));
            }
            out.push(diag);
        }
    }
    out
}

/// Anti-lockout: every management flow must be allowed by the policy itself.
pub fn management_diagnostics(p: &Policy, sm: &SourceMap) -> Vec<Diagnostic> {
    let mut out = vec![];
    for m in &p.management {
        let r = run_flow(p, m, Expect::Allow);
        if r.packets.is_empty() {
            out.push(Diagnostic::error("management", format!("management flow {} → {} ({}) produces no packet", m.from.text, m.to.text, m.service_text)).at(m.span, "check its addresses"));
        } else if let Some(k) = r.failure {
            let (pkt, d) = &r.packets[k];
            let why = if d.reason == crate::eval::Reason::Spoofed || !d.deny.is_empty() { why_text(p, sm, pkt, d) } else { "no rule allows it".to_string() };
            out.push(
                Diagnostic::error("lockout", format!("this policy cuts the management flow {} → {} ({}): {} is refused, {why}", m.from.text, m.to.text, m.service_text, packet_text(pkt)))
                    .at(m.span, "management flow declared here")
                    .note("management flows must stay open in every applied policy (anti-lockout)"),
            );
        }
    }
    out
}
