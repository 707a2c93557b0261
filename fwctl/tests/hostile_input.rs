//! Hostile policy trees and policies that git cannot hold nicely (symbolic links,
//! FIFOs, devices, huge or deeply nested inputs), built in a temporary directory.
//! Each test is named after what it guards; each runs `fwctl check --json` with a
//! time limit (a hang is a failure, not a stuck suite) and checks the exact errors.

use serde_json::Value;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MINIMAL: &str = "[firewall]\nname = \"t\"\n";
const LINK_NOTE: &str = "the policy loader reads only regular files and directories under the policy root";

/// A temporary directory, removed when the test ends (also when it fails).
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let d = std::env::temp_dir().join(format!("fwctl-hostile-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create temp dir");
        Tmp(d)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run fwctl; a run that takes longer than `limit` is killed and fails the test.
fn fwctl(args: &[&str], limit: Duration) -> Run {
    let dir = Tmp::new("out");
    let (out, err) = (dir.path("stdout"), dir.path("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("FWCTL_TODAY", "2026-11-23")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run fwctl");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fwctl {args:?} did not finish within {limit:?} (it blocks or loops)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Run { code: status.code(), stdout: read(&out), stderr: read(&err) }
}

/// `fwctl check --json PATH`: exit code and the diagnostics as (code, file, message).
fn check_json(path: &Path) -> (Option<i32>, Vec<(String, Option<String>, String)>, Vec<Value>) {
    let r = fwctl(&["check", "--json", path.to_str().expect("utf-8 path")], Duration::from_secs(20));
    assert!(!r.stderr.contains("panicked"), "fwctl panicked:\n{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", r.stdout, r.stderr));
    let diags = v["diagnostics"].as_array().expect("diagnostics").clone();
    let short = diags
        .iter()
        .map(|d| (d["code"].as_str().unwrap_or("").to_string(), d["file"].as_str().map(str::to_string), d["message"].as_str().unwrap_or("").to_string()))
        .collect();
    (r.code, short, diags)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn link_refused(link: &Path, what: &str) -> (String, Option<String>, String) {
    ("symlink".into(), Some(s(link)), format!("{what}; symbolic links under the policy root are refused"))
}

#[test]
fn symlink_out_of_the_policy_root_is_refused_and_its_target_never_printed() {
    let t = Tmp::new("escape");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let secret = t.write("secret", "root:$6$SECRET-FIRST-LINE:20228:0:99999:7:::\n");
    let link = root.join("shadow.toml");
    symlink(&secret, &link).unwrap();
    let (code, diags, full) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![link_refused(&link, &format!("{} is a symbolic link to {}, outside the policy root {}", s(&link), s(&secret), s(&root)))]);
    assert_eq!(full[0]["notes"], serde_json::json!([LINK_NOTE]));
    let text = fwctl(&["check", root.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(text.code, Some(1));
    assert!(!text.stderr.contains("SECRET") && !text.stdout.contains("SECRET"), "{}", text.stderr);
    assert!(text.stderr.contains(&format!("\n --> {}\n", s(&link))), "the error is located at the link:\n{}", text.stderr);
}

#[test]
fn fifo_named_toml_is_refused_without_blocking() {
    let t = Tmp::new("fifo");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let fifo = root.join("b.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![("not-a-file".to_string(), Some(s(&fifo)), format!("{} is a FIFO, not a regular file", s(&fifo)))]);
    // The FIFO given as the policy path itself.
    let (code, diags, _) = check_json(&fifo);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![("not-a-file".to_string(), Some(s(&fifo)), format!("policy path {} is a FIFO, not a regular file or a directory", s(&fifo)))]);
}

#[test]
fn dev_zero_is_refused_as_the_policy_path_and_through_a_link() {
    let (code, diags, _) = check_json(Path::new("/dev/zero"));
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![("not-a-file".to_string(), Some("/dev/zero".into()), "policy path /dev/zero is a character device, not a regular file or a directory".into())]);
    let t = Tmp::new("zero");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let link = root.join("zero.toml");
    symlink("/dev/zero", &link).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![link_refused(&link, &format!("{} is a symbolic link to /dev/zero, outside the policy root {}", s(&link), s(&root)))]);
}

#[test]
fn two_links_to_their_own_directory_are_two_named_cycles_not_an_exponential_walk() {
    let t = Tmp::new("selflinks");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let (l1, l2) = (root.join("s1"), root.join("s2"));
    symlink(".", &l1).unwrap();
    symlink(".", &l2).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    let cycle = |l: &Path| link_refused(l, &format!("{} is a symbolic link to ., back to its ancestor directory {} (a directory cycle)", s(l), s(&root)));
    assert_eq!(diags, vec![cycle(&l1), cycle(&l2)]);
}

#[test]
fn directory_loop_is_one_named_error_not_duplicate_definitions() {
    let t = Tmp::new("dirloop");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    t.write("policy/sub/b.toml", "[hosts]\nh = \"192.0.2.1\"\n");
    let link = root.join("sub/up");
    symlink("..", &link).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![link_refused(&link, &format!("{} is a symbolic link to .., back to its ancestor directory {} (a directory cycle)", s(&link), s(&root)))]);
}

#[test]
fn symlink_inside_the_policy_root_is_refused() {
    let t = Tmp::new("inside");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    t.write("policy/hosts-2026.txt", "[hosts]\nh = \"192.0.2.1\"\n");
    t.write("policy/shared/c.toml", "[hosts]\nk = \"192.0.2.2\"\n");
    let (file_link, dir_link) = (root.join("hosts.toml"), root.join("z-shared"));
    symlink("hosts-2026.txt", &file_link).unwrap();
    symlink("shared", &dir_link).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(
        diags,
        vec![
            link_refused(&file_link, &format!("{} is a symbolic link to hosts-2026.txt inside the policy root", s(&file_link))),
            link_refused(&dir_link, &format!("{} is a symbolic link to shared inside the policy root", s(&dir_link))),
        ]
    );
}

#[test]
fn dangling_and_self_referencing_links_named_toml_are_refused() {
    let t = Tmp::new("dangling");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let (dangling, looping) = (root.join("gone.toml"), root.join("me.toml"));
    symlink("nowhere.toml", &dangling).unwrap();
    symlink("me.toml", &looping).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    let got: Vec<(String, Option<String>)> = diags.iter().map(|d| (d.0.clone(), d.1.clone())).collect();
    assert_eq!(got, vec![("symlink".to_string(), Some(s(&dangling))), ("symlink".to_string(), Some(s(&looping)))]);
    assert!(diags.iter().all(|d| d.2.contains(" that does not resolve (")), "{diags:?}");
}

#[test]
fn links_that_would_not_be_read_are_ignored_and_the_root_may_be_a_link() {
    let t = Tmp::new("ignored");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    symlink("/etc/passwd", root.join("README")).unwrap();
    symlink("/etc/passwd", root.join(".hidden.toml")).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!((code, diags), (Some(0), vec![]));
    // The operator may point the policy path itself at a directory or a file.
    let alias = t.path("current");
    symlink(&root, &alias).unwrap();
    assert_eq!(check_json(&alias).0, Some(0));
    let file_alias = t.path("one.toml");
    symlink(root.join("a.toml"), &file_alias).unwrap();
    assert_eq!(check_json(&file_alias).0, Some(0));
}

#[test]
fn policy_file_over_the_size_cap_is_refused_without_reading_it() {
    let t = Tmp::new("big");
    let root = t.path("policy");
    t.write("policy/a.toml", MINIMAL);
    let big = root.join("big.toml");
    // Sparse: 17 MiB of nothing, costs no disk.
    std::fs::File::create(&big).unwrap().set_len(17 << 20).unwrap();
    let (code, diags, _) = check_json(&root);
    assert_eq!(code, Some(1));
    assert_eq!(diags, vec![("too-large".to_string(), Some(s(&big)), format!("{} is {} bytes; policy files may hold at most {} bytes", s(&big), 17 << 20, 16 << 20))]);
}

fn chain_policy(n: usize, last: &str, with_test: bool) -> String {
    let mut p = String::from("[firewall]\nname = \"t\"\n[interfaces.lan]\ndevice = \"eth0\"\nzone = \"lan\"\n[zones.lan]\nnetworks = [\"192.0.2.0/24\"]\n[hosts]\nh = \"192.0.2.10\"\n");
    p.push_str("[[rules]]\nname = \"r\"\nfrom = \"g0\"\nto = \"self\"\nallow = [\"ssh\"]\n");
    if with_test {
        p.push_str("[[tests]]\nfrom = \"g0\"\nto = \"self\"\nservice = \"ssh\"\nexpect = \"allow\"\n");
    }
    p.push_str("[groups]\n");
    for i in 0..n {
        p.push_str(&format!("g{i} = [\"g{}\"]\n", i + 1));
    }
    p.push_str(&format!("g{n} = [{last}]\n"));
    p
}

#[test]
fn ten_thousand_nested_groups_do_not_overflow_the_stack() {
    let t = Tmp::new("deep");
    let f = t.write("deep.toml", &chain_policy(10_000, "\"h\"", true));
    let (code, diags, _) = check_json(&f);
    assert_eq!((code, diags), (Some(0), vec![]));
}

#[test]
fn a_cycle_through_ten_thousand_groups_is_one_error_naming_the_chain() {
    let t = Tmp::new("cycle");
    let f = t.write("cycle.toml", &chain_policy(10_000, "\"g0\", \"h\"", false));
    let (code, diags, full) = check_json(&f);
    assert_eq!(code, Some(1));
    assert_eq!(
        diags,
        vec![("group-cycle".to_string(), Some(s(&f)), "group `g0` contains itself: g0 → g1 → g2 → g3 → … 9994 more … → g9998 → g9999 → g10000 → g0".to_string())]
    );
    // Located at the first group of the cycle (line 16 of the generated file).
    assert_eq!((full[0]["line"].as_u64(), full[0]["col"].as_u64()), (Some(16), Some(1)));
}

#[test]
fn groups_sharing_members_along_a_chain_are_walked_once() {
    // g0 = [g1, g1], g1 = [g2, g2], ...: 2^40 paths to the host if each is walked.
    let t = Tmp::new("diamond");
    let mut p = chain_policy(0, "\"h\"", true);
    p.truncate(p.find("[groups]").unwrap());
    p.push_str("[groups]\n");
    for i in 0..40 {
        p.push_str(&format!("g{i} = [\"g{}\", \"g{}\"]\n", i + 1, i + 1));
    }
    p.push_str("g40 = [\"h\"]\n");
    let f = t.write("diamond.toml", &p);
    let (code, diags, _) = check_json(&f);
    assert_eq!((code, diags), (Some(0), vec![]));
}
