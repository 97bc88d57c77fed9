//! The one way classhook configures a TLS client (deliveries to https subscribers,
//! PostgreSQL with `sslmode=require`): rustls with the ring provider, TLS 1.2 and
//! 1.3, certificates verified against the given roots.

use std::sync::Arc;

/// The public web's root certificates (Mozilla's, from webpki-roots).
pub fn web_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// A client configuration trusting `roots`, without a client certificate.
pub fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
