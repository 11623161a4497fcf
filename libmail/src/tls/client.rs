//! TLS for the SMTP and LMTP clients: rustls [`ClientConfig`]s built from
//! Postfix's `smtp_tls_*` (or `lmtp_tls_*`) parameters, and the security
//! levels of `smtp_tls_security_level` / `smtp_tls_policy_maps`.
//!
//! * `may` and `encrypt` do not verify the server's certificate (Postfix
//!   does not either: opportunistic and mandatory-unauthenticated TLS);
//!   the handshake's signatures are still checked. `may` uses
//!   `smtp_tls_protocols`/`smtp_tls_ciphers`, the others the
//!   `_mandatory_` variants.
//! * `verify` and `secure` verify the chain against `smtp_tls_CAfile` and
//!   the PEM files of `smtp_tls_CApath` (each read with a size bound),
//!   and the name: the MX host name for `verify` (Postfix's
//!   `smtp_tls_verify_cert_match = hostname`), the next-hop domain for
//!   `secure` (`nexthop`; `dot-nexthop` and other match strategies are not
//!   implemented). Without any trust anchor these levels cannot succeed,
//!   as in Postfix.
//! * `fingerprint` accepts the server's certificate when its fingerprint,
//!   or its public key's, is in `smtp_tls_fingerprint_cert_match`
//!   (digest `smtp_tls_fingerprint_digest`; colons and case do not
//!   matter); no chain or name is checked, as in Postfix.
//! * No SNI unless `smtp_tls_servername` asks for it (Postfix sends none
//!   by default).
//! * The client's own certificate (`smtp_tls_chain_files`, or
//!   `smtp_tls_cert_file` + `smtp_tls_key_file`) is presented when the
//!   server asks for one, at every level (the first key whose signature
//!   scheme the server accepts).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::SectionKind;

use super::{load_keys, protocols, sections, suites, val};
use crate::config::params::Params;

/// Most files read from `smtp_tls_CApath`.
const MAX_CA_FILES: usize = 1000;

/// A TLS security level for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    #[default]
    None,
    May,
    Encrypt,
    Fingerprint,
    Verify,
    Secure,
}

impl Level {
    /// A level word (`smtp_tls_security_level`, the first word of a
    /// `smtp_tls_policy_maps` value). `dane` and `dane-only` are taken as
    /// `may` and `encrypt` (no DANE here).
    pub fn parse(word: &str) -> Result<Level, String> {
        Ok(match word.to_ascii_lowercase().as_str() {
            "" | "none" => Level::None,
            "may" | "dane" => Level::May,
            "encrypt" | "dane-only" => Level::Encrypt,
            "fingerprint" => Level::Fingerprint,
            "verify" => Level::Verify,
            "secure" => Level::Secure,
            other => return Err(format!("unsupported TLS security level \"{other}\"")),
        })
    }

    /// The default level of a client: `PREFIX_tls_security_level`, or
    /// the legacy `PREFIX_enforce_tls` / `PREFIX_use_tls`.
    pub fn from_params(p: &Params, prefix: &str) -> Result<Level, String> {
        let name = format!("{prefix}_tls_security_level");
        let v = val(p, &name);
        if v.is_empty() {
            let yes = |n: &str| super::yes(p, &format!("{prefix}_{n}"));
            return Ok(if yes("enforce_tls") {
                Level::Encrypt
            } else if yes("use_tls") {
                Level::May
            } else {
                Level::None
            });
        }
        Level::parse(&v).map_err(|e| format!("{name}: {e}"))
    }

    /// The server's certificate is checked (and the connection logged
    /// `Verified`).
    pub fn verifies(self) -> bool {
        self >= Level::Fingerprint
    }
}

/// The client configurations of one transport.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// `may`: opportunistic protocols and ciphers, no verification.
    pub opportunistic: Arc<ClientConfig>,
    /// `encrypt`: mandatory protocols and ciphers, no verification.
    pub mandatory: Arc<ClientConfig>,
    /// `verify` / `secure`: mandatory settings, chain and name verified.
    pub verifying: Arc<ClientConfig>,
    /// `fingerprint`: mandatory settings, the certificate's (or its
    /// key's) fingerprint in `smtp_tls_fingerprint_cert_match`.
    pub fingerprint: Arc<ClientConfig>,
    /// The digest and signature algorithms of `fingerprint`, for a
    /// policy map's own list ([`ClientTls::pinned`]).
    digest: super::Digest,
    algs: WebPkiSupportedAlgorithms,
    /// `smtp_tls_servername`, when set: the SNI name to send.
    pub servername: Option<String>,
}

impl ClientTls {
    pub fn config(&self, level: Level) -> Arc<ClientConfig> {
        match level {
            Level::None | Level::May => self.opportunistic.clone(),
            Level::Encrypt => self.mandatory.clone(),
            Level::Fingerprint => self.fingerprint.clone(),
            Level::Verify | Level::Secure => self.verifying.clone(),
        }
    }

    /// The `fingerprint` configuration with another list of
    /// fingerprints (a policy map's `match=a|b`).
    pub fn pinned(&self, fingerprints: &str) -> Arc<ClientConfig> {
        let mut c = (*self.fingerprint).clone();
        c.dangerous()
            .set_certificate_verifier(Arc::new(Fingerprints(
                self.algs,
                FingerprintList {
                    digest: self.digest,
                    allowed: fingerprints.split('|').flat_map(fingerprint_list).collect(),
                },
            )));
        Arc::new(c)
    }
}

fn provider(p: &Params, prefix: &str, mandatory: bool) -> Result<CryptoProvider, String> {
    let base = rustls::crypto::ring::default_provider();
    let (grade_param, exclude_param) = if mandatory {
        (
            format!("{prefix}_tls_mandatory_ciphers"),
            format!("{prefix}_tls_mandatory_exclude_ciphers"),
        )
    } else {
        (
            format!("{prefix}_tls_ciphers"),
            format!("{prefix}_tls_exclude_ciphers"),
        )
    };
    let mut exclude = val(p, &format!("{prefix}_tls_exclude_ciphers"));
    if mandatory {
        exclude.push(' ');
        exclude.push_str(&val(p, &exclude_param));
    }
    Ok(CryptoProvider {
        cipher_suites: suites(
            &grade_param,
            &val(p, &grade_param),
            &exclude,
            &base.cipher_suites,
        )?,
        ..base
    })
}

/// The trust anchors of `PREFIX_tls_CAfile` and `PREFIX_tls_CApath`.
pub(crate) fn roots(p: &Params, prefix: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let mut add = |param: &str, path: &str| -> Result<(), String> {
        for (kind, der) in sections(param, path)? {
            if kind == SectionKind::Certificate {
                // A certificate rustls cannot parse is skipped, as OpenSSL
                // skips what it cannot load from a CA bundle.
                let _ = store.add(CertificateDer::from(der));
            }
        }
        Ok(())
    };
    let file_param = format!("{prefix}_tls_CAfile");
    let file = val(p, &file_param);
    if !file.is_empty() {
        add(&file_param, &file)?;
    }
    let dir_param = format!("{prefix}_tls_CApath");
    let dir = val(p, &dir_param);
    if !dir.is_empty() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("{dir_param}: cannot read directory \"{dir}\": {e}"))?;
        for entry in entries.flatten().take(MAX_CA_FILES) {
            let path = entry.path();
            let is_pem = path
                .extension()
                .is_some_and(|e| e == "pem" || e == "crt" || e == "0");
            if is_pem && path.is_file() {
                // One unreadable file in a hashed directory is not fatal.
                let _ = add(&dir_param, &path.to_string_lossy());
            }
        }
    }
    Ok(store)
}

/// Builds the client configurations of a transport (`prefix` is `smtp`
/// or `lmtp`).
pub fn client_configs(p: &Params, prefix: &str) -> Result<ClientTls, String> {
    let servername = Some(val(p, &format!("{prefix}_tls_servername"))).filter(|s| !s.is_empty());
    let sni = servername.is_some();
    let own: Arc<dyn ResolvesClientCert> =
        Arc::new(OwnKeys(load_keys(p, &provider(p, prefix, true)?, prefix)?));
    let proto_param = format!("{prefix}_tls_protocols");
    let mproto_param = format!("{prefix}_tls_mandatory_protocols");
    let opportunistic_versions = protocols(&proto_param, &val(p, &proto_param))?;
    let mandatory_versions = protocols(&mproto_param, &val(p, &mproto_param))?;

    let plain = |prov: CryptoProvider, versions, param: &str| -> Result<ClientConfig, String> {
        let algs = prov.signature_verification_algorithms;
        let mut c = ClientConfig::builder_with_provider(Arc::new(prov))
            .with_protocol_versions(versions)
            .map_err(|e| format!("{param}: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(algs)))
            .with_client_cert_resolver(own.clone());
        c.enable_sni = sni;
        Ok(c)
    };
    let opportunistic = plain(
        provider(p, prefix, false)?,
        &opportunistic_versions,
        &proto_param,
    )?;
    let mandatory = plain(
        provider(p, prefix, true)?,
        &mandatory_versions,
        &mproto_param,
    )?;
    let prov = Arc::new(provider(p, prefix, true)?);
    let digest_param = format!("{prefix}_tls_fingerprint_digest");
    let digest =
        super::Digest::parse(&val(p, &digest_param)).map_err(|e| format!("{digest_param}: {e}"))?;
    let algs = prov.signature_verification_algorithms;
    let mut fingerprint = ClientConfig::builder_with_provider(prov.clone())
        .with_protocol_versions(&mandatory_versions)
        .map_err(|e| format!("{mproto_param}: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Fingerprints(
            algs,
            FingerprintList {
                digest,
                allowed: fingerprint_list(&val(p, &format!("{prefix}_tls_fingerprint_cert_match"))),
            },
        )))
        .with_client_cert_resolver(own.clone());
    fingerprint.enable_sni = sni;
    let store = roots(p, prefix)?;
    let verifier: Arc<dyn ServerCertVerifier> = if store.is_empty() {
        // No trust anchor: every certificate fails verification.
        Arc::new(NoAnchors)
    } else {
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), prov.clone())
            .build()
            .map_err(|e| format!("{prefix}_tls_CAfile: {e}"))?
    };
    let mut verifying = ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&mandatory_versions)
        .map_err(|e| format!("{mproto_param}: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(own);
    verifying.enable_sni = sni;
    Ok(ClientTls {
        opportunistic: Arc::new(opportunistic),
        mandatory: Arc::new(mandatory),
        verifying: Arc::new(verifying),
        fingerprint: Arc::new(fingerprint),
        digest,
        algs,
        servername,
    })
}

/// The name a connection presents to rustls (checked against the
/// certificate at `verify`/`secure`; sent as SNI only when enabled).
pub fn server_name(name: &str) -> ServerName<'static> {
    let n = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(n.to_string())
        .unwrap_or_else(|_| ServerName::try_from("invalid.invalid".to_string()).expect("valid"))
}

/// The client's own keys, offered when the server asks.
#[derive(Debug)]
struct OwnKeys(Vec<Arc<CertifiedKey>>);

impl ResolvesClientCert for OwnKeys {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .cloned()
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

/// `may` / `encrypt`: any certificate (signatures are still checked).
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    super::signature_checks!();
}

/// A fingerprint as compared: upper-case hex, without colons.
fn fingerprint_key(f: &str) -> String {
    f.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// `smtp_tls_fingerprint_cert_match`: fingerprints separated by
/// whitespace or commas.
fn fingerprint_list(value: &str) -> Vec<String> {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|f| !f.is_empty())
        .map(fingerprint_key)
        .collect()
}

/// The fingerprints `fingerprint` accepts, and their digest.
#[derive(Debug)]
struct FingerprintList {
    digest: super::Digest,
    allowed: Vec<String>,
}

impl FingerprintList {
    /// Whether the certificate's fingerprint, or its public key's, is
    /// listed.
    fn matches(&self, cert: &[u8]) -> bool {
        let (c, k) = super::cert_fingerprints(self.digest, cert);
        [c, k]
            .iter()
            .filter(|f| !f.is_empty())
            .any(|f| self.allowed.contains(&fingerprint_key(f)))
    }
}

/// `fingerprint`: the certificate or its public key must have one of the
/// listed fingerprints (the handshake's signatures are checked as usual).
#[derive(Debug)]
struct Fingerprints(WebPkiSupportedAlgorithms, FingerprintList);

impl ServerCertVerifier for Fingerprints {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.1.matches(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    super::signature_checks!();
}

/// `verify` / `secure` without any trust anchor configured.
#[derive(Debug)]
struct NoAnchors;

impl ServerCertVerifier for NoAnchors {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no trust anchors".into()))
    }
    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no trust anchors".into()))
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("MAY").unwrap(), Level::May);
        assert_eq!(Level::parse("dane").unwrap(), Level::May);
        assert_eq!(Level::parse("secure").unwrap(), Level::Secure);
        assert_eq!(Level::parse("fingerprint").unwrap(), Level::Fingerprint);
        assert!(Level::Verify.verifies() && !Level::Encrypt.verifies());
        assert!(Level::Fingerprint.verifies());
        assert_eq!(
            fingerprint_list("ab:cd:01, EF:02\n 0a0b"),
            vec!["ABCD01", "EF02", "0A0B"]
        );
        assert!(Level::Encrypt > Level::May);
    }

    #[test]
    fn server_names_from_hosts_and_literals() {
        assert!(matches!(
            server_name("[127.0.0.1]"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("mx.example.test"),
            ServerName::DnsName(_)
        ));
    }
}
