//! Queue file locks: how delivery agents and `postsuper` stay out of
//! each other's way, and the forced-expiry mark.
//!
//! A delivery agent holds a **shared** `flock` on the queue file from
//! before it reads the message until after it has written its done marks
//! ([`for_delivery`]). `postsuper` takes an **exclusive** lock before it
//! removes or renames a file ([`for_admin`]), so it never pulls a message
//! away in the middle of a delivery: it waits (bounded) for the deliveries
//! in progress to finish. After either lock is granted, the holder checks
//! that the path it opened still names the locked file ([`still_names`]);
//! a file that was moved or removed while the holder waited is "gone".
//!
//! An agent that finds the file gone delivers nothing and answers
//! "deferred" for its recipients; qmgr, seeing that `active/ID` no longer
//! names its file, forgets the message without logging or moving
//! anything (postsuper has taken care of it). qmgr keeps its own
//! descriptor on each active file, so the done marks it writes land on
//! the file wherever postsuper moved it: a message held and released
//! later is not delivered twice.
//!
//! Renames by qmgr itself (incoming → active → deferred) take no lock:
//! a rename is atomic, and whichever of qmgr and postsuper renames first
//! wins; the other gets `ENOENT` and looks again.
//!
//! Postfix locks its queue files for the same reasons (its agents take a
//! shared lock, cleanup an exclusive one); the protocol above is
//! Facteur's own.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Mode bit of a queue file whose message `postsuper -e`/`-f` expired:
/// qmgr returns it to the sender at its next delivery attempt, and mailq
/// marks it `#`. Postfix uses the same bit (group execute).
pub const FORCED_EXPIRE: u32 = 0o010;

/// Whether a queue file's mode carries the forced-expiry mark.
pub fn is_forced_expire(mode: u32) -> bool {
    mode & FORCED_EXPIRE != 0
}

/// Mode bit of a queue file whose sender was sent its delay warning
/// (`delay_warning_time`, group write): qmgr sets it once the bounce
/// service said the warning is safe in the queue, so a message is warned
/// about once, across passes and restarts. Postfix keeps the same fact
/// in a record it rewrites in place; Facteur's queue files change in
/// place only by done marks, and a mode bit, like the forced-expiry mark,
/// needs no room in the file and travels with it between queues. Only
/// the owner-execute bit (complete) means anything else to readers.
pub const DELAY_WARNED: u32 = 0o020;

/// Whether a queue file's mode says its delay warning was sent.
pub fn is_delay_warned(mode: u32) -> bool {
    mode & DELAY_WARNED != 0
}

/// Sets [`DELAY_WARNED`] on an open queue file and makes it durable
/// (`fsync`). A crash before the fsync returns may send the warning once
/// more; never fewer.
pub fn mark_delay_warned(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.mode() & 0o7777;
    if mode & DELAY_WARNED == 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode | DELAY_WARNED))?;
    }
    super::count_fsync();
    file.sync_all()
}

/// A queue file opened and locked; the lock goes with the value.
#[derive(Debug)]
pub struct Locked {
    file: File,
    writable: bool,
    /// The file's metadata as the lock was checked (after the lock was
    /// granted): the caller need not stat it again.
    meta: std::fs::Metadata,
}

impl Locked {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file is open for writing ([`for_marking`]).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The descriptor, still locked (the lock ends when it is closed),
    /// and its metadata.
    pub fn into_parts(self) -> (File, std::fs::Metadata) {
        (self.file, self.meta)
    }
}

/// What [`for_admin`] found.
#[derive(Debug)]
pub enum AdminLock {
    /// Locked, and the path still names the file.
    Held(Locked),
    /// The path names nothing any more (moved or removed meanwhile).
    Gone,
    /// Deliveries kept the file locked past the wait.
    Busy,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `path` still names the file open as `file` (same device and
/// inode, and the file not unlinked).
pub fn still_names(path: &Path, file: &File) -> io::Result<bool> {
    names(path, &file.metadata()?)
}

/// [`still_names`] with the open file's metadata at hand.
fn names(path: &Path, mine: &std::fs::Metadata) -> io::Result<bool> {
    if mine.nlink() == 0 {
        return Ok(false);
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == mine.dev() && m.ino() == mine.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`still_names`] for a file held open whose device and inode are known
/// (`QueueFile::dev_ino`): one stat instead of two. An inode number is
/// not reused while a descriptor keeps the inode alive, so a path naming
/// (dev, ino) names that very file, and the file is still linked.
pub fn still_names_inode(path: &Path, dev: u64, ino: u64) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == dev && m.ino() == ino),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The shared lock a delivery agent holds while it delivers from `path`
/// and marks recipients done. `Ok(None)`: the file is gone (postsuper
/// moved or removed it); deliver nothing. Waits for an exclusive holder,
/// which keeps its lock only for a rename or an unlink.
pub fn for_delivery(path: &Path) -> io::Result<Option<Locked>> {
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    locked(path, file, false)
}

/// [`for_delivery`], opened for reading and writing when allowed, so the
/// agent writes its done marks through the locked descriptor instead of
/// opening the file again ([`Locked::writable`] says which it got).
pub fn for_marking(path: &Path) -> io::Result<Option<Locked>> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return for_delivery(path),
    };
    locked(path, file, true)
}

fn locked(path: &Path, file: File, writable: bool) -> io::Result<Option<Locked>> {
    flock(&file, libc::LOCK_SH)?;
    let meta = file.metadata()?;
    if !names(path, &meta)? {
        return Ok(None);
    }
    Ok(Some(Locked {
        file,
        writable,
        meta,
    }))
}

/// The exclusive lock postsuper takes before it moves or removes the
/// file at `path`, waiting up to `wait` for deliveries in progress.
pub fn for_admin(path: &Path, wait: Duration) -> io::Result<AdminLock> {
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AdminLock::Gone),
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Ok(AdminLock::Busy);
                }
                // Shared holders come and go; poll rather than queue
                // behind them (flock has no fairness), backing off.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    let meta = file.metadata()?;
    if !names(path, &meta)? {
        return Ok(AdminLock::Gone);
    }
    Ok(AdminLock::Held(Locked {
        file,
        writable: false,
        meta,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_warned_mark_keeps_the_other_bits() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("warned");
        let p = d.join("F00");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700 | FORCED_EXPIRE))
            .unwrap();
        let f = File::open(&p).unwrap();
        assert!(!is_delay_warned(f.metadata().unwrap().mode()));
        mark_delay_warned(&f).unwrap();
        mark_delay_warned(&f).unwrap();
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700 | FORCED_EXPIRE | DELAY_WARNED);
        assert!(is_delay_warned(mode) && is_forced_expire(mode));
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("facteur-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn admin_waits_for_delivery_and_sees_moves() {
        let d = scratch("wait");
        let p = d.join("F");
        std::fs::write(&p, "x").unwrap();
        let agent = for_delivery(&p).unwrap().expect("present");
        // A delivery in progress keeps postsuper out.
        assert!(matches!(
            for_admin(&p, Duration::from_millis(20)).unwrap(),
            AdminLock::Busy
        ));
        drop(agent);
        let held = match for_admin(&p, Duration::from_secs(5)).unwrap() {
            AdminLock::Held(h) => h,
            other => panic!("{other:?}"),
        };
        // An agent arriving now waits; once postsuper moved the file it
        // finds it gone.
        let p2 = p.clone();
        let t = std::thread::spawn(move || for_delivery(&p2).unwrap().is_none());
        std::thread::sleep(Duration::from_millis(20));
        std::fs::rename(&p, d.join("G")).unwrap();
        drop(held);
        assert!(t.join().unwrap(), "the agent must see the file gone");
        assert!(matches!(
            for_admin(&p, Duration::from_millis(1)).unwrap(),
            AdminLock::Gone
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unlinked_file_is_not_named() {
        let d = scratch("unlink");
        let p = d.join("F");
        std::fs::write(&p, "x").unwrap();
        let f = File::open(&p).unwrap();
        assert!(still_names(&p, &f).unwrap());
        std::fs::remove_file(&p).unwrap();
        assert!(!still_names(&p, &f).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_known_inode_is_named_until_moved_or_replaced() {
        let d = scratch("inode");
        let p = d.join("F");
        std::fs::write(&p, "x").unwrap();
        let f = File::open(&p).unwrap();
        let m = f.metadata().unwrap();
        assert!(still_names_inode(&p, m.dev(), m.ino()).unwrap());
        std::fs::rename(&p, d.join("G")).unwrap();
        assert!(!still_names_inode(&p, m.dev(), m.ino()).unwrap());
        // Another file under the old name is not ours.
        std::fs::write(&p, "y").unwrap();
        assert!(!still_names_inode(&p, m.dev(), m.ino()).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn marking_lock_is_writable_and_shared() {
        use std::os::unix::fs::FileExt;
        let d = scratch("marking");
        let p = d.join("F");
        std::fs::write(&p, "R").unwrap();
        let a = for_marking(&p).unwrap().expect("present");
        let b = for_marking(&p).unwrap().expect("shared");
        assert!(a.writable() && b.writable());
        assert!(matches!(
            for_admin(&p, Duration::from_millis(20)).unwrap(),
            AdminLock::Busy
        ));
        let (file, meta) = a.into_parts();
        assert_eq!(meta.len(), 1);
        file.write_all_at(b"D", 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"D");
        drop((file, b));
        assert!(matches!(
            for_admin(&p, Duration::from_secs(5)).unwrap(),
            AdminLock::Held(_)
        ));
        assert!(for_marking(&d.join("none")).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
