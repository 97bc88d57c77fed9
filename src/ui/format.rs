//! How times and small values read on the pages.

use crate::clock::format_ms;

/// `2026-12-02 10:41:07 UTC`: readable, still exact to the second.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format_ms(ms))
}

/// `3 min ago`, `2 h ago`, for recent times.
pub fn ago(now_ms: i64, ms: i64) -> String {
    let seconds = (now_ms - ms).max(0) / 1000;
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// A query-string value, percent-encoded.
pub fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A path segment, percent-encoded.
pub fn path_segment(value: &str) -> String {
    query_value(value).replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(ago(120_000, 0), "2 min ago");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
