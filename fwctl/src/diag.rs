//! Diagnostics: what went wrong, and where.
//!
//! Input: byte spans into policy files registered in a [`SourceMap`].
//! Output: [`Diagnostic`] values, rendered rustc-style (`file:line:col`, the source
//! line, a caret under the offending text) or as JSON for scripting.
//! Must not: print anything itself, or decide exit codes (the CLI does both).

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
        let col = text[line_start..offset].chars().count() + 1;
        (line, col)
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
    let _ = writeln!(out, "{}: {}", style.paint(colour, &format!("{word}[{}]", d.code)), d.message);
    if let Some(span) = d.span {
        excerpt(&mut out, sm, span, &d.label, '^', colour, style);
    }
    for (span, label) in &d.related {
        excerpt(&mut out, sm, *span, label, '-', "1;34", style);
    }
    for n in &d.notes {
        let _ = writeln!(out, "   = note: {n}");
    }
    out
}

fn excerpt(out: &mut String, sm: &SourceMap, span: Span, label: &str, mark: char, colour: &str, style: Style) {
    let (line, col) = sm.line_col(span.file, span.start);
    let text = sm.text(span.file);
    let src_line = text.lines().nth(line - 1).unwrap_or("");
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let _ = writeln!(out, "{pad}--> {}:{line}:{col}", sm.path(span.file).display());
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{line} | {src_line}");
    let line_chars = src_line.chars().count();
    let span_chars = text[span.start.min(text.len())..span.end.min(text.len())]
        .split('\n')
        .next()
        .unwrap_or("")
        .chars()
        .count();
    let width = span_chars.clamp(1, line_chars.saturating_sub(col - 1).max(1));
    let marks: String = std::iter::repeat_n(mark, width).collect();
    let label = if label.is_empty() { String::new() } else { format!(" {label}") };
    let _ = writeln!(out, "{pad} | {}{}", " ".repeat(col - 1), style.paint(colour, &format!("{marks}{label}")));
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
        file: pos.as_ref().map(|p| p.file.clone()),
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
    fn suggestions_are_close_matches_only() {
        assert_eq!(suggest("alow", ["allow", "deny"]), Some("allow"));
        assert_eq!(suggest("xyz", ["allow", "deny"]), None);
        assert_eq!(suggest("tpc", ["tcp", "udp"]), Some("tcp"));
        assert_eq!(suggest("sefl", ["self", "any"]), Some("self"));
    }
}
