//! The compiled ruleset: sets/maps with typed elements, chains of nft statements.
//!
//! Input: built by [`super::compile`]. Output: rendered by `render::nft` / JSON,
//! simulated by [`super::sim`], diffed by the planner.
//! Must not: depend on the policy model (only rule ids and names travel here).

use serde::{Deserialize, Serialize};

pub const TABLE: &str = "fwctl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    Mark,
    InetProto,
    InetService,
    IcmpType,
    Icmpv6Type,
    Ifname,
}

impl KeyType {
    pub fn nft(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::Mark => "mark",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
            KeyType::IcmpType => "icmp_type",
            KeyType::Icmpv6Type => "icmpv6_type",
            KeyType::Ifname => "ifname",
        }
    }
}

/// One component of an element key or a map value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Val {
    V4(u32, u32),
    V6(u128, u128),
    Mark(u32),
    Proto(u8),
    Port(u16, u16),
    Icmp(u8),
    Ifname(String),
    Verdict(Verdict),
    NatV4(u32, u16),
    NatV6(u128, u16),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Drop,
    Goto(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Elem {
    pub key: Vec<Val>,
    pub data: Option<Val>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetData {
    Mark,
    Verdict,
    NatV4,
    NatV6,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub name: String,
    pub key: Vec<KeyType>,
    pub data: Option<SetData>,
    pub interval: bool,
    pub counter: bool,
    pub comment: String,
    pub elements: Vec<Elem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChain {
    /// "filter" or "nat".
    pub kind: String,
    pub hook: String,
    pub priority: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub comment: String,
    /// nft statements, one rule per entry.
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flowtable {
    pub name: String,
    pub devices: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub rules_compiled: usize,
    pub rules_expired: usize,
    pub src_classes: usize,
    pub dst_classes: usize,
    pub decision_elements: usize,
    pub kernel_rules: usize,
    pub sets: usize,
    pub elements: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub table: String,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
    pub flowtable: Option<Flowtable>,
    /// What was left out and why (e.g. flowtable offload on a kernel without it).
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub stats: Stats,
}

impl Ruleset {
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }
    pub fn kernel_rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}
