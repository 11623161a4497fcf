//! Message-level tests: a real queue directory in a temporary place, a
//! message through [`Message`], the queue file read back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use libmail::config::maincf::MainCf;
use libmail::config::params::Params;
use libmail::ipc::cleanup::{STAT_CONT, STAT_DEFER, STAT_HOPS, STAT_RCPT, STAT_SIZE};
use libmail::ipc::Attrs;
use libmail::queue::{Access, Envelope, IdStyle, Ownership, Queue, QueueFile, QueueLayout, Writer};

use super::message::{Message, Outcome};
use super::Config;

static SEQ: AtomicUsize = AtomicUsize::new(0);

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(extra: &str) -> (Config, Scratch) {
    let dir = std::env::temp_dir().join(format!(
        "facteur-cleanup-unit-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let main = format!(
        "queue_directory = {q}\nmyhostname = mx.example.com\nmydomain = example.com\n\
         myorigin = example.com\nmydestination = example.com, localhost\n{extra}\n",
        q = dir.join("q").display()
    );
    let (m, _) = MainCf::parse(&main, "/x/main.cf");
    let params = Params::new(dir.to_str().unwrap(), m);
    let layout = QueueLayout::from_params(&params).unwrap();
    layout.create_or_repair(&Ownership::CurrentUser).unwrap();
    let cfg = Config::load(&params, layout).unwrap();
    (cfg, Scratch(dir))
}

enum Got {
    Queued {
        env: Box<Envelope>,
        content: Vec<String>,
        hold: bool,
    },
    Discarded,
    Refused(u32, String),
}

fn run(cfg: &Config, env: &Attrs, content: &[u8]) -> (Got, String) {
    let w = Writer::create(&cfg.layout, Queue::Incoming, IdStyle::Short).unwrap();
    let id = w.id().to_string();
    let mut m = Message::new(cfg, w, env);
    // Feed in small uneven chunks to exercise line reassembly.
    for c in content.chunks(7) {
        m.feed(c);
    }
    let got = match m.finish() {
        Outcome::Queued { file, hold } => {
            let d = file.sync().unwrap();
            let qf = QueueFile::open(d.path(), Access::ReadOnly, &Default::default()).unwrap();
            let mut lines = Vec::new();
            let mut r = qf.content();
            let mut l = Vec::new();
            while r.read_line(&mut l, 1 << 20).unwrap() {
                lines.push(String::from_utf8_lossy(&l).into_owned());
            }
            Got::Queued {
                env: Box::new(qf.envelope().clone()),
                content: lines,
                hold,
            }
        }
        Outcome::Discarded => Got::Discarded,
        Outcome::Refused { status, reason } => Got::Refused(status, reason),
    };
    // Nothing is left behind in incoming/ except a queued file.
    (got, id)
}

fn pickup_env(sender: &str, rcpts: &[&str]) -> Attrs {
    let mut a = Attrs::new()
        .with("origin", "pickup")
        .with("arrival", "1704717296.5")
        .with("sender", sender)
        .with("attr.rewrite_context", "local")
        .with("attr.log_uid", "1000");
    for r in rcpts {
        a.push("rcpt", r);
    }
    a
}

fn queued(g: Got) -> (Envelope, Vec<String>, bool) {
    match g {
        Got::Queued { env, content, hold } => (*env, content, hold),
        Got::Discarded => panic!("discarded"),
        Got::Refused(s, r) => panic!("refused {s}: {r}"),
    }
}

fn incoming_is_empty(cfg: &Config) -> bool {
    cfg.layout.scan_all(Queue::Incoming).next().is_none()
}

#[test]
fn missing_headers_are_added_for_local_mail() {
    let (cfg, _s) = setup("");
    let env = pickup_env("joe", &["bob"]);
    let (g, id) = run(
        &cfg,
        &env.with("full_name", "Joe Bloggs"),
        b"Subject: hi\n\nbody\n",
    );
    let (env, c, hold) = queued(g);
    assert!(!hold);
    assert_eq!(env.sender, "joe@example.com");
    assert_eq!(env.recipients.len(), 1);
    assert_eq!(env.recipients[0].address, "bob@example.com");
    assert_eq!(env.recipients[0].orig.as_deref(), Some("bob"));
    assert_eq!(env.attr("rewrite_context"), Some("local"));
    assert_eq!(env.attr("log_uid"), Some("1000"));
    assert_eq!(
        c[0],
        "Received: by mx.example.com (Postfix, from userid 1000)"
    );
    assert!(c[1].starts_with(&format!("\tid {id}; ")), "{}", c[1]);
    assert_eq!(c[2], "Subject: hi");
    // Message-Id: <YYYYMMDDhhmmss.ID@myhostname> (the queue file's
    // creation time, UTC).
    assert!(c[3].starts_with("Message-Id: <"), "{}", c[3]);
    assert!(
        c[3].ends_with(&format!(".{id}@mx.example.com>")),
        "{}",
        c[3]
    );
    assert_eq!(
        c[3].len(),
        "Message-Id: <".len() + 14 + 1 + id.len() + "@mx.example.com>".len()
    );
    assert!(c[4].starts_with("Date: "), "{c:?}");
    assert_eq!(c[5], "From: Joe Bloggs <joe@example.com>");
    assert_eq!(&c[6..], ["", "body"]);
}

#[test]
fn existing_headers_are_kept_folded_and_return_path_removed() {
    let (cfg, _s) = setup("");
    let text = b"Return-Path: <x@y>\nFrom: Someone <someone@example.org>\nTo: a@b.example,\n\tc@d.example\nMessage-ID: <m1@x>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nhello\n";
    let (g, _) = run(
        &cfg,
        &pickup_env("joe@example.com", &["bob@example.com"]),
        text,
    );
    let (_, c, _) = queued(g);
    assert!(!c.iter().any(|l| l.starts_with("Return-Path")), "{c:?}");
    let i = c.iter().position(|l| l == "To: a@b.example,").unwrap();
    assert_eq!(c[i + 1], "\tc@d.example");
    assert_eq!(c.iter().filter(|l| l.starts_with("Message-")).count(), 1);
    assert_eq!(c.iter().filter(|l| l.starts_with("Date:")).count(), 1);
    assert_eq!(c.iter().filter(|l| l.starts_with("From:")).count(), 1);
}

#[test]
fn remote_mail_is_not_completed_without_rewrite_domain() {
    let (cfg, _s) = setup("");
    let env = Attrs::new()
        .with("origin", "smtpd")
        .with("sender", "a@remote.example")
        .with("rcpt", "bob@example.com")
        .with("attr.rewrite_context", "remote");
    let (g, _) = run(&cfg, &env, b"Subject: x\n\nb\n");
    let (_, c, _) = queued(g);
    assert_eq!(c, ["Subject: x", "", "b"]);
}

#[test]
fn null_sender_gets_mailer_daemon_from() {
    let (cfg, _s) = setup("");
    let (g, _) = run(&cfg, &pickup_env("", &["bob"]), b"\nbody\n");
    let (env, c, _) = queued(g);
    assert_eq!(env.sender, "");
    assert!(c.contains(&"From: MAILER-DAEMON".to_string()), "{c:?}");
}

#[test]
fn header_addresses_are_rewritten_in_local_context() {
    let (cfg, _s) = setup("canonical_maps = inline:{ {joe@example.com = joe.bloggs@example.com} }");
    let (g, _) = run(
        &cfg,
        &pickup_env("joe", &["bob"]),
        b"From: Joe <joe>\nTo: bob, Ann <ann@other.org>\nSubject: joe\n\n",
    );
    let (env, c, _) = queued(g);
    assert_eq!(env.sender, "joe.bloggs@example.com");
    assert!(
        c.contains(&"From: Joe <joe.bloggs@example.com>".to_string()),
        "{c:?}"
    );
    assert!(
        c.contains(&"To: bob@example.com, Ann <ann@other.org>".to_string()),
        "{c:?}"
    );
    assert!(c.contains(&"Subject: joe".to_string()));
}

#[test]
fn masquerading_applies_to_headers_and_sender() {
    let (cfg, _s) = setup("masquerade_domains = example.com");
    let (g, _) = run(
        &cfg,
        &pickup_env("joe@host.example.com", &["bob@host.example.com"]),
        b"From: joe@host.example.com\n\n",
    );
    let (env, c, _) = queued(g);
    assert_eq!(env.sender, "joe@example.com");
    assert_eq!(env.recipients[0].address, "bob@host.example.com");
    assert!(c.contains(&"From: joe@example.com".to_string()), "{c:?}");
}

#[test]
fn the_empty_address_goes_to_empty_address_recipient() {
    let (cfg, _s) = setup("");
    let (g, _) = run(&cfg, &pickup_env("joe", &[""]), b"\n");
    let (env, _, _) = queued(g);
    assert_eq!(env.recipients[0].address, "MAILER-DAEMON@example.com");
    let (cfg, _s) = setup("empty_address_recipient = nobody-home");
    let (g, _) = run(&cfg, &pickup_env("joe", &[""]), b"\n");
    assert_eq!(queued(g).0.recipients[0].address, "nobody-home@example.com");
}

#[test]
fn virtual_aliases_expand_with_orig_and_without_duplicates() {
    let (cfg, _s) = setup(
        "virtual_alias_maps = inline:{ {team@example.com = a@x.org, b@x.org}, {b@example.com = b@x.org} }",
    );
    let (g, _) = run(
        &cfg,
        &pickup_env("joe", &["team@example.com", "b@example.com"]),
        b"\n",
    );
    let (env, _, _) = queued(g);
    let got: Vec<(&str, Option<&str>)> = env
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.orig.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("a@x.org", Some("team@example.com")),
            ("b@x.org", Some("team@example.com"))
        ]
    );
}

#[test]
fn always_bcc_adds_a_recipient() {
    let (cfg, _s) = setup("always_bcc = archive@example.com");
    let (g, _) = run(&cfg, &pickup_env("joe", &["bob"]), b"\n");
    let (env, _, _) = queued(g);
    let a: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(a, ["bob@example.com", "archive@example.com"]);
}

fn checks_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    format!("regexp:{}", p.display())
}

#[test]
fn header_checks_reject_and_leave_nothing() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let spec = checks_file(&s.0, "hc", "/^Subject: .*buy now/ REJECT Spam\n");
    let (cfg, _s2) = setup(&format!("header_checks = {spec}"));
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: buy now\n\nx\n",
    );
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_CONT);
            assert_eq!(r, "5.7.1 Spam");
        }
        _ => panic!("not refused"),
    }
    assert!(incoming_is_empty(&cfg));
}

#[test]
fn header_checks_actions() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let spec = checks_file(
        &s.0,
        "hc",
        "/^X-Drop:/ IGNORE\n/^X-Old:/ REPLACE X-New: replaced\n/^X-Pre:/ PREPEND X-Added: yes\n/^X-Warn:/ WARN careful\n/^X-Hold:/ HOLD\n/^X-Redirect:/ REDIRECT other@x.org\n/^Subject: multi line/ REJECT 4.7.0 Later\n",
    );
    let (cfg, _s2) = setup(&format!("header_checks = {spec}"));
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"X-Drop: 1\nX-Old: 2\nX-Pre: 3\nX-Warn: 4\n\n",
    );
    let (_, c, hold) = queued(g);
    assert!(!hold);
    assert!(!c.iter().any(|l| l.starts_with("X-Drop")));
    assert!(c.contains(&"X-New: replaced".to_string()));
    let i = c.iter().position(|l| l == "X-Added: yes").unwrap();
    assert_eq!(c[i + 1], "X-Pre: 3");
    assert!(c.contains(&"X-Warn: 4".to_string()));

    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), b"X-Hold: 1\n\n");
    assert!(queued(g).2);

    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d", "e@f"]),
        b"X-Redirect: 1\n\n",
    );
    let (env, _, _) = queued(g);
    let a: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(a, ["other@x.org"]);

    // Matching sees the unfolded header.
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: multi\n line\n\n",
    );
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_DEFER);
            assert_eq!(r, "4.7.0 Later");
        }
        _ => panic!("not refused"),
    }
}

#[test]
fn discard_accepts_and_keeps_nothing() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let spec = checks_file(&s.0, "bc", "/^drop me/ DISCARD\n");
    let (cfg, _s2) = setup(&format!("body_checks = {spec}"));
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: x\n\nfine\ndrop me now\n",
    );
    assert!(matches!(g, Got::Discarded));
    assert!(incoming_is_empty(&cfg));
}

#[test]
fn body_checks_redirect_after_headers() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let spec = checks_file(
        &s.0,
        "bc",
        "/^redirect/ REDIRECT x@y.org\n/^secret/ REPLACE [removed]\n",
    );
    let (cfg, _s2) = setup(&format!("body_checks = {spec}"));
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"\nsecret 1\nredirect\n",
    );
    let (env, c, _) = queued(g);
    let a: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(a, ["x@y.org"]);
    assert!(c.contains(&"[removed]".to_string()), "{c:?}");
    assert!(!c.contains(&"secret 1".to_string()));
}

#[test]
fn size_limit_is_enforced() {
    let (cfg, _s) = setup("message_size_limit = 100");
    let big = vec![b'x'; 500];
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &big);
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_SIZE);
            assert_eq!(r, "5.3.4 Message size exceeds fixed limit");
        }
        _ => panic!("not refused"),
    }
    assert!(incoming_is_empty(&cfg));
}

#[test]
fn too_many_hops() {
    let (cfg, _s) = setup("hopcount_limit = 3");
    let text = b"Received: a\nReceived: b\n\n";
    // pickup's own Received makes three.
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), text);
    assert!(matches!(g, Got::Refused(STAT_HOPS, _)));
}

#[test]
fn no_recipients() {
    // (An empty recipient is one: see empty_address_recipient.)
    let (cfg, _s) = setup("");
    let (g, _) = run(&cfg, &pickup_env("a@b", &[]), b"\n");
    assert!(matches!(g, Got::Refused(STAT_RCPT, _)));
    assert!(incoming_is_empty(&cfg));
}

#[test]
fn long_lines_and_odd_content_survive() {
    let (cfg, _s) = setup("message_size_limit = 0");
    let mut text = b"Subject: x\n\n".to_vec();
    text.extend(vec![b'a'; 200_000]);
    text.extend(b"\nlast line without newline");
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &text);
    let (_, c, _) = queued(g);
    assert_eq!(c.last().unwrap(), "last line without newline");
    assert!(c.iter().any(|l| l.len() == 200_000));
    // A header block that never ends, and binary junk: no panic.
    let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
    let _ = run(&cfg, &pickup_env("a@b", &["c@d"]), &junk);
    let huge_header = [
        b"X-Long: ".to_vec(),
        vec![b'h'; 300_000],
        b"\n\nbody\n".to_vec(),
    ]
    .concat();
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &huge_header);
    let (_, c, _) = queued(g);
    assert!(c.iter().any(|l| l.starts_with("X-Long: hhh")));
}

#[test]
fn extract_flag_takes_recipients_from_headers_and_drops_bcc() {
    let (cfg, _s) = setup("");
    let env = pickup_env("a@b", &[]).with("flags", libmail::ipc::cleanup::FLAG_EXTRACT);
    let (g, _) = run(&cfg, &env, b"To: x@y.org, Z <z>\nBcc: secret@y.org\n\n");
    let (env, c, _) = queued(g);
    let a: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(a, ["x@y.org", "z@example.com", "secret@y.org"]);
    assert!(!c.iter().any(|l| l.starts_with("Bcc")));
}

#[test]
fn control_characters_in_addresses_are_refused() {
    let (cfg, _s) = setup("");
    let (g, _) = run(&cfg, &pickup_env("a@b\nBcc: x@y", &["c@d"]), b"\n");
    assert!(matches!(g, Got::Refused(STAT_CONT, _)));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d\r"]), b"\n");
    assert!(matches!(g, Got::Refused(STAT_CONT, _)));
    assert!(incoming_is_empty(&cfg));
}

/// A multipart message with an attachment named `x.exe`; `extra_part`
/// is one more whole part (boundary, headers, blank line, body).
fn exe_message(extra_part: &str) -> Vec<u8> {
    format!(
        "Subject: report\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"b1\"\n\
\n\
This is a multi-part message in MIME format.\n\
--b1\n\
Content-Type: text/plain; charset=us-ascii\n\
\n\
see attachment\n\
--b1\n\
Content-Type: application/octet-stream\n\
Content-Disposition: attachment;\n\tfilename=\"x.exe\"\n\
Content-Transfer-Encoding: base64\n\
\n\
TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\n\
{extra_part}--b1--\n"
    )
    .into_bytes()
}

/// The classic attachment rule of Postfix setups.
const EXE_RULE: &str =
    "/^Content-(Type|Disposition):.*name[[:space:]]*=[[:space:]]*\"?.*\\.(exe|scr)\"?/ REJECT\n";

#[test]
fn header_checks_reach_mime_part_headers_by_default() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let hc = checks_file(&s.0, "hc", EXE_RULE);
    let (cfg, _s2) = setup(&format!("header_checks = {hc}"));
    // mime_header_checks = nested_header_checks = $header_checks: the
    // one table, opened once.
    let (h, m, n) = (
        cfg.header_checks.as_ref().expect("header_checks"),
        cfg.mime_header_checks.as_ref().expect("$header_checks"),
        cfg.nested_header_checks.as_ref().expect("$header_checks"),
    );
    assert!(std::sync::Arc::ptr_eq(h, m) && std::sync::Arc::ptr_eq(h, n));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(""));
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_CONT);
            assert_eq!(r, "5.7.1 message content rejected");
        }
        _ => panic!("not refused"),
    }
    assert!(incoming_is_empty(&cfg));
    // The same text in a body line is no header: accepted.
    let body_only = b"Subject: x\n\nContent-Disposition: attachment; filename=\"x.exe\"\n";
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), body_only);
    queued(g);
    // The pcre form of the rule, with \s, works the same.
    let (cfg0, s) = setup("");
    drop(cfg0);
    let hc = s.0.join("hc.pcre");
    std::fs::write(
        &hc,
        "/^Content-(Type|Disposition):.*name\\s*=\\s*\"?.*\\.(exe|scr)\"?/ REJECT\n",
    )
    .unwrap();
    let (cfg, _s2) = setup(&format!("header_checks = pcre:{}", hc.display()));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(""));
    assert!(matches!(g, Got::Refused(STAT_CONT, _)));
}

#[test]
fn mime_header_checks_override_header_checks() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let hc = checks_file(&s.0, "hc", &format!("{EXE_RULE}/^MIME-Version:/ HOLD\n"));
    let mc = checks_file(&s.0, "mc", "/^X-Never-Seen:/ REJECT\n");
    let (cfg, _s2) = setup(&format!("header_checks = {hc}\nmime_header_checks = {mc}"));
    // Different values: different tables (nested still shares header's).
    let (h, m, n) = (
        cfg.header_checks.as_ref().unwrap(),
        cfg.mime_header_checks.as_ref().unwrap(),
        cfg.nested_header_checks.as_ref().unwrap(),
    );
    assert!(!std::sync::Arc::ptr_eq(h, m) && std::sync::Arc::ptr_eq(h, n));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(""));
    let (_, c, hold) = queued(g);
    // MIME-Version went to mime_header_checks too (primary MIME header).
    assert!(!hold);
    let i = c
        .iter()
        .position(|l| l == "Content-Disposition: attachment;")
        .unwrap();
    assert_eq!(c[i + 1], "\tfilename=\"x.exe\"");
    // Empty mime_header_checks: MIME headers are not checked at all.
    let (cfg, _s3) = setup(&format!("header_checks = {hc}\nmime_header_checks ="));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(""));
    assert!(!queued(g).2);
    // Non-MIME primary headers still meet header_checks.
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: x\nX-Y: 1\nMIME-Version: 1.0\n\nb\n",
    );
    assert!(!queued(g).2);
    let (cfg, _s4) = setup(&format!("header_checks = {hc}"));
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: x\nMIME-Version: 1.0\n\nb\n",
    );
    assert!(queued(g).2, "default mime_header_checks = $header_checks");
}

/// A message with an attached message whose headers are `inner`.
fn forwarded(inner: &str) -> Vec<u8> {
    format!(
        "Subject: your invoice\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"outer\"\n\
\n\
--outer\n\
Content-Type: text/plain\n\
\n\
Subject: your invoice (body text)\n\
--outer\n\
Content-Type: message/rfc822\n\
\n\
{inner}\
\n\
inner body\n\
--outer--\n"
    )
    .into_bytes()
}

#[test]
fn nested_header_checks_see_attached_message_headers() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let nc = checks_file(
        &s.0,
        "nc",
        "/^Subject: .*invoice/ REJECT 5.7.1 Nested invoice\n/^X-Secret:/ IGNORE\n/^X-Old:/ REPLACE X-New: replaced\n/^X-Pre:/ PREPEND X-Added: 1\n",
    );
    let (cfg, _s2) = setup(&format!("nested_header_checks = {nc}"));
    assert!(cfg.header_checks.is_none() && cfg.mime_header_checks.is_none());
    let inner = "From: x@y.example\nSubject: Your Invoice 42\n\tfolded\n";
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &forwarded(inner));
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_CONT);
            assert_eq!(r, "5.7.1 Nested invoice");
        }
        _ => panic!("not refused"),
    }
    // A message that is itself a forward.
    let (g, _) = run(
        &cfg,
        &pickup_env("a@b", &["c@d"]),
        b"Subject: fwd\nContent-Type: message/rfc822\n\nFrom: x@y\nSubject: invoice\n\nbody\n",
    );
    assert!(matches!(g, Got::Refused(STAT_CONT, _)));
    // The primary Subject and a body line alike are not nested headers;
    // the other actions apply to the attached message's headers.
    let inner = "From: x@y.example\nX-Secret: s\n more\nX-Old: o\nX-Pre: p\nSubject: hello\n";
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &forwarded(inner));
    let (_, c, _) = queued(g);
    assert!(c.contains(&"Subject: your invoice".to_string()), "{c:?}");
    assert!(
        !c.iter().any(|l| l.starts_with("X-Secret") || l == " more"),
        "{c:?}"
    );
    assert!(c.contains(&"X-New: replaced".to_string()));
    assert!(!c.iter().any(|l| l.starts_with("X-Old")));
    let i = c.iter().position(|l| l == "X-Added: 1").unwrap();
    assert_eq!(c[i + 1], "X-Pre: p");
    assert!(c.ends_with(&[
        "".to_string(),
        "inner body".to_string(),
        "--outer--".to_string()
    ]));
}

#[test]
fn body_checks_see_body_lines_but_not_part_headers() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let bc = checks_file(
        &s.0,
        "bc",
        "/^Content-/ REPLACE X-Body-Saw: it\n/^TVqQ/ REPLACE [binary removed]\n/^see attachment/ WARN body seen\n",
    );
    let (cfg, _s2) = setup(&format!("body_checks = {bc}"));
    let extra = "--b1\nContent-Type: text/plain\n\nContent-Type: only text here\n";
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(extra));
    let (env, c, _) = queued(g);
    assert_eq!(env.recipients.len(), 1);
    // Part headers untouched, body lines replaced.
    assert!(
        c.contains(&"Content-Type: application/octet-stream".to_string()),
        "{c:?}"
    );
    assert!(c.contains(&"Content-Disposition: attachment;".to_string()));
    assert!(c.contains(&"Content-Transfer-Encoding: base64".to_string()));
    assert!(c.contains(&"[binary removed]".to_string()));
    assert_eq!(
        c.iter().filter(|l| *l == "X-Body-Saw: it").count(),
        1,
        "{c:?}"
    );
    assert!(!c.contains(&"Content-Type: only text here".to_string()));
}

#[test]
fn disable_mime_input_processing_makes_parts_body_again() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let hc = checks_file(&s.0, "hc", EXE_RULE);
    let bc = checks_file(
        &s.0,
        "bc",
        "/^Content-Disposition:/ REPLACE X-Body-Saw: it\n",
    );
    let (cfg, _s2) = setup(&format!(
        "header_checks = {hc}\nbody_checks = {bc}\ndisable_mime_input_processing = yes"
    ));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(""));
    let (_, c, _) = queued(g);
    assert!(c.contains(&"X-Body-Saw: it".to_string()), "{c:?}");
    assert!(!c.iter().any(|l| l.starts_with("Content-Disposition")));
}

#[test]
fn part_header_redirect_and_long_part_headers() {
    let (cfg0, s) = setup("");
    drop(cfg0);
    let mc = checks_file(
        &s.0,
        "mc",
        "/^Content-Type: application\\/octet-stream/ REDIRECT quarantine@example.org\n",
    );
    let (cfg, _s2) = setup(&format!("mime_header_checks = {mc}"));
    // The recipients are written after the content: a part header
    // could still redirect the message.
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d", "e@f"]), &exe_message(""));
    let (env, _, _) = queued(g);
    let a: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(a, ["quarantine@example.org"]);

    let mc = checks_file(
        &s.0,
        "mc2",
        "/^X-Drop:/ IGNORE\n/^X-After:/ REPLACE X-After: seen\n",
    );
    let (cfg, _s3) = setup(&format!(
        "mime_header_checks = {mc}\nheader_size_limit = 300"
    ));
    // A header outgrowing header_size_limit is decided on its start; its
    // rest follows the verdict and the headers after it are still seen.
    let long = "a".repeat(1000);
    let extra = format!(
        "--b1\nX-Keep: {long}\n {long}\nX-Drop: {long}\n {long}\nX-Drop: short\n{folds}X-After: 1\n\nbody\n",
        folds = format!(" {}\n", "b".repeat(50)).repeat(10)
    );
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), &exe_message(&extra));
    let (_, c, _) = queued(g);
    assert!(c.contains(&format!("X-Keep: {long}")), "kept whole");
    assert!(c.contains(&format!(" {long}")));
    assert_eq!(
        c.iter().filter(|l| l.contains(&long)).count(),
        2,
        "X-Drop dropped whole"
    );
    assert!(!c.iter().any(|l| l.contains("bbbbbbbbbb")), "{c:?}");
    let i = c.iter().position(|l| l == "X-After: seen").unwrap();
    assert_eq!(&c[i + 1..i + 3], ["", "body"]);
}

#[test]
fn mime_nesting_beyond_the_limit_is_refused_with_header_checks() {
    let mut text = String::from("Subject: deep\n");
    for i in 0..6 {
        text.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"l{i}\"\n\n--l{i}\n"
        ));
    }
    text.push_str("Content-Type: text/plain\n\nx\n");
    let (cfg0, s) = setup("");
    drop(cfg0);
    let hc = checks_file(&s.0, "hc", "/^X-Never:/ REJECT\n");
    let (cfg, _s2) = setup(&format!("header_checks = {hc}\nmime_nesting_limit = 3"));
    let (g, _) = run(&cfg, &pickup_env("a@b", &["c@d"]), text.as_bytes());
    match g {
        Got::Refused(st, r) => {
            assert_eq!(st, STAT_CONT);
            assert_eq!(r, "5.6.0 MIME nesting exceeds safety limit");
        }
        _ => panic!("not refused"),
    }
    // Within the limit, or without header checks: accepted.
    let (cfg, _s3) = setup(&format!("header_checks = {hc}\nmime_nesting_limit = 5"));
    queued(run(&cfg, &pickup_env("a@b", &["c@d"]), text.as_bytes()).0);
    let (cfg, _s4) = setup("mime_nesting_limit = 3");
    queued(run(&cfg, &pickup_env("a@b", &["c@d"]), text.as_bytes()).0);
}
