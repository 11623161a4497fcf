//! One SMTP or LMTP session: setting it up (greeting, EHLO/LHLO,
//! STARTTLS, AUTH) and sending one message over it (MAIL, RCPT, DATA,
//! with pipelining when the server offers it; LMTP's reply per recipient).
//!
//! Replies become per-recipient results in Postfix's words: `host H[A]
//! said: 550 5.1.1 ... (in reply to RCPT TO command)`, `lost connection
//! with H[A] while sending RCPT TO`, `conversation with H[A] timed out
//! while sending message body`.
//!
//! XFORWARD (`smtp_send_xforward_command`): when the server announces
//! it, the original client's attributes from the queue file go before
//! MAIL FROM in one or two commands, as Postfix sends them: `XFORWARD
//! NAME=.. ADDR=.. PORT=..`, then `XFORWARD PROTO=.. HELO=.. IDENT=..
//! SOURCE=LOCAL|REMOTE`, each attribute only when the server named it and
//! the value is known (a name, address, port or protocol of `unknown` is
//! not sent), xtext-encoded, pipelined with MAIL when the server offers
//! PIPELINING. A refused XFORWARD is logged and the mail goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use libmail::deliver::{Rcpt, Request};
use libmail::queue::QueueFile;
use libmail::tls::client::Level;
use libmail::tls::Summary;

use super::conn::{printable, Conn, IoFail, Reply};
use super::content::{self, Fail, Sink};
use super::Config;

/// What the server offered after EHLO/LHLO.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    pub esmtp: bool,
    pub pipelining: bool,
    /// `SIZE n` (0: no limit stated).
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub dsn: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth: Vec<String>,
    /// The XFORWARD attributes the server named (upper case).
    pub xforward: Vec<String>,
}

/// Most XFORWARD attribute names kept from an EHLO reply.
const MAX_XFORWARD_NAMES: usize = 16;

impl Caps {
    fn parse(r: &Reply, esmtp: bool) -> Caps {
        let mut c = Caps {
            esmtp,
            ..Default::default()
        };
        if !esmtp {
            return c;
        }
        for t in r.texts().skip(1) {
            let mut words = t.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eightbitmime = true,
                "DSN" => c.dsn = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "STARTTLS" => c.starttls = true,
                "AUTH" => c.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                "XFORWARD" => {
                    for w in words {
                        let w = w.to_ascii_uppercase();
                        if c.xforward.len() < MAX_XFORWARD_NAMES && !c.xforward.contains(&w) {
                            c.xforward.push(w);
                        }
                    }
                }
                _ if kw.starts_with("AUTH=") => {
                    // Old servers: AUTH=LOGIN PLAIN.
                    c.auth.extend(
                        std::iter::once(&kw[5..])
                            .chain(words)
                            .map(|w| w.to_ascii_uppercase()),
                    )
                }
                _ => {}
            }
        }
        c.auth.sort();
        c.auth.dedup();
        c
    }
}

/// Where a session goes.
#[derive(Debug, Clone)]
pub enum Peer {
    Inet {
        host: String,
        addr: std::net::SocketAddr,
    },
    /// LMTP over a UNIX-domain socket: Postfix names the host
    /// `$myhostname` and shows the path.
    Unix { host: String, path: String },
}

impl Peer {
    /// `host[addr]` for messages.
    pub fn name(&self) -> String {
        match self {
            Peer::Inet { host, addr } => format!("{host}[{}]", addr.ip()),
            Peer::Unix { host, path } => format!("{host}[{path}]"),
        }
    }

    /// `host[addr]:port` for the `relay=` field.
    pub fn relay(&self) -> String {
        match self {
            Peer::Inet { host, addr } => format!("{host}[{}]:{}", addr.ip(), addr.port()),
            Peer::Unix { .. } => self.name(),
        }
    }
}

/// A session that failed before any message was sent: try the next
/// server, or give up with this reason.
#[derive(Debug, Clone)]
pub struct SetupFail {
    pub dsn: String,
    pub reason: String,
    /// A 5xx that applies to the message, not the server (skip_5xx off).
    pub permanent: bool,
    /// `may`: the TLS handshake failed; try the same server in plain text.
    pub retry_plain: bool,
}

impl SetupFail {
    fn soft(dsn: &str, reason: String) -> SetupFail {
        SetupFail {
            dsn: dsn.into(),
            reason,
            permanent: false,
            retry_plain: false,
        }
    }
}

/// A recipient's result in one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Sent {
        dsn: String,
        reason: String,
    },
    /// 4xx, lost connection, timeout: may be retried at the next server.
    Soft {
        dsn: String,
        reason: String,
    },
    Hard {
        dsn: String,
        reason: String,
    },
}

/// SASL credentials for one session.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

pub struct Session {
    pub conn: Conn,
    pub peer: Peer,
    pub caps: Caps,
    pub tls: Option<(Summary, bool)>,
    pub created: Instant,
    /// Messages sent over it so far.
    pub uses: u32,
    pub lmtp: bool,
    /// The connection was found closed before the server answered MAIL:
    /// nothing was sent (a cached session that went stale).
    stale: bool,
    /// The content was being sent when the transaction was given up: no
    /// QUIT (it would be taken as content), the connection is just closed.
    in_data: bool,
}

/// The Postfix stage names of timeouts and lost connections.
#[derive(Clone, Copy)]
enum Stage {
    Greeting,
    /// XFORWARD: the name/address command (true) or the protocol/HELO one.
    Xforward(bool),
    Helo(&'static str),
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Body,
    DataDone,
}

impl Stage {
    fn while_text(self) -> String {
        match self {
            Stage::Greeting => "receiving the initial server greeting".into(),
            Stage::Xforward(true) => "sending XFORWARD name/address".into(),
            Stage::Xforward(false) => "sending XFORWARD protocol/helo_name".into(),
            Stage::Helo(cmd) => format!("performing the {cmd} handshake"),
            Stage::StartTls => "performing the STARTTLS handshake".into(),
            Stage::Auth => "performing SASL authentication".into(),
            Stage::Mail => "sending MAIL FROM".into(),
            Stage::Rcpt => "sending RCPT TO".into(),
            Stage::Data => "sending DATA command".into(),
            Stage::Body => "sending message body".into(),
            Stage::DataDone => "sending end of data -- message may be sent more than once".into(),
        }
    }
    fn in_reply_to(self) -> &'static str {
        match self {
            Stage::Greeting => "initial protocol greeting",
            Stage::Xforward(true) => "XFORWARD name/address",
            Stage::Xforward(false) => "XFORWARD helo/protocol",
            Stage::Helo(cmd) => cmd,
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Body | Stage::DataDone => "end of DATA",
        }
    }
}

fn io_reason(peer: &Peer, stage: Stage, e: &IoFail) -> (String, String) {
    let name = peer.name();
    match e {
        IoFail::Timeout => (
            "4.4.2".into(),
            format!(
                "conversation with {name} timed out while {}",
                stage.while_text()
            ),
        ),
        IoFail::Lost => (
            "4.4.2".into(),
            format!("lost connection with {name} while {}", stage.while_text()),
        ),
        IoFail::Garbage(g) => (
            "4.5.0".into(),
            format!(
                "conversation with {name} failed while {}: {g}",
                stage.while_text()
            ),
        ),
    }
}

fn said(peer: &Peer, r: &Reply, stage: Stage) -> String {
    format!(
        "host {} said: {} (in reply to {} command)",
        peer.name(),
        printable(&r.flat()),
        stage.in_reply_to()
    )
}

/// Opens a session: the socket is connected; this reads the greeting,
/// says EHLO/LHLO, starts TLS as `level` asks, and authenticates.
pub fn setup(
    cfg: &Config,
    conn: Conn,
    peer: Peer,
    level: Level,
    verify_name: &str,
    pinned: Option<&Arc<ClientConfig>>,
    creds: Option<&Credentials>,
) -> Result<Session, SetupFail> {
    let started = Instant::now();
    let mut s = Session {
        conn,
        peer,
        caps: Caps::default(),
        tls: None,
        created: started,
        uses: 0,
        lmtp: cfg.lmtp,
        stale: false,
        in_data: false,
    };
    if cfg.wrappermode && !cfg.lmtp {
        s.handshake(cfg, level.max(Level::Encrypt), verify_name, pinned)?;
    }
    s.conn.deadline(cfg.timeouts.helo);
    let greeting = s.conn.reply().map_err(|e| s.io_fail(Stage::Greeting, &e))?;
    if !greeting.positive() {
        return Err(SetupFail {
            dsn: greeting.dsn(),
            reason: format!(
                "host {} refused to talk to me: {}",
                s.peer.name(),
                printable(&greeting.flat())
            ),
            permanent: greeting.code >= 500 && !cfg.skip_5xx_greeting,
            retry_plain: false,
        });
    }
    s.hello(cfg)?;
    if s.tls.is_none() && level > Level::None {
        if s.caps.starttls {
            s.conn.deadline(cfg.timeouts.starttls);
            let r = s
                .conn
                .command("STARTTLS")
                .map_err(|e| s.io_fail(Stage::StartTls, &e))?;
            if r.positive() {
                s.handshake(cfg, level, verify_name, pinned)?;
                s.hello(cfg)?;
            } else if level > Level::May {
                return Err(SetupFail::soft(
                    "4.7.5",
                    format!(
                        "TLS is required, but host {} refused to start TLS: {}",
                        s.peer.name(),
                        printable(&r.flat())
                    ),
                ));
            }
        } else if level > Level::May {
            return Err(SetupFail::soft(
                "4.7.4",
                format!(
                    "TLS is required, but was not offered by host {}",
                    s.peer.name()
                ),
            ));
        }
    }
    if let Some(c) = creds {
        if !s.caps.auth.is_empty() {
            s.authenticate(cfg, c)?;
        }
    }
    Ok(s)
}

impl Session {
    fn io_fail(&self, stage: Stage, e: &IoFail) -> SetupFail {
        let (dsn, reason) = io_reason(&self.peer, stage, e);
        SetupFail::soft(&dsn, reason)
    }

    fn hello(&mut self, cfg: &Config) -> Result<(), SetupFail> {
        self.conn.deadline(cfg.timeouts.helo);
        let (cmd, esmtp) = if self.lmtp {
            ("LHLO", true)
        } else if cfg.never_ehlo {
            ("HELO", false)
        } else {
            ("EHLO", true)
        };
        let r = self
            .conn
            .command(&format!("{cmd} {}", cfg.helo_name))
            .map_err(|e| self.io_fail(Stage::Helo(cmd), &e))?;
        if r.positive() {
            self.caps = Caps::parse(&r, esmtp);
            return Ok(());
        }
        if cmd == "EHLO" && r.code >= 500 {
            // No ESMTP: fall back to HELO.
            let r2 = self
                .conn
                .command(&format!("HELO {}", cfg.helo_name))
                .map_err(|e| self.io_fail(Stage::Helo("HELO"), &e))?;
            if r2.positive() {
                self.caps = Caps::default();
                return Ok(());
            }
            return Err(SetupFail {
                dsn: r2.dsn(),
                reason: said(&self.peer, &r2, Stage::Helo("HELO")),
                permanent: false,
                retry_plain: false,
            });
        }
        Err(SetupFail {
            dsn: r.dsn(),
            reason: said(&self.peer, &r, Stage::Helo(cmd)),
            permanent: false,
            retry_plain: false,
        })
    }

    fn handshake(
        &mut self,
        cfg: &Config,
        level: Level,
        verify_name: &str,
        pinned: Option<&Arc<ClientConfig>>,
    ) -> Result<(), SetupFail> {
        self.conn.deadline(cfg.timeouts.starttls);
        let name = match &cfg.tls.servername {
            Some(n) if n != "hostname" && n != "nexthop" => n.clone(),
            _ => verify_name.to_string(),
        };
        // A policy map's own fingerprints (`match=`) for this next hop.
        let config = match pinned {
            Some(c) if level == Level::Fingerprint => c.clone(),
            _ => cfg.tls.config(level),
        };
        match self
            .conn
            .start_tls(config, libmail::tls::client::server_name(&name))
        {
            Ok(()) => {
                let state = self.conn.tls_state().expect("TLS just started");
                let summary = Summary::of(state);
                let verified = level.verifies();
                if cfg.tls_loglevel >= 1 {
                    libmail::info!(
                        "{} TLS connection established to {}: {}",
                        if verified { "Verified" } else { "Untrusted" },
                        self.peer.relay(),
                        summary.describe()
                    );
                }
                self.tls = Some((summary, verified));
                Ok(())
            }
            Err(e) => {
                let cert_problem = e.contains("certificate") || e.contains("Certificate");
                if cfg.tls_loglevel >= 1 || level > Level::May {
                    libmail::warning!(
                        "TLS handshake with {} failed: {}",
                        self.peer.relay(),
                        printable(&e)
                    );
                }
                Err(SetupFail {
                    dsn: "4.7.5".into(),
                    reason: if cert_problem && level.verifies() {
                        format!(
                            "Server certificate not verified ({}: {})",
                            self.peer.name(),
                            printable(&e)
                        )
                    } else {
                        format!("Cannot start TLS: handshake failure ({})", printable(&e))
                    },
                    permanent: false,
                    retry_plain: level == Level::May,
                })
            }
        }
    }

    /// AUTH with the first mechanism both sides allow (PLAIN, LOGIN).
    fn authenticate(&mut self, cfg: &Config, c: &Credentials) -> Result<(), SetupFail> {
        let opts = cfg.sasl_policy.options(self.tls.is_some());
        let allowed = |m: &str| {
            (cfg.sasl_filter.is_empty() || cfg.sasl_filter.iter().any(|f| f == m))
                && opts.allows(libmail::sasl::MechFlags::PLAINTEXT)
        };
        let mech = ["PLAIN", "LOGIN"]
            .into_iter()
            .find(|m| self.caps.auth.iter().any(|a| a == m) && allowed(m));
        let Some(mech) = mech else {
            return Err(SetupFail::soft(
                "4.7.0",
                format!(
                    "SASL authentication failed; cannot authenticate to server {}: no mechanism available",
                    self.peer.name()
                ),
            ));
        };
        use libmail::sasl::base64::encode;
        self.conn.deadline(cfg.timeouts.helo);
        let io = |s: &Session, e: IoFail| s.io_fail(Stage::Auth, &e);
        let r = if mech == "PLAIN" {
            let blob = format!("\0{}\0{}", c.user, c.password);
            self.conn
                .command(&format!("AUTH PLAIN {}", encode(blob.as_bytes())))
                .map_err(|e| io(self, e))?
        } else {
            let mut r = self.conn.command("AUTH LOGIN").map_err(|e| io(self, e))?;
            for answer in [&c.user, &c.password] {
                if r.code != 334 {
                    break;
                }
                r = self
                    .conn
                    .command(&encode(answer.as_bytes()))
                    .map_err(|e| io(self, e))?;
            }
            r
        };
        if r.code == 235 {
            return Ok(());
        }
        Err(SetupFail {
            dsn: if r.code >= 500 {
                "5.7.8".into()
            } else {
                r.dsn()
            },
            reason: format!(
                "SASL authentication failed; server {} said: {}",
                self.peer.name(),
                printable(&r.flat())
            ),
            // smtp_sasl_auth_soft_bounce (default yes): never a bounce.
            permanent: false,
            retry_plain: false,
        })
    }

    /// The results of a stage's failure for every recipient still open.
    fn fail_open(&self, results: &mut [Option<RcptResult>], stage: Stage, e: &IoFail) -> bool {
        let (dsn, reason) = io_reason(&self.peer, stage, e);
        for r in results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(RcptResult::Soft {
                dsn: dsn.clone(),
                reason: reason.clone(),
            });
        }
        false
    }

    /// Sends one message to `rcpts`. Returns a result per recipient and
    /// whether the session can carry another message.
    pub fn send(
        &mut self,
        cfg: &Config,
        req: &Request,
        env: &Outgoing,
        qf: &QueueFile,
    ) -> (Vec<RcptResult>, bool) {
        let mut results: Vec<Option<RcptResult>> = vec![None; env.rcpts.len()];
        let reusable = self.transaction(cfg, req, env, qf, &mut results);
        self.uses += 1;
        let out = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| RcptResult::Soft {
                    dsn: "4.4.2".into(),
                    reason: format!("lost connection with {}", self.peer.name()),
                })
            })
            .collect();
        (out, reusable)
    }

    fn set_all(results: &mut [Option<RcptResult>], r: RcptResult) {
        for x in results.iter_mut().filter(|x| x.is_none()) {
            *x = Some(r.clone());
        }
    }

    fn reply_result(&self, r: &Reply, stage: Stage) -> RcptResult {
        let reason = said(&self.peer, r, stage);
        if r.temporary() {
            RcptResult::Soft {
                dsn: r.dsn(),
                reason,
            }
        } else {
            RcptResult::Hard {
                dsn: r.dsn(),
                reason,
            }
        }
    }

    fn transaction(
        &mut self,
        cfg: &Config,
        req: &Request,
        env: &Outgoing,
        qf: &QueueFile,
        results: &mut [Option<RcptResult>],
    ) -> bool {
        let name = self.peer.name();
        let rcpts = &env.rcpts;
        // What the server said it cannot take.
        if let Some(limit) = self.caps.size.filter(|&l| l > 0) {
            if req.size > limit {
                Self::set_all(
                    results,
                    RcptResult::Hard {
                        dsn: "5.3.4".into(),
                        reason: format!(
                            "message size {} exceeds size limit {limit} of server {name}",
                            req.size
                        ),
                    },
                );
                return true;
            }
        }
        let needs_utf8 = req.attr("smtputf8") == Some("yes")
            && (!env.sender.is_ascii() || rcpts.iter().any(|(_, a)| !a.is_ascii()));
        if needs_utf8 && !self.caps.smtputf8 {
            Self::set_all(
                results,
                RcptResult::Hard {
                    dsn: "5.6.7".into(),
                    reason: format!("SMTPUTF8 is required, but was not offered by host {name}"),
                },
            );
            return true;
        }
        let mut mail = format!("MAIL FROM:<{}>", external(env.sender));
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", req.size));
        }
        if self.caps.eightbitmime && req.attr("body") == Some("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.caps.smtputf8 && req.attr("smtputf8") == Some("yes") {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match req.dsn_ret {
                1 => mail.push_str(" RET=FULL"),
                2 => mail.push_str(" RET=HDRS"),
                _ => {}
            }
            if let Some(e) = &req.dsn_envid {
                mail.push_str(&format!(
                    " ENVID={}",
                    libmail::smtp::command::xtext_encode(e)
                ));
            }
        }
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|(r, address)| {
                let mut l = format!("RCPT TO:<{}>", external(address));
                if self.caps.dsn {
                    let n = r.dsn_notify;
                    if n != 0 {
                        let words: Vec<&str> = if n & 1 != 0 {
                            vec!["NEVER"]
                        } else {
                            [(2, "SUCCESS"), (4, "FAILURE"), (8, "DELAY")]
                                .into_iter()
                                .filter(|(b, _)| n & b != 0)
                                .map(|(_, w)| w)
                                .collect()
                        };
                        l.push_str(&format!(" NOTIFY={}", words.join(",")));
                    }
                    if let Some(o) = &r.dsn_orcpt {
                        if let Some((ty, addr)) = o.split_once(';') {
                            l.push_str(&format!(
                                " ORCPT={ty};{}",
                                libmail::smtp::command::xtext_encode(addr)
                            ));
                        }
                    }
                }
                l
            })
            .collect();
        let pipelined = self.caps.pipelining || self.lmtp;
        let xforward = if cfg.send_xforward {
            xforward_commands(&self.caps.xforward, req)
        } else {
            Vec::new()
        };

        // XFORWARD, MAIL, RCPT..., DATA: in one write when pipelining.
        // The first reply read tells whether a kept session went stale.
        let mut first_read = true;
        for (stage_name_addr, cmd) in &xforward {
            self.conn.queue(cmd);
            if pipelined {
                continue;
            }
            let stage = Stage::Xforward(*stage_name_addr);
            if let Err(done) = self.read_xforward(results, stage, cfg, &mut first_read) {
                return done;
            }
        }
        self.conn.deadline(cfg.timeouts.mail);
        self.conn.queue(&mail);
        if pipelined {
            for l in &rcpt_lines {
                self.conn.queue(l);
            }
            self.conn.queue("DATA");
            if let Err(e) = self.conn.flush() {
                self.stale = first_read && matches!(e, IoFail::Lost);
                return self.fail_open(results, Stage::Mail, &e);
            }
            for (stage_name_addr, _) in &xforward {
                let stage = Stage::Xforward(*stage_name_addr);
                if let Err(done) = self.read_xforward(results, stage, cfg, &mut first_read) {
                    return done;
                }
            }
            self.conn.deadline(cfg.timeouts.mail);
        }
        let mail_reply = match self.conn.flush().and_then(|_| self.conn.reply()) {
            Ok(r) => r,
            Err(e) => {
                self.stale = first_read && matches!(e, IoFail::Lost);
                return self.fail_open(results, Stage::Mail, &e);
            }
        };
        let mail_ok = mail_reply.positive();
        if !mail_ok {
            let r = self.reply_result(&mail_reply, Stage::Mail);
            Self::set_all(results, r);
        }
        let mut accepted = Vec::new();
        self.conn.deadline(cfg.timeouts.rcpt);
        for (i, line) in rcpt_lines.iter().enumerate() {
            if !pipelined {
                if !mail_ok {
                    break;
                }
                self.conn.queue(line);
                if let Err(e) = self.conn.flush() {
                    return self.fail_open(results, Stage::Rcpt, &e);
                }
            }
            let r = match self.conn.reply() {
                Ok(r) => r,
                Err(e) => return self.fail_open(results, Stage::Rcpt, &e),
            };
            if !mail_ok {
                continue;
            }
            if r.positive() {
                accepted.push(i);
            } else {
                results[i] = Some(self.reply_result(&r, Stage::Rcpt));
            }
        }
        self.conn.deadline(cfg.timeouts.data_init);
        let data_reply = if pipelined {
            match self.conn.reply() {
                Ok(r) => Some(r),
                Err(e) => return self.fail_open(results, Stage::Data, &e),
            }
        } else if mail_ok && !accepted.is_empty() {
            match self.conn.command("DATA") {
                Ok(r) => Some(r),
                Err(e) => return self.fail_open(results, Stage::Data, &e),
            }
        } else {
            None
        };
        let go = data_reply.as_ref().is_some_and(|r| r.code == 354);
        if !go || accepted.is_empty() {
            if go {
                // 354 without any accepted recipient: end the empty
                // message (and ignore its reply) to keep the session in step.
                self.conn.queue(".");
                if self.conn.flush().is_err() || self.conn.reply().is_err() {
                    return false;
                }
            }
            if let (Some(r), true) = (&data_reply, mail_ok && !accepted.is_empty()) {
                let rr = self.reply_result(r, Stage::Data);
                Self::set_all(results, rr);
            }
            return self.rset(cfg);
        }
        // The content, dot-stuffed, with long lines folded.
        self.conn.deadline(cfg.timeouts.data_xfer);
        self.in_data = true;
        if let Err(e) = self.content(cfg, req, qf) {
            return match e {
                Fail::Io(e) => self.fail_open(results, Stage::Body, &e),
                Fail::Queue(msg) => {
                    // A damaged queue file: do not finish the message.
                    Self::set_all(
                        results,
                        RcptResult::Soft {
                            dsn: "4.3.0".into(),
                            reason: format!("error reading queue file: {msg}"),
                        },
                    );
                    false
                }
                Fail::Lookup => {
                    // A table lookup failed: the message is not finished,
                    // the server discards what it got.
                    Self::set_all(
                        results,
                        RcptResult::Soft {
                            dsn: "4.3.0".into(),
                            reason: format!("local data error while talking to {name}"),
                        },
                    );
                    false
                }
            };
        }
        self.in_data = false;
        self.conn.queue(".");
        if let Err(e) = self.conn.flush() {
            return self.fail_open(results, Stage::DataDone, &e);
        }
        self.conn.deadline(cfg.timeouts.data_done);
        let finals = if self.lmtp { accepted.len() } else { 1 };
        for k in 0..finals {
            let r = match self.conn.reply() {
                Ok(r) => r,
                Err(e) => return self.fail_open(results, Stage::DataDone, &e),
            };
            let res = if r.positive() {
                RcptResult::Sent {
                    dsn: r.dsn(),
                    reason: printable(&r.flat()),
                }
            } else {
                self.reply_result(&r, Stage::DataDone)
            };
            if self.lmtp {
                results[accepted[k]] = Some(res);
            } else {
                for &i in &accepted {
                    results[i] = Some(res.clone());
                }
            }
        }
        true
    }

    /// RSET after a transaction that did not finish; whether the session
    /// is still usable.
    fn rset(&mut self, cfg: &Config) -> bool {
        self.conn.deadline(cfg.timeouts.rset);
        matches!(self.conn.command("RSET"), Ok(r) if r.positive())
    }

    fn content(&mut self, cfg: &Config, req: &Request, qf: &QueueFile) -> Result<(), Fail> {
        let mut wire = Wire {
            conn: &mut self.conn,
            col: 0,
            limit: cfg.line_length_limit,
        };
        let mut reader = qf.content();
        if cfg.filters.active() {
            content::copy(&cfg.filters, &req.queue_id, &mut reader, &mut wire)?;
        } else {
            content::pass(&mut reader, &mut wire)?;
        }
        if wire.col != 0 {
            wire.conn.queue_raw(b"\r\n");
        }
        Ok(())
    }

    /// A reply to XFORWARD: a refusal is logged, the mail goes on.
    /// Sends what is queued and reads one XFORWARD reply (a refusal is
    /// only warned about). `Err` carries what the transaction returns
    /// when the session is lost (a kept session that fails at its first
    /// read is stale).
    fn read_xforward(
        &mut self,
        results: &mut [Option<RcptResult>],
        stage: Stage,
        cfg: &Config,
        first_read: &mut bool,
    ) -> Result<(), bool> {
        self.conn.deadline(cfg.timeouts.xforward);
        match self.conn.flush().and_then(|_| self.conn.reply()) {
            Ok(r) => {
                self.xforward_reply(&r, stage);
                *first_read = false;
                Ok(())
            }
            Err(e) => {
                self.stale = *first_read && matches!(e, IoFail::Lost);
                Err(self.fail_open(results, stage, &e))
            }
        }
    }

    fn xforward_reply(&self, r: &Reply, stage: Stage) {
        if !r.positive() {
            libmail::warning!(
                "host {} said: {} (in reply to {} command)",
                self.peer.relay(),
                printable(&r.flat()),
                stage.in_reply_to()
            );
        }
    }

    /// Whether the last transaction found the connection already closed.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// QUIT and close. The reply is not awaited (Postfix's
    /// `smtp_skip_quit_response`): nothing depends on it.
    pub fn quit(mut self) {
        if self.in_data {
            // QUIT would be read as content: just hang up, and the server
            // throws the unfinished message away.
            self.conn.close();
            return;
        }
        self.conn.deadline(Duration::from_secs(2));
        self.conn.queue("QUIT");
        let _ = self.conn.flush();
        self.conn.close();
    }
}

/// The envelope as it goes out: the sender and the recipients' addresses
/// after `smtp_generic_maps`, each recipient with its queue-file record.
pub struct Outgoing<'a> {
    pub sender: &'a str,
    pub rcpts: Vec<(&'a Rcpt, &'a str)>,
}

/// Content on the wire: dot-stuffed, lines longer than the limit folded
/// with CRLF SPACE, sent in chunks.
struct Wire<'a> {
    conn: &'a mut Conn,
    col: usize,
    limit: usize,
}

impl Sink for Wire<'_> {
    fn put(&mut self, bytes: &[u8], ends_line: bool) -> Result<(), IoFail> {
        const CHUNK: usize = 64 << 10;
        let mut rest = bytes;
        if self.col == 0 && rest.first() == Some(&b'.') {
            self.conn.queue_raw(b".");
        }
        while self.limit > 0 && self.col + rest.len() > self.limit {
            let take = self.limit - self.col;
            self.conn.queue_raw(&rest[..take]);
            self.conn.queue_raw(b"\r\n ");
            rest = &rest[take..];
            self.col = 1;
        }
        self.conn.queue_raw(rest);
        self.col += rest.len();
        if ends_line {
            self.conn.queue_raw(b"\r\n");
            self.col = 0;
        }
        if self.conn.queued() >= CHUNK {
            self.conn.flush()?;
        }
        Ok(())
    }
}

/// An XFORWARD attribute and its value, when there is one to send.
type Attr = (&'static str, Option<String>);

/// Longest XFORWARD command line (RFC 5321's command line limit).
const XFORWARD_LINE: usize = 512;

/// The XFORWARD commands for a message: (name/address command?, line),
/// with the attributes the server named and the message has. Postfix's
/// rules: NAME, ADDR, PORT and PROTO only when known (not `unknown`);
/// HELO, IDENT and SOURCE whenever present; a value that would make the
/// line longer than 512 bytes is left out.
pub fn xforward_commands(announced: &[String], req: &Request) -> Vec<(bool, String)> {
    let has = |n: &str| announced.iter().any(|a| a == n);
    let known = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("unknown"))
            .map(str::to_string)
    };
    let present = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
    let source = req
        .attr("rewrite_context")
        .filter(|v| !v.is_empty())
        .map(|v| if v == "local" { "LOCAL" } else { "REMOTE" }.to_string());
    let groups: [(bool, Vec<Attr>); 2] = [
        (
            true,
            vec![
                ("NAME", known(req.attr("client_name"))),
                ("ADDR", known(req.attr("client_address"))),
                ("PORT", known(req.attr("client_port"))),
            ],
        ),
        (
            false,
            vec![
                ("PROTO", known(req.attr("protocol"))),
                ("HELO", present(req.attr("helo_name"))),
                ("IDENT", present(req.attr("log_ident"))),
                ("SOURCE", source),
            ],
        ),
    ];
    let mut out = Vec::new();
    for (name_addr, attrs) in groups {
        let mut line = String::from("XFORWARD");
        for (name, value) in attrs {
            let Some(v) = value.filter(|_| has(name)) else {
                continue;
            };
            let item = format!(" {name}={}", libmail::smtp::command::xtext_encode(&v));
            if line.len() + item.len() <= XFORWARD_LINE {
                line.push_str(&item);
            }
        }
        if line.len() > "XFORWARD".len() {
            out.push((name_addr, line));
        }
    }
    out
}

/// An address as it goes on the wire (quoted local part when needed).
fn external(addr: &str) -> String {
    if addr.is_empty() {
        String::new()
    } else {
        libmail::address::external(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_capabilities() {
        let r = Reply {
            code: 250,
            lines: vec![
                "250-mx.example".into(),
                "250-PIPELINING".into(),
                "250-SIZE 10240000".into(),
                "250-STARTTLS".into(),
                "250-AUTH PLAIN login".into(),
                "250-AUTH=LOGIN".into(),
                "250-ENHANCEDSTATUSCODES".into(),
                "250-8BITMIME".into(),
                "250-DSN".into(),
                "250 SMTPUTF8".into(),
            ],
        };
        let c = Caps::parse(&r, true);
        assert!(c.pipelining && c.starttls && c.eightbitmime && c.dsn && c.smtputf8);
        assert_eq!(c.size, Some(10240000));
        assert_eq!(c.auth, ["LOGIN", "PLAIN"]);
        let helo = Caps::parse(&r, false);
        assert!(!helo.pipelining && helo.size.is_none());
    }

    #[test]
    fn xforward_sends_what_is_announced_and_known() {
        let r = Reply {
            code: 250,
            lines: vec![
                "250-mx.example".into(),
                "250-XFORWARD NAME addr PROTO HELO SOURCE".into(),
                "250 PIPELINING".into(),
            ],
        };
        let caps = Caps::parse(&r, true);
        assert_eq!(caps.xforward, ["NAME", "ADDR", "PROTO", "HELO", "SOURCE"]);
        let attrs = |v: &[(&str, &str)]| Request {
            attrs: v
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let req = attrs(&[
            ("client_name", "unknown"),
            ("client_address", "192.0.2.1"),
            ("client_port", "1234"),
            ("protocol", "ESMTP"),
            ("helo_name", "bad helo\u{1}=+"),
            ("rewrite_context", "remote"),
        ]);
        assert_eq!(
            xforward_commands(&caps.xforward, &req),
            [
                (true, "XFORWARD ADDR=192.0.2.1".to_string()),
                (
                    false,
                    "XFORWARD PROTO=ESMTP HELO=bad+20helo+01+3D+2B SOURCE=REMOTE".to_string()
                )
            ]
        );
        // Local mail: only what it has.
        let local = attrs(&[("rewrite_context", "local")]);
        assert_eq!(
            xforward_commands(&caps.xforward, &local),
            [(false, "XFORWARD SOURCE=LOCAL".to_string())]
        );
        assert!(xforward_commands(&[], &req).is_empty());
        // Hostile lengths: the line stays within 512 bytes.
        let long = "h".repeat(5000);
        let req = attrs(&[("client_name", &long), ("client_address", "192.0.2.1")]);
        let cmds = xforward_commands(&caps.xforward, &req);
        assert_eq!(cmds, [(true, "XFORWARD ADDR=192.0.2.1".to_string())]);
    }

    #[test]
    fn peers_name_themselves_like_postfix() {
        let p = Peer::Inet {
            host: "mx.example".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        assert_eq!(p.name(), "mx.example[192.0.2.1]");
        assert_eq!(p.relay(), "mx.example[192.0.2.1]:25");
        let u = Peer::Unix {
            host: "mail.example".into(),
            path: "private/dovecot-lmtp".into(),
        };
        assert_eq!(u.relay(), "mail.example[private/dovecot-lmtp]");
    }
}
