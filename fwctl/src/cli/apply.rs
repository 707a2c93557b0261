//! `fwctl apply [PATH] [--yes] [--confirm SECONDS] [--reason TEXT] [--force]`:
//! refuse or apply in one kernel transaction, then sync the policy's tunnels in
//! place, with an optional commit-confirm window.
//!
//! All or nothing where possible: a tunnel whose change cannot be planned makes
//! apply refuse before anything changes; when the tunnels still cannot be
//! brought to the new policy after its ruleset is loaded (e.g. a listen port
//! taken meanwhile), the previous generation's ruleset is put back and the
//! tunnels are synced back to its peers; the failure is reported and audited
//! (`apply-failed`, exit 3) and no generation is added.
use super::state_args::{audit, now, StateArgs, TunnelArgs};
use super::{OutputArgs, PolicyArgs, EXIT_FAIL, EXIT_OK, EXIT_SYSTEM};
use crate::apply;
use crate::state::{Meta, Pending};
use crate::sys::nft::Kernel;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

/// The confirm window when a person applies at a terminal and gives no --confirm.
pub const INTERACTIVE_CONFIRM: u32 = 120;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub tunnels: TunnelArgs,
    /// Do not ask; required when stdin is not a terminal
    #[arg(long)]
    pub yes: bool,
    /// Roll back automatically unless `fwctl confirm` runs within SECONDS (0: no window).
    /// Default: 120 at a terminal without --yes, otherwise none.
    #[arg(long)]
    pub confirm: Option<u32>,
    /// Why (recorded in the audit trail; required with --force): one line, no control characters
    #[arg(long, value_parser = super::state_args::parse_reason)]
    pub reason: Option<String>,
    /// Apply even though it cuts a management flow (anti-lockout); needs --reason
    #[arg(long)]
    pub force: bool,
    /// Seconds to wait for another apply to finish
    #[arg(long, default_value_t = 10)]
    pub wait: u64,
}

fn refuse(state: &crate::state::State, appliance: &str, path: &str, reason: &Option<String>, msgs: &[String]) -> u8 {
    for m in msgs {
        eprintln!("refused: {}", crate::util::escape_terminal(m));
    }
    let mut r = apply::record("apply-refused", "refused", appliance, now());
    r.policy_path = Some(path.to_string());
    r.reason = reason.clone();
    r.message = Some(msgs.join("; "));
    let _ = audit(state, r);
    EXIT_FAIL
}

pub fn exec(a: &ApplyArgs) -> u8 {
    let (state, _lock) = match a.state.open_locked(Duration::from_secs(a.wait), true) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let kernel = a.state.kernel();
    let today = crate::sys::clock::today();
    let caps = crate::sys::caps::detect(&a.state.nft);
    let path_text = a.policy.path.display().to_string();
    let prev = match apply::previous(&state, caps) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    let d = match apply::desired(&a.policy.path, today, caps, prev.as_ref().map(|p| &p.compiled.decision.alloc)) {
        Ok(d) => d,
        Err(loaded) => {
            super::report(&loaded, &loaded.diags);
            let msgs: Vec<String> = loaded.diags.iter().filter(|d| d.is_error()).map(|d| d.message.clone()).collect();
            return refuse(&state, "unknown", &path_text, &a.reason, &msgs);
        }
    };
    let p = d.loaded.policy.as_ref().expect("policy");
    let appliance = p.name.clone();
    let mut event = "apply";
    if let Some(r) = apply::refusals(&d, prev.as_ref()) {
        let forced = r.lockout && a.force && a.reason.as_deref().is_some_and(|s| !s.trim().is_empty()) && d.loaded.diags.iter().all(|x| !x.is_error()) && r.messages.iter().all(|m| !m.starts_with("test #"));
        if !forced {
            let mut msgs = r.messages.clone();
            if r.lockout && !a.force {
                msgs.push("to apply anyway (you may lose access): --force --reason \"…\"".into());
            } else if r.lockout && a.reason.as_deref().is_none_or(|s| s.trim().is_empty()) {
                msgs.push("--force needs a non-empty --reason".into());
            }
            return refuse(&state, &appliance, &path_text, &a.reason, &msgs);
        }
        for m in &r.messages {
            eprintln!("warning (forced): {}", crate::util::escape_terminal(m));
        }
        event = "apply-forced";
    }
    let tunnels = a.tunnels.tunnels();
    let plan = apply::plan(&d, prev.as_ref(), &kernel, tunnels.as_ref(), &state);
    if !a.out.json {
        print!("{}", crate::util::escape_terminal_lines(&plan.text()));
    }
    // A tunnel whose change cannot even be planned (a key file others can read,
    // an endpoint that does not resolve, its interface taken) would fail the
    // sync: refuse before anything changes.
    let unplannable: Vec<String> = plan.tunnels.iter().filter(|t| t.action == crate::vpn::plan::Action::Error).map(|t| format!("tunnel {}: {}", t.iface, t.error.as_deref().unwrap_or("cannot be planned"))).collect();
    if !unplannable.is_empty() {
        let mut msgs = unplannable;
        msgs.push("fix the tunnel, or apply the ruleset alone with --no-tunnels".into());
        return refuse(&state, &appliance, &path_text, &a.reason, &msgs);
    }
    if !plan.has_changes() {
        if a.out.json {
            println!("{}", serde_json::json!({"applied": false, "reason": "nothing to change", "plan": plan.json()}));
        } else {
            println!("nothing to change");
        }
        return EXIT_OK;
    }
    let interactive = std::io::stdin().is_terminal();
    if !a.yes {
        if !interactive {
            return refuse(&state, &appliance, &path_text, &a.reason, &["stdin is not a terminal: pass --yes to apply without asking".into()]);
        }
        eprint!("apply this change? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not applied");
            return EXIT_FAIL;
        }
    }
    let confirm = a.confirm.unwrap_or(if interactive && !a.yes { INTERACTIVE_CONFIRM } else { 0 });
    let t = now();
    let (git_commit, git_dirty) = apply::git_info(&a.policy.path);
    let previous = state.current();
    let mut meta = Meta {
        time: crate::audit::rfc3339(t),
        unix: t,
        event: "apply".into(),
        replaced: previous,
        compiled_on: Some(today.to_string()),
        confirmed: Some(confirm == 0),
        actor: crate::audit::actor(),
        reason: a.reason.clone(),
        policy_path: path_text.clone(),
        git_commit: git_commit.clone(),
        git_dirty,
        policy_hash: d.policy_hash.clone(),
        ruleset_hash: d.ruleset_hash.clone(),
        summary: plan.summary(),
        appliance: appliance.clone(),
        tunnels_skipped: !tunnels.managed(),
        ..Default::default()
    };
    let files = [
        ("ruleset.nft", d.script.clone()),
        ("ruleset.json", serde_json::to_string(&d.compiled.ruleset).expect("json")),
        ("alloc.json", serde_json::to_string(&d.compiled.decision.alloc).expect("json")),
        ("plan.txt", plan.text()),
        ("plan.json", serde_json::to_string_pretty(&plan.json()).expect("json")),
    ];
    let g = match state.create(&mut meta, &d.files, &files) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    // The watchdog starts before the kernel changes, so a crash right after the
    // change still rolls back.
    if confirm > 0 {
        let mut pending = Pending { generation: g, previous, deadline_unix: t.saturating_add(i64::from(confirm)), watchdog_pid: None };
        if let Err(e) = state.set_pending(Some(&pending)) {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
        match super::watchdog::spawn(&a.state, g) {
            Ok(pid) => {
                pending.watchdog_pid = Some(pid);
                let _ = state.set_pending(Some(&pending));
            }
            Err(e) => {
                let _ = state.set_pending(None);
                let _ = std::fs::remove_dir_all(state.gen_dir(g));
                eprintln!("error: cannot start the rollback watchdog: {e}");
                return EXIT_SYSTEM;
            }
        }
    }
    // One transaction: the element delta when only set contents change — written
    // over netlink in-process, or, if that fails, loaded as an `nft -f` script —
    // else the whole table. A delta that does not fit the live table fails
    // atomically; then the whole table is replaced. A change of tunnels only
    // loads nothing.
    let delta = match (&prev, &plan.drift) {
        (Some(_), None) => plan.ruleset.delta(),
        _ => None,
    };
    let started = Instant::now();
    let mut how = "full replace";
    let mut via = "nft";
    let mut netlink_error = None;
    let mut result = Err(String::new());
    if !plan.ruleset_changes() {
        how = "ruleset unchanged";
        via = "-";
        result = Ok(());
    } else if let Some(delta) = &delta {
        how = "element delta";
        result = match kernel.write_elements(crate::compile::ir::TABLE, delta) {
            Ok(()) => {
                via = "netlink";
                Ok(())
            }
            Err(e) => {
                netlink_error = Some(e.to_string());
                kernel.load(&crate::plan::delta::script(crate::compile::ir::TABLE, delta)).map_err(|e| e.to_string())
            }
        };
    }
    if result.is_err() {
        how = "full replace";
        via = "nft";
        result = kernel.load(&d.script).map_err(|e| e.to_string());
    }
    let took = started.elapsed();
    if let Err(e) = result {
        let _ = state.set_pending(None);
        let _ = std::fs::remove_dir_all(state.gen_dir(g));
        eprintln!("error: the kernel refused the ruleset; the previous ruleset is still in place: {e}");
        let mut r = apply::record("apply-failed", "failed", &appliance, now());
        r.policy_path = Some(path_text);
        r.message = Some(e);
        r.reason = a.reason.clone();
        let _ = audit(&state, r);
        return EXIT_SYSTEM;
    }
    // The tunnels follow the ruleset, in place. If they cannot, the whole apply
    // is undone: the previous ruleset and the previous peers.
    let old_policy = prev.as_ref().and_then(|pv| pv.loaded.policy.as_ref());
    let synced = tunnels.sync(p, old_policy);
    if let Some(e) = &synced.error {
        eprint!("{}", crate::util::escape_terminal_lines(&apply::tunnels_text(&synced.done)));
        eprintln!("error: the tunnels could not be brought to the new policy: {e}");
        let (message, code) = undo(&state, &kernel, tunnels.as_ref(), plan.ruleset_changes(), prev.as_ref(), p, previous, g, e);
        let mut r = apply::record("apply-failed", "failed", &appliance, now());
        r.policy_path = Some(path_text);
        r.reason = a.reason.clone();
        r.generation = (code.is_some()).then_some(g);
        r.previous_generation = previous;
        r.message = Some(message);
        r.summary = serde_json::json!({ "text": plan.summary(), "tunnels": apply::tunnels_json(&synced.done) });
        let _ = audit(&state, r);
        return EXIT_SYSTEM;
    }
    apply::record_kernel(&state, &kernel, g);
    let _ = state.set_current(Some(g));
    if confirm == 0 {
        let _ = state.set_confirmed(Some(g));
    }
    let mut r = apply::record(event, "ok", &appliance, now());
    r.generation = Some(g);
    r.previous_generation = previous;
    r.policy_path = Some(path_text);
    r.git_commit = git_commit;
    r.git_dirty = git_dirty;
    r.policy_hash = Some(d.policy_hash.clone());
    r.ruleset_hash = Some(d.ruleset_hash.clone());
    r.reason = a.reason.clone();
    r.summary = serde_json::json!({
        "text": plan.summary(),
        "flows": plan.flows.changes.iter().map(|c| c.line()).take(200).collect::<Vec<_>>(),
        "nat": plan.nat,
        "tunnels": apply::tunnels_json(&synced.done),
        "how": how,
        "via": via,
        "netlink_error": netlink_error,
        "kernel_us": took.as_micros() as u64,
        "confirm_seconds": confirm,
    });
    if let Err(c) = audit(&state, r) {
        return c;
    }
    for t in &synced.done {
        for w in &t.warnings {
            eprintln!("warning: {w}");
        }
    }
    if let Some(e) = &netlink_error {
        eprintln!("warning: the element delta over netlink failed, applied with nft instead: {e}");
    }
    if a.out.json {
        println!("{}", serde_json::json!({"applied": true, "generation": g, "how": how, "via": via, "netlink_error": netlink_error, "kernel_ms": took.as_secs_f64() * 1000.0, "confirm_seconds": confirm, "tunnels": apply::tunnels_json(&synced.done), "plan": plan.json()}));
    } else {
        print!("{}", crate::util::escape_terminal_lines(&apply::tunnels_text(&synced.done)));
        let how_text = if via == "-" { how.to_string() } else { format!("{how} via {via}") };
        println!("applied generation {g} ({how_text}, kernel transaction {:.1} ms)", took.as_secs_f64() * 1000.0);
        if confirm > 0 {
            println!("run `fwctl confirm` within {confirm} s, or generation {} is restored automatically", previous.map(|p| p.to_string()).unwrap_or_else(|| "none (no fwctl table)".into()));
        }
    }
    EXIT_OK
}

/// Undo an apply whose tunnels failed after its ruleset was loaded: load the
/// previous generation's ruleset (none: remove fwctl's table) and sync the
/// tunnels back to its peers, then drop generation `g`. Returns the message for
/// the audit record and, when the previous ruleset could not be put back,
/// `Some(g)`: the new ruleset stays loaded and `g` becomes current (unconfirmed)
/// so that the state says what the kernel holds.
#[allow(clippy::too_many_arguments)]
fn undo(
    state: &crate::state::State,
    kernel: &dyn Kernel,
    tunnels: &dyn apply::Tunnels,
    ruleset_loaded: bool,
    prev: Option<&apply::Previous>,
    new_policy: &crate::model::Policy,
    previous: Option<u64>,
    g: u64,
    error: &str,
) -> (String, Option<u64>) {
    let mut msg = format!("tunnels: {error}");
    let _ = state.set_pending(None);
    if ruleset_loaded {
        if let Err(e) = apply::load_generation(state, kernel, previous) {
            eprintln!("error: the previous ruleset could not be put back either: {e}; the new ruleset stays loaded as generation {g} (not confirmed)");
            let _ = state.set_current(Some(g));
            apply::record_kernel(state, kernel, g);
            msg.push_str(&format!("; restoring the previous ruleset failed: {e}; generation {g}'s ruleset stays loaded"));
            return (msg, Some(g));
        }
        if let Some(n) = previous {
            apply::record_kernel(state, kernel, n);
        }
    }
    let what = match previous {
        Some(n) => format!("generation {n}'s ruleset"),
        None => "the state before fwctl (no fwctl table)".into(),
    };
    if ruleset_loaded {
        eprintln!("the ruleset was rolled back: {what} is in place again");
        msg.push_str(&format!("; ruleset rolled back to {what}"));
    }
    match prev.and_then(|pv| pv.loaded.policy.as_ref().filter(|_| !pv.meta.tunnels_skipped)) {
        Some(old) => {
            let back = tunnels.sync(old, Some(new_policy));
            eprint!("{}", apply::tunnels_text(&back.done));
            match back.error {
                None => {
                    eprintln!("the tunnels were synced back to generation {}'s peers", previous.unwrap_or_default());
                    msg.push_str("; tunnels synced back to its peers");
                }
                Some(e2) => {
                    eprintln!("error: the tunnels could not be synced back either: {e2}; check `fwctl vpn status`");
                    msg.push_str(&format!("; syncing the tunnels back failed: {e2}"));
                }
            }
        }
        None => {
            eprintln!("the tunnels were left as they are (no earlier generation manages them)");
            msg.push_str("; tunnels left as they are");
        }
    }
    let _ = std::fs::remove_dir_all(state.gen_dir(g));
    (msg, None)
}
