//! Diagnostics: what went wrong, and where.
//!
//! Input: byte spans into policy files registered in a [`SourceMap`].
//! Output: [`Diagnostic`] values, rendered rustc-style (`file:line:col`, the source
//! line, a caret under the offending text) or as JSON for scripting.
//! Policy text (names, values, source lines) and file names are shown with every
//! terminal-active character escaped ([`crate::text::escape_terminal`]): a policy in
//! a pull request must not be able to clear the reviewer's screen or forge an "ok".
//! Must not: print anything itself, or decide exit codes (the CLI does both).

use crate::text::{escape_terminal, is_terminal_dangerous};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, range: std::ops::Range<usize>) -> Span {
        Span { file, start: range.start, end: range.end }
    }
}

/// All policy files read in one run, with their text, so spans can be shown.
#[derive(Default, Debug)]
pub struct SourceMap {
    files: Vec<(PathBuf, String)>,
    /// Byte offset of each line start, per file (positions are looked up often).
    lines: Vec<Vec<usize>>,
}

/// A resolved position: 1-based line and column (columns count characters).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl SourceMap {
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        self.lines.push(starts);
        self.files.push((path, text));
        FileId(self.files.len() - 1)
    }
    pub fn path(&self, f: FileId) -> &Path {
        &self.files[f.0].0
    }
    pub fn text(&self, f: FileId) -> &str {
        &self.files[f.0].1
    }
    pub fn files(&self) -> impl Iterator<Item = (FileId, &Path, &str)> {
        self.files.iter().enumerate().map(|(i, (p, t))| (FileId(i), p.as_path(), t.as_str()))
    }
    /// Line (1-based), column (1-based, in characters) of a byte offset.
    pub fn line_col(&self, f: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(f);
        let offset = offset.min(text.len());
        let starts = &self.lines[f.0];
        let line = starts.partition_point(|&s| s <= offset);
        let line_start = starts[line - 1];
        // Counted up to `offset` without slicing there: a span that is not on a
        // character boundary must not panic.
        let col = text[line_start..].char_indices().take_while(|(i, _)| line_start + i < offset).count() + 1;
        (line, col)
    }
    /// The text of line `line` (1-based), without its line ending.
    pub fn line_text(&self, f: FileId, line: usize) -> &str {
        let text = self.text(f);
        let starts = &self.lines[f.0 as usize];
        let Some(&start) = starts.get(line.wrapping_sub(1)) else { return "" };
        let end = starts.get(line).map_or(text.len(), |&e| e - 1);
        text[start..end].strip_suffix('\r').unwrap_or(&text[start..end])
    }
    pub fn position(&self, span: Span) -> Position {
        let (line, col) = self.line_col(span.file, span.start);
        Position { file: self.path(span.file).display().to_string(), line, col }
    }
    /// `file:line:col`
    pub fn locate(&self, span: Span) -> String {
        let p = self.position(span);
        format!("{}:{}:{}", p.file, p.line, p.col)
    }
    /// `file:line`
    pub fn locate_line(&self, span: Span) -> String {
        let p = self.position(span);
        format!("{}:{}", p.file, p.line)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding: a kind (stable `code`), a message, where, and what else helps.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub span: Option<Span>,
    /// A file the problem is about when there is no span in it (the loader refusing
    /// a symbolic link, a FIFO, a file too large): shown as `--> path`.
    pub path: Option<PathBuf>,
    pub label: String,
    /// Other places that matter (e.g. the first definition of a duplicate name).
    pub related: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            path: None,
            label: String::new(),
            related: vec![],
            notes: vec![],
        }
    }
    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message) }
    }
    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.span = Some(span);
        self.label = label.into();
        self
    }
    /// Locate a diagnostic at a whole file (no line: the file could not be read).
    pub fn in_file(mut self, path: impl Into<PathBuf>) -> Diagnostic {
        self.path = Some(path.into());
        self
    }
    pub fn also(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.related.push((span, label.into()));
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Sort diagnostics by file and position so output is stable.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by_key(|d| (d.span.map(|s| (s.file, s.start)), d.severity, d.message.clone()));
}

/// Colours for terminal output; `Style::plain()` when NO_COLOR is set or not a tty.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn plain() -> Style {
        Style { color: false }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Render one diagnostic like rustc does.
pub fn render(sm: &SourceMap, d: &Diagnostic, style: Style) -> String {
    let mut out = String::new();
    let (word, colour) = match d.severity {
        Severity::Error => ("error", "1;31"),
        Severity::Warning => ("warning", "1;33"),
    };
    let _ = writeln!(out, "{}: {}", style.paint(colour, &format!("{word}[{}]", d.code)), escape_terminal(&d.message));
    if let Some(span) = d.span {
        excerpt(&mut out, sm, span, &d.label, '^', colour, style);
    } else if let Some(path) = &d.path {
        let _ = writeln!(out, " --> {}", escape_terminal(&path.display().to_string()));
    }
    for (span, label) in &d.related {
        excerpt(&mut out, sm, *span, label, '-', "1;34", style);
    }
    for n in &d.notes {
        let _ = writeln!(out, "   = note: {}", escape_terminal(n));
    }
    out
}

/// How a piece of a source line is shown: tabs as four spaces (so the caret line
/// lines up), every other terminal-active character escaped.
fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if is_terminal_dangerous(c) => out.push_str(&escape_terminal(c.encode_utf8(&mut [0; 4]))),
            c => out.push(c),
        }
    }
    out
}

fn excerpt(out: &mut String, sm: &SourceMap, span: Span, label: &str, mark: char, colour: &str, style: Style) {
    let (line, col) = sm.line_col(span.file, span.start);
    let text = sm.text(span.file);
    let src_line = sm.line_text(span.file, line);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let _ = writeln!(out, "{pad}--> {}:{line}:{col}", escape_terminal(&sm.path(span.file).display().to_string()));
    let _ = writeln!(out, "{pad} |");
    // The caret is placed under the line as shown (escapes and tabs widen it);
    // `col` above stays the position in the file.
    let before: String = src_line.chars().take(col - 1).collect();
    let rest: String = src_line.chars().skip(col - 1).collect();
    let span_text = text.get(span.start.min(text.len())..span.end.min(text.len())).unwrap_or("").split('\n').next().unwrap_or("");
    let under: String = rest.chars().take(span_text.chars().count()).collect();
    let (before, rest, under) = (shown(&before), shown(&rest), shown(&under));
    let _ = writeln!(out, "{line} | {before}{rest}");
    let width = under.chars().count().clamp(1, rest.chars().count().max(1));
    let marks: String = std::iter::repeat_n(mark, width).collect();
    let label = if label.is_empty() { String::new() } else { format!(" {}", escape_terminal(label)) };
    let _ = writeln!(out, "{pad} | {}{}", " ".repeat(before.chars().count()), style.paint(colour, &format!("{marks}{label}")));
}

/// Render a whole list, followed by a one-line summary.
pub fn render_all(sm: &SourceMap, diags: &[Diagnostic], style: Style) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&render(sm, d, style));
        out.push('\n');
    }
    out
}

#[derive(serde::Serialize)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub label: String,
    pub related: Vec<JsonRelated>,
    pub notes: Vec<String>,
}

#[derive(serde::Serialize)]
pub struct JsonRelated {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub label: String,
}

pub fn to_json(sm: &SourceMap, d: &Diagnostic) -> JsonDiagnostic {
    let pos = d.span.map(|s| sm.position(s));
    JsonDiagnostic {
        severity: d.severity,
        code: d.code,
        message: d.message.clone(),
        file: pos.as_ref().map(|p| p.file.clone()).or_else(|| d.path.as_ref().map(|p| p.display().to_string())),
        line: pos.as_ref().map(|p| p.line),
        col: pos.as_ref().map(|p| p.col),
        label: d.label.clone(),
        related: d
            .related
            .iter()
            .map(|(s, l)| {
                let p = sm.position(*s);
                JsonRelated { file: p.file, line: p.line, col: p.col, label: l.clone() }
            })
            .collect(),
        notes: d.notes.clone(),
    }
}

/// The closest candidate by edit distance, if close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = levenshtein(word, c);
        let limit = (word.chars().count().max(c.chars().count()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut prev2: Vec<usize> = prev.clone();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            // A swap of neighbouring letters ("tpc" for "tcp") is one edit.
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let mut sm = SourceMap::default();
        let f = sm.add("a.toml".into(), "x = 1\nnamé = \"b\"\n".into());
        let off = "x = 1\nnamé = ".len();
        assert_eq!(sm.line_col(f, off), (2, 8));
    }

    #[test]
    fn render_points_at_the_span() {
        let mut sm = SourceMap::default();
        let f = sm.add("p.toml".into(), "[[rules]]\nalow = [\"ssh\"]\n".into());
        let d = Diagnostic::error("unknown-key", "unknown key `alow`").at(Span::new(f, 10..14), "did you mean `allow`?");
        let text = render(&sm, &d, Style::plain());
        assert_eq!(
            text,
            "error[unknown-key]: unknown key `alow`\n --> p.toml:2:1\n  |\n2 | alow = [\"ssh\"]\n  | ^^^^ did you mean `allow`?\n"
        );
    }

    #[test]
    fn render_escapes_policy_text_and_keeps_the_caret_under_it() {
        let mut sm = SourceMap::default();
        // A raw ESC before the span, a tab, and a bidi override inside the span.
        let src = "x = 1\n\tname = \"\x1b[2J\u{202e}ok\" # \u{9b}\n";
        let f = sm.add("p\x1b[31m.toml".into(), src.into());
        let start = src.find('\u{202e}').unwrap();
        let end = start + "\u{202e}ok".len();
        let d = Diagnostic::error("invalid-name", "name `\x1b[2J\u{202e}ok\nok: fake` here")
            .at(Span::new(f, start..end), "bad\x07")
            .note("see \x1b]0;title\x07");
        let text = render(&sm, &d, Style::plain());
        assert_eq!(
            text,
            concat!(
                "error[invalid-name]: name `\\u{1b}[2J\\u{202e}ok\\nok: fake` here\n",
                " --> p\\u{1b}[31m.toml:2:14\n",
                "  |\n",
                "2 |     name = \"\\u{1b}[2J\\u{202e}ok\" # \\u{9b}\n",
                "  |                      ^^^^^^^^^^ bad\\u{7}\n",
                "   = note: see \\u{1b}]0;title\\u{7}\n",
            )
        );
        assert!(!text.chars().any(|c| c != '\n' && crate::text::is_terminal_dangerous(c)), "{text:?}");
    }

    #[test]
    fn a_file_level_diagnostic_names_the_path() {
        let sm = SourceMap::default();
        let d = Diagnostic::error("not-a-file", "p/f.toml is a FIFO, not a regular file").in_file("p/f.toml");
        assert_eq!(render(&sm, &d, Style::plain()), "error[not-a-file]: p/f.toml is a FIFO, not a regular file\n --> p/f.toml\n");
        let j = to_json(&sm, &d);
        assert_eq!((j.file.as_deref(), j.line, j.col), (Some("p/f.toml"), None, None));
    }

    #[test]
    fn a_span_inside_a_character_does_not_panic() {
        let mut sm = SourceMap::default();
        let f = sm.add("a.toml".into(), "é = 1\n".into());
        assert_eq!(sm.line_col(f, 1), (1, 2));
        let d = Diagnostic::error("x", "y").at(Span::new(f, 1..3), "z");
        let _ = render(&sm, &d, Style::plain());
    }

    #[test]
    fn suggestions_are_close_matches_only() {
        assert_eq!(suggest("alow", ["allow", "deny"]), Some("allow"));
        assert_eq!(suggest("xyz", ["allow", "deny"]), None);
        assert_eq!(suggest("tpc", ["tcp", "udp"]), Some("tcp"));
        assert_eq!(suggest("sefl", ["self", "any"]), Some("self"));
    }
}
