//! `facteur start/status/reload/flush/stop/abort` against the real master
//! (built by `cargo build --workspace`, next to the facteur binary), with
//! python3 programs as the services. Every process is killed by pid when
//! a test ends, failed or not.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A fake trigger daemon: `R` on fd 4, then logs what each connection
/// sends to `$MAIL_CONFIG/../events`; exits on SIGTERM.
const SERVICE: &str = r#"#!/usr/bin/env python3
import os, socket, sys, signal
events = os.path.join(os.environ["MAIL_CONFIG"], "..", "events")
name = sys.argv[sys.argv.index("-n") + 1]
def event(text):
    with open(events, "a") as f:
        f.write(text + "\n")
event("start %s %d" % (name, os.getpid()))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
os.write(4, b"R")
os.close(4)
s = socket.socket(fileno=3)
s.setblocking(True)
while True:
    c, _ = s.accept()
    data = b""
    while True:
        more = c.recv(100)
        if not more:
            break
        data += more
    event("got %s %s" % (name, data.decode()))
    c.close()
"#;

struct Setup {
    top: PathBuf,
    etc: String,
    queue: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let pid = |p: &Path| {
            fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        };
        if let Some(p) = pid(&self.top.join("data/master.lock")).filter(|&p| p > 0) {
            // SAFETY: kill(2) on one positive pid.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for line in self.events().lines() {
            if let Some(p) = line
                .strip_prefix("start ")
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|&p| p > 0)
            {
                // SAFETY: kill(2) on one positive pid.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if std::env::var_os("KEEP_TEST_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.top);
        }
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("timed out after 10 s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let facteur = Path::new(env!("CARGO_BIN_EXE_facteur"));
        let master = facteur.with_file_name("master");
        assert!(
            master.is_file(),
            "{} is missing: run `cargo build --workspace` first (scripts/test.sh does)",
            master.display()
        );
        let top =
            std::env::temp_dir().join(format!("facteur-control-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        let etc = top.join("etc");
        let libexec = top.join("libexec");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&libexec).unwrap();
        std::os::unix::fs::symlink(&master, libexec.join("master")).unwrap();
        let svc = libexec.join("svc");
        fs::write(&svc, SERVICE).unwrap();
        fs::set_permissions(&svc, fs::Permissions::from_mode(0o755)).unwrap();
        let queue = top.join("queue");
        fs::write(
            etc.join("main.cf"),
            format!(
                "queue_directory = {q}\ndata_directory = {t}/data\ndaemon_directory = {l}\n\
                 mail_owner = {u}\nsetgid_group = {g}\nmaillog_file = {t}/maillog\nmaillog_file_prefixes = /tmp, /var, /dev/stdout\n",
                q = queue.display(),
                t = top.display(),
                l = libexec.display(),
                u = id("-un"),
                g = id("-gn"),
            ),
        )
        .unwrap();
        fs::write(
            etc.join("master.cf"),
            "pickup unix n - n 60 1 svc\nqmgr unix n - n 300 1 svc\n",
        )
        .unwrap();
        fs::write(top.join("events"), "").unwrap();
        Setup {
            etc: etc.to_str().unwrap().to_string(),
            top,
            queue,
        }
    }

    fn facteur(&self, command: &str) -> (i32, String) {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["-c", &self.etc, command])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn events(&self) -> String {
        fs::read_to_string(self.top.join("events")).unwrap_or_default()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.top.join("maillog")).unwrap_or_default()
    }

    fn master_pid(&self) -> i32 {
        fs::read_to_string(self.queue.join("pid/master.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn not_running_messages() {
    let s = Setup::new("down");
    for cmd in ["stop", "abort", "reload", "flush"] {
        let (code, err) = s.facteur(cmd);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert_eq!(
            err, "postfix/postfix-script: fatal: the Postfix mail system is not running\n",
            "{cmd}"
        );
    }
    let (code, err) = s.facteur("status");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "postfix/postfix-script: the Postfix mail system is not running\n"
    );
}

#[test]
fn start_status_reload_flush_stop() {
    let s = Setup::new("cycle");
    let (code, err) = s.facteur("start");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("postfix/postfix-script: starting the Postfix mail system"),
        "{err}"
    );
    assert!(s.log().contains("postfix/postfix-script["), "{}", s.log());
    assert!(s.log().contains("daemon started -- version 3.7.11"));
    let pid = s.master_pid();
    // Python takes a moment to start: let both services say they run.
    wait_for("pickup and qmgr to start", || {
        let e = s.events();
        (e.contains("start pickup") && e.contains("start qmgr")).then_some(())
    });
    let (code, err) = s.facteur("status");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        format!("postfix/postfix-script: the Postfix mail system is running: PID: {pid}\n")
    );
    let (code, err) = s.facteur("start");
    assert_eq!(code, 1);
    assert!(
        err.contains("postfix/postfix-script: fatal: the Postfix mail system is already running"),
        "{err}"
    );

    // flush: FADI to qmgr, W to pickup.
    let (code, err) = s.facteur("flush");
    assert_eq!(code, 0, "{err}");
    wait_for("qmgr to get FADI", || {
        s.events().contains("got qmgr FADI").then_some(())
    });

    let (code, err) = s.facteur("reload");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "postfix/postfix-script: refreshing the Postfix mail system\n"
    );
    wait_for("the reload", || {
        s.log().contains("reload -- version 3.7.11").then_some(())
    });
    wait_for("the wakeup services to restart", || {
        (s.events().matches("start pickup").count() >= 2).then_some(())
    });

    let (code, err) = s.facteur("stop");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.starts_with("postfix/postfix-script: stopping the Postfix mail system\n"),
        "{err}"
    );
    assert!(!err.contains("with force"), "{err}");
    let (code, _) = s.facteur("status");
    assert_eq!(code, 1);
    assert!(s.log().contains("terminating on signal 15"));
}

#[test]
fn abort_stops_without_waiting() {
    let s = Setup::new("abort");
    let (code, err) = s.facteur("start");
    assert_eq!(code, 0, "{err}");
    let (code, err) = s.facteur("abort");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "postfix/postfix-script: aborting the Postfix mail system\n"
    );
    wait_for("master to stop", || {
        (s.facteur("status").0 == 1).then_some(())
    });
}

#[test]
fn start_refuses_a_bad_configuration() {
    let s = Setup::new("badconf");
    fs::write(
        Path::new(&s.etc).join("main.cf"),
        format!(
            "{}smtpd_helo_required = true\n",
            fs::read_to_string(Path::new(&s.etc).join("main.cf")).unwrap()
        ),
    )
    .unwrap();
    let (code, err) = s.facteur("start");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error:"), "{err}");
    assert_eq!(s.facteur("status").0, 1);
}
