//! SMTP clients for the smtpd tests: swaks (the real thing), and a
//! line-by-line client for exact replies.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// Runs swaks against 127.0.0.1:`port`: (success, stdout then stderr).
pub fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .expect("swaks (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A line-by-line SMTP client for exact replies.
pub struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    /// Connects and reads the 220 greeting.
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let w = s.try_clone().unwrap();
        let mut r = Raw {
            r: BufReader::new(s),
            w,
        };
        let g = r.reply();
        assert!(g.starts_with("220 "), "{g}");
        r
    }

    /// A whole reply (all its lines).
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).unwrap() == 0 {
                return all;
            }
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends bytes as they are (pipelining, content).
    pub fn send(&mut self, bytes: &str) {
        self.w.write_all(bytes.as_bytes()).unwrap();
    }

    /// One command and its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// EHLO and MAIL, then the reply to RCPT.
    pub fn rcpt(port: u16, rcpt: &str) -> (Raw, String) {
        let mut c = Raw::connect(port);
        let e = c.cmd("EHLO client.example");
        assert!(e.starts_with("250"), "{e}");
        let m = c.cmd("MAIL FROM:<alice@example.org>");
        assert!(m.starts_with("250 "), "{m}");
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        (c, r)
    }
}
