//! Kernel WireGuard: the link is created with rtnetlink (`type wireguard`) and
//! configured with the generic netlink family "wireguard" — the same
//! [`DeviceState`] and [`SetPlan`] as the userspace UAPI, so the diff and the
//! reports do not care which one runs the tunnel.
//!
//! Input: an interface name; a plan and the key files it names.
//! Output: the device state, or the change applied (one netlink request per
//! peer operation, after one for the device's key and port).
//! Must not: keep secrets longer than the request: the private key parsed from
//! a `GET_DEVICE` answer is dropped at once in favour of the public key the
//! kernel reports. (The netlink crates' own buffers are not wiped.)
//!
//! Status here: compile-checked only — the kernel of the build and test
//! machines has no WireGuard module (`CONFIG_WIREGUARD` unset), so
//! [`available`] is false there and `fwctl vpn up` uses the userspace tunnel.

use super::desired::{PeerChanges, PeerOp, SetPlan};
use super::keys::{psk_fingerprint, SecretSource};
use super::netlink::{open, request};
use super::uapi::{DeviceState, Flavor, PeerState};
use super::{Error, WgApi};
use crate::model::addr::Net;
use crate::model::PublicKey;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage, WireguardPeer,
    WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::Socket;
use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// The id of the generic netlink family "wireguard", if the kernel has it.
fn family_id(sock: &Socket, seq: &mut u32) -> Result<Option<u16>, Error> {
    let q = GenlMessage::from_payload(GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())] });
    match request(sock, seq, q, 0, "resolve generic netlink family wireguard") {
        Ok(answers) => Ok(answers.iter().flat_map(|a| a.payload.nlas.iter()).find_map(|n| match n {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })),
        Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(nix::libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether this kernel has WireGuard (its generic netlink family is registered;
/// a module would be loaded on the first link creation, which this probe does
/// not attempt).
pub fn available() -> bool {
    open(NETLINK_GENERIC).ok().and_then(|s| family_id(&s, &mut 0).ok().flatten()).is_some()
}

/// A kernel WireGuard interface.
pub struct KernelWg {
    iface: String,
    sock: Socket,
    seq: Cell<u32>,
    family: u16,
}

impl KernelWg {
    pub fn open(iface: &str) -> Result<KernelWg, Error> {
        let sock = open(NETLINK_GENERIC)?;
        let mut seq = 0;
        let family = family_id(&sock, &mut seq)?
            .ok_or_else(|| Error::Netlink { op: "resolve generic netlink family wireguard".into(), source: io::Error::new(io::ErrorKind::Unsupported, "this kernel has no WireGuard") })?;
        Ok(KernelWg { iface: iface.to_string(), sock, seq: Cell::new(seq), family })
    }

    fn send(&self, cmd: WireguardCmd, attributes: Vec<WireguardAttribute>, flags: u16, op: &str) -> Result<Vec<WireguardMessage>, Error> {
        let mut m = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
        m.set_resolved_family_id(self.family);
        let mut seq = self.seq.get();
        let r = request(&self.sock, &mut seq, m, flags, op);
        self.seq.set(seq);
        Ok(r?.into_iter().map(|g| g.payload).collect())
    }
}

fn allowed_ip(n: &Net) -> WireguardAllowedIp {
    let (fam, ip) = match n.first() {
        ip @ IpAddr::V4(_) => (WireguardAddressFamily::Ipv4, ip),
        ip @ IpAddr::V6(_) => (WireguardAddressFamily::Ipv6, ip),
    };
    WireguardAllowedIp(vec![WireguardAllowedIpAttr::Family(fam), WireguardAllowedIpAttr::IpAddr(ip), WireguardAllowedIpAttr::Cidr(super::desired::net_len(n))])
}

fn peer_attrs(op: &PeerOp, secrets: &dyn SecretSource) -> Result<WireguardPeer, Error> {
    let mut a = vec![WireguardPeerAttribute::PublicKey(op.public_key().0)];
    let all = PeerChanges { allowed_ips: true, endpoint: true, keepalive: true, psk: true };
    let (peer, changes, mut flags) = match op {
        PeerOp::Remove { .. } => return Ok(WireguardPeer(vec![a.remove(0), WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)])),
        PeerOp::Add(p) => (p, all, WireguardPeerFlags::empty()),
        // The kernel updates in place; a Replace (planned for boringtun) is
        // carried out as a full update with the allowed IPs replaced.
        PeerOp::Update { peer, changes } => (peer, *changes, WireguardPeerFlags::UpdateOnly),
        PeerOp::Replace { peer, .. } => (peer, all, WireguardPeerFlags::UpdateOnly),
    };
    if changes.psk {
        match &peer.psk_file {
            Some(f) => a.push(WireguardPeerAttribute::PresharedKey(*secrets.psk(f)?.expose_bytes())),
            None if !matches!(op, PeerOp::Add(_)) => a.push(WireguardPeerAttribute::PresharedKey([0; 32])),
            None => {}
        }
    }
    if changes.endpoint {
        if let Some(e) = peer.endpoint {
            a.push(WireguardPeerAttribute::Endpoint(e));
        }
    }
    if changes.keepalive {
        a.push(WireguardPeerAttribute::PersistentKeepalive(peer.keepalive.unwrap_or(0)));
    }
    if changes.allowed_ips {
        flags |= WireguardPeerFlags::ReplaceAllowedIps;
        a.push(WireguardPeerAttribute::AllowedIps(peer.allowed_ips.iter().map(allowed_ip).collect()));
    }
    if matches!(op, PeerOp::Add(_)) {
        // A new peer: neither update-only nor anything to replace.
        flags = WireguardPeerFlags::empty();
    }
    a.push(WireguardPeerAttribute::Flags(flags));
    Ok(WireguardPeer(a))
}

impl WgApi for KernelWg {
    fn get(&self) -> Result<DeviceState, Error> {
        let answers = self.send(WireguardCmd::GetDevice, vec![WireguardAttribute::IfName(self.iface.clone())], NLM_F_DUMP, &format!("get wireguard device {}", self.iface))?;
        let mut dev = DeviceState { flavor: Flavor::Standard, public_key: None, listen_port: 0, fwmark: None, peers: vec![] };
        for m in answers {
            for attr in m.attributes {
                match attr {
                    WireguardAttribute::PublicKey(k) if k != [0; 32] => dev.public_key = Some(PublicKey(k)),
                    WireguardAttribute::PrivateKey(mut k) => super::keys::wipe(&mut k),
                    WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                    WireguardAttribute::Fwmark(f) => dev.fwmark = (f != 0).then_some(f),
                    WireguardAttribute::Peers(peers) => {
                        for WireguardPeer(pa) in peers {
                            let key = pa.iter().find_map(|x| match x {
                                WireguardPeerAttribute::PublicKey(k) => Some(*k),
                                _ => None,
                            });
                            let Some(key) = key else { continue };
                            // A peer with many allowed IPs is split over messages: merge.
                            let idx = match dev.peers.iter().position(|p| p.public_key.0 == key) {
                                Some(i) => i,
                                None => {
                                    dev.peers.push(PeerState {
                                        public_key: PublicKey(key),
                                        psk_fingerprint: None,
                                        endpoint: None,
                                        allowed_ips: vec![],
                                        keepalive: None,
                                        last_handshake: None,
                                        rx_bytes: 0,
                                        tx_bytes: 0,
                                    });
                                    dev.peers.len() - 1
                                }
                            };
                            let p = &mut dev.peers[idx];
                            for x in pa {
                                match x {
                                    WireguardPeerAttribute::PresharedKey(mut k) => {
                                        p.psk_fingerprint = (k != [0; 32]).then(|| psk_fingerprint(&k));
                                        super::keys::wipe(&mut k);
                                    }
                                    WireguardPeerAttribute::Endpoint(e) => p.endpoint = Some(e),
                                    WireguardPeerAttribute::PersistentKeepalive(k) => p.keepalive = (k != 0).then_some(k),
                                    WireguardPeerAttribute::LastHandshake(t) => {
                                        p.last_handshake = (t.seconds > 0).then(|| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nano_seconds.clamp(0, 999_999_999) as u32));
                                    }
                                    WireguardPeerAttribute::RxBytes(b) => p.rx_bytes = b,
                                    WireguardPeerAttribute::TxBytes(b) => p.tx_bytes = b,
                                    WireguardPeerAttribute::AllowedIps(ips) => {
                                        for WireguardAllowedIp(ia) in ips {
                                            let ip = ia.iter().find_map(|y| if let WireguardAllowedIpAttr::IpAddr(a) = y { Some(*a) } else { None });
                                            let cidr = ia.iter().find_map(|y| if let WireguardAllowedIpAttr::Cidr(c) = y { Some(*c) } else { None });
                                            if let (Some(ip), Some(c)) = (ip, cidr) {
                                                p.allowed_ips.push(super::desired::net_of(ip, c));
                                            }
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(dev)
    }

    fn apply(&self, plan: &SetPlan, secrets: &dyn SecretSource) -> Result<(), Error> {
        let name = WireguardAttribute::IfName(self.iface.clone());
        let mut device = vec![name.clone()];
        if let Some(f) = &plan.private_key_file {
            device.push(WireguardAttribute::PrivateKey(*secrets.private_key(f)?.expose_bytes()));
        }
        if let Some(p) = plan.listen_port {
            device.push(WireguardAttribute::ListenPort(p));
        }
        if device.len() > 1 {
            let r = self.send(WireguardCmd::SetDevice, device, NLM_F_ACK, &format!("set wireguard device {}", self.iface));
            r?;
        }
        for op in &plan.peers {
            let peer = peer_attrs(op, secrets)?;
            self.send(WireguardCmd::SetDevice, vec![name.clone(), WireguardAttribute::Peers(vec![peer])], NLM_F_ACK, &format!("set peer of {}", self.iface))?;
        }
        Ok(())
    }

    fn updates_in_place(&self, _: &DeviceState) -> bool {
        true
    }
}
