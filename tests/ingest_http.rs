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
            .unwrap()
            .is_some()
    );
    assert_eq!(gw.store.count_events().unwrap(), 1);
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
    let ghost = &log[0];
    assert_eq!(
        (ghost.source.as_deref(), ghost.status, ghost.body.as_slice()),
        (Some("ghost"), 404, &b"hello"[..])
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
            .unwrap()
            .is_some()
    );
}
