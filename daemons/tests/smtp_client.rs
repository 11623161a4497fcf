//! The smtp agent against scripted servers (aiosmtpd, driven by
//! daemons/tests/data/scripted_smtpd.py) and a real Postfix: STARTTLS at
//! each security level, AUTH, per-recipient replies, broken and stalled
//! servers, SIZE, DSN parameters, connection reuse, smtp_generic_maps and
//! the header/body checks (also compared with what Postfix's own smtp
//! client sends and logs for the same message and tables), fall-back
//! relays, XFORWARD (to a real Postfix too), lmtp_assume_final. Each test
//! runs a whole Facteur instance, submits with sendmail (or to its
//! smtpd) and reads the log line and what the server recorded.

mod common;

use common::peers::{PostfixRelay, RelayOptions, Scripted, ScriptedConfig, Stage, TestCert};
use common::Instance;

/// A test CA (its certificate file) and a server certificate for `cn`
/// signed by it: what `verify` and `secure` need (webpki refuses a
/// self-signed CA certificate used as the server's own).
fn ca_and_leaf(dir: &std::path::Path, cn: &str) -> (std::path::PathBuf, TestCert) {
    use std::process::Command;
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=Facteur test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    let key = format!("{cn}.key");
    let csr = format!("{cn}.csr");
    let crt = format!("{cn}.crt");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=DNS:{cn}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        &crt,
    ]);
    let leaf = TestCert {
        cert: dir.join(&crt),
        key: dir.join(&key),
    };
    // The scripted server may run as another user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir.join("ca.crt"), leaf)
}

fn msg(subject: &str) -> String {
    format!("From: alice@example.test\nTo: bob@remote.test\nSubject: {subject}\n\nhello\n")
}

/// An instance relaying everything to `relayhost`, with extra main.cf.
fn relaying(tag: &str, relayhost: &str, extra: &str) -> Instance {
    let mut inst = Instance::new(tag, "");
    inst.main_cf(&format!("relayhost = {relayhost}\n{extra}"));
    inst.start();
    inst
}

fn send(inst: &Instance, rcpts: &[&str], body: &str) {
    let mut args = vec!["-f", "alice@example.test"];
    args.extend_from_slice(rcpts);
    inst.send(&args, body);
    inst.kick();
}

#[test]
fn starttls_may_is_used_when_offered() {
    let dir = common::peers::TempDir::new("tls-may");
    let cert = TestCert::generate(&dir, "mx.remote.test");
    let srv = Scripted::start(&ScriptedConfig::new().starttls(&cert));
    let inst = relaying(
        "tls-may",
        &srv.relayhost(),
        "smtp_tls_security_level = may\nsmtp_tls_loglevel = 1\n",
    );
    send(&inst, &["bob@remote.test"], &msg("tls"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    inst.wait_log(r"smtp\[\d+\]: Untrusted TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: TLSv1\.[23] with cipher ");
    let t = srv.wait_transactions(1);
    assert!(t[0].tls, "the message went over TLS");
}

#[test]
fn starttls_refused_under_may_continues_in_plain_text() {
    let srv = Scripted::start(&ScriptedConfig::new().refuse_starttls());
    let inst = relaying(
        "tls-refused",
        &srv.relayhost(),
        "smtp_tls_security_level = may\n",
    );
    send(&inst, &["bob@remote.test"], &msg("plain"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    let t = srv.wait_transactions(1);
    assert!(!t[0].tls);
    let s = srv.wait_sessions(1);
    assert!(
        s[0].commands().iter().any(|c| c == "STARTTLS"),
        "{:?}",
        s[0].commands()
    );
}

#[test]
fn encrypt_without_starttls_defers_and_sends_nothing() {
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "tls-encrypt",
        &srv.relayhost(),
        "smtp_tls_security_level = encrypt\n",
    );
    send(&inst, &["bob@remote.test"], &msg("must encrypt"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("dsn=4.7.4, status=deferred (TLS is required, but was not offered by host 127.0.0.1[127.0.0.1])"),
        "{line}"
    );
    assert!(srv.transactions().is_empty());
}

#[test]
fn verify_checks_the_chain_and_the_host_name() {
    let dir = common::peers::TempDir::new("tls-verify");
    // A server certificate for "localhost" from a test CA.
    let good_dir = dir.join("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let (ca, good) = ca_and_leaf(&good_dir, "localhost");
    let srv = Scripted::start(&ScriptedConfig::new().starttls(&good));
    let inst = relaying(
        "tls-verify-ok",
        &format!("[localhost]:{}", srv.port()),
        &format!(
            "smtp_tls_security_level = verify\nsmtp_tls_CAfile = {}\nsmtp_host_lookup = native\nsmtp_tls_loglevel = 1\n",
            ca.display()
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("verified"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    inst.wait_log(r"Verified TLS connection established to localhost\[127\.0\.0\.1\]");
    assert!(srv.wait_transactions(1)[0].tls);

    // Same CA, another name in the certificate: not verified, deferred.
    let bad_dir = dir.join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let (ca2, other) = ca_and_leaf(&bad_dir, "other.test");
    let srv2 = Scripted::start(&ScriptedConfig::new().starttls(&other));
    let inst2 = relaying(
        "tls-verify-bad",
        &format!("[localhost]:{}", srv2.port()),
        &format!(
            "smtp_tls_security_level = verify\nsmtp_tls_CAfile = {}\nsmtp_host_lookup = native\n",
            ca2.display()
        ),
    );
    send(&inst2, &["bob@remote.test"], &msg("not verified"));
    let line = inst2.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("dsn=4.7.5, status=deferred (Server certificate not verified"),
        "{line}"
    );
    assert!(srv2.transactions().is_empty());
}

/// The certificate's SHA-256 fingerprint, as openssl prints it.
fn sha256_fingerprint(cert: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .split_once('=')
        .expect("Fingerprint=...")
        .1
        .to_string()
}

#[test]
fn fingerprint_level_accepts_only_the_listed_certificate() {
    let dir = common::peers::TempDir::new("tls-fingerprint");
    // Self-signed, for a name that is not the server's: only the
    // fingerprint counts.
    let cert = TestCert::generate(&dir, "not.the.host.test");
    let srv = Scripted::start(&ScriptedConfig::new().starttls(&cert));
    let fp = sha256_fingerprint(&cert.cert);
    let inst = relaying(
        "tls-fp-ok",
        &format!("[127.0.0.1]:{}", srv.port()),
        &format!(
            "smtp_tls_security_level = fingerprint\nsmtp_tls_fingerprint_digest = sha256\n\
             smtp_tls_fingerprint_cert_match = 00:11, {}\nsmtp_tls_loglevel = 1\n",
            fp.to_lowercase()
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("pinned"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    inst.wait_log(r"Verified TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]");
    assert!(srv.wait_transactions(1)[0].tls);

    // Another certificate: not verified, deferred, nothing sent.
    let other = TestCert::generate(&dir, "other.test");
    let srv2 = Scripted::start(&ScriptedConfig::new().starttls(&other));
    let inst2 = relaying(
        "tls-fp-bad",
        &format!("[127.0.0.1]:{}", srv2.port()),
        &format!(
            "smtp_tls_security_level = fingerprint\nsmtp_tls_fingerprint_digest = sha256\n\
             smtp_tls_fingerprint_cert_match = {fp}\n"
        ),
    );
    send(&inst2, &["bob@remote.test"], &msg("not pinned"));
    let line = inst2.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("dsn=4.7.5, status=deferred (Server certificate not verified"),
        "{line}"
    );
    assert!(srv2.transactions().is_empty());

    // A policy map's own list for that next hop (`match=a|b`) replaces
    // the global one, which names the first certificate only.
    let hop = format!("[127.0.0.1]:{}", srv2.port());
    let inst3 = relaying(
        "tls-fp-policy",
        &hop,
        &format!(
            "smtp_tls_fingerprint_digest = sha256\nsmtp_tls_fingerprint_cert_match = {fp}\n\
             smtp_tls_policy_maps = inline:{{ {{{hop}=fingerprint match=00:11|{}}} }}\n",
            sha256_fingerprint(&other.cert)
        ),
    );
    send(&inst3, &["bob@remote.test"], &msg("pinned per site"));
    inst3.wait_log(r"to=<bob@remote\.test>.*status=sent");
    assert!(srv2.wait_transactions(1)[0].tls);
}

#[test]
fn auth_plain_with_password_maps_after_starttls() {
    let dir = common::peers::TempDir::new("auth");
    let cert = TestCert::generate(&dir, "mx.remote.test");
    let srv = Scripted::start(
        &ScriptedConfig::new()
            .starttls(&cert)
            .auth("sender@isp.test", "s3cret")
            .auth_requires_tls()
            .auth_required(),
    );
    let relayhost = srv.relayhost();
    let inst = relaying(
        "auth",
        &relayhost,
        &format!(
            "smtp_tls_security_level = encrypt\nsmtp_sasl_auth_enable = yes\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_password_maps = inline:{{ {relayhost}=sender@isp.test:s3cret }}\n"
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("authenticated"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    let t = srv.wait_transactions(1);
    assert_eq!(t[0].auth_user.as_deref(), Some("sender@isp.test"));
    assert!(t[0].tls);
}

#[test]
fn wrong_password_defers_with_the_servers_reply() {
    let srv = Scripted::start(&ScriptedConfig::new().auth("u", "right").auth_required());
    let relayhost = srv.relayhost();
    let inst = relaying(
        "auth-bad",
        &relayhost,
        &format!(
            "smtp_sasl_auth_enable = yes\nsmtp_sasl_security_options = noanonymous\n\
             smtp_sasl_password_maps = inline:{{ {relayhost}=u:wrong }}\n"
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("bad password"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("(SASL authentication failed; server 127.0.0.1[127.0.0.1] said: 535"),
        "{line}"
    );
    assert!(srv.transactions().is_empty());
}

#[test]
fn default_security_options_refuse_plaintext_mechanisms() {
    // Postfix's default smtp_sasl_security_options (noplaintext) leaves
    // no usable mechanism: the delivery is deferred, nothing is sent.
    let srv = Scripted::start(&ScriptedConfig::new().auth("u", "p").auth_required());
    let relayhost = srv.relayhost();
    let inst = relaying(
        "auth-noplain",
        &relayhost,
        &format!(
            "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = inline:{{ {relayhost}=u:p }}\n"
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("no mechanism"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(line.contains("no mechanism available"), "{line}");
}

#[test]
fn per_recipient_replies_in_one_transaction() {
    let srv = Scripted::start(
        &ScriptedConfig::new()
            .rcpt_for(
                "gone@remote.test",
                "550 5.1.1 <gone@remote.test>: no such user",
            )
            .rcpt_for("busy@remote.test", "451 4.2.1 mailbox busy"),
    );
    let inst = relaying("per-rcpt", &srv.relayhost(), "");
    send(
        &inst,
        &["ok@remote.test", "gone@remote.test", "busy@remote.test"],
        &msg("three"),
    );
    let ok = inst.wait_log(r"to=<ok@remote\.test>.*status=sent");
    assert!(ok.contains("dsn=2.0.0"), "{ok}");
    let gone = inst.wait_log(r"to=<gone@remote\.test>.*status=bounced");
    assert!(
        gone.contains("dsn=5.1.1, status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <gone@remote.test>: no such user (in reply to RCPT TO command))"),
        "{gone}"
    );
    let busy = inst.wait_log(r"to=<busy@remote\.test>.*status=deferred");
    assert!(busy.contains("dsn=4.2.1"), "{busy}");
    let t = srv.wait_transactions(1);
    assert_eq!(t[0].accepted(), ["ok@remote.test"]);
}

#[test]
fn dropped_connection_mid_data_is_deferred_not_lost() {
    let srv = Scripted::start(&ScriptedConfig::new().drop_mid_data(100));
    let inst = relaying("drop-data", &srv.relayhost(), "");
    let big = format!("Subject: big\n\n{}\n", "x".repeat(20000));
    send(&inst, &["bob@remote.test"], &big);
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    // Where the loss is noticed depends on how much the socket buffers
    // took before the server hung up: during the body or at its end.
    assert!(
        line.contains("dsn=4.4.2, status=deferred (lost connection with 127.0.0.1[127.0.0.1] while sending message body)")
            || line.contains("dsn=4.4.2, status=deferred (lost connection with 127.0.0.1[127.0.0.1] while sending end of data -- message may be sent more than once)"),
        "{line}"
    );
    common::wait_for(30, "the message in deferred/", || {
        !inst.queue_files("deferred").is_empty()
    });
}

#[test]
fn stalled_greeting_times_out() {
    let srv = Scripted::start(&ScriptedConfig::new().stall(Stage::Greeting, 60));
    let inst = relaying("stall", &srv.relayhost(), "smtp_helo_timeout = 1s\n");
    send(&inst, &["bob@remote.test"], &msg("stalled"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("(conversation with 127.0.0.1[127.0.0.1] timed out while receiving the initial server greeting)"),
        "{line}"
    );
}

#[test]
fn size_limit_of_the_server_bounces_before_mail() {
    let srv = Scripted::start(&ScriptedConfig::new().size(Some(100)));
    let inst = relaying("size", &srv.relayhost(), "");
    send(
        &inst,
        &["bob@remote.test"],
        &format!("Subject: s\n\n{}\n", "y".repeat(500)),
    );
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=bounced");
    assert!(
        line.contains("dsn=5.3.4")
            && line.contains("exceeds size limit 100 of server 127.0.0.1[127.0.0.1]"),
        "{line}"
    );
    assert!(srv.transactions().is_empty());
}

#[test]
fn dsn_and_size_parameters_are_passed_on() {
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying("dsn-params", &srv.relayhost(), "");
    inst.send(
        &[
            "-f",
            "alice@example.test",
            "-N",
            "success,delay",
            "-R",
            "hdrs",
            "-V",
            "env+id=1",
            "bob@remote.test",
        ],
        &msg("dsn"),
    );
    inst.kick();
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    let t = srv.wait_transactions(1);
    let p = t[0].mail_params.join(" ");
    assert!(p.contains("RET=HDRS"), "{p}");
    assert!(p.contains("ENVID=env+2Bid+3D1"), "{p}");
    assert!(p.contains("SIZE="), "{p}");
    let r = t[0].rcpts[0].params.join(" ");
    assert!(r.contains("NOTIFY=SUCCESS,DELAY"), "{r}");
}

#[test]
fn a_kept_session_carries_the_next_message() {
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "reuse",
        &srv.relayhost(),
        "smtp_connection_cache_time_limit = 60s\n",
    );
    send(&inst, &["bob@remote.test"], &msg("first"));
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    send(&inst, &["carol@remote.test"], &msg("second"));
    let line = inst.wait_log(r"to=<carol@remote\.test>.*status=sent");
    assert!(line.contains(", conn_use=2, delay="), "{line}");
    let t = srv.wait_transactions(2);
    assert_eq!(t[0].session, t[1].session, "one connection for both");
}

#[test]
fn relayhost_real_postfix_with_starttls_and_sasl_through_dovecot() {
    let Some(relay) = PostfixRelay::start(RelayOptions {
        tls: true,
        sasl: true,
        ..Default::default()
    }) else {
        eprintln!("skipped: a real Postfix instance needs root");
        return;
    };
    let relayhost = relay.relayhost();
    let dir = common::peers::TempDir::new("sasl-passwd");
    let passwd = dir.join("sasl_passwd");
    std::fs::write(&passwd, relay.sasl_password_line("alice@example.test")).unwrap();
    let inst = relaying(
        "postfix-relay",
        &relayhost,
        &format!(
            "smtp_tls_security_level = encrypt\nsmtp_sasl_auth_enable = yes\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_password_maps = texthash:{}\n",
            passwd.display()
        ),
    );
    send(&inst, &["bob@remote.test"], &msg("through postfix"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    assert!(line.contains("250 2.0.0 Ok: queued as "), "{line}");
    let got = relay.wait_messages_for("bob@remote.test", 1);
    assert!(got[0].contains("Subject: through postfix"));
    // Postfix saw an authenticated TLS client.
    relay.wait_log(r"sasl_method=(PLAIN|LOGIN), sasl_username=alice@example\.test");
}

#[test]
fn lmtp_reply_per_recipient_4xx_defers_5xx_bounces() {
    let srv = Scripted::start_unix(
        &ScriptedConfig::new()
            .lmtp()
            .dot_for(
                "later@example.test",
                "452 4.2.2 <later@example.test> mailbox full, try later",
            )
            .dot_for(
                "never@example.test",
                "552 5.2.2 <never@example.test> quota exceeded",
            ),
    );
    let mut inst = Instance::new("lmtp-scripted", "");
    inst.main_cf(&format!(
        "virtual_mailbox_domains = example.test\nvirtual_transport = lmtp:unix:{}\n",
        srv.socket().display()
    ));
    inst.start();
    send(
        &inst,
        &[
            "ok@example.test",
            "later@example.test",
            "never@example.test",
        ],
        &msg("lmtp"),
    );
    inst.wait_log(r"to=<ok@example\.test>.*status=sent");
    let later = inst.wait_log(r"to=<later@example\.test>.*status=deferred");
    assert!(
        later.contains("dsn=4.2.2") && later.contains("(in reply to end of DATA command)"),
        "{later}"
    );
    let never = inst.wait_log(r"to=<never@example\.test>.*status=bounced");
    assert!(never.contains("dsn=5.2.2"), "{never}");
    let t = srv.wait_transactions(1);
    assert_eq!(t[0].protocol, "LMTP");
    assert_eq!(
        t[0].lmtp_replies.len(),
        3,
        "one reply per accepted recipient"
    );
    // The deferred recipient alone is tried again later.
    common::wait_for(30, "the message in deferred/", || {
        !inst.queue_files("deferred").is_empty()
    });
}

#[test]
fn wrapper_mode_to_facteurs_own_smtpd_on_a_submissions_port() {
    // The receiving side is another Facteur whose smtpd speaks TLS from
    // the first byte (`-o smtpd_tls_wrappermode=yes`, as on port 465).
    let dir = common::peers::TempDir::new("wrapper");
    let cert = TestCert::generate(&dir, "rx.remote.test");
    let mut rx = Instance::new("wrapper-rx", "");
    let port = rx.with_smtpd();
    let mc = std::path::Path::new(&rx.etc).join("master.cf");
    let text = std::fs::read_to_string(&mc).unwrap();
    std::fs::write(&mc, format!("{text}  -o smtpd_tls_wrappermode=yes\n")).unwrap();
    rx.main_cf(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_loglevel = 1\n\
         relay_domains = remote.test\ntransport_maps = inline:{{ remote.test=discard: }}\n",
        cert.cert.display(),
        cert.key.display()
    ));
    rx.start();
    let tx = relaying(
        "wrapper-tx",
        &format!("[127.0.0.1]:{port}"),
        "smtp_tls_wrappermode = yes\nsmtp_tls_security_level = encrypt\n",
    );
    send(&tx, &["bob@remote.test"], &msg("implicit tls"));
    let line = tx.wait_log(r"to=<bob@remote\.test>.*status=sent");
    assert!(line.contains("250 2.0.0 Ok: queued as "), "{line}");
    rx.wait_log(r"TLS connection established from localhost\[127\.0\.0\.1\]");
    rx.wait_log(r"to=<bob@remote\.test>, relay=none, .*status=sent");
}

#[test]
fn a_dead_and_a_stalled_destination_do_not_delay_a_healthy_one() {
    use common::peers::SmtpSink;
    let healthy = SmtpSink::start(&[]);
    let dead_port = common::free_port();
    let mut inst = Instance::new("dead-slow-healthy", "");
    // The stalled server is declared after the instance so that it goes
    // first at the end, releasing the agents it holds.
    let stalled = Scripted::start(&ScriptedConfig::new().stall(Stage::Greeting, 120));
    inst.main_cf(&format!(
        "transport_maps = inline:{{ stalled.test=smtp:[127.0.0.1]:{}, dead.test=smtp:[127.0.0.1]:{dead_port}, healthy.test=smtp:{} }}\n\
         smtp_helo_timeout = 60s\n",
        stalled.port(),
        healthy.relayhost()
    ));
    inst.start();
    // The slow and the dead destinations are queued first.
    for i in 0..20 {
        inst.send(
            &["-f", "alice@example.test", &format!("s{i}@stalled.test")],
            &msg("slow"),
        );
        inst.send(
            &["-f", "alice@example.test", &format!("d{i}@dead.test")],
            &msg("dead"),
        );
    }
    for i in 0..20 {
        inst.send(
            &["-f", "alice@example.test", &format!("h{i}@healthy.test")],
            &msg("healthy"),
        );
    }
    inst.kick();
    // Every healthy message arrives while the stalled server has not let
    // a single transaction through.
    assert_eq!(healthy.wait_messages(20).len(), 20);
    assert!(stalled.transactions().is_empty());
    // The dead destination was declared dead after a few refused
    // connections; the rest of its mail waits without being tried.
    inst.wait_log(&format!(
        r"to=<d\d+@dead\.test>, relay=none, .*status=deferred \(delivery temporarily suspended: connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead_port}: Connection refused\)"
    ));
    common::wait_for(30, "all 20 dead.test recipients deferred", || {
        inst.log_text()
            .lines()
            .filter(|l| l.contains("@dead.test>") && l.contains("status=deferred"))
            .count()
            >= 20
    });
    let attempts = inst
        .log_text()
        .lines()
        .filter(|l| {
            l.ends_with(&format!(
                "connect to 127.0.0.1[127.0.0.1]:{dead_port}: Connection refused"
            )) && !l.contains("to=<")
        })
        .count();
    assert!(
        (1..20).contains(&attempts),
        "{attempts} connections to the dead site for 20 messages"
    );
}

#[test]
fn client_certificate_is_presented_when_the_server_asks() {
    // The receiving side: Facteur's smtpd asking for client certificates.
    let dir = common::peers::TempDir::new("ccert");
    let server_cert = TestCert::generate(&dir, "rx.remote.test");
    let client_cert = TestCert::generate(&dir, "tx.example.test");
    let mut rx = Instance::new("ccert-rx", "");
    let port = rx.with_smtpd();
    rx.main_cf(&format!(
        "smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
         smtpd_tls_ask_ccert = yes\nsmtpd_tls_loglevel = 1\n\
         relay_domains = remote.test\ntransport_maps = inline:{{ remote.test=discard: }}\n",
        server_cert.cert.display(),
        server_cert.key.display()
    ));
    rx.start();
    let tx = relaying(
        "ccert-tx",
        &format!("[127.0.0.1]:{port}"),
        &format!(
            "smtp_tls_security_level = encrypt\nsmtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\n",
            client_cert.cert.display(),
            client_cert.key.display()
        ),
    );
    send(&tx, &["bob@remote.test"], &msg("with a client certificate"));
    tx.wait_log(r"to=<bob@remote\.test>.*status=sent");
    // "Untrusted": a certificate was presented (Anonymous without one).
    rx.wait_log(r"Untrusted TLS connection established from localhost\[127\.0\.0\.1\]");

    // Without a certificate configured the same server sees none.
    let tx2 = relaying(
        "ccert-none",
        &format!("[127.0.0.1]:{port}"),
        "smtp_tls_security_level = encrypt\n",
    );
    send(&tx2, &["carol@remote.test"], &msg("without"));
    tx2.wait_log(r"to=<carol@remote\.test>.*status=sent");
    rx.wait_log(r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]");
}

#[test]
fn notify_success_relayed_to_a_server_without_dsn_and_passed_on_to_one_with_it() {
    // NOTIFY=SUCCESS from a local sender, relayed onwards: a server
    // without DSN gets the mail "relayed" (the sender is told so); a
    // server with DSN is handed the NOTIFY request and notifies itself.
    for dsn in [false, true] {
        let srv = Scripted::start(&ScriptedConfig::new().extension("DSN", dsn));
        let tag = if dsn { "dsn-passed" } else { "dsn-relayed" };
        let mut inst = Instance::new(tag, "");
        // Mail for the local user stays here; the rest goes to the server.
        inst.main_cf(&format!("relayhost = {}\n", srv.relayhost()));
        inst.start();
        let me = common::user();
        inst.send(
            &[
                "-f",
                &format!("{me}@mx.example.test"),
                "-N",
                "success",
                "bob@remote.test",
            ],
            &msg("notify me"),
        );
        inst.kick();
        let id = inst
            .wait_log(r"smtp\[\d+\]: ([0-9A-F]+): to=<bob@remote\.test>.*status=sent")
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .to_string();
        let t = srv.wait_transactions(1);
        if dsn {
            assert!(
                t[0].rcpts[0].params.iter().any(|p| p == "NOTIFY=SUCCESS"),
                "{:?}",
                t[0].rcpts[0].params
            );
            // The message is settled without a notice from here.
            inst.wait_log(&format!(r"qmgr\[\d+\]: {id}: removed$"));
            assert!(!inst.log_text().contains("delivery status notification"));
            assert!(inst.maildir(&inst.user_maildir()).is_empty());
        } else {
            inst.wait_log(&format!(r"{id}: sender delivery status notification: "));
            let got = inst.wait_maildir(&inst.user_maildir(), 1);
            assert!(got[0].contains("Action: relayed"), "{}", got[0]);
            assert!(
                got[0].contains("Final-Recipient: rfc822; bob@remote.test"),
                "{}",
                got[0]
            );
        }
    }
}

#[test]
fn body_and_smtputf8_received_are_passed_on() {
    let srv = Scripted::start(&ScriptedConfig::new().extension("SMTPUTF8", true));
    let mut inst = Instance::new("utf8-on", "");
    let port = inst.with_smtpd();
    inst.main_cf(&format!(
        "relayhost = {}\nrelay_domains = remote.test\nrelay_transport = smtp\n",
        srv.relayhost()
    ));
    inst.start();
    let mut c = common::smtp::Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    let m = c.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME SMTPUTF8");
    assert!(m.starts_with("250"), "{m}");
    assert!(c.cmd("RCPT TO:<jörg@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send("Subject: grüße\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    let t = srv.wait_transactions(1);
    let p = t[0].mail_params.join(" ");
    assert!(p.contains("BODY=8BITMIME") && p.contains("SMTPUTF8"), "{p}");
    assert_eq!(t[0].rcpts[0].address, "jörg@remote.test");
}

// ----- smtp_generic_maps, header/body checks, fall-back relays, XFORWARD -----

/// The content lines of a queue file (its sender and the message).
fn queued_copy(path: &std::path::Path) -> (String, String) {
    use libmail::queue::{Access, QueueFile};
    let qf = QueueFile::open(path, Access::ReadOnly, &Default::default()).unwrap();
    let mut text = String::new();
    let mut reader = qf.content();
    let mut line = Vec::new();
    while reader.read_line(&mut line, 1 << 20).unwrap() {
        text.push_str(&String::from_utf8_lossy(&line));
        text.push('\n');
    }
    (qf.envelope().sender.clone(), text)
}

/// The header lines of a received message (CRLF or LF), Received:
/// headers and their continuations left out, then the body.
fn without_received(data: &str) -> String {
    let data = data.replace("\r\n", "\n");
    let (head, body) = data.split_once("\n\n").unwrap_or((&data, ""));
    let mut out = Vec::new();
    let mut skipping = false;
    for l in head.lines() {
        if l.starts_with(' ') || l.starts_with('\t') {
            if !skipping {
                out.push(l);
            }
            continue;
        }
        skipping = l.to_ascii_lowercase().starts_with("received:");
        if !skipping {
            out.push(l);
        }
    }
    format!("{}\n\n{body}", out.join("\n"))
}

const GENERIC: &str = "smtp_generic_maps = inline:{ {@localdomain.local=@isp.example}, \
     {bob@remote.test=robert@remote.test} }";

fn generic_message() -> String {
    "From: Alice <alice@localdomain.local>\nTo: bob@remote.test, busy@remote.test\n\
     Cc: dave@localdomain.local\nReply-To: \"Alice A.\" <alice+list@localdomain.local>\n\
     Subject: mail from alice@localdomain.local\nMessage-Id: <m1@localdomain.local>\n\
     Date: Mon, 1 Jan 2024 00:00:00 +0000\n\nwritten by alice@localdomain.local\n"
        .to_string()
}

#[test]
fn generic_maps_rewrite_the_outgoing_copy_not_the_queue_file() {
    // busy@ is deferred, so the message stays queued and its file can be
    // compared with what the server got.
    let srv = Scripted::start(
        &ScriptedConfig::new().rcpt_for("busy@remote.test", "451 4.2.1 mailbox busy"),
    );
    let inst = relaying("generic", &srv.relayhost(), GENERIC);
    inst.send(
        &[
            "-f",
            "alice@localdomain.local",
            "bob@remote.test",
            "busy@remote.test",
        ],
        &generic_message(),
    );
    inst.kick();
    // The log names the queue's recipient, as Postfix's does.
    inst.wait_log(r"to=<bob@remote\.test>,.*status=sent");
    inst.wait_log(r"to=<busy@remote\.test>,.*status=deferred");
    let t = srv.wait_transactions(1);
    assert_eq!(t[0].mail_from, "alice@isp.example");
    let rcpts: Vec<&str> = t[0].rcpts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["robert@remote.test", "busy@remote.test"]);
    let got = without_received(&t[0].text());
    assert!(
        got.contains("\nFrom: Alice <alice@isp.example>\n")
            || got.starts_with("From: Alice <alice@isp.example>\n"),
        "{got}"
    );
    assert!(
        got.contains("\nTo: robert@remote.test, busy@remote.test\n"),
        "{got}"
    );
    assert!(got.contains("\nCc: dave@isp.example\n"), "{got}");
    assert!(
        got.contains("\nReply-To: \"Alice A.\" <alice+list@isp.example>\n"),
        "{got}"
    );
    // Not address headers, not the body.
    assert!(
        got.contains("\nSubject: mail from alice@localdomain.local\n"),
        "{got}"
    );
    assert!(
        got.contains("\nMessage-Id: <m1@localdomain.local>\n"),
        "{got}"
    );
    assert!(
        got.ends_with("\n\nwritten by alice@localdomain.local\r\n")
            || got.ends_with("\n\nwritten by alice@localdomain.local\n"),
        "{got}"
    );
    // The queue file still has the original addresses.
    common::wait_for(30, "the message in deferred/", || {
        !inst.queue_files("deferred").is_empty()
    });
    let (sender, text) = queued_copy(&inst.queue_files("deferred")[0]);
    assert_eq!(sender, "alice@localdomain.local");
    assert!(
        text.contains("From: Alice <alice@localdomain.local>\n"),
        "{text}"
    );
    assert!(
        text.contains("To: bob@remote.test, busy@remote.test\n"),
        "{text}"
    );
}

/// A Postfix whose smtp client relays everything to `to` with `extra`
/// main.cf lines, and a submission of `message` to it.
fn through_postfix(
    to: &Scripted,
    extra: &str,
    from: &str,
    rcpts: &[&str],
    message: &str,
) -> Option<PostfixRelay> {
    let relay = PostfixRelay::start(RelayOptions {
        main_cf: format!(
            "relayhost = {}\ndefault_transport = smtp\nrelay_transport = smtp\n{extra}",
            to.relayhost()
        ),
        ..Default::default()
    })?;
    let mut c = common::smtp::Raw::connect(relay.port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    let m = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(m.starts_with("250"), "{m}");
    for r in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let mut data = message.replace('\n', "\r\n");
    data.push_str(".\r\n");
    c.send(&data);
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    Some(relay)
}

#[test]
fn generic_maps_match_postfix_s_smtp_client() {
    let pf_srv = Scripted::start(
        &ScriptedConfig::new().rcpt_for("busy@remote.test", "451 4.2.1 mailbox busy"),
    );
    let Some(_relay) = through_postfix(
        &pf_srv,
        GENERIC,
        "alice@localdomain.local",
        &["bob@remote.test", "busy@remote.test"],
        &generic_message(),
    ) else {
        eprintln!("skipped: a real Postfix instance needs root");
        return;
    };
    let srv = Scripted::start(
        &ScriptedConfig::new().rcpt_for("busy@remote.test", "451 4.2.1 mailbox busy"),
    );
    let inst = relaying("generic-diff", &srv.relayhost(), GENERIC);
    inst.send(
        &[
            "-f",
            "alice@localdomain.local",
            "bob@remote.test",
            "busy@remote.test",
        ],
        &generic_message(),
    );
    inst.kick();
    let pf = &pf_srv.wait_transactions(1)[0];
    let ours = &srv.wait_transactions(1)[0];
    assert_eq!(ours.mail_from, pf.mail_from);
    let addrs = |t: &common::peers::Transaction| {
        t.rcpts
            .iter()
            .map(|r| r.address.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(ours), addrs(pf));
    assert_eq!(without_received(&ours.text()), without_received(&pf.text()));
}

const CHECKS: &str = "smtp_header_checks = regexp:{ {/^X-Internal:/ IGNORE}, \
     {/^Subject: secret/ REPLACE Subject: [redacted]}, {/^From:/ WARN from seen}, \
     {/^To:/ REJECT not here}, {/^X-Loud:/ INFO}, {/^Content-Type:/ IGNORE} }\n\
     smtp_mime_header_checks = regexp:{ {/^Content-Type:/ PREPEND X-Mime-Seen: yes} }\n\
     smtp_body_checks = regexp:{ {/^password:/ REPLACE password: ***}, \
     {/^-- $$/ PREPEND --- signature follows}, {/^drop this/ IGNORE} }";

fn checks_message() -> String {
    "From: alice@example.test\nTo: bob@remote.test\nSubject: secret plans for a very long subject line that goes on and on\n\
     X-Internal: yes\nX-Loud: hello\nMIME-Version: 1.0\nContent-Type: text/plain\n\
     Message-Id: <m2@example.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n\
     hello\npassword: hunter2\ndrop this line\n-- \nAlice\n"
        .to_string()
}

#[test]
fn header_and_body_checks_on_the_way_out() {
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying("checks", &srv.relayhost(), CHECKS);
    send(&inst, &["bob@remote.test"], &checks_message());
    let line = inst.wait_log(r"smtp\[\d+\]: ([0-9A-F]+): to=<bob@remote\.test>.*status=sent");
    let id = common::logged_id(&line);
    let got = without_received(&srv.wait_transactions(1)[0].text()).replace("\r\n", "\n");
    assert_eq!(
        got,
        "From: alice@example.test\nTo: bob@remote.test\nSubject: [redacted]\nX-Loud: hello\n\
         MIME-Version: 1.0\nX-Mime-Seen: yes\nContent-Type: text/plain\n\
         Message-Id: <m2@example.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n\
         hello\npassword: ***\n--- signature follows\n-- \nAlice\n"
    );
    // Postfix's log lines: the content cut at 60 characters.
    let log = inst.log_text();
    for want in [
        format!("{id}: warning: header From: alice@example.test: from seen"),
        format!("{id}: replace: header Subject: secret plans for a very long subject line that goes: Subject: [redacted]"),
        format!("{id}: info: header X-Loud: hello"),
        format!("{id}: prepend: header Content-Type: text/plain: X-Mime-Seen: yes"),
        format!("{id}: replace: body password: hunter2: password: ***"),
        "warning: unsupported command in smtp_header_checks map: REJECT not here".to_string(),
    ] {
        assert!(log.lines().any(|l| l.ends_with(&want)), "no line ending in {want:?}:\n{log}");
    }
}

#[test]
fn header_and_body_checks_match_postfix_s_smtp_client() {
    let pf_srv = Scripted::start(&ScriptedConfig::new());
    let Some(relay) = through_postfix(
        &pf_srv,
        CHECKS,
        "alice@example.test",
        &["bob@remote.test"],
        &checks_message(),
    ) else {
        eprintln!("skipped: a real Postfix instance needs root");
        return;
    };
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying("checks-diff", &srv.relayhost(), CHECKS);
    send(&inst, &["bob@remote.test"], &checks_message());
    let pf = pf_srv.wait_transactions(1);
    let ours = srv.wait_transactions(1);
    assert_eq!(
        without_received(&ours[0].text()),
        without_received(&pf[0].text())
    );
    // The same log lines, after the program name and queue ID.
    relay.wait_log(r"postfix/smtp\[\d+\]: .*status=sent");
    inst.wait_log(r"smtp\[\d+\]: .*status=sent");
    let actions = |log: String| -> Vec<String> {
        let re = regex::Regex::new(
            r"smtp\[\d+\]: (?:[0-9A-F]+: )?((?:warning|info|replace|prepend): (?:header|body) .*|warning: unsupported .*)$",
        )
        .unwrap();
        let mut v: Vec<String> = log
            .lines()
            .filter_map(|l| re.captures(l).map(|c| c[1].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(actions(inst.log_text()), actions(relay.log_text()));
}

#[test]
fn fallback_relay_takes_what_the_destination_could_not() {
    // The next hop refuses connections: the fall-back relay gets the mail.
    let dead = common::free_port();
    let fb = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "fallback",
        &format!("[127.0.0.1]:{dead}"),
        &format!("smtp_fallback_relay = {}", fb.relayhost()),
    );
    send(&inst, &["bob@remote.test"], &msg("via fallback"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    assert!(
        line.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}, ", fb.port())),
        "{line}"
    );
    inst.wait_log(&format!(
        r"smtp\[\d+\]: connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused$"
    ));
    assert_eq!(fb.wait_transactions(1)[0].accepted(), ["bob@remote.test"]);
}

#[test]
fn fallback_relay_gets_4xx_recipients_only_and_fallback_relay_is_its_old_name() {
    // The next hop takes one recipient, refuses one for good and one for
    // now: only the last goes on to the fall-back relay (set with the
    // Postfix 2.2 name fallback_relay, which smtp_fallback_relay defaults to).
    let primary = Scripted::start(
        &ScriptedConfig::new()
            .rcpt_for(
                "gone@remote.test",
                "550 5.1.1 <gone@remote.test>: no such user",
            )
            .rcpt_for("busy@remote.test", "451 4.2.1 mailbox busy"),
    );
    let fb = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "fallback-4xx",
        &primary.relayhost(),
        &format!("fallback_relay = {}", fb.relayhost()),
    );
    send(
        &inst,
        &["ok@remote.test", "gone@remote.test", "busy@remote.test"],
        &msg("three ways"),
    );
    let ok = inst.wait_log(r"to=<ok@remote\.test>.*status=sent");
    assert!(ok.contains(&format!(":{}, ", primary.port())), "{ok}");
    inst.wait_log(r"to=<gone@remote\.test>.*status=bounced");
    let busy = inst.wait_log(r"to=<busy@remote\.test>.*status=sent");
    assert!(busy.contains(&format!(":{}, ", fb.port())), "{busy}");
    assert_eq!(fb.wait_transactions(1)[0].accepted(), ["busy@remote.test"]);
    assert_eq!(
        primary.wait_transactions(1)[0].accepted(),
        ["ok@remote.test"]
    );
}

#[test]
fn a_dead_fallback_relay_defers_with_its_own_reason() {
    let dead = common::free_port();
    let dead_fb = common::free_port();
    let inst = relaying(
        "fallback-dead",
        &format!("[127.0.0.1]:{dead}"),
        &format!("smtp_fallback_relay = [127.0.0.1]:{dead_fb}"),
    );
    send(&inst, &["bob@remote.test"], &msg("nowhere"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    // The last error is the one reported, as in Postfix.
    assert!(
        line.contains("relay=none, delay=")
            && line.contains(&format!(
                "dsn=4.4.1, status=deferred (connect to 127.0.0.1[127.0.0.1]:{dead_fb}: Connection refused)"
            )),
        "{line}"
    );
    inst.wait_log(&format!(
        r"connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused$"
    ));
}

/// Facteur's own smtpd takes a message from a client that says
/// `EHLO client.example`; its smtp client relays it on.
fn relay_from_smtpd(tag: &str, relayhost: &str, extra: &str) -> Instance {
    let mut inst = Instance::new(tag, "");
    let port = inst.with_smtpd();
    inst.main_cf(&format!(
        "relayhost = {relayhost}\nrelay_domains = remote.test\nrelay_transport = smtp\n{extra}"
    ));
    inst.start();
    let mut c = common::smtp::Raw::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@remote.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send("Subject: forwarded\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    inst
}

#[test]
fn xforward_passes_the_original_client_on_before_mail() {
    let srv = Scripted::start(&ScriptedConfig::new().extension("XFORWARD", true));
    let inst = relay_from_smtpd(
        "xforward",
        &srv.relayhost(),
        "smtp_send_xforward_command = yes\nsmtp_bind_address = 127.0.0.5",
    );
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    let t = srv.wait_transactions(1);
    let xf = &t[0].json["xforward"];
    assert_eq!(xf["ADDR"], "127.0.0.1", "{xf}");
    assert_eq!(xf["HELO"], "client.example", "{xf}");
    assert_eq!(xf["PROTO"], "ESMTP", "{xf}");
    assert_eq!(xf["SOURCE"], "REMOTE", "{xf}");
    assert!(
        xf["PORT"]
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok()),
        "{xf}"
    );
    // NAME only when the client had a name: never "unknown".
    assert_ne!(xf["NAME"], "unknown", "{xf}");
    // Before MAIL, pipelined with it.
    let s = srv.wait_sessions(1);
    let cmds = s[0].commands();
    let first_mail = cmds.iter().position(|c| c.starts_with("MAIL")).unwrap();
    assert!(
        cmds[..first_mail]
            .iter()
            .filter(|c| c.starts_with("XFORWARD "))
            .count()
            == 2,
        "{cmds:?}"
    );
    assert!(
        s[0].pipelined.iter().any(|c| c.starts_with("XFORWARD ")),
        "{:?}",
        s[0].pipelined
    );
}

#[test]
fn xforward_only_when_configured_and_local_mail_says_local() {
    // Announced but not configured: nothing sent.
    let srv = Scripted::start(&ScriptedConfig::new().extension("XFORWARD", true));
    let inst = relay_from_smtpd("xforward-off", &srv.relayhost(), "");
    inst.wait_log(r"to=<bob@remote\.test>.*status=sent");
    srv.wait_transactions(1);
    let s = srv.wait_sessions(1);
    assert!(
        !s[0].commands().iter().any(|c| c.starts_with("XFORWARD")),
        "{:?}",
        s[0].commands()
    );
    // Local submission, a server that refuses XFORWARD: logged, sent anyway.
    let srv2 = Scripted::start(
        &ScriptedConfig::new()
            .extension("XFORWARD-REFUSE", true)
            .extension("PIPELINING", false),
    );
    let inst2 = relaying(
        "xforward-local",
        &srv2.relayhost(),
        "smtp_send_xforward_command = yes",
    );
    send(&inst2, &["bob@remote.test"], &msg("local"));
    inst2.wait_log(r"to=<bob@remote\.test>.*status=sent");
    let s = srv2.wait_sessions(1);
    assert!(
        s[0].commands().iter().any(|c| c == "XFORWARD SOURCE=LOCAL"),
        "{:?}",
        s[0].commands()
    );
    inst2.wait_log(r"smtp\[\d+\]: warning: host 127\.0\.0\.1\[127\.0\.0\.1\]:\d+ said: 550 5\.7\.0 Error: insufficient authorization \(in reply to XFORWARD helo/protocol command\)$");
}

#[test]
fn xforward_to_a_real_postfix_logs_the_original_client() {
    let Some(relay) = PostfixRelay::start(RelayOptions {
        main_cf: "smtpd_authorized_xforward_hosts = 127.0.0.0/8\n".into(),
        ..Default::default()
    }) else {
        eprintln!("skipped: a real Postfix instance needs root");
        return;
    };
    let _inst = relay_from_smtpd(
        "xforward-postfix",
        &relay.relayhost(),
        "smtp_send_xforward_command = yes\nsmtp_bind_address = 127.0.0.5",
    );
    let got = relay.wait_messages_for("bob@remote.test", 1);
    // Postfix's Received: names the original client and its HELO, not
    // the relaying smtp client (127.0.0.5, out of mx.example.test).
    assert!(got[0].contains("from client.example ("), "{}", got[0]);
    assert!(got[0].contains(" [127.0.0.1])"), "{}", got[0]);
    // Its smtpd logs the relaying client and the original one.
    relay.wait_log(
        r"postfix/smtpd\[\d+\]: [0-9A-F]+: client=[^\[]*\[127\.0\.0\.5\], orig_client=[^\[ ]+\[127\.0\.0\.1\]$",
    );
    relay.wait_log(r"postfix/smtpd\[\d+\]: disconnect from .* xforward=2 mail=1 ");
}

#[test]
fn lmtp_assume_final_reports_delivered_not_relayed() {
    for assume in [false, true] {
        let srv = Scripted::start_unix(&ScriptedConfig::new().lmtp().extension("DSN", false));
        let tag = if assume { "lmtp-final" } else { "lmtp-relayed" };
        let mut inst = Instance::new(tag, "");
        inst.main_cf(&format!(
            "virtual_mailbox_domains = lmtp.test\nvirtual_transport = lmtp:unix:{}\nlmtp_assume_final = {}\n",
            srv.socket().display(),
            if assume { "yes" } else { "no" }
        ));
        inst.start();
        let me = common::user();
        inst.send(
            &[
                "-f",
                &format!("{me}@mx.example.test"),
                "-N",
                "success",
                "u@lmtp.test",
            ],
            &msg("final?"),
        );
        inst.kick();
        inst.wait_log(r"lmtp\[\d+\]: [0-9A-F]+: to=<u@lmtp\.test>.*status=sent");
        let got = inst.wait_maildir(&inst.user_maildir(), 1);
        let want = if assume {
            "Action: delivered"
        } else {
            "Action: relayed"
        };
        assert!(got[0].contains(want), "{}", got[0]);
        assert_eq!(srv.wait_transactions(1)[0].protocol, "LMTP");
    }
}

#[test]
fn a_failing_check_table_aborts_the_transaction_before_the_dot() {
    // Every header lookup fails: the message is not finished (the server
    // throws it away) and the recipient is deferred, as in Postfix.
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "checks-fail",
        &srv.relayhost(),
        "smtp_header_checks = fail:broken",
    );
    send(&inst, &["bob@remote.test"], &msg("not finished"));
    let line = inst.wait_log(r"smtp\[\d+\]: ([0-9A-F]+): to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains(
            "dsn=4.3.0, status=deferred (local data error while talking to 127.0.0.1[127.0.0.1])"
        ),
        "{line}"
    );
    let id = common::logged_id(&line);
    inst.wait_log(&format!(
        r"smtp\[\d+\]: warning: {id}: smtp header checks lookup error"
    ));
    let t = srv.wait_transactions(1);
    assert!(!t[0].complete, "the final dot was never sent");
    assert_eq!(t[0].end, "disconnect");
    // No QUIT inside the unfinished message either.
    assert!(!t[0].text().contains("QUIT"), "{}", t[0].text());
}

#[test]
fn a_failing_generic_table_defers_before_any_connection() {
    let srv = Scripted::start(&ScriptedConfig::new());
    let inst = relaying(
        "generic-fail",
        &srv.relayhost(),
        "smtp_generic_maps = fail:broken",
    );
    send(&inst, &["bob@remote.test"], &msg("unmapped"));
    let line = inst.wait_log(r"to=<bob@remote\.test>.*status=deferred");
    assert!(
        line.contains("relay=none, ")
            && line.contains(
                "dsn=4.3.0, status=deferred (smtp_generic_maps map lookup problem for alice@example.test)"
            ),
        "{line}"
    );
    common::wait_for(30, "the message in deferred/", || {
        !inst.queue_files("deferred").is_empty()
    });
    assert!(srv.sessions().is_empty(), "nothing was sent");
}
