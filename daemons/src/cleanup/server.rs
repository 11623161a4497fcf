//! One cleanup connection, and the group committer shared by all of them.
//!
//! The order on the wire is `libmail::ipc::cleanup`'s: `queue_id=ID` as
//! soon as the (incomplete) file exists, then the envelope list, the
//! content chunks and `#0`, then the verdict. A refused message is still
//! read to its end marker (only counted), so the client reads the verdict
//! instead of a broken pipe; the read timeout (`ipc_timeout`) bounds a
//! client that stops sending. A client that goes away before `#0`
//! leaves nothing behind: the unfinished file is removed when the
//! writer is dropped.

use std::io;

use std::sync::mpsc;

use libmail::ipc::cleanup::{default_reason, Late, STAT_BAD, STAT_DEFER, STAT_WRITE};
use libmail::ipc::{Attrs, Conn, Item};
use libmail::queue::{sync_many, Durable, Queue, Unsynced, Writer};
use libmail::service::Stream;

use super::message::{Message, Outcome};
use super::Config;

/// Most files synced in one group.
const MAX_BATCH: usize = 256;

type Job = (Unsynced, mpsc::SyncSender<io::Result<Durable>>);

/// The group committer: a thread that makes finished files durable.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    /// qmgr's wake-up, one per burst of messages rather than one each.
    qmgr: libmail::ipc::Coalesced,
}

impl Committer {
    pub fn start(queue_directory: &std::path::Path) -> Committer {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let (files, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                    for (r, reply) in sync_many(files).into_iter().zip(replies) {
                        let _ = reply.send(r);
                    }
                }
            })
            .unwrap_or_else(|e| libmail::log::fatal(&format!("cannot start a thread: {e}")));
        Committer {
            tx,
            qmgr: libmail::ipc::Coalesced::start(
                libmail::ipc::public(queue_directory, "qmgr"),
                b"W",
            ),
        }
    }

    /// Makes `file` durable (with whatever else is waiting).
    pub fn sync(&self, file: Unsynced) -> io::Result<Durable> {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Err(mpsc::SendError((f, _))) = self.tx.send((file, tx)) {
            // The committer is gone: sync here.
            return f.sync();
        }
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("committer thread ended")))
    }
}

/// Sends the verdict; false when it could not be written (the client is
/// gone).
fn reply(conn: &mut Conn<Stream>, status: u32, reason: &str, id: Option<&str>) -> bool {
    let mut a = Attrs::new().with("status", status);
    if !reason.is_empty() {
        a.push("reason", reason);
    }
    if let Some(id) = id {
        a.push("queue_id", id);
    }
    conn.send(&a).is_ok()
}

/// Serves one connection: one message, or message after message while
/// the client asks to keep it (`keep=1`, libmail::ipc::cleanup), at most
/// `max_use` of them, and not once the process retires.
pub fn serve(cfg: &Config, committer: &Committer, stream: Stream) {
    let _ = stream.set_timeouts(Some(cfg.ipc_timeout));
    let mut conn = Conn::new(stream);
    for _ in 0..cfg.max_use.max(1) {
        if !message(cfg, committer, &mut conn) || libmail::service::retired() {
            return;
        }
    }
}

/// One message; true when the client asked to keep the connection and
/// the exchange ended cleanly (its verdict was sent).
fn message(cfg: &Config, committer: &Committer, conn: &mut Conn<Stream>) -> bool {
    if cfg.queue_minfree > 0 {
        if let Ok(free) = cfg.layout.free_bytes() {
            if free < cfg.queue_minfree {
                libmail::warning!(
                    "not enough free space in {}: {free} bytes < queue_minfree {}",
                    cfg.layout.root().display(),
                    cfg.queue_minfree
                );
                reply(conn, STAT_DEFER, "4.3.1 Insufficient system storage", None);
                return false;
            }
        }
    }
    let style = libmail::queue::IdStyle::from_long_ids(cfg.long_ids);
    let writer = match Writer::create(&cfg.layout, Queue::Incoming, style) {
        Ok(w) => w,
        Err(e) => {
            libmail::warning!(
                "cannot create a queue file in {}: {e}",
                cfg.layout.dir(Queue::Incoming).display()
            );
            reply(conn, STAT_WRITE, default_reason(STAT_WRITE), None);
            return false;
        }
    };
    let id = writer.id().to_string();
    if conn.send(&Attrs::new().with("queue_id", &id)).is_err() {
        return false;
    }
    let env = match conn.recv() {
        Ok(Some(a)) => a,
        Ok(None) => return false,
        Err(e) => {
            if e.kind() == io::ErrorKind::InvalidData {
                libmail::warning!("{id}: bad envelope from client: {e}");
            }
            return false;
        }
    };
    let keep = env.get("keep") == Some("1");
    let mut msg = Message::new(cfg, writer, &env);
    loop {
        match conn.recv_item() {
            Ok(Some(Item::Data(d))) if d.is_empty() => break,
            Ok(Some(Item::Data(d))) => msg.feed(&d),
            // HOLD, DISCARD or FILTER decided at the end of the content
            // (smtpd's end-of-data restrictions): the only list allowed
            // here.
            Ok(Some(Item::Attrs(a))) => match Late::from_attrs(&a) {
                Some(late) => msg.late(late),
                None => {
                    libmail::warning!("{id}: protocol error: attribute list inside the content");
                    reply(conn, STAT_BAD, default_reason(STAT_BAD), None);
                    return false;
                }
            },
            Ok(None) => return false,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    libmail::warning!("{id}: reading message content: {e}");
                }
                return false;
            }
        }
    }
    let sent = match msg.finish() {
        Outcome::Refused { status, reason } => reply(conn, status, &reason, None),
        Outcome::Discarded => reply(conn, 0, "", Some(&id)),
        Outcome::Queued { file, hold } => match committer.sync(file) {
            Ok(durable) => {
                let told = reply(conn, 0, "", Some(&id));
                if !told {
                    // The client died before it could learn that the
                    // message is queued, so it still has it and will
                    // submit it again: withdraw this copy unless qmgr
                    // already took it (then it is a duplicate, the window
                    // named in libmail::queue).
                    let q = if hold { Queue::Hold } else { Queue::Incoming };
                    if cfg.layout.remove(q, &durable.id(), false).is_ok() {
                        libmail::warning!(
                            "{id}: client went away before the reply: message withdrawn"
                        );
                        return false;
                    }
                }
                if !hold {
                    committer.qmgr.fire();
                }
                told
            }
            Err(e) => {
                libmail::warning!("{id}: queue file write error: {e}");
                reply(conn, STAT_WRITE, default_reason(STAT_WRITE), None)
            }
        },
    };
    sent && keep
}
