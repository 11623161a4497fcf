//! The request qmgr sends the bounce service, the reply, and the client
//! side (qmgr's). See the module documentation of [`super`] for the
//! protocol.

use std::io;
use std::path::Path;
use std::time::Duration;

use libmail::dsn::Kind;
use libmail::ipc::{self, Attrs, Conn};

/// A notification request: which message, what kind of notice. The
/// envelope fields repeat what the queue file says, so a notice can still
/// be sent when the file cannot be read (best effort, as Postfix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// The queue the message is in (`active`).
    pub queue_name: String,
    pub queue_id: String,
    /// The original envelope sender; empty for the null sender.
    pub sender: String,
    pub envid: Option<String>,
    /// DSN RET flags (0 = not given).
    pub ret: u32,
    /// Arrival time, seconds since the epoch.
    pub arrival: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Request {
    pub fn to_attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.push("request", "notify")
            .push("kind", self.kind.as_str())
            .push("queue_name", &self.queue_name)
            .push("queue_id", &self.queue_id)
            .push("sender", &self.sender)
            .push("ret", self.ret)
            .push("arrival", self.arrival);
        if let Some(e) = &self.envid {
            a.push("envid", e);
        }
        a
    }

    pub fn from_attrs(a: &Attrs) -> io::Result<Request> {
        if a.get("request") != Some("notify") {
            return Err(bad("unknown request"));
        }
        let kind = a
            .get("kind")
            .and_then(Kind::parse)
            .ok_or_else(|| bad("missing or bad kind"))?;
        let num = |n: &str| -> io::Result<u64> {
            match a.get(n) {
                None => Ok(0),
                Some(v) => v.parse().map_err(|_| bad(format!("bad {n}"))),
            }
        };
        Ok(Request {
            kind,
            queue_name: a.require("queue_name")?.to_string(),
            queue_id: a.require("queue_id")?.to_string(),
            sender: a.get("sender").unwrap_or("").to_string(),
            envid: a.get("envid").map(str::to_string),
            ret: u32::try_from(num("ret")?).map_err(|_| bad("bad ret"))?,
            arrival: num("arrival")?,
        })
    }
}

/// The answer: how many notices are now safe in the queue (0: none was
/// needed), or why it did not work (try again later).
pub type Reply = Result<usize, String>;

pub fn reply_to_attrs(r: &Reply) -> Attrs {
    match r {
        Ok(n) => Attrs::new().with("status", 0).with("notices", n),
        Err(e) => Attrs::new().with("status", 1).with("reason", e),
    }
}

pub fn reply_from_attrs(a: &Attrs) -> Reply {
    match a.get_num::<u32>("status") {
        Some(0) => Ok(a.get_num("notices").unwrap_or(0)),
        Some(_) => Err(a
            .get("reason")
            .unwrap_or("bounce service failure")
            .to_string()),
        None => Err("malformed reply from the bounce service".into()),
    }
}

/// Sends one request to `private/SERVICE` and waits up to `timeout` for
/// the reply. Any failure to get a reply is an error: the caller keeps
/// the log and asks again later.
pub fn request(queue_directory: &Path, service: &str, req: &Request, timeout: Duration) -> Reply {
    let path = ipc::private(queue_directory, service);
    let s = ipc::connect(&path, timeout).map_err(|e| format!("connect to {service}: {e}"))?;
    let mut c = Conn::new(s);
    let reply = c
        .send(&req.to_attrs())
        .and_then(|_| c.expect())
        .map_err(|e| format!("{service} service: {e}"))?;
    reply_from_attrs(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn sample() -> Request {
        Request {
            kind: Kind::Delay,
            queue_name: "active".into(),
            queue_id: "4F2A51C0D2".into(),
            sender: "a@example.org".into(),
            envid: Some("ENV%1\n".into()),
            ret: 2,
            arrival: 1_700_000_000,
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let r = sample();
        assert_eq!(Request::from_attrs(&r.to_attrs()).unwrap(), r);
        let null = Request {
            sender: String::new(),
            envid: None,
            ..sample()
        };
        assert_eq!(Request::from_attrs(&null.to_attrs()).unwrap(), null);
        assert!(Request::from_attrs(&Attrs::new().with("request", "flush")).is_err());
        let mut bad_kind = sample().to_attrs();
        bad_kind.0.retain(|(n, _)| n != "kind");
        bad_kind.push("kind", "bogus");
        assert!(Request::from_attrs(&bad_kind).is_err());
        for r in [Ok(2), Ok(0), Err("cleanup said no".to_string())] {
            assert_eq!(reply_from_attrs(&reply_to_attrs(&r)), r);
        }
        assert!(reply_from_attrs(&Attrs::new()).is_err());
    }

    #[test]
    fn client_talks_to_a_service_and_reports_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("bounce-proto-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("private")).unwrap();
        let l = UnixListener::bind(dir.join("private/bounce")).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut c = Conn::new(s);
            let req = Request::from_attrs(&c.expect().unwrap()).unwrap();
            assert_eq!(req, sample());
            c.send(&reply_to_attrs(&Ok(1))).unwrap();
        });
        let t = Duration::from_secs(10);
        assert_eq!(request(&dir, "bounce", &sample(), t), Ok(1));
        server.join().unwrap();
        let e = request(&dir, "defer", &sample(), t).unwrap_err();
        assert!(e.starts_with("connect to defer: "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
