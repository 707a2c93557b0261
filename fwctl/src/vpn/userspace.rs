//! The userspace tunnel process: `fwctl vpn run IFACE` (hidden command).
//!
//! Input: an interface name and, optionally, the policy to configure it from.
//! Output: boringtun's device (a TUN interface plus the standard UAPI socket
//! `/var/run/wireguard/IFACE.sock`, so `wg show` and `fwctl vpn up` can talk to
//! it), running in the foreground until SIGTERM/SIGINT or until its socket is
//! removed.
//! Must not: run twice for one interface (it refuses when the socket is live:
//! boringtun would silently steal the socket of the running one), or print keys.
//!
//! Ownership: this process *is* the tunnel; one per interface, supervised —
//! e.g. by systemd with this unit (`/etc/systemd/system/fwctl-wg@.service`):
//!
//! ```text
//! [Unit]
//! Description=fwctl WireGuard tunnel %i (userspace)
//! After=network-pre.target
//! [Service]
//! ExecStart=/usr/sbin/fwctl vpn run %i --policy /etc/fwctl/policy
//! Restart=on-failure
//! [Install]
//! WantedBy=multi-user.target
//! ```
//!
//! `fwctl vpn up` starts it detached when nothing serves the interface, and
//! otherwise only changes the running tunnel through UAPI.
//!
//! Performance settings (see the project's measurements and
//! `cargo bench --bench tunnel`): one worker thread and no per-peer connected
//! sockets (one flow stays on one thread, and every UDP socket is the listening
//! one), 16 MiB socket buffers set on the UDP sockets (boringtun's API has no
//! knob: a watcher thread finds them among the process's descriptors and sets
//! SO_RCVBUFFORCE/SO_SNDBUFFORCE, also after a listen-port change reopens
//! them), and the MTU set explicitly by the sync (boringtun comes up at 1500
//! and re-reads the MTU every second).
//!
//! Scheduling ([`Scheduling::Realtime`], the default): boringtun's packet
//! thread runs SCHED_FIFO at priority 1. Under the normal scheduler every
//! process the thread wakes with a packet (a local receiver, a co-located
//! peer) preempts it, so it handles one packet per wake-up instead of a batch;
//! on 2 shared cores that cost 25–65 % of the throughput towards wireguard-go
//! (docs/performance.md, "VPN tunnel").
//! Kernel WireGuard's receive path runs in softirq context, above every
//! process, for the same reason. Guard rails: only with 2 or more CPUs and the
//! kernel's real-time throttling on (`kernel.sched_rt_runtime_us` ≠ -1, so a
//! flood cannot take a whole CPU); otherwise, or when the system refuses
//! (no CAP_SYS_NICE), the tunnel runs normally and says why in its log.
//! `fwctl vpn run --scheduling normal` opts out.

use super::uapi::Uapi;
use super::{Error, RUN_DIR};
use crate::model::IfName;
use boringtun::device::{DeviceConfig, DeviceHandle};
use std::collections::HashSet;
use std::fs;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Socket buffer size for the tunnel's UDP sockets.
pub const SOCKET_BUFFER: usize = 16 << 20;

/// How the tunnel's packet thread is scheduled (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scheduling {
    /// SCHED_FIFO priority 1 for the packet thread, where the guard rails allow it.
    #[default]
    Realtime,
    /// The normal (CFS) scheduler.
    Normal,
}

/// Real-time priority of the packet thread: the lowest, above every normal process only.
pub const REALTIME_PRIORITY: i32 = 1;

/// Whether the packet thread may run real-time on this system: at least 2
/// CPUs (one stays for everything else) and real-time throttling on
/// (`rt_runtime_us` from /proc/sys/kernel/sched_rt_runtime_us; -1 means off).
pub fn realtime_allowed(cpus: usize, rt_runtime_us: Option<i64>) -> Result<(), String> {
    if cpus < 2 {
        return Err(format!("{cpus} CPU: a busy real-time thread would leave too little for the rest of the system"));
    }
    match rt_runtime_us {
        None => Err("cannot read kernel.sched_rt_runtime_us".into()),
        Some(r) if r < 0 => Err("real-time throttling is off (kernel.sched_rt_runtime_us = -1): a flood could take a whole CPU".into()),
        Some(_) => Ok(()),
    }
}

/// The thread ids of this process.
fn thread_ids() -> HashSet<i32> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else { return HashSet::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect()
}

/// Applies `mode` to the packet threads `tids` (those boringtun started).
/// Returns one log line per decision; never fails the tunnel.
fn schedule_packet_threads(mode: Scheduling, tids: &[i32]) -> Vec<String> {
    if mode == Scheduling::Normal {
        return vec!["packet thread: normal scheduling (--scheduling normal)".into()];
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us").ok().and_then(|s| s.trim().parse().ok());
    if let Err(why) = realtime_allowed(cpus, rt) {
        return vec![format!("packet thread: normal scheduling ({why})")];
    }
    let param = libc::sched_param { sched_priority: REALTIME_PRIORITY };
    tids.iter()
        .map(|&tid| {
            // SAFETY: a plain system call on a thread id of this process with a
            // valid, initialised parameter; it changes only that thread's policy.
            let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) };
            if rc == 0 {
                format!("packet thread {tid}: SCHED_FIFO priority {REALTIME_PRIORITY}")
            } else {
                format!("packet thread {tid}: normal scheduling (SCHED_FIFO refused: {})", std::io::Error::last_os_error())
            }
        })
        .collect()
}

/// The device settings: one thread, no connected sockets, one TUN queue.
pub fn device_config() -> DeviceConfig {
    DeviceConfig { n_threads: 1, use_connected_socket: false, use_multi_queue: false, uapi_fd: -1 }
}

pub fn log_path(iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{iface}.log"))
}

pub fn ensure_run_dir() -> Result<(), Error> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(RUN_DIR).map_err(|e| Error::Io { context: format!("create {RUN_DIR}"), source: e })
}

use std::os::unix::fs::DirBuilderExt;

/// Set large buffers on every UDP socket of this process not seen before.
/// Returns one line per socket tuned.
pub fn tune_udp_sockets(seen: &mut HashSet<String>) -> Vec<String> {
    use nix::sys::socket::{getsockname, getsockopt, setsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
    let mut out = vec![];
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return out };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(target) = fs::read_link(e.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with("socket:") || seen.contains(&target) {
            continue;
        }
        // SAFETY: the descriptor is open (listed just now) and only borrowed for
        // these calls; the worst a race with a close can do is fail them.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        if getsockopt(&bfd, sockopt::SockType) != Ok(SockType::Datagram) {
            seen.insert(target);
            continue;
        }
        let Ok(addr) = getsockname::<SockaddrStorage>(fd) else { continue };
        if !matches!(addr.family(), Some(AddressFamily::Inet | AddressFamily::Inet6)) {
            seen.insert(target);
            continue;
        }
        if setsockopt(&bfd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&bfd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if setsockopt(&bfd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&bfd, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        let rcv = getsockopt(&bfd, sockopt::RcvBuf).unwrap_or(0);
        let snd = getsockopt(&bfd, sockopt::SndBuf).unwrap_or(0);
        let port = addr.as_sockaddr_in().map(|a| a.port()).or_else(|| addr.as_sockaddr_in6().map(|a| a.port())).unwrap_or(0);
        out.push(format!("UDP socket port {port}: receive buffer {} KiB, send buffer {} KiB", rcv / 1024, snd / 1024));
        seen.insert(target);
    }
    out
}

/// Run the tunnel for `iface` in the foreground, its packet thread scheduled
/// as `scheduling` asks. `configure` is called once the
/// device serves its socket (the initial sync from the policy); its failure is
/// reported on stderr and the tunnel keeps running (a supervisor restarting it
/// would not fix a policy; `fwctl vpn up` will).
pub fn run(iface: &IfName, scheduling: Scheduling, configure: impl FnOnce() -> Result<Vec<String>, Error>) -> Result<(), Error> {
    let name = iface.as_str();
    if Uapi::new(name).alive() {
        return Err(Error::AlreadyRunning { iface: name.to_string() });
    }
    // boringtun blocks SIGTERM/SIGINT in the calling thread (threads made later
    // inherit it) and handles them from its event loop: exit cleanly, remove the
    // socket. So spawn nothing before this point.
    let before = thread_ids();
    let mut handle = DeviceHandle::new(name, device_config()).map_err(|e| Error::Device { iface: name.to_string(), detail: e.to_string() })?;
    eprintln!("fwctl vpn run {name}: device up, UAPI socket {}", super::uapi::socket_path(name).display());
    // The threads DeviceHandle::new started are boringtun's event loops.
    let mut packet_threads: Vec<i32> = thread_ids().difference(&before).copied().collect();
    packet_threads.sort_unstable();
    for line in schedule_packet_threads(scheduling, &packet_threads) {
        eprintln!("fwctl vpn run {name}: {line}");
    }
    std::thread::Builder::new()
        .name("fwctl-sockbuf".into())
        .spawn(move || {
            let mut seen = HashSet::new();
            loop {
                for line in tune_udp_sockets(&mut seen) {
                    eprintln!("fwctl vpn run: {line}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .map_err(|e| Error::Io { context: "start the socket watcher".into(), source: e })?;
    match configure() {
        Ok(lines) => {
            for l in lines {
                eprintln!("fwctl vpn run {name}: {l}");
            }
        }
        Err(e) => eprintln!("fwctl vpn run {name}: initial configuration failed: {e}"),
    }
    handle.wait();
    eprintln!("fwctl vpn run {name}: stopped");
    Ok(())
}

/// Start `fwctl vpn run IFACE --policy PATH` detached (own session, output to
/// [`log_path`]) and wait until its UAPI socket answers.
pub fn spawn_detached(iface: &str, policy: Option<&Path>, timeout: Duration) -> Result<(), Error> {
    let spawn_err = |detail: String| Error::Spawn { iface: iface.to_string(), detail };
    ensure_run_dir()?;
    let log = log_path(iface);
    let logf = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&log).map_err(|e| spawn_err(format!("open {}: {e}", log.display())))?;
    let _ = logf.set_permissions(fs::Permissions::from_mode(0o600));
    let exe = std::env::current_exe().map_err(|e| spawn_err(format!("cannot find my own executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["vpn", "run", iface]);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(logf)).current_dir("/");
    // SAFETY: setsid is async-signal-safe; it only detaches from our session
    // (and terminal) so that the tunnel outlives this command.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let uapi = Uapi::new(iface);
    let deadline = Instant::now() + timeout;
    loop {
        if uapi.alive() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(spawn_err(format!("it exited ({status}); {}:\n{}", log.display(), tail.join("\n"))));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(spawn_err(format!("its UAPI socket did not appear within {timeout:?} (log: {})", log.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An exclusive per-interface lock (flock on `RUN_DIR/IFACE.lock`), held while
/// a tunnel is read, planned and changed, so that two fwctl processes (`vpn up`
/// and the tunnel's own initial sync) never interleave their changes.
pub struct IfaceLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl IfaceLock {
    pub fn acquire(iface: &str, timeout: Duration) -> Result<IfaceLock, Error> {
        ensure_run_dir()?;
        let path = Path::new(RUN_DIR).join(format!("{iface}.lock"));
        let deadline = Instant::now() + timeout;
        loop {
            let f = fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(|e| Error::Io { context: format!("open {}", path.display()), source: e })?;
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(IfaceLock { _lock: l }),
                Err((_, e)) if e == nix::errno::Errno::EWOULDBLOCK && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err((_, e)) => return Err(Error::Io { context: format!("lock {}", path.display()), source: e.into() }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_needs_two_cpus_and_throttling() {
        assert!(realtime_allowed(2, Some(950_000)).is_ok());
        assert!(realtime_allowed(64, Some(0)).is_ok());
        assert!(realtime_allowed(1, Some(950_000)).unwrap_err().contains("1 CPU"));
        assert!(realtime_allowed(4, Some(-1)).unwrap_err().contains("throttling is off"));
        assert!(realtime_allowed(4, None).is_err());
    }
}
