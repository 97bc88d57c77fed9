//! Tracing over real sockets: a small OTLP/HTTP collector inside the test decodes
//! what the gateway exports (protobuf `ExportTraceServiceRequest`), a subscriber
//! receives the deliveries; the spans must arrive with their names, attributes and
//! parents, the subscriber's `traceparent` must continue the receive's trace, and no
//! secret, signature or body may appear in anything exported.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use classhook::clock::ManualClock;
use classhook::deliver::dispatcher::{DispatchOptions, Dispatcher, Finished};
use classhook::metrics::Metrics;
use classhook::telemetry::Telemetry;
use common::receiver::{Receiver, Reply, eventually_async_within, eventually_within};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use serde_json::Value;

const SUB_SECRET: &str = "subscriber-secret-do-not-export";
/// Spans are sent about once a second; a loaded 2-core machine is slow.
const SPANS_WITHIN: Duration = Duration::from_secs(20);

/// One exported span with the resource it came with.
#[derive(Debug, Clone)]
struct Exported {
    span: Span,
    resource: Vec<KeyValue>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&any_value::Value> {
        attribute(&self.span.attributes, key)
    }

    fn text(&self, key: &str) -> &str {
        match self.attr(key) {
            Some(any_value::Value::StringValue(s)) => s,
            _ => "",
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(any_value::Value::IntValue(n)) => Some(*n),
            _ => None,
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// Every string an exported span carries: its name, attribute keys and values, its
/// events' names and attributes, its status message, and its resource.
fn strings_of(exported: &Exported) -> Vec<String> {
    fn values(attributes: &[KeyValue], out: &mut Vec<String>) {
        for kv in attributes {
            out.push(kv.key.clone());
            match &kv.value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(s)),
                }) => out.push(s.clone()),
                Some(AnyValue { value: Some(v) }) => out.push(format!("{v:?}")),
                _ => {}
            }
        }
    }
    let span = &exported.span;
    let mut out = vec![span.name.clone()];
    values(&span.attributes, &mut out);
    for event in &span.events {
        out.push(event.name.clone());
        values(&event.attributes, &mut out);
    }
    if let Some(status) = &span.status {
        out.push(status.message.clone());
    }
    values(&exported.resource, &mut out);
    out
}

/// A small OTLP/HTTP collector: decodes every `POST /v1/traces`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
    /// Content types of the requests received.
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (collector, addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Exported> {
        self.spans()
            .into_iter()
            .filter(|s| s.span.name == name)
            .collect()
    }

    /// Waits (bounded) until `check` holds for the spans received.
    async fn wait(&self, what: &str, check: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        eventually_within(what, SPANS_WITHIN, || check(&self.spans())).await;
        self.spans()
    }
}

async fn collect(
    State(collector): State<Collector>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    collector.content_types.lock().unwrap().push(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    let mut spans = collector.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    span,
                    resource: resource.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

/// Sources, a subscription to `receiver` and `[telemetry]` towards `collector`.
fn config(collector: Option<SocketAddr>, receiver: &Receiver, delivery: &str) -> String {
    let telemetry = collector
        .map(|addr| {
            format!(
                "[telemetry]\notlp_endpoint = \"http://{addr}\"\nservice_name = \"classhook-test\"\n"
            )
        })
        .unwrap_or_default();
    format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"10ms\"\n{delivery}\n{telemetry}\n{SOURCES}\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"{SUB_SECRET}\"\nretry_schedule = [\"10s\"]\n",
        receiver.url()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every string leaf of a JSON body (the values a body could leak through).
fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn spans_arrive_with_their_parents_and_the_subscriber_continues_the_trace() {
    let (collector, collector_addr) = Collector::start().await;
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with("", &config(Some(collector_addr), &receiver, "")).await;

    let class = dreamclass_sample("CLASS_CREATED", 1);
    let course = loopwise(
        "course.created",
        classhook::provider::sample::sample_data(
            classhook::provider::ProviderKind::Loopwise,
            "course.created",
            2,
        ),
    );
    assert_eq!(gw.post("/hooks/school", &class).await.status, 200);
    assert_eq!(gw.post("/hooks/courses", &course).await.status, 200);
    // A forged signature: refused, and its span says why.
    let mut forged = dreamclass_sample("CLASS_UPDATED", 3);
    forged.body = String::from_utf8(forged.body)
        .unwrap()
        .replacen("\"signature\":\"", "\"signature\":\"AAAA", 1)
        .into_bytes();
    assert_eq!(
        gw.post("/hooks/school", &forged).await.error(),
        "signature_invalid"
    );

    let delivered = receiver.wait_for(2).await;
    let spans = collector
        .wait("2 attempt spans and 3 receive spans", |spans| {
            let count = |name: &str| spans.iter().filter(|s| s.span.name == name).count();
            count("delivery attempt") >= 2 && count("POST /hooks/{source}") >= 3
        })
        .await;
    assert!(
        collector
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "OTLP/HTTP with protobuf"
    );
    for span in &spans {
        let service = attribute(&span.resource, "service.name");
        assert_eq!(
            service,
            Some(&any_value::Value::StringValue("classhook-test".into()))
        );
    }

    let receives = collector.named("POST /hooks/{source}");
    for (source, event_type, delivered_to) in [
        ("school", "CLASS_CREATED", "dreamclass"),
        ("courses", "course.created", "loopwise"),
    ] {
        let receive = receives
            .iter()
            .find(|s| {
                s.text("classhook.source") == source
                    && s.int("http.response.status_code") == Some(200)
            })
            .unwrap_or_else(|| panic!("a receive span for {source}: {receives:#?}"));
        assert_eq!(receive.span.kind, SpanKind::Server as i32);
        assert!(
            receive.span.parent_span_id.is_empty(),
            "the receive is a trace's root"
        );
        assert_eq!(receive.text("classhook.event.type"), event_type);
        assert_eq!(receive.text("classhook.provider"), delivered_to);
        assert_eq!(receive.text("classhook.outcome"), "stored");
        assert_eq!(receive.text("http.route"), "/hooks/{source}");
        let seq = receive
            .int("classhook.event.seq")
            .expect("the stored event's seq");

        // Its steps are its children, in the same trace.
        assert!(receive.int("http.request.body.size").is_some_and(|n| n > 0));
        for step in ["authenticate", "store"] {
            let child = spans
                .iter()
                .find(|s| s.span.name == step && s.span.parent_span_id == receive.span.span_id)
                .unwrap_or_else(|| panic!("a {step} span under the {source} receive"));
            assert_eq!(child.span.trace_id, receive.span.trace_id);
        }
        let store = spans
            .iter()
            .find(|s| s.span.name == "store" && s.span.parent_span_id == receive.span.span_id)
            .unwrap();
        assert!(
            store.span.events.iter().any(|e| e.name == "committed"),
            "the commit is an event of the store step"
        );

        // The attempt continues the receive's trace, under the receive span.
        let attempt = spans
            .iter()
            .find(|s| {
                s.span.name == "delivery attempt" && s.int("classhook.event.seq") == Some(seq)
            })
            .unwrap_or_else(|| panic!("an attempt span for event {seq}"));
        assert_eq!(attempt.span.kind, SpanKind::Client as i32);
        assert_eq!(attempt.span.trace_id, receive.span.trace_id);
        assert_eq!(attempt.span.parent_span_id, receive.span.span_id);
        assert_eq!(attempt.text("classhook.subscription"), "crm");
        assert_eq!(attempt.text("classhook.attempt.result"), "success");
        assert_eq!(attempt.text("classhook.delivery.next"), "delivered");
        assert_eq!(attempt.int("http.response.status_code"), Some(200));
        assert_eq!(attempt.text("server.address"), "127.0.0.1");
        assert!(attempt.attr("classhook.attempt.duration_ms").is_some());

        // The subscriber got a traceparent naming this trace and the attempt span.
        let webhook_id = attempt.text("classhook.webhook.id");
        let request = delivered
            .iter()
            .find(|r| r.header("webhook-id") == webhook_id)
            .expect("the attempt's request reached the subscriber");
        assert_eq!(
            request.header("traceparent"),
            format!(
                "00-{}-{}-01",
                hex(&attempt.span.trace_id),
                hex(&attempt.span.span_id)
            )
        );
    }

    let refused = receives
        .iter()
        .find(|s| s.int("http.response.status_code") == Some(401))
        .expect("a span for the refused request");
    assert_eq!(refused.text("error.type"), "signature_invalid");
    assert!(
        spans.iter().any(|s| s.span.name == "authenticate"
            && s.span.parent_span_id == refused.span.span_id
            && s.text("error.type") == "signature_invalid"),
        "the failed step says so"
    );

    // Nothing exported holds a secret, a signature or anything from a body.
    let mut forbidden: Vec<String> = vec![
        SCHOOL_SECRET.into(),
        COURSES_SECRET.into(),
        SUB_SECRET.into(),
    ];
    for request in [&class, &course, &forged] {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let mut found = Vec::new();
        leaves(&body, &mut found);
        // The event type is meant to be shown; everything else in a body is not.
        forbidden.extend(found.into_iter().filter(|s| {
            s.len() >= 6 && s != "CLASS_CREATED" && s != "CLASS_UPDATED" && s != "course.created"
        }));
        forbidden.push(String::from_utf8(request.body.clone()).unwrap());
        for (name, value) in &request.headers {
            if name.to_ascii_lowercase().contains("signature") {
                forbidden.push(value.clone());
            }
        }
    }
    for request in &delivered {
        forbidden.push(request.header("webhook-signature").to_string());
        forbidden.push(String::from_utf8(request.body.clone()).unwrap());
    }
    forbidden.retain(|f| !f.is_empty());
    for span in &spans {
        for text in strings_of(span) {
            for secret in &forbidden {
                assert!(
                    !text.contains(secret.as_str()),
                    "span {:?} exports {secret:?} in {text:?}",
                    span.span.name
                );
            }
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_retry_on_another_dispatcher_later_continues_the_same_trace() {
    let (collector, collector_addr) = Collector::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let clock = ManualClock::at(1_800_000_000_000);
    let gw = Gateway::start_with_clock(
        "",
        &config(Some(collector_addr), &receiver, "enabled = false"),
        Arc::new(clock.clone()),
    )
    .await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 7))
            .await
            .status,
        200
    );
    // Another instance: a tracer pipeline of its own, which knows the receive only
    // from what the store kept.
    let other = classhook::config::TelemetryConfig {
        traces_url: Some(
            format!("http://{collector_addr}/v1/traces")
                .parse()
                .unwrap(),
        ),
        service_name: "classhook-other".into(),
        sample_ratio: 1.0,
    };
    let telemetry = Telemetry::start(&other, Metrics::new()).unwrap().unwrap();
    let mut dispatcher = Dispatcher::new(
        gw.store.clone(),
        Arc::new(clock.clone()),
        DispatchOptions {
            allow_private_destinations: true,
            hold_after_failures: 20,
            poll_interval: Duration::from_millis(10),
            lease_margin: Duration::from_secs(30),
        },
    )
    .with_telemetry(Some(telemetry.clone()));
    assert_eq!(dispatcher.step().await, [Finished::Attempted]);
    clock.advance(12_000);
    assert_eq!(dispatcher.step().await, [Finished::Attempted]);
    telemetry.shutdown().await;
    assert_eq!(
        collector.named("delivery attempt").len(),
        2,
        "shutting the pipeline down sends what it held"
    );

    let spans = collector
        .wait("a receive and two attempts", |spans| {
            spans
                .iter()
                .filter(|s| s.span.name == "delivery attempt")
                .count()
                >= 2
                && spans.iter().any(|s| s.span.name == "POST /hooks/{source}")
        })
        .await;
    let receive = spans
        .iter()
        .find(|s| s.span.name == "POST /hooks/{source}")
        .unwrap();
    let mut attempts: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.span.name == "delivery attempt")
        .collect();
    attempts.sort_by_key(|s| s.int("classhook.delivery.attempt"));
    assert_eq!(attempts[0].text("classhook.attempt.result"), "failed");
    assert_eq!(attempts[0].text("classhook.delivery.next"), "retry");
    assert_eq!(attempts[0].text("error.type"), "500");
    assert_eq!(attempts[1].text("classhook.attempt.result"), "success");
    for attempt in &attempts {
        assert_eq!(attempt.span.trace_id, receive.span.trace_id);
        assert_eq!(attempt.span.parent_span_id, receive.span.span_id);
        assert_eq!(
            attribute(&attempt.resource, "service.name"),
            Some(&any_value::Value::StringValue("classhook-other".into()))
        );
    }
    let traceparents: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("traceparent").to_string())
        .collect();
    assert_eq!(traceparents.len(), 2);
    for (request, attempt) in traceparents.iter().zip(&attempts) {
        assert_eq!(
            request,
            &format!(
                "00-{}-{}-01",
                hex(&attempt.span.trace_id),
                hex(&attempt.span.span_id)
            )
        );
    }
    gw.stop().await;
}

/// A counter's value, whatever labels it carries (such as the instance's).
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_collector_that_is_down_costs_ingest_and_delivery_nothing_and_drops_are_counted() {
    // A port nothing listens on: every export is refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with("", &config(Some(down), &receiver, "")).await;
    for n in 0..20 {
        let started = Instant::now();
        let answer = gw
            .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
            .await;
        assert_eq!(answer.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ingest does not wait for the collector"
        );
    }
    let delivered = receiver.wait_for(20).await;
    assert!(
        delivered
            .iter()
            .all(|r| r.header("traceparent").starts_with("00-")),
        "the traceparent goes out whether or not the collector is up"
    );
    eventually_async_within("dropped spans counted", SPANS_WITHIN, async || {
        // 20 receives (with 2 steps each) and 20 attempts.
        counter(&gw.metrics().await, "classhook_trace_spans_dropped_total") >= 80
    })
    .await;
    assert_eq!(
        counter(&gw.metrics().await, "classhook_trace_spans_exported_total"),
        0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_slow_ingest_or_delivery() {
    // Takes connections and never answers: each export waits for its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with("", &config(Some(addr), &receiver, "")).await;
    let started = Instant::now();
    for n in 0..50 {
        let answer = gw
            .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
            .await;
        assert_eq!(answer.status, 200);
    }
    receiver.wait_for(50).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "50 events stored and delivered while the collector hangs (export timeout 10 s): {:?}",
        started.elapsed()
    );
    eventually_within("the exporter is connected", SPANS_WITHIN, || {
        !held.lock().unwrap().is_empty()
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_traced_and_no_traceparent_is_sent() {
    let receiver = Receiver::start().await;
    let gw = Gateway::start_with("", &config(None, &receiver, "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    let delivered = receiver.wait_for(1).await;
    assert_eq!(delivered[0].header("traceparent"), "");
    let listed = gw
        .store
        .list_events(classhook::store::EventFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let event = gw.store.get_event(listed[0].seq).await.unwrap().unwrap();
    assert_eq!(event.trace_parent, None, "nothing is kept for tracing");
    gw.stop().await;
}

#[tokio::test]
async fn a_receive_left_out_by_sampling_exports_nothing_and_says_so_downstream() {
    let (collector, collector_addr) = Collector::start().await;
    let receiver = Receiver::start().await;
    let text = config(Some(collector_addr), &receiver, "")
        .replace("service_name = \"classhook-test\"", "sample_ratio = 0");
    let gw = Gateway::start_with("", &text).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    let delivered = receiver.wait_for(1).await;
    let traceparent = delivered[0].header("traceparent").to_string();
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-00"),
        "the subscriber is told the trace was not sampled: {traceparent:?}"
    );
    // Stopping sends whatever was queued (as the retry test shows): nothing was.
    gw.stop().await;
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
}
