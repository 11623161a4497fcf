//! The MIME structure of a message as cleanup's content inspection sees
//! it, so that `mime_header_checks` and `nested_header_checks` apply
//! where Postfix applies them (Postfix's one-pass MIME processor,
//! `mime_state`, rebuilt from its documented behaviour).
//!
//! The machine is fed one line at a time and never holds content: the
//! caller assembles each logical header (bounded by
//! `header_size_limit`) and hands it over complete ([`Mime::header`]),
//! says where a header block ends ([`Mime::end_headers`]) and shows it
//! the start of every body line ([`Mime::body_line`]), which is where
//! boundaries are found. What it keeps is the stack of open multipart
//! boundaries: at most `mime_nesting_limit` + 1 levels of at most
//! `mime_boundary_length_limit` bytes each (both clamped to
//! [`MAX_NESTING`] and [`MAX_BOUNDARY_LEN`]).
//!
//! * The primary header block comes first. A `Content-Type: multipart/*`
//!   header with a `boundary` parameter (in any header block) opens a
//!   level; `multipart/digest` parts default to `message/rfc822`, other
//!   parts to `text/plain`.
//! * In the body, a line starting with `--` and the boundary of an open
//!   level (a prefix match: what follows, such as transport padding or
//!   the truncated rest of a long boundary, is ignored, as RFC 2046
//!   allows padding and as Postfix does) starts a part: the part headers
//!   follow, up to a blank line. The same followed by `--` is the close
//!   delimiter: that level ends and body text follows (the epilogue).
//!   A boundary of an outer level also ends the levels inside it.
//! * A header block whose `Content-Type` is `message/rfc822` and that ends
//!   with a blank line is followed by the headers of the attached
//!   message (the nested class). `message/partial` and
//!   `message/external-body` are body, as in Postfix.
//! * A line that is neither a header, a continuation nor blank ends a
//!   header block too (the line is body); what it announced is then
//!   not acted on, except the boundaries already opened.
//! * A multipart header that would open a level while more than
//!   `mime_nesting_limit` are open opens nothing and is reported
//!   ([`Mime::header`] says so; cleanup then refuses the message when
//!   header checks are in use, as Postfix does).
//! * A boundary is taken from a quoted string or, unquoted, up to the
//!   next white space or `;` (more lenient than RFC 2045 tokens: the
//!   common unquoted `----=_Part_1` works whole). An empty boundary is
//!   ignored (Postfix would let it match every `--` line).

use super::headers::header_name_len;

/// Highest `mime_nesting_limit` honoured.
pub const MAX_NESTING: usize = 1000;
/// Highest `mime_boundary_length_limit` honoured.
pub const MAX_BOUNDARY_LEN: usize = 8192;

/// Which header block a header is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The message's own headers.
    Primary,
    /// The headers of a body part (after a `--boundary` line).
    Multipart,
    /// The headers of an attached message (`message/rfc822`).
    Nested,
}

/// A boundary line found by [`Mime::body_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    /// `--boundary`: part headers follow.
    Part,
    /// `--boundary--`: the level ended; body text follows.
    Close,
}

/// What the last `Content-Type` (or the default) of a header block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctype {
    /// text/* (the default of a message and of most parts).
    Text,
    /// message/rfc822: its body starts with a header block.
    Rfc822,
    Multipart,
    Other,
}

/// One open multipart level.
struct Level {
    /// Truncated to the boundary length limit.
    boundary: Box<[u8]>,
    /// multipart/digest: parts default to message/rfc822.
    digest: bool,
}

/// The media type and boundaries of a `Content-Type` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// Lower case; empty when the value does not start with a token.
    pub kind: String,
    pub subtype: String,
    /// Every non-empty `boundary` parameter, in order (more than one is
    /// illegal, and each is honoured so none can hide a part).
    pub boundaries: Vec<Vec<u8>>,
}

/// The MIME state of one message.
pub struct Mime {
    /// The header block being read, or `None` in body text.
    headers: Option<Class>,
    ctype: Ctype,
    stack: Vec<Level>,
    nesting_limit: usize,
    boundary_len: usize,
}

impl Mime {
    /// A message starts with its primary headers, `text/plain` by
    /// default.
    pub fn new(nesting_limit: usize, boundary_len: usize) -> Mime {
        Mime {
            headers: Some(Class::Primary),
            ctype: Ctype::Text,
            stack: Vec::new(),
            nesting_limit: nesting_limit.min(MAX_NESTING),
            boundary_len: boundary_len.clamp(1, MAX_BOUNDARY_LEN),
        }
    }

    /// The header block being read, `None` in body text.
    pub fn header_class(&self) -> Option<Class> {
        self.headers
    }

    /// Open multipart levels.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// A complete logical header of the current header block (unfolded).
    /// Returns true when it is a multipart header that would nest deeper
    /// than the limit (nothing is opened for it).
    pub fn header(&mut self, text: &[u8]) -> bool {
        if self.headers.is_none() {
            return false;
        }
        let Some(n) = header_name_len(text) else {
            return false;
        };
        if !text[..n].eq_ignore_ascii_case(b"content-type") {
            return false;
        }
        let colon = text[n..]
            .iter()
            .position(|&b| b == b':')
            .map_or(text.len(), |i| n + i + 1);
        let ct = parse_content_type(&text[colon..]);
        self.ctype = match (ct.kind.as_str(), ct.subtype.as_str()) {
            ("text", _) => Ctype::Text,
            ("message", "rfc822") => Ctype::Rfc822,
            ("multipart", _) => Ctype::Multipart,
            _ => Ctype::Other,
        };
        let mut exceeded = false;
        if self.ctype == Ctype::Multipart {
            let digest = ct.subtype == "digest";
            for mut b in ct.boundaries {
                if self.stack.len() > self.nesting_limit {
                    exceeded = true;
                    continue;
                }
                b.truncate(self.boundary_len);
                self.stack.push(Level {
                    boundary: b.into_boxed_slice(),
                    digest,
                });
            }
        }
        exceeded
    }

    /// The line that ends the current header block: blank (`true`) or a
    /// line that is not a header. After a blank line, the body of a
    /// `message/rfc822` entity starts with its own header block.
    pub fn end_headers(&mut self, blank: bool) {
        if self.headers.is_none() {
            return;
        }
        if blank && self.ctype == Ctype::Rfc822 {
            self.headers = Some(Class::Nested);
            self.ctype = Ctype::Text;
        } else {
            self.headers = None;
            if blank && self.ctype == Ctype::Multipart {
                self.ctype = Ctype::Other;
            }
        }
    }

    /// The start of a body line (not a later piece of a long line):
    /// looks for the boundaries of the open levels, innermost first.
    pub fn body_line(&mut self, line: &[u8]) -> Option<Delimiter> {
        if self.stack.is_empty() || line.len() <= 2 || !line.starts_with(b"--") {
            return None;
        }
        let rest = &line[2..];
        let i = self
            .stack
            .iter()
            .rposition(|l| rest.starts_with(&l.boundary))?;
        self.stack.truncate(i + 1);
        let close = rest[self.stack[i].boundary.len()..].starts_with(b"--");
        if close {
            self.stack.pop();
            self.headers = None;
            self.ctype = Ctype::Other;
            Some(Delimiter::Close)
        } else {
            self.headers = Some(Class::Multipart);
            self.ctype = if self.stack[i].digest {
                Ctype::Rfc822
            } else {
                Ctype::Text
            };
            Some(Delimiter::Part)
        }
    }
}

/// RFC 2045 tspecials.
const TSPECIALS: &[u8] = b"()<>@,;:\\\"/[]?=";

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A cursor over a structured header value.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips white space and (nested) comments.
    fn skip_cfws(&mut self) {
        while let Some(b) = self.peek() {
            if is_space(b) {
                self.i += 1;
            } else if b == b'(' {
                let mut depth = 0usize;
                while let Some(c) = self.peek() {
                    self.i += 1;
                    match c {
                        b'\\' => self.i = (self.i + 1).min(self.s.len()),
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                break;
            }
        }
    }

    /// An RFC 2045 token (possibly empty).
    fn token(&mut self) -> &[u8] {
        let start = self.i;
        while let Some(b) = self.peek() {
            if is_space(b) || b < 0x20 || b == 0x7f || TSPECIALS.contains(&b) {
                break;
            }
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A quoted string at the cursor (which is on the opening quote),
    /// without its quotes and escapes; an unterminated one runs to the
    /// end.
    fn quoted(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.i += 1;
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(c) = self.peek() {
                        out.push(c);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        out
    }

    /// A parameter value: a quoted string, or unquoted up to white space
    /// or `;`.
    fn value(&mut self) -> Vec<u8> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.i;
        while let Some(b) = self.peek() {
            if is_space(b) || b == b';' {
                break;
            }
            self.i += 1;
        }
        self.s[start..self.i].to_vec()
    }

    /// Moves past the next `;` outside quoted strings and comments;
    /// false at the end.
    fn skip_past_semicolon(&mut self) -> bool {
        loop {
            self.skip_cfws();
            match self.peek() {
                None => return false,
                Some(b';') => {
                    self.i += 1;
                    return true;
                }
                Some(b'"') => {
                    self.quoted();
                }
                Some(_) => self.i += 1,
            }
        }
    }
}

/// Parses a `Content-Type` value (after the colon): `type/subtype` and
/// the `boundary` parameters.
pub fn parse_content_type(value: &[u8]) -> ContentType {
    let mut lx = Lexer { s: value, i: 0 };
    lx.skip_cfws();
    let kind = String::from_utf8_lossy(lx.token()).to_ascii_lowercase();
    lx.skip_cfws();
    let mut subtype = String::new();
    if lx.peek() == Some(b'/') {
        lx.i += 1;
        lx.skip_cfws();
        subtype = String::from_utf8_lossy(lx.token()).to_ascii_lowercase();
    }
    let mut boundaries = Vec::new();
    while lx.skip_past_semicolon() {
        lx.skip_cfws();
        let name_is_boundary = lx.token().eq_ignore_ascii_case(b"boundary");
        lx.skip_cfws();
        if lx.peek() != Some(b'=') {
            continue;
        }
        lx.i += 1;
        lx.skip_cfws();
        let v = lx.value();
        if name_is_boundary && !v.is_empty() {
            boundaries.push(v);
        }
    }
    ContentType {
        kind,
        subtype,
        boundaries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each line of a message goes, as cleanup drives the machine:
    /// `P`/`M`/`N` for a (logical) header of the primary, multipart or
    /// nested class, `B` for a body line.
    fn classify(text: &str, nesting: usize, blen: usize) -> (Vec<(char, String)>, bool) {
        let mut m = Mime::new(nesting, blen);
        let mut out: Vec<(char, String)> = Vec::new();
        let mut held: Option<(char, String)> = None;
        let mut exceeded = false;
        let tag = |c: Class| match c {
            Class::Primary => 'P',
            Class::Multipart => 'M',
            Class::Nested => 'N',
        };
        let mut flush =
            |held: &mut Option<(char, String)>, m: &mut Mime, out: &mut Vec<(char, String)>| {
                if let Some((c, h)) = held.take() {
                    exceeded |= m.header(h.as_bytes());
                    out.push((c, h));
                }
            };
        for line in text.split('\n') {
            if let Some(c) = m.header_class() {
                if line.starts_with([' ', '\t']) {
                    if let Some((_, h)) = held.as_mut() {
                        h.push_str(line);
                        continue;
                    }
                }
                flush(&mut held, &mut m, &mut out);
                if header_name_len(line.as_bytes()).is_some() {
                    held = Some((tag(c), line.to_string()));
                    continue;
                }
                m.end_headers(line.is_empty());
            }
            m.body_line(line.as_bytes());
            out.push(('B', line.to_string()));
        }
        flush(&mut held, &mut m, &mut out);
        (out, exceeded)
    }

    fn tags(text: &str) -> String {
        classify(text, 100, 2048)
            .0
            .iter()
            .map(|(c, _)| *c)
            .collect()
    }

    #[test]
    fn content_type_parameters() {
        let ct = parse_content_type(b" multipart/mixed; boundary=\"abc def\"");
        assert_eq!(ct.kind, "multipart");
        assert_eq!(ct.subtype, "mixed");
        assert_eq!(ct.boundaries, [b"abc def".to_vec()]);
        // Unquoted, other parameters around it, odd case, comments, folding.
        let ct = parse_content_type(
            b" Multipart/Alternative (x; y) ;\tcharset=\"a;b\";\n\tBOUNDARY = ----=_Part_1_2.3 ; format=flowed",
        );
        assert_eq!(
            (ct.kind.as_str(), ct.subtype.as_str()),
            ("multipart", "alternative")
        );
        assert_eq!(ct.boundaries, [b"----=_Part_1_2.3".to_vec()]);
        // Escapes in a quoted boundary; a `;` inside quotes does not split.
        let ct = parse_content_type(b"multipart/mixed; x=\"q;boundary=no\"; boundary=\"a\\\"b\"");
        assert_eq!(ct.boundaries, [b"a\"b".to_vec()]);
        // Several boundaries are all kept; empty ones are not.
        let ct = parse_content_type(b"multipart/mixed; boundary=\"\"; boundary=a; boundary=b");
        assert_eq!(ct.boundaries, [b"a".to_vec(), b"b".to_vec()]);
        let ct = parse_content_type(b"text/plain");
        assert_eq!((ct.kind.as_str(), ct.subtype.as_str()), ("text", "plain"));
        assert!(ct.boundaries.is_empty());
        let ct = parse_content_type(b"");
        assert_eq!(ct.kind, "");
        let ct = parse_content_type(b"message / rfc822 (comment");
        assert_eq!(
            (ct.kind.as_str(), ct.subtype.as_str()),
            ("message", "rfc822")
        );
        // Unterminated quotes and comments end at the end.
        let ct = parse_content_type(b"multipart/mixed; boundary=\"abc");
        assert_eq!(ct.boundaries, [b"abc".to_vec()]);
        let _ = parse_content_type(b"multipart/mixed; (((\\");
    }

    #[test]
    fn plain_message_is_headers_then_body() {
        assert_eq!(
            tags("Subject: x\nContent-Type: text/plain\n\n--x\nFrom: y\n"),
            "PPBBBB"
        );
    }

    #[test]
    fn multipart_parts_have_their_own_headers() {
        let text = "MIME-Version: 1.0\n\
Content-Type: multipart/mixed;\n boundary=\"b1\"\n\
\n\
preamble\n\
--b1\n\
Content-Type: text/plain\n\
\n\
hello\n\
Content-Type: not a header here\n\
--b1 \t\n\
Content-Type: application/octet-stream;\n\tname=\"x.exe\"\n\
Content-Disposition: attachment; filename=\"x.exe\"\n\
\n\
TVqQAAMAAAAEAAAA\n\
--b1--  \n\
epilogue\n\
Subject: still body\n";
        let (out, exceeded) = classify(text, 100, 2048);
        assert!(!exceeded);
        let got: String = out.iter().map(|(c, _)| *c).collect();
        assert_eq!(got, "PPBBBMBBBBMMBBBBBB");
        // Folded headers come as one logical header.
        assert!(out.contains(&(
            'M',
            "Content-Type: application/octet-stream;\tname=\"x.exe\"".to_string()
        )));
        assert_eq!(out[1].1, "Content-Type: multipart/mixed; boundary=\"b1\"");
    }

    #[test]
    fn nested_multiparts_and_outer_boundary_closes_inner() {
        let text = "Content-Type: multipart/mixed; boundary=outer\n\
\n\
--outer\n\
Content-Type: multipart/alternative; boundary=inner\n\
\n\
--inner\n\
X-A: 1\n\
\n\
a\n\
--outer\n\
X-B: 2\n\
\n\
--inner\n\
X-Not: part\n\
--outer--\n\
X-Not: either\n";
        // After `--outer` the inner level is gone: `--inner` is body.
        assert_eq!(tags(text), "PBBMBBMBBBMBBBBBB");
    }

    #[test]
    fn attached_message_headers_are_nested() {
        let text = "Content-Type: multipart/mixed; boundary=\"b\"\n\
\n\
--b\n\
Content-Type: message/rfc822\n\
\n\
Subject: inner\n\
From: x@y\n\
Content-Type: text/plain\n\
\n\
inner body\n\
--b--\n";
        let (out, _) = classify(text, 100, 2048);
        let got: String = out.iter().map(|(c, _)| *c).collect();
        assert_eq!(got, "PBBMBNNNBBBB");
        // A top-level message/rfc822 body, and one inside it.
        let text = "Content-Type: message/rfc822\n\nContent-Type: message/rfc822\n\nSubject: deep\n\nbody\n";
        assert_eq!(tags(text), "PBNBNBBB");
        // message/partial is body; a non-blank end of the block too.
        assert_eq!(
            tags("Content-Type: message/partial\n\nSubject: x\n"),
            "PBBB"
        );
        assert_eq!(
            tags("Content-Type: message/rfc822\nnot a header\nSubject: x\n"),
            "PBBB"
        );
    }

    #[test]
    fn digest_parts_default_to_messages() {
        let text = "Content-Type: multipart/digest; boundary=d\n\
\n\
--d\n\
\n\
Subject: first\n\
\n\
text\n\
--d\n\
Content-Type: text/plain\n\
\n\
Subject: body\n\
--d--\n";
        assert_eq!(tags(text), "PBBBNBBBMBBBB");
    }

    #[test]
    fn garbage_ends_part_headers_and_boundary_right_after_headers() {
        let text = "Content-Type: multipart/mixed; boundary=b\n\
\n\
--b\n\
X-H: 1\n\
--b\n\
X-H: 2\n folded\n\
garbage line\n\
X-H: body\n\
--b--\n";
        assert_eq!(tags(text), "PBBMBMBBBB");
    }

    #[test]
    fn boundary_is_a_prefix_match() {
        let mut m = Mime::new(100, 2048);
        assert!(!m.header(b"Content-Type: multipart/mixed; boundary=abc"));
        m.end_headers(true);
        assert_eq!(m.body_line(b"--ab"), None);
        assert_eq!(m.body_line(b"-abc"), None);
        assert_eq!(m.body_line(b" --abc"), None);
        assert_eq!(m.body_line(b"--abc"), Some(Delimiter::Part));
        m.end_headers(true);
        assert_eq!(m.body_line(b"--abc   \r"), Some(Delimiter::Part));
        m.end_headers(true);
        assert_eq!(m.body_line(b"--abcdef"), Some(Delimiter::Part));
        m.end_headers(true);
        assert_eq!(m.body_line(b"--abc-- \t"), Some(Delimiter::Close));
        assert_eq!(m.depth(), 0);
        assert_eq!(m.body_line(b"--abc"), None);
    }

    #[test]
    fn long_boundaries_are_truncated() {
        let long = "x".repeat(100);
        let mut m = Mime::new(100, 10);
        m.header(format!("Content-Type: multipart/mixed; boundary=\"{long}\"").as_bytes());
        m.end_headers(true);
        // Only the first 10 bytes are compared.
        assert_eq!(
            m.body_line(format!("--{}", &long[..10]).as_bytes()),
            Some(Delimiter::Part)
        );
        m.end_headers(true);
        assert_eq!(
            m.body_line(format!("--{}--", &long[..10]).as_bytes()),
            Some(Delimiter::Close)
        );
        // The limits are clamped.
        let m = Mime::new(usize::MAX, usize::MAX);
        assert_eq!(
            (m.nesting_limit, m.boundary_len),
            (MAX_NESTING, MAX_BOUNDARY_LEN)
        );
        let m = Mime::new(0, 0);
        assert_eq!(m.boundary_len, 1);
    }

    #[test]
    fn nesting_limit_stops_opening_levels() {
        // Each part opens one more level.
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}x\n\n--b{i}x\n"
            ));
        }
        text.push_str("X-Deep: 1\n\nbody\n");
        let (out, exceeded) = classify(&text, 3, 2048);
        assert!(exceeded);
        let mut m = Mime::new(3, 2048);
        for l in text.split('\n') {
            if l.starts_with("Content-Type") {
                let _ = m.header(l.as_bytes());
                m.end_headers(true);
            } else {
                m.body_line(l.as_bytes());
            }
        }
        // Postfix's rule: a level is opened while at most `limit` are.
        assert_eq!(m.depth(), 4);
        // Below the limit the headers were still part headers; beyond it
        // the `--bNx` lines are body and so is what follows them.
        let tags: String = out.iter().map(|(c, _)| *c).collect();
        assert!(tags.starts_with("PBBMBBMBBMBBMBB"), "{tags}");
        assert!(tags[15..].chars().all(|c| c == 'B'), "{tags}");
        let (_, exceeded) = classify(&text, 100, 2048);
        assert!(!exceeded);
        // Many boundaries in one header count as levels too.
        let mut m = Mime::new(2, 2048);
        assert!(m.header(
            b"Content-Type: multipart/mixed; boundary=a; boundary=b; boundary=c; boundary=d"
        ));
        assert_eq!(m.depth(), 3);
    }

    #[test]
    fn bounded_work_on_hostile_input() {
        // Thousands of boundaries in one header: at most the limit kept.
        let mut h = b"Content-Type: multipart/mixed".to_vec();
        for i in 0..5000 {
            h.extend(format!("; boundary=b{i}").as_bytes());
        }
        let mut m = Mime::new(100, 2048);
        assert!(m.header(&h));
        assert_eq!(m.depth(), 101);
        m.end_headers(true);
        assert_eq!(m.body_line(b"--b0--"), Some(Delimiter::Close));
        assert_eq!(m.depth(), 0);
        // Odd bytes do not panic.
        let junk: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 256) as u8).collect();
        let mut v = b"Content-Type:".to_vec();
        v.extend(&junk);
        let mut m = Mime::new(100, 2048);
        let _ = m.header(&v);
        let _ = parse_content_type(&junk);
    }
}
