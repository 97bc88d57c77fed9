//! "Send test event": one request to a subscription's URL, built and signed as its
//! deliveries are (the same `deliver::send` code, the same destination guard), with
//! type `CLASSHOOK_TEST` / `classhook.test` so receivers can tell it apart. Nothing is
//! stored: no event, no delivery, no attempt; the page shows the answer.

use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::response::Response;
use serde_json::json;

use super::session::Current;
use super::{Shared, UiError, subscriptions};
use crate::deliver::schedule::Outcome;
use crate::deliver::send;
use crate::provider::ProviderKind;

/// The type a test event carries, per platform.
pub fn test_type(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::DreamClass => "CLASSHOOK_TEST",
        ProviderKind::Loopwise => "classhook.test",
    }
}

/// Sends, then shows the subscriptions page with the result (rendered, not
/// redirected to: the result is not something a link may carry).
pub async fn send(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let subscription = state
        .store
        .get_subscription(&name)
        .await?
        .ok_or_else(|| UiError::NotFound(format!("no subscription {name:?}")))?;
    let (spec, previous) = (subscription.spec, subscription.previous_keys);
    // Shaped as the platform of the first configured source (subscriptions are not
    // tied to one platform).
    let provider = state
        .sources
        .first()
        .map_or(ProviderKind::DreamClass, |s| s.provider);
    let now_ms = state.clock.now_ms();
    let data = json!({ "message": "A test event from the classhook dashboard. It is not stored; ignore it." });
    let body = match provider {
        ProviderKind::DreamClass => json!({
            "id": uuid::Uuid::new_v4().to_string(), "type": test_type(provider),
            "tenant": "classhook-test", "signature": "", "timestamp": now_ms, "data": data,
        }),
        ProviderKind::Loopwise => json!({ "type": test_type(provider), "data": data }),
    };
    let body = serde_json::to_vec(&body).expect("a JSON value serializes");
    let webhook_id = format!("msg_test_{}", uuid::Uuid::new_v4().simple());
    let outgoing = send::build(
        provider,
        &body,
        None,
        &spec,
        &previous,
        &webhook_id,
        now_ms / 1000,
    )
    .map_err(|e| UiError::BadRequest(format!("cannot build the test event: {e}")))?;
    let basic_auth = spec
        .basic_auth
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.expose()));
    let sender = state
        .sender
        .as_ref()
        .map_err(|e| UiError::BadRequest(format!("cannot send through [delivery] proxy: {e}")))?;
    let attempted = sender
        .send(&spec.url, outgoing, basic_auth, spec.timeout)
        .await;
    let result = describe(&attempted.outcome, attempted.duration);
    subscriptions::render(
        &state,
        &current,
        format!("Test event sent to \"{name}\": {result}."),
    )
    .await
}

/// What the receiver did, in a sentence.
fn describe(outcome: &Outcome, took: Duration) -> String {
    let ms = took.as_millis();
    match outcome {
        Outcome::Success { status } => format!("the receiver answered {status} in {ms} ms"),
        Outcome::Gone => format!("the receiver answered 410 Gone in {ms} ms"),
        Outcome::Throttled { status, .. } => {
            format!("the receiver answered {status} (try later) in {ms} ms")
        }
        Outcome::Failed {
            status: Some(status),
            ..
        } => format!("the receiver answered {status} in {ms} ms"),
        Outcome::Failed { error, .. } => format!(
            "it failed after {ms} ms: {}",
            error.as_deref().unwrap_or("no answer")
        ),
    }
}
