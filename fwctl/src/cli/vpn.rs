//! `fwctl vpn keygen | pubkey | up | down | status | peer add | run`: WireGuard tunnels.
//!
//! Secrets on the way out: `keygen` prints a new private key (asked for, for
//! piping, like `wg genkey`; with `--out FILE` it writes the file, 0600, and
//! prints only the public key); `peer add` prints the new *peer's* configuration,
//! which holds that peer's private key. Nothing else prints a key but public
//! ones; the appliance's private and preshared keys never leave their files
//! except into the tunnel.
use super::{OutputArgs, EXIT_FAIL, EXIT_OK, EXIT_SYSTEM, EXIT_USAGE};
use crate::vpn::{keys, ops, userspace, Error};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct VpnArgs {
    #[command(subcommand)]
    pub cmd: VpnCmd,
}

#[derive(Subcommand, Debug)]
pub enum VpnCmd {
    /// Print a new private key (base64) on stdout, for piping into a file;
    /// with --out, write it to a new 0600 file and print its public key instead
    Keygen(KeygenArgs),
    /// Read a private key on stdin, print its public key
    Pubkey,
    /// Bring the policy's tunnels up, or change running ones to match it,
    /// without a generation or audit record (`fwctl apply` does both: use it)
    Up(UpArgs),
    /// Stop tunnels
    Down(DownArgs),
    /// Show tunnels, peers, handshakes and transfer (never keys)
    Status(StatusArgs),
    /// Manage peers
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Run one userspace tunnel in the foreground (for a supervisor)
    #[command(hide = true)]
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Write the key to this file (created 0600, never overwritten; missing
    /// directories are created 0700) and print only its public key
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Policy directory or file
    #[arg(default_value = super::DEFAULT_POLICY)]
    pub path: PathBuf,
    /// Only this VPN interface
    #[arg(long)]
    pub iface: Option<String>,
    /// Which implementation starts a tunnel that is not running yet
    #[arg(long, value_enum, default_value_t = ops::Backend::Auto)]
    pub backend: ops::Backend,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Policy directory or file (its VPNs are stopped unless --iface is given)
    #[arg(default_value = super::DEFAULT_POLICY)]
    pub path: PathBuf,
    /// Only this interface (needs no policy)
    #[arg(long)]
    pub iface: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Policy directory or file (for peer names; without it, running tunnels are listed)
    #[arg(default_value = super::DEFAULT_POLICY)]
    pub path: PathBuf,
    /// Only this interface
    #[arg(long)]
    pub iface: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum PeerCmd {
    /// Add a peer: new key pair, an address, an entry in the policy file, and
    /// its client configuration on stdout
    Add(PeerAddArgs),
}

#[derive(Args, Debug)]
pub struct PeerAddArgs {
    /// The peer's name (usable in rules as VPN.NAME)
    pub name: String,
    /// The VPN interface the peer joins
    #[arg(long)]
    pub vpn: String,
    /// Policy directory or file
    #[arg(long, default_value = super::DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// `auto` (the first free address in each of the VPN's networks) or
    /// CIDR[,CIDR]
    #[arg(long, default_value = "auto")]
    pub address: String,
    /// Also make a preshared key (a 0600 file next to the VPN's private key)
    #[arg(long)]
    pub psk: bool,
    /// The appliance's public HOST:PORT, as the client should dial it
    #[arg(long)]
    pub endpoint: Option<String>,
    /// DNS servers for the client configuration
    #[arg(long, value_delimiter = ',')]
    pub dns: Vec<String>,
    /// The client's PersistentKeepalive, seconds (0: off)
    #[arg(long, default_value_t = 25)]
    pub keepalive: u16,
    /// Also show the configuration as a QR code on stderr (the terminal), so
    /// that stdout stays a clean configuration file
    #[arg(long)]
    pub qr: bool,
    /// Also write the QR code as a PNG image (created 0600: it holds the peer's key)
    #[arg(long, conflicts_with = "svg")]
    pub png: Option<PathBuf>,
    /// Also write the QR code as an SVG image (created 0600)
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The interface (its name is also the UAPI socket's)
    pub iface: String,
    /// Configure the tunnel from this policy once it is up
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// How to schedule the packet thread (realtime: SCHED_FIFO priority 1 where
    /// the system allows it; see the tunnel's log)
    #[arg(long, value_enum, default_value_t = userspace::Scheduling::Realtime)]
    pub scheduling: userspace::Scheduling,
}

fn code(e: &Error) -> u8 {
    match e {
        Error::Policy(_) => EXIT_FAIL,
        // Bad key text, a key file others can read, a key file in the way.
        Error::Key(keys::KeyError::Format { .. } | keys::KeyError::Permissions { .. } | keys::KeyError::Exists { .. }) => EXIT_FAIL,
        _ => EXIT_SYSTEM,
    }
}

fn fail(e: Error) -> u8 {
    eprintln!("error: {e}");
    code(&e)
}

pub fn exec(a: &VpnArgs) -> u8 {
    match &a.cmd {
        VpnCmd::Keygen(k) => keygen(k),
        VpnCmd::Pubkey => pubkey(),
        VpnCmd::Up(u) => up(u),
        VpnCmd::Down(d) => down(d),
        VpnCmd::Status(s) => status(s),
        VpnCmd::Peer(PeerCmd::Add(p)) => peer_add(p),
        VpnCmd::Run(r) => run(r),
    }
}

fn keygen(a: &KeygenArgs) -> u8 {
    match keys::PrivateKey::generate() {
        Ok(k) if a.out.is_some() => {
            let path = a.out.as_deref().expect("checked");
            match keys::create_key_file(path, &k.expose_base64()) {
                Ok(()) => {
                    println!("{}", keys::public_to_base64(&k.public_key()));
                    EXIT_OK
                }
                Err(e) => fail(e.into()),
            }
        }
        Ok(k) => {
            let mut line = k.expose_base64();
            line.push_str("\n");
            let mut out = std::io::stdout().lock();
            if out.write_all(line.as_bytes()).and_then(|_| out.flush()).is_err() {
                return EXIT_SYSTEM;
            }
            EXIT_OK
        }
        Err(e) => fail(e.into()),
    }
}

fn pubkey() -> u8 {
    let mut input = keys::SecretBuf::new();
    let mut chunk = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if input.as_bytes().len() + n <= 4096 => input.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Ok(_) => break,
            Err(e) => return fail(Error::Io { context: "read stdin".into(), source: e }),
        }
    }
    keys::wipe(&mut chunk);
    match keys::PrivateKey::from_base64(input.as_str(), "stdin") {
        Ok(k) => {
            println!("{}", keys::public_to_base64(&k.public_key()));
            EXIT_OK
        }
        Err(e) => fail(e.into()),
    }
}

fn up(a: &UpArgs) -> u8 {
    match ops::up(&a.path, a.iface.as_deref(), a.backend) {
        Ok(reports) => {
            if a.out.json {
                println!("{}", serde_json::to_string_pretty(&reports).expect("serializable"));
            } else {
                for r in &reports {
                    let state = if r.started { "started" } else { "running" };
                    let n = r.tunnel.len() + r.link.len();
                    println!("{}: {state} ({}), {}", r.iface, r.backend, if n == 0 { "no changes".to_string() } else { format!("{n} change(s)") });
                    if r.key_created {
                        println!("  created private key file (0600)");
                    }
                    for l in r.tunnel.iter().chain(&r.link) {
                        println!("  {l}");
                    }
                }
                if reports.is_empty() {
                    println!("the policy defines no VPN");
                }
            }
            for r in &reports {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
            }
            EXIT_OK
        }
        Err(e) => fail(e),
    }
}

fn down(a: &DownArgs) -> u8 {
    let ifaces = match &a.iface {
        Some(i) => vec![i.clone()],
        None => match ops::load_policy(&a.path) {
            Ok((_, p)) => p.vpns.iter().map(|v| v.name.to_string()).collect(),
            Err(e) => return fail(e),
        },
    };
    match ops::down(&ifaces, Duration::from_secs(10)) {
        Ok(rs) => {
            for r in rs {
                println!("{}: {}", r.iface, r.action);
            }
            EXIT_OK
        }
        Err(e) => fail(e),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn status(a: &StatusArgs) -> u8 {
    let policy = ops::load_policy(&a.path).ok().map(|(_, p)| p);
    let ifaces: Vec<String> = match (&a.iface, &policy) {
        (Some(i), _) => vec![i.clone()],
        (None, Some(p)) => p.vpns.iter().map(|v| v.name.to_string()).collect(),
        (None, None) => ops::running_interfaces(),
    };
    let st = match ops::status(&ifaces, policy.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if a.out.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "interfaces": st })).expect("serializable"));
        return EXIT_OK;
    }
    if st.is_empty() {
        println!("no VPN interfaces");
    }
    for s in &st {
        if !s.running {
            println!("interface: {} (not running){}", s.iface, s.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default());
            continue;
        }
        println!("interface: {} ({})", s.iface, s.backend.unwrap_or("?"));
        if let Some(k) = &s.public_key {
            println!("  public key: {k}");
        }
        if let Some(p) = s.listen_port {
            println!("  listening port: {p}");
        }
        if let Some(m) = s.mtu {
            println!("  mtu: {m}");
        }
        if !s.addresses.is_empty() {
            println!("  addresses: {}", s.addresses.join(", "));
        }
        for p in &s.peers {
            println!();
            let name = p.name.as_deref().unwrap_or("(not in the policy)");
            println!("  peer: {name}");
            println!("    public key: {}", p.public_key);
            if !p.in_tunnel {
                println!("    NOT IN THE TUNNEL (run `fwctl plan` and `fwctl apply`)");
                continue;
            }
            if let Some(e) = &p.endpoint {
                println!("    endpoint: {e}");
            }
            println!("    allowed ips: {}", if p.allowed_ips.is_empty() { "(none)".into() } else { p.allowed_ips.join(", ") });
            match p.latest_handshake_seconds_ago {
                Some(s) => println!("    latest handshake: {s} s ago"),
                None => println!("    latest handshake: never"),
            }
            println!("    transfer: {} received, {} sent", human_bytes(p.rx_bytes), human_bytes(p.tx_bytes));
            if let Some(k) = p.keepalive {
                println!("    persistent keepalive: every {k} s");
            }
        }
    }
    EXIT_OK
}

/// Write into a file made by `keys::create_secret_file`.
fn write_secret(f: &mut std::fs::File, path: &std::path::Path, data: &[u8]) -> Result<(), Error> {
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| Error::Io { context: format!("write {}", path.display()), source: e })
}

fn peer_add(a: &PeerAddArgs) -> u8 {
    let opts = ops::PeerAdd {
        policy: a.policy.clone(),
        vpn: a.vpn.clone(),
        name: a.name.clone(),
        address: Some(a.address.clone()),
        psk: a.psk,
        endpoint: a.endpoint.clone(),
        dns: a.dns.clone(),
        keepalive: a.keepalive,
    };
    // The QR images hold the peer's private key: made new (0600, no existing
    // file, no symlink) before anything changes, so a refusal changes nothing.
    let mut images = vec![];
    for path in a.png.iter().chain(&a.svg) {
        match keys::create_secret_file(path) {
            Ok(f) => images.push((path.clone(), f)),
            Err(e) => {
                for (p, _) in &images {
                    let _ = std::fs::remove_file(p);
                }
                return fail(e.into());
            }
        }
    }
    let remove_images = |images: &[(PathBuf, std::fs::File)]| {
        for (p, _) in images {
            let _ = std::fs::remove_file(p);
        }
    };
    let p = match ops::peer_add(&opts) {
        Ok(p) => p,
        Err(e) => {
            remove_images(&images);
            return fail(e);
        }
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(p.config.as_bytes()).and_then(|_| out.flush()).is_err() {
        return EXIT_SYSTEM;
    }
    eprintln!("added peer {}.{} to {}: address {}, public key {}", a.vpn, a.name, p.policy_file.display(), p.addresses.join(", "), p.public_key);
    if let Some(f) = &p.psk_file {
        eprintln!("preshared key file (0600): {}", f.display());
    }
    eprintln!("client AllowedIPs: {}", p.allowed_ips.join(", "));
    for w in &p.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("next: `fwctl plan` shows the new peer, `fwctl apply` lets the tunnel accept it");
    let mut rc = EXIT_OK;
    if a.qr {
        match crate::vpn::client::qr_terminal(&p.config) {
            Ok(q) => eprintln!("{q}"),
            Err(e) => {
                eprintln!("error: {e}");
                rc = EXIT_SYSTEM;
            }
        }
    }
    for (path, f) in &mut images {
        let svg = a.svg.as_ref() == Some(path);
        let data = if svg { crate::vpn::client::qr_svg(&p.config).map(String::into_bytes) } else { crate::vpn::client::qr_png(&p.config) };
        match data.map_err(|e| Error::Io { context: if svg { "SVG" } else { "PNG" }.into(), source: std::io::Error::other(e) }).and_then(|d| write_secret(f, path, &d)) {
            Ok(()) => eprintln!("QR code written to {} (0600)", path.display()),
            Err(e) => {
                let _ = std::fs::remove_file(&*path);
                rc = fail(e);
            }
        }
    }
    rc
}

fn run(a: &RunArgs) -> u8 {
    let iface = match crate::model::IfName::new(&a.iface) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: interface name {:?} {e}", a.iface);
            return EXIT_USAGE;
        }
    };
    let policy = a.policy.clone();
    let i2 = iface.clone();
    let r = userspace::run(&iface, a.scheduling, move || match &policy {
        Some(p) => ops::initial_sync(p, &i2),
        None => Ok(vec!["no --policy: waiting for configuration through UAPI".into()]),
    });
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => fail(e),
    }
}
