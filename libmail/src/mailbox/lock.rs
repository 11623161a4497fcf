//! Mailbox locks, as `mailbox_delivery_lock` names them: `fcntl` (POSIX
//! record lock on the whole file), `flock` (BSD lock), `dotlock`
//! (`FILE.lock` created with `O_EXCL`, the one lock every mail reader
//! since the 1980s honours, even over NFS).
//!
//! Every attempt is bounded: `attempts` tries `delay` apart
//! (`deliver_lock_attempts`, `deliver_lock_delay`); a dot-lock older than
//! `stale` (`stale_lock_time`) was left by a dead writer and is removed.
//! A lock that cannot be had is a temporary failure: the caller defers.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Which locks to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockKinds {
    pub fcntl: bool,
    pub flock: bool,
    pub dotlock: bool,
}

impl LockKinds {
    /// From a `mailbox_delivery_lock` value (`fcntl, dotlock`); unknown
    /// names are returned as errors.
    pub fn parse(value: &str) -> Result<LockKinds, String> {
        let mut k = LockKinds::default();
        for w in value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            match w {
                "fcntl" => k.fcntl = true,
                "flock" => k.flock = true,
                "dotlock" => k.dotlock = true,
                other => return Err(format!("unknown mailbox lock type: {other}")),
            }
        }
        Ok(k)
    }
}

impl std::default::Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            kinds: LockKinds {
                fcntl: true,
                flock: false,
                dotlock: true,
            },
            attempts: 20,
            delay: Duration::from_secs(1),
            stale: Duration::from_secs(500),
        }
    }
}

/// Locks and how hard to try for them.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    pub kinds: LockKinds,
    pub attempts: u32,
    pub delay: Duration,
    pub stale: Duration,
}

/// A held dot-lock; removed on drop.
#[derive(Debug)]
pub struct DotLock {
    path: PathBuf,
}

impl DotLock {
    /// Creates `PATH.lock` exclusively; removes a stale one; retries.
    pub fn acquire(mailbox: &Path, policy: &LockPolicy) -> io::Result<DotLock> {
        let mut name = mailbox.as_os_str().to_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let attempts = policy.attempts.max(1);
        for i in 0..attempts {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(_) => return Ok(DotLock { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::symlink_metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > policy.stale);
                    if stale {
                        crate::warning!("{}: removing stale lock file", path.display());
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "unable to create lock file {}: {}",
                            path.display(),
                            super::strerror(&e)
                        ),
                    ))
                }
            }
            if i + 1 < attempts {
                std::thread::sleep(policy.delay);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("unable to lock {}: lock file exists", mailbox.display()),
        ))
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the kernel locks (`fcntl`, `flock`) of `policy` on `file`,
/// retrying; they go away when the file is closed.
pub fn lock_file(file: &File, what: &Path, policy: &LockPolicy) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let attempts = policy.attempts.max(1);
    let try_once = || -> io::Result<bool> {
        if policy.kinds.fcntl {
            // SAFETY: a zeroed flock struct is valid; fields set below.
            let mut fl: libc::flock = unsafe { std::mem::zeroed() };
            fl.l_type = libc::F_WRLCK as _;
            fl.l_whence = libc::SEEK_SET as _;
            // SAFETY: fcntl on an open descriptor with a valid struct.
            if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
                    _ => Err(e),
                };
            }
        }
        if policy.kinds.flock {
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => Ok(false),
                    _ => Err(e),
                };
            }
        }
        Ok(true)
    };
    for i in 0..attempts {
        match try_once() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("unable to lock {}: {}", what.display(), super::strerror(&e)),
                ))
            }
        }
        if i + 1 < attempts {
            std::thread::sleep(policy.delay);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "unable to lock {}: Resource temporarily unavailable",
            what.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_kinds_parse() {
        let k = LockKinds::parse("fcntl, dotlock").unwrap();
        assert!(k.fcntl && k.dotlock && !k.flock);
        assert!(LockKinds::parse("fcntl, bogus").is_err());
    }

    #[test]
    fn dotlock_is_exclusive_and_stale_ones_go() {
        let dir = std::env::temp_dir().join(format!("facteur-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mbox = dir.join("mbox");
        let quick = LockPolicy {
            attempts: 2,
            delay: Duration::from_millis(1),
            stale: Duration::from_secs(500),
            ..LockPolicy::default()
        };
        let l = DotLock::acquire(&mbox, &quick).unwrap();
        assert!(dir.join("mbox.lock").exists());
        assert!(DotLock::acquire(&mbox, &quick).is_err());
        drop(l);
        assert!(!dir.join("mbox.lock").exists());
        // A stale lock is removed.
        let f = File::create(dir.join("mbox.lock")).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(1000))
            .unwrap();
        drop(f);
        let l = DotLock::acquire(&mbox, &quick).unwrap();
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
