//! `/ui`: what arrived in the last hour (a chart per source), what became of it,
//! what is stuck in delivery, and why requests were refused.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Extension, State};
use axum::response::Response;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page};
use crate::event::EventStatus;
use crate::store::{DeliveryFilter, DeliveryState, RejectionFilter};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// The chart's span, in minutes.
const CHART_MINUTES: i64 = 60;
/// Counting refusals and retries stops here (the page says "or more").
const COUNT_CAP: usize = 1000;

/// The chart's drawing area, in SVG user units.
const CHART_WIDTH: i64 = 600;
const CHART_HEIGHT: i64 = 120;
/// Colours for the sources' lines, distinguishable and at least 3:1 on white.
const COLOURS: [&str; 6] = [
    "#1d4ed8", "#b45309", "#047857", "#9333ea", "#be123c", "#0f766e",
];

pub struct Series {
    pub source: String,
    pub colour: &'static str,
    pub total: i64,
}

/// One source's part of one minute's bar.
pub struct Bar {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
    pub colour: &'static str,
    /// Shown on hover: `north-school: 15 events at 11:02`.
    pub title: String,
}

pub struct Chart {
    pub width: i64,
    pub height: i64,
    pub max: i64,
    pub series: Vec<Series>,
    pub bars: Vec<Bar>,
    pub total: i64,
}

pub struct HeldRow {
    pub name: String,
    pub state: String,
}

pub struct RejectionRow {
    pub id: i64,
    pub when: String,
    pub source: String,
    pub reason: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    chart: Chart,
    accepted: i64,
    unknown_type: i64,
    quarantined: i64,
    refused: String,
    pending: i64,
    retrying: String,
    dead: i64,
    subscriptions: usize,
    held: Vec<HeldRow>,
    rejections: Vec<RejectionRow>,
}

pub async fn show(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
) -> Result<Response, UiError> {
    let store = &state.store;
    let now = state.clock.now_ms();
    let day_ago = now - DAY_MS;
    let (mut accepted, mut unknown_type, mut quarantined) = (0, 0, 0);
    for row in store.stats(Some(day_ago), None).await? {
        match row.status {
            EventStatus::Ok => accepted += row.events,
            EventStatus::UnknownType => unknown_type += row.events,
            EventStatus::Quarantined => quarantined += row.events,
        }
    }
    let recent = store
        .find_rejections(RejectionFilter {
            limit: COUNT_CAP,
            ..RejectionFilter::default()
        })
        .await?;
    let refused = capped(
        recent.iter().filter(|r| r.at_ms >= day_ago).count(),
        recent.len(),
    );
    let queue = store.delivery_queue().await?;
    let pending_rows = store
        .list_deliveries(DeliveryFilter {
            state: Some(DeliveryState::Pending),
            limit: COUNT_CAP,
            ..DeliveryFilter::default()
        })
        .await?;
    let retrying = capped(
        pending_rows.iter().filter(|d| d.attempts > 0).count(),
        pending_rows.len(),
    );
    let subscriptions = store.list_subscriptions().await?;
    let held = subscriptions
        .iter()
        .filter_map(|s| {
            let state = if s.paused {
                format!(
                    "paused{}",
                    s.paused_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            } else if s.hold_until_ms > now {
                format!(
                    "on hold until {} after {} failures",
                    format::time(s.hold_until_ms),
                    s.consecutive_failures
                )
            } else {
                return None;
            };
            Some(HeldRow {
                name: s.spec.name.clone(),
                state,
            })
        })
        .collect();
    let rejections = recent
        .into_iter()
        .take(5)
        .map(|r| RejectionRow {
            id: r.id,
            when: format::ago(now, r.at_ms),
            source: r.source.unwrap_or_else(|| "(no source)".into()),
            reason: r.reason,
            message: r.message,
        })
        .collect();
    let chart = chart(&state, now).await?;
    page(&OverviewPage {
        layout: Layout::new("Overview", "overview", &current, &state),
        chart,
        accepted,
        unknown_type,
        quarantined,
        refused,
        pending: queue.iter().map(|q| q.pending).sum(),
        retrying,
        dead: queue.iter().map(|q| q.dead).sum(),
        subscriptions: subscriptions.len(),
        held,
        rejections,
    })
}

/// `n`, or `n or more` when the list it was counted in was cut at the cap.
fn capped(n: usize, listed: usize) -> String {
    if listed >= COUNT_CAP {
        format!("{n} or more")
    } else {
        n.to_string()
    }
}

/// Events per minute per source over the last hour, one `stats` query a minute
/// (exact counts from any backend, no new query needed).
async fn chart(state: &Shared, now: i64) -> Result<Chart, UiError> {
    let end = now - now.rem_euclid(MINUTE_MS) + MINUTE_MS;
    let start = end - CHART_MINUTES * MINUTE_MS;
    let mut per_source: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for minute in 0..CHART_MINUTES {
        let since = start + minute * MINUTE_MS;
        for row in state
            .store
            .stats(Some(since), Some(since + MINUTE_MS))
            .await?
        {
            per_source
                .entry(row.source)
                .or_insert_with(|| vec![0; CHART_MINUTES as usize])[minute as usize] += row.events;
        }
    }
    // Bars stacked per minute: the tallest minute sets the scale.
    let max = (0..CHART_MINUTES as usize)
        .map(|m| per_source.values().map(|counts| counts[m]).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = CHART_WIDTH / CHART_MINUTES;
    let mut stacked = vec![0_i64; CHART_MINUTES as usize];
    let mut bars = Vec::new();
    let mut series = Vec::new();
    for (i, (source, counts)) in per_source.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (m, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let bottom = CHART_HEIGHT - stacked[m] * CHART_HEIGHT / max;
            stacked[m] += n;
            let top = CHART_HEIGHT - stacked[m] * CHART_HEIGHT / max;
            let minute = start + m as i64 * MINUTE_MS;
            bars.push(Bar {
                x: m as i64 * slot + 1,
                y: top,
                width: slot - 2,
                height: (bottom - top).max(1),
                colour,
                title: format!(
                    "{source}: {n} event{} at {}",
                    if n == 1 { "" } else { "s" },
                    chrono::DateTime::from_timestamp_millis(minute)
                        .map(|t| t.format("%H:%M UTC").to_string())
                        .unwrap_or_default()
                ),
            });
        }
        series.push(Series {
            total: counts.iter().sum(),
            colour,
            source,
        });
    }
    Ok(Chart {
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        max,
        total: series.iter().map(|s| s.total).sum(),
        series,
        bars,
    })
}
