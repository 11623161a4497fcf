//! One message in the active queue: its open queue file, the jobs out
//! for it, and what happens when the last one comes back.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libmail::address::resolve::Resolver;
use libmail::deliver::{delivery_line, now_f64, Outcome, Rcpt, Request, Status, Timing};
use libmail::queue::statuslog::{self, Entry};
use libmail::queue::{lock, Access, Limits, Queue, QueueFile, QueueId, QueueLayout, ReadError};
use libmail::{info, warning};

use super::workers::{Job, JobResult};

pub(crate) enum OpenError {
    /// Moved or removed meanwhile (postsuper): nothing to do.
    Gone,
    /// Damaged: goes to `corrupt/`.
    Corrupt(String),
    /// Cannot read it now (I/O): try again later.
    Other(String),
}

pub(crate) struct Msg {
    id: QueueId,
    file: QueueFile,
    arrival: f64,
    active_time: f64,
    /// Recipient record offset → index.
    by_offset: HashMap<u64, usize>,
    outstanding: usize,
    deferred: bool,
    /// Defer and bounce log entries, written when the message is done
    /// with this pass.
    pending_logs: (Vec<Entry>, Vec<Entry>),
}

/// (transport, nexthop, recipients) for one destination.
pub(crate) type Group = (String, String, Vec<(usize, Rcpt)>);

impl Msg {
    pub fn open(_layout: &QueueLayout, id: QueueId, path: &Path) -> Result<Msg, OpenError> {
        let file = match QueueFile::open(path, Access::ReadWrite, &Limits::default()) {
            Ok(f) => f,
            Err(e @ ReadError::Corrupt { .. }) => return Err(OpenError::Corrupt(e.to_string())),
            Err(ReadError::Incomplete(i)) => {
                return Err(OpenError::Corrupt(ReadError::Incomplete(i).to_string()))
            }
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::Gone)
            }
            Err(ReadError::Io(e)) => {
                return Err(OpenError::Other(format!("open {}: {e}", path.display())))
            }
        };
        let env = file.envelope();
        let arrival = env.arrival.0 as f64 + env.arrival.1 as f64 / 1e6;
        let by_offset = env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| (r.offset, i))
            .collect();
        Ok(Msg {
            id,
            file,
            arrival,
            active_time: now_f64(),
            by_offset,
            outstanding: 0,
            deferred: false,
            pending_logs: (Vec::new(), Vec::new()),
        })
    }

    pub fn sender(&self) -> &str {
        &self.file.envelope().sender
    }

    pub fn size(&self) -> u64 {
        self.file.envelope().size.content_size
    }

    pub fn nrcpt(&self) -> usize {
        self.file.envelope().recipients.len()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether `postsuper -e`/`-f` marked the message expired.
    pub fn forced_expire(&self) -> bool {
        self.file
            .file()
            .metadata()
            .is_ok_and(|m| lock::is_forced_expire(m.mode()))
    }

    /// Resolves every pending recipient and groups them by destination.
    /// Recipients that cannot be resolved now are deferred here.
    pub fn plan(&mut self, resolver: &Resolver) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        let mut failed = Vec::new();
        let pending: Vec<(usize, Rcpt)> = self
            .file
            .envelope()
            .pending()
            .map(|(i, r)| {
                (
                    i,
                    Rcpt {
                        address: r.address.clone(),
                        orig: r.orig.clone(),
                        offset: r.offset,
                        dsn_notify: r.dsn_notify,
                        dsn_orcpt: r.dsn_orcpt.clone(),
                    },
                )
            })
            .collect();
        for (i, rcpt) in pending {
            match resolver.resolve(&rcpt.address) {
                Ok(res) => {
                    let key = (res.transport.clone(), res.nexthop.clone());
                    let slot = *index.entry(key).or_insert_with(|| {
                        groups.push((res.transport.clone(), res.nexthop.clone(), Vec::new()));
                        groups.len() - 1
                    });
                    groups[slot].2.push((i, rcpt));
                }
                Err(e) => failed.push((i, rcpt, format!("address resolver failure: {e}"))),
            }
        }
        if !failed.is_empty() {
            let rcpts: Vec<(usize, Rcpt)> =
                failed.iter().map(|(i, r, _)| (*i, r.clone())).collect();
            let reason = failed[0].2.clone();
            let job = self.job("none", "", rcpts);
            self.outstanding -= 1;
            let outcomes = job
                .request
                .rcpts
                .iter()
                .map(|r| Outcome {
                    offset: r.offset,
                    status: Status::Deferred,
                    dsn: "4.3.0".into(),
                    reason: reason.clone(),
                })
                .collect::<Vec<_>>();
            for (r, o) in job.request.rcpts.iter().zip(&outcomes) {
                log_local(&job.request, r, o);
            }
            self.record(outcomes, false);
        }
        groups
    }

    /// A delivery job for some recipients (counted as outstanding).
    pub fn job(&mut self, transport: &str, nexthop: &str, rcpts: Vec<(usize, Rcpt)>) -> Job {
        let env = self.file.envelope();
        let request = Request {
            queue_name: Queue::Active.name().to_string(),
            queue_id: self.id.as_str().to_string(),
            transport: transport.to_string(),
            nexthop: nexthop.to_string(),
            sender: env.sender.clone(),
            arrival: self.arrival,
            active_time: self.active_time,
            size: env.size.content_size,
            dsn_envid: env.dsn_envid.clone(),
            dsn_ret: env.dsn_ret,
            attrs: env.attrs.clone(),
            rcpts: rcpts.into_iter().map(|(_, r)| r).collect(),
        };
        self.outstanding += 1;
        Job { request }
    }

    /// Applies a reply (or a failure to get one).
    pub fn apply(&mut self, r: JobResult) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let outcomes = match r.outcomes {
            Ok(o) => o,
            Err(reason) => {
                let out: Vec<Outcome> = r
                    .request
                    .rcpts
                    .iter()
                    .map(|rc| Outcome {
                        offset: rc.offset,
                        status: Status::Deferred,
                        dsn: "4.3.0".into(),
                        reason: reason.clone(),
                    })
                    .collect();
                for (rc, o) in r.request.rcpts.iter().zip(&out) {
                    log_local(&r.request, rc, o);
                }
                out
            }
        };
        self.record(outcomes, r.marked);
    }

    /// Done marks and status logs for a set of outcomes.
    /// `marked`: the agent already wrote the done marks.
    fn record(&mut self, outcomes: Vec<Outcome>, marked: bool) {
        let mut done = Vec::new();
        let mut defer = Vec::new();
        let mut bounce = Vec::new();
        let now = now_f64() as u64;
        for o in outcomes {
            let Some(&i) = self.by_offset.get(&o.offset) else {
                warning!(
                    "{}: reply for unknown recipient offset {}",
                    self.id.as_str(),
                    o.offset
                );
                continue;
            };
            let r = &self.file.envelope().recipients[i];
            let entry = Entry {
                offset: o.offset,
                recipient: r.address.clone(),
                orig_recipient: r.orig.clone(),
                status: o.dsn.clone(),
                action: String::new(),
                reason: o.reason.clone(),
                time: now,
            };
            match o.status {
                Status::Sent => done.push(i),
                Status::Bounced => {
                    done.push(i);
                    bounce.push(Entry {
                        action: "failed".into(),
                        ..entry
                    });
                }
                Status::Deferred => {
                    self.deferred = true;
                    defer.push(Entry {
                        action: "delayed".into(),
                        ..entry
                    });
                }
            }
        }
        if marked {
            for &i in &done {
                self.file.note_done(i);
            }
        } else if !done.is_empty() {
            if let Err(e) = self.file.mark_done_durable(&done) {
                warning!("{}: cannot mark recipients done: {e}", self.id.as_str());
            }
        }
        self.pending_logs.0.extend(defer);
        self.pending_logs.1.extend(bounce);
    }

    /// The last job came back: remove, defer or expire the message.
    pub fn finish(
        self,
        layout: &QueueLayout,
        (min_backoff, max_backoff, max_life, bounce_life): (u64, u64, u64, u64),
    ) {
        let id = self.id;
        let ids = id.as_str();
        // postsuper moved or removed the file while it was active: it is
        // postsuper's now (see libmail::queue::lock); say and do nothing.
        if !lock::still_names(&layout.path_of(Queue::Active, &id), self.file.file()).unwrap_or(true)
        {
            return;
        }
        if let Err(e) = statuslog::append(layout, Queue::Defer, &id, &self.pending_logs.0) {
            warning!("{ids}: defer log: {e}");
        }
        if let Err(e) = statuslog::append(layout, Queue::Bounce, &id, &self.pending_logs.1) {
            warning!("{ids}: bounce log: {e}");
        }
        if self.file.envelope().all_done() {
            drop(self.file);
            if let Err(e) = layout.remove(Queue::Active, &id, false) {
                warning!("{ids}: remove: {e}");
                return;
            }
            let _ = statuslog::remove(layout, Queue::Defer, &id);
            let _ = statuslog::remove(layout, Queue::Bounce, &id);
            info!("{ids}: removed");
            return;
        }
        let now = now_f64();
        let age = (now - self.arrival).max(0.0) as u64;
        let lifetime = if self.file.envelope().sender.is_empty() {
            bounce_life
        } else {
            max_life
        };
        let forced = self.forced_expire();
        if !self.deferred && !forced {
            // Nothing failed but recipients remain (stopping): the next
            // qmgr requeues it from active/.
            return;
        }
        if forced || age > lifetime {
            info!(
                "{ids}: from=<{}>, status=expired, returned to sender",
                self.file.envelope().sender
            );
            warning!("{ids}: no bounce daemon yet: the sender is not notified");
            drop(self.file);
            if layout.remove(Queue::Active, &id, false).is_ok() {
                let _ = statuslog::remove(layout, Queue::Defer, &id);
                let _ = statuslog::remove(layout, Queue::Bounce, &id);
                info!("{ids}: removed");
            }
            return;
        }
        let delay = age.clamp(min_backoff, max_backoff.max(min_backoff));
        let next = now as i64 + delay as i64;
        let ts = libc::timespec {
            tv_sec: next as libc::time_t,
            tv_nsec: 0,
        };
        let times = [ts, ts];
        // SAFETY: a valid descriptor and two timespecs.
        let r = unsafe { libc::futimens(self.file.file().as_raw_fd(), times.as_ptr()) };
        if r != 0 {
            warning!("{ids}: set retry time: {}", std::io::Error::last_os_error());
        }
        drop(self.file);
        if let Err(e) = layout.move_file(&id, Queue::Active, Queue::Deferred, false) {
            warning!("{ids}: move to deferred: {e}");
        }
    }
}

/// The delivery line for a recipient qmgr itself decided about (no agent
/// was reached): relay=none.
fn log_local(req: &Request, rcpt: &Rcpt, o: &Outcome) {
    let t = Timing {
        received: now_f64(),
        setup: 0.0,
    };
    info!("{}", delivery_line(req, rcpt, "none", t, o));
}
