//! XCLIENT, XFORWARD and the smaller smtpd controls end to end: a whole
//! instance, real clients (swaks for XCLIENT as a client implements it,
//! a line-by-line client for exact replies), Postfix 3.7's replies and
//! log lines (checked against a real Postfix 3.7.11).

mod common;

use common::smtp::{swaks, Raw};
use common::{user, Instance};

/// Reads what the server says until it closes the connection.
fn rest(c: &mut Raw) -> String {
    let mut all = String::new();
    for _ in 0..100 {
        let r = c.reply();
        if r.is_empty() {
            break;
        }
        all.push_str(&r);
    }
    all
}

const XCLIENT_KEYWORD: &str =
    "250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n";
const XFORWARD_KEYWORD: &str = "250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n";

#[test]
fn swaks_xclient_message_carries_the_overridden_client_everywhere() {
    let mut i = Instance::new("xclient-swaks", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_authorized_xclient_hosts = 127.0.0.1");
    i.start();
    let me = user();
    let (ok, out) = swaks(
        port,
        &[
            "--ehlo",
            "client.example",
            "--xclient-name",
            "client.example",
            "--xclient-addr",
            "192.0.2.7",
            "--xclient-login",
            "alice",
            "--from",
            "alice@example.org",
            "--to",
            &format!("{me}@mx.example.test"),
            "--header",
            "Subject: through a proxy",
        ],
    );
    assert!(ok, "{out}");
    // The greeting again after XCLIENT, then swaks says EHLO again.
    assert!(
        out.contains("<-  220 mx.example.test ESMTP Postfix"),
        "{out}"
    );
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(
        got[0].contains(
            "\nReceived: from client.example (client.example [192.0.2.7])\n\
             \tby mx.example.test (Postfix) with ESMTPA id "
        ),
        "{}",
        got[0]
    );
    // connect is logged with the real client, the rest with the new one.
    i.wait_log(r"postfix/smtpd\[\d+\]: connect from \S+\[127\.0\.0\.1\]$");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: [0-9A-F]+: client=client\.example\[192\.0\.2\.7\], sasl_method=XCLIENT, sasl_username=alice$",
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from client\.example\[192\.0\.2\.7\] ehlo=2 xclient=0/1 mail=1 rcpt=1 data=1 quit=1 commands=6/7$",
    );
}

#[test]
fn xclient_is_for_authorized_clients_and_the_restrictions_see_the_new_client() {
    let mut i = Instance::new("xclient-auth", "");
    let port = i.with_smtpd();
    i.main_cf(
        "smtpd_authorized_xclient_hosts = 127.0.0.1\n\
         smtpd_authorized_xforward_hosts = 127.0.0.1\n\
         mynetworks = 127.0.0.0/8",
    );
    i.start();
    let mut c = Raw::connect(port);
    let ehlo = c.cmd("EHLO proxy.example");
    assert!(
        ehlo.contains(&format!(
            "250-ETRN\r\n{XCLIENT_KEYWORD}{XFORWARD_KEYWORD}250-ENHANCEDSTATUSCODES\r\n"
        )),
        "{ehlo}"
    );
    // Loopback may relay; after XCLIENT the client is a stranger.
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("XCLIENT NAME=x.example"),
        "503 5.5.1 Error: MAIL transaction in progress\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        c.cmd("XCLIENT NAME=client.example ADDR=192.0.2.7 PROTO=ESMTP HELO=helo+2Eexample"),
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    // The HELO name and protocol came with XCLIENT: no EHLO needed.
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<u@elsewhere.example>"),
        "454 4.7.1 <u@elsewhere.example>: Relay access denied\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    // 192.0.2.7 is not an XCLIENT host: not offered, not allowed. The
    // XFORWARD permission stays the connecting client's.
    let ehlo = c.cmd("EHLO again.example");
    assert!(!ehlo.contains("XCLIENT"), "{ehlo}");
    assert!(ehlo.contains(XFORWARD_KEYWORD), "{ehlo}");
    assert_eq!(
        c.cmd("XCLIENT ADDR=127.0.0.1"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from client\.example\[192\.0\.2\.7\]: 454 4\.7\.1 <u@elsewhere\.example>: Relay access denied; from=<a@example\.org> to=<u@elsewhere\.example> proto=ESMTP helo=<helo\.example>$",
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from client\.example\[192\.0\.2\.7\] ehlo=2 xclient=0/3 mail=2 rcpt=0/1 rset=2 quit=1 commands=7/11$",
    );
}

/// XCLIENT `ADDR=[UNAVAILABLE]`: the address is the text `unknown` —
/// outside `mynetworks`, looked up as `unknown` in access tables, in the
/// Received: header, the queue file's client attributes and the logs.
/// Replies and log lines as Postfix 3.7.11 gave them for the same session.
#[test]
fn xclient_unavailable_address_is_unknown_to_restrictions_header_and_log() {
    let mut i = Instance::new("xclient-unknown-addr", "");
    let port = i.with_smtpd();
    let me = user();
    i.main_cf(
        "smtpd_authorized_xclient_hosts = 127.0.0.1\n\
         mynetworks = 127.0.0.0/8\n\
         smtpd_restriction_classes = by_client\n\
         by_client = check_client_access inline:{ { unknown = REJECT address unknown } }\n\
         smtpd_recipient_restrictions = check_recipient_access inline:{ { probe@mx.example.test = by_client } }, permit\n\
         smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
    );
    i.start();
    let mut c = Raw::connect(port);
    c.cmd("EHLO proxy.example");
    assert_eq!(
        c.cmd("XCLIENT ADDR=[UNAVAILABLE]"),
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    c.cmd("EHLO y.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    // Loopback could relay; the unknown address is in no network.
    assert_eq!(
        c.cmd("RCPT TO:<u@elsewhere.example>"),
        "554 5.7.1 <u@elsewhere.example>: Relay access denied\r\n"
    );
    // check_client_access finds the key `unknown`: the client's name,
    // which XCLIENT left as it was, is not in the table.
    let reply = c.cmd("RCPT TO:<probe@mx.example.test>");
    let rejected = regex::Regex::new(
        r"^554 5\.7\.1 <(\S+)\[unknown\]>: Client host rejected: address unknown\r\n$",
    )
    .unwrap();
    let name = rejected
        .captures(&reply)
        .unwrap_or_else(|| panic!("{reply}"))[1]
        .to_string();
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    assert!(c
        .cmd("Subject: from nowhere\r\n\r\nhi\r\n.")
        .starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(
        got[0].contains(&format!(
            "\nReceived: from y.example ({name} [unknown])\n\tby mx.example.test (Postfix) with ESMTP id "
        )),
        "{}",
        got[0]
    );
    let label = regex::escape(&format!("{name}[unknown]"));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from {label}: 554 5\.7\.1 <u@elsewhere\.example>: Relay access denied; from=<a@example\.org> to=<u@elsewhere\.example> proto=ESMTP helo=<y\.example>$"
    ));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: [0-9A-F]+: client={label}$"
    ));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: disconnect from {label} ehlo=2 xclient=0/1 mail=1 rcpt=1/3 data=1 quit=1 commands=6/9$"
    ));
}

/// A policy server on loopback that refuses every request, naming the
/// client attributes it was sent; serves `connections` connections.
fn echoing_policy_server(connections: usize) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(connections) {
            let Ok(conn) = conn else { continue };
            conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn).take(1 << 20);
            let mut attrs = Vec::new();
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = line.trim_end();
                if !line.is_empty() {
                    if let Some(kv) = line.split_once('=') {
                        attrs.push((kv.0.to_string(), kv.1.to_string()));
                    }
                    continue;
                }
                let get = |k: &str| {
                    attrs
                        .iter()
                        .find(|(n, _)| n == k)
                        .map_or("-", |(_, v)| v.as_str())
                        .to_string()
                };
                let seen: Vec<String> = [
                    "client_name",
                    "client_address",
                    "client_port",
                    "reverse_client_name",
                    "helo_name",
                    "protocol_name",
                    "sasl_method",
                    "sasl_username",
                    "server_address",
                    "server_port",
                ]
                .iter()
                .map(|k| format!("{k}={}", get(k)))
                .collect();
                let _ = w.write_all(format!("action=REJECT {}\n\n", seen.join(" ")).as_bytes());
                attrs.clear();
            }
        }
    });
    port
}

#[test]
fn policy_servers_are_told_the_xclient_attributes() {
    let mut i = Instance::new("xclient-policy", "");
    let port = i.with_smtpd();
    let policy = echoing_policy_server(4);
    i.main_cf(&format!(
        "smtpd_authorized_xclient_hosts = 127.0.0.1\n\
         smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:{policy}"
    ));
    i.start();
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd(
            "XCLIENT NAME=client.example ADDR=192.0.2.7 PORT=4711 REVERSE_NAME=rev.example \
             HELO=helo.example PROTO=ESMTP LOGIN=alice DESTADDR=192.0.2.25 DESTPORT=587"
        ),
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@mx.example.test>", user())),
        format!(
            "554 5.7.1 <{}@mx.example.test>: Recipient address rejected: \
             client_name=client.example client_address=192.0.2.7 client_port=4711 \
             reverse_client_name=rev.example helo_name=helo.example protocol_name=ESMTP \
             sasl_method=XCLIENT sasl_username=alice server_address=192.0.2.25 \
             server_port=587\r\n",
            user()
        )
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn strangers_get_neither_keyword_and_postfix_refusals() {
    let mut i = Instance::new("xclient-stranger", "");
    let port = i.with_smtpd();
    i.start();
    let mut c = Raw::connect(port);
    let ehlo = c.cmd("EHLO client.example");
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("XCLIENT"),
        "501 5.5.4 Syntax: XCLIENT attribute=value...\r\n"
    );
    assert_eq!(
        c.cmd("XCLIENT ADDR=192.0.2.1"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(
        c.cmd("XFORWARD NAME=up.example"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 xclient=0/2 xforward=0/1 quit=1 commands=2/5$",
    );
}

#[test]
fn bad_xclient_attributes_change_nothing() {
    let mut i = Instance::new("xclient-syntax", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_authorized_xclient_hosts = 127.0.0.1");
    i.start();
    let mut c = Raw::connect(port);
    c.cmd("EHLO proxy.example");
    for (cmd, reply) in [
        (
            "XCLIENT FOO=bar",
            "501 5.5.4 Bad XCLIENT attribute name: FOO\r\n",
        ),
        (
            "XCLIENT NAME=bad_name!",
            "501 5.5.4 Bad NAME syntax: bad_name!\r\n",
        ),
        (
            "XCLIENT NAME=x.example ADDR=1.2.3",
            "501 5.5.4 Bad ADDR syntax: 1.2.3\r\n",
        ),
        (
            "XCLIENT NAME",
            "501 5.5.4 Error: attribute=value expected\r\n",
        ),
        ("XCLIENT PROTO=LMTP", "501 5.5.4 Bad PROTO syntax: LMTP\r\n"),
        ("XCLIENT PORT=12x", "501 5.5.4 Bad PORT syntax: 12x\r\n"),
    ] {
        assert_eq!(c.cmd(cmd), reply, "{cmd}");
    }
    let long = format!("XCLIENT HELO={}", "h".repeat(256));
    assert_eq!(
        c.cmd(&long),
        "501 5.5.4 Error: attribute value too long\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    // NAME=x.example came before the bad ADDR: not applied either.
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 xclient=0/7 quit=1 commands=2/9$",
    );
    assert!(!i.log_text().contains("x.example["), "{}", i.log_text());
}

#[test]
fn client_restrictions_not_delayed_are_asked_again_after_xclient() {
    let mut i = Instance::new("xclient-connect", "");
    let port = i.with_smtpd();
    let table = i.file(
        "clients.cidr",
        "192.0.2.7 REJECT go away\n192.0.2.8 421 closing now\n",
    );
    i.main_cf(&format!(
        "smtpd_authorized_xclient_hosts = 127.0.0.1\n\
         smtpd_delay_reject = no\n\
         smtpd_client_restrictions = check_client_access cidr:{}",
        table.display()
    ));
    i.start();
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd("XCLIENT NAME=bad.example ADDR=192.0.2.7"),
        "554 5.7.1 <bad.example[192.0.2.7]>: Client host rejected: go away\r\n"
    );
    // From then on, only QUIT.
    for cmd in [
        "EHLO x.example",
        "MAIL FROM:<a@b.example>",
        "XCLIENT ADDR=127.0.0.1",
    ] {
        assert_eq!(
            c.cmd(cmd),
            "503 5.7.0 Error: access denied for bad.example[192.0.2.7]\r\n",
            "{cmd}"
        );
    }
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: XCLIENT from bad\.example\[192\.0\.2\.7\]: 554 5\.7\.1 <bad\.example\[192\.0\.2\.7\]>: Client host rejected: go away; proto=SMTP$",
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from bad\.example\[192\.0\.2\.7\] ehlo=0/1 xclient=0/2 mail=0/1 quit=1 commands=1/5$",
    );
    // A 421 closes at once.
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd("XCLIENT NAME=worse.example ADDR=192.0.2.8"),
        "421 4.7.1 <worse.example[192.0.2.8]>: Client host rejected: closing now\r\n"
    );
    assert_eq!(rest(&mut c), "", "closed");
}

#[test]
fn xforward_names_the_upstream_client_for_one_message() {
    let mut i = Instance::new("xforward", "");
    let port = i.with_smtpd();
    let checks = i.file("header_checks", "/^Subject: forwarded/ WARN seen\n");
    i.main_cf(&format!(
        "smtpd_authorized_xforward_hosts = 127.0.0.0/8\n\
         header_checks = regexp:{}",
        checks.display()
    ));
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    let ehlo = c.cmd("EHLO filter.example");
    assert!(ehlo.contains(XFORWARD_KEYWORD), "{ehlo}");
    assert!(!ehlo.contains("XCLIENT"), "{ehlo}");
    for (cmd, reply) in [
        (
            "XFORWARD",
            "501 5.5.4 Syntax: XFORWARD attribute=value...\r\n",
        ),
        (
            "XFORWARD SOURCE=bogus",
            "501 5.5.4 Bad SOURCE syntax: bogus\r\n",
        ),
        (
            "XFORWARD FOO=bar",
            "501 5.5.4 Bad XFORWARD attribute name: FOO\r\n",
        ),
        (
            "XFORWARD NAME=up.example ADDR=198.51.100.9 PORT=4444 PROTO=ESMTP",
            "250 2.0.0 Ok\r\n",
        ),
        (
            "XFORWARD HELO=uphelo.example IDENT=ABC123 SOURCE=REMOTE",
            "250 2.0.0 Ok\r\n",
        ),
    ] {
        assert_eq!(c.cmd(cmd), reply, "{cmd}");
    }
    let send = |c: &mut Raw, subject: &str| {
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
        assert_eq!(
            c.cmd("XFORWARD NAME=late.example"),
            "503 5.5.1 Error: MAIL transaction in progress\r\n"
        );
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{me}@mx.example.test>")),
            "250 2.1.5 Ok\r\n"
        );
        assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
        c.send(&format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n"));
        let r = c.reply();
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
        r.trim_end().rsplit(' ').next().unwrap().to_string()
    };
    let first = send(&mut c, "forwarded");
    // The attributes were for that message only.
    let second = send(&mut c, "plain");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: {first}: client=\S+\[127\.0\.0\.1\], orig_queue_id=ABC123, orig_client=up\.example\[198\.51\.100\.9\]$"
    ));
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: {second}: client=\S+\[127\.0\.0\.1\]$"
    ));
    // cleanup got the up-stream client (its log lines name it).
    i.wait_log(&format!(
        r"postfix/cleanup\[\d+\]: {first}: warning: header Subject: forwarded from up\.example\[198\.51\.100\.9\]; from=<a@example\.org> to=<{}@mx\.example\.test> proto=ESMTP helo=<uphelo\.example>: seen$",
        regex::escape(&me)
    ));
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 xforward=2/7 mail=2 rcpt=2 data=2 quit=1 commands=10/15$",
    );
    // The Received: header names the connecting client, as Postfix's.
    let got = i.wait_maildir(&i.user_maildir(), 2);
    for m in &got {
        assert!(
            m.contains("\nReceived: from filter.example (")
                && m.contains(" [127.0.0.1])\n\tby mx.example.test (Postfix) with ESMTP id "),
            "{m}"
        );
    }
}

#[test]
fn forbidden_commands_end_the_session() {
    let mut i = Instance::new("smtpd-forbidden", "");
    let port = i.with_smtpd();
    i.start();
    for line in [
        "GET / HTTP/1.1",
        "get /",
        "Subject: hello",
        "1abc",
        "CONNECT host:443",
    ] {
        let mut c = Raw::connect(port);
        assert_eq!(
            c.cmd(line),
            "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n",
            "{line}"
        );
        assert_eq!(rest(&mut c), "", "{line}: closed");
        i.wait_log(&format!(
            r"postfix/smtpd\[\d+\]: warning: non-SMTP command from \S+\[127\.0\.0\.1\]: {}$",
            regex::escape(line)
        ));
    }
    // Not in Postfix's list: an unknown command, the session goes on.
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd("USER x"),
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn a_forbidden_commands_list_of_ones_own_replaces_postfixs() {
    let mut i = Instance::new("smtpd-forbidden-own", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_forbidden_commands = FOO, !BAR, regexp:{{/^ba/ x}}");
    i.start();
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd("GET /"),
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert_eq!(c.cmd("BAR"), "500 5.5.2 Error: command not recognized\r\n");
    assert_eq!(
        c.cmd("foo"),
        "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    );
    let mut c = Raw::connect(port);
    assert_eq!(
        c.cmd("baz"),
        "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    );
}

#[test]
fn the_reject_footer_follows_refusals_but_not_the_log() {
    let mut i = Instance::new("smtpd-footer", "");
    let port = i.with_smtpd();
    i.main_cf(
        "mynetworks = 192.0.2.0/24\n\
         smtpd_reject_footer = Contact postmaster@$server_name\\n(client $client_address)",
    );
    i.start();
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<u@elsewhere.example>"),
        "454-4.7.1 <u@elsewhere.example>: Relay access denied\r\n\
         454-4.7.1 Contact postmaster@mx.example.test\r\n\
         454 4.7.1 (client 127.0.0.1)\r\n"
    );
    assert_eq!(
        c.cmd("HELP"),
        "500-5.5.2 Error: command not recognized\r\n\
         500-5.5.2 Contact postmaster@mx.example.test\r\n\
         500 5.5.2 (client 127.0.0.1)\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 454 4\.7\.1 <u@elsewhere\.example>: Relay access denied; from=<a@example\.org> to=<u@elsewhere\.example> proto=ESMTP helo=<client\.example>$");
    assert!(!i.log_text().contains("Contact postmaster"));
}

#[test]
fn reject_footer_maps_choose_a_footer_by_the_reply() {
    // smtpd_reject_footer_maps, keyed by the whole reply, wins over
    // smtpd_reject_footer; a reply the table does not know gets the
    // general footer.
    let mut i = Instance::new("smtpd-footer-maps", "");
    let port = i.with_smtpd();
    let map = i.file(
        "footers.regexp",
        "/Relay access denied/ \\c - see https://example.test/relay\n",
    );
    i.main_cf(&format!(
        "mynetworks = 192.0.2.0/24\n\
         smtpd_reject_footer = General footer\n\
         smtpd_reject_footer_maps = regexp:{}",
        map.display()
    ));
    i.start();
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<u@elsewhere.example>"),
        "454 4.7.1 <u@elsewhere.example>: Relay access denied - see https://example.test/relay\r\n"
    );
    assert_eq!(
        c.cmd("HELP"),
        "500-5.5.2 Error: command not recognized\r\n500 5.5.2 General footer\r\n"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn ehlo_keywords_are_discarded_by_client_address() {
    let mut i = Instance::new("smtpd-discard-map", "");
    let port = i.with_smtpd();
    let map = i.file("discard.cidr", "127.0.0.1 chunking, dsn\n");
    i.main_cf(&format!(
        "smtpd_authorized_xclient_hosts = 127.0.0.1\n\
         smtpd_discard_ehlo_keyword_address_maps = cidr:{}\n\
         smtpd_discard_ehlo_keywords = vrfy",
        map.display()
    ));
    i.start();
    let mut c = Raw::connect(port);
    let ehlo = c.cmd("EHLO client.example");
    assert!(
        ehlo.ends_with("250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"),
        "{ehlo}"
    );
    assert!(ehlo.contains("250-VRFY\r\n"), "the map wins: {ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<u@mx.example.test> NOTIFY=NEVER"),
        "501 5.7.1 DSN support is disabled\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
    // Another address (through XCLIENT) gets the general list.
    assert_eq!(
        c.cmd("XCLIENT ADDR=192.0.2.9"),
        "220 mx.example.test ESMTP Postfix\r\n"
    );
    let ehlo = c.cmd("EHLO client.example");
    assert!(!ehlo.contains("VRFY"), "{ehlo}");
    assert!(
        ehlo.ends_with("250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(r"postfix/smtpd\[\d+\]: discarding EHLO keywords: DSN CHUNKING$");
    i.wait_log(r"postfix/smtpd\[\d+\]: discarding EHLO keywords: VRFY$");
    // BDAT without CHUNKING: refused, and the session ends.
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    c.cmd("MAIL FROM:<a@example.org>");
    c.cmd(&format!("RCPT TO:<{}@mx.example.test>", user()));
    assert_eq!(
        c.cmd("BDAT 4 LAST"),
        "521 5.5.1 Error: command not implemented\r\n"
    );
    assert_eq!(rest(&mut c), "", "closed");
}

#[test]
fn recipients_past_the_limit_count_as_errors_only_past_the_overshoot() {
    let mut i = Instance::new("smtpd-overshoot", "");
    let port = i.with_smtpd();
    i.main_cf(
        "smtpd_recipient_limit = 2\n\
         smtpd_recipient_overshoot_limit = 2\n\
         smtpd_hard_error_limit = 2",
    );
    i.start();
    let me = user();
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.example");
    c.cmd("MAIL FROM:<a@example.org>");
    let rcpt = format!("RCPT TO:<{me}@mx.example.test>");
    for _ in 0..2 {
        assert_eq!(c.cmd(&rcpt), "250 2.1.5 Ok\r\n");
    }
    // Two over the limit are not errors (a hard limit of 2 would have
    // ended the session); the third is the first error.
    for _ in 0..3 {
        assert_eq!(c.cmd(&rcpt), "452 4.5.3 Error: too many recipients\r\n");
    }
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=4/5 quit=1 commands=7/8$",
    );
}

#[test]
fn improper_pipelining_is_logged_and_with_forbid_unauth_pipelining_ends_the_session() {
    let mut i = Instance::new("smtpd-forbid-pipe", "");
    let port = i.with_smtpd();
    i.main_cf("smtpd_forbid_unauth_pipelining = yes");
    i.start();
    // Before EHLO, anything sent ahead.
    let mut c = Raw::connect(port);
    c.send("HELO client.example\r\nMAIL FROM:<a@example.org>\r\n");
    assert_eq!(
        rest(&mut c),
        "554 5.5.0 Error: SMTP protocol synchronization\r\n"
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: improper command pipelining after HELO from \S+\[127\.0\.0\.1\]: $",
    );
    i.wait_log(r"postfix/smtpd\[\d+\]: disconnect from \S+\[127\.0\.0\.1\] helo=0/1 commands=0/1$");
    // After EHLO, a group of MAIL, RCPT, RSET is fine; more after NOOP
    // is not.
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    c.send(&format!(
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<{}@mx.example.test>\r\nRSET\r\n",
        user()
    ));
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok\r\n");
    c.send("NOOP\r\nNOOP\r\n");
    assert_eq!(
        rest(&mut c),
        "554 5.5.0 Error: SMTP protocol synchronization\r\n"
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: improper command pipelining after NOOP from \S+\[127\.0\.0\.1\]: $",
    );
}

#[test]
fn improper_pipelining_is_only_logged_by_default() {
    let mut i = Instance::new("smtpd-pipe-log", "");
    let port = i.with_smtpd();
    i.start();
    let mut c = Raw::connect(port);
    c.send("HELO client.example\r\nNOOP\r\n");
    assert_eq!(c.reply(), "250 mx.example.test\r\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok\r\n");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    i.wait_log(
        r"postfix/smtpd\[\d+\]: improper command pipelining after HELO from \S+\[127\.0\.0\.1\]: $",
    );
}

#[test]
fn strict_rfc821_envelopes_wants_brackets_and_the_default_does_not() {
    // Postfix 3.7's replies, both settings.
    for strict in [true, false] {
        let mut i = Instance::new(&format!("smtpd-strict-{strict}"), "");
        let port = i.with_smtpd();
        if strict {
            i.main_cf("strict_rfc821_envelopes = yes");
        }
        i.start();
        let mut c = Raw::connect(port);
        assert!(c.cmd("EHLO client.example").starts_with("250-"));
        let rcpt = format!("{}@mx.example.test", user());
        if strict {
            assert_eq!(
                c.cmd("MAIL FROM:a@example.org"),
                "501 5.1.7 Bad sender address syntax\r\n"
            );
            assert_eq!(c.cmd("MAIL FROM:<<a@example.org>>"), "250 2.1.0 Ok\r\n");
            assert_eq!(
                c.cmd(&format!("RCPT TO:{rcpt}")),
                "501 5.1.3 Bad recipient address syntax\r\n"
            );
        } else {
            assert_eq!(c.cmd("MAIL FROM:a@example.org"), "250 2.1.0 Ok\r\n");
            assert_eq!(c.cmd(&format!("RCPT TO:{rcpt}")), "250 2.1.5 Ok\r\n");
        }
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>x")),
            "501 5.1.3 Bad recipient address syntax\r\n"
        );
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>>")), "250 2.1.5 Ok\r\n");
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    }
}

/// `receive_override_options` on a second smtpd (as on the service that
/// takes mail back from a content filter): no address mappings, no
/// header/body checks, no unknown-recipient check there; the first smtpd
/// keeps them all.
#[test]
fn receive_override_options_switch_off_mappings_checks_and_unknown_recipients() {
    let mut i = Instance::new("smtpd-override", "");
    let port = i.with_smtpd();
    let back = common::free_port();
    let top = i.top.display().to_string();
    i.file("header_checks", "/^Subject: forbidden/ REJECT not here\n");
    i.main_cf(&format!(
        "header_checks = regexp:{top}/header_checks\n\
         sender_canonical_maps = inline:{{carol@example.org=carol@canon.example}}"
    ));
    let mcf = std::path::Path::new(&i.etc).join("master.cf");
    let mut text = std::fs::read_to_string(&mcf).unwrap();
    text.push_str(&format!(
        "127.0.0.1:{back} inet n - n - - smtpd\n  -o receive_override_options=no_address_mappings,no_header_body_checks,no_unknown_recipient_checks\n"
    ));
    std::fs::write(&mcf, text).unwrap();
    i.start();
    let me = format!("{}@mx.example.test", user());
    for (p, overridden) in [(port, false), (back, true)] {
        let mut c = Raw::connect(p);
        assert!(c.cmd("EHLO client.example").starts_with("250-"));
        assert_eq!(c.cmd("MAIL FROM:<carol@example.org>"), "250 2.1.0 Ok\r\n");
        let unknown = c.cmd("RCPT TO:<nosuchuser@mx.example.test>");
        if overridden {
            assert_eq!(unknown, "250 2.1.5 Ok\r\n");
            assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
            assert_eq!(c.cmd("MAIL FROM:<carol@example.org>"), "250 2.1.0 Ok\r\n");
        } else {
            assert!(
                unknown.starts_with("550 5.1.1 <nosuchuser@mx.example.test>"),
                "{unknown}"
            );
        }
        assert_eq!(c.cmd(&format!("RCPT TO:<{me}>")), "250 2.1.5 Ok\r\n");
        assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
        let end = c.cmd(&format!("Subject: forbidden\r\n\r\nfrom port {p}\r\n."));
        if overridden {
            assert!(end.starts_with("250 2.0.0 Ok: queued as "), "{end}");
        } else {
            assert_eq!(end, "550 5.7.1 not here\r\n");
        }
        assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    }
    // The message taken back was not mapped either: its sender as sent.
    i.wait_log(
        r"postfix/qmgr\[\d+\]: [0-9A-F]+: from=<carol@example\.org>, size=\d+, nrcpt=1 \(queue active\)$",
    );
    // And with mappings on, the canonical map applies.
    let mut c = Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd(&format!("RCPT TO:<{me}>")), "250 2.1.5 Ok\r\n");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    assert!(c
        .cmd("Subject: fine\r\n\r\nmapped\r\n.")
        .starts_with("250 2.0.0 Ok: queued as "));
    i.wait_log(
        r"postfix/qmgr\[\d+\]: [0-9A-F]+: from=<carol@canon\.example>, size=\d+, nrcpt=1 \(queue active\)$",
    );
}
