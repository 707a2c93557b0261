//! `fwctl vpn peer add` with hostile flags changes nothing: an endpoint or DNS
//! server with an embedded newline (which would put `PostUp = …` into the
//! client's wg-quick file), and QR image paths that exist or are symlinks (the
//! image holds the peer's private key) are refused before the policy is edited
//! or any key is made.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fwctl-peer-add-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A copy of the reference policy whose private keys live in `dir/keys`.
fn policy(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/carif-oref");
    let dst = dir.join("policy");
    std::fs::create_dir_all(dst.join("rules")).expect("policy dir");
    for sub in ["", "rules"] {
        for e in std::fs::read_dir(src.join(sub)).expect("read policy") {
            let e = e.expect("entry");
            if e.file_type().expect("type").is_file() {
                let text = std::fs::read_to_string(e.path()).expect("read");
                let text = text.replace("/etc/fwctl/keys/", &format!("{}/", dir.join("keys").display()));
                std::fs::write(dst.join(sub).join(e.file_name()), text).expect("write");
            }
        }
    }
    dst
}

fn vpn_file(p: &Path) -> PathBuf {
    p.join("vpn.toml")
}

fn peer_add(policy: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fwctl"))
        .args(["vpn", "peer", "add", "bob", "--vpn", "wg0", "--policy", policy.to_str().unwrap()])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run fwctl")
}

#[test]
fn endpoint_and_dns_with_config_lines_are_refused() {
    let dir = tmp("inject");
    let p = policy(&dir);
    let before = std::fs::read(vpn_file(&p)).unwrap();
    for extra in [
        &["--endpoint", "198.51.100.7:51820\nPostUp = touch /tmp/owned"][..],
        &["--endpoint", "vpn.example.org:51820 PostUp"],
        &["--dns", "192.0.2.53\nPostUp = touch /tmp/owned"],
        &["--dns", "192.0.2.53,not-an-address"],
    ] {
        let o = peer_add(&p, extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{extra:?}: a configuration was printed");
        assert_eq!(std::fs::read(vpn_file(&p)).unwrap(), before, "{extra:?}: the policy was edited");
        assert!(!dir.join("keys").exists(), "{extra:?}: a key was made");
    }
    // Well-formed values pass.
    let o = peer_add(&p, &["--endpoint", "[2001:db8::1]:51820", "--dns", "192.0.2.53,2001:db8::53"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qr_images_are_new_0600_files_never_existing_files_or_symlinks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("qr");
    let p = policy(&dir);
    let before = std::fs::read(vpn_file(&p)).unwrap();
    let existing = dir.join("existing.png");
    std::fs::write(&existing, "old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let target = dir.join("target.svg");
    std::fs::write(&target, "old").unwrap();
    let link = dir.join("link.svg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for extra in [["--png", existing.to_str().unwrap()], ["--svg", link.to_str().unwrap()]] {
        let o = peer_add(&p, &extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{extra:?}: a configuration was printed");
        assert_eq!(std::fs::read(vpn_file(&p)).unwrap(), before, "{extra:?}: the policy was edited");
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"old");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    let fresh = dir.join("fresh.png");
    let o = peer_add(&p, &["--png", fresh.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = std::fs::symlink_metadata(&fresh).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read(&fresh).unwrap().starts_with(b"\x89PNG"));
    let _ = std::fs::remove_dir_all(&dir);
}
