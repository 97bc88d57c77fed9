//! `classhook db copy`: an SQLite store with every kind of row moves into an empty
//! PostgreSQL database, in several sittings, and the API then answers the same on
//! both; a non-empty target is refused, and no gateway starts on a half copy.

mod common;

use std::path::Path;
use std::sync::Arc;

use classhook::clock::SystemClock;
use classhook::config::Config;
use classhook::provider::ProviderKind;
use classhook::provider::sample;
use classhook::store::postgres::testing::TestDatabase;
use common::process::run;
use common::receiver::{Receiver, Reply};
use common::*;

const TOKEN: &str = "copy-test-token-0123456789";

fn config_text(dir: &Path, database: Option<&str>, receiver: &Receiver, deliver: bool) -> String {
    let database = database
        .map(|url| format!("[database]\nurl = {url:?}\n"))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{database}\n[api]\ntokens = [\"{TOKEN}\"]\n\n\
         [delivery]\nenabled = {deliver}\nallow_private_destinations = true\npoll_interval = \"10ms\"\n\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"crm-secret\"\nretry_schedule = []\n\n{SOURCES}",
        dir.join("data").display().to_string(),
        receiver.url()
    )
}

async fn gateway(dir: tempfile::TempDir, text: &str) -> Gateway {
    let config = Config::from_toml_str(Path::new("test.toml"), text, &[], &|_| None).unwrap();
    Gateway::start_config(dir, &config, Arc::new(SystemClock)).await
}

async fn get(gw: &Gateway, path: &str) -> serde_json::Value {
    let response = gw
        .client
        .get(gw.url(&format!("/api/v1{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_sqlite_store_moves_into_postgresql_and_the_api_answers_the_same() {
    let Some(database) = TestDatabase::create("db_copy").await else {
        return;
    };
    // The SQLite store: events of both platforms, a retry, a conflict, refusals,
    // mirrored entities, and deliveries delivered and dead, with their attempts.
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(200), Reply::Status(500)]);
    let root = tempfile::tempdir().unwrap();
    let source_dir = root.path().to_path_buf();
    let data_dir = source_dir.join("data");
    let gw = gateway(
        tempfile::tempdir().unwrap(),
        &config_text(&source_dir, None, &receiver, true),
    )
    .await;
    let first = dreamclass_sample("CLASS_CREATED", 1);
    for (path, request) in [
        ("/hooks/school", first.clone()),
        ("/hooks/school", first.clone()),
        ("/hooks/school", dreamclass_sample("CLASS_UPDATED", 1)),
        ("/hooks/school", dreamclass_sample("ATTENDANCE_CREATED", 3)),
        (
            "/hooks/courses",
            loopwise(
                "course.student_enroll",
                sample::sample_data(ProviderKind::Loopwise, "course.student_enroll", 4),
            ),
        ),
    ] {
        assert_eq!(gw.post(path, &request).await.status, 200, "{path}");
    }
    let mut tampered: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    tampered["data"]["name"] = serde_json::json!("Tampered");
    let (headers, body) = raw_json(&tampered);
    assert_eq!(
        gw.post_raw("/hooks/school", &headers, body).await.status,
        200
    );
    gw.post_raw("/hooks/nowhere", &[], b"{}".to_vec()).await;
    receiver.wait_for(2).await;
    common::receiver::eventually_async("every delivery settled", async || {
        gw.store
            .delivery_queue()
            .await
            .unwrap()
            .iter()
            .all(|q| q.pending == 0)
    })
    .await;
    rejections_at_least(&gw.store, 2).await;
    // An ed25519 subscription whose key was rotated: its replaced key moves too, and
    // its rate limit.
    let created = gw
        .client
        .post(gw.url("/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "signed", "url": receiver.url(),
            "events": ["none.*"], "signing": "ed25519", "rate_limit": "600/min"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let rotated = gw
        .client
        .post(gw.url("/api/v1/subscriptions/signed/rotate-secret"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"grace_period": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    gw.stop().await;

    // The target: an empty database; the copy in two sittings.
    let config = source_dir.join("postgres.toml");
    std::fs::write(
        &config,
        config_text(&source_dir, Some(database.url()), &receiver, false),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let from = data_dir.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "db",
            "copy",
            "--from-sqlite",
            from,
            "--chunk",
            "2",
            "--max-chunks",
            "3",
            "--config",
            config,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("copied 5 rows and stopped"), "{out}");
    // Half-copied: no gateway starts on it.
    let (code, _, err) = run(&["serve", "--config", config], None).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("half-way through `classhook db copy`"),
        "{err}"
    );
    let (code, out, err) = run(
        &[
            "db",
            "copy",
            "--from-sqlite",
            from,
            "--chunk",
            "2",
            "--config",
            config,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("copied and verified"), "{out}");
    // Analysed at the end, so that a gateway's first plans see the copied tables.
    let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let analysed: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_user_tables
             WHERE relname IN ('events', 'deliveries', 'attempts') AND last_analyze IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(analysed, 3, "the copied tables were analysed");
    drop(client);
    for table in [
        "subscription_keys",
        "events",
        "deliveries",
        "attempts",
        "rejections",
        "mirror_class",
    ] {
        let line = out.lines().find(|l| l.starts_with(table)).unwrap();
        let numbers: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(numbers[0], numbers[1], "{line}");
        assert_ne!(numbers[0], "0", "{line}");
    }
    let (code, _, err) = run(
        &["db", "copy", "--from-sqlite", from, "--config", config],
        None,
    )
    .await;
    assert_ne!(code, 0, "a finished copy is not made twice");
    assert!(err.contains("already holds a finished copy"), "{err}");

    // The API answers the same on both stores.
    let on_sqlite = gateway(
        tempfile::tempdir().unwrap(),
        &config_text(&source_dir, None, &receiver, false),
    )
    .await;
    let on_postgres = gateway(
        tempfile::tempdir().unwrap(),
        &config_text(&source_dir, Some(database.url()), &receiver, false),
    )
    .await;
    let events = get(&on_sqlite, "/events?limit=100").await;
    for path in [
        "/events?limit=100".to_string(),
        format!("/events/id:{}", id_of(&first)),
        "/entities".to_string(),
        "/entities/class".to_string(),
        "/entities/enrollment".to_string(),
        "/subscriptions".to_string(),
        "/deliveries?limit=100".to_string(),
        "/deliveries?state=dead".to_string(),
        "/rejections?limit=100".to_string(),
        "/stats".to_string(),
    ] {
        assert_eq!(
            get(&on_sqlite, &path).await,
            get(&on_postgres, &path).await,
            "{path}"
        );
    }
    assert_eq!(events["items"].as_array().unwrap().len(), 4, "{events}");
    let signed = get(&on_postgres, "/subscriptions/signed").await;
    assert_eq!(
        signed["previous_keys"].as_array().unwrap().len(),
        1,
        "{signed}"
    );
    assert!(signed["public_key"].as_str().unwrap().starts_with("whpk_"));
    assert_eq!(signed["rate_limit"], "600/min", "{signed}");
    let delivery = get(&on_sqlite, "/deliveries?limit=100").await["items"][0]["id"].clone();
    assert_eq!(
        get(&on_sqlite, &format!("/deliveries/{delivery}")).await,
        get(&on_postgres, &format!("/deliveries/{delivery}")).await,
        "a delivery with its attempts and webhook id"
    );
    // New events continue the sequence after the copied ones.
    let next = dreamclass_sample("CLASS_CREATED", 9);
    assert_eq!(on_postgres.post("/hooks/school", &next).await.status, 200);
    let stored = on_postgres
        .store
        .find_event("school", &format!("id:{}", id_of(&next)))
        .await
        .unwrap()
        .unwrap();
    let highest = events["items"][0]["id"].as_i64().unwrap();
    assert!(stored.summary.seq.get() > highest);
    on_sqlite.stop().await;
    on_postgres.stop().await;
}

#[tokio::test]
async fn a_target_in_use_is_refused() {
    let Some(database) = TestDatabase::create("db_copy_in_use").await else {
        return;
    };
    let receiver = Receiver::start().await;
    let source = tempfile::tempdir().unwrap();
    let gw = gateway(
        tempfile::tempdir().unwrap(),
        &config_text(source.path(), None, &receiver, false),
    )
    .await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    gw.stop().await;
    // A gateway has run on the target: it holds subscriptions now.
    let target = tempfile::tempdir().unwrap();
    let text = config_text(target.path(), Some(database.url()), &receiver, false);
    let on_target = gateway(target, &text).await;
    let file = source.path().join("postgres.toml");
    std::fs::write(&file, &text).unwrap();
    on_target.stop().await;
    let (code, _, err) = run(
        &[
            "db",
            "copy",
            "--from-sqlite",
            source.path().join("data").to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
}
