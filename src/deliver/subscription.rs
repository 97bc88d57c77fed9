//! A subscription: where to send which events, and how. Declared in the config or
//! through the API; matched against every stored event inside the append
//! transaction (transactional outbox).

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::SecretEncoding;
use crate::secret::Secret;

/// What a user declares.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub name: String,
    pub url: String,
    /// Patterns: an exact type, a prefix ending in `*` (`CLASS_*`, `course.*`), or `*`.
    pub events: Vec<String>,
    pub sources: Option<Vec<String>>,
    pub tenants: Option<Vec<String>>,
    pub basic_auth: Option<(String, Secret)>,
    pub secret: Option<Secret>,
    pub secret_encoding: SecretEncoding,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub max_in_flight: u32,
}

/// Who owns a subscription: config ones are re-synced at every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    Config,
    Api,
}

impl ManagedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ManagedBy::Config => "config",
            ManagedBy::Api => "api",
        }
    }
}

/// A stored subscription with its state.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: i64,
    pub spec: SubscriptionSpec,
    pub managed_by: ManagedBy,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub consecutive_failures: i64,
    /// Put on hold after repeated failures: nothing is sent before this time.
    pub hold_until_ms: i64,
}

impl SubscriptionSpec {
    /// Checks what the config and the API both require. Messages never show secrets.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("url must be http:// or https:// with a host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("put credentials in basic_auth, not in the url".into());
        }
        if self.events.is_empty() {
            return Err("events must list at least one pattern (\"*\" for all)".into());
        }
        if let Some(bad) = self.events.iter().find(|p| !valid_pattern(p)) {
            return Err(format!(
                "event pattern {bad:?} must be a type, a prefix ending in '*', or '*'"
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err("timeout must be between 1ms and 5m".into());
        }
        if self.retry_schedule.len() > 20 {
            return Err("retry_schedule has at most 20 steps".into());
        }
        if !(1..=256).contains(&self.max_in_flight) {
            return Err("max_in_flight must be between 1 and 256".into());
        }
        Ok(())
    }

    /// Whether an event of this type, source and tenant goes to this subscription.
    pub fn matches(&self, event_type: &str, source: &str, tenant: Option<&str>) -> bool {
        self.events.iter().any(|p| pattern_matches(p, event_type))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == source))
            && self
                .tenants
                .as_ref()
                .is_none_or(|t| tenant.is_some_and(|tenant| t.iter().any(|t| t == tenant)))
    }
}

fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty() && !pattern[..pattern.len() - 1].contains('*')
}

/// `*` matches everything, `CLASS_*` every type starting with `CLASS_`, anything
/// else only itself.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Parses a retry schedule such as `["10s", "1m", "10m"]`.
pub fn parse_schedule(steps: &[String]) -> Result<Vec<Duration>, String> {
    steps
        .iter()
        .map(|s| {
            humantime::parse_duration(s).map_err(|e| format!("retry_schedule step {s:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_by_prefix_or_all() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("CLASS_*", "CLASS_UPDATED"));
        assert!(!pattern_matches("CLASS_*", "STUDENT_CLASS_UPDATED"));
        assert!(pattern_matches("course.*", "course.student_enroll"));
        assert!(pattern_matches("payment.paid", "payment.paid"));
        assert!(!pattern_matches("payment.paid", "payment.refund"));
        assert!(valid_pattern("CLASS_*") && !valid_pattern("C*ASS") && !valid_pattern(""));
    }

    #[test]
    fn sources_and_tenants_narrow_a_subscription() {
        let spec = SubscriptionSpec {
            name: "crm".into(),
            url: "https://crm.example/hooks".into(),
            events: vec!["CLASS_*".into()],
            sources: Some(vec!["school".into()]),
            tenants: Some(vec!["my-school".into()]),
            basic_auth: None,
            secret: None,
            secret_encoding: SecretEncoding::Utf8,
            timeout: Duration::from_secs(10),
            retry_schedule: vec![],
            max_in_flight: 8,
        };
        assert!(spec.validate().is_ok());
        assert!(spec.matches("CLASS_CREATED", "school", Some("my-school")));
        assert!(!spec.matches("CLASS_CREATED", "other", Some("my-school")));
        assert!(!spec.matches("CLASS_CREATED", "school", Some("other")));
        assert!(!spec.matches("CLASS_CREATED", "school", None));
        assert!(!spec.matches("ATTENDANCE_CREATED", "school", Some("my-school")));
    }
}
