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
//!    established sessions. SMTP to port 25 (or `smtp_tcp_port`) skips
//!    this machine (`inet_interfaces`, `proxy_interfaces`) and every MX
//!    host not more preferred than it; when that leaves nothing, the
//!    mail loops: `5.4.6 mail for DOMAIN loops back to myself`, bounced
//!    (when this machine is the best MX and `best_mx_transport` is set,
//!    which Facteur does not support: deferred with 4.3.5). An MX host of the destination, or a loop, tries
//!    no later destination (fall-back relay), as in Postfix.
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
//! The next hop may be a list (`relayhost = a, b`, Postfix 3.5); after
//! it come the fall-back relays (`smtp_fallback_relay`, `lmtp_fallback_relay`):
//! recipients that no server of a destination took (it could not be
//! found, reached or talked to, or it answered 4xx) go to the next
//! destination of the list, with its own address and session limits, TLS
//! policy and SASL credentials. A 5xx is final. When the last destination
//! tried is a fall-back relay (or the relayhost) and its failure is a
//! hard one (its name does not resolve), the mail is deferred (4.3.5)
//! with a `configuration problem` warning instead of bounced.
//!
//! On the way out, `smtp_generic_maps` rewrites the envelope ([`generic`])
//! and, with `smtp_header_checks`, `smtp_mime_header_checks` and
//! `smtp_body_checks`, the content ([`content`]); XFORWARD passes the
//! original client on ([`session`]).
//!
//! Not yet: DANE and fingerprint levels, TLS session resumption across
//! processes, `best_mx_transport`, MIME parsing of the body (nested
//! header checks).

pub mod cache;
pub mod conn;
pub mod content;
pub mod generic;
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
use nexthop::{Lookup, Myself, NextHop};
use session::{Credentials, Outgoing, Peer, RcptResult, Session, SetupFail};

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
    pub xforward: Duration,
}

/// Most fall-back relays (and next-hop list entries) tried.
const MAX_SITES: usize = 32;

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
    /// smtp_generic_maps and the header and body checks.
    pub filters: content::Filters,
    /// `smtp_send_xforward_command`.
    pub send_xforward: bool,
    /// `smtp_fallback_relay` (`lmtp_fallback_relay`).
    fallback_relays: Vec<String>,
    /// `relayhost`, for Postfix's rule about its configuration problems.
    relayhost: String,
    /// `lmtp_assume_final`.
    assume_final: bool,
    /// This machine's addresses for the mail-loop check (`inet_interfaces`
    /// and `proxy_interfaces`, made at start); empty for LMTP.
    own_addrs: Vec<std::net::IpAddr>,
    /// `best_mx_transport` when set (SMTP only): not supported, a loop is
    /// then deferred instead of bounced.
    best_mx_transport: Option<String>,
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
            xforward: secs("xforward_timeout", 300),
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
        // Postfix's smtp(8) knows this machine's addresses before any
        // delivery; a proxy_interfaces name that is not found is fatal.
        let own_addrs = if lmtp {
            Vec::new()
        } else {
            libmail::config::host::own_addresses(
                &value(p, "inet_interfaces"),
                &value(p, "proxy_interfaces"),
            )?
        };
        let best_mx_transport = Some(value(p, "best_mx_transport").trim().to_string())
            .filter(|t| !lmtp && !t.is_empty());
        Ok(Config {
            own_addrs,
            best_mx_transport,
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
            filters: content::Filters::load(p, x)?,
            send_xforward: bool_param(p, &n("send_xforward_command"), false),
            fallback_relays: split_list(&value(p, &n("fallback_relay")))
                .into_iter()
                .take(MAX_SITES)
                .map(str::to_string)
                .collect(),
            relayhost: value(p, "relayhost").trim().to_string(),
            assume_final: lmtp && bool_param(p, "lmtp_assume_final", false),
            layout,
        })
    }

    /// The TLS level for a next hop: `smtp_tls_policy_maps`, else the
    /// default level; with a `fingerprint` entry's `match=a|b`, the
    /// configuration that accepts those fingerprints.
    fn tls_level(&self, nexthop: &str) -> (Level, Option<std::sync::Arc<rustls::ClientConfig>>) {
        if let Some(m) = &self.tls_policy {
            let keys = [Key {
                text: nexthop.to_ascii_lowercase(),
                whole: true,
            }];
            match m.find_first(&keys) {
                Ok(Some((_, v))) => {
                    let mut words = v.split_whitespace();
                    let word = words.next().unwrap_or("");
                    match Level::parse(word) {
                        Ok(Level::Fingerprint) => {
                            let pinned = words
                                .find_map(|w| w.strip_prefix("match="))
                                .map(|list| self.tls.pinned(list));
                            return (Level::Fingerprint, pinned);
                        }
                        Ok(l) => return (l, None),
                        Err(e) => {
                            libmail::warning!("{}: {nexthop}: {e}: using \"encrypt\"", m.parameter)
                        }
                    }
                    return (Level::Encrypt, None);
                }
                Ok(None) => {}
                Err(e) => {
                    // Safer to require TLS than to send in clear by mistake.
                    libmail::warning!("{}: lookup of {nexthop}: {e}", m.parameter);
                    return (self.level.max(Level::Encrypt), None);
                }
            }
        }
        (self.level, None)
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

/// Why a recipient is not delivered yet: the newest failure wins (as
/// Postfix reports the last error of a delivery attempt).
#[derive(Debug, Clone)]
struct Failure {
    dsn: String,
    reason: String,
    relay: String,
    /// A hard failure of the destination (its name does not exist, null
    /// MX): the recipient bounces unless a later attempt did better.
    permanent: bool,
    /// The destination (index in the list of sites) it happened at.
    site: usize,
    seq: u64,
}

/// Where each recipient stands during a request.
struct Track<'a> {
    rcpt: &'a Rcpt,
    /// The address that goes out (after smtp_generic_maps).
    address: String,
    done: Option<(Outcome, String)>,
    /// The last temporary failure of this recipient at a server.
    soft: Option<Failure>,
}

/// One request's attempt: the recipients and the failures that concern
/// all of them.
struct State<'a> {
    track: Vec<Track<'a>>,
    /// The last failure of a destination or server as a whole.
    site_fail: Option<Failure>,
    seq: u64,
    /// The site being tried.
    site: usize,
    /// Try no later site: this machine is an MX host of the current one,
    /// or mail for it loops (Postfix's FINAL_NEXTHOP).
    final_hop: bool,
}

impl State<'_> {
    fn failure(&mut self, dsn: &str, reason: String, relay: &str, permanent: bool) -> Failure {
        self.seq += 1;
        Failure {
            dsn: dsn.to_string(),
            reason,
            relay: relay.to_string(),
            permanent,
            site: self.site,
            seq: self.seq,
        }
    }

    /// A failure of the destination or server as a whole.
    fn fail_site(&mut self, dsn: &str, reason: String, relay: &str, permanent: bool) {
        let f = self.failure(dsn, reason, relay, permanent);
        self.site_fail = Some(f);
    }

    fn open(&self) -> Vec<usize> {
        (0..self.track.len())
            .filter(|&i| self.track[i].done.is_none())
            .collect()
    }
}

/// The sites of a request: the next hop (a list since Postfix 3.5), then
/// the fall-back relays (not for LMTP over a UNIX-domain socket). The
/// number of next-hop entries comes with it.
fn sites(cfg: &Config, nexthop: &str) -> (Vec<String>, usize) {
    if nexthop.trim_start().starts_with("unix:") {
        return (vec![nexthop.trim().to_string()], 1);
    }
    let mut v: Vec<String> = split_list(nexthop)
        .into_iter()
        .take(MAX_SITES)
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        v.push(nexthop.to_string());
    }
    let primary = v.len();
    v.extend(cfg.fallback_relays.iter().cloned());
    (v, primary)
}

/// Delivers one request; logs and returns a result per recipient.
pub fn deliver(cfg: &Config, req: &Request) -> Vec<Outcome> {
    let received = now_f64();
    let mut st = State {
        track: req
            .rcpts
            .iter()
            .map(|r| Track {
                rcpt: r,
                address: r.address.clone(),
                done: None,
                soft: None,
            })
            .collect(),
        site_fail: None,
        seq: 0,
        site: 0,
        final_hop: false,
    };
    let mut setup_time = 0.0;
    let (sites, primary) = sites(cfg, &req.nexthop);
    let mut sender = req.sender.clone();
    let reached = match crate::local::open_queue_file(&cfg.layout, req) {
        Err(e) => {
            st.fail_site("4.3.0", e, "none", false);
            true
        }
        Ok(qf) => match map_envelope(cfg, req, &mut sender, &mut st.track) {
            Err(reason) => {
                st.fail_site("4.3.0", reason, "none", false);
                true
            }
            Ok(()) => attempt(cfg, req, &qf, &sender, &sites, &mut st, &mut setup_time),
        },
    };
    let timing = Timing {
        received,
        setup: setup_time,
    };
    // A hard failure at a fall-back relay or at the relayhost is a
    // configuration problem here, not a reason to return the mail.
    let last_site = st.site;
    let config_problem = if last_site >= primary {
        Some(format!(
            "{}_fallback_relay",
            if cfg.lmtp { "lmtp" } else { "smtp" }
        ))
    } else if !cfg.lmtp && !cfg.relayhost.is_empty() && sites[0] == cfg.relayhost {
        Some("relayhost".to_string())
    } else {
        None
    };
    let mut warned = false;
    let site_fail = st.site_fail.clone();
    let outcomes: Vec<Outcome> = st
        .track
        .into_iter()
        .map(|t| {
            let (outcome, relay) = t.done.unwrap_or_else(|| {
                let newest = match (t.soft, &site_fail) {
                    (Some(s), Some(g)) if g.seq > s.seq => Some(g.clone()),
                    (Some(s), _) => Some(s),
                    (None, g) => g.clone(),
                };
                let mut f = newest.unwrap_or_else(|| Failure {
                    dsn: "4.4.1".into(),
                    reason: "no server could be reached".into(),
                    relay: "none".into(),
                    permanent: false,
                    site: last_site,
                    seq: 0,
                });
                if f.permanent && f.site == last_site {
                    if let Some(param) = &config_problem {
                        if !warned {
                            libmail::warning!("{param} configuration problem");
                            warned = true;
                        }
                        f.permanent = false;
                        f.dsn = "4.3.5".into();
                    }
                }
                (
                    Outcome {
                        offset: t.rcpt.offset,
                        status: if f.permanent {
                            Status::Bounced
                        } else {
                            Status::Deferred
                        },
                        dsn: f.dsn,
                        reason: f.reason,
                    },
                    f.relay,
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

/// `smtp_generic_maps` on the envelope: the sender and each recipient as
/// they go out. A lookup error defers the whole request (Postfix's smtp
/// gives up on it too).
fn map_envelope(
    cfg: &Config,
    req: &Request,
    sender: &mut String,
    track: &mut [Track],
) -> Result<(), String> {
    let Some(g) = &cfg.filters.generic else {
        return Ok(());
    };
    let problem = |addr: &str, e: libmail::table::TableError| {
        libmail::warning!(
            "{}: {} map lookup problem for {addr}: {e}",
            req.queue_id,
            g.parameter()
        );
        format!("{} map lookup problem for {addr}", g.parameter())
    };
    if let Some(m) = g.map(sender).map_err(|e| problem(sender, e))? {
        *sender = m;
    }
    for t in track.iter_mut() {
        if let Some(m) = g.map(&t.address).map_err(|e| problem(&t.address, e))? {
            t.address = m;
        }
    }
    Ok(())
}

/// Records one session's results.
fn record(st: &mut State, open: &[usize], results: Vec<RcptResult>, relay: &str) {
    for (&i, r) in open.iter().zip(results) {
        let (status, dsn, reason) = match r {
            RcptResult::Sent { dsn, reason } => (Status::Sent, dsn, reason),
            RcptResult::Hard { dsn, reason } => (Status::Bounced, dsn, reason),
            RcptResult::Soft { dsn, reason } => {
                let f = st.failure(&dsn, reason, relay, false);
                st.track[i].soft = Some(f);
                continue;
            }
        };
        let t = &mut st.track[i];
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

/// Runs one message over a session; returns false when the session is
/// no longer usable. A cached session that turns out dead before the
/// server answered anything leaves no result (`stale`).
fn run_session(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    sender: &str,
    st: &mut State,
    mut s: Session,
    key: &str,
) -> bool {
    let open = st.open();
    let env = Outgoing {
        sender,
        rcpts: open
            .iter()
            .map(|&i| (st.track[i].rcpt, st.track[i].address.as_str()))
            .collect(),
    };
    let reused = s.uses > 0;
    let (results, reusable) = s.send(cfg, req, &env, qf);
    if reused && s.stale() {
        s.conn.close();
        return false;
    }
    let mut relay = s.peer.relay();
    if reused {
        relay.push_str(&format!(", conn_use={}", s.uses));
    }
    // DSN: a server that announced DSN took the NOTIFY request over; one
    // that did not gets the mail "relayed" (RFC 3461 section 5.2.2),
    // unless it is an LMTP server assumed to deliver (lmtp_assume_final).
    for (&i, r) in open.iter().zip(&results) {
        if matches!(r, RcptResult::Sent { .. }) {
            let action = if s.caps.dsn {
                Some("passed")
            } else if cfg.assume_final {
                None
            } else {
                Some("relayed")
            };
            if let Some(a) = action {
                libmail::deliver::dsn_action(st.track[i].rcpt.offset, a);
            }
        }
    }
    record(st, &open, results, &relay);
    if reusable {
        cfg.cache.put(key, s);
    } else {
        s.quit();
    }
    true
}

/// Tries the sites in order while recipients are left. Returns whether
/// any server was talked to.
fn attempt(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    sender: &str,
    sites: &[String],
    st: &mut State,
    setup_time: &mut f64,
) -> bool {
    let mut reached = false;
    let started = Instant::now();
    for (i, site) in sites.iter().enumerate() {
        if st.open().is_empty() || st.final_hop {
            break;
        }
        st.site = i;
        reached |= attempt_site(cfg, req, qf, sender, site, st, started, setup_time);
    }
    reached
}

/// One destination: a kept session first, then its servers in order.
#[allow(clippy::too_many_arguments)]
fn attempt_site(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    sender: &str,
    site: &str,
    st: &mut State,
    started: Instant,
    setup_time: &mut f64,
) -> bool {
    let key = format!("{}:{}", req.transport, site.to_ascii_lowercase());
    let mut reached = false;
    // A session kept from an earlier request to the same destination.
    while let Some(s) = cfg.cache.take(&key) {
        if run_session(cfg, req, qf, sender, st, s, &key) {
            reached = true;
            break;
        }
    }
    if st.open().is_empty() {
        return reached;
    }
    let hop = match nexthop::parse(site, cfg.lmtp, cfg.default_port, cfg.layout.root()) {
        Ok(h) => h,
        Err(e) => {
            st.fail_site(
                "4.3.5",
                format!("mail transport unavailable: {e}"),
                "none",
                false,
            );
            return reached;
        }
    };
    let (level, pinned) = cfg.tls_level(site);
    let peers: Vec<Peer> = match &hop {
        NextHop::Unix(_) => vec![Peer::Unix {
            host: cfg.myhostname.clone(),
            path: site.strip_prefix("unix:").unwrap_or(site).to_string(),
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
                myself: (!cfg.lmtp).then_some(Myself {
                    addrs: &cfg.own_addrs,
                    port: cfg.default_port,
                }),
            };
            match lookup.resolve(&hop) {
                Ok(r) => {
                    st.final_hop |= r.i_am_mx;
                    r.targets
                        .into_iter()
                        .map(|t| Peer::Inet {
                            host: t.host,
                            addr: t.addr,
                        })
                        .collect()
                }
                Err(mut e) => {
                    st.final_hop |= e.final_hop;
                    if let Some(t) = cfg.best_mx_transport.as_ref().filter(|_| e.best_mx) {
                        // Postfix passes the mail to best_mx_transport;
                        // better kept than bounced until Facteur does.
                        libmail::warning!(
                            "{}: best_mx_transport = {t} is not supported: deferring: {}",
                            req.queue_id,
                            e.reason
                        );
                        e.permanent = false;
                        e.dsn = "4.3.5";
                    }
                    st.fail_site(e.dsn, e.reason, "none", e.permanent);
                    return reached;
                }
            }
        }
    };
    let mut sessions = 0;
    for peer in peers {
        if st.open().is_empty() {
            break;
        }
        if cfg.session_limit > 0 && sessions >= cfg.session_limit {
            break;
        }
        let host = match &peer {
            Peer::Inet { host, .. } => host.clone(),
            Peer::Unix { host, .. } => host.clone(),
        };
        let creds = cfg.credentials(&req.sender, site, &host);
        let verify_name = if level == Level::Secure {
            nexthop_domain(site)
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
                    st.fail_site("4.4.1", reason, "none", false);
                    break None;
                }
            };
            match session::setup(
                cfg,
                conn,
                peer.clone(),
                tls_level,
                &verify_name,
                pinned.as_ref(),
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
                    let open = st.open();
                    if f.permanent {
                        let results = open
                            .iter()
                            .map(|_| RcptResult::Hard {
                                dsn: f.dsn.clone(),
                                reason: f.reason.clone(),
                            })
                            .collect();
                        record(st, &open, results, &peer.relay());
                    } else {
                        st.fail_site(&f.dsn, f.reason.clone(), &peer.relay(), false);
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
        run_session(cfg, req, qf, sender, st, s, &key);
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
