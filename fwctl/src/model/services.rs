//! Services: protocol/port sets, and the built-in catalog.
//!
//! Input: built-in names and the policy's `[services]`. Output: [`ServiceSet`]s.
//! Must not: know about addresses or rules.

use super::addr::Ranges;

/// The transport a packet uses, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            "icmpv6" | "ipv6-icmp" => Some(Proto::Icmpv6),
            _ => None,
        }
    }
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;

/// What a service (or a union of services) lets through: ports per protocol, ICMP types.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceSet {
    pub tcp: Ranges<u16>,
    pub udp: Ranges<u16>,
    pub icmp: Ranges<u8>,
    pub icmpv6: Ranges<u8>,
}

impl ServiceSet {
    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        match proto {
            Proto::Tcp => self.tcp.contains(port),
            Proto::Udp => self.udp.contains(port),
            Proto::Icmp => u8::try_from(port).is_ok_and(|t| self.icmp.contains(t)),
            Proto::Icmpv6 => u8::try_from(port).is_ok_and(|t| self.icmpv6.contains(t)),
        }
    }
    pub fn union(&self, o: &ServiceSet) -> ServiceSet {
        ServiceSet {
            tcp: self.tcp.union(&o.tcp),
            udp: self.udp.union(&o.udp),
            icmp: self.icmp.union(&o.icmp),
            icmpv6: self.icmpv6.union(&o.icmpv6),
        }
    }
    pub fn is_subset(&self, o: &ServiceSet) -> bool {
        self.tcp.is_subset(&o.tcp) && self.udp.is_subset(&o.udp) && self.icmp.is_subset(&o.icmp) && self.icmpv6.is_subset(&o.icmpv6)
    }
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.icmp.is_empty() && self.icmpv6.is_empty()
    }
    /// One concrete (proto, port-or-type) per protocol present: what a test probes.
    pub fn representatives(&self) -> Vec<(Proto, u16)> {
        let mut v = vec![];
        if let Some(p) = self.tcp.first() {
            v.push((Proto::Tcp, p));
        }
        if let Some(p) = self.udp.first() {
            v.push((Proto::Udp, p));
        }
        if let Some(t) = self.icmp.first() {
            v.push((Proto::Icmp, t as u16));
        }
        if let Some(t) = self.icmpv6.first() {
            v.push((Proto::Icmpv6, t as u16));
        }
        v
    }
    /// Human summary: `tcp/80,443 udp/53 icmp/8`.
    pub fn describe(&self) -> String {
        fn ports<T: super::addr::Point + std::fmt::Display>(r: &Ranges<T>) -> String {
            r.ranges()
                .iter()
                .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect::<Vec<_>>()
                .join(",")
        }
        let mut parts = vec![];
        for (name, s) in [("tcp", &self.tcp), ("udp", &self.udp)] {
            if !s.is_empty() {
                parts.push(format!("{name}/{}", ports(s)));
            }
        }
        for (name, s) in [("icmp", &self.icmp), ("icmpv6", &self.icmpv6)] {
            if !s.is_empty() {
                parts.push(format!("{name}/{}", ports(s)));
            }
        }
        parts.join(" ")
    }
}

fn tcp(ports: &[u16]) -> ServiceSet {
    ServiceSet { tcp: Ranges::from_ranges(ports.iter().map(|&p| (p, p)).collect()), ..Default::default() }
}
fn udp(ports: &[u16]) -> ServiceSet {
    ServiceSet { udp: Ranges::from_ranges(ports.iter().map(|&p| (p, p)).collect()), ..Default::default() }
}

/// The built-in catalog. A policy may not redefine these names.
pub fn builtin(name: &str) -> Option<ServiceSet> {
    Some(match name {
        "ssh" => tcp(&[22]),
        "http" => tcp(&[80]),
        "https" => tcp(&[443]),
        "dns" => tcp(&[53]).union(&udp(&[53])),
        "ntp" => udp(&[123]),
        "smtp" => tcp(&[25]),
        "submission" => tcp(&[587]),
        "imaps" => tcp(&[993]),
        "mysql" => tcp(&[3306]),
        "mssql" => tcp(&[1433]),
        "postgresql" => tcp(&[5432]),
        "rdp" => tcp(&[3389]),
        "ping" => ServiceSet {
            icmp: Ranges::single(ICMP_ECHO_REQUEST, ICMP_ECHO_REQUEST),
            icmpv6: Ranges::single(ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REQUEST),
            ..Default::default()
        },
        "wireguard" => udp(&[51820]),
        "snmp" => udp(&[161]),
        "http-alt" => tcp(&[8080]),
        "ldap" => tcp(&[389]),
        "ldaps" => tcp(&[636]),
        _ => return None,
    })
}

pub const BUILTIN_NAMES: [&str; 18] = [
    "ssh", "http", "https", "dns", "ntp", "smtp", "submission", "imaps", "mysql", "mssql", "postgresql", "rdp", "ping",
    "wireguard", "snmp", "http-alt", "ldap", "ldaps",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_complete() {
        for n in BUILTIN_NAMES {
            assert!(builtin(n).is_some(), "{n}");
        }
        assert_eq!(builtin("dns").unwrap().describe(), "tcp/53 udp/53");
        assert_eq!(builtin("ping").unwrap().describe(), "icmp/8 icmpv6/128");
    }
}
