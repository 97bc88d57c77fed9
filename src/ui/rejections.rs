//! `/ui/rejections`: why requests were refused, each with a hint that helps fix it.
//! For a DreamClass signature that does not hold, the hint says whether the other
//! key encoding would (the signature is in the body, which the log keeps).

use askama::Template;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page};
use crate::config::{self, SecretEncoding, Source};
use crate::provider::{Envelope, ProviderKind};
use crate::store::{Rejection, RejectionFilter};

const PAGE_SIZE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    source: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    before: Option<i64>,
}

pub struct Row {
    pub id: i64,
    pub when: String,
    pub source: String,
    pub reason: String,
    pub status: u16,
    pub message: String,
    pub hint: String,
    pub remote: String,
    pub preview: String,
    pub body_len: usize,
}

#[derive(Template)]
#[template(path = "rejections.html")]
struct RejectionsPage {
    layout: Layout,
    filters: Filters,
    rows: Vec<Row>,
    next: Option<String>,
}

pub async fn list(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Query(filters): Query<Filters>,
) -> Result<Response, UiError> {
    let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let rejections = state
        .store
        .find_rejections(RejectionFilter {
            source: text(&filters.source),
            reason: text(&filters.reason),
            before_id: filters.before,
            limit: PAGE_SIZE,
        })
        .await?;
    let next = (rejections.len() == PAGE_SIZE)
        .then(|| rejections.last().map(|r| r.id))
        .flatten()
        .map(|id| {
            format!(
                "/ui/rejections?source={}&reason={}&before={id}",
                format::query_value(&filters.source),
                format::query_value(&filters.reason)
            )
        });
    let now = state.clock.now_ms();
    let rows = rejections
        .into_iter()
        .map(|r| {
            let source = r
                .source
                .as_deref()
                .and_then(|name| state.sources.iter().find(|s| s.name == name));
            Row {
                id: r.id,
                when: format!("{} ({})", format::time(r.at_ms), format::ago(now, r.at_ms)),
                hint: hint(&r, source),
                source: r.source.clone().unwrap_or_else(|| "(none)".into()),
                reason: r.reason.clone(),
                status: r.status,
                message: r.message.clone(),
                remote: r.remote_addr.clone().unwrap_or_default(),
                preview: preview(&r),
                body_len: r.body_len,
            }
        })
        .collect();
    page(&RejectionsPage {
        layout: Layout::new("Rejections", "rejections", &current, &state),
        filters,
        rows,
        next,
    })
}

/// The first bytes of the body as text, short enough for a table.
fn preview(r: &Rejection) -> String {
    let text = String::from_utf8_lossy(&r.body);
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() || r.body.len() < r.body_len {
        short.push('…');
    }
    short
}

/// What to do about a refusal, for a person setting the platforms up.
pub fn hint(r: &Rejection, source: Option<&Source>) -> String {
    let name = r.source.as_deref().unwrap_or("?");
    match r.reason.as_str() {
        "signature_invalid" => signature_hint(r, source),
        "signature_missing" => format!(
            "The request carried no signature. Turn signing on in the platform's webhook settings with the secret of source \"{name}\", or the sender is not the platform."
        ),
        "unauthorized" => format!(
            "Basic Auth was missing or wrong. Source \"{name}\" has basic_auth set: give the platform that username and password (in the webhook URL: https://USER:PASSWORD@host/hooks/{name})."
        ),
        "tenant_not_allowed" => format!(
            "The event's school (tenant) is not in the tenants list of source \"{name}\". If this school is yours, add it to tenants; otherwise someone else's account points at your URL."
        ),
        "ip_not_allowed" => format!(
            "The sender's address is not in allowed_ips of source \"{name}\". If the platform changed addresses, add them; behind a proxy, list it in [server] trusted_proxies so the client address is read from X-Forwarded-For."
        ),
        "unknown_source" => "No [[source]] has this name: the last part of the webhook URL must be a configured source's name.".into(),
        "invalid_json" => "The body is not JSON: the sender is probably not DreamClass or Loopwise, or a proxy changed the body.".into(),
        "invalid_envelope" => "The body is JSON but lacks the platform's envelope fields: check that the source's provider matches the platform that sends to this URL.".into(),
        "payload_too_large" => "The body is larger than [server] max_body_bytes: raise it if such events are expected.".into(),
        "unsupported_encoding" => "The body was compressed in a way classhook does not read: turn compression off in front of the gateway.".into(),
        "request_timeout" => "The sender was too slow to send the body ([server] read_timeout).".into(),
        "overloaded" => "The gateway was busy and asked the sender to retry; platforms retry on their own.".into(),
        "storage_unavailable" => "The store could not take the event (disk full or locked): see /readyz and the log. The platform will retry.".into(),
        "id_conflict" => "The platform sent the same event id again with a different body. The first body is kept; this one is logged here.".into(),
        "method_not_allowed" => "Webhooks are POST requests: something sent another method to this URL.".into(),
        _ => String::new(),
    }
}

fn signature_hint(r: &Rejection, source: Option<&Source>) -> String {
    let Some(source) = source else {
        return "The signature does not match the source's secret.".into();
    };
    let name = &source.name;
    match source.provider {
        ProviderKind::Loopwise => format!(
            "The signature does not match: copy the signing key from Loopwise's webhook settings into source \"{name}\" again."
        ),
        ProviderKind::DreamClass => {
            let configured = source.secret_encoding;
            match holding_encoding(r, source) {
                Some(holds) if holds != configured => format!(
                    "The signature holds with the other DreamClass key encoding: set secret_encoding = \"{}\" on source \"{name}\" (it is \"{}\" now).",
                    holds.as_str(),
                    configured.as_str()
                ),
                Some(_) => format!(
                    "The signature holds with source \"{name}\"'s secret now: the secret was probably changed since this request."
                ),
                None if r.body.len() < r.body_len => format!(
                    "The signature does not match the secret of source \"{name}\" (the body was too long to check the other key encoding here: use classhook verify --source {name})."
                ),
                None => format!(
                    "The signature holds under neither key encoding (utf8 nor base64): the secret in DreamClass's webhook settings is not the secret of source \"{name}\"."
                ),
            }
        }
    }
}

/// Which DreamClass key encoding makes the logged body's signature hold, if any
/// (only when the whole body was logged).
fn holding_encoding(r: &Rejection, source: &Source) -> Option<SecretEncoding> {
    if r.body.len() < r.body_len {
        return None;
    }
    let envelope = Envelope::parse(ProviderKind::DreamClass, &r.body).ok()?;
    [SecretEncoding::Utf8, SecretEncoding::Base64]
        .into_iter()
        .find(|&encoding| {
            matches!(
                config::signing_key(ProviderKind::DreamClass, source.secret.as_ref(), encoding),
                Ok(Some(key)) if envelope.verify(&key, &HeaderMap::new(), &r.body).is_ok()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: &str) -> Rejection {
        Rejection {
            id: 1,
            at_ms: 0,
            source: Some("school".into()),
            reason: reason.into(),
            status: 403,
            message: String::new(),
            body: Vec::new(),
            body_len: 0,
            body_sha256: None,
            remote_addr: None,
        }
    }

    #[test]
    fn every_refusal_a_platform_can_cause_has_a_hint() {
        for (reason, says) in [
            ("tenant_not_allowed", "tenants list of source \"school\""),
            ("ip_not_allowed", "allowed_ips"),
            ("unauthorized", "basic_auth"),
            ("signature_missing", "Turn signing on"),
            ("unknown_source", "No [[source]]"),
            ("payload_too_large", "max_body_bytes"),
            ("id_conflict", "first body is kept"),
        ] {
            let hint = hint(&refused(reason), None);
            assert!(hint.contains(says), "{reason}: {hint}");
        }
        assert_eq!(hint(&refused("something_new"), None), "");
    }
}
