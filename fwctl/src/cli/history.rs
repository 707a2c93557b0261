//! `fwctl history [--json]`: the generations, newest first — every apply,
//! rollback, automatic rollback and restore, i.e. what the kernel ran.
//!
//! Read-only: creates nothing and changes no mode (an auditor without write
//! access can list it). Text from the records is escaped for the terminal.
use super::state_args::StateArgs;
use super::{OutputArgs, EXIT_OK, EXIT_SYSTEM};
use crate::state::Meta;
use crate::util::escape_terminal as esc;
use clap::Args;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

pub fn exec(a: &HistoryArgs) -> u8 {
    let state = match crate::state::State::open_read_only(&a.state.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    if !state.exists() {
        eprintln!("error: there is no state directory at {} (nothing was applied with it)", a.state.state_dir.display());
        return EXIT_SYSTEM;
    }
    let (cur, conf, pend) = (state.current(), state.confirmed(), state.pending().map(|p| p.generation));
    let metas: Vec<Meta> = state.metas().into_iter().rev().collect();
    if a.out.json {
        let v: Vec<serde_json::Value> = metas
            .iter()
            .map(|m| serde_json::json!({"generation": m.number, "time": m.time, "event": m.event, "source": m.source, "replaced": m.replaced, "actor": m.actor, "git_commit": m.git_commit, "git_dirty": m.git_dirty, "reason": m.reason, "summary": m.summary, "policy_hash": m.policy_hash, "ruleset_hash": m.ruleset_hash, "compiled_on": m.compiled_on, "ever_confirmed": m.confirmed, "current": Some(m.number) == cur, "confirmed": Some(m.number) == conf, "pending": Some(m.number) == pend}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return EXIT_OK;
    }
    println!("{:>4}  {:<3} {:<20} {:<9} {:<14} {:<9} {:<24} summary", "gen", "", "time (UTC)", "event", "actor", "git", "reason");
    for m in &metas {
        println!("{}", row(m, cur, conf, pend));
    }
    println!("(* current, c last confirmed, ? awaiting confirmation)");
    EXIT_OK
}

/// One line of the table. Text is cut by characters, never inside one, and escaped.
fn row(m: &Meta, cur: Option<u64>, conf: Option<u64>, pend: Option<u64>) -> String {
    let mark = format!("{}{}{}", if Some(m.number) == cur { "*" } else { " " }, if Some(m.number) == conf { "c" } else { " " }, if Some(m.number) == pend { "?" } else { " " });
    let actor = match &m.actor.sudo_user {
        Some(s) => format!("{}({})", esc(s), esc(&m.actor.user)),
        None => esc(&m.actor.user).into_owned(),
    };
    let git = m.git_commit.as_deref().map(|c| format!("{}{}", esc(&c.chars().take(7).collect::<String>()), if m.git_dirty == Some(true) { "+" } else { "" })).unwrap_or_else(|| "-".into());
    let event = match m.source {
        Some(s) => format!("{}:{s}", esc(&m.event)),
        None => esc(&m.event).into_owned(),
    };
    format!("{:>4}  {mark} {:<20} {:<9} {:<14} {:<9} {:<24} {}", m.number, esc(&m.time), event, actor, git, esc(m.reason.as_deref().unwrap_or("-")), esc(&m.summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_row_of_a_multibyte_git_commit_does_not_panic() {
        let m = Meta { number: 3, git_commit: Some("ééééééééé".into()), event: "apply".into(), ..Default::default() };
        assert!(row(&m, Some(3), None, None).contains(" ééééééé "));
        let m = Meta { git_commit: Some("a\u{1b}ü".into()), ..m };
        assert!(row(&m, None, None, None).contains("a\\x1bü"));
    }

    #[test]
    fn history_row_escapes_control_characters() {
        let m = Meta { number: 1, event: "apply".into(), reason: Some("ok\r   9  *c forged".into()), summary: "s\u{1b}[2J".into(), ..Default::default() };
        let r = row(&m, None, None, None);
        assert!(!r.chars().any(char::is_control), "{r:?}");
    }
}
