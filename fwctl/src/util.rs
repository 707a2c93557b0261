//! Small pure helpers with no better home: base64 (WireGuard keys), hashing,
//! escaping text for a terminal.
//!
//! Must not: do I/O.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if i >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = (n << 6) | u32::from(v);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text from a policy, a flag or a file made safe to print on one line of a
/// terminal: every control character (C0 including newline and tab, DEL, C1)
/// is written as `\xNN`, a bidirectional control as `\u{NNNN}`
/// ([`crate::text::is_terminal_dangerous`]), so that nothing can move the cursor, reorder,
/// recolour, retitle the window or forge a line.
pub fn escape_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, false)
}

/// [`escape_terminal`] for multi-line output: newlines are kept.
pub fn escape_terminal_lines(s: &str) -> std::borrow::Cow<'_, str> {
    escape_with(s, true)
}

fn escape_with(s: &str, keep_newline: bool) -> std::borrow::Cow<'_, str> {
    // The same characters the diagnostics escape (crate::text), bidi included.
    let bad = |c: char| crate::text::is_terminal_dangerous(c) && !(keep_newline && c == '\n');
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if bad(c) && u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_cannot_reach_the_terminal() {
        assert_eq!(escape_terminal("plain text → ünïcode"), "plain text → ünïcode");
        assert_eq!(escape_terminal("ok\r#9 forged by root\x1b[2K"), "ok\\x0d#9 forged by root\\x1b[2K");
        assert_eq!(escape_terminal("a\nb\tc\u{7f}\u{9b}"), "a\\x0ab\\x09c\\x7f\\x9b");
        assert_eq!(escape_terminal_lines("line 1\nline\x1b2\n"), "line 1\nline\\x1b2\n");
        // Bidirectional controls reorder what is shown (Trojan Source): escaped too.
        assert_eq!(escape_terminal("web\u{202e}txt"), "web\\u{202e}txt");
        for s in ["\u{1b}]0;title\u{7}", "\r\n", "x\u{85}y"] {
            assert!(!escape_terminal(s).chars().any(|c| c.is_control()), "{s:?}");
        }
    }

    #[test]
    fn base64_roundtrip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"fwctl"), "ZndjdGw=");
        assert!(base64_decode("not base64!").is_none());
    }
}
