//! Element deltas written over netlink (`fwctl::sys::nftnl`) leave the kernel as
//! `nft -f` of the new ruleset does, and a refused batch changes nothing.
//!
//! Each test makes its own throwaway namespaces (unique prefix) and removes them on
//! success and on failure: "nl" holds the table the deltas are written into,
//! "fresh" gets every new ruleset loaded whole with `nft -f`. After each delta,
//! `nft list table inet fwctl` of both must agree — once stateless (`-s`), once with
//! counters (every element of a `counter` set shows `counter packets 0 bytes 0`,
//! so new elements got the set's counter) — with each `elements = { … }` compared
//! as a sorted set (hash sets list in no fixed order). Comments are part of the
//! elements, so they are compared too.
//!
//! Rulesets: a synthetic one with every set shape the IR has and the edge cases
//! (ranges touching 0.0.0.0, 255.255.255.255, ::/0's ends, adjacent ranges, an
//! empty set filled and emptied), a generated policy (`fwctl::gen`, 400 rules) and
//! the reference policy `policies/carif-oref`, each edited in steps.
//!
//! Needs root, `ip` and `nft`. Under CI (CI set) a missing prerequisite fails; elsewhere
//! the tests are skipped with a message.

use fwctl::compile::ir::{BaseChain, Chain, Elem, KeyType, Ruleset, Set, SetData, Val, Verdict, TABLE};
use fwctl::compile::{compile, compile_with, Capabilities, Compiled};
use fwctl::model::Date;
use fwctl::plan::delta::{self, Delta};
use fwctl::sys::netns::{privileged_or_skip, unique_prefix, Lab};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const TODAY: Date = Date { year: 2026, month: 11, day: 23 };
const CAPS: Capabilities = Capabilities { flowtable: false };
const BIN: &str = env!("CARGO_BIN_EXE_fwctl");

// ---------------------------------------------------------------------------
// Namespaces and listings

struct Env {
    lab: Lab,
    nl: String,
    fresh: String,
}

impl Env {
    fn new(tag: &str) -> Option<Env> {
        if !privileged_or_skip() {
            return None;
        }
        let mut lab = Lab::new(&unique_prefix(tag)).expect("lab");
        let nl = lab.add_ns("nl").expect("namespace");
        let fresh = lab.add_ns("fresh").expect("namespace");
        Some(Env { lab, nl, fresh })
    }

    fn load(&self, ns: &str, rs: &Ruleset) {
        let script = fwctl::render::nft::script(rs, "netns_nl_delta");
        if let Err(e) = self.lab.run_nft(ns, &script) {
            panic!("nft -f of the ruleset failed in {ns}: {e}\n{script}");
        }
    }

    /// `nft [-s] list table inet fwctl` in `ns`.
    fn listing(&self, ns: &str, stateless: bool) -> String {
        let mut argv = vec!["nft"];
        if stateless {
            argv.push("-s");
        }
        argv.extend(["list", "table", "inet", TABLE]);
        let o = self.lab.exec(ns, &argv).unwrap_or_else(|e| panic!("nft list in {ns}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The delta written over netlink from a thread inside namespace "nl".
    fn write(&self, d: &Delta) -> Result<(), String> {
        let d = d.clone();
        let h = fwctl::sys::netns::spawn_in(&self.nl, move || Ok(fwctl::sys::nftnl::write(TABLE, &d).map(drop).map_err(|e| e.to_string()))).expect("thread");
        fwctl::sys::netns::join(h).expect("join")
    }

    /// Applies old → new over netlink (the kernel in "nl" holds `old`) and checks
    /// that "nl" now lists as "fresh" with `new` loaded whole.
    #[track_caller]
    fn step(&self, label: &str, old: &Ruleset, new: &Ruleset) {
        let d = delta::delta(old, new).unwrap_or_else(|| panic!("{label}: not an element delta: {:?}", delta::compare(old, new)));
        let (added, removed) = d.counts();
        assert!(added + removed > 0, "{label}: the edit changes no element");
        let t = Instant::now();
        self.write(&d).unwrap_or_else(|e| panic!("{label}: {e}\ndelta script:\n{}", delta::script(TABLE, &d)));
        let took = t.elapsed();
        self.lab.run_nft(&self.fresh, "flush ruleset\n").expect("flush");
        self.load(&self.fresh, new);
        for stateless in [true, false] {
            let (a, b) = (normalized(&self.listing(&self.nl, stateless)), normalized(&self.listing(&self.fresh, stateless)));
            if a != b {
                panic!("{label} (stateless {stateless}): netlink delta and nft -f differ\n{}\ndelta script:\n{}", diff(&a, &b), delta::script(TABLE, &d));
            }
        }
        eprintln!("{label}: +{added} -{removed} elements over netlink in {:.2} ms; listings agree", took.as_secs_f64() * 1000.0);
    }
}

/// A listing with every `elements = { … }` on one line, its elements sorted.
fn normalized(listing: &str) -> String {
    const OPEN: &str = "elements = {";
    let mut out = String::new();
    let mut rest = listing;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at + OPEN.len()]);
        rest = &rest[at + OPEN.len()..];
        let (mut items, mut cur, mut quoted, mut end) = (vec![], String::new(), false, rest.len());
        for (i, c) in rest.char_indices() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                ',' if !quoted => items.push(std::mem::take(&mut cur)),
                '}' if !quoted => {
                    end = i + 1;
                    break;
                }
                _ => cur.push(c),
            }
        }
        items.push(cur);
        let mut items: Vec<String> = items.iter().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|s| !s.is_empty()).collect();
        items.sort();
        out.push_str(&format!(" {} }}", items.join(", ")));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn diff(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in la.iter().filter(|l| !lb.contains(l)) {
        out.push_str(&format!("- netlink: {l}\n"));
    }
    for l in lb.iter().filter(|l| !la.contains(l)) {
        out.push_str(&format!("+ nft -f:  {l}\n"));
    }
    out
}

// ---------------------------------------------------------------------------
// A synthetic ruleset with every set shape

fn v4(a: &str) -> u32 {
    a.parse::<std::net::Ipv4Addr>().unwrap().into()
}
fn v6(a: &str) -> u128 {
    a.parse::<std::net::Ipv6Addr>().unwrap().into()
}
fn e(key: Vec<Val>, data: Option<Val>, comment: Option<&str>) -> Elem {
    Elem { key, data, comment: comment.map(str::to_string) }
}
fn set(name: &str, key: Vec<KeyType>, data: Option<SetData>, interval: bool, counter: bool, elements: Vec<Elem>) -> Set {
    Set { name: name.into(), key, data, interval, counter, comment: format!("{name} for netns_nl_delta"), elements }
}
fn mark(m: u32) -> Option<Val> {
    Some(Val::Mark(m))
}
fn goto(c: &str) -> Option<Val> {
    Some(Val::Verdict(Verdict::Goto(c.into())))
}
fn accept() -> Option<Val> {
    Some(Val::Verdict(Verdict::Accept))
}
fn drop_() -> Option<Val> {
    Some(Val::Verdict(Verdict::Drop))
}

/// Version `v` (0–3) of the synthetic ruleset; only set contents differ between versions.
fn synthetic(v: usize) -> Ruleset {
    use KeyType::*;
    let r4 = |a: &str, b: &str, m: u32| e(vec![Val::V4(v4(a), v4(b))], mark(m), None);
    let r6 = |a: &str, b: &str, m: u32| e(vec![Val::V6(v6(a), v6(b))], mark(m), None);
    let class4 = match v {
        0 | 3 => vec![
            r4("0.0.0.0", "0.255.255.255", 1),
            r4("10.0.0.0", "10.0.0.5", 2),
            r4("10.0.0.6", "10.0.0.9", 3),
            r4("10.0.0.10", "10.0.0.10", 4),
            r4("192.0.2.0", "192.0.2.127", 5),
            r4("255.255.255.0", "255.255.255.255", 6),
        ],
        1 => vec![
            r4("0.0.0.1", "0.0.0.9", 10),
            r4("10.0.0.0", "10.0.0.5", 2),
            r4("10.0.0.6", "10.0.0.9", 7),
            r4("10.0.0.11", "10.0.0.200", 8),
            r4("192.0.2.0", "192.0.2.127", 5),
            r4("255.255.255.0", "255.255.255.127", 6),
            r4("255.255.255.255", "255.255.255.255", 9),
        ],
        _ => vec![r4("0.0.0.0", "255.255.255.255", 1)],
    };
    let class6 = match v {
        0 | 3 => vec![r6("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)],
        1 => vec![r6("::", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 2), r6("8000::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 3)],
        _ => vec![r6("::", "::ff", 4), r6("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 5), r6("ffff::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 6)],
    };
    let src4 = |a: &str, b: &str| e(vec![Val::V4(v4(a), v4(b))], None, None);
    let snat = match v {
        0 | 3 => vec![],
        1 => vec![src4("192.0.2.0", "192.0.2.255"), src4("198.51.100.7", "198.51.100.7")],
        _ => vec![src4("0.0.0.0", "255.255.255.255")],
    };
    let src6 = |a: &str, b: &str| e(vec![Val::V6(v6(a), v6(b))], None, None);
    let snat6 = match v {
        0 => vec![src6("2001:db8:1::", "2001:db8:1::ffff")],
        1 => vec![],
        _ => vec![src6("::", "::"), src6("2001:db8:1::", "2001:db8:1::ffff")],
    };
    let dec = |s: u32, t: u32, p: u8, lo: u16, hi: u16, d: Option<Val>, c: Option<&str>| e(vec![Val::Mark(s), Val::Mark(t), Val::Proto(p), Val::Port(lo, hi)], d, c);
    let exact = match v {
        0 | 3 => vec![dec(1, 2, 6, 22, 22, goto("allow"), Some("admins-ssh")), dec(1, 3, 17, 53, 53, accept(), Some("dns, ntp")), dec(0x0100_0000, 2, 6, 443, 443, drop_(), None)],
        1 => vec![dec(1, 2, 6, 22, 22, goto("log_3"), Some("admins-ssh")), dec(0x0100_0000, 2, 6, 443, 443, drop_(), Some("now with a comment")), dec(4, 4, 6, 80, 80, goto("allow"), Some("r1, r2 +3"))],
        _ => vec![dec(9, 9, 17, 123, 123, accept(), None)],
    };
    let ranges = match v {
        0 | 3 => vec![dec(1, 2, 6, 1000, 2000, goto("allow"), Some("r1,r2")), dec(2, 1, 17, 0, 65535, drop_(), None)],
        1 => vec![dec(1, 2, 6, 1000, 1999, goto("allow"), Some("r1,r2")), dec(1, 2, 6, 2000, 2000, accept(), None), dec(2, 1, 17, 0, 65535, drop_(), None), dec(0xffff_ffff, 1, 6, 65000, 65535, goto("allow"), Some("top"))],
        _ => vec![dec(3, 3, 6, 0, 0, drop_(), None)],
    };
    let ic = |s: u32, t: u32, ty: u8, d: Option<Val>| e(vec![Val::Mark(s), Val::Mark(t), Val::Icmp(ty)], d, Some("ping"));
    let icmp = match v {
        0 | 3 => vec![ic(1, 2, 8, goto("allow"))],
        _ => vec![ic(1, 2, 8, drop_()), ic(2, 1, 0, goto("allow"))],
    };
    let icmp6 = match v {
        0 | 3 => vec![ic(1, 2, 128, goto("allow"))],
        _ => vec![ic(1, 2, 129, goto("allow"))],
    };
    let essential: Vec<Elem> = match v {
        0 | 3 => [3u8, 11, 12],
        _ => [3u8, 4, 12],
    }
    .iter()
    .map(|t| e(vec![Val::Icmp(*t)], None, None))
    .collect();
    let disp = |dev: &str, c: &str| e(vec![Val::Ifname(dev.into())], goto(c), None);
    let dispatch = match v {
        0 | 3 => vec![disp("eth0", "from_wan"), disp("eth1", "from_lan")],
        _ => vec![disp("eth0", "from_wan"), disp("eth1", "from_wan"), disp("wg-admins-0123", "from_lan")],
    };
    let n4 = |dev: &str, dst: &str, p: u8, port: u16, to: &str, to_port: u16, c: &str| e(vec![Val::Ifname(dev.into()), Val::V4(v4(dst), v4(dst)), Val::Proto(p), Val::Port(port, port)], Some(Val::NatV4(v4(to), to_port)), Some(c));
    let dnat4 = match v {
        0 | 3 => vec![n4("eth0", "203.0.113.10", 6, 80, "192.0.2.13", 80, "site-http"), n4("eth0", "203.0.113.10", 6, 443, "192.0.2.13", 443, "site-https")],
        _ => vec![n4("eth0", "203.0.113.10", 6, 80, "192.0.2.14", 8080, "site-http"), n4("eth0", "203.0.113.11", 17, 443, "192.0.2.13", 443, "site-quic")],
    };
    let n6 = |dev: &str, p: u8, port: u16, to: &str, to_port: u16, c: &str| e(vec![Val::Ifname(dev.into()), Val::Proto(p), Val::Port(port, port)], Some(Val::NatV6(v6(to), to_port)), Some(c));
    let dnat6 = match v {
        0 | 3 => vec![n6("eth0", 6, 443, "2001:db8:10::13", 443, "site-https")],
        _ => vec![n6("eth0", 6, 443, "2001:db8:10::14", 8443, "extranet"), n6("eth0", 6, 22, "2001:db8:10::3", 22, "ssh")],
    };
    let mm = match v {
        0 | 3 => vec![e(vec![Val::Mark(0x10)], mark(1), None), e(vec![Val::Mark(0xffff_ffff)], mark(2), None)],
        _ => vec![e(vec![Val::Mark(0)], mark(3), None), e(vec![Val::Mark(0x10)], mark(4), None)],
    };
    let ports = match v {
        0 | 3 => vec![e(vec![Val::Port(1000, 2000)], None, None), e(vec![Val::Port(65000, 65535)], None, None)],
        _ => vec![e(vec![Val::Port(0, 999)], None, None), e(vec![Val::Port(1000, 2000)], None, None), e(vec![Val::Port(65535, 65535)], None, None)],
    };
    let sets = vec![
        set("src4_0", vec![Ipv4Addr], Some(SetData::Mark), true, false, class4),
        set("src6_0", vec![Ipv6Addr], Some(SetData::Mark), true, false, class6),
        set("snat0_0_src4", vec![Ipv4Addr], None, true, false, snat),
        set("snat0_0_src6", vec![Ipv6Addr], None, true, false, snat6),
        set("allow_exact", vec![Mark, Mark, InetProto, InetService], Some(SetData::Verdict), false, true, exact),
        set("allow_exact_r", vec![Mark, Mark, InetProto, InetService], Some(SetData::Verdict), true, true, ranges),
        set("allow_exact_icmp", vec![Mark, Mark, IcmpType], Some(SetData::Verdict), false, true, icmp),
        set("allow_exact_icmpv6", vec![Mark, Mark, Icmpv6Type], Some(SetData::Verdict), false, true, icmp6),
        set("essential_icmp", vec![IcmpType], None, false, false, essential),
        set("dispatch", vec![Ifname], Some(SetData::Verdict), false, false, dispatch),
        set("dnat4", vec![Ifname, Ipv4Addr, InetProto, InetService], Some(SetData::NatV4), false, false, dnat4),
        set("dnat6_any", vec![Ifname, InetProto, InetService], Some(SetData::NatV6), false, false, dnat6),
        set("mark_ranges", vec![Mark], Some(SetData::Mark), true, false, mm),
        set("port_ranges", vec![InetService], None, true, true, ports),
    ];
    let chain = |name: &str, rule: &str| Chain { name: name.into(), base: None, comment: String::new(), rules: vec![rule.into()] };
    let chains = vec![
        chain("allow", "accept"),
        chain("log_3", "accept"),
        chain("from_wan", "drop"),
        chain("from_lan", "accept"),
        Chain {
            name: "forward".into(),
            base: Some(BaseChain { kind: "filter".into(), hook: "forward".into(), priority: "filter".into() }),
            comment: String::new(),
            rules: vec!["iifname vmap @dispatch".into(), "meta mark . ct mark . meta l4proto . th dport vmap @allow_exact_r".into()],
        },
    ];
    Ruleset { table: TABLE.into(), sets, chains, flowtable: None, notes: vec![], stats: Default::default() }
}

#[test]
fn netlink_delta_equals_nft_load_for_every_set_shape_and_edge() {
    let Some(env) = Env::new("fwn") else { return };
    // v3 is v0 again; then v1 again: an emptied set (snat0_0_src4) is refilled.
    let versions: Vec<Ruleset> = [0, 1, 2, 3, 1].into_iter().map(synthetic).collect();
    env.load(&env.nl, &versions[0]);
    for i in 1..versions.len() {
        env.step(&format!("synthetic step {i}"), &versions[i - 1], &versions[i]);
    }
    // Counter sets: the elements the deltas added carry the set's counter.
    let full = env.listing(&env.nl, false);
    let block = full.split("map allow_exact_r {").nth(1).and_then(|s| s.split("}\n").next()).expect("allow_exact_r listed");
    let n = versions.last().and_then(|v| v.set("allow_exact_r")).map(|s| s.elements.len()).unwrap();
    assert_eq!(block.matches("counter packets 0 bytes 0").count(), n, "every element has its counter:\n{block}");
}

// ---------------------------------------------------------------------------
// Policies

fn compiled(name: &str, text: &str, prev: Option<&Compiled>) -> Compiled {
    let l = fwctl::check::load_str(name, text, TODAY);
    assert!(!l.has_errors(), "{name}: {:?}", l.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
    let p = l.policy.expect("policy");
    match prev {
        Some(c) => compile_with(&p, CAPS, Some(&c.decision.alloc)).expect("compiles"),
        None => compile(&p, CAPS).expect("compiles"),
    }
}

/// `text` with `from` (exactly once) replaced by `to`.
#[track_caller]
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "edit {from:?} must occur once");
    text.replacen(from, to, 1)
}

/// `[[rules]]` block of rule `name` (up to the next block).
fn rule_block<'a>(text: &'a str, name: &str) -> &'a str {
    let at = text.find(&format!("name = \"{name}\"\n")).expect("rule");
    let start = text[..at].rfind("[[rules]]").expect("block start");
    let end = text[at..].find("\n[[rules]]").map_or(text.len(), |e| at + e);
    &text[start..end]
}

#[test]
fn netlink_delta_equals_nft_load_for_a_generated_policy() {
    let Some(env) = Env::new("fwn") else { return };
    let text = fwctl::gen::policy(&fwctl::gen::Shape::for_rules(400), 11);
    let c0 = compiled("gen.toml", &text, None);
    env.load(&env.nl, &c0.ruleset);
    // 1. Two hosts move (class maps, v4 and v6).
    let t1 = edit(&edit(&text, "\nh17 = [\"10.2.0.6\", \"fd00:2::0:6\"]", "\nh17 = [\"10.2.200.18\", \"fd00:2::c8:12\"]"), "\nh30 = [\"10.3.0.9\", \"fd00:3::0:9\"]", "\nh30 = [\"10.3.200.30\", \"fd00:3::c8:1e\"]");
    let c1 = compiled("gen.toml", &t1, Some(&c0));
    env.step("gen: two hosts moved", &c0.ruleset, &c1.ruleset);
    // 2. A rule renamed (element comments) and one's services changed (port ranges).
    let b = rule_block(&t1, "r3").to_string();
    let t2 = edit(&t1, &b, &b.replace("name = \"r3\"", "name = \"r3-renamed\""));
    let b = rule_block(&t2, "r5").to_string();
    let services = b.lines().find(|l| l.starts_with("allow = ") || l.starts_with("deny = ")).expect("services").to_string();
    let verb = services.split(' ').next().unwrap();
    let t2 = edit(&t2, &b, &b.replace(&services, &format!("{verb} = [\"svc0\", \"svc5\", \"https\"]")));
    let c2 = compiled("gen.toml", &t2, Some(&c1));
    env.step("gen: rule renamed, services changed", &c1.ruleset, &c2.ruleset);
    // 3. Back to the start.
    let c3 = compiled("gen.toml", &text, Some(&c2));
    env.step("gen: back to the original", &c2.ruleset, &c3.ruleset);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn compile_dir(dir: &Path, prev: Option<&Compiled>) -> Compiled {
    let l = fwctl::check::load(dir, TODAY);
    assert!(!l.has_errors(), "{:?}", l.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
    let p = l.policy.expect("policy");
    compile_with(&p, CAPS, prev.map(|c| &c.decision.alloc)).expect("compiles")
}

#[test]
fn netlink_delta_equals_nft_load_for_the_reference_policy() {
    let Some(env) = Env::new("fwn") else { return };
    let tmp = TempDir(std::env::temp_dir().join(format!("{}-ref", env.lab.prefix())));
    let dir = tmp.0.join("carif-oref");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/carif-oref"), &dir);
    let c0 = compile_dir(&dir, None);
    env.load(&env.nl, &c0.ruleset);
    let rewrite = |file: &str, from: &str, to: &str| {
        let p = dir.join(file);
        std::fs::write(&p, edit(&std::fs::read_to_string(&p).unwrap(), from, to)).unwrap();
    };
    // 1. Port forwards: another target port and another target host (NAT maps).
    rewrite("nat.toml", "to_port = 8443", "to_port = 9443");
    rewrite("nat.toml", "service = \"http\"\nto = \"host03\"", "service = \"http\"\nto = \"host04\"");
    let c1 = compile_dir(&dir, Some(&c0));
    env.step("reference: port forwards changed", &c0.ruleset, &c1.ruleset);
    // 2. A host moves (class maps and the NAT maps that point at it).
    rewrite("hosts.toml", "host04       = [\"192.0.2.14\", \"2001:db8:10::14\"]", "host04       = [\"192.0.2.15\", \"2001:db8:10::15\"]");
    let c2 = compile_dir(&dir, Some(&c1));
    env.step("reference: host04 moved", &c1.ruleset, &c2.ruleset);
    // 3. A rule renamed: the comments of its decision elements.
    rewrite("rules/public.toml", "name = \"public-web\"", "name = \"public-websites\"");
    let c3 = compile_dir(&dir, Some(&c2));
    env.step("reference: rule renamed", &c2.ruleset, &c3.ruleset);
}

// ---------------------------------------------------------------------------
// Atomicity and error text

#[test]
fn a_batch_with_one_bad_element_changes_nothing_and_names_it() {
    let Some(env) = Env::new("fwn") else { return };
    let (v0, v1) = (synthetic(0), synthetic(1));
    env.load(&env.nl, &v0);
    let before = (env.listing(&env.nl, true), env.listing(&env.nl, false));
    let good = delta::delta(&v0, &v1).expect("element delta");

    // One addition overlaps a range that stays (10.0.0.0-10.0.0.5): the kernel
    // refuses it, and with it the whole batch.
    let mut d = good.clone();
    let s = d.sets.iter_mut().find(|s| s.set == "src4_0").expect("src4_0 changes");
    let bad = e(vec![Val::V4(v4("10.0.0.3"), v4("10.0.0.3"))], mark(9), None);
    s.added.push(fwctl::render::nft::elem(&bad));
    s.typed.added.push(bad);
    let err = env.write(&d).expect_err("an overlapping element must be refused");
    eprintln!("overlap: {err}");
    assert!(err.contains("add element inet fwctl src4_0 { 10.0.0.3 : 0x00000009 }"), "the error must name the element:\n{err}");
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!((env.listing(&env.nl, true), env.listing(&env.nl, false)), before, "a refused batch changed the table");

    // One deletion names an element the kernel does not hold.
    let mut d = good.clone();
    let s = d.sets.iter_mut().find(|s| s.set == "allow_exact").expect("allow_exact changes");
    let ghost = e(vec![Val::Mark(7), Val::Mark(7), Val::Proto(6), Val::Port(7, 7)], accept(), None);
    s.removed.push("0x00000007 . 0x00000007 . tcp . 7".into());
    s.typed.removed.push(ghost);
    let err = env.write(&d).expect_err("deleting a missing element must be refused");
    eprintln!("missing: {err}");
    assert!(err.contains("delete element inet fwctl allow_exact { 0x00000007 . 0x00000007 . tcp . 7 }"), "{err}");
    assert_eq!((env.listing(&env.nl, true), env.listing(&env.nl, false)), before, "a refused batch changed the table");

    // A verdict that jumps to a chain that does not exist.
    let mut d = good.clone();
    let s = d.sets.iter_mut().find(|s| s.set == "dispatch").expect("dispatch changes");
    let nowhere = e(vec![Val::Ifname("eth9".into())], goto("nowhere"), None);
    s.added.push(fwctl::render::nft::elem(&nowhere));
    s.typed.added.push(nowhere);
    let err = env.write(&d).expect_err("a goto to a missing chain must be refused");
    assert!(err.contains("dispatch { \"eth9\" : goto nowhere }"), "{err}");
    assert_eq!((env.listing(&env.nl, true), env.listing(&env.nl, false)), before, "a refused batch changed the table");

    // The good batch still applies afterwards.
    env.step("after refusals: synthetic v0 -> v1", &v0, &v1);
}

// ---------------------------------------------------------------------------
// `fwctl apply` takes the netlink path

#[test]
fn fwctl_apply_writes_element_deltas_over_netlink() {
    let Some(env) = Env::new("fwn") else { return };
    let tmp = TempDir(std::env::temp_dir().join(format!("{}-apply", env.lab.prefix())));
    std::fs::create_dir_all(&tmp.0).unwrap();
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apply/base.toml")).unwrap();
    let (p1, p2) = (tmp.0.join("base.toml"), tmp.0.join("edit.toml"));
    std::fs::write(&p1, &base).unwrap();
    std::fs::write(&p2, edit(&base, "web = [\"host03\"]", "web = [\"host03\", \"host04\"]")).unwrap();
    let state = tmp.0.join("state");
    let apply = |p: &Path| {
        let o = Command::new("ip")
            .args(["netns", "exec", &env.nl, BIN, "apply"])
            .arg(p)
            .args(["--yes", "--json", "--state-dir"])
            .arg(&state)
            .env_remove("FWCTL_STATE_DIR")
            .env_remove("FWCTL_NFT")
            .output()
            .expect("spawn fwctl");
        let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
        assert!(o.status.success(), "fwctl apply {}:\n{out}\n{err}", p.display());
        let j: serde_json::Value = out.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no JSON in:\n{out}"));
        (j, err)
    };
    let (j, _) = apply(&p1);
    assert_eq!(j["how"], "full replace", "{j:#}");
    let (j, err) = apply(&p2);
    assert_eq!((&j["how"], &j["via"]), (&"element delta".into(), &"netlink".into()), "{j:#}\n{err}");
    assert!(!err.contains("warning") && j["netlink_error"].is_null(), "{err}\n{j:#}");
    // The kernel holds what the generation's full script gives.
    let gen = j["generation"].as_u64().unwrap();
    let script = std::fs::read_to_string(state.join(format!("generations/{gen:06}/ruleset.nft"))).expect("ruleset.nft of the generation");
    env.lab.run_nft(&env.fresh, &script).expect("load the generation's script");
    for stateless in [true, false] {
        let (a, b) = (normalized(&env.listing(&env.nl, stateless)), normalized(&env.listing(&env.fresh, stateless)));
        assert!(a == b, "fwctl apply's delta and nft -f differ:\n{}", diff(&a, &b));
    }
}
