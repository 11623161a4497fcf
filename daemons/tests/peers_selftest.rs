//! Each peer of `common/peers.rs` on its own, driven by swaks or a raw
//! socket: proof that the fixtures the smtp/lmtp agents' tests stand on
//! do what they say. Only `PostfixRelay` needs root (it says so and
//! returns otherwise); a missing package is a failure naming
//! scripts/test.sh.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::peers::{
    free_port_on, Dns, DnsZone, DovecotLmtp, PostfixRelay, RelayOptions, Scripted, ScriptedConfig,
    SmtpSink, Stage, TestCert, DOVECOT_USERS,
};
use common::smtp::swaks;

/// swaks against `server`:`port` (any loopback address). Always give it
/// `-t`: without one swaks prompts for it forever.
fn swaks_at(server: &str, port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", server, "--port", &port.to_string()])
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .expect("swaks is missing: run scripts/test.sh, which installs it");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A line client over TCP or a UNIX socket, for exact replies.
struct Wire {
    r: BufReader<Box<dyn Read + Send>>,
    w: Box<dyn Write + Send>,
}

impl Wire {
    fn tcp(addr: std::net::SocketAddrV4) -> Wire {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let w = s.try_clone().unwrap();
        Wire {
            r: BufReader::new(Box::new(s)),
            w: Box::new(w),
        }
    }

    fn unix(path: &std::path::Path) -> Wire {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let w = s.try_clone().unwrap();
        Wire {
            r: BufReader::new(Box::new(s)),
            w: Box::new(w),
        }
    }

    /// A whole reply (all its lines); empty at end of stream.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, bytes: &str) {
        self.w.write_all(bytes.as_bytes()).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// Whether the server closed the connection (reads to the end).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn smtp_sink_captures_and_counts_messages_and_injects_replies() {
    let sink = SmtpSink::start(&[]);
    let (ok, out) = swaks(
        sink.port(),
        &[
            "-f",
            "alice@example.org",
            "-t",
            "bob@example.net",
            "--header",
            "Subject: to the sink",
            "--body",
            "sink body line",
        ],
    );
    assert!(ok, "{out}");
    let dumps = sink.wait_messages(1);
    assert_eq!(sink.count(), 1);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let d = &dumps[0];
    assert_eq!(d.proto, "ESMTP");
    assert!(d.mail.starts_with("<alice@example.org>"), "{d:?}");
    assert_eq!(d.rcpts.len(), 1);
    assert!(d.rcpts[0].starts_with("<bob@example.net>"), "{d:?}");
    assert!(d.message.contains("Subject: to the sink\n"), "{d:?}");
    assert!(d.message.contains("sink body line"), "{d:?}");
    assert_eq!(sink.relayhost(), format!("[127.0.0.1]:{}", sink.port()));

    // Reply injection passed through: RCPT refused with 5xx, nothing counted.
    let hard = SmtpSink::start(&["-f", "RCPT"]);
    let (ok, out) = swaks(hard.port(), &["-t", "bob@example.net"]);
    assert!(!ok, "{out}");
    assert!(out.contains("<** 500 5.3.0 Error: command failed"), "{out}");
    let soft = SmtpSink::start(&["-r", "MAIL"]);
    let (ok, out) = swaks(soft.port(), &["-t", "bob@example.net"]);
    assert!(!ok, "{out}");
    assert!(out.contains("<** 450 4.3.0 Error: command failed"), "{out}");
    assert_eq!(hard.count() + soft.count(), 0);

    // Two sinks, one port, two loopback addresses: two MX hosts.
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let port = free_port_on(&[a, b]);
    let sa = SmtpSink::start_at(a, port, &[]);
    let sb = SmtpSink::start_at(b, port, &["-h", "mx-b.example.test"]);
    for (n, (who, addr)) in [("a", a), ("b", b), ("b", b)].iter().enumerate() {
        let (ok, out) = swaks_at(
            &addr.to_string(),
            port,
            &["-t", &format!("to-{who}-{n}@example.net")],
        );
        assert!(ok, "{out}");
    }
    sa.wait_count(1);
    sb.wait_count(2);
    assert_eq!((sa.count(), sb.count()), (1, 2));
    assert!(sb.dumps().iter().all(|d| d.rcpts[0].starts_with("<to-b-")));
}

#[test]
fn scripted_answers_each_recipient_as_configured_and_records_it() {
    let cfg = ScriptedConfig::new()
        .hostname("mx.scripted.test")
        .rcpt_for(
            "nobody@example.net",
            "550 5.1.1 <nobody@example.net>: no such user",
        )
        .rcpt_for("later@example.net", "451 4.3.0 try again later")
        .dot("250 2.0.0 Ok: queued as ABC123");
    let s = Scripted::start(&cfg);
    let mut c = Wire::tcp(s.addr());
    assert_eq!(c.reply(), "220 mx.scripted.test ESMTP scripted\r\n");
    let ehlo = c.cmd("EHLO client.example.test");
    assert!(ehlo.starts_with("250-mx.scripted.test\r\n"), "{ehlo}");
    for ext in ["SIZE 10240000", "PIPELINING", "8BITMIME", "SMTPUTF8", "DSN"] {
        assert!(ehlo.contains(&format!("250-{ext}\r\n")), "{ehlo}");
    }
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME RET=HDRS"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net"),
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<Nobody@Example.NET>"),
        "550 5.1.1 <nobody@example.net>: no such user\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<later@example.net>"),
        "451 4.3.0 try again later\r\n"
    );
    assert!(c.cmd("DATA").starts_with("354 "));
    c.send("Subject: scripted\r\n\r\n..leading dot\r\nbody\r\n.\r\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok: queued as ABC123\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");

    let t = s.wait_transactions(1);
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(t.protocol, "ESMTP");
    assert_eq!(t.helo.as_deref(), Some("client.example.test"));
    assert!(!t.tls);
    assert_eq!(t.auth_user, None);
    assert_eq!(t.mail_from, "alice@example.org");
    assert_eq!(t.mail_params, ["SIZE=120", "BODY=8BITMIME", "RET=HDRS"]);
    assert_eq!(t.rcpts.len(), 3);
    assert_eq!(t.rcpts[0].address, "bob@example.net");
    assert_eq!(
        t.rcpts[0].params,
        ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.net"]
    );
    assert!(t.rcpts[1].reply.starts_with("550 5.1.1"));
    assert!(t.rcpts[2].reply.starts_with("451 4.3.0"));
    assert_eq!(t.accepted(), ["bob@example.net"]);
    assert!(t.complete);
    assert_eq!(
        t.text(),
        "Subject: scripted\r\n\r\n.leading dot\r\nbody\r\n"
    );
    assert_eq!(
        t.final_reply.as_deref(),
        Some("250 2.0.0 Ok: queued as ABC123")
    );
    assert_eq!(t.end, "dot");
    let sessions = s.wait_sessions(1);
    assert_eq!(sessions[0].end, "quit");
    assert!(sessions[0].pipelined.is_empty(), "{:?}", sessions[0]);
    assert_eq!(
        sessions[0].commands()[..2],
        [
            "EHLO client.example.test".to_string(),
            "MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME RET=HDRS".to_string()
        ]
    );

    // The same through swaks: the 550 and the 451 are what it sees.
    let (ok, out) = swaks(
        s.port(),
        &["-t", "bob@example.net,nobody@example.net,later@example.net"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("<** 550 5.1.1 <nobody@example.net>: no such user"),
        "{out}"
    );
    assert!(out.contains("<** 451 4.3.0 try again later"), "{out}");
    assert_eq!(s.wait_transactions(2)[1].accepted(), ["bob@example.net"]);
}

#[test]
fn scripted_drops_mid_data_stalls_and_follows_its_sessions_script() {
    // Drop after 20 bytes of content: no reply, the connection closed.
    let s = Scripted::start(&ScriptedConfig::new().drop_mid_data(20));
    let mut c = Wire::tcp(s.addr());
    c.reply();
    c.cmd("EHLO client.example.test");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354 "));
    c.send("Subject: cut short\r\n\r\nline one of the body\r\n");
    assert!(c.closed(), "the connection is still open");
    let t = s.wait_transactions(1);
    assert_eq!(t[0].end, "dropped");
    assert!(!t[0].complete);
    assert!(
        t[0].text().starts_with("Subject: cut short\r\n"),
        "{:?}",
        t[0]
    );
    assert_eq!(s.wait_sessions(1)[0].end, "dropped at data_mid");

    // Stall: no RCPT reply for 2 s, then the usual one.
    let s = Scripted::start(&ScriptedConfig::new().stall(Stage::Rcpt, 2));
    let mut c = Wire::tcp(s.addr());
    c.reply();
    c.cmd("EHLO client.example.test");
    c.cmd("MAIL FROM:<a@example.org>");
    let t0 = std::time::Instant::now();
    assert_eq!(c.cmd("RCPT TO:<b@example.net>"), "250 2.1.5 Ok\r\n");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());

    // No SIZE/DSN offered: their parameters are refused; a session script:
    // the first connection gets 421, the second a 554 at DATA.
    let later = ScriptedConfig::new().size(None).extension("DSN", false);
    let first = ScriptedConfig::new().greeting("421 4.3.2 busy, come back later");
    let second = later.clone().data("554 5.7.1 no thanks");
    let s = Scripted::start(&later.first_sessions(vec![first, second]));
    let mut c = Wire::tcp(s.addr());
    assert_eq!(c.reply(), "421 4.3.2 busy, come back later\r\n");
    assert!(c.closed());
    let mut c = Wire::tcp(s.addr());
    c.reply();
    let ehlo = c.cmd("EHLO client.example.test");
    assert!(!ehlo.contains("SIZE") && !ehlo.contains("DSN"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org> SIZE=10"),
        "555 5.5.4 Unsupported option: SIZE=10\r\n"
    );
    c.cmd("MAIL FROM:<>");
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net> NOTIFY=NEVER"),
        "555 5.5.4 Unsupported option: NOTIFY=NEVER\r\n"
    );
    c.cmd("RCPT TO:<b@example.net>");
    assert_eq!(c.cmd("DATA"), "554 5.7.1 no thanks\r\n");
    c.cmd("QUIT");
    let mut c = Wire::tcp(s.addr());
    c.reply();
    c.cmd("EHLO client.example.test");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(
        c.cmd("DATA").starts_with("354 "),
        "the third session is not scripted"
    );
    let t = s.wait_transactions(1);
    assert_eq!(t[0].mail_from, "", "the null sender");
    assert_eq!(t[0].end, "data refused");
    assert_eq!(t[0].session, 2);
}

#[test]
fn scripted_starttls_and_auth() {
    let dir = common::peers::TempDir::new("certs");
    let cert = TestCert::generate(&dir, "mx.scripted.test");
    let cfg = ScriptedConfig::new()
        .starttls(&cert)
        .auth("user@example.test", "secret")
        .auth_required()
        .auth_requires_tls();
    let s = Scripted::start(&cfg);

    // Before STARTTLS: STARTTLS offered, AUTH not, MAIL needs AUTH.
    let mut c = Wire::tcp(s.addr());
    c.reply();
    let ehlo = c.cmd("EHLO client.example.test");
    assert!(ehlo.contains("250-STARTTLS\r\n") || ehlo.contains("250 STARTTLS\r\n"));
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>"),
        "530 5.7.0 Authentication required\r\n"
    );
    c.cmd("QUIT");

    let (ok, out) = swaks(
        s.port(),
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "user@example.test",
            "--auth-password",
            "secret",
            "-f",
            "a@example.org",
            "-t",
            "b@example.net",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");
    let (ok, out) = swaks(
        s.port(),
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "user@example.test",
            "--auth-password",
            "wrong",
            "-t",
            "b@example.net",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("535 5.7.8"), "{out}");
    let t = s.wait_transactions(1);
    assert_eq!(t.len(), 1);
    assert!(t[0].tls);
    assert!(t[0]
        .tls_version
        .as_deref()
        .unwrap_or("")
        .starts_with("TLSv1"));
    assert_eq!(t[0].auth_user.as_deref(), Some("user@example.test"));
    let sessions = s.wait_sessions(3);
    assert_eq!(sessions[2].auth_failures, 1);
    assert!(sessions[2].tls);

    // STARTTLS offered and refused.
    let s = Scripted::start(&ScriptedConfig::new().refuse_starttls());
    let mut c = Wire::tcp(s.addr());
    c.reply();
    assert!(c.cmd("EHLO client.example.test").contains("STARTTLS"));
    assert_eq!(
        c.cmd("STARTTLS"),
        "454 4.7.0 TLS not available due to local problem\r\n"
    );
    let (ok, out) = swaks(s.port(), &["--tls", "-t", "b@example.net"]);
    assert!(!ok, "{out}");
    assert!(out.contains("454 4.7.0"), "{out}");
}

#[test]
fn scripted_lmtp_answers_once_per_accepted_recipient() {
    let cfg = ScriptedConfig::new()
        .lmtp()
        .hostname("lmtp.scripted.test")
        .rcpt_for(
            "ghost@example.test",
            "550 5.1.1 <ghost@example.test> User doesn't exist",
        )
        .dot_for(
            "full@example.test",
            "452 4.2.2 <full@example.test> Quota exceeded",
        );
    for s in [Scripted::start_unix(&cfg), Scripted::start(&cfg)] {
        let mut c = match &s.listen {
            common::peers::Listen::Unix(p) => Wire::unix(p),
            common::peers::Listen::Tcp(a) => Wire::tcp(*a),
        };
        assert!(c.reply().starts_with("220 "));
        assert!(c.cmd("EHLO client.example.test").starts_with("500 "));
        assert!(c
            .cmd("LHLO client.example.test")
            .starts_with("250-lmtp.scripted.test\r\n"));
        // Pipelined, in one write: all of it is there when MAIL is read.
        c.send(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n\
             RCPT TO:<ghost@example.test>\r\nRCPT TO:<full@example.test>\r\nDATA\r\n",
        );
        assert!(c.reply().starts_with("250 "));
        assert!(c.reply().starts_with("250 "));
        assert!(c.reply().starts_with("550 "));
        assert!(c.reply().starts_with("250 "));
        assert!(c.reply().starts_with("354 "));
        c.send("Subject: lmtp\r\n\r\nbody\r\n.\r\n");
        assert_eq!(c.reply(), "250 2.0.0 Ok: delivered\r\n");
        assert_eq!(
            c.reply(),
            "452 4.2.2 <full@example.test> Quota exceeded\r\n"
        );
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
        let t = s.wait_transactions(1);
        assert_eq!(t[0].protocol, "LMTP");
        let session = &s.wait_sessions(1)[0];
        assert_eq!(session.pipelined[0], "MAIL FROM:<a@example.org>");
        assert!(!session
            .pipelined
            .contains(&"LHLO client.example.test".into()));
        assert_eq!(
            t[0].lmtp_replies,
            [
                (
                    "alice@example.test".to_string(),
                    "250 2.0.0 Ok: delivered".to_string()
                ),
                (
                    "full@example.test".to_string(),
                    "452 4.2.2 <full@example.test> Quota exceeded".to_string()
                )
            ]
        );
    }
}

#[test]
fn dns_serves_the_test_zone_and_nxdomain_for_the_rest() {
    use libmail::dns::{is_null_mx, DnsError, Mx};
    let zone = DnsZone::new()
        .mx("example.test", 20, "mx2.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 30, "mx3.example.test")
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .aaaa("mx2.example.test", "::1".parse().unwrap())
        .a("mx3.example.test", Ipv4Addr::new(127, 0, 0, 4))
        .a("mx3.example.test", Ipv4Addr::new(127, 0, 0, 5))
        .a("aonly.test", Ipv4Addr::new(127, 0, 0, 6))
        .null_mx("nullmx.test");
    let dns = Dns::start(&zone);
    assert_eq!(
        dns.main_cf(),
        format!("facteur_dns_servers = 127.0.0.1:{}\n", dns.port)
    );
    let r = dns.resolver();
    let mx = |p: u16, e: &str| Mx {
        preference: p,
        exchange: e.to_string(),
    };
    assert_eq!(
        r.mx("example.test").unwrap(),
        [
            mx(10, "mx1.example.test"),
            mx(20, "mx2.example.test"),
            mx(30, "mx3.example.test")
        ]
    );
    assert_eq!(
        r.a("mx1.example.test").unwrap(),
        [Ipv4Addr::new(127, 0, 0, 2)]
    );
    assert_eq!(
        r.aaaa("mx2.example.test").unwrap(),
        ["::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    let mut three = r.a("mx3.example.test").unwrap();
    three.sort();
    assert_eq!(
        three,
        [Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 5)]
    );
    assert_eq!(r.mx("aonly.test"), Err(DnsError::NotFound));
    assert_eq!(r.a("aonly.test").unwrap(), [Ipv4Addr::new(127, 0, 0, 6)]);
    assert_eq!(r.aaaa("mx1.example.test"), Err(DnsError::NotFound));
    assert!(is_null_mx(&r.mx("nullmx.test").unwrap()));
    assert_eq!(r.mx("nosuch.example.test"), Err(DnsError::NotFound));
    assert_eq!(r.a("nosuch.example.com"), Err(DnsError::NotFound));
}

#[test]
fn postfix_relay_takes_authenticated_mail_over_starttls_and_delivers_it() {
    let Some(relay) = PostfixRelay::start(RelayOptions {
        tls: true,
        sasl: true,
        ..RelayOptions::default()
    }) else {
        return;
    };
    let (user, pw) = DOVECOT_USERS[0];
    let (ok, out) = swaks(
        relay.port,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            pw,
            "-f",
            "sender@example.org",
            "-t",
            "far@remote.example",
            "--header",
            "Subject: through the relay",
        ],
    );
    assert!(ok, "{out}");
    let m = relay.wait_messages_for("far@remote.example", 1);
    assert!(m[0].contains("Subject: through the relay"), "{}", m[0]);
    assert!(m[0].contains("with ESMTPSA id"), "{}", m[0]);
    relay.wait_log(r"sasl_method=PLAIN, sasl_username=alice@example\.test");

    // No AUTH before STARTTLS; no relaying without AUTH; bad passwords fail.
    let (ok, out) = swaks(
        relay.port,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            pw,
            "-t",
            "far@remote.example",
        ],
    );
    assert!(!ok && !out.contains("235 "), "{out}");
    let (ok, out) = swaks(relay.port, &["--tls", "-t", "far@remote.example"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("554 5.7.1 <far@remote.example>: Relay access denied"),
        "{out}"
    );
    let (ok, out) = swaks(
        relay.port,
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            user,
            "--auth-password",
            "wrong",
            "-t",
            "far@remote.example",
        ],
    );
    assert!(!ok && out.contains("535 5.7.8"), "{out}");
    assert_eq!(relay.messages().len(), 1);
    assert_eq!(
        relay.sasl_password_line(user),
        format!("[127.0.0.1]:{} alice@example.test:alicepw\n", relay.port)
    );
}

#[test]
fn dovecot_lmtp_delivers_to_maildirs_and_refuses_unknown_users() {
    let d = DovecotLmtp::start("selft");
    let mut c = match d.lmtp_inet() {
        std::net::SocketAddr::V4(a) => Wire::tcp(a),
        a => panic!("{a}"),
    };
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("LHLO client.example.test").starts_with("250-"));
    assert!(c.cmd("MAIL FROM:<sender@example.org>").starts_with("250 "));
    assert_eq!(c.cmd("RCPT TO:<alice@example.test>"), "250 2.1.5 OK\r\n");
    let r = c.cmd("RCPT TO:<nosuchuser@example.test>");
    assert!(
        r.starts_with("550 5.1.1 <nosuchuser@example.test> User doesn't exist"),
        "{r}"
    );
    assert!(c.cmd("DATA").starts_with("354 "));
    c.send("Subject: over lmtp inet\r\n\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(
        r.starts_with("250 2.0.0 <alice@example.test> ") && r.ends_with(" Saved\r\n"),
        "{r}"
    );
    c.cmd("QUIT");
    let m = d.wait_messages("alice@example.test", 1);
    assert!(m[0].contains("Subject: over lmtp inet"), "{}", m[0]);

    let mut c = Wire::unix(&d.lmtp_socket());
    assert!(c.reply().starts_with("220 "));
    c.cmd("LHLO client.example.test");
    c.cmd("MAIL FROM:<sender@example.org>");
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250 "));
    c.cmd("DATA");
    c.send("Subject: over lmtp unix\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 <bob@example.test> "));
    c.cmd("QUIT");
    let m = d.wait_messages("bob@example.test", 1);
    assert!(m[0].contains("Subject: over lmtp unix"), "{}", m[0]);
    assert_eq!(d.maildir_files("alice@example.test").len(), 1);
    assert!(d.auth_socket().exists());
    assert_eq!(
        d.transport_unix(),
        format!("lmtp:unix:{}", d.lmtp_socket().display())
    );
}

#[test]
fn a_postfix_peers_main_cf_sets_each_name_once() {
    // Postfix warns about a name set twice, and its postlogd, warning
    // into its own full socket, then blocks the whole instance.
    let merged = common::peers::override_main_cf(
        "a = 1\ndefault_transport = virtual\n# default_transport = x\nb = 2\n",
        "default_transport = smtp\nc = 3",
    );
    assert_eq!(
        merged,
        "a = 1\n# default_transport = x\nb = 2\ndefault_transport = smtp\nc = 3\n"
    );
}
