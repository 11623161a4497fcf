//! Differential test: Facteur's `postconf` against Postfix's own
//! `/usr/sbin/postconf`, over every case in `tests/data/postconf-corpus/`.
//!
//! Each case directory holds a `main.cf` and a `master.cf`. For every case
//! both programs run with `-c DIR` and the same arguments, and their
//! standard output and exit status must be identical for:
//!
//! - `-n`, `-n -x`, `-n -H`, `-n -f`;
//! - bare (all parameters) and `-x` bare, where the only tolerated
//!   difference is the process id (each program prints its own);
//! - `-d` and `-H`;
//! - `-h NAMES` and `-x -h NAMES`, where NAMES is every name set in that
//!   main.cf plus [`FIXED_NAMES`], in one invocation each;
//! - `-f NAMES` and `-f -x NAMES` for long parameters ([`FOLD_NAMES`] plus
//!   every main.cf parameter with a long value).
//!
//! For `-n` and `-h NAMES` the *set* of distinct standard error lines must
//! match too (Postfix repeats some warnings; only unique lines count).
//!
//! A second test, [`postconf_edit_round_trips`], copies some cases to two
//! temporary directories, edits them with `-e`, `-X` or `-#` using each
//! program, and requires byte-identical `main.cf` files, the same exit
//! status and warnings, no leftover `main.cf.tmp`, kept comments, and a
//! new inode (the file is replaced by rename, atomically).
//!
//! Intended differences live in [`ALLOWED`], each with its reason, and are
//! listed in `docs/postconf-differences.md`. An allowlist entry that no
//! longer matches anything fails the test too, so the list stays minimal.
//!
//! Both programs run with `argv[0] = "postconf"`, so that their messages
//! start with the same `postconf: ` prefix (Postfix prints its `argv[0]`).
//!
//! Postfix must be installed (`scripts/test.sh` installs it). Without it
//! these tests fail; they never skip silently.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

const POSTFIX_POSTCONF: &str = "/usr/sbin/postconf";
const OUR_POSTCONF: &str = env!("CARGO_BIN_EXE_postconf");

/// Cases must not quietly disappear.
const MIN_CASES: usize = 32;

/// Shown with `-h` and `-x -h` in every case, besides the names set in
/// that case's main.cf.
const FIXED_NAMES: &[&str] = &[
    "myhostname",
    "mydomain",
    "myorigin",
    "mydestination",
    "mynetworks",
    "relay_domains",
    "smtpd_relay_restrictions",
    "smtpd_banner",
    "alias_maps",
    "local_recipient_maps",
    "compatibility_level",
    "mynetworks_style",
    "append_dot_mydomain",
    "smtputf8_enable",
    "inet_protocols",
    "process_name",
];

/// Shown with `-f` and `-f -x` in every case: parameters whose default or
/// usual value is longer than a line.
const FOLD_NAMES: &[&str] = &[
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "mynetworks",
    "mydestination",
    "relay_domains",
    "smtpd_banner",
    "proxy_read_maps",
    "default_rbl_reply",
    "smtpd_expansion_filter",
    "tls_high_cipherlist",
    "debugger_command",
];

/// Cases compared at the same time.
const WORKERS: usize = 4;

/// main.cf values at least this long are also shown with `-f`.
const LONG_VALUE: usize = 60;

/// What an allowlist entry forgives.
enum Forgive {
    /// Differing lines (on either side) that contain one of these texts.
    LinesContaining(&'static [&'static str]),
    /// The same lines in another order. For Postfix behaviour that is
    /// random from run to run; the entry counts as used whenever its
    /// command runs.
    LineOrder,
}

/// One intended difference between Facteur and Postfix, for one case
/// (`"*"`: any), command (as labelled in failure reports; `"*"`: any) and
/// stream.
struct Allowed {
    case: &'static str,
    command: &'static str,
    /// `stdout`, `stderr` or `status` for the output test; `main.cf` (the
    /// edited file), `edit stderr`, `edit status` or `invariants` for the
    /// edit test.
    stream: &'static str,
    forgive: Forgive,
    reason: &'static str,
}

/// The allowlist. Keep it minimal and keep `docs/postconf-differences.md`
/// in step with it.
const ALLOWED: &[Allowed] = &[
    Allowed {
        case: "*",
        command: "*",
        stream: "stdout",
        forgive: Forgive::LinesContaining(&["facteur_dns_servers"]),
        reason: "Facteur's own parameter `facteur_dns_servers` (the DNS servers of \
                 smtpd's DNS restrictions) is a built-in parameter, so postconf \
                 shows it with the others.",
    },
    Allowed {
        case: "48-no-final-newline",
        command: "-e relayhost=[relay.example.com]",
        stream: "main.cf",
        forgive: Forgive::LinesContaining(&[
            "reject_unauth_destination",
            "relayhost = [relay.example.com]",
        ]),
        reason: "Postfix bug: when main.cf does not end in a newline, \
                 `postconf -e` glues the appended `name = value` onto the last \
                 line (`reject_unauth_destinationrelayhost = ...`), changing an \
                 existing value. Facteur ends the last line first.",
    },
    Allowed {
        case: "05-continuation-tabs",
        command: "-e mydestination=localhost new_param_a=1 myhostname=new.example.com \
                  new_param_b = two words",
        stream: "main.cf",
        forgive: Forgive::LineOrder,
        reason: "Postfix appends the new parameters of one `postconf -e` in hash \
                 table order, which is random from run to run; Facteur appends \
                 them in command-line order.",
    },
    Allowed {
        case: "30-tutorial-virtual-dovecot",
        command: "*",
        stream: "stderr",
        forgive: Forgive::LinesContaining(&["open \"mysql\" configuration"]),
        reason: "Postfix opens the configuration file of every mysql: table to \
                 look for legacy parameter names; Facteur has no mysql tables \
                 yet and does not open them.",
    },
    Allowed {
        case: "35-macro-loop",
        command: "-n",
        stream: "stderr",
        forgive: Forgive::LinesContaining(&[
            "unreasonable macro call nesting",
            "expansion loop: $loop_a -> $loop_b -> $loop_a",
        ]),
        reason: "Postfix finds a loop by hitting its nesting limit and names \
                 where it stopped; Facteur detects the loop itself and names the \
                 chain. Both end with `fatal: macro processing error`.",
    },
    Allowed {
        case: "41-fatal-bad-relational",
        command: "-n",
        stream: "stderr",
        forgive: Forgive::LinesContaining(&["expected at:", "malformed relational expression"]),
        reason: "Different wording of the same syntax error (Postfix's quotes \
                 are unbalanced); both end with `fatal: macro processing error`.",
    },
];

/// `postconf -e/-X/-#` runs, as (case, arguments after `-c DIR`).
const EDITS: &[(&str, &[&str])] = &[
    // An empty value with a trailing blank, plus a new parameter.
    (
        "02-debian-installed",
        &[
            "-e",
            "relayhost=[smtp.example.com]:587",
            "smtp_sasl_auth_enable=yes",
        ],
    ),
    // An existing value with comment lines and blank lines inside.
    (
        "06-continuation-comments-blank",
        &[
            "-e",
            "smtpd_recipient_restrictions=permit_mynetworks, reject_unauth_destination",
        ],
    ),
    // Several at once: existing (continued with tabs) and new, mixed.
    (
        "05-continuation-tabs",
        &[
            "-e",
            "mydestination=localhost",
            "new_param_a=1",
            "myhostname=new.example.com",
            "new_param_b = two words",
        ],
    ),
    // `name = value with spaces`; an existing line with tabs around `=`.
    (
        "12-odd-whitespace",
        &[
            "-e",
            "smtpd_banner = $myhostname ESMTP with  two  spaces ",
            "mydomain=example.net",
        ],
    ),
    // Every duplicate definition is replaced (with a warning).
    ("16-duplicates", &["-e", "myhostname=final.example.com"]),
    ("16-duplicates", &["-X", "custom_dup", "relayhost"]),
    // CRLF file: edited lines lose their CR, the others keep it.
    (
        "13-crlf",
        &["-e", "myhostname=new.example.com", "new_param = 1"],
    ),
    // Comment out a value with a comment line inside it.
    (
        "34-hash-in-values",
        &["-#", "relayhost", "smtpd_reject_footer"],
    ),
    ("34-hash-in-values", &["-X", "mail_name", "commented_out"]),
    (
        "30-tutorial-virtual-dovecot",
        &["-e", "virtual_alias_maps=hash:/etc/postfix/virtual"],
    ),
    (
        "30-tutorial-virtual-dovecot",
        &["-#", "smtpd_milters", "non_smtpd_milters", "no_such_name"],
    ),
    // `-e` is implied by `name=value`; appending to an empty file.
    ("01-empty", &["myhostname=implied.example.com"]),
    // The first logical line starts with whitespace.
    (
        "36-leading-whitespace",
        &["-e", "leading_whitespace_line=now defined"],
    ),
    // Appending to a file whose last line has no newline.
    (
        "48-no-final-newline",
        &["-e", "relayhost=[relay.example.com]"],
    ),
    // Deleting a name that is not there still rewrites the file.
    ("03-debian-stock", &["-X", "nonexistent"]),
];

/// What one program printed.
struct Output {
    status: Option<i32>,
    pid: u32,
    stdout: String,
    stderr: String,
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .arg0("postconf")
        .args(args)
        .env_remove("MAIL_CONFIG")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn wait(child: Child) -> Output {
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for postconf: {e}"));
    Output {
        status: out.status.code(),
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run Postfix's and our postconf side by side with the same arguments.
fn run_both(args: &[&str]) -> (Output, Output) {
    let theirs = spawn(POSTFIX_POSTCONF, args);
    let ours = spawn(OUR_POSTCONF, args);
    (wait(theirs), wait(ours))
}

fn run(program: &str, args: &[&str]) -> Output {
    wait(spawn(program, args))
}

/// Fail loudly, never skip, when Postfix is not installed.
fn require_postfix() {
    assert!(
        Path::new(POSTFIX_POSTCONF).exists(),
        "{POSTFIX_POSTCONF} is missing: the postconf differential tests need \
         Postfix 3.7. Run `scripts/test.sh`, which installs it."
    );
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/postconf-corpus")
}

/// Every case directory, sorted by name.
fn cases() -> Vec<(String, PathBuf)> {
    let dir = corpus_dir();
    let mut cases: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.join("main.cf").is_file())
        .map(|p| {
            let p = p.canonicalize().expect("canonical case path");
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, p)
        })
        .collect();
    cases.sort();
    assert!(
        cases.len() >= MIN_CASES,
        "expected at least {MIN_CASES} cases in {}, found {}",
        dir.display(),
        cases.len()
    );
    cases
}

/// The `name` and raw value of every logical line of a main.cf, in order
/// (duplicates included), with Postfix's comment and continuation rules.
fn main_cf_entries(text: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    let mut logical: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(cur) = current.as_mut() {
                cur.push_str(line);
            }
            continue;
        }
        if let Some(cur) = current.take() {
            logical.push(cur);
        }
        current = Some(line.to_string());
    }
    logical.extend(current);
    for l in logical {
        if let Some((name, value)) = l.split_once('=') {
            let name = name.trim();
            if !name.is_empty() {
                entries.push((name.to_string(), value.trim().to_string()));
            }
        }
    }
    entries
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

/// One comparison to make for a case.
struct Check {
    args: Vec<String>,
    /// Compare the set of distinct stderr lines too.
    stderr: bool,
    /// Tolerate each program printing its own process id.
    pid: bool,
}

fn checks_for(case_dir: &Path) -> Vec<Check> {
    let text = fs::read(case_dir.join("main.cf")).expect("read main.cf");
    let entries = main_cf_entries(&String::from_utf8_lossy(&text));
    let mut names = Vec::new();
    for (name, _) in &entries {
        push_unique(&mut names, name);
    }
    for name in FIXED_NAMES {
        push_unique(&mut names, name);
    }
    let mut fold = Vec::new();
    for name in FOLD_NAMES {
        push_unique(&mut fold, name);
    }
    for (name, value) in &entries {
        if value.len() >= LONG_VALUE {
            push_unique(&mut fold, name);
        }
    }
    let words = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
    let with = |mut base: Vec<String>, extra: &[String]| {
        base.extend_from_slice(extra);
        base
    };
    let check = |args: Vec<String>, stderr: bool, pid: bool| Check { args, stderr, pid };
    vec![
        check(words("-n"), true, false),
        check(words("-n -x"), false, true),
        check(words("-n -H"), false, false),
        check(words("-n -f"), false, false),
        check(Vec::new(), false, true),
        check(words("-x"), false, true),
        check(words("-d"), false, true),
        check(words("-H"), false, false),
        check(with(words("-h"), &names), true, true),
        check(with(words("-x -h"), &names), false, true),
        check(with(words("-f"), &fold), false, true),
        check(with(words("-f -x"), &fold), false, true),
    ]
}

/// A readable label for a command: arguments after `-c DIR`, shortened
/// when a long list of names follows.
fn label(args: &[String]) -> String {
    let mut shown: Vec<&str> = Vec::new();
    for a in args {
        if shown.len() >= 3 && !a.starts_with('-') {
            shown.push("NAMES...");
            break;
        }
        shown.push(a);
    }
    if shown.is_empty() {
        "(bare)".to_string()
    } else {
        shown.join(" ")
    }
}

/// Lines of `text`, where a line that mentions this program's own pid and
/// does not occur verbatim in `other` has the pid replaced by `<pid>`.
fn pid_normalized(text: &str, pid: u32, other: &str) -> Vec<String> {
    let pid = pid.to_string();
    let others: HashSet<&str> = other.lines().collect();
    text.lines()
        .map(|line| {
            if others.contains(line) || !line.contains(&pid) {
                line.to_string()
            } else {
                replace_word(line, &pid, "<pid>")
            }
        })
        .collect()
}

/// Replace `word` in `line` where it is not part of a longer number.
fn replace_word(line: &str, word: &str, with: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < line.len() {
        if line[i..].starts_with(word) {
            let before = i == 0 || !bytes[i - 1].is_ascii_digit();
            let end = i + word.len();
            let after = end == line.len() || !bytes[end].is_ascii_digit();
            if before && after {
                out.push_str(with);
                i = end;
                continue;
            }
        }
        let ch = line[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A difference: `-` lines Postfix printed that we did not, `+` lines we
/// printed that Postfix did not, ` ` for context.
type DiffLine = (char, String);

/// Line diff (longest common subsequence), with up to two lines of
/// context around each change.
fn diff_lines(expected: &[String], got: &[String]) -> Vec<DiffLine> {
    let mut pre = 0;
    while pre < expected.len() && pre < got.len() && expected[pre] == got[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < expected.len() - pre
        && suf < got.len() - pre
        && expected[expected.len() - 1 - suf] == got[got.len() - 1 - suf]
    {
        suf += 1;
    }
    let a = &expected[pre..expected.len() - suf];
    let b = &got[pre..got.len() - suf];
    let mut ops: Vec<DiffLine> = Vec::new();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        // Too big for a table: show what is missing and what is extra.
        let bs: HashSet<&String> = b.iter().collect();
        let as_: HashSet<&String> = a.iter().collect();
        ops.extend(
            a.iter()
                .filter(|l| !bs.contains(l))
                .map(|l| ('-', l.clone())),
        );
        ops.extend(
            b.iter()
                .filter(|l| !as_.contains(l))
                .map(|l| ('+', l.clone())),
        );
    } else {
        let (n, m) = (a.len(), b.len());
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                t[i * (m + 1) + j] = if a[i] == b[j] {
                    t[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && a[i] == b[j] {
                ops.push((' ', a[i].clone()));
                i += 1;
                j += 1;
            } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
                ops.push(('-', a[i].clone()));
                i += 1;
            } else {
                ops.push(('+', b[j].clone()));
                j += 1;
            }
        }
    }
    // Keep two lines of context around changes, including the common
    // prefix and suffix.
    let mut all: Vec<DiffLine> = expected[..pre].iter().map(|l| (' ', l.clone())).collect();
    all.extend(ops);
    all.extend(
        expected[expected.len() - suf..]
            .iter()
            .map(|l| (' ', l.clone())),
    );
    let near: Vec<bool> = (0..all.len())
        .map(|k| {
            let lo = k.saturating_sub(2);
            let hi = (k + 3).min(all.len());
            all[lo..hi].iter().any(|(c, _)| *c != ' ')
        })
        .collect();
    let mut shown = Vec::new();
    let mut skipped = false;
    for (k, d) in all.into_iter().enumerate() {
        if near[k] {
            shown.push(d);
            skipped = false;
        } else if !skipped {
            shown.push(('~', "...".to_string()));
            skipped = true;
        }
    }
    shown
}

/// The distinct lines of `text`, sorted.
fn unique_lines(text: &str) -> Vec<String> {
    let set: BTreeSet<&str> = text.lines().collect();
    set.into_iter().map(String::from).collect()
}

fn sorted(lines: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = lines.iter().collect();
    v.sort();
    v
}

/// Compares outputs, forgives what [`ALLOWED`] allows, and renders the
/// rest. Shared by the worker threads.
struct Report {
    used: Vec<bool>,
    /// (case, rendered difference), sorted by case when reported.
    failures: Vec<(String, String)>,
}

impl Report {
    fn new() -> Self {
        Report {
            used: vec![false; ALLOWED.len()],
            failures: Vec::new(),
        }
    }

    /// Compare what Postfix printed (`expected`) with what we printed
    /// (`got`) for one case, command and stream. `command` is the label
    /// used by [`ALLOWED`]; `full` is the whole command, for the report.
    fn compare(
        &mut self,
        case: &str,
        command: &str,
        full: &str,
        stream: &str,
        expected: &[String],
        got: &[String],
    ) {
        let applies = |a: &Allowed| {
            (a.case == "*" || a.case == case)
                && (a.command == "*" || a.command == command)
                && a.stream == stream
        };
        for (k, a) in ALLOWED.iter().enumerate() {
            if applies(a) && matches!(a.forgive, Forgive::LineOrder) {
                self.used[k] = true;
                if sorted(expected) == sorted(got) {
                    return;
                }
            }
        }
        if expected == got {
            return;
        }
        let diff = diff_lines(expected, got);
        let mut real = false;
        for (sign, line) in &diff {
            if *sign != '-' && *sign != '+' {
                continue;
            }
            let allowed = ALLOWED.iter().position(|a| {
                applies(a) && matches!(a.forgive, Forgive::LinesContaining(ts) if ts.iter().any(|t| line.contains(t)))
            });
            match allowed {
                Some(k) => self.used[k] = true,
                None => real = true,
            }
        }
        if !real {
            return;
        }
        let mut text = String::new();
        let _ = writeln!(
            text,
            "\n=== case {case}: postconf -c DIR {command}  [{stream}]\n\
             command: postconf -c tests/data/postconf-corpus/{case} {full}\n\
             --- expected (Postfix {POSTFIX_POSTCONF})\n\
             +++ got (Facteur postconf)"
        );
        const MAX: usize = 60;
        for (sign, line) in diff.iter().take(MAX) {
            let _ = writeln!(text, "{sign} {line}");
        }
        if diff.len() > MAX {
            let _ = writeln!(text, "  ({} more diff lines)", diff.len() - MAX);
        }
        self.failures.push((case.to_string(), text));
    }

    /// Panic with every difference, and with the allowlist entries for
    /// `streams` that forgave nothing.
    fn finish(mut self, what: &str, streams: &[&str]) {
        self.failures.sort_by(|a, b| a.0.cmp(&b.0));
        let mut msg: String = self.failures.iter().map(|f| f.1.as_str()).collect();
        let mut stale = 0;
        for (k, a) in ALLOWED.iter().enumerate() {
            if !self.used[k] && streams.contains(&a.stream) {
                stale += 1;
                let _ = writeln!(
                    msg,
                    "\n=== allowlist entry forgave nothing (remove it from ALLOWED and \
                     docs/postconf-differences.md): case {} command {:?} stream {}\n\
                     (reason was: {})",
                    a.case, a.command, a.stream, a.reason
                );
            }
        }
        if !self.failures.is_empty() || stale > 0 {
            panic!(
                "{what}: {} difference(s) between Facteur's postconf and Postfix's, \
                 {stale} stale allowlist entr(y/ies); expected = Postfix, got = Facteur:\n{msg}",
                self.failures.len()
            );
        }
    }
}

fn status_line(status: Option<i32>) -> Vec<String> {
    vec![match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    }]
}

/// Run every check of one case with both programs.
fn compare_case(case: &str, dir: &Path, report: &Mutex<Report>) {
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut fatal = false;
    for check in checks_for(dir) {
        // Postfix sleeps for a second before it exits on a fatal error.
        // When main.cf is that broken (`-n`, the first check, failed),
        // every command that reads it fails the same way: `-n` and `-d`
        // are enough.
        if fatal && check.args != ["-d"] {
            continue;
        }
        let mut args = vec!["-c".to_string(), dir_arg.clone()];
        args.extend(check.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (theirs, ours) = run_both(&args);
        fatal = fatal || theirs.status != Some(0);
        let command = label(&check.args);
        let full = check.args.join(" ");
        let (expected, got) = if check.pid {
            (
                pid_normalized(&theirs.stdout, theirs.pid, &ours.stdout),
                pid_normalized(&ours.stdout, ours.pid, &theirs.stdout),
            )
        } else {
            (
                theirs.stdout.lines().map(String::from).collect(),
                ours.stdout.lines().map(String::from).collect(),
            )
        };
        let newline =
            |o: &Output| vec![format!("ends with a newline: {}", o.stdout.ends_with('\n'))];
        let mut r = report.lock().unwrap();
        let status = (status_line(theirs.status), status_line(ours.status));
        r.compare(case, &command, &full, "status", &status.0, &status.1);
        r.compare(case, &command, &full, "stdout", &expected, &got);
        if expected == got {
            r.compare(
                case,
                &command,
                &full,
                "stdout",
                &newline(&theirs),
                &newline(&ours),
            );
        }
        if check.stderr {
            let (a, b) = (unique_lines(&theirs.stderr), unique_lines(&ours.stderr));
            r.compare(case, &command, &full, "stderr", &a, &b);
        }
    }
}

#[test]
fn postconf_matches_postfix() {
    require_postfix();
    let cases = cases();
    let report = Mutex::new(Report::new());
    // Cases run on a few threads: postconf is quick, but Postfix sleeps
    // for a second on each fatal error.
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some((case, dir)) = cases.get(k) else {
                    break;
                };
                compare_case(case, dir, &report);
            });
        }
    });
    let report = report.into_inner().unwrap();
    report.finish("postconf output", &["stdout", "stderr", "status"]);
}

/// A fresh, empty scratch directory for one edit run.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "facteur-postconf-diff-{}-{tag}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn copy_case(from: &Path, to: &Path) {
    for file in ["main.cf", "master.cf"] {
        fs::copy(from.join(file), to.join(file))
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// Lines of `text` starting with `#` (after blanks), in order.
fn comment_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect()
}

/// Whether `small` appears in order inside `big`.
fn is_subsequence(small: &[&str], big: &[&str]) -> bool {
    let mut it = big.iter();
    small.iter().all(|s| it.any(|b| b == s))
}

/// What one `postconf -e/-X/-#` run did to its copy of a case.
struct Edited {
    status: Option<i32>,
    /// Warnings, with the scratch directory replaced by `DIR`.
    stderr: String,
    main_cf: Vec<u8>,
    new_inode: bool,
    leftovers: Vec<String>,
}

fn edit_copy(program: &str, src: &Path, args: &[&str], tag: &str) -> Edited {
    let dir = scratch(tag);
    copy_case(src, &dir);
    let inode = fs::metadata(dir.join("main.cf")).unwrap().ino();
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut full = vec!["-c", dir_arg.as_str()];
    full.extend_from_slice(args);
    let out = run(program, &full);
    let main_cf = fs::read(dir.join("main.cf")).expect("main.cf after edit");
    let new_inode = fs::metadata(dir.join("main.cf")).unwrap().ino() != inode;
    let leftovers = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f != "main.cf" && f != "master.cf")
        .collect();
    let _ = fs::remove_dir_all(&dir);
    Edited {
        status: out.status,
        stderr: out.stderr.replace(&dir_arg, "DIR"),
        main_cf,
        new_inode,
        leftovers,
    }
}

/// File lines, each shown quoted so that `\r` and a missing final
/// newline are visible.
fn quoted_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split_inclusive('\n')
        .map(|l| format!("{l:?}"))
        .collect()
}

#[test]
fn postconf_edit_round_trips() {
    require_postfix();
    let corpus = corpus_dir();
    let mut report = Report::new();
    for (n, (case, args)) in EDITS.iter().enumerate() {
        let src = corpus.join(case);
        assert!(
            src.join("main.cf").is_file(),
            "EDITS names a missing case: {case}"
        );
        let original = fs::read_to_string(src.join("main.cf")).expect("read main.cf");
        let command = args.join(" ");
        let theirs = edit_copy(POSTFIX_POSTCONF, &src, args, &format!("{n}-postfix"));
        let ours = edit_copy(OUR_POSTCONF, &src, args, &format!("{n}-facteur"));
        let r = &mut report;
        let (a, b) = (status_line(theirs.status), status_line(ours.status));
        r.compare(case, &command, &command, "edit status", &a, &b);
        let (a, b) = (unique_lines(&theirs.stderr), unique_lines(&ours.stderr));
        r.compare(case, &command, &command, "edit stderr", &a, &b);
        let (a, b) = (quoted_lines(&theirs.main_cf), quoted_lines(&ours.main_cf));
        r.compare(case, &command, &command, "main.cf", &a, &b);
        // Our own invariants; "expected" is empty.
        let mut broken = Vec::new();
        if theirs.new_inode && !ours.new_inode {
            broken.push("main.cf kept its inode: it was not replaced by rename".to_string());
        }
        if !ours.leftovers.is_empty() {
            broken.push(format!("files left behind: {:?}", ours.leftovers));
        }
        let edited = String::from_utf8_lossy(&ours.main_cf);
        if !is_subsequence(&comment_lines(&original), &comment_lines(&edited)) {
            broken.push("comment lines were lost or reordered".to_string());
        }
        r.compare(case, &command, &command, "invariants", &[], &broken);
    }
    report.finish(
        "postconf edits",
        &["main.cf", "edit stderr", "edit status", "invariants"],
    );
}
