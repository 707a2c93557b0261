//! `fwctl watchdog` (internal): started by `apply --confirm`, detached from the
//! terminal; restores the previous generation (its ruleset, then its tunnels'
//! peers) unless the window is confirmed.
use super::state_args::{audit, now, StateArgs};
use crate::apply::{self, Step};
use clap::Args;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WatchdogArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The generation this watchdog guards
    #[arg(long)]
    pub generation: u64,
}

/// Start a watchdog in a new session (it survives the terminal and this process),
/// in this process's network namespace.
pub fn spawn(s: &StateArgs, generation: u64) -> std::io::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("watchdog").arg("--state-dir").arg(&s.state_dir).arg("--nft").arg(&s.nft).arg("--generation").arg(generation.to_string());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    Ok(cmd.spawn()?.id())
}

pub fn exec(a: &WatchdogArgs) -> u8 {
    let Ok(state) = crate::state::State::open(&a.state.state_dir) else { return super::EXIT_SYSTEM };
    loop {
        match apply::watchdog_step(state.pending().as_ref(), a.generation, now()) {
            Step::Exit => return super::EXIT_OK,
            Step::Wait(left) => std::thread::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0).saturating_mul(1000).clamp(50, 200))),
            Step::RollBack => break,
        }
    }
    let Ok(_lock) = state.lock(Duration::from_secs(60)) else { return super::EXIT_SYSTEM };
    // Re-check under the lock: a confirm may have won the race.
    let Some(p) = state.pending().filter(|p| p.generation == a.generation) else { return super::EXIT_OK };
    let kernel = a.state.kernel();
    let result = apply::load_generation(&state, &kernel, p.previous);
    let mut synced = crate::vpn::ops::TunnelSync::default();
    if result.is_ok() {
        let _ = state.set_current(p.previous);
        if let Some(prev) = p.previous {
            apply::record_kernel(&state, &kernel, prev);
        }
        let _ = state.set_pending(None);
        // The ruleset is back first; then the tunnels follow, in place.
        synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, p.previous, Some(a.generation));
    }
    let appliance = state.meta(a.generation).map(|m| m.appliance).unwrap_or_default();
    let ok = result.is_ok() && synced.error.is_none();
    let mut r = apply::record("rollback-auto", if ok { "ok" } else { "failed" }, &appliance, now());
    r.generation = p.previous;
    r.previous_generation = Some(a.generation);
    let restored = p.previous.map(|n| n.to_string()).unwrap_or_else(|| "the state before fwctl (table removed; tunnels left as they are)".into());
    r.message = Some(match (&result, &synced.error) {
        (Ok(()), None) => format!("generation {} was not confirmed before its deadline; restored {restored}", a.generation),
        (Ok(()), Some(e)) => format!("generation {} was not confirmed before its deadline; restored the ruleset of {restored}, but the tunnels could not follow: {e}", a.generation),
        (Err(e), _) => format!("automatic rollback of generation {} failed: {e}", a.generation),
    });
    r.summary = serde_json::json!({ "tunnels": apply::tunnels_json(&synced.done) });
    // Even with a broken audit log the rollback above has happened.
    let _ = audit(&state, r);
    if ok { super::EXIT_OK } else { super::EXIT_SYSTEM }
}
