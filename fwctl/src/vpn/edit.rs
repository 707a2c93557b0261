//! Appending a peer to the policy file that defines its VPN, keeping the
//! file's comments and layout (toml_edit).
//!
//! Input: the file's text, the VPN's name, the new peer's public fields.
//! Output: the new text, with one `[[vpn.NAME.peers]]` table added after the
//! VPN's last peer (or inline, if the file writes its peers inline).
//! Must not: write a secret (only the public key and a preshared key *file
//! path*), or change anything else in the file.

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// The public description of a new peer, as it goes into the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub name: String,
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    pub preshared_key_file: Option<String>,
    pub endpoint: Option<String>,
    pub keepalive: Option<u16>,
}

fn fill_table(t: &mut Table, e: &PeerEntry) {
    t.insert("name", value(e.name.as_str()));
    t.insert("public_key", value(e.public_key.as_str()));
    t.insert("allowed_ips", value(e.allowed_ips.iter().map(String::as_str).collect::<Array>()));
    if let Some(p) = &e.endpoint {
        t.insert("endpoint", value(p.as_str()));
    }
    if let Some(k) = e.keepalive {
        t.insert("keepalive", value(i64::from(k)));
    }
    if let Some(p) = &e.preshared_key_file {
        t.insert("preshared_key_file", value(p.as_str()));
    }
}

fn inline(e: &PeerEntry) -> InlineTable {
    let mut t = Table::new();
    fill_table(&mut t, e);
    let mut i = t.into_inline_table();
    i.fmt();
    i
}

/// `text` with `entry` appended to `vpn`'s peers. `comment` (without `#`), if
/// given, is written on the line before the new table.
pub fn append_peer(text: &str, vpn: &str, entry: &PeerEntry, comment: Option<&str>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("cannot parse the policy file: {e}"))?;
    let missing = || format!("the file does not define [vpn.{vpn}]");
    let vpns = doc.get_mut("vpn").filter(|i| !i.is_none()).ok_or_else(missing)?;
    let v = vpns.get_mut(vpn).filter(|i| !i.is_none()).ok_or_else(missing)?;
    match v {
        Item::Table(t) => match t.get_mut("peers") {
            None => {
                let mut aot = ArrayOfTables::new();
                aot.push(new_table(entry, comment));
                t.insert("peers", Item::ArrayOfTables(aot));
            }
            Some(Item::ArrayOfTables(aot)) => aot.push(new_table(entry, comment)),
            Some(Item::Value(Value::Array(a))) => a.push_formatted(Value::InlineTable(inline(entry)).decorated("\n  ", "")),
            Some(_) => return Err(format!("vpn.{vpn}.peers is neither an array of tables nor an array")),
        },
        Item::Value(Value::InlineTable(t)) => match t.get_mut("peers") {
            None => {
                let mut a = Array::new();
                a.push(Value::InlineTable(inline(entry)));
                t.insert("peers", Value::Array(a));
            }
            Some(Value::Array(a)) => a.push(Value::InlineTable(inline(entry))),
            Some(_) => return Err(format!("vpn.{vpn}.peers is not an array")),
        },
        _ => return Err(format!("vpn.{vpn} is not a table")),
    }
    Ok(doc.to_string())
}

fn new_table(entry: &PeerEntry, comment: Option<&str>) -> Table {
    let mut t = Table::new();
    fill_table(&mut t, entry);
    let prefix = match comment {
        Some(c) => format!("\n# {}\n", c.replace('\n', " ")),
        None => "\n".to_string(),
    };
    t.decor_mut().set_prefix(prefix);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> PeerEntry {
        PeerEntry {
            name: "bob-phone".into(),
            public_key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
            allowed_ips: vec!["10.200.0.3/32".into(), "fd00:200::3/128".into()],
            preshared_key_file: Some("/etc/fwctl/keys/wg0-bob-phone.psk".into()),
            endpoint: None,
            keepalive: None,
        }
    }

    const BASE: &str = r#"# The appliance's VPN.
[vpn.wg0]
zone = "admins"   # who may do what: see rules.toml
addresses = ["10.200.0.1/24"]
private_key_file = "/etc/fwctl/keys/wg0.key"

# Alice's laptop
[[vpn.wg0.peers]]
name = "alice-laptop"
public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
allowed_ips = ["10.200.0.2/32"]

# Rules follow.
[[rules]]
name = "r"
from = "admins"
to = "self"
allow = ["ssh"]
"#;

    #[test]
    fn appends_after_the_last_peer_and_keeps_everything_else() {
        let out = append_peer(BASE, "wg0", &entry(), Some("added by fwctl vpn peer add")).unwrap();
        let want_new = "allowed_ips = [\"10.200.0.2/32\"]\n\n# added by fwctl vpn peer add\n[[vpn.wg0.peers]]\nname = \"bob-phone\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\nallowed_ips = [\"10.200.0.3/32\", \"fd00:200::3/128\"]\npreshared_key_file = \"/etc/fwctl/keys/wg0-bob-phone.psk\"\n\n# Rules follow.\n";
        assert!(out.contains(want_new), "{out}");
        // Everything that was there is still there, in order.
        let without: String = out.replace(&want_new["allowed_ips = [\"10.200.0.2/32\"]\n".len()..want_new.len() - "\n# Rules follow.\n".len()], "");
        assert_eq!(without, BASE);
    }

    #[test]
    fn first_peer_and_inline_forms() {
        let first = "[vpn.wg0]\nzone = \"admins\" # z\nprivate_key_file = \"/k\"\n\n[zones.admins]\n";
        let out = append_peer(first, "wg0", &entry(), None).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["vpn"]["wg0"]["peers"][0]["name"].as_str(), Some("bob-phone"));
        assert!(out.contains("zone = \"admins\" # z"), "{out}");
        let inl = "[vpn.wg0]\nzone = \"admins\"\npeers = [\n  { name = \"a\", public_key = \"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\", allowed_ips = [\"10.200.0.2/32\"] },\n]\n";
        let out = append_peer(inl, "wg0", &entry(), None).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["vpn"]["wg0"]["peers"].as_array().unwrap().len(), 2, "{out}");
        let e = append_peer(first, "wg9", &entry(), None);
        assert!(e.as_ref().unwrap_err().contains("[vpn.wg9]"), "{e:?}");
    }
}
