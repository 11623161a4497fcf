//! `sendmail`: a message from standard input becomes a complete, durable
//! queue file in `maildrop/`, read back here with libmail's reader.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use libmail::queue::file::{QueueFile, DSN_NOTIFY_DELAY, DSN_NOTIFY_FAILURE};
use libmail::queue::{Access, Limits};

mod common;
use common::{setup, Setup};

/// Runs sendmail with `-C etc` and `args`, `input` on stdin.
fn sendmail(s: &Setup, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sendmail"))
        .arg("-C")
        .arg(&s.etc)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        // The command may stop reading early (lone dot, errors).
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn maildrop_files(s: &Setup) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(s.queue.join("maildrop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The one file in maildrop, checked complete and verified, removed after.
fn take_one(s: &Setup) -> QueueFile {
    let files = maildrop_files(s);
    assert_eq!(files.len(), 1, "{files:?}");
    let path = &files[0];
    let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // Complete (owner-execute) and readable by pickup (mail_owner), as
    // Postfix's postdrop leaves its files: 0744.
    assert_eq!(mode, 0o744, "not marked complete");
    let qf = QueueFile::open(path, Access::ReadOnly, &Limits::default()).unwrap();
    qf.verify().unwrap();
    assert!(qf.id().is_some());
    fs::remove_file(path).unwrap();
    qf
}

fn lines(qf: &QueueFile) -> Vec<Vec<u8>> {
    let mut r = qf.content();
    let mut out = Vec::new();
    let mut line = Vec::new();
    while r.read_line(&mut line, 4 << 20).unwrap() {
        out.push(line.clone());
    }
    out
}

fn text(lines: &[Vec<u8>]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

fn rcpts(qf: &QueueFile) -> Vec<(String, bool)> {
    qf.envelope()
        .recipients
        .iter()
        .map(|r| (r.address.clone(), r.extracted))
        .collect()
}

fn login() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn submits_sender_recipients_and_content() {
    let s = setup("sendmail-basic", "", true);
    let (code, err) = sendmail(
        &s,
        &[
            "-f",
            "alice@example.org",
            "-F",
            "Alice A",
            "-N",
            "failure,delay",
            "bob@example.net",
            "Carol <carol@example.com>, dave@example.com",
        ],
        b"From alice Mon Jan 1 00:00:00 2024\r\nSubject: hi\r\n\r\nline one\r\nline two\n",
    );
    assert_eq!(code, 0, "{err}");
    let qf = take_one(&s);
    let env = qf.envelope();
    assert_eq!(env.sender, "alice@example.org");
    assert_eq!(env.full_name.as_deref(), Some("Alice A"));
    assert_eq!(env.attr("rewrite_context"), Some("local"));
    assert_eq!(
        rcpts(&qf),
        vec![
            ("bob@example.net".into(), false),
            ("carol@example.com".into(), false),
            ("dave@example.com".into(), false),
        ]
    );
    for r in &env.recipients {
        assert_eq!(r.dsn_notify, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY);
    }
    // The From_ line is skipped, CRLF and LF both stored without the end.
    assert_eq!(
        text(&lines(&qf)),
        vec!["Subject: hi", "", "line one", "line two"]
    );

    // Default sender: the login name, unqualified.
    let (code, err) = sendmail(&s, &["bob@example.net"], b"Subject: x\n\nbody\n");
    assert_eq!(code, 0, "{err}");
    let qf = take_one(&s);
    assert_eq!(qf.envelope().sender, login());
    // Null sender.
    let (code, err) = sendmail(&s, &["-r", "<>", "bob@example.net"], b"x\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(take_one(&s).envelope().sender, "");
}

#[test]
fn dot_ends_input_unless_i() {
    let s = setup("sendmail-dot", "", true);
    let input = b"Subject: dot\n\nbefore\n.\nafter\n";
    let (code, err) = sendmail(&s, &["bob@example.net"], input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        text(&lines(&take_one(&s))),
        vec!["Subject: dot", "", "before"]
    );
    for flag in ["-i", "-oi"] {
        let (code, err) = sendmail(&s, &[flag, "bob@example.net"], input);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            text(&lines(&take_one(&s))),
            vec!["Subject: dot", "", "before", ".", "after"],
            "{flag}"
        );
    }
    // A dot with CRLF ends it too; "..", " ." do not.
    let (code, err) = sendmail(&s, &["bob@example.net"], b"a\r\n..\r\n .\r\n.\r\nz\r\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(text(&lines(&take_one(&s))), vec!["a", "..", " ."]);
}

#[test]
fn extracts_header_recipients_and_strips_bcc() {
    let s = setup("sendmail-t", "", true);
    let input = b"From: a@example.org\n\
To: Bob <bob@example.net>,\n  carol@example.com\n\
Bcc: secret@example.com,\n\thidden@example.com\n\
Cc: \"Dave D\" <dave@example.com>\n\
Subject: t\n\
\n\
To: not-a-header@example.com\n\
Bcc: body@example.com\n";
    let (code, err) = sendmail(&s, &["-t", "-i", "extra@example.org"], input);
    assert_eq!(code, 0, "{err}");
    let qf = take_one(&s);
    assert_eq!(
        rcpts(&qf),
        vec![
            ("extra@example.org".into(), false),
            ("bob@example.net".into(), true),
            ("carol@example.com".into(), true),
            ("secret@example.com".into(), true),
            ("hidden@example.com".into(), true),
            ("dave@example.com".into(), true),
        ]
    );
    assert_eq!(
        text(&lines(&qf)),
        vec![
            "From: a@example.org",
            "To: Bob <bob@example.net>,",
            "  carol@example.com",
            "Cc: \"Dave D\" <dave@example.com>",
            "Subject: t",
            "",
            "To: not-a-header@example.com",
            "Bcc: body@example.com",
        ]
    );

    // Resent-* headers, when present, replace To/Cc/Bcc.
    let (code, err) = sendmail(
        &s,
        &["-t"],
        b"To: old@example.net\nResent-To: new@example.net\nResent-Bcc: rb@example.net\n\nbody\n",
    );
    assert_eq!(code, 0, "{err}");
    let qf = take_one(&s);
    assert_eq!(
        rcpts(&qf),
        vec![
            ("new@example.net".into(), true),
            ("rb@example.net".into(), true)
        ]
    );
    assert_eq!(
        text(&lines(&qf)),
        vec![
            "To: old@example.net",
            "Resent-To: new@example.net",
            "",
            "body"
        ]
    );
}

#[test]
fn no_recipients_is_a_usage_error() {
    let s = setup("sendmail-norcpt", "", true);
    let (code, err) = sendmail(&s, &["-t"], b"Subject: none\n\nbody\n");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("No recipient addresses found in message header"),
        "{err}"
    );
    assert!(err.starts_with("sendmail: fatal: "), "{err}");
    let (code, err) = sendmail(&s, &[], b"Subject: none\n\nbody\n");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(
            "Recipient addresses must be specified on the command line or via the -t option"
        ),
        "{err}"
    );
    // Nothing left behind, not even an incomplete file.
    assert!(maildrop_files(&s).is_empty());
}

#[test]
fn missing_queue_directory_is_a_temporary_failure() {
    let s = setup("sendmail-noqueue", "", false);
    let (code, err) = sendmail(&s, &["bob@example.net"], b"x\n");
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("facteur set-permissions"), "{err}");
    assert!(err.contains("maildrop"), "{err}");
    assert!(
        err.contains("No such file or directory") && !err.contains("os error"),
        "{err}"
    );
}

#[test]
fn unsupported_modes_say_so() {
    let s = setup("sendmail-modes", "", true);
    for args in [&["-bv"][..], &["-bd"]] {
        let (code, err) = sendmail(&s, args, b"");
        assert_eq!(code, 69, "{args:?}: {err}");
        assert!(err.contains("not supported"), "{args:?}: {err}");
    }
    // -q with no mail system running: Postfix's words and EX_UNAVAILABLE.
    for args in [&["-q"][..], &["-q1h"]] {
        let (code, err) = sendmail(&s, args, b"");
        assert_eq!(code, 69, "{args:?}: {err}");
        assert!(
            err.contains("Cannot flush mail queue - mail system is down"),
            "{args:?}: {err}"
        );
    }
    let (code, err) = sendmail(&s, &["-Z"], b"");
    assert_eq!(code, 64, "{err}");
    assert!(maildrop_files(&s).is_empty());
}

#[test]
fn bi_and_capital_i_rebuild_the_alias_database() {
    let dir = std::env::temp_dir().join(format!("sendmail-bi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aliases = dir.join("aliases");
    std::fs::write(&aliases, "postmaster: root\n").unwrap();
    let s = setup(
        "sendmail-bi",
        &format!("alias_database = hash:{}\n", aliases.display()),
        true,
    );
    for flag in ["-bi", "-I"] {
        let _ = std::fs::remove_file(dir.join("aliases.db"));
        let (code, err) = sendmail(&s, &[flag], b"");
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(
            dir.join("aliases.db").exists(),
            "{flag} built no aliases.db"
        );
    }
    assert!(maildrop_files(&s).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn long_line_round_trips() {
    let s = setup("sendmail-long", "", true);
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = b"Subject: big\n\n".to_vec();
    input.extend_from_slice(&big);
    input.extend_from_slice(b"\r\nend");
    let (code, err) = sendmail(&s, &["bob@example.net"], &input);
    assert_eq!(code, 0, "{err}");
    let qf = take_one(&s);
    let got = lines(&qf);
    assert_eq!(got.len(), 4);
    assert_eq!(got[2], big);
    // The last line had no line end; it is stored as a line.
    assert_eq!(got[3], b"end");
}

/// With no size limit, lines far longer than the piece sendmail holds in
/// memory (1 MiB) are streamed and stored intact, CRLF handled.
#[test]
fn unlimited_size_streams_very_long_lines() {
    let s = setup("sendmail-huge", "message_size_limit = 0\n", true);
    let big: Vec<u8> = (0..(3usize << 20) + 12345)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let exact: Vec<u8> = vec![b'x'; 1 << 20];
    let mut input = b"Subject: huge\r\n\r\n".to_vec();
    input.extend_from_slice(&big);
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&exact);
    input.extend_from_slice(b"\r\nlast\r\n");
    let (code, err) = sendmail(&s, &["bob@example.net"], &input);
    assert_eq!(code, 0, "{err}");
    let got = lines(&take_one(&s));
    assert_eq!(
        got.len(),
        5,
        "{:?}",
        got.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(got[0], b"Subject: huge");
    assert_eq!(got[2], big);
    assert_eq!(got[3], exact);
    assert_eq!(got[4], b"last");
}

#[test]
fn oversize_message_is_refused() {
    let s = setup("sendmail-size", "message_size_limit = 1000\n", true);
    let input = vec![b'x'; 5000];
    let (code, err) = sendmail(&s, &["bob@example.net"], &input);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("message file too big"), "{err}");
    assert!(maildrop_files(&s).is_empty());
    let (code, err) = sendmail(&s, &["bob@example.net"], b"small\n");
    assert_eq!(code, 0, "{err}");
    take_one(&s);
}

/// sendmail run as nobody (65534; the caller must be root), nothing on
/// its standard input.
fn as_nobody(s: &Setup, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(env!("CARGO_BIN_EXE_sendmail"))
        .arg("-C")
        .arg(&s.etc)
        .args(args)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `authorized_submit_users`: a user not on the list is refused before
/// anything is written (exit 77, Postfix's message); the mail owner (and
/// root) may always submit.
#[test]
fn authorized_submit_users_refuses_users_not_listed() {
    let s = setup("submit-acl", "authorized_submit_users = alice\n", true);
    let (code, err) = sendmail(
        &s,
        &["-f", "a@example.org", "c@example.net"],
        b"Subject: x\n\nbody\n",
    );
    assert_eq!(code, 0, "the mail owner submits: {err}");
    assert_eq!(maildrop_files(&s).len(), 1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can run sendmail as another user here.
        return;
    }
    let out = as_nobody(&s, &["-f", "a@example.org", "c@example.net"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("sendmail: fatal: User nobody(65534) is not allowed to submit mail")
            || err.contains("sendmail: fatal: User unknown(65534) is not allowed to submit mail"),
        "{err}"
    );
    assert_eq!(maildrop_files(&s).len(), 1, "nothing more was written");
}

/// `sendmail -q` is `postqueue -f`, as in Postfix: `authorized_flush_users`
/// refuses a user not listed, in postqueue's words.
#[test]
fn q_is_postqueue_f_with_its_access_list() {
    let s = setup("flush-acl", "authorized_flush_users = root\n", true);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Only root can run sendmail as another user here.
        return;
    }
    let out = as_nobody(&s, &["-q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err == "postqueue: fatal: User nobody(65534) is not allowed to flush the mail queue\n"
            || err
                == "postqueue: fatal: User unknown(65534) is not allowed to flush the mail queue\n",
        "{err}"
    );
    // Root may: it gets as far as the mail system (down here).
    let (code, err) = sendmail(&s, &["-q"], b"");
    assert_eq!(code, 69, "{err}");
    assert_eq!(
        err,
        "postqueue: fatal: Cannot flush mail queue - mail system is down\n"
    );
}
