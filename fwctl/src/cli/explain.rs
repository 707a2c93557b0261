//! `fwctl explain [PATH] --src A --dst B --proto P [--port N] [--in IF] [--out IF]`:
//! the verdict for one new connection, the rules that decide it, and the path taken.
use super::{OutputArgs, PolicyArgs, EXIT_FAIL, EXIT_OK, EXIT_USAGE};
use crate::eval::{appliance_addr, evaluate, port_forward, Hook, Packet, Reason, Verdict};
use crate::model::addr::parse_addr;
use crate::model::{IfName, Policy, Proto};
use clap::Args;
use std::net::IpAddr;

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Source address, or "self" for the appliance's own traffic
    #[arg(long)]
    pub src: String,
    /// Destination address, or "self" for traffic to the appliance
    #[arg(long)]
    pub dst: String,
    /// tcp, udp, icmp or icmpv6
    #[arg(long)]
    pub proto: String,
    /// Destination port (TCP/UDP) or ICMP type (default: echo request)
    #[arg(long)]
    pub port: Option<u16>,
    /// Ingress interface (device or [interfaces] key, or a device the policy does
    /// not declare); inferred from zone networks
    #[arg(long = "in")]
    pub iif: Option<String>,
    /// Egress interface (device or [interfaces] key, or a device the policy does
    /// not declare); inferred from zone networks
    #[arg(long = "out")]
    pub oif: Option<String>,
}

#[derive(serde::Serialize)]
struct RuleRef {
    name: String,
    file: String,
    line: usize,
}

#[derive(serde::Serialize)]
struct NatStep {
    forward: String,
    file: String,
    line: usize,
    original_dst: IpAddr,
    original_port: u16,
}

#[derive(serde::Serialize)]
struct Explanation {
    packet: Packet,
    iif_zone: Option<String>,
    oif_zone: Option<String>,
    nat: Option<NatStep>,
    verdict: Verdict,
    reason: Reason,
    allowed_by: Vec<RuleRef>,
    denied_by: Vec<RuleRef>,
    /// Anti-spoofing: the zones the source address belongs to, when it arrived elsewhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    source_zones: Vec<String>,
}

/// A device of the policy by `[interfaces]` key or device name; any other valid
/// device name is an undeclared device (the ruleset's path for those applies).
fn device(p: &Policy, s: &str) -> Result<String, String> {
    if let Some(i) = p.ifaces.iter().find(|i| i.key == s || i.device.as_str() == s) {
        return Ok(i.device.to_string());
    }
    IfName::new(s).map(|d| d.to_string()).map_err(|e| format!("error: `{}` is not a valid device name: {e}", s.escape_debug()))
}

pub fn exec(a: &ExplainArgs) -> u8 {
    // The arguments are checked before the policy is read: a usage error is one.
    let Some(proto) = Proto::parse(&a.proto) else {
        eprintln!("error: --proto must be tcp, udp, icmp or icmpv6");
        return EXIT_USAGE;
    };
    let parse = |s: &str| -> Option<Option<IpAddr>> { if s == "self" { Some(None) } else { parse_addr(s).ok().map(Some) } };
    let (Some(src), Some(dst)) = (parse(&a.src), parse(&a.dst)) else {
        eprintln!("error: --src and --dst take an IPv4/IPv6 address (not an IPv4-mapped IPv6 one) or \"self\"");
        return EXIT_USAGE;
    };
    if let (Some(Some(s)), Some(Some(d))) = (Some(src), Some(dst)) {
        if s.is_ipv4() != d.is_ipv4() {
            eprintln!("error: --src and --dst must be of the same address family");
            return EXIT_USAGE;
        }
    }
    if matches!((proto, src.or(dst)), (Proto::Icmp, Some(IpAddr::V6(_))) | (Proto::Icmpv6, Some(IpAddr::V4(_)))) {
        eprintln!("error: icmp goes with IPv4 addresses, icmpv6 with IPv6");
        return EXIT_USAGE;
    }
    let port = match (a.port, proto) {
        (Some(0), Proto::Tcp | Proto::Udp) => {
            eprintln!("error: --port must be 1..=65535 for tcp and udp");
            return EXIT_USAGE;
        }
        (Some(t), Proto::Icmp | Proto::Icmpv6) if t > 255 => {
            eprintln!("error: for icmp and icmpv6, --port is the ICMP type: 0..=255");
            return EXIT_USAGE;
        }
        (Some(p), _) => p,
        (None, Proto::Icmp) => 8,
        (None, Proto::Icmpv6) => 128,
        (None, _) => {
            eprintln!("error: --port is required for tcp and udp");
            return EXIT_USAGE;
        }
    };
    let loaded = crate::check::load(&a.policy.path, crate::sys::clock::today());
    if loaded.has_errors() {
        super::report(&loaded, &loaded.diags);
        return EXIT_FAIL;
    }
    let p = loaded.policy.as_ref().expect("no errors means a policy");
    let lookup = |name: &Option<String>| -> Result<Option<String>, String> {
        match name {
            None => Ok(None),
            Some(n) => device(p, n).map(Some),
        }
    };
    let (iif, oif) = match (lookup(&a.iif), lookup(&a.oif)) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let dev_of = |addr: IpAddr| p.iface_for_addr(addr).map(|i| p.ifaces[i].device.to_string());
    let v6 = src.or(dst).is_some_and(|x| x.is_ipv6());
    let (hook, src_a, mut dst_a, iif, mut oif) = match (src, dst) {
        (None, None) => {
            eprintln!("error: from self to self is loopback, always accepted");
            return EXIT_USAGE;
        }
        (None, Some(d)) => {
            let o = oif.or_else(|| dev_of(d));
            let oi = o.as_deref().and_then(|o| p.iface_by_device(o));
            (Hook::Output, appliance_addr(p, oi, v6), d, None, o)
        }
        (Some(s), None) => {
            let i = iif.or_else(|| dev_of(s));
            let ii = i.as_deref().and_then(|i| p.iface_by_device(i));
            (Hook::Input, s, appliance_addr(p, ii, v6), i, None)
        }
        (Some(s), Some(d)) => {
            let is_local = p.vpns.iter().any(|v| v.addresses.iter().any(|(a, _)| *a == d));
            let i = iif.or_else(|| dev_of(s));
            if is_local {
                (Hook::Input, s, d, i, None)
            } else {
                (Hook::Forward, s, d, i, oif.clone())
            }
        }
    };
    // Port forwarding happens before filtering: the filter sees the inside address.
    let mut nat = None;
    let mut final_port = port;
    if hook == Hook::Forward || hook == Hook::Input {
        if let Some(fw) = iif.as_deref().and_then(|i| port_forward(p, i, dst_a, proto, port)) {
            let f = &p.dnat[fw.forward];
            let pos = loaded.sm.position(f.span);
            nat = Some(NatStep { forward: f.name.clone(), file: pos.file, line: pos.line, original_dst: dst_a, original_port: port });
            dst_a = fw.dst;
            final_port = fw.port;
            if a.oif.is_none() {
                oif = None;
            }
        }
    }
    let hook = if nat.is_some() { Hook::Forward } else { hook };
    if hook == Hook::Forward && oif.is_none() {
        oif = dev_of(dst_a);
    }
    let pkt = Packet { hook, iif, oif, src: src_a, dst: dst_a, proto, port: final_port };
    let d = evaluate(p, &pkt);
    let refs = |v: &[usize]| -> Vec<RuleRef> {
        v.iter().map(|&r| {
            let pos = loaded.sm.position(p.rules[r].span);
            RuleRef { name: p.rules[r].name.clone(), file: pos.file, line: pos.line }
        }).collect()
    };
    let zone_of = |dev: &Option<String>| dev.as_deref().and_then(|d| p.zone_of_device(d)).map(|z| p.zones[z].name.clone());
    let source_zones = if d.reason == Reason::Spoofed {
        crate::eval::spoofed(p, &pkt).unwrap_or_default().into_iter().map(|z| p.zones[z].name.clone()).collect()
    } else {
        vec![]
    };
    let ex = Explanation {
        iif_zone: zone_of(&pkt.iif),
        oif_zone: zone_of(&pkt.oif),
        nat,
        verdict: d.verdict,
        reason: d.reason,
        allowed_by: refs(&d.allow),
        denied_by: refs(&d.deny),
        source_zones,
        packet: pkt,
    };
    if a.out.json {
        println!("{}", serde_json::to_string_pretty(&ex).expect("serializable"));
    } else {
        print!("{}", text(&ex));
    }
    EXIT_OK
}

fn text(ex: &Explanation) -> String {
    let pkt = &ex.packet;
    let side = |dev: &Option<String>, zone: &Option<String>| match (dev, zone) {
        (Some(d), Some(z)) => format!("{d} (zone {z})"),
        (Some(d), None) if d == "lo" => "lo (loopback)".to_string(),
        (Some(d), None) => format!("{d} (undeclared device: no zone)"),
        (None, _) => "?".to_string(),
    };
    let path = match pkt.hook {
        Hook::Input => format!("input: in {}, to the appliance", side(&pkt.iif, &ex.iif_zone)),
        Hook::Output => format!("output: from the appliance, out {}", side(&pkt.oif, &ex.oif_zone)),
        Hook::Forward => format!("forward: in {}, out {}", side(&pkt.iif, &ex.iif_zone), side(&pkt.oif, &ex.oif_zone)),
    };
    // Names and file names come from the policy: shown escaped (a file name may hold
    // terminal escapes; names are validated, this is belt and braces).
    let esc = crate::text::escape_terminal;
    let mut s = format!("packet   {} → {} {}/{}\npath     {path}\n", pkt.src, pkt.dst, pkt.proto.name(), pkt.port);
    if let Some(n) = &ex.nat {
        s.push_str(&format!("nat      port forward `{}` ({}:{}): {} port {} → {} port {}\n", esc(&n.forward), esc(&n.file), n.line, n.original_dst, n.original_port, pkt.dst, pkt.port));
    }
    let verdict = match ex.verdict {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
        Verdict::Reject => "reject",
    };
    let list = |v: &[RuleRef]| v.iter().map(|r| format!("`{}` ({}:{})", esc(&r.name), esc(&r.file), r.line)).collect::<Vec<_>>().join(", ");
    let why = match ex.reason {
        Reason::Loopback => "loopback traffic of the appliance is always accepted".to_string(),
        Reason::EssentialIcmp => "essential ICMP (errors, neighbour discovery) is always accepted".to_string(),
        Reason::Spoofed => format!(
            "spoofed: {} belongs to zone {} but arrived on {} (anti-spoofing drops it before any rule; `antispoof = false` on the zone turns this off)",
            pkt.src,
            ex.source_zones.iter().map(|z| format!("`{z}`")).collect::<Vec<_>>().join(" / "),
            pkt.iif.as_deref().unwrap_or("?")
        ),
        Reason::Denied => format!("denied by {}", list(&ex.denied_by)),
        Reason::Allowed => format!("allowed by {}", list(&ex.allowed_by)),
        Reason::Default if pkt.hook == Hook::Output => "the appliance's own traffic is accepted unless a rule denies it".to_string(),
        Reason::Default => "no rule allows it: firewall.default applies".to_string(),
    };
    s.push_str(&format!("verdict  {verdict} — {why}\n"));
    if ex.reason == Reason::Denied && !ex.allowed_by.is_empty() {
        s.push_str(&format!("note     also matched by allow {} (deny always wins)\n", list(&ex.allowed_by)));
    }
    s
}
