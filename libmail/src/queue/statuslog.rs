//! Per-message status logs: `defer/ID`, `bounce/ID` and `trace/ID`
//! (Postfix's logfiles of the same names), one entry per recipient
//! outcome that the sender may have to hear about.
//!
//! * `bounce/ID`: recipients that failed for good. qmgr appends them as
//!   the agents reply, durably, before it marks them done; the bounce
//!   daemon (service `bounce`) turns the log into a non-delivery notice
//!   when the message finishes a delivery pass, and qmgr removes the log
//!   once the notice is safe in the queue.
//! * `defer/ID`: the last failure of each recipient still to be
//!   delivered. qmgr rewrites it at the end of every pass (the newest
//!   entry per recipient), `postqueue -p` shows its reasons, and the
//!   bounce daemon (service `defer`) reads it for delay warnings and, at
//!   expiry, for the non-delivery notice.
//! * `trace/ID`: recipients delivered with NOTIFY=SUCCESS, for the
//!   success notice (service `trace`).
//!
//! An entry is an attribute list ([`crate::ipc::attr`] encoding):
//! `offset`, `recipient`, `orig_recipient`, `orcpt`, `notify`, `status`
//! (enhanced code), `action` (`delayed`, `failed`, `delivered`, ...),
//! `reason`, `time`. Appends use O_APPEND; a torn last entry (crash) is
//! ignored by the reader; rewrites go through a temporary file and a
//! rename. The defer log is advisory (losing it loses reasons, never
//! mail); the bounce and trace logs are the only record of a notice
//! still owed, so their appends are fsynced.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::dirs::{Queue, QueueLayout};
use super::id::QueueId;
use crate::ipc::attr::{encode, Attrs, Conn};

/// Largest status log read back.
const MAX_LOG: u64 = 16 << 20;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub offset: u64,
    pub recipient: String,
    pub orig_recipient: Option<String>,
    /// The DSN ORCPT (`type;address`), if the client gave one.
    pub orcpt: Option<String>,
    /// The recipient's DSN NOTIFY flags (0 = not given).
    pub notify: u32,
    pub status: String,
    pub action: String,
    pub reason: String,
    pub time: u64,
}

impl Entry {
    fn to_attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.push("offset", self.offset)
            .push("recipient", &self.recipient)
            .push("status", &self.status)
            .push("action", &self.action)
            .push("reason", &self.reason)
            .push("time", self.time);
        if let Some(o) = &self.orig_recipient {
            a.push("orig_recipient", o);
        }
        if let Some(o) = &self.orcpt {
            a.push("orcpt", o);
        }
        if self.notify != 0 {
            a.push("notify", self.notify);
        }
        a
    }

    fn from_attrs(a: &Attrs) -> Entry {
        Entry {
            offset: a.get_num("offset").unwrap_or(0),
            recipient: a.get("recipient").unwrap_or("").into(),
            orig_recipient: a.get("orig_recipient").map(str::to_string),
            orcpt: a.get("orcpt").map(str::to_string),
            notify: a.get_num("notify").unwrap_or(0),
            status: a.get("status").unwrap_or("").into(),
            action: a.get("action").unwrap_or("").into(),
            reason: a.get("reason").unwrap_or("").into(),
            time: a.get_num("time").unwrap_or(0),
        }
    }
}

/// Appends entries to `q/ID` (`q` is [`Queue::Defer`], [`Queue::Bounce`]
/// or [`Queue::Trace`]).
pub fn append(layout: &QueueLayout, q: Queue, id: &QueueId, entries: &[Entry]) -> io::Result<()> {
    append_inner(layout, q, id, entries, false)
}

/// [`append`], then `fdatasync`: the entries survive a crash.
pub fn append_durable(
    layout: &QueueLayout,
    q: Queue,
    id: &QueueId,
    entries: &[Entry],
) -> io::Result<()> {
    append_inner(layout, q, id, entries, true)
}

fn append_inner(
    layout: &QueueLayout,
    q: Queue,
    id: &QueueId,
    entries: &[Entry],
    sync: bool,
) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let dir = layout.ensure_dir(q, &id.hash_key())?;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(id.as_str()))?;
    f.write_all(&encode_all(entries))?;
    if sync {
        crate::queue::count_fsync();
        f.sync_data()?;
    }
    Ok(())
}

fn encode_all(entries: &[Entry]) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in entries {
        buf.extend_from_slice(&encode(&e.to_attrs()));
    }
    buf
}

/// Replaces `q/ID` with `entries` (none: removes it). Written to a
/// temporary name (`ID.tmp`, never a queue ID) and renamed over the log,
/// so a reader sees the old or the new log, never a mix.
pub fn replace(layout: &QueueLayout, q: Queue, id: &QueueId, entries: &[Entry]) -> io::Result<()> {
    if entries.is_empty() {
        return remove(layout, q, id);
    }
    let dir = layout.ensure_dir(q, &id.hash_key())?;
    let tmp: PathBuf = dir.join(format!("{}.tmp", id.as_str()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f
        .write_all(&encode_all(entries))
        .and_then(|_| std::fs::rename(&tmp, dir.join(id.as_str())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `q/ID` exists and is not empty.
pub fn has_entries(layout: &QueueLayout, q: Queue, id: &QueueId) -> bool {
    std::fs::symlink_metadata(layout.path_of(q, id)).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Reads every complete entry of `q/ID`; a missing log is empty.
pub fn read(layout: &QueueLayout, q: Queue, id: &QueueId) -> io::Result<Vec<Entry>> {
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(layout.path_of(q, id))
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut conn = Conn::new(ReadOnly(io::Read::take(f, MAX_LOG)));
    let mut out = Vec::new();
    while let Ok(Some(a)) = conn.recv() {
        out.push(Entry::from_attrs(&a));
    }
    Ok(out)
}

/// Removes `q/ID` if present.
pub fn remove(layout: &QueueLayout, q: Queue, id: &QueueId) -> io::Result<()> {
    match std::fs::remove_file(layout.path_of(q, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

struct ReadOnly<R>(R);

impl<R: io::Read> io::Read for ReadOnly<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl<R> io::Write for ReadOnly<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_read_back_ignoring_a_torn_tail() {
        let root = std::env::temp_dir().join(format!("statuslog-{}", std::process::id()));
        let layout = QueueLayout::new(&root, "deferred, defer", 1).unwrap();
        std::fs::create_dir_all(layout.dir(Queue::Defer)).unwrap();
        let id = QueueId::parse("4F2A51C0D2").unwrap();
        let e = Entry {
            offset: 120,
            recipient: "a@b".into(),
            orig_recipient: None,
            orcpt: None,
            notify: 0,
            status: "4.4.1".into(),
            action: "delayed".into(),
            reason: "connect to b[1.2.3.4]:25: Connection refused\nsecond line".into(),
            time: 5,
        };
        append(&layout, Queue::Defer, &id, std::slice::from_ref(&e)).unwrap();
        append(&layout, Queue::Defer, &id, std::slice::from_ref(&e)).unwrap();
        let p = layout.path_of(Queue::Defer, &id);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"offset=9\nrecip").unwrap();
        assert_eq!(
            read(&layout, Queue::Defer, &id).unwrap(),
            vec![e.clone(), e]
        );
        remove(&layout, Queue::Defer, &id).unwrap();
        assert!(read(&layout, Queue::Defer, &id).unwrap().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn durable_appends_rewrites_and_dsn_fields() {
        let root = std::env::temp_dir().join(format!("statuslog-r-{}", std::process::id()));
        let layout = QueueLayout::new(&root, "deferred, defer", 1).unwrap();
        for q in [Queue::Bounce, Queue::Defer] {
            std::fs::create_dir_all(layout.dir(q)).unwrap();
        }
        let id = QueueId::parse("4F2A51C0D2").unwrap();
        let e = Entry {
            offset: 7,
            recipient: "a@b".into(),
            orig_recipient: Some("x@b".into()),
            orcpt: Some("rfc822;X@B".into()),
            notify: 4 | 8,
            status: "5.1.1".into(),
            action: "failed".into(),
            reason: "no such user".into(),
            time: 9,
        };
        assert!(!has_entries(&layout, Queue::Bounce, &id));
        append_durable(&layout, Queue::Bounce, &id, std::slice::from_ref(&e)).unwrap();
        assert!(has_entries(&layout, Queue::Bounce, &id));
        assert_eq!(read(&layout, Queue::Bounce, &id).unwrap(), vec![e.clone()]);
        // A rewrite replaces everything, and leaves no temporary file.
        let f = Entry {
            offset: 8,
            notify: 0,
            ..e.clone()
        };
        append(&layout, Queue::Defer, &id, &[e.clone(), e.clone()]).unwrap();
        replace(&layout, Queue::Defer, &id, std::slice::from_ref(&f)).unwrap();
        assert_eq!(read(&layout, Queue::Defer, &id).unwrap(), vec![f]);
        let names: Vec<_> = std::fs::read_dir(layout.path_of(Queue::Defer, &id).parent().unwrap())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("4F2A51C0D2")]);
        replace(&layout, Queue::Defer, &id, &[]).unwrap();
        assert!(!has_entries(&layout, Queue::Defer, &id));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
