//! The store never acknowledges what it cannot keep: a database file removed or
//! replaced under a running gateway makes it answer 503 (and `/readyz` say why),
//! and readiness is a real write.

mod common;

use common::*;

async fn readyz(gw: &Gateway) -> (u16, serde_json::Value) {
    let response = gw.client.get(gw.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn readiness_is_a_real_write() {
    if common::backend::skip_unless_sqlite("readiness_is_a_real_write", "it checks the SQLite file")
    {
        return;
    }
    let gw = Gateway::start().await;
    let before: i64 = probed_at(&gw);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(readyz(&gw).await.0, 200);
    assert!(probed_at(&gw) > before, "the probe wrote its row");
    gw.stop().await;
}

fn probed_at(gw: &Gateway) -> i64 {
    rusqlite::Connection::open(gw.store.location())
        .unwrap()
        .query_row("SELECT probed_at_ms FROM readiness", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_removed_data_directory_is_refused_not_acknowledged() {
    if common::backend::skip_unless_sqlite(
        "a_removed_data_directory_is_refused_not_acknowledged",
        "it removes the SQLite data directory",
    ) {
        return;
    }
    let gw = Gateway::start().await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    std::fs::remove_dir_all(gw.dir.path().join("data")).unwrap();
    let answer = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 2))
        .await;
    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert_eq!(answer.error(), "storage_unavailable");
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert!(
        body["message"].as_str().unwrap().contains("removed"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_replaced_database_file_is_refused_not_acknowledged() {
    if common::backend::skip_unless_sqlite(
        "a_replaced_database_file_is_refused_not_acknowledged",
        "it replaces the SQLite file",
    ) {
        return;
    }
    let gw = Gateway::start().await;
    let path = std::path::PathBuf::from(gw.store.location());
    let aside = path.with_extension("aside");
    std::fs::rename(&path, &aside).unwrap();
    std::fs::copy(&aside, &path).unwrap();
    let answer = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
        .await;
    assert_eq!(answer.status, 503, "{:?}", answer.json);
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503);
    assert!(
        body["message"].as_str().unwrap().contains("replaced"),
        "{body}"
    );
    gw.stop().await;
}
