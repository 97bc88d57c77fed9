//! What happens after an attempt: delivered, retried when, dead-lettered, or the
//! subscription paused. Pure: time and jitter come in as arguments.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Jitter spreads retries by up to this fraction either way.
pub const JITTER: f64 = 0.1;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Any 2xx within the timeout.
    Success { status: u16 },
    /// 410: the receiver is gone; pause the subscription.
    Gone,
    /// 429 or 503, with the wait the receiver asked for in `Retry-After`, if any.
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other status, a timeout, a refused connection, a TLS error, a refusal by
    /// the destination guard.
    Failed {
        status: Option<u16>,
        error: Option<String>,
    },
}

/// For people reading logs: `HTTP 500`, `timed out`, `HTTP 429, retry after 3s`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success { status } => write!(f, "HTTP {status}"),
            Outcome::Gone => f.write_str("HTTP 410 Gone"),
            Outcome::Throttled {
                status,
                retry_after: Some(wait),
            } => write!(
                f,
                "HTTP {status}, retry after {}",
                humantime::format_duration(*wait)
            ),
            Outcome::Throttled { status, .. } => write!(f, "HTTP {status}"),
            Outcome::Failed {
                status: Some(status),
                error: Some(error),
            } => write!(f, "HTTP {status}: {error}"),
            Outcome::Failed {
                status: Some(status),
                error: None,
            } => write!(f, "HTTP {status}"),
            Outcome::Failed {
                status: None,
                error: Some(error),
            } => f.write_str(error),
            Outcome::Failed {
                status: None,
                error: None,
            } => f.write_str("failed"),
        }
    }
}

/// What to do with the delivery next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryAt(i64),
    Dead,
    /// Keep it pending, pause the subscription.
    Pause,
}

/// Decides after the `attempt`-th attempt (1-based) ended with `outcome` at `now_ms`.
/// `jitter` is a number in [-1, 1].
///
/// Jitter spreads the schedule's steps either way, but it may only add to the wait a
/// receiver asked for: a retry never comes before its `Retry-After`.
pub fn next(
    outcome: &Outcome,
    attempt: u32,
    schedule: &[Duration],
    now_ms: i64,
    jitter: f64,
) -> Next {
    let jitter = jitter.clamp(-1.0, 1.0);
    let retry_at = |asked: Option<Duration>| -> Option<i64> {
        let step = schedule.get(attempt as usize - 1)?.as_millis() as f64;
        let scheduled = step * (1.0 + JITTER * jitter);
        let asked = asked.map_or(0.0, |wait| {
            wait.min(MAX_RETRY_AFTER).as_millis() as f64 * (1.0 + JITTER * jitter.abs())
        });
        // Steps are at most 7 days (checked where they are declared); saturate anyway,
        // so that no stored value can make this overflow.
        Some(now_ms.saturating_add(scheduled.max(asked).ceil() as i64))
    };
    match outcome {
        Outcome::Success { .. } => Next::Delivered,
        Outcome::Gone => Next::Pause,
        Outcome::Throttled { retry_after, .. } => {
            retry_at(*retry_after).map_or(Next::Dead, Next::RetryAt)
        }
        Outcome::Failed { .. } => retry_at(None).map_or(Next::Dead, Next::RetryAt),
    }
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): a number of seconds, or an
/// HTTP-date, which is turned into the wait from `now` (a date in the past asks for
/// no wait). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long a subscription that keeps failing is held: doubling from one minute per
/// failure past the threshold, at most an hour.
pub fn hold_for(consecutive_failures: i64, threshold: u32) -> Option<Duration> {
    let over = consecutive_failures - i64::from(threshold);
    (threshold > 0 && over >= 0)
        .then(|| Duration::from_secs(60 << over.min(6) as u32).min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: [Duration; 3] = [
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(600),
    ];

    #[test]
    fn failures_follow_the_schedule_then_dead_letter() {
        let failed = Outcome::Failed {
            status: Some(500),
            error: None,
        };
        assert_eq!(next(&failed, 1, &SCHEDULE, 0, 0.0), Next::RetryAt(10_000));
        assert_eq!(next(&failed, 2, &SCHEDULE, 0, 0.0), Next::RetryAt(60_000));
        assert_eq!(next(&failed, 3, &SCHEDULE, 0, 0.0), Next::RetryAt(600_000));
        assert_eq!(next(&failed, 4, &SCHEDULE, 0, 0.0), Next::Dead);
        assert_eq!(next(&failed, 1, &[], 0, 0.0), Next::Dead);
    }

    #[test]
    fn a_huge_step_saturates_instead_of_overflowing() {
        let failed = Outcome::Failed {
            status: None,
            error: None,
        };
        let huge = [Duration::from_secs(u64::MAX)];
        assert_eq!(
            next(&failed, 1, &huge, 1_700_000_000_000, 1.0),
            Next::RetryAt(i64::MAX)
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let failed = Outcome::Failed {
            status: None,
            error: Some("timeout".into()),
        };
        assert_eq!(next(&failed, 1, &SCHEDULE, 0, 1.0), Next::RetryAt(11_000));
        assert_eq!(next(&failed, 1, &SCHEDULE, 0, -1.0), Next::RetryAt(9_000));
        assert_eq!(next(&failed, 1, &SCHEDULE, 0, 7.0), Next::RetryAt(11_000));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let throttled = |s| Outcome::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            next(&throttled(120), 1, &SCHEDULE, 0, 0.0),
            Next::RetryAt(120_000)
        );
        assert_eq!(
            next(&throttled(1), 1, &SCHEDULE, 0, 0.0),
            Next::RetryAt(10_000)
        );
        assert_eq!(
            next(&throttled(86_400), 1, &SCHEDULE, 0, 0.0),
            Next::RetryAt(3_600_000)
        );
        assert_eq!(next(&Outcome::Gone, 1, &SCHEDULE, 0, 0.0), Next::Pause);
        assert_eq!(
            next(&Outcome::Success { status: 204 }, 9, &SCHEDULE, 0, 0.0),
            Next::Delivered
        );
    }

    #[test]
    fn jitter_only_adds_to_retry_after() {
        let asked = Outcome::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
        };
        for jitter in [-1.0, -0.5, 0.0, 0.5, 1.0] {
            let Next::RetryAt(at) = next(&asked, 1, &SCHEDULE, 0, jitter) else {
                panic!("a retry");
            };
            assert!((30_000..=33_000).contains(&at), "jitter {jitter}: {at}");
        }
        // Shorter than the schedule's step: the step (jittered) decides, never below
        // what was asked.
        let short = Outcome::Throttled {
            status: 503,
            retry_after: Some(Duration::from_millis(9_800)),
        };
        let Next::RetryAt(at) = next(&short, 1, &SCHEDULE, 0, -1.0) else {
            panic!("a retry");
        };
        assert!(at >= 9_800, "{at}");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // RFC 9110's example date, 30 s after `now`.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn outcomes_read_as_words_in_logs() {
        let shown = |o: Outcome| o.to_string();
        assert_eq!(
            shown(Outcome::Failed {
                status: Some(500),
                error: None
            }),
            "HTTP 500"
        );
        assert_eq!(
            shown(Outcome::Failed {
                status: None,
                error: Some("timed out".into())
            }),
            "timed out"
        );
        assert_eq!(
            shown(Outcome::Throttled {
                status: 429,
                retry_after: Some(Duration::from_secs(3))
            }),
            "HTTP 429, retry after 3s"
        );
        assert_eq!(shown(Outcome::Gone), "HTTP 410 Gone");
    }

    #[test]
    fn holds_grow_and_are_capped() {
        assert_eq!(hold_for(19, 20), None);
        assert_eq!(hold_for(20, 20), Some(Duration::from_secs(60)));
        assert_eq!(hold_for(21, 20), Some(Duration::from_secs(120)));
        assert_eq!(hold_for(40, 20), Some(Duration::from_secs(3600)));
        assert_eq!(hold_for(100, 0), None);
    }
}
