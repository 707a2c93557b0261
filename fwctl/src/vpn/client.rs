//! A new peer's side: its tunnel address, the networks it may reach, and its
//! wg-quick configuration (text, terminal QR code, PNG, SVG).
//!
//! Input: the resolved policy and VPN; the new peer's keys.
//! Output: a free address in the VPN's networks; the client's `AllowedIPs`
//! (the tunnel's networks plus whatever the policy's allow rules let this peer
//! reach, as a minimal CIDR list); the configuration text.
//! Must not: write anything (the caller does), or show the appliance's private
//! key — the configuration carries the *peer's* own private key (it is for the
//! peer, shown once) and the appliance's public key.

use super::desired::{net_cidr, net_of};
use super::keys::{PresharedKey, PrivateKey, SecretBuf};
use crate::model::addr::{AddrSet, Net};
use crate::model::{Action, Named, Policy, PublicKey, Vpn};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `a` is taken: the appliance's tunnel address, any VPN peer's allowed
/// IPs, or a named host.
fn used(p: &Policy, a: IpAddr) -> bool {
    p.vpns.iter().any(|v| v.addresses.iter().any(|(x, _)| *x == a) || v.peers.iter().any(|peer| AddrSet::of(&peer.allowed_ips).contains(a)))
        || p.names.values().any(|(n, _)| matches!(n, Named::Host(s) if s.contains(a)))
}

/// The first free host address in each of the VPN's interface networks
/// (`/32` and `/128`). Errors when a network is full.
pub fn choose_addresses(p: &Policy, vpn: &Vpn) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut out = vec![];
    for (ip, len) in &vpn.addresses {
        let found = match net_of(*ip, *len) {
            Net::V4(base, l) => {
                let size: u64 = 1u64 << (32 - u32::from(l));
                // Skip the network and broadcast addresses of ordinary subnets.
                let (first, last) = if l >= 31 { (0, size - 1) } else { (1, size - 2) };
                (first..=last.min(first + 65_535)).map(|k| IpAddr::V4(Ipv4Addr::from(base + k as u32))).find(|a| !used(p, *a)).map(|a| (a, 32))
            }
            Net::V6(base, l) => {
                let span: u128 = if l == 0 { u128::MAX } else { (1u128 << (128 - u32::from(l))) - 1 };
                (1..=span.min(65_536)).map(|k| IpAddr::V6(Ipv6Addr::from(base + k))).find(|a| !used(p, *a)).map(|a| (a, 128))
            }
        };
        match found {
            Some(a) => out.push(a),
            None => return Err(format!("no free address left in {} of vpn `{}`", net_cidr(&net_of(*ip, *len)), vpn.name)),
        }
    }
    if out.is_empty() {
        return Err(format!("vpn `{}` has no addresses to choose from; give --address CIDR", vpn.name));
    }
    Ok(out)
}

fn v4_cidrs(mut lo: u32, hi: u32, out: &mut Vec<Net>) {
    loop {
        let mut len = 32u8;
        // Grow the block while it stays aligned and inside [lo, hi].
        while len > 0 {
            let l = len - 1;
            let size = 1u64 << (32 - u32::from(l));
            if u64::from(lo) % size != 0 || u64::from(lo) + size - 1 > u64::from(hi) {
                break;
            }
            len = l;
        }
        out.push(Net::V4(lo, len));
        let next = u64::from(lo) + (1u64 << (32 - u32::from(len)));
        if next > u64::from(hi) {
            return;
        }
        lo = next as u32;
    }
}

fn v6_cidrs(mut lo: u128, hi: u128, out: &mut Vec<Net>) {
    loop {
        let mut len = 128u8;
        while len > 0 {
            let l = len - 1;
            let mask = if l == 0 { u128::MAX } else { (1u128 << (128 - u32::from(l))) - 1 };
            if lo & mask != 0 || lo.checked_add(mask).is_none_or(|end| end > hi) {
                break;
            }
            len = l;
        }
        out.push(Net::V6(lo, len));
        let mask = if len == 0 { u128::MAX } else { (1u128 << (128 - u32::from(len))) - 1 };
        match lo.checked_add(mask).and_then(|e| e.checked_add(1)) {
            Some(next) if next <= hi => lo = next,
            _ => return,
        }
    }
}

/// A set as the fewest CIDR blocks.
pub fn cidrs(s: &AddrSet) -> Vec<Net> {
    let mut out = vec![];
    for (lo, hi) in s.v4.ranges() {
        v4_cidrs(*lo, *hi, &mut out);
    }
    for (lo, hi) in s.v6.ranges() {
        v6_cidrs(*lo, *hi, &mut out);
    }
    out
}

/// What the peer's `AllowedIPs` should be: the tunnel's own networks, and every
/// destination an active allow rule lets this peer (or its VPN's zone) reach.
/// A zone that lists no networks, or `any`, means everything (a full tunnel).
/// Limited to the address families the peer has.
pub fn client_allowed_ips(p: &Policy, vpn: &Vpn, peer: &[(IpAddr, u8)]) -> Vec<Net> {
    let mut set = AddrSet::empty();
    for (ip, len) in &vpn.addresses {
        set.add_net(&net_of(*ip, *len));
    }
    let full = {
        let mut f = AddrSet::empty();
        f.add_net(&Net::V4(0, 0));
        f.add_net(&Net::V6(0, 0));
        f
    };
    let is_peer = |a: &AddrSet| peer.iter().any(|(x, _)| a.contains(*x));
    for r in p.rules.iter().filter(|r| r.active() && r.action == Action::Allow) {
        let f = &r.from;
        let from_peer = f.any || f.zones.contains(&vpn.zone) || f.scoped.iter().any(|(z, a)| *z == vpn.zone && is_peer(a)) || is_peer(&f.addrs);
        if !from_peer {
            continue;
        }
        let t = &r.to;
        if t.any {
            set = set.union(&full);
            continue;
        }
        for z in &t.zones {
            if *z == vpn.zone {
                continue;
            }
            match &p.zones[*z].networks {
                Some(n) => set = set.union(n),
                None => set = set.union(&full),
            }
        }
        set = set.union(&t.addrs);
        for (_, a) in &t.scoped {
            set = set.union(a);
        }
    }
    let (v4, v6) = (peer.iter().any(|(a, _)| a.is_ipv4()), peer.iter().any(|(a, _)| a.is_ipv6()));
    cidrs(&set).into_iter().filter(|n| matches!(n, Net::V4(..)) && v4 || matches!(n, Net::V6(..)) && v6).collect()
}

/// Everything that goes into a client configuration.
pub struct ClientConfig<'a> {
    pub comment: String,
    pub private_key: &'a PrivateKey,
    pub addresses: &'a [(IpAddr, u8)],
    pub dns: &'a [String],
    pub server_public_key: &'a PublicKey,
    pub psk: Option<&'a PresharedKey>,
    pub endpoint: Option<&'a str>,
    pub listen_port: u16,
    pub allowed_ips: &'a [Net],
    pub keepalive: u16,
}

/// The wg-quick configuration text (holds the peer's private key: wiped on drop).
pub fn render(c: &ClientConfig) -> SecretBuf {
    let mut s = SecretBuf::new();
    for line in c.comment.lines() {
        s.push_str(&format!("# {line}\n"));
    }
    s.push_str("[Interface]\nPrivateKey = ");
    s.push_str(c.private_key.expose_base64().as_str());
    s.push_str("\n");
    let addrs: Vec<String> = c.addresses.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    s.push_str(&format!("Address = {}\n", addrs.join(", ")));
    if !c.dns.is_empty() {
        s.push_str(&format!("DNS = {}\n", c.dns.join(", ")));
    }
    s.push_str(&format!("\n[Peer]\nPublicKey = {}\n", super::keys::public_to_base64(c.server_public_key)));
    if let Some(psk) = c.psk {
        s.push_str("PresharedKey = ");
        s.push_str(psk.expose_base64().as_str());
        s.push_str("\n");
    }
    match c.endpoint {
        Some(e) => s.push_str(&format!("Endpoint = {e}\n")),
        None => s.push_str(&format!("# Endpoint = APPLIANCE-ADDRESS:{}   (not known to fwctl: give --endpoint)\n", c.listen_port)),
    }
    s.push_str(&format!("AllowedIPs = {}\n", c.allowed_ips.iter().map(net_cidr).collect::<Vec<_>>().join(", ")));
    if c.keepalive > 0 {
        s.push_str(&format!("PersistentKeepalive = {}\n", c.keepalive));
    }
    s
}

fn qr(text: &SecretBuf) -> Result<qrcode::QrCode, String> {
    qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L).map_err(|e| format!("cannot make a QR code: {e}"))
}

/// A QR code for the terminal (Unicode half blocks, dark on light, with a quiet zone).
pub fn qr_terminal(text: &SecretBuf) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    Ok(qr(text)?.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build())
}

pub fn qr_svg(text: &SecretBuf) -> Result<String, String> {
    use qrcode::render::svg;
    Ok(qr(text)?.render::<svg::Color>().min_dimensions(320, 320).quiet_zone(true).build())
}

/// A PNG (8-bit grayscale, 8 pixels per module, 4-module quiet zone).
pub fn qr_png(text: &SecretBuf) -> Result<Vec<u8>, String> {
    let code = qr(text)?;
    let w = code.width();
    let colors = code.to_colors();
    let (scale, quiet) = (8usize, 4usize);
    let side = (w + 2 * quiet) * scale;
    let mut px = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (x, y) = (i % w + quiet, i / w + quiet);
            for dy in 0..scale {
                let row = (y * scale + dy) * side;
                px[row + x * scale..row + x * scale + scale].fill(0);
            }
        }
    }
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| e.to_string())?;
        wr.write_image_data(&px).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::addr::parse_net;

    const POLICY: &str = r#"
[zones.admins]
[zones.rack]
networks = ["192.0.2.0/25", "2001:db8:10::/64"]
[zones.dmz]
networks = ["198.51.100.0/24"]
[interfaces.rack]
device = "eth1"
zone = "rack"
[interfaces.dmz]
device = "eth2"
zone = "dmz"
[hosts]
taken = "10.200.0.3"
[vpn.wg0]
zone = "admins"
addresses = ["10.200.0.1/24", "fd00:200::1/64"]
private_key_file = "/etc/fwctl/keys/wg0.key"
[[vpn.wg0.peers]]
name = "alice"
public_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
allowed_ips = ["10.200.0.2/32", "fd00:200::2/128"]
[[rules]]
name = "admins-rack"
from = "admins"
to = "rack"
allow = ["ssh"]
[[rules]]
name = "alice-dmz"
from = "wg0.alice"
to = "dmz"
allow = ["https"]
"#;

    fn policy() -> Policy {
        let l = crate::check::load_str("p.toml", POLICY, crate::model::Date { year: 2026, month: 1, day: 1 });
        l.policy.unwrap_or_else(|| panic!("{:?}", l.diags))
    }

    #[test]
    fn chooses_the_first_free_address_per_family() {
        let p = policy();
        let got = choose_addresses(&p, &p.vpns[0]).unwrap();
        assert_eq!(got, vec![("10.200.0.4".parse().unwrap(), 32), ("fd00:200::3".parse().unwrap(), 128)]);
    }

    #[test]
    fn allowed_ips_follow_the_rules() {
        let p = policy();
        let v = &p.vpns[0];
        let alice = [("10.200.0.2".parse().unwrap(), 32), ("fd00:200::2".parse().unwrap(), 128)];
        let s = |v: Vec<Net>| v.iter().map(net_cidr).collect::<Vec<_>>();
        assert_eq!(s(client_allowed_ips(&p, v, &alice)), ["10.200.0.0/24", "192.0.2.0/25", "198.51.100.0/24", "2001:db8:10::/64", "fd00:200::/64"]);
        let other = [("10.200.0.9".parse().unwrap(), 32)];
        assert_eq!(s(client_allowed_ips(&p, v, &other)), ["10.200.0.0/24", "192.0.2.0/25"]);
    }

    #[test]
    fn ranges_become_minimal_cidrs() {
        let mut s = AddrSet::empty();
        s.add_range("10.0.0.1".parse().unwrap(), "10.0.0.6".parse().unwrap());
        s.add_net(&parse_net("::/0").unwrap());
        let got: Vec<String> = cidrs(&s).iter().map(net_cidr).collect();
        assert_eq!(got, ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32", "::/0"]);
        let mut all = AddrSet::empty();
        all.add_net(&Net::V4(0, 0));
        assert_eq!(cidrs(&all), vec![Net::V4(0, 0)]);
    }

    #[test]
    fn config_and_qr_render() {
        let k = PrivateKey::generate().unwrap();
        let server = PublicKey([7; 32]);
        let addrs = [("10.200.0.4".parse().unwrap(), 32)];
        let nets = [parse_net("10.200.0.0/24").unwrap()];
        let c = ClientConfig {
            comment: "fwctl: peer bob of wg0".into(),
            private_key: &k,
            addresses: &addrs,
            dns: &[],
            server_public_key: &server,
            psk: None,
            endpoint: Some("203.0.113.1:51820"),
            listen_port: 51820,
            allowed_ips: &nets,
            keepalive: 25,
        };
        let text = render(&c);
        let want = format!(
            "# fwctl: peer bob of wg0\n[Interface]\nPrivateKey = {}\nAddress = 10.200.0.4/32\n\n[Peer]\nPublicKey = {}\nEndpoint = 203.0.113.1:51820\nAllowedIPs = 10.200.0.0/24\nPersistentKeepalive = 25\n",
            k.expose_base64().as_str(),
            crate::util::base64_encode(&[7; 32])
        );
        assert_eq!(text.as_str(), want);
        assert!(qr_terminal(&text).unwrap().contains('█'));
        assert!(qr_svg(&text).unwrap().starts_with("<?xml"));
        assert_eq!(&qr_png(&text).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    }
}
