//! A whole Facteur instance for end-to-end tests: a private config
//! directory and queue under a temporary directory, master and every
//! service as real processes, run as whoever runs the tests. Mail for the
//! test user lands in Maildirs under `mail/` (`mail_spool_directory`
//! ends in `/`). Dropping the instance stops master (SIGTERM, then
//! SIGKILL after a bounded wait) and removes the directory.
#![allow(dead_code)]

pub mod peers;
pub mod smtp;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory of the built programs (daemons and commands share it).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_master"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A built program; says how to build it when missing.
pub fn program(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `default_privs` must not be root (Postfix refuses it): `nobody` when
/// the tests run as root, else the test user.
fn default_privs() -> String {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        "nobody".into()
    } else {
        user()
    }
}

fn group() -> String {
    let out = Command::new("id").arg("-gn").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `prog` with `args` and `input` on its standard input. A program
/// that refuses at once (queue_minfree, bad flags) exits without reading
/// its input: a broken pipe is then its answer, which the exit status and
/// stderr carry.
pub fn run_with_input(prog: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", prog.display()));
    let written = child.stdin.take().unwrap().write_all(input.as_bytes());
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing to {}: {e}",
            prog.display()
        );
    }
    child.wait_with_output().unwrap()
}

/// A loopback TCP port nothing listens on now (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms for up to `secs`; panics naming `what`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {secs}s waiting for {what}");
}

pub const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
smtp      unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
";

pub struct Instance {
    pub top: PathBuf,
    pub etc: String,
    pub queue: PathBuf,
    pub mail: PathBuf,
    pub log: PathBuf,
    master: Option<Child>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.top);
        } else {
            eprintln!("instance kept for inspection: {}", self.top.display());
            if let Ok(log) = fs::read_to_string(&self.log) {
                eprintln!("--- maillog ---\n{log}");
            }
        }
    }
}

impl Instance {
    /// A fresh instance named after `tag`; `extra` is appended to main.cf.
    pub fn new(tag: &str, extra: &str) -> Instance {
        let top = std::env::temp_dir().join(format!("facteur-e2e-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        let etc = top.join("etc");
        fs::create_dir_all(&etc).unwrap();
        let mail = top.join("mail");
        fs::create_dir_all(&mail).unwrap();
        let queue = top.join("queue");
        let log = top.join("maillog");
        // facteur_dns_servers points at a port where no DNS server
        // listens: mail to a remote domain (a bounce to a remote sender,
        // say) is deferred instead of looking up the real Internet. Tests
        // that route by DNS start their own server and override it.
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {q}\n\
             data_directory = {d}\n\
             daemon_directory = {bin}\n\
             mail_owner = {u}\n\
             setgid_group = {g}\n\
             default_privs = {p}\n\
             myhostname = mx.example.test\n\
             mydomain = example.test\n\
             myorigin = $myhostname\n\
             mydestination = $myhostname, localhost\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             mail_spool_directory = {m}/\n\
             alias_maps =\n\
             alias_database =\n\
             maillog_file = {l}\n\
             maillog_file_prefixes = /tmp, /var, /dev/stdout\n\
             facteur_dns_servers = 127.0.0.1:1\n\
             {extra}\n",
            q = queue.display(),
            d = top.join("data").display(),
            bin = bin_dir().display(),
            u = user(),
            p = default_privs(),
            g = group(),
            m = mail.display(),
            l = log.display(),
        );
        fs::create_dir_all(top.join("data")).unwrap();
        // Alias deliveries to files and commands run as default_privs:
        // let that user write here.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&top, fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(etc.join("main.cf"), main).unwrap();
        fs::write(etc.join("master.cf"), MASTER_CF).unwrap();
        Instance {
            etc: etc.to_str().unwrap().to_string(),
            top,
            queue,
            mail,
            log,
            master: None,
        }
    }

    /// Adds an smtpd listening on a free loopback port; returns the port.
    pub fn with_smtpd(&mut self) -> u16 {
        let port = free_port();
        let path = Path::new(&self.etc).join("master.cf");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "127.0.0.1:{port} inet n  -       n       -       -       smtpd\n"
        ));
        fs::write(&path, text).unwrap();
        port
    }

    /// Appends lines to main.cf.
    pub fn main_cf(&self, lines: &str) {
        let path = Path::new(&self.etc).join("main.cf");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(lines);
        text.push('\n');
        fs::write(&path, text).unwrap();
    }

    /// Writes a file under the instance's top directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.top.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    /// Starts master in the foreground and waits until qmgr, pickup and
    /// cleanup can be reached.
    pub fn start(&mut self) {
        let child = Command::new(program("master"))
            .args(["-d", "-c", &self.etc])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.master = Some(child);
        let public = self.queue.join("public");
        let pidfile = self.queue.join("pid/master.pid");
        wait_for(20, "master to write its pid and create its sockets", || {
            std::fs::read_to_string(&pidfile)
                .map(|t| t.trim() == pid.to_string())
                .unwrap_or(false)
                && ["pickup", "cleanup", "qmgr"]
                    .iter()
                    .all(|s| public.join(s).exists())
        });
    }

    /// kill -9 of master (its children notice and finish).
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(|c| c.id())
    }

    /// Stops master (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.master.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs sendmail with `args`, the message on standard input.
    pub fn sendmail(&self, args: &[&str], message: &str) -> Output {
        let mut all = vec!["-C", self.etc.as_str()];
        all.extend_from_slice(args);
        run_with_input(&program("sendmail"), &all, message)
    }

    /// Submits and asserts success.
    pub fn send(&self, args: &[&str], message: &str) {
        let out = self.sendmail(args, message);
        assert!(out.status.success(), "sendmail {args:?}: {out:?}");
    }

    /// Wakes pickup (as Postfix's postdrop does after a submission).
    pub fn kick(&self) {
        let _ = libmail::ipc::trigger(&self.queue.join("public/pickup"), b"W");
    }

    /// The files in a Maildir's new/ directory, oldest name first.
    pub fn maildir(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir.join("new"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v.iter().map(|p| fs::read_to_string(p).unwrap()).collect()
    }

    /// The test user's Maildir under mail_spool_directory.
    pub fn user_maildir(&self) -> PathBuf {
        self.mail.join(user())
    }

    /// Waits until `dir` (a Maildir) holds `n` messages; returns them.
    pub fn wait_maildir(&self, dir: &Path, n: usize) -> Vec<String> {
        self.kick();
        wait_for(30, &format!("{n} messages in {}", dir.display()), || {
            self.maildir(dir).len() >= n
        });
        self.maildir(dir)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line matching `pattern` (a regex).
    pub fn wait_log(&self, pattern: &str) -> String {
        let re = regex::Regex::new(pattern).unwrap();
        let mut found = String::new();
        wait_for(30, &format!("a log line matching {pattern}"), || match self
            .log_text()
            .lines()
            .find(|l| re.is_match(l))
        {
            Some(l) => {
                found = l.to_string();
                true
            }
            None => false,
        });
        found
    }

    /// Files in a queue (recursively).
    pub fn queue_files(&self, q: &str) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = fs::read_dir(d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.queue.join(q), &mut out);
        out
    }
}

/// The bounce, defer and trace services of conf/master.cf, which
/// [`MASTER_CF`] leaves out (see [`Instance::with_bounce`]).
pub const BOUNCE_SERVICES: &str = "\
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
";

impl Instance {
    /// Adds the bounce, defer and trace services to master.cf unless it
    /// has them (before `start`, or followed by [`Instance::reload`]).
    pub fn with_bounce(&self) {
        let path = Path::new(&self.etc).join("master.cf");
        let mut text = fs::read_to_string(&path).unwrap();
        if !text.contains(BOUNCE_SERVICES) {
            text.push_str(BOUNCE_SERVICES);
            fs::write(&path, text).unwrap();
        }
    }

    /// Removes the bounce, defer and trace services from master.cf.
    pub fn without_bounce(&self) {
        let path = Path::new(&self.etc).join("master.cf");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace(BOUNCE_SERVICES, "")).unwrap();
    }

    /// `postfix reload`: SIGHUP to master, which re-reads its
    /// configuration and restarts qmgr.
    pub fn reload(&self) {
        let pid = self.master_pid().expect("master runs");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }

    /// Log lines matching `pattern` (a regex).
    pub fn log_lines(&self, pattern: &str) -> Vec<String> {
        let re = regex::Regex::new(pattern).unwrap();
        self.log_text()
            .lines()
            .filter(|l| re.is_match(l))
            .map(str::to_string)
            .collect()
    }
}

/// The queue ID a log line is about (`... prog[pid]: ID: ...`).
pub fn logged_id(line: &str) -> String {
    line.split("]: ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_default()
        .to_string()
}
