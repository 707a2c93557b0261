//! Every command that prints into a pipe whose reader has gone (`fwctl history
//! | head -1`, `fwctl compile | head`) exits quietly: no panic, no backtrace, no
//! extra message, and the same exit code as with a reader that reads it all.
//!
//! The pipe's read end is closed before fwctl starts, so its first write fails
//! with EPIPE every time (no race with the reader).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fwctl(args: &[&str], state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fwctl"));
    c.args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", "2026-11-23")
        .env("FWCTL_STATE_DIR", state)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    c
}

/// Run with stdout read to the end, then with stdout a pipe nobody reads.
fn both(args: &[&str], state: &Path) -> (Output, Output) {
    let read = fwctl(args, state).output().expect("run fwctl");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let closed = fwctl(args, state).stdout(writer).stderr(Stdio::piped()).output().expect("run fwctl");
    (read, closed)
}

#[test]
fn listing_commands_exit_quietly_into_a_closed_pipe() {
    let state = std::env::temp_dir().join(format!("fwctl-broken-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&state).expect("state dir");
    // A refused apply (no kernel needed) gives the audit trail and history something to list.
    let bad = state.join("bad.toml");
    std::fs::write(&bad, "[zones\n").expect("write policy");
    let bad = bad.to_str().expect("utf-8 path");
    let refused = fwctl(&["apply", bad, "--yes", "--nft", "/bin/false"], &state).output().expect("run fwctl");
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
    let explain = ["explain", "policies/carif-oref", "--src", "203.0.113.200", "--dst", "192.0.2.20", "--proto", "tcp", "--port", "1433"];
    let cases: Vec<Vec<&str>> = vec![
        vec!["check", "policies/carif-oref"],
        vec!["check", "policies/carif-oref", "--json"],
        vec!["compile", "policies/carif-oref", "--assume-caps", "none"],
        vec!["compile", "policies/carif-oref", "--assume-caps", "none", "--format", "json"],
        explain.to_vec(),
        [&explain[..], &["--json"]].concat(),
        vec!["history"],
        vec!["history", "--json"],
        vec!["audit", "log"],
        vec!["audit", "log", "--json"],
        vec!["audit", "export"],
        vec!["audit", "verify"],
        vec!["audit", "verify", "--json"],
        vec!["--help"],
        vec!["compile", "--help"],
    ];
    let mut failures = vec![];
    for args in &cases {
        let (read, closed) = both(args, &state);
        assert!(!read.stdout.is_empty(), "fwctl {args:?} printed nothing: it does not exercise the pipe");
        let err = String::from_utf8_lossy(&closed.stderr);
        let quiet = closed.status.code().is_some() && closed.status.code() == read.status.code() && closed.stderr == read.stderr;
        if !quiet {
            failures.push(format!("fwctl {}: exit {:?} (with a reader: {:?}), stderr:\n{err}", args.join(" "), closed.status.code(), read.status.code()));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
