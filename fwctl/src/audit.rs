//! The audit trail: append-only JSON Lines, each record carrying the previous
//! record's hash, so that any edit, deletion, reordering or truncation shows.
//!
//! Input: events from apply/confirm/rollback/restore. Output: `audit.jsonl` (and
//! `audit.head`, the last sequence number and hash, written after each record so
//! that cutting records off the end is detected too).
//! Must not: record key material; return before the record is on disk (fsync).

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub uid: u32,
    pub user: String,
    pub sudo_user: Option<String>,
    /// The SSH client's address (from SSH_CLIENT), when the command came over SSH.
    pub ssh_origin: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// UTC, RFC 3339.
    pub time: String,
    /// apply, apply-refused, apply-forced, apply-failed, confirm, rollback, rollback-auto, restore
    pub event: String,
    /// ok, refused, failed
    pub result: String,
    pub actor: Actor,
    pub host: String,
    pub appliance: String,
    pub generation: Option<u64>,
    pub previous_generation: Option<u64>,
    pub policy_path: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub policy_hash: Option<String>,
    pub ruleset_hash: Option<String>,
    pub reason: Option<String>,
    /// The flow-level change (and counts), as shown by `plan`.
    pub summary: serde_json::Value,
    pub message: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The line written for a record: its JSON with `hash` last. The hash is the
/// SHA-256 of exactly these bytes with `"hash":""`, so verification needs no
/// re-serialisation (which could print numbers differently).
pub fn seal(r: &mut Record) -> String {
    r.hash = String::new();
    let unsealed = serde_json::to_string(&*r).expect("serializable");
    r.hash = crate::util::sha256_hex(unsealed.as_bytes());
    let tail = "\"hash\":\"\"}";
    debug_assert!(unsealed.ends_with(tail));
    format!("{}\"hash\":\"{}\"}}", &unsealed[..unsealed.len() - tail.len()], r.hash)
}

/// Recompute a line's hash from its bytes: (stored, computed).
fn line_hash(line: &str) -> Option<(String, String)> {
    let at = line.rfind(",\"hash\":\"")?;
    let stored = line[at + 9..].strip_suffix("\"}")?.to_string();
    let unsealed = format!("{},\"hash\":\"\"}}", &line[..at]);
    Some((stored, crate::util::sha256_hex(unsealed.as_bytes())))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// 1-based line of the first bad record.
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record at line {}: {}", self.line, self.problem)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// Check a whole log (pure): the chain, the sequence, every hash, the head
/// (`None`: there is no `audit.head`, which only a log of at most one record may lack).
pub fn verify(text: &str, head: Option<&Head>) -> Result<Vec<Record>, Broken> {
    let mut out: Vec<Record> = vec![];
    let mut prev = GENESIS.to_string();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        if !raw.ends_with('\n') {
            return Err(Broken { line: n, problem: "the last record is torn (no end of line): the log was cut while writing, or truncated".into() });
        }
        let line = raw.trim_end_matches('\n');
        let r: Record = serde_json::from_str(line).map_err(|e| Broken { line: n, problem: format!("not a valid record ({e}): edited or corrupted") })?;
        let want_seq = out.len() as u64 + 1;
        if r.seq != want_seq {
            return Err(Broken { line: n, problem: format!("sequence number {} where {want_seq} was expected: a record was deleted, inserted or reordered", r.seq) });
        }
        if r.prev_hash != prev {
            return Err(Broken { line: n, problem: "does not chain to the previous record: a record before it was deleted, edited or reordered".into() });
        }
        match line_hash(line) {
            Some((stored, computed)) if stored == computed && stored == r.hash => {}
            _ => return Err(Broken { line: n, problem: "its content does not match its hash: the record was edited".into() }),
        }
        prev = r.hash.clone();
        out.push(r);
    }
    // A missing head is a head at the genesis: a crash may leave the very first
    // record without its head, nothing more.
    let genesis = Head { seq: 0, hash: GENESIS.into() };
    let h = head.unwrap_or(&genesis);
    // The head is written after the record, so a crash between the two leaves
    // it one record behind; anything else means records were cut off.
    let last = out.len() as u64;
    let hash_at = |seq: u64| if seq == 0 { Some(GENESIS.to_string()) } else { usize::try_from(seq - 1).ok().and_then(|i| out.get(i)).map(|r| r.hash.clone()) };
    let consistent = (h.seq == last || h.seq.checked_add(1) == Some(last)) && hash_at(h.seq).as_deref() == Some(h.hash.as_str());
    if !consistent {
        let problem = match head {
            Some(h) => format!("the log ends at record {last} but audit.head says {}: records were cut off the end", h.seq),
            None => format!("the log has {last} records but audit.head is missing: it was deleted, or the log was replaced"),
        };
        return Err(Broken { line: out.len() + 1, problem });
    }
    Ok(out)
}

/// What `audit.head` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadFile {
    Missing,
    /// Present but not a head record (why).
    Invalid(String),
    Valid(Head),
}

impl HeadFile {
    pub fn head(&self) -> Option<&Head> {
        match self {
            HeadFile::Valid(h) => Some(h),
            _ => None,
        }
    }
}

/// Check a state directory's trail (pure): the log and its head file, and that
/// generation `must_be_named` (the newest that is not in flight, if any) and so
/// every one before it has its record — an empty or absent log next to
/// generations is a deleted log, not an empty one.
pub fn verify_trail(text: &str, head: &HeadFile, must_be_named: Option<u64>) -> Result<Vec<Record>, Broken> {
    if let HeadFile::Invalid(why) = head {
        return Err(Broken { line: 1, problem: format!("audit.head is not a head record ({why}): it was edited or replaced") });
    }
    let out = verify(text, head.head())?;
    if let Some(g) = must_be_named.filter(|&g| g > 0) {
        let named = out.iter().flat_map(|r| [r.generation, r.previous_generation]).flatten().max();
        if named.is_none_or(|m| m < g) {
            return Err(Broken { line: out.len() + 1, problem: format!("generation {g} exists but no record names it: records were removed (or the log was replaced)") });
        }
    }
    Ok(out)
}

/// The audit log files of a state directory.
pub struct Log<'a> {
    pub dir: &'a Path,
}

impl Log<'_> {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join("audit.jsonl")
    }
    fn head_path(&self) -> std::path::PathBuf {
        self.dir.join("audit.head")
    }
    pub fn read(&self) -> std::io::Result<(String, HeadFile)> {
        let mut text = String::new();
        match File::open(self.path()) {
            Ok(mut f) => {
                f.read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let head = match std::fs::read(self.head_path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HeadFile::Missing,
            Err(e) => return Err(e),
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
                Ok(h) => HeadFile::Valid(h),
                Err(e) => HeadFile::Invalid(e.to_string()),
            },
        };
        Ok((text, head))
    }

    /// Append a record (seq, prev_hash and hash filled in here), fsync it, then
    /// update the head. Refuses to append to a log that does not verify.
    pub fn append(&self, mut r: Record) -> std::io::Result<Record> {
        let (text, head) = self.read()?;
        let records = verify_trail(&text, &head, None).map_err(|b| std::io::Error::other(format!("audit log does not verify, not appending: {b}")))?;
        r.seq = records.len() as u64 + 1;
        r.prev_hash = records.last().map(|x| x.hash.clone()).unwrap_or_else(|| GENESIS.into());
        let line = seal(&mut r) + "\n";
        let mut f = OpenOptions::new().create(true).append(true).open(self.path())?;
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        let tmp = self.dir.join("audit.head.tmp");
        {
            let mut h = File::create(&tmp)?;
            h.write_all(serde_json::to_string(&Head { seq: r.seq, hash: r.hash.clone() }).expect("json").as_bytes())?;
            h.sync_all()?;
        }
        std::fs::rename(&tmp, self.head_path())?;
        File::open(self.dir)?.sync_all()?;
        Ok(r)
    }
}

impl Log<'_> {
    /// Refuse early (before any change) when the trail cannot take a new record.
    pub fn check_writable(&self) -> Result<(), String> {
        let (text, head) = self.read().map_err(|e| format!("cannot read the audit trail: {e}"))?;
        verify_trail(&text, &head, None).map(|_| ()).map_err(|b| {
            format!("the audit trail does not verify ({b}); nothing was changed. Keep the broken log as evidence (move audit.jsonl and audit.head aside) to start a new chain")
        })
    }
}

/// Who runs this command (effects: environment, uid).
pub fn actor() -> Actor {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| uid.to_string());
    Actor {
        uid: uid.as_raw(),
        user,
        sudo_user: std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()),
        ssh_origin: std::env::var("SSH_CLIENT").ok().and_then(|s| s.split_whitespace().next().map(String::from)),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// UTC RFC 3339 time of a unix timestamp.
pub fn rfc3339(unix: i64) -> String {
    let d = crate::sys::clock::civil_date(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!("{d}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempdir::Dir, String) {
        let d = tempdir::Dir::new();
        let log = Log { dir: &d.0 };
        for i in 0..n {
            log.append(Record { event: format!("e{i}"), result: "ok".into(), ..Default::default() }).unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        (d, text)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!("fwctl-audit-{}-{}", std::process::id(), super::super::rfc3339(0).len() + rand()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        fn rand() -> usize {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            N.fetch_add(1, Ordering::SeqCst)
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_good_log_verifies() {
        let (d, text) = log_with(4);
        let (_, head) = Log { dir: &d.0 }.read().unwrap();
        assert_eq!(verify(&text, head.head()).unwrap().len(), 4);
    }

    #[test]
    fn every_kind_of_tampering_is_caught() {
        let (d, text) = log_with(4);
        let (_, head) = Log { dir: &d.0 }.read().unwrap();
        let head = head.head().cloned();
        let lines: Vec<&str> = text.lines().collect();
        let join = |v: Vec<&str>| v.iter().map(|l| format!("{l}\n")).collect::<String>();
        // edit
        let edited = text.replace("\"e1\"", "\"e9\"");
        assert_eq!(verify(&edited, head.as_ref()).unwrap_err().line, 2);
        // deletion in the middle
        let deleted = join(vec![lines[0], lines[2], lines[3]]);
        assert_eq!(verify(&deleted, head.as_ref()).unwrap_err().line, 2);
        // reordering
        let reordered = join(vec![lines[0], lines[2], lines[1], lines[3]]);
        assert_eq!(verify(&reordered, head.as_ref()).unwrap_err().line, 2);
        // truncation at the end (whole records)
        let truncated = join(vec![lines[0], lines[1]]);
        assert!(verify(&truncated, head.as_ref()).unwrap_err().problem.contains("cut off"));
        // torn last line
        let torn = &text[..text.len() - 10];
        assert!(verify(torn, head.as_ref()).unwrap_err().problem.contains("torn"));
    }

    #[test]
    fn numbers_that_do_not_round_trip_still_verify() {
        let d = tempdir::Dir::new();
        let log = Log { dir: &d.0 };
        for x in [19.741782999999998f64, 0.1 + 0.2, 1e-7, 123456.789012345] {
            log.append(Record { event: "apply".into(), summary: serde_json::json!({ "ms": x }), ..Default::default() }).unwrap();
        }
        let (text, head) = log.read().unwrap();
        assert_eq!(verify(&text, head.head()).unwrap().len(), 4);
    }

    #[test]
    fn a_crash_between_record_and_head_is_not_tampering() {
        let (d, text) = log_with(3);
        let lines: Vec<&str> = text.lines().collect();
        let r2: Record = serde_json::from_str(lines[1]).unwrap();
        let lagging = Head { seq: 2, hash: r2.hash.clone() };
        assert!(verify(&text, Some(&lagging)).is_ok());
        // But a head two records behind is not a crash.
        let r1: Record = serde_json::from_str(lines[0]).unwrap();
        assert!(verify(&text, Some(&Head { seq: 1, hash: r1.hash })).is_err());
        let _ = d;
    }

    #[test]
    fn a_deleted_or_garbage_head_does_not_hide_truncation() {
        let (d, text) = log_with(4);
        let lines: Vec<&str> = text.lines().collect();
        let cut: String = lines[..2].iter().map(|l| format!("{l}\n")).collect();
        // audit.head deleted: the cut log must not verify; nor the whole one.
        let b = verify_trail(&cut, &HeadFile::Missing, None).unwrap_err();
        assert!(b.problem.contains("audit.head is missing"), "{b}");
        assert!(verify_trail(&text, &HeadFile::Missing, None).is_err());
        // audit.head garbage.
        std::fs::write(d.0.join("audit.head"), "not json").unwrap();
        let (_, head) = Log { dir: &d.0 }.read().unwrap();
        assert!(matches!(head, HeadFile::Invalid(_)));
        assert!(verify_trail(&text, &head, None).unwrap_err().problem.contains("audit.head is not a head record"));
        // A crash right after the very first record (its head not yet written) is not tampering.
        let first = format!("{}\n", lines[0]);
        assert_eq!(verify_trail(&first, &HeadFile::Missing, None).unwrap().len(), 1);
        assert!(verify_trail("", &HeadFile::Missing, None).unwrap().is_empty());
    }

    #[test]
    fn an_absent_log_next_to_generations_does_not_verify() {
        let b = verify_trail("", &HeadFile::Missing, Some(3)).unwrap_err();
        assert!(b.problem.contains("generation 3"), "{b}");
        assert!(verify_trail("", &HeadFile::Missing, Some(1)).is_err());
        assert!(verify_trail("", &HeadFile::Missing, Some(0)).is_ok());
        // The newest generation named by a record: fine.
        let d = tempdir::Dir::new();
        let log = Log { dir: &d.0 };
        log.append(Record { event: "apply".into(), generation: Some(3), ..Default::default() }).unwrap();
        let (text, head) = log.read().unwrap();
        assert_eq!(verify_trail(&text, &head, Some(3)).unwrap().len(), 1);
        assert_eq!(verify_trail(&text, &head, Some(2)).unwrap().len(), 1);
        assert!(verify_trail(&text, &head, Some(4)).is_err());
    }

    #[test]
    fn appending_to_a_broken_log_is_refused() {
        let (d, text) = log_with(2);
        std::fs::write(d.0.join("audit.jsonl"), text.replace("\"e0\"", "\"x\"")).unwrap();
        assert!(Log { dir: &d.0 }.append(Record::default()).is_err());
    }
}
