//! Keeps a flood of refused requests from flooding the log: at most a number of
//! lines per window, and a count of the lines left out, reported on the next line
//! let through. Metrics still count every refusal.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            per_window,
            window,
            state: Mutex::new(State {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines left out since the last one let through)` when this line may be
    /// logged; `None` when it is to be left out (and counted).
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.started) >= self.window {
            state.started = now;
            state.lines = 0;
        }
        if state.lines < self.per_window {
            state.lines += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

/// At most `max` characters of `text` for a log line; longer text keeps its first
/// `max` characters and says how long it was.
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}…({} chars)", &text[..end], text.chars().count()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_limit_are_counted_and_reported_later() {
        let limiter = LogLimiter::new(2, Duration::from_millis(50));
        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), Some(0));
    }

    #[test]
    fn long_text_is_shortened_on_a_character_boundary() {
        assert_eq!(shorten("short", 64), "short");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long, 3), "ééé…(100 chars)");
    }
}
