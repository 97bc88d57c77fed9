//! The bounded queue in front of the SDK's batch processor, and the count of what
//! was exported or dropped.
//!
//! A span counts as queued from its end until the export request carrying it has
//! ended, so the queue also bounds what waits for a slow collector. [`Bounded`] drops
//! a span that does not fit before the SDK sees it; [`Counted`] wraps the OTLP
//! exporter and counts each batch as exported or, when the collector failed or
//! refused it, dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};

/// At most one log line about dropped spans per this interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// How much of an export error the log line shows.
const SHOWN_ERROR_CHARS: usize = 300;

/// Told how many spans were exported or dropped, e.g. by the metrics.
pub trait ExportObserver: Send + Sync {
    fn spans_exported(&self, count: u64);
    fn spans_dropped(&self, count: u64);
}

/// The queue's state, shared by the processor (ingest and delivery threads) and
/// the exporter (the SDK's export thread).
pub struct Queue {
    capacity: usize,
    /// Ended and not yet through an export request.
    queued: AtomicUsize,
    /// Dropped since the last log line.
    unreported: AtomicU64,
    last_report: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    observer: Arc<dyn ExportObserver>,
}

impl Queue {
    pub fn new(capacity: usize, observer: Arc<dyn ExportObserver>) -> Queue {
        Queue {
            capacity,
            queued: AtomicUsize::new(0),
            unreported: AtomicU64::new(0),
            last_report: Mutex::new(None),
            last_error: Mutex::new(None),
            observer,
        }
    }

    /// Takes a place for one span; `false` (and the drop counted) when full.
    fn admit(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped(1);
            return false;
        }
        true
    }

    /// An export request carrying `count` spans ended.
    fn exported(&self, count: usize, result: &OTelSdkResult) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
        match result {
            Ok(()) => self.observer.spans_exported(count as u64),
            Err(error) => {
                let text: String = error.to_string().chars().take(SHOWN_ERROR_CHARS).collect();
                *self.last_error.lock().expect("never poisoned") = Some(text);
                self.dropped(count as u64);
                self.report_dropped();
            }
        }
    }

    fn dropped(&self, count: u64) {
        self.unreported.fetch_add(count, Ordering::Relaxed);
        self.observer.spans_dropped(count);
    }

    /// Logs the spans dropped since the last line, unless a line was written less
    /// than [`REPORT_INTERVAL`] ago (they are then in the next one).
    pub fn report_dropped(&self) {
        let mut last = self.last_report.lock().expect("never poisoned");
        if last.is_some_and(|at| at.elapsed() < REPORT_INTERVAL) {
            return;
        }
        let dropped = self.unreported.swap(0, Ordering::Relaxed);
        if dropped == 0 {
            return;
        }
        *last = Some(Instant::now());
        let error = self.last_error.lock().expect("never poisoned").take();
        tracing::warn!(
            dropped,
            last_export_error = error.as_deref().unwrap_or("none: the queue was full"),
            "trace spans dropped: the collector is unreachable, refusing or slow (ingest and delivery go on; at most one such line a minute)"
        );
    }
}

/// The SDK's batch processor behind the queue's bound.
#[derive(Debug)]
pub struct Bounded {
    inner: BatchSpanProcessor,
    queue: Arc<Queue>,
}

impl Bounded {
    pub fn new(inner: BatchSpanProcessor, queue: &Arc<Queue>) -> Bounded {
        Bounded {
            inner,
            queue: queue.clone(),
        }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queue.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what each request carried.
#[derive(Debug)]
pub struct Counted<E> {
    inner: E,
    queue: Arc<Queue>,
}

impl<E> Counted<E> {
    pub fn new(inner: E, queue: &Arc<Queue>) -> Counted<E> {
        Counted {
            inner,
            queue: queue.clone(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        self.queue.exported(count, &result);
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.capacity)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Tally {
        exported: AtomicU64,
        dropped: AtomicU64,
    }

    impl ExportObserver for Tally {
        fn spans_exported(&self, count: u64) {
            self.exported.fetch_add(count, Ordering::Relaxed);
        }
        fn spans_dropped(&self, count: u64) {
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_until_an_export_ends() {
        let tally = Arc::new(Tally::default());
        let queue = Queue::new(3, tally.clone());
        let admitted = (0..5).filter(|_| queue.admit()).count();
        assert_eq!(admitted, 3);
        assert_eq!(tally.dropped.load(Ordering::Relaxed), 2);
        queue.exported(3, &Ok(()));
        assert_eq!(tally.exported.load(Ordering::Relaxed), 3);
        assert!(queue.admit(), "the export made room");
        queue.exported(
            1,
            &Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "connection refused".into(),
            )),
        );
        assert_eq!(
            tally.dropped.load(Ordering::Relaxed),
            3,
            "a failed export's spans are dropped"
        );
        assert_eq!(queue.queued.load(Ordering::Relaxed), 0);
    }
}
