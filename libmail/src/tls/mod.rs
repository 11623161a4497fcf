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
//! * `smtpd_tls_ask_ccert`: a client certificate is requested (with the
//!   names of the `smtpd_tls_CAfile`/`smtpd_tls_CApath` CAs) and any is
//!   taken; after the handshake [`ClientCerts::summary`] finds whether it
//!   chains to those CAs ("trusted"), its fingerprint and its public
//!   key's (`smtpd_tls_fingerprint_digest`; MD5 is computed here, ring has
//!   none) and the
//!   subject's and issuer's CommonName ([`PeerCert`]). An untrusted
//!   certificate is only good for its fingerprints, as in Postfix.
//! * `smtpd_tls_req_ccert` (only when TLS is required): a certificate that
//!   chains to the CAs is required by the handshake itself; without
//!   `smtpd_tls_CAfile`/`_CApath` the configuration is refused.
//!   `smtpd_tls_ccert_verifydepth` is not read (webpki's own bound
//!   applies).
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
/// signature over the handshake is still checked; whether it chains to
/// `smtpd_tls_CAfile`/`smtpd_tls_CApath` is found after the handshake, by
/// [`ClientCerts::summary`]). With `smtpd_tls_req_ccert` a trusted one is
/// required (`mandatory`).
#[derive(Debug)]
struct AskCert {
    algs: WebPkiSupportedAlgorithms,
    /// The CA names sent with the request.
    hints: Vec<DistinguishedName>,
    /// `smtpd_tls_req_ccert`: the chain must verify.
    required: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for AskCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.required.is_some()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.required {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Ok(ClientCertVerified::assertion()),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// `smtpd_tls_fingerprint_digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// The parameter's value (`md5` is the default below compatibility
    /// level 3.6).
    pub fn parse(name: &str) -> Result<Digest, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "md5" => Ok(Digest::Md5),
            "sha1" => Ok(Digest::Sha1),
            "sha256" => Ok(Digest::Sha256),
            "sha384" => Ok(Digest::Sha384),
            "sha512" => Ok(Digest::Sha512),
            other => Err(format!("unknown digest \"{other}\"")),
        }
    }

    /// `AB:CD:...`: upper-case hex pairs joined by colons, as Postfix
    /// writes fingerprints.
    pub fn fingerprint(self, data: &[u8]) -> String {
        let alg = match self {
            Digest::Md5 => return hex_pairs(&md5(data)),
            Digest::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Digest::Sha256 => &ring::digest::SHA256,
            Digest::Sha384 => &ring::digest::SHA384,
            Digest::Sha512 => &ring::digest::SHA512,
        };
        hex_pairs(ring::digest::digest(alg, data).as_ref())
    }
}

fn hex_pairs(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// MD5, for `smtpd_tls_fingerprint_digest = md5` (Postfix's default
/// below compatibility level 3.6; ring has none). Only ever used for
/// fingerprints, never for security.
fn md5(data: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(data).into()
}

/// A certificate's fingerprint and its public key's (the DER
/// SubjectPublicKeyInfo; empty when the certificate cannot be read).
pub(crate) fn cert_fingerprints(digest: Digest, cert: &[u8]) -> (String, String) {
    let spki = der::cert_parts(cert)
        .map(|p| digest.fingerprint(p.spki))
        .unwrap_or_default();
    (digest.fingerprint(cert), spki)
}

/// What smtpd knows of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The certificate's fingerprint (`smtpd_tls_fingerprint_digest`).
    pub fingerprint: String,
    /// The fingerprint of its public key (the DER SubjectPublicKeyInfo).
    pub pkey_fingerprint: String,
    /// The subject's and issuer's CommonName (empty when none).
    pub subject_cn: String,
    pub issuer_cn: String,
    /// It chains to `smtpd_tls_CAfile`/`smtpd_tls_CApath`.
    pub trusted: bool,
}

/// How client certificates are examined after the handshake: the digest
/// and the trust anchors.
#[derive(Clone)]
pub struct ClientCerts {
    digest: Digest,
    /// Verifies chains against the CA files; `None` without any.
    trust: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCerts")
            .field("digest", &self.digest)
            .field("trust", &self.trust.is_some())
            .finish()
    }
}

impl ClientCerts {
    /// From `smtpd_tls_fingerprint_digest`, `smtpd_tls_CAfile` and
    /// `smtpd_tls_CApath`.
    pub fn from_params(p: &Params) -> Result<ClientCerts, String> {
        let digest = Digest::parse(&val(p, "smtpd_tls_fingerprint_digest"))
            .map_err(|e| format!("smtpd_tls_fingerprint_digest: {e}"))?;
        let roots = client::roots(p, "smtpd")?;
        let trust = if roots.is_empty() {
            None
        } else {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("smtpd_tls_CAfile: {e}"))?;
            Some(v)
        };
        Ok(ClientCerts { digest, trust })
    }

    /// The client certificate of a finished handshake, if one was
    /// presented.
    pub fn peer(&self, c: &CommonState) -> Option<PeerCert> {
        let chain = c.peer_certificates()?;
        let end = chain.first()?;
        let trusted = self.trust.as_ref().is_some_and(|v| {
            v.verify_client_cert(end, &chain[1..], UnixTime::now())
                .is_ok()
        });
        let parts = der::cert_parts(end);
        let (fingerprint, pkey_fingerprint) = cert_fingerprints(self.digest, end);
        Some(PeerCert {
            fingerprint,
            pkey_fingerprint,
            subject_cn: parts
                .as_ref()
                .map(|p| p.subject_cn.clone())
                .unwrap_or_default(),
            issuer_cn: parts
                .as_ref()
                .map(|p| p.issuer_cn.clone())
                .unwrap_or_default(),
            trusted,
        })
    }

    /// [`Summary::of`] with the client certificate filled in.
    pub fn summary(&self, c: &CommonState) -> Summary {
        let mut s = Summary::of(c);
        s.peer_cert = self.peer(c);
        s
    }
}

/// Just enough DER to read a certificate's names and public key. Written
/// here on purpose: rustls-webpki verifies chains but exposes no names,
/// and the maintained X.509 parsers (x509-parser, x509-cert) bring a
/// parser framework for the three fields smtpd reads. Every read is
/// bounded by the slice it is given; a malformed certificate gives
/// empty names, never a panic.
mod der {
    /// One TLV: its tag, its contents, the whole encoding, what follows.
    type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, head) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = head.checked_add(len)?;
        if end > b.len() {
            return None;
        }
        Some((tag, &b[head..end], &b[..end], &b[end..]))
    }

    pub(super) struct Parts<'a> {
        pub spki: &'a [u8],
        pub subject_cn: String,
        pub issuer_cn: String,
    }

    /// The CommonName of a Name (the last one, as OpenSSL's lookup by
    /// NID finds the first; names have one).
    fn common_name(name: &[u8]) -> String {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        let mut rest = name;
        while let Some((_, set, _, next)) = tlv(rest) {
            rest = next;
            let mut atvs = set;
            while let Some((_, atv, _, after)) = tlv(atvs) {
                atvs = after;
                if let Some((0x06, oid, _, value)) = tlv(atv) {
                    if oid == CN {
                        if let Some((_, v, _, _)) = tlv(value) {
                            return printable(&String::from_utf8_lossy(v));
                        }
                    }
                }
            }
        }
        String::new()
    }

    /// A name fit for logs, headers and replies: control characters
    /// become `?` (as Postfix neuters them), and it is cut at 256
    /// characters.
    fn printable(name: &str) -> String {
        name.chars()
            .take(256)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    }

    pub(super) fn cert_parts(cert: &[u8]) -> Option<Parts<'_>> {
        let (_, c, _, _) = tlv(cert)?;
        let (_, tbs, _, _) = tlv(c)?;
        let mut rest = tbs;
        // [0] version, when present.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.3;
        }
        let (_, _, _, rest) = tlv(rest)?; // serialNumber
        let (_, _, _, rest) = tlv(rest)?; // signature
        let (_, issuer, _, rest) = tlv(rest)?;
        let (_, _, _, rest) = tlv(rest)?; // validity
        let (_, subject, _, rest) = tlv(rest)?;
        let (_, _, spki, _) = tlv(rest)?;
        Some(Parts {
            spki,
            subject_cn: common_name(subject),
            issuer_cn: common_name(issuer),
        })
    }
}

/// The server's TLS configuration. `Ok(None)`: no certificate is
/// configured (Postfix: "No server certs available"). `mandatory`: TLS is
/// required (`encrypt`, wrapper mode), so the `_mandatory_` protocol and
/// cipher parameters apply.
pub fn server_config(p: &Params, mandatory: bool) -> Result<Option<Arc<ServerConfig>>, String> {
    if val(p, "smtpd_tls_chain_files").is_empty() && val(p, "smtpd_tls_cert_file").is_empty() {
        return Ok(None);
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
    // Postfix: smtpd_tls_req_ccert only has effect when TLS is
    // required, and implies smtpd_tls_ask_ccert.
    let require = mandatory && yes(p, "smtpd_tls_req_ccert");
    let builder = if require || yes(p, "smtpd_tls_ask_ccert") {
        let certs = ClientCerts::from_params(p)?;
        let hints = certs
            .trust
            .as_ref()
            .map(|v| v.root_hint_subjects().to_vec())
            .unwrap_or_default();
        let required = if require {
            Some(certs.trust.clone().ok_or_else(|| {
                "smtpd_tls_req_ccert = yes needs smtpd_tls_CAfile or smtpd_tls_CApath".to_string()
            })?)
        } else {
            None
        };
        builder.with_client_cert_verifier(Arc::new(AskCert {
            algs,
            hints,
            required,
        }))
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
    /// The peer certificate's SHA-256 fingerprint (`AB:CD:...`), when
    /// one was presented.
    pub peer_fingerprint: Option<String>,
    /// The client certificate as smtpd examines it (set by
    /// [`ClientCerts::summary`]; `None` on the client side).
    pub peer_cert: Option<PeerCert>,
}

/// SHA-256 of a DER certificate as Postfix writes fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    Digest::Sha256.fingerprint(der)
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
            peer_cert: None,
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
    fn certificate_names_and_public_key_are_read_from_der() {
        let dir = std::env::temp_dir().join(format!("facteur-tls-der-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, _) = cert_and_key(&dir);
        let der = sections("f", &cert).unwrap().remove(0).1;
        let parts = der::cert_parts(&der).expect("parsed");
        assert_eq!(parts.subject_cn, "mx.example.test");
        assert_eq!(parts.issuer_cn, "mx.example.test");
        // The public key, as openssl extracts it.
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in", &cert])
            .output()
            .unwrap();
        let pem = String::from_utf8(out.stdout).unwrap();
        let spki =
            rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(parts.spki, spki.as_ref());
        assert!(der::cert_parts(&der[..der.len() / 2]).is_none());
        // A CommonName with a line break cannot break a header line.
        let evil = dir.join("evil.pem");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-multivalue-rdn", "-utf8", "-subj", "/CN=a\nX-Evil: yes"])
            .arg("-keyout")
            .arg(dir.join("evil.key"))
            .arg("-out")
            .arg(&evil)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let der = sections("f", evil.to_str().unwrap()).unwrap().remove(0).1;
        assert_eq!(der::cert_parts(&der).unwrap().subject_cn, "a?X-Evil: yes");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprint_digests_follow_the_parameter() {
        assert_eq!(Digest::parse("SHA256").unwrap(), Digest::Sha256);
        assert_eq!(Digest::parse("md5").unwrap(), Digest::Md5);
        // RFC 1321's test suite.
        assert_eq!(
            Digest::Md5.fingerprint(b""),
            "D4:1D:8C:D9:8F:00:B2:04:E9:80:09:98:EC:F8:42:7E"
        );
        assert_eq!(
            Digest::Md5.fingerprint(b"abc"),
            "90:01:50:98:3C:D2:4F:B0:D6:96:3F:7D:28:E1:7F:72"
        );
        let long =
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(
            Digest::Md5.fingerprint(long),
            "57:ED:F4:A2:2B:E3:C9:55:AC:49:DA:2E:21:07:B6:7A"
        );
        assert!(Digest::parse("whirlpool").is_err());
        assert_eq!(Digest::Sha1.fingerprint(b"abc").len(), 20 * 3 - 1);
        assert!(Digest::Sha1.fingerprint(b"abc").starts_with("A9:99:3E:36:"));
        assert_eq!(Digest::Sha512.fingerprint(b"abc").len(), 64 * 3 - 1);
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
