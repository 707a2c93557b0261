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
    if let Some(pid) = p.watchdog_pid.and_then(watchdog_target) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
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

/// The watchdog's process id as read from the state file, if it names one process:
/// a value past `i32::MAX` would wrap to a negative id, which `kill` takes as a
/// process group (-1: every process), and 0 is the caller's own group.
fn watchdog_target(pid: u32) -> Option<nix::unistd::Pid> {
    i32::try_from(pid).ok().filter(|&p| p > 0).map(nix::unistd::Pid::from_raw)
}

#[cfg(test)]
mod tests {
    /// A state file's watchdog pid never becomes a process group for `kill`.
    #[test]
    fn watchdog_pid_from_the_state_file_never_signals_a_process_group() {
        assert_eq!(super::watchdog_target(4242), Some(nix::unistd::Pid::from_raw(4242)));
        for bad in [0, u32::MAX, 1 << 31, u32::MAX - 1] {
            assert_eq!(super::watchdog_target(bad), None, "{bad}");
        }
    }
}
