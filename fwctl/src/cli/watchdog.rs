//! `fwctl watchdog` (internal): started by `apply --confirm` (and `rollback`
//! with a window), detached from the terminal; unless the window is confirmed,
//! restores the previous generation (its ruleset, then its tunnels' peers) as a
//! new `rollback-auto` generation.
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
    // The previous generation comes back as a generation of its own (a
    // `rollback-auto` row in `history`), checked for today: rules that have
    // expired meanwhile stay out. With no previous generation fwctl's table is
    // removed (no row: nothing of fwctl's runs).
    let today = crate::sys::clock::today();
    let caps = || crate::sys::caps::detect(&a.state.nft);
    let mut made = None;
    let mut result = Ok(());
    if let Some(prev) = p.previous {
        let confirmed = state.meta(prev).is_ok_and(|m| m.confirmed != Some(false));
        let restoring = apply::Restoring { event: "rollback-auto", source: prev, replaced: Some(a.generation), confirmed, reason: None, now: now(), today };
        match apply::create_restored(&state, &restoring, &caps) {
            Ok(m) => made = Some((m, confirmed)),
            // Cannot write the row (disk full?): still put the previous ruleset back.
            Err(e) => result = Err(format!("cannot record the rollback as a generation ({e}); restored generation {prev} as it was stored")),
        }
    }
    let target = made.as_ref().map(|(m, _)| m.number).or(p.previous);
    let loaded = apply::load_generation(&state, &kernel, target);
    let mut synced = crate::vpn::ops::TunnelSync::default();
    if loaded.is_ok() {
        let _ = state.set_current(target);
        if let Some(t) = target {
            apply::record_kernel(&state, &kernel, t);
        }
        if let Some((m, true)) = &made {
            let _ = state.set_confirmed(Some(m.number));
        }
        let _ = state.set_pending(None);
        // The ruleset is back first; then the tunnels follow, in place.
        synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, target, Some(a.generation));
    } else if let Some((m, _)) = &made {
        let _ = std::fs::remove_dir_all(state.gen_dir(m.number));
    }
    let loaded_ok = loaded.is_ok();
    let result = match (loaded, result) {
        (Err(e), _) => Err(e),
        (Ok(()), r) => r.map(|_| ()),
    };
    let appliance = state.meta(a.generation).map(|m| m.appliance).unwrap_or_default();
    let ok = result.is_ok() && synced.error.is_none();
    let mut r = apply::record("rollback-auto", if ok { "ok" } else { "failed" }, &appliance, now());
    r.generation = if loaded_ok { target } else { None };
    r.previous_generation = Some(a.generation);
    let restored = p.previous.map(|n| match &made {
        Some((m, _)) => format!("{n} as generation {}", m.number),
        None => n.to_string(),
    }).unwrap_or_else(|| "the state before fwctl (table removed; tunnels left as they are)".into());
    r.message = Some(match (&result, &synced.error) {
        (Ok(()), None) => format!("generation {} was not confirmed before its deadline; restored {restored}", a.generation),
        (Ok(()), Some(e)) => format!("generation {} was not confirmed before its deadline; restored the ruleset of {restored}, but the tunnels could not follow: {e}", a.generation),
        (Err(e), _) => format!("automatic rollback of generation {} failed: {e}", a.generation),
    });
    let dropped = made.as_ref().map(|(m, _)| m.dropped.clone()).unwrap_or_default();
    r.summary = serde_json::json!({ "source": p.previous, "expired_rules_dropped": dropped, "tunnels": apply::tunnels_json(&synced.done) });
    // Even with a broken audit log the rollback above has happened.
    let _ = audit(&state, r);
    if ok { super::EXIT_OK } else { super::EXIT_SYSTEM }
}
