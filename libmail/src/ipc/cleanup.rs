//! The cleanup protocol: how pickup, smtpd, bounce, local (forwarding)
//! and `postsuper -r` hand a message to the cleanup daemon
//! (`public/cleanup`), and its client side.
//!
//! ```text
//! client connects
//! cleanup  -> client   queue_id=ID                 the file exists (incomplete) under incoming/
//!                      | status=N reason=TEXT      cannot take mail now (e.g. queue_minfree)
//! client   -> cleanup  envelope list (names below)
//! client   -> cleanup  data chunks: the message, header and body, lines ended by LF
//!                      (the client has removed CR LF and SMTP dot-stuffing), then #0
//! cleanup  -> client   status=0 queue_id=ID        the queue file is complete and durable
//!                      | status=N reason=TEXT      N: the STAT_* bits; TEXT starts with
//!                                                  an enhanced status code ("5.7.1 ...")
//! ```
//!
//! A client that goes away before the end marker leaves nothing behind:
//! cleanup removes the unfinished file. Status 0 is sent only after the
//! file and its directory entry were fsynced, so a client may acknowledge
//! (SMTP 250, remove the maildrop file) as soon as it reads it.
//!
//! **Kept connections.** A client that hands over message after message
//! (smtpd) puts `keep=1` in the envelope. After the verdict cleanup then
//! starts the next message on the same connection at once: it creates
//! the next file and sends its `queue_id=ID` unasked, so the client's next
//! handover needs no connect and no wait (the file is made while the
//! client talks SMTP). A client that has no further message closes the
//! connection, and cleanup removes that unused file, as for any message
//! left before its end. cleanup ends a kept connection after the verdict
//! (no `queue_id` follows, the client reads end of file) when the
//! connection has carried `max_use` messages or the process retires.
//!
//! Envelope attributes, in any order except that the `rcpt.*` ones apply
//! to the `rcpt` before them:
//!
//! | name | value |
//! |---|---|
//! | `origin` | who submits: `pickup`, `smtpd`, `bounce`, `local`, `postsuper` |
//! | `arrival` | `SECONDS.MICROSECONDS` (pickup: the maildrop file's time) |
//! | `sender` | envelope sender, may be empty (null sender) |
//! | `full_name` | sender full name (sendmail -F) |
//! | `envid`, `ret` | DSN ENVID and RET flags |
//! | `rcpt` | one envelope recipient |
//! | `rcpt.orig`, `rcpt.notify`, `rcpt.orcpt` | its original form, NOTIFY flags, ORCPT |
//! | `attr.NAME` | a named attribute to keep (`rewrite_context`, `client_name`, `client_address`, `client_port`, `helo_name`, `protocol`, `sasl_method`, `sasl_username`, `log_uid`, ...) |
//! | `orig_id` | the queue ID of the message being requeued (`postsuper -r`) |
//! | `flags` | the `FLAG_*` bits |
//! | `smtputf8`, `body` | `SMTPUTF8` requested, `BODY=` value |

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::attr::{Attrs, Conn, MAX_CHUNK};

/// Status bits (Postfix's CLEANUP_STAT_* values).
pub const STAT_OK: u32 = 0;
/// Protocol or internal error.
pub const STAT_BAD: u32 = 1 << 0;
/// Error writing the queue file (disk full, I/O error).
pub const STAT_WRITE: u32 = 1 << 1;
/// Message larger than `message_size_limit`.
pub const STAT_SIZE: u32 = 1 << 2;
/// Content rejected (header_checks, body_checks).
pub const STAT_CONT: u32 = 1 << 3;
/// Too many hops (Received: / Delivered-To: count).
pub const STAT_HOPS: u32 = 1 << 4;
/// No recipients.
pub const STAT_RCPT: u32 = 1 << 6;
/// Temporary refusal (e.g. queue_minfree not met, DEFER action).
pub const STAT_DEFER: u32 = 1 << 8;

/// Flag bits (Postfix's CLEANUP_FLAG_* meanings).
/// Return undeliverable mail to the sender (clear for bounces themselves).
pub const FLAG_BOUNCE: u32 = 1 << 0;
/// Mail is being requeued: keep the existing headers as they are.
pub const FLAG_REQUEUE: u32 = 1 << 1;
/// Discard the message (a DISCARD action already decided it).
pub const FLAG_DISCARD: u32 = 1 << 2;
/// Extract recipients from To:, Cc:, Bcc: (sendmail -t done by cleanup).
pub const FLAG_EXTRACT: u32 = 1 << 3;
/// Put the message on hold.
pub const FLAG_HOLD: u32 = 1 << 4;
/// The recipients may still change once the content is in (smtpd has
/// end-of-data restrictions, whose REDIRECT and BCC come in the late
/// list): cleanup writes them after the content.
pub const FLAG_LATE_RCPTS: u32 = 1 << 5;
/// No address mapping: canonical and virtual alias maps, masquerading,
/// automatic BCC (`receive_override_options = no_address_mappings`).
pub const FLAG_NO_MAPS: u32 = 1 << 6;
/// No header_checks, mime/nested_header_checks or body_checks
/// (`receive_override_options = no_header_body_checks`).
pub const FLAG_NO_CHECKS: u32 = 1 << 7;

/// The cleanup request flags ([`FLAG_NO_MAPS`], [`FLAG_NO_CHECKS`]) of a
/// receiving service's (smtpd's, pickup's) `receive_override_options`,
/// typically set on the service that takes mail back from a content
/// filter so that mapping and checks are not done twice.
/// `no_unknown_recipient_checks` is smtpd's own (see
/// [`receive_override_names`]); `no_milters` is taken (there are no
/// milters); an unknown word is warned about and ignored.
pub fn receive_override_flags(value: &str) -> u32 {
    let mut flags = 0;
    for w in override_words(value) {
        match w.to_ascii_lowercase().as_str() {
            "no_address_mappings" => flags |= FLAG_NO_MAPS,
            "no_header_body_checks" => flags |= FLAG_NO_CHECKS,
            "no_unknown_recipient_checks" | "no_milters" => {}
            _ => crate::warning!("receive_override_options: unknown option \"{w}\" ignored"),
        }
    }
    flags
}

/// Whether `receive_override_options` names `option` (no warnings).
pub fn receive_override_names(value: &str, option: &str) -> bool {
    override_words(value).any(|w| w.eq_ignore_ascii_case(option))
}

fn override_words(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
}

/// What was decided once the content was in (smtpd's end-of-data
/// restrictions), sent after the content as one attribute list: HOLD and
/// DISCARD as `flags` bits, a FILTER as `filter`, a REDIRECT as
/// `redirect`, BCC addresses as `bcc` (repeated). Cleanup applies them as
/// if the envelope had carried them; the filter and the redirection win
/// over what the content's checks chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Late {
    pub flags: u32,
    pub filter: Option<String>,
    pub redirect: Option<String>,
    pub bcc: Vec<String>,
}

impl Late {
    pub fn is_empty(&self) -> bool {
        self.flags & (FLAG_HOLD | FLAG_DISCARD) == 0
            && self.filter.is_none()
            && self.redirect.is_none()
            && self.bcc.is_empty()
    }

    pub fn to_attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        let flags = self.flags & (FLAG_HOLD | FLAG_DISCARD);
        if flags != 0 {
            a.push("flags", flags);
        }
        if let Some(f) = &self.filter {
            a.push("filter", f);
        }
        if let Some(r) = &self.redirect {
            a.push("redirect", r);
        }
        for b in &self.bcc {
            a.push("bcc", b);
        }
        a
    }

    /// A late list as cleanup accepts it: only those names, `flags` with
    /// HOLD and DISCARD bits only, `flags`, `filter` and `redirect` at
    /// most once, values not empty, at most 1,000 `bcc`; `None` for
    /// anything else (a protocol error).
    pub fn from_attrs(a: &Attrs) -> Option<Late> {
        let mut late = Late::default();
        let mut have_flags = false;
        for (name, v) in a.iter() {
            match name {
                "flags" if !have_flags => {
                    have_flags = true;
                    late.flags = v
                        .parse::<u32>()
                        .ok()
                        .filter(|f| f & !(FLAG_HOLD | FLAG_DISCARD) == 0)?;
                }
                "filter" if late.filter.is_none() && !v.is_empty() => {
                    late.filter = Some(v.to_string())
                }
                "redirect" if late.redirect.is_none() && !v.is_empty() => {
                    late.redirect = Some(v.to_string())
                }
                "bcc" if !v.is_empty() && late.bcc.len() < 1000 => late.bcc.push(v.to_string()),
                _ => return None,
            }
        }
        (have_flags || !late.is_empty()).then_some(late)
    }
}

/// Whether a status is temporary (the client should retry later).
pub fn is_temporary(status: u32) -> bool {
    status & (STAT_WRITE | STAT_DEFER | STAT_BAD) != 0 && status & (STAT_CONT | STAT_SIZE) == 0
}

/// Default reply text for a status without one, with its enhanced code.
pub fn default_reason(status: u32) -> &'static str {
    if status & STAT_DEFER != 0 {
        "4.7.1 Service unavailable - try again later"
    } else if status & STAT_CONT != 0 {
        "5.7.1 Message content rejected"
    } else if status & STAT_SIZE != 0 {
        "5.3.4 Message size exceeds fixed limit"
    } else if status & STAT_HOPS != 0 {
        "5.4.6 Too many hops"
    } else if status & STAT_RCPT != 0 {
        "5.1.0 No recipients specified"
    } else if status & STAT_WRITE != 0 {
        "4.3.0 Error: queue file write error"
    } else {
        "4.3.0 Error: internal error"
    }
}

/// Cleanup said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u32,
    /// Starts with an enhanced status code.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A failed handover.
#[derive(Debug)]
pub enum CleanupError {
    /// The service could not be reached or the connection broke: retry.
    Io(io::Error),
    Refused(Refused),
}

impl std::fmt::Display for CleanupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CleanupError::Io(e) => write!(f, "cleanup service: {e}"),
            CleanupError::Refused(r) => write!(f, "{r}"),
        }
    }
}

impl From<io::Error> for CleanupError {
    fn from(e: io::Error) -> Self {
        CleanupError::Io(e)
    }
}

fn refused(a: &Attrs) -> Option<Refused> {
    let status: u32 = a.get_num("status").unwrap_or(STAT_BAD);
    if status == STAT_OK {
        return None;
    }
    Some(Refused {
        status,
        reason: a
            .get("reason")
            .filter(|r| !r.is_empty())
            .unwrap_or(default_reason(status))
            .to_string(),
    })
}

/// The client side of one message handover.
pub struct CleanupClient {
    conn: Conn<UnixStream>,
    queue_id: String,
    /// Ask cleanup to keep the connection (see the module comment).
    keep: bool,
}

/// A kept connection between two messages: cleanup is making the next
/// message's file, and its queue ID comes unasked.
pub struct Kept {
    conn: Conn<UnixStream>,
}

impl CleanupClient {
    /// Connects to `public/cleanup` under `queue_directory` and reads the
    /// new message's queue ID.
    pub fn connect(queue_directory: &Path, timeout: Duration) -> Result<Self, CleanupError> {
        let s = super::connect(&super::public(queue_directory, "cleanup"), timeout)?;
        Self::over(s)
    }

    /// [`connect`](Self::connect), for a connection cleanup keeps after the
    /// message ([`verdict`](Self::verdict) gives it back as [`Kept`]).
    pub fn connect_kept(queue_directory: &Path, timeout: Duration) -> Result<Self, CleanupError> {
        let mut c = Self::connect(queue_directory, timeout)?;
        c.keep = true;
        Ok(c)
    }

    /// Starts a handover on an already connected stream.
    pub fn over(s: UnixStream) -> Result<Self, CleanupError> {
        Self::start(Conn::new(s), false)
    }

    fn start(mut conn: Conn<UnixStream>, keep: bool) -> Result<Self, CleanupError> {
        let first = conn.expect()?;
        if let Some(r) = refused(&first).filter(|_| first.get("queue_id").is_none()) {
            return Err(CleanupError::Refused(r));
        }
        let queue_id = first.require("queue_id")?.to_string();
        Ok(CleanupClient {
            conn,
            queue_id,
            keep,
        })
    }

    /// The queue ID cleanup gave the message.
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// Sends the envelope list.
    pub fn envelope(&mut self, attrs: &Attrs) -> io::Result<()> {
        if self.keep {
            let mut a = attrs.clone();
            a.push("keep", 1);
            self.conn.put(&a);
        } else {
            self.conn.put(attrs);
        }
        Ok(())
    }

    /// Sends message content (any amount; split into chunks here).
    pub fn content(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(MAX_CHUNK);
            self.conn.put_data(&bytes[..n]);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// After the content, before [`end`](Self::end): what was decided
    /// once the content was in ([`Late`]).
    pub fn late(&mut self, late: &Late) {
        self.conn.put(&late.to_attrs());
    }

    /// Ends the content and waits for the verdict: the queue ID once the
    /// file is durable.
    pub fn finish(mut self) -> Result<String, CleanupError> {
        self.end()?;
        self.verdict().0
    }

    /// Ends the content; the verdict follows on [`fd`](Self::fd).
    pub fn end(&mut self) -> io::Result<()> {
        self.conn.put_data(b"");
        self.conn.flush()
    }

    /// Where the verdict will be readable (for a caller that waits in an
    /// event loop rather than in [`verdict`](Self::verdict)).
    pub fn fd(&self) -> RawFd {
        self.conn.get_ref().as_raw_fd()
    }

    /// Reads the verdict, after [`end`](Self::end): the queue ID once the
    /// file is durable; with it the connection, when cleanup keeps it.
    pub fn verdict(mut self) -> (Result<String, CleanupError>, Option<Kept>) {
        let reply = match self.conn.expect() {
            Ok(r) => r,
            Err(e) => return (Err(e.into()), None),
        };
        let kept = self.keep.then_some(Kept { conn: self.conn });
        match refused(&reply) {
            Some(r) => (Err(CleanupError::Refused(r)), kept),
            None => (
                Ok(reply.get("queue_id").unwrap_or(&self.queue_id).to_string()),
                kept,
            ),
        }
    }
}

impl Kept {
    /// Whether the next queue ID (or cleanup's end of the connection) is
    /// here, so that [`resume`](Self::resume) will not wait.
    pub fn ready(&self) -> bool {
        if self.conn.buffered() {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.conn.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// The next handover on this connection (waits for its queue ID if
    /// cleanup has not sent it yet). An error when cleanup ended the
    /// connection instead: connect again.
    pub fn resume(self) -> Result<CleanupClient, CleanupError> {
        CleanupClient::start(self.conn, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_list_goes_over_the_wire_and_cleanup_takes_only_its_names() {
        let late = Late {
            flags: FLAG_HOLD,
            filter: Some("smtp:[h]:1".into()),
            redirect: Some("x@y".into()),
            bcc: vec!["a@b".into(), "c@d".into()],
        };
        assert_eq!(Late::from_attrs(&late.to_attrs()), Some(late));
        let from = |a: Attrs| Late::from_attrs(&a);
        assert_eq!(
            from(Attrs::new().with("flags", FLAG_HOLD | FLAG_DISCARD)).map(|l| l.flags),
            Some(FLAG_HOLD | FLAG_DISCARD)
        );
        // Any other bit, name, an attribute twice where once is the
        // rule, an empty value, or nothing: not accepted there.
        assert_eq!(from(Attrs::new().with("flags", 1u32 << 9)), None);
        assert_eq!(from(Attrs::new().with("flags", "x")), None);
        assert_eq!(from(Attrs::new().with("rcpt", "a@b")), None);
        assert_eq!(
            from(Attrs::new().with("flags", FLAG_HOLD).with("rcpt", "a@b")),
            None
        );
        assert_eq!(
            from(Attrs::new().with("filter", "a:b").with("filter", "c:d")),
            None
        );
        assert_eq!(
            from(Attrs::new().with("redirect", "a@b").with("redirect", "c@d")),
            None
        );
        assert_eq!(from(Attrs::new().with("bcc", "")), None);
        assert_eq!(from(Attrs::new()), None);
    }

    #[test]
    fn statuses_have_default_reasons_with_enhanced_codes() {
        for s in [
            STAT_DEFER, STAT_CONT, STAT_SIZE, STAT_HOPS, STAT_RCPT, STAT_WRITE, STAT_BAD,
        ] {
            let r = default_reason(s);
            assert!(r.as_bytes()[0] == b'4' || r.as_bytes()[0] == b'5', "{r}");
        }
        assert!(is_temporary(STAT_WRITE));
        assert!(is_temporary(STAT_DEFER));
        assert!(!is_temporary(STAT_CONT));
        assert!(!is_temporary(STAT_SIZE));
    }

    #[test]
    fn client_reads_queue_id_then_verdict() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut c = Conn::new(b);
            c.send(&Attrs::new().with("queue_id", "ABC123")).unwrap();
            let env = c.expect().unwrap();
            assert_eq!(env.get("sender"), Some("a@b"));
            let mut body = Vec::new();
            loop {
                match c.recv_item().unwrap().unwrap() {
                    super::super::Item::Data(d) if d.is_empty() => break,
                    super::super::Item::Data(d) => body.extend(d),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(body, b"Subject: x\n\nhi\n");
            c.send(&Attrs::new().with("status", 0).with("queue_id", "ABC123"))
                .unwrap();
        });
        let mut cl = CleanupClient::over(a).unwrap();
        assert_eq!(cl.queue_id(), "ABC123");
        cl.envelope(&Attrs::new().with("sender", "a@b").with("rcpt", "c@d"))
            .unwrap();
        cl.content(b"Subject: x\n\nhi\n").unwrap();
        assert_eq!(cl.finish().unwrap(), "ABC123");
        server.join().unwrap();
    }

    #[test]
    fn kept_connection_carries_the_next_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut c = Conn::new(b);
            for (n, id) in ["A1", "B2"].iter().enumerate() {
                c.send(&Attrs::new().with("queue_id", id)).unwrap();
                let env = c.expect().unwrap();
                assert_eq!(env.get("keep"), Some("1"));
                assert_eq!(
                    c.recv_item().unwrap(),
                    Some(super::super::Item::Data(vec![]))
                );
                let status = if n == 0 { STAT_OK } else { STAT_CONT };
                c.send(&Attrs::new().with("status", status).with("queue_id", id))
                    .unwrap();
            }
            // No third queue ID: the connection ends here.
        });
        let mut cl = CleanupClient::start(Conn::new(a), true).unwrap();
        assert_eq!(cl.queue_id(), "A1");
        cl.envelope(&Attrs::new().with("sender", "")).unwrap();
        cl.end().unwrap();
        let (r, kept) = cl.verdict();
        assert_eq!(r.unwrap(), "A1");
        let mut cl = kept.expect("kept").resume().unwrap();
        assert_eq!(cl.queue_id(), "B2");
        cl.envelope(&Attrs::new().with("sender", "")).unwrap();
        cl.end().unwrap();
        let (r, kept) = cl.verdict();
        assert!(matches!(r, Err(CleanupError::Refused(ref x)) if x.status == STAT_CONT));
        server.join().unwrap();
        let kept = kept.expect("kept after a refusal too");
        assert!(kept.ready(), "end of file is ready");
        assert!(kept.resume().is_err());
    }

    #[test]
    fn refusal_carries_status_and_reason() {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut c = Conn::new(b);
            c.send(&Attrs::new().with("status", STAT_DEFER)).unwrap();
        });
        match CleanupClient::over(a) {
            Err(CleanupError::Refused(r)) => {
                assert_eq!(r.status, STAT_DEFER);
                assert!(r.reason.starts_with("4.7.1"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
