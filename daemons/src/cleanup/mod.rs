//! cleanup(8): the daemon every message passes through on its way into
//! the queue. pickup, smtpd and (later) bounce and local hand it a
//! message over `public/cleanup` with the protocol of
//! `libmail::ipc::cleanup`; cleanup rewrites the addresses, checks and
//! completes the headers, writes the queue file into `incoming/`, makes
//! it durable and only then says yes, then wakes qmgr.
//!
//! * [`addresses`]: canonical form, canonical maps, masquerading,
//!   virtual alias expansion.
//! * [`headers`]: the header block, the headers cleanup adds, the
//!   address-list tokenizer.
//! * [`checks`]: header/body check actions and their log lines.
//! * [`mime`]: the MIME structure, so that part headers and the headers
//!   of attached messages meet `mime_header_checks` and
//!   `nested_header_checks` rather than `body_checks`.
//! * [`message`]: one message, envelope to verdict.
//! * [`server`]: the connection handler and the group committer.
//!
//! One process serves many connections, a thread each (master's
//! `maxproc` bounds them). Queue files finished by all connections go to
//! one committer thread that makes whatever is waiting durable with
//! `libmail::queue::sync_many` (one fsync per file and one per
//! directory), so under load the directory fsync is shared; a lone
//! message is synced at once. See `docs/man/cleanup.8.md`.

pub mod addresses;
pub mod checks;
pub mod headers;
pub mod message;
pub mod mime;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use libmail::address::domains::DomainList;
use libmail::address::rewrite::Rewriter;
use libmail::config::params::{split_list, Params};
use libmail::queue::QueueLayout;
use libmail::service::{bool_param, num_param, time_param, Service};
use libmail::table::search::Maps;
use libmail::table::{OpenOptions, TableError};

use addresses::{classes, AddressRules};

/// cleanup's configuration, read once at start (a changed table is
/// picked up when the process is replaced after `max_idle`/`max_use`).
pub struct Config {
    pub layout: QueueLayout,
    pub myhostname: String,
    pub mail_name: String,
    pub long_ids: bool,
    pub rules: AddressRules,
    /// `remote_header_rewrite_domain` is set: headers of remote mail are
    /// rewritten (and completed) too.
    pub remote_header_rewrite: bool,
    pub always_add_missing_headers: bool,
    pub undisclosed_recipients_header: String,
    pub always_bcc: String,
    pub sender_bcc: Option<Maps>,
    pub recipient_bcc: Option<Maps>,
    pub header_checks: Option<Arc<Maps>>,
    /// MIME headers (`MIME-Version`, `Content-Type`, ...) of any header
    /// block, and every header of a body part (default `$header_checks`).
    pub mime_header_checks: Option<Arc<Maps>>,
    /// The other headers of attached messages (default `$header_checks`).
    pub nested_header_checks: Option<Arc<Maps>>,
    pub body_checks: Option<Maps>,
    /// `internal_mail_filter_classes` names `bounce`: notices from the
    /// bounce service go through the header and body checks too (by
    /// default they do not, as in Postfix: a notice that returns a
    /// rejected message would be rejected in turn).
    pub inspect_bounces: bool,
    /// `disable_mime_input_processing`: all after the primary headers is
    /// body.
    pub disable_mime_input_processing: bool,
    pub mime_nesting_limit: usize,
    pub mime_boundary_length_limit: usize,
    pub body_checks_size_limit: u64,
    pub header_size_limit: usize,
    pub hopcount_limit: usize,
    pub line_length_limit: usize,
    /// 0: no limit.
    pub message_size_limit: u64,
    pub queue_minfree: u64,
    pub duplicate_filter_limit: usize,
    pub enable_original_recipient: bool,
    /// `empty_address_recipient`: who gets mail for the empty address.
    pub empty_address_recipient: String,
    pub ipc_timeout: Duration,
    /// `max_use`: also the most messages one kept connection carries.
    pub max_use: usize,
}

fn maps(params: &Params, name: &str) -> Result<Option<Maps>, TableError> {
    let v = params
        .value(name)
        .map_err(|e| TableError::Config(format!("{name}: {e}")))?;
    if v.trim().is_empty() {
        return Ok(None);
    }
    Maps::open(name, &v, &OpenOptions::default()).map(Some)
}

/// header_checks, mime_header_checks and nested_header_checks. The last
/// two default to `$header_checks`: tables named by the same value are
/// opened once and shared, not compiled three times.
type HeaderMaps = (Option<Arc<Maps>>, Option<Arc<Maps>>, Option<Arc<Maps>>);

fn header_maps(params: &Params) -> Result<HeaderMaps, TableError> {
    let mut opened: Vec<(String, Arc<Maps>)> = Vec::new();
    let mut get = |name: &str| -> Result<Option<Arc<Maps>>, TableError> {
        let v = params
            .value(name)
            .map_err(|e| TableError::Config(format!("{name}: {e}")))?;
        let v = v.trim().to_string();
        if v.is_empty() {
            return Ok(None);
        }
        if let Some((_, m)) = opened.iter().find(|(seen, _)| *seen == v) {
            return Ok(Some(m.clone()));
        }
        let m = Arc::new(Maps::open(name, &v, &OpenOptions::default())?);
        opened.push((v, m.clone()));
        Ok(Some(m))
    };
    Ok((
        get("header_checks")?,
        get("mime_header_checks")?,
        get("nested_header_checks")?,
    ))
}

fn text(params: &Params, name: &str) -> String {
    params.value(name).unwrap_or_default()
}

impl Config {
    /// Reads the parameters and opens every table; any problem is a
    /// configuration error (fatal at start, as in Postfix).
    pub fn load(params: &Params, layout: QueueLayout) -> Result<Config, String> {
        let e = |e: TableError| e.to_string();
        let rewriter = Rewriter::new(params);
        let myorigin = rewriter.myorigin().to_string();
        let propagate = text(params, "propagate_unmatched_extensions").to_ascii_lowercase();
        let propagate = split_list(&propagate)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        let limit = |name: &str, default: i64| num_param(params, name, default).max(0) as usize;
        let rules = AddressRules {
            rewriter,
            myorigin,
            local_domains: Some(DomainList::from_param(params, "mydestination").map_err(e)?),
            delimiters: text(params, "recipient_delimiter"),
            propagate_canonical: propagate.iter().any(|p| p == "canonical"),
            propagate_virtual: propagate.iter().any(|p| p == "virtual"),
            canonical: maps(params, "canonical_maps").map_err(e)?,
            canonical_classes: classes(&text(params, "canonical_classes")),
            sender_canonical: maps(params, "sender_canonical_maps").map_err(e)?,
            sender_canonical_classes: classes(&text(params, "sender_canonical_classes")),
            recipient_canonical: maps(params, "recipient_canonical_maps").map_err(e)?,
            recipient_canonical_classes: classes(&text(params, "recipient_canonical_classes")),
            masq_domains: split_list(&text(params, "masquerade_domains"))
                .into_iter()
                .map(str::to_string)
                .collect(),
            masq_exceptions: split_list(&text(params, "masquerade_exceptions"))
                .into_iter()
                .map(str::to_string)
                .collect(),
            masq_classes: classes(&text(params, "masquerade_classes")),
            virtual_alias: maps(params, "virtual_alias_maps").map_err(e)?,
            recursion_limit: limit("virtual_alias_recursion_limit", 1000).max(1),
            expansion_limit: limit("virtual_alias_expansion_limit", 1000).max(1),
        };
        let (header_checks, mime_header_checks, nested_header_checks) =
            header_maps(params).map_err(e)?;
        Ok(Config {
            layout,
            myhostname: text(params, "myhostname"),
            mail_name: {
                let n = text(params, "mail_name");
                if n.is_empty() {
                    "Postfix".into()
                } else {
                    n
                }
            },
            long_ids: bool_param(params, "enable_long_queue_ids", false),
            rules,
            remote_header_rewrite: !text(params, "remote_header_rewrite_domain")
                .trim()
                .is_empty(),
            always_add_missing_headers: bool_param(params, "always_add_missing_headers", false),
            undisclosed_recipients_header: text(params, "undisclosed_recipients_header"),
            always_bcc: text(params, "always_bcc").trim().to_string(),
            sender_bcc: maps(params, "sender_bcc_maps").map_err(e)?,
            recipient_bcc: maps(params, "recipient_bcc_maps").map_err(e)?,
            header_checks,
            mime_header_checks,
            nested_header_checks,
            body_checks: maps(params, "body_checks").map_err(e)?,
            inspect_bounces: params
                .value("internal_mail_filter_classes")
                .unwrap_or_default()
                .split(|c: char| c == ',' || c.is_whitespace())
                .any(|w| w.eq_ignore_ascii_case("bounce")),
            disable_mime_input_processing: bool_param(
                params,
                "disable_mime_input_processing",
                false,
            ),
            mime_nesting_limit: limit("mime_nesting_limit", 100),
            mime_boundary_length_limit: limit("mime_boundary_length_limit", 2048).max(1),
            body_checks_size_limit: num_param(params, "body_checks_size_limit", 51200).max(0)
                as u64,
            header_size_limit: limit("header_size_limit", 102_400).max(1),
            hopcount_limit: limit("hopcount_limit", 50).max(1),
            line_length_limit: limit("line_length_limit", 2048).max(1),
            message_size_limit: num_param(params, "message_size_limit", 10_240_000).max(0) as u64,
            queue_minfree: num_param(params, "queue_minfree", 0).max(0) as u64,
            duplicate_filter_limit: limit("duplicate_filter_limit", 1000),
            enable_original_recipient: bool_param(params, "enable_original_recipient", true),
            empty_address_recipient: Some(text(params, "empty_address_recipient"))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "MAILER-DAEMON".into()),
            ipc_timeout: Duration::from_secs(time_param(params, "ipc_timeout", 3600).max(1)),
            max_use: num_param(params, "max_use", 100).max(1) as usize,
        })
    }
}

pub fn main() {
    let service = Service::start("cleanup");
    let cfg = match Config::load(&service.params, service.layout.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => libmail::log::fatal(&e),
    };
    let committer = server::Committer::start(service.layout.root());
    service.serve_streams(true, move |stream| server::serve(&cfg, &committer, stream));
}

#[cfg(test)]
mod tests;
