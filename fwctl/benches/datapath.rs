//! Datapath benchmark: prints figures and ratios measured in one run, asserts nothing.
//!
//! `cargo bench --bench datapath` (root; needs `ip`, `nft`, `iperf3`, else prints
//! "skipped: …" and exits 0). Builds client ns —veth— fw ns —veth— server ns
//! (fw: `eth0` faces the client 203.0.113.0/24, `eth1` the server 198.51.100.0/24)
//! and measures, for each ruleset in the fw namespace's forward path:
//! - `none`: no ruleset (the physical limit);
//! - `stateful`: `ct state established,related accept; accept` (a bare stateful firewall);
//! - `fwctl-empty`: fwctl's pipeline compiled from an empty policy (only the `bench`
//!   rule): the empty-firewall baseline for fwctl's scaling claim;
//! - `fwctl-10k`: the fwctl-compiled generated 10k-rule policy plus a `bench` rule;
//! - `linear-10k`: the same policy rendered as one nft rule per policy rule and
//!   family (deny rules first, the bench rule last), named sets per group.
//!
//! Per configuration and repetition: one TCP stream (`iperf3 -t 3`, Gbit/s received)
//! and a flood of new UDP flows (raw socket + sendmmsg, one sender thread per CPU,
//! every packet a new 5-tuple: source 203.0.113.10-250 x source ports 1024-65535,
//! to 198.51.100.10:9000), counted by an nft counter at the server's ingress (which
//! then drops them, so the server never answers). The flood runs in 0.25 s segments
//! with the fw's conntrack table flushed before each, so the table never fills
//! (nf_conntrack_max is read-only inside a child namespace). Repetitions are
//! interleaved across configurations (ruleset reloaded each time); medians reported.
//!
//! Knobs: `FWCTL_BENCH_REPS` (3), `FWCTL_BENCH_SECS` (3, per TCP run and per flood),
//! `FWCTL_BENCH_SENDERS` (UDP sender threads, default: one per CPU), `FWCTL_BENCH_RULES` (10000).
//! `FWCTL_BENCH_DUMP=DIR` writes the policy and both nft scripts there and stops.
//! `FWCTL_BENCH_VARIANTS=a.nft,b.nft` measures extra rulesets alongside (experiments).
//! `FWCTL_BENCH_PROFILE=CONFIG` floods through that one configuration only, for
//! `FWCTL_BENCH_SECS`, under `perf record -a -g` (perf.data in the current directory),
//! and prints its rate: where the kernel spends a new connection's time.
//! Every loop is bounded in count and time; the namespaces go away on exit or panic.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fwctl::model::Policy;
use fwctl::sys::netns::{join, spawn_in, unique_prefix, Lab};

#[path = "common/linear.rs"]
mod linear;
use linear::linear_script;

const CLIENT: &str = "203.0.113.2";
const FW_CLIENT: &str = "203.0.113.1";
const FW_SERVER: &str = "198.51.100.1";
const SERVER: &str = "198.51.100.10";
const SERVER_V4: [u8; 4] = [198, 51, 100, 10];
const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 5201;
/// Source addresses 203.0.113.10..=250, source ports 1024..=65535: 15.5 M tuples.
const SRC_FIRST: u8 = 10;
const SRC_COUNT: u64 = 241;
const PORT_FIRST: u64 = 1024;
const PORT_COUNT: u64 = 65536 - PORT_FIRST;

#[path = "common/harness.rs"]
mod harness;
use harness::{env_num, median, R};

fn main() {
    harness::main("datapath", prerequisites, run);
}

fn prerequisites() -> R<()> {
    fwctl::sys::netns::prerequisites()?;
    match Command::new("iperf3")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("iperf3 not found (apt-get install iperf3)".into()),
    }
}

// ---------------------------------------------------------------------------
// The policy

const BENCH_SERVICE: &str = "bench = { tcp = [5201], udp = [9000] }";
const BENCH_RULE: &str = "\n[[rules]]\nname = \"bench\"\nfrom = \"internet\"\nto = \"198.51.100.10\"\nallow = [\"bench\"]\n";

/// The generated policy with the `bench` service (first entry of the existing
/// `[services]` table: TOML allows one `[services]` header) and rule (last).
fn bench_policy_text(rules: usize) -> R<String> {
    let text = fwctl::gen::policy(&fwctl::gen::Shape::for_rules(rules), 42);
    let at = text
        .find("\n[services]\n")
        .ok_or("generated policy has no [services] table")?
        + "\n[services]\n".len();
    let mut out = String::with_capacity(text.len() + 256);
    out.push_str(&text[..at]);
    out.push_str(BENCH_SERVICE);
    out.push('\n');
    out.push_str(&text[at..]);
    out.push_str(BENCH_RULE);
    Ok(out)
}

fn load_policy(text: &str) -> R<Policy> {
    let today = fwctl::model::Date {
        year: 2026,
        month: 11,
        day: 23,
    };
    let loaded = fwctl::check::load_str("bench.toml", text, today);
    if loaded.has_errors() || loaded.policy.is_none() {
        let errs: Vec<String> = loaded
            .diags
            .iter()
            .filter(|d| d.is_error())
            .take(3)
            .map(|d| format!("{d:?}"))
            .collect();
        return Err(format!("bench policy is invalid: {}", errs.join("\n")));
    }
    Ok(loaded.policy.expect("checked"))
}

/// The reference evaluator must accept both bench flows (fw eth0 → eth1).
fn check_bench_flows(p: &Policy) -> R<()> {
    use fwctl::eval::{evaluate, Hook, Packet, Verdict};
    for (proto, port) in [
        (fwctl::model::Proto::Tcp, TCP_PORT),
        (fwctl::model::Proto::Udp, UDP_PORT),
    ] {
        let pkt = Packet {
            hook: Hook::Forward,
            iif: Some("eth0".into()),
            oif: Some("eth1".into()),
            src: IpAddr::V4("203.0.113.77".parse().expect("addr")),
            dst: IpAddr::V4(SERVER.parse().expect("addr")),
            proto,
            port,
        };
        let d = evaluate(p, &pkt);
        if d.verdict != Verdict::Accept {
            return Err(format!(
                "evaluate: bench flow {proto:?}/{port} is {:?} ({:?})",
                d.verdict, d.reason
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The lab

struct Topo {
    lab: Lab,
    client: String,
    fw: String,
    server: String,
}

fn build_lab() -> R<Topo> {
    let e = |e: fwctl::sys::netns::Error| e.to_string();
    let mut lab = Lab::new(&unique_prefix("fwdp")).map_err(e)?;
    let client = lab.add_ns("cli").map_err(e)?;
    let fw = lab.add_ns("fw").map_err(e)?;
    let server = lab.add_ns("srv").map_err(e)?;
    lab.veth(&client, "eth0", &fw, "eth0").map_err(e)?;
    lab.veth(&fw, "eth1", &server, "eth0").map_err(e)?;
    lab.addr(&client, "eth0", &format!("{CLIENT}/24"))
        .map_err(e)?;
    lab.addr(&fw, "eth0", &format!("{FW_CLIENT}/24"))
        .map_err(e)?;
    lab.addr(&fw, "eth1", &format!("{FW_SERVER}/24"))
        .map_err(e)?;
    lab.addr(&server, "eth0", &format!("{SERVER}/24"))
        .map_err(e)?;
    for (ns, dev) in [
        (&client, "eth0"),
        (&fw, "eth0"),
        (&fw, "eth1"),
        (&server, "eth0"),
    ] {
        lab.link_up(ns, dev).map_err(e)?;
    }
    lab.route(&client, "default", Some(FW_CLIENT), "eth0")
        .map_err(e)?;
    lab.route(&server, "default", Some(FW_SERVER), "eth0")
        .map_err(e)?;
    lab.forwarding(&fw, true).map_err(e)?;
    lab.wait_ready(Duration::from_secs(10)).map_err(e)?;
    // The "receiver": count the flood's datagrams at the server's ingress and drop
    // them there (no socket work, no ICMP port-unreachable back through the fw).
    lab.run_nft(
        &server,
        "table netdev sink {\n counter rx { }\n chain in {\n  type filter hook ingress device \"eth0\" priority 0;\n  udp dport 9000 counter name \"rx\" drop\n }\n}\n",
    )
    .map_err(e)?;
    Ok(Topo {
        lab,
        client,
        fw,
        server,
    })
}

fn rx_counter(t: &Topo) -> R<u64> {
    let out = t
        .lab
        .exec(
            &t.server,
            &["nft", "-j", "list", "counter", "netdev", "sink", "rx"],
        )
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j: {e}"))?;
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
        .ok_or_else(|| "no rx counter in nft output".to_string())
}

/// Kernel view of the fw ruleset: (rules, set/map elements).
fn kernel_counts(t: &Topo) -> R<(usize, usize)> {
    let out = t
        .lab
        .exec(&t.fw, &["nft", "-j", "list", "ruleset"])
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j: {e}"))?;
    let mut rules = 0;
    let mut elems = 0;
    for o in v["nftables"].as_array().into_iter().flatten() {
        if o.get("rule").is_some() {
            rules += 1;
        }
        for k in ["set", "map"] {
            if let Some(a) = o
                .get(k)
                .and_then(|s| s.get("elem"))
                .and_then(|e| e.as_array())
            {
                elems += a.len();
            }
        }
    }
    Ok((rules, elems))
}

// ---------------------------------------------------------------------------
// Raw syscalls (std links libc; no extra dependency)

#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}
#[repr(C)]
struct MsgHdr {
    name: *mut u8,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
}
#[repr(C)]
struct MMsgHdr {
    hdr: MsgHdr,
    len: u32,
}
#[repr(C)]
struct SockAddrIn {
    family: u16,
    port: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}
#[repr(C)]
struct SockAddrNl {
    family: u16,
    pad: u16,
    pid: u32,
    groups: u32,
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn sendmmsg(fd: i32, msgvec: *mut MMsgHdr, vlen: u32, flags: i32) -> i32;
    fn sendto(
        fd: i32,
        buf: *const u8,
        len: usize,
        flags: i32,
        addr: *const u8,
        addrlen: u32,
    ) -> isize;
    fn recv(fd: i32, buf: *mut u8, len: usize, flags: i32) -> isize;
    fn setsockopt(fd: i32, level: i32, name: i32, val: *const u8, len: u32) -> i32;
}

const AF_INET: i32 = 2;
const AF_NETLINK: i32 = 16;
const SOCK_RAW: i32 = 3;
const IPPROTO_RAW: i32 = 255;
const NETLINK_NETFILTER: i32 = 12;
const SOL_SOCKET: i32 = 1;
const SO_RCVTIMEO: i32 = 20;

fn raw_socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    let fd = unsafe { socket(domain, ty, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Deletes every conntrack entry of the calling thread's namespace (what
/// `conntrack -F` sends: IPCTNL_MSG_CT_DELETE with no tuple).
fn conntrack_flush() -> io::Result<()> {
    let fd = raw_socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)?;
    let tv: [i64; 2] = [2, 0];
    unsafe {
        setsockopt(
            fd.as_raw_fd(),
            SOL_SOCKET,
            SO_RCVTIMEO,
            tv.as_ptr().cast(),
            16,
        )
    };
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&20u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&((1u16 << 8) | 2).to_ne_bytes()); // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
    msg.extend_from_slice(&(1u16 | 4).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0
    let sa = SockAddrNl {
        family: AF_NETLINK as u16,
        pad: 0,
        pid: 0,
        groups: 0,
    };
    let n = unsafe {
        sendto(
            fd.as_raw_fd(),
            msg.as_ptr(),
            msg.len(),
            0,
            (&sa as *const SockAddrNl).cast(),
            12,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 256];
    let n = unsafe { recv(fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // NLMSG_ERROR (2) carries the result; 0 is the ACK.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(io::Error::from_raw_os_error(-err));
        }
    }
    Ok(())
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send + 'static) -> R<T> {
    let h = spawn_in(ns, f).map_err(|e| format!("thread in {ns}: {e}"))?;
    join(h).map_err(|e| format!("in {ns}: {e}"))
}

/// (nf_conntrack_count, summed per-CPU stats by column name) of a namespace.
fn conntrack_state(ns: &str) -> R<(u64, BTreeMap<String, u64>)> {
    in_ns(ns, || {
        let count = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")?
            .trim()
            .parse()
            .unwrap_or(0);
        let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")?;
        let mut lines = text.lines();
        let names: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut sums = BTreeMap::new();
        for l in lines {
            for (name, v) in names.iter().zip(l.split_whitespace()) {
                if name != "entries" {
                    *sums.entry(name.clone()).or_insert(0) +=
                        u64::from_str_radix(v, 16).unwrap_or(0);
                }
            }
        }
        Ok((count, sums))
    })
}

// ---------------------------------------------------------------------------
// Load generators

/// Sends UDP datagrams to 198.51.100.10:9000 for `secs`, each from a new
/// (source address, source port): tuple k = start + thread + i * threads.
/// Returns (sent, send errors, elapsed, CPU time of the sender threads). The
/// forwarding of a sent datagram through the fw and server namespaces runs in the
/// sender's softirq context, so the threads' CPU time is the path's cost.
fn udp_flood(client_ns: &str, threads: u64, start: u64, secs: f64) -> R<(u64, u64, Duration, Duration)> {
    const BATCH: usize = 64;
    const PAYLOAD: usize = 18;
    const LEN: usize = 20 + 8 + PAYLOAD;
    // Hard ceiling in count too, whatever the clock does.
    let max_packets: u64 = (secs * 2_000_000.0) as u64 + 1;
    let mut handles = vec![];
    for t in 0..threads {
        let h = spawn_in(client_ns, move || {
            let fd = raw_socket(AF_INET, SOCK_RAW, IPPROTO_RAW)?; // IPPROTO_RAW implies IP_HDRINCL
            let mut bufs = vec![[0u8; LEN]; BATCH];
            for b in bufs.iter_mut() {
                b[0] = 0x45; // IPv4, 20-byte header; length, id and checksum: kernel fills in
                b[8] = 64; // TTL
                b[9] = 17; // UDP
                b[12..16].copy_from_slice(&[203, 0, 113, SRC_FIRST]);
                b[16..20].copy_from_slice(&SERVER_V4);
                b[22..24].copy_from_slice(&UDP_PORT.to_be_bytes());
                b[24..26].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
                // checksum 0: none
            }
            let mut dst = SockAddrIn {
                family: AF_INET as u16,
                port: 0,
                addr: SERVER_V4,
                zero: [0; 8],
            };
            let mut iovs: Vec<IoVec> = bufs
                .iter_mut()
                .map(|b| IoVec {
                    base: b.as_mut_ptr(),
                    len: LEN,
                })
                .collect();
            let mut msgs: Vec<MMsgHdr> = iovs
                .iter_mut()
                .map(|iov| MMsgHdr {
                    hdr: MsgHdr {
                        name: (&mut dst as *mut SockAddrIn).cast(),
                        namelen: std::mem::size_of::<SockAddrIn>() as u32,
                        iov,
                        iovlen: 1,
                        control: std::ptr::null_mut(),
                        controllen: 0,
                        flags: 0,
                    },
                    len: 0,
                })
                .collect();
            let (mut sent, mut errors, mut k) = (0u64, 0u64, start + t);
            let cpu0 = thread_cpu();
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs_f64(secs);
            while sent + errors < max_packets && Instant::now() < deadline {
                for b in bufs.iter_mut() {
                    let src = SRC_FIRST as u64 + k % SRC_COUNT;
                    let port = (PORT_FIRST + (k / SRC_COUNT) % PORT_COUNT) as u16;
                    b[15] = src as u8;
                    b[20..22].copy_from_slice(&port.to_be_bytes());
                    k += threads;
                }
                let mut off = 0;
                while off < BATCH {
                    let n = unsafe {
                        sendmmsg(
                            fd.as_raw_fd(),
                            msgs.as_mut_ptr().add(off),
                            (BATCH - off) as u32,
                            0,
                        )
                    };
                    if n <= 0 {
                        errors += 1; // e.g. ENOBUFS: skip this datagram (its tuple is not reused)
                        off += 1;
                    } else {
                        sent += n as u64;
                        off += n as usize;
                    }
                }
            }
            Ok((sent, errors, t0.elapsed(), thread_cpu().saturating_sub(cpu0)))
        })
        .map_err(|e| format!("sender thread: {e}"))?;
        handles.push(h);
    }
    let (mut sent, mut errors, mut elapsed, mut cpu) = (0, 0, Duration::ZERO, Duration::ZERO);
    for h in handles {
        let (s, e, d, c) = join(h).map_err(|e| format!("sender: {e}"))?;
        sent += s;
        errors += e;
        elapsed = elapsed.max(d);
        cpu += c;
    }
    Ok((sent, errors, elapsed, cpu))
}

/// CPU time of the calling thread (includes softirq work done in its context).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

struct Udp {
    kpps: f64,
    /// Sender threads' CPU time per datagram sent, ns: the path's cost, much less
    /// sensitive than the rate to other work sharing the machine.
    cpu_ns: f64,
    sent_kpps: f64,
    errors: u64,
    /// Largest nf_conntrack_count seen at the end of a segment.
    ct_max: u64,
    /// Packets conntrack dropped (table full, `drop`), entries it evicted to make
    /// room (`early_drop`), and insert races (`insert_failed`).
    ct_drop: u64,
    ct_early_drop: u64,
    ct_insert_failed: u64,
}

/// Floods in segments of at most SEGMENT_S, flushing the fw's conntrack table
/// before each so that it never fills (nf_conntrack_max is read-only inside a
/// child namespace): every packet creates an entry, none is evicted.
const SEGMENT_S: f64 = 0.25;

fn measure_udp(t: &Topo, threads: u64, mut start: u64, secs: f64) -> R<Udp> {
    let segments = (secs / SEGMENT_S).ceil().max(1.0) as u64;
    let seg = secs / segments as f64;
    let rx0 = rx_counter(t)?;
    let mut u = Udp {
        kpps: 0.0,
        cpu_ns: 0.0,
        sent_kpps: 0.0,
        errors: 0,
        ct_max: 0,
        ct_drop: 0,
        ct_early_drop: 0,
        ct_insert_failed: 0,
    };
    let (mut sent, mut elapsed, mut cpu) = (0u64, Duration::ZERO, Duration::ZERO);
    for _ in 0..segments {
        in_ns(&t.fw, conntrack_flush).map_err(|e| format!("conntrack flush: {e}"))?;
        let (_, before) = conntrack_state(&t.fw)?;
        let (s, e, d, c) = udp_flood(&t.client, threads, start, seg)?;
        start += s + e + threads;
        sent += s;
        cpu += c;
        u.errors += e;
        elapsed += d;
        let (count, after) = conntrack_state(&t.fw)?;
        let delta = |k: &str| {
            after
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(k).copied().unwrap_or(0))
        };
        u.ct_max = u.ct_max.max(count);
        u.ct_drop += delta("drop");
        u.ct_early_drop += delta("early_drop");
        u.ct_insert_failed += delta("insert_failed");
    }
    // Forwarding runs in the senders' softirq context; let any backlog drain.
    std::thread::sleep(Duration::from_millis(100));
    let rx1 = rx_counter(t)?;
    in_ns(&t.fw, conntrack_flush).map_err(|e| format!("conntrack flush: {e}"))?;
    let s = elapsed.as_secs_f64().max(1e-3);
    u.kpps = (rx1 - rx0) as f64 / s / 1e3;
    u.sent_kpps = sent as f64 / s / 1e3;
    u.cpu_ns = cpu.as_nanos() as f64 / sent.max(1) as f64;
    Ok(u)
}

/// Kills (SIGTERM to `timeout`, which passes it on) and reaps a helper on drop.
struct Helper(Child);
impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One TCP stream for `secs`; Gbit/s received at the server.
fn measure_tcp(t: &Topo, secs: u64) -> R<f64> {
    let bound = (secs + 15).to_string();
    let secs_s = secs.to_string();
    let mut last = String::new();
    for _attempt in 0..3 {
        let server = Command::new("ip")
            .args([
                "netns", "exec", &t.server, "timeout", &bound, "iperf3", "-s", "-1", "-B", SERVER,
                "-p", "5201",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 -s: {e}"))?;
        let _server = Helper(server);
        std::thread::sleep(Duration::from_millis(300));
        let out = t.lab.exec(
            &t.client,
            &[
                "timeout",
                &bound,
                "iperf3",
                "-c",
                SERVER,
                "-p",
                "5201",
                "-t",
                &secs_s,
                "-J",
                "--connect-timeout",
                "2000",
            ],
        );
        match out {
            Ok(o) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&o.stdout).map_err(|e| format!("iperf3 -J: {e}"))?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    return Ok(bps / 1e9);
                }
                last = format!("iperf3 output without end.sum_received: {}", v["error"]);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("iperf3 failed 3 times: {last}"))
}

// ---------------------------------------------------------------------------
// The run

struct Config {
    name: String,
    script: Option<String>,
}

#[derive(Default)]
struct Results {
    load_s: Vec<f64>,
    tcp: Vec<f64>,
    udp: Vec<Udp>,
    kernel: Option<(usize, usize)>,
}


fn run() -> R<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let reps = env_num("FWCTL_BENCH_REPS", 3).clamp(1, 9);
    let secs = env_num("FWCTL_BENCH_SECS", 3).clamp(1, 10);
    let senders = env_num("FWCTL_BENCH_SENDERS", cpus).clamp(1, 8);
    let nrules = env_num("FWCTL_BENCH_RULES", 10_000).clamp(10, 100_000) as usize;
    let started = Instant::now();
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let load_start = loadavg();

    let text = bench_policy_text(nrules)?;
    let policy = load_policy(&text)?;
    check_bench_flows(&policy)?;
    let compiled =
        fwctl::compile::compile(&policy, fwctl::compile::Capabilities { flowtable: false })
            .map_err(|e| e.to_string())?;
    let fwctl_script = fwctl::render::nft::script(&compiled.ruleset, "datapath bench");
    // The empty-firewall baseline: fwctl's own pipeline with no rule but the bench one.
    let empty_policy = load_policy(&bench_policy_text(0)?)?;
    check_bench_flows(&empty_policy)?;
    let empty_script = fwctl::render::nft::script(
        &fwctl::compile::compile(&empty_policy, fwctl::compile::Capabilities { flowtable: false }).map_err(|e| e.to_string())?.ruleset,
        "datapath bench (empty policy)",
    );
    let linear = linear_script(&policy);
    let st = &compiled.ruleset.stats;
    let tag = if nrules.is_multiple_of(1000) {
        format!("{}k", nrules / 1000)
    } else {
        nrules.to_string()
    };
    println!(
        "datapath benchmark: client ns -> fw ns (eth0 -> eth1) -> server ns over veth; {cpus} CPUs"
    );
    println!(
        "policy: gen::policy(Shape::for_rules({nrules}), 42) + bench rule = {} rules, {:.1} MB TOML; eval: bench tcp/{TCP_PORT} and udp/{UDP_PORT} eth0->eth1 accepted",
        policy.rules.len(),
        text.len() as f64 / 1e6
    );
    println!(
        "fwctl-{tag}: compiler says {} kernel rules, {} sets, {} elements; nft script {:.1} MB",
        st.kernel_rules,
        st.sets,
        st.elements,
        fwctl_script.len() as f64 / 1e6
    );
    println!(
        "linear-{tag}: {} rules, {} named sets, {} elements; nft script {:.1} MB",
        linear.rules,
        linear.sets,
        linear.elements,
        linear.script.len() as f64 / 1e6
    );
    println!(
        "{reps} reps interleaved over the configs (ruleset reloaded each time, median reported); {secs} s TCP run; {secs} s UDP flood from {senders} sender thread(s) in {} s segments, fw conntrack flushed before each segment",
        SEGMENT_S
    );

    if let Ok(dir) = std::env::var("FWCTL_BENCH_DUMP") {
        // Inspection aid: write what would be loaded, then stop.
        for (name, body) in [
            ("policy.toml", &text),
            ("fwctl.nft", &fwctl_script),
            ("linear.nft", &linear.script),
        ] {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        println!("wrote policy.toml, fwctl.nft, linear.nft to {dir}");
        return Ok(());
    }
    let mut configs = vec![
        Config { name: "none".into(), script: None },
        Config {
            name: "stateful".into(),
            script: Some("table inet base {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n  ct state established,related accept\n  accept\n }\n}\n".into()),
        },
        Config { name: "fwctl-empty".into(), script: Some(empty_script) },
        Config { name: format!("fwctl-{tag}"), script: Some(fwctl_script) },
        Config { name: format!("linear-{tag}"), script: Some(linear.script) },
    ];
    // Experiments: extra rulesets measured alongside, named by file stem.
    for f in std::env::var("FWCTL_BENCH_VARIANTS").unwrap_or_default().split(',').filter(|f| !f.is_empty()) {
        let path = std::path::Path::new(f);
        let script = std::fs::read_to_string(path).map_err(|e| format!("{f}: {e}"))?;
        configs.push(Config { name: path.file_stem().map_or(f.into(), |s| s.to_string_lossy().into_owned()), script: Some(script) });
    }

    let topo = build_lab()?;
    let e = |e: fwctl::sys::netns::Error| e.to_string();
    if let Ok(which) = std::env::var("FWCTL_BENCH_PROFILE") {
        let c = configs.iter().find(|c| c.name == which).ok_or_else(|| format!("FWCTL_BENCH_PROFILE: no config {which}"))?;
        topo.lab.run_nft(&topo.fw, "flush ruleset\n").map_err(e)?;
        if let Some(s) = &c.script {
            topo.lab.run_nft(&topo.fw, s).map_err(e)?;
        }
        measure_udp(&topo, senders, 10_000_000, 0.5)?;
        let mut perf = Helper(
            Command::new("perf")
                .args(["record", "-a", "-g", "-q", "-o", "perf.data", "--", "sleep", &(secs + 1).to_string()])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|err| format!("perf: {err}"))?,
        );
        std::thread::sleep(Duration::from_millis(300));
        let udp = measure_udp(&topo, senders, 0, secs as f64)?;
        let _ = perf.0.wait();
        println!("profile {which}: new UDP {:.1} kpps (sent {:.1}), {:.0} ns CPU per flow; perf.data written", udp.kpps, udp.sent_kpps, udp.cpu_ns);
        return Ok(());
    }
    let ct_max =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap_or_default();
    eprintln!(
        "lab {} up; nf_conntrack_max {} (read-only in a child namespace)",
        topo.lab.prefix(),
        ct_max.trim()
    );

    // Warm-up, not counted: neighbours resolved, caches and CPU clocks settled.
    measure_tcp(&topo, 1)?;
    measure_udp(&topo, senders, 10_000_000, 0.5)?;

    let mut results: Vec<Results> = configs.iter().map(|_| Results::default()).collect();
    let mut tuple_start = 0u64;
    for rep in 0..reps {
        for (c, res) in configs.iter().zip(results.iter_mut()) {
            topo.lab.run_nft(&topo.fw, "flush ruleset\n").map_err(e)?;
            if let Some(s) = &c.script {
                let t0 = Instant::now();
                topo.lab
                    .run_nft(&topo.fw, s)
                    .map_err(|err| format!("load {}: {}", c.name, e(err)))?;
                res.load_s.push(t0.elapsed().as_secs_f64());
                if rep == 0 && c.name != "stateful" {
                    res.kernel = Some(kernel_counts(&topo)?);
                }
            }
            let tcp = measure_tcp(&topo, secs)?;
            let udp = measure_udp(&topo, senders, tuple_start, secs as f64)?;
            tuple_start = (tuple_start + 3_000_000) % (SRC_COUNT * PORT_COUNT);
            eprintln!(
                "  rep {} {:<11} tcp {:6.2} Gbit/s | udp recv {:7.1} kpps sent {:7.1} kpps cpu {:6.0} ns/flow send_err {} | fw conntrack max {} drop {} early_drop {} insert_failed {}",
                rep + 1,
                c.name,
                tcp,
                udp.kpps,
                udp.sent_kpps,
                udp.cpu_ns,
                udp.errors,
                udp.ct_max,
                udp.ct_drop,
                udp.ct_early_drop,
                udp.ct_insert_failed
            );
            res.tcp.push(tcp);
            res.udp.push(udp);
        }
    }
    topo.lab.run_nft(&topo.fw, "flush ruleset\n").map_err(e)?;
    let prefix = topo.lab.prefix().to_string();
    drop(topo);

    let med: Vec<(f64, f64, f64)> = results
        .iter()
        .map(|r| {
            let kpps = median(&r.udp.iter().map(|u| u.kpps).collect::<Vec<_>>());
            let sent = median(&r.udp.iter().map(|u| u.sent_kpps).collect::<Vec<_>>());
            (median(&r.tcp), kpps, sent)
        })
        .collect();
    let none = med[0];
    // Ratios within a rep (configs measured back to back), then the median: less
    // sensitive to the shared machine's drift than a ratio of medians.
    let ratio = |a: &Results, b: &Results, f: fn(&Results, usize) -> f64| {
        median(
            &(0..a.tcp.len().min(b.tcp.len()))
                .map(|i| f(a, i) / f(b, i))
                .collect::<Vec<_>>(),
        )
    };
    println!();
    println!(
        "{:<11} {:>6} {:>6} {:>8} {:>10} {:>12} {:>15} {:>16} {:>11} {:>12} {:>11} {:>15}",
        "config",
        "load_s",
        "krules",
        "elements",
        "tcp_Gbit/s",
        "new_udp_kpps",
        "tcp_vs_stateful",
        "kpps_vs_stateful",
        "tcp_vs_none",
        "kpps_vs_none",
        "cpu_ns/flow",
        "cpu_vs_stateful"
    );
    for ((c, r), m) in configs.iter().zip(&results).zip(&med) {
        let load = if r.load_s.is_empty() {
            "-".to_string()
        } else {
            format!("{:.3}", median(&r.load_s))
        };
        let (kr, el) = r
            .kernel
            .map_or(("-".to_string(), "-".to_string()), |(a, b)| {
                (a.to_string(), b.to_string())
            });
        println!(
            "{:<11} {:>6} {:>6} {:>8} {:>10.2} {:>12.1} {:>15.3} {:>16.3} {:>11.3} {:>12.3} {:>11.0} {:>15.3}",
            c.name,
            load,
            kr,
            el,
            m.0,
            m.1,
            ratio(r, &results[1], |r, i| r.tcp[i]),
            ratio(r, &results[1], |r, i| r.udp[i].kpps),
            ratio(r, &results[0], |r, i| r.tcp[i]),
            ratio(r, &results[0], |r, i| r.udp[i].kpps),
            median(&r.udp.iter().map(|u| u.cpu_ns).collect::<Vec<_>>()),
            ratio(&results[1], r, |r, i| r.udp[i].cpu_ns)
        );
    }
    println!("(cpu_ns/flow: the sender threads' CPU time per new flow, forwarding included; cpu_vs_stateful = stateful's cost / this config's: the rate ratio an idle machine would show)");
    println!("(figures: medians over reps; ratios: medians of the per-rep ratios, each rep's configs measured back to back)");
    println!(
        "scaling: fwctl-{tag} vs fwctl-empty (same pipeline, {} rules vs 1): tcp {:.3}, new_udp {:.3}, new_udp by CPU cost {:.3}",
        policy.rules.len(),
        ratio(&results[3], &results[2], |r, i| r.tcp[i]),
        ratio(&results[3], &results[2], |r, i| r.udp[i].kpps),
        ratio(&results[2], &results[3], |r, i| r.udp[i].cpu_ns)
    );
    let spread = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.1}-{hi:.1}")
    };
    println!();
    for (c, r) in configs.iter().zip(&results) {
        println!(
            "  {:<11} range over reps: tcp {} Gbit/s, new_udp {} kpps",
            c.name,
            spread(r.tcp.clone()),
            spread(r.udp.iter().map(|u| u.kpps).collect())
        );
    }
    // Each sender thread forwards its own packets in its softirq context, so with
    // the senders' cores busy, CPU time per new flow ≈ senders / rate.
    let us = |kpps: f64| senders as f64 / kpps * 1e3;
    // Per-rep differences (configs measured back to back), then the median.
    let extra = |a: &Results, b: &Results| {
        median(
            &(0..a.udp.len().min(b.udp.len()))
                .map(|i| us(a.udp[i].kpps) - us(b.udp[i].kpps))
                .collect::<Vec<_>>(),
        )
    };
    let linear_extra = extra(&results[4], &results[1]);
    println!();
    println!(
        "per new UDP flow, CPU µs (senders/rate; only meaningful on an otherwise idle machine): none {:.2}; stateful {:+.2} over none; {} {:+.2} over stateful; {} {:+.2} over stateful; {} {:+.2} over stateful = {:.0} ns per linear rule",
        us(none.1),
        extra(&results[1], &results[0]),
        configs[2].name,
        extra(&results[2], &results[1]),
        configs[3].name,
        extra(&results[3], &results[1]),
        configs[4].name,
        linear_extra,
        linear_extra * 1e3 / linear.rules.max(1) as f64
    );
    let lost: Vec<String> = configs
        .iter()
        .zip(&med)
        .filter(|(_, m)| m.1 < 0.99 * m.2)
        .map(|(c, m)| format!("{} (sent {:.1} kpps)", c.name, m.2))
        .collect();
    let sum =
        |f: fn(&Udp) -> u64| -> u64 { results.iter().flat_map(|r| r.udp.iter().map(f)).sum() };
    let ct_peak = results
        .iter()
        .flat_map(|r| r.udp.iter().map(|u| u.ct_max))
        .max()
        .unwrap_or(0);
    println!(
        "received vs sent: {}; sender errors {}",
        if lost.is_empty() {
            "every sent datagram arrived (forwarding runs in the senders' context: the rate is the path's, not a queue's)".to_string()
        } else {
            format!("loss in {}", lost.join(", "))
        },
        sum(|u| u.errors)
    );
    println!(
        "fw conntrack: peak {ct_peak} entries of {} max; table-full drops {}, early drops {}, insert_failed {}",
        ct_max.trim(),
        sum(|u| u.ct_drop),
        sum(|u| u.ct_early_drop),
        sum(|u| u.ct_insert_failed)
    );
    let left: Vec<String> = fwctl::sys::netns::list_namespaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    println!("host load average (1/5/15 min): at start {load_start}, at end {}; this bench alone keeps ~{senders} CPUs busy, more means other work shared the machine", loadavg());
    println!(
        "lab {prefix} removed: {}; total {:.0} s",
        if left.is_empty() {
            "yes".to_string()
        } else {
            format!("NO, left {left:?}")
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
