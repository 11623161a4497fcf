//! TLS for the SMTP server: a rustls [`ServerConfig`] built from
//! Postfix's `smtpd_tls_*` parameters, and the summary of a finished
//! handshake in Postfix's words (log line, `Received:` clause).
//!
//! How Postfix's OpenSSL settings map onto rustls:
//!
//! * Protocols: rustls speaks TLSv1.2 and TLSv1.3 only. A protocol list
//!   (`>=TLSv1`, `!SSLv2, !SSLv3`, `TLSv1.2 TLSv1.3`, `<=TLSv1.2`) selects
//!   from SSLv2 .. TLSv1.3 as Postfix does; the result is then cut to what
//!   rustls has. A list that leaves neither TLSv1.2 nor TLSv1.3 is an error.
//! * Cipher grades (`smtpd_tls_ciphers`, `smtpd_tls_mandatory_ciphers`):
//!   `export`, `low`, `medium` and `high` all give every rustls suite
//!   (each is an AEAD with ECDHE, i.e. OpenSSL's `HIGH`); `null` is an
//!   error (rustls has no unencrypted suites). `tls_*_cipherlist` are
//!   OpenSSL cipher strings and are not read. `smtpd_tls_exclude_ciphers`
//!   removes suites named by their OpenSSL or IANA name; OpenSSL classes
//!   (`aNULL`, `RC4`, `MD5`, ...) name nothing rustls has.
//! * Keys: `smtpd_tls_chain_files` (each file a private key followed by
//!   its certificate chain; several such groups, e.g. RSA and ECDSA, may
//!   follow each other) wins over `smtpd_tls_cert_file` +
//!   `smtpd_tls_key_file`. With several keys, the first one the client can
//!   verify is used.
//! * `smtpd_tls_ask_ccert`: a client certificate is requested, never
//!   required and not verified against a CA; its SHA-256 fingerprint is
//!   kept ([`Summary::peer_fingerprint`]) for fingerprint-based access.
//!
//! Every file is read with a size bound ([`MAX_PEM_BYTES`]).

/// The handshake-signature checks of a certificate verifier whose field
/// `.0` holds the provider's algorithms: the same for the server's
/// client-certificate verifier and the client's unverified level.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_schemes()
        }
    };
}
pub(crate) use signature_checks;

pub mod client;

use std::io::Read;
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, CommonState, DistinguishedName, ProtocolVersion, ServerConfig,
    SupportedCipherSuite,
};
use rustls_pki_types::pem::{PemObject, SectionKind};

use crate::config::params::{split_list, Params};

/// The most a certificate or key file may hold.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// `smtpd_tls_security_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    #[default]
    None,
    May,
    Encrypt,
}

pub(crate) fn val(p: &Params, name: &str) -> String {
    p.value(name).unwrap_or_default().trim().to_string()
}

pub(crate) fn yes(p: &Params, name: &str) -> bool {
    crate::config::check::parse_bool(&val(p, name)).unwrap_or(false)
}

impl Level {
    /// `smtpd_tls_security_level`; when empty, the legacy
    /// `smtpd_enforce_tls` (encrypt) and `smtpd_use_tls` (may).
    pub fn from_params(p: &Params) -> Result<Level, String> {
        let v = val(p, "smtpd_tls_security_level");
        match v.to_ascii_lowercase().as_str() {
            "" => Ok(if yes(p, "smtpd_enforce_tls") {
                Level::Encrypt
            } else if yes(p, "smtpd_use_tls") {
                Level::May
            } else {
                Level::None
            }),
            "none" => Ok(Level::None),
            "may" => Ok(Level::May),
            "encrypt" => Ok(Level::Encrypt),
            _ => Err(format!("invalid smtpd_tls_security_level value \"{v}\"")),
        }
    }
}

const PROTOCOLS: [&str; 6] = ["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];

/// A Postfix protocol list, as the rustls versions it leaves.
pub fn protocols(
    param: &str,
    spec: &str,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let index = |name: &str| {
        PROTOCOLS
            .iter()
            .position(|p| p.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("{param}: unknown TLS protocol \"{name}\""))
    };
    let mut allowed = [true; 6];
    let mut listed = [false; 6];
    let mut any_listed = false;
    for w in spec
        .split([',', ':', ' ', '\t', '\n'])
        .filter(|w| !w.is_empty())
    {
        if let Some(n) = w.strip_prefix(">=") {
            let i = index(n)?;
            allowed.iter_mut().take(i).for_each(|a| *a = false);
        } else if let Some(n) = w.strip_prefix("<=") {
            let i = index(n)?;
            allowed.iter_mut().skip(i + 1).for_each(|a| *a = false);
        } else if let Some(n) = w.strip_prefix('!') {
            allowed[index(n)?] = false;
        } else {
            listed[index(w)?] = true;
            any_listed = true;
        }
    }
    let mut out = Vec::new();
    if allowed[4] && (!any_listed || listed[4]) {
        out.push(&rustls::version::TLS12);
    }
    if allowed[5] && (!any_listed || listed[5]) {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(format!(
            "{param} = {spec} leaves no protocol this server has \
             (TLSv1.2 and TLSv1.3; SSLv2, SSLv3, TLSv1 and TLSv1.1 are not available)"
        ));
    }
    Ok(out)
}

/// OpenSSL's name of a suite, and its secret bits.
pub fn suite_name(s: CipherSuite) -> (String, u16) {
    use CipherSuite::*;
    let (n, b) = match s {
        TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => ("ECDHE-RSA-CHACHA20-POLY1305", 256),
        other => return (format!("{other:?}"), 0),
    };
    (n.to_string(), b)
}

/// The suites left by a cipher grade and an exclusion list.
pub(crate) fn suites(
    grade_param: &str,
    grade: &str,
    exclude: &str,
    all: &[SupportedCipherSuite],
) -> Result<Vec<SupportedCipherSuite>, String> {
    match grade.to_ascii_lowercase().as_str() {
        "" | "export" | "low" | "medium" | "high" => {}
        "null" => {
            return Err(format!(
                "{grade_param} = null: this server has no unencrypted cipher suites"
            ))
        }
        _ => return Err(format!("invalid {grade_param} value \"{grade}\"")),
    }
    let excluded: Vec<&str> = exclude
        .split([',', ':', ' ', '\t', '\n'])
        .filter(|w| !w.is_empty())
        .collect();
    let out: Vec<SupportedCipherSuite> = all
        .iter()
        .copied()
        .filter(|s| {
            let id = s.suite();
            let (openssl, _) = suite_name(id);
            let iana = format!("{id:?}");
            !excluded
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&openssl) || e.eq_ignore_ascii_case(&iana))
        })
        .collect();
    if out.is_empty() {
        return Err(format!("{grade_param}: every cipher suite is excluded"));
    }
    Ok(out)
}

fn read_bounded(param: &str, path: &str) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path)
        .map_err(|e| format!("{param}: cannot open file \"{path}\": {e}"))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{param}: cannot read file \"{path}\": {e}"))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{param}: file \"{path}\" is larger than {MAX_PEM_BYTES} bytes"
        ));
    }
    Ok(buf)
}

/// The PEM sections of a file, in order.
pub(crate) fn sections(param: &str, path: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    let bytes = read_bounded(param, path)?;
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param}: file \"{path}\": bad PEM: {e:?}"))
}

fn certified(
    param: &str,
    path: &str,
    key: PrivateKeyDer<'static>,
    certs: Vec<CertificateDer<'static>>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    if certs.is_empty() {
        return Err(format!(
            "{param}: file \"{path}\": no certificate follows the private key"
        ));
    }
    let ck = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("{param}: file \"{path}\": unusable key or certificate: {e}"))?;
    Ok(Arc::new(ck))
}

/// The server keys with their chains, as the parameters name them.
/// The keys and certificates of `PREFIX_tls_chain_files`, or of
/// `PREFIX_tls_cert_file` + `PREFIX_tls_key_file` (`prefix`: `smtpd` for
/// the server, `smtp`/`lmtp` for the clients' own certificates).
pub(crate) fn load_keys(
    p: &Params,
    provider: &CryptoProvider,
    prefix: &str,
) -> Result<Vec<Arc<CertifiedKey>>, String> {
    let chain_param = format!("{prefix}_tls_chain_files");
    let cert_param = format!("{prefix}_tls_cert_file");
    let key_param = format!("{prefix}_tls_key_file");
    let chain_files = val(p, &chain_param);
    let mut out = Vec::new();
    if !chain_files.is_empty() {
        let param = chain_param.as_str();
        for path in split_list(&chain_files) {
            let mut key: Option<PrivateKeyDer<'static>> = None;
            let mut certs = Vec::new();
            for (kind, der) in sections(param, path)? {
                match kind {
                    SectionKind::Certificate => {
                        if key.is_none() {
                            return Err(format!(
                                "{param}: file \"{path}\": a certificate comes before its private key"
                            ));
                        }
                        certs.push(CertificateDer::from(der));
                    }
                    SectionKind::PrivateKey
                    | SectionKind::RsaPrivateKey
                    | SectionKind::EcPrivateKey => {
                        let k = PrivateKeyDer::from_pem(kind, der).ok_or_else(|| {
                            format!("{param}: file \"{path}\": unusable private key")
                        })?;
                        if let Some(prev) = key.replace(k) {
                            out.push(certified(
                                param,
                                path,
                                prev,
                                std::mem::take(&mut certs),
                                provider,
                            )?);
                        }
                    }
                    _ => {}
                }
            }
            match key {
                Some(k) => out.push(certified(param, path, k, certs, provider)?),
                None => return Err(format!("{param}: file \"{path}\": no private key")),
            }
        }
        return Ok(out);
    }
    let cert_file = val(p, &cert_param);
    if cert_file.is_empty() {
        return Ok(out);
    }
    let key_file = {
        let k = val(p, &key_param);
        if k.is_empty() {
            cert_file.clone()
        } else {
            k
        }
    };
    let certs: Vec<CertificateDer<'static>> = sections(&cert_param, &cert_file)?
        .into_iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, d)| CertificateDer::from(d))
        .collect();
    if certs.is_empty() {
        return Err(format!(
            "{cert_param}: file \"{cert_file}\": no certificate"
        ));
    }
    let key = sections(&key_param, &key_file)?
        .into_iter()
        .find_map(|(k, d)| PrivateKeyDer::from_pem(k, d))
        .ok_or_else(|| format!("{key_param}: file \"{key_file}\": no private key"))?;
    out.push(certified(&cert_param, &cert_file, key, certs, provider)?);
    Ok(out)
}

/// Several keys (RSA, ECDSA, ...): the first one the client can verify.
#[derive(Debug)]
struct Keys(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for Keys {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| self.0.first())
            .cloned()
    }
}

/// `smtpd_tls_ask_ccert`: asks for a certificate, takes any (its
/// signature over the handshake is still checked), requires none.
#[derive(Debug)]
struct AskCert(WebPkiSupportedAlgorithms);

impl ClientCertVerifier for AskCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    signature_checks!();
}

/// The server's TLS configuration. `Ok(None)`: no certificate is
/// configured (Postfix: "No server certs available"). `mandatory`: TLS is
/// required (`encrypt`, wrapper mode), so the `_mandatory_` protocol and
/// cipher parameters apply.
pub fn server_config(p: &Params, mandatory: bool) -> Result<Option<Arc<ServerConfig>>, String> {
    if val(p, "smtpd_tls_chain_files").is_empty() && val(p, "smtpd_tls_cert_file").is_empty() {
        return Ok(None);
    }
    if yes(p, "smtpd_tls_req_ccert") {
        return Err(
            "smtpd_tls_req_ccert = yes is not supported (client certificates are not verified)"
                .into(),
        );
    }
    let (proto_param, grade_param, exclude_param) = if mandatory {
        (
            "smtpd_tls_mandatory_protocols",
            "smtpd_tls_mandatory_ciphers",
            "smtpd_tls_mandatory_exclude_ciphers",
        )
    } else {
        (
            "smtpd_tls_protocols",
            "smtpd_tls_ciphers",
            "smtpd_tls_exclude_ciphers",
        )
    };
    let versions = protocols(proto_param, &val(p, proto_param))?;
    let base = rustls::crypto::ring::default_provider();
    let mut exclude = val(p, "smtpd_tls_exclude_ciphers");
    if mandatory {
        exclude.push(' ');
        exclude.push_str(&val(p, exclude_param));
    }
    let provider = CryptoProvider {
        cipher_suites: suites(
            grade_param,
            &val(p, grade_param),
            &exclude,
            &base.cipher_suites,
        )?,
        ..base
    };
    let keys = load_keys(p, &provider, "smtpd")?;
    let algs = provider.signature_verification_algorithms;
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{proto_param}: {e}"))?;
    let builder = if yes(p, "smtpd_tls_ask_ccert") {
        builder.with_client_cert_verifier(Arc::new(AskCert(algs)))
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_cert_resolver(Arc::new(Keys(keys)));
    Ok(Some(Arc::new(config)))
}

/// What a finished handshake gave, in Postfix's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `TLSv1.2`, `TLSv1.3`.
    pub protocol: String,
    /// OpenSSL's name of the cipher suite.
    pub cipher: String,
    /// Secret bits of the cipher (shown as `n/n bits`).
    pub bits: u16,
    /// The key-exchange group, as OpenSSL names it (`X25519`,
    /// `prime256v1`, `secp384r1`).
    pub key_exchange: Option<String>,
    /// The client certificate's SHA-256 fingerprint (`AB:CD:...`), when
    /// one was presented.
    pub peer_fingerprint: Option<String>,
}

/// SHA-256 of a DER certificate as Postfix writes fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Summary {
    /// The summary of a connection whose handshake is complete.
    pub fn of(c: &CommonState) -> Summary {
        let protocol = match c.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".into(),
        };
        let (cipher, bits) = c
            .negotiated_cipher_suite()
            .map(|s| suite_name(s.suite()))
            .unwrap_or_else(|| ("unknown".into(), 0));
        let key_exchange = c.negotiated_key_exchange_group().map(|g| {
            let n = format!("{:?}", g.name());
            match n.as_str() {
                "secp256r1" => "prime256v1".to_string(),
                _ => n,
            }
        });
        let peer_fingerprint = c
            .peer_certificates()
            .and_then(|v| v.first())
            .map(|d| fingerprint(d));
        Summary {
            protocol,
            cipher,
            bits,
            key_exchange,
            peer_fingerprint,
        }
    }

    /// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`, then
    /// ` key-exchange X25519` when known.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} with cipher {} ({}/{} bits)",
            self.protocol, self.cipher, self.bits, self.bits
        );
        if let Some(k) = &self.key_exchange {
            s.push_str(&format!(" key-exchange {k}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&'static rustls::SupportedProtocolVersion]) -> Vec<String> {
        v.iter().map(|v| format!("{:?}", v.version)).collect()
    }

    #[test]
    fn protocol_lists_map_onto_tls12_and_tls13() {
        let p = |s| names(&protocols("smtpd_tls_protocols", s).unwrap());
        assert_eq!(p(">=TLSv1"), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(p("!SSLv2, !SSLv3"), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(p(">=TLSv1.3"), ["TLSv1_3"]);
        assert_eq!(p("<=TLSv1.2"), ["TLSv1_2"]);
        assert_eq!(p("TLSv1.2 TLSv1.3"), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(p("TLSv1.3"), ["TLSv1_3"]);
        assert_eq!(p("!TLSv1.3"), ["TLSv1_2"]);
        assert_eq!(p(""), ["TLSv1_2", "TLSv1_3"]);
        let e = protocols("smtpd_tls_protocols", "<=TLSv1.1").unwrap_err();
        assert!(
            e.contains("smtpd_tls_protocols") && e.contains("TLSv1.2"),
            "{e}"
        );
        let e = protocols("smtpd_tls_mandatory_protocols", "TLSv9").unwrap_err();
        assert!(e.contains("unknown TLS protocol \"TLSv9\""), "{e}");
    }

    #[test]
    fn cipher_grades_keep_every_suite_and_exclusions_remove_named_ones() {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(suites("g", "medium", "", &all).unwrap().len(), all.len());
        assert_eq!(
            suites("g", "high", "aNULL, RC4", &all).unwrap().len(),
            all.len()
        );
        let left = suites("g", "high", "TLS_AES_128_GCM_SHA256", &all).unwrap();
        assert_eq!(left.len(), all.len() - 1);
        assert!(suites("smtpd_tls_ciphers", "null", "", &all)
            .unwrap_err()
            .contains("smtpd_tls_ciphers"));
        assert!(suites("g", "bogus", "", &all).is_err());
    }

    fn params(text: &str) -> Params {
        let (cf, _) = crate::config::maincf::MainCf::parse(text, "main.cf");
        Params::new("/etc/postfix", cf).with_system_hostname("mx.example.test")
    }

    /// A self-signed certificate and key made by the openssl CLI.
    fn cert_and_key(dir: &std::path::Path) -> (String, String) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=mx.example.test", "-days", "1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{out:?}");
        (cert.to_str().unwrap().into(), key.to_str().unwrap().into())
    }

    #[test]
    fn configs_load_from_cert_and_key_files_or_chain_files() {
        let dir = std::env::temp_dir().join(format!("facteur-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = cert_and_key(&dir);
        assert!(server_config(&params(""), false).unwrap().is_none());
        let p = params(&format!(
            "smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
        ));
        assert!(server_config(&p, false).unwrap().is_some());
        // Key then certificate in one chain file; it wins over cert_file.
        let chain = dir.join("chain.pem");
        let text =
            std::fs::read_to_string(&key).unwrap() + &std::fs::read_to_string(&cert).unwrap();
        std::fs::write(&chain, text).unwrap();
        let p = params(&format!(
            "smtpd_tls_chain_files = {}\nsmtpd_tls_cert_file = /nonexistent\n",
            chain.display()
        ));
        assert!(server_config(&p, true).unwrap().is_some());
        // Certificate before its key: refused, naming parameter and file.
        let wrong = dir.join("wrong.pem");
        let text =
            std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
        std::fs::write(&wrong, text).unwrap();
        let p = params(&format!("smtpd_tls_chain_files = {}\n", wrong.display()));
        let e = server_config(&p, false).unwrap_err();
        assert!(
            e.starts_with("smtpd_tls_chain_files: file \"") && e.contains("wrong.pem"),
            "{e}"
        );
        // A missing key file.
        let p = params(&format!(
            "smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {}/none.pem\n",
            dir.display()
        ));
        let e = server_config(&p, false).unwrap_err();
        assert!(
            e.starts_with("smtpd_tls_key_file: cannot open file \"") && e.contains("none.pem"),
            "{e}"
        );
        // A key that is not the certificate's.
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let (_, key2) = cert_and_key(&other);
        let p = params(&format!(
            "smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key2}\n"
        ));
        let e = server_config(&p, false).unwrap_err();
        assert!(e.contains("unusable key or certificate"), "{e}");
        // Files are read with a bound.
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_PEM_BYTES as usize + 1]).unwrap();
        let p = params(&format!("smtpd_tls_cert_file = {}\n", big.display()));
        let e = server_config(&p, false).unwrap_err();
        assert!(e.contains("is larger than"), "{e}");
        // Mandatory protocols apply when TLS is required.
        let p = params(&format!(
            "smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n\
             smtpd_tls_mandatory_protocols = <=TLSv1.1\n"
        ));
        assert!(server_config(&p, false).is_ok());
        let e = server_config(&p, true).unwrap_err();
        assert!(e.starts_with("smtpd_tls_mandatory_protocols"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_level_and_its_legacy_parameters() {
        assert_eq!(Level::from_params(&params("")).unwrap(), Level::None);
        assert_eq!(
            Level::from_params(&params("smtpd_use_tls = yes")).unwrap(),
            Level::May
        );
        assert_eq!(
            Level::from_params(&params("smtpd_use_tls = yes\nsmtpd_enforce_tls = yes")).unwrap(),
            Level::Encrypt
        );
        assert_eq!(
            Level::from_params(&params(
                "smtpd_enforce_tls = yes\nsmtpd_tls_security_level = may"
            ))
            .unwrap(),
            Level::May
        );
        assert!(Level::from_params(&params("smtpd_tls_security_level = dane")).is_err());
    }

    #[test]
    fn fingerprints_are_colon_separated_uppercase_sha256() {
        let f = fingerprint(b"abc");
        assert!(f.starts_with("BA:78:16:BF:"), "{f}");
        assert_eq!(f.len(), 32 * 3 - 1);
    }

    #[test]
    fn suite_names_are_openssls() {
        assert_eq!(
            suite_name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            ("TLS_AES_256_GCM_SHA384".to_string(), 256)
        );
        assert_eq!(
            suite_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("ECDHE-RSA-AES128-GCM-SHA256".to_string(), 128)
        );
    }
}
