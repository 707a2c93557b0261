//! `fwctl rollback [--to N]` (a new generation restoring N's ruleset and policy) and
//! `fwctl restore` (re-apply the last confirmed generation, e.g. at boot).
//!
//! Both load the ruleset first, then bring the tunnels to the restored
//! generation's peers (from its policy snapshot), in place. A tunnel failure
//! does not undo the restored ruleset (going back is the safe direction): it is
//! reported, audited (`result: failed`) and exits 3.
use super::state_args::{audit, now, StateArgs};
use super::{EXIT_FAIL, EXIT_OK, EXIT_SYSTEM};
use crate::apply;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Generation to restore (default: the one before the current)
    #[arg(long)]
    pub to: Option<u64>,
    /// Why (recorded in the audit trail)
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn rollback(a: &RollbackArgs) -> u8 {
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(10), true) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let current = state.current();
    let numbers = state.numbers();
    let target = match a.to {
        Some(n) if numbers.contains(&n) => n,
        Some(n) => {
            eprintln!("error: there is no generation {n}");
            return EXIT_FAIL;
        }
        None => match numbers.iter().rev().find(|&&n| Some(n) < current).copied() {
            Some(n) => n,
            None => {
                eprintln!("error: no generation before the current one");
                return EXIT_FAIL;
            }
        },
    };
    let Ok(src) = state.meta(target) else {
        eprintln!("error: generation {target} is unreadable");
        return EXIT_SYSTEM;
    };
    let t = now();
    let policy_dir = state.gen_dir(target).join("policy");
    let files: Vec<(std::path::PathBuf, String)> = walk(&policy_dir).into_iter().filter_map(|p| Some((p.strip_prefix(&policy_dir).ok()?.to_path_buf(), std::fs::read_to_string(&p).ok()?))).collect();
    let copies: Vec<(&str, String)> = ["ruleset.nft", "ruleset.json", "alloc.json", "plan.txt", "plan.json"].iter().filter_map(|f| Some((*f, state.read(target, f).ok()?))).collect();
    let mut meta = crate::state::Meta { time: crate::audit::rfc3339(t), unix: t, event: "rollback".into(), source: Some(target), actor: crate::audit::actor(), reason: a.reason.clone(), summary: format!("rollback to generation {target}"), ..src.clone() };
    let g = match state.create(&mut meta, &files, &copies) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    let kernel = a.state.kernel();
    if let Err(e) = apply::load_generation(&state, &kernel, Some(g)) {
        let _ = std::fs::remove_dir_all(state.gen_dir(g));
        eprintln!("error: the kernel refused generation {target}'s ruleset; nothing changed: {e}");
        return EXIT_SYSTEM;
    }
    apply::record_kernel(&state, &kernel, g);
    let _ = state.set_current(Some(g));
    let _ = state.set_confirmed(Some(g));
    let _ = state.set_pending(None);
    let synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, Some(g), current);
    let mut r = apply::record("rollback", if synced.error.is_none() { "ok" } else { "failed" }, &src.appliance, now());
    r.generation = Some(g);
    r.previous_generation = current;
    r.policy_hash = Some(src.policy_hash.clone());
    r.ruleset_hash = Some(src.ruleset_hash.clone());
    r.git_commit = src.git_commit.clone();
    r.reason = a.reason.clone();
    r.message = Some(match &synced.error {
        None => format!("restored the ruleset and tunnels of generation {target} as generation {g}"),
        Some(e) => format!("restored the ruleset of generation {target} as generation {g}; the tunnels could not follow: {e}"),
    });
    r.summary = serde_json::json!({ "tunnels": apply::tunnels_json(&synced.done) });
    if let Err(c) = audit(&state, r) {
        return c;
    }
    print!("{}", apply::tunnels_text(&synced.done));
    println!("rolled back to generation {target} (now generation {g})");
    if let Some(e) = synced.error {
        eprintln!("error: the ruleset of generation {target} is in place, but the tunnels could not be brought to its peers: {e}");
        return EXIT_SYSTEM;
    }
    EXIT_OK
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn restore(a: &RestoreArgs) -> u8 {
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(30), false) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(target) = state.confirmed().or_else(|| state.numbers().into_iter().rfind(|n| Some(*n) <= state.current())) else {
        println!("no confirmed generation: nothing to restore");
        return EXIT_OK;
    };
    let kernel = a.state.kernel();
    let current = state.current();
    let mut result = apply::load_generation(&state, &kernel, Some(target));
    let mut synced = crate::vpn::ops::TunnelSync::default();
    if result.is_ok() {
        apply::record_kernel(&state, &kernel, target);
        let _ = state.set_current(Some(target));
        let _ = state.set_pending(None);
        synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, Some(target), current);
        if let Some(e) = &synced.error {
            result = Err(format!("the ruleset of generation {target} is in place, but the tunnels could not be brought to its peers: {e}"));
        }
    }
    let appliance = state.meta(target).map(|m| m.appliance).unwrap_or_default();
    let mut r = apply::record("restore", if result.is_ok() { "ok" } else { "failed" }, &appliance, now());
    r.generation = Some(target);
    r.previous_generation = current;
    if let Err(e) = &result {
        r.message = Some(e.clone());
    }
    r.summary = serde_json::json!({ "tunnels": apply::tunnels_json(&synced.done) });
    let _ = audit(&state, r);
    print!("{}", apply::tunnels_text(&synced.done));
    match result {
        Ok(()) => {
            println!("restored generation {target}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SYSTEM
        }
    }
}
