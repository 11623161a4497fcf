//! header_checks and body_checks actions (header_checks(5), Postfix's
//! `cleanup_act()`): the table's answer parsed into an [`Action`], and the
//! log line Postfix writes for it.
//!
//! The action word is case-insensitive and ends at the first blank; the
//! rest is the optional text. `REJECT text` keeps an enhanced status code
//! at the start of the text or gets `5.7.1`; a `4.x.x` code makes the
//! rejection temporary (STAT_DEFER) as in Postfix.

/// What a header or body line matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Reply text with its enhanced status code.
    Reject(String),
    Warn(String),
    Info(String),
    Hold(String),
    Discard(String),
    Redirect(String),
    Bcc(String),
    Filter(String),
    Prepend(String),
    Replace(String),
    Ignore,
    /// IGNORE that is logged (Postfix's STRIP).
    Strip(String),
    /// Skip the remaining checks for this message (PASS).
    Pass,
    Dunno,
    /// Unknown action or bad argument: warn and go on.
    Bad(String),
}

/// `5.7.1 text` unless `text` starts with an enhanced status code
/// (`dsn_prepend()`).
pub fn dsn_prepend(default: &str, text: &str) -> String {
    let t = text.trim();
    let word = t.split_whitespace().next().unwrap_or("");
    let is_code = {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
    };
    if is_code {
        t.to_string()
    } else {
        format!("{default} {t}")
    }
}

/// Parses a table result. `header` tells whether REPLACE/PREPEND text
/// must itself be a header.
pub fn parse(value: &str, header: bool, map: &str) -> Action {
    let value = value.trim_start();
    let (word, rest) = match value.find([' ', '\t']) {
        Some(i) => (&value[..i], value[i..].trim_start()),
        None => (value, ""),
    };
    let text = rest.to_string();
    match word.to_ascii_uppercase().as_str() {
        "REJECT" => Action::Reject(if text.is_empty() {
            "5.7.1 message content rejected".to_string()
        } else {
            let r = dsn_prepend("5.7.1", &text);
            if r.starts_with('4') || r.starts_with('5') {
                r
            } else {
                // 2.x.x makes no sense for a rejection.
                format!("4{}", &r[1..])
            }
        }),
        "WARN" => Action::Warn(text),
        "INFO" => Action::Info(text),
        "HOLD" => Action::Hold(text),
        "DISCARD" => Action::Discard(text),
        "REDIRECT" => {
            if text.contains('@') {
                Action::Redirect(text)
            } else {
                Action::Bad(format!(
                    "bad REDIRECT target \"{text}\" in {map} map -- need user@domain"
                ))
            }
        }
        "BCC" => {
            if text.contains('@') {
                Action::Bcc(text)
            } else {
                Action::Bad(format!(
                    "bad BCC address \"{text}\" in {map} map -- need user@domain"
                ))
            }
        }
        "FILTER" => {
            if text.contains(':') {
                Action::Filter(text)
            } else {
                Action::Bad(format!(
                    "bad FILTER command {text} in {map} -- need transport:destination"
                ))
            }
        }
        "PREPEND" | "REPLACE" => {
            let replace = word.eq_ignore_ascii_case("REPLACE");
            let what = if replace { "REPLACE" } else { "PREPEND" };
            if text.is_empty() {
                Action::Bad(format!("{what} action without text in {map} map"))
            } else if header && !super::headers::is_header(&text) {
                Action::Bad(format!(
                    "bad {what} header text \"{text}\" in {map} map -- need \"headername: headervalue\""
                ))
            } else if replace {
                Action::Replace(text)
            } else {
                Action::Prepend(text)
            }
        }
        "IGNORE" => Action::Ignore,
        "STRIP" => Action::Strip(text),
        "PASS" => Action::Pass,
        "DUNNO" | "OK" => Action::Dunno,
        _ => Action::Bad(format!("unknown command in {map} map: {value}")),
    }
}

/// What Postfix logs next to an action: who sent the message.
#[derive(Debug, Clone, Default)]
pub struct LogContext {
    pub queue_id: String,
    /// `local` for pickup, `name[addr]` for smtpd, `unknown` otherwise.
    pub origin: String,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub protocol: Option<String>,
    pub helo: Option<String>,
}

impl LogContext {
    /// `ID: ACTION: CLASS CONTENT from ORIGIN; from=<s> to=<r> proto=P
    /// helo=<h>: TEXT` (cleanup_act_log; the content cut at 200 bytes).
    pub fn line(&self, action: &str, class: &str, content: &str, text: &str) -> String {
        let mut cut = content.len().min(200);
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut s = format!(
            "{}: {action}: {class} {} from {};",
            self.queue_id,
            &content[..cut],
            self.origin
        );
        if let Some(f) = &self.sender {
            s.push_str(&format!(" from=<{f}>"));
        }
        if let Some(t) = &self.recipient {
            s.push_str(&format!(" to=<{t}>"));
        }
        if let Some(p) = &self.protocol {
            s.push_str(&format!(" proto={p}"));
        }
        if let Some(h) = &self.helo {
            s.push_str(&format!(" helo=<{h}>"));
        }
        if !text.is_empty() {
            s.push_str(&format!(": {text}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse() {
        assert_eq!(
            parse("REJECT", true, "header_checks"),
            Action::Reject("5.7.1 message content rejected".into())
        );
        assert_eq!(
            parse("reject Spam here", true, "m"),
            Action::Reject("5.7.1 Spam here".into())
        );
        assert_eq!(
            parse("REJECT 4.7.0 later", true, "m"),
            Action::Reject("4.7.0 later".into())
        );
        assert_eq!(parse("IGNORE", true, "m"), Action::Ignore);
        assert_eq!(parse("DUNNO", true, "m"), Action::Dunno);
        assert_eq!(parse("OK", true, "m"), Action::Dunno);
        assert_eq!(parse("HOLD why", true, "m"), Action::Hold("why".into()));
        assert_eq!(
            parse("REPLACE X-New: v", true, "m"),
            Action::Replace("X-New: v".into())
        );
        assert!(matches!(
            parse("REPLACE not a header", true, "m"),
            Action::Bad(_)
        ));
        assert_eq!(
            parse("REPLACE any text", false, "m"),
            Action::Replace("any text".into())
        );
        assert!(matches!(
            parse("REDIRECT nobody", true, "m"),
            Action::Bad(_)
        ));
        assert_eq!(
            parse("REDIRECT a@b", true, "m"),
            Action::Redirect("a@b".into())
        );
        assert!(matches!(parse("FROB", true, "m"), Action::Bad(_)));
        assert!(matches!(parse("", true, "m"), Action::Bad(_)));
    }

    #[test]
    fn log_line_has_postfix_form() {
        let c = LogContext {
            queue_id: "ABC".into(),
            origin: "local".into(),
            sender: Some("a@b".into()),
            recipient: Some("c@d".into()),
            ..Default::default()
        };
        assert_eq!(
            c.line("reject", "header", "Subject: buy now", "5.7.1 Spam"),
            "ABC: reject: header Subject: buy now from local; from=<a@b> to=<c@d>: 5.7.1 Spam"
        );
        let c = LogContext {
            queue_id: "ABC".into(),
            origin: "mx.example[192.0.2.1]".into(),
            sender: Some("".into()),
            recipient: None,
            protocol: Some("ESMTP".into()),
            helo: Some("h".into()),
        };
        assert_eq!(
            c.line("warning", "body", "x", ""),
            "ABC: warning: body x from mx.example[192.0.2.1]; from=<> proto=ESMTP helo=<h>"
        );
        let long = "é".repeat(300);
        let _ = c.line("warning", "body", &long, "");
    }
}
