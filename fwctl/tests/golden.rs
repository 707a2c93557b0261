//! Golden tests for `fwctl check` diagnostics.
//!
//! regenerate with UPDATE_GOLDEN=1 cargo test --test golden
//! (then READ every changed `.stderr` before committing: a golden file is a
//! reviewed statement of what the user should see, not a snapshot of whatever
//! the tool prints today).
//!
//! Layout:
//! - `tests/golden/bad/NN-name.toml` or `tests/golden/bad/NN-name/` (a policy
//!   directory, for mistakes that span several files): a policy with exactly one
//!   mistake. `fwctl check` must exit 1.
//! - `tests/golden/warn/...`: valid policies that only draw warnings. `fwctl check`
//!   must exit 0, and `fwctl check --strict` must exit 1 with the same stderr.
//! - `NN-name.stderr` next to each case: the exact expected stderr of
//!   `NO_COLOR=1 FWCTL_TODAY=2026-11-23 fwctl check fwctl/tests/golden/<set>/NN-name...`
//!   run from the workspace root (paths in diagnostics are relative).
//!
//! Cases listed in [`PENDING`] are known to print wrong or unhelpful output; their
//! `.stderr` holds the hand-written EXPECTED output. They are reported (with a
//! diff) but do not fail the run, until the tool prints exactly that: then the run
//! fails, asking to remove the case from `PENDING`. `UPDATE_GOLDEN=1` never
//! rewrites a pending case's `.stderr`. See their diffs with
//! `cargo test --test golden -- --nocapture`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The date the binary is pinned to, so that `expires` is deterministic.
const TODAY: &str = "2026-11-23";

/// At least this many malformed policies must exist under `bad/`.
const MIN_BAD_CASES: usize = 35;

/// Known-wrong outputs: (`set/case`, what is wrong). Their `.stderr` is the
/// expected output, written by hand.
const PENDING: &[(&str, &str)] = &[];

/// Cases whose error has no file location (the `--> file:line:col` line).
const FILELESS: &[&str] = &["bad/64-no-toml-files"];

#[derive(Clone, Copy, PartialEq)]
enum Set {
    Bad,
    Warn,
}

impl Set {
    fn dir(self) -> &'static str {
        match self {
            Set::Bad => "bad",
            Set::Warn => "warn",
        }
    }
}

struct Case {
    /// `bad/NN-name`
    id: String,
    /// The path given to `fwctl check`, relative to the workspace root.
    arg: String,
    /// The `.stderr` file.
    expected: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in a workspace").to_path_buf()
}

/// The crate's directory name inside the workspace (`fwctl`).
fn crate_dir_name() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).file_name().expect("crate dir has a name").to_string_lossy().into_owned()
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Every case of a set, sorted: `*.toml` files and directories.
fn cases(set: Set) -> (Vec<Case>, Vec<String>) {
    let rel_dir = format!("{}/tests/golden/{}", crate_dir_name(), set.dir());
    let dir = workspace_root().join(&rel_dir);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = vec![];
    let mut problems = vec![];
    let mut stems = std::collections::BTreeSet::new();
    for n in &names {
        let path = dir.join(n);
        let stem = if path.is_dir() {
            n.clone()
        } else if let Some(s) = n.strip_suffix(".toml") {
            s.to_string()
        } else if n.ends_with(".stderr") {
            continue;
        } else {
            problems.push(format!("{}/{n}: not a case (expected NN-name.toml, NN-name/ or NN-name.stderr)", set.dir()));
            continue;
        };
        stems.insert(stem.clone());
        out.push(Case { id: format!("{}/{stem}", set.dir()), arg: format!("{rel_dir}/{n}"), expected: dir.join(format!("{stem}.stderr")) });
    }
    for n in &names {
        if let Some(s) = n.strip_suffix(".stderr") {
            if !stems.contains(s) {
                problems.push(format!("{}/{n}: no case for this .stderr file", set.dir()));
            }
        }
    }
    (out, problems)
}

struct Output {
    code: Option<i32>,
    stderr: String,
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .args(args)
        .current_dir(workspace_root())
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", TODAY)
        .output()
        .expect("run fwctl");
    Output { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A line diff (longest common subsequence): `-` expected, `+` actual, ` ` both.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = LCS length of a[i..] and b[j..]
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "   {}", a[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "-  {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+  {}", b[j]);
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        let _ = writeln!(out, "   (final newline: expected {}, actual {})", expected.ends_with('\n'), actual.ends_with('\n'));
    }
    out
}

fn check_set(set: Set) {
    let (cases, mut failures) = cases(set);
    let update = updating();
    let mut pending_report = vec![];
    if set == Set::Bad && cases.len() < MIN_BAD_CASES {
        failures.push(format!("only {} cases under bad/, want at least {MIN_BAD_CASES}", cases.len()));
    }
    for c in &cases {
        let pending = PENDING.iter().find(|(id, _)| *id == c.id).map(|(_, why)| *why);
        let out = run(&["check", &c.arg]);
        let want_code = if set == Set::Bad { 1 } else { 0 };
        if out.code != Some(want_code) {
            failures.push(format!("{}: exit code {:?}, expected {want_code}\n{}", c.id, out.code, out.stderr));
        }
        // Shape of the output, whatever its exact text.
        match set {
            Set::Bad => {
                if !out.stderr.contains("error[") {
                    failures.push(format!("{}: stderr has no `error[`:\n{}", c.id, out.stderr));
                }
                if !FILELESS.contains(&c.id.as_str()) && !out.stderr.contains("--> ") {
                    failures.push(format!("{}: stderr has no `--> file:line:col` location:\n{}", c.id, out.stderr));
                }
            }
            Set::Warn => {
                if !out.stderr.contains("warning[") || out.stderr.contains("error[") {
                    failures.push(format!("{}: expected warnings only:\n{}", c.id, out.stderr));
                }
                let strict = run(&["check", "--strict", &c.arg]);
                if strict.code != Some(1) {
                    failures.push(format!("{}: `check --strict` exit code {:?}, expected 1", c.id, strict.code));
                }
                if strict.stderr != out.stderr {
                    failures.push(format!("{}: `check --strict` prints different diagnostics:\n{}", c.id, diff(&out.stderr, &strict.stderr)));
                }
            }
        }
        if update && pending.is_none() {
            let old = std::fs::read_to_string(&c.expected).ok();
            if old.as_deref() != Some(out.stderr.as_str()) {
                std::fs::write(&c.expected, &out.stderr).unwrap_or_else(|e| panic!("write {}: {e}", c.expected.display()));
                eprintln!("updated {}", c.expected.display());
            }
            continue;
        }
        let expected = match std::fs::read_to_string(&c.expected) {
            Ok(e) => e,
            Err(_) => {
                failures.push(format!("{}: missing {} (regenerate with UPDATE_GOLDEN=1 cargo test --test golden)", c.id, c.expected.display()));
                continue;
            }
        };
        match (expected == out.stderr, pending) {
            (true, None) => {}
            (false, None) => failures.push(format!(
                "{}: stderr differs from {} (- expected, + actual):\n{}",
                c.id,
                c.expected.display(),
                diff(&expected, &out.stderr)
            )),
            (true, Some(_)) => failures.push(format!("{}: now prints the expected output: remove it from PENDING in tests/golden.rs", c.id)),
            (false, Some(why)) => pending_report.push(format!("{} — {why}\n{}", c.id, diff(&expected, &out.stderr))),
        }
    }
    for id in PENDING.iter().map(|(id, _)| *id).chain(FILELESS.iter().copied()) {
        if id.starts_with(&format!("{}/", set.dir())) && !cases.iter().any(|c| c.id == id) {
            failures.push(format!("{id}: listed in tests/golden.rs but there is no such case"));
        }
    }
    if !pending_report.is_empty() {
        eprintln!("\n{} pending golden case(s) in {}/ still print the wrong output (not a failure):\n", pending_report.len(), set.dir());
        for p in &pending_report {
            eprintln!("{p}");
        }
    }
    if !failures.is_empty() {
        panic!("\n{} golden failure(s) in {}/:\n\n{}", failures.len(), set.dir(), failures.join("\n\n"));
    }
}

#[test]
fn bad_policies_fail_with_the_expected_diagnostics() {
    check_set(Set::Bad);
}

#[test]
fn warning_only_policies_pass_unless_strict() {
    check_set(Set::Warn);
}

#[test]
fn diff_shows_changed_lines() {
    let d = diff("a\nb\nc\n", "a\nB\nc\n");
    assert_eq!(d, "   a\n-  b\n+  B\n   c\n");
}
