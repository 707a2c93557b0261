//! WireGuard keys: generation, derivation, key files.
//!
//! Input: random bytes (the kernel's: `/dev/urandom`), key files, base64 text.
//! Output: [`PrivateKey`] and [`PresharedKey`] (secrets: wiped on drop, `Debug`
//! redacted, no `Display`), [`PublicKey`]s derived from them, and key files
//! created `0600` with `O_EXCL` (an existing file is never overwritten).
//! Must not: put a secret into an error, a log line, `Debug` output or any
//! `Display` — the only ways out of a secret are the explicitly named
//! [`PrivateKey::expose_base64`] / `expose_*` methods, whose callers are
//! `fwctl vpn keygen` (prints a new key for piping, by request), the client
//! configuration of a *new peer* (its own key, shown once), and the UAPI/netlink
//! set calls that hand the key to the tunnel.

use crate::model::PublicKey;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Overwrite `b` with zeros in a way the optimiser may not drop.
pub(crate) fn wipe(b: &mut [u8]) {
    for x in b.iter_mut() {
        // SAFETY: `x` is a valid, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Bytes that hold a secret (a key in text form, a UAPI message carrying a key):
/// wiped on drop, redacted in `Debug`.
pub struct SecretBuf(Vec<u8>);

impl SecretBuf {
    pub fn new() -> SecretBuf {
        SecretBuf(Vec::new())
    }
    /// Takes ownership of `s` without copying it.
    pub fn from_string(s: String) -> SecretBuf {
        SecretBuf(s.into_bytes())
    }
    pub fn push_str(&mut self, s: &str) {
        self.reserve(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    /// Grow without letting `Vec` reallocate behind our back (a reallocation
    /// would leave an unwiped copy in freed memory).
    fn reserve(&mut self, more: usize) {
        if self.0.capacity() - self.0.len() < more {
            let mut bigger = Vec::with_capacity((self.0.len() + more).max(256) * 2);
            bigger.extend_from_slice(&self.0);
            wipe(&mut self.0);
            self.0 = bigger;
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The text (secrets here are ASCII: base64, hex, UAPI lines).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Default for SecretBuf {
    fn default() -> Self {
        SecretBuf::new()
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf(<{} bytes redacted>)", self.0.len())
    }
}

/// Why a key could not be read, parsed or created. Never contains key material.
#[derive(Debug)]
pub enum KeyError {
    Io { path: PathBuf, what: &'static str, source: io::Error },
    /// Group or others may access the file.
    Permissions { path: PathBuf, mode: u32 },
    /// A symbolic link, FIFO, socket, device or directory where a key file should be.
    NotAFile { path: PathBuf, kind: &'static str },
    /// The file (or stdin) does not hold a WireGuard key. `what` names the
    /// source; the content is never repeated.
    Format { what: String },
    Exists { path: PathBuf },
    Random(io::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io { path, what, source } => write!(f, "{what} {}: {source}", path.display()),
            KeyError::Permissions { path, mode } => write!(
                f,
                "key file {} is accessible by group or others (mode {:04o}); refusing to use it — run `chmod 600 {}` (and consider the key compromised if others could read it)",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
            KeyError::NotAFile { path, kind } => write!(f, "key file {} is {kind}, not a regular file", path.display()),
            KeyError::Format { what } => write!(f, "{what} does not hold a WireGuard key (expected 44 characters of base64 encoding 32 bytes)"),
            KeyError::Exists { path } => write!(f, "{} already exists; refusing to overwrite a key file", path.display()),
            KeyError::Random(e) => write!(f, "cannot read random bytes from /dev/urandom: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

fn random32() -> Result<[u8; 32], KeyError> {
    let mut b = [0u8; 32];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(KeyError::Random)?;
    Ok(b)
}

/// Parse base64 text into 32 bytes without leaving copies around.
fn decode32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let fmt_err = || KeyError::Format { what: what.to_string() };
    let t = text.trim();
    if t.len() != 44 {
        return Err(fmt_err());
    }
    let mut v = crate::util::base64_decode(t).ok_or_else(fmt_err)?;
    let out = <[u8; 32]>::try_from(&v[..]).map_err(|_| fmt_err());
    wipe(&mut v);
    out
}

fn encode_secret(b: &[u8; 32]) -> SecretBuf {
    SecretBuf::from_string(crate::util::base64_encode(b))
}

fn hex_into(out: &mut SecretBuf, b: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 64];
    for (i, x) in b.iter().enumerate() {
        s[2 * i] = HEX[usize::from(x >> 4)];
        s[2 * i + 1] = HEX[usize::from(x & 15)];
    }
    out.push_str(std::str::from_utf8(&s).expect("hex is ASCII"));
    wipe(&mut s);
}

/// An X25519 private key (clamped, as `wg genkey` makes them).
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let mut b = random32()?;
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Ok(PrivateKey(b))
    }

    /// From base64 text; `what` names the source for the error ("stdin", a path).
    pub fn from_base64(text: &str, what: &str) -> Result<PrivateKey, KeyError> {
        decode32(text, what).map(PrivateKey)
    }

    pub(crate) fn from_bytes(b: [u8; 32]) -> PrivateKey {
        PrivateKey(b)
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The key as base64. Only for `fwctl vpn keygen` and a new peer's client
    /// configuration: nothing else may print a private key.
    pub fn expose_base64(&self) -> SecretBuf {
        encode_secret(&self.0)
    }

    /// Append the key as lowercase hex (the UAPI's encoding) to `out`.
    pub(crate) fn expose_hex_into(&self, out: &mut SecretBuf) {
        hex_into(out, &self.0)
    }

    pub(crate) fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A preshared key (32 random bytes).
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    pub fn generate() -> Result<PresharedKey, KeyError> {
        random32().map(PresharedKey)
    }
    pub fn from_base64(text: &str, what: &str) -> Result<PresharedKey, KeyError> {
        decode32(text, what).map(PresharedKey)
    }
    /// For a new peer's client configuration only.
    pub fn expose_base64(&self) -> SecretBuf {
        encode_secret(&self.0)
    }
    pub(crate) fn expose_hex_into(&self, out: &mut SecretBuf) {
        hex_into(out, &self.0)
    }
    pub(crate) fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// A one-way fingerprint that tells whether two preshared keys are equal
    /// without keeping either: what the diff compares.
    pub fn fingerprint(&self) -> [u8; 32] {
        psk_fingerprint(&self.0)
    }
}

/// SHA-256 over a domain tag and the key.
pub fn psk_fingerprint(key: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fwctl-psk-fingerprint\0");
    h.update(key);
    h.finalize().into()
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// What a non-regular file is, for [`KeyError::NotAFile`].
fn kind_of(t: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match () {
        _ if t.is_fifo() => "a FIFO",
        _ if t.is_socket() => "a socket",
        _ if t.is_char_device() => "a character device",
        _ if t.is_block_device() => "a block device",
        _ if t.is_dir() => "a directory",
        _ if t.is_symlink() => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Read a secret key file: it must be a regular file that neither group nor
/// others can access. Returns the text, wiped on drop.
///
/// Opened with `O_NOFOLLOW` (a symbolic link is refused) and `O_NONBLOCK` (opening
/// a FIFO returns at once instead of waiting for a writer — `plan` and `apply`
/// read keys while they hold the state lock), then checked on the open descriptor:
/// a regular file, 0600 or stricter, at most 1 KiB read.
fn read_key_file(path: &Path) -> Result<SecretBuf, KeyError> {
    let io = |what, source| KeyError::Io { path: path.to_path_buf(), what, source };
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    let mut f = OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| match e.raw_os_error() {
        Some(nix::libc::ELOOP) => KeyError::NotAFile { path: path.to_path_buf(), kind: "a symbolic link" },
        _ => io("cannot open key file", e),
    })?;
    let meta = f.metadata().map_err(|e| io("cannot stat key file", e))?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_path_buf(), mode: meta.mode() });
    }
    let mut buf = SecretBuf(Vec::with_capacity(128));
    let mut chunk = [0u8; 128];
    loop {
        let n = f.read(&mut chunk).map_err(|e| io("cannot read key file", e))?;
        if n == 0 {
            break;
        }
        if buf.0.len() + n > 1024 {
            wipe(&mut chunk);
            return Err(KeyError::Format { what: format!("key file {}", path.display()) });
        }
        buf.0.extend_from_slice(&chunk[..n]);
    }
    wipe(&mut chunk);
    Ok(buf)
}

/// Create a new file for secret-bearing data (a client configuration, its QR
/// code): `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600. An existing file or a symlink
/// at `path` is refused, never reused or followed.
pub fn create_secret_file(path: &Path) -> Result<File, KeyError> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path) {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| KeyError::Io { path: path.to_path_buf(), what: "cannot chmod", source: e })?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(KeyError::Exists { path: path.to_path_buf() }),
        Err(e) => Err(KeyError::Io { path: path.to_path_buf(), what: "cannot create", source: e }),
    }
}

/// Create `path` with mode 0600 (never replacing an existing file) and write
/// `text` and a newline into it. Missing parent directories are created 0700.
pub fn create_key_file(path: &Path, text: &SecretBuf) -> Result<(), KeyError> {
    let io = |what, source| KeyError::Io { path: path.to_path_buf(), what, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("cannot create the directory of key file", e))?;
        }
    }
    let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(KeyError::Exists { path: path.to_path_buf() }),
        Err(e) => return Err(io("cannot create key file", e)),
    };
    // The umask cannot widen 0600, but make sure of the mode anyway.
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| io("cannot chmod key file", e))?;
    let mut line = SecretBuf::new();
    line.push_str(text.as_str());
    line.push_str("\n");
    f.write_all(line.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io("cannot write key file", e))
}

/// The private key in `path`; with `create`, a missing file is created (0600)
/// with a new key. Returns the key and whether it was created now.
pub fn load_private_key(path: &Path, create: bool) -> Result<(PrivateKey, bool), KeyError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let key = PrivateKey::generate()?;
            match create_key_file(path, &key.expose_base64()) {
                Ok(()) => return Ok((key, true)),
                // Another fwctl created it meanwhile: use that one.
                Err(KeyError::Exists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        _ => {}
    }
    let text = read_key_file(path)?;
    let key = PrivateKey::from_base64(text.as_str(), &format!("key file {}", path.display()))?;
    Ok((key, false))
}

pub fn load_psk(path: &Path) -> Result<PresharedKey, KeyError> {
    let text = read_key_file(path)?;
    PresharedKey::from_base64(text.as_str(), &format!("preshared key file {}", path.display()))
}

/// The public key of the private key in `path` (which must exist).
pub fn public_key_of_file(path: &Path) -> Result<PublicKey, KeyError> {
    load_private_key(path, false).map(|(k, _)| k.public_key())
}

pub fn public_to_base64(k: &PublicKey) -> String {
    crate::util::base64_encode(&k.0)
}

pub fn public_from_base64(text: &str) -> Option<PublicKey> {
    let v = crate::util::base64_decode(text.trim())?;
    <[u8; 32]>::try_from(v).ok().map(PublicKey)
}

/// Where the secrets a [`crate::vpn::desired::SetPlan`] names (by file path) are
/// read from at the moment they are handed to the tunnel.
pub trait SecretSource {
    fn private_key(&self, path: &str) -> Result<PrivateKey, KeyError>;
    fn psk(&self, path: &str) -> Result<PresharedKey, KeyError>;
}

/// The real key files (never created here: `vpn up` creates the private key
/// file before it plans).
pub struct KeyFiles;

impl SecretSource for KeyFiles {
    fn private_key(&self, path: &str) -> Result<PrivateKey, KeyError> {
        load_private_key(Path::new(path), false).map(|(k, _)| k)
    }
    fn psk(&self, path: &str) -> Result<PresharedKey, KeyError> {
        load_psk(Path::new(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fwctl-keys-{tag}-{}-{}", std::process::id(), crate::sys::netns::random_u64()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let hex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let mut b = [0u8; 32];
        for i in 0..32 {
            b[i] = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let k = PrivateKey::from_bytes(b);
        let p = k.public_key();
        let want = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let got: String = p.0.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn generated_keys_are_clamped_distinct_and_roundtrip() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a.expose_bytes(), b.expose_bytes());
        assert_eq!(a.expose_bytes()[0] & 7, 0);
        assert_eq!(a.expose_bytes()[31] & 0xc0, 0x40);
        let text = a.expose_base64();
        assert_eq!(text.as_str().len(), 44);
        let again = PrivateKey::from_base64(text.as_str(), "test").unwrap();
        assert_eq!(again.public_key(), a.public_key());
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let k = PrivateKey::generate().unwrap();
        let b64 = k.expose_base64().as_str().to_string();
        assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
        let p = PresharedKey::generate().unwrap();
        assert!(!format!("{p:?}").contains(p.expose_base64().as_str()));
        assert!(!format!("{:?}", k.expose_base64()).contains(&b64));
        // A malformed key is not echoed back.
        let bad = format!("{}!", &b64[..43]);
        let e = PrivateKey::from_base64(&bad, "stdin").unwrap_err().to_string();
        assert!(!e.contains(&b64[..40]), "{e}");
    }

    #[test]
    fn key_file_is_created_0600_never_overwritten_and_refused_when_open() {
        let d = tmpdir("file");
        let path = d.join("sub/wg0.key");
        let (k1, created) = load_private_key(&path, true).unwrap();
        assert!(created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        let (k2, created) = load_private_key(&path, true).unwrap();
        assert!(!created);
        assert_eq!(k1.public_key(), k2.public_key());
        assert!(matches!(create_key_file(&path, &k1.expose_base64()), Err(KeyError::Exists { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_private_key(&path, true).unwrap_err();
        assert!(matches!(e, KeyError::Permissions { .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key\n").unwrap();
        let e = load_private_key(&path, true).unwrap_err().to_string();
        assert!(e.contains("does not hold a WireGuard key") && !e.contains("not a key\n"), "{e}");
        assert!(matches!(load_private_key(&d.join("missing.key"), false), Err(KeyError::Io { .. })));
        fs::remove_dir_all(&d).unwrap();
    }

    /// Run `f` on another thread; fail (instead of hanging the suite) if it blocks.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).expect("reading the key file blocked")
    }

    #[test]
    fn key_file_that_is_a_fifo_symlink_or_device_is_refused_without_blocking() {
        let d = tmpdir("special");
        let fifo = d.join("wg0.key");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let p = fifo.clone();
        let e = within_5s(move || load_private_key(&p, true).map(|_| ()).unwrap_err());
        assert!(matches!(&e, KeyError::NotAFile { kind: "a FIFO", .. }), "{e}");
        assert_eq!(e.to_string(), format!("key file {} is a FIFO, not a regular file", fifo.display()));
        let p = fifo.clone();
        assert!(matches!(within_5s(move || load_psk(&p).map(|_| ()).unwrap_err()), KeyError::NotAFile { kind: "a FIFO", .. }));
        // A symbolic link is refused even when it leads to a good key file.
        let real = d.join("real.key");
        create_key_file(&real, &PrivateKey::generate().unwrap().expose_base64()).unwrap();
        let link = d.join("link.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(load_private_key(&link, true), Err(KeyError::NotAFile { kind: "a symbolic link", .. })));
        let zero = d.join("zero.key");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(within_5s(move || load_psk(&zero).map(|_| ()).unwrap_err()), KeyError::NotAFile { kind: "a symbolic link", .. }));
        let e = within_5s(|| load_psk(Path::new("/dev/zero")).map(|_| ()).unwrap_err());
        assert!(matches!(e, KeyError::NotAFile { kind: "a character device", .. }), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
