//! Connections to the delivery agents, driven by qmgr's main loop, and
//! the loop's own wake-up channel.
//!
//! Per transport, a set of connections to `private/TRANSPORT`, each
//! carrying one request at a time. The main loop writes a request on an
//! idle connection and waits for the replies of the busy ones in the same
//! `poll` as its other events ([`Pools::poll_fds`], [`Pools::readable`]),
//! so a reply is read and applied, and the freed slot given its next job,
//! on one thread: no hand-off to a worker thread and back, which cost
//! two context switches per delivery on each side. New connections are
//! made by short-lived threads (an agent that master has yet to start can
//! take a while to greet) and handed back as [`Event::Connected`]; at most
//! [`MAX_CONNECTIONS`] per transport, further jobs wait for one.
//!
//! A connection that the agent closed while idle (it exits after
//! `max_idle`, or on reload) is noticed before the next request is
//! written (the socket reads as end-of-file) and replaced, so a request
//! is never retried after it was sent: an agent that dies mid-request
//! leaves its recipients deferred, never delivered twice by a blind
//! retry.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Instant;

use libmail::deliver::{
    outcomes_from_attrs, reply_dsn_actions, reply_marked, reply_site_failure, Outcome, Request,
    REPLY_TIMEOUT,
};
use libmail::ipc::{self, attr};

use super::Event;

/// Most connections per transport (master's default process limit).
pub const MAX_CONNECTIONS: usize = 100;

/// Largest reply read from an agent.
const MAX_REPLY: usize = 16 << 20;

pub(crate) struct Job {
    pub request: Request,
}

pub(crate) struct JobResult {
    pub request: Request,
    /// The agent marked its finished recipients done itself.
    pub marked: bool,
    /// The agent's reply, or why there is none (every recipient deferred).
    pub outcomes: Result<Vec<Outcome>, String>,
    /// The agent could not reach the next hop at all: (dsn, reason).
    pub site_failure: Option<(String, String)>,
    /// DSN actions other than final delivery: (offset, relayed|passed).
    pub dsn_actions: Vec<(u64, String)>,
}

impl JobResult {
    fn failed(request: Request, reason: String) -> JobResult {
        JobResult {
            request,
            marked: false,
            outcomes: Err(reason),
            site_failure: None,
            dsn_actions: Vec::new(),
        }
    }
}

/// A connection attempt's outcome, from its thread.
pub(crate) struct Connected {
    ticket: u64,
    transport: String,
    conn: io::Result<UnixStream>,
}

/// The sending side of the main loop's events: an mpsc channel whose
/// every message also wakes the loop's `poll` (an eventfd).
#[derive(Clone)]
pub(crate) struct EventTx {
    tx: mpsc::Sender<Event>,
    wake: Arc<OwnedFd>,
}

impl EventTx {
    pub fn send(&self, ev: Event) -> Result<(), mpsc::SendError<Event>> {
        self.tx.send(ev)?;
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a live u64 to our eventfd. A full
        // counter (EAGAIN) still leaves the loop woken.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

/// The receiving side: the events, and the descriptor to poll for them.
pub(crate) struct EventRx {
    rx: Receiver<Event>,
    wake: Arc<OwnedFd>,
}

impl EventRx {
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes what was sent (at most `max`), clearing the wake-up first so
    /// that nothing sent meanwhile goes unnoticed.
    pub fn drain(&self, max: usize) -> Vec<Event> {
        let mut n: u64 = 0;
        // SAFETY: an 8-byte read into a live u64 from our non-blocking
        // eventfd (EAGAIN when nothing was signalled).
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        self.rx.try_iter().take(max).collect()
    }
}

/// The main loop's event channel.
pub(crate) fn channel() -> io::Result<(EventTx, EventRx)> {
    // SAFETY: plain eventfd creation; the descriptor is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = mpsc::channel();
    Ok((
        EventTx {
            tx,
            wake: wake.clone(),
        },
        EventRx { rx, wake },
    ))
}

/// A request on its way: the connection, what came back so far, and
/// when it is given up.
struct Busy {
    transport: String,
    conn: UnixStream,
    reply: Vec<u8>,
    job: Job,
    deadline: Instant,
}

pub(crate) struct Pools {
    queue_directory: PathBuf,
    events: EventTx,
    idle: HashMap<String, Vec<UnixStream>>,
    /// Connections per transport: idle, busy and being made.
    open: HashMap<String, usize>,
    /// Jobs waiting for a connection (the transport is at its maximum).
    waiting: HashMap<String, VecDeque<Job>>,
    /// Jobs whose connection a thread is making, by ticket.
    connecting: HashMap<u64, Job>,
    next_ticket: u64,
    busy: HashMap<RawFd, Busy>,
    /// Results known without a reply (the request could not be written,
    /// the agent could not be reached, no reply in time), for the next
    /// [`take_ready`](Self::take_ready).
    ready: Vec<JobResult>,
    in_flight: usize,
}

impl Pools {
    pub fn new(queue_directory: PathBuf, events: EventTx) -> Pools {
        Pools {
            queue_directory,
            events,
            idle: HashMap::new(),
            open: HashMap::new(),
            waiting: HashMap::new(),
            connecting: HashMap::new(),
            next_ticket: 0,
            busy: HashMap::new(),
            ready: Vec::new(),
            in_flight: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn submit(&mut self, job: Job) {
        self.in_flight += 1;
        let transport = job.request.transport.clone();
        while let Some(conn) = self.idle.get_mut(&transport).and_then(Vec::pop) {
            if peer_closed(&conn) {
                self.closed(&transport);
                continue;
            }
            self.start(transport, conn, job);
            return;
        }
        if self.open.get(&transport).copied().unwrap_or(0) >= MAX_CONNECTIONS {
            self.waiting.entry(transport).or_default().push_back(job);
            return;
        }
        self.connect(transport, job);
    }

    /// A thread makes a connection for `job` ([`Event::Connected`]).
    fn connect(&mut self, transport: String, job: Job) {
        *self.open.entry(transport.clone()).or_default() += 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let path = ipc::private(&self.queue_directory, &transport);
        let events = self.events.clone();
        let t = transport.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("connect-{transport}"))
            .spawn(move || {
                let conn = libmail::deliver::connect_agent(&path).map(|c| c.into_inner());
                let _ = events.send(Event::Connected(Box::new(Connected {
                    ticket,
                    transport: t,
                    conn,
                })));
            });
        match spawned {
            Ok(_) => {
                self.connecting.insert(ticket, job);
            }
            Err(e) => {
                self.closed(&transport);
                self.ready.push(JobResult::failed(
                    job.request,
                    format!("mail transport unavailable: cannot start a thread: {e}"),
                ));
            }
        }
    }

    /// A connection attempt ended: its job starts, or fails.
    pub fn connected(&mut self, c: Connected) {
        let Some(job) = self.connecting.remove(&c.ticket) else {
            return;
        };
        match c.conn {
            Ok(conn) => self.start(c.transport, conn, job),
            Err(e) => {
                let reason = if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::UnexpectedEof
                ) {
                    "mail transport unavailable".to_string()
                } else {
                    format!("mail transport unavailable: {e}")
                };
                self.closed(&c.transport);
                self.ready.push(JobResult::failed(job.request, reason));
            }
        }
    }

    /// Writes `job`'s request on `conn` and waits for the reply there.
    fn start(&mut self, transport: String, conn: UnixStream, job: Job) {
        let mut wire = Vec::with_capacity(1024);
        attr::encode_list(&job.request.to_attrs(), &mut wire);
        // The agent has read everything before (one request at a time),
        // so a request that fits the socket's buffer goes at once; a
        // larger one waits at most the write timeout connect_agent set.
        if let Err(e) = (&conn).write_all(&wire) {
            self.closed(&transport);
            self.ready.push(JobResult::failed(
                job.request,
                format!("unknown mail transport error: {e}"),
            ));
            return;
        }
        self.busy.insert(
            conn.as_raw_fd(),
            Busy {
                transport,
                conn,
                reply: Vec::new(),
                job,
                deadline: Instant::now() + REPLY_TIMEOUT,
            },
        );
    }

    /// A connection is gone: a waiting job of its transport gets a new
    /// one.
    fn closed(&mut self, transport: &str) {
        if let Some(n) = self.open.get_mut(transport) {
            *n = n.saturating_sub(1);
        }
        if let Some(job) = self
            .waiting
            .get_mut(transport)
            .and_then(VecDeque::pop_front)
        {
            self.connect(transport.to_string(), job);
        }
    }

    /// A connection whose request was answered: the next waiting job of
    /// its transport, or the idle list.
    fn release(&mut self, transport: String, conn: UnixStream) {
        match self
            .waiting
            .get_mut(&transport)
            .and_then(VecDeque::pop_front)
        {
            Some(job) => self.start(transport, conn, job),
            None => self.idle.entry(transport).or_default().push(conn),
        }
    }

    /// What the main loop polls for: the busy connections.
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.extend(self.busy.keys().map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
    }

    /// Whether results wait without any descriptor to poll.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Results known without a reply, and requests that had none in
    /// time ([`REPLY_TIMEOUT`]).
    pub fn take_ready(&mut self, now: Instant) -> Vec<JobResult> {
        let late: Vec<RawFd> = self
            .busy
            .iter()
            .filter(|(_, b)| b.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            if let Some(b) = self.busy.remove(&fd) {
                self.closed(&b.transport);
                self.ready.push(JobResult::failed(
                    b.job.request,
                    "unknown mail transport error: timed out waiting for the reply".into(),
                ));
            }
        }
        std::mem::take(&mut self.ready)
    }

    /// `fd` polled readable: the reply, once it is whole.
    pub fn readable(&mut self, fd: RawFd) -> Option<JobResult> {
        let b = self.busy.get_mut(&fd)?;
        let mut chunk = [0u8; 8192];
        // One read per readiness: the socket is blocking, and poll said
        // there is something (or the end).
        let n = match (&b.conn).read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return None
            }
            Err(e) => return Some(self.fail(fd, format!("unknown mail transport error: {e}"))),
        };
        if n == 0 {
            return Some(self.fail(
                fd,
                "unknown mail transport error: peer closed the connection".into(),
            ));
        }
        let seen = b.reply.len();
        b.reply.extend_from_slice(&chunk[..n]);
        let Some(end) = attr::list_end_after(&b.reply, seen) else {
            if b.reply.len() > MAX_REPLY {
                return Some(self.fail(fd, "unknown mail transport error: reply too long".into()));
            }
            return None;
        };
        let b = self.busy.remove(&fd)?;
        let mut marked = false;
        let mut site_failure = None;
        let mut dsn_actions = Vec::new();
        let outcomes = attr::parse_list(&b.reply[..end]).and_then(|a| {
            marked = reply_marked(&a);
            site_failure = reply_site_failure(&a);
            dsn_actions = reply_dsn_actions(&a);
            outcomes_from_attrs(&a)
        });
        let outcomes = match outcomes {
            // More than one reply: the agent is confused; this one
            // stands, the connection goes.
            Ok(o) if end == b.reply.len() => {
                let o = complete(&b.job.request, o);
                self.release(b.transport, b.conn);
                Ok(o)
            }
            Ok(o) => {
                self.closed(&b.transport);
                Ok(complete(&b.job.request, o))
            }
            Err(e) => {
                self.closed(&b.transport);
                Err(format!("unknown mail transport error: {e}"))
            }
        };
        Some(JobResult {
            request: b.job.request,
            marked,
            outcomes,
            site_failure,
            dsn_actions,
        })
    }

    /// Ends the request on `fd` without a reply.
    fn fail(&mut self, fd: RawFd, reason: String) -> JobResult {
        let b = self.busy.remove(&fd).expect("a busy connection");
        self.closed(&b.transport);
        JobResult::failed(b.job.request, reason)
    }
}

/// True when the peer closed the connection (readable with no data).
fn peer_closed(s: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r != 0
}

/// A reply that forgot recipients leaves them deferred.
fn complete(req: &Request, mut got: Vec<Outcome>) -> Vec<Outcome> {
    for r in &req.rcpts {
        if !got.iter().any(|o| o.offset == r.offset) {
            got.push(Outcome {
                offset: r.offset,
                status: libmail::deliver::Status::Deferred,
                dsn: "4.3.0".into(),
                reason: "delivery agent gave no status for this recipient".into(),
            });
        }
    }
    got.retain(|o| req.rcpts.iter().any(|r| r.offset == o.offset));
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmail::deliver::{greeting, outcomes_to_attrs, Rcpt, Status};
    use libmail::ipc::Conn;
    use std::os::unix::net::UnixListener;

    /// A queue directory with `private/`, removed at the end.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("facteur-workers-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("private")).unwrap();
        Dir(d)
    }

    fn job(id: &str) -> Job {
        Job {
            request: Request {
                queue_name: "active".into(),
                queue_id: id.into(),
                transport: "fake".into(),
                nexthop: "example.org".into(),
                sender: "a@example.org".into(),
                rcpts: vec![Rcpt {
                    address: "b@example.org".into(),
                    orig: None,
                    offset: 77,
                    dsn_notify: 0,
                    dsn_orcpt: None,
                }],
                ..Request::default()
            },
        }
    }

    /// Runs the main loop's side until `n` results came: events from the
    /// channel and replies from the sockets, as `Qmgr::wait` does.
    fn results(pools: &mut Pools, rx: &EventRx, n: usize) -> Vec<JobResult> {
        let mut got = Vec::new();
        let end = Instant::now() + std::time::Duration::from_secs(20);
        while got.len() < n && Instant::now() < end {
            let mut fds = vec![libc::pollfd {
                fd: rx.fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            pools.poll_fds(&mut fds);
            // SAFETY: a valid pollfd array.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if fds[0].revents != 0 {
                for ev in rx.drain(100) {
                    if let Event::Connected(c) = ev {
                        pools.connected(*c);
                    }
                }
            }
            for p in &fds[1..] {
                if p.revents != 0 {
                    got.extend(pools.readable(p.fd));
                }
            }
            got.extend(pools.take_ready(Instant::now()));
        }
        got
    }

    #[test]
    fn replies_are_read_on_the_loop_and_the_connection_is_reused() {
        let d = dir("reuse");
        let listener = UnixListener::bind(d.0.join("private/fake")).unwrap();
        // One connection serving two requests: a second connection would
        // never be accepted, and the second job would never end.
        let agent = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut c = Conn::new(s);
            c.send(&greeting()).unwrap();
            for _ in 0..2 {
                let req = Request::from_attrs(&c.expect().unwrap()).unwrap();
                let outcomes: Vec<Outcome> = req
                    .rcpts
                    .iter()
                    .map(|r| Outcome {
                        offset: r.offset,
                        status: Status::Sent,
                        dsn: "2.0.0".into(),
                        reason: format!("delivered {}", req.queue_id),
                    })
                    .collect();
                c.send(&outcomes_to_attrs(&outcomes)).unwrap();
            }
        });
        let (tx, rx) = channel().unwrap();
        let mut pools = Pools::new(d.0.clone(), tx);
        pools.submit(job("AAAA1"));
        let r = results(&mut pools, &rx, 1);
        assert_eq!(r.len(), 1);
        let o = r[0].outcomes.as_ref().unwrap();
        assert_eq!((o[0].offset, o[0].status), (77, Status::Sent));
        assert_eq!(o[0].reason, "delivered AAAA1");
        pools.submit(job("AAAA2"));
        let r = results(&mut pools, &rx, 1);
        assert_eq!(r[0].outcomes.as_ref().unwrap()[0].reason, "delivered AAAA2");
        agent.join().unwrap();
    }

    #[test]
    fn an_agent_that_dies_or_is_missing_defers_with_postfix_s_reasons() {
        let d = dir("dies");
        let (tx, rx) = channel().unwrap();
        let mut pools = Pools::new(d.0.clone(), tx);
        pools.submit(job("BBBB1"));
        let r = results(&mut pools, &rx, 1);
        assert_eq!(
            r[0].outcomes.as_ref().unwrap_err(),
            "mail transport unavailable"
        );

        let listener = UnixListener::bind(d.0.join("private/fake")).unwrap();
        let agent = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut c = Conn::new(s);
            c.send(&greeting()).unwrap();
            let _ = c.expect().unwrap();
            // Gone without a reply.
        });
        pools.submit(job("BBBB2"));
        let r = results(&mut pools, &rx, 1);
        assert_eq!(
            r[0].outcomes.as_ref().unwrap_err(),
            "unknown mail transport error: peer closed the connection"
        );
        agent.join().unwrap();
        assert_eq!(pools.open.get("fake").copied().unwrap_or(0), 0);
    }
}
