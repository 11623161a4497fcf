//! The mail queue on disk: queue IDs, the queue directory layout, and
//! the queue file format with its writer and reader.
//!
//! This module is the foundation of Facteur's first principle, *nothing
//! accepted is ever lost*. It holds no daemon logic: cleanup, qmgr, the
//! delivery agents and the admin commands build on it.
//!
//! * [`id`]: queue IDs, short and long, as Postfix makes them; validation
//!   of untrusted IDs; the hash key of hashed subdirectories.
//! * [`dirs`]: the directories under `queue_directory`, their modes,
//!   `create_or_repair`, `path_of`, scanning a queue, moving a file.
//! * [`record`]: the record framing (type byte, varint length, payload),
//!   the record types and their postcat labels, the size record, and a
//!   bounded record reader.
//! * [`file`](mod@file): writing a new queue file (crash-safe, group-commit capable),
//!   reading one back (strict limits), done marks in place.
//! * [`crc`]: CRC-32C for the end record's checksum.
//! * [`lock`]: the locks between delivery agents and postsuper, and the
//!   forced-expiry mark.
//! * [`statuslog`]: the per-message defer and bounce logs.
//! * [`recycle`]: the emptied files of delivered messages, reused for new
//!   ones.
//!
//! The format is specified in `docs/queue-format.md`. In short: a queue
//! file is a sequence of records `type, length, payload`; a fixed-width
//! size record `C` comes first and says where the content and the
//! extracted section start and where the end record is; the envelope
//! (`T F S O R D A o n i <`) follows, then `M` and the content as `N`/`L`
//! records, then `X` and the extracted records, then `E` with a CRC-32C.
//!
//! # Life of a queue file, and what a crash leaves
//!
//! ```text
//!  Writer::create      tmp.PID.N (0600), fstat -> ID,        incomplete: skipped by
//!                      rename -> queue[/h/h]/ID (0600)        scans and readers
//!  ... records ...     ID grows                              "
//!  Writer::finish      size record patched, chmod 0700       complete   (-> Unsynced)
//!  sync / sync_many    fsync(file); fsync(dir)               durable    (-> Durable: ack now)
//!  qmgr                rename incoming/ID -> active/ID       no fsync needed
//!  delivery            agent: pwrite 'D' over 'R'            recipient done (not fsynced)
//!  all done            rename -> recycle/iINODE (0700),      gone (see [`recycle`]),
//!                      emptied, then 0600; or unlink         reused by the next create
//! ```
//!
//! | state at the crash | what is on disk afterwards | what recovery does |
//! |---|---|---|
//! | between `open` and `rename` in create | empty `tmp.*` | purged when old (`postsuper -p`) |
//! | writing (mode 0600) | `ID`, mode 0600, partial | skipped by scans; never acknowledged; purged when old |
//! | finished (0700), fsync not returned, **process** crash | `ID`, 0700, complete (the kernel has every byte) | delivered; the client got no 250 and may retry: **duplicate window 1** |
//! | same, **power** loss | `ID` 0600, or 0700 but possibly short or with holes | short: `Incomplete::Truncated`; holes: `verify` fails: reported, moved aside by the daemons, never delivered as whole; it was never acknowledged |
//! | durable (acknowledged) | `ID`, complete | delivered |
//! | moved between queues | `ID` in the old **or** the new queue (rename is atomic) | `active/` goes back to `incoming/` at start; every queue is scanned again |
//! | delivered, done mark not yet written (agent killed) | `R` still there | delivered again (**duplicate window 2**) |
//! | delivered, done mark written but not fsynced, **power** loss | `R` may be back | delivered again (duplicate window 2; Postfix does not sync its done marks either) |
//! | every recipient done, unlink not on disk | `ID`, all `D` | removed on sight, nothing delivered |
//! | every recipient done, being recycled | `recycle/iINODE` of mode 0700 (maybe still with content), or back in `active/` as `ID` (all `D`, or emptied: zeroed or truncated) | pool files not of mode 0600 never claimed, removed at qmgr start; an all-done file removed on sight; an emptied one skipped (0600) or set aside as corrupt or truncated, nothing delivered |
//! | recycled file claimed by cleanup | `ID` 0600 in `incoming/` | as a file being written: never acknowledged, purged when old |
//! | recycled file claimed by cleanup, **power** loss before the new message's fsync, the new name on disk (another batch's directory fsync) but not the emptied inode | the new name with the old message's last synced bytes | the old message as if its removal had not reached the disk: removed on sight if its done marks did, else delivered again (duplicate window 2); the new one was never acknowledged |
//!
//! Across daemons the same two windows appear: **window 1** is a handover
//! whose acknowledgement was lost — cleanup killed between its fsync and
//! its reply, or pickup killed between cleanup's reply and the unlink of
//! the maildrop file — so the sender (pickup, an SMTP client) submits
//! again; a reply that cleanup cannot write (the client is gone) makes it
//! withdraw its copy, which closes most of that window. **Window 2** is a
//! delivery whose done mark did not make it (the agent killed after the
//! mailbox write and before the mark). daemons/tests/e2e_crash.rs counts
//! both under kill -9.
//!
//! See [`file`](mod@file) for the argument in full and `docs/queue-format.md` for
//! the format.

pub mod crc;
pub mod dirs;
pub mod file;
pub mod id;
pub mod lock;
pub mod record;
pub mod recycle;
pub mod statuslog;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

pub use dirs::{Change, Found, Ownership, Queue, QueueLayout};
pub use file::{
    sync_many, Access, ContentReader, Durable, Envelope, NewRecipient, QueueFile, Recipient,
    Unsynced, Writer, CONTENT_FILTER_ATTR,
};
pub use id::{IdStyle, QueueId};
pub use record::{RecordType, Section, SizeRecord};

/// fsync/fdatasync calls made by this module in this process (file and
/// directory syncs alike): for benchmarks and daemon statistics.
static FSYNCS: AtomicU64 = AtomicU64::new(0);

/// The number of fsync and fdatasync calls this module has made.
pub fn fsync_count() -> u64 {
    FSYNCS.load(Ordering::Relaxed)
}

pub(crate) fn count_fsync() {
    FSYNCS.fetch_add(1, Ordering::Relaxed);
}

/// Bounds on what a reader accepts. Everything a reader holds in memory
/// is bounded by these, whatever the file says.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload of any one record.
    pub max_record_len: usize,
    /// Most records in the whole file.
    pub max_records: u64,
    /// Most records in the envelope plus the extracted section (what
    /// [`QueueFile::open`] keeps in memory).
    pub max_envelope_records: u64,
    /// Most payload bytes in the envelope plus the extracted section.
    pub max_envelope_bytes: usize,
    /// Largest queue file.
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_len: 1 << 20,
            max_records: 1 << 28,
            max_envelope_records: 1_000_000,
            max_envelope_bytes: 64 << 20,
            max_file_size: 4 << 30,
        }
    }
}

/// Why a file is not (yet) a complete queue file, as opposed to damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incomplete {
    /// The owner-execute bit is not set: a writer has not finished (or
    /// died). Leave it alone while young; purge it when old.
    NotMarkedComplete,
    /// The file ends before its end record (or before the size record
    /// says it should). Facteur's writer cannot produce this under a queue
    /// ID name; such a file is damaged or from another writer, and belongs
    /// in `corrupt/`.
    Truncated { file_len: u64, expected: u64 },
}

/// A queue file could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Incomplete(Incomplete),
    /// The file is garbled: the byte offset of the offending record (or
    /// field) and what is wrong.
    Corrupt {
        offset: u64,
        reason: String,
    },
}

impl ReadError {
    pub(crate) fn corrupt(offset: u64, reason: impl Into<String>) -> ReadError {
        ReadError::Corrupt {
            offset,
            reason: reason.into(),
        }
    }

    pub fn is_incomplete(&self) -> bool {
        matches!(self, ReadError::Incomplete(_))
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, ReadError::Corrupt { .. })
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Incomplete(Incomplete::NotMarkedComplete) => {
                write!(f, "incomplete queue file: not marked complete")
            }
            ReadError::Incomplete(Incomplete::Truncated { file_len, expected }) => write!(
                f,
                "incomplete queue file: {file_len} bytes, expected {expected}"
            ),
            ReadError::Corrupt { offset, reason } => {
                write!(f, "corrupt queue file at offset {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}
