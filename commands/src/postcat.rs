//! postcat(1): print a Facteur queue file the way Postfix's postcat prints
//! a Postfix queue file: the same section markers, the same record labels
//! (`RecordType::label`), the same `-o` (`%9lu `) and `-d` (`%3d `)
//! prefixes. See `docs/man/postcat.1.md`.
//!
//! ```text
//! postcat [-bdehoqrv] [-c config_dir] [-s offset] [files...]
//! ```
//!
//! The file is read record by record with libmail's bounded
//! [`RecordReader`], so a damaged file is printed up to the damage and
//! then reported (`postcat: fatal: FILE: ...`, exit 1); no input panics.
//! Without file operands the queue file is read from standard input
//! (shown as `stdin`), as Postfix does.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libmail::cli::{getopt, Opt};
use libmail::config;
use libmail::config::params::Params;
use libmail::queue::record::{RecordReader, SIZE_RECORD_LEN};
use libmail::queue::{Incomplete, SizeRecord};
use libmail::queue::{Limits, Queue, QueueId, QueueLayout, ReadError, RecordType, Section};

/// Postfix 3.7's usage line, word for word (it names neither `-o`, `-r`
/// nor `-s`).
const USAGE: &str = "usage: postcat [-b (body text)] [-c config_dir] [-d (decimal record type)] [-e (envelope records)] [-h (header text)] [-q (access queue)] [-v] [file(s)...]";

/// The queues `-q` searches, in Postfix's order.
const SEARCH: [Queue; 6] = [
    Queue::Maildrop,
    Queue::Incoming,
    Queue::Active,
    Queue::Deferred,
    Queue::Hold,
    Queue::Saved,
];

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    env: bool,
    header: bool,
    body: bool,
    offset: bool,
    dec: bool,
    verbose: bool,
    /// `-s`: where reading starts.
    start: u64,
}

/// A fatal error: the text after `postcat: fatal: `.
struct Fatal(String);

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let r = run(&args, &mut out);
    let flushed = out.flush();
    match r {
        Ok(()) => match flushed {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("postcat: fatal: write error: {}", errtext(&e));
                1
            }
        },
        Err(Fatal(msg)) => {
            eprintln!("postcat: fatal: {msg}");
            1
        }
    }
}

/// An I/O error the way strerror(3) says it.
fn errtext(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn run(args: &[String], out: &mut impl Write) -> Result<(), Fatal> {
    // `-f` (file names as line prefixes) is Postfix 3.10's: 3.7 calls it
    // an invalid option, and so does this postcat.
    let parsed = getopt(args, "bc:dehoqrs:v").map_err(|e| {
        // getopt's own line, then the usage, as Postfix prints them.
        eprintln!("postcat: {e}");
        Fatal(USAGE.to_string())
    })?;
    let mut f = Flags::default();
    let mut by_id = false;
    let mut config_dir = None;
    for o in &parsed.opts {
        match o {
            Opt::Flag('b') => f.body = true,
            Opt::Flag('d') => f.dec = true,
            Opt::Flag('e') => f.env = true,
            Opt::Flag('h') => f.header = true,
            Opt::Flag('o') => f.offset = true,
            Opt::Flag('q') => by_id = true,
            // Facteur's format has no pointer records: file order is the
            // only order, with or without -r.
            Opt::Flag('r') => {}
            Opt::WithArg('s', o) => f.start = parse_offset(o)?,
            Opt::Flag('v') => f.verbose = true,
            Opt::WithArg('c', d) => config_dir = Some(d.clone()),
            _ => return Err(Fatal(USAGE.to_string())),
        }
    }
    if !(f.env || f.header || f.body) {
        f.env = true;
        f.header = true;
        f.body = true;
    }
    let wr = |e: io::Error| Fatal(format!("write error: {}", errtext(&e)));
    if parsed.operands.is_empty() {
        // No names, with or without -q: the queue file is on stdin.
        let file = stdin_file(f.start)?;
        print_open(&file, "stdin", f, false, out)?;
    } else if by_id {
        let layout = load_layout(config_dir.as_deref())?;
        for name in &parsed.operands {
            let id =
                QueueId::parse(name).map_err(|_| Fatal(format!("bad mail queue ID: {name}")))?;
            let Some((_, path)) = layout.find(&id, &SEARCH) else {
                return Err(Fatal(format!(
                    "open queue file {name}: No such file or directory"
                )));
            };
            let shown = path
                .strip_prefix(layout.root())
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| path.clone());
            print_file(&path, &shown, f, out)?;
        }
    } else {
        for name in &parsed.operands {
            let p = PathBuf::from(name);
            print_file(&p, &p, f, out)?;
        }
    }
    out.flush().map_err(wr)
}

/// `-s offset`: digits only, as Postfix's `alldig()` wants them.
fn parse_offset(arg: &str) -> Result<u64, Fatal> {
    let bad = || Fatal(format!("bad offset: {arg}"));
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Beyond what a file offset (off_t) can be: as bad as letters.
    arg.parse::<i64>().map(|n| n as u64).map_err(|_| bad())
}

/// Standard input as a file the record reader can read at offsets: its
/// bytes (from the current position on) copied into an anonymous memory
/// file, bounded by the largest queue file. With `-s`, input that ends
/// before the offset is Postfix's fatal `stdin: skip N bytes failed
/// after M`.
fn stdin_file(start: u64) -> Result<File, Fatal> {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"postcat-stdin".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(Fatal(format!("memfd_create: {}", errtext(&e))));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let max = Limits::default().max_file_size;
    let n = io::copy(&mut io::stdin().lock().take(max + 1), &mut file)
        .map_err(|e| Fatal(format!("stdin: read error: {}", errtext(&e))))?;
    if n > max {
        return Err(Fatal(format!(
            "stdin: larger than the largest queue file ({max} bytes)"
        )));
    }
    if start > n {
        return Err(Fatal(format!("stdin: skip {start} bytes failed after {n}")));
    }
    Ok(file)
}

fn load_layout(config_dir: Option<&str>) -> Result<QueueLayout, Fatal> {
    let dir = config::config_directory(config_dir);
    let params = Params::load(&dir).map_err(|d| Fatal(d.located()))?;
    QueueLayout::from_params(&params).map_err(Fatal)
}

/// `asctime(localtime(t))` without the newline: `Wed Nov 25 16:22:47 2026`.
fn asctime(t: libc::time_t) -> Option<String> {
    // SAFETY: tm is plain data; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    Some(format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS.get(tm.tm_wday as usize)?,
        MONTHS.get(tm.tm_mon as usize)?,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        i64::from(tm.tm_year) + 1900
    ))
}

/// Is `line` a header line (`name:`), as Postfix's is_header() sees it?
fn is_header(line: &[u8]) -> bool {
    let mut n = 0;
    for (i, &c) in line.iter().enumerate() {
        match c {
            b':' => return n > 0 && i == n,
            b' ' | b'\t' => {
                // "name  :" is a header too; anything else after the
                // blanks is not.
                return n > 0
                    && line[i..].iter().find(|&&c| c != b' ' && c != b'\t') == Some(&b':');
            }
            33..=126 => n += 1,
            _ => return false,
        }
    }
    false
}

/// Where in the content we are, for -h/-b.
#[derive(PartialEq, Clone, Copy)]
enum Part {
    Header,
    Body,
}

fn print_file(path: &Path, shown: &Path, f: Flags, out: &mut impl Write) -> Result<(), Fatal> {
    let name = shown.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Fatal(format!("open {name}: {}", errtext(&e))))?;
    print_open(&file, &name, f, true, out)
}

/// Prints an open file shown as `name`; `queue_file`: its mode says
/// whether a writer finished it (not so for standard input).
fn print_open(
    file: &File,
    name: &str,
    f: Flags,
    queue_file: bool,
    out: &mut impl Write,
) -> Result<(), Fatal> {
    let meta = file
        .metadata()
        .map_err(|e| Fatal(format!("fstat {name}: {}", errtext(&e))))?;
    if !meta.is_file() {
        return Err(Fatal(format!("{name}: not a regular file")));
    }
    let wr = |e: io::Error| Fatal(format!("write error: {}", errtext(&e)));
    let len = meta.len();
    if queue_file && meta.mode() & 0o100 == 0 {
        // Postfix prints such files without comment; say what it is.
        let _ = out.flush();
        eprintln!(
            "postcat: warning: {name}: {}",
            ReadError::Incomplete(Incomplete::NotMarkedComplete)
        );
    }
    let r = print_records(file, len, name, f, out);
    match r {
        Ok(()) => Ok(()),
        Err(Err(e)) => Err(wr(e)),
        Err(Ok(e)) => {
            out.flush().map_err(wr)?;
            Err(Fatal(format!("{name}: {e}")))
        }
    }
}

/// Ok(read error) or Err(write error).
type PrintErr = Result<ReadError, io::Error>;

fn rerr(e: ReadError) -> PrintErr {
    Ok(e)
}

fn corrupt(offset: u64, reason: &str) -> PrintErr {
    Ok(ReadError::Corrupt {
        offset,
        reason: reason.to_string(),
    })
}

/// The size record at offset 0, read on its own (for `-s`, which starts
/// past it): `None` when the file does not start with a sound one.
fn size_record_of(file: &File, len: u64, limits: &Limits) -> Option<SizeRecord> {
    let mut rd = RecordReader::new(file, len, 0, len.min(SIZE_RECORD_LEN as u64), limits);
    match rd.next_record() {
        Ok(Some(rec))
            if rec.kind == RecordType::Size && rec.payload.len() + 2 == SIZE_RECORD_LEN =>
        {
            SizeRecord::decode(rec.payload).ok()
        }
        _ => None,
    }
}

/// Prints the records from `f.start` on. From offset 0 the whole file is
/// checked as it goes (size record first, sections in order, the end
/// record where the size record says). From a later offset, as with
/// Postfix's `-s`, there is no `*** ENVELOPE RECORDS` line and the
/// section is unknown until the next section record: text records met
/// before it are shown only with `-e`, as Postfix shows them. An offset
/// inside a record reads as damage from there.
fn print_records(
    file: &File,
    len: u64,
    name: &str,
    f: Flags,
    out: &mut impl Write,
) -> Result<(), PrintErr> {
    let limits = Limits::default();
    let start = f.start;
    if start > 0 && start >= len {
        // Past the end: nothing to show (Postfix seeks there and stops).
        return Ok(());
    }
    let mut b = [0u8; 1];
    if start == 0
        && len > 0
        && file.read_at(&mut b, 0).map_err(|e| Ok(e.into()))? == 1
        && b[0] != RecordType::Size.byte()
    {
        return Err(corrupt(0, "not a Facteur queue file (no size record)"));
    }
    let mut rd = RecordReader::new(file, len, start, len, &limits);
    if start == 0 && f.env {
        writeln!(out, "*** {} {name} ***", Section::Envelope.postcat_title()).map_err(Err)?;
    }
    // None: not known yet (-s inside the file).
    let mut section = if start == 0 {
        Some(Section::Envelope)
    } else {
        None
    };
    let mut part = Part::Header;
    // A content line split into L records: its start offset and bytes.
    let mut line: Vec<u8> = Vec::new();
    let mut line_start: Option<u64> = None;
    let mut first = start == 0;
    let mut size: Option<SizeRecord> = if start == 0 {
        None
    } else {
        size_record_of(file, len, &limits)
    };
    loop {
        let rec = match rd.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(ReadError::Incomplete(Incomplete::Truncated { file_len, expected })) => {
                // The size record knows the real length.
                let expected = size
                    .map_or(SIZE_RECORD_LEN as u64, |s| s.end_offset + 10)
                    .max(expected);
                return Err(Ok(ReadError::Incomplete(Incomplete::Truncated {
                    file_len,
                    expected,
                })));
            }
            Err(e) => return Err(rerr(e)),
        };
        let (off, kind) = (rec.offset, rec.kind);
        if first {
            first = false;
            if kind != RecordType::Size || rec.payload.len() + 2 != SIZE_RECORD_LEN {
                return Err(corrupt(0, "not a Facteur queue file (no size record)"));
            }
            match SizeRecord::decode(rec.payload) {
                Ok(s) => size = Some(s),
                Err(e) => return Err(corrupt(0, e)),
            }
        } else if kind == RecordType::Size {
            return Err(corrupt(off, "size record not at offset 0"));
        }
        let prefix = |out: &mut dyn Write| -> io::Result<()> {
            if f.offset {
                write!(out, "{off:9} ")?;
            }
            if f.dec {
                write!(out, "{:3} ", kind.byte())?;
            }
            Ok(())
        };
        if let Some(s) = kind.starts_section() {
            if matches!(section, None | Some(Section::Content)) && line_start.is_some() {
                return Err(corrupt(off, "content ends inside a line"));
            }
            let expected = match section {
                // Any section may come first after -s.
                None => s,
                Some(Section::Envelope) => Section::Content,
                Some(Section::Content) => Section::Extracted,
                Some(Section::Extracted) => Section::End,
                Some(Section::End) => return Err(corrupt(off, "record after the end record")),
            };
            if s != expected {
                return Err(corrupt(off, "section records out of order"));
            }
            section = Some(s);
            if f.env {
                (|| -> io::Result<()> {
                    prefix(out)?;
                    writeln!(out, "*** {} {name} ***", s.postcat_title())
                })()
                .map_err(Err)?;
            }
            if s == Section::End {
                if let Some(sz) = size {
                    if off != sz.end_offset || len != sz.end_offset + 10 {
                        return Err(corrupt(off, "end record not where the size record says"));
                    }
                }
                if rd.offset() != len {
                    return Err(corrupt(rd.offset(), "data after the end record"));
                }
            }
            continue;
        }
        if section == Some(Section::End) {
            return Err(corrupt(off, "record after the end record"));
        }
        match kind {
            RecordType::Normal | RecordType::Cont => {
                if matches!(section, Some(Section::Envelope | Section::Extracted)) {
                    return Err(corrupt(off, "content record outside the content"));
                }
                if line_start.is_none() {
                    line_start = Some(off);
                }
                line.extend_from_slice(rec.payload);
                if line.len() > limits.max_record_len * 16 {
                    return Err(corrupt(off, "content line too long"));
                }
                if kind == RecordType::Cont {
                    continue;
                }
                let start = line_start.take().unwrap_or(off);
                let show = if section.is_none() {
                    // Where in the message is not known: Postfix shows
                    // such text with the envelope.
                    f.env
                } else {
                    if part == Part::Header
                        && !(is_header(&line) || (matches!(line.first(), Some(b' ' | b'\t'))))
                    {
                        part = Part::Body;
                    }
                    match part {
                        Part::Header => f.header,
                        Part::Body => f.body,
                    }
                };
                if show {
                    (|| -> io::Result<()> {
                        if f.offset {
                            write!(out, "{start:9} ")?;
                        }
                        if f.dec {
                            write!(out, "{:3} ", kind.byte())?;
                        }
                        if f.verbose {
                            write!(out, "{}: ", kind.label())?;
                        }
                        out.write_all(&line)?;
                        out.write_all(b"\n")
                    })()
                    .map_err(Err)?;
                }
                line.clear();
            }
            _ => {
                if section == Some(Section::Content) {
                    return Err(corrupt(off, "envelope record inside the content"));
                }
                if section.is_none() && line_start.is_some() {
                    return Err(corrupt(off, "content ends inside a line"));
                }
                if !f.env {
                    continue;
                }
                let text = rec.text().map_err(rerr)?;
                let value = match kind {
                    RecordType::Size => text.to_string(),
                    RecordType::Time => {
                        let secs = text.split(' ').next().unwrap_or("");
                        match secs.parse::<libc::time_t>().ok().and_then(asctime) {
                            Some(t) => t,
                            None => return Err(corrupt(off, "bad arrival time")),
                        }
                    }
                    _ => text.to_string(),
                };
                // The content filter is a record of its own in Postfix's
                // files, which postcat labels `content_filter`.
                let filter = format!("{}=", libmail::queue::CONTENT_FILTER_ATTR);
                let (label, value) = match value.strip_prefix(&filter) {
                    Some(f) if kind == RecordType::Attr => (libmail::queue::CONTENT_FILTER_ATTR, f),
                    _ => (kind.label(), value.as_str()),
                };
                (|| -> io::Result<()> {
                    prefix(out)?;
                    writeln!(out, "{label}: {value}")
                })()
                .map_err(Err)?;
            }
        }
    }
    if first {
        return Err(Ok(ReadError::Incomplete(Incomplete::Truncated {
            file_len: len,
            expected: SIZE_RECORD_LEN as u64,
        })));
    }
    if section != Some(Section::End) {
        let expected = size.map_or(len + 1, |s| s.end_offset + 10);
        return Err(Ok(ReadError::Incomplete(Incomplete::Truncated {
            file_len: len,
            expected: expected.max(len + 1),
        })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(is_header(b"Subject: hi"));
        assert!(is_header(b"Subject : hi"));
        assert!(!is_header(b""));
        assert!(!is_header(b"Hello."));
        assert!(!is_header(b":x"));
        assert!(!is_header(b"a b: c"));
    }

    #[test]
    fn time_format() {
        let t = asctime(0).unwrap();
        assert_eq!(t.len(), 24, "{t}");
    }
}
