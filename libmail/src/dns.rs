//! DNS lookups for code that may block (smtpd's restrictions run inside
//! tokio's `block_in_place`): A, AAAA, MX, NS and TXT, on `hickory-resolver`.
//!
//! A [`Dns`] owns a small runtime (one worker thread) that drives the
//! resolver's connections; each lookup blocks the calling thread until
//! the answer or the timeout. The servers are the system's
//! (`/etc/resolv.conf`) unless `facteur_dns_servers` names some (a
//! Facteur parameter, not Postfix's: for tests and for operators who want
//! a local resolver).
//!
//! Answers are told apart the way Postfix's restrictions need: records,
//! [`DnsError::NotFound`] (NXDOMAIN, or the name exists without records
//! of that type), or [`DnsError::Temporary`] (timeout, SERVFAIL, refused,
//! no server reachable), which a restriction turns into a deferral.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::params::{split_list, Params};

/// The longest one lookup may take, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist, or has no record of that type.
    NotFound,
    /// The answer could not be had now (timeout, server failure, ...).
    Temporary(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NotFound => f.write_str("host not found"),
            DnsError::Temporary(e) => write!(f, "temporary DNS failure: {e}"),
        }
    }
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// The exchange, without the final dot; empty for the null MX (`.`).
    pub exchange: String,
}

/// The servers `facteur_dns_servers` names (empty: the system's).
pub fn servers_from_params(params: &Params) -> Result<Vec<SocketAddr>, String> {
    let v = params
        .value("facteur_dns_servers")
        .map_err(|e| format!("facteur_dns_servers: {e}"))?;
    split_list(&v)
        .into_iter()
        .map(|item| {
            parse_server(item).ok_or_else(|| {
                format!("facteur_dns_servers: bad server \"{item}\": need address[:port]")
            })
        })
        .collect()
}

/// A blocking resolver.
pub struct Dns {
    rt: tokio::runtime::Runtime,
    resolver: TokioResolver,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Parses one `facteur_dns_servers` item: `addr`, `addr:port`,
/// `[addr]` or `[addr]:port` (port 53 by default).
pub fn parse_server(item: &str) -> Option<SocketAddr> {
    if let Ok(sa) = item.parse::<SocketAddr>() {
        return Some(sa);
    }
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let inner = item.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

impl Dns {
    /// The resolver `facteur_dns_servers` asks for: those servers, or the
    /// system's when it is empty.
    pub fn from_params(params: &Params) -> Result<Dns, String> {
        Dns::for_servers(&servers_from_params(params)?)
    }

    /// These servers, or the system's when there are none.
    pub fn for_servers(servers: &[SocketAddr]) -> Result<Dns, String> {
        if servers.is_empty() {
            Dns::system(DEFAULT_TIMEOUT)
        } else {
            Dns::with_servers(servers, DEFAULT_TIMEOUT)
        }
    }

    /// The servers of `/etc/resolv.conf`.
    pub fn system(timeout: Duration) -> Result<Dns, String> {
        let rt = runtime()?;
        let resolver = {
            let _enter = rt.enter();
            let mut b = TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?;
            tune(b.options_mut(), timeout);
            b.build().map_err(|e| format!("DNS resolver: {e}"))?
        };
        Ok(Dns {
            rt,
            resolver,
            timeout,
        })
    }

    /// These servers (UDP, then TCP when an answer is truncated).
    pub fn with_servers(servers: &[SocketAddr], timeout: Duration) -> Result<Dns, String> {
        let rt = runtime()?;
        let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        for s in servers {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            config.add_name_server(NameServerConfig::new(s.ip(), true, vec![udp, tcp]));
        }
        let resolver = {
            let _enter = rt.enter();
            let mut b = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
            tune(b.options_mut(), timeout);
            b.build().map_err(|e| format!("DNS resolver: {e}"))?
        };
        Ok(Dns {
            rt,
            resolver,
            timeout,
        })
    }

    fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, DnsError> {
        // Always fully qualified: no search list, no ndots games.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let fut = self.resolver.lookup(fqdn.as_str(), rtype);
        let res = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, fut).await });
        match res {
            Err(_) => Err(DnsError::Temporary("timeout".into())),
            Ok(Err(e)) if e.is_no_records_found() => Err(DnsError::NotFound),
            Ok(Err(e)) => Err(DnsError::Temporary(e.to_string())),
            Ok(Ok(l)) => {
                let v: Vec<RData> = l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if v.is_empty() {
                    Err(DnsError::NotFound)
                } else {
                    Ok(v)
                }
            }
        }
    }

    /// The IPv4 addresses of `name`.
    pub fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        Ok(self
            .lookup(name, RecordType::A)?
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// The IPv6 addresses of `name`.
    pub fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        Ok(self
            .lookup(name, RecordType::AAAA)?
            .into_iter()
            .filter_map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// The MX records of `name`, lowest preference first.
    pub fn mx(&self, name: &str) -> Result<Vec<Mx>, DnsError> {
        let mut v: Vec<Mx> = self
            .lookup(name, RecordType::MX)?
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(mx) => {
                    let ex = mx.exchange.to_ascii();
                    Some(Mx {
                        preference: mx.preference,
                        exchange: ex.trim_end_matches('.').to_string(),
                    })
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|m| m.preference);
        Ok(v)
    }

    /// The name servers of `name` (its NS records, in the order of the
    /// answer, without the final dot). No walk up to parent domains: a
    /// name without NS records is [`DnsError::NotFound`].
    pub fn ns(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .lookup(name, RecordType::NS)?
            .into_iter()
            .filter_map(|d| match d {
                RData::NS(ns) => Some(ns.0.to_ascii().trim_end_matches('.').to_string()),
                _ => None,
            })
            .filter(|n| !n.is_empty())
            .collect())
    }

    /// The TXT records of `name`, each one's strings joined.
    pub fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .lookup(name, RecordType::TXT)?
            .into_iter()
            .filter_map(|d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }
}

/// `name` in ASCII (IDNA: non-ASCII labels become `xn--` labels, and
/// the name is lowercased); `None` when it cannot be converted. An ASCII
/// name is returned as it is.
pub fn ascii_name(name: &str) -> Option<String> {
    if name.is_ascii() {
        return Some(name.to_string());
    }
    let n = Name::from_utf8(name).ok()?.to_ascii();
    // to_ascii() ends with a dot only when the name given did.
    Some(if name.ends_with('.') {
        n
    } else {
        n.trim_end_matches('.').to_string()
    })
}

/// Whether the MX answer is the null MX of RFC 7505 (one record, `.`).
pub fn is_null_mx(mx: &[Mx]) -> bool {
    mx.len() == 1 && mx[0].exchange.is_empty()
}

/// The DNSBL query name of `addr` under `domain`: reversed octets for
/// IPv4 (`1.0.0.127.bl.test`), reversed nibbles for IPv6.
pub fn reverse_name(addr: IpAddr, domain: &str) -> String {
    let mut s = String::new();
    match addr.to_canonical() {
        IpAddr::V4(a) => {
            for o in a.octets().iter().rev() {
                s.push_str(&format!("{o}."));
            }
        }
        IpAddr::V6(a) => {
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
        }
    }
    s.push_str(domain.trim_end_matches('.'));
    s
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("facteur-dns")
        .enable_all()
        .build()
        .map_err(|e| format!("DNS runtime: {e}"))
}

fn tune(o: &mut hickory_resolver::config::ResolverOpts, timeout: Duration) {
    o.timeout = timeout / 2;
    o.attempts = 2;
    o.ndots = 0;
    o.cache_size = 1024;
    o.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("127.0.0.2".parse().unwrap(), "bl.test"),
            "2.0.0.127.bl.test"
        );
        assert_eq!(
            reverse_name("::ffff:192.0.2.1".parse().unwrap(), "bl.test."),
            "1.2.0.192.bl.test"
        );
        let six = reverse_name("2001:db8::1".parse().unwrap(), "bl.test");
        assert_eq!(
            six,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }

    #[test]
    fn names_in_ascii() {
        assert_eq!(
            ascii_name("Mail.Example.COM").as_deref(),
            Some("Mail.Example.COM")
        );
        assert_eq!(
            ascii_name("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            ascii_name("bücher.example.").as_deref(),
            Some("xn--bcher-kva.example.")
        );
    }

    #[test]
    fn servers_parse() {
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("192.0.2.1"),
            Some("192.0.2.1:53".parse().unwrap())
        );
        assert_eq!(parse_server("[::1]"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_server("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(parse_server("nameserver"), None);
    }
}
