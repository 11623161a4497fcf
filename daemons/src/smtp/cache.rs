//! Sessions kept open between requests to the same next hop, within one
//! agent process (Postfix keeps them in scache(8); here the threads of
//! one process share them, which is where qmgr's requests for one
//! destination arrive).
//!
//! A session is kept after a finished transaction when
//! `smtp_connection_cache_on_demand` is on, for at most
//! `smtp_connection_cache_time_limit` of idleness (a reaper thread closes
//! older ones with QUIT) and is not reused once it is older than
//! `smtp_connection_reuse_time_limit`. Few sessions per next hop are
//! kept, so an idle process holds few sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::session::Session;

/// Most idle sessions kept per next hop.
const MAX_PER_KEY: usize = 8;
/// Most idle sessions kept in all.
const MAX_TOTAL: usize = 200;

type Idle = HashMap<String, Vec<(Instant, Session)>>;

pub struct Cache {
    enabled: bool,
    idle_limit: Duration,
    reuse_limit: Duration,
    idle: Arc<Mutex<Idle>>,
}

impl Cache {
    pub fn new(enabled: bool, idle_limit: Duration, reuse_limit: Duration) -> Cache {
        Cache {
            enabled: enabled && !idle_limit.is_zero(),
            idle_limit,
            reuse_limit,
            idle: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// An idle session for `key`, if one is fresh enough.
    pub fn take(&self, key: &str) -> Option<Session> {
        if !self.enabled {
            return None;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        let s = list.pop().map(|(_, s)| s);
        if list.is_empty() {
            idle.remove(key);
        }
        s
    }

    /// Keeps a session for the next request, or closes it.
    pub fn put(&self, key: &str, s: Session) {
        if !self.enabled || s.created.elapsed() >= self.reuse_limit || s.conn.pending_input() {
            close(s);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(key.to_string()).or_default();
        if list.len() >= MAX_PER_KEY || total >= MAX_TOTAL {
            drop(idle);
            close(s);
            return;
        }
        list.push((Instant::now(), s));
    }

    /// Starts the thread that closes sessions idle too long.
    pub fn start_reaper(&self) {
        if !self.enabled {
            return;
        }
        let idle = Arc::clone(&self.idle);
        let limit = self.idle_limit;
        let tick = (limit / 2).clamp(Duration::from_millis(200), Duration::from_secs(1));
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            let expired: Vec<Session> = {
                let mut map = idle.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = Vec::new();
                for list in map.values_mut() {
                    let (old, keep): (Vec<_>, Vec<_>) =
                        list.drain(..).partition(|(t, _)| t.elapsed() >= limit);
                    *list = keep;
                    out.extend(old.into_iter().map(|(_, s)| s));
                }
                map.retain(|_, l| !l.is_empty());
                out
            };
            for s in expired {
                close(s);
            }
        });
    }
}

fn close(s: Session) {
    s.quit();
}
