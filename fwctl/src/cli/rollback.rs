//! `fwctl rollback [--to N] [--confirm S]` (go back to the generation in effect
//! before the current one, or to N) and `fwctl restore` (re-apply the last
//! confirmed generation, e.g. at boot).
//!
//! Each writes a new generation (its own `history` row: the event and the
//! source generation), so that the history is the sequence of what the kernel
//! ran. The source's snapshot is checked for today: rules that expired since it
//! was compiled are not brought back (it is recompiled without them, and the
//! command says which). A generation that was never confirmed is brought back
//! only with a confirm window (`--confirm`, default 120 s, as `apply` at a
//! terminal).
//!
//! Both load the ruleset first, then bring the tunnels to the restored
//! generation's peers (from its policy snapshot), in place. A tunnel failure
//! does not undo the restored ruleset (going back is the safe direction): it is
//! reported, audited (`result: failed`) and exits 3.
use super::apply::INTERACTIVE_CONFIRM;
use super::state_args::{audit, now, parse_reason, StateArgs};
use super::{EXIT_FAIL, EXIT_OK, EXIT_SYSTEM, EXIT_USAGE};
use crate::apply::{self, Restoring};
use crate::state::Pending;
use crate::util::escape_terminal_lines;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Generation to restore (default: the one in effect before the current one)
    #[arg(long)]
    pub to: Option<u64>,
    /// Roll back again unless `fwctl confirm` runs within SECONDS. Required for a
    /// generation that was never confirmed (default there: 120; 0 is refused)
    #[arg(long)]
    pub confirm: Option<u32>,
    /// Why (recorded in the audit trail): one line, no control characters
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

/// The confirm window (seconds, 0: none) a rollback to a generation gets; None
/// when a generation that was never confirmed would be brought back without one (pure).
pub fn rollback_window(never_confirmed: bool, asked: Option<u32>) -> Option<u32> {
    match (never_confirmed, asked) {
        (true, Some(0)) => None,
        (true, None) => Some(INTERACTIVE_CONFIRM),
        (_, Some(s)) => Some(s),
        (false, None) => Some(0),
    }
}

fn dropped_text(dropped: &[String], unchecked: &Option<String>) {
    for d in dropped {
        println!("not brought back: rule {} has expired since its generation was applied", crate::util::escape_terminal(d));
    }
    if let Some(u) = unchecked {
        eprintln!("warning: {u}");
    }
}

pub fn rollback(a: &RollbackArgs) -> u8 {
    let today = crate::sys::clock::today();
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(10), true) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let current = state.current();
    let history = state.metas();
    let target = match a.to {
        Some(n) if history.iter().any(|m| m.number == n) => n,
        Some(n) => {
            eprintln!("error: there is no generation {n}");
            return EXIT_FAIL;
        }
        None => match apply::rollback_target(&history, current) {
            Some(n) => n,
            None => {
                eprintln!("error: no generation was in effect before the current one");
                return EXIT_FAIL;
            }
        },
    };
    let Some(src) = history.iter().find(|m| m.number == target).cloned() else {
        eprintln!("error: generation {target} is unreadable");
        return EXIT_SYSTEM;
    };
    let never_confirmed = src.confirmed == Some(false);
    let Some(window) = rollback_window(never_confirmed, a.confirm) else {
        eprintln!("error: generation {target} was never confirmed: it can only be brought back with a confirm window (--confirm SECONDS, default {INTERACTIVE_CONFIRM})");
        return EXIT_USAGE;
    };
    if never_confirmed {
        println!("generation {target} was never confirmed: it is brought back with a confirm window of {window} s");
    }
    let t = now();
    let caps = || crate::sys::caps::detect(&a.state.nft);
    let restoring = Restoring { event: "rollback", source: target, replaced: current, confirmed: window == 0, reason: a.reason.clone(), now: t, today };
    let made = match apply::create_restored(&state, &restoring, &caps) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    let g = made.number;
    // As in apply: the watchdog starts before the kernel changes.
    if window > 0 {
        let mut pending = Pending { generation: g, previous: current, deadline_unix: t + window as i64, watchdog_pid: None };
        let started = state.set_pending(Some(&pending)).map_err(|e| e.to_string()).and_then(|_| super::watchdog::spawn(&a.state, g).map_err(|e| format!("cannot start the rollback watchdog: {e}")));
        match started {
            Ok(pid) => {
                pending.watchdog_pid = Some(pid);
                let _ = state.set_pending(Some(&pending));
            }
            Err(e) => {
                let _ = state.set_pending(None);
                let _ = std::fs::remove_dir_all(state.gen_dir(g));
                eprintln!("error: {e}");
                return EXIT_SYSTEM;
            }
        }
    }
    let kernel = a.state.kernel();
    if let Err(e) = apply::load_generation(&state, &kernel, Some(g)) {
        if window > 0 {
            let _ = state.set_pending(None);
        }
        let _ = std::fs::remove_dir_all(state.gen_dir(g));
        eprintln!("error: the kernel refused generation {target}'s ruleset; nothing changed: {e}");
        return EXIT_SYSTEM;
    }
    apply::record_kernel(&state, &kernel, g);
    let _ = state.set_current(Some(g));
    if window == 0 {
        let _ = state.set_confirmed(Some(g));
        let _ = state.set_pending(None);
    }
    let synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, Some(g), current);
    let mut r = apply::record("rollback", if synced.error.is_none() { "ok" } else { "failed" }, &src.appliance, now());
    r.generation = Some(g);
    r.previous_generation = current;
    r.policy_hash = Some(src.policy_hash.clone());
    r.ruleset_hash = state.meta(g).ok().map(|m| m.ruleset_hash).or(Some(src.ruleset_hash.clone()));
    r.git_commit = src.git_commit.clone();
    r.reason = a.reason.clone();
    r.message = Some(match &synced.error {
        None => format!("restored the ruleset and tunnels of generation {target} as generation {g}"),
        Some(e) => format!("restored the ruleset of generation {target} as generation {g}; the tunnels could not follow: {e}"),
    });
    r.summary = serde_json::json!({ "source": target, "expired_rules_dropped": made.dropped, "confirm_seconds": window, "tunnels": apply::tunnels_json(&synced.done) });
    if let Err(c) = audit(&state, r) {
        return c;
    }
    dropped_text(&made.dropped, &made.unchecked);
    print!("{}", escape_terminal_lines(&apply::tunnels_text(&synced.done)));
    println!("rolled back to generation {target} (now generation {g})");
    if window > 0 {
        println!("run `fwctl confirm` within {window} s, or generation {} is restored automatically", current.map(|p| p.to_string()).unwrap_or_else(|| "none (no fwctl table)".into()));
    }
    if let Some(e) = synced.error {
        eprintln!("error: the ruleset of generation {target} is in place, but the tunnels could not be brought to its peers: {}", crate::util::escape_terminal(&e));
        return EXIT_SYSTEM;
    }
    EXIT_OK
}

pub fn restore(a: &RestoreArgs) -> u8 {
    let today = crate::sys::clock::today();
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(30), false) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let current = state.current();
    let confirmed = state.confirmed();
    let Some(target) = confirmed.or_else(|| state.numbers().into_iter().rfind(|n| Some(*n) <= current)) else {
        println!("no confirmed generation: nothing to restore");
        return EXIT_OK;
    };
    let src = state.meta(target).ok();
    let appliance = src.as_ref().map(|m| m.appliance.clone()).unwrap_or_default();
    let ok_to_confirm = confirmed == Some(target) || src.as_ref().is_some_and(|m| m.confirmed != Some(false));
    let kernel = a.state.kernel();
    let caps = || crate::sys::caps::detect(&a.state.nft);
    let restoring = Restoring { event: "restore", source: target, replaced: current, confirmed: ok_to_confirm, reason: None, now: now(), today };
    let mut synced = crate::vpn::ops::TunnelSync::default();
    let mut made_number = None;
    let mut dropped = vec![];
    let result = match apply::create_restored(&state, &restoring, &caps) {
        Err(e) => Err(e),
        Ok(made) => {
            let g = made.number;
            dropped_text(&made.dropped, &made.unchecked);
            dropped = made.dropped;
            match apply::load_generation(&state, &kernel, Some(g)) {
                Err(e) => {
                    let _ = std::fs::remove_dir_all(state.gen_dir(g));
                    Err(e)
                }
                Ok(()) => {
                    made_number = Some(g);
                    apply::record_kernel(&state, &kernel, g);
                    let _ = state.set_current(Some(g));
                    if ok_to_confirm {
                        let _ = state.set_confirmed(Some(g));
                    }
                    let _ = state.set_pending(None);
                    synced = apply::tunnels_to_generation(&state, &crate::vpn::ops::SystemTunnels, Some(g), current);
                    match &synced.error {
                        Some(e) => Err(format!("the ruleset of generation {target} is in place, but the tunnels could not be brought to its peers: {e}")),
                        None => Ok(()),
                    }
                }
            }
        }
    };
    let mut r = apply::record("restore", if result.is_ok() { "ok" } else { "failed" }, &appliance, now());
    r.generation = made_number;
    r.previous_generation = current;
    if let Err(e) = &result {
        r.message = Some(e.clone());
    }
    r.summary = serde_json::json!({ "source": target, "expired_rules_dropped": dropped, "tunnels": apply::tunnels_json(&synced.done) });
    let _ = audit(&state, r);
    print!("{}", escape_terminal_lines(&apply::tunnels_text(&synced.done)));
    match result {
        Ok(()) => {
            println!("restored generation {target} (now generation {})", made_number.unwrap_or(target));
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {}", crate::util::escape_terminal(&e));
            EXIT_SYSTEM
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_never_confirmed_generation_is_brought_back_only_with_a_window() {
        assert_eq!(rollback_window(true, None), Some(INTERACTIVE_CONFIRM));
        assert_eq!(rollback_window(true, Some(0)), None);
        assert_eq!(rollback_window(true, Some(5)), Some(5));
        assert_eq!(rollback_window(false, None), Some(0));
        assert_eq!(rollback_window(false, Some(7)), Some(7));
    }
}
