//! postmap(1): build, query, dump and edit lookup tables, with Postfix's
//! flags, messages and exit statuses. postalias(1) runs the same engine
//! with its own source format ([`crate::postalias`]).
//!
//! ```text
//! postmap [-bfFhimnNoprsuUvw] [-c config_dir] [-d key] [-q key] [[type:]file...]
//! ```
//!
//! * build (no `-q`/`-s`/`-d`): each `type:file` (type defaults to
//!   `$default_database_type`) from the text `file` into `file.db`
//!   (`hash`, `btree`) or `file.cdb` (`cdb`), written to a temporary file
//!   and renamed into place;
//! * `-q key`: print the value from the first table that has it; exit 0
//!   when found, 1 when not. `-q -`: keys from standard input, one per
//!   line, `key<TAB>value` for each hit; exit 0 when any was found. Works
//!   on every table type libmail opens;
//! * `-s`: dump the first table as `key<TAB>value` (after checking it
//!   whole);
//! * `-d key` / `-d -`: delete keys (exit 0 when something was deleted);
//! * `-i`: add `key value` lines from standard input to existing tables;
//! * `-f` keep case, `-r` replace duplicates, `-w` ignore them silently
//!   (default: warn, first wins), `-p` mode 0644 instead of the source's,
//!   `-o` do not become the source file's owner (as root), `-c DIR`.
//!
//! `-N` and `-n` (store keys with or without a terminating NUL) are
//! accepted and have no effect: Facteur's `.db` format stores lengths, and
//! its cdb reader finds keys either way. `-u`, `-U` and `-v` are accepted.
//! `-b`, `-h`, `-m` (message headers/body as query keys) and `-F` are not
//! supported yet and say so.
//!
//! Differences from Postfix, by design: every change (build, `-i`, `-d`)
//! writes a new file and renames it, so readers never see a half-written
//! table and a rebuild does not keep a previous `.db` file's mode (the mode
//! comes from the source file, as for a new file in Postfix); `-i` and
//! `-d` rewrite the whole table (O(size), not O(keys)).

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libmail::cli::getopt;
use libmail::config::check::parse_bool;
use libmail::config::lines::{logical_lines, LineProblem};
use libmail::config::maincf::{read_config_file, MainCf};
use libmail::config::params::{split_list, Params};
use libmail::config::{self, Severity};
use libmail::table::cdb::{CdbTable, CdbWriter};
use libmail::table::indexed::{Added, IndexedTable, IndexedWriter, OnDuplicate, TableWriter};
pub use libmail::table::source::{parse_map_line, Parsed};
use libmail::table::{self, OpenOptions, Table, TableError};

/// Which program is running: the two share everything but the source
/// format and a few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Postmap,
    Postalias,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Postmap => "postmap",
            Program::Postalias => "postalias",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Program::Postmap => {
                "usage: postmap [-bfFhimnNoprsuUvw] [-c config_dir] [-d key] [-q key] [map_type:]file..."
            }
            Program::Postalias => {
                "usage: postalias [-Nfinoprsuvw] [-c config_dir] [-d key] [-q key] [map_type:]file..."
            }
        }
    }

    fn spec(self) -> &'static str {
        match self {
            Program::Postmap => "bc:d:fFhimnNopq:rsuUvw",
            Program::Postalias => "c:d:finNopq:rsuUvw",
        }
    }

    /// The separator `-s` and `-q -` put after a key.
    fn key_suffix(self) -> &'static str {
        match self {
            Program::Postmap => "",
            Program::Postalias => ":",
        }
    }
}

const HELP_POSTMAP: &str = "
Build (default), query or edit Postfix lookup tables.
  postmap [type:]file...     build file.db (hash, btree) or file.cdb (cdb) from file
  -q key / -q -              print the value (keys from stdin with -)
  -s                         dump the first table
  -d key / -d -              delete key(s)
  -i                         add \"key value\" lines from stdin
  -f                         keep the case of keys
  -r / -w                    replace / silently ignore duplicate keys
  -p                         mode 0644 instead of the source file's
  -o                         as root, do not become the source file's owner
  -c dir                     configuration directory (default_database_type)
  -N, -n, -u, -U, -v         accepted
See postmap(1).";

const HELP_POSTALIAS: &str = "
Build (default), query or edit aliases(5) tables.
  postalias [type:]file...   build file.db (hash, btree) or file.cdb (cdb) from file
  -q key / -q -              print the value (keys from stdin with -)
  -s                         dump the first table as \"key:<TAB>value\"
  -d key / -d -              delete key(s)
  -i                         add \"name: value\" lines from stdin
  -f, -r, -w, -p, -o, -c dir as for postmap
See postalias(1).";

/// postmap's entry point.
pub fn main(args: Vec<String>) -> i32 {
    run(Program::Postmap, args)
}

/// A message in Postfix's voice.
struct Say {
    prog: &'static str,
}

impl Say {
    fn warn(&self, msg: &str) {
        eprintln!("{}: warning: {msg}", self.prog);
    }
    fn fatal(&self, msg: &str) -> i32 {
        eprintln!("{}: fatal: {msg}", self.prog);
        1
    }
}

/// What to do on a duplicate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dups {
    Warn,
    Replace,
    Ignore,
}

/// Everything the modes need.
struct Ctx {
    prog: Program,
    say: Say,
    keep_case: bool,
    dups: Dups,
    /// `-p`: 0644 instead of the source's mode.
    plain_mode: bool,
    /// `-o`: stay root.
    as_root: bool,
    default_type: String,
    /// Reject non-UTF-8 input lines (`smtputf8_enable`).
    utf8: bool,
    /// For postalias's YP_MASTER_NAME.
    hostname: String,
    /// `-F`: values are lists of files, stored base64-encoded, decoded on
    /// output (TLS SNI maps).
    file_values: bool,
}

/// Run postmap or postalias.
pub fn run(prog: Program, args: Vec<String>) -> i32 {
    let say = Say { prog: prog.name() };
    if args.iter().any(|a| a == "--help") {
        println!(
            "{}{}",
            prog.usage(),
            if prog == Program::Postmap {
                HELP_POSTMAP
            } else {
                HELP_POSTALIAS
            }
        );
        return 0;
    }
    let opts = match getopt(&args, prog.spec()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{}: {e}", prog.name());
            return say.fatal(prog.usage());
        }
    };
    let distinct = [opts.has('q'), opts.has('d'), opts.has('s')]
        .iter()
        .filter(|&&b| b)
        .count();
    if distinct > 1 || opts.args('q').len() > 1 || opts.args('d').len() > 1 {
        return say.fatal("specify only one of -s -q or -d");
    }
    for unsupported in ['b', 'h', 'm'] {
        if opts.has(unsupported) {
            return say.fatal(&format!(
                "option -{unsupported} is not supported by this postmap yet"
            ));
        }
    }
    // Configuration: Postfix insists on main.cf.
    let explicit = opts
        .arg('c')
        .map(str::to_string)
        .or_else(|| std::env::var("MAIL_CONFIG").ok().filter(|s| !s.is_empty()));
    let config_dir = config::config_directory(explicit.as_deref());
    let main_path = format!("{config_dir}/main.cf");
    let text = match read_config_file(&main_path) {
        Ok(t) => t,
        Err(e) => return say.fatal(&format!("open {main_path}: {}", io_reason(&e))),
    };
    let (main, diags) = MainCf::parse(&text, &main_path);
    if let Some(d) = diags.iter().find(|d| d.severity == Severity::Error) {
        return say.fatal(&d.postfix_located());
    }
    let params = Params::new(&config_dir, main);
    let value = |name: &str, fallback: &str| params.value(name).unwrap_or_else(|_| fallback.into());
    let default_type = value("default_database_type", "hash");
    let utf8 = parse_bool(&value("smtputf8_enable", "yes")).unwrap_or(true) && !opts.has('U');
    let hostname = value("myhostname", "localhost");

    if opts.operands.is_empty() {
        return say.fatal(prog.usage());
    }
    let ctx = Ctx {
        prog,
        say,
        keep_case: opts.has('f'),
        dups: if opts.has('r') {
            Dups::Replace
        } else if opts.has('w') {
            Dups::Ignore
        } else {
            Dups::Warn
        },
        plain_mode: opts.has('p'),
        as_root: opts.has('o'),
        default_type,
        utf8,
        hostname,
        file_values: opts.has('F') && prog == Program::Postmap,
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let rc = if let Some(key) = opts.arg('q') {
        query(&ctx, key, &opts.operands, &mut out)
    } else if opts.has('s') {
        dump(&ctx, &opts.operands[0], &mut out)
    } else if let Some(key) = opts.arg('d') {
        delete(&ctx, key, &opts.operands)
    } else {
        let mut rc = 0;
        for op in &opts.operands {
            rc = build(&ctx, op, opts.has('i'));
            if rc != 0 {
                break;
            }
        }
        rc
    };
    let _ = out.flush();
    rc
}

/// `No such file or directory`, not `... (os error 2)`.
fn io_reason(e: &io::Error) -> String {
    let s = match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    };
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `type:name`, with the type defaulting to `default_database_type`.
fn split_operand<'a>(op: &'a str, default_type: &'a str) -> (&'a str, &'a str) {
    match op.split_once(':') {
        Some((t, n))
            if !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') =>
        {
            (t, n)
        }
        _ => (default_type, op),
    }
}

/// Types postmap can build.
fn output_path(kind: &str, name: &str) -> Option<String> {
    match kind {
        "hash" | "btree" => Some(format!("{name}.db")),
        "cdb" => Some(format!("{name}.cdb")),
        _ => None,
    }
}

fn unsupported_build(kind: &str) -> String {
    if table::TYPES.contains(&kind) || matches!(kind, "environ" | "tcp" | "socketmap") {
        format!("unsupported dictionary type: {kind} does not support bulk-mode creation.")
    } else {
        format!(
            "unsupported dictionary type: {kind} (this postmap builds hash, btree and cdb tables)"
        )
    }
}

/// Open a table for `-q`: indexed types directly (relative paths are
/// fine for postmap), the others through [`table::open`], with a relative
/// file name made absolute.
fn open_table(kind: &str, name: &str, keep_case: bool) -> Result<Box<dyn Table>, TableError> {
    let opts = OpenOptions { keep_case };
    let spec = format!("{kind}:{name}");
    match kind {
        "hash" | "btree" => Ok(Box::new(IndexedTable::open_path(&spec, name, &opts)?)),
        "cdb" => Ok(Box::new(CdbTable::open_path(&spec, name, &opts)?)),
        "regexp" | "pcre" | "cidr" | "texthash" if !name.starts_with('/') => {
            let abs = std::env::current_dir()
                .map(|d| d.join(name).to_string_lossy().into_owned())
                .unwrap_or_else(|_| name.to_string());
            table::open(&format!("{kind}:{abs}"), &opts)
        }
        _ => table::open(&spec, &opts),
    }
}

// ---------------------------------------------------------------------------
// Queries.

fn query(ctx: &Ctx, key: &str, operands: &[String], out: &mut dyn Write) -> i32 {
    let mut tables = Vec::new();
    for op in operands {
        let (kind, name) = split_operand(op, &ctx.default_type);
        match open_table(kind, name, ctx.keep_case) {
            Ok(t) => tables.push(t),
            Err(e) => return ctx.say.fatal(&e.to_string()),
        }
    }
    let lookup = |k: &str| -> Result<Option<String>, TableError> {
        for t in &tables {
            if let Some(v) = t.lookup(k)? {
                if !ctx.file_values {
                    return Ok(Some(v));
                }
                return match decode_file_value(&v) {
                    Some(decoded) => Ok(Some(decoded)),
                    None => {
                        ctx.say.warn(&format!(
                            "table {}: key {k}: malformed BASE64 value: {v}",
                            table_file_name(t.name())
                        ));
                        Err(TableError::Temporary(format!(
                            "table {}: query error",
                            table_file_name(t.name())
                        )))
                    }
                };
            }
        }
        Ok(None)
    };
    if key != "-" {
        return match lookup(key) {
            Ok(Some(v)) => {
                let _ = writeln!(out, "{v}");
                0
            }
            Ok(None) => 1,
            Err(e) => ctx.say.fatal(&e.to_string()),
        };
    }
    let mut found = false;
    let stdin = io::stdin();
    let mut line = Vec::new();
    let mut input = stdin.lock();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return ctx.say.fatal(&format!("read stdin: {}", io_reason(&e))),
        }
        let k = trim_newline(&line);
        let k = String::from_utf8_lossy(k);
        match lookup(&k) {
            Ok(Some(v)) => {
                found = true;
                if writeln!(out, "{k}{}\t{v}", ctx.prog.key_suffix()).is_err() {
                    return 0;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = out.flush();
                return ctx.say.fatal(&e.to_string());
            }
        }
    }
    if found {
        0
    } else {
        1
    }
}

/// Largest file `-F` reads into one value.
const MAX_FILE_VALUE: u64 = 1 << 20;

/// `-F` build: the files named in `value` (commas and/or blanks), their
/// contents joined by a newline, base64-encoded.
fn encode_file_value(value: &str) -> Result<String, String> {
    use base64::Engine;
    let mut joined: Vec<u8> = Vec::new();
    for (i, file) in split_list(value).into_iter().enumerate() {
        let mut f =
            std::fs::File::open(file).map_err(|e| format!("open {file}: {}", io_reason(&e)))?;
        if i > 0 {
            joined.push(b'\n');
        }
        let before = joined.len();
        (&mut f)
            .take(MAX_FILE_VALUE + 1)
            .read_to_end(&mut joined)
            .map_err(|e| format!("read {file}: {}", io_reason(&e)))?;
        if (joined.len() - before) as u64 > MAX_FILE_VALUE {
            return Err(format!(
                "{file}: file is larger than {MAX_FILE_VALUE} bytes"
            ));
        }
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(joined))
}

/// `-F` query and dump: the stored base64 value decoded.
fn decode_file_value(value: &str) -> Option<String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `hash:/x/y` → `hash:/x/y.db`, as Postfix names tables in query errors.
fn table_file_name(spec: &str) -> String {
    match spec.split_once(':') {
        Some((kind, name)) => match output_path(kind, name) {
            Some(path) => format!("{kind}:{path}"),
            None => spec.to_string(),
        },
        None => spec.to_string(),
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// An opened indexed table, either format.
enum Indexed {
    Db(IndexedTable),
    Cdb(CdbTable),
}

impl Indexed {
    fn open(kind: &str, name: &str, keep_case: bool) -> Result<Indexed, TableError> {
        let opts = OpenOptions { keep_case };
        let spec = format!("{kind}:{name}");
        Ok(if kind == "cdb" {
            Indexed::Cdb(CdbTable::open_path(&spec, name, &opts)?)
        } else {
            Indexed::Db(IndexedTable::open_path(&spec, name, &opts)?)
        })
    }

    fn verify(&self) -> Result<(), TableError> {
        match self {
            Indexed::Db(t) => t.verify(),
            Indexed::Cdb(t) => t.verify().map(|_| ()),
        }
    }

    /// Call `f` for every entry, in file order.
    fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> io::Result<()>) -> Result<(), String> {
        let mut run = |it: &mut dyn Iterator<Item = Result<(&[u8], &[u8]), TableError>>| {
            for e in it {
                let (k, v) = e.map_err(|e| e.to_string())?;
                f(k, v).map_err(|e| io_reason(&e))?;
            }
            Ok(())
        };
        match self {
            Indexed::Db(t) => run(&mut t.iter()),
            Indexed::Cdb(t) => run(&mut t.iter()),
        }
    }

    fn contains(&self, key: &[u8]) -> Result<bool, TableError> {
        Ok(match self {
            Indexed::Db(t) => t.lookup_bytes(key)?.is_some(),
            Indexed::Cdb(t) => t.lookup_bytes(key)?.is_some(),
        })
    }

    fn path(&self) -> &Path {
        match self {
            Indexed::Db(t) => t.path(),
            Indexed::Cdb(t) => t.path(),
        }
    }
}

fn dump(ctx: &Ctx, operand: &str, out: &mut dyn Write) -> i32 {
    let (kind, name) = split_operand(operand, &ctx.default_type);
    if output_path(kind, name).is_none() {
        // Open it first so a missing file or an unknown type is reported
        // as such.
        if let Err(e) = open_table(kind, name, ctx.keep_case) {
            return ctx.say.fatal(&e.to_string());
        }
        return ctx.say.fatal(&format!(
            "table {kind}:{name}: sequence operation is not supported"
        ));
    }
    let t = match Indexed::open(kind, name, ctx.keep_case) {
        Ok(t) => t,
        Err(e) => return ctx.say.fatal(&e.to_string()),
    };
    if let Err(e) = t.verify() {
        return ctx.say.fatal(&e.to_string());
    }
    let suffix = ctx.prog.key_suffix().as_bytes();
    let table_name = format!("{kind}:{}", output_path(kind, name).unwrap_or_default());
    let r = t.for_each(|k, v| {
        let decoded;
        let v = if ctx.file_values {
            match decode_file_value(&String::from_utf8_lossy(v)) {
                Some(d) => {
                    decoded = d;
                    decoded.as_bytes()
                }
                None => {
                    ctx.say.warn(&format!(
                        "table {table_name}: key {}: malformed BASE64 value: {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    ));
                    return Ok(());
                }
            }
        } else {
            v
        };
        out.write_all(k)?;
        out.write_all(suffix)?;
        out.write_all(b"\t")?;
        out.write_all(v)?;
        out.write_all(b"\n")
    });
    match r {
        Ok(()) => 0,
        // A closed pipe (postmap -s | head) is not an error.
        Err(e) if e.contains("Broken pipe") => 0,
        Err(e) => ctx.say.fatal(&e),
    }
}

// ---------------------------------------------------------------------------
// Writing.

/// While alive, the effective user and group are the source file's owner
/// (when running as root without `-o`), so the table is created as that
/// user, as Postfix does.
struct AsOwner {
    switched: bool,
}

impl AsOwner {
    fn become_owner(uid: u32, gid: u32, as_root: bool) -> io::Result<AsOwner> {
        // SAFETY: plain syscalls on integers.
        unsafe {
            if as_root || libc::geteuid() != 0 || uid == 0 {
                return Ok(AsOwner { switched: false });
            }
            if libc::setgroups(1, &gid) != 0 || libc::setegid(gid) != 0 || libc::seteuid(uid) != 0 {
                let e = io::Error::last_os_error();
                libc::seteuid(0);
                libc::setegid(0);
                return Err(e);
            }
        }
        Ok(AsOwner { switched: true })
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: restoring the saved root ids.
            unsafe {
                libc::seteuid(0);
                libc::setegid(0);
            }
        }
    }
}

/// While alive, SIGHUP, SIGINT, SIGQUIT and SIGTERM are held back (as
/// Postfix's postmap does during an update): an interrupted build neither
/// leaves its temporary file behind nor stops between writing and
/// renaming. A signal that arrived meanwhile is delivered on drop.
struct HoldSignals {
    old: libc::sigset_t,
}

impl HoldSignals {
    fn new() -> HoldSignals {
        // SAFETY: sigset manipulation on stack values we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
            HoldSignals { old }
        }
    }
}

impl Drop for HoldSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Open a writer of the right format for `out_path`.
fn create_writer(kind: &str, out_path: &str, mode: u32) -> io::Result<Box<dyn TableWriter>> {
    Ok(if kind == "cdb" {
        Box::new(CdbWriter::create(Path::new(out_path), mode)?)
    } else {
        let mut w = IndexedWriter::create(Path::new(out_path), mode)?;
        w.set_folded(true);
        Box::new(w)
    })
}

/// Adds parsed entries to a writer, with the duplicate policy and the
/// warnings.
struct Sink<'a> {
    ctx: &'a Ctx,
    writer: Box<dyn TableWriter>,
    out_path: &'a str,
}

impl Sink<'_> {
    fn add(&mut self, key: &str, value: &str) -> io::Result<()> {
        let key = if self.ctx.keep_case {
            std::borrow::Cow::Borrowed(key)
        } else {
            libmail_fold(key)
        };
        let policy = if self.ctx.dups == Dups::Replace {
            OnDuplicate::Replace
        } else {
            OnDuplicate::KeepFirst
        };
        if self.writer.add(key.as_bytes(), value.as_bytes(), policy)? == Added::Duplicate
            && self.ctx.dups == Dups::Warn
        {
            self.ctx
                .say
                .warn(&format!("{}: duplicate entry: \"{key}\"", self.out_path));
        }
        Ok(())
    }
}

/// Lower-case a key the way the table lookups do.
fn libmail_fold(key: &str) -> std::borrow::Cow<'_, str> {
    if key.chars().any(|c| c.is_uppercase()) {
        std::borrow::Cow::Owned(key.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(key)
    }
}

/// Read `input` as logical lines in bounded chunks (so a large source is
/// never held whole), calling `each(line_number, text)` for every logical
/// line and printing the line-shape warnings.
fn for_each_logical_line(
    ctx: &Ctx,
    input: &mut dyn Read,
    src_name: &str,
    mut each: impl FnMut(usize, &str) -> io::Result<()>,
) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
    let mut eof = false;
    let mut base = 0usize;
    loop {
        while !eof && buf.len() < CHUNK {
            let start = buf.len();
            buf.resize(start + 64 * 1024, 0);
            let n = loop {
                match input.read(&mut buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            buf.truncate(start + n);
            eof = n == 0;
        }
        if buf.is_empty() {
            return Ok(());
        }
        // Cut before a line that certainly starts a new logical line (not
        // a continuation, comment or blank line), so no logical line is
        // split between chunks.
        let cut = if eof {
            buf.len()
        } else {
            match (1..buf.len())
                .rev()
                .find(|&p| buf[p - 1] == b'\n' && buf[p].is_ascii_graphic() && buf[p] != b'#')
            {
                Some(p) => p,
                None => {
                    // One logical line longer than the chunk: read on.
                    let start = buf.len();
                    buf.resize(start + CHUNK, 0);
                    let n = input.read(&mut buf[start..])?;
                    buf.truncate(start + n);
                    eof = n == 0;
                    continue;
                }
            }
        };
        let chunk = &buf[..cut];
        let lines_in_chunk = chunk.iter().filter(|&&c| c == b'\n').count();
        let (text, valid) = match std::str::from_utf8(chunk) {
            Ok(s) => (std::borrow::Cow::Borrowed(s), true),
            Err(_) => (String::from_utf8_lossy(chunk), false),
        };
        let (lines, problems) = logical_lines(&text);
        for p in problems {
            match p {
                LineProblem::LeadingWhitespace { text, .. } => ctx.say.warn(&format!(
                    "{src_name}: logical line must not start with whitespace: \"{text}\""
                )),
                LineProblem::TooLong { line } => ctx.say.warn(&format!(
                    "{src_name}, line {}: line too long -- ignoring this line",
                    line + base
                )),
            }
        }
        for ll in &lines {
            if !valid && ctx.utf8 && ll.text.contains('\u{fffd}') {
                ctx.say.warn(&format!(
                    "{src_name}, line {}: non-UTF-8 input \"{}\" -- ignoring this line",
                    ll.line + base,
                    ll.text.replace('\u{fffd}', "?")
                ));
                continue;
            }
            each(ll.line + base, &ll.text)?;
        }
        drop(lines);
        base += lines_in_chunk;
        buf.drain(..cut);
    }
}

/// The mode and owner a new table gets from its source file.
fn source_mode(ctx: &Ctx, meta: &std::fs::Metadata) -> u32 {
    if ctx.plain_mode {
        0o644
    } else {
        meta.mode() & 0o666 & !0o022
    }
}

/// Build one `type:file` operand (or, with `-i`, add stdin to it).
fn build(ctx: &Ctx, operand: &str, incremental: bool) -> i32 {
    let (kind, name) = split_operand(operand, &ctx.default_type);
    let Some(out_path) = output_path(kind, name) else {
        return ctx.say.fatal(&unsupported_build(kind));
    };
    // The input, its name in messages, the new file's mode and owner.
    type Source<'a> = (Box<dyn Read>, &'a str, u32, Option<(u32, u32)>);
    let (mut input, src_name, mode, owner): Source = if incremental {
        let (mode, owner) = match std::fs::metadata(&out_path) {
            Ok(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
            Err(_) => (0o644, None),
        };
        (Box::new(io::stdin()), "stdin", mode, owner)
    } else {
        let f = match File::open(name) {
            Ok(f) => f,
            Err(e) => return ctx.say.fatal(&format!("open {name}: {}", io_reason(&e))),
        };
        let meta = match f.metadata() {
            Ok(m) => m,
            Err(e) => return ctx.say.fatal(&format!("stat {name}: {}", io_reason(&e))),
        };
        let mode = source_mode(ctx, &meta);
        (Box::new(f), name, mode, Some((meta.uid(), meta.gid())))
    };
    let _owner = match owner {
        Some((uid, gid)) => match AsOwner::become_owner(uid, gid, ctx.as_root) {
            Ok(g) => Some(g),
            Err(e) => {
                return ctx
                    .say
                    .fatal(&format!("set owner of {out_path}: {}", io_reason(&e)))
            }
        },
        None => None,
    };
    // With -i, the existing entries come first (a missing table is
    // created, as Postfix does).
    let existing = if incremental && Path::new(&out_path).exists() {
        match Indexed::open(kind, name, ctx.keep_case) {
            Ok(t) => Some(t),
            Err(e) => return ctx.say.fatal(&e.to_string()),
        }
    } else {
        None
    };
    // Declared before the writer, so dropped after it: an early return
    // removes the temporary file before a held signal is delivered.
    let _held = HoldSignals::new();
    let writer = match create_writer(kind, &out_path, mode) {
        Ok(w) => w,
        Err(e) => {
            return ctx
                .say
                .fatal(&format!("open database {out_path}: {}", io_reason(&e)))
        }
    };
    let mut sink = Sink {
        ctx,
        writer,
        out_path: &out_path,
    };
    if let Some(t) = &existing {
        let r = t.for_each(|k, v| sink.writer.add(k, v, OnDuplicate::KeepFirst).map(|_| ()));
        if let Err(e) = r {
            return ctx.say.fatal(&e);
        }
    }
    drop(existing);
    let prog = ctx.prog;
    let r = for_each_logical_line(ctx, &mut input, src_name, |line, text| {
        let parsed = match prog {
            Program::Postmap => parse_map_line(text),
            Program::Postalias => crate::postalias::parse_alias_line(text),
        };
        match parsed {
            Parsed::Entry(k, v) => {
                if prog == Program::Postmap && k.ends_with(':') {
                    ctx.say.warn(&format!(
                        "{src_name}, line {line}: record is in \"key: value\" format; is this an alias file?"
                    ));
                }
                if ctx.file_values {
                    match encode_file_value(&v) {
                        Ok(encoded) => sink.add(&k, &encoded),
                        Err(why) => {
                            ctx.say.warn(&format!(
                                "{src_name}, line {line}: {why}: skipping this entry"
                            ));
                            Ok(())
                        }
                    }
                } else {
                    sink.add(&k, &v)
                }
            }
            Parsed::Skip(why) => {
                ctx.say.warn(&format!("{src_name}, line {line}: {why}"));
                Ok(())
            }
        }
    });
    if let Err(e) = r {
        return ctx.say.fatal(&format!("{out_path}: {}", io_reason(&e)));
    }
    if prog == Program::Postalias && kind != "cdb" {
        if let Err(e) = crate::postalias::add_nis_entries(sink.writer.as_mut(), &ctx.hostname) {
            return ctx.say.fatal(&format!("{out_path}: {}", io_reason(&e)));
        }
    }
    if let Err(e) = sink.writer.commit() {
        return ctx.say.fatal(&format!("{out_path}: {}", io_reason(&e)));
    }
    0
}

/// `-d key` / `-d -`: rewrite each table without the keys.
fn delete(ctx: &Ctx, key: &str, operands: &[String]) -> i32 {
    let mut keys: Vec<String> = Vec::new();
    if key == "-" {
        let stdin = io::stdin();
        for line in stdin.lock().split(b'\n') {
            match line {
                Ok(l) => keys.push(String::from_utf8_lossy(trim_newline(&l)).into_owned()),
                Err(e) => return ctx.say.fatal(&format!("read stdin: {}", io_reason(&e))),
            }
        }
    } else {
        keys.push(key.to_string());
    }
    let keys: std::collections::HashSet<Vec<u8>> = keys
        .iter()
        .map(|k| {
            if ctx.keep_case {
                k.as_bytes().to_vec()
            } else {
                libmail_fold(k).as_bytes().to_vec()
            }
        })
        .collect();
    let mut deleted_any = false;
    for op in operands {
        let (kind, name) = split_operand(op, &ctx.default_type);
        if output_path(kind, name).is_none() {
            return ctx.say.fatal(&format!(
                "table {kind}:{name}: delete operation is not supported"
            ));
        }
        let t = match Indexed::open(kind, name, ctx.keep_case) {
            Ok(t) => t,
            Err(e) => return ctx.say.fatal(&e.to_string()),
        };
        let mut present = false;
        for k in &keys {
            match t.contains(k) {
                Ok(true) => present = true,
                Ok(false) => {}
                Err(e) => return ctx.say.fatal(&e.to_string()),
            }
        }
        if !present {
            continue;
        }
        let out_path = t.path().to_string_lossy().into_owned();
        let meta = match std::fs::metadata(t.path()) {
            Ok(m) => m,
            Err(e) => {
                return ctx
                    .say
                    .fatal(&format!("stat {out_path}: {}", io_reason(&e)))
            }
        };
        let _owner = match AsOwner::become_owner(meta.uid(), meta.gid(), ctx.as_root) {
            Ok(g) => g,
            Err(e) => {
                return ctx
                    .say
                    .fatal(&format!("set owner of {out_path}: {}", io_reason(&e)))
            }
        };
        let _held = HoldSignals::new();
        let mut w = match create_writer(kind, &out_path, meta.mode() & 0o7777) {
            Ok(w) => w,
            Err(e) => {
                return ctx
                    .say
                    .fatal(&format!("open database {out_path}: {}", io_reason(&e)))
            }
        };
        let r = t.for_each(|k, v| {
            if !keys.contains(k) {
                w.add(k, v, OnDuplicate::KeepFirst)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            return ctx.say.fatal(&e);
        }
        if let Err(e) = w.commit() {
            return ctx.say.fatal(&format!("{out_path}: {}", io_reason(&e)));
        }
        deleted_any = true;
    }
    if deleted_any {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &str) -> (String, String) {
        match parse_map_line(t) {
            Parsed::Entry(k, v) => (k, v),
            Parsed::Skip(w) => panic!("{t}: {w}"),
        }
    }

    fn skip(t: &str) -> String {
        match parse_map_line(t) {
            Parsed::Entry(k, v) => panic!("{t}: entry {k} {v}"),
            Parsed::Skip(w) => w,
        }
    }

    #[test]
    fn map_lines_as_postfix_splits_them() {
        // Observed with Postfix 3.7.11's postmap -s.
        assert_eq!(entry("\"q k\" x"), ("\"q k\"".into(), "x".into()));
        assert_eq!(entry("a\"b c\" d"), ("a\"b c\"".into(), "d".into()));
        assert_eq!(entry("k \"v  w\"  "), ("k".into(), "\"v  w\"".into()));
        assert_eq!(entry("\"\\\"\" q"), ("\"\\\"\"".into(), "q".into()));
        assert_eq!(entry("\"ab\\\\\" c"), ("\"ab\\\\\"".into(), "c".into()));
        assert_eq!(entry("a\\ b c"), ("a\\ b".into(), "c".into()));
        assert_eq!(entry("\\\"s t\" u"), ("\\\"s".into(), "t\" u".into()));
        assert_eq!(
            entry("key3 a b  c  cont"),
            ("key3".into(), "a b  c  cont".into())
        );
        assert_eq!(skip("\"x\" "), "expected format: key whitespace value");
        assert_eq!(
            skip("\"unterm x y"),
            "unbalanced '\"' in '\"unterm x y' -- ignoring this line"
        );
    }

    #[test]
    fn operands() {
        assert_eq!(split_operand("hash:/x", "btree"), ("hash", "/x"));
        assert_eq!(split_operand("/x", "btree"), ("btree", "/x"));
        assert_eq!(split_operand("./a:b", "hash"), ("hash", "./a:b"));
    }
}
