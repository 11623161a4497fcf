//! One message in the active queue: its open queue file, the jobs out
//! for it, and what happens when the last one comes back — the notices
//! it owes, then removal or the deferred queue.
//!
//! # The end of a pass
//!
//! While jobs come back, bounced recipients are appended to `bounce/ID`
//! and delivered NOTIFY=SUCCESS ones to `trace/ID` (fsynced) before they
//! are marked done; deferred ones are kept in memory. When the last job
//! is back ([`Msg::finish`]):
//!
//! 1. `defer/ID` is rewritten: the newest entry of each recipient still
//!    pending.
//! 2. `bounce/ID` not empty → the `bounce` service sends the non-delivery
//!    notice; once it answers, the log is removed.
//! 3. `trace/ID` not empty → the `trace` service sends the success
//!    notice; the log is removed.
//! 4. Nothing pending and every notice sent → the file is removed
//!    (`ID: removed`).
//! 5. Otherwise, past its lifetime (`maximal_queue_lifetime`,
//!    `bounce_queue_lifetime` for the null sender) or expired by postsuper:
//!    `ID: from=<s>, status=expired, returned to sender` (`force-expired`
//!    after postsuper -e), the `defer`
//!    service returns the pending recipients with their last reasons,
//!    they are marked done and the file is removed.
//! 6. Otherwise, deferred recipients, older than `delay_warning_time`, no
//!    warning sent yet → the `defer` service sends the delay warning and
//!    the file gets its warned mark (`libmail::queue::lock::DELAY_WARNED`).
//! 7. Then the file goes to `deferred/` with its retry time.
//!
//! A notice that cannot be sent (no bounce service, cleanup refusing)
//! leaves its log in place and the message in `deferred/`, even with
//! every recipient done: the next pass asks again, and no notice is
//! asked for twice once it was answered. Only past the lifetime does a
//! message with nothing left but an unsent notice go (with a warning).
//! While qmgr stops, no notice is asked for: the message stays in
//! `active/` and the next qmgr finishes it.
//!
//! Crash windows: a notice is sent again if qmgr dies between the bounce
//! service's answer and its bookkeeping (log removal, done marks, warned
//! mark). A recipient whose agent marked it done (bounced) before qmgr
//! read the reply is not in `bounce/ID` if qmgr died in between: its
//! notice is lost (Postfix's agents write the bounce log themselves,
//! before the done mark). Done marks are made durable only when the file
//! outlives the pass (or waits for a notice): a finished message is
//! unlinked without an `fdatasync`, so a power loss (not a killed
//! process) may deliver it again, as with Postfix.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libmail::address::resolve::{Class, Resolver};
use libmail::deliver::{delivery_line, now_f64, Outcome, Rcpt, Request, Status, Timing};
use libmail::dsn::{self, Kind};
use libmail::queue::recycle::{self, Reaper, Retired};
use libmail::queue::statuslog::{self, Entry};
use libmail::queue::{lock, Access, Limits, Queue, QueueFile, QueueId, QueueLayout, ReadError};
use libmail::{info, warning};

use crate::bounce::proto::{self, Reply};

use super::workers::{Job, JobResult};

pub(crate) enum OpenError {
    /// Moved or removed meanwhile (postsuper): nothing to do.
    Gone,
    /// Damaged: goes to `corrupt/`.
    Corrupt(String),
    /// Cannot read it now (I/O): try again later.
    Other(String),
}

/// What qmgr's configuration says about the end of a pass.
pub(crate) struct Policy {
    pub min_backoff: u64,
    pub max_backoff: u64,
    pub max_lifetime: u64,
    pub bounce_lifetime: u64,
    /// `delay_warning_time`; 0 = no warnings.
    pub delay_warning: u64,
    /// The master.cf names of the bounce, defer and trace services.
    pub bounce_service: String,
    pub defer_service: String,
    pub trace_service: String,
    /// `double_bounce_sender`: local mail to it is discarded.
    pub double_bounce: String,
}

/// The steps of the end of a pass (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Failure,
    Success,
    Decide,
    Expire,
    Warn,
}

/// What the end of a pass asks of the main loop.
pub(crate) enum Next {
    /// Send `request` to the bounce service `service`, then call
    /// [`Msg::noticed`] with its answer.
    Ask {
        service: String,
        request: proto::Request,
    },
    /// The message is settled (removed, deferred, or left to postsuper
    /// or the next qmgr): forget it.
    Settled,
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
    /// Deferred recipients of this pass, for `defer/ID` at the end.
    defer_entries: Vec<Entry>,
    /// A notice of this pass was not sent: keep the message.
    notice_failed: bool,
    /// The step waiting for the bounce service's answer.
    asked: Option<Step>,
    /// Whether `defer/ID`, `bounce/ID` or `trace/ID` may exist. False only
    /// for a message that never had a delivery pass before this one
    /// (the caller knows: see `Qmgr::note_incoming`) and for which this pass
    /// wrote no log: only qmgr writes these logs, so then there is none,
    /// and the end of the pass neither looks for them nor unlinks them
    /// (six system calls per message). Set before any log is written, so
    /// a failed or partial write still counts.
    logs: bool,
    /// Done marks written but not yet made durable. A message whose
    /// recipients are all done is removed without the `fdatasync`: the
    /// marks only matter if the file outlives this pass (kept in active/,
    /// deferred, or waiting for a notice), and then they are synced
    /// first. A power loss before the unlink reaches the disk may then
    /// deliver again, as Postfix may (its delivery agents never sync the
    /// marks); a killed process loses nothing, the page cache keeps them.
    unsynced_marks: bool,
    /// Where the removed file waits in the recycling pool for the reaper
    /// ([`Msg::reap`]); None when it was not removed, or was unlinked.
    retiring: Option<PathBuf>,
}

/// (transport, nexthop, recipients) for one destination.
pub(crate) type Group = (String, String, Vec<(usize, Rcpt)>);

impl Msg {
    /// Opens the file; the caller then says whether status logs of an
    /// earlier pass may exist ([`may_have_logs`](Self::may_have_logs)).
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
            defer_entries: Vec::new(),
            notice_failed: false,
            asked: None,
            logs: true,
            unsynced_marks: false,
            retiring: None,
        })
    }

    /// Whether status logs of an earlier pass may exist (the default:
    /// yes).
    pub fn may_have_logs(&mut self, logs: bool) {
        self.logs = logs;
    }

    /// (device, inode) of the queue file.
    pub fn dev_ino(&self) -> (u64, u64) {
        self.file.dev_ino()
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

    /// Whether the message waits for the bounce service.
    pub fn notifying(&self) -> bool {
        self.asked.is_some()
    }

    fn mode(&self) -> u32 {
        self.file.file().metadata().map(|m| m.mode()).unwrap_or(0)
    }

    /// Whether `postsuper -e`/`-f` marked the message expired.
    fn forced_expire(&self) -> bool {
        lock::is_forced_expire(self.mode())
    }

    /// [`forced_expire`](Self::forced_expire) as the file was when it was
    /// opened, just now: no second stat.
    pub fn forced_expire_at_open(&self) -> bool {
        lock::is_forced_expire(self.file.mode_at_open())
    }

    /// Resolves every pending recipient and groups them by destination.
    /// Recipients that cannot be resolved now are deferred here; local
    /// mail to `double_bounce_sender` is discarded here, as Postfix's qmgr
    /// does (the end of a bounce loop).
    pub fn plan(
        &mut self,
        layout: &QueueLayout,
        resolver: &Resolver,
        double_bounce: &str,
    ) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        let mut failed = Vec::new();
        let mut discarded = Vec::new();
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
        // A content filter takes every recipient, unresolved.
        let filter = self
            .file
            .envelope()
            .content_filter()
            .map(|f| resolver.filter_route(f));
        // The sender-dependent tables, asked once for the message; when
        // they fail, only the remote recipients (the ones they decide)
        // are deferred.
        let (route, route_error) = match &filter {
            Some(_) => (Default::default(), None),
            None => match resolver.sender_route(self.sender()) {
                Ok(r) => (r, None),
                Err(e) => (Default::default(), Some(e.to_string())),
            },
        };
        for (i, rcpt) in pending {
            let (transport, nexthop) = match &filter {
                Some(route) => route.clone(),
                None => match resolver
                    .resolve_from(&route, &rcpt.address)
                    .map_err(|e| e.to_string())
                    .and_then(|res| match &route_error {
                        Some(e) if matches!(res.class, Class::Relay | Class::Default) => {
                            Err(e.clone())
                        }
                        _ => Ok(res),
                    }) {
                    Ok(res)
                        if res.class == Class::Local
                            && is_local_part(&res.recipient, double_bounce) =>
                    {
                        discarded.push((i, rcpt));
                        continue;
                    }
                    Ok(res) => (res.transport, res.nexthop),
                    Err(e) => {
                        failed.push((i, rcpt, format!("address resolver failure: {e}")));
                        continue;
                    }
                },
            };
            let slot = *index
                .entry((transport.clone(), nexthop.clone()))
                .or_insert_with(|| {
                    groups.push((transport, nexthop, Vec::new()));
                    groups.len() - 1
                });
            groups[slot].2.push((i, rcpt));
        }
        if !discarded.is_empty() {
            self.settle_here(
                layout,
                discarded,
                Status::Sent,
                "2.0.0",
                "undeliverable postmaster notification discarded",
            );
        }
        if !failed.is_empty() {
            let reason = failed[0].2.clone();
            let rcpts = failed.into_iter().map(|(i, r, _)| (i, r)).collect();
            self.settle_here(layout, rcpts, Status::Deferred, "4.3.0", &reason);
        }
        groups
    }

    /// Outcomes qmgr decides itself (no agent): logged with relay=none.
    fn settle_here(
        &mut self,
        layout: &QueueLayout,
        rcpts: Vec<(usize, Rcpt)>,
        status: Status,
        dsn: &str,
        reason: &str,
    ) {
        let job = self.job("none", "", rcpts);
        self.outstanding -= 1;
        let outcomes = job
            .request
            .rcpts
            .iter()
            .map(|r| Outcome {
                offset: r.offset,
                status,
                dsn: dsn.into(),
                reason: reason.to_string(),
            })
            .collect::<Vec<_>>();
        for (r, o) in job.request.rcpts.iter().zip(&outcomes) {
            log_local(&job.request, r, o);
        }
        self.record(layout, outcomes, false, &[]);
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
    pub fn apply(&mut self, layout: &QueueLayout, r: JobResult) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let outcomes = match r.outcomes {
            Ok(o) => o,
            Err(reason) => defer_all(&r.request, "4.3.0", &reason),
        };
        self.record(layout, outcomes, r.marked, &r.dsn_actions);
    }

    /// Done marks and status logs for a set of outcomes.
    /// `marked`: the agent already wrote the done marks.
    fn record(
        &mut self,
        layout: &QueueLayout,
        outcomes: Vec<Outcome>,
        marked: bool,
        dsn_actions: &[(u64, String)],
    ) {
        let mut done = Vec::new();
        let mut bounced = Vec::new();
        let mut defer = Vec::new();
        let mut bounce = Vec::new();
        let mut trace = Vec::new();
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
                orcpt: r.dsn_orcpt.clone(),
                notify: r.dsn_notify,
                status: o.dsn.clone(),
                action: String::new(),
                reason: o.reason.clone(),
                time: now,
            };
            match o.status {
                Status::Sent => {
                    done.push(i);
                    // The agent may say the mail was relayed to a server
                    // without DSN, or that the next server took the
                    // NOTIFY request over (then no notice from here).
                    let action = dsn_actions
                        .iter()
                        .find(|(off, _)| *off == o.offset)
                        .map_or("delivered", |(_, a)| a.as_str());
                    if action != "passed" && dsn::wants(r.dsn_notify, Kind::Success) {
                        trace.push(Entry {
                            action: action.to_string(),
                            ..entry
                        });
                    }
                }
                Status::Bounced => {
                    bounced.push(i);
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
        let ids = self.id.as_str();
        if !bounce.is_empty() || !trace.is_empty() {
            self.logs = true;
        }
        // The logs first, durably: a recipient marked done is no longer
        // delivered, so its notice must already be on record.
        // (Agents mark only delivered recipients; bounced ones are marked
        // here, after their log entry.)
        if let Err(e) = statuslog::append_durable(layout, Queue::Bounce, &self.id, &bounce) {
            // Not marked: try these recipients again next time.
            warning!("{ids}: bounce log: {e}: recipients deferred");
            self.deferred = true;
            for mut b in bounce {
                b.status = "4.3.0".into();
                b.action = "delayed".into();
                b.reason = format!("cannot write the bounce log: {e}");
                defer.push(b);
            }
            bounced.clear();
        }
        if let Err(e) = statuslog::append_durable(layout, Queue::Trace, &self.id, &trace) {
            warning!("{ids}: trace log: {e}: no success notice");
        }
        if marked {
            for &i in &done {
                self.file.note_done(i);
            }
            for &i in &bounced {
                if let Err(e) = self.file.mark_done(i) {
                    warning!("{ids}: cannot mark recipients done: {e}");
                }
            }
        } else {
            done.extend(bounced);
            for &i in &done {
                if let Err(e) = self.file.mark_done(i) {
                    warning!("{ids}: cannot mark recipients done: {e}");
                    break;
                }
                self.unsynced_marks = true;
            }
        }
        self.defer_entries.extend(defer);
    }

    /// The last job came back: starts the end of the pass.
    pub fn finish(&mut self, layout: &QueueLayout, policy: &Policy) -> Next {
        if self.gone(layout) {
            self.sync_marks();
            return Next::Settled;
        }
        self.write_defer_log(layout);
        // Without logs nothing was read or written since the check: no
        // need to look again before removing the file.
        let checked = !self.logs;
        self.advance(layout, policy, Step::Failure, checked)
    }

    /// The bounce service answered the request of [`Next::Ask`].
    pub fn noticed(&mut self, layout: &QueueLayout, policy: &Policy, reply: Reply) -> Next {
        let ids = self.id.to_string();
        let Some(step) = self.asked.take() else {
            return Next::Settled;
        };
        if let Err(e) = &reply {
            warning!("{ids}: delivery status notification not sent: {e}");
            self.notice_failed = true;
        }
        let ok = reply.is_ok();
        match step {
            Step::Failure => {
                if ok {
                    remove_log(layout, Queue::Bounce, &self.id);
                }
                self.advance(layout, policy, Step::Success, false)
            }
            Step::Success => {
                if ok {
                    remove_log(layout, Queue::Trace, &self.id);
                }
                self.advance(layout, policy, Step::Decide, false)
            }
            Step::Expire if ok => {
                if self.gone(layout) {
                    return Next::Settled;
                }
                let pending: Vec<usize> = self.file.envelope().pending().map(|(i, _)| i).collect();
                if let Err(e) = self.file.mark_done_durable(&pending) {
                    warning!("{ids}: cannot mark recipients done: {e}");
                }
                self.remove(layout);
                Next::Settled
            }
            Step::Warn if ok => {
                if let Err(e) = lock::mark_delay_warned(self.file.file()) {
                    warning!("{ids}: cannot record the delay warning: {e}");
                }
                self.defer(layout, policy);
                Next::Settled
            }
            Step::Expire | Step::Warn | Step::Decide => {
                self.defer(layout, policy);
                Next::Settled
            }
        }
    }

    /// Makes the done marks written so far durable (see
    /// `unsynced_marks`).
    fn sync_marks(&mut self) {
        if std::mem::take(&mut self.unsynced_marks) {
            if let Err(e) = self.file.sync_done() {
                warning!("{}: cannot mark recipients done: {e}", self.id.as_str());
            }
        }
    }

    /// postsuper moved or removed the file while it was active: it is
    /// postsuper's now (see libmail::queue::lock).
    fn gone(&self, layout: &QueueLayout) -> bool {
        let (dev, ino) = self.file.dev_ino();
        !lock::still_names_inode(&layout.path_of(Queue::Active, &self.id), dev, ino).unwrap_or(true)
    }

    /// Steps from `from` on, until one needs the bounce service.
    /// `checked`: [`gone`](Self::gone) was asked just before, with
    /// nothing waited for since.
    fn advance(
        &mut self,
        layout: &QueueLayout,
        policy: &Policy,
        from: Step,
        checked: bool,
    ) -> Next {
        let id = self.id;
        let mut step = from;
        loop {
            match step {
                Step::Failure => {
                    if self.logs && statuslog::has_entries(layout, Queue::Bounce, &id) {
                        return self.ask(&policy.bounce_service, Kind::Failure, Step::Failure);
                    }
                    step = Step::Success;
                }
                Step::Success => {
                    if self.logs && statuslog::has_entries(layout, Queue::Trace, &id) {
                        return self.ask(&policy.trace_service, Kind::Success, Step::Success);
                    }
                    step = Step::Decide;
                }
                _ => return self.decide(layout, policy, checked),
            }
        }
    }

    /// After the failure and success notices: remove, expire, warn or
    /// defer. `checked`: as for [`advance`](Self::advance).
    fn decide(&mut self, layout: &QueueLayout, policy: &Policy, checked: bool) -> Next {
        if !checked && self.gone(layout) {
            self.sync_marks();
            return Next::Settled;
        }
        let ids = self.id.to_string();
        let pending = !self.file.envelope().all_done();
        // Only a pending message can expire: no stat for the others.
        let forced = pending && self.forced_expire();
        if !pending && !self.notice_failed {
            self.remove(layout);
            return Next::Settled;
        }
        // The file outlives this step: its marks must be durable.
        self.sync_marks();
        if pending && !self.deferred && !forced && !self.notice_failed {
            // Nothing failed but recipients remain (stopping): the next
            // qmgr requeues it from active/.
            return Next::Settled;
        }
        let age = (now_f64() - self.arrival).max(0.0) as u64;
        let lifetime = if self.sender().is_empty() {
            policy.bounce_lifetime
        } else {
            policy.max_lifetime
        };
        if pending && (forced || age > lifetime) {
            if libmail::service::stopping() {
                // The next qmgr returns it.
                return Next::Settled;
            }
            // Postfix 3.7 tells a postsuper -e/-f expiry apart.
            info!(
                "{ids}: from=<{}>, status={}, returned to sender",
                self.sender(),
                if forced { "force-expired" } else { "expired" }
            );
            self.complete_defer_log(layout, forced);
            return self.ask(&policy.defer_service, Kind::Failure, Step::Expire);
        }
        if !pending && age > lifetime {
            warning!(
                "{ids}: delivery status notification still not sent after the queue lifetime -- giving up"
            );
            self.remove(layout);
            return Next::Settled;
        }
        if pending
            && self.deferred
            && policy.delay_warning > 0
            && age > policy.delay_warning
            && !lock::is_delay_warned(self.mode())
        {
            return self.ask(&policy.defer_service, Kind::Delay, Step::Warn);
        }
        self.defer(layout, policy);
        Next::Settled
    }

    /// A request to the bounce service for this message. While qmgr
    /// stops, nothing is asked: the message stays in active/ for the
    /// next qmgr.
    fn ask(&mut self, service: &str, kind: Kind, step: Step) -> Next {
        self.sync_marks();
        if libmail::service::stopping() {
            return Next::Settled;
        }
        let env = self.file.envelope();
        self.asked = Some(step);
        Next::Ask {
            service: service.to_string(),
            request: proto::Request {
                kind,
                queue_name: Queue::Active.name().to_string(),
                queue_id: self.id.to_string(),
                sender: env.sender.clone(),
                envid: env.dsn_envid.clone(),
                ret: env.dsn_ret,
                arrival: env.arrival.0,
            },
        }
    }

    /// Rewrites `defer/ID`: the newest entry of each pending recipient
    /// (this pass's over the older ones), in file order.
    fn write_defer_log(&mut self, layout: &QueueLayout) {
        let new = std::mem::take(&mut self.defer_entries);
        if new.is_empty() && !self.logs {
            // No old log and nothing new: nothing to write.
            return;
        }
        let old = if self.logs {
            statuslog::read(layout, Queue::Defer, &self.id).unwrap_or_default()
        } else {
            Vec::new()
        };
        self.logs = true;
        let old_len = old.len();
        let env = self.file.envelope();
        let mut latest: HashMap<u64, Entry> = HashMap::new();
        for e in old.into_iter().chain(new.iter().cloned()) {
            let pending = self
                .by_offset
                .get(&e.offset)
                .is_some_and(|&i| !env.recipients[i].done);
            if pending {
                latest.insert(e.offset, e);
            }
        }
        if new.is_empty() && latest.len() == old_len {
            return;
        }
        let mut entries: Vec<Entry> = latest.into_values().collect();
        entries.sort_by_key(|e| e.offset);
        if let Err(e) = statuslog::replace(layout, Queue::Defer, &self.id, &entries) {
            warning!("{}: defer log: {e}", self.id);
        }
    }

    /// Before an expiry notice: a reason for every pending recipient the
    /// defer log does not cover (never tried since a crash, or expired by
    /// postsuper before any attempt).
    fn complete_defer_log(&mut self, layout: &QueueLayout, forced: bool) {
        self.logs = true;
        let have: Vec<u64> = statuslog::read(layout, Queue::Defer, &self.id)
            .unwrap_or_default()
            .iter()
            .map(|e| e.offset)
            .collect();
        let (status, reason) = if forced {
            ("4.7.0", "message expired by the administrator")
        } else {
            ("4.4.7", "message delivery time expired")
        };
        let now = now_f64() as u64;
        let missing: Vec<Entry> = self
            .file
            .envelope()
            .pending()
            .filter(|(_, r)| !have.contains(&r.offset))
            .map(|(_, r)| Entry {
                offset: r.offset,
                recipient: r.address.clone(),
                orig_recipient: r.orig.clone(),
                orcpt: r.dsn_orcpt.clone(),
                notify: r.dsn_notify,
                status: status.into(),
                action: "delayed".into(),
                reason: reason.into(),
                time: now,
            })
            .collect();
        if let Err(e) = statuslog::append(layout, Queue::Defer, &self.id, &missing) {
            warning!("{}: defer log: {e}", self.id);
        }
    }

    /// Removes the file (into the recycling pool when it can) and its
    /// logs.
    fn remove(&mut self, layout: &QueueLayout) {
        let ids = self.id.to_string();
        let path = layout.path_of(Queue::Active, &self.id);
        match recycle::retire(layout, &path, self.dev_ino().1) {
            Ok(Retired::Pending(p)) => self.retiring = Some(p),
            Ok(Retired::Removed) => {}
            Err(e) => {
                warning!("{ids}: remove: {e}");
                return;
            }
        }
        if self.logs {
            for q in [Queue::Defer, Queue::Bounce, Queue::Trace] {
                remove_log(layout, q, &self.id);
            }
        }
        info!("{ids}: removed");
    }

    /// The end of a settled message, off the main loop: a removed file
    /// is emptied for reuse (or unlinked), and the file is closed, which
    /// frees the blocks of an unlinked one.
    pub(crate) fn reap(self, reaper: &mut Reaper) {
        if let Some(p) = &self.retiring {
            reaper.reap(self.file.file(), p);
        }
    }

    /// To `deferred/`, due after the back-off: its age, within
    /// `minimal_backoff_time` and `maximal_backoff_time`.
    fn defer(&mut self, layout: &QueueLayout, policy: &Policy) {
        let ids = self.id.to_string();
        let now = now_f64();
        let age = (now - self.arrival).max(0.0) as u64;
        let delay = age.clamp(
            policy.min_backoff,
            policy.max_backoff.max(policy.min_backoff),
        );
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
        if let Err(e) = layout.move_file(&self.id, Queue::Active, Queue::Deferred, false) {
            warning!("{ids}: move to deferred: {e}");
        }
    }
}

fn remove_log(layout: &QueueLayout, q: Queue, id: &QueueId) {
    if let Err(e) = statuslog::remove(layout, q, id) {
        warning!("{id}: remove {} log: {e}", q.name());
    }
}

/// Whether `addr`'s local part is `local` (case-insensitively).
fn is_local_part(addr: &str, local: &str) -> bool {
    let l = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    !local.is_empty() && l.eq_ignore_ascii_case(local)
}

/// Every recipient of a request deferred by qmgr itself (no agent
/// reply, or a dead destination), each logged with relay=none.
pub(crate) fn defer_all(req: &Request, dsn: &str, reason: &str) -> Vec<Outcome> {
    let out: Vec<Outcome> = req
        .rcpts
        .iter()
        .map(|rc| Outcome {
            offset: rc.offset,
            status: Status::Deferred,
            dsn: dsn.to_string(),
            reason: reason.to_string(),
        })
        .collect();
    for (rc, o) in req.rcpts.iter().zip(&out) {
        log_local(req, rc, o);
    }
    out
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
