//! Per-destination concurrency with feedback, after Postfix's scheduler
//! (SCHEDULER_README): a destination starts at
//! `initial_destination_concurrency` parallel deliveries, grows by
//! 1/window per delivery that reached the site, shrinks by 1/window per
//! delivery that could not (connection or handshake failure), and when
//! failures add up to `TRANSPORT_destination_concurrency_failed_cohort_limit`
//! windows' worth (pseudo-cohorts) without a success in between, the
//! destination is declared dead: its waiting mail is deferred at once
//! ("delivery temporarily suspended: REASON") instead of hammering a site
//! that is down, until `minimal_backoff_time` has passed; then it is tried
//! again at the initial concurrency.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Window {
    limit: f64,
    initial: f64,
    window: f64,
    fail_cohorts: f64,
    cohort_limit: f64,
    dead_until: Option<Instant>,
    /// Until when failures not yet forgiven are remembered while the
    /// destination has no mail (a trickle of messages must add up too).
    remember_until: Option<Instant>,
    reason: String,
    dsn: String,
}

/// How a delivery went, as far as the site is concerned (the agent says
/// so: `libmail::deliver::site_failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// The site answered (whatever it said about the recipients).
    Reached,
    /// No server of the site could be reached or talked to.
    SiteFailure { dsn: String, reason: String },
}

impl Window {
    /// `limit`: the destination concurrency limit; `initial`:
    /// `initial_destination_concurrency`; `cohort_limit`: the failed
    /// cohort limit (0: never dead).
    pub fn new(limit: usize, initial: usize, cohort_limit: usize) -> Window {
        let limit = limit.max(1) as f64;
        let initial = (initial.max(1) as f64).min(limit);
        Window {
            limit,
            initial,
            window: initial,
            fail_cohorts: 0.0,
            cohort_limit: cohort_limit as f64,
            dead_until: None,
            remember_until: None,
            reason: String::new(),
            dsn: String::new(),
        }
    }

    /// How many deliveries may run at once now (0 while dead).
    pub fn allowed(&mut self, now: Instant) -> usize {
        if let Some(t) = self.dead_until {
            if now < t {
                return 0;
            }
            // Time to try again, carefully.
            self.dead_until = None;
            self.window = self.initial;
            self.fail_cohorts = 0.0;
        }
        self.window.floor().max(1.0) as usize
    }

    /// Whether the destination is dead now; with the reason to give the
    /// mail deferred meanwhile (`delivery temporarily suspended: ...`).
    pub fn dead(&self, now: Instant) -> Option<(&str, String)> {
        match self.dead_until {
            Some(t) if now < t => Some((
                &self.dsn,
                format!("delivery temporarily suspended: {}", self.reason),
            )),
            _ => None,
        }
    }

    /// Whether an idle destination must be kept for what it remembers
    /// (dead, or failures that would count towards it).
    pub fn worth_keeping(&self, now: Instant) -> bool {
        self.dead(now).is_some() || self.remember_until.is_some_and(|t| now < t)
    }

    /// Applies one delivery's outcome. Returns true when this made the
    /// destination dead.
    pub fn feedback(&mut self, f: Feedback, now: Instant, backoff: Duration) -> bool {
        match f {
            Feedback::Reached => {
                self.fail_cohorts = 0.0;
                self.remember_until = None;
                self.window = (self.window + 1.0 / self.window).min(self.limit);
                false
            }
            Feedback::SiteFailure { dsn, reason } => {
                if self.dead_until.is_some() {
                    return false;
                }
                self.fail_cohorts += 1.0 / self.window;
                self.remember_until = Some(now + backoff);
                self.window = (self.window - 1.0 / self.window).max(1.0);
                self.reason = reason;
                self.dsn = dsn;
                if self.cohort_limit > 0.0 && self.fail_cohorts >= self.cohort_limit - 1e-9 {
                    self.dead_until = Some(now + backoff);
                    return true;
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Feedback {
        Feedback::SiteFailure {
            dsn: "4.4.1".into(),
            reason: "connect to x[192.0.2.1]:25: Connection refused".into(),
        }
    }

    #[test]
    fn slow_start_grows_to_the_limit() {
        let now = Instant::now();
        let mut w = Window::new(20, 5, 1);
        assert_eq!(w.allowed(now), 5);
        for _ in 0..200 {
            w.feedback(Feedback::Reached, now, Duration::from_secs(300));
        }
        assert_eq!(w.allowed(now), 20);
        // The initial value never exceeds the limit (local: 2).
        assert_eq!(Window::new(2, 5, 1).allowed(now), 2);
    }

    #[test]
    fn a_failed_cohort_makes_the_destination_dead_until_the_backoff() {
        let now = Instant::now();
        let backoff = Duration::from_secs(300);
        let mut w = Window::new(20, 5, 1);
        let mut died_at = None;
        for i in 0..20 {
            if w.feedback(fail(), now, backoff) {
                died_at = Some(i + 1);
                break;
            }
        }
        // One pseudo-cohort: about a window's worth of failures (the
        // window shrinks as they come).
        let n = died_at.expect("dead after one failed cohort");
        assert!((3..=6).contains(&n), "dead after {n} failures");
        assert_eq!(w.allowed(now), 0);
        let (dsn, reason) = w.dead(now).unwrap();
        assert_eq!(dsn, "4.4.1");
        assert_eq!(
            reason,
            "delivery temporarily suspended: connect to x[192.0.2.1]:25: Connection refused"
        );
        // After the back-off: tried again at the initial concurrency.
        let later = now + backoff;
        assert!(w.dead(later).is_none());
        assert_eq!(w.allowed(later), 5);
    }

    #[test]
    fn failures_are_remembered_for_a_while_when_idle() {
        let now = Instant::now();
        let backoff = Duration::from_secs(300);
        let mut w = Window::new(20, 5, 1);
        assert!(!w.worth_keeping(now));
        w.feedback(fail(), now, backoff);
        assert!(w.worth_keeping(now));
        assert!(!w.worth_keeping(now + backoff));
        w.feedback(Feedback::Reached, now, backoff);
        assert!(!w.worth_keeping(now));
    }

    #[test]
    fn a_success_forgives_earlier_failures() {
        let now = Instant::now();
        let mut w = Window::new(20, 5, 1);
        for _ in 0..200 {
            w.feedback(fail(), now, Duration::from_secs(1));
            w.feedback(Feedback::Reached, now, Duration::from_secs(1));
        }
        assert!(w.dead(now).is_none());
        // A cohort limit of 0 never declares a destination dead.
        let mut never = Window::new(20, 5, 0);
        for _ in 0..100 {
            assert!(!never.feedback(fail(), now, Duration::from_secs(1)));
        }
        assert_eq!(never.allowed(now), 1);
    }
}
