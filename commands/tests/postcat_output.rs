//! `postcat` against golden output captured from Postfix 3.7.11's postcat.
//!
//! The golden text below is what the real `postcat` printed for a
//! maildrop file that Postfix's own `sendmail -f alice@example.org -F
//! 'Alice Example' -N failure,delay bob@example.net carol@example.net`
//! (postdrop, master stopped) wrote from [`INPUT`], in a throwaway
//! instance (`/tmp/h7`, `postcat -c /tmp/h7/etc ...`). Our sendmail gets
//! the same input and arguments; our postcat's output is then normalised
//! and compared line by line. The normalisation, and why each value may
//! legitimately differ:
//!
//! * the queue ID (`B03359A62F2` in the capture) becomes `<ID>`, and the
//!   file name given on the command line becomes `<FILE>`: IDs come from
//!   the inode and the clock;
//! * the date after `message_arrival_time: ` becomes `<TIME>`, after
//!   checking it has asctime's layout (`Wed Nov 25 16:22:47 2026`);
//! * `message_size:` is checked on its own (7 fields of width 15, the
//!   values of the file's size record) and then removed: Postfix's postdrop
//!   writes no size record (cleanup does; from a deferred Postfix file the
//!   line was `message_size:` + 6 fields of `%15ld`), Facteur's writer
//!   always does, with 7 fields (docs/queue-format.md §6, §12);
//! * `dsn_notify_flags: N` becomes `named_attribute: notify_flags=N`:
//!   Postfix 3.7 stores NOTIFY as a named attribute, Facteur as the `n`
//!   record, which Postfix labels `dsn_notify_flags` (queue-format.md §12);
//! * with `-o`, the `%9lu ` prefix is checked (9 columns, a space, offsets
//!   strictly increasing, the `M` marker at `data_offset - 2`) and then
//!   removed: record offsets depend on the format (Facteur's `C` record
//!   shifts everything by 113 bytes).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const INPUT: &[u8] = b"Subject: hi\nFrom: Alice <alice@example.org>\n\nHello.\nSecond line.\n";

/// `postcat -q B03359A62F2` (and `postcat FILE`, with the file name).
const GOLDEN_ALL: &str = "\
*** ENVELOPE RECORDS <FILE> ***
message_arrival_time: <TIME>
named_attribute: rewrite_context=local
sender_fullname: Alice Example
sender: alice@example.org
named_attribute: notify_flags=12
recipient: bob@example.net
named_attribute: notify_flags=12
recipient: carol@example.net
*** MESSAGE CONTENTS <FILE> ***
Subject: hi
From: Alice <alice@example.org>

Hello.
Second line.
*** HEADER EXTRACTED <FILE> ***
*** MESSAGE FILE END <FILE> ***
";

/// `postcat -e FILE`.
const GOLDEN_E: &str = "\
*** ENVELOPE RECORDS <FILE> ***
message_arrival_time: <TIME>
named_attribute: rewrite_context=local
sender_fullname: Alice Example
sender: alice@example.org
named_attribute: notify_flags=12
recipient: bob@example.net
named_attribute: notify_flags=12
recipient: carol@example.net
*** MESSAGE CONTENTS <FILE> ***
*** HEADER EXTRACTED <FILE> ***
*** MESSAGE FILE END <FILE> ***
";

/// `postcat -h FILE`: no markers without -e.
const GOLDEN_H: &str = "\
Subject: hi
From: Alice <alice@example.org>
";

/// `postcat -b FILE`: the body starts with the empty line.
const GOLDEN_B: &str = "\nHello.\nSecond line.\n";

/// `postcat -eh FILE`.
const GOLDEN_EH: &str = "\
*** ENVELOPE RECORDS <FILE> ***
message_arrival_time: <TIME>
named_attribute: rewrite_context=local
sender_fullname: Alice Example
sender: alice@example.org
named_attribute: notify_flags=12
recipient: bob@example.net
named_attribute: notify_flags=12
recipient: carol@example.net
*** MESSAGE CONTENTS <FILE> ***
Subject: hi
From: Alice <alice@example.org>
*** HEADER EXTRACTED <FILE> ***
*** MESSAGE FILE END <FILE> ***
";

/// `postcat -v FILE` (less Postfix's `postcat: name_mask: all` and
/// `inet_addr_local` debug lines on stderr).
const GOLDEN_V: &str = "\
*** ENVELOPE RECORDS <FILE> ***
message_arrival_time: <TIME>
named_attribute: rewrite_context=local
sender_fullname: Alice Example
sender: alice@example.org
named_attribute: notify_flags=12
recipient: bob@example.net
named_attribute: notify_flags=12
recipient: carol@example.net
*** MESSAGE CONTENTS <FILE> ***
regular_text: Subject: hi
regular_text: From: Alice <alice@example.org>
regular_text: 
regular_text: Hello.
regular_text: Second line.
*** HEADER EXTRACTED <FILE> ***
*** MESSAGE FILE END <FILE> ***
";

/// Which lines Postfix's `postcat -o FILE` prefixed with an offset: all
/// but the first marker (printed before any record is read).
const GOLDEN_O_UNPREFIXED: usize = 1;

mod common;
use common::Setup;

fn setup(name: &str) -> Setup {
    common::setup(&format!("postcat-{name}"), "", true)
}

/// Submits [`INPUT`] as in the capture; returns the queue ID and path.
fn submit(s: &Setup) -> (String, PathBuf) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sendmail"))
        .args([
            "-C",
            &s.etc,
            "-f",
            "alice@example.org",
            "-F",
            "Alice Example",
        ])
        .args([
            "-N",
            "failure,delay",
            "bob@example.net",
            "carol@example.net",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(INPUT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sendmail failed: {out:?}");
    let files: Vec<_> = fs::read_dir(s.queue.join("maildrop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let id = files[0].file_name().unwrap().to_str().unwrap().to_string();
    (id, files[0].clone())
}

fn postcat(s: &Setup, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postcat"))
        .args(["-c", &s.etc])
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "postcat failed: {out:?}"
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// asctime's layout without the newline: `Www Mmm dd hh:mm:ss yyyy`.
fn is_asctime(t: &str) -> bool {
    let b = t.as_bytes();
    let pat = b"Aaa Aaa Dd dd:dd:dd dddd";
    b.len() == pat.len()
        && b.iter().zip(pat).all(|(&c, &p)| match p {
            b'A' => c.is_ascii_alphabetic(),
            b'a' => c.is_ascii_lowercase(),
            b'D' => c == b' ' || c.is_ascii_digit(),
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// Checks and removes the `message_size:` line (see the module comment).
fn check_size_line(line: &str, file: &std::path::Path) {
    let v = line.strip_prefix("message_size: ").expect(line);
    assert_eq!(v.len(), 7 * 15 + 6, "{line:?}");
    let fields: Vec<u64> = v.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 7);
    for (i, f) in fields.iter().enumerate() {
        assert_eq!(&v[i * 16..i * 16 + 15], format!("{f:15}"), "{line:?}");
    }
    let len = fs::metadata(file).unwrap().len();
    // Postfix's message_size: each line end counted as CRLF.
    let lines = INPUT.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(fields[0], INPUT.len() as u64 + lines, "content_size");
    assert_eq!(fields[2], 2, "rcpt_count");
    assert_eq!(fields[5] + 10, len, "end_offset");
    assert_eq!(fields[6], 1, "version");
}

/// The normalisation described in the module comment.
fn normalise(out: &str, shown: &str, id: &str, file: &std::path::Path) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in out.lines() {
        let line = line.replace(shown, "<FILE>").replace(id, "<ID>");
        if line.starts_with("message_size:") {
            check_size_line(&line, file);
            continue;
        }
        if let Some(t) = line.strip_prefix("message_arrival_time: ") {
            assert!(is_asctime(t), "{line:?}");
            lines.push("message_arrival_time: <TIME>".to_string());
            continue;
        }
        if let Some(n) = line.strip_prefix("dsn_notify_flags: ") {
            lines.push(format!("named_attribute: notify_flags={n}"));
            continue;
        }
        lines.push(line);
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn assert_lines(got: &str, want: &str, what: &str) {
    let g: Vec<&str> = got.lines().collect();
    let w: Vec<&str> = want.lines().collect();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: line {} differs\n--- got\n{got}--- want\n{want}",
            i + 1
        );
    }
    assert_eq!(
        g.len(),
        w.len(),
        "{what}: line count\n--- got\n{got}--- want\n{want}"
    );
}

#[test]
fn matches_postfix_layout() {
    let s = setup("layout");
    let (id, path) = submit(&s);
    let file = path.to_str().unwrap();

    // -q ID: the name shown is relative to the queue directory.
    let out = stdout_ok(&postcat(&s, &["-q", &id]));
    assert!(
        out.starts_with(&format!("*** ENVELOPE RECORDS maildrop/{id} ***\n")),
        "{out}"
    );
    assert_lines(
        &normalise(&out, &format!("maildrop/{id}"), &id, &path),
        GOLDEN_ALL,
        "-q",
    );

    for (flags, golden) in [
        (&[][..], GOLDEN_ALL),
        (&["-e"][..], GOLDEN_E),
        (&["-h"][..], GOLDEN_H),
        (&["-b"][..], GOLDEN_B),
        (&["-eh"][..], GOLDEN_EH),
        (&["-e", "-h", "-b"][..], GOLDEN_ALL),
        (&["-v"][..], GOLDEN_V),
    ] {
        let mut args = flags.to_vec();
        args.push(file);
        let out = stdout_ok(&postcat(&s, &args));
        assert_lines(
            &normalise(&out, file, &id, &path),
            golden,
            &format!("{flags:?}"),
        );
    }
}

#[test]
fn offsets() {
    let s = setup("offsets");
    let (id, path) = submit(&s);
    let file = path.to_str().unwrap();
    let out = stdout_ok(&postcat(&s, &["-o", file]));
    let mut stripped = String::new();
    let mut last: Option<u64> = None;
    let mut data_offset = None;
    for (i, line) in out.lines().enumerate() {
        if i < GOLDEN_O_UNPREFIXED {
            stripped.push_str(line);
            stripped.push('\n');
            continue;
        }
        assert!(line.len() >= 10 && &line[9..10] == " ", "{line:?}");
        let n: u64 = line[..9].trim_start().parse().expect(line);
        assert!(last.is_none_or(|l| n > l), "offsets not increasing: {out}");
        if last.is_none() {
            assert_eq!(n, 0, "the size record is at offset 0");
        }
        last = Some(n);
        let rest = &line[10..];
        if rest.starts_with("message_size:") {
            data_offset = rest
                .split_whitespace()
                .nth(2)
                .map(|v| v.parse::<u64>().unwrap());
        }
        if rest.starts_with("*** MESSAGE CONTENTS") {
            assert_eq!(Some(n + 2), data_offset, "M ends at data_offset");
        }
        stripped.push_str(rest);
        stripped.push('\n');
    }
    assert_lines(&normalise(&stripped, file, &id, &path), GOLDEN_ALL, "-o");

    // -d: Postfix prints the record type in decimal (`%3d `).
    let out = stdout_ok(&postcat(&s, &["-d", "-e", file]));
    assert!(out.contains("\n 83 sender: alice@example.org\n"), "{out}");
    assert!(out.contains("\n 77 *** MESSAGE CONTENTS "), "{out}");
}

#[test]
fn bad_ids_and_missing_files() {
    let s = setup("errors");
    let _ = submit(&s);
    // Postfix: "postcat: fatal: bad mail queue ID: ../etc/x", exit 1.
    for bad in ["../etc/x", "/etc/passwd", "a.b", ""] {
        let out = postcat(&s, &["-q", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("postcat: fatal: bad mail queue ID: {bad}\n")
        );
        assert!(out.stdout.is_empty());
    }
    // Postfix: "postcat: fatal: open queue file NOSUCHID12: No such file or directory".
    let out = postcat(&s, &["-q", "B03359A62F2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "postcat: fatal: open queue file B03359A62F2: No such file or directory\n"
    );
    // Postfix: "postcat: fatal: open /nonexistent: No such file or directory".
    let missing = s.top.join("nonexistent");
    let out = postcat(&s, &[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "postcat: fatal: open {}: No such file or directory\n",
            missing.display()
        )
    );
}

#[test]
fn damaged_files_are_reported_never_panic() {
    let s = setup("damaged");
    let (_, path) = submit(&s);
    let data = fs::read(&path).unwrap();
    let copy = s.top.join("copy");
    let run = |bytes: &[u8]| -> Output {
        fs::write(&copy, bytes).unwrap();
        let mut p = fs::metadata(&copy).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o700);
        fs::set_permissions(&copy, p).unwrap();
        postcat(&s, &[copy.to_str().unwrap()])
    };
    let name = copy.display().to_string();

    // Every truncation: an incomplete file, named, exit 1.
    for n in 0..data.len() {
        let out = run(&data[..n]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "truncated at {n}: {err}");
        assert!(
            err.starts_with(&format!(
                "postcat: fatal: {name}: incomplete queue file: {n} bytes, expected {}",
                // Before the size record is whole, only its length is known.
                if n < 113 { 113 } else { data.len() }
            )),
            "truncated at {n}: {err}"
        );
    }
    // Every single-byte change: either fine (a text byte) or a fatal
    // naming the file; never a crash.
    for i in 0..data.len() {
        for x in [0u8, 0x80, 0xff, b'R'] {
            let mut d = data.clone();
            d[i] = x;
            let out = run(&d);
            let err = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => assert!(err.is_empty(), "byte {i}={x}: {err}"),
                Some(1) => assert!(
                    err.starts_with(&format!("postcat: fatal: {name}: ")),
                    "byte {i}={x}: {err}"
                ),
                other => panic!("byte {i}={x}: exit {other:?}: {err}"),
            }
        }
    }
    // Not a Facteur file at all (a Postfix maildrop file starts with T).
    let out = run(b"T\x1d1764087767 123456\x00");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Facteur queue file"));
    // Not marked complete: a warning, then the file.
    fs::write(&copy, &data).unwrap();
    let mut p = fs::metadata(&copy).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o600);
    fs::set_permissions(&copy, p).unwrap();
    let out = postcat(&s, &[copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("postcat: warning: {name}: incomplete queue file: not marked complete\n")
    );
}

/// postcat with `bytes` on standard input (a pipe).
fn postcat_piped(s: &Setup, args: &[&str], bytes: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postcat"))
        .args(["-c", &s.etc])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // postcat may stop reading early (a fatal); a broken pipe is fine.
    let _ = stdin.write_all(bytes);
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn standard_input_is_read_when_no_file_is_named() {
    let s = setup("stdin");
    let (id, path) = submit(&s);
    let data = fs::read(&path).unwrap();

    // Postfix: `postcat < FILE` shows the file as "stdin".
    let out = Command::new(env!("CARGO_BIN_EXE_postcat"))
        .args(["-c", &s.etc])
        .stdin(Stdio::from(fs::File::open(&path).unwrap()))
        .output()
        .unwrap();
    let text = stdout_ok(&out);
    assert!(
        text.starts_with("*** ENVELOPE RECORDS stdin ***\n"),
        "{text}"
    );
    assert_lines(&normalise(&text, "stdin", &id, &path), GOLDEN_ALL, "< FILE");
    // From a pipe, with and without -q (no IDs named: stdin too), and
    // with a section flag.
    for (flags, golden) in [
        (&[][..], GOLDEN_ALL),
        (&["-q"][..], GOLDEN_ALL),
        (&["-e"][..], GOLDEN_E),
        (&["-h"][..], GOLDEN_H),
    ] {
        let out = stdout_ok(&postcat_piped(&s, flags, &data));
        assert_lines(
            &normalise(&out, "stdin", &id, &path),
            golden,
            &format!("| {flags:?}"),
        );
    }
    // A damaged input is reported under the name stdin; no warning about
    // the file mode (standard input is no queue file).
    let out = postcat_piped(&s, &[], &data[..data.len() - 3]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "postcat: fatal: stdin: incomplete queue file: {} bytes, expected {}\n",
            data.len() - 3,
            data.len()
        )
    );
}

#[test]
fn raw_order_flag_is_accepted_and_changes_nothing() {
    let s = setup("raw");
    let (_, path) = submit(&s);
    let file = path.to_str().unwrap();
    for flags in [&[][..], &["-o"][..], &["-e", "-d"][..]] {
        let plain = stdout_ok(&postcat(&s, &[flags, &[file]].concat()));
        let raw = stdout_ok(&postcat(&s, &[&["-r"], flags, &[file]].concat()));
        assert_eq!(raw, plain, "{flags:?}");
    }
}

/// Splits `postcat -o` output into (offset, line) pairs; the first line
/// (the envelope marker) has no offset.
fn offset_lines(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .skip(GOLDEN_O_UNPREFIXED)
        .map(|l| (l[..9].trim_start().parse().expect(l), l.to_string()))
        .collect()
}

#[test]
fn start_offset_shows_the_records_from_there() {
    let s = setup("start");
    let (_, path) = submit(&s);
    let file = path.to_str().unwrap();
    let len = fs::metadata(&path).unwrap().len();
    let full = stdout_ok(&postcat(&s, &["-o", file]));
    let lines = offset_lines(&full);

    // From every record offset: exactly the records from there on, and
    // no envelope marker (Postfix 3.7 prints it only from offset 0).
    for (i, (off, _)) in lines.iter().enumerate() {
        let got = stdout_ok(&postcat(&s, &["-o", "-s", &off.to_string(), file]));
        let want: String = lines[i..].iter().map(|(_, l)| format!("{l}\n")).collect();
        if *off == 0 {
            assert_eq!(got, full);
        } else {
            assert_eq!(got, want, "-s {off}");
        }
    }
    let offset_of = |what: &str| {
        lines
            .iter()
            .find(|(_, l)| l[10..].starts_with(what))
            .map(|(o, _)| o.to_string())
            .unwrap_or_else(|| panic!("{what} in {full}"))
    };
    // From the content marker, -h and -b select as from the start.
    let m = offset_of("*** MESSAGE CONTENTS");
    assert_eq!(stdout_ok(&postcat(&s, &["-h", "-s", &m, file])), GOLDEN_H);
    assert_eq!(stdout_ok(&postcat(&s, &["-b", "-s", &m, file])), GOLDEN_B);
    // From inside the content, where header and body are not known: text
    // is shown only with -e, as Postfix's postcat does.
    let from = offset_of("From:");
    assert_eq!(stdout_ok(&postcat(&s, &["-h", "-s", &from, file])), "");
    assert_eq!(
        stdout_ok(&postcat(&s, &["-e", "-s", &from, file])),
        format!(
            "From: Alice <alice@example.org>\n\nHello.\nSecond line.\n\
             *** HEADER EXTRACTED {file} ***\n*** MESSAGE FILE END {file} ***\n"
        )
    );
    // At or past the end: nothing, success (Postfix seeks and stops).
    for past in [len, len + 1000] {
        let out = stdout_ok(&postcat(&s, &["-s", &past.to_string(), file]));
        assert_eq!(out, "", "-s {past}");
    }
    // Standard input that ends before the offset: Postfix's fatal.
    let data = fs::read(&path).unwrap();
    let out = postcat_piped(&s, &["-s", &(len + 1).to_string()], &data);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "postcat: fatal: stdin: skip {} bytes failed after {len}\n",
            len + 1
        )
    );
    assert!(out.stdout.is_empty());
    // From standard input, the same records as from the file.
    let sender = offset_of("sender:");
    let out = stdout_ok(&postcat_piped(&s, &["-s", &sender], &data));
    let from_file = stdout_ok(&postcat(&s, &["-s", &sender, file]));
    assert_eq!(out, from_file.replace(file, "stdin"));
    assert!(out.starts_with("sender: alice@example.org\n"), "{out}");

    // Any offset: the records from there, or a fatal naming the file
    // (inside a record reads as damage); never a crash.
    for off in 1..len {
        let out = postcat(&s, &["-s", &off.to_string(), file]);
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => assert!(err.is_empty(), "-s {off}: {err}"),
            Some(1) => assert!(
                err.starts_with(&format!("postcat: fatal: {file}: ")),
                "-s {off}: {err}"
            ),
            other => panic!("-s {off}: exit {other:?}: {err}"),
        }
    }
}

#[test]
fn bad_start_offsets_are_fatal() {
    let s = setup("badoffset");
    let (_, path) = submit(&s);
    let file = path.to_str().unwrap();
    // Postfix: `postcat: fatal: bad offset: abc`, exit 1, nothing printed.
    for bad in ["abc", "-1", "12x", "", " 5", "+5", "99999999999999999999"] {
        let out = postcat(&s, &["-s", bad, file]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("postcat: fatal: bad offset: {bad}\n")
        );
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
}

#[test]
fn f_is_an_invalid_option_as_in_postfix_3_7() {
    let s = setup("dash-f");
    let (_, path) = submit(&s);
    // Postfix 3.7.11, word for word (`-f` arrived in 3.10).
    let out = postcat(&s, &["-f", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "postcat: invalid option -- 'f'\n\
         postcat: fatal: usage: postcat [-b (body text)] [-c config_dir] [-d (decimal record type)] \
         [-e (envelope records)] [-h (header text)] [-q (access queue)] [-v] [file(s)...]\n"
    );
    assert!(out.stdout.is_empty());
}

/// The content filter, an attribute in Facteur's file, is shown with
/// Postfix's label for its record: `content_filter: transport:nexthop`.
#[test]
fn the_content_filter_has_postfix_label() {
    use libmail::queue::{IdStyle, NewRecipient, Queue, QueueLayout, Writer, CONTENT_FILTER_ATTR};
    let s = setup("filter");
    let layout = QueueLayout::new(s.top.join("q"), "deferred", 1).unwrap();
    layout
        .create_or_repair(&libmail::queue::Ownership::CurrentUser)
        .unwrap();
    let mut w = Writer::create(&layout, Queue::Incoming, IdStyle::Short).unwrap();
    w.sender("a@example.org").unwrap();
    w.recipient(&NewRecipient::new("b@example.net")).unwrap();
    w.start_content().unwrap();
    w.content_line(b"Subject: x").unwrap();
    w.start_extracted().unwrap();
    w.attr(CONTENT_FILTER_ATTR, "smtp:[127.0.0.1]:10024")
        .unwrap();
    let d = w.finish().unwrap().sync().unwrap();
    let out = stdout_ok(&postcat(&s, &[d.path().to_str().unwrap()]));
    assert!(
        out.lines()
            .any(|l| l == "content_filter: smtp:[127.0.0.1]:10024"),
        "{out}"
    );
}
