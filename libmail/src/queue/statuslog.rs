//! Per-message status logs: `defer/ID` and `bounce/ID` (Postfix's
//! logfiles of the same names), one entry per recipient attempt that
//! failed, appended by qmgr, read by `postqueue -p` for the "(reason)"
//! lines and later by the bounce daemon for notifications.
//!
//! An entry is an attribute list ([`crate::ipc::attr`] encoding):
//! `offset`, `recipient`, `orig_recipient`, `status` (enhanced code),
//! `action` (`delayed`, `failed`), `reason`, `time`. The file is
//! appended with O_APPEND; a torn last entry (crash) is ignored by the
//! reader. The log is advisory: losing it loses reasons, never mail.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

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
        a
    }

    fn from_attrs(a: &Attrs) -> Entry {
        Entry {
            offset: a.get_num("offset").unwrap_or(0),
            recipient: a.get("recipient").unwrap_or("").into(),
            orig_recipient: a.get("orig_recipient").map(str::to_string),
            status: a.get("status").unwrap_or("").into(),
            action: a.get("action").unwrap_or("").into(),
            reason: a.get("reason").unwrap_or("").into(),
            time: a.get_num("time").unwrap_or(0),
        }
    }
}

/// Appends entries to `q/ID` (`q` is [`Queue::Defer`] or [`Queue::Bounce`]).
pub fn append(layout: &QueueLayout, q: Queue, id: &QueueId, entries: &[Entry]) -> io::Result<()> {
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
    let mut buf = Vec::new();
    for e in entries {
        buf.extend_from_slice(&encode(&e.to_attrs()));
    }
    f.write_all(&buf)
}

/// Reads every complete entry of `q/ID`; a missing log is empty.
pub fn read(layout: &QueueLayout, q: Queue, id: &QueueId) -> io::Result<Vec<Entry>> {
    let f = match std::fs::File::open(layout.path_of(q, id)) {
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
}
