//! The resolved policy: every name checked, every value validated, nothing raw left.
//!
//! Input: [`crate::policy::raw::RawPolicy`] (via [`resolve::resolve`]).
//! Output: [`Policy`], the only thing the evaluator and the compiler accept.
//! Must not: do I/O or read the clock (the caller passes `today`).

pub mod addr;
pub mod analyze;
#[cfg(test)]
mod hostile_tests;
pub mod resolve;
pub mod services;

use crate::diag::Span;
use addr::{AddrSet, Net};
pub use services::{Proto, ServiceSet};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub use crate::policy::raw::Date;

/// A kernel network device name: 1..=15 bytes, not "." or "..", none of '/', ':',
/// whitespace or control characters (the kernel's rules), and none of '*' (an nft
/// wildcard: `"eth*"` would match every `eth` device), '"' and '\\' (they end or
/// escape an nft string), nor invisible formatting characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn new(s: &str) -> Result<IfName, String> {
        if s.is_empty() || s.len() > 15 {
            return Err(format!("must be 1 to 15 bytes long (it is {})", s.len()));
        }
        if s == "." || s == ".." {
            return Err("`.` and `..` are not device names".into());
        }
        if let Some(c) = s.chars().find(|c| matches!(c, '/' | ':' | '"' | '\\' | '*') || c.is_whitespace() || !is_printable(*c)) {
            return Err(format!("may not contain {c:?}"));
        }
        Ok(IfName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character that shows as itself on a terminal: not a control character and
/// not an invisible formatting one (zero-width, bidirectional overrides, BOM),
/// which could make text read differently from what it is.
pub fn is_printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}' | '\u{ad}')
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type ZoneId = usize;
pub type IfaceId = usize;
pub type RuleId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultVerdict {
    Drop,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    Auto,
    Off,
    Required,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// An appliance interface: a physical one from `[interfaces]` or a VPN tunnel.
#[derive(Clone, Debug)]
pub struct Iface {
    pub key: String,
    pub device: IfName,
    pub zone: ZoneId,
    pub vpn: bool,
}

#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    pub ifaces: Vec<IfaceId>,
    /// `None`: the zone lists no networks (it matches by interface alone).
    pub networks: Option<AddrSet>,
    /// Anti-spoofing (default on): the zone's networks, used as a source, are
    /// authentic only on the zone's interfaces; elsewhere they are dropped.
    /// `false` (asymmetric routing): they may arrive on any interface.
    pub antispoof: bool,
    pub span: Span,
}

/// One side (`from` or `to`) of a rule, normalised.
///
/// Matches a packet when: `any`; or `self_` and the appliance is this end; or the
/// address is in `addrs` (address-only terms: hosts, groups, CIDRs, zones without
/// interfaces); or the packet uses an interface of one of `zones` (zones that have
/// interfaces) and, if that zone lists networks, the address is in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    pub any: bool,
    pub self_: bool,
    pub addrs: AddrSet,
    pub zones: Vec<ZoneId>,
    /// `addrs` split by how the policy named them, for the compiler's
    /// classification: hosts, peers and literal addresses/CIDRs (`fine`), groups
    /// and zones without interfaces (`coarse`). `addrs = fine ∪ coarse`.
    pub fine: AddrSet,
    pub coarse: AddrSet,
    /// Addresses that match only on interfaces of a zone (VPN peers: a peer's
    /// address is authentic only when it comes through the peer's tunnel).
    pub scoped: Vec<(ZoneId, AddrSet)>,
}

impl Side {
    pub fn is_empty(&self) -> bool {
        !self.any && !self.self_ && self.addrs.is_empty() && self.zones.is_empty() && self.scoped.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub span: Span,
    pub from: Side,
    pub to: Side,
    pub services: ServiceSet,
    pub action: Action,
    pub log: bool,
    pub expires: Option<Date>,
    pub expired: bool,
    pub comment: Option<String>,
    pub owner: Option<String>,
    /// As written, for reports.
    pub from_text: Vec<String>,
    pub to_text: Vec<String>,
    pub service_text: Vec<String>,
}

impl Rule {
    pub fn active(&self) -> bool {
        !self.expired
    }
}

/// A flow that must stay open (`firewall.management`) or a policy test.
#[derive(Clone, Debug)]
pub struct Flow {
    pub span: Span,
    pub from: Endpoint,
    pub to: Endpoint,
    pub probes: Vec<(Proto, u16)>,
    pub service_text: String,
    /// Extension (`in` / `out`): the ingress / egress device of every packet of
    /// the flow, declared or not (an undeclared device takes the ruleset's path
    /// for those); None: the device each address lives behind.
    pub iif: Option<IfName>,
    pub oif: Option<IfName>,
}

/// A test/management endpoint: what was written and the concrete addresses chosen.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub text: String,
    /// The appliance itself.
    pub is_self: bool,
    /// Concrete (address, interface) pairs to probe. The interface is the one the
    /// address lives behind (by zone), if any.
    pub points: Vec<(IpAddr, Option<IfaceId>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
pub struct Test {
    pub flow: Flow,
    pub expect: Expect,
}

/// Destination NAT (port forwarding).
#[derive(Clone, Debug)]
pub struct Dnat {
    pub name: String,
    pub span: Span,
    pub iface: IfaceId,
    pub destination: Option<IpAddr>,
    pub services: ServiceSet,
    pub service_text: String,
    pub to_v4: Option<std::net::Ipv4Addr>,
    pub to_v6: Option<std::net::Ipv6Addr>,
    pub to_text: String,
    pub to_port: Option<u16>,
}

/// Source NAT: `to = None` is masquerade.
#[derive(Clone, Debug)]
pub struct Snat {
    pub span: Span,
    pub from: Side,
    pub from_text: Vec<String>,
    pub out: IfaceId,
    pub to: Option<IpAddr>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", crate::util::base64_encode(&self.0))
    }
}

#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub span: Span,
    pub public_key: PublicKey,
    pub allowed_ips: Vec<Net>,
    pub endpoint: Option<String>,
    pub keepalive: Option<u16>,
    /// Path only; the key itself is never read by the model.
    pub preshared_key_file: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Vpn {
    pub name: IfName,
    pub span: Span,
    pub zone: ZoneId,
    pub iface: IfaceId,
    pub listen_port: u16,
    /// Interface addresses with their prefix length (host bits allowed).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Path only; the key itself is never read by the model.
    pub private_key_file: String,
    pub mtu: Option<u16>,
    pub peers: Vec<Peer>,
}

/// What a name in the address namespace refers to.
#[derive(Clone, Debug)]
pub enum Named {
    Zone(ZoneId),
    Host(AddrSet),
    /// The resolved side, and the members as written (tests pick one address per member).
    Group(Side, Vec<String>),
    /// A VPN peer: its allowed IPs, and the zone of its tunnel (None if the VPN
    /// itself is invalid). Peers match only through their tunnel's zone.
    Peer(AddrSet, Option<ZoneId>),
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub default: DefaultVerdict,
    pub log_default: bool,
    pub offload: Offload,
    pub management: Vec<Flow>,
    pub ifaces: Vec<Iface>,
    pub zones: Vec<Zone>,
    pub names: BTreeMap<String, (Named, Span)>,
    pub rules: Vec<Rule>,
    pub dnat: Vec<Dnat>,
    pub snat: Vec<Snat>,
    pub vpns: Vec<Vpn>,
    pub tests: Vec<Test>,
    /// Every address the policy names (zone networks, hosts, peers, groups, rule
    /// addresses, port-forward destinations): a "random internet address" avoids them.
    pub claimed: AddrSet,
}

impl Policy {
    /// Addresses of `nets` (one family) that no host, VPN peer or VPN interface
    /// uses, in order: the appliance takes the first, a zone's test
    /// representative the second, so neither collides with a named host.
    pub fn free_addrs(&self, nets: &AddrSet, v6: bool) -> Vec<IpAddr> {
        let used = |a: IpAddr| {
            self.names.values().any(|(n, _)| matches!(n, Named::Host(s) | Named::Peer(s, _) if s.contains(a)))
                || self.vpns.iter().any(|v| v.addresses.iter().any(|(x, _)| *x == a))
        };
        let mut out = vec![];
        let first: Option<IpAddr> = if v6 { nets.v6.ranges().first().map(|r| IpAddr::V6(r.0.into())) } else { nets.v4.ranges().first().map(|r| IpAddr::V4(r.0.into())) };
        let Some(base) = first else { return out };
        for k in 1..512u32 {
            let a = match base {
                IpAddr::V4(b) => IpAddr::V4(u32::from(b).wrapping_add(k).into()),
                IpAddr::V6(b) => IpAddr::V6(u128::from(b).wrapping_add(u128::from(k)).into()),
            };
            if nets.contains(a) && !used(a) {
                out.push(a);
                if out.len() == 2 {
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(base);
        }
        out
    }

    pub fn iface_by_device(&self, dev: &str) -> Option<IfaceId> {
        self.ifaces.iter().position(|i| i.device.as_str() == dev)
    }
    pub fn zone_of_device(&self, dev: &str) -> Option<ZoneId> {
        self.iface_by_device(dev).map(|i| self.ifaces[i].zone)
    }
    /// The interface an address most plausibly lives behind: the first interface of
    /// the zone whose networks contain it (most specific zone wins: the smallest
    /// range of its networks around the address, as a route's longest prefix),
    /// else the first interface of a zone that lists no networks (the "default
    /// route" zone).
    pub fn iface_for_addr(&self, a: IpAddr) -> Option<IfaceId> {
        let mut best: Option<(u128, IfaceId)> = None;
        for z in &self.zones {
            let (Some(nets), Some(&i)) = (&z.networks, z.ifaces.first()) else { continue };
            if nets.contains(a) {
                let size = match a {
                    IpAddr::V4(x) => nets.v4.ranges().iter().find(|(l, h)| *l <= u32::from(x) && u32::from(x) <= *h).map_or(0, |(l, h)| u128::from(h - l)),
                    IpAddr::V6(x) => nets.v6.ranges().iter().find(|(l, h)| *l <= u128::from(x) && u128::from(x) <= *h).map_or(0, |(l, h)| h - l),
                };
                if best.is_none_or(|(s, _)| size < s) {
                    best = Some((size, i));
                }
            }
        }
        if let Some((_, i)) = best {
            return Some(i);
        }
        self.zones.iter().find(|z| z.networks.is_none() && !z.ifaces.is_empty()).map(|z| z.ifaces[0])
    }
}
