//! A client for Dovecot's authentication protocol (version 1.x), the
//! server side of SMTP AUTH with `smtpd_sasl_type = dovecot`.
//!
//! Dovecot's auth server (the `auth-client` listener, or a TCP port)
//! knows the mechanisms and the passwords; the MTA relays base64 payloads.
//! The wire format (lines end in LF, fields are separated by TABs):
//!
//! ```text
//! C: VERSION 1 0            C: CPID <pid>
//! S: VERSION 1 2            S: MECH PLAIN plaintext   ...   S: SPID, CUID, COOKIE   S: DONE
//! C: AUTH <id> PLAIN service=smtp nologin lip=.. rip=.. lport=.. rport=.. [secured] [resp=<b64>]
//! S: CONT <id> <b64>        C: CONT <id> <b64>        (as many rounds as the mechanism needs)
//! S: OK <id> user=<name> ...    or    S: FAIL <id> [user=..] [reason=..] [code=temp_fail|temp] ...
//! ```
//!
//! What this module does, and why:
//!
//! * **Handshake** on connect: VERSION and CPID, then lines up to `DONE`;
//!   a major version other than 1 is refused, as is a socket that sends
//!   `SPID` before any `MECH` (auth-master or auth-userdb, not
//!   auth-client: Postfix's check). Unknown lines and fields are ignored.
//!   Mechanisms flagged `private` are dropped, as Postfix drops them.
//! * **One exchange at a time** on one connection, with request ids
//!   counting up; a reply for another id (a late answer to an exchange the
//!   client aborted) is skipped. [`Dovecot::start`] and
//!   [`Dovecot::respond`] each send one line and wait for the answer to
//!   it; each returns a [`Step`], so the SMTP session never sees the
//!   protocol. Blocking I/O with a timeout on every read and write:
//!   smtpd calls this where blocking is allowed.
//! * **Only offered mechanisms are requested**: Dovecot drops the whole
//!   connection when asked for a mechanism it did not list, so the name is
//!   checked first against the list filtered by the [`SecurityPolicy`]
//!   (Postfix's `Invalid authentication mechanism`).
//! * **Base64 is checked** before it is passed on (Postfix's
//!   `Invalid base64 data in initial response` / `... continued
//!   response`); RFC 4954's `=` (empty initial response) is sent as
//!   `resp==`, which Dovecot decodes as empty (a bare `resp=` from a
//!   version 1.0 client means "no initial response").
//! * **Bounded**: line length ([`MAX_LINE`]), handshake lines and
//!   mechanisms ([`MAX_MECHANISMS`]), challenge rounds per exchange
//!   ([`MAX_ROUNDS`]), skipped lines while waiting ([`MAX_SKIPPED`]).
//! * **Reconnects**: a connection the server closed (Dovecot restarted)
//!   is noticed before the next request is sent, and a new one is made;
//!   a connection lost in the middle of an exchange ends that exchange as
//!   a temporary failure and is replaced by the next one.
//!
//! Temporary failures: Postfix 3.7 answers 535 even when Dovecot says
//! `code=temp_fail` (it only treats a lost connection as temporary).
//! Facteur reports `temp` and `code=temp_fail` as temporary, so smtpd
//! answers `454 4.7.0 Temporary authentication failure` (RFC 4954 §6),
//! and a client does not take a backend outage for a wrong password.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{base64, filter, printable, MechFlags, Mechanism, SecurityPolicy, Step};

/// The protocol major version spoken (and the only one accepted).
pub const MAJOR_VERSION: u32 = 1;
/// The minor version announced (Postfix's).
pub const MINOR_VERSION: u32 = 0;
/// Longest line accepted from the server, in bytes.
pub const MAX_LINE: usize = 65536;
/// Most mechanisms accepted in a handshake.
pub const MAX_MECHANISMS: usize = 64;
/// Most lines accepted in a handshake before `DONE`.
pub const MAX_HANDSHAKE_LINES: usize = MAX_MECHANISMS + 64;
/// Most challenges (`CONT` from the server) in one exchange. PLAIN needs
/// at most 1, LOGIN 2, SCRAM 2, DIGEST-MD5 2.
pub const MAX_ROUNDS: usize = 16;
/// Most unrelated lines (other ids, unknown commands) skipped while
/// waiting for the answer to a request.
pub const MAX_SKIPPED: usize = 64;
/// Postfix's timeout for every read and write on the auth connection
/// (`AUTH_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the auth server listens: `smtpd_sasl_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A UNIX stream socket.
    Unix(PathBuf),
    /// `inet:host:port` (`inet:[::1]:port` for IPv6).
    Inet { host: String, port: u16 },
}

impl Endpoint {
    /// Parses `smtpd_sasl_path` as Postfix does: `inet:host:port` is TCP;
    /// anything else (with an optional `unix:` prefix) is a socket path,
    /// relative to `queue_directory` when it is not absolute (smtpd runs
    /// in the queue directory, so Postfix's relative paths land there:
    /// `private/auth` is `$queue_directory/private/auth`).
    pub fn parse(value: &str, queue_directory: &Path) -> Result<Endpoint, Error> {
        let bad = |why: &str| Error::BadPath(format!("{value}: {why}"));
        let value_t = value.trim();
        if let Some(hp) = value_t.strip_prefix("inet:") {
            let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
                let (h, p) = rest
                    .split_once("]:")
                    .ok_or_else(|| bad("expected [host]:port"))?;
                (h, p)
            } else {
                hp.rsplit_once(':')
                    .ok_or_else(|| bad("expected host:port"))?
            };
            if host.is_empty() {
                return Err(bad("missing host"));
            }
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?;
            return Ok(Endpoint::Inet {
                host: host.to_string(),
                port,
            });
        }
        let p = value_t.strip_prefix("unix:").unwrap_or(value_t);
        if p.is_empty() {
            return Err(bad("empty path"));
        }
        let p = Path::new(p);
        Ok(Endpoint::Unix(if p.is_absolute() {
            p.to_path_buf()
        } else {
            queue_directory.join(p)
        }))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            Endpoint::Inet { host, port } => write!(f, "inet:{host}:{port}"),
        }
    }
}

/// Why there is no usable connection. The texts follow Postfix's
/// warnings (`SASL: Connect to Dovecot auth socket '...' failed: ...`).
#[derive(Debug)]
pub enum Error {
    /// `smtpd_sasl_path` cannot be used.
    BadPath(String),
    /// Connecting failed.
    Connect { endpoint: String, source: io::Error },
    /// Reading or writing failed (timeouts included) during the handshake.
    Io(io::Error),
    /// The server speaks another major version.
    Version { major: u32 },
    /// The socket is not an auth-client socket (SPID before any MECH).
    WrongSocket,
    /// Anything else the server did wrong.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadPath(s) => write!(f, "SASL: bad Dovecot auth socket path: {s}"),
            Error::Connect { endpoint, source } => write!(
                f,
                "SASL: Connect to Dovecot auth socket '{endpoint}' failed: {source}"
            ),
            Error::Io(e) => write!(f, "SASL: Couldn't complete the handshake: {e}"),
            Error::Version { major } => write!(
                f,
                "SASL: Protocol version mismatch ({major} vs. {MAJOR_VERSION})"
            ),
            Error::WrongSocket => write!(
                f,
                "SASL: Connected to wrong auth socket (auth-master instead of auth-client)"
            ),
            Error::Protocol(s) => write!(f, "SASL: Protocol error: {s}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The SMTP session's side of a request: what Dovecot is told about the
/// client (for its logs, `%{rip}` variables and penalties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// `service=` (`smtpd_sasl_service`, `smtp` by default).
    pub service: String,
    /// The server's end: `lip=`, `lport=`.
    pub local: Option<SocketAddr>,
    /// The client's end: `rip=`, `rport=`.
    pub remote: Option<SocketAddr>,
    /// TLS is active: `secured` is sent, and the TLS security options
    /// choose the mechanisms.
    pub secured: bool,
}

impl ClientInfo {
    /// For `service=smtp`.
    pub fn new(local: Option<SocketAddr>, remote: Option<SocketAddr>, secured: bool) -> ClientInfo {
        ClientInfo {
            service: "smtp".to_string(),
            local,
            remote,
            secured,
        }
    }
}

/// The byte stream to the server.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// Whether the server has closed its end: a non-blocking peek that
    /// sees end-of-file (or an error). Pending data or nothing to read
    /// means open.
    fn closed_by_peer(&self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        };
        let mut b = [0u8; 1];
        // SAFETY: `fd` is an open socket owned by `self` for the whole
        // call, and `b` is a valid one-byte buffer.
        let n = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => {
                let e = io::Error::last_os_error();
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                )
            }
        }
    }
}

struct Conn {
    reader: BufReader<Stream>,
}

/// A line from the server, or why there is none.
enum Line {
    Text(String),
    Eof,
}

impl Conn {
    fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Conn, Error> {
        let err = |source| Error::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let stream = match endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).map_err(err)?;
                s.set_read_timeout(Some(timeout)).map_err(err)?;
                s.set_write_timeout(Some(timeout)).map_err(err)?;
                Stream::Unix(s)
            }
            Endpoint::Inet { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(err)?
                    .collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| err(last))?;
                s.set_read_timeout(Some(timeout)).map_err(err)?;
                s.set_write_timeout(Some(timeout)).map_err(err)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        self.reader.get_mut().write_all(line.as_bytes())
    }

    /// One line without its LF, at most [`MAX_LINE`] bytes.
    fn read_line(&mut self) -> io::Result<Line> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "line too long from authentication server",
            ));
        } else {
            // End of file in the middle of a line.
            return Ok(Line::Eof);
        }
        String::from_utf8(buf)
            .map(Line::Text)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 line"))
    }

    /// Handshake: returns the mechanisms (private ones dropped).
    fn handshake(&mut self) -> Result<Vec<Mechanism>, Error> {
        self.send(&format!(
            "VERSION\t{MAJOR_VERSION}\t{MINOR_VERSION}\nCPID\t{}\n",
            std::process::id()
        ))
        .map_err(Error::Io)?;
        let mut mechs = Vec::new();
        let (mut version, mut have_mech) = (false, false);
        for _ in 0..MAX_HANDSHAKE_LINES {
            let line = match self.read_line().map_err(Error::Io)? {
                Line::Text(l) => l,
                Line::Eof => {
                    return Err(Error::Protocol(
                        "connection closed during the handshake".into(),
                    ))
                }
            };
            let mut f = line.split('\t');
            match f.next().unwrap_or("") {
                "VERSION" => {
                    let major = f.next().and_then(|v| v.parse::<u32>().ok());
                    let minor = f.next().and_then(|v| v.parse::<u32>().ok());
                    match (major, minor) {
                        (Some(MAJOR_VERSION), Some(_)) => version = true,
                        (Some(major), Some(_)) => return Err(Error::Version { major }),
                        _ => return Err(Error::Protocol("bad VERSION line".into())),
                    }
                }
                "MECH" => {
                    have_mech = true;
                    let name = f.next().unwrap_or("");
                    if !valid_mech_name(name) {
                        return Err(Error::Protocol(format!(
                            "bad mechanism name \"{}\"",
                            printable(name)
                        )));
                    }
                    let flags = f
                        .filter_map(MechFlags::from_dovecot)
                        .fold(MechFlags::empty(), MechFlags::union);
                    if flags.contains(MechFlags::PRIVATE) {
                        continue;
                    }
                    if mechs.len() == MAX_MECHANISMS {
                        return Err(Error::Protocol(format!(
                            "more than {MAX_MECHANISMS} mechanisms"
                        )));
                    }
                    mechs.push(Mechanism {
                        name: name.to_string(),
                        flags,
                    });
                }
                "SPID" if !have_mech => return Err(Error::WrongSocket),
                "DONE" => {
                    if !version {
                        return Err(Error::Protocol("no VERSION before DONE".into()));
                    }
                    return Ok(mechs);
                }
                _ => {}
            }
        }
        Err(Error::Protocol(format!(
            "no DONE within {MAX_HANDSHAKE_LINES} handshake lines"
        )))
    }
}

/// A mechanism name as RFC 4422 allows: 1 to 20 of `A-Z 0-9 - _`
/// (lower case tolerated).
fn valid_mech_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Dovecot's `str_tabescape`: 0x01 → `\x01 1`, TAB → `\x01 t`,
/// CR → `\x01 r`, LF → `\x01 n`, NUL → `\x01 0`.
pub fn tab_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{1}' => out.push_str("\u{1}1"),
            '\t' => out.push_str("\u{1}t"),
            '\r' => out.push_str("\u{1}r"),
            '\n' => out.push_str("\u{1}n"),
            '\0' => out.push_str("\u{1}0"),
            c => out.push(c),
        }
    }
    out
}

/// The reverse of [`tab_escape`]; an unknown escape keeps its character.
pub fn tab_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

/// The exchange in progress.
#[derive(Debug)]
struct Pending {
    id: u32,
    rounds: usize,
}

/// A connection to Dovecot's auth server, made and remade as needed.
///
/// Typical use by an SMTP session (one exchange at a time):
///
/// ```no_run
/// use libmail::sasl::{dovecot::*, ehlo_keywords, smtp, Step};
/// use std::path::Path;
///
/// let ep = Endpoint::parse("private/auth", Path::new("/var/spool/postfix")).unwrap();
/// let mut auth = Dovecot::connect(ep, DEFAULT_TIMEOUT).unwrap();
/// let keywords = ehlo_keywords(&auth.offered(false), false); // ["AUTH PLAIN LOGIN"]
/// let client = ClientInfo::new(None, None, false);
/// let mut step = auth.start("LOGIN", None, &client);
/// while let Step::Challenge(_) = step {
///     // send smtp::reply(&step) ("334 ..."), read a line; on "*":
///     // auth.abort() and send smtp::aborted(); else:
///     step = auth.respond("YWxpY2VAZXhhbXBsZS50ZXN0");
/// }
/// let reply = smtp::reply(&step); // 235, 535 or 454
/// ```
pub struct Dovecot {
    endpoint: Endpoint,
    timeout: Duration,
    policy: SecurityPolicy,
    conn: Option<Conn>,
    mechs: Vec<Mechanism>,
    last_id: u32,
    pending: Option<Pending>,
    last_error: Option<String>,
}

impl fmt::Debug for Dovecot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dovecot")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.conn.is_some())
            .field("mechanisms", &self.mechs)
            .field("last_id", &self.last_id)
            .finish()
    }
}

impl Dovecot {
    /// A client that connects when first needed (no I/O here). The
    /// policy is Postfix's default (`noanonymous` with and without TLS).
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Dovecot {
        Dovecot {
            endpoint,
            timeout,
            policy: SecurityPolicy::default(),
            conn: None,
            mechs: Vec::new(),
            last_id: 0,
            pending: None,
            last_error: None,
        }
    }

    /// Connects and completes the handshake now, so that a missing or
    /// wrong socket is reported at once (Postfix: `fatal: no SASL
    /// authentication mechanisms`).
    pub fn connect(endpoint: Endpoint, timeout: Duration) -> Result<Dovecot, Error> {
        let mut d = Dovecot::new(endpoint, timeout);
        d.ensure_connected()?;
        Ok(d)
    }

    /// Sets the mechanism filter (`smtpd_sasl_security_options` and
    /// `smtpd_sasl_tls_security_options`).
    pub fn with_policy(mut self, policy: SecurityPolicy) -> Dovecot {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> &SecurityPolicy {
        &self.policy
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether a connection is open (it may since have been closed by the
    /// server; [`Dovecot::ensure_connected`] checks).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Makes sure there is a live connection: keeps the current one unless
    /// the server closed it, else connects and handshakes again (and
    /// refreshes the mechanism list).
    pub fn ensure_connected(&mut self) -> Result<(), Error> {
        if let Some(c) = &self.conn {
            if !c.reader.buffer().is_empty() || !c.reader.get_ref().closed_by_peer() {
                return Ok(());
            }
            self.disconnect();
        }
        let mut c = Conn::open(&self.endpoint, self.timeout)?;
        self.mechs = c.handshake()?;
        self.conn = Some(c);
        self.last_error = None;
        Ok(())
    }

    /// Closes the connection (the next request makes a new one).
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.pending = None;
    }

    /// Every mechanism the server listed at the last handshake, in its
    /// order, private ones left out. Empty before the first connection.
    pub fn mechanisms(&self) -> &[Mechanism] {
        &self.mechs
    }

    /// The mechanisms to advertise for a session with or without TLS:
    /// [`Dovecot::mechanisms`] filtered by the policy. Feed it to
    /// [`super::ehlo_keywords`].
    pub fn offered(&self, tls: bool) -> Vec<&Mechanism> {
        filter(&self.mechs, self.policy.options(tls))
    }

    /// Starts an exchange: `mechanism` (any case; it must be one of
    /// [`Dovecot::offered`] for `client.secured`), the client's initial
    /// response if it gave one (base64; empty or `=` for an empty one).
    /// Connects first if needed. The answer is the first [`Step`].
    pub fn start(&mut self, mechanism: &str, initial: Option<&str>, client: &ClientInfo) -> Step {
        self.pending = None;
        let known = |d: &Dovecot| {
            d.offered(client.secured)
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case(mechanism))
                .map(|m| m.name.clone())
        };
        if !self.mechs.is_empty() && known(self).is_none() {
            return Step::fail("Invalid authentication mechanism");
        }
        let initial = initial.map(|r| if r == "=" { "" } else { r });
        if let Some(r) = initial {
            if !base64::is_valid(r) {
                return Step::fail("Invalid base64 data in initial response");
            }
        }
        // Two tries: a connection that looked alive may still fail on
        // write (the server went away just now); the retry reconnects.
        for attempt in 0..2 {
            if let Err(e) = self.ensure_connected() {
                // The client sees a short reason; the details (socket
                // path, errno) are for the log, through last_error().
                self.last_error = Some(e.to_string());
                return Step::temp_fail("Can't connect to authentication server");
            }
            let Some(name) = known(self) else {
                return Step::fail("Invalid authentication mechanism");
            };
            self.last_id = self.last_id.checked_add(1).unwrap_or(1);
            let id = self.last_id;
            let mut line = format!(
                "AUTH\t{id}\t{name}\tservice={}\tnologin",
                tab_escape(&client.service)
            );
            if let Some(a) = client.local {
                line.push_str(&format!("\tlip={}\tlport={}", a.ip(), a.port()));
            }
            if let Some(a) = client.remote {
                line.push_str(&format!("\trip={}\trport={}", a.ip(), a.port()));
            }
            if client.secured {
                line.push_str("\tsecured");
            }
            match initial {
                // resp= must be the last field; an empty response is "=".
                Some("") => line.push_str("\tresp=="),
                Some(r) => line.push_str(&format!("\tresp={r}")),
                None => {}
            }
            line.push('\n');
            let sent = self.conn.as_mut().map(|c| c.send(&line));
            match sent {
                Some(Ok(())) => {
                    self.pending = Some(Pending { id, rounds: 0 });
                    return self.await_reply();
                }
                _ if attempt == 0 => self.disconnect(),
                _ => {}
            }
        }
        self.disconnect();
        Step::temp_fail("Can't connect to authentication server")
    }

    /// Passes the client's answer to the last challenge (base64 as
    /// received; empty or `=` for an empty one) and returns the next step.
    pub fn respond(&mut self, response: &str) -> Step {
        let Some(p) = &self.pending else {
            return Step::fail("No authentication in progress");
        };
        let id = p.id;
        let response = if response == "=" { "" } else { response };
        if response.len() > MAX_LINE || !base64::is_valid(response) {
            self.pending = None;
            return Step::fail("Invalid base64 data in continued response");
        }
        let sent = match self.conn.as_mut() {
            Some(c) => c.send(&format!("CONT\t{id}\t{response}\n")).is_ok(),
            None => false,
        };
        if !sent {
            self.disconnect();
            return Step::temp_fail("Connection lost to authentication server");
        }
        self.await_reply()
    }

    /// Forgets the exchange in progress (the client sent `*`). The server
    /// is not told; its late answer, if any, is skipped by id.
    pub fn abort(&mut self) {
        self.pending = None;
    }

    /// Why the last connection attempt made by [`Dovecot::start`] failed,
    /// worded as Postfix's warning (`SASL: Connect to Dovecot auth socket
    /// '...' failed: ...`), for smtpd to log. Cleared by a successful
    /// connection.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether an exchange waits for [`Dovecot::respond`].
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Reads until the answer to the pending request.
    fn await_reply(&mut self) -> Step {
        let Some(id) = self.pending.as_ref().map(|p| p.id) else {
            return Step::fail("No authentication in progress");
        };
        for _ in 0..=MAX_SKIPPED {
            let line = match self.conn.as_mut().map(Conn::read_line) {
                Some(Ok(Line::Text(l))) => l,
                Some(Ok(Line::Eof)) | None => {
                    self.disconnect();
                    return Step::temp_fail("Connection lost to authentication server");
                }
                Some(Err(e)) => {
                    // A timeout or garbage: the connection's state is
                    // unknown, so it is not reused.
                    self.disconnect();
                    let why = if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) {
                        "Timeout waiting for authentication server".to_string()
                    } else {
                        format!("Connection lost to authentication server: {e}")
                    };
                    return Step::temp_fail(&why);
                }
            };
            let mut f = line.split('\t');
            let cmd = f.next().unwrap_or("");
            if !matches!(cmd, "OK" | "CONT" | "FAIL") {
                continue;
            }
            if f.next().and_then(|s| s.parse::<u32>().ok()) != Some(id) {
                continue;
            }
            return match cmd {
                "CONT" => self.challenge(f.next()),
                ok_or_fail => {
                    self.pending = None;
                    outcome(ok_or_fail == "OK", f)
                }
            };
        }
        self.disconnect();
        Step::temp_fail("Too many unexpected lines from authentication server")
    }

    fn challenge(&mut self, data: Option<&str>) -> Step {
        let Some(p) = self.pending.as_mut() else {
            return Step::fail("No authentication in progress");
        };
        p.rounds += 1;
        let step = match data {
            None => Step::fail("Authentication backend error"),
            Some(_) if p.rounds > MAX_ROUNDS => Step::fail("Too many authentication rounds"),
            Some(d) if !base64::is_valid(d) => Step::fail("Authentication backend error"),
            Some(d) => return Step::Challenge(d.to_string()),
        };
        self.pending = None;
        step
    }
}

/// The step for an `OK` or `FAIL` line's fields (after the id).
fn outcome<'a>(ok: bool, fields: impl Iterator<Item = &'a str>) -> Step {
    let (mut user, mut reason, mut temporary) = (None, None, false);
    for f in fields {
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        match k {
            "user" => user = Some(printable(&tab_unescape(v))),
            "reason" => reason = Some(printable(&tab_unescape(v))),
            "temp" => temporary = true,
            "code" if v == "temp_fail" => temporary = true,
            _ => {}
        }
    }
    match (ok, user) {
        (true, Some(user)) if !user.is_empty() => Step::Success { user },
        (true, _) => Step::fail("Authentication backend error"),
        (false, user) => Step::Failure {
            reason,
            user,
            temporary,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::SecurityOptions;
    use std::os::unix::net::UnixListener;
    use std::thread;

    #[test]
    fn endpoints_as_postfix_reads_them() {
        let q = Path::new("/var/spool/postfix");
        assert_eq!(
            Endpoint::parse("private/auth", q).unwrap(),
            Endpoint::Unix("/var/spool/postfix/private/auth".into())
        );
        assert_eq!(
            Endpoint::parse("/run/dovecot/auth-client", q).unwrap(),
            Endpoint::Unix("/run/dovecot/auth-client".into())
        );
        assert_eq!(
            Endpoint::parse("unix:private/auth", q).unwrap(),
            Endpoint::Unix("/var/spool/postfix/private/auth".into())
        );
        assert_eq!(
            Endpoint::parse("inet:127.0.0.1:12345", q).unwrap(),
            Endpoint::Inet {
                host: "127.0.0.1".into(),
                port: 12345
            }
        );
        let v6 = Endpoint::parse("inet:[::1]:12345", q).unwrap();
        assert_eq!(
            v6,
            Endpoint::Inet {
                host: "::1".into(),
                port: 12345
            }
        );
        assert_eq!(v6.to_string(), "inet:[::1]:12345");
        for bad in [
            "",
            "inet:host",
            "inet::25",
            "inet:h:0",
            "inet:h:x",
            "inet:[::1]",
        ] {
            assert!(Endpoint::parse(bad, q).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tab_escapes_round_trip() {
        let s = "a\tb\nc\rd\u{1}e\0f";
        assert_eq!(tab_escape(s), "a\u{1}tb\u{1}nc\u{1}rd\u{1}1e\u{1}0f");
        assert_eq!(tab_unescape(&tab_escape(s)), s);
    }

    #[test]
    fn ok_and_fail_fields() {
        let f = |ok, s: &str| outcome(ok, s.split('\t').filter(|x| !x.is_empty()));
        assert_eq!(
            f(
                true,
                "user=carol@example.test\toriginal_user=Carol@Example.Test"
            ),
            Step::Success {
                user: "carol@example.test".into()
            }
        );
        assert_eq!(f(true, ""), Step::fail("Authentication backend error"));
        assert_eq!(
            f(false, "user=alice@example.test\tcode=temp_fail"),
            Step::Failure {
                reason: None,
                user: Some("alice@example.test".into()),
                temporary: true
            }
        );
        assert_eq!(
            f(
                false,
                "code=invalid_base64\treason=Invalid base64 data in initial response"
            ),
            Step::Failure {
                reason: Some("Invalid base64 data in initial response".into()),
                user: None,
                temporary: false
            }
        );
        assert!(matches!(
            f(false, "temp"),
            Step::Failure {
                temporary: true,
                ..
            }
        ));
        assert_eq!(
            f(true, "user=a\u{1}tb"),
            Step::Success { user: "a?b".into() }
        );
    }

    /// A scripted server on a socketpair-like listener: `script` is run
    /// on the accepted stream in a thread.
    fn scripted(
        script: impl FnOnce(&mut BufReader<UnixStream>, &mut UnixStream) + Send + 'static,
    ) -> (tempdir::Dir, Endpoint, thread::JoinHandle<()>) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("auth");
        let l = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            script(&mut r, &mut w);
        });
        (dir, Endpoint::Unix(path), h)
    }

    mod tempdir {
        use std::path::PathBuf;
        pub struct Dir(pub PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "facteur-sasl-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn read(r: &mut BufReader<UnixStream>) -> String {
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        s.trim_end_matches('\n').to_string()
    }

    const HELLO: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n\
        MECH\tANONYMOUS\tanonymous\nMECH\tOAUTHBEARER\tprivate\nSPID\t1\nCUID\t2\nCOOKIE\tx\nDONE\n";

    #[test]
    fn handshake_request_ids_and_bounds() {
        let (_d, ep, h) = scripted(|r, w| {
            assert_eq!(read(r), "VERSION\t1\t0");
            assert!(read(r).starts_with("CPID\t"));
            w.write_all(HELLO.as_bytes()).unwrap();
            assert_eq!(
                read(r),
                "AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=192.0.2.1\tlport=25\trip=198.51.100.7\trport=40000\tsecured\tresp=="
            );
            // A stale line for another id, an unknown command: skipped.
            w.write_all(b"FAIL\t99\nNOTICE\tx\nFAIL\t1\tuser=a\treason=no\n")
                .unwrap();
            assert_eq!(read(r), "AUTH\t2\tLOGIN\tservice=smtp\tnologin");
            w.write_all(b"CONT\t2\tVXNlcm5hbWU6\n").unwrap();
            assert_eq!(read(r), "CONT\t2\tYQ==");
            // Rounds 2 to MAX_ROUNDS + 1: the last is one too many.
            w.write_all(b"CONT\t2\t\n").unwrap();
            for _ in 1..MAX_ROUNDS {
                assert_eq!(read(r), "CONT\t2\t");
                w.write_all(b"CONT\t2\t\n").unwrap();
            }
            assert_eq!(read(r), "AUTH\t3\tLOGIN\tservice=smtp\tnologin");
            w.write_all(b"CONT\t3\t!!\n").unwrap();
            assert_eq!(read(r), "AUTH\t4\tPLAIN\tservice=smtp\tnologin\tresp=AA==");
            w.write_all(b"OK\t4\tuser=alice\n").unwrap();
        });
        let mut d = Dovecot::connect(ep, Duration::from_secs(5)).unwrap();
        assert_eq!(
            d.mechanisms()
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["PLAIN", "LOGIN", "ANONYMOUS"]
        );
        assert_eq!(
            crate::sasl::ehlo_keywords(&d.offered(false), false),
            ["AUTH PLAIN LOGIN"]
        );
        let full = ClientInfo::new(
            Some("192.0.2.1:25".parse().unwrap()),
            Some("198.51.100.7:40000".parse().unwrap()),
            true,
        );
        let bare = ClientInfo::new(None, None, false);
        assert_eq!(
            d.start("plain", Some("="), &full),
            Step::Failure {
                reason: Some("no".into()),
                user: Some("a".into()),
                temporary: false
            }
        );
        // Refused locally, nothing sent: not offered, bad base64.
        assert_eq!(
            d.start("ANONYMOUS", None, &bare),
            Step::fail("Invalid authentication mechanism")
        );
        assert_eq!(
            d.start("OAUTHBEARER", None, &bare),
            Step::fail("Invalid authentication mechanism")
        );
        assert_eq!(
            d.start("PLAIN", Some("*"), &bare),
            Step::fail("Invalid base64 data in initial response")
        );
        assert_eq!(
            d.start("LOGIN", None, &bare),
            Step::Challenge("VXNlcm5hbWU6".into())
        );
        assert!(d.in_progress());
        assert_eq!(d.respond("YQ=="), Step::Challenge(String::new()));
        for _ in 2..MAX_ROUNDS {
            assert_eq!(d.respond("="), Step::Challenge(String::new()));
        }
        assert_eq!(d.respond(""), Step::fail("Too many authentication rounds"));
        assert!(!d.in_progress());
        assert_eq!(d.respond(""), Step::fail("No authentication in progress"));
        // A challenge that is not base64 ends the exchange.
        assert_eq!(
            d.start("LOGIN", None, &bare),
            Step::fail("Authentication backend error")
        );
        assert_eq!(
            d.start("PLAIN", Some("AA=="), &bare),
            Step::Success {
                user: "alice".into()
            }
        );
        h.join().unwrap();
        // The server is gone: the next exchange is a temporary failure.
        let step = d.start("PLAIN", Some("AA=="), &bare);
        assert!(
            matches!(
                step,
                Step::Failure {
                    temporary: true,
                    ..
                }
            ),
            "{step:?}"
        );
    }

    #[test]
    fn reconnects_after_the_server_closed_the_connection() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("auth");
        let l = UnixListener::bind(&path).unwrap();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let h = thread::spawn(move || {
            for n in 1..=2 {
                let (s, _) = l.accept().unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let _ = (read(&mut r), read(&mut r));
                w.write_all(HELLO.as_bytes()).unwrap();
                // Request ids keep counting across connections.
                assert!(read(&mut r).starts_with(&format!("AUTH\t{n}\tPLAIN\t")));
                w.write_all(format!("OK\t{n}\tuser=u{n}\n").as_bytes())
                    .unwrap();
                if n == 1 {
                    drop((r, w));
                    closed_tx.send(()).unwrap();
                }
            }
        });
        let mut d = Dovecot::connect(Endpoint::Unix(path), Duration::from_secs(5)).unwrap();
        let c = ClientInfo::new(None, None, false);
        assert_eq!(
            d.start("PLAIN", Some("AA=="), &c),
            Step::Success { user: "u1".into() }
        );
        closed_rx.recv().unwrap();
        assert_eq!(
            d.start("PLAIN", Some("AA=="), &c),
            Step::Success { user: "u2".into() }
        );
        h.join().unwrap();
    }

    #[test]
    fn anonymous_allowed_by_an_empty_policy() {
        let (_d, ep, h) = scripted(|r, w| {
            let _ = (read(r), read(r));
            w.write_all(HELLO.as_bytes()).unwrap();
            assert!(read(r).starts_with("AUTH\t1\tANONYMOUS\t"));
            w.write_all(b"OK\t1\tuser=anonymous\n").unwrap();
        });
        let policy = SecurityPolicy {
            plain: SecurityOptions::NONE,
            tls: SecurityOptions::NONE,
        };
        let mut d = Dovecot::connect(ep, Duration::from_secs(5))
            .unwrap()
            .with_policy(policy);
        assert_eq!(d.offered(false).len(), 3);
        assert_eq!(
            d.start("anonymous", Some(""), &ClientInfo::new(None, None, false)),
            Step::Success {
                user: "anonymous".into()
            }
        );
        h.join().unwrap();
    }

    fn handshake_error(hello: &'static str) -> Error {
        let (_d, ep, h) = scripted(move |r, w| {
            let _ = (read(r), read(r));
            let _ = w.write_all(hello.as_bytes());
        });
        let e = Dovecot::connect(ep, Duration::from_secs(5)).unwrap_err();
        h.join().unwrap();
        e
    }

    #[test]
    fn handshake_refusals() {
        assert!(matches!(
            handshake_error("VERSION\t2\t0\nDONE\n"),
            Error::Version { major: 2 }
        ));
        assert_eq!(
            handshake_error("VERSION\t2\t0\n").to_string(),
            "SASL: Protocol version mismatch (2 vs. 1)"
        );
        assert!(matches!(
            handshake_error("VERSION\t1\t1\nSPID\t5\n"),
            Error::WrongSocket
        ));
        assert!(matches!(
            handshake_error("VERSION\t1\t2\nMECH\tPL AIN\n"),
            Error::Protocol(_)
        ));
        assert!(matches!(
            handshake_error("VERSION\t1\t2\n"),
            Error::Protocol(_)
        ));
        assert!(matches!(handshake_error("DONE\n"), Error::Protocol(_)));
        let many: &'static str = Box::leak(
            (0..=MAX_MECHANISMS)
                .map(|i| format!("MECH\tM{i}\n"))
                .collect::<String>()
                .into_boxed_str(),
        );
        let many: &'static str = Box::leak(format!("VERSION\t1\t2\n{many}DONE\n").into_boxed_str());
        assert!(matches!(handshake_error(many), Error::Protocol(_)));
        let long: &'static str = Box::leak(
            format!("VERSION\t1\t2\nCOOKIE\t{}\n", "x".repeat(MAX_LINE + 10)).into_boxed_str(),
        );
        assert!(matches!(handshake_error(long), Error::Io(_)));
    }

    #[test]
    fn connect_failure_names_the_socket() {
        let d = tempdir::Dir::new();
        let ep = Endpoint::Unix(d.0.join("nothing"));
        let e = Dovecot::connect(ep, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SASL: Connect to Dovecot auth socket '")
                && e.to_string().contains("No such file or directory"),
            "{e}"
        );
        // Lazy: no I/O until needed, then a temporary failure.
        let mut lazy = Dovecot::new(Endpoint::Unix(d.0.join("nothing")), Duration::from_secs(1));
        assert!(!lazy.is_connected());
        let step = lazy.start("PLAIN", None, &ClientInfo::new(None, None, false));
        assert_eq!(
            step,
            Step::temp_fail("Can't connect to authentication server")
        );
        assert!(lazy
            .last_error()
            .unwrap()
            .starts_with("SASL: Connect to Dovecot auth socket '"));
    }
}
