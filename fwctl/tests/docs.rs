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
