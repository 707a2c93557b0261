//! Throwaway network namespaces ("labs") for kernel tests and `fwctl lab`.
//!
//! Input: a name prefix, short namespace names, device names, addresses, routes
//! and nft ruleset text chosen by the caller.
//! Output: namespaces named `<prefix>-<short>` with veth links, addresses, routes
//! and sysctls in them; the output of commands run inside them; typed errors that
//! keep the command line, stdout and stderr.
//! Must not: touch the host's namespace or any namespace this lab did not create
//! (every method checks the name), or outlive the lab unless asked to
//! ([`Lab::set_keep`]): dropping a [`Lab`] deletes its namespaces, on panic too.
//!
//! Effects go through `ip` (iproute2) and `nft`, whose paths are injectable
//! ([`Programs`]), and through /proc/sys writes from a thread that entered the
//! namespace ([`spawn_in`]).

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sched::{setns, CloneFlags};

/// Where `ip netns` keeps one handle file per named namespace.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest prefix or namespace name we accept (a file name, kept readable).
const NAME_MAX: usize = 64;

/// Why a lab operation failed. Each variant keeps the evidence.
#[derive(Debug)]
pub enum Error {
    /// A name, address or argument given by the caller was refused; nothing ran.
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The namespace was not created by (or attached to) this lab.
    NotOurs { ns: String },
    /// A program could not be started.
    Spawn { program: String, source: io::Error },
    /// A program ran and exited unsuccessfully.
    Failed {
        argv: Vec<String>,
        status: Option<i32>,
        stdout: String,
        stderr: String,
    },
    /// Links did not come up (or IPv6 addresses stayed tentative) in time.
    NotReady { ns: String, detail: String },
    /// A system call or file operation failed (entering a namespace, /proc/sys).
    Io { context: String, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid {
                what,
                value,
                reason,
            } => write!(f, "invalid {what} {value:?}: {reason}"),
            Error::NotOurs { ns } => write!(f, "namespace {ns:?} does not belong to this lab"),
            Error::Spawn { program, source } => write!(f, "cannot run {program}: {source}"),
            Error::Failed {
                argv,
                status,
                stdout,
                stderr,
            } => {
                let status =
                    status.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
                write!(f, "`{}` failed ({status})", argv.join(" "))?;
                if !stderr.trim().is_empty() {
                    write!(f, "\nstderr: {}", stderr.trim_end())?;
                }
                if !stdout.trim().is_empty() {
                    write!(f, "\nstdout: {}", stdout.trim_end())?;
                }
                Ok(())
            }
            Error::NotReady { ns, detail } => write!(
                f,
                "links in {ns} not up (is the peer down?) or addresses tentative:\n{detail}"
            ),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The programs a lab runs. Defaults to `ip` and `nft` from `PATH`.
#[derive(Debug, Clone)]
pub struct Programs {
    pub ip: PathBuf,
    pub nft: PathBuf,
}

impl Default for Programs {
    fn default() -> Self {
        Programs {
            ip: "ip".into(),
            nft: "nft".into(),
        }
    }
}

/// A set of namespaces sharing a prefix, deleted together when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    keep: bool,
    programs: Programs,
}

impl Lab {
    /// An empty lab; namespaces will be named `<prefix>-<short>`.
    pub fn new(prefix: &str) -> Result<Lab, Error> {
        Lab::with_programs(prefix, Programs::default())
    }

    pub fn with_programs(prefix: &str, programs: Programs) -> Result<Lab, Error> {
        check_word("lab prefix", prefix)?;
        Ok(Lab {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            keep: false,
            programs,
        })
    }

    /// The existing namespaces named `<prefix>-*` (e.g. made by `fwctl lab up`
    /// in another process). The result is kept on drop; call [`Lab::destroy`].
    pub fn attach(prefix: &str) -> Result<Lab, Error> {
        let mut lab = Lab::new(prefix)?;
        let start = format!("{prefix}-");
        lab.namespaces = list_namespaces()
            .map_err(|e| io_err(format!("list {NETNS_DIR}"), e))?
            .into_iter()
            .filter(|n| n.starts_with(&start))
            .collect();
        lab.keep = true;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Full names of the namespaces this lab owns, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// With `keep`, dropping the lab leaves its namespaces in place.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Creates namespace `<prefix>-<short>`, brings `lo` up, turns off ICMP
    /// error rate limiting (so every rejected probe gets its answer) and IPv6
    /// duplicate address detection (so link-local addresses, which neighbour
    /// discovery needs, are usable as soon as a link is up).
    /// Returns the full name, which the other methods take.
    pub fn add_ns(&mut self, short: &str) -> Result<String, Error> {
        check_word("namespace name", short)?;
        let name = format!("{}-{short}", self.prefix);
        check_word("namespace name", &name)?;
        self.ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        self.link_up(&name, "lo")?;
        self.sysctl(&name, "net.ipv4.icmp_ratemask", "0")?;
        self.sysctl(&name, "net.ipv6.icmp.ratelimit", "0")?;
        self.sysctl(&name, "net.ipv6.icmp.ratemask", "")?;
        self.sysctl(&name, "net.ipv6.conf.all.accept_dad", "0")?;
        self.sysctl(&name, "net.ipv6.conf.default.accept_dad", "0")?;
        Ok(name)
    }

    /// Creates a veth pair: `dev_a` in `ns_a`, `dev_b` in `ns_b` (both down).
    pub fn veth(&self, ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) -> Result<(), Error> {
        self.ours(ns_a)?;
        self.ours(ns_b)?;
        check_ifname(dev_a)?;
        check_ifname(dev_b)?;
        // Always spell out `name`/`dev`: iproute2 reads a bare "a" or "up" as a keyword.
        self.ip(&[
            "-n", ns_a, "link", "add", "name", dev_a, "type", "veth", "peer", "name", dev_b,
            "netns", ns_b,
        ])
    }

    /// Adds `cidr` (IPv4 or IPv6, e.g. "192.0.2.1/24") to `dev`. IPv6 addresses
    /// skip duplicate address detection so they are usable at once.
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<(), Error> {
        self.ours(ns)?;
        check_ifname(dev)?;
        let (ip, _) = parse_cidr(cidr)?;
        let mut argv = vec!["-n", ns, "addr", "add", cidr, "dev", dev];
        if ip.is_ipv6() {
            argv.push("nodad");
        }
        self.ip(&argv)
    }

    pub fn link_up(&self, ns: &str, dev: &str) -> Result<(), Error> {
        self.ours(ns)?;
        check_ifname(dev)?;
        self.ip(&["-n", ns, "link", "set", "dev", dev, "up"])
    }

    /// Waits until every link that is set up in every namespace of the lab is
    /// operationally up and no IPv6 address is tentative. Call it once the links
    /// are built and before sending traffic: the kernel may take up to a second
    /// to notice a veth's carrier, and until then IPv6 neighbour discovery fails.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        for ns in &self.namespaces {
            loop {
                let links = self.ip_output(&["-n", ns, "-o", "link", "show"])?;
                let tentative =
                    self.ip_output(&["-n", ns, "-6", "-o", "addr", "show", "tentative"])?;
                let waiting: Vec<&str> = links.lines().filter(|l| !link_ready(l)).collect();
                if waiting.is_empty() && tentative.trim().is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::NotReady {
                        ns: ns.clone(),
                        detail: format!("{}\n{}", waiting.join("\n"), tentative.trim_end()),
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Adds a route to `dst` ("default" or a CIDR), optionally via a gateway.
    pub fn route(&self, ns: &str, dst: &str, via: Option<&str>, dev: &str) -> Result<(), Error> {
        self.ours(ns)?;
        check_ifname(dev)?;
        let dst_v6 = if dst == "default" {
            None
        } else {
            Some(parse_cidr(dst)?.0.is_ipv6())
        };
        let via_v6 = match via {
            Some(v) => Some(parse_ip("gateway", v)?.is_ipv6()),
            None => None,
        };
        let v6 = match (dst_v6, via_v6) {
            (Some(d), Some(g)) if d != g => {
                return Err(invalid(
                    "gateway",
                    via.unwrap_or_default(),
                    "address family differs from the destination",
                ))
            }
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => {
                return Err(invalid(
                    "route",
                    dst,
                    "\"default\" needs a gateway to know its family; use 0.0.0.0/0 or ::/0",
                ))
            }
        };
        let mut argv = vec![if v6 { "-6" } else { "-4" }, "-n", ns, "route", "add", dst];
        if let Some(v) = via {
            argv.extend(["via", v]);
        }
        argv.extend(["dev", dev]);
        self.ip(&argv)
    }

    /// Sets net.ipv4.ip_forward and net.ipv6.conf.all.forwarding in `ns`.
    pub fn forwarding(&self, ns: &str, on: bool) -> Result<(), Error> {
        let v = if on { "1" } else { "0" };
        self.sysctl(ns, "net.ipv4.ip_forward", v)?;
        self.sysctl(ns, "net.ipv6.conf.all.forwarding", v)
    }

    /// Writes `value` to /proc/sys/`key` as seen from inside `ns`
    /// (`key` in sysctl form, "net.ipv4.ip_forward", or with slashes).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<(), Error> {
        self.ours(ns)?;
        let ok = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
        if key.is_empty() || !key.chars().all(ok) || key.split(['.', '/']).any(|p| p.is_empty()) {
            return Err(invalid(
                "sysctl key",
                key,
                "expected dotted or slashed words",
            ));
        }
        let path = Path::new("/proc/sys").join(if key.contains('/') {
            key.to_string()
        } else {
            key.replace('.', "/")
        });
        let line = format!("{value}\n");
        let context = format!("set {key}={value:?} in {ns}");
        let handle =
            spawn_in(ns, move || fs::write(&path, line)).map_err(|e| io_err(context.clone(), e))?;
        join(handle).map_err(|e| io_err(context, e))
    }

    /// Runs `argv` inside `ns` (`ip netns exec`); a non-zero exit is an error.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> Result<Output, Error> {
        self.ours(ns)?;
        if argv.is_empty() {
            return Err(invalid("command", "", "empty argv"));
        }
        let mut cmd = Command::new(&self.programs.ip);
        cmd.args(["netns", "exec", ns]).args(argv);
        run(cmd, None)
    }

    /// Loads `ruleset` with `nft -f -` inside `ns` (one transaction).
    pub fn run_nft(&self, ns: &str, ruleset: &str) -> Result<Output, Error> {
        self.ours(ns)?;
        let mut cmd = Command::new(&self.programs.ip);
        cmd.args(["netns", "exec", ns])
            .arg(&self.programs.nft)
            .args(["-f", "-"]);
        run(cmd, Some(ruleset.as_bytes().to_vec()))
    }

    /// Deletes every namespace of this lab (the veths in them go too). Tries all
    /// of them and returns the first failure.
    pub fn destroy(&mut self) -> Result<(), Error> {
        let mut first = None;
        while let Some(ns) = self.namespaces.pop() {
            if !Path::new(NETNS_DIR).join(&ns).exists() {
                continue;
            }
            if let Err(e) = self.ip(&["netns", "del", &ns]) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn ours(&self, ns: &str) -> Result<(), Error> {
        if self.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(Error::NotOurs { ns: ns.to_string() })
        }
    }

    fn ip(&self, argv: &[&str]) -> Result<(), Error> {
        self.ip_output(argv).map(drop)
    }

    fn ip_output(&self, argv: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new(&self.programs.ip);
        cmd.args(argv);
        run(cmd, None).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.destroy() {
                eprintln!("fwctl lab {}: cleanup failed: {e}", self.prefix);
            }
        }
    }
}

/// One line of `ip -o link show`: ready unless it is set up (UP flag) but its
/// operational state is not yet UP. Loopback reports state UNKNOWN; skip it.
fn link_ready(line: &str) -> bool {
    let flags = line
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map_or("", |(f, _)| f);
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"UP") || flags.contains(&"LOOPBACK") {
        return true;
    }
    let mut words = line.split_whitespace();
    words.any(|w| w == "state") && words.next() == Some("UP")
}

/// Deletes every namespace named `<prefix>-*` (`fwctl lab down`, or cleanup
/// after a failed `lab up`). Returns the names it deleted.
pub fn cleanup_prefix(prefix: &str) -> Result<Vec<String>, Error> {
    let mut lab = Lab::attach(prefix)?;
    let names = lab.namespaces.clone();
    lab.destroy()?;
    Ok(names)
}

/// A fresh short prefix: `tag` and 5 hex digits mixed from the pid, a counter,
/// the clock and per-process randomness. E.g. "fwt3fa9c".
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}{:05x}", random_u64() & 0xf_ffff)
}

/// Names of all namespaces `ip netns` knows (empty if the directory is missing).
pub fn list_namespaces() -> io::Result<Vec<String>> {
    let dir = match fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in dir {
        if let Some(n) = entry?.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Runs `f` on a new thread that first moves itself into namespace `ns`.
/// `setns` changes only the calling thread, so the rest of the process stays
/// where it was. Refuses to "enter" the host's own namespace.
pub fn spawn_in<T, F>(ns: &str, f: F) -> io::Result<thread::JoinHandle<io::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    thread::Builder::new()
        .name(format!("netns:{ns}"))
        .spawn(move || {
            enter(&ns)?;
            f()
        })
}

/// Joins a thread from [`spawn_in`], turning a panic into an error.
pub fn join<T>(handle: thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
}

fn enter(ns: &str) -> io::Result<()> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {ns:?}"),
        ));
    }
    let path = Path::new(NETNS_DIR).join(ns);
    let target = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    let host = fs::metadata("/proc/self/ns/net")?;
    let meta = target.metadata()?;
    if (meta.dev(), meta.ino()) == (host.dev(), host.ino()) {
        return Err(io::Error::other(format!(
            "{ns} is the host's network namespace; refusing to use it"
        )));
    }
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("setns {}: {e}", path.display()),
        )
    })
}

/// Checks that this process can build labs: root, `ip` and `nft` runnable, and
/// a namespace can be created, entered and deleted. Err says what is missing.
pub fn prerequisites() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)".into());
    }
    for (prog, arg, pkg) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        match Command::new(prog).arg(arg).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`{prog} {arg}` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot run `{prog}` ({e}); install Debian package {pkg}"
                ))
            }
        }
    }
    let mut lab = Lab::new(&unique_prefix("fwpre")).map_err(|e| e.to_string())?;
    let made = lab.add_ns("check").map(drop);
    let gone = lab.destroy();
    made.and(gone)
        .map_err(|e| format!("cannot create a network namespace: {e}"))
}

/// Runs `cmd` with optional stdin, capturing output; non-zero exit is an error.
fn run(mut cmd: Command, stdin: Option<Vec<u8>>) -> Result<Output, Error> {
    let argv: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| Error::Spawn {
        program: argv[0].clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Feed stdin from another thread so a chatty child cannot deadlock us.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(thread::spawn(move || pipe.write_all(&data))),
        _ => None,
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    let fed = feeder.map(|t| t.join());
    if !out.status.success() {
        return Err(Error::Failed {
            argv,
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    match fed {
        Some(Ok(Err(e))) => Err(io_err(format!("write stdin of `{}`", argv.join(" ")), e)),
        Some(Err(_)) => Err(io_err("stdin writer".into(), io::Error::other("panicked"))),
        _ => Ok(out),
    }
}

/// Checks an interface name: 1..=15 bytes, no '/', ':', whitespace, not "." or "..".
pub fn check_ifname(dev: &str) -> Result<(), Error> {
    if dev.is_empty() || dev.len() > IFNAME_MAX {
        return Err(invalid("interface name", dev, "must be 1 to 15 bytes"));
    }
    if dev == "."
        || dev == ".."
        || dev
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "interface name",
            dev,
            "must not be . or .. or contain '/', ':' or spaces",
        ));
    }
    Ok(())
}

/// Lab prefixes and namespace names: ASCII letters, digits, '_' and '-'.
fn check_word(what: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > NAME_MAX {
        return Err(invalid(what, s, "must be 1 to 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            what,
            s,
            "only ASCII letters, digits, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

fn parse_ip(what: &'static str, s: &str) -> Result<IpAddr, Error> {
    s.parse()
        .map_err(|_| invalid(what, s, "not an IPv4 or IPv6 address"))
}

/// "addr/len" with len within the family's width.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), Error> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| invalid("CIDR", s, "expected address/length"))?;
    let ip = parse_ip("CIDR", ip)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(l) if l <= max => Ok((ip, l)),
        _ => Err(invalid("CIDR", s, "prefix length out of range")),
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> Error {
    Error::Invalid {
        what,
        value: value.to_string(),
        reason,
    }
}

fn io_err(context: String, source: io::Error) -> Error {
    Error::Io { context, source }
}

/// Not cryptographic: unique-enough names and nonces (std's per-process random
/// hash keys, a counter, the pid and the clock).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// For privileged tests: true if they can run. Otherwise fails under CI
/// (`CI` set and non-empty), else prints "skipped: …" and returns false.
pub fn privileged_or_skip() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("prerequisite missing under CI: {reason}")
        }
        Err(reason) => {
            // Straight to stderr, past libtest's capture, so a skip is visible.
            let _ = writeln!(io::stderr(), "skipped: {reason}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lab: &Lab, ns: &str, path: &str) -> String {
        let out = lab.exec(ns, &["cat", path]).expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn names_and_addresses_are_validated() {
        assert!(Lab::new("").is_err());
        assert!(Lab::new("a/b").is_err());
        assert!(Lab::new("a b").is_err());
        assert!(check_ifname("veth-abcdefghij").is_ok()); // 15 bytes
        assert!(check_ifname("veth-abcdefghijk").is_err()); // 16 bytes
        assert!(check_ifname("a/b").is_err());
        assert!(parse_cidr("192.0.2.1/24").is_ok());
        assert!(parse_cidr("192.0.2.1/33").is_err());
        assert!(parse_cidr("2001:db8::1/64").is_ok());
        assert!(parse_cidr("2001:db8::1").is_err());
        let (a, b) = (unique_prefix("fwt"), unique_prefix("fwt"));
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }

    #[test]
    fn link_readiness_is_read_from_ip_link_output() {
        let up = "3: a@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT";
        let waiting = "3: a@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state DOWN mode DEFAULT";
        let no_peer = "3: a@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state LOWERLAYERDOWN mode DEFAULT";
        let admin_down =
            "2: b@if3: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN mode DEFAULT";
        let lo = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT";
        assert!(link_ready(up) && link_ready(admin_down) && link_ready(lo));
        assert!(!link_ready(waiting) && !link_ready(no_peer));
    }

    #[test]
    fn methods_refuse_namespaces_the_lab_does_not_own() {
        let lab = Lab::new("fwtnotours").expect("lab");
        assert!(matches!(
            lab.exec("fwtnotours-x", &["true"]),
            Err(Error::NotOurs { .. })
        ));
        assert!(matches!(
            lab.run_nft("init", "flush ruleset"),
            Err(Error::NotOurs { .. })
        ));
        assert!(matches!(
            lab.sysctl("fwtnotours-x", "net.ipv4.ip_forward", "1"),
            Err(Error::NotOurs { .. })
        ));
    }

    #[test]
    fn lab_builds_links_and_is_removed_on_panic() {
        if !privileged_or_skip() {
            return;
        }
        let prefix = unique_prefix("fwt");
        let p = prefix.clone();
        let result = std::panic::catch_unwind(move || {
            let mut lab = Lab::new(&p).expect("lab");
            let a = lab.add_ns("a").expect("ns a");
            let b = lab.add_ns("b").expect("ns b");
            assert_eq!(a, format!("{p}-a"));
            lab.veth(&a, "a0", &b, "b0").expect("veth");
            lab.veth(&a, "a", &b, "up")
                .expect("veth named like ip keywords");
            lab.link_up(&a, "a").expect("up a");
            assert!(
                matches!(
                    lab.wait_ready(Duration::from_millis(100)),
                    Err(Error::NotReady { .. })
                ),
                "peer `up` is still down"
            );
            lab.link_up(&b, "up").expect("up b");
            lab.wait_ready(Duration::from_secs(5)).expect("ready");
            assert!(lab.veth(&a, "this-is-16-bytes", &b, "b1").is_err());
            lab.addr(&a, "a0", "192.0.2.1/24").expect("addr v4");
            lab.addr(&a, "a0", "2001:db8::1/64").expect("addr v6");
            lab.link_up(&a, "a0").expect("up");
            lab.route(&a, "198.51.100.0/24", Some("192.0.2.2"), "a0")
                .expect("route v4");
            lab.route(&a, "default", Some("2001:db8::2"), "a0")
                .expect("route v6");
            lab.forwarding(&a, true).expect("forwarding");
            assert_eq!(read(&lab, &a, "/proc/sys/net/ipv4/ip_forward"), "1");
            assert_eq!(
                read(&lab, &a, "/proc/sys/net/ipv6/conf/all/forwarding"),
                "1"
            );
            assert_eq!(read(&lab, &b, "/proc/sys/net/ipv4/ip_forward"), "0");
            let routes = lab.exec(&a, &["ip", "-6", "route"]).expect("ip route");
            assert!(String::from_utf8_lossy(&routes.stdout).contains("default via 2001:db8::2"));
            assert_eq!(
                list_namespaces()
                    .expect("list")
                    .iter()
                    .filter(|n| n.starts_with(&p))
                    .count(),
                2
            );
            panic!("deliberate");
        });
        assert!(result.is_err());
        let left: Vec<String> = list_namespaces()
            .expect("list")
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn run_nft_is_per_namespace_and_keeps_stderr() {
        if !privileged_or_skip() {
            return;
        }
        let mut lab = Lab::new(&unique_prefix("fwt")).expect("lab");
        let a = lab.add_ns("a").expect("ns a");
        let b = lab.add_ns("b").expect("ns b");
        lab.run_nft(
            &a,
            "table inet t {\n chain c {\n type filter hook input priority 0;\n }\n}\n",
        )
        .expect("load");
        let listed = lab.exec(&a, &["nft", "list", "ruleset"]).expect("list a");
        assert!(String::from_utf8_lossy(&listed.stdout).contains("table inet t"));
        let other = lab.exec(&b, &["nft", "list", "ruleset"]).expect("list b");
        assert!(other.stdout.is_empty(), "ruleset leaked into {b}");
        match lab.run_nft(&a, "table inet t { chain c { bogus; } }") {
            Err(Error::Failed { stderr, argv, .. }) => {
                assert!(stderr.contains("Error"), "stderr: {stderr}");
                assert!(argv.iter().any(|a| a == "nft"));
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn kept_lab_survives_drop_and_cleanup_prefix_removes_it() {
        if !privileged_or_skip() {
            return;
        }
        let prefix = unique_prefix("fwt");
        let mut lab = Lab::new(&prefix).expect("lab");
        let a = lab.add_ns("a").expect("ns a");
        lab.add_ns("b").expect("ns b");
        lab.set_keep(true);
        drop(lab);
        let attached = Lab::attach(&prefix).expect("attach");
        assert_eq!(attached.namespaces().len(), 2);
        assert!(attached.exec(&a, &["true"]).is_ok());
        drop(attached); // attached labs are kept
        let mut removed = cleanup_prefix(&prefix).expect("cleanup");
        removed.sort();
        assert_eq!(removed, vec![format!("{prefix}-a"), format!("{prefix}-b")]);
        assert!(Lab::attach(&prefix)
            .expect("attach")
            .namespaces()
            .is_empty());
    }
}
