//! Defaults computed from the host, as Postfix computes them.
//!
//! * `myhostname`: the system host name when it has a dot, else that name
//!   plus `.$mydomain`;
//! * `mydomain`: `$myhostname` minus its first label, or `localdomain` when
//!   `$myhostname` has no dot;
//! * `mynetworks`: from the addresses of the network interfaces, by
//!   `mynetworks_style` (`host`: each address alone; `subnet`: the networks
//!   the interfaces are on; `class`: their class A/B/C networks), IPv4 first,
//!   limited by `inet_protocols`;
//! * `process_id` and `process_name`: of the running program.
//!
//! Nothing here asks DNS, like Postfix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The fallback domain when the host name has none.
pub const DEFAULT_DOMAIN: &str = "localdomain";

/// The system host name (`gethostname`).
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates
    // on success (we also bound the search below).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `myhostname` when main.cf does not set it; `mydomain` is the effective
/// value of `mydomain` (needed only when the host name has no dot).
pub fn default_myhostname(system: &str, mydomain: impl FnOnce() -> String) -> String {
    if system.contains('.') {
        system.to_string()
    } else {
        format!("{}.{}", system, mydomain())
    }
}

/// `mydomain` when main.cf does not set it.
pub fn default_mydomain(myhostname: &str) -> String {
    match myhostname.split_once('.') {
        Some((_, rest)) if !rest.is_empty() => rest.to_string(),
        _ => DEFAULT_DOMAIN.to_string(),
    }
}

/// One address of a local network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Addresses of the local interfaces, in `getifaddrs` order.
pub fn interface_addresses() -> Vec<InterfaceAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: family tells which sockaddr type the pointers hold.
        unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    let addr = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    let prefix = u32::from_be(m.sin_addr.s_addr).count_ones() as u8;
                    out.push(InterfaceAddr {
                        addr: IpAddr::V4(addr),
                        prefix,
                    });
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                    let addr = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    let prefix = m
                        .sin6_addr
                        .s6_addr
                        .iter()
                        .map(|b| b.count_ones())
                        .sum::<u32>() as u8;
                    out.push(InterfaceAddr {
                        addr: IpAddr::V6(addr),
                        prefix,
                    });
                }
                _ => {}
            }
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Which address families `inet_protocols` enables.
pub fn protocols(inet_protocols: &str) -> Result<(bool, bool), String> {
    let mut v4 = false;
    let mut v6 = false;
    for word in inet_protocols
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word.to_ascii_lowercase().as_str() {
            "all" => {
                v4 = true;
                v6 = true;
            }
            "ipv4" => v4 = true,
            "ipv6" => v6 = true,
            _ => {
                return Err(format!(
                    "unknown inet_protocols value \"{word}\" in \"{inet_protocols}\""
                ))
            }
        }
    }
    Ok((v4, v6))
}

/// `mynetworks` computed from the interfaces, Postfix's way.
pub fn default_mynetworks(
    style: &str,
    ifaces: &[InterfaceAddr],
    v4: bool,
    v6: bool,
) -> Result<String, String> {
    let words: Vec<&str> = style.split_ascii_whitespace().collect();
    if words.len() != 1 {
        return Err(format!(
            "bad mynetworks_style value: {}; specify exactly one value",
            style.trim()
        ));
    }
    let style_text = style;
    let style = words[0].to_ascii_lowercase();
    if !matches!(style.as_str(), "host" | "subnet" | "class") {
        return Err(format!(
            "unknown mynetworks mask style value \"{}\" in \"{}\"",
            words[0],
            style_text.trim()
        ));
    }
    let mut out: Vec<String> = Vec::new();
    let ordered = ifaces
        .iter()
        .filter(|i| i.addr.is_ipv4() && v4)
        .chain(ifaces.iter().filter(|i| i.addr.is_ipv6() && v6));
    for i in ordered {
        let entry = match (i.addr, style.as_str()) {
            (IpAddr::V4(a), "host") => format!("{a}/32"),
            (IpAddr::V6(a), "host") => format!("[{a}]/128"),
            (IpAddr::V4(a), "class") => {
                let first = a.octets()[0];
                let len = if first < 128 {
                    8
                } else if first < 192 {
                    16
                } else if first < 224 {
                    24
                } else {
                    32
                };
                format!("{}/{}", mask_v4(a, len), len)
            }
            (IpAddr::V4(a), _) => format!("{}/{}", mask_v4(a, i.prefix), i.prefix),
            (IpAddr::V6(a), _) => format!("[{}]/{}", mask_v6(a, i.prefix), i.prefix),
        };
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(out.join(" "))
}

fn mask_v4(a: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(a: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    };
    Ipv6Addr::from(bits & mask)
}

/// The interface addresses named by `inet_interfaces` (`all`,
/// `loopback-only`, or a list of addresses and host names), each with the
/// netmask of its interface. A name that is not a local address is an
/// error, worded like Postfix's.
pub fn listen_interfaces(
    inet_interfaces: &str,
    ifaces: &[InterfaceAddr],
) -> Result<Vec<InterfaceAddr>, String> {
    let words: Vec<&str> = inet_interfaces
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if words.iter().any(|w| w.eq_ignore_ascii_case("all")) {
        return Ok(ifaces.to_vec());
    }
    let mut out: Vec<InterfaceAddr> = Vec::new();
    let add = |i: &InterfaceAddr, out: &mut Vec<InterfaceAddr>| {
        if !out.contains(i) {
            out.push(*i);
        }
    };
    for w in words {
        if w.eq_ignore_ascii_case("loopback-only") {
            for i in ifaces.iter().filter(|i| i.addr.is_loopback()) {
                add(i, &mut out);
            }
            continue;
        }
        let literal = w.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
            Ok(a) => vec![a],
            Err(_) => {
                use std::net::ToSocketAddrs;
                (w, 0)
                    .to_socket_addrs()
                    .map(|it| it.map(|sa| sa.ip()).collect())
                    .unwrap_or_default()
            }
        };
        let mut found = false;
        for a in addrs {
            if let Some(i) = ifaces.iter().find(|i| i.addr == a) {
                add(i, &mut out);
                found = true;
            }
        }
        if !found {
            return Err(format!(
                "parameter inet_interfaces: no local interface found for {w}"
            ));
        }
    }
    Ok(out)
}

/// This machine's addresses, as Postfix's `own_inet_addr_list` and
/// `proxy_inet_addr_list` together: those `inet_interfaces` names (every
/// interface's for `all`) and those of `proxy_interfaces` (addresses,
/// `[addresses]` or host names, looked up now; a name that is not found is
/// an error, as in Postfix), in canonical form (an IPv4-mapped IPv6
/// address as IPv4), each once. Used by smtpd's `permit_mx_backup` and by
/// the smtp client's mail-loop check.
pub fn own_addresses(inet_interfaces: &str, proxy_interfaces: &str) -> Result<Vec<IpAddr>, String> {
    own_addresses_in(inet_interfaces, proxy_interfaces, &interface_addresses())
}

/// [`own_addresses`] with the interfaces given.
fn own_addresses_in(
    inet_interfaces: &str,
    proxy_interfaces: &str,
    ifaces: &[InterfaceAddr],
) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut add = |a: IpAddr| {
        let a = a.to_canonical();
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for i in listen_interfaces(inet_interfaces, ifaces)? {
        add(i.addr);
    }
    for host in crate::config::params::split_list(proxy_interfaces) {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
            Ok(a) => vec![a],
            Err(_) => {
                use std::net::ToSocketAddrs;
                (host, 0)
                    .to_socket_addrs()
                    .map(|it| it.map(|sa| sa.ip()).collect())
                    .unwrap_or_default()
            }
        };
        if addrs.is_empty() {
            return Err(format!(
                "config variable proxy_interfaces: host not found: {host}"
            ));
        }
        for a in addrs {
            add(a);
        }
    }
    Ok(out)
}

/// The running program's name, as Postfix's `process_name` (basename of
/// argv[0]).
pub fn process_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "facteur".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifs() -> Vec<InterfaceAddr> {
        vec![
            InterfaceAddr {
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 8,
            },
            InterfaceAddr {
                addr: "::1".parse().unwrap(),
                prefix: 128,
            },
            InterfaceAddr {
                addr: "172.20.3.4".parse().unwrap(),
                prefix: 24,
            },
            InterfaceAddr {
                addr: "fe80::fc:ff:fe00:1".parse().unwrap(),
                prefix: 64,
            },
        ]
    }

    #[test]
    fn styles() {
        assert_eq!(
            default_mynetworks("host", &ifs(), true, true).unwrap(),
            "127.0.0.1/32 172.20.3.4/32 [::1]/128 [fe80::fc:ff:fe00:1]/128"
        );
        assert_eq!(
            default_mynetworks("subnet", &ifs(), true, true).unwrap(),
            "127.0.0.0/8 172.20.3.0/24 [::1]/128 [fe80::]/64"
        );
        assert_eq!(
            default_mynetworks("class", &ifs(), true, false).unwrap(),
            "127.0.0.0/8 172.20.0.0/16"
        );
        assert!(default_mynetworks("", &ifs(), true, true).is_err());
        assert!(default_mynetworks("bogus", &ifs(), true, true).is_err());
    }

    #[test]
    fn listen_interfaces_select_addresses() {
        let all = ifs();
        assert_eq!(listen_interfaces("all", &all).unwrap(), all);
        let lo = listen_interfaces("loopback-only", &all).unwrap();
        assert_eq!(lo.len(), 2);
        assert!(lo.iter().all(|i| i.addr.is_loopback()));
        let two = listen_interfaces("172.20.3.4, [::1]", &all).unwrap();
        assert_eq!(two, vec![all[2], all[1]]);
        assert_eq!(
            listen_interfaces("10.9.9.9", &all).unwrap_err(),
            "parameter inet_interfaces: no local interface found for 10.9.9.9"
        );
    }

    #[test]
    fn own_addresses_are_the_interfaces_and_the_proxy_addresses() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        // `all`: every interface address, then the proxy ones, each once,
        // literal or in brackets, an IPv4-mapped one as IPv4.
        assert_eq!(
            own_addresses_in(
                "all",
                "[192.0.2.7], 192.0.2.8 ::ffff:192.0.2.9 172.20.3.4",
                &ifs()
            )
            .unwrap(),
            vec![
                v4("127.0.0.1"),
                v4("::1"),
                v4("172.20.3.4"),
                v4("fe80::fc:ff:fe00:1"),
                v4("192.0.2.7"),
                v4("192.0.2.8"),
                v4("192.0.2.9"),
            ]
        );
        // Named interfaces only.
        assert_eq!(
            own_addresses_in("172.20.3.4", "", &ifs()).unwrap(),
            vec![v4("172.20.3.4")]
        );
        assert_eq!(
            own_addresses_in("loopback-only", "[2001:db8::1]", &ifs()).unwrap(),
            vec![v4("127.0.0.1"), v4("::1"), v4("2001:db8::1")]
        );
        // An inet_interfaces address that is not this machine's.
        assert_eq!(
            own_addresses_in("10.9.9.9", "", &ifs()).unwrap_err(),
            "parameter inet_interfaces: no local interface found for 10.9.9.9"
        );
        // This machine: `all` has the loopback address; an explicit one
        // is alone; a proxy host name is looked up (/etc/hosts).
        let all = own_addresses("all", "").unwrap();
        assert!(all.contains(&v4("127.0.0.1")), "{all:?}");
        assert_eq!(
            own_addresses("127.0.0.1", "192.0.2.1").unwrap(),
            vec![v4("127.0.0.1"), v4("192.0.2.1")]
        );
        let named = own_addresses("127.0.0.1", "localhost").unwrap();
        assert_eq!(named[0], v4("127.0.0.1"));
    }

    #[test]
    fn names() {
        assert_eq!(default_mydomain("host.example.com"), "example.com");
        assert_eq!(default_mydomain("a.b"), "b");
        assert_eq!(default_mydomain("vm"), "localdomain");
        assert_eq!(
            default_myhostname("vm", || "example.org".into()),
            "vm.example.org"
        );
        assert_eq!(
            default_myhostname("mx.example.net", || unreachable!()),
            "mx.example.net"
        );
    }

    #[test]
    fn interfaces_include_loopback() {
        let all = interface_addresses();
        assert!(all.iter().any(|i| i.addr.is_loopback()), "{all:?}");
    }
}
