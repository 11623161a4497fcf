//! Delivery requests: what qmgr asks a delivery agent (local, virtual,
//! error, discard, later smtp and lmtp) to do, what the agent answers for
//! each recipient, and the `to=<...>, relay=..., status=...` log line
//! every agent writes in Postfix's exact shape.
//!
//! ```text
//! qmgr connects to private/TRANSPORT (the master.cf service name)
//! agent -> qmgr    agent=ready                 (qmgr waits qmgr_ipc_timeout for it)
//! qmgr  -> agent   request list (Request::to_attrs)
//! agent -> qmgr    reply list: for each recipient, in request order,
//!                  offset=N status=sent|deferred|bounced dsn=X.Y.Z reason=TEXT
//! ```
//!
//! One request per connection turn; qmgr may send the next request on the
//! same connection after the reply. The agent reads the message content
//! from the queue file itself (`queue_name` + `queue_id`, a validated
//! ID, so no path comes from the wire). The agent does not touch the
//! queue file: qmgr marks recipients done from the reply, so a queue file
//! has one writer.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ipc::attr::Attrs;
use crate::log::format_delay;

/// One recipient of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rcpt {
    pub address: String,
    /// Before aliasing/rewriting (`orig_to=` when it differs).
    pub orig: Option<String>,
    /// Its identity in the queue file (the `R` record's offset).
    pub offset: u64,
    pub dsn_notify: u32,
    pub dsn_orcpt: Option<String>,
}

/// A delivery request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// The queue the file is in (`active`).
    pub queue_name: String,
    pub queue_id: String,
    /// The transport (master.cf service name) the request was sent to.
    pub transport: String,
    /// The next hop: for local/virtual the recipient domain, for smtp the
    /// destination, for error the reason text.
    pub nexthop: String,
    pub sender: String,
    /// Arrival time of the message, seconds since the epoch (fractional).
    pub arrival: f64,
    /// When qmgr moved the message into the active queue.
    pub active_time: f64,
    /// Content size in bytes.
    pub size: u64,
    pub dsn_envid: Option<String>,
    pub dsn_ret: u32,
    /// Named attributes of the message (client_name, protocol, ...).
    pub attrs: Vec<(String, String)>,
    pub rcpts: Vec<Rcpt>,
}

/// The outcome for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "sent" => Some(Status::Sent),
            "deferred" => Some(Status::Deferred),
            "bounced" => Some(Status::Bounced),
            _ => None,
        }
    }
}

/// One recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub offset: u64,
    pub status: Status,
    /// Enhanced status code, `2.0.0`.
    pub dsn: String,
    /// The text in parentheses in the log (`delivered to maildir`).
    pub reason: String,
}

/// What an agent says about the current request besides its outcomes
/// (see [`site_failure`] and [`dsn_action`]); added to the reply by
/// [`serve_connection`], which clears it before each request.
#[derive(Default)]
struct Notes {
    site: Option<(String, String)>,
    actions: Vec<(u64, &'static str)>,
}

thread_local! {
    static NOTES: std::cell::RefCell<Notes> = std::cell::RefCell::new(Notes::default());
}

fn take_notes() -> Notes {
    NOTES.with(|n| std::mem::take(&mut *n.borrow_mut()))
}

/// Called by an agent while it serves a request: no server of the next
/// hop could be reached or talked to (connection or handshake failure),
/// as opposed to the recipients being refused. qmgr uses it to slow down
/// and finally suspend deliveries to a dead site (Postfix's "hop status").
/// The reply carries it as `site_dsn` and `site_reason`.
pub fn site_failure(dsn: &str, reason: &str) {
    NOTES.with(|n| n.borrow_mut().site = Some((dsn.to_string(), reason.to_string())));
}

/// Called by an agent for a delivered recipient whose DSN disposition is
/// not plain final delivery: `relayed` (handed to a server without DSN:
/// a NOTIFY=SUCCESS notice says "relayed"), or `passed` (the next server
/// announced DSN and took the NOTIFY request over: no notice from here,
/// as RFC 3461 and Postfix have it). The reply carries it as
/// `dsn_action=OFFSET:ACTION`.
pub fn dsn_action(offset: u64, action: &'static str) {
    NOTES.with(|n| n.borrow_mut().actions.push((offset, action)));
}

/// The DSN actions a reply carries.
pub fn reply_dsn_actions(reply: &Attrs) -> Vec<(u64, String)> {
    reply
        .iter()
        .filter(|(n, _)| *n == "dsn_action")
        .filter_map(|(_, v)| {
            let (o, a) = v.split_once(':')?;
            Some((o.parse().ok()?, a.to_string()))
        })
        .collect()
}

/// The site failure a reply carries, if any.
pub fn reply_site_failure(reply: &Attrs) -> Option<(String, String)> {
    Some((
        reply.get("site_dsn")?.to_string(),
        reply.get("site_reason").unwrap_or("").to_string(),
    ))
}

/// `soft_bounce`: this agent turns its bounces into deferrals (set once
/// by [`run_agent`] from the configuration). The log says
/// `status=SOFTBOUNCE` with a 4.x.x code, as Postfix's does.
static SOFT_BOUNCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_soft_bounce(on: bool) {
    SOFT_BOUNCE.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn soft_bounce() -> bool {
    SOFT_BOUNCE.load(std::sync::atomic::Ordering::Relaxed)
}

/// `5.1.1` → `4.1.1`.
fn soften_dsn(dsn: &str) -> String {
    match dsn.strip_prefix('5') {
        Some(rest) => format!("4{rest}"),
        None => dsn.to_string(),
    }
}

/// What qmgr is told under `soft_bounce`: bounced becomes deferred.
fn softened(outcomes: Vec<Outcome>) -> Vec<Outcome> {
    soften(outcomes, soft_bounce())
}

fn soften(mut outcomes: Vec<Outcome>, on: bool) -> Vec<Outcome> {
    if on {
        for o in outcomes.iter_mut().filter(|o| o.status == Status::Bounced) {
            o.status = Status::Deferred;
            o.dsn = soften_dsn(&o.dsn);
        }
    }
    outcomes
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

impl Request {
    pub fn to_attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.push("queue_name", &self.queue_name)
            .push("queue_id", &self.queue_id)
            .push("transport", &self.transport)
            .push("nexthop", &self.nexthop)
            .push("sender", &self.sender)
            .push("arrival", format!("{:.6}", self.arrival))
            .push("active_time", format!("{:.6}", self.active_time))
            .push("size", self.size)
            .push("ret", self.dsn_ret);
        if let Some(e) = &self.dsn_envid {
            a.push("envid", e);
        }
        for (n, v) in &self.attrs {
            a.push(&format!("attr.{n}"), v);
        }
        for r in &self.rcpts {
            a.push_recipient(
                &r.address,
                r.orig.as_deref(),
                r.dsn_notify,
                r.dsn_orcpt.as_deref(),
            )
            .push("rcpt.offset", r.offset);
        }
        a
    }

    pub fn from_attrs(a: &Attrs) -> io::Result<Request> {
        let mut req = Request::default();
        for (n, v) in a.iter() {
            let num = || -> io::Result<u64> { v.parse().map_err(|_| bad(format!("bad {n}"))) };
            let float = || -> io::Result<f64> { v.parse().map_err(|_| bad(format!("bad {n}"))) };
            match n {
                "queue_name" => req.queue_name = v.into(),
                "queue_id" => req.queue_id = v.into(),
                "transport" => req.transport = v.into(),
                "nexthop" => req.nexthop = v.into(),
                "sender" => req.sender = v.into(),
                "arrival" => req.arrival = float()?,
                "active_time" => req.active_time = float()?,
                "size" => req.size = num()?,
                "ret" => req.dsn_ret = num()? as u32,
                "envid" => req.dsn_envid = Some(v.into()),
                "rcpt" => req.rcpts.push(Rcpt {
                    address: v.into(),
                    ..Default::default()
                }),
                _ if n.starts_with("rcpt.") => {
                    let r = req
                        .rcpts
                        .last_mut()
                        .ok_or_else(|| bad(format!("{n} before any rcpt")))?;
                    match n {
                        "rcpt.offset" => r.offset = num()?,
                        "rcpt.orig" => r.orig = Some(v.into()),
                        "rcpt.notify" => r.dsn_notify = num()? as u32,
                        "rcpt.orcpt" => r.dsn_orcpt = Some(v.into()),
                        _ => {}
                    }
                }
                _ if n.starts_with("attr.") => req.attrs.push((n[5..].into(), v.into())),
                _ => {}
            }
        }
        if req.queue_id.is_empty() || req.rcpts.is_empty() {
            return Err(bad("delivery request without queue_id or recipients"));
        }
        Ok(req)
    }

    /// A named attribute of the message.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Encodes the reply to a request.
pub fn outcomes_to_attrs(outcomes: &[Outcome]) -> Attrs {
    let mut a = Attrs::new();
    for o in outcomes {
        a.push("offset", o.offset)
            .push("status", o.status.as_str())
            .push("dsn", &o.dsn)
            .push("reason", &o.reason);
    }
    a
}

/// Decodes the reply to a request.
pub fn outcomes_from_attrs(a: &Attrs) -> io::Result<Vec<Outcome>> {
    let mut out: Vec<Outcome> = Vec::new();
    for (n, v) in a.iter() {
        match n {
            "offset" => out.push(Outcome {
                offset: v.parse().map_err(|_| bad("bad offset"))?,
                status: Status::Deferred,
                dsn: "4.3.0".into(),
                reason: String::new(),
            }),
            "status" | "dsn" | "reason" => {
                let o = out
                    .last_mut()
                    .ok_or_else(|| bad("reply field before offset"))?;
                match n {
                    "status" => o.status = Status::parse(v).ok_or_else(|| bad("bad status"))?,
                    "dsn" => o.dsn = v.into(),
                    _ => o.reason = v.into(),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Times an agent measures for the `delays=a/b/c/d` field.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// When the agent received the request.
    pub received: f64,
    /// Connection setup time (c).
    pub setup: f64,
}

/// The delivery log line, as Postfix writes it (without the tag):
/// `ID: to=<a>, orig_to=<o>, relay=R, delay=D, delays=a/b/c/d, dsn=X, status=S (reason)`.
pub fn delivery_line(
    req: &Request,
    rcpt: &Rcpt,
    relay: &str,
    timing: Timing,
    outcome: &Outcome,
) -> String {
    let now = now_f64();
    let a = (req.active_time - req.arrival).max(0.0);
    let b = (timing.received - req.active_time).max(0.0);
    let c = timing.setup.max(0.0);
    let d = (now - timing.received - c).max(0.0);
    let total = (now - req.arrival).max(0.0);
    let mut line = format!("{}: to=<{}>, ", req.queue_id, rcpt.address);
    if let Some(o) = rcpt.orig.as_deref().filter(|o| *o != rcpt.address) {
        line.push_str(&format!("orig_to=<{o}>, "));
    }
    let soft = soft_bounce() && outcome.status == Status::Bounced;
    line.push_str(&format!(
        "relay={relay}, delay={}, delays={}/{}/{}/{}, dsn={}, status={} ({})",
        format_delay(total),
        format_delay(a),
        format_delay(b),
        format_delay(c),
        format_delay(d),
        if soft {
            soften_dsn(&outcome.dsn)
        } else {
            outcome.dsn.clone()
        },
        if soft {
            "SOFTBOUNCE"
        } else {
            outcome.status.as_str()
        },
        outcome.reason
    ));
    line
}

/// The agent side of one connection from qmgr: reads requests until
/// qmgr closes it (or the daemon is told to stop, between requests),
/// calls `deliver` for each, and sends back its outcomes (one per
/// recipient, in request order; missing ones are filled in as deferred
/// by qmgr). Postfix keeps the same loop in deliver_request.c.
pub fn serve_connection<S, F>(
    stream: S,
    idle: std::time::Duration,
    layout: &crate::queue::QueueLayout,
    mut deliver: F,
) where
    S: io::Read + io::Write + std::os::fd::AsRawFd,
    F: FnMut(&Request) -> Vec<Outcome>,
{
    let fd = stream.as_raw_fd();
    let mut conn = crate::ipc::attr::Conn::new(stream);
    // The greeting: qmgr waits a short time for it, so an agent that is
    // not running (throttled, crashing) is noticed at once.
    if conn.send(&greeting()).is_err() {
        return;
    }
    loop {
        // Wait for the next request in short steps, so that a daemon told
        // to stop (reload) lets go of an idle connection at once.
        let started = std::time::Instant::now();
        loop {
            if crate::service::stopping() || started.elapsed() >= idle {
                return;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 250) } > 0 {
                break;
            }
        }
        let attrs = match conn.recv() {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::UnexpectedEof
                ) {
                    crate::warning!("read delivery request: {e}");
                }
                return;
            }
        };
        let req = match Request::from_attrs(&attrs) {
            Ok(r) => r,
            Err(e) => {
                crate::warning!("bad delivery request: {e}");
                return;
            }
        };
        // The shared lock keeps postsuper from moving or removing the
        // file until the done marks are written (libmail::queue::lock).
        let mut held = match delivery_lock(layout, &req) {
            Ok(h) => h,
            Err(e) => {
                crate::warning!("{}: lock queue file: {e}", req.queue_id);
                None
            }
        };
        take_notes();
        let outcomes = if held.is_some() {
            softened(deliver(&req))
        } else {
            // Gone (postsuper moved or removed it) or unreadable: deliver
            // nothing; qmgr sees the file gone and forgets the message.
            same_outcome(&req, Status::Deferred, "4.3.0", GONE)
        };
        let mut reply = outcomes_to_attrs(&outcomes);
        let notes = take_notes();
        if let Some((dsn, reason)) = notes.site {
            reply.push("site_dsn", dsn).push("site_reason", reason);
        }
        for (offset, action) in notes.actions {
            reply.push("dsn_action", format!("{offset}:{action}"));
        }
        if let Some(h) = held.take() {
            let (marked, keep) = mark_done(layout, &req, &outcomes, h);
            held = keep;
            match marked {
                Ok(true) => {
                    reply.push("marked", "yes");
                }
                Ok(false) => {}
                Err(e) => crate::warning!("{}: cannot mark recipients done: {e}", req.queue_id),
            }
        }
        // The marks are written: the lock ends before the reply goes, so
        // that qmgr, once it has the reply, finds the file free to remove
        // or recycle (libmail::queue::recycle).
        drop(held);
        if let Err(e) = conn.send(&reply) {
            crate::warning!("send delivery status: {e}");
            return;
        }
    }
}

/// The reason given for the recipients of a message whose queue file
/// was moved or removed before delivery began.
pub const GONE: &str = "queue file was moved or removed (postsuper)";

/// The shared lock on the request's queue file; `None` when it is gone.
fn delivery_lock(
    layout: &crate::queue::QueueLayout,
    req: &Request,
) -> Result<Option<Held>, String> {
    crate::queue::lock::for_marking(&queue_path(layout, req)?)
        .map(|l| l.map(Held::Locked))
        .map_err(|e| e.to_string())
}

/// The locked queue file, until the done marks are written: as locked, or opened
/// as a queue file through the same descriptor to mark recipients done.
enum Held {
    Locked(crate::queue::lock::Locked),
    /// Kept only for its descriptor, whose closing ends the lock.
    Open {
        _lock: crate::queue::QueueFile,
    },
}

/// The same outcome for every recipient of `req`, not logged.
fn same_outcome(req: &Request, status: Status, dsn: &str, reason: &str) -> Vec<Outcome> {
    req.rcpts
        .iter()
        .map(|r| Outcome {
            offset: r.offset,
            status,
            dsn: dsn.to_string(),
            reason: reason.to_string(),
        })
        .collect()
}

/// Runs a delivery agent: starts the daemon, loads its configuration
/// once (`load`; an error is fatal, before master hears "ready"), and
/// serves qmgr's connections with [`serve_connection`], calling `deliver`
/// for each request. local, virtual, error and discard are this plus
/// their `deliver`.
pub fn run_agent<C, L, D>(program: &str, load: L, deliver: D)
where
    C: Send + Sync + 'static,
    L: FnOnce(&crate::service::Service) -> Result<C, String>,
    D: Fn(&C, &Request) -> Vec<Outcome> + Send + Sync + 'static,
{
    let svc = crate::service::Service::start(program);
    set_soft_bounce(crate::service::bool_param(
        &svc.params,
        "soft_bounce",
        false,
    ));
    let cfg = std::sync::Arc::new(load(&svc).unwrap_or_else(|e| crate::log::fatal(&e)));
    let layout = svc.layout.clone();
    svc.serve_streams(false, move |stream| {
        let _ = stream.set_timeouts(Some(CONNECTION_IDLE));
        serve_connection(stream, CONNECTION_IDLE, &layout, |req| deliver(&cfg, req));
    });
}

/// Marks the recipients that were delivered done in the
/// queue file before the reply goes out, as Postfix's agents do: a qmgr
/// that dies between the reply and its own bookkeeping then does not
/// deliver them again. The mark is written, not fsynced (Postfix does
/// not sync it either): a process crash keeps it (the kernel has it), a
/// power loss may lose it and the recipient is delivered again — the
/// duplicate window 2 of libmail::queue, never a loss. True when
/// something was marked; with it, what keeps the lock until the reply
/// is sent.
fn mark_done(
    layout: &crate::queue::QueueLayout,
    req: &Request,
    outcomes: &[Outcome],
    held: Held,
) -> (Result<bool, String>, Option<Held>) {
    let Held::Locked(locked) = held else {
        return (Ok(false), Some(held));
    };
    if !outcomes.iter().any(|o| o.status == Status::Sent) {
        return (Ok(false), Some(Held::Locked(locked)));
    }
    if !locked.writable() {
        return (
            mark_done_reopen(layout, req, outcomes),
            Some(Held::Locked(locked)),
        );
    }
    let path = match queue_path(layout, req) {
        Ok(p) => p,
        Err(e) => return (Err(e), Some(Held::Locked(locked))),
    };
    // Through the locked descriptor: no second open. Should reading fail,
    // the lock ends early; the reply then says nothing was marked and
    // qmgr marks the recipients itself, on its own descriptor.
    let (file, meta) = locked.into_parts();
    let mut f = match crate::queue::QueueFile::from_file(
        file,
        meta,
        &path,
        &crate::queue::Limits::default(),
    ) {
        Ok(f) => f,
        Err(e) => return (Err(e.to_string()), None),
    };
    let r = mark_sent(&mut f, outcomes);
    (r, Some(Held::Open { _lock: f }))
}

fn queue_path(
    layout: &crate::queue::QueueLayout,
    req: &Request,
) -> Result<std::path::PathBuf, String> {
    use crate::queue::{Queue, QueueId};
    let id = QueueId::parse(&req.queue_id).map_err(|e| e.to_string())?;
    let queue = Queue::from_name(&req.queue_name).ok_or("bad queue name")?;
    Ok(layout.path_of(queue, &id))
}

/// Marks the delivered recipients of `outcomes` done in `f`.
fn mark_sent(f: &mut crate::queue::QueueFile, outcomes: &[Outcome]) -> Result<bool, String> {
    // Only delivered recipients: a bounced one is marked by qmgr once its
    // bounce log entry is durable, so a crash in between never loses the
    // sender's notice.
    let finished: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.status == Status::Sent)
        .map(|o| o.offset)
        .collect();
    let indices: Vec<usize> = f
        .envelope()
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| finished.contains(&r.offset))
        .map(|(i, _)| i)
        .collect();
    for i in indices {
        f.mark_done(i).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// [`mark_done`] when the lock is on a read-only descriptor: the file is
/// opened again for writing.
fn mark_done_reopen(
    layout: &crate::queue::QueueLayout,
    req: &Request,
    outcomes: &[Outcome],
) -> Result<bool, String> {
    use crate::queue::{Access, Limits, QueueFile};
    let mut f = QueueFile::open(
        &queue_path(layout, req)?,
        Access::ReadWrite,
        &Limits::default(),
    )
    .map_err(|e| e.to_string())?;
    mark_sent(&mut f, outcomes)
}

/// Whether the agent already marked the finished recipients of a reply
/// done (see [`serve_connection`]).
pub fn reply_marked(reply: &Attrs) -> bool {
    reply.get("marked") == Some("yes")
}

/// One outcome for every recipient of `req` (the error, retry and
/// discard agents), each logged with `relay=none`. `text` may start with
/// an enhanced status code, which then replaces `default_dsn`; an empty
/// text becomes `default_text`.
pub fn same_for_all(
    req: &Request,
    status: Status,
    text: &str,
    default_dsn: &str,
    default_text: &str,
) -> Vec<Outcome> {
    let received = now_f64();
    let (dsn, text) = split_dsn(text, default_dsn);
    let text = if text.is_empty() { default_text } else { text };
    let outcomes = same_outcome(req, status, dsn, text);
    let t = Timing {
        received,
        setup: 0.0,
    };
    for (r, o) in req.rcpts.iter().zip(&outcomes) {
        crate::info!("{}", delivery_line(req, r, "none", t, o));
    }
    outcomes
}

/// How long an agent keeps an idle connection from qmgr.
pub const CONNECTION_IDLE: Duration = Duration::from_secs(3600);

/// How long a client waits for an agent's reply (a command run by local
/// may take `command_time_limit`, 1000 s by default).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a client waits for an agent's greeting (Postfix's
/// `qmgr_ipc_timeout`).
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to the agent listening at `path` and waits for its greeting
/// ([`GREETING_TIMEOUT`]); then allows [`REPLY_TIMEOUT`] for each reply.
pub fn connect_agent(
    path: &std::path::Path,
) -> io::Result<crate::ipc::Conn<std::os::unix::net::UnixStream>> {
    let s = crate::ipc::connect(path, GREETING_TIMEOUT)?;
    let mut c = crate::ipc::Conn::new(s);
    let hello = c.expect()?;
    if hello.get("agent") != Some("ready") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "delivery agent did not greet",
        ));
    }
    c.get_ref().set_read_timeout(Some(REPLY_TIMEOUT))?;
    c.get_ref().set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(c)
}

/// Hands `req` to the agent of `req.transport` (`private/TRANSPORT`) and
/// returns its outcomes, which that agent logged: what local does with
/// `mailbox_transport` and `fallback_transport` (Postfix's delivery
/// pass). Done marks stay with the caller.
pub fn pass_request(queue_directory: &std::path::Path, req: &Request) -> io::Result<Vec<Outcome>> {
    let path = crate::ipc::private(queue_directory, &req.transport);
    let mut c = connect_agent(&path)?;
    c.send(&req.to_attrs())?;
    outcomes_from_attrs(&c.expect()?)
}

/// What an agent says first on every connection.
pub fn greeting() -> Attrs {
    Attrs::new().with("agent", "ready")
}

/// Splits `4.3.2 text` into (`4.3.2`, `text`); without a code, the
/// default `dsn`.
pub fn split_dsn<'a>(text: &'a str, default: &'a str) -> (&'a str, &'a str) {
    let t = text.trim();
    let (first, rest) = t.split_once(' ').unwrap_or((t, ""));
    let parts: Vec<&str> = first.split('.').collect();
    let is_code = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if is_code {
        (first, rest.trim_start())
    } else {
        (default, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Request {
        Request {
            queue_name: "active".into(),
            queue_id: "4F2A51C0D2".into(),
            transport: "local".into(),
            nexthop: "example.com".into(),
            sender: "a@example.org".into(),
            arrival: 1000.0,
            active_time: 1000.5,
            size: 321,
            dsn_envid: None,
            dsn_ret: 0,
            attrs: vec![("client_name".into(), "x".into())],
            rcpts: vec![
                Rcpt {
                    address: "b@example.com".into(),
                    orig: Some("postmaster@example.com".into()),
                    offset: 77,
                    dsn_notify: 0,
                    dsn_orcpt: None,
                },
                Rcpt {
                    address: "c@example.com".into(),
                    offset: 99,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn soft_bounce_turns_bounces_into_deferrals() {
        assert_eq!(soften_dsn("5.1.1"), "4.1.1");
        assert_eq!(soften_dsn("4.4.1"), "4.4.1");
        let o = |status, dsn: &str| Outcome {
            offset: 1,
            status,
            dsn: dsn.into(),
            reason: "r".into(),
        };
        let out = soften(
            vec![o(Status::Bounced, "5.1.1"), o(Status::Sent, "2.0.0")],
            true,
        );
        assert_eq!(out[0].status, Status::Deferred);
        assert_eq!(out[0].dsn, "4.1.1");
        assert_eq!(out[1].status, Status::Sent);
        let off = soften(vec![o(Status::Bounced, "5.1.1")], false);
        assert_eq!(off[0].status, Status::Bounced);
    }

    #[test]
    fn dsn_codes_are_split_off_only_when_well_formed() {
        assert_eq!(
            split_dsn("5.1.2 domain gone", "5.0.0"),
            ("5.1.2", "domain gone")
        );
        assert_eq!(split_dsn("domain gone", "5.0.0"), ("5.0.0", "domain gone"));
        assert_eq!(split_dsn("5.1 x", "4.0.0"), ("4.0.0", "5.1 x"));
        assert_eq!(split_dsn("", "5.0.0"), ("5.0.0", ""));
    }

    #[test]
    fn request_round_trips() {
        let r = sample();
        assert_eq!(Request::from_attrs(&r.to_attrs()).unwrap(), r);
    }

    #[test]
    fn outcomes_round_trip() {
        let o = vec![
            Outcome {
                offset: 77,
                status: Status::Sent,
                dsn: "2.0.0".into(),
                reason: "delivered to maildir".into(),
            },
            Outcome {
                offset: 99,
                status: Status::Bounced,
                dsn: "5.1.1".into(),
                reason: "unknown user: \"c\"".into(),
            },
        ];
        assert_eq!(outcomes_from_attrs(&outcomes_to_attrs(&o)).unwrap(), o);
    }

    #[test]
    fn log_line_has_postfix_field_order() {
        let r = sample();
        let o = Outcome {
            offset: 77,
            status: Status::Sent,
            dsn: "2.0.0".into(),
            reason: "delivered to maildir".into(),
        };
        let t = Timing {
            received: now_f64(),
            setup: 0.0,
        };
        let line = delivery_line(&r, &r.rcpts[0], "local", t, &o);
        let re = regex::Regex::new(
            r"^4F2A51C0D2: to=<b@example.com>, orig_to=<postmaster@example.com>, relay=local, delay=\d+, delays=0.5/\d+/0/0, dsn=2.0.0, status=sent \(delivered to maildir\)$",
        )
        .unwrap();
        assert!(re.is_match(&line), "{line}");
        let line2 = delivery_line(&r, &r.rcpts[1], "local", t, &o);
        assert!(!line2.contains("orig_to"));
    }
}
