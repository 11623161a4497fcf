//! The network shell around [`Session`]: a tokio runtime, the listener
//! master passed, one task per connection. It reads command lines and
//! content (bounded by `line_length_limit` and `smtpd_timeout`), writes
//! replies — held back while the client has more pipelined commands
//! waiting, flushed as soon as it has not — and runs the session's
//! blocking steps (table lookups, the handover to cleanup) where tokio
//! allows blocking.
//!
//! DATA ends only at `<CR><LF>.<CR><LF>`: a `.` line after a bare LF is
//! content (Postfix's `smtpd_forbid_bare_newline = normalize`, which
//! closes the SMTP smuggling hole; `no` is read the same way); bare LF
//! line ends are otherwise taken as line ends. Under `reject` the shell
//! tells the session of each line that ended in a bare LF: a command is
//! refused and the session ends, content is refused at its end.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libmail::ipc::cleanup::{CleanupClient, CleanupError, Kept};
use libmail::ipc::Attrs;
use libmail::service::{self, Listener, Service};
use libmail::smtp::Reply;
use libmail::tls::Summary;
use libmail::{info, warning};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    BufWriter,
};
use tokio::net::TcpStream;

use super::session::{Client, Gate, Queue, Sasl, SaslStep, Session, Settings, Step};

/// How the shell is tuned.
pub struct Shell {
    pub settings: Arc<Settings>,
    /// The TLS server configuration, when one could be built.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How a client certificate is examined after the handshake, when one
    /// is asked for (`smtpd_tls_ask_ccert`, `smtpd_tls_req_ccert`).
    pub ccerts: Option<libmail::tls::ClientCerts>,
    /// `smtpd_tls_wrappermode`: TLS before the greeting.
    pub wrapper: bool,
    /// `smtpd_starttls_timeout`: the whole handshake.
    pub starttls_timeout: Duration,
    pub gate: Arc<dyn Gate>,
    pub timeout: Duration,
    pub line_limit: usize,
    pub peername_lookup: bool,
    /// Client names the hosts file gives, read here.
    pub hosts: super::hosts::Hosts,
    pub ipc_timeout: Duration,
    /// The cleanup connections kept between messages.
    pub cleanups: Arc<CleanupPool>,
    /// SMTP AUTH (None: `smtpd_sasl_auth_enable = no`).
    pub sasl: Option<SaslConfig>,
    /// The anvil(8) limits, kept here (None: all off).
    pub limits: Option<Arc<super::anvil::ClientLimits>>,
    /// `smtpd_forbid_bare_newline_exclusions` (None: not `reject`).
    pub bare_lf_exclusions: Option<Arc<libmail::address::networks::NetworkList>>,
}

/// Where AUTH goes (`smtpd_sasl_*`).
pub struct SaslConfig {
    pub endpoint: libmail::sasl::dovecot::Endpoint,
    pub policy: libmail::sasl::SecurityPolicy,
}

/// Dovecot, as the session's [`Sasl`]: one auth connection per SMTP
/// session, opened when EHLO first asks for the mechanisms.
struct DovecotSasl {
    dovecot: libmail::sasl::dovecot::Dovecot,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    warned: bool,
}

impl Sasl for DovecotSasl {
    fn mechanisms(&mut self, tls: bool) -> Vec<String> {
        if let Err(e) = self.dovecot.ensure_connected() {
            if !self.warned {
                warning!("SASL: {e}");
                self.warned = true;
            }
            return Vec::new();
        }
        self.dovecot
            .offered(tls)
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    fn start(
        &mut self,
        mech: &str,
        initial: Option<&str>,
        tls: bool,
        _client: &Client,
    ) -> SaslStep {
        let info = libmail::sasl::dovecot::ClientInfo::new(self.local, Some(self.remote), tls);
        let step = self.dovecot.start(mech, initial, &info);
        self.note_error();
        step
    }

    fn respond(&mut self, response: &str) -> SaslStep {
        let step = self.dovecot.respond(response);
        self.note_error();
        step
    }

    fn abort(&mut self) {
        self.dovecot.abort();
    }
}

impl DovecotSasl {
    fn note_error(&mut self) {
        if let Some(e) = self.dovecot.last_error() {
            warning!("{e}");
        }
    }
}

/// cleanup connections kept between messages (libmail::ipc::cleanup),
/// shared by the sessions of this process: a message then starts with no
/// connect and no wait, its queue file made while the previous message's
/// 250 went out. An entry unused for [`KEEP_IDLE`] is closed (cleanup then
/// removes its unused file), and so are all of them when the process
/// stops taking connections.
pub struct CleanupPool {
    root: PathBuf,
    timeout: Duration,
    idle: Mutex<Vec<(Idle, Instant)>>,
}

/// A kept connection waiting for a message.
enum Idle {
    /// Its next queue ID not read yet.
    Kept(Kept),
    /// Its queue ID read (a session reserved it, then did not use it).
    Open(CleanupClient),
}

/// How long an unused kept connection stays open.
const KEEP_IDLE: Duration = Duration::from_secs(10);
/// Most kept connections waiting at once.
const KEEP_MAX: usize = 64;

impl CleanupPool {
    pub fn new(root: PathBuf, timeout: Duration) -> Arc<CleanupPool> {
        Arc::new(CleanupPool {
            root,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A handover whose queue ID is here already (reading it does not
    /// wait); `None` when no kept connection is ready.
    fn ready(&self) -> Option<CleanupClient> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let ready = match &idle[i].0 {
                Idle::Kept(k) => k.ready(),
                Idle::Open(_) => true,
            };
            if !ready {
                continue;
            }
            match idle.swap_remove(i).0 {
                Idle::Open(c) => return Some(c),
                // An error: cleanup ended that connection; try another.
                Idle::Kept(k) => match k.resume() {
                    Ok(c) => return Some(c),
                    Err(_) => i = i.min(idle.len()),
                },
            }
        }
        None
    }

    /// A handover: a ready kept connection, else a new one (this waits).
    fn open(&self) -> Result<CleanupClient, CleanupError> {
        match self.ready() {
            Some(c) => Ok(c),
            None => CleanupClient::connect_kept(&self.root, self.timeout),
        }
    }

    fn put(&self, entry: Idle) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP_MAX {
            idle.push((entry, Instant::now()));
        }
    }

    /// Closes the connections unused for [`KEEP_IDLE`], or all of them.
    fn sweep(&self, all: bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, since)| !all && since.elapsed() < KEEP_IDLE);
    }
}

/// cleanup, as the session's [`Queue`].
struct Cleanup {
    pool: Arc<CleanupPool>,
    /// A handover [`Queue::ready`] took for the next open.
    reserved: Option<CleanupClient>,
    client: Option<CleanupClient>,
    /// The end marker went out (the verdict is coming).
    ended: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.reserved.take() {
            self.pool.put(Idle::Open(c));
        }
    }
}

fn queue_error(e: &CleanupError) -> Reply {
    use libmail::ipc::cleanup::*;
    match e {
        CleanupError::Io(_) => Reply::new(451, "4.3.0", "Error: queue file write error"),
        CleanupError::Refused(r) => {
            let s = r.status;
            if s & STAT_CONT != 0 {
                Reply::with_text(550, "5.7.1", &r.reason)
            } else if s & STAT_SIZE != 0 {
                Reply::new(552, "5.3.4", "Error: message file too big")
            } else if s & STAT_HOPS != 0 {
                Reply::new(554, "5.4.0", "Error: too many hops")
            } else if s & STAT_RCPT != 0 {
                Reply::new(554, "5.5.1", "Error: no valid recipients")
            } else if s & STAT_DEFER != 0 {
                Reply::with_text(451, "4.7.1", &r.reason)
            } else if s & STAT_WRITE != 0 {
                Reply::new(451, "4.3.0", "Error: queue file write error")
            } else {
                Reply::new(451, "4.3.0", "Error: internal error")
            }
        }
    }
}

impl Queue for Cleanup {
    fn open(&mut self) -> Result<String, Reply> {
        let c = match self.reserved.take() {
            Some(c) => c,
            None => self.pool.open().map_err(|e| {
                warning!("connect to cleanup: {e}");
                queue_error(&e)
            })?,
        };
        let id = c.queue_id().to_string();
        self.client = Some(c);
        self.ended = false;
        Ok(id)
    }

    fn late(&mut self, late: &libmail::ipc::cleanup::Late) -> Result<(), Reply> {
        self.client()?.late(late);
        Ok(())
    }

    fn ready(&mut self) -> bool {
        if self.reserved.is_none() {
            self.reserved = self.pool.ready();
        }
        self.reserved.is_some()
    }

    fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply> {
        self.client()?
            .envelope(attrs)
            .map_err(|e| queue_error(&CleanupError::Io(e)))
    }

    fn content(&mut self, bytes: &[u8]) -> Result<(), Reply> {
        self.client()?
            .content(bytes)
            .map_err(|e| queue_error(&CleanupError::Io(e)))
    }

    fn end(&mut self) -> Result<Option<RawFd>, Reply> {
        let c = self.client()?;
        c.end().map_err(|e| {
            warning!("cleanup service: {e}");
            queue_error(&CleanupError::Io(e))
        })?;
        let fd = c.fd();
        self.ended = true;
        Ok(Some(fd))
    }

    fn finish(&mut self) -> Result<String, Reply> {
        if !self.ended {
            self.end()?;
        }
        self.ended = false;
        let c = self
            .client
            .take()
            .ok_or_else(|| Reply::new(451, "4.3.0", "Error: internal error"))?;
        let (verdict, kept) = c.verdict();
        if let Some(k) = kept {
            self.pool.put(Idle::Kept(k));
        }
        verdict.map_err(|e| {
            if let CleanupError::Io(io) = &e {
                warning!("cleanup service: {io}");
            }
            queue_error(&e)
        })
    }

    fn abort(&mut self) {
        // Closing the connection before the end marker makes cleanup
        // remove its unfinished file.
        self.client = None;
        self.ended = false;
    }
}

impl Cleanup {
    fn client(&mut self) -> Result<&mut CleanupClient, Reply> {
        self.client
            .as_mut()
            .ok_or_else(|| Reply::new(451, "4.3.0", "Error: internal error"))
    }
}

/// Runs the server until idle, used up or told to stop.
pub fn run(mut svc: Service, shell: Shell) {
    let listener = match svc.take_listener() {
        Some(Listener::Tcp(l)) => l,
        Some(_) => libmail::log::fatal("smtpd needs an inet listener in master.cf"),
        None => libmail::log::fatal("no listening socket: this daemon is started by master"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .enable_time()
        .thread_name("smtpd")
        .build()
        .unwrap_or_else(|e| libmail::log::fatal(&format!("cannot start the runtime: {e}")));
    let max_idle = Duration::from_secs(service::time_param(&svc.params, "max_idle", 100).max(1));
    let max_use = service::num_param(&svc.params, "max_use", 100).max(0) as usize;
    let maxproc = svc.maxproc;
    // anvil's statistics, logged this often and at exit.
    let status_every = Duration::from_secs(
        service::time_param(&svc.params, "anvil_status_update_time", 600).max(1),
    );
    svc.ready();
    let shell = Arc::new(shell);
    // The last reference is dropped here, outside the runtime: the
    // restrictions own the DNS resolver's own runtime, and tokio refuses
    // to drop a runtime from inside an asynchronous context (smtpd
    // panicked on every exit when DNS restrictions were configured).
    let keep = shell.clone();
    // The accept loop runs on a worker, like the connections it spawns:
    // a connection's task then starts on the thread that accepted it,
    // with no hand-off from the main thread.
    let accepting = async move {
        let _ = listener.set_nonblocking(true);
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => libmail::log::fatal(&format!("listener: {e}")),
        };
        let active = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let mut served = 0usize;
        let mut idle = Duration::ZERO;
        let tick = Duration::from_millis(250);
        let mut last_status = std::time::Instant::now();
        loop {
            if last_status.elapsed() >= status_every {
                last_status = std::time::Instant::now();
                log_statistics(&shell);
            }
            if service::stopping() {
                break;
            }
            if maxproc > 0 && active.load(Ordering::SeqCst) >= maxproc {
                let _ = tokio::time::timeout(tick, done.notified()).await;
                continue;
            }
            match tokio::time::timeout(tick, listener.accept()).await {
                Ok(Ok((stream, peer))) => {
                    idle = Duration::ZERO;
                    served += 1;
                    active.fetch_add(1, Ordering::SeqCst);
                    let (a, d, sh) = (active.clone(), done.clone(), shell.clone());
                    tokio::spawn(async move {
                        connection(stream, peer, sh).await;
                        a.fetch_sub(1, Ordering::SeqCst);
                        d.notify_waiters();
                    });
                    // Postfix's max_use counts connections: after that
                    // many, stop accepting and let master start a fresh
                    // process (configuration changes are picked up).
                    if max_use > 0 && served >= max_use * maxproc.max(1) {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    warning!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {
                    shell.cleanups.sweep(false);
                    if active.load(Ordering::SeqCst) == 0 {
                        idle += tick;
                        if idle >= max_idle {
                            break;
                        }
                    }
                }
            }
            if served % 256 == 0 {
                shell.cleanups.sweep(false);
            }
        }
        drop(listener);
        shell.cleanups.sweep(true);
        // Connections in progress are finished, not cut.
        while active.load(Ordering::SeqCst) > 0 {
            let _ = tokio::time::timeout(tick, done.notified()).await;
        }
        shell.cleanups.sweep(true);
        log_statistics(&shell);
    };
    rt.block_on(async move {
        let _ = tokio::spawn(accepting).await;
    });
    drop(rt);
    drop(keep);
}

/// anvil's statistics lines since the last ones (none without client
/// limits, or when nothing was counted).
fn log_statistics(shell: &Shell) {
    if let Some(l) = &shell.limits {
        for line in l.statistics() {
            info!("{line}");
        }
    }
}

/// The client's name as Postfix finds it: the PTR name, kept only when
/// it resolves back to the address (else `unknown`).
fn peer_names(addr: IpAddr) -> (String, String) {
    let reverse = match dns_lookup_ptr(addr) {
        Some(n) => n,
        None => return ("unknown".into(), "unknown".into()),
    };
    let verified = forward_has(&reverse, addr);
    (
        if verified {
            reverse.clone()
        } else {
            "unknown".into()
        },
        reverse,
    )
}

/// getnameinfo(3) with NI_NAMEREQD: the system resolver (hosts file,
/// DNS), as Postfix names its clients; the DNS-based restrictions ask
/// hickory-resolver (libmail::dns) instead.
fn dns_lookup_ptr(addr: IpAddr) -> Option<String> {
    let sa: SocketAddr = SocketAddr::new(addr, 0);
    let (storage, len) = libmail::net::sockaddr(&sa);
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: valid sockaddr and output buffer with its length.
    let r = unsafe {
        libc::getnameinfo(
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) }.to_string_lossy();
    super::hosts::client_name(&name)
}

fn forward_has(name: &str, addr: IpAddr) -> bool {
    use std::net::ToSocketAddrs;
    (name, 0)
        .to_socket_addrs()
        .map(|mut it| it.any(|sa| sa.ip() == addr))
        .unwrap_or(false)
}

/// One line read by [`read_line`].
enum Line {
    /// The line, without its end; cut at the limit (as Postfix 3.7 cuts
    /// long command lines), the rest read and dropped. `bare_lf`: it
    /// ended in an LF without a CR before it.
    Full { bare_lf: bool },
    /// End of stream (a partial last line is dropped).
    Eof,
}

/// Reads one line into `buf` (cleared first), keeping at most `max`
/// bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut truncated = false;
    // The byte before the LF, kept or not (a cut line may still end in
    // CR LF).
    let mut last = None;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (used, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let take = if found { used - 1 } else { used };
        if take > 0 {
            last = Some(avail[take - 1]);
        }
        let room = max.saturating_sub(buf.len());
        if take > room {
            truncated = true;
        }
        buf.extend_from_slice(&avail[..take.min(room)]);
        r.consume(used);
        if found {
            if !truncated && buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Full {
                bare_lf: last != Some(b'\r'),
            });
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shell: Arc<Shell>) {
    let _ = stream.set_nodelay(true);
    let addr = match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        a => a,
    };
    let (name, reverse_name) = if shell.peername_lookup {
        match shell.hosts.name(addr) {
            Some(n) => (n.clone(), n),
            None => tokio::task::spawn_blocking(move || peer_names(addr))
                .await
                .unwrap_or_else(|_| ("unknown".into(), "unknown".into())),
        }
    } else {
        ("unknown".into(), "unknown".into())
    };
    let local = stream.local_addr().ok();
    let client = Client {
        addr: Some(addr),
        port: peer.port(),
        name,
        reverse_name,
        server: local,
    };
    let queue = Box::new(Cleanup {
        pool: shell.cleanups.clone(),
        reserved: None,
        client: None,
        ended: false,
    });
    let mut session = Session::new(shell.settings.clone(), shell.gate.clone(), queue, client);
    if let Some(c) = &shell.sasl {
        session = session.with_sasl(Box::new(DovecotSasl {
            dovecot: libmail::sasl::dovecot::Dovecot::new(
                c.endpoint.clone(),
                libmail::sasl::dovecot::DEFAULT_TIMEOUT,
            )
            .with_policy(c.policy),
            local,
            remote: peer,
            warned: false,
        }));
    }
    if let Some(l) = &shell.limits {
        session = session.with_limits(l.clone());
    }
    if let Some(x) = &shell.bare_lf_exclusions {
        session = session.with_bare_lf_exclusions(x);
    }
    let label = session.client.label();
    let mut stream: Stream = Box::new(stream);
    if shell.wrapper {
        if shell.tls.is_none() {
            warning!(
                "Wrapper-mode request dropped from {label} for service smtpd. \
                 TLS context initialization failed. For details see earlier warnings in your logs."
            );
            return;
        }
        if session.too_many_new_tls() {
            // As Postfix in wrapper mode: no handshake, no reply.
            info!("connect from {label}");
            flush_logs(&mut session);
            info!("{}", session.disconnect_line());
            return;
        }
        match handshake(&shell, stream).await {
            Ok((s, summary, resumed)) => {
                stream = s;
                session.tls_started(summary);
                if !resumed {
                    session.new_tls_session();
                }
            }
            Err(e) => {
                info!("connect from {label}");
                info!("SSL_accept error from {label}: {e}");
                info!("lost connection after CONNECT from {label}");
                info!("{}", session.disconnect_line());
                return;
            }
        }
    }
    let mut greet = true;
    let end = loop {
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(16 << 10, rd);
        let mut wr = BufWriter::with_capacity(16 << 10, wr);
        let end = serve(&mut session, &mut rd, &mut wr, &shell, greet).await;
        greet = false;
        let _ = wr.flush().await;
        if !matches!(end, End::StartTls) {
            session.release_connection();
            break end;
        }
        // Whatever the client sent after STARTTLS, before the handshake,
        // is plaintext anyone on the path could have injected: it is
        // dropped with the reader's buffer, never read as commands.
        let plain = rd.into_inner().unsplit(wr.into_inner());
        match handshake(&shell, plain).await {
            Ok((s, summary, resumed)) => {
                stream = s;
                session.tls_started(summary);
                if !resumed {
                    session.new_tls_session();
                }
                flush_logs(&mut session);
            }
            Err(e) => {
                info!("SSL_accept error from {label}: {e}");
                break End::Lost;
            }
        }
    };
    for l in session.take_logs() {
        info!("{l}");
    }
    match end {
        End::Quit => {}
        // The client as the session knows it now (XCLIENT may have
        // replaced the one that connected).
        End::Lost => info!(
            "lost connection after {} from {}",
            session.last_verb,
            session.client.label()
        ),
        End::Timeout => info!(
            "timeout after {} from {}",
            session.last_verb,
            session.client.label()
        ),
        End::Closed | End::StartTls => {}
    }
    session.lost_in_place();
    info!("{}", session.disconnect_line());
}

/// How a connection (or its DATA) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    Closed,
    Lost,
    Timeout,
    /// STARTTLS was answered with 220: the handshake comes next.
    StartTls,
}

/// A client connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// The server side of the TLS handshake, within `smtpd_starttls_timeout`;
/// whether the session was resumed.
async fn handshake(shell: &Shell, stream: Stream) -> Result<(Stream, Summary, bool), String> {
    let acceptor = shell
        .tls
        .as_ref()
        .ok_or_else(|| "TLS is not available".to_string())?;
    match tokio::time::timeout(shell.starttls_timeout, acceptor.accept(stream)).await {
        Err(_) => Err("timeout".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(tls)) => {
            let conn = tls.get_ref().1;
            let summary = match &shell.ccerts {
                Some(c) => c.summary(conn),
                None => Summary::of(conn),
            };
            let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            Ok((Box::new(tls), summary, resumed))
        }
    }
}

impl Session {
    /// [`Session::lost`], where blocking is allowed when a message was
    /// in progress (its withdrawal talks to cleanup); else here.
    fn lost_in_place(&mut self) {
        if self.in_transaction() {
            tokio::task::block_in_place(|| self.lost());
        } else {
            self.lost();
        }
    }
}

async fn serve<R, W>(
    session: &mut Session,
    rd: &mut R,
    wr: &mut W,
    shell: &Shell,
    greet: bool,
) -> End
where
    R: AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    if greet {
        if let Some(end) = greeting(session, wr).await {
            return end;
        }
    }
    commands(session, rd, wr, shell).await
}

/// Sends the greeting; `Some` when the session ends there.
async fn greeting<W: tokio::io::AsyncWrite + Unpin>(
    session: &mut Session,
    wr: &mut W,
) -> Option<End> {
    let greeting = if session.greeting_may_block() {
        tokio::task::block_in_place(|| session.greeting())
    } else {
        session.greeting()
    };
    flush_logs(session);
    let (r, close) = match greeting {
        Step::Close(r) => (r, true),
        Step::Reply(r) | Step::Data(r) => (r, false),
        Step::Bdat { .. } | Step::StartTls(_) => return Some(End::Closed),
    };
    if wr.write_all(&r.to_wire()).await.is_err() || wr.flush().await.is_err() {
        return Some(End::Lost);
    }
    if close {
        return Some(End::Closed);
    }
    None
}

async fn commands<R, W>(session: &mut Session, rd: &mut R, wr: &mut W, shell: &Shell) -> End
where
    R: AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let timeout = shell.timeout;
    let mut line = Vec::with_capacity(1024);
    loop {
        let got =
            match tokio::time::timeout(timeout, read_line(rd, &mut line, shell.line_limit)).await {
                Err(_) => {
                    let r = session.with_footer(Reply::new(
                        421,
                        "4.4.2",
                        format!("{} Error: timeout exceeded", shell.settings.myhostname),
                    ));
                    let _ = wr.write_all(&r.to_wire()).await;
                    return End::Timeout;
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => return End::Lost,
                Ok(Ok(Line::Full { bare_lf })) => {
                    if bare_lf {
                        if let Some(Step::Close(r)) = session.bare_lf_command() {
                            flush_logs(session);
                            let _ = wr.write_all(&r.to_wire()).await;
                            let _ = wr.flush().await;
                            return End::Closed;
                        }
                    }
                    String::from_utf8_lossy(&line).into_owned()
                }
            };
        // More already waiting behind this command, without PIPELINING
        // negotiated: what reject_unauth_pipelining looks for.
        if !rd_is_empty(rd) {
            session.note_pipelining_violation();
        }
        // What may block runs where tokio allows it: restrictions that
        // may wait on the network (DNS lists, a policy server), at the
        // commands that ask them (HELO, MAIL and XCLIENT too when they
        // are not delayed to RCPT); an RCPT that must connect to cleanup
        // (none of the kept connections has its queue ID ready); ETRN
        // (qmgr); AUTH (Dovecot); XCLIENT when the XCLIENT/XFORWARD or
        // EHLO keyword lists name a table that may block. Everything
        // else runs here: table lookups are memory-mapped, DATA and BDAT
        // only buffer the envelope.
        let undelayed =
            !shell.gate.delay_reject() && is_verb(&got, &["HELO", "EHLO", "MAIL", "XCLIENT"]);
        let asks = undelayed || is_verb(&got, &["RCPT", "DATA", "BDAT"]);
        let step = if (asks && session.gate_may_block())
            || is_verb(&got, &["ETRN"])
            || (is_verb(&got, &["XCLIENT"]) && session.controls_may_block())
            // The first accepted recipient opens the queue file.
            || (is_verb(&got, &["RCPT"]) && !session.queue_ready())
            || session.in_auth()
            || (shell.sasl.is_some() && is_verb(&got, &["EHLO", "AUTH"]))
        {
            tokio::task::block_in_place(|| session.command(&got))
        } else {
            session.command(&got)
        };
        flush_logs(session);
        if let Some(p) = session.take_pause() {
            let _ = wr.flush().await;
            tokio::time::sleep(p).await;
        }
        match step {
            Step::Reply(r) => {
                if wr.write_all(&r.to_wire()).await.is_err() {
                    return End::Lost;
                }
            }
            Step::StartTls(r) => {
                if wr.write_all(&r.to_wire()).await.is_err() || wr.flush().await.is_err() {
                    return End::Lost;
                }
                return End::StartTls;
            }
            Step::Close(r) => {
                let _ = wr.write_all(&r.to_wire()).await;
                let _ = wr.flush().await;
                return if r.code == 221 && session.last_verb == "QUIT" {
                    End::Quit
                } else {
                    End::Closed
                };
            }
            Step::Data(r) => {
                if wr.write_all(&r.to_wire()).await.is_err() || wr.flush().await.is_err() {
                    return End::Lost;
                }
                match read_data(session, rd, shell).await {
                    Ok(()) => {}
                    Err(e) => return e,
                }
                let r = end_of_message(session, shell).await;
                flush_logs(session);
                if wr.write_all(&r.to_wire()).await.is_err() {
                    return End::Lost;
                }
            }
            Step::Bdat { size, last } => {
                if let Err(e) = read_bdat(session, rd, size, shell).await {
                    return e;
                }
                let s = if session.bdat_ends_message(last) {
                    Step::Reply(end_of_message(session, shell).await)
                } else {
                    session.bdat_end(size, last)
                };
                flush_logs(session);
                if let Step::Reply(r) = s {
                    if wr.write_all(&r.to_wire()).await.is_err() {
                        return End::Lost;
                    }
                }
            }
        }
        // The error limit was reached with that reply: 421, then close.
        if let Some(h) = session.take_hangup() {
            let _ = wr.write_all(&h.to_wire()).await;
            let _ = wr.flush().await;
            return End::Closed;
        }
        // Replies wait while more pipelined commands are already here.
        if rd_is_empty(rd) && wr.flush().await.is_err() {
            return End::Lost;
        }
    }
}

/// The end of a message ([`Session::data_end`]). The verdict of cleanup
/// (its wait is the group commit's fsync) is awaited here, in the event
/// loop, rather than on a thread that blocks; only when the restrictions
/// may block, or the wait cannot be watched, does it run where blocking
/// is allowed.
async fn end_of_message(session: &mut Session, shell: &Shell) -> Reply {
    if !session.gate_may_block() {
        if let Some(fd) = session.data_end_start() {
            if readable(fd, shell.ipc_timeout).await {
                return session.data_end();
            }
        }
    }
    tokio::task::block_in_place(|| session.data_end())
}

/// Waits until `fd` is readable; false when it cannot be watched or
/// `limit` passed first. `fd` belongs to the session's queue, which the
/// caller's borrow of the session keeps open until this returns.
async fn readable(fd: RawFd, limit: Duration) -> bool {
    struct Watched(RawFd);
    impl AsRawFd for Watched {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    // SAFETY: the caller's descriptor stays open, and the same file,
    // until this returns; the watch ends (deregisters) before that.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(Watched(fd), tokio::io::Interest::READABLE)
    };
    let Ok(w) = registered else {
        return false;
    };
    matches!(tokio::time::timeout(limit, w.readable()).await, Ok(Ok(_)))
}

/// Whether the line's first word is one of these verbs (any case).
fn is_verb(line: &str, verbs: &[&str]) -> bool {
    let verb = line.split_ascii_whitespace().next().unwrap_or("");
    verbs.iter().any(|v| verb.eq_ignore_ascii_case(v))
}

fn rd_is_empty<R: AsyncBufRead + Unpin>(rd: &mut R) -> bool {
    // A zero-time poll of fill_buf tells whether bytes are buffered.
    use std::task::{Context, Poll};
    let waker = futures_noop_waker();
    let mut cx = Context::from_waker(&waker);
    match std::pin::Pin::new(rd).poll_fill_buf(&mut cx) {
        Poll::Ready(Ok(b)) => b.is_empty(),
        _ => true,
    }
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

fn flush_logs(session: &mut Session) {
    for l in session.take_logs() {
        info!("{l}");
    }
}

/// Where the DATA reader puts what it reads: the session, or a fuzz
/// target's recorder.
pub trait DataSink {
    /// A whole content line (its end removed).
    fn line(&mut self, bytes: &[u8]);
    /// Part of a line too long for one piece; the rest follows.
    fn piece(&mut self, bytes: &[u8]);
    /// The line just given ended in a bare LF.
    fn bare_lf(&mut self);
    /// A moment to pass buffered content on.
    fn checkpoint(&mut self);
}

impl DataSink for Session {
    fn line(&mut self, bytes: &[u8]) {
        self.data_line(bytes);
    }
    fn piece(&mut self, bytes: &[u8]) {
        self.data_piece(bytes);
    }
    fn bare_lf(&mut self) {
        self.data_bare_lf();
    }
    fn checkpoint(&mut self) {
        if self.should_flush() {
            tokio::task::block_in_place(|| self.flush());
        }
    }
}

/// DATA content until `<CR><LF>.<CR><LF>`, dot-unstuffed.
async fn read_data<R: AsyncBufRead + Unpin>(
    session: &mut Session,
    rd: &mut R,
    shell: &Shell,
) -> Result<(), End> {
    // Content lines are not truncated: a long line is passed on in pieces.
    read_data_into(rd, shell.timeout, shell.line_limit.max(1024), session).await
}

/// The DATA reader: content lines into `sink` until a line that is a
/// lone `.` between CRLFs, pieces of at most `piece` bytes (at least 3,
/// so that `.<CR><LF>` fits one).
/// Only `<CR><LF>.<CR><LF>` ends the content: a dot after a bare LF or a
/// bare CR is content (SMTP smuggling). Public for the fuzz target.
pub async fn read_data_into<R: AsyncBufRead + Unpin, S: DataSink>(
    rd: &mut R,
    timeout: Duration,
    piece: usize,
    sink: &mut S,
) -> Result<(), End> {
    let piece = piece.max(3);
    let mut line = Vec::with_capacity(1024);
    let mut prev_crlf = true;
    let mut carry_cr = false;
    loop {
        let got =
            tokio::time::timeout(timeout, read_piece(rd, &mut line, piece, &mut carry_cr)).await;
        let (ended, crlf) = match got {
            Err(_) => return Err(End::Timeout),
            Ok(Err(_)) | Ok(Ok(None)) => return Err(End::Lost),
            Ok(Ok(Some(x))) => x,
        };
        if ended && crlf && prev_crlf && line == b"." {
            return Ok(());
        }
        if ended && !crlf {
            sink.bare_lf();
        }
        let body: &[u8] = if prev_crlf_start(&line) {
            &line[1..]
        } else {
            &line
        };
        if ended {
            sink.line(body);
        } else {
            sink.piece(body);
        }
        sink.checkpoint();
        prev_crlf = ended && crlf;
        if !ended {
            // The rest of this line comes in the next piece, without
            // dot-unstuffing.
            loop {
                let got =
                    tokio::time::timeout(timeout, read_piece(rd, &mut line, piece, &mut carry_cr))
                        .await;
                let (e, c) = match got {
                    Err(_) => return Err(End::Timeout),
                    Ok(Err(_)) | Ok(Ok(None)) => return Err(End::Lost),
                    Ok(Ok(Some(x))) => x,
                };
                if e && !c {
                    sink.bare_lf();
                }
                if e {
                    sink.line(&line);
                } else {
                    sink.piece(&line);
                }
                sink.checkpoint();
                if e {
                    prev_crlf = c;
                    break;
                }
            }
        }
    }
}

fn prev_crlf_start(line: &[u8]) -> bool {
    line.first() == Some(&b'.')
}

/// Reads up to `max` bytes (at least 3) of a line: `(ended, crlf)`;
/// `None` at EOF. A CR that would end a piece is held back in `carry_cr`
/// and starts the next one, so that a CRLF split by the piece limit is
/// still seen as a CRLF (and a lone dot after it still ends DATA).
async fn read_piece<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    carry_cr: &mut bool,
) -> std::io::Result<Option<(bool, bool)>> {
    buf.clear();
    if std::mem::take(carry_cr) {
        buf.push(b'\r');
    }
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(None);
        }
        let room = max - buf.len();
        let window = &avail[..avail.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..i]);
            r.consume(i + 1);
            let crlf = buf.last() == Some(&b'\r');
            if crlf {
                buf.pop();
            }
            return Ok(Some((true, crlf)));
        }
        let n = window.len();
        buf.extend_from_slice(window);
        r.consume(n);
        if buf.len() + 1 >= max {
            if buf.last() == Some(&b'\r') {
                buf.pop();
                *carry_cr = true;
            }
            return Ok(Some((false, false)));
        }
    }
}

/// BDAT content: exactly `size` bytes, split into lines (CRLF or LF).
async fn read_bdat<R: AsyncBufRead + Unpin>(
    session: &mut Session,
    rd: &mut R,
    size: u64,
    shell: &Shell,
) -> Result<(), End> {
    let mut left = size;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = match tokio::time::timeout(shell.timeout, rd.read(&mut buf[..want])).await {
            Err(_) => return Err(End::Timeout),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(End::Lost),
            Ok(Ok(n)) => n,
        };
        left -= n as u64;
        let chunk = &buf[..n];
        session.bdat_bytes(chunk);
        if session.should_flush() {
            tokio::task::block_in_place(|| session.flush());
        }
    }
    Ok(())
}

/// The DATA reader's specification in plain terms, shared by its unit
/// tests and its fuzz target (fuzz/fuzz_targets/smtp_data.rs): a sink
/// that records what it is given, and what it should be given.
#[doc(hidden)]
pub mod data_spec {
    use super::DataSink;

    /// The content as handed over, lines made LF-terminated.
    #[derive(Default)]
    pub struct Recorder {
        pub text: Vec<u8>,
        pub bare_lf: usize,
    }

    impl DataSink for Recorder {
        fn line(&mut self, bytes: &[u8]) {
            self.text.extend_from_slice(bytes);
            self.text.push(b'\n');
        }
        fn piece(&mut self, bytes: &[u8]) {
            self.text.extend_from_slice(bytes);
        }
        fn bare_lf(&mut self) {
            self.bare_lf += 1;
        }
        fn checkpoint(&mut self) {}
    }

    /// Where the content ends (the offset after the final `.<CR><LF>`):
    /// the first CRLF.CRLF, or a `.<CR><LF>` at the very start; the
    /// content before it, each line made LF-terminated with one leading
    /// dot removed; and how many of its lines ended in a bare LF. `None`
    /// when the input has no end.
    pub fn reference(data: &[u8]) -> Option<(usize, Vec<u8>, usize)> {
        let end = if data.starts_with(b".\r\n") {
            3
        } else {
            data.windows(5).position(|w| w == b"\r\n.\r\n")? + 5
        };
        let body = &data[..end - 3];
        let (mut text, mut bare) = (Vec::new(), 0);
        for line in body.split_inclusive(|&b| b == b'\n') {
            bare += usize::from(!line.ends_with(b"\r\n"));
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            text.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            text.push(b'\n');
        }
        Some((end, text, bare))
    }
}

#[cfg(test)]
mod data_tests {
    //! The DATA reader against SMTP smuggling: only CRLF.CRLF ends the
    //! content, whatever the piece size (fuzz/fuzz_targets/smtp_data.rs
    //! checks the same property on any input).
    use super::data_spec::{reference, Recorder};
    use super::*;

    /// (ended, bytes consumed, content handed over, bare LF lines).
    fn read(data: &[u8], piece: usize) -> (Result<(), End>, usize, String, usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut sink = Recorder::default();
        let mut rd: &[u8] = data;
        let got = rt.block_on(read_data_into(
            &mut rd,
            Duration::from_secs(5),
            piece,
            &mut sink,
        ));
        let used = data.len() - rd.len();
        (
            got,
            used,
            String::from_utf8_lossy(&sink.text).into_owned(),
            sink.bare_lf,
        )
    }

    #[test]
    fn smuggling_variants_never_end_the_content() {
        // Each variant of a smuggled end-of-data, then a real one: the
        // message is one message, the fake end and the "second message"
        // inside it.
        for fake in ["\n.\n", "\r.\n", "\n.\r\n", "\r\n.\r", "\r.\r", "\r\n.\n"] {
            for piece in [2, 3, 7, 1024] {
                let data =
                    format!("Subject: a\r\n\r\nbody{fake}MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n");
                let (got, used, text, _) = read(data.as_bytes(), piece);
                assert_eq!(got, Ok(()), "{fake:?} piece {piece}");
                assert_eq!(
                    used,
                    data.len() - "QUIT\r\n".len(),
                    "{fake:?} piece {piece}"
                );
                assert!(
                    text.contains("MAIL FROM:<evil@x>"),
                    "{fake:?} piece {piece}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn any_mix_of_cr_lf_and_dots_ends_only_at_crlf_dot_crlf() {
        // 3,000 inputs over the bytes that matter, each at several piece
        // sizes, against the plain definition (a fixed generator: the
        // same inputs every run).
        let mut seed: u64 = 0x5eed;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..3000 {
            let len = next() % 48;
            let data: Vec<u8> = (0..len).map(|_| b"\r\n.a"[next() % 4]).collect();
            for piece in [3, 4, 5, 9, 64] {
                let (got, used, text, bare) = read(&data, piece);
                match reference(&data) {
                    Some((end, want, want_bare)) => {
                        assert_eq!((got, used), (Ok(()), end), "{data:?} piece {piece}");
                        assert_eq!(
                            (text, bare),
                            (String::from_utf8_lossy(&want).into_owned(), want_bare),
                            "{data:?} piece {piece}"
                        );
                    }
                    None => assert_eq!(got, Err(End::Lost), "{data:?} piece {piece}"),
                }
            }
        }
    }

    #[test]
    fn content_is_handed_over_whole_and_unstuffed() {
        let data = b"..leading dot\r\nbare\nlong line that spans many pieces\r\n.\r\nnext";
        for piece in [2, 3, 5, 8, 1024] {
            let (got, used, text, bare) = read(data, piece);
            assert_eq!(got, Ok(()));
            assert_eq!(used, data.len() - 4);
            assert_eq!(
                text, ".leading dot\nbare\nlong line that spans many pieces\n",
                "piece {piece}"
            );
            assert_eq!(bare, 1);
        }
        // A lone dot at once ends an empty message; no end at all is a
        // lost connection.
        assert_eq!(read(b".\r\n", 2).0, Ok(()));
        assert_eq!(read(b"text\r\n.\n", 16).0, Err(End::Lost));
        assert_eq!(read(b"text\r\n.", 16).0, Err(End::Lost));
    }
}
