//! The smtp and lmtp delivery agents end to end: a whole Facteur instance
//! relays to real peers on loopback (Postfix's smtp-sink, Dovecot's LMTP)
//! and the log lines, the peers' mailboxes and the queue are checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{free_port, wait_for, Instance};

/// Postfix's smtp-sink on 127.0.0.1:port, saving each message as a file
/// under `dir`; killed by PID when dropped.
struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sink {
    fn start(top: &Path, extra: &[&str]) -> Sink {
        let dir = top.join(format!("sink-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut args: Vec<String> = vec!["-u".into(), common::user(), "-d".into()];
        args.push(format!("{}/%M.", dir.display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("127.0.0.1:{port}"));
        args.push("100".into());
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (package postfix): run scripts/test.sh");
        wait_for(10, "smtp-sink to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sink { child, port, dir }
    }

    fn messages(&self) -> Vec<String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v.iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(subject: &str) -> String {
    format!("From: alice@example.test\nTo: bob@remote.test\nSubject: {subject}\n\n.leading dot\nbody of {subject}\n")
}

#[test]
fn relayhost_delivery_to_smtp_sink_logs_like_postfix() {
    let mut inst = Instance::new("smtp-sink", "");
    let sink = Sink::start(&inst.top, &[]);
    inst.main_cf(&format!(
        "relayhost = [127.0.0.1]:{}\nsmtp_bind_address = 127.0.0.5\nsmtp_helo_name = out.example.test",
        sink.port
    ));
    inst.start();
    for i in 0..3 {
        inst.send(
            &["-f", "alice@example.test", "bob@remote.test"],
            &message(&format!("m{i}")),
        );
    }
    inst.kick();
    wait_for(30, "3 messages at the sink", || sink.messages().len() >= 3);
    let line = inst.wait_log(r"smtp\[\d+\]: [0-9A-F]+: to=<bob@remote\.test>.*status=sent");
    let re = regex::Regex::new(&format!(
        r"to=<bob@remote\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{}, (conn_use=\d+, )?delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok\)$",
        sink.port
    ))
    .unwrap();
    assert!(re.is_match(&line), "{line}");
    let got = sink.messages();
    assert!(got.iter().any(|m| m.contains("Subject: m1")));
    for m in &got {
        // The leading dot arrives unstuffed; the envelope, the HELO name
        // and the source address are the configured ones.
        assert!(m.contains("\n.leading dot"), "{m}");
        assert!(m.contains("X-Client-Addr: 127.0.0.5\n"), "{m}");
        assert!(m.contains("X-Helo-Args: out.example.test\n"), "{m}");
        assert!(m.contains("X-Mail-Args: <alice@example.test>"), "{m}");
        assert!(m.contains("X-Rcpt-Args: <bob@remote.test>"), "{m}");
    }
    wait_for(30, "the queue to empty", || {
        inst.queue_files("active").is_empty() && inst.queue_files("incoming").is_empty()
    });
    assert!(inst.queue_files("deferred").is_empty());
}

#[test]
fn refused_connection_is_deferred_with_postfix_reason() {
    let mut inst = Instance::new("smtp-refused", "");
    let port = free_port();
    inst.main_cf(&format!("relayhost = [127.0.0.1]:{port}"));
    inst.start();
    inst.send(
        &["-f", "alice@example.test", "bob@remote.test"],
        &message("x"),
    );
    inst.kick();
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.ends_with(&format!(
            "relay=none, delay={}",
            line.split("relay=none, delay=").nth(1).unwrap_or("")
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused)"
        )),
        "{line}"
    );
    wait_for(30, "the message in deferred/", || {
        !inst.queue_files("deferred").is_empty()
    });
}

/// One message, four recipients at Dovecot: two users, an unknown one
/// (refused at RCPT) and one over quota (refused after DATA only, LMTP's
/// reply per recipient).
fn lmtp_to_dovecot(inet: bool) {
    let dv = common::peers::DovecotLmtp::start(if inet { "e2e-inet" } else { "e2e-unix" });
    let mut inst = Instance::new(if inet { "lmtp-inet" } else { "lmtp-unix" }, "");
    let transport = if inet {
        dv.transport_inet()
    } else {
        dv.transport_unix()
    };
    inst.main_cf(&format!(
        "virtual_mailbox_domains = example.test\nvirtual_transport = {transport}\n"
    ));
    inst.start();
    let big = format!(
        "From: sender@remote.test\nSubject: hello lmtp\n\n{}\n",
        "0123456789abcdef".repeat(200)
    );
    inst.send(
        &[
            "-f",
            "sender@remote.test",
            "alice@example.test",
            "bob@example.test",
            "nobody@example.test",
            "full@example.test",
        ],
        &big,
    );
    inst.kick();
    let relay = if inet {
        regex::escape(&format!(
            "relay={0}[{0}]:{1}",
            dv.lmtp_inet().ip(),
            dv.lmtp_inet().port()
        ))
    } else {
        regex::escape(&format!(
            "relay=mx.example.test[{}]",
            dv.lmtp_socket().display()
        ))
    };
    let alice = inst.wait_log(&format!(
        r"to=<alice@example\.test>, {relay}, .*dsn=2\.0\.0, status=sent \(250 2\.0\.0 <alice@example\.test> .* Saved\)"
    ));
    assert!(!alice.contains("conn_use"), "{alice}");
    inst.wait_log(r"to=<bob@example\.test>, .*status=sent");
    let nobody = inst.wait_log(r"to=<nobody@example\.test>, .*status=bounced");
    assert!(
        nobody.contains("dsn=5.1.1") && nobody.contains("(in reply to RCPT TO command)"),
        "{nobody}"
    );
    let full = inst.wait_log(r"to=<full@example\.test>, .*status=bounced");
    assert!(
        full.contains("dsn=5.2.2") && full.contains("(in reply to end of DATA command)"),
        "{full}"
    );
    assert_eq!(dv.wait_messages("alice@example.test", 1).len(), 1);
    let bob = dv.wait_messages("bob@example.test", 1);
    assert!(bob[0].contains("Subject: hello lmtp"));
    assert!(dv.messages("full@example.test").is_empty());
}

#[test]
fn lmtp_to_dovecot_over_unix_socket_per_recipient_results() {
    lmtp_to_dovecot(false);
}

#[test]
fn lmtp_to_dovecot_over_tcp_per_recipient_results() {
    lmtp_to_dovecot(true);
}

#[test]
fn hard_and_soft_rejects_and_soft_bounce() {
    // A 5xx for every RCPT: bounced; the same under soft_bounce:
    // SOFTBOUNCE with a 4.x.x code, and the message stays queued.
    for soft in [false, true] {
        let mut inst = Instance::new(if soft { "smtp-softbounce" } else { "smtp-5xx" }, "");
        let sink = Sink::start(&inst.top, &["-f", "RCPT"]);
        inst.main_cf(&format!("relayhost = [127.0.0.1]:{}", sink.port));
        if soft {
            inst.main_cf("soft_bounce = yes");
        }
        inst.start();
        inst.send(
            &["-f", "alice@example.test", "bob@remote.test"],
            &message("r"),
        );
        inst.kick();
        let said = "host 127.0.0.1[127.0.0.1] said: 500 5.3.0 Error: command failed (in reply to RCPT TO command)";
        if soft {
            let line = inst.wait_log(r"to=<bob@remote\.test>.*status=SOFTBOUNCE");
            assert!(
                line.contains(&format!("dsn=4.3.0, status=SOFTBOUNCE ({said})")),
                "{line}"
            );
            wait_for(30, "the message in deferred/", || {
                !inst.queue_files("deferred").is_empty()
            });
        } else {
            let line = inst.wait_log(r"to=<bob@remote\.test>.*status=bounced");
            assert!(
                line.contains(&format!("dsn=5.3.0, status=bounced ({said})")),
                "{line}"
            );
        }
    }
    // A 4xx: deferred, the reply in the reason.
    let mut inst = Instance::new("smtp-4xx", "");
    let sink = Sink::start(&inst.top, &["-r", "RCPT"]);
    inst.main_cf(&format!("relayhost = [127.0.0.1]:{}", sink.port));
    inst.start();
    inst.send(
        &["-f", "alice@example.test", "bob@remote.test"],
        &message("s"),
    );
    inst.kick();
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.3.0 Error: command failed (in reply to RCPT TO command))"),
        "{line}"
    );
    assert!(
        line.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", sink.port)),
        "{line}"
    );
    assert!(sink.messages().is_empty());
}

/// MX routing against a real DNS server (dnsmasq) on loopback: MX
/// preference with a dead primary, no MX (the domain's own address), null
/// MX, a domain that does not exist, and an MX host without an address.
#[test]
fn mx_routing_with_a_real_dns_server() {
    use common::peers::{free_port_on, Dns, DnsZone, SmtpSink};
    use std::net::Ipv4Addr;
    let dead = Ipv4Addr::new(127, 0, 0, 2);
    let live = Ipv4Addr::new(127, 0, 0, 3);
    let own = Ipv4Addr::new(127, 0, 0, 4);
    let port = free_port_on(&[dead, live, own]);
    let live_sink = SmtpSink::start_at(live, port, &[]);
    let own_sink = SmtpSink::start_at(own, port, &[]);
    let dns = Dns::start(
        &DnsZone::new()
            .mx("mx.test", 10, "dead.mx.test")
            .mx("mx.test", 20, "live.mx.test")
            .a("dead.mx.test", dead)
            .a("live.mx.test", live)
            .a("nomx.test", own)
            .null_mx("nullmx.test")
            .mx("badmx.test", 10, "nowhere.badmx.test"),
    );
    let mut inst = Instance::new("smtp-mx", "");
    inst.main_cf(&format!(
        "{}smtp_tcp_port = {port}\ninet_protocols = ipv4\n",
        dns.main_cf()
    ));
    inst.start();
    for rcpt in [
        "u@mx.test",
        "u@nomx.test",
        "u@nullmx.test",
        "u@gone.test",
        "u@badmx.test",
    ] {
        inst.send(&["-f", "alice@example.test", rcpt], &message(rcpt));
    }
    inst.kick();
    let mx = inst.wait_log(r"to=<u@mx\.test>, .*status=sent");
    assert!(
        mx.contains(&format!("relay=live.mx.test[127.0.0.3]:{port}, ")),
        "{mx}"
    );
    // The dead primary was tried first and logged on its own line.
    inst.wait_log(&format!(
        r"smtp\[\d+\]: connect to dead\.mx\.test\[127\.0\.0\.2\]:{port}: Connection refused$"
    ));
    let own_line = inst.wait_log(r"to=<u@nomx\.test>, .*status=sent");
    assert!(
        own_line.contains(&format!("relay=nomx.test[127.0.0.4]:{port}, ")),
        "{own_line}"
    );
    let null = inst.wait_log(r"to=<u@nullmx\.test>, .*status=bounced");
    assert!(
        null.contains("relay=none, ")
            && null.contains(
                "dsn=5.1.0, status=bounced (Domain nullmx.test does not accept mail (nullMX))"
            ),
        "{null}"
    );
    let gone = inst.wait_log(r"to=<u@gone\.test>, .*status=bounced");
    assert!(
        gone.contains("dsn=5.4.4, status=bounced (Host or domain name not found. Name service error for name=gone.test type=A: Host not found)"),
        "{gone}"
    );
    let bad = inst.wait_log(r"to=<u@badmx\.test>, .*status=bounced");
    assert!(
        bad.contains("Name service error for name=nowhere.badmx.test type=A: Host not found"),
        "{bad}"
    );
    assert_eq!(live_sink.wait_messages(1).len(), 1);
    let got = own_sink.wait_messages(1);
    assert_eq!(got[0].rcpts, ["<u@nomx.test>"]);
}

/// `smtp_fallback_relay` with a real DNS server: a destination that does
/// not exist or has a null MX goes to the fall-back relay (Postfix tries
/// it for destinations "that can't be found or that are unreachable");
/// a fall-back relay or a relayhost that does not resolve is a
/// configuration problem: deferred with 4.3.5, not bounced.
#[test]
fn fallback_relay_with_a_real_dns_server_and_configuration_problems() {
    use common::peers::{free_port_on, Dns, DnsZone, SmtpSink};
    use std::net::Ipv4Addr;
    let fb_ip = Ipv4Addr::new(127, 0, 0, 6);
    let port = free_port_on(&[fb_ip]);
    let sink = SmtpSink::start_at(fb_ip, port, &[]);
    let dns = Dns::start(
        &DnsZone::new()
            .a("fallback.test", fb_ip)
            .null_mx("nullmx.test"),
    );
    let setup = |tag: &str, extra: &str| {
        let mut inst = Instance::new(tag, "");
        inst.main_cf(&format!(
            "{}smtp_tcp_port = {port}\ninet_protocols = ipv4\n{extra}",
            dns.main_cf()
        ));
        inst.start();
        inst
    };

    let inst = setup("fallback-dns", "smtp_fallback_relay = fallback.test");
    for rcpt in ["u@gone.test", "u@nullmx.test"] {
        inst.send(&["-f", "alice@example.test", rcpt], &message(rcpt));
    }
    inst.kick();
    for who in [r"u@gone\.test", r"u@nullmx\.test"] {
        let line = inst.wait_log(&format!(r"to=<{who}>, .*status=sent"));
        assert!(
            line.contains(&format!("relay=fallback.test[127.0.0.6]:{port}, ")),
            "{line}"
        );
    }
    let got = sink.wait_messages(2);
    let mut rcpts: Vec<String> = got.iter().flat_map(|d| d.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["<u@gone.test>", "<u@nullmx.test>"]);

    // The fall-back relay itself cannot be found.
    let inst = setup("fallback-badcfg", "smtp_fallback_relay = [nowhere.test]");
    inst.send(&["-f", "alice@example.test", "u@gone.test"], &message("x"));
    inst.kick();
    let line = inst.wait_log(r"to=<u@gone\.test>, .*status=deferred");
    assert!(
        line.contains("dsn=4.3.5, status=deferred (Host or domain name not found. Name service error for name=nowhere.test type=A: Host not found)"),
        "{line}"
    );
    inst.wait_log(r"smtp\[\d+\]: warning: smtp_fallback_relay configuration problem$");

    // Nor can the relayhost.
    let inst = setup("relayhost-badcfg", "relayhost = [nowhere.test]");
    inst.send(
        &["-f", "alice@example.test", "u@remote.test"],
        &message("y"),
    );
    inst.kick();
    let line = inst.wait_log(r"to=<u@remote\.test>, .*status=deferred");
    assert!(
        line.contains("dsn=4.3.5, status=deferred (Host or domain name not found."),
        "{line}"
    );
    inst.wait_log(r"smtp\[\d+\]: warning: relayhost configuration problem$");
    assert_eq!(sink.count(), 2);
}

/// `lmtp_generic_maps`: the recipient sent in RCPT TO and the address
/// headers are mapped; Dovecot delivers to the mapped user.
#[test]
fn lmtp_generic_maps_to_dovecot() {
    let dv = common::peers::DovecotLmtp::start("generic");
    let mut inst = Instance::new("lmtp-generic", "");
    inst.main_cf(&format!(
        "virtual_mailbox_domains = example.test\nvirtual_transport = {}\n\
         lmtp_generic_maps = inline:{{ {{robert@example.test=bob@example.test}} }}\n",
        dv.transport_unix()
    ));
    inst.start();
    inst.send(
        &["-f", "sender@remote.test", "robert@example.test"],
        "From: sender@remote.test\nTo: Robert <robert@example.test>\nSubject: mapped\n\nhi\n",
    );
    inst.kick();
    let line = inst.wait_log(r"lmtp\[\d+\]: [0-9A-F]+: to=<robert@example\.test>, .*status=sent");
    assert!(line.contains("<bob@example.test>"), "{line}");
    let got = dv.wait_messages("bob@example.test", 1);
    assert!(
        got[0].contains("\nTo: Robert <bob@example.test>\n"),
        "{}",
        got[0]
    );
    assert!(dv.messages("robert@example.test").is_empty());
}

/// `sender_dependent_relayhost_maps`: one sender's mail goes to its own
/// smarthost, everyone else's to `relayhost`.
#[test]
fn sender_dependent_relayhost_picks_the_smarthost_by_sender() {
    let mut inst = Instance::new("sender-relayhost", "");
    let global = Sink::start(&inst.top, &[]);
    let own = Sink::start(&inst.top, &[]);
    inst.main_cf(&format!(
        "relayhost = [127.0.0.1]:{}\n\
         sender_dependent_relayhost_maps = inline:{{ {{alice@example.test=[127.0.0.1]:{}}} }}\n",
        global.port, own.port
    ));
    inst.start();
    inst.send(
        &["-f", "alice@example.test", "x@remote.test"],
        &message("from alice"),
    );
    inst.send(
        &["-f", "bob@example.test", "x@remote.test"],
        &message("from bob"),
    );
    inst.kick();
    // (smtp-sink writes a file as the data comes: wait for the content.)
    let has = |sink: &Sink, subject: &str| sink.messages().iter().any(|m| m.contains(subject));
    wait_for(30, "one message at each smarthost", || {
        has(&own, "Subject: from alice") && has(&global, "Subject: from bob")
    });
    assert_eq!((own.messages().len(), global.messages().len()), (1, 1));
}

/// `content_filter`: mail picked up or received goes, whole and
/// unresolved, to the filter's `transport:nexthop` (smtp-sink standing for
/// amavis); the re-injection smtpd (`-o content_filter=`) delivers what it
/// gets normally. A header check's FILTER and an access table's FILTER
/// choose the filter for one message.
#[test]
fn content_filter_sends_mail_through_the_filter_and_back() {
    let mut inst = Instance::new("content-filter", "");
    let sink = Sink::start(&inst.top, &[]);
    let filter = format!("smtp:[127.0.0.1]:{}", sink.port);
    // The main smtpd filters; the re-injection one does not.
    let inbound = inst.with_smtpd();
    let reinject = free_port();
    let master = std::path::Path::new(&inst.etc).join("master.cf");
    let mut m = std::fs::read_to_string(&master).unwrap();
    m.push_str(&format!(
        "127.0.0.1:{reinject} inet n - n - - smtpd -o content_filter= -o smtpd_recipient_restrictions=permit_mynetworks,reject\n"
    ));
    std::fs::write(&master, m).unwrap();
    inst.main_cf(&format!("content_filter = {filter}\n"));
    inst.start();
    let me = format!("{}@mx.example.test", common::user());
    // Picked up: through the filter, not to the mailbox.
    inst.send(&["-f", "alice@example.test", &me], &message("picked up"));
    inst.kick();
    let line = inst.wait_log(&format!(
        r"smtp\[\d+\]: [0-9A-F]+: to=<{}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{}, .*status=sent",
        regex::escape(&me),
        sink.port
    ));
    assert!(!line.contains("orig_to"), "{line}");
    // Received by the filtering smtpd: the same.
    let (ok, talk) = common::smtp::swaks(
        inbound,
        &[
            "--from",
            "alice@example.test",
            "--to",
            &me,
            "--header",
            "Subject: received",
        ],
    );
    assert!(ok, "{talk}");
    // (smtp-sink writes a file as the data comes: wait for the content.)
    wait_for(30, "the received message at the filter", || {
        sink.messages().len() == 2
            && sink
                .messages()
                .iter()
                .any(|m| m.contains("Subject: received"))
    });
    // Re-injected: delivered here.
    let (ok, talk) = common::smtp::swaks(
        reinject,
        &[
            "--from",
            "alice@example.test",
            "--to",
            &me,
            "--header",
            "Subject: filtered already",
        ],
    );
    assert!(ok, "{talk}");
    let got = inst.wait_maildir(&inst.user_maildir(), 1);
    assert!(got[0].contains("Subject: filtered already"), "{}", got[0]);
    assert_eq!(sink.messages().len(), 2);
}

/// FILTER from a header check (cleanup) and from an access table (smtpd)
/// sends that one message through the filter; other mail is delivered.
#[test]
fn filter_actions_choose_the_filter_for_one_message() {
    let mut inst = Instance::new("filter-action", "");
    let sink = Sink::start(&inst.top, &[]);
    let filter = format!("smtp:[127.0.0.1]:{}", sink.port);
    let port = inst.with_smtpd();
    let hc = inst.file(
        "header_checks",
        &format!("/^Subject: scan me/ FILTER {filter}\n"),
    );
    let me = format!("{}@mx.example.test", common::user());
    inst.main_cf(&format!(
        "header_checks = regexp:{}\n\
         smtpd_recipient_restrictions = check_sender_access inline:{{ {{scanme@example.test=FILTER {filter}}} }}, permit_mynetworks, reject\n",
        hc.display()
    ));
    inst.start();
    inst.send(&["-f", "alice@example.test", &me], &message("scan me"));
    inst.send(&["-f", "alice@example.test", &me], &message("plain"));
    inst.kick();
    inst.wait_log(r"cleanup\[\d+\]: [0-9A-F]+: filter: header Subject: scan me from local; from=<alice@example\.test> to=<");
    let (ok, talk) = common::smtp::swaks(
        port,
        &[
            "--from",
            "scanme@example.test",
            "--to",
            &me,
            "--header",
            "Subject: by sender",
        ],
    );
    assert!(ok, "{talk}");
    inst.wait_log(r"smtpd\[\d+\]: NOQUEUE: filter: RCPT from .*Sender address triggers FILTER");
    // (smtp-sink writes a file as the data comes: wait for the content.)
    wait_for(30, "both messages at the filter", || {
        let at_filter = sink.messages();
        at_filter.iter().any(|m| m.contains("Subject: scan me"))
            && at_filter.iter().any(|m| m.contains("Subject: by sender"))
    });
    let got = inst.wait_maildir(&inst.user_maildir(), 1);
    assert!(got[0].contains("Subject: plain"), "{}", got[0]);
}

/// A FILTER decided by `smtpd_end_of_data_restrictions` reaches cleanup
/// after the content and routes that message to the filter.
#[test]
fn end_of_data_filter_routes_the_message_to_the_filter() {
    let mut inst = Instance::new("eod-filter", "");
    let sink = Sink::start(&inst.top, &[]);
    let port = inst.with_smtpd();
    let me = format!("{}@mx.example.test", common::user());
    inst.main_cf(&format!(
        "smtpd_end_of_data_restrictions = check_sender_access inline:{{ {{eod@example.test=FILTER smtp:[127.0.0.1]:{}}} }}\n",
        sink.port
    ));
    inst.start();
    for (from, subject) in [
        ("eod@example.test", "late filter"),
        ("other@example.test", "kept"),
    ] {
        let (ok, talk) = common::smtp::swaks(
            port,
            &[
                "--from",
                from,
                "--to",
                &me,
                "--header",
                &format!("Subject: {subject}"),
            ],
        );
        assert!(ok, "{talk}");
    }
    inst.wait_log(r"smtpd\[\d+\]: [0-9A-F]+: filter: END-OF-MESSAGE from ");
    wait_for(30, "the filtered message at the filter", || {
        sink.messages()
            .iter()
            .any(|m| m.contains("Subject: late filter"))
    });
    let got = inst.wait_maildir(&inst.user_maildir(), 1);
    assert!(got[0].contains("Subject: kept"), "{}", got[0]);
    assert_eq!(sink.messages().len(), 1);
}

/// local's `mailbox_transport`: every local name that no alias took goes
/// to Dovecot's LMTP, whether or not it is an account here (Dovecot's
/// users are not); the lmtp agent logs the deliveries (an alias with
/// `orig_to=`), Dovecot's refusal bounces, and local logs none of them.
#[test]
fn mailbox_transport_hands_local_names_to_dovecot() {
    let dv = common::peers::DovecotLmtp::start("mbxtr");
    let mut inst = Instance::new("mailbox-transport", "");
    let aliases = inst.file("aliases", "postmaster alice\n");
    inst.main_cf(&format!(
        "mydestination = example.test\nmyorigin = example.test\n\
         alias_maps = texthash:{}\nmailbox_transport = {}\n",
        aliases.display(),
        dv.transport_unix()
    ));
    inst.start();
    inst.send(
        &[
            "-f",
            "sender@remote.test",
            "alice@example.test",
            "postmaster@example.test",
            "nobody@example.test",
            &format!("{}@example.test", common::user()),
        ],
        "From: sender@remote.test\nSubject: via mailbox_transport\n\nhi\n",
    );
    inst.kick();
    inst.wait_log(r"lmtp\[\d+\]: [0-9A-F]+: to=<alice@example\.test>, relay=.*status=sent");
    inst.wait_log(
        r"lmtp\[\d+\]: [0-9A-F]+: to=<alice@example\.test>, orig_to=<postmaster@example\.test>, relay=.*status=sent",
    );
    let nobody =
        inst.wait_log(r"lmtp\[\d+\]: [0-9A-F]+: to=<nobody@example\.test>, .*status=bounced");
    assert!(nobody.contains("dsn=5.1.1"), "{nobody}");
    // The account here goes to Dovecot too (which has no such user).
    inst.wait_log(&format!(
        r"lmtp\[\d+\]: [0-9A-F]+: to=<{}@example\.test>, .*status=bounced",
        regex::escape(&common::user())
    ));
    let got = dv.wait_messages("alice@example.test", 2);
    assert!(got
        .iter()
        .all(|m| m.contains("Subject: via mailbox_transport")));
    assert!(inst.maildir(&inst.user_maildir()).is_empty());
    assert!(
        !inst.log_text().contains("postfix/local["),
        "local logs nothing of a passed delivery:\n{}",
        inst.log_text()
    );
}

/// local's `fallback_transport`: a name that is no account here goes to
/// Dovecot, or where `fallback_transport_maps` says (here the error
/// agent, its next hop the reason); an account's mail stays here.
#[test]
fn fallback_transport_takes_the_names_that_are_no_account() {
    let dv = common::peers::DovecotLmtp::start("fbtr");
    let mut inst = Instance::new("fallback-transport", "");
    inst.main_cf(&format!(
        "mydestination = example.test\nmyorigin = example.test\nfallback_transport = {}\n\
         fallback_transport_maps = inline:{{ {{carol=error:5.1.6 carol moved away}} }}\n",
        dv.transport_unix()
    ));
    inst.start();
    let me = format!("{}@example.test", common::user());
    inst.send(
        &[
            "-f",
            "sender@remote.test",
            "bob@example.test",
            "carol@example.test",
            &me,
        ],
        "From: sender@remote.test\nSubject: fallback\n\nhi\n",
    );
    inst.kick();
    inst.wait_log(r"lmtp\[\d+\]: [0-9A-F]+: to=<bob@example\.test>, relay=.*status=sent");
    inst.wait_log(
        r"error\[\d+\]: [0-9A-F]+: to=<carol@example\.test>, relay=none, .*dsn=5\.1\.6, status=bounced \(carol moved away\)",
    );
    inst.wait_log(&format!(
        r"local\[\d+\]: [0-9A-F]+: to=<{}>, relay=local, .*status=sent \(delivered to maildir\)",
        regex::escape(&me)
    ));
    assert_eq!(dv.wait_messages("bob@example.test", 1).len(), 1);
    assert_eq!(inst.wait_maildir(&inst.user_maildir(), 1).len(), 1);
}

/// An instance routing by the test's DNS server, with `smtp_tcp_port` the
/// peers' port, this machine being 127.0.0.1 (`inet_interfaces =
/// loopback-only`) and 127.0.0.7 (`proxy_interfaces`), and a fall-back
/// relay; the bounces go to the test user's Maildir.
fn loop_instance(tag: &str, dns: &common::peers::Dns, port: u16, extra: &str) -> Instance {
    let mut inst = Instance::new(tag, "");
    inst.main_cf(&format!(
        "{}smtp_tcp_port = {port}\ninet_protocols = ipv4\nproxy_interfaces = 127.0.0.7\n\
         smtp_fallback_relay = [127.0.0.6]\n{extra}",
        dns.main_cf()
    ));
    inst.start();
    inst
}

/// The local sender, whose notices arrive in the test user's Maildir.
fn local_sender() -> String {
    format!("{}@mx.example.test", common::user())
}

/// Postfix's smtp_addr(3): when this machine is the best MX host of a
/// domain (an `inet_interfaces` or `proxy_interfaces` address, or one of
/// several best hosts), the mail bounces with 5.4.6 without any
/// connection, and the fall-back relay is not tried; when only more
/// preferred hosts without an address are left, it is deferred (4.4.4).
#[test]
fn mail_for_a_domain_whose_best_mx_is_this_host_loops_back_and_bounces() {
    use common::peers::{free_port_on, Dns, DnsZone, SmtpSink};
    use std::net::Ipv4Addr;
    let other = Ipv4Addr::new(127, 0, 0, 3);
    let fallback = Ipv4Addr::new(127, 0, 0, 6);
    let proxy = Ipv4Addr::new(127, 0, 0, 7);
    let port = free_port_on(&[other, fallback, proxy]);
    let other_sink = SmtpSink::start_at(other, port, &[]);
    let fallback_sink = SmtpSink::start_at(fallback, port, &[]);
    let dns = Dns::start(
        &DnsZone::new()
            .mx("loop.test", 10, "self.loop.test")
            .mx("loop.test", 20, "other.loop.test")
            .a("self.loop.test", Ipv4Addr::LOCALHOST)
            .a("other.loop.test", other)
            .mx("proxied.test", 10, "gw.proxied.test")
            .a("gw.proxied.test", proxy)
            .mx("tie.test", 10, "a.tie.test")
            .mx("tie.test", 10, "self.tie.test")
            .a("a.tie.test", other)
            .a("self.tie.test", Ipv4Addr::LOCALHOST)
            .mx("noprimary.test", 10, "lost.noprimary.test")
            .mx("noprimary.test", 20, "self.noprimary.test")
            .a("self.noprimary.test", Ipv4Addr::LOCALHOST),
    );
    let inst = loop_instance("smtp-loop", &dns, port, "");
    let sender = local_sender();
    for rcpt in [
        "u@loop.test",
        "u@proxied.test",
        "u@tie.test",
        "u@noprimary.test",
    ] {
        inst.send(&["-f", &sender, rcpt], &message(rcpt));
    }
    inst.kick();
    for domain in ["loop.test", "proxied.test", "tie.test"] {
        let d = regex::escape(domain);
        inst.wait_log(&format!(
            r"smtp\[\d+\]: [0-9A-F]+: to=<u@{d}>, relay=none, delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=5\.4\.6, status=bounced \(mail for {d} loops back to myself\)$"
        ));
    }
    inst.wait_log(
        r"smtp\[\d+\]: [0-9A-F]+: to=<u@noprimary\.test>, relay=none, .*dsn=4\.4\.4, status=deferred \(unable to find primary relay for noprimary\.test\)$",
    );
    // Each bounce is a notice to the sender, with the loop as its reason.
    let notices: Vec<String> = inst
        .wait_maildir(&inst.user_maildir(), 3)
        .into_iter()
        .filter(|m| m.contains("report-type=delivery-status"))
        .collect();
    assert_eq!(notices.len(), 3, "{notices:#?}");
    let n = notices
        .iter()
        .find(|m| m.contains("Final-Recipient: rfc822; u@loop.test"))
        .expect("a notice for u@loop.test");
    assert!(n.contains("\nAction: failed\n"), "{n}");
    assert!(n.contains("\nStatus: 5.4.6\n"), "{n}");
    assert!(
        n.contains("\nDiagnostic-Code: X-Postfix; mail for loop.test loops back to myself\n"),
        "{n}"
    );
    inst.wait_log(r"bounce\[\d+\]: [0-9A-F]+: sender non-delivery notification: [0-9A-F]+$");
    // No server was talked to: not this machine, not the worse MX host,
    // not the fall-back relay.
    assert!(
        inst.log_lines(r"smtp\[\d+\]: connect to ").is_empty(),
        "{}",
        inst.log_text()
    );
    for sink in [&other_sink, &fallback_sink] {
        assert_eq!(sink.counters().0, 0, "a session at {}", sink.addr);
        assert!(sink.dumps().is_empty());
    }
}

/// This machine is a backup MX host: only the more preferred hosts are
/// tried (not this machine, not the worse ones, not the fall-back relay);
/// a dead primary leaves the mail deferred.
#[test]
fn a_backup_mx_host_sends_only_to_the_more_preferred_hosts() {
    use common::peers::{free_port_on, Dns, DnsZone, SmtpSink};
    use std::net::Ipv4Addr;
    let dead = Ipv4Addr::new(127, 0, 0, 2);
    let live = Ipv4Addr::new(127, 0, 0, 3);
    let worse = Ipv4Addr::new(127, 0, 0, 4);
    let fallback = Ipv4Addr::new(127, 0, 0, 6);
    let port = free_port_on(&[dead, live, worse, fallback]);
    let live_sink = SmtpSink::start_at(live, port, &[]);
    let worse_sink = SmtpSink::start_at(worse, port, &[]);
    let fallback_sink = SmtpSink::start_at(fallback, port, &[]);
    let dns = Dns::start(
        &DnsZone::new()
            .mx("primary.test", 10, "live.primary.test")
            .mx("primary.test", 20, "self.primary.test")
            .mx("primary.test", 30, "worse.primary.test")
            .a("live.primary.test", live)
            .a("self.primary.test", Ipv4Addr::LOCALHOST)
            .a("worse.primary.test", worse)
            .mx("backup.test", 10, "dead.backup.test")
            .mx("backup.test", 20, "self.backup.test")
            .mx("backup.test", 30, "worse.backup.test")
            .a("dead.backup.test", dead)
            .a("self.backup.test", Ipv4Addr::LOCALHOST)
            .a("worse.backup.test", worse),
    );
    let inst = loop_instance("smtp-backup-mx", &dns, port, "");
    for rcpt in ["u@primary.test", "u@backup.test"] {
        inst.send(&["-f", "alice@example.test", rcpt], &message(rcpt));
    }
    inst.kick();
    let sent = inst.wait_log(r"to=<u@primary\.test>, .*status=sent");
    assert!(
        sent.contains(&format!("relay=live.primary.test[127.0.0.3]:{port}, ")),
        "{sent}"
    );
    let deferred = inst.wait_log(r"to=<u@backup\.test>, .*status=deferred");
    assert!(
        deferred.contains("relay=none, ")
            && deferred.contains(&format!(
                "dsn=4.4.1, status=deferred (connect to dead.backup.test[127.0.0.2]:{port}: Connection refused)"
            )),
        "{deferred}"
    );
    let got = live_sink.wait_messages(1);
    assert_eq!(got[0].rcpts, ["<u@primary.test>"]);
    let connects = inst.log_lines(r"smtp\[\d+\]: connect to ");
    assert_eq!(connects.len(), 1, "{connects:#?}");
    assert!(connects[0].contains("dead.backup.test"), "{connects:#?}");
    for sink in [&worse_sink, &fallback_sink] {
        assert_eq!(sink.counters().0, 0, "a session at {}", sink.addr);
        assert!(sink.dumps().is_empty());
    }
}

/// Without MX records (a domain's own address, `[host]`), Postfix checks
/// the host: this machine on the SMTP port is a loop too (5.4.6); on
/// another port it is not (a content filter at [127.0.0.1]:10025, say).
/// With `best_mx_transport` set (not supported), a loop is deferred
/// (4.3.5) with a warning, not bounced.
#[test]
fn a_host_without_mx_that_is_this_machine_loops_on_the_smtp_port_only() {
    use common::peers::{free_port_on, Dns, DnsZone, SmtpSink};
    use std::net::Ipv4Addr;
    // The filter listens first: the SMTP port cannot be its port.
    let filter = SmtpSink::start(&[]);
    let port = free_port_on(&[Ipv4Addr::LOCALHOST]);
    let dns = Dns::start(
        &DnsZone::new()
            .a("nomx.test", Ipv4Addr::LOCALHOST)
            // best_mx_transport is for an MX lookup that finds this
            // machine the best MX; without MX a loop bounces regardless.
            .mx("bestmx.test", 10, "mx.bestmx.test")
            .a("mx.bestmx.test", Ipv4Addr::LOCALHOST)
            .a("nomxbest.test", Ipv4Addr::LOCALHOST),
    );
    let mut inst = Instance::new("smtp-host-loop", "");
    let top = inst.top.display().to_string();
    inst.file(
        "transport",
        &format!(
            "bracket.test  smtp:[127.0.0.1]\n\
             filter.test  smtp:{}\n\
             bestmx.test  smtpbest:\n\
             nomxbest.test  smtpbest:\n",
            filter.relayhost()
        ),
    );
    let master_cf = Path::new(&inst.etc).join("master.cf");
    let mut text = std::fs::read_to_string(&master_cf).unwrap();
    text.push_str("smtpbest unix - - n - - smtp\n  -o best_mx_transport=relay\n");
    std::fs::write(&master_cf, text).unwrap();
    inst.main_cf(&format!(
        "{}smtp_tcp_port = {port}\ninet_protocols = ipv4\n\
         transport_maps = texthash:{top}/transport\n",
        dns.main_cf()
    ));
    inst.start();
    for rcpt in [
        "u@nomx.test",
        "u@bracket.test",
        "u@filter.test",
        "u@bestmx.test",
        "u@nomxbest.test",
    ] {
        inst.send(&["-f", "alice@example.test", rcpt], &message(rcpt));
    }
    inst.kick();
    let nomx = inst.wait_log(r"to=<u@nomx\.test>, .*status=bounced");
    assert!(
        nomx.contains("relay=none, ")
            && nomx.contains("dsn=5.4.6, status=bounced (mail for nomx.test loops back to myself)"),
        "{nomx}"
    );
    let bracket = inst.wait_log(r"to=<u@bracket\.test>, .*status=bounced");
    assert!(
        bracket.contains("dsn=5.4.6, status=bounced (mail for 127.0.0.1 loops back to myself)"),
        "{bracket}"
    );
    let sent = inst.wait_log(r"to=<u@filter\.test>, .*status=sent");
    assert!(
        sent.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}, ", filter.port())),
        "{sent}"
    );
    assert_eq!(filter.wait_messages(1)[0].rcpts, ["<u@filter.test>"]);
    let best = inst.wait_log(r"to=<u@bestmx\.test>, .*status=deferred");
    assert!(
        best.contains("dsn=4.3.5, status=deferred (mail for bestmx.test loops back to myself)"),
        "{best}"
    );
    inst.wait_log(
        r"warning: [0-9A-F]+: best_mx_transport = relay is not supported: deferring: mail for bestmx\.test loops back to myself$",
    );
    let nomxbest = inst.wait_log(r"to=<u@nomxbest\.test>, .*status=bounced");
    assert!(
        nomxbest
            .contains("dsn=5.4.6, status=bounced (mail for nomxbest.test loops back to myself)"),
        "{nomxbest}"
    );
    assert!(
        inst.log_lines(r"smtp\[\d+\]: connect to ").is_empty(),
        "{}",
        inst.log_text()
    );
}
