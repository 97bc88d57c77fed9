//! What every platform meets at the door: size limits, timeouts, storage failure,
//! routing, and the rejection log.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes, at most `limit` long.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the stalled connection open past {limit:?}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn oversized_bodies_are_413_with_or_without_a_length() {
    let gw = Gateway::start_with("max_body_bytes = 1024", SOURCES).await;
    let answer = gw.post_raw("/hooks/school", &[], vec![b'{'; 2000]).await;
    assert_eq!((answer.status, answer.error()), (413, "payload_too_large"));

    // Chunked, so the size is only known while reading.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /hooks/school HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"error\":\"payload_too_large\""),
        "{answer}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_is_cut_off() {
    let gw = Gateway::start_with("read_timeout = \"1s\"", SOURCES).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /hooks/school HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{\"id\":")
        .await
        .unwrap();
    let (answer, took) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Meanwhile and afterwards, others are served.
    let event = dreamclass_sample("CLASS_CREATED", 1);
    assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_headers_is_cut_off() {
    let gw = Gateway::start_with("read_timeout = \"1s\"", SOURCES).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /hooks/school HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn storage_that_cannot_commit_answers_503_and_a_retry_succeeds() {
    if common::backend::skip_unless_sqlite(
        "storage_that_cannot_commit_answers_503_and_a_retry_succeeds",
        "it holds the SQLite write lock; the PostgreSQL outage test covers 503 there",
    ) {
        return;
    }
    let gw = Gateway::start_with("append_timeout = \"300ms\"", SOURCES).await;
    // Another process holds the database's write lock.
    let db = gw.dir.path().join("data").join("classhook.db");
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let event = dreamclass_sample("CLASS_CREATED", 3);
    let answer = gw.post("/hooks/school", &event).await;
    assert_eq!(
        (answer.status, answer.error()),
        (503, "storage_unavailable")
    );
    assert!(answer.headers.contains_key("retry-after"));

    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    // The platform retries; the event ends up stored exactly once.
    let mut status = 0;
    for _ in 0..50 {
        status = gw.post("/hooks/school", &event).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert!(
        gw.store
            .find_event("school", &format!("id:{}", id_of(&event)))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(gw.store.count_events().await.unwrap(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_routes_sources_and_methods_get_json_errors() {
    let gw = Gateway::start().await;
    let answer = gw.post_raw("/hooks/nobody", &[], b"{}".to_vec()).await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    assert!(answer.json["message"].as_str().unwrap().contains("nobody"));

    let response = gw.client.get(gw.url("/hooks/school")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    let response = gw.client.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    let response = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn rejections_are_logged_without_credentials() {
    let gw = Gateway::start().await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    let response = gw
        .client
        .post(gw.url("/hooks/school-auth"))
        .basic_auth("dreamclass", Some("guessed-password"))
        .body(event.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let wrong = dreamclass("CLASS_CREATED", json!({"id": 1}), "stranger");
    assert_eq!(gw.post("/hooks/school", &wrong).await.status, 403);
    assert_eq!(
        gw.post_raw("/hooks/ghost", &[], b"hello".to_vec())
            .await
            .status,
        404
    );

    let log = rejections_at_least(&gw.store, 3).await;
    let reasons: Vec<&str> = log.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["unknown_source", "tenant_not_allowed", "unauthorized"]
    );
    // Refused from the headers: the body was never read, so none is kept.
    let ghost = &log[0];
    assert_eq!(
        (
            ghost.source.as_deref(),
            ghost.status,
            ghost.body.as_slice(),
            ghost.body_len
        ),
        (Some("ghost"), 404, &b""[..], 0)
    );
    assert!(
        ghost
            .remote_addr
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    for rejection in &log {
        let text = format!("{rejection:?}");
        let credentials =
            base64::engine::general_purpose::STANDARD.encode("dreamclass:guessed-password");
        for secret in [
            "guessed-password",
            "pa55word",
            SCHOOL_SECRET,
            credentials.as_str(),
        ] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_unsigned_source_accepts_any_signature_field() {
    let gw = Gateway::start().await;
    let body = serde_json::to_vec(&json!({
        "id": uuid::Uuid::new_v4().to_string(), "type": "CLASS_DELETED", "tenant": "t",
        "signature": "", "timestamp": 1, "data": {"id": 9}
    }))
    .unwrap();
    assert_eq!(gw.post_raw("/hooks/open", &[], body).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_shutdown() {
    let mut gw = Gateway::start_with("read_timeout = \"5s\"", SOURCES).await;
    // Send the headers now and the body after shutdown has begun.
    let event = dreamclass_sample("CLASS_CREATED", 11);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /hooks/school HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        event.body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(gw.running.take().unwrap().stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&event.body).await.unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stopping.await.unwrap();
    assert!(
        gw.store
            .find_event("school", &format!("id:{}", id_of(&event)))
            .await
            .unwrap()
            .is_some()
    );
}

/// A Loopwise source that only its platform's address may send to (here 127.0.0.1).
const GUARDED: &str = r#"
[[source]]
name = "guarded"
provider = "loopwise"
secret = "courses-signing-key"
basic_auth = { username = "loopwise", password = "pa55word" }
allowed_ips = ["127.0.0.1/32"]
"#;

fn course_event(seq: u64) -> classhook::provider::sample::SignedRequest {
    use classhook::provider::{ProviderKind, sample};
    loopwise(
        "course.created",
        sample::sample_data(ProviderKind::Loopwise, "course.created", seq),
    )
}

fn with_basic_auth(request: &classhook::provider::sample::SignedRequest) -> Vec<(String, String)> {
    let credentials = base64::engine::general_purpose::STANDARD.encode("loopwise:pa55word");
    let mut headers = request.headers.clone();
    headers.push(("authorization".into(), format!("Basic {credentials}")));
    headers
}

#[tokio::test]
async fn an_allowlist_refuses_other_senders_before_any_other_check() {
    let gw = Gateway::start_with("", &format!("{SOURCES}{GUARDED}")).await;
    let stranger = client_from("127.0.0.2");
    let platform = client_from("127.0.0.1");

    // Authentic in every other way, but from the wrong address.
    let event = course_event(1);
    let answer = gw
        .post_with(
            &stranger,
            "/hooks/guarded",
            &with_basic_auth(&event),
            event.body.clone(),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (403, "ip_not_allowed"));
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{}",
        answer.json
    );
    // Neither Basic Auth (401) nor the body (400) is looked at first.
    let answer = gw
        .post_with(&stranger, "/hooks/guarded", &[], b"not json".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (403, "ip_not_allowed"));
    // An unknown source is still 404, whoever asks.
    let answer = gw
        .post_with(&stranger, "/hooks/ghost", &[], b"{}".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    // The allowlist is the guarded source's alone.
    let other = course_event(2);
    assert_eq!(
        gw.post_with(
            &stranger,
            "/hooks/courses",
            &other.headers,
            other.body.clone()
        )
        .await
        .status,
        200
    );
    // From the allowed address the same request is accepted.
    let answer = gw
        .post_with(
            &platform,
            "/hooks/guarded",
            &with_basic_auth(&event),
            event.body.clone(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(gw.store.count_events().await.unwrap(), 2);

    let log = rejections_at_least(&gw.store, 3).await;
    let seen: Vec<(&str, Option<&str>, u16)> = log
        .iter()
        .map(|r| (r.reason.as_str(), r.source.as_deref(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("unknown_source", Some("ghost"), 404),
            ("ip_not_allowed", Some("guarded"), 403),
            ("ip_not_allowed", Some("guarded"), 403),
        ]
    );
    for rejection in &log {
        let remote = rejection.remote_addr.as_deref().unwrap();
        assert!(remote.starts_with("127.0.0.2:"), "{remote}");
    }
    // Refused from the headers, before the body was read.
    assert_eq!((log[2].body.len(), log[2].body_len), (0, 0));
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_by_the_right_most_untrusted_address() {
    let guarded = r#"
[[source]]
name = "guarded"
provider = "loopwise"
secret = "courses-signing-key"
allowed_ips = ["127.0.0.2"]
"#;
    let gw = Gateway::start_with(
        r#"trusted_proxies = ["127.0.0.1/32", "127.0.0.3"]"#,
        &format!("{SOURCES}{guarded}"),
    )
    .await;
    let proxy = client_from("127.0.0.1");
    let mut seq = 100;
    // (from, X-Forwarded-For headers, the client the gateway should judge, admitted)
    let cases: &[(&str, &[&str], &str, bool)] = &[
        // The proxy appended the real sender; what the sender wrote to its left is not trusted.
        ("127.0.0.1", &["10.9.9.9, 127.0.0.2"], "127.0.0.2", true),
        ("127.0.0.1", &["127.0.0.2, 10.9.9.9"], "10.9.9.9", false),
        // Several headers are one list, in order.
        ("127.0.0.1", &["127.0.0.2", "10.9.9.9"], "10.9.9.9", false),
        ("127.0.0.1", &["10.9.9.9", "127.0.0.2"], "127.0.0.2", true),
        // A chain of trusted proxies is walked through.
        (
            "127.0.0.1",
            &["10.9.9.9, 127.0.0.2, 127.0.0.3"],
            "127.0.0.2",
            true,
        ),
        (
            "127.0.0.1",
            &["127.0.0.2, 10.9.9.9, 127.0.0.3"],
            "10.9.9.9",
            false,
        ),
        // Malformed, only trusted entries, or no header: the proxy itself is the client.
        (
            "127.0.0.1",
            &["127.0.0.2, not-an-address"],
            "127.0.0.1",
            false,
        ),
        ("127.0.0.1", &["127.0.0.3, 127.0.0.1"], "127.0.0.1", false),
        ("127.0.0.1", &[], "127.0.0.1", false),
        // From an untrusted peer the header is ignored, both ways.
        ("127.0.0.4", &["127.0.0.2"], "127.0.0.4", false),
        ("127.0.0.2", &["10.9.9.9"], "127.0.0.2", true),
    ];
    let mut refused = Vec::new();
    for (from, forwarded, judged, admitted) in cases {
        seq += 1;
        let event = course_event(seq);
        let mut headers = event.headers.clone();
        headers.extend(
            forwarded
                .iter()
                .map(|v| ("x-forwarded-for".into(), v.to_string())),
        );
        let answer = gw
            .post_with(&client_from(from), "/hooks/guarded", &headers, event.body)
            .await;
        let case = format!("from {from} with {forwarded:?}");
        if *admitted {
            assert_eq!(answer.status, 200, "{case}: {}", answer.json);
        } else {
            assert_eq!(
                (answer.status, answer.error()),
                (403, "ip_not_allowed"),
                "{case}"
            );
            let message = answer.json["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("from {judged} ")),
                "{case}: {message}"
            );
            refused.push((*from, *judged));
        }
    }
    // Every other refusal is logged under the resolved client too.
    let answer = gw
        .post_with(
            &proxy,
            "/hooks/ghost",
            &[("x-forwarded-for".into(), "127.0.0.2".into())],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(answer.status, 404);
    refused.push(("127.0.0.1", "127.0.0.2"));

    let log = rejections_at_least(&gw.store, refused.len()).await;
    assert_eq!(log.len(), refused.len());
    for (rejection, (from, judged)) in log.iter().rev().zip(&refused) {
        let remote = rejection.remote_addr.as_deref().unwrap();
        let expected = if from == judged {
            format!("{from}:")
        } else {
            format!("{judged} via {from}:")
        };
        assert!(
            remote.starts_with(&expected),
            "{remote} should start with {expected}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_dual_stack_listener_matches_ipv4_entries() {
    // An IPv6 socket sees IPv4 clients as ::ffff:a.b.c.d.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"[::ffff:127.0.0.1]:0\"\ndata_dir = {:?}\n[api]\ntokens = [\"a-token-of-sixteen-chars\"]\n{GUARDED}",
        dir.path().join("data").display().to_string()
    );
    let config = classhook::config::Config::from_toml_str(
        std::path::Path::new("t.toml"),
        &text,
        &[],
        &|_| None,
    )
    .unwrap();
    let mut gw = Gateway::start_config(
        dir,
        &config,
        std::sync::Arc::new(classhook::clock::SystemClock),
    )
    .await;
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    gw.addr = std::net::SocketAddr::from(([127, 0, 0, 1], gw.addr.port()));

    let event = course_event(1);
    let answer = gw
        .post_with(
            &client_from("127.0.0.2"),
            "/hooks/guarded",
            &with_basic_auth(&event),
            event.body.clone(),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (403, "ip_not_allowed"));
    let answer = gw
        .post_with(
            &client_from("127.0.0.1"),
            "/hooks/guarded",
            &with_basic_auth(&event),
            event.body.clone(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let log = rejections_at_least(&gw.store, 1).await;
    let remote = log[0].remote_addr.as_deref().unwrap();
    assert!(remote.starts_with("127.0.0.2:"), "{remote}");
    gw.stop().await;
}

/// Sends a request head declaring a 1 MiB body and a few bytes of it, as a slow or
/// malicious client would, and returns what the server answers before it closes.
async fn head_and_a_little(
    gw: &Gateway,
    from: &str,
    path: &str,
    extra_headers: &str,
) -> (String, Duration) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n{extra_headers}\r\n{{\"id\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(3)).await
}

#[tokio::test]
async fn refusals_decided_by_the_headers_read_no_body_and_close() {
    // Before, each of these waited for a body that never came (408 after read_timeout).
    let gw = Gateway::start_with("read_timeout = \"10s\"", &format!("{SOURCES}{GUARDED}")).await;
    let wrong = base64::engine::general_purpose::STANDARD.encode("dreamclass:guessed");
    let cases = [
        (
            "127.0.0.1",
            "/hooks/nope",
            String::new(),
            404,
            "unknown_source",
        ),
        (
            "127.0.0.1",
            "/hooks/school-auth",
            String::new(),
            401,
            "unauthorized",
        ),
        (
            "127.0.0.1",
            "/hooks/school-auth",
            format!("authorization: Basic {wrong}\r\n"),
            401,
            "unauthorized",
        ),
        (
            "127.0.0.2",
            "/hooks/guarded",
            String::new(),
            403,
            "ip_not_allowed",
        ),
    ];
    for (from, path, extra, status, code) in &cases {
        let (answer, took) = head_and_a_little(&gw, from, path, extra).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {answer}"
        );
        assert!(
            answer.contains(&format!("\"error\":\"{code}\"")),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        // Well before the 10 s read timeout a body-waiting refusal would need (a
        // loose bound: a loaded machine may be slow, never that slow).
        assert!(
            took < Duration::from_secs(5),
            "{path}: answered after {took:?}"
        );
    }
    let log = rejections_at_least(&gw.store, cases.len()).await;
    assert_eq!(log.len(), cases.len());
    assert!(log.iter().all(|r| r.body_len == 0), "{log:?}");
    gw.stop().await;
}

/// Opens a connection that declares `len` bytes of body and sends only its head.
async fn hold_body(gw: &Gateway, path: &str, len: usize) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn metric(gw: &Gateway, name: &str) -> String {
    let text = gw.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
        .to_string()
}

#[tokio::test]
async fn the_body_budget_sheds_with_503_while_small_requests_still_pass() {
    let gw = Gateway::start_with(
        "max_body_bytes = 4096\nmax_inflight_body_bytes = 8192\nread_timeout = \"10s\"",
        SOURCES,
    )
    .await;
    // Two slow senders hold 7000 of the 8192 budget bytes.
    let mut slow = hold_body(&gw, "/hooks/school", 3500).await;
    let slower = hold_body(&gw, "/hooks/school", 3500).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(&gw, "classhook_body_bytes_in_flight{instance=\"gw\"} ").await,
        "classhook_body_bytes_in_flight{instance=\"gw\"} 7000"
    );

    // A body that does not fit is refused at once, before it is read.
    let mut shed = hold_body(&gw, "/hooks/school", 4000).await;
    let (answer, took) = read_until_closed(&mut shed, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\"error\":\"overloaded\""), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: "), "{answer}");
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "not after the read timeout: {took:?}"
    );

    // A chunked body is charged as it arrives: the second chunk does not fit.
    let mut chunked = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /hooks/school HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n",
        len = chunk.len()
    );
    chunked.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let more = format!("{len:x}\r\n{chunk}\r\n", len = chunk.len());
    chunked.write_all(more.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut chunked, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");

    // A legitimate event that fits is stored, and the gateway stays responsive.
    let event = dreamclass_sample("CLASS_CREATED", 1);
    assert!(event.body.len() < 8192 - 7000, "{}", event.body.len());
    assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    let started = Instant::now();
    let health = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Not stuck behind the held bodies (which would last the 10 s read timeout);
    // its latency under a real flood is measured in BENCHMARKS.md, not here.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Shed requests are counted, not kept in the rejection log.
    assert_eq!(
        metric(
            &gw,
            "classhook_rejections_total{instance=\"gw\",reason=\"overloaded\"}"
        )
        .await,
        "classhook_rejections_total{instance=\"gw\",reason=\"overloaded\"} 2"
    );
    assert!(
        gw.store
            .list_rejections(100)
            .await
            .unwrap()
            .iter()
            .all(|r| r.reason != "overloaded")
    );

    // When a held body is done with, its bytes are given back.
    slow.write_all(&vec![b' '; 3500]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
        .await
        .expect("an answer to the completed body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (headers, body) = raw_json(&json!({"not": "an event"}));
    let mut body = body;
    body.resize(4000, b' ');
    let answer = gw.post_raw("/hooks/school", &headers, body).await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_envelope"));
    // Hung-up senders let shutdown finish at once.
    drop((slow, slower));
    gw.stop().await;
}

#[tokio::test]
async fn connections_over_max_connections_wait_unread_until_a_slot_frees() {
    let gw = Gateway::start_with("max_connections = 2\nread_timeout = \"10s\"", SOURCES).await;
    let first = hold_body(&gw, "/hooks/school", 100).await;
    let second = hold_body(&gw, "/hooks/school", 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The third connection is queued by the kernel; nobody reads it.
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(waited.is_err(), "answered over max_connections: {waited:?}");

    // A slot frees: the waiting connection is served.
    drop(first);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    drop(second);
    gw.stop().await;
}

#[tokio::test]
async fn over_long_targets_get_414_with_the_json_error() {
    let gw = Gateway::start().await;
    let long = "n".repeat(9000);
    let answer = gw
        .post_raw(&format!("/hooks/{long}"), &[], b"{}".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (414, "uri_too_long"));
    assert!(answer.json["message"].as_str().unwrap().len() < 200);
    let response = gw
        .client
        .get(gw.url(&format!("/api/v1/events?source={long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "uri_too_long");

    // Under the limit, an unknown source's name is shortened in the answer.
    let name = "n".repeat(7000);
    let answer = gw
        .post_raw(&format!("/hooks/{name}"), &[], b"{}".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    let message = answer.json["message"].as_str().unwrap();
    assert!(message.contains("…(7000 chars)"), "{message}");
    assert!(message.len() < 200, "{message}");
    gw.stop().await;
}

#[tokio::test]
async fn refusal_logs_are_shortened_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::process::write_config(dir.path(), SOURCES);
    let (mut served, log) = common::process::serve_logged(&config).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", served.addr);
    let long = "n".repeat(6000);
    // One long name, then a burst: 41 refusals within a second, one more after it.
    for i in 0..41 {
        let path = if i == 0 {
            format!("/hooks/{long}")
        } else {
            "/hooks/ghost".to_string()
        };
        let response = client.post(url(&path)).body("{}").send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client
        .post(url("/hooks/ghost"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // Every refusal is still counted.
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("classhook_rejections_total{")
                && l.ends_with(",reason=\"unknown_source\"} 42")),
        "{metrics}"
    );

    let refused = |log: &Vec<String>| -> Vec<String> {
        log.iter()
            .filter(|l| l.contains("request refused"))
            .cloned()
            .collect()
    };
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = refused(&log.lock().unwrap());
        if lines.len() >= 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.child.kill().await.unwrap();
    assert_eq!(lines.len(), 21, "{lines:#?}");
    assert!(lines[0].contains("…(6000 chars)"), "{}", lines[0]);
    let longest = lines.iter().map(String::len).max().unwrap();
    assert!(longest < 600, "a refusal line of {longest} bytes");
    assert!(lines[20].contains("suppressed=21"), "{}", lines[20]);
}

#[tokio::test]
async fn hundreds_of_waiting_connections_fit_in_the_accept_queue() {
    // One slot, held: every other connection waits in the kernel's accept queue. The
    // queue must hold them (and a health probe) instead of dropping their SYNs, which
    // a client retries only a second later.
    let gw = Gateway::start_with("max_connections = 1\nread_timeout = \"10s\"", SOURCES).await;
    let holder = hold_body(&gw, "/hooks/school", 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut connecting = Vec::new();
    for _ in 0..300 {
        connecting.push(tokio::spawn(tokio::time::timeout(
            Duration::from_millis(800),
            TcpStream::connect(gw.addr),
        )));
    }
    let mut waiting = Vec::new();
    for attempt in connecting {
        if let Ok(Ok(stream)) = attempt.await.unwrap() {
            waiting.push(stream);
        }
    }
    assert_eq!(
        waiting.len(),
        300,
        "connections dropped by a full accept queue"
    );
    drop(waiting);
    drop(holder);
    gw.stop().await;
}

/// What real clients send (issue 17, point 13): a URL pasted with a trailing slash
/// is the same source, and every request refused under `/hooks` is kept in the
/// rejection log, not only the ones the source route saw.
#[tokio::test]
async fn a_trailing_slash_is_the_same_source_and_every_refusal_under_hooks_is_logged() {
    let gw = Gateway::start().await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    assert_eq!(gw.post("/hooks/school/", &event).await.status, 200);
    assert!(
        gw.store
            .find_event("school", &format!("id:{}", id_of(&event)))
            .await
            .unwrap()
            .is_some()
    );

    let answer = gw
        .post_raw("/hooks/school/extra", &[], b"{}".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    let answer = gw.post_raw("/hooks/", &[], b"{}".to_vec()).await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    let response = gw
        .client
        .get(gw.url("/hooks/school/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");

    let log = rejections_at_least(&gw.store, 3).await;
    let seen: Vec<(&str, Option<&str>, u16)> = log
        .iter()
        .map(|r| (r.reason.as_str(), r.source.as_deref(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("method_not_allowed", Some("school/"), 405),
            ("unknown_source", Some(""), 404),
            ("unknown_source", Some("school/extra"), 404),
        ]
    );
    gw.stop().await;
}

/// A body that starts with a UTF-8 byte order mark is JSON (RFC 8259 lets a parser
/// ignore the mark): accepted, stored byte for byte, the Loopwise signature checked
/// over the bytes received, and a copy without the mark is a retry of it.
#[tokio::test]
async fn a_body_starting_with_a_byte_order_mark_is_accepted_as_received() {
    let gw = Gateway::start().await;
    let plain = loopwise(
        "course.student_enroll",
        classhook::provider::sample::sample_data(
            classhook::provider::ProviderKind::Loopwise,
            "course.student_enroll",
            1,
        ),
    );
    let mut body = b"\xEF\xBB\xBF".to_vec();
    body.extend_from_slice(&plain.body);
    let signature = classhook::provider::loopwise::sign(COURSES_SECRET.as_bytes(), &body);
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("loopwise-webhook-signature".to_string(), signature),
    ];
    let answer = gw.post_raw("/hooks/courses", &headers, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    // The signature over the body without its mark does not hold for these bytes.
    let mut wrong = headers.clone();
    wrong[1].1 = classhook::provider::loopwise::sign(COURSES_SECRET.as_bytes(), &plain.body);
    let answer = gw.post_raw("/hooks/courses", &wrong, body.clone()).await;
    assert_eq!((answer.status, answer.error()), (401, "signature_invalid"));
    // The same event without the mark is a retry of the stored one.
    assert_eq!(gw.post("/hooks/courses", &plain).await.status, 200);

    let events = gw
        .store
        .list_events(classhook::store::EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].times_seen, 2);
    let stored = gw
        .store
        .find_event("courses", &events[0].dedupe_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, body, "stored byte for byte, mark included");

    // DreamClass too; the API decodes the body.
    let event = dreamclass_sample("CLASS_CREATED", 2);
    let mut marked = b"\xEF\xBB\xBF".to_vec();
    marked.extend_from_slice(&event.body);
    assert_eq!(
        gw.post_raw("/hooks/school", &event.headers, marked)
            .await
            .status,
        200
    );
    gw.stop().await;
}

/// A compressed body is refused from its headers, 415 naming the encoding, before
/// the body is read (not "body is not valid JSON" after reading it).
#[tokio::test]
async fn a_compressed_body_is_refused_naming_its_encoding() {
    let gw = Gateway::start().await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    let mut headers = event.headers.clone();
    headers.push(("content-encoding".into(), "gzip".into()));
    let answer = gw
        .post_raw("/hooks/school", &headers, event.body.clone())
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (415, "unsupported_encoding")
    );
    assert!(
        answer.json["message"].as_str().unwrap().contains("gzip"),
        "{:?}",
        answer.json
    );
    assert_eq!(answer.headers["connection"], "close");
    let log = rejections_at_least(&gw.store, 1).await;
    assert_eq!(
        (log[0].reason.as_str(), log[0].status, log[0].body_len),
        ("unsupported_encoding", 415, 0)
    );

    // `identity` is no encoding at all.
    headers.last_mut().unwrap().1 = "identity".into();
    let answer = gw.post_raw("/hooks/school", &headers, event.body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    gw.stop().await;
}

/// Proxies and load balancers that speak h2c to their backends send HTTP/2 with
/// prior knowledge: served on the same port as HTTP/1, requests in parallel on one
/// connection, refusals with the same JSON errors.
#[tokio::test]
async fn http2_with_prior_knowledge_is_served_on_the_same_port() {
    let gw = Gateway::start().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(
        (response.version(), response.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );

    // Eight requests at once: streams of one connection.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let event = dreamclass_sample("CLASS_CREATED", i);
            let mut request = h2.post(gw.url("/hooks/school")).body(event.body);
            for (name, value) in &event.headers {
                request = request.header(name, value);
            }
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (response.version(), response.status().as_u16())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), (reqwest::Version::HTTP_2, 200));
    }
    assert_eq!(gw.store.count_events().await.unwrap(), 8);

    let answer = gw
        .post_with(&h2, "/hooks/nobody", &[], b"{}".to_vec())
        .await;
    assert_eq!((answer.status, answer.error()), (404, "unknown_source"));
    // The connection is still good after a refusal that left its body unread.
    let event = dreamclass_sample("CLASS_CREATED", 100);
    let answer = gw
        .post_with(&h2, "/hooks/school", &event.headers, event.body)
        .await;
    assert_eq!(answer.status, 200);

    // HTTP/1.1 on the same port, as before.
    let response = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    gw.stop().await;
}

/// A connection that sends the start of HTTP/2's preface and stalls is cut off
/// after the read timeout, as an HTTP/1 client stalling in its headers is.
#[tokio::test]
async fn a_client_that_stalls_in_the_http2_preface_is_cut_off() {
    let gw = Gateway::start_with("read_timeout = \"1s\"", SOURCES).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    gw.stop().await;
}
