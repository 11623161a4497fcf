//! sendmail(1), the Sendmail-compatible submission command: reads a
//! message from standard input and writes it, complete and durable, into
//! `$queue_directory/maildrop/` (where Postfix's postdrop puts it; a pickup
//! daemon will move it on). See `docs/man/sendmail.1.md`.
//!
//! ```text
//! sendmail [-i|-oi] [-t] [-f sender] [-r sender] [-F fullname] [-N dsn]
//!          [-R ret] [-V envid] [-B body] [-C config_dir] [-o x] [-v] [recipient ...]
//! ```
//!
//! Exit 0 only once [`Unsynced::sync`](libmail::queue::Unsynced::sync)
//! returned a [`Durable`](libmail::queue::Durable) file. Messages and exit
//! statuses follow Postfix 3.7's `sendmail.c`: every fatal error after the
//! sender is known reads `sendmail: fatal: SENDER(UID): ...`.
//!
//! The envelope is written as Postfix writes it: `A rewrite_context=local`,
//! `F` full name, `S` sender (unqualified: cleanup qualifies it), `n` +
//! `R` for each command-line recipient; the content with leading `From `
//! lines skipped; then, after `X`, the recipients extracted with `-t`.

use std::ffi::CStr;
use std::io::{self, BufRead, Read};

use libmail::cli::getopt;
use libmail::config;
use libmail::config::check::{parse_bool, parse_number};
use libmail::config::params::Params;
use libmail::queue::file::{
    DSN_NOTIFY_DELAY, DSN_NOTIFY_FAILURE, DSN_NOTIFY_NEVER, DSN_NOTIFY_SUCCESS, DSN_RET_FULL,
    DSN_RET_HDRS,
};
use libmail::queue::{IdStyle, NewRecipient, Queue, QueueLayout, Writer};

/// Longest piece of an input line held in memory; longer lines are
/// streamed to the queue file in pieces of this size.
const MAX_HELD_LINE: usize = 1 << 20;

/// sysexits(3).
pub const EX_OK: i32 = 0;
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_UNAVAILABLE: i32 = 69;
pub const EX_SOFTWARE: i32 = 70;
pub const EX_OSERR: i32 = 71;
pub const EX_NOPERM: i32 = 77;
pub const EX_TEMPFAIL: i32 = 75;
pub const EX_CONFIG: i32 = 78;

/// Postfix's option letters (`GETOPT_LIST` in sendmail.c).
const SPEC: &str = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx";

const USAGE: &str = "usage: sendmail [-i|-oi] [-t] [-f sender] [-r sender] [-F fullname] \
[-N never|success,failure,delay] [-R hdrs|full] [-V envid] [-B 7BIT|8BITMIME] \
[-C config_dir] [-o x] [-v] [--] [recipient ...]
Reads a message from standard input and queues it in $queue_directory/maildrop.
-q flushes the queue; -bi (or -I) rebuilds the alias database like newaliases;
-bp lists the queue like mailq.
Not supported yet: -bv, -bd/-bl.
See docs/man/sendmail.1.md.";

/// A fatal error: what to print after `sendmail: fatal: ` and the exit
/// status.
#[derive(Debug)]
struct Fatal(i32, String);

fn fatal<T>(code: i32, msg: impl Into<String>) -> Result<T, Fatal> {
    Err(Fatal(code, msg.into()))
}

/// What the command line asked for.
#[derive(Debug, Default)]
struct Options {
    config_dir: Option<String>,
    extract: bool,
    dot_ends: bool,
    sender: Option<String>,
    full_name: Option<String>,
    dsn_notify: u32,
    dsn_ret: u32,
    dsn_envid: Option<String>,
    encoding: Option<&'static str>,
    verbose: bool,
    recipients: Vec<String>,
    mode: Mode,
}

/// What sendmail was asked to do besides submitting a message.
#[derive(Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Submit,
    /// `-q`: flush the queue.
    Flush,
    /// `-bi` / `-I`: rebuild the alias database.
    NewAliases,
    /// `-bp`: list the queue (mailq).
    List,
    /// `-bs`: SMTP on standard input and output (smtpd -S).
    Smtp,
}

/// `-C dir` / `-Cdir` found before getopt runs.
fn config_dir_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter().take_while(|a| *a != "--");
    while let Some(a) = it.next() {
        if a == "-C" {
            return it.next().cloned();
        }
        if let Some(d) = a.strip_prefix("-C") {
            return Some(d.to_string());
        }
    }
    None
}

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return EX_OK;
    }
    match run(args) {
        Ok(()) => EX_OK,
        // (An empty message: the command run in sendmail's place said it.)
        Err(Fatal(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("sendmail: fatal: {msg}");
            }
            code
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options, Fatal> {
    // A bare `-q` (flush) takes no argument in practice, though getopt's
    // spec says `q:`; catch it before getopt swallows the next word.
    if args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("-q"))
    {
        return Ok(Options {
            mode: Mode::Flush,
            config_dir: config_dir_arg(args),
            ..Default::default()
        });
    }
    let parsed = match getopt(args, SPEC) {
        Ok(p) => p,
        Err(e) => return fatal(EX_USAGE, format!("{e}\n{USAGE}")),
    };
    let mut o = Options {
        dot_ends: true,
        ..Default::default()
    };
    use libmail::cli::Opt;
    for opt in &parsed.opts {
        match opt {
            Opt::Flag('t') => o.extract = true,
            Opt::Flag('i') => o.dot_ends = false,
            Opt::Flag('v') => o.verbose = true,
            Opt::Flag('I') => o.mode = Mode::NewAliases,
            // Accepted and ignored, as Postfix does.
            Opt::Flag(_) => {}
            Opt::WithArg('o', v) => {
                if v == "i" {
                    o.dot_ends = false;
                }
                // -o7 -o8 -om -ox, -oAfile and the rest: ignored.
            }
            Opt::WithArg('C', v) => o.config_dir = Some(v.clone()),
            Opt::WithArg('f', v) | Opt::WithArg('r', v) => o.sender = Some(v.clone()),
            Opt::WithArg('F', v) => o.full_name = Some(v.clone()),
            Opt::WithArg('N', v) => match dsn_notify_mask(v) {
                Some(m) => o.dsn_notify = m,
                None => eprintln!("sendmail: warning: bad -N option value -- ignored"),
            },
            Opt::WithArg('R', v) => {
                o.dsn_ret = if v.eq_ignore_ascii_case("hdrs") {
                    DSN_RET_HDRS
                } else if v.eq_ignore_ascii_case("full") {
                    DSN_RET_FULL
                } else {
                    return fatal(EX_USAGE, format!("Invalid RET parameter value: {v}"));
                }
            }
            Opt::WithArg('V', v) => o.dsn_envid = Some(v.clone()),
            Opt::WithArg('B', v) => {
                o.encoding = if v.eq_ignore_ascii_case("8BITMIME") {
                    Some("8bit")
                } else if v.eq_ignore_ascii_case("7BIT") {
                    Some("7bit")
                } else {
                    return fatal(EX_USAGE, "-B option needs 8BITMIME or 7BIT");
                }
            }
            Opt::WithArg('b', v) => match v.chars().next() {
                Some('m') => {}
                Some('h' | 'H') => {}
                Some('p') => o.mode = Mode::List,
                Some('i') => o.mode = Mode::NewAliases,
                Some('s') => o.mode = Mode::Smtp,
                Some('v') => return unsupported("-bv (address verification)"),
                Some('d' | 'l') => return unsupported("-bd/-bl (daemon mode)"),
                _ => return fatal(EX_USAGE, format!("unsupported: -b{v}")),
            },
            Opt::WithArg('X', v) if v.starts_with('V') => {
                return unsupported("-XV (VERP)");
            }
            // -A -e -h -L -O -p -X file: accepted and ignored.
            Opt::WithArg(_, _) => {}
        }
    }
    o.recipients = parsed.operands;
    Ok(o)
}

fn unsupported<T>(what: &str) -> Result<T, Fatal> {
    fatal(
        EX_UNAVAILABLE,
        format!("{what} is not supported yet by Facteur's sendmail (see docs/man/sendmail.1.md)"),
    )
}

/// `-N`: `never`, or a comma list of `success`, `failure`, `delay`.
fn dsn_notify_mask(v: &str) -> Option<u32> {
    let mut mask = 0;
    for word in v.split([',', ' ']).filter(|w| !w.is_empty()) {
        mask |= if word.eq_ignore_ascii_case("never") {
            DSN_NOTIFY_NEVER
        } else if word.eq_ignore_ascii_case("success") {
            DSN_NOTIFY_SUCCESS
        } else if word.eq_ignore_ascii_case("failure") {
            DSN_NOTIFY_FAILURE
        } else if word.eq_ignore_ascii_case("delay") {
            DSN_NOTIFY_DELAY
        } else {
            return None;
        };
    }
    if mask == 0 || (mask & DSN_NOTIFY_NEVER != 0 && mask != DSN_NOTIFY_NEVER) {
        return None;
    }
    Some(mask)
}

/// The invoking user's passwd entry: login name and the GECOS full name.
fn passwd_of_uid(uid: libc::uid_t) -> Option<(String, String)> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: all pointers are valid for the call; buf outlives the reads below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r filled pw with NUL-terminated strings inside buf.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    let gecos = if pw.pw_gecos.is_null() {
        String::new()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(pw.pw_gecos) }
            .to_string_lossy()
            .into_owned()
    };
    Some((name, gecos))
}

fn run(args: Vec<String>) -> Result<(), Fatal> {
    let opts = parse_options(&args)?;
    let config_dir = config::config_directory(opts.config_dir.as_deref());
    match opts.mode {
        Mode::Submit => {}
        Mode::List => {
            let mut a = Vec::new();
            if let Some(d) = &opts.config_dir {
                a.extend(["-C".to_string(), d.clone()]);
            }
            return match crate::postqueue::mailq(a) {
                0 => Ok(()),
                code => Err(Fatal(code, "cannot list the mail queue".into())),
            };
        }
        Mode::NewAliases => {
            let mut a = Vec::new();
            if let Some(d) = &opts.config_dir {
                a.extend(["-C".to_string(), d.clone()]);
            }
            return match crate::postalias::newaliases(a) {
                0 => Ok(()),
                code => Err(Fatal(code, "newaliases failed".into())),
            };
        }
        Mode::Smtp => {
            // As Postfix's sendmail does: run smtpd stand-alone on our
            // standard input and output.
            let params =
                Params::load(&config_dir).map_err(|d| Fatal(EX_CONFIG, d.postfix_located()))?;
            let dir = params
                .value("daemon_directory")
                .map_err(|e| Fatal(EX_CONFIG, format!("daemon_directory: {e}")))?;
            let smtpd = std::path::Path::new(&dir).join("smtpd");
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(&smtpd)
                .args(["-S", "-c", &config_dir])
                .exec();
            return Err(Fatal(
                EX_UNAVAILABLE,
                format!("cannot run {}: {e}", smtpd.display()),
            ));
        }
        Mode::Flush => {
            // Postfix's sendmail runs `postqueue -f`: the same access list
            // (authorized_flush_users), words and exit status.
            let mut a = Vec::new();
            if let Some(d) = &opts.config_dir {
                a.extend(["-c".to_string(), d.clone()]);
            }
            a.push("-f".to_string());
            return match crate::postqueue::main(a) {
                0 => Ok(()),
                code => Err(Fatal(code, String::new())),
            };
        }
    }
    let params = match Params::load(&config_dir) {
        Ok(p) => p,
        Err(d) => return fatal(EX_TEMPFAIL, d.located()),
    };
    let value = |n: &str| params.value(n).unwrap_or_default();

    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    // authorized_submit_users, before anything is written (root and the
    // mail owner pass, as with postqueue's lists).
    match crate::postqueue::check_user_acl(&params, "authorized_submit_users", uid) {
        Ok(None) => {}
        Ok(Some(name)) => {
            return fatal(
                EX_NOPERM,
                format!("User {name}({uid}) is not allowed to submit mail"),
            )
        }
        Err(e) => return fatal(EX_CONFIG, e),
    }
    let pw = passwd_of_uid(uid);
    let sender = match &opts.sender {
        Some(s) => first_address(s),
        None => match &pw {
            Some((name, _)) => name.clone(),
            None => return fatal(EX_OSERR, format!("no login name found for user ID {uid}")),
        },
    };
    let who = format!("{sender}({uid})");
    let full_name = opts.full_name.clone().or_else(|| {
        std::env::var("NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                pw.as_ref()
                    .map(|(_, g)| g.split(',').next().unwrap_or("").trim().to_string())
                    .filter(|g| !g.is_empty())
            })
    });

    if !opts.extract && opts.recipients.is_empty() {
        return fatal(
            EX_USAGE,
            format!(
                "{who}: Recipient addresses must be specified on the command line or via the -t option"
            ),
        );
    }

    let size_limit = match parse_number(&value("message_size_limit")) {
        Some(n) if n >= 0 => n as u64,
        _ => {
            return fatal(
                EX_TEMPFAIL,
                format!(
                    "bad numerical configuration: message_size_limit = {}",
                    value("message_size_limit")
                ),
            )
        }
    };
    let strip_cr = match value("sendmail_fix_line_endings").as_str() {
        "always" => StripCr::Do,
        "strict" => StripCr::Dunno,
        "never" => StripCr::Dont,
        other => {
            return fatal(
                EX_USAGE,
                format!("invalid sendmail_fix_line_endings value: {other}"),
            )
        }
    };
    let layout = match QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => return fatal(EX_TEMPFAIL, e),
    };
    let style = IdStyle::from_long_ids(parse_bool(&value("enable_long_queue_ids")) == Some(true));

    let minfree = params
        .value("queue_minfree")
        .ok()
        .and_then(|v| parse_number(&v))
        .unwrap_or(0)
        .max(0) as u64;
    if !layout.has_room(minfree).unwrap_or(true) {
        return fatal(
            EX_TEMPFAIL,
            format!(
                "{who}: Insufficient system storage: less than queue_minfree = {minfree} bytes free in {}; try again later",
                layout.root().display()
            ),
        );
    }
    let maildrop = layout.dir(Queue::Maildrop);
    let write_err = |e: io::Error| {
        Fatal(
            EX_TEMPFAIL,
            format!("{who}: error writing queue file: {}", errtext(&e)),
        )
    };
    let mut w = match Writer::create(&layout, Queue::Maildrop, style) {
        Ok(w) => w,
        Err(e) => {
            return fatal(
                EX_TEMPFAIL,
                format!(
                    "{who}: cannot create a queue file in {}: {}; run 'facteur set-permissions' \
                     to create or repair the queue directory",
                    maildrop.display(),
                    errtext(&e)
                ),
            )
        }
    };

    // Envelope, in Postfix's order (postdrop writes the arrival time first).
    (|| -> io::Result<()> {
        w.arrival_time(std::time::SystemTime::now())?;
        if let Some(envid) = &opts.dsn_envid {
            w.dsn_envid(envid)?;
        }
        if opts.dsn_ret != 0 {
            w.dsn_ret(opts.dsn_ret)?;
        }
        w.attr("rewrite_context", "local")?;
        if let Some(f) = &full_name {
            w.full_name(f)?;
        }
        w.sender(&sender)?;
        if let Some(enc) = opts.encoding {
            w.attr("encoding", enc)?;
        }
        for arg in &opts.recipients {
            let addrs = parse_address_list(arg);
            if addrs.is_empty() {
                // Postfix writes an empty recipient for an argument without
                // an address; cleanup reports it.
                w.recipient(&NewRecipient {
                    dsn_notify: opts.dsn_notify,
                    ..NewRecipient::new("")
                })?;
            }
            for a in &addrs {
                w.recipient(&NewRecipient {
                    dsn_notify: opts.dsn_notify,
                    ..NewRecipient::new(a)
                })?;
            }
        }
        w.start_content()
    })()
    .map_err(write_err)?;

    // Content.
    let stdin = io::stdin();
    let limit = if size_limit > 0 {
        size_limit + 1
    } else {
        u64::MAX
    };
    let mut input = io::BufReader::with_capacity(1 << 16, stdin.lock().take(limit));
    let mut copier = Copier {
        extract: opts.extract,
        dot_ends: opts.dot_ends,
        strip_cr,
        in_header: true,
        skip_from: true,
        current: None,
        to: Vec::new(),
        resent: Vec::new(),
        saw_resent: false,
    };
    let mut line = Vec::new();
    let mut total: u64 = 0;
    // Set while a line longer than MAX_HELD_LINE is being streamed.
    let mut in_long_line = false;
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_HELD_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| {
                Fatal(
                    EX_DATAERR,
                    format!("{who}: error reading input: {}", errtext(&e)),
                )
            })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if size_limit > 0 && total > size_limit {
            return fatal(EX_UNAVAILABLE, format!("{who}: message file too big"));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n == MAX_HELD_LINE {
            // More of this line follows: stream this part as it is, so no
            // line is ever held whole (message_size_limit = 0 allows any
            // size). Such a line is content, never a header to parse.
            copier.end_header();
            copier.in_header = false;
            copier.skip_from = false;
            w.content_part(&line).map_err(write_err)?;
            in_long_line = true;
            continue;
        }
        if in_long_line {
            in_long_line = false;
            if copier.strip_cr == StripCr::Do {
                while line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            w.content_line(&line).map_err(write_err)?;
            continue;
        }
        if !copier.line(&mut w, &mut line).map_err(write_err)? {
            break;
        }
    }
    if in_long_line {
        w.content_line(b"").map_err(write_err)?;
    }
    copier.end_header();

    // Extracted recipients.
    w.start_extracted().map_err(write_err)?;
    let mut rcpt_count = opts.recipients.len();
    if opts.extract {
        let list = if copier.saw_resent {
            &copier.resent
        } else {
            &copier.to
        };
        for a in list {
            w.recipient(&NewRecipient {
                dsn_notify: opts.dsn_notify,
                ..NewRecipient::new(a)
            })
            .map_err(write_err)?;
            rcpt_count += 1;
        }
    }
    if rcpt_count == 0 {
        // The unfinished file is removed when the writer is dropped.
        return fatal(
            EX_USAGE,
            format!("{who}: No recipient addresses found in message header"),
        );
    }
    let unsynced = w.finish().map_err(write_err)?;
    let durable = unsynced.sync().map_err(write_err)?;
    // Wake pickup, as postdrop does; if it is not running, its wakeup
    // timer (or the next start) finds the file.
    let _ = libmail::ipc::trigger(&libmail::ipc::public(layout.root(), "pickup"), b"W");
    if opts.verbose {
        eprintln!(
            "sendmail: queued as {} in {}",
            durable.id(),
            maildrop.display()
        );
    }
    Ok(())
}

/// An I/O error as strerror words it (`%m`), without Rust's
/// ` (os error N)` suffix.
fn errtext(e: &io::Error) -> String {
    let t = e.to_string();
    match t.find(" (os error ") {
        Some(i) if t.ends_with(')') => t[..i].to_string(),
        _ => t,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StripCr {
    Dunno,
    Do,
    Dont,
}

/// Which header the current (possibly folded) header line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    To,
    Resent,
}

/// Streams lines into the queue file: From_ skipping, CR stripping, the
/// lone-dot end, and with `-t` recipient extraction and Bcc removal.
struct Copier {
    extract: bool,
    dot_ends: bool,
    strip_cr: StripCr,
    in_header: bool,
    skip_from: bool,
    /// The recipient header being collected, with whether it is dropped.
    current: Option<(Kind, bool, Vec<u8>)>,
    to: Vec<String>,
    resent: Vec<String>,
    saw_resent: bool,
}

impl Copier {
    /// One input line without its LF; false when input ends here (`.`).
    fn line(&mut self, w: &mut Writer, line: &mut Vec<u8>) -> io::Result<bool> {
        if self.strip_cr == StripCr::Dunno {
            self.strip_cr = if line.last() == Some(&b'\r') {
                StripCr::Do
            } else {
                StripCr::Dont
            };
        }
        if self.skip_from {
            let start = line.iter().take_while(|&&c| c == b'>').count();
            if line[start..].starts_with(b"From ") {
                return Ok(true);
            }
            self.skip_from = false;
        }
        if self.strip_cr == StripCr::Do {
            while line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if self.dot_ends && line.as_slice() == b"." {
            return Ok(false);
        }
        if self.in_header && self.extract {
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            if let (true, Some((_, drop, text))) = (continuation, self.current.as_mut()) {
                text.push(b' ');
                text.extend_from_slice(line);
                if *drop {
                    return Ok(true);
                }
            } else {
                self.end_header();
                match header_name(line) {
                    Some(name) => {
                        let n = name.trim_ascii_end().to_ascii_lowercase();
                        let kind = match n.as_slice() {
                            b"to" | b"cc" | b"bcc" => Some(Kind::To),
                            b"resent-to" | b"resent-cc" | b"resent-bcc" => Some(Kind::Resent),
                            _ => None,
                        };
                        if let Some(kind) = kind {
                            let drop = n.ends_with(b"bcc");
                            let value = line[name.len() + 1..].to_vec();
                            self.current = Some((kind, drop, value));
                            if drop {
                                return Ok(true);
                            }
                        } else {
                            self.current = Some((Kind::Other, false, Vec::new()));
                        }
                    }
                    None => self.in_header = false,
                }
            }
        }
        w.content_line(line)?;
        Ok(true)
    }

    /// The end of a header: its addresses go to the extracted list.
    fn end_header(&mut self) {
        if let Some((kind, _, text)) = self.current.take() {
            let text = String::from_utf8_lossy(&text);
            match kind {
                Kind::To => self.to.extend(parse_address_list(&text)),
                Kind::Resent => {
                    self.saw_resent = true;
                    self.resent.extend(parse_address_list(&text));
                }
                Kind::Other => {}
            }
        }
    }
}

/// The field name of a header line (`Name:`), or `None` when the line is
/// not a header (the body starts there; an empty line included).
fn header_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&c| c == b':')?;
    let name = &line[..colon];
    let name_trimmed = name.trim_ascii_end();
    if name_trimmed.is_empty() || !name_trimmed.iter().all(|&c| c.is_ascii_graphic()) {
        return None;
    }
    Some(name)
}

/// The addresses of an RFC 822 address list, as Postfix's tok822 parser
/// finds them: `a@b, Name <c@d>, "x y" <e@f>, group: g@h;` with comments
/// removed. Quotes are kept only around local parts that need them.
pub fn parse_address_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Split at commas (and group colons/semicolons) outside quotes,
    // comments and angle brackets.
    let mut items: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut depth_paren = 0usize;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if in_quote {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        if depth_paren > 0 {
            match c {
                '\\' => {
                    chars.next();
                }
                '(' => depth_paren += 1,
                ')' => depth_paren -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_quote = true;
                cur.push(c);
            }
            '(' => depth_paren = 1,
            '<' => {
                in_angle = true;
                cur.push(c);
            }
            '>' => {
                in_angle = false;
                cur.push(c);
            }
            ',' | ';' if !in_angle => items.push(std::mem::take(&mut cur)),
            // A group name ends at ':' outside a route or address.
            ':' if !in_angle => cur.clear(),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let addr = match (item.find('<'), item.rfind('>')) {
            (Some(a), Some(b)) if a < b => {
                let inner = item[a + 1..b].trim();
                // Drop a source route: <@a,@b:user@c>.
                match inner.rfind(':') {
                    Some(i) if inner.starts_with('@') => inner[i + 1..].trim(),
                    _ => inner,
                }
                .to_string()
            }
            _ => item.split_whitespace().collect::<Vec<_>>().join(""),
        };
        out.push(unquote_local(&addr));
    }
    out
}

/// `"john smith"@x` stays quoted (it needs it); `"john"@x` becomes
/// `john@x`, as tok822_internalize writes it.
fn unquote_local(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('"') {
        if let Some(end) = rest.find('"') {
            let local = &rest[..end];
            if !local.is_empty()
                && local
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
            {
                return format!("{local}{}", &rest[end + 1..]);
            }
        }
    }
    addr.to_string()
}

/// The first address of a `-f` argument; `<>` is the null sender.
fn first_address(s: &str) -> String {
    let list = parse_address_list(s);
    if list.len() > 1 {
        eprintln!("sendmail: warning: -f option specified malformed sender: {s}");
    }
    list.into_iter().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(
            parse_address_list("a@b, Joe <c@d> (comment), \"x\"@e"),
            vec!["a@b", "c@d", "x@e"]
        );
        assert_eq!(
            parse_address_list("\"Smith, J\" <j@x>, undisclosed: u@v, w@x;"),
            vec!["j@x", "u@v", "w@x"]
        );
        assert_eq!(
            parse_address_list("undisclosed-recipients:;"),
            Vec::<String>::new()
        );
        assert_eq!(first_address("<>"), "");
        assert_eq!(first_address("Me <me@here>"), "me@here");
    }

    #[test]
    fn notify() {
        assert_eq!(dsn_notify_mask("never"), Some(DSN_NOTIFY_NEVER));
        assert_eq!(
            dsn_notify_mask("failure,delay"),
            Some(DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY)
        );
        assert_eq!(dsn_notify_mask("never,delay"), None);
        assert_eq!(dsn_notify_mask("bogus"), None);
    }
}
