//! Queue files: writing one crash-safely, reading one strictly, marking
//! recipients done in place.
//!
//! # Writing
//!
//! ```text
//! let mut w = Writer::create(&layout, Queue::Incoming, IdStyle::Short)?;   // ID known now
//! w.sender("alice@example.org")?;
//! w.recipient(&NewRecipient::new("bob@example.net"))?;
//! w.start_content()?;
//! w.content_line(b"Subject: hi")?;  ...
//! let unsynced = w.finish()?;       // complete (mode 0700), not yet durable
//! let durable = unsynced.sync()?;   // or sync_many(batch): group commit
//! // only now: "250 2.0.0 Ok: queued as ID"
//! ```
//!
//! 1. [`Writer::create`] picks the creation time, creates `tmp.PID.N`
//!    (mode 0600, `O_EXCL`) in the directory the ID will hash to, takes
//!    the inode number from the open file to make the queue ID, and at
//!    once renames the file to its ID (`RENAME_NOREPLACE`; if a foreign
//!    or restored file has that name, it starts over with a new time).
//!    The ID is final from here on (cleanup needs it for `Received:` and
//!    `Message-ID:`); the file has its name but, at mode 0600, is
//!    *incomplete*: scans and readers skip it.
//! 2. Records are streamed through a 64 KiB buffer; lines of any length
//!    become `L` records of at most 4 KiB and a final `N`; only the
//!    writer's counters are held in memory.
//! 3. [`Writer::finish`] appends the end record (with the CRC-32C), fills
//!    in the size record (in the buffer when the whole file fits, so a
//!    small message is one `write`; else one `pwrite` at offset 0), and
//!    sets mode 0700: *complete*. It returns an [`Unsynced`] file.
//! 4. [`Unsynced::sync`] / [`sync_many`]: the writeback of every file of
//!    a batch is started first (`sync_file_range`, a hint), then `fsync`
//!    of each file — its
//!    bytes, its length, its mode, and (on ext4, XFS and btrfs, because
//!    the name was made before this fsync, in the same or an earlier
//!    journal transaction) its name; then one `fsync` of each distinct
//!    directory, which makes the names durable by POSIX rules too and
//!    costs little more than a disk cache flush when the journal already
//!    holds them.
//!
//! Only then is a [`Durable`] returned, and it can be made no other way:
//! acknowledge a message (SMTP 250, sendmail exit 0) only holding one.
//!
//! **fsyncs per message: one file fsync, plus one directory fsync per
//! batch** — 2 for a lone message, 1 + 1/n for [`sync_many`] over n
//! messages in one directory. (Postfix makes one fsync and none of the
//! directory, trusting the file system to persist the name with the file.)
//! Fsyncs issued concurrently by several processes or threads share
//! journal commits.
//!
//! # Why this is crash-safe
//!
//! * An ID-named file at mode 0600 is being written or its writer died:
//!   never acknowledged, ignored by scans and readers
//!   ([`Incomplete::NotMarkedComplete`]); purge it when older than any
//!   writer can be (`postsuper -p`). A `tmp.*` file is a crash between
//!   `open` and `rename` in step 1: empty, purge it the same way.
//! * Mode 0700 is set after every byte was written (program order). After
//!   a process crash (kill -9, panic, OOM kill) the kernel still has all
//!   those bytes, so a 0700 file is complete: it is delivered, and if the
//!   crash came before the client saw the 250 and the client retries, the
//!   message is delivered twice — the documented *duplicate window 1*,
//!   from `chmod` to the 250 reaching the client.
//! * After a power loss before the fsync returned, a 0700 file may be
//!   short or have holes (the mode change can reach the journal before
//!   delayed-allocation data). The size record gives the exact length
//!   ([`Incomplete::Truncated`] when short), the end record must sit at
//!   its offset, and the CRC-32C ([`QueueFile::verify`]) catches holes. Such
//!   a file was never acknowledged; it is reported, never taken as whole.
//! * Once step 4 returned, data, length, mode and name are on stable
//!   storage: no crash loses the message.
//! * Setting the mode before the one fsync rather than after it (which
//!   would need a second fsync to be durable) costs nothing in safety:
//!   the checks above do not trust the bit alone.
//!
//! # Reading
//!
//! [`QueueFile::open`] refuses a file without the owner-execute bit
//! ([`Incomplete::NotMarkedComplete`]), reads the size record, checks the
//! file length against it ([`Incomplete::Truncated`] when short), then
//! reads the envelope up to `M` and the extracted section from `X` to `E`,
//! checking order, counts and offsets, with every length bounded by
//! [`Limits`]. Content is not read: [`QueueFile::content`] streams it.
//! [`QueueFile::verify`] reads everything and checks the CRC-32C and the
//! content size. Errors are values (`Corrupt { offset, reason }`); no input
//! makes a reader panic or allocate beyond its limits.
//!
//! # Done marks
//!
//! A recipient's record starts at a known offset ([`Recipient::offset`]).
//! [`QueueFile::mark_done`] rewrites that one type byte, `R` to `D`, with
//! `pwrite`; [`QueueFile::sync_done`] makes the marks durable with one
//! `fdatasync` (mark a whole delivery's recipients, then sync once). The
//! CRC counts `D` as `R`, so marks never invalidate it. A crash after a
//! delivery succeeded and before its mark reached the disk delivers that
//! recipient again on restart: the documented *duplicate window 2*. A
//! single-byte write cannot be torn.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::crc::Crc32c;
use super::dirs::{Queue, QueueLayout};
use super::id::{hash_key_of_usec, IdStyle, QueueId};
use super::record::{
    put_record, put_varint, Record, RecordReader, RecordType, SizeRecord, CONTENT_CHUNK,
    END_RECORD_LEN, FORMAT_VERSION, MAX_RECORD_LEN, SIZE_PAYLOAD_LEN, SIZE_RECORD_LEN,
};
use super::{count_fsync, Incomplete, Limits, ReadError};

/// DSN NOTIFY flags, as stored in `n` records (Postfix's values).
pub const DSN_NOTIFY_NEVER: u32 = 1;
pub const DSN_NOTIFY_SUCCESS: u32 = 2;
pub const DSN_NOTIFY_FAILURE: u32 = 4;
pub const DSN_NOTIFY_DELAY: u32 = 8;
/// DSN RET flags, as stored in the `<` record.
pub const DSN_RET_FULL: u32 = 1;
pub const DSN_RET_HDRS: u32 = 2;

const FLUSH_AT: usize = 64 << 10;

/// A recipient to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecipient<'a> {
    pub address: &'a str,
    /// The address before rewriting (`O`), if different.
    pub orig: Option<&'a str>,
    /// DSN ORCPT (`o`), `type;address`.
    pub dsn_orcpt: Option<&'a str>,
    /// DSN NOTIFY flags (`n`), 0 for none given.
    pub dsn_notify: u32,
}

impl<'a> NewRecipient<'a> {
    pub fn new(address: &'a str) -> Self {
        NewRecipient {
            address,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Envelope,
    Content,
    Extracted,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The path of a file not yet acknowledged, removed on drop unless kept:
/// an unfinished or unsynced queue file was never acknowledged, so it goes.
struct Unacked {
    path: PathBuf,
    keep: bool,
}

impl Drop for Unacked {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn now() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_micros())
}

/// A fresh `dir/tmp.PID.N` name.
fn temp_name(dir: &Path) -> PathBuf {
    let pid = crate::log::process_id();
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("tmp.{pid}.{n}"))
}

/// Creates `dir/tmp.PID.N` exclusively, mode 0600.
fn create_temp(dir: &Path) -> io::Result<(File, PathBuf)> {
    loop {
        let path = temp_name(dir);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Renames without replacing an existing file (link + unlink where
/// `renameat2` is not available).
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let f = CString::new(from.as_os_str().as_bytes()).map_err(|_| invalid("NUL in path"))?;
        let t = CString::new(to.as_os_str().as_bytes()).map_err(|_| invalid("NUL in path"))?;
        // SAFETY: both are valid NUL-terminated strings for the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) => {}
            _ => return Err(e),
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// fsync of a directory: its entries are on disk.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    count_fsync();
    d.sync_all()
}

/// The queue file attribute naming a message's content filter
/// (`transport[:nexthop]`), Postfix's `content_filter` record.
pub const CONTENT_FILTER_ATTR: &str = "content_filter";

/// Writes a new queue file. See the module documentation.
pub struct Writer {
    file: File,
    id: QueueId,
    dir: PathBuf,
    /// The mode that marks the file complete: 0700, or 0744 in maildrop/
    /// so that pickup (mail_owner) can read a file a user submitted, as
    /// with Postfix's postdrop (the directory itself is not listable).
    complete_mode: u32,
    named: Unacked,
    created: (u64, u32),
    buf: Vec<u8>,
    flushed: u64,
    crc: Crc32c,
    stage: Stage,
    failed: bool,
    have_sender: bool,
    have_time: bool,
    have_full_name: bool,
    have_envid: bool,
    have_ret: bool,
    in_line: bool,
    rcpt_count: u64,
    content_size: u64,
    data_offset: u64,
    xtra_offset: u64,
    flags: u64,
    /// The length of a recycled file before this message (see
    /// `recycle::Claimed`), cut to the message's at the end.
    prior_len: u64,
}

impl Writer {
    /// Creates a new file in `queue` with an ID of `style`: named by its
    /// ID from the start, incomplete (mode 0600) until finished.
    pub fn create(layout: &QueueLayout, queue: Queue, style: IdStyle) -> io::Result<Writer> {
        for _ in 0..1000 {
            let (sec, usec) = now();
            let dir = layout.ensure_dir(queue, &hash_key_of_usec(usec))?;
            // incoming/ reuses the inodes of delivered messages, renamed
            // straight to the ID made of their inode (see `recycle`);
            // maildrop/ files belong to their submitters.
            if queue == Queue::Incoming {
                let claimed = super::recycle::claim(layout, |ino| {
                    let id = QueueId::new(style, sec, usec, ino);
                    (dir.join(id.as_str()), id)
                });
                if let Some(c) = claimed {
                    let named = Unacked {
                        path: c.path,
                        keep: false,
                    };
                    return Ok(Writer::start(
                        queue,
                        (c.file, c.len),
                        c.extra,
                        dir,
                        named,
                        (sec, usec),
                    ));
                }
            }
            let (file, tmp) = create_temp(&dir)?;
            let tmp = Unacked {
                path: tmp,
                keep: false,
            };
            let id = QueueId::new(style, sec, usec, file.metadata()?.ino());
            let path = dir.join(id.as_str());
            match rename_noreplace(&tmp.path, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A foreign file has that name: try again with a new time.
                    drop(tmp);
                    std::thread::sleep(std::time::Duration::from_micros(1));
                    continue;
                }
                Err(e) => return Err(e),
            }
            let mut tmp = tmp;
            tmp.keep = true;
            let named = Unacked { path, keep: false };
            return Ok(Writer::start(queue, (file, 0), id, dir, named, (sec, usec)));
        }
        Err(io::Error::other("cannot find a free queue ID"))
    }

    /// A writer for `file`, just created (or claimed) and named `named`,
    /// with the length it had (a claimed file's, cut at the end).
    fn start(
        queue: Queue,
        (file, prior_len): (File, u64),
        id: QueueId,
        dir: PathBuf,
        named: Unacked,
        created: (u64, u32),
    ) -> Writer {
        let mut buf = Vec::with_capacity(FLUSH_AT + CONTENT_CHUNK + 16);
        // Placeholder size record, filled in by finish().
        buf.push(RecordType::Size.byte());
        put_varint(&mut buf, SIZE_PAYLOAD_LEN);
        buf.extend_from_slice(&[b' '; SIZE_PAYLOAD_LEN]);
        Writer {
            complete_mode: if queue == Queue::Maildrop {
                0o744
            } else {
                0o700
            },
            file,
            id,
            dir,
            named,
            created,
            buf,
            flushed: 0,
            crc: Crc32c::new(),
            stage: Stage::Envelope,
            failed: false,
            have_sender: false,
            have_time: false,
            have_full_name: false,
            have_envid: false,
            have_ret: false,
            in_line: false,
            rcpt_count: 0,
            content_size: 0,
            data_offset: 0,
            xtra_offset: 0,
            flags: 0,
            prior_len,
        }
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The creation time (seconds, microseconds) the ID was made from.
    pub fn created(&self) -> (u64, u32) {
        self.created
    }

    /// The file's path (its final name).
    pub fn path(&self) -> &Path {
        &self.named.path
    }

    fn offset(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    fn check(&self, allowed: &[Stage]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("queue file writer failed earlier"));
        }
        if !allowed.contains(&self.stage) {
            return Err(invalid("queue file record out of order"));
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Err(e) = self.file.write_all(&self.buf) {
            self.failed = true;
            return Err(e);
        }
        self.flushed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn put(&mut self, kind: RecordType, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_RECORD_LEN {
            return Err(invalid("queue file record too long"));
        }
        let start = self.buf.len();
        put_record(&mut self.buf, kind, payload);
        self.crc.update(&self.buf[start..]);
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn once(flag: &mut bool, what: &str) -> io::Result<()> {
        if *flag {
            return Err(invalid(&format!("queue file: {what} given twice")));
        }
        *flag = true;
        Ok(())
    }

    /// `T`: when the message arrived (default: the creation time).
    pub fn arrival_time(&mut self, t: SystemTime) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        Self::once(&mut self.have_time, "arrival time")?;
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let p = format!("{} {}", d.as_secs(), d.subsec_micros());
        self.put(RecordType::Time, p.as_bytes())
    }

    /// `F`: the sender's full name (`sendmail -F`).
    pub fn full_name(&mut self, name: &str) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        Self::once(&mut self.have_full_name, "full name")?;
        self.put(RecordType::FullName, name.as_bytes())
    }

    /// `S`: the envelope sender; empty for the null sender. Required.
    pub fn sender(&mut self, address: &str) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        Self::once(&mut self.have_sender, "sender")?;
        self.put(RecordType::Sender, address.as_bytes())
    }

    /// `i`: DSN ENVID.
    pub fn dsn_envid(&mut self, envid: &str) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        Self::once(&mut self.have_envid, "DSN envelope ID")?;
        self.put(RecordType::DsnEnvid, envid.as_bytes())
    }

    /// `<`: DSN RET flags ([`DSN_RET_FULL`], [`DSN_RET_HDRS`]).
    pub fn dsn_ret(&mut self, flags: u32) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        Self::once(&mut self.have_ret, "DSN RET")?;
        self.put(RecordType::DsnRet, flags.to_string().as_bytes())
    }

    /// `A`: a named attribute, in the envelope or the extracted section.
    /// The name is non-empty, without `=` and control characters.
    pub fn attr(&mut self, name: &str, value: &str) -> io::Result<()> {
        self.check(&[Stage::Envelope, Stage::Extracted])?;
        if !valid_attr_name(name) {
            return Err(invalid("bad queue file attribute name"));
        }
        let mut p = Vec::with_capacity(name.len() + 1 + value.len());
        p.extend_from_slice(name.as_bytes());
        p.push(b'=');
        p.extend_from_slice(value.as_bytes());
        self.put(RecordType::Attr, &p)
    }

    /// `O`, `o`, `n` as given, then `R`: a recipient, in the envelope or
    /// the extracted section.
    pub fn recipient(&mut self, r: &NewRecipient<'_>) -> io::Result<()> {
        self.check(&[Stage::Envelope, Stage::Extracted])?;
        if let Some(o) = r.orig {
            self.put(RecordType::OrigRecipient, o.as_bytes())?;
        }
        if let Some(o) = r.dsn_orcpt {
            self.put(RecordType::DsnOrcpt, o.as_bytes())?;
        }
        if r.dsn_notify != 0 {
            self.put(RecordType::DsnNotify, r.dsn_notify.to_string().as_bytes())?;
        }
        self.put(RecordType::Recipient, r.address.as_bytes())?;
        self.rcpt_count += 1;
        Ok(())
    }

    /// Message flags for the size record (for the daemons; 0 by default).
    pub fn set_flags(&mut self, flags: u64) {
        self.flags = flags;
    }

    /// `M`: ends the envelope; content lines follow.
    pub fn start_content(&mut self) -> io::Result<()> {
        self.check(&[Stage::Envelope])?;
        if !self.have_sender {
            return Err(invalid("queue file has no sender"));
        }
        if !self.have_time {
            self.have_time = true;
            let p = format!("{} {}", self.created.0, self.created.1);
            self.put(RecordType::Time, p.as_bytes())?;
        }
        self.put(RecordType::Message, b"")?;
        self.data_offset = self.offset();
        self.stage = Stage::Content;
        Ok(())
    }

    /// Part of a content line that continues (streaming a long line
    /// without holding it): `L` records.
    pub fn content_part(&mut self, mut part: &[u8]) -> io::Result<()> {
        self.check(&[Stage::Content])?;
        self.content_size += part.len() as u64;
        while !part.is_empty() {
            let n = part.len().min(CONTENT_CHUNK);
            self.put(RecordType::Cont, &part[..n])?;
            part = &part[n..];
            self.in_line = true;
        }
        Ok(())
    }

    /// The rest of a content line (all of it, after no `content_part`),
    /// without its line end: `L` records as needed, then `N`.
    pub fn content_line(&mut self, mut line: &[u8]) -> io::Result<()> {
        self.check(&[Stage::Content])?;
        // Postfix's message_size counts each line end as CRLF.
        self.content_size += line.len() as u64 + 2;
        while line.len() > CONTENT_CHUNK {
            self.put(RecordType::Cont, &line[..CONTENT_CHUNK])?;
            line = &line[CONTENT_CHUNK..];
        }
        self.put(RecordType::Normal, line)?;
        self.in_line = false;
        Ok(())
    }

    /// `X`: ends the content (a pending partial line is ended); extracted
    /// records ([`attr`](Self::attr), [`recipient`](Self::recipient)) follow.
    pub fn start_extracted(&mut self) -> io::Result<()> {
        if self.stage == Stage::Envelope {
            self.start_content()?;
        }
        self.check(&[Stage::Content])?;
        if self.in_line {
            self.content_line(b"")?;
        }
        self.xtra_offset = self.offset();
        self.put(RecordType::Extracted, b"")?;
        self.stage = Stage::Extracted;
        Ok(())
    }

    /// Moves the file, still incomplete (so no scan takes it), to queue
    /// `to`: cleanup puts a message a header check held straight into
    /// `hold/` this way, before qmgr could ever see it in `incoming/`.
    pub fn move_to(&mut self, layout: &QueueLayout, to: Queue) -> io::Result<()> {
        let dir = layout.ensure_dir(to, &self.id.hash_key())?;
        let path = dir.join(self.id.as_str());
        rename_noreplace(&self.named.path, &path)?;
        self.named.path = path;
        self.dir = dir;
        if to != Queue::Maildrop {
            self.complete_mode = 0o700;
        }
        Ok(())
    }

    /// Ends the file: end record, size record, mode 0700 (complete).
    /// Nothing is durable yet; see [`Unsynced::sync`] and [`sync_many`].
    pub fn finish(mut self) -> io::Result<Unsynced> {
        if self.stage != Stage::Extracted {
            self.start_extracted()?;
        }
        self.check(&[Stage::Extracted])?;
        let end_offset = self.offset();
        let size = SizeRecord {
            content_size: self.content_size,
            data_offset: self.data_offset,
            rcpt_count: self.rcpt_count,
            flags: self.flags,
            xtra_offset: self.xtra_offset,
            end_offset,
            version: FORMAT_VERSION,
        };
        let payload = size.encode()?;
        self.crc.update(&payload);
        let crc = format!("{:08x}", self.crc.value());
        put_record(&mut self.buf, RecordType::End, crc.as_bytes());
        let result = (|| {
            if self.flushed == 0 {
                self.buf[2..SIZE_RECORD_LEN].copy_from_slice(&payload);
                self.flush()?;
            } else {
                self.flush()?;
                self.file.write_all_at(&payload, 2)?;
            }
            // A recycled file was longer: cut what this message did not
            // overwrite.
            if self.prior_len > self.flushed {
                self.file.set_len(self.flushed)?;
            }
            self.file
                .set_permissions(fs::Permissions::from_mode(self.complete_mode))
        })();
        result?;
        Ok(Unsynced {
            file: self.file,
            id: self.id,
            named: self.named,
            dir: self.dir,
        })
    }
}

fn valid_attr_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.chars().any(char::is_control)
}

/// A finished (complete) queue file that is not known to be durable yet.
/// Dropping it removes the file: it was never acknowledged.
#[must_use = "a queue file is not durable until synced"]
pub struct Unsynced {
    file: File,
    id: QueueId,
    named: Unacked,
    dir: PathBuf,
}

impl Unsynced {
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// fsync of the file, then of its directory: 2 fsyncs.
    pub fn sync(self) -> io::Result<Durable> {
        sync_many(vec![self])
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("empty sync")))
    }
}

/// A queue file known to be on stable storage under its queue ID. Only
/// [`Unsynced::sync`] and [`sync_many`] make one: holding it is the right
/// to acknowledge the message.
#[derive(Debug, Clone)]
pub struct Durable {
    id: QueueId,
    path: PathBuf,
}

impl Durable {
    pub fn id(&self) -> QueueId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Asks the kernel to start writing the file's dirty pages now, without
/// waiting (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a
/// hint: durability still comes from the fsync that follows, so an
/// error here is ignored (the fsync reports it).
fn start_writeback(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; the call only reads its arguments.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Group commit: makes a batch of files durable with one fsync per file
/// and one per distinct directory, and returns a result per file, in
/// order. A file whose result is an error is removed (it was never
/// acknowledged); the others are durable.
pub fn sync_many(batch: Vec<Unsynced>) -> Vec<io::Result<Durable>> {
    let mut results: Vec<Option<io::Result<Durable>>> = Vec::with_capacity(batch.len());
    let mut synced: Vec<(usize, Unsynced)> = Vec::with_capacity(batch.len());
    // 0. Start the writeback of every file's data at once, so the disk
    //    gets them together; each fsync below then mostly waits and
    //    commits the journal (measured here: a batch of 20 files of 4 KiB
    //    syncs in about a third of the time of fsyncs alone).
    if batch.len() > 1 {
        for u in &batch {
            start_writeback(&u.file);
        }
    }
    // 1. Each file: data, length, mode (and, on journaling file systems,
    //    its name, which was made before).
    for (i, u) in batch.into_iter().enumerate() {
        results.push(None);
        count_fsync();
        match u.file.sync_all() {
            Ok(()) => synced.push((i, u)),
            Err(e) => results[i] = Some(Err(e)), // dropping u removes it
        }
    }
    // 2. One fsync per directory: the names, by POSIX rules.
    let mut dirs: BTreeMap<&Path, Option<io::Error>> = BTreeMap::new();
    for (_, u) in &synced {
        dirs.entry(u.dir.as_path()).or_insert(None);
    }
    for (dir, err) in dirs.iter_mut() {
        if let Err(e) = sync_dir(dir) {
            *err = Some(e);
        }
    }
    let dir_errors: BTreeMap<PathBuf, io::Error> = dirs
        .into_iter()
        .filter_map(|(d, e)| e.map(|e| (d.to_path_buf(), e)))
        .collect();
    for (i, mut u) in synced {
        if let Some(e) = dir_errors.get(&u.dir) {
            // Not known to be durable: not acknowledged, so withdraw it
            // (dropping u removes the file).
            results[i] = Some(Err(copy_err(e)));
        } else {
            u.named.keep = true;
            results[i] = Some(Ok(Durable {
                id: u.id,
                path: std::mem::take(&mut u.named.path),
            }));
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("not synced"))))
        .collect()
}

/// A recipient as read from a queue file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub orig: Option<String>,
    pub dsn_orcpt: Option<String>,
    pub dsn_notify: u32,
    /// Offset of the `R`/`D` type byte: the recipient's identity in
    /// defer/bounce logs and the place of its done mark.
    pub offset: u64,
    pub done: bool,
    /// From the extracted section (e.g. `sendmail -t`).
    pub extracted: bool,
}

/// What [`QueueFile::open`] reads: everything but the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub size: SizeRecord,
    /// `T`: seconds, microseconds.
    pub arrival: (u64, u32),
    pub sender: String,
    pub full_name: Option<String>,
    pub dsn_envid: Option<String>,
    pub dsn_ret: u32,
    /// Envelope `A` records, in file order.
    pub attrs: Vec<(String, String)>,
    /// Envelope and extracted recipients, in file order.
    pub recipients: Vec<Recipient>,
    /// Extracted `A` records, in file order.
    pub extracted_attrs: Vec<(String, String)>,
}

impl Envelope {
    /// The first envelope attribute named `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The after-queue content filter (`transport[:nexthop]`) cleanup
    /// recorded ([`CONTENT_FILTER_ATTR`], in the extracted section, where
    /// a body check's FILTER can still go).
    pub fn content_filter(&self) -> Option<&str> {
        self.extracted_attrs
            .iter()
            .chain(self.attrs.iter())
            .find(|(n, _)| n == CONTENT_FILTER_ATTR)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Recipients not yet done, with their indices.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients.iter().enumerate().filter(|(_, r)| !r.done)
    }

    pub fn all_done(&self) -> bool {
        self.recipients.iter().all(|r| r.done)
    }
}

/// Read-only, or read-write for done marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// An open, checked queue file.
#[derive(Debug)]
pub struct QueueFile {
    file: File,
    path: PathBuf,
    len: u64,
    env: Envelope,
    crc: u32,
    limits: Limits,
    /// The file's mode, device and inode when it was opened (one fstat
    /// serves the callers that would otherwise stat it again).
    mode: u32,
    dev: u64,
    ino: u64,
}

/// Recipient attributes waiting for their `R`/`D`.
#[derive(Default)]
struct Pending {
    orig: Option<String>,
    dsn_orcpt: Option<String>,
    dsn_notify: Option<u32>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.orig.is_none() && self.dsn_orcpt.is_none() && self.dsn_notify.is_none()
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, offset: u64, what: &str) -> Result<(), ReadError> {
    if slot.is_some() {
        return Err(ReadError::corrupt(offset, format!("second {what} record")));
    }
    *slot = Some(v);
    Ok(())
}

fn parse_u32(rec: &Record<'_>) -> Result<u32, ReadError> {
    let t = rec.text()?;
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ReadError::corrupt(rec.offset, "bad number"));
    }
    t.parse()
        .map_err(|_| ReadError::corrupt(rec.offset, "bad number"))
}

fn parse_time(rec: &Record<'_>) -> Result<(u64, u32), ReadError> {
    let bad = || ReadError::corrupt(rec.offset, "bad time record");
    let t = rec.text()?;
    let (s, u) = t.split_once(' ').ok_or_else(bad)?;
    let digits = |x: &str| !x.is_empty() && x.len() <= 19 && x.bytes().all(|c| c.is_ascii_digit());
    if !digits(s) || !digits(u) {
        return Err(bad());
    }
    let s: u64 = s.parse().map_err(|_| bad())?;
    let u: u32 = u.parse().map_err(|_| bad())?;
    if u >= 1_000_000 {
        return Err(bad());
    }
    Ok((s, u))
}

fn parse_attr(rec: &Record<'_>) -> Result<(String, String), ReadError> {
    let t = rec.text()?;
    let (n, v) = t
        .split_once('=')
        .ok_or_else(|| ReadError::corrupt(rec.offset, "attribute without ="))?;
    if !valid_attr_name(n) {
        return Err(ReadError::corrupt(rec.offset, "bad attribute name"));
    }
    Ok((n.to_string(), v.to_string()))
}

/// Counts what the envelope and extracted sections cost in memory.
struct Budget {
    records: u64,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, rec: &Record<'_>, limits: &Limits) -> Result<(), ReadError> {
        self.records += 1;
        self.bytes += rec.payload.len();
        if self.records > limits.max_envelope_records {
            return Err(ReadError::corrupt(rec.offset, "too many envelope records"));
        }
        if self.bytes > limits.max_envelope_bytes {
            return Err(ReadError::corrupt(rec.offset, "envelope too large"));
        }
        Ok(())
    }
}

impl QueueFile {
    /// Opens and checks a complete queue file (see the module docs).
    pub fn open(path: &Path, access: Access, limits: &Limits) -> Result<QueueFile, ReadError> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        Self::from_file(file, meta, path, limits)
    }

    /// [`open`](Self::open) on a file already open (a delivery agent's
    /// locked descriptor, so it is not opened twice) with its metadata,
    /// taken since it was opened; `path` is the name it was opened by.
    pub fn from_file(
        file: File,
        meta: fs::Metadata,
        path: &Path,
        limits: &Limits,
    ) -> Result<QueueFile, ReadError> {
        if !meta.is_file() {
            return Err(ReadError::corrupt(0, "not a regular file"));
        }
        if meta.mode() & 0o100 == 0 {
            return Err(ReadError::Incomplete(Incomplete::NotMarkedComplete));
        }
        let (env, crc) = read_envelope(&file, meta.len(), limits)?;
        Ok(QueueFile {
            file,
            path: path.to_path_buf(),
            len: meta.len(),
            env,
            crc,
            limits: limits.clone(),
            mode: meta.mode(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The mode when the file was opened (postsuper may change the
    /// expiry bit later: stat the file for the present one).
    pub fn mode_at_open(&self) -> u32 {
        self.mode
    }

    /// (device, inode) of the open file; they never change while it is
    /// open.
    pub fn dev_ino(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ID the file is named after, if its name is one.
    pub fn id(&self) -> Option<QueueId> {
        let name = self.path.file_name()?.to_str()?;
        QueueId::parse(name).ok()
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Streams the content lines.
    pub fn content(&self) -> ContentReader<'_> {
        ContentReader {
            rr: RecordReader::new(
                &self.file,
                self.len,
                self.env.size.data_offset,
                self.env.size.xtra_offset,
                &self.limits,
            ),
            in_line: false,
        }
    }

    /// Reads the whole file again and checks the CRC-32C, the content
    /// records and the content size.
    pub fn verify(&self) -> Result<(), ReadError> {
        let size = &self.env.size;
        let mut rr = RecordReader::new(
            &self.file,
            self.len,
            SIZE_RECORD_LEN as u64,
            size.end_offset,
            &self.limits,
        );
        let mut crc = Crc32c::new();
        let mut content = 0u64;
        let mut in_line = false;
        let mut hdr = Vec::with_capacity(5);
        while let Some(rec) = rr.next_record()? {
            let end = rec.offset + rec.size_in_file();
            let in_content = rec.offset >= size.data_offset && rec.offset < size.xtra_offset;
            if (rec.offset < size.data_offset && end > size.data_offset)
                || (rec.offset < size.xtra_offset && end > size.xtra_offset)
            {
                return Err(ReadError::corrupt(rec.offset, "record crosses a section"));
            }
            if in_content {
                match rec.kind {
                    RecordType::Normal => {
                        content += rec.payload.len() as u64 + 2;
                        in_line = false;
                    }
                    RecordType::Cont => {
                        content += rec.payload.len() as u64;
                        in_line = true;
                    }
                    _ => {
                        return Err(ReadError::corrupt(
                            rec.offset,
                            "non-content record in content",
                        ))
                    }
                }
            }
            hdr.clear();
            let kind = if rec.kind == RecordType::Done {
                RecordType::Recipient
            } else {
                rec.kind
            };
            put_varint(&mut hdr, rec.payload.len());
            crc.update(&[kind.byte()]);
            crc.update(&hdr);
            crc.update(rec.payload);
        }
        if in_line {
            return Err(ReadError::corrupt(
                size.xtra_offset,
                "content ends inside a line",
            ));
        }
        if content != size.content_size {
            return Err(ReadError::corrupt(0, "content size does not match"));
        }
        let mut c = [0u8; SIZE_PAYLOAD_LEN];
        self.file.read_exact_at(&mut c, 2)?;
        crc.update(&c);
        let mut e = [0u8; 8];
        self.file.read_exact_at(&mut e, size.end_offset + 2)?;
        let stored =
            parse_crc(&e).ok_or_else(|| ReadError::corrupt(size.end_offset, "bad checksum"))?;
        if stored != crc.value() || stored != self.crc {
            return Err(ReadError::corrupt(size.end_offset, "checksum mismatch"));
        }
        Ok(())
    }

    /// Marks recipient `index` done: one byte, `R` to `D`, in place.
    /// Not durable until [`sync_done`](Self::sync_done). Needs
    /// [`Access::ReadWrite`].
    pub fn mark_done(&mut self, index: usize) -> Result<(), ReadError> {
        let r = self
            .env
            .recipients
            .get_mut(index)
            .ok_or_else(|| ReadError::Io(invalid("no such recipient")))?;
        let mut b = [0u8; 1];
        self.file.read_exact_at(&mut b, r.offset)?;
        match b[0] {
            b'D' => {}
            b'R' => self.file.write_all_at(b"D", r.offset)?,
            _ => return Err(ReadError::corrupt(r.offset, "recipient record moved")),
        }
        r.done = true;
        Ok(())
    }

    /// Records that another process (a delivery agent) already marked
    /// recipient `index` done on disk; nothing is written.
    pub fn note_done(&mut self, index: usize) {
        if let Some(r) = self.env.recipients.get_mut(index) {
            r.done = true;
        }
    }

    /// Makes the done marks durable: one `fdatasync`.
    pub fn sync_done(&self) -> io::Result<()> {
        count_fsync();
        self.file.sync_data()
    }

    /// [`mark_done`](Self::mark_done) for each index, then one
    /// [`sync_done`](Self::sync_done).
    pub fn mark_done_durable(&mut self, indices: &[usize]) -> Result<(), ReadError> {
        for &i in indices {
            self.mark_done(i)?;
        }
        self.sync_done()?;
        Ok(())
    }
}

fn parse_crc(p: &[u8]) -> Option<u32> {
    if p.len() != 8 || !p.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()
}

/// How much of a queue file the first read takes: the size record and a
/// typical envelope.
const HEAD_READ: usize = 2048;

fn read_envelope(file: &File, len: u64, limits: &Limits) -> Result<(Envelope, u32), ReadError> {
    if len > limits.max_file_size {
        return Err(ReadError::corrupt(0, "file larger than the limit"));
    }
    if len < SIZE_RECORD_LEN as u64 {
        return Err(ReadError::Incomplete(Incomplete::Truncated {
            file_len: len,
            expected: SIZE_RECORD_LEN as u64,
        }));
    }
    // The size record and, for most messages, the whole envelope in one
    // read (then one more for the extracted section): a read per section
    // was a system call each.
    let mut head = vec![0u8; (len.min(HEAD_READ as u64)) as usize];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    head.truncate(got);
    let mut rr = RecordReader::with_section(file, len, 0, SIZE_RECORD_LEN as u64, limits, &head);
    let size = match rr.next_record()? {
        Some(rec) if rec.kind == RecordType::Size && rec.payload.len() == SIZE_PAYLOAD_LEN => {
            SizeRecord::decode(rec.payload).map_err(|r| ReadError::corrupt(0, r))?
        }
        _ => return Err(ReadError::corrupt(0, "no size record at the start")),
    };
    if size.version != FORMAT_VERSION {
        return Err(ReadError::corrupt(
            0,
            format!("unsupported format version {}", size.version),
        ));
    }
    let expected = size.end_offset.saturating_add(END_RECORD_LEN as u64);
    if len < expected {
        return Err(ReadError::Incomplete(Incomplete::Truncated {
            file_len: len,
            expected,
        }));
    }
    if len > expected {
        return Err(ReadError::corrupt(expected, "data after the end record"));
    }
    if size.data_offset < SIZE_RECORD_LEN as u64 + 2
        || size.data_offset > size.xtra_offset
        || size.xtra_offset + 2 > size.end_offset
    {
        return Err(ReadError::corrupt(
            0,
            "size record offsets are inconsistent",
        ));
    }
    if size.content_size > size.xtra_offset - size.data_offset {
        // Each content byte takes at least one file byte; each line end
        // is paid for by at least a 2-byte record header.
        return Err(ReadError::corrupt(0, "content size is inconsistent"));
    }

    let mut budget = Budget {
        records: 0,
        bytes: 0,
    };
    let mut arrival = None;
    let mut sender = None;
    let mut full_name = None;
    let mut dsn_envid = None;
    let mut dsn_ret = None;
    let mut attrs = Vec::new();
    let mut recipients = Vec::new();
    let mut pending = Pending::default();
    let mut saw_m = false;

    let mut rr = RecordReader::with_section(
        file,
        len,
        SIZE_RECORD_LEN as u64,
        size.data_offset,
        limits,
        head.get(SIZE_RECORD_LEN..).unwrap_or_default(),
    );
    while let Some(rec) = rr.next_record()? {
        budget.take(&rec, limits)?;
        if saw_m {
            return Err(ReadError::corrupt(rec.offset, "envelope record after M"));
        }
        match rec.kind {
            RecordType::Time => set_once(&mut arrival, parse_time(&rec)?, rec.offset, "T")?,
            RecordType::FullName => {
                set_once(&mut full_name, rec.text()?.to_string(), rec.offset, "F")?
            }
            RecordType::Sender => set_once(&mut sender, rec.text()?.to_string(), rec.offset, "S")?,
            RecordType::DsnEnvid => {
                set_once(&mut dsn_envid, rec.text()?.to_string(), rec.offset, "i")?
            }
            RecordType::DsnRet => set_once(&mut dsn_ret, parse_u32(&rec)?, rec.offset, "<")?,
            RecordType::Attr => attrs.push(parse_attr(&rec)?),
            RecordType::OrigRecipient
            | RecordType::DsnOrcpt
            | RecordType::DsnNotify
            | RecordType::Recipient
            | RecordType::Done => recipient_record(&rec, &mut pending, &mut recipients, false)?,
            RecordType::Message => {
                if !rec.payload.is_empty() {
                    return Err(ReadError::corrupt(rec.offset, "M record with a payload"));
                }
                if !pending.is_empty() {
                    return Err(ReadError::corrupt(
                        rec.offset,
                        "recipient attributes without a recipient",
                    ));
                }
                saw_m = true;
            }
            other => {
                return Err(ReadError::corrupt(
                    rec.offset,
                    format!("{} record in the envelope", other.label()),
                ))
            }
        }
    }
    if !saw_m {
        return Err(ReadError::corrupt(
            size.data_offset,
            "envelope does not end with M at the data offset",
        ));
    }
    let sender = sender.ok_or_else(|| ReadError::corrupt(0, "no sender record"))?;
    let arrival = arrival.ok_or_else(|| ReadError::corrupt(0, "no arrival time record"))?;

    let mut extracted_attrs = Vec::new();
    let mut rr = RecordReader::new(file, len, size.xtra_offset, len, limits);
    match rr.next_record()? {
        Some(rec) if rec.kind == RecordType::Extracted && rec.payload.is_empty() => {}
        _ => {
            return Err(ReadError::corrupt(
                size.xtra_offset,
                "no X record at the extracted offset",
            ))
        }
    }
    let mut crc = None;
    while let Some(rec) = rr.next_record()? {
        budget.take(&rec, limits)?;
        if crc.is_some() {
            return Err(ReadError::corrupt(rec.offset, "record after E"));
        }
        match rec.kind {
            RecordType::Attr => extracted_attrs.push(parse_attr(&rec)?),
            RecordType::OrigRecipient
            | RecordType::DsnOrcpt
            | RecordType::DsnNotify
            | RecordType::Recipient
            | RecordType::Done => recipient_record(&rec, &mut pending, &mut recipients, true)?,
            RecordType::End => {
                if rec.offset != size.end_offset {
                    return Err(ReadError::corrupt(
                        rec.offset,
                        "E record not where the size record says",
                    ));
                }
                if !pending.is_empty() {
                    return Err(ReadError::corrupt(
                        rec.offset,
                        "recipient attributes without a recipient",
                    ));
                }
                crc = Some(
                    parse_crc(rec.payload)
                        .ok_or_else(|| ReadError::corrupt(rec.offset, "bad checksum record"))?,
                );
            }
            other => {
                return Err(ReadError::corrupt(
                    rec.offset,
                    format!("{} record in the extracted section", other.label()),
                ))
            }
        }
    }
    let crc = crc.ok_or_else(|| ReadError::corrupt(size.end_offset, "no end record"))?;
    if recipients.len() as u64 != size.rcpt_count {
        return Err(ReadError::corrupt(0, "recipient count does not match"));
    }
    Ok((
        Envelope {
            size,
            arrival,
            sender,
            full_name,
            dsn_envid,
            dsn_ret: dsn_ret.unwrap_or(0),
            attrs,
            recipients,
            extracted_attrs,
        },
        crc,
    ))
}

fn recipient_record(
    rec: &Record<'_>,
    pending: &mut Pending,
    out: &mut Vec<Recipient>,
    extracted: bool,
) -> Result<(), ReadError> {
    match rec.kind {
        RecordType::OrigRecipient => {
            set_once(&mut pending.orig, rec.text()?.to_string(), rec.offset, "O")
        }
        RecordType::DsnOrcpt => set_once(
            &mut pending.dsn_orcpt,
            rec.text()?.to_string(),
            rec.offset,
            "o",
        ),
        RecordType::DsnNotify => {
            set_once(&mut pending.dsn_notify, parse_u32(rec)?, rec.offset, "n")
        }
        _ => {
            let p = std::mem::take(pending);
            out.push(Recipient {
                address: rec.text()?.to_string(),
                orig: p.orig,
                dsn_orcpt: p.dsn_orcpt,
                dsn_notify: p.dsn_notify.unwrap_or(0),
                offset: rec.offset,
                done: rec.kind == RecordType::Done,
                extracted,
            });
            Ok(())
        }
    }
}

/// Streams a queue file's content records.
pub struct ContentReader<'f> {
    rr: RecordReader<'f>,
    in_line: bool,
}

impl ContentReader<'_> {
    /// The next piece of content and whether it ends its line; `None` at
    /// the end of the content.
    pub fn next_piece(&mut self) -> Result<Option<(&[u8], bool)>, ReadError> {
        let at = self.rr.offset();
        let in_line = &mut self.in_line;
        match self.rr.next_record()? {
            None if *in_line => Err(ReadError::corrupt(at, "content ends inside a line")),
            None => Ok(None),
            Some(rec) => match rec.kind {
                RecordType::Normal => {
                    *in_line = false;
                    Ok(Some((rec.payload, true)))
                }
                RecordType::Cont => {
                    *in_line = true;
                    Ok(Some((rec.payload, false)))
                }
                _ => Err(ReadError::corrupt(
                    rec.offset,
                    "non-content record in content",
                )),
            },
        }
    }

    /// The next whole line (without line end) into `line`; false at the
    /// end. A line longer than `max_len` is an error: stream those with
    /// [`next_piece`](Self::next_piece).
    pub fn read_line(&mut self, line: &mut Vec<u8>, max_len: usize) -> Result<bool, ReadError> {
        line.clear();
        loop {
            let at = self.rr.offset();
            match self.next_piece()? {
                None => return Ok(false),
                Some((p, end)) => {
                    if line.len() + p.len() > max_len {
                        return Err(ReadError::corrupt(
                            at,
                            "content line longer than the caller's limit",
                        ));
                    }
                    line.extend_from_slice(p);
                    if end {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_many_of_nothing_is_nothing() {
        assert!(sync_many(Vec::new()).is_empty());
    }
    use crate::queue::dirs::Ownership;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "facteur-queue-{}-{}-{}",
            name,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A queue directory that is removed when the test ends.
    struct Scratch(QueueLayout);

    impl std::ops::Deref for Scratch {
        type Target = QueueLayout;
        fn deref(&self) -> &QueueLayout {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0.root());
        }
    }

    fn layout(name: &str) -> Scratch {
        let root = scratch(name);
        let l = QueueLayout::new(&root, "deferred, defer", 1).unwrap();
        l.create_or_repair(&Ownership::CurrentUser).unwrap();
        Scratch(l)
    }

    struct Sample {
        path: PathBuf,
        lines: Vec<Vec<u8>>,
        rcpts: Vec<String>,
    }

    fn write_sample(l: &QueueLayout, n_rcpt: usize, lines: Vec<Vec<u8>>) -> Sample {
        let mut w = Writer::create(l, Queue::Incoming, IdStyle::Short).unwrap();
        w.full_name("Alice Example").unwrap();
        w.sender("alice@example.org").unwrap();
        w.attr("rewrite_context", "remote").unwrap();
        w.dsn_envid("envid-1").unwrap();
        w.dsn_ret(DSN_RET_HDRS).unwrap();
        let mut rcpts = Vec::new();
        for i in 0..n_rcpt {
            let a = format!("user{i}@example.net");
            let o = format!("orig{i}@example.net");
            let orcpt = format!("rfc822;{a}");
            w.recipient(&NewRecipient {
                address: &a,
                orig: if i % 2 == 0 { Some(&o) } else { None },
                dsn_orcpt: if i % 3 == 0 { Some(&orcpt) } else { None },
                dsn_notify: if i % 4 == 0 {
                    DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY
                } else {
                    0
                },
            })
            .unwrap();
            rcpts.push(a);
        }
        w.start_content().unwrap();
        for line in &lines {
            w.content_line(line).unwrap();
        }
        w.start_extracted().unwrap();
        w.attr("encoding", "8bit").unwrap();
        let path = w.path().to_path_buf();
        let d = w.finish().unwrap().sync().unwrap();
        assert_eq!(d.path(), path);
        Sample { path, lines, rcpts }
    }

    fn read_all_lines(q: &QueueFile) -> Vec<Vec<u8>> {
        let mut c = q.content();
        let mut out = Vec::new();
        let mut line = Vec::new();
        while c.read_line(&mut line, usize::MAX).unwrap() {
            out.push(line.clone());
        }
        out
    }

    #[test]
    fn round_trip_many_recipients_and_long_lines() {
        let l = layout("rt");
        let mut lines: Vec<Vec<u8>> = vec![
            b"From: Alice <alice@example.org>".to_vec(),
            b"Subject: test".to_vec(),
            b"".to_vec(),
            b"short".to_vec(),
        ];
        lines.push(vec![b'x'; CONTENT_CHUNK]);
        lines.push(vec![b'y'; CONTENT_CHUNK + 1]);
        lines.push((0..300_000u32).map(|i| (i % 251) as u8).collect());
        lines.push(vec![0, 1, 2, b'\r', 255]);
        lines.push(Vec::new());
        let s = write_sample(&l, 1500, lines);
        let q = QueueFile::open(&s.path, Access::ReadOnly, &Limits::default()).unwrap();
        q.verify().unwrap();
        let env = q.envelope();
        assert_eq!(env.sender, "alice@example.org");
        assert_eq!(env.full_name.as_deref(), Some("Alice Example"));
        assert_eq!(env.dsn_envid.as_deref(), Some("envid-1"));
        assert_eq!(env.dsn_ret, DSN_RET_HDRS);
        assert_eq!(env.attr("rewrite_context"), Some("remote"));
        assert_eq!(
            env.extracted_attrs,
            vec![("encoding".into(), "8bit".into())]
        );
        assert_eq!(env.recipients.len(), 1500);
        assert_eq!(env.size.rcpt_count, 1500);
        for (i, r) in env.recipients.iter().enumerate() {
            assert_eq!(r.address, s.rcpts[i]);
            assert_eq!(r.orig.is_some(), i % 2 == 0);
            assert_eq!(r.dsn_orcpt.is_some(), i % 3 == 0);
            assert_eq!(r.dsn_notify != 0, i % 4 == 0);
            assert!(!r.done && !r.extracted);
        }
        assert_eq!(read_all_lines(&q), s.lines);
        let expect: u64 = s.lines.iter().map(|l| l.len() as u64 + 2).sum();
        assert_eq!(env.size.content_size, expect);
        assert_eq!(
            q.id().unwrap().as_str(),
            s.path.file_name().unwrap().to_str().unwrap()
        );
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(s.path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    /// The example file of `docs/queue-format.md`, byte for byte.
    #[test]
    fn the_documented_example_is_what_the_writer_writes() {
        let l = layout("example");
        let mut w = Writer::create(&l, Queue::Incoming, IdStyle::Short).unwrap();
        w.arrival_time(UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456))
            .unwrap();
        w.sender("alice@example.org").unwrap();
        w.attr("rewrite_context", "remote").unwrap();
        w.recipient(&NewRecipient {
            address: "bob@example.net",
            orig: Some("Bob@example.net"),
            dsn_notify: DSN_NOTIFY_FAILURE,
            ..Default::default()
        })
        .unwrap();
        w.start_content().unwrap();
        for line in ["Subject: hi", "", "Hello."] {
            w.content_line(line.as_bytes()).unwrap();
        }
        let d = w.finish().unwrap().sync().unwrap();
        let q = QueueFile::open(d.path(), Access::ReadOnly, &Limits::default()).unwrap();
        assert_eq!(q.envelope().recipients[0].offset, 195);
        let bytes = fs::read(d.path()).unwrap();
        let shown: String = bytes
            .iter()
            .map(|&b| match b {
                b' '..=b'~' if b != b'\\' => char::from(b).to_string(),
                _ => format!("\\x{b:02x}"),
            })
            .collect();
        assert_eq!(shown, EXAMPLE, "\n{shown}\n");
    }

    const EXAMPLE: &str = concat!(
        "Co             23             214               1               0",
        "             237             239               1",
        "T\\x111700000000 123456",
        "S\\x11alice@example.org",
        "A\\x16rewrite_context=remote",
        "O\\x0fBob@example.net",
        "n\\x014",
        "R\\x0fbob@example.net",
        "M\\x00",
        "N\\x0bSubject: hi",
        "N\\x00",
        "N\\x06Hello.",
        "X\\x00",
        "E\\x082ae76113",
    );

    #[test]
    fn streamed_parts_and_extracted_recipients() {
        let l = layout("parts");
        let mut w = Writer::create(&l, Queue::Maildrop, IdStyle::Long).unwrap();
        w.sender("").unwrap();
        w.start_content().unwrap();
        w.content_part(b"abc").unwrap();
        w.content_part(&vec![b'z'; 10_000]).unwrap();
        w.content_line(b"def").unwrap();
        w.content_part(b"unterminated").unwrap();
        w.start_extracted().unwrap();
        w.recipient(&NewRecipient::new("x@example.com")).unwrap();
        assert!(w.sender("again").is_err());
        let d = w.finish().unwrap().sync().unwrap();
        assert_eq!(d.id().style(), IdStyle::Long);
        let q = QueueFile::open(d.path(), Access::ReadOnly, &Limits::default()).unwrap();
        q.verify().unwrap();
        let lines = read_all_lines(&q);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 3 + 10_000 + 3);
        assert_eq!(lines[1], b"unterminated");
        let env = q.envelope();
        assert_eq!(env.sender, "");
        assert_eq!(env.recipients.len(), 1);
        assert!(env.recipients[0].extracted);
        // The line limit of read_line is enforced.
        let mut c = q.content();
        let mut line = Vec::new();
        assert!(c.read_line(&mut line, 100).is_err());
    }

    #[test]
    fn out_of_order_calls_are_refused() {
        let l = layout("order");
        let mut w = Writer::create(&l, Queue::Incoming, IdStyle::Short).unwrap();
        assert!(w.start_content().is_err(), "no sender yet");
        w.sender("a@b").unwrap();
        assert!(w.content_line(b"x").is_err());
        assert!(w.attr("a=b", "c").is_err());
        assert!(w.attr("", "c").is_err());
        w.start_content().unwrap();
        assert!(w.recipient(&NewRecipient::new("r@x")).is_err());
        drop(w);
        // Dropping an unfinished writer leaves nothing.
        let inc = l.dir(Queue::Incoming);
        assert_eq!(fs::read_dir(inc).unwrap().count(), 0);
    }

    #[test]
    fn dropped_unsynced_file_is_removed() {
        let l = layout("drop");
        let mut w = Writer::create(&l, Queue::Incoming, IdStyle::Short).unwrap();
        w.sender("a@b").unwrap();
        let u = w.finish().unwrap();
        assert_eq!(fs::read_dir(l.dir(Queue::Incoming)).unwrap().count(), 1);
        drop(u);
        assert_eq!(fs::read_dir(l.dir(Queue::Incoming)).unwrap().count(), 0);
    }

    #[test]
    fn sync_many_commits_a_batch_with_one_directory_fsync() {
        let l = layout("batch");
        let mut batch = Vec::new();
        for i in 0..20 {
            let mut w = Writer::create(&l, Queue::Incoming, IdStyle::Short).unwrap();
            w.sender("a@b").unwrap();
            w.recipient(&NewRecipient::new(&format!("r{i}@x"))).unwrap();
            w.content_line(b"").unwrap_err();
            w.start_content().unwrap();
            w.content_line(format!("line {i}").as_bytes()).unwrap();
            batch.push(w.finish().unwrap());
        }
        let before = crate::queue::fsync_count();
        let res = sync_many(batch);
        let after = crate::queue::fsync_count();
        // Other tests run concurrently and also sync: at least 21 here.
        assert!(after - before >= 21);
        let mut ids = std::collections::HashSet::new();
        for r in res {
            let d = r.unwrap();
            assert!(ids.insert(d.id()));
            QueueFile::open(d.path(), Access::ReadOnly, &Limits::default())
                .unwrap()
                .verify()
                .unwrap();
        }
        assert_eq!(l.scan(Queue::Incoming).count(), 20);
    }

    #[test]
    fn done_marks_survive_reopen_and_keep_the_checksum() {
        let l = layout("done");
        let s = write_sample(&l, 5, vec![b"hello".to_vec()]);
        let mut q = QueueFile::open(&s.path, Access::ReadWrite, &Limits::default()).unwrap();
        q.mark_done_durable(&[1, 3]).unwrap();
        q.mark_done(3).unwrap(); // idempotent
        drop(q);
        let q = QueueFile::open(&s.path, Access::ReadOnly, &Limits::default()).unwrap();
        q.verify().unwrap();
        let done: Vec<bool> = q.envelope().recipients.iter().map(|r| r.done).collect();
        assert_eq!(done, vec![false, true, false, true, false]);
        assert_eq!(
            q.envelope().pending().map(|(i, _)| i).collect::<Vec<_>>(),
            vec![0, 2, 4]
        );
        let mut q = QueueFile::open(&s.path, Access::ReadWrite, &Limits::default()).unwrap();
        q.mark_done_durable(&[0, 2, 4]).unwrap();
        assert!(q.envelope().all_done());
        assert!(q.mark_done(99).is_err());
        let ro = QueueFile::open(&s.path, Access::ReadOnly, &Limits::default()).unwrap();
        assert!(ro.envelope().all_done());
    }

    fn sample_bytes() -> (Scratch, PathBuf, Vec<u8>) {
        let l = layout("sample");
        let lines = vec![
            b"Subject: sample".to_vec(),
            b"".to_vec(),
            vec![b'q'; 5000],
            b"end".to_vec(),
        ];
        let s = write_sample(&l, 3, lines);
        let bytes = fs::read(&s.path).unwrap();
        (l, s.path, bytes)
    }

    fn open_bytes(path: &Path, bytes: &[u8]) -> Result<(), ReadError> {
        // A new file each time: rewriting one in place (truncate) makes
        // ext4 flush it on close, which would make this test slow.
        let _ = fs::remove_file(path);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let q = QueueFile::open(path, Access::ReadOnly, &Limits::default())?;
        q.verify()?;
        let mut c = q.content();
        let mut line = Vec::new();
        while c.read_line(&mut line, 1 << 20)? {}
        Ok(())
    }

    #[test]
    fn every_truncation_is_detected() {
        let (_l, path, bytes) = sample_bytes();
        let probe = path.with_file_name("probe");
        for n in 0..bytes.len() {
            match open_bytes(&probe, &bytes[..n]) {
                Err(ReadError::Incomplete(Incomplete::Truncated { .. })) => {}
                other => panic!("truncation at {n}: {other:?}"),
            }
        }
        open_bytes(&probe, &bytes).unwrap();
        let mut longer = bytes.clone();
        longer.push(b'E');
        assert!(open_bytes(&probe, &longer).unwrap_err().is_corrupt());
    }

    #[test]
    fn every_byte_change_is_detected_or_harmless() {
        let (_l, path, bytes) = sample_bytes();
        let probe = path.with_file_name("probe");
        let mut x: u32 = 12345;
        let mut undetected = Vec::new();
        let mut b = bytes.clone();
        for i in 0..bytes.len() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Every byte once with a random change; R bytes with the one
            // change that is legitimate for a record type (a done mark).
            let v = if bytes[i] == b'R' {
                b'R' ^ b'D'
            } else {
                (x % 255) as u8 + 1
            };
            b[i] ^= v;
            if open_bytes(&probe, &b).is_ok() {
                undetected.push((i, bytes[i], b[i]));
            }
            b[i] = bytes[i];
        }
        // Only R <-> D (a done mark) may go unnoticed.
        assert!(!undetected.is_empty(), "the R -> D probes should pass");
        for (i, from, to) in &undetected {
            assert!(
                matches!((from, to), (b'R', b'D') | (b'D', b'R')),
                "change at {i} from {from} to {to} undetected"
            );
        }
    }

    #[test]
    fn garbage_never_panics_or_overallocates() {
        let (_l, path, bytes) = sample_bytes();
        let probe = path.with_file_name("probe");
        let mut x: u64 = 0xDEADBEEF;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..400 {
            let mut b = bytes.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = open_bytes(&probe, &b);
            let n = (next() % 300) as usize;
            let junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            let _ = open_bytes(&probe, &junk);
        }
        // A huge claimed length is refused before allocating.
        let mut huge = bytes[..SIZE_RECORD_LEN].to_vec();
        huge.extend_from_slice(&[b'A', 0xff, 0xff, 0xff, 0x7f]);
        let e = open_bytes(&probe, &huge).unwrap_err();
        assert!(e.is_incomplete() || e.is_corrupt());
    }

    #[test]
    fn files_without_the_execute_bit_are_incomplete() {
        let (_l, path, bytes) = sample_bytes();
        let probe = path.with_file_name("probe");
        fs::write(&probe, &bytes).unwrap();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o600)).unwrap();
        match QueueFile::open(&probe, Access::ReadOnly, &Limits::default()) {
            Err(ReadError::Incomplete(Incomplete::NotMarkedComplete)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_enforced() {
        let l = layout("limits");
        let s = write_sample(&l, 50, vec![vec![b'a'; 3000]]);
        let small = Limits {
            max_envelope_records: 20,
            ..Limits::default()
        };
        assert!(QueueFile::open(&s.path, Access::ReadOnly, &small)
            .unwrap_err()
            .is_corrupt());
        let small = Limits {
            max_record_len: 1000,
            ..Limits::default()
        };
        let q = QueueFile::open(&s.path, Access::ReadOnly, &small).unwrap();
        assert!(q.verify().unwrap_err().is_corrupt());
        let small = Limits {
            max_file_size: 100,
            ..Limits::default()
        };
        assert!(QueueFile::open(&s.path, Access::ReadOnly, &small).is_err());
    }
}
