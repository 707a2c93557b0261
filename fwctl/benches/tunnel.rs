//! VPN tunnel benchmark: prints figures and ratios measured in one run, asserts nothing.
//!
//! `cargo bench --bench tunnel` (root; needs `ip`, `iperf3`, `wg` and `wireguard-go`,
//! else prints "skipped: …" and exits 0). Two namespaces joined by one veth:
//!
//! ```text
//!   lap (the laptop) eth0 198.51.100.2 ── eth0 198.51.100.1  app (the appliance)
//! ```
//!
//! Configurations, all up at the same time (each its own tunnel, port and pool):
//! - `veth`: iperf3 over the link itself (the physical limit, no tunnel);
//! - `wggo-wggo`: wireguard-go on both ends (10.201.0.0/24), configured with `wg`;
//! - `fwctl-wggo`: fwctl's userspace tunnel on the appliance, as deployed: a policy
//!   with a `[vpn.*]`, `fwctl vpn peer add` for the laptop, `fwctl vpn up
//!   --backend userspace`; the laptop runs wireguard-go with the client
//!   configuration fwctl printed (10.200.0.0/24);
//! - `fwctl-fwctl`: fwctl on both ends, each from its own policy: the laptop's
//!   policy holds the key and address from its client configuration and the
//!   appliance as its one peer (10.202.0.0/24);
//! - `fwctl-wggo-normal`: as `fwctl-wggo`, but the tunnel runs as a supervisor
//!   would start it, with `fwctl vpn run IFACE --policy P --scheduling normal`
//!   (packet thread under the normal scheduler instead of SCHED_FIFO; 10.203.0.0/24).
//!
//! Every tunnel has MTU 1420. Per repetition and configuration, one iperf3 TCP
//! stream each way: `up` (laptop → appliance) and `down` (appliance → laptop,
//! `-R`), `FWCTL_BENCH_SECS` seconds. Repetitions are interleaved (each starts at
//! the next configuration); ratios are medians of per-repetition ratios. Per run
//! the bench also reads the CPU time (utime+stime from /proc/PID/stat) of the
//! process behind each end's UAPI socket, and the UDP receive-buffer drops
//! (RcvbufErrors) of both namespaces.
//!
//! Knobs: `FWCTL_BENCH_REPS` (5), `FWCTL_BENCH_SECS` (4), `FWCTL_BENCH_CONFIGS`
//! (comma-separated names, default all; `veth` always runs), `FWCTL_BENCH_CC`
//! (TCP congestion control for iperf3's `-C`; default: the namespace's, printed).
//! Every command is bounded by a timeout; namespaces, tunnel processes, UAPI
//! sockets and temporary files go away on exit or panic.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fwctl::sys::netns::{join, spawn_in, unique_prefix, Lab};

const FWCTL: &str = env!("CARGO_BIN_EXE_fwctl");
const APP_LINK: &str = "198.51.100.1";
const LAP_LINK: &str = "198.51.100.2";
const MTU: &str = "1420";
const IPERF_PORT: &str = "5201";

#[path = "common/harness.rs"]
mod harness;
use harness::{env_num, median, R};

fn main() {
    harness::main("tunnel", prerequisites, run);
}

fn prerequisites() -> R<()> {
    fwctl::sys::netns::prerequisites()?;
    for (prog, arg, pkg) in [
        ("iperf3", "--version", "iperf3"),
        ("wg", "--version", "wireguard-tools"),
        ("wireguard-go", "--version", "wireguard-go"),
    ] {
        let ok = Command::new(prog)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("`{prog}` not found (apt-get install {pkg})"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Processes and files outside the namespaces

fn uapi_socket(iface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
}

/// The process serving `iface`'s UAPI socket (fwctl's tunnel or wireguard-go).
fn uapi_pid(iface: &str) -> Option<i32> {
    let s = std::os::unix::net::UnixStream::connect(uapi_socket(iface)).ok()?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.pid())
}

/// What the bench starts outside its namespaces, stopped and removed on drop
/// (also on panic): tunnel processes (found by their UAPI sockets), children,
/// sockets, fwctl's per-interface log and lock files, the temporary directory.
struct Procs {
    ifaces: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        for iface in &self.ifaces {
            if let Some(pid) = uapi_pid(iface) {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while kill(pid, None).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for iface in &self.ifaces {
            let _ = std::fs::remove_file(uapi_socket(iface));
            for ext in ["log", "lock"] {
                let _ = std::fs::remove_file(format!("/run/fwctl/vpn/{iface}.{ext}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lab; `procs` is declared first so that it drops (stops the tunnels)
/// before the namespaces go.
struct Bench {
    procs: Procs,
    lab: Lab,
    app: String,
    lap: String,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `argv` in namespace `ns`; an error unless it exits 0.
fn ns_run(ns: &str, argv: &[&str]) -> R<Output> {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !o.status.success() {
        return Err(format!(
            "in {ns}: {} failed ({}): {}",
            argv.join(" "),
            o.status,
            text(&o.stderr).trim()
        ));
    }
    Ok(o)
}

/// `fwctl ARGS` in `ns`; its stdout (a client configuration holds a key: never printed).
fn fwctl(ns: &str, args: &[&str]) -> R<String> {
    let mut argv = vec![FWCTL];
    argv.extend_from_slice(args);
    ns_run(ns, &argv).map(|o| text(&o.stdout))
}

/// Runs a host command that touches no network (key generation).
fn host_run(argv: &[&str], stdin: Option<&str>) -> R<Output> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    let mut w = child.stdin.take().expect("piped");
    if let Some(s) = stdin {
        w.write_all(s.as_bytes())
            .map_err(|e| format!("{}: {e}", argv[0]))?;
    }
    drop(w);
    let o = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !o.status.success() {
        return Err(format!(
            "{} failed: {}",
            argv.join(" "),
            text(&o.stderr).trim()
        ));
    }
    Ok(o)
}

fn write_secret(path: &Path, body: &str) -> R<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// MTU, addresses and link up for a wireguard-go interface (fwctl does its own).
fn ip_link(b: &Bench, ns: &str, iface: &str, addrs: &[String]) -> R<()> {
    let e = |e: fwctl::sys::netns::Error| e.to_string();
    b.lab
        .exec(ns, &["ip", "link", "set", "dev", iface, "mtu", MTU])
        .map_err(e)?;
    for a in addrs {
        b.lab.addr(ns, iface, a).map_err(e)?;
    }
    b.lab.link_up(ns, iface).map_err(e)
}

/// Waits until a process serves `iface`'s UAPI socket.
fn wait_uapi(iface: &str, what: &str) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while uapi_pid(iface).is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not serve {}",
                uapi_socket(iface).display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts `argv` in `ns` as our child, stderr to `log` in the temporary directory.
fn spawn_child(b: &mut Bench, ns: &str, argv: &[&str], env: &[(&str, &str)], log: &str) -> R<()> {
    let log = std::fs::File::create(b.procs.dir.join(log)).map_err(|e| format!("{log}: {e}"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    b.procs.children.push(child);
    Ok(())
}

/// Starts wireguard-go for `iface` in `ns` (foreground, as our child).
fn start_wireguard_go(b: &mut Bench, ns: &str, iface: &str) -> R<()> {
    b.procs.ifaces.push(iface.to_string());
    spawn_child(
        b,
        ns,
        &["wireguard-go", iface],
        &[("WG_PROCESS_FOREGROUND", "1")],
        &format!("{iface}.log"),
    )?;
    wait_uapi(iface, "wireguard-go")
}

/// `wg setconf IFACE FILE` with `conf` (written 0600 to the temporary directory).
fn wg_setconf(b: &Bench, ns: &str, iface: &str, conf: &str) -> R<()> {
    let path = b.procs.dir.join(format!("{iface}.conf"));
    write_secret(&path, conf)?;
    ns_run(
        ns,
        &["wg", "setconf", iface, path.to_str().expect("utf-8 path")],
    )
    .map(drop)
}

fn wg_genkey() -> R<(String, String)> {
    let private = text(&host_run(&["wg", "genkey"], None)?.stdout)
        .trim()
        .to_string();
    let public = text(&host_run(&["wg", "pubkey"], Some(&private))?.stdout)
        .trim()
        .to_string();
    Ok((private, public))
}

/// A wg-quick configuration split like `wg-quick strip`: (Address values,
/// AllowedIPs values, the `wg setconf` part).
fn strip(config: &str) -> (Vec<String>, Vec<String>, String) {
    let (mut addrs, mut allowed, mut out) = (vec![], vec![], String::new());
    for line in config.lines() {
        let (k, v) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .unwrap_or(("", ""));
        let list = || v.split(',').map(|s| s.trim().to_string());
        match k {
            "Address" => addrs.extend(list()),
            "DNS" | "MTU" => {}
            _ => {
                if k == "AllowedIPs" {
                    allowed.extend(list());
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    (addrs, allowed, out)
}

fn config_value(config: &str, key: &str) -> R<String> {
    config
        .lines()
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        })
        .ok_or_else(|| format!("no {key} in the client configuration"))
}

// ---------------------------------------------------------------------------
// The configurations

/// One path to measure: iperf3's server runs in `app` on `server`; the CPU of
/// the processes behind `app_iface` and `lap_iface` is counted.
struct Config {
    name: &'static str,
    server: String,
    app_iface: Option<String>,
    lap_iface: Option<String>,
}

fn build(prefix: &str) -> R<Bench> {
    let e = |e: fwctl::sys::netns::Error| e.to_string();
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let procs = Procs {
        ifaces: vec![],
        children: vec![],
        dir,
    };
    let mut lab = Lab::new(prefix).map_err(e)?;
    let app = lab.add_ns("app").map_err(e)?;
    let lap = lab.add_ns("lap").map_err(e)?;
    let b = Bench {
        procs,
        lab,
        app,
        lap,
    };
    b.lab.veth(&b.lap, "eth0", &b.app, "eth0").map_err(e)?;
    b.lab
        .addr(&b.app, "eth0", &format!("{APP_LINK}/24"))
        .map_err(e)?;
    b.lab
        .addr(&b.lap, "eth0", &format!("{LAP_LINK}/24"))
        .map_err(e)?;
    b.lab.link_up(&b.app, "eth0").map_err(e)?;
    b.lab.link_up(&b.lap, "eth0").map_err(e)?;
    b.lab.wait_ready(Duration::from_secs(10)).map_err(e)?;
    Ok(b)
}

/// wireguard-go on both ends, keys from `wg genkey`.
fn setup_wggo(b: &mut Bench, sfx: &str) -> R<Config> {
    let (ai, li) = (format!("tga{sfx}"), format!("tgl{sfx}"));
    let (app_priv, app_pub) = wg_genkey()?;
    let (lap_priv, lap_pub) = wg_genkey()?;
    let (app, lap) = (b.app.clone(), b.lap.clone());
    start_wireguard_go(b, &app, &ai)?;
    start_wireguard_go(b, &lap, &li)?;
    wg_setconf(
        b,
        &app,
        &ai,
        &format!("[Interface]\nPrivateKey = {app_priv}\nListenPort = 51821\n\n[Peer]\nPublicKey = {lap_pub}\nAllowedIPs = 10.201.0.2/32\n"),
    )?;
    wg_setconf(
        b,
        &lap,
        &li,
        &format!("[Interface]\nPrivateKey = {lap_priv}\n\n[Peer]\nPublicKey = {app_pub}\nAllowedIPs = 10.201.0.0/24\nEndpoint = {APP_LINK}:51821\n"),
    )?;
    ip_link(b, &app, &ai, &["10.201.0.1/24".into()])?;
    ip_link(b, &lap, &li, &["10.201.0.2/24".into()])?;
    Ok(Config {
        name: "wggo-wggo",
        server: "10.201.0.1".into(),
        app_iface: Some(ai),
        lap_iface: Some(li),
    })
}

/// How the appliance's fwctl tunnel is started.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// `fwctl vpn up` (starts `fwctl vpn run` detached, default scheduling).
    Up,
    /// `fwctl vpn run IFACE --policy P --scheduling normal` as a supervisor
    /// would run it, then `fwctl vpn up` (which finds it running and syncs).
    RunNormal,
}

/// A policy with one VPN `iface` on `port`, address `addr` (CIDR), and `peers` (TOML).
fn vpn_policy(who: &str, iface: &str, port: u16, addr: &str, key: &Path, peers: &str) -> String {
    format!(
        "# tunnel bench: the {who}\n[firewall]\nname = \"tunnel-bench-{who}\"\ndefault = \"drop\"\n\n[zones.vpn]\n\n[vpn.{iface}]\nzone = \"vpn\"\nlisten_port = {port}\naddresses = [\"{addr}\"]\nprivate_key_file = \"{}\"\n{peers}",
        key.display()
    )
}

/// The appliance's side, as deployed: policy, `peer add`, tunnel up. Returns
/// the laptop's client configuration.
fn setup_fwctl_appliance(
    b: &mut Bench,
    iface: &str,
    port: u16,
    addr: &str,
    start: Start,
) -> R<String> {
    b.procs.ifaces.push(iface.to_string());
    let app = b.app.clone();
    let policy = b.procs.dir.join(format!("{iface}.toml"));
    let key = b.procs.dir.join(format!("keys/{iface}.key"));
    std::fs::write(
        &policy,
        vpn_policy("appliance", iface, port, addr, &key, ""),
    )
    .map_err(|e| format!("write {}: {e}", policy.display()))?;
    let p = policy.to_str().expect("utf-8 path");
    let endpoint = format!("{APP_LINK}:{port}");
    let client = fwctl(
        &app,
        &[
            "vpn",
            "peer",
            "add",
            "laptop",
            "--vpn",
            iface,
            "--policy",
            p,
            "--endpoint",
            &endpoint,
        ],
    )?;
    if start == Start::RunNormal {
        spawn_child(
            b,
            &app,
            &[
                FWCTL,
                "vpn",
                "run",
                iface,
                "--policy",
                p,
                "--scheduling",
                "normal",
            ],
            &[],
            &format!("{iface}.log"),
        )?;
        wait_uapi(iface, "fwctl vpn run")?;
    }
    let up = fwctl(&app, &["vpn", "up", "--backend", "userspace", p])?;
    if start == Start::Up && !up.contains("started (userspace)") {
        return Err(format!(
            "fwctl vpn up did not start a userspace tunnel:\n{up}"
        ));
    }
    Ok(client)
}

/// fwctl on the appliance, wireguard-go with fwctl's client configuration on
/// the laptop; tunnel network 10.`net`.0.0/24, interfaces `{tag}a…`/`{tag}l…`.
fn setup_fwctl_wggo(
    b: &mut Bench,
    sfx: &str,
    name: &'static str,
    (tag, port, net): (&str, u16, u8),
    start: Start,
) -> R<Config> {
    let (ai, li) = (format!("{tag}a{sfx}"), format!("{tag}l{sfx}"));
    let client = setup_fwctl_appliance(b, &ai, port, &format!("10.{net}.0.1/24"), start)?;
    let lap = b.lap.clone();
    start_wireguard_go(b, &lap, &li)?;
    let (addrs, allowed, conf) = strip(&client);
    wg_setconf(b, &lap, &li, &conf)?;
    ip_link(b, &lap, &li, &addrs)?;
    for r in allowed.iter().filter(|r| !addrs.contains(r)) {
        b.lab.route(&lap, r, None, &li).map_err(|e| e.to_string())?;
    }
    Ok(Config {
        name,
        server: format!("10.{net}.0.1"),
        app_iface: Some(ai),
        lap_iface: Some(li),
    })
}

/// fwctl on both ends: the laptop's own policy from its client configuration.
fn setup_fwctl_fwctl(b: &mut Bench, sfx: &str) -> R<Config> {
    let (ai, li) = (format!("tba{sfx}"), format!("tbl{sfx}"));
    let client = setup_fwctl_appliance(b, &ai, 51822, "10.202.0.1/24", Start::Up)?;
    b.procs.ifaces.push(li.clone());
    let lap = b.lap.clone();
    let key = b.procs.dir.join(format!("keys/{li}.key"));
    write_secret(&key, &format!("{}\n", config_value(&client, "PrivateKey")?))?;
    let (addrs, _, _) = strip(&client);
    let addr = addrs
        .iter()
        .find(|a| !a.contains(':'))
        .ok_or("no IPv4 address in the client configuration")?;
    let peer = format!(
        "\n[[vpn.{li}.peers]]\nname = \"appliance\"\npublic_key = \"{}\"\nallowed_ips = [\"10.202.0.1/32\"]\nendpoint = \"{}\"\n",
        config_value(&client, "PublicKey")?,
        config_value(&client, "Endpoint")?
    );
    let addr = format!("{}/24", addr.trim_end_matches("/32"));
    let path = b.procs.dir.join(format!("{li}.toml"));
    std::fs::write(&path, vpn_policy("laptop", &li, 51823, &addr, &key, &peer))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    let p = path.to_str().expect("utf-8 path");
    let up = fwctl(&lap, &["vpn", "up", "--backend", "userspace", p])?;
    if !up.contains("started (userspace)") {
        return Err(format!(
            "fwctl vpn up (laptop) did not start a userspace tunnel:\n{up}"
        ));
    }
    Ok(Config {
        name: "fwctl-fwctl",
        server: "10.202.0.1".into(),
        app_iface: Some(ai),
        lap_iface: Some(li),
    })
}

/// Ping `addr` from the laptop until it answers (the first handshake) or 10 s pass.
fn wait_tunnel(b: &Bench, addr: &str) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ns_run(&b.lap, &["ping", "-c", "1", "-W", "1", addr]).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{addr} does not answer through its tunnel"));
        }
    }
}

// ---------------------------------------------------------------------------
// Measurements

/// The fields of /proc/PID[/task/TID]/stat after the command name, so that
/// field n (1-based, as in proc(5)) is at index n - 3.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime+stime of a process in clock ticks (all its threads).
fn cpu_ticks(pid: i32) -> Option<u64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// "NAME (N normal, M fifo)": the process's name and its threads' scheduling policies.
fn describe_process(pid: i32) -> String {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = format!("{}/stat", t.path().display());
        let policy = stat_fields(&path).and_then(|f| f.get(38).cloned());
        let label = match policy.as_deref() {
            Some("0") => "normal",
            Some("1") => "fifo",
            Some("2") => "rr",
            Some("3") => "batch",
            Some("5") => "idle",
            _ => "other",
        };
        *counts.entry(label).or_insert(0) += 1;
    }
    let threads: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{} pid {pid} (threads: {})",
        name.trim(),
        threads.join(", ")
    )
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| text(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// UDP receive-buffer drops (RcvbufErrors) of namespace `ns` so far.
fn udp_rcvbuf_errors(ns: &str) -> R<u64> {
    let h = spawn_in(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RcvbufErrors")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0))
    })
    .map_err(|e| format!("thread in {ns}: {e}"))?;
    join(h).map_err(|e| format!("snmp in {ns}: {e}"))
}

/// Kills (SIGTERM to `timeout`, which passes it on) and reaps a helper on drop.
struct Helper(Child);
impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// laptop → appliance
    Up,
    /// appliance → laptop (`iperf3 -R`)
    Down,
}

struct Run {
    gbit: f64,
    /// Gbit received in the whole run (what the CPU time paid for).
    gbit_carried: f64,
    retransmits: u64,
    /// CPU seconds of the appliance's and the laptop's tunnel process.
    cpu_app: f64,
    cpu_lap: f64,
    /// UDP receive-buffer drops in the appliance's and the laptop's namespace.
    drops_app: u64,
    drops_lap: u64,
}

/// One iperf3 TCP stream through `c` for `secs`.
fn measure(
    b: &Bench,
    c: &Config,
    dir: Dir,
    secs: u64,
    pids: (Option<i32>, Option<i32>),
    hz: f64,
    cc: &str,
) -> R<Run> {
    let bound = (secs + 20).to_string();
    let secs_s = secs.to_string();
    let mut last = String::new();
    for _attempt in 0..3 {
        let server = Command::new("ip")
            .args([
                "netns", "exec", &b.app, "timeout", &bound, "iperf3", "-s", "-1", "-B", &c.server,
                "-p", IPERF_PORT,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 -s: {e}"))?;
        let _server = Helper(server);
        std::thread::sleep(Duration::from_millis(300));
        let drops0 = (udp_rcvbuf_errors(&b.app)?, udp_rcvbuf_errors(&b.lap)?);
        let cpu0 = (pids.0.and_then(cpu_ticks), pids.1.and_then(cpu_ticks));
        let mut argv = vec![
            "timeout",
            &bound,
            "iperf3",
            "-c",
            &c.server,
            "-p",
            IPERF_PORT,
            "-t",
            &secs_s,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        if dir == Dir::Down {
            argv.push("-R");
        }
        if !cc.is_empty() {
            argv.extend(["-C", cc]);
        }
        let out = b.lab.exec(&b.lap, &argv);
        let cpu1 = (pids.0.and_then(cpu_ticks), pids.1.and_then(cpu_ticks));
        let drops1 = (udp_rcvbuf_errors(&b.app)?, udp_rcvbuf_errors(&b.lap)?);
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / hz,
            _ => 0.0,
        };
        match out {
            Ok(o) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&o.stdout).map_err(|e| format!("iperf3 -J: {e}"))?;
                let sum = &v["end"]["sum_received"];
                if let (Some(bps), Some(bytes)) =
                    (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64())
                {
                    return Ok(Run {
                        gbit: bps / 1e9,
                        gbit_carried: bytes * 8.0 / 1e9,
                        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
                        cpu_app: delta(cpu0.0, cpu1.0),
                        cpu_lap: delta(cpu0.1, cpu1.1),
                        drops_app: drops1.0.saturating_sub(drops0.0),
                        drops_lap: drops1.1.saturating_sub(drops0.1),
                    });
                }
                last = format!("iperf3 output without end.sum_received: {}", v["error"]);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("iperf3 through {} failed 3 times: {last}", c.name))
}


// ---------------------------------------------------------------------------
// The run

fn run() -> R<()> {
    let reps = env_num("FWCTL_BENCH_REPS", 5).clamp(1, 15) as usize;
    let secs = env_num("FWCTL_BENCH_SECS", 4).clamp(1, 20);
    let cc = std::env::var("FWCTL_BENCH_CC").unwrap_or_default();
    let wanted: Option<Vec<String>> = std::env::var("FWCTL_BENCH_CONFIGS").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let want = |n: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == n));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let load_start = loadavg();
    let started = Instant::now();
    let hz = clock_ticks();

    let prefix = unique_prefix("fwtb");
    let sfx = prefix[4..].to_string();
    let mut b = build(&prefix)?;
    let mut configs = vec![Config {
        name: "veth",
        server: APP_LINK.into(),
        app_iface: None,
        lap_iface: None,
    }];
    if want("wggo-wggo") {
        configs.push(setup_wggo(&mut b, &sfx)?);
    }
    if want("fwctl-wggo") {
        configs.push(setup_fwctl_wggo(
            &mut b,
            &sfx,
            "fwctl-wggo",
            ("tf", 51820, 200),
            Start::Up,
        )?);
    }
    if want("fwctl-fwctl") {
        configs.push(setup_fwctl_fwctl(&mut b, &sfx)?);
    }
    if want("fwctl-wggo-normal") {
        configs.push(setup_fwctl_wggo(
            &mut b,
            &sfx,
            "fwctl-wggo-normal",
            ("tn", 51824, 203),
            Start::RunNormal,
        )?);
    }
    for c in configs.iter().skip(1) {
        wait_tunnel(&b, &c.server)?;
    }
    let pids: Vec<(Option<i32>, Option<i32>)> = configs
        .iter()
        .map(|c| {
            (
                c.app_iface.as_deref().and_then(uapi_pid),
                c.lap_iface.as_deref().and_then(uapi_pid),
            )
        })
        .collect();
    let index = |n: &str| configs.iter().position(|c| c.name == n);
    let wggo = index("wggo-wggo");
    let wgv = Command::new("wireguard-go")
        .arg("--version")
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default();
    let default_cc = ns_run(&b.lap, &["sysctl", "-n", "net.ipv4.tcp_congestion_control"])
        .map(|o| text(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "tunnel benchmark: lab {prefix} (lap ns —veth— app ns), {cpus} CPUs; {}; fwctl's tunnel is boringtun 0.7.1 (`fwctl vpn run`)",
        wgv.lines().next().unwrap_or("wireguard-go ?").trim()
    );
    println!(
        "{reps} reps interleaved, iperf3 TCP 1 stream, {secs} s each way, congestion control {}; tunnels MTU {MTU}; CPU = utime+stime of each end's tunnel process",
        if cc.is_empty() { format!("{default_cc} (namespace default)") } else { cc.clone() }
    );
    for (c, (a, l)) in configs.iter().zip(&pids).skip(1) {
        let d = |p: &Option<i32>| p.map_or("?".to_string(), describe_process);
        println!("  {:<17} appliance: {}; laptop: {}", c.name, d(a), d(l));
    }

    // Warm-up, not counted: handshakes done, neighbours resolved, clocks settled.
    for (c, p) in configs.iter().zip(&pids) {
        measure(&b, c, Dir::Up, 1, *p, hz, &cc)?;
    }

    let dirs = [Dir::Up, Dir::Down];
    // results[config][dir][rep]
    let mut results: Vec<Vec<Vec<Run>>> = configs.iter().map(|_| vec![vec![], vec![]]).collect();
    for rep in 0..reps {
        for k in 0..configs.len() {
            let i = (rep + k) % configs.len();
            for (d, dir) in dirs.iter().enumerate() {
                let r = measure(&b, &configs[i], *dir, secs, pids[i], hz, &cc)?;
                eprintln!(
                    "  rep {} {:<17} {:<4} {:7.3} Gbit/s  retransmits {:5}  cpu app {:5.2} s lap {:5.2} s  udp rcvbuf drops app {} lap {}",
                    rep + 1,
                    configs[i].name,
                    if *dir == Dir::Up { "up" } else { "down" },
                    r.gbit,
                    r.retransmits,
                    r.cpu_app,
                    r.cpu_lap,
                    r.drops_app,
                    r.drops_lap
                );
                results[i][d].push(r);
            }
        }
    }
    drop(b);
    let left: Vec<String> = fwctl::sys::netns::list_namespaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();

    // Per-rep ratio of config `i` to config `j` in direction `d`, then the median.
    let ratio = |i: usize, j: usize, d: usize| {
        let v: Vec<f64> = results[i][d]
            .iter()
            .zip(&results[j][d])
            .map(|(a, b)| a.gbit / b.gbit)
            .collect();
        median(&v)
    };
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "{:<17} {:<4} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9}",
        "config",
        "dir",
        "Gbit/s",
        "vs_wggo",
        "vs_veth",
        "retrans",
        "app_cpu/Gb",
        "lap_cpu/Gb",
        "drops_app",
        "drops_lap"
    );
    for (i, c) in configs.iter().enumerate() {
        for (d, dir) in dirs.iter().enumerate() {
            let runs = &results[i][d];
            let vs_wggo = wggo.map_or("-".to_string(), |w| format!("{:.3}", ratio(i, w, d)));
            let cpu = |f: fn(&Run) -> f64, has: bool| {
                if has {
                    let v: Vec<f64> = runs.iter().map(|r| f(r) / r.gbit_carried).collect();
                    format!("{:.2}", median(&v))
                } else {
                    "-".to_string()
                }
            };
            println!(
                "{:<17} {:<4} {:>8.3} {:>8} {:>8.3} {:>8.0} {:>10} {:>10} {:>9.0} {:>9.0}",
                c.name,
                if *dir == Dir::Up { "up" } else { "down" },
                med(runs, |r| r.gbit),
                vs_wggo,
                ratio(i, 0, d),
                med(runs, |r| r.retransmits as f64),
                cpu(|r| r.cpu_app, c.app_iface.is_some()),
                cpu(|r| r.cpu_lap, c.lap_iface.is_some()),
                med(runs, |r| r.drops_app as f64),
                med(runs, |r| r.drops_lap as f64)
            );
        }
    }
    println!("(Gbit/s, retrans, drops: medians over reps; ratios: medians of per-rep ratios; *_cpu/Gb: CPU seconds of that end's tunnel process per Gbit carried; drops: UDP receive-buffer overflows in that namespace; up = laptop -> appliance, down = appliance -> laptop)");
    if let (Some(rt), Some(normal)) = (index("fwctl-wggo"), index("fwctl-wggo-normal")) {
        println!(
            "fwctl packet thread realtime vs normal scheduling (fwctl-wggo / fwctl-wggo-normal): up {:.3}, down {:.3}",
            ratio(rt, normal, 0),
            ratio(rt, normal, 1)
        );
    }
    println!();
    for (i, c) in configs.iter().enumerate() {
        let spread = |d: usize| {
            let v: Vec<f64> = results[i][d].iter().map(|r| r.gbit).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.3}-{hi:.3}")
        };
        println!(
            "  {:<17} range over reps: up {} Gbit/s, down {} Gbit/s",
            c.name,
            spread(0),
            spread(1)
        );
    }
    println!(
        "host load average (1/5/15 min): at start {load_start}, at end {}; both tunnel ends and iperf3 share the {cpus} CPUs",
        loadavg()
    );
    println!(
        "lab {prefix} removed: {}; total {:.0} s",
        if left.is_empty() {
            "yes".to_string()
        } else {
            format!("NO, left {left:?}")
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
