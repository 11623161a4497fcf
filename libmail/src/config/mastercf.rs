//! master.cf: the services the master process runs.
//!
//! One logical line (see [`crate::config::lines`]) per service, eight
//! whitespace-separated fields, the last one being the command followed by
//! its arguments:
//!
//! ```text
//! # service type  private unpriv  chroot  wakeup  maxproc command + args
//! smtp      inet  n       -       y       -       -       smtpd
//!   -o smtpd_tls_security_level=may
//! ```
//!
//! * `-` in the private, unpriv, chroot, wakeup and maxproc columns means
//!   "the default"; the others are `y`/`n`, `N`/`N?` (seconds; `?` = no
//!   wakeup before the service is first used) and a number;
//! * a field may be a `{ text with spaces }` group (Postfix 3.0): a group
//!   is one field, and in the command arguments the braces and the blanks
//!   just inside them are removed (`{ a b }` is the argument `a b`);
//! * `-o name=value`, `-oname=value` and `-o { name = value }` override a
//!   main.cf parameter for that service;
//! * entries with the same name and type: the last one wins
//!   ([`MasterCf::find`], [`MasterCf::effective`]); `postconf -M` still
//!   shows them all, so [`MasterCf::services`] keeps them all, in file
//!   order.
//!
//! The reading follows `postconf`'s: the fields are checked the way
//! `postconf -M` checks them, and the daemon arguments are brought into
//! the form `postconf -M` prints ([`Service::argv`]). On top of that come
//! the checks Postfix's master makes when it starts (an `inet` service
//! cannot be private) and what Facteur itself needs (numbers that fit, a
//! bounded size, programs Facteur provides).
//!
//! Every problem is returned as a [`Problem`]: a [`Diagnostic`] for
//! `facteur check`, and, when Postfix's `postconf` reports the same
//! problem, its exact wording ([`PostconfText`]), so `postconf -M` can
//! print what Postfix prints.

use super::diag::{Diagnostic, Severity};
use super::lines::{logical_lines, LineProblem};

/// Most services accepted in one master.cf (Postfix has no limit; a real
/// master.cf has a few dozen).
pub const MAX_SERVICES: usize = 10_000;
/// Most command arguments (after the command name) of one service.
pub const MAX_ARGS: usize = 1_000;

/// The characters that separate master.cf fields (Postfix's
/// `PCF_MASTER_BLANKS`).
const BLANKS: &[u8] = b" \t\r\n";

/// The `type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceType {
    Inet,
    Unix,
    UnixDgram,
    Fifo,
    Pass,
}

impl ServiceType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceType::Inet => "inet",
            ServiceType::Unix => "unix",
            ServiceType::UnixDgram => "unix-dgram",
            ServiceType::Fifo => "fifo",
            ServiceType::Pass => "pass",
        }
    }

    /// The type named exactly `s` (case matters, as in Postfix).
    pub fn parse(s: &str) -> Option<ServiceType> {
        Some(match s {
            "inet" => ServiceType::Inet,
            "unix" => ServiceType::Unix,
            "unix-dgram" => ServiceType::UnixDgram,
            "fifo" => ServiceType::Fifo,
            "pass" => ServiceType::Pass,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `wakeup` column when it is not `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wakeup {
    /// Seconds between wakeups; 0 = never.
    pub seconds: u32,
    /// `N?`: no wakeup until the service has been used once.
    pub if_used: bool,
}

/// One master.cf entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Column 1: `smtp`, `127.0.0.1:10025`, `[::1]:25`, `pickup`, ...
    pub name: String,
    pub kind: ServiceType,
    /// `None` = `-` (default `y`).
    pub private: Option<bool>,
    /// `None` = `-` (default `y`).
    pub unprivileged: Option<bool>,
    /// `None` = `-` (default `n` since compatibility level 1).
    pub chroot: Option<bool>,
    /// `None` = `-` (never).
    pub wakeup: Option<Wakeup>,
    /// `None` = `-` (`$default_process_limit`); 0 = no limit.
    pub process_limit: Option<u32>,
    /// Column 8: the program, relative to `daemon_directory`, as written.
    pub command: String,
    /// The arguments after the command, in the form `postconf -M` shows
    /// them: `{ }` groups without their braces, `-oname=value` split into
    /// `-o` and `name=value`, `-o { name = value }` as `name=value`.
    pub args: Vec<String>,
    /// The `-o name=value` options the daemon will apply, in order (a
    /// later one for the same name wins). Daemon options end at the first
    /// argument that is not an option, as for Postfix's daemons.
    pub overrides: Vec<(String, String)>,
    /// The number of the first physical line of the entry.
    pub line: usize,
    /// The eight fields as written (brace groups keep their braces).
    pub raw_fields: Vec<String>,
    /// The whole entry as `postconf` holds it: `raw_fields` followed by
    /// `args`. `postconf -M` prints exactly this.
    pub argv: Vec<String>,
    /// The logical line the entry was read from.
    pub text: String,
}

impl Service {
    /// `name/type`, the key `postconf -M name/type` and `-P` use.
    pub fn key(&self) -> String {
        format!("{}/{}", self.name, self.kind.as_str())
    }

    /// The program's base name, `$process_name` for this service.
    pub fn process_name(&self) -> &str {
        basename(&self.command)
    }

    /// `$service_name` for this service.
    pub fn service_name(&self) -> &str {
        &self.name
    }

    /// The value of an override (the last `-o name=...` wins).
    pub fn override_value(&self, name: &str) -> Option<&str> {
        self.overrides
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed master.cf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasterCf {
    /// Every entry, in file order, duplicates included.
    pub services: Vec<Service>,
}

impl MasterCf {
    /// The entry for `name`/`kind`: the last one when there are several,
    /// as Postfix's master uses the last definition.
    pub fn find(&self, name: &str, kind: ServiceType) -> Option<&Service> {
        self.services
            .iter()
            .rev()
            .find(|s| s.kind == kind && s.name == name)
    }

    /// The services master runs: one per name and type, the last
    /// definition of each, in the order of their first appearance.
    pub fn effective(&self) -> Vec<&Service> {
        let mut out: Vec<&Service> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for s in &self.services {
            match seen.get(&(s.name.as_str(), s.kind)) {
                Some(&i) => out[i] = s,
                None => {
                    seen.insert((s.name.as_str(), s.kind), out.len());
                    out.push(s);
                }
            }
        }
        out
    }
}

/// How Postfix's `postconf` reports a problem: the text after
/// `postconf: warning: ` or `postconf: fatal: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostconfText {
    Warning(String),
    Fatal(String),
}

/// One problem of master.cf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// For `facteur check`: severity, file, line, message.
    pub diag: Diagnostic,
    /// What `postconf` says about it, when it says something. Problems
    /// only Postfix's master (or only Facteur) notices have `None`.
    pub postconf: Option<PostconfText>,
}

/// Parse master.cf text; `path` names the file in diagnostics.
pub fn parse(text: &str, path: &str) -> (MasterCf, Vec<Diagnostic>) {
    let (mc, problems) = parse_detailed(text, path);
    (mc, problems.into_iter().map(|p| p.diag).collect())
}

/// [`parse`], keeping `postconf`'s wording of each problem. Problems come
/// in file order, which is the order `postconf` meets them.
pub fn parse_detailed(text: &str, path: &str) -> (MasterCf, Vec<Problem>) {
    let (lines, line_problems) = logical_lines(text);
    let mut problems = Vec::new();
    let mut services = Vec::new();

    // Shape problems and entries, merged back into file order.
    let mut shape: Vec<(usize, Problem)> = line_problems
        .into_iter()
        .map(|lp| match lp {
            LineProblem::LeadingWhitespace { line, text } => {
                let msg = format!("logical line must not start with whitespace: \"{text}\"");
                (
                    line,
                    Problem {
                        diag: Diagnostic::new(Severity::Warning, path, Some(line), msg.clone()),
                        postconf: Some(PostconfText::Warning(format!("{path}: {msg}"))),
                    },
                )
            }
            LineProblem::TooLong { line } => {
                let msg = format!(
                    "logical line longer than {} bytes",
                    super::lines::MAX_LOGICAL_LINE
                );
                (
                    line,
                    Problem {
                        diag: Diagnostic::new(Severity::Error, path, Some(line), msg.clone()),
                        postconf: Some(PostconfText::Fatal(format!(
                            "file {path}: line {line}: {msg}"
                        ))),
                    },
                )
            }
        })
        .collect();
    shape.reverse();

    for ll in lines {
        while shape.last().is_some_and(|(l, _)| *l < ll.line) {
            problems.push(shape.pop().unwrap().1);
        }
        if services.len() >= MAX_SERVICES {
            let msg = format!("too many services (more than {MAX_SERVICES})");
            problems.push(Problem {
                diag: Diagnostic::new(Severity::Error, path, Some(ll.line), msg.clone()),
                postconf: Some(PostconfText::Fatal(format!(
                    "file {path}: line {}: {msg}",
                    ll.line
                ))),
            });
            break;
        }
        if let Some(s) = parse_entry(&ll.text, ll.line, path, &mut problems) {
            services.push(s);
        }
    }
    while let Some((_, p)) = shape.pop() {
        problems.push(p);
    }
    (MasterCf { services }, problems)
}

/// Parse one logical line into a service, pushing its problems.
fn parse_entry(
    text: &str,
    line: usize,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Service> {
    let error = |msg: String, postconf: Option<PostconfText>| Problem {
        diag: Diagnostic::new(Severity::Error, path, Some(line), msg),
        postconf,
    };
    let mut argv = split_fields(text);
    if argv.len() < 8 {
        problems.push(error(
            "bad field count".to_string(),
            Some(PostconfText::Fatal(format!(
                "file {path}: line {line}: bad field count"
            ))),
        ));
        return None;
    }
    if argv.len() - 8 > MAX_ARGS {
        let msg = format!("too many command arguments (more than {MAX_ARGS})");
        problems.push(error(
            msg.clone(),
            Some(PostconfText::Fatal(format!(
                "file {path}: line {line}: {msg}"
            ))),
        ));
        return None;
    }
    if let Err(msg) = check_fields(&argv, text) {
        problems.push(error(msg.clone(), Some(PostconfText::Fatal(msg))));
        return None;
    }
    let raw_fields: Vec<String> = argv[..8].to_vec();

    // The fields passed postconf's checks; now what master and Facteur
    // need on top.
    let kind = ServiceType::parse(&argv[1]).expect("checked");
    let flag = |s: &str| match s {
        "y" => Some(true),
        "n" => Some(false),
        _ => None,
    };
    let private = flag(&argv[2]);
    let unprivileged = flag(&argv[3]);
    let chroot = flag(&argv[4]);
    let mut ok = true;
    if kind == ServiceType::Inet && private != Some(false) {
        let msg = if private.is_none() {
            "inet service cannot be private (the private column must be \"n\"; \"-\" means \"y\")"
        } else {
            "inet service cannot be private"
        };
        problems.push(error(msg.to_string(), None));
        ok = false;
    }
    let wakeup = match argv[5].as_str() {
        "-" => None,
        w => {
            let (digits, if_used) = match w.strip_suffix('?') {
                Some(d) => (d, true),
                None => (w, false),
            };
            match digits.parse::<u32>() {
                Ok(seconds) => Some(Wakeup { seconds, if_used }),
                Err(_) => {
                    // postconf lets a bare `?` through; master does not.
                    let msg = if digits.is_empty() {
                        format!("field \"wakeup\": bad value: \"{w}\"")
                    } else {
                        format!("wakeup field \"{w}\" is too large")
                    };
                    problems.push(error(msg, None));
                    ok = false;
                    None
                }
            }
        }
    };
    let process_limit = match argv[6].as_str() {
        "-" => None,
        p => match p.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(error(
                    format!("process_limit field \"{p}\" is too large"),
                    None,
                ));
                ok = false;
                None
            }
        },
    };

    // Daemon arguments: postconf's normal form, with its warnings (which
    // Postfix's master and daemons treat as fatal, so errors here).
    let mut notes = Vec::new();
    normalize_args(&mut argv, &mut notes);
    let mut noted_values = Vec::new();
    for n in notes {
        if let Some(i) = n.value_index {
            noted_values.push(i);
        }
        problems.push(error(
            n.message.clone(),
            Some(PostconfText::Warning(n.postconf)),
        ));
        ok = false;
    }
    let (overrides, bad) = daemon_overrides(&argv);
    for (i, value, err) in bad {
        if noted_values.contains(&i) {
            continue;
        }
        problems.push(error(
            format!("invalid \"-o {value}\" option value: {err}"),
            None,
        ));
        ok = false;
    }

    let service = Service {
        name: argv[0].clone(),
        kind,
        private,
        unprivileged,
        chroot,
        wakeup,
        process_limit,
        command: argv[7].clone(),
        args: argv[8..].to_vec(),
        overrides,
        line,
        raw_fields,
        argv,
        text: text.to_string(),
    };
    if ok && !provided_by_facteur(&service.command) {
        let program = service.process_name();
        let why = if program == "trivial-rewrite" {
            ": address rewriting and resolution are done inside cleanup, qmgr and smtpd"
        } else if POSTFIX_PROGRAMS.contains(&program) {
            " (not yet)"
        } else {
            ""
        };
        problems.push(Problem {
            diag: Diagnostic::new(
                Severity::Info,
                path,
                Some(line),
                format!(
                    "service \"{}\" ({}): program \"{}\" is not provided by Facteur{}; see docs/compatibility.md",
                    service.name,
                    service.kind.as_str(),
                    program,
                    why
                ),
            ),
            postconf: None,
        });
    }
    Some(service)
}

/// The master-started programs Facteur provides (or will provide with its
/// daemons). Address rewriting (Postfix's `trivial-rewrite`) is not a
/// separate process in Facteur: it is library code called by cleanup,
/// qmgr and smtpd. `pipe` is not provided yet.
pub const FACTEUR_PROGRAMS: &[&str] = &[
    "smtpd", "pickup", "cleanup", "qmgr", "local", "virtual", "lmtp", "smtp", "bounce", "error",
    "discard",
];

/// Postfix's other master-started programs (for the wording of the
/// "not provided" note).
const POSTFIX_PROGRAMS: &[&str] = &[
    "anvil",
    "dnsblog",
    "flush",
    "oqmgr",
    "nqmgr",
    "pipe",
    "postlogd",
    "postscreen",
    "proxymap",
    "qmqpd",
    "scache",
    "showq",
    "spawn",
    "tlsmgr",
    "tlsproxy",
    "verify",
];

/// Whether Facteur provides the program `command` names (compared by its
/// base name).
pub fn provided_by_facteur(command: &str) -> bool {
    FACTEUR_PROGRAMS.contains(&basename(command))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Split an entry into fields the way Postfix does: runs of blanks
/// separate fields, except inside `{ }` (which may nest). Braces are kept.
pub fn split_fields(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && BLANKS.contains(&b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut level = 0usize;
        while i < b.len() {
            let c = b[i];
            if c == b'{' {
                level += 1;
            } else if c == b'}' && level > 0 {
                level -= 1;
            } else if level == 0 && BLANKS.contains(&c) {
                break;
            }
            i += 1;
        }
        // Only ASCII bytes end a field, so the slice is on char boundaries.
        out.push(text[start..i].to_string());
    }
    out
}

/// `postconf`'s checks of the type, private, unprivileged, chroot,
/// wakeup and process_limit fields of `argv` (at least 7 fields). The
/// error is worded like postconf's, quoting `raw` (the entry as written).
pub fn check_fields(argv: &[String], raw: &str) -> Result<(), String> {
    let raw = raw.replace('\n', " ");
    if ServiceType::parse(&argv[1]).is_none() {
        return Err(format!("invalid type field \"{}\" in \"{raw}\"", argv[1]));
    }
    for (i, name) in [(2, "private"), (3, "unprivileged"), (4, "chroot")] {
        let v = argv[i].as_str();
        // An empty value passes, as in Postfix (only `-F` edits make one).
        if !(v.is_empty() || v == "y" || v == "n" || v == "-") {
            return Err(format!("invalid {name} field \"{v}\" in \"{raw}\""));
        }
    }
    let w = argv[5].as_str();
    let digits = w.strip_suffix('?').unwrap_or(w);
    if w != "-" && !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid wakeup field \"{w}\" in \"{raw}\""));
    }
    let p = argv[6].as_str();
    if p != "-" && !p.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid process_limit field \"{p}\" in \"{raw}\""));
    }
    Ok(())
}

/// Take the text out of a `{ ... }` group: the braces go, and so do the
/// blanks just inside them. A malformed group gives what it can and an
/// error worded like Postfix's (`missing '}' in "{abc"`, `syntax error
/// after '}' in "{a}b"`). `token` must start with `{`.
pub fn extract_group(token: &str) -> (String, Option<String>) {
    debug_assert!(token.starts_with('{'));
    let b = token.as_bytes();
    let mut level = 0usize;
    let mut close = None;
    for (i, &c) in b.iter().enumerate() {
        if c == b'{' {
            level += 1;
        } else if c == b'}' {
            level -= 1;
            if level == 0 {
                close = Some(i);
                break;
            }
        }
    }
    let (inner, err) = match close {
        None => (&token[1..], Some(format!("missing '}}' in \"{token}\""))),
        Some(i) => {
            let err = (i + 1 < b.len()).then(|| format!("syntax error after '}}' in \"{token}\""));
            (&token[1..i], err)
        }
    };
    (inner.trim_matches(is_space).to_string(), err)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Split `name = value` the way Postfix's `split_nameval` does: blanks
/// around the name, the `=` and the value go; the name ends at a blank or
/// `=`. Errors are Postfix's words.
pub fn split_nameval(s: &str) -> Result<(&str, &str), &'static str> {
    super::maincf::split_name_value_bare(s)
}

/// Something [`normalize_args`] had to say about an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgNote {
    /// For `facteur check`.
    pub message: String,
    /// As `postconf` words it (after `postconf: warning: `).
    pub postconf: String,
    /// Index in argv of the `-o` value the note is about, if it is one.
    pub value_index: Option<usize>,
}

/// Whether `arg` is a daemon option that takes the next word as its
/// value, as postconf sees it: `-o`, and (a quirk of Postfix's postconf
/// that this keeps for identical output) a lone `-`.
pub fn option_takes_value(arg: &str) -> bool {
    arg == "-o" || arg == "-"
}

/// Whether `arg` ends the daemon options (postconf's view).
pub fn ends_options(arg: &str) -> bool {
    !arg.starts_with('-') || arg == "--"
}

/// Bring the arguments of an entry (argv from index 8 on) into the form
/// postconf holds them in:
///
/// * in the leading daemon options, `-vo` becomes `-v -o`, `-oname=value`
///   becomes `-o name=value` (getopt's reading; Postfix's postconf instead
///   splits at every later `o`, mangling `-osyslog_name=x`), and an `-o`
///   value in `{ }` loses its braces and becomes `name=value`;
/// * every later argument in `{ }` loses its braces.
///
/// Problems (malformed groups, `-o { x }` without `=`) are noted; the
/// argument keeps what could be made of it, as in Postfix.
pub fn normalize_args(argv: &mut Vec<String>, notes: &mut Vec<ArgNote>) {
    let mut i = 8;
    while i < argv.len() {
        if ends_options(&argv[i]) {
            break;
        }
        // Split a bundle at its first `o`: `-vxoVALUE` -> `-vx`, `-oVALUE`.
        if let Some(p) = argv[i][1..].find('o').map(|p| p + 1) {
            if p > 1 {
                let tail = format!("-{}", &argv[i][p..]);
                argv[i].truncate(p);
                argv.insert(i + 1, tail);
                i += 1;
                continue;
            }
        }
        let attached = argv[i].starts_with("-o") && argv[i].len() > 2;
        if !(option_takes_value(&argv[i]) || attached) {
            i += 1;
            continue;
        }
        if argv[i].len() > 2 {
            // `-oname=value`
            let value = argv[i][2..].to_string();
            argv[i].truncate(2);
            argv.insert(i + 1, value);
        }
        if i + 1 >= argv.len() {
            break;
        }
        let is_o = argv[i] == "-o";
        i += 1;
        if argv[i].starts_with('{') {
            extract_in_place(argv, i, notes);
            if is_o {
                match split_nameval(&argv[i]) {
                    Ok((n, v)) => argv[i] = format!("{n}={v}"),
                    Err(e) => notes.push(ArgNote {
                        message: format!("invalid \"-o {}\" option value: {e}", argv[i]),
                        postconf: format!("master.cf: {e}: \"{}\"", argv[i]),
                        value_index: Some(i),
                    }),
                }
            }
        }
        i += 1;
    }
    while i < argv.len() {
        if argv[i].starts_with('{') {
            extract_in_place(argv, i, notes);
        }
        i += 1;
    }
}

fn extract_in_place(argv: &mut [String], i: usize, notes: &mut Vec<ArgNote>) {
    let (inner, err) = extract_group(&argv[i]);
    if let Some(e) = err {
        notes.push(ArgNote {
            postconf: format!("master.cf: {e}"),
            message: e,
            value_index: None,
        });
    }
    argv[i] = inner;
}

/// The `-o name=value` options a daemon applies, read from a normalized
/// argv the way Postfix's daemons read their command line (getopt without
/// permutation: options end at the first non-option or `--`; `-i`, `-m`,
/// `-n`, `-o`, `-s` and `-t` take a value). Values that are not
/// `name=value` come back separately as (index, value, error).
#[allow(clippy::type_complexity)]
pub fn daemon_overrides(
    argv: &[String],
) -> (Vec<(String, String)>, Vec<(usize, String, &'static str)>) {
    const WITH_VALUE: &[u8] = b"imnost";
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut i = 8;
    while i < argv.len() {
        let a = argv[i].as_bytes();
        if a.len() < 2 || a[0] != b'-' || argv[i] == "--" {
            break;
        }
        let mut consumed_next = false;
        for (k, &c) in a.iter().enumerate().skip(1) {
            if WITH_VALUE.contains(&c) {
                let (value, index) = if k + 1 < a.len() {
                    (argv[i][k + 1..].to_string(), i)
                } else if i + 1 < argv.len() {
                    consumed_next = true;
                    (argv[i + 1].clone(), i + 1)
                } else {
                    break;
                };
                if c == b'o' {
                    match split_nameval(&value) {
                        Ok((n, v)) => good.push((n.to_string(), v.to_string())),
                        Err(e) => bad.push((index, value.clone(), e)),
                    }
                }
                break;
            }
        }
        i += if consumed_next { 2 } else { 1 };
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = include_str!("../../../tests/data/master.cf.proto");
    const DEBIAN: &str = include_str!("../../../tests/data/master.cf.debian");

    fn svc(text: &str) -> Service {
        let (mc, problems) = parse_detailed(text, "/x/master.cf");
        let errors: Vec<_> = problems
            .iter()
            .filter(|p| p.diag.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(mc.services.len(), 1);
        mc.services.into_iter().next().unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse_detailed(text, "/x/master.cf").1
    }

    fn errors(text: &str) -> Vec<String> {
        problems(text)
            .into_iter()
            .filter(|p| p.diag.severity == Severity::Error)
            .map(|p| p.diag.message)
            .collect()
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn stock_files_parse_without_errors() {
        for (name, text, count) in [("proto", PROTO, 25), ("debian", DEBIAN, 31)] {
            let (mc, problems) = parse_detailed(text, name);
            let bad: Vec<_> = problems
                .iter()
                .filter(|p| p.diag.severity != Severity::Info)
                .collect();
            assert!(bad.is_empty(), "{name}: {bad:?}");
            assert_eq!(mc.services.len(), count, "{name}");
            // One note per service whose program Facteur lacks.
            let infos = problems.len();
            let lacking = mc
                .services
                .iter()
                .filter(|s| !provided_by_facteur(&s.command))
                .count();
            assert_eq!(infos, lacking, "{name}");
        }
    }

    #[test]
    fn stock_debian_details() {
        let (mc, _) = parse(DEBIAN, "m");
        let smtp = mc.find("smtp", ServiceType::Inet).unwrap();
        assert_eq!(smtp.private, Some(false));
        assert_eq!(smtp.unprivileged, None);
        assert_eq!(smtp.chroot, Some(true));
        assert_eq!(smtp.command, "smtpd");
        assert_eq!(smtp.line, 12);
        let tlsmgr = mc.find("tlsmgr", ServiceType::Unix).unwrap();
        assert_eq!(
            tlsmgr.wakeup,
            Some(Wakeup {
                seconds: 1000,
                if_used: true
            })
        );
        assert_eq!(tlsmgr.process_limit, Some(1));
        let relay = mc.find("relay", ServiceType::Unix).unwrap();
        assert_eq!(
            relay.overrides,
            vec![(
                "syslog_name".to_string(),
                "postfix/$service_name".to_string()
            )]
        );
        let postlog = mc.find("postlog", ServiceType::UnixDgram).unwrap();
        assert_eq!(postlog.command, "postlogd");
        let maildrop = mc.find("maildrop", ServiceType::Unix).unwrap();
        assert_eq!(
            maildrop.args,
            v(&[
                "flags=DRXhu",
                "user=vmail",
                "argv=/usr/bin/maildrop",
                "-d",
                "${recipient}"
            ])
        );
        assert!(maildrop.overrides.is_empty());
        assert_eq!(mc.find("smtp", ServiceType::Unix).unwrap().command, "smtp");
    }

    #[test]
    fn fields_and_defaults() {
        let s = svc("pickup    unix  n       -       y       60      1       pickup\n");
        assert_eq!(s.name, "pickup");
        assert_eq!(s.kind, ServiceType::Unix);
        assert_eq!(s.private, Some(false));
        assert_eq!(s.unprivileged, None);
        assert_eq!(s.chroot, Some(true));
        assert_eq!(
            s.wakeup,
            Some(Wakeup {
                seconds: 60,
                if_used: false
            })
        );
        assert_eq!(s.process_limit, Some(1));
        assert_eq!(
            s.raw_fields,
            v(&["pickup", "unix", "n", "-", "y", "60", "1", "pickup"])
        );
        assert_eq!(s.key(), "pickup/unix");
        let s = svc("x fifo - - - - - cmd\n");
        assert_eq!(s.wakeup, None);
        assert_eq!(s.process_limit, None);
        assert_eq!(s.kind, ServiceType::Fifo);
        assert_eq!(svc("x pass - - - 0 0 cmd").process_limit, Some(0));
    }

    #[test]
    fn continuation_lines_and_comments() {
        let s = svc("# c\nsubmission inet n - n - - smtpd\n  -o a=1\n# inner\n\n\t-o\n   b=2\n");
        assert_eq!(s.line, 2);
        assert_eq!(s.args, v(&["-o", "a=1", "-o", "b=2"]));
        assert_eq!(
            s.overrides,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        // Service name and type may be on different lines.
        let s = svc("a unix\n - - - - - cmd");
        assert_eq!(s.command, "cmd");
    }

    #[test]
    fn brace_groups() {
        let s = svc("foo unix - - - - - pipe flags=R argv=/bin/echo { a b  c } {x}  {}   $sender ${recipient}");
        assert_eq!(
            s.args,
            v(&[
                "flags=R",
                "argv=/bin/echo",
                "a b  c",
                "x",
                "",
                "$sender",
                "${recipient}"
            ])
        );
        let s = svc("s inet n - n - - smtpd -o { smtpd_client_restrictions = permit_sasl_authenticated, reject } -o {x = } -o y=1");
        assert_eq!(
            s.args,
            v(&[
                "-o",
                "smtpd_client_restrictions=permit_sasl_authenticated, reject",
                "-o",
                "x=",
                "-o",
                "y=1"
            ])
        );
        assert_eq!(
            s.overrides,
            vec![
                (
                    "smtpd_client_restrictions".into(),
                    "permit_sasl_authenticated, reject".into()
                ),
                ("x".into(), "".into()),
                ("y".into(), "1".into())
            ]
        );
        // The first fields keep their braces; a group is one field.
        let s = svc("{a b} unix - - - - - {cmd x} a{b c}d");
        assert_eq!(s.name, "{a b}");
        assert_eq!(s.command, "{cmd x}");
        assert_eq!(s.args, v(&["a{b c}d"]));
        // Nesting.
        assert_eq!(
            svc("a unix - - - - - c { a {b c} d }").args,
            v(&["a {b c} d"])
        );
    }

    #[test]
    fn malformed_groups() {
        let p = problems("a unix - - - - - smtpd {abc def\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].diag.severity, Severity::Error);
        assert_eq!(p[0].diag.message, "missing '}' in \"{abc def\"");
        assert_eq!(
            p[0].postconf,
            Some(PostconfText::Warning(
                "master.cf: missing '}' in \"{abc def\"".into()
            ))
        );
        let (mc, _) = parse_detailed("a unix - - - - - smtpd x {a}{b} {  abc  ", "m");
        assert_eq!(mc.services[0].args, v(&["x", "a", "abc"]));
        let p = problems("a unix - - - - - smtpd -o {q}\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].diag.message,
            "invalid \"-o q\" option value: missing '=' after attribute name"
        );
        assert_eq!(
            p[0].postconf,
            Some(PostconfText::Warning(
                "master.cf: missing '=' after attribute name: \"q\"".into()
            ))
        );
        let p = problems("a unix - - - - - smtpd -o {  }\n");
        assert_eq!(
            p[0].postconf,
            Some(PostconfText::Warning(
                "master.cf: missing attribute name: \"\"".into()
            ))
        );
    }

    #[test]
    fn option_forms() {
        let s = svc("a unix - - - - - smtpd -vo a=b -xoq=r -oc=d -osyslog_name=foo -D");
        assert_eq!(
            s.args,
            v(&[
                "-v",
                "-o",
                "a=b",
                "-x",
                "-o",
                "q=r",
                "-o",
                "c=d",
                "-o",
                "syslog_name=foo",
                "-D"
            ])
        );
        assert_eq!(
            s.overrides,
            vec![
                ("a".into(), "b".into()),
                ("q".into(), "r".into()),
                ("c".into(), "d".into()),
                ("syslog_name".into(), "foo".into())
            ]
        );
        // Options end at the first non-option and at `--`.
        let s = svc("a unix - - - - - smtpd -o a=b x -o c=d");
        assert_eq!(s.overrides, vec![("a".into(), "b".into())]);
        let s = svc("a unix - - - - - smtpd -- -o c=d");
        assert!(s.overrides.is_empty());
        // Daemon getopt: -n takes a value, so -o after it still applies.
        let s = svc("a unix - - - - - smtpd -n foo -o c=d");
        assert_eq!(s.overrides, vec![("c".into(), "d".into())]);
        // A trailing -o without value is kept as is.
        assert_eq!(svc("a unix - - - - - smtpd -o").args, v(&["-o"]));
        assert_eq!(
            svc("a unix - - - - - smtpd -o a=1 -o a=2").override_value("a"),
            Some("2")
        );
        // `-o x` without `=`: an error for the daemon, silent for postconf.
        let p = problems("a unix - - - - - smtpd -o x");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].diag.severity, Severity::Error);
        assert_eq!(p[0].postconf, None);
        assert_eq!(
            p[0].diag.message,
            "invalid \"-o x\" option value: missing '=' after attribute name"
        );
    }

    #[test]
    fn field_errors_are_worded_like_postconf() {
        let cases = [
            (
                "a unix x - - - - pipe",
                "invalid private field \"x\" in \"a unix x - - - - pipe\"",
            ),
            (
                "a unix - yes - - - pipe",
                "invalid unprivileged field \"yes\" in \"a unix - yes - - - pipe\"",
            ),
            (
                "a unix - - Y - - pipe",
                "invalid chroot field \"Y\" in \"a unix - - Y - - pipe\"",
            ),
            (
                "a foo - - - - - smtpd",
                "invalid type field \"foo\" in \"a foo - - - - - smtpd\"",
            ),
            (
                "a {unix} - - - - - smtpd",
                "invalid type field \"{unix}\" in \"a {unix} - - - - - smtpd\"",
            ),
            (
                "a unix - - - x - smtpd",
                "invalid wakeup field \"x\" in \"a unix - - - x - smtpd\"",
            ),
            (
                "a unix - - - 1?? - smtpd",
                "invalid wakeup field \"1??\" in \"a unix - - - 1?? - smtpd\"",
            ),
            (
                "a unix - - - -1 - smtpd",
                "invalid wakeup field \"-1\" in \"a unix - - - -1 - smtpd\"",
            ),
            (
                "a unix - - - - x smtpd",
                "invalid process_limit field \"x\" in \"a unix - - - - x smtpd\"",
            ),
            (
                "a unix - - - - -1 smtpd",
                "invalid process_limit field \"-1\" in \"a unix - - - - -1 smtpd\"",
            ),
            (
                "a   unix x  - - - - pipe  foo",
                "invalid private field \"x\" in \"a   unix x  - - - - pipe  foo\"",
            ),
        ];
        for (text, want) in cases {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].diag.severity, Severity::Error);
            assert_eq!(p[0].diag.message, want);
            assert_eq!(p[0].diag.line, Some(1));
            assert_eq!(p[0].diag.path, "/x/master.cf");
            assert_eq!(p[0].postconf, Some(PostconfText::Fatal(want.into())));
        }
        // The logical line, continuation included.
        let p = problems("# c\n\na unix\n  - -\n\n# x\n  - x - - - cmd\n");
        assert_eq!(
            p[0].diag.message,
            "invalid wakeup field \"x\" in \"a unix  - -  - x - - - cmd\""
        );
        assert_eq!(p[0].diag.line, Some(3));
    }

    #[test]
    fn field_count() {
        for text in ["a unix - - - - -", "a unix", "a", "# c\n\na unix\n  - -\n"] {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}");
            assert_eq!(p[0].diag.message, "bad field count");
            let line = p[0].diag.line.unwrap();
            assert_eq!(
                p[0].postconf,
                Some(PostconfText::Fatal(format!(
                    "file /x/master.cf: line {line}: bad field count"
                )))
            );
        }
        assert_eq!(problems("# c\n\na unix\n  - -\n")[0].diag.line, Some(3));
    }

    #[test]
    fn master_only_checks() {
        // postconf accepts these; Postfix's master refuses to start.
        for text in ["a inet y - n - - smtpd", "a inet - - n - - smtpd"] {
            let p = problems(text);
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].diag.severity, Severity::Error);
            assert!(p[0]
                .diag
                .message
                .starts_with("inet service cannot be private"));
            assert_eq!(p[0].postconf, None);
        }
        assert!(errors("a inet n - n - - smtpd").is_empty());
        // Numbers that do not fit.
        assert_eq!(
            errors("a unix - - - 99999999999 - smtpd"),
            vec!["wakeup field \"99999999999\" is too large"]
        );
        assert_eq!(
            errors("a unix - - - - 99999999999 smtpd"),
            vec!["process_limit field \"99999999999\" is too large"]
        );
        assert_eq!(svc("a unix - - - 00 007 smtpd").process_limit, Some(7));
        assert_eq!(
            errors("a unix - - - ? - smtpd"),
            vec!["field \"wakeup\": bad value: \"?\""]
        );
    }

    #[test]
    fn unprovided_programs_get_one_note() {
        let p = problems("tlsmgr unix - - n 1000? 1 tlsmgr\n  -o a=b\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].diag.severity, Severity::Info);
        assert_eq!(
            p[0].diag.message,
            "service \"tlsmgr\" (unix): program \"tlsmgr\" is not provided by Facteur (not yet); see docs/compatibility.md"
        );
        assert_eq!(p[0].postconf, None);
        let p = problems("rewrite unix - - n - - trivial-rewrite");
        assert!(p[0]
            .diag
            .message
            .contains("rewriting and resolution are done inside"));
        let p = problems("x unix - n n - - my-filter");
        assert_eq!(
            p[0].diag.message,
            "service \"x\" (unix): program \"my-filter\" is not provided by Facteur; see docs/compatibility.md"
        );
        for prog in FACTEUR_PROGRAMS {
            assert!(problems(&format!("x unix - - - - - {prog}")).is_empty());
        }
        assert!(!provided_by_facteur("trivial-rewrite"));
        assert!(!provided_by_facteur("pipe"));
        assert!(provided_by_facteur("smtpd"));
    }

    #[test]
    fn duplicates_last_wins() {
        let text = "a unix - - - - - smtpd -o x=1\nb unix - - - - - smtpd\na unix - - - - - smtpd -o x=2\na inet n - - - - smtpd\n";
        let (mc, _) = parse(text, "m");
        assert_eq!(mc.services.len(), 4);
        let a = mc.find("a", ServiceType::Unix).unwrap();
        assert_eq!(a.line, 3);
        let eff = mc.effective();
        assert_eq!(eff.len(), 3);
        assert_eq!(eff[0].key(), "a/unix");
        assert_eq!(eff[0].line, 3);
        assert_eq!(eff[1].key(), "b/unix");
        assert_eq!(eff[2].key(), "a/inet");
        assert!(mc.find("c", ServiceType::Unix).is_none());
    }

    #[test]
    fn shape_problems_in_order() {
        let (mc, p) = parse_detailed(" x unix - - - - - smtpd\na unix q - - - - smtpd\n", "/m");
        assert!(mc.services.is_empty());
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].diag.severity, Severity::Warning);
        assert_eq!(
            p[0].postconf,
            Some(PostconfText::Warning(
                "/m: logical line must not start with whitespace: \" x unix - - - - - smtpd\""
                    .into()
            ))
        );
        assert_eq!(p[1].diag.severity, Severity::Error);
    }

    #[test]
    fn limits() {
        let mut text = String::new();
        for i in 0..=MAX_SERVICES {
            text.push_str(&format!("s{i} unix - - - - - smtpd\n"));
        }
        let (mc, p) = parse_detailed(&text, "m");
        assert_eq!(mc.services.len(), MAX_SERVICES);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].diag.severity, Severity::Error);
        assert_eq!(p[0].diag.line, Some(MAX_SERVICES + 1));

        let args = "x ".repeat(MAX_ARGS);
        assert!(errors(&format!("a unix - - - - - smtpd {args}")).is_empty());
        let e = errors(&format!("a unix - - - - - smtpd {args} y"));
        assert_eq!(
            e,
            vec![format!("too many command arguments (more than {MAX_ARGS})")]
        );
    }

    #[test]
    fn crlf_and_tabs() {
        let s = svc("smtp\tinet\tn\t-\tn\t-\t-\tsmtpd\r\n\t-o a=b\r\n");
        assert_eq!(s.overrides, vec![("a".into(), "b".into())]);
    }

    #[test]
    fn helpers() {
        assert_eq!(
            split_fields("  a  {b c}  d{e f}g {h"),
            v(&["a", "{b c}", "d{e f}g", "{h"])
        );
        assert_eq!(split_fields("a}b c"), v(&["a}b", "c"]));
        assert_eq!(extract_group("{ a }"), ("a".into(), None));
        assert_eq!(
            extract_group("{a}}"),
            (
                "a".into(),
                Some("syntax error after '}' in \"{a}}\"".into())
            )
        );
        assert_eq!(split_nameval(" a = b c "), Ok(("a", "b c")));
        assert_eq!(split_nameval("a=b=c"), Ok(("a", "b=c")));
        assert_eq!(split_nameval("=x"), Err("missing attribute name"));
        assert_eq!(
            split_nameval("a b=c"),
            Err("missing '=' after attribute name")
        );
        assert_eq!(
            ServiceType::parse("unix-dgram"),
            Some(ServiceType::UnixDgram)
        );
        assert_eq!(ServiceType::Pass.as_str(), "pass");
        assert_eq!(ServiceType::parse("UNIX"), None);
    }
}
