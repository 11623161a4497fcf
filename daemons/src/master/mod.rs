//! master(8): the resident process that owns the listening sockets and
//! runs every other daemon, as Postfix's master does (see
//! docs/man/master.8.md for the user's view).
//!
//! # Design
//!
//! * **Start.** Flags, `main.cf` and `master.cf` (any error is fatal),
//!   logging, the lock `$data_directory/master.lock` (an fcntl write lock
//!   held for the life of the process, with the pid in it; one master per
//!   configuration), the queue directory (created or repaired), the
//!   listeners, `$queue_directory/pid/master.pid`, then `daemon started`.
//!   With `-w` the process forks first; the parent exits 0 only when the
//!   child says it initialised (a byte on a pipe), else with the child's
//!   status, so `facteur start` reports start-up errors.
//! * **Instances.** Each effective master.cf service becomes one
//!   [`Instance`] per listening endpoint (an inet service on `0.0.0.0` and
//!   `::` is two). Services whose program file does not exist, and the
//!   `unix-dgram` and `pass` types, are skipped with a warning.
//! * **Processes.** Facteur's daemons serve many connections per process,
//!   so an instance runs at most one child; `maxproc` goes to the child in
//!   `FACTEUR_MAXPROC` and bounds its concurrent connections. A child is
//!   started when its listener becomes readable and no child runs, and at
//!   once for services with a wakeup timer. It gets the listener at fd 3
//!   and a status pipe at fd 4 (libmail::service has the other side).
//! * **Bad starts.** A child that exits before writing `R` on its status
//!   pipe is a bad start: the service is throttled (its listener is not
//!   watched, nothing is started) for `service_throttle_time`. Any child
//!   is started at most every [`MIN_RESTART`], so a daemon that exits at
//!   once after saying ready cannot make master spin.
//! * **Retiring.** A child that stops accepting (`max_use`, `max_idle`)
//!   says `D` on its status pipe; it is moved aside to finish its
//!   connections and a successor may start at once, so recycling a busy
//!   daemon does not stall its clients.
//! * **Main loop.** One `poll()` over the signal self-pipe, the status
//!   pipes of children, and the listeners of instances that
//!   may start a child; the timeout is the next timer (wakeup, end of a
//!   throttle, restart pacing), at most [`MAX_SLEEP`]. Signal handlers
//!   only write the signal number into the self-pipe; everything else
//!   happens in the loop (reaping with `waitpid(WNOHANG)`, reload, stop).
//! * **Reload (SIGHUP).** Re-read both files; listeners whose
//!   name/type/address are unchanged are kept (no connection is refused),
//!   the others are closed and new ones bound; every child gets SIGTERM
//!   (it finishes its work and exits) and new children start with the new
//!   configuration. A configuration that no longer loads is reported and
//!   the running one kept.
//! * **Stop (SIGTERM, SIGINT).** SIGTERM to every child, wait up to
//!   [`STOP_WAIT`], SIGKILL what is left, remove the pid file, exit 0.

mod child;
mod listen;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libmail::cli::getopt;
use libmail::config::mastercf::{self, ServiceType};
use libmail::config::params::Params;
use libmail::config::Severity;
use libmail::queue::dirs::{Ownership, QueueLayout};
use libmail::{fatal, info, warning};

use child::{Exit, Ids};
use listen::Endpoint;

/// Shortest time between two starts of one instance's child.
pub const MIN_RESTART: Duration = Duration::from_millis(100);
/// Longest poll() sleep (the loop re-checks its timers at least this often).
pub const MAX_SLEEP: Duration = Duration::from_secs(10);
/// How long `stop` waits for children after SIGTERM before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(3);
/// Listen backlog for sockets master binds.
pub const BACKLOG: i32 = 100;
/// Most child exits handled per loop turn.
const MAX_REAP: usize = 10_000;

const USAGE: &str = "usage: master [-c config_dir] [-d] [-t] [-v] [-w]";

/// Command-line flags.
struct Opts {
    config_dir: String,
    foreground: bool,
    wait: bool,
    test: bool,
    verbose: bool,
}

fn parse_opts() -> Opts {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match getopt(&argv, "c:dDtvw") {
        Ok(p) if p.operands.is_empty() => p,
        Ok(_) => {
            eprintln!("master: fatal: {USAGE}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("master: fatal: {e}\n{USAGE}");
            std::process::exit(1)
        }
    };
    Opts {
        config_dir: libmail::config::config_directory(parsed.arg('c')),
        foreground: parsed.has('d'),
        wait: parsed.has('w'),
        test: parsed.has('t'),
        verbose: parsed.has('v'),
    }
}

/// One service as master runs it (master.cf with the defaults applied).
#[derive(Debug, Clone)]
struct Def {
    name: String,
    kind: ServiceType,
    private: bool,
    unprivileged: bool,
    chroot: bool,
    /// Seconds between wakeup triggers; 0 = none.
    wakeup: u32,
    maxproc: u32,
    program: PathBuf,
    args: Vec<String>,
}

impl Def {
    fn key(&self) -> String {
        format!("{}/{}", self.name, self.kind)
    }
}

/// A child process of an instance.
struct Running {
    pid: i32,
    /// The status pipe: `R` (ready), then `D` (retiring) or end of file.
    status: Option<OwnedFd>,
    ready: bool,
}

/// Whether a listener has a connection (or a byte) waiting, now.
fn listener_readable(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// One listening endpoint of a service and the process serving it.
struct Instance {
    def: Def,
    endpoint: Endpoint,
    listener: OwnedFd,
    child: Option<Running>,
    throttled_until: Option<Instant>,
    next_wakeup: Option<Instant>,
    last_start: Option<Instant>,
}

impl Instance {
    fn key(&self) -> String {
        format!("{}/{}", self.def.key(), self.endpoint)
    }

    fn throttled(&self, now: Instant) -> bool {
        self.throttled_until.is_some_and(|t| now < t)
    }

    /// Whether a child may be started now.
    fn can_start(&self, now: Instant) -> bool {
        self.child.is_none()
            && !self.throttled(now)
            && self.last_start.is_none_or(|t| now >= t + MIN_RESTART)
    }
}

/// The configuration master runs with.
struct Config {
    params: Params,
    defs: Vec<Def>,
}

/// Reads main.cf and master.cf. Errors come back worded for the log.
fn load(config_dir: &str) -> Result<Config, String> {
    let mut params = Params::load(config_dir).map_err(|d| d.postfix_located())?;
    let path = format!("{config_dir}/master.cf");
    let text = libmail::config::maincf::read_config_file(&path)
        .map_err(|e| format!("open {path}: {e}"))?;
    let (master, diags) = mastercf::parse(&text, &path);
    for d in &diags {
        match d.severity {
            Severity::Error => return Err(d.postfix_located()),
            Severity::Warning => warning!("{}", d.postfix_located()),
            Severity::Info => {}
        }
    }
    params.add_master(&master);
    let daemon_dir = params
        .value("daemon_directory")
        .map_err(|e| format!("daemon_directory: {e}"))?;
    let default_maxproc = libmail::service::num_param(&params, "default_process_limit", 100)
        .clamp(0, i64::from(u32::MAX)) as u32;
    let defs = master
        .effective()
        .into_iter()
        .map(|s| Def {
            name: s.name.clone(),
            kind: s.kind,
            private: s.private.unwrap_or(true),
            unprivileged: s.unprivileged.unwrap_or(true),
            chroot: s.chroot.unwrap_or(false),
            wakeup: s.wakeup.map_or(0, |w| w.seconds),
            maxproc: s.process_limit.unwrap_or(default_maxproc),
            program: if s.command.starts_with('/') {
                PathBuf::from(&s.command)
            } else {
                Path::new(&daemon_dir).join(&s.command)
            },
            args: s.args.clone(),
        })
        .collect();
    Ok(Config { params, defs })
}

/// The running master.
struct Master {
    opts: Opts,
    params: Params,
    queue_dir: PathBuf,
    instances: Vec<Instance>,
    /// Children of a previous configuration, told to finish: (pid, program).
    retired: Vec<(i32, PathBuf)>,
    signals: OwnedFd,
    is_root: bool,
    /// The ids of unprivileged children (root only; None = stay root).
    ids: Option<Ids>,
    throttle: Duration,
}

/// The version master reports (Postfix's, on purpose).
fn version(params: &Params) -> String {
    params
        .value("mail_version")
        .unwrap_or_else(|_| "3.7.11".into())
}

fn mail_name(params: &Params) -> String {
    params
        .value("mail_name")
        .unwrap_or_else(|_| "Postfix".into())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The lock file of a configuration.
fn lock_path(params: &Params) -> Result<PathBuf, String> {
    let dir = params
        .value("data_directory")
        .map_err(|e| format!("data_directory: {e}"))?;
    Ok(Path::new(&dir).join("master.lock"))
}

/// The pid of the master holding the lock, if one does.
fn lock_holder(path: &Path) -> Option<i32> {
    libmail::service::lock_holder(path).ok().flatten()
}

/// Takes the lock (kept for the life of the process) and writes our pid
/// into it. Fatal when another master holds it.
fn take_lock(path: &Path, params: &Params) {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
            {
                fatal!("create data_directory {}: {e}", dir.display());
            }
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| fatal!("open lock file {}: {e}", path.display()));
    // SAFETY: a zeroed flock is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl F_SETLK on an open file with a valid flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } < 0 {
        fatal!("the {} mail system is already running", mail_name(params));
    }
    let _ = f.set_len(0);
    use std::os::unix::fs::FileExt;
    let _ = f.write_at(format!("{:>10}\n", std::process::id()).as_bytes(), 0);
    // Closing any descriptor of the file would drop the lock: keep it.
    std::mem::forget(f);
}

fn pid_file(queue_dir: &Path) -> PathBuf {
    queue_dir.join("pid").join("master.pid")
}

/// Points standard input, output and error at /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// `-w`: forks; the parent waits for the child's word and exits. Returns
/// (in the child) the pipe to write the word to.
fn fork_and_wait() -> OwnedFd {
    let (r, w) = child::pipe().unwrap_or_else(|e| {
        eprintln!("master: fatal: pipe: {e}");
        std::process::exit(1)
    });
    // SAFETY: master has no other threads yet, so fork is safe; both
    // processes go on with ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("master: fatal: fork: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    if pid == 0 {
        drop(r);
        // SAFETY: setsid has no preconditions; the child is not a group leader.
        unsafe { libc::setsid() };
        return w;
    }
    drop(w);
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n == 1 && b[0] == b'R' {
        std::process::exit(0);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = if r == pid && libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status).max(1)
    } else {
        1
    };
    std::process::exit(code)
}

pub fn main() {
    let opts = parse_opts();
    let ready_pipe = if opts.wait && !opts.test {
        Some(fork_and_wait())
    } else {
        None
    };
    let config = match load(&opts.config_dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("master: fatal: {e}");
            if let Ok(p) = Params::load(&opts.config_dir) {
                if libmail::log::init("master", &p, false).is_ok() {
                    libmail::log::log(libmail::log::Level::Fatal, &e);
                }
            }
            std::process::exit(1)
        }
    };
    let params = config.params;
    let lock = lock_path(&params).unwrap_or_else(|e| {
        eprintln!("master: fatal: {e}");
        std::process::exit(1)
    });
    if opts.test {
        std::process::exit(i32::from(lock_holder(&lock).is_some()));
    }
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(2) } == 1;
    if let Err(e) = libmail::log::init("master", &params, opts.foreground || opts.wait || tty) {
        eprintln!("master: fatal: {e}");
        std::process::exit(1);
    }
    libmail::log::set_verbose(opts.verbose);
    take_lock(&lock, &params);

    let layout = QueueLayout::from_params(&params).unwrap_or_else(|e| fatal!("{e}"));
    let root = is_root();
    let ownership = if root {
        let value = |n: &str| params.value(n).unwrap_or_default();
        let owner = child::lookup_user(&value("mail_owner"))
            .unwrap_or_else(|| fatal!("mail_owner {}: no such user", value("mail_owner")));
        let group = group_id(&value("setgid_group"))
            .unwrap_or_else(|| fatal!("setgid_group {}: no such group", value("setgid_group")));
        // Services running as mail_owner append to the same log file.
        if let Err(e) = libmail::log::chown_file(owner.uid, owner.gid) {
            warning!("cannot give the log file to mail_owner: {e}");
        }
        Ownership::System {
            mail_owner: owner.uid,
            setgid_group: group,
        }
    } else {
        Ownership::CurrentUser
    };
    if let Err(e) = layout.create_or_repair(&ownership) {
        fatal!("{}: {e}", layout.root().display());
    }
    let signals = child::install_signals().unwrap_or_else(|e| fatal!("signals: {e}"));
    let mut m = Master {
        queue_dir: layout.root().to_path_buf(),
        params,
        instances: Vec::new(),
        retired: Vec::new(),
        signals,
        is_root: root,
        ids: None,
        throttle: Duration::ZERO,
        opts,
    };
    m.apply_params();
    if let Err(e) = m.build(config.defs, Vec::new(), true) {
        fatal!("{e}");
    }
    let pid_path = pid_file(&m.queue_dir);
    if let Err(e) = std::fs::write(&pid_path, format!("{:>10}\n", std::process::id())) {
        fatal!("write {}: {e}", pid_path.display());
    }
    info!(
        "daemon started -- version {}, configuration {}",
        version(&m.params),
        m.opts.config_dir
    );
    if !m.opts.foreground {
        if ready_pipe.is_none() {
            // SAFETY: setsid has no preconditions (fails harmlessly for a
            // group leader).
            unsafe { libc::setsid() };
        }
        detach_stdio();
    }
    if let Some(w) = ready_pipe {
        // SAFETY: one byte to the pipe our parent reads.
        unsafe { libc::write(w.as_raw_fd(), b"R".as_ptr().cast(), 1) };
        drop(w);
    }
    m.run()
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: a zeroed group is valid; getgrnam_r fills it from buf, whose
    // size is given.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut res: *mut libc::group = std::ptr::null_mut();
        let r = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut res);
        if r != 0 || res.is_null() {
            return None;
        }
        Some(gr.gr_gid)
    }
}

/// What a pollfd slot stands for.
enum Slot {
    Signals,
    Status(usize),
    Listen(usize),
}

impl Master {
    /// Settings taken from main.cf (at start and on reload).
    fn apply_params(&mut self) {
        self.throttle = Duration::from_secs(
            libmail::service::time_param(&self.params, "service_throttle_time", 60).max(1),
        );
        self.ids = None;
        if self.is_root {
            let owner = self.params.value("mail_owner").unwrap_or_default();
            match child::lookup_user(&owner) {
                Some(ids) if ids.uid == 0 => {
                    warning!("mail_owner {owner} has uid 0: unprivileged services run as root")
                }
                Some(ids) => self.ids = Some(ids),
                None => {
                    warning!("mail_owner {owner}: no such user: unprivileged services run as root")
                }
            }
        }
    }

    /// Makes the instances of `defs`, reusing the listeners of `old`
    /// instances with the same name, type and address. `starting`: a
    /// listener that cannot be bound is fatal (else a warning).
    fn build(
        &mut self,
        defs: Vec<Def>,
        mut old: Vec<Instance>,
        starting: bool,
    ) -> Result<(), String> {
        let now = Instant::now();
        let mut kept: Vec<Instance> = Vec::new();
        let mut to_bind: Vec<(Def, Endpoint, bool)> = Vec::new();
        for def in defs {
            if matches!(def.kind, ServiceType::UnixDgram | ServiceType::Pass) {
                warning!(
                    "service {}: type {} is not supported -- skipping",
                    def.key(),
                    def.kind
                );
                continue;
            }
            if !def.program.is_file() {
                warning!(
                    "service {}: program {} is not available -- skipping",
                    def.key(),
                    def.program.display()
                );
                continue;
            }
            let eps = match listen::endpoints(
                def.kind,
                &def.name,
                def.private,
                &self.queue_dir,
                &self.params,
            ) {
                Ok(e) => e,
                Err(e) if starting => return Err(format!("service {}: {e}", def.key())),
                Err(e) => {
                    warning!("service {}: {e} -- skipping", def.key());
                    continue;
                }
            };
            for (ep, required) in eps {
                let key = format!("{}/{}", def.key(), ep);
                if let Some(pos) = old.iter().position(|i| i.key() == key) {
                    let o = old.swap_remove(pos);
                    kept.push(self.instance(def.clone(), ep, o.listener, now));
                } else {
                    to_bind.push((def.clone(), ep, required));
                }
            }
        }
        // Close what went away before binding what is new (an address may
        // move from one service name to another).
        for o in old {
            if !kept.iter().any(|k| k.endpoint == o.endpoint)
                && !to_bind.iter().any(|(_, ep, _)| *ep == o.endpoint)
            {
                listen::unlink(&o.endpoint);
            }
        }
        for (def, ep, required) in to_bind {
            match listen::bind(&ep, BACKLOG) {
                Ok(fd) => kept.push(self.instance(def, ep, fd, now)),
                Err(e) if !required => {
                    warning!("service {}: bind {ep}: {e} -- skipping", def.key())
                }
                Err(e) if starting => return Err(format!("service {}: bind {ep}: {e}", def.key())),
                Err(e) => warning!("service {}: bind {ep}: {e} -- skipping", def.key()),
            }
        }
        self.instances = kept;
        Ok(())
    }

    fn instance(&self, def: Def, endpoint: Endpoint, listener: OwnedFd, now: Instant) -> Instance {
        let next_wakeup = if def.wakeup > 0 {
            if matches!(endpoint, Endpoint::Tcp(_)) {
                warning!(
                    "service {}: wakeup of inet services is not supported -- ignored",
                    def.key()
                );
                None
            } else {
                Some(now)
            }
        } else {
            None
        };
        Instance {
            def,
            endpoint,
            listener,
            child: None,
            throttled_until: None,
            next_wakeup,
            last_start: None,
        }
    }

    fn run(&mut self) -> ! {
        loop {
            self.reap_all();
            let now = Instant::now();
            for i in 0..self.instances.len() {
                let inst = &self.instances[i];
                if inst.def.wakeup > 0 && inst.can_start(now) {
                    self.start(i, now);
                }
            }
            self.send_wakeups(now);

            let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(self.instances.len() + 1);
            let mut slots: Vec<Slot> = Vec::with_capacity(self.instances.len() + 1);
            let mut add = |fd: RawFd, slot: Slot| {
                pfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(slot);
            };
            add(self.signals.as_raw_fd(), Slot::Signals);
            for (i, inst) in self.instances.iter().enumerate() {
                match &inst.child {
                    Some(c) => {
                        if let Some(fd) = &c.status {
                            add(fd.as_raw_fd(), Slot::Status(i));
                        }
                    }
                    None if inst.can_start(now) => add(inst.listener.as_raw_fd(), Slot::Listen(i)),
                    None => {}
                }
            }
            let timeout = self.next_deadline(now).map_or(MAX_SLEEP, |t| {
                t.saturating_duration_since(now).min(MAX_SLEEP)
            });
            // Round up so a timer that is not quite due does not make a
            // zero-timeout spin.
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32
                + i32::from(timeout.subsec_nanos() % 1_000_000 != 0);
            // SAFETY: poll on a vector of initialised pollfds of the length given.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
            if n <= 0 {
                continue;
            }
            let now = Instant::now();
            let mut got_signals = false;
            for (p, slot) in pfds.iter().zip(&slots) {
                if p.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Signals => got_signals = true,
                    Slot::Status(i) => self.child_status(i),
                    Slot::Listen(i) => {
                        if self.instances[i].can_start(now) {
                            self.start(i, now);
                        }
                    }
                }
            }
            if got_signals {
                for sig in child::read_signals(&self.signals) {
                    match sig {
                        libc::SIGHUP => self.reload(),
                        libc::SIGTERM | libc::SIGINT => self.stop(sig),
                        _ => {}
                    }
                }
            }
        }
    }

    /// The earliest timer: a wakeup, the end of a throttle, restart pacing.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for inst in &self.instances {
            if let Some(t) = inst.next_wakeup {
                consider(t);
            }
            if inst.child.is_none() {
                if let Some(t) = inst.throttled_until.filter(|&t| t > now) {
                    consider(t);
                }
                if let Some(t) = inst
                    .last_start
                    .map(|t| t + MIN_RESTART)
                    .filter(|&t| t > now)
                {
                    consider(t);
                }
            }
        }
        next
    }

    fn send_wakeups(&mut self, now: Instant) {
        for inst in &mut self.instances {
            let Some(t) = inst.next_wakeup else { continue };
            if t > now {
                continue;
            }
            inst.next_wakeup = Some(now + Duration::from_secs(u64::from(inst.def.wakeup)));
            if inst.throttled(now) {
                continue;
            }
            if let Err(e) = listen::wakeup(&inst.endpoint) {
                libmail::debug!("wakeup {}: {e}", inst.key());
            }
        }
    }

    /// Starts the child of instance `i`.
    fn start(&mut self, i: usize, now: Instant) {
        let inst = &self.instances[i];
        let def = &inst.def;
        let mut argv: Vec<String> = vec![
            "-c".into(),
            self.opts.config_dir.clone(),
            "-n".into(),
            def.name.clone(),
            "-t".into(),
            def.kind.as_str().into(),
        ];
        if self.opts.verbose {
            argv.push("-v".into());
        }
        argv.extend(def.args.iter().cloned());
        let spawn = child::Spawn {
            program: &def.program,
            argv,
            config_dir: &self.opts.config_dir,
            maxproc: def.maxproc,
            listener: inst.listener.as_raw_fd(),
            ids: if self.is_root && def.unprivileged {
                self.ids
            } else {
                None
            },
            jail: if self.is_root && def.chroot {
                Some(if def.unprivileged { self.ids } else { None })
            } else {
                None
            },
        };
        let result = child::spawn(&spawn);
        let inst = &mut self.instances[i];
        inst.last_start = Some(now);
        match result {
            Ok((pid, status)) => {
                libmail::debug!(
                    "service {}: started {} pid {pid}",
                    inst.key(),
                    inst.def.program.display()
                );
                inst.child = Some(Running {
                    pid,
                    status: Some(status),
                    ready: false,
                });
            }
            Err(e) => {
                warning!(
                    "service {}: cannot start {}: {e}",
                    inst.def.key(),
                    inst.def.program.display()
                );
                warning!(
                    "{}: bad command startup -- throttling",
                    inst.def.program.display()
                );
                inst.throttled_until = Some(now + self.throttle);
            }
        }
    }

    /// A child's status pipe is readable: ready, retiring, or closed.
    /// A retiring child no longer counts as the instance's child, so a
    /// successor can start (unpaced) while it finishes its connections.
    fn child_status(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        let Some(c) = inst.child.as_mut() else {
            return;
        };
        let Some(st) = c.status.as_ref().and_then(child::read_status) else {
            return;
        };
        if st.ready {
            c.ready = true;
        }
        if st.retiring && c.ready {
            let c = inst.child.take().expect("checked above");
            inst.last_start = None;
            self.retired.push((c.pid, inst.def.program.clone()));
            // A daemon retires because it was busy (max_use) or idle
            // (max_idle); start the successor now when the clients are
            // already waiting, so they do not wait for its start-up.
            let now = Instant::now();
            if self.instances[i].can_start(now) && listener_readable(&self.instances[i].listener) {
                self.start(i, now);
            }
        } else if st.eof {
            // Closed without retiring: it runs on (or exits, and reap_all
            // sees it, throttling a bad start).
            c.status = None;
        }
    }

    /// Reaps every exited child and logs as Postfix does.
    fn reap_all(&mut self) {
        for _ in 0..MAX_REAP {
            let Some((pid, exit)) = child::reap() else {
                return;
            };
            let now = Instant::now();
            if let Some(inst) = self
                .instances
                .iter_mut()
                .find(|i| i.child.as_ref().is_some_and(|c| c.pid == pid))
            {
                let Some(mut c) = inst.child.take() else {
                    continue;
                };
                if !c.ready
                    && c.status
                        .as_ref()
                        .and_then(child::read_status)
                        .is_some_and(|s| s.ready)
                {
                    c.ready = true;
                }
                let path = inst.def.program.display().to_string();
                if !exit.normal() || !c.ready {
                    warning!("process {path} pid {pid} {}", exit.describe());
                }
                if !c.ready {
                    warning!("{path}: bad command startup -- throttling");
                    inst.throttled_until = Some(now + self.throttle);
                }
            } else if let Some(pos) = self.retired.iter().position(|(p, _)| *p == pid) {
                let (_, path) = self.retired.swap_remove(pos);
                if !exit.normal() && !matches!(exit, Exit::Signal(libc::SIGTERM)) {
                    warning!("process {} pid {pid} {}", path.display(), exit.describe());
                }
            }
        }
    }

    /// SIGHUP: new configuration, same listeners where possible.
    fn reload(&mut self) {
        info!(
            "reload -- version {}, configuration {}",
            version(&self.params),
            self.opts.config_dir
        );
        let config = match load(&self.opts.config_dir) {
            Ok(c) => c,
            Err(e) => {
                libmail::log::log(
                    libmail::log::Level::Error,
                    &format!("{e}; keeping the running configuration"),
                );
                return;
            }
        };
        for inst in &mut self.instances {
            if let Some(c) = inst.child.take() {
                child::kill(c.pid, libc::SIGTERM);
                self.retired.push((c.pid, inst.def.program.clone()));
            }
        }
        self.params = config.params;
        self.apply_params();
        let old = std::mem::take(&mut self.instances);
        if let Err(e) = self.build(config.defs, old, false) {
            warning!("{e}");
        }
    }

    /// SIGTERM/SIGINT: stop the children, then exit.
    fn stop(&mut self, sig: i32) -> ! {
        info!("terminating on signal {sig}");
        let mut pids: Vec<(i32, PathBuf)> = std::mem::take(&mut self.retired);
        for inst in &mut self.instances {
            if let Some(c) = inst.child.take() {
                pids.push((c.pid, inst.def.program.clone()));
            }
        }
        for (pid, _) in &pids {
            child::kill(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        let mut kill_deadline: Option<Instant> = None;
        while !pids.is_empty() {
            while let Some((pid, _)) = child::reap() {
                pids.retain(|(p, _)| *p != pid);
            }
            if pids.is_empty() {
                break;
            }
            let now = Instant::now();
            match kill_deadline {
                None if now >= deadline => {
                    for (pid, path) in &pids {
                        warning!(
                            "process {} pid {pid} did not stop: killing it",
                            path.display()
                        );
                        child::kill(*pid, libc::SIGKILL);
                    }
                    kill_deadline = Some(now + Duration::from_secs(1));
                }
                Some(t) if now >= t => break,
                _ => {}
            }
            let mut p = libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 20) };
            let _ = child::read_signals(&self.signals);
        }
        let _ = std::fs::remove_file(pid_file(&self.queue_dir));
        std::process::exit(0)
    }
}
