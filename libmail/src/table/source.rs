//! The text source of postmap tables (and of `texthash:`): `key value`
//! lines.
//!
//! The line rules are main.cf's ([`crate::config::lines`]): `#` comment
//! lines and blank lines are skipped, a line starting with whitespace
//! continues the previous one. Each logical line is split by
//! [`parse_map_line`]: a key (the first word, where `"quoted text"` may
//! hold blanks and `\` escapes the next character, all kept as written)
//! and a value (the rest, trimmed). A line with no value, or an unbalanced
//! quote, is reported and skipped. postmap uses the same rule on its
//! streamed input.
//!
//! Case folding and duplicate handling belong to the caller (postmap `-f`,
//! `-r`, `-w`); [`first_wins`] applies the default rule.

use crate::config::lines::{logical_lines, LineProblem};
use crate::config::{Diagnostic, Severity};

/// One `key value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parse table source text. `path` is used in the diagnostics only.
pub fn parse_source(text: &str, path: &str) -> (Vec<SourceEntry>, Vec<Diagnostic>) {
    let (lines, problems) = logical_lines(text);
    let mut diags: Vec<Diagnostic> = problems
        .into_iter()
        .map(|p| match p {
            LineProblem::LeadingWhitespace { line, .. } => Diagnostic::new(
                Severity::Warning,
                path,
                Some(line),
                "logical line must not start with whitespace -- ignoring this line".into(),
            ),
            LineProblem::TooLong { line } => Diagnostic::new(
                Severity::Warning,
                path,
                Some(line),
                "line too long -- ignoring this line".into(),
            ),
        })
        .collect();
    let mut entries = Vec::with_capacity(lines.len());
    for ll in lines {
        match parse_map_line(&ll.text) {
            Parsed::Entry(key, value) => entries.push(SourceEntry {
                key,
                value,
                line: ll.line,
            }),
            Parsed::Skip(why) => {
                diags.push(Diagnostic::new(Severity::Warning, path, Some(ll.line), why))
            }
        }
    }
    (entries, diags)
}

/// One logical line of a source, already split: what the line parsers
/// return.
pub enum Parsed {
    Entry(String, String),
    /// A warning (worded without the `FILE, line N: ` prefix); the line is
    /// skipped.
    Skip(String),
}

/// postmap's line rule (Postfix 3.7): the key is the first word, where a
/// word may contain `"quoted strings"` with whitespace and `\`-escaped
/// characters (kept as written); the value is the rest, trimmed.
pub fn parse_map_line(text: &str) -> Parsed {
    let t = text.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => quoted = !quoted,
            c if !quoted && is_space(c) => break,
            _ => {}
        }
        i += 1;
    }
    let i = i.min(b.len());
    if quoted {
        return Parsed::Skip(format!("unbalanced '\"' in '{t}' -- ignoring this line"));
    }
    // `i` is at an ASCII byte or the end, so a char boundary.
    let (key, rest) = t.split_at(i);
    let value = rest.trim_matches(|c: char| c.is_ascii() && is_space(c as u8));
    if key.is_empty() || value.is_empty() {
        return Parsed::Skip("expected format: key whitespace value".into());
    }
    Parsed::Entry(key.to_string(), value.to_string())
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Fold keys to lower case unless `keep_case`, and drop later duplicates
/// (the first entry wins, as in Postfix), reporting each as
/// `duplicate entry: "key"`.
pub fn first_wins(
    entries: Vec<SourceEntry>,
    keep_case: bool,
    path: &str,
) -> (Vec<SourceEntry>, Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut out = Vec::with_capacity(entries.len());
    let mut diags = Vec::new();
    for mut e in entries {
        if !keep_case {
            e.key = e.key.to_lowercase();
        }
        if seen.insert(e.key.clone()) {
            out.push(e);
        } else {
            diags.push(Diagnostic::new(
                Severity::Warning,
                path,
                Some(e.line),
                format!("duplicate entry: \"{}\"", e.key),
            ));
        }
    }
    (out, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_comments_continuations() {
        let (e, d) = parse_source(
            "# c\nKey1 Val One\n\"quoted key\" v2\nnovalue\nkey1 dup\n  cont\nk3\tv3  \n",
            "src",
        );
        let kv: Vec<(&str, &str, usize)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("Key1", "Val One", 2),
                ("\"quoted key\"", "v2", 3),
                ("key1", "dup  cont", 5),
                ("k3", "v3", 7)
            ]
        );
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "warning: src, line 4: expected format: key whitespace value"
        );
    }

    #[test]
    fn first_entry_wins_after_folding() {
        let (e, _) = parse_source("Key1 a\nkey1 b\nKEY2 c\n", "src");
        let (e, d) = first_wins(e, false, "src");
        assert_eq!(
            e.iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect::<Vec<_>>(),
            vec![("key1", "a"), ("key2", "c")]
        );
        assert_eq!(
            d[0].to_string(),
            "warning: src, line 2: duplicate entry: \"key1\""
        );
        let (e, _) = parse_source("Key1 a\nkey1 b\n", "src");
        let (e, d) = first_wins(e, true, "src");
        assert_eq!(e.len(), 2);
        assert!(d.is_empty());
    }
}
