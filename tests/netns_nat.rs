//! NAT proven with real packets, in throwaway network namespaces.
//!
//! A client namespace on the internet side, a firewall namespace loaded with the
//! compiled ruleset (`nft -f`), and two server namespaces inside (a LAN host and a
//! DMZ host). Real TCP connections and UDP exchanges go through the firewall; a
//! small listener records the peer address it sees and sends it back, so each
//! exchange shows both what the server saw (the translated source or the original
//! client) and that the client got the reply. Port forwards (IPv4 and IPv6, with
//! and without `destination`, with `to_port`), masquerade, SNAT (IPv4 and IPv6),
//! and a forward to a host whose zone also has a deny rule. Where a forward
//! applies, the translation `explain` reports (`eval::port_forward`) must be the
//! address and port the server listens on.
//!
//! Needs root, `ip` and `nft`. Under CI (CI set) a missing prerequisite fails the
//! test; elsewhere it is skipped with a message. The namespaces are removed when
//! the lab is dropped, also when an assertion fails.

use fwctl::compile::{compile, Capabilities};
use fwctl::model::{Date, Proto};
use fwctl::sys::netns::{join, privileged_or_skip, spawn_in, unique_prefix, Lab};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TODAY: Date = Date { year: 2026, month: 11, day: 23 };

const POLICY: &str = r#"
[firewall]
name = "nat-lab"
default = "drop"

[interfaces.wan]
device = "wan0"
zone = "internet"
[interfaces.lan]
device = "lan0"
zone = "lan"
[interfaces.dmz]
device = "dmz0"
zone = "dmz"

[zones.internet]
[zones.lan]
networks = ["192.0.2.0/24", "2001:db8:1::/64"]
[zones.dmz]
networks = ["198.51.100.0/24", "2001:db8:2::/64"]

[hosts]
web = ["192.0.2.10", "2001:db8:1::10"]
dmzhost = ["198.51.100.10", "2001:db8:2::10"]

[services]
app-public = { tcp = [8443], udp = [8443] }
app = { tcp = [8080], udp = [8080] }
alt-https = { tcp = [8443] }
probe-out = { tcp = [9000], udp = [9000] }

[[rules]]
name = "web-app"
from = "internet"
to = "web"
allow = ["app"]

[[rules]]
name = "dmz-in"
from = "internet"
to = "dmz"
allow = ["https", "alt-https", "ssh"]

[[rules]]
name = "no-ssh-to-dmzhost"
from = "internet"
to = "dmzhost"
deny = ["ssh"]

[[rules]]
name = "out"
from = ["lan", "dmz"]
to = "internet"
allow = ["probe-out"]

# No destination: every address arriving on wan, IPv4 and IPv6.
[[nat.forward]]
name = "web-app"
on = "wan"
service = "app-public"
to = "web"
to_port = 8080

[[nat.forward]]
name = "dmz-https4"
on = "wan"
destination = "203.0.113.10"
service = "https"
to = "dmzhost"

[[nat.forward]]
name = "dmz-https6"
on = "wan"
destination = "2001:db8:ff::10"
service = "https"
to = "dmzhost"
to_port = 8443

# Forwarded, but the filter's deny rule still refuses it.
[[nat.forward]]
name = "dmz-ssh"
on = "wan"
destination = "203.0.113.10"
service = "ssh"
to = "dmzhost"

[[nat.masquerade]]
from = "lan"
out = "wan"

[[nat.snat]]
from = "dmz"
out = "wan"
to = "203.0.113.20"

[[nat.snat]]
from = "2001:db8:2::/64"
out = "wan"
to = "2001:db8:ff::20"
"#;

/// How long one exchange may take before it counts as "nothing came" (past a
/// lost first SYN, which TCP resends after 1 s).
const WAIT: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum P {
    Tcp,
    Udp,
}

/// What one exchange showed: the peer the server saw, and the reply the client got
/// (the server sends back the peer address it saw).
#[derive(Debug, PartialEq, Eq)]
struct Exchange {
    server_saw: Option<SocketAddr>,
    client_got: Option<String>,
}

/// Listens on `at` in `server_ns`, and connects/sends from `client_ns` to `to`.
/// Every socket call has a timeout; both threads are joined.
fn exchange(proto: P, client_ns: &str, to: SocketAddr, server_ns: &str, at: SocketAddr) -> io::Result<Exchange> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = spawn_in(server_ns, move || -> io::Result<Option<SocketAddr>> {
        let deadline = Instant::now() + WAIT;
        match proto {
            P::Tcp => {
                let l = TcpListener::bind(at)?;
                l.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                while Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            s.set_nonblocking(false)?;
                            s.set_read_timeout(Some(WAIT))?;
                            let mut buf = [0u8; 16];
                            let _ = s.read(&mut buf)?;
                            s.write_all(peer.to_string().as_bytes())?;
                            return Ok(Some(peer));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
            P::Udp => {
                let s = UdpSocket::bind(at)?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                let _ = ready_tx.send(());
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    match s.recv_from(&mut buf) {
                        Ok((_, peer)) => {
                            s.send_to(peer.to_string().as_bytes(), peer)?;
                            return Ok(Some(peer));
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
        }
    })?;
    // The client starts once the server listens (or gave up trying).
    let _ = ready_rx.recv_timeout(WAIT);
    let client = spawn_in(client_ns, move || -> io::Result<Option<String>> {
        let deadline = Instant::now() + WAIT;
        match proto {
            P::Tcp => {
                let mut s = match TcpStream::connect_timeout(&to, WAIT) {
                    Ok(s) => s,
                    Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock) => return Ok(None),
                    Err(e) => return Err(e),
                };
                s.set_read_timeout(Some(WAIT))?;
                s.write_all(b"hello")?;
                let mut reply = String::new();
                match s.read_to_string(&mut reply) {
                    Ok(_) => Ok(Some(reply)),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            P::Udp => {
                let any: SocketAddr = if to.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
                let s = UdpSocket::bind(any)?;
                s.connect(to)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    s.send(b"hello")?;
                    match s.recv(&mut buf) {
                        Ok(n) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::ConnectionRefused) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
        }
    })?;
    let client_got = join(client)?;
    let server_saw = join(server)?;
    Ok(Exchange { server_saw, client_got })
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("socket address {s}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("address {s}"))
}

struct Net {
    lab: Lab,
    fw: String,
    inet: String,
    lan: String,
    dmz: String,
}

/// One link of the firewall: (host namespace, firewall device, firewall addresses
/// (primary first), host addresses, IPv4 gateway, IPv6 gateway).
type Side<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str], &'a str, &'a str);

/// internet (h0) ── wan0 [fw] lan0 ── (h0) lan ; dmz0 ── (h0) dmz
fn build(script: &str) -> Net {
    let mut lab = Lab::new(&unique_prefix("fwn")).expect("lab");
    let fw = lab.add_ns("fw").expect("fw ns");
    let inet = lab.add_ns("inet").expect("inet ns");
    let lan = lab.add_ns("lan").expect("lan ns");
    let dmz = lab.add_ns("dmz").expect("dmz ns");
    let sides: [Side; 3] = [
        (&inet, "wan0", &["203.0.113.1/24", "203.0.113.10/24", "203.0.113.20/24", "2001:db8:ff::1/64", "2001:db8:ff::10/64", "2001:db8:ff::20/64"], &["203.0.113.2/24", "2001:db8:ff::2/64"], "203.0.113.1", "2001:db8:ff::1"),
        (&lan, "lan0", &["192.0.2.1/24", "2001:db8:1::1/64"], &["192.0.2.10/24", "2001:db8:1::10/64"], "192.0.2.1", "2001:db8:1::1"),
        (&dmz, "dmz0", &["198.51.100.1/24", "2001:db8:2::1/64"], &["198.51.100.10/24", "2001:db8:2::10/64"], "198.51.100.1", "2001:db8:2::1"),
    ];
    for (ns, dev, fw_addrs, addrs, gw4, gw6) in sides {
        lab.veth(&fw, dev, ns, "h0").expect("veth");
        for a in fw_addrs {
            lab.addr(&fw, dev, a).expect("fw address");
        }
        for a in addrs {
            lab.addr(ns, "h0", a).expect("host address");
        }
        lab.link_up(&fw, dev).expect("up");
        lab.link_up(ns, "h0").expect("up");
        lab.route(ns, "0.0.0.0/0", Some(gw4), "h0").expect("v4 route");
        lab.route(ns, "::/0", Some(gw6), "h0").expect("v6 route");
    }
    lab.forwarding(&fw, true).expect("forwarding");
    lab.wait_ready(Duration::from_secs(5)).expect("links ready");
    lab.run_nft(&fw, script).expect("the compiled ruleset loads");
    Net { lab, fw, inet, lan, dmz }
}

#[test]
fn nat_translates_real_tcp_and_udp_as_compiled() {
    if !privileged_or_skip() {
        return;
    }
    let loaded = fwctl::check::load_str("nat-lab.toml", POLICY, TODAY);
    assert!(!loaded.has_errors(), "{:?}", loaded.diags);
    let p = loaded.policy.expect("policy");
    let compiled = compile(&p, Capabilities { flowtable: false }).expect("compiles");
    let script = fwctl::render::nft::script(&compiled.ruleset, "netns_nat");
    let net = build(&script);
    assert!(net.lab.namespaces().contains(&net.fw));
    let mut failures = vec![];

    // Port forwards: (what, proto, public address, public port, server namespace, inside address, inside port).
    let forwards: [(&str, P, &str, u16, &str, &str, u16); 7] = [
        ("IPv4, no destination, to_port", P::Tcp, "203.0.113.1", 8443, &net.lan, "192.0.2.10", 8080),
        ("IPv4, no destination, to_port", P::Udp, "203.0.113.1", 8443, &net.lan, "192.0.2.10", 8080),
        ("IPv6, no destination, to_port", P::Tcp, "2001:db8:ff::1", 8443, &net.lan, "2001:db8:1::10", 8080),
        ("IPv6, no destination, to_port", P::Udp, "2001:db8:ff::1", 8443, &net.lan, "2001:db8:1::10", 8080),
        ("IPv4, destination", P::Tcp, "203.0.113.10", 443, &net.dmz, "198.51.100.10", 443),
        ("IPv6, destination, to_port", P::Tcp, "2001:db8:ff::10", 443, &net.dmz, "2001:db8:2::10", 8443),
        ("IPv4, no destination, to another public address of the firewall", P::Tcp, "203.0.113.20", 8443, &net.lan, "192.0.2.10", 8080),
    ];
    for (what, proto, public, port, server_ns, inside, inside_port) in forwards {
        let client = if ip(public).is_ipv6() { ip("2001:db8:ff::2") } else { ip("203.0.113.2") };
        // What `explain` says happens to this packet is what the server must see.
        let mp = if proto == P::Tcp { Proto::Tcp } else { Proto::Udp };
        let fw = fwctl::eval::port_forward(&p, "wan0", ip(public), mp, port).unwrap_or_else(|| panic!("{what}: the evaluator knows no forward for {public}:{port}"));
        assert_eq!((fw.dst, fw.port), (ip(inside), inside_port), "{what}: the evaluator's translation");
        let to = SocketAddr::new(ip(public), port);
        let at = SocketAddr::new(ip(inside), inside_port);
        let ex = exchange(proto, &net.inet, to, server_ns, at).expect("exchange");
        let ok = ex.server_saw.map(|s| s.ip()) == Some(client) && ex.client_got.as_deref() == ex.server_saw.map(|s| s.to_string()).as_deref();
        if !ok {
            failures.push(format!("forward {what} {proto:?} {to} → {at}: server saw {:?} (expected {client}), client got {:?}", ex.server_saw, ex.client_got));
        }
    }

    // A forward to a host whose zone has a deny rule: the deny still holds
    // (nothing reaches the server, no reply), while the allowed forward above
    // (dmz-https4 to the same host) went through.
    let fw = fwctl::eval::port_forward(&p, "wan0", ip("203.0.113.10"), Proto::Tcp, 22).expect("dmz-ssh is a forward");
    assert_eq!(p.dnat[fw.forward].name, "dmz-ssh");
    let ex = exchange(P::Tcp, &net.inet, sa("203.0.113.10:22"), &net.dmz, sa("198.51.100.10:22")).expect("exchange");
    if ex != (Exchange { server_saw: None, client_got: None }) {
        failures.push(format!("denied forward dmz-ssh: {ex:?}, expected nothing to reach the server"));
    }

    // Source NAT: (what, proto, client namespace, server address, translated source it must see).
    let outbound: [(&str, P, &str, &str, &str); 7] = [
        ("masquerade", P::Tcp, &net.lan, "203.0.113.2:9000", "203.0.113.1"),
        ("masquerade", P::Udp, &net.lan, "203.0.113.2:9000", "203.0.113.1"),
        ("IPv4 snat", P::Tcp, &net.dmz, "203.0.113.2:9000", "203.0.113.20"),
        ("IPv4 snat", P::Udp, &net.dmz, "203.0.113.2:9000", "203.0.113.20"),
        ("IPv6 snat", P::Tcp, &net.dmz, "[2001:db8:ff::2]:9000", "2001:db8:ff::20"),
        ("IPv6 snat", P::Udp, &net.dmz, "[2001:db8:ff::2]:9000", "2001:db8:ff::20"),
        // Masquerade translates IPv4 only: the LAN host's IPv6 address goes out as is.
        ("no IPv6 masquerade", P::Tcp, &net.lan, "[2001:db8:ff::2]:9000", "2001:db8:1::10"),
    ];
    for (what, proto, client_ns, server, seen) in outbound {
        let ex = exchange(proto, client_ns, sa(server), &net.inet, sa(server)).expect("exchange");
        let ok = ex.server_saw.map(|s| s.ip()) == Some(ip(seen)) && ex.client_got.as_deref() == ex.server_saw.map(|s| s.to_string()).as_deref();
        if !ok {
            failures.push(format!("{what} {proto:?} → {server}: server saw {:?} (expected {seen}), client got {:?}", ex.server_saw, ex.client_got));
        }
    }
    if !failures.is_empty() {
        let state = net.lab.exec(&net.fw, &["nft", "list", "table", "inet", "fwctl"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        panic!("{} NAT exchanges failed:\n{}\n\nruleset in the firewall:\n{state}", failures.len(), failures.join("\n"));
    }
}

/// Whatever `check` accepts as port forward names, the kernel accepts: a name of
/// exactly 128 bytes (multi-byte characters counted in bytes, as nft counts
/// them), the unnamed sixth forward (so called `forward-6`) next to one named
/// `forward-5` (the fifth forward has a name of its own), and forwards of both
/// families without destination.
#[test]
fn forward_names_that_check_accepts_the_kernel_accepts() {
    if !privileged_or_skip() {
        return;
    }
    let longest = "é".repeat(64);
    assert_eq!(longest.len(), fwctl::model::resolve::NFT_COMMENT_MAX);
    let text = format!(
        "{}\n[[nat.forward]]\nname = \"{longest}\"\non = \"wan\"\nservice = \"ntp\"\nto = \"web\"\n\
         [[nat.forward]]\non = \"wan\"\nservice = \"dns\"\nto = \"dmzhost\"\n\
         [[nat.forward]]\nname = \"forward-5\"\non = \"wan\"\nservice = \"smtp\"\nto = \"web\"\n",
        POLICY
    );
    let loaded = fwctl::check::load_str("names.toml", &text, TODAY);
    assert!(!loaded.has_errors(), "{:?}", loaded.diags);
    let p = loaded.policy.expect("policy");
    let rs = compile(&p, Capabilities { flowtable: false }).expect("compiles").ruleset;
    let comments: std::collections::BTreeSet<&str> = rs.sets.iter().filter(|s| s.name.starts_with("dnat")).flat_map(|s| &s.elements).filter_map(|e| e.comment.as_deref()).collect();
    assert!(comments.contains(longest.as_str()) && comments.contains("forward-5") && comments.contains("forward-6"), "{comments:?}");
    let mut lab = Lab::new(&unique_prefix("fwn")).expect("lab");
    let fw = lab.add_ns("fw").expect("fw ns");
    lab.run_nft(&fw, &fwctl::render::nft::script(&rs, "netns_nat")).expect("the kernel accepts what check accepted");
    lab.destroy().expect("namespaces removed");
}
