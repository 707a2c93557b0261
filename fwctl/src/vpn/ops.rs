//! The VPN commands' work: `up`, `down`, `status`, `peer add` — wiring the
//! policy, key files, the tunnel ([`WgApi`]) and rtnetlink together.
//!
//! Input: a policy path and options. Output: reports (what changed, what runs),
//! errors that name the interface and the step.
//! Must not: print (the CLI does), restart a running tunnel (changes go through
//! the diff), or put a secret into a report or an error.

use super::desired::{self, desired, diff, Desired, Inputs};
use super::keys::{self, KeyFiles, PresharedKey, PrivateKey};
use super::netlink::{self, Rtnl};
use super::uapi::{DeviceState, Flavor, Uapi};
use super::userspace::{self, IfaceLock};
use super::plan::{Live, Names, TunnelPlan};
use super::{client, edit, kernel, Error, WgApi};
use crate::check::Loaded;
use crate::model::{IfName, Policy, PublicKey, Vpn};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Load and validate the policy; errors are rendered diagnostics.
pub fn load_policy(path: &Path) -> Result<(Loaded, Policy), Error> {
    let mut loaded = crate::check::load(path, crate::sys::clock::today());
    match loaded.policy.take() {
        Some(p) if !loaded.has_errors() => Ok((loaded, p)),
        _ => {
            let errs: Vec<_> = loaded.diags.iter().filter(|d| d.is_error()).cloned().collect();
            Err(Error::Policy(format!(
                "the policy {} is invalid:\n{}",
                path.display(),
                crate::diag::render_all(&loaded.sm, &errs, crate::diag::Style::plain()).trim_end()
            )))
        }
    }
}

/// The VPNs of `p`, or just the one named `iface`.
pub fn select<'a>(p: &'a Policy, iface: Option<&str>) -> Result<Vec<&'a Vpn>, Error> {
    match iface {
        None => Ok(p.vpns.iter().collect()),
        Some(n) => match p.vpns.iter().find(|v| v.name.as_str() == n) {
            Some(v) => Ok(vec![v]),
            None => Err(Error::Policy(format!(
                "the policy defines no [vpn.{n}] (it has: {})",
                if p.vpns.is_empty() { "none".to_string() } else { p.vpns.iter().map(|v| v.name.to_string()).collect::<Vec<_>>().join(", ") }
            ))),
        },
    }
}

/// Which implementation runs (or is to run) a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Kernel WireGuard when this kernel has it, else userspace.
    Auto,
    /// A `fwctl vpn run` process (boringtun).
    Userspace,
    /// Kernel WireGuard (a `type wireguard` link).
    Kernel,
}

/// Read what the plan needs from files and DNS: the appliance's public key
/// (creating the private key file, 0600, when missing), preshared key
/// fingerprints, resolved endpoints. Returns the inputs and whether the key
/// file was created.
pub fn gather_inputs(vpn: &Vpn) -> Result<(Inputs, bool), Error> {
    let (key, created) = keys::load_private_key(Path::new(&vpn.private_key_file), true)?;
    let mut inputs = Inputs { public_key: Some(key.public_key()), ..Default::default() };
    drop(key);
    peer_inputs(vpn, &mut inputs)?;
    Ok((inputs, created))
}

/// Like [`gather_inputs`], but creating nothing (for `fwctl plan`): a missing
/// private key file is reported as `true` (apply will create it) and a
/// placeholder public key stands in for the unknown one.
pub fn read_inputs(vpn: &Vpn) -> Result<(Inputs, bool), Error> {
    let (public_key, missing) = match keys::load_private_key(Path::new(&vpn.private_key_file), false) {
        Ok((k, _)) => (k.public_key(), false),
        Err(keys::KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => (PublicKey([0; 32]), true),
        Err(e) => return Err(e.into()),
    };
    let mut inputs = Inputs { public_key: Some(public_key), ..Default::default() };
    peer_inputs(vpn, &mut inputs)?;
    Ok((inputs, missing))
}

/// Preshared key fingerprints and resolved endpoints of `vpn`'s peers.
fn peer_inputs(vpn: &Vpn, inputs: &mut Inputs) -> Result<(), Error> {
    for p in &vpn.peers {
        if let Some(f) = &p.preshared_key_file {
            let psk = keys::load_psk(Path::new(f))?;
            inputs.psk_fingerprints.insert(f.clone(), psk.fingerprint());
        }
        if let Some(e) = &p.endpoint {
            let addr: Option<SocketAddr> = e.parse().ok().or_else(|| e.to_socket_addrs().ok().and_then(|mut a| a.next()));
            match addr {
                Some(a) => {
                    inputs.endpoints.insert(e.clone(), a);
                }
                None => return Err(Error::Policy(format!("peer `{}.{}`: endpoint `{e}` does not resolve", vpn.name, p.name))),
            }
        }
    }
    Ok(())
}

/// What `up` did to one interface.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpReport {
    pub iface: String,
    pub backend: &'static str,
    /// The tunnel process was started (or the kernel link created) now.
    pub started: bool,
    /// The private key file was created now.
    pub key_created: bool,
    /// Tunnel changes, one line each (public keys only).
    pub tunnel: Vec<String>,
    /// Link, address and route changes.
    pub link: Vec<String>,
    pub warnings: Vec<String>,
}

/// Plan and apply `vpn` on a running tunnel, then its link; under the
/// interface lock. The common core of `up` and of the tunnel process's
/// initial configuration.
/// `known` names peers the tunnel may still have but `vpn` no longer lists
/// (from the applied policy), so that their removal is reported by name.
pub fn sync(vpn: &Vpn, api: &dyn WgApi, inputs: &Inputs, known: &Names) -> Result<(Desired, Vec<String>, Vec<String>), Error> {
    let want = desired(vpn, inputs).map_err(|e| Error::Policy(e.join("\n")))?;
    let _lock = IfaceLock::acquire(vpn.name.as_str(), Duration::from_secs(30))?;
    let state = api.get()?;
    let plan = diff(&state, &want, api.updates_in_place(&state));
    let mut names = known.clone();
    names.extend(vpn.peers.iter().map(|p| (p.public_key.0, format!("{}.{}", vpn.name, p.name))));
    let tunnel = plan.describe(&names);
    api.apply(&plan, &KeyFiles)?;
    let mut nl = Rtnl::open()?;
    let link = netlink::sync_link(&mut nl, vpn.name.as_str(), &want.link)?;
    Ok((want, tunnel, link))
}

fn userspace_link_check(nl: &mut Rtnl, iface: &str) -> Result<(), Error> {
    match nl.link(iface)? {
        Some(_) => Ok(()),
        None => Err(other_namespace(iface)),
    }
}

/// A process serves the UAPI socket, but the interface is not in this namespace.
fn other_namespace(iface: &str) -> Error {
    Error::Spawn {
        iface: iface.to_string(),
        detail: format!(
            "a process serves {} but there is no interface {iface} in this network namespace: it belongs to another namespace (UAPI socket names are host-wide; use distinct interface names)",
            super::uapi::socket_path(iface).display()
        ),
    }
}

/// An interface of that name exists, but it is no tunnel fwctl can configure.
fn not_a_tunnel(iface: &str, kind: Option<&str>) -> Error {
    Error::Spawn { iface: iface.into(), detail: format!("an interface {iface} (kind {}) exists but no tunnel serves it; remove it or choose another name", kind.unwrap_or("unknown")) }
}

/// `fwctl vpn up`: make each selected VPN's tunnel match the policy, starting
/// it if nothing runs it.
pub fn up(policy_path: &Path, iface: Option<&str>, backend: Backend) -> Result<Vec<UpReport>, Error> {
    let (_, policy) = load_policy(policy_path)?;
    let mut out = vec![];
    for vpn in select(&policy, iface)? {
        out.push(up_one(vpn, backend, &Names::new())?);
    }
    Ok(out)
}

fn up_one(vpn: &Vpn, backend: Backend, known: &Names) -> Result<UpReport, Error> {
    let name = vpn.name.as_str();
    let (inputs, key_created) = gather_inputs(vpn)?;
    let mut nl = Rtnl::open()?;
    let existing = nl.link(name)?;
    let uapi = Uapi::new(name);
    let mut started = false;
    let kernel_link = existing.as_ref().is_some_and(|l| l.kind.as_deref() == Some("wireguard"));
    let use_kernel = kernel_link
        || (!uapi.alive()
            && existing.is_none()
            && match backend {
                Backend::Userspace => false,
                Backend::Kernel => true,
                Backend::Auto => kernel::available(),
            });
    let mut warnings = vec![];
    let (backend_name, report) = if use_kernel {
        if existing.is_none() && !kernel::available() {
            return Err(Error::Spawn { iface: name.into(), detail: "--backend kernel, but this kernel has no WireGuard (use --backend auto or userspace)".into() });
        }
        if existing.is_none() {
            nl.add_wireguard_link(name)?;
            started = true;
        }
        let api = kernel::KernelWg::open(name)?;
        ("kernel", sync(vpn, &api, &inputs, known)?)
    } else {
        if backend == Backend::Kernel {
            return Err(Error::Spawn { iface: name.into(), detail: "--backend kernel, but the interface is run by a userspace tunnel".into() });
        }
        if uapi.alive() {
            userspace_link_check(&mut nl, name)?;
        } else {
            if let Some(l) = &existing {
                return Err(not_a_tunnel(name, l.kind.as_deref()));
            }
            // Started without the policy: this command configures it below, so
            // its report lists everything (a supervised `run --policy` configures
            // itself instead).
            userspace::spawn_detached(name, None, Duration::from_secs(10))?;
            started = true;
        }
        ("userspace", sync(vpn, &uapi, &inputs, known)?)
    };
    let (want, tunnel, link) = report;
    for n in &want.link.unrouted {
        warnings.push(format!("{name}: allowed IP {} is not routed (a default route through the tunnel needs policy routing; add it yourself)", desired::net_cidr(n)));
    }
    Ok(UpReport { iface: name.to_string(), backend: backend_name, started, key_created, tunnel, link, warnings })
}

/// Peer names (`VPN.PEER`) by public key, from every policy given.
pub fn peer_names(policies: &[&Policy]) -> Names {
    let mut names = Names::new();
    for p in policies {
        for v in &p.vpns {
            names.extend(v.peers.iter().map(|x| (x.public_key.0, format!("{}.{}", v.name, x.name))));
        }
    }
    names
}

/// What runs `name` now, read without changing anything.
pub fn observe(name: &str) -> Result<Live, Error> {
    let mut nl = Rtnl::open()?;
    let Some(link) = netlink::observe_link(&mut nl, name)? else {
        return if Uapi::new(name).alive() { Err(other_namespace(name)) } else { Ok(Live::NotRunning) };
    };
    if link.link.kind.as_deref() == Some("wireguard") {
        let device = kernel::KernelWg::open(name)?.get()?;
        return Ok(Live::Running { backend: "kernel", device, link });
    }
    let uapi = Uapi::new(name);
    if !uapi.alive() {
        return Err(not_a_tunnel(name, link.link.kind.as_deref()));
    }
    let device = uapi.get()?;
    let backend = match device.flavor {
        Flavor::Boringtun => "userspace (boringtun)",
        Flavor::Standard => "userspace",
    };
    Ok(Live::Running { backend, device, link })
}

/// The backend `apply` starts a tunnel with (`Backend::Auto`).
pub fn start_backend() -> &'static str {
    if kernel::available() {
        "kernel"
    } else {
        "userspace"
    }
}

/// The tunnel part of `fwctl plan`: for each VPN of `new`, what `apply` would
/// change (read-only: no key file is created, no tunnel started); for each VPN
/// only `old` (the applied policy) has, a stop if its tunnel runs. Problems
/// become [`TunnelPlan::error`] entries, never a failure of the whole plan.
pub fn plan_tunnels(new: &Policy, old: Option<&Policy>) -> Vec<TunnelPlan> {
    let names = peer_names(&[new].into_iter().chain(old).collect::<Vec<_>>());
    let mut out = vec![];
    for vpn in &new.vpns {
        let name = vpn.name.as_str();
        let planned = read_inputs(vpn).and_then(|(inputs, key_missing)| {
            let want = desired(vpn, &inputs).map_err(|e| Error::Policy(e.join("; ")))?;
            let live = observe(name)?;
            Ok(super::plan::plan_tunnel(&want, &live, start_backend(), key_missing, &names))
        });
        match planned {
            Ok(Some(t)) => out.push(t),
            Ok(None) => {}
            Err(e) => out.push(TunnelPlan::error(name, e.to_string())),
        }
    }
    for vpn in old.map(|o| &o.vpns[..]).unwrap_or_default() {
        if new.vpns.iter().any(|v| v.name == vpn.name) {
            continue;
        }
        match observe(vpn.name.as_str()) {
            Ok(Live::Running { backend, .. }) => out.push(TunnelPlan::stop(vpn.name.as_str(), backend)),
            Ok(Live::NotRunning) => {}
            Err(e) => out.push(TunnelPlan::error(vpn.name.as_str(), e.to_string())),
        }
    }
    out
}

/// What `apply` (or a rollback) did to one tunnel. Public keys only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelDone {
    pub iface: String,
    /// `started`, `changed`, `unchanged`, `stopped`.
    pub action: &'static str,
    pub backend: &'static str,
    /// One line per change (peers by name and public key, link changes).
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The outcome of [`sync_tunnels`]: what was done, and what failed (one
/// message per tunnel, joined; each names its interface).
#[derive(Debug, Clone, Default)]
pub struct TunnelSync {
    pub done: Vec<TunnelDone>,
    pub error: Option<String>,
}

impl TunnelSync {
    fn fail(&mut self, iface: &str, e: Error) {
        let m = e.to_string();
        let m = if m.starts_with(&format!("{iface}:")) { m } else { format!("{iface}: {m}") };
        self.error = Some(match self.error.take() {
            Some(prev) => format!("{prev}; {m}"),
            None => m,
        });
    }
}

/// The tunnel part of `fwctl apply` (and of rollback, restore and the confirm
/// watchdog): each VPN of `new` is brought to its peers in place — started if
/// nothing runs it, otherwise changed through the diff, so unchanged peers and
/// the tunnel process are left alone; each VPN only `old` has is stopped. A
/// tunnel that fails does not stop the others (the caller decides what a
/// failure means: apply undoes, a rollback reports).
pub fn sync_tunnels(new: &Policy, old: Option<&Policy>) -> TunnelSync {
    let names = peer_names(&[new].into_iter().chain(old).collect::<Vec<_>>());
    let mut out = TunnelSync::default();
    for vpn in &new.vpns {
        match up_one(vpn, Backend::Auto, &names) {
            Ok(r) => {
                let mut changes = vec![];
                if r.key_created {
                    changes.push(format!("created private key file {} (0600)", vpn.private_key_file));
                }
                changes.extend(r.tunnel.iter().chain(&r.link).cloned());
                let action = if r.started {
                    "started"
                } else if changes.is_empty() {
                    "unchanged"
                } else {
                    "changed"
                };
                out.done.push(TunnelDone { iface: r.iface, action, backend: r.backend, changes, warnings: r.warnings });
            }
            Err(e) => out.fail(vpn.name.as_str(), e),
        }
    }
    for vpn in old.map(|o| &o.vpns[..]).unwrap_or_default() {
        if new.vpns.iter().any(|v| v.name == vpn.name) {
            continue;
        }
        match down(&[vpn.name.to_string()], Duration::from_secs(10)) {
            Ok(rs) => {
                for r in rs.into_iter().filter(|r| r.action != "not running") {
                    out.done.push(TunnelDone { iface: r.iface, action: "stopped", backend: "", changes: vec![r.action], warnings: vec![] });
                }
            }
            Err(e) => out.fail(vpn.name.as_str(), e),
        }
    }
    out
}

/// The real tunnels, for apply, rollback, restore and the watchdog.
pub struct SystemTunnels;

impl crate::apply::Tunnels for SystemTunnels {
    fn plan(&self, new: &Policy, old: Option<&Policy>) -> Vec<TunnelPlan> {
        plan_tunnels(new, old)
    }
    fn sync(&self, new: &Policy, old: Option<&Policy>) -> TunnelSync {
        sync_tunnels(new, old)
    }
}

/// The tunnel process's initial configuration (`fwctl vpn run IFACE --policy`).
pub fn initial_sync(policy_path: &Path, iface: &IfName) -> Result<Vec<String>, Error> {
    let (_, policy) = load_policy(policy_path)?;
    let vpn = select(&policy, Some(iface.as_str()))?[0];
    let (inputs, _) = gather_inputs(vpn)?;
    let (_, mut tunnel, link) = sync(vpn, &Uapi::new(iface.as_str()), &inputs, &Names::new())?;
    tunnel.extend(link);
    Ok(tunnel)
}

/// What `down` did to one interface.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DownReport {
    pub iface: String,
    pub action: String,
}

/// `fwctl vpn down`: stop the tunnel process (SIGTERM to the process serving
/// the UAPI socket, found with SO_PEERCRED) or delete the kernel link.
pub fn down(ifaces: &[String], timeout: Duration) -> Result<Vec<DownReport>, Error> {
    let mut out = vec![];
    let mut nl = Rtnl::open()?;
    for name in ifaces {
        let link = nl.link(name)?;
        let uapi = Uapi::new(name);
        if let Some(l) = link.as_ref().filter(|l| l.kind.as_deref() == Some("wireguard")) {
            nl.del_link(l.index)?;
            out.push(DownReport { iface: name.clone(), action: "deleted kernel WireGuard link".into() });
            continue;
        }
        if !uapi.alive() {
            out.push(DownReport { iface: name.clone(), action: "not running".into() });
            continue;
        }
        userspace_link_check(&mut nl, name)?;
        let pid = uapi.server_pid()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| Error::Io { context: format!("{name}: signal tunnel process {pid}"), source: e.into() })?;
        let deadline = std::time::Instant::now() + timeout;
        while (uapi.alive() || nl.link(name)?.is_some()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if uapi.alive() {
            return Err(Error::Spawn { iface: name.clone(), detail: format!("tunnel process {pid} did not stop within {timeout:?}") });
        }
        out.push(DownReport { iface: name.clone(), action: format!("stopped tunnel process {pid}") });
    }
    Ok(out)
}

/// One peer in `status`. No key material but public keys.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// `VPN.PEER` from the policy, if it names this key.
    pub name: Option<String>,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub keepalive: Option<u16>,
    pub latest_handshake_unix: Option<u64>,
    pub latest_handshake_seconds_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// In the tunnel but not in the policy, or the reverse.
    pub in_policy: bool,
    pub in_tunnel: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IfaceStatus {
    pub iface: String,
    pub running: bool,
    pub backend: Option<&'static str>,
    pub listen_port: Option<u16>,
    pub public_key: Option<String>,
    pub mtu: Option<u32>,
    pub addresses: Vec<String>,
    pub peers: Vec<PeerStatus>,
    pub error: Option<String>,
}

fn peer_status(p: &super::uapi::PeerState, name: Option<String>, now: SystemTime) -> PeerStatus {
    let hs = p.last_handshake.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    PeerStatus {
        name,
        public_key: keys::public_to_base64(&p.public_key),
        endpoint: p.endpoint.map(|e| e.to_string()),
        allowed_ips: p.allowed_ips.iter().map(desired::net_cidr).collect(),
        keepalive: p.keepalive,
        latest_handshake_unix: hs,
        latest_handshake_seconds_ago: p.last_handshake.map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
        in_policy: false,
        in_tunnel: true,
    }
}

/// `fwctl vpn status`: each interface's tunnel as it runs, with the policy's
/// peer names where it has them.
pub fn status(ifaces: &[String], policy: Option<&Policy>) -> Result<Vec<IfaceStatus>, Error> {
    let mut nl = Rtnl::open()?;
    let now = SystemTime::now();
    let mut out = vec![];
    for name in ifaces {
        let vpn = policy.and_then(|p| p.vpns.iter().find(|v| v.name.as_str() == name));
        let link = nl.link(name)?;
        let mut st = IfaceStatus { iface: name.clone(), running: false, backend: None, listen_port: None, public_key: None, mtu: link.as_ref().map(|l| l.mtu), addresses: vec![], peers: vec![], error: None };
        if let Some(l) = &link {
            st.addresses = nl.addresses(l.index)?.iter().filter(|a| !a.link_scope).map(|a| format!("{}/{}", a.addr, a.prefix_len)).collect();
        }
        let got: Result<DeviceState, Error> = if link.as_ref().is_some_and(|l| l.kind.as_deref() == Some("wireguard")) {
            st.backend = Some("kernel");
            kernel::KernelWg::open(name).and_then(|k| k.get())
        } else if link.is_some() && Uapi::new(name).alive() {
            Uapi::new(name).get()
        } else {
            Err(Error::NotRunning { iface: name.clone() })
        };
        match got {
            Ok(d) => {
                st.running = true;
                if st.backend.is_none() {
                    st.backend = Some(match d.flavor {
                        Flavor::Boringtun => "userspace (boringtun)",
                        Flavor::Standard => "userspace",
                    });
                }
                st.listen_port = Some(d.listen_port);
                st.public_key = d.public_key.as_ref().map(keys::public_to_base64);
                for p in &d.peers {
                    let pol = vpn.and_then(|v| v.peers.iter().find(|x| x.public_key == p.public_key));
                    let mut ps = peer_status(p, pol.map(|x| format!("{name}.{}", x.name)), now);
                    ps.in_policy = pol.is_some();
                    st.peers.push(ps);
                }
                if let Some(v) = vpn {
                    for p in &v.peers {
                        if !d.peers.iter().any(|x| x.public_key == p.public_key) {
                            st.peers.push(PeerStatus {
                                name: Some(format!("{name}.{}", p.name)),
                                public_key: keys::public_to_base64(&p.public_key),
                                endpoint: p.endpoint.clone(),
                                allowed_ips: p.allowed_ips.iter().map(desired::net_cidr).collect(),
                                keepalive: p.keepalive,
                                latest_handshake_unix: None,
                                latest_handshake_seconds_ago: None,
                                rx_bytes: 0,
                                tx_bytes: 0,
                                in_policy: true,
                                in_tunnel: false,
                            });
                        }
                    }
                }
            }
            Err(Error::NotRunning { .. }) => {}
            Err(e) => st.error = Some(e.to_string()),
        }
        out.push(st);
    }
    Ok(out)
}

/// Interfaces whose UAPI socket is live and whose link is in this namespace,
/// plus kernel WireGuard links: what `status` shows without a policy.
pub fn running_interfaces() -> Vec<String> {
    let mut out = vec![];
    let Ok(mut nl) = Rtnl::open() else { return out };
    if let Ok(dir) = std::fs::read_dir(super::SOCK_DIR) {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(i) = n.strip_suffix(".sock") {
                if Uapi::new(i).alive() && nl.link(i).ok().flatten().is_some() {
                    out.push(i.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Options of `fwctl vpn peer add`.
#[derive(Debug, Clone)]
pub struct PeerAdd {
    pub policy: PathBuf,
    pub vpn: String,
    pub name: String,
    /// None: auto.
    pub address: Option<String>,
    pub psk: bool,
    pub endpoint: Option<String>,
    pub dns: Vec<String>,
    pub keepalive: u16,
}

/// The new peer. `config` holds the peer's private key (and the preshared key):
/// for the peer, printed once.
pub struct NewPeer {
    pub config: keys::SecretBuf,
    pub policy_file: PathBuf,
    pub psk_file: Option<PathBuf>,
    pub public_key: String,
    pub addresses: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub warnings: Vec<String>,
}

fn valid_peer_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

/// Write `text` to `path` atomically, keeping its permissions.
fn replace_file(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    let perm = std::fs::metadata(path).map_err(io(format!("stat {}", path.display())))?.permissions();
    let tmp = path.with_extension(format!("fwctl-tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("create {}", tmp.display())))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, perm).map_err(io(format!("chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename {} to {}", tmp.display(), path.display())))
}

/// `fwctl vpn peer add`: new key pair, address, policy entry, client config.
pub fn peer_add(o: &PeerAdd) -> Result<NewPeer, Error> {
    if !valid_peer_name(&o.name) {
        return Err(Error::Policy(format!("peer name `{}` must be 1..64 ASCII letters, digits, '-' or '_'", o.name)));
    }
    let (loaded, policy) = load_policy(&o.policy)?;
    let vpn = select(&policy, Some(&o.vpn))?[0];
    if vpn.peers.iter().any(|p| p.name == o.name) {
        return Err(Error::Policy(format!("vpn `{}` already has a peer `{}`", o.vpn, o.name)));
    }
    if let Some(e) = &o.endpoint {
        // It goes into the client's wg-quick file: a newline there would add lines
        // (PostUp = …) that wg-quick runs as root on the client.
        if !crate::model::resolve::valid_endpoint(e) {
            return Err(Error::Policy(format!("--endpoint {e:?} is not HOST:PORT (e.g. 198.51.100.7:51820, [2001:db8::1]:51820, vpn.example.org:51820)")));
        }
    }
    for d in &o.dns {
        if d.trim().parse::<std::net::IpAddr>().is_err() {
            return Err(Error::Policy(format!("--dns {d:?} is not an IP address")));
        }
    }
    let file = loaded.sm.path(vpn.span.file).to_path_buf();
    let addresses: Vec<(std::net::IpAddr, u8)> = match o.address.as_deref() {
        None | Some("auto") => client::choose_addresses(&policy, vpn).map_err(Error::Policy)?,
        Some(cidrs) => {
            let mut v = vec![];
            for c in cidrs.split(',').map(str::trim) {
                let n = crate::model::addr::parse_net(c).map_err(|_| Error::Policy(format!("--address `{c}` is not an address or CIDR (host bits must be zero)")))?;
                v.push((n.first(), desired::net_len(&n)));
            }
            v
        }
    };
    // The appliance's key: created 0600 if missing, only its public half used.
    let (server_key, _) = keys::load_private_key(Path::new(&vpn.private_key_file), true)?;
    let server_public = server_key.public_key();
    drop(server_key);
    let peer_key = PrivateKey::generate()?;
    let peer_public = keys::public_to_base64(&peer_key.public_key());
    let mut psk: Option<(PresharedKey, PathBuf)> = None;
    if o.psk {
        let dir = Path::new(&vpn.private_key_file).parent().map(Path::to_path_buf).unwrap_or_default();
        let path = dir.join(format!("{}-{}.psk", o.vpn, o.name));
        let k = PresharedKey::generate()?;
        keys::create_key_file(&path, &k.expose_base64())?;
        psk = Some((k, path));
    }
    let allowed: Vec<String> = addresses.iter().map(|(a, l)| desired::net_cidr(&desired::net_of(*a, *l))).collect();
    let entry = edit::PeerEntry {
        name: o.name.clone(),
        public_key: peer_public.clone(),
        allowed_ips: allowed.clone(),
        preshared_key_file: psk.as_ref().map(|(_, p)| p.display().to_string()),
        endpoint: None,
        keepalive: None,
    };
    let cleanup = |psk: &Option<(PresharedKey, PathBuf)>| {
        if let Some((_, p)) = psk {
            let _ = std::fs::remove_file(p);
        }
    };
    let original = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            cleanup(&psk);
            return Err(Error::Io { context: format!("read {}", file.display()), source: e });
        }
    };
    let today = crate::sys::clock::today();
    let comment = format!("added by `fwctl vpn peer add` on {:04}-{:02}-{:02}", today.year, today.month, today.day);
    let text = match edit::append_peer(&original, &o.vpn, &entry, Some(&comment)) {
        Ok(t) => t,
        Err(e) => {
            cleanup(&psk);
            return Err(Error::Policy(format!("{}: {e}", file.display())));
        }
    };
    if let Err(e) = replace_file(&file, &text) {
        cleanup(&psk);
        return Err(e);
    }
    // The policy must still be valid with the new peer; otherwise put it back.
    let (_, policy2) = match load_policy(&o.policy) {
        Ok(x) => x,
        Err(e) => {
            let _ = replace_file(&file, &original);
            cleanup(&psk);
            return Err(Error::Policy(format!("adding the peer would make the policy invalid; {} left unchanged.\n{e}", file.display())));
        }
    };
    let vpn2 = select(&policy2, Some(&o.vpn))?[0];
    let allowed_ips = client::client_allowed_ips(&policy2, vpn2, &addresses);
    let mut warnings = vec![];
    if o.endpoint.is_none() {
        warnings.push(format!("no --endpoint given: the client configuration has no Endpoint (the appliance's public address and port {})", vpn.listen_port));
    }
    let config = client::render(&client::ClientConfig {
        comment: format!("fwctl: client configuration for peer {}.{} ({})", o.vpn, o.name, policy.name),
        private_key: &peer_key,
        addresses: &addresses,
        dns: &o.dns,
        server_public_key: &server_public,
        psk: psk.as_ref().map(|(k, _)| k),
        endpoint: o.endpoint.as_deref(),
        listen_port: vpn.listen_port,
        allowed_ips: &allowed_ips,
        keepalive: o.keepalive,
    });
    Ok(NewPeer {
        config,
        policy_file: file,
        psk_file: psk.map(|(_, p)| p),
        public_key: peer_public,
        addresses: addresses.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
        allowed_ips: allowed_ips.iter().map(desired::net_cidr).collect(),
        warnings,
    })
}
