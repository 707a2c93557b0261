//! The docs point only inside the repository: no link or path in README.md or
//! docs/*.md may lead outside it (such as `../shared/…`, a directory next to the
//! checkout that readers of the repository do not have). A `../` path must
//! name a file of the repository.

use std::path::{Component, Path, PathBuf};

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "md") {
            v.push(p);
        }
    }
    v
}

/// Whether `rel`, taken from `dir` (depth below the root), climbs above the root.
fn escapes(depth: usize, rel: &str) -> bool {
    let mut d = depth as i64;
    for c in Path::new(rel).components() {
        match c {
            Component::ParentDir => d -= 1,
            Component::Normal(_) => d += 1,
            _ => {}
        }
        if d < 0 {
            return true;
        }
    }
    false
}

#[test]
fn docs_link_nothing_outside_the_repository() {
    let mut bad = vec![];
    for p in docs() {
        let depth = usize::from(p.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "docs"));
        let text = std::fs::read_to_string(&p).expect("read doc");
        for (i, line) in text.lines().enumerate() {
            // Every relative path mentioned: markdown link targets and `code` spans.
            for piece in line.split(['(', ')', '`', ' ', '<', '>', '"', '\'']) {
                let target = piece.split('#').next().unwrap_or_default().trim_end_matches(['.', ',', ';', ':']);
                let missing = || !p.parent().expect("dir").join(target).exists();
                if piece.starts_with("../") && (escapes(depth, target) || missing()) {
                    bad.push(format!("{}:{}: {piece}", p.display(), i + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "paths outside the repository:\n{}", bad.join("\n"));
}

/// A quoted command in the docs: a ```text block whose first line is
/// `$ [NAME=VALUE ...] fwctl ARGS`, followed by the output it printed.
struct Quoted {
    doc: PathBuf,
    /// 0-based index of the `$` line.
    line: usize,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// The quoted output lines.
    output: Vec<String>,
}

/// Every quoted `fwctl` command that can be run here as written: no pipe or
/// shell syntax, and every argument that names a path (`policies/…`) exists.
/// Commands on an edited copy of a policy (`policy/`) or that need root
/// (`lab`) are not run; they are illustrations, said so in the text.
fn runnable_quotes() -> Vec<Quoted> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = vec![];
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).expect("read doc");
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim_end() != "```text" {
                i += 1;
                continue;
            }
            let body = i + 1;
            let mut end = body;
            while end < lines.len() && lines[end].trim_end() != "```" {
                end += 1;
            }
            i = end + 1;
            if body >= end || !lines[body].starts_with("$ ") {
                continue;
            }
            // A block may quote several commands: each `$ ` line starts one, and
            // the blank line before it belongs to neither.
            let starts: Vec<usize> = (body..end).filter(|&k| lines[k].starts_with("$ ")).collect();
            for (n, &at) in starts.iter().enumerate() {
                let mut stop = starts.get(n + 1).copied().unwrap_or(end);
                if stop < end && stop > at + 1 && lines[stop - 1].is_empty() {
                    stop -= 1;
                }
                let cmd = &lines[at][2..];
                if cmd.contains(['|', '&', ';', '>', '<', '`']) {
                    continue;
                }
                let words: Vec<&str> = cmd.split_whitespace().collect();
                let Some(f) = words.iter().position(|w| *w == "fwctl") else { continue };
                let env: Vec<(String, String)> = words[..f].iter().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
                if env.len() != f {
                    continue;
                }
                let args: Vec<String> = words[f + 1..].iter().map(|w| w.to_string()).collect();
                let needs_root = args.first().is_some_and(|a| ["lab", "apply", "rollback", "restore", "confirm"].contains(&a.as_str()));
                let paths_exist = args.iter().filter(|a| a.starts_with("policies/") || a.starts_with("policy")).all(|a| root.join(a).exists());
                let names_a_policy = args.iter().any(|a| a.starts_with("policies/"));
                if needs_root || !paths_exist || !names_a_policy {
                    continue;
                }
                let output = lines[at + 1..stop].iter().map(|l| l.to_string()).collect();
                out.push(Quoted { doc: doc.clone(), line: at, env, args, output });
            }
        }
    }
    out
}

/// What `fwctl ARGS` prints (stderr, then stdout), from the workspace root with
/// colour off and the date pinned to the one the docs are written for.
fn run_quote(q: &Quoted) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fwctl"));
    cmd.args(&q.args).current_dir(&root).env("NO_COLOR", "1").env("FWCTL_TODAY", "2026-11-23");
    for (k, v) in &q.env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run fwctl");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
    text.trim_end().lines().map(|l| l.trim_end().to_string()).collect()
}

/// Issue 9 (11): command output quoted in the docs is what the command prints
/// today. `UPDATE_DOCS=1 cargo test --test docs` rewrites the quoted blocks
/// (then read the diff: the docs' prose around them must still be true).
#[test]
fn quoted_command_output_in_the_docs_is_what_fwctl_prints() {
    let quotes = runnable_quotes();
    assert!(quotes.len() >= 10, "only {} quoted commands found: the scanner no longer sees the docs' examples", quotes.len());
    let update = std::env::var_os("UPDATE_DOCS").is_some();
    let mut stale = vec![];
    let mut rewrites: std::collections::BTreeMap<PathBuf, Vec<(usize, usize, Vec<String>)>> = Default::default();
    for q in &quotes {
        let got = run_quote(q);
        let want: Vec<String> = q.output.iter().map(|l| l.trim_end().to_string()).collect();
        if got != want {
            stale.push(format!("{}:{}: $ fwctl {}\n--- quoted\n{}\n+++ printed\n{}", q.doc.display(), q.line + 1, q.args.join(" "), want.join("\n"), got.join("\n")));
            rewrites.entry(q.doc.clone()).or_default().push((q.line, q.output.len(), got));
        }
    }
    if update {
        for (doc, edits) in rewrites {
            let text = std::fs::read_to_string(&doc).expect("read doc");
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            for (cmd_line, old_len, new) in edits.into_iter().rev() {
                lines.splice(cmd_line + 1..cmd_line + 1 + old_len, new);
            }
            std::fs::write(&doc, lines.join("\n") + "\n").expect("write doc");
        }
        return;
    }
    assert!(stale.is_empty(), "{} quoted command(s) print something else now (UPDATE_DOCS=1 rewrites them):\n\n{}", stale.len(), stale.join("\n\n"));
}
