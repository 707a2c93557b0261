//! Property: for random policies and random packets, the compiled decision
//! structure (simulated exactly as the kernel walks it) gives the same verdict as
//! the reference evaluator, and the deciding element names only matching rules.
//!
//! Each run uses a fresh seed (printed); rerun a failure with FWCTL_SEED=<seed>.
//! FWCTL_PROPTEST_CASES sets the number of policies (default 250 × 60 packets).

use fwctl::check::load_str;
use fwctl::compile::{compile, sim::Sim, Capabilities};
use fwctl::eval::{evaluate, Hook, Packet, Reason, Verdict};
use fwctl::model::{Date, Proto};
use std::fmt::Write as _;
use std::net::IpAddr;

use fwctl::gen::Rng;

const V4_NETS: [&str; 6] = ["192.0.2.0/25", "192.0.2.128/26", "198.51.100.0/24", "203.0.113.0/28", "10.200.0.0/24", "0.0.0.0/0"];
/// Zone networks: nested (192.0.2.0/24 around /25 and /26) and per-link ones
/// (exempt from anti-spoofing) included.
const ZONE_V4: [&str; 7] = ["192.0.2.0/25", "192.0.2.128/26", "198.51.100.0/24", "203.0.113.0/28", "10.200.0.0/24", "192.0.2.0/24", "169.254.0.0/16"];
const ZONE_V6: [&str; 4] = ["2001:db8:10::/64", "2001:db8:20::/64", "fd00:200::/64", "fe80::/10"];
const SERVICES: [&str; 8] = ["ssh", "https", "dns", "ping", "mysql", "ntp", "svc-a", "svc-b"];

/// A random but valid policy, as TOML text.
fn policy(rng: &mut Rng) -> String {
    let mut t = String::new();
    let default = if rng.chance(30) { "reject" } else { "drop" };
    let _ = writeln!(t, "[firewall]\nname = \"prop\"\ndefault = \"{default}\"\n");
    // Sometimes hundreds of address-only zones come first: the interface zones
    // then have indexes past every 8-bit id.
    let before = if rng.chance(15) { 250 + rng.below(60) } else { 0 };
    for i in 0..before {
        let _ = writeln!(t, "[zones.za{i}]\nnetworks = [\"203.0.113.{}/28\", \"2001:db8:40::{:x}00/120\"]", 16 * (i % 16), i % 256);
    }
    let nzones = 2 + rng.below(3);
    for z in 0..nzones {
        let _ = writeln!(t, "[interfaces.if{z}]\ndevice = \"eth{z}\"\nzone = \"z{z}\"");
        if rng.chance(30) {
            let _ = writeln!(t, "[interfaces.if{z}b]\ndevice = \"eth{z}b\"\nzone = \"z{z}\"");
        }
        let _ = writeln!(t, "[zones.z{z}]");
        if rng.chance(60) {
            let _ = writeln!(t, "networks = [\"{}\", \"{}\"]", rng.pick(&ZONE_V4), rng.pick(&ZONE_V6));
        }
        // Anti-spoofing is on by default; some zones opt out (asymmetric routing).
        if rng.chance(20) {
            let _ = writeln!(t, "antispoof = false");
        }
    }
    let _ = writeln!(t, "[zones.zaddr]\nnetworks = [\"198.51.100.64/26\", \"2001:db8:30::/48\"]");
    // A VPN whose peers may only be matched through their tunnel's zone.
    let _ = writeln!(t, "[zones.zvpn]\nnetworks = [\"10.200.0.0/24\", \"fd00:200::/64\"]\n[vpn.wg9]\nzone = \"zvpn\"\nprivate_key_file = \"/nonexistent\"\naddresses = [\"10.200.0.1/24\"]\n[[vpn.wg9.peers]]\nname = \"p1\"\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nallowed_ips = [\"10.200.0.2/32\", \"fd00:200::2/128\"]\n[[vpn.wg9.peers]]\nname = \"p2\"\npublic_key = \"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\"\nallowed_ips = [\"10.200.0.3/32\"]");
    let _ = writeln!(t, "\n[hosts]");
    let nhosts = 3 + rng.below(5);
    for h in 0..nhosts {
        let a4 = format!("192.0.2.{}", 1 + rng.below(200));
        let a6 = format!("2001:db8:10::{:x}", 1 + rng.below(200));
        match rng.below(3) {
            0 => { let _ = writeln!(t, "h{h} = \"{a4}\""); }
            1 => { let _ = writeln!(t, "h{h} = \"{a6}\""); }
            _ => { let _ = writeln!(t, "h{h} = [\"{a4}\", \"{a6}\"]"); }
        }
    }
    let _ = writeln!(t, "\n[groups]\ng0 = [\"h0\", \"h1\"]\ng1 = [\"g0\", \"{}\", \"z0\"]\ng2 = [\"h2\", \"198.51.100.0/25\", \"zaddr\"]", rng.pick(&V4_NETS[..5]));
    let _ = writeln!(t, "\n[services]\nsvc-a = {{ tcp = [8000, \"8443-8450\"], udp = [\"5000-5100\"] }}\nsvc-b = {{ tcp = [\"8440-8445\", 22], udp = [53] }}\n");
    let mut refs: Vec<String> = (0..nzones).map(|z| format!("z{z}")).collect();
    refs.extend((0..nhosts).map(|h| format!("h{h}")));
    if before > 0 {
        refs.extend([0, before / 2, before - 1].map(|i| format!("za{i}")));
    }
    refs.extend(["g0", "g1", "g2", "zaddr", "zvpn", "wg9.p1", "wg9.p2", "any", "192.0.2.0/26", "2001:db8:10::/120", "198.51.100.7"].map(String::from));
    let nrules = 1 + rng.below(12);
    for r in 0..nrules {
        let side = |rng: &mut Rng, to: bool| -> String {
            let n = 1 + rng.below(2);
            let mut v = vec![];
            for _ in 0..n {
                if rng.chance(10) {
                    v.push("self".to_string());
                } else {
                    v.push(rng.pick(&refs).clone());
                }
            }
            let _ = to;
            format!("[{}]", v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))
        };
        let from = side(rng, false);
        let to = side(rng, true);
        let svcs: Vec<String> = (0..1 + rng.below(3)).map(|_| format!("\"{}\"", rng.pick(&SERVICES))).collect();
        let verb = if rng.chance(30) { "deny" } else { "allow" };
        let log = if rng.chance(20) { "\nlog = true" } else { "" };
        let exp = if rng.chance(10) { "\nexpires = 2026-01-01" } else { "" };
        let _ = writeln!(t, "[[rules]]\nname = \"r{r}\"\nfrom = {from}\nto = {to}\n{verb} = [{}]{log}{exp}\n", svcs.join(", "));
    }
    t
}

fn addr(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        let pool = ["2001:db8:10::1", "2001:db8:10::80", "2001:db8:10::ff", "2001:db8:20::5", "fd00:200::2", "fd00:200::3", "2001:db8:30::1", "2001:db8:ffff::1", "2001:db8:10::100", "2001:db8:40::1000", "fe80::1", "::"];
        let base: IpAddr = rng.pick(&pool).parse().unwrap();
        if rng.chance(50) {
            if let IpAddr::V6(b) = base {
                return IpAddr::V6((u128::from(b) + rng.below(200) as u128).into());
            }
        }
        base
    } else {
        let pool = ["192.0.2.1", "192.0.2.63", "192.0.2.64", "192.0.2.127", "192.0.2.128", "198.51.100.7", "198.51.100.64", "198.51.100.200", "203.0.113.5", "10.200.0.2", "10.200.0.3", "8.8.8.8", "169.254.7.7", "0.0.0.0"];
        let base: IpAddr = rng.pick(&pool).parse().unwrap();
        if rng.chance(50) {
            if let IpAddr::V4(b) = base {
                return IpAddr::V4(u32::from(b).wrapping_add(rng.below(200) as u32).into());
            }
        }
        base
    }
}

fn packet(rng: &mut Rng, nzones: usize) -> Packet {
    let hook = *rng.pick(&[Hook::Input, Hook::Forward, Hook::Forward, Hook::Output]);
    let mut devs: Vec<String> = (0..nzones).flat_map(|z| [format!("eth{z}"), format!("eth{z}b")]).collect();
    devs.push("unknown0".into());
    devs.push("wg9".into());
    let v6 = rng.chance(50);
    let proto = match rng.below(4) {
        0 => Proto::Tcp,
        1 => Proto::Udp,
        _ => if v6 { Proto::Icmpv6 } else { Proto::Icmp },
    };
    let port = match proto {
        Proto::Icmp => *rng.pick(&[8u16, 0, 3, 11, 13]),
        Proto::Icmpv6 => *rng.pick(&[128u16, 129, 1, 2, 135, 200]),
        _ => *rng.pick(&[22u16, 53, 443, 3306, 123, 8000, 8443, 8444, 8446, 8450, 8451, 5000, 5050, 5101, 1, 65535]),
    };
    let iif = (hook != Hook::Output).then(|| if rng.chance(3) { "lo".to_string() } else { rng.pick(&devs).clone() });
    let oif = (hook != Hook::Input).then(|| rng.pick(&devs).clone());
    Packet { hook, iif, oif, src: addr(rng, v6), dst: addr(rng, v6), proto, port }
}

#[test]
fn compiled_structure_agrees_with_reference_evaluator() {
    let seed: u64 = std::env::var("FWCTL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let cases: usize = std::env::var("FWCTL_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(250);
    eprintln!("property seed: {seed} (rerun with FWCTL_SEED={seed})");
    let mut rng = Rng(seed);
    let today = Date { year: 2026, month: 11, day: 23 };
    let mut checked = 0;
    let mut accepted = 0;
    let mut spoofed = 0;
    for case in 0..cases {
        let text = policy(&mut rng);
        let loaded = load_str("prop.toml", &text, today);
        assert!(!loaded.has_errors(), "case {case}: generated policy is invalid:\n{text}\n{:?}", loaded.diags);
        let p = loaded.policy.unwrap();
        let compiled = compile(&p, Capabilities { flowtable: false }).expect("compiles");
        let sim = Sim::new(&compiled.decision);
        let nzones = p.zones.iter().filter(|z| !z.ifaces.is_empty()).count();
        for _ in 0..60 {
            let pkt = packet(&mut rng, nzones);
            let want = evaluate(&p, &pkt);
            let got = sim.run(&p, &pkt);
            assert_eq!(got.verdict, want.verdict, "seed {seed} case {case}: verdicts differ for {pkt:?}\nreference: {want:?}\ncompiled: {got:?}\npolicy:\n{text}");
            let decided_by = if want.deny.is_empty() { &want.allow } else { &want.deny };
            for r in &got.rules {
                assert!(decided_by.contains(r), "seed {seed} case {case}: element names rule {r} which does not decide {pkt:?}\n{want:?}\n{got:?}\n{text}");
            }
            checked += 1;
            accepted += usize::from(want.verdict == Verdict::Accept);
            spoofed += usize::from(want.reason == Reason::Spoofed);
        }
    }
    eprintln!("checked {checked} (policy, packet) pairs, {accepted} accepted, {spoofed} dropped as spoofed");
    assert!(checked >= 10_000 || cases < 250);
    // Both outcomes must be well represented, or the property proves little.
    assert!(accepted * 10 > checked && accepted * 10 < checked * 9, "accepted {accepted} of {checked}");
    // Spoofed sources (a zone's address on another zone's or an undeclared
    // device) must be generated too, or anti-spoofing goes unchecked.
    assert!(spoofed * 20 > checked || cases < 250, "only {spoofed} of {checked} packets were spoofed");
}

/// `before` address-only zones, then the interface zones `internet` (no networks),
/// `lan` and `dmz`: their zone indexes are `before`, `before + 1`, `before + 2`.
fn zones_after(before: usize) -> String {
    let mut t = String::from("[firewall]\nname = \"many\"\ndefault = \"drop\"\n");
    for i in 0..before {
        let _ = writeln!(t, "[zones.a{i}]\nnetworks = [\"10.{}.{}.0/24\"]", i / 256, i % 256);
    }
    t.push_str(
        "[zones.internet]\n[zones.lan]\nnetworks = [\"192.0.2.0/24\"]\n[zones.dmz]\nnetworks = [\"198.51.100.0/24\"]\n\
         [interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n\
         [interfaces.lan]\ndevice = \"eth1\"\nzone = \"lan\"\n\
         [interfaces.dmz]\ndevice = \"eth2\"\nzone = \"dmz\"\n",
    );
    let last = before.saturating_sub(1);
    let addr_zone = if before > 0 { format!("\"a{last}\"") } else { "\"10.0.0.0/24\"".into() };
    let _ = write!(
        t,
        "[[rules]]\nname = \"ssh-by-address\"\nfrom = [\"0.0.0.0/0\", \"::/0\"]\nto = \"self\"\nallow = [\"ssh\"]\n\
         [[rules]]\nname = \"no-ssh-from-internet\"\nfrom = \"internet\"\nto = \"self\"\ndeny = [\"ssh\"]\n\
         [[rules]]\nname = \"lan-out\"\nfrom = \"lan\"\nto = \"internet\"\nallow = [\"https\"]\n\
         [[rules]]\nname = \"web\"\nfrom = \"any\"\nto = \"dmz\"\nallow = [\"http\"]\n\
         [[rules]]\nname = \"no-web-from-internet\"\nfrom = \"internet\"\nto = \"dmz\"\ndeny = [\"http\"]\n\
         [[rules]]\nname = \"customer-dns\"\nfrom = {addr_zone}\nto = \"dmz\"\nallow = [\"dns\"]\n\
         [[rules]]\nname = \"dmz-ping\"\nfrom = \"dmz\"\nto = [\"lan\", \"self\"]\nallow = [\"ping\"]\n"
    );
    t
}

/// Every hook × device × address × service combination of [`zones_after`]'s policy.
fn zone_grid(before: usize) -> Vec<Packet> {
    let devs = [None, Some("eth0"), Some("eth1"), Some("eth2"), Some("unknown0"), Some("lo")];
    let last = before.saturating_sub(1);
    let customer = format!("10.{}.{}.9", last / 256, last % 256);
    let addrs: Vec<IpAddr> = ["203.0.113.5", "192.0.2.10", "198.51.100.10", customer.as_str()].iter().map(|a| a.parse().unwrap()).collect();
    let services = [(Proto::Tcp, 22u16), (Proto::Tcp, 443), (Proto::Tcp, 80), (Proto::Udp, 53), (Proto::Icmp, 8)];
    let mut out = vec![];
    for hook in [Hook::Input, Hook::Forward, Hook::Output] {
        for iif in devs {
            for oif in devs {
                if (hook == Hook::Output) != iif.is_none() || (hook == Hook::Input) != oif.is_none() {
                    continue;
                }
                for &src in &addrs {
                    for &dst in &addrs {
                        for &(proto, port) in &services {
                            out.push(Packet { hook, iif: iif.map(String::from), oif: oif.map(String::from), src, dst, proto, port });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Issue 9: zone context ids were a `u8` (`3 + zone index`), so an interface zone
/// declared after 252 others wrapped onto the id of the appliance, of "other" or of
/// another zone, and every rule side naming it compiled to nothing: the zone-based
/// deny of SSH from the internet vanished while the address-based allow stayed.
/// For interface zones at every position around and past the old width, the
/// compiled structure must give the evaluator's verdict on every packet.
#[test]
fn interface_zones_declared_after_252_others_keep_their_rules() {
    let today = Date { year: 2026, month: 11, day: 23 };
    for before in [0, 249, 250, 252, 253, 254, 255, 256, 300, 509, 1000] {
        let text = zones_after(before);
        let loaded = load_str("many.toml", &text, today);
        assert!(!loaded.has_errors(), "{before} zones before: {:?}", loaded.diags);
        let p = loaded.policy.unwrap();
        let compiled = compile(&p, Capabilities { flowtable: false }).expect("compiles");
        let sim = Sim::new(&compiled.decision);
        for pkt in zone_grid(before) {
            let (want, got) = (evaluate(&p, &pkt), sim.run(&p, &pkt));
            assert_eq!(got.verdict, want.verdict, "{before} zones before: {pkt:?}\nreference: {want:?}\ncompiled: {got:?}");
        }
        // The case the issue reports: SSH from the internet to the appliance.
        let ssh = Packet { hook: Hook::Input, iif: Some("eth0".into()), oif: None, src: "203.0.113.5".parse().unwrap(), dst: "192.0.2.1".parse().unwrap(), proto: Proto::Tcp, port: 22 };
        assert_eq!(sim.run(&p, &ssh).verdict, Verdict::Drop, "{before} zones before: denied SSH from the internet gets through");
    }
}

/// An address somewhere in a generated policy ([`fwctl::gen::policy`]): a host's,
/// a partner's, a customer zone's, an extra interface zone's, or the internet's.
fn gen_addr(rng: &mut Rng, shape: &fwctl::gen::Shape, v6: bool) -> IpAddr {
    let text = match rng.below(6) {
        0 | 1 => {
            // Hosts: 10.Z.x.y / fd00:Z::x:y for Z in 1..=4 (see gen::host_addr).
            let (z, n) = (1 + rng.below(4), 1 + rng.below((shape.hosts / 4).max(1)));
            if v6 { format!("fd00:{z}::{:x}:{:x}", n / 250, n % 250 + 1) } else { format!("10.{z}.{}.{}", n / 250, n % 250 + 1) }
        }
        2 if shape.zones > 0 => {
            let i = rng.below(shape.zones);
            let (a4, a6) = fwctl::gen::customer_net(i);
            if v6 { a6.replace("::/64", "::9") } else { a4.replace(".0/24", ".9") }
        }
        3 if shape.iface_zones > 0 => {
            let j = rng.below(shape.iface_zones);
            let (a4, a6) = fwctl::gen::iface_zone_net(j);
            if v6 { a6.replace("::/64", "::9") } else { a4.replace(".0/24", ".9") }
        }
        4 => {
            let p = rng.below(shape.partners);
            if v6 { "2001:db8:ffff::9".into() } else { format!("10.{}.{}.{}", 128 + p / 4096, (p / 16) % 256, (p % 16) * 16 + 3) }
        }
        _ => if v6 { "2001:db8:77::1".into() } else { "203.0.113.77".into() },
    };
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Policies past every field width of the compiled structure — more than 255
/// zones (the interface zones declared last), tens of interfaces, thousands of
/// hosts, hundreds of groups — compile to a structure that gives the reference
/// evaluator's verdict on random packets between their addresses and devices.
#[test]
fn large_generated_policies_agree_with_reference_evaluator() {
    use fwctl::gen::Shape;
    let seed: u64 = std::env::var("FWCTL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("property seed: {seed} (rerun with FWCTL_SEED={seed})");
    let mut rng = Rng(seed);
    let today = Date { year: 2026, month: 11, day: 23 };
    let shapes = [
        Shape { zones: 300, iface_zones: 3, ..Shape::for_rules(200) },
        Shape { zones: 260, iface_zones: 40, ..Shape::for_rules(600) },
        Shape { zones: 1200, iface_zones: 12, hosts: 3000, groups: 300, ..Shape::for_rules(1500) },
        Shape { zones: 0, iface_zones: 300, ..Shape::for_rules(400) },
    ];
    let (mut checked, mut accepted) = (0, 0);
    for (case, shape) in shapes.iter().enumerate() {
        let text = fwctl::gen::policy(shape, rng.next() | 1);
        let loaded = load_str("gen.toml", &text, today);
        assert!(!loaded.has_errors(), "case {case}: generated policy is invalid: {:?}", loaded.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
        let p = loaded.policy.unwrap();
        assert!(p.zones.len() > 255, "case {case}: {} zones", p.zones.len());
        let compiled = compile(&p, Capabilities { flowtable: false }).expect("compiles");
        let sim = Sim::new(&compiled.decision);
        let mut devs: Vec<String> = (0..5).map(|i| format!("eth{i}")).collect();
        devs.extend((0..shape.iface_zones).map(|j| format!("ex{j}")));
        devs.push("unknown0".into());
        // Half the packets come from the rules themselves: a flow between one rule's
        // source and another's (often the same rule's) destination, for one of its
        // services, with the devices and addresses the policy gives those endpoints.
        let active: Vec<&fwctl::model::Rule> = p.rules.iter().filter(|r| r.active()).collect();
        for _ in 0..1000 {
            let (a, b) = (*rng.pick(&active), if rng.chance(70) { None } else { Some(*rng.pick(&active)) });
            let (from, to) = (rng.pick(&a.from_text).clone(), rng.pick(&b.unwrap_or(a).to_text).clone());
            let svc = rng.pick(&a.service_text).clone();
            let Some(flow) = fwctl::lab::plan::flow(&p, &from, &to, &svc) else { continue };
            for pkt in fwctl::eval::flow_packets(&p, &flow).into_iter().take(4) {
                let (want, got) = (evaluate(&p, &pkt), sim.run(&p, &pkt));
                assert_eq!(got.verdict, want.verdict, "seed {seed} case {case}: verdicts differ for {pkt:?} ({from} → {to} {svc})\nreference: {want:?}\ncompiled: {got:?}");
                checked += 1;
                accepted += usize::from(want.verdict == Verdict::Accept);
            }
        }
        for _ in 0..1500 {
            let hook = *rng.pick(&[Hook::Input, Hook::Forward, Hook::Forward, Hook::Output]);
            let v6 = rng.chance(40);
            let (proto, port) = match rng.below(6) {
                0 => (Proto::Udp, *rng.pick(&[53u16, 123, 161, 9500, 9517])),
                1 => (if v6 { Proto::Icmpv6 } else { Proto::Icmp }, if v6 { 128 } else { 8 }),
                _ => (Proto::Tcp, *rng.pick(&[22u16, 80, 443, 3306, 1433, 3389, 636, 25, 9001, 9017, 20002, 20100, 20104])),
            };
            let iif = (hook != Hook::Output).then(|| rng.pick(&devs).clone());
            let oif = (hook != Hook::Input).then(|| rng.pick(&devs).clone());
            let pkt = Packet { hook, iif, oif, src: gen_addr(&mut rng, shape, v6), dst: gen_addr(&mut rng, shape, v6), proto, port };
            let (want, got) = (evaluate(&p, &pkt), sim.run(&p, &pkt));
            assert_eq!(got.verdict, want.verdict, "seed {seed} case {case}: verdicts differ for {pkt:?}\nreference: {want:?}\ncompiled: {got:?}");
            checked += 1;
            accepted += usize::from(want.verdict == Verdict::Accept);
        }
    }
    eprintln!("checked {checked} (policy, packet) pairs, {accepted} accepted");
    assert!(accepted * 50 > checked && accepted * 10 < checked * 9, "accepted {accepted} of {checked}");
}
