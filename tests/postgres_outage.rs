//! PostgreSQL going away under a running gateway: webhooks are answered 503 with
//! `Retry-After` (the platforms retry), `/readyz` fails, the gateway reconnects by
//! itself when the database returns, and nothing it acknowledged is lost.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use classhook::clock::SystemClock;
use classhook::config::Config;
use classhook::store::postgres::testing::TestDatabase;
use common::relay::Relay;
use common::*;

async fn readyz(gw: &Gateway) -> u16 {
    gw.client
        .get(gw.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_lost_database_is_503_with_retry_after_and_the_gateway_recovers_alone() {
    let Some(database) = TestDatabase::create("postgres_outage").await else {
        return;
    };
    let relay = Relay::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[database]\nurl = {:?}\n{SOURCES}",
        dir.path().join("data").display().to_string(),
        relay.url_through(database.url()),
    );
    let config = Config::from_toml_str(Path::new("test.toml"), &text, &[], &|_| None).unwrap();
    let gw = Gateway::start_config(dir, &config, Arc::new(SystemClock)).await;
    let first = dreamclass_sample("CLASS_CREATED", 1);
    assert_eq!(gw.post("/hooks/school", &first).await.status, 200);
    assert_eq!(readyz(&gw).await, 200);

    relay.cut();
    let second = dreamclass_sample("CLASS_CREATED", 2);
    let started = Instant::now();
    let refused = gw.post("/hooks/school", &second).await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(refused.error(), "storage_unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered within the append timeout, not hung: {:?}",
        started.elapsed()
    );
    assert_eq!(readyz(&gw).await, 503);
    // With PostgreSQL nothing is written under data_dir.
    assert!(!gw.dir.path().join("data").exists());

    // The database returns on the same address: no restart, no operator.
    let relay = Relay::start(relay.port).await;
    let mut ready = false;
    for _ in 0..200 {
        if readyz(&gw).await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway reconnected by itself");
    // The platform's retry of the refused event is stored now, once.
    assert_eq!(gw.post("/hooks/school", &second).await.status, 200);
    assert_eq!(gw.post("/hooks/school", &first).await.status, 200);
    assert_eq!(
        gw.store.count_events().await.unwrap(),
        2,
        "nothing lost, nothing twice"
    );
    for request in [&first, &second] {
        let key = format!("id:{}", id_of(request));
        let stored = gw.store.find_event("school", &key).await.unwrap().unwrap();
        assert_eq!(stored.body, request.body, "kept byte for byte");
    }
    gw.stop().await;
    relay.cut();
}

#[tokio::test]
async fn a_wrong_password_at_start_is_one_line_without_the_password() {
    let Some(database) = TestDatabase::create("postgres_wrong_password").await else {
        return;
    };
    // Trust authentication accepts any password, so a user that does not exist
    // stands for wrong credentials; the password must still never be shown.
    let mut url = url::Url::parse(database.url()).unwrap();
    url.set_username("nobody_here").unwrap();
    url.set_password(Some("hunter2-not-shown")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("classhook.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[database]\nurl = {:?}\n{SOURCES}",
            dir.path().join("data").display().to_string(),
            url.to_string()
        ),
    )
    .unwrap();
    let (code, out, err) =
        common::process::run(&["serve", "--config", file.to_str().unwrap()], None).await;
    assert_ne!(code, 0);
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{err}"
    );
    let error: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error.len(), 1, "{err}");
    assert!(
        error[0].contains("nobody_here@127.0.0.1"),
        "names the URL: {err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing under data_dir");
}
