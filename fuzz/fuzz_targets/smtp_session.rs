//! Any bytes from an SMTP client: split into lines, each line either a
//! command or (after a 354 or BDAT) content, through smtpd's session with
//! a gate that permits everything and a queue that keeps nothing. Never
//! a panic; replies always well formed (a 2xx-5xx code, CRLF ends, no
//! bare CR or LF inside a line).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use facteur_daemons::smtpd::session::*;
use libfuzzer_sys::fuzz_target;
use libmail::ipc::Attrs;
use libmail::smtp::Reply;

struct Open;
impl Gate for Open {
    fn delay_reject(&self) -> bool {
        true
    }
    fn ask(&self, _: Ask, _: &Facts) -> Verdict {
        Verdict::default()
    }
}

struct Null(usize);
impl Queue for Null {
    fn open(&mut self) -> Result<String, Reply> {
        self.0 += 1;
        Ok(format!("ABCDE{}", self.0))
    }
    fn envelope(&mut self, _: &Attrs) -> Result<(), Reply> {
        Ok(())
    }
    fn content(&mut self, _: &[u8]) -> Result<(), Reply> {
        Ok(())
    }
    fn finish(&mut self) -> Result<String, Reply> {
        Ok(format!("ABCDE{}", self.0))
    }
    fn abort(&mut self) {}
}

fn check(r: &Reply) {
    assert!((200..600).contains(&r.code), "{r:?}");
    let wire = r.to_string();
    for l in wire.split_terminator("\r\n") {
        assert!(!l.contains('\r') && !l.contains('\n'), "{wire:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let set = Settings {
        message_size_limit: 4096,
        recipient_limit: 5,
        error_sleep: Duration::ZERO,
        ..Settings::example("mx.example")
    };
    let mut s = Session::new(
        Arc::new(set),
        Arc::new(Open),
        Box::new(Null(0)),
        Client {
            addr: Some("192.0.2.1".parse().unwrap()),
            port: 1,
            name: "unknown".into(),
            reverse_name: "unknown".into(),
            server: None,
        },
    );
    let _ = s.greeting();
    let mut in_data = false;
    let mut bdat: Option<(u64, bool)> = None;
    for line in data.split(|&b| b == b'\n') {
        if let Some((size, last)) = bdat.take() {
            s.bdat_bytes(line);
            if let Step::Reply(r) | Step::Close(r) = s.bdat_end(size, last) {
                check(&r);
            }
            continue;
        }
        if in_data {
            if line == b"." {
                check(&s.data_end());
                in_data = false;
            } else {
                s.data_line(line);
            }
            continue;
        }
        let text = String::from_utf8_lossy(line);
        match s.command(&text) {
            Step::Reply(r) => check(&r),
            Step::Close(r) => {
                check(&r);
                break;
            }
            Step::Data(r) => {
                check(&r);
                in_data = true;
            }
            Step::Bdat { size, last } => bdat = Some((size, last)),
            // No TLS configured: a 220 here would be a bug; a reply either way.
            Step::StartTls(r) => check(&r),
        }
        let _ = s.take_logs();
        // The error limit: a 421, and the shell closes.
        if let Some(r) = s.take_hangup() {
            check(&r);
            break;
        }
    }
    s.lost();
});
