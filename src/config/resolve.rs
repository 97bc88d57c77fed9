//! Turns the file's [`RawConfig`] into a checked [`Config`]: secrets are read from the
//! environment where asked, decoded into key bytes, and every cross-field rule holds.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::raw::{RawBasicAuth, RawConfig, RawSource, RawSubscription, SecretEncoding};
use super::{
    ApiConfig, Config, ConfigError, DeliveryConfig, RetentionConfig, Secrets, ServerConfig,
    TelemetryConfig,
};
use crate::deliver::ordering::Ordering;
use crate::deliver::rate::RateLimit;
use crate::deliver::signing::Signing;
use crate::deliver::subscription::{SubscriptionSpec, parse_schedule};
use crate::net::NetList;
use crate::provider::ProviderKind;
use crate::secret::{KeyBytes, Secret};
use crate::store::sealed::{Sealer, SecretKey};

/// A sending account: `POST /hooks/{name}`.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub provider: ProviderKind,
    /// The secret as configured (`verify --source` tries it under both encodings).
    pub secret: Option<Secret>,
    /// `None`: the source accepts unsigned requests.
    pub signing_key: Option<KeyBytes>,
    pub secret_encoding: SecretEncoding,
    pub basic_auth: Option<BasicAuth>,
    /// DreamClass only: the tenants this source accepts (`None`: any).
    pub tenants: Option<Vec<String>>,
    /// The client addresses this source accepts (`None`: any).
    pub allowed_ips: Option<NetList>,
}

#[derive(Debug, Clone)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

pub(super) fn resolve(
    file: &Path,
    raw: RawConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Config, ConfigError> {
    // Skipping secrets: no `*_env` variable is looked up at all.
    let env = Env {
        lookup,
        skip: secrets == Secrets::Skip,
    };
    let lookup = &env;
    let s = raw.server;
    let check = |key: &str, checked: Result<(), String>| {
        checked.map_err(|message| ConfigError::new(file, key, message))
    };
    check(
        "server.max_body_bytes",
        number_within(s.max_body_bytes, 1, MAX_BODY_BYTES),
    )?;
    check(
        "server.read_timeout",
        duration_within(s.read_timeout, MIN_TIMER, Duration::from_secs(3600)),
    )?;
    check(
        "server.append_timeout",
        duration_within(s.append_timeout, MIN_TIMER, crate::store::MAX_COMMIT_LAG)
            .map_err(|m| format!("{m}: an event that waits longer for the store is not stored")),
    )?;
    check(
        "server.shutdown_grace",
        duration_within(s.shutdown_grace, Duration::ZERO, Duration::from_secs(3600)),
    )?;
    check(
        "retention.interval",
        duration_within(
            raw.retention.interval,
            MIN_TIMER,
            Duration::from_secs(30 * 86_400),
        ),
    )?;
    if let Some(days) = raw.retention.events_days {
        check(
            "retention.events_days",
            number_within(days, 1, MAX_RETENTION_DAYS)
                .map_err(|m| format!("{m} (leave it out to keep events forever)")),
        )?;
    }
    if s.max_inflight_body_bytes < s.max_body_bytes {
        return Err(ConfigError::new(
            file,
            "server.max_inflight_body_bytes",
            format!(
                "must be at least max_body_bytes ({}), or a body of the largest allowed size could never be read",
                s.max_body_bytes
            ),
        ));
    }
    if s.max_connections == 0 {
        return Err(ConfigError::new(
            file,
            "server.max_connections",
            "must be greater than 0",
        ));
    }
    check(
        "delivery.poll_interval",
        duration_within(
            raw.delivery.poll_interval,
            MIN_TIMER,
            Duration::from_secs(3600),
        ),
    )?;
    check(
        "delivery.lease_margin",
        duration_within(
            raw.delivery.lease_margin,
            Duration::ZERO,
            Duration::from_secs(3600),
        ),
    )?;
    let trusted_proxies = NetList::parse(&s.trusted_proxies)
        .map_err(|m| ConfigError::new(file, "server.trusted_proxies", m))?;
    let secret_keys = resolve_secret_keys(
        s.secret_key_env.as_deref(),
        s.previous_secret_key_env.as_deref(),
        lookup,
    )
    .map_err(|(key, message)| ConfigError::new(file, key, message))?;
    let listen = resolve_listen(&s.listen)
        .map_err(|message| ConfigError::new(file, "server.listen", message))?;
    if let Some(name) = &s.instance {
        check_instance_name(name)
            .map_err(|message| ConfigError::new(file, "server.instance", message))?;
    }
    let server = ServerConfig {
        listen,
        // A relative data_dir means "beside the config file", wherever the command
        // runs from (also when it comes from CLASSHOOK_SERVER_DATA_DIR).
        data_dir: match file.parent() {
            Some(dir) if s.data_dir.is_relative() => dir.join(&s.data_dir),
            _ => s.data_dir,
        },
        max_body_bytes: usize::try_from(s.max_body_bytes).unwrap_or(usize::MAX),
        max_inflight_body_bytes: usize::try_from(s.max_inflight_body_bytes).unwrap_or(usize::MAX),
        max_connections: usize::try_from(s.max_connections).unwrap_or(usize::MAX),
        read_timeout: s.read_timeout,
        append_timeout: s.append_timeout,
        shutdown_grace: s.shutdown_grace,
        trusted_proxies,
        https: s.https,
        secret_keys,
        instance: s.instance,
    };
    let mut seen = HashSet::new();
    let mut sources = Vec::with_capacity(raw.sources.len());
    for (index, raw_source) in raw.sources.into_iter().enumerate() {
        let key = |field: &str| format!("source[{index}].{field}");
        if !seen.insert(raw_source.name.clone()) {
            return Err(ConfigError::new(
                file,
                key("name"),
                format!("duplicate source name {:?}", raw_source.name),
            ));
        }
        sources.push(
            resolve_source(raw_source, lookup)
                .map_err(|(field, message)| ConfigError::new(file, key(field), message))?,
        );
    }
    let mut tokens = raw.api.tokens;
    if let Some(var) = raw.api.tokens_env.as_ref().filter(|_| !lookup.skip) {
        let value = (lookup.lookup)(var).ok_or_else(|| {
            ConfigError::new(
                file,
                "api.tokens_env",
                format!("environment variable {var} is not set"),
            )
        })?;
        tokens.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        );
    }
    if tokens.iter().any(|t| t.expose().len() < 16) {
        return Err(ConfigError::new(
            file,
            "api.tokens",
            "every token must be at least 16 characters (e.g. `openssl rand -hex 24`)",
        ));
    }
    let mut subscriptions = Vec::with_capacity(raw.subscriptions.len());
    let mut names = HashSet::new();
    for (index, raw_subscription) in raw.subscriptions.into_iter().enumerate() {
        let key = |field: &str| format!("subscription[{index}].{field}");
        if !names.insert(raw_subscription.name.clone()) {
            return Err(ConfigError::new(
                file,
                key("name"),
                "duplicate subscription name",
            ));
        }
        subscriptions.push(
            resolve_subscription(
                raw_subscription,
                raw.delivery.allow_private_destinations,
                lookup,
            )
            .map_err(|(field, m)| ConfigError::new(file, key(field), m))?,
        );
    }
    if let Some(proxy) = &raw.delivery.proxy {
        crate::deliver::send::parse_proxy(proxy)
            .map_err(|m| ConfigError::new(file, "delivery.proxy", m))?;
    }
    let delivery = DeliveryConfig {
        enabled: raw.delivery.enabled,
        allow_private_destinations: raw.delivery.allow_private_destinations,
        hold_after_failures: raw.delivery.hold_after_failures,
        poll_interval: raw.delivery.poll_interval,
        lease_margin: raw.delivery.lease_margin,
        proxy: raw.delivery.proxy,
    };
    if let Some(url) = &raw.database.url {
        crate::store::Location::check_url(url.expose())
            .map_err(|m| ConfigError::new(file, "database.url", m))?;
    }
    let telemetry = resolve_telemetry(raw.telemetry)
        .map_err(|(key, message)| ConfigError::new(file, key, message))?;
    Ok(Config {
        telemetry,
        database_url: raw.database.url,
        file: file.to_path_buf(),
        secrets,
        server,
        sources,
        subscriptions,
        delivery,
        api: ApiConfig { tokens },
        retention: RetentionConfig {
            events_days: raw.retention.events_days,
            interval: raw.retention.interval,
        },
    })
}

type FieldError = (&'static str, String);

/// `[telemetry]`: an empty endpoint (e.g. `CLASSHOOK_TELEMETRY_OTLP_ENDPOINT=`) is off.
fn resolve_telemetry(raw: super::raw::RawTelemetry) -> Result<TelemetryConfig, FieldError> {
    let traces_url = match raw.otlp_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(endpoint) => Some(
            crate::telemetry::traces_url(endpoint).map_err(|m| ("telemetry.otlp_endpoint", m))?,
        ),
    };
    let service_name = raw.service_name.trim().to_string();
    if service_name.is_empty() || service_name.len() > 200 {
        return Err((
            "telemetry.service_name",
            "must be 1 to 200 characters".into(),
        ));
    }
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        return Err((
            "telemetry.sample_ratio",
            format!("must be between 0 and 1, got {}", raw.sample_ratio),
        ));
    }
    Ok(TelemetryConfig {
        traces_url,
        service_name,
        sample_ratio: raw.sample_ratio,
    })
}

/// How `*_env` indirections are resolved: through `lookup`, or (`skip`) not at all,
/// leaving the secret out.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    skip: bool,
}

impl Env<'_> {
    /// The variable's value: `Ok(None)` when secrets are skipped, an error when it
    /// is not set.
    fn var(&self, var: &str) -> Result<Option<String>, String> {
        if self.skip {
            return Ok(None);
        }
        (self.lookup)(var)
            .map(Some)
            .ok_or_else(|| format!("environment variable {var} is not set"))
    }
}

/// The shortest period or timeout a timer in the gateway accepts: zero would spin
/// (or, for `tokio::time::interval`, panic).
const MIN_TIMER: Duration = Duration::from_millis(10);
/// The largest `max_body_bytes`: bodies are held in memory while they are checked.
pub const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// The longest retention, 100 years: longer would overflow millisecond arithmetic
/// long before it meant anything.
const MAX_RETENTION_DAYS: u64 = 36_500;

fn duration_within(value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if value < min || value > max {
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        return Err(format!(
            "must be between {} and {}, got {}",
            shown(min),
            shown(max),
            shown(value)
        ));
    }
    Ok(())
}

fn number_within(value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("must be between {min} and {max}, got {value}"));
    }
    Ok(())
}

fn resolve_source(raw: RawSource, lookup: &Env<'_>) -> Result<Source, FieldError> {
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err((
            "name",
            format!(
                "{:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it is a URL path segment)",
                raw.name
            ),
        ));
    }
    let secret = resolve_secret(raw.secret, raw.secret_env, lookup)?;
    if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
        return Err((
            "secret",
            "is empty; remove it to accept unsigned requests".into(),
        ));
    }
    let signing_key = build_key(raw.provider, secret.as_ref(), raw.secret_encoding)
        .map_err(|m| ("secret_encoding", m))?;
    if raw.provider != ProviderKind::DreamClass && raw.tenants.is_some() {
        return Err((
            "tenants",
            format!(
                "only DreamClass events carry a tenant; remove it for provider {}",
                raw.provider
            ),
        ));
    }
    if raw.tenants.as_ref().is_some_and(Vec::is_empty) {
        return Err((
            "tenants",
            "is empty, which would refuse every event; remove it to accept any tenant".into(),
        ));
    }
    let allowed_ips = match raw.allowed_ips {
        Some(entries) if entries.is_empty() => {
            return Err((
                "allowed_ips",
                "is empty, which would refuse every request; remove it to accept any address"
                    .into(),
            ));
        }
        Some(entries) => Some(NetList::parse(&entries).map_err(|m| ("allowed_ips", m))?),
        None => None,
    };
    let basic_auth = raw
        .basic_auth
        .map(|auth| resolve_basic_auth(auth, lookup))
        .transpose()?;
    Ok(Source {
        name: raw.name,
        provider: raw.provider,
        secret,
        signing_key,
        secret_encoding: raw.secret_encoding,
        basic_auth,
        tenants: raw.tenants,
        allowed_ips,
    })
}

/// A secret given inline or through `secret_env`, not both.
fn resolve_secret(
    inline: Option<Secret>,
    env: Option<String>,
    lookup: &Env<'_>,
) -> Result<Option<Secret>, FieldError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(("secret", "set either secret or secret_env, not both".into())),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(var)) => Ok(lookup
            .var(&var)
            .map_err(|m| ("secret_env", m))?
            .map(Secret::new)),
        (None, None) => Ok(None),
    }
}

/// The keys subscription secrets are sealed under. The current key's variable may be
/// unset only under its default name (then secrets are stored as plain text and
/// `serve` warns); the previous key's may always be unset (no rotation under way).
/// Errors name the variable, never its value.
fn resolve_secret_keys(
    key_env: Option<&str>,
    previous_env: Option<&str>,
    lookup: &Env<'_>,
) -> Result<Sealer, (&'static str, String)> {
    use crate::store::sealed::{DEFAULT_KEY_ENV, DEFAULT_PREVIOUS_KEY_ENV};
    if lookup.skip {
        return Ok(Sealer::withheld());
    }
    let key_var = key_env.unwrap_or(DEFAULT_KEY_ENV);
    let previous_var = previous_env.unwrap_or(DEFAULT_PREVIOUS_KEY_ENV);
    let read = |field: &'static str, var: &str| {
        (lookup.lookup)(var)
            .map(|value| {
                SecretKey::from_base64(&value).map_err(|e| {
                    (
                        field,
                        format!(
                            "{var} {e}: a key is 32 bytes in base64 (`classhook secret-key` makes one); the value is not shown"
                        ),
                    )
                })
            })
            .transpose()
    };
    let current = read("server.secret_key_env", key_var)?;
    let previous = read("server.previous_secret_key_env", previous_var)?;
    let sealer = match (current, previous) {
        (None, Some(_)) => {
            return Err((
                "server.previous_secret_key_env",
                format!(
                    "{previous_var} is set but {key_var} is not: set the new key in {key_var} to rotate"
                ),
            ));
        }
        (None, None) if key_env.is_some() => {
            return Err((
                "server.secret_key_env",
                format!("environment variable {key_var} is not set"),
            ));
        }
        (None, None) => Sealer::plain(),
        (Some(current), previous) => Sealer::with_keys(current, previous),
    };
    Ok(sealer.named(key_var, previous_var))
}

fn resolve_subscription(
    raw: RawSubscription,
    allow_private_destinations: bool,
    lookup: &Env<'_>,
) -> Result<SubscriptionSpec, FieldError> {
    let signing = raw
        .signing
        .as_deref()
        .map(Signing::parse)
        .transpose()
        .map_err(|m| ("signing", m))?
        .unwrap_or_default();
    if signing == Signing::Ed25519 && (raw.secret.is_some() || raw.secret_env.is_some()) {
        return Err((
            "secret",
            "cannot be set with signing = \"ed25519\": classhook generates the key pair and keeps its secret key in the store (the public key is in `classhook subscriptions list`)".into(),
        ));
    }
    let secret = resolve_secret(raw.secret, raw.secret_env, lookup)?;
    let basic_auth = raw
        .basic_auth
        .map(|auth| resolve_basic_auth(auth, lookup))
        .transpose()?
        .map(|auth| (auth.username, auth.password));
    let mut spec = SubscriptionSpec {
        name: raw.name,
        url: raw.url,
        events: raw.events,
        sources: raw.sources,
        tenants: raw.tenants,
        basic_auth,
        secret,
        secret_encoding: raw.secret_encoding,
        signing,
        timeout: raw.timeout,
        retry_schedule: parse_schedule(&raw.retry_schedule).map_err(|e| (e.field, e.message))?,
        max_in_flight: raw.max_in_flight,
        ordering: raw
            .ordering
            .as_deref()
            .map(Ordering::parse)
            .transpose()
            .map_err(|m| ("ordering", m))?
            .unwrap_or_default(),
        rate_limit: raw
            .rate_limit
            .as_deref()
            .map(RateLimit::parse)
            .transpose()
            .map_err(|m| ("rate_limit", m))?,
    };
    spec.normalize();
    spec.validate().map_err(|e| (e.field, e.message))?;
    let url = reqwest::Url::parse(&spec.url).map_err(|e| ("url", e.to_string()))?;
    crate::deliver::guard::check_literal(&url, allow_private_destinations).map_err(|m| {
        (
            "url",
            format!("{m} (set [delivery] allow_private_destinations = true to allow it)"),
        )
    })?;
    crate::deliver::signing::current_key(&spec).map_err(|m| ("secret", m))?;
    Ok(spec)
}

fn resolve_basic_auth(raw: RawBasicAuth, lookup: &Env<'_>) -> Result<BasicAuth, FieldError> {
    let password = match (raw.password, raw.password_env) {
        (Some(_), Some(_)) => {
            return Err((
                "basic_auth.password",
                "set either password or password_env, not both".into(),
            ));
        }
        (Some(password), None) => password,
        // Skipped: an empty password (this configuration never sends or checks one).
        (None, Some(var)) => Secret::new(
            lookup
                .var(&var)
                .map_err(|m| ("basic_auth.password_env", m))?
                .unwrap_or_default(),
        ),
        (None, None) => {
            return Err((
                "basic_auth.password",
                "missing: set password or password_env".into(),
            ));
        }
    };
    if raw.username.contains(':') {
        return Err((
            "basic_auth.username",
            "must not contain ':' (Basic Auth separates username and password with it)".into(),
        ));
    }
    Ok(BasicAuth {
        username: raw.username,
        password,
    })
}

/// The HMAC key bytes for a secret under an encoding. Errors never include the secret.
pub(super) fn build_key(
    provider: ProviderKind,
    secret: Option<&Secret>,
    encoding: SecretEncoding,
) -> Result<Option<KeyBytes>, String> {
    if encoding == SecretEncoding::Base64 && provider != ProviderKind::DreamClass {
        return Err(format!(
            "base64 applies to DreamClass only; provider {provider} uses the secret's UTF-8 bytes"
        ));
    }
    let Some(secret) = secret else {
        return Ok(None);
    };
    let bytes = match encoding {
        SecretEncoding::Utf8 => secret.expose().as_bytes().to_vec(),
        SecretEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(secret.expose().trim())
            .map_err(|_| "secret is not valid base64 (standard alphabet, padded)".to_string())?,
    };
    Ok(Some(KeyBytes::new(bytes)))
}

/// `host:port` to the address to bind: an address as written, or the first address a
/// host name resolves to (`localhost:8080` → 127.0.0.1:8080, or ::1 where that is all
/// the name has).
fn resolve_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let shown: String = text.chars().take(100).collect();
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("{shown:?} is not host:port that resolves ({e})"))?
        .collect::<Vec<_>>();
    // Prefer IPv4 when a name has both, as most setups expect of `localhost`.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{shown:?} resolves to no address"))
}

/// An instance name fit for a metrics label and a log line.
fn check_instance_name(name: &str) -> Result<(), String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) {
        return Err(format!(
            "{name:?} is not an instance name: 1 to 64 letters, digits, '.', '_', ':' or '-'"
        ));
    }
    Ok(())
}
