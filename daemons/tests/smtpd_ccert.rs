//! smtpd's TLS client certificates end to end: a test CA made by the
//! openssl CLI signs one client certificate, another is self-signed, and
//! swaks presents them (`--tls-cert`, `--tls-key`). Relay permission by
//! `permit_tls_clientcerts` (`relay_clientcerts`), `permit_tls_all_clientcerts`
//! (verified certificates only) and `check_ccert_access` results, with the
//! fingerprints computed by openssl itself.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::smtp::swaks;
use common::Instance;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test certificates, in the instance directory.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    /// `server` (for mx.example.test), `ca`, `signed` (client.example,
    /// by ca) and `self` (self-signed, rogue.example): NAME.pem, NAME.key.
    fn make(i: &Instance) -> Certs {
        let dir = i.top.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let selfsigned = |name: &str, cn: &str| {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        };
        selfsigned("server", "mx.example.test");
        selfsigned("ca", "Facteur Test CA");
        selfsigned("self", "rogue.example");
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=client.example",
                "-keyout",
                "signed.key",
                "-out",
                "signed.csr",
            ],
        );
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "signed.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "client.ext",
                "-out",
                "signed.pem",
            ],
        );
        Certs { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    /// The certificate's SHA-256 fingerprint as openssl prints it
    /// (`AB:CD:...`).
    fn fingerprint(&self, name: &str) -> String {
        let out = openssl(
            &self.dir,
            &[
                "x509",
                "-in",
                &format!("{name}.pem"),
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        out.trim().split_once('=').unwrap().1.to_string()
    }

    /// The SHA-256 fingerprint of the DER public key, upper-case and
    /// colon-separated.
    fn pkey_fingerprint(&self, name: &str) -> String {
        openssl(
            &self.dir,
            &[
                "x509",
                "-in",
                &format!("{name}.pem"),
                "-noout",
                "-pubkey",
                "-out",
                "pub.pem",
            ],
        );
        openssl(
            &self.dir,
            &[
                "pkey", "-pubin", "-in", "pub.pem", "-outform", "DER", "-out", "pub.der",
            ],
        );
        let out = openssl(&self.dir, &["dgst", "-sha256", "-c", "pub.der"]);
        out.trim().rsplit_once(' ').unwrap().1.to_ascii_uppercase()
    }
}

/// An instance asking for client certificates, trusting the test CA.
fn instance(tag: &str, extra: impl FnOnce(&Certs) -> String) -> (Instance, u16, Certs) {
    instance_at(tag, "may", extra)
}

/// [`instance`] at a `smtpd_tls_security_level`.
fn instance_at(
    tag: &str,
    level: &str,
    extra: impl FnOnce(&Certs) -> String,
) -> (Instance, u16, Certs) {
    let mut i = Instance::new(tag, "");
    let port = i.with_smtpd();
    let c = Certs::make(&i);
    i.main_cf(&format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
         smtpd_tls_ask_ccert = yes\n\
         smtpd_tls_CAfile = {}\nsmtpd_tls_loglevel = 1\n\
         smtpd_tls_security_level = {level}\n{}",
        c.path("server.pem"),
        c.path("server.key"),
        c.path("ca.pem"),
        extra(&c)
    ));
    i.start();
    (i, port, c)
}

/// RCPT to a remote domain over STARTTLS with `cert` (`signed`, `self`)
/// or no certificate; swaks's transcript.
fn relay(port: u16, c: &Certs, cert: Option<&str>) -> String {
    let mut args = vec![
        "--tls".to_string(),
        "--ehlo".into(),
        "client.example".into(),
        "--from".into(),
        "alice@example.org".into(),
        "--to".into(),
        "bob@elsewhere.example".into(),
        "--quit-after".into(),
        "RCPT".into(),
    ];
    if let Some(name) = cert {
        args.extend([
            "--tls-cert".into(),
            c.path(&format!("{name}.pem")),
            "--tls-key".into(),
            c.path(&format!("{name}.key")),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, out) = swaks(port, &args);
    assert!(out.contains("<-  220 2.0.0 Ready to start TLS"), "{out}");
    out
}

const PERMITTED: &str = "<~  250 2.1.5 Ok";
const DENIED: &str = "454 4.7.1 <bob@elsewhere.example>: Relay access denied";

#[test]
fn permit_tls_clientcerts_relays_only_for_a_listed_fingerprint() {
    let (i, port, c) = instance("smtpd-ccert-relay", |c| {
        std::fs::write(
            c.dir.join("relay_clientcerts"),
            format!("{} self-signed but listed\n", c.fingerprint("self")),
        )
        .unwrap();
        format!(
            "relay_clientcerts = texthash:{}\n\
             smtpd_relay_restrictions = permit_tls_clientcerts, defer_unauth_destination\n",
            c.path("relay_clientcerts")
        )
    });
    // Listed: permitted, though no CA vouches for it.
    let out = relay(port, &c, Some("self"));
    assert!(out.contains(PERMITTED), "{out}");
    // Another certificate (even a verified one) and no certificate.
    let out = relay(port, &c, Some("signed"));
    assert!(out.contains(DENIED), "{out}");
    let out = relay(port, &c, None);
    assert!(out.contains(DENIED), "{out}");
    // The log says which handshakes carried a trusted certificate.
    i.wait_log(r"Untrusted TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3");
    i.wait_log(r"Trusted TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3");
    i.wait_log(r"Anonymous TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3");
}

#[test]
fn permit_tls_all_clientcerts_relays_for_a_ca_signed_certificate_only() {
    let (_i, port, c) = instance("smtpd-ccert-all", |_| {
        "smtpd_relay_restrictions = permit_tls_all_clientcerts, defer_unauth_destination\n".into()
    });
    let out = relay(port, &c, Some("signed"));
    assert!(out.contains(PERMITTED), "{out}");
    let out = relay(port, &c, Some("self"));
    assert!(out.contains(DENIED), "{out}");
    let out = relay(port, &c, None);
    assert!(out.contains(DENIED), "{out}");
}

#[test]
fn check_ccert_access_rejects_and_permits_by_fingerprint_and_public_key() {
    let (_i, port, c) = instance("smtpd-ccert-access", |c| {
        std::fs::write(
            c.dir.join("ccert_access"),
            format!(
                "{} REJECT not this one\n{} OK\n",
                c.fingerprint("self"),
                c.pkey_fingerprint("signed")
            ),
        )
        .unwrap();
        format!(
            "smtpd_relay_restrictions = check_ccert_access texthash:{}, \
             defer_unauth_destination\n",
            c.path("ccert_access")
        )
    });
    let out = relay(port, &c, Some("self"));
    assert!(
        out.contains("554 5.7.1 <rogue.example>: Client certificate rejected: not this one"),
        "{out}"
    );
    // OK through the public key's fingerprint.
    let out = relay(port, &c, Some("signed"));
    assert!(out.contains(PERMITTED), "{out}");
    let out = relay(port, &c, None);
    assert!(out.contains(DENIED), "{out}");
}

#[test]
fn the_received_header_names_the_client_certificate() {
    let (i, port, c) = instance("smtpd-ccert-received", |_| {
        "smtpd_tls_received_header = yes\n".into()
    });
    let me = common::user();
    let to = format!("{me}@mx.example.test");
    for cert in ["signed", "self"] {
        let (ok, out) = swaks(
            port,
            &[
                "--tls",
                "--ehlo",
                "client.example",
                "--from",
                "alice@example.org",
                "--to",
                &to,
                "--body",
                cert,
                "--tls-cert",
                &c.path(&format!("{cert}.pem")),
                "--tls-key",
                &c.path(&format!("{cert}.key")),
            ],
        );
        assert!(ok, "{out}");
    }
    let got = i.wait_maildir(&i.user_maildir(), 2);
    let verified =
        "\t(Client CN \"client.example\", Issuer \"Facteur Test CA\" (verified OK))\n\tby ";
    let unverified =
        "\t(Client CN \"rogue.example\", Issuer \"rogue.example\" (not verified))\n\tby ";
    assert!(got.iter().any(|m| m.contains(verified)), "{got:?}");
    assert!(got.iter().any(|m| m.contains(unverified)), "{got:?}");
}

#[test]
fn req_ccert_under_encrypt_requires_a_trusted_certificate() {
    let (i, port, c) = instance_at("smtpd-ccert-req", "encrypt", |_| {
        "smtpd_tls_req_ccert = yes\n\
         smtpd_relay_restrictions = permit_tls_all_clientcerts, defer_unauth_destination\n"
            .into()
    });
    let out = relay(port, &c, Some("signed"));
    assert!(out.contains(PERMITTED), "{out}");
    // No certificate, or one no CA vouches for: the handshake fails.
    for cert in [None, Some("self")] {
        let out = relay(port, &c, cert);
        assert!(!out.contains("~> MAIL FROM"), "{out}");
    }
    i.wait_log(r"SSL_accept error from \S+\[127\.0\.0\.1\]");
}
