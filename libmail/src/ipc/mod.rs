//! How Facteur's programs talk to each other: UNIX-domain sockets under
//! `$queue_directory/public` and `$queue_directory/private` (named after
//! the first master.cf column, as in Postfix), the attribute protocol
//! ([`attr`]) for requests and replies, and triggers: connect, write a
//! few bytes, close.
//!
//! Trigger bytes (Postfix's meanings): `W` wake up (scan the queue), `A`
//! ignore deferred time stamps, `D` scan deferred, `I` scan incoming, `F`
//! forget dead destinations.

pub mod attr;
pub mod cleanup;

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use attr::{Attrs, Conn, Item};

/// Timeout for connecting to a service and writing a trigger.
pub const TRIGGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a `unix`/`fifo` service named `name` listens: `public/name` when
/// master.cf says private=n, else `private/name`.
pub fn service_path(queue_directory: &Path, private: bool, name: &str) -> PathBuf {
    queue_directory
        .join(if private { "private" } else { "public" })
        .join(name)
}

/// The socket of a public service (pickup, cleanup, qmgr, showq, flush).
pub fn public(queue_directory: &Path, name: &str) -> PathBuf {
    service_path(queue_directory, false, name)
}

/// The socket of a private service (the delivery agents, bounce, ...).
pub fn private(queue_directory: &Path, name: &str) -> PathBuf {
    service_path(queue_directory, true, name)
}

/// Connects to a UNIX-domain service socket.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Sends trigger bytes to a service (a UNIX socket or a FIFO) and closes.
/// A service that is not running is not an error the caller can fix:
/// the result says what happened and the caller usually ignores it (the
/// service's own wakeup timer will find the work).
pub fn trigger(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_fifo() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(path)?;
        return f.write_all(bytes);
    }
    let mut s = connect(path, TRIGGER_TIMEOUT)?;
    s.write_all(bytes)?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// `postqueue -f`, `sendmail -q`, `facteur flush`: tell qmgr to forget
/// dead destinations (`F`), ignore deferred retry times (`A`), scan
/// deferred (`D`) and incoming (`I`), then wake pickup (`W`).
pub fn flush(queue_directory: &Path) -> io::Result<()> {
    trigger(&public(queue_directory, "qmgr"), b"FADI")?;
    let _ = trigger(&public(queue_directory, "pickup"), b"W");
    Ok(())
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}
