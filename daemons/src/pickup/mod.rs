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
//! way). A permanent refusal: the file is removed with a warning —
//! Postfix would return it to the sender, but there is no bounce daemon
//! yet. A damaged file goes to `corrupt/` with a warning and the scan
//! goes on. See `docs/man/pickup.8.md`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use libmail::ipc::cleanup::{is_temporary, CleanupClient, CleanupError, FLAG_REQUEUE};
use libmail::ipc::Attrs;
use libmail::queue::{Access, Incomplete, Limits, Queue, QueueFile, QueueLayout, ReadError};
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
pub fn scan(layout: &QueueLayout, timeout: Duration) -> bool {
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
                match pickup_file(layout, id, path, timeout) {
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
    timeout: Duration,
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
    let mut client = match CleanupClient::connect(layout.root(), timeout) {
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
    for (n, v) in env.attrs.iter().chain(env.extracted_attrs.iter()) {
        if n != "log_uid" && valid_name(n) {
            a.push(&format!("attr.{n}"), v);
        }
    }
    if env.attr("rewrite_context").is_none() {
        a.push("attr.rewrite_context", "local");
    }
    a.push("attr.log_uid", uid);
    if requeued {
        a.push("flags", FLAG_REQUEUE);
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
    drop(qf);
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
            libmail::warning!(
                "{new_id}: uid={uid} from=<{sender}>: {} -- message removed (maildrop file {id}; \
                 not returned to the sender: no bounce service yet)",
                r.reason
            );
            if let Err(e) = std::fs::remove_file(path) {
                libmail::warning!("{id}: remove {}: {e}", path.display());
            }
            Picked::Rejected
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
    let timeout = Duration::from_secs(time_param(&service.params, "ipc_timeout", 3600).max(1));
    let layout = service.layout.clone();
    service.ready();
    'serve: loop {
        // Scan until nothing more waits (bounded by MAX_PER_SCAN each).
        while scan(&layout, timeout) {
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
