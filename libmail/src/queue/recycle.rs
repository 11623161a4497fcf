//! Recycled queue files: the inodes of delivered messages, emptied and
//! kept in `recycle/` for cleanup's next messages.
//!
//! Every message costs the file system an inode allocated by cleanup and
//! freed by qmgr. Allocation is not cheap where it matters most: on ext4
//! without a journal (this project's test machines, and many small VMs),
//! the allocator skips every inode freed in the last minute or more, and
//! reads each one's table entry to know it, so under a steady flow of mail
//! each new file costs a scan as long as the recent traffic (measured:
//! about a fifth of all CPU in the relay benchmark went there). Reusing
//! the inode skips allocation and freeing on every file system.
//!
//! The life of a recycled file:
//!
//! ```text
//!  qmgr main loop  rename active/ID -> recycle/iINODE (mode 0700)     "removed" (gone from the queue)
//!  qmgr reaper     flock(EX); zeros over the content (ftruncate 0     (or unlink: pool full, or
//!                  past 64 KiB); fchmod 0600: claimable               the lock not had in 1 s)
//!  cleanup         lstat: 0600?; ID := (now, INODE);                  as if just created and
//!                  rename recycle/iINODE -> incoming/ID; open          named (one rename)
//! ```
//!
//! * Only an emptied file is ever claimable: a pool file is claimable
//!   when its mode is 0600, and the reaper sets that mode last, after the
//!   content was overwritten with zeros (or truncated); a finished
//!   message's file comes with mode 0700. So cleanup never sees an old
//!   message's bytes, and no delivered content stays in the pool. The
//!   name (`i` and the inode number in hex) is given once, by qmgr's
//!   rename out of the queue: emptying renames nothing.
//! * A small file keeps its length and its blocks: the next message is
//!   written over them and the writer cuts the file to its own length at
//!   the end. Freeing the blocks (truncation) and allocating new ones cost
//!   more than the zeros: with `discard` the freeing sends the disk a trim
//!   per message, and the next message's fsync had to write the block
//!   bitmap and group descriptor its allocation dirtied. The zeros are
//!   written to the page cache only; the next message's bytes usually
//!   replace them before any writeback.
//! * The pool name carries the inode number because a queue ID is made
//!   from it: cleanup renames a pool file straight to its new ID, and
//!   checks after opening it that the inode is the one the name said
//!   (else the file is removed: a name nobody but the reaper gives).
//! * The reaper empties the file only under an exclusive lock: a
//!   delivery agent that answered but has not closed the file yet, or a
//!   postsuper at work on it, finishes first. postsuper, which locks
//!   before it touches a queue file and then checks that the path still
//!   names it, finds the message gone.
//! * cleanup checks the mode before it renames (an `lstat`), and again
//!   on the file it opened: a file retired again between the two (taken
//!   by another cleanup, written, delivered and retired within that
//!   moment) is not emptied, and is removed instead of written to.
//! * A crash leaves at worst a pool file of mode 0700 (not claimable,
//!   possibly with content): qmgr removes those, and any name that is not
//!   a pool name, when it starts ([`clean`]).
//! * The pool holds at most [`POOL_LIMIT`] files; beyond that the reaper
//!   unlinks as before. A missing `recycle/` directory (a queue made by an
//!   older version) just means no recycling.
//!
//! Queue IDs stay unique: an ID is made of the creation time and the
//! inode number, and an inode is only reused after its previous message
//! has left the queue (Postfix's IDs repeat across inode reuse the same
//! way).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::file::rename_noreplace;
use super::QueueLayout;

/// The pool's directory under `queue_directory`.
pub const DIR: &str = "recycle";

/// Most files kept in the pool.
pub const POOL_LIMIT: usize = 1024;

/// Names read from the pool at most per directory read.
const READ_AHEAD: usize = 256;

/// After a read of the pool found nothing, new files are created for
/// this long before the pool is read again.
const EMPTY_BACKOFF: Duration = Duration::from_millis(100);

struct Cache {
    /// The pool the names were read from (a process normally has one).
    dir: Option<PathBuf>,
    names: Vec<std::ffi::OsString>,
    next_read: Option<Instant>,
}

/// This process's view of the pool, shared by its threads so that they
/// do not race each other for the same names.
static CACHE: Mutex<Cache> = Mutex::new(Cache {
    dir: None,
    names: Vec::new(),
    next_read: None,
});

fn pool_dir(layout: &QueueLayout) -> PathBuf {
    layout.root().join(DIR)
}

/// The next name to try, reading the pool again when this process has
/// used what it read (not more often than [`EMPTY_BACKOFF`] while the
/// pool is empty).
fn next_name(dir: &Path) -> Option<std::ffi::OsString> {
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if c.dir.as_deref() != Some(dir) {
        *c = Cache {
            dir: Some(dir.to_path_buf()),
            names: Vec::new(),
            next_read: None,
        };
    }
    if let Some(n) = c.names.pop() {
        return Some(n);
    }
    let now = Instant::now();
    if c.next_read.is_some_and(|t| now < t) {
        return None;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        c.names.extend(
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name())
                .filter(|n| claimable(n))
                .take(READ_AHEAD),
        );
    }
    c.next_read = c.names.is_empty().then_some(now + EMPTY_BACKOFF);
    c.names.pop()
}

/// The pool name of an emptied file: `i` and its inode number in hex.
fn pool_name(ino: u64) -> String {
    format!("i{ino:x}")
}

/// The inode number a pool name gives, `None` for any other name.
/// Only such names are claimed.
fn pool_inode(name: &std::ffi::OsStr) -> Option<u64> {
    let hex = name.to_str()?.strip_prefix('i')?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn claimable(name: &std::ffi::OsStr) -> bool {
    pool_inode(name).is_some()
}

/// A file taken from the pool.
pub(crate) struct Claimed<T> {
    /// Open for writing, mode 0600, at offset 0.
    pub file: File,
    /// Its length: zeros (or, after a power loss, possibly an old
    /// message's bytes) that the new content overwrites; the writer cuts
    /// the file to its own length at the end.
    pub len: u64,
    pub path: PathBuf,
    /// What `target` gave with the path.
    pub extra: T,
}

/// Takes an emptied file from the pool and gives it the path `target`
/// makes of its inode number (its new queue ID's, in a queue directory),
/// as if it had just been created under that name, but for its length
/// (see [`Claimed`]). `None`: the pool had nothing usable; create a file
/// instead.
pub(crate) fn claim<T>(
    layout: &QueueLayout,
    mut target: impl FnMut(u64) -> (PathBuf, T),
) -> Option<Claimed<T>> {
    let dir = pool_dir(layout);
    for _ in 0..16 {
        let name = next_name(&dir)?;
        let Some(ino) = pool_inode(&name) else {
            continue;
        };
        // Not emptied yet (the reaper at work), or not a file: passed
        // over (seen again at the next read of the pool).
        if !fs::symlink_metadata(dir.join(&name)).is_ok_and(|m| emptied(&m)) {
            continue;
        }
        let (to, extra) = target(ino);
        match rename_noreplace(&dir.join(&name), &to) {
            Ok(()) => {}
            // Another process took it first; or a foreign file has the
            // new name (the next pool file gives another inode, so
            // another name).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                ) =>
            {
                continue
            }
            Err(_) => return None,
        }
        match fit(&to, ino) {
            Some((file, len)) => {
                return Some(Claimed {
                    file,
                    len,
                    path: to,
                    extra,
                })
            }
            None => {
                let _ = fs::remove_file(&to);
            }
        }
    }
    None
}

/// Whether a pool file's metadata say the reaper emptied it: a regular
/// file of mode 0600 (a finished message's file has 0700).
fn emptied(m: &fs::Metadata) -> bool {
    m.is_file() && m.mode() & 0o7777 == 0o600
}

/// Opens a claimed file and checks it is what the reaper leaves: an
/// emptied file (see [`emptied`]) of this user with one link and the
/// inode its pool name gave; returns it with its length.
fn fit(path: &Path, ino: u64) -> Option<(File, u64)> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !emptied(&m) || m.nlink() != 1 || m.uid() != me || m.ino() != ino {
        return None;
    }
    Some((f, m.len()))
}

/// What [`retire`] did with a finished message's file.
#[derive(Debug)]
pub enum Retired {
    /// Out of the queue, in the pool under its pool name but not
    /// claimable yet (mode 0700): hand the file (still open) and this
    /// path to [`Reaper::reap`].
    Pending(PathBuf),
    /// Unlinked, as without recycling (no pool directory).
    Removed,
}

/// Takes a finished message's file, of inode `ino`, out of its queue
/// (qmgr's removal of `path`): into the pool when there is one, else
/// unlinked. An error is the unlink's (`NotFound`: postsuper took the
/// file first).
pub fn retire(layout: &QueueLayout, path: &Path, ino: u64) -> io::Result<Retired> {
    let to = pool_dir(layout).join(pool_name(ino));
    match rename_noreplace(path, &to) {
        Ok(()) => return Ok(Retired::Pending(to)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && to.parent().is_some_and(Path::is_dir) => {
            return Err(e)
        }
        Err(_) => {}
    }
    fs::remove_file(path)?;
    Ok(Retired::Removed)
}

/// Largest file emptied by overwriting it with zeros (keeping its
/// blocks); a larger one is truncated.
const ZERO_FILL_MAX: u64 = 64 * 1024;

/// Overwrites the content of a retired file of `len` bytes with zeros,
/// or truncates it when it is larger than [`ZERO_FILL_MAX`].
fn empty(file: &File, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    static ZEROS: [u8; 8192] = [0; 8192];
    if len > ZERO_FILL_MAX {
        return file.set_len(0).is_ok();
    }
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZEROS.len() as u64) as usize;
        if file.write_all_at(&ZEROS[..n], at).is_err() {
            return false;
        }
        at += n as u64;
    }
    true
}

/// How long the reaper waits for the lock of a file it empties.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// An exclusive lock on `file`, waited for at most [`LOCK_WAIT`] (a
/// holder keeps a finished file's lock for moments only; one that keeps
/// it longer gets the file unlinked instead of emptied).
fn lock_exclusive(file: &File) -> bool {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
            || Instant::now() >= deadline
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The second half of retiring, off the caller's main loop (freeing the
/// blocks of a truncated file can wait for the disk): empties the file and
/// makes it claimable, or unlinks it when the pool is full.
pub struct Reaper {
    dir: PathBuf,
    /// Files in the pool at the last count plus those added since.
    estimate: usize,
    /// Files reaped since the last count.
    reaped: usize,
}

impl Reaper {
    pub fn new(layout: &QueueLayout) -> Reaper {
        let dir = pool_dir(layout);
        let estimate = count(&dir);
        Reaper {
            dir,
            estimate,
            reaped: 0,
        }
    }

    /// Finishes retiring `file`, now at `retiring` ([`Retired::Pending`]):
    /// empties it, then gives it mode 0600, which makes it claimable.
    pub fn reap(&mut self, file: &File, retiring: &Path) {
        // Cleanup takes files without telling: count again now and then
        // (a full pool is read once per READ_AHEAD files, not each time).
        self.reaped += 1;
        if self.reaped >= READ_AHEAD {
            self.estimate = count(&self.dir);
            self.reaped = 0;
        }
        // (The descriptor is qmgr's, open for writing; a file that cannot
        // be emptied is unlinked.)
        let emptied = self.estimate < POOL_LIMIT
            && lock_exclusive(file)
            && file.metadata().is_ok_and(|m| empty(file, m.len()))
            && file
                .set_permissions(fs::Permissions::from_mode(0o600))
                .is_ok();
        if emptied {
            self.estimate += 1;
            return;
        }
        // (Not claimable: nobody took it meanwhile.)
        let _ = fs::remove_file(retiring);
    }
}

/// Files in the pool (a directory that cannot be read counts as full).
fn count(dir: &Path) -> usize {
    match fs::read_dir(dir) {
        Ok(rd) => rd.take(POOL_LIMIT + 1).count(),
        Err(_) => POOL_LIMIT,
    }
}

/// Removes what a crash left half retired (a pool file not emptied:
/// not of mode 0600, and it may still hold a delivered message's bytes)
/// and whatever is not a pool name (an older version's pool, whose
/// retiring files were named `ID.x`). qmgr calls it at start, before any
/// retiring of its own.
pub fn clean(layout: &QueueLayout) {
    let dir = pool_dir(layout);
    let Ok(rd) = fs::read_dir(&dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let n = e.file_name();
        let path = dir.join(&n);
        let keep = claimable(&n) && fs::symlink_metadata(&path).is_ok_and(|m| emptied(&m));
        if !keep {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dirs::Ownership;
    use crate::queue::{Access, IdStyle, Limits, Queue, QueueFile, Writer};

    struct Scratch(QueueLayout);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0.root());
        }
    }

    fn layout(name: &str) -> Scratch {
        let root =
            std::env::temp_dir().join(format!("facteur-recycle-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let l = QueueLayout::new(&root, "deferred, defer", 1).unwrap();
        l.create_or_repair(&Ownership::CurrentUser).unwrap();
        Scratch(l)
    }

    /// Writes a one-recipient message to incoming/ and returns its path.
    fn message(l: &QueueLayout, body: &[u8]) -> PathBuf {
        let mut w = Writer::create(l, Queue::Incoming, IdStyle::Short).unwrap();
        w.sender("alice@example.org").unwrap();
        w.recipient(&crate::queue::NewRecipient::new("bob@example.org"))
            .unwrap();
        w.start_content().unwrap();
        w.content_line(body).unwrap();
        w.finish().unwrap().sync().unwrap().path().to_path_buf()
    }

    fn pool_names(l: &QueueLayout) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(l.root().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_retired_file_is_emptied_then_reused_by_the_next_message() {
        let s = layout("reuse");
        let l = &s.0;
        let path = message(l, b"a secret that must not survive");
        let ino = fs::metadata(&path).unwrap().ino();
        let qf = QueueFile::open(&path, Access::ReadWrite, &Limits::default()).unwrap();
        let id = qf.id().unwrap().to_string();

        // Main loop: out of the queue, under its pool name, but not
        // claimable yet (mode 0700, the content still there).
        let Retired::Pending(retiring) = retire(l, &path, ino).unwrap() else {
            panic!("not recycled");
        };
        assert!(!path.exists());
        assert_eq!(pool_names(l), vec![format!("i{ino:x}")]);
        assert_eq!(fs::metadata(&retiring).unwrap().mode() & 0o7777, 0o700);
        // (The pool is read again now, not after the empty read's pause.)
        CACHE.lock().unwrap().next_read = None;
        assert!(claim(l, |_| (l.root().join("incoming/T1"), ())).is_none());
        assert!(retiring.exists() && !l.root().join("incoming/T1").exists());

        // Reaper: zeros over the content (the length and the blocks
        // stay), then mode 0600: claimable, the name unchanged.
        let len = fs::metadata(&retiring).unwrap().len();
        let mut r = Reaper::new(l);
        r.reap(qf.file(), &retiring);
        drop(qf);
        assert_eq!(pool_names(l), vec![format!("i{ino:x}")]);
        let pooled = l.root().join(DIR).join(pool_name(ino));
        let m = fs::metadata(&pooled).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (len, 0o600));
        assert!(fs::read(&pooled).unwrap().iter().all(|&b| b == 0));

        // The next message gets the same inode, and a new ID; shorter, it
        // leaves nothing of the old length behind.
        CACHE.lock().unwrap().next_read = None;
        let next = message(l, b"the next");
        assert_eq!(fs::metadata(&next).unwrap().ino(), ino);
        assert!(pool_names(l).is_empty());
        assert!(fs::metadata(&next).unwrap().len() < len);
        assert_eq!(content_of(&next), b"the next");
        let q2 = QueueFile::open(&next, Access::ReadOnly, &Limits::default()).unwrap();
        assert_ne!(q2.id().unwrap().to_string(), id);

        // Longer than the file it reuses: written past the old end.
        let q2 = QueueFile::open(&next, Access::ReadWrite, &Limits::default()).unwrap();
        let Retired::Pending(retiring) = retire(l, &next, ino).unwrap() else {
            panic!("not recycled");
        };
        r.reap(q2.file(), &retiring);
        drop(q2);
        CACHE.lock().unwrap().next_read = None;
        let long = vec![b'y'; 3000];
        let third = message(l, &long);
        assert_eq!(fs::metadata(&third).unwrap().ino(), ino);
        assert_eq!(content_of(&third), long);
    }

    /// The content of a complete queue file, after checking its CRC.
    fn content_of(path: &Path) -> Vec<u8> {
        let q = QueueFile::open(path, Access::ReadOnly, &Limits::default()).unwrap();
        q.verify().unwrap();
        let mut content = Vec::new();
        let mut reader = q.content();
        while let Some((piece, _)) = reader.next_piece().unwrap() {
            content.extend_from_slice(piece);
        }
        content
    }

    #[test]
    fn a_large_retired_file_is_truncated() {
        let s = layout("large");
        let l = &s.0;
        let path = message(l, &vec![b'z'; 900]);
        let qf = QueueFile::open(&path, Access::ReadWrite, &Limits::default()).unwrap();
        // Past the zero-fill size (a bigger message in effect).
        qf.file().set_len(ZERO_FILL_MAX + 1).unwrap();
        let ino = qf.file().metadata().unwrap().ino();
        let Retired::Pending(retiring) = retire(l, &path, ino).unwrap() else {
            panic!("not recycled");
        };
        Reaper::new(l).reap(qf.file(), &retiring);
        let m = fs::metadata(l.root().join(DIR).join(pool_name(ino))).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o600));
    }

    #[test]
    fn a_file_kept_locked_is_unlinked_and_a_missing_pool_means_unlink() {
        let s = layout("locked");
        let l = &s.0;
        let path = message(l, b"x");
        let qf = QueueFile::open(&path, Access::ReadWrite, &Limits::default()).unwrap();
        let ino = qf.file().metadata().unwrap().ino();
        // A reader that keeps its shared lock past the wait.
        let other = File::open(&path).unwrap();
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_SH) }, 0);
        let Retired::Pending(retiring) = retire(l, &path, ino).unwrap() else {
            panic!("not recycled");
        };
        Reaper::new(l).reap(qf.file(), &retiring);
        assert!(!path.exists() && pool_names(l).is_empty());
        // Not emptied under the reader's feet.
        assert!(other.metadata().unwrap().len() > 0);

        let path = message(l, b"y");
        fs::remove_dir(l.root().join(DIR)).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        assert!(matches!(retire(l, &path, ino).unwrap(), Retired::Removed));
        assert!(!path.exists());
        // Gone already (postsuper took it): the unlink's error.
        let e = retire(l, &path, ino).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_full_pool_unlinks_and_crash_debris_is_cleaned() {
        let s = layout("full");
        let l = &s.0;
        let dir = l.root().join(DIR);
        let path = message(l, b"z");
        for i in 0..POOL_LIMIT {
            emptied_file(&dir.join(pool_name(1 << 40 | i as u64)), b"");
        }
        let qf = QueueFile::open(&path, Access::ReadWrite, &Limits::default()).unwrap();
        let ino = qf.file().metadata().unwrap().ino();
        let mut r = Reaper::new(l);
        let Retired::Pending(retiring) = retire(l, &path, ino).unwrap() else {
            panic!("not recycled");
        };
        r.reap(qf.file(), &retiring);
        assert!(!retiring.exists() && !dir.join(pool_name(ino)).exists());
        assert_eq!(pool_names(l).len(), POOL_LIMIT);

        // A crash's half-retired file (a pool name, mode 0700, content),
        // an older version's retiring name and pool name go; the emptied
        // pool files stay.
        let half = dir.join(pool_name(1 << 41));
        fs::write(&half, b"half retired").unwrap();
        fs::set_permissions(&half, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("ABCDE.x"), b"half retired").unwrap();
        emptied_file(&dir.join("3E13898EBDB"), b"");
        clean(l);
        assert!(!half.exists());
        assert!(!dir.join("ABCDE.x").exists() && !dir.join("3E13898EBDB").exists());
        assert_eq!(pool_names(l).len(), POOL_LIMIT);
    }

    /// A file of mode 0600 with `content`, as the reaper leaves one.
    fn emptied_file(path: &Path, content: &[u8]) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn claim_refuses_what_the_reaper_cannot_have_left() {
        let s = layout("foreign");
        let l = &s.0;
        let dir = l.root().join(DIR);
        let ino_of = |p: &Path| fs::metadata(p).unwrap().ino();
        // A directory, or a file not emptied (not of mode 0600), is not
        // even taken; a file with a second link, or under the name of
        // another inode, is taken out of the pool but never written to.
        fs::create_dir(dir.join("i1")).unwrap();
        let full = l.root().join("full");
        fs::write(&full, b"a delivered message").unwrap();
        fs::set_permissions(&full, fs::Permissions::from_mode(0o700)).unwrap();
        let full_name = dir.join(pool_name(ino_of(&full)));
        fs::rename(&full, &full_name).unwrap();
        let linked = l.root().join("elsewhere");
        emptied_file(&linked, b"linked");
        fs::hard_link(&linked, dir.join(pool_name(ino_of(&linked)))).unwrap();
        let misnamed = dir.join("misnamed");
        emptied_file(&misnamed, b"");
        let wrong = ino_of(&misnamed) + (1 << 40);
        fs::rename(&misnamed, dir.join(pool_name(wrong))).unwrap();
        let mut tried = Vec::new();
        let to = |ino: u64| (l.root().join(format!("incoming/T{ino:x}")), ino);
        assert!(claim(l, |ino| {
            tried.push(ino);
            to(ino)
        })
        .is_none());
        tried.sort();
        assert_eq!(tried, vec![ino_of(&linked), wrong]);
        assert!(dir.join("i1").is_dir());
        assert_eq!(fs::read(&full_name).unwrap(), b"a delivered message");
        assert!(fs::read_dir(l.root().join("incoming"))
            .unwrap()
            .next()
            .is_none());
        assert_eq!(fs::read(&linked).unwrap(), b"linked");
        // A pool file is named after its inode; its length is told (the
        // writer overwrites it and cuts the rest).
        let old = l.root().join("old");
        emptied_file(&old, b"000");
        let ino = ino_of(&old);
        fs::rename(&old, dir.join(pool_name(ino))).unwrap();
        CACHE.lock().unwrap().next_read = None;
        let c = claim(l, to).unwrap();
        assert_eq!((c.path, c.extra, c.len), (to(ino).0, ino, 3));
        let m = c.file.metadata().unwrap();
        assert_eq!((m.mode() & 0o7777, m.ino()), (0o600, ino));
    }
}
