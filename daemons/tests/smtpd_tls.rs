//! smtpd's TLS end to end: STARTTLS and wrapper mode with a self-signed
//! certificate made by the openssl CLI, real clients (swaks, and a rustls
//! client written here for what swaks cannot do: pipelining plaintext
//! behind STARTTLS).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::smtp::swaks;
use common::{user, Instance};

/// A self-signed certificate and its key for mx.example.test, in the
/// instance directory: (cert, key).
fn make_cert(i: &Instance) -> (String, String) {
    let cert = i.top.join("cert.pem");
    let key = i.top.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=mx.example.test", "-days", "1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

fn tls_instance(tag: &str, extra: &str) -> (Instance, u16) {
    let mut i = Instance::new(tag, "");
    let port = i.with_smtpd();
    let (cert, key) = make_cert(&i);
    i.main_cf(&format!(
        "smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n\
         smtpd_tls_loglevel = 1\n{extra}"
    ));
    (i, port)
}

/// Replies read line by line from any stream.
fn reply<R: BufRead>(r: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// A plaintext client.
struct Plain {
    r: BufReader<TcpStream>,
}

impl Plain {
    fn connect(port: u16) -> Plain {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut p = Plain {
            r: BufReader::new(s),
        };
        let g = reply(&mut p.r);
        assert!(g.starts_with("220 "), "{g}");
        p
    }

    fn send(&mut self, bytes: &str) {
        self.r.get_mut().write_all(bytes.as_bytes()).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        reply(&mut self.r)
    }

    /// The TLS handshake on this connection; the reader must hold no
    /// buffered bytes (the server sent nothing after its 220).
    fn into_tls(self) -> Tls {
        assert!(self.r.buffer().is_empty(), "bytes after the 220");
        let tcp = self.r.into_inner();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
        let conn =
            rustls::ClientConnection::new(Arc::new(config), "mx.example.test".try_into().unwrap())
                .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .expect("the TLS handshake completes");
        }
        Tls {
            r: BufReader::new(s),
        }
    }
}

/// A client over TLS.
struct Tls {
    r: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Tls {
    fn cmd(&mut self, line: &str) -> String {
        let w = self.r.get_mut();
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        w.flush().unwrap();
        reply(&mut self.r)
    }

    fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.r.get_ref().conn.protocol_version()
    }
}

/// Takes the self-signed test certificate (the handshake signatures are
/// still checked).
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn swaks_starttls_delivers_with_esmtps_and_logs_the_tls_line() {
    let (mut i, port) = tls_instance(
        "smtpd-tls-swaks",
        "smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes",
    );
    i.start();
    let me = user();
    let (ok, out) = swaks(
        port,
        &[
            "--tls",
            "--ehlo",
            "client.example",
            "--from",
            "alice@example.org",
            "--to",
            &format!("{me}@mx.example.test"),
            "--body",
            "hello over TLS",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("<-  220 2.0.0 Ready to start TLS"), "{out}");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    let m = &got[0];
    assert!(m.contains("hello over TLS"), "{m}");
    assert!(
        regex::Regex::new(
            r"\nReceived: from client\.example \(\S+ \[127\.0\.0\.1\]\)\n\t\(using TLSv1\.3 with cipher TLS_\S+ \((256/256|128/128) bits\)\n\t key-exchange \S+\)\n\t\(No client certificate requested\)\n\tby mx\.example\.test \(Postfix\) with ESMTPS id "
        )
        .unwrap()
        .is_match(m),
        "{m}"
    );
    i.wait_log(
        r"postfix/smtpd\[\d+\]: Anonymous TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3 with cipher TLS_\S+ \(\d+/\d+ bits\)",
    );
    i.wait_log(r"disconnect from \S+\[127\.0\.0\.1\] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7$");
}

#[test]
fn starttls_is_listed_before_the_handshake_and_not_after() {
    let (mut i, port) = tls_instance("smtpd-tls-ehlo", "smtpd_tls_security_level = may");
    i.start();
    let mut c = Plain::connect(port);
    let before = c.cmd("EHLO client.example");
    assert!(before.contains("250-ETRN\r\n250-STARTTLS\r\n"), "{before}");
    assert_eq!(c.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    let mut t = c.into_tls();
    assert_eq!(t.version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let after = t.cmd("EHLO client.example");
    assert!(after.starts_with("250-mx.example.test\r\n"), "{after}");
    assert!(!after.contains("STARTTLS"), "{after}");
    assert_eq!(t.cmd("STARTTLS"), "554 5.5.1 Error: TLS already active\r\n");
    assert_eq!(t.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn encrypt_level_refuses_mail_before_starttls() {
    let (mut i, port) = tls_instance("smtpd-tls-encrypt", "smtpd_tls_security_level = encrypt");
    i.start();
    let mut c = Plain::connect(port);
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.org>"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(c.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    let mut t = c.into_tls();
    t.cmd("EHLO client.example");
    assert_eq!(t.cmd("MAIL FROM:<a@example.org>"), "250 2.1.0 Ok\r\n");
    assert_eq!(t.cmd("QUIT"), "221 2.0.0 Bye\r\n");
}

#[test]
fn plaintext_pipelined_after_starttls_is_never_executed() {
    let (mut i, port) = tls_instance("smtpd-tls-inject", "smtpd_tls_security_level = may");
    i.start();
    let mut c = Plain::connect(port);
    c.cmd("EHLO client.example");
    // One write: STARTTLS and a command an attacker on the path appended.
    c.send("STARTTLS\r\nRSET\r\n");
    assert_eq!(reply(&mut c.r), "220 2.0.0 Ready to start TLS\r\n");
    // Had the RSET been answered in plaintext, its reply would sit in
    // front of the server's handshake and the handshake would fail.
    let mut t = c.into_tls();
    // The first reply over TLS is the EHLO's, not a leftover RSET's.
    let ehlo = t.cmd("EHLO client.example");
    assert!(ehlo.starts_with("250-mx.example.test\r\n"), "{ehlo}");
    assert_eq!(t.cmd("NOOP"), "250 2.0.0 Ok\r\n");
    assert_eq!(t.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    // No rset in the command counts: it was dropped, not executed.
    i.wait_log(r"disconnect from \S+\[127\.0\.0\.1\] ehlo=2 starttls=1 noop=1 quit=1 commands=5$");
    assert!(!i.log_text().contains("rset="), "{}", i.log_text());
}

#[test]
fn wrappermode_port_delivers_with_swaks_tlsc_and_a_chain_file() {
    let mut i = Instance::new("smtpd-tls-wrapper", "");
    let (cert, key) = make_cert(&i);
    // smtpd_tls_chain_files: the key, then its certificate, in one file.
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(&key).unwrap(),
        std::fs::read_to_string(&cert).unwrap()
    );
    let chain_path = i.file("chain.pem", &chain);
    i.main_cf(&format!(
        "smtpd_tls_chain_files = {}\nsmtpd_tls_loglevel = 1",
        chain_path.display()
    ));
    let port = common::free_port();
    let master_cf = Path::new(&i.etc).join("master.cf");
    let mut text = std::fs::read_to_string(&master_cf).unwrap();
    text.push_str(&format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n"
    ));
    std::fs::write(&master_cf, text).unwrap();
    i.start();
    let me = user();
    let (ok, out) = swaks(
        port,
        &[
            "--tlsc",
            "--ehlo",
            "client.example",
            "--from",
            "alice@example.org",
            "--to",
            &format!("{me}@mx.example.test"),
            "--body",
            "hello over implicit TLS",
        ],
    );
    assert!(ok, "{out}");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("hello over implicit TLS"), "{}", got[0]);
    assert!(got[0].contains(") with ESMTPS id "), "{}", got[0]);
    // No STARTTLS in wrapper mode: TLS is already on.
    assert!(!out.contains("250-STARTTLS"), "{out}");
    i.wait_log(r"Anonymous TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3");
}

#[test]
fn without_a_certificate_starttls_is_not_offered_and_is_refused_with_454() {
    let mut i = Instance::new("smtpd-tls-nocert", "smtpd_tls_security_level = may");
    let port = i.with_smtpd();
    i.start();
    let mut c = Plain::connect(port);
    let ehlo = c.cmd("EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(
        c.cmd("STARTTLS"),
        "454 4.7.0 TLS not available due to local problem\r\n"
    );
    i.wait_log(r"postfix/smtpd\[\d+\]: warning: No server certs available\. TLS won't be enabled$");
}

#[test]
fn a_failed_handshake_is_logged_and_ends_the_session() {
    let (mut i, port) = tls_instance("smtpd-tls-fail", "smtpd_tls_security_level = may");
    i.start();
    let mut c = Plain::connect(port);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS\r\n");
    // Not a TLS ClientHello.
    c.send("EHLO again.example\r\n");
    let mut rest = Vec::new();
    let _ = c.r.read_to_end(&mut rest);
    i.wait_log(r"postfix/smtpd\[\d+\]: SSL_accept error from \S+\[127\.0\.0\.1\]: ");
    i.wait_log(r"postfix/smtpd\[\d+\]: lost connection after STARTTLS from \S+\[127\.0\.0\.1\]$");
}
