//! smtpd end to end, with real clients: swaks and Postfix's smtp-source
//! talk to a whole instance; the mail must land in the mailbox with
//! smtpd's Received: header, refusals must be Postfix's replies, and the
//! log must have Postfix's lines.

mod common;

use std::process::Command;

use common::smtp::{swaks, Raw};
use common::{user, wait_for, Instance};

#[test]
fn swaks_mail_reaches_the_mailbox_with_smtpds_received_header() {
    let mut i = Instance::new("smtpd-swaks", "");
    let port = i.with_smtpd();
    i.start();
    let me = user();
    let (ok, out) = swaks(
        port,
        &[
            "--ehlo",
            "client.example",
            "--from",
            "alice@example.org",
            "--to",
            &format!("{me}@mx.example.test"),
            "--header",
            "Subject: over smtp",
            "--body",
            "hello through smtpd",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    let m = &got[0];
    assert!(
        m.contains("\nReceived: from client.example (localhost [127.0.0.1])\n\tby mx.example.test (Postfix) with ESMTP id ")
            || m.contains("\nReceived: from client.example (unknown [127.0.0.1])\n\tby mx.example.test (Postfix) with ESMTP id "),
        "{m}"
    );
    assert!(
        m.contains(&format!("\tfor <{me}@mx.example.test>; ")),
        "{m}"
    );
    assert!(m.contains("hello through smtpd"), "{m}");
    assert!(m.starts_with("Return-Path: <alice@example.org>\n"), "{m}");
    let client = i.wait_log(r"postfix/smtpd\[\d+\]: connect from (\S+)\[127\.0\.0\.1\]$");
    let name = client
        .rsplit("connect from ")
        .next()
        .unwrap()
        .split('[')
        .next()
        .unwrap()
        .to_string();
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: [0-9A-F]+: client={}\[127\.0\.0\.1\]$",
        regex::escape(&name)
    ));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: disconnect from {}\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5$",
        regex::escape(&name)
    ));
}

#[test]
fn strangers_cannot_relay_and_unknown_users_are_refused() {
    let mut i = Instance::new("smtpd-relay", "");
    let port = i.with_smtpd();
    // Loopback is not "my network" here: the client is a stranger.
    i.main_cf("mynetworks = 192.0.2.0/24");
    i.start();
    let mut c = Raw::connect(port);
    assert!(c
        .cmd("EHLO stranger.example")
        .starts_with("250-mx.example.test\r\n"));
    assert_eq!(c.cmd("MAIL FROM:<s@stranger.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<victim@elsewhere.example>"),
        "454 4.7.1 <victim@elsewhere.example>: Relay access denied\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<nosuchuser-xyz@mx.example.test>"),
        "550 5.1.1 <nosuchuser-xyz@mx.example.test>: Recipient address rejected: User unknown in local recipient table\r\n"
    );
    assert_eq!(c.cmd("DATA"), "554 5.5.1 Error: no valid recipients\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 454 4\.7\.1 <victim@elsewhere\.example>: Relay access denied; from=<s@stranger\.example> to=<victim@elsewhere\.example> proto=ESMTP helo=<stranger\.example>$");
    assert!(
        i.queue_files("incoming").is_empty() && i.queue_files("active").is_empty(),
        "nothing queued"
    );
}

#[test]
fn smtp_source_sessions_in_parallel_all_arrive() {
    let mut i = Instance::new("smtpd-source", "");
    let port = i.with_smtpd();
    i.start();
    let me = user();
    let out = Command::new("/usr/sbin/smtp-source")
        .args(["-s", "4", "-m", "40", "-l", "4096", "-f", "src@example.org"])
        .args(["-t", &format!("{me}@mx.example.test")])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("smtp-source (package postfix)");
    assert!(out.status.success(), "{out:?}");
    let got = i.wait_maildir(&i.user_maildir(), 40);
    assert_eq!(got.len(), 40);
    // smtpd kept cleanup connections between messages, each with the
    // next message's file made in advance; stopping leaves none behind.
    i.stop();
    let left: Vec<_> = ["incoming", "active", "deferred"]
        .iter()
        .flat_map(|q| i.queue_files(q))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn protocol_replies_pipelining_and_smuggling() {
    let mut i = Instance::new("smtpd-proto", "");
    let port = i.with_smtpd();
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    assert_eq!(c.cmd("HELP"), "500 5.5.2 Error: command not recognized\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<a@b>"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b"),
        "501 5.1.7 Bad sender address syntax\r\n"
    );
    let ehlo = c.cmd("EHLO client.example");
    assert_eq!(
        ehlo,
        "250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    );
    // Pipelined: every reply comes, in order.
    c.send(&format!(
        "MAIL FROM:<p@example.org>\r\nRCPT TO:<{me}@mx.example.test>\r\nDATA\r\n"
    ));
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply(), "354 End data with <CR><LF>.<CR><LF>\r\n");
    // A bare-LF dot does not end the message (SMTP smuggling): the
    // "MAIL FROM" after it is content.
    c.send("Subject: smuggle\r\n\r\nline\n.\nMAIL FROM:<evil@example.org>\r\n..dot\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(
        got[0].contains("\nMAIL FROM:<evil@example.org>\n.dot\n"),
        "{:?}",
        got[0]
    );
    wait_for(10, "one delivery only", || {
        i.maildir(&i.user_maildir()).len() == 1
    });
}

#[test]
fn sendmail_bs_speaks_smtp_on_standard_input() {
    let mut i = Instance::new("smtpd-bs", "");
    i.start();
    let me = user();
    let input = format!(
        "EHLO local.example\r\nMAIL FROM:<me@example.org>\r\nRCPT TO:<{me}@mx.example.test>\r\n\
         DATA\r\nSubject: via -bs\r\n\r\n..dotted\r\nbody\r\n.\r\nQUIT\r\n"
    );
    let out = common::run_with_input(&common::program("sendmail"), &["-C", &i.etc, "-bs"], &input);
    assert!(out.status.success(), "{out:?}");
    let replies = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(lines[0], "220 mx.example.test ESMTP Postfix");
    assert_eq!(lines[1], "250-mx.example.test");
    let rest: Vec<&str> = lines
        .iter()
        .copied()
        .skip(1)
        .skip_while(|l| l.starts_with("250-"))
        .collect();
    assert_eq!(rest[0], "250 CHUNKING");
    assert_eq!(rest[1], "250 2.1.0 Ok");
    assert_eq!(rest[2], "250 2.1.5 Ok");
    assert_eq!(rest[3], "354 End data with <CR><LF>.<CR><LF>");
    assert!(rest[4].starts_with("250 2.0.0 Ok: queued as "), "{replies}");
    assert_eq!(rest[5], "221 2.0.0 Bye");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: via -bs\n"), "{}", got[0]);
    assert!(got[0].contains("\n.dotted\nbody\n"), "{}", got[0]);
    assert!(
        got[0].contains("Received: from local.example (localhost [127.0.0.1])"),
        "{}",
        got[0]
    );
}

#[test]
fn smtpd_with_dns_restrictions_exits_cleanly_on_reload() {
    // The DNS resolver (and its runtime) exists as soon as a restriction
    // uses DNS; no lookup is needed for the exit to matter. The server
    // named here never has to answer.
    let mut i = Instance::new("smtpd-dns-exit", "");
    let port = i.with_smtpd();
    i.main_cf(&format!(
        "facteur_dns_servers = 127.0.0.1:{}\nsmtpd_client_restrictions = reject_rbl_client bl.test",
        common::free_port()
    ));
    i.start();
    let mut c = Raw::connect(port);
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let line = i.wait_log(r"postfix/smtpd\[\d+\]: connect from ");
    let pid: i32 = line
        .split("smtpd[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .expect("smtpd's pid");
    // SAFETY: signalling the master we started.
    unsafe { libc::kill(i.master_pid().unwrap() as i32, libc::SIGHUP) };
    // master reaps the old smtpd (it is its parent) before the pid is gone.
    // SAFETY: signal 0 only checks existence.
    wait_for(
        30,
        "the old smtpd to exit",
        || unsafe { libc::kill(pid, 0) } != 0,
    );
    let log = i.log_text();
    assert!(
        !log.contains(&format!("pid {pid} exit status"))
            && !log.contains(&format!("pid {pid} killed")),
        "{log}"
    );
}

#[test]
fn the_error_that_reaches_the_limit_is_answered_then_421() {
    let mut i = Instance::new("smtpd-errlimit", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_hard_error_limit = 3\nsmtpd_soft_error_limit = 10");
    i.start();
    let mut c = Raw::connect(port);
    for _ in 0..3 {
        assert_eq!(
            c.cmd("BOGUS"),
            "500 5.5.2 Error: command not recognized\r\n"
        );
    }
    // The 421 follows the third reply without another command, and the
    // server closes.
    assert_eq!(
        c.reply(),
        "421 4.7.0 mx.example.test Error: too many errors\r\n"
    );
    assert_eq!(c.reply(), "");
    i.wait_log(r"too many errors after UNKNOWN from localhost\[127\.0\.0\.1\]$");
}

#[test]
fn unauthorised_pipelining_is_noticed_and_refused() {
    let mut i = Instance::new("smtpd-pipe", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_data_restrictions = reject_unauth_pipelining");
    i.start();
    let me = user();
    // HELO (no PIPELINING offered), then everything in one write.
    let mut c = Raw::connect(port);
    c.send(&format!(
        "HELO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{me}@mx.example.test>\r\nDATA\r\n"
    ));
    for _ in 0..3 {
        c.reply();
    }
    assert_eq!(
        c.reply(),
        "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining\r\n"
    );
    // The same commands one at a time after EHLO are fine.
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd(&format!("RCPT TO:<{me}@mx.example.test>"));
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
}

#[test]
fn sender_mx_access_refuses_a_domain_whose_mail_host_is_listed() {
    use common::peers::{Dns, DnsZone};
    use std::net::Ipv4Addr;
    // x.test's mail is handled by a host in a listed network; clean.test
    // has no MX, so its own address is what is checked.
    let dns = Dns::start(
        &DnsZone::new()
            .mx("x.test", 10, "mail.x.test")
            .a("mail.x.test", Ipv4Addr::new(192, 0, 2, 25))
            .a("clean.test", Ipv4Addr::new(198, 51, 100, 1)),
    );
    let mut i = Instance::new("smtpd-mx-access", "");
    let port = i.with_smtpd();
    let nets = i.file(
        "mx-nets",
        "192.0.2.0/24 REJECT Mail server in a listed network\n",
    );
    i.main_cf(&format!(
        "{}smtpd_sender_restrictions = check_sender_mx_access cidr:{}",
        dns.main_cf(),
        nets.display()
    ));
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    // smtpd_delay_reject = yes: the sender is refused at RCPT.
    assert_eq!(c.cmd("MAIL FROM:<sender@x.test>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
        "554 5.7.1 <sender@x.test>: Sender address rejected: Mail server in a listed network\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(c.cmd("MAIL FROM:<sender@clean.test>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 554 5\.7\.1 <sender@x\.test>: Sender address rejected: Mail server in a listed network; from=<sender@x\.test> to=<{}@mx\.example\.test> proto=ESMTP helo=<client\.example>$",
        regex::escape(&me)
    ));
}

/// Connects and reads everything the server says until it closes.
fn refused_greeting(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    all
}

#[test]
fn the_third_concurrent_connection_is_refused_as_anvil_would() {
    let mut i = Instance::new("smtpd-conn-limit", "");
    let port = i.with_smtpd();
    // 127.0.0.1 is in mynetworks, the default exceptions: none here.
    i.main_cf("smtpd_client_connection_count_limit = 2\nsmtpd_client_event_limit_exceptions =");
    i.start();
    let mut a = Raw::connect(port);
    let _b = Raw::connect(port);
    assert_eq!(
        refused_greeting(port),
        "421 4.7.0 mx.example.test Error: too many connections from 127.0.0.1\r\n"
    );
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: warning: Connection concurrency limit exceeded: 3 from \S+\[127\.0\.0\.1\] for service 127\.0\.0\.1:{port}$"
    ));
    // A session that ended frees its place: once the server closed it,
    // the next connection is welcome.
    assert_eq!(a.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(a.reply(), "", "closed");
    let mut c = Raw::connect(port);
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn message_and_recipient_rates_are_limited_per_client() {
    let mut i = Instance::new("smtpd-rate-limit", "");
    let port = i.with_smtpd();
    i.main_cf(
        "smtpd_client_message_rate_limit = 2\nsmtpd_client_recipient_rate_limit = 2\n\
         smtpd_client_event_limit_exceptions =",
    );
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    let rcpt = format!("RCPT TO:<{me}@mx.example.test>");
    assert_eq!(c.cmd(&rcpt), "250 2.1.5 Ok\r\n");
    assert_eq!(c.cmd(&rcpt), "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd(&rcpt),
        "450 4.7.1 Error: too many recipients from 127.0.0.1\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    // The count is per client, not per session.
    let mut d = Raw::connect(port);
    d.cmd("EHLO client.example");
    assert_eq!(d.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(d.cmd("RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        d.cmd("MAIL FROM:<a@example.org>"),
        "450 4.7.1 Error: too much mail from 127.0.0.1\r\n"
    );
    assert_eq!(d.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: warning: Recipient address rate limit exceeded: 3 from \S+\[127\.0\.0\.1\] for service 127\.0\.0\.1:{port}$"
    ));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: warning: Message delivery request rate limit exceeded: 3 from \S+\[127\.0\.0\.1\] for service 127\.0\.0\.1:{port}$"
    ));
    i.wait_log(r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 mail=1/2 rset=1 quit=1 commands=4/5$");
}

#[test]
fn clients_in_mynetworks_are_exempt_from_the_limits() {
    let mut i = Instance::new("smtpd-limit-exempt", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_client_connection_count_limit = 1\nsmtpd_client_message_rate_limit = 1");
    i.start();
    let _a = Raw::connect(port);
    let mut b = Raw::connect(port);
    b.cmd("EHLO client.example");
    for _ in 0..3 {
        assert_eq!(b.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
        assert_eq!(b.cmd("RSET"), "250 2.0.0 Ok\r\n");
    }
    assert_eq!(b.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert!(!i.log_text().contains("limit exceeded"), "{}", i.log_text());
}

/// A session that sends one message with these bytes as its content
/// (ending with the CRLF.CRLF); the reply to the end of data.
fn send_content(c: &mut Raw, me: &str, content: &str) -> String {
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.send(content);
    c.reply()
}

const BARE_LF_REPLY: &str = "550 5.5.2 mx.example.test Error: bare <LF> received\r\n";

#[test]
fn bare_lf_in_a_command_is_refused_and_the_session_ends_under_reject() {
    let mut i = Instance::new("smtpd-barelf-cmd", "");
    let port = i.with_smtpd();
    // Loopback is not in the exclusions: the client is not exempt.
    i.main_cf(
        "smtpd_forbid_bare_newline = reject\n\
         smtpd_forbid_bare_newline_exclusions = 192.0.2.0/24",
    );
    i.start();
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    c.send("MAIL FROM:<a@example.org>\n");
    assert_eq!(c.reply(), BARE_LF_REPLY);
    assert_eq!(c.reply(), "", "the server closed the connection");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: EHLO from \S+\[127\.0\.0\.1\]: 550 5\.5\.2 mx\.example\.test Error: bare <LF> received; proto=ESMTP helo=<client\.example>$",
    );
    i.wait_log(r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 commands=1$");
}

#[test]
fn bare_lf_in_content_is_refused_at_the_end_and_never_queued_under_reject() {
    let mut i = Instance::new("smtpd-barelf-data", "");
    let port = i.with_smtpd();
    i.main_cf(
        "smtpd_forbid_bare_newline = reject\n\
         smtpd_forbid_bare_newline_exclusions = 192.0.2.0/24",
    );
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    // The smuggling attempt: refused as a whole at CRLF.CRLF.
    let r = send_content(
        &mut c,
        &me,
        "Subject: smuggle\r\n\r\nline\n.\nMAIL FROM:<evil@example.org>\r\n.\r\n",
    );
    assert_eq!(r, BARE_LF_REPLY);
    // The session goes on; a clean message is queued.
    let r = send_content(&mut c, &me, "Subject: clean\r\n\r\nfine\r\n.\r\n");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: [0-9A-Za-z]+: reject: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: 550 5\.5\.2 mx\.example\.test Error: bare <LF> received; from=<a@example\.org> proto=ESMTP helo=<client\.example>$",
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 mail=2 rcpt=2 data=1/2 quit=1 commands=7/8$",
    );
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: clean\n"), "{}", got[0]);
    wait_for(30, "the queue to empty", || {
        i.queue_files("incoming").is_empty()
            && i.queue_files("active").is_empty()
            && i.queue_files("deferred").is_empty()
    });
    let all = i.maildir(&i.user_maildir());
    assert_eq!(all.len(), 1, "only the clean message: {all:?}");
    assert!(!all[0].contains("evil@example.org"), "{}", all[0]);
}

#[test]
fn excluded_clients_and_no_normalize_yes_accept_bare_lf() {
    let me = user();
    // reject, but loopback is in $mynetworks (the default exclusions);
    // then the three values that never reject.
    for (tag, conf) in [
        ("smtpd-barelf-excl", "smtpd_forbid_bare_newline = reject"),
        ("smtpd-barelf-no", "smtpd_forbid_bare_newline = no\nsmtpd_forbid_bare_newline_exclusions = 192.0.2.0/24"),
        ("smtpd-barelf-norm", "smtpd_forbid_bare_newline = normalize\nsmtpd_forbid_bare_newline_exclusions = 192.0.2.0/24"),
        ("smtpd-barelf-yes", "smtpd_forbid_bare_newline = yes\nsmtpd_forbid_bare_newline_exclusions = 192.0.2.0/24"),
    ] {
        let mut i = Instance::new(tag, "");
        let port = i.with_smtpd();
        i.main_cf(conf);
        i.start();
        let mut c = Raw::connect(port);
        c.send("EHLO client.example\n");
        assert!(c.reply().starts_with("250-mx.example.test\r\n"), "{tag}");
        // A bare-LF dot is content, not the end (normalize).
        let r = send_content(
            &mut c,
            &me,
            "Subject: lf\r\n\r\nline\n.\nafter\r\n.\r\n",
        );
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{tag}: {r}");
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
        let got = i.wait_maildir(&i.user_maildir(), 1);
        // The lone dot is content, unstuffed as any leading dot is.
        assert!(got[0].contains("\nline\n\nafter\n"), "{tag}: {:?}", got[0]);
        i.wait_log(
            r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5$",
        );
    }
}

/// An instance whose smtpd has these end-of-data restrictions, and a
/// client past EHLO.
fn end_of_data_session(name: &str, restrictions: &str) -> (Instance, Raw) {
    let mut i = Instance::new(name, "");
    let port = i.with_smtpd();
    i.main_cf(&format!("smtpd_end_of_data_restrictions = {restrictions}"));
    i.start();
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    (i, c)
}

/// One message from `sender` to the local user: the reply to its end.
fn one_message(c: &mut Raw, sender: &str, subject: &str) -> String {
    let me = user();
    assert_eq!(c.cmd(&format!("MAIL FROM:<{sender}>")), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    c.cmd(&format!("Subject: {subject}\r\n\r\nbody\r\n."))
}

#[test]
fn end_of_data_restrictions_refuse_after_the_content_and_queue_nothing() {
    let (i, mut c) = end_of_data_session(
        "smtpd-eod",
        "check_sender_access inline:{late@example.org=REJECT}",
    );
    for (sender, subject) in [("late@example.org", "x"), ("fine@example.org", "y")] {
        let reply = one_message(&mut c, sender, subject);
        if sender.starts_with("late") {
            assert_eq!(
                reply,
                "554 5.7.1 <late@example.org>: Sender address rejected: Access denied\r\n"
            );
        } else {
            assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
        }
    }
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: [0-9A-F]+: reject: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: 554 5\.7\.1 <late@example\.org>: Sender address rejected: Access denied; from=<late@example\.org> proto=ESMTP helo=<client\.example>$");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: y"), "{}", got[0]);
}

#[test]
fn mx_backup_accepts_relay_only_as_a_backup_mx() {
    use common::peers::{Dns, DnsZone};
    use std::net::Ipv4Addr;
    // 127.0.0.1 (inet_interfaces = loopback-only) is the backup MX of
    // backup.test and outside.test, the primary of primary.test;
    // nomx.test has no MX. Only the primaries of backup.test are in
    // permit_mx_backup_networks.
    let dns = Dns::start(
        &DnsZone::new()
            .mx("backup.test", 10, "mx1.primary.test")
            .mx("backup.test", 20, "mx.loopback.test")
            .mx("primary.test", 10, "mx.loopback.test")
            .mx("primary.test", 20, "mx1.primary.test")
            .mx("outside.test", 10, "mx.outside.test")
            .mx("outside.test", 20, "mx.loopback.test")
            .a("mx1.primary.test", Ipv4Addr::new(192, 0, 2, 51))
            .a("mx.outside.test", Ipv4Addr::new(198, 51, 100, 9))
            .a("mx.loopback.test", Ipv4Addr::LOCALHOST)
            .a("nomx.test", Ipv4Addr::LOCALHOST),
    );
    let mut i = Instance::new("smtpd-mx-backup", "");
    let port = i.with_smtpd();
    i.main_cf(&format!(
        "{}smtpd_relay_restrictions = permit_mx_backup, reject_unauth_destination\n\
         permit_mx_backup_networks = 192.0.2.0/24\n\
         smtpd_log_access_permit_actions = permit_mx_backup",
        dns.main_cf()
    ));
    i.start();
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<x@backup.test>"), "250 2.1.5 Ok\r\n");
    for denied in ["x@primary.test", "x@nomx.test", "x@outside.test"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{denied}>")),
            format!("554 5.7.1 <{denied}>: Relay access denied\r\n")
        );
    }
    // No message: the session ends before DATA (the queue ID is the one
    // the accepted recipient opened).
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: NOQUEUE: permit: RCPT from \S+\[127\.0\.0\.1\]: action=permit_mx_backup for Recipient address=x@backup\.test ; from=<a@example\.org> to=<x@backup\.test> proto=ESMTP helo=<client\.example>$",
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: [0-9A-F]+: reject: RCPT from \S+\[127\.0\.0\.1\]: 554 5\.7\.1 <x@primary\.test>: Relay access denied; from=<a@example\.org> to=<x@primary\.test> proto=ESMTP helo=<client\.example>$",
    );
    let log = i.log_text();
    assert!(!log.contains("is not supported yet"), "{log}");
}

#[test]
fn end_of_data_hold_and_discard_reach_cleanup_after_the_content() {
    let (i, mut c) = end_of_data_session(
        "smtpd-eod-actions",
        "check_sender_access inline:{ {held@example.org=HOLD spam}, {dropped@example.org=DISCARD junk} }",
    );
    for (sender, subject) in [
        ("held@example.org", "held"),
        ("dropped@example.org", "dropped"),
        ("fine@example.org", "fine"),
    ] {
        // Each is accepted, as Postfix accepts held and discarded mail.
        let reply = one_message(&mut c, sender, subject);
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued as "),
            "{sender}: {reply}"
        );
    }
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: [0-9A-F]+: hold: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: <held@example\.org>: Sender address spam; from=<held@example\.org> proto=ESMTP helo=<client\.example>$");
    i.wait_log(r"postfix/smtpd\[\d+\]: [0-9A-F]+: discard: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: <dropped@example\.org>: Sender address junk; from=<dropped@example\.org> proto=ESMTP helo=<client\.example>$");
    // Only the third is delivered; the held one waits in hold/, and the
    // discarded one is nowhere.
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: fine"), "{}", got[0]);
    wait_for(20, "the held message in hold/", || {
        i.queue_files("hold").len() == 1
    });
    let held = std::fs::read(&i.queue_files("hold")[0]).unwrap();
    assert!(
        String::from_utf8_lossy(&held).contains("Subject: held"),
        "hold/ has the wrong message"
    );
    // Nothing else queued (a file without the owner-execute bit is one
    // cleanup made ahead for smtpd's next message: not a message).
    wait_for(20, "an empty queue", || {
        use std::os::unix::fs::PermissionsExt;
        ["incoming", "active", "deferred"].iter().all(|q| {
            i.queue_files(q)
                .iter()
                .all(|f| std::fs::metadata(f).map_or(true, |m| m.permissions().mode() & 0o100 == 0))
        })
    });
    assert_eq!(i.maildir(&i.user_maildir()).len(), 1);
}

#[test]
fn anvil_statistics_are_logged_on_their_timer() {
    let mut i = Instance::new("smtpd-anvil-stats", "");
    let port = i.with_smtpd();
    // The client limits are on by default (connection count 50); the
    // loopback client is counted once it is no exception (they default
    // to $mynetworks); a report every second.
    i.main_cf("anvil_status_update_time = 1s\nsmtpd_client_event_limit_exceptions =");
    i.start();
    let mut a = Raw::connect(port);
    let mut b = Raw::connect(port);
    a.cmd("EHLO client.example");
    b.cmd("EHLO client.example");
    i.wait_log(r"postfix/smtpd\[\d+\]: statistics: max connection rate 2/60s for \(\S+:127\.0\.0\.1\) at [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d$");
    i.wait_log(r"postfix/smtpd\[\d+\]: statistics: max connection count 2 for \(\S+:127\.0\.0\.1\) at [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d$");
    i.wait_log(r"postfix/smtpd\[\d+\]: statistics: max cache size 1 at [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d$");
    assert_eq!(a.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert_eq!(b.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn end_of_data_redirect_and_bcc_change_the_recipients_after_the_content() {
    let me = user();
    let (i, mut c) = end_of_data_session(
        "smtpd-eod-redirect",
        &format!(
            "check_sender_access inline:{{ {{moved@example.org=REDIRECT {me}+moved@mx.example.test}}, {{copied@example.org=BCC {me}+copy@mx.example.test}} }}\n\
             recipient_delimiter = +"
        ),
    );
    for (sender, subject) in [
        ("moved@example.org", "moved"),
        ("copied@example.org", "copied"),
    ] {
        let reply = one_message(&mut c, sender, subject);
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued as "),
            "{sender}: {reply}"
        );
    }
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: [0-9A-F]+: redirect: END-OF-MESSAGE from \S+\[127\.0\.0\.1\]: <moved@example\.org>: Sender address triggers REDIRECT \S+; from=<moved@example\.org> proto=ESMTP helo=<client\.example>$");
    // Three deliveries: the redirected message to its new address only,
    // the copied one to its recipient and to the BCC address.
    let got = i.wait_maildir(&i.user_maildir(), 3);
    let delivered_to = |subject: &str| -> Vec<String> {
        let mut v: Vec<String> = got
            .iter()
            .filter(|m| m.contains(&format!("Subject: {subject}")))
            .map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Delivered-To: "))
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        delivered_to("moved"),
        vec![format!("{me}+moved@mx.example.test")]
    );
    assert_eq!(
        delivered_to("copied"),
        vec![
            format!("{me}+copy@mx.example.test"),
            format!("{me}@mx.example.test")
        ]
    );
}
