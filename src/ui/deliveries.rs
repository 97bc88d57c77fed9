//! `/ui/deliveries`: deliveries in general and dead letters in particular, with
//! "Replay" for one delivery and "Replay all dead letters" for a subscription.

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page, see_other};
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, StoreError};

const PAGE_SIZE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    subscription: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    before: Option<i64>,
    /// After a replay: what was queued (a count, or one delivery's id).
    #[serde(default)]
    replayed: Option<u64>,
    #[serde(default)]
    replayed_one: Option<i64>,
}

pub struct Row {
    pub id: i64,
    pub subscription: String,
    pub event: i64,
    pub state: &'static str,
    pub attempts: i64,
    pub when: String,
    pub last_error: String,
}

pub struct DeadGroup {
    pub subscription: String,
    pub dead: i64,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
struct DeliveriesPage {
    layout: Layout,
    filters: Filters,
    heading: String,
    rows: Vec<Row>,
    dead: Vec<DeadGroup>,
    notice: String,
    next: Option<String>,
}

pub async fn list(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Query(filters): Query<Filters>,
) -> Result<Response, UiError> {
    let wanted = match filters.state.trim() {
        "" => None,
        text => Some(DeliveryState::parse(text).ok_or_else(|| {
            UiError::BadRequest(format!("state {text:?}: use pending, delivered or dead"))
        })?),
    };
    let subscription =
        (!filters.subscription.trim().is_empty()).then(|| filters.subscription.trim().to_string());
    let deliveries = state
        .store
        .list_deliveries(DeliveryFilter {
            subscription: subscription.clone(),
            state: wanted,
            before_id: filters.before.map(DeliveryId),
            limit: PAGE_SIZE,
            ..DeliveryFilter::default()
        })
        .await?;
    let next = (deliveries.len() == PAGE_SIZE)
        .then(|| deliveries.last().map(|d| d.id.get()))
        .flatten()
        .map(|id| {
            format!(
                "/ui/deliveries?subscription={}&state={}&before={id}",
                format::query_value(&filters.subscription),
                format::query_value(&filters.state)
            )
        });
    let rows = deliveries
        .into_iter()
        .map(|d| Row {
            id: d.id.get(),
            event: d.event_seq.get(),
            state: d.state.as_str(),
            attempts: d.attempts,
            when: match (d.state, d.delivered_at_ms) {
                (DeliveryState::Pending, _) => {
                    format!("next try {}", format::time(d.next_attempt_at_ms))
                }
                (_, Some(at)) => format!("delivered {}", format::time(at)),
                _ => format!("created {}", format::time(d.created_at_ms)),
            },
            last_error: d.last_error.unwrap_or_default(),
            subscription: d.subscription,
        })
        .collect();
    let dead = state
        .store
        .delivery_queue()
        .await?
        .into_iter()
        .filter(|q| q.dead > 0 && subscription.as_ref().is_none_or(|s| *s == q.subscription))
        .map(|q| DeadGroup {
            subscription: q.subscription,
            dead: q.dead,
        })
        .collect();
    let notice = match (filters.replayed, filters.replayed_one) {
        (Some(n), _) => format!(
            "{n} dead letter{} of \"{}\" queued again.",
            if n == 1 { "" } else { "s" },
            filters.subscription
        ),
        (_, Some(id)) => format!("Delivery {id} is queued again."),
        _ => String::new(),
    };
    let heading = match wanted {
        Some(DeliveryState::Dead) => "Dead letters".to_string(),
        Some(other) => format!("Deliveries: {}", other.as_str()),
        None => "Deliveries".to_string(),
    };
    page(&DeliveriesPage {
        layout: Layout::new(heading.clone(), "deliveries", &current, &state),
        filters,
        heading,
        rows,
        dead,
        notice,
        next,
    })
}

/// Queues one delivery again (not while it is being attempted).
pub async fn replay(State(state): State<Shared>, Path(id): Path<i64>) -> Result<Response, UiError> {
    let now = state.clock.now_ms();
    match state.store.replay_delivery(DeliveryId(id), now).await {
        Ok(()) => Ok(see_other(&format!("/ui/deliveries?replayed_one={id}"))),
        Err(StoreError::Conflict(_)) => Err(UiError::Conflict(format!(
            "delivery {id} is being attempted right now; replay it when the attempt is over"
        ))),
        Err(error) => Err(error.into()),
    }
}

/// Queues every dead delivery of a subscription again.
pub async fn replay_dead(
    State(state): State<Shared>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let now = state.clock.now_ms();
    let queued = state
        .store
        .replay_subscription(&name, true, None, None, now)
        .await?;
    Ok(see_other(&format!(
        "/ui/deliveries?subscription={}&replayed={queued}",
        format::query_value(&name)
    )))
}
