//! Mailbox writers shared by the `local` and `virtual` delivery agents:
//! Maildir ([`maildir`]), mbox ([`mbox`]) and their locks ([`lock`]),
//! plus the one routine that copies a message into any of them (and into
//! a command's standard input): [`copy_message`].
//!
//! The contract both writers keep is Facteur's first principle seen from
//! the delivery side: a delivery is reported only once it is on stable
//! storage, and a failed delivery leaves nothing half-written behind.
//!
//! * Maildir: the message is written under `tmp/`, fsynced, renamed into
//!   `new/`, and `new/` is fsynced. A crash leaves a file in `tmp/` (which
//!   mail readers ignore and clean up), never a partial one in `new/`.
//! * mbox: the file is locked (`mailbox_delivery_lock`), its size noted,
//!   the message appended and fsynced; on any error the file is truncated
//!   back to the noted size, so the mailbox never holds a partial message
//!   that a reader would merge with the next one.
//!
//! The message comes from a [`Source`] of line pieces (a queue file's
//! [`ContentReader`], or bytes in memory). Lines are streamed piece by
//! piece, so a long line costs at most one queue record of memory.
//!
//! Errors carry an enhanced status code the way Postfix's `mbox_dsn`
//! chooses it: "file too large" and "over quota" are permanent (`5.2.2`),
//! everything else is temporary (`4.x.x`): the queue keeps the message.

pub mod lock;
pub mod maildir;
pub mod mbox;

use std::io::{self, Write};

use crate::queue::ContentReader;

/// Longest header line [`delivered_to`] inspects; longer lines are skipped
/// (a `Delivered-To:` that long is not one we wrote).
pub const MAX_HEADER_LINE: usize = 4096;
/// Most `Delivered-To:` headers [`delivered_to`] keeps (Postfix stops
/// looking after a few too; a message with more is a loop anyway).
pub const MAX_DELIVERED_TO: usize = 1000;

/// A message's content as pieces of lines, in order.
pub trait Source {
    /// The next piece and whether it ends its line; `None` at the end.
    fn next_piece(&mut self) -> io::Result<Option<(&[u8], bool)>>;
}

impl Source for ContentReader<'_> {
    fn next_piece(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        ContentReader::next_piece(self)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// A message held in memory (`\n`-ended lines; a last line without `\n`
/// counts as a line). For tests and small generated messages.
pub struct SliceSource<'a> {
    rest: &'a [u8],
}

impl<'a> SliceSource<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        SliceSource { rest: bytes }
    }
}

impl Source for SliceSource<'_> {
    fn next_piece(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        Ok(Some((line, true)))
    }
}

/// How a message is copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Quote lines that start with `From ` as `>From ` (mbox).
    pub from_quote: bool,
    /// End with an empty line (mbox: the separator before the next `From `).
    pub blank_line: bool,
}

/// Why a copy failed: reading the message, or writing it.
#[derive(Debug)]
pub enum CopyError {
    /// The message could not be read (a damaged queue file): retry later,
    /// qmgr deals with the file.
    Read(io::Error),
    Write(io::Error),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Read(e) => write!(f, "error reading message: {e}"),
            CopyError::Write(e) => write!(f, "error writing message: {}", strerror(e)),
        }
    }
}

/// An I/O error's text without Rust's ` (os error N)` suffix, as Postfix's
/// `%m` prints it.
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let s = io::Error::from_raw_os_error(n).to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

/// A writer that refuses to grow past `limit` bytes (0 = no limit) with
/// `EFBIG`, as the kernel does under Postfix's RLIMIT_FSIZE.
pub struct Limited<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Limited<W> {
    /// `already`: bytes the file holds before (counted against `limit`).
    pub fn new(inner: W, already: u64, limit: u64) -> Self {
        Limited {
            inner,
            written: already,
            limit,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.limit > 0 && self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `prefix` (ready-made lines such as `From ...`, `Return-Path:`,
/// `Delivered-To:`), then the message, lines ended by `\n`. Returns the
/// bytes written. The caller flushes and syncs.
pub fn copy_message<W: Write>(
    out: &mut W,
    prefix: &[u8],
    src: &mut dyn Source,
    opts: CopyOptions,
) -> Result<u64, CopyError> {
    let mut n = prefix.len() as u64;
    out.write_all(prefix).map_err(CopyError::Write)?;
    let mut at_start = true;
    // The start of a line shorter than "From " so far (pieces may be tiny).
    let mut head: Vec<u8> = Vec::new();
    let put = |out: &mut W, b: &[u8], n: &mut u64| -> Result<(), CopyError> {
        *n += b.len() as u64;
        out.write_all(b).map_err(CopyError::Write)
    };
    let quote = |out: &mut W, line_start: &[u8], n: &mut u64| -> Result<(), CopyError> {
        if opts.from_quote && line_start.starts_with(b"From ") {
            *n += 1;
            out.write_all(b">").map_err(CopyError::Write)?;
        }
        Ok(())
    };
    loop {
        let piece = src.next_piece().map_err(CopyError::Read)?;
        let Some((p, end)) = piece else {
            if !head.is_empty() {
                quote(out, &head, &mut n)?;
                put(out, &head, &mut n)?;
                put(out, b"\n", &mut n)?;
            }
            break;
        };
        if at_start {
            if head.is_empty() && (p.len() >= 5 || end) {
                quote(out, p, &mut n)?;
                put(out, p, &mut n)?;
                at_start = false;
            } else {
                head.extend_from_slice(p);
                if head.len() >= 5 || end {
                    quote(out, &head, &mut n)?;
                    put(out, &head, &mut n)?;
                    head.clear();
                    at_start = false;
                }
            }
        } else {
            put(out, p, &mut n)?;
        }
        if end {
            put(out, b"\n", &mut n)?;
            at_start = true;
        }
    }
    if opts.blank_line {
        put(out, b"\n", &mut n)?;
    }
    Ok(n)
}

/// The values of the message's `Delivered-To:` headers, lower-cased, for
/// mail loop detection. Reads the header section only; bounded by
/// [`MAX_HEADER_LINE`] and [`MAX_DELIVERED_TO`].
pub fn delivered_to(src: &mut dyn Source) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    let mut lines = 0usize;
    while let Some((p, end)) = src.next_piece()? {
        if !too_long {
            if line.len() + p.len() > MAX_HEADER_LINE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(p);
            }
        }
        if !end {
            continue;
        }
        lines += 1;
        if !too_long {
            if line.is_empty() {
                break; // end of the header section
            }
            if line.len() > 13 && line[..13].eq_ignore_ascii_case(b"delivered-to:") {
                let v = String::from_utf8_lossy(&line[13..]).trim().to_lowercase();
                if found.len() < MAX_DELIVERED_TO {
                    found.push(v);
                }
            } else if lines == 1 && !line.contains(&b':') {
                break; // no header section at all
            }
        }
        too_long = false;
        line.clear();
    }
    Ok(found)
}

/// Why a mailbox delivery failed, with the enhanced status code; the
/// first digit says whether to bounce (`5`) or defer (`4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxError {
    pub dsn: String,
    pub text: String,
}

impl MailboxError {
    pub fn new(dsn: &str, text: impl Into<String>) -> Self {
        MailboxError {
            dsn: dsn.to_string(),
            text: text.into(),
        }
    }

    /// From an I/O error, Postfix's `mbox_dsn`: too large or over quota
    /// is permanent (`5.2.2`), anything else takes `default_dsn`.
    pub fn io(e: &io::Error, default_dsn: &str, text: impl Into<String>) -> Self {
        let dsn = match e.raw_os_error() {
            Some(libc::EFBIG) | Some(libc::EDQUOT) => "5.2.2",
            _ => default_dsn,
        };
        MailboxError::new(dsn, text)
    }

    pub fn is_permanent(&self) -> bool {
        self.dsn.starts_with('5')
    }
}

impl std::fmt::Display for MailboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Maps a copy failure to a mailbox error (`what` names the destination).
pub(crate) fn copy_failure(e: &CopyError) -> MailboxError {
    match e {
        CopyError::Read(_) => MailboxError::new("4.3.0", e.to_string()),
        CopyError::Write(w) => MailboxError::io(w, "4.3.0", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that hands out tiny pieces, to test line reassembly.
    struct Tiny {
        pieces: Vec<(Vec<u8>, bool)>,
        i: usize,
    }

    impl Source for Tiny {
        fn next_piece(&mut self) -> io::Result<Option<(&[u8], bool)>> {
            let i = self.i;
            self.i += 1;
            Ok(self.pieces.get(i).map(|(p, e)| (p.as_slice(), *e)))
        }
    }

    #[test]
    fn from_lines_are_quoted_even_across_pieces() {
        let mut out = Vec::new();
        let opts = CopyOptions {
            from_quote: true,
            blank_line: true,
        };
        let n = copy_message(
            &mut out,
            b"P: x\n",
            &mut SliceSource::new(b"Subject: a\n\nFrom me\n>From you\nFrom\nFro\n"),
            opts,
        )
        .unwrap();
        assert_eq!(
            out,
            b"P: x\nSubject: a\n\n>From me\n>From you\nFrom\nFro\n\n".to_vec()
        );
        assert_eq!(n, out.len() as u64);

        let mut t = Tiny {
            pieces: vec![
                (b"Fr".to_vec(), false),
                (b"om".to_vec(), false),
                (b" x".to_vec(), true),
                (b"Fro".to_vec(), true),
            ],
            i: 0,
        };
        let mut out = Vec::new();
        copy_message(&mut out, b"", &mut t, opts).unwrap();
        assert_eq!(out, b">From x\nFro\n\n".to_vec());
    }

    #[test]
    fn no_quoting_without_the_option() {
        let mut out = Vec::new();
        copy_message(
            &mut out,
            b"",
            &mut SliceSource::new(b"\nFrom x\n"),
            CopyOptions::default(),
        )
        .unwrap();
        assert_eq!(out, b"\nFrom x\n".to_vec());
    }

    #[test]
    fn limited_writer_refuses_with_efbig() {
        let mut w = Limited::new(Vec::new(), 10, 15);
        assert!(w.write_all(b"12345").is_ok());
        let e = w.write_all(b"6").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        let m = MailboxError::io(&e, "4.3.0", "x");
        assert!(m.is_permanent());
        assert_eq!(m.dsn, "5.2.2");
        assert_eq!(strerror(&e), "File too large");
    }

    #[test]
    fn delivered_to_headers_are_found_in_the_header_only() {
        let msg = b"Received: x\nDelivered-To: Bob@Example.com\n  folded\ndelivered-to:a@b\n\nDelivered-To: body@x\n";
        let v = delivered_to(&mut SliceSource::new(msg)).unwrap();
        assert_eq!(v, vec!["bob@example.com", "a@b"]);
        let long = format!("X: {}\nDelivered-To: c@d\n\n", "a".repeat(10_000));
        let v = delivered_to(&mut SliceSource::new(long.as_bytes())).unwrap();
        assert_eq!(v, vec!["c@d"]);
        assert!(
            delivered_to(&mut SliceSource::new(b"no header\nDelivered-To: x\n"))
                .unwrap()
                .is_empty()
        );
    }
}
