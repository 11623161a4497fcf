//! Where a master.cf service listens, and binding it.
//!
//! * `inet`: column 1 is `port`, `host:port` or `[v6]:port`; without a
//!   host, `inet_interfaces` decides (`all`, `loopback-only`, or a list of
//!   addresses or names), filtered by `inet_protocols`. Each address is
//!   its own listener (and its own process, see the module above).
//!   IPv6 sockets are IPV6_V6ONLY so `0.0.0.0` and `::` can both be bound.
//! * `unix`: a UNIX stream socket at `public/NAME` or `private/NAME`,
//!   mode 0666 (the directory modes protect private services, as in
//!   Postfix).
//! * `fifo`: a FIFO at the same place, mode 0622, opened read-write so
//!   it never reports end-of-file.
//!
//! Every descriptor is close-on-exec and non-blocking; master hands one
//! to a child at fd 3, which accepts itself and handles EAGAIN.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libmail::config::mastercf::ServiceType;
use libmail::config::params::{split_list, Params};

/// Most addresses one inet service binds (a host name can resolve to many).
pub const MAX_ADDRESSES: usize = 16;

/// One listening endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Fifo(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) | Endpoint::Fifo(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Which IP versions `inet_protocols` allows: (ipv4, ipv6, ipv6 required).
/// With `all`, IPv6 is tried but not required (a host without IPv6 still
/// runs).
fn protocols(params: &Params) -> (bool, bool, bool) {
    let v = params
        .value("inet_protocols")
        .unwrap_or_else(|_| "all".into());
    let mut v4 = false;
    let mut v6 = false;
    let mut v6_required = false;
    for p in split_list(&v) {
        match p.to_ascii_lowercase().as_str() {
            "all" => {
                v4 = true;
                v6 = true;
            }
            "ipv4" => v4 = true,
            "ipv6" => {
                v6 = true;
                v6_required = true;
            }
            _ => {}
        }
    }
    if !v4 && !v6 {
        v4 = true;
    }
    (v4, v6, v6_required)
}

/// A TCP port: a number or a service name (`smtp`, `submission`).
pub fn port(text: &str) -> Result<u16, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("bad port number: {text}")),
        };
    }
    if let Ok(name) = CString::new(text) {
        // SAFETY: two valid C strings; the result points into libc's static
        // storage, read at once (master is single-threaded).
        let p = unsafe {
            let ent = libc::getservbyname(name.as_ptr(), c"tcp".as_ptr());
            if ent.is_null() {
                None
            } else {
                Some(u16::from_be((*ent).s_port as u16))
            }
        };
        if let Some(p) = p.filter(|&p| p > 0) {
            return Ok(p);
        }
    }
    match text {
        "smtp" => Ok(25),
        "submission" => Ok(587),
        "submissions" | "smtps" => Ok(465),
        "lmtp" => Ok(24),
        "qmqp" => Ok(628),
        _ => Err(format!("unknown service: {text}/tcp")),
    }
}

/// Splits an inet service name into host (if any) and port.
fn split_host_port(name: &str) -> Result<(Option<&str>, &str), String> {
    if let Some(rest) = name.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("bad inet service name: {name}"))?;
        return Ok((Some(host), port));
    }
    match name.rsplit_once(':') {
        Some((host, port)) if host.is_empty() || host == "*" => Ok((None, port)),
        Some((host, port)) => Ok((Some(host), port)),
        None => Ok((None, name)),
    }
}

/// The addresses of `host` (an IP address, `[v6]`, or a name).
fn host_addrs(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    (h, port)
        .to_socket_addrs()
        .map(|a| a.map(|s| s.ip()).take(MAX_ADDRESSES).collect())
        .map_err(|e| format!("host not found: {h}: {e}"))
}

/// The endpoints of an inet service. The flag says whether each one must
/// bind (false for IPv6 tried under `inet_protocols = all`).
pub fn inet_endpoints(name: &str, params: &Params) -> Result<Vec<(Endpoint, bool)>, String> {
    let (host, port_text) = split_host_port(name)?;
    let port = port(port_text)?;
    let (v4, v6, v6_required) = protocols(params);
    let mut ips: Vec<IpAddr> = Vec::new();
    match host {
        Some(h) => ips = host_addrs(h, port)?,
        None => {
            let ifs = params
                .value("inet_interfaces")
                .unwrap_or_else(|_| "all".into());
            for item in split_list(&ifs) {
                match item.to_ascii_lowercase().as_str() {
                    "all" => {
                        ips.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                        ips.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
                    }
                    "loopback-only" => {
                        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
                        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
                    }
                    _ => ips.extend(host_addrs(item, port)?),
                }
            }
        }
    }
    let mut out: Vec<(Endpoint, bool)> = Vec::new();
    for ip in ips {
        let (allowed, required) = match ip {
            IpAddr::V4(_) => (v4, true),
            IpAddr::V6(_) => (v6, v6_required || host.is_some()),
        };
        let ep = Endpoint::Tcp(SocketAddr::new(ip, port));
        if allowed && !out.iter().any(|(e, _)| *e == ep) && out.len() < MAX_ADDRESSES {
            out.push((ep, required));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{name}: no address to listen on (inet_interfaces / inet_protocols)"
        ));
    }
    Ok(out)
}

/// The endpoints of a service of type `kind` named `name`.
pub fn endpoints(
    kind: ServiceType,
    name: &str,
    private: bool,
    queue_dir: &Path,
    params: &Params,
) -> Result<Vec<(Endpoint, bool)>, String> {
    match kind {
        ServiceType::Inet => inet_endpoints(name, params),
        ServiceType::Unix | ServiceType::Fifo => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(format!("bad service name: {name}"));
            }
            let path = libmail::ipc::service_path(queue_dir, private, name);
            Ok(vec![(
                if kind == ServiceType::Unix {
                    Endpoint::Unix(path)
                } else {
                    Endpoint::Fifo(path)
                },
                true,
            )])
        }
        ServiceType::UnixDgram | ServiceType::Pass => {
            Err(format!("service type {kind} is not supported"))
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Binds an endpoint: a non-blocking, close-on-exec descriptor.
pub fn bind(ep: &Endpoint, backlog: i32) -> io::Result<OwnedFd> {
    match ep {
        Endpoint::Tcp(a) => bind_tcp(*a, backlog),
        Endpoint::Unix(p) => bind_unix(p, backlog),
        Endpoint::Fifo(p) => open_fifo(p),
    }
}

fn set_int_opt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to an int of the right size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() has no memory preconditions; the result is owned here.
    let fd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        ))?)
    };
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    if addr.is_ipv6() {
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    let (sa, len) = libmail::net::sockaddr(&addr);
    // SAFETY: a valid socket and a socket address of the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    cvt(r)?;
    // SAFETY: a bound socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// Removes what a previous run left at `path` (a socket or a FIFO); any
/// other kind of file is an error, never removed.
fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() || m.file_type().is_fifo() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::other(format!(
            "{} exists and is not a socket or FIFO",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn bind_unix(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    remove_stale(path)?;
    let l = std::os::unix::net::UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let fd: OwnedFd = l.into();
    // SAFETY: a listening socket; listen again only sets the backlog.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

fn open_fifo(path: &Path) -> io::Result<OwnedFd> {
    let reuse = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    if !reuse {
        remove_stale(path)?;
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("NUL in path"))?;
        // SAFETY: a valid C string.
        cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o622) })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o622))?;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // SAFETY: taking ownership of the descriptor the File owned.
    Ok(unsafe { OwnedFd::from_raw_fd(f.into_raw_fd()) })
}

/// Removes a socket or FIFO master created (when a service goes away).
pub fn unlink(ep: &Endpoint) {
    if let Endpoint::Unix(p) | Endpoint::Fifo(p) = ep {
        let _ = remove_stale(p);
    }
}

/// Sends a wakeup trigger (`W`) to a unix or fifo endpoint without ever
/// blocking master: a non-blocking connect (a full backlog is skipped:
/// the service has work queued anyway) or a non-blocking FIFO write.
pub fn wakeup(ep: &Endpoint) -> io::Result<()> {
    match ep {
        Endpoint::Fifo(p) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)?;
            f.write_all(b"W")
        }
        Endpoint::Unix(p) => {
            let bytes = p.as_os_str().as_bytes();
            // SAFETY: a zeroed sockaddr_un is valid.
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            if bytes.len() >= sun.sun_path.len() {
                return Err(io::Error::other("socket path too long"));
            }
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            // SAFETY: socket() has no memory preconditions; owned at once.
            let fd = unsafe {
                OwnedFd::from_raw_fd(cvt(libc::socket(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    0,
                ))?)
            };
            // SAFETY: a valid socket and sockaddr_un of the size given.
            cvt(unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&sun as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            })?;
            // SAFETY: one byte from a valid buffer to a connected socket.
            cvt(unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    b"W".as_ptr().cast(),
                    1,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                ) as libc::c_int
            })?;
            Ok(())
        }
        Endpoint::Tcp(_) => Err(io::Error::other("wakeup of inet services is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("25").unwrap(), (None, "25"));
        assert_eq!(
            split_host_port("127.0.0.1:10025").unwrap(),
            (Some("127.0.0.1"), "10025")
        );
        assert_eq!(split_host_port("[::1]:25").unwrap(), (Some("::1"), "25"));
        assert_eq!(split_host_port("*:smtp").unwrap(), (None, "smtp"));
        assert!(split_host_port("[::1").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(port("25").unwrap(), 25);
        assert_eq!(port("smtp").unwrap(), 25);
        assert_eq!(port("submission").unwrap(), 587);
        assert!(port("0").is_err());
        assert!(port("99999").is_err());
        assert!(port("no-such-service-name").is_err());
    }

    fn params(main_cf: &str) -> Params {
        let dir = std::env::temp_dir().join(format!(
            "facteur-listen-{}-{}",
            std::process::id(),
            main_cf.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.cf"), main_cf).unwrap();
        let p = Params::load(dir.to_str().unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        p
    }

    #[test]
    fn interfaces() {
        let p = params("inet_interfaces = loopback-only\ninet_protocols = ipv4\n");
        let e = inet_endpoints("2525", &p).unwrap();
        assert_eq!(
            e,
            vec![(Endpoint::Tcp("127.0.0.1:2525".parse().unwrap()), true)]
        );
        let p = params("inet_interfaces = loopback-only\ninet_protocols = all\n");
        let e = inet_endpoints("2525", &p).unwrap();
        assert_eq!(e.len(), 2);
        assert!(!e[1].1, "IPv6 under `all` is optional");
        let p = params("inet_interfaces = all\ninet_protocols = ipv4\n");
        let e = inet_endpoints("smtp", &p).unwrap();
        assert_eq!(e[0].0, Endpoint::Tcp("0.0.0.0:25".parse().unwrap()));
        let e = inet_endpoints("[::1]:26", &p);
        assert!(e.is_err(), "IPv6 address with ipv4 only: {e:?}");
    }
}
