//! The message content on its way out: `smtp_header_checks`,
//! `smtp_mime_header_checks`, `smtp_body_checks` and the header part of
//! `smtp_generic_maps` (their `lmtp_` twins for LMTP), applied to the
//! copy being sent while it streams from the queue file (which is never
//! changed).
//!
//! Header checks see each logical header of the primary header block,
//! unfolded (the line breaks of its continuation lines removed, as
//! cleanup's header_checks see it); a MIME header there (`Content-*`,
//! `MIME-Version`) is looked up in `smtp_mime_header_checks` instead of
//! `smtp_header_checks`, as Postfix does. The headers of MIME parts and
//! attached messages are not told apart from the body (no MIME parsing
//! yet): body checks see them as body lines. Body checks see each body
//! line (its first `line_length_limit` bytes); empty lines never match.
//!
//! The smtp(8) client supports the actions that do not change where or
//! when mail goes (header_checks(5)): `WARN` and `INFO` (logged), `REPLACE`,
//! `PREPEND`, `IGNORE`, `DUNNO`/`OK`. Any other action is logged as
//! `unsupported command in smtp_header_checks map: ...` and the line
//! goes out unchanged. A lookup error aborts the transaction: the
//! connection is closed before the final dot, so the server discards what
//! it got, and the recipients are deferred (`local data error while
//! talking to ...`).
//!
//! Then the generic mapping rewrites the addresses of the primary
//! header block's address headers (From, Sender, Reply-To, To, Cc, Bcc,
//! Resent-*, Errors-To, Return-Path, ...); a rewritten header is
//! written anew, folded between its list items; unchanged headers keep
//! their bytes and folding.
//!
//! Everything held in memory is bounded: one logical header (at most
//! `header_size_limit` bytes; a longer one ends header processing, it
//! and the rest go out as body) and the start of one body line.

use libmail::config::params::Params;
use libmail::queue::ContentReader;
use libmail::service::num_param;
use libmail::table::search::{Key, Maps};

use super::conn::IoFail;
use super::generic::{self, Generic};
use crate::cleanup::checks::{self, Action};
use crate::cleanup::headers::{header_name_len, rewrite_addresses};

/// The tables applied to outgoing content.
pub struct Filters {
    pub generic: Option<Generic>,
    pub header_checks: Option<Maps>,
    pub mime_header_checks: Option<Maps>,
    pub body_checks: Option<Maps>,
    /// Longest logical header processed (`header_size_limit`).
    header_limit: usize,
    /// How much of a body line body checks see (`line_length_limit`).
    body_limit: usize,
}

impl Filters {
    /// The agent's (`smtp`, `lmtp`) tables.
    pub fn load(p: &Params, x: &str) -> Result<Filters, String> {
        let maps = |s: &str| Maps::from_param(p, &format!("{x}_{s}"));
        Ok(Filters {
            generic: Generic::load(p, x)?,
            header_checks: maps("header_checks")?,
            mime_header_checks: maps("mime_header_checks")?,
            body_checks: maps("body_checks")?,
            header_limit: num_param(p, "header_size_limit", 102_400).clamp(1, 4 << 20) as usize,
            body_limit: num_param(p, "line_length_limit", 2048).clamp(1, 1 << 20) as usize,
        })
    }

    /// Whether the content must go through [`copy`] (else it is sent as
    /// it is).
    pub fn active(&self) -> bool {
        self.generic.is_some()
            || self.header_checks.is_some()
            || self.mime_header_checks.is_some()
            || self.body_checks.is_some()
    }
}

/// Pieces of content: bytes and whether they end their line.
pub trait Source {
    fn next(&mut self) -> Result<Option<(&[u8], bool)>, String>;
}

impl Source for ContentReader<'_> {
    fn next(&mut self) -> Result<Option<(&[u8], bool)>, String> {
        self.next_piece().map_err(|e| e.to_string())
    }
}

/// Where the content goes (the connection: dot-stuffing, folding).
pub trait Sink {
    fn put(&mut self, bytes: &[u8], ends_line: bool) -> Result<(), IoFail>;
}

/// Why the content could not be sent.
#[derive(Debug)]
pub enum Fail {
    /// The queue file could not be read.
    Queue(String),
    /// The connection failed.
    Io(IoFail),
    /// A table lookup failed (already logged).
    Lookup,
}

impl From<IoFail> for Fail {
    fn from(e: IoFail) -> Fail {
        Fail::Io(e)
    }
}

/// Sends the content unchanged.
pub fn pass(src: &mut impl Source, out: &mut impl Sink) -> Result<(), Fail> {
    while let Some((bytes, ends)) = src.next().map_err(Fail::Queue)? {
        out.put(bytes, ends)?;
    }
    Ok(())
}

/// MIME headers (`header_opts.c`: HDR_OPT_MIME).
fn is_mime_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    matches!(
        n.as_str(),
        "content-description"
            | "content-disposition"
            | "content-id"
            | "content-transfer-encoding"
            | "content-type"
            | "mime-version"
    )
}

/// What a matched line becomes.
enum Verdict {
    Keep,
    Drop,
    Replace(String),
    /// A line to send before this one, which is kept.
    Prepend(String),
}

/// Sends the content through the filters. `queue_id` is for the log.
pub fn copy(
    f: &Filters,
    queue_id: &str,
    src: &mut impl Source,
    out: &mut impl Sink,
) -> Result<(), Fail> {
    let run = Run { f, queue_id };
    // The header block: one logical header at a time.
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut cur_len = 0usize;
    let mut line: Vec<u8> = Vec::new();
    // What starts the body: a line (or the start of one) already read.
    let body_start: Option<(Vec<u8>, bool)> = loop {
        let Some((bytes, ends)) = src.next().map_err(Fail::Queue)? else {
            if !line.is_empty() {
                // (A queue file always ends its last line.)
                run.header(std::mem::take(&mut cur), out)?;
                break Some((line, true));
            }
            run.header(std::mem::take(&mut cur), out)?;
            break None;
        };
        line.extend_from_slice(bytes);
        let continuation = matches!(line.first(), Some(b' ' | b'\t')) && !cur.is_empty();
        let held = if continuation { cur_len } else { 0 };
        if held + line.len() > f.header_limit {
            // Too long to hold: header processing ends here. A header
            // this line continues goes out as it came; a complete one
            // before it is processed.
            if continuation {
                for l in cur.drain(..) {
                    out.put(&l, true)?;
                }
            } else {
                run.header(std::mem::take(&mut cur), out)?;
            }
            break Some((line, ends));
        }
        if !ends {
            continue;
        }
        let whole = std::mem::take(&mut line);
        if continuation {
            cur_len += whole.len() + 1;
            cur.push(whole);
        } else if header_name_len(&whole).is_some() {
            run.header(std::mem::take(&mut cur), out)?;
            cur_len = whole.len() + 1;
            cur.push(whole);
        } else {
            run.header(std::mem::take(&mut cur), out)?;
            break Some((whole, true));
        }
    };
    let Some((first, ends)) = body_start else {
        return Ok(());
    };
    if f.body_checks.is_none() {
        out.put(&first, ends)?;
        return pass(src, out);
    }
    // The body, a line at a time; `start` holds a line's first bytes
    // (up to the check limit) until it is decided.
    let mut start = first;
    let mut ends = ends;
    loop {
        // Complete the start of the line, up to the limit.
        while !ends && start.len() < f.body_limit {
            match src.next().map_err(Fail::Queue)? {
                Some((bytes, e)) => {
                    start.extend_from_slice(bytes);
                    ends = e;
                }
                None => {
                    ends = true;
                }
            }
        }
        let verdict = run.body(&start)?;
        let keep_rest = match verdict {
            Verdict::Keep => {
                out.put(&start, ends)?;
                true
            }
            Verdict::Prepend(t) => {
                out.put(t.as_bytes(), true)?;
                out.put(&start, ends)?;
                true
            }
            Verdict::Replace(t) => {
                out.put(t.as_bytes(), true)?;
                false
            }
            Verdict::Drop => false,
        };
        // The rest of a long line follows its start (or is dropped).
        while !ends {
            match src.next().map_err(Fail::Queue)? {
                Some((bytes, e)) => {
                    if keep_rest {
                        out.put(bytes, e)?;
                    }
                    ends = e;
                }
                None => break,
            }
        }
        match src.next().map_err(Fail::Queue)? {
            Some((bytes, e)) => {
                start = bytes.to_vec();
                ends = e;
            }
            None => return Ok(()),
        }
    }
}

struct Run<'a> {
    f: &'a Filters,
    queue_id: &'a str,
}

impl Run<'_> {
    /// The log line of an action: `ID: warning: header Subject: ...: text`
    /// (the content cut at 60 characters, as Postfix's smtp does).
    fn log(&self, action: &str, class: &str, content: &str, text: &str) {
        let cut: String = content
            .chars()
            .take(60)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if text.is_empty() {
            libmail::info!("{}: {action}: {class} {cut}", self.queue_id);
        } else {
            libmail::info!("{}: {action}: {class} {cut}: {text}", self.queue_id);
        }
    }

    /// Looks `text` up in `maps` and turns the result into a verdict.
    fn check(&self, maps: &Maps, class: &str, text: &str) -> Result<Verdict, Fail> {
        if text.is_empty() {
            return Ok(Verdict::Keep);
        }
        let key = Key {
            text: text.to_string(),
            whole: true,
        };
        let value = match maps.find_first(std::slice::from_ref(&key)) {
            Ok(Some((_, v))) => v,
            Ok(None) => return Ok(Verdict::Keep),
            Err(e) => {
                libmail::warning!(
                    "{}: {} lookup error: {e}",
                    self.queue_id,
                    if class == "header" {
                        "smtp header checks"
                    } else {
                        "smtp body checks"
                    }
                );
                return Err(Fail::Lookup);
            }
        };
        let map = maps.parameter.as_str();
        let word = value.split_whitespace().next().unwrap_or("");
        let supported = [
            "WARN", "INFO", "REPLACE", "PREPEND", "IGNORE", "DUNNO", "OK",
        ]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word));
        if !supported {
            libmail::warning!("unsupported command in {map} map: {}", value.trim());
            return Ok(Verdict::Keep);
        }
        Ok(match checks::parse(&value, class == "header", map) {
            Action::Warn(t) => {
                self.log("warning", class, text, &t);
                Verdict::Keep
            }
            Action::Info(t) => {
                self.log("info", class, text, &t);
                Verdict::Keep
            }
            Action::Replace(t) => {
                self.log("replace", class, text, &t);
                Verdict::Replace(t)
            }
            Action::Prepend(t) => {
                self.log("prepend", class, text, &t);
                Verdict::Prepend(t)
            }
            // Not logged, as cleanup does not log it either.
            Action::Ignore => Verdict::Drop,
            Action::Bad(w) => {
                libmail::warning!("{w}");
                Verdict::Keep
            }
            _ => Verdict::Keep,
        })
    }

    /// One logical header: checks, then the generic mapping, then out.
    fn header(&self, lines: Vec<Vec<u8>>, out: &mut impl Sink) -> Result<(), Fail> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let name_of = |l: &[u8]| {
            let n = header_name_len(l).unwrap_or(0);
            String::from_utf8_lossy(&l[..n]).into_owned()
        };
        let name = name_of(first);
        let maps = if is_mime_header(&name) {
            self.f.mime_header_checks.as_ref()
        } else {
            self.f.header_checks.as_ref()
        };
        let mut lines = lines;
        if let Some(m) = maps {
            let unfolded: Vec<u8> = lines.concat();
            let text = String::from_utf8_lossy(&unfolded);
            match self.check(m, "header", &text)? {
                Verdict::Keep => {}
                Verdict::Drop => return Ok(()),
                Verdict::Replace(t) => lines = vec![t.into_bytes()],
                Verdict::Prepend(t) => out.put(t.as_bytes(), true)?,
            }
        }
        if let Some(g) = &self.f.generic {
            let name = name_of(&lines[0]);
            if generic::is_address_header(&name) {
                if let Some(new) = self.rewrite(g, &name, &lines)? {
                    lines = new;
                }
            }
        }
        for l in &lines {
            out.put(l, true)?;
        }
        Ok(())
    }

    /// The header with its addresses mapped, when one changed.
    fn rewrite(
        &self,
        g: &Generic,
        name: &str,
        lines: &[Vec<u8>],
    ) -> Result<Option<Vec<Vec<u8>>>, Fail> {
        let Ok(unfolded) = String::from_utf8(lines.concat()) else {
            // Not text Facteur can rewrite safely: sent as it is.
            return Ok(None);
        };
        let Some(colon) = unfolded.find(':') else {
            return Ok(None);
        };
        let value = unfolded[colon + 1..].trim();
        let mut failed = None;
        let new = rewrite_addresses(value, |a| {
            let internal = libmail::address::internal(a);
            match g.map(&internal) {
                Ok(Some(r)) => libmail::address::external(&r),
                Ok(None) => a.to_string(),
                Err(e) => {
                    failed.get_or_insert((a.to_string(), e));
                    a.to_string()
                }
            }
        });
        if let Some((a, e)) = failed {
            libmail::warning!(
                "{}: {} map lookup problem for {a}: {e}",
                self.queue_id,
                g.parameter()
            );
            return Err(Fail::Lookup);
        }
        Ok(new.map(|v| {
            generic::fold(name, &v)
                .into_iter()
                .map(String::into_bytes)
                .collect()
        }))
    }

    /// One body line's verdict (`start`: its first bytes).
    fn body(&self, start: &[u8]) -> Result<Verdict, Fail> {
        let Some(m) = &self.f.body_checks else {
            return Ok(Verdict::Keep);
        };
        let n = start.len().min(self.f.body_limit);
        let text = String::from_utf8_lossy(&start[..n]);
        self.check(m, "body", &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::generic::tests::params;

    /// Pieces from a text: each line one piece, lines longer than `piece`
    /// bytes in several (as long lines are in queue files).
    struct Text {
        pieces: Vec<(Vec<u8>, bool)>,
        at: usize,
    }

    impl Text {
        fn new(text: &str, piece: usize) -> Text {
            let mut pieces = Vec::new();
            for line in text.split_terminator('\n') {
                let b = line.as_bytes();
                if b.is_empty() {
                    pieces.push((Vec::new(), true));
                }
                let chunks: Vec<&[u8]> = b.chunks(piece).collect();
                for (i, c) in chunks.iter().enumerate() {
                    pieces.push((c.to_vec(), i + 1 == chunks.len()));
                }
            }
            Text { pieces, at: 0 }
        }
    }

    impl Source for Text {
        fn next(&mut self) -> Result<Option<(&[u8], bool)>, String> {
            self.at += 1;
            Ok(self
                .pieces
                .get(self.at - 1)
                .map(|(b, e)| (b.as_slice(), *e)))
        }
    }

    #[derive(Default)]
    struct Out(Vec<u8>);

    impl Sink for Out {
        fn put(&mut self, bytes: &[u8], ends_line: bool) -> Result<(), IoFail> {
            self.0.extend_from_slice(bytes);
            if ends_line {
                self.0.push(b'\n');
            }
            Ok(())
        }
    }

    fn filters(extra: &str) -> Filters {
        let text = format!(
            "myhostname = mx.example.test\nmydomain = example.test\nmyorigin = example.test\n\
             mydestination = $myhostname, localhost\n{extra}\n"
        );
        Filters::load(&params(&text), "smtp").unwrap()
    }

    fn run(f: &Filters, text: &str, piece: usize) -> Result<String, Fail> {
        let mut out = Out::default();
        copy(f, "ABC", &mut Text::new(text, piece), &mut out)?;
        Ok(String::from_utf8(out.0).unwrap())
    }

    const MSG: &str = "From: Alice <alice@localdomain.local>\nTo: bob@remote.example,\n carol@localdomain.local\nSubject: hello\nX-Secret: drop me\nContent-Type: text/plain\n\nbody line\nsecret body\n.dot\n";

    #[test]
    fn nothing_configured_changes_nothing() {
        let f = filters("");
        assert!(!f.active());
        for piece in [1, 3, 1000] {
            assert_eq!(run(&f, MSG, piece).unwrap(), MSG);
        }
    }

    #[test]
    fn header_actions_the_smtp_client_supports() {
        let f = filters(
            "smtp_header_checks = regexp:{ {/^X-Secret:/ IGNORE}, {/^Subject:/ REPLACE Subject: replaced}, \
             {/^To:/ PREPEND X-Seen: yes}, {/^From:/ REJECT no} }\n\
             smtp_mime_header_checks = regexp:{ {/^Content-Type:/ WARN mime} }",
        );
        let got = run(&f, MSG, 1000).unwrap();
        assert_eq!(
            got,
            "From: Alice <alice@localdomain.local>\nX-Seen: yes\nTo: bob@remote.example,\n carol@localdomain.local\nSubject: replaced\nContent-Type: text/plain\n\nbody line\nsecret body\n.dot\n"
        );
    }

    #[test]
    fn mime_headers_use_only_the_mime_table() {
        // smtp_header_checks does not see Content-Type (Postfix's rule).
        let f = filters("smtp_header_checks = regexp:{ {/^Content-Type:/ IGNORE} }");
        assert!(run(&f, MSG, 1000)
            .unwrap()
            .contains("Content-Type: text/plain\n"));
        let f = filters("smtp_mime_header_checks = regexp:{ {/^Content-Type:/ IGNORE} }");
        assert!(!run(&f, MSG, 1000).unwrap().contains("Content-Type"));
    }

    #[test]
    fn body_actions_and_long_lines() {
        let f = filters(
            "smtp_body_checks = regexp:{ {/^secret/ REPLACE [removed]}, {/^body/ PREPEND before}, \
             {/^x+$$/ IGNORE}, {/^y/ INFO long} }\nline_length_limit = 10",
        );
        let long_x = "x".repeat(25);
        let long_y = format!("y{}", "z".repeat(30));
        let text = format!("Subject: s\n\nbody line\nsecret body\n{long_x}\n{long_y}\nend\n");
        for piece in [1, 4, 7, 1000] {
            let got = run(&f, &text, piece).unwrap();
            // x+ matches only when the check sees the whole line: the
            // check sees its first 10 bytes, which are all x.
            assert_eq!(
                got,
                format!("Subject: s\n\nbefore\nbody line\n[removed]\n{long_y}\nend\n"),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn generic_maps_rewrite_address_headers_only() {
        let f = filters("smtp_generic_maps = inline:{ {@localdomain.local=@isp.example} }");
        let got = run(&f, MSG, 5).unwrap();
        assert!(
            got.starts_with(
                "From: Alice <alice@isp.example>\nTo: bob@remote.example, carol@isp.example\nSubject: hello\n"
            ),
            "{got}"
        );
        // The body is not touched.
        let f = filters("smtp_generic_maps = inline:{ {@localdomain.local=@isp.example} }");
        let got = run(
            &f,
            "Subject: alice@localdomain.local\n\nalice@localdomain.local\n",
            1000,
        )
        .unwrap();
        assert_eq!(
            got,
            "Subject: alice@localdomain.local\n\nalice@localdomain.local\n"
        );
    }

    #[test]
    fn replaced_headers_are_rewritten_too() {
        let f = filters(
            "smtp_header_checks = regexp:{ {/^Reply-To:/ REPLACE Reply-To: x@localdomain.local} }\n\
             smtp_generic_maps = inline:{ {@localdomain.local=@isp.example} }",
        );
        let got = run(&f, "Reply-To: y@z\n\nb\n", 1000).unwrap();
        assert_eq!(got, "Reply-To: x@isp.example\n\nb\n");
    }

    #[test]
    fn oversized_headers_end_header_processing() {
        let f = filters("header_size_limit = 40\nsmtp_header_checks = regexp:{ {/^X-/ IGNORE} }");
        let long = format!("Subject: {}", "s".repeat(60));
        let text = format!("X-A: 1\n{long}\nX-B: 2\n\nbody\n");
        for piece in [3, 1000] {
            // X-A is checked and dropped; the long header and all after it
            // go out unchanged.
            assert_eq!(
                run(&f, &text, piece).unwrap(),
                format!("{long}\nX-B: 2\n\nbody\n")
            );
        }
    }

    #[test]
    fn headers_without_body_and_hostile_input() {
        let f = filters("smtp_header_checks = regexp:{ {/^X-/ IGNORE} }\nsmtp_body_checks = regexp:{ {/^drop/ IGNORE} }");
        assert_eq!(
            run(&f, "Subject: x\nX-Y: z\n", 1000).unwrap(),
            "Subject: x\n"
        );
        assert_eq!(run(&f, "", 1000).unwrap(), "");
        assert_eq!(run(&f, "\n", 1000).unwrap(), "\n");
        assert_eq!(run(&f, " leading\n", 1000).unwrap(), " leading\n");
        assert_eq!(
            run(&f, "S: x\n\ndrop me\nkeep\n", 2).unwrap(),
            "S: x\n\nkeep\n"
        );
        let _ = run(&f, "\u{0}:\n\t\n:\n<\"(\n", 1).unwrap();
    }
}
