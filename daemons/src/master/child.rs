//! Processes: the signal self-pipe, starting a child with its listener at
//! fd 3 and its status pipe at fd 4, and reaping.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use libmail::service::{LISTEN_FD, STATUS_FD};

/// The write end of the self-pipe the signal handler writes to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking,
        // so a full pipe drops the byte (a wakeup is already pending).
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: a two-element array for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, flags only.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Installs the handlers for SIGHUP, SIGTERM, SIGINT and SIGCHLD; each
/// writes its number into the returned pipe, which the main loop polls.
pub fn install_signals() -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    set_nonblocking(r.as_raw_fd())?;
    set_nonblocking(w.as_raw_fd())?;
    SIGNAL_PIPE.store(w.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(w); // lives as long as the process
    for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
        // SAFETY: the handler only calls write(2) on a descriptor that
        // stays open; the sigaction struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut sa.sa_mask);
            cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
        }
    }
    // SAFETY: ignoring SIGPIPE has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(r)
}

/// Reads the signal numbers waiting in the self-pipe.
pub fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        // SAFETY: reading into a buffer of the size given.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
    }
    out
}

/// Who a child runs as, decided once per configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// The uid and primary gid of a user name.
pub fn lookup_user(name: &str) -> Option<Ids> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is valid; getpwnam_r fills it from buf,
    // whose size is given.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut res,
        );
        if r != 0 || res.is_null() {
            return None;
        }
        Some(Ids {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// How to start one child.
pub struct Spawn<'a> {
    pub program: &'a Path,
    pub argv: Vec<String>,
    pub config_dir: &'a str,
    pub maxproc: u32,
    pub listener: RawFd,
    /// Drop to these ids before exec (root only).
    pub ids: Option<Ids>,
    /// master.cf's chroot (root only): the daemon starts as root, jails
    /// itself in queue_directory once set up, then runs as these ids
    /// (libmail::service, "Privileges and the chroot jail").
    pub jail: Option<Option<Ids>>,
}

/// `close_range` flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Starts a child; returns its pid and the read end of its status pipe
/// (non-blocking). An exec failure comes back as the error.
pub fn spawn(s: &Spawn) -> io::Result<(i32, OwnedFd)> {
    let (status_r, status_w) = pipe()?;
    set_nonblocking(status_r.as_raw_fd())?;
    let mut cmd = Command::new(s.program);
    cmd.args(&s.argv)
        .env("MAIL_CONFIG", s.config_dir)
        .env("FACTEUR_MAXPROC", s.maxproc.to_string())
        .env("FACTEUR_MASTER_PID", std::process::id().to_string())
        .stdin(Stdio::null());
    if let Some(after) = s.jail {
        cmd.env("FACTEUR_CHROOT", "1");
        if let Some(i) = after {
            cmd.env("FACTEUR_RUN_AS", format!("{}:{}", i.uid, i.gid));
        }
    }
    let listener = s.listener;
    let status = status_w.as_raw_fd();
    let ids = if s.jail.is_some() { None } else { s.ids };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (fcntl, dup2, close_range,
    // setgroups, setgid, setuid) on values prepared before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Copy both descriptors above 10 first, so that moving one to 3
            // cannot overwrite the other; the copies are close-on-exec.
            let l = cvt(libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 10))?;
            let w = cvt(libc::fcntl(status, libc::F_DUPFD_CLOEXEC, 10))?;
            // dup2 clears close-on-exec on the targets: these two survive.
            cvt(libc::dup2(l, LISTEN_FD))?;
            cvt(libc::dup2(w, STATUS_FD))?;
            // Descriptors master inherited from whoever started it (a
            // jobserver pipe, a terminal) must not reach the daemons:
            // mark everything above the status pipe close-on-exec
            // (close_range with CLOSE_RANGE_CLOEXEC, Linux 5.11; older
            // kernels refuse and keep them, harmlessly).
            libc::syscall(
                libc::SYS_close_range,
                (STATUS_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if let Some(ids) = ids {
                let g: libc::gid_t = ids.gid;
                cvt(libc::setgroups(1, &g))?;
                cvt(libc::setgid(ids.gid))?;
                cvt(libc::setuid(ids.uid))?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The std handle is dropped without waiting: master reaps with
    // waitpid(-1) in its loop.
    let pid = child.id() as i32;
    drop(status_w);
    Ok((pid, status_r))
}

/// How a child ended, as Postfix words it.
pub enum Exit {
    Status(i32),
    Signal(i32),
}

impl Exit {
    pub fn normal(&self) -> bool {
        matches!(self, Exit::Status(0))
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Status(s) => format!("exit status {s}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
        }
    }
}

/// One exited child, if any, without blocking.
pub fn reap() -> Option<(i32, Exit)> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid with a valid pointer to an int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Status(libc::WEXITSTATUS(status))
    };
    Some((pid, exit))
}

/// Sends a signal to one process.
pub fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a positive pid (never a group).
        unsafe { libc::kill(pid, sig) };
    }
}

/// What a child said on its status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `R`: started well.
    pub ready: bool,
    /// `D`: stops accepting (max_use, max_idle) and exits once its
    /// connections are done: a successor may start now.
    pub retiring: bool,
    /// End of file: the child closed it, by exiting.
    pub eof: bool,
}

/// Reads the status pipe; `None` when nothing is there yet.
pub fn read_status(fd: &OwnedFd) -> Option<Status> {
    let mut buf = [0u8; 16];
    // SAFETY: reading into a buffer of the size given.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Some(Status {
            ready: false,
            retiring: false,
            eof: true,
        }),
        n if n > 0 => {
            let got = &buf[..n as usize];
            Some(Status {
                ready: got.contains(&b'R'),
                retiring: got.contains(&b'D'),
                eof: false,
            })
        }
        _ => None,
    }
}
