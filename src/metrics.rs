//! Prometheus metrics, one registry per gateway (no globals, so tests can run many).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::event::EventStatus;
use crate::store::{AppendOutcome, CommitObserver, KindCount};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    source: String,
    r#type: String,
    /// `stored`, `duplicate` or `conflict`.
    outcome: &'static str,
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
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("classhook");
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
        Arc::new(Metrics {
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
            })
            .inc();
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
    pub fn render(&self, counts: &[KindCount], rejections_dropped: u64) -> String {
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
