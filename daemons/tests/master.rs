//! master(8) end to end: a private instance in a temporary directory whose
//! "daemons" are small python3 programs (they follow libmail::service's
//! contract: `R` on fd 4, accept on fd 3). Every process is killed by pid
//! when a test ends, failed or not.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fake daemon. It appends events to `$MAIL_CONFIG/../events`:
/// `start NAME PID ARGS...`, `got NAME PID DATA`, `exit NAME PID`.
/// With the argument `bad` it exits 1 before saying ready. A connection
/// that sends `hold` is served until the client sends `end`, then gets
/// `done PID`; SIGTERM makes it exit after the connection in progress.
const SERVICE: &str = r#"#!/usr/bin/env python3
import os, socket, sys, signal
events = os.path.join(os.environ["MAIL_CONFIG"], "..", "events")
name = sys.argv[sys.argv.index("-n") + 1]
pid = os.getpid()
def event(text):
    with open(events, "a") as f:
        f.write(text + "\n")
event("start %s %d %s maxproc=%s" % (name, pid, " ".join(sys.argv[1:]), os.environ.get("FACTEUR_MAXPROC")))
if "bad" in sys.argv:
    sys.exit(1)
stopping = []
signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
os.write(4, b"R")
os.close(4)
s = socket.socket(fileno=3)
s.settimeout(0.1)
while not stopping:
    try:
        c, _ = s.accept()
    except (socket.timeout, BlockingIOError):
        continue
    c.settimeout(None)
    data = c.recv(100)
    event("got %s %d %r" % (name, pid, data))
    if data.startswith(b"hold"):
        rest = b""
        while b"end" not in rest:
            more = c.recv(100)
            if not more:
                break
            rest += more
        c.sendall(b"done %d\n" % pid)
    c.close()
event("exit %s %d" % (name, pid))
"#;

struct Instance {
    top: PathBuf,
    etc: PathBuf,
    queue: PathBuf,
    master: Option<Child>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut m) = self.master.take() {
            signal(m.id() as i32, libc::SIGKILL);
            let _ = m.wait();
        }
        // Children of a killed master: kill them by the pids they logged.
        for line in self.events().lines() {
            if let Some(pid) = line
                .strip_prefix("start ")
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                signal(pid, libc::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&self.top);
    }
}

fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on one positive pid.
        unsafe { libc::kill(pid, sig) };
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Polls `f` every 20 ms for up to 10 s.
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

impl Instance {
    fn new(tag: &str, master_cf: &str, extra: &str) -> Instance {
        let top = std::env::temp_dir().join(format!("facteur-master-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        let etc = top.join("etc");
        let libexec = top.join("libexec");
        fs::create_dir_all(&etc).unwrap();
        fs::create_dir_all(&libexec).unwrap();
        let svc = libexec.join("svc");
        fs::write(&svc, SERVICE).unwrap();
        fs::set_permissions(&svc, fs::Permissions::from_mode(0o755)).unwrap();
        let queue = top.join("queue");
        fs::write(
            etc.join("main.cf"),
            format!(
                "queue_directory = {q}\ndata_directory = {t}/data\ndaemon_directory = {l}\n\
                 mail_owner = {u}\nsetgid_group = {g}\nmaillog_file = {t}/maillog\nmaillog_file_prefixes = /tmp, /var, /dev/stdout\n\
                 inet_interfaces = loopback-only\ninet_protocols = ipv4\n{extra}",
                q = queue.display(),
                t = top.display(),
                l = libexec.display(),
                u = id("-un"),
                g = id("-gn"),
            ),
        )
        .unwrap();
        fs::write(etc.join("master.cf"), master_cf).unwrap();
        fs::write(top.join("events"), "").unwrap();
        Instance {
            top,
            etc,
            queue,
            master: None,
        }
    }

    fn master_cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_master"));
        c.arg("-d")
            .arg("-c")
            .arg(&self.etc)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Starts master in the foreground and waits for `daemon started`.
    fn start(&mut self) {
        self.master = Some(self.master_cmd().spawn().unwrap());
        self.wait_log("daemon started -- version 3.7.11, configuration");
    }

    fn master_pid(&self) -> i32 {
        self.master.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        fs::read_to_string(self.top.join("maillog")).unwrap_or_default()
    }

    fn events(&self) -> String {
        fs::read_to_string(self.top.join("events")).unwrap_or_default()
    }

    fn wait_log(&self, text: &str) {
        wait_for(&format!("log line {text:?}"), || {
            self.log().contains(text).then_some(())
        });
    }

    /// Events of `kind` (`start`, `got`, `exit`) for service `name`.
    fn events_of(&self, kind: &str, name: &str) -> Vec<String> {
        let prefix = format!("{kind} {name} ");
        self.events()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// The pid in an event line.
    fn pid_of(line: &str) -> i32 {
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    fn connect(&self, service: &str) -> UnixStream {
        let path = self.queue.join("private").join(service);
        wait_for(&format!("socket {}", path.display()), || {
            UnixStream::connect(&path).ok()
        })
    }

    fn send(&self, service: &str, data: &[u8]) {
        let mut s = self.connect(service);
        s.write_all(data).unwrap();
    }

    /// Waits for master to exit; its status.
    fn wait_master_exit(&mut self) -> std::process::ExitStatus {
        let m = self.master.as_mut().unwrap();
        let status = wait_for("master to exit", || m.try_wait().unwrap());
        self.master = None;
        status
    }
}

fn path_exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

#[test]
fn wakeup_service_starts_at_once_and_gets_triggers() {
    let mut inst = Instance::new("wakeup", "pickup unix n - n 1 1 svc\n", "");
    inst.start();
    let start = wait_for("pickup to start", || {
        inst.events_of("start", "pickup").first().cloned()
    });
    assert!(start.contains("-n pickup -t unix"), "{start}");
    assert!(start.ends_with("maxproc=1"), "{start}");
    assert!(path_exists(&inst.queue.join("public/pickup")));
    wait_for("two W triggers", || {
        (inst
            .events_of("got", "pickup")
            .iter()
            .filter(|l| l.ends_with("b'W'"))
            .count()
            >= 2)
            .then_some(())
    });
    assert_eq!(
        inst.events_of("start", "pickup").len(),
        1,
        "{}",
        inst.events()
    );
    let pid_file = fs::read_to_string(inst.queue.join("pid/master.pid")).unwrap();
    assert_eq!(pid_file.trim(), inst.master_pid().to_string());
}

#[test]
fn service_starts_on_demand_and_restarts_after_kill() {
    let mut inst = Instance::new(
        "demand",
        "ondemand unix - - n - 7 svc -o foo=bar\nsmtpd unix - - n - - smtpd\n",
        "",
    );
    inst.start();
    assert!(inst.log().contains(&format!(
        "warning: service smtpd/unix: program {}/libexec/smtpd is not available -- skipping",
        inst.top.display()
    )));
    assert!(!path_exists(&inst.queue.join("private/smtpd")));
    assert!(
        inst.events_of("start", "ondemand").is_empty(),
        "started before use"
    );
    inst.send("ondemand", b"hello");
    let got = wait_for("the connection to be served", || {
        inst.events_of("got", "ondemand").first().cloned()
    });
    assert!(got.ends_with("b'hello'"), "{got}");
    let start = inst.events_of("start", "ondemand")[0].clone();
    assert!(start.contains("-o foo=bar"), "{start}");
    assert!(start.ends_with("maxproc=7"), "{start}");
    let pid = Instance::pid_of(&start);

    signal(pid, libc::SIGKILL);
    inst.wait_log(&format!("pid {pid} killed by signal 9"));
    assert!(!inst.log().contains("bad command startup"));
    inst.send("ondemand", b"again");
    let second = wait_for("a second process", || {
        inst.events_of("start", "ondemand").get(1).cloned()
    });
    assert_ne!(Instance::pid_of(&second), pid);
    wait_for("the second connection to be served", || {
        inst.events_of("got", "ondemand")
            .iter()
            .any(|l| l.ends_with("b'again'"))
            .then_some(())
    });
}

#[test]
fn bad_start_is_throttled() {
    let mut inst = Instance::new(
        "bad",
        "bad unix - - n - - svc bad\n",
        "service_throttle_time = 60s\n",
    );
    inst.start();
    inst.send("bad", b"x");
    inst.wait_log("svc: bad command startup -- throttling");
    assert!(inst.log().contains("exit status 1"), "{}", inst.log());
    // More clients while throttled: no new process. (A negative check:
    // a short bounded wait is the only way to see nothing happen.)
    for _ in 0..3 {
        inst.send("bad", b"y");
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        inst.events_of("start", "bad").len(),
        1,
        "restarted while throttled:\n{}",
        inst.events()
    );
    assert!(alive(inst.master_pid()));
}

#[test]
fn reload_keeps_connection_and_restarts_with_new_config() {
    let mut inst = Instance::new(
        "reload",
        "hold unix - - n - - svc -o gen=1\ngone unix - - n - - svc\n",
        "",
    );
    inst.start();
    inst.send("gone", b"hi");
    wait_for("gone to serve", || {
        (!inst.events_of("got", "gone").is_empty()).then_some(())
    });
    let mut held = inst.connect("hold");
    held.write_all(b"hold").unwrap();
    let first = wait_for("hold to serve", || {
        inst.events_of("got", "hold").first().cloned()
    });
    let old_pid = Instance::pid_of(&first);

    fs::write(
        inst.etc.join("master.cf"),
        "hold unix - - n - - svc -o gen=2\n",
    )
    .unwrap();
    signal(inst.master_pid(), libc::SIGHUP);
    inst.wait_log("reload -- version 3.7.11, configuration");
    // The removed service's socket goes away; the kept one stays bound.
    wait_for("the removed socket to go", || {
        (!path_exists(&inst.queue.join("private/gone"))).then_some(())
    });
    inst.send("hold", b"new");
    let second = wait_for("a new process with the new configuration", || {
        inst.events_of("start", "hold").get(1).cloned()
    });
    assert!(second.contains("-o gen=2"), "{second}");
    wait_for("the new process to serve", || {
        inst.events_of("got", "hold")
            .iter()
            .any(|l| l.ends_with("b'new'"))
            .then_some(())
    });
    // The old process is still finishing the held connection.
    assert!(
        inst.events_of("exit", "hold").is_empty(),
        "{}",
        inst.events()
    );
    held.write_all(b"end").unwrap();
    let mut reply = String::new();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("done {old_pid}\n"));
    wait_for("the old process to exit", || {
        inst.events_of("exit", "hold")
            .iter()
            .any(|l| Instance::pid_of(l) == old_pid)
            .then_some(())
    });
    assert!(
        !inst.log().contains("bad command startup"),
        "{}",
        inst.log()
    );
}

#[test]
fn sigterm_stops_master_and_children() {
    let mut inst = Instance::new("stop", "pickup unix n - n 60 1 svc\n", "");
    inst.start();
    let start = wait_for("pickup to start", || {
        inst.events_of("start", "pickup").first().cloned()
    });
    let child = Instance::pid_of(&start);
    signal(inst.master_pid(), libc::SIGTERM);
    let status = inst.wait_master_exit();
    assert!(status.success(), "{status:?}");
    assert!(inst.log().contains("terminating on signal 15"));
    wait_for("the child to be gone", || (!alive(child)).then_some(()));
    assert!(!inst.events_of("exit", "pickup").is_empty());
    assert!(!path_exists(&inst.queue.join("pid/master.pid")));
}

#[test]
fn second_master_is_refused_and_t_tells() {
    let mut inst = Instance::new("second", "pickup unix n - n 60 1 svc\n", "");
    let t = |inst: &Instance| {
        let mut c = inst.master_cmd();
        c.arg("-t");
        c.status().unwrap().code()
    };
    assert_eq!(t(&inst), Some(0), "master -t with no master running");
    inst.start();
    assert_eq!(t(&inst), Some(1), "master -t with a master running");
    let out = Command::new(env!("CARGO_BIN_EXE_master"))
        .arg("-d")
        .arg("-c")
        .arg(&inst.etc)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fatal: the Postfix mail system is already running"),
        "{err}"
    );
    assert!(alive(inst.master_pid()));
}

#[test]
fn config_error_is_fatal() {
    let inst = Instance::new("badconf", "pickup unix n - n 60 1 svc\nbogus\n", "");
    let out = inst.master_cmd().stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fatal:"));
}
