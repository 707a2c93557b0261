//! Desired tunnel state and the minimal change that reaches it.
//!
//! Input: a resolved [`Vpn`] and [`Inputs`] the edge prepared (the appliance's
//! public key, fingerprints of preshared keys, resolved peer endpoints); the
//! tunnel's current [`DeviceState`].
//! Output: [`Desired`] (device, peers, and link: addresses, MTU, routes) and a
//! [`SetPlan`]: per-peer operations like `wg syncconf` — a new peer is added, a
//! removed one gets `remove=true`, a changed one is updated (`update_only`) or,
//! where the implementation cannot update in place, removed and re-added; an
//! unchanged peer is not mentioned, so its session is untouched. Never
//! `replace_peers`.
//! Must not: do I/O or hold a secret. A plan names key *files*; the key is read
//! only when the plan is executed ([`crate::vpn::WgApi::apply`]).

use super::uapi::{DeviceState, PeerState};
use crate::model::addr::Net;
use crate::model::{IfName, PublicKey, Vpn};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The tunnel MTU when the policy gives none: 1500 minus the largest WireGuard
/// overhead (IPv6 outer header), as wg-quick does. boringtun itself comes up at
/// 1500, which fragments every full-size packet on a 1500-byte path.
pub const DEFAULT_MTU: u16 = 1420;

/// What the edge learned before planning.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// Derived from the VPN's private key file.
    pub public_key: Option<PublicKey>,
    /// `preshared_key_file` path → [`super::keys::psk_fingerprint`] of its key.
    pub psk_fingerprints: BTreeMap<String, [u8; 32]>,
    /// Peer endpoint as written → resolved socket address.
    pub endpoints: BTreeMap<String, SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub name: String,
    pub public_key: PublicKey,
    /// Sorted, deduplicated.
    pub allowed_ips: Vec<Net>,
    pub endpoint: Option<SocketAddr>,
    /// `None` or `Some(0)`: off.
    pub keepalive: Option<u16>,
    pub psk_file: Option<String>,
    pub psk_fingerprint: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interface addresses with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    pub mtu: u16,
    /// Peers' allowed IPs that need a route through the tunnel (those outside
    /// the interface's own connected prefixes, which the kernel routes already).
    pub routes: Vec<Net>,
    /// Allowed IPs deliberately not routed: default routes (`/0`), which would
    /// take the appliance's own traffic into the tunnel; they need policy routing.
    pub unrouted: Vec<Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub iface: IfName,
    pub listen_port: u16,
    pub public_key: PublicKey,
    pub private_key_file: String,
    pub peers: Vec<DesiredPeer>,
    pub link: LinkConfig,
}

/// The network that contains `a`/`len` (host bits cleared).
pub fn net_of(a: IpAddr, len: u8) -> Net {
    match a {
        IpAddr::V4(a) => {
            let len = len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Net::V4(u32::from(a) & mask, len)
        }
        IpAddr::V6(a) => {
            let len = len.min(128);
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            Net::V6(u128::from(a) & mask, len)
        }
    }
}

/// Whether `inner` lies entirely within `outer`.
pub fn net_contains(outer: &Net, inner: &Net) -> bool {
    match (*outer, *inner) {
        (Net::V4(_, ol), Net::V4(ia, il)) => il >= ol && net_of(IpAddr::V4(ia.into()), ol) == *outer,
        (Net::V6(_, ol), Net::V6(ia, il)) => il >= ol && net_of(IpAddr::V6(ia.into()), ol) == *outer,
        _ => false,
    }
}

pub fn net_len(n: &Net) -> u8 {
    match *n {
        Net::V4(_, l) | Net::V6(_, l) => l,
    }
}

/// Always `addr/len`, also for single addresses (the UAPI and wg-quick want it).
pub fn net_cidr(n: &Net) -> String {
    match *n {
        Net::V4(a, l) => format!("{}/{l}", std::net::Ipv4Addr::from(a)),
        Net::V6(a, l) => format!("{}/{l}", std::net::Ipv6Addr::from(a)),
    }
}

fn sorted(mut v: Vec<Net>) -> Vec<Net> {
    v.sort();
    v.dedup();
    v
}

/// The desired state of `vpn`'s tunnel. Errors name what the edge failed to
/// provide (a key, a preshared key, an endpoint that did not resolve).
pub fn desired(vpn: &Vpn, inputs: &Inputs) -> Result<Desired, Vec<String>> {
    let mut errors = vec![];
    let public_key = inputs.public_key.clone();
    if public_key.is_none() {
        errors.push(format!("vpn `{}`: no public key (private_key_file {} not read)", vpn.name, vpn.private_key_file));
    }
    let mut peers = vec![];
    for p in &vpn.peers {
        let endpoint = match &p.endpoint {
            None => None,
            Some(e) => match inputs.endpoints.get(e) {
                Some(a) => Some(*a),
                None => {
                    errors.push(format!("peer `{}.{}`: endpoint `{e}` did not resolve", vpn.name, p.name));
                    None
                }
            },
        };
        let psk_fingerprint = match &p.preshared_key_file {
            None => None,
            Some(f) => match inputs.psk_fingerprints.get(f) {
                Some(fp) => Some(*fp),
                None => {
                    errors.push(format!("peer `{}.{}`: preshared key file {f} not read", vpn.name, p.name));
                    None
                }
            },
        };
        peers.push(DesiredPeer {
            name: p.name.clone(),
            public_key: p.public_key.clone(),
            allowed_ips: sorted(p.allowed_ips.clone()),
            endpoint,
            keepalive: p.keepalive.filter(|k| *k > 0),
            psk_file: p.preshared_key_file.clone(),
            psk_fingerprint,
        });
    }
    let connected: Vec<Net> = vpn.addresses.iter().map(|(a, l)| net_of(*a, *l)).collect();
    let (mut routes, mut unrouted) = (vec![], vec![]);
    for p in &peers {
        for n in &p.allowed_ips {
            if net_len(n) == 0 {
                unrouted.push(*n);
            } else if !connected.iter().any(|c| net_contains(c, n)) {
                routes.push(*n);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Desired {
        iface: vpn.name.clone(),
        listen_port: vpn.listen_port,
        public_key: public_key.expect("checked above"),
        private_key_file: vpn.private_key_file.clone(),
        peers,
        link: LinkConfig { addresses: vpn.addresses.clone(), mtu: vpn.mtu.unwrap_or(DEFAULT_MTU), routes: sorted(routes), unrouted: sorted(unrouted) },
    })
}

/// What differs in a peer that exists on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub allowed_ips: bool,
    pub endpoint: bool,
    pub keepalive: bool,
    pub psk: bool,
}

impl PeerChanges {
    pub fn any(&self) -> bool {
        self.allowed_ips || self.endpoint || self.keepalive || self.psk
    }
    fn words(&self) -> Vec<&'static str> {
        let mut w = vec![];
        if self.allowed_ips {
            w.push("allowed IPs");
        }
        if self.endpoint {
            w.push("endpoint");
        }
        if self.keepalive {
            w.push("keepalive");
        }
        if self.psk {
            w.push("preshared key");
        }
        w
    }
}

/// One peer operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOp {
    /// A peer the tunnel does not have.
    Add(DesiredPeer),
    /// Change only what differs (`update_only=true`); the session is kept.
    Update { peer: DesiredPeer, changes: PeerChanges },
    /// Remove and add again in the same request (implementations that cannot
    /// update in place); only this peer's session restarts.
    Replace { peer: DesiredPeer, changes: PeerChanges },
    /// A peer the policy no longer has (`remove=true`).
    Remove { public_key: PublicKey },
}

impl PeerOp {
    pub fn public_key(&self) -> &PublicKey {
        match self {
            PeerOp::Add(p) | PeerOp::Update { peer: p, .. } | PeerOp::Replace { peer: p, .. } => &p.public_key,
            PeerOp::Remove { public_key } => public_key,
        }
    }
}

/// The minimal change to a tunnel: what [`super::WgApi::apply`] executes and,
/// through [`SetPlan::describe`], what a person reads. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetPlan {
    /// Set the private key from this file (the tunnel has another key, or none).
    pub private_key_file: Option<String>,
    pub listen_port: Option<u16>,
    /// Removals first, then additions and updates (so allowed IPs can move from
    /// a removed peer to a new one in one request).
    pub peers: Vec<PeerOp>,
}

impl SetPlan {
    pub fn is_empty(&self) -> bool {
        self.private_key_file.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }

    /// One line per change, for people (no key material: public keys only).
    pub fn describe(&self, names: &BTreeMap<[u8; 32], String>) -> Vec<String> {
        let who = |k: &PublicKey| match names.get(&k.0) {
            Some(n) => format!("peer {n} ({})", super::keys::public_to_base64(k)),
            None => format!("peer {}", super::keys::public_to_base64(k)),
        };
        let mut out = vec![];
        if let Some(f) = &self.private_key_file {
            out.push(format!("set private key from {f}"));
        }
        if let Some(p) = self.listen_port {
            out.push(format!("set listen port {p}"));
        }
        for op in &self.peers {
            out.push(match op {
                PeerOp::Add(p) => format!("add {} allowed {}", who(&p.public_key), p.allowed_ips.iter().map(net_cidr).collect::<Vec<_>>().join(", ")),
                PeerOp::Update { peer, changes } => format!("update {}: {}", who(&peer.public_key), changes.words().join(", ")),
                PeerOp::Replace { peer, changes } => format!("re-add {} (changed: {})", who(&peer.public_key), changes.words().join(", ")),
                PeerOp::Remove { public_key } => format!("remove {}", who(public_key)),
            });
        }
        out
    }
}

fn compare(cur: &PeerState, want: &DesiredPeer) -> PeerChanges {
    let mut cur_ips = cur.allowed_ips.clone();
    cur_ips.sort();
    cur_ips.dedup();
    PeerChanges {
        allowed_ips: cur_ips != want.allowed_ips,
        // A peer without a configured endpoint roams: whatever the tunnel learned
        // is not a difference.
        endpoint: want.endpoint.is_some() && cur.endpoint != want.endpoint,
        keepalive: cur.keepalive.unwrap_or(0) != want.keepalive.unwrap_or(0),
        psk: cur.psk_fingerprint != want.psk_fingerprint,
    }
}

/// The minimal [`SetPlan`] that turns `current` into `desired`.
/// `update_in_place`: the implementation supports `update_only` (see
/// [`super::WgApi::updates_in_place`]); otherwise a changed peer is replaced.
pub fn diff(current: &DeviceState, desired: &Desired, update_in_place: bool) -> SetPlan {
    let mut plan = SetPlan::default();
    if current.public_key.as_ref() != Some(&desired.public_key) {
        plan.private_key_file = Some(desired.private_key_file.clone());
    }
    if current.listen_port != desired.listen_port {
        plan.listen_port = Some(desired.listen_port);
    }
    let want: BTreeMap<&[u8; 32], &DesiredPeer> = desired.peers.iter().map(|p| (&p.public_key.0, p)).collect();
    let have: BTreeMap<&[u8; 32], &PeerState> = current.peers.iter().map(|p| (&p.public_key.0, p)).collect();
    for p in &current.peers {
        if !want.contains_key(&p.public_key.0) {
            plan.peers.push(PeerOp::Remove { public_key: p.public_key.clone() });
        }
    }
    for p in &desired.peers {
        match have.get(&p.public_key.0) {
            None => plan.peers.push(PeerOp::Add(p.clone())),
            Some(cur) => {
                let changes = compare(cur, p);
                if changes.any() {
                    plan.peers.push(if update_in_place { PeerOp::Update { peer: p.clone(), changes } } else { PeerOp::Replace { peer: p.clone(), changes } });
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::addr::parse_net;
    use crate::vpn::uapi::Flavor;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn peer(n: u8, ips: &[&str]) -> DesiredPeer {
        DesiredPeer {
            name: format!("p{n}"),
            public_key: key(n),
            allowed_ips: sorted(ips.iter().map(|s| parse_net(s).unwrap()).collect()),
            endpoint: None,
            keepalive: None,
            psk_file: None,
            psk_fingerprint: None,
        }
    }

    fn state_of(d: &Desired) -> DeviceState {
        DeviceState {
            flavor: Flavor::Standard,
            public_key: Some(d.public_key.clone()),
            listen_port: d.listen_port,
            fwmark: None,
            peers: d
                .peers
                .iter()
                .map(|p| PeerState {
                    public_key: p.public_key.clone(),
                    psk_fingerprint: p.psk_fingerprint,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.iter().rev().cloned().collect(),
                    keepalive: p.keepalive,
                    last_handshake: None,
                    rx_bytes: 7,
                    tx_bytes: 9,
                })
                .collect(),
        }
    }

    fn three() -> Desired {
        Desired {
            iface: IfName::new("wg0").unwrap(),
            listen_port: 51820,
            public_key: key(99),
            private_key_file: "/etc/fwctl/keys/wg0.key".into(),
            peers: vec![peer(1, &["10.200.0.2/32"]), peer(2, &["10.200.0.3/32", "fd00:200::3/128"]), peer(3, &["10.200.0.4/32", "192.0.2.0/24"])],
            link: LinkConfig { addresses: vec![], mtu: DEFAULT_MTU, routes: vec![], unrouted: vec![] },
        }
    }

    #[test]
    fn identical_state_needs_no_change() {
        let d = three();
        let plan = diff(&state_of(&d), &d, true);
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn changing_one_peer_touches_only_that_peer() {
        let d = three();
        let cur = state_of(&d);
        let mut want = d.clone();
        want.peers[1].allowed_ips.push(parse_net("10.200.0.9/32").unwrap());
        want.peers[1].allowed_ips.sort();
        want.peers[1].keepalive = Some(25);
        for (in_place, op) in [(true, "update"), (false, "replace")] {
            let plan = diff(&cur, &want, in_place);
            assert_eq!(plan.private_key_file, None);
            assert_eq!(plan.listen_port, None);
            assert_eq!(plan.peers.len(), 1, "{plan:?}");
            assert_eq!(plan.peers[0].public_key(), &key(2));
            let changes = PeerChanges { allowed_ips: true, keepalive: true, ..Default::default() };
            match (&plan.peers[0], op) {
                (PeerOp::Update { changes: c, .. }, "update") | (PeerOp::Replace { changes: c, .. }, "replace") => assert_eq!(*c, changes),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn removing_a_peer_removes_exactly_it() {
        let d = three();
        let cur = state_of(&d);
        let mut want = d.clone();
        want.peers.remove(0);
        let plan = diff(&cur, &want, true);
        assert_eq!(plan.peers, vec![PeerOp::Remove { public_key: key(1) }]);
        let text = plan.describe(&BTreeMap::new());
        assert_eq!(text.len(), 1);
        assert!(text[0].starts_with("remove peer "));
    }

    #[test]
    fn adding_and_removing_orders_removals_first_and_never_replaces_all() {
        let d = three();
        let cur = state_of(&d);
        let mut want = d.clone();
        want.peers.remove(2);
        want.peers.push(peer(4, &["10.200.0.4/32", "192.0.2.0/24"]));
        let plan = diff(&cur, &want, true);
        assert_eq!(plan.peers, vec![PeerOp::Remove { public_key: key(3) }, PeerOp::Add(want.peers[2].clone())]);
    }

    #[test]
    fn device_level_changes_are_only_what_differs() {
        let d = three();
        let mut cur = state_of(&d);
        cur.public_key = None;
        cur.listen_port = 40000;
        let plan = diff(&cur, &d, true);
        assert_eq!(plan.private_key_file.as_deref(), Some("/etc/fwctl/keys/wg0.key"));
        assert_eq!(plan.listen_port, Some(51820));
        assert!(plan.peers.is_empty());
    }

    #[test]
    fn roaming_endpoint_is_not_a_change_but_a_configured_one_is() {
        let d = three();
        let mut cur = state_of(&d);
        cur.peers[0].endpoint = Some("198.51.100.7:40000".parse().unwrap());
        assert!(diff(&cur, &d, true).is_empty());
        let mut want = d.clone();
        want.peers[0].endpoint = Some("198.51.100.7:51820".parse().unwrap());
        let plan = diff(&cur, &want, true);
        assert!(matches!(&plan.peers[..], [PeerOp::Update { changes: PeerChanges { endpoint: true, allowed_ips: false, keepalive: false, psk: false }, .. }]));
    }

    #[test]
    fn psk_change_is_seen_through_fingerprints() {
        let d = three();
        let cur = state_of(&d);
        let mut want = d.clone();
        want.peers[2].psk_file = Some("/k/p3.psk".into());
        want.peers[2].psk_fingerprint = Some([5; 32]);
        let plan = diff(&cur, &want, true);
        assert!(matches!(&plan.peers[..], [PeerOp::Update { changes: PeerChanges { psk: true, .. }, .. }]));
    }

    #[test]
    fn desired_routes_skip_connected_prefixes_and_default_routes() {
        let text = r#"
[zones.admins]
[zones.lan]
networks = ["192.0.2.0/24"]
[interfaces.lan]
device = "eth1"
zone = "lan"
[vpn.wg0]
zone = "admins"
addresses = ["10.200.0.1/24", "fd00:200::1/64"]
private_key_file = "/etc/fwctl/keys/wg0.key"
[[vpn.wg0.peers]]
name = "a"
public_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
allowed_ips = ["10.200.0.2/32", "198.51.100.0/24"]
endpoint = "192.0.2.7:51820"
keepalive = 25
[[vpn.wg0.peers]]
name = "b"
public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
allowed_ips = ["::/0"]
"#;
        let loaded = crate::check::load_str("t.toml", text, crate::model::Date { year: 2026, month: 1, day: 1 });
        let p = loaded.policy.unwrap_or_else(|| panic!("{:?}", loaded.diags));
        let vpn = &p.vpns[0];
        let mut inputs = Inputs { public_key: Some(key(9)), ..Default::default() };
        assert!(desired(vpn, &inputs).unwrap_err().iter().any(|e| e.contains("192.0.2.7:51820")));
        inputs.endpoints.insert("192.0.2.7:51820".into(), "192.0.2.7:51820".parse().unwrap());
        let d = desired(vpn, &inputs).unwrap();
        assert_eq!(d.link.mtu, DEFAULT_MTU);
        assert_eq!(d.link.routes, vec![parse_net("198.51.100.0/24").unwrap()]);
        assert_eq!(d.link.unrouted, vec![parse_net("::/0").unwrap()]);
        assert_eq!(d.peers[0].keepalive, Some(25));
        assert_eq!(d.peers[0].endpoint, Some("192.0.2.7:51820".parse().unwrap()));
    }
}
