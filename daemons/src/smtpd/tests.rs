//! The session, command by command, with a scripted gate and a queue
//! that records what cleanup would get.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libmail::ipc::Attrs;
use libmail::smtp::Reply;

use super::session::*;

fn settings() -> Settings {
    Settings {
        hard_error_limit: 5,
        sasl_authenticated_header: true,
        ..Settings::example("mx.example.test")
    }
}

/// Rejects recipients at `bad.example` with Postfix's relay reply.
struct TestGate {
    delay: bool,
}

impl Gate for TestGate {
    fn delay_reject(&self) -> bool {
        self.delay
    }
    fn ask(&self, at: Ask, view: &Facts) -> Verdict {
        let mut v = Verdict::default();
        if at == Ask::Rcpt {
            if let Some(r) = view.recipient.filter(|r| r.ends_with("@bad.example")) {
                v.reply = Some(Reply::new(
                    454,
                    "4.7.1",
                    format!("<{r}>: Relay access denied"),
                ));
            }
        }
        if at == Ask::EndOfData && view.sender == Some("late@example.org") {
            v.reply = Some(Reply::new(
                554,
                "5.7.1",
                "<late@example.org>: End-of-data rejected",
            ));
        }
        if at == Ask::Helo && view.helo == Some("evil") {
            v.reply = Some(Reply::new(
                554,
                "5.7.1",
                "<evil>: Helo command rejected: Access denied",
            ));
        }
        v
    }
}

#[derive(Default)]
struct Record {
    opened: usize,
    envelope: Option<Attrs>,
    content: Vec<u8>,
    finished: bool,
    aborted: usize,
}

struct TestQueue(Arc<Mutex<Record>>);

impl Queue for TestQueue {
    fn open(&mut self) -> Result<String, Reply> {
        let mut r = self.0.lock().unwrap();
        r.opened += 1;
        Ok(format!("ABCDE{}", r.opened))
    }
    fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply> {
        self.0.lock().unwrap().envelope = Some(attrs.clone());
        Ok(())
    }
    fn content(&mut self, bytes: &[u8]) -> Result<(), Reply> {
        self.0.lock().unwrap().content.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(&mut self) -> Result<String, Reply> {
        let mut r = self.0.lock().unwrap();
        r.finished = true;
        Ok(format!("ABCDE{}", r.opened))
    }
    fn abort(&mut self) {
        self.0.lock().unwrap().aborted += 1;
    }
}

fn session(delay: bool) -> (Session, Arc<Mutex<Record>>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let s = Session::new(
        Arc::new(settings()),
        Arc::new(TestGate { delay }),
        Box::new(TestQueue(rec.clone())),
        Client {
            addr: Some("127.0.0.1".parse().unwrap()),
            port: 4242,
            name: "localhost".into(),
            reverse_name: "localhost".into(),
            server: None,
        },
    );
    (s, rec)
}

/// A session under `smtpd_forbid_bare_newline = reject`, for a client at
/// 192.0.2.7, with these exclusions.
fn bare_lf_session(exclusions: &str) -> (Session, Arc<Mutex<Record>>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let set = Settings {
        bare_lf: BareLf::Reject,
        ..settings()
    };
    let list = libmail::address::networks::NetworkList::new(
        "smtpd_forbid_bare_newline_exclusions",
        exclusions,
        false,
    )
    .unwrap();
    let s = Session::new(
        Arc::new(set),
        Arc::new(TestGate { delay: true }),
        Box::new(TestQueue(rec.clone())),
        Client {
            addr: Some("192.0.2.7".parse().unwrap()),
            port: 4242,
            name: "unknown".into(),
            reverse_name: "unknown".into(),
            server: None,
        },
    )
    .with_bare_lf_exclusions(&list);
    (s, rec)
}

fn said(s: &mut Session, line: &str) -> String {
    match s.command(line) {
        Step::Reply(r) | Step::Close(r) | Step::Data(r) => r.to_string(),
        Step::Bdat { size, last } => format!("BDAT {size} {last}"),
        Step::StartTls(r) => format!("STARTTLS {r}"),
    }
}

#[test]
fn greeting_ehlo_and_unknown_commands_as_postfix() {
    let (mut s, _) = session(true);
    assert_eq!(
        s.greeting(),
        Step::Reply(Reply::new(220, "", "mx.example.test ESMTP Postfix"))
    );
    assert_eq!(
        said(&mut s, "EHLO client.example"),
        "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-VRFY\r\n250-ETRN\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    );
    assert_eq!(
        said(&mut s, "HELP"),
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(
        said(&mut s, "RCPT TO:<a@b>"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(
        said(&mut s, "DATA"),
        "503 5.5.1 Error: need RCPT command\r\n"
    );
    assert_eq!(
        said(&mut s, "HELO client.example"),
        "250 mx.example.test\r\n"
    );
    assert_eq!(said(&mut s, "NOOP"), "250 2.0.0 Ok\r\n");
    assert_eq!(said(&mut s, "VRFY <u@x>"), "252 2.0.0 u@x\r\n");
    assert_eq!(
        said(&mut s, "GET / HTTP/1.0"),
        "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    );
}

#[test]
fn a_transaction_reaches_the_queue_with_envelope_and_received_header() {
    let (mut s, rec) = session(true);
    s.greeting();
    said(&mut s, "EHLO client.example");
    assert_eq!(
        said(
            &mut s,
            "MAIL FROM:<a@example.org> SIZE=100 RET=HDRS ENVID=e1"
        ),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        said(&mut s, "MAIL FROM:<b@example.org>"),
        "503 5.5.1 Error: nested MAIL command\r\n"
    );
    assert_eq!(
        said(&mut s, "RCPT TO:<x@bad.example>"),
        "454 4.7.1 <x@bad.example>: Relay access denied\r\n"
    );
    assert_eq!(
        rec.lock().unwrap().opened,
        0,
        "no queue file before a valid recipient"
    );
    assert_eq!(
        said(&mut s, "RCPT TO:<u@mx.example.test> NOTIFY=SUCCESS"),
        "250 2.1.5 Ok\r\n"
    );
    let logs = s.take_logs().join("\n");
    assert!(logs.contains("connect from localhost[127.0.0.1]"), "{logs}");
    assert!(
        logs.contains("NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 454 4.7.1 <x@bad.example>: Relay access denied; from=<a@example.org> to=<x@bad.example> proto=ESMTP helo=<client.example>"),
        "{logs}"
    );
    assert!(
        logs.contains("ABCDE1: client=localhost[127.0.0.1]"),
        "{logs}"
    );
    assert_eq!(
        said(&mut s, "DATA"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    s.data_line(b"Subject: hi");
    s.data_line(b"");
    s.data_line(b"body");
    assert_eq!(
        s.data_end().to_string(),
        "250 2.0.0 Ok: queued as ABCDE1\r\n"
    );
    let r = rec.lock().unwrap();
    let env = r.envelope.as_ref().unwrap();
    assert_eq!(env.get("sender"), Some("a@example.org"));
    assert_eq!(env.get("envid"), Some("e1"));
    assert_eq!(env.get("ret"), Some("2"));
    assert_eq!(
        env.get_all("rcpt").collect::<Vec<_>>(),
        vec!["u@mx.example.test"]
    );
    assert_eq!(env.get("attr.client_address"), Some("127.0.0.1"));
    let text = String::from_utf8(r.content.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "Received: from client.example (localhost [127.0.0.1])"
    );
    assert_eq!(
        lines[1],
        "\tby mx.example.test (Postfix) with ESMTP id ABCDE1"
    );
    assert!(
        lines[2].starts_with("\tfor <u@mx.example.test>; "),
        "{text}"
    );
    assert_eq!(&lines[3..], ["Subject: hi", "", "body"]);
    drop(r);
    assert_eq!(said(&mut s, "QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(
        s.disconnect_line(),
        "disconnect from localhost[127.0.0.1] ehlo=1 mail=1/2 rcpt=1/2 data=1 quit=1 commands=5/7"
    );
}

#[test]
fn size_limits_at_mail_and_in_the_content() {
    let (mut s, rec) = session(true);
    said(&mut s, "EHLO c");
    assert_eq!(
        said(&mut s, "MAIL FROM:<a@b> SIZE=5000"),
        "552 5.3.4 Message size exceeds fixed limit\r\n"
    );
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "DATA");
    for _ in 0..100 {
        s.data_line(b"0123456789012345678901234567890123456789");
    }
    assert_eq!(
        s.data_end().to_string(),
        "552 5.3.4 Error: message file too big\r\n"
    );
    assert!(!rec.lock().unwrap().finished);
    assert_eq!(rec.lock().unwrap().aborted, 1);
}

#[test]
fn recipient_limit_and_hard_error_limit() {
    let (mut s, _) = session(true);
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    for i in 0..3 {
        assert_eq!(
            said(&mut s, &format!("RCPT TO:<u{i}@x>")),
            "250 2.1.5 Ok\r\n"
        );
    }
    assert_eq!(
        said(&mut s, "RCPT TO:<u9@x>"),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    for _ in 0..3 {
        said(&mut s, "BOGUS");
    }
    // The fifth error is answered, then the session ends with a 421.
    assert_eq!(s.take_hangup(), None);
    assert_eq!(
        s.command("BOGUS"),
        Step::Reply(Reply::new(500, "5.5.2", "Error: command not recognized"))
    );
    assert_eq!(
        s.take_hangup(),
        Some(Reply::new(
            421,
            "4.7.0",
            "mx.example.test Error: too many errors"
        ))
    );
}

#[test]
fn helo_restrictions_apply_at_helo_without_delay_reject() {
    let (mut s, _) = session(false);
    s.greeting();
    assert_eq!(
        said(&mut s, "HELO evil"),
        "554 5.7.1 <evil>: Helo command rejected: Access denied\r\n"
    );
    let logs = s.take_logs().join("\n");
    assert!(
        logs.contains("NOQUEUE: reject: HELO from localhost[127.0.0.1]: 554 5.7.1 <evil>: Helo command rejected: Access denied; proto=SMTP helo=<evil>"),
        "{logs}"
    );
}

#[test]
fn bdat_chunks_become_lines() {
    let (mut s, rec) = session(true);
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    assert_eq!(said(&mut s, "BDAT 12"), "BDAT 12 false");
    s.bdat_bytes(b"Subject: x\r");
    s.bdat_bytes(b"\n");
    assert_eq!(
        s.bdat_end(12, false),
        Step::Reply(Reply::new(250, "2.0.0", "Ok: 12 bytes"))
    );
    assert_eq!(said(&mut s, "DATA"), "503 5.5.1 Error: DATA after BDAT\r\n");
    assert_eq!(said(&mut s, "BDAT 8 LAST"), "BDAT 8 true");
    s.bdat_bytes(b"\r\nbody\r\n");
    match s.bdat_end(8, true) {
        Step::Reply(r) => assert_eq!(r.to_string(), "250 2.0.0 Ok: 20 bytes queued as ABCDE1\r\n"),
        other => panic!("{other:?}"),
    }
    let text = String::from_utf8(rec.lock().unwrap().content.clone()).unwrap();
    assert!(text.ends_with("\nSubject: x\n\nbody\n"), "{text:?}");
}

/// Records whether each question saw TLS.
struct TlsSeen(Mutex<Vec<(Ask, bool)>>);

impl Gate for TlsSeen {
    fn delay_reject(&self) -> bool {
        true
    }
    fn ask(&self, at: Ask, view: &Facts) -> Verdict {
        self.0.lock().unwrap().push((at, view.tls));
        Verdict::default()
    }
}

fn tls_session(
    level: libmail::tls::Level,
    available: bool,
) -> (Session, Arc<Mutex<Record>>, Arc<TlsSeen>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let gate = Arc::new(TlsSeen(Mutex::new(Vec::new())));
    let mut set = settings();
    set.tls = TlsPolicy {
        level,
        available,
        loglevel: 1,
        received_header: true,
        ask_ccert: false,
    };
    let mut s = Session::new(
        Arc::new(set),
        gate.clone(),
        Box::new(TestQueue(rec.clone())),
        Client {
            addr: Some("127.0.0.1".parse().unwrap()),
            port: 4242,
            name: "localhost".into(),
            reverse_name: "localhost".into(),
            server: None,
        },
    );
    s.greeting();
    s.take_logs();
    (s, rec, gate)
}

fn tls13() -> libmail::tls::Summary {
    libmail::tls::Summary {
        protocol: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        bits: 256,
        key_exchange: Some("X25519".into()),
        peer_fingerprint: None,
        peer_cert: None,
    }
}

#[test]
fn starttls_is_offered_after_etrn_until_tls_is_active() {
    use libmail::tls::Level;
    let (mut s, _, _) = tls_session(Level::May, true);
    let ehlo = said(&mut s, "EHLO client.example");
    assert!(
        ehlo.contains("250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES"),
        "{ehlo}"
    );
    assert_eq!(
        said(&mut s, "STARTTLS now"),
        "501 5.5.4 Syntax: STARTTLS\r\n"
    );
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "STARTTLS 220 2.0.0 Ready to start TLS\r\n"
    );
    s.tls_started(tls13());
    assert!(s.tls_active());
    assert_eq!(
        s.take_logs(),
        [
            "Anonymous TLS connection established from localhost[127.0.0.1]: \
          TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519"
        ]
    );
    let ehlo = said(&mut s, "EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "554 5.5.1 Error: TLS already active\r\n"
    );
}

#[test]
fn the_handshake_forgets_helo_and_the_transaction() {
    use libmail::tls::Level;
    let (mut s, rec, _) = tls_session(Level::May, true);
    said(&mut s, "EHLO plain.example");
    said(&mut s, "MAIL FROM:<a@example.org>");
    assert_eq!(said(&mut s, "RCPT TO:<b@example.org>"), "250 2.1.5 Ok\r\n");
    assert!(said(&mut s, "STARTTLS").starts_with("STARTTLS 220"));
    s.tls_started(tls13());
    assert_eq!(
        rec.lock().unwrap().aborted,
        1,
        "the open queue file is dropped"
    );
    assert_eq!(
        said(&mut s, "RCPT TO:<b@example.org>"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    // The HELO name said in plaintext is not the one of the header.
    said(&mut s, "MAIL FROM:<a@example.org>");
    said(&mut s, "RCPT TO:<b@example.org>");
    assert!(said(&mut s, "DATA").starts_with("354"));
    s.data_line(b"x");
    s.data_end();
    let content = String::from_utf8(rec.lock().unwrap().content.clone()).unwrap();
    assert!(
        content.starts_with("Received: from localhost (localhost [127.0.0.1])\n"),
        "{content}"
    );
    assert!(!content.contains("plain.example"), "{content}");
    // Without EHLO after TLS the protocol is SMTP, not ESMTPS.
    assert!(content.contains("with SMTP id"), "{content}");
}

#[test]
fn received_header_says_esmtps_and_tls_details_and_restrictions_see_tls() {
    use libmail::tls::Level;
    let (mut s, rec, gate) = tls_session(Level::May, true);
    said(&mut s, "EHLO client.example");
    said(&mut s, "MAIL FROM:<a@example.org>");
    said(&mut s, "RCPT TO:<b@example.org>");
    said(&mut s, "RSET");
    said(&mut s, "STARTTLS");
    s.tls_started(tls13());
    said(&mut s, "EHLO client.example");
    said(&mut s, "MAIL FROM:<a@example.org>");
    said(&mut s, "RCPT TO:<b@example.org>");
    assert!(said(&mut s, "DATA").starts_with("354"));
    s.data_line(b"x");
    assert!(s
        .data_end()
        .to_string()
        .starts_with("250 2.0.0 Ok: queued as"));
    let content = String::from_utf8(rec.lock().unwrap().content.clone()).unwrap();
    assert!(
        content.starts_with(
            "Received: from client.example (localhost [127.0.0.1])\n\
             \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n\
             \t key-exchange X25519)\n\
             \t(No client certificate requested)\n\
             \tby mx.example.test (Postfix) with ESMTPS id ABCDE"
        ),
        "{content}"
    );
    let seen = gate.0.lock().unwrap().clone();
    let rcpts: Vec<bool> = seen
        .iter()
        .filter(|(a, _)| *a == Ask::Rcpt)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(rcpts, [false, true], "RCPT before and after the handshake");
}

#[test]
fn encrypt_requires_starttls_before_mail() {
    use libmail::tls::Level;
    for cmd in [
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<b@example.org>",
        "VRFY x",
        "ETRN x",
        "RSET",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    ] {
        // A session each: the refusals count as errors.
        let (mut s, _, _) = tls_session(Level::Encrypt, true);
        said(&mut s, "EHLO client.example");
        assert_eq!(
            said(&mut s, cmd),
            "530 5.7.0 Must issue a STARTTLS command first\r\n",
            "{cmd}"
        );
    }
    let (mut s, _, _) = tls_session(Level::Encrypt, true);
    said(&mut s, "EHLO client.example");
    // What Postfix lets through before the handshake.
    assert_eq!(said(&mut s, "NOOP"), "250 2.0.0 Ok\r\n");
    said(&mut s, "STARTTLS");
    s.tls_started(tls13());
    said(&mut s, "EHLO client.example");
    assert_eq!(
        said(&mut s, "MAIL FROM:<a@example.org>"),
        "250 2.1.0 Ok\r\n"
    );
}

#[test]
fn starttls_without_a_certificate_or_without_tls() {
    use libmail::tls::Level;
    let (mut s, _, _) = tls_session(Level::May, false);
    let ehlo = said(&mut s, "EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "454 4.7.0 TLS not available due to local problem\r\n"
    );
    let (mut s, _, _) = tls_session(Level::None, true);
    let ehlo = said(&mut s, "EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "502 5.5.1 Error: command not implemented\r\n"
    );
}

/// A scripted SASL server: PLAIN with `alice`/`pw` (AHVzZXIAcHc= is
/// "\0user\0pw" — any other response fails), LOGIN in two rounds.
struct TestSasl;

impl Sasl for TestSasl {
    fn mechanisms(&mut self, _tls: bool) -> Vec<String> {
        vec!["PLAIN".into(), "LOGIN".into()]
    }
    fn start(&mut self, mech: &str, initial: Option<&str>, _tls: bool, _c: &Client) -> SaslStep {
        match (mech, initial) {
            ("PLAIN", Some("AGFsaWNlAHB3")) => SaslStep::Success {
                user: "alice".into(),
            },
            ("PLAIN", None) => SaslStep::Challenge(String::new()),
            ("LOGIN", None) => SaslStep::Challenge("VXNlcm5hbWU6".into()),
            _ => SaslStep::fail("authentication failure"),
        }
    }
    fn respond(&mut self, response: &str) -> SaslStep {
        match response {
            "YWxpY2U=" => SaslStep::Challenge("UGFzc3dvcmQ6".into()),
            "cHc=" | "AGFsaWNlAHB3" => SaslStep::Success {
                user: "alice".into(),
            },
            _ => SaslStep::fail("authentication failure"),
        }
    }
    fn abort(&mut self) {}
}

#[test]
fn auth_plain_login_failure_abort_and_postfix_refusals() {
    let (s, rec) = session(true);
    let mut s = s.with_sasl(Box::new(TestSasl));
    let ehlo = said(&mut s, "EHLO c");
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES"),
        "{ehlo}"
    );
    assert_eq!(
        said(&mut s, "AUTH PLAIN AGJvYgB4"),
        "535 5.7.8 Error: authentication failed: authentication failure\r\n"
    );
    assert_eq!(said(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(said(&mut s, "*"), "501 5.7.0 Authentication aborted\r\n");
    assert_eq!(said(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(said(&mut s, "YWxpY2U="), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        said(&mut s, "cHc="),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        said(&mut s, "AUTH PLAIN AGFsaWNlAHB3"),
        "503 5.5.1 Error: already authenticated\r\n"
    );
    said(&mut s, "MAIL FROM:<alice@example.org>");
    said(&mut s, "RCPT TO:<u@x>");
    let logs = s.take_logs().join("\n");
    assert!(
        logs.contains(
            "ABCDE1: client=localhost[127.0.0.1], sasl_method=LOGIN, sasl_username=alice"
        ),
        "{logs}"
    );
    assert!(logs.contains("SASL PLAIN authentication failed"), "{logs}");
    said(&mut s, "DATA");
    s.data_line(b"Subject: x");
    s.data_end();
    let r = rec.lock().unwrap();
    let text = String::from_utf8(r.content.clone()).unwrap();
    assert!(
        text.contains(
            "\t(Authenticated sender: alice)\n\tby mx.example.test (Postfix) with ESMTPA id ABCDE1"
        ),
        "{text}"
    );
    let env = r.envelope.as_ref().unwrap();
    assert_eq!(env.get("attr.sasl_username"), Some("alice"));
    assert_eq!(env.get("attr.sasl_method"), Some("LOGIN"));
}

#[test]
fn auth_refused_without_sasl_and_inside_a_transaction() {
    let (mut plain, _) = session(true);
    said(&mut plain, "EHLO c");
    assert_eq!(
        said(&mut plain, "AUTH PLAIN"),
        "503 5.5.1 Error: authentication not enabled\r\n"
    );
    let (s, _) = session(true);
    let mut s = s.with_sasl(Box::new(TestSasl));
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    assert_eq!(
        said(&mut s, "AUTH PLAIN AGFsaWNlAHB3"),
        "503 5.5.1 Error: MAIL transaction in progress\r\n"
    );
}

fn limited(
    f: impl FnOnce(&mut super::anvil::Limits),
    exceptions: &str,
) -> Arc<super::anvil::ClientLimits> {
    let mut l = super::anvil::Limits::off(Duration::from_secs(3600));
    f(&mut l);
    let ex = libmail::address::networks::NetworkList::new(
        "smtpd_client_event_limit_exceptions",
        exceptions,
        false,
    )
    .unwrap();
    Arc::new(super::anvil::ClientLimits::new(l, "smtp", ex))
}

#[test]
fn connection_count_and_rate_refuse_the_greeting() {
    let l = limited(|l| l.connection_count = 2, "");
    let (a, _) = session(true);
    let mut a = a.with_limits(l.clone());
    let (b, _) = session(true);
    let mut b = b.with_limits(l.clone());
    assert!(matches!(a.greeting(), Step::Reply(_)));
    assert!(matches!(b.greeting(), Step::Reply(_)));
    let (c, _) = session(true);
    let mut c = c.with_limits(l.clone());
    assert_eq!(
        c.greeting(),
        Step::Close(Reply::new(
            421,
            "4.7.0",
            "mx.example.test Error: too many connections from 127.0.0.1"
        ))
    );
    assert_eq!(
        c.take_logs(),
        [
            "connect from localhost[127.0.0.1]",
            "warning: Connection concurrency limit exceeded: 3 from localhost[127.0.0.1] for service smtp"
        ]
    );
    // Closed sessions no longer count.
    drop(c);
    drop(a);
    let (d, _) = session(true);
    let mut d = d.with_limits(l);
    assert!(matches!(d.greeting(), Step::Reply(_)));

    let l = limited(|l| l.connection_rate = 1, "");
    let (a, _) = session(true);
    let mut a = a.with_limits(l.clone());
    assert!(matches!(a.greeting(), Step::Reply(_)));
    drop(a);
    let (b, _) = session(true);
    let mut b = b.with_limits(l);
    assert!(matches!(b.greeting(), Step::Close(_)));
    assert!(b.take_logs().contains(
        &"warning: Connection rate limit exceeded: 2 from localhost[127.0.0.1] for service smtp"
            .to_string()
    ));
}

#[test]
fn message_and_recipient_rates_answer_450() {
    let l = limited(
        |l| {
            l.message_rate = 1;
            l.recipient_rate = 2;
        },
        "192.0.2.0/24",
    );
    let (s, _) = session(true);
    let mut s = s.with_limits(l);
    s.greeting();
    said(&mut s, "EHLO c");
    assert_eq!(said(&mut s, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
    assert_eq!(said(&mut s, "RCPT TO:<u1@x>"), "250 2.1.5 Ok\r\n");
    assert_eq!(said(&mut s, "RCPT TO:<u2@x>"), "250 2.1.5 Ok\r\n");
    assert_eq!(
        said(&mut s, "RCPT TO:<u3@x>"),
        "450 4.7.1 Error: too many recipients from 127.0.0.1\r\n"
    );
    assert_eq!(said(&mut s, "RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        said(&mut s, "MAIL FROM:<a@b>"),
        "450 4.7.1 Error: too much mail from 127.0.0.1\r\n"
    );
    let logs = s.take_logs();
    assert!(logs.contains(
        &"warning: Recipient address rate limit exceeded: 3 from localhost[127.0.0.1] for service smtp"
            .to_string()
    ), "{logs:?}");
    assert!(logs.contains(
        &"warning: Message delivery request rate limit exceeded: 2 from localhost[127.0.0.1] for service smtp"
            .to_string()
    ), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("reject:")), "{logs:?}");
    assert!(
        s.disconnect_line().contains(" mail=1/2 rcpt=2/3 "),
        "{}",
        s.disconnect_line()
    );
}

#[test]
fn exempt_clients_are_not_limited() {
    let l = limited(
        |l| {
            l.connection_count = 1;
            l.message_rate = 1;
        },
        "127.0.0.0/8",
    );
    let (a, _) = session(true);
    let mut a = a.with_limits(l.clone());
    let (b, _) = session(true);
    let mut b = b.with_limits(l);
    assert!(matches!(a.greeting(), Step::Reply(_)));
    assert!(matches!(b.greeting(), Step::Reply(_)));
    for _ in 0..3 {
        assert_eq!(said(&mut b, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
        said(&mut b, "RSET");
    }
}

#[test]
fn auth_and_new_tls_session_rates() {
    use libmail::tls::Level;
    let l = limited(
        |l| {
            l.auth_rate = 1;
            l.new_tls_rate = 1;
        },
        "",
    );
    let (s, _) = session(true);
    let mut s = s.with_sasl(Box::new(TestSasl)).with_limits(l.clone());
    said(&mut s, "EHLO c");
    assert_eq!(said(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(said(&mut s, "*"), "501 5.7.0 Authentication aborted\r\n");
    assert_eq!(
        said(&mut s, "AUTH LOGIN"),
        "450 4.7.1 Error: too many AUTH commands from 127.0.0.1\r\n"
    );
    assert!(s.take_logs().contains(
        &"warning: AUTH command rate limit exceeded: 2 from localhost[127.0.0.1] for service smtp"
            .to_string()
    ));

    let (s, _, _) = tls_session(Level::May, true);
    let mut s = s.with_limits(l.clone());
    said(&mut s, "EHLO c");
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "STARTTLS 220 2.0.0 Ready to start TLS\r\n"
    );
    s.tls_started(tls13());
    s.new_tls_session();
    // One new session is within the limit; the check comes before the
    // handshake, so the second one is still allowed.
    let (s, _, _) = tls_session(Level::May, true);
    let mut s = s.with_limits(l.clone());
    said(&mut s, "EHLO c");
    assert!(said(&mut s, "STARTTLS").starts_with("STARTTLS 220"));
    s.new_tls_session();
    let (s, _, _) = tls_session(Level::May, true);
    let mut s = s.with_limits(l);
    said(&mut s, "EHLO c");
    assert_eq!(
        said(&mut s, "STARTTLS"),
        "454 4.7.0 Error: too many new TLS sessions from localhost[127.0.0.1]\r\n"
    );
    assert!(s.take_logs().contains(
        &"warning: New TLS session rate limit exceeded: 2 from localhost[127.0.0.1] for service smtp"
            .to_string()
    ));
}

#[test]
fn bare_lf_values_parse_as_postfix_3_7_11() {
    assert_eq!(BareLf::parse("no"), Some(BareLf::Normalize));
    assert_eq!(BareLf::parse("normalize"), Some(BareLf::Normalize));
    assert_eq!(BareLf::parse("yes"), Some(BareLf::Normalize));
    assert_eq!(BareLf::parse("Reject"), Some(BareLf::Reject));
    assert_eq!(BareLf::parse("note"), None);
    assert_eq!(BareLf::parse("maybe"), None);
}

#[test]
fn a_bare_lf_command_is_refused_and_ends_the_session_under_reject() {
    let (mut s, _) = bare_lf_session("127.0.0.0/8");
    s.greeting();
    said(&mut s, "EHLO c");
    s.take_logs();
    assert_eq!(
        s.bare_lf_command(),
        Some(Step::Close(Reply::new(
            550,
            "5.5.2",
            "mx.example.test Error: bare <LF> received"
        )))
    );
    assert_eq!(
        s.take_logs(),
        vec!["NOQUEUE: reject: EHLO from unknown[192.0.2.7]: 550 5.5.2 mx.example.test Error: bare <LF> received; proto=ESMTP helo=<c>".to_string()]
    );
    // The refused line is not a command.
    assert_eq!(
        s.disconnect_line(),
        "disconnect from unknown[192.0.2.7] ehlo=1 commands=1"
    );
}

#[test]
fn the_reject_code_is_configurable() {
    let rec = Arc::new(Mutex::new(Record::default()));
    let set = Settings {
        bare_lf: BareLf::Reject,
        bare_lf_reject_code: 521,
        ..settings()
    };
    let mut s = Session::new(
        Arc::new(set),
        Arc::new(TestGate { delay: true }),
        Box::new(TestQueue(rec)),
        Client {
            addr: Some("192.0.2.7".parse().unwrap()),
            port: 4242,
            name: "unknown".into(),
            reverse_name: "unknown".into(),
            server: None,
        },
    );
    match s.bare_lf_command() {
        Some(Step::Close(r)) => assert_eq!(
            r.to_string(),
            "521 5.5.2 mx.example.test Error: bare <LF> received\r\n"
        ),
        other => panic!("{other:?}"),
    }
    let logs = s.take_logs().join("\n");
    assert!(
        logs.contains("NOQUEUE: reject: CONNECT from unknown[192.0.2.7]: 521 5.5.2 "),
        "{logs}"
    );
}

#[test]
fn bare_lf_content_is_refused_at_the_end_of_data_and_not_queued() {
    let (mut s, rec) = bare_lf_session("127.0.0.0/8");
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "DATA");
    s.take_logs();
    s.data_line(b"Subject: x");
    s.data_bare_lf();
    s.data_line(b"smuggled");
    s.data_line(b"body");
    assert_eq!(
        s.data_end().to_string(),
        "550 5.5.2 mx.example.test Error: bare <LF> received\r\n"
    );
    {
        let r = rec.lock().unwrap();
        assert!(!r.finished, "nothing queued");
        assert_eq!(r.aborted, 1);
    }
    assert_eq!(
        s.take_logs(),
        vec!["ABCDE1: reject: END-OF-MESSAGE from unknown[192.0.2.7]: 550 5.5.2 mx.example.test Error: bare <LF> received; from=<a@b> proto=ESMTP helo=<c>".to_string()]
    );
    // The session goes on: the next message is clean.
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "DATA");
    s.data_line(b"clean");
    assert_eq!(
        s.data_end().to_string(),
        "250 2.0.0 Ok: queued as ABCDE2\r\n"
    );
    assert_eq!(
        s.disconnect_line(),
        "disconnect from unknown[192.0.2.7] ehlo=1 mail=2 rcpt=2 data=1/2 commands=6/7"
    );
}

#[test]
fn bare_lf_in_bdat_is_refused_at_the_last_chunk() {
    let (mut s, rec) = bare_lf_session("");
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "BDAT 12");
    // CR LF split across chunks is not a bare LF.
    s.bdat_bytes(b"Subject: x\r");
    s.bdat_bytes(b"\n");
    assert_eq!(
        s.bdat_end(12, false),
        Step::Reply(Reply::new(250, "2.0.0", "Ok: 12 bytes"))
    );
    said(&mut s, "BDAT 7 LAST");
    s.bdat_bytes(b"\nbody\r\n");
    assert_eq!(
        s.bdat_end(7, true),
        Step::Reply(Reply::new(
            550,
            "5.5.2",
            "mx.example.test Error: bare <LF> received"
        ))
    );
    assert!(!rec.lock().unwrap().finished);
}

#[test]
fn clients_in_the_exclusions_and_other_modes_keep_bare_lf() {
    // Excluded: 192.0.2.7 is in the list.
    let (mut s, rec) = bare_lf_session("127.0.0.0/8, 192.0.2.0/24");
    assert_eq!(s.bare_lf_command(), None);
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "DATA");
    s.data_bare_lf();
    s.data_line(b"x");
    assert_eq!(
        s.data_end().to_string(),
        "250 2.0.0 Ok: queued as ABCDE1\r\n"
    );
    assert!(rec.lock().unwrap().finished);
    // normalize (and no, yes): bare LF is a line end, nothing more.
    let (mut s, rec) = session(true);
    assert_eq!(s.bare_lf_command(), None);
    said(&mut s, "EHLO c");
    said(&mut s, "MAIL FROM:<a@b>");
    said(&mut s, "RCPT TO:<u@x>");
    said(&mut s, "BDAT 3 LAST");
    s.bdat_bytes(b"x\ny");
    assert_eq!(
        s.bdat_end(3, true),
        Step::Reply(Reply::new(250, "2.0.0", "Ok: 3 bytes queued as ABCDE1"))
    );
    assert!(rec.lock().unwrap().finished);
}

#[test]
fn end_of_data_restrictions_refuse_the_message_after_its_content() {
    for split in [false, true] {
        let (mut s, rec) = session(true);
        s.greeting();
        said(&mut s, "EHLO client.example");
        said(&mut s, "MAIL FROM:<late@example.org>");
        said(&mut s, "RCPT TO:<u@mx.example.test>");
        assert_eq!(
            said(&mut s, "DATA"),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        s.data_line(b"Subject: x");
        s.data_line(b"");
        s.data_line(b"body");
        if split {
            // The event-loop shell's first half: nothing goes to cleanup.
            assert_eq!(s.data_end_start(), None);
        }
        let r = s.data_end();
        assert_eq!(
            String::from_utf8_lossy(&r.to_wire()),
            "554 5.7.1 <late@example.org>: End-of-data rejected\r\n"
        );
        let r = rec.lock().unwrap();
        assert!(!r.finished, "never queued");
        assert_eq!(r.aborted, 1);
        drop(r);
        let logs = s.take_logs().join("\n");
        assert!(
            logs.contains("ABCDE1: reject: END-OF-MESSAGE from localhost[127.0.0.1]: 554 5.7.1 <late@example.org>: End-of-data rejected; from=<late@example.org> proto=ESMTP helo=<client.example>"),
            "{logs}"
        );
        // The session goes on: the next message is taken.
        said(&mut s, "MAIL FROM:<ok@example.org>");
        said(&mut s, "RCPT TO:<u@mx.example.test>");
        said(&mut s, "DATA");
        s.data_line(b"hi");
        assert!(s.data_end().code == 250);
    }
}
