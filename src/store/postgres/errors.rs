//! Driver errors become [`StoreError`]s here, and nothing the driver says leaves
//! with a password in it.

use crate::store::StoreError;

/// SQLSTATE classes that mean "the server cannot serve us right now": connection
/// exceptions (08), insufficient resources such as a full disk or too many
/// connections (53), operator intervention such as a shutdown (57), and a server
/// in recovery or read-only (25006).
fn unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57") || code == "25006"
}

/// SQLSTATEs of a transaction rolled back because it lost a lock conflict:
/// serialization failure (40001) and deadlock (40P01). Trying again may succeed.
fn contended(code: &str) -> bool {
    matches!(code, "40001" | "40P01")
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            let message = format!("{}: {}", db.severity(), db.message());
            return if unavailable(db.code().code()) {
                StoreError::NotReady(format!("the database cannot take work now: {message}"))
            } else if contended(db.code().code()) {
                StoreError::Contended(message)
            } else {
                StoreError::Database(message)
            };
        }
        if error.is_closed() || has_io_source(&error) || is_connection_error(&error) {
            return StoreError::NotReady(format!(
                "the database is unreachable: {}",
                with_causes(&error)
            ));
        }
        StoreError::Database(with_causes(&error))
    }
}

/// The error's text followed by each cause its text does not already say (a TLS
/// handshake's says only that it failed; its cause says why).
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match error {
            PoolError::Backend(error) => error.into(),
            PoolError::Timeout(_) => StoreError::NotReady(
                "the database is unreachable: no connection within the pool's timeout".into(),
            ),
            other => StoreError::NotReady(format!("the database is unreachable: {other}")),
        }
    }
}

fn has_io_source(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The driver's own words for a connection that failed or timed out (errors that
/// carry neither an I/O cause nor a server message).
fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    let text = error.to_string();
    [
        "error connecting",
        "error communicating",
        "timeout",
        "connection closed",
    ]
    .iter()
    .any(|words| text.contains(words))
}

/// `url` without its password, for messages and logs: URL form
/// (`postgres://user:secret@host/db?password=…`) and key-value form
/// (`host=… password=secret`) alike. Anything it cannot parse is hidden whole.
pub fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return match url::Url::parse(trimmed) {
            Ok(mut parsed) => {
                let _ = parsed.set_password(None);
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .filter(|(key, _)| key != "password")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                if pairs.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => "(an unparsable database URL)".into(),
        };
    }
    redact_key_values(trimmed)
}

/// Drops `password=…` (bare or single-quoted, with escapes) from a key-value
/// connection string.
fn redact_key_values(text: &str) -> String {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (pair, after) = split_pair(rest);
        let key = pair.split('=').next().unwrap_or("").trim();
        if key != "password" {
            out.push(pair.trim().to_string());
        }
        rest = after.trim_start();
    }
    out.join(" ")
}

/// The first `key=value` pair of `text` and what follows it.
pub(super) fn split_pair(text: &str) -> (&str, &str) {
    let bytes = text.as_bytes();
    let mut i = 0;
    // The key, up to '=' (spaces around it are allowed).
    while i < bytes.len() && bytes[i] != b'=' {
        i += 1;
    }
    i += 1;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'\'' {
        i += 1;
        while i < bytes.len() && bytes[i] != b'\'' {
            if bytes[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        i += 1;
    } else {
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
    }
    let i = i.min(bytes.len());
    (&text[..i], &text[i..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_appear() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/classhook"),
            "postgres://app@db.example:5432/classhook"
        );
        assert_eq!(
            redact_url("postgresql://app@db/x?sslmode=disable&password=s3cret"),
            "postgresql://app@db/x?sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db user=app password='s3 cr\\'et' dbname=x"),
            "host=db user=app dbname=x"
        );
        assert_eq!(
            redact_url("host=db password = s3cret dbname=x"),
            "host=db dbname=x"
        );
        assert!(!redact_url("postgres://a:s3cret@[::1/x").contains("s3cret"));
    }
}
