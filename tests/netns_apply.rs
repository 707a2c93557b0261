//! End-to-end safe apply: `fwctl plan / apply / confirm / rollback / restore /
//! history / audit` run as the real binary inside throwaway network namespaces,
//! checked against what the kernel really holds (`nft -s list table inet fwctl`).
//!
//! Every test makes its own namespace (unique prefix) and its own state directory,
//! and removes both on success and on failure. No packets are sent. Policies are
//! `tests/fixtures/apply/base.toml` and copies of it edited by exact text
//! replacement, written into the test's temporary directory.
//!
//! Needs root, `ip`, `nft` (and `cp`). Under CI (CI set) a missing prerequisite
//! fails; elsewhere the tests are skipped with a message.

use fwctl::sys::netns::{privileged_or_skip, unique_prefix, Lab};
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fwctl");

fn base_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apply/base.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "fixture edit: {from:?} must occur exactly once in:\n{text}");
    text.replacen(from, to, 1)
}

// The edits, each on top of the previous one.
fn with_host04(t: &str) -> String {
    edit(t, "web = [\"host03\"]", "web = [\"host03\", \"host04\"]")
}
fn with_http(t: &str) -> String {
    edit(t, "to = \"web\"\nallow = [\"https\"]", "to = \"web\"\nallow = [\"http\"]")
}
const BLOCK_BAD: &str = "\n[[rules]]\nname = \"block-bad\"\nfrom = \"203.0.113.66\"\nto = \"host03\"\ndeny = [\"http\"]\n";
fn with_block(t: &str) -> String {
    format!("{t}{BLOCK_BAD}")
}
const SITE_HTTP: &str = "\n[[nat.forward]]\nname = \"site-http\"\non = \"wan\"\ndestination = \"203.0.113.10\"\nservice = \"http\"\nto = \"host04\"\n";
fn with_site_http(t: &str) -> String {
    format!("{t}{SITE_HTTP}")
}
fn with_https_to_host04(t: &str) -> String {
    edit(t, "service = \"https\"\nto = \"host03\"", "service = \"https\"\nto = \"host04\"")
}
/// Cuts the management flow admins → self ssh.
fn without_admin_ssh(t: &str) -> String {
    edit(t, "allow = [\"ssh\", \"ping\"]", "allow = [\"ping\"]")
}

/// 1-based number of the line that is exactly `line` (trimmed).
fn line_of(text: &str, line: &str) -> usize {
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.trim() == line).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "{line:?} must be one line of the policy");
    hits[0]
}

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn output(cmd: &mut Command) -> Out {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    Out { code: o.status.code(), stdout: String::from_utf8_lossy(&o.stdout).into_owned(), stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
}

/// The lines of one section of `plan`'s text (`flows:` or `nat:`), indent removed.
fn section(plan: &str, name: &str) -> Vec<String> {
    let head = format!("{name}:");
    let mut lines = plan.lines().skip_while(|l| *l != head);
    assert!(lines.next().is_some(), "no `{head}` section in:\n{plan}");
    lines.take_while(|l| l.starts_with("  ")).map(|l| l[2..].to_string()).collect()
}

/// Kills (SIGKILL) and reaps a child on drop.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One test's namespace and temporary directory (policies, state), removed on drop.
struct Env {
    ns: String,
    dir: PathBuf,
    _lab: Lab,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // The lab (namespace) goes when `_lab` drops. A watchdog still waiting
        // finds no state directory and exits at its next poll.
    }
}

impl Env {
    /// None: the prerequisites are missing and the test is skipped.
    fn new(tag: &str) -> Option<Env> {
        if !privileged_or_skip() {
            return None;
        }
        let prefix = unique_prefix(tag);
        let mut lab = Lab::new(&prefix).expect("lab");
        let ns = lab.add_ns("fw").expect("namespace");
        let dir = std::env::temp_dir().join(format!("fwctl-e2e-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Some(Env { ns, dir, _lab: lab })
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Write a policy as `<dir>/<name>/policy.toml` (the same file name for every
    /// version, so the snapshot paths in `plan` are predictable).
    fn policy(&self, name: &str, text: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).expect("policy dir");
        let p = d.join("policy.toml");
        std::fs::write(&p, text).expect("write policy");
        p
    }

    /// `ip netns exec NS fwctl ARGS…`
    fn cmd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, BIN]).args(args).env_remove("FWCTL_STATE_DIR").env_remove("FWCTL_NFT").env("NO_COLOR", "1");
        c
    }

    /// `fwctl ARGS… --state-dir STATE`
    fn run(&self, args: &[&str]) -> Out {
        let st = self.state();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", st.to_str().unwrap()]);
        output(&mut self.cmd(&all))
    }

    fn run_in(&self, state: &Path, args: &[&str]) -> Out {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", state.to_str().unwrap()]);
        output(&mut self.cmd(&all))
    }

    /// `FWCTL_TODAY=DATE fwctl ARGS… --state-dir STATE`
    fn run_on(&self, date: &str, args: &[&str]) -> Out {
        let st = self.state();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", st.to_str().unwrap()]);
        output(self.cmd(&all).env("FWCTL_TODAY", date))
    }

    fn apply(&self, policy: &Path, extra: &[&str]) -> Out {
        let mut a = vec!["apply", policy.to_str().unwrap(), "--yes"];
        a.extend(extra);
        self.run(&a)
    }

    #[track_caller]
    fn apply_ok(&self, policy: &Path, extra: &[&str]) -> Out {
        let o = self.apply(policy, extra);
        assert_eq!(o.code, Some(0), "apply {} {extra:?} failed:\n{o}", policy.display());
        o
    }

    fn plan(&self, policy: &Path, json: bool) -> Out {
        let p = policy.to_str().unwrap();
        if json {
            self.run(&["plan", p, "--json"])
        } else {
            self.run(&["plan", p])
        }
    }

    /// `nft -s list table inet fwctl` in the namespace (None: no table).
    fn listing(&self) -> Option<String> {
        let o = output(Command::new("ip").args(["netns", "exec", &self.ns, "nft", "-s", "list", "table", "inet", "fwctl"]));
        match o.code {
            Some(0) => Some(o.stdout),
            _ if o.stderr.contains("No such file or directory") => None,
            _ => panic!("nft list failed:\n{o}"),
        }
    }

    fn nft(&self, args: &[&str]) {
        let o = output(Command::new("ip").args(["netns", "exec", &self.ns, "nft"]).args(args));
        assert_eq!(o.code, Some(0), "nft {args:?}:\n{o}");
    }

    fn history(&self) -> Vec<Value> {
        let o = self.run(&["history", "--json"]);
        assert_eq!(o.code, Some(0), "history:\n{o}");
        serde_json::from_str::<Value>(&o.stdout).expect("history json").as_array().cloned().expect("array")
    }

    fn gen(h: &[Value], n: u64) -> &Value {
        h.iter().find(|g| g["generation"] == n).unwrap_or_else(|| panic!("no generation {n} in history {h:#?}"))
    }

    fn audit(&self) -> Vec<Value> {
        let o = self.run(&["audit", "log", "--json"]);
        assert_eq!(o.code, Some(0), "audit log (the trail must verify):\n{o}");
        serde_json::from_str::<Value>(&o.stdout).expect("audit json").as_array().cloned().expect("array")
    }

    /// Poll (every `every`) until `f` holds or `within` has passed since `since`.
    fn wait_until(since: Instant, within: Duration, every: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
        loop {
            if f() {
                return Some(since.elapsed());
            }
            if since.elapsed() > within {
                return None;
            }
            std::thread::sleep(every);
        }
    }
}

/// An `nft` that sleeps 1 s before the first `-s list` after each successful load
/// (fwctl reads the table back right after changing it).
/// An `nft` wrapper whose read-back of fwctl's table takes 1 s whenever the table
/// differs from `base` (i.e. after the apply changed it, whether by `nft -f` or by
/// a netlink element delta, which does not go through this program).
fn slow_readback_nft(dir: &Path, base: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("slow-nft");
    std::fs::write(dir.join("nft-base"), base).expect("write base listing");
    let script = r#"#!/bin/sh
if [ "$1" = "-s" ] && [ "$2" = "list" ]; then
    out="$(nft "$@")"; rc=$?
    [ "$out" != "$(cat "$(dirname "$0")/nft-base")" ] && sleep 1
    [ $rc -eq 0 ] && printf '%s\n' "$out"
    exit $rc
fi
exec nft "$@"
"#;
    std::fs::write(&p, script).expect("write nft wrapper");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn events(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["event"].as_str().unwrap_or("?").to_string()).collect()
}

// ---------------------------------------------------------------------------

#[test]
fn plan_shows_exact_flow_changes() {
    let Some(env) = Env::new("fwaq") else { return };
    let state = env.state();
    let snap = |g: u64| state.join(format!("generations/{g:06}/policy/policy.toml")).display().to_string();
    let base = base_text();
    let p = env.policy("p", &base);
    let first = env.plan(&p, false);
    assert_eq!(first.code, Some(2), "first plan:\n{first}");
    assert!(first.stdout.starts_with("first generation"), "{first}");
    assert_eq!(section(&first.stdout, "nat"), vec!["+ forward `site-https` on wan 203.0.113.10 tcp/443 → 192.0.2.13"]);
    env.apply_ok(&p, &[]);
    let again = env.plan(&p, false);
    assert_eq!(again.code, Some(0), "plan right after apply:\n{again}");
    assert_eq!(section(&again.stdout, "flows"), vec!["(no change)"]);

    let file = p.display().to_string();
    let no_change = vec!["(no change)".to_string()];
    // (name, new policy text, expected flow lines (given the text), expected nat lines)
    type Lines = Box<dyn Fn(&str) -> Vec<String>>;
    type Step = (&'static str, fn(&str) -> String, Lines, Vec<String>);
    let mut text = base.clone();
    let steps: Vec<Step> = vec![
        (
            "(a) host added to a group used by an allow rule",
            with_host04,
            Box::new(move |t: &str| vec![format!("+ allow internet → host04 (192.0.2.14) tcp/443  [rule public-web ({file}:{})]", line_of(t, "name = \"public-web\""))]),
            vec![],
        ),
        (
            "(b) a rule's service changed https → http",
            with_http,
            {
                let (file, old) = (p.display().to_string(), snap(2));
                let base = base.clone();
                Box::new(move |t: &str| {
                    vec![
                        format!("+ allow internet → rack 192.0.2.13-192.0.2.14 tcp/80  [rule public-web ({file}:{})]", line_of(t, "name = \"public-web\"")),
                        format!("- allow internet → rack 192.0.2.13-192.0.2.14 tcp/443  [was allowed by public-web ({old}:{})]", line_of(&base, "name = \"public-web\"")),
                    ]
                })
            },
            vec![],
        ),
        (
            "(c) a new deny rule for one source address",
            with_block,
            {
                let file = p.display().to_string();
                Box::new(move |t: &str| vec![format!("- allow internet 203.0.113.66 → host03 (192.0.2.13) tcp/80  [rule block-bad ({file}:{})]", line_of(t, "name = \"block-bad\""))])
            },
            vec![],
        ),
        ("(d) a port forward added", with_site_http, Box::new(|_: &str| vec![]), vec!["+ forward `site-http` on wan 203.0.113.10 tcp/80 → 192.0.2.14".to_string()]),
        (
            "(e) a port forward's target changed",
            with_https_to_host04,
            Box::new(|_: &str| vec![]),
            vec!["+ forward `site-https` on wan 203.0.113.10 tcp/443 → 192.0.2.14".to_string(), "- forward `site-https` on wan 203.0.113.10 tcp/443 → 192.0.2.13".to_string()],
        ),
    ];
    for (what, change, flows, nat) in steps {
        text = change(&text);
        let p2 = env.policy("p", &text);
        assert_eq!(p2, p);
        let want_flows = flows(&text);
        let o = env.plan(&p, false);
        assert_eq!(o.code, Some(2), "{what}: plan must exit 2:\n{o}");
        let got_flows = section(&o.stdout, "flows");
        assert_eq!(got_flows, if want_flows.is_empty() { no_change.clone() } else { want_flows.clone() }, "{what}: flows\n{o}");
        assert_eq!(section(&o.stdout, "nat"), if nat.is_empty() { no_change.clone() } else { nat.clone() }, "{what}: nat\n{o}");
        assert!(!o.stdout.contains("apply would refuse"), "{what}:\n{o}");
        // The same change as JSON.
        let j = env.plan(&p, true);
        assert_eq!(j.code, Some(2), "{what}: plan --json must exit 2:\n{j}");
        let v: Value = serde_json::from_str(&j.stdout).unwrap_or_else(|e| panic!("{what}: plan --json does not parse ({e}):\n{j}"));
        let jf = v["flows"].as_array().expect("flows array");
        assert_eq!(jf.len(), want_flows.len(), "{what}: json flows {jf:#?}");
        for (f, line) in jf.iter().zip(&want_flows) {
            assert_eq!(f["now_allowed"].as_bool(), Some(line.starts_with('+')), "{what}: {f}");
            assert!(f["proto"].is_string() && f["ports"].is_array() && f["rules"].is_array(), "{what}: {f}");
        }
        assert_eq!(v["nat"], serde_json::json!(nat), "{what}: json nat");
        assert_eq!(v["first_generation"], false);
        assert!(v["would_refuse"].is_null(), "{what}: {}", v["would_refuse"]);
        // Apply it: nothing left to change.
        env.apply_ok(&p, &[]);
        let after = env.plan(&p, false);
        assert_eq!(after.code, Some(0), "{what}: plan after apply must exit 0:\n{after}");
        assert_eq!(section(&after.stdout, "flows"), no_change, "{what}");
        assert_eq!(section(&after.stdout, "nat"), no_change, "{what}");
    }
    assert_eq!(env.history().len(), 6);
}

#[test]
fn confirm_window_rolls_back_when_not_confirmed() {
    let Some(env) = Env::new("fwac") else { return };
    let base = base_text();
    let p = env.policy("base", &base);
    env.apply_ok(&p, &[]);
    let l1 = env.listing().expect("table after the base apply");

    // 1. Applied with --confirm 2 and never confirmed.
    let e = env.policy("edit", &with_host04(&base));
    let t0 = Instant::now();
    let o = env.apply_ok(&e, &["--confirm", "2"]);
    assert!(o.stdout.contains("fwctl confirm"), "{o}");
    assert_ne!(env.listing().as_deref(), Some(l1.as_str()), "the edit must change the kernel table first");
    let pending: Value = serde_json::from_str(&std::fs::read_to_string(env.state().join("pending.json")).expect("pending.json")).unwrap();
    assert_eq!(pending["generation"], 2);
    let back = Env::wait_until(t0, Duration::from_secs(4), Duration::from_millis(50), || env.listing().as_deref() == Some(l1.as_str()));
    let took = back.unwrap_or_else(|| panic!("not rolled back within 2+2 s; live table:\n{:?}", env.listing()));
    eprintln!("--confirm 2: rolled back {:.2} s after the apply started", took.as_secs_f64());
    // The watchdog finishes its bookkeeping right after the kernel change.
    let done = Env::wait_until(Instant::now(), Duration::from_secs(2), Duration::from_millis(50), || !env.state().join("pending.json").exists() && events(&env.audit()).contains(&"rollback-auto".to_string()));
    assert!(done.is_some(), "no rollback-auto record: {:?}", events(&env.audit()));
    // The automatic rollback is a generation of its own: 3, generation 1 again.
    let h = env.history();
    let g3 = Env::gen(&h, 3);
    assert_eq!((&g3["event"], &g3["source"], &g3["replaced"], &g3["current"], &g3["confirmed"]), (&"rollback-auto".into(), &1.into(), &2.into(), &Value::Bool(true), &Value::Bool(true)), "{h:#?}");
    assert_eq!((&Env::gen(&h, 1)["current"], &Env::gen(&h, 1)["confirmed"]), (&Value::Bool(false), &Value::Bool(false)), "{h:#?}");
    assert_eq!((&Env::gen(&h, 2)["current"], &Env::gen(&h, 2)["pending"], &Env::gen(&h, 2)["confirmed"]), (&Value::Bool(false), &Value::Bool(false), &Value::Bool(false)), "{h:#?}");
    let text = env.run(&["history"]);
    assert!(text.stdout.lines().any(|l| l.trim_start().starts_with("3  *c")), "history text:\n{text}");
    let audit = env.audit();
    let r = audit.iter().find(|r| r["event"] == "rollback-auto").unwrap();
    assert_eq!((&r["result"], &r["generation"], &r["previous_generation"], &r["summary"]["source"]), (&"ok".into(), &3.into(), &2.into(), &1.into()), "{r:#}");
    // fwctl agrees that the kernel holds the base again.
    let pl = env.plan(&p, false);
    assert_eq!(pl.code, Some(0), "plan of the base after the rollback:\n{pl}");

    // 2. The applying process is killed right after the kernel change. Its nft is
    // a wrapper that makes the read-back of a changed table take 1 s (the change
    // itself goes over netlink), so that the kill always lands after the kernel
    // change and before the bookkeeping.
    let e2 = env.policy("edit2", &with_http(&base));
    let nft = slow_readback_nft(&env.dir, &l1);
    let t0 = Instant::now();
    let child = env.cmd(&["apply", e2.to_str().unwrap(), "--yes", "--confirm", "3", "--nft", nft.to_str().unwrap(), "--state-dir", env.state().to_str().unwrap()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn apply");
    let mut child = Reap(Some(child));
    let seen = Env::wait_until(t0, Duration::from_secs(10), Duration::from_millis(20), || env.listing().is_some_and(|l| l != l1));
    assert!(seen.is_some(), "the edit never reached the kernel");
    let c = child.0.as_mut().unwrap();
    let _ = c.kill();
    let status = c.wait().expect("wait");
    child.0 = None;
    assert_eq!(status.signal(), Some(9), "the apply must still run when the new table appears (it ended with {status})");
    // The window starts when apply takes the time, before the kernel change was seen.
    let seen_at = t0 + seen.unwrap();
    let back = Env::wait_until(seen_at, Duration::from_secs(5), Duration::from_millis(50), || env.listing().as_deref() == Some(l1.as_str()));
    let took = back.unwrap_or_else(|| panic!("killed apply: not rolled back within 3+2 s; live table:\n{:?}", env.listing()));
    eprintln!("killed apply: new table seen {:.3} s after the start, killed, rolled back {:.2} s later", seen.unwrap().as_secs_f64(), took.as_secs_f64());
    let done = Env::wait_until(Instant::now(), Duration::from_secs(3), Duration::from_millis(50), || events(&env.audit()).iter().filter(|e| *e == "rollback-auto").count() == 2);
    assert!(done.is_some(), "no second rollback-auto record: {:?}", events(&env.audit()));
    let audit = env.audit();
    let r = audit.iter().rev().find(|r| r["event"] == "rollback-auto").unwrap();
    assert_eq!((&r["result"], &r["generation"], &r["previous_generation"], &r["summary"]["source"]), (&"ok".into(), &5.into(), &4.into(), &3.into()), "{r:#}");
    let h = env.history();
    assert_eq!((&Env::gen(&h, 5)["current"], &Env::gen(&h, 5)["event"]), (&Value::Bool(true), &"rollback-auto".into()), "{h:#?}");
    assert_eq!((&Env::gen(&h, 4)["current"], &Env::gen(&h, 4)["pending"]), (&Value::Bool(false), &Value::Bool(false)), "{h:#?}");
    assert!(!env.state().join("pending.json").exists());
}

#[test]
fn confirm_keeps_the_generation() {
    let Some(env) = Env::new("fwak") else { return };
    let base = base_text();
    env.apply_ok(&env.policy("base", &base), &[]);
    let l1 = env.listing().unwrap();
    let e = env.policy("edit", &with_host04(&base));
    let t0 = Instant::now();
    env.apply_ok(&e, &["--confirm", "3"]);
    let l2 = env.listing().unwrap();
    assert_ne!(l1, l2);
    let pending: Value = serde_json::from_str(&std::fs::read_to_string(env.state().join("pending.json")).expect("pending.json")).unwrap();
    assert_eq!(pending["generation"], 2);
    let watchdog = pending["watchdog_pid"].as_u64().expect("watchdog pid");
    let c = env.run(&["confirm"]);
    assert_eq!(c.code, Some(0), "confirm:\n{c}");
    assert!(c.stdout.contains("generation 2 confirmed"), "{c}");
    let h = env.history();
    assert_eq!((&Env::gen(&h, 2)["current"], &Env::gen(&h, 2)["confirmed"], &Env::gen(&h, 2)["pending"]), (&Value::Bool(true), &Value::Bool(true), &Value::Bool(false)), "{h:#?}");
    // Past the deadline (3 s) with margin: still the new ruleset.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(t0.elapsed()));
    assert_eq!(env.listing().as_deref(), Some(l2.as_str()), "a confirmed generation was rolled back");
    let h = env.history();
    assert_eq!((&Env::gen(&h, 2)["current"], &Env::gen(&h, 2)["confirmed"]), (&Value::Bool(true), &Value::Bool(true)), "{h:#?}");
    let text = env.run(&["history"]);
    assert!(text.stdout.lines().any(|l| l.trim_start().starts_with("2  *c")), "history text:\n{text}");
    // The watchdog is gone (exited or a zombie waiting for init).
    let stat = std::fs::read_to_string(format!("/proc/{watchdog}/stat")).unwrap_or_default();
    let gone = stat.is_empty() || stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')) || !stat.contains("(fwctl)");
    assert!(gone, "the watchdog {watchdog} still runs: {stat}");
    let ev = events(&env.audit());
    assert_eq!(ev, vec!["apply", "apply", "confirm"]);
}

#[test]
fn rollback_and_restore() {
    let Some(env) = Env::new("fwar") else { return };
    let base = base_text();
    let p = env.policy("p", &base);
    env.apply_ok(&p, &[]);
    let l1 = env.listing().unwrap();
    env.apply_ok(&env.policy("p", &with_host04(&base)), &[]);
    let l2 = env.listing().unwrap();
    env.apply_ok(&env.policy("p", &with_http(&with_host04(&base))), &[]);
    let l3 = env.listing().unwrap();
    assert!(l1 != l2 && l2 != l3 && l1 != l3);

    let o = env.run(&["rollback"]);
    assert_eq!(o.code, Some(0), "rollback:\n{o}");
    assert!(o.stdout.contains("rolled back to generation 2 (now generation 4)"), "{o}");
    assert_eq!(env.listing().as_deref(), Some(l2.as_str()), "rollback must restore generation 2's ruleset");

    let o = env.run(&["rollback", "--to", "1"]);
    assert_eq!(o.code, Some(0), "rollback --to 1:\n{o}");
    assert!(o.stdout.contains("rolled back to generation 1 (now generation 5)"), "{o}");
    assert_eq!(env.listing().as_deref(), Some(l1.as_str()), "rollback --to 1 must restore generation 1's ruleset");

    let h = env.history();
    assert_eq!(h.len(), 5, "{h:#?}");
    for (g, src) in [(4, 2), (5, 1)] {
        let m = Env::gen(&h, g);
        assert_eq!((&m["event"], &m["source"]), (&"rollback".into(), &src.into()), "{m:#}");
    }
    assert_eq!((&Env::gen(&h, 5)["current"], &Env::gen(&h, 5)["confirmed"]), (&Value::Bool(true), &Value::Bool(true)));

    let o = env.run(&["rollback", "--to", "9"]);
    assert_eq!(o.code, Some(1), "rollback to a missing generation:\n{o}");

    env.nft(&["delete", "table", "inet", "fwctl"]);
    assert_eq!(env.listing(), None);
    let o = env.run(&["restore"]);
    assert_eq!(o.code, Some(0), "restore:\n{o}");
    assert!(o.stdout.contains("restored generation 5 (now generation 6)"), "{o}");
    assert_eq!(env.listing().as_deref(), Some(l1.as_str()), "restore must put the last confirmed generation back");
    let p = env.policy("p", &base);
    let pl = env.plan(&p, false);
    assert_eq!(pl.code, Some(0), "plan of the base after restore:\n{pl}");
    assert_eq!(events(&env.audit()), vec!["apply", "apply", "apply", "rollback", "rollback", "restore"]);
    // The restore is a history row of its own.
    let h = env.history();
    let g6 = Env::gen(&h, 6);
    assert_eq!((&g6["event"], &g6["source"], &g6["replaced"], &g6["current"], &g6["confirmed"]), (&"restore".into(), &5.into(), &5.into(), &Value::Bool(true), &Value::Bool(true)), "{g6:#}");
}

#[test]
fn anti_lockout_refuses() {
    let Some(env) = Env::new("fwal") else { return };
    let base = base_text();
    env.apply_ok(&env.policy("base", &base), &[]);
    let l1 = env.listing().unwrap();
    let cut = env.policy("cut", &without_admin_ssh(&base));

    let o = env.apply(&cut, &[]);
    assert_eq!(o.code, Some(1), "a lockout must be refused:\n{o}");
    assert!(o.stderr.contains("refused:") && o.stderr.contains("management flow admins → self (ssh)"), "{o}");
    assert!(o.stderr.contains("--force --reason"), "the refusal must say how to override:\n{o}");
    assert_eq!(env.listing().as_deref(), Some(l1.as_str()), "kernel changed by a refused apply");
    let last = env.audit().pop().unwrap();
    assert_eq!((&last["event"], &last["result"]), (&"apply-refused".into(), &"refused".into()), "{last:#}");
    assert!(last["message"].as_str().unwrap_or("").contains("admins → self"), "{last:#}");
    // The plan says so too.
    let pl = env.plan(&cut, false);
    assert_eq!(pl.code, Some(2), "{pl}");
    assert!(pl.stdout.contains("apply would refuse: "), "{pl}");

    for extra in [&["--force"][..], &["--force", "--reason", "  "][..]] {
        let o = env.apply(&cut, extra);
        assert_eq!(o.code, Some(1), "{extra:?} without a reason must be refused:\n{o}");
        assert_eq!(env.listing().as_deref(), Some(l1.as_str()), "kernel changed by a refused apply {extra:?}");
        let last = env.audit().pop().unwrap();
        assert_eq!(last["event"], "apply-refused", "{last:#}");
        assert!(o.stderr.contains("--force needs a non-empty --reason"), "{o}");
    }
    assert_eq!(env.history().len(), 1);

    let reason = "e2e: admins move to the console server";
    let o = env.apply(&cut, &["--force", "--reason", reason]);
    assert_eq!(o.code, Some(0), "--force --reason must apply:\n{o}");
    assert!(o.stderr.contains("warning (forced)"), "{o}");
    let l2 = env.listing().unwrap();
    assert_ne!(l1, l2);
    let last = env.audit().pop().unwrap();
    assert_eq!((&last["event"], &last["result"], &last["reason"], &last["generation"]), (&"apply-forced".into(), &"ok".into(), &reason.into(), &2.into()), "{last:#}");
    let h = env.history();
    assert_eq!(Env::gen(&h, 2)["reason"], reason);
}

#[test]
fn audit_verify_detects_tampering() {
    let Some(env) = Env::new("fwav") else { return };
    let base = base_text();
    env.apply_ok(&env.policy("p", &base), &[]);
    env.apply_ok(&env.policy("p", &with_host04(&base)), &[]);
    assert_eq!(env.apply(&env.policy("cut", &without_admin_ssh(&base)), &[]).code, Some(1));
    env.apply_ok(&env.policy("p", &with_http(&with_host04(&base))), &[]);
    assert_eq!(env.run(&["rollback"]).code, Some(0));
    let ok = env.run(&["audit", "verify"]);
    assert_eq!(ok.code, Some(0), "an untouched trail must verify:\n{ok}");
    assert!(ok.stdout.contains("audit trail ok: 5 record(s)"), "{ok}");
    let ex = env.run(&["audit", "export"]);
    assert_eq!(ex.code, Some(0), "{ex}");
    let doc: Value = serde_json::from_str(&ex.stdout).expect("export json");
    assert_eq!((&doc["verified"], doc["records"].as_array().map(|a| a.len())), (&Value::Bool(true), Some(5)));

    let log = std::fs::read_to_string(env.state().join("audit.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 5);
    let join = |v: &[&str]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let edited = lines[2].replacen("\"appliance\":\"e2e-apply\"", "\"appliance\":\"e2e-apply2\"", 1);
    assert_ne!(edited, lines[2], "the record has no appliance field to edit");
    let cases: Vec<(&str, String, usize, &str)> = vec![
        ("a field edited in a middle record", join(&[lines[0], lines[1], &edited, lines[3], lines[4]]), 3, "does not match its hash"),
        ("a middle line deleted", join(&[lines[0], lines[1], lines[3], lines[4]]), 3, "sequence number 4 where 3 was expected"),
        ("two lines swapped", join(&[lines[0], lines[2], lines[1], lines[3], lines[4]]), 2, "sequence number 3 where 2 was expected"),
        ("the last record truncated", join(&lines[..4]), 5, "cut off the end"),
        ("the file cut in the middle of the last line", log[..log.len() - lines[4].len() / 2].to_string(), 5, "torn"),
    ];
    for (i, (what, text, line, problem)) in cases.into_iter().enumerate() {
        let copy = env.dir.join(format!("copy{i}"));
        let cp = output(Command::new("cp").arg("-a").arg(env.state()).arg(&copy));
        assert_eq!(cp.code, Some(0), "{cp}");
        std::fs::write(copy.join("audit.jsonl"), &text).unwrap();
        let o = env.run_in(&copy, &["audit", "verify"]);
        assert_eq!(o.code, Some(1), "{what}: verify must fail:\n{o}");
        assert!(o.stderr.contains(&format!("record at line {line}:")) && o.stderr.contains(problem), "{what}: expected line {line} ({problem}):\n{o}");
        let j = env.run_in(&copy, &["audit", "verify", "--json"]);
        assert_eq!(j.code, Some(1), "{what}:\n{j}");
        let v: Value = serde_json::from_str(&j.stdout).expect("verify --json");
        assert_eq!((&v["ok"], &v["first_bad"]["line"]), (&Value::Bool(false), &line.into()), "{what}: {v}");
        // A broken trail takes no new records: apply refuses to proceed silently.
        if i == 0 {
            let o = env.run_in(&copy, &["rollback", "--to", "1"]);
            assert_ne!(o.code, Some(0), "{what}: a rollback must not report success with a broken trail:\n{o}");
        }
    }
    // The original is untouched.
    assert_eq!(env.run(&["audit", "verify"]).code, Some(0));
}

#[test]
fn concurrent_applies_serialize() {
    let Some(env) = Env::new("fwas") else { return };
    let base = base_text();
    let pa = env.policy("a", &base);
    let pb = env.policy("b", &with_http(&with_host04(&base)));
    let st = env.state();
    let spawn = |p: &Path| {
        let c = env.cmd(&["apply", p.to_str().unwrap(), "--yes", "--state-dir", st.to_str().unwrap()]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        Reap(Some(c))
    };
    let (mut a, mut b) = (spawn(&pa), spawn(&pb));
    let finish = |r: &mut Reap| {
        let o = r.0.take().unwrap().wait_with_output().expect("wait");
        Out { code: o.status.code(), stdout: String::from_utf8_lossy(&o.stdout).into_owned(), stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
    };
    let (oa, ob) = (finish(&mut a), finish(&mut b));
    assert_eq!(oa.code, Some(0), "apply a:\n{oa}");
    assert_eq!(ob.code, Some(0), "apply b:\n{ob}");
    let gen_of = |o: &Out| o.stdout.lines().find_map(|l| l.strip_prefix("applied generation ")?.split(' ').next()?.parse::<u64>().ok()).unwrap_or_else(|| panic!("no generation in:\n{o}"));
    let (ga, gb) = (gen_of(&oa), gen_of(&ob));
    let mut gens = [ga, gb];
    gens.sort();
    assert_eq!(gens, [1, 2], "both applies must get distinct generations 1 and 2");
    let h = env.history();
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(Env::gen(&h, 2)["current"], true);
    // The second saw the first as its previous generation (they did not interleave).
    let audit = env.audit();
    assert_eq!(events(&audit), vec!["apply", "apply"]);
    assert_eq!((&audit[0]["generation"], &audit[0]["previous_generation"]), (&1.into(), &Value::Null));
    assert_eq!((&audit[1]["generation"], &audit[1]["previous_generation"]), (&2.into(), &1.into()));
    let v = env.run(&["audit", "verify"]);
    assert_eq!(v.code, Some(0), "audit verify after concurrent applies:\n{v}");
    // The kernel holds the later one.
    let later = if ga == 2 { &pa } else { &pb };
    assert_eq!(env.plan(later, false).code, Some(0), "the kernel must hold the later generation");
    let stored = std::fs::read_to_string(st.join("generations/000002/kernel.txt")).unwrap();
    assert_eq!(env.listing().as_deref(), Some(stored.as_str()));

    // A long holder of the lock: the apply gives up after --wait 1, naming it.
    let l = env.listing();
    let earlier = if ga == 2 { &pb } else { &pa };
    let state = fwctl::state::State::open(&st).expect("state");
    let lock = state.lock(Duration::ZERO).expect("take the lock");
    let t = Instant::now();
    let o = env.apply(earlier, &["--wait", "1"]);
    let took = t.elapsed();
    drop(lock);
    assert_eq!(o.code, Some(3), "apply while the lock is held:\n{o}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(5), "gave up after {took:?}");
    let holder = format!("pid {}", std::process::id());
    assert!(o.stderr.contains("another fwctl is changing the firewall") && o.stderr.contains(&holder) && o.stderr.contains("waited 1 s"), "the message must name the holder ({holder}):\n{o}");
    assert_eq!(env.listing(), l, "kernel changed while the lock was held");
    assert_eq!(env.history().len(), 2);
    // Released: the same apply goes through.
    env.apply_ok(earlier, &["--wait", "1"]);
    assert_eq!(env.history().len(), 3);
}

#[test]
fn no_terminal_requires_yes() {
    let Some(env) = Env::new("fwat") else { return };
    let p = env.policy("base", &base_text());
    let o = output(env.cmd(&["apply", p.to_str().unwrap(), "--state-dir", env.state().to_str().unwrap()]).stdin(Stdio::null()));
    assert_eq!(o.code, Some(1), "apply without --yes and without a terminal:\n{o}");
    assert!(o.stderr.contains("--yes"), "the refusal must mention --yes:\n{o}");
    assert_eq!(env.listing(), None, "the kernel must be untouched");
    assert!(env.history().is_empty());
    assert_eq!(events(&env.audit()), vec!["apply-refused"]);
    // With --yes it goes through.
    env.apply_ok(&p, &[]);
    assert!(env.listing().is_some());
}

/// Issue 9 (2): `rollback` goes back to the generation that was in effect
/// before the current one, not to a newer one that expired unconfirmed; the
/// automatic rollback is its own history row; a generation never confirmed
/// comes back only with a confirm window.
#[test]
fn rollback_skips_a_generation_that_expired_unconfirmed() {
    let Some(env) = Env::new("fwrx") else { return };
    let base = base_text();
    let a = env.policy("a", &base);
    let b = env.policy("b", &with_host04(&base));
    env.apply_ok(&a, &[]);
    let la = env.listing().unwrap();
    // B with a window left to expire: A comes back as generation 3.
    let t0 = Instant::now();
    env.apply_ok(&b, &["--confirm", "2"]);
    let lb = env.listing().unwrap();
    assert_ne!(la, lb);
    let back = Env::wait_until(t0, Duration::from_secs(5), Duration::from_millis(50), || env.listing().as_deref() == Some(la.as_str()) && !env.state().join("pending.json").exists() && env.history().len() == 3);
    assert!(back.is_some(), "B was not rolled back: {:#?}", env.history());
    // B again, confirmed: generation 4.
    env.apply_ok(&b, &["--confirm", "30"]);
    assert_eq!(env.run(&["confirm"]).code, Some(0));
    assert_eq!(env.listing().as_deref(), Some(lb.as_str()));
    // rollback: A (in effect before 4 was generation 3), not the expired 2.
    let o = env.run(&["rollback"]);
    assert_eq!(o.code, Some(0), "rollback:\n{o}");
    assert_eq!(env.listing().as_deref(), Some(la.as_str()), "rollback must restore A:\n{o}");
    let h = env.history();
    let rows: Vec<(u64, String, Value)> = h.iter().rev().map(|g| (g["generation"].as_u64().unwrap(), g["event"].as_str().unwrap().to_string(), g["source"].clone())).collect();
    assert_eq!(rows, vec![(1, "apply".into(), Value::Null), (2, "apply".into(), Value::Null), (3, "rollback-auto".into(), 1.into()), (4, "apply".into(), Value::Null), (5, "rollback".into(), 3.into())], "{h:#?}");
    assert_eq!((&Env::gen(&h, 5)["current"], &Env::gen(&h, 5)["confirmed"]), (&Value::Bool(true), &Value::Bool(true)));

    // Generation 2 was never confirmed: not without a window (usage error, nothing changes)…
    let o = env.run(&["rollback", "--to", "2", "--confirm", "0"]);
    assert_eq!(o.code, Some(64), "{o}");
    assert!(o.stderr.contains("never confirmed"), "{o}");
    assert_eq!(env.listing().as_deref(), Some(la.as_str()));
    assert_eq!(env.history().len(), 5);
    // …and with one (the default), it says so and opens it.
    let o = env.run(&["rollback", "--to", "2"]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains("never confirmed") && o.stdout.contains("fwctl confirm"), "{o}");
    assert_eq!(env.listing().as_deref(), Some(lb.as_str()));
    let pending: Value = serde_json::from_str(&std::fs::read_to_string(env.state().join("pending.json")).expect("a confirm window")).unwrap();
    assert_eq!((&pending["generation"], &pending["previous"]), (&6.into(), &5.into()));
    let h = env.history();
    assert_eq!((&Env::gen(&h, 6)["pending"], &Env::gen(&h, 6)["confirmed"]), (&Value::Bool(true), &Value::Bool(false)), "{h:#?}");
    assert_eq!(env.run(&["confirm"]).code, Some(0));
}

/// A policy whose temporary rule expires on 2027-06-30.
fn with_temp_ssh(t: &str) -> String {
    format!("{t}\n[[rules]]\nname = \"temp-ssh\"\nfrom = \"internet\"\nto = \"host04\"\nallow = [\"ssh\"]\nexpires = 2027-06-30\n")
}

/// Issue 9 (3): `plan` compares with the generation as applied, so a rule that
/// has expired since shows as flows going away; `restore` does not bring it back.
#[test]
fn expired_rules_show_in_plan_and_are_not_restored() {
    let Some(env) = Env::new("fwex") else { return };
    let text = with_temp_ssh(&base_text());
    let p = env.policy("p", &text);
    let o = env.run_on("2027-06-29", &["apply", p.to_str().unwrap(), "--yes"]);
    assert_eq!(o.code, Some(0), "{o}");
    let with_temp = env.listing().unwrap();
    assert_eq!(env.run_on("2027-06-30", &["plan", p.to_str().unwrap()]).code, Some(0), "the last day of the rule: no change");
    // The day after: the plan says the flow goes, and why.
    let o = env.run_on("2027-07-01", &["plan", p.to_str().unwrap()]);
    assert_eq!(o.code, Some(2), "{o}");
    let snap = env.state().join("generations/000001/policy/policy.toml");
    let want = format!("- allow internet → host04 (192.0.2.14) tcp/22  [expired 2027-06-30: rule temp-ssh ({}:{})]", snap.display(), line_of(&text, "name = \"temp-ssh\""));
    assert_eq!(section(&o.stdout, "flows"), vec![want.clone()], "{o}");
    // restore (boot) on that day: the rule is left out, and it says so.
    let o = env.run_on("2027-07-01", &["restore"]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains("rule `temp-ssh` (expired 2027-06-30)"), "{o}");
    assert_ne!(env.listing().as_deref(), Some(with_temp.as_str()), "restore brought the expired rule back");
    let h = env.history();
    assert_eq!((&Env::gen(&h, 2)["event"], &Env::gen(&h, 2)["source"], &Env::gen(&h, 2)["compiled_on"]), (&"restore".into(), &1.into(), &"2027-07-01".into()), "{h:#?}");
    let last = env.audit().pop().unwrap();
    assert_eq!(last["summary"]["expired_rules_dropped"], serde_json::json!(["`temp-ssh` (expired 2027-06-30)"]), "{last:#}");
    // The kernel now runs the policy as it is today: nothing left to change.
    let o = env.run_on("2027-07-01", &["plan", p.to_str().unwrap()]);
    assert_eq!(o.code, Some(0), "{o}");
    // An apply on that day records the flow it removes (first apply of the same policy on a fresh state).
    let env2 = env.dir.join("state2");
    let o = output(env.cmd(&["apply", p.to_str().unwrap(), "--yes", "--state-dir", env2.to_str().unwrap()]).env("FWCTL_TODAY", "2027-06-29"));
    assert_eq!(o.code, Some(0), "{o}");
    let o = output(env.cmd(&["apply", p.to_str().unwrap(), "--yes", "--state-dir", env2.to_str().unwrap()]).env("FWCTL_TODAY", "2027-07-01"));
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains("applied generation 2"), "the expiry must be applied:\n{o}");
    let log = output(&mut env.cmd(&["audit", "log", "--json", "--state-dir", env2.to_str().unwrap()]));
    let records: Value = serde_json::from_str(&log.stdout).unwrap();
    let flows = &records.as_array().unwrap().last().unwrap()["summary"]["flows"];
    let want2 = want.replace(env.state().to_str().unwrap(), env2.to_str().unwrap());
    assert_eq!(flows, &serde_json::json!([want2]), "the audit record must name the flow removed");
}

/// Issue 9 (hostile input): `history`, `plan` and `audit` create nothing and
/// change no mode; the audit trail does not verify when its head or log is gone.
#[test]
fn listing_commands_change_nothing_and_missing_trail_does_not_verify() {
    use std::os::unix::fs::PermissionsExt;
    let Some(env) = Env::new("fwro") else { return };
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let shared = env.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let link = env.dir.join("link");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    let p = env.policy("p", &base_text());
    for dir in [&shared, &link] {
        for args in [&["history"][..], &["history", "--json"], &["plan", p.to_str().unwrap()], &["audit", "verify"], &["audit", "log"]] {
            let o = env.run_in(dir, args);
            assert!(matches!(o.code, Some(0) | Some(2)), "{args:?} on an empty state dir:\n{o}");
        }
    }
    assert_eq!(mode(&shared), 0o1777, "a listing command changed the state dir's mode");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0, "a listing command created files");
    // A state dir that does not exist: an error, and still nothing created.
    let missing = env.dir.join("missing");
    for args in [&["history"][..], &["audit", "verify"]] {
        let o = env.run_in(&missing, args);
        assert_eq!(o.code, Some(3), "{args:?} on a missing state dir:\n{o}");
    }
    assert!(!missing.exists());

    // Truncation with audit.head deleted, or garbage; a deleted log next to generations.
    env.apply_ok(&p, &[]);
    env.apply_ok(&env.policy("p", &with_host04(&base_text())), &[]);
    assert_eq!(env.run(&["audit", "verify"]).code, Some(0));
    let log = std::fs::read_to_string(env.state().join("audit.jsonl")).unwrap();
    let first = format!("{}\n", log.lines().next().unwrap());
    let cases: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("truncated, head deleted", Some(first.as_str()), None),
        ("truncated, head garbage", Some(first.as_str()), Some("garbage")),
        ("whole log, head garbage", Some(log.as_str()), Some("{\"seq\":")),
        ("log and head deleted", None, None),
        ("log emptied, head deleted", Some(""), None),
    ];
    for (i, (what, text, head)) in cases.into_iter().enumerate() {
        let copy = env.dir.join(format!("copy{i}"));
        assert_eq!(output(Command::new("cp").arg("-a").arg(env.state()).arg(&copy)).code, Some(0));
        let _ = std::fs::remove_file(copy.join("audit.jsonl"));
        let _ = std::fs::remove_file(copy.join("audit.head"));
        if let Some(t) = text {
            std::fs::write(copy.join("audit.jsonl"), t).unwrap();
        }
        if let Some(h) = head {
            std::fs::write(copy.join("audit.head"), h).unwrap();
        }
        let o = env.run_in(&copy, &["audit", "verify"]);
        assert_eq!(o.code, Some(1), "{what}: must not verify:\n{o}");
        assert_eq!(env.run_in(&copy, &["audit", "export"]).code, Some(1), "{what}: export must say it does not verify");
    }
}

/// Issue 9 (hostile input): loose values are usage errors (exit 64), and a
/// reason cannot carry control characters into the audit trail.
#[test]
fn loose_dates_and_reasons_are_usage_errors() {
    let dir = std::env::temp_dir().join(format!("fwctl-loose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let st = dir.join("state");
    let run = |args: &[&str], today: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(args).arg("--state-dir").arg(&st).env("NO_COLOR", "1").env_remove("FWCTL_STATE_DIR");
        match today {
            Some(t) => c.env("FWCTL_TODAY", t),
            None => c.env_remove("FWCTL_TODAY"),
        };
        output(&mut c)
    };
    let a = run(&["history"], Some("2027-02-30"));
    let b = run(&["audit", "log", "--since", "yesterday"], None);
    let c = run(&["rollback", "--reason", "fix\r#9 2027-01-01T00:00:00Z apply ok by root\x1b[K"], None);
    let d = run(&["audit", "export", "--since", "2027-13-01"], None);
    let _ = std::fs::remove_dir_all(&dir);
    for (what, o) in [("FWCTL_TODAY=2027-02-30", &a), ("--since yesterday", &b), ("a reason with CR and ESC", &c), ("--since 2027-13-01", &d)] {
        assert_eq!(o.code, Some(64), "{what}:\n{o}");
    }
    assert!(a.stderr.contains("FWCTL_TODAY"), "{a}");
    assert!(!st.exists() || std::fs::read_dir(&st).map(|d| d.count()).unwrap_or(0) == 0);
}

/// `fwctl apply | head -1`: the reader goes away before apply writes a line; the
/// apply still completes, writes its generation and its audit record, and exits
/// 0 without a panic. `plan` into a closed pipe keeps its exit code (2).
#[test]
fn apply_into_a_closed_pipe_completes_and_audits() {
    let Some(env) = Env::new("fwaq") else { return };
    let base = base_text();
    let p = env.policy("base", &base);
    let st = env.state();
    let closed = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state-dir", st.to_str().unwrap()]);
        output(env.cmd(&all).stdout(writer))
    };
    let o = closed(&["apply", p.to_str().unwrap(), "--yes"]);
    assert_eq!(o.code, Some(0), "apply into a closed pipe:\n{o}");
    assert!(!o.stderr.contains("panicked"), "{o}");
    assert!(env.listing().is_some(), "the ruleset was not loaded");
    assert_eq!(events(&env.audit()), vec!["apply"]);
    assert_eq!(Env::gen(&env.history(), 1)["current"], Value::Bool(true));
    let e = env.policy("edit", &with_host04(&base));
    let o = closed(&["plan", e.to_str().unwrap()]);
    assert_eq!(o.code, Some(2), "plan into a closed pipe:\n{o}");
    assert!(!o.stderr.contains("panicked"), "{o}");
}
