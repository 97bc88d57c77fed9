//! What an outsider can make classhook keep or send back is bounded: the rejection
//! log keeps a prefix and a hash of a conflicting body, and no API response grows
//! with the size of the rows it lists.

mod common;

use classhook::crypto;
use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "limits-test-token-0123456789";

fn with_api() -> String {
    format!("[api]\ntokens = [\"{TOKEN}\"]\n{SOURCES}")
}

async fn get(gw: &Gateway, path: &str) -> (u16, Value, usize) {
    let response = gw
        .client
        .get(gw.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap(), bytes.len())
}

#[tokio::test]
async fn a_conflict_keeps_a_prefix_and_the_hash_of_the_whole_body() {
    let gw = Gateway::start_with("", &with_api()).await;
    let first = dreamclass("CLASS_CREATED", json!({"id": 1}), "my-school");
    assert_eq!(gw.post("/hooks/school", &first).await.status, 200);
    // The same signed id, a different and large body.
    let mut envelope: Value = serde_json::from_slice(&first.body).unwrap();
    envelope["data"]["padding"] = json!("p".repeat(200_000));
    let body = serde_json::to_vec(&envelope).unwrap();
    let answer = gw
        .post_raw("/hooks/school", &first.headers, body.clone())
        .await;
    assert_eq!(answer.status, 200);

    let logged = rejections_at_least(&gw.store, 1).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].reason, "id_conflict");
    assert_eq!(logged[0].body.len(), 2048, "a prefix, not the body");
    assert_eq!(logged[0].body_len, body.len());
    let (status, page, _) = get(&gw, "/api/v1/rejections").await;
    assert_eq!(status, 200);
    assert_eq!(
        page["items"][0]["body_sha256"],
        hex::encode(crypto::sha256(&body))
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_page_of_large_rows_is_cut_by_size_and_goes_on_with_its_cursor() {
    let gw = Gateway::start_with("", &with_api()).await;
    // Eight entities of ~700 KiB each in the generic mirror (an undocumented kind).
    for n in 0..8 {
        let data = json!({"id": format!("big-{n}"), "blob": "b".repeat(700_000)});
        let event = loopwise("report.generated", data);
        assert_eq!(gw.post("/hooks/courses", &event).await.status, 200);
    }
    let mut seen = 0;
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page, bytes) = get(
            &gw,
            &format!("/api/v1/entities/report.generated?limit=1000{cursor}"),
        )
        .await;
        assert_eq!(status, 200);
        assert!(bytes < 5 * 1024 * 1024, "a page of {bytes} bytes");
        seen += page["items"].as_array().unwrap().len();
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, 8, "every entity, over several pages");
    assert!(pages >= 2);
    gw.stop().await;
}
