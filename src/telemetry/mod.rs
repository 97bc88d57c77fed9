//! Tracing: OpenTelemetry spans exported over OTLP/HTTP (protobuf) to
//! `<[telemetry] otlp_endpoint>/v1/traces`, one span per received webhook and one per
//! delivery attempt, and the W3C `traceparent` that carries a trace from the receive
//! to the subscriber.
//!
//! Each gateway owns its tracer provider (no global, like the metrics registry), so
//! tests can run several gateways in one process, and a gateway without an endpoint
//! has none: the hot paths then hold a `None` and make no span at all.
//!
//! Export never holds up ingest or delivery: a span that ends goes into a bounded
//! queue ([`export`]), a background thread sends batches, and a span that does not
//! fit, or whose batch the collector did not take, is dropped, counted in
//! `classhook_trace_spans_dropped_total` and logged at most once a minute.

mod export;
mod spans;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

pub use export::ExportObserver;
pub use spans::{AttemptAbout, AttemptTrace, ReceiveTrace, Step};

use crate::config::TelemetryConfig;

/// The path the OTLP/HTTP exporters append to the collector's base URL for traces.
const TRACES_PATH: &str = "v1/traces";
/// How long one export request may take before its batch counts as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the background thread sends what has ended.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Spans per export request.
const EXPORT_BATCH: usize = 512;
/// Spans waiting for export at most; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 2048;
/// How long shutdown waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's traces URL for an `otlp_endpoint` (a base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is: `/v1/traces` is appended to its path). The
/// value is never repeated in an error: credentials belong in
/// `OTEL_EXPORTER_OTLP_HEADERS`, not in the URL, and a URL with them is refused.
pub fn traces_url(endpoint: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(endpoint).map_err(|e| {
        format!("is not a URL ({e}); expected e.g. http://collector:4318 (the value is not shown)")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not hold credentials (the value is not shown): give the collector's headers in OTEL_EXPORTER_OTLP_HEADERS"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment (the value is not shown)".into());
    }
    let base = url.as_str().trim_end_matches('/');
    url::Url::parse(&format!("{base}/{TRACES_PATH}")).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the trace exporter: {0}")]
pub struct TelemetryError(String);

/// One gateway's tracer and the pipeline behind it. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    queue: Arc<export::Queue>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The pipeline for `config`, or `None` when tracing is off (no endpoint).
    pub fn start(
        config: &TelemetryConfig,
        observer: Arc<dyn ExportObserver>,
    ) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(url) = &config.traces_url else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(export_client()?)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let queue = Arc::new(export::Queue::new(QUEUE_CAPACITY, observer));
        // The SDK's queue is as long as ours, which counts a span until its export
        // ends: the SDK never drops one without our count.
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_CAPACITY)
            .with_max_export_batch_size(EXPORT_BATCH)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = BatchSpanProcessor::new(export::Counted::new(exporter, &queue), batch);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::Bounded::new(processor, &queue))
            // A receive is traced by its ratio; its steps and its delivery attempts
            // follow the receive (its traceparent's flag), wherever they run.
            .with_sampler(Sampler::ParentBased(Box::new(
                if config.sample_ratio >= 1.0 {
                    Sampler::AlwaysOn
                } else {
                    Sampler::TraceIdRatioBased(config.sample_ratio)
                },
            )))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("classhook");
        Ok(Some(Telemetry {
            provider,
            tracer,
            queue,
        }))
    }

    fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Sends what is queued (waiting at most a few seconds) and stops the pipeline.
    pub async fn shutdown(self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        })
        .await;
        self.queue.report_dropped();
    }

    /// Logs dropped spans at most once a minute, forever (a background job).
    pub async fn report_drops(self) {
        let mut ticker = tokio::time::interval(export::REPORT_INTERVAL);
        loop {
            ticker.tick().await;
            self.queue.report_dropped();
        }
    }
}

/// The exporter's HTTP client: reqwest, blocking, since the SDK exports from a
/// thread of its own. Proxy environment variables are ignored, as for deliveries.
/// Built (and later dropped) off the async runtime, as a blocking client must be.
fn export_client() -> Result<reqwest::blocking::Client, TelemetryError> {
    std::thread::spawn(|| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(EXPORT_TIMEOUT / 2)
            .user_agent(crate::deliver::send::USER_AGENT)
            .build()
    })
    .join()
    .map_err(|_| TelemetryError("the HTTP client panicked while being built".into()))?
    .map_err(|e| TelemetryError(e.to_string()))
}

/// The W3C `traceparent` of the span in `cx` (`None` when it has none).
fn traceparent_of(cx: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// A context whose remote parent is the span a `traceparent` names (an empty
/// context when it does not parse).
fn context_from(traceparent: &str) -> Context {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_endpoint_with_v1_traces() {
        for (endpoint, expected) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.example/prefix/",
                "https://otel.example/prefix/v1/traces",
            ),
        ] {
            assert_eq!(traces_url(endpoint).unwrap().as_str(), expected);
        }
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_without_showing_them() {
        for endpoint in [
            "http://user:hunter2@collector:4318",
            "http://collector:4318/?token=hunter2",
            "ftp://collector/hunter2",
            "hunter2",
        ] {
            let error = traces_url(endpoint).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn a_traceparent_round_trips_through_a_context() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent_of(&context_from(text)).as_deref(), Some(text));
        assert_eq!(traceparent_of(&context_from("garbage")), None);
    }
}
