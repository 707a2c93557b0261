//! Safe apply: plan → refuse or confirm → one kernel transaction → the tunnels
//! synced in place → generation and audit record; commit-confirm with a watchdog
//! that rolls back unless confirmed.
//!
//! Input: a policy path, the state directory, a [`Kernel`], the [`Tunnels`] and
//! the time.
//! Output: generations, audit records, kernel changes — each step over the small
//! traits in `sys` (and [`Tunnels`]), so the sequence is testable.
//! Must not: leave the kernel half-changed (every ruleset change is one `nft -f`;
//! when the tunnels cannot follow a new ruleset, the previous generation's
//! ruleset and peers are put back), report success before the audit record is
//! on disk, or print key material.

use crate::audit::{self, Record};
use crate::check::Loaded;
use crate::compile::decide::Allocation;
use crate::compile::ir::Ruleset;
use crate::compile::{compile_with, Capabilities, Compiled};
use crate::model::{Date, Expect, Policy};
use crate::plan::delta::{self, RulesetChange};
use crate::plan::flows::{self, FlowDiff};
use crate::state::{Meta, Pending, State, StateError};
use crate::sys::nft::Kernel;
use crate::vpn::ops::{TunnelDone, TunnelSync};
use crate::vpn::plan::TunnelPlan;
use std::path::{Path, PathBuf};

/// The WireGuard side of apply: plan (read-only) and sync the policy's tunnels.
/// [`crate::vpn::ops::SystemTunnels`] is the real one; [`NoTunnels`] leaves
/// tunnels alone (`--no-tunnels`, and `fwctl lab`, whose tunnel interfaces are
/// plain veth links).
pub trait Tunnels {
    /// Whether tunnels are managed at all.
    fn managed(&self) -> bool {
        true
    }
    /// What a sync to `new` would change; `old` is the applied policy (its VPNs
    /// that `new` dropped are stopped, its peer names name removed peers).
    fn plan(&self, new: &Policy, old: Option<&Policy>) -> Vec<TunnelPlan>;
    /// Bring every tunnel to `new`'s peers, in place.
    fn sync(&self, new: &Policy, old: Option<&Policy>) -> TunnelSync;
}

/// Tunnels are not fwctl's business here.
pub struct NoTunnels;

impl Tunnels for NoTunnels {
    fn managed(&self) -> bool {
        false
    }
    fn plan(&self, _: &Policy, _: Option<&Policy>) -> Vec<TunnelPlan> {
        vec![]
    }
    fn sync(&self, _: &Policy, _: Option<&Policy>) -> TunnelSync {
        TunnelSync::default()
    }
}

/// The policy as it would be applied.
pub struct Desired {
    pub loaded: Loaded,
    pub compiled: Compiled,
    pub script: String,
    pub files: Vec<(PathBuf, String)>,
    pub policy_hash: String,
    pub ruleset_hash: String,
    pub path: PathBuf,
}

/// The applied generation, rebuilt from its snapshot.
pub struct Previous {
    pub number: u64,
    pub meta: Meta,
    pub loaded: Loaded,
    pub compiled: Compiled,
    pub ruleset: Ruleset,
}

pub struct Plan {
    pub flows: FlowDiff,
    pub first: bool,
    /// First generation: the rules that take effect, `allow|deny NAME (file:line)`.
    pub first_rules: Vec<String>,
    /// First generation of a policy too large to list every flow it allows.
    pub flows_not_listed: bool,
    /// First generation: what the created table holds.
    pub created: Option<crate::compile::ir::Stats>,
    pub ruleset: RulesetChange,
    pub nat: Vec<String>,
    /// The live table differs from what the current generation loaded.
    pub drift: Option<String>,
    /// Other tables hooked where they can change fwctl's verdicts.
    pub foreign: Vec<String>,
    /// Tunnels that change (only those), and whether tunnels are managed.
    pub tunnels: Vec<TunnelPlan>,
    pub tunnels_managed: bool,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.flows.changes.is_empty() || !self.ruleset.sets.is_empty() || !self.ruleset.chains_changed.is_empty() || !self.ruleset.sets_added.is_empty() || !self.ruleset.sets_removed.is_empty() || !self.nat.is_empty() || self.first || self.drift.is_some() || !self.tunnels.is_empty()
    }
    /// Whether the nftables ruleset itself changes (else a tunnel-only change).
    pub fn ruleset_changes(&self) -> bool {
        !self.ruleset.sets.is_empty() || !self.ruleset.chains_changed.is_empty() || !self.ruleset.sets_added.is_empty() || !self.ruleset.sets_removed.is_empty() || self.first || self.drift.is_some()
    }
    pub fn summary(&self) -> String {
        if let (true, Some(st)) = (self.first, &self.created) {
            let flows = if self.flows_not_listed {
                "flows not listed".to_string()
            } else {
                format!("{} flow(s) allowed", self.flows.changes.iter().filter(|c| c.now_allowed).count())
            };
            let peers: usize = self.tunnels.iter().map(|t| t.peers.len()).sum();
            return format!(
                "first generation: {} rule(s) take effect, {flows}; table created with {} set(s), {} element(s), {} kernel rule(s); {} NAT change(s); {} tunnel(s) to change ({peers} peer change(s))",
                self.first_rules.len(),
                st.sets,
                st.elements,
                st.kernel_rules,
                self.nat.len(),
                self.tunnels.len()
            );
        }
        let allowed = self.flows.changes.iter().filter(|c| c.now_allowed).count();
        let denied = self.flows.changes.len() - allowed;
        let (add, rem): (usize, usize) = (self.ruleset.sets.iter().map(|s| s.added.len()).sum(), self.ruleset.sets.iter().map(|s| s.removed.len()).sum());
        let peers: usize = self.tunnels.iter().map(|t| t.peers.len()).sum();
        format!(
            "{allowed} flow(s) newly allowed, {denied} newly refused; {add} set element(s) added, {rem} removed; {} chain(s) changed; {} NAT change(s); {} tunnel(s) to change ({peers} peer change(s))",
            self.ruleset.chains_changed.len(),
            self.nat.len(),
            self.tunnels.len()
        )
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "first_generation": self.first,
            "first_generation_rules": self.first_rules,
            "flows_not_listed": self.flows_not_listed,
            "flows": self.flows.changes,
            "flows_truncated": self.flows.truncated,
            "rules_changed": self.flows.rules_changed,
            "ruleset": self.ruleset,
            "nat": self.nat,
            "drift": self.drift,
            "foreign_hooks": self.foreign,
            "tunnels": self.tunnels,
            "tunnels_managed": self.tunnels_managed,
            "summary": self.summary(),
        })
    }
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.first {
            s.push_str("first generation: fwctl's table will be created (flows compared with a policy that allows nothing)\n");
            s.push_str("rules taking effect:\n");
            for r in &self.first_rules {
                s.push_str(&format!("  + {r}\n"));
            }
        }
        if let Some(d) = &self.drift {
            s.push_str(&format!("warning: the live table differs from the applied generation (changed outside fwctl):\n{d}\n"));
        }
        for f in &self.foreign {
            s.push_str(&format!("warning: {f}\n"));
        }
        s.push_str("flows:\n");
        if self.flows_not_listed {
            s.push_str(&format!("  (not listed: more than {FIRST_FLOWS_LIMIT} rules; every flow the rules above allow becomes allowed — `fwctl explain` answers for one flow)\n"));
        } else if self.flows.changes.is_empty() {
            s.push_str("  (no change)\n");
        }
        for c in &self.flows.changes {
            s.push_str(&format!("  {}\n", c.line()));
        }
        if self.flows.truncated {
            s.push_str("  … (truncated)\n");
        }
        s.push_str("nat:\n");
        if self.nat.is_empty() {
            s.push_str("  (no change)\n");
        }
        for n in &self.nat {
            s.push_str(&format!("  {n}\n"));
        }
        s.push_str("ruleset:\n");
        let r = &self.ruleset;
        if r.sets.is_empty() && r.chains_changed.is_empty() && r.sets_added.is_empty() && r.sets_removed.is_empty() {
            s.push_str("  (no change)\n");
        }
        for d in &r.sets {
            s.push_str(&format!("  set {}: +{} -{} elements\n", d.set, d.added.len(), d.removed.len()));
            for e in d.removed.iter().take(10) {
                s.push_str(&format!("    - {e}\n"));
            }
            for e in d.added.iter().take(10) {
                s.push_str(&format!("    + {e}\n"));
            }
            if d.added.len() + d.removed.len() > 20 {
                s.push_str("    …\n");
            }
        }
        for n in &r.sets_added {
            s.push_str(&format!("  + set {n}\n"));
        }
        for n in &r.sets_removed {
            s.push_str(&format!("  - set {n}\n"));
        }
        for n in &r.chains_changed {
            s.push_str(&format!("  ~ chain {n}\n"));
        }
        s.push_str("tunnels:\n");
        if self.tunnels_managed {
            s.push_str(&crate::vpn::plan::text(&self.tunnels));
        } else {
            s.push_str("  (not managed: --no-tunnels)\n");
        }
        s.push_str(&format!("{}\n", self.summary()));
        s
    }
}

/// Policy files relative to the policy root, with the text that was compiled.
fn snapshot(loaded: &Loaded, root: &Path) -> Vec<(PathBuf, String)> {
    loaded
        .sm
        .files()
        .map(|(_, p, text)| {
            let rel = if root.is_dir() { p.strip_prefix(root).unwrap_or(p).to_path_buf() } else { PathBuf::from(p.file_name().unwrap_or_default()) };
            (rel, text.to_string())
        })
        .collect()
}

fn hash_files(files: &[(PathBuf, String)]) -> String {
    let mut v: Vec<String> = files.iter().map(|(p, t)| format!("{}\0{}\0", p.display(), t)).collect();
    v.sort();
    crate::util::sha256_hex(v.concat().as_bytes())
}

pub const HEADER: &str = "fwctl ruleset — generated; do not edit";

/// The date generation `meta` was compiled for: `expires` is judged on it.
/// Generations written before fwctl recorded it: the day it was written (UTC).
pub fn compiled_on(meta: &Meta) -> Date {
    meta.compiled_on.as_deref().and_then(crate::sys::clock::parse_date).unwrap_or_else(|| crate::sys::clock::civil_date(meta.unix.div_euclid(86_400)))
}

/// Load and compile the current generation from its snapshot, as it was
/// applied: for the date it was compiled for, so that a rule that has expired
/// since is still in it (the kernel still runs it) and `plan` shows it going.
pub fn previous(state: &State, caps: Capabilities) -> Result<Option<Previous>, String> {
    let Some(n) = state.current() else { return Ok(None) };
    let meta = state.meta(n).map_err(|e| e.to_string())?;
    let dir = state.gen_dir(n).join("policy");
    let loaded = crate::check::load(&dir, compiled_on(&meta));
    let Some(p) = loaded.policy.as_ref() else { return Err(format!("generation {n}: its policy snapshot no longer loads")) };
    let alloc: Option<Allocation> = state.read(n, "alloc.json").ok().and_then(|s| serde_json::from_str(&s).ok());
    let compiled = compile_with(p, caps, alloc.as_ref()).map_err(|e| format!("generation {n}: {e}"))?;
    let ruleset: Ruleset = state.read(n, "ruleset.json").ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_else(|| compiled.ruleset.clone());
    Ok(Some(Previous { number: n, meta, loaded, compiled, ruleset }))
}

/// The generation `fwctl rollback` (without `--to`) goes back to: the one that
/// was in effect before the current one (pure, over the history, oldest first).
/// None: there is none (nothing applied, or the current generation replaced no
/// fwctl table).
///
/// Generations record the one they replaced. For older ones that do not, the
/// newest earlier generation that was not rolled back automatically.
pub fn rollback_target(history: &[Meta], current: Option<u64>) -> Option<u64> {
    let cur = current?;
    let exists = |n: u64| history.iter().any(|m| m.number == n);
    if let Some(m) = history.iter().find(|m| m.number == cur).filter(|m| m.compiled_on.is_some()) {
        return m.replaced.filter(|&r| exists(r));
    }
    let rolled_back = |n: u64| history.iter().any(|m| m.event == "rollback-auto" && m.replaced == Some(n));
    history.iter().rev().map(|m| m.number).find(|&n| n < cur && !rolled_back(n))
}

/// Rules of a snapshot that have expired since it was compiled (`then`), as of
/// `today`: "`name` (expired YYYY-MM-DD)". Pure.
pub fn expired_since(p: &Policy, then: Date) -> Vec<String> {
    p.rules.iter().filter(|r| r.expired && r.expires.is_some_and(|e| e >= then)).map(|r| format!("`{}` (expired {})", r.name, r.expires.expect("checked"))).collect()
}

/// A stored generation made ready to be loaded again today.
pub struct Reapply {
    /// ruleset.nft, ruleset.json, alloc.json, and the source's plan files.
    pub files: Vec<(&'static str, String)>,
    pub policy: Vec<(PathBuf, String)>,
    /// Rules left out because they expired since the generation was compiled.
    pub dropped: Vec<String>,
    pub ruleset_hash: Option<String>,
    /// The snapshot does not load today: its stored ruleset is used as it is, and
    /// expiry could not be checked (why).
    pub unchecked: Option<String>,
}

/// Generation `n` as it can be loaded `today`: its stored ruleset, or — when
/// rules of its snapshot have expired since it was compiled — the snapshot
/// recompiled for today, without them (`caps` is asked only then).
pub fn reapply(state: &State, n: u64, today: Date, caps: &dyn Fn() -> Capabilities) -> Result<Reapply, String> {
    let meta = state.meta(n).map_err(|e| e.to_string())?;
    let policy = state.policy_files(n).map_err(|e| e.to_string())?;
    let loaded = crate::check::load(&state.gen_dir(n).join("policy"), today);
    let p = loaded.policy.as_ref().filter(|_| !loaded.has_errors());
    let unchecked = p.is_none().then(|| format!("generation {n}'s policy snapshot no longer loads: its stored ruleset is used as it is, without checking `expires`"));
    let dropped = p.map(|p| expired_since(p, compiled_on(&meta))).unwrap_or_default();
    let mut files: Vec<(&'static str, String)> = vec![];
    let mut ruleset_hash = None;
    if let (Some(p), false) = (p, dropped.is_empty()) {
        let alloc: Option<Allocation> = state.read(n, "alloc.json").ok().and_then(|s| serde_json::from_str(&s).ok());
        let c = compile_with(p, caps(), alloc.as_ref()).map_err(|e| format!("generation {n}: {e}"))?;
        files.push(("ruleset.nft", crate::render::nft::script(&c.ruleset, HEADER)));
        files.push(("ruleset.json", serde_json::to_string(&c.ruleset).expect("json")));
        files.push(("alloc.json", serde_json::to_string(&c.decision.alloc).expect("json")));
        ruleset_hash = Some(crate::util::sha256_hex(crate::render::nft::table(&c.ruleset).as_bytes()));
    } else {
        files.push(("ruleset.nft", state.read(n, "ruleset.nft").map_err(|e| e.to_string())?));
        for f in ["ruleset.json", "alloc.json"] {
            if let Ok(t) = state.read(n, f) {
                files.push((f, t));
            }
        }
    }
    for f in ["plan.txt", "plan.json"] {
        if let Ok(t) = state.read(n, f) {
            files.push((f, t));
        }
    }
    Ok(Reapply { files, policy, dropped, ruleset_hash, unchecked })
}

/// What a rollback, automatic rollback or restore writes as its own generation.
pub struct Restoring<'a> {
    /// rollback, rollback-auto, restore
    pub event: &'a str,
    pub source: u64,
    /// The generation in effect until now.
    pub replaced: Option<u64>,
    pub confirmed: bool,
    pub reason: Option<String>,
    pub now: i64,
    pub today: Date,
}

/// A generation written again by [`create_restored`].
pub struct Restored {
    pub number: u64,
    /// Rules left out because they have expired: "`name` (expired DATE)".
    pub dropped: Vec<String>,
    /// Expiry could not be checked (why).
    pub unchecked: Option<String>,
}

/// Write generation `r.source` again as a new generation (its history row), for
/// today (see [`reapply`]). The caller loads it.
pub fn create_restored(state: &State, r: &Restoring, caps: &dyn Fn() -> Capabilities) -> Result<Restored, String> {
    let src = state.meta(r.source).map_err(|e| e.to_string())?;
    let re = reapply(state, r.source, r.today, caps)?;
    let mut summary = format!("{} to generation {}", r.event, r.source);
    if !re.dropped.is_empty() {
        summary.push_str(&format!(" without expired rule(s) {}", re.dropped.join(", ")));
    }
    let mut meta = Meta {
        time: audit::rfc3339(r.now),
        unix: r.now,
        event: r.event.into(),
        source: Some(r.source),
        replaced: r.replaced,
        // As checked today; a ruleset taken unchecked keeps the date it was compiled for.
        compiled_on: if re.unchecked.is_some() { Some(compiled_on(&src).to_string()) } else { Some(r.today.to_string()) },
        confirmed: Some(r.confirmed),
        actor: audit::actor(),
        reason: r.reason.clone(),
        summary,
        ruleset_hash: re.ruleset_hash.clone().unwrap_or_else(|| src.ruleset_hash.clone()),
        ..src
    };
    let number = state.create(&mut meta, &re.policy, &re.files).map_err(|e| e.to_string())?;
    Ok(Restored { number, dropped: re.dropped, unchecked: re.unchecked })
}

// The error is the loaded policy with its diagnostics, for the caller to report.
#[allow(clippy::result_large_err)]
pub fn desired(path: &Path, today: Date, caps: Capabilities, prev_alloc: Option<&Allocation>) -> Result<Desired, Loaded> {
    let loaded = crate::check::load(path, today);
    let Some(p) = loaded.policy.as_ref() else { return Err(loaded) };
    let compiled = match compile_with(p, caps, prev_alloc) {
        Ok(c) => c,
        Err(e) => {
            let mut l = loaded;
            l.diags.push(e.diagnostic());
            return Err(l);
        }
    };
    let script = crate::render::nft::script(&compiled.ruleset, HEADER);
    let files = snapshot(&loaded, path);
    let policy_hash = hash_files(&files);
    let ruleset_hash = crate::util::sha256_hex(crate::render::nft::table(&compiled.ruleset).as_bytes());
    Ok(Desired { loaded, compiled, script, files, policy_hash, ruleset_hash, path: path.to_path_buf() })
}

fn nat_lines(p: &Policy) -> Vec<String> {
    let mut v = vec![];
    for d in &p.dnat {
        let dest = d.destination.map(|a| a.to_string()).unwrap_or_else(|| "*".into());
        // Only the targets of the families the compiled ruleset translates.
        let to = crate::compile::nat::forward_families(d)
            .into_iter()
            .filter_map(|v6| if v6 { d.to_v6.map(|a| a.to_string()) } else { d.to_v4.map(|a| a.to_string()) })
            .collect::<Vec<_>>()
            .join("/");
        let port = d.to_port.map(|p| format!(" port {p}")).unwrap_or_default();
        v.push(format!("forward `{}` on {} {dest} {} → {to}{port}", d.name, p.ifaces[d.iface].key, d.services.describe()));
    }
    for s in &p.snat {
        let what = match s.to {
            None => "masquerade".to_string(),
            Some(a) => format!("snat to {a}"),
        };
        v.push(format!("{what} from [{}] out {}", s.from_text.join(", "), p.ifaces[s.out].key));
    }
    v.sort();
    v
}

fn empty_like(p: &Policy) -> Policy {
    let mut e = p.clone();
    e.rules.clear();
    e
}

/// Above this many rules a first generation's plan lists its rules, not every
/// flow they allow (the flows would be compared with nothing: all of them).
pub const FIRST_FLOWS_LIMIT: usize = 500;

/// Compute the plan: flows, ruleset, NAT, drift, foreign hooks, tunnels.
pub fn plan(d: &Desired, prev: Option<&Previous>, kernel: &dyn Kernel, tunnels: &dyn Tunnels, state: &State) -> Plan {
    let pn = d.loaded.policy.as_ref().expect("desired has a policy");
    let mut flows_not_listed = false;
    let (flows, first, ruleset, nat) = match prev {
        Some(pv) => {
            let po = pv.loaded.policy.as_ref().expect("previous has a policy");
            let f = flows::diff(
                &flows::Side { policy: po, decision: &pv.compiled.decision, sm: &pv.loaded.sm },
                &flows::Side { policy: pn, decision: &d.compiled.decision, sm: &d.loaded.sm },
            );
            let (a, b) = (nat_lines(po), nat_lines(pn));
            let mut nat: Vec<String> = b.iter().filter(|x| !a.contains(x)).map(|x| format!("+ {x}")).collect();
            nat.extend(a.iter().filter(|x| !b.contains(x)).map(|x| format!("- {x}")));
            (f, false, delta::compare(&pv.ruleset, &d.compiled.ruleset), nat)
        }
        None => {
            let f = if pn.rules.len() > FIRST_FLOWS_LIMIT {
                flows_not_listed = true;
                FlowDiff { changes: vec![], truncated: false, rules_changed: pn.rules.iter().map(|r| r.name.clone()).collect() }
            } else {
                let empty = empty_like(pn);
                let ce = crate::compile::compile(&empty, Capabilities { flowtable: false }).expect("an empty policy compiles");
                flows::diff(&flows::Side { policy: &empty, decision: &ce.decision, sm: &d.loaded.sm }, &flows::Side { policy: pn, decision: &d.compiled.decision, sm: &d.loaded.sm })
            };
            let empty_rs = Ruleset { table: crate::compile::ir::TABLE.into(), sets: vec![], chains: vec![], flowtable: None, notes: vec![], stats: Default::default() };
            (f, true, delta::compare(&empty_rs, &d.compiled.ruleset), nat_lines(pn).into_iter().map(|x| format!("+ {x}")).collect())
        }
    };
    let drift = prev.and_then(|pv| {
        // Absent for large tables (see LISTING_LIMIT): no drift check then.
        let stored = state.read(pv.number, "kernel.txt").ok()?;
        match kernel.list_table() {
            Ok(Some(live)) if live == stored => None,
            Ok(Some(live)) => {
                let (a, b): (std::collections::HashSet<&str>, std::collections::HashSet<&str>) = (stored.lines().collect(), live.lines().collect());
                let gone: Vec<String> = stored.lines().filter(|l| !b.contains(l)).take(5).map(|l| format!("  - {}", l.trim())).collect();
                let new: Vec<String> = live.lines().filter(|l| !a.contains(l)).take(5).map(|l| format!("  + {}", l.trim())).collect();
                Some([gone, new].concat().join("\n"))
            }
            Ok(None) => Some("  fwctl's table is missing from the kernel".into()),
            Err(e) => Some(format!("  cannot read the live table: {e}")),
        }
    });
    let foreign = kernel
        .foreign_hooks()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, _, _, hook, _)| ["input", "forward", "output", "prerouting", "postrouting"].contains(&hook.as_str()))
        .map(|(fam, table, chain, hook, prio)| format!("table {fam} {table} chain {chain} also hooks {hook} (priority {prio}): its verdicts apply in addition to fwctl's"))
        .collect();
    let first_rules = if first {
        pn.rules
            .iter()
            .filter(|r| r.active())
            .map(|r| format!("{} {} ({})", if r.action == crate::model::Action::Allow { "allow" } else { "deny" }, r.name, d.loaded.sm.locate_line(r.span)))
            .collect()
    } else {
        vec![]
    };
    let created = first.then(|| d.compiled.ruleset.stats.clone());
    let old = prev.and_then(|pv| pv.loaded.policy.as_ref());
    let tunnel_plans = tunnels.plan(pn, old);
    Plan { flows, first, first_rules, flows_not_listed, created, ruleset, nat, drift, foreign, tunnels: tunnel_plans, tunnels_managed: tunnels.managed() }
}

/// Why an apply must not happen (unless forced, for lockouts).
pub struct Refusal {
    pub lockout: bool,
    pub messages: Vec<String>,
}

/// Check errors, failed tests, and management flows (the new policy's and the
/// applied one's) that the new policy would cut.
pub fn refusals(d: &Desired, prev: Option<&Previous>) -> Option<Refusal> {
    let mut messages = vec![];
    let mut lockout = false;
    let p = d.loaded.policy.as_ref().expect("policy");
    let sm = &d.loaded.sm;
    for diag in d.loaded.diags.iter().filter(|x| x.is_error()) {
        messages.push(format!("policy error: {}", diag.message));
    }
    let results = crate::check::run_tests(p);
    for diag in crate::check::test_diagnostics(p, sm, &results) {
        messages.push(diag.message);
    }
    for diag in crate::check::management_diagnostics(p, sm) {
        lockout = true;
        messages.push(diag.message);
    }
    if let Some(pv) = prev {
        let po = pv.loaded.policy.as_ref().expect("policy");
        for m in &po.management {
            // The applied policy's management flows, re-resolved against the new policy.
            let ctx = crate::model::resolve::EndpointCtx { policy: p, claimed: &p.claimed };
            let (Ok(from), Ok(to)) = (ctx.endpoint(&m.from.text), ctx.endpoint(&m.to.text)) else {
                lockout = true;
                messages.push(format!("the applied policy's management flow {} → {} ({}) names something the new policy removed", m.from.text, m.to.text, m.service_text));
                continue;
            };
            let flow = crate::model::Flow { span: m.span, from, to, probes: m.probes.clone(), service_text: m.service_text.clone(), iif: m.iif.clone(), oif: m.oif.clone() };
            let r = crate::check::run_flow(p, &flow, Expect::Allow);
            if let Some(k) = r.failure {
                lockout = true;
                messages.push(format!("the new policy cuts the applied policy's management flow {} → {} ({}): {} would be refused", m.from.text, m.to.text, m.service_text, crate::check::packet_text(&r.packets[k].0)));
            }
        }
    }
    (!messages.is_empty()).then_some(Refusal { lockout, messages })
}

/// Git commit and dirty flag of the policy, if it lives in a git work tree.
pub fn git_info(path: &Path) -> (Option<String>, Option<bool>) {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
    let run = |args: &[&str]| std::process::Command::new("git").arg("-C").arg(&dir).args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty = commit.as_ref().and_then(|_| run(&["status", "--porcelain", "--", "."])).map(|s| !s.is_empty());
    (commit, dirty)
}

/// Base of every audit record.
pub fn record(event: &str, result: &str, appliance: &str, now: i64) -> Record {
    Record { time: audit::rfc3339(now), event: event.into(), result: result.into(), actor: audit::actor(), host: audit::hostname(), appliance: appliance.into(), summary: serde_json::Value::Null, ..Default::default() }
}

/// What the watchdog does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The window was confirmed or superseded: nothing to do.
    Exit,
    /// Check again later (seconds left).
    Wait(i64),
    /// The deadline passed unconfirmed: restore the previous generation.
    RollBack,
}

/// The watchdog's decision, pure: `pending` as read now, `mine` the generation it
/// guards, `now` the time.
pub fn watchdog_step(pending: Option<&Pending>, mine: u64, now: i64) -> Step {
    match pending {
        Some(p) if p.generation == mine => {
            if now >= p.deadline_unix {
                Step::RollBack
            } else {
                Step::Wait(p.deadline_unix - now)
            }
        }
        _ => Step::Exit,
    }
}

/// Load a stored generation's full ruleset (None: remove fwctl's table).
pub fn load_generation(state: &State, kernel: &dyn Kernel, n: Option<u64>) -> Result<(), String> {
    let script = match n {
        Some(n) => state.read(n, "ruleset.nft").map_err(|e| e.to_string())?,
        None => format!("table inet {t}\ndelete table inet {t}\n", t = crate::compile::ir::TABLE),
    };
    kernel.load(&script).map_err(|e| e.to_string())
}

/// The policy of generation `n`, from its snapshot.
pub fn generation_policy(state: &State, n: u64) -> Result<Policy, String> {
    let loaded = crate::check::load(&state.gen_dir(n).join("policy"), crate::sys::clock::today());
    match loaded.policy {
        Some(p) if !loaded.has_errors() => Ok(p),
        _ => Err(format!("generation {n}: its policy snapshot no longer loads")),
    }
}

/// Bring the tunnels to generation `target`'s peers (rollback, restore, the
/// watchdog), in place; `replacing` is the generation in force until now (its
/// VPNs that `target` lacks are stopped). `target` None (the state before
/// fwctl): tunnels are left as they are. A generation applied with
/// `--no-tunnels` leaves them alone too.
pub fn tunnels_to_generation(state: &State, tunnels: &dyn Tunnels, target: Option<u64>, replacing: Option<u64>) -> TunnelSync {
    let Some(t) = target else { return TunnelSync::default() };
    if state.meta(t).is_ok_and(|m| m.tunnels_skipped) || !tunnels.managed() {
        return TunnelSync::default();
    }
    let new = match generation_policy(state, t) {
        Ok(p) => p,
        Err(e) => return TunnelSync { done: vec![], error: Some(e) },
    };
    let old = replacing.filter(|r| *r != t && state.meta(*r).is_ok_and(|m| !m.tunnels_skipped)).and_then(|r| generation_policy(state, r).ok());
    tunnels.sync(&new, old.as_ref())
}

/// The audit summary of tunnel work: what changed (public keys and names only).
pub fn tunnels_json(done: &[TunnelDone]) -> serde_json::Value {
    serde_json::json!(done.iter().filter(|t| t.action != "unchanged").collect::<Vec<_>>())
}

/// One line per tunnel that changed, for the terminal.
pub fn tunnels_text(done: &[TunnelDone]) -> String {
    let mut s = String::new();
    for t in done.iter().filter(|t| t.action != "unchanged") {
        s.push_str(&format!("tunnel {}: {}{}\n", t.iface, t.action, if t.backend.is_empty() { String::new() } else { format!(" ({})", t.backend) }));
        for c in &t.changes {
            s.push_str(&format!("  {c}\n"));
        }
    }
    s
}

/// Above this many set elements the live table is not listed back (nft 1.0.6 takes
/// seconds to minutes): drift detection is then skipped, and `plan` says so.
pub const LISTING_LIMIT: usize = 50_000;

/// Record the live table after a change, for drift detection by `plan`.
pub fn record_kernel(state: &State, kernel: &dyn Kernel, n: u64) {
    let small = state.read(n, "ruleset.json").ok().and_then(|s| serde_json::from_str::<Ruleset>(&s).ok()).is_none_or(|r| r.sets.iter().map(|s| s.elements.len()).sum::<usize>() <= LISTING_LIMIT);
    if !small {
        let _ = std::fs::remove_file(state.gen_dir(n).join("kernel.txt"));
        return;
    }
    if let Ok(Some(live)) = kernel.list_table() {
        let _ = state.write_file(n, "kernel.txt", &live);
    }
}

pub fn state_err(e: StateError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(number: u64, event: &str, source: Option<u64>, replaced: Option<u64>, confirmed: bool) -> Meta {
        Meta { number, event: event.into(), source, replaced, confirmed: Some(confirmed), compiled_on: Some("2027-01-01".into()), ..Default::default() }
    }

    #[test]
    fn rollback_goes_to_the_generation_in_effect_before_not_an_expired_one() {
        // apply A; apply B --confirm, expired (A restored as 3); apply B --confirm, confirmed.
        let h = vec![row(1, "apply", None, None, true), row(2, "apply", None, Some(1), false), row(3, "rollback-auto", Some(1), Some(2), true), row(4, "apply", None, Some(3), true)];
        assert_eq!(rollback_target(&h, Some(4)), Some(3));
        // During the window (2 current): back to 1.
        assert_eq!(rollback_target(&h[..2], Some(2)), Some(1));
        // After a rollback: what was in effect before it.
        let mut h2 = h.clone();
        h2.push(row(5, "rollback", Some(3), Some(4), true));
        assert_eq!(rollback_target(&h2, Some(5)), Some(4));
        // The first generation replaced nothing; nothing applied at all.
        assert_eq!(rollback_target(&h[..1], Some(1)), None);
        assert_eq!(rollback_target(&h, None), None);
        // A generation applied after the table was removed replaced nothing either.
        let h3 = vec![row(1, "apply", None, None, false), row(2, "apply", None, None, true)];
        assert_eq!(rollback_target(&h3, Some(2)), None);
        // The generation it replaced is gone (removed by hand): no target.
        assert_eq!(rollback_target(&h[2..], Some(4)), Some(3));
        assert_eq!(rollback_target(&[row(4, "apply", None, Some(3), true)], Some(4)), None);
    }

    #[test]
    fn rollback_of_generations_without_a_record_of_what_they_replaced() {
        let legacy = |n: u64, event: &str| Meta { number: n, event: event.into(), ..Default::default() };
        assert_eq!(rollback_target(&[legacy(1, "apply"), legacy(2, "apply"), legacy(3, "apply")], Some(3)), Some(2));
        // A generation rolled back automatically (recorded by a newer fwctl) is skipped.
        let h = vec![legacy(1, "apply"), legacy(2, "apply"), row(3, "rollback-auto", Some(1), Some(2), true), legacy(4, "apply")];
        assert_eq!(rollback_target(&h, Some(4)), Some(3));
        let h = [legacy(1, "apply"), legacy(2, "apply"), legacy(4, "apply"), row(3, "rollback-auto", Some(1), Some(2), true)];
        assert_eq!(rollback_target(&h[..3], Some(4)), Some(2));
    }

    #[test]
    fn rules_expired_since_a_generation_was_compiled_are_dropped_on_restore() {
        let text = "[interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n[zones.internet]\n[[rules]]\nname = \"old\"\nfrom = \"internet\"\nto = \"self\"\nallow = [\"ssh\"]\nexpires = 2027-01-10\n[[rules]]\nname = \"temp\"\nfrom = \"internet\"\nto = \"self\"\nallow = [\"http\"]\nexpires = 2027-06-30\n[[rules]]\nname = \"keep\"\nfrom = \"internet\"\nto = \"self\"\nallow = [\"https\"]\n";
        let d = |s: &str| crate::sys::clock::parse_date(s).unwrap();
        let today = crate::check::load_str("p.toml", text, d("2027-07-01"));
        let p = today.policy.as_ref().unwrap();
        // Compiled on 2027-02-01: `old` had already expired then (it was not in the ruleset); `temp` expired since.
        assert_eq!(expired_since(p, d("2027-02-01")), vec!["`temp` (expired 2027-06-30)"]);
        assert_eq!(expired_since(p, d("2027-07-01")), Vec::<String>::new());
        let before = crate::check::load_str("p.toml", text, d("2027-06-30"));
        assert!(expired_since(before.policy.as_ref().unwrap(), d("2027-02-01")).is_empty());
    }

    /// The plan names a forward's targets only in the families it translates: a
    /// forward with an IPv4 `destination` to a dual-stack host shows one target.
    #[test]
    fn plan_lists_the_forward_targets_the_ruleset_translates() {
        let base = "[interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n[interfaces.lan]\ndevice = \"eth1\"\nzone = \"lan\"\n[zones.internet]\n[zones.lan]\nnetworks = [\"192.0.2.0/24\", \"2001:db8:1::/64\"]\n[hosts]\nweb = [\"192.0.2.10\", \"2001:db8:1::10\"]\n";
        let lines = |nat: &str| {
            let l = crate::check::load_str("p.toml", &format!("{base}{nat}"), crate::model::Date { year: 2026, month: 11, day: 23 });
            nat_lines(l.policy.as_ref().expect("policy"))
        };
        assert_eq!(lines("[[nat.forward]]\nname = \"w\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"https\"\nto = \"web\"\n"), ["forward `w` on wan 203.0.113.10 tcp/443 → 192.0.2.10"]);
        assert_eq!(lines("[[nat.forward]]\nname = \"w\"\non = \"wan\"\nservice = \"https\"\nto = \"web\"\n"), ["forward `w` on wan * tcp/443 → 192.0.2.10/2001:db8:1::10"]);
    }

    #[test]
    fn watchdog_waits_then_rolls_back_unless_confirmed() {
        let p = Pending { generation: 7, previous: Some(6), deadline_unix: 1000, watchdog_pid: None };
        assert_eq!(watchdog_step(Some(&p), 7, 990), Step::Wait(10));
        assert_eq!(watchdog_step(Some(&p), 7, 1000), Step::RollBack);
        assert_eq!(watchdog_step(Some(&p), 7, 5000), Step::RollBack);
        // Confirmed (pending cleared) or superseded by a newer apply: the watchdog leaves.
        assert_eq!(watchdog_step(None, 7, 5000), Step::Exit);
        let newer = Pending { generation: 8, ..p };
        assert_eq!(watchdog_step(Some(&newer), 7, 5000), Step::Exit);
    }
}
