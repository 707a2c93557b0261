//! End-to-end WireGuard: `fwctl vpn up / peer add / status / down` run as the
//! real binary in throwaway network namespaces, with a userspace tunnel
//! (boringtun, `fwctl vpn run`) on the firewall side and wireguard-go on the
//! laptops, configured from the client configurations `peer add` printed.
//!
//! Topology (documentation addresses on the links, a 10.200.0.0/24 and
//! fd00:200::/64 pool inside the tunnel):
//!
//! ```text
//!   la (alice, wireguard-go) a0 198.51.100.2 ── fa 198.51.100.1  fw (fwctl, boringtun)
//!   lb (bob,   wireguard-go) b0 203.0.113.2  ── fb 203.0.113.1
//! ```
//!
//! UAPI sockets (/var/run/wireguard/NAME.sock) are host-wide, so every tunnel
//! interface is named with the test's unique suffix. Cleanup (namespaces, the
//! tunnel process, wireguard-go, sockets, temporary files) runs on success and
//! on failure. Needs root, `ip`, `nft`, `wg` (wireguard-tools) and
//! `wireguard-go`; under CI (CI set) a missing one fails, elsewhere the tests
//! are skipped with a message.
//!
//! `no_key_material_in_any_output` guards the rule that the appliance's private
//! key and preshared keys never appear in what fwctl prints or logs (only
//! `keygen`'s stdout and a new peer's own client configuration hold keys).
//!
//! Tunnels through `fwctl plan / apply / rollback` (state directory in the
//! test's temporary directory): `apply_brings_tunnels_up_enforces_their_zone_
//! and_revokes_a_peer` adds a server namespace behind the firewall (fs
//! 192.0.2.1 ── s0 192.0.2.10) and proves with real packets that the tunnel
//! zone's rules hold (ssh passes, http is dropped), that removing alice from
//! the policy and applying cuts her off while bob's session goes on (same
//! handshake, counters counting, same tunnel process), and that a rollback
//! brings her back. `failed_tunnel_sync_and_confirm_expiry_restore_the_
//! previous_peers` checks that apply refuses a tunnel change it cannot plan,
//! that an apply whose tunnels fail during the sync is undone (ruleset and
//! peers), that an expired confirm window restores the peers, an in-place
//! rotation of the appliance's key, and that a tunnel removed from the policy
//! is stopped.

use fwctl::sys::netns::{privileged_or_skip, spawn_in, unique_prefix, Lab};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fwctl");

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

fn run(ns: &str, argv: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(argv).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ip netns exec");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().expect("wait");
    Out { code: o.status.code(), stdout: String::from_utf8_lossy(&o.stdout).into_owned(), stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
}

/// Runs fwctl and records stdout (unless `secret_stdout`: a client config) and
/// stderr in the transcript that is searched for keys.
struct Fwctl<'a> {
    ns: &'a str,
    transcript: Vec<String>,
}

impl Fwctl<'_> {
    fn run(&mut self, args: &[&str]) -> Out {
        self.run_full(args, None, false)
    }
    fn run_full(&mut self, args: &[&str], stdin: Option<&str>, secret_stdout: bool) -> Out {
        let mut argv = vec![BIN];
        argv.extend_from_slice(args);
        let o = run(self.ns, &argv, stdin);
        if !secret_stdout {
            self.transcript.push(format!("$ fwctl {}\n{}", args.join(" "), o.stdout));
        }
        self.transcript.push(format!("$ fwctl {} (stderr)\n{}", args.join(" "), o.stderr));
        o
    }
    fn ok(&mut self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, Some(0), "fwctl {}:\n{o}", args.join(" "));
        o
    }
}

/// Everything a test leaves outside its namespaces, removed on drop (also on
/// panic): the tunnel process, wireguard-go, sockets, logs, temporary files.
struct Cleanup {
    ifaces: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in &self.ifaces {
            let sock = PathBuf::from(format!("/var/run/wireguard/{i}.sock"));
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                if let Ok(cred) = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials) {
                    let pid = nix::unistd::Pid::from_raw(cred.pid());
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = std::fs::remove_file(&sock);
            for ext in ["log", "lock"] {
                let _ = std::fs::remove_file(format!("/run/fwctl/vpn/{i}.{ext}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tools_or_skip(tools: &[(&str, &str)]) -> bool {
    for (prog, arg) in tools {
        let ok = Command::new(prog).arg(arg).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !ok {
            let reason = format!("`{prog}` is not installed (Debian packages wireguard-tools, wireguard-go)");
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("prerequisite missing under CI: {reason}");
            }
            let _ = writeln!(std::io::stderr(), "skipped: {reason}");
            return false;
        }
    }
    true
}

fn policy_text(iface: &str, key: &Path) -> String {
    format!(
        r#"# VPN end-to-end test policy
[firewall]
name = "vpn-e2e"
default = "drop"

[zones.admins]

[zones.lan]
networks = ["192.0.2.0/24"]

# The tunnel; peers are added by `fwctl vpn peer add`.
[vpn.{iface}]
zone = "admins"
listen_port = 51820
addresses = ["10.200.0.1/24", "fd00:200::1/64"]
private_key_file = "{}"

[[rules]]
name = "admins-to-lan"
from = "admins"
to = "lan"
allow = ["ssh", "ping"]
"#,
        key.display()
    )
}

/// The wg-quick config's [Interface] Address values, and the config with the
/// wg-quick-only lines removed (what `wg setconf` takes, like `wg-quick strip`).
fn strip(config: &str) -> (Vec<String>, Vec<String>, String) {
    let mut addrs = vec![];
    let mut allowed = vec![];
    let mut out = String::new();
    for line in config.lines() {
        let (k, v) = line.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or(("", ""));
        match k {
            "Address" => addrs.extend(v.split(',').map(|s| s.trim().to_string())),
            "DNS" | "MTU" => {}
            _ => {
                if k == "AllowedIPs" {
                    allowed.extend(v.split(',').map(|s| s.trim().to_string()));
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    (addrs, allowed, out)
}

/// Start wireguard-go for `iface` in `ns` and configure it like wg-quick would.
fn laptop(lab: &Lab, ns: &str, iface: &str, config: &str, dir: &Path, children: &mut Vec<Child>) {
    let log = std::fs::File::create(dir.join(format!("{iface}.log"))).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", iface])
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("wireguard-go");
    children.push(child);
    let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "wireguard-go did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (addrs, allowed, wgconf) = strip(config);
    let conf = dir.join(format!("{iface}.conf"));
    std::fs::write(&conf, wgconf).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    lab.exec(ns, &["wg", "setconf", iface, conf.to_str().unwrap()]).expect("wg setconf");
    for a in &addrs {
        lab.addr(ns, iface, a).expect("laptop address");
    }
    lab.link_up(ns, iface).expect("laptop link up");
    for r in &allowed {
        // Routes as wg-quick adds them (those the address prefixes do not cover).
        if !addrs.contains(r) {
            lab.route(ns, r, None, iface).expect("laptop route");
        }
    }
}

/// Ping until it answers (handshakes may need a retry) or `limit` passes.
fn ping_within(ns: &str, addr: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let o = run(ns, &["ping", "-c", "1", "-W", "1", addr], None);
        if o.code == Some(0) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// One TCP round trip from `client_ns` to `server_ns` at `addr`.
fn tcp_echo(server_ns: &str, client_ns: &str, addr: &str) {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = spawn_in(server_ns, move || {
        let l = TcpListener::bind(SocketAddr::new(addr, 0))?;
        tx.send(l.local_addr()?.port()).unwrap();
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut s, _) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n])?;
        Ok(())
    })
    .unwrap();
    let port = rx.recv_timeout(Duration::from_secs(5)).expect("server port");
    let client = spawn_in(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"hello through the tunnel")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
    .unwrap();
    let echoed = fwctl::sys::netns::join(client).expect("tcp client");
    fwctl::sys::netns::join(server).expect("tcp server");
    assert_eq!(echoed, b"hello through the tunnel");
}

fn peer_json<'a>(status: &'a Value, key: &str) -> Option<&'a Value> {
    status["interfaces"][0]["peers"].as_array()?.iter().find(|p| p["public_key"] == key && p["in_tunnel"] == true)
}

fn config_value(config: &str, key: &str) -> String {
    config.lines().find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string())).unwrap_or_else(|| panic!("{key} in\n{config}"))
}

/// The public key for a private key (with `wg pubkey`, independent of fwctl).
fn wg_pubkey(private: &str) -> String {
    let mut c = Command::new("wg").arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(private.as_bytes()).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap().trim().to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The base64 and hex forms of the key in `path`.
fn key_forms(path: &Path) -> Vec<String> {
    let b64 = std::fs::read_to_string(path).unwrap().trim().to_string();
    let bytes = fwctl::util::base64_decode(&b64).unwrap();
    assert_eq!(bytes.len(), 32);
    vec![b64, hex(&bytes)]
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "a key appears in {what}:\n{text}");
    }
}

/// The test topology: a firewall namespace `fw` with two laptops (`la` on
/// 198.51.100.0/24, `lb` on 203.0.113.0/24) and, with `server`, a server
/// namespace `srv` (192.0.2.10, routed back to the tunnel network through fw).
/// Interface names are unique per run.
struct Rig {
    started: Instant,
    wf: String,
    wa: String,
    wb: String,
    dir: PathBuf,
    lab: Lab,
    cleanup: Cleanup,
    fw: String,
    la: String,
    lb: String,
    srv: Option<String>,
}

fn rig(server: bool) -> Rig {
    let started = Instant::now();
    let prefix = unique_prefix("fwv");
    let sfx = &prefix[3..];
    let (wf, wa, wb) = (format!("wf{sfx}"), format!("wa{sfx}"), format!("wb{sfx}"));
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&prefix).expect("lab");
    let cleanup = Cleanup { ifaces: vec![wf.clone(), wa.clone(), wb.clone()], children: vec![], dir: dir.clone() };
    let fw = lab.add_ns("fw").unwrap();
    let la = lab.add_ns("la").unwrap();
    let lb = lab.add_ns("lb").unwrap();
    lab.veth(&fw, "fa", &la, "a0").unwrap();
    lab.veth(&fw, "fb", &lb, "b0").unwrap();
    let mut links = vec![(fw.clone(), "fa", "198.51.100.1/24"), (la.clone(), "a0", "198.51.100.2/24"), (fw.clone(), "fb", "203.0.113.1/24"), (lb.clone(), "b0", "203.0.113.2/24")];
    let srv = server.then(|| {
        let srv = lab.add_ns("srv").unwrap();
        lab.veth(&fw, "fs", &srv, "s0").unwrap();
        links.extend([(fw.clone(), "fs", "192.0.2.1/24"), (srv.clone(), "s0", "192.0.2.10/24")]);
        srv
    });
    for (ns, dev, a) in &links {
        lab.addr(ns, dev, a).unwrap();
        lab.link_up(ns, dev).unwrap();
    }
    if let Some(srv) = &srv {
        lab.route(srv, "10.200.0.0/24", Some("192.0.2.1"), "s0").unwrap();
        lab.forwarding(&fw, true).unwrap();
    }
    lab.wait_ready(Duration::from_secs(5)).unwrap();
    Rig { started, wf, wa, wb, dir, lab, cleanup, fw, la, lb, srv }
}

#[test]
fn tunnel_carries_traffic_and_peer_removal_spares_other_sessions() {
    if !privileged_or_skip() || !tools_or_skip(&[("wg", "--version"), ("wireguard-go", "--version")]) {
        return;
    }
    let Rig { started, wf, wa, wb, dir, lab, mut cleanup, fw, la, lb, .. } = rig(false);

    let key = dir.join("keys/wf.key");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text(&wf, &key)).unwrap();
    let p = policy.to_str().unwrap();
    let mut fwctl = Fwctl { ns: &fw, transcript: vec![] };

    // Up from nothing: the key file is made 0600, the tunnel process started.
    let o = fwctl.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains(&format!("{wf}: started (userspace)")) && o.stdout.contains("created private key file"), "{o}");
    assert!(o.stdout.contains("mtu 1500 → 1420") && o.stdout.contains("add address 10.200.0.1/24"), "{o}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Two peers, from `peer add`'s client configurations. Bob (with a
    // preshared key) comes first: a preshared key leaking into the next peer
    // of the same UAPI request (a boringtun quirk) would break alice.
    let cb = fwctl.run_full(&["vpn", "peer", "add", "bob", "--vpn", &wf, "--policy", p, "--endpoint", "203.0.113.1:51820", "--psk"], None, true);
    assert_eq!(cb.code, Some(0), "{cb}");
    let ca = fwctl.run_full(&["vpn", "peer", "add", "alice", "--vpn", &wf, "--policy", p, "--endpoint", "198.51.100.1:51820"], None, true);
    assert_eq!(ca.code, Some(0), "{ca}");
    let (alice_conf, bob_conf) = (ca.stdout.clone(), cb.stdout.clone());
    assert!(bob_conf.contains("Address = 10.200.0.2/32, fd00:200::2/128") && bob_conf.contains("PresharedKey = "), "{bob_conf}");
    assert!(alice_conf.contains("Address = 10.200.0.3/32, fd00:200::3/128") && !alice_conf.contains("PresharedKey"), "{alice_conf}");
    let server_pub = wg_pubkey(&key_forms(&key)[0]);
    assert_eq!(config_value(&alice_conf, "PublicKey"), server_pub);
    let alice_pub = wg_pubkey(&config_value(&alice_conf, "PrivateKey"));
    let bob_pub = wg_pubkey(&config_value(&bob_conf, "PrivateKey"));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.starts_with("# VPN end-to-end test policy\n") && text.contains("# The tunnel; peers are added by `fwctl vpn peer add`."), "comments kept:\n{text}");
    assert!(text.contains(&format!("public_key = \"{alice_pub}\"")) && text.contains(&format!("public_key = \"{bob_pub}\"")), "{text}");
    let psk_file = dir.join(format!("keys/{wf}-bob.psk"));
    assert!(text.contains(&format!("preshared_key_file = \"{}\"", psk_file.display())), "{text}");
    assert_eq!(std::fs::metadata(&psk_file).unwrap().permissions().mode() & 0o777, 0o600);

    let o = fwctl.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains(&format!("add peer {wf}.alice")) && o.stdout.contains(&format!("add peer {wf}.bob")), "{o}");
    assert!(o.stdout.find(&format!("add peer {wf}.bob")) < o.stdout.find(&format!("add peer {wf}.alice")), "bob is added first:\n{o}");
    let o = fwctl.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains("no changes"), "idempotent:\n{o}");

    laptop(&lab, &la, &wa, &alice_conf, &dir, &mut cleanup.children);
    laptop(&lab, &lb, &wb, &bob_conf, &dir, &mut cleanup.children);

    // Traffic: ping (v4, v6) and TCP, both laptops.
    assert!(ping_within(&la, "10.200.0.1", Duration::from_secs(10)), "alice cannot reach the appliance through the tunnel");
    assert!(ping_within(&lb, "10.200.0.1", Duration::from_secs(10)), "bob cannot reach the appliance through the tunnel");
    assert!(ping_within(&la, "fd00:200::1", Duration::from_secs(5)), "alice: no IPv6 through the tunnel");
    tcp_echo(&fw, &la, "10.200.0.1");
    tcp_echo(&fw, &lb, "10.200.0.1");

    // `wg show` (wireguard-tools) sees the interface and both peers.
    let show = lab.exec(&fw, &["wg", "show", &wf]).expect("wg show");
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains(&format!("interface: {wf}")) && show.contains(&format!("peer: {alice_pub}")) && show.contains(&format!("peer: {bob_pub}")), "{show}");

    let st = fwctl.ok(&["vpn", "status", p]);
    assert!(st.stdout.contains(&format!("peer: {wf}.alice")) && st.stdout.contains("latest handshake: ") && st.stdout.contains("mtu: 1420"), "{st}");
    let status = |f: &mut Fwctl| -> Value { serde_json::from_str(&f.ok(&["vpn", "status", "--json", p]).stdout).expect("status json") };
    let before = status(&mut fwctl);
    let bob_before = peer_json(&before, &bob_pub).expect("bob in status").clone();
    assert!(bob_before["rx_bytes"].as_u64().unwrap() > 0 && bob_before["latest_handshake_unix"].is_u64(), "{bob_before}");
    let hs = |ns: &str, iface: &str| -> String {
        let o = run(ns, &["wg", "show", iface, "latest-handshakes"], None);
        o.stdout.trim().to_string()
    };
    let bob_side_hs = hs(&lb, &wb);
    assert!(!bob_side_hs.ends_with("\t0"), "bob has a handshake: {bob_side_hs}");

    // Remove alice from the policy (as an admin would edit it) and re-run up.
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&policy).unwrap().parse().unwrap();
    doc["vpn"][&wf]["peers"].as_array_of_tables_mut().unwrap().retain(|t| t.get("name").and_then(|n| n.as_str()) != Some("alice"));
    std::fs::write(&policy, doc.to_string()).unwrap();
    let o = fwctl.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains(&format!("remove peer {alice_pub}")), "{o}");
    assert!(!o.stdout.contains(&bob_pub), "bob must not be touched:\n{o}");

    // Alice is cut off; bob's session goes on: same handshake on his side, and
    // the appliance's counters for him keep counting (a re-created peer would
    // start from zero).
    let o = run(&la, &["ping", "-c", "2", "-W", "1", "10.200.0.1"], None);
    assert_ne!(o.code, Some(0), "alice still gets through:\n{o}");
    assert!(ping_within(&lb, "10.200.0.1", Duration::from_secs(2)), "bob lost the tunnel");
    tcp_echo(&fw, &lb, "10.200.0.1");
    let after = status(&mut fwctl);
    assert!(peer_json(&after, &alice_pub).is_none(), "alice still in the tunnel: {after}");
    let bob_after = peer_json(&after, &bob_pub).expect("bob in status");
    assert!(bob_after["rx_bytes"].as_u64() > bob_before["rx_bytes"].as_u64(), "bob's counters were reset: {bob_before} → {bob_after}");
    assert!(bob_after["tx_bytes"].as_u64() > bob_before["tx_bytes"].as_u64(), "{bob_before} → {bob_after}");
    assert_eq!(hs(&lb, &wb), bob_side_hs, "bob had to handshake again");

    // Down stops the tunnel process.
    let o = fwctl.ok(&["vpn", "down", p]);
    assert!(o.stdout.contains("stopped tunnel process"), "{o}");
    assert!(std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{wf}.sock")).is_err());

    // No appliance key or preshared key in anything fwctl printed or logged.
    let mut secrets = key_forms(&key);
    secrets.extend(key_forms(&psk_file));
    let log = std::fs::read_to_string(format!("/run/fwctl/vpn/{wf}.log")).unwrap_or_default();
    assert_no_secret("the tunnel log", &log, &secrets);
    assert_no_secret("the policy", &std::fs::read_to_string(&policy).unwrap(), &secrets);
    assert_no_secret("alice's client config", &alice_conf, &secrets[..2]);
    assert_no_secret("bob's client config", &bob_conf, &secrets[..2]);
    for t in &fwctl.transcript {
        assert_no_secret("fwctl output", t, &secrets);
    }
    drop(cleanup);
    drop(lab);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn no_key_material_in_any_output() {
    if !privileged_or_skip() || !tools_or_skip(&[("wg", "--version")]) {
        return;
    }
    let prefix = unique_prefix("fwk");
    let wf = format!("wk{}", &prefix[3..]);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&prefix).expect("lab");
    let cleanup = Cleanup { ifaces: vec![wf.clone()], children: vec![], dir: dir.clone() };
    let fw = lab.add_ns("fw").unwrap();
    let key = dir.join("keys/wk.key");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text(&wf, &key)).unwrap();
    let p = policy.to_str().unwrap();
    let mut f = Fwctl { ns: &fw, transcript: vec![] };

    f.ok(&["vpn", "up", p]);
    let secrets_so_far = key_forms(&key);
    // Peers with and without a preshared key; the tunnel takes them.
    let a = f.run_full(&["vpn", "peer", "add", "a", "--vpn", &wf, "--policy", p, "--psk", "--qr"], None, true);
    assert_eq!(a.code, Some(0), "{a}");
    let b = f.run_full(&["vpn", "peer", "add", "b", "--vpn", &wf, "--policy", p, "--address", "10.200.0.77/32"], None, true);
    assert_eq!(b.code, Some(0), "{b}");
    assert!(b.stdout.contains("Address = 10.200.0.77/32\n"), "{b}");
    let psk = dir.join(format!("keys/{wf}-a.psk"));
    let mut secrets = secrets_so_far;
    secrets.extend(key_forms(&psk));
    // The peer's configs hold their own keys, never the appliance's.
    assert_no_secret("peer a's config", &a.stdout, &secrets[..2]);
    assert_no_secret("peer b's config", &b.stdout, &secrets);
    f.ok(&["vpn", "up", p]);
    f.ok(&["vpn", "up", "--json", p]);
    f.ok(&["vpn", "status", p]);
    f.ok(&["vpn", "status", "--json", p]);
    f.ok(&["vpn", "status", "--iface", &wf]);
    // `pubkey` prints only the public half.
    let pk = f.run_full(&["vpn", "pubkey"], Some(&secrets[0]), false);
    assert_eq!(pk.stdout.trim(), wg_pubkey(&secrets[0]), "{pk}");
    // Error paths do not echo what they refused.
    let mut bent = secrets[0].clone();
    bent.replace_range(10..11, if &bent[10..11] == "A" { "B" } else { "A" });
    bent.push('!');
    let e = f.run_full(&["vpn", "pubkey"], Some(&bent), false);
    assert_ne!(e.code, Some(0));
    assert!(!e.stderr.contains(&bent[..40]), "{e}");
    let e = f.run(&["vpn", "peer", "add", "a", "--vpn", &wf, "--policy", p]);
    assert!(e.code != Some(0) && e.stderr.contains("already has a peer"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = f.run(&["vpn", "up", p]);
    assert!(e.code != Some(0) && e.stderr.contains("chmod 600"), "a group/world-readable key is refused:\n{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o604)).unwrap();
    let e = f.run(&["vpn", "up", p]);
    assert!(e.code != Some(0) && e.stderr.contains(psk.to_str().unwrap()), "{e}");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, "this is not a key\n").unwrap();
    let e = f.run(&["vpn", "up", p]);
    assert!(e.code != Some(0) && e.stderr.contains("does not hold a WireGuard key") && !e.stderr.contains("this is not a key"), "{e}");
    std::fs::write(&key, format!("{}\n", secrets[0])).unwrap();
    // `keygen`: its stdout is a new key by design; stderr stays clean.
    let k = f.run_full(&["vpn", "keygen"], None, true);
    assert_eq!(k.code, Some(0));
    assert_eq!(k.stdout.trim().len(), 44);
    // `keygen --out`: a new 0600 key file (for a key rotation); only its public
    // key is printed, and an existing file is never overwritten.
    let rotated = dir.join("keys/wk-next.key");
    let k = f.ok(&["vpn", "keygen", "--out", rotated.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&rotated).unwrap().permissions().mode() & 0o777, 0o600);
    let next = key_forms(&rotated);
    assert_eq!(k.stdout.trim(), wg_pubkey(&next[0]), "{k}");
    let e = f.run(&["vpn", "keygen", "--out", rotated.to_str().unwrap()]);
    assert!(e.code == Some(1) && e.stderr.contains("already exists"), "{e}");
    assert_eq!(key_forms(&rotated), next, "the key file was overwritten");
    secrets.extend(next);
    f.ok(&["vpn", "down", "--iface", &wf]);
    let o = f.ok(&["vpn", "status", p]);
    assert!(o.stdout.contains("not running"), "{o}");

    let log = std::fs::read_to_string(format!("/run/fwctl/vpn/{wf}.log")).unwrap_or_default();
    assert!(!log.is_empty(), "the tunnel wrote a log");
    assert_no_secret("the tunnel log", &log, &secrets);
    assert_no_secret("the policy", &std::fs::read_to_string(&policy).unwrap(), &secrets);
    for t in &f.transcript {
        assert_no_secret("fwctl output", t, &secrets);
    }
    drop(cleanup);
    drop(lab);
}

/// boringtun cannot update a peer in place (it refuses `update_only` and
/// panics when a peer is set again): a changed peer is removed and re-added in
/// one request, and only that peer is mentioned; the tunnel survives it.
#[test]
fn changed_peer_is_re_added_alone_and_the_tunnel_survives() {
    if !privileged_or_skip() {
        return;
    }
    let prefix = unique_prefix("fwc");
    let wf = format!("wc{}", &prefix[3..]);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&prefix).expect("lab");
    let cleanup = Cleanup { ifaces: vec![wf.clone()], children: vec![], dir: dir.clone() };
    let fw = lab.add_ns("fw").unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, policy_text(&wf, &dir.join("keys/wc.key"))).unwrap();
    let p = policy.to_str().unwrap();
    let mut f = Fwctl { ns: &fw, transcript: vec![] };
    for n in ["a", "b", "c"] {
        let o = f.run_full(&["vpn", "peer", "add", n, "--vpn", &wf, "--policy", p], None, true);
        assert_eq!(o.code, Some(0), "{o}");
    }
    f.ok(&["vpn", "up", p]);
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&policy).unwrap().parse().unwrap();
    let peers = doc["vpn"][&wf]["peers"].as_array_of_tables_mut().unwrap();
    let b = peers.iter_mut().find(|t| t.get("name").and_then(|n| n.as_str()) == Some("b")).unwrap();
    b["keepalive"] = toml_edit::value(25);
    std::fs::write(&policy, doc.to_string()).unwrap();
    let o = f.ok(&["vpn", "up", p]);
    let changes: Vec<&str> = o.stdout.lines().skip(1).collect();
    assert_eq!(changes.len(), 1, "{o}");
    assert!(changes[0].trim_start().starts_with(&format!("re-add peer {wf}.b ")) && changes[0].ends_with("(changed: keepalive)"), "{o}");
    let st: Value = serde_json::from_str(&f.ok(&["vpn", "status", "--json", p]).stdout).unwrap();
    let peers = st["interfaces"][0]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{st}");
    assert!(peers.iter().all(|x| x["in_tunnel"] == true), "a peer fell out of the tunnel: {st}");
    let b = peers.iter().find(|x| x["name"] == format!("{wf}.b")).unwrap();
    assert_eq!(b["keepalive"], 25, "{st}");
    assert!(f.ok(&["vpn", "up", p]).stdout.contains("no changes"));

    // Routes and addresses follow the policy (rtnetlink), and only fwctl's own
    // routes (proto 243) are removed.
    let routes = |f: &mut Fwctl| String::from_utf8_lossy(&lab.exec(f.ns, &["ip", "route", "show", "dev", &wf]).unwrap().stdout).into_owned();
    lab.exec(&fw, &["ip", "route", "add", "192.0.2.128/25", "dev", &wf]).unwrap();
    let text = std::fs::read_to_string(&policy).unwrap();
    let site = text.replace("allowed_ips = [\"10.200.0.4/32\", \"fd00:200::4/128\"]", "allowed_ips = [\"10.200.0.4/32\", \"fd00:200::4/128\", \"198.51.100.128/25\"]");
    assert_ne!(site, text, "peer c's line:\n{text}");
    std::fs::write(&policy, &site).unwrap();
    let o = f.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains(&format!("re-add peer {wf}.c ")) && o.stdout.contains("add route 198.51.100.128/25"), "{o}");
    assert!(routes(&mut f).contains("198.51.100.128/25 proto 243"), "{}", routes(&mut f));
    assert!(f.ok(&["vpn", "up", p]).stdout.contains("no changes"));
    std::fs::write(&policy, text.replace("addresses = [\"10.200.0.1/24\", \"fd00:200::1/64\"]", "addresses = [\"10.200.0.1/24\"]")).unwrap();
    let o = f.ok(&["vpn", "up", p]);
    assert!(o.stdout.contains("remove route 198.51.100.128/25") && o.stdout.contains("remove address fd00:200::1/64"), "{o}");
    let r = routes(&mut f);
    assert!(!r.contains("198.51.100.128/25") && r.contains("192.0.2.128/25"), "fwctl's route gone, the admin's kept:\n{r}");
    f.ok(&["vpn", "down", "--iface", &wf]);
    drop(cleanup);
    drop(lab);
}

// ---------------------------------------------------------------------------
// Tunnels in plan / apply / rollback.

/// The firewall policy of the apply tests: the laptops reach the appliance's
/// tunnel port from `internet`; the tunnel zone `admins` may use ssh (only)
/// towards the server network `lan`.
fn apply_policy_text(iface: &str, key: &Path) -> String {
    format!(
        r#"# Tunnels through fwctl apply
[firewall]
name = "vpn-apply-e2e"
default = "drop"

[interfaces.wana]
device = "fa"
zone = "internet"

[interfaces.wanb]
device = "fb"
zone = "internet"

[interfaces.lan]
device = "fs"
zone = "lan"

[zones.internet]
[zones.admins]
[zones.lan]
networks = ["192.0.2.0/24"]

[vpn.{iface}]
zone = "admins"
listen_port = 51820
addresses = ["10.200.0.1/24", "fd00:200::1/64"]
private_key_file = "{}"

[[rules]]
name = "tunnel-in"
from = "internet"
to = "self"
allow = ["wireguard"]

[[rules]]
name = "admins-ssh-to-lan"
from = "admins"
to = "lan"
allow = ["ssh"]

[[rules]]
name = "admins-ping-self"
from = "admins"
to = "self"
allow = ["ping"]

[[tests]]
from = "admins"
to = "lan"
service = "http"
expect = "deny"
"#,
        key.display()
    )
}

/// The lines of one top-level section of `plan`'s text, indent removed.
fn plan_section(plan: &str, name: &str) -> Vec<String> {
    let head = format!("{name}:");
    let mut lines = plan.lines().skip_while(|l| *l != head);
    assert!(lines.next().is_some(), "no `{head}` section in:\n{plan}");
    lines.take_while(|l| l.starts_with("  ")).map(|l| l[2..].to_string()).collect()
}

/// A TCP connection from `client_ns` (source `src`) to `dst:port` in `server_ns`.
fn tcp(client_ns: &str, src: &str, server_ns: &str, dst: &str, port: u16) -> fwctl::sys::probe::Observed {
    use fwctl::sys::probe::{run, Probe, Proto};
    run(&Probe::new(Proto::Tcp, client_ns, src.parse().unwrap(), server_ns, dst.parse().unwrap(), port), Duration::from_millis(1500)).expect("probe")
}

/// The process serving `iface`'s UAPI socket (the tunnel process).
fn uapi_pid(iface: &str) -> i32 {
    let s = std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{iface}.sock")).expect("UAPI socket");
    nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).expect("SO_PEERCRED").pid()
}

/// Remove the peer `name` of `iface` from the policy file, as an admin would.
fn drop_peer(policy: &Path, iface: &str, name: &str) {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(policy).unwrap().parse().unwrap();
    doc["vpn"][iface]["peers"].as_array_of_tables_mut().unwrap().retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
    std::fs::write(policy, doc.to_string()).unwrap();
}

/// The issue's end-to-end story with `fwctl apply`: a firewall namespace with a
/// server behind it and two wireguard-go laptops. The tunnel is brought up by
/// `apply` from the policy; the tunnel zone's rules hold for real packets
/// (ssh to the server passes, http does not); removing alice from the policy
/// and applying cuts her off while bob's session goes on untouched; a rollback
/// brings her back.
#[test]
fn apply_brings_tunnels_up_enforces_their_zone_and_revokes_a_peer() {
    use fwctl::sys::probe::Observed::{Delivered, Dropped};
    if !privileged_or_skip() || !tools_or_skip(&[("wg", "--version"), ("wireguard-go", "--version")]) {
        return;
    }
    let Rig { started, wf, wa, wb, dir, lab, mut cleanup, fw, la, lb, srv } = rig(true);
    let srv = srv.expect("server namespace");

    let key = dir.join("keys/wf.key");
    let policy = dir.join("policy/policy.toml");
    std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
    std::fs::write(&policy, apply_policy_text(&wf, &key)).unwrap();
    let (p, state) = (policy.to_str().unwrap().to_string(), dir.join("state"));
    let st = state.to_str().unwrap().to_string();
    let mut fwctl = Fwctl { ns: &fw, transcript: vec![] };

    // Onboarding: two peers from `peer add` (bob with a preshared key).
    let cb = fwctl.run_full(&["vpn", "peer", "add", "bob", "--vpn", &wf, "--policy", &p, "--endpoint", "203.0.113.1:51820", "--psk"], None, true);
    assert_eq!(cb.code, Some(0), "{cb}");
    let ca = fwctl.run_full(&["vpn", "peer", "add", "alice", "--vpn", &wf, "--policy", &p, "--endpoint", "198.51.100.1:51820"], None, true);
    assert_eq!(ca.code, Some(0), "{ca}");
    let (alice_conf, bob_conf) = (ca.stdout.clone(), cb.stdout.clone());
    assert!(alice_conf.contains("192.0.2.0/24"), "the client routes the server network through the tunnel:\n{alice_conf}");
    let alice_pub = wg_pubkey(&config_value(&alice_conf, "PrivateKey"));
    let bob_pub = wg_pubkey(&config_value(&bob_conf, "PrivateKey"));
    let (alice_ip, bob_ip) = (config_value(&alice_conf, "Address").split(',').next().unwrap().trim().trim_end_matches("/32").to_string(), config_value(&bob_conf, "Address").split(',').next().unwrap().trim().trim_end_matches("/32").to_string());

    // The first plan: the ruleset, and the tunnel to be started with both peers.
    let o = fwctl.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(2), "{o}");
    let tun = plan_section(&o.stdout, "tunnels");
    assert_eq!(tun[0], format!("{wf}: start (userspace)"), "{o}");
    assert!(tun.contains(&format!("  + peer {wf}.alice ({alice_pub}): allowed IPs {alice_ip}/32, fd00:200::3/128")), "{o}");
    assert!(tun.iter().any(|l| l.starts_with(&format!("  + peer {wf}.bob ({bob_pub}): ")) && l.contains("preshared key from ")), "{o}");
    assert!(tun.contains(&"  add address 10.200.0.1/24".to_string()) && tun.contains(&"  mtu 1420".to_string()), "{o}");
    let j: Value = serde_json::from_str(&fwctl.run(&["plan", &p, "--json", "--state-dir", &st]).stdout).expect("plan --json");
    assert_eq!((&j["tunnels"][0]["iface"], &j["tunnels"][0]["action"]), (&Value::from(wf.as_str()), &Value::from("start")), "{j:#}");
    assert_eq!(j["tunnels"][0]["peers"].as_array().unwrap().len(), 2, "{j:#}");

    // Apply: the ruleset and the tunnel, from the policy.
    let o = fwctl.run(&["apply", &p, "--yes", "--state-dir", &st]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains(&format!("tunnel {wf}: started (userspace)")) && o.stdout.contains("applied generation 1"), "{o}");
    let o = fwctl.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(0), "nothing left to change after apply:\n{o}");
    assert_eq!(plan_section(&o.stdout, "tunnels"), vec!["(no change)".to_string()], "{o}");

    laptop(&lab, &la, &wa, &alice_conf, &dir, &mut cleanup.children);
    laptop(&lab, &lb, &wb, &bob_conf, &dir, &mut cleanup.children);
    assert!(ping_within(&la, "10.200.0.1", Duration::from_secs(10)), "alice cannot reach the appliance through the tunnel");
    assert!(ping_within(&lb, "10.200.0.1", Duration::from_secs(10)), "bob cannot reach the appliance through the tunnel");

    // The tunnel zone's rules, with real packets through the tunnel: ssh to
    // the server passes, http does not (default drop); both laptops.
    for (ns, ip) in [(&la, &alice_ip), (&lb, &bob_ip)] {
        assert_eq!(tcp(ns, ip, &srv, "192.0.2.10", 22), Delivered, "{ns}: ssh through the tunnel");
        assert_eq!(tcp(ns, ip, &srv, "192.0.2.10", 80), Dropped, "{ns}: http through the tunnel must be dropped");
    }

    let status = |f: &mut Fwctl| -> Value { serde_json::from_str(&f.ok(&["vpn", "status", "--json", &p]).stdout).expect("status json") };
    let before = status(&mut fwctl);
    let bob_before = peer_json(&before, &bob_pub).expect("bob in status").clone();
    let hs = |ns: &str, iface: &str| run(ns, &["wg", "show", iface, "latest-handshakes"], None).stdout.trim().to_string();
    let bob_side_hs = hs(&lb, &wb);
    assert!(!bob_side_hs.ends_with("\t0"), "bob has a handshake: {bob_side_hs}");
    let pid_before = uapi_pid(&wf);

    // Revoking alice: remove her from the policy; the plan names her removal
    // (and nothing about bob); apply cuts her off.
    drop_peer(&policy, &wf, "alice");
    let o = fwctl.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(2), "a peer removal is a change:\n{o}");
    assert_eq!(plan_section(&o.stdout, "tunnels"), vec![format!("{wf}: change in place (userspace (boringtun))"), format!("  - peer {wf}.alice ({alice_pub})")], "{o}");
    assert!(!o.stdout.contains(&bob_pub), "bob must not be mentioned:\n{o}");
    let j: Value = serde_json::from_str(&fwctl.run(&["plan", &p, "--json", "--state-dir", &st]).stdout).expect("plan --json");
    assert_eq!(j["tunnels"][0]["peers"], serde_json::json!([{"op": "remove", "name": format!("{wf}.alice"), "public_key": alice_pub, "changes": []}]), "{j:#}");
    let o = fwctl.run(&["apply", &p, "--yes", "--state-dir", &st]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains(&format!("remove peer {wf}.alice ({alice_pub})")) && !o.stdout.contains(&bob_pub), "{o}");
    assert!(o.stdout.contains("applied generation 2 (ruleset unchanged"), "a tunnel-only change loads no ruleset:\n{o}");
    assert_eq!(uapi_pid(&wf), pid_before, "the tunnel process was restarted");

    assert_eq!(tcp(&la, &alice_ip, &srv, "192.0.2.10", 22), Dropped, "alice still gets through after her removal");
    let o = run(&la, &["ping", "-c", "2", "-W", "1", "10.200.0.1"], None);
    assert_ne!(o.code, Some(0), "alice still reaches the appliance:\n{o}");
    assert_eq!(tcp(&lb, &bob_ip, &srv, "192.0.2.10", 22), Delivered, "bob lost ssh");
    assert_eq!(tcp(&lb, &bob_ip, &srv, "192.0.2.10", 80), Dropped, "bob: http");
    let after = status(&mut fwctl);
    assert!(peer_json(&after, &alice_pub).is_none(), "alice still in the tunnel: {after}");
    let bob_after = peer_json(&after, &bob_pub).expect("bob in status");
    assert!(bob_after["rx_bytes"].as_u64() > bob_before["rx_bytes"].as_u64() && bob_after["tx_bytes"].as_u64() > bob_before["tx_bytes"].as_u64(), "bob's counters were reset: {bob_before} → {bob_after}");
    assert_eq!(hs(&lb, &wb), bob_side_hs, "bob had to handshake again");

    // The audit record says what changed in the tunnel, by name and public key.
    let log: Value = serde_json::from_str(&fwctl.ok(&["audit", "log", "--json", "--state-dir", &st]).stdout).expect("audit json");
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!((&last["event"], &last["generation"]), (&"apply".into(), &2.into()), "{last:#}");
    assert_eq!(last["summary"]["tunnels"], serde_json::json!([{"iface": wf, "action": "changed", "backend": "userspace", "changes": [format!("remove peer {wf}.alice ({alice_pub})")], "warnings": []}]), "{last:#}");

    // Rollback: generation 1's peers come back (alice re-added, bob untouched).
    let o = fwctl.run(&["rollback", "--state-dir", &st]);
    assert_eq!(o.code, Some(0), "{o}");
    assert!(o.stdout.contains(&format!("add peer {wf}.alice ({alice_pub})")) && !o.stdout.contains(&bob_pub), "{o}");
    // Alice reconnects (her client still holds the old session).
    let conf = dir.join(format!("{wa}.conf"));
    lab.exec(&la, &["wg", "setconf", &wa, conf.to_str().unwrap()]).expect("wg setconf");
    assert!(ping_within(&la, "10.200.0.1", Duration::from_secs(10)), "alice is not back after the rollback");
    assert_eq!(tcp(&la, &alice_ip, &srv, "192.0.2.10", 22), Delivered, "alice: ssh after the rollback");
    assert_eq!(hs(&lb, &wb), bob_side_hs, "bob had to handshake again after the rollback");
    assert_eq!(uapi_pid(&wf), pid_before, "the tunnel process was restarted");

    fwctl.ok(&["vpn", "down", "--iface", &wf]);
    // No appliance key or preshared key anywhere: output, state (plans,
    // generations, audit trail), tunnel log.
    let mut secrets = key_forms(&key);
    secrets.extend(key_forms(&dir.join(format!("keys/{wf}-bob.psk"))));
    for t in &fwctl.transcript {
        assert_no_secret("fwctl output", t, &secrets);
    }
    let files = String::from_utf8_lossy(&Command::new("sh").arg("-c").arg(format!("find {} -type f -exec cat {{}} +", state.display())).output().unwrap().stdout).into_owned();
    assert!(files.contains(&format!("{wf}.alice")), "the state holds the plans");
    assert_no_secret("the state directory", &files, &secrets);
    assert_no_secret("the tunnel log", &std::fs::read_to_string(format!("/run/fwctl/vpn/{wf}.log")).unwrap_or_default(), &secrets);
    drop(cleanup);
    drop(lab);
    let took = started.elapsed();
    eprintln!("apply end-to-end: {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Apply is all or nothing: a tunnel that cannot even be planned (a key file
/// others can read) makes it refuse before anything changes; a tunnel that
/// fails during the sync (its listen port taken) after the ruleset was loaded
/// makes it undo itself — the previous ruleset and the previous peers come
/// back, also on tunnels it had already changed, and the new tunnel stops. A
/// confirm window that expires brings the previous peers back too; then an
/// in-place key rotation, and a tunnel removed from the policy is stopped.
#[test]
fn failed_tunnel_sync_and_confirm_expiry_restore_the_previous_peers() {
    if !privileged_or_skip() {
        return;
    }
    let prefix = unique_prefix("fwc");
    let sfx = &prefix[3..];
    let (wa, wb) = (format!("wa{sfx}"), format!("wb{sfx}"));
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mut lab = Lab::new(&prefix).expect("lab");
    let cleanup = Cleanup { ifaces: vec![wa.clone(), wb.clone()], children: vec![], dir: dir.clone() };
    let fw = lab.add_ns("fw").unwrap();
    let psk = dir.join("keys/b1.psk");
    // The same policy text in another file (the snapshot paths differ, the content not).
    let policy_of = |dir: &Path, text: &str| -> String {
        let p = dir.join("again.toml");
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    fwctl::vpn::keys::create_key_file(&psk, &fwctl::vpn::keys::PresharedKey::generate().unwrap().expose_base64()).unwrap();
    let (k1, k2) = ("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    let text = format!(
        r#"[firewall]
name = "vpn-undo"
[zones.admins]
[zones.lan]
networks = ["192.0.2.0/24"]
[vpn.{wa}]
zone = "admins"
listen_port = 51830
addresses = ["10.210.0.1/24"]
private_key_file = "{d}/keys/a.key"
[[vpn.{wa}.peers]]
name = "a1"
public_key = "{k1}"
allowed_ips = ["10.210.0.2/32"]
[vpn.{wb}]
zone = "admins"
listen_port = 51831
addresses = ["10.211.0.1/24"]
private_key_file = "{d}/keys/b.key"
[[vpn.{wb}.peers]]
name = "b1"
public_key = "{k2}"
allowed_ips = ["10.211.0.2/32"]
preshared_key_file = "{psk}"
[[rules]]
name = "admins-ssh"
from = "admins"
to = "lan"
allow = ["ssh"]
"#,
        d = dir.display(),
        psk = psk.display()
    );
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &text).unwrap();
    let (p, st) = (policy.to_str().unwrap().to_string(), dir.join("state").to_str().unwrap().to_string());
    let mut f = Fwctl { ns: &fw, transcript: vec![] };
    let o = f.ok(&["apply", &p, "--yes", "--state-dir", &st]);
    assert!(o.stdout.contains(&format!("tunnel {wa}: started")) && o.stdout.contains(&format!("tunnel {wb}: started")), "{o}");
    let listing = |f: &Fwctl| String::from_utf8_lossy(&lab.exec(f.ns, &["nft", "-s", "list", "table", "inet", "fwctl"]).unwrap().stdout).into_owned();
    let l1 = listing(&f);
    let in_tunnel = |f: &mut Fwctl, iface: &str, key: &str| -> bool {
        let v: Value = serde_json::from_str(&f.ok(&["vpn", "status", "--json", "--iface", iface]).stdout).unwrap();
        peer_json(&v, key).is_some()
    };
    assert!(in_tunnel(&mut f, &wa, k1) && in_tunnel(&mut f, &wb, k2));

    // The new policy removes a1 from the first tunnel, adds a rule, and rotates
    // b1's preshared key — into a file others can read (0644). The plan shows
    // that the tunnel cannot be changed, and apply refuses before anything
    // changes.
    let psk2 = dir.join("keys/b1-2027.psk");
    fwctl::vpn::keys::create_key_file(&psk2, &fwctl::vpn::keys::PresharedKey::generate().unwrap().expose_base64()).unwrap();
    std::fs::set_permissions(&psk2, std::fs::Permissions::from_mode(0o644)).unwrap();
    let edited = text.replace(&format!("[[vpn.{wa}.peers]]\nname = \"a1\"\npublic_key = \"{k1}\"\nallowed_ips = [\"10.210.0.2/32\"]\n"), "").replace(psk.to_str().unwrap(), psk2.to_str().unwrap())
        + "[[rules]]\nname = \"admins-http\"\nfrom = \"admins\"\nto = \"lan\"\nallow = [\"http\"]\n";
    // Structurally (the random interface names may contain "a1"): a1 is gone
    // from the first tunnel, b1's preshared key file is the new one.
    {
        let doc: toml_edit::DocumentMut = edited.parse().expect("edited policy is TOML");
        let peers = |w: &str| -> Vec<(String, Option<String>)> {
            doc["vpn"][w].get("peers").and_then(|p| p.as_array_of_tables()).into_iter().flat_map(|a| a.iter()).map(|t| (t["name"].as_str().unwrap_or_default().to_string(), t.get("preshared_key_file").and_then(|v| v.as_str()).map(str::to_string))).collect()
        };
        assert!(!peers(&wa).iter().any(|(n, _)| n == "a1"), "{edited}");
        assert!(peers(&wb).iter().any(|(n, psk)| n == "b1" && psk.as_deref() == psk2.to_str()), "{edited}");
    }
    std::fs::write(&policy, &edited).unwrap();
    let o = f.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(2), "{o}");
    assert!(o.stdout.contains(&format!("{wb}: cannot plan: ")) && o.stdout.contains("chmod 600"), "the plan shows what will fail:\n{o}");
    let o = f.run(&["apply", &p, "--yes", "--state-dir", &st]);
    assert_eq!(o.code, Some(1), "{o}");
    assert!(o.stderr.contains(&format!("refused: tunnel {wb}: ")) && o.stderr.contains("--no-tunnels"), "{o}");
    assert_eq!(listing(&f), l1, "a refused apply changed the ruleset");
    assert!(in_tunnel(&mut f, &wa, k1), "a refused apply changed a tunnel");
    let last = |f: &mut Fwctl| -> Value {
        let log: Value = serde_json::from_str(&f.ok(&["audit", "log", "--json", "--state-dir", &st]).stdout).unwrap();
        log.as_array().unwrap().last().unwrap().clone()
    };
    assert_eq!(last(&mut f)["event"], "apply-refused");

    // Fixed — and a third tunnel added whose listen port another program holds:
    // no plan can see that, the sync fails after the ruleset is loaded and the
    // first two tunnels are changed. The whole apply is undone: generation 1's
    // ruleset, a1 back, b1 back on its old preshared key, the new tunnel stopped.
    std::fs::set_permissions(&psk2, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wc = format!("wx{sfx}");
    let held = fwctl::sys::netns::join(spawn_in(&fw, || std::net::UdpSocket::bind("0.0.0.0:51832")).unwrap()).expect("hold udp 51832");
    let third = format!("{edited}[vpn.{wc}]\nzone = \"admins\"\nlisten_port = 51832\naddresses = [\"10.212.0.1/24\"]\nprivate_key_file = \"{}/keys/c.key\"\n", dir.display());
    std::fs::write(&policy, &third).unwrap();
    let mut cleanup = cleanup;
    cleanup.ifaces.push(wc.clone());
    let o = f.run(&["plan", &p, "--state-dir", &st]);
    assert!(o.code == Some(2) && o.stdout.contains(&format!("{wc}: start (userspace)")) && !o.stdout.contains("cannot plan"), "{o}");
    let o = f.run(&["apply", &p, "--yes", "--state-dir", &st]);
    assert_eq!(o.code, Some(3), "{o}");
    assert!(o.stderr.contains("error: the tunnels could not be brought to the new policy: ") && o.stderr.contains(&format!("{wc}: ")), "{o}");
    assert!(o.stderr.contains("the ruleset was rolled back: generation 1's ruleset is in place again"), "{o}");
    assert!(o.stderr.contains("the tunnels were synced back to generation 1's peers"), "{o}");
    assert_eq!(listing(&f), l1, "the previous ruleset is back");
    assert!(in_tunnel(&mut f, &wa, k1), "a1 is back in the first tunnel");
    assert!(std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{wc}.sock")).is_err(), "the new tunnel still runs");
    drop(held);
    let r = last(&mut f);
    assert_eq!((&r["event"], &r["result"]), (&"apply-failed".into(), &"failed".into()), "{r:#}");
    assert!(r["message"].as_str().unwrap().contains("ruleset rolled back to generation 1's ruleset; tunnels synced back"), "{r:#}");
    assert_eq!(r["summary"]["tunnels"][0]["changes"][0], format!("remove peer {wa}.a1 ({k1})"), "what was done before the failure: {r:#}");
    let h: Value = serde_json::from_str(&f.ok(&["history", "--json", "--state-dir", &st]).stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1, "no generation for the failed apply: {h:#}");
    assert_eq!(f.run(&["plan", &policy_of(&dir, &text), "--state-dir", &st]).code, Some(0), "the tunnels hold generation 1 again");
    std::fs::write(&policy, &edited).unwrap();

    // Applied with a confirm window that is left to expire: the watchdog
    // restores generation 1's ruleset and peers.
    let t0 = Instant::now();
    let o = f.ok(&["apply", &p, "--yes", "--confirm", "2", "--state-dir", &st]);
    assert!(o.stdout.contains(&format!("remove peer {wa}.a1")) && o.stdout.contains(&format!("re-add peer {wb}.b1 ({k2}) (changed: preshared key)")), "{o}");
    assert!(!in_tunnel(&mut f, &wa, k1));
    let mut back = false;
    while t0.elapsed() < Duration::from_secs(8) && !back {
        std::thread::sleep(Duration::from_millis(200));
        back = in_tunnel(&mut f, &wa, k1) && listing(&f) == l1;
    }
    assert!(back, "the expired window did not bring a1 and the ruleset back");
    let done = (0..25).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let log: Value = serde_json::from_str(&f.ok(&["audit", "log", "--json", "--state-dir", &st]).stdout).unwrap();
        let last = log.as_array().unwrap().last().unwrap().clone();
        last["event"] == "rollback-auto" && last["result"] == "ok" && last["summary"]["tunnels"][0]["changes"][0] == format!("add peer {wa}.a1 ({k1}) allowed 10.210.0.2/32")
    });
    assert!(done, "no rollback-auto record naming a1");

    // Rotating the appliance's key of the first tunnel: a new key file that
    // the policy names; the plan shows both public keys; apply sets it in the
    // running tunnel (same process, peers kept).
    let old_pub = wg_pubkey(&key_forms(&dir.join("keys/a.key"))[0]);
    let next = dir.join("keys/a-2027.key");
    let k = f.ok(&["vpn", "keygen", "--out", next.to_str().unwrap()]);
    let new_pub = k.stdout.trim().to_string();
    std::fs::write(&policy, text.replace("keys/a.key\"", "keys/a-2027.key\"")).unwrap();
    let o = f.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(2), "{o}");
    assert_eq!(
        plan_section(&o.stdout, "tunnels"),
        vec![format!("{wa}: change in place (userspace (boringtun))"), format!("  appliance key: public key {old_pub} → {new_pub} (from {}); every peer needs the new public key", next.display())],
        "{o}"
    );
    let pid = uapi_pid(&wa);
    f.ok(&["apply", &p, "--yes", "--state-dir", &st]);
    let v: Value = serde_json::from_str(&f.ok(&["vpn", "status", "--json", "--iface", &wa]).stdout).unwrap();
    assert_eq!(v["interfaces"][0]["public_key"], new_pub.as_str(), "{v:#}");
    assert!(in_tunnel(&mut f, &wa, k1), "the peers stay");
    assert_eq!(uapi_pid(&wa), pid, "the tunnel process was restarted");
    assert_eq!(f.run(&["plan", &p, "--state-dir", &st]).code, Some(0), "nothing left after the rotation");

    // A tunnel that leaves the policy is stopped by apply.
    let rotated = std::fs::read_to_string(&policy).unwrap();
    let (from, to) = (rotated.find(&format!("[vpn.{wb}]")).unwrap(), rotated.find("[[rules]]").unwrap());
    std::fs::write(&policy, format!("{}{}", &rotated[..from], &rotated[to..])).unwrap();
    let o = f.run(&["plan", &p, "--state-dir", &st]);
    assert_eq!(o.code, Some(2), "{o}");
    assert_eq!(plan_section(&o.stdout, "tunnels"), vec![format!("{wb}: stop (userspace (boringtun)): no longer in the policy")], "{o}");
    let o = f.ok(&["apply", &p, "--yes", "--state-dir", &st]);
    assert!(o.stdout.contains(&format!("tunnel {wb}: stopped")), "{o}");
    assert!(std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{wb}.sock")).is_err(), "{wb} still runs");
    assert_eq!(uapi_pid(&wa), pid, "the other tunnel was restarted");
    assert_eq!(f.run(&["plan", &p, "--state-dir", &st]).code, Some(0), "nothing left after the stop");

    f.ok(&["vpn", "down", &p]);
    let mut secrets = key_forms(&psk);
    secrets.extend(key_forms(&psk2));
    secrets.extend(key_forms(&dir.join("keys/a.key")));
    secrets.extend(key_forms(&next));
    for t in &f.transcript {
        assert_no_secret("fwctl output", t, &secrets);
    }
    drop(cleanup);
    drop(lab);
}
