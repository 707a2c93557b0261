//! Command line: one file per subcommand; each parses its options and calls the library.
//!
//! Exit codes (documented in docs/user-manual.md):
//! 0 success · 1 policy invalid, a test failed, or a check did not hold ·
//! 2 `plan`: changes pending · 3 system error (kernel, files) · 64 usage error.

pub mod check;
pub mod compile;
pub mod explain;
pub mod lab;

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAIL: u8 = 1;
pub const EXIT_CHANGES: u8 = 2;
pub const EXIT_SYSTEM: u8 = 3;
pub const EXIT_USAGE: u8 = 64;

pub const DEFAULT_POLICY: &str = "/etc/fwctl/policy";

#[derive(Parser, Debug)]
#[command(name = "fwctl", version, about = "Declarative firewall and VPN manager: TOML policy → nftables and WireGuard")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a policy, compile it and run its [[tests]]
    Check(check::CheckArgs),
    /// Print the nftables ruleset a policy compiles to
    Compile(compile::CompileArgs),
    /// Show the verdict for one packet and the policy lines that decide it
    Explain(explain::ExplainArgs),
    /// Network namespaces mirroring the policy, checked with real packets
    Lab(lab::LabArgs),
}

/// Options shared by commands that read a policy.
#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Policy directory or file
    #[arg(default_value = DEFAULT_POLICY)]
    pub path: PathBuf,
}

/// Output options shared by reporting commands.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Machine-readable JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
pub fn style() -> crate::diag::Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    crate::diag::Style { color: !no_color && std::io::stderr().is_terminal() }
}

pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Command::Check(a) => check::exec(&a),
        Command::Compile(a) => compile::exec(&a),
        Command::Explain(a) => explain::exec(&a),
        Command::Lab(a) => lab::exec(&a),
    }
}

/// Print diagnostics (text to stderr) and say whether there were errors.
pub fn report(loaded: &crate::check::Loaded, diags: &[crate::diag::Diagnostic]) {
    eprint!("{}", crate::diag::render_all(&loaded.sm, diags, style()));
}
