//! mbox delivery: append one message to a UNIX mailbox file (also what
//! local(8) does for `/file/name` destinations).
//!
//! ```text
//! From SENDER Thu Jan  1 00:00:00 1970      (asctime; MAILER-DAEMON for the null sender)
//! PREFIX                                    (Return-Path:, X-Original-To:, Delivered-To:)
//! message, lines starting "From " written ">From "
//! (empty line)
//! ```
//!
//! Order of operations, each bounded: dot-lock (`FILE.lock`), open with
//! `O_APPEND | O_NOFOLLOW` (created 0600 when missing), kernel lock
//! (`fcntl` / `flock`), note the size, write, fsync. On any error after
//! the size was noted the file is truncated back to it, so a reader never
//! sees a partial message. `size_limit` (`mailbox_size_limit`) bounds
//! the size of the whole file, as Postfix's RLIMIT_FSIZE does: growing
//! past it fails with "File too large" (`5.2.2`, a bounce).
//!
//! When the agent runs as root it may open and lock the file with root's
//! rights (a spool directory like `/var/mail` is writable by root and
//! group `mail` only) and write with the recipient's: [`MboxOptions::owner`]
//! and [`MboxOptions::write_as_owner`]. Switching the effective IDs is
//! process-wide, so that option is only for a forked child.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::lock::{lock_file, DotLock, LockPolicy};
use super::{copy_failure, copy_message, strerror, CopyOptions, Limited, MailboxError, Source};

/// What an mbox delivery needs besides the message.
#[derive(Debug, Clone, Default)]
pub struct MboxOptions {
    /// Largest file size (0 = no limit).
    pub size_limit: u64,
    pub lock: LockPolicy,
    /// The user (uid, gid) the file must belong to; a file created here
    /// is given to them. `None`: no ownership checks (unprivileged mode).
    pub owner: Option<(u32, u32)>,
    /// Write with `owner`'s effective IDs (open and lock stay root's).
    /// Only in a single-threaded (forked) process running as root.
    pub write_as_owner: bool,
    /// Accept a character device (`/dev/null`) as the destination: no
    /// lock, no size check, no truncation.
    pub allow_devices: bool,
}

/// The `From ` line's date: asctime(3) in local time, without the newline.
pub fn asctime_now() -> String {
    crate::date::asctime(crate::date::now())
}

/// The `From SENDER DATE` line (with its newline). The sender is cut at
/// whitespace and control characters so it stays one word.
pub fn from_line(sender: &str) -> String {
    let s: String = if sender.is_empty() {
        "MAILER-DAEMON".into()
    } else {
        sender
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .take(1024)
            .collect()
    };
    format!("From {s} {}\n", asctime_now())
}

fn fail(e: &io::Error, text: String) -> MailboxError {
    MailboxError::io(e, "4.2.0", text)
}

fn open(path: &Path, opts: &MboxOptions) -> Result<File, MailboxError> {
    let mut o = OpenOptions::new();
    o.append(true).custom_flags(libc::O_NOFOLLOW);
    let created;
    let file = match o.clone().create_new(true).mode(0o600).open(path) {
        Ok(f) => {
            created = true;
            f
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            created = false;
            o.open(path)
                .map_err(|e| fail(&e, format!("cannot open file: {}", strerror(&e))))?
        }
        Err(e) => return Err(fail(&e, format!("cannot create file: {}", strerror(&e)))),
    };
    let meta = file
        .metadata()
        .map_err(|e| fail(&e, format!("cannot stat file: {}", strerror(&e))))?;
    let ft = meta.mode() & libc::S_IFMT;
    if ft == libc::S_IFCHR && opts.allow_devices {
        return Ok(file);
    }
    if ft != libc::S_IFREG {
        return Err(MailboxError::new(
            "5.2.0",
            format!("destination {} is not a regular file", path.display()),
        ));
    }
    if meta.nlink() != 1 {
        return Err(MailboxError::new(
            "4.2.0",
            format!(
                "destination {} has {} hard links",
                path.display(),
                meta.nlink()
            ),
        ));
    }
    if let Some((uid, gid)) = opts.owner {
        if created {
            // SAFETY: fchown on our open descriptor.
            if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } < 0 {
                let e = io::Error::last_os_error();
                return Err(fail(&e, format!("cannot set file owner: {}", strerror(&e))));
            }
        } else if meta.uid() != uid {
            return Err(MailboxError::new(
                "4.2.0",
                format!(
                    "destination {} is owned by uid {}, not {}",
                    path.display(),
                    meta.uid(),
                    uid
                ),
            ));
        }
    }
    Ok(file)
}

/// Switches the effective IDs (a forked child running as root only).
fn set_eids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain system calls; the caller is single-threaded.
    unsafe {
        if libc::geteuid() != 0 && libc::seteuid(0) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setegid(gid) < 0 || libc::seteuid(uid) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Appends one message to the mbox file `path`. Nothing of the message
/// remains in the file when this fails.
pub fn deliver(
    path: &Path,
    sender: &str,
    prefix: &[u8],
    src: &mut dyn Source,
    opts: &MboxOptions,
) -> Result<(), MailboxError> {
    let is_device = std::fs::metadata(path)
        .map(|m| m.mode() & libc::S_IFMT == libc::S_IFCHR)
        .unwrap_or(false)
        && opts.allow_devices;
    let _dotlock = if opts.lock.kinds.dotlock && !is_device {
        Some(
            DotLock::acquire(path, &opts.lock)
                .map_err(|e| MailboxError::new("4.2.0", e.to_string()))?,
        )
    } else {
        None
    };
    let file = open(path, opts)?;
    let is_device = is_device
        || file
            .metadata()
            .map(|m| m.mode() & libc::S_IFMT == libc::S_IFCHR)
            .unwrap_or(false);
    if !is_device {
        lock_file(&file, path, &opts.lock)
            .map_err(|e| MailboxError::new("4.2.0", e.to_string()))?;
    }
    let orig_size = if is_device {
        0
    } else {
        file.metadata()
            .map_err(|e| fail(&e, format!("cannot stat file: {}", strerror(&e))))?
            .len()
    };
    let switched = match opts.owner {
        Some((uid, gid)) if opts.write_as_owner => {
            set_eids(uid, gid)
                .map_err(|e| fail(&e, format!("cannot change user ID: {}", strerror(&e))))?;
            true
        }
        _ => false,
    };
    let limit = if is_device { 0 } else { opts.size_limit };
    let result = (|| -> Result<(), MailboxError> {
        let mut w = Limited::new(BufWriter::new(&file), orig_size, limit);
        let mut head = from_line(sender).into_bytes();
        head.extend_from_slice(prefix);
        copy_message(
            &mut w,
            &head,
            src,
            CopyOptions {
                from_quote: true,
                blank_line: true,
            },
        )
        .map_err(|e| copy_failure(&e))?;
        w.flush().map_err(|e| {
            MailboxError::io(
                &e,
                "4.3.0",
                format!("error writing message: {}", strerror(&e)),
            )
        })?;
        drop(w);
        if !is_device {
            file.sync_data().map_err(|e| {
                MailboxError::io(
                    &e,
                    "4.3.0",
                    format!("error writing message: {}", strerror(&e)),
                )
            })?;
        }
        Ok(())
    })();
    if switched {
        let _ = set_eids(0, 0);
    }
    if result.is_err() && !is_device {
        // Take the partial message back out.
        if file.set_len(orig_size).is_err() {
            crate::warning!(
                "{}: cannot truncate back to {orig_size} bytes",
                path.display()
            );
        }
        let _ = file.sync_data();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::SliceSource;
    use super::*;
    use std::time::Duration;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("facteur-mbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn quick() -> MboxOptions {
        MboxOptions {
            lock: LockPolicy {
                attempts: 2,
                delay: Duration::from_millis(1),
                ..LockPolicy::default()
            },
            ..MboxOptions::default()
        }
    }

    #[test]
    fn appends_with_from_line_quoting_and_blank_line() {
        let d = scratch("ok");
        let p = d.join("user");
        deliver(
            &p,
            "a@b",
            b"Return-Path: <a@b>\n",
            &mut SliceSource::new(b"Subject: x\n\nFrom here\nbody\n"),
            &quick(),
        )
        .unwrap();
        deliver(
            &p,
            "",
            b"",
            &mut SliceSource::new(b"Subject: y\n\nz\n"),
            &quick(),
        )
        .unwrap();
        let text = String::from_utf8(std::fs::read(&p).unwrap()).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(lines[0].starts_with("From a@b "), "{text}");
        assert_eq!(lines[0].len(), "From a@b ".len() + 24, "{text}");
        assert_eq!(
            &lines[1..7],
            &[
                "Return-Path: <a@b>",
                "Subject: x",
                "",
                ">From here",
                "body",
                ""
            ]
        );
        assert!(lines[7].starts_with("From MAILER-DAEMON "), "{text}");
        assert!(text.ends_with("\nz\n\n"));
        assert!(!d.join("user.lock").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A source that fails after some lines, like a damaged queue file.
    struct Failing(u32);

    impl Source for Failing {
        fn next_piece(&mut self) -> io::Result<Option<(&[u8], bool)>> {
            if self.0 == 0 {
                return Err(io::Error::other("damaged"));
            }
            self.0 -= 1;
            Ok(Some((b"line of text", true)))
        }
    }

    #[test]
    fn errors_truncate_back_to_the_old_size() {
        let d = scratch("trunc");
        let p = d.join("user");
        std::fs::write(&p, b"From x Thu Jan  1 00:00:00 1970\nold\n\n").unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = deliver(&p, "s", b"", &mut Failing(50), &quick()).unwrap_err();
        assert!(!e.is_permanent(), "{e:?}");
        assert_eq!(std::fs::read(&p).unwrap(), before);

        // Too large: bounced, and nothing left either.
        let opts = MboxOptions {
            size_limit: before.len() as u64 + 60,
            ..quick()
        };
        let e = deliver(&p, "s", b"", &mut SliceSource::new(&[b'x'; 100]), &opts).unwrap_err();
        assert_eq!(e.dsn, "5.2.2");
        assert!(e.text.contains("File too large"), "{}", e.text);
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refuses_symlinks_and_waits_for_locks() {
        let d = scratch("sym");
        let target = d.join("target");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, d.join("link")).unwrap();
        assert!(deliver(
            &d.join("link"),
            "s",
            b"",
            &mut SliceSource::new(b"x\n"),
            &quick()
        )
        .is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");

        let p = d.join("locked");
        let held = DotLock::acquire(&p, &quick().lock).unwrap();
        let e = deliver(&p, "s", b"", &mut SliceSource::new(b"x\n"), &quick()).unwrap_err();
        assert!(e.dsn.starts_with('4'), "{e:?}");
        drop(held);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn devices_are_written_without_locks() {
        let opts = MboxOptions {
            allow_devices: true,
            ..quick()
        };
        deliver(
            Path::new("/dev/null"),
            "s",
            b"",
            &mut SliceSource::new(b"x\n"),
            &opts,
        )
        .unwrap();
        assert!(deliver(
            Path::new("/dev/null"),
            "s",
            b"",
            &mut SliceSource::new(b"x\n"),
            &quick()
        )
        .is_err());
    }
}
