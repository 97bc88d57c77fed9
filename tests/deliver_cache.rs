//! The dispatcher keeps the subscriptions it read until they change: a change made
//! through the gateway's own store (the API) is seen by the very next delivery, and
//! one made by another process (the CLI, which writes the same store) within the
//! poll interval. Both backends (the CLI shares the PostgreSQL database too).

mod common;

use std::time::{Duration, Instant};

use common::process::{run, serve, write_config};
use common::receiver::Receiver;
use common::*;
use serde_json::json;

const TOKEN: &str = "cache-test-token-0123456789";

/// A URL changed through the API goes with the next delivery, although the
/// dispatcher read the subscriptions well within its poll interval (1 s) before:
/// the change moved the store's subscription version.
#[tokio::test]
async fn an_api_change_reaches_the_next_delivery() {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let config = format!(
        "[api]\ntokens = [\"{TOKEN}\"]\n[delivery]\nallow_private_destinations = true\npoll_interval = \"1s\"\n{SOURCES}"
    );
    let gw = Gateway::start_with("", &config).await;
    let (status, body) = gw
        .api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({ "name": "crm", "url": first.url(), "events": ["*"], "secret": "s3cret" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    for round in 0..3u64 {
        gw.post_classes(round * 2..round * 2 + 1).await;
        first.wait_for(round as usize + 1).await;
        // At once after a delivery (the dispatcher has just read and woken).
        let (status, body) = gw
            .api(
                TOKEN,
                reqwest::Method::PATCH,
                "/subscriptions/crm",
                Some(json!({ "url": second.url() })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        gw.post_classes(round * 2 + 1..round * 2 + 2).await;
        second.wait_for(round as usize + 1).await;
        assert_eq!(
            first.received().len(),
            round as usize + 1,
            "a delivery went to the old URL"
        );
        let (status, body) = gw
            .api(
                TOKEN,
                reqwest::Method::PATCH,
                "/subscriptions/crm",
                Some(json!({ "url": first.url() })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // A pause through the API holds the next event back; a resume sends it.
    let (status, _) = gw
        .api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions/crm/pause",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    gw.post_classes(100..101).await;
    let (status, _) = gw
        .api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions/crm/resume",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    first.wait_for(4).await;
    gw.stop().await;
}

/// Posts one signed CLASS_CREATED to a gateway running as its own process.
async fn post_class(addr: std::net::SocketAddr, n: u64) {
    let request = dreamclass_sample("CLASS_CREATED", n);
    let mut builder = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/school"))
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    assert_eq!(builder.send().await.unwrap().status(), 200);
}

/// `subscriptions pause` and `resume` run by the CLI (another process, so the
/// running gateway's store version does not move) reach the running gateway
/// within its poll interval: the dispatcher reads the subscriptions again at
/// least that often.
#[tokio::test]
async fn a_cli_change_reaches_a_running_gateway_within_its_poll_interval() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let poll = Duration::from_millis(300);
    let sources = format!(
        "{SOURCES}\n[delivery]\nallow_private_destinations = true\npoll_interval = \"{}ms\"\n\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"s3cret\"\n",
        poll.as_millis(),
        receiver.url()
    );
    let config = write_config(dir.path(), &sources);
    let mut served = serve(&config).await;
    let live = config.with_file_name("live.toml");
    std::fs::write(
        &live,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("127.0.0.1:0", &served.addr.to_string()),
    )
    .unwrap();
    let live = live.to_str().unwrap();

    post_class(served.addr, 1).await;
    receiver.wait_for(1).await;

    let (code, _, err) = run(&["subscriptions", "pause", "crm", "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    // The pause holds at once (the lease checks the store)...
    post_class(served.addr, 2).await;
    // ... and the gateway has read the paused subscription by now, several times.
    tokio::time::sleep(poll * 4).await;
    assert_eq!(receiver.received().len(), 1, "sent while paused");

    let resumed = Instant::now();
    let (code, _, err) = run(&["subscriptions", "resume", "crm", "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    receiver.wait_for_within(2, Duration::from_secs(10)).await;
    let took = resumed.elapsed();
    eprintln!(
        "resumed by the CLI: delivered {} ms later (poll interval {} ms)",
        took.as_millis(),
        poll.as_millis()
    );
    // Within the poll interval, plus the CLI's own run and a loaded machine's
    // scheduling; a list kept until this process changes it would never see it.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let _ = served.child.kill().await;
}
