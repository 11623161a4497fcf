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
//! * `XCLIENT` (clients in `smtpd_authorized_xclient_hosts`): the client's
//!   name, address, port, HELO name, protocol and login are replaced for
//!   the rest of the session, which starts over at the `220` greeting
//!   ([`Session::command`]); `XFORWARD` (`smtpd_authorized_xforward_hosts`):
//!   the up-stream client of the next message, for its log line and the
//!   attributes cleanup records. Both with Postfix's replies.
//! * [`Controls`]: `smtpd_forbidden_commands`, `smtpd_reject_footer`,
//!   `smtpd_discard_ehlo_keyword_address_maps`,
//!   `smtpd_recipient_overshoot_limit`, `smtpd_forbid_unauth_pipelining`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use libmail::address::networks::NetworkList;
use libmail::ipc::Attrs;
use libmail::smtp::command::{self, Body, Command, MailParams, RcptParams};
use libmail::smtp::Reply;
use libmail::table::search::{Key, Maps};
use libmail::table::TableError;
use libmail::tls::{Level, Summary};

use super::anvil::{ClientLimits, Connected, Event};
use super::restrict::syntax;

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
    /// Whether [`ask`](Self::ask) may wait on the network (DNS, a policy
    /// server): the shell then asks where blocking is allowed.
    fn may_block(&self) -> bool {
        true
    }
    /// Whether the end-of-data stage may still change the recipients
    /// (REDIRECT, BCC): cleanup then writes them after the content.
    fn late_recipients(&self) -> bool {
        false
    }
}

/// Where an accepted message goes (cleanup). Blocking calls: the shell
/// runs them where blocking is allowed.
pub trait Queue: Send {
    /// Opens a queue file; its queue ID.
    fn open(&mut self) -> Result<String, Reply>;
    fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply>;
    fn content(&mut self, bytes: &[u8]) -> Result<(), Reply>;
    /// Ends the content: the verdict follows. `Some(fd)`: it will be
    /// readable on that descriptor, so that an asynchronous shell can
    /// wait there before [`finish`](Self::finish) reads it; `None`:
    /// `finish` does all the work.
    fn end(&mut self) -> Result<Option<RawFd>, Reply> {
        Ok(None)
    }
    /// The verdict: the queue ID once the file is durable.
    fn finish(&mut self) -> Result<String, Reply>;
    /// Drops the message being received (cleanup withdraws its file).
    fn abort(&mut self);
    /// What `smtpd_end_of_data_restrictions` decided after the content
    /// (HOLD, DISCARD, FILTER, REDIRECT, BCC), before [`end`](Self::end).
    /// Stand-alone mode (maildrop) has no such flags: it ignores them, as
    /// it ignores those of the envelope.
    fn late(&mut self, _late: &libmail::ipc::cleanup::Late) -> Result<(), Reply> {
        Ok(())
    }
    /// Whether [`open`](Self::open) would answer now, without waiting.
    fn ready(&mut self) -> bool {
        false
    }
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
    /// `None` once XCLIENT said `ADDR=[UNAVAILABLE]` (shown `unknown`).
    pub addr: Option<IpAddr>,
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
        format!("{}[{}]", self.name, self.addr_text())
    }

    /// The address as logs, replies and policy requests show it:
    /// `unknown` when XCLIENT made it unavailable, as in Postfix.
    pub fn addr_text(&self) -> String {
        libmail::address::networks::addr_or_unknown(self.addr)
    }

    /// The address as the Received: header writes it.
    fn received_addr(&self) -> String {
        match self.addr {
            Some(IpAddr::V4(a)) => a.to_string(),
            Some(IpAddr::V6(a)) => format!("IPv6:{a}"),
            None => "unknown".to_string(),
        }
    }

    /// The key of this client's counters in the anvil. Postfix counts
    /// every client of unknown address under the one key `unknown`; the
    /// unspecified address, never a connecting client's, is that key.
    fn anvil_addr(&self) -> IpAddr {
        self.addr
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
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
    /// `content_filter`: `transport:nexthop` for every message this
    /// service receives (an access table's FILTER wins), empty for none.
    pub content_filter: String,
    /// XCLIENT, XFORWARD and the smaller per-session controls.
    pub controls: Controls,
}

impl Settings {
    /// Settings for tests and fuzz targets: Postfix's defaults where they
    /// matter, small limits; change fields with `..Settings::example(..)`.
    #[doc(hidden)]
    pub fn example(myhostname: &str) -> Settings {
        Settings {
            myhostname: myhostname.into(),
            mail_name: "Postfix".into(),
            banner: format!("{myhostname} ESMTP Postfix"),
            message_size_limit: 1000,
            recipient_limit: 3,
            soft_error_limit: 10,
            hard_error_limit: 20,
            error_sleep: Duration::from_secs(1),
            junk_command_limit: 100,
            helo_required: false,
            disable_vrfy: false,
            smtputf8: true,
            discard_ehlo: vec![],
            soft_bounce: false,
            tls: TlsPolicy::default(),
            auth_tls_only: false,
            broken_sasl_clients: false,
            sasl_authenticated_header: false,
            bare_lf: BareLf::Normalize,
            bare_lf_reject_code: 550,
            content_filter: String::new(),
            controls: Controls::default(),
        }
    }
}

/// Something shared between sessions that has no useful `Debug` form
/// (tables, lists).
pub struct Shared<T>(pub Arc<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared(..)")
    }
}

/// The settings of XCLIENT, XFORWARD and a few smaller controls.
/// [`Controls::default`] is Postfix's behaviour with the parameters
/// unset, except that every recipient past `smtpd_recipient_limit` counts
/// as an error (an overshoot limit of 0).
#[derive(Debug, Clone)]
pub struct Controls {
    /// `smtpd_authorized_xclient_hosts` (None: nobody).
    pub xclient_hosts: Option<Shared<NetworkList>>,
    /// `smtpd_authorized_xforward_hosts` (None: nobody).
    pub xforward_hosts: Option<Shared<NetworkList>>,
    /// `smtpd_forbidden_commands`: verbs that end the session (besides
    /// anything shaped like a message header).
    pub forbidden_commands: Shared<CommandList>,
    /// `smtpd_reject_footer`, unexpanded (empty: none).
    pub reject_footer: String,
    /// `smtpd_reject_footer_maps`: a footer template per complete reply
    /// (`550 5.7.1 <a@b>: Relay access denied`), over `reject_footer`.
    pub reject_footer_maps: Option<Shared<Maps>>,
    /// `smtpd_discard_ehlo_keyword_address_maps`.
    pub discard_ehlo_maps: Option<Shared<Maps>>,
    /// `smtpd_recipient_overshoot_limit`: recipients past the limit that
    /// are refused without counting as errors.
    pub recipient_overshoot_limit: usize,
    /// `smtpd_forbid_unauth_pipelining`.
    pub forbid_unauth_pipelining: bool,
    /// `strict_rfc821_envelopes`: MAIL and RCPT addresses in `<>` only.
    pub strict_rfc821_envelopes: bool,
    /// `receive_override_options`' bits for cleanup.
    pub cleanup_flags: u32,
    /// `inet_protocols` has IPv6: XCLIENT and XFORWARD take IPv6
    /// addresses (Postfix refuses them otherwise).
    pub ipv6: bool,
}

/// Postfix's default `smtpd_forbidden_commands`.
pub const DEFAULT_FORBIDDEN_COMMANDS: &str = "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}";

impl Controls {
    /// True when deciding who the client is (XCLIENT and XFORWARD
    /// rights, the EHLO keywords it is not offered) may block: one of
    /// those lists names a table whose lookups may.
    pub fn may_block(&self) -> bool {
        [&self.xclient_hosts, &self.xforward_hosts]
            .into_iter()
            .flatten()
            .any(|l| l.0.may_block())
            || self
                .discard_ehlo_maps
                .as_ref()
                .is_some_and(|m| m.0.may_block())
    }
}

impl Default for Controls {
    fn default() -> Controls {
        Controls {
            xclient_hosts: None,
            xforward_hosts: None,
            forbidden_commands: Shared(Arc::new(
                CommandList::parse("smtpd_forbidden_commands", DEFAULT_FORBIDDEN_COMMANDS)
                    .expect("the default list opens"),
            )),
            reject_footer: String::new(),
            reject_footer_maps: None,
            discard_ehlo_maps: None,
            recipient_overshoot_limit: 0,
            forbid_unauth_pipelining: false,
            strict_rfc821_envelopes: false,
            cleanup_flags: 0,
            ipv6: false,
        }
    }
}

/// A list of command verbs (`smtpd_forbidden_commands`): words compared
/// without regard to case, `type:table` lookups of the verb as sent,
/// `!` to negate; the first item that matches decides.
pub struct CommandList {
    items: Vec<(bool, CommandItem)>,
}

enum CommandItem {
    Word(String),
    Table(Maps),
}

/// Most items in a command list.
const MAX_COMMAND_ITEMS: usize = 1000;

impl CommandList {
    /// The list in `value` (parameter `name`, for messages).
    pub fn parse(name: &str, value: &str) -> Result<CommandList, TableError> {
        let mut items = Vec::new();
        for token in libmail::config::params::split_list(value) {
            if items.len() >= MAX_COMMAND_ITEMS {
                return Err(TableError::Config(format!(
                    "{name}: more than {MAX_COMMAND_ITEMS} items"
                )));
            }
            let mut neg = false;
            let mut item = token;
            while let Some(rest) = item.strip_prefix('!') {
                neg = !neg;
                item = rest;
            }
            if item.is_empty() {
                return Err(TableError::Config(format!("{name}: no pattern after '!'")));
            }
            if item.contains(':') {
                let maps = Maps::open(name, item, &Default::default())?;
                items.push((neg, CommandItem::Table(maps)));
            } else {
                items.push((neg, CommandItem::Word(item.to_ascii_uppercase())));
            }
        }
        Ok(CommandList { items })
    }

    /// Whether `verb` (as the client sent it) is in the list.
    pub fn matches(&self, verb: &str) -> Result<bool, TableError> {
        for (neg, item) in &self.items {
            let hit = match item {
                CommandItem::Word(w) => w.eq_ignore_ascii_case(verb),
                CommandItem::Table(m) => m
                    .find_first(&[Key {
                        text: verb.to_string(),
                        whole: true,
                    }])?
                    .is_some(),
            };
            if hit {
                return Ok(!neg);
            }
        }
        Ok(false)
    }
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

/// In the order of Postfix's `disconnect from` line.
const COUNTED: [&str; 15] = [
    "helo", "ehlo", "xclient", "xforward", "starttls", "auth", "mail", "rcpt", "data", "bdat",
    "rset", "noop", "vrfy", "etrn", "quit",
];

/// The verbs smtpd knows (the others are unknown commands).
const VERBS: [&str; 15] = [
    "HELO", "EHLO", "XCLIENT", "XFORWARD", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "BDAT",
    "RSET", "NOOP", "VRFY", "ETRN", "QUIT",
];

/// Verbs that must end a group of pipelined commands (RFC 2920), as
/// Postfix flags them.
const LAST_IN_GROUP: [&str; 5] = ["HELO", "EHLO", "DATA", "VRFY", "NOOP"];

/// The EHLO keywords that `smtpd_discard_ehlo_keywords` can name, in the
/// order Postfix logs them.
const EHLO_KEYWORDS: [&str; 15] = [
    "8BITMIME",
    "AUTH",
    "ETRN",
    "PIPELINING",
    "SIZE",
    "VERP",
    "VRFY",
    "XCLIENT",
    "XFORWARD",
    "STARTTLS",
    "ENHANCEDSTATUSCODES",
    "DSN",
    "SMTPUTF8",
    "CHUNKING",
    "SILENT-DISCARD",
];

/// XCLIENT's and XFORWARD's "the up-stream lookup failed" values.
const UNAVAILABLE: &str = "[UNAVAILABLE]";
const TEMPUNAVAIL: &str = "[TEMPUNAVAIL]";
/// Longest XCLIENT/XFORWARD attribute value, as sent.
const MAX_ATTR_VALUE: usize = 255;
/// Longest XFORWARD PROTO value.
const MAX_XFORWARD_PROTO: usize = 64;
/// Characters XCLIENT/XFORWARD replace with `?` in names that end up in
/// headers (Postfix's NEUTER_CHARACTERS).
const NEUTER: &[char] = &[' ', '<', '>', '(', ')', '\\', '"', ';', '@'];

/// What XFORWARD said about the up-stream client, for the next message.
/// `None` fields were not forwarded (or `[UNAVAILABLE]`).
#[derive(Debug, Clone, Default)]
struct Forwarded {
    name: Option<String>,
    /// Without an `IPv6:` prefix.
    addr: Option<String>,
    port: Option<String>,
    helo: Option<String>,
    proto: Option<String>,
    ident: Option<String>,
    /// `SOURCE`: `local` or `remote` (cleanup's rewriting context).
    source: Option<&'static str>,
}

impl Forwarded {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("unknown")
    }

    /// `name[addr]`, or the name alone when no address was forwarded
    /// (`orig_client=` of the log).
    fn namaddr(&self) -> String {
        match &self.addr {
            Some(a) => format!("{}[{a}]", self.name()),
            None => self.name().to_string(),
        }
    }
}

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
    /// Recipients refused past `smtpd_recipient_limit`.
    overshoot: usize,
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
    /// [`Session::data_end_start`] passed the end on (or failed to).
    ending: Option<Result<(), Reply>>,
    pipelining_violation: bool,
    pause: Option<Duration>,
    /// `421 … too many errors`, to send after the reply that reached
    /// `smtpd_hard_error_limit` (then the session ends).
    hangup: Option<Reply>,
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
    /// The client's port and the server's end as the session knows them
    /// (XCLIENT's PORT, DESTADDR and DESTPORT replace them; `None`:
    /// unknown).
    port: Option<u16>,
    dest_addr: Option<IpAddr>,
    dest_port: Option<u16>,
    /// The client, as the session knows it now, may use XCLIENT (decided
    /// at the greeting and again after each XCLIENT).
    xclient_ok: bool,
    /// The connecting client may use XFORWARD (decided at the greeting).
    xforward_ok: bool,
    /// The client restrictions refused the client at the greeting or
    /// after XCLIENT (`smtpd_delay_reject = no`): every command but QUIT
    /// is answered `503 5.7.0 Error: access denied for name[addr]`.
    access_denied: bool,
    /// The EHLO keywords not offered to this client (upper case, in
    /// [`EHLO_KEYWORDS`] order; `SILENT-DISCARD` among them: not logged).
    discard: Vec<String>,
    /// XFORWARD's attributes for the next transaction.
    forwarded: Option<Forwarded>,
    /// The shell saw input waiting behind the command it hands over next.
    input_pending: bool,
}

fn pl(code: u16, enh: &str, text: &str) -> Reply {
    Reply::new(code, enh, text)
}

/// The keywords of a discard list that smtpd knows, upper case, in
/// Postfix's order (unknown words are ignored, as Postfix does).
fn ehlo_mask<'a>(words: impl Iterator<Item = &'a str>) -> Vec<String> {
    let words: Vec<String> = words.map(str::to_ascii_uppercase).collect();
    EHLO_KEYWORDS
        .iter()
        .filter(|k| words.iter().any(|w| w == *k))
        .map(|k| k.to_string())
        .collect()
}

/// The local time as the log shows it (`Mmm dd hh:mm:ss`), for the
/// footer's `$localtime`.
fn localtime() -> String {
    let tm = libmail::date::broken_down(libmail::date::now(), true);
    format!(
        "{} {:02} {:02}:{:02}:{:02}",
        libmail::date::month_name(&tm),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `501 5.5.4 text`: XCLIENT's and XFORWARD's syntax errors.
fn bad(text: String) -> Reply {
    Reply::new(501, "5.5.4", text)
}

/// One `name=value` of XCLIENT or XFORWARD: the name as sent and the
/// value xtext-decoded (or as sent, when it is not valid xtext: Postfix
/// before 2.3 sent raw values), with unprintable characters as `?`.
fn attribute(item: &str) -> Result<(&str, String), Reply> {
    let (name, raw) = match item.split_once('=') {
        Some((n, v)) if !v.is_empty() => (n, v),
        _ => return Err(bad("Error: attribute=value expected".into())),
    };
    if raw.len() > MAX_ATTR_VALUE {
        return Err(bad("Error: attribute value too long".into()));
    }
    let bytes = xtext_bytes(raw).unwrap_or_else(|| raw.as_bytes().to_vec());
    let text = String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                '?'
            } else {
                c
            }
        })
        .collect();
    Ok((name, text))
}

/// RFC 3461 xtext (`+XX` escapes) to bytes; `None` when an escape is
/// malformed.
fn xtext_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Characters that could break a header or a log line, as `?`.
fn neuter(value: &str) -> String {
    value
        .chars()
        .map(|c| if NEUTER.contains(&c) { '?' } else { c })
        .collect()
}

/// An address as XCLIENT and XFORWARD take it: IPv4, or `IPv6:` (any
/// case) and an IPv6 address when IPv6 is on.
fn mailhost_addr(value: &str, ipv6: bool) -> Option<IpAddr> {
    match value.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            let v6 = &value[5..];
            if !ipv6 || !syntax::valid_ipv6_hostaddr(v6) {
                return None;
            }
            v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ if syntax::valid_ipv4_hostaddr(value) => value.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        _ => None,
    }
}

/// A port number: digits, at most five of them, at most 65535.
fn port_number(value: &str) -> Option<u16> {
    if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// What an XCLIENT command changes, gathered before any of it is applied.
struct Xclient {
    client: Client,
    port: Option<u16>,
    dest_addr: Option<IpAddr>,
    dest_port: Option<u16>,
    /// `Some` when HELO was given (`Some(None)`: `[UNAVAILABLE]`).
    helo: Option<Option<String>>,
    /// PROTO=ESMTP (else SMTP, given or not).
    esmtp: bool,
    /// LOGIN (not `[UNAVAILABLE]`).
    login: Option<String>,
}

impl Session {
    pub fn new(
        set: Arc<Settings>,
        gate: Arc<dyn Gate>,
        queue: Box<dyn Queue>,
        client: Client,
    ) -> Session {
        let (port, server) = (client.port, client.server);
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
            ending: None,
            pipelining_violation: false,
            pause: None,
            hangup: None,
            pending: None,
            tls: None,
            sasl: None,
            auth: None,
            auth_pending: None,
            limits: None,
            connected: None,
            reject_bare_lf: set.bare_lf == BareLf::Reject,
            port: Some(port),
            dest_addr: server.map(|a| a.ip()),
            dest_port: server.map(|a| a.port()),
            xclient_ok: false,
            xforward_ok: false,
            access_denied: false,
            discard: ehlo_mask(set.discard_ehlo.iter().map(String::as_str)),
            forwarded: None,
            input_pending: false,
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
        Some(Step::Close(self.with_footer(r)))
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
        if self.xclient_ok {
            return None;
        }
        self.limits.as_ref()?.over(self.client.anvil_addr(), ev)
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
            .filter(|_| !self.xclient_ok)
            .and_then(|l| l.over_already(self.client.anvil_addr(), Event::NewTls));
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
        if let Some(l) = self.limits.as_ref().filter(|_| !self.xclient_ok) {
            l.count(self.client.anvil_addr(), Event::NewTls);
        }
    }

    /// Turns SMTP AUTH on, with this server behind it.
    pub fn with_sasl(mut self, sasl: Box<dyn Sasl>) -> Session {
        self.sasl = Some(sasl);
        self
    }

    /// Whether the client's next line answers an AUTH challenge (the
    /// shell runs it where blocking is allowed).
    pub fn in_auth(&self) -> bool {
        self.auth_pending.is_some()
    }

    /// The mechanisms AUTH offers now (none: not offered).
    fn auth_mechanisms(&mut self) -> Vec<String> {
        let tls = self.tls.is_some();
        if (self.set.auth_tls_only && !tls) || self.discarded("AUTH") {
            return Vec::new();
        }
        match self.sasl.as_mut() {
            Some(s) => s.mechanisms(tls),
            None => Vec::new(),
        }
    }

    fn auth_cmd(&mut self, mech: String, initial: Option<String>) -> Step {
        self.last_verb = "AUTH".into();
        if let Some(s) = self.needs_tls("auth") {
            return s;
        }
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
                &format!(
                    "Error: too many AUTH commands from {}",
                    self.client.addr_text()
                ),
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
            let trust = match &summary.peer_cert {
                Some(c) if c.trusted => "Trusted",
                Some(_) => "Untrusted",
                None => "Anonymous",
            };
            self.logs.push(format!(
                "{trust} TLS connection established from {}: {}",
                self.client.label(),
                summary.describe()
            ));
        }
        self.tls = Some(summary);
    }

    /// `530 5.7.0 Must issue a STARTTLS command first` under `encrypt`
    /// before the handshake: for every command but HELO, EHLO, STARTTLS,
    /// NOOP, QUIT and XCLIENT, as Postfix.
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
        if self.set.tls.level == Level::None || self.discarded("STARTTLS") {
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

    /// The shell has more input waiting behind the command line it hands
    /// over next ([`Session::command`] decides whether that is improper
    /// pipelining: that depends on the command — after EHLO, pipelining
    /// is still improper after HELO, EHLO, DATA, VRFY and NOOP — and on
    /// PIPELINING being offered).
    pub fn note_pipelining_violation(&mut self) {
        self.input_pending = true;
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
            client_port: self.port,
            server_addr: self.dest_addr,
            server_port: self.dest_port,
            size: t.map_or(0, |t| t.size.max(t.params.size.unwrap_or(0))),
            tls_protocol: self.tls.as_ref().map(|s| s.protocol.as_str()),
            tls_cipher: self.tls.as_ref().map(|s| s.cipher.as_str()),
            tls_keysize: self.tls.as_ref().map_or(0, |s| u32::from(s.bits)),
            ccert: self.tls.as_ref().and_then(|s| s.peer_cert.as_ref()),
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
        self.xforward_ok = self.host_listed(
            self.set.controls.xforward_hosts.clone(),
            "smtpd_authorized_xforward_hosts",
        );
        self.identify();
        // As Postfix: clients that may use XCLIENT are neither counted nor
        // limited (they speak for others).
        if let Some(l) = self.limits.clone().filter(|_| !self.xclient_ok) {
            let (guard, count, rate) = l.connect(self.client.anvil_addr());
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
                let r = Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Error: too many connections from {}",
                        self.set.myhostname,
                        self.client.addr_text()
                    ),
                );
                return Step::Close(self.with_footer(r));
            }
        }
        let step = match self.admit("CONNECT") {
            Some(s) => s,
            None => Step::Reply(Reply::new(220, "", &self.set.banner)),
        };
        self.footer(step)
    }

    /// Whether the client as the session knows it now is in a host list
    /// (a lookup error counts as not listed, with a warning).
    fn host_listed(&mut self, list: Option<Shared<NetworkList>>, param: &str) -> bool {
        let Some(list) = list else {
            return false;
        };
        match list.0.matches(Some(&self.client.name), self.client.addr) {
            Ok(m) => m,
            Err(e) => {
                self.logs
                    .push(format!("warning: {param}: table lookup problem: {e}"));
                false
            }
        }
    }

    /// What depends on who the client is, decided at the greeting and
    /// again after XCLIENT: whether it may use XCLIENT, and the EHLO
    /// keywords it is not offered (`smtpd_discard_ehlo_keyword_address_maps`
    /// by its address, else `smtpd_discard_ehlo_keywords`).
    fn identify(&mut self) {
        self.xclient_ok = self.host_listed(
            self.set.controls.xclient_hosts.clone(),
            "smtpd_authorized_xclient_hosts",
        );
        let set = self.set.clone();
        let found = match &set.controls.discard_ehlo_maps {
            None => None,
            Some(m) => match m.0.find_first(&[Key {
                text: self.client.addr_text(),
                whole: true,
            }]) {
                Ok(v) => v.map(|(_, v)| v),
                Err(e) => {
                    self.logs.push(format!(
                        "warning: smtpd_discard_ehlo_keyword_address_maps: table lookup problem: {e}"
                    ));
                    None
                }
            },
        };
        self.discard = match found {
            Some(v) => ehlo_mask(libmail::config::params::split_list(&v).into_iter()),
            None => ehlo_mask(set.discard_ehlo.iter().map(String::as_str)),
        };
    }

    /// Whether this EHLO keyword is not offered to the client.
    fn discarded(&self, keyword: &str) -> bool {
        self.discard.iter().any(|d| d == keyword)
    }

    /// The client restrictions, when they are not delayed to RCPT: `None`
    /// to go on, or the refusal. After a refusal every command but QUIT
    /// is refused (a 421 or 521 closes the session at once).
    fn admit(&mut self, stage: &str) -> Option<Step> {
        self.access_denied = false;
        if self.gate.delay_reject() {
            return None;
        }
        let v = self.gate.ask(Ask::Connect, &self.view(None));
        self.absorb(&v);
        let r = v.reply?;
        self.log_reject(stage, &r, None);
        if v.hangup {
            return Some(Step::Close(r));
        }
        self.access_denied = true;
        Some(self.error(r))
    }

    /// Appends `smtpd_reject_footer` to a 4xx or 5xx reply.
    fn footer(&mut self, step: Step) -> Step {
        match step {
            Step::Reply(r) => Step::Reply(self.with_footer(r)),
            Step::Close(r) => Step::Close(self.with_footer(r)),
            other => other,
        }
    }

    /// `smtpd_reject_footer` after a 4xx or 5xx reply: on a line of its
    /// own with the reply's codes (each `\n` starts another), or at the
    /// end of the last line when it starts with `\c`. `$client_address`,
    /// `$client_port`, `$localtime` and `$server_name` are expanded; other
    /// names expand to nothing, with Postfix's warning. The footer is not
    /// logged (the reject line was written before). Public for the
    /// replies the shell makes itself (the timeout's 421).
    pub fn with_footer(&mut self, mut r: Reply) -> Reply {
        if r.code < 400 {
            return r;
        }
        let set = self.set.clone();
        // smtpd_reject_footer_maps, keyed by the whole reply (its first
        // line with the codes), wins over smtpd_reject_footer.
        let from_map = set.controls.reject_footer_maps.as_ref().and_then(|m| {
            let text = r.lines.first().map_or("", String::as_str);
            let whole = if r.enhanced.is_empty() {
                format!("{} {text}", r.code)
            } else {
                format!("{} {} {text}", r.code, r.enhanced)
            };
            let key = libmail::table::search::Key {
                text: whole,
                whole: true,
            };
            match m.0.find_first(std::slice::from_ref(&key)) {
                Ok(v) => v.map(|(_, v)| v),
                Err(e) => {
                    self.logs
                        .push(format!("warning: smtpd_reject_footer_maps: {e}"));
                    None
                }
            }
        });
        let template = from_map
            .as_deref()
            .unwrap_or(set.controls.reject_footer.as_str())
            .trim()
            .to_string();
        if template.is_empty() {
            return r;
        }
        let template = template.as_str();
        let client_address = self.client.addr_text();
        let client_port = self
            .port
            .map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let lookup = |name: &str| -> Option<String> {
            match name {
                "client_address" => Some(client_address.clone()),
                "client_port" => Some(client_port.clone()),
                "localtime" => Some(localtime()),
                "server_name" => Some(set.myhostname.clone()),
                _ => None,
            }
        };
        let mut parts: Vec<(bool, String)> = Vec::new();
        for (i, part) in template.split("\\n").enumerate() {
            let (same_line, part) = match part.strip_prefix("\\c") {
                Some(rest) if i == 0 => (true, rest),
                _ => (false, part),
            };
            let mut e = libmail::config::expand::Expansion::new();
            let text = match e.expand(part, &lookup) {
                Ok(t) => t,
                Err(err) => {
                    self.logs
                        .push(format!("warning: smtpd_reject_footer: {err}"));
                    return r;
                }
            };
            for name in e.undefined {
                self.logs.push(format!(
                    "warning: unknown macro name \"{name}\" in expansion request"
                ));
            }
            let text: String = text
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect();
            parts.push((same_line, text));
        }
        for (same_line, text) in parts {
            match r.lines.last_mut() {
                Some(last) if same_line => last.push_str(&text),
                _ => r.lines.push(text),
            }
        }
        r
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
            " proto={}",
            if self.esmtp { "ESMTP" } else { "SMTP" }
        ));
        if let Some(h) = &self.helo {
            line.push_str(&format!(" helo=<{h}>"));
        }
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
        if self.errors >= self.set.hard_error_limit && self.hangup.is_none() {
            // As Postfix: this error is answered, then the 421 follows
            // at once and the session ends.
            self.logs.push(format!(
                "too many errors after {} from {}",
                self.last_verb,
                self.client.label()
            ));
            self.hangup = Some(Reply::new(
                421,
                "4.7.0",
                format!("{} Error: too many errors", self.set.myhostname),
            ));
        }
        Step::Reply(r)
    }

    /// After a reply has gone out: the `421` to send next when the error
    /// limit was reached (the shell sends it and closes).
    pub fn take_hangup(&mut self) -> Option<Reply> {
        self.hangup.take()
    }

    fn junk(&mut self) -> bool {
        self.junk += 1;
        self.junk > self.set.junk_command_limit
    }

    /// One command line (without CRLF; bytes that are not UTF-8 were
    /// replaced by the shell).
    pub fn command(&mut self, line: &str) -> Step {
        let pending = std::mem::take(&mut self.input_pending);
        let step = self.command_unfooted(line, pending);
        self.footer(step)
    }

    fn command_unfooted(&mut self, line: &str, input_pending: bool) -> Step {
        // A line answering an AUTH challenge is not a command.
        if let Some(mech) = self.auth_pending.take() {
            return self.auth_response(mech, line);
        }
        let word = line.split_whitespace().next().unwrap_or("");
        let verb = word.to_ascii_uppercase();
        let known = VERBS.contains(&verb.as_str());
        if known && input_pending {
            if let Some(s) = self.improper_pipelining(&verb) {
                return s;
            }
        }
        if known && self.access_denied && verb != "QUIT" {
            self.last_verb = verb.clone();
            self.count(&verb.to_ascii_lowercase(), false);
            let r = Reply::new(
                503,
                "5.7.0",
                format!("Error: access denied for {}", self.client.label()),
            );
            return self.error(r);
        }
        match verb.as_str() {
            "XCLIENT" => return self.xclient(line),
            "XFORWARD" => return self.xforward(line),
            _ => {}
        }
        let cmd = match command::parse_with(line, self.set.controls.strict_rfc821_envelopes) {
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
                if let Some(s) = self.needs_tls("rset") {
                    return s;
                }
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
                self.error(pl(459, "", &format!("<{domain}>: service unavailable")))
            }
            Command::Quit => {
                self.last_verb = "QUIT".into();
                self.count("quit", true);
                Step::Close(pl(221, "2.0.0", "Bye"))
            }
            Command::StartTls => self.starttls(),
            Command::Auth(mech, initial) => self.auth_cmd(mech, initial),
            Command::Unknown(_) => {
                self.last_verb = "UNKNOWN".into();
                self.unknown.total += 1;
                // Web and proxy commands, message headers: someone is
                // abusing the port.
                if self.forbidden(word) {
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

    /// An unknown verb that ends the session: anything shaped like a
    /// message header (`Subject:`), or one in `smtpd_forbidden_commands`
    /// (a lookup error counts as not listed, with a warning).
    fn forbidden(&mut self, word: &str) -> bool {
        if syntax::is_header(word) {
            return true;
        }
        let list = self.set.controls.forbidden_commands.clone();
        match list.0.matches(word) {
            Ok(m) => m,
            Err(e) => {
                self.logs.push(format!(
                    "warning: smtpd_forbidden_commands: table lookup problem: {e}"
                ));
                false
            }
        }
    }

    /// The client sent more after this command where it may not: before
    /// EHLO (or with PIPELINING not offered), or after a command that
    /// must end a group. Logged once per session, as Postfix does (the
    /// text the client sent ahead is not known here); it counts for
    /// `reject_unauth_pipelining`, and with
    /// `smtpd_forbid_unauth_pipelining` the session ends.
    fn improper_pipelining(&mut self, verb: &str) -> Option<Step> {
        let offered = self.esmtp && !self.discarded("PIPELINING");
        if offered && !LAST_IN_GROUP.contains(&verb) {
            return None;
        }
        if !self.pipelining_violation {
            self.pipelining_violation = true;
            self.logs.push(format!(
                "improper command pipelining after {verb} from {}: ",
                self.client.label()
            ));
        }
        if !self.set.controls.forbid_unauth_pipelining {
            return None;
        }
        self.last_verb = verb.to_string();
        self.count(&verb.to_ascii_lowercase(), false);
        Some(Step::Close(pl(
            554,
            "5.5.0",
            "Error: SMTP protocol synchronization",
        )))
    }

    /// The `name=value` items after the verb.
    fn attributes(line: &str) -> Vec<&str> {
        line.split_whitespace().skip(1).collect()
    }

    /// The checks XCLIENT and XFORWARD share, in Postfix's order: not
    /// inside a transaction, at least one attribute, an authorized
    /// client. The attributes, or the refusal.
    fn x_command_items<'l>(
        &self,
        line: &'l str,
        verb: &str,
        authorized: bool,
    ) -> Result<Vec<&'l str>, Reply> {
        if self.tx.is_some() {
            return Err(pl(503, "5.5.1", "Error: MAIL transaction in progress"));
        }
        let items = Session::attributes(line);
        if items.is_empty() {
            return Err(bad(format!("Syntax: {verb} attribute=value...")));
        }
        if !authorized {
            return Err(pl(550, "5.7.0", "Error: insufficient authorization"));
        }
        Ok(items)
    }

    /// `XCLIENT name=value...`: what the session knows of the client is
    /// replaced (all of it or, after an error, none of it), and the
    /// session starts over: transaction, HELO name (unless given),
    /// protocol (SMTP unless PROTO=ESMTP), login (unless LOGIN is given)
    /// are forgotten, the client restrictions are asked again when not
    /// delayed, and the reply is the 220 greeting. TLS stays. The client
    /// as it is now decides whether XCLIENT is allowed again.
    fn xclient(&mut self, line: &str) -> Step {
        // Allowed before STARTTLS under `encrypt`, as in Postfix (XFORWARD
        // is not).
        self.last_verb = "XCLIENT".into();
        let fail = |s: &mut Session, r: Reply| {
            s.count("xclient", false);
            s.error(r)
        };
        let items = match self.x_command_items(line, "XCLIENT", self.xclient_ok) {
            Ok(items) => items,
            Err(r) => return fail(self, r),
        };
        let mut x = Xclient {
            client: self.client.clone(),
            port: self.port,
            dest_addr: self.dest_addr,
            dest_port: self.dest_port,
            helo: None,
            esmtp: false,
            login: None,
        };
        let ipv6 = self.set.controls.ipv6;
        for item in items {
            let (name, value) = match attribute(item) {
                Ok(a) => a,
                Err(r) => return fail(self, r),
            };
            let unavailable = value == UNAVAILABLE;
            let syntax_error = |what: &str| bad(format!("Bad {what} syntax: {value}"));
            match name.to_ascii_uppercase().as_str() {
                "NAME" => {
                    if unavailable || value == TEMPUNAVAIL {
                        x.client.name = "unknown".into();
                    } else if syntax::valid_hostname(&value) {
                        x.client.name = value.clone();
                        x.client.reverse_name = value.clone();
                    } else {
                        return fail(self, syntax_error("NAME"));
                    }
                }
                "REVERSE_NAME" => {
                    if unavailable || value == TEMPUNAVAIL {
                        x.client.reverse_name = "unknown".into();
                    } else if syntax::valid_hostname(&value) {
                        x.client.reverse_name = value.clone();
                    } else {
                        return fail(self, syntax_error("REVERSE_NAME"));
                    }
                }
                // [UNAVAILABLE]: the address is `unknown` from now on (no
                // address block holds it, tables see the text `unknown`).
                "ADDR" if unavailable => x.client.addr = None,
                "ADDR" => match mailhost_addr(&value, ipv6) {
                    Some(a) => x.client.addr = Some(a),
                    None => return fail(self, syntax_error("ADDR")),
                },
                "PORT" => {
                    if unavailable {
                        x.port = None;
                    } else {
                        match port_number(&value) {
                            Some(p) => x.port = Some(p),
                            None => return fail(self, syntax_error("PORT")),
                        }
                    }
                }
                "HELO" => {
                    if unavailable {
                        x.helo = Some(None);
                    } else if value.len() > 255 {
                        return fail(self, syntax_error("HELO"));
                    } else {
                        x.helo = Some(Some(neuter(&value)));
                    }
                }
                "PROTO" => {
                    if value.eq_ignore_ascii_case("ESMTP") {
                        x.esmtp = true;
                    } else if value.eq_ignore_ascii_case("SMTP") {
                        x.esmtp = false;
                    } else {
                        return fail(self, syntax_error("PROTO"));
                    }
                }
                "LOGIN" => {
                    x.login = (!unavailable).then(|| value.clone());
                }
                "DESTADDR" => {
                    if unavailable {
                        x.dest_addr = None;
                    } else {
                        match mailhost_addr(&value, ipv6) {
                            Some(a) => x.dest_addr = Some(a),
                            None => return fail(self, syntax_error("DESTADDR")),
                        }
                    }
                }
                "DESTPORT" => {
                    if unavailable {
                        x.dest_port = None;
                    } else {
                        match port_number(&value) {
                            Some(p) => x.dest_port = Some(p),
                            None => return fail(self, syntax_error("DESTPORT")),
                        }
                    }
                }
                _ => return fail(self, bad(format!("Bad XCLIENT attribute name: {name}"))),
            }
        }
        // Counted, never as a success (as in Postfix's disconnect line).
        self.count("xclient", false);
        self.reset();
        self.client = x.client;
        self.port = x.port;
        self.dest_addr = x.dest_addr;
        self.dest_port = x.dest_port;
        self.helo = x.helo.flatten();
        self.esmtp = x.esmtp;
        self.auth = x.login.map(|u| ("XCLIENT".to_string(), u));
        self.auth_pending = None;
        self.pending = None;
        self.identify();
        match self.admit("XCLIENT") {
            Some(s) => s,
            None => Step::Reply(Reply::new(220, "", &self.set.banner)),
        }
    }

    /// `XFORWARD name=value...`: the up-stream client of the next message
    /// (NAME, ADDR, PORT, PROTO, HELO, IDENT, SOURCE), logged on its
    /// `client=` line as `orig_queue_id=` and `orig_client=` and recorded
    /// for cleanup. The session's own client is unchanged. Attributes are
    /// taken in order until one is wrong, as Postfix does; all are
    /// forgotten when the transaction ends.
    fn xforward(&mut self, line: &str) -> Step {
        self.last_verb = "XFORWARD".into();
        if let Some(s) = self.needs_tls("xforward") {
            return s;
        }
        let fail = |s: &mut Session, r: Reply| {
            s.count("xforward", false);
            s.error(r)
        };
        let items = match self.x_command_items(line, "XFORWARD", self.xforward_ok) {
            Ok(items) => items,
            Err(r) => return fail(self, r),
        };
        let ipv6 = self.set.controls.ipv6;
        for item in items {
            let (name, value) = match attribute(item) {
                Ok(a) => a,
                Err(r) => return fail(self, r),
            };
            let unavailable = value == UNAVAILABLE;
            let upper = name.to_ascii_uppercase();
            let syntax_error = |what: &str, v: &str| bad(format!("Bad {what} syntax: {v}"));
            let mut f = self.forwarded.clone().unwrap_or_default();
            match upper.as_str() {
                "NAME" => {
                    let v = neuter(&value);
                    if unavailable {
                        f.name = None;
                    } else if syntax::valid_hostname(&v) {
                        f.name = Some(v);
                    } else {
                        return fail(self, syntax_error("NAME", &v));
                    }
                }
                "ADDR" => {
                    let v = neuter(&value);
                    if unavailable {
                        f.addr = None;
                    } else {
                        // Kept as sent, without its `IPv6:` prefix.
                        match mailhost_addr(&v, ipv6) {
                            Some(IpAddr::V6(_)) => f.addr = Some(v[5..].to_string()),
                            Some(IpAddr::V4(_)) => f.addr = Some(v),
                            None => return fail(self, syntax_error("ADDR", &v)),
                        }
                    }
                }
                "PORT" => {
                    let digits =
                        (1..=5).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
                    if unavailable {
                        f.port = None;
                    } else if digits {
                        f.port = Some(value.clone());
                    } else {
                        return fail(self, syntax_error("PORT", &value));
                    }
                }
                "HELO" => f.helo = (!unavailable).then(|| neuter(&value)),
                "PROTO" => {
                    if unavailable {
                        f.proto = None;
                    } else if value.len() > MAX_XFORWARD_PROTO {
                        return fail(self, syntax_error("PROTO", &value));
                    } else {
                        f.proto = Some(neuter(&value));
                    }
                }
                "IDENT" => f.ident = (!unavailable).then(|| neuter(&value)),
                "SOURCE" => {
                    f.source = Some(if unavailable || value.eq_ignore_ascii_case("LOCAL") {
                        "local"
                    } else if value.eq_ignore_ascii_case("REMOTE") {
                        "remote"
                    } else {
                        return fail(self, syntax_error("SOURCE", &value));
                    });
                }
                _ => return fail(self, bad(format!("Bad XFORWARD attribute name: {name}"))),
            }
            self.forwarded = Some(f);
        }
        self.count("xforward", true);
        Step::Reply(pl(250, "2.0.0", "Ok"))
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
        if self.xclient_ok {
            k.push("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT".into());
        }
        if self.xforward_ok {
            k.push("XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT".into());
        }
        k.push("ENHANCEDSTATUSCODES".into());
        k.push("8BITMIME".into());
        k.push("DSN".into());
        if self.set.smtputf8 {
            k.push("SMTPUTF8".into());
        }
        k.push("CHUNKING".into());
        k.retain(|w| {
            let word = w.split([' ', '=']).next().unwrap_or("");
            !self.discarded(word)
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
            // Not with SILENT-DISCARD, nor (as in Postfix) when
            // ENHANCEDSTATUSCODES is among them.
            let shown: Vec<&str> = self
                .discard
                .iter()
                .map(String::as_str)
                .filter(|k| *k != "SILENT-DISCARD")
                .collect();
            if !shown.is_empty()
                && !self.discarded("SILENT-DISCARD")
                && !self.discarded("ENHANCEDSTATUSCODES")
            {
                self.logs
                    .push(format!("discarding EHLO keywords: {}", shown.join(" ")));
            }
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
        self.forwarded = None;
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
        if params.smtputf8 && (!self.set.smtputf8 || self.discarded("SMTPUTF8")) {
            self.count("mail", false);
            return self.error(pl(555, "5.5.4", "Unsupported option: SMTPUTF8"));
        }
        if (params.ret != 0 || params.envid.is_some()) && self.discarded("DSN") {
            self.count("mail", false);
            return self.error(pl(501, "5.7.1", "DSN support is disabled"));
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
                &format!("Error: too much mail from {}", self.client.addr_text()),
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
            let r = pl(452, "4.5.3", "Error: too many recipients");
            // The first smtpd_recipient_overshoot_limit of these are not
            // errors (and count as successes on the disconnect line, as
            // in Postfix).
            let limit = self.set.controls.recipient_overshoot_limit;
            if let Some(t) = self.tx.as_mut() {
                t.overshoot += 1;
                if t.overshoot <= limit {
                    self.count("rcpt", true);
                    return Step::Reply(r);
                }
            }
            self.count("rcpt", false);
            return self.error(r);
        }
        if (params.notify != 0 || params.orcpt.is_some()) && self.discarded("DSN") {
            self.count("rcpt", false);
            return self.error(pl(501, "5.7.1", "DSN support is disabled"));
        }
        if let Some(n) = self.over_limit(Event::Rcpt) {
            self.limit_warning("Recipient address rate", n);
            self.count("rcpt", false);
            let r = pl(
                450,
                "4.7.1",
                &format!(
                    "Error: too many recipients from {}",
                    self.client.addr_text()
                ),
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
                    if let Some(f) = &self.forwarded {
                        if let Some(ident) = &f.ident {
                            line.push_str(&format!(", orig_queue_id={ident}"));
                        }
                        line.push_str(&format!(", orig_client={}", f.namaddr()));
                    }
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
        let mut flags = libmail::ipc::cleanup::FLAG_BOUNCE | self.set.controls.cleanup_flags;
        if t.verdict.hold.is_some() {
            flags |= libmail::ipc::cleanup::FLAG_HOLD;
        }
        if t.verdict.discard.is_some() {
            flags |= libmail::ipc::cleanup::FLAG_DISCARD;
        }
        if self.gate.late_recipients() {
            flags |= libmail::ipc::cleanup::FLAG_LATE_RCPTS;
        }
        a.push("flags", flags);
        // An access table's FILTER, else the service's content_filter.
        let filter = t
            .verdict
            .filter
            .as_deref()
            .unwrap_or(&self.set.content_filter);
        if !filter.is_empty() {
            a.push("filter", filter);
        }
        match &self.forwarded {
            // What XFORWARD said replaces the client in what cleanup
            // records (Postfix's log_* attributes: cleanup's log lines and
            // the smtp client's own XFORWARD use them).
            Some(f) => {
                a.push("attr.rewrite_context", f.source.unwrap_or("remote"));
                a.push("attr.client_name", f.name());
                a.push("attr.reverse_client_name", &self.client.reverse_name);
                if let Some(addr) = &f.addr {
                    a.push("attr.client_address", addr);
                }
                if let Some(p) = &f.port {
                    a.push("attr.client_port", p);
                }
                if let Some(h) = &f.helo {
                    a.push("attr.helo_name", h);
                }
                a.push("attr.protocol", f.proto.as_deref().unwrap_or("unknown"));
                if let Some(i) = &f.ident {
                    a.push("attr.log_ident", i);
                }
            }
            None => {
                a.push("attr.rewrite_context", "remote");
                a.push("attr.client_name", &self.client.name);
                a.push("attr.reverse_client_name", &self.client.reverse_name);
                a.push("attr.client_address", self.client.addr_text());
                if let Some(p) = self.port {
                    a.push("attr.client_port", p);
                }
                if let Some(h) = &self.helo {
                    a.push("attr.helo_name", h);
                }
                a.push("attr.protocol", if self.esmtp { "ESMTP" } else { "SMTP" });
            }
        }
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
            if let Some(c) = &s.peer_cert {
                out.push(format!(
                    "\t(Client CN \"{}\", Issuer \"{}\" ({}))",
                    c.subject_cn,
                    c.issuer_cn,
                    if c.trusted {
                        "verified OK"
                    } else {
                        "not verified"
                    }
                ));
            } else if !self.set.tls.ask_ccert {
                out.push("\t(No client certificate requested)".into());
            } else {
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
        let r = self.data_end_unfooted();
        self.with_footer(r)
    }

    /// The first half of [`data_end`](Self::data_end), for a shell that
    /// would rather wait asynchronously than block: passes the last
    /// content and the end marker on; `Some(fd)` when the verdict will
    /// be readable there (then call `data_end`, which reads it).
    pub fn data_end_start(&mut self) -> Option<RawFd> {
        if self.ending.is_some() {
            return None;
        }
        if !self.content_complete() {
            return None;
        }
        if self.end_of_data_check() {
            return None;
        }
        let t = self.tx.as_mut()?;
        let sent = Self::send_end(t, self.queue.as_mut());
        let fd = sent.as_ref().ok().copied().flatten();
        self.ending = Some(sent.map(|_| ()));
        fd
    }

    /// Whether the content came whole and may be queued (not too big,
    /// not already refused, no bare LF under `reject`).
    fn content_complete(&self) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|t| !t.too_big && t.failed.is_none() && !t.bare_lf)
    }

    /// `smtpd_end_of_data_restrictions`, once the content is in; true
    /// when they refuse the message (the refusal is then the end's
    /// result, and cleanup withdraws the file). HOLD, DISCARD, FILTER,
    /// REDIRECT and BCC go to cleanup after the content ([`Queue::late`];
    /// cleanup was told at DATA to write the recipients last); PREPEND
    /// comes too late here (the headers went to cleanup with the
    /// content), so it is logged and not applied.
    fn end_of_data_check(&mut self) -> bool {
        let v = self.gate.ask(Ask::EndOfData, &self.view(None));
        // Its log lines name the stage as Postfix does.
        let verb = std::mem::replace(&mut self.last_verb, "END-OF-MESSAGE".into());
        self.absorb(&v);
        self.last_verb = verb;
        if let Some(r) = v.reply {
            self.queue.abort();
            self.ending = Some(Err(r));
            return true;
        }
        let (held, discarded) = self.tx.as_ref().map_or((false, false), |t| {
            (t.verdict.hold.is_some(), t.verdict.discard.is_some())
        });
        let mut flags = 0;
        if v.discard.is_some() && !discarded {
            flags |= libmail::ipc::cleanup::FLAG_DISCARD;
        }
        if v.hold.is_some() && !held {
            flags |= libmail::ipc::cleanup::FLAG_HOLD;
        }
        let late = libmail::ipc::cleanup::Late {
            flags,
            filter: v.filter,
            redirect: v.redirect,
            bcc: v.bcc,
        };
        if !late.is_empty() {
            if let Err(r) = self.queue.late(&late) {
                self.queue.abort();
                self.ending = Some(Err(r));
                return true;
            }
        }
        false
    }

    /// The last content (its line ended) and the end marker.
    fn send_end(t: &mut Transaction, queue: &mut dyn Queue) -> Result<Option<RawFd>, Reply> {
        if t.cr {
            t.pending.push(b'\r');
        }
        if !t.pending.is_empty() && t.pending.last() != Some(&b'\n') {
            t.pending.push(b'\n');
        }
        let chunk = std::mem::take(&mut t.pending);
        queue.content(&chunk)?;
        queue.end()
    }

    fn data_end_unfooted(&mut self) -> Reply {
        let verb = if self.in_bdat { "bdat" } else { "data" };
        if self.ending.is_none() && self.content_complete() {
            self.end_of_data_check();
        }
        let Some(mut t) = self.tx.take() else {
            return pl(503, "5.5.1", "Error: need MAIL command");
        };
        self.in_bdat = false;
        // The end of the transaction: XFORWARD's attributes are spent.
        self.forwarded = None;
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
            match self.ending.take() {
                Some(sent) => sent,
                None => Self::send_end(&mut t, self.queue.as_mut()).map(|_| ()),
            }
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
        if self.discarded("CHUNKING") {
            // The chunk cannot be told from commands: hang up, as Postfix.
            self.count("bdat", false);
            return Step::Close(pl(521, "5.5.1", "Error: command not implemented"));
        }
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
    /// Whether [`bdat_end`](Self::bdat_end) for this chunk ends the
    /// message ([`data_end`](Self::data_end)) rather than a failed one.
    pub fn bdat_ends_message(&self, last: bool) -> bool {
        last && self.bdat_failed.is_none()
    }

    pub fn bdat_end(&mut self, size: u64, last: bool) -> Step {
        if let Some(r) = self.bdat_failed.clone() {
            if last {
                self.bdat_failed = None;
            }
            return self.footer(Step::Reply(r));
        }
        if last {
            let r = self.data_end();
            return Step::Reply(r);
        }
        Step::Reply(pl(250, "2.0.0", &format!("Ok: {size} bytes")))
    }

    /// Whether the restrictions may wait on the network.
    pub fn gate_may_block(&self) -> bool {
        self.gate.may_block()
    }

    /// Whether [`greeting`](Self::greeting) may block: the client
    /// restrictions (when not delayed), the XCLIENT/XFORWARD and EHLO
    /// keyword lists, the client-limit exceptions.
    pub fn greeting_may_block(&self) -> bool {
        self.gate.may_block()
            || self.set.controls.may_block()
            || self.limits.as_ref().is_some_and(|l| l.may_block())
    }

    /// Whether XCLIENT may block besides its restrictions: who the new
    /// client is, decided again.
    pub fn controls_may_block(&self) -> bool {
        self.set.controls.may_block()
    }

    /// Whether an RCPT that opens the queue file would get it without
    /// waiting (it is open already, or the queue has one ready).
    pub fn queue_ready(&mut self) -> bool {
        self.tx.as_ref().is_some_and(|t| t.queue_id.is_some()) || self.queue.ready()
    }

    /// Whether a message has a queue file open (ending the session
    /// withdraws it, which talks to cleanup).
    pub fn in_transaction(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| t.queue_id.is_some())
    }

    /// The connection ended without QUIT.
    pub fn lost(&mut self) {
        self.ending = None;
        if self.in_transaction() {
            self.queue.abort();
        }
        self.tx = None;
    }
}

#[cfg(test)]
mod xclient_tests {
    //! XCLIENT, XFORWARD and the smaller controls, command by command
    //! (the end-to-end tests are daemons/tests/smtpd_xclient.rs).

    use super::*;
    use std::sync::Mutex;

    /// Records what the restrictions were shown; refuses one address at
    /// the client stage.
    struct SeeingGate {
        delay: bool,
        refuse: Option<IpAddr>,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Gate for SeeingGate {
        fn delay_reject(&self) -> bool {
            self.delay
        }
        fn ask(&self, at: Ask, f: &Facts) -> Verdict {
            self.seen.lock().unwrap().push(format!(
                "{at:?} {}[{}] rev={} port={:?} dest={:?}:{:?} helo={:?} esmtp={} login={:?}/{:?}",
                f.client_name,
                libmail::address::networks::addr_or_unknown(f.client_addr),
                f.reverse_name,
                f.client_port,
                f.server_addr,
                f.server_port,
                f.helo,
                f.esmtp,
                f.sasl_method,
                f.sasl_username,
            ));
            let mut v = Verdict::default();
            match f.client_addr {
                Some(a) if at == Ask::Connect && Some(a) == self.refuse => {
                    v.reply = Some(Reply::new(
                        554,
                        "5.7.1",
                        format!("<{}[{a}]>: Client host rejected: go away", f.client_name),
                    ));
                }
                _ => {}
            }
            v
        }
    }

    struct KeepQueue(Arc<Mutex<Vec<Attrs>>>);

    impl Queue for KeepQueue {
        fn open(&mut self) -> Result<String, Reply> {
            Ok("QID1".into())
        }
        fn envelope(&mut self, attrs: &Attrs) -> Result<(), Reply> {
            self.0.lock().unwrap().push(attrs.clone());
            Ok(())
        }
        fn content(&mut self, _: &[u8]) -> Result<(), Reply> {
            Ok(())
        }
        fn finish(&mut self) -> Result<String, Reply> {
            Ok("QID1".into())
        }
        fn abort(&mut self) {}
    }

    fn list(v: &str) -> Option<Shared<NetworkList>> {
        Some(Shared(Arc::new(
            NetworkList::new("test", v, false).unwrap(),
        )))
    }

    struct T {
        s: Session,
        seen: Arc<Mutex<Vec<String>>>,
        envelopes: Arc<Mutex<Vec<Attrs>>>,
    }

    fn session(controls: Controls, delay: bool, refuse: Option<&str>) -> T {
        session_with(controls, delay, refuse, |_| {})
    }

    fn session_with(
        controls: Controls,
        delay: bool,
        refuse: Option<&str>,
        tweak: impl FnOnce(&mut Settings),
    ) -> T {
        let mut set = Settings {
            controls,
            ..Settings::example("mx.example.test")
        };
        tweak(&mut set);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let envelopes = Arc::new(Mutex::new(Vec::new()));
        let mut s = Session::new(
            Arc::new(set),
            Arc::new(SeeingGate {
                delay,
                refuse: refuse.map(|a| a.parse().unwrap()),
                seen: seen.clone(),
            }),
            Box::new(KeepQueue(envelopes.clone())),
            Client {
                addr: Some("127.0.0.1".parse().unwrap()),
                port: 4242,
                name: "localhost".into(),
                reverse_name: "localhost".into(),
                server: Some("127.0.0.1:25".parse().unwrap()),
            },
        );
        s.greeting();
        T { s, seen, envelopes }
    }

    fn said(s: &mut Session, line: &str) -> String {
        match s.command(line) {
            Step::Reply(r) | Step::Close(r) | Step::Data(r) | Step::StartTls(r) => r.to_string(),
            Step::Bdat { .. } => "BDAT".into(),
        }
    }

    /// A message to one recipient; the reply to its end.
    fn message(s: &mut Session) -> String {
        assert_eq!(said(s, "MAIL FROM:<a@b.example>"), "250 2.1.0 Ok\r\n");
        assert_eq!(said(s, "RCPT TO:<u@mx.example.test>"), "250 2.1.5 Ok\r\n");
        said(s, "DATA");
        s.data_line(b"Subject: x");
        s.data_end().to_string()
    }

    fn xclient_controls() -> Controls {
        Controls {
            xclient_hosts: list("127.0.0.1 [2001:db8::]/32"),
            ipv6: true,
            ..Controls::default()
        }
    }

    #[test]
    fn xclient_replaces_the_client_for_restrictions_envelope_and_log() {
        let mut t = session(xclient_controls(), true, None);
        let s = &mut t.s;
        assert!(said(s, "EHLO proxy").contains(
            "250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n"
        ));
        assert_eq!(
            said(
                s,
                "XCLIENT ADDR=IPV6:2001:db8::1 NAME=[TEMPUNAVAIL] REVERSE_NAME=rev.example \
                 PORT=[UNAVAILABLE] DESTADDR=IPv6:2001:db8::25 DESTPORT=587 \
                 HELO=a<b>c+20d LOGIN=alice"
            ),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        assert!(message(s).starts_with("250 2.0.0 Ok: queued as QID1"));
        let seen = t.seen.lock().unwrap().join("\n");
        assert!(
            seen.contains(
                "Rcpt unknown[2001:db8::1] rev=rev.example port=None \
                 dest=Some(2001:db8::25):Some(587) helo=Some(\"a?b?c?d\") esmtp=false \
                 login=Some(\"XCLIENT\")/Some(\"alice\")"
            ),
            "{seen}"
        );
        let env = &t.envelopes.lock().unwrap()[0];
        assert_eq!(env.get("attr.client_address"), Some("2001:db8::1"));
        assert_eq!(env.get("attr.client_name"), Some("unknown"));
        assert_eq!(env.get("attr.client_port"), None);
        assert_eq!(env.get("attr.helo_name"), Some("a?b?c?d"));
        assert_eq!(env.get("attr.sasl_method"), Some("XCLIENT"));
        let logs = s.take_logs().join("\n");
        assert!(
            logs.contains(
                "QID1: client=unknown[2001:db8::1], sasl_method=XCLIENT, sasl_username=alice"
            ),
            "{logs}"
        );
        // The new client may use XCLIENT too (it is in the list).
        assert_eq!(
            said(s, "XCLIENT NAME=back.example ADDR=127.0.0.1"),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        assert!(s
            .disconnect_line()
            .starts_with("disconnect from back.example[127.0.0.1] ehlo=1 xclient=0/2 "));
    }

    #[test]
    fn under_encrypt_xclient_comes_before_starttls_and_xforward_does_not() {
        let mut t = session_with(
            Controls {
                xforward_hosts: list("127.0.0.1"),
                ..xclient_controls()
            },
            true,
            None,
            |set| set.tls.level = Level::Encrypt,
        );
        assert_eq!(
            said(&mut t.s, "XCLIENT NAME=a.example"),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        assert_eq!(
            said(&mut t.s, "XFORWARD NAME=a.example"),
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
        );
    }

    #[test]
    fn ipv6_needs_inet_protocols_and_the_prefix() {
        let mut t = session(
            Controls {
                ipv6: false,
                ..xclient_controls()
            },
            true,
            None,
        );
        assert_eq!(
            said(&mut t.s, "XCLIENT ADDR=IPv6:2001:db8::1"),
            "501 5.5.4 Bad ADDR syntax: IPv6:2001:db8::1\r\n"
        );
        let mut t = session(xclient_controls(), true, None);
        assert_eq!(
            said(&mut t.s, "XCLIENT ADDR=2001:db8::1"),
            "501 5.5.4 Bad ADDR syntax: 2001:db8::1\r\n"
        );
        // Only [UNAVAILABLE] stands for an unknown address (Postfix 3.7
        // refuses these two too).
        for v in ["[TEMPUNAVAIL]", "unknown"] {
            assert_eq!(
                said(&mut t.s, &format!("XCLIENT ADDR={v}")),
                format!("501 5.5.4 Bad ADDR syntax: {v}\r\n")
            );
        }
    }

    #[test]
    fn xclient_unavailable_address_is_unknown_everywhere() {
        let mut t = session(xclient_controls(), true, None);
        let s = &mut t.s;
        said(s, "EHLO proxy");
        assert_eq!(
            said(s, "XCLIENT ADDR=[UNAVAILABLE]"),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        // The name stays: only the address was replaced (as in Postfix).
        assert!(message(s).starts_with("250 2.0.0 Ok: queued as QID1"));
        let seen = t.seen.lock().unwrap().join("\n");
        assert!(seen.contains("Rcpt localhost[unknown] "), "{seen}");
        let env = &t.envelopes.lock().unwrap()[0];
        assert_eq!(env.get("attr.client_address"), Some("unknown"));
        let logs = s.take_logs().join("\n");
        assert!(logs.contains("QID1: client=localhost[unknown]"), "{logs}");
        // No longer a listed client (by address): XCLIENT is refused now.
        assert_eq!(
            said(s, "XCLIENT NAME=x.example"),
            "550 5.7.0 Error: insufficient authorization\r\n"
        );
        assert!(s
            .disconnect_line()
            .starts_with("disconnect from localhost[unknown] ehlo=1 xclient=0/2 "));
    }

    #[test]
    fn xclient_forgets_helo_protocol_login_and_the_transaction_unless_given() {
        let mut t = session(xclient_controls(), true, None);
        let s = &mut t.s;
        said(s, "EHLO proxy");
        assert_eq!(
            said(s, "XCLIENT PROTO=esmtp"),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        assert_eq!(said(s, "MAIL FROM:<a@b.example>"), "250 2.1.0 Ok\r\n");
        said(s, "RSET");
        assert_eq!(
            said(s, "XCLIENT NAME=n.example"),
            "220 mx.example.test ESMTP Postfix\r\n"
        );
        assert!(message(s).starts_with("250 "));
        let seen = t.seen.lock().unwrap().join("\n");
        assert!(
            seen.contains("Rcpt n.example[127.0.0.1] rev=n.example port=Some(4242) dest=Some(127.0.0.1):Some(25) helo=None esmtp=false login=None/None"),
            "{seen}"
        );
    }

    #[test]
    fn not_delayed_client_restrictions_deny_access_until_quit() {
        // At the greeting.
        let mut t = session(Controls::default(), false, Some("127.0.0.1"));
        let s = &mut t.s;
        let logs = s.take_logs().join("\n");
        assert!(
            logs.contains("NOQUEUE: reject: CONNECT from localhost[127.0.0.1]: 554 5.7.1 <localhost[127.0.0.1]>: Client host rejected: go away; proto=SMTP"),
            "{logs}"
        );
        assert_eq!(
            said(s, "EHLO x"),
            "503 5.7.0 Error: access denied for localhost[127.0.0.1]\r\n"
        );
        assert_eq!(said(s, "QUIT"), "221 2.0.0 Bye\r\n");
        // After XCLIENT.
        let mut t = session(xclient_controls(), false, Some("192.0.2.7"));
        assert_eq!(
            said(&mut t.s, "XCLIENT ADDR=192.0.2.7"),
            "554 5.7.1 <localhost[192.0.2.7]>: Client host rejected: go away\r\n"
        );
        assert_eq!(
            said(&mut t.s, "NOOP"),
            "503 5.7.0 Error: access denied for localhost[192.0.2.7]\r\n"
        );
    }

    #[test]
    fn xforward_is_taken_in_order_and_spent_by_one_transaction() {
        let mut t = session(
            Controls {
                xforward_hosts: list("127.0.0.1"),
                ..Controls::default()
            },
            true,
            None,
        );
        let s = &mut t.s;
        said(s, "EHLO filter");
        // NAME is taken, ADDR is not.
        assert_eq!(
            said(s, "XFORWARD NAME=up.example ADDR=bad"),
            "501 5.5.4 Bad ADDR syntax: bad\r\n"
        );
        assert_eq!(
            said(
                s,
                "XFORWARD SOURCE=local IDENT=a+0Ab PROTO=[UNAVAILABLE] PORT=99999"
            ),
            "250 2.0.0 Ok\r\n"
        );
        assert!(message(s).starts_with("250 "));
        assert!(message(s).starts_with("250 "));
        let logs = s.take_logs().join("\n");
        assert!(
            logs.contains(
                "QID1: client=localhost[127.0.0.1], orig_queue_id=a?b, orig_client=up.example\n"
            ),
            "{logs}"
        );
        assert!(
            logs.ends_with("QID1: client=localhost[127.0.0.1]"),
            "{logs}"
        );
        let envs = t.envelopes.lock().unwrap();
        assert_eq!(envs[0].get("attr.client_name"), Some("up.example"));
        assert_eq!(envs[0].get("attr.client_address"), None);
        assert_eq!(envs[0].get("attr.client_port"), Some("99999"));
        assert_eq!(envs[0].get("attr.protocol"), Some("unknown"));
        assert_eq!(envs[0].get("attr.rewrite_context"), Some("local"));
        assert_eq!(envs[0].get("attr.log_ident"), Some("a?b"));
        assert_eq!(envs[1].get("attr.client_name"), Some("localhost"));
        assert_eq!(envs[1].get("attr.client_address"), Some("127.0.0.1"));
        assert_eq!(envs[1].get("attr.rewrite_context"), Some("remote"));
        assert_eq!(envs[1].get("attr.log_ident"), None);
    }

    #[test]
    fn attribute_values_are_xtext_with_a_raw_fallback() {
        assert_eq!(
            attribute("NAME=a+2Eb").unwrap(),
            ("NAME", "a.b".to_string())
        );
        assert_eq!(attribute("NAME=a+2").unwrap(), ("NAME", "a+2".to_string()));
        assert_eq!(attribute("X=a+0D+0Ab").unwrap().1, "a??b");
        assert_eq!(attribute("X=+C3+A9").unwrap().1, "é");
        assert_eq!(attribute("X=+FF").unwrap().1, "?");
        assert!(attribute("X=").is_err());
        assert!(attribute("X").is_err());
        assert!(attribute(&format!("X={}", "a".repeat(256))).is_err());
        assert!(attribute(&format!("X={}", "a".repeat(255))).is_ok());
    }

    #[test]
    fn the_footer_goes_on_its_own_lines_or_at_the_end_with_backslash_c() {
        let mut t = session(
            Controls {
                reject_footer:
                    "\\c [$client_address:$client_port $server_name$nosuch]\\nsee ${server_name}"
                        .into(),
                ..Controls::default()
            },
            true,
            None,
        );
        let s = &mut t.s;
        s.take_logs();
        assert_eq!(
            said(s, "HELP"),
            "500-5.5.2 Error: command not recognized [127.0.0.1:4242 mx.example.test]\r\n\
             500 5.5.2 see mx.example.test\r\n"
        );
        assert_eq!(
            s.take_logs(),
            vec!["warning: unknown macro name \"nosuch\" in expansion request".to_string()]
        );
        assert_eq!(said(s, "NOOP"), "250 2.0.0 Ok\r\n");
        let mut t = session(
            Controls {
                reject_footer: "time $localtime".into(),
                ..Controls::default()
            },
            true,
            None,
        );
        let r = said(&mut t.s, "RCPT TO:<a@b>");
        let re = regex::Regex::new(
            r"^503-5\.5\.1 Error: need MAIL command\r\n503 5\.5\.1 time [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d\r\n$",
        )
        .unwrap();
        assert!(re.is_match(&r), "{r:?}");
    }

    #[test]
    fn command_lists_words_tables_and_negation() {
        let l = CommandList::parse("t", DEFAULT_FORBIDDEN_COMMANDS).unwrap();
        for (verb, hit) in [
            ("GET", true),
            ("Post", true),
            ("connect", true),
            ("1abc", true),
            ("<x", true),
            ("HELP", false),
            ("USER", false),
            ("foo", false),
            ("help", false),
        ] {
            assert_eq!(l.matches(verb).unwrap(), hit, "{verb}");
        }
        let l = CommandList::parse("t", "!GET, get, foo").unwrap();
        assert!(!l.matches("get").unwrap());
        assert!(l.matches("FOO").unwrap());
        assert!(CommandList::parse("t", "!").is_err());
    }

    #[test]
    fn discarded_keywords_are_logged_in_postfix_order_and_disable_what_postfix_does() {
        assert_eq!(
            ehlo_mask(["chunking", "bogus", "dsn", "Size", "8bitmime"].into_iter()),
            vec!["8BITMIME", "SIZE", "DSN", "CHUNKING"]
        );
        let with = |words: &[&str]| {
            let t = session(Controls::default(), true, None);
            let mut s = t.s;
            s.discard = ehlo_mask(words.iter().copied());
            s.take_logs();
            let ehlo = said(&mut s, "EHLO c");
            (s, ehlo)
        };
        let (mut s, ehlo) = with(&["smtputf8", "dsn", "pipelining"]);
        assert_eq!(
            ehlo,
            "250-mx.example.test\r\n250-SIZE 1000\r\n250-VRFY\r\n250-ETRN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
        );
        assert_eq!(
            s.take_logs(),
            vec!["discarding EHLO keywords: PIPELINING DSN SMTPUTF8".to_string()]
        );
        assert_eq!(
            said(&mut s, "MAIL FROM:<a@b> SMTPUTF8"),
            "555 5.5.4 Unsupported option: SMTPUTF8\r\n"
        );
        assert_eq!(
            said(&mut s, "MAIL FROM:<a@b> RET=HDRS"),
            "501 5.7.1 DSN support is disabled\r\n"
        );
        // Pipelining is not offered: anything sent ahead is improper.
        s.note_pipelining_violation();
        assert_eq!(said(&mut s, "MAIL FROM:<a@b>"), "250 2.1.0 Ok\r\n");
        assert!(s
            .take_logs()
            .iter()
            .any(|l| l == "improper command pipelining after MAIL from localhost[127.0.0.1]: "));
        for quiet in [
            &["dsn", "silent-discard"][..],
            &["dsn", "enhancedstatuscodes"][..],
        ] {
            let (mut s, _) = with(quiet);
            assert!(s.take_logs().is_empty(), "{quiet:?}");
        }
    }

    #[test]
    fn pipelining_after_ehlo_is_improper_only_after_last_in_group_commands() {
        let mut t = session(
            Controls {
                forbid_unauth_pipelining: true,
                ..Controls::default()
            },
            true,
            None,
        );
        let s = &mut t.s;
        said(s, "EHLO c");
        for line in ["MAIL FROM:<a@b>", "RCPT TO:<u@x>", "RSET", "ETRN x"] {
            s.note_pipelining_violation();
            assert!(!said(s, line).starts_with("554"), "{line}");
        }
        s.note_pipelining_violation();
        assert_eq!(
            s.command("VRFY u"),
            Step::Close(Reply::new(
                554,
                "5.5.0",
                "Error: SMTP protocol synchronization"
            ))
        );
        assert!(s.disconnect_line().contains(" vrfy=0/1 "));
        // An unknown command is not checked (as in Postfix).
        let mut t = session(
            Controls {
                forbid_unauth_pipelining: true,
                ..Controls::default()
            },
            true,
            None,
        );
        t.s.note_pipelining_violation();
        assert_eq!(
            said(&mut t.s, "HELP"),
            "500 5.5.2 Error: command not recognized\r\n"
        );
    }

    #[test]
    fn the_overshoot_limit_spares_the_error_count() {
        let mut t = session(
            Controls {
                recipient_overshoot_limit: 1,
                ..Controls::default()
            },
            true,
            None,
        );
        let s = &mut t.s;
        said(s, "MAIL FROM:<a@b>");
        for i in 0..5 {
            said(s, &format!("RCPT TO:<u{i}@x>"));
        }
        assert_eq!(s.errors, 1);
        assert!(s.disconnect_line().contains(" rcpt=4/5 "));
    }
}
