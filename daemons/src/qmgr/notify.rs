//! Requests to the bounce service, off the main loop: a few threads take
//! notice requests from a channel, each on its own connection to
//! `private/SERVICE` ([`crate::bounce::proto`]), and hand the answers
//! back as events. A bounce daemon that is slow or hung (cleanup busy,
//! a full disk) delays only the messages waiting for it, never the
//! deliveries of the others; one that is not there answers at once
//! (connection refused) and the message is deferred with its logs.

use std::path::PathBuf;

use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};

use crate::bounce::proto::{self, Reply, Request};

use super::workers::EventTx;
use super::Event;

/// Threads that talk to the bounce service.
const THREADS: usize = 4;

/// How long a request may take: the bounce daemon waits up to 100 s for
/// cleanup, per notice.
const TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) struct NoticeJob {
    /// The message (its queue ID).
    pub key: String,
    /// The master.cf service to ask (bounce, defer or trace).
    pub service: String,
    pub request: Request,
}

pub(crate) struct NoticeResult {
    pub key: String,
    pub reply: Reply,
}

pub(crate) struct Notifier {
    tx: Sender<NoticeJob>,
    in_flight: usize,
}

impl Notifier {
    pub fn new(queue_directory: PathBuf, events: EventTx) -> Notifier {
        let (tx, rx) = unbounded::<NoticeJob>();
        for n in 0..THREADS {
            let rx = rx.clone();
            let events = events.clone();
            let dir = queue_directory.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("notify-{n}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let reply = proto::request(&dir, &job.service, &job.request, TIMEOUT);
                        let r = NoticeResult {
                            key: job.key,
                            reply,
                        };
                        if events.send(Event::Notice(Box::new(r))).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                libmail::log::fatal(&format!("cannot start a thread: {e}"));
            }
        }
        Notifier { tx, in_flight: 0 }
    }

    pub fn submit(&mut self, job: NoticeJob) {
        self.in_flight += 1;
        // The threads hold the receiver for the life of the process.
        let _ = self.tx.send(job);
    }

    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
