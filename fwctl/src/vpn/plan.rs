//! The tunnel part of `fwctl plan`: what `fwctl apply` is about to do to each
//! WireGuard tunnel, for a person and as JSON (pure).
//!
//! Input: per VPN of the new policy, its [`Desired`] state (or why it could not
//! be computed) and what runs now ([`Live`]: the tunnel's device state as its
//! UAPI or netlink reports it, and its link); the peer names of the new and the
//! applied policy.
//! Output: one [`TunnelPlan`] per tunnel that changes — to be started, changed
//! in place, stopped, or not plannable — listing peers added, removed and
//! changed (name and public key, each changed field from → to), device changes
//! (listen port, the appliance's key) and link changes (MTU, addresses, routes).
//! The per-peer part is [`desired::diff`]'s [`SetPlan`], the very change `apply`
//! executes; this module only describes it.
//! Must not: do I/O, or hold or print key material: public keys and key *file
//! paths* only; a preshared key shows as "set" / "none", never a fingerprint.

use super::desired::{self, net_cidr, Desired, DesiredPeer, PeerChanges, PeerOp, SetPlan};
use super::netlink::{link_ops, LinkObserved};
use super::uapi::{DeviceState, Flavor, PeerState};
use crate::model::PublicKey;
use std::collections::BTreeMap;

/// Peer names (`VPN.PEER`) by public key, from the new and the applied policy.
pub type Names = BTreeMap<[u8; 32], String>;

/// What runs now for one interface.
#[derive(Debug, Clone)]
pub enum Live {
    NotRunning,
    Running {
        /// "kernel", "userspace (boringtun)", "userspace".
        backend: &'static str,
        device: DeviceState,
        link: LinkObserved,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Nothing runs the tunnel: `apply` starts it.
    Start,
    /// The running tunnel is changed in place.
    Change,
    /// The applied policy had this VPN, the new one does not: `apply` stops it.
    Stop,
    /// The change could not be planned (a key file, an endpoint, the interface).
    Error,
}

/// One field of a peer, from → to ("" when there was nothing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerLine {
    /// `add`, `remove`, `update` (in place, the session is kept) or `re-add`
    /// (removed and added again: only this peer's session restarts).
    pub op: &'static str,
    /// `VPN.PEER`, when either policy names the key.
    pub name: Option<String>,
    pub public_key: String,
    pub changes: Vec<FieldChange>,
}

impl PeerLine {
    pub fn who(&self) -> String {
        match &self.name {
            Some(n) => format!("peer {n} ({})", self.public_key),
            None => format!("peer {}", self.public_key),
        }
    }

    pub fn text(&self) -> String {
        let fields = |sep: &str| self.changes.iter().map(|c| if c.from.is_empty() { format!("{} {}", c.field, c.to) } else { format!("{} {} → {}", c.field, c.from, c.to) }).collect::<Vec<_>>().join(sep);
        match self.op {
            "add" => format!("+ {}: {}", self.who(), fields("; ")),
            "remove" => format!("- {}", self.who()),
            "re-add" => format!("~ {}: {}  [re-added: this implementation cannot change a peer in place; its session restarts]", self.who(), fields("; ")),
            _ => format!("~ {}: {}", self.who(), fields("; ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelPlan {
    pub iface: String,
    pub action: Action,
    /// For `start`, the implementation that will run it; otherwise the one
    /// that runs it.
    pub backend: Option<String>,
    /// Listen port and the appliance's key.
    pub device: Vec<String>,
    pub peers: Vec<PeerLine>,
    /// MTU, link state, addresses, routes.
    pub link: Vec<String>,
    pub error: Option<String>,
}

impl TunnelPlan {
    pub fn error(iface: &str, message: String) -> TunnelPlan {
        TunnelPlan { iface: iface.to_string(), action: Action::Error, backend: None, device: vec![], peers: vec![], link: vec![], error: Some(message) }
    }

    pub fn stop(iface: &str, backend: &str) -> TunnelPlan {
        TunnelPlan { iface: iface.to_string(), action: Action::Stop, backend: Some(backend.to_string()), device: vec![], peers: vec![], link: vec![], error: None }
    }

    /// The section's lines for this tunnel (indented by the caller).
    pub fn lines(&self) -> Vec<String> {
        let backend = self.backend.as_deref().map(|b| format!(" ({b})")).unwrap_or_default();
        let head = match self.action {
            Action::Start => format!("{}: start{backend}", self.iface),
            Action::Change => format!("{}: change in place{backend}", self.iface),
            Action::Stop => format!("{}: stop{backend}: no longer in the policy", self.iface),
            Action::Error => format!("{}: cannot plan: {}", self.iface, self.error.as_deref().unwrap_or("?")),
        };
        let mut out = vec![head];
        out.extend(self.device.iter().map(|l| format!("  {l}")));
        out.extend(self.peers.iter().map(|p| format!("  {}", p.text())));
        out.extend(self.link.iter().map(|l| format!("  {l}")));
        out
    }
}

/// The text of the `tunnels:` section's body (two-space indent), or
/// "(no change)".
pub fn text(plans: &[TunnelPlan]) -> String {
    if plans.is_empty() {
        return "  (no change)\n".into();
    }
    plans.iter().flat_map(|t| t.lines()).map(|l| format!("  {l}\n")).collect()
}

fn key_text(k: &PublicKey) -> String {
    super::keys::public_to_base64(k)
}

fn ips(v: &[crate::model::addr::Net]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.iter().map(net_cidr).collect::<Vec<_>>().join(", ")
    }
}

fn keepalive(k: Option<u16>) -> String {
    match k.filter(|k| *k > 0) {
        Some(k) => format!("{k} s"),
        None => "off".into(),
    }
}

fn added(p: &DesiredPeer) -> Vec<FieldChange> {
    let mut v = vec![FieldChange { field: "allowed IPs", from: String::new(), to: ips(&p.allowed_ips) }];
    if let Some(e) = p.endpoint {
        v.push(FieldChange { field: "endpoint", from: String::new(), to: e.to_string() });
    }
    if let Some(k) = p.keepalive.filter(|k| *k > 0) {
        v.push(FieldChange { field: "keepalive", from: String::new(), to: format!("{k} s") });
    }
    if let Some(f) = &p.psk_file {
        v.push(FieldChange { field: "preshared key", from: String::new(), to: format!("from {f}") });
    }
    v
}

fn changed(cur: Option<&PeerState>, want: &DesiredPeer, c: &PeerChanges) -> Vec<FieldChange> {
    let mut v = vec![];
    if c.allowed_ips {
        let mut have = cur.map(|p| p.allowed_ips.clone()).unwrap_or_default();
        have.sort();
        have.dedup();
        v.push(FieldChange { field: "allowed IPs", from: ips(&have), to: ips(&want.allowed_ips) });
    }
    if c.endpoint {
        let from = cur.and_then(|p| p.endpoint).map(|e| e.to_string()).unwrap_or_else(|| "(none)".into());
        v.push(FieldChange { field: "endpoint", from, to: want.endpoint.map(|e| e.to_string()).unwrap_or_else(|| "(none)".into()) });
    }
    if c.keepalive {
        v.push(FieldChange { field: "keepalive", from: keepalive(cur.and_then(|p| p.keepalive)), to: keepalive(want.keepalive) });
    }
    if c.psk {
        let from = if cur.is_some_and(|p| p.psk_fingerprint.is_some()) { "set" } else { "none" };
        let to = match (&want.psk_file, from) {
            (Some(f), "set") => format!("another key, from {f}"),
            (Some(f), _) => format!("from {f}"),
            (None, _) => "none".into(),
        };
        v.push(FieldChange { field: "preshared key", from: from.into(), to });
    }
    v
}

/// Describe the per-peer part of `plan` (computed against `current`).
pub fn peer_lines(plan: &SetPlan, current: &DeviceState, names: &Names) -> Vec<PeerLine> {
    let cur: BTreeMap<&[u8; 32], &PeerState> = current.peers.iter().map(|p| (&p.public_key.0, p)).collect();
    plan.peers
        .iter()
        .map(|op| {
            let k = op.public_key();
            let (op_name, changes) = match op {
                PeerOp::Add(p) => ("add", added(p)),
                PeerOp::Remove { .. } => ("remove", vec![]),
                PeerOp::Update { peer, changes } => ("update", changed(cur.get(&k.0).copied(), peer, changes)),
                PeerOp::Replace { peer, changes } => ("re-add", changed(cur.get(&k.0).copied(), peer, changes)),
            };
            PeerLine { op: op_name, name: names.get(&k.0).cloned(), public_key: key_text(k), changes }
        })
        .collect()
}

/// The plan for one tunnel of the new policy, or None when it already runs
/// exactly as desired.
///
/// `start_backend`: what `apply` would start when nothing runs the tunnel.
/// `key_missing`: the private key file does not exist yet (`apply` creates
/// it); `want.public_key` is then meaningless and is not shown.
pub fn plan_tunnel(want: &Desired, live: &Live, start_backend: &str, key_missing: bool, names: &Names) -> Option<TunnelPlan> {
    let empty = DeviceState { flavor: Flavor::Standard, public_key: None, listen_port: 0, fwmark: None, peers: vec![] };
    let (action, backend, device, link) = match live {
        Live::NotRunning => (Action::Start, start_backend, &empty, None),
        Live::Running { backend, device, link } => (Action::Change, *backend, device, Some(link)),
    };
    // The same rule as the executing side (`WgApi::updates_in_place`).
    let set = desired::diff(device, want, device.flavor == Flavor::Standard && action == Action::Change);
    let mut dev = vec![];
    if action == Action::Start {
        dev.push(format!("listen port {}", want.listen_port));
    } else if let Some(p) = set.listen_port {
        dev.push(format!("listen port {} → {p}", device.listen_port));
    }
    if let Some(f) = &set.private_key_file {
        dev.push(match (action, key_missing, &device.public_key) {
            (_, true, _) => format!("private key: {f} does not exist and will be created (0600); every peer needs its new public key"),
            (Action::Start, false, _) => format!("private key from {f} (public key {})", key_text(&want.public_key)),
            (_, false, Some(old)) => format!("appliance key: public key {} → {} (from {f}); every peer needs the new public key", key_text(old), key_text(&want.public_key)),
            (_, false, None) => format!("private key from {f} (public key {})", key_text(&want.public_key)),
        });
    }
    let peers = peer_lines(&set, device, names);
    let link: Vec<String> = link_ops(link, &want.link).iter().map(|op| op.describe()).collect();
    if action == Action::Change && dev.is_empty() && peers.is_empty() && link.is_empty() {
        return None;
    }
    Some(TunnelPlan { iface: want.iface.to_string(), action, backend: Some(backend.to_string()), device: dev, peers, link, error: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::addr::parse_net;
    use crate::model::IfName;
    use crate::vpn::desired::{LinkConfig, DEFAULT_MTU};
    use crate::vpn::netlink::{Addr, Link, Route, RTPROT_FWCTL};

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn peer(n: u8, name: &str, ips: &[&str]) -> DesiredPeer {
        DesiredPeer {
            name: name.into(),
            public_key: key(n),
            allowed_ips: ips.iter().map(|s| parse_net(s).unwrap()).collect(),
            endpoint: None,
            keepalive: None,
            psk_file: None,
            psk_fingerprint: None,
        }
    }

    fn want() -> Desired {
        Desired {
            iface: IfName::new("wg0").unwrap(),
            listen_port: 51820,
            public_key: key(99),
            private_key_file: "/etc/fwctl/keys/wg0.key".into(),
            peers: vec![peer(1, "alice", &["10.200.0.2/32"]), peer(2, "bob", &["10.200.0.3/32"])],
            link: LinkConfig { addresses: vec![("10.200.0.1".parse().unwrap(), 24)], mtu: DEFAULT_MTU, routes: vec![], unrouted: vec![] },
        }
    }

    fn running(d: &Desired, flavor: Flavor) -> Live {
        let device = DeviceState {
            flavor,
            public_key: Some(d.public_key.clone()),
            listen_port: d.listen_port,
            fwmark: None,
            peers: d
                .peers
                .iter()
                .map(|p| PeerState { public_key: p.public_key.clone(), psk_fingerprint: p.psk_fingerprint, endpoint: p.endpoint, allowed_ips: p.allowed_ips.clone(), keepalive: p.keepalive, last_handshake: None, rx_bytes: 1, tx_bytes: 2 })
                .collect(),
        };
        let link = LinkObserved {
            link: Link { index: 7, up: true, mtu: u32::from(d.link.mtu), kind: None },
            addresses: d.link.addresses.iter().map(|(a, l)| Addr { addr: *a, prefix_len: *l, link_scope: false }).collect(),
            routes: d.link.routes.iter().map(|r| Route { dst: *r, protocol: RTPROT_FWCTL }).collect(),
        };
        Live::Running { backend: "userspace (boringtun)", device, link }
    }

    fn names() -> Names {
        [(key(1).0, "wg0.alice".to_string()), (key(2).0, "wg0.bob".to_string()), (key(3).0, "wg0.carol".to_string())].into_iter().collect()
    }

    fn b64(n: u8) -> String {
        key_text(&key(n))
    }

    #[test]
    fn a_tunnel_as_desired_has_no_plan() {
        let d = want();
        assert_eq!(plan_tunnel(&d, &running(&d, Flavor::Boringtun), "userspace", false, &names()), None);
    }

    #[test]
    fn removed_peer_is_named_from_the_applied_policy_and_the_other_is_not_mentioned() {
        let d = want();
        let live = running(&d, Flavor::Boringtun);
        let mut w = d.clone();
        w.peers.remove(0);
        let t = plan_tunnel(&w, &live, "userspace", false, &names()).expect("a change");
        assert_eq!(t.action, Action::Change);
        assert_eq!(t.peers, vec![PeerLine { op: "remove", name: Some("wg0.alice".into()), public_key: b64(1), changes: vec![] }]);
        assert_eq!(t.lines(), vec!["wg0: change in place (userspace (boringtun))".to_string(), format!("  - peer wg0.alice ({})", b64(1))]);
        assert!(!t.lines().concat().contains(&b64(2)), "bob is untouched");
    }

    #[test]
    fn changed_peer_shows_each_field_from_and_to() {
        let d = want();
        let mut w = d.clone();
        w.peers[1].keepalive = Some(25);
        w.peers[1].allowed_ips.push(parse_net("198.51.100.0/24").unwrap());
        w.peers[1].endpoint = Some("198.51.100.7:51820".parse().unwrap());
        w.peers[1].psk_file = Some("/k/bob.psk".into());
        w.peers[1].psk_fingerprint = Some([4; 32]);
        // boringtun: re-added; a standard implementation: updated in place.
        for (flavor, op) in [(Flavor::Boringtun, "re-add"), (Flavor::Standard, "update")] {
            let t = plan_tunnel(&w, &running(&d, flavor), "userspace", false, &names()).unwrap();
            assert_eq!(t.peers.len(), 1);
            let p = &t.peers[0];
            assert_eq!((p.op, p.name.as_deref()), (op, Some("wg0.bob")));
            let f: Vec<(&str, &str, &str)> = p.changes.iter().map(|c| (c.field, c.from.as_str(), c.to.as_str())).collect();
            assert_eq!(
                f,
                vec![
                    ("allowed IPs", "10.200.0.3/32", "10.200.0.3/32, 198.51.100.0/24"),
                    ("endpoint", "(none)", "198.51.100.7:51820"),
                    ("keepalive", "off", "25 s"),
                    ("preshared key", "none", "from /k/bob.psk"),
                ]
            );
        }
        // The route for the new allowed IPs is a link change.
        let mut w2 = d.clone();
        w2.link.routes = vec![parse_net("198.51.100.0/24").unwrap()];
        w2.link.mtu = 1380;
        let t = plan_tunnel(&w2, &running(&d, Flavor::Boringtun), "userspace", false, &names()).unwrap();
        assert_eq!(t.link, vec!["mtu 1420 → 1380".to_string(), "add route 198.51.100.0/24".to_string()]);
    }

    #[test]
    fn not_running_means_start_with_everything() {
        let d = want();
        let t = plan_tunnel(&d, &Live::NotRunning, "userspace", false, &names()).unwrap();
        assert_eq!(t.action, Action::Start);
        assert_eq!(t.device, vec!["listen port 51820".to_string(), format!("private key from /etc/fwctl/keys/wg0.key (public key {})", b64(99))]);
        assert_eq!(t.peers.iter().map(|p| (p.op, p.name.clone().unwrap())).collect::<Vec<_>>(), vec![("add", "wg0.alice".into()), ("add", "wg0.bob".into())]);
        assert_eq!(t.link, vec!["mtu 1420".to_string(), "link up".into(), "add address 10.200.0.1/24".into()]);
        assert_eq!(t.lines()[3], format!("  + peer wg0.alice ({}): allowed IPs 10.200.0.2/32", b64(1)));
        // A missing key file: created by apply; no public key shown.
        let t = plan_tunnel(&d, &Live::NotRunning, "userspace", true, &names()).unwrap();
        assert!(t.device[1].contains("will be created (0600)") && !t.device[1].contains(&b64(99)), "{:?}", t.device);
    }

    #[test]
    fn new_appliance_key_names_both_public_keys() {
        let d = want();
        let mut w = d.clone();
        w.public_key = key(98);
        w.private_key_file = "/etc/fwctl/keys/wg0-2027.key".into();
        let t = plan_tunnel(&w, &running(&d, Flavor::Boringtun), "userspace", false, &names()).unwrap();
        assert_eq!(t.device, vec![format!("appliance key: public key {} → {} (from /etc/fwctl/keys/wg0-2027.key); every peer needs the new public key", b64(99), b64(98))]);
        assert!(t.peers.is_empty());
    }

    #[test]
    fn link_ops_leave_foreign_routes_and_link_local_addresses_alone() {
        let d = want();
        let Live::Running { mut link, .. } = running(&d, Flavor::Boringtun) else { unreachable!() };
        link.addresses.push(Addr { addr: "fe80::1".parse().unwrap(), prefix_len: 64, link_scope: true });
        link.addresses.push(Addr { addr: "10.9.9.1".parse().unwrap(), prefix_len: 24, link_scope: false });
        link.routes.push(Route { dst: parse_net("192.0.2.128/25").unwrap(), protocol: 3 });
        link.routes.push(Route { dst: parse_net("198.51.100.0/24").unwrap(), protocol: RTPROT_FWCTL });
        let ops: Vec<String> = link_ops(Some(&link), &d.link).iter().map(|o| o.describe()).collect();
        assert_eq!(ops, vec!["remove address 10.9.9.1/24".to_string(), "remove route 198.51.100.0/24".into()]);
    }

    /// Compare with `fwctl/tests/golden/outputs/NAME`; `UPDATE_GOLDEN=1` rewrites it
    /// (then review the diff before committing).
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/outputs").join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).expect("write golden");
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(expected, actual, "{} differs (UPDATE_GOLDEN=1 to rewrite, then review)", path.display());
    }

    /// The tunnel section of `fwctl plan` as a person and a program read it:
    /// a tunnel changed in place (a peer removed, one added with a preshared
    /// key, one re-added with changed fields, link changes), one to start, one
    /// to stop, one that cannot be planned.
    #[test]
    fn golden_tunnel_section() {
        let d = want();
        let live = running(&d, Flavor::Boringtun);
        let mut w = d.clone();
        w.peers.remove(0);
        w.peers[0].keepalive = Some(25);
        w.peers[0].endpoint = Some("198.51.100.7:51820".parse().unwrap());
        w.peers[0].allowed_ips.push(parse_net("192.0.2.128/25").unwrap());
        w.peers.push(DesiredPeer { psk_file: Some("/etc/fwctl/keys/wg0-carol.psk".into()), psk_fingerprint: Some([3; 32]), ..peer(3, "carol", &["10.200.0.4/32", "fd00:200::4/128"]) });
        w.link.routes = vec![parse_net("192.0.2.128/25").unwrap()];
        w.link.addresses.push(("fd00:200::1".parse().unwrap(), 64));
        let mut wg1 = want();
        wg1.iface = IfName::new("wg1").unwrap();
        wg1.listen_port = 51821;
        wg1.private_key_file = "/etc/fwctl/keys/wg1.key".into();
        wg1.public_key = key(97);
        wg1.peers = vec![peer(4, "erin", &["10.201.0.2/32"])];
        wg1.link.addresses = vec![("10.201.0.1".parse().unwrap(), 24)];
        let mut names = names();
        names.insert(key(4).0, "wg1.erin".into());
        let plans = vec![
            plan_tunnel(&w, &live, "userspace", false, &names).unwrap(),
            plan_tunnel(&wg1, &Live::NotRunning, "userspace", false, &names).unwrap(),
            TunnelPlan::stop("wg2", "userspace (boringtun)"),
            TunnelPlan::error("wg3", "key file /etc/fwctl/keys/wg3-dave.psk is accessible by group or others (mode 0644); refusing to use it — run `chmod 600 /etc/fwctl/keys/wg3-dave.psk`".into()),
        ];
        golden("plan-tunnels.txt", &format!("tunnels:\n{}", text(&plans)));
        golden("plan-tunnels.json", &(serde_json::to_string_pretty(&plans).unwrap() + "\n"));
    }

    #[test]
    fn section_text_and_json_hold_public_keys_and_paths_only() {
        let d = want();
        let mut w = d.clone();
        w.peers.push(DesiredPeer { psk_file: Some("/k/carol.psk".into()), psk_fingerprint: Some([7; 32]), keepalive: Some(25), ..peer(3, "carol", &["10.200.0.4/32"]) });
        let plans = vec![plan_tunnel(&w, &running(&d, Flavor::Boringtun), "userspace", false, &names()).unwrap(), TunnelPlan::stop("wg1", "userspace (boringtun)")];
        assert_eq!(
            text(&plans),
            format!(
                "  wg0: change in place (userspace (boringtun))\n    + peer wg0.carol ({}): allowed IPs 10.200.0.4/32; keepalive 25 s; preshared key from /k/carol.psk\n  wg1: stop (userspace (boringtun)): no longer in the policy\n",
                b64(3)
            )
        );
        assert_eq!(text(&[]), "  (no change)\n");
        let j = serde_json::to_string(&plans).unwrap();
        let fp: String = [7u8; 32].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!j.contains(&fp) && !j.contains(&crate::util::base64_encode(&[7; 32])), "{j}");
        assert!(j.contains("\"op\":\"add\"") && j.contains("\"action\":\"stop\""), "{j}");
    }
}
