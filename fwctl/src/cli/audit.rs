//! `fwctl audit verify|log|export`: check and read the hash-chained audit trail.
//!
//! Read-only: opens nothing for writing, creates nothing. A state directory that
//! does not exist is an error (exit 3), not an empty trail; text from the
//! records is escaped for the terminal.
use super::state_args::StateArgs;
use super::{EXIT_FAIL, EXIT_OK, EXIT_SYSTEM};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Check every record's hash and the chain; exit 1 naming the first bad record
    Verify {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print the records readably
    Log {
        #[command(flatten)]
        state: StateArgs,
        /// Only records on or after this date (YYYY-MM-DD, UTC)
        #[arg(long, value_parser = parse_since)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A self-contained JSON document for security review: records, head, verification
    Export {
        #[command(flatten)]
        state: StateArgs,
        /// Only records on or after this date (YYYY-MM-DD, UTC)
        #[arg(long, value_parser = parse_since)]
        since: Option<String>,
    },
}

/// `--since` must be a date: anything else would silently select nothing.
fn parse_since(s: &str) -> Result<String, String> {
    crate::sys::clock::parse_date(s).map(|d| d.to_string()).ok_or_else(|| format!("{s:?} is not a date (YYYY-MM-DD)"))
}

/// The log, its head file and the verification, of an existing state directory.
struct Trail {
    text: String,
    head: crate::audit::HeadFile,
    verified: Result<Vec<crate::audit::Record>, crate::audit::Broken>,
}

fn read(s: &StateArgs) -> Result<Trail, u8> {
    let state = crate::state::State::open_read_only(&s.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_SYSTEM
    })?;
    if !state.exists() {
        eprintln!("error: there is no state directory at {}: nothing to verify", s.state_dir.display());
        return Err(EXIT_SYSTEM);
    }
    let (text, head) = crate::audit::Log { dir: &state.dir }.read().map_err(|e| {
        eprintln!("error: cannot read the audit log: {e}");
        EXIT_SYSTEM
    })?;
    let verified = crate::audit::verify_trail(&text, &head, state.settled_generation());
    Ok(Trail { text, head, verified })
}

pub fn exec(a: &AuditArgs) -> u8 {
    match &a.action {
        AuditAction::Verify { state, json } => {
            let Trail { head, verified: r, .. } = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let head = head.head();
            match (&r, json) {
                (Ok(v), true) => println!("{}", serde_json::json!({"ok": true, "records": v.len(), "head": head})),
                (Err(b), true) => println!("{}", serde_json::json!({"ok": false, "first_bad": b})),
                (Ok(v), false) => println!("audit trail ok: {} record(s), chain intact{}", v.len(), if head.is_some() { ", head matches" } else { "" }),
                (Err(b), false) => eprintln!("audit trail BROKEN: {b}"),
            }
            if r.is_ok() { EXIT_OK } else { EXIT_FAIL }
        }
        AuditAction::Log { state, since, json } => {
            let Trail { text, verified, .. } = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let (records, broken) = match verified {
                Ok(v) => (v, None),
                Err(b) => (text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(), Some(b)),
            };
            let keep: Vec<&crate::audit::Record> = records.iter().filter(|r| since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())).collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&keep).expect("json"));
            } else {
                for r in &keep {
                    print!("{}", log_text(r));
                }
            }
            if let Some(b) = broken {
                eprintln!("warning: the audit trail does not verify: {b}");
                return EXIT_FAIL;
            }
            EXIT_OK
        }
        AuditAction::Export { state, since } => {
            let Trail { text, head, verified: v } = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let head = head.head();
            let records: Vec<crate::audit::Record> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|r: &crate::audit::Record| since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())).collect();
            let doc = serde_json::json!({
                "format": "fwctl-audit-export/1",
                "exported_at": crate::audit::rfc3339(super::state_args::now()),
                "host": crate::audit::hostname(),
                "verified": v.is_ok(),
                "first_bad": v.as_ref().err(),
                "head": head,
                "how_to_verify": "each record's hash is sha256 of its JSON with \"hash\" set to \"\"; prev_hash chains to the previous record (genesis: 64 zeros); seq counts from 1",
                "records": records,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
            if v.is_ok() { EXIT_OK } else { EXIT_FAIL }
        }
    }
}

/// One record as `audit log` prints it; every field from the record is escaped
/// (a reason or policy text cannot move the cursor or forge a line).
fn log_text(r: &crate::audit::Record) -> String {
    use crate::util::escape_terminal as esc;
    let who = match &r.actor.sudo_user {
        Some(s) => format!("{} (as {})", esc(s), esc(&r.actor.user)),
        None => esc(&r.actor.user).into_owned(),
    };
    let from = r.actor.ssh_origin.as_deref().map(|o| format!(" from {}", esc(o))).unwrap_or_default();
    let gen = r.generation.map(|g| format!(" gen {g}")).unwrap_or_default();
    let mut s = format!("#{} {} {} {}{gen} by {who}{from} on {}\n", r.seq, esc(&r.time), esc(&r.event), esc(&r.result), esc(&r.host));
    if let Some(reason) = &r.reason {
        s.push_str(&format!("    reason: {}\n", esc(reason)));
    }
    if let Some(c) = &r.git_commit {
        s.push_str(&format!("    policy: git {}{}\n", esc(c), if r.git_dirty == Some(true) { " (uncommitted changes)" } else { "" }));
    }
    if let Some(t) = r.summary.get("text").and_then(|x| x.as_str()) {
        s.push_str(&format!("    change: {}\n", esc(t)));
    }
    if let Some(m) = &r.message {
        s.push_str(&format!("    {}\n", esc(m)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_log_escapes_a_forged_line_in_a_reason() {
        let r = crate::audit::Record {
            seq: 4,
            event: "apply".into(),
            result: "ok".into(),
            reason: Some("fix\r#5 2027-01-01T00:00:00Z apply ok by root\x1b[K".into()),
            git_commit: Some("ab\u{1b}]0;x\u{7}".into()),
            message: Some("rule `a\nb`".into()),
            ..Default::default()
        };
        let text = log_text(&r);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("reason: fix\\x0d#5"), "{text}");
    }

    #[test]
    fn since_must_be_a_date() {
        assert_eq!(parse_since("2027-06-30").as_deref(), Ok("2027-06-30"));
        for bad in ["yesterday", "2027-02-30", "2027-6-1", ""] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
