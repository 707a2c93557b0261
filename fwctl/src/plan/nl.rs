//! Element delta → one nfnetlink batch for nf_tables (the bytes `sys::nftnl` sends).
//!
//! Input: a [`Delta`] (its typed face, [`TypedSetDelta`]) and the table name (family
//! `inet`). Output: a [`Batch`]: `NFNL_MSG_BATCH_BEGIN`, `NFT_MSG_DELSETELEM`
//! messages (every set's deletions), `NFT_MSG_NEWSETELEM` messages (every set's
//! additions), `NFNL_MSG_BATCH_END` — one kernel transaction, all or nothing, like
//! [`super::delta::script`] — and an index from a message's sequence number and an
//! attribute offset back to the set and element it encodes, for error text.
//! Must not: do I/O, or encode anything differently from nft 1.0.6 (the kernel state
//! and `nft list` must be the same as after `nft -f` of the delta script).
//!
//! The layout, from the kernel uapi (`linux/netfilter/nf_tables.h`, `nfnetlink.h`)
//! and checked against `nft --debug=netlink,mnl` (see the tests):
//! - every message: `nlmsghdr`, `nfgenmsg { family, version 0, res_id }` (res_id is
//!   `NFNL_SUBSYS_NFTABLES`, big-endian, in the batch delimiters; 0 otherwise), then
//!   `NFTA_SET_ELEM_LIST_TABLE`, `_SET` (NUL-terminated) and `_ELEMENTS`, a nest of
//!   `NFTA_LIST_ELEM` nests; each element: `FLAGS`, `KEY`, `KEY_END`, `DATA`,
//!   `USERDATA` in that order, keys and values as `NFTA_DATA_VALUE` inside a nest.
//! - field bytes: addresses and ports big-endian, `mark` in host byte order except
//!   in interval sets (nft stores it big-endian there and converts in the rule),
//!   `inet_proto`/ICMP types one byte, `ifname` 16 bytes NUL-padded. In a
//!   concatenation each field is padded to a multiple of 4 bytes.
//! - single-field interval sets (rbtree): a range is a start element (key = first)
//!   and an end element flagged `NFT_SET_ELEM_INTERVAL_END` at last + 1. A range
//!   that ends at the top of the key space has no end element; nft marks its start
//!   `NFTNL_SET_ELEM_F_INTERVAL_OPEN` in the userdata. Into an empty set nft first
//!   adds an end element at 0 unless the first range starts there; so does this.
//! - concatenated interval sets (pipapo): one element, `KEY` = the first values,
//!   `KEY_END` = the last ones (also for single values).
//! - map data: `mark`; verdicts as `NFTA_DATA_VERDICT { NFTA_VERDICT_CODE,
//!   NFTA_VERDICT_CHAIN }`; NAT targets `address . port` as one value.
//! - element comments: libnftnl's userdata TLVs (`u8 type, u8 len, value`), type 0
//!   the NUL-terminated comment, type 1 the u32 flags (host byte order).
//! - counters: elements carry no expression; the kernel gives each new element
//!   the set's own (`counter` on the set), as it does for nft's.

use super::delta::{Delta, TypedSetDelta};
use crate::compile::ir::{Elem, KeyType, SetData, Val, Verdict};
use std::ops::Range;

/// `NFPROTO_INET`: fwctl's table is `inet`.
pub const FAMILY_INET: u8 = 1;

// linux/netlink.h
pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

// linux/netfilter/nfnetlink.h
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub const NFNL_MSG_BATCH_END: u16 = 17;

// linux/netfilter/nf_tables.h
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_GOTO: i32 = -4;
const NFT_USERDATA_MAXLEN: usize = 256;
const NFT_CHAIN_MAXNAMELEN: usize = 256;
const IFNAMSIZ: usize = 16;

// libnftnl's element userdata (include/udata.h, libnftnl/udata.h)
const UDATA_SET_ELEM_COMMENT: u8 = 0;
const UDATA_SET_ELEM_FLAGS: u8 = 1;
const SET_ELEM_F_INTERVAL_OPEN: u32 = 1;

/// Keeps each message's element list well below the 64 KiB an attribute can hold.
const LIST_BUDGET: usize = 48 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Delete,
    Add,
}

impl Op {
    pub fn nft(self) -> &'static str {
        match self {
            Op::Delete => "delete element",
            Op::Add => "add element",
        }
    }
}

/// One element message of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub seq: u32,
    pub op: Op,
    /// Index of the set in `Delta::sets`.
    pub set: usize,
    /// Per element: the bytes of its list entries (offsets from this message's
    /// `nlmsghdr`) and its index in the set's `typed.removed` / `typed.added`.
    pub elems: Vec<(Range<u32>, usize)>,
}

/// What a kernel error points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// The batch as a whole (its begin message: the commit, or a malformed batch).
    Batch,
    /// One element message; `elem` when the offset falls into one element.
    Message { op: Op, set: usize, elem: Option<usize> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of the begin message; the end message's is the last.
    pub begin_seq: u32,
    pub end_seq: u32,
    /// The element messages, in batch order (sequence numbers begin_seq + 1 …).
    pub messages: Vec<Message>,
}

impl Batch {
    /// Which part of the batch a kernel error for message `seq`, attribute at
    /// `offset` (`NLMSGERR_ATTR_OFFS`), is about.
    pub fn locate(&self, seq: u32, offset: Option<u32>) -> Option<Culprit> {
        if seq == self.begin_seq || seq == self.end_seq {
            return Some(Culprit::Batch);
        }
        let m = self.messages.iter().find(|m| m.seq == seq)?;
        let elem = offset.and_then(|o| m.elems.iter().find(|(r, _)| r.contains(&o)).map(|(_, i)| *i));
        Some(Culprit::Message { op: m.op, set: m.set, elem })
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// An element the encoder cannot express (a compiler bug, or a hand-edited state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError {
    pub set: String,
    pub elem: String,
    pub why: String,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot encode element `{}` of set {}: {}", self.elem, self.set, self.why)
    }
}

impl std::error::Error for EncodeError {}

// ---------------------------------------------------------------------------
// Attribute writer

struct W(Vec<u8>);

impl W {
    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).expect("attribute under 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }
    fn u32_be(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }
    fn strz(&mut self, ty: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b);
    }
    /// Starts a nest; returns its position for [`W::end`].
    fn begin(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    fn end(&mut self, at: usize) {
        let len = u16::try_from(self.0.len() - at).expect("nest under 64 KiB");
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    /// `ty { NFTA_DATA_VALUE: value }`
    fn value(&mut self, ty: u16, value: &[u8]) {
        let n = self.begin(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.end(n);
    }
}

fn nlmsghdr(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
}

fn nfgenmsg(buf: &mut Vec<u8>, family: u8, res_id: u16) {
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn finish(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

fn delimiter(buf: &mut Vec<u8>, ty: u16, seq: u32) {
    let at = buf.len();
    nlmsghdr(buf, ty, NLM_F_REQUEST, seq);
    nfgenmsg(buf, 0, NFNL_SUBSYS_NFTABLES);
    finish(buf, at);
}

// ---------------------------------------------------------------------------
// Values

/// The layout of a set's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Exact keys (hash).
    Exact,
    /// Single-field interval set (rbtree): start and end elements.
    Ranges,
    /// Concatenated interval set (pipapo): KEY and KEY_END.
    Concat,
}

fn shape(t: &TypedSetDelta) -> Shape {
    match (t.interval, t.key.len()) {
        (false, _) => Shape::Exact,
        (true, 1) => Shape::Ranges,
        (true, _) => Shape::Concat,
    }
}

/// First and last value of one key field (4 bytes for ipv4_addr and mark, 16 for
/// ipv6_addr and ifname, 2 for inet_service, else 1), in the byte
/// order the set stores (`interval`: host-order types big-endian).
fn field(k: KeyType, v: &Val, interval: bool) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mark = |m: u32| if interval { m.to_be_bytes() } else { m.to_ne_bytes() };
    Ok(match (k, v) {
        (KeyType::Ipv4Addr, Val::V4(lo, hi)) if lo <= hi => (lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec()),
        (KeyType::Ipv6Addr, Val::V6(lo, hi)) if lo <= hi => (lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec()),
        (KeyType::InetService, Val::Port(lo, hi)) if lo <= hi => (lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec()),
        (KeyType::Mark, Val::Mark(m)) => (mark(*m).to_vec(), mark(*m).to_vec()),
        (KeyType::InetProto, Val::Proto(p)) => (vec![*p], vec![*p]),
        (KeyType::IcmpType | KeyType::Icmpv6Type, Val::Icmp(t)) => (vec![*t], vec![*t]),
        (KeyType::Ifname, Val::Ifname(n)) => {
            let b = ifname(n)?;
            (b.clone(), b)
        }
        (KeyType::Ipv4Addr, Val::V4(..)) | (KeyType::Ipv6Addr, Val::V6(..)) | (KeyType::InetService, Val::Port(..)) => return Err("empty range (first > last)".into()),
        _ => return Err(format!("{v:?} is not a value of type {}", k.nft())),
    })
}

fn ifname(n: &str) -> Result<Vec<u8>, String> {
    if n.len() >= IFNAMSIZ || n.as_bytes().contains(&0) {
        return Err(format!("interface name {n:?} does not fit {IFNAMSIZ} bytes with its NUL"));
    }
    let mut b = n.as_bytes().to_vec();
    b.resize(IFNAMSIZ, 0);
    Ok(b)
}

/// The key's first and last values: one field as is, a concatenation with every
/// field padded to 4 bytes.
fn key(t: &TypedSetDelta, e: &Elem) -> Result<(Vec<u8>, Vec<u8>), String> {
    if e.key.len() != t.key.len() {
        return Err(format!("{} key fields, the set has {}", e.key.len(), t.key.len()));
    }
    let concat = t.key.len() > 1;
    let (mut lo, mut hi) = (vec![], vec![]);
    for (k, v) in t.key.iter().zip(&e.key) {
        let (a, b) = field(*k, v, t.interval)?;
        lo.extend_from_slice(&a);
        hi.extend_from_slice(&b);
        if concat {
            while !lo.len().is_multiple_of(4) {
                lo.push(0);
                hi.push(0);
            }
        }
    }
    Ok((lo, hi))
}

/// `bytes` + 1 as a big-endian number; None when it was the largest value.
fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut b = bytes.to_vec();
    for x in b.iter_mut().rev() {
        if *x == u8::MAX {
            *x = 0;
        } else {
            *x += 1;
            return Some(b);
        }
    }
    None
}

fn data(w: &mut W, t: &TypedSetDelta, e: &Elem) -> Result<(), String> {
    let (want, have) = (&t.data, &e.data);
    match (want, have) {
        (None, None) => Ok(()),
        (Some(SetData::Mark), Some(Val::Mark(m))) => {
            w.value(NFTA_SET_ELEM_DATA, &m.to_ne_bytes());
            Ok(())
        }
        (Some(SetData::Verdict), Some(Val::Verdict(v))) => {
            let d = w.begin(NFTA_SET_ELEM_DATA);
            let n = w.begin(NFTA_DATA_VERDICT);
            let code = match v {
                Verdict::Accept => NF_ACCEPT,
                Verdict::Drop => NF_DROP,
                Verdict::Goto(_) => NFT_GOTO,
            };
            w.u32_be(NFTA_VERDICT_CODE, code as u32);
            if let Verdict::Goto(chain) = v {
                if chain.is_empty() || chain.len() >= NFT_CHAIN_MAXNAMELEN || chain.as_bytes().contains(&0) {
                    return Err(format!("bad chain name {chain:?}"));
                }
                w.strz(NFTA_VERDICT_CHAIN, chain);
            }
            w.end(n);
            w.end(d);
            Ok(())
        }
        (Some(SetData::NatV4), Some(Val::NatV4(a, p))) => {
            let mut b = a.to_be_bytes().to_vec();
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            w.value(NFTA_SET_ELEM_DATA, &b);
            Ok(())
        }
        (Some(SetData::NatV6), Some(Val::NatV6(a, p))) => {
            let mut b = a.to_be_bytes().to_vec();
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            w.value(NFTA_SET_ELEM_DATA, &b);
            Ok(())
        }
        (None, Some(v)) => Err(format!("data {v:?} for a set without data")),
        (Some(d), v) => Err(format!("data {v:?} for a map of {d:?}")),
    }
}

/// libnftnl's element userdata: the comment, then the flags (when not 0).
fn userdata(comment: Option<&str>, flags: u32) -> Result<Option<Vec<u8>>, String> {
    let mut u = vec![];
    if let Some(c) = comment {
        if c.as_bytes().contains(&0) {
            return Err("comment contains a NUL byte".into());
        }
        let len = u8::try_from(c.len() + 1).map_err(|_| format!("comment longer than {} bytes", u8::MAX - 1))?;
        u.extend_from_slice(&[UDATA_SET_ELEM_COMMENT, len]);
        u.extend_from_slice(c.as_bytes());
        u.push(0);
    }
    if flags != 0 {
        u.extend_from_slice(&[UDATA_SET_ELEM_FLAGS, 4]);
        u.extend_from_slice(&flags.to_ne_bytes());
    }
    if u.len() > NFT_USERDATA_MAXLEN {
        return Err(format!("comment and flags take {} bytes, more than {NFT_USERDATA_MAXLEN}", u.len()));
    }
    Ok((!u.is_empty()).then_some(u))
}

/// The list entries of one element: one, or (a range in a single-field interval
/// set) a start and an end entry.
fn entries(w: &mut W, t: &TypedSetDelta, e: &Elem, op: Op) -> Result<(), String> {
    let (lo, hi) = key(t, e)?;
    let add = op == Op::Add;
    let shape = shape(t);
    if shape == Shape::Exact && lo != hi {
        return Err("a range in a set without `flags interval`".into());
    }
    let n = w.begin(NFTA_LIST_ELEM);
    w.value(NFTA_SET_ELEM_KEY, &lo);
    if shape == Shape::Concat {
        w.value(NFTA_SET_ELEM_KEY_END, &hi);
    }
    let end = if shape == Shape::Ranges { successor(&hi) } else { None };
    if add {
        data(w, t, e)?;
    }
    let open = shape == Shape::Ranges && end.is_none();
    // nft's `delete element` names the key only: no comment, but the open flag.
    let comment = if add { e.comment.as_deref() } else { None };
    if let Some(u) = userdata(comment, if open { SET_ELEM_F_INTERVAL_OPEN } else { 0 })? {
        w.attr(NFTA_SET_ELEM_USERDATA, &u);
    }
    w.end(n);
    if let Some(end) = end {
        interval_end(w, &end);
    }
    Ok(())
}

fn interval_end(w: &mut W, key: &[u8]) {
    let n = w.begin(NFTA_LIST_ELEM);
    w.u32_be(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
    w.value(NFTA_SET_ELEM_KEY, key);
    w.end(n);
}

// ---------------------------------------------------------------------------
// The batch

struct Open {
    at: usize,
    list: usize,
    msg: Message,
}

fn open_message(buf: &mut Vec<u8>, table: &str, set: &str, op: Op, set_index: usize, seq: u32) -> Open {
    let at = buf.len();
    let (ty, flags) = match op {
        Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
    };
    nlmsghdr(buf, (NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq);
    nfgenmsg(buf, FAMILY_INET, 0);
    let mut w = W(std::mem::take(buf));
    w.strz(NFTA_SET_ELEM_LIST_TABLE, table);
    w.strz(NFTA_SET_ELEM_LIST_SET, set);
    let list = w.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    *buf = w.0;
    Open { at, list, msg: Message { seq, op, set: set_index, elems: vec![] } }
}

fn close_message(buf: &mut Vec<u8>, o: Open, out: &mut Vec<Message>) {
    let mut w = W(std::mem::take(buf));
    w.end(o.list);
    *buf = w.0;
    finish(buf, o.at);
    out.push(o.msg);
}

/// The whole delta as one batch; sequence numbers from `seq` on. Deletions of
/// every set come first, then additions (as in the `nft -f` script). An empty
/// delta gives a batch without element messages.
pub fn batch(table: &str, delta: &Delta, seq: u32) -> Result<Batch, EncodeError> {
    let mut bytes = Vec::new();
    let begin_seq = seq;
    let mut next = seq.wrapping_add(1);
    delimiter(&mut bytes, NFNL_MSG_BATCH_BEGIN, begin_seq);
    let mut messages = vec![];
    for op in [Op::Delete, Op::Add] {
        for (si, s) in delta.sets.iter().enumerate() {
            let t = &s.typed;
            let elems = match op {
                Op::Delete => &t.removed,
                Op::Add => &t.added,
            };
            if elems.is_empty() {
                continue;
            }
            let err = |e: &Elem, why: String| EncodeError { set: s.set.clone(), elem: crate::render::nft::elem(e), why };
            let mut open = open_message(&mut bytes, table, &s.set, op, si, next);
            next = next.wrapping_add(1);
            // nft adds an end element at 0 before the first range of an empty
            // single-field interval set, unless that range starts at 0.
            if op == Op::Add && t.was_empty && shape(t) == Shape::Ranges {
                let first = elems.iter().filter_map(|e| key(t, e).ok()).map(|(lo, _)| lo).min();
                if let Some(first) = first.filter(|f| f.iter().any(|b| *b != 0)) {
                    let mut w = W(std::mem::take(&mut bytes));
                    interval_end(&mut w, &vec![0; first.len()]);
                    bytes = w.0;
                }
            }
            for (ei, e) in elems.iter().enumerate() {
                let mut w = W(Vec::new());
                entries(&mut w, t, e, op).map_err(|why| err(e, why))?;
                let in_list = bytes.len() - open.list;
                if in_list > 4 && in_list + w.0.len() > LIST_BUDGET {
                    close_message(&mut bytes, open, &mut messages);
                    open = open_message(&mut bytes, table, &s.set, op, si, next);
                    next = next.wrapping_add(1);
                }
                let start = (bytes.len() - open.at) as u32;
                bytes.extend_from_slice(&w.0);
                open.msg.elems.push((start..(bytes.len() - open.at) as u32, ei));
            }
            close_message(&mut bytes, open, &mut messages);
        }
    }
    let end_seq = next;
    delimiter(&mut bytes, NFNL_MSG_BATCH_END, end_seq);
    Ok(Batch { bytes, begin_seq, end_seq, messages })
}

// ---------------------------------------------------------------------------
// Replies

// linux/netlink.h: struct nlmsgerr, extended ACK
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// One `NLMSG_ERROR` reply: an acknowledgement (`errno` 0) or an error for the
/// request with sequence number `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub seq: u32,
    /// 0, or a positive errno.
    pub errno: i32,
    /// The kernel's extended-ACK text, when it gave one.
    pub message: Option<String>,
    /// Offset of the offending attribute in the request (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The `NLMSG_ERROR` replies in one datagram (other message types are skipped).
/// Err when the datagram is cut short.
pub fn replies(datagram: &[u8]) -> Result<Vec<Reply>, String> {
    let mut out = vec![];
    let mut off = 0;
    while off + 16 <= datagram.len() {
        let m = &datagram[off..];
        let len = u32_at(m, 0).unwrap_or(0) as usize;
        if len < 16 || len > m.len() {
            return Err(format!("netlink message of length {len} in {} bytes", m.len()));
        }
        let (ty, flags) = (u16_at(m, 4).unwrap_or(0), u16_at(m, 6).unwrap_or(0));
        if ty == NLMSG_ERROR {
            // struct nlmsgerr { int error; struct nlmsghdr msg; } [payload] [TLVs]
            let body = &m[16..len];
            let short = || format!("short NLMSG_ERROR ({} bytes)", body.len());
            let code = u32_at(body, 0).ok_or_else(short)? as i32;
            let orig_len = u32_at(body, 4).ok_or_else(short)? as usize;
            let seq = u32_at(body, 12).ok_or_else(short)?;
            let mut at = 20;
            if flags & NLM_F_CAPPED == 0 && code != 0 {
                at += orig_len.saturating_sub(16);
            }
            let (mut message, mut offset) = (None, None);
            if flags & NLM_F_ACK_TLVS != 0 {
                while at + 4 <= body.len() {
                    let (alen, aty) = (u16_at(body, at).unwrap_or(0) as usize, u16_at(body, at + 2).unwrap_or(0) & !NLA_F_NESTED);
                    if alen < 4 || at + alen > body.len() {
                        break;
                    }
                    let v = &body[at + 4..at + alen];
                    match aty {
                        NLMSGERR_ATTR_MSG => message = Some(String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()),
                        NLMSGERR_ATTR_OFFS => offset = u32_at(v, 0),
                        _ => {}
                    }
                    at += (alen + 3) & !3;
                }
            }
            out.push(Reply { seq, errno: code.saturating_neg(), message, offset });
        }
        off += (len + 3) & !3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::delta::SetDelta;

    /// Hex → bytes, whitespace ignored.
    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn typed(key: Vec<KeyType>, data: Option<SetData>, interval: bool) -> TypedSetDelta {
        TypedSetDelta { key, data, interval, ..Default::default() }
    }

    fn el(key: Vec<Val>, data: Option<Val>, comment: Option<&str>) -> Elem {
        Elem { key, data, comment: comment.map(str::to_string) }
    }

    /// The `NFTA_SET_ELEM_LIST_ELEMENTS` nest `entries` writes for `elems`.
    fn list(t: &TypedSetDelta, elems: &[Elem], op: Op) -> Vec<u8> {
        let mut w = W(vec![]);
        let n = w.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elems {
            entries(&mut w, t, e, op).unwrap();
        }
        w.end(n);
        w.0
    }

    fn ne32(v: u32) -> String {
        v.to_ne_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An attribute header as hex: length and type in host byte order.
    fn h(len: u16, ty: u16) -> String {
        len.to_ne_bytes().iter().chain(ty.to_ne_bytes().iter()).map(|b| format!("{b:02x}")).collect()
    }
    const N: u16 = NLA_F_NESTED;

    // The expected nests below are what `nft --debug=mnl` printed for the same
    // commands on nft 1.0.6 (kernel 6.18), attribute by attribute.

    #[test]
    fn ipv4_range_in_an_interval_map_is_a_start_and_an_end_element_like_nft() {
        // add element inet t m4 { 198.51.100.0/24 : 0x4 }
        let t = typed(vec![KeyType::Ipv4Addr], Some(SetData::Mark), true);
        let got = list(&t, &[el(vec![Val::V4(0xc6336400, 0xc63364ff)], Some(Val::Mark(4)), None)], Op::Add);
        let want = hex(&format!(
            "{} {} {} {} c6336400 {} {} 04000000 {} {} 00000001 {} {} c6336500",
            h(56, 3 | N),
            h(28, 1 | N),
            h(12, 1 | N),
            h(8, 1),
            h(12, 2 | N),
            h(8, 1),
            h(24, 1 | N),
            h(8, 3),
            h(12, 1 | N),
            h(8, 1),
        ));
        #[cfg(target_endian = "little")]
        assert_eq!(got, want);
        assert_eq!(got.len(), 56);
    }

    #[test]
    fn delete_of_ranges_names_start_and_end_and_flags_an_open_range_like_nft() {
        // delete element inet t m4 { 255.255.255.0/24, 10.0.0.0-10.0.0.5 }
        let t = typed(vec![KeyType::Ipv4Addr], Some(SetData::Mark), true);
        let got = list(
            &t,
            &[el(vec![Val::V4(0xffffff00, u32::MAX)], Some(Val::Mark(9)), Some("not sent")), el(vec![Val::V4(0x0a000000, 0x0a000005)], Some(Val::Mark(8)), None)],
            Op::Delete,
        );
        let want = hex(&format!(
            "{} {} {} {} ffffff00 {} 01040100 00000000 {} {} {} 0a000000 {} {} 00000001 {} {} 0a000006",
            h(72, 3 | N),
            h(28, 1 | N),
            h(12, 1 | N),
            h(8, 1),
            h(10, 6),
            h(16, 1 | N),
            h(12, 1 | N),
            h(8, 1),
            h(24, 1 | N),
            h(8, 3),
            h(12, 1 | N),
            h(8, 1),
        ));
        #[cfg(target_endian = "little")]
        assert_eq!(got, want);
        assert_eq!(got.len(), 72);
    }

    #[test]
    fn concatenated_interval_element_has_key_end_verdict_and_comment_like_nft() {
        // add element inet t vr { 0x5 . 0x2 . tcp . 1000-2000 comment "r1" : goto allow }
        let t = typed(vec![KeyType::Mark, KeyType::Mark, KeyType::InetProto, KeyType::InetService], Some(SetData::Verdict), true);
        let got = list(&t, &[el(vec![Val::Mark(5), Val::Mark(2), Val::Proto(6), Val::Port(1000, 2000)], Some(Val::Verdict(Verdict::Goto("allow".into()))), Some("r1"))], Op::Add);
        let want = hex(&format!(
            "{} {} {} {} 00000005 00000002 06000000 03e80000 {} {} 00000005 00000002 06000000 07d00000 {} {} {} fffffffc {} 616c6c6f 77000000 {} 00037231 00000000",
            h(96, 3 | N),
            h(92, 1 | N),
            h(24, 1 | N),
            h(20, 1),
            h(24, 10 | N),
            h(20, 1),
            h(28, 2 | N),
            h(24, 2 | N),
            h(8, 1),
            h(10, 2),
            h(9, 6),
        ));
        assert_eq!(got, want);
        // Deleting it names both keys, nothing else.
        let del = list(&t, &[el(vec![Val::Mark(5), Val::Mark(2), Val::Proto(6), Val::Port(1000, 2000)], Some(Val::Verdict(Verdict::Accept)), Some("r1"))], Op::Delete);
        assert_eq!(del.len(), 4 + 4 + 24 + 24);
    }

    #[test]
    fn one_byte_key_is_not_padded_inside_the_value() {
        // add element inet t ic { 12 }: NFTA_DATA_VALUE of length 5.
        let t = typed(vec![KeyType::IcmpType], None, false);
        let got = list(&t, &[el(vec![Val::Icmp(12)], None, None)], Op::Add);
        assert_eq!(got, hex(&format!("{} {} {} {} 0c000000", h(20, 3 | N), h(16, 1 | N), h(12, 1 | N), h(5, 1))));
    }

    #[test]
    fn empty_ipv6_interval_map_gets_nfts_zero_end_element_and_open_top_range() {
        // add element inet t m6 { ffff::/16 comment "top" : 3 } into an empty map.
        let mut t = typed(vec![KeyType::Ipv6Addr], Some(SetData::Mark), true);
        t.was_empty = true;
        t.added = vec![el(vec![Val::V6(0xffff << 112, u128::MAX)], Some(Val::Mark(3)), Some("top"))];
        let d = Delta { sets: vec![SetDelta { set: "m6".into(), removed: vec![], added: vec!["x".into()], typed: t }] };
        let b = batch("t", &d, 1).unwrap();
        let m = &b.bytes[20..b.bytes.len() - 20];
        // header (16) + nfgenmsg (4) + table "t" (8) + set "m6" (8)
        let got = &m[36..];
        let zero_end = format!("{} {} 00000001 {} {} {}", h(36, 1 | N), h(8, 3), h(24, 1 | N), h(20, 1), "00".repeat(16));
        let start = format!("{} {} {} ffff{} {} {} 03000000 {} 0004 746f7000 0104 01000000", h(56, 1 | N), h(24, 1 | N), h(20, 1), "00".repeat(14), h(12, 2 | N), h(8, 1), h(16, 6));
        let want = hex(&format!("{} {zero_end} {start}", h(96, 3 | N)));
        #[cfg(target_endian = "little")]
        assert_eq!(got, &want[..]);
        assert_eq!(got.len(), 96);
    }

    #[test]
    fn marks_are_host_order_in_hash_sets_and_big_endian_in_interval_sets() {
        let key = vec![KeyType::Mark, KeyType::Mark, KeyType::InetProto, KeyType::InetService];
        let e = el(vec![Val::Mark(1), Val::Mark(0x0102), Val::Proto(17), Val::Port(53, 53)], Some(Val::Verdict(Verdict::Accept)), None);
        let (lo, hi) = key_of(&typed(key.clone(), Some(SetData::Verdict), false), &e);
        assert_eq!(lo, [ne32(1), ne32(0x0102), "11000000".into(), "00350000".into()].concat());
        assert_eq!(lo, hi);
        let (lo, _) = key_of(&typed(key, Some(SetData::Verdict), true), &e);
        assert_eq!(lo, "00000001 00000102 11000000 00350000".replace(' ', ""));
        // A single-field mark interval set is big-endian too; the end is last + 1.
        let t = typed(vec![KeyType::Mark], Some(SetData::Mark), true);
        let (lo, _) = key_of(&t, &el(vec![Val::Mark(0x10)], Some(Val::Mark(1)), None));
        assert_eq!(lo, "00000010");
    }

    fn key_of(t: &TypedSetDelta, e: &Elem) -> (String, String) {
        let (a, b) = key(t, e).unwrap();
        let x = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        (x(a), x(b))
    }

    #[test]
    fn field_layouts_follow_the_nft_types() {
        let t = |k: Vec<KeyType>| typed(k, None, false);
        // ifname: 16 bytes, NUL padded.
        assert_eq!(key_of(&t(vec![KeyType::Ifname]), &el(vec![Val::Ifname("eth0".into())], None, None)).0, format!("65746830{}", "00".repeat(12)));
        // ipv6 big-endian.
        assert_eq!(key_of(&t(vec![KeyType::Ipv6Addr]), &el(vec![Val::V6(0x2001_0db8 << 96 | 1, 0x2001_0db8 << 96 | 1)], None, None)).0, format!("20010db8{}01", "00".repeat(11)));
        // inet_service alone: 2 bytes; in a concatenation padded to 4.
        assert_eq!(key_of(&t(vec![KeyType::InetService]), &el(vec![Val::Port(443, 443)], None, None)).0, "01bb");
        // NAT key: ifname . ipv4_addr . inet_proto . inet_service (16 + 4 + 4 + 4).
        let k = vec![KeyType::Ifname, KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        let (lo, _) = key_of(&t(k), &el(vec![Val::Ifname("eth0".into()), Val::V4(0xc0000201, 0xc0000201), Val::Proto(6), Val::Port(80, 80)], None, None));
        assert_eq!(lo, format!("65746830{}c0000201 06000000 00500000", "00".repeat(12)).replace(' ', ""));
        // ICMPv6 type in a concatenation: 1 byte padded to 4.
        let k = vec![KeyType::Mark, KeyType::Mark, KeyType::Icmpv6Type];
        let (lo, _) = key_of(&typed(k, None, false), &el(vec![Val::Mark(3), Val::Mark(4), Val::Icmp(128)], None, None));
        assert_eq!(lo, [ne32(3), ne32(4), "80000000".into()].concat());
    }

    #[test]
    fn map_data_values_and_verdicts() {
        let enc = |d: SetData, v: Val| {
            let t = typed(vec![KeyType::InetProto], Some(d), false);
            let mut w = W(vec![]);
            data(&mut w, &t, &el(vec![Val::Proto(6)], Some(v), None)).unwrap();
            w.0
        };
        // NAT: address . port, port padded to 4 (nft: "076433c6 0000901f").
        assert_eq!(enc(SetData::NatV4, Val::NatV4(0xc6336407, 8080)), hex(&format!("{} {} c6336407 1f900000", h(16, 2 | N), h(12, 1))));
        let v6 = enc(SetData::NatV6, Val::NatV6(0x2001_0db8 << 96 | 1, 8080));
        assert_eq!(v6, hex(&format!("{} {} 20010db8 00000000 00000000 00000001 1f900000", h(28, 2 | N), h(24, 1))));
        // Verdicts: NFTA_DATA_VERDICT { NFTA_VERDICT_CODE (be32) [, NFTA_VERDICT_CHAIN] }.
        assert_eq!(enc(SetData::Verdict, Val::Verdict(Verdict::Accept)), hex(&format!("{} {} {} 00000001", h(16, 2 | N), h(12, 2 | N), h(8, 1))));
        assert_eq!(enc(SetData::Verdict, Val::Verdict(Verdict::Drop)), hex(&format!("{} {} {} 00000000", h(16, 2 | N), h(12, 2 | N), h(8, 1))));
        assert_eq!(enc(SetData::Mark, Val::Mark(7)), hex(&format!("{} {} {}", h(12, 2 | N), h(8, 1), ne32(7))));
    }

    #[test]
    fn ranges_touching_the_ends_of_the_address_space() {
        let t = typed(vec![KeyType::Ipv4Addr], None, true);
        // 0.0.0.0/8: start at 0, end at 1.0.0.0.
        let got = list(&t, &[el(vec![Val::V4(0, 0x00ff_ffff)], None, None)], Op::Add);
        assert_eq!(got.len(), 4 + 16 + 24);
        assert_eq!(&got[got.len() - 4..], &[1, 0, 0, 0]);
        // 0.0.0.0/0 and 255.255.255.255: one start element flagged open, no end.
        for v in [Val::V4(0, u32::MAX), Val::V4(u32::MAX, u32::MAX)] {
            let got = list(&t, &[el(vec![v], None, None)], Op::Add);
            assert_eq!(got.len(), 4 + 16 + 12, "{got:?}");
            assert_eq!(&got[got.len() - 12..], &hex(&format!("{} 01040100 00000000", h(10, 6)))[..]);
        }
        let t6 = typed(vec![KeyType::Ipv6Addr], None, true);
        let got = list(&t6, &[el(vec![Val::V6(0, u128::MAX)], None, Some("all"))], Op::Add);
        let u = userdata(Some("all"), SET_ELEM_F_INTERVAL_OPEN).unwrap().unwrap();
        assert_eq!(u, [hex("0004 616c6c00 0104"), 1u32.to_ne_bytes().to_vec()].concat());
        assert!(got.windows(u.len()).any(|w| w == u));
        // The successor carries over every byte.
        assert_eq!(successor(&[0x0a, 0xff, 0xff, 0xff]), Some(vec![0x0b, 0, 0, 0]));
        assert_eq!(successor(&[0xff; 16]), None);
    }

    #[test]
    fn bad_elements_are_refused_with_the_set_and_element() {
        let mk = |t: TypedSetDelta| Delta { sets: vec![SetDelta { set: "s".into(), removed: vec![], added: vec!["x".into()], typed: t }] };
        let mut t = typed(vec![KeyType::Ipv4Addr], None, false);
        t.added = vec![el(vec![Val::V4(1, 2)], None, None)];
        let e = batch("fwctl", &mk(t), 1).unwrap_err();
        assert!(e.why.contains("range in a set without"), "{e}");
        assert_eq!(e.elem, "0.0.0.1-0.0.0.2");
        let mut t = typed(vec![KeyType::Ipv4Addr], None, false);
        t.added = vec![el(vec![Val::Mark(1)], None, None)];
        assert!(batch("fwctl", &mk(t), 1).unwrap_err().why.contains("not a value of type ipv4_addr"));
        let mut t = typed(vec![KeyType::Ifname], Some(SetData::Mark), false);
        t.added = vec![el(vec![Val::Ifname("sixteen-bytes-xx".into())], Some(Val::Mark(1)), None)];
        assert!(batch("fwctl", &mk(t), 1).unwrap_err().why.contains("16 bytes"));
        let mut t = typed(vec![KeyType::Ifname], Some(SetData::Mark), false);
        t.added = vec![el(vec![Val::Ifname("eth0".into())], Some(Val::Verdict(Verdict::Drop)), None)];
        assert!(batch("fwctl", &mk(t), 1).is_err());
        let mut t = typed(vec![KeyType::Ifname], None, false);
        t.added = vec![el(vec![Val::Ifname("eth0".into())], None, Some(&"x".repeat(300)))];
        assert!(batch("fwctl", &mk(t), 1).unwrap_err().why.contains("comment longer"));
    }

    #[test]
    fn batch_is_begin_deletions_additions_end_and_errors_map_back_to_elements() {
        let t4 = TypedSetDelta {
            key: vec![KeyType::Ipv4Addr],
            data: Some(SetData::Mark),
            interval: true,
            was_empty: false,
            removed: vec![el(vec![Val::V4(0x0a000000, 0x0a0000ff)], Some(Val::Mark(1)), None)],
            added: (0..3000u32).map(|i| el(vec![Val::V4(0x0b000000 + 2 * i, 0x0b000000 + 2 * i)], Some(Val::Mark(i)), None)).collect(),
        };
        let tv = TypedSetDelta {
            key: vec![KeyType::Ifname],
            data: Some(SetData::Verdict),
            interval: false,
            was_empty: false,
            removed: vec![],
            added: vec![el(vec![Val::Ifname("eth1".into())], Some(Val::Verdict(Verdict::Goto("from_lan".into()))), None)],
        };
        let d = Delta {
            sets: vec![
                SetDelta { set: "src4_0".into(), removed: vec!["10.0.0.0/24".into()], added: vec![], typed: t4 },
                SetDelta { set: "dispatch".into(), removed: vec![], added: vec![], typed: tv },
            ],
        };
        let b = batch("fwctl", &d, 100).unwrap();
        // Walk the messages: lengths add up, types and flags as the kernel wants.
        let mut off = 0;
        let mut seen = vec![];
        while off < b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b.bytes[off + 4..off + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(b.bytes[off + 6..off + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(b.bytes[off + 8..off + 12].try_into().unwrap());
            let (family, res_id) = (b.bytes[off + 16], u16::from_be_bytes(b.bytes[off + 18..off + 20].try_into().unwrap()));
            assert_eq!(len % 4, 0);
            seen.push((ty, flags, seq, family, res_id));
            off += len;
        }
        assert_eq!(off, b.bytes.len());
        let (first, last) = (seen[0], *seen.last().unwrap());
        assert_eq!(first, (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 100, 0, NFNL_SUBSYS_NFTABLES));
        assert_eq!(last.0, NFNL_MSG_BATCH_END);
        assert_eq!(last.2, b.end_seq);
        let del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM;
        let new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
        assert_eq!(del, 0x0a0e);
        assert_eq!(new, 0x0a0c);
        let inner = &seen[1..seen.len() - 1];
        assert_eq!(inner[0], (del, NLM_F_REQUEST | NLM_F_ACK, 101, FAMILY_INET, 0));
        // 3000 additions need more than one message; dispatch's addition comes last.
        assert!(inner.len() >= 4, "{}", inner.len());
        assert!(inner[1..].iter().all(|m| m.0 == new && m.1 == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE));
        assert_eq!(b.messages.len(), inner.len());
        assert_eq!(b.messages.last().unwrap().set, 1);
        assert_eq!(b.messages.iter().map(|m| m.elems.len()).sum::<usize>(), 3002);
        // An offset inside an element's entries names that element.
        let m = &b.messages[2];
        let (r, i) = m.elems[5].clone();
        assert_eq!(b.locate(m.seq, Some(r.start + 4)), Some(Culprit::Message { op: Op::Add, set: 0, elem: Some(i) }));
        assert_eq!(b.locate(m.seq, None), Some(Culprit::Message { op: Op::Add, set: 0, elem: None }));
        assert_eq!(b.locate(100, None), Some(Culprit::Batch));
        assert_eq!(b.locate(7, None), None);
        // The element indexes of one set's additions cover it once, in order.
        let idx: Vec<usize> = b.messages.iter().filter(|m| m.set == 0 && m.op == Op::Add).flat_map(|m| m.elems.iter().map(|(_, i)| *i)).collect();
        assert_eq!(idx, (0..3000).collect::<Vec<_>>());
    }

    #[test]
    fn replies_parse_acks_and_extended_errors() {
        let mut d = vec![];
        // An ACK for seq 5 (capped: no payload).
        let mut ack = vec![];
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&NLM_F_CAPPED.to_ne_bytes());
        ack.extend_from_slice(&5u32.to_ne_bytes());
        ack.extend_from_slice(&77u32.to_ne_bytes());
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        ack[36 - 8..36 - 4].copy_from_slice(&5u32.to_ne_bytes());
        d.extend_from_slice(&ack);
        // An error (EEXIST) for seq 6 with a message and an offset.
        let mut w = W(vec![]);
        w.strz(NLMSGERR_ATTR_MSG, "clash");
        w.attr(NLMSGERR_ATTR_OFFS, &120u32.to_ne_bytes());
        let tlvs = w.0;
        let len = 16 + 20 + tlvs.len();
        let mut e = vec![];
        e.extend_from_slice(&(len as u32).to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        e.extend_from_slice(&6u32.to_ne_bytes());
        e.extend_from_slice(&77u32.to_ne_bytes());
        e.extend_from_slice(&(-17i32).to_ne_bytes());
        let mut orig = [0u8; 16];
        orig[0..4].copy_from_slice(&200u32.to_ne_bytes());
        orig[8..12].copy_from_slice(&6u32.to_ne_bytes());
        e.extend_from_slice(&orig);
        e.extend_from_slice(&tlvs);
        d.extend_from_slice(&e);
        let r = replies(&d).unwrap();
        assert_eq!(r, vec![Reply { seq: 5, errno: 0, message: None, offset: None }, Reply { seq: 6, errno: 17, message: Some("clash".into()), offset: Some(120) }]);
        assert!(replies(&d[..d.len() - 4]).is_err());
    }
}
