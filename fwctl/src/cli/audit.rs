//! `fwctl audit verify|log|export`: check and read the hash-chained audit trail.
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
        /// Only records on or after this date (YYYY-MM-DD)
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A self-contained JSON document for security review: records, head, verification
    Export {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        since: Option<String>,
    },
}

fn read(s: &StateArgs) -> Result<(String, Option<crate::audit::Head>), u8> {
    crate::audit::Log { dir: &s.state_dir }.read().map_err(|e| {
        eprintln!("error: cannot read the audit log: {e}");
        EXIT_SYSTEM
    })
}

pub fn exec(a: &AuditArgs) -> u8 {
    match &a.action {
        AuditAction::Verify { state, json } => {
            let (text, head) = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let r = crate::audit::verify(&text, head.as_ref());
            match (&r, json) {
                (Ok(v), true) => println!("{}", serde_json::json!({"ok": true, "records": v.len(), "head": head})),
                (Err(b), true) => println!("{}", serde_json::json!({"ok": false, "first_bad": b})),
                (Ok(v), false) => println!("audit trail ok: {} record(s), chain intact{}", v.len(), if head.is_some() { ", head matches" } else { "" }),
                (Err(b), false) => eprintln!("audit trail BROKEN: {b}"),
            }
            if r.is_ok() { EXIT_OK } else { EXIT_FAIL }
        }
        AuditAction::Log { state, since, json } => {
            let (text, head) = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let (records, broken) = match crate::audit::verify(&text, head.as_ref()) {
                Ok(v) => (v, None),
                Err(b) => (text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(), Some(b)),
            };
            let keep: Vec<&crate::audit::Record> = records.iter().filter(|r| since.as_ref().is_none_or(|s| r.time.as_str() >= s.as_str())).collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&keep).expect("json"));
            } else {
                for r in &keep {
                    let who = match &r.actor.sudo_user {
                        Some(s) => format!("{s} (as {})", r.actor.user),
                        None => r.actor.user.clone(),
                    };
                    let from = r.actor.ssh_origin.as_deref().map(|o| format!(" from {o}")).unwrap_or_default();
                    let gen = r.generation.map(|g| format!(" gen {g}")).unwrap_or_default();
                    println!("#{} {} {} {}{gen} by {who}{from} on {}", r.seq, r.time, r.event, r.result, r.host);
                    if let Some(reason) = &r.reason {
                        println!("    reason: {reason}");
                    }
                    if let Some(c) = &r.git_commit {
                        println!("    policy: git {c}{}", if r.git_dirty == Some(true) { " (uncommitted changes)" } else { "" });
                    }
                    if let Some(t) = r.summary.get("text").and_then(|x| x.as_str()) {
                        println!("    change: {t}");
                    }
                    if let Some(m) = &r.message {
                        println!("    {m}");
                    }
                }
            }
            if let Some(b) = broken {
                eprintln!("warning: the audit trail does not verify: {b}");
                return EXIT_FAIL;
            }
            EXIT_OK
        }
        AuditAction::Export { state, since } => {
            let (text, head) = match read(state) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let v = crate::audit::verify(&text, head.as_ref());
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
