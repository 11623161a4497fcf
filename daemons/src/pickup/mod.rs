//! pickup(8): moves the messages local programs dropped in `maildrop/`
//! (sendmail writes them there, complete and durable) to cleanup.
//!
//! A trigger server: master's wakeup timer and sendmail send `W` to
//! `public/pickup`; pickup also scans at start and on its own timer
//! (60 s), so a lost trigger only delays mail. Each scan takes the
//! complete files (the scan skips files still being written), up to
//! [`MAX_PER_SCAN`], and hands them over [`HANDOVERS`] at a time (so that
//! cleanup commits several queue files with one directory fsync); for
//! each:
//!
//! 1. opens it with `QueueFile::open` (bounded reads);
//! 2. hands it to cleanup with `CleanupClient`: `origin=pickup`, the
//!    arrival time, sender, full name, DSN fields, every recipient
//!    (command line and `-t` extracted ones), the `A` records as
//!    `attr.NAME` (`rewrite_context=local`), `attr.log_uid` = the file
//!    owner's uid; then the content;
//! 3. removes the maildrop file only after cleanup answered that the new
//!    queue file is durable. `ID: uid=UID from=<SENDER>` is logged when
//!    the envelope goes out, as Postfix does.
//!
//! A file that went through cleanup before (`postsuper -r` moved it back
//! to maildrop; it carries cleanup's `log_uid` attribute) is handed over
//! with `FLAG_REQUEUE` (cleanup keeps its headers as they are), only its
//! recipients not yet done, and `orig_id=OLD` in the log line, as
//! Postfix's pickup logs it.
//!
//! A crash between 3's answer and the removal submits the message twice
//! (Postfix has the same window). cleanup unreachable or a temporary
//! refusal: the file stays, a warning is logged, the next trigger or
//! timer retries (the scan stops: the other files would fail the same
//! way). A permanent refusal (content rejected, too big, ...) returns
//! the message to its sender, as Postfix's cleanup does for local
//! submissions: each recipient is logged `status=bounced` with
//! cleanup's reason, a `bounce/ID` log names them, and the bounce
//! service ([`crate::bounce`]) sends the notice from the maildrop file;
//! only once it answered is the maildrop file removed (bounce service
//! unavailable: the file stays and the next scan tries again). A damaged
//! file goes to `corrupt/` with a warning and the scan goes on. See
//! `docs/man/pickup.8.md`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use libmail::ipc::cleanup::{is_temporary, CleanupClient, CleanupError, FLAG_REQUEUE};
use libmail::ipc::Attrs;
use libmail::queue::{
    Access, Incomplete, Limits, Queue, QueueFile, QueueLayout, ReadError, CONTENT_FILTER_ATTR,
};
use libmail::service::{stopping, time_param, Service};

/// Most files handed over in one scan; more wait for the next one (which
/// starts at once).
pub const MAX_PER_SCAN: usize = 1000;
/// Maildrop files handed to cleanup at the same time.
const HANDOVERS: usize = 4;
/// Content sent to cleanup in pieces of this size.
const SEND_BUFFER: usize = 64 << 10;
/// Own wakeup timer, in case no trigger comes.
const WAKEUP: Duration = Duration::from_secs(60);

/// What pickup takes from the configuration.
pub struct Options {
    /// `ipc_timeout`: for each exchange with cleanup and the bounce service.
    pub timeout: Duration,
    /// The bounce service's master.cf name (`bounce_service_name`).
    pub bounce_service: String,
    /// `content_filter`: `transport:nexthop` for every message picked up
    /// (a `postsuper -r` message's old one is dropped), empty for none.
    pub content_filter: String,
    /// `receive_override_options`' bits for cleanup.
    pub cleanup_flags: u32,
}

impl Options {
    pub fn from_params(p: &libmail::config::params::Params) -> Options {
        let v = |n: &str| p.value(n).map(|v| v.trim().to_string()).unwrap_or_default();
        let bounce = v("bounce_service_name");
        Options {
            timeout: Duration::from_secs(time_param(p, "ipc_timeout", 3600).max(1)),
            bounce_service: if bounce.is_empty() {
                "bounce".into()
            } else {
                bounce
            },
            content_filter: v("content_filter"),
            cleanup_flags: libmail::ipc::cleanup::receive_override_flags(&v(
                "receive_override_options",
            )),
        }
    }
}

/// What returning a refused message to its sender needs from its
/// envelope (read before the file is closed).
struct ReturnTo {
    sender: String,
    envid: Option<String>,
    ret: u32,
    arrival: (u64, u32),
    rcpts: Vec<libmail::queue::Recipient>,
}

impl ReturnTo {
    fn of(env: &libmail::queue::Envelope) -> ReturnTo {
        ReturnTo {
            sender: env.sender.clone(),
            envid: env.dsn_envid.clone(),
            ret: env.dsn_ret,
            arrival: env.arrival,
            rcpts: env.pending().map(|(_, r)| r.clone()).collect(),
        }
    }
}

/// Returns a message cleanup refused for good to its sender: logs each
/// recipient bounced (under cleanup's queue ID `new_id`, as Postfix
/// logs it), writes `bounce/ID` and asks the bounce service for the
/// notice, which it reads from the maildrop file. An error: nothing was
/// sent, try again later.
fn return_to_sender(
    layout: &QueueLayout,
    id: &libmail::queue::QueueId,
    new_id: &str,
    back: &ReturnTo,
    reason: &str,
    opts: &Options,
) -> Result<(), String> {
    use libmail::deliver::{delivery_line, split_dsn, Outcome, Rcpt, Request, Status, Timing};
    use libmail::queue::statuslog::{self, Entry};
    let (dsn, text) = split_dsn(reason, "5.0.0");
    // A refusal for good is a failure whatever its code says.
    let dsn = if dsn.starts_with('5') {
        dsn.to_string()
    } else {
        "5.0.0".to_string()
    };
    let text = text.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let arrival = back.arrival.0 as f64 + f64::from(back.arrival.1) / 1e6;
    let req = Request {
        queue_id: new_id.to_string(),
        arrival,
        active_time: now.as_secs_f64(),
        ..Request::default()
    };
    let timing = Timing {
        received: now.as_secs_f64(),
        setup: 0.0,
    };
    let mut entries = Vec::with_capacity(back.rcpts.len());
    for r in &back.rcpts {
        let rcpt = Rcpt {
            address: r.address.clone(),
            orig: r.orig.clone(),
            offset: r.offset,
            dsn_notify: r.dsn_notify,
            dsn_orcpt: r.dsn_orcpt.clone(),
        };
        let outcome = Outcome {
            offset: r.offset,
            status: Status::Bounced,
            dsn: dsn.clone(),
            reason: text.clone(),
        };
        libmail::info!("{}", delivery_line(&req, &rcpt, "none", timing, &outcome));
        entries.push(Entry {
            offset: r.offset,
            recipient: r.address.clone(),
            orig_recipient: r.orig.clone(),
            orcpt: r.dsn_orcpt.clone(),
            notify: r.dsn_notify,
            status: dsn.clone(),
            action: "failed".into(),
            reason: text.clone(),
            time: now.as_secs(),
        });
    }
    statuslog::replace(layout, Queue::Bounce, id, &entries)
        .map_err(|e| format!("write the bounce log: {e}"))?;
    let request = crate::bounce::proto::Request {
        kind: libmail::dsn::Kind::Failure,
        queue_name: "maildrop".into(),
        queue_id: id.as_str().to_string(),
        sender: back.sender.clone(),
        envid: back.envid.clone(),
        ret: back.ret,
        arrival: back.arrival.0,
    };
    crate::bounce::proto::request(layout.root(), &opts.bounce_service, &request, opts.timeout)?;
    let _ = statuslog::remove(layout, Queue::Bounce, id);
    Ok(())
}

/// What became of one maildrop file.
#[derive(Debug, PartialEq, Eq)]
pub enum Picked {
    /// Handed over (new queue ID) and removed.
    Queued(String),
    /// Refused permanently and removed.
    Rejected,
    /// Moved to corrupt/.
    Corrupt,
    /// Not ready or vanished: nothing done.
    Skipped,
    /// cleanup unavailable or temporary refusal: left for later.
    Retry,
}

/// One scan of maildrop/: returns whether more files are waiting.
pub fn scan(layout: &QueueLayout, opts: &Options) -> bool {
    let mut done = 0;
    let mut found = Vec::new();
    for r in layout.scan(Queue::Maildrop) {
        match r {
            Ok(x) => found.push(x),
            Err(e) => {
                libmail::warning!("scan {}: {e}", layout.dir(Queue::Maildrop).display());
                break;
            }
        }
        if found.len() > MAX_PER_SCAN {
            break;
        }
    }
    let more = found.len() > MAX_PER_SCAN;
    found.truncate(MAX_PER_SCAN);
    // A few handovers at once: cleanup then commits their queue files
    // together (one directory fsync for the batch) instead of one by one.
    let next = AtomicUsize::new(0);
    let retry = AtomicBool::new(false);
    let handed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..HANDOVERS.min(found.len()) {
            s.spawn(|| loop {
                if stopping() || retry.load(Ordering::Relaxed) {
                    return;
                }
                let Some((id, path)) = found.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                match pickup_file(layout, id, path, opts) {
                    Picked::Retry => retry.store(true, Ordering::Relaxed),
                    _ => {
                        handed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    done += handed.load(Ordering::Relaxed);
    more && done > 0 && !retry.load(Ordering::Relaxed) && !stopping()
}

fn warn_corrupt(layout: &QueueLayout, id: &libmail::queue::QueueId, why: &str) -> Picked {
    libmail::warning!("{id}: {why} -- moving to the corrupt queue");
    if let Err(e) = layout.move_file(id, Queue::Maildrop, Queue::Corrupt, true) {
        libmail::warning!("{id}: cannot move to the corrupt queue: {e}");
    }
    Picked::Corrupt
}

/// Hands one maildrop file to cleanup.
pub fn pickup_file(
    layout: &QueueLayout,
    id: &libmail::queue::QueueId,
    path: &Path,
    opts: &Options,
) -> Picked {
    let qf = match QueueFile::open(path, Access::ReadOnly, &Limits::default()) {
        Ok(q) => q,
        Err(ReadError::Incomplete(Incomplete::NotMarkedComplete)) => return Picked::Skipped,
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Picked::Skipped
        }
        Err(ReadError::Io(e)) => {
            libmail::warning!("{id}: open {}: {e}", path.display());
            return Picked::Skipped;
        }
        Err(e) => return warn_corrupt(layout, id, &e.to_string()),
    };
    let uid = match qf.file().metadata() {
        Ok(m) => m.uid(),
        Err(e) => {
            libmail::warning!("{id}: fstat: {e}");
            return Picked::Skipped;
        }
    };
    let env = qf.envelope();
    // A file cleanup wrote before (it has the log_uid attribute cleanup
    // keeps) was put back by `postsuper -r`: its headers are final, its
    // finished recipients are not delivered again.
    let requeued = env.attr("log_uid").is_some();
    if requeued && env.all_done() {
        drop(qf);
        if let Err(e) = std::fs::remove_file(path) {
            libmail::warning!("{id}: remove {}: {e}", path.display());
        }
        libmail::info!("{id}: removed");
        return Picked::Rejected;
    }
    let mut client = match CleanupClient::connect(layout.root(), opts.timeout) {
        Ok(c) => c,
        Err(e) => {
            libmail::warning!("{id}: cannot hand over to the cleanup service: {e} -- will retry");
            return Picked::Retry;
        }
    };
    let new_id = client.queue_id().to_string();
    let mut a = Attrs::new()
        .with("origin", "pickup")
        .with("arrival", format!("{}.{:06}", env.arrival.0, env.arrival.1))
        .with("sender", &env.sender);
    if let Some(f) = &env.full_name {
        a.push("full_name", f);
    }
    if let Some(e) = &env.dsn_envid {
        a.push("envid", e);
    }
    if env.dsn_ret != 0 {
        a.push("ret", env.dsn_ret);
    }
    // The content filter is this pickup's to decide, not the old file's.
    if !opts.content_filter.is_empty() {
        a.push("filter", &opts.content_filter);
    }
    for (n, v) in env.attrs.iter().chain(env.extracted_attrs.iter()) {
        if n != "log_uid" && n != CONTENT_FILTER_ATTR && valid_name(n) {
            a.push(&format!("attr.{n}"), v);
        }
    }
    if env.attr("rewrite_context").is_none() {
        a.push("attr.rewrite_context", "local");
    }
    a.push("attr.log_uid", uid);
    let flags = opts.cleanup_flags | if requeued { FLAG_REQUEUE } else { 0 };
    if flags != 0 {
        a.push("flags", flags);
    }
    if requeued {
        a.push("orig_id", id.as_str());
    }
    for (_, r) in env.pending() {
        a.push_recipient(
            &r.address,
            r.orig.as_deref(),
            r.dsn_notify,
            r.dsn_orcpt.as_deref(),
        );
    }
    // Logged as the envelope goes out, as Postfix's pickup does (before
    // cleanup logs the message-id).
    if requeued {
        libmail::info!("{new_id}: uid={uid} from=<{}> orig_id={id}", env.sender);
    } else {
        libmail::info!("{new_id}: uid={uid} from=<{}>", env.sender);
    }
    let sent = (|| -> Result<(), Result<String, std::io::Error>> {
        client.envelope(&a).map_err(Err)?;
        let mut buf = Vec::with_capacity(SEND_BUFFER + 4096);
        let mut reader = qf.content();
        loop {
            match reader.next_piece() {
                Ok(None) => break,
                Ok(Some((piece, ends))) => {
                    buf.extend_from_slice(piece);
                    if ends {
                        buf.push(b'\n');
                    }
                    if buf.len() >= SEND_BUFFER {
                        client.content(&buf).map_err(Err)?;
                        buf.clear();
                    }
                }
                Err(e) => return Err(Ok(e.to_string())),
            }
        }
        client.content(&buf).map_err(Err)
    })();
    match sent {
        Ok(()) => {}
        // Damaged content: drop the connection (cleanup removes its
        // unfinished file) and move the maildrop file aside.
        Err(Ok(why)) => {
            drop(client);
            return warn_corrupt(layout, id, &why);
        }
        Err(Err(e)) => {
            libmail::warning!("{id}: cannot hand over to the cleanup service: {e} -- will retry");
            return Picked::Retry;
        }
    }
    let sender = env.sender.clone();
    // The file stays open until the verdict: a refused message is
    // returned from its envelope (read then, not for every message).
    match client.finish() {
        Ok(queued_as) => {
            if let Err(e) = std::fs::remove_file(path) {
                libmail::warning!("{id}: remove {}: {e}", path.display());
            }
            Picked::Queued(queued_as)
        }
        Err(CleanupError::Io(e)) => {
            libmail::warning!("{id}: cleanup service: {e} -- will retry");
            Picked::Retry
        }
        Err(CleanupError::Refused(r)) if is_temporary(r.status) => {
            libmail::warning!("{new_id}: {} -- will retry (maildrop file {id})", r.reason);
            Picked::Retry
        }
        Err(CleanupError::Refused(r)) => {
            let back = ReturnTo::of(qf.envelope());
            drop(qf);
            match return_to_sender(layout, id, &new_id, &back, &r.reason, opts) {
                Ok(()) => {
                    if let Err(e) = std::fs::remove_file(path) {
                        libmail::warning!("{id}: remove {}: {e}", path.display());
                    }
                    Picked::Rejected
                }
                Err(e) => {
                    libmail::warning!(
                        "{new_id}: uid={uid} from=<{sender}>: {}: cannot return it to the sender: \
                         {e} -- will retry (maildrop file {id})",
                        r.reason
                    );
                    Picked::Retry
                }
            }
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

pub fn main() {
    let mut service = Service::start("pickup");
    let triggers = service.triggers();
    let opts = Options::from_params(&service.params);
    let layout = service.layout.clone();
    service.ready();
    'serve: loop {
        // Scan until nothing more waits (bounded by MAX_PER_SCAN each).
        while scan(&layout, &opts) {
            if stopping() {
                break 'serve;
            }
        }
        // Wait for a trigger or the timer, noticing SIGTERM.
        let mut waited = Duration::ZERO;
        loop {
            if stopping() {
                break 'serve;
            }
            let slice = Duration::from_millis(500);
            match triggers.recv_timeout(slice) {
                Ok(_) => {
                    // Collapse a burst of triggers into one scan.
                    while triggers.try_recv().is_ok() {}
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    waited += slice;
                    if waited >= WAKEUP {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(slice);
                    waited += slice;
                    if waited >= WAKEUP {
                        break;
                    }
                }
            }
        }
    }
}
