//! Maildir delivery (the format of qmail, read by Dovecot, Courier,
//! mutt): one file per message, never a lock.
//!
//! ```text
//! MAILDIR/tmp/TIME.M<usec>P<pid>Q<n>.<host>           created O_EXCL (0600), written, fsynced
//! MAILDIR/new/TIME.M<usec>P<pid>Q<n>.<host>,S=<size>  renamed into place; new/ fsynced
//! ```
//!
//! On Linux the file is first written without a name (`O_TMPFILE` in
//! `new/`), fsynced, then linked into `new/` under its final name: the
//! same guarantee (a name in `new/` only ever points at a complete,
//! durable file), one directory fewer to write (`tmp/` is not touched,
//! and ext4 without a journal syncs the parent of a newly named file
//! with it). Where `O_TMPFILE` or `/proc` is not available, `tmp/` and
//! a rename are used as above.
//!
//! The name is unique by time, microseconds, process and a per-process
//! counter (Maildir++ style; `,S=` lets Dovecot skip a `stat` for quota).
//! `/` and `:` in the host name are written `\057` and `\072` as the
//! Maildir specification asks. The delivery is durable when [`deliver`]
//! returns: the file's data and the directory entry in `new/` were
//! fsynced. A crash before that leaves at most a file in `tmp/`, which
//! readers ignore and remove after 36 hours.
//!
//! `cur/`, `new/` and `tmp/` are created (mode 0700) when missing, as
//! Postfix does.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{copy_failure, copy_message, strerror, CopyOptions, Limited, MailboxError, Source};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// How many names are tried when one is taken.
const NAME_ATTEMPTS: u32 = 10;

/// What a Maildir delivery needs besides the message.
#[derive(Debug, Clone, Default)]
pub struct MaildirOptions {
    /// Largest message file (0 = no limit): `mailbox_size_limit`.
    pub size_limit: u64,
    /// The host part of file names (`myhostname`).
    pub hostname: String,
}

fn clean_host(host: &str) -> String {
    let mut s = String::with_capacity(host.len());
    for c in host.chars() {
        match c {
            '/' => s.push_str("\\057"),
            ':' => s.push_str("\\072"),
            c if c.is_control() => {}
            c => s.push(c),
        }
    }
    if s.is_empty() {
        s.push_str("localhost");
    }
    s
}

/// A new unique base name.
pub fn unique_name(host: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        clean_host(host)
    )
}

fn make_dirs(maildir: &Path) -> Result<(), MailboxError> {
    for sub in ["cur", "new", "tmp"] {
        let d = maildir.join(sub);
        if d.is_dir() {
            continue;
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(|e| {
                MailboxError::io(
                    &e,
                    "4.2.0",
                    format!(
                        "maildir delivery failed: create maildir directory {}: {}",
                        d.display(),
                        strerror(&e)
                    ),
                )
            })?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Delivers one message into `maildir` (which may not exist yet):
/// `prefix` (header lines to prepend), then the message. Returns the
/// final path, once durable.
pub fn deliver(
    maildir: &Path,
    prefix: &[u8],
    src: &mut dyn Source,
    opts: &MaildirOptions,
) -> Result<PathBuf, MailboxError> {
    make_dirs(maildir)?;
    if let Some(done) = deliver_unnamed(maildir, prefix, src, opts) {
        return done;
    }
    let tmp_dir = maildir.join("tmp");
    let mut attempt = 0;
    let (name, file) = loop {
        let name = unique_name(&opts.hostname);
        let path = tmp_dir.join(&name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => break (name, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => {
                return Err(MailboxError::io(
                    &e,
                    "4.2.0",
                    format!(
                        "maildir delivery failed: create maildir file {}: {}",
                        path.display(),
                        strerror(&e)
                    ),
                ))
            }
        }
    };
    let tmp_path = tmp_dir.join(&name);
    let result = (|| -> Result<PathBuf, MailboxError> {
        let mut w = Limited::new(BufWriter::new(&file), 0, opts.size_limit);
        let size = copy_message(&mut w, prefix, src, CopyOptions::default()).map_err(|e| {
            let mut m = copy_failure(&e);
            m.text = format!("maildir delivery failed: {}", m.text);
            m
        })?;
        let io_fail = |e: io::Error, what: &str| {
            MailboxError::io(
                &e,
                "4.3.0",
                format!("maildir delivery failed: {what}: {}", strerror(&e)),
            )
        };
        w.flush().map_err(|e| io_fail(e, "error writing message"))?;
        drop(w);
        file.sync_all()
            .map_err(|e| io_fail(e, "error writing message"))?;
        let final_path = maildir.join("new").join(format!("{name},S={size}"));
        std::fs::rename(&tmp_path, &final_path).map_err(|e| {
            io_fail(
                e,
                &format!("rename {} to {}", tmp_path.display(), final_path.display()),
            )
        })?;
        sync_dir(&maildir.join("new")).map_err(|e| {
            // The message is in new/ but not durable: defer, and take it
            // back so the retry does not deliver it twice.
            let _ = std::fs::remove_file(&final_path);
            io_fail(e, "fsync new/")
        })?;
        Ok(final_path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

/// The `O_TMPFILE` way (see the module comment); `None` when this file
/// system or kernel cannot do it (nothing was written: use `tmp/`).
fn deliver_unnamed(
    maildir: &Path,
    prefix: &[u8],
    src: &mut dyn Source,
    opts: &MaildirOptions,
) -> Option<Result<PathBuf, MailboxError>> {
    use std::os::fd::AsRawFd;
    let new_dir = maildir.join("new");
    let file = match OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&new_dir)
    {
        Ok(f) => f,
        // Not supported here (old kernel, file system without it).
        Err(_) => return None,
    };
    // The link below goes through /proc: without it, fall back before
    // anything is read from the source.
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if std::fs::symlink_metadata(&fd_path).is_err() {
        return None;
    }
    let io_fail = |e: io::Error, what: &str| {
        MailboxError::io(
            &e,
            "4.3.0",
            format!("maildir delivery failed: {what}: {}", strerror(&e)),
        )
    };
    Some((|| -> Result<PathBuf, MailboxError> {
        let mut w = Limited::new(BufWriter::new(&file), 0, opts.size_limit);
        let size = copy_message(&mut w, prefix, src, CopyOptions::default()).map_err(|e| {
            let mut m = copy_failure(&e);
            m.text = format!("maildir delivery failed: {}", m.text);
            m
        })?;
        w.flush().map_err(|e| io_fail(e, "error writing message"))?;
        drop(w);
        file.sync_all()
            .map_err(|e| io_fail(e, "error writing message"))?;
        let from = std::ffi::CString::new(fd_path.as_str()).expect("no NUL in a /proc path");
        let mut attempt = 0;
        let final_path = loop {
            let path = new_dir.join(format!("{},S={size}", unique_name(&opts.hostname)));
            let to =
                std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
                    .map_err(|_| io_fail(io::Error::other("NUL in path"), "link"))?;
            // SAFETY: two NUL-terminated paths; linkat follows the
            // /proc link to the open, unnamed file.
            let r = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if r == 0 {
                break path;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS {
                attempt += 1;
                continue;
            }
            return Err(io_fail(e, &format!("link {}", path.display())));
        };
        sync_dir(&new_dir).map_err(|e| {
            // In new/ but not durable: defer, and take it back so the
            // retry does not deliver it twice.
            let _ = std::fs::remove_file(&final_path);
            io_fail(e, "fsync new/")
        })?;
        Ok(final_path)
    })())
}

#[cfg(test)]
mod tests {
    use super::super::SliceSource;
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("facteur-maildir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn delivers_into_new_with_size_in_the_name() {
        let d = scratch("ok");
        let opts = MaildirOptions {
            size_limit: 0,
            hostname: "mx/a:b".into(),
        };
        let p = deliver(
            &d.join("Maildir"),
            b"Return-Path: <a@b>\n",
            &mut SliceSource::new(b"Subject: hi\n\nFrom body\n"),
            &opts,
        )
        .unwrap();
        let body = std::fs::read(&p).unwrap();
        assert_eq!(
            body,
            b"Return-Path: <a@b>\nSubject: hi\n\nFrom body\n".to_vec()
        );
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(&format!(",S={}", body.len())), "{name}");
        assert!(name.contains(".mx\\057a\\072b,"), "{name}");
        assert!(p.parent().unwrap().ends_with("new"));
        for sub in ["cur", "tmp"] {
            assert!(d.join("Maildir").join(sub).is_dir());
        }
        assert_eq!(std::fs::read_dir(d.join("Maildir/tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn too_large_leaves_nothing_behind() {
        let d = scratch("big");
        let opts = MaildirOptions {
            size_limit: 10,
            hostname: "h".into(),
        };
        let e = deliver(
            &d,
            b"",
            &mut SliceSource::new(b"Subject: 0123456789\n\n"),
            &opts,
        )
        .unwrap_err();
        assert_eq!(e.dsn, "5.2.2");
        assert!(e.text.contains("File too large"), "{}", e.text);
        assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(d.join("new")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
