//! Kernel capability detection (effects: runs `nft -c`).
//!
//! Input: the `nft` program path. Output: [`Capabilities`] for the compiler.
//! Must not: change kernel state (`nft -c` checks a transaction without committing).

use crate::compile::Capabilities;
use std::io::Write;
use std::process::{Command, Stdio};

/// Can this kernel hold a flowtable? Checked with a throwaway table in `nft -c`.
pub fn detect(nft: &str) -> Capabilities {
    let probe = "table inet fwctl_probe {\n\tflowtable ft {\n\t\thook ingress priority filter\n\t\tdevices = { \"lo\" }\n\t}\n}\n";
    let flowtable = Command::new(nft)
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut i) = c.stdin.take() {
                i.write_all(probe.as_bytes())?;
            }
            c.wait()
        })
        .is_ok_and(|s| s.success());
    Capabilities { flowtable }
}
