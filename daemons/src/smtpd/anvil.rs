//! The client limits Postfix keeps in anvil(8), kept in smtpd itself.
//!
//! Postfix runs one smtpd process per connection, so the counts of a
//! client's connections and requests live in a separate daemon, anvil,
//! keyed by service and client address. Facteur's smtpd is one tokio
//! process serving every connection of its master.cf service, so the same
//! table lives here, shared by the sessions: the limits are per smtpd
//! process, which is per master.cf service, as anvil's are per service.
//! (While a process that reached `max_use` finishes its last sessions
//! next to its successor, each counts its own.)
//!
//! What is counted, per client address, as anvil counts it:
//! * concurrent connections (`smtpd_client_connection_count_limit`,
//!   default 50), and connections, MAIL commands, recipients, new TLS
//!   sessions and AUTH commands per `anvil_rate_time_unit`
//!   (`smtpd_client_connection_rate_limit`, `_message_rate_limit`,
//!   `_recipient_rate_limit`, `_new_tls_session_rate_limit`,
//!   `_auth_rate_limit`; 0 = off);
//! * the rates share one window per client, which starts at the first
//!   event counted after the previous window ran out (anvil's fixed
//!   windows);
//! * clients in `smtpd_client_event_limit_exceptions` (`$mynetworks`) are
//!   neither counted nor limited.
//!
//! Like anvil, the table keeps the highest connection count and rates
//! it saw and the client that reached each; smtpd logs them every
//! `anvil_status_update_time` and when it exits, in anvil's words
//! (`statistics: max connection rate 3/60s for (smtp:192.0.2.1) at Dec  3
//! 04:00:00`), and starts over.
//!
//! Memory stays bounded: a client with no connection whose window ran
//! out is forgotten (the table is swept once per time unit), and the
//! table holds at most [`MAX_CLIENTS`] addresses; past that, the idle
//! clients seen longest ago are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libmail::address::networks::NetworkList;
use libmail::config::params::Params;
use libmail::service::{num_param, time_param};

/// The most client addresses the table remembers.
pub const MAX_CLIENTS: usize = 20_000;

/// The events with a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connect,
    Mail,
    Rcpt,
    NewTls,
    Auth,
}

impl Event {
    fn index(self) -> usize {
        self as usize
    }
}

/// The limits (0 = no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `smtpd_client_connection_count_limit`.
    pub connection_count: u32,
    /// `smtpd_client_connection_rate_limit`.
    pub connection_rate: u32,
    /// `smtpd_client_message_rate_limit`.
    pub message_rate: u32,
    /// `smtpd_client_recipient_rate_limit`.
    pub recipient_rate: u32,
    /// `smtpd_client_new_tls_session_rate_limit`.
    pub new_tls_rate: u32,
    /// `smtpd_client_auth_rate_limit`.
    pub auth_rate: u32,
    /// `anvil_rate_time_unit`.
    pub unit: Duration,
}

impl Limits {
    /// Every limit off, counted per `unit`: the start of a test's set-up.
    #[cfg(test)]
    pub(crate) fn off(unit: Duration) -> Limits {
        Limits {
            connection_count: 0,
            connection_rate: 0,
            message_rate: 0,
            recipient_rate: 0,
            new_tls_rate: 0,
            auth_rate: 0,
            unit,
        }
    }

    pub fn from_params(p: &Params) -> Limits {
        let n =
            |name: &str, default: i64| num_param(p, name, default).clamp(0, u32::MAX as i64) as u32;
        Limits {
            connection_count: n("smtpd_client_connection_count_limit", 50),
            connection_rate: n("smtpd_client_connection_rate_limit", 0),
            message_rate: n("smtpd_client_message_rate_limit", 0),
            recipient_rate: n("smtpd_client_recipient_rate_limit", 0),
            new_tls_rate: n("smtpd_client_new_tls_session_rate_limit", 0),
            auth_rate: n("smtpd_client_auth_rate_limit", 0),
            unit: Duration::from_secs(time_param(p, "anvil_rate_time_unit", 60).max(1)),
        }
    }

    /// Whether any limit is on (else nothing is counted).
    pub fn any(&self) -> bool {
        self.connection_count > 0
            || self.connection_rate > 0
            || self.message_rate > 0
            || self.recipient_rate > 0
            || self.new_tls_rate > 0
            || self.auth_rate > 0
    }

    /// The rate limit of an event.
    pub fn rate_limit(&self, e: Event) -> u32 {
        match e {
            Event::Connect => self.connection_rate,
            Event::Mail => self.message_rate,
            Event::Rcpt => self.recipient_rate,
            Event::NewTls => self.new_tls_rate,
            Event::Auth => self.auth_rate,
        }
    }
}

/// One client's counts.
#[derive(Debug, Clone)]
struct Entry {
    /// Connections open now.
    count: u32,
    /// Where the current rate window started.
    start: Instant,
    rates: [u32; 5],
    /// The last event (for eviction).
    seen: Instant,
}

/// The highest value seen since the last report, who reached it and
/// when (seconds since the epoch).
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    value: u32,
    addr: Option<IpAddr>,
    at: i64,
}

impl Peak {
    fn note(&mut self, value: u32, addr: Option<IpAddr>) {
        if value > self.value {
            *self = Peak {
                value,
                addr,
                at: libmail::date::now(),
            };
        }
    }
}

/// The counts of every client, with time passed in (tests need no clock).
#[derive(Debug)]
pub struct Table {
    clients: HashMap<IpAddr, Entry>,
    unit: Duration,
    cap: usize,
    last_sweep: Option<Instant>,
    /// Highest rate of each event, connection count, table size.
    rate_peaks: [Peak; 5],
    count_peak: Peak,
    size_peak: Peak,
}

impl Table {
    pub fn new(unit: Duration, cap: usize) -> Table {
        Table {
            clients: HashMap::new(),
            unit,
            cap: cap.max(1),
            last_sweep: None,
            rate_peaks: [Peak::default(); 5],
            count_peak: Peak::default(),
            size_peak: Peak::default(),
        }
    }

    /// anvil's statistics lines for the peaks since the last call
    /// (`service`: the master.cf service name), then forgets them.
    pub fn statistics(&mut self, service: &str) -> Vec<String> {
        let unit = self.unit.as_secs();
        let who = |p: &Peak| {
            p.addr
                .map_or_else(String::new, |a| format!(" for ({service}:{a})"))
        };
        let at = |p: &Peak| libmail::date::syslog_stamp(p.at);
        let mut out = Vec::new();
        for (ev, what) in [
            (Event::Connect, "connection rate"),
            (Event::Mail, "message rate"),
            (Event::Rcpt, "recipient rate"),
            (Event::NewTls, "newtls rate"),
            (Event::Auth, "auth rate"),
        ] {
            let p = std::mem::take(&mut self.rate_peaks[ev.index()]);
            if p.value > 0 {
                out.push(format!(
                    "statistics: max {what} {}/{unit}s{} at {}",
                    p.value,
                    who(&p),
                    at(&p)
                ));
            }
            if ev == Event::Connect {
                let c = std::mem::take(&mut self.count_peak);
                if c.value > 0 {
                    out.push(format!(
                        "statistics: max connection count {}{} at {}",
                        c.value,
                        who(&c),
                        at(&c)
                    ));
                }
            }
        }
        let s = std::mem::take(&mut self.size_peak);
        if s.value > 0 {
            out.push(format!(
                "statistics: max cache size {} at {}",
                s.value,
                at(&s)
            ));
        }
        out
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// A connection opens: (connections now, connections this window).
    pub fn connect(&mut self, addr: IpAddr, now: Instant) -> (u32, u32) {
        let unit = self.unit;
        let e = self.entry(addr, now);
        e.count += 1;
        let count = e.count;
        let rate = Self::incr_in(e, Event::Connect, now, unit);
        self.count_peak.note(count, Some(addr));
        self.rate_peaks[Event::Connect.index()].note(rate, Some(addr));
        (count, rate)
    }

    /// A connection counted by [`connect`](Self::connect) closes.
    pub fn disconnect(&mut self, addr: IpAddr, now: Instant) {
        if let Some(e) = self.clients.get_mut(&addr) {
            e.count = e.count.saturating_sub(1);
            e.seen = now;
        }
        self.maybe_sweep(now);
    }

    /// Counts an event: its number in this window, this one included.
    pub fn incr(&mut self, addr: IpAddr, ev: Event, now: Instant) -> u32 {
        let unit = self.unit;
        let e = self.entry(addr, now);
        let rate = Self::incr_in(e, ev, now, unit);
        self.rate_peaks[ev.index()].note(rate, Some(addr));
        rate
    }

    /// The number of events in this window, without counting one.
    pub fn peek(&self, addr: IpAddr, ev: Event, now: Instant) -> u32 {
        match self.clients.get(&addr) {
            Some(e) if !Self::expired(e, now, self.unit) => e.rates[ev.index()],
            _ => 0,
        }
    }

    fn expired(e: &Entry, now: Instant, unit: Duration) -> bool {
        now.saturating_duration_since(e.start) >= unit
    }

    fn incr_in(e: &mut Entry, ev: Event, now: Instant, unit: Duration) -> u32 {
        if Self::expired(e, now, unit) {
            e.start = now;
            e.rates = [0; 5];
        }
        let r = &mut e.rates[ev.index()];
        *r = r.saturating_add(1);
        e.seen = now;
        *r
    }

    fn entry(&mut self, addr: IpAddr, now: Instant) -> &mut Entry {
        self.maybe_sweep(now);
        if !self.clients.contains_key(&addr) && self.clients.len() >= self.cap {
            self.sweep(now);
            self.evict();
        }
        if !self.clients.contains_key(&addr) {
            let size = u32::try_from(self.clients.len() + 1).unwrap_or(u32::MAX);
            self.size_peak.note(size, None);
        }
        self.clients.entry(addr).or_insert(Entry {
            count: 0,
            start: now,
            rates: [0; 5],
            seen: now,
        })
    }

    /// Once per time unit, forgets the idle clients.
    fn maybe_sweep(&mut self, now: Instant) {
        match self.last_sweep {
            Some(t) if now.saturating_duration_since(t) < self.unit => {}
            _ => self.sweep(now),
        }
    }

    /// Forgets clients with no connection whose window ran out.
    pub fn sweep(&mut self, now: Instant) {
        let unit = self.unit;
        self.clients
            .retain(|_, e| e.count > 0 || !Self::expired(e, now, unit));
        self.last_sweep = Some(now);
    }

    /// The table is full of recent clients: the idle ones seen longest
    /// ago go until a tenth of the room is free. Clients with open
    /// connections stay (their number is bounded by the process limit).
    fn evict(&mut self) {
        if self.clients.len() < self.cap {
            return;
        }
        let target = self.cap - self.cap / 10 - 1;
        let mut idle: Vec<(Instant, IpAddr)> = self
            .clients
            .iter()
            .filter(|(_, e)| e.count == 0)
            .map(|(a, e)| (e.seen, *a))
            .collect();
        idle.sort();
        let excess = self.clients.len().saturating_sub(target);
        for (_, a) in idle.into_iter().take(excess) {
            self.clients.remove(&a);
        }
    }
}

/// The limits of one smtpd service, shared by its sessions.
pub struct ClientLimits {
    pub limits: Limits,
    /// The master.cf service name, for the warnings.
    pub service: String,
    exceptions: NetworkList,
    table: Mutex<Table>,
}

impl ClientLimits {
    /// From main.cf (and master.cf's -o); None when every limit is off.
    pub fn from_params(p: &Params, service: &str) -> Result<Option<ClientLimits>, String> {
        let limits = Limits::from_params(p);
        if !limits.any() {
            return Ok(None);
        }
        let exceptions = NetworkList::from_param(p, "smtpd_client_event_limit_exceptions")
            .map_err(|e| e.to_string())?;
        Ok(Some(ClientLimits::new(limits, service, exceptions)))
    }

    pub fn new(limits: Limits, service: &str, exceptions: NetworkList) -> ClientLimits {
        let table = Table::new(limits.unit, MAX_CLIENTS);
        ClientLimits {
            limits,
            service: service.to_string(),
            exceptions,
            table: Mutex::new(table),
        }
    }

    /// True when the exceptions list may block ([`NetworkList::may_block`]).
    pub fn may_block(&self) -> bool {
        self.exceptions.may_block()
    }

    /// Problems with `smtpd_client_event_limit_exceptions` worth a warning.
    pub fn warnings(&self) -> &[String] {
        self.exceptions.warnings()
    }

    /// Whether a client is exempt (`smtpd_client_event_limit_exceptions`);
    /// a lookup error counts as not exempt, with a warning.
    pub fn exempt(&self, name: &str, addr: Option<IpAddr>) -> Result<bool, String> {
        self.exceptions
            .matches(Some(name), addr)
            .map_err(|e| format!("smtpd_client_event_limit_exceptions: table lookup problem: {e}"))
    }

    /// The statistics lines since the last call ([`Table::statistics`]).
    pub fn statistics(&self) -> Vec<String> {
        self.table().statistics(&self.service)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection opens: the guard counts it until dropped; with the
    /// connection count and rate.
    pub fn connect(self: &Arc<Self>, addr: IpAddr) -> (Connected, u32, u32) {
        let (count, rate) = self.table().connect(addr, Instant::now());
        (
            Connected {
                limits: self.clone(),
                addr,
            },
            count,
            rate,
        )
    }

    /// Counts an event when its limit is on: `Some(rate)` when the
    /// client is now over the limit.
    pub fn over(&self, addr: IpAddr, ev: Event) -> Option<u32> {
        let limit = self.limits.rate_limit(ev);
        if limit == 0 {
            return None;
        }
        let rate = self.table().incr(addr, ev, Instant::now());
        (rate > limit).then_some(rate)
    }

    /// Like [`over`](Self::over) without counting (a new TLS session is
    /// counted once the handshake made one: [`count`](Self::count)).
    pub fn over_already(&self, addr: IpAddr, ev: Event) -> Option<u32> {
        let limit = self.limits.rate_limit(ev);
        if limit == 0 {
            return None;
        }
        let rate = self.table().peek(addr, ev, Instant::now());
        (rate > limit).then_some(rate)
    }

    /// Counts an event (when its limit is on).
    pub fn count(&self, addr: IpAddr, ev: Event) {
        if self.limits.rate_limit(ev) > 0 {
            self.table().incr(addr, ev, Instant::now());
        }
    }
}

/// An open connection, counted until dropped.
pub struct Connected {
    limits: Arc<ClientLimits>,
    addr: IpAddr,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.limits.table().disconnect(self.addr, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const UNIT: Duration = Duration::from_secs(60);

    #[test]
    fn statistics_name_the_peaks_once_then_start_over() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 100);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.7"));
        t.connect(a, t0);
        t.connect(b, t0);
        t.connect(b, t0);
        t.incr(a, Event::Mail, t0);
        let lines = t.statistics("smtp");
        let stamp = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d";
        let want = [
            format!(
                r"^statistics: max connection rate 2/60s for \(smtp:192\.0\.2\.7\) at {stamp}$"
            ),
            format!(r"^statistics: max connection count 2 for \(smtp:192\.0\.2\.7\) at {stamp}$"),
            format!(r"^statistics: max message rate 1/60s for \(smtp:192\.0\.2\.1\) at {stamp}$"),
            format!(r"^statistics: max cache size 2 at {stamp}$"),
        ];
        assert_eq!(lines.len(), want.len(), "{lines:?}");
        for (l, w) in lines.iter().zip(&want) {
            assert!(regex::Regex::new(w).unwrap().is_match(l), "{l} !~ {w}");
        }
        // Reported peaks are forgotten: nothing new, nothing said.
        assert!(t.statistics("smtp").is_empty());
        // A known client connects again: its rate and count (the table
        // did not grow, so no cache size line).
        t.connect(a, t0 + UNIT);
        assert_eq!(t.statistics("smtp").len(), 2);
    }

    #[test]
    fn connections_are_counted_until_they_close() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 100);
        let a = ip("192.0.2.1");
        assert_eq!(t.connect(a, t0), (1, 1));
        assert_eq!(t.connect(a, t0), (2, 2));
        assert_eq!(t.connect(ip("192.0.2.2"), t0), (1, 1));
        t.disconnect(a, t0);
        assert_eq!(t.connect(a, t0 + Duration::from_secs(1)), (2, 3));
    }

    #[test]
    fn rates_restart_after_the_time_unit() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 100);
        let a = ip("192.0.2.1");
        for n in 1..=5 {
            assert_eq!(
                t.incr(a, Event::Mail, t0 + Duration::from_secs(n)),
                n as u32
            );
        }
        assert_eq!(t.incr(a, Event::Rcpt, t0 + Duration::from_secs(10)), 1);
        assert_eq!(t.peek(a, Event::Mail, t0 + Duration::from_secs(59)), 5);
        // The window started at the first event, t0 + 1s.
        assert_eq!(t.peek(a, Event::Mail, t0 + Duration::from_secs(61)), 0);
        assert_eq!(t.incr(a, Event::Mail, t0 + Duration::from_secs(61)), 1);
        assert_eq!(t.peek(a, Event::Rcpt, t0 + Duration::from_secs(62)), 0);
    }

    #[test]
    fn peek_does_not_count() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 100);
        let a = ip("2001:db8::1");
        assert_eq!(t.peek(a, Event::NewTls, t0), 0);
        assert!(t.is_empty());
        t.incr(a, Event::NewTls, t0);
        assert_eq!(t.peek(a, Event::NewTls, t0), 1);
        assert_eq!(t.peek(a, Event::NewTls, t0), 1);
    }

    #[test]
    fn idle_clients_are_forgotten_busy_ones_kept() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 100);
        let (idle, busy) = (ip("192.0.2.1"), ip("192.0.2.2"));
        t.incr(idle, Event::Mail, t0);
        t.connect(busy, t0);
        assert_eq!(t.len(), 2);
        // Another client, a time unit later, triggers the sweep.
        t.incr(ip("192.0.2.3"), Event::Auth, t0 + UNIT);
        assert_eq!(t.len(), 2);
        assert_eq!(t.peek(idle, Event::Mail, t0 + UNIT), 0);
        // The busy client's connection is still counted.
        assert_eq!(t.connect(busy, t0 + UNIT).0, 2);
        t.disconnect(busy, t0 + UNIT);
        t.disconnect(busy, t0 + UNIT);
        t.sweep(t0 + UNIT * 2);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_never_grows_past_its_cap() {
        let t0 = Instant::now();
        let mut t = Table::new(UNIT, 50);
        let busy = ip("198.51.100.1");
        t.connect(busy, t0);
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
            t.incr(a, Event::Connect, t0 + Duration::from_millis(i as u64));
            assert!(t.len() <= 50, "{}", t.len());
        }
        // The client with an open connection was not evicted; the most
        // recent ones are still there.
        assert_eq!(t.connect(busy, t0 + Duration::from_secs(2)).0, 2);
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + 999));
        assert_eq!(t.peek(last, Event::Connect, t0 + Duration::from_secs(2)), 1);
    }

    fn limits(f: impl FnOnce(&mut Limits)) -> Arc<ClientLimits> {
        let mut l = Limits::off(UNIT);
        f(&mut l);
        let ex =
            NetworkList::new("smtpd_client_event_limit_exceptions", "192.0.2.0/24", false).unwrap();
        Arc::new(ClientLimits::new(l, "smtp", ex))
    }

    #[test]
    fn an_event_is_over_only_past_its_limit_and_only_when_on() {
        let l = limits(|l| l.message_rate = 2);
        let a = ip("203.0.113.5");
        assert_eq!(l.over(a, Event::Mail), None);
        assert_eq!(l.over(a, Event::Mail), None);
        assert_eq!(l.over(a, Event::Mail), Some(3));
        // Off: never over, never counted.
        for _ in 0..10 {
            assert_eq!(l.over(a, Event::Rcpt), None);
        }
        assert_eq!(l.table().peek(a, Event::Rcpt, Instant::now()), 0);
    }

    #[test]
    fn new_tls_sessions_are_checked_before_and_counted_after() {
        let l = limits(|l| l.new_tls_rate = 1);
        let a = ip("203.0.113.5");
        assert_eq!(l.over_already(a, Event::NewTls), None);
        l.count(a, Event::NewTls);
        assert_eq!(l.over_already(a, Event::NewTls), None);
        l.count(a, Event::NewTls);
        assert_eq!(l.over_already(a, Event::NewTls), Some(2));
    }

    #[test]
    fn the_guard_uncounts_its_connection() {
        let l = limits(|l| l.connection_count = 1);
        let a = ip("203.0.113.5");
        let (g1, c1, _) = l.connect(a);
        let (g2, c2, _) = l.connect(a);
        assert_eq!((c1, c2), (1, 2));
        drop(g2);
        drop(g1);
        let (_g, c, r) = l.connect(a);
        assert_eq!((c, r), (1, 3));
    }

    #[test]
    fn exceptions_use_the_network_list() {
        let l = limits(|_| {});
        assert_eq!(l.exempt("unknown", Some(ip("192.0.2.9"))), Ok(true));
        assert_eq!(l.exempt("unknown", Some(ip("203.0.113.5"))), Ok(false));
    }
}
