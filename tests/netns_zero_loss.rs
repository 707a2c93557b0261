//! End-to-end, in throwaway network namespaces: 20 consecutive `fwctl apply`
//! runs under live traffic lose nothing.
//!
//! Topology: client ns (eth0 203.0.113.2) —veth— fw ns (eth0 203.0.113.1,
//! eth1 198.51.100.1, forwarding) —veth— server ns (eth0 198.51.100.10).
//! The firewall's policy comes in two variants that both allow the test traffic
//! (ICMP echo and TCP 5201 from the internet zone to 198.51.100.10):
//! - A: the stream rule plus a `backup` host reachable on https;
//! - B: A plus a second backup address and a `logger` host with an ssh rule.
//!   B comes in two flavours: B1 (the new rule unlogged: only set elements
//!   change, so A↔B1 is an element delta) and B2 (the new rule logged: that
//!   adds a log chain, so A↔B2 is a full table replace).
//!
//! After an initial apply of A, while an iperf3 TCP stream and a 1 kHz ping run
//! from the client to the server, the fw applies B1, A, B2, A, B1, A, … (20
//! applies, each `--yes --json`). Asserted: every apply succeeded, both delta
//! and full replaces happened, no ping was lost, the TCP stream ended without
//! error and moved data. The counts of each kind of apply are printed.
//!
//! Needs root, `ip`, `nft`, `iperf3` and `ping` (iputils-ping). Under CI (CI set)
//! a missing prerequisite fails the test; elsewhere it is skipped with a message.
//! Every process is bounded (counts, -t, deadlines, and a kill after a timeout);
//! the namespaces and the temporary state directory go away on exit or panic.

use fwctl::sys::netns::{privileged_or_skip, unique_prefix, Lab};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CLIENT: &str = "203.0.113.2";
const FW_CLIENT: &str = "203.0.113.1";
const FW_SERVER: &str = "198.51.100.1";
const SERVER: &str = "198.51.100.10";
const APPLIES: usize = 20;
/// Pings at 1 ms intervals: ~8 s, longer than the 20 applies take.
const PINGS: u32 = 8000;
const PING_INTERVAL: &str = "0.001";
const IPERF_SECS: u32 = 12;

const POLICY_A: &str = r#"version = 1
[firewall]
name = "zero-loss"
default = "drop"
log_default = false

[interfaces.wan]
device = "eth0"
zone = "internet"
[interfaces.srv]
device = "eth1"
zone = "servers"
[zones.internet]
[zones.servers]
networks = ["198.51.100.0/24"]

[hosts]
server = ["198.51.100.10"]
backup = ["198.51.100.20"]

[services]
iperf = { tcp = [5201] }

[[rules]]
name = "stream"
from = "internet"
to = "server"
allow = ["iperf", "ping"]

[[rules]]
name = "backup-web"
from = "internet"
to = "backup"
allow = ["https"]
"#;

/// B: one more backup address, a new host and a rule to it (logged or not).
fn policy_b(logged: bool) -> String {
    let mut b = POLICY_A.replace(
        "backup = [\"198.51.100.20\"]",
        "backup = [\"198.51.100.20\", \"198.51.100.21\"]\nlogger = [\"198.51.100.30\"]",
    );
    b.push_str("\n[[rules]]\nname = \"logger-ssh\"\nfrom = \"internet\"\nto = \"logger\"\nallow = [\"ssh\"]\n");
    if logged {
        b.push_str("log = true\n");
    }
    b
}

/// A temporary directory removed on drop (on panic too).
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its own pid) if still running when dropped.
struct Bounded(Option<Child>);
impl Bounded {
    /// Waits at most `limit`, then kills; returns the output and whether it ended by itself.
    fn finish(&mut self, limit: Duration) -> (Output, bool) {
        let mut child = self.0.take().expect("child");
        let deadline = Instant::now() + limit;
        let mut ended = true;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                ended = false;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        (child.wait_with_output().expect("wait"), ended)
    }
    fn running(&mut self) -> bool {
        matches!(self.0.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}
impl Drop for Bounded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_in(ns: &str, argv: &[&str]) -> Bounded {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?} in {ns}: {e}"));
    Bounded(Some(child))
}

fn tool_present(prog: &str, arg: &str) -> bool {
    Command::new(prog).arg(arg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let num = |key: &str| -> Option<u64> {
        let at = line.find(key)?;
        line[..at].trim_end().rsplit([' ', ',']).next()?.parse().ok()
    };
    Some((num("packets transmitted")?, num("received")?))
}

struct Applied {
    ok: bool,
    how: String,
    generation: u64,
    kernel_ms: f64,
    wall: Duration,
    detail: String,
}

fn apply(fw: &str, policy: &Path, state: &Path, n: usize) -> Applied {
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", fw, env!("CARGO_BIN_EXE_fwctl"), "apply"])
        .arg(policy)
        .arg("--state-dir")
        .arg(state)
        .args(["--yes", "--json", "--reason"])
        .arg(format!("zero-loss test apply {n}"))
        .stdin(Stdio::null())
        .output()
        .expect("run fwctl apply");
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Option<serde_json::Value> = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    let get = |k: &str| json.as_ref().and_then(|j| j.get(k).cloned());
    let applied = get("applied").and_then(|v| v.as_bool()).unwrap_or(false);
    Applied {
        ok: out.status.success() && applied,
        how: get("how").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "-".into()),
        generation: get("generation").and_then(|v| v.as_u64()).unwrap_or(0),
        kernel_ms: get("kernel_ms").and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
        wall,
        detail: format!("exit {:?}\nstdout: {}\nstderr: {}", out.status.code(), stdout.trim_end(), stderr.trim_end()),
    }
}

#[test]
fn twenty_applies_under_traffic_lose_no_packet() {
    if !privileged_or_skip() {
        return;
    }
    for (prog, arg, pkg) in [("iperf3", "--version", "iperf3"), ("ping", "-V", "iputils-ping")] {
        if !tool_present(prog, arg) {
            let reason = format!("{prog} not found (apt-get install {pkg})");
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("prerequisite missing under CI: {reason}");
            }
            eprintln!("skipped: {reason}");
            return;
        }
    }
    let t0 = Instant::now();
    let prefix = unique_prefix("fwzl");
    let tmp = TempDir(std::env::temp_dir().join(format!("{prefix}-state")));
    std::fs::create_dir_all(&tmp.0).expect("temp dir");
    let state = tmp.0.join("state");
    let (pa, pb1, pb2) = (tmp.0.join("a.toml"), tmp.0.join("b1.toml"), tmp.0.join("b2.toml"));
    std::fs::write(&pa, POLICY_A).expect("write A");
    std::fs::write(&pb1, policy_b(false)).expect("write B1");
    std::fs::write(&pb2, policy_b(true)).expect("write B2");

    // The lab.
    let mut lab = Lab::new(&prefix).expect("lab");
    let client = lab.add_ns("cli").expect("ns cli");
    let fw = lab.add_ns("fw").expect("ns fw");
    let server = lab.add_ns("srv").expect("ns srv");
    lab.veth(&client, "eth0", &fw, "eth0").expect("veth client-fw");
    lab.veth(&fw, "eth1", &server, "eth0").expect("veth fw-server");
    lab.addr(&client, "eth0", &format!("{CLIENT}/24")).expect("addr");
    lab.addr(&fw, "eth0", &format!("{FW_CLIENT}/24")).expect("addr");
    lab.addr(&fw, "eth1", &format!("{FW_SERVER}/24")).expect("addr");
    lab.addr(&server, "eth0", &format!("{SERVER}/24")).expect("addr");
    for (ns, dev) in [(&client, "eth0"), (&fw, "eth0"), (&fw, "eth1"), (&server, "eth0")] {
        lab.link_up(ns, dev).expect("link up");
    }
    lab.route(&client, "default", Some(FW_CLIENT), "eth0").expect("route client");
    lab.route(&server, "default", Some(FW_SERVER), "eth0").expect("route server");
    lab.forwarding(&fw, true).expect("forwarding");
    lab.wait_ready(Duration::from_secs(5)).expect("links ready");

    // Initial policy A (a full apply into an empty table).
    let first = apply(&fw, &pa, &state, 0);
    assert!(first.ok, "initial apply of A failed:\n{}", first.detail);
    // The firewall is in the path: the test flows pass, the appliance itself is closed.
    let probe = lab.exec(&client, &["ping", "-c", "1", "-W", "2", SERVER]);
    assert!(probe.is_ok(), "ping to the server through policy A failed: {probe:?}");
    let closed = lab.exec(&client, &["ping", "-c", "1", "-W", "1", FW_CLIENT]);
    assert!(closed.is_err(), "ping to the firewall itself should be dropped by policy A");

    // Traffic: the TCP stream, then the ping run.
    let mut iperf_server = spawn_in(&server, &["iperf3", "-s", "-1", "-p", "5201"]);
    let listen_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ss = lab.exec(&server, &["ss", "-Hltn", "sport = :5201"]).expect("ss");
        if !ss.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < listen_deadline, "iperf3 server did not listen within 5 s");
        thread::sleep(Duration::from_millis(50));
    }
    let mut iperf = spawn_in(&client, &["iperf3", "-c", SERVER, "-p", "5201", "-t", &IPERF_SECS.to_string(), "-J"]);
    let mut ping = spawn_in(&client, &["ping", "-q", "-n", "-i", PING_INTERVAL, "-c", &PINGS.to_string(), "-W", "1", "-w", "30", SERVER]);
    thread::sleep(Duration::from_millis(700));
    assert!(ping.running() && iperf.running(), "traffic stopped before the applies started");

    // 20 applies: B1, A, B2, A, B1, A, …
    let loop_started = Instant::now();
    let mut results: Vec<(String, Applied)> = vec![];
    for i in 0..APPLIES {
        let (name, path) = match i % 4 {
            0 => ("B1", &pb1),
            2 => ("B2", &pb2),
            _ => ("A", &pa),
        };
        let r = apply(&fw, path, &state, i + 1);
        results.push((name.to_string(), r));
    }
    let loop_took = loop_started.elapsed();
    let ping_covered = ping.running();
    let iperf_covered = iperf.running();

    let (ping_out, ping_ended) = ping.finish(Duration::from_secs(30));
    let (iperf_out, iperf_ended) = iperf.finish(Duration::from_secs(u64::from(IPERF_SECS) + 15));
    let (_, server_ended) = iperf_server.finish(Duration::from_secs(3));

    // Report.
    let mut delta = 0;
    let mut full = 0;
    eprintln!(" #  policy  ok  gen  how            kernel ms  wall ms");
    for (i, (name, r)) in results.iter().enumerate() {
        match r.how.as_str() {
            "element delta" => delta += 1,
            "full replace" => full += 1,
            _ => {}
        }
        eprintln!("{:>2}  {name:<6}  {:<3} {:>3}  {:<14} {:>9.1} {:>8.1}", i + 1, if r.ok { "yes" } else { "NO" }, r.generation, r.how, r.kernel_ms, r.wall.as_secs_f64() * 1000.0);
    }
    let ping_text = String::from_utf8_lossy(&ping_out.stdout).into_owned();
    let counts = ping_counts(&ping_text);
    let iperf_json: Option<serde_json::Value> = serde_json::from_slice(&iperf_out.stdout).ok();
    let end = iperf_json.as_ref().and_then(|j| j.get("end"));
    let received = end.and_then(|e| e.pointer("/sum_received/bytes")).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let secs = end.and_then(|e| e.pointer("/sum_received/seconds")).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let retransmits = end.and_then(|e| e.pointer("/sum_sent/retransmits")).and_then(|v| v.as_u64());
    let iperf_error = iperf_json.as_ref().and_then(|j| j.get("error")).map(|v| v.to_string());
    eprintln!(
        "applies: {} ok of {APPLIES} ({delta} element delta, {full} full replace) in {:.2} s; ping: {:?} (transmitted, received); \
         tcp: {:.2} GB in {secs:.1} s ({:.2} Gbit/s), {retransmits:?} retransmits, error {iperf_error:?}; test took {:.1} s",
        results.iter().filter(|r| r.1.ok).count(),
        loop_took.as_secs_f64(),
        counts,
        received / 1e9,
        if secs > 0.0 { received * 8.0 / secs / 1e9 } else { 0.0 },
        t0.elapsed().as_secs_f64()
    );

    // Assertions.
    for (i, (name, r)) in results.iter().enumerate() {
        assert!(r.ok, "apply {} ({name}) failed:\n{}", i + 1, r.detail);
    }
    assert!(delta > 0 && full > 0, "expected both element deltas and full replaces, got {delta} delta / {full} full");
    assert!(ping_covered && iperf_covered, "traffic ended before the applies did (applies took {loop_took:?}): the test would prove nothing");
    assert!(ping_ended, "ping did not end by itself:\n{ping_text}");
    let (tx, rx) = counts.unwrap_or_else(|| panic!("no ping summary:\n{ping_text}\n{}", String::from_utf8_lossy(&ping_out.stderr)));
    assert_eq!(tx, u64::from(PINGS), "ping sent {tx} of {PINGS}:\n{ping_text}");
    assert_eq!(rx, tx, "{} of {tx} pings lost across {APPLIES} applies:\n{ping_text}", tx - rx);
    assert!(iperf_ended, "iperf3 client did not end by itself");
    assert!(iperf_json.is_some(), "iperf3 printed no JSON: {}", String::from_utf8_lossy(&iperf_out.stderr));
    assert!(iperf_error.is_none(), "iperf3 reported an error: {iperf_error:?}");
    assert!(iperf_out.status.success(), "iperf3 client exited with {:?}", iperf_out.status.code());
    assert!(received > 0.0, "the TCP stream moved no data");
    assert!(server_ended, "iperf3 server did not end after its one client");
    drop(lab);
    let left: Vec<String> = fwctl::sys::netns::list_namespaces().expect("list").into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
