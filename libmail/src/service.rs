//! The skeleton every daemon runs in: how master starts it, what it
//! inherits, how it serves connections and triggers, and when it exits.
//! (Postfix keeps the same code in its libmaster: single_server,
//! multi_server, trigger_server.)
//!
//! # What master hands a daemon
//!
//! ```text
//! argv     PROGRAM -c CONFIG_DIR -n SERVICE -t TYPE [-o name=value]... [-v] [args...]
//! fd 3     the listening socket (inet: TCP; unix: UNIX stream; fifo: the FIFO, read/write)
//! fd 4     the status pipe: the daemon writes "R" once it is ready to serve
//! env      MAIL_CONFIG=CONFIG_DIR, FACTEUR_MAXPROC=N (master.cf maxproc, 0 = no limit),
//!          FACTEUR_MASTER_PID (a daemon whose parent is not that process exits)
//! ```
//!
//! A daemon that exits (any status) before writing `R` made a bad start:
//! master throttles the service (`service_throttle_time`) instead of
//! restarting it in a loop.
//!
//! # How a daemon serves
//!
//! Facteur's daemons serve many connections per process (a thread, or a
//! task, per connection), so master runs one process per service and
//! `maxproc` bounds the connections a process serves at once (0 = no
//! bound), where Postfix would run up to `maxproc` processes.
//!
//! * [`Service::serve_streams`]: accept, hand each connection to the
//!   handler on its own thread (bounded by maxproc). Exits after
//!   `max_idle` seconds without a connection or after `max_use`
//!   connections (so configuration changes are picked up, as in Postfix),
//!   and on SIGTERM after the connections in progress are done.
//! * [`Service::triggers`]: for pickup and qmgr: a thread accepts
//!   connections and forwards the trigger bytes over a channel.
//!
//! SIGTERM means "finish what you are doing and exit": master sends it on
//! `reload` and `stop`; a connection in progress is not cut.
//!
//! # Privileges and the chroot jail
//!
//! Every daemon changes into `queue_directory` at start and addresses the
//! queue and the service sockets relative to it (`./incoming/ID`,
//! `./public/cleanup`), as Postfix's daemons do. An unprivileged service
//! without chroot is started by master already running as `mail_owner`.
//! A service with `chroot = y` is started as root (when master is root)
//! with `FACTEUR_CHROOT=1` and, if unprivileged, `FACTEUR_RUN_AS=uid:gid`:
//! it reads main.cf, opens its tables, keys and certificates, then
//! [`Service::ready`] jails it (`chroot(".")`) and drops to those ids
//! before it serves anything. What a jailed daemon opens later must be
//! inside the queue directory (Debian copies `/etc/hosts`,
//! `/etc/resolv.conf`, ... into `$queue_directory/etc`; `facteur start`
//! does the same).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use crate::cli::{getopt, Opt};
use crate::config::check::parse_time;
use crate::config::params::Params;
use crate::config::registry::TimeUnit;
use crate::queue::QueueLayout;

/// The listening socket's descriptor.
pub const LISTEN_FD: RawFd = 3;
/// The status pipe's descriptor.
pub const STATUS_FD: RawFd = 4;

/// A listener inherited from master.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
    Fifo(File),
}

/// A connection a daemon serves.
pub enum Stream {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Stream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Tcp(s) => s.set_nonblocking(on),
        }
    }

    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

/// A running daemon: its configuration, its name in master.cf, its
/// listener.
pub struct Service {
    /// The program name (`pickup`, `local`), for logs.
    pub program: String,
    /// master.cf column 1.
    pub name: String,
    /// master.cf column 2.
    pub kind: String,
    pub config_dir: String,
    pub params: Params,
    pub layout: QueueLayout,
    /// Connections served at once; 0 = no limit.
    pub maxproc: usize,
    /// Arguments after the options.
    pub args: Vec<String>,
    listener: Option<Listener>,
}

static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Whether SIGTERM arrived: finish the current work and exit.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

static RETIRED: AtomicBool = AtomicBool::new(false);

/// Whether the process accepts no more connections (used up, idle, or
/// told to stop): a connection kept open for more requests should end
/// after the current one, so that the process can exit.
pub fn retired() -> bool {
    RETIRED.load(Ordering::SeqCst) || stopping()
}

fn install_term_handler() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Ties the daemon's life to master's: when master dies (even by
/// kill -9), the daemon gets SIGTERM and finishes what it is doing, so a
/// new master never finds an old qmgr or pickup still at work.
fn exit_with_master() {
    // Master names itself, so a daemon whose master died even before
    // this line ran (it was reparented already) knows it is an orphan.
    let master: Option<libc::pid_t> = std::env::var("FACTEUR_MASTER_PID")
        .ok()
        .and_then(|v| v.parse().ok());
    // SAFETY: getppid and prctl with constant arguments.
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        let now = libc::getppid();
        if now != parent || master.is_some_and(|m| m != now) {
            // Master died before the prctl took effect: nothing was done
            // yet, and a new master runs (or will run) its own daemons.
            std::process::exit(0);
        }
    }
}

/// Who holds master's lock file (`$data_directory/master.lock`): the
/// holder's pid (0 when it runs in another pid namespace), `None` when
/// nobody holds it, `Err` when the file cannot be opened (missing, or not
/// ours to read). master and `facteur status` ask the same question.
pub fn lock_holder(path: &std::path::Path) -> io::Result<Option<i32>> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: a zeroed flock is valid; F_GETLK fills it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl F_GETLK on an open file with a valid flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if r < 0 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(fl.l_pid.max(0)))
}

/// A parameter as a time in seconds (`max_idle = 100s`), with a default.
/// A bare number is in the parameter's own default unit
/// (`maximal_queue_lifetime = 3` is three days, `delay_warning_time = 4`
/// four hours), seconds for parameters the registry does not time.
pub fn time_param(params: &Params, name: &str, default: u64) -> u64 {
    let unit = match crate::config::registry::lookup(name).map(|p| &p.kind) {
        Some(crate::config::registry::ParamType::Time { unit, .. }) => *unit,
        _ => TimeUnit::Second,
    };
    params
        .value(name)
        .ok()
        .and_then(|v| parse_time(&v, unit))
        .unwrap_or(default)
}

/// A parameter as a number, with a default.
pub fn num_param(params: &Params, name: &str, default: i64) -> i64 {
    params
        .value(name)
        .ok()
        .and_then(|v| crate::config::check::parse_number(&v))
        .unwrap_or(default)
}

/// A parameter as a boolean, with a default.
pub fn bool_param(params: &Params, name: &str, default: bool) -> bool {
    params
        .value(name)
        .ok()
        .and_then(|v| crate::config::check::parse_bool(&v))
        .unwrap_or(default)
}

/// A parameter's expanded value, or fatal with Postfix's wording.
pub fn value(params: &Params, name: &str) -> String {
    params
        .value(name)
        .unwrap_or_else(|e| crate::log::fatal(&format!("{name}: {e}")))
}

impl Service {
    /// Parses the command line master gave, loads the configuration with
    /// the `-o` overrides, starts logging, and takes the inherited
    /// listener. Any problem is fatal (logged, exit 1) — before the
    /// status pipe says ready, so master throttles.
    pub fn start(program: &str) -> Service {
        install_term_handler();
        exit_with_master();
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut config_dir = std::env::var("MAIL_CONFIG").unwrap_or_else(|_| "/etc/postfix".into());
        let mut name = program.to_string();
        let mut kind = "unix".to_string();
        let mut overrides: Vec<(String, String)> = Vec::new();
        let mut verbose = false;
        let parsed = match getopt(&argv, "c:n:o:t:vdDS") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{program}: fatal: {e}");
                std::process::exit(1)
            }
        };
        for o in &parsed.opts {
            match o {
                Opt::WithArg('c', v) => config_dir = v.to_string(),
                Opt::WithArg('n', v) => name = v.to_string(),
                Opt::WithArg('t', v) => kind = v.to_string(),
                Opt::WithArg('o', v) => match crate::config::maincf::split_name_value_bare(v) {
                    Ok((n, v)) => overrides.push((n.to_string(), v.to_string())),
                    Err(e) => {
                        eprintln!("{program}: fatal: bad -o parameter: {v}: {e}");
                        std::process::exit(1)
                    }
                },
                Opt::Flag('v') => verbose = true,
                _ => {}
            }
        }
        let mut params = match Params::load(&config_dir) {
            Ok(p) => p,
            Err(d) => {
                eprintln!("{program}: fatal: {}", d.postfix_located());
                std::process::exit(1)
            }
        };
        params.set_override("service_name", &name);
        params.set_override("process_name", program);
        for (n, v) in &overrides {
            params.set_override(n, v);
        }
        if let Err(e) = crate::log::init(program, &params, false) {
            eprintln!("{program}: fatal: {e}");
            std::process::exit(1)
        }
        crate::log::set_verbose(verbose);
        crate::table::search::set_owner_request_special(bool_param(
            &params,
            "owner_request_special",
            true,
        ));
        let layout = QueueLayout::from_params(&params).unwrap_or_else(|e| crate::log::fatal(&e));
        if let Err(e) = std::env::set_current_dir(layout.root()) {
            crate::log::fatal(&format!("chdir {}: {e}", layout.root().display()));
        }
        let layout = layout.relative();
        // Read the time zone now: a jailed daemon cannot see
        // /etc/localtime later (glibc keeps what it read).
        extern "C" {
            fn tzset();
        }
        // SAFETY: tzset has no preconditions; no other thread runs yet.
        unsafe { tzset() };
        let maxproc = std::env::var("FACTEUR_MAXPROC")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let listener = take_listener(&kind);
        Service {
            program: program.to_string(),
            name,
            kind,
            config_dir,
            params,
            layout,
            maxproc,
            args: parsed.operands,
            listener,
        }
    }

    /// The listener master passed, for a daemon that runs its own accept
    /// loop (smtpd, on tokio); `None` when not started by master.
    pub fn take_listener(&mut self) -> Option<Listener> {
        self.listener.take()
    }

    /// Tells master the daemon started well. Call after everything that
    /// can fail at start (tables opened, directories checked).
    /// The status pipe stays open (close-on-exec, so commands local runs
    /// do not hold it): [`retiring`](Self::retiring) uses it later, and
    /// its end of file tells master the process is going.
    pub fn ready(&self) {
        enter_jail();
        // SAFETY: writing one byte to an inherited descriptor and marking
        // it close-on-exec.
        unsafe {
            let b = b'R';
            if libc::write(STATUS_FD, (&b as *const u8).cast(), 1) == 1 {
                libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }

    /// Tells master this process accepts no more connections (it only
    /// finishes the ones in progress), so a successor may start now.
    pub fn retiring(&self) {
        RETIRED.store(true, Ordering::SeqCst);
        // SAFETY: writing one byte to the status descriptor, then closing it.
        unsafe {
            let b = b'D';
            if libc::write(STATUS_FD, (&b as *const u8).cast(), 1) == 1 {
                libc::close(STATUS_FD);
            }
        }
    }

    fn max_idle(&self) -> Duration {
        Duration::from_secs(time_param(&self.params, "max_idle", 100).max(1))
    }

    fn max_use(&self) -> usize {
        num_param(&self.params, "max_use", 100).max(0) as usize
    }

    /// Serves connections, each on its own thread, until idle, used up
    /// or told to stop; returns once the connections in progress ended.
    /// `max_use` counts connections when `count_uses` (Postfix counts
    /// requests for single-request daemons; long-lived agents pass false).
    ///
    /// One process here does the work of as many Postfix processes as it
    /// serves clients at once, each of which would serve `max_use`
    /// requests before it is replaced. So the process retires after
    /// `max_use` times its peak number of simultaneous connections: with
    /// 20 SMTP sessions feeding cleanup, after 2,000 messages rather than
    /// 100 — a fresh process (exec, main.cf, tables) every 100 messages
    /// cost a third of cleanup's CPU at full load.
    pub fn serve_streams<F>(mut self, count_uses: bool, handler: F)
    where
        F: Fn(Stream) + Send + Sync + 'static,
    {
        self.ready();
        let listener = match self.listener.take() {
            Some(l) => l,
            None => crate::log::fatal("no listening socket: this daemon is started by master"),
        };
        let handler = Arc::new(handler);
        // Connection threads carry the program's name (ps, perf, top).
        let thread_name: String = self.program.chars().take(15).collect();
        let busy = Arc::new((Mutex::new(0usize), Condvar::new()));
        let limit = self.maxproc;
        let max_idle = self.max_idle();
        let max_use = if count_uses { self.max_use() } else { 0 };
        let served = AtomicUsize::new(0);
        let mut peak = 1usize;
        let workers = Workers::new(thread_name, handler, busy.clone());
        loop {
            if stopping() {
                break;
            }
            if limit > 0 {
                let (m, cv) = &*busy;
                let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
                while *n >= limit && !stopping() {
                    n = cv
                        .wait_timeout(n, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            let idle_for = {
                let n = *busy.0.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    Some(max_idle)
                } else {
                    None
                }
            };
            match accept(&listener, idle_for) {
                Ok(Some(stream)) => {
                    {
                        let mut n = busy.0.lock().unwrap_or_else(|e| e.into_inner());
                        *n += 1;
                        peak = peak.max(*n);
                    }
                    if let Err(e) = workers.run(stream) {
                        crate::warning!("cannot start a thread: {e}");
                        let (m, cv) = &*busy;
                        *m.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                        cv.notify_all();
                    }
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    if max_use > 0 && n >= max_use.saturating_mul(peak) {
                        break;
                    }
                }
                Ok(None) => {
                    // Timed out: idle if nothing is in progress.
                    if *busy.0.lock().unwrap_or_else(|e| e.into_inner()) == 0 {
                        break;
                    }
                }
                Err(e) => accept_failed(&e),
            }
        }
        // No more accepts: a successor may take the listener now; idle
        // threads end.
        self.retiring();
        drop(workers);
        let (m, cv) = &*busy;
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = cv
                .wait_timeout(n, Duration::from_millis(500))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// For trigger servers (pickup, qmgr): a channel of trigger bytes.
    /// A background thread accepts connections (or reads the FIFO) and
    /// forwards every byte read. The channel never closes while the
    /// process lives; use `recv_timeout` for timers and [`stopping`].
    pub fn triggers(&mut self) -> mpsc::Receiver<u8> {
        let listener = match self.listener.take() {
            Some(l) => l,
            None => crate::log::fatal("no listening socket: this daemon is started by master"),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("triggers".into())
            .spawn(move || trigger_loop(listener, tx))
            .unwrap_or_else(|e| crate::log::fatal(&format!("cannot start a thread: {e}")));
        rx
    }
}

/// Whether master asked this daemon to jail itself once set up: what it
/// opens now must serve it from inside the queue directory later.
pub fn will_be_jailed() -> bool {
    std::env::var_os("FACTEUR_CHROOT").is_some()
}

/// What master asked of a chrooted service (see the module comment):
/// jail it in the working directory (`queue_directory`), then run as
/// `FACTEUR_RUN_AS`. Fatal when it cannot be done: serving unjailed, or
/// as root, when the configuration says otherwise is not an option.
fn enter_jail() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(jail_now);
}

fn jail_now() {
    if std::env::var_os("FACTEUR_CHROOT").is_none() {
        return;
    }
    // SAFETY: chroot and chdir with constant C strings.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        crate::log::fatal(&format!("chroot(queue_directory): {e}"));
    }
    // SAFETY: as above.
    unsafe { libc::chdir(c"/".as_ptr()) };
    let Some(ids) = std::env::var("FACTEUR_RUN_AS").ok() else {
        return;
    };
    let parsed = ids.split_once(':').and_then(|(u, g)| {
        Some((
            u.parse::<libc::uid_t>().ok()?,
            g.parse::<libc::gid_t>().ok()?,
        ))
    });
    let Some((uid, gid)) = parsed else {
        crate::log::fatal(&format!("bad FACTEUR_RUN_AS value: {ids}"))
    };
    // glibc applies set*id to every thread of the process.
    // SAFETY: setgroups with a one-element array, setgid, setuid.
    let failed = unsafe {
        libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0
    };
    if failed {
        let e = io::Error::last_os_error();
        crate::log::fatal(&format!("cannot run as uid {uid} gid {gid}: {e}"));
    }
}

/// A failed accept: fatal when the descriptor is no listening socket
/// (the program was run by hand, not by master: retrying cannot help),
/// else a warning and a short pause (out of descriptors, a connection
/// reset before it was taken).
fn accept_failed(e: &io::Error) {
    match e.raw_os_error() {
        Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EINVAL) => {
            crate::log::fatal(&format!(
                "accept: {e}: the listening socket is not usable; this daemon is started by master"
            ))
        }
        _ if e.kind() == io::ErrorKind::Interrupted => {}
        _ => {
            crate::warning!("accept: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Most trigger connections a trigger server keeps open (a client such as
/// cleanup keeps its own to send a byte per message); a new one past it
/// closes the oldest, whose client connects again when it next writes.
const MAX_TRIGGER_CONNS: usize = 64;

fn trigger_loop(listener: Listener, tx: mpsc::Sender<u8>) {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 1024];
    // Each distinct byte of a read once: a trigger is a request, a
    // repeated one asks nothing more, and a flood of them must not grow
    // the channel.
    let forward = |bytes: &[u8]| {
        let mut seen = [false; 256];
        for &b in bytes {
            if !std::mem::replace(&mut seen[usize::from(b)], true) {
                let _ = tx.send(b);
            }
        }
    };
    let lfd = match &listener {
        Listener::Fifo(f) => {
            let mut f: &File = f;
            loop {
                match f.read(&mut buf) {
                    Ok(n) if n > 0 => forward(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Listener::Unix(l) => l.as_raw_fd(),
        Listener::Tcp(l) => l.as_raw_fd(),
    };
    // Every connection held is read as bytes come, so one that stays
    // open (or a slow one) holds up no other.
    let mut conns: std::collections::VecDeque<Stream> = Default::default();
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(MAX_TRIGGER_CONNS + 1);
    loop {
        if stopping() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        pfds.clear();
        pfds.extend(
            std::iter::once(lfd)
                .chain(conns.iter().map(|c| c.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        // SAFETY: a valid array of pollfds of that length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 200) };
        if r <= 0 {
            continue;
        }
        // Connections first (their indices are those of the poll), then
        // the new ones.
        for i in (0..conns.len()).rev() {
            if pfds[i + 1].revents == 0 {
                continue;
            }
            // One read per connection and wakeup: a client that writes
            // without end cannot keep the others waiting.
            let open = match conns[i].read(&mut buf) {
                Ok(0) => false,
                Ok(n) => {
                    forward(&buf[..n]);
                    true
                }
                Err(e) => matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ),
            };
            if !open {
                conns.remove(i);
            }
        }
        if pfds[0].revents != 0 {
            let s = match &listener {
                Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Fifo(_) => unreachable!("FIFOs are read above"),
            };
            match s {
                Ok(s) => {
                    if s.set_nonblocking(true).is_ok() {
                        conns.push_back(s);
                        if conns.len() > MAX_TRIGGER_CONNS {
                            conns.pop_front();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => accept_failed(&e),
            }
        }
    }
}

/// The connection threads of [`Service::serve_streams`]: a thread that
/// finished a connection waits a while for the next one instead of
/// exiting, so a daemon handed a connection per message (cleanup) does
/// not create and destroy a thread each time.
struct Workers<F> {
    tx: mpsc::Sender<Stream>,
    rx: Arc<Mutex<mpsc::Receiver<Stream>>>,
    /// Threads waiting for a connection and not yet promised one.
    idle: Arc<AtomicUsize>,
    name: String,
    handler: Arc<F>,
    busy: Arc<(Mutex<usize>, Condvar)>,
}

/// How long an idle connection thread waits for work before it ends.
const WORKER_KEEP: Duration = Duration::from_secs(10);

impl<F: Fn(Stream) + Send + Sync + 'static> Workers<F> {
    fn new(name: String, handler: Arc<F>, busy: Arc<(Mutex<usize>, Condvar)>) -> Workers<F> {
        let (tx, rx) = mpsc::channel();
        Workers {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            name,
            handler,
            busy,
        }
    }

    /// Hands `stream` to an idle thread, or to a new one.
    fn run(&self, stream: Stream) -> io::Result<()> {
        let promised = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if promised {
            // An idle thread is promised to this stream; it cannot end
            // before it took one (see the loop below).
            return self
                .tx
                .send(stream)
                .map_err(|_| io::Error::other("connection threads are gone"));
        }
        let (rx, idle, h, b) = (
            self.rx.clone(),
            self.idle.clone(),
            self.handler.clone(),
            self.busy.clone(),
        );
        std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                let mut next = Some(stream);
                while let Some(s) = next.take() {
                    h(s);
                    {
                        let (m, cv) = &*b;
                        *m.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                        cv.notify_all();
                    }
                    idle.fetch_add(1, Ordering::AcqRel);
                    let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                    next = match rx.recv_timeout(WORKER_KEEP) {
                        Ok(s) => Some(s),
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // Leave unless a stream was promised to an idle
                            // thread meanwhile: then take it.
                            let left = idle
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            if left {
                                None
                            } else {
                                rx.recv().ok()
                            }
                        }
                    };
                }
            })
            .map(|_| ())
    }
}

/// Waits for a connection up to `timeout` (None: forever); wakes up
/// every 200 ms to notice SIGTERM.
fn accept(listener: &Listener, timeout: Option<Duration>) -> io::Result<Option<Stream>> {
    use std::os::fd::AsRawFd;
    let fd = match listener {
        Listener::Unix(l) => l.as_raw_fd(),
        Listener::Tcp(l) => l.as_raw_fd(),
        Listener::Fifo(f) => f.as_raw_fd(),
    };
    let start = std::time::Instant::now();
    loop {
        if stopping() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            let s = match listener {
                Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Fifo(_) => return Err(io::Error::other("accept on a FIFO")),
            };
            match s {
                Ok(s) => {
                    // The listener is non-blocking (shared with other
                    // processes); the connection is not.
                    match &s {
                        Stream::Unix(u) => u.set_nonblocking(false)?,
                        Stream::Tcp(t) => t.set_nonblocking(false)?,
                    }
                    return Ok(Some(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                return Ok(None);
            }
        }
    }
}

/// Takes the listener master left at fd 3, if any.
fn take_listener(kind: &str) -> Option<Listener> {
    // SAFETY: fcntl on a descriptor number only queries it.
    if unsafe { libc::fcntl(LISTEN_FD, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: master passed this descriptor for us to own.
    unsafe {
        libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(match kind {
            "inet" => {
                let l = TcpListener::from_raw_fd(LISTEN_FD);
                let _ = l.set_nonblocking(true);
                Listener::Tcp(l)
            }
            "fifo" => Listener::Fifo(File::from_raw_fd(LISTEN_FD)),
            _ => {
                let l = UnixListener::from_raw_fd(LISTEN_FD);
                let _ = l.set_nonblocking(true);
                Listener::Unix(l)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_server_reads_kept_connections_and_new_ones_alike() {
        let dir = crate::testutil::scratch_dir("service-triggers");
        let path = dir.join("qmgr");
        let l = UnixListener::bind(&path).unwrap();
        // As master leaves it: shared, non-blocking.
        l.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || trigger_loop(Listener::Unix(l), tx));
        let got = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // A client that keeps its connection open between triggers.
        let mut kept = UnixStream::connect(&path).unwrap();
        kept.write_all(b"I").unwrap();
        assert_eq!(got(), b'I');
        // Others are served meanwhile, each as it comes.
        crate::ipc::trigger(&path, b"DDDD").unwrap();
        assert_eq!(got(), b'D');
        kept.write_all(b"A").unwrap();
        // (The repeated D of one write came once.)
        assert_eq!(got(), b'A');
        // Past the limit, the oldest connection is closed.
        let mut more: Vec<UnixStream> = (0..MAX_TRIGGER_CONNS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let last = more.last_mut().unwrap();
        last.write_all(b"W").unwrap();
        assert_eq!(got(), b'W');
        let mut b = [0u8; 1];
        kept.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(kept.read(&mut b).unwrap(), 0, "the oldest was not closed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bare_times_are_in_the_parameters_own_unit() {
        let (cf, _) = crate::config::maincf::MainCf::parse(
            "maximal_queue_lifetime = 3\ndelay_warning_time = 4\nqueue_run_delay = 5\n\
             bounce_queue_lifetime = 90s\n",
            "main.cf",
        );
        let p = Params::new("/etc/postfix", cf).with_system_hostname("mx.example.test");
        assert_eq!(time_param(&p, "maximal_queue_lifetime", 0), 3 * 86400);
        assert_eq!(time_param(&p, "delay_warning_time", 0), 4 * 3600);
        assert_eq!(time_param(&p, "queue_run_delay", 0), 5);
        assert_eq!(time_param(&p, "bounce_queue_lifetime", 0), 90);
        assert_eq!(time_param(&p, "no_such_parameter", 7), 7);
    }
}
