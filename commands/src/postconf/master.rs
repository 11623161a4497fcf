//! The master.cf side of postconf(1): `-M`, `-F`, `-P`, and their edits.
//!
//! | usage | effect |
//! |---|---|
//! | `-M [name[/type]...]` | entries, columns aligned; `-Mf` folds them |
//! | `-F [name/type/field...]` | `name/type/field = value` for the eight fields |
//! | `-P [name/type/param...]` | `name/type/param = value` for `-o` options |
//! | `-M name/type='entry'` | replace the entry (or add it at the end) |
//! | `-MX name/type`, `-M# name/type` | delete, comment out |
//! | `-F name/type/field=value` | change one field |
//! | `-P name/type/param=value`, `-PX name/type/param` | set, remove a `-o` |
//!
//! Output and messages are Postfix 3.7's, byte for byte, including its
//! quirks that do no harm: every duplicate entry is shown; `-P` shows the
//! `-o` options of all entries with the same name and type merged; `-F`
//! and `-P` edits move the edited entry after the comments that follow it;
//! `-M` edits print the new entry folded; a matched `{ }` argument right
//! after the daemon options is written without braces. The differences
//! (Postfix bugs that lose or corrupt data) are listed in
//! docs/postconf-differences.md:
//!
//! * `-oname=value` is split as getopt does (`-o name=value`); Postfix's
//!   postconf splits again at every later `o` (`-osyslog_name=x` becomes
//!   `-o sysl -o g_name=x`);
//! * a generated entry always starts on a line of its own (Postfix glues it
//!   to a last line that lacks its newline);
//! * `-Fh` with a command of up to four characters separates the arguments
//!   (Postfix prints `abxy` for `ab x y`);
//! * `-F name/type/command=` (empty) is an error (Postfix crashes).
//!
//! The functions here do the work on text and writers, so they are tested
//! without files; [`dispatch`] is what `postconf` calls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use libmail::cli::Parsed;
use libmail::config::expand::Expansion;
use libmail::config::mastercf::{
    self, check_fields, ends_options, normalize_args, option_takes_value, split_fields,
    split_nameval, PostconfText,
};

/// Column where each of the eight fields starts in `-M` output.
const COLUMN_GOAL: [usize; 8] = [0, 11, 17, 25, 33, 41, 49, 57];
/// Line length `-f` folds at.
const LINE_LIMIT: usize = 80;
/// Indentation of continuation lines.
const INDENT: &str = "    ";
const INDENT_LEN: usize = 4;
/// What separates fields (Postfix's `PCF_MASTER_BLANKS`).
const BLANKS: &[char] = &[' ', '\t', '\r', '\n'];

/// The names `-F` knows, in column order.
pub const FIELD_NAMES: [&str; 8] = [
    "service",
    "type",
    "private",
    "unprivileged",
    "chroot",
    "wakeup",
    "process_limit",
    "command",
];

/// Which view of master.cf: `-M`, `-F` or `-P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Services,
    Fields,
    Params,
}

impl Table {
    fn flag(self) -> char {
        match self {
            Table::Services => 'M',
            Table::Fields => 'F',
            Table::Params => 'P',
        }
    }
}

/// What an edit does: `-e` (also implied by `name=value`), `-X`, `-#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    Set,
    Remove,
    CommentOut,
}

/// The service an `-x` expansion happens in: `$service_name`,
/// `$process_name`, and the service's own `-o` options, which come before
/// main.cf.
pub struct ExpandCtx<'a> {
    pub service_name: &'a str,
    pub process_name: &'a str,
    pub params: Option<&'a BTreeMap<String, String>>,
}

/// `-x`: expand a value in the context of its service.
pub type Expander<'a> = &'a dyn Fn(&str, &ExpandCtx) -> String;

/// How to show: `-f`, `-h`, `-H`, and `-x` as a function that expands a
/// value in the context of its service.
#[derive(Default)]
pub struct ShowOpts<'a> {
    pub fold: bool,
    pub hide_name: bool,
    pub hide_value: bool,
    pub expand: Option<Expander<'a>>,
}

/// The entries of master.cf as postconf holds them: each entry's argv
/// (eight fields, then the normalized arguments).
pub struct Entries {
    pub argv: Vec<Vec<String>>,
    /// The `-o` options of each `name/type`, merged over all entries with
    /// that name and type (later ones win), as postconf's `-P` shows them.
    params: HashMap<String, BTreeMap<String, String>>,
    /// Whether entry `i` sees its `name/type` table: only once an entry
    /// up to and including `i` has added a valid `-o` to it.
    has_params: Vec<bool>,
}

impl Entries {
    /// Build from argvs in file order.
    pub fn new(argv: Vec<Vec<String>>) -> Entries {
        let mut params: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        let mut has_params = Vec::with_capacity(argv.len());
        for a in &argv {
            let key = format!("{}/{}", a[0], a[1]);
            for (n, v) in postconf_overrides(a) {
                params.entry(key.clone()).or_default().insert(n, v);
            }
            has_params.push(params.contains_key(&key));
        }
        Entries {
            argv,
            params,
            has_params,
        }
    }

    /// The `-o` table entry `i` sees (`None` when it sees none).
    pub fn params_of(&self, i: usize) -> Option<&BTreeMap<String, String>> {
        if !self.has_params[i] {
            return None;
        }
        let a = &self.argv[i];
        self.params.get(&format!("{}/{}", a[0], a[1]))
    }

    fn ctx(&self, i: usize) -> ExpandCtx<'_> {
        let a = &self.argv[i];
        ExpandCtx {
            service_name: &a[0],
            process_name: a[7].rsplit('/').next().unwrap_or(&a[7]),
            params: self.params_of(i),
        }
    }
}

/// The `-o name=value` options as postconf reads them from an argv: in the
/// leading daemon options only (which end at the first non-option; a lone
/// `-` takes a value, as in Postfix), skipping values without `=`.
pub fn postconf_overrides(argv: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 8;
    while i < argv.len() && !ends_options(&argv[i]) {
        if option_takes_value(&argv[i]) && i + 1 < argv.len() {
            if argv[i] == "-o" {
                if let Ok((n, v)) = split_nameval(&argv[i + 1]) {
                    out.push((n.to_string(), v.to_string()));
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Read master.cf text the way postconf does: print the warnings postconf
/// prints to `warn`, stop at the first problem postconf finds fatal
/// (`Err` holds its message, without `postconf: fatal: `).
pub fn load(text: &str, path: &str, warn: &mut dyn Write) -> Result<Entries, String> {
    let (mc, problems) = mastercf::parse_detailed(text, path);
    for p in problems {
        match p.postconf {
            Some(PostconfText::Warning(w)) => {
                let _ = writeln!(warn, "postconf: warning: {w}");
            }
            Some(PostconfText::Fatal(f)) => return Err(f),
            None => {}
        }
    }
    Ok(Entries::new(
        mc.services.into_iter().map(|s| s.argv).collect(),
    ))
}

/// A parsed `name[/type[/field]]` request.
struct Request<'a> {
    raw: &'a str,
    pattern: Vec<String>,
    matches: usize,
}

/// Parse a service pattern as postconf does: `/`-separated, empty parts
/// dropped, `min..=max` parts, `*` only as a whole part; missing trailing
/// parts are `*`. A leading `/` is invalid.
fn parse_pattern(s: &str, min: usize, max: usize) -> Option<Vec<String>> {
    if s.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() < min || parts.len() > max {
        return None;
    }
    if parts.iter().any(|p| *p != "*" && p.contains('*')) {
        return None;
    }
    let mut v: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    while v.len() < max {
        v.push("*".to_string());
    }
    Some(v)
}

fn part_matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

fn service_matches(pattern: &[String], argv: &[String]) -> bool {
    part_matches(&pattern[0], &argv[0]) && part_matches(&pattern[1], &argv[1])
}

/// A field name, `*` (all: `None`), or an error.
fn parse_field(name: &str) -> Result<Option<usize>, String> {
    if name == "*" {
        return Ok(None);
    }
    FIELD_NAMES
        .iter()
        .position(|f| *f == name)
        .map(Some)
        .ok_or_else(|| format!("invalid service attribute name: \"{name}\""))
}

fn has_blank(s: &str) -> bool {
    s.contains(BLANKS)
}

/// Append the arguments of `argv` (from index 8) to `out`, folding like
/// postconf. `line_len` is the length of the current output line.
/// `pair_extra` is what postconf adds to an option+value pair's length
/// (`3` for `-M`, `1` for `-F`: it never matters, a pair always starts a
/// line when folding).
#[allow(clippy::too_many_arguments)]
fn format_args(
    out: &mut String,
    mut line_len: usize,
    argv: &[String],
    fold: bool,
    pair_extra: usize,
    entries: &Entries,
    index: usize,
    expand: Option<Expander>,
) {
    let mut in_options = true;
    let mut i = 8;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let mut arg_len = arg.len();
        let mut value: Option<String> = None;
        let mut parens = false;
        if in_options {
            if ends_options(arg) {
                // postconf shows the first non-option without braces.
                in_options = false;
            } else if option_takes_value(arg) && i + 1 < argv.len() {
                line_len = LINE_LIMIT;
                let v = match expand {
                    Some(f) if arg == "-o" => f(&argv[i + 1], &entries.ctx(index)),
                    _ => argv[i + 1].clone(),
                };
                arg_len += v.len() + pair_extra;
                parens = has_blank(&v);
                if parens {
                    arg_len += 2;
                }
                value = Some(v);
            }
        } else {
            parens = has_blank(arg);
        }
        // Postfix adds no separator while the line is at most four
        // characters long (it glues `-Fh` arguments to a short command);
        // Facteur always separates.
        if line_len > 0 {
            if !fold || line_len <= INDENT_LEN || line_len + 1 + arg_len < LINE_LIMIT {
                out.push(' ');
                line_len += 1;
            } else {
                out.push('\n');
                out.push_str(INDENT);
                line_len = INDENT_LEN;
            }
        }
        let braced = !in_options && parens;
        if braced {
            out.push('{');
        }
        out.push_str(arg);
        if braced {
            out.push('}');
        }
        line_len += arg.len() + 2 * usize::from(braced);
        if let Some(v) = value {
            out.push(' ');
            if parens {
                out.push('{');
            }
            out.push_str(&v);
            if parens {
                out.push('}');
            }
            i += 1;
            line_len = LINE_LIMIT;
        }
        i += 1;
    }
}

/// One entry as `postconf -M` prints it (with the final newline).
fn format_entry(entries: &Entries, index: usize, fold: bool, expand: Option<Expander>) -> String {
    let argv = &entries.argv[index];
    let mut out = String::new();
    let mut line_len = 0;
    for (field, arg) in argv.iter().take(8).enumerate() {
        if line_len > 0 {
            loop {
                out.push(' ');
                line_len += 1;
                if line_len >= COLUMN_GOAL[field] {
                    break;
                }
            }
        }
        out.push_str(arg);
        line_len += arg.len();
    }
    format_args(&mut out, line_len, argv, fold, 3, entries, index, expand);
    out.push('\n');
    out
}

/// A standalone argv formatted as `-Mf` does (what edits write).
pub fn format_argv_folded(argv: Vec<String>) -> String {
    let e = Entries::new(vec![argv]);
    format_entry(&e, 0, true, None)
}

/// One `-F` line (with the final newline).
fn format_field(entries: &Entries, index: usize, field: usize, opts: &ShowOpts) -> String {
    let argv = &entries.argv[index];
    let mut out = String::new();
    if !opts.hide_name {
        out.push_str(&format!("{}/{}/{}", argv[0], argv[1], FIELD_NAMES[field]));
    }
    if !opts.hide_name && !opts.hide_value {
        out.push_str(" = ");
    }
    let mut line_len = out.len();
    if !opts.hide_value {
        if line_len > 0 && line_len + argv[field].len() > LINE_LIMIT {
            out.push('\n');
            out.push_str(INDENT);
            line_len = INDENT_LEN;
        }
        out.push_str(&argv[field]);
        line_len += argv[field].len();
        if field == 7 {
            format_args(
                &mut out,
                line_len,
                argv,
                opts.fold,
                1,
                entries,
                index,
                opts.expand,
            );
        }
    }
    out.push('\n');
    out
}

/// A `name = value` line as postconf prints it: words separated by one
/// space; with `fold`, lines wrap before 80 columns, continued with four
/// spaces.
fn format_line(text: &str, fold: bool) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split(BLANKS).filter(|w| !w.is_empty()) {
        if line_len > 0 {
            if !fold || line_len + word.len() < LINE_LIMIT {
                out.push(' ');
                line_len += 1;
            } else {
                out.push('\n');
                out.push_str(INDENT);
                line_len = INDENT_LEN;
            }
        }
        out.push_str(word);
        line_len += word.len();
    }
    out.push('\n');
    out
}

fn format_param(
    entries: &Entries,
    index: usize,
    name: &str,
    value: &str,
    opts: &ShowOpts,
) -> String {
    let a = &entries.argv[index];
    if opts.hide_value {
        return format_line(&format!("{}/{}/{}", a[0], a[1], name), opts.fold);
    }
    let value = match opts.expand {
        Some(f) => f(value, &entries.ctx(index)),
        None => value.to_string(),
    };
    if opts.hide_name {
        format_line(&value, opts.fold)
    } else {
        format_line(
            &format!("{}/{}/{} = {}", a[0], a[1], name, value),
            opts.fold,
        )
    }
}

fn io_err(e: std::io::Error) -> String {
    format!("write error: {}", strerror(&e))
}

fn warn_unmatched(reqs: &[Request], warn: &mut dyn Write) {
    for r in reqs {
        if r.matches == 0 {
            let _ = writeln!(warn, "postconf: warning: unmatched request: \"{}\"", r.raw);
        }
    }
}

fn parse_requests<'a>(
    selectors: &'a [String],
    max: usize,
    usage: &str,
) -> Result<Vec<Request<'a>>, String> {
    selectors
        .iter()
        .map(|s| {
            parse_pattern(s, 1, max)
                .map(|pattern| Request {
                    raw: s,
                    pattern,
                    matches: 0,
                })
                .ok_or_else(|| usage.to_string())
        })
        .collect()
}

/// `postconf -M [-f] [-x] [name[/type]...]`.
pub fn show_services(
    entries: &Entries,
    opts: &ShowOpts,
    selectors: &[String],
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), String> {
    let mut reqs = parse_requests(selectors, 2, "-M option requires service_name[/type]")?;
    for i in 0..entries.argv.len() {
        if reqs.is_empty() {
            out.write_all(format_entry(entries, i, opts.fold, opts.expand).as_bytes())
                .map_err(io_err)?;
            continue;
        }
        for r in reqs.iter_mut() {
            if service_matches(&r.pattern, &entries.argv[i]) {
                r.matches += 1;
                out.write_all(format_entry(entries, i, opts.fold, opts.expand).as_bytes())
                    .map_err(io_err)?;
            }
        }
    }
    warn_unmatched(&reqs, warn);
    Ok(())
}

/// `postconf -F [-f] [-h|-H] [-x] [name[/type[/field]]...]`.
pub fn show_fields(
    entries: &Entries,
    opts: &ShowOpts,
    selectors: &[String],
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), String> {
    let mut reqs = parse_requests(
        selectors,
        3,
        "-F option requires service_name[/type[/field]]",
    )?;
    let mut fields = Vec::new();
    for r in &reqs {
        fields.push(parse_field(&r.pattern[2])?);
    }
    let all = |i: usize, out: &mut dyn Write| -> Result<(), String> {
        for f in 0..8 {
            out.write_all(format_field(entries, i, f, opts).as_bytes())
                .map_err(io_err)?;
        }
        Ok(())
    };
    for i in 0..entries.argv.len() {
        if reqs.is_empty() {
            all(i, out)?;
            continue;
        }
        for (r, field) in reqs.iter_mut().zip(&fields) {
            if service_matches(&r.pattern, &entries.argv[i]) {
                r.matches += 1;
                match field {
                    None => all(i, out)?,
                    Some(f) => out
                        .write_all(format_field(entries, i, *f, opts).as_bytes())
                        .map_err(io_err)?,
                }
            }
        }
    }
    warn_unmatched(&reqs, warn);
    Ok(())
}

/// `postconf -P [-f] [-h|-H] [-x] [name[/type[/parameter]]...]`.
pub fn show_params(
    entries: &Entries,
    opts: &ShowOpts,
    selectors: &[String],
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), String> {
    let mut reqs = parse_requests(
        selectors,
        3,
        "-P option requires service_name[/type[/parameter]]",
    )?;
    let all = |i: usize, table: &BTreeMap<String, String>, out: &mut dyn Write| {
        for (n, v) in table {
            out.write_all(format_param(entries, i, n, v, opts).as_bytes())
                .map_err(io_err)?;
        }
        Ok::<(), String>(())
    };
    for i in 0..entries.argv.len() {
        let Some(table) = entries.params_of(i) else {
            continue;
        };
        if reqs.is_empty() {
            all(i, table, out)?;
            continue;
        }
        for r in reqs.iter_mut() {
            if !service_matches(&r.pattern, &entries.argv[i]) {
                continue;
            }
            if r.pattern[2] == "*" {
                all(i, table, out)?;
                r.matches += 1;
            } else if let Some(v) = table.get(&r.pattern[2]) {
                out.write_all(format_param(entries, i, &r.pattern[2], v, opts).as_bytes())
                    .map_err(io_err)?;
                r.matches += 1;
            }
        }
    }
    warn_unmatched(&reqs, warn);
    Ok(())
}

/// One edit request.
struct EditReq<'a> {
    raw: &'a str,
    pattern: Vec<String>,
    field: usize,
    value: String,
    matches: usize,
    /// `-M name/type=entry`: the new entry.
    entry: Option<Vec<String>>,
}

const EDIT_OPTS: &str = "-Me, -Fe, -Pe, -X, or -#";

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Parse a whole new entry given to `-M name/type=...`.
fn parse_new_entry(value: &str, raw: &str, warn: &mut dyn Write) -> Result<Vec<String>, String> {
    let mut argv = split_fields(value);
    if argv.len() < 8 {
        return Err(format!("bad field count: \"{raw}\""));
    }
    check_fields(&argv, value)?;
    normalize(&mut argv, warn);
    Ok(argv)
}

fn normalize(argv: &mut Vec<String>, warn: &mut dyn Write) {
    let mut notes = Vec::new();
    normalize_args(argv, &mut notes);
    for n in notes {
        let _ = writeln!(warn, "postconf: warning: {}", n.postconf);
    }
}

/// Apply `-e`/`-X`/`-#` requests for `table` to master.cf `text` (read
/// from `path`) and return the new text. Warnings go to `warn`; `Err` is
/// a fatal error (nothing should be written). The rules are postconf's:
///
/// * `-M name/type=entry` replaces, at the place of the first one, every
///   entry matching `name/type` or the new entry's own name and type; when
///   none matches, the entry is added at the end. Comment lines inside a
///   replaced entry stay where they were;
/// * `-MX` deletes, `-M#` comments out (each physical line gets `#`);
/// * `-F`/`-P` edit every matching entry, which is then written folded,
///   after the comment and blank lines that follow it; a request that
///   matches nothing warns `unmatched service_name/type`.
pub fn edit_text(
    text: &str,
    path: &str,
    table: Table,
    op: EditOp,
    args: &[String],
    warn: &mut dyn Write,
) -> Result<String, String> {
    match (table, op) {
        (Table::Fields, EditOp::Remove) => return Err("with option -F, do not specify -X".into()),
        (Table::Fields, EditOp::CommentOut) => {
            return Err("with option -F, do not specify -#".into())
        }
        (Table::Params, EditOp::CommentOut) => {
            return Err("with option -P, do not specify -#".into())
        }
        _ => {}
    }
    let mut reqs = Vec::new();
    for raw in args {
        if raw.contains('\n') {
            return Err(format!("{EDIT_OPTS} accept no multi-line input"));
        }
        let cp = raw.trim_start_matches(is_space);
        if cp.starts_with('#') {
            return Err(format!("{EDIT_OPTS} accept no comment input"));
        }
        let (pattern, value) = match op {
            EditOp::Set => match split_nameval(cp) {
                Ok((p, v)) => (p, v.to_string()),
                Err(e) => return Err(format!("{e}: \"{raw}\"")),
            },
            EditOp::Remove | EditOp::CommentOut => {
                if cp.contains('=') {
                    return Err("-X or -# requires names without value".into());
                }
                // Trailing blanks stay (Postfix does not trim them either:
                // such a pattern matches nothing).
                (cp, String::new())
            }
        };
        let mut field = 0;
        let pattern = match table {
            Table::Services => {
                parse_pattern(pattern, 2, 2).ok_or("-Me, -MX or -M# requires service_name/type")?
            }
            Table::Fields => {
                let p = parse_pattern(pattern, 3, 3)
                    .ok_or("-Fe or -FX requires service_name/type/field_name")?;
                field = parse_field(&p[2])?.ok_or("-Fe does not accept wild-card field name")?;
                if op == EditOp::Set && field < 7 && has_blank(&value) {
                    return Err("-Fe does not accept whitespace in non-command field".into());
                }
                if op == EditOp::Set && field == 7 && split_fields(&value).is_empty() {
                    // Postfix crashes here.
                    return Err("-Fe does not accept an empty command field".into());
                }
                p
            }
            Table::Params => {
                let p = parse_pattern(pattern, 3, 3)
                    .ok_or("-Pe or -PX requires service_name/type/parameter")?;
                if p[2] == "*" {
                    return Err("-Pe does not accept wild-card parameter name".into());
                }
                if op == EditOp::Set && has_blank(&value) {
                    return Err("-Pe does not accept whitespace in parameter value".into());
                }
                p
            }
        };
        reqs.push(EditReq {
            raw,
            pattern,
            field,
            value,
            matches: 0,
            entry: None,
        });
    }
    let replacing = table == Table::Services && op == EditOp::Set;
    let mut new_entries_parsed = false;
    let mut parse_new_entries = |reqs: &mut Vec<EditReq>, warn: &mut dyn Write| {
        if !replacing || new_entries_parsed {
            return Ok::<(), String>(());
        }
        new_entries_parsed = true;
        for r in reqs.iter_mut() {
            r.entry = Some(parse_new_entry(&r.value, r.raw, warn)?);
        }
        Ok(())
    };

    // Physical lines, each with its newline (the last may lack one).
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + 256);
    let mut matched = false;
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n];
        let lineno = n + 1;
        n += 1;
        let content = line.trim_start_matches(is_space);
        if content.is_empty() || content.starts_with('#') {
            out.push_str(line);
            continue;
        }
        if content.len() < line.len() {
            // A continuation line.
            if !matched {
                out.push_str(line);
            } else if op == EditOp::CommentOut {
                out.push('#');
                out.push_str(line);
            }
            continue;
        }
        matched = false;
        let mut words = line.split(BLANKS).filter(|w| !w.is_empty());
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            return Err(format!(
                "file {path}: line {lineno}: specify service name and type on the same line"
            ));
        };
        if name.contains('=') {
            return Err(format!(
                "file {path}: line {lineno}: service name syntax \"{name}\" is unsupported with {EDIT_OPTS}"
            ));
        }
        if kind.contains(['=', '/']) {
            return Err(format!(
                "file {path}: line {lineno}: service type syntax \"{kind}\" is unsupported with {EDIT_OPTS}"
            ));
        }
        parse_new_entries(&mut reqs, warn)?;
        let here = [name.to_string(), kind.to_string()];
        let mut new_entry: Option<Vec<String>> = None;
        for r in reqs.iter_mut() {
            let mut use_new = false;
            if service_matches(&r.pattern, &here) {
                matched = true;
                r.matches += 1;
                match (table, op) {
                    (Table::Services, EditOp::Set) => use_new = r.matches == 1,
                    (Table::Fields, EditOp::Set)
                    | (Table::Params, EditOp::Set)
                    | (Table::Params, EditOp::Remove) => {
                        if new_entry.is_none() {
                            // Take the continuation lines; comment and
                            // blank lines among and after them go out now.
                            let mut full = line.to_string();
                            while n < lines.len() {
                                let next = lines[n];
                                if !next.starts_with(|c: char| c == '#' || is_space(c)) {
                                    break;
                                }
                                n += 1;
                                let c = next.trim_start_matches(is_space);
                                if c.is_empty() || c.starts_with('#') {
                                    out.push_str(next);
                                } else {
                                    full.push_str(next);
                                }
                            }
                            let mut argv = split_fields(&full);
                            if argv.len() < 8 {
                                return Err(format!("file {path}: line {lineno}: bad field count"));
                            }
                            check_fields(&argv, &full)?;
                            normalize(&mut argv, warn);
                            new_entry = Some(argv);
                        }
                        let argv = new_entry.as_mut().expect("set above");
                        if table == Table::Fields {
                            edit_field(argv, r.field, &r.value, warn)?;
                        } else {
                            edit_param(argv, op, &r.pattern[2], &r.value);
                        }
                    }
                    _ => {}
                }
            } else if let Some(e) = &r.entry {
                if service_matches(&e[..2], &here) {
                    matched = true;
                    r.matches += 1;
                    use_new = r.matches == 1;
                }
            }
            if use_new {
                new_entry = r.entry.clone();
            }
        }
        if let Some(argv) = new_entry {
            push_entry(&mut out, argv);
        } else if !matched {
            out.push_str(line);
        } else if op == EditOp::CommentOut {
            out.push('#');
            out.push_str(line);
        }
    }
    parse_new_entries(&mut reqs, warn)?;
    for r in &mut reqs {
        if r.matches == 0 {
            if replacing {
                push_entry(&mut out, r.entry.take().expect("parsed"));
            } else if table != Table::Services {
                let _ = writeln!(
                    warn,
                    "postconf: warning: unmatched service_name/type: \"{}\"",
                    r.raw
                );
            }
        }
    }
    Ok(out)
}

/// Append an entry, folded, on a line of its own.
fn push_entry(out: &mut String, argv: Vec<String>) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format_argv_folded(argv));
}

fn edit_field(
    argv: &mut Vec<String>,
    field: usize,
    value: &str,
    warn: &mut dyn Write,
) -> Result<(), String> {
    if field == 7 {
        argv.truncate(7);
        argv.extend(split_fields(value));
        normalize(argv, warn);
    } else {
        argv[field] = value.to_string();
    }
    check_fields(argv, value)
}

fn edit_param(argv: &mut Vec<String>, op: EditOp, name: &str, value: &str) {
    let mut found = false;
    let mut i = 8;
    while i < argv.len() && !ends_options(&argv[i]) {
        if option_takes_value(&argv[i]) && i + 1 < argv.len() {
            let is_it = argv[i] == "-o"
                && argv[i + 1]
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('='));
            if is_it {
                found = true;
                if op == EditOp::Remove {
                    argv.drain(i..i + 2);
                    continue;
                }
                argv[i + 1] = format!("{name}={value}");
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if op == EditOp::Set && !found {
        argv.insert(i, "-o".to_string());
        argv.insert(i + 1, format!("{name}={value}"));
    }
}

/// [`edit_text`] on the file at `path`, written back atomically (temporary
/// file in the same directory, fsync, rename, fsync of the directory).
pub fn edit(
    path: &str,
    table: Table,
    op: EditOp,
    args: &[String],
    warn: &mut dyn Write,
) -> Result<(), String> {
    let text = libmail::config::maincf::read_config_file(path)
        .map_err(|e| format!("open {path} for reading: {}", strerror(&e)))?;
    let new_text = edit_text(&text, path, table, op, args, warn)?;
    libmail::config::edit::write_atomically(std::path::Path::new(path), &new_text)
        .map_err(|e| format!("write {path}: {}", strerror(&e)))
}

/// An I/O error as C's strerror words it (without Rust's `(os error N)`).
pub fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Sort option letters the way postconf lists them in `specify one of`.
fn option_list(flags: &[char]) -> String {
    let mut v = flags.to_vec();
    v.sort_by_key(|&c| {
        if c == '#' {
            (1, '~', false)
        } else {
            (0, c.to_ascii_lowercase(), c.is_ascii_uppercase())
        }
    });
    v.iter()
        .map(|c| format!("-{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Check the option combination of a `-M`/`-F`/`-P` command line and say
/// what to do: `Ok((table, Some(op)))` to edit, `Ok((table, None))` to
/// show, `Err` with postconf's message.
pub fn mode(opts: &Parsed) -> Result<(Table, Option<EditOp>), String> {
    let present =
        |set: &[char]| -> Vec<char> { set.iter().copied().filter(|&c| opts.has(c)).collect() };
    let modes = present(&['a', 'A', 'b', 'F', 'l', 'm', 'M', 'p', 'P', 't', 'T']);
    if modes.len() > 1 {
        return Err(format!("specify one of {}", option_list(&modes)));
    }
    let table = if opts.has('M') {
        Table::Services
    } else if opts.has('F') {
        Table::Fields
    } else if opts.has('P') {
        Table::Params
    } else {
        return Err("no -M, -F or -P option".into());
    };
    let mut edits = present(&['e', 'X', '#']);
    // `name=value` as first operand implies -e (and clashes with -X, -#).
    if !edits.contains(&'e') && opts.operands.first().is_some_and(|a| a.contains('=')) {
        edits.insert(0, 'e');
    }
    if edits.len() > 1 {
        return Err(format!("specify one of {}", option_list(&edits)));
    }
    if let Some(&e) = edits.first() {
        for c in ['d', 'f', 'h', 'H', 'n', 'o', 'x'] {
            if opts.has(c) {
                return Err(format!("specify one of {}", option_list(&[c, e])));
            }
        }
    }
    let not_with: &[char] = match table {
        Table::Services => &['d', 'h', 'H', 'n'],
        _ => &['d', 'n'],
    };
    for &c in not_with {
        if opts.has(c) {
            return Err(format!(
                "with option -{}, do not specify -{c}",
                table.flag()
            ));
        }
    }
    let op = match edits.first() {
        None => None,
        Some('e') => Some(EditOp::Set),
        Some('X') => Some(EditOp::Remove),
        _ => Some(EditOp::CommentOut),
    };
    match (table, op) {
        (Table::Fields, Some(EditOp::Remove)) => {
            return Err("with option -F, do not specify -X".into())
        }
        (Table::Fields, Some(EditOp::CommentOut)) | (Table::Params, Some(EditOp::CommentOut)) => {
            return Err(format!("with option -{}, do not specify -#", table.flag()))
        }
        _ => {}
    }
    if op.is_some() && opts.operands.is_empty() {
        return Err(if op == Some(EditOp::Set) {
            "-e requires name=value argument".into()
        } else {
            "missing service argument".into()
        });
    }
    Ok((table, op))
}

/// Run `postconf -M/-F/-P ...`: show on `out`, warnings and errors on
/// stderr (`postconf: fatal: ...`). Returns the exit status.
pub fn dispatch(opts: &Parsed, config_dir: &str, out: &mut dyn Write) -> i32 {
    let stderr = std::io::stderr();
    let mut warn = stderr.lock();
    let fatal = |msg: &str| {
        eprintln!("postconf: fatal: {msg}");
        1
    };
    let (table, op) = match mode(opts) {
        Ok(m) => m,
        Err(e) => return fatal(&e),
    };
    let path = format!("{config_dir}/master.cf");
    if let Some(op) = op {
        return match edit(&path, table, op, &opts.operands, &mut warn) {
            Ok(()) => 0,
            Err(e) => fatal(&e),
        };
    }

    // Showing: main.cf is read first, with its warnings, as postconf does.
    let explicit_dir = opts
        .arg('c')
        .map(|s| s.to_string())
        .or_else(|| std::env::var("MAIL_CONFIG").ok().filter(|s| !s.is_empty()));
    let overrides = opts.args('o');
    let params = match super::load_params(config_dir, explicit_dir.as_deref(), false, &overrides) {
        Ok(p) => p,
        Err(rc) => return rc,
    };
    let text = match libmail::config::maincf::read_config_file(&path) {
        Ok(t) => t,
        Err(e) => return fatal(&format!("open {path}: {}", strerror(&e))),
    };
    let entries = match load(&text, &path, &mut warn) {
        Ok(e) => e,
        Err(e) => return fatal(&e),
    };

    // `-x`: $service_name, $process_name, the service's own -o options,
    // then main.cf. Undefined names are reported once each.
    let undefined = std::cell::RefCell::new(Vec::<String>::new());
    let expander = |value: &str, ctx: &ExpandCtx| -> String {
        let lookup = |name: &str| -> Option<String> {
            match name {
                "service_name" => Some(ctx.service_name.to_string()),
                "process_name" => Some(ctx.process_name.to_string()),
                _ => ctx
                    .params
                    .and_then(|p| p.get(name).cloned())
                    .or_else(|| params.raw(name)),
            }
        };
        let mut e = Expansion::new();
        match e.expand(value, &lookup) {
            Ok(v) => {
                for u in e.undefined {
                    let mut seen = undefined.borrow_mut();
                    if !seen.contains(&u) {
                        eprintln!("postconf: warning: {path}: undefined parameter: {u}");
                        seen.push(u);
                    }
                }
                v
            }
            Err(err) => {
                eprintln!("postconf: warning: {path}: {err}");
                value.to_string()
            }
        }
    };
    let show = ShowOpts {
        fold: opts.has('f'),
        hide_name: opts.has('h'),
        hide_value: opts.has('H'),
        expand: if opts.has('x') { Some(&expander) } else { None },
    };
    let result = match table {
        Table::Services => show_services(&entries, &show, &opts.operands, out, &mut warn),
        Table::Fields => show_fields(&entries, &show, &opts.operands, out, &mut warn),
        Table::Params => show_params(&entries, &show, &opts.operands, out, &mut warn),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = out.flush();
            fatal(&e)
        }
    }
}

/// The names of every service in `entries` (for callers that need the
/// service list, e.g. for service-derived parameter names).
pub fn service_names(entries: &Entries) -> HashSet<&str> {
    entries.argv.iter().map(|a| a[0].as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = include_str!("../../../tests/data/master.cf.debian");
    const PROTO: &str = include_str!("../../../tests/data/master.cf.proto");

    fn entries(text: &str) -> Entries {
        load(text, "/x/master.cf", &mut Vec::new()).unwrap()
    }

    fn sel(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    type ShowFn =
        fn(&Entries, &ShowOpts, &[String], &mut dyn Write, &mut dyn Write) -> Result<(), String>;

    fn run(f: ShowFn, text: &str, opts: &ShowOpts, selectors: &[&str]) -> (String, String) {
        let e = entries(text);
        let mut out = Vec::new();
        let mut warn = Vec::new();
        f(&e, opts, &sel(selectors), &mut out, &mut warn).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(warn).unwrap(),
        )
    }

    fn m(text: &str, fold: bool) -> String {
        let o = ShowOpts {
            fold,
            ..Default::default()
        };
        run(show_services, text, &o, &[]).0
    }

    fn edit_ok(text: &str, table: Table, op: EditOp, args: &[&str]) -> String {
        edit_text(text, "/x/master.cf", table, op, &sel(args), &mut Vec::new()).unwrap()
    }

    fn edit_err(text: &str, table: Table, op: EditOp, args: &[&str]) -> String {
        edit_text(text, "/x/master.cf", table, op, &sel(args), &mut Vec::new()).unwrap_err()
    }

    // Expected outputs below were produced by Postfix 3.7.11's postconf.

    #[test]
    fn columns() {
        let text = "abcdefghijk unix - - - - - pipe x\nabcdefghij unix - - - - - pipe x\ns1 unix-dgram - - - - - pipe x\ns2 unix - - - 1234567? - pipe x\ns5 unix - - - 1234567 123456789 pipe x\n";
        assert_eq!(
            m(text, false),
            "abcdefghijk unix -       -       -       -       -       pipe x\n\
             abcdefghij unix  -       -       -       -       -       pipe x\n\
             s1         unix-dgram -  -       -       -       -       pipe x\n\
             s2         unix  -       -       -       1234567? -      pipe x\n\
             s5         unix  -       -       -       1234567 123456789 pipe x\n"
        );
    }

    #[test]
    fn debian_stock() {
        let out = m(DEBIAN, false);
        assert!(out.starts_with("smtp       inet  n       -       y       -       -       smtpd\n"));
        assert!(out.contains(
            "relay      unix  -       -       y       -       -       smtp -o syslog_name=postfix/$service_name\n"
        ));
        assert!(out.contains("postlog    unix-dgram n  -       n       -       1       postlogd\n"));
        assert!(out.contains("scalemail-backend unix - n       n       -       2       pipe flags=R user=scalemail argv=/usr/lib/scalemail/bin/scalemail-store ${nexthop} ${user} ${extension}\n"));
        let folded = m(DEBIAN, true);
        assert!(folded.contains(
            "relay      unix  -       -       y       -       -       smtp\n    -o syslog_name=postfix/$service_name\n"
        ));
        assert!(folded.contains("scalemail-backend unix - n       n       -       2       pipe flags=R\n    user=scalemail argv=/usr/lib/scalemail/bin/scalemail-store ${nexthop}\n    ${user} ${extension}\n"));
        assert!(folded.contains("ifmail     unix  -       n       n       -       -       pipe flags=F user=ftn\n    argv=/usr/lib/ifmail/ifmail -r $nexthop ($recipient)\n"));
        assert_eq!(m(PROTO, false).lines().count(), 25);
    }

    #[test]
    fn folding_boundaries() {
        let mut text = String::new();
        for n in [14, 15, 16, 17, 18] {
            text.push_str(&format!("s{n} unix - - - - - pipe {} b\n", "a".repeat(n)));
        }
        let out = m(&text, true);
        let lens: Vec<usize> = out.lines().map(|l| l.len()).collect();
        assert_eq!(lens, vec![78, 79, 78, 5, 79, 5, 61, 24]);
    }

    #[test]
    fn braces_and_options() {
        let text = "submission inet n - n - - smtpd -o syslog_name=postfix/submission -o { smtpd_client_restrictions = permit_sasl_authenticated, reject } -o smtpd_tls_security_level=encrypt -v -D -o\n  milter_macro_daemon_name=ORIGINATING\nfoo unix - - - - - pipe flags=R user=x argv=/bin/echo { a b  c } {x}  {}   $sender\n127.0.0.1:10025 inet n - n - 10 smtpd -o content_filter= -o { x = } -o {y=}\n";
        assert_eq!(
            m(text, false),
            "submission inet  n       -       n       -       -       smtpd -o syslog_name=postfix/submission -o {smtpd_client_restrictions=permit_sasl_authenticated, reject} -o smtpd_tls_security_level=encrypt -v -D -o milter_macro_daemon_name=ORIGINATING\n\
             foo        unix  -       -       -       -       -       pipe flags=R user=x argv=/bin/echo {a b  c} x  $sender\n\
             127.0.0.1:10025 inet n   -       n       -       10      smtpd -o content_filter= -o x= -o y=\n"
        );
        assert_eq!(
            m(text, true),
            "submission inet  n       -       n       -       -       smtpd\n    -o syslog_name=postfix/submission\n    -o {smtpd_client_restrictions=permit_sasl_authenticated, reject}\n    -o smtpd_tls_security_level=encrypt\n    -v -D\n    -o milter_macro_daemon_name=ORIGINATING\n\
             foo        unix  -       -       -       -       -       pipe flags=R user=x\n    argv=/bin/echo {a b  c} x  $sender\n\
             127.0.0.1:10025 inet n   -       n       -       10      smtpd\n    -o content_filter=\n    -o x=\n    -o y=\n"
        );
        // The first non-option is shown without braces; `- x` is a pair.
        assert_eq!(
            m(
                "a unix - - - - - cmd {a b} {c d} -o {e = f}\nb unix - - - - - cmd - x -o a=b\n",
                true
            ),
            "a          unix  -       -       -       -       -       cmd a b {c d} -o {e = f}\n\
             b          unix  -       -       -       -       -       cmd\n    - x\n    -o a=b\n"
        );
    }

    #[test]
    fn selectors() {
        let text = "a unix - - - - - smtpd -o y=1 -o z=0\nb unix - - - - - smtpd x\na unix - - - - - smtpd -o x=2 -o z=3\n";
        let o = ShowOpts::default();
        let (out, warn) = run(show_services, text, &o, &["a", "a"]);
        assert_eq!(out.lines().count(), 4);
        assert_eq!(warn, "");
        let (out, _) = run(show_services, text, &o, &["b", "a/unix"]);
        assert_eq!(out.lines().map(|l| &l[..1]).collect::<String>(), "aba");
        let (out, warn) = run(show_services, text, &o, &["c", "a/inet", "*/unix", "a/"]);
        assert_eq!(out.lines().count(), 5);
        assert_eq!(
            warn,
            "postconf: warning: unmatched request: \"c\"\npostconf: warning: unmatched request: \"a/inet\"\n"
        );
        let e = entries(text);
        for bad in ["/unix", "a/unix/x", "a*", "*/u*", ""] {
            let err = show_services(&e, &o, &sel(&[bad]), &mut Vec::new(), &mut Vec::new());
            assert_eq!(
                err,
                Err("-M option requires service_name[/type]".into()),
                "{bad}"
            );
        }
        let err = show_fields(
            &e,
            &o,
            &sel(&["a/unix/command/x"]),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(
            err,
            Err("-F option requires service_name[/type[/field]]".into())
        );
        let err = show_fields(
            &e,
            &o,
            &sel(&["a/unix/foo"]),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(err, Err("invalid service attribute name: \"foo\"".into()));
        let err = show_params(
            &e,
            &o,
            &sel(&["a/unix/y/z"]),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(
            err,
            Err("-P option requires service_name[/type[/parameter]]".into())
        );
        // `a//x` is `a/x`: type x.
        let (out, warn) = run(show_params, text, &o, &["a//x"]);
        assert_eq!(out, "");
        assert_eq!(warn, "postconf: warning: unmatched request: \"a//x\"\n");
    }

    #[test]
    fn params_are_shared_by_name_and_type() {
        let text = "a unix - - - - - smtpd -o y=1 -o z=0\nb unix - - - - - smtpd x\na unix - - - - - smtpd -o x=2 -o z=3\n";
        let o = ShowOpts::default();
        let (out, _) = run(show_params, text, &o, &[]);
        assert_eq!(
            out,
            "a/unix/x = 2\na/unix/y = 1\na/unix/z = 3\na/unix/x = 2\na/unix/y = 1\na/unix/z = 3\n"
        );
        // An entry sees the table only once one up to it has filled it.
        let text = "a unix - - - - - cmd\na unix - - - - - cmd -o x=1\nb unix - - - - - cmd -o q\nb unix - - - - - cmd -o y=2\nc unix - - - - - cmd -o y=2\nc unix - - - - - cmd\n";
        let (out, _) = run(show_params, text, &o, &[]);
        assert_eq!(
            out,
            "a/unix/x = 1\nb/unix/y = 2\nc/unix/y = 2\nc/unix/y = 2\n"
        );
        // Only daemon options count; values are whitespace-collapsed.
        let text = "x unix - - - - - smtpd -o q -o =x -o a=b=c -o  b = c -o d=e\ny unix - - - - - cmd -o {p = a  b}\n";
        let (out, _) = run(show_params, text, &o, &[]);
        assert_eq!(out, "x/unix/a = b=c\ny/unix/p = a b\n");
        let h = ShowOpts {
            hide_name: true,
            ..Default::default()
        };
        assert_eq!(run(show_params, text, &h, &["x/unix/a"]).0, "b=c\n");
        let hv = ShowOpts {
            hide_value: true,
            ..Default::default()
        };
        assert_eq!(
            run(show_params, text, &hv, &["*/*/*"]).0,
            "x/unix/a\ny/unix/p\n"
        );
    }

    #[test]
    fn params_fold() {
        let mut text = String::new();
        for n in [64, 65, 66] {
            text.push_str(&format!(
                "x unix - - - - - cmd -o {{p{n} = a  {}}}\n",
                "w".repeat(n)
            ));
        }
        let f = ShowOpts {
            fold: true,
            ..Default::default()
        };
        let (out, _) = run(show_params, &text, &f, &[]);
        let lens: Vec<usize> = out.lines().map(|l| l.len()).collect();
        // Three entries share x/unix: each shows all three parameters.
        assert_eq!(lens, vec![79, 80, 14, 70, 79, 80, 14, 70, 79, 80, 14, 70]);
    }

    #[test]
    fn fields() {
        let o = ShowOpts::default();
        let (out, _) = run(show_fields, "pickup unix n - y 60 1 pickup\n", &o, &[]);
        assert_eq!(
            out,
            "pickup/unix/service = pickup\npickup/unix/type = unix\npickup/unix/private = n\npickup/unix/unprivileged = -\npickup/unix/chroot = y\npickup/unix/wakeup = 60\npickup/unix/process_limit = 1\npickup/unix/command = pickup\n"
        );
        let mut text = String::new();
        for n in [61, 62] {
            text.push_str(&format!("x{n} unix - - - - - {}\n", "a".repeat(n)));
        }
        let (out, _) = run(show_fields, &text, &o, &["*/*/command"]);
        assert_eq!(
            out,
            format!(
                "x61/unix/command = {}\nx62/unix/command = \n    {}\n",
                "a".repeat(61),
                "a".repeat(62)
            )
        );
        let f = ShowOpts {
            fold: true,
            ..Default::default()
        };
        let (out, _) = run(
            show_fields,
            "w unix - - - - - cmd -o a=b -o c=d x\n",
            &f,
            &["w/unix/command"],
        );
        assert_eq!(out, "w/unix/command = cmd\n    -o a=b\n    -o c=d\n    x\n");
        let h = ShowOpts {
            hide_name: true,
            ..Default::default()
        };
        let (out, _) = run(
            show_fields,
            "w unix - - - - - ab x y\n",
            &h,
            &["w/unix/command", "w/unix/type"],
        );
        // Postfix prints "abxy" here; Facteur keeps the spaces.
        assert_eq!(out, "ab x y\nunix\n");
        let hv = ShowOpts {
            hide_value: true,
            ..Default::default()
        };
        let (out, _) = run(
            show_fields,
            "w unix - - - - - ab x y\n",
            &hv,
            &["w/unix/command"],
        );
        assert_eq!(out, "w/unix/command\n");
    }

    #[test]
    fn expansion_hook() {
        let x = |v: &str, c: &ExpandCtx| -> String {
            let own = c
                .params
                .and_then(|p| p.get("a"))
                .cloned()
                .unwrap_or_default();
            v.replace("$service_name", c.service_name)
                .replace("$process_name", c.process_name)
                .replace("$a", &own)
        };
        let o = ShowOpts {
            expand: Some(&x),
            ..Default::default()
        };
        let text =
            "x unix - - - - - /usr/cmd -o a=1 -o b=$a -o {e = $service_name/$process_name z}\n";
        assert_eq!(
            run(show_services, text, &o, &[]).0,
            "x          unix  -       -       -       -       -       /usr/cmd -o a=1 -o b=1 -o {e=x/cmd z}\n"
        );
        assert_eq!(
            run(show_params, text, &o, &[]).0,
            "x/unix/a = 1\nx/unix/b = 1\nx/unix/e = x/cmd z\n"
        );
    }

    const ORIG: &str = "# head comment\nsmtp      inet  n       -       y       -       -       smtpd\n  -o a=1\n#  -o commented=1\n  -o   b=2\npickup    unix  n       -       y       60      1       pickup\n\n# blank above\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\n";

    #[test]
    fn edit_entries() {
        assert_eq!(
            edit_ok(ORIG, Table::Services, EditOp::Set, &["smtp/inet=smtp inet n - n - - smtpd -o x=1"]),
            "# head comment\nsmtp       inet  n       -       n       -       -       smtpd\n    -o x=1\n#  -o commented=1\npickup    unix  n       -       y       60      1       pickup\n\n# blank above\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\n"
        );
        assert_eq!(
            edit_ok(ORIG, Table::Services, EditOp::Set, &["new/unix=new unix - - n - - pipe flags=R user=x argv=/bin/cat -o y=2"]),
            format!("{ORIG}new        unix  -       -       n       -       -       pipe flags=R user=x\n    argv=/bin/cat -o y=2\n")
        );
        // The new entry's own name/type also selects what it replaces.
        assert_eq!(
            edit_ok(
                ORIG,
                Table::Services,
                EditOp::Set,
                &["foo/unix=pickup unix - - - - - pickup"]
            ),
            ORIG.replace(
                "pickup    unix  n       -       y       60      1       pickup",
                "pickup     unix  -       -       -       -       -       pickup"
            )
        );
        assert_eq!(
            edit_ok(ORIG, Table::Services, EditOp::Remove, &["smtp/inet"]),
            "# head comment\n#  -o commented=1\npickup    unix  n       -       y       60      1       pickup\n\n# blank above\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\n"
        );
        assert_eq!(
            edit_ok(ORIG, Table::Services, EditOp::CommentOut, &["relay/unix"]),
            ORIG.replace("relay ", "#relay ")
                .replace("        -o syslog", "#        -o syslog")
        );
        assert_eq!(
            edit_ok(
                ORIG,
                Table::Services,
                EditOp::Remove,
                &["pickup/*", "nope/unix"]
            ),
            ORIG.replace(
                "pickup    unix  n       -       y       60      1       pickup\n",
                ""
            )
        );
        assert_eq!(
            edit_ok(ORIG, Table::Services, EditOp::CommentOut, &["*/unix"]),
            ORIG.replace("pickup ", "#pickup ")
                .replace("relay ", "#relay ")
                .replace("        -o syslog", "#        -o syslog")
        );
    }

    #[test]
    fn edit_fields_and_params_move_the_entry() {
        assert_eq!(
            edit_ok(ORIG, Table::Fields, EditOp::Set, &["smtp/inet/chroot=n"]),
            "# head comment\n#  -o commented=1\nsmtp       inet  n       -       n       -       -       smtpd\n    -o a=1\n    -o b=2\npickup    unix  n       -       y       60      1       pickup\n\n# blank above\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\n"
        );
        assert_eq!(
            edit_ok(ORIG, Table::Fields, EditOp::Set, &["pickup/unix/wakeup=30?"]),
            "# head comment\nsmtp      inet  n       -       y       -       -       smtpd\n  -o a=1\n#  -o commented=1\n  -o   b=2\n\n# blank above\npickup     unix  n       -       y       30?     1       pickup\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\n"
        );
        let out = edit_ok(
            ORIG,
            Table::Fields,
            EditOp::Set,
            &["pickup/unix/command={a b} { c } -o { x = y z }"],
        );
        assert!(out.contains(
            "pickup     unix  n       -       y       60      1       {a b} c -o {x = y z}\n"
        ));
        let out = edit_ok(ORIG, Table::Fields, EditOp::Set, &["pickup/unix/private="]);
        assert!(out.contains("pickup     unix          -       y       60      1       pickup\n"));
        let out = edit_ok(ORIG, Table::Params, EditOp::Set, &["smtp/inet/a=9"]);
        assert!(out.contains("smtp       inet  n       -       y       -       -       smtpd\n    -o a=9\n    -o b=2\npickup"));
        let out = edit_ok(ORIG, Table::Params, EditOp::Set, &["smtp/inet/c=3"]);
        assert!(out.contains("    -o a=1\n    -o b=2\n    -o c=3\npickup"));
        let out = edit_ok(ORIG, Table::Params, EditOp::Remove, &["smtp/inet/a"]);
        assert!(out.contains("smtpd\n    -o b=2\npickup"));
        let out = edit_ok(ORIG, Table::Params, EditOp::Set, &["*/*/zz=1"]);
        assert_eq!(
            out,
            "# head comment\n#  -o commented=1\nsmtp       inet  n       -       y       -       -       smtpd\n    -o a=1\n    -o b=2\n    -o zz=1\n\n# blank above\npickup     unix  n       -       y       60      1       pickup\n    -o zz=1\n# trailing\nrelay      unix  -       -       y       -       -       smtp\n    -o syslog_name=postfix/$service_name\n    -o zz=1\n"
        );
        // A -o is inserted before the first non-option argument.
        let out = edit_ok(
            "x unix - - - - - pipe -v flags=R\n",
            Table::Params,
            EditOp::Set,
            &["x/unix/a=b"],
        );
        assert_eq!(out, "x          unix  -       -       -       -       -       pipe -v\n    -o a=b\n    flags=R\n");
        let mut warn = Vec::new();
        let out = edit_text(
            ORIG,
            "/x",
            Table::Fields,
            EditOp::Set,
            &sel(&["nope/unix/chroot=n"]),
            &mut warn,
        )
        .unwrap();
        assert_eq!(out, ORIG);
        assert_eq!(
            String::from_utf8(warn).unwrap(),
            "postconf: warning: unmatched service_name/type: \"nope/unix/chroot=n\"\n"
        );
    }

    #[test]
    fn edit_errors() {
        let f = Table::Fields;
        let p = Table::Params;
        let s = Table::Services;
        let set = EditOp::Set;
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/wakeup=x"]),
            "invalid wakeup field \"x\" in \"x\""
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/type=foo"]),
            "invalid type field \"foo\" in \"foo\""
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/service=a b"]),
            "-Fe does not accept whitespace in non-command field"
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/bogus=n"]),
            "invalid service attribute name: \"bogus\""
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix=n"]),
            "-Fe or -FX requires service_name/type/field_name"
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/*=n"]),
            "-Fe does not accept wild-card field name"
        );
        assert_eq!(
            edit_err(ORIG, s, set, &["pickup/unix=pickup unix x"]),
            "bad field count: \"pickup/unix=pickup unix x\""
        );
        assert_eq!(
            edit_err(ORIG, s, set, &["pickup/unix=pickup unix x - - - - pickup"]),
            "invalid private field \"x\" in \"pickup unix x - - - - pickup\""
        );
        assert_eq!(
            edit_err(ORIG, s, set, &["pickup=pickup unix - - n - - pickup"]),
            "-Me, -MX or -M# requires service_name/type"
        );
        assert_eq!(
            edit_err(ORIG, s, set, &["pickup/unix=x", "pickup/unix"]),
            "missing '=' after attribute name: \"pickup/unix\""
        );
        assert_eq!(
            edit_err(ORIG, p, set, &["smtp/inet/a=x y"]),
            "-Pe does not accept whitespace in parameter value"
        );
        assert_eq!(
            edit_err(ORIG, p, set, &["a/unix/="]),
            "-Pe or -PX requires service_name/type/parameter"
        );
        assert_eq!(
            edit_err(ORIG, p, set, &["a/unix/*=1"]),
            "-Pe does not accept wild-card parameter name"
        );
        assert_eq!(
            edit_err(ORIG, s, EditOp::Remove, &["a/b=c"]),
            "-X or -# requires names without value"
        );
        assert_eq!(
            edit_err(ORIG, s, EditOp::Remove, &["a/b\nc"]),
            "-Me, -Fe, -Pe, -X, or -# accept no multi-line input"
        );
        assert_eq!(
            edit_err(ORIG, s, EditOp::Remove, &["  #a/b"]),
            "-Me, -Fe, -Pe, -X, or -# accept no comment input"
        );
        assert_eq!(
            edit_err("y unix x - - - - smtpd\n", f, set, &["y/unix/private=n"]),
            "invalid private field \"x\" in \"y unix x - - - - smtpd \""
        );
        assert_eq!(
            edit_err("y\n unix - - - - - smtpd\n", s, EditOp::Remove, &["y/unix"]),
            "file /x/master.cf: line 1: specify service name and type on the same line"
        );
        assert_eq!(
            edit_err("# c\nname=x unix - - - - - smtpd\n", s, EditOp::Remove, &["y/unix"]),
            "file /x/master.cf: line 2: service name syntax \"name=x\" is unsupported with -Me, -Fe, -Pe, -X, or -#"
        );
        assert_eq!(
            edit_err(ORIG, f, set, &["pickup/unix/command="]),
            "-Fe does not accept an empty command field"
        );
        // Entries elsewhere are not checked.
        assert_eq!(
            edit_ok(
                "x unix - - - - - smtpd\ny unix x - - - - smtpd\n",
                s,
                EditOp::Remove,
                &["x/unix"]
            ),
            "y unix x - - - - smtpd\n"
        );
    }

    #[test]
    fn edit_keeps_lines_without_final_newline() {
        // Postfix glues the new entry onto the last line; Facteur does not.
        assert_eq!(
            edit_ok("x unix n - y 60 1 pickup\n# trailing", Table::Services, EditOp::Set, &["new/unix=new unix - - - - - cmd"]),
            "x unix n - y 60 1 pickup\n# trailing\nnew        unix  -       -       -       -       -       cmd\n"
        );
        assert_eq!(
            edit_ok(
                "x unix n - y 60 1 pickup\n  -o a=b",
                Table::Services,
                EditOp::CommentOut,
                &["x/unix"]
            ),
            "#x unix n - y 60 1 pickup\n#  -o a=b"
        );
        assert_eq!(
            edit_ok("", Table::Services, EditOp::Remove, &["x/unix"]),
            ""
        );
    }

    #[test]
    fn option_modes() {
        let p = |args: &[&str]| {
            let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let parsed = libmail::cli::getopt(&v, "aAbc:C:deEfhHlmMno:pPtTvxX#F").unwrap();
            mode(&parsed)
        };
        assert_eq!(p(&["-M"]), Ok((Table::Services, None)));
        assert_eq!(
            p(&["-M", "a/b=c"]),
            Ok((Table::Services, Some(EditOp::Set)))
        );
        assert_eq!(p(&["-P", "a/b/c", "a/b/d=e"]), Ok((Table::Params, None)));
        assert_eq!(
            p(&["-PX", "a/b/c"]),
            Ok((Table::Params, Some(EditOp::Remove)))
        );
        assert_eq!(
            p(&["-M#", "a/b"]),
            Ok((Table::Services, Some(EditOp::CommentOut)))
        );
        assert_eq!(p(&["-FMP"]), Err("specify one of -F -M -P".into()));
        assert_eq!(p(&["-MX", "a/b=c"]), Err("specify one of -e -X".into()));
        assert_eq!(p(&["-M#", "a/b=c"]), Err("specify one of -e -#".into()));
        assert_eq!(p(&["-M#X"]), Err("specify one of -X -#".into()));
        assert_eq!(p(&["-MXd"]), Err("specify one of -d -X".into()));
        assert_eq!(p(&["-PXx", "a/b/c"]), Err("specify one of -x -X".into()));
        assert_eq!(p(&["-Mx", "a/b=c"]), Err("specify one of -e -x".into()));
        assert_eq!(p(&["-Mm"]), Err("specify one of -m -M".into()));
        assert_eq!(p(&["-Mt"]), Err("specify one of -M -t".into()));
        assert_eq!(p(&["-Fn"]), Err("with option -F, do not specify -n".into()));
        assert_eq!(p(&["-Mh"]), Err("with option -M, do not specify -h".into()));
        assert_eq!(
            p(&["-FX", "a/b/c"]),
            Err("with option -F, do not specify -X".into())
        );
        assert_eq!(
            p(&["-P#", "a/b/c"]),
            Err("with option -P, do not specify -#".into())
        );
        assert_eq!(p(&["-Me"]), Err("-e requires name=value argument".into()));
        assert_eq!(p(&["-MX"]), Err("missing service argument".into()));
        assert_eq!(p(&["-Fh"]), Ok((Table::Fields, None)));
    }

    #[test]
    fn load_reports_like_postconf() {
        let mut warn = Vec::new();
        let err = load(
            "a unix - - - - - smtpd {abc\nb unix x - - - - smtpd\n",
            "/m",
            &mut warn,
        )
        .err();
        assert_eq!(
            err,
            Some("invalid private field \"x\" in \"b unix x - - - - smtpd\"".into())
        );
        assert_eq!(
            String::from_utf8(warn).unwrap(),
            "postconf: warning: master.cf: missing '}' in \"{abc\"\n"
        );
        let err = load("a unix\n", "/m", &mut Vec::new()).err();
        assert_eq!(err, Some("file /m: line 1: bad field count".into()));
        // Facteur-only problems do not stop postconf.
        assert!(load(
            "a inet - - - - - smtpd\nb unix - - - - - tlsmgr\n",
            "/m",
            &mut Vec::new()
        )
        .is_ok());
    }

    #[test]
    fn misc() {
        assert_eq!(format_line("a  b\tc", false), "a b c\n");
        assert_eq!(format_line("x =", false), "x =\n");
        assert_eq!(
            strerror(&std::io::Error::from_raw_os_error(2)),
            "No such file or directory"
        );
        assert_eq!(option_list(&['#', 'X', 'e']), "-e -X -#");
        assert_eq!(parse_pattern("a//x", 1, 3), Some(sel(&["a", "x", "*"])));
        let e = entries("a unix - - - - - x\nb unix - - - - - y\n");
        assert_eq!(service_names(&e).len(), 2);
    }
}
