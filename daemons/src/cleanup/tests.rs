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
    let (cfg, _s) = setup("");
    let (g, _) = run(&cfg, &pickup_env("a@b", &[""]), b"\n");
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
