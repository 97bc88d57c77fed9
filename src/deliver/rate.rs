//! How fast one subscriber is sent to: its declared `rate_limit` ("20/s",
//! "600/min"), and the slow-down a 429 from the receiver asks for. [`Pace`] is pure
//! (time comes in as arguments); the dispatcher keeps one per subscription, in a
//! [`Gate`] its attempts line up at (a subscription has one dispatching instance at
//! a time, so the limit holds across instances).
//!
//! Requests are spaced evenly (GCRA with a tolerance of one interval): "20/s" lets
//! one request start every 50 ms, two back to back at most after a pause, so no
//! second ever holds more than the limit plus one. A 429 halves the rate in force
//! (never below [`FLOOR_PER_S`]); it climbs back by a tenth of its ceiling per
//! second, so that 10 s after the last 429 it is back at full speed. Responses to
//! requests started before the last slow-down do not halve it again: a burst of
//! 429s from requests already on the wire counts once.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The slowest a 429 makes a subscription: one request a minute.
pub const FLOOR_PER_S: f64 = 1.0 / 60.0;
/// The highest limit that may be declared: more than this per second is no limit
/// for a webhook sender, and keeps the interval at 1 ms or more.
pub const MAX_PER_S: f64 = 1000.0;
/// How long a slow-down takes to wear off, from any depth.
pub const RECOVERY: Duration = Duration::from_secs(10);

/// The unit of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Per {
    fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "h",
        }
    }
}

/// A declared limit: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Per,
}

impl RateLimit {
    /// Reads `20/s`, `600/min`, `1000/h` (also `/sec`, `/second`, `/m`, `/minute`,
    /// `/hour`; no spaces). The error says what is wrong, without the key (the caller names it).
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let shown: String = text.chars().take(32).collect();
        let form = || {
            format!(
                "{shown:?} must be a whole number per unit, such as \"20/s\", \"600/min\" or \"1000/h\""
            )
        };
        let (count, unit) = text.split_once('/').ok_or_else(form)?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(form());
        }
        let count: u32 = count.parse().map_err(|_| form())?;
        let per = match unit {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            "h" | "hour" => Per::Hour,
            _ => return Err(form()),
        };
        let limit = RateLimit { count, per };
        if count == 0 {
            return Err(format!("{shown:?} must allow at least one request"));
        }
        if limit.per_second() > MAX_PER_S {
            return Err(format!(
                "{shown:?} is more than {MAX_PER_S}/s, the highest limit (leave rate_limit out for none)"
            ));
        }
        Ok(limit)
    }

    /// Requests per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.seconds() as f64
    }
}

/// The canonical form, which `parse` reads back: `20/s`, `600/min`, `5/h`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

/// A slow-down after a 429.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slowed {
    /// Requests per second right after the last 429.
    rate: f64,
    /// What it climbs back to: the declared limit, or (none declared) twice what was
    /// being sent when the first 429 came, beyond which no limit is kept.
    ceiling: f64,
    /// When the last 429 lowered it.
    at_ms: i64,
}

impl Slowed {
    fn rate_at(&self, now_ms: i64) -> f64 {
        let seconds = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        let climbed = self.ceiling * seconds / RECOVERY.as_secs_f64();
        (self.rate + climbed).min(self.ceiling)
    }
}

/// One subscription's pace: when the next request may start.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    limit: Option<RateLimit>,
    slowed: Option<Slowed>,
    /// GCRA's theoretical arrival time of the next request, in milliseconds.
    next_ms: f64,
    /// Requests started in the current second and in the one before (by
    /// `second`), to tell how fast a subscription without a limit was sent to.
    second: i64,
    this_second: u32,
    last_second: u32,
}

impl Pace {
    /// A pace for a subscription newly dispatched here: its first two requests may
    /// start at once (the interval of tolerance), then one per interval, so a
    /// hand-over from another instance adds at most a couple of requests to a second.
    pub fn new(limit: Option<RateLimit>) -> Pace {
        Pace {
            limit,
            ..Pace::default()
        }
    }

    /// Takes a changed declaration into account (a slow-down in progress stays).
    pub fn set_limit(&mut self, limit: Option<RateLimit>) {
        if self.limit != limit {
            self.limit = limit;
            if let (Some(slowed), Some(limit)) = (&mut self.slowed, limit) {
                slowed.ceiling = limit.per_second();
                slowed.rate = slowed.rate.min(slowed.ceiling);
            }
        }
    }

    /// The rate in force at `now_ms` (requests per second), or `None`: no limit.
    /// Forgets a slow-down that has worn off.
    pub fn rate(&mut self, now_ms: i64) -> Option<f64> {
        if let Some(slowed) = self.slowed {
            let rate = slowed.rate_at(now_ms);
            if rate < slowed.ceiling {
                return Some(rate);
            }
            self.slowed = None;
        }
        self.limit.map(RateLimit::per_second)
    }

    /// Whether the subscription is slowed down by a 429 now.
    pub fn is_slowed(&mut self, now_ms: i64) -> bool {
        self.rate(now_ms);
        self.slowed.is_some()
    }

    /// The earliest time a request may start (`now_ms` or earlier: at once).
    pub fn ready_at(&mut self, now_ms: i64) -> i64 {
        match self.rate(now_ms) {
            None => now_ms,
            Some(rate) => (self.next_ms - interval_ms(rate)).ceil() as i64,
        }
    }

    /// How many requests may start from `now_ms` until `until_ms`, after those
    /// already given turns: `None` without a limit, `Some(0)` when the next turn is
    /// later than that. Counted at the rate in force now (a slow-down only climbs).
    pub fn turns_until(&mut self, now_ms: i64, until_ms: i64) -> Option<usize> {
        let rate = self.rate(now_ms)?;
        let span_ms = until_ms - self.ready_at(now_ms).max(now_ms);
        if span_ms < 0 {
            return Some(0);
        }
        Some((span_ms as f64 / 1000.0 * rate) as usize + 1)
    }

    /// A request wants to start at `now_ms`: `Ok` takes its turn, `Err` says when to
    /// ask again.
    pub fn take(&mut self, now_ms: i64) -> Result<(), i64> {
        if let Some(rate) = self.rate(now_ms) {
            let interval = interval_ms(rate);
            let now = now_ms as f64;
            if now < self.next_ms - interval {
                return Err((self.next_ms - interval).ceil() as i64);
            }
            self.next_ms = self.next_ms.max(now) + interval;
        }
        self.count(now_ms);
        Ok(())
    }

    /// The receiver answered 429 to a request started at `started_ms`: halve the
    /// rate, unless a 429 since that request already did. Returns the new rate
    /// when it changed.
    pub fn throttled(&mut self, started_ms: i64, now_ms: i64) -> Option<f64> {
        if self.slowed.is_some_and(|s| started_ms < s.at_ms) {
            return None;
        }
        let sent = self.recent_rate(now_ms);
        let current = self.rate(now_ms);
        let ceiling = match (self.slowed, self.limit) {
            (Some(slowed), _) => slowed.ceiling,
            (None, Some(limit)) => limit.per_second(),
            (None, None) => (2.0 * sent).clamp(1.0, MAX_PER_S),
        };
        let rate = (current.unwrap_or(sent).min(ceiling) / 2.0).max(FLOOR_PER_S);
        self.slowed = Some(Slowed {
            rate,
            ceiling,
            at_ms: now_ms,
        });
        // The next request waits at least one interval of the new rate.
        self.next_ms = self.next_ms.max(now_ms as f64 + 2.0 * interval_ms(rate));
        Some(rate)
    }

    /// Requests started per second lately (a sliding estimate over the last second).
    fn recent_rate(&mut self, now_ms: i64) -> f64 {
        self.roll(now_ms);
        let into = now_ms.rem_euclid(1000) as f64 / 1000.0;
        f64::from(self.last_second) * (1.0 - into) + f64::from(self.this_second)
    }

    fn count(&mut self, now_ms: i64) {
        self.roll(now_ms);
        self.this_second = self.this_second.saturating_add(1);
    }

    fn roll(&mut self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        if second != self.second {
            self.last_second = if second == self.second + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = second;
        }
    }
}

/// One subscription's [`Pace`] shared by its attempts: they queue for their turn
/// one behind the other (first come, first served), so only the first in line
/// sleeps.
#[derive(Debug, Default)]
pub struct Gate {
    pace: std::sync::Mutex<Pace>,
    line: tokio::sync::Mutex<()>,
    /// Attempts waiting for their turn now (shown in the metrics).
    waiting: AtomicUsize,
    /// What was last reported of `waiting`, plus one (0: never).
    reported: AtomicUsize,
}

impl Gate {
    pub fn new(limit: Option<RateLimit>) -> Gate {
        Gate {
            pace: std::sync::Mutex::new(Pace::new(limit)),
            ..Gate::default()
        }
    }

    /// The pace itself, for a short look or change.
    pub fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits to be first in line; the turn is taken with [`Gate::pace`] meanwhile.
    pub async fn line_up(&self) -> InLine<'_> {
        let counted = Counted::new(&self.waiting);
        let first = self.line.lock().await;
        InLine {
            _counted: counted,
            _first: first,
        }
    }

    /// How many attempts wait for their turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many attempts wait now, if that changed since the last call (so that the
    /// metrics are told only of changes).
    pub fn waiting_changed(&self) -> Option<usize> {
        let now = self.waiting();
        let before = self.reported.swap(now + 1, Ordering::Relaxed);
        (before != now + 1).then_some(now)
    }
}

/// First in line for a turn; leaving the line (dropping this) lets the next one up.
pub struct InLine<'a> {
    _counted: Counted<'a>,
    _first: tokio::sync::MutexGuard<'a, ()>,
}

/// One in a count while it lives (also when its future is dropped mid-wait).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn interval_ms(rate: f64) -> f64 {
    1000.0 / rate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> Option<RateLimit> {
        Some(RateLimit::parse(text).unwrap())
    }

    #[test]
    fn limits_are_read_and_written_back() {
        for (text, shown, per_s) in [
            ("20/s", "20/s", 20.0),
            ("600/min", "600/min", 10.0),
            ("600/m", "600/min", 10.0),
            ("3600/hour", "3600/h", 1.0),
            ("1/second", "1/s", 1.0),
            ("1000/s", "1000/s", 1000.0),
        ] {
            let parsed = RateLimit::parse(text).unwrap();
            assert_eq!(parsed.to_string(), shown, "{text}");
            assert_eq!(parsed.per_second(), per_s, "{text}");
            assert_eq!(RateLimit::parse(shown).unwrap(), parsed);
        }
        for bad in [
            "",
            "20",
            "20/",
            "/s",
            "0/s",
            "-1/s",
            "+1/s",
            " 1/s",
            "1 /s",
            "1.5/s",
            "20/d",
            "1001/s",
            "x/s",
            "20/s/s",
            "99999999999/s",
        ] {
            assert!(RateLimit::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            RateLimit::parse("0/s")
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            RateLimit::parse("20/d")
                .unwrap_err()
                .contains("\"600/min\"")
        );
    }

    /// Takes every request as early as the pace allows, from `from_ms`, until
    /// `until_ms`; returns when each started.
    fn run(pace: &mut Pace, from_ms: i64, until_ms: i64) -> Vec<i64> {
        let mut now = from_ms;
        let mut started = Vec::new();
        while now < until_ms {
            match pace.take(now) {
                Ok(()) => started.push(now),
                Err(at) => {
                    assert!(at > now, "asked to wait until {at} at {now}");
                    now = at;
                }
            }
        }
        started
    }

    fn most_in_a_second(started: &[i64]) -> usize {
        started
            .iter()
            .map(|&t| started.iter().filter(|&&u| u >= t && u < t + 1000).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn requests_are_spaced_and_no_second_holds_more_than_the_limit_and_one() {
        let mut pace = Pace::new(limit("20/s"));
        let started = run(&mut pace, 0, 10_000);
        assert_eq!(
            started.len(),
            201,
            "20/s over 10 s, and the one of tolerance"
        );
        assert_eq!(most_in_a_second(&started), 21, "{started:?}");
        assert!(started[1..].windows(2).all(|w| w[1] - w[0] == 50));

        let mut pace = Pace::new(limit("600/min"));
        assert_eq!(run(&mut pace, 0, 60_000).len(), 601);
        let mut pace = Pace::new(limit("7/s"));
        let started = run(&mut pace, 0, 10_000);
        assert_eq!(started.len(), 71);
        assert!(most_in_a_second(&started) <= 8);
    }

    #[test]
    fn a_late_turn_loses_nothing_but_a_pause_gives_no_burst() {
        let mut pace = Pace::new(limit("10/s"));
        assert_eq!(pace.take(0), Ok(()));
        assert_eq!(pace.take(0), Ok(()), "one interval of tolerance");
        assert_eq!(pace.take(1), Err(100));
        // A turn taken late does not push the ones after it back.
        assert_eq!(pace.take(130), Ok(()));
        assert_eq!(pace.take(199), Err(200));
        assert_eq!(pace.take(200), Ok(()));
        assert_eq!(pace.take(201), Err(300));
        // After a long pause: two at once at most.
        assert_eq!(pace.take(10_000), Ok(()));
        assert_eq!(pace.take(10_000), Ok(()));
        assert_eq!(pace.take(10_000), Err(10_100));
        assert_eq!(pace.ready_at(10_050), 10_100);
    }

    #[test]
    fn turns_are_counted_for_what_may_be_leased() {
        let mut pace = Pace::new(limit("20/s"));
        assert_eq!(pace.turns_until(0, 1000), Some(21));
        assert_eq!(pace.turns_until(0, 0), Some(1));
        pace.take(0).unwrap();
        pace.take(0).unwrap();
        pace.take(50).unwrap();
        // The next turn is at 100.
        assert_eq!(pace.turns_until(60, 99), Some(0));
        assert_eq!(pace.turns_until(60, 100), Some(1));
        assert_eq!(pace.turns_until(60, 1100), Some(21));
        let mut slow = Pace::new(limit("1/min"));
        slow.take(0).unwrap();
        slow.take(0).unwrap();
        assert_eq!(slow.turns_until(1000, 30_000), Some(0), "next turn at 60 s");
        assert_eq!(slow.turns_until(1000, 60_000), Some(1));
        assert_eq!(Pace::new(None).turns_until(0, 1000), None);
    }

    #[tokio::test]
    async fn the_gate_lets_one_up_at_a_time_and_counts_who_waits() {
        let gate = Gate::new(limit("1/s"));
        assert_eq!(gate.waiting_changed(), Some(0));
        assert_eq!(gate.waiting_changed(), None, "told once");
        let first = gate.line_up().await;
        assert_eq!(gate.waiting_changed(), Some(1));
        let behind = tokio::time::timeout(Duration::from_millis(20), gate.line_up()).await;
        assert!(behind.is_err(), "a second one up while the first is");
        assert_eq!(gate.waiting(), 1, "a wait given up is not counted");
        drop(first);
        assert_eq!(gate.waiting_changed(), Some(0));
        let _next = gate.line_up().await;
    }

    #[test]
    fn without_a_limit_nothing_waits() {
        let mut pace = Pace::new(None);
        for t in 0..1000 {
            assert_eq!(pace.take(t / 10), Ok(()));
        }
        assert_eq!(pace.rate(100), None);
        assert_eq!(pace.ready_at(100), 100);
    }

    #[test]
    fn a_429_halves_the_rate_which_climbs_back_within_ten_seconds() {
        let mut pace = Pace::new(limit("20/s"));
        assert_eq!(pace.take(0), Ok(()));
        assert_eq!(pace.throttled(0, 10), Some(10.0));
        assert_eq!(pace.rate(10), Some(10.0));
        assert!(pace.is_slowed(10));
        // The next request waits one interval of the new rate.
        assert_eq!(pace.take(10), Err(110));
        // A tenth of the limit back per second.
        assert_eq!(pace.rate(1010), Some(12.0));
        assert_eq!(pace.rate(5010), Some(20.0));
        assert!(!pace.is_slowed(5010), "worn off");
        assert_eq!(pace.rate(20_000), Some(20.0));

        // The two seconds after a 429 hold about 24 requests, not 40.
        let mut pace = Pace::new(limit("20/s"));
        pace.throttled(0, 0);
        let slow = run(&mut pace, 0, 2000).len();
        assert!((20..=28).contains(&slow), "{slow}");
    }

    #[test]
    fn responses_429_of_requests_already_on_the_wire_count_once() {
        let mut pace = Pace::new(limit("40/s"));
        for t in [0, 25, 50, 75] {
            pace.take(t).unwrap();
        }
        pace.throttled(0, 100);
        for started in [25, 50, 75] {
            assert_eq!(pace.throttled(started, 101), None);
        }
        let rate = pace.rate(101).unwrap();
        assert!((20.0..20.01).contains(&rate), "halved once: {rate}");
        // A request started after the slow-down that meets a 429 halves it again.
        pace.throttled(150, 200);
        let rate = pace.rate(200).unwrap();
        assert!((10.0..10.5).contains(&rate), "{rate}");
    }

    #[test]
    fn repeated_429s_stop_at_the_floor() {
        let mut pace = Pace::new(limit("20/s"));
        for i in 0..30 {
            pace.throttled(i, i);
        }
        let rate = pace.rate(29).unwrap();
        assert!(rate < FLOOR_PER_S + 0.1, "{rate}");
        assert!(rate >= FLOOR_PER_S);
    }

    #[test]
    fn a_subscription_without_a_limit_slows_down_from_what_it_sent() {
        let mut pace = Pace::new(None);
        // 100 requests in the second before the 429.
        for t in 0..100 {
            pace.take(1000 + t * 10).unwrap();
        }
        pace.throttled(1990, 2000);
        assert_eq!(pace.rate(2000), Some(50.0));
        assert!(pace.take(2000).is_err());
        // It climbs to twice what it sent (200/s) in 10 s, and then has no limit.
        assert_eq!(pace.rate(7000), Some(150.0));
        assert_eq!(pace.rate(12_000), None);
        assert!(pace.take(12_000).is_ok() && pace.take(12_000).is_ok());
    }

    #[test]
    fn a_changed_limit_caps_a_slow_down_in_progress() {
        let mut pace = Pace::new(limit("100/s"));
        pace.throttled(0, 0);
        pace.set_limit(limit("10/s"));
        assert_eq!(pace.rate(0), Some(10.0));
        assert_eq!(pace.rate(10_000), Some(10.0));
        pace.set_limit(None);
        assert_eq!(pace.rate(20_000), None);
    }
}
