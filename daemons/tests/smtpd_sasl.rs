//! SMTP AUTH end to end: smtpd asks a real Dovecot (the fixture of
//! `../shared/fixtures/dovecot/`) through its auth socket, and swaks
//! authenticates with PLAIN and LOGIN. A stranger may relay only once
//! authenticated (`permit_sasl_authenticated`), and the log and the
//! Received: header say who it was.

mod common;

#[path = "../../libmail/tests/support/dovecot.rs"]
mod fixture;

use common::Instance;
use fixture::Fixture;

fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--from", "alice@example.test"];
    all.extend_from_slice(args);
    common::smtp::swaks(port, &all)
}

#[test]
fn authenticated_clients_relay_strangers_do_not() {
    let dovecot = Fixture::start("smtpd");
    let mut i = Instance::new("smtpd-sasl", "");
    let port = i.with_smtpd();
    i.main_cf(&format!(
        "mynetworks = 192.0.2.0/24\n\
         smtpd_sasl_auth_enable = yes\n\
         smtpd_sasl_type = dovecot\n\
         smtpd_sasl_path = {}\n\
         smtpd_sasl_authenticated_header = yes\n\
         smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination",
        dovecot.auth_socket.display()
    ));
    i.start();
    // Not authenticated: no relaying.
    let (ok, out) = swaks(port, &["--to", "bob@elsewhere.example"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("<** 554 5.7.1 <bob@elsewhere.example>: Relay access denied"),
        "{out}"
    );
    assert!(out.contains("<-  250-AUTH PLAIN LOGIN"), "{out}");
    // A wrong password: 535, and no relaying.
    let (ok, out) = swaks(
        port,
        &[
            "--to",
            "bob@elsewhere.example",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "wrong",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("<** 535 5.7.8 Error: authentication failed:"),
        "{out}"
    );
    // PLAIN (alice, stored in plain text) and LOGIN (bob, SHA512-CRYPT).
    for (mech, user, pw) in [
        ("PLAIN", "alice@example.test", "alicepw"),
        ("LOGIN", "bob@example.test", "bobpw"),
    ] {
        let (ok, out) = swaks(
            port,
            &[
                "--to",
                "carol@elsewhere.example",
                "--auth",
                mech,
                "--auth-user",
                user,
                "--auth-password",
                pw,
            ],
        );
        assert!(ok, "{mech}: {out}");
        assert!(
            out.contains("<-  235 2.7.0 Authentication successful"),
            "{out}"
        );
        assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
        i.wait_log(&format!(
            r"postfix/smtpd\[\d+\]: [0-9A-F]+: client=\S+\[127\.0\.0\.1\], sasl_method={mech}, sasl_username={}$",
            regex::escape(user)
        ));
    }
    i.wait_log(r"warning: \S+\[127\.0\.0\.1\]: SASL PLAIN authentication failed");
    drop(dovecot);
}
