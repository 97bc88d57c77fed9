//! `/stats`: events counted per source, type and status over a time window.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Query, parse_time};
use super::views::{ErrorBody, Stats, StatsRowView};
use super::{ApiState, read};
use crate::http::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Count events received at or after this RFC 3339 time (a date alone means its midnight UTC).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Count events received before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
}

/// Counts events per source, type and status: distinct events, and the requests
/// received for them (the platforms' retries included).
#[utoipa::path(get, path = "/stats", tag = "stats", params(StatsQuery), responses(
    (status = 200, description = "The counts", body = Stats),
    (status = 400, description = "A time is malformed", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn get_stats(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let since_ms = parse_time("since", q.since.as_deref())?;
    let until_ms = parse_time("until", q.until.as_deref())?;
    let rows = read(state.store.stats(since_ms, until_ms)).await?;
    Ok(Json(Stats {
        since: q.since,
        until: q.until,
        total_events: rows.iter().map(|r| r.events).sum(),
        total_received: rows.iter().map(|r| r.received).sum(),
        rows: rows.into_iter().map(StatsRowView::from).collect(),
    }))
}
