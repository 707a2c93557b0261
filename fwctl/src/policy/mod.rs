//! Policy files → [`raw::RawPolicy`], with a span on every value.
//!
//! Input: a directory of `*.toml` files (read recursively, in sorted order) or one file.
//! Output: the merged raw policy plus every syntax/schema error found (all of them,
//! not just the first), each pointing at `file:line:col`.
//! Must not: resolve names or judge values beyond their TOML type; unknown keys are
//! errors, never ignored (a mistyped key in a firewall can open a port).

pub mod raw;

use crate::diag::{suggest, Diagnostic, FileId, SourceMap, Span};
use raw::*;
use std::path::{Path, PathBuf};
use toml_edit::{ImDocument, Item, TableLike, Value};

/// The largest policy file read (a policy of 100 000 rules is about 12 MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most policy text read in one run, all files together.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;
/// The deepest directory nesting under the policy root.
pub const MAX_DEPTH: usize = 32;

/// Read every policy file under `path` into `sm`; I/O problems become diagnostics.
///
/// The loader reads regular files under the policy root only. `path` itself (the
/// root, chosen by the operator) may be a symbolic link. Under it, a symbolic link
/// that would be read (its name ends in `.toml`, or it leads to a directory) is
/// refused, whether it points inside the root, outside it, back to an ancestor (a
/// directory cycle) or nowhere: a link either reads a file twice or reads a file
/// that is not part of the policy. A FIFO, socket or device named `*.toml` is
/// refused without being opened for a blocking read; a file larger than
/// [`MAX_FILE_BYTES`], text beyond [`MAX_TOTAL_BYTES`] in all and directories
/// nested deeper than [`MAX_DEPTH`] are refused. Every refusal is an error that
/// names the path (`--> path`).
pub fn load(path: &Path, sm: &mut SourceMap, diags: &mut Vec<Diagnostic>) -> RawPolicy {
    // (path, whether a symbolic link may lead to it: only the root, chosen by the operator)
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let before = diags.len();
            let mut walk = Walk { root: path, ancestors: vec![], out: &mut files, diags };
            walk.dir(path, &m);
            if files.is_empty() && diags.len() == before {
                diags.push(Diagnostic::error("no-policy", format!("no *.toml files under {}", path.display())));
            }
        }
        Ok(m) if m.is_file() => files.push((path.to_path_buf(), true)),
        Ok(m) => diags.push(
            Diagnostic::error("not-a-file", format!("policy path {} is {}, not a regular file or a directory", path.display(), kind_of(&m.file_type())))
                .in_file(path),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            diags.push(Diagnostic::error("no-policy", format!("policy path {} does not exist", path.display())));
        }
        Err(e) => diags.push(Diagnostic::error("io", format!("cannot read {}: {e}", path.display())).in_file(path)),
    }
    let mut raw = RawPolicy::default();
    let mut total: u64 = 0;
    for (f, is_root) in files {
        let budget = MAX_TOTAL_BYTES.saturating_sub(total);
        match read_policy_file(&f, budget, is_root) {
            Ok(text) => {
                total += text.len() as u64;
                let id = sm.add(f, text);
                parse_file(sm, id, &mut raw, diags);
            }
            Err(d) => {
                // Past the total budget every further file would be refused too.
                let spent = d.code == "too-large" && budget < MAX_FILE_BYTES;
                diags.push(d);
                if spent {
                    break;
                }
            }
        }
    }
    raw
}

/// What kind of file a non-regular entry is, for messages ("a FIFO").
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Open one policy file without following a final symbolic link (unless it is the
/// root given by the operator) and without blocking (a FIFO swapped in after the
/// walk must not hang the run), check on the open descriptor that it is a regular
/// file no larger than the caps, and read it.
fn read_policy_file(path: &Path, budget: u64, is_root: bool) -> Result<String, Diagnostic> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| Diagnostic::error("io", format!("cannot read {}: {e}", path.display())).in_file(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if is_root { 0 } else { nix::libc::O_NOFOLLOW } | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => Diagnostic::error("symlink", format!("{} is a symbolic link; policy files must be regular files", path.display())).in_file(path),
            _ => io(e),
        })?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Diagnostic::error("not-a-file", format!("{} is {}, not a regular file", path.display(), kind_of(&meta.file_type()))).in_file(path));
    }
    let too_large = |what: String| Diagnostic::error("too-large", what).in_file(path);
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(format!("{} is {} bytes; policy files may hold at most {MAX_FILE_BYTES} bytes", path.display(), meta.len())));
    }
    let limit = MAX_FILE_BYTES.min(budget);
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(limit)).unwrap_or(0));
    // Read one byte past the limit: a file that grows (or lies about its size) is caught.
    (&f).take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(if limit < MAX_FILE_BYTES {
            format!("reading {} would exceed {MAX_TOTAL_BYTES} bytes of policy text in all", path.display())
        } else {
            format!("{} holds more than {MAX_FILE_BYTES} bytes; policy files may hold at most that", path.display())
        }));
    }
    String::from_utf8(bytes).map_err(|_| Diagnostic::error("io", format!("cannot read {}: not UTF-8 text", path.display())).in_file(path))
}

/// The directory walk under the policy root.
struct Walk<'a> {
    root: &'a Path,
    /// (device, inode) of the directories from the root to the current one: a
    /// directory met again (a bind mount of an ancestor) is a cycle.
    ancestors: Vec<((u64, u64), PathBuf)>,
    out: &'a mut Vec<(PathBuf, bool)>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, meta: &std::fs::Metadata) {
        use std::os::unix::fs::MetadataExt;
        let id = (meta.dev(), meta.ino());
        if let Some((_, first)) = self.ancestors.iter().find(|(a, _)| *a == id) {
            let d = Diagnostic::error("dir-cycle", format!("directory {} is {} again (a directory cycle); it is read once", dir.display(), first.display())).in_file(dir);
            self.diags.push(d);
            return;
        }
        if self.ancestors.len() >= MAX_DEPTH {
            self.diags.push(Diagnostic::error("too-deep", format!("directory {} is nested more than {MAX_DEPTH} levels under the policy root", dir.display())).in_file(dir));
            return;
        }
        let mut entries: Vec<(PathBuf, std::fs::FileType)> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).filter_map(|e| Some((e.path(), e.file_type().ok()?))).collect(),
            Err(e) => {
                self.diags.push(Diagnostic::error("io", format!("cannot read directory {}: {e}", dir.display())).in_file(dir));
                return;
            }
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.ancestors.push((id, dir.to_path_buf()));
        for (p, t) in entries {
            let hidden = p.file_name().map(|n| n.as_encoded_bytes()).is_some_and(|n| n.starts_with(b"."));
            if hidden {
                continue;
            }
            let is_toml = p.extension().is_some_and(|e| e == "toml");
            if t.is_symlink() {
                // Only a link that would be read matters; `README -> ...` stays ignored.
                let target_meta = std::fs::metadata(&p);
                if is_toml || target_meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    let d = self.symlink(&p);
                    self.diags.push(d);
                }
            } else if t.is_dir() {
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => self.dir(&p, &m),
                    Ok(_) => self.diags.push(Diagnostic::error("io", format!("{} changed while it was read", p.display())).in_file(&p)),
                    Err(e) => self.diags.push(Diagnostic::error("io", format!("cannot read directory {}: {e}", p.display())).in_file(&p)),
                }
            } else if is_toml {
                if t.is_file() {
                    self.out.push((p, false));
                } else {
                    let d = Diagnostic::error("not-a-file", format!("{} is {}, not a regular file", p.display(), kind_of(&t))).in_file(&p);
                    self.diags.push(d);
                }
            }
        }
        self.ancestors.pop();
    }

    /// The refusal of a symbolic link, saying where it leads.
    fn symlink(&self, p: &Path) -> Diagnostic {
        let what = match std::fs::read_link(p) {
            Ok(t) => format!("{} is a symbolic link to {}", p.display(), t.display()),
            Err(_) => format!("{} is a symbolic link", p.display()),
        };
        let target = std::fs::canonicalize(p);
        let root = std::fs::canonicalize(self.root);
        let msg = match (&target, &root) {
            (Err(e), _) => format!("{what} that does not resolve ({e})"),
            (Ok(t), Ok(r)) if !t.starts_with(r) => format!("{what}, outside the policy root {}", self.root.display()),
            (Ok(t), _) => match self.ancestors.iter().rev().find(|(_, a)| std::fs::canonicalize(a).is_ok_and(|a| &a == t)) {
                Some((_, a)) => format!("{what}, back to its ancestor directory {} (a directory cycle)", a.display()),
                None => format!("{what} inside the policy root"),
            },
        };
        let msg = msg + "; symbolic links under the policy root are refused";
        Diagnostic::error("symlink", msg).in_file(p).note("the policy loader reads only regular files and directories under the policy root")
    }
}

/// Parse one file's text (already in `sm`) and merge it into `raw`.
pub fn parse_file(sm: &SourceMap, file: FileId, raw: &mut RawPolicy, diags: &mut Vec<Diagnostic>) {
    let text = sm.text(file).to_string();
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = Span::new(file, e.span().unwrap_or(0..0));
            let msg = e.message().trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
            diags.push(Diagnostic::error("syntax", format!("invalid TOML: {msg}")).at(span, "here"));
            return;
        }
    };
    let mut w = Walker { file, diags };
    let root = doc.as_table();
    let whole = Span::new(file, 0..0);
    w.known_keys(root, &TOP_KEYS, "the top level", whole);
    for (key, item) in root.iter() {
        let kspan = w.key_span(root, key, whole);
        match key {
            "version" => {
                if let Some(v) = w.int(item, kspan, "version") {
                    raw.version.push(v);
                }
            }
            "firewall" => w.firewall(item, kspan, &mut raw.firewall),
            "interfaces" => w.named_tables(item, kspan, "interfaces", |w, name, t, span| {
                w.known_keys(t, &["device", "zone"], &format!("interface `{}`", name.v), span);
                raw.interfaces.push(RawInterface {
                    device: w.opt_str(t, "device", span),
                    zone: w.opt_str(t, "zone", span),
                    name,
                });
            }),
            "zones" => w.named_tables(item, kspan, "zones", |w, name, t, span| {
                w.known_keys(t, &["networks", "antispoof"], &format!("zone `{}`", name.v), span);
                let networks = t.get("networks").map(|i| w.str_list(i, w.key_span(t, "networks", span), "networks"));
                let antispoof = w.opt_bool(t, "antispoof", span);
                raw.zones.push(RawZone { name, networks, antispoof });
            }),
            "hosts" => w.named_values(item, kspan, "hosts", |w, name, i, span| {
                let addrs = w.str_list(i, span, "a host's address");
                raw.hosts.push(RawHost { name, addrs });
            }),
            "groups" => w.named_values(item, kspan, "groups", |w, name, i, span| {
                let members = w.str_list(i, span, "a group's members");
                raw.groups.push(RawGroup { name, members });
            }),
            "services" => w.named_tables(item, kspan, "services", |w, name, t, span| {
                w.known_keys(t, &["tcp", "udp"], &format!("service `{}`", name.v), span);
                let tcp = t.get("tcp").map(|i| w.ports(i, w.key_span(t, "tcp", span))).unwrap_or_default();
                let udp = t.get("udp").map(|i| w.ports(i, w.key_span(t, "udp", span))).unwrap_or_default();
                raw.services.push(RawService { name, tcp, udp });
            }),
            "rules" => w.table_list(item, kspan, "rules", |w, t, span| {
                w.known_keys(t, &RULE_KEYS, "a rule", span);
                raw.rules.push(RawRule {
                    span,
                    name: w.opt_str(t, "name", span),
                    from: w.opt_refs(t, "from", span),
                    to: w.opt_refs(t, "to", span),
                    allow: w.opt_refs(t, "allow", span),
                    deny: w.opt_refs(t, "deny", span),
                    comment: w.opt_str(t, "comment", span),
                    owner: w.opt_str(t, "owner", span),
                    expires: w.opt_date(t, "expires", span),
                    log: w.opt_bool(t, "log", span),
                });
            }),
            "nat" => w.nat(item, kspan, raw),
            "vpn" => w.named_tables(item, kspan, "vpn", |w, name, t, span| {
                let what = format!("vpn `{}`", name.v);
                w.known_keys(t, &VPN_KEYS, &what, span);
                let mut peers = vec![];
                if let Some(p) = t.get("peers") {
                    let pspan = w.key_span(t, "peers", span);
                    w.table_list(p, pspan, "peers", |w, pt, ps| {
                        w.known_keys(pt, &PEER_KEYS, "a peer", ps);
                        peers.push(RawPeer {
                            span: ps,
                            name: w.opt_str(pt, "name", ps),
                            public_key: w.opt_str(pt, "public_key", ps),
                            allowed_ips: w.opt_str_list(pt, "allowed_ips", ps),
                            endpoint: w.opt_str(pt, "endpoint", ps),
                            keepalive: w.opt_int(pt, "keepalive", ps),
                            preshared_key_file: w.opt_str(pt, "preshared_key_file", ps),
                        });
                    });
                }
                raw.vpns.push(RawVpn {
                    zone: w.opt_str(t, "zone", span),
                    listen_port: w.opt_int(t, "listen_port", span),
                    addresses: w.opt_str_list(t, "addresses", span),
                    private_key_file: w.opt_str(t, "private_key_file", span),
                    mtu: w.opt_int(t, "mtu", span),
                    peers,
                    name,
                });
            }),
            "tests" => w.table_list(item, kspan, "tests", |w, t, span| {
                w.known_keys(t, &TEST_KEYS, "a test", span);
                raw.tests.push(RawTest {
                    span,
                    from: w.opt_str(t, "from", span),
                    to: w.opt_str(t, "to", span),
                    service: w.opt_str(t, "service", span),
                    proto: w.opt_str(t, "proto", span),
                    port: t.get("port").and_then(|i| w.port(i, w.key_span(t, "port", span))),
                    expect: w.opt_str(t, "expect", span),
                    iif: w.opt_str(t, "in", span),
                    oif: w.opt_str(t, "out", span),
                });
            }),
            _ => {}
        }
    }
}

const TOP_KEYS: [&str; 11] =
    ["version", "firewall", "interfaces", "zones", "hosts", "groups", "services", "rules", "nat", "vpn", "tests"];
const RULE_KEYS: [&str; 9] = ["name", "from", "to", "allow", "deny", "comment", "owner", "expires", "log"];
const VPN_KEYS: [&str; 6] = ["zone", "listen_port", "addresses", "private_key_file", "mtu", "peers"];
const PEER_KEYS: [&str; 6] = ["name", "public_key", "allowed_ips", "endpoint", "keepalive", "preshared_key_file"];
const TEST_KEYS: [&str; 8] = ["from", "to", "service", "proto", "port", "expect", "in", "out"];

/// Walks one file's TOML tree, reporting type and key errors as it goes.
struct Walker<'a> {
    file: FileId,
    diags: &'a mut Vec<Diagnostic>,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

impl Walker<'_> {
    fn span(&self, r: Option<std::ops::Range<usize>>, fallback: Span) -> Span {
        r.map(|r| Span::new(self.file, r)).unwrap_or(fallback)
    }
    fn item_span(&self, item: &Item, fallback: Span) -> Span {
        self.span(item.span(), fallback)
    }
    fn key_span(&self, t: &dyn TableLike, key: &str, fallback: Span) -> Span {
        self.span(t.key(key).and_then(|k| k.span()), fallback)
    }
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }
    fn wrong_type(&mut self, item: &Item, span: Span, what: &str, want: &str) {
        let got = type_name(item);
        let span = self.item_span(item, span);
        self.err(Diagnostic::error("type", format!("{what} must be {want}, found {got}")).at(span, format!("expected {want}")));
    }

    /// Report every key of `t` not in `allowed`.
    fn known_keys(&mut self, t: &dyn TableLike, allowed: &[&str], what: &str, fallback: Span) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k) {
                let span = self.key_span(t, k, fallback);
                let mut d = Diagnostic::error("unknown-key", format!("unknown key `{k}` in {what}"));
                d = match suggest(k, allowed.iter().copied()) {
                    Some(s) => d.at(span, format!("did you mean `{s}`?")),
                    None => d.at(span, "not a known key").note(format!("known keys here: {}", allowed.join(", "))),
                };
                self.err(d);
            }
        }
    }

    fn table<'i>(&mut self, item: &'i Item, span: Span, what: &str) -> Option<&'i dyn TableLike> {
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.wrong_type(item, span, what, "a table");
                None
            }
        }
    }

    /// `[section.NAME]` tables: call `f` with each name and its table.
    fn named_tables(&mut self, item: &Item, span: Span, what: &str, mut f: impl FnMut(&mut Self, Sp<String>, &dyn TableLike, Span)) {
        let Some(t) = self.table(item, span, &format!("[{what}]")) else { return };
        for (k, v) in t.iter() {
            let ks = self.key_span(t, k, span);
            let name = Sp::new(k.to_string(), ks);
            if let Some(inner) = self.table(v, ks, &format!("{what}.{k}")) {
                f(self, name, inner, ks);
            }
        }
    }

    /// `[section]` with `name = value` entries.
    fn named_values(&mut self, item: &Item, span: Span, what: &str, mut f: impl FnMut(&mut Self, Sp<String>, &Item, Span)) {
        let Some(t) = self.table(item, span, &format!("[{what}]")) else { return };
        for (k, v) in t.iter() {
            let ks = self.key_span(t, k, span);
            f(self, Sp::new(k.to_string(), ks), v, ks);
        }
    }

    /// `[[section]]` or `section = [{...}, ...]`.
    fn table_list(&mut self, item: &Item, span: Span, what: &str, mut f: impl FnMut(&mut Self, &dyn TableLike, Span)) {
        if let Some(aot) = item.as_array_of_tables() {
            for t in aot.iter() {
                let ts = self.span(t.span(), span);
                f(self, t, ts);
            }
        } else if let Some(arr) = item.as_array() {
            for v in arr.iter() {
                let vs = self.span(v.span(), span);
                match v.as_inline_table() {
                    Some(t) => f(self, t, vs),
                    None => self.wrong_type(&Item::Value(v.clone()), vs, &format!("an entry of `{what}`"), "a table"),
                }
            }
        } else {
            self.wrong_type(item, span, &format!("`{what}`"), "an array of tables ([[...]])");
        }
    }

    fn string(&mut self, item: &Item, span: Span, what: &str) -> Option<Sp<String>> {
        match item.as_str() {
            Some(s) => Some(Sp::new(s.to_string(), self.item_span(item, span))),
            None => {
                self.wrong_type(item, span, what, "a string");
                None
            }
        }
    }
    fn int(&mut self, item: &Item, span: Span, what: &str) -> Option<Sp<i64>> {
        match item.as_integer() {
            Some(i) => Some(Sp::new(i, self.item_span(item, span))),
            None => {
                self.wrong_type(item, span, what, "an integer");
                None
            }
        }
    }
    fn opt_str(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Option<Sp<String>> {
        let ks = self.key_span(t, key, span);
        t.get(key).and_then(|i| self.string(i, ks, &format!("`{key}`")))
    }
    fn opt_int(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Option<Sp<i64>> {
        let ks = self.key_span(t, key, span);
        t.get(key).and_then(|i| self.int(i, ks, &format!("`{key}`")))
    }
    fn opt_bool(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Option<Sp<bool>> {
        let ks = self.key_span(t, key, span);
        let item = t.get(key)?;
        match item.as_bool() {
            Some(b) => Some(Sp::new(b, self.item_span(item, ks))),
            None => {
                self.wrong_type(item, ks, &format!("`{key}`"), "true or false");
                None
            }
        }
    }
    fn opt_date(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Option<Sp<Date>> {
        let ks = self.key_span(t, key, span);
        let item = t.get(key)?;
        let vs = self.item_span(item, ks);
        let date = match item.as_value() {
            Some(Value::Datetime(dt)) if dt.value().time.is_none() && dt.value().offset.is_none() => {
                dt.value().date.and_then(|d| Date::new(d.year, d.month, d.day))
            }
            Some(Value::String(s)) => Date::parse(s.value()),
            _ => None,
        };
        match date {
            Some(d) => Some(Sp::new(d, vs)),
            None => {
                self.err(
                    Diagnostic::error("type", format!("`{key}` must be a date like 2027-06-30"))
                        .at(vs, "expected a date (YYYY-MM-DD)"),
                );
                None
            }
        }
    }
    /// A string or an array of strings.
    fn str_list(&mut self, item: &Item, span: Span, what: &str) -> Vec<Sp<String>> {
        if let Some(s) = item.as_str() {
            return vec![Sp::new(s.to_string(), self.item_span(item, span))];
        }
        let Some(arr) = item.as_array() else {
            self.wrong_type(item, span, what, "a string or a list of strings");
            return vec![];
        };
        let mut out = vec![];
        for v in arr.iter() {
            let vs = self.span(v.span(), span);
            match v.as_str() {
                Some(s) => out.push(Sp::new(s.to_string(), vs)),
                None => self.wrong_type(&Item::Value(v.clone()), vs, &format!("an entry of {what}"), "a string"),
            }
        }
        out
    }
    fn opt_str_list(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Vec<Sp<String>> {
        let ks = self.key_span(t, key, span);
        t.get(key).map(|i| self.str_list(i, ks, &format!("`{key}`"))).unwrap_or_default()
    }
    fn opt_refs(&mut self, t: &dyn TableLike, key: &str, span: Span) -> Option<Refs> {
        let ks = self.key_span(t, key, span);
        let item = t.get(key)?;
        let vs = self.item_span(item, ks);
        Some(Sp::new(self.str_list(item, ks, &format!("`{key}`")), vs))
    }
    fn port(&mut self, item: &Item, span: Span) -> Option<Sp<RawPort>> {
        let vs = self.item_span(item, span);
        match item.as_value() {
            Some(Value::Integer(i)) => Some(Sp::new(RawPort::Int(*i.value()), vs)),
            Some(Value::String(s)) => Some(Sp::new(RawPort::Str(s.value().clone()), vs)),
            _ => {
                self.wrong_type(item, span, "a port", "an integer or a string \"N\" / \"N-M\"");
                None
            }
        }
    }
    fn ports(&mut self, item: &Item, span: Span) -> Vec<Sp<RawPort>> {
        match item.as_array() {
            Some(arr) => arr.iter().filter_map(|v| self.port(&Item::Value(v.clone()), self.span(v.span(), span))).collect(),
            None => self.port(item, span).into_iter().collect(),
        }
    }

    fn firewall(&mut self, item: &Item, span: Span, fw: &mut RawFirewall) {
        let Some(t) = self.table(item, span, "[firewall]") else { return };
        self.known_keys(t, &["name", "default", "log_default", "management", "offload"], "[firewall]", span);
        let once = |w: &mut Self, first: Option<Span>, tbl: &dyn TableLike, key: &str, shown: &str| {
            if let Some(first) = first {
                let ks = w.key_span(tbl, key, span);
                w.err(Diagnostic::error("duplicate", format!("`firewall.{shown}` is set in more than one file")).at(ks, "set again here").also(first, "first set here"));
            }
        };
        if t.contains_key("name") {
            once(self, fw.name.as_ref().map(|v| v.span), t, "name", "name");
            fw.name = self.opt_str(t, "name", span);
        }
        if t.contains_key("default") {
            once(self, fw.default.as_ref().map(|v| v.span), t, "default", "default");
            fw.default = self.opt_str(t, "default", span);
        }
        if t.contains_key("log_default") {
            once(self, fw.log_default.as_ref().map(|v| v.span), t, "log_default", "log_default");
            fw.log_default = self.opt_bool(t, "log_default", span);
        }
        if let Some(m) = t.get("management") {
            let ms = self.key_span(t, "management", span);
            let mut out = vec![];
            self.table_list(m, ms, "management", |w, mt, s| {
                w.known_keys(mt, &["from", "to", "service", "in", "out"], "a management flow", s);
                out.push(RawManagement {
                    span: s,
                    from: w.opt_refs(mt, "from", s),
                    to: w.opt_refs(mt, "to", s),
                    service: w.opt_str(mt, "service", s),
                    iif: w.opt_str(mt, "in", s),
                    oif: w.opt_str(mt, "out", s),
                });
            });
            fw.management.extend(out);
        }
        if let Some(o) = t.get("offload") {
            let os = self.key_span(t, "offload", span);
            if let Some(ot) = self.table(o, os, "[firewall.offload]") {
                self.known_keys(ot, &["flowtable"], "[firewall.offload]", os);
                if ot.contains_key("flowtable") {
                    once(self, fw.flowtable.as_ref().map(|v| v.span), ot, "flowtable", "offload.flowtable");
                    fw.flowtable = self.opt_str(ot, "flowtable", os);
                }
            }
        }
    }

    fn nat(&mut self, item: &Item, span: Span, raw: &mut RawPolicy) {
        let Some(t) = self.table(item, span, "[nat]") else { return };
        self.known_keys(t, &["forward", "masquerade", "snat"], "[nat]", span);
        for (k, v) in t.iter() {
            let ks = self.key_span(t, k, span);
            match k {
                "forward" => self.table_list(v, ks, "nat.forward", |w, ft, s| {
                    w.known_keys(ft, &["name", "on", "destination", "service", "to", "to_port"], "a port forward", s);
                    raw.dnat.push(RawDnat {
                        span: s,
                        name: w.opt_str(ft, "name", s),
                        on: w.opt_str(ft, "on", s),
                        destination: w.opt_str(ft, "destination", s),
                        service: w.opt_str(ft, "service", s),
                        to: w.opt_str(ft, "to", s),
                        to_port: w.opt_int(ft, "to_port", s),
                    });
                }),
                "masquerade" => self.table_list(v, ks, "nat.masquerade", |w, mt, s| {
                    w.known_keys(mt, &["from", "out"], "a masquerade rule", s);
                    raw.masquerade.push(RawMasquerade { span: s, from: w.opt_refs(mt, "from", s), out: w.opt_str(mt, "out", s) });
                }),
                "snat" => self.table_list(v, ks, "nat.snat", |w, st, s| {
                    w.known_keys(st, &["from", "out", "to"], "an snat rule", s);
                    raw.snat.push(RawSnat {
                        span: s,
                        from: w.opt_refs(st, "from", s),
                        out: w.opt_str(st, "out", s),
                        to: w.opt_str(st, "to", s),
                    });
                }),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RawPolicy, Vec<Diagnostic>, SourceMap) {
        let mut sm = SourceMap::default();
        let f = sm.add("t.toml".into(), text.into());
        let mut raw = RawPolicy::default();
        let mut d = vec![];
        parse_file(&sm, f, &mut raw, &mut d);
        (raw, d, sm)
    }

    #[test]
    fn reads_rules_with_spans() {
        let (raw, d, sm) = parse("[[rules]]\nname = \"a\"\nfrom = \"internet\"\nto = [\"web\"]\nallow = [\"http\"]\n");
        assert!(d.is_empty(), "{d:?}");
        let r = &raw.rules[0];
        assert_eq!(r.name.as_ref().unwrap().v, "a");
        assert_eq!(sm.locate(r.to.as_ref().unwrap().v[0].span), "t.toml:4:7");
    }

    #[test]
    fn unknown_keys_are_all_reported() {
        let (_, d, sm) = parse("[[rules]]\nname = \"a\"\nalow = [\"ssh\"]\n[[rules]]\nfrm = \"x\"\n");
        let msgs: Vec<String> = d.iter().map(|d| format!("{} {}", sm.locate(d.span.unwrap()), d.label)).collect();
        assert_eq!(msgs, vec!["t.toml:3:1 did you mean `allow`?", "t.toml:5:1 did you mean `from`?"]);
    }

    #[test]
    fn dates_and_strings_as_dates() {
        let (raw, d, _) = parse("[[rules]]\nexpires = 2027-06-30\n[[rules]]\nexpires = \"2026-01-02\"\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(raw.rules[0].expires.as_ref().unwrap().v.to_string(), "2027-06-30");
        assert_eq!(raw.rules[1].expires.as_ref().unwrap().v.to_string(), "2026-01-02");
    }
}
