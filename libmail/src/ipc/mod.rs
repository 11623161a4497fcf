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
    open_trigger(path)?.send(bytes)
}

/// Triggers sent from a thread of their own, coalesced: [`fire`] never
/// blocks, and every `fire` is followed by at least one trigger sent
/// after it; requests that arrive while one is waiting to be sent share
/// it (cleanup fires one per message; qmgr needs one per batch). The
/// connection stays open between triggers (the trigger servers read
/// every connection they hold as bytes come); a new one is made when it
/// broke (the service restarted or closed it).
///
/// [`fire`]: Coalesced::fire
#[derive(Clone)]
pub struct Coalesced {
    tx: std::sync::mpsc::SyncSender<()>,
}

impl Coalesced {
    pub fn start(path: std::path::PathBuf, bytes: &'static [u8]) -> Coalesced {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("trigger".into())
            .spawn(move || {
                let mut conn: Option<TriggerConn> = None;
                while rx.recv().is_ok() {
                    if conn.as_mut().is_some_and(|c| c.write(bytes).is_ok()) {
                        continue;
                    }
                    conn = open_trigger(&path).ok();
                    if conn.as_mut().is_some_and(|c| c.write(bytes).is_err()) {
                        conn = None;
                    }
                }
            });
        if let Err(e) = spawned {
            crate::warning!("cannot start a thread: {e}");
        }
        Coalesced { tx }
    }

    pub fn fire(&self) {
        // Full: a trigger is already waiting to be sent, after this call.
        let _ = self.tx.try_send(());
    }
}

/// A trigger endpoint, open and not yet written: what a caller that must
/// not change anything while the service is down opens first (`postqueue
/// -i` and `-s` make messages due only once qmgr is known to listen).
/// Dropped without [`send`](Self::send), it closes having sent nothing,
/// which the service ignores.
pub enum TriggerConn {
    Socket(UnixStream),
    Fifo(std::fs::File),
}

/// Opens the service at `path` (a UNIX socket or a FIFO) for a trigger.
/// Fails, as [`trigger`] does, when nothing listens there.
pub fn open_trigger(path: &Path) -> io::Result<TriggerConn> {
    let meta = std::fs::metadata(path)?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_fifo() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(path)?;
        return Ok(TriggerConn::Fifo(f));
    }
    Ok(TriggerConn::Socket(connect(path, TRIGGER_TIMEOUT)?))
}

impl TriggerConn {
    /// Writes trigger bytes, keeping the connection open.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            TriggerConn::Fifo(f) => f.write_all(bytes),
            TriggerConn::Socket(s) => s.write_all(bytes),
        }
    }

    /// Writes the trigger bytes and closes.
    pub fn send(self, bytes: &[u8]) -> io::Result<()> {
        match self {
            TriggerConn::Fifo(mut f) => f.write_all(bytes),
            TriggerConn::Socket(mut s) => {
                s.write_all(bytes)?;
                let _ = s.shutdown(std::net::Shutdown::Write);
                Ok(())
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn open_trigger_sends_nothing_until_asked_on_sockets_and_fifos() {
        let dir = crate::testutil::scratch_dir("ipc-trigger");

        // Nothing listening: an error, as trigger() gives.
        assert!(open_trigger(&dir.join("none")).is_err());
        assert!(trigger(&dir.join("none"), b"D").is_err());

        // A socket: a probe closes with no bytes; send() delivers them.
        let sock = dir.join("qmgr");
        let l = UnixListener::bind(&sock).unwrap();
        drop(open_trigger(&sock).unwrap());
        open_trigger(&sock).unwrap().send(b"D").unwrap();
        trigger(&sock, b"FADI").unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let (mut c, _) = l.accept().unwrap();
            let mut b = Vec::new();
            c.read_to_end(&mut b).unwrap();
            got.push(b);
        }
        assert_eq!(got, [b"".to_vec(), b"D".to_vec(), b"FADI".to_vec()]);

        // A FIFO: the same through a reader that is open.
        let fifo = dir.join("pickup");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No reader: the FIFO is down.
        assert!(open_trigger(&fifo).is_err());
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&fifo)
            .unwrap();
        open_trigger(&fifo).unwrap().send(b"W").unwrap();
        let mut b = [0u8; 8];
        assert_eq!(reader.read(&mut b).unwrap(), 1);
        assert_eq!(&b[..1], b"W");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn coalesced_triggers_keep_their_connection_and_make_a_new_one_when_it_broke() {
        let dir = crate::testutil::scratch_dir("ipc-coalesced");
        let sock = dir.join("qmgr");
        let l = UnixListener::bind(&sock).unwrap();
        let t = Coalesced::start(sock.clone(), b"I");
        let one_byte = |c: &mut UnixStream| {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            b[0]
        };
        t.fire();
        let (mut first, _) = l.accept().unwrap();
        assert_eq!(one_byte(&mut first), b'I');
        // The next trigger comes on the same connection.
        t.fire();
        assert_eq!(one_byte(&mut first), b'I');
        // The service closed it (it restarted): a new connection.
        drop(first);
        t.fire();
        let (mut second, _) = l.accept().unwrap();
        assert_eq!(one_byte(&mut second), b'I');
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
