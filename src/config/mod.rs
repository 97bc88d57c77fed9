//! One typed [`Config`] from a TOML file, with `CLASSHOOK_*` environment overrides.
//!
//! Loading happens in three steps, each in its own place:
//! 1. the file is parsed into a TOML table ([`load`]),
//! 2. environment overrides are written into that table ([`env`]),
//! 3. the table is deserialized into [`RawConfig`] and resolved into a [`Config`]
//!    whose secrets are decoded and whose rules are checked ([`resolve`]).
//!
//! Every error names the file, the key and what is wrong.

mod env;
mod raw;
mod resolve;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{RawConfig, SecretEncoding};
pub use resolve::{BasicAuth, Source};

use crate::provider::ProviderKind;
use crate::secret::Secret;

/// Default config file name used by every subcommand.
pub const DEFAULT_CONFIG_FILE: &str = "classhook.toml";

/// Whether a [`Config`]'s secrets were read (`*_env` variables looked up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Every secret was resolved: a missing `*_env` variable is an error. What
    /// `serve`, `send --source` and `verify --source` need.
    Resolve,
    /// Secrets named by `*_env` were not looked up (they are absent from the
    /// `Config`, and a Basic Auth password from `password_env` is empty): for
    /// commands that neither receive nor send. Such a `Config` cannot serve.
    Skip,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// Whether secrets from the environment were resolved ([`Secrets::Skip`]: this
    /// configuration is for reading the data directory only).
    pub secrets: Secrets,
    pub server: ServerConfig,
    pub sources: Vec<Source>,
    pub api: ApiConfig,
    pub retention: RetentionConfig,
    pub subscriptions: Vec<crate::deliver::subscription::SubscriptionSpec>,
    pub delivery: DeliveryConfig,
    /// `Some`: a PostgreSQL URL (may hold a password); `None`: SQLite in `data_dir`.
    pub database_url: Option<crate::secret::Secret>,
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: where traces go, if anywhere.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's traces URL (`<otlp_endpoint>/v1/traces`); `None`: tracing off.
    pub traces_url: Option<url::Url>,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// The share of received webhooks traced, 0 to 1 (their delivery attempts follow
    /// the receive's decision).
    pub sample_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Send at all; off, deliveries are queued and wait.
    pub enabled: bool,
    pub allow_private_destinations: bool,
    pub hold_after_failures: u32,
    pub poll_interval: Duration,
    pub lease_margin: Duration,
    /// `[delivery] proxy`, checked to be a usable proxy URL; may hold credentials.
    pub proxy: Option<Secret>,
}

#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Bearer tokens accepted by `/api/v1` and `/metrics`; empty: the API is open,
    /// which `serve` allows only on a loopback address.
    pub tokens: Vec<Secret>,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub events_days: Option<u64>,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    /// The bytes of request bodies held at once across all connections; a request
    /// that would go over is answered 503 before its body is read.
    pub max_inflight_body_bytes: usize,
    /// Connections served at once; more wait in the accept queue, unread.
    pub max_connections: usize,
    /// How long a client may take to send its headers, and then its body.
    pub read_timeout: Duration,
    /// How long a request waits for its event to be committed before answering 503.
    pub append_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Peers trusted to name the client in `X-Forwarded-For` (empty: none).
    pub trusted_proxies: crate::net::NetList,
    /// Browsers reach the gateway over HTTPS: the dashboard's cookie is `Secure`.
    pub https: bool,
    /// How subscription secrets are stored: sealed under the key from
    /// `secret_key_env`, plain text without one, withheld when secrets are skipped.
    pub secret_keys: crate::store::sealed::Sealer,
    /// This instance's name among several on one database (the `instance` label of
    /// its metrics); `None`: `<host name>:<port>`.
    pub instance: Option<String>,
}

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}{}: {message}", file.display(), named.as_ref().map(|n| format!(" (in {n})")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    /// The `[[source]]` or `[[subscription]]` the key is in, by its name
    /// (`source "school"`), when it has one: `source[3]` alone is hard to find.
    pub named: Option<String>,
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            named: None,
            message: message.into(),
        }
    }

    /// Adds the name of the source or subscription the key is in.
    fn naming(mut self, names: &EntryNames) -> Self {
        self.named = names.of(&self.key);
        self
    }
}

/// The `name` of every `[[source]]` and `[[subscription]]`, by position.
struct EntryNames {
    sources: Vec<Option<String>>,
    subscriptions: Vec<Option<String>>,
}

impl EntryNames {
    fn read(table: &toml::Table) -> EntryNames {
        let names = |section: &str| -> Vec<Option<String>> {
            match table.get(section) {
                Some(toml::Value::Array(entries)) => entries
                    .iter()
                    .map(|e| e.get("name").and_then(|n| n.as_str()).map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            }
        };
        EntryNames {
            sources: names("source"),
            subscriptions: names("subscription"),
        }
    }

    /// `source "school"` for a key such as `source[0].secret_env`.
    fn of(&self, key: &str) -> Option<String> {
        let (section, rest) = key.split_once('[')?;
        let index: usize = rest.split_once(']')?.0.parse().ok()?;
        let names = match section {
            "source" => &self.sources,
            "subscription" => &self.subscriptions,
            _ => return None,
        };
        let name = names.get(index)?.as_deref()?;
        Some(format!("{section} {name:?}"))
    }
}

impl Config {
    /// Where the store keeps its data: the database URL's server, or SQLite in
    /// `data_dir`.
    pub fn store_location(&self) -> crate::store::Location {
        match &self.database_url {
            Some(url) => crate::store::Location::from_url(url.clone()),
            None => crate::store::Location::sqlite(&self.server.data_dir),
        }
    }

    /// Reads `file`, applies the process environment's `CLASSHOOK_*` overrides and
    /// validates the result.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Config::load_with(file, Secrets::Resolve)
    }

    /// Like [`Config::load`], but with [`Secrets::Skip`] the variables named by
    /// `secret_env`, `password_env` and `tokens_env` are not looked up: commands that
    /// only read (or re-queue) what is stored work without them. Every other rule is
    /// still checked.
    pub fn load_with(file: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::new(file, "(file)", format!("cannot read: {e}")))?;
        Config::with_process_environment(file, &text, secrets)
    }

    /// The configuration the process environment's `CLASSHOOK_*` variables make on
    /// their own, without a file: for `migrate`, which needs only the database.
    pub fn from_environment(secrets: Secrets) -> Result<Config, ConfigError> {
        Config::with_process_environment(Path::new("(environment)"), "", secrets)
    }

    /// Parses `text` with the process environment's overrides and `*_env` lookups.
    fn with_process_environment(
        file: &Path,
        text: &str,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::from_toml_str_with(file, text, &vars, &|name| std::env::var(name).ok(), secrets)
    }

    /// Parses configuration text. `vars` are the overrides to apply and `lookup`
    /// resolves `*_env` indirections; both are parameters so tests need not touch
    /// the process environment.
    pub fn from_toml_str(
        file: &Path,
        text: &str,
        vars: &[(String, String)],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::from_toml_str_with(file, text, vars, lookup, Secrets::Resolve)
    }

    /// [`Config::from_toml_str`] with a choice of [`Secrets`].
    pub fn from_toml_str_with(
        file: &Path,
        text: &str,
        vars: &[(String, String)],
        lookup: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let key = e
                .span()
                .map(|span| format!("line {}", line_of(text, span.start)))
                .unwrap_or_else(|| "(syntax)".into());
            ConfigError::new(file, key, e.message().to_string())
        })?;
        env::apply_overrides(file, &mut table, vars)?;
        let names = EntryNames::read(&table);
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let path = e.path().clone();
                let message = shown_message(&path, e.into_inner().to_string());
                ConfigError::new(file, key, message).naming(&names)
            })?;
        resolve::resolve(file, raw, lookup, secrets).map_err(|e| e.naming(&names))
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// Keys whose values are secrets or hold them (`basic_auth` holds a password, `proxy`
/// may hold credentials): an error at or under one never shows the value.
const SECRET_KEYS: &[&str] = &[
    "secret",
    "password",
    "tokens",
    "basic_auth",
    "proxy",
    "database",
];

/// The message a deserialization error at `path` may show. serde quotes the value
/// it could not use (`invalid type: string "…", expected …`), so under a
/// secret-bearing key the message is replaced by one that names only what was
/// expected; messages about key names (unknown or missing fields) are kept.
fn shown_message(path: &serde_path_to_error::Path, message: String) -> String {
    use serde_path_to_error::Segment;
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    if !keys.iter().any(|key| SECRET_KEYS.contains(key)) {
        return message;
    }
    if message.starts_with("unknown field `") || message.starts_with("missing field `") {
        return message;
    }
    let ends_in_index = matches!(path.iter().next_back(), Some(Segment::Seq { .. }));
    let expected = match keys.last().copied() {
        Some("tokens") if ends_in_index => "each token must be a string",
        Some("tokens") => "must be a list of strings",
        Some("basic_auth") => {
            "must be a table: { username = \"…\", password = \"…\" } (or password_env)"
        }
        _ => "must be a string",
    };
    format!("{expected} (the value is not shown: this key holds a secret)")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The HMAC key bytes a secret gives under an encoding (`None` without a secret).
/// Errors name the problem, never the secret.
pub fn signing_key(
    provider: ProviderKind,
    secret: Option<&Secret>,
    encoding: SecretEncoding,
) -> Result<Option<crate::secret::KeyBytes>, String> {
    resolve::build_key(provider, secret, encoding)
}

#[cfg(test)]
mod tests;
