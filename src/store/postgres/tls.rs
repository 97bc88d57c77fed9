//! How to reach the server: the parsed URL and, when it asks for it
//! (`sslmode=require`), TLS with rustls, the server's certificate verified against
//! the public web roots or against the CA file that `sslrootcert` (libpq's
//! parameter) names. Without `sslmode=require` connections are plain, as libpq's
//! default `prefer` is against a server without TLS: tokio-postgres has no mode
//! that encrypts without verifying, and a local server's self-signed certificate
//! must not stop a default URL.

use std::path::PathBuf;

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::errors::{redact_url, split_pair};
use crate::store::StoreError;

/// A parsed database URL and its TLS connector (`None`: plain connections).
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, StoreError> {
        let invalid = |why: String| {
            StoreError::Invalid(format!(
                "the database URL {} is not valid: {why}",
                redact_url(url)
            ))
        };
        let (rest, root_cert) = take_root_cert(url);
        let config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(format!("{e}")))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(connector(root_cert).map_err(invalid)?),
            _ if root_cert.is_some() => {
                return Err(invalid(
                    "sslrootcert needs sslmode=require (TLS is used only then)".into(),
                ));
            }
            _ => None,
        };
        Ok(Target { config, tls })
    }
}

/// A rustls connector trusting the CA file `root_cert`, or the public web roots.
fn connector(root_cert: Option<PathBuf>) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let roots = match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                ));
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            roots
        }
        None => crate::tls::web_roots(),
    };
    Ok(MakeRustlsConnect::new(crate::tls::client_config(roots)?))
}

/// `url` without its `sslrootcert` parameter (which tokio-postgres does not know),
/// and that parameter's value.
fn take_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Ok(mut parsed) = url::Url::parse(trimmed) else {
            return (url.to_string(), None);
        };
        let mut root_cert = None;
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(key, value)| {
                if key == "sslrootcert" {
                    root_cert = Some(PathBuf::from(value.into_owned()));
                    None
                } else {
                    Some((key.into_owned(), value.into_owned()))
                }
            })
            .collect();
        if root_cert.is_none() {
            return (url.to_string(), None);
        }
        if pairs.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return (parsed.to_string(), root_cert);
    }
    let mut kept = Vec::new();
    let mut root_cert = None;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let (pair, after) = split_pair(rest);
        let mut parts = pair.splitn(2, '=');
        let key = parts.next().unwrap_or("").trim();
        if key == "sslrootcert" {
            let value = parts.next().unwrap_or("").trim().trim_matches('\'');
            root_cert = Some(PathBuf::from(value));
        } else {
            kept.push(pair.trim().to_string());
        }
        rest = after.trim_start();
    }
    (kept.join(" "), root_cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_only_when_required_and_the_ca_file_is_taken_from_the_url() {
        let plain = Target::parse("postgres://app@db/x").unwrap();
        assert!(plain.tls.is_none());
        let public = Target::parse("postgres://app@db/x?sslmode=require").unwrap();
        assert!(public.tls.is_some());
        assert_eq!(
            take_root_cert("postgres://app@db/x?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgres://app@db/x?sslmode=require".to_string(),
                Some(PathBuf::from("/etc/ca.pem"))
            )
        );
        assert_eq!(
            take_root_cert("host=db sslrootcert='/etc/ca.pem' sslmode=require"),
            (
                "host=db sslmode=require".to_string(),
                Some(PathBuf::from("/etc/ca.pem"))
            )
        );
        assert!(matches!(
            Target::parse("postgres://db/x?sslmode=require&sslrootcert=/nonexistent.pem"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            Target::parse("postgres://db/x?sslrootcert=/etc/ca.pem"),
            Err(StoreError::Invalid(_))
        ));
    }
}
