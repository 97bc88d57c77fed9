//! The configuration file's shape, exactly as written (before secrets are resolved).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::deliver::subscription::defaults;
use crate::provider::ProviderKind;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default, rename = "source")]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<RawSubscription>,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

/// Exporting traces; absent `otlp_endpoint`: off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTelemetry {
    /// An OTLP/HTTP collector's base URL (`http://collector:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Absent or empty: no tracing.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
    /// The share of received webhooks traced (0 to 1); their attempts follow.
    #[serde(deserialize_with = "float_or_numeric_string")]
    pub sample_ratio: f64,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            otlp_endpoint: None,
            service_name: "classhook".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Environment overrides arrive as strings; fractional keys accept both forms.
fn float_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(f64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got {s:?}"))),
    }
}

/// Where the store keeps its data.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://user:password@host:port/database`; absent: SQLite in `data_dir`.
    /// May hold a password.
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    pub name: String,
    pub url: String,
    /// Patterns: an exact type, `CLASS_*`, `course.*`, or `*`.
    pub events: Vec<String>,
    pub sources: Option<Vec<String>>,
    pub tenants: Option<Vec<String>>,
    pub basic_auth: Option<RawBasicAuth>,
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_encoding: SecretEncoding,
    /// `hmac` (default) or `ed25519`.
    pub signing: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule: Vec<String>,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// `none` (default) or `entity`.
    pub ordering: Option<String>,
    /// `20/s`, `600/min`, `1000/h`: the most requests this subscriber gets.
    pub rate_limit: Option<String>,
}

fn default_timeout() -> Duration {
    defaults::TIMEOUT
}

/// The schedule's default steps as the file would write them.
fn default_retry_schedule() -> Vec<String> {
    defaults::RETRY_SCHEDULE
        .iter()
        .map(|step| humantime::format_duration(*step).to_string())
        .collect()
}

fn default_max_in_flight() -> u32 {
    defaults::MAX_IN_FLIGHT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDelivery {
    /// Send webhooks at all (off: deliveries queue up and wait).
    #[serde(deserialize_with = "bool_or_string")]
    pub enabled: bool,
    /// Allow destinations on private, loopback and link-local addresses.
    #[serde(deserialize_with = "bool_or_string")]
    pub allow_private_destinations: bool,
    /// Consecutive failures after which a subscription is put on hold.
    #[serde(deserialize_with = "u32_or_numeric_string")]
    pub hold_after_failures: u32,
    /// How often due retries are looked for.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long past its timeout a delivery stays leased to a worker that vanished.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
    /// An HTTP(S) proxy for deliveries; may hold credentials. Proxy environment
    /// variables are never used.
    pub proxy: Option<Secret>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            enabled: true,
            allow_private_destinations: false,
            hold_after_failures: 20,
            poll_interval: Duration::from_millis(500),
            lease_margin: Duration::from_secs(30),
            proxy: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    #[serde(default)]
    pub tokens: Vec<Secret>,
    /// An environment variable holding comma-separated tokens.
    pub tokens_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    /// Raw events older than this many days are pruned (the mirror stays).
    #[serde(deserialize_with = "optional_number_or_numeric_string")]
    pub events_days: Option<u64>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            events_days: None,
            interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// `host:port`: an address, or a host name resolved at load (`localhost:8080`).
    pub listen: String,
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub max_body_bytes: u64,
    /// The bytes of request bodies held at once, across all connections.
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub max_inflight_body_bytes: u64,
    /// Connections served at once; more wait in the accept queue, unread.
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub max_connections: u64,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub append_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-For` names the client (CIDRs or addresses).
    pub trusted_proxies: Vec<String>,
    /// Served to browsers over HTTPS (TLS ends in front): the dashboard's session
    /// cookie is marked `Secure`.
    #[serde(deserialize_with = "bool_or_string")]
    pub https: bool,
    /// The variable holding the key subscription secrets are sealed under
    /// (default `CLASSHOOK_SECRET_KEY`).
    pub secret_key_env: Option<String>,
    /// The variable holding the previous key while rotating (default
    /// `CLASSHOOK_SECRET_KEY_PREVIOUS`).
    pub previous_secret_key_env: Option<String>,
    /// This instance's name among several on one database (metrics, logs); default
    /// `<host name>:<port>`.
    pub instance: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./classhook-data"),
            max_body_bytes: 1024 * 1024,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            max_connections: 1024,
            read_timeout: Duration::from_secs(10),
            append_timeout: Duration::from_secs(8),
            shutdown_grace: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            https: false,
            secret_key_env: None,
            previous_secret_key_env: None,
            instance: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    pub provider: ProviderKind,
    pub secret: Option<Secret>,
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_encoding: SecretEncoding,
    pub basic_auth: Option<RawBasicAuth>,
    pub tenants: Option<Vec<String>>,
    /// The sender addresses accepted (CIDRs or addresses); absent: any.
    pub allowed_ips: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
}

/// How a configured DreamClass secret becomes HMAC key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The secret's UTF-8 bytes are the key.
    #[default]
    Utf8,
    /// The secret is base64 text that decodes to the key bytes.
    Base64,
}

impl SecretEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretEncoding::Utf8 => "utf8",
            SecretEncoding::Base64 => "base64",
        }
    }
}

fn u32_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = number_or_numeric_string(d)?;
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
}

/// Environment overrides arrive as strings; flags accept `true`/`false` text too.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Flag(bool),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Flag(b) => Ok(b),
        Either::Text(s) => match s.trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected true or false, got {other:?}"
            ))),
        },
    }
}

fn optional_number_or_numeric_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    number_or_numeric_string(d).map(Some)
}

/// Environment overrides arrive as strings; numeric keys accept both forms.
fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {s:?}"))),
    }
}
