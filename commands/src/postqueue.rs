//! postqueue(1) and mailq(1): the queue listing (`-p`, and `mailq`,
//! `sendmail -bp`), its JSON form (`-j`), the flush (`-f`), the flush of
//! one message (`-i`) and of one site (`-s`), in Postfix's exact formats
//! and with its access lists (`authorized_mailq_users`,
//! `authorized_flush_users`). See `docs/man/postqueue.1.md`.
//!
//! ```text
//! postqueue [-v] [-c config_dir] -p | -j | -f | -s site | -i queue_id
//! ```
//!
//! Postfix asks its showq daemon for the listing; Facteur has no showq and
//! reads the queue directory itself, as Postfix's postqueue does for root
//! when the mail system is down (without that warning). Queues are listed
//! in showq's order — maildrop, active, incoming, deferred, hold — and
//! within a queue by queue ID. A file that cannot be read is skipped with
//! a warning; the listing goes on.
//!
//! Postfix hands `-i` and `-s` to its flush(8) daemon, which makes the
//! deferred messages concerned due now (their mtime) and wakes qmgr.
//! Facteur has no flush daemon and does the same here: the mtime of the
//! message (`-i`), or of every deferred message with a pending recipient
//! in the site's domain (`-s`), is set to now, then qmgr gets `D` (scan
//! deferred, honouring every other message's retry time). Nothing is
//! touched when qmgr does not listen.
//!
//! Every fatal error exits 69 (EX_UNAVAILABLE), as Postfix 3.7's
//! postqueue does: its fatal-error hook exits 69 whatever status the
//! message was raised with (usage errors and access refusals included;
//! checked against Postfix 3.7.11).

use std::ffi::CStr;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use libmail::address::domains::DomainList;
use libmail::cli::{getopt, Opt};
use libmail::config;
use libmail::config::params::{split_list, Params};
use libmail::ipc;
use libmail::queue::lock::is_forced_expire;
use libmail::queue::statuslog;
use libmail::queue::{Access, Limits, Queue, QueueFile, QueueId, QueueLayout, ReadError};
use libmail::table::OpenOptions as TableOptions;

const USAGE: &str =
    "usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site";

/// showq's order.
const QUEUES: [Queue; 5] = [
    Queue::Maildrop,
    Queue::Active,
    Queue::Incoming,
    Queue::Deferred,
    Queue::Hold,
];

/// sysexits(3): what Postfix 3.7's postqueue exits with on any fatal.
const EX_UNAVAILABLE: i32 = 69;

/// One message as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub queue: Queue,
    pub id: String,
    pub arrival: i64,
    pub size: u64,
    /// The file's mode has the forced-expiry mark (`postsuper -e`/`-f`).
    pub forced_expire: bool,
    pub sender: String,
    /// Pending recipients with their delay reason, if one is known.
    pub recipients: Vec<(String, Option<String>)>,
}

/// Every complete message of the queues showq lists. Files are read on
/// as many threads as there are CPUs (the listing keeps its order): on a
/// large queue the time goes into opening and reading each file.
pub fn collect(layout: &QueueLayout) -> Vec<Listed> {
    let mut found: Vec<(Queue, QueueId, std::path::PathBuf)> = Vec::new();
    for q in QUEUES {
        let mut files: Vec<(QueueId, std::path::PathBuf)> = layout
            .scan(q)
            .filter_map(|r| match r {
                Ok(f) => Some(f),
                // A queue directory that is not there holds nothing; one
                // that cannot be read (not root, not mail_owner) is said.
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    eprintln!("postqueue: warning: scan {}: {}", q.name(), errtext(&e));
                    None
                }
            })
            .collect();
        files.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        found.extend(files.into_iter().map(|(id, p)| (q, id, p)));
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = found.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = found
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|(q, id, p)| read_one(layout, *q, id, p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// One message, or `None` when it is incomplete or unreadable (warned).
fn read_one(
    layout: &QueueLayout,
    q: Queue,
    id: &QueueId,
    path: &std::path::Path,
) -> Option<Listed> {
    let qf = match QueueFile::open(path, Access::ReadOnly, &Limits::default()) {
        Ok(f) => f,
        Err(e) if e.is_incomplete() || gone(&e) => return None,
        Err(e) => {
            eprintln!("postqueue: warning: {}: {e}", path.display());
            return None;
        }
    };
    let env = qf.envelope();
    // The mode of the file already open: the forced-expiry mark.
    let forced_expire = qf
        .file()
        .metadata()
        .is_ok_and(|m| is_forced_expire(m.mode()));
    let reasons = statuslog::read(layout, Queue::Defer, id).unwrap_or_default();
    let reason_of = |offset: u64| {
        reasons
            .iter()
            .rev()
            .find(|e| e.offset == offset)
            .map(|e| e.reason.clone())
    };
    Some(Listed {
        queue: q,
        id: id.as_str().to_string(),
        arrival: env.arrival.0 as i64,
        size: env.size.content_size,
        forced_expire,
        sender: env.sender.clone(),
        recipients: env
            .pending()
            .map(|(_, r)| (r.address.clone(), reason_of(r.offset)))
            .collect(),
    })
}

/// A file that was listed and is no longer there: qmgr moved it meanwhile.
fn gone(e: &ReadError) -> bool {
    matches!(e, ReadError::Io(io) if io.kind() == io::ErrorKind::NotFound)
}

/// `asctime()` of a time in local time, cut to 20 characters as showq's
/// `%20.20s` cuts it: `Mon Jan  8 12:34:56 ` (with the trailing space).
fn asctime20(t: i64) -> String {
    // asctime(3) is `Mon Jan  8 12:34:56 2024`; keep 20 characters.
    let mut s = libmail::date::asctime(t);
    s.truncate(20);
    s
}

/// The queue ID as showq decorates it: `*` active or `!` hold, then `#`
/// when the message is forced to expire (a held, expired message is
/// `ID!#`, as Postfix 3.7 prints it); nothing for the other queues. The
/// result pads to its column on its own.
fn decorated_id(m: &Listed) -> String {
    let mut id = m.id.clone();
    match m.queue {
        Queue::Active => id.push('*'),
        Queue::Hold => id.push('!'),
        _ => {}
    }
    if m.forced_expire {
        id.push('#');
    }
    id
}

fn shown_sender(s: &str) -> &str {
    if s.is_empty() {
        "MAILER-DAEMON"
    } else {
        s
    }
}

/// The `-p` listing, exactly as Postfix's showq prints it. `long` is
/// `enable_long_queue_ids`: like Postfix, the layout follows the
/// parameter, not the IDs found (a queue can hold both kinds).
pub fn format_listing(msgs: &[Listed], long: bool) -> String {
    if msgs.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = String::new();
    // showq's header, `%-11s %7s %-20s %s` (`%-17s %8s %-19s %s` with
    // long queue IDs), already laid out.
    out.push_str(if long {
        "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------\n"
    } else {
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
    });
    // A recipient line is the same format with three empty columns.
    let indent = if long {
        17 + 1 + 8 + 1 + 19 + 1
    } else {
        11 + 1 + 7 + 1 + 20 + 1
    };
    let mut total = 0u64;
    for m in msgs {
        total += m.size;
        let id = decorated_id(m);
        let when = asctime20(m.arrival);
        if long {
            let _ = writeln!(
                out,
                "{:<17} {:>8} {:.19} {}",
                id,
                m.size,
                when,
                shown_sender(&m.sender)
            );
        } else {
            let _ = writeln!(
                out,
                "{:<11} {:>7} {:.20} {}",
                id,
                m.size,
                when,
                shown_sender(&m.sender)
            );
        }
        let mut last_reason: Option<&str> = None;
        for (addr, reason) in &m.recipients {
            match reason.as_deref() {
                Some(r) if last_reason != Some(r) => {
                    let pad = 76usize.saturating_sub(r.len());
                    let _ = writeln!(out, "{:pad$}({r})", "");
                    last_reason = Some(r);
                }
                None if last_reason.is_some() => {
                    let r = "reason unavailable";
                    let _ = writeln!(out, "{:pad$}({r})", "", pad = 76 - r.len());
                    last_reason = None;
                }
                _ => {}
            }
            let _ = writeln!(out, "{:indent$}{addr}", "");
        }
        out.push('\n');
    }
    let n = msgs.len();
    let _ = writeln!(
        out,
        "-- {} Kbytes in {} Request{}.",
        total / 1024,
        n,
        if n == 1 { "" } else { "s" }
    );
    out
}

/// A JSON string as Postfix writes it: escapes for `"` and `\`, `?` for
/// anything not printable.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push('?'),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The `-j` listing: one JSON object per line.
pub fn format_json(msgs: &[Listed]) -> String {
    let mut out = String::new();
    for m in msgs {
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|(a, r)| match r {
                Some(r) => format!(
                    "{{\"address\": {}, \"delay_reason\": {}}}",
                    json_str(a),
                    json_str(r)
                ),
                None => format!("{{\"address\": {}}}", json_str(a)),
            })
            .collect();
        let _ = writeln!(
            out,
            "{{\"queue_name\": {}, \"queue_id\": {}, \"arrival_time\": {}, \"message_size\": {}, \"forced_expire\": {}, \"sender\": {}, \"recipients\": [{}]}}",
            json_str(m.queue.name()),
            json_str(&m.id),
            m.arrival,
            m.size,
            m.forced_expire,
            json_str(shown_sender(&m.sender)),
            rcpts.join(", ")
        );
    }
    out
}

/// What postqueue was asked.
enum Mode {
    List,
    Json,
    Flush,
    FlushSite(String),
    FlushId(String),
}

/// `postqueue ARGS`; also `mailq` (`list_only`) and `sendmail -bp`.
pub fn main(args: Vec<String>) -> i32 {
    run(args, false)
}

/// mailq(1): `postqueue -p` with sendmail's config flag `-C`.
pub fn mailq(args: Vec<String>) -> i32 {
    run(args, true)
}

/// `postqueue: fatal: MSG`, and Postfix's exit status.
fn fatal(msg: &str) -> i32 {
    eprintln!("postqueue: fatal: {msg}");
    EX_UNAVAILABLE
}

fn run(args: Vec<String>, mailq: bool) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let spec = if mailq { "C:v" } else { "c:fi:jps:v" };
    let parsed = match getopt(&args, spec) {
        Ok(p) => p,
        Err(e) => {
            // getopt's own line, then the usage, as Postfix prints them.
            eprintln!("postqueue: {e}");
            return fatal(USAGE);
        }
    };
    let mut mode = if mailq { Some(Mode::List) } else { None };
    let mut config_dir = None;
    for o in &parsed.opts {
        let m = match o {
            Opt::WithArg('c' | 'C', d) => {
                config_dir = Some(d.clone());
                continue;
            }
            Opt::Flag('p') => Mode::List,
            Opt::Flag('j') => Mode::Json,
            Opt::Flag('f') => Mode::Flush,
            Opt::WithArg('s', site) => Mode::FlushSite(site.clone()),
            Opt::WithArg('i', id) => Mode::FlushId(id.clone()),
            _ => continue,
        };
        // One operation per run, as in Postfix.
        if mode.is_some() {
            return fatal(USAGE);
        }
        mode = Some(m);
    }
    if !mailq && !parsed.operands.is_empty() {
        return fatal(USAGE);
    }
    let Some(mode) = mode else {
        return fatal(USAGE);
    };
    let dir = config::config_directory(config_dir.as_deref());
    let params = match Params::load(&dir) {
        Ok(p) => p,
        Err(d) => return fatal(&d.postfix_located()),
    };
    let layout = match QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => return fatal(&e),
    };
    // Untrusted input is checked before anything else happens: a name
    // that is not a queue ID never reaches the file system.
    let mut flush_id = None;
    match &mode {
        Mode::FlushSite(site) if !valid_site(site) => {
            return fatal(&format!(
                "Cannot flush mail queue - invalid destination: \"{}\"",
                cut100(site)
            ))
        }
        Mode::FlushId(id) => match QueueId::parse(id) {
            Ok(id) => flush_id = Some(id),
            Err(_) => {
                return fatal(&format!(
                    "Cannot flush queue ID - invalid name: \"{}\"",
                    cut100(id)
                ))
            }
        },
        _ => {}
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let (acl, what) = match mode {
        Mode::List | Mode::Json => ("authorized_mailq_users", "view"),
        _ => ("authorized_flush_users", "flush"),
    };
    match check_user_acl(&params, acl, uid) {
        Ok(None) => {}
        Ok(Some(name)) => {
            return fatal(&format!(
                "User {name}({uid}) is not allowed to {what} the mail queue"
            ))
        }
        Err(e) => return fatal(&e),
    }
    let down = || fatal("Cannot flush mail queue - mail system is down");
    let qmgr = ipc::public(layout.root(), "qmgr");
    match mode {
        Mode::Flush => match ipc::flush(layout.root()) {
            Ok(()) => 0,
            Err(_) => down(),
        },
        Mode::FlushId(_) => {
            // Nothing is changed while qmgr does not listen.
            if ipc::open_trigger(&qmgr).is_err() {
                return down();
            }
            let found = flush_id.and_then(|id| layout.find(&id, &[Queue::Deferred]));
            let due = match found {
                Some((_, path)) => make_due(&path),
                // Not deferred (unknown, or elsewhere): nothing to do,
                // and no message, as with Postfix's flush daemon.
                None => false,
            };
            if due && ipc::trigger(&qmgr, b"D").is_err() {
                return down();
            }
            0
        }
        Mode::FlushSite(site) => {
            let eligible = DomainList::from_param(&params, "fast_flush_domains")
                .and_then(|l| l.matches(&site));
            match eligible {
                Ok(true) => {}
                Ok(false) => {
                    return fatal(&format!(
                        "Flush service is not configured for destination \"{site}\""
                    ))
                }
                Err(e) => return fatal(&e.to_string()),
            }
            if ipc::open_trigger(&qmgr).is_err() {
                return down();
            }
            if flush_site(&layout, &site) > 0 && ipc::trigger(&qmgr, b"D").is_err() {
                return down();
            }
            0
        }
        Mode::List | Mode::Json => {
            let msgs = collect(&layout);
            let text = match mode {
                Mode::List => {
                    let long = params
                        .value("enable_long_queue_ids")
                        .ok()
                        .and_then(|v| config::check::parse_bool(&v))
                        .unwrap_or(false);
                    format_listing(&msgs, long)
                }
                _ => format_json(&msgs),
            };
            let mut so = io::stdout().lock();
            if so
                .write_all(text.as_bytes())
                .and_then(|_| so.flush())
                .is_err()
            {
                return EX_UNAVAILABLE;
            }
            0
        }
    }
}

/// An I/O error the way strerror(3) says it (no `(os error N)`).
fn errtext(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `%.100s%s` with `...` when cut, as Postfix quotes an untrusted name.
fn cut100(s: &str) -> String {
    if s.len() <= 100 {
        return s.to_string();
    }
    let mut end = 100;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The site of `postqueue -s`: a host name (Postfix's valid_hostname) or
/// an address literal, `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn valid_site(site: &str) -> bool {
    if let Some(inner) = site.strip_prefix('[') {
        let Some(addr) = inner.strip_suffix(']') else {
            return false;
        };
        return match addr.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("ipv6:") => {
                addr[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => addr.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    valid_hostname(site)
}

/// Postfix's valid_hostname(): letters, digits, `_` and `-` in labels of
/// at most 63 characters (no label empty, none starting or ending with
/// `-`), at most 255 in all, and not all digits (`1.2.3.4` is not a host
/// name; an address is written `[1.2.3.4]`).
fn valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut non_numeric = false;
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return false;
        }
        if label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        for c in label.bytes() {
            match c {
                b'0'..=b'9' => {}
                b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'-' => non_numeric = true,
                _ => return false,
            }
        }
    }
    non_numeric
}

/// Sets the mtime of a deferred queue file to now: qmgr's next deferred
/// scan finds it due. False when the file is gone (qmgr took it) or
/// cannot be changed (warned).
fn make_due(path: &Path) -> bool {
    let r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| libmail::queue::dirs::make_due(&f));
    match r {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            eprintln!(
                "postqueue: warning: {}: update time stamps: {}",
                path.display(),
                errtext(&e)
            );
            false
        }
    }
}

/// The domain of an address (after the last `@`), without a final dot.
fn domain_of(address: &str) -> Option<&str> {
    address
        .rfind('@')
        .map(|i| address[i + 1..].trim_end_matches('.'))
}

/// `postqueue -s site`: makes due every deferred message with a pending
/// recipient in `site` (the domain, case ignored, or the address literal
/// as written). Returns how many.
fn flush_site(layout: &QueueLayout, site: &str) -> usize {
    let site = site.trim_end_matches('.');
    let mut count = 0;
    for r in layout.scan(Queue::Deferred) {
        let (_, path) = match r {
            Ok(x) => x,
            Err(e) => {
                eprintln!("postqueue: warning: scan deferred: {}", errtext(&e));
                continue;
            }
        };
        let qf = match QueueFile::open(&path, Access::ReadOnly, &Limits::default()) {
            Ok(f) => f,
            // Gone meanwhile (qmgr took it), or still being written.
            Err(e) if e.is_incomplete() || gone(&e) => continue,
            Err(e) => {
                eprintln!("postqueue: warning: {}: {e}", path.display());
                continue;
            }
        };
        let wanted = qf
            .envelope()
            .pending()
            .any(|(_, r)| domain_of(&r.address).is_some_and(|d| d.eq_ignore_ascii_case(site)));
        if !wanted {
            continue;
        }
        match libmail::queue::dirs::make_due(qf.file()) {
            Ok(()) => count += 1,
            Err(e) => eprintln!(
                "postqueue: warning: {}: update time stamps: {}",
                path.display(),
                errtext(&e)
            ),
        }
    }
    count
}

/// Postfix's check_user_acl_byuid(): `Ok(None)` when the user may go on,
/// `Ok(Some(login name))` when refused. Root and `mail_owner` always
/// may; a list starting with `static:` admits everyone (Postfix's
/// shortcut: even `static:nobody`); otherwise the login name of the real
/// UID (`unknown` without a passwd entry) is matched against the list.
pub(crate) fn check_user_acl(
    params: &Params,
    param: &str,
    uid: u32,
) -> Result<Option<String>, String> {
    if uid == 0 {
        return Ok(None);
    }
    if let Ok(owner) = params.value("mail_owner") {
        if crate::facteur::user_id(owner.trim()) == Some(uid) {
            return Ok(None);
        }
    }
    let acl = params.value(param).map_err(|e| format!("{param}: {e}"))?;
    if acl.trim_start().starts_with("static:") {
        return Ok(None);
    }
    let name = user_of_uid(uid).unwrap_or_else(|| "unknown".to_string());
    if user_list_matches(param, &acl, &name)? {
        Ok(None)
    } else {
        Ok(Some(name))
    }
}

/// Most items a user list may grow to through `/file` entries, and how
/// deep such files may name others (a file that names itself stops
/// there).
const MAX_LIST_ITEMS: usize = 100_000;
const MAX_LIST_NESTING: usize = 20;

/// One item of a user list.
enum UserPattern {
    Name(String),
    Table(Box<dyn libmail::table::Table>),
}

/// Postfix's match_list_parse() for a user list: items separated by
/// commas and/or whitespace; `!` inverts (as often as it is written;
/// `!` alone is fatal); `/file/name` stands for the items in the file,
/// read as Postfix reads such files (lines starting with `#` skipped,
/// lines starting with whitespace continuing the previous one), with
/// the sense of the `!` in front of it; `type:table` is opened here, as
/// Postfix opens it when the list is read; an item starting with `#`
/// ends its line with Postfix's warning (no comments after items).
fn parse_user_list(
    param: &str,
    text: &str,
    positive: bool,
    out: &mut Vec<(bool, UserPattern)>,
    budget: &mut usize,
    depth: usize,
) -> Result<(), String> {
    for item in split_list(text) {
        if item.starts_with('#') {
            // split_list hands back slices of `text`.
            let at = item.as_ptr() as usize - text.as_ptr() as usize;
            eprintln!(
                "postqueue: warning: {param}: comment at end of line is not supported: {}",
                text[at..].trim_end()
            );
            break;
        }
        *budget = budget
            .checked_sub(1)
            .ok_or(format!("{param}: too many items"))?;
        let mut sense = positive;
        let mut pat = item;
        while let Some(rest) = pat.strip_prefix('!') {
            sense = !sense;
            pat = rest;
        }
        if pat.is_empty() {
            return Err(format!("{param}: no pattern after '!'"));
        }
        if pat.starts_with('/') {
            if depth >= MAX_LIST_NESTING {
                return Err(format!("{param}: {pat}: files nested too deeply"));
            }
            let content = std::fs::read_to_string(pat)
                .map_err(|e| format!("open file {pat}: {}", errtext(&e)))?;
            for line in logical_lines(&content) {
                parse_user_list(param, &line, sense, out, budget, depth + 1)?;
            }
        } else if pat.contains(':') && !pat.starts_with('[') {
            let table = libmail::table::open(pat, &TableOptions::default())
                .map_err(|e| format!("{param}: {e}"))?;
            out.push((sense, UserPattern::Table(table)));
        } else {
            out.push((sense, UserPattern::Name(pat.to_lowercase())));
        }
    }
    Ok(())
}

/// The logical lines of a list file: comment lines (`#` first) skipped,
/// a line starting with whitespace joined to the one before.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') {
            continue;
        }
        match lines.last_mut() {
            Some(last) if l.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(l);
            }
            _ => lines.push(l.to_string()),
        }
    }
    lines
}

/// Postfix's string_list_match() on a user list: the first item that
/// matches decides (a table matches when the name is a key, whatever the
/// value); case is ignored; no match is a refusal.
fn user_list_matches(param: &str, value: &str, name: &str) -> Result<bool, String> {
    let mut patterns = Vec::new();
    let mut budget = MAX_LIST_ITEMS;
    parse_user_list(param, value, true, &mut patterns, &mut budget, 0)?;
    let name = name.to_lowercase();
    for (sense, pat) in &patterns {
        let hit = match pat {
            UserPattern::Name(n) => *n == name,
            UserPattern::Table(t) => t
                .lookup(&name)
                .map_err(|e| format!("{param}: {e}"))?
                .is_some(),
        };
        if hit {
            return Ok(*sense);
        }
    }
    Ok(false)
}

/// The login name of `uid` (getpwuid_r).
fn user_of_uid(uid: u32) -> Option<String> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: every pointer is valid for the call; buf outlives the read.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r left a NUL-terminated name inside buf.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(
        queue: Queue,
        id: &str,
        size: u64,
        sender: &str,
        rcpts: &[(&str, Option<&str>)],
    ) -> Listed {
        Listed {
            queue,
            id: id.into(),
            arrival: 1_704_717_296, // a fixed time; printed in local time
            size,
            forced_expire: false,
            sender: sender.into(),
            recipients: rcpts
                .iter()
                .map(|(a, r)| (a.to_string(), r.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn empty_queue() {
        assert_eq!(format_listing(&[], false), "Mail queue is empty\n");
        assert_eq!(format_json(&[]), "");
    }

    #[test]
    fn listing_has_postfix_columns_markers_reasons_and_trailer() {
        let when = asctime20(1_704_717_296);
        let msgs = vec![
            msg(
                Queue::Active,
                "4F2A51C0D2",
                1234,
                "alice@example.com",
                &[("bob@example.org", None)],
            ),
            msg(
                Queue::Hold,
                "3C1B2A0E11",
                567,
                "",
                &[
                    (
                        "carol@example.net",
                        Some("connect to mx.example.net[192.0.2.25]:25: Connection refused"),
                    ),
                    (
                        "dave@example.net",
                        Some("connect to mx.example.net[192.0.2.25]:25: Connection refused"),
                    ),
                    ("erin@example.net", None),
                ],
            ),
        ];
        let got = format_listing(&msgs, false);
        let want = format!(
            "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n\
             4F2A51C0D2*    1234 {when} alice@example.com\n\
             {sp41}bob@example.org\n\
             \n\
             3C1B2A0E11!     567 {when} MAILER-DAEMON\n\
             {sp16}(connect to mx.example.net[192.0.2.25]:25: Connection refused)\n\
             {sp41}carol@example.net\n\
             {sp41}dave@example.net\n\
             {sp58}(reason unavailable)\n\
             {sp41}erin@example.net\n\
             \n\
             -- 1 Kbytes in 2 Requests.\n",
            sp41 = " ".repeat(41),
            sp16 = " ".repeat(16),
            sp58 = " ".repeat(58),
        );
        assert_eq!(got, want);
        // The reason line ends at column 78.
        let reason_line = got.lines().find(|l| l.contains("(connect")).unwrap();
        assert_eq!(reason_line.len(), 78);
        assert_eq!(when.len(), 20);
        assert!(when.ends_with(' '));
    }

    #[test]
    fn one_request_is_singular() {
        let got = format_listing(
            &[msg(
                Queue::Deferred,
                "ABCDE12345",
                10,
                "a@b",
                &[("c@d", None)],
            )],
            false,
        );
        assert!(got.ends_with("-- 0 Kbytes in 1 Request.\n"), "{got}");
        assert!(got.contains("\nABCDE12345       10 "), "{got}");
    }

    #[test]
    fn json_lines_in_postfix_member_order() {
        let got = format_json(&[msg(
            Queue::Deferred,
            "3C1B2A0E11",
            567,
            "",
            &[
                ("carol@example.net", Some("refused \"x\"\t")),
                ("d@e", None),
            ],
        )]);
        assert_eq!(
            got,
            "{\"queue_name\": \"deferred\", \"queue_id\": \"3C1B2A0E11\", \"arrival_time\": 1704717296, \
             \"message_size\": 567, \"forced_expire\": false, \"sender\": \"MAILER-DAEMON\", \"recipients\": \
             [{\"address\": \"carol@example.net\", \"delay_reason\": \"refused \\\"x\\\"?\"}, {\"address\": \"d@e\"}]}\n"
        );
    }

    fn expired(mut m: Listed) -> Listed {
        m.forced_expire = true;
        m
    }

    #[test]
    fn forced_expiry_adds_a_hash_after_the_queue_mark() {
        let when = asctime20(1_704_717_296);
        let msgs = vec![
            expired(msg(
                Queue::Deferred,
                "3C1B2A0E11",
                567,
                "a@b",
                &[("c@d", None)],
            )),
            expired(msg(Queue::Hold, "3C1B2A0E12", 567, "a@b", &[("c@d", None)])),
            expired(msg(
                Queue::Active,
                "3C1B2A0E13",
                567,
                "a@b",
                &[("c@d", None)],
            )),
            msg(Queue::Hold, "3C1B2A0E14", 567, "a@b", &[("c@d", None)]),
        ];
        let got = format_listing(&msgs, false);
        // Postfix 3.7.11 after `postsuper -e` (and `-h` then `-e`):
        // `6997698C142#     263 ...`, `6C01598C132!#     263 ...`.
        let firsts: Vec<&str> = got.lines().filter(|l| l.starts_with("3C1B")).collect();
        assert_eq!(
            firsts,
            [
                format!("3C1B2A0E11#     567 {when} a@b"),
                format!("3C1B2A0E12!#     567 {when} a@b"),
                format!("3C1B2A0E13*#     567 {when} a@b"),
                format!("3C1B2A0E14!     567 {when} a@b"),
            ]
        );
    }

    #[test]
    fn json_says_forced_expire_true_for_an_expired_message() {
        let got = format_json(&[
            expired(msg(Queue::Hold, "3C1B2A0E11", 5, "a@b", &[("c@d", None)])),
            msg(Queue::Deferred, "3C1B2A0E12", 5, "a@b", &[("c@d", None)]),
        ]);
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].contains(
                "\"queue_name\": \"hold\", \"queue_id\": \"3C1B2A0E11\", \"arrival_time\": 1704717296, \
                 \"message_size\": 5, \"forced_expire\": true, \"sender\""
            ),
            "{got}"
        );
        assert!(lines[1].contains("\"forced_expire\": false, "), "{got}");
    }

    #[test]
    fn long_queue_id_layout_is_postfix_s() {
        // Postfix 3.7.11 with enable_long_queue_ids = yes (short IDs
        // already queued take the long layout too).
        let when = asctime20(1_704_717_296);
        let got = format_listing(
            &[
                msg(
                    Queue::Deferred,
                    "4jfZy542JWz1SRt4",
                    257,
                    "b@example.org",
                    &[("y@relay.example", Some("refused"))],
                ),
                expired(msg(
                    Queue::Hold,
                    "6C01598C132",
                    263,
                    "a@b",
                    &[("c@d", None)],
                )),
            ],
            true,
        );
        let want = format!(
            "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------\n\
             4jfZy542JWz1SRt4       257 {w19} b@example.org\n\
             {sp67}(refused)\n\
             {sp47}y@relay.example\n\
             \n\
             6C01598C132!#          263 {w19} a@b\n\
             {sp47}c@d\n\
             \n\
             -- 0 Kbytes in 2 Requests.\n",
            w19 = &when[..19],
            sp47 = " ".repeat(47),
            sp67 = " ".repeat(76 - "refused".len()),
        );
        assert_eq!(got, want);
    }

    #[test]
    fn sites_are_host_names_or_address_literals() {
        for good in [
            "example.com",
            "Relay.Example",
            "a_b.example",
            "x-y.example",
            "localhost",
            "1a.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
        ] {
            assert!(valid_site(good), "{good}");
        }
        for bad in [
            "",
            "bad..site",
            ".example",
            "example.",
            "-x.example",
            "x-.example",
            "1.2.3.4",
            "123",
            "[1.2.3]",
            "[1.2.3.4",
            "[2001:db8::1]",
            "a b",
            "../etc",
            "ex/ample",
            &"a".repeat(64),
            &format!("{}.example", ["abc"; 70].join(".")),
        ] {
            assert!(!valid_site(bad), "{bad}");
        }
        assert_eq!(cut100("x"), "x");
        assert_eq!(cut100(&"é".repeat(80)), format!("{}...", "é".repeat(50)));
    }

    #[test]
    fn user_lists_match_like_postfix() {
        let dir = std::env::temp_dir().join(format!("pq-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        std::fs::write(&file, "# admins\nalice, bob\n  carol\n#dave\n").unwrap();
        let table = dir.join("table");
        std::fs::write(&table, "erin yes\n").unwrap();
        let f = file.display();
        let t = table.display();
        let m = |v: &str, n: &str| user_list_matches("authorized_mailq_users", v, n).unwrap();
        assert!(m("alice", "alice"));
        assert!(m("Alice", "ALICE"), "case is ignored");
        assert!(!m("alice", "bob"));
        assert!(!m("", "alice"), "an empty list admits nobody");
        assert!(!m("!alice, static:anyone", "alice"));
        assert!(m("!alice, static:anyone", "bob"), "a table matches any key");
        assert!(m("!!alice", "alice"));
        assert!(m(&format!("{f}"), "carol"), "a continuation line");
        assert!(!m(&format!("{f}"), "dave"), "comment lines are skipped");
        assert!(
            !m(&format!("!{f}, static:anyone"), "bob"),
            "!/file negates its items"
        );
        assert!(m(&format!("!{f}, static:anyone"), "erin"));
        assert!(m(&format!("texthash:{t}"), "erin"));
        assert!(!m(&format!("texthash:{t}"), "frank"));
        let missing = dir.join("missing");
        let e = user_list_matches("p", &missing.display().to_string(), "x").unwrap_err();
        assert_eq!(
            e,
            format!("open file {}: No such file or directory", missing.display())
        );
        // Postfix 3.7.11: an item starting with # ends its line (with a
        // warning); a line starting with # is a comment.
        let trailing = dir.join("trailing");
        std::fs::write(
            &trailing,
            "other # alice
#bob
erin
",
        )
        .unwrap();
        let tr = trailing.display();
        assert!(!m(&format!("{tr}"), "alice"));
        assert!(!m(&format!("{tr}"), "bob"));
        assert!(m(&format!("{tr}"), "erin"));
        assert!(!m("root #alice", "alice"));
        assert!(!m("!!!alice, !!alice", "alice"));
        assert!(m("!!alice", "alice"));
        assert_eq!(
            user_list_matches("p", "root, !", "x").unwrap_err(),
            "p: no pattern after '!'"
        );
        // A table is opened when the list is read, as in Postfix: a
        // missing one is fatal even after a matching name.
        let nodb = dir.join("nodb");
        assert!(
            user_list_matches("p", &format!("alice, hash:{}", nodb.display()), "alice").is_err()
        );
        // A file that names itself ends, with an error.
        let looped = dir.join("loop");
        std::fs::write(&looped, format!("{}\n", looped.display())).unwrap();
        let e = user_list_matches("p", &looped.display().to_string(), "x").unwrap_err();
        assert_eq!(
            e,
            format!("p: {}: files nested too deeply", looped.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
