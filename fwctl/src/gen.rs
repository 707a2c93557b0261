//! Generator of large, realistic policies for benchmarks and scale tests.
//!
//! Input: a rule count and a seed. Output: policy TOML text shaped like an
//! enterprise rulebase: internal zones with networks, thousands of hosts in role
//! groups (some hosts in two groups), partner networks, custom services, and a
//! mix of rule kinds — group→group, host→host, partner→service, zone→public
//! servers, servers→internet, and deny exceptions. Optionally shaped like a
//! hosting site too: one address-only zone per customer, declared before every
//! interface zone (so the interface zones get the highest zone ids), and more
//! interface zones, with rules between them.
//! Must not: depend on anything but its inputs (same input, same text).

use std::fmt::Write as _;

pub struct Shape {
    pub rules: usize,
    pub hosts: usize,
    pub groups: usize,
    pub partners: usize,
    pub services: usize,
    /// Address-only customer zones `c0`, `c1`, … (at most [`MAX_CUSTOMER_ZONES`]),
    /// declared before every interface zone.
    pub zones: usize,
    /// Interface zones `x0`, `x1`, … (device `ex0`, …; at most
    /// [`MAX_EXTRA_IFACE_ZONES`]) besides the five fixed ones, declared last.
    pub iface_zones: usize,
}

pub const MAX_CUSTOMER_ZONES: usize = 64 * 256;
pub const MAX_EXTRA_IFACE_ZONES: usize = 16 * 256;

impl Shape {
    pub fn for_rules(rules: usize) -> Shape {
        let hosts = (rules / 5).clamp(60, 20_000);
        Shape { rules, hosts, groups: (hosts / 10).max(6), partners: (rules / 20).clamp(4, 5_000), services: 40, zones: 0, iface_zones: 0 }
    }
}

/// Customer zone `i`'s networks: 10.(64 + i / 256).(i % 256).0/24 and fd01:i::/64.
pub fn customer_net(i: usize) -> (String, String) {
    (format!("10.{}.{}.0/24", 64 + i / 256, i % 256), format!("fd01:{i:x}::/64"))
}

/// Extra interface zone `j`'s networks: 10.(160 + j / 256).(j % 256).0/24 and fd02:j::/64.
pub fn iface_zone_net(j: usize) -> (String, String) {
    (format!("10.{}.{}.0/24", 160 + j / 256, j % 256), format!("fd02:{j:x}::/64"))
}

/// A small deterministic xorshift generator (seeded; the seed must not be 0), for
/// generated policies and the property tests.
pub struct Rng(pub u64);
impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const ZONES: [(&str, &str, u8); 4] = [("dmz", "eth1", 1), ("lan", "eth2", 2), ("servers", "eth3", 3), ("mgmt", "eth4", 4)];
const BUILTIN: [&str; 10] = ["ssh", "http", "https", "dns", "ntp", "mysql", "mssql", "rdp", "ldaps", "smtp"];

/// Host `i`: zone index and addresses (10.Z.x.y and fd00:Z::x:y).
fn host_addr(i: usize) -> (usize, String, String) {
    let z = i % ZONES.len();
    let n = i / ZONES.len() + 1;
    let (hi, lo) = (n / 250, n % 250 + 1);
    (z, format!("10.{}.{}.{}", ZONES[z].2, hi, lo), format!("fd00:{}::{:x}:{:x}", ZONES[z].2, hi, lo))
}

pub fn policy(shape: &Shape, seed: u64) -> String {
    let mut r = Rng(seed | 1);
    let mut t = String::with_capacity(shape.rules * 160);
    let _ = writeln!(t, "version = 1\n[firewall]\nname = \"generated\"\ndefault = \"drop\"\nlog_default = true\n");
    let (zones, iface_zones) = (shape.zones.min(MAX_CUSTOMER_ZONES), shape.iface_zones.min(MAX_EXTRA_IFACE_ZONES));
    for i in 0..zones {
        let (a4, a6) = customer_net(i);
        let _ = writeln!(t, "[zones.c{i}]\nnetworks = [\"{a4}\", \"{a6}\"]");
    }
    let _ = writeln!(t, "[interfaces.wan]\ndevice = \"eth0\"\nzone = \"internet\"\n[zones.internet]\n");
    for (z, dev, n) in ZONES {
        let _ = writeln!(t, "[interfaces.{z}]\ndevice = \"{dev}\"\nzone = \"{z}\"\n[zones.{z}]\nnetworks = [\"10.{n}.0.0/16\", \"fd00:{n}::/48\"]\n");
    }
    for j in 0..iface_zones {
        let (a4, a6) = iface_zone_net(j);
        let _ = writeln!(t, "[interfaces.x{j}]\ndevice = \"ex{j}\"\nzone = \"x{j}\"\n[zones.x{j}]\nnetworks = [\"{a4}\", \"{a6}\"]\n");
    }
    let _ = writeln!(t, "[hosts]");
    for i in 0..shape.hosts {
        let (_, a4, a6) = host_addr(i);
        let _ = writeln!(t, "h{i} = [\"{a4}\", \"{a6}\"]");
    }
    // Role groups partition the hosts; 5% of hosts are also in a second group.
    let mut members: Vec<Vec<usize>> = vec![vec![]; shape.groups];
    for i in 0..shape.hosts {
        members[i % shape.groups].push(i);
        if r.below(20) == 0 {
            members[r.below(shape.groups)].push(i);
        }
    }
    let _ = writeln!(t, "\n[groups]");
    for (g, m) in members.iter().enumerate() {
        let list = m.iter().map(|h| format!("\"h{h}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(t, "g{g} = [{list}]");
    }
    for p in 0..shape.partners {
        // Partner networks: /28s in a range kept apart from internal zones.
        let _ = writeln!(t, "p{p} = [\"10.{}.{}.{}/28\"]", 128 + p / 4096, (p / 16) % 256, (p % 16) * 16);
    }
    let _ = writeln!(t, "\n[services]");
    for s in 0..shape.services {
        if s % 5 == 0 {
            let _ = writeln!(t, "svc{s} = {{ tcp = [\"{}-{}\"] }}", 20000 + s * 10, 20000 + s * 10 + 4);
        } else {
            let _ = writeln!(t, "svc{s} = {{ tcp = [{}], udp = [{}] }}", 9000 + s, 9500 + s);
        }
    }
    let svc = |r: &mut Rng| -> String {
        let n = 1 + r.below(2);
        (0..n).map(|_| if r.below(3) == 0 { format!("\"{}\"", BUILTIN[r.below(BUILTIN.len())]) } else { format!("\"svc{}\"", r.below(shape.services)) }).collect::<Vec<_>>().join(", ")
    };
    let public = (shape.hosts / 50).max(2);
    for i in 0..shape.rules {
        let k = r.below(100);
        let (from, to, verb) = match k {
            0..=54 => (format!("\"g{}\"", r.below(shape.groups)), format!("\"g{}\"", r.below(shape.groups)), "allow"),
            55..=69 => (format!("\"h{}\"", r.below(shape.hosts)), format!("\"h{}\"", r.below(shape.hosts)), "allow"),
            70..=84 => (format!("\"p{}\"", r.below(shape.partners)), format!("[\"g{}\", \"h{}\"]", r.below(shape.groups), r.below(shape.hosts)), "allow"),
            85..=92 => ("\"internet\"".to_string(), format!("\"h{}\"", r.below(public)), "allow"),
            93..=94 => (format!("\"g{}\"", r.below(shape.groups)), "\"internet\"".to_string(), "allow"),
            _ => (format!("\"h{}\"", r.below(shape.hosts)), format!("\"g{}\"", r.below(shape.groups)), "deny"),
        };
        // With customer or extra interface zones, a fifth of the rules name them
        // (no draw otherwise: the policies without them stay the same).
        let (from, to, verb) = if zones + iface_zones > 0 && r.below(5) == 0 {
            let zone = |r: &mut Rng| {
                let n = r.below(zones + iface_zones);
                if n < zones { format!("\"c{n}\"") } else { format!("\"x{}\"", n - zones) }
            };
            match r.below(5) {
                0 => (zone(&mut r), format!("\"h{}\"", r.below(public)), "allow"),
                1 => ("\"internet\"".to_string(), zone(&mut r), "deny"),
                2 => ("[\"0.0.0.0/0\", \"::/0\"]".to_string(), zone(&mut r), "allow"),
                3 => (zone(&mut r), zone(&mut r), "allow"),
                _ => (format!("\"g{}\"", r.below(shape.groups)), zone(&mut r), "deny"),
            }
        } else {
            (from, to, verb)
        };
        let log = if verb == "deny" && i % 97 == 0 { "\nlog = true" } else { "" };
        let _ = writeln!(t, "\n[[rules]]\nname = \"r{i}\"\nfrom = {from}\nto = {to}\n{verb} = [{}]\nowner = \"team{}\"{log}", svc(&mut r), i % 17);
    }
    t
}

/// Customer zone `i` of [`hosting_site`]: its IPv6 network (2001:db8:c:i::/64) and,
/// for the first 64, an IPv4 /30 in 198.51.100.0/24 (documentation addresses only,
/// so the lab can bring it up).
fn hosting_customer_nets(i: usize) -> Vec<String> {
    let mut v = vec![format!("2001:db8:c:{i:x}::/64")];
    if i < 64 {
        v.push(format!("198.51.100.{}/30", 4 * i));
    }
    v
}

/// A hosting site's policy directory, as (file name, text): `customers.toml` declares
/// one address-only zone per customer and sorts before `network.toml`, which declares
/// the interface zones (`internet`, `rack`, `mgmt`): their zone indexes are
/// `customers`, `customers + 1`, `customers + 2`. Rules mix zone-based denies with
/// address-based allows (SSH to the appliance is allowed from every address and
/// denied from the internet zone), and `[[tests]]` state what must hold. Only
/// documentation addresses, so `fwctl lab` can run it.
pub fn hosting_site(customers: usize) -> Vec<(String, String)> {
    let customers = customers.max(1);
    let mut c = String::from("# One address-only zone per customer (declared before the network).\n");
    for i in 0..customers {
        let nets = hosting_customer_nets(i).iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(c, "[zones.cust{i}]\nnetworks = [{nets}]");
    }
    let last = customers - 1;
    let mut n = String::from(
        "[firewall]\nname = \"hosting\"\ndefault = \"drop\"\n\n\
         [interfaces.wan]\ndevice = \"wan0\"\nzone = \"internet\"\n\
         [interfaces.rack]\ndevice = \"rack0\"\nzone = \"rack\"\n\
         [interfaces.mgmt]\ndevice = \"mgmt0\"\nzone = \"mgmt\"\n\n\
         [zones.internet]\n\
         [zones.rack]\nnetworks = [\"192.0.2.0/25\", \"2001:db8:10::/64\"]\n\
         [zones.mgmt]\nnetworks = [\"203.0.113.0/28\", \"2001:db8:20::/64\"]\n\n\
         [hosts]\nweb1 = [\"192.0.2.10\", \"2001:db8:10::10\"]\ndb1 = [\"192.0.2.20\", \"2001:db8:10::20\"]\nadmin1 = [\"203.0.113.5\", \"2001:db8:20::5\"]\n\n",
    );
    let rules: [(&str, String, &str, &str, &str); 9] = [
        ("ssh-by-address", "[\"0.0.0.0/0\", \"::/0\"]".into(), "\"self\"", "allow", "\"ssh\""),
        ("no-ssh-from-internet", "\"internet\"".into(), "\"self\"", "deny", "\"ssh\""),
        ("public-web", "\"internet\"".into(), "\"web1\"", "allow", "\"http\", \"https\""),
        ("db-by-address", "[\"0.0.0.0/0\", \"::/0\"]".into(), "\"db1\"", "allow", "\"mysql\""),
        ("no-db-from-internet", "\"internet\"".into(), "\"rack\"", "deny", "\"mysql\""),
        ("admin-ping", "\"mgmt\"".into(), "[\"rack\", \"self\"]", "allow", "\"ping\""),
        ("rack-out", "\"rack\"".into(), "\"internet\"", "allow", "\"https\""),
        ("customer-first", "\"cust0\"".into(), "\"db1\"", "allow", "\"postgresql\""),
        ("no-web-for-last-customer", format!("\"cust{last}\""), "\"web1\"", "deny", "\"http\""),
    ];
    for (name, from, to, verb, svc) in rules {
        let _ = writeln!(n, "[[rules]]\nname = \"{name}\"\nfrom = {from}\nto = {to}\n{verb} = [{svc}]\n");
    }
    let tests: [(String, &str, &str, &str); 10] = [
        ("internet".into(), "self", "ssh", "deny"),
        ("mgmt".into(), "self", "ssh", "allow"),
        ("rack".into(), "self", "ssh", "allow"),
        ("internet".into(), "web1", "https", "allow"),
        ("internet".into(), "db1", "mysql", "deny"),
        ("mgmt".into(), "db1", "mysql", "allow"),
        ("mgmt".into(), "web1", "ping", "allow"),
        ("web1".into(), "internet", "https", "allow"),
        (format!("cust{last}"), "web1", "http", "deny"),
        (format!("cust{last}"), "web1", "https", "allow"),
    ];
    for (from, to, svc, expect) in tests {
        let _ = writeln!(n, "[[tests]]\nfrom = \"{from}\"\nto = \"{to}\"\nservice = \"{svc}\"\nexpect = \"{expect}\"\n");
    }
    vec![("customers.toml".into(), c), ("network.toml".into(), n)]
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_policies_are_valid_and_deterministic() {
        let shape = super::Shape::for_rules(300);
        let a = super::policy(&shape, 7);
        assert_eq!(a, super::policy(&shape, 7));
        let l = crate::check::load_str("gen.toml", &a, crate::model::Date { year: 2026, month: 11, day: 23 });
        assert!(!l.has_errors(), "{:?}", l.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
        assert_eq!(l.policy.unwrap().rules.len(), 300);
    }

    /// The hosting site's policy directory is valid, its interface zones come after
    /// every customer zone, and its [[tests]] hold in the reference evaluator.
    #[test]
    fn hosting_site_policy_is_valid_with_interface_zones_last() {
        let dir = std::env::temp_dir().join(format!("fwctl-hosting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in super::hosting_site(260) {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let l = crate::check::load(&dir, crate::model::Date { year: 2026, month: 11, day: 23 });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!l.has_errors(), "{:?}", l.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
        let p = l.policy.unwrap();
        assert_eq!(p.zones.len(), 263);
        assert_eq!(p.zones.iter().position(|z| !z.ifaces.is_empty()), Some(260));
        let results = crate::check::run_tests(&p);
        assert_eq!(results.len(), 10);
        assert!(crate::check::test_diagnostics(&p, &l.sm, &results).is_empty(), "every [[tests]] entry holds");
    }

    /// A hosting-site shape: hundreds of customer zones, then interface zones whose
    /// indexes are past every 8-bit id.
    #[test]
    fn generated_policies_with_many_zones_are_valid() {
        let shape = super::Shape { zones: 300, iface_zones: 20, ..super::Shape::for_rules(400) };
        let a = super::policy(&shape, 11);
        let l = crate::check::load_str("gen.toml", &a, crate::model::Date { year: 2026, month: 11, day: 23 });
        assert!(!l.has_errors(), "{:?}", l.diags.iter().filter(|d| d.is_error()).take(3).collect::<Vec<_>>());
        let p = l.policy.unwrap();
        assert_eq!(p.zones.len(), 300 + 5 + 20);
        assert!(p.zones.iter().position(|z| !z.ifaces.is_empty()).unwrap() >= 300, "interface zones come after the customer zones");
        assert!(p.rules.iter().any(|r| r.from.zones.iter().chain(&r.to.zones).any(|&z| z >= 300 + 5)), "rules name the extra interface zones");
    }
}
