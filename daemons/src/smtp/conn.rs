//! One connection to an SMTP or LMTP server: a TCP or UNIX-domain socket,
//! optionally inside TLS, with bounded reply reading and per-command
//! deadlines (the socket timeouts are set before each exchange).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Longest reply line accepted (RFC 5321 says 512; servers exceed it).
const MAX_LINE: usize = 8192;
/// Most lines in one reply (a long EHLO list stays far below).
const MAX_LINES: usize = 200;

/// A socket before TLS.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Stream {
    Plain(Socket),
    Tls(Box<StreamOwned<ClientConnection, Socket>>),
    /// Between states (a failed handshake leaves this).
    Gone,
}

/// How an exchange failed below the SMTP level.
#[derive(Debug)]
pub enum IoFail {
    /// No reply within the deadline.
    Timeout,
    /// The peer closed or reset the connection.
    Lost,
    /// A reply that is not SMTP (too long, bad code, too many lines).
    Garbage(String),
}

impl From<io::Error> for IoFail {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => IoFail::Timeout,
            _ => IoFail::Lost,
        }
    }
}

/// A server reply: the code and the raw lines (`250-SIZE 1000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The text after the code of each line (`SIZE 1000`).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|l| l.get(4..).unwrap_or(""))
    }

    /// The whole reply as Postfix logs it: the lines joined by spaces,
    /// codes included.
    pub fn flat(&self) -> String {
        self.lines.join(" ")
    }

    /// The enhanced status code of the first line, or the class's
    /// generic one (`5.0.0`).
    pub fn dsn(&self) -> String {
        let first = self.texts().next().unwrap_or("");
        let word = first.split(' ').next().unwrap_or("");
        let class = (self.code / 100).to_string();
        if libmail::smtp::reply::is_enhanced(word) && word.starts_with(&class) {
            word.to_string()
        } else {
            format!("{class}.0.0")
        }
    }

    pub fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn temporary(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

pub struct Conn {
    stream: Stream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The socket's timeouts as last set (`None`: not set yet): most
    /// exchanges of a session have the same, set once.
    timeout: std::cell::Cell<Option<Duration>>,
}

impl Conn {
    pub fn new(socket: Socket) -> Conn {
        Conn {
            stream: Stream::Plain(socket),
            rbuf: Vec::new(),
            wbuf: Vec::with_capacity(64 << 10),
            timeout: std::cell::Cell::new(None),
        }
    }

    fn socket(&self) -> Option<&Socket> {
        match &self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(&t.sock),
            Stream::Gone => None,
        }
    }

    /// The deadline of the next exchange (`None`: none).
    pub fn deadline(&self, t: Duration) {
        if self.timeout.get() == Some(t) {
            return;
        }
        if let Some(s) = self.socket() {
            if s.set_timeouts(if t.is_zero() { None } else { Some(t) })
                .is_ok()
            {
                self.timeout.set(Some(t));
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TLS session's parameters, when there is one.
    pub fn tls_state(&self) -> Option<&ClientConnection> {
        match &self.stream {
            Stream::Tls(t) => Some(&t.conn),
            _ => None,
        }
    }

    /// Bytes the server sent that no reply has consumed yet.
    pub fn pending_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Starts TLS on the socket and completes the handshake. Anything
    /// the server sent before is discarded (no injection across the
    /// boundary).
    pub fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<(), String> {
        self.rbuf.clear();
        let sock = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(s) => s,
            other => {
                self.stream = other;
                return Err("TLS already active".into());
            }
        };
        let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        "timeout during the TLS handshake".to_string()
                    }
                    _ => e.to_string(),
                });
            }
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Queues a command line (CRLF added) for the next flush.
    pub fn queue(&mut self, line: &str) {
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    /// Queues raw bytes (message content).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// How much is queued.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> Result<(), IoFail> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = match &mut self.stream {
            Stream::Plain(s) => s.write_all(&self.wbuf),
            Stream::Tls(t) => t.write_all(&self.wbuf).and_then(|_| t.flush()),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        };
        self.wbuf.clear();
        r.map_err(IoFail::from)
    }

    fn fill(&mut self) -> Result<(), IoFail> {
        let mut buf = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut buf),
            Stream::Tls(t) => t.read(&mut buf),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }?;
        if n == 0 {
            return Err(IoFail::Lost);
        }
        self.rbuf.extend_from_slice(&buf[..n]);
        Ok(())
    }

    fn line(&mut self) -> Result<String, IoFail> {
        loop {
            if let Some(i) = self.rbuf.iter().position(|&b| b == b'\n') {
                let mut l: Vec<u8> = self.rbuf.drain(..=i).collect();
                l.pop();
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                return Ok(String::from_utf8_lossy(&l).into_owned());
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(IoFail::Garbage("reply line too long".into()));
            }
            self.fill()?;
        }
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Result<Reply, IoFail> {
        let mut lines = Vec::new();
        let mut code = 0u16;
        loop {
            let l = self.line()?;
            let b = l.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || b[0] < b'2' || b[0] > b'5' {
                return Err(IoFail::Garbage(format!(
                    "malformed reply: {}",
                    printable(&l)
                )));
            }
            let c: u16 = l[..3].parse().unwrap_or(0);
            if lines.is_empty() {
                code = c;
            }
            let more = b.get(3) == Some(&b'-');
            lines.push(l);
            if !more {
                break;
            }
            if lines.len() >= MAX_LINES {
                return Err(IoFail::Garbage("reply has too many lines".into()));
            }
        }
        Ok(Reply { code, lines })
    }

    /// Sends a command and reads its reply.
    pub fn command(&mut self, line: &str) -> Result<Reply, IoFail> {
        self.queue(line);
        self.flush()?;
        self.reply()
    }

    /// Closes the TLS session (close_notify) and the socket.
    pub fn close(mut self) {
        if let Stream::Tls(t) = &mut self.stream {
            t.conn.send_close_notify();
            let _ = t.conn.complete_io(&mut t.sock);
        }
    }
}

/// A reply line fit for a log: control characters replaced, bounded.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::new(Socket::Unix(a)), b)
    }

    #[test]
    fn multi_line_replies_are_joined_and_bounded() {
        let (mut c, mut peer) = pair();
        peer.write_all(b"250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n")
            .unwrap();
        let r = c.reply().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            r.texts().collect::<Vec<_>>(),
            ["mx.example", "SIZE 1000", "8BITMIME"]
        );
        assert_eq!(r.flat(), "250-mx.example 250-SIZE 1000 250 8BITMIME");
        peer.write_all(b"550 5.1.1 <x@y>: unknown\n").unwrap();
        let r = c.reply().unwrap();
        assert_eq!(r.dsn(), "5.1.1");
        peer.write_all(b"451 try later\r\n").unwrap();
        assert_eq!(c.reply().unwrap().dsn(), "4.0.0");
        peer.write_all(b"hello\r\n").unwrap();
        assert!(matches!(c.reply(), Err(IoFail::Garbage(_))));
        peer.write_all(&vec![b'2'; MAX_LINE + 10]).unwrap();
        assert!(matches!(c.reply(), Err(IoFail::Garbage(_))));
    }

    #[test]
    fn a_mismatched_enhanced_code_is_not_trusted() {
        let r = Reply {
            code: 550,
            lines: vec!["550 2.0.0 odd".into()],
        };
        assert_eq!(r.dsn(), "5.0.0");
    }

    #[test]
    fn closed_and_silent_peers() {
        let (mut c, peer) = pair();
        c.deadline(Duration::from_millis(50));
        assert!(matches!(c.reply(), Err(IoFail::Timeout)));
        drop(peer);
        assert!(matches!(c.reply(), Err(IoFail::Lost)));
    }
}
