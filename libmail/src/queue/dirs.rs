//! The queue directory: its subdirectories, their modes, hashing, scans
//! and moves.
//!
//! # Layout
//!
//! Under `queue_directory` (Postfix's table, `postfix-features.md` §1.1):
//!
//! | path | owner (as root) | mode |
//! |---|---|---|
//! | `.` | root | 0755 |
//! | `incoming active deferred hold corrupt bounce defer trace flush saved private recycle` | mail_owner | 0700 |
//! | `maildrop` | mail_owner, group setgid_group (postdrop) | 0730 (users write, cannot list) |
//! | `public` | mail_owner, group setgid_group | 0710 |
//! | `pid` | root | 0755 |
//!
//! Unprivileged (one ordinary user runs everything: development and
//! tests), the modes are the same and every owner is that user.
//!
//! Queues named in `hash_queue_names` keep their files `hash_queue_depth`
//! single-character directories deep, named after the first hex digits of
//! the creation time's microseconds ([`QueueId::hash_key`]):
//! `deferred/B/B59DF9902ED`. Hash directories are made on first use (mode
//! 0700, like their queue), as Postfix does, and their parent directory is
//! fsynced then, so a durable file never sits in a directory whose own
//! entry could vanish.
//!
//! # Scans
//!
//! [`QueueLayout::scan`] walks a queue, descending into single-character
//! hex subdirectories up to depth 5 whatever the configured depth (files
//! stay findable after `hash_queue_depth` changes), and yields complete
//! queue files only: a regular file named by a valid queue ID with the
//! owner-execute bit. [`QueueLayout::scan_all`] also reports what it
//! skipped: incomplete files (being written, or left by a crash before
//! they were finished), `tmp.*` files (a crash in the instant between
//! creating a file and naming it) — purge both when older than any
//! running writer can be — and anything else.
//!
//! # Moves
//!
//! A message changes queue by `rename(2)` within the queue file system,
//! never replacing an existing file. A crash leaves it in the old queue
//! or the new one, never neither; no fsync is needed for safety, because
//! every queue is scanned again after a restart (`active/` is moved back
//! to `incoming/`). Where the move itself must stick (`postsuper -h`), pass
//! `sync = true`: the new directory is fsynced, then the old one. If a
//! crash ever leaves the same file (same inode) under both names, the
//! next move notices and drops the stale name.

use std::fmt;
use std::fs::{self, DirBuilder, ReadDir};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::file::{rename_noreplace, sync_dir};
use super::id::{QueueId, MAX_HASH_DEPTH};

/// The queues: directories holding queue files (or per-message logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    Maildrop,
    Incoming,
    Active,
    Deferred,
    Hold,
    Corrupt,
    Bounce,
    Defer,
    Trace,
    Flush,
    Saved,
}

impl Queue {
    pub const ALL: [Queue; 11] = [
        Queue::Maildrop,
        Queue::Incoming,
        Queue::Active,
        Queue::Deferred,
        Queue::Hold,
        Queue::Corrupt,
        Queue::Bounce,
        Queue::Defer,
        Queue::Trace,
        Queue::Flush,
        Queue::Saved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Maildrop => "maildrop",
            Queue::Incoming => "incoming",
            Queue::Active => "active",
            Queue::Deferred => "deferred",
            Queue::Hold => "hold",
            Queue::Corrupt => "corrupt",
            Queue::Bounce => "bounce",
            Queue::Defer => "defer",
            Queue::Trace => "trace",
            Queue::Flush => "flush",
            Queue::Saved => "saved",
        }
    }

    pub fn from_name(name: &str) -> Option<Queue> {
        Queue::ALL.iter().copied().find(|q| q.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who should own the queue directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Leave owners alone; set modes only (unprivileged mode, or a check
    /// run by a non-root user).
    CurrentUser,
    /// A system install, run as root: `mail_owner` owns the queues, the
    /// `setgid_group` (postdrop) is the group of `maildrop` and `public`,
    /// root owns the top and `pid`.
    System { mail_owner: u32, setgid_group: u32 },
}

/// What [`QueueLayout::create_or_repair`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created {
        path: PathBuf,
        mode: u32,
    },
    Mode {
        path: PathBuf,
        from: u32,
        to: u32,
    },
    Owner {
        path: PathBuf,
        from: (u32, u32),
        to: (u32, u32),
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created { path, mode } => {
                write!(f, "created {} (mode {mode:04o})", path.display())
            }
            Change::Mode { path, from, to } => {
                write!(f, "{}: mode {from:04o} -> {to:04o}", path.display())
            }
            Change::Owner { path, from, to } => write!(
                f,
                "{}: owner {}:{} -> {}:{}",
                path.display(),
                from.0,
                from.1,
                to.0,
                to.1
            ),
        }
    }
}

/// One thing found by [`QueueLayout::scan_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A queue file: valid ID name, regular file, owner-execute bit.
    Complete { id: QueueId, path: PathBuf },
    /// A valid ID name without the owner-execute bit.
    Incomplete {
        id: QueueId,
        path: PathBuf,
        mtime: SystemTime,
    },
    /// A `tmp.*` file a writer left (or is still writing).
    Temporary { path: PathBuf, mtime: SystemTime },
    /// Anything else (foreign names, symlinks, sockets...).
    Other { path: PathBuf },
}

#[derive(Clone, Copy)]
enum Owner {
    Root,
    MailOwner,
}

/// (relative name, mode, owner, group = setgid_group)
const NON_QUEUE_DIRS: [(&str, u32, Owner, bool); 4] = [
    ("private", 0o700, Owner::MailOwner, false),
    (super::recycle::DIR, 0o700, Owner::MailOwner, false),
    ("public", 0o710, Owner::MailOwner, true),
    ("pid", 0o755, Owner::Root, false),
];

fn queue_mode(q: Queue) -> (u32, bool) {
    match q {
        Queue::Maildrop => (0o730, true),
        _ => (0o700, false),
    }
}

/// The queue directory of one configuration.
#[derive(Debug, Clone)]
pub struct QueueLayout {
    root: PathBuf,
    hashed: [bool; 11],
    depth: usize,
}

impl QueueLayout {
    /// A layout under `root` with `hash_queue_names` (a Postfix list:
    /// commas and/or spaces) and `hash_queue_depth` (1 to 5).
    pub fn new(
        root: impl Into<PathBuf>,
        hash_queue_names: &str,
        hash_queue_depth: u32,
    ) -> Result<QueueLayout, String> {
        if hash_queue_depth < 1 {
            return Err(format!(
                "invalid hash_queue_depth parameter value {hash_queue_depth} < 1"
            ));
        }
        if hash_queue_depth as usize > MAX_HASH_DEPTH {
            return Err(format!(
                "invalid hash_queue_depth parameter value {hash_queue_depth} > {MAX_HASH_DEPTH}"
            ));
        }
        let mut hashed = [false; 11];
        for name in hash_queue_names
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|s| !s.is_empty())
        {
            let q = Queue::from_name(name)
                .ok_or_else(|| format!("unknown queue name in hash_queue_names: {name}"))?;
            hashed[q.index()] = true;
        }
        Ok(QueueLayout {
            root: root.into(),
            hashed,
            depth: hash_queue_depth as usize,
        })
    }

    /// The layout of a configuration (`queue_directory`,
    /// `hash_queue_names`, `hash_queue_depth`).
    pub fn from_params(params: &crate::config::params::Params) -> Result<QueueLayout, String> {
        let get = |n: &str| params.value(n).map_err(|e| format!("{n}: {e}"));
        let root = get("queue_directory")?;
        let names = get("hash_queue_names")?;
        let depth = get("hash_queue_depth")?;
        let depth: u32 = depth
            .trim()
            .parse()
            .map_err(|_| format!("bad numerical parameter value: hash_queue_depth = {depth}"))?;
        QueueLayout::new(root, &names, depth)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same layout addressed from inside `queue_directory`: paths
    /// relative to the working directory (`./incoming/ID`). Daemons work
    /// this way (they chdir there at start), so their paths stay valid
    /// after master.cf's `chroot` jails them in it.
    pub fn relative(&self) -> QueueLayout {
        QueueLayout {
            root: PathBuf::from("."),
            ..self.clone()
        }
    }

    pub fn is_hashed(&self, q: Queue) -> bool {
        self.hashed[q.index()]
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The queue's top directory.
    pub fn dir(&self, q: Queue) -> PathBuf {
        self.root.join(q.name())
    }

    /// The directory a file with hash key `key` lives in.
    pub fn dir_for_key(&self, q: Queue, key: &[u8; 5]) -> PathBuf {
        let mut d = self.dir(q);
        if self.is_hashed(q) {
            for &c in &key[..self.depth] {
                d.push(char::from(c).to_string());
            }
        }
        d
    }

    /// Where the file `id` lives in queue `q`. `id` is a validated
    /// [`QueueId`], so the path cannot leave the queue.
    pub fn path_of(&self, q: Queue, id: &QueueId) -> PathBuf {
        self.dir_for_key(q, &id.hash_key()).join(id.as_str())
    }

    /// [`dir_for_key`](Self::dir_for_key), creating missing hash
    /// directories (each new one made durable in its parent).
    pub fn ensure_dir(&self, q: Queue, key: &[u8; 5]) -> io::Result<PathBuf> {
        let mut d = self.dir(q);
        if !self.is_hashed(q) {
            return Ok(d);
        }
        for &c in &key[..self.depth] {
            let child = d.join(char::from(c).to_string());
            match DirBuilder::new().mode(0o700).create(&child) {
                Ok(()) => sync_dir(&d)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            d = child;
        }
        Ok(d)
    }

    /// Finds `id` in the first of `queues` that has it (`postcat -q`,
    /// `postsuper -d`), looking at the configured hash depth first, then
    /// at every other depth.
    pub fn find(&self, id: &QueueId, queues: &[Queue]) -> Option<(Queue, PathBuf)> {
        for &q in queues {
            let p = self.path_of(q, id);
            if fs::symlink_metadata(&p).is_ok() {
                return Some((q, p));
            }
            let key = id.hash_key();
            let mut d = self.dir(q);
            for level in std::iter::once(None).chain(key.iter().map(Some)) {
                if let Some(&c) = level {
                    d.push(char::from(c).to_string());
                }
                let p = d.join(id.as_str());
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                    return Some((q, p));
                }
            }
        }
        None
    }

    /// Creates missing directories and fixes modes (and, with
    /// [`Ownership::System`], owners) of the queue directory, its
    /// subdirectories and existing hash directories. Returns what changed.
    pub fn create_or_repair(&self, owner: &Ownership) -> io::Result<Vec<Change>> {
        let mut changes = Vec::new();
        let mut created_in_root = false;
        if !self.root.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&self.root)?;
            changes.push(Change::Created {
                path: self.root.clone(),
                mode: 0o755,
            });
            if let Some(parent) = self.root.parent() {
                let _ = sync_dir(parent);
            }
        }
        fix(
            &self.root,
            true,
            0o755,
            Owner::Root,
            false,
            owner,
            &mut changes,
        )?;
        let mut dirs: Vec<(PathBuf, u32, Owner, bool, bool)> = Queue::ALL
            .iter()
            .map(|&q| {
                let (mode, group) = queue_mode(q);
                (self.dir(q), mode, Owner::MailOwner, group, true)
            })
            .collect();
        for (name, mode, o, group) in NON_QUEUE_DIRS {
            dirs.push((self.root.join(name), mode, o, group, false));
        }
        for (path, mode, o, group, is_queue) in dirs {
            let mut created = false;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "{} is not a directory",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new().mode(mode).create(&path)?;
                    changes.push(Change::Created {
                        path: path.clone(),
                        mode,
                    });
                    created_in_root = true;
                    created = true;
                }
                Err(e) => return Err(e),
            }
            // A directory just created gets its final mode (the umask may
            // have cut it) and owner here; that is part of "created", not a
            // repair worth its own line.
            let mut fixes = Vec::new();
            fix(&path, false, mode, o, group, owner, &mut fixes)?;
            if !created {
                changes.extend(fixes);
            }
            if is_queue {
                self.repair_hash_dirs(&path, 0, owner, &mut changes)?;
            }
        }
        if created_in_root {
            sync_dir(&self.root)?;
        }
        Ok(changes)
    }

    fn repair_hash_dirs(
        &self,
        dir: &Path,
        depth: usize,
        owner: &Ownership,
        changes: &mut Vec<Change>,
    ) -> io::Result<()> {
        if depth >= MAX_HASH_DEPTH {
            return Ok(());
        }
        for e in fs::read_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() && is_hash_name(&e.file_name()) {
                let p = e.path();
                fix(&p, false, 0o700, Owner::MailOwner, false, owner, changes)?;
                self.repair_hash_dirs(&p, depth + 1, owner, changes)?;
            }
        }
        Ok(())
    }

    /// Complete queue files in `q` (see the module documentation).
    pub fn scan(&self, q: Queue) -> impl Iterator<Item = io::Result<(QueueId, PathBuf)>> {
        self.scan_all(q).filter_map(|r| match r {
            Ok(Found::Complete { id, path }) => Some(Ok((id, path))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// Everything in `q`, classified.
    pub fn scan_all(&self, q: Queue) -> Scan {
        Scan {
            pending: vec![(self.dir(q), 0)],
            current: None,
        }
    }

    /// Moves `id` from queue `from` to queue `to` by rename; returns the
    /// new path. With `sync`, the move is durable when this returns.
    pub fn move_file(
        &self,
        id: &QueueId,
        from: Queue,
        to: Queue,
        sync: bool,
    ) -> io::Result<PathBuf> {
        self.move_path(&self.path_of(from, id), id, to, sync)
    }

    /// Moves the queue file at `src` (wherever it is: another hash depth,
    /// a file `find` found) to its place in queue `to`, by rename; returns
    /// the new path. With `sync`, the move is durable when this returns.
    pub fn move_path(
        &self,
        src: &Path,
        id: &QueueId,
        to: Queue,
        sync: bool,
    ) -> io::Result<PathBuf> {
        let src = src.to_path_buf();
        let dst_dir = self.ensure_dir(to, &id.hash_key())?;
        let dst = dst_dir.join(id.as_str());
        match rename_noreplace(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let a = fs::symlink_metadata(&src)?;
                let b = fs::symlink_metadata(&dst)?;
                if a.dev() == b.dev() && a.ino() == b.ino() {
                    // A crash left two names for one file: drop the old.
                    fs::remove_file(&src)?;
                } else {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        if sync {
            sync_dir(&dst_dir)?;
            if let Some(src_dir) = src.parent() {
                sync_dir(src_dir)?;
            }
        }
        Ok(dst)
    }

    /// Free bytes for unprivileged writers on the queue's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a valid C string and a zeroed statvfs to fill.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }

    /// Whether the queue file system has `queue_minfree` bytes free
    /// (`queue_minfree = 0`: always). Postfix's daemons refuse new mail
    /// with a temporary error when it has not.
    pub fn has_room(&self, queue_minfree: u64) -> io::Result<bool> {
        if queue_minfree == 0 {
            return Ok(true);
        }
        Ok(self.free_bytes()? >= queue_minfree)
    }

    /// Removes `id` from `q` (all recipients done, or `postsuper -d`).
    /// With `sync`, the removal is durable when this returns.
    pub fn remove(&self, q: Queue, id: &QueueId, sync: bool) -> io::Result<()> {
        let p = self.path_of(q, id);
        fs::remove_file(&p)?;
        if sync {
            if let Some(d) = p.parent() {
                sync_dir(d)?;
            }
        }
        Ok(())
    }
}

/// Makes a deferred message due now: qmgr schedules deferred mail by the
/// file's mtime (the next attempt), so `postqueue -i`/`-s` and
/// `postsuper -H`/`-r` set it to the present.
pub fn make_due(file: &fs::File) -> io::Result<()> {
    file.set_times(fs::FileTimes::new().set_modified(SystemTime::now()))
}

/// fsync of a directory, so that renames and unlinks in it are durable.
pub fn sync_directory(dir: &Path) -> io::Result<()> {
    sync_dir(dir)
}

fn is_hash_name(name: &std::ffi::OsStr) -> bool {
    let b = name.as_encoded_bytes();
    b.len() == 1 && matches!(b[0], b'0'..=b'9' | b'A'..=b'F')
}

/// Sets owner (as root) and mode of one directory, through a descriptor
/// opened without following symlinks (only the top, `follow`, may be one),
/// so a directory swapped for a symlink by its owner cannot redirect a
/// root-run repair.
fn fix(
    path: &Path,
    follow: bool,
    mode: u32,
    o: Owner,
    setgid_group: bool,
    owner: &Ownership,
    changes: &mut Vec<Change>,
) -> io::Result<()> {
    let mut flags = libc::O_DIRECTORY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let d = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let m = d.metadata()?;
    if let Ownership::System {
        mail_owner,
        setgid_group: gid,
    } = *owner
    {
        let uid = match o {
            Owner::Root => 0,
            Owner::MailOwner => mail_owner,
        };
        let want_gid = if setgid_group { gid } else { m.gid() };
        if m.uid() != uid || m.gid() != want_gid {
            std::os::unix::fs::fchown(&d, Some(uid), Some(want_gid))?;
            changes.push(Change::Owner {
                path: path.to_path_buf(),
                from: (m.uid(), m.gid()),
                to: (uid, want_gid),
            });
        }
    }
    let have = m.mode() & 0o7777;
    if have != mode {
        d.set_permissions(fs::Permissions::from_mode(mode))?;
        changes.push(Change::Mode {
            path: path.to_path_buf(),
            from: have,
            to: mode,
        });
    }
    Ok(())
}

/// The walk behind [`QueueLayout::scan_all`].
pub struct Scan {
    pending: Vec<(PathBuf, usize)>,
    current: Option<(ReadDir, usize)>,
}

impl Iterator for Scan {
    type Item = io::Result<Found>;

    fn next(&mut self) -> Option<io::Result<Found>> {
        loop {
            if self.current.is_none() {
                let (dir, depth) = self.pending.pop()?;
                match fs::read_dir(&dir) {
                    Ok(rd) => self.current = Some((rd, depth)),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (rd, depth) = self.current.as_mut()?;
            let depth = *depth;
            let entry = match rd.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(e)) => e,
            };
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // moved meanwhile
                Err(e) => return Some(Err(e)),
            };
            let name = entry.file_name();
            if meta.is_dir() {
                if depth < MAX_HASH_DEPTH && is_hash_name(&name) {
                    self.pending.push((path, depth + 1));
                    continue;
                }
                return Some(Ok(Found::Other { path }));
            }
            if !meta.is_file() {
                return Some(Ok(Found::Other { path }));
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let Some(name) = name.to_str() else {
                return Some(Ok(Found::Other { path }));
            };
            if name.starts_with("tmp.") {
                return Some(Ok(Found::Temporary { path, mtime }));
            }
            return Some(Ok(match QueueId::parse(name) {
                Ok(id) if meta.mode() & 0o100 != 0 => Found::Complete { id, path },
                Ok(id) => Found::Incomplete { id, path, mtime },
                Err(_) => Found::Other { path },
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::file::{Access, NewRecipient, QueueFile, Writer};
    use crate::queue::id::IdStyle;
    use crate::queue::Limits;

    fn scratch(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "facteur-dirs-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn write(l: &QueueLayout, q: Queue) -> QueueId {
        let mut w = Writer::create(l, q, IdStyle::Short).unwrap();
        w.sender("s@x").unwrap();
        w.recipient(&NewRecipient::new("r@x")).unwrap();
        w.finish().unwrap().sync().unwrap().id()
    }

    #[test]
    fn layout_parameters() {
        let l = QueueLayout::new("/q", "deferred, defer", 1).unwrap();
        assert!(l.is_hashed(Queue::Deferred) && l.is_hashed(Queue::Defer));
        assert!(!l.is_hashed(Queue::Incoming));
        let id = QueueId::parse("B59DF9902ED").unwrap();
        assert_eq!(
            l.path_of(Queue::Deferred, &id),
            Path::new("/q/deferred/B/B59DF9902ED")
        );
        assert_eq!(
            l.path_of(Queue::Incoming, &id),
            Path::new("/q/incoming/B59DF9902ED")
        );
        let l = QueueLayout::new("/q", "incoming deferred", 2).unwrap();
        let long = QueueId::parse("4jZNQr5H5qz1SZKg").unwrap();
        // As Postfix 3.7 placed it: incoming/B/5/4jZNQr5H5qz1SZKg.
        assert_eq!(
            l.path_of(Queue::Incoming, &long),
            Path::new("/q/incoming/B/5/4jZNQr5H5qz1SZKg")
        );
        assert!(QueueLayout::new("/q", "deferred", 0).is_err());
        assert!(QueueLayout::new("/q", "deferred", 6).is_err());
        assert!(QueueLayout::new("/q", "deferred, nosuch", 1).is_err());
        assert!(QueueLayout::new("/q", "", 5).is_ok());
    }

    #[test]
    fn create_or_repair_creates_then_repairs_then_is_quiet() {
        let root = scratch("repair");
        let l = QueueLayout::new(&root, "deferred, defer", 1).unwrap();
        let ch = l.create_or_repair(&Ownership::CurrentUser).unwrap();
        assert_eq!(
            ch.iter()
                .filter(|c| matches!(c, Change::Created { .. }))
                .count(),
            1 + 11 + 4
        );
        assert_eq!(mode(&root), 0o755);
        assert_eq!(mode(&root.join("maildrop")), 0o730);
        assert_eq!(mode(&root.join("public")), 0o710);
        assert_eq!(mode(&root.join("pid")), 0o755);
        assert_eq!(mode(&root.join("incoming")), 0o700);
        assert!(l
            .create_or_repair(&Ownership::CurrentUser)
            .unwrap()
            .is_empty());
        fs::set_permissions(root.join("maildrop"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir(root.join("deferred/7")).unwrap();
        fs::set_permissions(root.join("deferred/7"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_dir(root.join("hold")).unwrap();
        let ch = l.create_or_repair(&Ownership::CurrentUser).unwrap();
        assert_eq!(
            ch,
            vec![
                Change::Mode {
                    path: root.join("maildrop"),
                    from: 0o777,
                    to: 0o730
                },
                Change::Mode {
                    path: root.join("deferred/7"),
                    from: 0o755,
                    to: 0o700
                },
                Change::Created {
                    path: root.join("hold"),
                    mode: 0o700
                },
            ]
        );
        assert_eq!(
            ch[0].to_string(),
            format!("{}: mode 0777 -> 0730", root.join("maildrop").display())
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn repair_never_follows_a_symlinked_hash_dir() {
        let root = scratch("symlink");
        let outside = scratch("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        let l = QueueLayout::new(&root, "deferred", 1).unwrap();
        l.create_or_repair(&Ownership::CurrentUser).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("deferred/8")).unwrap();
        assert!(l
            .create_or_repair(&Ownership::CurrentUser)
            .unwrap()
            .is_empty());
        assert_eq!(mode(&outside), 0o755);
        // A queue directory replaced by a symlink is an error, not followed.
        fs::remove_dir(root.join("hold")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("hold")).unwrap();
        assert!(l.create_or_repair(&Ownership::CurrentUser).is_err());
        assert_eq!(mode(&outside), 0o755);
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn system_ownership_when_root() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return; // needs root to chown; everything else is tested unprivileged
        }
        let root = scratch("owners");
        let l = QueueLayout::new(&root, "deferred", 1).unwrap();
        let sys = Ownership::System {
            mail_owner: 65534,
            setgid_group: 65533,
        };
        l.create_or_repair(&sys).unwrap();
        let owner = |p: &str| {
            let m = fs::metadata(root.join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner("").0, 0);
        assert_eq!(owner("incoming").0, 65534);
        assert_eq!(owner("maildrop"), (65534, 65533));
        assert_eq!(owner("public"), (65534, 65533));
        assert_eq!(owner("pid").0, 0);
        assert!(l.create_or_repair(&sys).unwrap().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn scan_finds_hashed_files_and_classifies_the_rest() {
        let root = scratch("scan");
        let l = QueueLayout::new(&root, "deferred", 2).unwrap();
        l.create_or_repair(&Ownership::CurrentUser).unwrap();
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(write(&l, Queue::Deferred));
        }
        for id in &ids {
            let p = l.path_of(Queue::Deferred, id);
            assert!(p.exists(), "{}", p.display());
            let rel = p.strip_prefix(l.dir(Queue::Deferred)).unwrap();
            assert_eq!(rel.components().count(), 3);
        }
        // A file left by an older depth is still found.
        let old = write(&l, Queue::Incoming);
        fs::rename(
            l.path_of(Queue::Incoming, &old),
            l.dir(Queue::Deferred).join(old.as_str()),
        )
        .unwrap();
        ids.push(old);
        // Debris.
        let d = l.dir(Queue::Deferred);
        fs::write(d.join("tmp.1.2"), b"x").unwrap();
        fs::write(d.join("ABCDEF1"), b"x").unwrap(); // no x bit
        fs::write(d.join("junk.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("ABCDEF2")).unwrap();
        let mut found: Vec<QueueId> = l.scan(Queue::Deferred).map(|r| r.unwrap().0).collect();
        found.sort();
        ids.sort();
        assert_eq!(found, ids);
        let all: Vec<Found> = l.scan_all(Queue::Deferred).map(|r| r.unwrap()).collect();
        assert_eq!(
            all.iter()
                .filter(|f| matches!(f, Found::Temporary { .. }))
                .count(),
            1
        );
        assert_eq!(
            all.iter()
                .filter(|f| matches!(f, Found::Incomplete { .. }))
                .count(),
            1
        );
        assert_eq!(
            all.iter()
                .filter(|f| matches!(f, Found::Other { .. }))
                .count(),
            2
        );
        assert_eq!(
            l.find(&ids[0], &[Queue::Incoming, Queue::Deferred])
                .unwrap()
                .0,
            Queue::Deferred
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn moves_between_queues_and_heals_double_links() {
        let root = scratch("move");
        let l = QueueLayout::new(&root, "deferred", 1).unwrap();
        l.create_or_repair(&Ownership::CurrentUser).unwrap();
        let id = write(&l, Queue::Incoming);
        let p = l
            .move_file(&id, Queue::Incoming, Queue::Active, false)
            .unwrap();
        assert_eq!(p, l.path_of(Queue::Active, &id));
        let p = l
            .move_file(&id, Queue::Active, Queue::Deferred, true)
            .unwrap();
        assert!(p.exists() && !l.path_of(Queue::Active, &id).exists());
        QueueFile::open(&p, Access::ReadOnly, &Limits::default()).unwrap();
        // A crash between link and unlink: same inode under two names.
        fs::hard_link(&p, l.path_of(Queue::Active, &id)).unwrap();
        l.move_file(&id, Queue::Active, Queue::Deferred, true)
            .unwrap();
        assert!(!l.path_of(Queue::Active, &id).exists() && p.exists());
        // A different file with the same name is never replaced.
        let other = write(&l, Queue::Incoming);
        fs::copy(
            l.path_of(Queue::Incoming, &other),
            l.path_of(Queue::Active, &id),
        )
        .unwrap();
        assert!(l
            .move_file(&id, Queue::Active, Queue::Deferred, false)
            .is_err());
        l.remove(Queue::Deferred, &id, true).unwrap();
        assert!(!p.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
