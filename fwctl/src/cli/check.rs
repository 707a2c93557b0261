//! `fwctl check [PATH] [--strict] [--json] [--expiring-within DAYS]`: load,
//! validate, compile, run [[tests]]; warn about rules about to expire.
use super::{OutputArgs, PolicyArgs, EXIT_FAIL, EXIT_OK};
use crate::check::{load, management_diagnostics, run_tests, test_diagnostics};
use crate::diag::{to_json, Diagnostic};
use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Treat warnings as errors
    #[arg(long)]
    pub strict: bool,
    /// Warn about rules that expire within DAYS days (0: never)
    #[arg(long, value_name = "DAYS", default_value_t = crate::model::analyze::EXPIRING_WITHIN_DAYS)]
    pub expiring_within: u32,
}

#[derive(serde::Serialize)]
struct Report {
    ok: bool,
    errors: usize,
    warnings: usize,
    rules: usize,
    tests: usize,
    tests_failed: usize,
    kernel_rules: usize,
    elements: usize,
    diagnostics: Vec<crate::diag::JsonDiagnostic>,
}

pub fn exec(a: &CheckArgs) -> u8 {
    let today = crate::sys::clock::today();
    let mut loaded = load(&a.policy.path, today);
    let mut extra: Vec<Diagnostic> = vec![];
    let (mut tests, mut failed, mut kernel_rules, mut elements) = (0, 0, 0, 0);
    // Among the policy's own warnings, in source order.
    let soon = loaded.policy.as_ref().map(|p| crate::model::analyze::expiring(p, today, a.expiring_within)).unwrap_or_default();
    if !soon.is_empty() {
        loaded.diags.extend(soon);
        crate::diag::sort(&mut loaded.diags);
    }
    if let Some(p) = &loaded.policy {
        let results = run_tests(p);
        tests = results.len();
        let td = test_diagnostics(p, &loaded.sm, &results);
        failed = td.len();
        extra.extend(td);
        extra.extend(management_diagnostics(p, &loaded.sm));
        // Compile against a kernel that has every optional feature: check must not
        // depend on the machine it runs on ("required" offload is checked at apply).
        match crate::compile::compile(p, crate::compile::Capabilities { flowtable: true }) {
            Ok(c) => {
                kernel_rules = c.ruleset.stats.kernel_rules;
                elements = c.ruleset.stats.elements;
            }
            Err(e) => extra.push(e.diagnostic()),
        }
    }
    loaded.diags.extend(extra);
    let errors = loaded.diags.iter().filter(|d| d.is_error()).count();
    let warnings = loaded.warnings();
    let ok = errors == 0 && (!a.strict || warnings == 0);
    let rules = loaded.policy.as_ref().map_or(0, |p| p.rules.len());
    if a.out.json {
        let r = Report {
            ok,
            errors,
            warnings,
            rules,
            tests,
            tests_failed: failed,
            kernel_rules,
            elements,
            diagnostics: loaded.diags.iter().map(|d| to_json(&loaded.sm, d)).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
    } else {
        super::report(&loaded, &loaded.diags);
        let verdict = if ok { "ok" } else { "FAILED" };
        println!(
            "{verdict}: {} — {rules} rules, {tests} tests ({failed} failed), {errors} errors, {warnings} warnings; {kernel_rules} kernel rules, {elements} set elements",
            a.policy.path.display()
        );
    }
    if ok { EXIT_OK } else { EXIT_FAIL }
}
