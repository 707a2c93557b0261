//! WireGuard tunnels: the `[vpn.*]` part of a policy made real.
//!
//! The pipeline, as for the firewall: the resolved [`crate::model::Vpn`] →
//! [`desired::Desired`] (pure: peers, addresses, MTU, routes) →
//! [`desired::diff`] against the [`uapi::DeviceState`] read back from the tunnel →
//! a [`desired::SetPlan`] (the minimal change, printable, with no key in it) →
//! executed through a [`WgApi`] (the userspace UAPI socket, or kernel generic
//! netlink) and [`netlink`] (addresses, MTU, routes).
//!
//! Who owns a tunnel: one long-running process per interface, `fwctl vpn run
//! IFACE` ([`userspace`]: boringtun's device in the foreground, fit for a
//! supervisor such as systemd's `fwctl-wg@IFACE.service`). Everything else —
//! `fwctl apply` (and rollback, restore, the confirm watchdog) and `fwctl vpn
//! up` — only talks to that process through the UAPI socket and changes what
//! differs, so a running tunnel is never restarted and untouched peers keep
//! their sessions. They start the process (detached) only when none serves the
//! interface. [`plan`] describes, for `fwctl plan`, what that sync will do.
//!
//! Keys ([`keys`]): private and preshared keys live in 0600 files; the policy
//! and the model hold paths only; secrets are read at the moment they are handed
//! to the tunnel, wiped afterwards, and never reach `Debug`, logs, plans or
//! status output.
//!
//! Modules: [`keys`] (generation, files), [`uapi`] (the cross-platform text
//! protocol), [`desired`] (pure: desired state and diff), [`netlink`] (rtnetlink:
//! link, addresses, routes), [`userspace`] (the tunnel process), [`kernel`]
//! (kernel WireGuard over generic netlink), [`client`] (a new peer's client
//! configuration, QR code, address choice), [`edit`] (appending a peer to a
//! policy file), [`plan`] (pure: the tunnel section of `fwctl plan`), [`ops`]
//! (up / down / status / peer add, and the tunnel side of apply, wiring the
//! above).

pub mod client;
pub mod desired;
pub mod edit;
pub mod kernel;
pub mod keys;
pub mod netlink;
pub mod ops;
pub mod plan;
pub mod uapi;
pub mod userspace;

use std::fmt;
use std::io;

/// Where userspace WireGuard implementations serve their UAPI sockets.
pub const SOCK_DIR: &str = "/var/run/wireguard";
/// Where fwctl keeps per-interface lock and log files of tunnel processes.
pub const RUN_DIR: &str = "/run/fwctl/vpn";

/// Why a VPN operation failed. Each variant keeps the evidence; none holds a key.
#[derive(Debug)]
pub enum Error {
    Key(keys::KeyError),
    /// Talking to a UAPI socket failed at the I/O level.
    Uapi { iface: String, op: &'static str, source: io::Error },
    /// The tunnel answered a UAPI request with a non-zero errno.
    UapiErrno { iface: String, op: &'static str, errno: i32 },
    /// The tunnel's answer could not be understood.
    UapiProtocol { iface: String, detail: String },
    /// A netlink request failed.
    Netlink { op: String, source: io::Error },
    /// No tunnel process serves the interface.
    NotRunning { iface: String },
    /// A tunnel process already serves the interface.
    AlreadyRunning { iface: String },
    /// The tunnel process could not be started or did not come up.
    Spawn { iface: String, detail: String },
    /// boringtun refused to create the device.
    Device { iface: String, detail: String },
    /// The policy is invalid or does not define what was asked for.
    Policy(String),
    /// A file or system call failed.
    Io { context: String, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Key(e) => write!(f, "{e}"),
            Error::Uapi { iface, op, source } => write!(f, "{iface}: UAPI {op} on {}: {source}", uapi::socket_path(iface).display()),
            Error::UapiErrno { iface, op, errno } => {
                write!(f, "{iface}: the tunnel refused UAPI {op}: errno {errno} ({})", io::Error::from_raw_os_error(*errno))
            }
            Error::UapiProtocol { iface, detail } => write!(f, "{iface}: unexpected UAPI answer: {detail}"),
            Error::Netlink { op, source } => write!(f, "netlink: {op}: {source}"),
            Error::NotRunning { iface } => write!(f, "{iface}: no tunnel is running (no live UAPI socket at {})", uapi::socket_path(iface).display()),
            Error::AlreadyRunning { iface } => write!(f, "{iface}: a tunnel process already serves {}", uapi::socket_path(iface).display()),
            Error::Spawn { iface, detail } => write!(f, "{iface}: cannot start the tunnel process: {detail}"),
            Error::Device { iface, detail } => write!(f, "{iface}: cannot create the userspace WireGuard device: {detail}"),
            Error::Policy(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<keys::KeyError> for Error {
    fn from(e: keys::KeyError) -> Self {
        Error::Key(e)
    }
}

/// The tunnel's configuration interface: read its state, apply a change.
/// Implemented by the UAPI socket client (userspace tunnels) and by kernel
/// generic netlink; tests substitute a fake.
pub trait WgApi {
    fn get(&self) -> Result<uapi::DeviceState, Error>;
    /// Apply `plan`; secrets named in it are read from `secrets` at this moment
    /// and wiped when the call returns.
    fn apply(&self, plan: &desired::SetPlan, secrets: &dyn keys::SecretSource) -> Result<(), Error>;
    /// Whether a changed peer can be updated in place (`update_only`), keeping
    /// its session. boringtun 0.7 cannot: it refuses `update_only` and panics
    /// when an existing peer is set again, so a changed peer is removed and
    /// re-added (only that peer's session restarts).
    fn updates_in_place(&self, state: &uapi::DeviceState) -> bool {
        state.flavor == uapi::Flavor::Standard
    }
}
