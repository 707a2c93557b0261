//! Tunnel interfaces through rtnetlink: link state and MTU, addresses, routes
//! for peers' allowed IPs — in-process, never by running `ip`.
//!
//! Input: an interface name and a [`LinkConfig`]. Output: the kernel state made
//! equal to it — missing addresses and routes added, stale ones removed — and
//! one line per change for the report. Idempotent: a second run changes nothing.
//! Must not: touch addresses or routes fwctl does not own: stale-route removal
//! only considers routes on this interface with fwctl's protocol number
//! ([`RTPROT_FWCTL`]); link-local addresses are left alone.

use super::desired::{net_cidr, net_of, LinkConfig};
use super::Error;
use crate::model::addr::Net;
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::fmt::Debug;
use std::io;
use std::net::IpAddr;

/// The route protocol number fwctl marks its routes with (`ip route` shows
/// "proto 243"): how it recognises routes it may remove.
pub const RTPROT_FWCTL: u8 = 243;

/// Send one request and collect the answers: for a dump, every message until
/// `NLMSG_DONE`; otherwise until the kernel's acknowledgement.
pub(crate) fn request<T>(sock: &Socket, seq: &mut u32, payload: T, flags: u16, op: &str) -> Result<Vec<T>, Error>
where
    T: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    let err = |source: io::Error| Error::Netlink { op: op.to_string(), source };
    *seq = seq.wrapping_add(1);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = *seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).map_err(err)?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = vec![];
    loop {
        let (data, _) = sock.recv_from_full().map_err(err)?;
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<T>::deserialize(&data[off..]).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
            let len = m.header.length as usize;
            if m.header.sequence_number == *seq {
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        if e.code.is_some() {
                            return Err(err(e.to_io()));
                        }
                        // An acknowledgement.
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

pub(crate) fn open(protocol: isize) -> Result<Socket, Error> {
    let err = |source| Error::Netlink { op: "open socket".into(), source };
    let mut s = Socket::new(protocol).map_err(err)?;
    s.bind_auto().map_err(err)?;
    s.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    Ok(s)
}

/// A link as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
    /// The `IFLA_INFO_KIND` ("wireguard", "tun", …) if the driver reports one.
    pub kind: Option<String>,
}

/// An interface address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub link_scope: bool,
}

/// A main-table unicast route through an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Net,
    pub protocol: u8,
}

/// An rtnetlink connection in the calling thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, Error> {
        Ok(Rtnl { sock: open(NETLINK_ROUTE)?, seq: 0 })
    }

    fn req(&mut self, m: RouteNetlinkMessage, flags: u16, op: &str) -> Result<Vec<RouteNetlinkMessage>, Error> {
        request(&self.sock, &mut self.seq, m, flags, op)
    }

    /// The link named `name`, or None if there is none in this namespace.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = match self.req(RouteNetlinkMessage::GetLink(m), 0, &format!("get link {name}")) {
            Ok(a) => a,
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(nix::libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        for a in answers {
            if let RouteNetlinkMessage::NewLink(l) = a {
                let mut link = Link { index: l.header.index, up: l.header.flags.contains(LinkFlags::Up), mtu: 0, kind: None };
                for attr in &l.attributes {
                    match attr {
                        LinkAttribute::Mtu(m) => link.mtu = *m,
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                if let LinkInfo::Kind(k) = i {
                                    link.kind = Some(k.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                return Ok(Some(link));
            }
        }
        Ok(None)
    }

    /// Set the link up (and its MTU, if given).
    pub fn set_link(&mut self, index: u32, up: bool, mtu: Option<u32>) -> Result<(), Error> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.req(RouteNetlinkMessage::SetLink(m), NLM_F_ACK, &format!("set link {index}")).map(drop)
    }

    /// Create a kernel WireGuard link (`ip link add NAME type wireguard`).
    pub fn add_wireguard_link(&mut self, name: &str) -> Result<(), Error> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Wireguard)]));
        self.req(RouteNetlinkMessage::NewLink(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &format!("add wireguard link {name}")).map(drop)
    }

    pub fn del_link(&mut self, index: u32) -> Result<(), Error> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.req(RouteNetlinkMessage::DelLink(m), NLM_F_ACK, &format!("delete link {index}")).map(drop)
    }

    pub fn addresses(&mut self, index: u32) -> Result<Vec<Addr>, Error> {
        let mut out = vec![];
        for a in self.req(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP, "dump addresses")? {
            let RouteNetlinkMessage::NewAddress(m) = a else { continue };
            if m.header.index != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                let link_scope = m.header.scope != AddressScope::Universe && m.header.scope != AddressScope::Site
                    || matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                out.push(Addr { addr: ip, prefix_len: m.header.prefix_len, link_scope });
            }
        }
        Ok(out)
    }

    fn addr_msg(index: u32, ip: IpAddr, len: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family(&ip);
        m.header.prefix_len = len;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            // Usable at once: a tunnel has no neighbours to detect duplicates with.
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m
    }

    pub fn add_address(&mut self, index: u32, ip: IpAddr, len: u8) -> Result<(), Error> {
        let m = Self::addr_msg(index, ip, len);
        self.req(RouteNetlinkMessage::NewAddress(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &format!("add address {ip}/{len}")).map(drop)
    }

    pub fn del_address(&mut self, index: u32, ip: IpAddr, len: u8) -> Result<(), Error> {
        let m = Self::addr_msg(index, ip, len);
        self.req(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK, &format!("delete address {ip}/{len}")).map(drop)
    }

    /// Main-table unicast routes whose output interface is `index`.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>, Error> {
        let mut out = vec![];
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            for a in self.req(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP, "dump routes")? {
                let RouteNetlinkMessage::NewRoute(m) = a else { continue };
                let mut table = u32::from(m.header.table);
                let (mut oif, mut dst) = (None, None);
                for attr in &m.attributes {
                    match attr {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                        _ => {}
                    }
                }
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) || m.header.kind != RouteType::Unicast {
                    continue;
                }
                let dst = dst.unwrap_or(if fam == AddressFamily::Inet { IpAddr::V4(0.into()) } else { IpAddr::V6(0.into()) });
                out.push(Route { dst: net_of(dst, m.header.destination_prefix_length), protocol: u8::from(m.header.protocol) });
            }
        }
        Ok(out)
    }

    fn route_msg(index: u32, dst: &Net) -> RouteMessage {
        let ip = dst_ip(dst);
        let mut m = RouteMessage::default();
        m.header.address_family = family(&ip);
        m.header.destination_prefix_length = super::desired::net_len(dst);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::from(RTPROT_FWCTL);
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(ip)));
        m.attributes.push(RouteAttribute::Oif(index));
        m
    }

    /// Add a route to `dst` through the interface; an existing identical
    /// route (`EEXIST`) is fine.
    pub fn add_route(&mut self, index: u32, dst: &Net) -> Result<bool, Error> {
        let m = Self::route_msg(index, dst);
        match self.req(RouteNetlinkMessage::NewRoute(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &format!("add route {}", net_cidr(dst))) {
            Ok(_) => Ok(true),
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(nix::libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn del_route(&mut self, index: u32, dst: &Net) -> Result<(), Error> {
        let m = Self::route_msg(index, dst);
        self.req(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK, &format!("delete route {}", net_cidr(dst))).map(drop)
    }
}

fn dst_ip(n: &Net) -> IpAddr {
    n.first()
}

/// What the kernel holds for a tunnel interface: the link, its addresses and
/// the main-table routes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkObserved {
    pub link: Link,
    pub addresses: Vec<Addr>,
    pub routes: Vec<Route>,
}

/// Read `name`'s link, addresses and routes (None: no such link here).
pub fn observe_link(nl: &mut Rtnl, name: &str) -> Result<Option<LinkObserved>, Error> {
    let Some(link) = nl.link(name)? else { return Ok(None) };
    let addresses = nl.addresses(link.index)?;
    let routes = nl.routes(link.index)?;
    Ok(Some(LinkObserved { link, addresses, routes }))
}

/// One change to a tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOp {
    /// `from`: None when the link does not exist yet.
    Mtu { from: Option<u32>, to: u32 },
    Up,
    AddAddress(IpAddr, u8),
    RemoveAddress(IpAddr, u8),
    AddRoute(Net),
    RemoveRoute(Net),
}

impl LinkOp {
    /// For people; `sync_link` reports these lines prefixed with the interface.
    pub fn describe(&self) -> String {
        match self {
            LinkOp::Mtu { from: Some(f), to } => format!("mtu {f} → {to}"),
            LinkOp::Mtu { from: None, to } => format!("mtu {to}"),
            LinkOp::Up => "link up".into(),
            LinkOp::AddAddress(ip, len) => format!("add address {ip}/{len}"),
            LinkOp::RemoveAddress(ip, len) => format!("remove address {ip}/{len}"),
            LinkOp::AddRoute(n) => format!("add route {}", net_cidr(n)),
            LinkOp::RemoveRoute(n) => format!("remove route {}", net_cidr(n)),
        }
    }
}

/// The changes that make `have` (None: the link does not exist yet) equal to
/// `cfg` (pure). Only fwctl's own routes ([`RTPROT_FWCTL`]) are removed, and
/// link-local addresses are left alone.
pub fn link_ops(have: Option<&LinkObserved>, cfg: &LinkConfig) -> Vec<LinkOp> {
    let mut ops = vec![];
    let mtu = u32::from(cfg.mtu);
    let (addresses, routes): (&[Addr], &[Route]) = match have {
        Some(h) => {
            if h.link.mtu != mtu {
                ops.push(LinkOp::Mtu { from: Some(h.link.mtu), to: mtu });
            }
            if !h.link.up {
                ops.push(LinkOp::Up);
            }
            (&h.addresses, &h.routes)
        }
        None => {
            ops.push(LinkOp::Mtu { from: None, to: mtu });
            ops.push(LinkOp::Up);
            (&[], &[])
        }
    };
    for (ip, len) in &cfg.addresses {
        if !addresses.iter().any(|a| a.addr == *ip && a.prefix_len == *len) {
            ops.push(LinkOp::AddAddress(*ip, *len));
        }
    }
    for a in addresses {
        if !a.link_scope && !cfg.addresses.iter().any(|(ip, len)| a.addr == *ip && a.prefix_len == *len) {
            ops.push(LinkOp::RemoveAddress(a.addr, a.prefix_len));
        }
    }
    for r in &cfg.routes {
        if !routes.iter().any(|x| x.dst == *r) {
            ops.push(LinkOp::AddRoute(*r));
        }
    }
    for r in routes {
        if r.protocol == RTPROT_FWCTL && !cfg.routes.contains(&r.dst) {
            ops.push(LinkOp::RemoveRoute(r.dst));
        }
    }
    ops
}

/// Make `name`'s link state, addresses and routes equal to `cfg`. Returns one
/// line per change (empty: nothing to do).
pub fn sync_link(nl: &mut Rtnl, name: &str, cfg: &LinkConfig) -> Result<Vec<String>, Error> {
    let have = observe_link(nl, name)?.ok_or_else(|| Error::Netlink { op: format!("find link {name}"), source: io::Error::from_raw_os_error(nix::libc::ENODEV) })?;
    let index = have.link.index;
    let ops = link_ops(Some(&have), cfg);
    let mut changes = vec![];
    // MTU and link state go in one request.
    let mtu = ops.iter().find_map(|op| match op {
        LinkOp::Mtu { to, .. } => Some(*to),
        _ => None,
    });
    if mtu.is_some() || ops.contains(&LinkOp::Up) {
        nl.set_link(index, true, mtu)?;
    }
    for op in &ops {
        let done = match op {
            LinkOp::Mtu { .. } | LinkOp::Up => true,
            LinkOp::AddAddress(ip, len) => nl.add_address(index, *ip, *len).map(|_| true)?,
            LinkOp::RemoveAddress(ip, len) => nl.del_address(index, *ip, *len).map(|_| true)?,
            // An identical route that appeared meanwhile is not a change.
            LinkOp::AddRoute(r) => nl.add_route(index, r)?,
            LinkOp::RemoveRoute(r) => nl.del_route(index, r).map(|_| true)?,
        };
        if done {
            changes.push(format!("{name}: {}", op.describe()));
        }
    }
    Ok(changes)
}
