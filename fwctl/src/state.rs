//! The state directory: generations, the lock, the open confirm window.
//!
//! Layout (`/var/lib/fwctl` by default, mode 0700):
//! `generations/NNNNNN/{meta.json, policy/…, ruleset.nft, ruleset.json, alloc.json,
//! plan.txt, plan.json, kernel.txt}` (the policy snapshot also gives the tunnels'
//! peers: rollback and restore sync the tunnels from it), `current`, `confirmed`, `pending.json`,
//! `lock`, `audit.jsonl`, `audit.head`.
//! Must not: decide anything (apply.rs does); every write is atomic (tmp + rename).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/fwctl";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub number: u64,
    pub time: String,
    pub unix: i64,
    /// apply, rollback, rollback-auto (a confirm window ran out), restore
    pub event: String,
    /// For a rollback, rollback-auto or restore: the generation whose policy
    /// (and ruleset, less rules that have expired since) was restored.
    pub source: Option<u64>,
    /// The generation that was in effect when this one took effect (None: no
    /// fwctl table, or a generation written before fwctl recorded it).
    #[serde(default)]
    pub replaced: Option<u64>,
    /// The date the ruleset was compiled for (`expires` is judged on it), YYYY-MM-DD.
    #[serde(default)]
    pub compiled_on: Option<String>,
    /// Whether this generation was ever confirmed (applied without a window, or
    /// `fwctl confirm`ed); None: written before fwctl recorded it.
    #[serde(default)]
    pub confirmed: Option<bool>,
    pub actor: crate::audit::Actor,
    pub reason: Option<String>,
    pub policy_path: String,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub policy_hash: String,
    pub ruleset_hash: String,
    /// One line: "+3 allowed, -1 denied flows; +12 -4 elements".
    pub summary: String,
    pub appliance: String,
    /// Applied with `--no-tunnels`: rollback and restore leave tunnels alone too.
    #[serde(default)]
    pub tunnels_skipped: bool,
}

/// An open commit-confirm window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub generation: u64,
    /// What to restore if not confirmed (None: fwctl's table did not exist).
    pub previous: Option<u64>,
    pub deadline_unix: i64,
    pub watchdog_pid: Option<u32>,
}

#[derive(Debug)]
pub enum StateError {
    Io(String, std::io::Error),
    Busy { waited: Duration, holder: String },
    Corrupt(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Io(what, e) => write!(f, "{what}: {e}"),
            StateError::Busy { waited, holder } => write!(f, "another fwctl is changing the firewall ({holder}); waited {:.0} s, giving up", waited.as_secs_f64()),
            StateError::Corrupt(m) => write!(f, "state directory: {m}"),
        }
    }
}

impl std::error::Error for StateError {}

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, StateError> {
    r.map_err(|e| StateError::Io(what.into(), e))
}

pub struct State {
    pub dir: PathBuf,
}

/// Held while changing the firewall; released on drop (also if the process dies).
pub struct Lock {
    _f: nix::fcntl::Flock<fs::File>,
}

/// Write a file atomically: temporary file, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl State {
    /// Open for changing the firewall: create the directory (0700) if it is
    /// missing. An existing path must be a real directory (a symlink or a file is
    /// refused, never chmodded); a directory fwctl did not create keeps its mode.
    pub fn open(dir: &Path) -> Result<State, StateError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(StateError::Corrupt(format!("{} is not a directory (symbolic links are not followed)", dir.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                io(format!("create {}", dir.display()), fs::DirBuilder::new().recursive(true).mode(0o700).create(dir))?;
                io(format!("chmod {}", dir.display()), fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))?;
            }
            Err(e) => return Err(StateError::Io(format!("stat {}", dir.display()), e)),
        }
        io("create generations", fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join("generations")))?;
        Ok(State { dir: dir.to_path_buf() })
    }

    /// Open for reading only (`plan`, `history`, `audit`): creates nothing,
    /// changes no mode. A missing directory is not an error here (see
    /// [`State::exists`]); a path that is not a directory is.
    pub fn open_read_only(dir: &Path) -> Result<State, StateError> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(StateError::Corrupt(format!("{} is not a directory", dir.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::Io(format!("stat {}", dir.display()), e)),
        }
        Ok(State { dir: dir.to_path_buf() })
    }

    /// Whether the state directory exists (nothing was ever applied when not).
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Take the lock, waiting up to `wait` for another fwctl to finish.
    pub fn lock(&self, wait: Duration) -> Result<Lock, StateError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.dir.join("lock");
        let start = Instant::now();
        loop {
            let f = io("open lock", fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path))?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => {
                    let mut fl = l;
                    let _ = fl.set_len(0);
                    let _ = writeln!(&mut *fl, "pid {}", std::process::id());
                    return Ok(Lock { _f: fl });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= wait {
                        let text = fs::read_to_string(&path).unwrap_or_default();
                        let pid = text.trim().strip_prefix("pid ").and_then(|p| p.parse::<u32>().ok());
                        let holder = match pid {
                            Some(p) if Path::new(&format!("/proc/{p}")).exists() => format!("pid {p}"),
                            _ => "a process that did not say who it is (e.g. flock by hand)".into(),
                        };
                        return Err(StateError::Busy { waited: start.elapsed(), holder });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => return Err(StateError::Io("lock".into(), e.into())),
            }
        }
    }

    /// Whether another fwctl holds the lock now (read-only: the lock file is
    /// neither created nor written).
    pub fn busy(&self) -> bool {
        use nix::fcntl::{Flock, FlockArg};
        let Ok(f) = fs::File::open(self.dir.join("lock")) else { return false };
        matches!(Flock::lock(f, FlockArg::LockSharedNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
    }

    /// The newest generation whose audit record must exist: the newest one,
    /// unless it is in flight. A confirm window's generation may belong to an
    /// apply that was killed, whose watchdog records it: the one before it is
    /// required. While another fwctl holds the lock, none is required: the holder
    /// writes generations and records in steps (a watchdog creates its
    /// `rollback-auto` generation, clears the window, then writes the record that
    /// names both it and the killed apply's generation), and any of those steps
    /// may be half done. The chain of the records present is still verified.
    pub fn settled_generation(&self) -> Option<u64> {
        let newest = *self.numbers().last()?;
        if self.busy() {
            return None;
        }
        if self.pending().is_some_and(|p| p.generation == newest) { newest.checked_sub(1) } else { Some(newest) }
    }

    fn read_num(&self, name: &str) -> Option<u64> {
        fs::read_to_string(self.dir.join(name)).ok().and_then(|s| s.trim().parse().ok())
    }
    fn write_num(&self, name: &str, n: Option<u64>) -> Result<(), StateError> {
        let p = self.dir.join(name);
        match n {
            Some(n) => io(format!("write {name}"), write_atomic(&p, format!("{n}\n").as_bytes())),
            None => {
                let _ = fs::remove_file(p);
                Ok(())
            }
        }
    }
    pub fn current(&self) -> Option<u64> {
        self.read_num("current")
    }
    pub fn set_current(&self, n: Option<u64>) -> Result<(), StateError> {
        self.write_num("current", n)
    }
    pub fn confirmed(&self) -> Option<u64> {
        self.read_num("confirmed")
    }
    pub fn set_confirmed(&self, n: Option<u64>) -> Result<(), StateError> {
        self.write_num("confirmed", n)
    }
    pub fn pending(&self) -> Option<Pending> {
        fs::read_to_string(self.dir.join("pending.json")).ok().and_then(|s| serde_json::from_str(&s).ok())
    }
    pub fn set_pending(&self, p: Option<&Pending>) -> Result<(), StateError> {
        let path = self.dir.join("pending.json");
        match p {
            Some(p) => io("write pending.json", write_atomic(&path, serde_json::to_string_pretty(p).expect("json").as_bytes())),
            None => {
                let _ = fs::remove_file(path);
                Ok(())
            }
        }
    }

    pub fn gen_dir(&self, n: u64) -> PathBuf {
        self.dir.join("generations").join(format!("{n:06}"))
    }

    pub fn numbers(&self) -> Vec<u64> {
        let mut v: Vec<u64> = fs::read_dir(self.dir.join("generations"))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn meta(&self, n: u64) -> Result<Meta, StateError> {
        let p = self.gen_dir(n).join("meta.json");
        let text = io(format!("read {}", p.display()), fs::read_to_string(&p))?;
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt(format!("{}: {e}", p.display())))
    }

    pub fn read(&self, n: u64, file: &str) -> Result<String, StateError> {
        let p = self.gen_dir(n).join(file);
        io(format!("read {}", p.display()), fs::read_to_string(&p))
    }

    /// Create the next generation with its files; `policy` is (relative path, text).
    pub fn create(&self, meta: &mut Meta, policy: &[(PathBuf, String)], files: &[(&str, String)]) -> Result<u64, StateError> {
        let n = self.numbers().last().copied().unwrap_or(0) + 1;
        meta.number = n;
        let dir = self.gen_dir(n);
        let tmp = self.dir.join("generations").join(format!(".tmp-{n:06}"));
        let _ = fs::remove_dir_all(&tmp);
        io("create generation", fs::DirBuilder::new().recursive(true).mode(0o700).create(tmp.join("policy")))?;
        for (rel, text) in policy {
            let p = tmp.join("policy").join(rel);
            if let Some(parent) = p.parent() {
                io("create policy snapshot", fs::create_dir_all(parent))?;
            }
            io(format!("write {}", p.display()), fs::write(&p, text))?;
        }
        for (name, text) in files {
            io(format!("write {name}"), fs::write(tmp.join(name), text))?;
        }
        io("write meta.json", fs::write(tmp.join("meta.json"), serde_json::to_string_pretty(meta).expect("json")))?;
        io("publish generation", fs::rename(&tmp, &dir))?;
        io("sync", fs::File::open(self.dir.join("generations")).and_then(|f| f.sync_all()))?;
        Ok(n)
    }

    pub fn write_file(&self, n: u64, name: &str, text: &str) -> Result<(), StateError> {
        io(format!("write {name}"), write_atomic(&self.gen_dir(n).join(name), text.as_bytes()))
    }

    /// Record in generation `n`'s meta that it was confirmed.
    pub fn mark_confirmed(&self, n: u64) -> Result<(), StateError> {
        let mut m = self.meta(n)?;
        if m.confirmed == Some(true) {
            return Ok(());
        }
        m.confirmed = Some(true);
        self.write_file(n, "meta.json", &serde_json::to_string_pretty(&m).expect("json"))
    }

    /// Every generation's meta, oldest first (unreadable ones left out).
    pub fn metas(&self) -> Vec<Meta> {
        self.numbers().into_iter().filter_map(|n| self.meta(n).ok()).collect()
    }

    /// The policy snapshot of generation `n`: (path relative to the snapshot, text).
    pub fn policy_files(&self, n: u64) -> Result<Vec<(PathBuf, String)>, StateError> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
            let mut entries: Vec<PathBuf> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
            entries.sort();
            for p in entries {
                if fs::symlink_metadata(&p)?.is_dir() {
                    walk(&p, out)?;
                } else {
                    out.push(p);
                }
            }
            Ok(())
        }
        let root = self.gen_dir(n).join("policy");
        let mut paths = vec![];
        io(format!("read {}", root.display()), walk(&root, &mut paths))?;
        let mut out = vec![];
        for p in paths {
            let text = io(format!("read {}", p.display()), fs::read_to_string(&p))?;
            out.push((p.strip_prefix(&root).unwrap_or(&p).to_path_buf(), text));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("fwctl-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn opening_the_state_read_only_creates_and_chmods_nothing() {
        let t = tmp("ro");
        let shared = t.0.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let s = State::open_read_only(&shared).unwrap();
        assert!(s.exists() && s.numbers().is_empty() && s.current().is_none());
        assert_eq!(mode(&shared), 0o1777);
        assert!(!shared.join("generations").exists());
        let missing = t.0.join("missing");
        assert!(!State::open_read_only(&missing).unwrap().exists());
        assert!(!missing.exists());
        let file = t.0.join("file");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(State::open_read_only(&file).is_err());
        assert_eq!(mode(&file), 0o644);
    }

    #[test]
    fn opening_the_state_for_changes_follows_no_symlink_and_chmods_no_file() {
        let t = tmp("rw");
        let shared = t.0.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let link = t.0.join("link");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        assert!(State::open(&link).is_err());
        assert_eq!(mode(&shared), 0o1777);
        let file = t.0.join("file");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(State::open(&file).is_err());
        assert_eq!(mode(&file), 0o644);
        // A new one is created 0700.
        let fresh = t.0.join("fresh/state");
        State::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
