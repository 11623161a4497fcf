//! Socket addresses for the C calls that take them (`bind`, `getnameinfo`).

use std::net::SocketAddr;

/// `sa` as a `sockaddr_storage` holding a `sockaddr_in` or
/// `sockaddr_in6`, with the length of the variant.
pub fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is valid; we fill one variant.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            (
                st,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                st,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// A TCP connection to `to` from the local address `from` (port 0: any),
/// within `timeout` (zero: the system's). What std lacks: binding a
/// source address before connecting (`smtp_bind_address`).
pub fn connect_from(
    from: std::net::IpAddr,
    to: &SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::io::Error;
    use std::os::fd::{FromRawFd, OwnedFd};
    if from.is_ipv4() != to.is_ipv4() {
        return Err(Error::new(
            std::io::ErrorKind::InvalidInput,
            "source and destination address families differ",
        ));
    }
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let (src, src_len) = sockaddr(&SocketAddr::new(from, 0));
    // SAFETY: a valid sockaddr of the stated length.
    if unsafe { libc::bind(fd, (&src as *const libc::sockaddr_storage).cast(), src_len) } != 0 {
        return Err(Error::last_os_error());
    }
    let stream = std::net::TcpStream::from(owned);
    stream.set_nonblocking(!timeout.is_zero())?;
    let (dst, dst_len) = sockaddr(to);
    // SAFETY: a valid sockaddr of the stated length.
    let r = unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_storage).cast(), dst_len) };
    if r != 0 {
        let e = Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            return Err(Error::from(std::io::ErrorKind::TimedOut));
        }
        if n < 0 {
            return Err(Error::last_os_error());
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_from_a_chosen_loopback_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let s = connect_from(
            "127.0.0.9".parse().unwrap(),
            &to,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.9");
        assert_eq!(s.peer_addr().unwrap(), to);
        let closed = {
            let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l2.local_addr().unwrap()
        };
        let e = connect_from(
            "127.0.0.1".parse().unwrap(),
            &closed,
            std::time::Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
