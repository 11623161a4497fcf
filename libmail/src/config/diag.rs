//! Diagnostics: one problem found in a configuration file, with its place.
//!
//! Every reader returns its problems as values instead of printing them, so
//! `postconf` can word them like Postfix (`postconf: warning: FILE, line N:
//! ...`) and `facteur check` can count them and set its exit status.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing, not wrong (e.g. a master.cf service Facteur does not
    /// provide).
    Info,
    /// Postfix would warn and carry on.
    Warning,
    /// Postfix would refuse to run (a `fatal:`), or Facteur cannot honour it.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in, as the user named it.
    pub path: String,
    /// 1-based line of the logical line, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
    /// Whether Postfix names the line in its version of this message (it
    /// does not for some, e.g. `logical line must not start with
    /// whitespace`); see [`Diagnostic::postfix_located`].
    pub postfix_names_line: bool,
}

impl Diagnostic {
    pub fn new(severity: Severity, path: &str, line: Option<usize>, message: String) -> Self {
        Diagnostic {
            severity,
            path: path.to_string(),
            line,
            message,
            postfix_names_line: true,
        }
    }

    /// Mark this as a message Postfix words without a line number.
    pub fn without_postfix_line(mut self) -> Self {
        self.postfix_names_line = false;
        self
    }

    /// The message placed as Postfix places it (for postconf's output).
    pub fn postfix_located(&self) -> String {
        if self.postfix_names_line {
            self.located()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }

    /// The word Postfix puts after the program name.
    pub fn level_word(&self) -> &'static str {
        match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "fatal",
        }
    }

    /// `FILE, line N: message` or `FILE: message`, Postfix's wording.
    pub fn located(&self) -> String {
        match self.line {
            Some(n) => format!("{}, line {}: {}", self.path, n, self.message),
            None => format!("{}: {}", self.path, self.message),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.level_word(), self.located())
    }
}
