//! One message going through cleanup: the envelope list is rewritten
//! first ([`Message::new`]), the content is fed chunk by chunk
//! ([`Message::feed`]) and [`Message::finish`] says what became of it.
//!
//! The primary header block is held in memory (bounded: a header longer
//! than `header_size_limit`, more than [`MAX_HEADERS`] headers or
//! [`MAX_HEADER_BLOCK`] bytes end the header block early; what follows is
//! written as body), because what header_checks decide (REDIRECT, BCC)
//! changes the recipients, which the queue file holds before the content.
//! The envelope is written once the header block is done; the body is
//! streamed straight into the queue file, never held whole.
//!
//! After the primary header block the content goes through the MIME
//! state machine ([`super::mime`]) unless `disable_mime_input_processing`
//! is set: the headers of body parts and of attached messages are
//! assembled one logical header at a time (the only thing held, bounded
//! by `header_size_limit`; a longer header is decided on its first
//! `header_size_limit` bytes and the rest streamed after it), checked
//! with `mime_header_checks` / `nested_header_checks` and written; all
//! else is a body line for `body_checks`, whose `body_checks_size_limit`
//! counts from the start of each body part, as in Postfix.
//!
//! Recipients go in the envelope section, except when `body_checks` is
//! set, or MIME processing is on with `mime_header_checks` or
//! `nested_header_checks` set: a body line or a part header may still
//! REDIRECT the message, so the recipients are then written after the
//! content, in the extracted section (where `sendmail -t` recipients live
//! too; readers treat both alike).
//!
//! Errors never panic: a write error makes the result STAT_WRITE and the
//! unfinished file is removed (the [`Writer`] removes it when dropped);
//! once the message is refused the rest of the content is only counted.

use std::collections::HashSet;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libmail::address::rewrite::Context;
use libmail::address::MAX_ADDRESS_LEN;
use libmail::ipc::cleanup::{
    default_reason, Late, FLAG_DISCARD, FLAG_EXTRACT, FLAG_HOLD, FLAG_LATE_RCPTS, FLAG_NO_CHECKS,
    FLAG_NO_MAPS, FLAG_REQUEUE, STAT_CONT, STAT_DEFER, STAT_HOPS, STAT_RCPT, STAT_SIZE, STAT_WRITE,
};
use libmail::ipc::Attrs;
use libmail::queue::{NewRecipient, Queue, Unsynced, Writer};
use libmail::table::search::{address_keys, Key, Maps};

use super::addresses::{Defer, ENV_RECIPIENT, ENV_SENDER, HDR_RECIPIENT, HDR_SENDER};
use super::checks::{self, Action, LogContext};
use super::headers::{self, Header, Kind};
use super::mime::{Class, Delimiter, Mime};
use super::Config;

/// Most headers in the primary header block.
pub const MAX_HEADERS: usize = 10_000;
/// Most bytes in the primary header block.
pub const MAX_HEADER_BLOCK: usize = 4 << 20;
/// Longest piece of a body line held before it is written out.
const BODY_PIECE: usize = 64 << 10;
/// Most recipients one message may end up with.
pub const MAX_RECIPIENTS: usize = 100_000;

/// Reply and log text of a message refused for its MIME structure.
pub const MIME_NESTING_REASON: &str = "5.6.0 MIME nesting exceeds safety limit";

/// Which table a header or body line is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Primary headers other than MIME headers.
    Header,
    /// MIME headers anywhere and every header of a body part.
    Mime,
    /// Non-MIME headers of an attached message.
    Nested,
    Body,
}

impl Checks {
    fn name(self) -> &'static str {
        match self {
            Checks::Header => "header_checks",
            Checks::Mime => "mime_header_checks",
            Checks::Nested => "nested_header_checks",
            Checks::Body => "body_checks",
        }
    }

    /// The table for a header of block `class` named `name`.
    fn for_header(class: Class, name: &str) -> Checks {
        match class {
            Class::Multipart => Checks::Mime,
            _ if headers::is_mime_header(name) => Checks::Mime,
            Class::Primary => Checks::Header,
            Class::Nested => Checks::Nested,
        }
    }
}

/// What a part header becomes after its check.
struct Disposition {
    prepend: Vec<Vec<u8>>,
    replace: Option<Vec<u8>>,
    keep: bool,
}

/// A recipient to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub address: String,
    pub orig: Option<String>,
    pub notify: u32,
    pub orcpt: Option<String>,
}

/// What became of a message.
pub enum Outcome {
    /// Complete, not yet durable: the caller syncs it, then replies.
    Queued {
        file: Unsynced,
        hold: bool,
    },
    /// Accepted and dropped (DISCARD): reply success, keep nothing.
    Discarded,
    Refused {
        status: u32,
        reason: String,
    },
}

pub struct Message<'c> {
    cfg: &'c Config,
    writer: Option<Writer>,
    pub id: String,
    created_sec: u64,
    origin: String,
    flags: u32,
    hdr_ctx: Option<Context>,
    arrival: SystemTime,
    pub sender: String,
    full_name: Option<String>,
    envid: Option<String>,
    ret: u32,
    attrs: Vec<(String, String)>,
    rcpts: Vec<Rcpt>,
    seen: HashSet<String>,
    pub log: LogContext,
    status: u32,
    reason: String,
    hold: bool,
    discard: bool,
    /// Address mappings (canonical, virtual, masquerading, automatic
    /// BCC) on: not when the receiving service said no_address_mappings.
    maps: bool,
    redirect: Option<String>,
    /// The after-queue content filter (`transport[:nexthop]`): the
    /// client's (smtpd's or pickup's `content_filter`, an access table's
    /// FILTER), then the last FILTER of the header and body checks.
    filter: Option<String>,
    bccs: Vec<String>,
    checks_on: bool,
    in_header: bool,
    headers: Vec<Header>,
    header_bytes: usize,
    partial: Vec<u8>,
    /// The current body line was already partly written / checked.
    line_started: bool,
    dropping_line: bool,
    /// `None` with `disable_mime_input_processing`.
    mime: Option<Mime>,
    /// Report a MIME nesting error (header checks are in use).
    mime_report: bool,
    mime_error: bool,
    /// The body-part or nested header being assembled.
    part_hdr: Option<Header>,
    /// The current part header was decided before its end (too long):
    /// whether the rest of it is written (true) or dropped.
    part_hdr_pass: Option<bool>,
    /// The physical line in progress (`line_started`) belongs to a part
    /// header, not to the body.
    header_piece: bool,
    size: u64,
    body_bytes: u64,
    rcpts_late: bool,
    /// Message-ID as logged (for tests and the caller).
    pub message_id: Option<String>,
}

fn parse_arrival(v: &str) -> Option<SystemTime> {
    let (s, us) = v.split_once('.').unwrap_or((v, "0"));
    let s: u64 = s.parse().ok()?;
    let us: u32 = us.parse().ok().filter(|u| *u < 1_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(s, us * 1000))
}

impl<'c> Message<'c> {
    /// Starts a message in `writer` (created in incoming/) from the
    /// envelope list: sender and recipients are rewritten and expanded
    /// here.
    pub fn new(cfg: &'c Config, writer: Writer, env: &Attrs) -> Message<'c> {
        let id = writer.id().to_string();
        let created_sec = writer.created().0;
        let origin = env.get("origin").unwrap_or("unknown").to_string();
        // Mail the system makes itself (notices) is not inspected unless
        // internal_mail_filter_classes says so.
        let flags: u32 = env.get_num("flags").unwrap_or(0);
        // (The receiving service may switch checks and mappings off:
        // receive_override_options.)
        let inspect = (origin != "bounce" || cfg.inspect_bounces) && flags & FLAG_NO_CHECKS == 0;
        let mut attrs: Vec<(String, String)> = Vec::new();
        for (n, v) in env.iter() {
            if let Some(name) = n.strip_prefix("attr.") {
                // The filter comes as `filter` only (see `filter`).
                if !name.is_empty()
                    && !name.contains('=')
                    && name != libmail::queue::CONTENT_FILTER_ATTR
                    && attrs.len() < 1000
                {
                    attrs.push((name.to_string(), v.to_string()));
                }
            }
        }
        // SMTPUTF8 and BODY= go on with the message (the smtp client
        // passes them on, notices choose their MIME types by them).
        for name in ["smtputf8", "body"] {
            if let Some(v) = env.get(name).filter(|v| !v.is_empty() && v.len() <= 16) {
                if !attrs.iter().any(|(k, _)| k == name) {
                    attrs.push((name.to_string(), v.to_string()));
                }
            }
        }
        let attr = |attrs: &[(String, String)], n: &str| {
            attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        };
        let (client_name, client_address, protocol, helo) = (
            attr(&attrs, "client_name"),
            attr(&attrs, "client_address"),
            attr(&attrs, "protocol"),
            attr(&attrs, "helo_name"),
        );
        let ctx = match attr(&attrs, "rewrite_context") {
            Some(c) => Context::parse(&c),
            None if origin == "smtpd" => Context::Remote,
            None => Context::Local,
        };
        if attr(&attrs, "rewrite_context").is_none() {
            attrs.push((
                "rewrite_context".into(),
                if ctx == Context::Remote {
                    "remote"
                } else {
                    "local"
                }
                .into(),
            ));
        }
        let hdr_ctx = match ctx {
            Context::Local => Some(Context::Local),
            Context::Remote if cfg.remote_header_rewrite => Some(Context::Remote),
            Context::Remote => None,
        };
        let log_origin = match (client_name, client_address) {
            (Some(n), Some(a)) => format!("{n}[{a}]"),
            (None, Some(a)) => format!("unknown[{a}]"),
            _ if matches!(origin.as_str(), "pickup" | "local" | "bounce" | "postsuper") => {
                "local".to_string()
            }
            _ => "unknown".to_string(),
        };
        let mut m = Message {
            cfg,
            writer: Some(writer),
            id: id.clone(),
            created_sec,
            origin,
            flags,
            hdr_ctx,
            arrival: env
                .get("arrival")
                .and_then(parse_arrival)
                .unwrap_or_else(SystemTime::now),
            sender: String::new(),
            full_name: env
                .get("full_name")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            envid: env
                .get("envid")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            ret: env.get_num("ret").unwrap_or(0),
            attrs,
            rcpts: Vec::new(),
            seen: HashSet::new(),
            log: LogContext {
                queue_id: id,
                origin: log_origin,
                sender: None,
                recipient: env.get("rcpt").map(str::to_string),
                protocol,
                helo,
            },
            status: 0,
            reason: String::new(),
            hold: flags & FLAG_HOLD != 0,
            discard: flags & FLAG_DISCARD != 0,
            maps: flags & FLAG_NO_MAPS == 0,
            redirect: None,
            filter: env
                .get("filter")
                .map(str::trim)
                .filter(|f| valid_filter(f))
                .map(str::to_string),
            bccs: Vec::new(),
            checks_on: inspect,
            in_header: true,
            headers: Vec::new(),
            header_bytes: 0,
            partial: Vec::new(),
            line_started: false,
            dropping_line: false,
            mime: (!cfg.disable_mime_input_processing)
                .then(|| Mime::new(cfg.mime_nesting_limit, cfg.mime_boundary_length_limit)),
            mime_report: inspect
                && (cfg.header_checks.is_some()
                    || cfg.mime_header_checks.is_some()
                    || cfg.nested_header_checks.is_some()),
            mime_error: false,
            part_hdr: None,
            part_hdr_pass: None,
            header_piece: false,
            size: 0,
            body_bytes: 0,
            rcpts_late: flags & FLAG_LATE_RCPTS != 0
                || cfg.body_checks.is_some()
                || (!cfg.disable_mime_input_processing
                    && (cfg.mime_header_checks.is_some() || cfg.nested_header_checks.is_some())),
            message_id: None,
        };
        if let Err(d) = m.envelope(env, ctx) {
            m.defer(&d);
        }
        m
    }

    fn defer(&mut self, d: &Defer) {
        libmail::warning!(
            "{}: {} -- message not accepted, try again later",
            self.id,
            d.0
        );
        self.refuse(STAT_DEFER, default_reason(STAT_DEFER).to_string());
    }

    fn refuse(&mut self, status: u32, reason: String) {
        if self.status == 0 {
            self.status = status;
            self.reason = reason;
        }
        self.writer = None;
        self.checks_on = false;
    }

    fn bcc_ok(&self) -> bool {
        self.origin != "bounce" && self.maps
    }

    fn envelope(&mut self, env: &Attrs, ctx: Context) -> Result<(), Defer> {
        let rules = &self.cfg.rules;
        let raw_sender = env.get("sender").unwrap_or("");
        // A line break in an address would end up in a header line.
        let bad = |v: &str| v.chars().any(char::is_control) || v.len() > MAX_ADDRESS_LEN;
        if bad(raw_sender) || env.get_all("rcpt").any(bad) {
            libmail::warning!(
                "{}: bad address syntax in the envelope -- message refused",
                self.id
            );
            self.refuse(STAT_CONT, "5.1.3 Bad address syntax".into());
            return Ok(());
        }
        self.sender = rules.rewrite_if(ctx, raw_sender, ENV_SENDER, self.maps)?;
        self.log.sender = Some(self.sender.clone());
        // Recipients with their rcpt.* attributes.
        let mut pending: Vec<Rcpt> = Vec::new();
        for (n, v) in env.iter() {
            match n {
                "rcpt" => pending.push(Rcpt {
                    address: v.to_string(),
                    orig: None,
                    notify: 0,
                    orcpt: None,
                }),
                "rcpt.orig" => {
                    if let Some(r) = pending.last_mut() {
                        r.orig = Some(v.to_string()).filter(|o| !o.is_empty());
                    }
                }
                "rcpt.notify" => {
                    if let Some(r) = pending.last_mut() {
                        r.notify = v.parse().unwrap_or(0);
                    }
                }
                "rcpt.orcpt" => {
                    if let Some(r) = pending.last_mut() {
                        r.orcpt = Some(v.to_string()).filter(|o| !o.is_empty());
                    }
                }
                _ => {}
            }
        }
        for r in pending {
            self.add_recipient(ctx, &r)?;
            if let (Some(maps), true) = (&self.cfg.recipient_bcc, self.bcc_ok()) {
                let canon = rules.rewrite(ctx, &r.address, ENV_RECIPIENT)?;
                if let Some(b) = lookup_first(maps, rules, &canon)? {
                    self.add_bcc(&b)?;
                }
            }
        }
        if self.bcc_ok() {
            if let Some(maps) = &self.cfg.sender_bcc {
                if !self.sender.is_empty() {
                    if let Some(b) = lookup_first(maps, rules, &self.sender)? {
                        self.add_bcc(&b)?;
                    }
                }
            }
            if !self.cfg.always_bcc.is_empty() {
                let b = self.cfg.always_bcc.clone();
                self.add_bcc(&b)?;
            }
        }
        Ok(())
    }

    fn add_bcc(&mut self, addr: &str) -> Result<(), Defer> {
        self.add_recipient(
            Context::Local,
            &Rcpt {
                address: addr.to_string(),
                orig: None,
                notify: 0,
                orcpt: None,
            },
        )
    }

    /// Canonical form, canonical maps, virtual expansion, duplicate filter.
    fn add_recipient(&mut self, ctx: Context, r: &Rcpt) -> Result<(), Defer> {
        let rules = &self.cfg.rules;
        // Mail for the empty address (a configuration or program error)
        // goes to empty_address_recipient, as in Postfix.
        let address = if r.address.trim().is_empty() {
            self.cfg.empty_address_recipient.as_str()
        } else {
            r.address.as_str()
        };
        let canon = rules.rewrite_if(ctx, address, ENV_RECIPIENT, self.maps)?;
        let orig = r.orig.clone().unwrap_or_else(|| r.address.clone());
        let expanded = if self.maps {
            rules.expand_virtual(&canon)?
        } else {
            vec![canon]
        };
        for a in expanded {
            self.push_recipient(Rcpt {
                orig: (self.cfg.enable_original_recipient && orig != a).then(|| orig.clone()),
                address: a,
                notify: r.notify,
                orcpt: r.orcpt.clone(),
            });
        }
        Ok(())
    }

    fn push_recipient(&mut self, r: Rcpt) {
        if self.rcpts.len() >= MAX_RECIPIENTS {
            return;
        }
        if self.seen.contains(&r.address) {
            return;
        }
        if self.seen.len() < self.cfg.duplicate_filter_limit {
            self.seen.insert(r.address.clone());
        }
        self.rcpts.push(r);
    }

    fn write(&mut self, f: impl FnOnce(&mut Writer) -> io::Result<()>) {
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = f(w) {
                libmail::warning!("{}: queue file write error: {e}", self.id);
                self.refuse(STAT_WRITE, default_reason(STAT_WRITE).to_string());
            }
        }
    }

    /// Whether anything still needs to be looked at.
    fn active(&self) -> bool {
        self.status == 0 && !self.discard
    }

    /// Feeds content (lines ended by LF, split anywhere).
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.size += chunk.len() as u64;
        if self.cfg.message_size_limit > 0 && self.size > self.cfg.message_size_limit {
            self.refuse(STAT_SIZE, "5.3.4 Message size exceeds fixed limit".into());
        }
        if !self.active() {
            return;
        }
        while !chunk.is_empty() && self.active() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    let line = std::mem::take(&mut self.partial);
                    self.line(&line, true);
                    self.partial = line;
                    self.partial.clear();
                }
                None => {
                    self.partial.extend_from_slice(chunk);
                    chunk = &[];
                    let cap = if self.in_header || self.in_part_headers() {
                        self.cfg.header_size_limit
                    } else {
                        BODY_PIECE
                    };
                    if self.partial.len() > cap {
                        let piece = std::mem::take(&mut self.partial);
                        if self.in_header {
                            self.end_headers(false);
                            if self.active() {
                                self.body_rest(&piece, false);
                            }
                        } else if self.active() {
                            self.rest_line(&piece, false);
                        }
                    }
                }
            }
        }
    }

    fn line(&mut self, line: &[u8], complete: bool) {
        if self.in_header {
            if self.header_line(line) {
                return;
            }
            // The line that ended the primary block is body.
            self.end_headers(complete && line.is_empty());
            if self.active() {
                self.body_rest(line, complete);
            }
            return;
        }
        if self.active() {
            self.rest_line(line, complete);
        }
    }

    /// In the header block of a body part or of an attached message.
    fn in_part_headers(&self) -> bool {
        self.mime.as_ref().and_then(Mime::header_class).is_some()
    }

    /// A line (or a piece of a long one, `complete` false) after the
    /// primary header block: part header or body line.
    fn rest_line(&mut self, line: &[u8], complete: bool) {
        if self.line_started {
            if self.header_piece {
                self.pass_piece(self.part_hdr_pass.unwrap_or(true), line, complete);
            } else {
                self.body_line(line, complete);
            }
            return;
        }
        if self.in_part_headers() {
            if self.part_header_line(line, complete) {
                return;
            }
            // Not a header: the header block ends and this is body.
            if let Some(m) = self.mime.as_mut() {
                m.end_headers(complete && line.is_empty());
            }
            self.body_bytes = 0;
        }
        self.body_rest(line, complete);
    }

    /// The start of a body line: boundaries, then body_checks.
    fn body_rest(&mut self, line: &[u8], complete: bool) {
        if let Some(m) = self.mime.as_mut() {
            if m.body_line(line) == Some(Delimiter::Close) {
                self.body_bytes = 0;
            }
        }
        self.body_line(line, complete);
    }

    /// A line starting in a part header block; false when it is not a
    /// header or continuation line (the block ends with it).
    fn part_header_line(&mut self, line: &[u8], complete: bool) -> bool {
        let limit = self.cfg.header_size_limit;
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(keep) = self.part_hdr_pass {
                self.pass_piece(keep, line, complete);
                return true;
            }
            if let Some(h) = self.part_hdr.as_mut() {
                let fits = complete && h.size() + line.len() < limit;
                h.lines.push(line.to_vec());
                if !fits {
                    self.decide_part_header(complete);
                }
                return true;
            }
        }
        self.flush_part_header();
        if !self.active() {
            return true;
        }
        if headers::header_name_len(line).is_some() {
            self.part_hdr = Some(Header {
                lines: vec![line.to_vec()],
            });
            if !complete || line.len() + 1 > limit {
                self.decide_part_header(complete);
            }
            return true;
        }
        false
    }

    /// More of a part header that was decided early: written or dropped.
    fn pass_piece(&mut self, keep: bool, line: &[u8], complete: bool) {
        if keep && self.active() {
            if complete {
                self.write(|w| w.content_line(line));
            } else {
                self.write(|w| w.content_part(line));
            }
        }
        self.line_started = !complete;
        self.header_piece = !complete;
    }

    /// Checks a part header and says what to write for it.
    fn inspect_part_header(&mut self, h: &Header) -> Disposition {
        let class = self
            .mime
            .as_ref()
            .and_then(Mime::header_class)
            .unwrap_or(Class::Multipart);
        let mut text = h.unfolded();
        let mut cut = text.len().min(self.cfg.header_size_limit);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        self.mime_header(&text);
        let mut d = Disposition {
            prepend: Vec::new(),
            replace: None,
            keep: true,
        };
        let which = Checks::for_header(class, &h.name());
        if let Some(a) = self.check(which, &text) {
            match self.act(which, &text, a, &mut d.prepend) {
                None => d.keep = false,
                Some(Some(t)) => d.replace = Some(t.into_bytes()),
                Some(None) => {}
            }
        }
        d
    }

    /// Writes what a checked part header became; the last line is left
    /// open when `last_complete` is false.
    fn write_part_header(&mut self, h: Header, d: Disposition, last_complete: bool) {
        if !self.active() {
            return;
        }
        for p in &d.prepend {
            self.write(|w| w.content_line(p));
        }
        if let Some(r) = &d.replace {
            self.write(|w| w.content_line(r));
        } else if d.keep {
            let n = h.lines.len();
            for (i, l) in h.lines.iter().enumerate() {
                if i + 1 == n && !last_complete {
                    self.write(|w| w.content_part(l));
                } else {
                    self.write(|w| w.content_line(l));
                }
            }
        }
    }

    /// The part header being assembled is complete: check and write it.
    fn flush_part_header(&mut self) {
        self.part_hdr_pass = None;
        let Some(h) = self.part_hdr.take() else {
            return;
        };
        let d = self.inspect_part_header(&h);
        self.write_part_header(h, d, true);
    }

    /// The part header being assembled outgrew `header_size_limit` (or
    /// its line is still arriving): it is checked now, on what arrived,
    /// and the rest of it follows the verdict.
    fn decide_part_header(&mut self, last_complete: bool) {
        let Some(h) = self.part_hdr.take() else {
            return;
        };
        let d = self.inspect_part_header(&h);
        let keep = d.keep && d.replace.is_none();
        self.write_part_header(h, d, last_complete);
        self.part_hdr_pass = Some(keep);
        self.line_started = !last_complete;
        self.header_piece = !last_complete;
    }

    /// Tells the MIME machine about a complete header; a multipart header
    /// nested too deep is logged once and the message refused at its end
    /// when header checks are in use (Postfix's MIME_OPT_REPORT_NESTING).
    fn mime_header(&mut self, text: &str) {
        let Some(m) = self.mime.as_mut() else {
            return;
        };
        if m.header(text.as_bytes()) && self.mime_report && !self.mime_error {
            self.mime_error = true;
            let mut cut = text.len().min(100);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            libmail::info!(
                "{}: reject: mime-error {}: {} from {}; from=<{}> to=<{}>",
                self.id,
                &MIME_NESTING_REASON[6..],
                &text[..cut],
                self.log.origin,
                self.sender,
                self.log.recipient.as_deref().unwrap_or("unknown")
            );
        }
    }

    /// Takes a header-block line; false when the line is not part of the
    /// header block (the body starts with it).
    fn header_line(&mut self, line: &[u8]) -> bool {
        let limit = self.cfg.header_size_limit;
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(h) = self.headers.last_mut() {
                if h.size() + line.len() + 1 > limit
                    || self.header_bytes + line.len() > MAX_HEADER_BLOCK
                {
                    return false;
                }
                self.header_bytes += line.len() + 1;
                h.lines.push(line.to_vec());
                return true;
            }
            return false;
        }
        if headers::header_name_len(line).is_none()
            || self.headers.len() >= MAX_HEADERS
            || line.len() + 1 > limit
            || self.header_bytes + line.len() > MAX_HEADER_BLOCK
        {
            return false;
        }
        self.header_bytes += line.len() + 1;
        self.headers.push(Header {
            lines: vec![line.to_vec()],
        });
        true
    }

    fn check(&mut self, which: Checks, text: &str) -> Option<Action> {
        if !self.checks_on {
            return None;
        }
        let name = which.name();
        let maps: &Maps = match which {
            Checks::Header => self.cfg.header_checks.as_ref()?,
            Checks::Mime => self.cfg.mime_header_checks.as_ref()?,
            Checks::Nested => self.cfg.nested_header_checks.as_ref()?,
            Checks::Body => self.cfg.body_checks.as_ref()?,
        };
        let key = Key {
            text: text.to_string(),
            whole: true,
        };
        match maps.find_first(std::slice::from_ref(&key)) {
            Ok(Some((_, v))) => Some(checks::parse(&v, which != Checks::Body, name)),
            Ok(None) => None,
            Err(e) => {
                libmail::warning!(
                    "{}: {name} map lookup problem: {e} -- message not accepted, try again later",
                    self.id
                );
                self.refuse(STAT_DEFER, default_reason(STAT_DEFER).to_string());
                None
            }
        }
    }

    /// Applies an action; returns what to do with the line: `None` drop
    /// it, `Some(None)` keep it, `Some(Some(text))` replace it. Prepended
    /// lines are pushed to `out`.
    /// Postfix logs `header` for the three header tables.
    fn act(
        &mut self,
        which: Checks,
        content: &str,
        a: Action,
        out: &mut Vec<Vec<u8>>,
    ) -> Option<Option<String>> {
        let class = if which == Checks::Body {
            "body"
        } else {
            "header"
        };
        match a {
            Action::Reject(reason) => {
                libmail::info!("{}", self.log.line("reject", class, content, &reason));
                let status = if reason.starts_with('4') {
                    STAT_DEFER
                } else {
                    STAT_CONT
                };
                self.refuse(status, reason);
                Some(None)
            }
            Action::Warn(t) => {
                libmail::info!("{}", self.log.line("warning", class, content, &t));
                Some(None)
            }
            Action::Info(t) => {
                libmail::info!("{}", self.log.line("info", class, content, &t));
                Some(None)
            }
            Action::Hold(t) => {
                if !self.hold && !self.discard {
                    libmail::info!("{}", self.log.line("hold", class, content, &t));
                    self.hold = true;
                }
                Some(None)
            }
            Action::Discard(t) => {
                libmail::info!("{}", self.log.line("discard", class, content, &t));
                self.discard = true;
                self.checks_on = false;
                Some(None)
            }
            Action::Redirect(t) => {
                libmail::info!("{}", self.log.line("redirect", class, content, &t));
                self.redirect = Some(t);
                self.checks_on = false;
                Some(None)
            }
            Action::Bcc(t) => {
                libmail::info!("{}", self.log.line("bcc", class, content, &t));
                self.bccs.push(t);
                Some(None)
            }
            Action::Filter(t) => {
                libmail::info!("{}", self.log.line("filter", class, content, &t));
                self.filter = Some(t);
                Some(None)
            }
            Action::Prepend(t) => {
                libmail::info!("{}", self.log.line("prepend", class, content, &t));
                out.push(t.into_bytes());
                Some(None)
            }
            Action::Replace(t) => {
                libmail::info!("{}", self.log.line("replace", class, content, &t));
                Some(Some(t))
            }
            Action::Ignore => None,
            Action::Strip(t) => {
                libmail::info!("{}", self.log.line("strip", class, content, &t));
                None
            }
            Action::Pass => {
                self.checks_on = false;
                Some(None)
            }
            Action::Dunno => Some(None),
            Action::Bad(w) => {
                libmail::warning!("{w}");
                Some(None)
            }
        }
    }

    /// The header block is complete: check, rewrite, add what is missing,
    /// then write the envelope and the headers.
    /// `blank`: the block ended with an empty line (what follows a
    /// `message/rfc822` primary block is then an attached message).
    fn end_headers(&mut self, blank: bool) {
        if !self.in_header {
            return;
        }
        self.in_header = false;
        let headers = std::mem::take(&mut self.headers);
        let requeue = self.flags & FLAG_REQUEUE != 0;
        let extract = self.flags & FLAG_EXTRACT != 0;
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0usize;
        let arrival_sec = self
            .arrival
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0) as i64;
        if self.origin == "pickup" && !requeue {
            let uid = self
                .attrs
                .iter()
                .find(|(n, _)| n == "log_uid")
                .map(|(_, v)| v.clone());
            for l in headers::local_received(
                &self.cfg.myhostname,
                &self.cfg.mail_name,
                uid.as_deref(),
                &self.id,
                &headers::mail_date(arrival_sec),
            ) {
                out.push(l.into_bytes());
            }
            hops += 1;
        }
        let mut seen_message_id = false;
        let mut seen_resent_message_id = false;
        let mut seen_date = false;
        let mut seen_resent_date = false;
        let mut seen_from = false;
        let mut seen_resent_from = false;
        let mut seen_visible = false;
        let mut resent = false;
        let mut extracted: Vec<String> = Vec::new();
        let mut extracted_resent: Vec<String> = Vec::new();
        for mut h in headers {
            if self.status != 0 {
                break;
            }
            let unfolded = h.unfolded();
            self.mime_header(&unfolded);
            let which = Checks::for_header(Class::Primary, &h.name());
            if let Some(a) = self.check(which, &unfolded) {
                match self.act(which, &unfolded, a, &mut out) {
                    None => continue,
                    Some(Some(text)) => {
                        h = Header {
                            lines: vec![text.into_bytes()],
                        }
                    }
                    Some(None) => {}
                }
            }
            let name = h.name();
            let known = headers::classify(&name);
            resent |= known.resent;
            match known.kind {
                Kind::MessageId => {
                    let v = h.value();
                    if known.resent {
                        seen_resent_message_id = true;
                        libmail::info!("{}: resent-message-id={}", self.id, v.trim_end());
                    } else {
                        seen_message_id = true;
                        libmail::info!("{}: message-id={}", self.id, v.trim_end());
                        self.message_id = Some(v.trim_end().to_string());
                    }
                }
                Kind::Date if known.resent => seen_resent_date = true,
                Kind::Date => seen_date = true,
                Kind::Received => hops += 1,
                Kind::Drop => continue,
                _ => {}
            }
            if known.from {
                if known.resent {
                    seen_resent_from = true;
                } else {
                    seen_from = true;
                }
            }
            seen_visible |= known.visible_rcpt;
            if extract && known.kind == Kind::Recipient {
                let list = if known.resent {
                    &mut extracted_resent
                } else {
                    &mut extracted
                };
                if let Some(found) = headers::find_addresses(&h.value()) {
                    list.extend(found.into_iter().map(|f| f.address).take(MAX_RECIPIENTS));
                }
                if known.bcc {
                    continue;
                }
            }
            let class = match known.kind {
                Kind::Sender => HDR_SENDER,
                Kind::Recipient => HDR_RECIPIENT,
                _ => 0,
            };
            if let (Some(ctx), true, false) = (self.hdr_ctx, class != 0, requeue) {
                let value = h.value();
                let rules = &self.cfg.rules;
                let maps = self.maps;
                let mut failed: Option<Defer> = None;
                let rewritten = headers::rewrite_addresses(&value, |a| {
                    match rules.rewrite_if(ctx, a, class, maps) {
                        Ok(r) => r,
                        Err(d) => {
                            failed.get_or_insert(d);
                            a.to_string()
                        }
                    }
                });
                if let Some(d) = failed {
                    self.defer(&d);
                    break;
                }
                if let Some(v) = rewritten {
                    out.push(format!("{name}: {v}").into_bytes());
                    continue;
                }
            }
            out.extend(h.lines);
        }
        if let Some(m) = self.mime.as_mut() {
            m.end_headers(blank);
        }
        if self.status != 0 {
            return;
        }
        if hops >= self.cfg.hopcount_limit {
            self.refuse(STAT_HOPS, default_reason(STAT_HOPS).to_string());
            return;
        }
        let add = (self.hdr_ctx.is_some() || self.cfg.always_add_missing_headers) && !requeue;
        let prefix = if resent { "Resent-" } else { "" };
        if add
            && !(if resent {
                seen_resent_message_id
            } else {
                seen_message_id
            })
        {
            let mid = headers::message_id(
                self.created_sec,
                &self.id,
                &self.cfg.myhostname,
                self.cfg.long_ids,
            );
            out.push(format!("{prefix}Message-Id: <{mid}>").into_bytes());
            libmail::info!(
                "{}: {}message-id=<{mid}>",
                self.id,
                if resent { "resent-" } else { "" }
            );
            if !resent {
                seen_message_id = true;
                self.message_id = Some(format!("<{mid}>"));
            }
        }
        if !seen_message_id {
            libmail::info!("{}: message-id=<>", self.id);
        }
        if add && !(if resent { seen_resent_date } else { seen_date }) {
            out.push(format!("{prefix}Date: {}", headers::mail_date(arrival_sec)).into_bytes());
        }
        if add && !(if resent { seen_resent_from } else { seen_from }) {
            out.push(
                format!(
                    "{prefix}From: {}",
                    headers::from_value(&self.sender, self.full_name.as_deref())
                )
                .into_bytes(),
            );
        }
        if add && !seen_visible && !self.cfg.undisclosed_recipients_header.is_empty() {
            if headers::is_header(&self.cfg.undisclosed_recipients_header) {
                out.push(self.cfg.undisclosed_recipients_header.clone().into_bytes());
            } else {
                libmail::warning!(
                    "bad undisclosed_recipients_header header text \"{}\" -- need \"headername: headervalue\"",
                    self.cfg.undisclosed_recipients_header
                );
            }
        }
        if extract {
            let list = if extracted_resent.is_empty() {
                extracted
            } else {
                extracted_resent
            };
            let ctx = self.hdr_ctx.unwrap_or(Context::Local);
            for a in list {
                if a.is_empty() {
                    continue;
                }
                let r = Rcpt {
                    address: a,
                    orig: None,
                    notify: 0,
                    orcpt: None,
                };
                if let Err(d) = self.add_recipient(ctx, &r) {
                    self.defer(&d);
                    return;
                }
            }
        }
        self.write_envelope();
        for l in out {
            self.write(|w| w.content_line(&l));
        }
    }

    /// The recipients to write, once REDIRECT and BCC actions are known.
    fn final_recipients(&mut self) -> Result<Vec<Rcpt>, Defer> {
        if let Some(r) = self.redirect.take() {
            let canon = self
                .cfg
                .rules
                .rewrite_if(Context::Local, &r, ENV_RECIPIENT, self.maps)?;
            self.rcpts = vec![Rcpt {
                address: canon,
                orig: None,
                notify: 0,
                orcpt: None,
            }];
            self.seen.clear();
            if let Some(f) = self.rcpts.first() {
                self.seen.insert(f.address.clone());
            }
        }
        for b in std::mem::take(&mut self.bccs) {
            self.add_bcc(&b)?;
        }
        Ok(std::mem::take(&mut self.rcpts))
    }

    fn write_recipients(&mut self) {
        let rcpts = match self.final_recipients() {
            Ok(r) => r,
            Err(d) => {
                self.defer(&d);
                return;
            }
        };
        if rcpts.is_empty() && !self.discard {
            self.refuse(STAT_RCPT, default_reason(STAT_RCPT).to_string());
            return;
        }
        for r in &rcpts {
            self.write(|w| {
                w.recipient(&NewRecipient {
                    address: &r.address,
                    orig: r.orig.as_deref(),
                    dsn_orcpt: r.orcpt.as_deref(),
                    dsn_notify: r.notify,
                })
            });
        }
    }

    fn write_envelope(&mut self) {
        if self.discard {
            return;
        }
        let arrival = self.arrival;
        let full_name = self.full_name.clone();
        let sender = self.sender.clone();
        let envid = self.envid.clone();
        let ret = self.ret;
        let attrs = std::mem::take(&mut self.attrs);
        self.write(|w| {
            w.arrival_time(arrival)?;
            if let Some(f) = &full_name {
                w.full_name(f)?;
            }
            w.sender(&sender)?;
            if let Some(e) = &envid {
                w.dsn_envid(e)?;
            }
            if ret != 0 {
                w.dsn_ret(ret)?;
            }
            for (n, v) in &attrs {
                w.attr(n, v)?;
            }
            Ok(())
        });
        self.attrs = attrs;
        if !self.rcpts_late {
            self.write_recipients();
        }
        self.write(|w| w.start_content());
    }

    /// One body line (or a piece of a long one, `complete` false).
    fn body_line(&mut self, line: &[u8], complete: bool) {
        if !self.active() {
            return;
        }
        let first_piece = !self.line_started;
        let mut replaced: Option<Vec<u8>> = None;
        let mut prepend: Vec<Vec<u8>> = Vec::new();
        if first_piece
            && self.cfg.body_checks.is_some()
            && (self.cfg.body_checks_size_limit == 0
                || self.body_bytes < self.cfg.body_checks_size_limit)
        {
            let n = line.len().min(self.cfg.line_length_limit.max(1));
            let text = String::from_utf8_lossy(&line[..n]).into_owned();
            if let Some(a) = self.check(Checks::Body, &text) {
                match self.act(Checks::Body, &text, a, &mut prepend) {
                    None => self.dropping_line = true,
                    Some(Some(t)) => {
                        replaced = Some(t.into_bytes());
                        self.dropping_line = true;
                    }
                    Some(None) => {}
                }
            }
        }
        self.body_bytes += line.len() as u64 + u64::from(complete);
        for p in prepend {
            self.write(|w| w.content_line(&p));
        }
        if let Some(r) = replaced {
            self.write(|w| w.content_line(&r));
        }
        if !self.dropping_line && self.active() {
            if complete {
                self.write(|w| w.content_line(line));
            } else {
                self.write(|w| w.content_part(line));
            }
        }
        self.line_started = !complete;
        if complete {
            self.dropping_line = false;
        }
    }

    /// What smtpd's end-of-data restrictions decided after the content
    /// (smtpd logged it): HOLD or DISCARD as if the envelope had said
    /// so; the filter and the redirection, last, win over the content's
    /// checks'; BCC addresses are added. The recipients are still to be
    /// written when smtpd sent [`FLAG_LATE_RCPTS`]; a REDIRECT or BCC
    /// that comes without it is too late, and only logged.
    pub fn late(&mut self, late: Late) {
        if late.flags & FLAG_DISCARD != 0 {
            self.discard = true;
        } else if late.flags & FLAG_HOLD != 0 && !self.discard {
            self.hold = true;
        }
        if let Some(f) = late.filter.filter(|f| valid_filter(f)) {
            self.filter = Some(f);
        }
        if late.redirect.is_none() && late.bcc.is_empty() {
            return;
        }
        if !self.rcpts_late {
            libmail::warning!(
                "{}: REDIRECT or BCC after the content, but the recipients are written: ignored",
                self.id
            );
            return;
        }
        if late.redirect.is_some() {
            self.redirect = late.redirect;
        }
        self.bccs.extend(late.bcc);
    }

    /// The end marker arrived: the verdict.
    pub fn finish(mut self) -> Outcome {
        if self.active() && (!self.partial.is_empty() || self.line_started) {
            let last = std::mem::take(&mut self.partial);
            self.line(&last, true);
        }
        if self.active() && self.in_header {
            self.end_headers(false);
        }
        if self.active() {
            self.flush_part_header();
        }
        if self.mime_error && self.status == 0 {
            self.refuse(STAT_CONT, MIME_NESTING_REASON.to_string());
        }
        if self.status != 0 {
            return Outcome::Refused {
                status: self.status,
                reason: self.reason.clone(),
            };
        }
        if self.discard {
            return Outcome::Discarded;
        }
        self.write(|w| w.start_extracted());
        if let Some(f) = self.filter.take() {
            self.write(|w| w.attr(libmail::queue::CONTENT_FILTER_ATTR, &f));
        }
        if self.rcpts_late {
            self.write_recipients();
        }
        if self.status != 0 {
            return Outcome::Refused {
                status: self.status,
                reason: self.reason.clone(),
            };
        }
        let Some(mut w) = self.writer.take() else {
            return Outcome::Refused {
                status: STAT_WRITE,
                reason: default_reason(STAT_WRITE).to_string(),
            };
        };
        // Held mail goes to hold/ while its file is still incomplete: qmgr
        // never sees it in incoming/.
        let moved = if self.hold {
            w.move_to(&self.cfg.layout, Queue::Hold)
        } else {
            Ok(())
        };
        match moved.and_then(|()| w.finish()) {
            Ok(file) => Outcome::Queued {
                file,
                hold: self.hold,
            },
            Err(e) => {
                libmail::warning!("{}: queue file write error: {e}", self.id);
                Outcome::Refused {
                    status: STAT_WRITE,
                    reason: default_reason(STAT_WRITE).to_string(),
                }
            }
        }
    }
}

/// A filter as a client may give it: `transport[:nexthop]`, a transport
/// name that is a master.cf service name, no control characters.
fn valid_filter(f: &str) -> bool {
    let transport = f.split(':').next().unwrap_or("");
    f.len() <= 1024
        && !transport.is_empty()
        && !transport.contains('/')
        && !f.chars().any(char::is_control)
}

/// The first address a bcc map gives for `addr`.
fn lookup_first(
    maps: &Maps,
    rules: &super::addresses::AddressRules,
    addr: &str,
) -> Result<Option<String>, Defer> {
    let internal = libmail::address::internal(addr);
    let domain = libmail::address::domain_of(&internal);
    let local = domain.is_empty() || domain.eq_ignore_ascii_case(&rules.myorigin);
    let keys = address_keys(&internal, &rules.delimiters, local);
    Ok(maps
        .find_first(&keys)?
        .and_then(|(_, v)| super::addresses::split_results(&v).into_iter().next()))
}
