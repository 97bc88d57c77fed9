//! What happens after an attempt: delivered, retried when, dead-lettered, or the
//! subscription paused. Pure: time and jitter come in as arguments.

use std::time::Duration;

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
    /// 429 or 503, with the receiver's `Retry-After` in seconds if it gave one.
    Throttled {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Any other status, a timeout, a refused connection, a TLS error, a refusal by
    /// the destination guard.
    Failed {
        status: Option<u16>,
        error: Option<String>,
    },
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
pub fn next(
    outcome: &Outcome,
    attempt: u32,
    schedule: &[Duration],
    now_ms: i64,
    jitter: f64,
) -> Next {
    let retry_delay = |base: Duration| -> Option<i64> {
        let step = schedule.get(attempt as usize - 1)?;
        let delay = base.max(*step).as_millis() as f64;
        Some(now_ms + (delay * (1.0 + JITTER * jitter.clamp(-1.0, 1.0))) as i64)
    };
    match outcome {
        Outcome::Success { .. } => Next::Delivered,
        Outcome::Gone => Next::Pause,
        Outcome::Throttled { retry_after, .. } => {
            let asked = Duration::from_secs(retry_after.unwrap_or(0)).min(MAX_RETRY_AFTER);
            retry_delay(asked).map_or(Next::Dead, Next::RetryAt)
        }
        Outcome::Failed { .. } => retry_delay(Duration::ZERO).map_or(Next::Dead, Next::RetryAt),
    }
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
            retry_after: Some(s),
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
    fn holds_grow_and_are_capped() {
        assert_eq!(hold_for(19, 20), None);
        assert_eq!(hold_for(20, 20), Some(Duration::from_secs(60)));
        assert_eq!(hold_for(21, 20), Some(Duration::from_secs(120)));
        assert_eq!(hold_for(40, 20), Some(Duration::from_secs(3600)));
        assert_eq!(hold_for(100, 0), None);
    }
}
