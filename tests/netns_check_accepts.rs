//! Whatever `check` accepts, the kernel accepts: every policy value that reaches
//! the nft script (rule names in log prefixes and element comments, device and VPN
//! interface names in maps, the firewall name in the header) is generated hostile
//! — each printable ASCII character at the start, middle and end, multibyte text,
//! invisible characters, names at and past every length limit — and offered to
//! `check`'s pipeline one at a time. Those it accepts are batched into a few
//! policies, compiled and rendered, and each script must pass `nft -c -f` inside a
//! throwaway network namespace. A value `check` refuses is fine (it got a located
//! error); a value `check` accepts and nft refuses is the bug this guards.
//!
//! The random part uses a fresh seed (printed; rerun with FWCTL_SEED=<seed>).
//! Needs root, `ip` and `nft`. Under CI (CI set) a missing prerequisite fails;
//! elsewhere the test is skipped with a message.

use fwctl::check::load_str;
use fwctl::compile::{compile, Capabilities};
use fwctl::gen::Rng;
use fwctl::model::Date;
use fwctl::sys::netns::{privileged_or_skip, unique_prefix, Lab};
use std::fmt::Write as _;

const TODAY: Date = Date { year: 2026, month: 11, day: 23 };
const CAPS: Capabilities = Capabilities { flowtable: false };
/// Values per batched policy: one `nft -c` checks this many at once.
const BATCH: usize = 120;

/// A TOML basic string holding `s` exactly (every character escaped as needed).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Printable ASCII punctuation and space: the characters most likely to mean
/// something to nft's parser.
fn punctuation() -> Vec<char> {
    (0x20u8..0x7f).map(char::from).filter(|c| !c.is_ascii_alphanumeric()).collect()
}

/// Hostile text: each special character at the start, the middle and the end,
/// multibyte and invisible characters, and lengths around the limits
/// (`budget` bytes), plus random mixtures.
fn hostile(rng: &mut Rng, budget: usize, random: usize) -> Vec<String> {
    let mut v = vec![];
    let mut specials: Vec<char> = punctuation();
    specials.extend(['é', '规', '🔥', '\u{301}', '\u{202e}', '\u{200b}', '\u{feff}', '\t', '\n', '\u{7f}', '\u{85}']);
    for c in &specials {
        v.push(format!("{c}a1"));
        v.push(format!("a{c}1"));
        v.push(format!("a1{c}"));
    }
    for n in [budget.saturating_sub(2), budget.saturating_sub(1), budget, budget + 1, budget + 40] {
        v.push("x".repeat(n));
        // A multibyte character straddling the limit.
        v.push(format!("{}é", "x".repeat(n.saturating_sub(1))));
        v.push(format!("{}规", "x".repeat(n.saturating_sub(2))));
        v.push("é".repeat(n / 2 + 1));
    }
    v.push(String::new());
    v.push(" ".into());
    v.push("any".into());
    v.push("self".into());
    v.push("198.51.100.7".into());
    let pool: Vec<char> = specials.iter().copied().chain("abcxyz019".chars()).collect();
    for _ in 0..random {
        let len = 1 + rng.below(budget + 8);
        v.push((0..len).map(|_| *rng.pick(&pool)).collect());
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

const HEAD: &str = "[firewall]\nname = \"hostile\"\nlog_default = true\n[zones.outside]\n[zones.inside]\nnetworks = [\"192.0.2.0/24\", \"2001:db8:10::/64\"]\n[zones.admins]\n";

fn rule(name: &str, comment: &str, owner: &str, k: usize) -> String {
    let (from, to) = if k.is_multiple_of(2) { ("outside", "inside") } else { ("inside", "self") };
    let allow_deny = if k.is_multiple_of(3) { "deny" } else { "allow" };
    format!(
        "[[rules]]\nname = {}\nfrom = \"{from}\"\nto = \"{to}\"\n{allow_deny} = [\"ssh\", \"ping\"]\nlog = true\ncomment = {}\nowner = {}\n",
        toml_str(name),
        toml_str(comment),
        toml_str(owner)
    )
}

fn interface(dev: &str, k: usize) -> String {
    let zone = if k.is_multiple_of(2) { "outside" } else { "inside" };
    format!("[interfaces.if{k}]\ndevice = {}\nzone = \"{zone}\"\n", toml_str(dev))
}

fn vpn(name: &str, peer: &str, k: usize) -> String {
    format!(
        "[vpn.{}]\nzone = \"admins\"\nlisten_port = {}\naddresses = [\"10.{}.{}.1/24\"]\nprivate_key_file = \"/etc/fwctl/keys/k{k}.key\"\n[[vpn.{}.peers]]\nname = {}\npublic_key = \"{}\"\nallowed_ips = [\"10.{}.{}.2/32\"]\n",
        toml_str(name),
        40000 + k,
        100 + k / 250,
        k % 250,
        toml_str(name),
        toml_str(peer),
        key(k),
        100 + k / 250,
        k % 250
    )
}

/// A distinct, valid WireGuard public key (32 bytes, base64).
fn key(k: usize) -> String {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(k as u64 + 1).to_le_bytes());
    b[31] = 0x42;
    base64(&b)
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for ch in b.chunks(3) {
        let n = (u32::from(ch[0]) << 16) | (u32::from(*ch.get(1).unwrap_or(&0)) << 8) | u32::from(*ch.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= ch.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A base interface so that every fragment compiles on its own.
const BASE_IFACES: &str = "[interfaces.base0]\ndevice = \"base0\"\nzone = \"outside\"\n[interfaces.base1]\ndevice = \"base1\"\nzone = \"inside\"\n";

fn accepted(text: &str) -> bool {
    !load_str("hostile.toml", text, TODAY).has_errors()
}

/// Keep the fragments `check` accepts on their own (with `HEAD` and the base
/// interfaces), then group them into policies of [`BATCH`].
fn batches(fragments: Vec<String>) -> (Vec<String>, usize, usize) {
    let total = fragments.len();
    let ok: Vec<String> = fragments.into_iter().filter(|f| accepted(&format!("{HEAD}{BASE_IFACES}{f}"))).collect();
    let n = ok.len();
    let out = ok.chunks(BATCH).map(|c| format!("{HEAD}{BASE_IFACES}{}", c.concat())).collect();
    (out, n, total)
}

#[test]
fn whatever_check_accepts_nft_accepts() {
    if !privileged_or_skip() {
        return;
    }
    let seed: u64 = std::env::var("FWCTL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64 | 1
    });
    eprintln!("hostile-names seed: {seed} (rerun with FWCTL_SEED={seed})");
    let mut rng = Rng(seed);

    let mut policies: Vec<(String, String)> = vec![];
    let mut summary = vec![];
    // Rule names, comments and owners (log prefix: 127 bytes; comments: 128).
    let names = hostile(&mut rng, 113, 150);
    let texts = hostile(&mut rng, 128, 50);
    let frags: Vec<String> = names.iter().enumerate().map(|(k, n)| rule(n, &texts[k % texts.len()], &texts[(k * 7 + 3) % texts.len()], k)).collect();
    let (ps, n, total) = batches(frags);
    summary.push(format!("rule names: {n} of {total} accepted"));
    policies.extend(ps.into_iter().map(|p| ("rule names".to_string(), p)));
    // Device names (15 bytes).
    let devs = hostile(&mut rng, 15, 150);
    let frags: Vec<String> = devs.iter().enumerate().map(|(k, d)| interface(d, k)).collect();
    let (ps, n, total) = batches(frags);
    summary.push(format!("device names: {n} of {total} accepted"));
    policies.extend(ps.into_iter().map(|p| ("device names".to_string(), p)));
    // VPN interface names and peer names.
    let vpns = hostile(&mut rng, 15, 100);
    let peers = hostile(&mut rng, 20, 0);
    let frags: Vec<String> = vpns.iter().enumerate().map(|(k, v)| vpn(v, &peers[k % peers.len()], k)).collect();
    let (ps, n, total) = batches(frags);
    summary.push(format!("vpn names: {n} of {total} accepted"));
    policies.extend(ps.into_iter().map(|p| ("vpn names".to_string(), p)));
    // The firewall name (it reaches the script's header comment).
    let fw_names = hostile(&mut rng, 64, 10);
    let before = policies.len();
    for (k, name) in fw_names.iter().enumerate() {
        let head = HEAD.replace("name = \"hostile\"", &format!("name = {}", toml_str(name)));
        let text = format!("{head}{BASE_IFACES}{}", rule(&format!("r{k}"), "c", "o", k));
        if accepted(&text) {
            policies.push(("firewall name".to_string(), text));
        }
    }
    summary.push(format!("firewall names: {} of {} accepted", policies.len() - before, fw_names.len()));
    eprintln!("{}", summary.join("; "));
    assert!(policies.len() >= 4, "too few accepted values to test: {summary:?}");

    let mut lab = Lab::new(&unique_prefix("hostile")).expect("lab");
    let ns = lab.add_ns("chk").expect("namespace");
    let dir = std::env::temp_dir().join(format!("{}-scripts", lab.prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = RemoveDir(dir.clone());
    let mut failures = vec![];
    for (i, (what, text)) in policies.iter().enumerate() {
        let loaded = load_str("hostile.toml", text, TODAY);
        assert!(!loaded.has_errors(), "{what}: a batch of individually accepted values is refused: {:?}", loaded.diags);
        let p = loaded.policy.expect("no errors means a policy");
        let compiled = compile(&p, CAPS).unwrap_or_else(|e| panic!("{what}: accepted policy does not compile: {e:?}"));
        let script = fwctl::render::nft::script(&compiled.ruleset, &format!("fwctl ruleset for {} — generated", p.name));
        let file = dir.join(format!("{i}.nft"));
        std::fs::write(&file, &script).expect("write script");
        // A non-zero exit is an error carrying nft's stderr.
        if let Err(e) = lab.exec(&ns, &["nft", "-c", "-f", file.to_str().expect("utf-8 path")]) {
            failures.push(format!("{what} (policy {i}): nft -c refused: {e}\n--- policy ---\n{text}"));
        }
    }
    assert!(failures.is_empty(), "check accepted what nft refuses (seed {seed}):\n{}", failures.join("\n\n"));
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
