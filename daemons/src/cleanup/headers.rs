//! The primary header block of a message, as cleanup sees it: which lines
//! are headers, how a logical header (a header and its continuation
//! lines) is unfolded for matching, which headers Postfix treats
//! specially (`header_opts.c`), the address-list tokenizer used to
//! rewrite address headers, and the text of the headers cleanup adds
//! (`Received:`, `Message-Id:`, `Date:`, `From:`).
//!
//! Folding is kept: a header that is not changed is written back as the
//! physical lines it came in. Only a header whose addresses were
//! rewritten, or one produced by a REPLACE/PREPEND action, is written as
//! a new single line (Postfix refolds those; we do not fold them).
//!
//! The tokenizer handles the address lists real mail carries:
//! `a@b, Name <c@d>, "x, y" <e@f> (comment), group: g@h;`. Not handled:
//! obsolete route syntax beyond a leading `@a,@b:` (kept as is), encoded
//! words are left untouched (they are phrases, never addresses), and a
//! header with unbalanced quotes or brackets is left unchanged.

/// Whether `line` starts a header: `name:` where the name is printable
/// ASCII without space or colon (white space may precede the colon), as
/// Postfix's `is_header()`. Returns the length of the name.
pub fn header_name_len(line: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < line.len() && line[i] != b':' && line[i].is_ascii_graphic() {
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let name_len = i;
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    if i < line.len() && line[i] == b':' {
        Some(name_len)
    } else {
        None
    }
}

/// Whether a text (from a REPLACE/PREPEND action) is a header.
pub fn is_header(text: &str) -> bool {
    header_name_len(text.as_bytes()).is_some()
}

/// Whether a header is one of the MIME headers Postfix sends to
/// `mime_header_checks` wherever they are (`header_opts.c`, HDR_OPT_MIME).
/// Other `Content-*` headers (`Content-Language`, ...) are not.
pub fn is_mime_header(name: &str) -> bool {
    let n = name.trim();
    [
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-description",
        "content-id",
    ]
    .iter()
    .any(|m| n.eq_ignore_ascii_case(m))
}

/// What Postfix does with a known header (`header_opts.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sender addresses: From, Sender, Reply-To, Errors-To,
    /// Return-Receipt-To (and their Resent- forms).
    Sender,
    /// Recipient addresses: To, Cc, Bcc, Apparently-To (and Resent-).
    Recipient,
    MessageId,
    Date,
    Received,
    /// Removed: Return-Path, Content-Length.
    Drop,
    Other,
}

/// A known header's kind and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub kind: Kind,
    /// A `Resent-` header: missing headers are then added in their
    /// `Resent-` form.
    pub resent: bool,
    /// Bcc or Resent-Bcc.
    pub bcc: bool,
    /// From or Resent-From.
    pub from: bool,
    /// To, Cc (or Resent-): a visible recipient header.
    pub visible_rcpt: bool,
}

/// Classifies a header name (case-insensitively).
pub fn classify(name: &str) -> Known {
    let lower = name.trim().to_ascii_lowercase();
    let (resent, base) = match lower.strip_prefix("resent-") {
        Some(b) => (true, b),
        None => (false, lower.as_str()),
    };
    let mut k = Known {
        kind: Kind::Other,
        resent: false,
        bcc: false,
        from: false,
        visible_rcpt: false,
    };
    k.kind = match base {
        "from" | "sender" | "reply-to" => Kind::Sender,
        "errors-to" | "return-receipt-to" if !resent => Kind::Sender,
        "to" | "cc" | "bcc" => Kind::Recipient,
        "apparently-to" if !resent => Kind::Recipient,
        "message-id" => Kind::MessageId,
        "date" => Kind::Date,
        "received" if !resent => Kind::Received,
        "return-path" | "content-length" if !resent => Kind::Drop,
        _ => Kind::Other,
    };
    k.resent = resent && k.kind != Kind::Other;
    k.bcc = base == "bcc";
    k.from = base == "from";
    k.visible_rcpt = base == "to" || base == "cc";
    k
}

/// One logical header: its physical lines, without line ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub lines: Vec<Vec<u8>>,
}

impl Header {
    /// The header name as written (before the colon, trimmed).
    pub fn name(&self) -> String {
        let first = self.lines.first().map(Vec::as_slice).unwrap_or(b"");
        let n = header_name_len(first).unwrap_or(0);
        String::from_utf8_lossy(&first[..n]).into_owned()
    }

    /// The whole header on one line: continuation lines joined (the line
    /// breaks removed, their white space kept), as header_checks see it.
    pub fn unfolded(&self) -> String {
        let mut s = Vec::new();
        for l in &self.lines {
            s.extend_from_slice(l);
        }
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The unfolded value after the colon, leading white space removed.
    pub fn value(&self) -> String {
        let u = self.unfolded();
        match u.find(':') {
            Some(i) => u[i + 1..].trim_start().to_string(),
            None => String::new(),
        }
    }

    pub fn size(&self) -> usize {
        self.lines.iter().map(|l| l.len() + 1).sum()
    }
}

/// One address found in a header value: where it is and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte range of the address in the value.
    pub start: usize,
    pub end: usize,
    pub address: String,
}

/// Most addresses looked at in one header (Postfix's
/// `header_address_token_limit` bounds the same work).
pub const MAX_HEADER_ADDRESSES: usize = 10_240;

/// Finds the addresses of an RFC 5322 address list. `None` when the
/// value is not well formed enough to rewrite safely (unbalanced quotes,
/// comments or angle brackets).
pub fn find_addresses(value: &str) -> Option<Vec<Found>> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    // Item state: the start of the current item, whether it holds an
    // angle address, and the spans of its bare words outside comments.
    let mut i = 0;
    let mut item_words: Vec<(usize, usize)> = Vec::new();
    let mut item_has_angle = false;
    let mut word_start: Option<usize> = None;
    let mut in_group = false;
    let flush_word = |ws: &mut Option<usize>, end: usize, words: &mut Vec<(usize, usize)>| {
        if let Some(s) = ws.take() {
            words.push((s, end));
        }
    };
    let end_item = |words: &mut Vec<(usize, usize)>, has_angle: &mut bool, out: &mut Vec<Found>| {
        if !*has_angle && words.len() == 1 {
            let (s, e) = words[0];
            let a = &value[s..e];
            if !a.is_empty() {
                out.push(Found {
                    start: s,
                    end: e,
                    address: a.to_string(),
                });
            }
        }
        words.clear();
        *has_angle = false;
    };
    while i < b.len() {
        if out.len() >= MAX_HEADER_ADDRESSES {
            break;
        }
        match b[i] {
            b'"' => {
                // A quoted string is part of the word it is in.
                if word_start.is_none() {
                    word_start = Some(i);
                }
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                continue;
            }
            b'(' => {
                flush_word(&mut word_start, i, &mut item_words);
                let mut depth = 0usize;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') => i += 2,
                        Some(b'(') => {
                            depth += 1;
                            i += 1;
                        }
                        Some(b')') => {
                            depth -= 1;
                            i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
                continue;
            }
            b'<' => {
                flush_word(&mut word_start, i, &mut item_words);
                let start = i + 1;
                let mut j = start;
                loop {
                    match b.get(j) {
                        None => return None,
                        Some(b'"') => {
                            j += 1;
                            loop {
                                match b.get(j) {
                                    None => return None,
                                    Some(b'\\') => j += 2,
                                    Some(b'"') => {
                                        j += 1;
                                        break;
                                    }
                                    Some(_) => j += 1,
                                }
                            }
                        }
                        Some(b'>') => break,
                        Some(_) => j += 1,
                    }
                }
                let inner = &value[start..j];
                let lead = inner.len() - inner.trim_start().len();
                let mut s = start + lead;
                let mut e = start + inner.trim_end().len();
                // A source route (@a,@b:user@c): only the address after it.
                if value[s..e].starts_with('@') {
                    if let Some(c) = value[s..e].find(':') {
                        s += c + 1;
                    }
                }
                if e < s {
                    e = s;
                }
                out.push(Found {
                    start: s,
                    end: e,
                    address: value[s..e].to_string(),
                });
                item_has_angle = true;
                i = j + 1;
                continue;
            }
            b'[' => {
                // A domain literal is part of its word: `u@[IPv6:::1]`.
                if word_start.is_none() {
                    word_start = Some(i);
                }
                match b[i..].iter().position(|&c| c == b']') {
                    Some(n) => i += n + 1,
                    None => return None,
                }
                continue;
            }
            b',' => {
                flush_word(&mut word_start, i, &mut item_words);
                end_item(&mut item_words, &mut item_has_angle, &mut out);
            }
            b':' if !in_group => {
                // A group name ends here.
                flush_word(&mut word_start, i, &mut item_words);
                item_words.clear();
                item_has_angle = false;
                in_group = true;
            }
            b';' => {
                flush_word(&mut word_start, i, &mut item_words);
                end_item(&mut item_words, &mut item_has_angle, &mut out);
                in_group = false;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                flush_word(&mut word_start, i, &mut item_words);
            }
            _ => {
                if word_start.is_none() {
                    word_start = Some(i);
                }
            }
        }
        i += 1;
    }
    flush_word(&mut word_start, b.len().min(i), &mut item_words);
    end_item(&mut item_words, &mut item_has_angle, &mut out);
    Some(out)
}

/// Replaces the addresses of `value` by `rewrite(address)`; `None` when
/// nothing changed (or the value could not be parsed).
pub fn rewrite_addresses(value: &str, mut rewrite: impl FnMut(&str) -> String) -> Option<String> {
    let found = find_addresses(value)?;
    let mut out = String::with_capacity(value.len() + 32);
    let mut last = 0;
    let mut changed = false;
    for f in &found {
        if f.start < last {
            continue;
        }
        let new = rewrite(&f.address);
        if new != f.address {
            changed = true;
        }
        out.push_str(&value[last..f.start]);
        out.push_str(&new);
        last = f.end;
    }
    out.push_str(&value[last..]);
    changed.then_some(out)
}

pub use libmail::date::mail_date;

/// The generated Message-Id value (without brackets):
/// `YYYYMMDDhhmmss.QUEUEID@host` in UTC from the queue file's creation
/// time, or `QUEUEID@host` with long queue IDs.
pub fn message_id(created_sec: u64, queue_id: &str, myhostname: &str, long_ids: bool) -> String {
    if long_ids {
        return format!("{queue_id}@{myhostname}");
    }
    format!(
        "{}.{queue_id}@{myhostname}",
        libmail::date::utc_stamp(created_sec.min(i64::MAX as u64) as i64)
    )
}

/// `s` without control characters: envelope values put into generated
/// headers can never start a new header line.
pub fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// A display name as an RFC 5322 phrase: quoted when it has specials.
fn phrase(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        name.to_string()
    } else {
        let mut q = String::from("\"");
        for c in name.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    }
}

/// The value of a generated `From:` (header_from_format = standard):
/// `Full Name <sender>`, the bare sender without a full name, and
/// `MAILER-DAEMON` for the null sender.
pub fn from_value(sender: &str, full_name: Option<&str>) -> String {
    if sender.is_empty() {
        return "MAILER-DAEMON".to_string();
    }
    let sender = clean(sender);
    let sender = sender.as_str();
    let name: String = full_name
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let name = name.trim();
    if name.is_empty() {
        sender.to_string()
    } else {
        format!("{} <{sender}>", phrase(name))
    }
}

/// The two lines of the `Received:` header of a local submission:
/// `Received: by HOST (MAIL_NAME, from userid UID)` and
/// `\tid QUEUEID; DATE`.
pub fn local_received(
    myhostname: &str,
    mail_name: &str,
    uid: Option<&str>,
    queue_id: &str,
    date: &str,
) -> [String; 2] {
    let uid = uid.map(clean);
    let by = match uid {
        Some(u) => format!("Received: by {myhostname} ({mail_name}, from userid {u})"),
        None => format!("Received: by {myhostname} ({mail_name})"),
    };
    [by, format!("\tid {queue_id}; {date}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_are_recognised() {
        assert_eq!(header_name_len(b"Subject: hi"), Some(7));
        assert_eq!(header_name_len(b"Subject : hi"), Some(7));
        assert_eq!(header_name_len(b"X-A:"), Some(3));
        assert_eq!(header_name_len(b" folded: x"), None);
        assert_eq!(header_name_len(b""), None);
        assert_eq!(header_name_len(b":x"), None);
        assert_eq!(header_name_len(b"no colon here"), None);
        assert_eq!(header_name_len(b"From someone"), None);
    }

    #[test]
    fn classification_follows_header_opts() {
        assert_eq!(classify("FROM").kind, Kind::Sender);
        assert!(classify("From").from);
        assert_eq!(classify("Resent-To").kind, Kind::Recipient);
        assert!(classify("Resent-To").resent);
        assert!(classify("bcc").bcc);
        assert_eq!(classify("Return-Path").kind, Kind::Drop);
        assert_eq!(classify("X-Resent-To").kind, Kind::Other);
        assert!(!classify("Resent-X").resent);
    }

    #[test]
    fn unfolding_keeps_white_space() {
        let h = Header {
            lines: vec![b"Subject: a".to_vec(), b"\tb".to_vec()],
        };
        assert_eq!(h.unfolded(), "Subject: a\tb");
        assert_eq!(h.value(), "a\tb");
        assert_eq!(h.name(), "Subject");
    }

    #[test]
    fn addresses_are_found_in_lists() {
        let v =
            r#"a@b, Name <c@d>, "x, y" <e@f> (com, ment), group: g@h, i@j;, "q"@k, plain phrase"#;
        let got: Vec<String> = find_addresses(v)
            .unwrap()
            .into_iter()
            .map(|f| f.address)
            .collect();
        assert_eq!(got, ["a@b", "c@d", "e@f", "g@h", "i@j", "\"q\"@k"]);
        assert_eq!(find_addresses("<@r1,@r2:u@x>").unwrap()[0].address, "u@x");
        assert!(find_addresses("\"unterminated <a@b>").is_none());
        assert!(find_addresses("a (unbalanced").is_none());
        assert!(find_addresses("<a@b").is_none());
        assert_eq!(find_addresses("").unwrap(), vec![]);
    }

    #[test]
    fn rewriting_replaces_only_addresses() {
        let v = "Bob (the builder) <bob>, alice";
        let r = rewrite_addresses(v, |a| format!("{a}@example.com")).unwrap();
        assert_eq!(r, "Bob (the builder) <bob@example.com>, alice@example.com");
        assert_eq!(rewrite_addresses("a@b", |a| a.to_string()), None);
    }

    #[test]
    fn hostile_values_do_not_panic() {
        for v in [
            "<", ">", "\"", "(", ")", "\\", "<\"", "a,<>", ":;:;", "(\\", "\"\\", "é<ü>",
        ] {
            let _ = find_addresses(v);
            let _ = rewrite_addresses(v, |a| format!("{a}x"));
        }
    }

    #[test]
    fn generated_header_texts() {
        assert_eq!(
            message_id(1_704_717_296, "4F2A51C0D2", "mx.example.com", false),
            "20240108123456.4F2A51C0D2@mx.example.com"
        );
        assert_eq!(
            message_id(1, "3Pt2mN2VXxznjll", "h", true),
            "3Pt2mN2VXxznjll@h"
        );
        assert_eq!(from_value("", Some("x")), "MAILER-DAEMON");
        assert_eq!(from_value("a@b", None), "a@b");
        assert_eq!(from_value("a@b\nBcc: x", None), "a@bBcc: x");
        assert_eq!(from_value("a@b", Some("Ann Other")), "Ann Other <a@b>");
        assert_eq!(
            from_value("a@b", Some("Other, Ann")),
            "\"Other, Ann\" <a@b>"
        );
        let r = local_received("h.example", "Postfix", Some("1000"), "ABC", "DATE");
        assert_eq!(r[0], "Received: by h.example (Postfix, from userid 1000)");
        assert_eq!(r[1], "\tid ABC; DATE");
    }

    #[test]
    fn mail_date_has_postfix_shape() {
        let d = mail_date(1_704_717_296);
        // "Mon,  8 Jan 2024 12:34:56 +0000 (UTC)" in UTC; the zone varies.
        let parts: Vec<&str> = d.split(' ').collect();
        assert!(
            libmail::date::DAYS
                .iter()
                .any(|x| d.starts_with(&format!("{x},"))),
            "{d}"
        );
        assert!(d.contains(" 2024 "), "{d}");
        assert!(parts
            .iter()
            .any(|p| (p.starts_with('+') || p.starts_with('-')) && p.len() == 5));
        // Single-digit days are space-padded.
        let d = mail_date(1_704_200_000); // 2 Jan 2024
        assert!(
            d.contains(",  2 Jan") || d.contains(",  1 Jan") || d.contains(",  3 Jan"),
            "{d}"
        );
    }
}
