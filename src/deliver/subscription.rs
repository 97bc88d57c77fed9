//! A subscription: where to send which events, and how. Declared in the config or
//! through the API; matched against every stored event inside the append
//! transaction (transactional outbox).

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::ordering::Ordering;
use super::rate::RateLimit;
use super::signing::{PreviousKey, Rotated, Signing};
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
    /// HMAC: the shared secret. Ed25519: the `whsk_` secret key classhook generated.
    pub secret: Option<Secret>,
    pub secret_encoding: SecretEncoding,
    /// How `webhook-signature` is signed (`v1` HMAC or `v1a` ed25519).
    pub signing: Signing,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub max_in_flight: u32,
    /// Whether one entity's deliveries go one at a time, in stored order.
    pub ordering: Ordering,
    /// At most this many requests per second or minute (across all instances);
    /// `None`: only `max_in_flight` bounds them.
    pub rate_limit: Option<RateLimit>,
}

/// What a subscription gets for a field its declaration leaves out (config file
/// and API alike).
pub mod defaults {
    use std::time::Duration;

    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// Retries after the first attempt.
    pub const RETRY_SCHEDULE: [Duration; 3] = [
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_secs(600),
    ];
    pub const MAX_IN_FLIGHT: u32 = 8;
}

impl SubscriptionSpec {
    /// The names of the fields whose values differ from `other`'s (secrets are
    /// compared, never shown). Every field is named here: a new one must be added.
    pub fn differences(&self, other: &SubscriptionSpec) -> Vec<&'static str> {
        let SubscriptionSpec {
            name: _,
            url,
            events,
            sources,
            tenants,
            basic_auth,
            secret,
            secret_encoding,
            signing,
            timeout,
            retry_schedule,
            max_in_flight,
            ordering,
            rate_limit,
        } = self;
        [
            ("url", *url != other.url),
            ("events", *events != other.events),
            ("sources", *sources != other.sources),
            ("tenants", *tenants != other.tenants),
            ("basic_auth", *basic_auth != other.basic_auth),
            ("secret", *secret != other.secret),
            ("secret_encoding", *secret_encoding != other.secret_encoding),
            ("signing", *signing != other.signing),
            ("timeout", *timeout != other.timeout),
            ("retry_schedule", *retry_schedule != other.retry_schedule),
            ("max_in_flight", *max_in_flight != other.max_in_flight),
            ("ordering", *ordering != other.ordering),
            ("rate_limit", *rate_limit != other.rate_limit),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect()
    }

    /// A subscription of `name` with every optional field at its default (its url and
    /// events still to be set).
    pub fn with_defaults(name: String) -> SubscriptionSpec {
        SubscriptionSpec {
            name,
            url: String::new(),
            events: Vec::new(),
            sources: None,
            tenants: None,
            basic_auth: None,
            secret: None,
            secret_encoding: SecretEncoding::Utf8,
            signing: Signing::Hmac,
            timeout: defaults::TIMEOUT,
            retry_schedule: defaults::RETRY_SCHEDULE.to_vec(),
            max_in_flight: defaults::MAX_IN_FLIGHT,
            ordering: Ordering::None,
            rate_limit: None,
        }
    }
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
    pub id: crate::store::SubscriptionId,
    pub spec: SubscriptionSpec,
    pub managed_by: ManagedBy,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub consecutive_failures: i64,
    /// Put on hold after repeated failures: nothing is sent before this time.
    pub hold_until_ms: i64,
    /// With ed25519 signing: the public key (`whpk_…`), stored in plain text so
    /// that it shows without opening secrets.
    pub public_key: Option<String>,
    /// Keys replaced by a rotation, still valid until they expire.
    pub previous_keys: Vec<PreviousKey>,
    /// The last rotation of its key.
    pub rotated: Option<Rotated>,
}

#[cfg(test)]
impl Subscription {
    /// `spec` as if just stored under id 1: active, never failed, never rotated.
    pub(crate) fn unstored(spec: SubscriptionSpec, managed_by: ManagedBy) -> Subscription {
        Subscription {
            id: crate::store::SubscriptionId(1),
            spec,
            managed_by,
            paused: false,
            paused_reason: None,
            consecutive_failures: 0,
            hold_until_ms: 0,
            public_key: None,
            previous_keys: Vec::new(),
            rotated: None,
        }
    }
}

/// Limits on what a subscription declares, the same in the config and the API (the
/// OpenAPI document states them): they bound the work every stored event costs (the
/// writer matches each one against every subscription) and the arithmetic on
/// durations.
pub mod limits {
    use std::time::Duration;

    pub const NAME_MAX: usize = 100;
    pub const URL_MAX: usize = 2048;
    /// Event patterns per subscription.
    pub const PATTERNS_MAX: usize = 100;
    /// Entries of `sources` and of `tenants`.
    pub const LIST_MAX: usize = 100;
    /// Characters of a pattern, a source, a tenant, a Basic Auth username.
    pub const TEXT_MAX: usize = 200;
    /// Characters of a secret or a Basic Auth password.
    pub const SECRET_MAX: usize = 1024;
    pub const TIMEOUT_MIN: Duration = Duration::from_millis(1);
    pub const TIMEOUT_MAX: Duration = Duration::from_secs(300);
    pub const RETRY_STEPS_MAX: usize = 20;
    pub const RETRY_STEP_MAX: Duration = Duration::from_secs(7 * 86_400);
    pub const IN_FLIGHT_MAX: u32 = 256;
}

/// What is wrong with a declared subscription: the field and the problem (never a
/// secret's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

impl SubscriptionSpec {
    /// Checks what the config and the API both require. Messages never show secrets.
    pub fn validate(&self) -> Result<(), SpecError> {
        use limits::*;
        let chars = |s: &str| s.chars().count();
        if !(1..=NAME_MAX).contains(&chars(&self.name))
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(spec_error(
                "name",
                format!(
                    "{:?} must be 1 to {NAME_MAX} characters, only letters, digits, '-', '_' and '.'",
                    truncate(&self.name)
                ),
            ));
        }
        if chars(&self.url) > URL_MAX {
            return Err(spec_error(
                "url",
                format!("must be at most {URL_MAX} characters"),
            ));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| spec_error("url", format!("is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(spec_error("url", "must be http:// or https:// with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(spec_error(
                "url",
                "put credentials in basic_auth, not in the url",
            ));
        }
        if self.events.is_empty() {
            return Err(spec_error(
                "events",
                "must list at least one pattern (\"*\" for all)",
            ));
        }
        if self.events.len() > PATTERNS_MAX {
            return Err(spec_error(
                "events",
                format!(
                    "lists {} patterns; at most {PATTERNS_MAX} (a prefix such as \"CLASS_*\" covers many types)",
                    self.events.len()
                ),
            ));
        }
        if let Some(bad) = self.events.iter().find(|p| !valid_pattern(p)) {
            return Err(spec_error(
                "events",
                format!(
                    "pattern {:?} must be a type, a prefix ending in '*', or '*'",
                    truncate(bad)
                ),
            ));
        }
        if let Some(long) = self.events.iter().find(|p| chars(p) > TEXT_MAX) {
            return Err(spec_error(
                "events",
                format!(
                    "pattern {:?}… is longer than {TEXT_MAX} characters",
                    truncate(long)
                ),
            ));
        }
        for (field, list) in [("sources", &self.sources), ("tenants", &self.tenants)] {
            let Some(list) = list else { continue };
            if list.len() > LIST_MAX {
                return Err(spec_error(
                    field,
                    format!("lists {} entries; at most {LIST_MAX}", list.len()),
                ));
            }
            if let Some(bad) = list.iter().find(|e| !(1..=TEXT_MAX).contains(&chars(e))) {
                return Err(spec_error(
                    field,
                    format!(
                        "entry {:?} must be 1 to {TEXT_MAX} characters",
                        truncate(bad)
                    ),
                ));
            }
        }
        if let Some((username, password)) = &self.basic_auth {
            if !(1..=TEXT_MAX).contains(&chars(username)) || username.contains(':') {
                return Err(spec_error(
                    "basic_auth.username",
                    format!("must be 1 to {TEXT_MAX} characters, without ':'"),
                ));
            }
            if chars(password.expose()) > SECRET_MAX {
                return Err(spec_error(
                    "basic_auth.password",
                    format!("must be at most {SECRET_MAX} characters"),
                ));
            }
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| chars(s.expose()) > SECRET_MAX)
        {
            return Err(spec_error(
                "secret",
                format!("must be at most {SECRET_MAX} characters"),
            ));
        }
        if self.timeout < TIMEOUT_MIN || self.timeout > TIMEOUT_MAX {
            return Err(spec_error("timeout", "must be between 1ms and 5m"));
        }
        check_schedule(&self.retry_schedule)?;
        if !(1..=IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return Err(spec_error(
                "max_in_flight",
                format!("must be between 1 and {IN_FLIGHT_MAX}"),
            ));
        }
        Ok(())
    }

    /// Puts `events` in the order [`SubscriptionSpec::matches`] relies on (sorted by
    /// bytes, repeats dropped). Every spec is normalized before it is stored, and the
    /// store keeps the order.
    pub fn normalize(&mut self) {
        self.events.sort_unstable();
        self.events.dedup();
    }

    /// Whether an event of this type, source and tenant goes to this subscription.
    /// The writer asks this for every stored event and every subscription, so the
    /// patterns are not scanned: `events` is sorted (see [`SubscriptionSpec::normalize`])
    /// and searched, in time logarithmic in the number of patterns for each byte of
    /// the type that some pattern shares.
    pub fn matches(&self, event_type: &str, source: &str, tenant: Option<&str>) -> bool {
        debug_assert!(
            self.events.is_sorted(),
            "subscription {:?}: events not normalized",
            self.name
        );
        sorted_patterns_match(&self.events, event_type)
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

/// What a backfill knows of a stored event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub event_type: String,
    pub source: String,
    pub tenant: Option<String>,
    pub quarantined: bool,
    pub received_at_ms: i64,
    pub entity_kind: String,
    pub entity_id: Option<String>,
}

impl Subscription {
    /// Whether a backfill over `[since, until)` queues `event` for this subscription:
    /// `Some` with the delivery's entity key (see [`crate::deliver::ordering`]).
    pub fn backfills(
        &self,
        event: &StoredEvent,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Option<Option<String>> {
        let in_window = since_ms.is_none_or(|since| event.received_at_ms >= since)
            && until_ms.is_none_or(|until| event.received_at_ms < until);
        (in_window
            && !event.quarantined
            && self
                .spec
                .matches(&event.event_type, &event.source, event.tenant.as_deref()))
        .then(|| {
            super::ordering::delivery_key(
                self.spec.ordering,
                &event.source,
                &event.entity_kind,
                event.entity_id.as_deref(),
            )
        })
    }
}

/// Whether any of `sorted` (patterns sorted by bytes) matches `event_type`, without
/// looking at every pattern. Patterns that start with the same bytes are neighbours
/// in sorted order, so walking the type byte by byte narrows a range of candidates:
/// at byte `k` the range holds the patterns that start with `event_type[..k]`, and
/// the prefix pattern `event_type[..k]*`, if present, is the first one in it whose
/// byte `k` is not below `*`. The exact pattern is the range's first entry at the end.
fn sorted_patterns_match(sorted: &[String], event_type: &str) -> bool {
    let t = event_type.as_bytes();
    let mut range = sorted;
    for k in 0..=t.len() {
        // Every pattern in `range` starts with t[..k]; the one of length k (equal to
        // it) sorts first, then by byte k.
        let below = |limit: u8, inclusive: bool| {
            move |p: &String| {
                let p = p.as_bytes();
                p.len() <= k || p[k] < limit || (inclusive && p[k] == limit)
            }
        };
        let star = range.partition_point(below(b'*', false));
        if range
            .get(star)
            .is_some_and(|p| p.len() == k + 1 && p.as_bytes()[k] == b'*')
        {
            return true;
        }
        if k == t.len() {
            return range.first().is_some_and(|p| p.len() == k);
        }
        let from = range.partition_point(below(t[k], false));
        let to = range.partition_point(below(t[k], true));
        range = &range[from..to];
        if range.is_empty() {
            return false;
        }
    }
    false
}

/// An exact type, `PREFIX*` or `*`: a `*` only at the end.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty() && !pattern.strip_suffix('*').unwrap_or(pattern).contains('*')
}

/// `*` matches everything, `CLASS_*` every type starting with `CLASS_`, anything
/// else only itself.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Parses a retry schedule such as `["10s", "1m", "10m"]`, within the limits.
pub fn parse_schedule(steps: &[String]) -> Result<Vec<Duration>, SpecError> {
    if steps.len() > limits::RETRY_STEPS_MAX {
        return Err(too_many_steps(steps.len()));
    }
    let schedule = steps
        .iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| spec_error("retry_schedule", format!("step {:?}: {e}", truncate(s))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_schedule(&schedule)?;
    Ok(schedule)
}

fn check_schedule(schedule: &[Duration]) -> Result<(), SpecError> {
    if schedule.len() > limits::RETRY_STEPS_MAX {
        return Err(too_many_steps(schedule.len()));
    }
    if let Some(step) = schedule.iter().find(|d| **d > limits::RETRY_STEP_MAX) {
        return Err(spec_error(
            "retry_schedule",
            format!(
                "step {} is longer than the longest allowed, 7 days",
                humantime::format_duration(*step)
            ),
        ));
    }
    Ok(())
}

fn too_many_steps(n: usize) -> SpecError {
    spec_error(
        "retry_schedule",
        format!("has {n} steps; at most {}", limits::RETRY_STEPS_MAX),
    )
}

/// At most 64 characters of what a caller sent, for an error message.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_queues_matching_events_in_the_window_with_the_ordering_key() {
        let mut spec = SubscriptionSpec::with_defaults("crm".into());
        spec.events = vec!["CLASS_*".into()];
        let mut subscription = Subscription::unstored(spec, ManagedBy::Api);
        let event = StoredEvent {
            seq: 7,
            event_type: "CLASS_UPDATED".into(),
            source: "school".into(),
            tenant: None,
            quarantined: false,
            received_at_ms: 1_000,
            entity_kind: "class".into(),
            entity_id: Some("3".into()),
        };
        assert_eq!(subscription.backfills(&event, None, None), Some(None));
        assert_eq!(subscription.backfills(&event, Some(1_001), None), None);
        assert_eq!(subscription.backfills(&event, None, Some(1_000)), None);
        let quarantined = StoredEvent {
            quarantined: true,
            ..event.clone()
        };
        assert_eq!(subscription.backfills(&quarantined, None, None), None);
        let other = StoredEvent {
            event_type: "PAYMENT_CREATED".into(),
            ..event.clone()
        };
        assert_eq!(subscription.backfills(&other, None, None), None);
        subscription.spec.ordering = super::super::ordering::Ordering::Entity;
        assert_eq!(
            subscription.backfills(&event, None, None),
            Some(super::super::ordering::entity_key(
                "school",
                "class",
                Some("3")
            ))
        );
    }

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

    fn spec(events: &[&str]) -> SubscriptionSpec {
        let mut spec = SubscriptionSpec {
            name: "crm".into(),
            url: "https://crm.example/hooks".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            sources: None,
            tenants: None,
            basic_auth: None,
            secret: None,
            secret_encoding: SecretEncoding::Utf8,
            signing: Signing::Hmac,
            timeout: Duration::from_secs(10),
            retry_schedule: vec![],
            max_in_flight: 8,
            ordering: Ordering::None,
            rate_limit: None,
        };
        spec.normalize();
        spec
    }

    /// The search over sorted patterns says what a scan of every pattern says.
    #[test]
    fn sorted_search_agrees_with_a_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // A small alphabet with '*', '.', '_' and a character of two bytes, so that
        // patterns and types share prefixes often.
        let alphabet = ['A', 'B', '_', '.', 'a', '*', 'é', '!'];
        let text = |rng: &mut rand::rngs::StdRng, max: usize| -> String {
            (0..rng.random_range(0..=max))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        };
        for _ in 0..3000 {
            let patterns: Vec<String> = (0..rng.random_range(1..12))
                .map(|_| {
                    let mut p = text(&mut rng, 4).replace('*', "");
                    if rng.random_bool(0.5) {
                        p.push('*');
                    }
                    p
                })
                .filter(|p| valid_pattern(p))
                .collect();
            if patterns.is_empty() {
                continue;
            }
            let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let spec = spec(&refs);
            for _ in 0..20 {
                let t = text(&mut rng, 5);
                let scan = patterns.iter().any(|p| pattern_matches(p, &t));
                assert_eq!(
                    spec.matches(&t, "s", None),
                    scan,
                    "{t:?} against {patterns:?}"
                );
            }
        }
    }

    #[test]
    fn limits_are_enforced_with_the_field_named() {
        let field = |s: &SubscriptionSpec| s.validate().err().map(|e| e.field);
        assert_eq!(field(&spec(&["*"])), None);
        let many: Vec<String> = (0..101).map(|i| format!("T{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(field(&spec(&refs)), Some("events"));
        assert_eq!(field(&spec(&refs[..100])), None);
        let long = "A".repeat(201);
        assert_eq!(field(&spec(&[&long])), Some("events"));
        assert_eq!(
            field(&spec(&["é"])),
            None,
            "a pattern of one two-byte character"
        );

        let mut s = spec(&["*"]);
        s.name = "n".repeat(101);
        assert_eq!(field(&s), Some("name"));
        s.name = "n".repeat(100);
        assert_eq!(field(&s), None);
        s.url = format!("https://x.example/{}", "p".repeat(2048));
        assert_eq!(field(&s), Some("url"));

        let mut s = spec(&["*"]);
        s.sources = Some((0..101).map(|i| format!("s{i}")).collect());
        assert_eq!(field(&s), Some("sources"));
        s.sources = Some(vec!["x".repeat(201)]);
        assert_eq!(field(&s), Some("sources"));
        s.sources = None;
        s.tenants = Some(vec![String::new()]);
        assert_eq!(field(&s), Some("tenants"));
        s.tenants = None;
        s.secret = Some(Secret::new("k".repeat(1025)));
        assert_eq!(field(&s), Some("secret"));
        s.secret = None;
        s.basic_auth = Some(("u".into(), Secret::new("p".repeat(1025))));
        assert_eq!(field(&s), Some("basic_auth.password"));
        s.basic_auth = Some(("u".repeat(201), Secret::new("p")));
        assert_eq!(field(&s), Some("basic_auth.username"));
        s.basic_auth = None;
        s.timeout = Duration::from_secs(301);
        assert_eq!(field(&s), Some("timeout"));
        s.timeout = Duration::from_secs(300);
        s.max_in_flight = 0;
        assert_eq!(field(&s), Some("max_in_flight"));
        s.max_in_flight = 257;
        assert_eq!(field(&s), Some("max_in_flight"));
        s.max_in_flight = 256;
        s.retry_schedule = vec![Duration::from_secs(7 * 86_400 + 1)];
        assert_eq!(field(&s), Some("retry_schedule"));
        s.retry_schedule = vec![Duration::from_secs(1); 21];
        assert_eq!(field(&s), Some("retry_schedule"));
        s.retry_schedule = vec![Duration::from_secs(7 * 86_400); 20];
        assert_eq!(field(&s), None);
    }

    #[test]
    fn schedules_that_would_overflow_are_refused() {
        let steps =
            |s: &[&str]| parse_schedule(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            steps(&["10s", "7days"]).unwrap(),
            [Duration::from_secs(10), Duration::from_secs(7 * 86_400)]
        );
        let huge = steps(&["1000000000years"]).unwrap_err();
        assert_eq!(huge.field, "retry_schedule");
        assert!(huge.message.contains("7 days"), "{huge}");
        assert!(steps(&["99999999999999999999999years"]).is_err());
        assert!(steps(&vec!["1s"; 21]).is_err());
    }

    #[test]
    fn normalizing_sorts_and_drops_repeats() {
        let s = spec(&["payment.*", "CLASS_*", "payment.*", "*"]);
        assert_eq!(s.events, ["*", "CLASS_*", "payment.*"]);
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
            signing: Signing::Hmac,
            timeout: Duration::from_secs(10),
            retry_schedule: vec![],
            max_in_flight: 8,
            ordering: Ordering::None,
            rate_limit: None,
        };
        assert!(spec.validate().is_ok());
        assert!(spec.matches("CLASS_CREATED", "school", Some("my-school")));
        assert!(!spec.matches("CLASS_CREATED", "other", Some("my-school")));
        assert!(!spec.matches("CLASS_CREATED", "school", Some("other")));
        assert!(!spec.matches("CLASS_CREATED", "school", None));
        assert!(!spec.matches("ATTENDANCE_CREATED", "school", Some("my-school")));
    }
}
