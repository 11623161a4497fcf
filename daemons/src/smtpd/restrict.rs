//! smtpd's access restrictions: the `smtpd_*_restrictions` lists, the
//! access(5) tables they consult, `smtpd_restriction_classes`, and the
//! implicit sender and recipient validation — Postfix's smtpd_check, as
//! an engine without I/O that the SMTP session asks at each stage.
//!
//! # The evaluation model (Postfix's, including its corner cases)
//!
//! * A list is evaluated left to right until a restriction says PERMIT,
//!   REJECT or DEFER; the end of a list is PERMIT. A PERMIT ends only its
//!   own list: the next list still runs. A reject in any list rejects the
//!   command.
//! * With `smtpd_delay_reject = yes` the session asks at RCPT
//!   ([`Restrictions::check_rcpt`]): the client, HELO and sender lists run
//!   first (each from scratch, so their rejects name the recipient in the
//!   log), then `smtpd_relay_restrictions` and `smtpd_recipient_restrictions`
//!   in the order `smtpd_relay_before_recipient_restrictions` says, then a
//!   pending `defer_if_permit` becomes the reply, then — unless a list
//!   already ran it — the implicit `reject_unlisted_recipient`
//!   (`smtpd_reject_unlisted_recipient = yes`), which runs even for
//!   clients that `permit_mynetworks` or SASL let through. The bare
//!   recipient `postmaster` is always accepted.
//! * With `smtpd_delay_reject = no` each list runs at its own command
//!   ([`Restrictions::check`]); a `defer_if_permit` raised by the client,
//!   HELO or sender list is carried to the RCPT (or ETRN) decision through
//!   [`Decision::pending_defer`] and [`Facts::pending_defer`].
//! * `warn_if_reject` makes the next restriction log `reject_warning`
//!   instead of rejecting; `defer_if_reject` turns a later 5xx of the same
//!   stage into its 450; `defer_if_permit` turns the final permit into its
//!   450. Configuration and lookup errors are never softened into
//!   warnings: `451 4.3.5 Server configuration error`, or `451 4.3.0
//!   <addr>: Temporary lookup failure`.
//! * Reply codes come from their parameters (`reject_code`,
//!   `access_map_reject_code`, ...); the enhanced code's class follows the
//!   reply code, address codes are fixed to fit what is rejected (a 5.1.1
//!   while rejecting a sender becomes 5.1.0), and `soft_bounce = yes`
//!   turns every 5xx into 4xx.
//! * An access-table result may be a list of restrictions or a class name,
//!   evaluated recursively up to a depth of 100; a result that names a
//!   `type:table` is refused (`451 4.3.5`), since every table must be
//!   opened when the configuration is loaded.
//!
//! `check_policy_service` asks a policy server (Postfix's SMTPD_POLICY_README
//! protocol, see the `policy` module) and evaluates its action as an
//! access-table result.
//!
//! The DNS restrictions (`reject_rbl_client`, `reject_rhsbl_*`,
//! `permit_dnswl_client`, `permit_rhswl_client`, `reject_maps_rbl`,
//! `reject_unknown_{helo_hostname,sender_domain,
//! recipient_domain}`, `check_*_{a,mx,ns}_access`) ask `libmail::dns`,
//! which blocks: the session calls the engine inside `block_in_place`.
//! Their resolver is made at load when a list or class names one, else
//! when an access table's result first does (once).
//! `reject_unknown_{client,reverse_client}_hostname` use the names the
//! session looked up. `permit_tls_clientcerts`,
//! `permit_tls_all_clientcerts` and `check_ccert_access` read the client
//! certificate the session was given ([`Facts::ccert`]).
//! `permit_mx_backup` asks the DNS too: it permits the authorized
//! destinations and the domains whose MX hosts list this machine (an
//! address of `inet_interfaces` or `proxy_interfaces`, or a name of
//! `mydestination`) below the most preferred ones, with
//! `permit_mx_backup_networks` limiting the primary MX hosts' addresses.
//! The restrictions that need what is not here yet (address
//! verification) are recognised and skipped as DUNNO, with one warning
//! when the configuration is loaded ([`Restrictions::warnings`]).
//! Unknown names are Postfix's: a warning and `451 4.3.5 Server
//! configuration error` when the list reaches them.
//!
//! Every table is opened once, by [`Restrictions::from_params`], which also
//! refuses a configuration without relay control, as Postfix does.

mod names;
mod policy;
pub(crate) mod syntax;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use libmail::address::domains::DomainList;
use libmail::address::networks::NetworkList;
use libmail::address::resolve::{Class, Resolved, Resolver};
use libmail::config::check::{parse_bool, parse_number};
use libmail::config::params::{split_list, Params};
use libmail::smtp::Reply;
use libmail::table::search::{access_address_keys, access_host_keys, address_keys, Key, Maps};
use libmail::table::{OpenOptions, TableError};

use libmail::dns::{Dns, DnsError};
use names::{Arg, Kind, Server, Target};

/// Deepest nesting of restriction classes and access-table results
/// (Postfix's limit).
const MAX_RECURSION: usize = 100;
/// Longest reply line, `CODE X.Y.Z text` included (Postfix truncates at
/// 510 characters).
const MAX_REPLY: usize = 510;
/// Most tokens an access-table result may hold.
const MAX_RESULT_TOKENS: usize = 1000;
/// Most resolver answers kept during one decision.
const MAX_RESOLVED: usize = 8;
/// Most seconds one `sleep` may ask for.
const MAX_SLEEP: u64 = 3600;
/// Bounds on one `check_*_{a,mx,ns}_access` (Postfix has none): at most
/// this many MX or NS hosts are examined (domains have a few; a TLD has
/// up to 13 name servers), this many addresses of each host, and this
/// many parent domains tried for NS records. With one MX or NS query,
/// an A and an AAAA query per host, that is at most 31 DNS queries, each
/// bounded by the resolver's timeout.
const MAX_SERVER_HOSTS: usize = 10;
const MAX_SERVER_ADDRS: usize = 10;
const MAX_NS_PARENTS: usize = 10;

/// The stage a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The connection (`smtpd_client_restrictions`).
    Client,
    /// HELO/EHLO (`smtpd_helo_restrictions`).
    Helo,
    /// MAIL FROM (`smtpd_sender_restrictions`, then the implicit
    /// `reject_unlisted_sender` when `smtpd_reject_unlisted_sender = yes`).
    Sender,
    /// RCPT TO. `Relay` and `Recipient` name the two lists of this stage;
    /// either one asks for the whole RCPT decision, exactly as
    /// [`Restrictions::check_rcpt`].
    Relay,
    Recipient,
    /// DATA (`smtpd_data_restrictions`).
    Data,
    /// The end of the message (`smtpd_end_of_data_restrictions`).
    EndOfData,
    /// ETRN (`smtpd_etrn_restrictions`; with `smtpd_delay_reject = yes` the
    /// client and HELO lists first).
    Etrn,
}

/// What the session knows when it asks. Addresses are in internal form
/// (quotes removed), as Postfix's smtpd keeps them; they appear as given
/// in the reply texts.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The client address; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is taken as the IPv4 address, as Postfix's smtpd does. `None`:
    /// unknown (XCLIENT `ADDR=[UNAVAILABLE]`), shown as `unknown`.
    pub client_addr: Option<IpAddr>,
    /// The verified name, or `unknown`.
    pub client_name: &'a str,
    /// The PTR name, or `unknown`.
    pub reverse_name: &'a str,
    pub helo: Option<&'a str>,
    /// `None` before MAIL; `Some("")` for the null sender.
    pub sender: Option<&'a str>,
    pub recipient: Option<&'a str>,
    /// The ETRN argument.
    pub etrn_domain: Option<&'a str>,
    /// Set once AUTH succeeded.
    pub sasl_username: Option<&'a str>,
    pub tls: bool,
    /// The client sent `SMTPUTF8` with MAIL (non-ASCII domains are then
    /// valid in `reject_non_fqdn_*`).
    pub smtputf8: bool,
    /// The client sent commands ahead without PIPELINING being offered.
    pub pipelining_violation: bool,
    /// Recipients accepted so far in this transaction (not counting the
    /// one being asked about at RCPT).
    pub rcpt_count: usize,
    /// An earlier decision of this transaction said DISCARD: Postfix then
    /// skips every further restriction and the implicit validations.
    pub discarded: bool,
    /// An earlier decision of this transaction said HOLD: a later HOLD is
    /// neither repeated nor logged.
    pub held: bool,
    /// With `smtpd_delay_reject = no`: the [`Decision::pending_defer`] of
    /// the previous stage (client for HELO; HELO, else client, for MAIL
    /// and ETRN; MAIL for RCPT).
    pub pending_defer: Option<&'a PendingDefer>,
    /// The rest is only sent to policy servers (`check_policy_service`).
    /// The queue ID once assigned (`queue_id`).
    pub queue_id: Option<&'a str>,
    /// EHLO was used (`protocol_name=ESMTP`, `protocol_state=EHLO`).
    pub esmtp: bool,
    /// The client's port (`client_port`; `unknown` when `None`).
    pub client_port: Option<u16>,
    /// The local end of the connection (`server_address`, `server_port`).
    pub server_addr: Option<IpAddr>,
    pub server_port: Option<u16>,
    /// The transaction's unique instance string (`instance`).
    pub instance: Option<&'a str>,
    /// The MAIL SIZE= value, or the actual size at end of data (`size`).
    pub size: u64,
    /// The SASL mechanism used (`sasl_method`).
    pub sasl_method: Option<&'a str>,
    /// The MAIL AUTH= value (`sasl_sender`).
    pub sasl_sender: Option<&'a str>,
    /// TLS protocol, cipher and key size (`encryption_*`).
    pub tls_protocol: Option<&'a str>,
    pub tls_cipher: Option<&'a str>,
    pub tls_keysize: u32,
    /// The client certificate, when one was presented over TLS (also
    /// used by `permit_tls_clientcerts`, `permit_tls_all_clientcerts` and
    /// `check_ccert_access`).
    pub ccert: Option<&'a libmail::tls::PeerCert>,
    /// smtpd runs under stress (`stress=yes`).
    pub stress: bool,
}

impl<'a> Facts<'a> {
    /// A client that has sent nothing yet; set the other fields with
    /// struct update syntax.
    pub fn new(
        client_addr: Option<IpAddr>,
        client_name: &'a str,
        reverse_name: &'a str,
    ) -> Facts<'a> {
        Facts {
            client_addr,
            client_name,
            reverse_name,
            helo: None,
            sender: None,
            recipient: None,
            etrn_domain: None,
            sasl_username: None,
            tls: false,
            smtputf8: false,
            pipelining_violation: false,
            rcpt_count: 0,
            discarded: false,
            held: false,
            pending_defer: None,
            queue_id: None,
            esmtp: false,
            client_port: None,
            server_addr: None,
            server_port: None,
            instance: None,
            size: 0,
            sasl_method: None,
            sasl_sender: None,
            tls_protocol: None,
            tls_cipher: None,
            tls_keysize: 0,
            ccert: None,
            stress: false,
        }
    }
}

/// A side effect an access table asked for. They concern the whole
/// message; the session keeps them across the commands of the transaction
/// (HOLD once, the last FILTER and REDIRECT win, every BCC and PREPEND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put the message on hold; the optional text of the table entry.
    Hold(String),
    /// Accept and drop the whole message; the optional text.
    Discard(String),
    /// `transport:nexthop` for the content filter.
    Filter(String),
    /// Replace all recipients with this address.
    Redirect(String),
    /// Add this recipient.
    Bcc(String),
    /// Prepend this header line.
    Prepend(String),
    /// `sleep N`: pause this many seconds before replying.
    Sleep(u64),
    /// The access table said HANGUP (Postfix's unsupported test feature):
    /// close the connection without a reply.
    Hangup,
}

/// A log line the decision asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// Logged as `warning: TEXT`.
    Warning(String),
    /// Logged as `TEXT`.
    Info(String),
    /// An event about the request (`reject_warning`, `warn`, `info`,
    /// `hold`, `discard`, `filter`, `redirect`, `bcc`, `permit`), logged
    /// with [`Event::line`]. The final reject of a decision is not one of
    /// them: the session logs the reply it sends.
    Event(Event),
}

impl Log {
    /// The text to log, without the `program[pid]: ` prefix: `warning: `
    /// before warnings, [`Event::line`] for events.
    pub fn line(&self, queue_id: Option<&str>, command: &str, protocol: Option<&str>) -> String {
        match self {
            Log::Warning(w) => format!("warning: {w}"),
            Log::Info(i) => i.clone(),
            Log::Event(e) => e.line(queue_id, command, protocol),
        }
    }
}

/// One `QUEUEID: what: CMD from name[addr]: text; from=<> to=<> proto= helo=<>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub what: &'static str,
    pub text: String,
    /// `name[addr]`.
    pub client: String,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub helo: Option<String>,
}

impl Event {
    /// The line as Postfix's smtpd logs it: `queue_id` (`NOQUEUE` when
    /// none), the command being processed (`RCPT`, `CONNECT`, `EHLO`, ...)
    /// and the protocol (`ESMTP`, `SMTP`) are the session's.
    pub fn line(&self, queue_id: Option<&str>, command: &str, protocol: Option<&str>) -> String {
        let mut s = format!(
            "{}: {}: {} from {}: {};",
            queue_id.unwrap_or("NOQUEUE"),
            self.what,
            command,
            self.client,
            self.text
        );
        if let Some(f) = &self.sender {
            s.push_str(&format!(" from=<{}>", libmail::address::external(f)));
        }
        if let Some(t) = &self.recipient {
            s.push_str(&format!(" to=<{}>", libmail::address::external(t)));
        }
        if let Some(p) = protocol {
            s.push_str(&format!(" proto={p}"));
        }
        if let Some(h) = &self.helo {
            s.push_str(&format!(" helo=<{h}>"));
        }
        s
    }
}

/// Postfix's error classes (they decide what `warn_if_reject` may soften).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Policy,
    Protocol,
    Bounce,
    Software,
    Data,
}

/// A `defer_if_permit` waiting for a permit to turn into a deferral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDefer {
    class: ErrorClass,
    code: u16,
    dsn: String,
    text: String,
}

/// The answer for one stage.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// `None`: this stage permits. Otherwise the reply to send instead of
    /// the success reply (a 4xx or 5xx).
    pub reply: Option<Reply>,
    pub actions: Vec<Action>,
    pub log: Vec<Log>,
    /// A `defer_if_permit` still pending after a client, HELO or sender
    /// stage (`smtpd_delay_reject = no`): pass it in the next stage's
    /// [`Facts::pending_defer`].
    pub pending_defer: Option<PendingDefer>,
}

impl Decision {
    /// 421 and 521 replies end the session after they are sent.
    pub fn hangup(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|r| r.code == 421 || r.code == 521)
            || self.actions.contains(&Action::Hangup)
    }

    /// Whether a DISCARD was decided.
    pub fn discard(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Discard(_)))
    }
}

/// One token of a restriction list, with its name looked up once.
#[derive(Debug, Clone)]
struct Tok {
    text: String,
    kind: Option<Kind>,
}

fn tokens(value: &str) -> Vec<Tok> {
    split_list(value)
        .into_iter()
        .map(|t| Tok {
            text: t.to_string(),
            kind: names::lookup(t),
        })
        .collect()
}

/// What a bare `type:table` in a list means (`def_acl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefAcl {
    Client,
    Helo,
    Sender,
    Recipient,
    Etrn,
    None,
}

impl DefAcl {
    fn kind(self) -> Option<Kind> {
        match self {
            DefAcl::Client => Some(Kind::CheckClientAccess),
            DefAcl::Helo => Some(Kind::CheckHeloAccess),
            DefAcl::Sender => Some(Kind::CheckSenderAccess),
            DefAcl::Recipient => Some(Kind::CheckRecipientAccess),
            DefAcl::Etrn => Some(Kind::CheckEtrnAccess),
            DefAcl::None => None,
        }
    }
}

/// What is rejected, as the reply names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Client,
    ReverseClient,
    SaslUser,
    Helo,
    Sender,
    Recipient,
    Etrn,
    Data,
    EndOfData,
    Ccert,
}

impl What {
    fn label(self) -> &'static str {
        match self {
            What::Client => "Client host",
            What::ReverseClient => "Unverified Client host",
            What::SaslUser => "SASL login name",
            What::Helo => "Helo command",
            What::Sender => "Sender address",
            What::Recipient => "Recipient address",
            What::Etrn => "Etrn command",
            What::Data => "Data command",
            What::EndOfData => "End-of-data",
            What::Ccert => "Client certificate",
        }
    }
}

/// The command being answered (Postfix's `state->where`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Etrn,
}

/// Reply codes, from their parameters.
#[derive(Debug, Clone)]
struct Codes {
    reject: u16,
    defer: u16,
    map_reject: u16,
    map_defer: u16,
    relay: u16,
    non_fqdn: u16,
    bad_name: u16,
    plaintext: u16,
    local_rcpt: u16,
    virtual_alias: u16,
    virtual_mailbox: u16,
    relay_rcpt: u16,
    multi_rcpt: u16,
    unknown_client: u16,
    unknown_helo: u16,
}

/// The recipient and sender validation tables.
struct RcptMaps {
    local: Option<Maps>,
    virtual_alias: Option<Maps>,
    virtual_mailbox: Option<Maps>,
    relay: Option<Maps>,
    canonical: Option<Maps>,
    recipient_canonical: Option<Maps>,
    sender_canonical: Option<Maps>,
}

/// Which actions `smtpd_log_access_permit_actions` logs.
struct PermitLog {
    names: Vec<String>,
    tables: Vec<Maps>,
}

impl PermitLog {
    fn matches(&self, action: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(action))
            || self.tables.iter().any(|m| {
                m.find_first(&[Key {
                    text: action.to_ascii_lowercase(),
                    whole: true,
                }])
                .ok()
                .flatten()
                .is_some()
            })
    }
}

/// The restrictions of one configuration, with every table open.
pub struct Restrictions {
    client: Vec<Tok>,
    helo: Vec<Tok>,
    sender: Vec<Tok>,
    relay: Vec<Tok>,
    recipient: Vec<Tok>,
    data: Vec<Tok>,
    end_of_data: Vec<Tok>,
    etrn: Vec<Tok>,
    classes: HashMap<String, Vec<Tok>>,
    /// Every `type:table` named in a list or class, by its text.
    tables: HashMap<String, Maps>,
    resolver: Arc<Resolver>,
    mynetworks: NetworkList,
    inet_interfaces: Vec<IpAddr>,
    mx_backup: MxBackup,
    relay_domains: Option<DomainList>,
    rcpt_maps: RcptMaps,
    sender_login_maps: Option<Maps>,
    /// `relay_clientcerts` (for `permit_tls_clientcerts`).
    relay_ccerts: Option<Maps>,
    /// `smtpd_tls_ask_ccert` (or `smtpd_tls_req_ccert`): without it the
    /// certificate restrictions warn.
    ask_ccert: bool,
    permit_log: PermitLog,
    codes: Codes,
    soft_bounce: bool,
    delay_reject: bool,
    relay_before_recipient: bool,
    reject_unlisted_recipient: bool,
    reject_unlisted_sender: bool,
    show_table_name: bool,
    allow_untrusted_routing: bool,
    swap_bangpath: bool,
    percent_hack: bool,
    sasl_enabled: bool,
    proxy_filter: bool,
    null_key: String,
    delimiters: String,
    double_bounce: String,
    access_parent_matches: bool,
    policy: policy::Policy,
    dnsbl: DnsSettings,
    warnings: Vec<String>,
}

/// The DNS restrictions' resolver and replies.
struct DnsSettings {
    /// The resolver: made at load when a list or class names a DNS
    /// restriction, else on first need (an access table's result may name
    /// one), once; an error is kept and given to every lookup.
    dns: OnceLock<Result<Dns, String>>,
    /// What the resolver is made from, read at load (an error there is
    /// fatal when a list uses DNS, else kept for the first lookup).
    setup: Result<DnsSetup, String>,
    rbl_code: u16,
    unknown_addr_code: u16,
    /// `default_rbl_reply`, unexpanded.
    default_rbl_reply: String,
    rbl_reply_maps: Option<Maps>,
    /// `maps_rbl_domains`, for the deprecated `reject_maps_rbl`.
    maps_rbl_domains: Vec<String>,
}

/// What `permit_mx_backup` needs besides the resolver.
struct MxBackup {
    /// This machine's addresses (Postfix's own_inet_addr and
    /// proxy_inet_addr): made at load when a list or class names
    /// permit_mx_backup, else on first need (an access table's result may
    /// name it), once; an error is kept and ends every such decision.
    local: OnceLock<Result<Vec<IpAddr>, String>>,
    /// `inet_interfaces` and `proxy_interfaces`, what `local` is made of.
    inet_interfaces: String,
    proxy_interfaces: String,
    /// `permit_mx_backup_networks`; `None` when empty (no limit).
    networks: Option<NetworkList>,
}

/// The DNS restrictions' resolver, or why there is none (its every lookup
/// then a temporary failure).
#[derive(Clone, Copy)]
struct Lookups<'r>(Result<&'r Dns, &'r str>);

impl Lookups<'_> {
    fn dns(&self) -> Result<&Dns, DnsError> {
        self.0.map_err(|e| DnsError::Temporary(e.to_string()))
    }

    fn a(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
        self.dns()?.a(name)
    }

    fn aaaa(&self, name: &str) -> Result<Vec<std::net::Ipv6Addr>, DnsError> {
        self.dns()?.aaaa(name)
    }

    fn mx(&self, name: &str) -> Result<Vec<libmail::dns::Mx>, DnsError> {
        self.dns()?.mx(name)
    }

    fn ns(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.dns()?.ns(name)
    }

    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.dns()?.txt(name)
    }
}

/// The parameters the DNS restrictions' resolver is made with.
struct DnsSetup {
    /// `facteur_dns_servers` (empty: the system's), read as
    /// [`Dns::from_params`] reads it.
    servers: Vec<SocketAddr>,
    /// The address families `inet_protocols` enables (IPv4, IPv6): the
    /// addresses `check_*_{a,mx,ns}_access` look up.
    ipv4: bool,
    ipv6: bool,
}

impl DnsSetup {
    fn from_params(params: &Params) -> Result<DnsSetup, String> {
        let servers = libmail::dns::servers_from_params(params)?;
        let (ipv4, ipv6) = libmail::config::host::protocols(&value(params, "inet_protocols")?)
            .map_err(|e| format!("inet_protocols: {e}"))?;
        Ok(DnsSetup {
            servers,
            ipv4,
            ipv6,
        })
    }

    /// The resolver, as [`Dns::from_params`] makes it.
    fn resolver(&self) -> Result<Dns, String> {
        Dns::for_servers(&self.servers)
    }
}

impl std::fmt::Debug for Restrictions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restrictions")
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .field("delay_reject", &self.delay_reject)
            .finish_non_exhaustive()
    }
}

/// The lists, by parameter name, in the order [`Restrictions`] keeps them.
const LISTS: &[&str] = &[
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
    "smtpd_etrn_restrictions",
];

fn value(params: &Params, name: &str) -> Result<String, String> {
    params.value(name).map_err(|e| format!("{name}: {e}"))
}

fn code(params: &Params, name: &str) -> Result<u16, String> {
    let v = value(params, name)?;
    parse_number(&v)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("bad numerical configuration: {name} = {v}"))
}

fn flag(params: &Params, name: &str) -> Result<bool, String> {
    let v = value(params, name)?;
    parse_bool(v.trim()).ok_or_else(|| format!("bad boolean configuration: {name} = {v}"))
}

fn open_maps(params: &Params, name: &str) -> Result<Option<Maps>, String> {
    let v = value(params, name)?;
    if v.trim().is_empty() {
        return Ok(None);
    }
    Maps::open(name, &v, &OpenOptions::default())
        .map(Some)
        .map_err(|e| e.to_string())
}

impl Restrictions {
    /// Reads every restriction list and class, opens every table they name
    /// and the validation tables, and refuses a configuration without
    /// relay control. Errors name the parameter.
    pub fn from_params(params: &Params, resolver: Arc<Resolver>) -> Result<Restrictions, String> {
        let mut warnings = Vec::new();
        let mut lists: Vec<Vec<Tok>> = Vec::new();
        let mut tables: HashMap<String, Maps> = HashMap::new();
        let mut open_tables = |param: &str, toks: &[Tok]| -> Result<(), String> {
            let mut after_policy = false;
            for t in toks {
                let is_table = t.text.contains(':') && !t.text.starts_with('{');
                if is_table && !after_policy && !tables.contains_key(&t.text) {
                    let maps = Maps::open(param, &t.text, &OpenOptions::default())
                        .map_err(|e| e.to_string())?;
                    tables.insert(t.text.clone(), maps);
                }
                after_policy = t.text.eq_ignore_ascii_case("check_policy_service");
            }
            Ok(())
        };
        for name in LISTS {
            let toks = tokens(&value(params, name)?);
            open_tables(name, &toks)?;
            lists.push(toks);
        }
        let mut classes = HashMap::new();
        for class in split_list(&value(params, "smtpd_restriction_classes")?) {
            let def = params.value(class).unwrap_or_default();
            if def.trim().is_empty() {
                return Err(format!("restriction class `{class}' needs a definition"));
            }
            let toks = tokens(&def);
            open_tables(class, &toks)?;
            classes.insert(class.to_string(), toks);
        }

        // Warnings given once: restrictions not supported yet, and
        // Postfix's own once-per-process deprecation notes.
        let mut used: Vec<&Tok> = lists.iter().flatten().collect();
        used.extend(classes.values().flatten());
        let uses = |k: Kind| used.iter().any(|t| t.kind == Some(k));
        let mut seen = Vec::new();
        for t in &used {
            if let Some(Kind::Unsupported(_)) = t.kind {
                let lower = t.text.to_ascii_lowercase();
                if !seen.contains(&lower) {
                    warnings.push(names::unsupported_warning(&t.text));
                    seen.push(lower);
                }
            }
        }
        if uses(Kind::RejectMapsRbl) {
            warnings.push(
                "support for restriction \"reject_maps_rbl\" will be removed from \
                 Postfix; use \"reject_rbl_client domain-name\" instead"
                    .to_string(),
            );
        }
        if uses(Kind::CheckRelayDomains) {
            warnings.push(
                "support for restriction \"check_relay_domains\" will be removed from \
                 Postfix; use \"reject_unauth_destination\" instead"
                    .to_string(),
            );
        }

        // Relay control is mandatory.
        let index = |n: &str| LISTS.iter().position(|l| *l == n).unwrap_or(0);
        let relay_idx = index("smtpd_relay_restrictions");
        let rcpt_idx = index("smtpd_recipient_restrictions");
        if !has_required(&lists[rcpt_idx], &classes, 0, &mut warnings)
            && !has_required(&lists[relay_idx], &classes, 0, &mut warnings)
        {
            return Err(names::relay_control_error());
        }

        let parents = value(params, "parent_domain_matches_subdomains")?;
        let mynetworks =
            NetworkList::from_param(params, "mynetworks").map_err(|e| e.to_string())?;
        warnings.extend(mynetworks.warnings().iter().cloned());
        let inet_interfaces = if uses(Kind::PermitInetInterfaces) {
            libmail::config::host::listen_interfaces(
                &value(params, "inet_interfaces")?,
                &libmail::config::host::interface_addresses(),
            )?
            .into_iter()
            .map(|i| i.addr)
            .collect()
        } else {
            Vec::new()
        };
        let mx_backup = {
            let inet_interfaces = value(params, "inet_interfaces")?;
            let proxy_interfaces = value(params, "proxy_interfaces")?;
            let local = OnceLock::new();
            if uses(Kind::PermitMxBackup) {
                let _ = local.set(Ok(libmail::config::host::own_addresses(
                    &inet_interfaces,
                    &proxy_interfaces,
                )?));
            }
            let networks = if value(params, "permit_mx_backup_networks")?
                .trim()
                .is_empty()
            {
                None
            } else {
                let n = NetworkList::from_param(params, "permit_mx_backup_networks")
                    .map_err(|e| e.to_string())?;
                warnings.extend(n.warnings().iter().cloned());
                Some(n)
            };
            MxBackup {
                local,
                inet_interfaces,
                proxy_interfaces,
                networks,
            }
        };
        let relay_domains = if uses(Kind::CheckRelayDomains) {
            Some(DomainList::from_param(params, "relay_domains").map_err(|e| e.to_string())?)
        } else {
            None
        };
        let permit_log = {
            let mut names = Vec::new();
            let mut tables = Vec::new();
            for item in split_list(&value(params, "smtpd_log_access_permit_actions")?) {
                if item.contains(':') {
                    tables.push(
                        Maps::open(
                            "smtpd_log_access_permit_actions",
                            item,
                            &OpenOptions::default(),
                        )
                        .map_err(|e| e.to_string())?,
                    );
                } else {
                    names.push(item.to_string());
                }
            }
            PermitLog { names, tables }
        };
        // A list or class naming a DNS restriction gets its resolver now
        // (errors are fatal); otherwise only an access table's result can
        // name one, and the resolver is made when that first happens.
        let uses_dns = used.iter().any(|t| t.kind.is_some_and(Kind::uses_dns));
        let setup = DnsSetup::from_params(params);
        let dns = OnceLock::new();
        if uses_dns {
            let _ = dns.set(Ok(setup.as_ref().map_err(String::clone)?.resolver()?));
        }
        let dnsbl = DnsSettings {
            dns,
            setup,
            rbl_code: code(params, "maps_rbl_reject_code")?,
            unknown_addr_code: code(params, "unknown_address_reject_code")?,
            default_rbl_reply: params.raw("default_rbl_reply").unwrap_or_default(),
            rbl_reply_maps: open_maps(params, "rbl_reply_maps")?,
            maps_rbl_domains: params
                .value("maps_rbl_domains")
                .map(|v| split_list(&v).into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        let policy = policy::Policy::from_lists(
            lists
                .iter()
                .map(Vec::as_slice)
                .chain(classes.values().map(Vec::as_slice)),
            params,
        )?;
        let mut it = lists.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(Restrictions {
            client: next(),
            helo: next(),
            sender: next(),
            relay: next(),
            recipient: next(),
            data: next(),
            end_of_data: next(),
            etrn: next(),
            classes,
            tables,
            resolver,
            mynetworks,
            inet_interfaces,
            mx_backup,
            relay_domains,
            rcpt_maps: RcptMaps {
                local: open_maps(params, "local_recipient_maps")?,
                virtual_alias: open_maps(params, "virtual_alias_maps")?,
                virtual_mailbox: open_maps(params, "virtual_mailbox_maps")?,
                relay: open_maps(params, "relay_recipient_maps")?,
                canonical: open_maps(params, "canonical_maps")?,
                recipient_canonical: open_maps(params, "recipient_canonical_maps")?,
                sender_canonical: open_maps(params, "sender_canonical_maps")?,
            },
            sender_login_maps: open_maps(params, "smtpd_sender_login_maps")?,
            relay_ccerts: open_maps(params, "relay_clientcerts")?,
            ask_ccert: flag(params, "smtpd_tls_ask_ccert")? || flag(params, "smtpd_tls_req_ccert")?,
            permit_log,
            codes: Codes {
                reject: code(params, "reject_code")?,
                defer: code(params, "defer_code")?,
                map_reject: code(params, "access_map_reject_code")?,
                map_defer: code(params, "access_map_defer_code")?,
                relay: code(params, "relay_domains_reject_code")?,
                non_fqdn: code(params, "non_fqdn_reject_code")?,
                bad_name: code(params, "invalid_hostname_reject_code")?,
                plaintext: code(params, "plaintext_reject_code")?,
                local_rcpt: code(params, "unknown_local_recipient_reject_code")?,
                virtual_alias: code(params, "unknown_virtual_alias_reject_code")?,
                virtual_mailbox: code(params, "unknown_virtual_mailbox_reject_code")?,
                relay_rcpt: code(params, "unknown_relay_recipient_reject_code")?,
                multi_rcpt: code(params, "multi_recipient_bounce_reject_code")?,
                unknown_client: code(params, "unknown_client_reject_code")?,
                unknown_helo: code(params, "unknown_hostname_reject_code")?,
            },
            soft_bounce: flag(params, "soft_bounce")?,
            delay_reject: flag(params, "smtpd_delay_reject")?,
            relay_before_recipient: flag(params, "smtpd_relay_before_recipient_restrictions")?,
            // receive_override_options = no_unknown_recipient_checks
            // (a service that takes mail back from a content filter)
            // skips the implicit check; an explicit restriction stays.
            reject_unlisted_recipient: flag(params, "smtpd_reject_unlisted_recipient")?
                && !libmail::ipc::cleanup::receive_override_names(
                    &params.value("receive_override_options").unwrap_or_default(),
                    "no_unknown_recipient_checks",
                ),
            reject_unlisted_sender: flag(params, "smtpd_reject_unlisted_sender")?,
            show_table_name: flag(params, "show_user_unknown_table_name")?,
            allow_untrusted_routing: flag(params, "allow_untrusted_routing")?,
            swap_bangpath: flag(params, "swap_bangpath")?,
            percent_hack: flag(params, "allow_percent_hack")?,
            sasl_enabled: flag(params, "smtpd_sasl_auth_enable")?,
            proxy_filter: !value(params, "smtpd_proxy_filter")?.trim().is_empty(),
            null_key: value(params, "smtpd_null_access_lookup_key")?,
            delimiters: value(params, "recipient_delimiter")?,
            double_bounce: value(params, "double_bounce_sender")?,
            access_parent_matches: split_list(&parents).contains(&"smtpd_access_maps"),
            policy,
            dnsbl,
            warnings,
        })
    }

    /// Problems found while loading that did not stop it (restrictions not
    /// supported yet, deprecated names, ignored list items), each worded
    /// for a `warning:` line. The daemon logs them once at start.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `smtpd_delay_reject`.
    pub fn delay_reject(&self) -> bool {
        self.delay_reject
    }

    /// Whether `smtpd_end_of_data_restrictions` has anything to run (and
    /// so may still REDIRECT or BCC once the content is in).
    pub fn has_end_of_data(&self) -> bool {
        !self.end_of_data.is_empty()
    }

    /// Whether a decision may wait on the network: a DNS restriction
    /// (its resolver exists once a list, a class or an access table's
    /// result named one), a policy service, or a table whose lookups may
    /// block. smtpd asks only such decisions where blocking is allowed.
    pub fn may_block(&self) -> bool {
        let r = &self.rcpt_maps;
        self.dnsbl.dns.get().is_some()
            || self.policy.configured()
            || self.mynetworks.may_block()
            || self
                .mx_backup
                .networks
                .as_ref()
                .is_some_and(NetworkList::may_block)
            || self.tables.values().any(Maps::may_block)
            || [
                &r.local,
                &r.virtual_alias,
                &r.virtual_mailbox,
                &r.relay,
                &r.canonical,
                &r.recipient_canonical,
                &r.sender_canonical,
                &self.sender_login_maps,
                &self.relay_ccerts,
                &self.dnsbl.rbl_reply_maps,
            ]
            .into_iter()
            .flatten()
            .chain(&self.permit_log.tables)
            .any(Maps::may_block)
    }

    /// The decision for one stage (see [`Stage`]).
    pub fn check(&self, stage: Stage, facts: &Facts) -> Decision {
        match stage {
            Stage::Relay | Stage::Recipient => self.check_rcpt(facts),
            Stage::Client => {
                let mut ev = Eval::new(self, facts, Cmd::Connect);
                let r = ev.client_stage(None);
                ev.finish(r)
            }
            Stage::Helo => {
                let mut ev = Eval::new(self, facts, Cmd::Helo);
                let r = ev.helo_stage(facts.pending_defer.cloned());
                ev.finish(r)
            }
            Stage::Sender => {
                let mut ev = Eval::new(self, facts, Cmd::Mail);
                let r = ev.sender_stage(facts.pending_defer.cloned());
                ev.finish(r)
            }
            Stage::Etrn => {
                let mut ev = Eval::new(self, facts, Cmd::Etrn);
                let r = ev.etrn_stage();
                ev.finish(r)
            }
            Stage::Data => {
                let mut ev = Eval::new(self, facts, Cmd::Data);
                let r = ev.data_stage(&self.data, "DATA", What::Data);
                ev.finish(r)
            }
            Stage::EndOfData => {
                let mut ev = Eval::new(self, facts, Cmd::EndOfData);
                let r = ev.data_stage(&self.end_of_data, "END-OF-MESSAGE", What::EndOfData);
                ev.finish(r)
            }
        }
    }

    /// The decision at RCPT TO: with `smtpd_delay_reject = yes` the client,
    /// HELO and sender lists, then the relay and recipient lists in
    /// Postfix's order, the pending `defer_if_permit`, and the implicit
    /// `reject_unlisted_recipient`; with `= no` only the RCPT part.
    pub fn check_rcpt(&self, facts: &Facts) -> Decision {
        let mut ev = Eval::new(self, facts, Cmd::Rcpt);
        let r = ev.rcpt_stage();
        ev.finish(r)
    }
}

/// `has_required`: whether a list (with its classes) holds relay control.
/// A `permit` ends the search; `warn_if_reject X` does not count `X`.
fn has_required(
    list: &[Tok],
    classes: &HashMap<String, Vec<Tok>>,
    depth: usize,
    warnings: &mut Vec<String>,
) -> bool {
    if depth > MAX_RECURSION {
        return false;
    }
    let mut i = 0;
    while i < list.len() {
        let t = &list[i].text;
        if list[i].kind == Some(Kind::WarnIfReject) && i + 1 < list.len() {
            i += 2;
            continue;
        }
        if list[i].kind == Some(Kind::Permit) {
            if let Some(next) = list.get(i + 1) {
                let w = format!("restriction `{}' after `{t}' is ignored", next.text);
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            return false;
        }
        if names::RELAY_CONTROL
            .iter()
            .any(|r| r.eq_ignore_ascii_case(t))
        {
            return true;
        }
        if let Some(c) = classes.get(t) {
            if has_required(c, classes, depth + 1, warnings) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// A restriction's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Dunno,
    Ok,
    Reject,
}

/// Evaluation stopped with a reply already made (Postfix's longjmp out of
/// smtpd_check: configuration or lookup errors).
#[derive(Debug)]
struct Abort;

type Res = Result<Status, Abort>;

/// One decision in the making: Postfix's per-request smtpd_check state.
struct Eval<'r, 'f> {
    r: &'r Restrictions,
    f: &'f Facts<'f>,
    cmd: Cmd,
    /// The client address, IPv4-mapped IPv6 turned into IPv4; `None`
    /// when unknown.
    addr: Option<IpAddr>,
    /// What `state->sender` / `state->recipient` show (the recipient is
    /// hidden at DATA with several recipients).
    sender: Option<&'f str>,
    recipient: Option<&'f str>,
    recursion: usize,
    warn_if_reject: usize,
    defer_if_permit: Option<PendingDefer>,
    defer_if_reject: Option<PendingDefer>,
    discard: bool,
    held: bool,
    recipient_checked: bool,
    sender_checked: bool,
    reply: Option<Reply>,
    out: Decision,
    /// Addresses resolved during this decision (Postfix caches them too).
    resolved: Vec<(String, Option<Resolved>)>,
}

impl<'r, 'f> Eval<'r, 'f> {
    fn new(r: &'r Restrictions, f: &'f Facts<'f>, cmd: Cmd) -> Eval<'r, 'f> {
        Eval {
            r,
            f,
            cmd,
            addr: f.client_addr.map(|a| a.to_canonical()),
            sender: f.sender,
            recipient: f.recipient,
            recursion: 0,
            warn_if_reject: 0,
            defer_if_permit: None,
            defer_if_reject: None,
            discard: f.discarded,
            held: f.held,
            recipient_checked: false,
            sender_checked: false,
            reply: None,
            out: Decision::default(),
            resolved: Vec::new(),
        }
    }

    /// The address resolved (class, transport, canonical form), or `None`
    /// when a table behind the resolver failed.
    fn resolve(&mut self, addr: &str) -> Result<Resolved, ()> {
        if let Some((_, r)) = self.resolved.iter().find(|(a, _)| a == addr) {
            return r.clone().ok_or(());
        }
        let r = self.r.resolver.resolve(addr).ok();
        if self.resolved.len() < MAX_RESOLVED {
            self.resolved.push((addr.to_string(), r.clone()));
        }
        r.ok_or(())
    }

    fn finish(mut self, status: Status) -> Decision {
        if status == Status::Reject {
            self.out.reply = self.reply.take();
        }
        self.out
    }

    fn namaddr(&self) -> String {
        format!("{}[{}]", self.f.client_name, self.addr_text())
    }

    /// The client address as replies, tables and policy servers see it:
    /// `unknown` when XCLIENT made it unavailable.
    fn addr_text(&self) -> String {
        libmail::address::networks::addr_or_unknown(self.addr)
    }

    fn warn(&mut self, text: impl Into<String>) {
        self.out.log.push(Log::Warning(text.into()));
    }

    fn event(&mut self, what: &'static str, text: String) {
        let e = Event {
            what,
            text,
            client: self.namaddr(),
            sender: self.sender.map(str::to_string),
            recipient: self.recipient.map(str::to_string),
            helo: self.f.helo.map(str::to_string),
        };
        self.out.log.push(Log::Event(e));
    }

    /// SMTPD_CHECK_RESET.
    fn reset(&mut self) {
        self.recursion = 0;
        self.warn_if_reject = 0;
        self.defer_if_reject = None;
    }

    fn run(&mut self, list: &[Tok], name: &str, what: What, def: DefAcl) -> Status {
        if list.is_empty() {
            return Status::Dunno;
        }
        self.generic(list, name, what, def)
            .unwrap_or(Status::Reject)
    }

    // ----- the stages (smtpd_check_client, _helo, _mail, _rcpt, ...) -----

    fn client_stage(&mut self, start: Option<PendingDefer>) -> Status {
        self.defer_if_permit = start;
        self.reset();
        let name = self.namaddr();
        let s = self.run(&self.r.client, &name, What::Client, DefAcl::Client);
        self.out.pending_defer = self.defer_if_permit.clone();
        s
    }

    fn helo_stage(&mut self, start: Option<PendingDefer>) -> Status {
        self.defer_if_permit = start;
        let Some(helo) = self.f.helo else {
            self.out.pending_defer = self.defer_if_permit.clone();
            return Status::Dunno;
        };
        self.reset();
        let s = self.run(&self.r.helo, helo, What::Helo, DefAcl::Helo);
        self.out.pending_defer = self.defer_if_permit.clone();
        s
    }

    fn sender_stage(&mut self, start: Option<PendingDefer>) -> Status {
        self.defer_if_permit = start;
        let Some(sender) = self.sender else {
            self.out.pending_defer = self.defer_if_permit.clone();
            return Status::Dunno;
        };
        self.sender_checked = false;
        self.reset();
        let mut s = self.run(&self.r.sender, sender, What::Sender, DefAcl::Sender);
        self.out.pending_defer = self.defer_if_permit.clone();
        if self.r.reject_unlisted_sender
            && s != Status::Reject
            && !self.sender_checked
            && !self.discard
            && !sender.is_empty()
        {
            s = self.sender_rcpt_maps(sender).unwrap_or(Status::Reject);
        }
        s
    }

    fn rcpt_stage(&mut self) -> Status {
        let Some(rcpt) = self.recipient else {
            return Status::Dunno;
        };
        if rcpt.eq_ignore_ascii_case("postmaster") {
            return Status::Dunno;
        }
        self.recipient_checked = false;
        let start = match self.delayed_stages(true) {
            Ok(s) => s,
            Err(reject) => return reject,
        };
        self.defer_if_permit = start;
        self.reset();
        let lists: [&[Tok]; 2] = if self.r.relay_before_recipient {
            [&self.r.relay, &self.r.recipient]
        } else {
            [&self.r.recipient, &self.r.relay]
        };
        let mut status = Status::Dunno;
        for list in lists {
            status = self.run(list, rcpt, What::Recipient, DefAcl::Recipient);
            if status == Status::Reject {
                break;
            }
        }
        status = self.apply_defer_if_permit(status);
        if self.r.reject_unlisted_recipient
            && status != Status::Reject
            && !self.recipient_checked
            && !self.discard
        {
            status = self.recipient_rcpt_maps(rcpt).unwrap_or(Status::Reject);
        }
        status
    }

    /// With `smtpd_delay_reject`, the client and HELO lists (and the
    /// sender list, `with_sender`) run first, each handing its pending
    /// `defer_if_permit` to the next; without it, the one the session
    /// kept from the earlier command. `Err` is their reject.
    fn delayed_stages(&mut self, with_sender: bool) -> Result<Option<PendingDefer>, Status> {
        let start = if self.r.delay_reject {
            if self.client_stage(None) == Status::Reject {
                return Err(Status::Reject);
            }
            let c = self.out.pending_defer.clone();
            if self.helo_stage(c) == Status::Reject {
                return Err(Status::Reject);
            }
            if with_sender {
                let h = self.out.pending_defer.clone();
                if self.sender_stage(h) == Status::Reject {
                    return Err(Status::Reject);
                }
            }
            self.out.pending_defer.clone()
        } else {
            self.f.pending_defer.cloned()
        };
        self.out.pending_defer = None;
        Ok(start)
    }

    fn etrn_stage(&mut self) -> Status {
        let Some(domain) = self.f.etrn_domain else {
            return Status::Dunno;
        };
        let start = match self.delayed_stages(false) {
            Ok(s) => s,
            Err(reject) => return reject,
        };
        self.defer_if_permit = start;
        self.reset();
        let status = self.run(&self.r.etrn, domain, What::Etrn, DefAcl::Etrn);
        self.apply_defer_if_permit(status)
    }

    fn data_stage(&mut self, list: &[Tok], name: &str, what: What) -> Status {
        if self.f.rcpt_count > 1 {
            self.recipient = None;
        }
        self.defer_if_permit = None;
        self.reset();
        let status = self.run(list, name, what, DefAcl::None);
        self.apply_defer_if_permit(status)
    }

    /// A permit with a pending `defer_if_permit` becomes that deferral.
    fn apply_defer_if_permit(&mut self, status: Status) -> Status {
        if status == Status::Reject {
            return status;
        }
        match self.defer_if_permit.take() {
            Some(d) => self.reject(d.class, d.code, &d.dsn, d.text),
            None => status,
        }
    }

    // ----- replies (smtpd_check_reject, defer_if, errors) -----

    /// Rejects (or, under `warn_if_reject`, only logs): Postfix's
    /// smtpd_check_reject with its reply-code checks, the `defer_if_reject`
    /// safety net, `soft_bounce` and the 510-character limit.
    fn reject(&mut self, class: ErrorClass, code: u16, dsn: &str, text: String) -> Status {
        let warn_only =
            self.warn_if_reject > 0 && !matches!(class, ErrorClass::Software | ErrorClass::Data);
        let (mut code, mut dsn, mut text) = (code, dsn.to_string(), text);
        if !(400..=599).contains(&code) {
            self.warn(format!(
                "SMTP reply code configuration error: {code} {dsn} {text}"
            ));
            (code, dsn, text) = (450, "4.7.1".into(), "Service unavailable".into());
        }
        if syntax::dsn_len(&dsn) != dsn.len() {
            self.warn(format!(
                "DSN detail code configuration error: {code} {dsn} {text}"
            ));
            (code, dsn, text) = (450, "4.7.1".into(), "Service unavailable".into());
        }
        if !warn_only && code >= 500 {
            if let Some(d) = self.defer_if_reject.take() {
                self.warn_if_reject = 0;
                return self.reject(d.class, d.code, &d.dsn, d.text);
            }
        }
        if self.r.soft_bounce && code >= 500 {
            code -= 100;
        }
        let reply = Reply::new(code, &dsn, sanitize(&text, MAX_REPLY - 4 - dsn.len() - 1));
        if warn_only {
            self.event("reject_warning", reply.log_form());
            Status::Dunno
        } else {
            self.reply = Some(reply);
            Status::Reject
        }
    }

    /// DEFER_IF_PERMIT: remember the first reason; under `warn_if_reject`
    /// log it as a reject warning instead.
    fn defer_if_permit(&mut self, class: ErrorClass, code: u16, dsn: &str, text: String) -> Status {
        if self.warn_if_reject == 0 {
            if self.defer_if_permit.is_none() {
                self.defer_if_permit = Some(PendingDefer {
                    class,
                    code,
                    dsn: dsn.to_string(),
                    text,
                });
            }
            Status::Dunno
        } else {
            self.reject(class, code, dsn, text)
        }
    }

    /// DEFER_IF_REJECT: remember the first reason.
    fn defer_if_reject(&mut self, class: ErrorClass, code: u16, dsn: &str, text: String) {
        if self.defer_if_reject.is_none() {
            self.defer_if_reject = Some(PendingDefer {
                class,
                code,
                dsn: dsn.to_string(),
                text,
            });
        }
    }

    /// `451 4.3.5 Server configuration error`, ending the evaluation.
    fn server_error(&mut self) -> Abort {
        self.reject(
            ErrorClass::Software,
            451,
            "4.3.5",
            "Server configuration error".into(),
        );
        Abort
    }

    /// `451 4.3.0 <name>: Temporary lookup failure`, ending the evaluation.
    fn lookup_failure(&mut self, name: &str) -> Abort {
        self.reject(
            ErrorClass::Data,
            451,
            "4.3.0",
            format!("<{name}>: Temporary lookup failure"),
        );
        Abort
    }

    /// smtpd_dsn_fix, with its log line when the code changes.
    fn fix_dsn(&mut self, dsn: &str, what: What) -> String {
        let fixed = syntax::dsn_fix(dsn, what == What::Sender, what == What::Recipient);
        if fixed[2..] != dsn[2..] {
            self.out.log.push(Log::Info(format!(
                "mapping DSN status {dsn} into {} status {fixed}",
                what.label()
            )));
        }
        fixed
    }

    /// smtpd_acl_permit: PERMIT, logged when `smtpd_log_access_permit_actions`
    /// names the action.
    fn permit(&mut self, action: &str, what: What, name: &str, from: Option<&str>) -> Status {
        if self.defer_if_permit.is_none() && self.r.permit_log.matches(action) {
            // Postfix appends " " and its format even when the format is
            // empty, so restriction permits end in a space.
            let text = format!(
                "action={action} for {}={name} {}",
                what.label(),
                from.map_or(String::new(), |t| format!("from {t}"))
            );
            self.event("permit", text);
        }
        Status::Ok
    }

    // ----- generic_checks -----

    fn generic(&mut self, list: &[Tok], name: &str, what: What, def: DefAcl) -> Res {
        let saved = self.recursion;
        self.recursion += 1;
        if self.recursion > MAX_RECURSION + 1 {
            let first = list.first().map_or("", |t| t.text.as_str());
            self.warn(format!(
                "restriction list starting with \"{first}\" causes unreasonable recursion"
            ));
            return Err(self.server_error());
        }
        let result = self.generic_list(list, name, what, def);
        self.recursion = saved;
        if self.warn_if_reject >= self.recursion {
            self.warn_if_reject = 0;
        }
        result
    }

    fn generic_list(&mut self, list: &[Tok], name: &str, what: What, def: DefAcl) -> Res {
        let mut status = Status::Dunno;
        let mut i = 0;
        while i < list.len() {
            if self.discard {
                break;
            }
            let tok = &list[i];
            if tok.kind == Some(Kind::WarnIfReject) {
                if self.warn_if_reject == 0 {
                    self.warn_if_reject = self.recursion;
                }
                i += 1;
                continue;
            }
            // A bare `type:table` is the list's own check_*_access.
            let (kind, implicit) = if tok.text.contains(':') {
                match def.kind() {
                    Some(k) => (Some(k), true),
                    None => {
                        self.warn(format!(
                            "specify one of ({}) before {} restriction \"{}\"",
                            names::MAP_COMMANDS,
                            what.label(),
                            tok.text
                        ));
                        return Err(self.server_error());
                    }
                }
            } else {
                (tok.kind, false)
            };
            status = match kind {
                Some(k) => self.one(k, list, &mut i, implicit, name, what, def)?,
                None => match self.r.classes.get(&tok.text) {
                    Some(class) => self.generic(class, name, what, def)?,
                    None => {
                        self.warn(format!("unknown smtpd restriction: \"{}\"", tok.text));
                        return Err(self.server_error());
                    }
                },
            };
            if self.warn_if_reject >= self.recursion {
                self.warn_if_reject = 0;
            }
            if status != Status::Dunno {
                break;
            }
            if self.defer_if_permit.is_some() && self.defer_if_reject.is_some() {
                break;
            }
            i += 1;
        }
        Ok(status)
    }

    /// The table argument of a check_*_access at `list[*i]` (the token
    /// itself when it was a bare table), advancing `i` past it. A missing
    /// or malformed argument is a server error (is_map_command).
    fn map_arg<'l>(
        &mut self,
        list: &'l [Tok],
        i: &mut usize,
        implicit: bool,
    ) -> Result<&'l str, Abort> {
        if implicit {
            return Ok(&list[*i].text);
        }
        let command = list[*i].text.clone();
        match list.get(*i + 1) {
            Some(t) if t.text.contains(':') => {
                *i += 1;
                Ok(&t.text)
            }
            other => {
                let arg = other.map_or("", |t| t.text.as_str());
                if other.is_some() {
                    *i += 1;
                }
                self.warn(format!(
                    "restriction {command}: bad argument \"{arg}\": need maptype:mapname"
                ));
                Err(self.server_error())
            }
        }
    }

    fn warn_ignored_after(&mut self, list: &[Tok], i: usize, always: bool) {
        if let Some(next) = list.get(i + 1) {
            if always || self.warn_if_reject == 0 {
                let w = format!(
                    "restriction `{}' after `{}' is ignored",
                    next.text,
                    list[i].text.to_ascii_lowercase()
                );
                self.warn(w);
            }
        }
    }

    /// One restriction at `list[*i]`; `i` is advanced past its arguments.
    #[allow(clippy::too_many_arguments)]
    fn one(
        &mut self,
        kind: Kind,
        list: &[Tok],
        i: &mut usize,
        implicit: bool,
        name: &str,
        what: What,
        def: DefAcl,
    ) -> Res {
        let r = self.r;
        let label = what.label();
        Ok(match kind {
            Kind::WarnIfReject => Status::Dunno,
            Kind::Permit => {
                let s = self.permit("permit", what, name, None);
                self.warn_ignored_after(list, *i, true);
                s
            }
            Kind::Defer => {
                let s = self.reject(
                    ErrorClass::Policy,
                    r.codes.defer,
                    "4.3.2",
                    format!("<{name}>: {label} rejected: Try again later"),
                );
                self.warn_ignored_after(list, *i, false);
                s
            }
            Kind::Reject => {
                let s = self.reject(
                    ErrorClass::Policy,
                    r.codes.reject,
                    "5.7.1",
                    format!("<{name}>: {label} rejected: Access denied"),
                );
                self.warn_ignored_after(list, *i, false);
                s
            }
            Kind::RejectUnauthPipelining => {
                if self.f.pipelining_violation {
                    self.reject(
                        ErrorClass::Protocol,
                        503,
                        "5.5.0",
                        format!(
                            "<{name}>: {label} rejected: Improper use of SMTP command pipelining"
                        ),
                    )
                } else {
                    Status::Dunno
                }
            }
            Kind::DeferIfPermit => self.defer_if_permit(
                ErrorClass::Policy,
                450,
                "4.7.0",
                format!("<{name}>: {label} rejected: defer_if_permit requested"),
            ),
            Kind::DeferIfReject => {
                self.defer_if_reject(
                    ErrorClass::Policy,
                    450,
                    "4.7.0",
                    format!("<{name}>: {label} rejected: defer_if_reject requested"),
                );
                Status::Dunno
            }
            Kind::Sleep => {
                let arg = list.get(*i + 1).map(|t| t.text.as_str());
                match arg {
                    Some(n) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => {
                        *i += 1;
                        let secs = n.parse::<u64>().unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
                        self.out.actions.push(Action::Sleep(secs));
                        Status::Dunno
                    }
                    _ => {
                        self.warn("restriction sleep must be followed by number");
                        return Err(self.server_error());
                    }
                }
            }
            Kind::RejectPlaintextSession => {
                if self.f.tls {
                    Status::Dunno
                } else {
                    self.reject(
                        ErrorClass::Policy,
                        r.codes.plaintext,
                        "4.7.1",
                        "Session encryption is required".into(),
                    )
                }
            }
            Kind::PermitInetInterfaces => {
                if self.addr.is_some_and(|a| r.inet_interfaces.contains(&a)) {
                    let n = self.namaddr();
                    self.permit(&list[*i].text, What::Client, &n, None)
                } else {
                    Status::Dunno
                }
            }
            Kind::PermitMynetworks => {
                match r.mynetworks.matches(Some(self.f.client_name), self.addr) {
                    Ok(true) => {
                        let n = self.namaddr();
                        self.permit(&list[*i].text, What::Client, &n, None)
                    }
                    Ok(false) => Status::Dunno,
                    Err(e) => {
                        self.warn(format!("mynetworks: table lookup problem: {e}"));
                        return Err(match e {
                            TableError::Temporary(_) => {
                                let n = self.namaddr();
                                self.lookup_failure(&n)
                            }
                            TableError::Config(_) => self.server_error(),
                        });
                    }
                }
            }
            Kind::CheckClientAccess => {
                let table = self.map_arg(list, i, implicit)?;
                let n = self.namaddr();
                let client_name = self.f.client_name;
                self.namadr_access(table, client_name, &n, What::Client, def)?
            }
            Kind::CheckReverseClientAccess => {
                let table = self.map_arg(list, i, implicit)?;
                let rev = self.f.reverse_name;
                let s = self.namadr_access(table, rev, rev, What::ReverseClient, def)?;
                self.forbid_allowlist(&list[*i - 1].text, s, rev)?;
                s
            }
            Kind::CheckSaslAccess => {
                let table = self.map_arg(list, i, implicit)?;
                if !r.sasl_enabled {
                    self.warn(format!(
                        "restriction `{}' ignored: no SASL support",
                        list[*i - 1].text
                    ));
                    Status::Dunno
                } else {
                    match self.f.sasl_username.filter(|u| !u.is_empty()) {
                        Some(user) => {
                            let shown: String = user
                                .chars()
                                .map(|c| if c.is_control() { '_' } else { c })
                                .collect();
                            let keys = [Key {
                                text: user.to_string(),
                                whole: true,
                            }];
                            self.access(table, &keys, &shown, What::SaslUser, def)?.0
                        }
                        None => Status::Dunno,
                    }
                }
            }
            Kind::CheckHeloAccess => {
                let table = self.map_arg(list, i, implicit)?;
                match self.f.helo {
                    Some(helo) => {
                        let keys = host_keys(Some(helo), None, r.access_parent_matches);
                        self.access(table, &keys, helo, What::Helo, def)?.0
                    }
                    None => Status::Dunno,
                }
            }
            Kind::CheckEtrnAccess => {
                let table = self.map_arg(list, i, implicit)?;
                match self.f.etrn_domain {
                    Some(d) => {
                        let keys = host_keys(Some(d), None, r.access_parent_matches);
                        self.access(table, &keys, d, What::Etrn, def)?.0
                    }
                    None => Status::Dunno,
                }
            }
            Kind::RejectInvalidHelo => match self.f.helo {
                Some(h) if h.starts_with('[') => self.invalid_hostaddr(h),
                Some(h) => {
                    let t = syntax::strip_one_dot(h);
                    if !syntax::valid_hostname(t) && !syntax::valid_hostaddr(t) {
                        self.reject(
                            ErrorClass::Policy,
                            r.codes.bad_name,
                            "5.5.2",
                            format!("<{h}>: Helo command rejected: Invalid name"),
                        )
                    } else {
                        Status::Dunno
                    }
                }
                None => Status::Dunno,
            },
            Kind::RejectNonFqdnHelo => match self.f.helo {
                Some(h) if h.starts_with('[') => self.invalid_hostaddr(h),
                Some(h) => {
                    let t = syntax::strip_one_dot(h);
                    if !syntax::valid_utf8_hostname(self.f.smtputf8, t) || !t.contains('.') {
                        self.reject(
                            ErrorClass::Policy,
                            r.codes.non_fqdn,
                            "5.5.2",
                            format!("<{h}>: Helo command rejected: need fully-qualified hostname"),
                        )
                    } else {
                        Status::Dunno
                    }
                }
                None => Status::Dunno,
            },
            Kind::PermitNakedIp => {
                self.warn(
                    "restriction permit_naked_ip_address is deprecated. \
                     Use permit_mynetworks or permit_sasl_authenticated instead",
                );
                match self.f.helo {
                    Some(h)
                        if h.bytes()
                            .all(|c| c.is_ascii_digit() || c == b'.' || c == b':') =>
                    {
                        match self.invalid_hostaddr(h) {
                            Status::Dunno => self.permit(&list[*i].text, What::Helo, h, None),
                            s => s,
                        }
                    }
                    _ => Status::Dunno,
                }
            }
            Kind::CheckSenderAccess => {
                let table = self.map_arg(list, i, implicit)?;
                match self.sender {
                    Some("") => {
                        let keys = [Key {
                            text: r.null_key.clone(),
                            whole: true,
                        }];
                        self.access(table, &keys, "", What::Sender, def)?.0
                    }
                    Some(s) => self.mail_access(table, s, What::Sender, def)?,
                    None => Status::Dunno,
                }
            }
            Kind::RejectNonFqdnSender => match self.sender {
                Some(s) if !s.is_empty() => self.non_fqdn_address(s, What::Sender),
                _ => Status::Dunno,
            },
            Kind::RejectUnlistedSender => match self.sender {
                Some(s) if !s.is_empty() => self.sender_rcpt_maps(s)?,
                _ => Status::Dunno,
            },
            Kind::RejectAuthSenderLoginMismatch
            | Kind::RejectUnauthSenderLoginMismatch
            | Kind::RejectKnownSenderLoginMismatch => {
                if !r.sasl_enabled {
                    self.warn(format!(
                        "restriction `{}' ignored: no SASL support",
                        list[*i].text
                    ));
                    Status::Dunno
                } else {
                    match self.sender {
                        Some(s) if !s.is_empty() => match kind {
                            Kind::RejectAuthSenderLoginMismatch => {
                                self.auth_login_mismatch(s, false)?
                            }
                            Kind::RejectUnauthSenderLoginMismatch => {
                                self.unauth_login_mismatch(s)?
                            }
                            _ if self.f.sasl_username.is_some() => {
                                self.auth_login_mismatch(s, true)?
                            }
                            _ => self.unauth_login_mismatch(s)?,
                        },
                        _ => Status::Dunno,
                    }
                }
            }
            Kind::RejectSenderLoginMismatch => {
                // A built-in restriction class.
                let class = tokens(
                    "reject_authenticated_sender_login_mismatch \
                     reject_unauthenticated_sender_login_mismatch",
                );
                self.generic(&class, name, what, def)?
            }
            Kind::CheckRecipientAccess => {
                let table = self.map_arg(list, i, implicit)?;
                match self.recipient {
                    Some(rcpt) => self.mail_access(table, rcpt, What::Recipient, def)?,
                    None => Status::Dunno,
                }
            }
            Kind::PermitAuthDestination => match self.recipient {
                Some(rcpt) => match self.auth_destination(rcpt)? {
                    Status::Ok => self.permit(&list[*i].text, What::Recipient, rcpt, None),
                    s => s,
                },
                None => Status::Dunno,
            },
            Kind::PermitMxBackup => match self.recipient {
                Some(rcpt) => match self.mx_backup(rcpt)? {
                    Status::Ok => self.permit(&list[*i].text, What::Recipient, rcpt, None),
                    s => s,
                },
                None => Status::Dunno,
            },
            Kind::RejectUnauthDestination | Kind::DeferUnauthDestination => match self.recipient {
                Some(rcpt) => {
                    if self.auth_destination(rcpt)? == Status::Ok {
                        Status::Dunno
                    } else {
                        let (code, dsn) = if kind == Kind::RejectUnauthDestination {
                            (r.codes.relay, "5.7.1")
                        } else {
                            (r.codes.relay.saturating_sub(100), "4.7.1")
                        };
                        self.reject(
                            ErrorClass::Policy,
                            code,
                            dsn,
                            format!("<{rcpt}>: Relay access denied"),
                        )
                    }
                }
                None => Status::Dunno,
            },
            Kind::CheckRelayDomains => {
                let s = match self.recipient {
                    Some(rcpt) => {
                        let client_in = match &r.relay_domains {
                            Some(d) => d.matches(self.f.client_name).unwrap_or(false),
                            None => false,
                        };
                        if client_in || self.auth_destination(rcpt)? == Status::Ok {
                            self.permit(&list[*i].text, What::Recipient, rcpt, None)
                        } else {
                            self.reject(
                                ErrorClass::Policy,
                                r.codes.relay,
                                "5.7.1",
                                format!("<{rcpt}>: {label} rejected: Relay access denied"),
                            )
                        }
                    }
                    None => Status::Dunno,
                };
                self.warn_ignored_after(list, *i, false);
                s
            }
            Kind::PermitSaslAuthenticated => match self.f.sasl_username {
                Some(u) if !u.is_empty() => {
                    let n = self.namaddr();
                    self.permit(&list[*i].text, What::Client, &n, None)
                }
                _ => Status::Dunno,
            },
            Kind::RejectNonFqdnRecipient => match self.recipient {
                Some(rcpt) => self.non_fqdn_address(rcpt, What::Recipient),
                None => Status::Dunno,
            },
            Kind::RejectUnlistedRecipient => match self.recipient {
                Some(rcpt) if !rcpt.is_empty() => self.recipient_rcpt_maps(rcpt)?,
                _ => Status::Dunno,
            },
            Kind::RejectMultiRecipientBounce => {
                let limit = usize::from(self.cmd != Cmd::Rcpt);
                if self.sender == Some("") && self.f.rcpt_count > limit {
                    self.reject(
                        ErrorClass::Policy,
                        r.codes.multi_rcpt,
                        "5.5.3",
                        format!("<{name}>: {label} rejected: Multi-recipient bounce"),
                    )
                } else {
                    Status::Dunno
                }
            }
            Kind::CheckPolicyService => match list.get(*i + 1) {
                Some(t) if t.text.contains(':') => {
                    *i += 1;
                    self.policy_service(&t.text, name, what, def)?
                }
                _ => {
                    self.warn(
                        "restriction check_policy_service must be followed by \
                         transport:server",
                    );
                    return Err(self.server_error());
                }
            },
            Kind::RejectRblClient
            | Kind::PermitDnswlClient
            | Kind::PermitRhswlClient
            | Kind::RejectRhsbl(_) => {
                let Some(arg) = list.get(*i + 1) else {
                    self.warn(format!(
                        "restriction {} requires domain name argument",
                        list[*i].text
                    ));
                    return Ok(Status::Dunno);
                };
                *i += 1;
                let arg = arg.text.clone();
                let listed = match kind {
                    Kind::RejectRblClient => return self.rbl_client(&arg),
                    Kind::RejectRhsbl(k) => return self.rhsbl(k, &arg),
                    Kind::PermitDnswlClient => self.dnswl_client(&arg, what)?,
                    _ => self.rhswl_client(&arg, what)?,
                };
                if listed {
                    self.permit(&list[*i - 1].text, What::Client, &self.namaddr(), None)
                } else {
                    Status::Dunno
                }
            }
            Kind::RejectMapsRbl => {
                let mut st = Status::Dunno;
                for domain in r.dnsbl.maps_rbl_domains.clone() {
                    st = self.rbl_client(&domain)?;
                    if st != Status::Dunno {
                        break;
                    }
                }
                st
            }
            // The client's names come from the session's lookups (the
            // verified name: PTR and forward confirmation; the PTR name).
            Kind::RejectUnknownClient if self.f.client_name == "unknown" => self.reject(
                ErrorClass::Policy,
                r.codes.unknown_client,
                "4.7.25",
                format!(
                    "Client host rejected: cannot find your hostname, [{}]",
                    self.addr_text()
                ),
            ),
            Kind::RejectUnknownReverseClient if self.f.reverse_name == "unknown" => self.reject(
                ErrorClass::Policy,
                r.codes.unknown_client,
                "4.7.1",
                format!(
                    "Client host rejected: cannot find your reverse hostname, [{}]",
                    self.addr_text()
                ),
            ),
            Kind::RejectUnknownClient | Kind::RejectUnknownReverseClient => Status::Dunno,
            Kind::RejectUnknownHelo => match self.f.helo {
                // Address literals and malformed names are other checks'.
                Some(h)
                    if !h.starts_with('[') && syntax::valid_hostname(syntax::strip_one_dot(h)) =>
                {
                    self.unknown_helo(h)
                }
                _ => Status::Dunno,
            },
            Kind::RejectUnknownSenderDomain => match self.sender {
                Some(s) if !s.is_empty() => self.unknown_address(s, What::Sender)?,
                _ => Status::Dunno,
            },
            Kind::RejectUnknownRecipientDomain => match self.recipient {
                Some(r) => self.unknown_address(r, What::Recipient)?,
                None => Status::Dunno,
            },
            Kind::CheckServerAccess(target, server) => {
                let restriction = list[*i].text.clone();
                let table = self.map_arg(list, i, implicit)?;
                // Whose name (skipped when there is none), the name the
                // reply shows, and what is rejected.
                let (looked_up, reply_name, what) = match target {
                    Target::Client => (
                        Some(self.f.client_name).filter(|n| !n.eq_ignore_ascii_case("unknown")),
                        self.namaddr(),
                        What::Client,
                    ),
                    Target::ReverseClient => (
                        Some(self.f.reverse_name).filter(|n| !n.eq_ignore_ascii_case("unknown")),
                        self.f.reverse_name.to_string(),
                        What::ReverseClient,
                    ),
                    Target::Helo => (
                        self.f.helo,
                        self.f.helo.unwrap_or("").to_string(),
                        What::Helo,
                    ),
                    Target::Sender => (
                        self.sender.filter(|s| !s.is_empty()),
                        self.sender.unwrap_or("").to_string(),
                        What::Sender,
                    ),
                    Target::Recipient => (
                        self.recipient.filter(|r| !r.is_empty()),
                        self.recipient.unwrap_or("").to_string(),
                        What::Recipient,
                    ),
                };
                match looked_up {
                    Some(n) => {
                        let s = self.server_access(table, n, server, &reply_name, what, def)?;
                        self.forbid_allowlist(&restriction, s, n)?;
                        s
                    }
                    None => Status::Dunno,
                }
            }
            Kind::PermitTlsClientcerts | Kind::PermitTlsAllClientcerts => {
                let text = list[*i].text.clone();
                if self.tls_clientcerts(kind == Kind::PermitTlsAllClientcerts, &text)? {
                    let n = self.namaddr();
                    self.permit(&text, What::Client, &n, None)
                } else {
                    Status::Dunno
                }
            }
            Kind::CheckCcertAccess => {
                let table = self.map_arg(list, i, implicit)?;
                match self.f.ccert {
                    Some(c) => {
                        let mut s = Status::Dunno;
                        for print in [&c.fingerprint, &c.pkey_fingerprint] {
                            let keys = [Key {
                                text: print.clone(),
                                whole: true,
                            }];
                            s = self
                                .access(table, &keys, &c.subject_cn, What::Ccert, def)?
                                .0;
                            if s != Status::Dunno {
                                break;
                            }
                        }
                        s
                    }
                    None => {
                        if self.f.tls && !r.ask_ccert {
                            self.warn(
                                "check_ccert_access is requested, but \"smtpd_tls_ask_ccert = no\""
                                    .to_string(),
                            );
                        }
                        Status::Dunno
                    }
                }
            }
            Kind::Unsupported(Arg::None) => Status::Dunno,
        })
    }

    // ----- the individual checks -----

    /// The resolver (made at load when a DNS restriction is listed, else
    /// now, once); without one every lookup is a temporary failure.
    fn dns(&self) -> Lookups<'r> {
        let d = &self.r.dnsbl;
        let made = d
            .dns
            .get_or_init(|| d.setup.as_ref().map_err(String::clone)?.resolver());
        Lookups(made.as_ref().map_err(String::as_str))
    }

    /// Looks up `query` (A) under a DNSBL argument `domain[=filter]`:
    /// the matching addresses, or `None` when not listed (a temporary
    /// failure is logged and counts as not listed, as in Postfix).
    fn dnsbl_query(&mut self, query: &str, filter: Option<&str>) -> Option<Vec<String>> {
        match self.dns().a(query) {
            Ok(addrs) => {
                let addrs: Vec<String> = addrs
                    .into_iter()
                    .map(|a| a.to_string())
                    .filter(|a| filter.is_none_or(|f| dnsbl_filter_matches(f, a)))
                    .collect();
                (!addrs.is_empty()).then_some(addrs)
            }
            Err(DnsError::NotFound) => None,
            Err(DnsError::Temporary(e)) => {
                self.warn(format!("{query}: RBL lookup error: {e}"));
                None
            }
        }
    }

    /// reject_rbl_client: the reversed client address under the domain.
    fn rbl_client(&mut self, arg: &str) -> Res {
        // An unknown address (XCLIENT) is in no list: nothing to ask.
        let Some(addr) = self.addr else {
            return Ok(Status::Dunno);
        };
        let (domain, filter) = split_dnsbl(arg);
        let query = libmail::dns::reverse_name(addr, domain);
        if self.dnsbl_query(&query, filter).is_none() {
            return Ok(Status::Dunno);
        }
        let what = addr.to_string();
        Ok(self.rbl_reject(&query, domain, &what, What::Client))
    }

    /// permit_dnswl_client: listed clients are permitted; in the relay and
    /// recipient lists only for a recipient this server accepts anyway
    /// (it never overrides reject_unauth_destination).
    fn dnswl_client(&mut self, arg: &str, what: What) -> Result<bool, Abort> {
        let Some(addr) = self.addr else {
            return Ok(false);
        };
        let (domain, filter) = split_dnsbl(arg);
        let query = libmail::dns::reverse_name(addr, domain);
        if self.dnsbl_query(&query, filter).is_none() {
            return Ok(false);
        }
        self.allowlist_may_permit(what)
    }

    /// A listed client of permit_dnswl_client / permit_rhswl_client is
    /// permitted, except in the relay and recipient lists for a
    /// recipient this server would not accept anyway: an allowlist never
    /// overrides reject_unauth_destination.
    fn allowlist_may_permit(&mut self, what: What) -> Result<bool, Abort> {
        if what == What::Recipient {
            if let Some(rcpt) = self.recipient {
                return Ok(self.auth_destination(rcpt)? == Status::Ok);
            }
        }
        Ok(true)
    }

    /// permit_rhswl_client: a listed client name is permitted; as with
    /// permit_dnswl_client, in the relay and recipient lists only for a
    /// recipient this server accepts anyway.
    fn rhswl_client(&mut self, arg: &str, what: What) -> Result<bool, Abort> {
        if self.rhs_listed(Target::Client, arg).is_none() {
            return Ok(false);
        }
        self.allowlist_may_permit(what)
    }

    /// reject_rhsbl_*: the name (client, PTR, HELO, address domain) under
    /// the domain.
    fn rhsbl(&mut self, k: Target, arg: &str) -> Res {
        match self.rhs_listed(k, arg) {
            Some((query, name, class)) => {
                let (domain, _) = split_dnsbl(arg);
                Ok(self.rbl_reject(&query, domain, name, class))
            }
            None => Ok(Status::Dunno),
        }
    }

    /// The name `k` names, when it is listed under the domain of `arg`
    /// (`domain[=filter]`): the query, the name and its class.
    fn rhs_listed(&mut self, k: Target, arg: &str) -> Option<(String, &'f str, What)> {
        let domain_of = |a: &'f str| a.rfind('@').map(|i| &a[i + 1..]);
        let (name, class) = match k {
            Target::Client => (Some(self.f.client_name), What::Client),
            Target::ReverseClient => (Some(self.f.reverse_name), What::ReverseClient),
            Target::Helo => (self.f.helo, What::Helo),
            Target::Sender => (self.sender.and_then(domain_of), What::Sender),
            Target::Recipient => (self.recipient.and_then(domain_of), What::Recipient),
        };
        let name = name.map(syntax::strip_one_dot)?;
        if name.is_empty()
            || name == "unknown"
            || name.starts_with('[')
            || !syntax::valid_hostname(name)
            || syntax::valid_hostaddr(name)
        {
            return None;
        }
        let (domain, filter) = split_dnsbl(arg);
        let query = format!("{name}.{}", domain.trim_end_matches('.'));
        self.dnsbl_query(&query, filter)?;
        Some((query, name, class))
    }

    /// The DNSBL reply: `rbl_reply_maps` (by domain), else
    /// `default_rbl_reply`, with `$rbl_code`, `$rbl_class`, `$rbl_what`,
    /// `$rbl_domain`, `$rbl_reason` (the TXT record), `$client_address`,
    /// `$client_name`, `$helo_name`, `$sender`, `$recipient`.
    fn rbl_reject(&mut self, query: &str, domain: &str, what_name: &str, what: What) -> Status {
        let r = self.r;
        let template = r
            .dnsbl
            .rbl_reply_maps
            .as_ref()
            .and_then(|m| {
                m.find_first(&[Key {
                    text: domain.to_ascii_lowercase(),
                    whole: true,
                }])
                .ok()
                .flatten()
            })
            .map(|(_, v)| v)
            .unwrap_or_else(|| r.dnsbl.default_rbl_reply.clone());
        let reason = match self.dns().txt(query) {
            Ok(t) => t.join(" "),
            Err(_) => String::new(),
        };
        let esc = |v: &str| v.replace('$', "$$");
        let vars: Vec<(&str, String)> = vec![
            ("rbl_code", r.dnsbl.rbl_code.to_string()),
            ("rbl_class", what.label().to_string()),
            ("rbl_what", esc(what_name)),
            ("rbl_domain", esc(domain)),
            ("rbl_reason", esc(&reason)),
            ("rbl_txt", esc(&reason)),
            ("client_address", self.addr_text()),
            ("client_name", esc(self.f.client_name)),
            ("reverse_client_name", esc(self.f.reverse_name)),
            ("helo_name", esc(self.f.helo.unwrap_or(""))),
            ("sender", esc(self.sender.unwrap_or(""))),
            ("recipient", esc(self.recipient.unwrap_or(""))),
        ];
        let lookup = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let text = match libmail::config::expand::Expansion::new().expand(&template, &lookup) {
            Ok(t) => t,
            Err(e) => {
                self.warn(format!("{domain}: bad RBL reply template: {e}"));
                format!(
                    "{} Service unavailable; {} [{what_name}] blocked using {domain}",
                    r.dnsbl.rbl_code,
                    what.label()
                )
            }
        };
        // "CODE [X.Y.Z] text"; a template without a valid code uses
        // $rbl_code's, as Postfix's reply parser falls back.
        let (code, rest) = match text.split_once(' ') {
            Some((c, rest)) if c.len() == 3 && c.parse::<u16>().is_ok() => {
                (c.parse::<u16>().unwrap_or(r.dnsbl.rbl_code), rest)
            }
            _ => (r.dnsbl.rbl_code, text.as_str()),
        };
        let (dsn, rest) = match rest.split_once(' ') {
            Some((d, t)) if syntax::dsn_len(d) == d.len() && !d.is_empty() => (d.to_string(), t),
            _ => ("5.7.1".to_string(), rest),
        };
        let class = if code >= 500 { '5' } else { '4' };
        let dsn = format!("{class}{}", &dsn[1..]);
        let rest = rest.to_string();
        self.reject(ErrorClass::Policy, code, &dsn, rest)
    }

    /// reject_unknown_sender_domain / reject_unknown_recipient_domain
    /// (reject_unknown_address): only for domains this server is not the
    /// final destination of, nor address literals.
    fn unknown_address(&mut self, addr: &str, what: What) -> Res {
        let resolved = match self.resolve(addr) {
            Ok(r) => r,
            Err(()) => return Err(self.lookup_failure(addr)),
        };
        if matches!(
            resolved.class,
            Class::Local | Class::VirtualAlias | Class::VirtualMailbox
        ) {
            return Ok(Status::Dunno);
        }
        let Some(at) = resolved.recipient.rfind('@') else {
            return Ok(Status::Dunno);
        };
        let domain = resolved.recipient[at + 1..].to_string();
        if domain.is_empty() || (domain.starts_with('[') && domain.ends_with(']')) {
            return Ok(Status::Dunno);
        }
        Ok(self.unknown_mailhost(&domain, addr, what))
    }

    /// reject_unknown_mailhost: MX, then A, then AAAA; a null MX is
    /// refused outright, a temporary failure is a defer_if_permit.
    fn unknown_mailhost(&mut self, domain: &str, addr: &str, what: What) -> Status {
        let dns = self.dns();
        let sender = what == What::Sender;
        let mut temp = None;
        match dns.mx(domain) {
            Ok(mx) if libmail::dns::is_null_mx(&mx) => {
                let (code, dsn) = if sender {
                    (550, "5.7.27")
                } else {
                    (556, "5.1.10")
                };
                return self.reject(
                    ErrorClass::Policy,
                    code,
                    dsn,
                    format!(
                        "<{addr}>: {} rejected: Domain {domain} does not accept mail (nullMX)",
                        what.label()
                    ),
                );
            }
            Ok(_) => return Status::Dunno,
            Err(DnsError::NotFound) => {}
            Err(DnsError::Temporary(e)) => temp = Some(e),
        }
        if temp.is_none() {
            match dns.a(domain) {
                Ok(_) => return Status::Dunno,
                Err(DnsError::NotFound) => {}
                Err(DnsError::Temporary(e)) => temp = Some(e),
            }
        }
        if temp.is_none() {
            match dns.aaaa(domain) {
                Ok(_) => return Status::Dunno,
                Err(DnsError::NotFound) => {}
                Err(DnsError::Temporary(e)) => temp = Some(e),
            }
        }
        let dsn = if sender { "4.1.8" } else { "4.1.2" };
        let text = format!("<{addr}>: {} rejected: Domain not found", what.label());
        match temp {
            None => self.reject(
                ErrorClass::Policy,
                self.r.dnsbl.unknown_addr_code,
                dsn,
                text,
            ),
            Some(e) => {
                self.out
                    .log
                    .push(Log::Info(format!("{domain}: temporary DNS failure: {e}")));
                self.defer_if_permit(ErrorClass::Policy, 450, dsn, text)
            }
        }
    }

    /// reject_unknown_helo_hostname: an address (A, AAAA) or an MX for
    /// the HELO name; a temporary failure is a defer_if_permit.
    fn unknown_helo(&mut self, helo: &str) -> Status {
        let dns = self.dns();
        let name = syntax::strip_one_dot(helo);
        let mut temp = None;
        let lookups: [&dyn Fn() -> Result<(), DnsError>; 3] = [
            &|| dns.a(name).map(|_| ()),
            &|| dns.aaaa(name).map(|_| ()),
            &|| dns.mx(name).map(|_| ()),
        ];
        for lookup in lookups {
            match lookup() {
                Ok(()) => return Status::Dunno,
                Err(DnsError::NotFound) => {}
                Err(DnsError::Temporary(e)) => temp = Some(e),
            }
        }
        let text = format!("<{helo}>: Helo command rejected: Host not found");
        match temp {
            None => self.reject(ErrorClass::Policy, self.r.codes.unknown_helo, "4.7.1", text),
            Some(e) => {
                self.out
                    .log
                    .push(Log::Info(format!("{name}: temporary DNS failure: {e}")));
                self.defer_if_permit(ErrorClass::Policy, 450, "4.7.1", text)
            }
        }
    }

    /// check_server_access (`check_*_{a,mx,ns}_access`): the servers of
    /// the domain of `name` (the part after its last `@`) — the name
    /// itself for A; its MX hosts, or the name itself when it has no MX;
    /// its NS hosts, or those of the nearest parent domain that has some
    /// — each searched in `table` by host name (its parent domains
    /// included; not for A) and then by each of its addresses (the
    /// access(5) address order: shorter forms, CIDR). The first key
    /// found decides, DUNNO included. An address literal is its own MX
    /// host and address (it has no name servers). When the DNS gives no
    /// answer (a temporary failure, or no name servers anywhere) the
    /// check is skipped with a warning; a null MX skips it quietly; a
    /// host without addresses is skipped (a warning for MX and NS hosts).
    fn server_access(
        &mut self,
        table: &str,
        name: &str,
        server: Server,
        reply_name: &str,
        what: What,
        def: DefAcl,
    ) -> Res {
        let domain = name.rfind('@').map_or(name, |i| &name[i + 1..]);
        if let Some(literal) = domain.strip_prefix('[') {
            let Some(inner) = literal.strip_suffix(']') else {
                return Ok(Status::Dunno);
            };
            if server == Server::Ns || !syntax::valid_mailhost_addr(inner) {
                return Ok(Status::Dunno);
            }
            let bare = match inner.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("IPv6:") => &inner[5..],
                _ => inner,
            };
            let keys = access_host_keys(None, Some(&bare.to_ascii_lowercase()), false);
            return Ok(self.access(table, &keys, reply_name, what, def)?.0);
        }
        let Some(domain) = libmail::dns::ascii_name(domain).filter(|d| !d.is_empty()) else {
            return Ok(Status::Dunno);
        };
        let Some(hosts) = self.server_hosts(&domain, name, server) else {
            return Ok(Status::Dunno);
        };
        let parents = self.r.access_parent_matches;
        for host in hosts.iter().take(MAX_SERVER_HOSTS) {
            // A host given as an address is checked as one.
            if syntax::valid_hostaddr(host) {
                let keys = access_host_keys(None, Some(host), parents);
                let (s, found) = self.access(table, &keys, reply_name, what, def)?;
                if found {
                    return Ok(s);
                }
                continue;
            }
            if server != Server::A {
                let keys = access_host_keys(Some(host), None, parents);
                let (s, found) = self.access(table, &keys, reply_name, what, def)?;
                if found {
                    return Ok(s);
                }
            }
            let addrs = match self.host_addresses(host) {
                Ok(a) => a,
                Err(e) => {
                    if server != Server::A {
                        self.warn(format!(
                            "Unable to look up {} host {host} for {} {reply_name}: {e}",
                            server.rtype(),
                            what.label()
                        ));
                    }
                    continue;
                }
            };
            for addr in addrs.iter().take(MAX_SERVER_ADDRS) {
                let keys = access_host_keys(None, Some(&addr.to_string()), parents);
                let (s, found) = self.access(table, &keys, reply_name, what, def)?;
                if found {
                    return Ok(s);
                }
            }
        }
        Ok(Status::Dunno)
    }

    /// The hosts [`Self::server_access`] examines for `domain`, or `None`
    /// when the check is skipped (`name` is what the restriction was
    /// asked about, for the warning).
    fn server_hosts(&mut self, domain: &str, name: &str, server: Server) -> Option<Vec<String>> {
        let dns = self.dns();
        // Postfix's words for the resolver's answers (dns_strerror).
        let why = |e: &DnsError| match e {
            DnsError::NotFound => "Host not found",
            DnsError::Temporary(_) => "Host not found, try again",
        };
        match server {
            Server::A => Some(vec![domain.to_string()]),
            Server::Mx => match dns.mx(domain) {
                Ok(mx) if libmail::dns::is_null_mx(&mx) => None,
                Ok(mx) => Some(
                    mx.into_iter()
                        .map(|m| m.exchange)
                        .filter(|h| !h.is_empty())
                        .collect(),
                ),
                // No MX: the domain is its own mail host.
                Err(DnsError::NotFound) => Some(vec![domain.to_string()]),
                Err(e) => {
                    self.warn(format!(
                        "Unable to look up MX host for {domain}: {}",
                        why(&e)
                    ));
                    None
                }
            },
            Server::Ns => {
                let mut d = domain;
                let mut answer = dns.ns(d);
                // No NS records: the nearest parent domain's (not the root's).
                let mut exhausted = false;
                for _ in 0..MAX_NS_PARENTS {
                    if answer != Err(DnsError::NotFound) {
                        break;
                    }
                    match d.find('.') {
                        Some(i) if i + 1 < d.len() => d = &d[i + 1..],
                        _ => {
                            exhausted = true;
                            break;
                        }
                    }
                    answer = dns.ns(d);
                }
                match answer {
                    Ok(hosts) => Some(hosts),
                    Err(e) => {
                        let shown = if exhausted { name } else { d };
                        self.warn(format!(
                            "Unable to look up NS host for {shown}: {}",
                            why(&e)
                        ));
                        None
                    }
                }
            }
        }
    }

    /// The addresses of `host` in the families `inet_protocols` enables
    /// (IPv4 first), or the resolver's error in getaddrinfo's words.
    fn host_addresses(&self, host: &str) -> Result<Vec<IpAddr>, &'static str> {
        self.host_addrs(host).map_err(|e| match e {
            DnsError::Temporary(_) => "Temporary failure in name resolution",
            DnsError::NotFound => "Name or service not known",
        })
    }

    /// The addresses of `host` in the families `inet_protocols` enables
    /// (IPv4 first): those found when either query answers, else a
    /// temporary failure when one failed, else not found.
    fn host_addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let dns = self.dns();
        let mut out = Vec::new();
        let mut temporary = false;
        let (ipv4, ipv6) = match &self.r.dnsbl.setup {
            Ok(s) => (s.ipv4, s.ipv6),
            Err(_) => (true, true),
        };
        if ipv4 {
            match dns.a(host) {
                Ok(v) => out.extend(v.into_iter().map(IpAddr::V4)),
                Err(DnsError::NotFound) => {}
                Err(DnsError::Temporary(_)) => temporary = true,
            }
        }
        if ipv6 {
            match dns.aaaa(host) {
                Ok(v) => out.extend(v.into_iter().map(|a| IpAddr::V6(a).to_canonical())),
                Err(DnsError::NotFound) => {}
                Err(DnsError::Temporary(_)) => temporary = true,
            }
        }
        if !out.is_empty() {
            Ok(out)
        } else if temporary {
            Err(DnsError::Temporary(format!("{host}: no address")))
        } else {
            Err(DnsError::NotFound)
        }
    }

    /// reject_invalid_hostaddr for a `[...]` HELO argument.
    fn invalid_hostaddr(&mut self, h: &str) -> Status {
        let inner = if h.len() > 2 && h.starts_with('[') && h.ends_with(']') {
            &h[1..h.len() - 1]
        } else {
            h
        };
        if syntax::valid_mailhost_addr(inner) {
            Status::Dunno
        } else {
            self.reject(
                ErrorClass::Policy,
                self.r.codes.bad_name,
                "5.5.2",
                format!("<{h}>: Helo command rejected: invalid ip address"),
            )
        }
    }

    /// reject_non_fqdn_address: the domain of the address as given.
    fn non_fqdn_address(&mut self, addr: &str, what: What) -> Status {
        let domain = addr.rfind('@').map_or("", |i| &addr[i + 1..]);
        if domain.starts_with('[') && domain.ends_with(']') {
            return Status::Dunno;
        }
        let d = syntax::strip_one_dot(domain);
        if d.is_empty() || !syntax::valid_utf8_hostname(self.f.smtputf8, d) || !d.contains('.') {
            self.reject(
                ErrorClass::Policy,
                self.r.codes.non_fqdn,
                "4.5.2",
                format!(
                    "<{addr}>: {} rejected: need fully-qualified address",
                    what.label()
                ),
            )
        } else {
            Status::Dunno
        }
    }

    /// forbid_allowlist: restrictions that may not say OK.
    fn forbid_allowlist(
        &mut self,
        restriction: &str,
        status: Status,
        target: &str,
    ) -> Result<(), Abort> {
        if !self.discard && status == Status::Ok {
            self.warn(format!("restriction {restriction} returns OK for {target}"));
            self.warn("this is not allowed for security reasons");
            self.warn("use DUNNO instead of OK if you want to make an exception");
            return Err(self.server_error());
        }
        Ok(())
    }

    /// One access lookup: the first key found in `table`, through
    /// check_table_result. Returns the status and whether a key matched.
    fn access(
        &mut self,
        table: &str,
        keys: &[Key],
        name: &str,
        what: What,
        def: DefAcl,
    ) -> Result<(Status, bool), Abort> {
        let r = self.r;
        let Some(maps) = r.tables.get(table) else {
            self.warn(format!("check_access: unexpected dictionary: {table}"));
            let datum = keys.first().map_or("", |k| k.text.as_str()).to_string();
            let s = self.table_result(
                table,
                "451 4.3.5 Server configuration error",
                &datum,
                name,
                what,
                def,
            )?;
            return Ok((s, true));
        };
        match maps.find_first(keys) {
            Ok(Some((k, value))) => {
                let datum = keys[k].text.clone();
                let s = self.table_result(table, &value, &datum, name, what, def)?;
                Ok((s, true))
            }
            Ok(None) => Ok((Status::Dunno, false)),
            Err(e) => {
                let datum = keys.first().map_or("", |k| k.text.as_str()).to_string();
                self.warn(format!("{table} lookup error for \"{datum}\": {e}"));
                let s = self.table_result(
                    table,
                    "451 4.3.5 Server configuration error",
                    &datum,
                    name,
                    what,
                    def,
                )?;
                Ok((s, true))
            }
        }
    }

    /// check_namadr_access: the host name and its parents, then the address
    /// and its shorter forms.
    fn namadr_access(
        &mut self,
        table: &str,
        host: &str,
        name: &str,
        what: What,
        def: DefAcl,
    ) -> Res {
        let addr = self.addr_text();
        let keys = host_keys(Some(host), Some(&addr), self.r.access_parent_matches);
        Ok(self.access(table, &keys, name, what, def)?.0)
    }

    /// check_mail_access: the resolved address (access(5) address order);
    /// an OK for a source-routed recipient counts as DUNNO.
    fn mail_access(&mut self, table: &str, addr: &str, what: What, def: DefAcl) -> Res {
        let resolved = match self.resolve(addr) {
            Ok(r) => r,
            Err(_) => return Err(self.lookup_failure(addr)),
        };
        let canonical = resolved.recipient.to_lowercase();
        if !canonical.contains('@') {
            self.warn(format!(
                "check_mail_access: no @domain in address: {canonical}"
            ));
            return Ok(Status::Dunno);
        }
        let keys =
            access_address_keys(&canonical, &self.r.delimiters, self.r.access_parent_matches);
        let (s, _) = self.access(table, &keys, addr, what, def)?;
        if s == Status::Ok
            && what == What::Recipient
            && !self.r.allow_untrusted_routing
            && self.routed(&canonical, resolved.class)
        {
            return Ok(Status::Dunno);
        }
        Ok(s)
    }

    /// Whether a resolved address still carries sender-specified routing
    /// in its local part (Postfix's RESOLVE_FLAG_ROUTED) for a domain that
    /// is not local.
    fn routed(&self, canonical: &str, class: Class) -> bool {
        if class == Class::Local {
            return false;
        }
        let (local, _) = libmail::address::split(canonical);
        let local = libmail::address::unquote_local(local);
        local.contains('@')
            || (self.r.swap_bangpath && local.contains('!'))
            || (self.r.percent_hack && local.contains('%'))
    }

    /// permit_auth_destination: OK for local, virtual and relay_domains
    /// destinations, not for source-routed ones.
    fn auth_destination(&mut self, rcpt: &str) -> Res {
        let resolved = match self.resolve(rcpt) {
            Ok(r) => r,
            Err(_) => return Err(self.lookup_failure(rcpt)),
        };
        let canonical = resolved.recipient.to_lowercase();
        if !canonical.contains('@') {
            return Ok(Status::Ok);
        }
        if !self.r.allow_untrusted_routing && self.routed(&canonical, resolved.class) {
            return Ok(Status::Dunno);
        }
        Ok(match resolved.class {
            Class::Local | Class::VirtualAlias | Class::VirtualMailbox | Class::Relay => Status::Ok,
            Class::Default => Status::Dunno,
        })
    }

    /// permit_mx_backup: OK for the destinations permit_auth_destination
    /// permits, and for a domain whose MX hosts list this machine, but
    /// not among the most preferred ones (mail for it would loop), with
    /// every address of every most preferred host in
    /// `permit_mx_backup_networks` when that is set. No MX, the null MX,
    /// an address literal or a source-routed address: DUNNO. What the DNS
    /// cannot answer is a DUNNO with a `defer_if_reject` naming it
    /// (Postfix's `450 4.4.4`), so a later reject becomes that deferral.
    fn mx_backup(&mut self, rcpt: &str) -> Res {
        let resolved = match self.resolve(rcpt) {
            Ok(r) => r,
            Err(_) => return Err(self.lookup_failure(rcpt)),
        };
        let canonical = resolved.recipient.to_lowercase();
        let Some(at) = canonical.rfind('@') else {
            return Ok(Status::Ok);
        };
        if !self.r.allow_untrusted_routing && self.routed(&canonical, resolved.class) {
            return Ok(Status::Dunno);
        }
        if resolved.class != Class::Default {
            return Ok(Status::Ok);
        }
        let domain = &canonical[at + 1..];
        if domain.starts_with('[') && domain.ends_with(']') {
            return Ok(Status::Dunno);
        }
        let Some(domain) = libmail::dns::ascii_name(domain).filter(|d| !d.is_empty()) else {
            return Ok(Status::Dunno);
        };
        let mx = match self.dns().mx(&domain) {
            Ok(mx) if libmail::dns::is_null_mx(&mx) => return Ok(Status::Dunno),
            Ok(mx) => mx,
            Err(DnsError::NotFound) => return Ok(Status::Dunno),
            Err(DnsError::Temporary(_)) => {
                self.defer_if_reject(
                    ErrorClass::Policy,
                    450,
                    "4.4.4",
                    format!(
                        "<{rcpt}>: Recipient address rejected: Unable to look up mail \
                         exchanger information: Host not found, try again"
                    ),
                );
                return Ok(Status::Dunno);
            }
        };
        // By preference (the resolver sorts them); the most preferred
        // hosts are the primaries, the others the backups.
        let hosts: Vec<(u16, String)> = mx
            .into_iter()
            .filter(|m| !m.exchange.is_empty())
            .take(MAX_SERVER_HOSTS)
            .map(|m| (m.preference, m.exchange))
            .collect();
        let Some(best) = hosts.first().map(|h| h.0) else {
            return Ok(Status::Dunno);
        };
        let (primaries, backups): (Vec<&str>, Vec<&str>) = {
            let (p, b): (Vec<_>, Vec<_>) = hosts.iter().partition(|h| h.0 == best);
            (
                p.into_iter().map(|h| h.1.as_str()).collect(),
                b.into_iter().map(|h| h.1.as_str()).collect(),
            )
        };
        if self.i_am_mx(&primaries, rcpt)? {
            return Ok(Status::Dunno);
        }
        if backups.is_empty() || !self.i_am_mx(&backups, rcpt)? {
            return Ok(Status::Dunno);
        }
        if let Some(networks) = &self.r.mx_backup.networks {
            for host in &primaries {
                if !self.all_auth_mx_addr(networks, host, rcpt) {
                    return Ok(Status::Dunno);
                }
            }
        }
        Ok(Status::Ok)
    }

    /// i_am_mx: whether one of `hosts` is this machine: a name of
    /// `mydestination` (all names first), else an address of this machine
    /// (a host that cannot be looked up raises a `defer_if_reject`).
    fn i_am_mx(&mut self, hosts: &[&str], rcpt: &str) -> Result<bool, Abort> {
        let resolver = &self.r.resolver;
        if hosts.iter().any(|h| {
            let h = syntax::strip_one_dot(h);
            !h.is_empty() && resolver.is_local_domain(h).unwrap_or(false)
        }) {
            return Ok(true);
        }
        let local = self.own_addresses()?;
        for host in hosts {
            // A host given as an address is that address (getaddrinfo).
            let addrs = match host.parse::<IpAddr>() {
                Ok(a) => Ok(vec![a]),
                Err(_) => self.host_addresses(host),
            };
            match addrs {
                Ok(addrs) => {
                    if addrs.iter().any(|a| local.contains(&a.to_canonical())) {
                        return Ok(true);
                    }
                }
                Err(e) => self.defer_if_reject(
                    ErrorClass::Policy,
                    450,
                    "4.4.4",
                    format!(
                        "<{rcpt}>: Recipient address rejected: Unable to look up mail \
                         exchanger host {host}: {e}"
                    ),
                ),
            }
        }
        Ok(false)
    }

    /// all_auth_mx_addr: whether every address of `host` (DNS) is in
    /// `permit_mx_backup_networks`; a failed lookup raises a
    /// `defer_if_reject`.
    fn all_auth_mx_addr(&mut self, networks: &NetworkList, host: &str, rcpt: &str) -> bool {
        let addrs = match self.host_addrs(host) {
            Ok(a) => a,
            Err(e) => {
                let why = match e {
                    DnsError::NotFound => "Host not found",
                    DnsError::Temporary(_) => "Host not found, try again",
                };
                self.defer_if_reject(
                    ErrorClass::Policy,
                    450,
                    "4.4.4",
                    format!(
                        "<{rcpt}>: Recipient address rejected: Unable to look up host \
                         {host} as mail exchanger: {why}"
                    ),
                );
                return false;
            }
        };
        for addr in addrs.iter().take(MAX_SERVER_ADDRS) {
            match networks.matches(Some(host), *addr) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(_) => {
                    self.warn(format!(
                        "all_auth_mx_addr: permit_mx_backup_networks lookup error \
                         for address {addr} for {host}"
                    ));
                    self.defer_if_reject(
                        ErrorClass::Policy,
                        450,
                        "4.4.4",
                        format!(
                            "<{rcpt}>: Recipient address rejected: Unable to verify host \
                             {host} as mail exchanger"
                        ),
                    );
                    return false;
                }
            }
        }
        true
    }

    /// This machine's addresses for permit_mx_backup (made now when the
    /// configuration did not name it in a list); an error is a warning
    /// and `451 4.3.5`.
    fn own_addresses(&mut self) -> Result<&'r [IpAddr], Abort> {
        let m = &self.r.mx_backup;
        let made = m.local.get_or_init(|| {
            libmail::config::host::own_addresses(&m.inet_interfaces, &m.proxy_interfaces)
        });
        match made {
            Ok(a) => Ok(a.as_slice()),
            Err(e) => {
                self.warn(e.clone());
                Err(self.server_error())
            }
        }
    }

    /// Whether `addr` is a key of `maps` in the virtual(5) address order;
    /// lookup errors end the evaluation.
    fn addr_found(
        &mut self,
        maps: &Maps,
        addr: &str,
        reply_name: &str,
    ) -> Result<Option<String>, Abort> {
        let domain = libmail::address::domain_of(addr);
        let local_domain = self.r.resolver.is_local_domain(&domain).unwrap_or(false);
        let keys = address_keys(addr, &self.r.delimiters, local_domain);
        match maps.find_first(&keys) {
            Ok(hit) => Ok(hit.map(|(_, v)| v)),
            Err(TableError::Temporary(e)) => {
                self.warn(format!("{}: table lookup problem: {e}", maps.parameter));
                Err(self.lookup_failure(reply_name))
            }
            Err(TableError::Config(e)) => {
                self.warn(format!("{}: table lookup problem: {e}", maps.parameter));
                Err(self.server_error())
            }
        }
    }

    fn recipient_rcpt_maps(&mut self, rcpt: &str) -> Res {
        if self.recipient_checked {
            return Ok(Status::Dunno);
        }
        if self.warn_if_reject == 0 {
            self.recipient_checked = true;
        }
        self.rcpt_maps(rcpt, What::Recipient)
    }

    fn sender_rcpt_maps(&mut self, sender: &str) -> Res {
        if self.sender_checked {
            return Ok(Status::Dunno);
        }
        if self.warn_if_reject == 0 {
            self.sender_checked = true;
        }
        self.rcpt_maps(sender, What::Sender)
    }

    /// check_rcpt_maps: is the address a known user of its address class?
    fn rcpt_maps(&mut self, addr: &str, what: What) -> Res {
        let r = self.r;
        let resolved = match self.resolve(addr) {
            Ok(x) => x,
            Err(_) => return Err(self.lookup_failure(addr)),
        };
        let canonical = resolved.recipient.to_lowercase();
        let is_sender = what == What::Sender;
        let maps = &r.rcpt_maps;
        let mut known = [
            maps.recipient_canonical.as_ref(),
            if is_sender {
                maps.sender_canonical.as_ref()
            } else {
                None
            },
            maps.canonical.as_ref(),
            maps.virtual_alias.as_ref(),
        ];
        for m in known.iter_mut().flat_map(|m| m.take()) {
            if self.addr_found(m, &canonical, addr)?.is_some() {
                return Ok(Status::Dunno);
            }
        }
        let label = what.label();
        let default_dsn = |perm: bool| match (perm, is_sender) {
            (true, true) => "5.1.0",
            (true, false) => "5.1.1",
            (false, true) => "4.1.0",
            (false, false) => "4.1.1",
        };
        if resolved.transport == "error" || resolved.transport == "retry" {
            let perm = resolved.transport == "error";
            let mut nexthop = resolved.nexthop.clone();
            if resolved.class == Class::VirtualAlias
                && nexthop == "5.1.1 User unknown in virtual alias table"
                && !r.show_table_name
            {
                nexthop = "5.1.1 User unknown".into();
            }
            let (dsn, text) = syntax::dsn_split(default_dsn(perm), &nexthop);
            let dsn = self.fix_dsn(dsn, what);
            let code = if !perm {
                450
            } else if resolved.class == Class::VirtualAlias {
                r.codes.virtual_alias
            } else {
                550
            };
            let text = format!("<{addr}>: {label} rejected: {text}");
            return Ok(self.reject(ErrorClass::Bounce, code, &dsn, text));
        }
        let local_is = |who: &str| {
            canonical
                .get(..who.len())
                .is_some_and(|l| l.eq_ignore_ascii_case(who))
                && canonical.as_bytes().get(who.len()) == Some(&b'@')
        };
        let (table, code, suffix) = match resolved.class {
            Class::Local => {
                if local_is(&r.double_bounce) || local_is("postmaster") || local_is("mailer-daemon")
                {
                    return Ok(Status::Dunno);
                }
                (
                    maps.local.as_ref(),
                    r.codes.local_rcpt,
                    " in local recipient table",
                )
            }
            Class::VirtualMailbox => (
                maps.virtual_mailbox.as_ref(),
                r.codes.virtual_mailbox,
                " in virtual mailbox table",
            ),
            Class::Relay => (
                maps.relay.as_ref(),
                r.codes.relay_rcpt,
                " in relay recipient table",
            ),
            Class::VirtualAlias | Class::Default => return Ok(Status::Dunno),
        };
        let Some(table) = table else {
            return Ok(Status::Dunno);
        };
        if self.addr_found(table, &canonical, addr)?.is_some() {
            return Ok(Status::Dunno);
        }
        let suffix = if r.show_table_name { suffix } else { "" };
        Ok(self.reject(
            ErrorClass::Bounce,
            code,
            default_dsn(true),
            format!("<{addr}>: {label} rejected: User unknown{suffix}"),
        ))
    }

    /// permit_tls_clientcerts (`all`: permit_tls_all_clientcerts): a
    /// verified certificate (with `all`), or one whose fingerprint or
    /// public-key fingerprint is a key of `relay_clientcerts` (trusted or
    /// not).
    fn tls_clientcerts(&mut self, all: bool, name: &str) -> Result<bool, Abort> {
        if !self.f.tls {
            return Ok(false);
        }
        let Some(c) = self.f.ccert else {
            if !self.r.ask_ccert {
                self.warn(format!(
                    "{} is requested, but \"smtpd_tls_ask_ccert = no\"",
                    name.to_ascii_lowercase()
                ));
            }
            return Ok(false);
        };
        if all && c.trusted {
            return Ok(true);
        }
        if all {
            return Ok(false);
        }
        let Some(maps) = &self.r.relay_ccerts else {
            return Ok(false);
        };
        for print in [&c.fingerprint, &c.pkey_fingerprint] {
            let keys = [Key {
                text: print.clone(),
                whole: true,
            }];
            match maps.find_first(&keys) {
                Ok(Some(_)) => return Ok(true),
                Ok(None) => {}
                Err(e) => {
                    self.warn(format!(
                        "relay_clientcerts: lookup error for fingerprint '{}', \
                         pkey fingerprint {}",
                        c.fingerprint, c.pkey_fingerprint
                    ));
                    return Err(match e {
                        TableError::Temporary(_) => {
                            let n = self.namaddr();
                            self.lookup_failure(&n)
                        }
                        TableError::Config(_) => self.server_error(),
                    });
                }
            }
        }
        Ok(false)
    }

    /// The owners of a sender address in `smtpd_sender_login_maps`.
    fn sender_owners(&mut self, sender: &str) -> Result<Option<String>, Abort> {
        let resolved = match self.resolve(sender) {
            Ok(x) => x,
            Err(_) => return Err(self.lookup_failure(sender)),
        };
        let canonical = resolved.recipient.to_lowercase();
        match &self.r.sender_login_maps {
            Some(m) => self.addr_found(m, &canonical, sender),
            None => Ok(None),
        }
    }

    /// reject_authenticated_sender_login_mismatch (and the known- variant
    /// with `allow_unknown`).
    fn auth_login_mismatch(&mut self, sender: &str, allow_unknown: bool) -> Res {
        let Some(user) = self.f.sasl_username else {
            return Ok(Status::Dunno);
        };
        let owners = self.sender_owners(sender)?;
        let found = match &owners {
            Some(list) => split_list(list)
                .iter()
                .any(|o| o.to_lowercase() == user.to_lowercase()),
            None if allow_unknown => return Ok(Status::Dunno),
            None => false,
        };
        if found {
            return Ok(Status::Dunno);
        }
        Ok(self.reject(
            ErrorClass::Policy,
            553,
            "5.7.1",
            format!("<{sender}>: Sender address rejected: not owned by user {user}"),
        ))
    }

    /// reject_unauthenticated_sender_login_mismatch.
    fn unauth_login_mismatch(&mut self, sender: &str) -> Res {
        if self.f.sasl_username.is_some() {
            return Ok(Status::Dunno);
        }
        if self.sender_owners(sender)?.is_some() {
            return Ok(self.reject(
                ErrorClass::Policy,
                553,
                "5.7.1",
                format!("<{sender}>: Sender address rejected: not logged in"),
            ));
        }
        Ok(Status::Dunno)
    }

    /// can_delegate_action / not_in_client_helo: where message actions
    /// (HOLD, FILTER, ...) can take effect.
    fn can_delegate(&mut self, table: &str, action: &str) -> bool {
        if self.r.proxy_filter {
            self.warn(format!(
                "access table {table}: with smtpd_proxy_filter specified, action {action} is unavailable"
            ));
            return false;
        }
        if self.cmd == Cmd::Etrn {
            self.warn(format!(
                "access table {table}: action {action} is unavailable in smtpd_etrn_restrictions"
            ));
            return false;
        }
        self.in_transaction(table, action)
    }

    fn in_transaction(&mut self, table: &str, action: &str) -> bool {
        if self.sender.is_none() {
            self.warn(format!(
                "access table {table}: with smtpd_delay_reject=no, action {action} is always \
                 skipped in Client host or Helo command restrictions"
            ));
            return false;
        }
        true
    }

    /// check_table_result: what an access-table value means.
    fn table_result(
        &mut self,
        table: &str,
        value: &str,
        datum: &str,
        name: &str,
        what: What,
        def: DefAcl,
    ) -> Res {
        let r = self.r;
        let label = what.label();
        let value = value.trim_start();
        let cmd_len = value.find([' ', '\t']).unwrap_or(value.len());
        let cmd = &value[..cmd_len];
        let text = value[cmd_len..].trim_start();
        let is = |w: &str| cmd.eq_ignore_ascii_case(w);

        if is("DUNNO") {
            return Ok(Status::Dunno);
        }
        if is("REJECT") || is("DEFER") {
            let (code, default) = if is("REJECT") {
                (r.codes.map_reject, "5.7.1")
            } else {
                (r.codes.map_defer, "4.7.1")
            };
            let (dsn, t) = syntax::dsn_split(default, text);
            let t = if t.is_empty() { "Access denied" } else { t };
            let dsn = self.fix_dsn(dsn, what);
            return Ok(self.reject(
                ErrorClass::Policy,
                code,
                &dsn,
                format!("<{name}>: {label} rejected: {t}"),
            ));
        }
        if is("HANGUP") {
            self.event("hangup", text.to_string());
            self.out.actions.push(Action::Hangup);
            self.reply = None;
            return Ok(Status::Reject);
        }
        if is("INFO") {
            self.event("info", text.to_string());
            return Ok(Status::Dunno);
        }
        if is("WARN") {
            self.event("warn", text.to_string());
            return Ok(Status::Dunno);
        }
        if is("FILTER") {
            if !self.can_delegate(table, "FILTER") {
                return Ok(Status::Dunno);
            }
            if text.is_empty() {
                self.warn(format!(
                    "access table {table} entry \"{datum}\" has FILTER entry without value"
                ));
            } else if !text.contains(':') {
                self.warn(format!(
                    "access table {table} entry \"{datum}\" requires transport:destination"
                ));
            } else {
                self.event(
                    "filter",
                    format!("<{name}>: {label} triggers FILTER {text}"),
                );
                self.out.actions.push(Action::Filter(text.to_string()));
            }
            return Ok(Status::Dunno);
        }
        if is("HOLD") {
            if !self.can_delegate(table, "HOLD") || self.held {
                return Ok(Status::Dunno);
            }
            let shown = if text.is_empty() {
                "triggers HOLD action"
            } else {
                text
            };
            self.event("hold", format!("<{name}>: {label} {shown}"));
            self.held = true;
            self.out.actions.push(Action::Hold(text.to_string()));
            return Ok(Status::Dunno);
        }
        if is("DISCARD") {
            if !self.can_delegate(table, "DISCARD") {
                return Ok(Status::Dunno);
            }
            let shown = if text.is_empty() {
                "triggers DISCARD action"
            } else {
                text
            };
            self.event("discard", format!("<{name}>: {label} {shown}"));
            self.out.actions.push(Action::Discard(text.to_string()));
            self.discard = true;
            return Ok(self.permit(cmd, what, name, Some(table)));
        }
        if is("REDIRECT") || is("BCC") {
            let upper = cmd.to_ascii_uppercase();
            if !self.can_delegate(table, &upper) {
                return Ok(Status::Dunno);
            }
            if !text.contains('@') {
                self.warn(format!(
                    "access table {table} entry \"{datum}\" requires user@domain target"
                ));
            } else if upper == "REDIRECT" {
                self.event(
                    "redirect",
                    format!("<{name}>: {label} triggers REDIRECT {text}"),
                );
                self.out.actions.push(Action::Redirect(text.to_string()));
            } else {
                self.event("bcc", format!("<{name}>: {label} triggers BCC {text}"));
                self.out.actions.push(Action::Bcc(text.to_string()));
            }
            return Ok(Status::Dunno);
        }
        if is("DEFER_IF_PERMIT") || is("DEFER_IF_REJECT") {
            let (dsn, t) = syntax::dsn_split("4.7.1", text);
            let t = if t.is_empty() {
                "Service unavailable"
            } else {
                t
            };
            let msg = format!("<{name}>: {label} rejected: {t}");
            let dsn = self.fix_dsn(dsn, what);
            if is("DEFER_IF_PERMIT") {
                return Ok(self.defer_if_permit(ErrorClass::Policy, r.codes.map_defer, &dsn, msg));
            }
            self.defer_if_reject(ErrorClass::Policy, r.codes.map_defer, &dsn, msg);
            return Ok(Status::Dunno);
        }
        if is("PREPEND") {
            if !self.in_transaction(table, "PREPEND") {
                return Ok(Status::Dunno);
            }
            if self.cmd == Cmd::EndOfData {
                self.warn(format!(
                    "access table {table}: action PREPEND must be used before \
                     smtpd_end_of_data_restrictions"
                ));
            } else if text.is_empty() || !syntax::is_header(text) {
                self.warn(format!(
                    "access table {table} entry \"{datum}\" requires header: text"
                ));
            } else {
                self.out.actions.push(Action::Prepend(text.to_string()));
            }
            return Ok(Status::Dunno);
        }
        if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
            return Ok(self.permit(cmd, what, name, Some(table)));
        }
        let b = value.as_bytes();
        if cmd_len == 3
            && !text.is_empty()
            && (b[0] == b'4' || b[0] == b'5')
            && b[1].is_ascii_digit()
            && b[2].is_ascii_digit()
        {
            let code: u16 = cmd.parse().unwrap_or(450);
            let default = if b[0] == b'4' { "4.7.1" } else { "5.7.1" };
            let (dsn, t) = syntax::dsn_split(default, text);
            let t = if t.is_empty() { "Access denied" } else { t };
            let dsn = self.fix_dsn(dsn, what);
            return Ok(self.reject(
                ErrorClass::Policy,
                code,
                &dsn,
                format!("<{name}>: {label} rejected: {t}"),
            ));
        }
        if is("OK") || is("RELAY") {
            return Ok(self.permit(cmd, what, name, Some(table)));
        }
        if value.contains(':') {
            self.warn(format!(
                "access table {table} has entry with lookup table: {value}"
            ));
            self.warn("do not specify lookup tables inside SMTPD access maps");
            self.warn("define a restriction class and specify its name instead.");
            return Err(self.server_error());
        }
        if self.recursion > MAX_RECURSION {
            self.warn(format!(
                "access table {table} entry {value} causes unreasonable recursion"
            ));
            return Err(self.server_error());
        }
        let list = tokens(value);
        if list.len() > MAX_RESULT_TOKENS {
            self.warn(format!(
                "access table {table} entry {datum} has more than {MAX_RESULT_TOKENS} restrictions"
            ));
            return Err(self.server_error());
        }
        if list.is_empty() {
            self.warn(format!(
                "access table {table} entry {datum} has empty value"
            ));
            return Ok(Status::Ok);
        }
        self.generic(&list, name, what, def)
    }
}

/// access(5) host keys (name, parents, address, shorter addresses). Postfix
/// also looks up the literal name `unknown` for a client without a name
/// (and a HELO of `unknown`), which the shared key builder leaves out.
fn host_keys(name: Option<&str>, addr: Option<&str>, parent_matches: bool) -> Vec<Key> {
    let mut keys = access_host_keys(name, addr, parent_matches);
    if name == Some("unknown") {
        keys.insert(
            0,
            Key {
                text: "unknown".to_string(),
                whole: true,
            },
        );
    }
    keys
}

/// A reply text as Postfix sends it: control characters become spaces,
/// and it is cut at `max` bytes (on a character boundary).
/// `domain=filter` of a DNSBL restriction.
fn split_dnsbl(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((d, f)) => (d, Some(f)),
        None => (arg, None),
    }
}

/// Whether a DNSBL answer matches the `=filter` of the restriction: each
/// octet is a number, `[a..b]` range, or `[a;b;...]` list (Postfix's
/// ip_match patterns, without the bitmasks).
fn dnsbl_filter_matches(filter: &str, addr: &str) -> bool {
    let fs: Vec<&str> = filter.split('.').collect();
    let os: Vec<&str> = addr.split('.').collect();
    if fs.len() != 4 || os.len() != 4 {
        return filter == addr;
    }
    fs.iter().zip(os).all(|(f, o)| {
        let Ok(o) = o.parse::<u16>() else {
            return false;
        };
        match f.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            Some(inner) => inner.split(';').any(|part| match part.split_once("..") {
                Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => a <= o && o <= b,
                    _ => false,
                },
                None => part.parse::<u16>() == Ok(o),
            }),
            None => f.parse::<u16>() == Ok(o),
        }
    })
}

fn sanitize(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}
