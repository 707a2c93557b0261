//! The policy file schema as written: every value keeps its span, nothing is resolved.
//!
//! Input: produced by [`super::parse_file`]. Output: consumed only by `model::resolve`.
//! Must not: interpret names, addresses or ports (that is the model's job).

use crate::diag::Span;

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Sp<T> {
    pub v: T,
    pub span: Span,
}

impl<T> Sp<T> {
    pub fn new(v: T, span: Span) -> Sp<T> {
        Sp { v, span }
    }
}

/// A port as written: an integer or a string `"N"` / `"N-M"`.
#[derive(Clone, Debug, PartialEq)]
pub enum RawPort {
    Int(i64),
    Str(String),
}

/// A TOML local date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// A real calendar day (proleptic Gregorian), years 1..=9999.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        ((1..=9999).contains(&year) && (1..=days).contains(&day)).then_some(Date { year, month, day })
    }

    /// Exactly `YYYY-MM-DD` in ASCII digits, a real day.
    pub fn parse(s: &str) -> Option<Date> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
            return None;
        }
        Date::new(s[0..4].parse().ok()?, s[5..7].parse().ok()?, s[8..10].parse().ok()?)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A reference list: `"name"` or `["a", "b"]`.
pub type Refs = Sp<Vec<Sp<String>>>;

#[derive(Default, Debug)]
pub struct RawPolicy {
    pub version: Vec<Sp<i64>>,
    pub firewall: RawFirewall,
    pub interfaces: Vec<RawInterface>,
    pub zones: Vec<RawZone>,
    pub hosts: Vec<RawHost>,
    pub groups: Vec<RawGroup>,
    pub services: Vec<RawService>,
    pub rules: Vec<RawRule>,
    pub dnat: Vec<RawDnat>,
    pub masquerade: Vec<RawMasquerade>,
    pub snat: Vec<RawSnat>,
    pub vpns: Vec<RawVpn>,
    pub tests: Vec<RawTest>,
}

#[derive(Default, Debug)]
pub struct RawFirewall {
    pub name: Option<Sp<String>>,
    pub default: Option<Sp<String>>,
    pub log_default: Option<Sp<bool>>,
    pub management: Vec<RawManagement>,
    pub flowtable: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawManagement {
    pub span: Span,
    pub from: Option<Refs>,
    pub to: Option<Refs>,
    pub service: Option<Sp<String>>,
    /// Extension: pin the ingress / egress device (`in`, `out`).
    pub iif: Option<Sp<String>>,
    pub oif: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawInterface {
    pub name: Sp<String>,
    pub device: Option<Sp<String>>,
    pub zone: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawZone {
    pub name: Sp<String>,
    pub networks: Option<Vec<Sp<String>>>,
    /// fwctl extension: `antispoof = false` lets the zone's networks arrive on any interface.
    pub antispoof: Option<Sp<bool>>,
}

#[derive(Debug)]
pub struct RawHost {
    pub name: Sp<String>,
    pub addrs: Vec<Sp<String>>,
}

#[derive(Debug)]
pub struct RawGroup {
    pub name: Sp<String>,
    pub members: Vec<Sp<String>>,
}

#[derive(Debug)]
pub struct RawService {
    pub name: Sp<String>,
    pub tcp: Vec<Sp<RawPort>>,
    pub udp: Vec<Sp<RawPort>>,
}

#[derive(Debug)]
pub struct RawRule {
    pub span: Span,
    pub name: Option<Sp<String>>,
    pub from: Option<Refs>,
    pub to: Option<Refs>,
    pub allow: Option<Refs>,
    pub deny: Option<Refs>,
    pub comment: Option<Sp<String>>,
    pub owner: Option<Sp<String>>,
    pub expires: Option<Sp<Date>>,
    pub log: Option<Sp<bool>>,
}

#[derive(Debug)]
pub struct RawDnat {
    pub span: Span,
    pub name: Option<Sp<String>>,
    pub on: Option<Sp<String>>,
    pub destination: Option<Sp<String>>,
    pub service: Option<Sp<String>>,
    pub to: Option<Sp<String>>,
    pub to_port: Option<Sp<i64>>,
}

#[derive(Debug)]
pub struct RawMasquerade {
    pub span: Span,
    pub from: Option<Refs>,
    pub out: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawSnat {
    pub span: Span,
    pub from: Option<Refs>,
    pub out: Option<Sp<String>>,
    pub to: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawVpn {
    pub name: Sp<String>,
    pub zone: Option<Sp<String>>,
    pub listen_port: Option<Sp<i64>>,
    pub addresses: Vec<Sp<String>>,
    pub private_key_file: Option<Sp<String>>,
    pub mtu: Option<Sp<i64>>,
    pub peers: Vec<RawPeer>,
}

#[derive(Debug)]
pub struct RawPeer {
    pub span: Span,
    pub name: Option<Sp<String>>,
    pub public_key: Option<Sp<String>>,
    pub allowed_ips: Vec<Sp<String>>,
    pub endpoint: Option<Sp<String>>,
    pub keepalive: Option<Sp<i64>>,
    pub preshared_key_file: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RawTest {
    pub span: Span,
    pub from: Option<Sp<String>>,
    pub to: Option<Sp<String>>,
    pub service: Option<Sp<String>>,
    pub proto: Option<Sp<String>>,
    pub port: Option<Sp<RawPort>>,
    pub expect: Option<Sp<String>>,
    /// Extension: pin the ingress / egress device (`in`, `out`).
    pub iif: Option<Sp<String>>,
    pub oif: Option<Sp<String>>,
}

#[cfg(test)]
mod tests {
    use super::Date;

    #[test]
    fn dates_are_real_calendar_days_in_plain_digits() {
        assert_eq!(Date::parse("2026-01-02"), Some(Date { year: 2026, month: 1, day: 2 }));
        assert!(Date::parse("2028-02-29").is_some());
        for bad in ["2026-02-30", "2027-02-29", "2026-04-31", "+026-01-01", "2026-+1-01", "2026-1-01", "0000-01-01", "2026-13-01", "2026-00-10", " 2026-01-0", "２026-01-01"] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
    }
}
