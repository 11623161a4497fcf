//! smtp(8) and lmtp(8): the delivery agents that hand mail to other
//! servers. One program; run as `lmtp` it speaks LMTP and reads the
//! `lmtp_*` parameters, as Postfix's lmtp is its smtp under another name.
//!
//! For each request from qmgr (one next hop, up to
//! `*_destination_recipient_limit` recipients):
//!
//! 1. The next hop ([`nexthop`]) gives the servers to try: MX records in
//!    preference order (ties shuffled), or the host itself (`[host]`,
//!    LMTP), a null MX is a bounce, a DNS failure a deferral; at most
//!    `smtp_mx_address_limit` addresses and `smtp_mx_session_limit`
//!    established sessions.
//! 2. A cached session to the same next hop is used first (see
//!    [`cache`]); otherwise a new connection: greeting, EHLO/LHLO,
//!    STARTTLS at the destination's TLS level (`smtp_tls_security_level`,
//!    `smtp_tls_policy_maps`; under `may` a failed handshake falls back to
//!    plain text on a new connection), AUTH when `smtp_sasl_password_maps`
//!    has credentials for the sender, the next hop or the server.
//! 3. The message goes out ([`session`]): MAIL, RCPT and DATA pipelined
//!    when the server offers PIPELINING (LMTP always), SIZE, BODY,
//!    SMTPUTF8 and the DSN parameters passed on when offered. A 2xx after
//!    the data (per recipient in LMTP) is `sent`, a 5xx `bounced`, a 4xx
//!    or a broken session leaves the recipient for the next server; what
//!    no server took is `deferred` with the last reason.
//! 4. The session is kept for the next request to the same next hop
//!    (`smtp_connection_cache_on_demand`, idle at most
//!    `smtp_connection_cache_time_limit`, reused for at most
//!    `smtp_connection_reuse_time_limit`), or closed with QUIT.
//!
//! Each recipient gets Postfix's line: `ID: to=<r>, relay=host[ip]:port,
//! conn_use=N, delay=.., delays=a/b/c/d, dsn=X.Y.Z, status=sent (250 ...)`.
//!
//! Not yet: client certificates, DANE and
//! fingerprint levels, `smtp_generic_maps`, `smtp_header_checks`,
//! fallback relays, XFORWARD, TLS session resumption across processes.

pub mod cache;
pub mod conn;
pub mod nexthop;
pub mod session;

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use libmail::config::params::{split_list, Params};
use libmail::deliver::{delivery_line, now_f64, run_agent, Outcome, Rcpt, Request, Status, Timing};
use libmail::dns::Dns;
use libmail::queue::{QueueFile, QueueLayout};
use libmail::sasl::SecurityPolicy;
use libmail::service::{bool_param, num_param, time_param, value};
use libmail::table::search::{Key, Maps};
use libmail::tls::client::{client_configs, ClientTls, Level};

use conn::{Conn, Socket};
use nexthop::{Lookup, NextHop};
use session::{Credentials, Peer, RcptResult, Session, SetupFail};

/// Per-command deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub helo: Duration,
    pub starttls: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    pub data_xfer: Duration,
    pub data_done: Duration,
    pub rset: Duration,
    pub quit: Duration,
}

pub struct Config {
    pub lmtp: bool,
    layout: QueueLayout,
    myhostname: String,
    pub helo_name: String,
    pub never_ehlo: bool,
    pub timeouts: Timeouts,
    pub skip_5xx_greeting: bool,
    pub wrappermode: bool,
    pub tls: ClientTls,
    level: Level,
    tls_policy: Option<Maps>,
    pub tls_loglevel: i64,
    sasl_maps: Option<Maps>,
    sender_dependent: bool,
    pub sasl_policy: SecurityPolicy,
    pub sasl_filter: Vec<String>,
    dns: Dns,
    use_dns: bool,
    use_native: bool,
    ipv4: bool,
    ipv6: bool,
    prefer: String,
    randomize: bool,
    address_limit: usize,
    session_limit: usize,
    default_port: u16,
    /// `smtp_bind_address`, `smtp_bind_address6`.
    bind4: Option<std::net::IpAddr>,
    bind6: Option<std::net::IpAddr>,
    pub line_length_limit: usize,
    cache: cache::Cache,
}

impl Config {
    pub fn load(p: &Params, layout: QueueLayout, lmtp: bool) -> Result<Config, String> {
        let x = if lmtp { "lmtp" } else { "smtp" };
        let n = |s: &str| format!("{x}_{s}");
        let secs = |s: &str, d: u64| Duration::from_secs(time_param(p, &n(s), d));
        let timeouts = Timeouts {
            connect: secs("connect_timeout", if lmtp { 0 } else { 30 }),
            helo: secs(if lmtp { "lhlo_timeout" } else { "helo_timeout" }, 300),
            starttls: secs("starttls_timeout", 300),
            mail: secs("mail_timeout", 300),
            rcpt: secs("rcpt_timeout", 300),
            data_init: secs("data_init_timeout", 120),
            data_xfer: secs("data_xfer_timeout", 180),
            data_done: secs("data_done_timeout", 600),
            rset: secs("rset_timeout", 20),
            quit: secs("quit_timeout", 300),
        };
        let port_text = value(p, &n("tcp_port"));
        let default_port = nexthop::service_port(port_text.trim())
            .ok_or_else(|| format!("{}: unknown service \"{port_text}\"", n("tcp_port")))?;
        let lookup = value(p, &n("host_lookup")).to_ascii_lowercase();
        let (ipv4, ipv6) = libmail::config::host::protocols(&value(p, "inet_protocols"))
            .map_err(|e| format!("inet_protocols: {e}"))?;
        let sasl_enable = bool_param(p, &n("sasl_auth_enable"), false);
        let policy = SecurityPolicy::parse(
            &value(p, &n("sasl_security_options")),
            &value(p, &n("sasl_tls_security_options")),
        )
        .map_err(|e| format!("{}: {e}", n("sasl_security_options")))?;
        let helo_name = value(
            p,
            &if lmtp {
                "lmtp_lhlo_name".to_string()
            } else {
                n("helo_name")
            },
        );
        let bind = |name: String, v6: bool| -> Result<Option<std::net::IpAddr>, String> {
            let v = value(p, &name);
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            match v.parse::<std::net::IpAddr>() {
                Ok(a) if a.is_ipv6() == v6 => Ok(Some(a)),
                _ => Err(format!("{name}: bad address \"{v}\"")),
            }
        };
        Ok(Config {
            bind4: bind(n("bind_address"), false)?,
            bind6: bind(n("bind_address6"), true)?,
            lmtp,
            myhostname: value(p, "myhostname"),
            helo_name: helo_name.trim().to_string(),
            never_ehlo: !lmtp && bool_param(p, "smtp_never_send_ehlo", false),
            timeouts,
            skip_5xx_greeting: bool_param(p, &n("skip_5xx_greeting"), true),
            wrappermode: bool_param(p, &n("tls_wrappermode"), false),
            tls: client_configs(p, x)?,
            level: Level::from_params(p, x)?,
            tls_policy: Maps::from_param(p, &n("tls_policy_maps"))?,
            tls_loglevel: num_param(p, &n("tls_loglevel"), 0),
            sasl_maps: if sasl_enable {
                Maps::from_param(p, &n("sasl_password_maps"))?
            } else {
                None
            },
            sender_dependent: bool_param(p, &n("sender_dependent_authentication"), false),
            sasl_policy: policy,
            sasl_filter: split_list(&value(p, &n("sasl_mechanism_filter")))
                .into_iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
            dns: Dns::from_params(p)?,
            use_dns: lookup.contains("dns"),
            use_native: lookup.contains("native"),
            ipv4,
            ipv6,
            prefer: value(p, &n("address_preference"))
                .trim()
                .to_ascii_lowercase(),
            randomize: bool_param(p, &n("randomize_addresses"), true),
            address_limit: num_param(p, &n("mx_address_limit"), 5).max(0) as usize,
            session_limit: num_param(p, &n("mx_session_limit"), 2).max(0) as usize,
            default_port,
            line_length_limit: num_param(p, &n("line_length_limit"), 998).max(0) as usize,
            cache: cache::Cache::new(
                bool_param(p, &n("connection_cache_on_demand"), true),
                secs("connection_cache_time_limit", 2),
                secs("connection_reuse_time_limit", 300),
            ),
            layout,
        })
    }

    /// The TLS level for a next hop: `smtp_tls_policy_maps`, else the
    /// default level.
    fn tls_level(&self, nexthop: &str) -> Level {
        if let Some(m) = &self.tls_policy {
            let keys = [Key {
                text: nexthop.to_ascii_lowercase(),
                whole: true,
            }];
            match m.find_first(&keys) {
                Ok(Some((_, v))) => {
                    let word = v.split_whitespace().next().unwrap_or("");
                    match Level::parse(word) {
                        Ok(l) => return l,
                        Err(e) => {
                            libmail::warning!("{}: {nexthop}: {e}: using \"encrypt\"", m.parameter)
                        }
                    }
                    return Level::Encrypt;
                }
                Ok(None) => {}
                Err(e) => {
                    // Safer to require TLS than to send in clear by mistake.
                    libmail::warning!("{}: lookup of {nexthop}: {e}", m.parameter);
                    return self.level.max(Level::Encrypt);
                }
            }
        }
        self.level
    }

    /// The credentials `smtp_sasl_password_maps` has for this delivery:
    /// the sender (with sender-dependent authentication), the next hop as
    /// written, without its port, then the server's name.
    fn credentials(&self, sender: &str, nexthop: &str, host: &str) -> Option<Credentials> {
        let m = self.sasl_maps.as_ref()?;
        let mut keys = Vec::new();
        let mut push = |k: String| {
            if !k.is_empty() && !keys.iter().any(|x: &Key| x.text == k) {
                keys.push(Key {
                    text: k,
                    whole: true,
                });
            }
        };
        if self.sender_dependent && !sender.is_empty() {
            push(sender.to_ascii_lowercase());
            if let Some((_, d)) = sender.rsplit_once('@') {
                push(format!("@{}", d.to_ascii_lowercase()));
            }
        }
        let nh = nexthop.to_ascii_lowercase();
        push(nh.clone());
        if nh.starts_with('[') {
            if let Some(end) = nh.find(']') {
                push(nh[..=end].to_string());
                push(nh[1..end].to_string());
            }
        } else if let Some((h, _)) = nh.rsplit_once(':') {
            push(h.to_string());
        }
        push(host.to_ascii_lowercase());
        match m.find_first(&keys) {
            Ok(Some((_, v))) => {
                let (user, password) = v.split_once(':').unwrap_or((v.as_str(), ""));
                Some(Credentials {
                    user: user.to_string(),
                    password: password.to_string(),
                })
            }
            Ok(None) => None,
            Err(e) => {
                libmail::warning!("{}: lookup error: {e}", m.parameter);
                None
            }
        }
    }
}

pub fn main() {
    let lmtp = std::env::args()
        .next()
        .as_deref()
        .map(|a| a.rsplit('/').next().unwrap_or(a) == "lmtp")
        .unwrap_or(false);
    let program = if lmtp { "lmtp" } else { "smtp" };
    run_agent(
        program,
        move |svc| {
            let cfg = Config::load(&svc.params, svc.layout.clone(), lmtp)?;
            cfg.cache.start_reaper();
            Ok(cfg)
        },
        deliver,
    );
}

/// Where each recipient stands during a request.
struct Track<'a> {
    rcpt: &'a Rcpt,
    done: Option<(Outcome, String)>,
    /// The last temporary failure, with its relay.
    soft: Option<(String, String, String)>,
}

/// Delivers one request; logs and returns a result per recipient.
pub fn deliver(cfg: &Config, req: &Request) -> Vec<Outcome> {
    let received = now_f64();
    let mut track: Vec<Track> = req
        .rcpts
        .iter()
        .map(|r| Track {
            rcpt: r,
            done: None,
            soft: None,
        })
        .collect();
    let mut setup_time = 0.0;
    let mut fallback: Option<(String, String, bool)> = None;
    let reached = match crate::local::open_queue_file(&cfg.layout, req) {
        Err(e) => {
            fallback = Some(("4.3.0".into(), e, false));
            true
        }
        Ok(qf) => attempt(cfg, req, &qf, &mut track, &mut setup_time, &mut fallback),
    };
    let timing = Timing {
        received,
        setup: setup_time,
    };
    let outcomes: Vec<Outcome> = track
        .into_iter()
        .map(|t| {
            let (outcome, relay) = t.done.unwrap_or_else(|| {
                let (dsn, reason, relay) = match (t.soft, &fallback) {
                    (Some(s), _) => s,
                    (None, Some((dsn, reason, _))) => (dsn.clone(), reason.clone(), "none".into()),
                    (None, None) => (
                        "4.4.1".into(),
                        "no server could be reached".into(),
                        "none".into(),
                    ),
                };
                let permanent = fallback.as_ref().is_some_and(|f| f.2) && relay == "none";
                (
                    Outcome {
                        offset: t.rcpt.offset,
                        status: if permanent {
                            Status::Bounced
                        } else {
                            Status::Deferred
                        },
                        dsn,
                        reason,
                    },
                    relay,
                )
            });
            libmail::info!("{}", delivery_line(req, t.rcpt, &relay, timing, &outcome));
            outcome
        })
        .collect();
    // No server of the next hop could be talked to: tell qmgr, which
    // slows down and finally suspends deliveries to a dead site.
    if !reached {
        if let Some(o) = outcomes
            .first()
            .filter(|_| outcomes.iter().all(|o| o.status == Status::Deferred))
        {
            libmail::deliver::site_failure(&o.dsn, &o.reason);
        }
    }
    outcomes
}

/// Records one session's results.
fn record(track: &mut [Track], open: &[usize], results: Vec<RcptResult>, relay: &str) {
    for (&i, r) in open.iter().zip(results) {
        let t = &mut track[i];
        let (status, dsn, reason) = match r {
            RcptResult::Sent { dsn, reason } => (Status::Sent, dsn, reason),
            RcptResult::Hard { dsn, reason } => (Status::Bounced, dsn, reason),
            RcptResult::Soft { dsn, reason } => {
                t.soft = Some((dsn, reason, relay.to_string()));
                continue;
            }
        };
        t.done = Some((
            Outcome {
                offset: t.rcpt.offset,
                status,
                dsn,
                reason,
            },
            relay.to_string(),
        ));
    }
}

fn open_indices(track: &[Track]) -> Vec<usize> {
    (0..track.len())
        .filter(|&i| track[i].done.is_none())
        .collect()
}

/// Runs one message over a session; returns false when the session is
/// no longer usable. A cached session that turns out dead before the
/// server answered anything leaves no result (`stale`).
fn run_session(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    track: &mut [Track],
    mut s: Session,
    key: &str,
) -> bool {
    let open = open_indices(track);
    let rcpts: Vec<&Rcpt> = open.iter().map(|&i| track[i].rcpt).collect();
    let reused = s.uses > 0;
    let (results, reusable) = s.send(cfg, req, &rcpts, qf);
    if reused && s.stale() {
        s.conn.close();
        return false;
    }
    let mut relay = s.peer.relay();
    if reused {
        relay.push_str(&format!(", conn_use={}", s.uses));
    }
    // DSN: a server that announced DSN took the NOTIFY request over; one
    // that did not gets the mail "relayed" (RFC 3461 section 5.2.2).
    for (&i, r) in open.iter().zip(&results) {
        if matches!(r, RcptResult::Sent { .. }) {
            let action = if s.caps.dsn { "passed" } else { "relayed" };
            libmail::deliver::dsn_action(track[i].rcpt.offset, action);
        }
    }
    record(track, &open, results, &relay);
    if reusable {
        cfg.cache.put(key, s);
    } else {
        s.quit();
    }
    true
}

fn attempt(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    track: &mut [Track],
    setup_time: &mut f64,
    fallback: &mut Option<(String, String, bool)>,
) -> bool {
    let key = format!("{}:{}", req.transport, req.nexthop.to_ascii_lowercase());
    let mut reached = false;
    // A session kept from an earlier request to the same next hop.
    while let Some(s) = cfg.cache.take(&key) {
        if run_session(cfg, req, qf, track, s, &key) {
            reached = true;
            break;
        }
    }
    if open_indices(track).is_empty() {
        return reached;
    }
    let hop = match nexthop::parse(&req.nexthop, cfg.lmtp, cfg.default_port, cfg.layout.root()) {
        Ok(h) => h,
        Err(e) => {
            *fallback = Some((
                "4.3.5".into(),
                format!("mail transport unavailable: {e}"),
                false,
            ));
            return reached;
        }
    };
    let level = cfg.tls_level(&req.nexthop);
    let started = Instant::now();
    let peers: Vec<Peer> = match &hop {
        NextHop::Unix(_) => vec![Peer::Unix {
            host: cfg.myhostname.clone(),
            path: req
                .nexthop
                .strip_prefix("unix:")
                .unwrap_or(&req.nexthop)
                .to_string(),
        }],
        NextHop::Inet { .. } => {
            let lookup = Lookup {
                dns: &cfg.dns,
                use_dns: cfg.use_dns,
                use_native: cfg.use_native || !cfg.use_dns,
                ipv4: cfg.ipv4,
                ipv6: cfg.ipv6,
                address_limit: cfg.address_limit,
                randomize: cfg.randomize,
                prefer: &cfg.prefer,
            };
            match lookup.resolve(&hop) {
                Ok(t) => t
                    .into_iter()
                    .map(|t| Peer::Inet {
                        host: t.host,
                        addr: t.addr,
                    })
                    .collect(),
                Err(e) => {
                    *fallback = Some((e.dsn.into(), e.reason, e.permanent));
                    return reached;
                }
            }
        }
    };
    let mut sessions = 0;
    for peer in peers {
        if open_indices(track).is_empty() {
            break;
        }
        if cfg.session_limit > 0 && sessions >= cfg.session_limit {
            break;
        }
        let host = match &peer {
            Peer::Inet { host, .. } => host.clone(),
            Peer::Unix { host, .. } => host.clone(),
        };
        let creds = cfg.credentials(&req.sender, &req.nexthop, &host);
        let verify_name = if level == Level::Secure {
            nexthop_domain(&req.nexthop)
        } else {
            host.clone()
        };
        let mut tls_level = level;
        let session = loop {
            let conn = match connect(cfg, &peer, &hop) {
                Ok(c) => c,
                Err(reason) => {
                    // Postfix logs every failed connection on its own line.
                    libmail::info!("{reason}");
                    *fallback = Some(("4.4.1".into(), reason, false));
                    break None;
                }
            };
            match session::setup(
                cfg,
                conn,
                peer.clone(),
                tls_level,
                &verify_name,
                creds.as_ref(),
            ) {
                Ok(s) => break Some(s),
                Err(SetupFail {
                    retry_plain: true, ..
                }) if tls_level == Level::May => {
                    libmail::info!(
                        "{}: TLS handshake failed; trying {} again without TLS",
                        req.queue_id,
                        peer.relay()
                    );
                    tls_level = Level::None;
                }
                Err(f) => {
                    if f.permanent {
                        let open = open_indices(track);
                        let results = open
                            .iter()
                            .map(|_| RcptResult::Hard {
                                dsn: f.dsn.clone(),
                                reason: f.reason.clone(),
                            })
                            .collect();
                        record(track, &open, results, &peer.relay());
                    } else {
                        for &i in &open_indices(track) {
                            track[i].soft = Some((f.dsn.clone(), f.reason.clone(), peer.relay()));
                        }
                    }
                    break None;
                }
            }
        };
        let Some(s) = session else {
            continue;
        };
        sessions += 1;
        reached = true;
        *setup_time = started.elapsed().as_secs_f64();
        run_session(cfg, req, qf, track, s, &key);
    }
    reached
}

/// The domain of a next hop (`[mx.example]:25` → `mx.example`).
fn nexthop_domain(nexthop: &str) -> String {
    let s = nexthop.strip_prefix("inet:").unwrap_or(nexthop);
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    s.rsplit_once(':').map(|(h, _)| h).unwrap_or(s).to_string()
}

/// Connects to one server. The error is Postfix's `connect to ...` text.
fn connect(cfg: &Config, peer: &Peer, hop: &NextHop) -> Result<Conn, String> {
    match (peer, hop) {
        (Peer::Unix { path: shown, .. }, NextHop::Unix(path)) => UnixStream::connect(path)
            .map(|s| Conn::new(Socket::Unix(s)))
            .map_err(|e| format!("connect to {shown}: {}", strerror(&e))),
        (Peer::Inet { addr, .. }, _) => {
            let source = if addr.is_ipv4() { cfg.bind4 } else { cfg.bind6 };
            let r = match source {
                Some(from) => libmail::net::connect_from(from, addr, cfg.timeouts.connect),
                None if cfg.timeouts.connect.is_zero() => TcpStream::connect(addr),
                None => TcpStream::connect_timeout(addr, cfg.timeouts.connect),
            };
            r.map(|s| {
                let _ = s.set_nodelay(true);
                Conn::new(Socket::Tcp(s))
            })
            .map_err(|e| {
                format!(
                    "connect to {}:{}: {}",
                    peer.name(),
                    addr.port(),
                    strerror(&e)
                )
            })
        }
        _ => Err("internal error: next hop and peer disagree".into()),
    }
}

/// The C library's text for an error (Postfix logs strerror).
fn strerror(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            "Connection timed out".into()
        }
        _ => {
            let s = e.to_string();
            // "Connection refused (os error 111)" → "Connection refused"
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthop_domains() {
        assert_eq!(nexthop_domain("[mail.isp.test]:587"), "mail.isp.test");
        assert_eq!(nexthop_domain("example.com:26"), "example.com");
        assert_eq!(nexthop_domain("example.com"), "example.com");
    }

    #[test]
    fn errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(strerror(&e), "Connection refused");
    }
}
