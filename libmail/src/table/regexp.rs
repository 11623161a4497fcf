//! `regexp:` and `pcre:` tables: an ordered list of patterns, each matched
//! against the whole lookup key; the first rule that applies gives the
//! result.
//!
//! # Syntax (regexp_table(5), pcre_table(5), as Postfix 3.7 reads them)
//!
//! Logical lines follow main.cf's rule ([`crate::config::lines`]): `#`
//! comment lines and blank lines are skipped, a line that starts with
//! whitespace continues the previous one. Then, per logical line:
//!
//! * `/pattern/flags result` — when the pattern matches, the result (with
//!   `$1`..`$9`, `${n}`, `$(n)` replaced by the captured text, `$$` by `$`);
//! * `!/pattern/flags result` — the result when the pattern does NOT match
//!   (several `!` toggle; `$n` is refused here);
//! * `if /pattern/flags` (or `if !/pattern/`) … `endif` — the rules between
//!   apply only when the pattern matches (does not match); they nest;
//!   `if`/`endif` are case-insensitive.
//!
//! The delimiter is the first character of the rule (any character but
//! `#`, which starts a comment line, and alphanumerics at the start of a
//! line; after `!` even a letter is taken as the delimiter, as Postfix
//! does). A backslash hides the delimiter and stays in the pattern. Flags
//! follow the closing delimiter up to whitespace, each one toggles:
//!
//! | flavor | flag | default | meaning |
//! |---|---|---|---|
//! | regexp | `i` | on | case-insensitive (ASCII, as glibc in the C locale) |
//! | regexp | `m` | off | REG_NEWLINE: `^`/`$` at line breaks; `.` and `[^…]` do not match a newline |
//! | regexp | `x` | on | extended (ERE) syntax; toggled off: basic (BRE) syntax |
//! | pcre | `i` | on | caseless |
//! | pcre | `m` | off | multiline |
//! | pcre | `s` | on | dotall |
//! | pcre | `x` | off | extended (whitespace and `#` comments ignored) |
//! | pcre | `A` | off | anchored at the start |
//! | pcre | `E` | off | dollar-endonly (`$` does not match before a final newline) |
//! | pcre | `U` | off | ungreedy |
//! | pcre | `X` | — | obsolete: warned about and ignored (Postfix 3.7 with PCRE2) |
//!
//! The key is never case-folded; the tables match the whole key, and
//! matching works on bytes, as postmap does (`.` is one byte; a table file
//! that is not UTF-8 is read byte for byte).
//!
//! The inline form `regexp:{ {rule}, {rule} }` (Postfix 3.7) is accepted by
//! [`RegexpTable::open`] when the name starts with `{`: each `{…}` is one
//! line of an in-memory file (whitespace inside the braces is trimmed;
//! commas and whitespace separate them). Its syntax errors are fatal, as in
//! Postfix: `missing '}' in "…"`, `syntax error after '}' in "…"`,
//! `no '{' at start of text in "…"`.
//!
//! # Errors
//!
//! Postfix rejects no table for its content: every problem in a rule is a
//! warning and the rule is skipped (or, for a missing result, used with an
//! empty result). They are kept in [`RegexpTable::warnings`], worded as
//! Postfix words them, with the table named `regexp map FILE` / `pcre map
//! FILE`, so `Diagnostic::postfix_located` reproduces Postfix's text:
//!
//! * `no closing regexp delimiter "/": skipping this rule` (pcre: `…:
//!   ignoring this rule`), `no regexp: skipping this rule`,
//!   `unknown regexp option "q": skipping this rule`,
//!   `ignoring obsolete regexp option "X"` (pcre);
//! * `no replacement text: using empty string`;
//! * `non-numeric replacement index "foo"`, `out-of-range replacement index
//!   "0"` (pcre: `out of range`), `empty macro name: "…"`, `truncated macro
//!   reference: "…"`, each followed by `bad replacement syntax: skipping
//!   this rule`; `$number found in negative match replacement text:
//!   skipping this rule`; `out of range replacement index "2": skipping
//!   this rule` (a `$n` beyond the pattern's groups);
//! * a pattern that does not compile: regexp gives glibc's `regerror` text
//!   (`Unmatched ( or \(`, `Invalid preceding regular expression`, …); pcre
//!   gives `error in regex at offset N: …` (the text after the offset is
//!   PCRE2's for the errors the translator finds, fancy-regex's otherwise);
//! * `ignoring unrecognized request`, `ignoring extra text after IF
//!   statement: "…"` + `do not prepend whitespace to statements between IF
//!   and ENDIF`, `ignoring ENDIF without matching IF`, `ignoring extra text
//!   after ENDIF`, `IF has no matching ENDIF` (for each open `if`, innermost
//!   first, naming the `if`'s line);
//! * `logical line must not start with whitespace: "…"` (named by file
//!   only, as Postfix does).
//!
//! Fatal ([`TableError::Config`]): the file cannot be read
//! (`open FILE: No such file or directory`), is larger than
//! [`MAX_FILE_SIZE`], has more than [`MAX_RULES`] rules, or the inline form
//! is malformed.
//!
//! # Engines and the differences from Postfix
//!
//! `regexp:` patterns are POSIX regular expressions as glibc reads them
//! (ERE by default, BRE with the `x` flag toggled, with the GNU extensions
//! `\w \W \s \S \b \B \< \> \` \'` and back-references). A translator
//! ([`posix`]) parses them with glibc's rules and errors and rewrites them
//! for the `regex` crate (bytes, no Unicode); a pattern with a
//! back-reference goes to `fancy-regex` instead (the `regex` crate has
//! none). glibc's quirks are reproduced: with `REG_ICASE` it reads the
//! pattern in upper case, so `[a-A]` is valid, `[Z-a]` is not, `[^b-~]`
//! matches `a`, and an escaped ordinary lower-case letter (`\d`, `\q`)
//! never matches; `.` does not match NUL; a `)` with no `(` is a literal.
//! Differences:
//!
//! * POSIX picks the leftmost-*longest* match, the `regex` crate the
//!   leftmost-*first*: whether a rule matches is the same, but the text a
//!   group captures can differ for alternations whose earlier branch is a
//!   prefix of a later one (`/(a|ab)/ $1` on `ab`: glibc `ab`, Facteur
//!   `a`), and for groups repeated by `*` or `{n,m}`.
//! * Postfix compiles a rule without `$n` with `REG_NOSUB`, under which
//!   glibc treats a back-reference to a group that did not take part
//!   differently; such patterns (`(\B)*\1`) are the only known case.
//! * Multi-character collating elements (`[[.space.]]`) are refused, as
//!   glibc does in the C locale; other locales are not reproduced.
//!
//! `pcre:` patterns go to `fancy-regex` (backtracking: lookaround,
//! back-references, atomic groups, possessive quantifiers, conditionals,
//! recursion) after a translator ([`pcre`]) that gives PCRE2's meaning to
//! what fancy-regex reads differently: `\h \v \H \V`, `\cX`, octal and
//! `\o{}`, `\x` with one digit, `\Q…\E`, `\g{n}`/`\k{name}`, `(?'name')`,
//! `(?R)`/`(?1)`/`(?&name)`, `(?#…)`, a `{` that is not a quantifier, class
//! members that are operators to fancy-regex (`[`, `&&`, `--`, `~~`), and
//! `$` before a final newline. Not supported (the rule is skipped with a
//! warning): `\p{…}` (no Unicode properties on bytes), branch reset
//! `(?|…)`, callouts, backtracking verbs other than `(*FAIL)`, `\X`.
//! PCRE2's compile-time checks are reproduced with its messages: a
//! quantifier that does not follow a repeatable item, `{n,m}` out of order
//! or above 65535, lookbehind branches of variable length, `\K` in a
//! lookaround, a POSIX class outside a class; a repeated assertion is
//! obeyed once (minimum 1) or made optional (minimum 0), as PCRE2 does.
//! Remaining differences: a group that can match the empty string and is
//! repeated (`(a?|b)+`) may capture the text of another iteration; a
//! back-reference inside the group it refers to is refused; in multiline
//! mode `^` also matches after a newline that ends the key; `\R` does not
//! match `\x85`.
//!
//! Other differences, for both flavors: `empty macro name` and `truncated
//! macro reference` name the file and line (Postfix names neither); a
//! relative path is refused (daemons must not depend on their working
//! directory); a directory is an error (Postfix reads it as an empty
//! table); a `\r` before a line break is dropped (Postfix keeps it, which
//! shows only when a continuation line follows); bytes 0x85 and 0xA0 at
//! the start of a line count as whitespace (the shared line reader's
//! rule; only in files that are not UTF-8).
//!
//! # Limits
//!
//! A hostile table or key must not take a daemon down: files up to
//! [`MAX_FILE_SIZE`], [`MAX_RULES`] rules, compiled patterns up to
//! [`REGEX_SIZE_LIMIT`] bytes each (a bigger one is `Regular expression
//! too big` and skipped), group nesting up to [`MAX_NESTING`], and at most
//! [`BACKTRACK_LIMIT`] backtracking steps per pcre match. A rule whose match
//! hits the backtracking limit does not apply, negated or not (Postfix
//! skips a result rule whose match fails with an error the same way); an
//! `if` whose match fails skips its block. The count is in
//! [`RegexpTable::match_errors`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{require_absolute, FileStamp, Table, TableError};
use crate::config::lines::{logical_lines, LineProblem};
use crate::config::{Diagnostic, Severity};

/// Largest table file read (bytes).
pub const MAX_FILE_SIZE: u64 = 16 << 20;
/// Most rules (matches and `if`s) in one table.
pub const MAX_RULES: usize = 100_000;
/// Compiled size limit of one pattern (the `regex` crate's `size_limit`,
/// and fancy-regex's for its delegated parts).
pub const REGEX_SIZE_LIMIT: usize = 2 << 20;
/// Lazy-DFA cache limit of one pattern.
pub const DFA_SIZE_LIMIT: usize = 2 << 20;
/// Deepest group nesting accepted in a pattern (PCRE2 allows 250; deeper
/// patterns would only be a way to exhaust the stack).
pub const MAX_NESTING: usize = 200;
/// Backtracking steps allowed to one fancy-regex match (PCRE2's default
/// match limit is 10 million; reaching one million takes about 40 ms).
pub const BACKTRACK_LIMIT: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Regexp,
    Pcre,
}

impl Flavor {
    fn kind(self) -> &'static str {
        match self {
            Flavor::Regexp => "regexp",
            Flavor::Pcre => "pcre",
        }
    }
}

/// An open `regexp:` or `pcre:` table.
pub struct RegexpTable {
    name: String,
    rules: Vec<Rule>,
    warnings: Vec<Diagnostic>,
    stamp: Option<FileStamp>,
    match_errors: AtomicU64,
}

struct Rule {
    matcher: Matcher,
    negate: bool,
    kind: RuleKind,
}

enum RuleKind {
    /// A result, with its `$n` references.
    Result { pieces: Vec<Piece>, max_sub: usize },
    /// An `if`: when it does not apply, continue at rule `end`.
    If { end: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Vec<u8>),
    Group(usize),
}

impl RegexpTable {
    /// Open `spec` (`regexp:/etc/postfix/x`, `pcre:{ {/a/ b} }`): `path` is
    /// the part after the type, a file or an inline `{…}` list.
    pub fn open(spec: &str, path: &str, flavor: Flavor) -> Result<RegexpTable, TableError> {
        if path.starts_with('{') {
            let rules = split_inline(flavor.kind(), path)?;
            let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
            return RegexpTable::from_rules(spec, &refs, flavor);
        }
        let src = read_source(spec, path)?;
        RegexpTable::build(spec, path, &src.bytes, flavor, Some(src.stamp))
    }

    /// A table from rules given one per line (the inline form, whose rules
    /// Postfix writes to an in-memory file): diagnostics name the table by
    /// the part of `spec` after the type, as Postfix does.
    pub fn from_rules(
        spec: &str,
        rules: &[&str],
        flavor: Flavor,
    ) -> Result<RegexpTable, TableError> {
        let shown = spec.split_once(':').map_or(spec, |(_, n)| n);
        let text = rules.join("\n");
        RegexpTable::build(spec, shown, text.as_bytes(), flavor, None)
    }

    /// Parse table text; `shown` names the table in diagnostics.
    pub fn parse(
        spec: &str,
        shown: &str,
        text: &[u8],
        flavor: Flavor,
    ) -> Result<RegexpTable, TableError> {
        RegexpTable::build(spec, shown, text, flavor, None)
    }

    fn build(
        spec: &str,
        shown: &str,
        text: &[u8],
        flavor: Flavor,
        stamp: Option<FileStamp>,
    ) -> Result<RegexpTable, TableError> {
        let map = format!("{} map {}", flavor.kind(), shown);
        let (lines, mut warnings) = pattern_lines(text, shown);
        let mut p = Parser {
            flavor,
            map: &map,
            rules: Vec::new(),
            open_ifs: Vec::new(),
            warnings: Vec::new(),
        };
        check_rule_count(&map, &lines)?;
        for (line, n) in &lines {
            p.line(line, *n);
        }
        while let Some((_, n)) = p.open_ifs.pop() {
            p.warn(n, "IF has no matching ENDIF".into());
        }
        warnings.append(&mut p.warnings);
        Ok(RegexpTable {
            name: spec.to_string(),
            rules: p.rules,
            warnings,
            stamp,
            match_errors: AtomicU64::new(0),
        })
    }

    /// What Postfix would have warned about while reading the table.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// How many matches failed (backtracking limit) since the table was
    /// opened; each counted as "no match" for its rule.
    pub fn match_errors(&self) -> u64 {
        self.match_errors.load(Ordering::Relaxed)
    }

    /// Number of rules kept (matches and `if`s).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether `rule` applies to `key` (its pattern matches, or for a
    /// negated rule does not). A match that fails (backtracking limit)
    /// makes the rule not apply, negated or not.
    fn applies(
        &self,
        rule: &Rule,
        key: &[u8],
        caps: Option<&mut Vec<Option<(usize, usize)>>>,
    ) -> bool {
        match rule.matcher.exec(key, caps) {
            Ok(hit) => hit != rule.negate,
            Err(()) => {
                self.match_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Table for RegexpTable {
    fn warnings(&self) -> &[Diagnostic] {
        RegexpTable::warnings(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let key = key.as_bytes();
        let mut caps = Vec::new();
        let mut i = 0;
        while i < self.rules.len() {
            let rule = &self.rules[i];
            match &rule.kind {
                RuleKind::If { end } => {
                    i = if self.applies(rule, key, None) {
                        i + 1
                    } else {
                        *end
                    };
                }
                RuleKind::Result { pieces, max_sub } => {
                    i += 1;
                    let want = if *max_sub > 0 && !rule.negate {
                        Some(&mut caps)
                    } else {
                        None
                    };
                    if !self.applies(rule, key, want) {
                        continue;
                    }
                    let mut out = Vec::new();
                    for p in pieces {
                        match p {
                            Piece::Lit(b) => out.extend_from_slice(b),
                            Piece::Group(n) => {
                                if let Some(Some((s, e))) = caps.get(*n) {
                                    out.extend_from_slice(&key[*s..*e]);
                                }
                            }
                        }
                    }
                    return Ok(Some(match String::from_utf8(out) {
                        Ok(s) => s,
                        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    }));
                }
            }
        }
        Ok(None)
    }

    fn is_pattern(&self) -> bool {
        true
    }

    fn changed(&self) -> bool {
        self.stamp.as_ref().is_some_and(FileStamp::changed)
    }
}

// ---------------------------------------------------------------------------
// Reading pattern files (shared with cidr:)

/// A pattern table file, read whole.
pub(crate) struct Source {
    pub bytes: Vec<u8>,
    pub stamp: FileStamp,
}

/// Read the file behind a pattern table, bounded by [`MAX_FILE_SIZE`].
pub(crate) fn read_source(spec: &str, path: &str) -> Result<Source, TableError> {
    use std::io::Read;
    require_absolute(spec, path)?;
    let fail = |e: std::io::Error| TableError::Config(format!("open {path}: {}", io_text(&e)));
    let stamp = FileStamp::of(std::path::Path::new(path)).map_err(fail)?;
    let f = std::fs::File::open(path).map_err(fail)?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(TableError::Config(format!(
            "{path}: file larger than {} MiB: refusing to read it",
            MAX_FILE_SIZE >> 20
        )));
    }
    Ok(Source { bytes, stamp })
}

/// An I/O error as the C library words it (no "(os error N)").
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The logical lines of a pattern table as bytes, with their line numbers.
///
/// The bytes are carried through the shared line reader as Latin-1, so a
/// file that is not UTF-8 keeps every byte. As in Postfix, a line ends at a
/// NUL byte, and trailing whitespace is dropped.
pub(crate) fn pattern_lines(text: &[u8], shown: &str) -> (Vec<(Vec<u8>, usize)>, Vec<Diagnostic>) {
    let latin1: String = text.iter().map(|&b| b as char).collect();
    let (lines, problems) = logical_lines(&latin1);
    let diags = problems
        .into_iter()
        .map(|p| match p {
            LineProblem::LeadingWhitespace { line, text } => {
                // Postfix shows the first 30 bytes of the text.
                let t: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
                let shown_text = if t.len() > 30 {
                    format!("{}...", String::from_utf8_lossy(&t[..30]))
                } else {
                    String::from_utf8_lossy(&t).into_owned()
                };
                Diagnostic::new(
                    Severity::Warning,
                    shown,
                    Some(line),
                    format!("logical line must not start with whitespace: \"{shown_text}\""),
                )
                .without_postfix_line()
            }
            LineProblem::TooLong { line } => Diagnostic::new(
                Severity::Warning,
                shown,
                Some(line),
                "line too long -- ignoring this line".into(),
            ),
        })
        .collect();
    let out = lines
        .into_iter()
        .map(|l| {
            let mut b: Vec<u8> = l.text.chars().map(|c| c as u32 as u8).collect();
            if let Some(nul) = b.iter().position(|&c| c == 0) {
                b.truncate(nul);
            }
            while b.last().is_some_and(|c| is_space(*c)) {
                b.pop();
            }
            (b, l.line)
        })
        .collect();
    (out, diags)
}

/// Refuse a table with more than [`MAX_RULES`] rules (every logical line
/// but `endif`), before any pattern is compiled.
pub(crate) fn check_rule_count(map: &str, lines: &[(Vec<u8>, usize)]) -> Result<(), TableError> {
    let mut rules = lines.iter().filter(|(l, _)| !keyword(l, "endif"));
    match rules.nth(MAX_RULES) {
        Some((_, n)) => Err(TableError::Config(format!(
            "{map}, line {n}: more than {MAX_RULES} rules: split the table"
        ))),
        None => Ok(()),
    }
}

/// C `isspace` in the C locale.
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub(crate) fn skip_space(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    i
}

/// `if`/`endif` keyword test: the word (any case) not followed by a letter
/// or digit.
pub(crate) fn keyword(s: &[u8], word: &str) -> bool {
    s.len() >= word.len()
        && s[..word.len()].eq_ignore_ascii_case(word.as_bytes())
        && s.get(word.len()).is_none_or(|c| !c.is_ascii_alphanumeric())
}

/// A byte as Postfix prints it in messages (`printable()`: `?` for what is
/// not printable ASCII).
fn printable(c: u8) -> char {
    if (0x20..0x7f).contains(&c) {
        c as char
    } else {
        '?'
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Split the inline form `{ {rule}, {rule} }` into its rules (Postfix 3.7).
pub(crate) fn split_inline(kind: &str, name: &str) -> Result<Vec<String>, TableError> {
    let b = name.as_bytes();
    let fatal = |m: String| Err(TableError::Config(format!("{kind} map: {m}")));
    let Some(close) = matching_brace(b, 0) else {
        return fatal(format!("missing '}}' in \"{name}\""));
    };
    if close + 1 != b.len() {
        return fatal(format!("syntax error after '}}' in \"{name}\""));
    }
    let inner = &name[1..close];
    let ib = inner.as_bytes();
    let sep = |c: u8| c == b',' || is_space(c);
    let mut rules = Vec::new();
    let mut i = 0;
    loop {
        while i < ib.len() && sep(ib[i]) {
            i += 1;
        }
        if i >= ib.len() {
            break;
        }
        // The token runs to the next separator outside braces.
        let start = i;
        let mut depth = 0usize;
        while i < ib.len() && (depth > 0 || !sep(ib[i])) {
            match ib[i] {
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        let tok = &inner[start..i];
        if !tok.starts_with('{') {
            return fatal(format!("no '{{' at start of text in \"{tok}\""));
        }
        match matching_brace(tok.as_bytes(), 0) {
            None => return fatal(format!("missing '}}' in \"{tok}\"")),
            Some(e) if e + 1 != tok.len() => {
                return fatal(format!("syntax error after '}}' in \"{tok}\""))
            }
            Some(e) => rules.push(
                tok[1..e]
                    .trim_matches(|c: char| c.is_ascii_whitespace())
                    .to_string(),
            ),
        }
    }
    Ok(rules)
}

fn matching_brace(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Rules

struct Parser<'a> {
    flavor: Flavor,
    map: &'a str,
    rules: Vec<Rule>,
    /// Open `if`s: (rule index, line).
    open_ifs: Vec<(usize, usize)>,
    warnings: Vec<Diagnostic>,
}

/// A pattern with its flags, as found in a rule.
struct Pat<'l> {
    pattern: &'l [u8],
    flags: Flags,
    /// Index after the flags.
    next: usize,
}

/// The flags of one pattern, after the toggles that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub icase: bool,
    /// regexp: REG_NEWLINE; pcre: MULTILINE.
    pub multiline: bool,
    /// regexp: REG_EXTENDED; pcre: EXTENDED.
    pub extended: bool,
    pub dotall: bool,
    pub anchored: bool,
    pub dollar_endonly: bool,
    pub ungreedy: bool,
}

impl Parser<'_> {
    fn warn(&mut self, line: usize, msg: String) {
        self.warnings.push(Diagnostic::new(
            Severity::Warning,
            self.map,
            Some(line),
            msg,
        ));
    }

    fn line(&mut self, l: &[u8], n: usize) {
        if l.is_empty() {
            return;
        }
        if !l[0].is_ascii_alphanumeric() {
            self.match_rule(l, n);
        } else if keyword(l, "if") {
            self.if_rule(l, n);
        } else if keyword(l, "endif") {
            match self.open_ifs.pop() {
                None => self.warn(n, "ignoring ENDIF without matching IF".into()),
                Some((idx, _)) => {
                    let end = self.rules.len();
                    if let RuleKind::If { end: e } = &mut self.rules[idx].kind {
                        *e = end;
                    }
                    if skip_space(l, 5) < l.len() {
                        self.warn(n, "ignoring extra text after ENDIF".into());
                    }
                }
            }
        } else {
            self.warn(n, "ignoring unrecognized request".into());
        }
    }

    /// Leading `!`s (each toggles), with whitespace after each.
    fn negation(l: &[u8], mut i: usize) -> (bool, usize) {
        let mut neg = false;
        i = skip_space(l, i);
        while i < l.len() && l[i] == b'!' {
            neg = !neg;
            i = skip_space(l, i + 1);
        }
        (neg, i)
    }

    fn get_pat<'l>(&mut self, l: &'l [u8], i: usize, n: usize) -> Option<Pat<'l>> {
        if i >= l.len() {
            self.warn(n, "no regexp: skipping this rule".into());
            return None;
        }
        let delim = l[i];
        let start = i + 1;
        let mut j = start;
        while j < l.len() {
            if l[j] == b'\\' {
                if j + 1 < l.len() {
                    j += 2;
                    continue;
                }
                j = l.len();
                break;
            }
            if l[j] == delim {
                break;
            }
            j += 1;
        }
        if j >= l.len() {
            let what = match self.flavor {
                Flavor::Regexp => "skipping",
                Flavor::Pcre => "ignoring",
            };
            self.warn(
                n,
                format!(
                    "no closing regexp delimiter \"{}\": {what} this rule",
                    printable(delim)
                ),
            );
            return None;
        }
        let pattern = &l[start..j];
        let mut f = match self.flavor {
            Flavor::Regexp => Flags {
                icase: true,
                multiline: false,
                extended: true,
                dotall: false,
                anchored: false,
                dollar_endonly: false,
                ungreedy: false,
            },
            Flavor::Pcre => Flags {
                icase: true,
                multiline: false,
                extended: false,
                dotall: true,
                anchored: false,
                dollar_endonly: false,
                ungreedy: false,
            },
        };
        j += 1;
        while j < l.len() && !is_space(l[j]) {
            let c = l[j];
            match (self.flavor, c) {
                (_, b'i') => f.icase = !f.icase,
                (_, b'm') => f.multiline = !f.multiline,
                (_, b'x') => f.extended = !f.extended,
                (Flavor::Pcre, b's') => f.dotall = !f.dotall,
                (Flavor::Pcre, b'A') => f.anchored = !f.anchored,
                (Flavor::Pcre, b'E') => f.dollar_endonly = !f.dollar_endonly,
                (Flavor::Pcre, b'U') => f.ungreedy = !f.ungreedy,
                (Flavor::Pcre, b'X') => {
                    self.warn(n, "ignoring obsolete regexp option \"X\"".into())
                }
                _ => {
                    self.warn(
                        n,
                        format!(
                            "unknown regexp option \"{}\": skipping this rule",
                            printable(c)
                        ),
                    );
                    return None;
                }
            }
            j += 1;
        }
        Some(Pat {
            pattern,
            flags: f,
            next: j,
        })
    }

    fn compile(&mut self, pat: &Pat, n: usize) -> Option<Matcher> {
        // A panic in a regex engine refuses the rule, as an error would.
        let (flavor, p, f) = (self.flavor, pat.pattern, pat.flags);
        let compiled = std::panic::catch_unwind(|| Matcher::new(flavor, p, f))
            .unwrap_or_else(|_| Err("error in regex: internal error in the regex engine".into()));
        match compiled {
            Ok(m) => Some(m),
            Err(e) => {
                self.warn(n, e);
                None
            }
        }
    }

    fn match_rule(&mut self, l: &[u8], n: usize) {
        let (negate, i) = Parser::negation(l, 0);
        let Some(pat) = self.get_pat(l, i, n) else {
            return;
        };
        let r = skip_space(l, pat.next);
        let result = &l[r..];
        if result.is_empty() {
            self.warn(n, "no replacement text: using empty string".into());
        }
        let Some((pieces, max_sub)) = self.parse_result(result, n) else {
            self.warn(n, "bad replacement syntax: skipping this rule".into());
            return;
        };
        if negate && max_sub > 0 {
            self.warn(
                n,
                "$number found in negative match replacement text: skipping this rule".into(),
            );
            return;
        }
        let Some(matcher) = self.compile(&pat, n) else {
            return;
        };
        if max_sub > matcher.groups() {
            self.warn(
                n,
                format!("out of range replacement index \"{max_sub}\": skipping this rule"),
            );
            return;
        }
        self.rules.push(Rule {
            matcher,
            negate,
            kind: RuleKind::Result { pieces, max_sub },
        });
    }

    fn if_rule(&mut self, l: &[u8], n: usize) {
        let (negate, i) = Parser::negation(l, 2);
        let Some(pat) = self.get_pat(l, i, n) else {
            return;
        };
        let rest = skip_space(l, pat.next);
        if rest < l.len() {
            self.warn(
                n,
                format!(
                    "ignoring extra text after IF statement: \"{}\"",
                    lossy(&l[rest..])
                ),
            );
            self.warn(
                n,
                "do not prepend whitespace to statements between IF and ENDIF".into(),
            );
        }
        let Some(matcher) = self.compile(&pat, n) else {
            return;
        };
        self.open_ifs.push((self.rules.len(), n));
        // An `if` never closed runs to the end of the table.
        self.rules.push(Rule {
            matcher,
            negate,
            kind: RuleKind::If { end: usize::MAX },
        });
    }

    /// Parse a result the way Postfix's `mac_parse` does for these tables:
    /// `$$`, `$name`, `${name}`, `$(name)`; names must be numbers >= 1.
    /// `None` when the result is refused (the warnings are given).
    fn parse_result(&mut self, r: &[u8], n: usize) -> Option<(Vec<Piece>, usize)> {
        let whole = lossy(r);
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut max_sub = 0usize;
        let mut ok = true;
        let mut i = 0;
        while i < r.len() {
            if r[i] != b'$' {
                lit.push(r[i]);
                i += 1;
                continue;
            }
            if r.get(i + 1) == Some(&b'$') {
                lit.push(b'$');
                i += 2;
                continue;
            }
            i += 1;
            let name: &[u8];
            if i < r.len() && (r[i] == b'{' || r[i] == b'(') {
                let (open, close) = if r[i] == b'{' {
                    (b'{', b'}')
                } else {
                    (b'(', b')')
                };
                let mut depth = 1;
                let mut j = i + 1;
                while j < r.len() {
                    if r[j] == open {
                        depth += 1;
                    } else if r[j] == close {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    j += 1;
                }
                if j >= r.len() {
                    self.warn(n, format!("truncated macro reference: \"{whole}\""));
                    return None;
                }
                name = &r[i + 1..j];
                i = j + 1;
            } else {
                let j = r[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(r.len(), |p| i + p);
                name = &r[i..j];
                i = j;
            }
            if name.is_empty() {
                self.warn(n, format!("empty macro name: \"{whole}\""));
                return None;
            }
            if !name.iter().all(u8::is_ascii_digit) {
                self.warn(
                    n,
                    format!("non-numeric replacement index \"{}\"", lossy(name)),
                );
                ok = false;
                continue;
            }
            let v = atoi(name);
            if v < 1 {
                let word = match self.flavor {
                    Flavor::Regexp => "out-of-range",
                    Flavor::Pcre => "out of range",
                };
                self.warn(n, format!("{word} replacement index \"{v}\""));
                ok = false;
                continue;
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Group(v as usize));
            max_sub = max_sub.max(v as usize);
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        ok.then_some((pieces, max_sub))
    }
}

/// C `atoi` on digits as glibc does it: `strtol` saturating at `LONG_MAX`,
/// then truncated to `int`.
fn atoi(d: &[u8]) -> i32 {
    let mut v: i64 = 0;
    for &c in d {
        v = v.saturating_mul(10).saturating_add((c - b'0') as i64);
    }
    v as i32
}

// ---------------------------------------------------------------------------
// Matchers

enum Matcher {
    /// A POSIX pattern, translated for the `regex` crate.
    Posix {
        re: regex::bytes::Regex,
        groups: usize,
    },
    /// A POSIX pattern with back-references, or a PCRE pattern.
    Fancy {
        re: Box<fancy_regex::Regex>,
        groups: usize,
        /// PCRE only: the pattern with `$` also matching before a final
        /// newline, compiled when a key ending in a newline needs it.
        dollar_nl: Option<Box<DollarNl>>,
    },
}

/// The variant of a PCRE pattern whose `$` also matches before a final
/// newline, and its flags; compiled on first use.
type DollarNl = (String, Flags, OnceLock<Option<fancy_regex::Regex>>);

fn fancy_builder(pattern: &str, f: Flags, pcre: bool) -> fancy_regex::RegexBuilder {
    let mut b = fancy_regex::RegexBuilder::new(pattern);
    b.bytes_mode(fancy_regex::BytesMode::Ascii)
        .case_insensitive(f.icase)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(REGEX_SIZE_LIMIT)
        .delegate_dfa_size_limit(DFA_SIZE_LIMIT)
        .max_prog_size(REGEX_SIZE_LIMIT / 16);
    if pcre {
        b.multi_line(f.multiline)
            .dot_matches_new_line(f.dotall)
            .ignore_whitespace(f.extended);
    }
    b
}

impl Matcher {
    fn new(flavor: Flavor, pattern: &[u8], f: Flags) -> Result<Matcher, String> {
        match flavor {
            Flavor::Regexp => {
                let t = posix::translate(pattern, f.extended, f.icase, f.multiline)
                    .map_err(|e| e.to_string())?;
                if t.backrefs {
                    let re = fancy_builder(&t.pattern, f, false)
                        .build()
                        .map_err(|e| posix_engine_error(&e.to_string()))?;
                    Ok(Matcher::Fancy {
                        re: Box::new(re),
                        groups: t.groups,
                        dollar_nl: None,
                    })
                } else {
                    let re = regex::bytes::RegexBuilder::new(&t.pattern)
                        .unicode(false)
                        .case_insensitive(f.icase)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .dfa_size_limit(DFA_SIZE_LIMIT)
                        .build()
                        .map_err(|e| posix_engine_error(&e.to_string()))?;
                    Ok(Matcher::Posix {
                        re,
                        groups: t.groups,
                    })
                }
            }
            Flavor::Pcre => {
                let t = pcre::translate(pattern, f)
                    .map_err(|(off, m)| format!("error in regex at offset {off}: {m}"))?;
                let re = fancy_builder(&t.main, f, true)
                    .build()
                    .map_err(|e| format!("error in regex: {}", first_line(&e.to_string())))?;
                let groups = re.captures_len().saturating_sub(1);
                Ok(Matcher::Fancy {
                    re: Box::new(re),
                    groups,
                    dollar_nl: t.dollar_nl.map(|p| Box::new((p, f, OnceLock::new()))),
                })
            }
        }
    }

    fn groups(&self) -> usize {
        match self {
            Matcher::Posix { groups, .. } | Matcher::Fancy { groups, .. } => *groups,
        }
    }

    /// Match `key`; with `caps`, also fill in the group offsets. `Err` when
    /// the match could not complete (backtracking limit).
    fn exec(&self, key: &[u8], caps: Option<&mut Vec<Option<(usize, usize)>>>) -> Result<bool, ()> {
        // A panic in a regex engine is a failed match: a bug there must not
        // take a daemon down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(key, caps)))
            .unwrap_or(Err(()))
    }

    fn run(&self, key: &[u8], caps: Option<&mut Vec<Option<(usize, usize)>>>) -> Result<bool, ()> {
        match self {
            Matcher::Posix { re, .. } => match caps {
                None => Ok(re.is_match(key)),
                Some(out) => match re.captures(key) {
                    None => Ok(false),
                    Some(c) => {
                        out.clear();
                        out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
                        Ok(true)
                    }
                },
            },
            Matcher::Fancy { re, dollar_nl, .. } => {
                let re: &fancy_regex::Regex = match dollar_nl.as_deref() {
                    Some((src, f, cell)) if key.last() == Some(&b'\n') => cell
                        .get_or_init(|| fancy_builder(src, *f, true).build().ok())
                        .as_ref()
                        .unwrap_or(re),
                    _ => re,
                };
                match caps {
                    None => re.is_match(key).map_err(|_| ()),
                    Some(out) => match re.captures(key).map_err(|_| ())? {
                        None => Ok(false),
                        Some(c) => {
                            out.clear();
                            out.extend(
                                (0..c.len()).map(|i| c.get(i).map(|m| (m.start(), m.end()))),
                            );
                            Ok(true)
                        }
                    },
                }
            }
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

/// An engine error for a POSIX pattern the translator accepted: only size
/// limits are expected here, which glibc calls `Regular expression too big`.
fn posix_engine_error(e: &str) -> String {
    if e.contains("size limit")
        || e.contains("too big")
        || e.contains("nest limit")
        || e.contains("too complex")
        || e.contains("too deeply")
    {
        "Regular expression too big".into()
    } else {
        format!("Invalid regular expression ({})", first_line(e))
    }
}

/// Append byte `b` to a pattern as a literal the regex crates read the same
/// way everywhere (in and out of classes, with or without `x`).
fn push_lit(out: &mut String, b: u8) {
    if b.is_ascii_alphanumeric() {
        out.push(b as char);
    } else {
        out.push_str(&format!("\\x{b:02X}"));
    }
}

/// Append a byte set as class items (`a-z\x2D`), without brackets.
fn push_set_items(out: &mut String, set: &[bool; 256]) {
    let mut i = 0usize;
    while i < 256 {
        if !set[i] {
            i += 1;
            continue;
        }
        let s = i;
        while i + 1 < 256 && set[i + 1] {
            i += 1;
        }
        push_lit(out, s as u8);
        if i > s {
            out.push('-');
            push_lit(out, i as u8);
        }
        i += 1;
    }
}

pub mod posix {
    //! POSIX regular expressions as glibc's `regcomp` reads them (ERE with
    //! `REG_EXTENDED`, BRE without; GNU operators; `REG_ICASE`,
    //! `REG_NEWLINE`), rewritten for the `regex` crate's byte syntax (or
    //! fancy-regex's, for back-references). Errors carry glibc's
    //! `regerror` texts.

    use super::{push_lit, push_set_items, MAX_NESTING};
    use std::fmt;

    /// glibc's `regerror` messages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum PosixError {
        BadRepeat,
        BadBrace,
        UnmatchedBrace,
        UnmatchedBracket,
        UnmatchedParen,
        BadRange,
        BadClass,
        BadCollation,
        BadBackref,
        TrailingBackslash,
        TooBig,
    }

    impl fmt::Display for PosixError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                PosixError::BadRepeat => "Invalid preceding regular expression",
                PosixError::BadBrace => "Invalid content of \\{\\}",
                PosixError::UnmatchedBrace => "Unmatched \\{",
                PosixError::UnmatchedBracket => "Unmatched [, [^, [:, [., or [=",
                PosixError::UnmatchedParen => "Unmatched ( or \\(",
                PosixError::BadRange => "Invalid range end",
                PosixError::BadClass => "Invalid character class name",
                PosixError::BadCollation => "Invalid collation character",
                PosixError::BadBackref => "Invalid back reference",
                PosixError::TrailingBackslash => "Trailing backslash",
                PosixError::TooBig => "Regular expression too big",
            })
        }
    }

    /// A translated pattern.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Translated {
        pub pattern: String,
        /// Number of groups (`re_nsub`).
        pub groups: usize,
        /// Uses back-references (needs a backtracking engine).
        pub backrefs: bool,
    }

    /// glibc's `RE_DUP_MAX`.
    const DUP_MAX: i64 = 0x7fff;

    /// Translate `p`: `ere` = REG_EXTENDED, `icase` = REG_ICASE (applied by
    /// the caller's engine flag, but glibc's quirks with it are reproduced
    /// here), `newline` = REG_NEWLINE.
    pub fn translate(
        p: &[u8],
        ere: bool,
        icase: bool,
        newline: bool,
    ) -> Result<Translated, PosixError> {
        let mut t = P {
            s: p,
            i: 0,
            ere,
            icase,
            newline,
            groups: 0,
            completed: 0,
            backrefs: false,
            depth: 0,
        };
        let pattern = t.alt()?;
        if t.i < p.len() {
            // Only a BRE `\)` with no `\(` stops the top level early.
            return Err(PosixError::UnmatchedParen);
        }
        Ok(Translated {
            pattern,
            groups: t.groups,
            backrefs: t.backrefs,
        })
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
        ere: bool,
        icase: bool,
        newline: bool,
        groups: usize,
        /// Groups 1..=63 closed so far in this alternative (glibc's
        /// `completed_bkref_map`).
        completed: u64,
        backrefs: bool,
        depth: usize,
    }

    enum Tok {
        Close,
        Comma,
        End,
    }

    enum Elem {
        Char(u8),
        Set(Box<[bool; 256]>),
    }

    impl P<'_> {
        fn peek(&self, k: usize) -> Option<u8> {
            self.s.get(self.i + k).copied()
        }

        fn at_alt(&self) -> bool {
            if self.ere {
                self.peek(0) == Some(b'|')
            } else {
                self.peek(0) == Some(b'\\') && self.peek(1) == Some(b'|')
            }
        }

        fn at_close(&self) -> bool {
            if self.ere {
                self.depth > 0 && self.peek(0) == Some(b')')
            } else {
                self.peek(0) == Some(b'\\') && self.peek(1) == Some(b')')
            }
        }

        fn alt(&mut self) -> Result<String, PosixError> {
            let initial = self.completed;
            let mut acc = 0u64;
            let mut out = self.branch()?;
            while self.at_alt() {
                self.i += if self.ere { 1 } else { 2 };
                acc |= self.completed;
                self.completed = initial;
                out.push('|');
                out.push_str(&self.branch()?);
            }
            self.completed |= acc;
            Ok(out)
        }

        fn branch(&mut self) -> Result<String, PosixError> {
            let mut out = String::new();
            // True where a quantifier has nothing to repeat: at the start
            // of a branch and after an anchor.
            let mut atom_pos = true;
            let mut first = true;
            loop {
                if self.i >= self.s.len() || self.at_alt() || self.at_close() {
                    break;
                }
                let (atom, quantifiable) = self.atom(atom_pos, first)?;
                first = false;
                let piece = if quantifiable {
                    self.quantifiers(atom)?
                } else {
                    atom
                };
                out.push_str(&piece);
                atom_pos = !quantifiable;
            }
            Ok(out)
        }

        /// One atom; returns its text and whether a quantifier may follow.
        fn atom(&mut self, atom_pos: bool, first: bool) -> Result<(String, bool), PosixError> {
            let c = self.s[self.i];
            let mut out = String::new();
            if self.ere {
                match c {
                    b'*' | b'+' | b'?' | b'{' if atom_pos => return Err(PosixError::BadRepeat),
                    b'(' => return self.group(1),
                    b')' => {
                        // Unmatched `)` at the top level is a literal.
                        self.i += 1;
                        push_lit(&mut out, b')');
                        return Ok((out, true));
                    }
                    b'^' => {
                        self.i += 1;
                        return Ok((self.caret(), false));
                    }
                    b'$' => {
                        self.i += 1;
                        return Ok((self.dollar(), false));
                    }
                    _ => {}
                }
            } else {
                match c {
                    b'*' if atom_pos => {
                        self.i += 1;
                        push_lit(&mut out, b'*');
                        return Ok((out, true));
                    }
                    b'^' if first => {
                        self.i += 1;
                        return Ok((self.caret(), false));
                    }
                    b'$' if self.bre_dollar_anchor() => {
                        self.i += 1;
                        return Ok((self.dollar(), false));
                    }
                    b'\\' => match self.peek(1) {
                        Some(b'(') => return self.group(2),
                        // Only reached where nothing precedes to repeat.
                        Some(b'{') => return Err(PosixError::BadRepeat),
                        Some(c2 @ (b'+' | b'?')) if atom_pos => {
                            self.i += 2;
                            push_lit(&mut out, c2);
                            return Ok((out, true));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            match c {
                b'[' => {
                    self.i += 1;
                    Ok((self.bracket()?, true))
                }
                b'.' => {
                    self.i += 1;
                    // RE_DOT_NOT_NULL; REG_NEWLINE keeps `.` off newlines.
                    Ok((
                        if self.newline {
                            "[^\\x00\\x0A]".into()
                        } else {
                            "[\\x01-\\xFF]".into()
                        },
                        true,
                    ))
                }
                b'\\' => self.escape(),
                _ => {
                    self.i += 1;
                    push_lit(&mut out, c);
                    Ok((out, true))
                }
            }
        }

        fn caret(&self) -> String {
            if self.newline {
                "(?m:^)".into()
            } else {
                "^".into()
            }
        }

        fn dollar(&self) -> String {
            if self.newline {
                "(?m:$)".into()
            } else {
                "$".into()
            }
        }

        /// BRE: `$` is an anchor at the end, or before `\)` or `\|`.
        fn bre_dollar_anchor(&self) -> bool {
            match self.peek(1) {
                None => true,
                Some(b'\\') => matches!(self.peek(2), Some(b')') | Some(b'|')),
                _ => false,
            }
        }

        fn group(&mut self, open_len: usize) -> Result<(String, bool), PosixError> {
            self.i += open_len;
            self.depth += 1;
            if self.depth > MAX_NESTING {
                return Err(PosixError::TooBig);
            }
            self.groups += 1;
            let n = self.groups;
            let inner = self.alt()?;
            let close_ok = if self.ere {
                self.peek(0) == Some(b')')
            } else {
                self.peek(0) == Some(b'\\') && self.peek(1) == Some(b')')
            };
            if !close_ok {
                return Err(PosixError::UnmatchedParen);
            }
            self.i += open_len;
            self.depth -= 1;
            if n < 64 {
                self.completed |= 1 << n;
            }
            Ok((format!("({inner})"), true))
        }

        fn escape(&mut self) -> Result<(String, bool), PosixError> {
            let Some(c) = self.peek(1) else {
                return Err(PosixError::TrailingBackslash);
            };
            self.i += 2;
            let mut out = String::new();
            let anchor =
                |s: &str| -> Result<(String, bool), PosixError> { Ok((s.to_string(), false)) };
            match c {
                b'1'..=b'9' => {
                    let n = (c - b'0') as usize;
                    if self.completed & (1 << n) == 0 {
                        return Err(PosixError::BadBackref);
                    }
                    self.backrefs = true;
                    Ok((format!("\\{n}"), true))
                }
                b'w' | b'W' => {
                    let mut set = [false; 256];
                    for b in 0..=255u8 {
                        set[b as usize] = b.is_ascii_alphanumeric() || b == b'_';
                    }
                    Ok((self.class(&set, c == b'W'), true))
                }
                b's' | b'S' => {
                    let mut set = [false; 256];
                    for b in [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c] {
                        set[b as usize] = true;
                    }
                    Ok((self.class(&set, c == b'S'), true))
                }
                b'b' => anchor("\\b"),
                b'B' => anchor("\\B"),
                b'<' => anchor("\\b{start}"),
                b'>' => anchor("\\b{end}"),
                b'`' => anchor("\\A"),
                b'\'' => anchor("\\z"),
                // glibc with REG_ICASE never matches an escaped ordinary
                // lower-case letter (`\q`, `\d`, `\n`); reproduced.
                b'a'..=b'z' if self.icase => Ok(("[^\\x00-\\xFF]".into(), true)),
                _ => {
                    push_lit(&mut out, c);
                    Ok((out, true))
                }
            }
        }

        fn class(&self, set: &[bool; 256], negate: bool) -> String {
            if !set.iter().any(|&b| b) && (!negate || !self.newline) {
                // Empty: nothing, or (negated) any byte.
                return if negate {
                    "[\\x00-\\xFF]".into()
                } else {
                    "[^\\x00-\\xFF]".into()
                };
            }
            let mut s = set.to_owned();
            let mut out = String::from("[");
            if negate {
                out.push('^');
                if self.newline {
                    s[b'\n' as usize] = true;
                }
            }
            push_set_items(&mut out, &s);
            out.push(']');
            out
        }

        fn quantifiers(&mut self, atom: String) -> Result<String, PosixError> {
            let mut piece = atom;
            let mut quantified = false;
            loop {
                let q = match (self.ere, self.peek(0), self.peek(1)) {
                    (_, Some(b'*'), _) => {
                        self.i += 1;
                        "*".to_string()
                    }
                    (true, Some(b'+'), _) => {
                        self.i += 1;
                        "+".to_string()
                    }
                    (true, Some(b'?'), _) => {
                        self.i += 1;
                        "?".to_string()
                    }
                    (true, Some(b'{'), _) => {
                        self.i += 1;
                        self.interval()?
                    }
                    (false, Some(b'\\'), Some(b'+')) => {
                        self.i += 2;
                        "+".to_string()
                    }
                    (false, Some(b'\\'), Some(b'?')) => {
                        self.i += 2;
                        "?".to_string()
                    }
                    (false, Some(b'\\'), Some(b'{')) => {
                        self.i += 2;
                        self.interval()?
                    }
                    _ => break,
                };
                piece = if quantified {
                    format!("(?:{piece}){q}")
                } else {
                    format!("{piece}{q}")
                };
                quantified = true;
                // BRE: `*` or `\{` right after a repetition is an error.
                if !self.ere
                    && (self.peek(0) == Some(b'*')
                        || (self.peek(0) == Some(b'\\') && self.peek(1) == Some(b'{')))
                {
                    return Err(PosixError::BadRepeat);
                }
            }
            Ok(piece)
        }

        fn at_interval_close(&self) -> usize {
            if self.ere {
                usize::from(self.peek(0) == Some(b'}'))
            } else if self.peek(0) == Some(b'\\') && self.peek(1) == Some(b'}') {
                2
            } else {
                0
            }
        }

        /// glibc's `fetch_number`: -1 no digits, -2 invalid.
        fn fetch_number(&mut self) -> (i64, Tok) {
            let mut num: i64 = -1;
            loop {
                if self.i >= self.s.len() {
                    return (-2, Tok::End);
                }
                let close = self.at_interval_close();
                if close > 0 {
                    self.i += close;
                    return (num, Tok::Close);
                }
                let mut c = self.s[self.i];
                self.i += 1;
                let mut plain = true;
                if c == b'\\' {
                    plain = false;
                    if self.i >= self.s.len() {
                        return (-2, Tok::End);
                    }
                    c = self.s[self.i];
                    self.i += 1;
                }
                if plain && c == b',' {
                    return (num, Tok::Comma);
                }
                num = if !plain || !c.is_ascii_digit() || num == -2 {
                    -2
                } else if num == -1 {
                    (c - b'0') as i64
                } else {
                    (num * 10 + (c - b'0') as i64).min(DUP_MAX + 1)
                };
            }
        }

        fn interval(&mut self) -> Result<String, PosixError> {
            let (mut start, mut tok) = self.fetch_number();
            if start == -1 {
                if matches!(tok, Tok::Comma) {
                    start = 0;
                } else {
                    return Err(PosixError::BadBrace);
                }
            }
            let mut end = -2;
            if start != -2 {
                end = match tok {
                    Tok::Close => start,
                    Tok::Comma => {
                        let (e, t) = self.fetch_number();
                        tok = t;
                        e
                    }
                    Tok::End => -2,
                };
            }
            if start == -2 || end == -2 {
                return Err(if matches!(tok, Tok::End) {
                    PosixError::UnmatchedBrace
                } else {
                    PosixError::BadBrace
                });
            }
            if (end != -1 && start > end) || !matches!(tok, Tok::Close) {
                return Err(PosixError::BadBrace);
            }
            if (if end == -1 { start } else { end }) > DUP_MAX {
                return Err(PosixError::TooBig);
            }
            Ok(if end == -1 {
                format!("{{{start},}}")
            } else if start == end {
                format!("{{{start}}}")
            } else {
                format!("{{{start},{end}}}")
            })
        }

        /// A bracket expression; `self.i` is after the `[`.
        fn bracket(&mut self) -> Result<String, PosixError> {
            let mut set = [false; 256];
            let negate = self.peek(0) == Some(b'^');
            if negate {
                self.i += 1;
            }
            let mut first = true;
            loop {
                let Some(c) = self.peek(0) else {
                    return Err(PosixError::UnmatchedBracket);
                };
                if c == b']' && !first {
                    self.i += 1;
                    break;
                }
                let start = self.bracket_elem(first)?;
                first = false;
                // A range when `-` follows and is not the last member.
                if self.peek(0) == Some(b'-')
                    && self.peek(1).is_some()
                    && self.peek(1) != Some(b']')
                {
                    self.i += 1;
                    let end = self.bracket_elem(true)?;
                    match (start, end) {
                        (Elem::Char(a), Elem::Char(b)) if a <= b => {
                            for x in a..=b {
                                set[x as usize] = true;
                            }
                        }
                        _ => return Err(PosixError::BadRange),
                    }
                } else if self.peek(0) == Some(b'-') && self.peek(1).is_none() {
                    return Err(PosixError::UnmatchedBracket);
                } else {
                    match start {
                        Elem::Char(a) => set[a as usize] = true,
                        Elem::Set(s) => {
                            for (d, v) in set.iter_mut().zip(s.iter()) {
                                *d |= *v;
                            }
                        }
                    }
                }
            }
            if self.icase {
                // glibc reads the pattern in upper case and matches the
                // upper-cased input against the set: a byte is in the
                // class when its upper case is. (So `[a-A]` is `[A]`,
                // `[Z-a]` is invalid, `[^b-~]` matches `a`.) The result is
                // closed under case folding, which the engine applies.
                let upper = set;
                for (c, v) in set.iter_mut().enumerate() {
                    *v = upper[(c as u8).to_ascii_uppercase() as usize];
                }
            }
            Ok(self.class(&set, negate))
        }

        fn bracket_elem(&mut self, accept_hyphen: bool) -> Result<Elem, PosixError> {
            let Some(c) = self.peek(0) else {
                return Err(PosixError::UnmatchedBracket);
            };
            if c == b'[' {
                if let Some(d @ (b':' | b'.' | b'=')) = self.peek(1) {
                    let start = self.i + 2;
                    let mut j = start;
                    loop {
                        if j + 1 >= self.s.len() {
                            return Err(PosixError::UnmatchedBracket);
                        }
                        if self.s[j] == d && self.s[j + 1] == b']' {
                            break;
                        }
                        j += 1;
                    }
                    let name = &self.s[start..j];
                    if name.len() >= 32 {
                        return Err(PosixError::UnmatchedBracket);
                    }
                    self.i = j + 2;
                    return match d {
                        // REG_ICASE makes `upper` and `lower` `alpha`.
                        b':' if self.icase && (name == b"upper" || name == b"lower") => Ok(
                            Elem::Set(Box::new(named_class(b"alpha").unwrap_or([false; 256]))),
                        ),
                        b':' => named_class(name)
                            .map(|s| Elem::Set(Box::new(s)))
                            .ok_or(PosixError::BadClass),
                        _ if name.len() == 1 && self.icase => {
                            Ok(Elem::Char(name[0].to_ascii_uppercase()))
                        }
                        _ if name.len() == 1 => Ok(Elem::Char(name[0])),
                        _ => Err(PosixError::BadCollation),
                    };
                }
            }
            if c == b'-' && !accept_hyphen && self.peek(1) != Some(b']') {
                return Err(PosixError::BadRange);
            }
            self.i += 1;
            // REG_ICASE: the pattern is read in upper case.
            Ok(Elem::Char(if self.icase {
                c.to_ascii_uppercase()
            } else {
                c
            }))
        }
    }

    /// A POSIX class in the C locale.
    fn named_class(name: &[u8]) -> Option<[bool; 256]> {
        let f: fn(u8) -> bool = match name {
            b"alpha" => |b| b.is_ascii_alphabetic(),
            b"upper" => |b| b.is_ascii_uppercase(),
            b"lower" => |b| b.is_ascii_lowercase(),
            b"digit" => |b| b.is_ascii_digit(),
            b"xdigit" => |b| b.is_ascii_hexdigit(),
            b"alnum" => |b| b.is_ascii_alphanumeric(),
            b"space" => |b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c),
            b"blank" => |b| b == b' ' || b == b'\t',
            b"punct" => |b| b.is_ascii_punctuation(),
            b"print" => |b| (0x20..0x7f).contains(&b),
            b"graph" => |b| b.is_ascii_graphic(),
            b"cntrl" => |b| b.is_ascii_control(),
            _ => return None,
        };
        let mut set = [false; 256];
        for b in 0..=255u8 {
            set[b as usize] = f(b);
        }
        Some(set)
    }
}

pub mod pcre {
    //! PCRE2 patterns rewritten for fancy-regex (bytes mode), keeping
    //! PCRE2's meaning where the two read the same text differently. The
    //! errors found here carry PCRE2's wording and the offset in the
    //! original pattern.

    use super::{push_lit, Flags, MAX_NESTING};

    /// A translated pattern.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Translated {
        /// For keys that do not end with a newline.
        pub main: String,
        /// When `$` must also match before a final newline: the pattern for
        /// keys that end with one.
        pub dollar_nl: Option<String>,
    }

    type Err = (usize, &'static str);

    struct T<'a> {
        s: &'a [u8],
        i: usize,
        main: String,
        alt: String,
        dollar: bool,
        /// x and m in effect, and the enclosing groups' values.
        x: bool,
        m: bool,
        stack: Vec<Scope>,
        groups: usize,
        dollar_endonly: bool,
        rep: Rep,
        /// A lookaround that just closed: where it starts in both outputs.
        last_look: Option<(usize, usize)>,
        /// Length bookkeeping outside any group.
        root: Len,
        /// Fixed lengths of closed capture groups, by number, and group
        /// names (a back-reference in a lookbehind has its group's length).
        group_lens: Vec<Option<usize>>,
        names: Vec<(Vec<u8>, usize)>,
        /// Group references to check at the end, with their offsets.
        refs: Vec<(Ref, usize)>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ref {
        Number(usize),
        Name(Vec<u8>),
    }

    /// An open group: the x and m flags outside it, whether it is a
    /// lookaround, and where it starts in both outputs.
    #[derive(Debug, Clone, Copy)]
    struct Scope {
        x: bool,
        m: bool,
        look: bool,
        main: usize,
        alt: usize,
        /// A lookbehind, opened at this offset: its branches must have
        /// fixed lengths.
        behind: Option<usize>,
        len: Len,
        /// The capture group's number.
        group: Option<usize>,
    }

    /// Length bookkeeping of a group, for PCRE2's rule that lookbehind
    /// branches have fixed lengths (`None`: variable).
    #[derive(Debug, Clone, Copy)]
    struct Len {
        cur: Option<usize>,
        before_last: Option<usize>,
        last: Option<usize>,
        first: Option<Option<usize>>,
        equal: bool,
        all_fixed: bool,
    }

    impl Len {
        fn new() -> Len {
            Len {
                cur: Some(0),
                before_last: Some(0),
                last: Some(0),
                first: None,
                equal: true,
                all_fixed: true,
            }
        }

        fn item(&mut self, n: Option<usize>) {
            self.before_last = self.cur;
            self.last = n;
            self.cur = match (self.cur, n) {
                (Some(a), Some(b)) => a.checked_add(b),
                _ => None,
            };
        }

        fn quantify(&mut self, min: u64, max: Option<u64>) {
            self.cur = match (self.before_last, self.last) {
                (Some(b), Some(l)) if max == Some(min) => (l as u64)
                    .checked_mul(min)
                    .and_then(|x| usize::try_from(x).ok())
                    .and_then(|x| b.checked_add(x)),
                _ => None,
            };
        }

        fn branch_end(&mut self) {
            match self.first {
                None => self.first = Some(self.cur),
                Some(f) if f != self.cur => self.equal = false,
                _ => {}
            }
            if self.cur.is_none() {
                self.all_fixed = false;
            }
            *self = Len {
                cur: Some(0),
                before_last: Some(0),
                last: Some(0),
                ..*self
            };
        }

        /// The group's length when every branch has the same fixed one.
        fn total(&self) -> Option<usize> {
            if self.equal {
                self.first.flatten()
            } else {
                None
            }
        }
    }

    /// Whether a quantifier may come next (PCRE2 refuses one after an
    /// assertion, at the start of a group or branch, or after a quantifier
    /// and its `+`/`?` modifier).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Rep {
        No,
        Yes,
        Quantified,
        Modified,
    }

    /// Translate pattern `p` compiled with flags `f`.
    pub fn translate(p: &[u8], f: Flags) -> Result<Translated, Err> {
        let mut t = T {
            s: p,
            i: 0,
            main: String::new(),
            alt: String::new(),
            dollar: false,
            x: f.extended,
            m: f.multiline,
            stack: Vec::new(),
            groups: 0,
            dollar_endonly: f.dollar_endonly,
            rep: Rep::No,
            last_look: None,
            root: Len::new(),
            group_lens: Vec::new(),
            names: Vec::new(),
            refs: Vec::new(),
        };
        t.run()?;
        let wrap = |body: &str| {
            let mut s = String::new();
            if f.anchored {
                s.push_str("\\A(?:");
            }
            if f.ungreedy {
                s.push_str("(?U)");
            }
            s.push_str(body);
            if f.anchored {
                s.push(')');
            }
            s
        };
        Ok(Translated {
            main: wrap(&t.main),
            dollar_nl: t.dollar.then(|| wrap(&t.alt)),
        })
    }

    /// PCRE2's test for `[:name:]` (and `[.x.]`, `[=x=]`) at the start of
    /// `s` (after the `[:`): the length of the name when the terminator
    /// comes before a `]` or another `[:`.
    fn posix_syntax(s: &[u8], term: u8) -> Option<usize> {
        let mut i = 0;
        while i < s.len() {
            let next = s.get(i + 1).copied();
            if s[i] == b'\\' && matches!(next, Some(b']') | Some(b'\\')) {
                i += 2;
                continue;
            }
            if (s[i] == b'[' && next == Some(term)) || s[i] == b']' {
                return None;
            }
            if s[i] == term && next == Some(b']') {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    fn is_pcre_space(c: u8) -> bool {
        matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
    }

    impl T<'_> {
        fn peek(&self, k: usize) -> Option<u8> {
            self.s.get(self.i + k).copied()
        }

        fn len(&mut self) -> &mut Len {
            match self.stack.last_mut() {
                Some(sc) => &mut sc.len,
                None => &mut self.root,
            }
        }

        /// The fixed length of group `n`, when it is closed and has one.
        fn ref_len(&self, n: usize) -> Option<usize> {
            self.group_lens.get(n).copied().flatten()
        }

        fn name_len(&self, name: &[u8]) -> Option<usize> {
            let n = self.names.iter().find(|(k, _)| k == name)?.1;
            self.ref_len(n)
        }

        /// One item of `n` characters (`None`: variable) was added.
        fn item(&mut self, n: Option<usize>) {
            self.len().item(n);
        }

        fn push(&mut self, s: &str) {
            self.main.push_str(s);
            self.alt.push_str(s);
        }

        fn lit(&mut self, b: u8) {
            push_lit(&mut self.main, b);
            push_lit(&mut self.alt, b);
        }

        fn run(&mut self) -> Result<(), Err> {
            while self.i < self.s.len() {
                let c = self.s[self.i];
                if self.x && is_pcre_space(c) {
                    self.i += 1;
                    continue;
                }
                if self.x && c == b'#' {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                    continue;
                }
                if !matches!(c, b'*' | b'+' | b'?' | b'{') {
                    self.last_look = None;
                }
                match c {
                    b'\\' => self.escape()?,
                    b'[' => {
                        self.class()?;
                        self.rep = Rep::Yes;
                        self.item(Some(1));
                    }
                    b'(' => self.open()?,
                    b')' => {
                        let Some(mut sc) = self.stack.pop() else {
                            return Err((self.i, "unmatched closing parenthesis"));
                        };
                        sc.len.branch_end();
                        if let Some(at) = sc.behind {
                            if !sc.len.all_fixed {
                                return Err((at, "lookbehind assertion is not fixed length"));
                            }
                        }
                        let total = sc.len.total();
                        if let Some(n) = sc.group {
                            if self.group_lens.len() <= n {
                                self.group_lens.resize(n + 1, None);
                            }
                            self.group_lens[n] = total;
                        }
                        self.item(if sc.look { Some(0) } else { total });
                        self.x = sc.x;
                        self.m = sc.m;
                        self.i += 1;
                        self.push(")");
                        self.rep = Rep::Yes;
                        if sc.look {
                            self.last_look = Some((sc.main, sc.alt));
                            continue;
                        }
                    }
                    b'$' => {
                        self.rep = Rep::No;
                        self.item(Some(0));
                        self.i += 1;
                        if self.m {
                            self.push("(?m:$)");
                        } else if self.dollar_endonly {
                            self.push("\\z");
                        } else {
                            self.main.push_str("\\z");
                            self.alt.push_str("(?:\\z|(?=\\n\\z))");
                            self.dollar = true;
                        }
                    }
                    b'^' => {
                        self.rep = Rep::No;
                        self.item(Some(0));
                        self.i += 1;
                        self.push(if self.m { "(?m:^)" } else { "^" });
                    }
                    b'{' => {
                        let q = self.quantifier_len();
                        if q > 0 && self.repeat_assertion(q)? {
                            continue;
                        }
                        if q > 0 {
                            let (min, max) = self.check_counts(q)?;
                            self.quantifier(self.i + q - 1, min, max)?;
                            let s =
                                String::from_utf8_lossy(&self.s[self.i..self.i + q]).into_owned();
                            self.push(&s);
                            self.i += q;
                        } else {
                            self.i += 1;
                            self.lit(b'{');
                            self.rep = Rep::Yes;
                            self.item(Some(1));
                        }
                    }
                    b'*' | b'+' | b'?' => {
                        if self.repeat_assertion(1)? {
                            continue;
                        }
                        let (min, max) = match c {
                            b'*' => (0, None),
                            b'+' => (1, None),
                            _ => (0, Some(1)),
                        };
                        self.quantifier(self.i, min, max)?;
                        self.i += 1;
                        self.push(&(c as char).to_string());
                    }
                    b'.' | b'|' => {
                        self.rep = if c == b'.' { Rep::Yes } else { Rep::No };
                        if c == b'.' {
                            self.item(Some(1));
                        } else {
                            self.len().branch_end();
                        }
                        self.i += 1;
                        self.push(&(c as char).to_string());
                    }
                    _ => {
                        self.i += 1;
                        self.lit(c);
                        self.rep = Rep::Yes;
                        self.item(Some(1));
                    }
                }
            }
            if !self.stack.is_empty() {
                return Err((self.s.len(), "missing closing parenthesis"));
            }
            // References must name groups that exist somewhere in the
            // pattern (fancy-regex does not check all of them).
            for (r, at) in &self.refs {
                let ok = match r {
                    Ref::Number(n) => *n <= self.groups,
                    Ref::Name(name) => self.names.iter().any(|(k, _)| k == name),
                };
                if !ok {
                    return Err((*at, "reference to non-existent subpattern"));
                }
            }
            Ok(())
        }

        /// The condition of `(?(cond)yes|no)`, checked and rewritten for
        /// fancy-regex (relative numbers made absolute, names in `<>`).
        fn condition(&mut self, c: &[u8], at: usize) -> Result<String, Err> {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            if !c.is_empty() && c.iter().all(u8::is_ascii_digit) {
                let n = text(c).parse::<usize>().unwrap_or(usize::MAX);
                self.refs.push((Ref::Number(n), at));
                return Ok(n.to_string());
            }
            if let (Some(sign @ (b'+' | b'-')), true) = (
                c.first().copied(),
                c.len() > 1 && c[1..].iter().all(u8::is_ascii_digit),
            ) {
                let n = text(&c[1..]).parse::<usize>().unwrap_or(usize::MAX);
                let abs = if sign == b'+' {
                    self.groups.saturating_add(n)
                } else {
                    (self.groups + 1)
                        .checked_sub(n)
                        .filter(|&a| a > 0)
                        .ok_or((at, "reference to non-existent subpattern"))?
                };
                self.refs.push((Ref::Number(abs), at));
                return Ok(abs.to_string());
            }
            let name = match (c.first(), c.last()) {
                (Some(b'<'), Some(b'>')) | (Some(b'\''), Some(b'\'')) if c.len() >= 2 => {
                    &c[1..c.len() - 1]
                }
                _ if c == b"DEFINE" || c.first() == Some(&b'R') => return Ok(text(c)),
                _ => c,
            };
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                return Err((at, "malformed number or name after (?("));
            }
            self.refs.push((Ref::Name(name.to_vec()), at));
            Ok(format!("<{}>", text(name)))
        }

        /// A quantifier of `q` bytes right after a lookaround: PCRE2 obeys
        /// the assertion once when the minimum is at least 1, makes it
        /// optional when the minimum is 0 (fancy-regex refuses to repeat
        /// an assertion, so it is rewritten). Returns whether it was one.
        fn repeat_assertion(&mut self, q: usize) -> Result<bool, Err> {
            let Some((m0, a0)) = self.last_look.take() else {
                return Ok(false);
            };
            if self.rep != Rep::Yes {
                return Ok(false);
            }
            let min_zero = match self.s[self.i] {
                b'*' | b'?' => true,
                b'+' => false,
                _ => self.check_counts(q)?.0 == 0,
            };
            self.i += q;
            if matches!(self.peek(0), Some(b'+') | Some(b'?')) {
                self.i += 1;
            }
            if min_zero {
                self.main.insert_str(m0, "(?:");
                self.alt.insert_str(a0, "(?:");
                self.push("|)");
            }
            self.rep = Rep::Modified;
            Ok(true)
        }

        /// A quantifier (or its `+`/`?` modifier) at offset `at`.
        fn quantifier(&mut self, at: usize, min: u64, max: Option<u64>) -> Result<(), Err> {
            let c = self.s[self.i];
            self.rep = match (self.rep, c) {
                (Rep::Yes, _) => {
                    self.len().quantify(min, max);
                    Rep::Quantified
                }
                (Rep::Quantified, b'+' | b'?') => Rep::Modified,
                _ => return Err((at, "quantifier does not follow a repeatable item")),
            };
            Ok(())
        }

        /// PCRE2's checks of `{n,m}` (`q` bytes at `self.i`); the minimum
        /// and maximum (`None`: unbounded).
        fn check_counts(&self, q: usize) -> Result<(u64, Option<u64>), Err> {
            let body = &self.s[self.i + 1..self.i + q - 1];
            let num = |d: &[u8]| {
                d.iter().fold(0u64, |v, &c| {
                    v.saturating_mul(10).saturating_add((c - b'0') as u64)
                })
            };
            let mut parts = body.splitn(2, |&c| c == b',');
            let n = num(parts.next().unwrap_or_default());
            let m = parts.next().filter(|d| !d.is_empty()).map(num);
            let end = self.i + q - 1;
            if n > 65535 || m.is_some_and(|m| m > 65535) {
                return Err((end, "number too big in {} quantifier"));
            }
            if m.is_some_and(|m| m < n) {
                return Err((end, "numbers out of order in {} quantifier"));
            }
            let comma = body.contains(&b',');
            Ok((n, if comma { m } else { Some(n) }))
        }

        /// Length of a `{n}`, `{n,}`, `{n,m}` quantifier at `self.i`, or 0.
        fn quantifier_len(&self) -> usize {
            let s = &self.s[self.i..];
            let mut j = 1;
            let d1 = s[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            if d1 == 0 {
                return 0;
            }
            j += d1;
            if s.get(j) == Some(&b',') {
                j += 1;
                j += s[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            }
            if s.get(j) == Some(&b'}') {
                j + 1
            } else {
                0
            }
        }

        fn open(&mut self) -> Result<(), Err> {
            let at = self.i;
            // Verbs and the constructs copied whole do not open a scope.
            if self.peek(1) == Some(b'*') {
                let end = self.find_close(at)?;
                let s = String::from_utf8_lossy(&self.s[at..=end]).into_owned();
                self.push(&s);
                self.i = end + 1;
                self.rep = Rep::No;
                self.item(Some(0));
                return Ok(());
            }
            if self.peek(1) == Some(b'?') {
                let k = self.peek(2);
                match k {
                    Some(b'#') => {
                        let end = self.find_close(at)?;
                        self.i = end + 1;
                        return Ok(());
                    }
                    Some(b'R') | Some(b'0'..=b'9') | Some(b'+') | Some(b'-')
                        if k != Some(b'-') || self.peek(3).is_some_and(|c| c.is_ascii_digit()) =>
                    {
                        let end = self.find_close(at)?;
                        let body = &self.s[at + 2..end];
                        let target = if body == b"R" {
                            0
                        } else {
                            let (sign, digits) = match body.first() {
                                Some(b'+') => (1i64, &body[1..]),
                                Some(b'-') => (-1i64, &body[1..]),
                                _ => (0, body),
                            };
                            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                                return Err((
                                    at + 2,
                                    "(?R (recursive pattern call) must be followed by )",
                                ));
                            }
                            let n: i64 = std::str::from_utf8(digits)
                                .unwrap_or("0")
                                .parse()
                                .unwrap_or(i64::MAX);
                            let abs = match sign {
                                0 => n,
                                1 => self.groups as i64 + n,
                                _ => self.groups as i64 - n + 1,
                            };
                            if abs < 0 {
                                return Err((at + 2, "reference to non-existent subpattern"));
                            }
                            abs
                        };
                        self.push(&format!("\\g<{target}>"));
                        if target > 0 {
                            self.refs.push((Ref::Number(target as usize), end));
                        }
                        self.i = end + 1;
                        self.rep = Rep::Yes;
                        self.item(None);
                        return Ok(());
                    }
                    Some(b'&') => {
                        let end = self.find_close(at)?;
                        let name = String::from_utf8_lossy(&self.s[at + 3..end]).into_owned();
                        self.push(&format!("\\g<{name}>"));
                        self.refs
                            .push((Ref::Name(self.s[at + 3..end].to_vec()), end));
                        self.i = end + 1;
                        self.rep = Rep::Yes;
                        self.item(None);
                        return Ok(());
                    }
                    Some(b'P') if matches!(self.peek(3), Some(b'=') | Some(b'>')) => {
                        let end = self.find_close(at)?;
                        let name = String::from_utf8_lossy(&self.s[at + 4..end]).into_owned();
                        self.refs
                            .push((Ref::Name(self.s[at + 4..end].to_vec()), end));
                        if self.peek(3) == Some(b'=') {
                            self.push(&format!("\\k<{name}>"));
                        } else {
                            self.push(&format!("\\g<{name}>"));
                        }
                        self.i = end + 1;
                        self.rep = Rep::Yes;
                        self.item(None);
                        return Ok(());
                    }
                    _ => {}
                }
            }
            // A scope opens.
            if self.stack.len() >= MAX_NESTING {
                return Err((at, "parentheses are too deeply nested"));
            }
            let look = matches!(self.peek(1), Some(b'?'))
                && (matches!(self.peek(2), Some(b'=') | Some(b'!'))
                    || (self.peek(2) == Some(b'<')
                        && matches!(self.peek(3), Some(b'=') | Some(b'!'))));
            let behind = (self.peek(1) == Some(b'?')
                && self.peek(2) == Some(b'<')
                && matches!(self.peek(3), Some(b'=') | Some(b'!')))
            .then_some(at);
            self.stack.push(Scope {
                x: self.x,
                m: self.m,
                look,
                main: self.main.len(),
                alt: self.alt.len(),
                behind,
                len: Len::new(),
                group: None,
            });
            self.rep = Rep::No;
            if self.peek(1) != Some(b'?') {
                self.groups += 1;
                self.set_group(None);
                self.i += 1;
                self.push("(");
                return Ok(());
            }
            match self.peek(2) {
                Some(b':' | b'=' | b'!' | b'>' | b'|') => {
                    let s = String::from_utf8_lossy(&self.s[at..at + 3]).into_owned();
                    self.push(&s);
                    self.i = at + 3;
                }
                Some(b'<') if matches!(self.peek(3), Some(b'=') | Some(b'!')) => {
                    let s = String::from_utf8_lossy(&self.s[at..at + 4]).into_owned();
                    self.push(&s);
                    self.i = at + 4;
                }
                Some(b'<') | Some(b'\'') | Some(b'P') => {
                    // Named group: (?<n>, (?'n', (?P<n>.
                    let start = at + if self.peek(2) == Some(b'P') { 4 } else { 3 };
                    let close = if self.peek(2) == Some(b'\'') {
                        b'\''
                    } else {
                        b'>'
                    };
                    let Some(len) = self
                        .s
                        .get(start..)
                        .and_then(|r| r.iter().position(|&c| c == close))
                    else {
                        return Err((
                            start,
                            "syntax error in subpattern name (missing terminator?)",
                        ));
                    };
                    let name = String::from_utf8_lossy(&self.s[start..start + len]).into_owned();
                    self.groups += 1;
                    self.set_group(Some(self.s[start..start + len].to_vec()));
                    self.push(&format!("(?<{name}>"));
                    self.i = start + len + 1;
                }
                Some(b'(') => {
                    // Conditional: copy a reference condition whole; an
                    // assertion condition is an ordinary group.
                    if matches!(self.peek(3), Some(b'?') | Some(b'*')) {
                        self.push("(?");
                        self.i = at + 2;
                    } else {
                        let end = self.find_close(at + 2)?;
                        let cond = self.condition(&self.s[at + 3..end], at + 2)?;
                        self.push(&format!("(?({cond})"));
                        self.i = end + 1;
                    }
                }
                _ => {
                    // Option setting: (?imsx-imsx) or (?imsx-imsx: ...).
                    let mut j = at + 2;
                    let mut on = true;
                    let (mut x, mut m) = (self.x, self.m);
                    while j < self.s.len() && self.s[j] != b')' && self.s[j] != b':' {
                        match self.s[j] {
                            b'-' => on = false,
                            b'x' => x = on,
                            b'm' => m = on,
                            b'^' => {
                                x = false;
                                m = false;
                            }
                            c if c.is_ascii_alphabetic() => {}
                            _ => return Err((j, "unrecognized character after (? or (?-")),
                        }
                        j += 1;
                    }
                    if j >= self.s.len() {
                        return Err((j, "missing closing parenthesis"));
                    }
                    // `(?)` sets nothing; fancy-regex does not read it.
                    if j > at + 2 || self.s[j] == b':' {
                        let s = String::from_utf8_lossy(&self.s[at..=j]).into_owned();
                        self.push(&s);
                    }
                    self.i = j + 1;
                    if self.s[j] == b')' {
                        // Applies to the rest of the enclosing group.
                        self.stack.pop();
                    }
                    self.x = x;
                    self.m = m;
                }
            }
            Ok(())
        }

        /// The scope just opened is capture group `self.groups`.
        fn set_group(&mut self, name: Option<Vec<u8>>) {
            let n = self.groups;
            if let Some(sc) = self.stack.last_mut() {
                sc.group = Some(n);
            }
            if let Some(name) = name {
                self.names.push((name, n));
            }
        }

        fn find_close(&self, from: usize) -> Result<usize, Err> {
            self.s[from..]
                .iter()
                .position(|&c| c == b')')
                .map(|p| from + p)
                .ok_or((self.s.len(), "missing closing parenthesis"))
        }

        /// Read a number in `radix` from `self.i` (at most `max` digits).
        fn number(&mut self, radix: u32, max: usize) -> u32 {
            let mut v = 0u32;
            let mut n = 0;
            while n < max {
                let Some(d) = self.peek(0).and_then(|c| (c as char).to_digit(radix)) else {
                    break;
                };
                v = v.saturating_mul(radix).saturating_add(d);
                self.i += 1;
                n += 1;
            }
            v
        }

        /// `{...}` holding a number in `radix`, for `\x{}` and `\o{}`.
        fn braced_number(&mut self, radix: u32) -> Result<u8, Err> {
            let at = self.i;
            self.i += 1;
            let v = self.number(radix, 16);
            if self.peek(0) != Some(b'}') || self.i == at + 1 {
                return Err((
                    self.i,
                    "non-hex character in \\x{} (closing brace missing?)",
                ));
            }
            self.i += 1;
            u8::try_from(v).map_err(|_| {
                (
                    at,
                    "character code point value in \\x{} or \\o{} is too large",
                )
            })
        }

        /// The value of a character escape (`\n`, `\x41`, `\101`, `\cA`) at
        /// `self.i` (after the backslash), if it is one.
        fn char_escape(&mut self, in_class: bool) -> Result<Option<u8>, Err> {
            let c = self.s[self.i];
            let v = match c {
                b'a' => 0x07,
                b'e' => 0x1b,
                b'f' => 0x0c,
                b'n' => 0x0a,
                b'r' => 0x0d,
                b't' => 0x09,
                b'b' if in_class => 0x08,
                b'c' => {
                    let Some(x) = self.peek(1) else {
                        return Err((self.i, "\\c at end of pattern"));
                    };
                    if !(0x20..0x7f).contains(&x) {
                        return Err((
                            self.i,
                            "\\c must be followed by a printable ASCII character",
                        ));
                    }
                    self.i += 2;
                    return Ok(Some(x.to_ascii_uppercase() ^ 0x40));
                }
                b'x' => {
                    self.i += 1;
                    if self.peek(0) == Some(b'{') {
                        return self.braced_number(16).map(Some);
                    }
                    return Ok(Some(self.number(16, 2) as u8));
                }
                b'o' if self.peek(1) == Some(b'{') => {
                    self.i += 1;
                    return self.braced_number(8).map(Some);
                }
                b'0' => {
                    self.i += 1;
                    return Ok(Some(self.number(8, 2) as u8));
                }
                b'1'..=b'7' if in_class => {
                    return Ok(Some(self.number(8, 3).min(255) as u8));
                }
                _ => return Ok(None),
            };
            self.i += 1;
            Ok(Some(v))
        }

        fn escape(&mut self) -> Result<(), Err> {
            let at = self.i;
            let before = self.rep;
            self.rep = Rep::Yes;
            self.i += 1;
            let Some(c) = self.peek(0) else {
                return Err((at, "\\ at end of pattern"));
            };
            if let Some(v) = self.char_escape(false)? {
                self.lit(v);
                self.item(Some(1));
                return Ok(());
            }
            self.i += 1;
            match c {
                b'Q' => {
                    let mut empty = true;
                    while self.i < self.s.len() {
                        if self.s[self.i] == b'\\' && self.peek(1) == Some(b'E') {
                            self.i += 2;
                            break;
                        }
                        let b = self.s[self.i];
                        self.lit(b);
                        self.item(Some(1));
                        self.i += 1;
                        empty = false;
                    }
                    if empty {
                        self.rep = before;
                    }
                }
                b'E' => self.rep = before,
                b'h' | b'H' | b'v' | b'V' | b'C' => {
                    self.push(match c {
                        b'h' => "[\\x09\\x20\\xA0]",
                        b'H' => "[^\\x09\\x20\\xA0]",
                        b'v' => "[\\x0A-\\x0D\\x85]",
                        b'V' => "[^\\x0A-\\x0D\\x85]",
                        _ => "[\\x00-\\xFF]",
                    });
                    self.item(Some(1));
                }
                b'Z' => {
                    self.push("(?=\\n?\\z)");
                    self.rep = Rep::No;
                    self.item(Some(0));
                }
                b'K' if self.stack.iter().any(|sc| sc.look) => {
                    return Err((
                        self.i,
                        "\\K is not allowed in lookarounds (but see PCRE2_EXTRA_ALLOW_LOOKAROUND_BSK)",
                    ));
                }
                b'A' | b'z' | b'G' | b'b' | b'B' | b'K' => {
                    self.push(&format!("\\{}", c as char));
                    self.rep = Rep::No;
                    self.item(Some(0));
                }
                b'd' | b'D' | b's' | b'S' | b'w' | b'W' | b'N' | b'R' | b'X' | b'p' | b'P' => {
                    self.push(&format!("\\{}", c as char));
                    self.item(if matches!(c, b'R' | b'X') {
                        None
                    } else {
                        Some(1)
                    });
                }
                b'1'..=b'9' => {
                    self.i -= 1;
                    let start = self.i;
                    let n = self.number(10, 10);
                    if n < 10 || c >= b'8' || n as usize <= self.groups {
                        self.push(&format!("\\{n}"));
                        self.item(self.ref_len(n as usize));
                        self.refs.push((Ref::Number(n as usize), self.i));
                    } else {
                        // Not a back-reference: octal digits.
                        self.i = start;
                        let v = self.number(8, 3).min(255) as u8;
                        self.lit(v);
                        self.item(Some(1));
                    }
                }
                b'g' => {
                    // \gN, \g{N}, \g{-N}, \g{name}: back-references;
                    // \g<..>, \g'..': subroutine calls.
                    match self.peek(0) {
                        Some(b'<') | Some(b'\'') => {
                            let close = if self.peek(0) == Some(b'<') {
                                b'>'
                            } else {
                                b'\''
                            };
                            let start = self.i + 1;
                            let Some(len) = self.s[start..].iter().position(|&b| b == close) else {
                                return Err((start, "\\g is not followed by a braced, angle-bracketed, or quoted name/number or by a plain number"));
                            };
                            let name =
                                String::from_utf8_lossy(&self.s[start..start + len]).into_owned();
                            self.push(&format!("\\g<{name}>"));
                            self.item(None);
                            self.i = start + len + 1;
                        }
                        _ => {
                            let braced = self.peek(0) == Some(b'{');
                            if braced {
                                self.i += 1;
                            }
                            let start = self.i;
                            while self.i < self.s.len()
                                && (self.s[self.i].is_ascii_alphanumeric()
                                    || self.s[self.i] == b'_'
                                    || (self.i == start && matches!(self.s[self.i], b'-' | b'+')))
                            {
                                self.i += 1;
                            }
                            let body = self.s[start..self.i].to_vec();
                            if braced {
                                if self.peek(0) != Some(b'}') {
                                    return Err((self.i, "\\g is not followed by a braced, angle-bracketed, or quoted name/number or by a plain number"));
                                }
                                self.i += 1;
                            }
                            self.backref(&body, start)?;
                        }
                    }
                }
                b'k' => {
                    let close =
                        match self.peek(0) {
                            Some(b'<') => b'>',
                            Some(b'\'') => b'\'',
                            Some(b'{') => b'}',
                            _ => return Err((
                                self.i,
                                "\\k is not followed by a braced, angle-bracketed, or quoted name",
                            )),
                        };
                    let start = self.i + 1;
                    let Some(len) = self.s[start..].iter().position(|&b| b == close) else {
                        return Err((
                            start,
                            "syntax error in subpattern name (missing terminator?)",
                        ));
                    };
                    let name = String::from_utf8_lossy(&self.s[start..start + len]).into_owned();
                    self.push(&format!("\\k<{name}>"));
                    let l = self.name_len(&self.s[start..start + len]);
                    self.refs
                        .push((Ref::Name(self.s[start..start + len].to_vec()), start));
                    self.item(l);
                    self.i = start + len + 1;
                }
                c if c.is_ascii_alphanumeric() => {
                    return Err((at + 1, "unrecognized character follows \\"));
                }
                _ => {
                    self.lit(c);
                    self.item(Some(1));
                }
            }
            Ok(())
        }

        fn backref(&mut self, body: &[u8], at: usize) -> Result<(), Err> {
            let (sign, digits) = match body.first() {
                Some(b'-') => (-1i64, &body[1..]),
                Some(b'+') => (1, &body[1..]),
                _ => (0, body),
            };
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                let n: i64 = std::str::from_utf8(digits)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(i64::MAX);
                let abs = match sign {
                    0 => n,
                    -1 => self.groups as i64 - n + 1,
                    _ => return Err((at, "a relative value of zero is not allowed")),
                };
                if abs <= 0 {
                    return Err((at, "a relative value of zero is not allowed"));
                }
                self.push(&format!("\\{abs}"));
                self.item(self.ref_len(abs as usize));
                self.refs.push((Ref::Number(abs as usize), at));
            } else if sign == 0 && !body.is_empty() {
                let name = String::from_utf8_lossy(body).into_owned();
                self.push(&format!("\\k<{name}>"));
                self.item(self.name_len(body));
                self.refs.push((Ref::Name(body.to_vec()), at));
            } else {
                return Err((at, "\\g is not followed by a braced, angle-bracketed, or quoted name/number or by a plain number"));
            }
            Ok(())
        }

        /// A character class; `self.i` is at the `[`.
        fn class(&mut self) -> Result<(), Err> {
            let at = self.i;
            if let Some(d @ (b':' | b'.' | b'=')) = self.peek(1) {
                if posix_syntax(&self.s[at + 2..], d).is_some() {
                    return Err((
                        at + 1,
                        "POSIX named classes are supported only within a class",
                    ));
                }
            }
            self.i += 1;
            self.push("[");
            if self.peek(0) == Some(b'^') {
                self.i += 1;
                self.push("^");
            }
            let mut first = true;
            // The last member when it was one character (a range may start
            // there), and whether it ended a range (a `-` after a range is
            // a literal: `[a-c-e]` is a to c, `-` and `e`).
            let mut last: Option<u8> = None;
            let mut after_range = false;
            loop {
                let Some(c) = self.peek(0) else {
                    return Err((at, "missing terminating ] for character class"));
                };
                if c == b']' && !first {
                    self.i += 1;
                    self.push("]");
                    return Ok(());
                }
                if c == b'-' && !first && !after_range && self.peek(1).is_some_and(|n| n != b']') {
                    let Some(start) = last else {
                        return Err((self.i + 1, "invalid range in character class"));
                    };
                    self.i += 1;
                    self.push("-");
                    let Some(end) = self.class_member(true)? else {
                        return Err((self.i, "invalid range in character class"));
                    };
                    if end < start {
                        return Err((self.i, "range out of order in character class"));
                    }
                    last = Some(end);
                    after_range = true;
                    continue;
                }
                first = false;
                last = self.class_member(false)?;
                after_range = false;
            }
        }

        /// One class member; returns the character when it was a single one.
        fn class_member(&mut self, range_end: bool) -> Result<Option<u8>, Err> {
            let c = self.s[self.i];
            if c == b'[' {
                if let Some(d @ (b':' | b'.' | b'=')) = self.peek(1) {
                    let start = self.i + 2;
                    let found = posix_syntax(&self.s[start..], d);
                    if let Some(len) = found {
                        if d != b':' {
                            return Err((self.i, "POSIX collating elements are not supported"));
                        }
                        if range_end {
                            return Err((self.i, "invalid range in character class"));
                        }
                        let s =
                            String::from_utf8_lossy(&self.s[self.i..start + len + 2]).into_owned();
                        self.push(&s);
                        self.i = start + len + 2;
                        return Ok(None);
                    }
                }
                self.i += 1;
                self.lit(b'[');
                return Ok(Some(b'['));
            }
            if c != b'\\' {
                self.i += 1;
                self.lit(c);
                return Ok(Some(c));
            }
            let at = self.i;
            self.i += 1;
            let Some(e) = self.peek(0) else {
                return Err((at, "\\ at end of pattern"));
            };
            if let Some(v) = self.char_escape(true)? {
                self.lit(v);
                return Ok(Some(v));
            }
            self.i += 1;
            let set = match e {
                b'Q' => {
                    let mut last = None;
                    while self.i < self.s.len() {
                        if self.s[self.i] == b'\\' && self.peek(1) == Some(b'E') {
                            self.i += 2;
                            break;
                        }
                        let b = self.s[self.i];
                        self.lit(b);
                        self.i += 1;
                        last = Some(b);
                    }
                    return Ok(last);
                }
                b'E' => return Ok(None),
                b'd' | b'D' | b's' | b'S' | b'w' | b'W' | b'p' | b'P' => {
                    format!("\\{}", e as char)
                }
                b'h' => "\\x09\\x20\\xA0".into(),
                b'H' => "[^\\x09\\x20\\xA0]".into(),
                b'v' => "\\x0A-\\x0D\\x85".into(),
                b'V' => "[^\\x0A-\\x0D\\x85]".into(),
                b'8' | b'9' => {
                    self.lit(e);
                    return Ok(Some(e));
                }
                c if c.is_ascii_alphanumeric() => {
                    return Err((at + 1, "escape sequence is invalid in character class"));
                }
                _ => {
                    self.lit(e);
                    return Ok(Some(e));
                }
            };
            if range_end {
                return Err((at, "invalid range in character class"));
            }
            self.push(&set);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tbl(flavor: Flavor, text: &str) -> RegexpTable {
        RegexpTable::parse("regexp:t", "t", text.as_bytes(), flavor).unwrap()
    }
    fn re(text: &str) -> RegexpTable {
        tbl(Flavor::Regexp, text)
    }
    fn pc(text: &str) -> RegexpTable {
        tbl(Flavor::Pcre, text)
    }
    fn q(t: &RegexpTable, k: &str) -> Option<String> {
        t.lookup(k).unwrap()
    }
    fn warns(t: &RegexpTable) -> Vec<String> {
        t.warnings().iter().map(|d| d.postfix_located()).collect()
    }
    /// Does a one-rule table `/pat/flags x` match `key`? (regexp flavor)
    fn rm(pat: &str, key: &str) -> bool {
        let t = re(&format!("{pat} x\n"));
        assert!(t.warnings().is_empty(), "{pat}: {:?}", warns(&t));
        q(&t, key).is_some()
    }
    /// The warning a one-rule regexp table gives.
    fn rerr(pat: &str) -> String {
        let t = re(&format!("/{pat}/ x\n"));
        assert_eq!(t.rule_count(), 0, "{pat} should be refused");
        t.warnings()[0].message.clone()
    }
    fn pm(pat: &str, key: &str) -> bool {
        let t = pc(&format!("{pat} x\n"));
        assert!(t.warnings().is_empty(), "{pat}: {:?}", warns(&t));
        q(&t, key).is_some()
    }

    #[test]
    fn first_match_wins_whole_key() {
        let t = re("/^a/ first\n/b/ second\n/./ any\n");
        assert_eq!(q(&t, "ab").as_deref(), Some("first"));
        assert_eq!(q(&t, "xbx").as_deref(), Some("second"));
        assert_eq!(q(&t, "z").as_deref(), Some("any"));
        assert_eq!(q(&t, ""), None);
        assert!(t.is_pattern());
        assert!(!t.changed());
    }

    #[test]
    fn case_insensitive_by_default_and_i_toggles() {
        let t = re("/^abc$/ ok\n/^(x)(y)$/i $2$1\n");
        assert_eq!(q(&t, "ABC").as_deref(), Some("ok"));
        assert_eq!(q(&t, "xy").as_deref(), Some("yx"));
        assert_eq!(q(&t, "XY"), None);
        // The key is not folded: captures keep its case.
        let t = re("/^(.*)@EXAMPLE\\.com$/ $1\n");
        assert_eq!(q(&t, "User@example.COM").as_deref(), Some("User"));
        let t = pc("/^abc$/ ok\n/^def$/i cs\n/^GHI$/ii twice\n");
        assert_eq!(q(&t, "AbC").as_deref(), Some("ok"));
        assert_eq!(q(&t, "DEF"), None);
        assert_eq!(q(&t, "def").as_deref(), Some("cs"));
        assert_eq!(q(&t, "ghi").as_deref(), Some("twice"));
    }

    #[test]
    fn negation_and_double_negation() {
        let t = re("!/^a/ nota\n");
        assert_eq!(q(&t, "b").as_deref(), Some("nota"));
        assert_eq!(q(&t, "abc"), None);
        let t = re("! /x/ notx\n");
        assert_eq!(q(&t, "y").as_deref(), Some("notx"));
        let t = re("!! /a/ y\n");
        assert_eq!(q(&t, "a").as_deref(), Some("y"));
        assert_eq!(q(&t, "b"), None);
        let t = re("!/a/i x\n");
        assert_eq!(q(&t, "A").as_deref(), Some("x"));
        assert_eq!(q(&t, "a"), None);
        let t = re("!/a/ x$$y\n");
        assert_eq!(q(&t, "b").as_deref(), Some("x$y"));
        let t = re("!/(a)/ $1\n");
        assert_eq!(
            warns(&t),
            ["regexp map t, line 1: $number found in negative match replacement text: skipping this rule"]
        );
    }

    #[test]
    fn any_delimiter() {
        let t = re("|^a\\|b$| bar\n=(c)= eq$1\n/ab\\/c/ slash\n_d_ under\n.e. dot\n{f{ brace\n\"g\" quote\n");
        assert_eq!(q(&t, "a|b").as_deref(), Some("bar"));
        assert_eq!(q(&t, "a"), None);
        assert_eq!(q(&t, "c").as_deref(), Some("eqc"));
        assert_eq!(
            q(&t, "ab/x").as_deref(),
            None.or(Some("slash")).filter(|_| false).or(None)
        );
        assert_eq!(q(&t, "zab/cz").as_deref(), Some("eqc"));
        assert_eq!(q(&t, "d").as_deref(), Some("under"));
        assert_eq!(q(&t, "e").as_deref(), Some("dot"));
        assert_eq!(q(&t, "f").as_deref(), Some("brace"));
        assert_eq!(q(&t, "g").as_deref(), Some("quote"));
        let t = re("/ab\\/x/ slash\n");
        assert_eq!(q(&t, "ab/x").as_deref(), Some("slash"));
        // After `!` even a letter is a delimiter; at the start of a line it
        // is an unrecognized request.
        let t = re("!b! bang\naxa alpha\n1b1 one\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: unknown regexp option \"a\": skipping this rule",
                "regexp map t, line 2: ignoring unrecognized request",
                "regexp map t, line 3: ignoring unrecognized request",
            ]
        );
        // A non-ASCII delimiter is its first byte, as in Postfix.
        let t = re("\u{e9}g\u{e9} eacute\n");
        assert_eq!(
            warns(&t),
            ["regexp map t, line 1: unknown regexp option \"?\": skipping this rule"]
        );
        let t = RegexpTable::parse("regexp:t", "t", b"\xc3g\xc3 latin\n", Flavor::Regexp).unwrap();
        assert_eq!(q(&t, "g").as_deref(), Some("latin"));
    }

    #[test]
    fn substitution_forms() {
        let t = re("/^(a)(b)?(c)?$/ [$1${2}$(3)] $$ $$1 $$$1\n");
        assert_eq!(q(&t, "a").as_deref(), Some("[a] $ $1 $a"));
        assert_eq!(q(&t, "abc").as_deref(), Some("[abc] $ $1 $a"));
        let t = re("/(a)/ x${1}y$(1)z$1 ${01} $1.\n/(b)/ ${1}} $(1))\n");
        assert_eq!(q(&t, "a").as_deref(), Some("xayaza a a."));
        assert_eq!(q(&t, "b").as_deref(), Some("b} b)"));
        let t = re("/^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)$/ $10-$9\n");
        assert_eq!(q(&t, "abcdefghij").as_deref(), Some("j-i"));
        // A group that did not take part gives nothing.
        let t = pc("/(a)|(b)/ [${2}]\n");
        assert_eq!(q(&t, "a").as_deref(), Some("[]"));
        assert_eq!(q(&t, "b").as_deref(), Some("[b]"));
        // Whitespace inside the result is kept, around it trimmed.
        let t = re("/(a)/ \tx\t\ty  \n");
        assert_eq!(q(&t, "a").as_deref(), Some("x\t\ty"));
        // The result continues on the next line.
        let t = pc("/a/ x \n  continued \n/b/ y\n");
        assert_eq!(q(&t, "a").as_deref(), Some("x   continued"));
        let t = re("/a/ \\\n");
        assert_eq!(q(&t, "a").as_deref(), Some("\\"));
    }

    #[test]
    fn substitution_errors() {
        let t = re("/(a)/ $foo ${1\n/(a)/ $x$\n/(a)/ ${}\n/(a)/ $()\n/(a)/ ${(1)}\n/(a)/ $A_b9\n/(a)/ $1_\n/a/ $0 $foo\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: non-numeric replacement index \"foo\"",
                "regexp map t, line 1: truncated macro reference: \"$foo ${1\"",
                "regexp map t, line 1: bad replacement syntax: skipping this rule",
                "regexp map t, line 2: non-numeric replacement index \"x\"",
                "regexp map t, line 2: empty macro name: \"$x$\"",
                "regexp map t, line 2: bad replacement syntax: skipping this rule",
                "regexp map t, line 3: empty macro name: \"${}\"",
                "regexp map t, line 3: bad replacement syntax: skipping this rule",
                "regexp map t, line 4: empty macro name: \"$()\"",
                "regexp map t, line 4: bad replacement syntax: skipping this rule",
                "regexp map t, line 5: non-numeric replacement index \"(1)\"",
                "regexp map t, line 5: bad replacement syntax: skipping this rule",
                "regexp map t, line 6: non-numeric replacement index \"A_b9\"",
                "regexp map t, line 6: bad replacement syntax: skipping this rule",
                "regexp map t, line 7: non-numeric replacement index \"1_\"",
                "regexp map t, line 7: bad replacement syntax: skipping this rule",
                "regexp map t, line 8: out-of-range replacement index \"0\"",
                "regexp map t, line 8: non-numeric replacement index \"foo\"",
                "regexp map t, line 8: bad replacement syntax: skipping this rule",
            ]
        );
        assert_eq!(t.rule_count(), 0);
        let t = pc("/a/ $0\n/(a)/ $2\n/a/ ${02}\n");
        assert_eq!(
            warns(&t),
            [
                "pcre map t, line 1: out of range replacement index \"0\"",
                "pcre map t, line 1: bad replacement syntax: skipping this rule",
                "pcre map t, line 2: out of range replacement index \"2\": skipping this rule",
                "pcre map t, line 3: out of range replacement index \"2\": skipping this rule",
            ]
        );
        let t = re("/a/ ${99999999999}\n/a/ ${99999999999999999999999}\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: out of range replacement index \"1215752191\": skipping this rule",
                "regexp map t, line 2: out-of-range replacement index \"-1\"",
                "regexp map t, line 2: bad replacement syntax: skipping this rule",
            ]
        );
    }

    #[test]
    fn missing_result_is_an_empty_result() {
        let t = re("/c/\n!/a/\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: no replacement text: using empty string",
                "regexp map t, line 2: no replacement text: using empty string",
            ]
        );
        assert_eq!(q(&t, "abc").as_deref(), Some(""));
        assert_eq!(q(&t, "b").as_deref(), Some(""));
        assert_eq!(q(&t, "a"), None);
    }

    #[test]
    fn pattern_and_flag_errors() {
        let t = re("/abc ok\n/a(/ x\n/b/q y\n/\\\\/ x\n\\a\\ bs\nif\n! x\n!\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: no closing regexp delimiter \"/\": skipping this rule",
                "regexp map t, line 2: Unmatched ( or \\(",
                "regexp map t, line 3: unknown regexp option \"q\": skipping this rule",
                "regexp map t, line 5: no closing regexp delimiter \"\\\": skipping this rule",
                "regexp map t, line 6: no regexp: skipping this rule",
                "regexp map t, line 7: no closing regexp delimiter \"x\": skipping this rule",
                "regexp map t, line 8: no regexp: skipping this rule",
            ]
        );
        assert_eq!(t.rule_count(), 1);
        let t = pc("/abc ok\n/a/q x\n/a/X x\n/a(/ x\n");
        assert_eq!(
            warns(&t),
            [
                "pcre map t, line 1: no closing regexp delimiter \"/\": ignoring this rule",
                "pcre map t, line 2: unknown regexp option \"q\": skipping this rule",
                "pcre map t, line 3: ignoring obsolete regexp option \"X\"",
                "pcre map t, line 4: error in regex at offset 2: missing closing parenthesis",
            ]
        );
        assert_eq!(q(&t, "a").as_deref(), Some("x"));
        // Order of checks: flags, result, negation, compile, groups.
        let t = re("/a(/q x\n/a(/ $foo\n!/a(/ $1\n/a(/ $2\n/a(/\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: unknown regexp option \"q\": skipping this rule",
                "regexp map t, line 2: non-numeric replacement index \"foo\"",
                "regexp map t, line 2: bad replacement syntax: skipping this rule",
                "regexp map t, line 3: $number found in negative match replacement text: skipping this rule",
                "regexp map t, line 4: Unmatched ( or \\(",
                "regexp map t, line 5: no replacement text: using empty string",
                "regexp map t, line 5: Unmatched ( or \\(",
            ]
        );
    }

    #[test]
    fn if_endif_nesting() {
        let t = re("if /a/\n/b/ ab\nendif\n/./ any\n");
        assert_eq!(q(&t, "b").as_deref(), Some("any"));
        assert_eq!(q(&t, "ab").as_deref(), Some("ab"));
        let t = re("if /a/\nif !/b/\n/c/ ac-not-b\nendif\nendif\n");
        assert_eq!(q(&t, "ac").as_deref(), Some("ac-not-b"));
        assert_eq!(q(&t, "acb"), None);
        let t = re("IF /a/\n/b/ ab\nENDIF\nif!/c/\n/d/ notc-d\nendif\nif_x_\n/./ x\nendif\n");
        assert!(warns(&t).is_empty(), "{:?}", warns(&t));
        assert_eq!(q(&t, "ab").as_deref(), Some("ab"));
        assert_eq!(q(&t, "d").as_deref(), Some("notc-d"));
        assert_eq!(q(&t, "cd"), None);
        assert_eq!(q(&t, "x").as_deref(), Some("x"));
        let t = re("if ! /a/\n/./ y\nendif\n");
        assert_eq!(q(&t, "a"), None);
        assert_eq!(q(&t, "b").as_deref(), Some("y"));
        // Deep nesting.
        let t =
            re("if /a/\nif /b/\nif /c/\n/d/ abcd\nendif\n/./ ab\nendif\n/./ a\nendif\n/./ other\n");
        assert_eq!(q(&t, "abcd").as_deref(), Some("abcd"));
        assert_eq!(q(&t, "abc").as_deref(), Some("ab"));
        assert_eq!(q(&t, "ac").as_deref(), Some("a"));
        assert_eq!(q(&t, "x").as_deref(), Some("other"));
        let deep = "if /a/\n".repeat(500) + "/a/ deep\n" + &"endif\n".repeat(500);
        assert_eq!(q(&re(&deep), "a").as_deref(), Some("deep"));
    }

    #[test]
    fn if_endif_errors() {
        let t =
            re("endif\nif /i/ extra\n/ij/ ij\nendif junk\nif /k/\n/k/ k\nifx\nendifx\nif /a/i x\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: ignoring ENDIF without matching IF",
                "regexp map t, line 2: ignoring extra text after IF statement: \"extra\"",
                "regexp map t, line 2: do not prepend whitespace to statements between IF and ENDIF",
                "regexp map t, line 4: ignoring extra text after ENDIF",
                "regexp map t, line 7: ignoring unrecognized request",
                "regexp map t, line 8: ignoring unrecognized request",
                "regexp map t, line 9: ignoring extra text after IF statement: \"x\"",
                "regexp map t, line 9: do not prepend whitespace to statements between IF and ENDIF",
                "regexp map t, line 9: IF has no matching ENDIF",
                "regexp map t, line 5: IF has no matching ENDIF",
            ]
        );
        assert_eq!(q(&t, "ij").as_deref(), Some("ij"));
        assert_eq!(q(&t, "k").as_deref(), Some("k"));
        // An indented rule continues the `if` line.
        let t = re("if /i/\n  /ij/ ij\nendif\n");
        assert_eq!(
            warns(&t)[0],
            "regexp map t, line 1: ignoring extra text after IF statement: \"/ij/ ij\""
        );
        assert_eq!(q(&t, "ij"), None);
        // An `if` that fails to compile is dropped; its endif is unmatched.
        let t = pc("if /a(/\n/./ in\nendif\n/./ out\n");
        assert_eq!(
            warns(&t),
            [
                "pcre map t, line 1: error in regex at offset 2: missing closing parenthesis",
                "pcre map t, line 3: ignoring ENDIF without matching IF",
            ]
        );
        assert_eq!(q(&t, "b").as_deref(), Some("in"));
        let t = re("if /a/\nendif/x/ y\n/./ out\n");
        assert_eq!(
            warns(&t),
            ["regexp map t, line 2: ignoring extra text after ENDIF"]
        );
        assert_eq!(q(&t, "b").as_deref(), Some("out"));
    }

    #[test]
    fn lines_comments_nul_and_leading_whitespace() {
        let t = re("# comment\n\n  \n/a/ x\n# inside\n\n  y\n");
        assert_eq!(q(&t, "a").as_deref(), Some("x  y"));
        let t = re("  /a/ x\n/b/ y\n");
        assert_eq!(
            warns(&t),
            ["t: logical line must not start with whitespace: \"  /a/ x\""]
        );
        assert_eq!(q(&t, "a"), None);
        assert_eq!(q(&t, "b").as_deref(), Some("y"));
        let t = re("   leading whitespace at the very start\n");
        assert_eq!(
            warns(&t),
            ["t: logical line must not start with whitespace: \"   leading whitespace at the v...\""]
        );
        let t = RegexpTable::parse("regexp:t", "t", b"/a\x00b/ x\n/c/ y\x00z\n", Flavor::Regexp)
            .unwrap();
        assert_eq!(
            warns(&t),
            ["regexp map t, line 1: no closing regexp delimiter \"/\": skipping this rule"]
        );
        assert_eq!(q(&t, "c").as_deref(), Some("y"));
        let t = re("/a/ x\r\n/b/\r y\r\n");
        assert_eq!(q(&t, "a").as_deref(), Some("x"));
        assert_eq!(q(&t, "b").as_deref(), Some("y"));
    }

    #[test]
    fn posix_ere_syntax() {
        assert!(rm("/^c()$/", "c"));
        assert!(rm("/^e**$/", "ee") && rm("/^e**$/", ""));
        assert!(rm("/^f+?$/", "ff") && rm("/^f+?$/", "f"));
        assert!(rm("/^[\\.]g$/", "\\g") && rm("/^[\\.]g$/", ".g"));
        assert!(rm("/^\\w\\W$/", "a!") && !rm("/^\\w\\W$/", "ab"));
        assert!(rm("/^\\<i\\> j$/", "i j") && !rm("/^\\<i\\> j$/", "ij"));
        assert!(rm("/^[]k]$/", "]") && rm("/^[]k]$/", "k"));
        assert!(rm("/^m{,2}n$/", "mmn") && rm("/^m{,2}n$/", "n") && !rm("/^m{,2}n$/", "mmmn"));
        assert!(rm("/^^o$$/", "o"));
        assert!(!rm("/^p^q$/", "p^q") && !rm("/^r$s$/", "r$s"));
        assert!(rm("/^u{1}{2}$/", "uu") && !rm("/^u{1}{2}$/", "u"));
        assert!(rm("/^[a-]$/", "-") && !rm("/^[a-]$/", "b"));
        assert!(rm("/^[[.-.]]x$/", "-x") && rm("/^[[=y=]]$/", "y"));
        assert!(rm("/^d}$/", "d}") && rm("/^(e)}$/", "e}"));
        assert!(rm("/^(f))$/", "f)") && !rm("/^(f))$/", "f"));
        assert!(rm("/^(|h)$/", "") && rm("/^(|h)$/", "h"));
        assert!(rm("/^k{2}*$/", "kkkk") && !rm("/^k{2}*$/", "kkk"));
        assert!(rm("/^[[:upper:]]$/", "a"));
        assert!(rm("/^[^a]$/", "b") && !rm("/^[^a]$/", "A") && rm("/^[^a]$/i", "A"));
        assert!(rm("/^\\(a\\)$/", "(a)") && rm("/^\\{$/", "{") && rm("/^a\\|b$/", "a|b"));
        assert!(rm("/^\\`a\\'$/", "a"));
        assert!(rm("/^a{0}$/", "") && rm("/^a{2,}$/", "aaa") && !rm("/^a{1,3}$/", "aaaa"));
        assert!(rm("/^[!--]$/", "$") && rm("/^[--a]$/i", "]") && rm("/^[]-a]$/i", "^"));
        // Case-insensitive, the range ends are read in upper case.
        assert!(rm("/^[--a]$/", "1") && !rm("/^[--a]$/", "Z") && rm("/^[a-\\]$/", "\\"));
        assert!(rm("/^[[:alpha:]-]$/", "-") && rm("/^[a-[.z.]]$/", "q") && rm("/^[[.].]]$/", "]"));
        assert!(rm("/^[\\n]$/", "\\") && rm("/^[\\n]$/", "n"));
        assert!(rm("/^[^]-a]$/i", "b") && !rm("/^[^]-a]$/i", "^"));
        // Case-insensitive ranges are compared in lower case (glibc).
        assert!(rm("/^[a-A]$/", "A") && !rm("/^[a-A]$/", "b") && !rm("/^[A-z]$/", "_"));
        assert!(rm("/^[Z-a]$/i", "_") && !rm("/^[a-^]$/", "_") && rm("/^[a-^]$/", "["));
        assert!(rm("/^[^b-~]$/", "a") && !rm("/^[^b-~]$/", "c") && !rm("/^[^b-~]$/", "B"));
        assert!(rm("/^[[.a.]]$/", "A") && rm("/^[[=Y=]]$/i", "Y") && !rm("/^[[=Y=]]$/i", "y"));
        assert!(rm("/^[[:lower:]]$/", "Q") && !rm("/^[[:lower:]]$/i", "Q"));
        assert_eq!(rerr("[Z-a]"), "Invalid range end");
        assert!(rm("/^a\\0$/", "a0") && rm("/^\\.$/", ".") && !rm("/^\\.$/", "a"));
        assert!(rm("/^(a)\\1$/", "aa") && !rm("/^(a)\\1$/", "ab"));
        assert!(rm("/^((a)|b)\\2$/", "aa"));
        assert!(rm("/^\\+$/", "+"));
        // Any byte but NUL; newlines are ordinary characters.
        assert!(rm("/^a.b$/", "a\nb") && rm("/^.$/", "\u{7f}"));
        // glibc: an escaped lower-case letter never matches when
        // case-insensitive; it is the letter otherwise.
        assert!(!rm("/^\\d$/", "d") && !rm("/^x\\qy$/", "xqy"));
        assert!(rm("/^\\d$/i", "d") && rm("/^\\Q$/", "q") && rm("/^\\Q$/", "Q"));
        // Bytes: `.` is one byte, classes are ASCII.
        assert!(!rm("/^.$/", "\u{e9}") && rm("/^..$/", "\u{e9}"));
        assert!(!rm("/^\u{c9}$/", "\u{e9}"));
        assert!(rm("/^[\u{e9}]{2}$/", "\u{e9}"));
    }

    #[test]
    fn posix_bre_syntax() {
        assert!(rm("/^a+$/x", "a+") && !rm("/^a+$/x", "aa"));
        assert!(rm("/^\\(b\\)\\1$/x", "bb"));
        assert!(rm("/^c\\{2\\}$/x", "cc"));
        assert!(rm("/^(d)$/x", "(d)") && rm("/^e|f$/x", "e|f"));
        assert!(rm("/^g\\+$/x", "ggg"));
        assert!(rm("/*a/x", "*a") && !rm("/*a/x", "a"));
        assert!(rm("/^*a/x", "*a") && !rm("/^*a/x", "^*a"));
        assert!(rm("/\\(*a\\)/x", "*a"));
        assert!(rm("/a\\|*b/x", "*b") && !rm("/^\\(a\\|*b\\)$/x", "b"));
        assert!(rm("/a^b/x", "a^b") && rm("/a$b/x", "a$b"));
        assert!(rm("/\\(^a\\)/x", "ab") && !rm("/\\(^a\\)/x", "ba"));
        assert!(rm("/\\(a$\\)/x", "ba") && !rm("/\\(a$\\)/x", "ab"));
        assert!(rm("/a\\|^b/x", "b") && rm("/a$\\|b/x", "ba"));
        assert!(rm("/^{$/x", "{") && rm("/^a{$/x", "a{"));
        assert!(rm("/^a\\{,2\\}$/x", "aa"));
        assert!(rm("/^\\+a$/x", "+a") && rm("/^\\(\\+\\)$/x", "+"));
        assert!(rm("/^a\\?\\?$/x", "a"));
        assert!(rm("/^a*\\?$/x", "aa"));
        let t = re("/a**/x x\n/a\\{1\\}\\{2\\}/x x\n/a*\\{2\\}/x x\n/\\{2\\}/x x\n/\\)/x x\n/\\(a/x x\n/a\\{2/x x\n");
        assert_eq!(
            warns(&t),
            [
                "regexp map t, line 1: Invalid preceding regular expression",
                "regexp map t, line 2: Invalid preceding regular expression",
                "regexp map t, line 3: Invalid preceding regular expression",
                "regexp map t, line 4: Invalid preceding regular expression",
                "regexp map t, line 5: Unmatched ( or \\(",
                "regexp map t, line 6: Unmatched ( or \\(",
                "regexp map t, line 7: Unmatched \\{",
            ]
        );
    }

    #[test]
    fn posix_errors_match_glibc() {
        assert_eq!(rerr("a{"), "Unmatched \\{");
        assert_eq!(rerr("b{1"), "Unmatched \\{");
        assert_eq!(rerr("a{1,2"), "Unmatched \\{");
        assert_eq!(rerr("{c"), "Invalid preceding regular expression");
        assert_eq!(rerr("*b"), "Invalid preceding regular expression");
        assert_eq!(rerr("(?d)"), "Invalid preceding regular expression");
        assert_eq!(rerr("a|*b"), "Invalid preceding regular expression");
        assert_eq!(rerr("^*a"), "Invalid preceding regular expression");
        assert_eq!(rerr("a$*"), "Invalid preceding regular expression");
        assert_eq!(rerr("a\\b*"), "Invalid preceding regular expression");
        assert_eq!(rerr("a(*)b"), "Invalid preceding regular expression");
        assert_eq!(rerr("a{x}"), "Invalid content of \\{\\}");
        assert_eq!(rerr("a{1,x}"), "Invalid content of \\{\\}");
        assert_eq!(rerr("a{}"), "Invalid content of \\{\\}");
        assert_eq!(rerr("a{2,1}"), "Invalid content of \\{\\}");
        assert_eq!(rerr("a{1,2,3}"), "Invalid content of \\{\\}");
        assert_eq!(rerr("a{32768}"), "Regular expression too big");
        assert_eq!(rerr("[[:foo:]]"), "Invalid character class name");
        assert_eq!(rerr("[[:]:]]"), "Invalid character class name");
        assert_eq!(rerr("[a"), "Unmatched [, [^, [:, [., or [=");
        assert_eq!(rerr("[]"), "Unmatched [, [^, [:, [., or [=");
        assert_eq!(rerr("[[:alpha:]"), "Unmatched [, [^, [:, [., or [=");
        assert_eq!(rerr("[a-c-e]"), "Invalid range end");
        assert_eq!(rerr("[a--]"), "Invalid range end");
        assert_eq!(rerr("[z-a]"), "Invalid range end");
        assert_eq!(rerr("[[:alpha:]-z]"), "Invalid range end");
        assert_eq!(rerr("[]-a]"), "Invalid range end");
        let t = re("/[a-\\]/i x\n");
        assert_eq!(warns(&t), ["regexp map t, line 1: Invalid range end"]);
        assert_eq!(rerr("[[.ab.]]"), "Invalid collation character");
        assert_eq!(rerr("[[.hyphen.]]"), "Invalid collation character");
        assert_eq!(
            rerr("a\\"),
            "no closing regexp delimiter \"/\": skipping this rule"
        );
        assert_eq!(rerr("(a"), "Unmatched ( or \\(");
        assert_eq!(rerr("\\1(a)"), "Invalid back reference");
        assert_eq!(rerr("(a)\\2"), "Invalid back reference");
        assert_eq!(rerr("(a)|\\1"), "Invalid back reference");
        assert_eq!(rerr(&"(".repeat(300)), "Regular expression too big");
    }

    #[test]
    fn posix_newline_flag() {
        assert!(rm("/^a.b$/", "a\nb") && !rm("/^a.b$/m", "a\nb"));
        assert!(rm("/^b$/m", "a\nb") && !rm("/^b$/", "a\nb"));
        assert!(!rm("/^a[^x]b$/m", "a\nb") && rm("/^a[^x]b$/", "a\nb"));
        assert!(!rm("/^a\\Wb$/m", "a\nb") && rm("/^a\\Wb$/", "a\nb"));
    }

    #[test]
    fn posix_capture_differences_are_leftmost_first() {
        // glibc (leftmost-longest) would capture "ab"; the regex crate
        // captures "a". Documented difference.
        let t = re("/(a|ab)/ $1\n");
        assert_eq!(q(&t, "ab").as_deref(), Some("a"));
    }

    #[test]
    fn pcre_flags() {
        assert!(pm("/^a$/", "a\n") && !pm("/^a$/E", "a\n") && pm("/^a$/m", "a\n"));
        assert!(pm("/^a.b$/", "a\nb") && !pm("/^a.b$/s", "a\nb"));
        assert!(pm("/a/A", "ab") && !pm("/a/A", "ba"));
        assert!(pm("/ a b /x", "ab") && !pm("/ a b /x", "a b"));
        assert!(pm("/ a\\ b # comment/x", "a b"));
        assert!(pm("/^b$/m", "a\nb\nc") && !pm("/^b$/", "a\nb\nc"));
        let t = pc("/(a+)/U [$1]\n/(b+)$/U [$1]\n/(?U)(c+)/ [$1]\n/(d+?)/U [$1]\n");
        assert_eq!(q(&t, "aaa").as_deref(), Some("[a]"));
        assert_eq!(q(&t, "bbb").as_deref(), Some("[bbb]"));
        assert_eq!(q(&t, "ccc").as_deref(), Some("[c]"));
        assert_eq!(q(&t, "ddd").as_deref(), Some("[ddd]"));
        let t = pc("/(?i)a/i x\n/(a)(?i)b/ $1\n");
        assert_eq!(q(&t, "A").as_deref(), Some("x"));
        let t = pc("/(a)(?-i)b/ $1\n");
        assert_eq!(q(&t, "Ab").as_deref(), Some("A"));
        assert_eq!(q(&t, "AB"), None);
    }

    #[test]
    fn pcre_features() {
        assert!(pm("/^(?<n>a)\\k<n>$/", "aa") && pm("/(?P<n>a)(?P=n)/", "aa"));
        assert!(pm("/^(?'n'a)\\k{n}$/", "aa") && pm("/^(a)\\g{1}\\g1\\g{-1}$/", "aaaa"));
        assert!(pm("/^\\h$/", " ") && !pm("/^\\h$/", "h") && !pm("/^\\h$/", "a"));
        assert!(pm("/^\\v$/", "\n") && pm("/^\\H\\V$/", "ab"));
        assert!(pm("/^\\Qa.b\\E$/", "a.b") && !pm("/^\\Qa.b\\E$/", "axb"));
        assert!(
            pm("/^[[]$/", "[")
                && pm("/^[a&&b]$/", "&")
                && pm("/^[+--]$/", ",")
                && pm("/^[~~]$/", "~")
        );
        assert!(pm("/^[]a]$/", "]") && pm("/^[^]a]$/", "b") && !pm("/^[^]a]$/", "]"));
        assert!(pm("/^a++$/", "aa") && pm("/^(?>a+)b$/", "aab"));
        assert!(pm("/^(a|b(?1))$/", "bba") && pm("/^(?<x>a|b(?&x))$/", "ba"));
        assert!(pm("/^\\x{41}\\x41\\101\\o{101}\\cA\\x1$/", "AAAA\x01\x01"));
        assert!(pm("/^a{,2}$/", "a{,2}") && pm("/^a{$/", "a{") && pm("/^{x}$/", "{x}"));
        assert!(pm("/^\\<$/", "<") && pm("/^a(?#comment)b$/", "ab"));
        assert!(pm("/^(?=a)a/", "a") && pm("/(?<!x)b/", "ab") && pm("/(?<=a)b/", "ab"));
        assert!(pm("/^[[:alpha:]]+[[:^alpha:]]$/", "ab1"));
        assert!(pm("/^(a)?(?(1)b|c)$/", "ab") && pm("/^(a)?(?(1)b|c)$/", "c"));
        assert!(pm("/^\\w$/", "_") && !pm("/^\\w$/", "\u{e9}") && pm("/^..$/", "\u{e9}"));
        assert!(pm("/^a\\Z/", "a\n") && pm("/^a\\z/", "a") && !pm("/^a\\z/", "a\n"));
        assert!(pm("/^[\\d-]+$/", "1-2") && pm("/^[\\h]$/", "\t"));
        assert!(pm("/^[a-c-e]$/", "e") && pm("/^[a-c-e]$/", "-") && !pm("/^[a-c-e]$/", "d"));
        assert!(pm("/^[\\Qa\\E-c]$/", "b") && pm("/^[a-b-\\d]$/", "5") && pm("/^[b-z--]$/", "-"));
        assert!(pm("/^[[:alpha:]x]$/", "q") && pm("/^[[:alpha]$/", ":") && pm("/^[[a:]]$/", "a]"));
        let t = pc(
            "/^[\\d-z]$/ x\n/^[a-\\d]$/ x\n/^[[:alpha:]-z]$/ x\n/^[a-[:digit:]]$/ x\n/[z-a]/ x\n",
        );
        assert_eq!(t.rule_count(), 0);
        assert!(
            warns(&t).iter().all(|w| w.contains("range")),
            "{:?}",
            warns(&t)
        );
        let t = pc("/^(?!owner-)(.*)-outgoing@(.*)/ 550 Use ${1}@${2} instead\n");
        assert_eq!(
            q(&t, "list-outgoing@example.com").as_deref(),
            Some("550 Use list@example.com instead")
        );
        assert_eq!(q(&t, "owner-list-outgoing@example.com"), None);
    }

    #[test]
    fn pcre_repeated_assertions_and_quantifier_errors() {
        assert!(pm("/^(?=a)*b/", "b") && pm("/^(?=a){2}a/", "a") && !pm("/^(?=a){2}a/", "b"));
        assert!(pm("/^(?!a)?a/", "a") && pm("/^(?<=x){0}a/", "a") && pm("/^(?=a)+?a/", "a"));
        assert!(
            pm("/(?)a?/", "b")
                && pm("/a(?#x)*/", "aa")
                && pm("/^a*+$/", "aa")
                && pm("/^a{2}+$/", "aa")
        );
        assert!(!pm("/^(?=a)b*$/", "") && pm("/^(?=a)a*$/", "aa"));
        let t = pc("/a**/ x\n/a{2}{3}/ x\n/a+++/ x\n/\\A*/ x\n/(?i)*/ x\n/(?#x)*/ x\n/a|*/ x\n/a{70000}/ x\n/b.{2,1}/ x\n/$*/ x\n/^+/ x\n/(?=a\\K)/ x\n");
        assert_eq!(
            warns(&t),
            [
                "pcre map t, line 1: error in regex at offset 2: quantifier does not follow a repeatable item",
                "pcre map t, line 2: error in regex at offset 6: quantifier does not follow a repeatable item",
                "pcre map t, line 3: error in regex at offset 3: quantifier does not follow a repeatable item",
                "pcre map t, line 4: error in regex at offset 2: quantifier does not follow a repeatable item",
                "pcre map t, line 5: error in regex at offset 4: quantifier does not follow a repeatable item",
                "pcre map t, line 6: error in regex at offset 5: quantifier does not follow a repeatable item",
                "pcre map t, line 7: error in regex at offset 2: quantifier does not follow a repeatable item",
                "pcre map t, line 8: error in regex at offset 7: number too big in {} quantifier",
                "pcre map t, line 9: error in regex at offset 6: numbers out of order in {} quantifier",
                "pcre map t, line 10: error in regex at offset 1: quantifier does not follow a repeatable item",
                "pcre map t, line 11: error in regex at offset 1: quantifier does not follow a repeatable item",
                "pcre map t, line 12: error in regex at offset 6: \\K is not allowed in lookarounds (but see PCRE2_EXTRA_ALLOW_LOOKAROUND_BSK)",
            ]
        );
    }

    #[test]
    fn pcre_lookbehind_must_have_fixed_length() {
        assert!(
            pm("/(?<=ab|c)d/", "abd")
                && pm("/(?<=a(b|c)|de)f/", "acf")
                && pm("/(?<=a{2})b/", "aab")
        );
        assert!(pm("/(?<=(a)\\1)b/", "aab") && pm("/(?<=(?<n>a)\\k<n>)b/", "aab"));
        assert!(
            pm("/(?<=\\d\\.[a-z]\\Qxy\\E)z/", "1.qxyz")
                && pm("/(?<=(?=a)a)b/", "ab")
                && pm("/(?<=^a)b/", "ab")
        );
        let t = pc("/A|(?<!ba*b)b/ x\n/(?<=[[]+?)B/ x\n/(?<=a(b|cd))e/ x\n/(?<=a{1,2})b/ x\n/(?<=(a+)\\1)b/ x\n/(?<=\\R)b/ x\n");
        assert_eq!(
            warns(&t),
            [
                "pcre map t, line 1: error in regex at offset 2: lookbehind assertion is not fixed length",
                "pcre map t, line 2: error in regex at offset 0: lookbehind assertion is not fixed length",
                "pcre map t, line 3: error in regex at offset 0: lookbehind assertion is not fixed length",
                "pcre map t, line 4: error in regex at offset 0: lookbehind assertion is not fixed length",
                "pcre map t, line 5: error in regex at offset 0: lookbehind assertion is not fixed length",
                "pcre map t, line 6: error in regex at offset 0: lookbehind assertion is not fixed length",
            ]
        );
    }

    #[test]
    fn pcre_references_must_exist() {
        let t = pc("/^(a)?(?(5)b|c)$/ x\n/^(?(2)a|b)(x)$/ y\n/^(?(<n>)a|b)$/ y\n/^\\5(a)$/ y\n/^(?5)(a)$/ y\n/^\\k<m>(a)$/ y\n/^(?&m)(a)$/ y\n");
        assert_eq!(t.rule_count(), 0, "{:?}", warns(&t));
        for w in warns(&t) {
            assert!(w.ends_with("reference to non-existent subpattern"), "{w}");
        }
        assert_eq!(q(&t, "ac"), None);
        assert!(pm("/^(?('n')a|b)(?<n>x)$/", "bx") && pm("/^(?(R)a|b)$/", "b"));
        assert!(pm("/^(?(DEFINE)(?<d>a))(?&d)$/", "a") && pm("/^(a)?(?(-1)b|c)$/", "ab"));
        assert!(pm("/^(?<n>a)?(?(n)b|c)$/", "c") && pm("/^(?<n>a)?(?(<n>)b|c)$/", "ab"));
    }

    #[test]
    fn pcre_errors() {
        let t = pc("/a(/ x\n/a)/ x\n/[a/ x\n/\\q/ x\n/(*UTF)a/ x\n/\\p{Lu}/ x\n/(?|(a)|(b))/ x\n/a\\/ x\n/^\\/ x\n");
        let w = warns(&t);
        assert_eq!(
            w[0],
            "pcre map t, line 1: error in regex at offset 2: missing closing parenthesis"
        );
        assert_eq!(
            w[1],
            "pcre map t, line 2: error in regex at offset 1: unmatched closing parenthesis"
        );
        assert_eq!(w[2], "pcre map t, line 3: error in regex at offset 0: missing terminating ] for character class");
        assert_eq!(
            w[3],
            "pcre map t, line 4: error in regex at offset 1: unrecognized character follows \\"
        );
        for (i, l) in w.iter().enumerate().skip(4) {
            assert!(
                l.contains("error in regex") || l.contains("no closing"),
                "{i}: {l}"
            );
        }
        assert_eq!(t.rule_count(), 0);
        let deep = format!("/{}a{}/ x\n", "(".repeat(300), ")".repeat(300));
        assert_eq!(
            warns(&pc(&deep)),
            ["pcre map t, line 1: error in regex at offset 200: parentheses are too deeply nested"]
        );
    }

    #[test]
    fn pcre_backtracking_is_bounded() {
        let t = pc("/^(a|a)*\\1b$/ x\n!/^(a|a)*\\1b$/ negated\nif !/^(a|a)*\\1b$/\n/./ in-if\nendif\n/./ fallback\n");
        let key = "a".repeat(64) + "c";
        let started = std::time::Instant::now();
        assert_eq!(q(&t, &key).as_deref(), Some("fallback"));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(t.match_errors(), 3);
        // Nested quantifiers without fancy features use the regex crate's
        // automata, which do not backtrack at all.
        let t = pc("/^(a*)*b$/ x\n");
        assert_eq!(q(&t, &key), None);
        assert_eq!(t.match_errors(), 0);
    }

    #[test]
    fn size_limits() {
        let t = re("/^(a{1000}){1000}$/ x\n");
        assert_eq!(
            warns(&t),
            ["regexp map t, line 1: Regular expression too big"]
        );
        let t = pc("/^(a{1000}){1000}$/ x\n");
        assert_eq!(t.rule_count(), 0);
        let mut many = String::new();
        for i in 0..=MAX_RULES {
            many.push_str(&format!("/^k{i}$/ v\nendif\n"));
        }
        let e = RegexpTable::parse("regexp:t", "t", many.as_bytes(), Flavor::Regexp)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "regexp map t, line 200001: more than 100000 rules: split the table"
        );
        // Exactly the limit is fine (checked on a cheap table).
        let fine = "endif\n".repeat(10) + &"!\n".repeat(MAX_RULES);
        assert!(RegexpTable::parse("regexp:t", "t", fine.as_bytes(), Flavor::Regexp).is_ok());
    }

    #[test]
    fn inline_form() {
        let t = RegexpTable::open(
            "regexp:{ {/a/ x}, {/b/ y}, {/c(/ z} }",
            "{ {/a/ x}, {/b/ y}, {/c(/ z} }",
            Flavor::Regexp,
        )
        .unwrap();
        assert_eq!(q(&t, "b").as_deref(), Some("y"));
        assert_eq!(
            warns(&t),
            ["regexp map { {/a/ x}, {/b/ y}, {/c(/ z} }, line 3: Unmatched ( or \\("]
        );
        let ok = |n: &str, k: &str| {
            RegexpTable::open(&format!("regexp:{n}"), n, Flavor::Regexp)
                .unwrap()
                .lookup(k)
                .unwrap()
        };
        assert_eq!(ok("{{/a/ x},{ /b/ y }}", "b").as_deref(), Some("y"));
        assert_eq!(ok("{ {/a/ x} {/b/ y} }", "b").as_deref(), Some("y"));
        assert_eq!(ok("{ {/b/ {y}} }", "b").as_deref(), Some("{y}"));
        assert_eq!(ok("{ }", "b"), None);
        assert_eq!(
            ok("{ {if /b/}, {/./ y}, {endif} }", "b").as_deref(),
            Some("y")
        );
        assert_eq!(
            ok("{ {/a/ x},, {/b/ y}, {}, {  } }", "b").as_deref(),
            Some("y")
        );
        assert_eq!(ok("{{/b/ y}\t}", "b").as_deref(), Some("y"));
        let bad = |n: &str| {
            RegexpTable::open(&format!("regexp:{n}"), n, Flavor::Regexp)
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            bad("{/a/ x}"),
            "regexp map: no '{' at start of text in \"/a/\""
        );
        assert_eq!(
            bad("{ {/a/ x}, {/b/ y}"),
            "regexp map: missing '}' in \"{ {/a/ x}, {/b/ y}\""
        );
        assert_eq!(
            bad("{ {/a/ x}, {/b/ y} } x"),
            "regexp map: syntax error after '}' in \"{ {/a/ x}, {/b/ y} } x\""
        );
        assert_eq!(
            bad("{ {/a/ x},{/b/ y}}  "),
            "regexp map: syntax error after '}' in \"{ {/a/ x},{/b/ y}}  \""
        );
        assert_eq!(
            bad("{ {/a/ x}junk }"),
            "regexp map: syntax error after '}' in \"{/a/ x}junk\""
        );
        assert_eq!(
            bad("{ {/a/ x},\"{/b/ y}\" }"),
            "regexp map: no '{' at start of text in \"\"{/b/ y}\"\""
        );
        let t = RegexpTable::from_rules("pcre:{x}", &["/^(a)$/ got $1", "", "/b/"], Flavor::Pcre)
            .unwrap();
        assert_eq!(q(&t, "a").as_deref(), Some("got a"));
        assert_eq!(
            warns(&t),
            ["pcre map {x}, line 3: no replacement text: using empty string"]
        );
    }

    #[test]
    fn files_and_changes() {
        let dir = std::env::temp_dir().join(format!("facteur-regexp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t.re");
        std::fs::write(&f, "/^a$/ one\n").unwrap();
        let path = f.to_str().unwrap();
        let spec = format!("regexp:{path}");
        let t = RegexpTable::open(&spec, path, Flavor::Regexp).unwrap();
        assert_eq!(t.name(), spec);
        assert_eq!(q(&t, "a").as_deref(), Some("one"));
        assert!(!t.changed());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("t.new"), "/^a$/ two\n").unwrap();
        std::fs::rename(dir.join("t.new"), &f).unwrap();
        assert!(t.changed());
        let e = RegexpTable::open("regexp:/nonexistent/x", "/nonexistent/x", Flavor::Regexp)
            .err()
            .unwrap();
        assert_eq!(
            e,
            TableError::Config("open /nonexistent/x: No such file or directory".into())
        );
        assert!(matches!(
            RegexpTable::open("regexp:rel", "rel", Flavor::Regexp),
            Err(TableError::Config(_))
        ));
        let via = super::super::open(&format!("pcre:{path}"), &Default::default()).unwrap();
        assert_eq!(via.lookup("A").unwrap().as_deref(), Some("two"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
