//! qmgr(8): the queue manager. It owns the queue while mail is being
//! delivered:
//!
//! 1. At start, everything left in `active/` (a crash, a reload) goes back
//!    to `incoming/`; then `incoming/` and the due part of `deferred/` are
//!    scanned.
//! 2. A message taken from `incoming/` or `deferred/` is renamed into
//!    `active/`, opened, and logged `ID: from=<s>, size=N, nrcpt=N (queue
//!    active)`. Each recipient not yet done is resolved (trivial-rewrite's
//!    classes, [`libmail::address::resolve`]) to a transport and next hop,
//!    and grouped into delivery jobs of at most
//!    `TRANSPORT_destination_recipient_limit` recipients.
//! 3. Jobs go to the delivery agents (`private/TRANSPORT`) through a pool
//!    of connections per transport ([`workers`]), at most
//!    `TRANSPORT_destination_concurrency_limit` at once per destination
//!    (transport and next hop; with a recipient limit of 1, the recipient
//!    too: [`DestKey`]);
//!    with a `TRANSPORT_destination_rate_delay`, one at a time, each
//!    starting that long after the previous one ended (with a
//!    `TRANSPORT_transport_rate_delay`, the same over all the transport's
//!    destinations: [`Pace`]).
//! 4. For each recipient the agent answers sent, bounced or deferred:
//!    sent and bounced recipients are marked done in the queue file (one
//!    byte in place, synced only if the file outlives the pass: see
//!    `message::Msg`); deferred ones get a line
//!    in `defer/ID`, bounced ones in `bounce/ID`.
//!    Bounced recipients also go to `bounce/ID`, delivered ones with
//!    NOTIFY=SUCCESS to `trace/ID`, both fsynced before the done marks.
//! 5. When a message has no job left, it asks the bounce service
//!    ([`crate::bounce`], off the main loop: [`notify`]) for the notices
//!    it owes: non-delivery (`bounce/ID`), success (`trace/ID`), then —
//!    past `maximal_queue_lifetime` (`bounce_queue_lifetime` for the null
//!    sender) — the return of the pending recipients, or, past
//!    `delay_warning_time`, once, the delay warning. All done and
//!    notified → the file is removed (`ID: removed`); otherwise it moves
//!    to `deferred/` with its mtime set to the next attempt: now + its
//!    age, bounded by `minimal_backoff_time` and `maximal_backoff_time`.
//!    A notice that could not be sent keeps the message and its log for
//!    the next pass. The details are in [`message`].
//!
//! Triggers: any byte scans `incoming/`; `D` also scans `deferred/`
//! (with `A` before it, ignoring the retry times: `postqueue -f`); the
//! master's wakeup (`W`) and `queue_run_delay` bring periodic scans.
//!
//! SIGTERM: no new jobs; the replies of jobs in flight are applied (so
//! their done marks are kept), then qmgr exits. Messages still in
//! `active/` are requeued by the next qmgr.
//!
//! postsuper: a message whose file postsuper moved or removed while it
//! was active is forgotten silently when its last job returns (the
//! agents deliver nothing from a file that is gone: see
//! `libmail::queue::lock`); a message marked expired (`postsuper -e`,
//! mode bit 0010) is not delivered and expires at once.
//!
//! Concurrency per destination ([`feedback`]): a destination starts at
//! `initial_destination_concurrency` and grows towards its limit while
//! deliveries reach the site; when the agent says the site could not be
//! reached (smtp/lmtp: no server answered; `site_dsn` in the reply), the
//! window shrinks, and after a failed pseudo-cohort the destination is
//! dead for `minimal_backoff_time`: its waiting mail and mail arriving
//! meanwhile is deferred at once (`delivery temporarily suspended: ...`).
//! Destinations are served side by side, each within its own window, so a
//! slow or dead one only holds its own share of the agents.

mod feedback;
mod message;
mod notify;
mod workers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libmail::address::resolve::Resolver;
use libmail::config::params::Params;
use libmail::queue::{Queue, QueueId};
use libmail::service::{self, num_param, time_param, Service};
use libmail::{info, warning};

use message::{Msg, Next, Policy};
use notify::{NoticeJob, NoticeResult, Notifier};
use workers::{Connected, EventRx, Job, JobResult, Pools};

/// What wakes the main loop.
pub(crate) enum Event {
    Trigger(u8),
    Done(Box<JobResult>),
    /// The bounce service answered.
    Notice(Box<NoticeResult>),
    /// A connection to a delivery agent was made (or not).
    Connected(Box<Connected>),
}

/// Delivery limits of one transport.
#[derive(Clone, Copy)]
struct Limits {
    concurrency: usize,
    recipients: usize,
    /// `initial_destination_concurrency` (or the transport's own).
    initial: usize,
    /// `TRANSPORT_destination_concurrency_failed_cohort_limit` (0: never dead).
    cohort_limit: usize,
    /// `TRANSPORT_destination_rate_delay` (zero: none): the pause after
    /// each delivery to a destination before the next one starts, which
    /// makes the destination's concurrency 1.
    rate_delay: Duration,
    /// `TRANSPORT_transport_rate_delay` (zero: none): the same for the
    /// transport as a whole, whatever the destination.
    transport_delay: Duration,
}

/// A transport with a rate delay: its deliveries go one at a time, each
/// starting that long after the last one ended.
#[derive(Default)]
struct Pace {
    running: usize,
    not_before: Option<Instant>,
}

/// A destination, as Postfix's scheduler counts them: the transport and
/// next hop, and, when the transport's recipient limit is 1, the
/// recipient too (each recipient is then a destination of its own, with
/// its own concurrency and rate delay: local's 2 parallel deliveries are
/// per mailbox, not for the whole machine).
type DestKey = (String, String, String);

/// The destination of a request to a transport of `limits`.
fn dest_key(req: &libmail::deliver::Request, limits: &Limits) -> DestKey {
    let rcpt = match &req.rcpts[..] {
        [one] if limits.recipients == 1 => one.address.clone(),
        _ => String::new(),
    };
    (req.transport.clone(), req.nexthop.clone(), rcpt)
}

/// Jobs waiting for one destination, how many are running, and how many
/// may ([`feedback::Window`]).
struct Dest {
    waiting: VecDeque<Job>,
    running: usize,
    window: feedback::Window,
    /// [`Limits::rate_delay`] of its transport.
    rate_delay: Duration,
    /// With a rate delay: no delivery starts before this (the end of the
    /// last one plus the delay).
    not_before: Option<Instant>,
}

pub(crate) struct Qmgr {
    svc: Service,
    resolver: Resolver,
    msgs: HashMap<String, Msg>,
    dests: HashMap<DestKey, Dest>,
    limits: HashMap<String, Limits>,
    /// Transports with a rate delay (`TRANSPORT_transport_rate_delay`).
    paces: HashMap<String, Pace>,
    pools: Pools,
    notifier: Notifier,
    policy: Policy,
    active_limit: usize,
    /// The earliest time a rate-delayed destination may start a
    /// delivery, when one has mail waiting: the main loop wakes then.
    next_dispatch: Option<Instant>,
    /// `qmgr_message_recipient_limit`: recipients held in memory at most
    /// (a message is still taken whole when it alone exceeds it).
    recipient_limit: usize,
    /// Recipients of the messages now in `msgs`.
    recipients_held: usize,
    /// A scan of `incoming/` stopped at a limit: scan again once
    /// messages leave.
    incoming_left: bool,
    queue_run_delay: u64,
    next_deferred_scan: Instant,
    /// An `A` trigger arrived: the next deferred scan ignores retry times.
    ignore_times: bool,
    /// (device, inode) of the files in `incoming/` that may have had a
    /// delivery pass, so status logs ([`Msg`]'s `logs`): see
    /// [`Qmgr::note_incoming`].
    seen_before: HashSet<(u64, u64)>,
    /// False once a message could not be noted: every message from
    /// `incoming/` is then looked at for logs.
    trust_incoming: bool,
    /// Settled messages go here to be dropped by a thread of their own:
    /// closing the last descriptor of a removed queue file frees its
    /// blocks, and on a file system mounted with `discard` that waits
    /// for the device (about a sixth of this loop's time, seen with
    /// perf), while the agents wait for their next job.
    reaper: mpsc::Sender<Vec<Msg>>,
    /// Settled messages for the reaper, handed over once per batch of
    /// events (one wake-up of its thread per batch, not per message).
    settled: Vec<Msg>,
    /// Triggers, the bounce service's answers, new agent connections
    /// (the agents' replies come from their sockets: [`Qmgr::wait`]).
    rx: EventRx,
    /// A trigger or the timer asked for a scan of `incoming/`, or of
    /// `deferred/` (which also scans `incoming/`).
    wake_incoming: bool,
    wake_deferred: bool,
    /// When the last scan of `incoming/` started (see [`INCOMING_GAP`]).
    incoming_scanned: Instant,
}

/// Least time between the starts of two scans of `incoming/` (the first
/// scan after a quiet spell is not delayed). Every scan looks at each
/// file there, the ones cleanup is still writing included (twenty or
/// more under load), and cleanup asks for a scan after each message: with
/// no gap each file was looked at eight or nine times (qmgr's statx calls
/// per message in the s20 benchmark, counted with `perf record -e
/// raw_syscalls:sys_enter`; 4.9 with a 5 ms gap). A burst of messages is
/// taken in one scan, at the cost of at most this much more time before
/// the first of them is delivered.
const INCOMING_GAP: Duration = Duration::from_millis(10);

pub fn main() {
    let mut svc = Service::start("qmgr");
    let triggers = svc.triggers();
    let resolver =
        Resolver::new(&svc.params).unwrap_or_else(|e| libmail::log::fatal(&format!("{e}")));
    let _lock = exclusive(&svc);
    svc.ready();
    let (tx, rx) = workers::channel()
        .unwrap_or_else(|e| libmail::log::fatal(&format!("cannot make an eventfd: {e}")));
    let ttx = tx.clone();
    std::thread::spawn(move || {
        while let Ok(b) = triggers.recv() {
            if ttx.send(Event::Trigger(b)).is_err() {
                break;
            }
        }
    });
    // What a crash left half recycled goes before this qmgr recycles.
    libmail::queue::recycle::clean(&svc.layout);
    let (reaper, dead) = mpsc::channel::<Vec<Msg>>();
    let mut pool = libmail::queue::recycle::Reaper::new(&svc.layout);
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || dead.into_iter().flatten().for_each(|m| m.reap(&mut pool)))
        .unwrap_or_else(|e| libmail::log::fatal(&format!("cannot start a thread: {e}")));
    let p = &svc.params;
    let queue_run_delay = time_param(p, "queue_run_delay", 300).max(1);
    let mut q = Qmgr {
        reaper,
        settled: Vec::new(),
        rx,
        wake_incoming: false,
        incoming_scanned: Instant::now(),
        wake_deferred: false,
        resolver,
        msgs: HashMap::new(),
        dests: HashMap::new(),
        limits: HashMap::new(),
        paces: HashMap::new(),
        notifier: Notifier::new(svc.layout.root().to_path_buf(), tx.clone()),
        pools: Pools::new(svc.layout.root().to_path_buf(), tx),
        policy: policy(p),
        active_limit: num_param(p, "qmgr_message_active_limit", 20000).max(1) as usize,
        recipient_limit: num_param(p, "qmgr_message_recipient_limit", 20000).max(1) as usize,
        recipients_held: 0,
        next_dispatch: None,
        incoming_left: false,
        queue_run_delay,
        next_deferred_scan: Instant::now(),
        ignore_times: false,
        seen_before: HashSet::new(),
        trust_incoming: true,
        svc,
    };
    q.recover_active();
    q.note_incoming();
    q.scan(Queue::Incoming, false);
    q.scan(Queue::Deferred, false);
    q.next_deferred_scan = Instant::now() + Duration::from_secs(q.queue_run_delay);
    q.run();
}

/// What the end of a pass needs from the configuration.
fn policy(p: &Params) -> Policy {
    let name = |param: &str, default: &str| {
        p.value(param)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    Policy {
        min_backoff: time_param(p, "minimal_backoff_time", 300),
        max_backoff: time_param(p, "maximal_backoff_time", 4000),
        max_lifetime: time_param(p, "maximal_queue_lifetime", 5 * 86400),
        bounce_lifetime: time_param(p, "bounce_queue_lifetime", 5 * 86400),
        delay_warning: time_param(p, "delay_warning_time", 0),
        bounce_service: name("bounce_service_name", "bounce"),
        defer_service: name("defer_service_name", "defer"),
        trace_service: name("trace_service_name", "trace"),
        double_bounce: name("double_bounce_sender", "double-bounce"),
    }
}

/// One qmgr per queue: a previous qmgr that is still finishing its
/// deliveries (master died or reloaded) holds a lock on the `active/`
/// directory itself until it exits; wait for it (bounded) so two never
/// work on `active/` at once.
fn exclusive(svc: &Service) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = svc.layout.dir(Queue::Active);
    let f = std::fs::File::open(&path)
        .unwrap_or_else(|e| libmail::log::fatal(&format!("open {}: {e}", path.display())));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return f;
        }
        if Instant::now() > deadline {
            libmail::log::fatal(&format!(
                "{} is locked by another qmgr for this queue",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Qmgr {
    fn run(&mut self) {
        loop {
            if service::stopping() {
                // Apply what is in flight, then exit (bounded wait).
                let deadline = Instant::now() + Duration::from_secs(30);
                while self.pools.in_flight() + self.notifier.in_flight() > 0
                    && Instant::now() < deadline
                {
                    for ev in self.wait(Duration::from_millis(200)) {
                        match ev {
                            Event::Done(r) => {
                                self.pools.finished();
                                self.free_slot(&r);
                                self.apply_result(*r);
                            }
                            Event::Notice(r) => {
                                self.notifier.finished();
                                self.noticed(*r);
                            }
                            Event::Connected(c) => self.pools.connected(*c),
                            Event::Trigger(_) => {}
                        }
                    }
                }
                self.reap();
                return;
            }
            // What the last scans settled (messages found all done).
            self.reap();
            self.dispatch();
            let now = Instant::now();
            // A trigger noted during a scan: look again at once, or once
            // the gap since the last scan of incoming/ has passed.
            let incoming_at = self.incoming_scanned + INCOMING_GAP;
            let wait = if self.wake_deferred {
                Duration::ZERO
            } else if self.wake_incoming {
                incoming_at.saturating_duration_since(now).min(
                    self.next_dispatch
                        .map_or(Duration::MAX, |t| t.saturating_duration_since(now)),
                )
            } else {
                self.next_deferred_scan
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(500))
                    .min(
                        self.next_dispatch
                            .map_or(Duration::MAX, |t| t.saturating_duration_since(now)),
                    )
            };
            let evs = self.wait(wait);
            if !evs.is_empty() {
                self.handle(evs);
            }
            if Instant::now() >= self.next_deferred_scan {
                self.wake_deferred = true;
                self.wake_incoming = true;
                self.next_deferred_scan =
                    Instant::now() + Duration::from_secs(self.queue_run_delay);
            }
            if self.incoming_left && !self.at_limit() {
                self.wake_incoming = true;
            }
            if self.wake_incoming && Instant::now() >= incoming_at {
                self.wake_incoming = false;
                self.incoming_scanned = Instant::now();
                self.scan(Queue::Incoming, false);
            }
            if std::mem::take(&mut self.wake_deferred) {
                let ignore = std::mem::take(&mut self.ignore_times);
                self.scan(Queue::Deferred, ignore);
            }
        }
    }

    /// Handles what woke the main loop: triggers are noted for the
    /// scans, the bounce service's answers applied, and the agents'
    /// replies applied after the slots they free got their next jobs.
    fn handle(&mut self, evs: Vec<Event>) {
        let mut done = Vec::new();
        for ev in evs {
            match ev {
                Event::Trigger(b) => {
                    self.wake_incoming = true;
                    match b {
                        b'D' => self.wake_deferred = true,
                        b'A' => self.ignore_times = true,
                        _ => {}
                    }
                }
                Event::Done(r) => {
                    self.pools.finished();
                    self.free_slot(&r);
                    done.push(r);
                }
                Event::Notice(r) => {
                    self.notifier.finished();
                    self.noticed(*r);
                }
                Event::Connected(c) => self.pools.connected(*c),
            }
        }
        // The freed slots get their next jobs before the bookkeeping of
        // the finished ones (done marks, unlinks, logs): with few slots
        // per destination (local's 2 per mailbox) the agents would
        // otherwise wait for all of it.
        if !done.is_empty() {
            self.dispatch();
        }
        for r in done {
            self.apply_result(*r);
        }
        self.reap();
    }

    /// Waits up to `timeout` for events: triggers, notices and new
    /// connections from the channel, the agents' replies from their
    /// sockets (read here, on the main thread), and the requests that
    /// ended without one.
    fn wait(&mut self, timeout: Duration) -> Vec<Event> {
        let mut fds = vec![libc::pollfd {
            fd: self.rx.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        self.pools.poll_fds(&mut fds);
        let ms = if self.pools.has_ready() {
            0
        } else {
            timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
        };
        // SAFETY: a valid array of pollfds and its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let mut evs = Vec::new();
        if n > 0 {
            if fds[0].revents != 0 {
                evs = self.rx.drain(10_000);
            }
            for p in &fds[1..] {
                if p.revents != 0 {
                    if let Some(r) = self.pools.readable(p.fd) {
                        evs.push(Event::Done(Box::new(r)));
                    }
                }
            }
        }
        evs.extend(
            self.pools
                .take_ready(Instant::now())
                .into_iter()
                .map(|r| Event::Done(Box::new(r))),
        );
        evs
    }

    /// Hands the messages settled so far to the reaper thread.
    fn reap(&mut self) {
        if !self.settled.is_empty() {
            // (Should the thread be gone, the messages are dropped here.)
            let _ = self.reaper.send(std::mem::take(&mut self.settled));
        }
    }

    /// Between two messages of a long scan: what came meanwhile (see
    /// [`handle`](Self::handle)), so that an agent waits for one
    /// message's activation at most, not for the whole scan's.
    fn handle_pending(&mut self) {
        let evs = self.wait(Duration::ZERO);
        if !evs.is_empty() {
            self.handle(evs);
        }
    }

    /// Moves everything in `active/` back to `incoming/`.
    fn recover_active(&mut self) {
        let found: Vec<_> = self.svc.layout.scan(Queue::Active).collect();
        for r in found {
            match r {
                Ok((id, _)) => {
                    if let Err(e) =
                        self.svc
                            .layout
                            .move_file(&id, Queue::Active, Queue::Incoming, false)
                    {
                        warning!("{}: requeue from active: {e}", id.as_str());
                    }
                }
                Err(e) => warning!("scan active: {e}"),
            }
        }
    }

    /// Notes what is in `incoming/` now, before any scan. A message gets
    /// status logs only from a delivery pass, and qmgr is the only writer
    /// of those logs. Messages with a pass behind them reach `incoming/`
    /// only from `active/`: moved back by a qmgr at its start (this one
    /// just now, or an earlier one that stopped before it took them
    /// again: a qmgr holds its lock until it exits), or by this qmgr when
    /// it could not read one ([`Qmgr::activate`] notes those). postsuper
    /// moves messages elsewhere (hold, deferred, maildrop for a requeue,
    /// which cleanup gives a new file), and within `incoming/` renames
    /// them only with their logs and their inode (`-s`); cleanup makes
    /// new files. So a file in `incoming/` that is not noted here had no
    /// pass and has no logs. Keyed by inode, which a rename keeps; a new
    /// file reusing a noted inode is only looked at once too often.
    /// Should the listing fail, every message is looked at.
    fn note_incoming(&mut self) {
        use libmail::queue::dirs::Found;
        let mut paths = Vec::new();
        for r in self.svc.layout.scan_all(Queue::Incoming) {
            match r {
                Ok(Found::Complete { path, .. }) | Ok(Found::Incomplete { path, .. }) => {
                    paths.push(path)
                }
                Ok(_) => {}
                Err(_) => self.trust_incoming = false,
            }
        }
        for p in paths {
            self.note_path(&p);
        }
    }

    /// Notes one file of `incoming/` as one that may have logs (see
    /// [`note_incoming`](Self::note_incoming)); one that cannot be
    /// looked at makes every message suspect.
    fn note_path(&mut self, p: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(p) {
            Ok(m) => {
                self.seen_before.insert((m.dev(), m.ino()));
            }
            // Gone meanwhile (postsuper): not in incoming/ any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => self.trust_incoming = false,
        }
    }

    /// Takes messages from `incoming/` or the due ones from `deferred/`.
    /// Whether the active queue is full (`qmgr_message_active_limit`,
    /// `qmgr_message_recipient_limit`).
    fn at_limit(&self) -> bool {
        self.msgs.len() >= self.active_limit
            || (self.recipients_held >= self.recipient_limit && !self.msgs.is_empty())
    }

    fn scan(&mut self, q: Queue, ignore_times: bool) {
        let now = libmail::deliver::now_f64();
        let found: Vec<_> = self.svc.layout.scan(q).take(self.active_limit).collect();
        if q == Queue::Incoming {
            // A listing cut at the limit leaves files for the next scan.
            self.incoming_left = found.len() >= self.active_limit;
        }
        for r in found {
            if self.at_limit() || service::stopping() {
                if q == Queue::Incoming {
                    self.incoming_left = true;
                }
                break;
            }
            let (id, path) = match r {
                Ok(x) => x,
                Err(e) => {
                    warning!("scan {}: {e}", q.name());
                    continue;
                }
            };
            if self.msgs.contains_key(id.as_str()) {
                continue;
            }
            if q == Queue::Deferred && !ignore_times {
                let due = std::fs::metadata(&path)
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.mtime() as f64) <= now
                    })
                    .unwrap_or(false);
                if !due {
                    continue;
                }
            }
            match self.svc.layout.move_file(&id, q, Queue::Active, false) {
                Ok(path) => {
                    self.activate(id, path, q);
                    self.handle_pending();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warning!("{}: move to active: {e}", id.as_str()),
            }
        }
    }

    fn limits_of(&mut self, transport: &str) -> Limits {
        if let Some(l) = self.limits.get(transport) {
            return *l;
        }
        let p = &self.svc.params;
        let get = |suffix: &str, default_name: &str, fallback: i64| -> usize {
            let own = format!("{transport}_{suffix}");
            let v = p
                .value(&own)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .and_then(|v| libmail::config::check::parse_number(&v))
                .unwrap_or_else(|| num_param(p, default_name, fallback));
            v.max(1) as usize
        };
        let cohort_limit = p
            .value(&format!(
                "{transport}_destination_concurrency_failed_cohort_limit"
            ))
            .ok()
            .filter(|v| !v.trim().is_empty())
            .and_then(|v| libmail::config::check::parse_number(&v))
            .unwrap_or_else(|| {
                num_param(p, "default_destination_concurrency_failed_cohort_limit", 1)
            })
            .max(0) as usize;
        let default_delay = time_param(p, "default_destination_rate_delay", 0);
        let rate_delay = Duration::from_secs(time_param(
            p,
            &format!("{transport}_destination_rate_delay"),
            default_delay,
        ));
        let l = Limits {
            concurrency: get(
                "destination_concurrency_limit",
                "default_destination_concurrency_limit",
                20,
            ),
            recipients: get(
                "destination_recipient_limit",
                "default_destination_recipient_limit",
                50,
            ),
            initial: get(
                "initial_destination_concurrency",
                "initial_destination_concurrency",
                5,
            ),
            cohort_limit,
            rate_delay,
            transport_delay: Duration::from_secs(time_param(
                p,
                &format!("{transport}_transport_rate_delay"),
                time_param(p, "default_transport_rate_delay", 0),
            )),
        };
        self.limits.insert(transport.to_string(), l);
        l
    }

    /// Opens a message now in `active/` (taken from `from`) and queues
    /// its jobs.
    fn activate(&mut self, id: QueueId, path: std::path::PathBuf, from: Queue) {
        let mut msg = match Msg::open(&self.svc.layout, id, &path) {
            Ok(mut m) => {
                // Whether status logs may exist: see note_incoming. A
                // deferred message has had a pass; one from incoming/
                // only if noted (forgotten now: the message carries it).
                let noted = self.seen_before.remove(&m.dev_ino());
                m.may_have_logs(from != Queue::Incoming || noted || !self.trust_incoming);
                m
            }
            Err(message::OpenError::Corrupt(reason)) => {
                warning!("{}: {reason}: moved to the corrupt queue", id.as_str());
                if let Err(e) = self
                    .svc
                    .layout
                    .move_file(&id, Queue::Active, Queue::Corrupt, true)
                {
                    warning!("{}: move to corrupt: {e}", id.as_str());
                }
                return;
            }
            Err(message::OpenError::Gone) => return,
            Err(message::OpenError::Other(reason)) => {
                warning!("{}: {reason}", id.as_str());
                // Leave it for a later scan; it may have logs (from
                // deferred/), so it is noted (see note_incoming).
                if let Ok(p) = self
                    .svc
                    .layout
                    .move_file(&id, Queue::Active, Queue::Incoming, false)
                {
                    self.note_path(&p);
                }
                return;
            }
        };
        info!(
            "{}: from=<{}>, size={}, nrcpt={} (queue active)",
            id.as_str(),
            msg.sender(),
            msg.size(),
            msg.nrcpt()
        );
        let key = id.as_str().to_string();
        // A message postsuper expired is not delivered: finish returns it.
        let groups = if msg.forced_expire_at_open() {
            Vec::new()
        } else {
            msg.plan(&self.svc.layout, &self.resolver, &self.policy.double_bounce)
        };
        self.recipients_held += msg.nrcpt();
        self.msgs.insert(key.clone(), msg);
        for (transport, nexthop, rcpts) in groups {
            let limits = self.limits_of(&transport);
            for chunk in rcpts.chunks(limits.recipients) {
                let msg = self.msgs.get_mut(&key).expect("just inserted");
                let job = msg.job(&transport, &nexthop, chunk.to_vec());
                self.dests
                    .entry(dest_key(&job.request, &limits))
                    .or_insert_with(|| Dest {
                        waiting: VecDeque::new(),
                        running: 0,
                        window: feedback::Window::new(
                            limits.concurrency,
                            limits.initial,
                            limits.cohort_limit,
                        ),
                        rate_delay: limits.rate_delay,
                        not_before: None,
                    })
                    .waiting
                    .push_back(job);
            }
        }
        self.finish_if_idle(&key);
    }

    /// Starts the jobs the concurrency windows allow; the jobs of a dead
    /// destination are deferred at once.
    fn dispatch(&mut self) {
        let now = Instant::now();
        self.next_dispatch = None;
        let keys: Vec<DestKey> = self
            .dests
            .iter()
            .filter(|(_, d)| !d.waiting.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let dest = self.dests.get_mut(&key).expect("listed");
            if let Some((dsn, reason)) = dest.window.dead(now) {
                let (dsn, reason) = (dsn.to_string(), reason);
                let jobs: Vec<Job> = dest.waiting.drain(..).collect();
                for job in jobs {
                    self.suspend(job, &dsn, &reason);
                }
                continue;
            }
            let mut limit = dest.window.allowed(now);
            if !dest.rate_delay.is_zero() {
                // One delivery at a time, each after the pause that
                // follows the last one.
                limit = limit.min(1);
                if let Some(t) = dest.not_before.filter(|t| now < *t) {
                    if dest.running == 0 {
                        self.next_dispatch = Some(self.next_dispatch.map_or(t, |n| n.min(t)));
                    }
                    continue;
                }
            }
            // A paced transport: one delivery at a time over all its
            // destinations, after the pause that follows the last one.
            let transport = &key.0;
            let paced = self
                .limits
                .get(transport)
                .is_some_and(|l| !l.transport_delay.is_zero());
            if paced {
                let pace = self.paces.entry(transport.clone()).or_default();
                if pace.running > 0 {
                    continue;
                }
                if let Some(t) = pace.not_before.filter(|t| now < *t) {
                    self.next_dispatch = Some(self.next_dispatch.map_or(t, |n| n.min(t)));
                    continue;
                }
                limit = limit.min(dest.running + 1);
            }
            let before = dest.running;
            while dest.running < limit {
                let Some(job) = dest.waiting.pop_front() else {
                    break;
                };
                dest.running += 1;
                self.pools.submit(job);
            }
            if paced {
                let started = dest.running - before;
                self.paces.entry(transport.clone()).or_default().running += started;
            }
        }
        // A destination is forgotten once idle, unless it is dead or has
        // recent failures: that state keeps a trickle of new mail from
        // hammering it (bounded: it lasts one back-off).
        // A rate-delayed destination is kept while its pause lasts, so
        // that mail arriving meanwhile waits for it too.
        self.dests.retain(|_, d| {
            !(d.waiting.is_empty() && d.running == 0)
                || d.window.worth_keeping(now)
                || d.not_before.is_some_and(|t| now < t)
        });
    }

    /// Defers a job's recipients without sending it (dead destination).
    fn suspend(&mut self, job: Job, dsn: &str, reason: &str) {
        let outcomes = message::defer_all(&job.request, dsn, reason);
        self.apply_result(JobResult {
            request: job.request,
            marked: false,
            outcomes: Ok(outcomes),
            site_failure: None,
            dsn_actions: Vec::new(),
        });
    }

    /// What an agent's reply says of the site to the destination's
    /// window, and the slot it frees; [`apply_result`](Self::apply_result)
    /// then applies it to the message.
    fn free_slot(&mut self, r: &JobResult) {
        let limits = self.limits_of(&r.request.transport);
        let dest = dest_key(&r.request, &limits);
        let backoff = Duration::from_secs(self.policy.min_backoff.max(1));
        if !limits.transport_delay.is_zero() {
            let pace = self.paces.entry(r.request.transport.clone()).or_default();
            pace.running = pace.running.saturating_sub(1);
            pace.not_before = Some(Instant::now() + limits.transport_delay);
        }
        if let Some(d) = self.dests.get_mut(&dest) {
            d.running = d.running.saturating_sub(1);
            if !d.rate_delay.is_zero() {
                d.not_before = Some(Instant::now() + d.rate_delay);
            }
            // No reply at all (the agent failed) says nothing of the site.
            if r.outcomes.is_ok() {
                let f = match &r.site_failure {
                    Some((dsn, reason)) => feedback::Feedback::SiteFailure {
                        dsn: dsn.clone(),
                        reason: reason.clone(),
                    },
                    None => feedback::Feedback::Reached,
                };
                d.window.feedback(f, Instant::now(), backoff);
            }
        }
    }

    fn apply_result(&mut self, r: JobResult) {
        let key = r.request.queue_id.clone();
        let Some(msg) = self.msgs.get_mut(&key) else {
            return;
        };
        msg.apply(&self.svc.layout, r);
        self.finish_if_idle(&key);
    }

    /// The bounce service answered for a message.
    fn noticed(&mut self, r: NoticeResult) {
        let Some(msg) = self.msgs.get_mut(&r.key) else {
            return;
        };
        let next = msg.noticed(&self.svc.layout, &self.policy, r.reply);
        self.follow(&r.key, next);
    }

    /// Does what the end of a pass asks: a notice request, or forgetting
    /// the settled message.
    fn follow(&mut self, key: &str, next: Next) {
        match next {
            Next::Ask { service, request } => self.notifier.submit(NoticeJob {
                key: key.to_string(),
                service,
                request,
            }),
            Next::Settled => {
                if let Some(m) = self.msgs.remove(key) {
                    self.recipients_held = self.recipients_held.saturating_sub(m.nrcpt());
                    self.settled.push(m);
                }
            }
        }
    }

    /// A message with no job left sends its notices, then is removed or
    /// deferred ([`Msg::finish`]).
    fn finish_if_idle(&mut self, key: &str) {
        let Some(msg) = self.msgs.get_mut(key) else {
            return;
        };
        if msg.outstanding() > 0 || msg.notifying() {
            return;
        }
        let next = msg.finish(&self.svc.layout, &self.policy);
        self.follow(key, next);
    }
}
