//! Untrusted text on its way to a terminal or a length-limited kernel string.
//!
//! Input: text that came from a policy file, a file name or a flag. Output: the same
//! text with every character a terminal would act on written as a visible escape
//! ([`escape_terminal`]), or cut to a byte budget on a character boundary
//! ([`truncate_bytes`]). Must not: do I/O, or change text that is already harmless.

use std::borrow::Cow;

/// A character that a terminal (or a reader) does not show as itself: C0 controls
/// (tab and newline included: a newline lets text forge a line of its own), DEL, C1
/// controls (U+0080..U+009F; `U+009B` is CSI on some terminals), the bidirectional
/// overrides, embeddings and isolates that reorder what is shown (Trojan Source),
/// and the Unicode line and paragraph separators.
pub fn is_terminal_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `s` with every [`is_terminal_dangerous`] character written as a Rust-style escape
/// (`\n`, `\t`, `\r`, `\u{1b}`), so that policy text shown in a terminal cannot move
/// the cursor, clear the screen, recolour, reorder or forge output. A backslash is
/// left alone: the escapes only mark what was dangerous, they are not meant to be
/// parsed back.
pub fn escape_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_terminal_dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_terminal_dangerous(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character
/// boundary (never splits a multibyte character, so it never panics).
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_c0_del_c1_and_bidi_but_keeps_other_text() {
        assert_eq!(escape_terminal("plain café → ok"), "plain café → ok");
        assert!(matches!(escape_terminal("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_terminal("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape_terminal("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape_terminal("\x7f\u{9b}"), "\\u{7f}\\u{9b}");
        assert_eq!(escape_terminal("ab\u{202e}cd\u{2066}"), "ab\\u{202e}cd\\u{2066}");
        assert_eq!(escape_terminal("l\u{2028}p"), "l\\u{2028}p");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate_bytes("abc", 5), "abc");
        assert_eq!(truncate_bytes("abc", 2), "ab");
        // 'é' is two bytes: a cut in its middle falls back before it.
        assert_eq!(truncate_bytes("aé", 2), "a");
        assert_eq!(truncate_bytes("aé", 3), "aé");
        // A four-byte character at every cut position.
        let s = "x😀y";
        for n in 0..=s.len() {
            let t = truncate_bytes(s, n);
            assert!(t.len() <= n && s.starts_with(t));
        }
        assert_eq!(truncate_bytes("😀", 3), "");
    }
}
