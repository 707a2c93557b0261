//! The kernel, behind a small trait: load an `nft -f` script (one transaction), write
//! an element delta (one transaction, over netlink in-process), read fwctl's table
//! back, list other tables' hooked chains.
//!
//! Input: scripts rendered by `render`/`plan`, element deltas from `plan::delta`.
//! Output: success, or an error that keeps the program, arguments, exit status and
//! stderr (netlink: the refused command and errno, see [`super::nftnl`]).
//! Must not: build rules itself.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug)]
pub struct NftError {
    pub program: String,
    pub args: Vec<String>,
    pub status: Option<i32>,
    pub stderr: String,
}

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{} {}` failed", self.program, self.args.join(" "))?;
        if let Some(s) = self.status {
            write!(f, " (exit {s})")?;
        }
        let err = self.stderr.trim();
        if !err.is_empty() {
            let lines: Vec<&str> = err.lines().take(12).collect();
            write!(f, ": {}", lines.join("\n  "))?;
        }
        Ok(())
    }
}

impl std::error::Error for NftError {}

/// A base chain of another table: (family, table, chain, hook, priority).
pub type ForeignHook = (String, String, String, String, i64);

pub trait Kernel {
    /// Load a script in one transaction: all of it, or nothing.
    fn load(&self, script: &str) -> Result<(), NftError>;
    /// Apply an element delta to `inet <table>` in one transaction: all of it, or
    /// nothing. Same effect as loading `plan::delta::script`, without nft's cost
    /// (nft 1.0.6 reads back every interval set of the table first).
    fn write_elements(&self, table: &str, delta: &crate::plan::delta::Delta) -> Result<(), super::nftnl::Error>;
    /// `nft -s list table inet fwctl` (stateless: no counters); None if absent.
    fn list_table(&self) -> Result<Option<String>, NftError>;
    /// Base chains of other tables: (family, table, chain, hook, priority).
    fn foreign_hooks(&self) -> Result<Vec<ForeignHook>, NftError>;
}

/// The `nft` program (path injectable); element deltas go over netlink from this
/// process, in the same (current) network namespace as the program runs.
pub struct NftCli {
    pub program: String,
}

impl NftCli {
    fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, NftError> {
        let err = |status, stderr: String| NftError { program: self.program.clone(), args: args.iter().map(|s| s.to_string()).collect(), status, stderr };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(None, e.to_string()))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).map_err(|e| err(None, e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| err(None, e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    }
}

impl Kernel for NftCli {
    fn load(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).map(|_| ())
    }
    fn write_elements(&self, table: &str, delta: &crate::plan::delta::Delta) -> Result<(), super::nftnl::Error> {
        super::nftnl::write(table, delta).map(drop)
    }
    fn list_table(&self) -> Result<Option<String>, NftError> {
        match self.run(&["-s", "list", "table", "inet", crate::compile::ir::TABLE], None) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.stderr.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn foreign_hooks(&self) -> Result<Vec<ForeignHook>, NftError> {
        let text = self.run(&["-j", "list", "chains"], None)?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let mut out = vec![];
        for item in v.get("nftables").and_then(|x| x.as_array()).into_iter().flatten() {
            let Some(c) = item.get("chain") else { continue };
            let s = |k: &str| c.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            if s("table") == crate::compile::ir::TABLE && s("family") == "inet" {
                continue;
            }
            if let Some(hook) = c.get("hook").and_then(|x| x.as_str()) {
                out.push((s("family"), s("table"), s("name"), hook.to_string(), c.get("prio").and_then(|x| x.as_i64()).unwrap_or(0)));
            }
        }
        Ok(out)
    }
}
