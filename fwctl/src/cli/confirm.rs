//! `fwctl confirm`: keep the generation applied with `--confirm` (stop the rollback).
use super::state_args::{audit, now, StateArgs};
use super::{EXIT_OK, EXIT_SYSTEM};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ConfirmArgs {
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn exec(a: &ConfirmArgs) -> u8 {
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(10), true) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(p) = state.pending() else {
        println!("nothing to confirm (no confirm window is open)");
        return EXIT_OK;
    };
    if let Err(e) = state.mark_confirmed(p.generation).and_then(|_| state.set_confirmed(Some(p.generation))).and_then(|_| state.set_pending(None)) {
        eprintln!("error: {e}");
        return EXIT_SYSTEM;
    }
    if let Some(pid) = p.watchdog_pid {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let appliance = state.meta(p.generation).map(|m| m.appliance).unwrap_or_default();
    let mut r = crate::apply::record("confirm", "ok", &appliance, now());
    r.generation = Some(p.generation);
    r.message = Some(format!("confirmed with {} s left", (p.deadline_unix - now()).max(0)));
    if let Err(c) = audit(&state, r) {
        return c;
    }
    println!("generation {} confirmed", p.generation);
    EXIT_OK
}
