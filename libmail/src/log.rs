//! Logging in Postfix's format, so that pflogsumm, fail2ban and logwatch
//! read Facteur's logs unchanged.
//!
//! ```text
//! Nov 25 16:41:34 myhostname postfix/pickup[1234]: 4F2A51C0D2: uid=1000 from=<alice>
//! ```
//!
//! The tag is `syslog_name/program[pid]` (`syslog_name` after master.cf
//! `-o` overrides, so `postfix/submission/smtpd`). Severities are text
//! prefixes: `warning: `, `error: `, `fatal: `, `panic: `. With
//! `maillog_file` set, each line is appended to that file (opened with
//! O_APPEND, one `write` per line, so lines of concurrent processes never
//! interleave); Postfix routes the same lines through its postlogd
//! service, Facteur's daemons write them directly. Otherwise lines go to
//! syslog(3) with facility `syslog_facility` (default `mail`). Before
//! [`init`], and in addition to syslog for commands run by a person
//! ([`Logger::stderr`]), lines go to standard error as `program: text`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::config::params::Params;

/// Where lines go.
enum Sink {
    File(File),
    Syslog,
}

/// The process's logger.
pub struct Logger {
    tag: String,
    program: String,
    host: String,
    sink: Mutex<Sink>,
    /// Also echo to standard error (commands run by hand).
    stderr: bool,
    verbose: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Longest logged line; longer text is cut (Postfix cuts at about 2 KiB
/// in syslog; a file gets more).
const MAX_LINE: usize = 8192;

fn facility(name: &str) -> libc::c_int {
    match name {
        "auth" => libc::LOG_AUTH,
        "daemon" => libc::LOG_DAEMON,
        "user" => libc::LOG_USER,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => libc::LOG_MAIL,
    }
}

/// Sets up logging for `program` from the configuration. Call once, after
/// `-o` overrides were applied. Returns an error text when `maillog_file`
/// cannot be opened (the caller reports it and exits).
pub fn init(program: &str, params: &Params, echo_stderr: bool) -> Result<(), String> {
    let syslog_name = params
        .value("syslog_name")
        .unwrap_or_else(|_| "postfix".into());
    let host = params
        .value("myhostname")
        .unwrap_or_else(|_| "localhost".into());
    let file = params.value("maillog_file").unwrap_or_default();
    let tag = format!("{syslog_name}/{program}");
    watch_forks();
    if !file.is_empty() {
        let prefixes = params.value("maillog_file_prefixes").unwrap_or_default();
        if !crate::config::params::split_list(&prefixes)
            .iter()
            .any(|p| file.starts_with(p))
        {
            return Err(format!(
                "maillog_file value '{file}' does not match any prefix in maillog_file_prefixes"
            ));
        }
    }
    let sink = if !file.is_empty() {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&file)
            .map_err(|e| format!("open logfile {file}: {e}"))?;
        Sink::File(f)
    } else {
        let fac = facility(
            &params
                .value("syslog_facility")
                .unwrap_or_else(|_| "mail".into()),
        );
        let ident = std::ffi::CString::new(tag.clone()).unwrap_or_default();
        // openlog keeps the pointer: leak the string for the process's life.
        let ident: &'static std::ffi::CStr = Box::leak(ident.into_boxed_c_str());
        // SAFETY: ident lives forever; flags and facility are valid.
        unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, fac) };
        Sink::Syslog
    };
    let _ = LOGGER.set(Logger {
        tag,
        program: program.to_string(),
        host: host.split('.').next().unwrap_or(&host).to_string(),
        sink: Mutex::new(sink),
        stderr: echo_stderr,
        verbose: false,
    });
    Ok(())
}

/// Gives a `maillog_file` that is a regular file to `uid`:`gid` (master,
/// as root, so the services it runs as `mail_owner` can append to it;
/// Postfix has its postlogd do the writing instead).
pub fn chown_file(uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Some(l) = LOGGER.get() else {
        return Ok(());
    };
    let sink = l.sink.lock().unwrap_or_else(|e| e.into_inner());
    if let Sink::File(f) = &*sink {
        if f.metadata()?.is_file() {
            // SAFETY: fchown on an open descriptor.
            if unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Turns on `-v` messages.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, std::sync::atomic::Ordering::Relaxed);
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `-v` messages are logged.
pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed) || LOGGER.get().is_some_and(|l| l.verbose)
}

/// The syslog timestamp `Mmm dd hh:mm:ss` in local time.
fn timestamp() -> String {
    crate::date::syslog_stamp(crate::date::now())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    Info,
    Warning,
    Error,
    Fatal,
    Panic,
}

impl Level {
    fn prefix(self) -> &'static str {
        match self {
            Level::Info => "",
            Level::Warning => "warning: ",
            Level::Error => "error: ",
            Level::Fatal => "fatal: ",
            Level::Panic => "panic: ",
        }
    }

    fn priority(self) -> libc::c_int {
        match self {
            Level::Info => libc::LOG_INFO,
            Level::Warning => libc::LOG_WARNING,
            Level::Error => libc::LOG_ERR,
            Level::Fatal => libc::LOG_CRIT,
            Level::Panic => libc::LOG_ALERT,
        }
    }
}

fn cut(text: &str) -> &str {
    if text.len() <= MAX_LINE {
        return text;
    }
    let mut end = MAX_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The process ID, read once: `getpid` per log line (and per queue
/// file) was a system call each. A child of `fork` without `exec` (local
/// changing user for a delivery, master's `-w`) is told by a
/// `pthread_atfork` handler, installed before the first value is kept, so
/// it sees its own ID, never its parent's.
pub fn process_id() -> u32 {
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    watch_forks();
    let p = std::process::id();
    PID.store(p, Ordering::Relaxed);
    p
}

static PID: AtomicU32 = AtomicU32::new(0);

/// In the child of a fork: forget the parent's ID (an atomic store is
/// async-signal-safe, as a fork handler must be).
extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

/// Installs [`forget_pid`] once. [`init`] calls it early, while the
/// process has one thread, so no fork can find it half done.
fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
}

/// Logs one line.
pub fn log(level: Level, text: &str) {
    let text = cut(text);
    let Some(l) = LOGGER.get() else {
        eprintln!("{}{}", level.prefix(), text);
        return;
    };
    if l.stderr {
        eprintln!("{}: {}{}", l.program, level.prefix(), text);
    }
    let mut sink = l.sink.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *sink {
        Sink::File(f) => {
            let line = format!(
                "{} {} {}[{}]: {}{}\n",
                timestamp(),
                l.host,
                l.tag,
                process_id(),
                level.prefix(),
                text
            );
            let _ = f.write_all(line.as_bytes());
        }
        Sink::Syslog => {
            let msg =
                std::ffi::CString::new(format!("{}{}", level.prefix(), text).replace('\0', " "))
                    .unwrap_or_default();
            // SAFETY: "%s" with a valid C string.
            unsafe { libc::syslog(level.priority(), c"%s".as_ptr(), msg.as_ptr()) };
        }
    }
}

/// Logs only when verbose logging is on.
pub fn debug(text: &str) {
    if verbose() {
        log(Level::Info, text);
    }
}

/// Logs `fatal: text` and exits with status 1.
pub fn fatal(text: &str) -> ! {
    log(Level::Fatal, text);
    std::process::exit(1)
}

/// `info!("fmt", args)`: a plain log line.
#[macro_export]
macro_rules! info {
    ($($a:tt)*) => { $crate::log::log($crate::log::Level::Info, &format!($($a)*)) };
}

/// `warning!("fmt", args)`: a `warning: ` line.
#[macro_export]
macro_rules! warning {
    ($($a:tt)*) => { $crate::log::log($crate::log::Level::Warning, &format!($($a)*)) };
}

/// `fatal!("fmt", args)`: a `fatal: ` line, then exit 1.
#[macro_export]
macro_rules! fatal {
    ($($a:tt)*) => { $crate::log::fatal(&format!($($a)*)) };
}

/// `debug!("fmt", args)`: only with `-v`.
#[macro_export]
macro_rules! debug {
    ($($a:tt)*) => { if $crate::log::verbose() { $crate::log::log($crate::log::Level::Info, &format!($($a)*)) } };
}

/// Formats a delay as Postfix logs it: 2 significant digits, nothing
/// below 0.01 s (`0.0004` → `0`, `0.0123` → `0.01`, `0.123` → `0.12`,
/// `1.234` → `1.2`, `12.34` → `12`, `123.4` → `123`).
pub fn format_delay(secs: f64) -> String {
    if secs.is_nan() || secs < 0.01 {
        return "0".into();
    }
    if secs >= 10.0 {
        return format!("{}", secs as u64);
    }
    let s = if secs >= 1.0 {
        format!("{:.1}", (secs * 10.0).floor() / 10.0)
    } else {
        format!("{:.2}", (secs * 100.0).floor() / 100.0)
    };
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s.is_empty() {
        "0".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_id_is_the_childs_after_fork() {
        assert_eq!(process_id(), std::process::id());
        // SAFETY: the child only reads its ID and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: getpid and _exit have no preconditions.
            let ok = process_id() == unsafe { libc::getpid() } as u32;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(process_id(), std::process::id());
    }

    #[test]
    fn delays_have_two_significant_digits_and_a_floor() {
        for (v, want) in [
            (0.0004, "0"),
            (0.0123, "0.01"),
            (0.123, "0.12"),
            (1.234, "1.2"),
            (12.34, "12"),
            (123.4, "123"),
            (0.5, "0.5"),
            (2.0, "2"),
            (0.0, "0"),
        ] {
            assert_eq!(format_delay(v), want, "{v}");
        }
    }

    #[test]
    fn maillog_file_must_match_a_prefix() {
        let (m, _) =
            crate::config::maincf::MainCf::parse("maillog_file = /home/x/log\n", "/x/main.cf");
        let p = Params::new("/x", m);
        let e = init("test", &p, false).unwrap_err();
        assert_eq!(
            e,
            "maillog_file value '/home/x/log' does not match any prefix in maillog_file_prefixes"
        );
    }

    #[test]
    fn timestamp_looks_like_syslog() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(&t[9..10], ":");
    }
}
