//! Kill the gateway with SIGKILL while deliveries are in flight, restart it: every
//! due delivery arrives, and none that was recorded as delivered is sent again.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use classhook::store::{DeliveryFilter, DeliveryState, Store};
use common::process::{serve, write_config};
use common::receiver::{Receiver, Reply, eventually_async, eventually_async_within};
use common::{dreamclass_sample, id_of};

async fn states(config: &std::path::Path) -> Vec<(String, DeliveryState)> {
    let store = Store::open_read_only(&common::process::location_of(config))
        .await
        .unwrap();
    store
        .list_deliveries(DeliveryFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.webhook_id, d.state))
        .collect()
}

fn counts(receiver: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in receiver.received() {
        let id = r
            .headers
            .get("webhook-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_sigkill_and_successes_are_not_resent() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        "\n[delivery]\nallow_private_destinations = true\npoll_interval = \"50ms\"\nlease_margin = \"500ms\"\n\n\
         [[source]]\nname = \"school\"\nprovider = \"dreamclass\"\nsecret = \"school-secret\"\n\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\ntimeout = \"1s\"\n\
         retry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\"]\nmax_in_flight = 4\n",
        receiver.url()
    );
    let config = write_config(dir.path(), &sources);
    let mut served = serve(&config).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/hooks/school", served.addr);

    // Ten events delivered and recorded before the crash.
    for n in 0..10 {
        let event = dreamclass_sample("CLASS_CREATED", n);
        assert_eq!(
            client
                .post(&url)
                .body(event.body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    eventually_async("ten recorded as delivered", async || {
        states(&config)
            .await
            .iter()
            .filter(|(_, s)| *s == DeliveryState::Delivered)
            .count()
            == 10
    })
    .await;
    let delivered_before: Vec<String> = states(&config)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    // Ten more, whose receiver hangs: the gateway dies with them in flight.
    receiver.script((0..4).map(|_| Reply::Slow(Duration::from_secs(3))));
    let mut later = Vec::new();
    for n in 10..20 {
        let event = dreamclass_sample("CLASS_CREATED", n);
        later.push(id_of(&event));
        assert_eq!(
            client
                .post(&url)
                .body(event.body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    receiver.wait_for(14).await;
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();

    // The dead process's leases (timeout × 9 + lease margin = 9.5 s here) must expire.
    let mut restarted = serve(&config).await;
    eventually_async_within(
        "all twenty delivered after the restart",
        Duration::from_secs(20),
        async || {
            let s = states(&config).await;
            s.len() == 20
                && s.iter()
                    .all(|(_, state)| *state == DeliveryState::Delivered)
        },
    )
    .await;
    let counts = counts(&receiver);
    assert_eq!(counts.len(), 20, "every event arrived: {counts:?}");
    for id in &delivered_before {
        assert_eq!(
            counts[id], 1,
            "{id} was recorded as delivered before the crash and sent again"
        );
    }
    assert_eq!(later.len(), 10);
    restarted.child.start_kill().unwrap();
    let _ = restarted.child.wait().await;
}
