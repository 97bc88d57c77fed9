//! `/ui/subscriptions`: each subscription's state, success rate, last error and
//! queue, with Pause / Resume.

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page, see_other};
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
                crate::deliver::subscription::ManagedBy::Config => "config file",
                crate::deliver::subscription::ManagedBy::Api => "API",
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
