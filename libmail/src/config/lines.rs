//! Logical lines of Postfix-style configuration files (main.cf, master.cf).
//!
//! Both files share one reading rule, the one Postfix's `readlline` applies:
//!
//! * a line whose first non-blank character is `#` is a comment and is
//!   skipped, even in the middle of a continued value;
//! * a blank (or all-whitespace) line is skipped and does not end a
//!   continuation;
//! * a line that starts with whitespace continues the previous logical line:
//!   the newline goes, the leading whitespace stays;
//! * a logical line that would start with whitespace (nothing before it to
//!   continue) is reported and its text skipped;
//! * there are no trailing comments: `x = a # b` has the value `a # b`.
//!
//! A logical line remembers the number of its first physical line, which is
//! the number every error message names.

/// Longest logical line accepted (bytes). Postfix has no fixed limit here,
/// but an unbounded line is an unbounded allocation; 1 MiB is far beyond any
/// real configuration and still harmless.
pub const MAX_LOGICAL_LINE: usize = 1 << 20;

/// One logical line: the text after joining continuations, and the number
/// of the physical line it started on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLine {
    pub text: String,
    pub line: usize,
}

/// Something wrong with the shape of the file, as opposed to its meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// Text before any logical line that starts with whitespace; Postfix
    /// warns `logical line must not start with whitespace` and skips it.
    LeadingWhitespace { line: usize, text: String },
    /// A logical line longer than [`MAX_LOGICAL_LINE`]; it is skipped.
    TooLong { line: usize },
}

/// Split `text` into logical lines. Problems are returned beside the lines
/// so each caller words them in its own program's voice.
pub fn logical_lines(text: &str) -> (Vec<LogicalLine>, Vec<LineProblem>) {
    let mut out: Vec<LogicalLine> = Vec::new();
    let mut problems = Vec::new();
    // The logical line being built, and whether it is an orphan
    // continuation (text starting with whitespace at the very beginning).
    let mut cur: Option<(LogicalLine, bool)> = None;
    let mut too_long = false;

    let finish = |cur: &mut Option<(LogicalLine, bool)>,
                  out: &mut Vec<LogicalLine>,
                  problems: &mut Vec<LineProblem>,
                  too_long: &mut bool| {
        if let Some((ll, orphan)) = cur.take() {
            if *too_long {
                problems.push(LineProblem::TooLong { line: ll.line });
            } else if orphan {
                problems.push(LineProblem::LeadingWhitespace {
                    line: ll.line,
                    text: ll.text,
                });
            } else {
                out.push(ll);
            }
        }
        *too_long = false;
    };

    for (idx, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let continues = raw.starts_with([' ', '\t']);
        if continues {
            match cur.as_mut() {
                Some((ll, _)) => {
                    if ll.text.len() + raw.len() > MAX_LOGICAL_LINE {
                        too_long = true;
                    } else {
                        ll.text.push_str(raw);
                    }
                }
                None => {
                    cur = Some((
                        LogicalLine {
                            text: raw.to_string(),
                            line: idx + 1,
                        },
                        true,
                    ));
                }
            }
            continue;
        }
        finish(&mut cur, &mut out, &mut problems, &mut too_long);
        if raw.len() > MAX_LOGICAL_LINE {
            too_long = true;
        }
        cur = Some((
            LogicalLine {
                text: if too_long {
                    String::new()
                } else {
                    raw.to_string()
                },
                line: idx + 1,
            },
            false,
        ));
    }
    finish(&mut cur, &mut out, &mut problems, &mut too_long);
    (out, problems)
}

/// Collapse every run of whitespace to one space and trim both ends: how
/// `postconf` prints values (the daemons see the raw text).
pub fn normalize_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_ascii_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<(String, usize)> {
        logical_lines(s)
            .0
            .into_iter()
            .map(|l| (l.text, l.line))
            .collect()
    }

    #[test]
    fn continuation_keeps_leading_whitespace() {
        assert_eq!(
            texts("a = x\n  y\n\tz\nb = 1\n"),
            vec![("a = x  y\tz".into(), 1), ("b = 1".into(), 4)]
        );
    }

    #[test]
    fn comments_and_blank_lines_inside_continuation_are_skipped() {
        assert_eq!(
            texts("a = x\n#c\n\n   \n   # indented comment\n y\n"),
            vec![("a = x y".into(), 1)]
        );
    }

    #[test]
    fn no_trailing_comments() {
        assert_eq!(texts("a = x # y\n"), vec![("a = x # y".into(), 1)]);
    }

    #[test]
    fn leading_whitespace_at_start_is_a_problem() {
        let (lines, problems) = logical_lines("  x = 1\n more\na = b\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            problems,
            vec![LineProblem::LeadingWhitespace {
                line: 1,
                text: "  x = 1 more".into()
            }]
        );
    }

    #[test]
    fn crlf_is_accepted() {
        assert_eq!(texts("a = 1\r\n b\r\n"), vec![("a = 1 b".into(), 1)]);
    }

    #[test]
    fn overlong_line_is_skipped_with_problem() {
        let big = format!("a = {}\nb = 1\n", "x".repeat(MAX_LOGICAL_LINE + 1));
        let (lines, problems) = logical_lines(&big);
        assert_eq!(
            lines,
            vec![LogicalLine {
                text: "b = 1".into(),
                line: 2
            }]
        );
        assert_eq!(problems, vec![LineProblem::TooLong { line: 1 }]);
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_whitespace("  a \t b\n c  "), "a b c");
    }
}
