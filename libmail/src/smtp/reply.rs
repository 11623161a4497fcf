//! SMTP replies: a three-digit code, an optional RFC 3463 enhanced status
//! code, and one or more lines of text, written as Postfix writes them
//! (`250-first`, `250 last`, CRLF line ends).
//!
//! Postfix keeps the class of the enhanced code in line with the reply
//! code (a 450 with `5.7.1` is sent as `4.7.1`); [`Reply::new`] does the
//! same, so a table that says `450 5.7.1 go away` or a `soft_bounce`
//! that turns 5xx into 4xx never sends a mixed pair.

use std::fmt;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `X.Y.Z` without the class mismatch, or empty.
    pub enhanced: String,
    /// At least one line; none contains CR or LF.
    pub lines: Vec<String>,
}

/// Whether `s` is an RFC 3463 status code `class.subject.detail` (class 2,
/// 4 or 5; subject up to 3 digits; detail up to 3 digits).
pub fn is_enhanced(s: &str) -> bool {
    let p: Vec<&str> = s.split('.').collect();
    p.len() == 3
        && matches!(p[0], "2" | "4" | "5")
        && p[1..]
            .iter()
            .all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
}

fn clean(line: &str) -> String {
    line.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

impl Reply {
    /// A one-line reply. The enhanced code's class follows `code`.
    pub fn new(code: u16, enhanced: &str, text: impl AsRef<str>) -> Reply {
        let enhanced = if enhanced.is_empty() {
            String::new()
        } else {
            let class = (code / 100).to_string();
            match enhanced.split_once('.') {
                Some((_, rest)) => format!("{class}.{rest}"),
                None => enhanced.to_string(),
            }
        };
        Reply {
            code,
            enhanced,
            lines: vec![clean(text.as_ref())],
        }
    }

    /// A reply whose text may start with its own enhanced code
    /// (`"5.7.1 Go away"`); `default` is used when it does not.
    pub fn with_text(code: u16, default: &str, text: &str) -> Reply {
        let t = text.trim_start();
        match t.split_once(' ') {
            Some((first, rest)) if is_enhanced(first) => Reply::new(code, first, rest),
            None if is_enhanced(t) => Reply::new(code, t, ""),
            _ => Reply::new(code, default, t),
        }
    }

    /// A multi-line reply (EHLO), without enhanced code.
    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: String::new(),
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines.iter().map(|l| clean(l)).collect()
            },
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The text after the codes, as one line (logs show it this way).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// `CODE X.Y.Z text` of the first line, as logs show a reply.
    pub fn log_form(&self) -> String {
        if self.enhanced.is_empty() {
            format!("{} {}", self.code, self.text())
        } else {
            format!("{} {} {}", self.code, self.enhanced, self.text())
        }
    }

    /// The reply with 5xx turned into 4xx (`soft_bounce`).
    pub fn softened(&self) -> Reply {
        if self.code < 500 {
            return self.clone();
        }
        let mut r = self.clone();
        r.code -= 100;
        if let Some(rest) = r.enhanced.strip_prefix('5') {
            r.enhanced = format!("4{rest}");
        }
        r
    }

    /// The bytes on the wire.
    pub fn to_wire(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Reply {
    /// Every line as `CODE-text` / `CODE text` with CRLF; the enhanced
    /// code, when there is one, starts every line's text (RFC 2034).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lines.len();
        for (i, l) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if self.enhanced.is_empty() {
                write!(f, "{}{}{}\r\n", self.code, sep, l)?;
            } else if l.is_empty() {
                write!(f, "{}{}{}\r\n", self.code, sep, self.enhanced)?;
            } else {
                write!(f, "{}{}{} {}\r\n", self.code, sep, self.enhanced, l)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_with_enhanced_code() {
        let r = Reply::new(250, "2.1.0", "Ok");
        assert_eq!(r.to_string(), "250 2.1.0 Ok\r\n");
        assert_eq!(r.log_form(), "250 2.1.0 Ok");
    }

    #[test]
    fn enhanced_class_follows_the_reply_code() {
        assert_eq!(
            Reply::new(450, "5.7.1", "go away").to_string(),
            "450 4.7.1 go away\r\n"
        );
        assert_eq!(
            Reply::with_text(554, "5.7.1", "4.1.8 Domain not found").to_string(),
            "554 5.1.8 Domain not found\r\n"
        );
        assert_eq!(
            Reply::with_text(550, "5.7.1", "no code here").to_string(),
            "550 5.7.1 no code here\r\n"
        );
        assert_eq!(
            Reply::new(554, "5.7.1", "x").softened().to_string(),
            "454 4.7.1 x\r\n"
        );
    }

    #[test]
    fn multi_line_ehlo() {
        let r = Reply::multi(
            250,
            vec!["mx.example".into(), "PIPELINING".into(), "CHUNKING".into()],
        );
        assert_eq!(
            r.to_string(),
            "250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
        );
    }

    #[test]
    fn no_line_breaks_reach_the_wire() {
        let r = Reply::new(550, "5.7.1", "a\r\nRSET");
        assert_eq!(r.to_string(), "550 5.7.1 a  RSET\r\n");
    }

    #[test]
    fn enhanced_code_syntax() {
        assert!(is_enhanced("4.7.1") && is_enhanced("5.1.10") && is_enhanced("2.0.0"));
        assert!(!is_enhanced("3.1.1") && !is_enhanced("5.1") && !is_enhanced("5.x.1"));
        assert!(!is_enhanced("5.1234.1"));
    }
}
