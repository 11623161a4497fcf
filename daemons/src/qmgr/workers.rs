//! Connections to the delivery agents: per transport, a pool of worker
//! threads, each holding one connection to `private/TRANSPORT` and
//! carrying one request at a time. qmgr's main loop decides how many
//! jobs run at once; the pool only grows to match (up to
//! [`MAX_WORKERS`] per transport) and reuses idle connections.
//!
//! A connection that the agent closed while idle (it exits after
//! `max_idle`, or on reload) is noticed before the next request is
//! written (the socket reads as end-of-file) and replaced, so a request
//! is never retried after it was sent: an agent that dies mid-request
//! leaves its recipients deferred, never delivered twice by a blind
//! retry.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use libmail::deliver::{
    outcomes_from_attrs, reply_dsn_actions, reply_marked, reply_site_failure, Outcome, Request,
};
use libmail::ipc::{self, Conn};

use super::Event;

/// Most connections per transport.
pub const MAX_WORKERS: usize = 100;

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

/// The jobs of one transport and its idle workers. A mutex and a
/// condition variable rather than a channel: crossbeam's receivers spin
/// and `sched_yield` before they sleep, a burst of system calls at every
/// hand-off between the main loop and a worker; a condvar sleeps at once.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

fn lock(q: &Shared) -> MutexGuard<'_, Queue> {
    q.0.lock().unwrap_or_else(|e| e.into_inner())
}

struct Pool {
    queue: Shared,
    workers: usize,
}

pub(crate) struct Pools {
    queue_directory: PathBuf,
    events: Sender<Event>,
    pools: HashMap<String, Pool>,
    in_flight: usize,
}

impl Pools {
    pub fn new(queue_directory: PathBuf, events: Sender<Event>) -> Pools {
        Pools {
            queue_directory,
            events,
            pools: HashMap::new(),
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
        let transport = job.request.transport.clone();
        let pool = self.pools.entry(transport.clone()).or_insert_with(|| Pool {
            queue: Arc::default(),
            workers: 0,
        });
        self.in_flight += 1;
        let mut q = lock(&pool.queue);
        q.jobs.push_back(job);
        // A new worker when the jobs waiting outnumber the idle workers
        // (an idle worker woken but not yet running still counts as idle).
        let short = q.jobs.len() > q.idle;
        drop(q);
        pool.queue.1.notify_one();
        if short && pool.workers < MAX_WORKERS {
            let queue = pool.queue.clone();
            let events = self.events.clone();
            let path = ipc::private(&self.queue_directory, &transport);
            let spawned = std::thread::Builder::new()
                .name(format!("agent-{transport}"))
                .spawn(move || worker(path, queue, events));
            if spawned.is_ok() {
                pool.workers += 1;
            }
        }
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

/// The next job of the pool, waiting for one. The pool lives as long as
/// the process, so there always is a next one.
fn next_job(queue: &Shared) -> Job {
    let mut q = lock(queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            return job;
        }
        q.idle += 1;
        q = queue.1.wait(q).unwrap_or_else(|e| e.into_inner());
        q.idle -= 1;
    }
}

fn worker(path: PathBuf, queue: Shared, events: Sender<Event>) {
    let mut conn: Option<Conn<UnixStream>> = None;
    loop {
        let job = next_job(&queue);
        if conn.as_ref().is_some_and(|c| peer_closed(c.get_ref())) {
            conn = None;
        }
        if conn.is_none() {
            match libmail::deliver::connect_agent(&path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let reason = if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::UnexpectedEof
                    ) {
                        "mail transport unavailable".to_string()
                    } else {
                        format!("mail transport unavailable: {e}")
                    };
                    let _ = events.send(Event::Done(Box::new(JobResult {
                        request: job.request,
                        marked: false,
                        outcomes: Err(reason),
                        site_failure: None,
                        dsn_actions: Vec::new(),
                    })));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let mut marked = false;
        let mut site_failure = None;
        let mut dsn_actions = Vec::new();
        let result = c
            .send(&job.request.to_attrs())
            .and_then(|_| c.expect())
            .and_then(|a| {
                marked = reply_marked(&a);
                site_failure = reply_site_failure(&a);
                dsn_actions = reply_dsn_actions(&a);
                outcomes_from_attrs(&a)
            });
        let outcomes = match result {
            Ok(o) => Ok(complete(&job.request, o)),
            Err(e) => {
                conn = None;
                Err(format!("unknown mail transport error: {e}"))
            }
        };
        if events
            .send(Event::Done(Box::new(JobResult {
                request: job.request,
                marked,
                outcomes,
                site_failure,
                dsn_actions,
            })))
            .is_err()
        {
            return;
        }
    }
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
