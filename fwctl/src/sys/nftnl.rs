//! Set-element deltas written to nf_tables over netlink (`NETLINK_NETFILTER`),
//! in-process: one batch, one kernel transaction, every element message
//! acknowledged.
//!
//! Input: a [`Delta`] and the table name (family inet). Output: `Ok` once the kernel
//! committed the batch; otherwise an [`Error`]: what the kernel refused, mapped to
//! the set and element (then it aborted the batch: nothing changed), or the
//! step that failed.
//! Must not: build messages itself ([`crate::plan::nl`] does), send anything but
//! that batch, keep the socket past the call. Works in the calling thread's network
//! namespace, like the `nft` program it stands in for.

use crate::plan::delta::Delta;
use crate::plan::nl::{self, Culprit, Op};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::io;
use std::time::{Duration, Instant};

/// How long to wait for the kernel's acknowledgements. nf_tables answers a batch
/// before `send` returns; this bounds a reply that never comes.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a successful write took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Element messages in the batch.
    pub messages: usize,
    /// From sending the batch to its last acknowledgement: the kernel transaction,
    /// committed when this ends.
    pub committed: Duration,
    /// Closing the socket. The kernel frees the replaced elements after an RCU
    /// grace period and, on the release of any nf_tables socket, waits for that
    /// (nft pays the same when it exits).
    pub released: Duration,
}

/// One refusal: which command and element, the errno, the kernel's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub what: String,
    pub errno: i32,
    pub message: Option<String>,
}

#[derive(Debug)]
pub enum Error {
    /// An element fwctl cannot encode (nothing was sent).
    Encode(nl::EncodeError),
    /// The socket failed at `op`; whether the kernel saw the batch depends on `op`
    /// (before "send": it did not).
    Io { op: &'static str, source: io::Error },
    /// The kernel refused the batch and aborted it: nothing changed.
    Refused(Vec<Refusal>),
    /// No error, but not every message was acknowledged within the timeout.
    Unacknowledged { missing: usize, of: usize },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Encode(e) => write!(f, "netlink element writer: {e}"),
            Error::Io { op, source } => write!(f, "netlink element writer: {op}: {source}"),
            Error::Refused(rs) => {
                write!(f, "the kernel refused the element batch (nothing changed):")?;
                for r in rs.iter().take(8) {
                    write!(f, "\n  {}: {}", r.what, io::Error::from_raw_os_error(r.errno))?;
                    if let Some(m) = &r.message {
                        write!(f, " ({m})")?;
                    }
                }
                if rs.len() > 8 {
                    write!(f, "\n  … and {} more", rs.len() - 8)?;
                }
                Ok(())
            }
            Error::Unacknowledged { missing, of } => write!(f, "netlink element writer: {missing} of {of} messages were not acknowledged"),
        }
    }
}

impl std::error::Error for Error {}

/// The command, in nft's words, that a kernel error points at.
fn describe(table: &str, delta: &Delta, batch: &nl::Batch, r: &nl::Reply) -> String {
    match batch.locate(r.seq, r.offset) {
        None => format!("a reply for unknown message {}", r.seq),
        Some(Culprit::Batch) => "the batch".to_string(),
        Some(Culprit::Message { op, set, elem }) => {
            let s = &delta.sets[set];
            let texts = match op {
                Op::Delete => &s.removed,
                Op::Add => &s.added,
            };
            match elem.and_then(|i| texts.get(i)) {
                Some(t) => format!("{} inet {table} {} {{ {t} }}", op.nft(), s.set),
                None => {
                    let m = batch.messages.iter().find(|m| m.seq == r.seq);
                    let range = m.and_then(|m| Some((m.elems.first()?.1, m.elems.last()?.1)));
                    match range {
                        Some((a, b)) => format!("{} inet {table} {} (elements {}–{} of {})", op.nft(), s.set, a + 1, b + 1, texts.len()),
                        None => format!("{} inet {table} {}", op.nft(), s.set),
                    }
                }
            }
        }
    }
}

fn io_err(op: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Io { op, source }
}

fn nix_err(op: &'static str) -> impl Fn(nix::errno::Errno) -> Error {
    move |e| Error::Io { op, source: io::Error::from(e) }
}

/// Writes `delta` into `inet <table>` as one transaction. An empty delta sends
/// nothing.
pub fn write(table: &str, delta: &Delta) -> Result<Written, Error> {
    let batch = nl::batch(table, delta, 1).map_err(Error::Encode)?;
    if batch.is_empty() {
        return Ok(Written { messages: 0, committed: Duration::ZERO, released: Duration::ZERO });
    }
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io_err("socket"))?;
    sock.bind_auto().map_err(io_err("bind"))?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(io_err("connect"))?;
    // Errors carry the offending attribute's offset, not the whole request. An old
    // kernel without these options still answers; the parser reads both forms.
    let _ = sock.set_ext_ack(true);
    let _ = sock.set_cap_ack(true);
    // The batch goes out in one datagram: the send buffer must hold it. Root may
    // exceed net.core.wmem_max (as nft does); otherwise try the ordinary option.
    let need = batch.bytes.len() + 4096;
    if need > 200 * 1024 && setsockopt(&sock, sockopt::SndBufForce, &need).is_err() {
        setsockopt(&sock, sockopt::SndBuf, &need).map_err(nix_err("SO_SNDBUF"))?;
    }
    // One acknowledgement per message; leave room for all of them.
    let acks = (batch.messages.len() + 2) * 1024 + 256 * 1024;
    if setsockopt(&sock, sockopt::RcvBufForce, &acks).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &acks);
    }
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(ACK_TIMEOUT.as_secs() as i64, 0)).map_err(nix_err("SO_RCVTIMEO"))?;

    let started = Instant::now();
    let sent = sock.send(&batch.bytes, 0).map_err(io_err("send"))?;
    if sent != batch.bytes.len() {
        return Err(Error::Io { op: "send", source: io::Error::other(format!("sent {sent} of {} bytes", batch.bytes.len())) });
    }

    let mut waiting: std::collections::BTreeSet<u32> = batch.messages.iter().map(|m| m.seq).collect();
    let mut refused = vec![];
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    // Until every message is answered; after an error, only what is already queued.
    while !waiting.is_empty() {
        buf.clear();
        let flags = if refused.is_empty() { 0 } else { nix::libc::MSG_DONTWAIT };
        match sock.recv(&mut buf, flags) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !refused.is_empty() => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(Error::Io { op: "receive acknowledgements", source: e }),
        }
        let replies = nl::replies(&buf).map_err(|e| Error::Io { op: "parse acknowledgements", source: io::Error::new(io::ErrorKind::InvalidData, e) })?;
        for r in replies {
            waiting.remove(&r.seq);
            if r.errno != 0 {
                refused.push(Refusal { what: describe(table, delta, &batch, &r), errno: r.errno, message: r.message.filter(|m| !m.is_empty()) });
            }
        }
    }
    if !refused.is_empty() {
        return Err(Error::Refused(refused));
    }
    if !waiting.is_empty() {
        return Err(Error::Unacknowledged { missing: waiting.len(), of: batch.messages.len() });
    }
    let committed = started.elapsed();
    let t = Instant::now();
    drop(sock);
    Ok(Written { messages: batch.messages.len(), committed, released: t.elapsed() })
}
