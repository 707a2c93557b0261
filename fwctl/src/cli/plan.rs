//! `fwctl plan [PATH]`: what `apply` would change — flows, NAT, ruleset, tunnels —
//! against the applied generation, the live kernel and the running tunnels.
//! Exit 0: nothing to change; 2: changes.
//!
//! The applied generation is compared as applied (compiled for the date it was
//! applied on), so rules that have expired since show as flows going away.
//! Read-only: the state directory is opened without creating or chmodding
//! anything (a missing one means nothing was applied yet).
use super::state_args::{StateArgs, TunnelArgs};
use super::{OutputArgs, PolicyArgs, EXIT_CHANGES, EXIT_FAIL, EXIT_OK};
use clap::Args;

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub tunnels: TunnelArgs,
}

pub fn exec(a: &PlanArgs) -> u8 {
    let state = match crate::state::State::open_read_only(&a.state.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return super::EXIT_SYSTEM;
        }
    };
    let kernel = a.state.kernel();
    let today = crate::sys::clock::today();
    let caps = crate::sys::caps::detect(&a.state.nft);
    let prev = match crate::apply::previous(&state, caps) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAIL;
        }
    };
    let d = match crate::apply::desired(&a.policy.path, today, caps, prev.as_ref().map(|p| &p.compiled.decision.alloc)) {
        Ok(d) => d,
        Err(loaded) => {
            super::report(&loaded, &loaded.diags);
            return EXIT_FAIL;
        }
    };
    let plan = crate::apply::plan(&d, prev.as_ref(), &kernel, a.tunnels.tunnels().as_ref(), &state);
    let refusal = crate::apply::refusals(&d, prev.as_ref());
    if a.out.json {
        let mut j = plan.json();
        j["would_refuse"] = serde_json::json!(refusal.as_ref().map(|r| &r.messages));
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        print!("{}", crate::util::escape_terminal_lines(&plan.text()));
        if let Some(r) = &refusal {
            for m in &r.messages {
                println!("apply would refuse: {}", crate::util::escape_terminal(m));
            }
        }
    }
    if plan.has_changes() { EXIT_CHANGES } else { EXIT_OK }
}
