//! `fwctl history [--json]`: the applied generations, newest first.
use super::state_args::StateArgs;
use super::{OutputArgs, EXIT_OK};
use clap::Args;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn exec(a: &HistoryArgs) -> u8 {
    let state = match a.state.open() {
        Ok(s) => s,
        Err(c) => return c,
    };
    let (cur, conf, pend) = (state.current(), state.confirmed(), state.pending().map(|p| p.generation));
    let metas: Vec<crate::state::Meta> = state.numbers().into_iter().rev().filter_map(|n| state.meta(n).ok()).collect();
    if a.out.json {
        let v: Vec<serde_json::Value> = metas
            .iter()
            .map(|m| serde_json::json!({"generation": m.number, "time": m.time, "event": m.event, "source": m.source, "actor": m.actor, "git_commit": m.git_commit, "git_dirty": m.git_dirty, "reason": m.reason, "summary": m.summary, "policy_hash": m.policy_hash, "ruleset_hash": m.ruleset_hash, "current": Some(m.number) == cur, "confirmed": Some(m.number) == conf, "pending": Some(m.number) == pend}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return EXIT_OK;
    }
    println!("{:>4}  {:<3} {:<20} {:<9} {:<14} {:<9} {:<24} summary", "gen", "", "time (UTC)", "event", "actor", "git", "reason");
    for m in &metas {
        let mark = format!("{}{}{}", if Some(m.number) == cur { "*" } else { " " }, if Some(m.number) == conf { "c" } else { " " }, if Some(m.number) == pend { "?" } else { " " });
        let actor = match &m.actor.sudo_user {
            Some(s) => format!("{s}({})", m.actor.user),
            None => m.actor.user.clone(),
        };
        let git = m.git_commit.as_deref().map(|c| format!("{}{}", crate::text::truncate_bytes(c, 7), if m.git_dirty == Some(true) { "+" } else { "" })).unwrap_or_else(|| "-".into());
        let event = match m.source {
            Some(s) => format!("{}:{s}", m.event),
            None => m.event.clone(),
        };
        println!("{:>4}  {mark} {:<20} {:<9} {:<14} {:<9} {:<24} {}", m.number, m.time, event, actor, git, m.reason.as_deref().unwrap_or("-"), m.summary);
    }
    println!("(* current, c last confirmed, ? awaiting confirmation)");
    EXIT_OK
}
