//! check_policy_service against a real policy server: postgrey
//! (scripts/test.sh installs it) greylists the first attempt with its
//! own DEFER_IF_PERMIT text, accepts a retry after its delay with a
//! PREPEND of its X-Greylist: header, and the mail is delivered.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::smtp::Raw;
use common::{free_port, user, wait_for, Instance};

/// postgrey in the foreground as our child, stopped by its pid.
struct Postgrey {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Postgrey {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Postgrey {
    fn start(delay: u64) -> Postgrey {
        let dir = std::env::temp_dir().join(format!("facteur-postgrey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // As root postgrey drops to --user, who must own its database.
        // SAFETY: getuid has no preconditions.
        let (owner, group) = if unsafe { libc::getuid() } == 0 {
            ("postgrey".to_string(), "postgrey".to_string())
        } else {
            let g = Command::new("id").arg("-gn").output().unwrap();
            (
                user(),
                String::from_utf8_lossy(&g.stdout).trim().to_string(),
            )
        };
        let st = Command::new("chown")
            .args([&owner, dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "chown {owner} {}", dir.display());
        let port = free_port();
        let child = Command::new("postgrey")
            .arg(format!("--inet=127.0.0.1:{port}"))
            .arg(format!("--dbdir={}", dir.display()))
            .arg(format!("--delay={delay}"))
            .arg(format!("--user={owner}"))
            .arg(format!("--group={group}"))
            .args([
                "--whitelist-clients=/dev/null",
                "--whitelist-recipients=/dev/null",
                "--hostname=greylister.test",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgrey (scripts/test.sh installs it)");
        let pg = Postgrey { child, dir, port };
        wait_for(20, "postgrey to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        pg
    }
}

#[test]
fn postgrey_greylists_then_accepts_the_retry() {
    let pg = Postgrey::start(1);
    let mut i = Instance::new("smtpd-policy", "");
    let port = i.with_smtpd();
    i.main_cf(&format!(
        "smtpd_recipient_restrictions = reject_unauth_destination, \
         check_policy_service inet:127.0.0.1:{}",
        pg.port
    ));
    i.start();
    let me = user();
    let rcpt = format!("{me}@mx.example.test");

    // First attempt: postgrey's DEFER_IF_PERMIT, as Postfix words it
    // (postgrey adds DSN 4.2.0 because the request has etrn_domain, which
    // Postfix >= 2.3 always sends).
    let (mut c, r) = Raw::rcpt(port, &rcpt);
    assert_eq!(
        r,
        format!(
            "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see \
             http://postgrey.schweikert.ch/help/mx.example.test.html\r\n"
        )
    );
    c.cmd("QUIT");
    i.wait_log(&format!(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 450 4\.2\.0 <{}>: Recipient address rejected: Greylisted, see http://postgrey\.schweikert\.ch/help/mx\.example\.test\.html; from=<alice@example\.org> to=<{}> proto=ESMTP helo=<client\.example>",
        regex::escape(&rcpt),
        regex::escape(&rcpt)
    ));

    // Retry until postgrey's delay has passed (bounded).
    let end = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        let (mut c, r) = Raw::rcpt(port, &rcpt);
        if r.starts_with("250 ") {
            break c;
        }
        assert!(r.starts_with("450 4.2.0 "), "{r}");
        assert!(Instant::now() < end, "still greylisted: {r}");
        c.cmd("QUIT");
        std::thread::sleep(Duration::from_millis(250));
    };
    let d = c.cmd("DATA");
    assert!(d.starts_with("354 "), "{d}");
    let q = c.cmd("Subject: greylisted\r\n\r\nretried after the delay\r\n.");
    assert!(q.starts_with("250 2.0.0 Ok: queued as "), "{q}");
    c.cmd("QUIT");

    let got = i.wait_maildir(&i.user_maildir(), 1);
    let m = &got[0];
    assert!(m.contains("retried after the delay"), "{m}");
    // postgrey's PREPEND reached the message.
    assert!(
        m.contains("\nX-Greylist: delayed ") && m.contains(" by postgrey-"),
        "{m}"
    );
}
