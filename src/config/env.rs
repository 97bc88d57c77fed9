//! `CLASSHOOK_*` environment overrides, written into the parsed TOML table.
//!
//! - `CLASSHOOK_SERVER_<KEY>` sets `[server] <key>`, e.g. `CLASSHOOK_SERVER_LISTEN`
//!   (`CLASSHOOK_SERVER_TRUSTED_PROXIES` is comma-separated); likewise `CLASSHOOK_API_TOKENS` (comma-separated), `CLASSHOOK_RETENTION_<KEY>`, `CLASSHOOK_DELIVERY_<KEY>` (e.g. `CLASSHOOK_DELIVERY_PROXY`), `CLASSHOOK_TELEMETRY_<KEY>` (e.g. `CLASSHOOK_TELEMETRY_OTLP_ENDPOINT`; empty turns tracing off) and `CLASSHOOK_DATABASE_URL`.
//! - `CLASSHOOK_SOURCE_<NAME>_<KEY>` sets a key of the `[[source]]` called NAME, where
//!   NAME is the source name upper-cased with every character other than a letter or
//!   digit written as `_` (`demo-school` → `DEMO_SCHOOL`). Keys: `PROVIDER`, `SECRET`,
//!   `SECRET_ENV`, `SECRET_ENCODING`, `TENANTS` and `ALLOWED_IPS` (comma-separated),
//!   `BASIC_AUTH_USERNAME`, `BASIC_AUTH_PASSWORD`, `BASIC_AUTH_PASSWORD_ENV`.
//!
//! An unknown `CLASSHOOK_SERVER_*` or `CLASSHOOK_SOURCE_*` variable is an error, so a
//! typo never silently leaves the file's value in force.

use std::path::Path;

use toml::{Table, Value};

use super::ConfigError;

const PREFIX: &str = "CLASSHOOK_";
const SERVER_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "max_body_bytes",
    "max_inflight_body_bytes",
    "max_connections",
    "read_timeout",
    "append_timeout",
    "shutdown_grace",
    "trusted_proxies",
    "https",
    "secret_key_env",
    "previous_secret_key_env",
    "instance",
];
const API_KEYS: &[&str] = &["tokens", "tokens_env"];
const RETENTION_KEYS: &[&str] = &["events_days", "interval"];
const DATABASE_KEYS: &[&str] = &["url"];
const TELEMETRY_KEYS: &[&str] = &["otlp_endpoint", "service_name", "sample_ratio"];
const DELIVERY_KEYS: &[&str] = &[
    "enabled",
    "allow_private_destinations",
    "hold_after_failures",
    "poll_interval",
    "lease_margin",
    "proxy",
];
const SOURCE_KEYS: &[&str] = &[
    "basic_auth_password_env",
    "basic_auth_username",
    "basic_auth_password",
    "secret_encoding",
    "secret_env",
    "allowed_ips",
    "provider",
    "tenants",
    "secret",
];
/// Keys whose override is a comma-separated list.
const LIST_KEYS: &[&str] = &["tokens", "trusted_proxies", "tenants", "allowed_ips"];

/// Upper-cases a source name the way its environment variables spell it.
pub fn env_name(source: &str) -> String {
    source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

pub fn apply_overrides(
    file: &Path,
    table: &mut Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some(key) = rest.strip_prefix("SERVER_") {
            apply_table(file, table, "server", SERVER_KEYS, name, key, value)?;
        } else if let Some(key) = rest.strip_prefix("API_") {
            apply_table(file, table, "api", API_KEYS, name, key, value)?;
        } else if let Some(key) = rest.strip_prefix("DELIVERY_") {
            apply_table(file, table, "delivery", DELIVERY_KEYS, name, key, value)?;
        } else if let Some(key) = rest.strip_prefix("DATABASE_") {
            apply_table(file, table, "database", DATABASE_KEYS, name, key, value)?;
        } else if let Some(key) = rest.strip_prefix("TELEMETRY_") {
            apply_table(file, table, "telemetry", TELEMETRY_KEYS, name, key, value)?;
        } else if let Some(key) = rest.strip_prefix("RETENTION_") {
            apply_table(file, table, "retention", RETENTION_KEYS, name, key, value)?;
        } else if let Some(rest) = rest.strip_prefix("SOURCE_") {
            apply_source(file, table, name, rest, value)?;
        }
    }
    Ok(())
}

fn apply_table(
    file: &Path,
    table: &mut Table,
    section: &str,
    keys: &[&str],
    var: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let key = key.to_ascii_lowercase();
    if !keys.contains(&key.as_str()) {
        return Err(ConfigError::new(
            file,
            var,
            format!("unknown override; [{section}] keys are {}", keys.join(", ")),
        ));
    }
    let entry = table
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(entry) = entry else {
        return Err(ConfigError::new(file, section, "must be a table"));
    };
    entry.insert(key.clone(), override_value(&key, value));
    Ok(())
}

fn comma_list(value: &str) -> Value {
    Value::Array(
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Value::String(t.to_string()))
            .collect(),
    )
}

fn apply_source(
    file: &Path,
    table: &mut Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let Some(Value::Array(sources)) = table.get_mut("source") else {
        return Err(ConfigError::new(
            file,
            var,
            "no [[source]] in the file to override",
        ));
    };
    for source in sources.iter_mut() {
        let Value::Table(source) = source else {
            continue;
        };
        let Some(Value::String(name)) = source.get("name") else {
            continue;
        };
        let Some(key) = rest
            .strip_prefix(&env_name(name))
            .and_then(|k| k.strip_prefix('_'))
        else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if !SOURCE_KEYS.contains(&key.as_str()) {
            continue;
        }
        set_source_key(source, &key, value);
        return Ok(());
    }
    Err(ConfigError::new(
        file,
        var,
        format!(
            "matches no source and key; expected CLASSHOOK_SOURCE_<NAME>_<KEY> with KEY one of {}",
            SOURCE_KEYS.join(", ").to_ascii_uppercase()
        ),
    ))
}

fn set_source_key(source: &mut Table, key: &str, value: &str) {
    if let Some(auth_key) = key.strip_prefix("basic_auth_") {
        let auth = source
            .entry("basic_auth")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(auth) = auth {
            auth.insert(auth_key.to_string(), Value::String(value.to_string()));
        }
        return;
    }
    source.insert(key.to_string(), override_value(key, value));
}

fn override_value(key: &str, value: &str) -> Value {
    if LIST_KEYS.contains(&key) {
        comma_list(value)
    } else {
        Value::String(value.to_string())
    }
}
