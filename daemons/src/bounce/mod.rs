//! bounce(8): delivery status notifications. qmgr asks, at the end of a
//! delivery pass, for the notices a message owes its sender (or the
//! postmaster); this daemon reads the message's status log and queue
//! file, composes the notices ([`libmail::dsn`]) and submits them through
//! cleanup like any other mail, and answers only once cleanup said the
//! new queue file is durable.
//!
//! # Services
//!
//! master.cf runs this one program as three services; the service name
//! decides which per-message log a request reads, as in Postfix:
//!
//! | service (parameter) | log | notices |
//! |---|---|---|
//! | `bounce` (`bounce_service_name`) | `bounce/ID` | non-delivery notices for recipients that bounced |
//! | `defer` (`defer_service_name`) | `defer/ID` | delay warnings; at expiry, the non-delivery notice for the recipients still pending |
//! | `trace` (`trace_service_name`) | `trace/ID` | success notices (NOTIFY=SUCCESS) |
//!
//! # Protocol
//!
//! Attribute lists ([`libmail::ipc::attr`]) on `private/SERVICE`, one
//! request per connection ([`proto`]):
//!
//! ```text
//! qmgr   -> bounce   request=notify kind=failure|delay|success
//!                    queue_name=active queue_id=ID
//!                    sender=ADDR ret=N arrival=SECONDS [envid=TEXT]
//! bounce -> qmgr     status=0 notices=N       the notices owed are in the queue, durable
//!                                             (N = 0: none was owed: NOTIFY, null sender)
//!                  | status=1 reason=TEXT     nothing is settled: keep the log, ask again later
//! ```
//!
//! The daemon changes neither the log nor the queue file: on `status=0`
//! qmgr removes the bounce or trace log, marks the expired recipients
//! done, or marks the delay warning sent (libmail::queue::lock). A crash
//! between cleanup's answer and qmgr's bookkeeping sends a notice twice;
//! nothing makes one go missing. The envelope fields of the request
//! repeat the queue file's, so a notice still goes out (without the
//! original message) when the file cannot be read.
//!
//! # Who gets what (Postfix's rules)
//!
//! * The sender gets a notice listing the recipients whose NOTIFY asks
//!   for it (no NOTIFY: failures and delays; NEVER: nothing). The notice
//!   has the null sender; it returns the message as RET says (whole by
//!   default for failures, within `bounce_size_limit`; the header for
//!   delays and successes).
//! * A failure of null-sender mail (a bounce that bounced) is never
//!   returned: with `2bounce` (or `bounce`) in `notify_classes` it goes to
//!   `2bounce_notice_recipient`, whole, from `double_bounce_sender`
//!   (`postmaster non-delivery notification`); otherwise it is dropped and
//!   logged. Delays of null-sender mail go to `2bounce_notice_recipient`
//!   with `2bounce` in `notify_classes`. Success notices are never sent to
//!   the null sender.
//! * Mail from `double_bounce_sender` is never reported on (`warning:
//!   ID: undeliverable postmaster notification discarded`): that ends
//!   bounce loops.
//! * With `bounce` in `notify_classes`, the postmaster
//!   (`bounce_notice_recipient`) also gets a copy of each non-delivery
//!   notice, headers only; with `delay`, `delay_notice_recipient` gets the
//!   delay warnings. These copies list every recipient whatever its
//!   NOTIFY, and their failure is only a warning.
//!
//! Log lines (Postfix's): `ID: sender non-delivery notification: NEWID`,
//! `ID: sender delay notification: NEWID`, `ID: sender delivery status
//! notification: NEWID`, `ID: postmaster non-delivery notification:
//! NEWID`, `ID: postmaster delay notification: NEWID`.
//!
//! Templates: `bounce_template_file` (bounce(5)); a file that cannot be
//! read or parsed is fatal at start (master throttles the service, and
//! qmgr keeps the messages and their logs until it is fixed); a template
//! with a bad header or an undefined `$name` is ignored with a warning.

pub mod proto;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libmail::config::params::{split_list, Params};
use libmail::deliver::now_f64;
use libmail::dsn::{self, Kind, Original, Recipient, Report, Reporter, Returned, Templates, Times};
use libmail::ipc::attr::{Attrs, Conn};
use libmail::ipc::cleanup::CleanupClient;
use libmail::queue::file::DSN_RET_FULL;
use libmail::queue::statuslog::{self, Entry};
use libmail::queue::{lock, Access, Limits, Queue, QueueFile, QueueId, QueueLayout};
use libmail::service::{num_param, time_param, value, Service, Stream};
use libmail::{info, warning};

use proto::{reply_to_attrs, Reply, Request};

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long cleanup may take to take a notice (its fsync included).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(100);

/// Everything a request needs, loaded once at start.
pub(crate) struct Config {
    /// The log this service reads.
    log: Queue,
    queue_directory: PathBuf,
    layout: QueueLayout,
    myhostname: String,
    mail_name: String,
    /// `double_bounce_sender`, as written (cleanup qualifies it).
    double_bounce_sender: String,
    /// The same, qualified with `$myorigin`: mail from it is never
    /// reported on.
    double_bounce_address: String,
    notify_classes: HashSet<String>,
    bounce_notice_recipient: String,
    twobounce_notice_recipient: String,
    delay_notice_recipient: String,
    bounce_size_limit: u64,
    max_queue_lifetime: u64,
    threaded: bool,
    templates: Templates,
    /// Each kind's template text, expanded.
    texts: HashMap<Kind, Vec<String>>,
}

impl Config {
    pub(crate) fn load(
        svc_name: &str,
        params: &Params,
        layout: &QueueLayout,
    ) -> Result<Config, String> {
        let name_of = |p: &str, d: &str| {
            let v = value(params, p);
            if v.trim().is_empty() {
                d.to_string()
            } else {
                v.trim().to_string()
            }
        };
        let log = if svc_name == name_of("bounce_service_name", "bounce") {
            Queue::Bounce
        } else if svc_name == name_of("defer_service_name", "defer") {
            Queue::Defer
        } else if svc_name == name_of("trace_service_name", "trace") {
            Queue::Trace
        } else {
            return Err(format!(
                "unknown service name: {svc_name} (expected $bounce_service_name, \
                 $defer_service_name or $trace_service_name)"
            ));
        };
        let myhostname = value(params, "myhostname");
        let myorigin = value(params, "myorigin");
        let double_bounce_sender = name_of("double_bounce_sender", "double-bounce");
        let double_bounce_address = if double_bounce_sender.contains('@') {
            double_bounce_sender.clone()
        } else {
            format!("{double_bounce_sender}@{myorigin}")
        };
        let times = Times {
            delay_warning_time: time_param(params, "delay_warning_time", 0),
            maximal_queue_lifetime: time_param(params, "maximal_queue_lifetime", 5 * 86400),
        };
        let file = value(params, "bounce_template_file");
        let templates = if file.trim().is_empty() {
            Templates::builtin()
        } else {
            let text = read_bounded(Path::new(file.trim()), dsn::MAX_TEMPLATE_FILE)
                .map_err(|e| format!("open {}: {e}", file.trim()))?;
            let (t, warnings) = Templates::parse(&text, file.trim())?;
            for w in warnings {
                warning!("{w}");
            }
            t
        };
        let lookup = |n: &str| params.raw(n);
        let mut texts = HashMap::new();
        let mut templates = templates;
        for kind in [Kind::Failure, Kind::Delay, Kind::Success] {
            let text = match templates.get(kind).expand(&lookup, &times) {
                Ok(t) => t,
                Err(e) => {
                    warning!(
                        "{}: {e} in {} template -- using the built-in one",
                        file.trim(),
                        kind.as_str()
                    );
                    let builtin = Templates::builtin();
                    let t = builtin.get(kind).clone();
                    match kind {
                        Kind::Failure => templates.failure = t,
                        Kind::Delay => templates.delay = t,
                        Kind::Success => templates.success = t,
                    }
                    templates.get(kind).expand(&lookup, &times)?
                }
            };
            texts.insert(kind, text);
        }
        let classes = value(params, "notify_classes");
        Ok(Config {
            log,
            queue_directory: layout.root().to_path_buf(),
            layout: layout.clone(),
            mail_name: value(params, "mail_name"),
            myhostname,
            double_bounce_sender,
            double_bounce_address,
            notify_classes: split_list(&classes)
                .into_iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            bounce_notice_recipient: name_of("bounce_notice_recipient", "postmaster"),
            twobounce_notice_recipient: name_of("2bounce_notice_recipient", "postmaster"),
            delay_notice_recipient: name_of("delay_notice_recipient", "postmaster"),
            bounce_size_limit: num_param(params, "bounce_size_limit", 50000).max(0) as u64,
            max_queue_lifetime: times.maximal_queue_lifetime,
            threaded: value(params, "enable_threaded_bounces").trim() == "yes",
            templates,
            texts,
        })
    }

    fn notifies(&self, class: &str) -> bool {
        self.notify_classes.contains(class)
    }
}

/// Reads a small file whole, refusing anything larger than `max`.
fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    String::from_utf8(buf).map_err(|_| io::Error::other("not UTF-8 text"))
}

pub fn main() {
    let svc = Service::start("bounce");
    let cfg = Config::load(&svc.name, &svc.params, &svc.layout)
        .unwrap_or_else(|e| libmail::log::fatal(&e));
    let cfg = Arc::new(cfg);
    svc.serve_streams(true, move |stream| serve(&cfg, stream));
}

/// One connection: one request, one reply.
fn serve(cfg: &Config, stream: Stream) {
    if stream.set_timeouts(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut conn = Conn::new(stream);
    let attrs = match conn.recv() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            warning!("read request: {e}");
            return;
        }
    };
    let reply: Reply = match Request::from_attrs(&attrs) {
        Ok(req) => notify(cfg, &req).inspect_err(|e| {
            warning!(
                "{}: {} notice not sent: {e}",
                req.queue_id,
                req.kind.as_str()
            )
        }),
        Err(e) => {
            warning!("bad request: {e}");
            Err(format!("bad request: {e}"))
        }
    };
    if let Err(e) = conn.send(&reply_to_attrs(&reply)) {
        warning!("send reply: {e}");
    }
}

/// What is read from the queue file.
struct Message {
    sender: String,
    /// The message came with SMTPUTF8 (smtpd records `smtputf8=yes`):
    /// notices use the `message/global*` types.
    smtputf8: bool,
    envid: Option<String>,
    ret: u32,
    arrival: u64,
    original: Original,
}

/// Handles one request: the number of notices now in the queue.
pub(crate) fn notify(cfg: &Config, req: &Request) -> Reply {
    let id = QueueId::parse(&req.queue_id).map_err(|e| format!("bad queue ID: {e}"))?;
    let queue = Queue::from_name(&req.queue_name)
        .filter(|q| {
            matches!(
                q,
                Queue::Active | Queue::Incoming | Queue::Deferred | Queue::Hold | Queue::Maildrop
            )
        })
        .ok_or_else(|| format!("bad queue name: {}", req.queue_name))?;
    let entries = statuslog::read(&cfg.layout, cfg.log, &id)
        .map_err(|e| format!("read {} log: {e}", cfg.log.name()))?;
    let entries = latest_per_recipient(entries);
    if entries.is_empty() {
        return Ok(0);
    }
    let msg = read_message(cfg, &cfg.layout.path_of(queue, &id), req);
    let ids = id.as_str();
    let sender = msg.sender.as_str();
    let is_double_bounce = sender.eq_ignore_ascii_case(&cfg.double_bounce_address)
        || sender.eq_ignore_ascii_case(&cfg.double_bounce_sender);
    let all: Vec<Recipient> = entries.iter().map(recipient).collect();
    match req.kind {
        Kind::Success if sender.is_empty() || is_double_bounce => Ok(0),
        _ if is_double_bounce => {
            warning!("{ids}: undeliverable postmaster notification discarded");
            Ok(0)
        }
        Kind::Failure | Kind::Delay if sender.is_empty() => {
            let wanted = match req.kind {
                Kind::Failure => cfg.notifies("2bounce") || cfg.notifies("bounce"),
                _ => cfg.notifies("2bounce"),
            };
            if !wanted {
                if req.kind == Kind::Failure {
                    info!("{ids}: undeliverable mail from the null sender discarded (no 2bounce in notify_classes)");
                }
                return Ok(0);
            }
            let new = send(
                cfg,
                &msg,
                ids,
                req.kind,
                Notice::PostmasterOfNullSender,
                &cfg.twobounce_notice_recipient,
                &all,
            )?;
            info!("{ids}: postmaster {} notification: {new}", what(req.kind));
            Ok(1)
        }
        kind => {
            let wanted: Vec<Recipient> = entries
                .iter()
                .filter(|e| dsn::wants(e.notify, kind))
                .map(recipient)
                .collect();
            let mut n = 0;
            if !wanted.is_empty() {
                let new = send(cfg, &msg, ids, kind, Notice::Sender, sender, &wanted)?;
                info!("{ids}: sender {} notification: {new}", what(kind));
                n += 1;
            }
            let copy_to = match kind {
                Kind::Failure if cfg.notifies("bounce") => Some(&cfg.bounce_notice_recipient),
                Kind::Delay if cfg.notifies("delay") => Some(&cfg.delay_notice_recipient),
                _ => None,
            };
            if let Some(pm) = copy_to {
                match send(cfg, &msg, ids, kind, Notice::PostmasterCopy, pm, &all) {
                    Ok(new) => {
                        info!("{ids}: postmaster {} notification: {new}", what(kind));
                        n += 1;
                    }
                    Err(e) => warning!(
                        "{ids}: postmaster notice failed while {} {sender}: {e}",
                        match kind {
                            Kind::Failure => "bouncing to",
                            _ => "warning",
                        }
                    ),
                }
            }
            Ok(n)
        }
    }
}

/// The word in the log line of each kind.
fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Failure => "non-delivery",
        Kind::Delay => "delay",
        Kind::Success => "delivery status",
    }
}

/// Who a notice is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// The sender: null envelope sender, the template's text.
    Sender,
    /// A postmaster copy (notify_classes bounce or delay): from
    /// double_bounce_sender, no template text, the header only.
    PostmasterCopy,
    /// Undeliverable mail of the null sender (notify_classes 2bounce):
    /// from double_bounce_sender, the whole message.
    PostmasterOfNullSender,
}

/// The newest entry of each recipient, in the order recipients first
/// appear.
fn latest_per_recipient(entries: Vec<Entry>) -> Vec<Entry> {
    let mut order: Vec<(u64, String)> = Vec::new();
    let mut latest: HashMap<(u64, String), Entry> = HashMap::new();
    for e in entries {
        let key = (e.offset, e.recipient.clone());
        if !latest.contains_key(&key) {
            order.push(key.clone());
        }
        latest.insert(key, e);
    }
    order
        .into_iter()
        .filter_map(|k| latest.remove(&k))
        .collect()
}

fn recipient(e: &Entry) -> Recipient {
    Recipient {
        address: e.recipient.clone(),
        orig: e.orig_recipient.clone(),
        orcpt: e.orcpt.clone(),
        action: e.action.clone(),
        status: e.status.clone(),
        reason: e.reason.clone(),
        last_attempt: e.time,
    }
}

/// The envelope and content of the message, under a shared lock (so
/// postsuper does not move it meanwhile); what the request says when the
/// file is gone or unreadable.
fn read_message(cfg: &Config, path: &Path, req: &Request) -> Message {
    let fallback = || Message {
        sender: req.sender.clone(),
        smtputf8: false,
        envid: req.envid.clone(),
        ret: req.ret,
        arrival: req.arrival,
        original: Original {
            returned: Returned::Unavailable,
            message_id: None,
        },
    };
    let held = match lock::for_delivery(path) {
        Ok(Some(h)) => h,
        Ok(None) => return fallback(),
        Err(e) => {
            warning!("{}: lock queue file: {e}", req.queue_id);
            return fallback();
        }
    };
    let qf = match QueueFile::open(path, Access::ReadOnly, &Limits::default()) {
        Ok(f) => f,
        Err(e) => {
            warning!("{}: read queue file: {e}", req.queue_id);
            return fallback();
        }
    };
    let env = qf.envelope();
    // Read the whole message when some notice may return it; the others
    // take its header from it.
    let full = req.kind == Kind::Failure || env.dsn_ret & DSN_RET_FULL != 0;
    let mut content = qf.content();
    let original = dsn::read_original(
        || {
            content
                .next_piece()
                .map(|p| p.map(|(b, end)| (b.to_vec(), end)))
                .map_err(|e| io::Error::other(e.to_string()))
        },
        env.size.content_size,
        full,
        cfg.bounce_size_limit,
    )
    .unwrap_or_else(|e| {
        warning!("{}: read message content: {e}", req.queue_id);
        Original {
            returned: Returned::Unavailable,
            message_id: None,
        }
    });
    drop(held);
    Message {
        sender: env.sender.clone(),
        smtputf8: env.attr("smtputf8") == Some("yes"),
        envid: env.dsn_envid.clone(),
        ret: env.dsn_ret,
        arrival: env.arrival.0,
        original,
    }
}

/// Composes one notice and hands it to cleanup; the new queue ID once
/// it is durable.
fn send(
    cfg: &Config,
    msg: &Message,
    queue_id: &str,
    kind: Kind,
    notice: Notice,
    to: &str,
    rcpts: &[Recipient],
) -> Result<String, String> {
    let postmaster = notice != Notice::Sender;
    let full = match notice {
        Notice::PostmasterOfNullSender => true,
        _ => dsn::wants_full_message(kind, msg.ret, postmaster),
    };
    let original = if full {
        msg.original.clone()
    } else {
        msg.original.headers_only()
    };
    let envelope_sender = if postmaster {
        cfg.double_bounce_sender.as_str()
    } else {
        ""
    };
    let mut c =
        CleanupClient::connect(&cfg.queue_directory, CLEANUP_TIMEOUT).map_err(|e| e.to_string())?;
    let new_id = c.queue_id().to_string();
    let now = now_f64();
    let report = Report {
        kind,
        postmaster_copy: notice == Notice::PostmasterCopy,
        to,
        queue_id,
        sender: &msg.sender,
        envid: msg.envid.as_deref(),
        arrival: msg.arrival,
        smtputf8: msg.smtputf8,
        recipients: rcpts,
        original: &original,
    };
    let template = cfg.templates.get(kind);
    let reporter = Reporter {
        myhostname: &cfg.myhostname,
        mail_name: &cfg.mail_name,
        max_queue_lifetime: cfg.max_queue_lifetime,
        threaded: cfg.threaded,
        template,
        text: cfg.texts.get(&kind).map(Vec::as_slice).unwrap_or(&[]),
        new_id: &new_id,
        now: now as u64,
    };
    let body = dsn::compose(&report, &reporter);
    let env = Attrs::new()
        .with("origin", "bounce")
        .with("arrival", format!("{now:.6}"))
        .with("sender", envelope_sender)
        .with("rcpt", to)
        .with("attr.rewrite_context", "local");
    c.envelope(&env).map_err(|e| e.to_string())?;
    c.content(&body).map_err(|e| e.to_string())?;
    c.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
