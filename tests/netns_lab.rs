//! `fwctl lab up|check|down [PATH]` as the README and `--help` write them.
//!
//! Needs root, `ip` and `nft`. Under CI (CI set) a missing prerequisite fails;
//! elsewhere the test is skipped with a message. The lab gets a unique prefix and
//! is removed also when the test fails.

use fwctl::sys::netns::{cleanup_prefix, list_namespaces, privileged_or_skip, unique_prefix};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_fwctl");
const POLICY: &str = "policies/examples/home-router.toml";

/// Removes every `<prefix>-*` namespace on drop (the test's own cleanup, whatever `lab down` did).
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = cleanup_prefix(&self.0);
        let _ = std::fs::remove_dir_all(std::path::Path::new("/run/fwctl-lab").join(&self.0));
    }
}

fn fwctl(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run fwctl")
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let p = format!("{prefix}-");
    list_namespaces().expect("list namespaces").into_iter().filter(|n| n.starts_with(&p)).collect()
}

#[test]
fn lab_down_takes_the_policy_path_and_removes_the_lab() {
    if !privileged_or_skip() {
        return;
    }
    let prefix = unique_prefix("fwl");
    let _guard = Guard(prefix.clone());
    let up = fwctl(&["lab", "up", POLICY, "--prefix", &prefix]);
    assert_eq!(up.status.code(), Some(0), "lab up:\n{}", String::from_utf8_lossy(&up.stderr));
    assert!(!lab_namespaces(&prefix).is_empty(), "lab up made no namespace");
    let down = fwctl(&["lab", "down", POLICY, "--prefix", &prefix]);
    assert_eq!(down.status.code(), Some(0), "lab down PATH:\n{}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new(), "lab down PATH left namespaces");
}
