//! The SMTP server session, without sockets: command lines and message
//! content go in, replies and log lines come out. The network shell
//! (`server.rs`) reads and writes; this module decides. It can therefore
//! be tested command by command, and fuzzed.
//!
//! What it does, in Postfix's words and order:
//!
//! * `HELO`/`EHLO` (EHLO lists PIPELINING, SIZE, VRFY, ETRN,
//!   ENHANCEDSTATUSCODES, 8BITMIME, DSN, SMTPUTF8, CHUNKING, less
//!   `smtpd_discard_ehlo_keywords`), `MAIL`, `RCPT`, `DATA`, `BDAT`,
//!   `RSET`, `NOOP`, `VRFY` (`disable_vrfy_command`), `ETRN`, `QUIT`; every
//!   other verb, `HELP` included, is `500 5.5.2 Error: command not
//!   recognized`. AUTH is not offered yet.
//! * `STARTTLS` (listed after ETRN when `smtpd_tls_security_level` is
//!   `may` or `encrypt` and a certificate is loaded): the session answers
//!   and hands the handshake to the shell ([`Step::StartTls`]); after it,
//!   [`Session::tls_started`] forgets everything said in plaintext. Under
//!   `encrypt`, MAIL, RCPT, DATA, VRFY and ETRN need TLS first.
//! * The access decisions go through a [`Gate`] (the smtpd restrictions),
//!   at RCPT when `smtpd_delay_reject = yes`, else at each command.
//! * The queue file is opened (through a [`Queue`]: cleanup) at the first
//!   accepted recipient, as Postfix does with
//!   `smtpd_delay_open_until_valid_rcpt`; `ID: client=name[addr]` is
//!   logged then. The envelope goes at DATA; the content follows with
//!   smtpd's `Received:` header first; the `250 2.0.0 Ok: queued as ID`
//!   comes only once cleanup says the file is durable.
//! * Limits: `smtpd_recipient_limit`, `message_size_limit` (at MAIL
//!   `SIZE=` and while receiving), `smtpd_soft_error_limit` (replies then
//!   ask the shell to pause `smtpd_error_sleep_time`),
//!   `smtpd_hard_error_limit` (421 and close), `smtpd_junk_command_limit`.
//!   A successful DATA resets the error count.
//! * The client limits of anvil(8) ([`super::anvil`]), when the shell
//!   sets them ([`Session::with_limits`]): connection count and rate at
//!   the greeting (`421 4.7.0 <myhostname> Error: too many connections
//!   from <ip>`, then close), MAIL (`450 4.7.1 Error: too much mail from
//!   <ip>`), RCPT (`450 4.7.1 Error: too many recipients from <ip>`),
//!   AUTH (`450 4.7.1 Error: too many AUTH commands from <ip>`), STARTTLS
//!   (`454 4.7.0 Error: too many new TLS sessions from <name[ip]>`), each
//!   with Postfix's `warning: ... limit exceeded: N from name[ip] for
//!   service S`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use libmail::address::networks::NetworkList;
use libmail::ipc::Attrs;
use libmail::smtp::command::{self, Body, Command, MailParams, RcptParams};
use libmail::smtp::Reply;
use libmail::tls::{Level, Summary};

use super::anvil::{ClientLimits, Connected, Event};

pub use super::restrict::{Facts, Log, PendingDefer};

/// The stages at which the restrictions are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Etrn,
}

/// The restrictions' answer: a reply (reject or defer), or none (go on),
/// with side effects for the whole message.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub reply: Option<Reply>,
    /// HOLD: the reason.
    pub hold: Option<String>,
    pub discard: Option<String>,
    pub filter: Option<String>,
    pub redirect: Option<String>,
    pub bcc: Vec<String>,
    /// PREPEND: header lines.
    pub prepend: Vec<String>,
    /// Lines for the log (warn:, info:, reject_warning:, warnings); the
    /// session adds its queue ID, command and protocol.
    pub log: Vec<Log>,
    /// A `defer_if_permit` to hand to the next stage.
    pub pending_defer: Option<PendingDefer>,
    /// `sleep N` seen: pause before the reply.
    pub sleep: Option<Duration>,
    /// A 421 or 521 reply: hang up after it.
    pub hangup: bool,
}

/// The smtpd restrictions, as the session needs them.
pub trait Gate: Send + Sync {
    /// With `smtpd_delay_reject = yes`, everything but data, end-of-data
    /// and ETRN is asked at RCPT.
    fn delay_reject(&self) -> bool;
    /// `facts`: what the session knows (restrict's [`Facts`]).
    fn ask(&self, at: Ask, facts: &Facts) -> Verdict;
}

/// Where an accepted message goes (cleanup). Blocking calls: the shell
/// runs them where blocking is allowed.
pub trait Queue: Send {
    /// Opens a queue file; its queue ID.
    fn open(&mut self) -> Result<String, Reply>;
    fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply>;
    fn content(&mut self, bytes: &[u8]) -> Result<(), Reply>;
    /// The verdict: the queue ID once the file is durable.
    fn finish(&mut self) -> Result<String, Reply>;
    /// Drops the message being received (cleanup withdraws its file).
    fn abort(&mut self);
}

/// SMTP AUTH's server side (Dovecot). Blocking calls: the shell runs
/// them where blocking is allowed.
pub trait Sasl: Send {
    /// The mechanisms to offer with TLS active or not (after the
    /// security options); empty: AUTH is not offered.
    fn mechanisms(&mut self, tls: bool) -> Vec<String>;
    fn start(&mut self, mech: &str, initial: Option<&str>, tls: bool, client: &Client) -> SaslStep;
    fn respond(&mut self, response: &str) -> SaslStep;
    fn abort(&mut self);
}

pub use libmail::sasl::Step as SaslStep;

/// The connecting client.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: IpAddr,
    pub port: u16,
    /// The verified name, or `unknown`.
    pub name: String,
    /// The PTR name, or `unknown`.
    pub reverse_name: String,
    /// Our end of the connection (for policy servers), when known.
    pub server: Option<std::net::SocketAddr>,
}

impl Client {
    /// `name[addr]` as logs show a client.
    pub fn label(&self) -> String {
        format!("{}[{}]", self.name, self.addr)
    }

    /// The address as the Received: header writes it.
    fn received_addr(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("IPv6:{a}"),
        }
    }
}

/// smtpd's settings, read once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub myhostname: String,
    pub mail_name: String,
    pub banner: String,
    /// 0 = no limit.
    pub message_size_limit: u64,
    pub recipient_limit: usize,
    pub soft_error_limit: usize,
    pub hard_error_limit: usize,
    pub error_sleep: Duration,
    pub junk_command_limit: usize,
    pub helo_required: bool,
    pub disable_vrfy: bool,
    pub smtputf8: bool,
    pub discard_ehlo: Vec<String>,
    pub soft_bounce: bool,
    pub tls: TlsPolicy,
    /// `smtpd_tls_auth_only`: AUTH only under TLS.
    pub auth_tls_only: bool,
    /// `broken_sasl_auth_clients`: also `AUTH=` in EHLO.
    pub broken_sasl_clients: bool,
    /// `smtpd_sasl_authenticated_header`.
    pub sasl_authenticated_header: bool,
    /// `smtpd_forbid_bare_newline`.
    pub bare_lf: BareLf,
    /// `smtpd_forbid_bare_newline_reject_code`.
    pub bare_lf_reject_code: u16,
}

/// What smtpd does with a line that ends in a bare `<LF>`
/// (`smtpd_forbid_bare_newline`, as Postfix 3.7.11 has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLf {
    /// `normalize`, `yes` (its alias) and `no`: only `<CR><LF>.<CR><LF>`
    /// ends DATA; any other bare LF counts as a line end. Postfix 3.7's
    /// default `no` would also end DATA at `<LF>.<LF>` (SMTP smuggling);
    /// Facteur keeps the safe `normalize` reading for `no` as well, as it
    /// always has.
    #[default]
    Normalize,
    /// `reject`: a command line ending in a bare LF is refused and the
    /// session ends; content with one is refused at its end.
    Reject,
}

impl BareLf {
    /// The parameter's value; `None` when Postfix would not accept it.
    pub fn parse(value: &str) -> Option<BareLf> {
        match value.trim().to_ascii_lowercase().as_str() {
            // `no` is 3.7's default: kept as today's behaviour (normalize).
            "no" | "normalize" | "yes" => Some(BareLf::Normalize),
            "reject" => Some(BareLf::Reject),
            _ => None,
        }
    }
}

/// The `smtpd_tls_*` settings the conversation needs (the handshake
/// itself is the shell's).
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// `smtpd_tls_security_level` (or the legacy `smtpd_use_tls`,
    /// `smtpd_enforce_tls`).
    pub level: Level,
    /// A server certificate is configured and loaded: STARTTLS can work.
    pub available: bool,
    /// `smtpd_tls_loglevel`.
    pub loglevel: i64,
    /// `smtpd_tls_received_header`.
    pub received_header: bool,
    /// `smtpd_tls_ask_ccert`.
    pub ask_ccert: bool,
}

/// Per-command counters for the `disconnect from` line.
#[derive(Debug, Default, Clone)]
struct Count {
    ok: u32,
    total: u32,
}

const COUNTED: [&str; 13] = [
    "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop", "vrfy",
    "etrn", "quit",
];

/// The transaction between MAIL and the end of DATA.
#[derive(Default)]
struct Transaction {
    sender: String,
    params: MailParams,
    rcpts: Vec<(String, RcptParams)>,
    queue_id: Option<String>,
    verdict: Verdict,
    /// Bytes of content received (CRLF counted as 2, as SIZE= is).
    size: u64,
    too_big: bool,
    failed: Option<Reply>,
    pending: Vec<u8>,
    /// BDAT: the last chunk ended in CR (a CR LF may straddle chunks).
    cr: bool,
    /// A content line ended in a bare LF (under `reject`, for a client
    /// not excluded): the message is refused at its end.
    bare_lf: bool,
}

/// What the shell must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    /// Send, then close the connection.
    Close(Reply),
    /// Send the 354; then pass content lines to [`Session::data_line`]
    /// and the end to [`Session::data_end`].
    Data(Reply),
    /// Read exactly this many bytes of BDAT content, pass them to
    /// [`Session::bdat_chunk`], then call [`Session::bdat_end`].
    Bdat {
        size: u64,
        last: bool,
    },
    /// Send the 220, then: drop whatever the client sent after STARTTLS
    /// in plaintext, do the TLS handshake, and call
    /// [`Session::tls_started`] (or end the session if it failed).
    StartTls(Reply),
}

/// Content is handed to cleanup in pieces of about this size.
const FLUSH_AT: usize = 64 << 10;

pub struct Session {
    set: Arc<Settings>,
    gate: Arc<dyn Gate>,
    queue: Box<dyn Queue>,
    pub client: Client,
    helo: Option<String>,
    esmtp: bool,
    tx: Option<Transaction>,
    errors: usize,
    junk: usize,
    counts: Vec<(&'static str, Count)>,
    unknown: Count,
    /// The last command's verb, for "lost connection after X" lines.
    pub last_verb: String,
    /// Log lines to write, taken by the shell.
    logs: Vec<String>,
    /// BDAT in progress (after the first chunk of a message).
    in_bdat: bool,
    /// A previous BDAT failed: the rest of its chunks are read and dropped.
    bdat_failed: Option<Reply>,
    pipelining_violation: bool,
    pause: Option<Duration>,
    /// The `defer_if_permit` pending from the previous stage.
    pending: Option<PendingDefer>,
    /// TLS is active: what the handshake gave.
    tls: Option<Summary>,
    /// AUTH's server (None: `smtpd_sasl_auth_enable = no`).
    sasl: Option<Box<dyn Sasl>>,
    /// After a successful AUTH: (mechanism, user name).
    auth: Option<(String, String)>,
    /// An AUTH exchange waits for the client's next line (the mechanism).
    auth_pending: Option<String>,
    /// The client limits (None: off, or the client is exempt).
    limits: Option<Arc<ClientLimits>>,
    /// This connection, counted while the session lives.
    connected: Option<Connected>,
    /// `smtpd_forbid_bare_newline = reject` applies to this client (it is
    /// not in `smtpd_forbid_bare_newline_exclusions`).
    reject_bare_lf: bool,
}

fn pl(code: u16, enh: &str, text: &str) -> Reply {
    Reply::new(code, enh, text)
}

impl Session {
    pub fn new(
        set: Arc<Settings>,
        gate: Arc<dyn Gate>,
        queue: Box<dyn Queue>,
        client: Client,
    ) -> Session {
        Session {
            gate,
            queue,
            client,
            helo: None,
            esmtp: false,
            tx: None,
            errors: 0,
            junk: 0,
            counts: COUNTED.iter().map(|v| (*v, Count::default())).collect(),
            unknown: Count::default(),
            last_verb: "CONNECT".into(),
            logs: Vec::new(),
            in_bdat: false,
            bdat_failed: None,
            pipelining_violation: false,
            pause: None,
            pending: None,
            tls: None,
            sasl: None,
            auth: None,
            auth_pending: None,
            limits: None,
            connected: None,
            reject_bare_lf: set.bare_lf == BareLf::Reject,
            set,
        }
    }

    /// Exempts the client from `smtpd_forbid_bare_newline = reject` when
    /// it is in `smtpd_forbid_bare_newline_exclusions`; a lookup error
    /// counts as not exempt, with a warning.
    pub fn with_bare_lf_exclusions(mut self, exclusions: &NetworkList) -> Session {
        if !self.reject_bare_lf {
            return self;
        }
        match exclusions.matches(Some(&self.client.name), self.client.addr) {
            Ok(true) => self.reject_bare_lf = false,
            Ok(false) => {}
            Err(e) => self.logs.push(format!(
                "warning: smtpd_forbid_bare_newline_exclusions: table lookup problem: {e}"
            )),
        }
        self
    }

    /// `<code> 5.5.2 <myhostname> Error: bare <LF> received`.
    fn bare_lf_reply(&self) -> Reply {
        Reply::new(
            self.set.bare_lf_reject_code,
            "5.5.2",
            format!("{} Error: bare <LF> received", self.set.myhostname),
        )
    }

    /// The shell read a command line that ended in a bare LF: under
    /// `reject` the reply that ends the session (the line is not
    /// executed, nor counted as a command); otherwise `None`, and the line
    /// is a command as any other.
    pub fn bare_lf_command(&mut self) -> Option<Step> {
        if !self.reject_bare_lf {
            return None;
        }
        let r = self.bare_lf_reply();
        let r = if self.set.soft_bounce {
            r.softened()
        } else {
            r
        };
        let stage = self.last_verb.clone();
        self.log_reject(&stage, &r, None);
        Some(Step::Close(r))
    }

    /// The shell read a DATA content line that ended in a bare LF: under
    /// `reject` the message is refused at its end.
    pub fn data_bare_lf(&mut self) {
        if self.reject_bare_lf {
            if let Some(t) = self.tx.as_mut() {
                t.bare_lf = true;
            }
        }
    }

    /// Applies the client limits, unless the client is in
    /// `smtpd_client_event_limit_exceptions`.
    pub fn with_limits(mut self, limits: Arc<ClientLimits>) -> Session {
        match limits.exempt(&self.client.name, self.client.addr) {
            Ok(true) => {}
            Ok(false) => self.limits = Some(limits),
            Err(w) => {
                self.logs.push(format!("warning: {w}"));
                self.limits = Some(limits);
            }
        }
        self
    }

    /// Counts an event against its rate limit: `Some(rate)` when over.
    fn over_limit(&mut self, ev: Event) -> Option<u32> {
        self.limits.as_ref()?.over(self.client.addr, ev)
    }

    /// `warning: <what> limit exceeded: N from name[addr] for service S`.
    fn limit_warning(&mut self, what: &str, n: u32) {
        let service = self
            .limits
            .as_ref()
            .map(|l| l.service.clone())
            .unwrap_or_default();
        self.logs.push(format!(
            "warning: {what} limit exceeded: {n} from {} for service {service}",
            self.client.label()
        ));
    }

    /// Whether the client has made too many new TLS sessions lately (the
    /// warning is logged); checked before a handshake.
    pub fn too_many_new_tls(&mut self) -> bool {
        let over = self
            .limits
            .as_ref()
            .and_then(|l| l.over_already(self.client.addr, Event::NewTls));
        match over {
            Some(n) => {
                self.limit_warning("New TLS session rate", n);
                true
            }
            None => false,
        }
    }

    /// The connection is about to close: it no longer counts against
    /// the client's connection limit (before the client can see the
    /// close and connect again).
    pub fn release_connection(&mut self) {
        self.connected = None;
    }

    /// A handshake made a new TLS session (not a resumed one).
    pub fn new_tls_session(&mut self) {
        if let Some(l) = &self.limits {
            l.count(self.client.addr, Event::NewTls);
        }
    }

    /// Turns SMTP AUTH on, with this server behind it.
    pub fn with_sasl(mut self, sasl: Box<dyn Sasl>) -> Session {
        self.sasl = Some(sasl);
        self
    }

    /// Whether the client's next line answers an AUTH challenge.
    pub fn in_auth(&self) -> bool {
        self.auth_pending.is_some()
    }

    /// The mechanisms AUTH offers now (none: not offered).
    fn auth_mechanisms(&mut self) -> Vec<String> {
        let tls = self.tls.is_some();
        if self.set.auth_tls_only && !tls {
            return Vec::new();
        }
        match self.sasl.as_mut() {
            Some(s) => s.mechanisms(tls),
            None => Vec::new(),
        }
    }

    fn auth_cmd(&mut self, mech: String, initial: Option<String>) -> Step {
        self.last_verb = "AUTH".into();
        let fail = |s: &mut Session, r: Reply| {
            s.count("auth", false);
            s.error(r)
        };
        use libmail::sasl::smtp as ss;
        if self.auth_mechanisms().is_empty() {
            return fail(self, ss::not_enabled());
        }
        if self.auth.is_some() {
            return fail(self, ss::already_authenticated());
        }
        if self.tx.is_some() {
            return fail(self, ss::transaction_in_progress());
        }
        if let Some(n) = self.over_limit(Event::Auth) {
            self.limit_warning("AUTH command rate", n);
            let r = pl(
                450,
                "4.7.1",
                &format!("Error: too many AUTH commands from {}", self.client.addr),
            );
            return fail(self, r);
        }
        // `=` is an empty initial response (RFC 4954).
        let initial = initial.map(|i| if i == "=" { String::new() } else { i });
        let tls = self.tls.is_some();
        let client = self.client.clone();
        let step = match self.sasl.as_mut() {
            Some(s) => s.start(&mech, initial.as_deref(), tls, &client),
            None => return fail(self, ss::not_enabled()),
        };
        self.auth_step(mech, step)
    }

    /// What an exchange step means for the client.
    fn auth_step(&mut self, mech: String, step: SaslStep) -> Step {
        use libmail::sasl::smtp as ss;
        let reply = ss::reply(&step);
        match step {
            SaslStep::Challenge(_) => {
                self.auth_pending = Some(mech);
                Step::Reply(reply)
            }
            SaslStep::Success { user } => {
                self.count("auth", true);
                self.auth = Some((mech, user));
                Step::Reply(reply)
            }
            failure => {
                self.count("auth", false);
                // A warning, as fail2ban's postfix-sasl filter expects.
                if let Some(l) = ss::failure_log(&self.client.label(), &mech, &failure) {
                    self.logs.push(format!("warning: {l}"));
                }
                self.error(reply)
            }
        }
    }

    /// The client's answer to a challenge (or `*` to cancel).
    fn auth_response(&mut self, mech: String, line: &str) -> Step {
        use libmail::sasl::smtp as ss;
        match ss::client_line(line, ss::RESPONSE_LIMIT) {
            ss::ClientLine::Response(r) => {
                let step = match self.sasl.as_mut() {
                    Some(s) => s.respond(r),
                    None => SaslStep::temp_fail("no authentication server"),
                };
                self.auth_step(mech, step)
            }
            ss::ClientLine::Abort => {
                if let Some(s) = self.sasl.as_mut() {
                    s.abort();
                }
                self.count("auth", false);
                self.logs.push(format!(
                    "warning: {}",
                    ss::abort_log(&self.client.label(), &mech)
                ));
                self.error(ss::aborted())
            }
            ss::ClientLine::TooLong => {
                if let Some(s) = self.sasl.as_mut() {
                    s.abort();
                }
                self.count("auth", false);
                self.error(ss::response_too_long())
            }
        }
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake completed (after STARTTLS, or before the
    /// greeting in wrapper mode). Everything learned in plaintext is
    /// forgotten (RFC 3207 4.2): HELO, the transaction, a pending defer.
    pub fn tls_started(&mut self, summary: Summary) {
        self.reset();
        self.helo = None;
        self.esmtp = false;
        self.pending = None;
        self.auth = None;
        self.auth_pending = None;
        if self.set.tls.loglevel >= 1 {
            let trust = if summary.peer_fingerprint.is_some() {
                "Untrusted"
            } else {
                "Anonymous"
            };
            self.logs.push(format!(
                "{trust} TLS connection established from {}: {}",
                self.client.label(),
                summary.describe()
            ));
        }
        self.tls = Some(summary);
    }

    /// The client certificate's SHA-256 fingerprint, when one was
    /// presented (for `permit_tls_clientcerts`).
    pub fn peer_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref()?.peer_fingerprint.as_deref()
    }

    /// `530 5.7.0 Must issue a STARTTLS command first` under `encrypt`
    /// before the handshake.
    fn needs_tls(&mut self, verb: &str) -> Option<Step> {
        if self.set.tls.level == Level::Encrypt && self.tls.is_none() {
            self.count(verb, false);
            return Some(self.error(pl(530, "5.7.0", "Must issue a STARTTLS command first")));
        }
        None
    }

    fn starttls(&mut self) -> Step {
        self.last_verb = "STARTTLS".into();
        if self.tls.is_some() {
            self.count("starttls", false);
            return self.error(pl(554, "5.5.1", "Error: TLS already active"));
        }
        let discarded = self
            .set
            .discard_ehlo
            .iter()
            .any(|d| d.eq_ignore_ascii_case("STARTTLS"));
        if self.set.tls.level == Level::None || discarded {
            self.count("starttls", false);
            return self.error(pl(502, "5.5.1", "Error: command not implemented"));
        }
        if !self.set.tls.available {
            self.count("starttls", false);
            return self.error(pl(454, "4.7.0", "TLS not available due to local problem"));
        }
        if self.too_many_new_tls() {
            self.count("starttls", false);
            let r = pl(
                454,
                "4.7.0",
                &format!(
                    "Error: too many new TLS sessions from {}",
                    self.client.label()
                ),
            );
            return self.error(r);
        }
        self.count("starttls", true);
        Step::StartTls(pl(220, "2.0.0", "Ready to start TLS"))
    }

    /// `ESMTP` or `SMTP`, with RFC 3848's `S` for TLS (ESMTP only), as
    /// the Received: header writes the protocol.
    fn received_proto(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (true, true, true) => "ESMTPSA",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, false, false) => "ESMTP",
            (false, ..) => "SMTP",
        }
    }

    /// Log lines produced since the last call.
    pub fn take_logs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.logs)
    }

    /// Whether the client may pipeline (it said EHLO; PIPELINING is
    /// always offered).
    pub fn may_pipeline(&self) -> bool {
        self.esmtp
    }

    /// The shell saw commands sent ahead of a reply without PIPELINING.
    pub fn note_pipelining_violation(&mut self) {
        self.pipelining_violation = true;
    }

    /// How long to wait before the reply: `sleep N` of the restrictions,
    /// or `smtpd_error_sleep_time` past `smtpd_soft_error_limit`.
    pub fn take_pause(&mut self) -> Option<Duration> {
        let err = (self.errors > self.set.soft_error_limit).then_some(self.set.error_sleep);
        match (self.pause.take(), err) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Keeps what a verdict says besides its reply: log lines, a pause.
    fn absorb(&mut self, v: &Verdict) {
        let id = self.tx.as_ref().and_then(|t| t.queue_id.clone());
        let proto = if self.esmtp { "ESMTP" } else { "SMTP" };
        for l in &v.log {
            let line = l.line(id.as_deref(), &self.last_verb, Some(proto));
            self.logs.push(line);
        }
        if !self.gate.delay_reject() {
            self.pending = v.pending_defer.clone();
        }
        if let Some(d) = v.sleep {
            self.pause = Some(self.pause.map_or(d, |p| p.max(d)));
        }
    }

    fn view<'a>(&'a self, recipient: Option<&'a str>) -> Facts<'a> {
        let t = self.tx.as_ref();
        Facts {
            helo: self.helo.as_deref(),
            sender: t.map(|t| t.sender.as_str()),
            recipient,
            rcpt_count: t.map_or(0, |t| t.rcpts.len()),
            pipelining_violation: self.pipelining_violation,
            smtputf8: t.is_some_and(|t| t.params.smtputf8),
            discarded: t.is_some_and(|t| t.verdict.discard.is_some()),
            held: t.is_some_and(|t| t.verdict.hold.is_some()),
            pending_defer: self.pending.as_ref(),
            tls: self.tls.is_some(),
            sasl_username: self.auth.as_ref().map(|(_, u)| u.as_str()),
            sasl_method: self.auth.as_ref().map(|(m, _)| m.as_str()),
            queue_id: t.and_then(|t| t.queue_id.as_deref()),
            esmtp: self.esmtp,
            client_port: Some(self.client.port),
            server_addr: self.client.server.map(|a| a.ip()),
            server_port: self.client.server.map(|a| a.port()),
            size: t.map_or(0, |t| t.size.max(t.params.size.unwrap_or(0))),
            tls_protocol: self.tls.as_ref().map(|s| s.protocol.as_str()),
            tls_cipher: self.tls.as_ref().map(|s| s.cipher.as_str()),
            tls_keysize: self.tls.as_ref().map_or(0, |s| u32::from(s.bits)),
            ..Facts::new(
                self.client.addr,
                &self.client.name,
                &self.client.reverse_name,
            )
        }
    }

    /// The greeting: `220 banner`, or a refusal by the client
    /// restrictions when they are not delayed.
    pub fn greeting(&mut self) -> Step {
        // First, even before the TLS line of a wrapper-mode handshake.
        self.logs
            .insert(0, format!("connect from {}", self.client.label()));
        if let Some(l) = self.limits.clone() {
            let (guard, count, rate) = l.connect(self.client.addr);
            self.connected = Some(guard);
            let over = if l.limits.connection_count > 0 && count > l.limits.connection_count {
                Some(("Connection concurrency", count))
            } else if l.limits.connection_rate > 0 && rate > l.limits.connection_rate {
                Some(("Connection rate", rate))
            } else {
                None
            };
            if let Some((what, n)) = over {
                self.limit_warning(what, n);
                return Step::Close(Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Error: too many connections from {}",
                        self.set.myhostname, self.client.addr
                    ),
                ));
            }
        }
        if !self.gate.delay_reject() {
            let v = self.gate.ask(Ask::Connect, &self.view(None));
            self.absorb(&v);
            if let Some(r) = v.reply {
                self.log_reject("CONNECT", &r, None);
                // Postfix answers every command with the refusal; closing
                // at once is what a 421/521 asks for.
                if v.hangup {
                    return Step::Close(r);
                }
                return Step::Close(Reply::new(
                    554,
                    "",
                    format!("{} ESMTP not accepting connections", self.set.myhostname),
                ));
            }
        }
        Step::Reply(Reply::new(220, "", &self.set.banner))
    }

    fn count(&mut self, verb: &str, ok: bool) {
        if let Some((_, c)) = self.counts.iter_mut().find(|(v, _)| *v == verb) {
            c.total += 1;
            if ok {
                c.ok += 1;
            }
        }
    }

    /// `disconnect from name[addr] ehlo=1 mail=1 rcpt=0/1 ... commands=N/M`.
    pub fn disconnect_line(&self) -> String {
        let mut s = format!("disconnect from {}", self.client.label());
        let (mut ok, mut total) = (0, 0);
        for (v, c) in &self.counts {
            if c.total > 0 {
                if c.ok == c.total {
                    s.push_str(&format!(" {v}={}", c.total));
                } else {
                    s.push_str(&format!(" {v}={}/{}", c.ok, c.total));
                }
                ok += c.ok;
                total += c.total;
            }
        }
        if self.unknown.total > 0 {
            s.push_str(&format!(
                " unknown={}/{}",
                self.unknown.ok, self.unknown.total
            ));
            total += self.unknown.total;
        }
        if ok == total {
            s.push_str(&format!(" commands={total}"));
        } else {
            s.push_str(&format!(" commands={ok}/{total}"));
        }
        s
    }

    /// `NOQUEUE: reject: RCPT from name[addr]: 554 5.7.1 ...; from=<s> to=<r> proto=ESMTP helo=<h>`.
    fn log_reject(&mut self, stage: &str, r: &Reply, rcpt: Option<&str>) {
        let id = self
            .tx
            .as_ref()
            .and_then(|t| t.queue_id.clone())
            .unwrap_or_else(|| "NOQUEUE".into());
        let mut line = format!(
            "{id}: reject: {stage} from {}: {}",
            self.client.label(),
            r.log_form()
        );
        if let Some(t) = &self.tx {
            line.push_str(&format!("; from=<{}>", t.sender));
        } else {
            line.push(';');
        }
        if let Some(rc) = rcpt {
            line.push_str(&format!(" to=<{rc}>"));
        }
        line.push_str(&format!(
            " proto={} helo=<{}>",
            if self.esmtp { "ESMTP" } else { "SMTP" },
            self.helo.as_deref().unwrap_or("")
        ));
        self.logs.push(line);
    }

    /// An error reply: counted; past the hard limit the session ends.
    fn error(&mut self, r: Reply) -> Step {
        let r = if self.set.soft_bounce {
            r.softened()
        } else {
            r
        };
        self.errors += 1;
        if self.errors >= self.set.hard_error_limit {
            self.logs.push(format!(
                "too many errors after {} from {}",
                self.last_verb,
                self.client.label()
            ));
            return Step::Close(Reply::new(
                421,
                "4.7.0",
                format!("{} Error: too many errors", self.set.myhostname),
            ));
        }
        Step::Reply(r)
    }

    fn junk(&mut self) -> bool {
        self.junk += 1;
        self.junk > self.set.junk_command_limit
    }

    /// One command line (without CRLF; bytes that are not UTF-8 were
    /// replaced by the shell).
    pub fn command(&mut self, line: &str) -> Step {
        // A line answering an AUTH challenge is not a command.
        if let Some(mech) = self.auth_pending.take() {
            return self.auth_response(mech, line);
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(r) => {
                let verb = line
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                self.last_verb = verb.to_ascii_uppercase();
                self.count(&verb, false);
                return self.error(r);
            }
        };
        match cmd {
            Command::Helo(h) => self.helo(h, false),
            Command::Ehlo(h) => self.helo(h, true),
            Command::Mail(a, p) => self.mail(a, p),
            Command::Rcpt(a, p) => self.rcpt(a, p),
            Command::Data => self.data(),
            Command::Bdat(n, last) => self.bdat(n, last),
            Command::Rset => {
                self.last_verb = "RSET".into();
                self.reset();
                self.count("rset", true);
                if self.junk() {
                    return self.error(pl(250, "2.0.0", "Ok"));
                }
                Step::Reply(pl(250, "2.0.0", "Ok"))
            }
            Command::Noop => {
                self.last_verb = "NOOP".into();
                self.count("noop", true);
                if self.junk() {
                    return self.error(pl(250, "2.0.0", "Ok"));
                }
                Step::Reply(pl(250, "2.0.0", "Ok"))
            }
            Command::Vrfy(a) => {
                self.last_verb = "VRFY".into();
                if let Some(s) = self.needs_tls("vrfy") {
                    return s;
                }
                if self.set.disable_vrfy {
                    self.count("vrfy", false);
                    return self.error(pl(502, "5.5.1", "VRFY command is disabled"));
                }
                self.count("vrfy", true);
                let a = a.trim_matches(['<', '>']).to_string();
                if self.junk() {
                    return self.error(pl(252, "2.0.0", &a));
                }
                Step::Reply(pl(252, "2.0.0", &a))
            }
            Command::Etrn(domain) => {
                self.last_verb = "ETRN".into();
                if let Some(s) = self.needs_tls("etrn") {
                    return s;
                }
                let mut view = self.view(None);
                view.etrn_domain = Some(&domain);
                let v = self.gate.ask(Ask::Etrn, &view);
                self.absorb(&v);
                self.count("etrn", false);
                if let Some(r) = v.reply {
                    self.log_reject("ETRN", &r, None);
                    return if v.hangup {
                        Step::Close(r)
                    } else {
                        self.error(r)
                    };
                }
                // No fast-flush service: Postfix answers so for a site
                // not in fast_flush_domains.
                self.error(pl(
                    459,
                    "4.7.1",
                    &format!("<{domain}>: service unavailable"),
                ))
            }
            Command::Quit => {
                self.last_verb = "QUIT".into();
                self.count("quit", true);
                Step::Close(pl(221, "2.0.0", "Bye"))
            }
            Command::StartTls => self.starttls(),
            Command::Auth(mech, initial) => self.auth_cmd(mech, initial),
            Command::Unknown(v) => {
                self.last_verb = "UNKNOWN".into();
                self.unknown.total += 1;
                // Web and proxy commands: someone is abusing the port.
                if matches!(v.as_str(), "GET" | "POST" | "CONNECT" | "USER") || v.contains(':') {
                    self.logs.push(format!(
                        "warning: non-SMTP command from {}: {}",
                        self.client.label(),
                        line.chars().take(100).collect::<String>()
                    ));
                    return Step::Close(pl(
                        221,
                        "2.7.0",
                        "Error: I can break rules, too. Goodbye.",
                    ));
                }
                self.error(pl(500, "5.5.2", "Error: command not recognized"))
            }
        }
    }

    fn ehlo_keywords(&mut self) -> Vec<String> {
        let mut k = vec!["PIPELINING".to_string()];
        k.push(if self.set.message_size_limit > 0 {
            format!("SIZE {}", self.set.message_size_limit)
        } else {
            "SIZE".into()
        });
        if !self.set.disable_vrfy {
            k.push("VRFY".into());
        }
        k.push("ETRN".into());
        if self.set.tls.level != Level::None && self.set.tls.available && self.tls.is_none() {
            k.push("STARTTLS".into());
        }
        let mechs = self.auth_mechanisms();
        if !mechs.is_empty() {
            k.push(format!("AUTH {}", mechs.join(" ")));
            if self.set.broken_sasl_clients {
                k.push(format!("AUTH={}", mechs.join(" ")));
            }
        }
        k.push("ENHANCEDSTATUSCODES".into());
        k.push("8BITMIME".into());
        k.push("DSN".into());
        if self.set.smtputf8 {
            k.push("SMTPUTF8".into());
        }
        k.push("CHUNKING".into());
        k.retain(|w| {
            let word = w.split(' ').next().unwrap_or("");
            !self
                .set
                .discard_ehlo
                .iter()
                .any(|d| d.eq_ignore_ascii_case(word))
        });
        k
    }

    fn helo(&mut self, name: String, esmtp: bool) -> Step {
        let verb = if esmtp { "ehlo" } else { "helo" };
        self.last_verb = verb.to_ascii_uppercase();
        self.reset();
        let name = name.split_whitespace().next().unwrap_or("").to_string();
        self.helo = Some(name);
        self.esmtp = esmtp;
        if !self.gate.delay_reject() {
            let v = self.gate.ask(Ask::Helo, &self.view(None));
            self.absorb(&v);
            if let Some(r) = v.reply {
                self.count(verb, false);
                self.log_reject(&self.last_verb.clone(), &r, None);
                self.helo = None;
                return if v.hangup {
                    Step::Close(r)
                } else {
                    self.error(r)
                };
            }
        }
        self.count(verb, true);
        if esmtp {
            let mut lines = vec![self.set.myhostname.clone()];
            lines.extend(self.ehlo_keywords());
            Step::Reply(Reply::multi(250, lines))
        } else {
            Step::Reply(Reply::new(250, "", &self.set.myhostname))
        }
    }

    fn reset(&mut self) {
        if let Some(t) = self.tx.take() {
            if t.queue_id.is_some() {
                self.queue.abort();
            }
        }
        self.in_bdat = false;
        self.bdat_failed = None;
    }

    fn mail(&mut self, sender: String, params: MailParams) -> Step {
        self.last_verb = "MAIL".into();
        if let Some(s) = self.needs_tls("mail") {
            return s;
        }
        if self.set.helo_required && self.helo.is_none() {
            self.count("mail", false);
            return self.error(pl(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            self.count("mail", false);
            return self.error(pl(503, "5.5.1", "Error: nested MAIL command"));
        }
        if params.smtputf8 && !self.set.smtputf8 {
            self.count("mail", false);
            return self.error(pl(555, "5.5.4", "Unsupported option: SMTPUTF8"));
        }
        if let Some(sz) = params.size {
            if self.set.message_size_limit > 0 && sz > self.set.message_size_limit {
                self.count("mail", false);
                return self.error(pl(552, "5.3.4", "Message size exceeds fixed limit"));
            }
        }
        if let Some(n) = self.over_limit(Event::Mail) {
            self.limit_warning("Message delivery request rate", n);
            self.count("mail", false);
            let r = pl(
                450,
                "4.7.1",
                &format!("Error: too much mail from {}", self.client.addr),
            );
            return self.error(r);
        }
        self.tx = Some(Transaction {
            sender,
            params,
            ..Default::default()
        });
        if !self.gate.delay_reject() {
            let v = self.gate.ask(Ask::Mail, &self.view(None));
            self.absorb(&v);
            if let Some(r) = v.reply {
                self.count("mail", false);
                self.log_reject("MAIL", &r, None);
                self.tx = None;
                return if v.hangup {
                    Step::Close(r)
                } else {
                    self.error(r)
                };
            }
            self.merge(v);
        }
        self.count("mail", true);
        Step::Reply(pl(250, "2.1.0", "Ok"))
    }

    /// Keeps the side effects of a verdict for the whole message.
    fn merge(&mut self, v: Verdict) {
        let Some(t) = self.tx.as_mut() else {
            return;
        };
        let m = &mut t.verdict;
        if v.hold.is_some() {
            m.hold = v.hold;
        }
        if v.discard.is_some() {
            m.discard = v.discard;
        }
        if v.filter.is_some() {
            m.filter = v.filter;
        }
        if v.redirect.is_some() {
            m.redirect = v.redirect;
        }
        m.bcc.extend(v.bcc);
        m.prepend.extend(v.prepend);
    }

    fn rcpt(&mut self, rcpt: String, params: RcptParams) -> Step {
        self.last_verb = "RCPT".into();
        if let Some(s) = self.needs_tls("rcpt") {
            return s;
        }
        if self.tx.is_none() {
            self.count("rcpt", false);
            return self.error(pl(503, "5.5.1", "Error: need MAIL command"));
        }
        if self
            .tx
            .as_ref()
            .is_some_and(|t| t.rcpts.len() >= self.set.recipient_limit)
        {
            self.count("rcpt", false);
            return self.error(pl(452, "4.5.3", "Error: too many recipients"));
        }
        if let Some(n) = self.over_limit(Event::Rcpt) {
            self.limit_warning("Recipient address rate", n);
            self.count("rcpt", false);
            let r = pl(
                450,
                "4.7.1",
                &format!("Error: too many recipients from {}", self.client.addr),
            );
            return self.error(r);
        }
        let v = self.gate.ask(Ask::Rcpt, &self.view(Some(&rcpt)));
        self.absorb(&v);
        if let Some(r) = v.reply {
            self.count("rcpt", false);
            self.log_reject("RCPT", &r, Some(&rcpt));
            return if v.hangup {
                Step::Close(r)
            } else {
                self.error(r)
            };
        }
        self.merge(v);
        // The queue file is opened at the first accepted recipient.
        let need_open = self.tx.as_ref().is_some_and(|t| t.queue_id.is_none());
        if need_open {
            match self.queue.open() {
                Ok(id) => {
                    let mut line = format!("{id}: client={}", self.client.label());
                    if let Some((m, u)) = &self.auth {
                        line.push_str(&format!(", sasl_method={m}, sasl_username={u}"));
                    }
                    let _ = &mut line;
                    self.logs.push(line);
                    if let Some(t) = self.tx.as_mut() {
                        t.queue_id = Some(id);
                    }
                }
                Err(r) => {
                    self.count("rcpt", false);
                    self.log_reject("RCPT", &r, Some(&rcpt));
                    return self.error(r);
                }
            }
        }
        if let Some(t) = self.tx.as_mut() {
            t.rcpts.push((rcpt, params));
        }
        self.count("rcpt", true);
        Step::Reply(pl(250, "2.1.5", "Ok"))
    }

    /// Checks before content may come (DATA and the first BDAT).
    fn before_content(&mut self, verb: &str) -> Result<(), Step> {
        let Some(t) = self.tx.as_ref() else {
            self.count(verb, false);
            return Err(self.error(pl(503, "5.5.1", "Error: need RCPT command")));
        };
        if t.rcpts.is_empty() {
            self.count(verb, false);
            return Err(self.error(pl(554, "5.5.1", "Error: no valid recipients")));
        }
        let v = self.gate.ask(Ask::Data, &self.view(None));
        self.absorb(&v);
        if let Some(r) = v.reply {
            self.count(verb, false);
            self.log_reject(&verb.to_ascii_uppercase(), &r, None);
            return Err(if v.hangup {
                Step::Close(r)
            } else {
                self.error(r)
            });
        }
        self.merge(v);
        // The envelope, then smtpd's Received: header.
        let env = self.envelope();
        let received = self.received();
        let t = self.tx.as_mut().expect("checked");
        let sent = self.queue.envelope(&env);
        if let Err(r) = sent {
            t.failed = Some(r);
        } else {
            for h in received {
                t.pending.extend_from_slice(h.as_bytes());
                t.pending.push(b'\n');
            }
        }
        Ok(())
    }

    fn envelope(&self) -> Attrs {
        let t = self.tx.as_ref().expect("in a transaction");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut a = Attrs::new()
            .with("origin", "smtpd")
            .with(
                "arrival",
                format!("{}.{:06}", now.as_secs(), now.subsec_micros()),
            )
            .with("sender", &t.sender);
        if let Some(e) = &t.params.envid {
            a.push("envid", e);
        }
        if t.params.ret != 0 {
            a.push("ret", t.params.ret);
        }
        if t.params.smtputf8 {
            a.push("smtputf8", "yes");
        }
        if let Some(b) = t.params.body {
            a.push(
                "body",
                if b == Body::EightBitMime {
                    "8BITMIME"
                } else {
                    "7BIT"
                },
            );
        }
        let mut flags = libmail::ipc::cleanup::FLAG_BOUNCE;
        if t.verdict.hold.is_some() {
            flags |= libmail::ipc::cleanup::FLAG_HOLD;
        }
        if t.verdict.discard.is_some() {
            flags |= libmail::ipc::cleanup::FLAG_DISCARD;
        }
        a.push("flags", flags);
        a.push("attr.rewrite_context", "remote");
        a.push("attr.client_name", &self.client.name);
        a.push("attr.reverse_client_name", &self.client.reverse_name);
        a.push("attr.client_address", self.client.addr);
        a.push("attr.client_port", self.client.port);
        if let Some(h) = &self.helo {
            a.push("attr.helo_name", h);
        }
        a.push("attr.protocol", if self.esmtp { "ESMTP" } else { "SMTP" });
        if let Some((m, u)) = &self.auth {
            a.push("attr.sasl_method", m);
            a.push("attr.sasl_username", u);
        }
        let rcpts: Vec<(String, RcptParams)> = match &t.verdict.redirect {
            Some(r) => vec![(r.clone(), RcptParams::default())],
            None => t.rcpts.clone(),
        };
        for (r, p) in rcpts.iter() {
            a.push_recipient(r, None, p.notify, p.orcpt.as_deref());
        }
        for b in &t.verdict.bcc {
            a.push_recipient(b, None, 0, None);
        }
        a
    }

    /// smtpd's `Received:` header (folded as Postfix folds it), after any
    /// PREPEND headers of the restrictions.
    fn received(&self) -> Vec<String> {
        let t = self.tx.as_ref().expect("in a transaction");
        let mut out = t.verdict.prepend.clone();
        let helo = self.helo.as_deref().unwrap_or(&self.client.name);
        out.push(format!(
            "Received: from {helo} ({} [{}])",
            self.client.name,
            self.client.received_addr()
        ));
        if let (Some(s), true) = (&self.tls, self.set.tls.received_header) {
            let mut using = format!(
                "\t(using {} with cipher {} ({}/{} bits)",
                s.protocol, s.cipher, s.bits, s.bits
            );
            if let Some(k) = &s.key_exchange {
                out.push(using);
                using = format!("\t key-exchange {k}");
            }
            using.push(')');
            out.push(using);
            if !self.set.tls.ask_ccert {
                out.push("\t(No client certificate requested)".into());
            } else if s.peer_fingerprint.is_none() {
                out.push("\t(Client did not present a certificate)".into());
            }
        }
        if let (Some((_, u)), true) = (&self.auth, self.set.sasl_authenticated_header) {
            out.push(format!("\t(Authenticated sender: {u})"));
        }
        let id = t.queue_id.as_deref().unwrap_or("");
        let proto = self.received_proto();
        let date = crate::cleanup::headers::mail_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        if t.rcpts.len() == 1 {
            out.push(format!(
                "\tby {} ({}) with {proto} id {id}",
                self.set.myhostname, self.set.mail_name
            ));
            out.push(format!("\tfor <{}>; {date}", t.rcpts[0].0));
        } else {
            out.push(format!(
                "\tby {} ({}) with {proto} id {id};",
                self.set.myhostname, self.set.mail_name
            ));
            out.push(format!("\t{date}"));
        }
        out
    }

    fn data(&mut self) -> Step {
        self.last_verb = "DATA".into();
        if let Some(s) = self.needs_tls("data") {
            return s;
        }
        if self.in_bdat {
            self.count("data", false);
            return self.error(pl(503, "5.5.1", "Error: DATA after BDAT"));
        }
        if let Err(s) = self.before_content("data") {
            return s;
        }
        Step::Data(pl(354, "", "End data with <CR><LF>.<CR><LF>"))
    }

    /// One content line (dot-unstuffed, without its line end).
    pub fn data_line(&mut self, line: &[u8]) {
        self.content(line, true);
    }

    /// Part of a content line longer than the shell's buffer; the rest
    /// follows.
    pub fn data_piece(&mut self, piece: &[u8]) {
        self.content(piece, false);
    }

    fn content(&mut self, bytes: &[u8], eol: bool) {
        let limit = self.set.message_size_limit;
        let Some(t) = self.tx.as_mut() else {
            return;
        };
        t.size += bytes.len() as u64 + if eol { 2 } else { 0 };
        if t.failed.is_some() || t.too_big {
            return;
        }
        if limit > 0 && t.size > limit {
            t.too_big = true;
            return;
        }
        t.pending.extend_from_slice(bytes);
        if eol {
            t.pending.push(b'\n');
        }
    }

    /// Whether enough content has gathered to go to cleanup now (the
    /// shell then calls [`flush`](Self::flush) where blocking is allowed).
    pub fn should_flush(&self) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|t| t.pending.len() >= FLUSH_AT && t.failed.is_none())
    }

    /// Hands the gathered content to cleanup.
    pub fn flush(&mut self) {
        let Some(t) = self.tx.as_mut() else {
            return;
        };
        if t.pending.is_empty() || t.failed.is_some() {
            return;
        }
        let chunk = std::mem::take(&mut t.pending);
        if let Err(r) = self.queue.content(&chunk) {
            if let Some(t) = self.tx.as_mut() {
                t.failed = Some(r);
            }
        }
    }

    /// Raw BDAT content: CR LF becomes LF (cleanup's line end); no
    /// dot-stuffing in BDAT.
    pub fn bdat_bytes(&mut self, chunk: &[u8]) {
        if self.bdat_failed.is_some() {
            return;
        }
        let limit = self.set.message_size_limit;
        let reject_bare_lf = self.reject_bare_lf;
        let Some(t) = self.tx.as_mut() else {
            return;
        };
        t.size += chunk.len() as u64;
        if t.failed.is_some() || t.too_big {
            return;
        }
        if limit > 0 && t.size > limit {
            t.too_big = true;
            return;
        }
        for &b in chunk {
            let after_cr = t.cr;
            if t.cr {
                t.cr = false;
                if b != b'\n' {
                    t.pending.push(b'\r');
                }
            }
            if b == b'\n' && !after_cr && reject_bare_lf {
                t.bare_lf = true;
            }
            if b == b'\r' {
                t.cr = true;
                continue;
            }
            t.pending.push(b);
        }
    }

    /// The end of DATA (or of the last BDAT): the verdict.
    pub fn data_end(&mut self) -> Reply {
        let verb = if self.in_bdat { "bdat" } else { "data" };
        let Some(mut t) = self.tx.take() else {
            return pl(503, "5.5.1", "Error: need MAIL command");
        };
        self.in_bdat = false;
        let size = t.size;
        let result = if t.too_big {
            self.queue.abort();
            Err(pl(552, "5.3.4", "Error: message file too big"))
        } else if let Some(r) = t.failed.take() {
            self.queue.abort();
            Err(r)
        } else if t.bare_lf {
            // Not queued: closing the cleanup connection unfinished
            // removes the file.
            self.queue.abort();
            Err(self.bare_lf_reply())
        } else {
            if t.cr {
                t.pending.push(b'\r');
            }
            if !t.pending.is_empty() && t.pending.last() != Some(&b'\n') {
                t.pending.push(b'\n');
            }
            let chunk = std::mem::take(&mut t.pending);
            self.queue
                .content(&chunk)
                .and_then(|()| self.queue.finish())
        };
        match result {
            Ok(id) => {
                self.count(verb, true);
                self.errors = 0;
                if verb == "bdat" {
                    pl(250, "2.0.0", &format!("Ok: {size} bytes queued as {id}"))
                } else {
                    pl(250, "2.0.0", &format!("Ok: queued as {id}"))
                }
            }
            Err(r) => {
                self.count(verb, false);
                self.tx = Some(t);
                let r = if self.set.soft_bounce {
                    r.softened()
                } else {
                    r
                };
                self.log_reject("END-OF-MESSAGE", &r, None);
                self.tx = None;
                self.errors += 1;
                r
            }
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Step {
        self.last_verb = "BDAT".into();
        if !self.in_bdat {
            if let Err(s) = self.before_content("bdat") {
                // The chunk still comes: the shell reads and drops it.
                self.bdat_failed = Some(match &s {
                    Step::Reply(r) | Step::Close(r) => r.clone(),
                    _ => pl(503, "5.5.1", "Error: need RCPT command"),
                });
                return Step::Bdat { size, last };
            }
            self.in_bdat = true;
        }
        Step::Bdat { size, last }
    }

    /// After a chunk: 250 for a middle chunk, the verdict for the last.
    pub fn bdat_end(&mut self, size: u64, last: bool) -> Step {
        if let Some(r) = self.bdat_failed.clone() {
            if last {
                self.bdat_failed = None;
            }
            return Step::Reply(r);
        }
        if last {
            let r = self.data_end();
            return Step::Reply(r);
        }
        Step::Reply(pl(250, "2.0.0", &format!("Ok: {size} bytes")))
    }

    /// The connection ended without QUIT.
    pub fn lost(&mut self) {
        if self.tx.as_ref().is_some_and(|t| t.queue_id.is_some()) {
            self.queue.abort();
        }
        self.tx = None;
    }
}
