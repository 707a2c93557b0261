//! Apply benchmark: prints figures and ratios measured in one run, asserts nothing.
//!
//! `cargo bench --bench apply` (root; needs `ip` and `nft`, else prints "skipped: …"
//! and exits 0). Everything runs in throwaway network namespaces (no devices are
//! needed: `iifname` matches do not need the interfaces to exist). Generated
//! policies (fwctl::gen, seed 42) of 1k, 10k and 100k rules; the one-host change
//! moves host h17 to a free address of its zone (10.2.200.18 / fd00:2::c8:12;
//! gen.rs never uses 10.Z.200.0/24).
//!
//! Part A, the command: `fwctl apply --yes --json` with a fresh state directory into
//! an empty ruleset (whole-command wall time, and `kernel_ms`: the nft transaction
//! as fwctl reports it), then the one-host change applied by `fwctl apply` on top
//! (must say "element delta"). A size whose run cannot finish within the timeout by
//! extrapolation (a smaller size's wall time × the size ratio, a lower bound) is
//! skipped and reported as such.
//!
//! Part B, the kernel transactions (the same library code `fwctl apply` runs, without
//! the command's planning): per size, fwctl's full script (`fwctl compile`'s output,
//! rendered in-process) loaded with `nft -f` into an empty namespace, then the
//! one-host change as fwctl's element delta (`plan::delta`, classes kept from the
//! previous compilation as `apply` does) with `nft -f`, then the same change written
//! in-process over netlink (`sys::nftnl`, the path `fwctl apply` takes): the change
//! is undone and redone over netlink FWCTL_BENCH_NL_ROUNDS times (default 5) and the
//! median, min and max of the redo are printed; next to it the naive linear
//! rendering (one nft rule per policy rule and family, named sets for multi-element
//! matches, as benches/datapath.rs renders it) loaded with `nft -f`, and the
//! one-host change applied to it as a linear generator would: regenerate and reload
//! the whole table in one transaction.
//!
//! Every command is bounded and killed when over, which is reported:
//! `fwctl apply` by FWCTL_BENCH_APPLY_TIMEOUT seconds (default 150), `nft -f` by
//! FWCTL_BENCH_NFT_TIMEOUT (default 60). Peak memory comes from /usr/bin/time when it is
//! installed. Namespaces and temporary files go away on exit or panic.
//! Knobs: `FWCTL_BENCH_SIZES` (default 1000,10000,100000), the two timeouts,
//! `FWCTL_BENCH_NL_ROUNDS`,
//! `FWCTL_BENCH_PARTS` (default AB), `FWCTL_BENCH_KEEP=1` (keep the policies and nft
//! scripts in the temporary directory and print its path).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fwctl::compile::{compile, compile_with, Capabilities};
use fwctl::compile::ir::TABLE;
use fwctl::model::Policy;
use fwctl::plan::delta::Delta;
use fwctl::sys::netns::{unique_prefix, Lab};

#[path = "common/linear.rs"]
mod linear;
use linear::linear_script;

const FWCTL: &str = env!("CARGO_BIN_EXE_fwctl");
const SEED: u64 = 42;
const MOVED_HOST: usize = 17;
const CAPS: Capabilities = Capabilities { flowtable: false };
const TARGET_MS: f64 = 50.0;

#[path = "common/harness.rs"]
mod harness;
use harness::R;

fn main() {
    harness::main("apply", fwctl::sys::netns::prerequisites, run);
}

// ---------------------------------------------------------------------------
// Running bounded commands inside a namespace

#[derive(Default)]
struct Run {
    ok: bool,
    timed_out: bool,
    skipped: Option<String>,
    wall: Duration,
    stdout: String,
    stderr: String,
    peak_mib: Option<f64>,
}

impl Run {
    fn status(&self) -> &'static str {
        if self.skipped.is_some() {
            "skipped"
        } else if self.timed_out {
            "TIMEOUT"
        } else if self.ok {
            "ok"
        } else {
            "FAILED"
        }
    }
    fn skipped(why: String) -> Run {
        Run { skipped: Some(why), ..Default::default() }
    }
}

/// Runs `argv` in namespace `ns` (a thread enters it; the child inherits it), killed
/// after `limit`. Wall time is the whole command's.
fn run_in(ns: &str, argv: &[&str], limit: Duration, tmp: &Path) -> R<Run> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let tmp = tmp.to_path_buf();
    let handle = fwctl::sys::netns::spawn_in(ns, move || Ok(run_here(&argv, limit, &tmp))).map_err(|e| e.to_string())?;
    fwctl::sys::netns::join(handle).map_err(|e| e.to_string())?
}

fn run_here(argv: &[String], limit: Duration, tmp: &Path) -> R<Run> {
    let time_file = tmp.join("time.out");
    let _ = std::fs::remove_file(&time_file);
    let timed = Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%M", "-o"]).arg(&time_file).args(argv);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let (out_file, err_file) = (tmp.join("cmd.stdout"), tmp.join("cmd.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(&err_file).map_err(|e| e.to_string())?);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {argv:?}: {e}"))?;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if started.elapsed() >= limit {
            // Our own processes, by pid: the command under /usr/bin/time, then time.
            let pid = child.id();
            if let Ok(kids) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
                for k in kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(k), nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = started.elapsed();
    let peak_mib = std::fs::read_to_string(&time_file)
        .ok()
        .and_then(|s| s.lines().rev().find_map(|l| l.trim().parse::<f64>().ok()))
        .map(|kib| kib / 1024.0);
    Ok(Run {
        ok: status.is_some_and(|s| s.success()),
        timed_out,
        skipped: None,
        wall,
        stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_file).unwrap_or_default(),
        peak_mib,
    })
}

struct Applied {
    run: Run,
    how: String,
    kernel_ms: Option<f64>,
    /// Set elements added and removed, from the plan.
    changed: (usize, usize),
}

fn fwctl_apply(ns: &str, policy: &Path, state: &Path, limit: Duration, tmp: &Path) -> R<Applied> {
    let (p, s) = (policy.display().to_string(), state.display().to_string());
    let run = run_in(ns, &[FWCTL, "apply", &p, "--state-dir", &s, "--yes", "--json", "--reason", "apply bench"], limit, tmp)?;
    let json: Option<serde_json::Value> = run.stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    let mut how = json.as_ref().and_then(|j| j["how"].as_str()).unwrap_or("-").to_string();
    if let Some(via) = json.as_ref().and_then(|j| j["via"].as_str()) {
        how = format!("{how} via {via}");
    }
    let kernel_ms = json.as_ref().and_then(|j| j["kernel_ms"].as_f64());
    let sets = json.as_ref().and_then(|j| j.pointer("/plan/ruleset/sets")).and_then(|s| s.as_array()).cloned().unwrap_or_default();
    let count = |k: &str| sets.iter().map(|s| s[k].as_array().map_or(0, Vec::len)).sum();
    Ok(Applied { changed: (count("added"), count("removed")), run, how, kernel_ms })
}

fn nft_file(ns: &str, file: &Path, limit: Duration, tmp: &Path) -> R<Run> {
    let f = file.display().to_string();
    run_in(ns, &["nft", "-f", &f], limit, tmp)
}

fn flush(lab: &Lab, ns: &str) -> R<()> {
    lab.run_nft(ns, "flush ruleset\n").map(drop).map_err(|e| e.to_string())
}

fn problem(label: &str, run: &Run) {
    if let Some(why) = &run.skipped {
        eprintln!("{label}: skipped: {why}");
    } else if !run.ok {
        let tail: Vec<&str> = run.stderr.lines().rev().take(4).collect();
        eprintln!("{label}: {} after {:.1} s; stderr (last lines): {}", run.status(), run.wall.as_secs_f64(), tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
}

/// In namespace `ns`, whose table holds `fwd`'s result: `rounds` times, undo it
/// (`back`) and redo it (`fwd`) over netlink. Returns per redo the time of the
/// write call (encode, send, acknowledgements, socket close) and of the kernel
/// transaction in it (send to last acknowledgement). The table ends as it began.
fn netlink_rounds(ns: &str, fwd: &Delta, back: &Delta, rounds: usize) -> R<Vec<(Duration, Duration)>> {
    let (fwd, back) = (fwd.clone(), back.clone());
    let handle = fwctl::sys::netns::spawn_in(ns, move || {
        let write = |d: &Delta| fwctl::sys::nftnl::write(TABLE, d).map_err(std::io::Error::other);
        let mut times = vec![];
        for _ in 0..rounds {
            write(&back)?;
            let t = Instant::now();
            let w = write(&fwd)?;
            times.push((t.elapsed(), w.committed));
        }
        Ok(times)
    })
    .map_err(|e| e.to_string())?;
    fwctl::sys::netns::join(handle).map_err(|e| format!("netlink element writer: {e}"))
}

// ---------------------------------------------------------------------------
// Policies

fn load_policy(name: &str, text: &str) -> R<Policy> {
    let today = fwctl::model::Date { year: 2026, month: 11, day: 23 };
    let loaded = fwctl::check::load_str(name, text, today);
    if loaded.has_errors() || loaded.policy.is_none() {
        let errs: Vec<String> = loaded.diags.iter().filter(|d| d.is_error()).take(3).map(|d| format!("{d:?}")).collect();
        return Err(format!("{name} is invalid: {}", errs.join("\n")));
    }
    Ok(loaded.policy.expect("checked"))
}

/// Zone networks as gen.rs numbers them (host i lives in zone i % 4: dmz 1, lan 2, servers 3, mgmt 4).
const ZONE_NET: [u8; 4] = [1, 2, 3, 4];

/// Moves host `i` to 10.Z.200.(i % 250 + 1) / fd00:Z::c8:… in its own zone's network.
/// gen.rs numbers hosts 10.Z.hi.lo with hi = n / 250 and n ≤ 20 000 / 4 + 1, so
/// hi ≤ 20: 10.Z.200.0/24 is never used. Returns (text, old line, new line).
fn move_host(text: &str, i: usize) -> R<(String, String, String)> {
    let z = ZONE_NET[i % 4];
    let lo = i % 250 + 1;
    let new = format!("h{i} = [\"10.{z}.200.{lo}\", \"fd00:{z}::c8:{lo:x}\"]");
    let key = format!("\nh{i} = [");
    let at = text.find(&key).ok_or_else(|| format!("no host h{i} in the generated policy"))? + 1;
    let end = at + text[at..].find('\n').ok_or("unterminated host line")?;
    let old = text[at..end].to_string();
    Ok((format!("{}{new}{}", &text[..at], &text[end..]), old, new))
}

fn kernel_size(rs: &fwctl::compile::ir::Ruleset) -> (usize, usize) {
    (rs.chains.iter().map(|c| c.rules.len()).sum(), rs.sets.iter().map(|s| s.elements.len()).sum())
}

// ---------------------------------------------------------------------------
// The table

struct Row {
    what: String,
    rules: String,
    elements: String,
    status: &'static str,
    wall_s: Option<f64>,
    kernel_ms: Option<f64>,
    peak_mib: Option<f64>,
    how: String,
}

fn row(what: impl Into<String>, rules: impl Into<String>, elements: impl Into<String>, run: &Run, kernel_ms: Option<f64>, how: impl Into<String>) -> Row {
    let ran = run.skipped.is_none();
    Row {
        what: what.into(),
        rules: rules.into(),
        elements: elements.into(),
        status: run.status(),
        wall_s: ran.then_some(run.wall.as_secs_f64()),
        kernel_ms: if run.ok { kernel_ms } else { None },
        peak_mib: run.peak_mib,
        how: how.into(),
    }
}

fn header() {
    println!("{:<42} {:>15} {:>10} {:>8} {:>8} {:>10} {:>8}  how", "what", "rules (kernel)", "elements", "status", "wall s", "kernel ms", "peak MiB");
}

fn print_row(r: &Row) {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    println!("{:<42} {:>15} {:>10} {:>8} {:>8} {:>10} {:>8}  {}", r.what, r.rules, r.elements, r.status, f(r.wall_s, 3), f(r.kernel_ms, 1), f(r.peak_mib, 0), r.how);
}

struct TempDir(PathBuf, bool);
impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            println!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// The run

/// One size's one-host change: fwctl's delta through `nft -f` and over netlink, the
/// linear rendering's reload (milliseconds).
struct Ratio {
    n: usize,
    nft_ms: Option<f64>,
    netlink_ms: Option<f64>,
    linear_ms: Option<f64>,
    how: String,
}

struct Size {
    n: usize,
    path: PathBuf,
    moved_path: PathBuf,
}

fn run() -> R<()> {
    let bench_started = Instant::now();
    let sizes: Vec<usize> = std::env::var("FWCTL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let secs = |k: &str, d: u64| Duration::from_secs(std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d));
    let limit = secs("FWCTL_BENCH_APPLY_TIMEOUT", 150);
    let nft_limit = secs("FWCTL_BENCH_NFT_TIMEOUT", 60);
    let prefix = unique_prefix("fwab");
    let keep = std::env::var_os("FWCTL_BENCH_KEEP").is_some_and(|v| v == "1");
    let parts = std::env::var("FWCTL_BENCH_PARTS").unwrap_or_else(|_| "AB".into()).to_uppercase();
    let nl_rounds: usize = std::env::var("FWCTL_BENCH_NL_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(5);
    let tmp = TempDir(std::env::temp_dir().join(format!("{prefix}-bench")), keep);
    std::fs::create_dir_all(&tmp.0).map_err(|e| e.to_string())?;
    let t = tmp.0.as_path();
    let e = |e: fwctl::sys::netns::Error| e.to_string();
    let mut lab = Lab::new(&prefix).map_err(e)?;
    let ns_cli = lab.add_ns("cli").map_err(e)?;
    let ns_fw = lab.add_ns("fw").map_err(e)?;
    let ns_lin = lab.add_ns("lin").map_err(e)?;
    println!("apply bench: {FWCTL}; sizes {sizes:?}; timeouts: fwctl apply {} s, nft -f {} s; namespaces {prefix}-*", limit.as_secs(), nft_limit.as_secs());

    let mut policies = vec![];
    let mut texts: HashMap<usize, (String, String)> = HashMap::new();
    for &n in &sizes {
        let text = fwctl::gen::policy(&fwctl::gen::Shape::for_rules(n), SEED);
        let (moved, old, new) = move_host(&text, MOVED_HOST)?;
        if n == sizes[0] {
            println!("one-host change: `{old}` -> `{new}`");
        }
        let (path, moved_path) = (t.join(format!("gen-{n}.toml")), t.join(format!("gen-{n}-moved.toml")));
        std::fs::write(&path, &text).map_err(|e| e.to_string())?;
        std::fs::write(&moved_path, &moved).map_err(|e| e.to_string())?;
        texts.insert(n, (text, moved));
        policies.push(Size { n, path, moved_path });
    }

    // Part A: the command.
    println!("\nA. `fwctl apply` (fresh state dir, empty ruleset), then the one-host change by `fwctl apply`");
    header();
    let mut rows_a = vec![];
    let mut cli_delta: Vec<(usize, Applied)> = vec![];
    let mut slowest: Option<(usize, Duration)> = None;
    for s in policies.iter().filter(|_| parts.contains('A')) {
        let n = s.n;
        let skip = slowest.filter(|(m, w)| w.as_secs_f64() * n as f64 / *m as f64 > limit.as_secs_f64());
        let full = if let Some((m, w)) = skip {
            Applied { run: Run::skipped(format!("{m} rules took {:.0} s; {n} rules would take more than {:.0} s (lower bound), over the {} s timeout", w.as_secs_f64(), w.as_secs_f64() * n as f64 / m as f64, limit.as_secs())), how: "-".into(), kernel_ms: None, changed: (0, 0) }
        } else {
            flush(&lab, &ns_cli)?;
            fwctl_apply(&ns_cli, &s.path, &t.join(format!("state-{n}")), limit, t)?
        };
        problem(&format!("fwctl apply {n}"), &full.run);
        let r = row(format!("fwctl apply {n} (full)"), n.to_string(), "", &full.run, full.kernel_ms, full.how.clone());
        print_row(&r);
        rows_a.push(r);
        if full.run.skipped.is_none() {
            let w = if full.run.ok { full.run.wall } else { full.run.wall.max(limit) };
            slowest = Some((n, w));
        }
        if full.run.ok {
            let d = fwctl_apply(&ns_cli, &s.moved_path, &t.join(format!("state-{n}")), limit, t)?;
            problem(&format!("fwctl apply {n} one-host change"), &d.run);
            let r = row(format!("fwctl apply {n} one-host change"), n.to_string(), format!("+{} -{}", d.changed.0, d.changed.1), &d.run, d.kernel_ms, d.how.clone());
            print_row(&r);
            rows_a.push(r);
            cli_delta.push((n, d));
        }
    }
    flush(&lab, &ns_cli)?;

    // Part B: the kernel transactions.
    println!("\nB. kernel transactions: fwctl's script and element delta with `nft -f`, the element delta over netlink, vs. a linear rendering and its reload");
    header();
    let mut rows_b = vec![];
    let mut ratios: Vec<Ratio> = vec![];
    for s in policies.iter().filter(|_| parts.contains('B')) {
        let n = s.n;
        let (text, moved) = texts.remove(&n).expect("text");
        // fwctl: compile (in-process, as `fwctl compile` does), load, then the delta.
        let c0 = Instant::now();
        let p = load_policy("gen.toml", &text)?;
        let old = compile(&p, CAPS).map_err(|e| format!("compile {n}: {e:?}"))?;
        let compile_s = c0.elapsed().as_secs_f64();
        drop(p);
        let (krules, kelems) = kernel_size(&old.ruleset);
        let script_path = t.join(format!("fwctl-{n}.nft"));
        std::fs::write(&script_path, fwctl::render::nft::script(&old.ruleset, "apply bench")).map_err(|e| e.to_string())?;
        flush(&lab, &ns_fw)?;
        let full = nft_file(&ns_fw, &script_path, nft_limit, t)?;
        problem(&format!("nft -f fwctl {n}"), &full);
        let r = row(format!("nft -f fwctl script {n}"), format!("{n} ({krules})"), kelems.to_string(), &full, Some(full.wall.as_secs_f64() * 1000.0), format!("new table; compile {compile_s:.2} s"));
        print_row(&r);
        rows_b.push(r);
        let p2 = load_policy("gen.toml", &moved)?;
        let new = compile_with(&p2, CAPS, Some(&old.decision.alloc)).map_err(|e| format!("compile {n} moved: {e:?}"))?;
        drop(p2);
        // The delta both ways: old -> new (measured), new -> old (to undo it).
        let deltas = fwctl::plan::delta::delta(&old.ruleset, &new.ruleset).zip(fwctl::plan::delta::delta(&new.ruleset, &old.ruleset));
        let (delta_path, how, elems) = match &deltas {
            Some((d, _)) => {
                let (a, r) = d.counts();
                let path = t.join(format!("fwctl-{n}-delta.nft"));
                std::fs::write(&path, fwctl::plan::delta::script(TABLE, d)).map_err(|e| e.to_string())?;
                (path, "element delta", format!("+{a} -{r}"))
            }
            None => {
                let path = t.join(format!("fwctl-{n}-moved.nft"));
                std::fs::write(&path, fwctl::render::nft::script(&new.ruleset, "apply bench")).map_err(|e| e.to_string())?;
                (path, "full replace (no delta)", kernel_size(&new.ruleset).1.to_string())
            }
        };
        drop((old, new));
        let (mut fwctl_ms, mut netlink_ms) = (None, None);
        if full.ok {
            let d = nft_file(&ns_fw, &delta_path, nft_limit, t)?;
            problem(&format!("nft -f fwctl {n} one-host change"), &d);
            let r = row(format!("nft -f fwctl one-host change {n}"), format!("{n} ({krules})"), elems.clone(), &d, Some(d.wall.as_secs_f64() * 1000.0), how);
            print_row(&r);
            rows_b.push(r);
            fwctl_ms = d.ok.then_some(d.wall.as_secs_f64() * 1000.0);
            if let (true, Some((fwd, back))) = (d.ok, &deltas) {
                let rounds = netlink_rounds(&ns_fw, fwd, back, nl_rounds)?;
                let (mut times, mut commits): (Vec<Duration>, Vec<Duration>) = rounds.into_iter().unzip();
                times.sort();
                commits.sort();
                let median = times[times.len() / 2];
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let run = Run { ok: true, wall: median, ..Default::default() };
                let detail = format!(
                    "element delta over netlink, median of {} (min {:.2}, max {:.2} ms); of it the transaction (send to last ACK) {:.2} ms",
                    times.len(),
                    ms(times[0]),
                    ms(*times.last().expect("rounds")),
                    ms(commits[commits.len() / 2])
                );
                let r = row(format!("netlink fwctl one-host change {n}"), format!("{n} ({krules})"), elems, &run, Some(ms(median)), detail);
                print_row(&r);
                rows_b.push(r);
                netlink_ms = Some(ms(median));
            }
        }
        flush(&lab, &ns_fw)?;

        // Linear: render, load, then regenerate and reload.
        let g0 = Instant::now();
        let p = load_policy("gen.toml", &text)?;
        let linear = linear_script(&p);
        drop(p);
        let gen_s = g0.elapsed().as_secs_f64();
        let lin_path = t.join(format!("linear-{n}.nft"));
        std::fs::write(&lin_path, &linear.script).map_err(|e| e.to_string())?;
        let (lrules, lsets, lelems, mib) = (linear.rules, linear.sets, linear.elements, linear.script.len() as f64 / 1048576.0);
        drop(linear);
        flush(&lab, &ns_lin)?;
        let l = nft_file(&ns_lin, &lin_path, nft_limit, t)?;
        problem(&format!("nft -f linear {n}"), &l);
        let r = row(format!("nft -f linear {n}"), format!("{n} ({lrules})"), lelems.to_string(), &l, Some(l.wall.as_secs_f64() * 1000.0), format!("new table; {lsets} sets, {mib:.1} MiB; render {gen_s:.2} s"));
        print_row(&r);
        rows_b.push(r);
        let linear_ms = if l.ok {
            let g0 = Instant::now();
            let p = load_policy("gen.toml", &moved)?;
            let lm = linear_script(&p);
            drop(p);
            let regen_s = g0.elapsed().as_secs_f64();
            let reload_path = t.join(format!("linear-{n}-moved.nft"));
            std::fs::write(&reload_path, format!("table inet linear\ndelete table inet linear\n{}", lm.script)).map_err(|e| e.to_string())?;
            let (mr, me) = (lm.rules, lm.elements);
            drop(lm);
            let rl = nft_file(&ns_lin, &reload_path, nft_limit, t)?;
            problem(&format!("nft -f linear {n} reload"), &rl);
            let r = row(format!("nft -f linear one-host change {n}"), format!("{n} ({mr})"), me.to_string(), &rl, Some(rl.wall.as_secs_f64() * 1000.0), format!("full reload; regenerate {regen_s:.2} s"));
            print_row(&r);
            rows_b.push(r);
            rl.ok.then_some(rl.wall.as_secs_f64() * 1000.0)
        } else {
            None
        };
        flush(&lab, &ns_lin)?;
        ratios.push(Ratio { n, nft_ms: fwctl_ms, netlink_ms, linear_ms, how: how.to_string() });
    }

    // Summary.
    println!("\nAll rows");
    header();
    for r in rows_a.iter().chain(&rows_b) {
        print_row(r);
    }
    println!("\nOne-host change, linear reload / fwctl element delta (kernel transactions: nft -f wall time; netlink: the write call):");
    for Ratio { n, nft_ms: f, netlink_ms: nl, linear_ms: l, how } in &ratios {
        match (f, l) {
            (Some(f), Some(l)) => println!("  {n:>6} rules: linear {l:>9.1} ms / fwctl {f:>6.1} ms ({how}, nft -f) = {:>6.1}x", l / f),
            _ => println!("  {n:>6} rules: not available (fwctl {f:?} ms, linear {l:?} ms)"),
        }
        if let (Some(f), Some(nl)) = (f, nl) {
            println!("  {n:>6} rules: fwctl's element delta, nft -f {f:>9.1} ms / netlink {nl:>6.2} ms = {:>6.1}x", f / nl);
        }
    }
    if let Some(Ratio { n, nft_ms: f, netlink_ms: nl, how, .. }) = ratios.iter().max_by_key(|r| r.n) {
        let show = |v: &Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2} ms"));
        let met = nl.is_some_and(|x| x < TARGET_MS) && how == "element delta";
        println!("target: the one-host change as a delta under {TARGET_MS} ms at {n} rules: {how}, over netlink {} (nft -f {}) -> {}", show(nl), show(f), if met { "MET (netlink write)" } else { "NOT MET" });
    }
    for (n, d) in &cli_delta {
        println!(
            "`fwctl apply` one-host change at {n} rules: {} ({}), kernel_ms {:?}, whole command {:.3} s",
            d.how,
            d.run.status(),
            d.kernel_ms.map(|k| (k * 10.0).round() / 10.0),
            d.run.wall.as_secs_f64()
        );
    }
    println!("notes: 'kernel ms' is fwctl's own kernel_ms for `fwctl apply` rows (its kernel transaction: netlink write, or nft -f), the nft -f wall time for nft rows and the write call for netlink rows; 'wall s' is the whole command; peak MiB is its max RSS (/usr/bin/time).");
    lab.destroy().map_err(e)?;
    println!("bench took {:.1} s", bench_started.elapsed().as_secs_f64());
    Ok(())
}
