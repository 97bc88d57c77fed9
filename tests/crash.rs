//! SIGKILL the gateway under a load of distinct events: every event that was answered
//! 200 must be in the store after a restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use classhook::store::Store;
use common::process::{serve, write_config};
use common::{dreamclass_sample, id_of};
use tokio::sync::Mutex;

const SOURCES: &str = r#"
[[source]]
name = "school"
provider = "dreamclass"
secret = "school-secret"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let mut served = serve(&config).await;
    let url = format!("http://{}/hooks/school", served.addr);

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for worker in 0..16u64 {
        let (url, acknowledged, stop) = (url.clone(), acknowledged.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for n in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let event = dreamclass_sample("CLASS_CREATED", worker * 1_000_000 + n);
                match client.post(&url).body(event.body.clone()).send().await {
                    Ok(response) if response.status() == 200 => {
                        acknowledged.lock().await.push(id_of(&event))
                    }
                    Ok(response) => panic!("unexpected answer {}", response.status()),
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    // Let a load build up, then kill without warning.
    for _ in 0..200 {
        if acknowledged.lock().await.len() >= 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().await.clone();
    eprintln!("{} events acknowledged before the kill", acknowledged.len());
    assert!(
        acknowledged.len() >= 100,
        "the load was too small: {}",
        acknowledged.len()
    );

    // Restart on the same data directory, then look for every acknowledged event.
    let mut restarted = serve(&config).await;
    let store = Store::open_read_only(&common::process::location_of(&config))
        .await
        .unwrap();
    let mut missing = Vec::new();
    for id in &acknowledged {
        if store
            .find_event("school", &format!("id:{id}"))
            .await
            .unwrap()
            .is_none()
        {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    // And the restarted gateway takes new events.
    let client = reqwest::Client::new();
    let event = dreamclass_sample("CLASS_UPDATED", 1);
    let response = client
        .post(format!("http://{}/hooks/school", restarted.addr))
        .body(event.body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    restarted.child.start_kill().unwrap();
    let _ = restarted.child.wait().await;
}
