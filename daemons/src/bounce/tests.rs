//! The bounce service's decisions, against a real queue directory and a
//! stand-in cleanup (`public/cleanup`) that records what it is given.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use libmail::config::maincf::MainCf;
use libmail::config::params::Params;
use libmail::dsn::Kind;
use libmail::ipc::{Attrs, Conn, Item};
use libmail::queue::file::{DSN_NOTIFY_FAILURE, DSN_NOTIFY_NEVER, DSN_RET_HDRS};
use libmail::queue::statuslog::{self, Entry};
use libmail::queue::{IdStyle, NewRecipient, Ownership, Queue, QueueId, QueueLayout, Writer};

use super::proto::Request;
use super::{notify, Config};

static SEQ: AtomicUsize = AtomicUsize::new(0);

struct Scratch {
    dir: PathBuf,
    params: Params,
    layout: QueueLayout,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(extra: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!(
        "facteur-bounce-unit-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let main = format!(
        "queue_directory = {q}\nmyhostname = mx.example.com\nmydomain = example.com\n\
         myorigin = example.com\n{extra}\n",
        q = dir.join("q").display()
    );
    let (m, _) = MainCf::parse(&main, "/x/main.cf");
    let params = Params::new(dir.to_str().unwrap(), m);
    let layout = QueueLayout::from_params(&params).unwrap();
    layout.create_or_repair(&Ownership::CurrentUser).unwrap();
    Scratch {
        dir,
        params,
        layout,
    }
}

impl Scratch {
    fn config(&self, service: &str) -> Config {
        Config::load(service, &self.params, &self.layout).unwrap()
    }

    /// A message in active/ from `sender`; recipients (address, notify).
    fn message(&self, sender: &str, rcpts: &[(&str, u32)], ret: u32) -> (QueueId, Vec<u64>) {
        let mut w = Writer::create(&self.layout, Queue::Active, IdStyle::Short).unwrap();
        w.sender(sender).unwrap();
        if ret != 0 {
            w.dsn_ret(ret).unwrap();
        }
        for (a, n) in rcpts {
            w.recipient(&NewRecipient {
                dsn_notify: *n,
                ..NewRecipient::new(a)
            })
            .unwrap();
        }
        w.start_content().unwrap();
        for l in [
            "Subject: test",
            "Message-ID: <m1@example.org>",
            "",
            "the body",
        ] {
            w.content_line(l.as_bytes()).unwrap();
        }
        w.start_extracted().unwrap();
        let id = w.id();
        w.finish().unwrap().sync().unwrap();
        let f = libmail::queue::QueueFile::open(
            &self.layout.path_of(Queue::Active, &id),
            libmail::queue::Access::ReadOnly,
            &libmail::queue::Limits::default(),
        )
        .unwrap();
        let offsets = f.envelope().recipients.iter().map(|r| r.offset).collect();
        (id, offsets)
    }

    fn log(&self, q: Queue, id: &QueueId, entries: &[Entry]) {
        statuslog::append(&self.layout, q, id, entries).unwrap();
    }

    /// A stand-in cleanup that takes `n` messages (refusing them when
    /// `refuse`), then stops listening.
    fn cleanup(&self, n: usize, refuse: bool) -> JoinHandle<Vec<(Attrs, String)>> {
        let path = self.layout.root().join("public/cleanup");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            for k in 0..n {
                let (s, _) = l.accept().unwrap();
                let mut c = Conn::new(s);
                let id = format!("NEW{k}");
                c.send(&Attrs::new().with("queue_id", &id)).unwrap();
                let env = c.expect().unwrap();
                let mut body = Vec::new();
                loop {
                    match c.recv_item().unwrap().unwrap() {
                        Item::Data(d) if d.is_empty() => break,
                        Item::Data(d) => body.extend(d),
                        Item::Attrs(a) => panic!("{a:?}"),
                    }
                }
                let reply = if refuse {
                    Attrs::new()
                        .with("status", 8)
                        .with("reason", "5.7.1 no bounces here")
                } else {
                    Attrs::new().with("status", 0).with("queue_id", &id)
                };
                c.send(&reply).unwrap();
                got.push((env, String::from_utf8(body).unwrap()));
            }
            drop(l);
            let _ = std::fs::remove_file(&path);
            got
        })
    }
}

fn entry(offset: u64, rcpt: &str, notify: u32, status: &str, reason: &str) -> Entry {
    Entry {
        offset,
        recipient: rcpt.into(),
        orig_recipient: None,
        orcpt: None,
        notify,
        status: status.into(),
        action: String::new(),
        reason: reason.into(),
        time: 1_700_000_000,
    }
}

fn request(kind: Kind, id: &QueueId, sender: &str) -> Request {
    Request {
        kind,
        queue_name: "active".into(),
        queue_id: id.to_string(),
        sender: sender.into(),
        envid: None,
        ret: 0,
        arrival: 1_700_000_000,
    }
}

#[test]
fn failure_notice_goes_to_the_sender_without_never_recipients() {
    let s = setup("");
    let cfg = s.config("bounce");
    let (id, off) = s.message(
        "alice@example.org",
        &[("a@x.example", 0), ("b@x.example", DSN_NOTIFY_NEVER)],
        0,
    );
    s.log(
        Queue::Bounce,
        &id,
        &[
            entry(off[0], "a@x.example", 0, "5.1.1", "no such user"),
            entry(
                off[1],
                "b@x.example",
                DSN_NOTIFY_NEVER,
                "5.1.1",
                "no such user",
            ),
        ],
    );
    let c = s.cleanup(1, false);
    assert_eq!(
        notify(&cfg, &request(Kind::Failure, &id, "alice@example.org")),
        Ok(1)
    );
    let got = c.join().unwrap();
    let (env, body) = &got[0];
    assert_eq!(env.get("origin"), Some("bounce"));
    assert_eq!(env.get("sender"), Some(""));
    assert_eq!(env.get("rcpt"), Some("alice@example.org"));
    assert!(body.contains("Subject: Undelivered Mail Returned to Sender\n"));
    assert!(body.contains("Message-ID: <") && body.contains(".NEW0@mx.example.com>\n"));
    assert!(body.contains("\nFinal-Recipient: rfc822; a@x.example\n"));
    assert!(!body.contains("b@x.example"), "NOTIFY=NEVER is left out");
    assert!(body.contains(&format!("\nX-Postfix-Queue-ID: {id}\n")));
    // The whole message is returned by default.
    assert!(body.contains("Content-Type: message/rfc822\n"));
    assert!(body.contains("\nReturn-Path: <alice@example.org>\nSubject: test\n"));
    assert!(body.contains("\nthe body\n"));
    // The log is qmgr's to remove.
    assert!(statuslog::has_entries(&s.layout, Queue::Bounce, &id));
}

#[test]
fn nothing_owed_means_no_notice() {
    let s = setup("");
    let cfg = s.config("bounce");
    let (id, off) = s.message("alice@example.org", &[("a@x.example", DSN_NOTIFY_NEVER)], 0);
    // No log at all, then only NEVER recipients: no cleanup is even
    // asked (there is none listening).
    assert_eq!(
        notify(&cfg, &request(Kind::Failure, &id, "alice@example.org")),
        Ok(0)
    );
    s.log(
        Queue::Bounce,
        &id,
        &[entry(off[0], "a@x.example", DSN_NOTIFY_NEVER, "5.0.0", "x")],
    );
    assert_eq!(
        notify(&cfg, &request(Kind::Failure, &id, "alice@example.org")),
        Ok(0)
    );
    // Mail from the double-bounce address is never reported on.
    let (id2, off2) = s.message("double-bounce@example.com", &[("a@x.example", 0)], 0);
    s.log(
        Queue::Bounce,
        &id2,
        &[entry(off2[0], "a@x.example", 0, "5.0.0", "x")],
    );
    assert_eq!(
        notify(
            &cfg,
            &request(Kind::Failure, &id2, "double-bounce@example.com")
        ),
        Ok(0)
    );
}

#[test]
fn null_sender_failures_go_to_the_postmaster_only_with_2bounce() {
    let s = setup("");
    let (id, off) = s.message("", &[("a@x.example", 0)], 0);
    s.log(
        Queue::Bounce,
        &id,
        &[entry(off[0], "a@x.example", 0, "5.1.1", "no such user")],
    );
    assert_eq!(
        notify(&s.config("bounce"), &request(Kind::Failure, &id, "")),
        Ok(0),
        "dropped with the default notify_classes"
    );
    let s2 = setup("notify_classes = 2bounce\n2bounce_notice_recipient = pm@example.com");
    let (id, off) = s2.message("", &[("a@x.example", 0)], 0);
    s2.log(
        Queue::Bounce,
        &id,
        &[entry(off[0], "a@x.example", 0, "5.1.1", "no such user")],
    );
    let c = s2.cleanup(1, false);
    assert_eq!(
        notify(&s2.config("bounce"), &request(Kind::Failure, &id, "")),
        Ok(1)
    );
    let got = c.join().unwrap();
    let (env, body) = &got[0];
    assert_eq!(env.get("sender"), Some("double-bounce"));
    assert_eq!(env.get("rcpt"), Some("pm@example.com"));
    assert!(body.contains("\nTo: pm@example.com\n"));
    assert!(body.contains("Auto-Submitted: auto-replied\n"));
    assert!(body.contains("X-Postfix-Sender: rfc822; MAILER-DAEMON\n"));
    // The whole undeliverable bounce, as Postfix returns it.
    assert!(body.contains("Content-Type: message/rfc822\n"));
    assert!(body.contains("\nthe body\n"));
}

#[test]
fn postmaster_copies_with_notify_classes_bounce_and_delay() {
    let s = setup("notify_classes = bounce, delay\nbounce_notice_recipient = pm");
    let (id, off) = s.message(
        "alice@example.org",
        &[("a@x.example", 0), ("b@x.example", DSN_NOTIFY_NEVER)],
        0,
    );
    s.log(
        Queue::Bounce,
        &id,
        &[
            entry(off[0], "a@x.example", 0, "5.1.1", "no such user"),
            entry(
                off[1],
                "b@x.example",
                DSN_NOTIFY_NEVER,
                "5.2.2",
                "mailbox full",
            ),
        ],
    );
    let c = s.cleanup(2, false);
    assert_eq!(
        notify(
            &s.config("bounce"),
            &request(Kind::Failure, &id, "alice@example.org")
        ),
        Ok(2)
    );
    let got = c.join().unwrap();
    assert_eq!(got[0].0.get("rcpt"), Some("alice@example.org"));
    let (env, body) = &got[1];
    assert_eq!(env.get("sender"), Some("double-bounce"));
    assert_eq!(env.get("rcpt"), Some("pm"));
    assert!(body.contains("Subject: Postmaster Copy: Undelivered Mail\n"));
    assert!(body.contains("Auto-Submitted: auto-generated\n"));
    // Every recipient, whatever its NOTIFY; the header only.
    assert!(body.contains("Final-Recipient: rfc822; b@x.example\n"));
    assert!(body.contains("Content-Type: text/rfc822-headers\n"));
    assert!(!body.contains("the body"));

    // Delay warnings from the defer log, with the delay copy.
    s.log(
        Queue::Defer,
        &id,
        &[Entry {
            action: "delayed".into(),
            ..entry(off[0], "a@x.example", 0, "4.4.1", "connection refused")
        }],
    );
    let c = s.cleanup(2, false);
    assert_eq!(
        notify(
            &s.config("defer"),
            &request(Kind::Delay, &id, "alice@example.org")
        ),
        Ok(2)
    );
    let got = c.join().unwrap();
    assert!(got[0]
        .1
        .contains("Subject: Delayed Mail (still being retried)\n"));
    assert!(got[0].1.contains("\nAction: delayed\nStatus: 4.4.1\n"));
    assert!(got[0].1.contains("\nWill-Retry-Until: "));
    assert!(got[0].1.contains("Content-Type: text/rfc822-headers\n"));
    assert_eq!(got[1].0.get("rcpt"), Some("postmaster"));
    assert!(got[1]
        .1
        .contains("Subject: Postmaster Warning: Delayed Mail\n"));
}

#[test]
fn expiry_returns_the_defer_log_as_failed() {
    let s = setup("");
    let (id, off) = s.message(
        "alice@example.org",
        &[("a@x.example", DSN_NOTIFY_FAILURE)],
        DSN_RET_HDRS,
    );
    s.log(
        Queue::Defer,
        &id,
        &[
            entry(
                off[0],
                "a@x.example",
                DSN_NOTIFY_FAILURE,
                "4.4.1",
                "old reason",
            ),
            entry(
                off[0],
                "a@x.example",
                DSN_NOTIFY_FAILURE,
                "4.4.2",
                "newest reason",
            ),
        ],
    );
    let c = s.cleanup(1, false);
    assert_eq!(
        notify(
            &s.config("defer"),
            &request(Kind::Failure, &id, "alice@example.org")
        ),
        Ok(1)
    );
    let body = &c.join().unwrap()[0].1;
    assert!(body.contains("\nAction: failed\nStatus: 4.4.2\n"), "{body}");
    assert!(body.contains("Diagnostic-Code: X-Postfix; newest reason\n"));
    assert!(!body.contains("old reason"));
    assert_eq!(body.matches("Final-Recipient:").count(), 1);
    // RET=HDRS.
    assert!(body.contains("Content-Type: text/rfc822-headers\n"));
}

#[test]
fn success_notice_from_the_trace_log() {
    let s = setup("");
    let (id, off) = s.message("alice@example.org", &[("a@x.example", 2)], 0);
    s.log(
        Queue::Trace,
        &id,
        &[Entry {
            action: "delivered".into(),
            ..entry(off[0], "a@x.example", 2, "2.0.0", "delivered to maildir")
        }],
    );
    let c = s.cleanup(1, false);
    assert_eq!(
        notify(
            &s.config("trace"),
            &request(Kind::Success, &id, "alice@example.org")
        ),
        Ok(1)
    );
    let body = &c.join().unwrap()[0].1;
    assert!(body.contains("Subject: Successful Mail Delivery Report\n"));
    assert!(body.contains("\nAction: delivered\nStatus: 2.0.0\n"));
    // Never to the null sender.
    let (id2, off2) = s.message("", &[("a@x.example", 2)], 0);
    s.log(
        Queue::Trace,
        &id2,
        &[entry(off2[0], "a@x.example", 2, "2.0.0", "delivered")],
    );
    assert_eq!(
        notify(&s.config("trace"), &request(Kind::Success, &id2, "")),
        Ok(0)
    );
}

#[test]
fn a_missing_queue_file_still_gets_a_notice_and_refusals_are_errors() {
    let s = setup("");
    let cfg = s.config("bounce");
    let id = QueueId::parse("ABCDE123").unwrap();
    s.log(
        Queue::Bounce,
        &id,
        &[entry(100, "a@x.example", 0, "5.1.1", "no such user")],
    );
    let c = s.cleanup(1, false);
    assert_eq!(
        notify(&cfg, &request(Kind::Failure, &id, "carol@example.org")),
        Ok(1)
    );
    let (env, body) = &c.join().unwrap()[0];
    assert_eq!(env.get("rcpt"), Some("carol@example.org"));
    assert!(body.contains("could not be read"));
    // Cleanup says no: an error, nothing settled.
    let c = s.cleanup(1, true);
    let e = notify(&cfg, &request(Kind::Failure, &id, "carol@example.org")).unwrap_err();
    assert!(e.contains("no bounces here"), "{e}");
    c.join().unwrap();
    // No cleanup at all.
    let e = notify(&cfg, &request(Kind::Failure, &id, "carol@example.org")).unwrap_err();
    assert!(e.contains("cleanup"), "{e}");
    // Bad requests.
    let mut r = request(Kind::Failure, &id, "x");
    r.queue_id = "../../etc".into();
    assert!(notify(&cfg, &r).is_err());
    let mut r = request(Kind::Failure, &id, "x");
    r.queue_name = "bounce".into();
    assert!(notify(&cfg, &r).is_err());
}

#[test]
fn configuration_service_names_and_templates() {
    let s = setup("");
    assert!(Config::load("relay", &s.params, &s.layout).is_err());
    let s2 = setup("bounce_service_name = mybounce");
    assert_eq!(s2.config("mybounce").log, Queue::Bounce);
    assert!(Config::load("bounce", &s2.params, &s2.layout).is_err());
    // A template file.
    let s3 = setup("");
    let file = s3.dir.join("bounce.cf");
    std::fs::write(
        &file,
        "failure_template = <<EOF\nSubject: Bounced\n\nHost $myhostname says no.\nEOF\n\
         delay_template = <<EOF\n$no_such_parameter\nEOF\n",
    )
    .unwrap();
    let s3 = Scratch {
        params: {
            let (m, _) = MainCf::parse(
                &format!(
                    "queue_directory = {}\nmyhostname = mx.example.com\nbounce_template_file = {}\n",
                    s3.layout.root().display(),
                    file.display()
                ),
                "/x/main.cf",
            );
            Params::new(s3.dir.to_str().unwrap(), m)
        },
        dir: s3.dir.clone(),
        layout: s3.layout.clone(),
    };
    let cfg = s3.config("bounce");
    assert_eq!(cfg.templates.failure.subject, "Bounced");
    assert_eq!(
        cfg.texts[&Kind::Failure],
        vec!["Host mx.example.com says no."]
    );
    // The delay template had an undefined name: the built-in one is used.
    assert_eq!(
        cfg.templates.delay.subject,
        "Delayed Mail (still being retried)"
    );
    std::fs::write(&file, "bogus_template = <<EOF\nx\nEOF\n").unwrap();
    let e = Config::load("bounce", &s3.params, &s3.layout)
        .err()
        .unwrap();
    assert!(e.contains("unknown template name"), "{e}");
    std::fs::remove_file(&file).unwrap();
    assert!(Config::load("bounce", &s3.params, &s3.layout).is_err());
}
