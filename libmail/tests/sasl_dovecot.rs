//! `libmail::sasl::dovecot` against a real Dovecot (the throwaway fixture
//! in `../shared/fixtures/dovecot/`): the handshake's mechanism list,
//! PLAIN and LOGIN exchanges, failures, and reconnecting after Dovecot
//! restarts.
//!
//! Each test starts its own Dovecot under a fresh directory (the fixture
//! supports several instances at once) and stops it when the test ends,
//! passing or failing, through [`Fixture`]'s `Drop`. Dovecot must be
//! installed: `scripts/test.sh` installs it. A missing Dovecot or fixture
//! fails the test with that advice; it is never skipped silently.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use libmail::sasl::base64;
use libmail::sasl::dovecot::{ClientInfo, Dovecot, Endpoint};
use libmail::sasl::{ehlo_keywords, smtp, MechFlags, Step};

const TIMEOUT: Duration = Duration::from_secs(10);

#[path = "support/dovecot.rs"]
mod fixture;
use fixture::Fixture;

trait Client {
    fn client(&self) -> Dovecot;
}

impl Client for Fixture {
    fn client(&self) -> Dovecot {
        Dovecot::connect(Endpoint::Unix(self.auth_socket.clone()), TIMEOUT)
            .expect("connect to the fixture's auth socket")
    }
}

impl Fixture {
    /// The PIDs of this instance's `auth` processes (Dovecot titles them
    /// `<instance_name>/auth`).
    fn auth_pids(&self) -> Vec<i32> {
        let conf = std::fs::read_to_string(self.base.join("dovecot.conf")).unwrap();
        let instance = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("instance_name = "))
            .expect("instance_name in dovecot.conf")
            .to_string();
        let title = format!("{instance}/auth");
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            if argv0 == title.as_bytes() {
                pids.push(pid);
            }
        }
        pids
    }
}

/// Terminates `pid` (a process of our fixture) and waits until it has
/// exited, through a pidfd, so its sockets are closed when this returns.
fn kill_and_await(pid: i32) {
    // SAFETY: plain system calls on integers; the pidfd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return; // already gone
        }
        assert_eq!(
            libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0, 0),
            0
        );
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = libc::poll(&mut p, 1, 10_000);
        libc::close(fd);
        assert_eq!(n, 1, "process {pid} did not exit");
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn client_info(secured: bool) -> ClientInfo {
    let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
    let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    ClientInfo::new(Some(local), Some(remote), secured)
}

fn plain(user: &str, pw: &str) -> String {
    base64::encode(format!("\0{user}\0{pw}").as_bytes())
}

#[test]
fn mechanism_list_from_the_handshake() {
    let f = Fixture::start("mechs");
    let d = f.client();
    let m = d.mechanisms();
    assert_eq!(
        m.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["PLAIN", "LOGIN"]
    );
    assert!(m.iter().all(|m| m.flags == MechFlags::PLAINTEXT), "{m:?}");
    // Postfix: "250-AUTH PLAIN LOGIN", with and without TLS by default.
    assert_eq!(
        ehlo_keywords(&d.offered(false), false),
        ["AUTH PLAIN LOGIN"]
    );
    assert_eq!(ehlo_keywords(&d.offered(true), false), ["AUTH PLAIN LOGIN"]);
    let strict =
        libmail::sasl::SecurityPolicy::parse("noanonymous, noplaintext", "noanonymous").unwrap();
    let d = d.with_policy(strict);
    assert!(d.offered(false).is_empty());
    assert_eq!(ehlo_keywords(&d.offered(true), false), ["AUTH PLAIN LOGIN"]);
}

#[test]
fn plain_success_for_alice_and_bob() {
    let f = Fixture::start("plain-ok");
    let mut d = f.client();
    let step = d.start(
        "PLAIN",
        Some(&plain("alice@example.test", "alicepw")),
        &client_info(false),
    );
    assert_eq!(
        step,
        Step::Success {
            user: "alice@example.test".into()
        }
    );
    assert_eq!(
        smtp::reply(&step).to_string(),
        "235 2.7.0 Authentication successful\r\n"
    );
    // bob's password is a SHA512-CRYPT hash; TLS on: "secured" is sent.
    assert_eq!(
        d.start(
            "plain",
            Some(&plain("bob@example.test", "bobpw")),
            &client_info(true)
        ),
        Step::Success {
            user: "bob@example.test".into()
        }
    );
    // No initial response: an empty challenge ("334 "), then the response.
    let step = d.start("PLAIN", None, &client_info(false));
    assert_eq!(step, Step::Challenge(String::new()));
    assert_eq!(smtp::reply(&step).to_string(), "334 \r\n");
    assert_eq!(
        d.respond(&plain("bob@example.test", "bobpw")),
        Step::Success {
            user: "bob@example.test".into()
        }
    );
}

#[test]
fn plain_failure_is_permanent() {
    let f = Fixture::start("plain-fail");
    let mut d = f.client();
    let step = d.start(
        "PLAIN",
        Some(&plain("alice@example.test", "wrongpw")),
        &client_info(false),
    );
    assert_eq!(
        step,
        Step::Failure {
            reason: None,
            user: Some("alice@example.test".into()),
            temporary: false
        }
    );
    assert_eq!(
        smtp::reply(&step).to_string(),
        "535 5.7.8 Error: authentication failed: (reason unavailable)\r\n"
    );
    // An empty initial response ("AUTH PLAIN =") reaches Dovecot as empty.
    let step = d.start("PLAIN", Some("="), &client_info(false));
    assert!(
        matches!(
            step,
            Step::Failure {
                temporary: false,
                ..
            }
        ),
        "{step:?}"
    );
    // A mechanism Dovecot does not offer is refused here: Dovecot would
    // drop the connection. The connection stays usable.
    assert_eq!(
        d.start("CRAM-MD5", None, &client_info(false)),
        Step::fail("Invalid authentication mechanism")
    );
    assert_eq!(
        smtp::reply(&d.start("PLAIN", Some("!!!notbase64"), &client_info(false))).to_string(),
        "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response\r\n"
    );
    assert_eq!(
        d.start(
            "PLAIN",
            Some(&plain("alice@example.test", "alicepw")),
            &client_info(false)
        ),
        Step::Success {
            user: "alice@example.test".into()
        }
    );
}

#[test]
fn login_takes_two_rounds() {
    let f = Fixture::start("login");
    let mut d = f.client();
    let info = client_info(false);
    let step = d.start("LOGIN", None, &info);
    assert_eq!(step, Step::Challenge("VXNlcm5hbWU6".into()));
    assert_eq!(smtp::reply(&step).to_string(), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        d.respond(&base64::encode(b"Carol@Example.Test")),
        Step::Challenge("UGFzc3dvcmQ6".into())
    );
    // Dovecot lowercases the name (auth_username_format = %Lu): the
    // authenticated name is its user=, not what the client typed.
    assert_eq!(
        d.respond(&base64::encode(b"carolpw")),
        Step::Success {
            user: "carol@example.test".into()
        }
    );
    // Wrong password, then an aborted exchange, then a good one.
    assert!(matches!(d.start("LOGIN", None, &info), Step::Challenge(_)));
    assert!(matches!(
        d.respond(&base64::encode(b"alice@example.test")),
        Step::Challenge(_)
    ));
    assert!(matches!(
        d.respond(&base64::encode(b"nope")),
        Step::Failure {
            temporary: false,
            ..
        }
    ));
    assert!(matches!(d.start("LOGIN", None, &info), Step::Challenge(_)));
    d.abort();
    assert!(matches!(d.start("LOGIN", None, &info), Step::Challenge(_)));
    assert!(matches!(
        d.respond(&base64::encode(b"alice@example.test")),
        Step::Challenge(_)
    ));
    assert_eq!(
        d.respond(&base64::encode(b"alicepw")),
        Step::Success {
            user: "alice@example.test".into()
        }
    );
}

#[test]
fn reconnects_after_dovecot_restarts() {
    let mut f = Fixture::start("restart");
    let mut d = f.client();
    let good = plain("alice@example.test", "alicepw");
    let info = client_info(false);
    assert!(matches!(
        d.start("PLAIN", Some(&good), &info),
        Step::Success { .. }
    ));
    let old_auth = f.auth_pids();
    assert_eq!(old_auth.len(), 1, "one auth process serves the connection");
    f.stop();
    assert!(!alive(f.pid));
    // Down: a new connection is refused, which is a temporary failure
    // (454), not a wrong password.
    let mut fresh = Dovecot::new(Endpoint::Unix(f.auth_socket.clone()), TIMEOUT);
    let step = fresh.start("PLAIN", Some(&good), &info);
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
    assert_eq!(
        smtp::reply(&step).to_string(),
        "454 4.7.0 Temporary authentication failure: Can't connect to authentication server\r\n"
    );
    assert!(fresh.last_error().unwrap().contains("auth-client"));
    f.run_start();
    // Dovecot's auth process outlives its master while clients stay
    // connected; end it, as a full restart (systemd) would, so that the
    // server side of the old connection is closed.
    for pid in old_auth {
        kill_and_await(pid);
    }
    assert_eq!(
        d.start("PLAIN", Some(&good), &info),
        Step::Success {
            user: "alice@example.test".into()
        }
    );
    assert_eq!(f.auth_pids().len(), 1, "served by the new instance");
}

#[test]
fn fixture_is_stopped_at_the_end() {
    let pid;
    let base;
    {
        let f = Fixture::start("guard");
        pid = f.pid;
        base = f.base.clone();
        assert!(alive(pid));
        assert!(f.client().mechanisms().len() >= 2);
    }
    assert!(!alive(pid), "dovecot master {pid} still running");
    assert!(!base.exists());
}
