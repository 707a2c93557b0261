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

#[test]
fn tunnel_carries_traffic_and_peer_removal_spares_other_sessions() {
    if !privileged_or_skip() || !tools_or_skip(&[("wg", "--version"), ("wireguard-go", "--version")]) {
        return;
    }
    let started = Instant::now();
    let prefix = unique_prefix("fwv");
    let sfx = &prefix[3..];
    let (wf, wa, wb) = (format!("wf{sfx}"), format!("wa{sfx}"), format!("wb{sfx}"));
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&prefix).expect("lab");
    let mut cleanup = Cleanup { ifaces: vec![wf.clone(), wa.clone(), wb.clone()], children: vec![], dir: dir.clone() };
    let fw = lab.add_ns("fw").unwrap();
    let la = lab.add_ns("la").unwrap();
    let lb = lab.add_ns("lb").unwrap();
    lab.veth(&fw, "fa", &la, "a0").unwrap();
    lab.veth(&fw, "fb", &lb, "b0").unwrap();
    lab.addr(&fw, "fa", "198.51.100.1/24").unwrap();
    lab.addr(&la, "a0", "198.51.100.2/24").unwrap();
    lab.addr(&fw, "fb", "203.0.113.1/24").unwrap();
    lab.addr(&lb, "b0", "203.0.113.2/24").unwrap();
    for (ns, dev) in [(&fw, "fa"), (&fw, "fb"), (&la, "a0"), (&lb, "b0")] {
        lab.link_up(ns, dev).unwrap();
    }
    lab.wait_ready(Duration::from_secs(5)).unwrap();

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
