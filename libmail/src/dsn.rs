//! Delivery status notifications: the RFC 3464 `multipart/report`
//! messages the bounce daemon sends when mail fails, is delayed, or was
//! delivered with NOTIFY=SUCCESS, and the bounce(5) templates that word
//! their first part.
//!
//! This module only composes. It takes what is known about the original
//! message (its envelope, the per-recipient entries of a `bounce/`,
//! `defer/` or `trace/` log, the part of its content to return) and
//! returns the notification's bytes, lines ended by LF as the cleanup
//! protocol takes them. Reading the logs and the queue file, choosing who
//! gets a notice and submitting it belong to the bounce daemon
//! (`daemons/src/bounce`).
//!
//! # Shape of a notification
//!
//! ```text
//! From: Mail Delivery System <MAILER-DAEMON>     template From:
//! Subject: Undelivered Mail Returned to Sender    template Subject: (Postmaster-Subject: in postmaster copies)
//! To: <who gets the notice>
//! References:, In-Reply-To:                       the original Message-ID (enable_threaded_bounces = yes)
//! Auto-Submitted: auto-replied                    auto-generated in postmaster copies (RFC 3834)
//! Date:, Message-ID: <YYYYMMDDhhmmss.NEWID@myhostname>
//! MIME-Version: 1.0
//! Content-Type: multipart/report; report-type=delivery-status;
//!         boundary="QUEUEID.TIME/myhostname"
//! Content-Transfer-Encoding: 7bit | 8bit
//!
//! part 1  text/plain: the template text (left out of postmaster copies), then
//!         one paragraph per recipient: "<address> (expanded from <orig>): reason",
//!         wrapped at 79 columns, continuation lines indented by 4
//! part 2  message/delivery-status (message/global-delivery-status for SMTPUTF8 mail)
//!         per message:   Reporting-MTA: dns; myhostname
//!                        Original-Envelope-Id: (ENVID, when given)
//!                        X-Postfix-Queue-ID: ID, X-Postfix-Sender: rfc822; sender
//!                        Arrival-Date:
//!         per recipient: Final-Recipient: rfc822; address
//!                        Original-Recipient: the ORCPT as given, else rfc822; the address
//!                                            before rewriting
//!                        Action: failed | delayed | delivered | relayed | expanded
//!                        Status: X.Y.Z
//!                        Remote-MTA: dns; host      when the reason is a remote reply
//!                        Diagnostic-Code: smtp; 550 5.1.1 ...  (remote reply)
//!                                       | X-Postfix; reason    (anything else)
//!                        Last-Attempt-Date:, Will-Retry-Until: (delay notices)
//! part 3  message/rfc822 (the whole message, Return-Path: first) or
//!         text/rfc822-headers (its header only); message/global and
//!         message/global-headers for SMTPUTF8 mail
//! ```
//!
//! The `X-Postfix-Queue-ID`, `X-Postfix-Sender` field names and the
//! `X-Postfix` diagnostic type are Postfix's `X-$mail_name-...`: with the
//! default `mail_name = Postfix` they are exactly what bounce parsers
//! (and people) look for, and a site that renamed its mail system gets
//! its own name, as with Postfix. The subjects and the From: line of the
//! built-in templates are Postfix's too, for the same reason (mail
//! filters match them); the message text is Facteur's own.
//!
//! Returned content follows RFC 3461 and Postfix: RET=HDRS returns the
//! header only, RET=FULL (and no RET, for failures) the whole message —
//! unless it is larger than `bounce_size_limit`, then only its header, so
//! the MIME structure is never cut. Delay and success notices return the
//! header unless RET=FULL was asked.
//!
//! Nothing from the original message or a remote server is trusted:
//! control characters in reasons become `?` (and non-ASCII too, unless
//! the message was SMTPUTF8), and the MIME boundary is checked against
//! every line of every part, so returned content cannot end a part.
//!
//! # Templates (bounce(5))
//!
//! `bounce_template_file` names a file of templates, Postfix's format:
//!
//! ```text
//! # comment
//! failure_template = <<EOF
//! Charset: us-ascii
//! From: Mail Delivery System <MAILER-DAEMON>
//! Subject: Undelivered Mail Returned to Sender
//! Postmaster-Subject: Postmaster Copy: Undelivered Mail
//!
//! text with $myhostname and $maximal_queue_lifetime_days ...
//! EOF
//! ```
//!
//! Templates are `failure_template`, `delay_template`, `success_template`
//! and `verify_template`; each starts with `name = <<WORD` and ends with
//! a line holding WORD alone. Header lines (`Charset`, `From`, `Subject`,
//! `Postmaster-Subject` — only in the failure and delay templates) come
//! first, case-insensitive, ASCII, one line each, without `$` expansion;
//! the text follows after blank lines. In the text, `$name` (and every
//! form of main.cf expansion) takes main.cf values, `$$` is a `$`, and
//! `delay_warning_time_UNIT` / `maximal_queue_lifetime_UNIT` (UNIT one of
//! seconds, minutes, hours, days, weeks) give those times as whole units.
//! Non-ASCII text needs a Charset other than us-ascii. A template with a
//! bad header, no text, or an undefined `$name` is ignored with a warning
//! (the built-in one is used); a file that does not parse is an error.

use std::io;

use crate::config::expand::{Expansion, Lookup};
use crate::queue::file::{
    DSN_NOTIFY_DELAY, DSN_NOTIFY_FAILURE, DSN_NOTIFY_NEVER, DSN_NOTIFY_SUCCESS, DSN_RET_FULL,
    DSN_RET_HDRS,
};

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Undeliverable: bounced recipients, or pending ones at expiry.
    Failure,
    /// Still being retried (`delay_warning_time`).
    Delay,
    /// Delivered (NOTIFY=SUCCESS).
    Success,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Success => "success",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "failure" => Some(Kind::Failure),
            "delay" => Some(Kind::Delay),
            "success" => Some(Kind::Success),
            _ => None,
        }
    }

    /// The NOTIFY flag that asks for this kind of notice.
    pub fn notify_flag(self) -> u32 {
        match self {
            Kind::Failure => DSN_NOTIFY_FAILURE,
            Kind::Delay => DSN_NOTIFY_DELAY,
            Kind::Success => DSN_NOTIFY_SUCCESS,
        }
    }

    /// The Action: of a recipient when its log entry does not say.
    fn default_action(self) -> &'static str {
        match self {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
            Kind::Success => "delivered",
        }
    }

    /// The Status: used when a log entry carries no valid code.
    fn default_status(self) -> &'static str {
        match self {
            Kind::Failure => "5.0.0",
            Kind::Delay => "4.0.0",
            Kind::Success => "2.0.0",
        }
    }
}

/// Whether a recipient with these NOTIFY flags gets a notice of `kind`.
/// Without NOTIFY (0) failures and delays are reported and successes
/// are not (RFC 3461 section 4.1, Postfix's behaviour); NEVER gets
/// nothing.
pub fn wants(notify: u32, kind: Kind) -> bool {
    if notify == 0 {
        return kind != Kind::Success;
    }
    notify & DSN_NOTIFY_NEVER == 0 && notify & kind.notify_flag() != 0
}

/// One recipient of a report (from a status log entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipient {
    /// The final recipient.
    pub address: String,
    /// The address before aliasing or rewriting, when it differs.
    pub orig: Option<String>,
    /// The DSN ORCPT, `type;address`, as the client gave it.
    pub orcpt: Option<String>,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded`; empty =
    /// the kind's default. Failure notices always say `failed`.
    pub action: String,
    /// Enhanced status code.
    pub status: String,
    /// Why: the text of the delivery log line.
    pub reason: String,
    /// Time of the attempt (seconds since the epoch; 0 = unknown).
    pub last_attempt: u64,
}

/// What a report returns of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// The whole message, lines ended by LF.
    Message(Vec<u8>),
    /// Its header, lines ended by LF.
    Headers(Vec<u8>),
    /// The queue file could not be read.
    Unavailable,
}

/// Largest header returned (bytes); what is beyond is left out.
pub const MAX_RETURNED_HEADER: usize = 1 << 20;

/// What the original message is, for one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub returned: Returned,
    /// The Message-ID header's value (`<...>`), if it had a valid one.
    pub message_id: Option<String>,
}

impl Original {
    /// The same message with only its header returned.
    pub fn headers_only(&self) -> Original {
        let returned = match &self.returned {
            Returned::Message(b) => {
                let mut end = 0;
                for line in b.split_inclusive(|&c| c == b'\n') {
                    let l = line.strip_suffix(b"\n").unwrap_or(line);
                    if !(matches!(l.first(), Some(b' ' | b'\t')) || is_header_line(l)) {
                        break;
                    }
                    end += line.len();
                }
                if end > MAX_RETURNED_HEADER {
                    Returned::Headers(header_only(b[..MAX_RETURNED_HEADER].to_vec()))
                } else {
                    Returned::Headers(b[..end].to_vec())
                }
            }
            other => other.clone(),
        };
        Original {
            returned,
            message_id: self.message_id.clone(),
        }
    }
}

/// Whether a report returns the whole message (`true`) or its header,
/// before the size check: RET=HDRS → header, RET=FULL → message;
/// without RET, failures return the message, delay and success notices
/// the header. Postmaster copies of failures and delays return the
/// header, postmaster copies of undeliverable bounces the message.
pub fn wants_full_message(kind: Kind, ret: u32, postmaster_copy: bool) -> bool {
    if postmaster_copy {
        return false;
    }
    if ret & DSN_RET_HDRS != 0 {
        return false;
    }
    if ret & DSN_RET_FULL != 0 {
        return true;
    }
    kind == Kind::Failure
}

/// Whether `line` starts a header field (`name:`, the name printable
/// ASCII without space or colon, blanks allowed before the colon).
pub fn is_header_line(line: &[u8]) -> bool {
    let n = line
        .iter()
        .take_while(|&&c| c != b':' && c.is_ascii_graphic())
        .count();
    if n == 0 {
        return false;
    }
    let rest = &line[n..];
    let blanks = rest
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count();
    rest.get(blanks) == Some(&b':')
}

/// Reads the original message's content for a report. `next_piece`
/// yields the content in pieces, each with whether it ends its line (a
/// queue file's `N`/`L` records). `full`: return the whole message when
/// `size` (its content size) is within `limit` (0 = no limit); otherwise,
/// or when the content turns out larger than it said, the header only
/// (at most [`MAX_RETURNED_HEADER`] bytes).
pub fn read_original<F>(
    mut next_piece: F,
    size: u64,
    full: bool,
    limit: u64,
) -> io::Result<Original>
where
    F: FnMut() -> io::Result<Option<(Vec<u8>, bool)>>,
{
    let mut whole = full && (limit == 0 || size <= limit);
    // What is kept, whatever the file says: a message is never larger
    // than its size record says (LF ends are shorter than CRLF).
    let cap = usize::try_from(size).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::new();
    // Where the body starts; None while in the header.
    let mut header_end: Option<usize> = None;
    let mut line_start = true;
    let mut line: Vec<u8> = Vec::new();
    let mut message_id: Option<String> = None;
    while let Some((piece, ends)) = next_piece()? {
        if header_end.is_none() {
            if line_start && !matches!(piece.first(), Some(b' ' | b'\t')) && !is_header_line(&piece)
            {
                header_end = Some(out.len());
                if !whole {
                    break;
                }
            } else {
                if !whole && out.len() + piece.len() + 1 > MAX_RETURNED_HEADER {
                    out = header_only(out);
                    break;
                }
                let room = 4096usize.saturating_sub(line.len());
                line.extend_from_slice(&piece[..piece.len().min(room)]);
            }
        }
        out.extend_from_slice(&piece);
        if ends {
            out.push(b'\n');
            if header_end.is_none() {
                if message_id.is_none() {
                    message_id = message_id_of(&line);
                }
                line.clear();
            }
        }
        line_start = ends;
        if whole && out.len() > cap {
            // Larger than it said: return the header only.
            whole = false;
            if header_end.is_some() || out.len() > MAX_RETURNED_HEADER {
                break;
            }
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let returned = if whole {
        Returned::Message(out)
    } else {
        if let Some(end) = header_end {
            out.truncate(end);
        }
        if out.len() > MAX_RETURNED_HEADER {
            out.truncate(MAX_RETURNED_HEADER);
            out = header_only(out);
        }
        Returned::Headers(out)
    };
    Ok(Original {
        returned,
        message_id,
    })
}

/// Cuts a buffer after its last complete header line.
fn header_only(mut b: Vec<u8>) -> Vec<u8> {
    match b.iter().rposition(|&c| c == b'\n') {
        Some(i) => b.truncate(i + 1),
        None => b.clear(),
    }
    b
}

/// The `<...>` of a `Message-ID:` header line, if it is one.
fn message_id_of(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let (name, value) = text.split_once(':')?;
    if !name.trim_end().eq_ignore_ascii_case("message-id") {
        return None;
    }
    let v = value.trim();
    (v.len() > 2
        && v.starts_with('<')
        && v.ends_with('>')
        && v.bytes().all(|c| c.is_ascii_graphic()))
    .then(|| v.to_string())
}

/// One notification to compose.
pub struct Report<'a> {
    pub kind: Kind,
    /// A copy for the postmaster (notify_classes): Postmaster-Subject,
    /// Auto-Submitted: auto-generated, no template text.
    pub postmaster_copy: bool,
    /// Who gets the notice (the To: header).
    pub to: &'a str,
    /// The original message's queue ID, sender, ENVID, arrival time.
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub envid: Option<&'a str>,
    pub arrival: u64,
    /// The original was SMTPUTF8 mail.
    pub smtputf8: bool,
    pub recipients: &'a [Recipient],
    pub original: &'a Original,
}

/// The reporting side: this system, the template, the new message.
pub struct Reporter<'a> {
    pub myhostname: &'a str,
    pub mail_name: &'a str,
    /// `maximal_queue_lifetime`, for Will-Retry-Until.
    pub max_queue_lifetime: u64,
    /// `enable_threaded_bounces`.
    pub threaded: bool,
    pub template: &'a Template,
    /// The template's text, expanded ([`Template::expand`]).
    pub text: &'a [String],
    /// The notification's own queue ID (for its Message-ID).
    pub new_id: &'a str,
    /// Now, seconds since the epoch.
    pub now: u64,
}

/// Lines in a notification are wrapped at this many columns.
const WRAP: usize = 79;
/// ... and continued with this many spaces.
const INDENT: usize = 4;

/// Composes a notification: header and body, lines ended by LF.
pub fn compose(r: &Report<'_>, m: &Reporter<'_>) -> Vec<u8> {
    let utf8 = r.smtputf8;
    let (returned, original_8bit) = match &r.original.returned {
        Returned::Message(b) | Returned::Headers(b) => (Some(b), !b.is_ascii()),
        Returned::Unavailable => (None, false),
    };
    let template_8bit = m.template.is_8bit();
    // Part 1: the human-readable report.
    let mut text: Vec<String> = Vec::new();
    if !r.postmaster_copy {
        text.extend(m.text.iter().cloned());
    }
    for rc in r.recipients {
        text.push(String::new());
        let addr = clean(&rc.address, utf8);
        let line = match rc
            .orig
            .as_deref()
            .filter(|o| !o.eq_ignore_ascii_case(&rc.address))
        {
            Some(o) => format!(
                "<{addr}> (expanded from <{}>): {}",
                clean(o, utf8),
                clean(&rc.reason, utf8)
            ),
            None => format!("<{addr}>: {}", clean(&rc.reason, utf8)),
        };
        text.extend(wrap(&line, WRAP, INDENT));
    }
    let text_8bit = template_8bit || text.iter().any(|l| !l.is_ascii());
    // Part 2: the delivery status.
    let mut status: Vec<String> = Vec::new();
    status.push(format!("Reporting-MTA: dns; {}", m.myhostname));
    if let Some(e) = r.envid.filter(|e| !e.is_empty()) {
        status.push(format!("Original-Envelope-Id: {}", clean(e, false)));
    }
    let xname = mail_name_atom(m.mail_name);
    status.push(format!("X-{xname}-Queue-ID: {}", r.queue_id));
    let sender = if r.sender.is_empty() {
        "MAILER-DAEMON".to_string()
    } else {
        clean(r.sender, utf8)
    };
    status.push(format!(
        "X-{xname}-Sender: {}; {}",
        addr_type(&sender, utf8),
        sender
    ));
    if r.arrival > 0 {
        status.push(format!("Arrival-Date: {}", mail_date(r.arrival)));
    }
    for rc in r.recipients {
        status.push(String::new());
        let addr = clean(&rc.address, utf8);
        status.push(format!(
            "Final-Recipient: {}; {}",
            addr_type(&addr, utf8),
            addr
        ));
        match (&rc.orcpt, &rc.orig) {
            (Some(o), _) if !o.is_empty() => {
                status.push(format!("Original-Recipient: {}", clean(o, utf8)));
            }
            (_, orig) => {
                let o = clean(orig.as_deref().unwrap_or(&rc.address), utf8);
                status.push(format!(
                    "Original-Recipient: {}; {}",
                    addr_type(&o, utf8),
                    o
                ));
            }
        }
        let action = if r.kind == Kind::Failure || !valid_action(&rc.action) {
            r.kind.default_action()
        } else {
            rc.action.as_str()
        };
        status.push(format!("Action: {action}"));
        let code = if valid_status(&rc.status) {
            rc.status.as_str()
        } else {
            r.kind.default_status()
        };
        status.push(format!("Status: {code}"));
        match remote_reply(&rc.reason) {
            Some((mta, reply)) => {
                status.extend(wrap(
                    &format!("Remote-MTA: dns; {}", clean(mta, false)),
                    WRAP,
                    INDENT,
                ));
                status.extend(wrap(
                    &format!("Diagnostic-Code: smtp; {}", clean(reply, utf8)),
                    WRAP,
                    INDENT,
                ));
            }
            None => status.extend(wrap(
                &format!("Diagnostic-Code: X-{xname}; {}", clean(&rc.reason, utf8)),
                WRAP,
                INDENT,
            )),
        }
        if rc.last_attempt > 0 {
            status.push(format!("Last-Attempt-Date: {}", mail_date(rc.last_attempt)));
        }
        if r.kind == Kind::Delay {
            status.push(format!(
                "Will-Retry-Until: {}",
                mail_date(r.arrival.saturating_add(m.max_queue_lifetime))
            ));
        }
    }
    let status_8bit = status.iter().any(|l| !l.is_ascii());
    // Part 3 and the boundary, unique against every line.
    let mut boundary = format!("{}.{}/{}", r.queue_id, m.now, m.myhostname);
    let mut n = 0u32;
    while collides(&boundary, &text, &status, returned.map(|b| b.as_slice())) {
        n += 1;
        boundary = format!("{}.{}.{n}/{}", r.queue_id, m.now, m.myhostname);
    }
    let any_8bit = text_8bit || status_8bit || original_8bit;
    let mut out: Vec<u8> = Vec::with_capacity(
        4096 + returned.map_or(0, |b| b.len()) + text.iter().map(|l| l.len() + 1).sum::<usize>(),
    );
    let mut put = |s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(b'\n');
    };
    let tpl = m.template;
    put(&format!("From: {}", tpl.from));
    let subject = match (&tpl.postmaster_subject, r.postmaster_copy) {
        (Some(s), true) => s,
        _ => &tpl.subject,
    };
    put(&format!("Subject: {subject}"));
    put(&format!("To: {}", quote_address(&clean(r.to, utf8))));
    if m.threaded {
        if let Some(id) = &r.original.message_id {
            put(&format!("References: {id}"));
            put(&format!("In-Reply-To: {id}"));
        }
    }
    put(&format!(
        "Auto-Submitted: {}",
        if r.postmaster_copy {
            "auto-generated"
        } else {
            "auto-replied"
        }
    ));
    put(&format!("Date: {}", mail_date(m.now)));
    put(&format!(
        "Message-ID: <{}.{}@{}>",
        utc_stamp(m.now),
        m.new_id,
        m.myhostname
    ));
    put("MIME-Version: 1.0");
    put("Content-Type: multipart/report; report-type=delivery-status;");
    put(&format!("\tboundary=\"{boundary}\""));
    put(&format!(
        "Content-Transfer-Encoding: {}",
        if any_8bit { "8bit" } else { "7bit" }
    ));
    put("");
    put("This is a multi-part message in MIME format.");
    put("");
    put(&format!("--{boundary}"));
    put("Content-Description: Notification");
    let charset = if !tpl.charset.eq_ignore_ascii_case("us-ascii") {
        tpl.charset.as_str()
    } else if text_8bit {
        "utf-8"
    } else {
        "us-ascii"
    };
    put(&format!("Content-Type: text/plain; charset={charset}"));
    if text_8bit {
        put("Content-Transfer-Encoding: 8bit");
    }
    put("");
    for l in &text {
        put(l);
    }
    put("");
    put(&format!("--{boundary}"));
    put("Content-Description: Delivery report");
    put(&format!(
        "Content-Type: message/{}delivery-status",
        if utf8 { "global-" } else { "" }
    ));
    if status_8bit {
        put("Content-Transfer-Encoding: 8bit");
    }
    put("");
    for l in &status {
        put(l);
    }
    put("");
    put(&format!("--{boundary}"));
    let undelivered = if r.kind == Kind::Success {
        ""
    } else {
        "Undelivered "
    };
    let headers_only = !matches!(r.original.returned, Returned::Message(_));
    put(&format!(
        "Content-Description: {undelivered}{}",
        if headers_only {
            "Message Headers"
        } else {
            "Message"
        }
    ));
    put(&format!(
        "Content-Type: {}",
        match (headers_only, utf8) {
            (true, false) => "text/rfc822-headers",
            (true, true) => "message/global-headers",
            (false, false) => "message/rfc822",
            (false, true) => "message/global",
        }
    ));
    if original_8bit {
        put("Content-Transfer-Encoding: 8bit");
    }
    put("");
    match returned {
        Some(b) => {
            put(&format!("Return-Path: <{}>", clean(r.sender, utf8)));
            out.extend_from_slice(b);
        }
        None => put("(The original message could not be read.)"),
    }
    out.extend_from_slice(b"\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\n");
    out
}

/// Whether a line of any part starts with `--boundary`.
fn collides(boundary: &str, text: &[String], status: &[String], original: Option<&[u8]>) -> bool {
    let marker = format!("--{boundary}");
    let hit = |l: &[u8]| l.starts_with(marker.as_bytes());
    text.iter().any(|l| hit(l.as_bytes()))
        || status.iter().any(|l| hit(l.as_bytes()))
        || original.is_some_and(|b| b.split(|&c| c == b'\n').any(hit))
}

/// `mail_name` as an RFC 822 atom for `X-NAME` (Postfix's rule: specials
/// and white space become `-`).
fn mail_name_atom(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !"()<>@,;:\\\".[]".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() {
        "Postfix".into()
    } else {
        n
    }
}

/// `rfc822`, or `utf-8` for a non-ASCII address of SMTPUTF8 mail
/// (RFC 6533).
fn addr_type(addr: &str, utf8: bool) -> &'static str {
    if utf8 && !addr.is_ascii() {
        "utf-8"
    } else {
        "rfc822"
    }
}

fn valid_action(a: &str) -> bool {
    matches!(
        a,
        "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    )
}

/// `[245].N.N`, each number of 1 to 3 digits (RFC 3463).
pub fn valid_status(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
}

/// A reason that carries a remote server's reply, as the smtp and lmtp
/// clients log it: `host NAME[ADDR] said: REPLY (in reply to CMD
/// command)` → (NAME, REPLY).
pub fn remote_reply(reason: &str) -> Option<(&str, &str)> {
    let rest = reason.strip_prefix("host ")?;
    let (peer, reply) = rest.split_once(" said: ")?;
    let name = &peer[..peer.find('[')?];
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let reply = match reply.rfind(" (in reply to ") {
        Some(i) if reply.ends_with(" command)") => &reply[..i],
        _ => reply,
    };
    let code = reply.as_bytes();
    (code.len() >= 3 && code[..3].iter().all(|c| c.is_ascii_digit())).then_some((name, reply))
}

/// Control characters become `?`; so does non-ASCII text unless allowed.
fn clean(s: &str, utf8: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || (!utf8 && !c.is_ascii()) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// An address for a header: the local part quoted when it is not a
/// dot-atom (RFC 5322).
fn quote_address(addr: &str) -> String {
    let (local, domain) = match addr.rfind('@') {
        Some(i) if i > 0 => (&addr[..i], Some(&addr[i + 1..])),
        _ => (addr, None),
    };
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !local.is_empty()
        && local
            .split('.')
            .all(|w| !w.is_empty() && w.chars().all(atext));
    let local = if dot_atom || (local.starts_with('"') && local.ends_with('"') && local.len() > 1) {
        local.to_string()
    } else {
        let mut q = String::from("\"");
        for c in local.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    };
    match domain {
        Some(d) => format!("{local}@{d}"),
        None => local,
    }
}

/// Wraps a line at white space to at most `width` columns where it can;
/// continuation lines get `indent` spaces (a folded header field in the
/// delivery-status part). A word longer than the width is not cut.
pub fn wrap(line: &str, width: usize, indent: usize) -> Vec<String> {
    let mut out = Vec::new();
    let pad = " ".repeat(indent);
    let mut rest = line.trim_end();
    let mut first = true;
    loop {
        let room = if first { width } else { width - indent };
        let prefix = if first { "" } else { pad.as_str() };
        if rest.chars().count() <= room {
            out.push(format!("{prefix}{rest}"));
            return out;
        }
        // The last blank within room + 1 columns (a blank at the edge
        // breaks there).
        let limit = rest
            .char_indices()
            .nth(room + 1)
            .map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit]
            .rfind([' ', '\t'])
            .filter(|&i| !rest[..i].trim_end().is_empty())
            .or_else(|| rest[limit..].find([' ', '\t']).map(|i| i + limit));
        match cut {
            Some(i) => {
                out.push(format!("{prefix}{}", rest[..i].trim_end()));
                rest = rest[i..].trim_start();
                if rest.is_empty() {
                    return out;
                }
            }
            None => {
                out.push(format!("{prefix}{rest}"));
                return out;
            }
        }
        first = false;
    }
}

/// An RFC 5322 date (see [`crate::date::mail_date`]).
pub fn mail_date(t: u64) -> String {
    crate::date::mail_date(t.min(i64::MAX as u64) as i64)
}

fn utc_stamp(t: u64) -> String {
    crate::date::utc_stamp(t.min(i64::MAX as u64) as i64)
}

// ---------------------------------------------------------------------
// Templates.

/// The text of a template: built in (worded here, times filled in), or
/// lines from a template file (`$name` expanded at use).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    Builtin(Kind, bool),
    Lines(Vec<String>),
}

/// One template: the notification's From: and Subject:, the charset of
/// its text, and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub charset: String,
    pub from: String,
    pub subject: String,
    /// For postmaster copies (failure and delay templates only).
    pub postmaster_subject: Option<String>,
    text: Text,
}

/// The four templates of bounce(5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub failure: Template,
    pub delay: Template,
    pub success: Template,
    /// Address verification reports (`sendmail -bv`); not sent yet.
    pub verify: Template,
}

const DEFAULT_FROM: &str = "Mail Delivery System <MAILER-DAEMON>";

/// Largest template file read.
pub const MAX_TEMPLATE_FILE: u64 = 1 << 20;

impl Template {
    fn builtin(kind: Kind, verify: bool) -> Template {
        let (subject, pm) = match (kind, verify) {
            (_, true) => ("Mail Delivery Status Report", None),
            (Kind::Failure, _) => (
                "Undelivered Mail Returned to Sender",
                Some("Postmaster Copy: Undelivered Mail"),
            ),
            (Kind::Delay, _) => (
                "Delayed Mail (still being retried)",
                Some("Postmaster Warning: Delayed Mail"),
            ),
            (Kind::Success, _) => ("Successful Mail Delivery Report", None),
        };
        Template {
            charset: "us-ascii".into(),
            from: DEFAULT_FROM.into(),
            subject: subject.into(),
            postmaster_subject: pm.map(str::to_string),
            text: Text::Builtin(kind, verify),
        }
    }

    /// Whether the text needs 8 bits (a template file in another
    /// charset).
    pub fn is_8bit(&self) -> bool {
        match &self.text {
            Text::Builtin(..) => false,
            Text::Lines(l) => l.iter().any(|s| !s.is_ascii()),
        }
    }

    /// The text with `$name` expanded. `params` gives main.cf's raw
    /// values; `times` the two times the text may show.
    pub fn expand(&self, params: &dyn Lookup, times: &Times) -> Result<Vec<String>, String> {
        let lines = match &self.text {
            Text::Builtin(kind, verify) => {
                let host = params.raw("myhostname").unwrap_or_default();
                let host = Expansion::new()
                    .expand(&host, params)
                    .map_err(|e| e.to_string())?;
                return Ok(builtin_text(*kind, *verify, &host, times));
            }
            Text::Lines(l) => l,
        };
        let lookup = TemplateLookup { params, times };
        let mut out = Vec::with_capacity(lines.len());
        for l in lines {
            let mut e = Expansion::new();
            let v = e
                .expand(l, &lookup)
                .map_err(|err| format!("bad $name syntax: {err}: {l}"))?;
            if let Some(u) = e.undefined.first() {
                return Err(format!("undefined ${u}: {l}"));
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// The times template text can show (seconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    pub delay_warning_time: u64,
    pub maximal_queue_lifetime: u64,
}

struct TemplateLookup<'a> {
    params: &'a dyn Lookup,
    times: &'a Times,
}

const TIME_UNITS: [(&str, u64); 5] = [
    ("seconds", 1),
    ("minutes", 60),
    ("hours", 3600),
    ("days", 86400),
    ("weeks", 7 * 86400),
];

impl Lookup for TemplateLookup<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        for (param, value) in [
            ("delay_warning_time_", self.times.delay_warning_time),
            ("maximal_queue_lifetime_", self.times.maximal_queue_lifetime),
        ] {
            if let Some(unit) = name.strip_prefix(param) {
                let (_, div) = TIME_UNITS.iter().find(|(u, _)| *u == unit)?;
                return Some((value / div).to_string());
            }
        }
        self.params.raw(name)
    }
}

/// A duration in words: the largest unit that measures it exactly.
fn human(secs: u64) -> String {
    let (n, unit) = [
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ]
    .iter()
    .find(|(u, _)| secs % u == 0 && secs >= *u)
    .map(|(u, name)| (secs / u, *name))
    .unwrap_or((0, "second"));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The built-in texts (Facteur's wording).
fn builtin_text(kind: Kind, verify: bool, host: &str, t: &Times) -> Vec<String> {
    let head = format!("This is the delivery report of the mail server {host}.");
    let body: Vec<String> = if verify {
        vec!["Here is the address verification report you asked for.".into()]
    } else {
        match kind {
            Kind::Failure => vec![
                "Your message could not be delivered to the recipients listed".into(),
                "below. These failures are permanent: the server has stopped".into(),
                "trying. A copy of your message is attached.".into(),
                String::new(),
                format!("If you need help, contact the postmaster of {host} and"),
                "include this report; you may remove your own text from the".into(),
                "attached copy.".into(),
            ],
            Kind::Delay => vec![
                "This is only a warning: you do not need to send your message".into(),
                "again.".into(),
                String::new(),
                format!(
                    "Your message has waited for more than {} and is not yet",
                    human(t.delay_warning_time)
                ),
                "delivered to the recipients listed below. The server keeps".into(),
                format!(
                    "trying until the message is {} old, and will write to you",
                    human(t.maximal_queue_lifetime)
                ),
                "again if it has to give up.".into(),
            ],
            Kind::Success => vec![
                "As you asked when you sent it, this report confirms the".into(),
                "delivery of your message to the recipients listed below.".into(),
            ],
        }
    };
    let mut v = vec![head, String::new()];
    v.extend(body);
    v
}

impl Default for Templates {
    fn default() -> Self {
        Templates::builtin()
    }
}

impl Templates {
    pub fn builtin() -> Templates {
        Templates {
            failure: Template::builtin(Kind::Failure, false),
            delay: Template::builtin(Kind::Delay, false),
            success: Template::builtin(Kind::Success, false),
            verify: Template::builtin(Kind::Success, true),
        }
    }

    pub fn get(&self, kind: Kind) -> &Template {
        match kind {
            Kind::Failure => &self.failure,
            Kind::Delay => &self.delay,
            Kind::Success => &self.success,
        }
    }

    /// Parses a template file (`origin` names it in messages). Templates
    /// the file does not define stay built in. Returns the templates and
    /// warnings about templates ignored; a file that does not parse is an
    /// error.
    pub fn parse(src: &str, origin: &str) -> Result<(Templates, Vec<String>), String> {
        let mut t = Templates::builtin();
        let mut warnings = Vec::new();
        let mut lines = src.lines().enumerate();
        while let Some((n, line)) = lines.next() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let bad = || format!("{origin}, line {}: expected \"name = <<EOF\": {l}", n + 1);
            let (name, rest) = l.split_once('=').ok_or_else(bad)?;
            let name = name.trim();
            let word = rest.trim().strip_prefix("<<").ok_or_else(bad)?.trim();
            if word.is_empty() || word.contains(char::is_whitespace) {
                return Err(bad());
            }
            let (slot, class) = match name {
                "failure_template" => (&mut t.failure, "failure"),
                "delay_template" => (&mut t.delay, "delay"),
                "success_template" => (&mut t.success, "success"),
                "verify_template" => (&mut t.verify, "verify"),
                _ => {
                    return Err(format!(
                        "{origin}, line {}: unknown template name: {name}",
                        n + 1
                    ))
                }
            };
            let mut body = Vec::new();
            let mut ended = false;
            for (_, l2) in lines.by_ref() {
                if l2.trim_end() == word {
                    ended = true;
                    break;
                }
                body.push(l2.to_string());
            }
            if !ended {
                return Err(format!(
                    "{origin}, line {}: missing \"{word}\" at the end of {name}",
                    n + 1
                ));
            }
            match parse_template(&body, slot) {
                Ok(tpl) => *slot = tpl,
                Err(w) => warnings.push(format!(
                    "{origin}: {w} in {class} template -- ignoring this template"
                )),
            }
        }
        Ok((t, warnings))
    }
}

/// One template's headers and text; `proto` gives the defaults.
fn parse_template(body: &[String], proto: &Template) -> Result<Template, String> {
    let mut t = proto.clone();
    let mut i = 0;
    while i < body.len() && is_header_line(body[i].as_bytes()) {
        let (name, value) = body[i].split_once(':').expect("a header line has a colon");
        let name = name.trim_end();
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("empty \"{name}\" header value"));
        }
        if !value.is_ascii() || value.chars().any(|c| c.is_control()) {
            return Err(format!("non-ASCII \"{name}\" header value"));
        }
        match name.to_ascii_lowercase().as_str() {
            "charset" => t.charset = value.to_string(),
            "from" => t.from = value.to_string(),
            "subject" => t.subject = value.to_string(),
            "postmaster-subject" if proto.postmaster_subject.is_some() => {
                t.postmaster_subject = Some(value.to_string())
            }
            "postmaster-subject" => {
                return Err(format!("inapplicable \"{name}\" header label"));
            }
            _ => return Err(format!("unknown \"{name}\" header label")),
        }
        i += 1;
    }
    while i < body.len() && body[i].trim().is_empty() {
        i += 1;
    }
    if i == body.len() {
        return Err("missing message text".into());
    }
    let text: Vec<String> = body[i..].to_vec();
    if text
        .iter()
        .any(|l| l.chars().any(|c| c.is_control() && c != '\t'))
    {
        return Err("control characters in the message text".into());
    }
    if text.iter().any(|l| !l.is_ascii()) && t.charset.eq_ignore_ascii_case("us-ascii") {
        return Err("8-bit message text with charset us-ascii".into());
    }
    t.text = Text::Lines(text);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A MIME entity parsed back: header fields (unfolded, in order) and
    /// body.
    #[derive(Debug)]
    struct Entity {
        fields: Vec<(String, String)>,
        body: String,
    }

    impl Entity {
        fn parse(text: &str) -> Entity {
            let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in head.lines() {
                if line.starts_with([' ', '\t']) {
                    let last = fields.last_mut().expect("continuation after a field");
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                } else {
                    let (n, v) = line.split_once(':').expect("a header field");
                    fields.push((n.to_string(), v.trim().to_string()));
                }
            }
            Entity {
                fields,
                body: body.to_string(),
            }
        }

        fn get(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The parts of a multipart body, checking the boundary lines.
        fn parts(&self) -> Vec<Entity> {
            let ct = self.get("Content-Type").unwrap();
            let b = ct
                .split("boundary=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("a boundary parameter");
            let open = format!("--{b}");
            let close = format!("--{b}--");
            let mut parts = Vec::new();
            let mut cur: Option<Vec<&str>> = None;
            let mut closed = false;
            for line in self.body.split('\n') {
                if closed {
                    assert!(line.is_empty(), "text after the closing boundary: {line}");
                    continue;
                }
                if line == close {
                    parts.push(cur.take().expect("a part before the end"));
                    closed = true;
                } else if line == open {
                    if let Some(p) = cur.take() {
                        parts.push(p);
                    }
                    cur = Some(Vec::new());
                } else if let Some(p) = cur.as_mut() {
                    p.push(line);
                }
            }
            assert!(closed, "no closing boundary");
            parts
                .into_iter()
                // The line end before a boundary belongs to it: joining
                // the lines between leaves it out.
                .map(|lines| Entity::parse(&lines.join("\n")))
                .collect()
        }
    }

    /// The groups of a message/delivery-status body: per message, then
    /// one per recipient.
    fn status_groups(body: &str) -> Vec<HashMap<String, String>> {
        body.split("\n\n")
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                Entity::parse(&format!("{}\n\n", g.trim_matches('\n')))
                    .fields
                    .into_iter()
                    .collect()
            })
            .collect()
    }

    const ORIGINAL: &str = "Received: by mx.example.test\n \
        (Facteur); Mon, 1 Jan 2024 00:00:00 +0000\n\
        Message-ID: <abc@mx.example.test>\n\
        Subject: hello\n\
        \n\
        body line 1\n\
        body line 2\n";

    fn original(full: bool, limit: u64) -> Original {
        let lines: Vec<&str> = ORIGINAL.strip_suffix('\n').unwrap().split('\n').collect();
        let mut it = lines.into_iter();
        read_original(
            || Ok(it.next().map(|l| (l.as_bytes().to_vec(), true))),
            (ORIGINAL.len() + 7) as u64,
            full,
            limit,
        )
        .unwrap()
    }

    fn rcpt(addr: &str, status: &str, reason: &str) -> Recipient {
        Recipient {
            address: addr.into(),
            status: status.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    fn reporter<'a>(tpl: &'a Template, text: &'a [String]) -> Reporter<'a> {
        Reporter {
            myhostname: "mx.example.test",
            mail_name: "Postfix",
            max_queue_lifetime: 5 * 86400,
            threaded: false,
            template: tpl,
            text,
            new_id: "NEW123",
            now: 1_700_000_100,
        }
    }

    fn params(name: &str) -> Option<String> {
        match name {
            "myhostname" => Some("mx.example.test".into()),
            "mydomain" => Some("example.test".into()),
            "greeting" => Some("hello from $mydomain".into()),
            _ => None,
        }
    }

    fn compose_str(r: &Report<'_>, m: &Reporter<'_>) -> String {
        String::from_utf8(compose(r, m)).unwrap()
    }

    fn report<'a>(
        kind: Kind,
        rcpts: &'a [Recipient],
        orig: &'a Original,
        sender: &'a str,
    ) -> Report<'a> {
        Report {
            kind,
            postmaster_copy: false,
            to: sender,
            queue_id: "4F2A51C0D2",
            sender,
            envid: None,
            arrival: 1_700_000_000,
            smtputf8: false,
            recipients: rcpts,
            original: orig,
        }
    }

    #[test]
    fn notify_flags_select_notices() {
        use crate::queue::file::*;
        assert!(wants(0, Kind::Failure) && wants(0, Kind::Delay) && !wants(0, Kind::Success));
        assert!(!wants(DSN_NOTIFY_NEVER, Kind::Failure));
        assert!(wants(DSN_NOTIFY_SUCCESS, Kind::Success));
        assert!(!wants(DSN_NOTIFY_SUCCESS, Kind::Failure));
        assert!(wants(DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, Kind::Delay));
        assert!(!wants(DSN_NOTIFY_FAILURE, Kind::Delay));
        assert_eq!(Kind::parse("delay"), Some(Kind::Delay));
        assert_eq!(Kind::parse(Kind::Success.as_str()), Some(Kind::Success));
        assert_eq!(Kind::parse("bogus"), None);
    }

    #[test]
    fn returned_part_follows_ret_and_kind() {
        use crate::queue::file::{DSN_RET_FULL, DSN_RET_HDRS};
        assert!(wants_full_message(Kind::Failure, 0, false));
        assert!(!wants_full_message(Kind::Failure, DSN_RET_HDRS, false));
        assert!(!wants_full_message(Kind::Failure, 0, true));
        assert!(!wants_full_message(Kind::Delay, 0, false));
        assert!(wants_full_message(Kind::Delay, DSN_RET_FULL, false));
        assert!(!wants_full_message(Kind::Success, 0, false));
    }

    #[test]
    fn original_is_whole_or_header_only() {
        let full = original(true, 50000);
        assert_eq!(
            full.returned,
            Returned::Message(ORIGINAL.as_bytes().to_vec())
        );
        assert_eq!(full.message_id.as_deref(), Some("<abc@mx.example.test>"));
        let hdrs = original(false, 50000);
        let want = ORIGINAL.split_once("\n\n").unwrap().0.to_string() + "\n";
        assert_eq!(hdrs.returned, Returned::Headers(want.clone().into_bytes()));
        assert_eq!(hdrs.message_id.as_deref(), Some("<abc@mx.example.test>"));
        // Larger than bounce_size_limit: the header only.
        assert_eq!(
            original(true, 10).returned,
            Returned::Headers(want.into_bytes())
        );
        // 0 = no limit.
        assert!(matches!(original(true, 0).returned, Returned::Message(_)));
        // The header of a whole message.
        assert_eq!(full.headers_only(), hdrs);
        assert_eq!(hdrs.headers_only(), hdrs);
    }

    #[test]
    fn original_in_pieces_and_lying_sizes() {
        // A long line split in pieces stays one line.
        let pieces: Vec<(Vec<u8>, bool)> = vec![
            (b"Subject: ".to_vec(), false),
            (b"split".to_vec(), true),
            (Vec::new(), true),
            (b"bo".to_vec(), false),
            (b"dy".to_vec(), true),
        ];
        let mut it = pieces.clone().into_iter();
        let o = read_original(|| Ok(it.next()), 100, true, 1000).unwrap();
        assert_eq!(
            o.returned,
            Returned::Message(b"Subject: split\n\nbody\n".to_vec())
        );
        // A file larger than its size record says: the header only.
        let mut it = pieces.into_iter();
        let o = read_original(|| Ok(it.next()), 5, true, 1000).unwrap();
        assert_eq!(o.returned, Returned::Headers(b"Subject: split\n".to_vec()));
        // A header without end is cut at the limit, at a line end.
        let mut n = 0usize;
        let o = read_original(
            || {
                n += 1;
                Ok((n < 100_000).then(|| (b"X-Long: 0123456789".to_vec(), true)))
            },
            u64::MAX,
            false,
            0,
        )
        .unwrap();
        match o.returned {
            Returned::Headers(h) => {
                assert!(h.len() <= MAX_RETURNED_HEADER && h.len() > MAX_RETURNED_HEADER - 100);
                assert!(h.ends_with(b"789\n"));
            }
            other => panic!("{other:?}"),
        }
        // Errors pass through.
        assert!(read_original(|| Err(io::Error::other("boom")), 1, true, 0).is_err());
    }

    #[test]
    fn header_lines_and_message_ids() {
        assert!(is_header_line(b"Subject: x"));
        assert!(is_header_line(b"X-A :x"));
        assert!(!is_header_line(b"no colon"));
        assert!(!is_header_line(b": empty name"));
        assert!(!is_header_line(b"two words: x"));
        assert_eq!(message_id_of(b"Message-Id:  <a@b> "), Some("<a@b>".into()));
        assert_eq!(message_id_of(b"Message-ID: a@b"), None);
        assert_eq!(message_id_of(b"Subject: <a@b>"), None);
    }

    #[test]
    fn remote_replies_become_smtp_diagnostics() {
        assert_eq!(
            remote_reply(
                "host mx.example.net[203.0.113.5] said: 550 5.1.1 <x@example.net>: \
                 User unknown (in reply to RCPT TO command)"
            ),
            Some(("mx.example.net", "550 5.1.1 <x@example.net>: User unknown"))
        );
        assert_eq!(
            remote_reply("host h[1.2.3.4] said: 452 full"),
            Some(("h", "452 full"))
        );
        assert_eq!(remote_reply("connect to h[1.2.3.4]:25: refused"), None);
        assert_eq!(remote_reply("host h said: 550 x"), None);
        assert_eq!(remote_reply("host h[1.2.3.4] said: not a reply"), None);
    }

    #[test]
    fn wrapping_at_white_space() {
        assert_eq!(wrap("short", 79, 4), vec!["short"]);
        let long = "word ".repeat(30);
        let w = wrap(&long, 79, 4);
        assert!(w.len() > 1);
        assert!(w.iter().all(|l| l.len() <= 79), "{w:?}");
        assert!(w[1..]
            .iter()
            .all(|l| l.starts_with("    ") && !l.starts_with("     ")));
        assert_eq!(w.join(" ").split_whitespace().count(), 30);
        // A word longer than the line is kept whole.
        let big = format!("a {} b", "x".repeat(100));
        assert_eq!(
            wrap(&big, 79, 4),
            vec![
                "a".to_string(),
                format!("    {}", "x".repeat(100)),
                "    b".into()
            ]
        );
        assert_eq!(wrap(&"y".repeat(90), 79, 4), vec!["y".repeat(90)]);
    }

    #[test]
    fn failure_notice_structure() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Failure);
        let text = tpl.expand(&params, &Times::default()).unwrap();
        let orig = original(true, 50000);
        let rcpts = vec![
            Recipient {
                orig: Some("alias@example.test".into()),
                orcpt: Some("rfc822;Alias@Example.Test".into()),
                ..rcpt("nobody@example.test", "5.1.1", "no such user")
            },
            Recipient {
                last_attempt: 1_700_000_050,
                ..rcpt(
                    "x@example.net",
                    "5.1.1",
                    "host mx.example.net[203.0.113.5] said: 550 5.1.1 <x@example.net>: \
                     Recipient address rejected: User unknown in local recipient table \
                     (in reply to RCPT TO command)",
                )
            },
        ];
        let r = Report {
            envid: Some("ENV-1"),
            ..report(Kind::Failure, &rcpts, &orig, "alice@example.org")
        };
        let out = compose_str(&r, &reporter(tpl, &text));
        assert!(out.is_ascii() && !out.contains('\r'));
        let top = Entity::parse(&out);
        assert_eq!(
            top.get("From"),
            Some("Mail Delivery System <MAILER-DAEMON>")
        );
        assert_eq!(
            top.get("Subject"),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(top.get("To"), Some("alice@example.org"));
        assert_eq!(top.get("Auto-Submitted"), Some("auto-replied"));
        assert_eq!(top.get("MIME-Version"), Some("1.0"));
        assert_eq!(top.get("Content-Transfer-Encoding"), Some("7bit"));
        assert_eq!(top.get("References"), None, "threading is off by default");
        let mid = top.get("Message-ID").unwrap();
        assert_eq!(mid, "<20231114221500.NEW123@mx.example.test>");
        assert!(top.get("Date").unwrap().contains(" 2023 "));
        let ct = top.get("Content-Type").unwrap();
        assert_eq!(
            ct,
            "multipart/report; report-type=delivery-status; \
             boundary=\"4F2A51C0D2.1700000100/mx.example.test\""
        );
        let parts = top.parts();
        assert_eq!(parts.len(), 3);
        // 1: the text.
        assert_eq!(
            parts[0].get("Content-Type"),
            Some("text/plain; charset=us-ascii")
        );
        assert_eq!(parts[0].get("Content-Description"), Some("Notification"));
        let t = &parts[0].body;
        assert!(t.starts_with(&text.join("\n")), "{t}");
        assert!(t.contains(
            "\n<nobody@example.test> (expanded from <alias@example.test>): no such user\n"
        ));
        assert!(t.contains("\n<x@example.net>: host mx.example.net[203.0.113.5] said: 550"));
        assert!(t.lines().all(|l| l.len() <= 79), "{t}");
        // 2: the delivery status.
        assert_eq!(
            parts[1].get("Content-Type"),
            Some("message/delivery-status")
        );
        let g = status_groups(&parts[1].body);
        assert_eq!(g.len(), 3, "{g:?}");
        assert_eq!(g[0]["Reporting-MTA"], "dns; mx.example.test");
        assert_eq!(g[0]["Original-Envelope-Id"], "ENV-1");
        assert_eq!(g[0]["X-Postfix-Queue-ID"], "4F2A51C0D2");
        assert_eq!(g[0]["X-Postfix-Sender"], "rfc822; alice@example.org");
        assert_eq!(g[0]["Arrival-Date"], mail_date(1_700_000_000));
        assert_eq!(g[1]["Final-Recipient"], "rfc822; nobody@example.test");
        assert_eq!(g[1]["Original-Recipient"], "rfc822;Alias@Example.Test");
        assert_eq!(g[1]["Action"], "failed");
        assert_eq!(g[1]["Status"], "5.1.1");
        assert_eq!(g[1]["Diagnostic-Code"], "X-Postfix; no such user");
        assert!(!g[1].contains_key("Remote-MTA") && !g[1].contains_key("Will-Retry-Until"));
        assert_eq!(g[2]["Final-Recipient"], "rfc822; x@example.net");
        assert_eq!(g[2]["Original-Recipient"], "rfc822; x@example.net");
        assert_eq!(g[2]["Remote-MTA"], "dns; mx.example.net");
        assert_eq!(
            g[2]["Diagnostic-Code"],
            "smtp; 550 5.1.1 <x@example.net>: Recipient address rejected: \
             User unknown in local recipient table"
        );
        assert_eq!(g[2]["Last-Attempt-Date"], mail_date(1_700_000_050));
        assert!(parts[1].body.lines().all(|l| l.len() <= 79));
        // 3: the whole message, Return-Path first.
        assert_eq!(parts[2].get("Content-Type"), Some("message/rfc822"));
        assert_eq!(
            parts[2].get("Content-Description"),
            Some("Undelivered Message")
        );
        let inner = parts[2].body.as_str();
        assert_eq!(
            inner,
            format!("Return-Path: <alice@example.org>\n{ORIGINAL}")
        );
        let inner = Entity::parse(inner);
        assert_eq!(inner.get("Subject"), Some("hello"));
        assert_eq!(inner.body, "body line 1\nbody line 2\n");
    }

    #[test]
    fn delay_notice_with_headers_and_retry_date() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Delay);
        let times = Times {
            delay_warning_time: 4 * 3600,
            maximal_queue_lifetime: 5 * 86400,
        };
        let text = tpl.expand(&params, &times).unwrap();
        let joined = text.join("\n");
        assert!(
            joined.contains("4 hours") && joined.contains("5 days"),
            "{joined}"
        );
        assert!(joined.contains("mx.example.test"));
        let orig = original(false, 50000);
        let rcpts = vec![Recipient {
            action: "delayed".into(),
            ..rcpt(
                "x@later.example",
                "4.4.1",
                "connect to later.example[192.0.2.1]:25: Connection refused",
            )
        }];
        let r = report(Kind::Delay, &rcpts, &orig, "alice@example.org");
        let top = Entity::parse(&compose_str(&r, &reporter(tpl, &text)));
        assert_eq!(
            top.get("Subject"),
            Some("Delayed Mail (still being retried)")
        );
        let parts = top.parts();
        let g = status_groups(&parts[1].body);
        assert!(!g[0].contains_key("Original-Envelope-Id"));
        assert_eq!(g[1]["Action"], "delayed");
        assert_eq!(g[1]["Status"], "4.4.1");
        assert_eq!(
            g[1]["Will-Retry-Until"],
            mail_date(1_700_000_000 + 5 * 86400)
        );
        assert_eq!(parts[2].get("Content-Type"), Some("text/rfc822-headers"));
        assert_eq!(
            parts[2].get("Content-Description"),
            Some("Undelivered Message Headers")
        );
        assert!(parts[2].body.contains("Subject: hello\n"));
        assert!(!parts[2].body.contains("body line"));
    }

    #[test]
    fn success_notice_and_invalid_fields() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Success);
        let text = tpl.expand(&params, &Times::default()).unwrap();
        let orig = original(false, 50000);
        let rcpts = vec![
            Recipient {
                action: "relayed".into(),
                ..rcpt("a@example.test", "2.0.0", "delivered to maildir")
            },
            Recipient {
                action: "exploded".into(),
                ..rcpt("b@example.test", "9.9", "delivered")
            },
        ];
        let r = Report {
            arrival: 0,
            ..report(Kind::Success, &rcpts, &orig, "bob smith@example.org")
        };
        let top = Entity::parse(&compose_str(&r, &reporter(tpl, &text)));
        assert_eq!(top.get("Subject"), Some("Successful Mail Delivery Report"));
        assert_eq!(top.get("To"), Some("\"bob smith\"@example.org"));
        let parts = top.parts();
        let g = status_groups(&parts[1].body);
        assert!(!g[0].contains_key("Arrival-Date"));
        assert_eq!(g[1]["Action"], "relayed");
        assert_eq!(g[2]["Action"], "delivered");
        assert_eq!(g[2]["Status"], "2.0.0");
        assert_eq!(parts[2].get("Content-Description"), Some("Message Headers"));
    }

    #[test]
    fn postmaster_copy_has_no_template_text() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Failure);
        let text = tpl.expand(&params, &Times::default()).unwrap();
        let orig = Original {
            returned: Returned::Unavailable,
            message_id: None,
        };
        let rcpts = vec![rcpt("x@y", "5.0.0", "gone")];
        let r = Report {
            postmaster_copy: true,
            to: "postmaster",
            ..report(Kind::Failure, &rcpts, &orig, "")
        };
        let top = Entity::parse(&compose_str(&r, &reporter(tpl, &text)));
        assert_eq!(
            top.get("Subject"),
            Some("Postmaster Copy: Undelivered Mail")
        );
        assert_eq!(top.get("Auto-Submitted"), Some("auto-generated"));
        assert_eq!(top.get("To"), Some("postmaster"));
        let parts = top.parts();
        assert_eq!(parts[0].body.trim(), "<x@y>: gone");
        let g = status_groups(&parts[1].body);
        assert_eq!(g[0]["X-Postfix-Sender"], "rfc822; MAILER-DAEMON");
        assert!(parts[2].body.contains("could not be read"));
    }

    #[test]
    fn eight_bit_content_boundaries_and_hostile_reasons() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Failure);
        let text = tpl.expand(&params, &Times::default()).unwrap();
        // The original holds 8-bit text and lines that would be the
        // boundary.
        let body = "Subject: caf\u{e9}\n\n--Q1.1700000100/mx.example.test\n\
                    --Q1.1700000100/mx.example.test--\n";
        let orig = Original {
            returned: Returned::Message(body.as_bytes().to_vec()),
            message_id: Some("<m@x>".into()),
        };
        let rcpts = vec![rcpt(
            "x@y",
            "5.0.0",
            "evil\r\nContent-Type: text/html\r\n\r\n--Q1.1700000100/mx.example.test",
        )];
        let r = Report {
            queue_id: "Q1",
            ..report(Kind::Failure, &rcpts, &orig, "a@b")
        };
        let mut m = reporter(tpl, &text);
        m.threaded = true;
        let out = compose_str(&r, &m);
        let top = Entity::parse(&out);
        assert_eq!(top.get("Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(top.get("References"), Some("<m@x>"));
        assert_eq!(top.get("In-Reply-To"), Some("<m@x>"));
        assert!(top
            .get("Content-Type")
            .unwrap()
            .contains("boundary=\"Q1.1700000100.1/mx.example.test\""));
        let parts = top.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].get("Content-Transfer-Encoding"), Some("8bit"));
        assert!(parts[2].body.ends_with(body));
        assert!(parts[0]
            .body
            .contains("<x@y>: evil??Content-Type: text/html????--Q1"));
        assert_eq!(parts[0].get("Content-Transfer-Encoding"), None);
        let g = status_groups(&parts[1].body);
        assert_eq!(g.len(), 2);
        assert!(g[1]["Diagnostic-Code"].starts_with("X-Postfix; evil??Content-Type"));
        // A non-ASCII reason without SMTPUTF8 is masked.
        let rcpts = vec![rcpt("x@y", "5.0.0", "d\u{e9}j\u{e0} vu")];
        let orig = Original {
            returned: Returned::Headers(b"Subject: x\n".to_vec()),
            message_id: None,
        };
        let r = report(Kind::Failure, &rcpts, &orig, "a@b");
        let out = compose_str(&r, &reporter(tpl, &text));
        assert!(out.is_ascii() && out.contains("d?j? vu"));
    }

    #[test]
    fn smtputf8_mail_gets_global_types() {
        let templates = Templates::builtin();
        let tpl = templates.get(Kind::Failure);
        let text = tpl.expand(&params, &Times::default()).unwrap();
        let orig = original(true, 0);
        let rcpts = vec![rcpt("j\u{f6}rg@b\u{fc}cher.example", "5.1.1", "unknown")];
        let r = Report {
            smtputf8: true,
            ..report(Kind::Failure, &rcpts, &orig, "s@example.org")
        };
        let top = Entity::parse(&compose_str(&r, &reporter(tpl, &text)));
        assert_eq!(top.get("Content-Transfer-Encoding"), Some("8bit"));
        let parts = top.parts();
        assert_eq!(
            parts[0].get("Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            parts[1].get("Content-Type"),
            Some("message/global-delivery-status")
        );
        assert_eq!(parts[2].get("Content-Type"), Some("message/global"));
        let g = status_groups(&parts[1].body);
        assert_eq!(
            g[1]["Final-Recipient"],
            "utf-8; j\u{f6}rg@b\u{fc}cher.example"
        );
    }

    const TEMPLATE_FILE: &str = "\
# Site templates.

failure_template = <<EOF
Charset: us-ascii
from: Postmaster <postmaster@example.test>
Subject: Your mail bounced
POSTMASTER-SUBJECT: Bounce copy

Host $myhostname, $greeting, costs $$5.
Warned after $delay_warning_time_hours hours, kept $maximal_queue_lifetime_days days.
EOF

  # indented comment
success_template = <<END
Subject: Delivered
Text for ${myhostname?{$myhostname}:{nobody}}.
END
";

    #[test]
    fn template_file_parses_and_expands() {
        let (t, warnings) = Templates::parse(TEMPLATE_FILE, "/etc/postfix/bounce.cf").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(t.failure.from, "Postmaster <postmaster@example.test>");
        assert_eq!(t.failure.subject, "Your mail bounced");
        assert_eq!(t.failure.postmaster_subject.as_deref(), Some("Bounce copy"));
        assert_eq!(t.delay, Templates::builtin().delay);
        let times = Times {
            delay_warning_time: 4 * 3600,
            maximal_queue_lifetime: 5 * 86400,
        };
        assert_eq!(
            t.failure.expand(&params, &times).unwrap(),
            vec![
                "Host mx.example.test, hello from example.test, costs $5.",
                "Warned after 4 hours, kept 5 days.",
            ]
        );
        assert_eq!(t.success.subject, "Delivered");
        assert_eq!(t.success.from, "Mail Delivery System <MAILER-DAEMON>");
        assert_eq!(
            t.success.expand(&params, &times).unwrap(),
            vec!["Text for mx.example.test."]
        );
        // Used in a notice.
        let text = t.failure.expand(&params, &times).unwrap();
        let orig = original(false, 0);
        let rcpts = vec![rcpt("x@y", "5.0.0", "gone")];
        let r = report(Kind::Failure, &rcpts, &orig, "a@b");
        let top = Entity::parse(&compose_str(&r, &reporter(&t.failure, &text)));
        assert_eq!(
            top.get("From"),
            Some("Postmaster <postmaster@example.test>")
        );
        assert!(top.parts()[0].body.starts_with("Host mx.example.test,"));
    }

    #[test]
    fn template_file_errors_and_ignored_templates() {
        let err = |s: &str| Templates::parse(s, "f").unwrap_err();
        assert!(err("bogus_template = <<EOF\nx\nEOF\n")
            .contains("unknown template name: bogus_template"));
        assert!(err("failure_template = <<EOF\ntext\n").contains("missing \"EOF\""));
        assert!(err("failure_template = EOF\n").contains("line 1"));
        assert!(err("just some text\n").contains("expected"));
        let warned = |s: &str| {
            let (t, w) = Templates::parse(s, "f").unwrap();
            assert_eq!(t, Templates::builtin(), "{s}");
            assert_eq!(w.len(), 1, "{w:?}");
            w[0].clone()
        };
        assert!(
            warned("delay_template = <<EOF\nSubject:\n\ntext\nEOF\n").contains("empty \"Subject\"")
        );
        assert!(warned("delay_template = <<EOF\nX-Foo: bar\n\ntext\nEOF\n")
            .contains("unknown \"X-Foo\""));
        assert!(
            warned("success_template = <<EOF\nPostmaster-Subject: x\n\ntext\nEOF\n")
                .contains("inapplicable")
        );
        assert!(warned("failure_template = <<EOF\nSubject: x\n\nEOF\n")
            .contains("missing message text"));
        assert!(
            warned("failure_template = <<EOF\nSubject: x\n\ncaf\u{e9}\nEOF\n").contains("8-bit")
        );
        assert!(
            warned("failure_template = <<EOF\nSubject: caf\u{e9}\n\ntext\nEOF\n")
                .contains("non-ASCII")
        );
        // Another charset allows 8-bit text.
        let (t, w) = Templates::parse(
            "failure_template = <<EOF\nCharset: iso-8859-1\n\ncaf\u{e9}\nEOF\n",
            "f",
        )
        .unwrap();
        assert!(w.is_empty() && t.failure.is_8bit());
        // Undefined names and bad suffixes are found at expansion.
        let (t, _) =
            Templates::parse("failure_template = <<EOF\n$nosuchparam\nEOF\n", "f").unwrap();
        assert!(t
            .failure
            .expand(&params, &Times::default())
            .unwrap_err()
            .contains("undefined $nosuchparam"));
        let (t, _) = Templates::parse(
            "failure_template = <<EOF\n$delay_warning_time_fortnights\nEOF\n",
            "f",
        )
        .unwrap();
        assert!(t.failure.expand(&params, &Times::default()).is_err());
    }

    #[test]
    fn durations_and_quoting() {
        assert_eq!(human(1), "1 second");
        assert_eq!(human(14400), "4 hours");
        assert_eq!(human(5400), "90 minutes");
        assert_eq!(human(432000), "5 days");
        assert_eq!(human(0), "0 seconds");
        assert_eq!(quote_address("a.b@c"), "a.b@c");
        assert_eq!(quote_address("a b@c"), "\"a b\"@c");
        assert_eq!(quote_address("a\"b@c"), "\"a\\\"b\"@c");
        assert_eq!(quote_address("\"a b\"@c"), "\"a b\"@c");
        assert_eq!(quote_address("postmaster"), "postmaster");
        assert_eq!(mail_name_atom("My Mail.System"), "My-Mail-System");
        assert!(valid_status("5.1.10") && !valid_status("3.1.1") && !valid_status("5.1"));
    }
}
