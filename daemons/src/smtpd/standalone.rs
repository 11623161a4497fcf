//! `smtpd -S`: one SMTP session on standard input and output, for
//! `sendmail -bs` (Postfix's sendmail runs its smtpd the same way). The
//! client is the local user: `localhost[127.0.0.1]`, as Postfix names it.
//! Accepted messages are written into `maildrop/` (like sendmail, durable
//! before the 250) and pickup is woken, so they take the way of any local
//! submission; the session, its replies and the restrictions are smtpd's.
//!
//! Blocking I/O, no tokio: there is one client and it is local. Lines
//! may end in LF or CRLF (local programs write LF); a line holding only
//! `.` ends DATA either way.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use libmail::config::params::Params;
use libmail::ipc::Attrs;
use libmail::queue::{IdStyle, NewRecipient, Queue as Q, QueueLayout, Writer};
use libmail::smtp::Reply;

use super::session::{Client, Gate, Queue, Session, Settings, Step};

/// Longest line read (a longer one is cut, its rest dropped).
const MAX_LINE: usize = 64 << 10;

/// maildrop/, as the session's [`Queue`].
struct Maildrop {
    layout: QueueLayout,
    style: IdStyle,
    writer: Option<Writer>,
    /// Content bytes of the line not yet ended by a newline.
    partial: Vec<u8>,
}

fn write_error(e: io::Error) -> Reply {
    libmail::warning!("maildrop: {e}");
    Reply::new(451, "4.3.0", "Error: queue file write error")
}

impl Queue for Maildrop {
    fn open(&mut self) -> Result<String, Reply> {
        let w = Writer::create(&self.layout, Q::Maildrop, self.style).map_err(write_error)?;
        let id = w.id().as_str().to_string();
        self.writer = Some(w);
        self.partial.clear();
        Ok(id)
    }

    fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Reply::new(451, "4.3.0", "Error: internal error"))?;
        (|| -> io::Result<()> {
            w.arrival_time(std::time::SystemTime::now())?;
            if let Some(e) = attrs.get("envid") {
                w.dsn_envid(e)?;
            }
            if let Some(r) = attrs.get_num::<u32>("ret") {
                w.dsn_ret(r)?;
            }
            w.attr("rewrite_context", "local")?;
            w.sender(attrs.get("sender").unwrap_or(""))?;
            let mut notify = Vec::new();
            for (n, v) in attrs.iter() {
                match n {
                    "rcpt" => notify.push((v.to_string(), 0u32)),
                    "rcpt.notify" => {
                        if let Some(last) = notify.last_mut() {
                            last.1 = v.parse().unwrap_or(0);
                        }
                    }
                    _ => {}
                }
            }
            for (r, n) in notify {
                w.recipient(&NewRecipient {
                    dsn_notify: n,
                    ..NewRecipient::new(&r)
                })?;
            }
            w.start_content()
        })()
        .map_err(write_error)
    }

    fn content(&mut self, bytes: &[u8]) -> Result<(), Reply> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| Reply::new(451, "4.3.0", "Error: internal error"))?;
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                w.content_line(&rest[..i]).map_err(write_error)?;
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.partial);
                w.content_line(&line).map_err(write_error)?;
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn finish(&mut self) -> Result<String, Reply> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| Reply::new(451, "4.3.0", "Error: internal error"))?;
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            w.content_line(&line).map_err(write_error)?;
        }
        let done = w.finish().and_then(|u| u.sync()).map_err(write_error)?;
        let id = done.id().as_str().to_string();
        let _ = libmail::ipc::trigger(&libmail::ipc::public(self.layout.root(), "pickup"), b"W");
        Ok(id)
    }

    fn abort(&mut self) {
        // An unfinished writer removes its file when dropped.
        self.writer = None;
        self.partial.clear();
    }
}

/// Runs the session on standard input and output; the exit status.
pub fn run(params: &Params, settings: Settings, gate: Arc<dyn Gate>) -> i32 {
    let layout = match QueueLayout::from_params(params) {
        Ok(l) => l,
        Err(e) => libmail::log::fatal(&e),
    };
    let style = IdStyle::from_long_ids(libmail::service::bool_param(
        params,
        "enable_long_queue_ids",
        false,
    ));
    let queue = Box::new(Maildrop {
        layout,
        style,
        writer: None,
        partial: Vec::new(),
    });
    let client = Client {
        addr: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        port: 0,
        name: "localhost".into(),
        reverse_name: "localhost".into(),
        server: None,
    };
    let mut session = Session::new(Arc::new(settings), gate, queue, client);
    let stdin = io::stdin();
    let mut rd = io::BufReader::new(stdin.lock());
    let stdout = io::stdout();
    let mut wr = io::BufWriter::new(stdout.lock());
    let log = |s: &mut Session| {
        for l in s.take_logs() {
            libmail::info!("{l}");
        }
    };
    let say = |wr: &mut io::BufWriter<io::StdoutLock>, r: &Reply| -> bool {
        wr.write_all(&r.to_wire()).and_then(|_| wr.flush()).is_ok()
    };
    let greeting = session.greeting();
    log(&mut session);
    match greeting {
        Step::Reply(r) => {
            if !say(&mut wr, &r) {
                return 0;
            }
        }
        Step::Close(r) => {
            say(&mut wr, &r);
            return 0;
        }
        _ => return 1,
    }
    let mut line = Vec::new();
    loop {
        if !read_line(&mut rd, &mut line) {
            session.lost();
            log(&mut session);
            libmail::info!("{}", session.disconnect_line());
            return 0;
        }
        let step = session.command(&String::from_utf8_lossy(&line));
        log(&mut session);
        let (reply, close) = match step {
            Step::Reply(r) => (r, false),
            Step::Close(r) => (r, true),
            Step::Data(r) => {
                if !say(&mut wr, &r) {
                    return 0;
                }
                loop {
                    if !read_line(&mut rd, &mut line) {
                        session.lost();
                        log(&mut session);
                        libmail::info!("{}", session.disconnect_line());
                        return 0;
                    }
                    if line == b"." {
                        break;
                    }
                    let body = if line.first() == Some(&b'.') {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    session.data_line(body);
                    if session.should_flush() {
                        session.flush();
                    }
                }
                let r = session.data_end();
                log(&mut session);
                (r, false)
            }
            Step::Bdat { size, last } => {
                let mut chunk = vec![0u8; size.min(MAX_LINE as u64) as usize];
                let mut left = size;
                while left > 0 {
                    let want = (left as usize).min(chunk.len());
                    if rd.read_exact(&mut chunk[..want]).is_err() {
                        session.lost();
                        return 0;
                    }
                    session.bdat_bytes(&chunk[..want]);
                    left -= want as u64;
                }
                match session.bdat_end(size, last) {
                    Step::Reply(r) => (r, false),
                    Step::Close(r) => (r, true),
                    _ => continue,
                }
            }
            // No TLS on standard input.
            Step::StartTls(_) => (
                Reply::new(454, "4.7.0", "TLS not available due to local problem"),
                false,
            ),
        };
        // The error limit was reached with this reply: 421, then close.
        let hangup = session.take_hangup();
        let close = close || hangup.is_some();
        if rd.buffer().is_empty() || close {
            if !say(&mut wr, &reply) {
                return 0;
            }
        } else if wr.write_all(&reply.to_wire()).is_err() {
            return 0;
        }
        if let Some(h) = hangup {
            say(&mut wr, &h);
        }
        if close {
            libmail::info!("{}", session.disconnect_line());
            return 0;
        }
    }
}

/// One line without its LF (and CR); false at the end of input.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> bool {
    line.clear();
    match r.by_ref().take(MAX_LINE as u64).read_until(b'\n', line) {
        Ok(0) | Err(_) => return false,
        Ok(_) => {}
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() >= MAX_LINE {
        // Cut: drop the rest of the line.
        let mut rest = Vec::new();
        let _ = r.read_until(b'\n', &mut rest);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    true
}

/// Where the configuration is for `smtpd -S`: `-c DIR`, else
/// `MAIL_CONFIG`, else the default.
pub fn config_dir(args: &[String]) -> PathBuf {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-c" {
            if let Some(d) = it.next() {
                return PathBuf::from(d);
            }
        } else if let Some(d) = a.strip_prefix("-c") {
            return PathBuf::from(d);
        }
    }
    libmail::config::config_directory(None).into()
}
