//! Opening, migrating, losing and finding the server again, TLS, read-only handles.

use super::*;

#[tokio::test]
async fn migrations_are_idempotent_concurrent_and_refuse_a_newer_schema() {
    let Some(db) = TestDatabase::create("migrations").await else {
        return;
    };
    let (a, b) = tokio::join!(
        PostgresStore::migrate(db.url()),
        PostgresStore::migrate(db.url())
    );
    a.unwrap();
    b.unwrap();
    let store = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    store.ping(Duration::from_secs(5)).await.unwrap();
    let client = store.client().await.unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM classhook_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, super::super::migrations::known_version());
    client
        .execute("INSERT INTO classhook_schema (version) VALUES (999)", &[])
        .await
        .unwrap();
    match PostgresStore::open(db.url(), StoreOptions::default()).await {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        Err(other) => panic!("expected SchemaTooNew, got {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_not_ready_and_no_password_is_said() {
    let started = std::time::Instant::now();
    let url = "postgres://app:s3cret@127.0.0.1:1/none";
    match PostgresStore::open(url, StoreOptions::default()).await {
        Err(StoreError::NotReady(message)) => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        Err(other) => panic!("expected NotReady, got {other}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn the_location_has_no_password() {
    let Some((db, store)) = open("location").await else {
        return;
    };
    assert_eq!(store.location(), super::super::redact_url(db.url()));
    assert!(store.location().contains("127.0.0.1"));
}

/// A TCP relay to the local server that a test can cut and restore, to play a
/// database that goes away and comes back.
struct Relay {
    port: u16,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(relay);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { port, tasks }
    }

    /// Closes every connection and stops listening.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

fn through(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn a_lost_server_is_not_ready_and_the_store_reconnects_when_it_returns() {
    let Some(db) = TestDatabase::create("outage").await else {
        return;
    };
    let relay = Relay::start(0).await;
    let url = through(db.url(), relay.port);
    let store = PostgresStore::open(&url, StoreOptions::default())
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    relay.cut();
    // Let the pools' connections notice.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    match store.append(class_updated(2, 1_000, "B")).await {
        Err(StoreError::NotReady(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(matches!(
        store.count_events().await,
        Err(StoreError::NotReady(_))
    ));
    assert!(store.ping(Duration::from_secs(10)).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no hang past the timeouts"
    );
    let relay = Relay::start(relay.port).await;
    store.append(class_updated(2, 1_000, "B")).await.unwrap();
    store.ping(Duration::from_secs(5)).await.unwrap();
    assert_eq!(store.count_events().await.unwrap(), 2);
    relay.cut();
}

/// Appends/s of concurrent callers, for the report: `cargo test --lib
/// store::postgres::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let batches = std::sync::Arc::new(BatchLog::default());
    let options = StoreOptions {
        observer: Some(batches.clone()),
        ..StoreOptions::default()
    };
    let Some((_db, store)) = open_with("throughput", options).await else {
        return;
    };
    let (callers, per_caller) = (256u64, 80u64);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_caller {
                let id = caller * per_caller + n;
                store
                    .append(dreamclass(
                        &uuid(id),
                        "CLASS_UPDATED",
                        1_000 + n as i64,
                        class(id % 5_000, "bench", "C"),
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = callers * per_caller;
    eprintln!(
        "{total} appends by {callers} concurrent callers in {elapsed:?}: {:.0}/s",
        total as f64 / elapsed.as_secs_f64()
    );
    let batches = batches.batches();
    let count = batches.len();
    let operations: usize = batches.iter().map(|b| b.0).sum();
    let busy: Duration = batches.iter().map(|b| b.1).sum();
    eprintln!(
        "{count} batches of {} on average, {:?} each",
        operations / count.max(1),
        busy / count.max(1) as u32
    );
}

#[tokio::test]
async fn a_read_only_store_reads_and_refuses_writes() {
    let Some(db) = TestDatabase::create("read_only").await else {
        return;
    };
    assert!(matches!(
        PostgresStore::open_read_only(db.url()).await,
        Err(StoreError::NoDatabase(_))
    ));
    let store = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let mut spec = subscription("hooks", &["*"]);
    spec.secret = Some(crate::secret::Secret::new("whsec-x"));
    store.create_subscription(spec).await.unwrap();
    let seq = stored(store.append(class_updated(1, 1_000, "A")).await.unwrap());
    let reader = PostgresStore::open_read_only(db.url()).await.unwrap();
    assert!(reader.get_event(seq).await.unwrap().is_some());
    let hooks = reader.get_subscription("hooks").await.unwrap().unwrap();
    assert_eq!(
        hooks.spec.secret.unwrap().expose(),
        "",
        "secrets are withheld"
    );
    assert!(matches!(
        reader.append(class_updated(2, 1_000, "B")).await,
        Err(StoreError::WriterGone)
    ));
}

#[tokio::test]
async fn sslmode_require_verifies_the_server_certificate() {
    let Some(db) = TestDatabase::create("tls").await else {
        return;
    };
    // The local server's certificate is self-signed: TLS is attempted and refused.
    let url = format!("{}?sslmode=require", db.url());
    match PostgresStore::open(&url, StoreOptions::default()).await {
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("TLS handshake"), "{message}");
            assert!(message.contains("certificate"), "says why: {message}");
        }
        Ok(_) => panic!("an unverifiable certificate was accepted"),
    }
}

/// Deliveries leased and recorded per second by concurrent workers, for the report:
/// `cargo test --release --lib store::postgres::tests::server::delivery_throughput
/// -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn delivery_throughput() {
    let Some((_db, store)) = open("delivery_throughput").await else {
        return;
    };
    let sub = store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    let total = 10_000u64;
    let mut tasks = Vec::new();
    for caller in 0..100u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..total / 100 {
                let id = caller * (total / 100) + n;
                store
                    .append(dreamclass(
                        &uuid(id),
                        "CLASS_UPDATED",
                        1_000,
                        class(id, "d", "C"),
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let now = 1_700_000_000_000;
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let id = sub.id.get();
        workers.push(tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                let claimed = store
                    .claim_due(vec![request(id, 32, now + 60_000)], now)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return done;
                }
                let mut records = Vec::new();
                for claimed in claimed {
                    let store = store.clone();
                    records.push(tokio::spawn(async move {
                        store
                            .record_attempt(AttemptResult {
                                claimed,
                                at_ms: now + 1,
                                duration: Duration::from_millis(3),
                                outcome: Outcome::Success { status: 200 },
                                response: None,
                                next: Next::Delivered,
                            })
                            .await
                            .unwrap()
                    }));
                }
                for record in records {
                    record.await.unwrap();
                    done += 1;
                }
            }
        }));
    }
    let mut delivered = 0;
    for worker in workers {
        delivered += worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(delivered, total);
    eprintln!(
        "{delivered} deliveries leased and recorded by 8 workers in {elapsed:?}: {:.0}/s",
        delivered as f64 / elapsed.as_secs_f64()
    );
}
