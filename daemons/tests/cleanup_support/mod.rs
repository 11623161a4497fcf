//! Shared by the cleanup and pickup integration tests: a private
//! instance (main.cf, queue directory, log file) and daemons started as
//! master starts them, killed on drop.

#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use libmail::queue::{Ownership, Queue, QueueLayout};

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A started daemon, killed and reaped on drop (also when a test fails).
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Instance {
    pub dir: PathBuf,
    pub layout: QueueLayout,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Instance {
    pub fn new(name: &str, extra: &str) -> Instance {
        let dir = std::env::temp_dir().join(format!(
            "facteur-it-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/header_checks"),
            "/^Subject: .*buy now/ REJECT Spam\n/^X-Hold:/ HOLD\n",
        )
        .unwrap();
        let main = format!(
            "queue_directory = {d}/q\nmyhostname = mx.example.com\nmydomain = example.com\n\
             myorigin = example.com\nmydestination = example.com, localhost\n\
             maillog_file = {d}/maillog\nmaillog_file_prefixes = /tmp, /var, /dev/stdout\nheader_checks = regexp:{d}/etc/header_checks\n\
             message_size_limit = 100000\n{extra}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("etc/main.cf"), main).unwrap();
        let layout = QueueLayout::new(dir.join("q"), "deferred, defer", 1).unwrap();
        layout.create_or_repair(&Ownership::CurrentUser).unwrap();
        Instance { dir, layout }
    }

    pub fn socket(&self, service: &str) -> PathBuf {
        self.layout.root().join("public").join(service)
    }

    /// Starts `program` listening on public/SERVICE; returns once it
    /// wrote "R" on its status pipe.
    pub fn start(&self, program: &str, service: &str) -> Daemon {
        let listener = UnixListener::bind(self.socket(service)).unwrap();
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors we own.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let lfd = listener.as_raw_fd();
        let wfd = wr.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args([
            "-c",
            self.dir.join("etc").to_str().unwrap(),
            "-n",
            service,
            "-t",
            "unix",
        ])
        .env("MAIL_CONFIG", self.dir.join("etc"));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both out of the way first: either may already be
                // 3 or 4, and dup2 onto itself would keep close-on-exec.
                let l = libc::fcntl(lfd, libc::F_DUPFD, 10);
                let w = libc::fcntl(wfd, libc::F_DUPFD, 10);
                if l < 0 || w < 0 || libc::dup2(l, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(l);
                libc::close(w);
                Ok(())
            });
        }
        let child = Daemon(cmd.spawn().unwrap());
        drop(wr);
        drop(listener);
        let mut status = std::fs::File::from(rd);
        let mut b = [0u8; 1];
        let n = status.read(&mut b).unwrap();
        assert_eq!((n, b[0]), (1, b'R'), "{program} did not start");
        child
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits (bounded) until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let l = self.log();
            if let Some(line) = l.lines().find(|x| x.contains(needle)) {
                return line.to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no log line with {needle:?} in:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn files(&self, q: Queue) -> Vec<PathBuf> {
        self.layout
            .scan_all(q)
            .filter_map(|r| r.ok())
            .map(|f| match f {
                libmail::queue::Found::Complete { path, .. }
                | libmail::queue::Found::Incomplete { path, .. }
                | libmail::queue::Found::Temporary { path, .. }
                | libmail::queue::Found::Other { path } => path,
            })
            .collect()
    }
}
