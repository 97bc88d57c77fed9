//! The spans classhook makes, and what they may say.
//!
//! Attributes name things (source, type, subscription, status, outcome, sizes); never
//! a secret, a signature, a header's value, a body, or a subscriber's URL (it may
//! carry a token: only its host is shown). Names that come from a request are cut
//! short, so an unauthenticated client cannot make a span large.
//!
//! Each type holds `None` when tracing is off: every method is then a no-op, and
//! nothing is allocated.

use std::net::IpAddr;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use super::Telemetry;
use crate::deliver::schedule::{Next, Outcome};
use crate::event::NewEvent;
use crate::store::AppendOutcome;

/// How much of a name taken from a request a span shows.
const SHOWN_NAME_CHARS: usize = 64;
/// How much of an event type a span shows.
const SHOWN_TYPE_CHARS: usize = 200;

fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// The span of one `POST /hooks/{source}`, from the request's headers to its answer.
pub struct ReceiveTrace(Option<Receiving>);

struct Receiving {
    telemetry: Telemetry,
    /// Holds the span; its children are started in it.
    cx: Context,
}

impl ReceiveTrace {
    /// A span for a request to `source` from `client` (none when `telemetry` is off).
    /// It starts a trace of its own: a `traceparent` sent by the platform (or anyone
    /// posting to a public URL) is not ours to continue.
    pub fn start(telemetry: Option<&Telemetry>, source: &str, client: IpAddr) -> ReceiveTrace {
        let Some(telemetry) = telemetry else {
            return ReceiveTrace(None);
        };
        let tracer = telemetry.tracer();
        let span = tracer
            .span_builder("POST /hooks/{source}")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/hooks/{source}"),
                KeyValue::new("classhook.source", cut(source, SHOWN_NAME_CHARS)),
                KeyValue::new("client.address", client.to_string()),
            ])
            .start_with_context(tracer, &Context::new());
        ReceiveTrace(Some(Receiving {
            telemetry: telemetry.clone(),
            cx: Context::new().with_span(span),
        }))
    }

    /// A child span for one step of the receive, started now; it ends when dropped.
    pub fn step(&self, name: &'static str) -> Step {
        Step(self.0.as_ref().map(|r| {
            let tracer = r.telemetry.tracer();
            tracer.build_with_context(tracer.span_builder(name), &r.cx)
        }))
    }

    /// The whole body has arrived: its size.
    pub fn body_read(&self, bytes: usize) {
        if let Some(r) = &self.0 {
            r.cx.span().set_attribute(KeyValue::new(
                "http.request.body.size",
                i64::try_from(bytes).unwrap_or(i64::MAX),
            ));
        }
    }

    /// What the authenticated event is.
    pub fn described(&self, event: &NewEvent) {
        if let Some(r) = &self.0 {
            let span = r.cx.span();
            span.set_attribute(KeyValue::new("classhook.provider", event.provider.as_str()));
            span.set_attribute(KeyValue::new(
                "classhook.event.type",
                cut(&event.event_type, SHOWN_TYPE_CHARS),
            ));
            span.set_attribute(KeyValue::new(
                "classhook.event.status",
                event.status.as_str(),
            ));
            span.set_attribute(KeyValue::new(
                "classhook.event.kind",
                cut(&event.entity.kind, SHOWN_TYPE_CHARS),
            ));
        }
    }

    /// The W3C `traceparent` of this span, kept with the stored event so that its
    /// delivery attempts continue the trace, whenever and wherever they run.
    pub fn traceparent(&self) -> Option<String> {
        self.0.as_ref().and_then(|r| super::traceparent_of(&r.cx))
    }

    /// What the store made of the event.
    pub fn stored(&self, outcome: &AppendOutcome) {
        if let Some(r) = &self.0 {
            let span = r.cx.span();
            span.set_attribute(KeyValue::new("classhook.outcome", outcome.as_str()));
            span.set_attribute(KeyValue::new("classhook.event.seq", outcome.seq().get()));
        }
    }

    /// The request was refused with this error code.
    pub fn refused(&self, code: &'static str) {
        if let Some(r) = &self.0 {
            r.cx.span().set_attribute(KeyValue::new("error.type", code));
        }
    }

    /// Ends the span with the answer's status (a 5xx marks it failed, as the HTTP
    /// conventions say for servers: a 4xx is the client's error, not ours).
    pub fn finish(self, status: u16) {
        if let Some(r) = self.0 {
            let span = r.cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(format!("answered {status}")));
            }
            span.end();
        }
    }
}

/// A step of a receive (a child span); ends when dropped.
pub struct Step(Option<Span>);

impl Step {
    /// The step failed with this error code.
    pub fn failed(mut self, code: &'static str) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(KeyValue::new("error.type", code));
            span.set_status(Status::error(code));
        }
    }

    /// The store's answer arrived: the event is committed (or was already stored).
    pub fn committed(mut self, outcome: &AppendOutcome) {
        if let Some(span) = &mut self.0 {
            span.add_event(
                "committed",
                vec![
                    KeyValue::new("classhook.outcome", outcome.as_str()),
                    KeyValue::new("classhook.event.seq", outcome.seq().get()),
                ],
            );
        }
    }
}

/// The span of one delivery attempt: the request to the subscriber and its answer.
pub struct AttemptTrace(Option<Span>);

/// What an attempt is about, for its span.
pub struct AttemptAbout<'a> {
    pub subscription: &'a str,
    pub delivery_id: i64,
    pub webhook_id: &'a str,
    pub event_seq: i64,
    pub event_type: &'a str,
    /// The attempt's number since the delivery was last queued (1 = first).
    pub attempt: i64,
    /// The subscriber's URL: only its host and port are shown.
    pub url: &'a str,
}

impl AttemptTrace {
    /// A span whose parent is the receive span named by `parent` (the event's stored
    /// `traceparent`), or a new trace when the event has none (stored while tracing
    /// was off).
    pub fn start(
        telemetry: Option<&Telemetry>,
        parent: Option<&str>,
        about: AttemptAbout<'_>,
    ) -> AttemptTrace {
        let Some(telemetry) = telemetry else {
            return AttemptTrace(None);
        };
        let parent_cx = parent.map_or_else(Context::new, super::context_from);
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("classhook.subscription", cut(about.subscription, 100)),
            KeyValue::new("classhook.delivery.id", about.delivery_id),
            KeyValue::new("classhook.webhook.id", about.webhook_id.to_string()),
            KeyValue::new("classhook.event.seq", about.event_seq),
            KeyValue::new(
                "classhook.event.type",
                cut(about.event_type, SHOWN_TYPE_CHARS),
            ),
            KeyValue::new("classhook.delivery.attempt", about.attempt),
        ];
        if let Ok(url) = url::Url::parse(about.url) {
            if let Some(host) = url.host_str() {
                attributes.push(KeyValue::new("server.address", host.to_string()));
            }
            if let Some(port) = url.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let tracer = telemetry.tracer();
        let span = tracer
            .span_builder("delivery attempt")
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent_cx);
        AttemptTrace(Some(span))
    }

    /// The `traceparent` header for the request: the subscriber's spans become
    /// children of this attempt.
    pub fn traceparent(&self) -> Option<String> {
        let span = self.0.as_ref()?;
        super::traceparent_of(&Context::new().with_remote_span_context(span.span_context().clone()))
    }

    /// Ends the span with how the attempt went and what comes next.
    pub fn finish(self, outcome: &Outcome, next: &Next, took: Duration) {
        let Some(mut span) = self.0 else {
            return;
        };
        let (result, status) = match outcome {
            Outcome::Success { status } => ("success", Some(*status)),
            Outcome::Gone => ("gone", Some(410)),
            Outcome::Throttled { status, .. } => ("throttled", Some(*status)),
            Outcome::Failed { status, .. } => ("failed", *status),
        };
        span.set_attribute(KeyValue::new("classhook.attempt.result", result));
        span.set_attribute(KeyValue::new(
            "classhook.attempt.duration_ms",
            took.as_secs_f64() * 1000.0,
        ));
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        let next = match next {
            Next::Delivered => "delivered",
            Next::RetryAt(_) => "retry",
            Next::Dead => "dead_letter",
            Next::Pause => "pause_subscription",
        };
        span.set_attribute(KeyValue::new("classhook.delivery.next", next));
        if result != "success" {
            // The error's text may quote the URL (and its token): only the status, or
            // that none came (refused, timed out, TLS, the destination guard).
            let kind = status.map_or_else(|| "no_response".to_string(), |s| s.to_string());
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(result));
        }
        span.end();
    }
}
