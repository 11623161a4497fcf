//! Delivery status notifications end to end: a whole instance with the
//! bounce, defer and trace services, mail submitted with the real
//! sendmail, the notices read back from the sender's Maildir and parsed
//! as MIME, and the log lines Postfix writes.
//!
//! Routing: `gone.example` goes to `error:5.1.1 no such user` (bounces
//! at once), `later.example` to `retry:4.4.1 host later.example
//! unreachable` (defers forever). The sender is the test user at
//! `mx.example.test`, delivered locally to its Maildir.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use common::{logged_id, user, wait_for, Instance};

fn instance(tag: &str, extra: &str) -> Instance {
    let i = Instance::new(tag, extra);
    let top = i.top.display().to_string();
    i.file(
        "transport",
        "gone.example  error:5.1.1 no such user\n\
         later.example  retry:4.4.1 host later.example unreachable\n",
    );
    i.main_cf(&format!("transport_maps = texthash:{top}/transport"));
    i
}

fn msg(subject: &str) -> String {
    format!("Subject: {subject}\nMessage-ID: <{subject}@test>\n\nbody of {subject}\n")
}

fn sender() -> String {
    format!("{}@mx.example.test", user())
}

/// A MIME entity: unfolded header fields and body.
struct Entity {
    fields: Vec<(String, String)>,
    body: String,
}

impl Entity {
    fn parse(text: &str) -> Entity {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                let last = fields.last_mut().expect("a continuation after a field");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else {
                let (n, v) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not a header field: {line:?}"));
                fields.push((n.to_string(), v.trim().to_string()));
            }
        }
        Entity {
            fields,
            body: body.to_string(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The parts of a multipart entity, checking the delimiters.
    fn parts(&self) -> Vec<Entity> {
        let ct = self.get("Content-Type").expect("a Content-Type");
        let b = ct
            .split("boundary=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no boundary in {ct}"));
        let (open, close) = (format!("--{b}"), format!("--{b}--"));
        let mut parts: Vec<Vec<&str>> = Vec::new();
        let mut cur: Option<Vec<&str>> = None;
        let mut closed = false;
        for line in self.body.split('\n') {
            if line == close {
                parts.push(cur.take().expect("a part before the end"));
                closed = true;
                break;
            } else if line == open {
                parts.extend(cur.take());
                cur = Some(Vec::new());
            } else if let Some(p) = cur.as_mut() {
                p.push(line);
            }
        }
        assert!(closed, "no closing delimiter in:\n{}", self.body);
        parts
            .into_iter()
            .map(|l| Entity::parse(&l.join("\n")))
            .collect()
    }
}

/// The groups of fields of a message/delivery-status part.
fn status_groups(body: &str) -> Vec<HashMap<String, String>> {
    body.split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            Entity::parse(&format!("{}\n\n", g.trim_matches('\n')))
                .fields
                .into_iter()
                .collect()
        })
        .collect()
}

/// A delivered notice: its top entity and three parts, checked for the
/// RFC 3464 structure.
fn report(text: &str) -> (Entity, Vec<Entity>) {
    let top = Entity::parse(text);
    assert_eq!(top.get("MIME-Version"), Some("1.0"), "{text}");
    let ct = top.get("Content-Type").unwrap();
    assert!(
        ct.starts_with("multipart/report; report-type=delivery-status;"),
        "{ct}"
    );
    assert!(top.get("From").unwrap().contains("MAILER-DAEMON"), "{text}");
    assert!(top.get("Date").is_some() && top.get("Message-ID").is_some());
    let parts = top.parts();
    assert_eq!(parts.len(), 3, "{text}");
    assert!(parts[0]
        .get("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        parts[1].get("Content-Type"),
        Some("message/delivery-status")
    );
    (top, parts)
}

/// The notices (multipart/report messages) in the test user's Maildir.
fn notices(i: &Instance) -> Vec<String> {
    i.maildir(&i.user_maildir())
        .into_iter()
        .filter(|m| m.contains("report-type=delivery-status"))
        .collect()
}

#[test]
fn error_recipient_bounces_to_the_senders_maildir() {
    let mut i = instance("bounce-error", "");
    i.with_bounce();
    i.start();
    i.send(&["-f", &sender(), "nobody@gone.example"], &msg("lost"));
    i.kick();
    i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<nobody@gone.example>, relay=none, .*dsn=5\.1\.1, status=bounced \(no such user\)$");
    let line = i.wait_log(
        r"postfix/bounce\[\d+\]: [0-9A-F]+: sender non-delivery notification: [0-9A-F]+$",
    );
    let id = logged_id(&line);
    let new_id = line.rsplit(' ').next().unwrap().to_string();
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: {new_id}: from=<>, size=\d+, nrcpt=1 \(queue active\)$"
    ));
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (top, parts) = report(&mail[0]);
    assert_eq!(
        top.get("Subject"),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(top.get("To"), Some(sender().as_str()));
    assert_eq!(top.get("Auto-Submitted"), Some("auto-replied"));
    assert!(parts[0]
        .body
        .contains("<nobody@gone.example>: no such user"));
    let g = status_groups(&parts[1].body);
    assert_eq!(g.len(), 2, "{}", parts[1].body);
    assert_eq!(g[0]["Reporting-MTA"], "dns; mx.example.test");
    assert_eq!(g[0]["X-Postfix-Queue-ID"], id);
    assert_eq!(g[0]["X-Postfix-Sender"], format!("rfc822; {}", sender()));
    assert!(g[0].contains_key("Arrival-Date"));
    assert_eq!(g[1]["Final-Recipient"], "rfc822; nobody@gone.example");
    assert_eq!(g[1]["Action"], "failed");
    assert_eq!(g[1]["Status"], "5.1.1");
    assert_eq!(g[1]["Diagnostic-Code"], "X-Postfix; no such user");
    // The whole message comes back.
    assert_eq!(parts[2].get("Content-Type"), Some("message/rfc822"));
    let inner = Entity::parse(&parts[2].body);
    assert_eq!(inner.get("Subject"), Some("lost"));
    assert_eq!(inner.body, "body of lost\n");
    // Nothing is left behind.
    wait_for(20, "empty queues and logs", || {
        ["incoming", "active", "deferred", "bounce", "defer", "trace"]
            .iter()
            .all(|q| i.queue_files(q).is_empty())
    });
}

#[test]
fn notify_never_gets_nothing_and_ret_hdrs_gets_the_header() {
    let mut i = instance("bounce-never", "");
    i.with_bounce();
    i.start();
    let s = sender();
    i.send(&["-f", &s, "-N", "never", "a@gone.example"], &msg("never"));
    i.send(&["-f", &s, "-R", "hdrs", "b@gone.example"], &msg("hdrs"));
    i.kick();
    let never = logged_id(
        &i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<a@gone.example>, .*status=bounced"),
    );
    // qmgr removes a message only after the bounce service answered: a
    // notice for it would be logged by now.
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {never}: removed$"));
    assert!(
        i.log_lines(&format!(r"{never}: sender non-delivery notification"))
            .is_empty(),
        "{}",
        i.log_text()
    );
    let hdrs = logged_id(
        &i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<b@gone.example>, .*status=bounced"),
    );
    i.wait_log(&format!(
        r"postfix/bounce\[\d+\]: {hdrs}: sender non-delivery notification: [0-9A-F]+$"
    ));
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (_, parts) = report(&mail[0]);
    assert!(!mail[0].contains("a@gone.example"));
    assert_eq!(parts[2].get("Content-Type"), Some("text/rfc822-headers"));
    assert_eq!(
        parts[2].get("Content-Description"),
        Some("Undelivered Message Headers")
    );
    assert!(parts[2].body.contains("Subject: hdrs\n"));
    assert!(!parts[2].body.contains("body of hdrs"));
}

#[test]
fn notify_success_gets_a_delivery_report() {
    let mut i = instance("bounce-success", "");
    i.with_bounce();
    i.start();
    let s = sender();
    i.send(&["-f", &s, "-N", "success", &user()], &msg("hello"));
    i.kick();
    let line = i.wait_log(
        r"postfix/bounce\[\d+\]: [0-9A-F]+: sender delivery status notification: [0-9A-F]+$",
    );
    let id = logged_id(&line);
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    wait_for(30, "the message and its report", || {
        i.kick();
        i.maildir(&i.user_maildir()).len() >= 2
    });
    let reports = notices(&i);
    assert_eq!(reports.len(), 1);
    let (top, parts) = report(&reports[0]);
    assert_eq!(top.get("Subject"), Some("Successful Mail Delivery Report"));
    let g = status_groups(&parts[1].body);
    assert_eq!(g[1]["Final-Recipient"], format!("rfc822; {}", sender()));
    assert_eq!(g[1]["Action"], "delivered");
    assert_eq!(g[1]["Status"], "2.0.0");
    assert_eq!(parts[2].get("Content-Description"), Some("Message Headers"));
    assert!(i.queue_files("trace").is_empty());
}

#[test]
fn expired_mail_returns_with_the_last_defer_reason() {
    let mut i = instance(
        "bounce-expire",
        "maximal_queue_lifetime = 2s\nminimal_backoff_time = 1s\n\
         maximal_backoff_time = 1s\nqueue_run_delay = 1s",
    );
    i.with_bounce();
    i.start();
    i.send(
        &["-f", &sender(), "-V", "envid-42", "x@later.example"],
        &msg("late"),
    );
    i.kick();
    let line = i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: [0-9A-F]+: from=<{}>, status=expired, returned to sender$",
        sender()
    ));
    let id = logged_id(&line);
    i.wait_log(&format!(
        r"postfix/bounce\[\d+\]: {id}: sender non-delivery notification: [0-9A-F]+$"
    ));
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (top, parts) = report(&mail[0]);
    assert_eq!(
        top.get("Subject"),
        Some("Undelivered Mail Returned to Sender")
    );
    assert!(parts[0]
        .body
        .contains("<x@later.example>: host later.example unreachable"));
    let g = status_groups(&parts[1].body);
    assert_eq!(g[0]["Original-Envelope-Id"], "envid-42");
    assert_eq!(g[1]["Final-Recipient"], "rfc822; x@later.example");
    // Postfix's expiry notices keep the 4.x.x code of the last attempt.
    assert_eq!(g[1]["Action"], "failed");
    assert_eq!(g[1]["Status"], "4.4.1");
    assert_eq!(
        g[1]["Diagnostic-Code"],
        "X-Postfix; host later.example unreachable"
    );
    assert!(g[1].contains_key("Last-Attempt-Date"));
    assert_eq!(parts[2].get("Content-Type"), Some("message/rfc822"));
    wait_for(20, "no logs left", || {
        ["defer", "bounce", "deferred"]
            .iter()
            .all(|q| i.queue_files(q).is_empty())
    });
}

#[test]
fn delay_warning_is_sent_once_even_across_a_restart() {
    let mut i = instance(
        "bounce-delay",
        "delay_warning_time = 1s\nminimal_backoff_time = 1s\n\
         maximal_backoff_time = 1s\nqueue_run_delay = 1s",
    );
    i.with_bounce();
    i.start();
    i.send(&["-f", &sender(), "y@later.example"], &msg("slow"));
    i.kick();
    let line =
        i.wait_log(r"postfix/bounce\[\d+\]: [0-9A-F]+: sender delay notification: [0-9A-F]+$");
    let id = logged_id(&line);
    let deferred = format!(r"{id}: to=<y@later.example>, .*status=deferred");
    // Each pass settles (its notices included) before the next starts:
    // three more attempts would have sent a second warning.
    let more = |i: &Instance, n: usize| {
        let start = i.log_lines(&deferred).len();
        wait_for(60, "more delivery attempts", || {
            i.log_lines(&deferred).len() >= start + n
        });
    };
    more(&i, 3);
    // The mark is on the queue file, so a new qmgr does not warn again.
    // (The file moves between deferred/ and active/: look until seen.)
    let mut mode = None;
    wait_for(10, "the queue file", || {
        mode = ["deferred", "active"]
            .iter()
            .flat_map(|q| i.queue_files(q))
            .filter(|p| p.file_name().unwrap() == id.as_str())
            .find_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.mode());
        mode.is_some()
    });
    assert_eq!(mode.unwrap() & 0o020, 0o020, "the delay-warned mark");
    i.reload();
    more(&i, 3);
    assert_eq!(
        i.log_lines(r"sender delay notification").len(),
        1,
        "{}",
        i.log_text()
    );
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (top, parts) = report(&mail[0]);
    assert_eq!(
        top.get("Subject"),
        Some("Delayed Mail (still being retried)")
    );
    assert!(parts[0].body.contains("only a warning"));
    let g = status_groups(&parts[1].body);
    assert_eq!(g[1]["Final-Recipient"], "rfc822; y@later.example");
    assert_eq!(g[1]["Action"], "delayed");
    assert_eq!(g[1]["Status"], "4.4.1");
    assert!(g[1].contains_key("Will-Retry-Until"));
    assert_eq!(parts[2].get("Content-Type"), Some("text/rfc822-headers"));
    assert_eq!(notices(&i).len(), 1);
}

#[test]
fn a_bounce_that_bounces_is_not_returned() {
    let mut i = instance("bounce-null", "");
    i.with_bounce();
    i.start();
    i.send(&["-f", "<>", "c@gone.example"], &msg("twice"));
    i.kick();
    let id = logged_id(
        &i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<c@gone.example>, .*status=bounced"),
    );
    i.wait_log(&format!(
        r"postfix/bounce\[\d+\]: {id}: undeliverable mail from the null sender discarded"
    ));
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    assert!(i.log_lines("notification: ").is_empty(), "{}", i.log_text());
}

#[test]
fn with_2bounce_the_postmaster_gets_the_undeliverable_bounce() {
    let me = sender();
    let mut i = instance(
        "bounce-2bounce",
        &format!("notify_classes = 2bounce, resource, software\n2bounce_notice_recipient = {me}"),
    );
    i.with_bounce();
    i.start();
    i.send(&["-f", "<>", "d@gone.example"], &msg("twice"));
    i.kick();
    let line = i.wait_log(
        r"postfix/bounce\[\d+\]: [0-9A-F]+: postmaster non-delivery notification: [0-9A-F]+$",
    );
    let new_id = line.rsplit(' ').next().unwrap().to_string();
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: {new_id}: from=<double-bounce@mx.example.test>, "
    ));
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (top, parts) = report(&mail[0]);
    assert_eq!(top.get("To"), Some(me.as_str()));
    let g = status_groups(&parts[1].body);
    assert_eq!(g[0]["X-Postfix-Sender"], "rfc822; MAILER-DAEMON");
    assert_eq!(g[1]["Final-Recipient"], "rfc822; d@gone.example");
    assert_eq!(parts[2].get("Content-Type"), Some("message/rfc822"));
    assert!(parts[2].body.contains("body of twice"));
}

#[test]
fn without_the_bounce_service_the_message_waits_with_its_log() {
    let mut i = instance(
        "bounce-down",
        "minimal_backoff_time = 1s\nmaximal_backoff_time = 1s\nqueue_run_delay = 1s",
    );
    i.without_bounce();
    i.start();
    i.send(&["-f", &sender(), "e@gone.example"], &msg("kept"));
    i.kick();
    let id = logged_id(
        &i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<e@gone.example>, .*status=bounced"),
    );
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: warning: {id}: delivery status notification not sent: connect to bounce: "
    ));
    // Kept, every recipient done, with its bounce log, pass after pass.
    let name = std::ffi::OsString::from(&id);
    let kept = || {
        ["deferred", "active"]
            .iter()
            .flat_map(|q| i.queue_files(q))
            .any(|p| p.file_name() == Some(name.as_os_str()))
            && i.queue_files("bounce").len() == 1
    };
    wait_for(20, "the message in the queue with its bounce log", || {
        i.queue_files("deferred").len() == 1
    });
    // (It moves between deferred/ and active/: look until seen.)
    wait_for(10, "the message and its bounce log", &kept);
    let failed = format!(r"warning: {id}: delivery status notification not sent");
    wait_for(30, "a second attempt", || i.log_lines(&failed).len() >= 2);
    wait_for(10, "the message and its bounce log", &kept);
    assert!(i.log_lines(&format!("{id}: removed")).is_empty());
    // The service comes: the notice goes out, once, and the message goes.
    i.with_bounce();
    i.reload();
    i.wait_log(&format!(
        r"postfix/bounce\[\d+\]: {id}: sender non-delivery notification: [0-9A-F]+$"
    ));
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    let mail = i.wait_maildir(&i.user_maildir(), 1);
    let (_, parts) = report(&mail[0]);
    assert_eq!(
        status_groups(&parts[1].body)[1]["Final-Recipient"],
        "rfc822; e@gone.example"
    );
    assert!(i.queue_files("bounce").is_empty());
    assert_eq!(i.log_lines("sender non-delivery notification").len(), 1);
}

#[test]
fn bounced_then_expired_recipients_are_each_reported_once() {
    let mut i = instance(
        "bounce-mixed",
        "minimal_backoff_time = 1s\nmaximal_backoff_time = 1s\nqueue_run_delay = 1s",
    );
    i.with_bounce();
    i.start();
    i.send(
        &["-f", &sender(), "nobody@gone.example", "x@later.example"],
        &msg("mixed"),
    );
    i.kick();
    let line = i.wait_log(
        r"postfix/bounce\[\d+\]: [0-9A-F]+: sender non-delivery notification: [0-9A-F]+$",
    );
    let id = logged_id(&line);
    // Later passes try the deferred recipient again, and never report
    // the bounced one a second time.
    let deferred = format!(r"{id}: to=<x@later.example>, .*status=deferred");
    wait_for(60, "three attempts", || i.log_lines(&deferred).len() >= 3);
    assert_eq!(i.log_lines("non-delivery notification").len(), 1);
    assert!(i.queue_files("bounce").is_empty());
    // postsuper -e: returned at the next attempt with its last reason.
    let out = std::process::Command::new(common::program("postsuper"))
        .args(["-c", &i.etc, "-e", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: {id}: from=<{}>, status=force-expired, returned to sender$",
        sender()
    ));
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    assert_eq!(i.log_lines("sender non-delivery notification").len(), 2);
    wait_for(30, "both notices delivered", || {
        i.kick();
        notices(&i).len() >= 2
    });
    let mut finals: Vec<(String, String)> = notices(&i)
        .iter()
        .map(|m| {
            let (_, parts) = report(m);
            let g = status_groups(&parts[1].body);
            assert_eq!(g.len(), 2, "one recipient per notice");
            (g[1]["Final-Recipient"].clone(), g[1]["Status"].clone())
        })
        .collect();
    finals.sort();
    assert_eq!(
        finals,
        vec![
            (
                "rfc822; nobody@gone.example".to_string(),
                "5.1.1".to_string()
            ),
            ("rfc822; x@later.example".to_string(), "4.4.1".to_string()),
        ]
    );
}

#[test]
fn local_mail_to_double_bounce_is_discarded() {
    let mut i = instance("bounce-loop", "");
    i.with_bounce();
    i.start();
    i.send(
        &["-f", &sender(), "double-bounce@mx.example.test"],
        &msg("loop"),
    );
    i.kick();
    let line = i.wait_log(
        r"postfix/qmgr\[\d+\]: [0-9A-F]+: to=<double-bounce@mx.example.test>, relay=none, .*dsn=2\.0\.0, status=sent \(undeliverable postmaster notification discarded\)$",
    );
    let id = logged_id(&line);
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
}

#[test]
fn smtputf8_mail_gets_a_global_notice() {
    // smtpd would refuse the recipient at RCPT (error: transport); let
    // it through so that the bounce happens at delivery.
    let mut i = instance("bounce-utf8", "smtpd_reject_unlisted_recipient = no");
    let port = i.with_smtpd();
    i.start();
    let mut c = common::smtp::Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    let m = c.cmd(&format!("MAIL FROM:<{}> SMTPUTF8", sender()));
    assert!(m.starts_with("250"), "{m}");
    let r = c.cmd("RCPT TO:<jörg@gone.example>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send("Subject: grüße\r\n\r\nbody\r\n.\r\n");
    let d = c.reply();
    assert!(d.starts_with("250"), "{d}");
    c.cmd("QUIT");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    let top = Entity::parse(&got[0]);
    assert!(
        top.get("Content-Type")
            .is_some_and(|t| t.starts_with("multipart/report")),
        "{}",
        got[0]
    );
    let parts = top.parts();
    assert_eq!(parts.len(), 3, "{}", got[0]);
    assert_eq!(
        parts[1].get("Content-Type"),
        Some("message/global-delivery-status")
    );
    assert_eq!(parts[2].get("Content-Type"), Some("message/global"));
}
