//! Real packets between lab namespaces, and what came of them.
//!
//! Input: [`Probe`]s, each naming a client and a server namespace (made by
//! [`super::netns::Lab`]), a source and destination address inside them, a protocol
//! and a port. Output: one [`Observed`] per probe: the packet reached a listener
//! on (dst, port) or an echo reply came back ([`Observed::Delivered`]), a TCP reset
//! or ICMP error came back ([`Observed::Refused`]), or nothing within the timeout
//! ([`Observed::Dropped`]).
//! Must not: run in the host's namespace (every socket lives on a thread that
//! entered a named namespace, which refuses the host's), listen anywhere but the
//! probe's exact (dst, port), send to anything but dst, or run past its timeout
//! (+ [`GRACE`]): every blocking call has a timeout and every thread is joined.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    SockFlag, SockProtocol, SockType, SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::netns::{self, join, spawn_in};

/// How often blocked calls wake up to check whether the probe is over.
const SLICE: Duration = Duration::from_millis(20);
/// UDP datagrams and echo requests are re-sent this often until answered.
const RESEND: Duration = Duration::from_millis(250);
/// How long a server may stay up past the timeout: a TCP server finishing a
/// handshake the client completed in time, a UDP server waiting for its client.
pub const GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// One packet exchange. For ICMP, `server_ns` and `port` are not used: the
/// kernel owning `dst` answers the echo request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Probe {
    pub client_ns: String,
    pub server_ns: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub port: u16,
    /// `src` is not an address of the client namespace: the client sends from it
    /// anyway (IP_TRANSPARENT), as an attacker forging a source would (TCP, UDP).
    pub spoofed: bool,
}

impl Probe {
    pub fn new(
        proto: Proto,
        client_ns: &str,
        src: IpAddr,
        server_ns: &str,
        dst: IpAddr,
        port: u16,
    ) -> Probe {
        Probe {
            client_ns: client_ns.into(),
            server_ns: server_ns.into(),
            src,
            dst,
            proto,
            port,
            spoofed: false,
        }
    }

    /// The same probe, sent from a forged source (see [`Probe::spoofed`]).
    pub fn spoofed(self) -> Probe {
        Probe { spoofed: true, ..self }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = format!("{:?}", self.proto).to_lowercase();
        match self.proto {
            Proto::Icmp => write!(
                f,
                "{proto} {} -> {} (from {})",
                self.src, self.dst, self.client_ns
            ),
            _ => write!(
                f,
                "{proto} {} -> {} port {} ({} -> {}){}",
                self.src,
                self.dst,
                self.port,
                self.client_ns,
                self.server_ns,
                if self.spoofed { " spoofed" } else { "" }
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The server accepted the connection / got the datagram, or an echo reply came back.
    Delivered,
    /// A TCP reset or an ICMP error (unreachable, prohibited) came back.
    Refused,
    /// Nothing came back within the timeout (or the client's own firewall refused to send).
    Dropped,
}

/// A probe that could not be carried out; says nothing about the firewall.
#[derive(Debug)]
pub enum Error {
    /// The probe or timeout makes no sense; nothing was sent.
    Invalid { probe: String, reason: &'static str },
    /// Entering a namespace, opening, binding or using a socket failed.
    Setup {
        probe: String,
        ns: String,
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid { probe, reason } => write!(f, "invalid probe {probe}: {reason}"),
            Error::Setup { probe, ns, source } => {
                write!(f, "probe {probe}: in namespace {ns}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Setup { source, .. } => Some(source),
            Error::Invalid { .. } => None,
        }
    }
}

/// Sends one probe and reports what happened, in at most about `timeout` (+ [`GRACE`]).
pub fn run(probe: &Probe, timeout: Duration) -> Result<Observed, Error> {
    let invalid = |reason| {
        Err(Error::Invalid {
            probe: probe.to_string(),
            reason,
        })
    };
    if probe.src.is_ipv4() != probe.dst.is_ipv4() {
        return invalid("src and dst are of different address families");
    }
    if probe.dst.is_unspecified() || probe.dst.is_multicast() {
        return invalid("dst must be a unicast address");
    }
    if probe.proto != Proto::Icmp && probe.port == 0 {
        return invalid("port 0");
    }
    if probe.spoofed && probe.proto == Proto::Icmp {
        return invalid("spoofed probes are TCP or UDP");
    }
    if timeout < Duration::from_millis(1) {
        return invalid("timeout below 1 ms");
    }
    match probe.proto {
        Proto::Tcp => tcp(probe, timeout),
        Proto::Udp => udp(probe, timeout),
        Proto::Icmp => icmp(probe, timeout),
    }
}

/// Runs `probes` on up to `parallelism` threads; results are in input order.
/// TCP/UDP probes to the same (server_ns, dst, port) run one after another.
pub fn run_many(
    probes: &[Probe],
    timeout: Duration,
    parallelism: usize,
) -> Vec<Result<Observed, Error>> {
    // Group probes that would listen on the same socket; groups run in parallel.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<(Proto, &str, IpAddr, u16), usize> = HashMap::new();
    for (i, p) in probes.iter().enumerate() {
        if p.proto == Proto::Icmp {
            groups.push(vec![i]);
            continue;
        }
        let g = *by_key
            .entry((p.proto, &p.server_ns, p.dst, p.port))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    let work = |tx: mpsc::Sender<(usize, Result<Observed, Error>)>| loop {
        let g = next.fetch_add(1, Ordering::Relaxed);
        let Some(group) = groups.get(g) else { break };
        for &i in group {
            let _ = tx.send((i, run(&probes[i], timeout)));
        }
    };
    thread::scope(|s| {
        for _ in 1..parallelism.min(groups.len()) {
            let tx = tx.clone();
            if thread::Builder::new()
                .name("probe".into())
                .spawn_scoped(s, || work(tx))
                .is_err()
            {
                break; // fewer workers; this thread still works below
            }
        }
        work(tx);
    });
    let mut results: Vec<Option<Result<Observed, Error>>> = probes.iter().map(|_| None).collect();
    for (i, r) in rx {
        results[i] = Some(r);
    }
    // Every index is filled: each group is taken by exactly one worker, and a
    // panicking worker re-panics out of the scope above.
    let lost = |i: usize| {
        Err(setup(
            &probes[i],
            &probes[i].client_ns,
            io::Error::other("probe was not run"),
        ))
    };
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| lost(i)))
        .collect()
}

/// What the client side of a TCP or UDP probe saw.
#[derive(Debug, PartialEq)]
enum Client {
    Connected,
    Refused,
    Silent,
}

fn tcp(p: &Probe, timeout: Duration) -> Result<Observed, Error> {
    let dst = SocketAddr::new(p.dst, p.port);
    let stop = Arc::new(AtomicBool::new(false));
    let server_deadline = Instant::now() + timeout + GRACE;
    let server = start_server(p, timeout, {
        let stop = stop.clone();
        move |ready| {
            let listener = bind_retry(|| TcpListener::bind(dst))
                .map_err(|e| context(e, format!("listen on {dst}")))?;
            set_timeout(&listener, sockopt::ReceiveTimeout, SLICE)?; // accept() honours SO_RCVTIMEO
            let _ = ready.send(());
            while Instant::now() < server_deadline && !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => return Ok(true),
                    Err(e) if is_wait(&e) => {}
                    Err(e) => return Err(context(e, "accept".into())),
                }
            }
            Ok(false)
        }
    })?;
    let src = SocketAddr::new(p.src, 0);
    let spoofed = p.spoofed;
    let client = spawn_in(&p.client_ns, move || {
        let fd = socket(
            family(dst.ip()),
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        if spoofed {
            foreign_source(&fd, dst.is_ipv6())?;
        }
        set_timeout(&fd, sockopt::SendTimeout, timeout)?; // bounds a blocking connect()
        bind(fd.as_raw_fd(), &SockaddrStorage::from(src))
            .map_err(|e| context(e.into(), format!("bind {src}")))?;
        match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
            Ok(()) => Ok(Client::Connected),
            Err(Errno::EINPROGRESS | Errno::ETIMEDOUT) => Ok(Client::Silent),
            Err(e) if is_refusal(e) => Ok(Client::Refused),
            Err(e) => Err(context(e.into(), format!("connect {dst}"))),
        }
    });
    let client = finish(p, &p.client_ns, client);
    if client.as_ref().map_or(true, |c| *c != Client::Connected) {
        stop.store(true, Ordering::Relaxed);
    }
    let accepted = finish(p, &p.server_ns, Ok(server))?;
    Ok(verdict(accepted, client?))
}

fn udp(p: &Probe, timeout: Duration) -> Result<Observed, Error> {
    let dst = SocketAddr::new(p.dst, p.port);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + timeout;
    let nonce = netns::random_u64().to_be_bytes();
    // The server outlives the client (it stops when told), so a late datagram
    // cannot meet a closed port and pass for a refusal.
    let server_deadline = deadline + GRACE;
    let server = start_server(p, timeout, {
        let stop = stop.clone();
        move |ready| {
            let sock = bind_retry(|| UdpSocket::bind(dst))
                .map_err(|e| context(e, format!("bind {dst}")))?;
            sock.set_read_timeout(Some(SLICE))?;
            let _ = ready.send(());
            let mut buf = [0u8; 64];
            while Instant::now() < server_deadline && !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == nonce => {
                        stop.store(true, Ordering::Relaxed);
                        return Ok(true);
                    }
                    Ok(_) => {}
                    Err(e) if is_wait(&e) => {}
                    Err(e) => return Err(context(e, "recv".into())),
                }
            }
            Ok(false)
        }
    })?;
    let src = SocketAddr::new(p.src, 0);
    let spoofed = p.spoofed;
    let client = spawn_in(&p.client_ns, {
        let stop = stop.clone();
        move || {
            let sock = if spoofed {
                let fd = socket(family(dst.ip()), SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
                foreign_source(&fd, dst.is_ipv6())?;
                bind(fd.as_raw_fd(), &SockaddrStorage::from(src)).map_err(|e| context(e.into(), format!("bind {src}")))?;
                UdpSocket::from(fd)
            } else {
                UdpSocket::bind(src).map_err(|e| context(e, format!("bind {src}")))?
            };
            sock.connect(dst)?;
            // Report every ICMP error on this socket, not only port-unreachable.
            match dst {
                SocketAddr::V4(_) => setsockopt(&sock, sockopt::Ipv4RecvErr, &true)?,
                SocketAddr::V6(_) => setsockopt(&sock, sockopt::Ipv6RecvErr, &true)?,
            }
            sock.set_read_timeout(Some(SLICE))?;
            let mut next_send = Instant::now();
            let mut buf = [0u8; 64];
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_send {
                    match sock.send(&nonce) {
                        Ok(_) => {}
                        Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                            Errno::EPERM => return Ok(Client::Silent), // our own netns' firewall
                            errno if is_refusal(errno) => return Ok(Client::Refused),
                            _ => return Err(context(e, format!("send to {dst}"))),
                        },
                    }
                    next_send += RESEND;
                }
                match sock.recv(&mut buf) {
                    Ok(_) => {} // a reply we did not ask for; ignore
                    Err(e) if is_wait(&e) => {}
                    Err(e) if is_refusal(Errno::from_raw(e.raw_os_error().unwrap_or(0))) => {
                        return Ok(Client::Refused)
                    }
                    Err(e) => return Err(context(e, "recv".into())),
                }
            }
            Ok(Client::Silent)
        }
    });
    let client = finish(p, &p.client_ns, client);
    stop.store(true, Ordering::Relaxed);
    let received = finish(p, &p.server_ns, Ok(server))?;
    Ok(verdict(received, client?))
}

/// Lets a socket bind to and send from an address its namespace does not have
/// (IP_TRANSPARENT / IPV6_TRANSPARENT, which need CAP_NET_ADMIN): a forged source.
fn foreign_source(fd: &impl AsFd, v6: bool) -> io::Result<()> {
    if !v6 {
        setsockopt(fd, sockopt::IpTransparent, &true)?;
        return Ok(());
    }
    let one: libc::c_int = 1;
    // SAFETY: a descriptor we own, and an option value of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn verdict(arrived: bool, client: Client) -> Observed {
    match (arrived, client) {
        (true, _) => Observed::Delivered,
        (false, Client::Refused) => Observed::Refused,
        _ => Observed::Dropped,
    }
}

/// Echo ids: distinct among this process's probes in flight (a counter), and
/// unlikely to match another process's (mixed with the pid).
static ECHO_ID: AtomicU16 = AtomicU16::new(0);

fn icmp(p: &Probe, timeout: Duration) -> Result<Observed, Error> {
    let (src, dst) = (p.src, p.dst);
    let id = ECHO_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let nonce = netns::random_u64().to_be_bytes();
    let deadline = Instant::now() + timeout;
    let client = spawn_in(&p.client_ns, move || {
        let proto = if dst.is_ipv4() {
            SockProtocol::Icmp
        } else {
            SockProtocol::IcmpV6
        };
        let fd = socket(family(dst), SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)?;
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )
        .map_err(|e| context(e.into(), format!("bind {src}")))?;
        set_timeout(&fd, sockopt::ReceiveTimeout, SLICE)?;
        let to = SockaddrStorage::from(SocketAddr::new(dst, 0));
        let mut seq: u16 = 0;
        let mut next_send = Instant::now();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if Instant::now() >= next_send {
                seq = seq.wrapping_add(1);
                match sendto(
                    fd.as_raw_fd(),
                    &echo_request(dst.is_ipv6(), id, seq, &nonce),
                    &to,
                    MsgFlags::empty(),
                ) {
                    Ok(_) => {}
                    Err(Errno::EPERM) => return Ok(Observed::Dropped),
                    Err(e) if is_refusal(e) => return Ok(Observed::Refused),
                    Err(e) => return Err(context(e.into(), format!("send echo to {dst}"))),
                }
                next_send += RESEND;
            }
            match recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf) {
                Ok((n, from)) => {
                    let from = from.and_then(|a| {
                        a.as_sockaddr_in()
                            .map(|a| IpAddr::from(a.ip()))
                            .or_else(|| a.as_sockaddr_in6().map(|a| IpAddr::from(a.ip())))
                    });
                    if let Some(seen) = classify(&buf[..n], dst, from, id, &nonce) {
                        return Ok(seen);
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(context(e.into(), "recv".into())),
            }
        }
        Ok(Observed::Dropped)
    });
    finish(p, &p.client_ns, client)
}

/// An ICMP(v6) echo request. The kernel fills the ICMPv6 checksum itself.
fn echo_request(v6: bool, id: u16, seq: u16, nonce: &[u8; 8]) -> Vec<u8> {
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend(id.to_be_bytes());
    pkt.extend(seq.to_be_bytes());
    pkt.extend(nonce);
    if !v6 {
        let sum = checksum(&pkt).to_be_bytes();
        pkt[2..4].copy_from_slice(&sum);
    }
    pkt
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reads one packet from a raw ICMP socket (IPv4: with its IP header; IPv6:
/// without). Our echo reply from `dst` → Delivered; an error quoting our
/// request → Refused; anything else → None.
fn classify(
    pkt: &[u8],
    dst: IpAddr,
    from: Option<IpAddr>,
    id: u16,
    nonce: &[u8; 8],
) -> Option<Observed> {
    let ours = |icmp: &[u8], req_type: u8| {
        icmp.len() >= 8 && icmp[0] == req_type && icmp[4..6] == id.to_be_bytes()
    };
    let icmp = match dst {
        IpAddr::V4(_) => pkt.get(usize::from(pkt.first()? & 0x0f) * 4..)?,
        IpAddr::V6(_) => pkt,
    };
    let (reply, unreach, request) = if dst.is_ipv4() {
        (0, 3, 8)
    } else {
        (129, 1, 128)
    };
    let t = *icmp.first()?;
    if t == reply && from == Some(dst) && ours(icmp, reply) && icmp.get(8..16) == Some(&nonce[..]) {
        return Some(Observed::Delivered);
    }
    if t == unreach {
        // The error quotes our original packet after its 8-byte header.
        let inner = icmp.get(8..)?;
        let (inner_dst, inner_icmp) = match dst {
            IpAddr::V4(_) => {
                let ihl = usize::from(inner.first()? & 0x0f) * 4;
                let d: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
                (IpAddr::from(d), inner.get(ihl..)?)
            }
            IpAddr::V6(_) => {
                let d: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
                (IpAddr::from(d), inner.get(40..)?)
            }
        };
        if inner_dst == dst && ours(inner_icmp, request) {
            return Some(Observed::Refused);
        }
    }
    None
}

/// Starts a server thread in the probe's server namespace; returns once it
/// listens, or with the error that stopped it from listening.
fn start_server<F>(
    p: &Probe,
    timeout: Duration,
    serve: F,
) -> Result<thread::JoinHandle<io::Result<bool>>, Error>
where
    F: FnOnce(mpsc::Sender<()>) -> io::Result<bool> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle =
        spawn_in(&p.server_ns, move || serve(ready_tx)).map_err(|e| setup(p, &p.server_ns, e))?;
    match ready_rx.recv_timeout(timeout) {
        Ok(()) => Ok(handle),
        // The thread ended (or never got going): its result says why.
        Err(_) => match join(handle) {
            Err(e) => Err(setup(p, &p.server_ns, e)),
            Ok(_) => Err(setup(
                p,
                &p.server_ns,
                io::Error::other("server did not start listening"),
            )),
        },
    }
}

/// Joins a namespace thread and labels its error with the probe.
fn finish<T>(
    p: &Probe,
    ns: &str,
    spawned: io::Result<thread::JoinHandle<io::Result<T>>>,
) -> Result<T, Error> {
    spawned.and_then(join).map_err(|e| setup(p, ns, e))
}

fn setup(p: &Probe, ns: &str, source: io::Error) -> Error {
    Error::Setup {
        probe: p.to_string(),
        ns: ns.to_string(),
        source,
    }
}

/// Binds, retrying "address in use" for a short while. The previous probe on
/// this (dst, port) has closed its socket, but a child that another thread of
/// this process forked (to run `ip` or `nft`) may hold a copy of the descriptor
/// until it execs.
fn bind_retry<T>(bind: impl Fn() -> io::Result<T>) -> io::Result<T> {
    let give_up = Instant::now() + Duration::from_millis(500);
    loop {
        match bind() {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < give_up => {
                thread::sleep(Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

fn set_timeout<F: AsFd, O>(fd: &F, opt: O, d: Duration) -> io::Result<()>
where
    O: nix::sys::socket::SetSockOpt<Val = TimeVal>,
{
    // Zero would mean "block forever"; round up to at least 1 µs.
    let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1);
    Ok(setsockopt(fd, opt, &TimeVal::microseconds(micros))?)
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A timeout slice ran out; keep waiting.
fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Errors that mean the network answered "no": a reset or an ICMP(v6) error.
fn is_refusal(e: Errno) -> bool {
    matches!(
        e,
        Errno::ECONNREFUSED
            | Errno::ECONNRESET
            | Errno::EHOSTUNREACH
            | Errno::ENETUNREACH
            | Errno::EHOSTDOWN
            | Errno::EACCES // ICMPv6 administratively prohibited
            | Errno::ENOPROTOOPT // protocol unreachable
    )
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::{privileged_or_skip, unique_prefix, Lab};

    const C4: &str = "192.0.2.2";
    const S4: &str = "198.51.100.2";
    const C6: &str = "2001:db8:1::2";
    const S6: &str = "2001:db8:2::2";
    const TIMEOUT: Duration = Duration::from_secs(1);

    /// client (c0) — (r0) router (r1) — (s0) server, IPv4 and IPv6, forwarding on.
    struct Topo {
        lab: Lab,
        client: String,
        router: String,
        server: String,
    }

    fn topo() -> Topo {
        let mut lab = Lab::new(&unique_prefix("fwt")).expect("lab");
        let client = lab.add_ns("client").expect("client");
        let router = lab.add_ns("router").expect("router");
        let server = lab.add_ns("server").expect("server");
        lab.veth(&client, "c0", &router, "r0").expect("veth c-r");
        lab.veth(&router, "r1", &server, "s0").expect("veth r-s");
        for (ns, dev, v4, v6) in [
            (&client, "c0", "192.0.2.2/24", "2001:db8:1::2/64"),
            (&router, "r0", "192.0.2.1/24", "2001:db8:1::1/64"),
            (&router, "r1", "198.51.100.1/24", "2001:db8:2::1/64"),
            (&server, "s0", "198.51.100.2/24", "2001:db8:2::2/64"),
        ] {
            lab.addr(ns, dev, v4).expect("addr v4");
            lab.addr(ns, dev, v6).expect("addr v6");
            lab.link_up(ns, dev).expect("link up");
        }
        lab.route(&client, "198.51.100.0/24", Some("192.0.2.1"), "c0")
            .expect("route");
        lab.route(&client, "2001:db8:2::/64", Some("2001:db8:1::1"), "c0")
            .expect("route");
        lab.route(&server, "192.0.2.0/24", Some("198.51.100.1"), "s0")
            .expect("route");
        lab.route(&server, "2001:db8:1::/64", Some("2001:db8:2::1"), "s0")
            .expect("route");
        lab.forwarding(&router, true).expect("forwarding");
        lab.wait_ready(Duration::from_secs(5)).expect("links up");
        Topo {
            lab,
            client,
            router,
            server,
        }
    }

    impl Topo {
        fn probe(&self, proto: Proto, v6: bool, port: u16) -> Probe {
            let (src, dst) = if v6 { (C6, S6) } else { (C4, S4) };
            Probe::new(proto, &self.client, ip(src), &self.server, ip(dst), port)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn invalid_probes_are_refused_before_sending() {
        let p = Probe::new(Proto::Tcp, "x", ip(C4), "y", ip(S6), 80);
        assert!(matches!(run(&p, TIMEOUT), Err(Error::Invalid { .. })));
        let p = Probe::new(Proto::Udp, "x", ip(C4), "y", ip(S4), 0);
        assert!(matches!(run(&p, TIMEOUT), Err(Error::Invalid { .. })));
        let p = Probe::new(Proto::Tcp, "x", ip(C4), "y", ip(S4), 80);
        assert!(matches!(
            run(&p, Duration::ZERO),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn checksum_matches_a_known_echo_request() {
        // ping -p 00 style: type 8, id 0x1234, seq 1, 8 zero bytes.
        let pkt = echo_request(false, 0x1234, 1, &[0; 8]);
        assert_eq!(checksum(&pkt), 0, "a packet with its checksum sums to zero");
        assert_eq!(&pkt[2..4], &[0xe5, 0xca]);
    }

    #[test]
    fn probe_into_a_missing_namespace_is_an_error() {
        let p = Probe::new(
            Proto::Icmp,
            "fwt-no-such-ns",
            ip(C4),
            "fwt-no-such-ns",
            ip(S4),
            0,
        );
        assert!(matches!(run(&p, TIMEOUT), Err(Error::Setup { .. })));
    }

    #[test]
    fn tcp_udp_icmp_over_ipv4_and_ipv6_are_delivered() {
        if !privileged_or_skip() {
            return;
        }
        let t = topo();
        for v6 in [false, true] {
            for (proto, port) in [(Proto::Tcp, 80), (Proto::Udp, 5353), (Proto::Icmp, 0)] {
                let p = t.probe(proto, v6, port);
                assert_eq!(
                    run(&p, TIMEOUT).expect("probe runs"),
                    Observed::Delivered,
                    "{p}"
                );
            }
        }
        // A server namespace is only reached through its own address.
        let wrong = Probe::new(Proto::Tcp, &t.client, ip(C4), &t.router, ip(S4), 80);
        assert!(
            run(&wrong, TIMEOUT).is_err(),
            "router cannot listen on the server's address"
        );
    }

    #[test]
    fn router_ruleset_drops_and_rejects() {
        if !privileged_or_skip() {
            return;
        }
        let t = topo();
        let ruleset = "table inet fw {
            chain forward {
                type filter hook forward priority 0; policy accept;
                tcp dport 22 drop
                tcp dport 23 reject with tcp reset
                udp dport 53 reject
                icmp type echo-request drop
                icmpv6 type echo-request reject with icmpv6 type admin-prohibited
            }
        }";
        t.lab.run_nft(&t.router, ruleset).expect("load ruleset");
        let expect = [
            (Proto::Tcp, 22, Observed::Dropped, Observed::Dropped),
            (Proto::Tcp, 23, Observed::Refused, Observed::Refused),
            (Proto::Tcp, 80, Observed::Delivered, Observed::Delivered),
            (Proto::Udp, 53, Observed::Refused, Observed::Refused),
            (Proto::Udp, 54, Observed::Delivered, Observed::Delivered),
            (Proto::Icmp, 0, Observed::Dropped, Observed::Refused),
        ];
        let mut probes = Vec::new();
        let mut want = Vec::new();
        for (proto, port, v4, v6) in expect {
            probes.push(t.probe(proto, false, port));
            want.push(v4);
            probes.push(t.probe(proto, true, port));
            want.push(v6);
        }
        let started = Instant::now();
        let got = run_many(&probes, TIMEOUT, 16);
        assert!(
            started.elapsed() < TIMEOUT * 3,
            "took {:?}",
            started.elapsed()
        );
        for ((p, g), w) in probes.iter().zip(got).zip(want) {
            assert_eq!(g.expect("probe runs"), w, "{p}");
        }
    }

    #[test]
    fn many_parallel_probes_finish_quickly() {
        if !privileged_or_skip() {
            return;
        }
        let t = topo();
        let ruleset = "table inet fw {\n chain forward {\n type filter hook forward priority 0;\n udp dport 9 reject\n }\n}\n";
        t.lab.run_nft(&t.router, ruleset).expect("load ruleset");
        let mut probes = Vec::new();
        for i in 0..40u16 {
            let v6 = i % 2 == 1;
            probes.push(t.probe(Proto::Tcp, v6, 1000 + i % 10)); // same (dst, port) 2x each: serialized
            probes.push(t.probe(Proto::Udp, v6, 2000 + i));
            probes.push(t.probe(Proto::Udp, v6, 9)); // 40 rejections: no ICMP rate limit in the lab
        }
        for i in 0..12 {
            probes.push(t.probe(Proto::Icmp, i % 2 == 1, 0));
        }
        let started = Instant::now();
        let got = run_many(&probes, TIMEOUT, 32);
        let took = started.elapsed();
        let mut bad = Vec::new();
        for (p, g) in probes.iter().zip(got) {
            let want = if p.port == 9 {
                Observed::Refused
            } else {
                Observed::Delivered
            };
            if g.as_ref().ok() != Some(&want) {
                bad.push(format!("{p}: {g:?}"));
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
        assert!(
            took < Duration::from_secs(5),
            "{} probes took {took:?}",
            probes.len()
        );
        eprintln!("{} probes in {took:?}", probes.len());
    }
}
