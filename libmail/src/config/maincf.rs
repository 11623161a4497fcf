//! main.cf: `name = value` entries with the line each came from.
//!
//! A logical line (see [`super::lines`]) is `name = value`: the name is one
//! word before the first `=`, the value everything after it, with the
//! whitespace around both trimmed (inner whitespace is kept; `postconf`
//! normalises it only for display). The last definition of a name wins and
//! the earlier one is reported, like Postfix. No expansion happens here.

use std::collections::HashMap;

use super::lines::{logical_lines, LineProblem};
use super::{Diagnostic, Severity};

/// Largest main.cf read (bytes). Real files are a few KiB.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// The parsed main.cf: every entry in file order, and which one is in force
/// for each name.
#[derive(Debug, Clone, Default)]
pub struct MainCf {
    pub path: String,
    pub entries: Vec<Entry>,
    current: HashMap<String, usize>,
}

impl MainCf {
    /// Parse main.cf text. Lines that cannot be parsed give `Error`
    /// diagnostics and are skipped, so one run reports every problem.
    pub fn parse(text: &str, path: &str) -> (MainCf, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let (lines, problems) = logical_lines(text);
        for p in problems {
            diags.push(match p {
                LineProblem::LeadingWhitespace { text, line } => Diagnostic::new(
                    Severity::Warning,
                    path,
                    Some(line),
                    format!(
                        "logical line must not start with whitespace: \"{}\"",
                        abbreviate(&text, 30)
                    ),
                )
                .without_postfix_line(),
                LineProblem::TooLong { line } => Diagnostic::new(
                    Severity::Error,
                    path,
                    Some(line),
                    format!(
                        "logical line longer than {} bytes",
                        super::lines::MAX_LOGICAL_LINE
                    ),
                ),
            });
        }
        let mut cf = MainCf {
            path: path.to_string(),
            ..Default::default()
        };
        for ll in lines {
            match split_name_value(&ll.text) {
                Ok((name, value)) => {
                    if let Some(&old) = cf.current.get(name) {
                        diags.push(Diagnostic::new(
                            Severity::Warning,
                            path,
                            Some(ll.line),
                            format!(
                                "overriding earlier entry: {}={}",
                                name, cf.entries[old].value
                            ),
                        ));
                    }
                    cf.current.insert(name.to_string(), cf.entries.len());
                    cf.entries.push(Entry {
                        name: name.to_string(),
                        value: value.to_string(),
                        line: ll.line,
                    });
                }
                Err(msg) => diags.push(Diagnostic::new(Severity::Error, path, Some(ll.line), msg)),
            }
        }
        (cf, diags)
    }

    /// Read and parse `DIR/main.cf`. A missing file is an empty main.cf (as
    /// with Postfix's built-in defaults) but is reported.
    pub fn load(config_dir: &str) -> (MainCf, Vec<Diagnostic>) {
        let path = format!("{config_dir}/main.cf");
        match read_config_file(&path) {
            Ok(text) => MainCf::parse(&text, &path),
            Err(e) => (
                MainCf {
                    path: path.clone(),
                    ..Default::default()
                },
                vec![Diagnostic::new(
                    Severity::Error,
                    &path,
                    None,
                    format!("open {path}: {e}"),
                )],
            ),
        }
    }

    /// The entry in force for `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.current.get(name).map(|&i| &self.entries[i])
    }

    /// The entries in force, one per name, in file order of their last
    /// definition.
    pub fn effective(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, e)| self.current.get(&e.name) == Some(i))
            .map(|(_, e)| e)
    }

    /// Set `name` in memory (as `postconf -o` or `-c` do); not written.
    pub fn set(&mut self, name: &str, value: &str) {
        self.current.insert(name.to_string(), self.entries.len());
        self.entries.push(Entry {
            name: name.to_string(),
            value: value.to_string(),
            line: 0,
        });
    }
}

/// Read a configuration file with a size limit, as UTF-8 (invalid bytes
/// become U+FFFD rather than failing: Postfix treats the file as bytes).
pub fn read_config_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_SIZE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(std::io::Error::other(format!(
            "file larger than {MAX_FILE_SIZE} bytes"
        )));
    }
    Ok(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The first `max` characters of `text` and `...` when it is longer, as
/// Postfix quotes long input in warnings.
pub fn abbreviate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Split `name = value`. Errors are worded like Postfix's, quoting the
/// text.
pub fn split_name_value(text: &str) -> Result<(&str, &str), String> {
    split_name_value_bare(text).map_err(|why| format!("{why}: \"{text}\""))
}

/// Split `name = value` (blanks around both are dropped); the error is
/// Postfix's bare reason (`missing attribute name`, `missing '=' after
/// attribute name`), for callers that word the rest themselves (master.cf
/// `-o` options).
pub fn split_name_value_bare(text: &str) -> Result<(&str, &str), &'static str> {
    let blank = |c: char| c.is_ascii_whitespace() || c == '\x0b';
    let t = text.trim_start_matches(blank);
    let name_end = t.find(|c: char| c == '=' || blank(c)).unwrap_or(t.len());
    let name = &t[..name_end];
    if name.is_empty() {
        return Err("missing attribute name");
    }
    let Some(value) = t[name_end..].trim_start_matches(blank).strip_prefix('=') else {
        return Err("missing '=' after attribute name");
    };
    Ok((name, value.trim_matches(blank)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_entries_and_override() {
        let (cf, d) = MainCf::parse("a = 1\nb=2\n  x\na =  3 \n", "main.cf");
        assert_eq!(cf.get("a").unwrap().value, "3");
        assert_eq!(cf.get("a").unwrap().line, 4);
        assert_eq!(cf.get("b").unwrap().value, "2  x");
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].to_string(),
            "warning: main.cf, line 4: overriding earlier entry: a=1"
        );
        let eff: Vec<_> = cf.effective().map(|e| e.name.as_str()).collect();
        assert_eq!(eff, vec!["b", "a"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let (cf, d) = MainCf::parse("ok = 1\nfoo bar = 1\n=x\nlast = 2\n", "/etc/x/main.cf");
        assert_eq!(cf.entries.len(), 2);
        let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                "fatal: /etc/x/main.cf, line 2: missing '=' after attribute name: \"foo bar = 1\"",
                "fatal: /etc/x/main.cf, line 3: missing attribute name: \"=x\"",
            ]
        );
    }

    #[test]
    fn value_may_contain_equals_and_hashes() {
        let (cf, _) = MainCf::parse("a==b\nbanner = x # y\n", "m");
        assert_eq!(cf.get("a").unwrap().value, "=b");
        assert_eq!(cf.get("banner").unwrap().value, "x # y");
    }

    #[test]
    fn empty_value() {
        let (cf, d) = MainCf::parse("relayhost =\n", "m");
        assert!(d.is_empty());
        assert_eq!(cf.get("relayhost").unwrap().value, "");
    }
}
