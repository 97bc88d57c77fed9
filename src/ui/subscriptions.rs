//! `/ui/subscriptions`: each subscription's state, success rate, last error and
//! queue, with Pause / Resume and the rotation of its signing key.

use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page, see_other};
use crate::deliver::ordering::Ordering;
use crate::deliver::signing::Signing;
use crate::deliver::subscription::ManagedBy;
use crate::store::{DeliveryFilter, DeliveryState};

/// The success rate is over this many of the newest deliveries.
const RATE_OVER: usize = 200;

pub struct Card {
    pub name: String,
    pub anchor: String,
    pub url: String,
    pub events: String,
    pub paused: bool,
    pub state: String,
    pub managed_by: &'static str,
    pub pending: i64,
    pub dead: i64,
    /// `97% of the last 200 finished`, or empty when none finished.
    pub success: String,
    pub last_error: String,
    /// `HMAC (v1)` or `ed25519 (v1a)`.
    pub signing: &'static str,
    /// `any order` or `one at a time per entity, in stored order`.
    pub ordering: &'static str,
    /// `20/s`, or empty: none.
    pub rate_limit: String,
    pub public_key: String,
    /// When the replaced keys stop signing, e.g. `until 2026-01-01 10:00:00 UTC`.
    pub previous_keys: Vec<String>,
    /// `2026-01-01 09:00:00 UTC by api token #1`, or empty.
    pub last_rotation: String,
    /// The key can be rotated here (not an HMAC secret from the config file).
    pub rotatable: bool,
}

#[derive(Template)]
#[template(path = "subscriptions.html")]
struct SubscriptionsPage {
    layout: Layout,
    cards: Vec<Card>,
    notice: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    #[serde(default)]
    done: String,
    #[serde(default)]
    name: String,
}

pub async fn list(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Query(notice): Query<Notice>,
) -> Result<Response, UiError> {
    // Fixed sentences only: a link cannot make the page say something else.
    let notice = match notice.done.as_str() {
        "paused" => format!("Subscription \"{}\" is paused.", notice.name),
        "resumed" => format!("Subscription \"{}\" is resumed.", notice.name),
        _ => String::new(),
    };
    render(&state, &current, notice).await
}

/// The page, with `notice` (if not empty) announced at its top.
pub async fn render(
    state: &Shared,
    current: &Current,
    notice: String,
) -> Result<Response, UiError> {
    let now = state.clock.now_ms();
    let queue = state.store.delivery_queue().await?;
    let mut cards = Vec::new();
    for s in state.store.list_subscriptions().await? {
        let name = s.spec.name.clone();
        let recent = state
            .store
            .list_deliveries(DeliveryFilter {
                subscription: Some(name.clone()),
                limit: RATE_OVER,
                ..DeliveryFilter::default()
            })
            .await?;
        let delivered = recent
            .iter()
            .filter(|d| d.state == DeliveryState::Delivered)
            .count();
        let finished = delivered
            + recent
                .iter()
                .filter(|d| d.state == DeliveryState::Dead)
                .count();
        let depth = queue.iter().find(|q| q.subscription == name);
        let state_text = if s.paused {
            format!(
                "Paused{}",
                s.paused_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        } else if s.hold_until_ms > now {
            format!(
                "On hold until {} after {} failures in a row",
                format::time(s.hold_until_ms),
                s.consecutive_failures
            )
        } else {
            "Active".into()
        };
        cards.push(Card {
            anchor: format!("sub-{name}"),
            url: s.spec.url.clone(),
            events: s.spec.events.join(", "),
            paused: s.paused,
            state: state_text,
            managed_by: match s.managed_by {
                ManagedBy::Config => "config file",
                ManagedBy::Api => "API",
            },
            pending: depth.map(|q| q.pending).unwrap_or(0),
            dead: depth.map(|q| q.dead).unwrap_or(0),
            success: (delivered * 100)
                .checked_div(finished)
                .map(|rate| format!("{rate}% of the last {finished} finished"))
                .unwrap_or_default(),
            last_error: recent
                .iter()
                .find_map(|d| d.last_error.clone())
                .unwrap_or_default(),
            signing: match s.spec.signing {
                Signing::Hmac => "HMAC (v1)",
                Signing::Ed25519 => "ed25519 (v1a)",
            },
            ordering: match s.spec.ordering {
                Ordering::None => "any order",
                Ordering::Entity => "one at a time per entity, in stored order",
            },
            rate_limit: s.spec.rate_limit.map(|r| r.to_string()).unwrap_or_default(),
            public_key: s.public_key.clone().unwrap_or_default(),
            previous_keys: s
                .previous_keys
                .iter()
                .filter(|k| k.expires_at_ms > now)
                .map(|k| format!("until {}", format::time(k.expires_at_ms)))
                .collect(),
            last_rotation: s
                .rotated
                .as_ref()
                .map(|r| format!("{} by {}", format::time(r.at_ms), r.by))
                .unwrap_or_default(),
            rotatable: s.managed_by == ManagedBy::Api || s.spec.signing == Signing::Ed25519,
            name,
        });
    }
    page(&SubscriptionsPage {
        layout: Layout::new("Subscriptions", "subscriptions", current, state),
        cards,
        notice,
    })
}

pub async fn pause(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    state
        .store
        .set_paused(&name, true, Some("paused from the dashboard".into()))
        .await?;
    Ok(see_other(&format!(
        "/ui/subscriptions?done=paused&name={}",
        format::query_value(&name)
    )))
}

pub async fn resume(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    state.store.set_paused(&name, false, None).await?;
    Ok(see_other(&format!(
        "/ui/subscriptions?done=resumed&name={}",
        format::query_value(&name)
    )))
}

#[derive(Debug, Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    grace_period: String,
}

/// Rotates the signing key. The answer is the page itself, not a redirect: a
/// generated HMAC secret is shown this once, and never goes into a URL.
pub async fn rotate(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Path(name): Path<String>,
    Form(form): Form<RotateForm>,
) -> Result<Response, UiError> {
    let input = crate::api::RotateInput {
        secret: None,
        grace_period: Some(form.grace_period).filter(|g| !g.trim().is_empty()),
        signing: None,
    };
    let request = crate::api::rotation_request(input, state.clock.now_ms(), "dashboard".into())
        .map_err(UiError::BadRequest)?;
    let (rotated, generated) = crate::api::rotate(&state.store, &name, request).await?;
    let mut notice = format!("The signing key of \"{name}\" is rotated.");
    if let Some(until) = rotated.previous_keys.iter().map(|k| k.expires_at_ms).max() {
        notice.push_str(&format!(
            " Replaced keys keep signing until {}.",
            format::time(until)
        ));
    }
    if let Some(secret) = generated {
        notice.push_str(&format!(" New secret, shown only now: {}", secret.expose()));
    }
    if let Some(public_key) = &rotated.public_key {
        notice.push_str(&format!(" New public key: {public_key}"));
    }
    render(&state, &current, notice).await
}
