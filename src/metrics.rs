//! Prometheus metrics, one registry per gateway (no globals, so tests can run many).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::deliver::dispatcher::DeliveryObserver;
use crate::deliver::schedule::Outcome;
use crate::event::EventStatus;
use crate::store::{AppendOutcome, CommitObserver, KindCount, QueueDepth};
use crate::telemetry::ExportObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    source: String,
    r#type: String,
    /// `stored`, `duplicate` or `conflict`.
    outcome: &'static str,
    /// `ok`, `unknown_type` or `quarantined` (stored, but not mirrored or delivered).
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    subscription: String,
    /// `success`, `failed`, `throttled` (429/503) or `gone` (410).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    subscription: String,
    /// `pending` (waiting or retrying) or `dead`.
    state: &'static str,
}

/// One source's events since the last summary line.
#[derive(Debug, Default, Clone, Copy)]
struct SourceMinute {
    stored: u64,
    quarantined: u64,
    retries: u64,
    conflicts: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
    /// The same kind name can exist on both platforms (typed on one).
    provider: &'static str,
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    ingest_seconds: Histogram,
    batch_operations: Histogram,
    commit_seconds: Histogram,
    commit_failures: Counter,
    mirror_rows: Family<KindLabels, Gauge>,
    rejections_dropped: Counter,
    body_bytes_in_flight: Gauge,
    connections_open: Gauge,
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Histogram,
    dead_letters: Family<SubscriptionLabels, Counter>,
    delivery_lag_seconds: Histogram,
    queue: Family<QueueLabels, Gauge>,
    rate_waiting: Family<SubscriptionLabels, Gauge>,
    slowdowns: Family<SubscriptionLabels, Counter>,
    trace_spans_exported: Counter,
    trace_spans_dropped: Counter,
    /// Per source, for the periodic summary line.
    summary: Mutex<BTreeMap<String, SourceMinute>>,
}

impl Metrics {
    /// Metrics without an `instance` label (one process, tests).
    pub fn new() -> Arc<Metrics> {
        Metrics::build(Registry::with_prefix("classhook"))
    }

    /// Metrics whose every series carries `instance="<name>"`, so that the series of
    /// several instances on one database stay apart wherever they are gathered.
    pub fn for_instance(name: &str) -> Arc<Metrics> {
        Metrics::build(Registry::with_prefix_and_labels(
            "classhook",
            [("instance".into(), name.to_string().into())].into_iter(),
        ))
    }

    fn build(mut registry: Registry) -> Arc<Metrics> {
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Authentic events received, by source, type and outcome",
            events.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejections",
            "Requests refused, by reason",
            rejections.clone(),
        );
        let ingest_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "ingest_duration_seconds",
            "Time from request to answer on /hooks, all outcomes",
            ingest_seconds.clone(),
        );
        let batch_operations = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_commit_batch_size",
            "Operations committed per store transaction (group commit)",
            batch_operations.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "store_commit_duration_seconds",
            "Time to write and fsync one batch",
            commit_seconds.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "store_commit_failures",
            "Batches that could not be committed (answered 503)",
            commit_failures.clone(),
        );
        let mirror_rows = Family::<KindLabels, Gauge>::default();
        registry.register(
            "mirror_rows",
            "Mirrored entities by kind, platform and state (live or deleted)",
            mirror_rows.clone(),
        );
        let rejections_dropped = Counter::default();
        registry.register(
            "rejections_dropped",
            "Refused requests left out of the rejection log because its buffer was full",
            rejections_dropped.clone(),
        );
        let body_bytes_in_flight = Gauge::default();
        registry.register(
            "body_bytes_in_flight",
            "Bytes of request bodies reserved in the body budget (max_inflight_body_bytes)",
            body_bytes_in_flight.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections being served (at most max_connections)",
            connections_open.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by subscription and result",
            attempts.clone(),
        );
        let attempt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "delivery_attempt_duration_seconds",
            "Time from sending a delivery to its answer (or failure)",
            attempt_seconds.clone(),
        );
        let dead_letters = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "delivery_dead_letters",
            "Deliveries that used up their retries, by subscription",
            dead_letters.clone(),
        );
        let delivery_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "delivery_lag_seconds",
            "Time from receiving an event to its successful delivery",
            delivery_lag_seconds.clone(),
        );
        let queue = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "delivery_queue",
            "Deliveries per subscription now: pending (waiting or retrying) or dead",
            queue.clone(),
        );
        let rate_waiting = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "delivery_rate_waiting",
            "Deliveries waiting on this instance for their subscription's rate limit (or a slow-down after a 429)",
            rate_waiting.clone(),
        );
        let slowdowns = Family::<SubscriptionLabels, Counter>::default();
        registry.register(
            "delivery_slowdowns",
            "Times a 429 from the receiver halved a subscription's rate",
            slowdowns.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Trace spans the collector accepted ([telemetry] otlp_endpoint)",
            trace_spans_exported.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans dropped: the export queue was full, or the collector failed or refused their batch",
            trace_spans_dropped.clone(),
        );
        Arc::new(Metrics {
            trace_spans_exported,
            trace_spans_dropped,
            attempts,
            attempt_seconds,
            dead_letters,
            delivery_lag_seconds,
            queue,
            rate_waiting,
            slowdowns,
            summary: Mutex::default(),
            rejections_dropped,
            registry,
            events,
            rejections,
            ingest_seconds,
            batch_operations,
            commit_seconds,
            commit_failures,
            mirror_rows,
            body_bytes_in_flight,
            connections_open,
        })
    }

    /// An authentic event was stored or recognised. Unknown types share one label so
    /// that new event families cannot grow the series without bound.
    pub fn event(
        &self,
        source: &str,
        event_type: &str,
        status: EventStatus,
        outcome: AppendOutcome,
    ) {
        let r#type = if status == EventStatus::UnknownType {
            "(unknown)".to_string()
        } else {
            event_type.to_string()
        };
        self.events
            .get_or_create(&EventLabels {
                source: source.to_string(),
                r#type,
                outcome: outcome.as_str(),
                status: status.as_str(),
            })
            .inc();
        let mut summary = self.summary.lock().expect("summary lock is never poisoned");
        let minute = summary.entry(source.to_string()).or_default();
        match outcome {
            AppendOutcome::Stored { .. } if status == EventStatus::Quarantined => {
                minute.quarantined += 1
            }
            AppendOutcome::Stored { .. } => minute.stored += 1,
            AppendOutcome::Duplicate { .. } => minute.retries += 1,
            AppendOutcome::Conflict { .. } => minute.conflicts += 1,
        }
    }

    /// What arrived since the last call, per source, as one log line (`None`: nothing
    /// arrived): `school: 120 stored, 2 quarantined, 3 retries; courses: 4 stored`.
    pub fn take_summary(&self) -> Option<String> {
        let taken =
            std::mem::take(&mut *self.summary.lock().expect("summary lock is never poisoned"));
        let parts: Vec<String> = taken
            .into_iter()
            .map(|(source, m)| {
                let counts: Vec<String> = [
                    (m.stored, "stored"),
                    (m.quarantined, "quarantined"),
                    (m.retries, "retries"),
                    (m.conflicts, "conflicts"),
                ]
                .into_iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
                format!("{source}: {}", counts.join(", "))
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn rejection(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn ingest_finished(&self, took: Duration) {
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    /// The load right now: body bytes reserved and connections open.
    pub fn set_load(&self, body_bytes: usize, connections: usize) {
        self.body_bytes_in_flight
            .set(i64::try_from(body_bytes).unwrap_or(i64::MAX));
        self.connections_open
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
    }

    /// Renders the registry, after refreshing the mirror gauges from `counts` and the
    /// dropped-rejection count from the store's running total.
    pub fn render(
        &self,
        counts: &[KindCount],
        queue: &[QueueDepth],
        rejections_dropped: u64,
    ) -> String {
        // Subscriptions deleted since the last scrape drop out.
        self.queue.clear();
        for depth in queue {
            for (state, value) in [("pending", depth.pending), ("dead", depth.dead)] {
                self.queue
                    .get_or_create(&QueueLabels {
                        subscription: depth.subscription.clone(),
                        state,
                    })
                    .set(value);
            }
        }
        let reported = self.rejections_dropped.get();
        if rejections_dropped > reported {
            self.rejections_dropped
                .inc_by(rejections_dropped - reported);
        }
        for count in counts {
            for (state, value) in [("live", count.live), ("deleted", count.deleted)] {
                self.mirror_rows
                    .get_or_create(&KindLabels {
                        kind: count.kind.clone(),
                        provider: count.provider.map_or("", |p| p.as_str()),
                        state,
                    })
                    .set(value);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl CommitObserver for Metrics {
    fn batch_committed(&self, operations: usize, duration: Duration, ok: bool) {
        self.batch_operations.observe(operations as f64);
        self.commit_seconds.observe(duration.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }
}

impl ExportObserver for Metrics {
    fn spans_exported(&self, count: u64) {
        self.trace_spans_exported.inc_by(count);
    }

    fn spans_dropped(&self, count: u64) {
        self.trace_spans_dropped.inc_by(count);
    }
}

impl DeliveryObserver for Metrics {
    fn attempted(&self, subscription: &str, outcome: &Outcome, took: Duration) {
        let result = match outcome {
            Outcome::Success { .. } => "success",
            Outcome::Gone => "gone",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Failed { .. } => "failed",
        };
        self.attempts
            .get_or_create(&AttemptLabels {
                subscription: subscription.to_string(),
                result,
            })
            .inc();
        self.attempt_seconds.observe(took.as_secs_f64());
    }

    fn dead_lettered(&self, subscription: &str) {
        self.dead_letters
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .inc();
    }

    fn delivered(&self, lag: Duration) {
        self.delivery_lag_seconds.observe(lag.as_secs_f64());
    }

    fn waiting_for_rate(&self, subscription: &str, waiting: usize) {
        self.rate_waiting
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    fn slowed_down(&self, subscription: &str) {
        self.slowdowns
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventSeq;

    #[test]
    fn the_summary_line_counts_per_source_and_starts_again_empty() {
        let metrics = Metrics::new();
        let stored = AppendOutcome::Stored { seq: EventSeq(1) };
        for _ in 0..3 {
            metrics.event("school", "CLASS_CREATED", EventStatus::Ok, stored);
        }
        metrics.event("school", "CLASS_CREATED", EventStatus::Quarantined, stored);
        metrics.event(
            "school",
            "CLASS_CREATED",
            EventStatus::Ok,
            AppendOutcome::Duplicate { seq: EventSeq(1) },
        );
        metrics.event("courses", "payment.paid", EventStatus::Ok, stored);
        assert_eq!(
            metrics.take_summary().as_deref(),
            Some("courses: 1 stored; school: 3 stored, 1 quarantined, 1 retries")
        );
        assert_eq!(metrics.take_summary(), None, "nothing new, no line");
        let text = metrics.render(&[], &[], 0);
        assert!(
            text.contains("outcome=\"stored\",status=\"quarantined\"} 1"),
            "quarantined events are told apart: {text}"
        );
    }
}
