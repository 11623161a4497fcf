//! Next hops and the servers behind them.
//!
//! Postfix's next-hop syntax (transport(5), `relayhost`): `domain`
//! (MX lookup), `domain:port`, `[host]` and `[host]:port` (no MX
//! lookup), `[1.2.3.4]`, `[ipv6:2001:db8::1]` or `[2001:db8::1]`; for
//! LMTP also `unix:/path` (relative paths are under the queue
//! directory), `inet:host:port` and `host:port` (LMTP never looks up MX
//! records). The port is a number or a service name (`smtp`,
//! `submission`, ...).
//!
//! [`resolve`] turns a next hop into the ordered list of addresses to try:
//! MX records by preference (equal preferences shuffled when
//! `smtp_randomize_addresses`), the domain's own addresses when there is
//! no MX, a null MX (RFC 7505) refused, at most `smtp_mx_address_limit`
//! addresses, IPv4/IPv6 per `inet_protocols`.
//!
//! Mail loops (Postfix's smtp_addr(3)): for SMTP to the SMTP port, when
//! one of the addresses is this machine's ([`Myself`]), an MX list is cut
//! before the preference of this machine (before the address limit
//! applies), leaving only the better MX hosts; nothing left is
//! `5.4.6 mail for DOMAIN loops back to myself` (or, when the better
//! hosts have no address, `4.4.4 unable to find primary relay for
//! DOMAIN`). A host looked up without MX (`[host]`, no MX record, no DNS)
//! that is this machine is the same 5.4.6.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use libmail::dns::{is_null_mx, Dns, DnsError};

/// A parsed next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// A host or domain on a TCP port; `mx`: look up MX records.
    Inet { host: String, port: u16, mx: bool },
    /// A UNIX-domain socket (LMTP).
    Unix(PathBuf),
}

/// A well-known port by service name (Postfix asks getservbyname).
pub fn service_port(s: &str) -> Option<u16> {
    if let Ok(n) = s.parse::<u16>() {
        return (n > 0).then_some(n);
    }
    match s.to_ascii_lowercase().as_str() {
        "smtp" => Some(25),
        "lmtp" => Some(24),
        "submission" => Some(587),
        "submissions" | "smtps" | "urd" => Some(465),
        _ => None,
    }
}

/// Parses a next hop. `lmtp`: LMTP rules (`unix:`, no MX); `default_port`
/// from `smtp_tcp_port` / `lmtp_tcp_port`; `queue_dir` for relative
/// socket paths.
pub fn parse(
    nexthop: &str,
    lmtp: bool,
    default_port: u16,
    queue_dir: &std::path::Path,
) -> Result<NextHop, String> {
    let mut s = nexthop.trim();
    if s.is_empty() {
        return Err("empty next-hop destination".into());
    }
    if let Some(rest) = s.strip_prefix("unix:") {
        if !lmtp {
            return Err(format!(
                "unix-domain next hop \"{nexthop}\" is for LMTP only"
            ));
        }
        if rest.is_empty() || rest.contains('\0') {
            return Err(format!("bad socket path in \"{nexthop}\""));
        }
        let p = PathBuf::from(rest);
        return Ok(NextHop::Unix(if p.is_absolute() {
            p
        } else {
            queue_dir.join(p)
        }));
    }
    if let Some(rest) = s.strip_prefix("inet:") {
        s = rest;
    }
    let (host, port_text, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("bad next hop \"{nexthop}\": missing \"]\""))?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("bad next hop \"{nexthop}\"")),
        };
        let host = host
            .strip_prefix("ipv6:")
            .or_else(|| host.strip_prefix("IPv6:"))
            .unwrap_or(host);
        (host, port, true)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p), false),
            Some(_) => return Err(format!("bad next hop \"{nexthop}\": IPv6 needs [ ]")),
            None => (s, None, false),
        }
    };
    if host.is_empty()
        || host.len() > 255
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(format!("bad host name in next hop \"{nexthop}\""));
    }
    let port = match port_text {
        None => default_port,
        Some(p) => {
            service_port(p).ok_or_else(|| format!("bad port \"{p}\" in next hop \"{nexthop}\""))?
        }
    };
    let literal = host.parse::<IpAddr>().is_ok();
    Ok(NextHop::Inet {
        host: host.trim_end_matches('.').to_string(),
        port,
        mx: !bracketed && !literal && !lmtp,
    })
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name for logs (`mx.example.com`, or the literal).
    pub host: String,
    pub addr: SocketAddr,
}

/// The addresses to try for a next hop, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub targets: Vec<Target>,
    /// This machine is one of the destination's MX hosts (a less
    /// preferred one): Postfix then tries no later destination (no
    /// fall-back relay).
    pub i_am_mx: bool,
}

/// Why no address could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTarget {
    /// Permanent (bounce) or temporary (defer).
    pub permanent: bool,
    pub dsn: &'static str,
    pub reason: String,
    /// Try no later destination (no fall-back relay): mail loops, or this
    /// machine is an MX host of the destination.
    pub final_hop: bool,
    /// The loop of an MX lookup: this machine is the best MX host of the
    /// domain (the case Postfix hands to `best_mx_transport`).
    pub best_mx: bool,
}

/// This machine, for the mail-loop check.
#[derive(Debug, Clone, Copy)]
pub struct Myself<'a> {
    /// Its addresses (`inet_interfaces`, `proxy_interfaces`), canonical.
    pub addrs: &'a [IpAddr],
    /// The default SMTP port (`smtp_tcp_port`): next hops on it or on
    /// port 25 are checked; Postfix checks port 25 only.
    pub port: u16,
}

impl Myself<'_> {
    fn applies(&self, port: u16) -> bool {
        port == 25 || port == self.port
    }

    fn is(&self, addr: &SocketAddr) -> bool {
        self.addrs.contains(&addr.ip().to_canonical())
    }
}

/// Postfix's text for a destination that is this machine.
fn loops(name: &str) -> NoTarget {
    NoTarget {
        permanent: true,
        dsn: "5.4.6",
        reason: format!("mail for {name} loops back to myself"),
        final_hop: true,
        best_mx: false,
    }
}

/// smtp_find_self and smtp_truncate_self: `found` (addresses with their
/// MX preference, best first) keeps only the hosts more preferred than
/// the first address of this machine; `best_pref` is the preference of
/// the best MX record (its host may have no address). `Ok(true)`: this
/// machine was among them.
fn truncate_at_myself(
    domain: &str,
    found: &mut Vec<(u16, Target)>,
    best_pref: u16,
    me: &Myself,
) -> Result<bool, NoTarget> {
    let Some(mine) = found
        .iter()
        .find(|(_, t)| me.is(&t.addr))
        .map(|(pref, _)| *pref)
    else {
        return Ok(false);
    };
    let best_found = found.first().map(|(pref, _)| *pref);
    found.retain(|(pref, _)| *pref < mine);
    if !found.is_empty() {
        return Ok(true);
    }
    Err(if best_found != Some(best_pref) {
        NoTarget {
            permanent: false,
            dsn: "4.4.4",
            reason: format!("unable to find primary relay for {domain}"),
            final_hop: true,
            best_mx: false,
        }
    } else {
        NoTarget {
            best_mx: true,
            ..loops(domain)
        }
    })
}

/// What `resolve` needs from the configuration.
pub struct Lookup<'a> {
    pub dns: &'a Dns,
    /// `smtp_host_lookup` has `dns` / `native`.
    pub use_dns: bool,
    pub use_native: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    /// 0 = no limit.
    pub address_limit: usize,
    pub randomize: bool,
    /// `smtp_address_preference`: `any`, `ipv4`, `ipv6`.
    pub prefer: &'a str,
    /// This machine, for the mail-loop check (`None`: no check, LMTP).
    pub myself: Option<Myself<'a>>,
}

fn name_error(name: &str, rtype: &str, e: &DnsError) -> NoTarget {
    match e {
        DnsError::NotFound => NoTarget {
            permanent: true,
            dsn: "5.4.4",
            reason: format!(
                "Host or domain name not found. Name service error for name={name} type={rtype}: Host not found"
            ),
            final_hop: false,
            best_mx: false,
        },
        DnsError::Temporary(_) => NoTarget {
            permanent: false,
            dsn: "4.4.3",
            reason: format!(
                "Host or domain name not found. Name service error for name={name} type={rtype}: Host not found, try again"
            ),
            final_hop: false,
            best_mx: false,
        },
    }
}

impl Lookup<'_> {
    /// The addresses of one host name (or literal), in preference order.
    fn host_addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, NoTarget> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut out = Vec::new();
        let mut last_err: Option<NoTarget> = None;
        if self.use_dns {
            if self.ipv4 {
                match self.dns.a(host) {
                    Ok(v) => out.extend(v.into_iter().map(|a| SocketAddr::new(a.into(), port))),
                    Err(e) => last_err = Some(name_error(host, "A", &e)),
                }
            }
            if self.ipv6 {
                match self.dns.aaaa(host) {
                    Ok(v) => out.extend(v.into_iter().map(|a| SocketAddr::new(a.into(), port))),
                    Err(e) => {
                        // A temporary failure wins over "not found".
                        if last_err.as_ref().is_none_or(|l| l.permanent) || !self.ipv4 {
                            last_err = Some(name_error(host, "AAAA", &e));
                        }
                    }
                }
            }
        }
        if out.is_empty() && self.use_native {
            use std::net::ToSocketAddrs;
            match (host, port).to_socket_addrs() {
                Ok(it) => out.extend(
                    it.filter(|a| (a.is_ipv4() && self.ipv4) || (a.is_ipv6() && self.ipv6)),
                ),
                Err(_) => {
                    if last_err.is_none() {
                        last_err = Some(name_error(host, "A", &DnsError::NotFound));
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(last_err.unwrap_or_else(|| name_error(host, "A", &DnsError::NotFound)));
        }
        match self.prefer {
            "ipv4" => out.sort_by_key(|a| !a.is_ipv4()),
            "ipv6" => out.sort_by_key(|a| !a.is_ipv6()),
            _ => {}
        }
        Ok(out)
    }

    /// The addresses to try for a next hop, best first.
    pub fn resolve(&self, hop: &NextHop) -> Result<Resolved, NoTarget> {
        let NextHop::Inet { host, port, mx } = hop else {
            return Ok(Resolved {
                targets: Vec::new(),
                i_am_mx: false,
            });
        };
        let myself = self.myself.filter(|m| m.applies(*port));
        let mut targets = Vec::new();
        let mut i_am_mx = false;
        if *mx && self.use_dns {
            match self.dns.mx(host) {
                Ok(records) if is_null_mx(&records) => {
                    return Err(NoTarget {
                        permanent: true,
                        // Postfix 3.7's client says 5.1.0 here (its smtpd
                        // refuses such a recipient with 556 5.1.10).
                        dsn: "5.1.0",
                        reason: format!("Domain {host} does not accept mail (nullMX)"),
                        final_hop: false,
                        best_mx: false,
                    });
                }
                Ok(mut records) => {
                    records.retain(|r| !r.exchange.is_empty());
                    records.sort_by_key(|r| r.preference);
                    if self.randomize {
                        shuffle_equal(&mut records, |r| r.preference);
                    }
                    let mut last_err = None;
                    let mut found: Vec<(u16, Target)> = Vec::new();
                    for r in &records {
                        match self.host_addrs(&r.exchange, *port) {
                            Ok(addrs) => found.extend(addrs.into_iter().map(|addr| {
                                (
                                    r.preference,
                                    Target {
                                        host: r.exchange.clone(),
                                        addr,
                                    },
                                )
                            })),
                            Err(e) => last_err = Some(e),
                        }
                    }
                    if found.is_empty() {
                        return Err(
                            last_err.unwrap_or_else(|| name_error(host, "MX", &DnsError::NotFound))
                        );
                    }
                    if let Some(me) = &myself {
                        let best_pref = records.first().map_or(0, |r| r.preference);
                        i_am_mx = truncate_at_myself(host, &mut found, best_pref, me)?;
                    }
                    targets.extend(found.into_iter().map(|(_, t)| t));
                }
                Err(DnsError::NotFound) => {}
                Err(e) => return Err(name_error(host, "MX", &e)),
            }
        }
        if targets.is_empty() {
            let addrs = self.host_addrs(host, *port)?;
            if myself.is_some_and(|me| addrs.iter().any(|a| me.is(a))) {
                return Err(loops(host));
            }
            targets.extend(addrs.into_iter().map(|addr| Target {
                host: host.clone(),
                addr,
            }));
        }
        // After the cut at this machine, as in Postfix.
        if self.address_limit > 0 {
            targets.truncate(self.address_limit);
        }
        Ok(Resolved { targets, i_am_mx })
    }
}

/// Shuffles runs of equal keys in a sorted list.
fn shuffle_equal<T, K: PartialEq>(v: &mut [T], key: impl Fn(&T) -> K) {
    let mut start = 0;
    while start < v.len() {
        let mut end = start + 1;
        while end < v.len() && key(&v[end]) == key(&v[start]) {
            end += 1;
        }
        for i in (start + 1..end).rev() {
            let j = start + (random() as usize) % (i - start + 1);
            v.swap(i, j);
        }
        start = end;
    }
}

/// A cheap random number (xorshift seeded from the clock and the
/// thread): only for spreading load among equal MX hosts.
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let addr = &t as *const u64 as u64;
            (t ^ addr.rotate_left(32) ^ u64::from(std::process::id())) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn p(s: &str) -> Result<NextHop, String> {
        parse(s, false, 25, Path::new("/q"))
    }

    fn inet(host: &str, port: u16, mx: bool) -> NextHop {
        NextHop::Inet {
            host: host.into(),
            port,
            mx,
        }
    }

    #[test]
    fn smtp_next_hops() {
        assert_eq!(p("example.com"), Ok(inet("example.com", 25, true)));
        assert_eq!(p("example.com:2525"), Ok(inet("example.com", 2525, true)));
        assert_eq!(
            p("[mail.isp.test]:587"),
            Ok(inet("mail.isp.test", 587, false))
        );
        assert_eq!(
            p("[mail.isp.test]:submission"),
            Ok(inet("mail.isp.test", 587, false))
        );
        assert_eq!(p("[1.2.3.4]"), Ok(inet("1.2.3.4", 25, false)));
        assert_eq!(p("1.2.3.4"), Ok(inet("1.2.3.4", 25, false)));
        assert_eq!(
            p("[ipv6:2001:db8::1]:26"),
            Ok(inet("2001:db8::1", 26, false))
        );
        assert_eq!(p("[::1]"), Ok(inet("::1", 25, false)));
        assert_eq!(p("inet:example.com:26"), Ok(inet("example.com", 26, true)));
        assert!(p("unix:/x").is_err());
        assert!(p("[x").is_err());
        assert!(p("a b").is_err());
        assert!(p("x:0").is_err());
        assert!(p("x:nosuchservice").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn lmtp_next_hops() {
        let l = |s| parse(s, true, 24, Path::new("/q"));
        assert_eq!(l("unix:/run/lmtp"), Ok(NextHop::Unix("/run/lmtp".into())));
        assert_eq!(
            l("unix:private/dovecot-lmtp"),
            Ok(NextHop::Unix("/q/private/dovecot-lmtp".into()))
        );
        assert_eq!(l("inet:127.0.0.1:2424"), Ok(inet("127.0.0.1", 2424, false)));
        assert_eq!(l("mail.test"), Ok(inet("mail.test", 24, false)));
    }

    fn found(list: &[(u16, &str, &str)]) -> Vec<(u16, Target)> {
        list.iter()
            .map(|(pref, host, ip)| {
                (
                    *pref,
                    Target {
                        host: host.to_string(),
                        addr: SocketAddr::new(ip.parse().unwrap(), 25),
                    },
                )
            })
            .collect()
    }

    fn hosts(v: &[(u16, Target)]) -> Vec<&str> {
        v.iter().map(|(_, t)| t.host.as_str()).collect()
    }

    #[test]
    fn mx_list_is_cut_before_this_machine() {
        let mine: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let me = Myself {
            addrs: &mine,
            port: 2525,
        };
        assert!(me.applies(25) && me.applies(2525) && !me.applies(587));
        // Better hosts stay; this machine and every host as preferred as
        // it or less go.
        let mut v = found(&[
            (10, "a", "198.51.100.1"),
            (10, "a", "198.51.100.2"),
            (20, "b", "198.51.100.3"),
            (30, "me", "192.0.2.1"),
            (30, "c", "198.51.100.4"),
            (40, "d", "198.51.100.5"),
        ]);
        assert_eq!(truncate_at_myself("x.test", &mut v, 10, &me), Ok(true));
        assert_eq!(hosts(&v), ["a", "a", "b"]);
        // An IPv4-mapped address of this machine is this machine; the cut
        // is at the first address found, not at the best MX.
        let mut v = found(&[
            (10, "a", "198.51.100.1"),
            (20, "me", "::ffff:192.0.2.1"),
            (20, "c", "198.51.100.4"),
        ]);
        assert_eq!(truncate_at_myself("x.test", &mut v, 10, &me), Ok(true));
        assert_eq!(hosts(&v), ["a"]);
        // Not an MX host: nothing changes.
        let mut v = found(&[(10, "a", "198.51.100.1"), (20, "b", "198.51.100.2")]);
        assert_eq!(truncate_at_myself("x.test", &mut v, 10, &me), Ok(false));
        assert_eq!(v.len(), 2);
        // The best MX (even one of several equal ones): a loop.
        let mut v = found(&[(10, "c", "198.51.100.4"), (10, "me", "2001:db8::1")]);
        let e = truncate_at_myself("x.test", &mut v, 10, &me).unwrap_err();
        assert_eq!(
            (
                e.permanent,
                e.dsn,
                e.reason.as_str(),
                e.final_hop,
                e.best_mx
            ),
            (
                true,
                "5.4.6",
                "mail for x.test loops back to myself",
                true,
                true
            )
        );
        // The best MX (preference 5) has no address and this machine is
        // the best that has one: a temporary failure.
        let mut v = found(&[(10, "me", "192.0.2.1"), (20, "c", "198.51.100.4")]);
        let e = truncate_at_myself("x.test", &mut v, 5, &me).unwrap_err();
        assert_eq!(
            (
                e.permanent,
                e.dsn,
                e.reason.as_str(),
                e.final_hop,
                e.best_mx
            ),
            (
                false,
                "4.4.4",
                "unable to find primary relay for x.test",
                true,
                false
            )
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_in_their_rank() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut v = vec![
                (10, 'a'),
                (10, 'b'),
                (10, 'c'),
                (20, 'd'),
                (30, 'e'),
                (30, 'f'),
            ];
            shuffle_equal(&mut v, |x| x.0);
            assert_eq!(
                v.iter().map(|x| x.0).collect::<Vec<_>>(),
                [10, 10, 10, 20, 30, 30]
            );
            seen_first.insert(v[0].1);
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every equal host comes first sometimes"
        );
    }
}
