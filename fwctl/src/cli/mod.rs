//! Command line: one file per subcommand; each parses its options and calls the library.
//!
//! Exit codes (documented in docs/user-manual.md):
//! 0 success · 1 policy invalid, a test failed, or a check did not hold ·
//! 2 `plan`: changes pending · 3 system error (kernel, files) · 64 usage error.

pub mod apply;
pub mod audit;
pub mod check;
pub mod compile;
pub mod explain;
pub mod history;
pub mod lab;
pub mod plan;
pub mod rollback;
pub mod state_args;
pub mod watchdog;
pub mod confirm;
pub mod vpn;

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
    /// Show what apply would change: flows, NAT, ruleset (exit 2 if anything)
    Plan(plan::PlanArgs),
    /// Apply the policy in one kernel transaction (refuses unsafe changes)
    Apply(apply::ApplyArgs),
    /// Keep the generation applied with --confirm
    Confirm(confirm::ConfirmArgs),
    /// Restore an earlier generation (as a new generation)
    Rollback(rollback::RollbackArgs),
    /// Re-apply the last confirmed generation (boot)
    Restore(rollback::RestoreArgs),
    /// List applied generations
    History(history::HistoryArgs),
    /// Verify, read and export the audit trail
    Audit(audit::AuditArgs),
    /// Network namespaces mirroring the policy, checked with real packets
    Lab(lab::LabArgs),
    #[command(hide = true)]
    Watchdog(watchdog::WatchdogArgs),
    /// WireGuard tunnels: keys, up/down/status, peers
    Vpn(vpn::VpnArgs),
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
    if let Err(e) = crate::sys::clock::check_today_env() {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    let code = match cli.command {
        Command::Check(a) => check::exec(&a),
        Command::Compile(a) => compile::exec(&a),
        Command::Explain(a) => explain::exec(&a),
        Command::Lab(a) => lab::exec(&a),
        Command::Plan(a) => plan::exec(&a),
        Command::Apply(a) => apply::exec(&a),
        Command::Confirm(a) => confirm::exec(&a),
        Command::Rollback(a) => rollback::rollback(&a),
        Command::Restore(a) => rollback::restore(&a),
        Command::History(a) => history::exec(&a),
        Command::Audit(a) => audit::exec(&a),
        Command::Watchdog(a) => watchdog::exec(&a),
        Command::Vpn(a) => vpn::exec(&a),
    };
    crate::sys::stdio::finish(code)
}

/// Print diagnostics (text to stderr) and say whether there were errors.
pub fn report(loaded: &crate::check::Loaded, diags: &[crate::diag::Diagnostic]) {
    eprint!("{}", crate::diag::render_all(&loaded.sm, diags, style()));
}
