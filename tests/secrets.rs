//! No secret leaves the gateway: the real binary, at debug log level, runs a realistic
//! scenario with distinctive secrets (source secrets, Basic Auth passwords, API
//! tokens, subscription secrets and passwords, rotated and generated signing keys
//! with ed25519 secret keys, a proxy URL with credentials, the key subscription
//! secrets are sealed under) through
//! every route, failing auth, bad signatures, deliveries and config errors; none of
//! them (nor their base64 forms) may appear in a log line, an answer, an error body
//! or the rejection log.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use classhook::provider::{ProviderKind, sample};
use classhook::secret::KeyBytes;
use common::proxy::RecordingProxy;
use common::receiver::Receiver;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SCHOOL_SECRET: &str = "dcSecret-Q1w2E3r4T5y6";
const COURSES_SECRET: &str = "lwSecret-Z9x8C7v6B5n4";
const SCHOOL_PASSWORD: &str = "srcPass-M1n2B3v4C5x6";
const WRONG_PASSWORD: &str = "wrongPass-K4j5H6g7F8d9";
const TOKEN: &str = "apiToken-P0o9I8u7Y6t5R4e3";
const ENV_TOKEN: &str = "envToken-U8y7T6r5E4w3Q2a1";
const WRONG_TOKEN: &str = "wrongToken-L1k2J3h4G5f6D7s8";
const SUB_SECRET: &str = "subSecret-A1s2D3f4G5h6";
const SUB_PASSWORD: &str = "subPass-J7k8L9z0X1c2";
const API_SUB_SECRET: &str = "apiSubSecret-V5b6N7m8Q9w0";
const API_SUB_PASSWORD: &str = "apiSubPass-E1r2T3y4U5i6";
const PATCHED_SECRET: &str = "patchedSecret-O7p8A9s0D1f2";
const ROTATED_SECRET: &str = "rotatedSecret-G3h4J5k6L7z8";
const PROXY_PASSWORD: &str = "proxyPass-W3e4R5t6Y7u8";
/// `CLASSHOOK_SECRET_KEY`: base64 of "atRestKey-0123456789abcdefghijkl".
const AT_REST_KEY: &str = "YXRSZXN0S2V5LTAxMjM0NTY3ODlhYmNkZWZnaGlqa2w=";
/// A key of the wrong length: base64 of "shortKey-R5t6Y7u8".
const SHORT_KEY: &str = "c2hvcnRLZXktUjV0Nlk3dTg=";

/// Every secret and the forms in which it could travel.
fn forbidden() -> Vec<String> {
    let mut all: Vec<String> = [
        SCHOOL_SECRET,
        COURSES_SECRET,
        SCHOOL_PASSWORD,
        WRONG_PASSWORD,
        TOKEN,
        ENV_TOKEN,
        WRONG_TOKEN,
        SUB_SECRET,
        SUB_PASSWORD,
        API_SUB_SECRET,
        API_SUB_PASSWORD,
        PATCHED_SECRET,
        ROTATED_SECRET,
        PROXY_PASSWORD,
        AT_REST_KEY,
        "atRestKey-0123456789abcdefghijkl",
        SHORT_KEY,
        "shortKey-R5t6Y7u8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (user, password) in [
        ("dreamclass", SCHOOL_PASSWORD),
        ("dreamclass", WRONG_PASSWORD),
        ("classhook", SUB_PASSWORD),
        ("crm", API_SUB_PASSWORD),
        ("proxyuser", PROXY_PASSWORD),
    ] {
        all.push(BASE64.encode(format!("{user}:{password}")));
    }
    for secret in [
        SCHOOL_SECRET,
        SUB_SECRET,
        API_SUB_SECRET,
        PATCHED_SECRET,
        ROTATED_SECRET,
    ] {
        all.push(BASE64.encode(secret));
    }
    all
}

fn assert_clean(what: &str, text: &str) {
    for secret in forbidden() {
        assert!(
            !text.contains(&secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

/// `classhook serve` at debug level, every stderr line kept.
struct Running {
    child: Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

async fn serve(config: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_classhook"))
        .args(["serve", "--config"])
        .arg(config)
        .env("CLASSHOOK_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = log.clone();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            kept.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("classhook serve exited before listening");
    })
    .await
    .expect("classhook serve started within 20 s");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    Running { child, addr, log }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the process (SIGTERM, so shutdown logs too) and returns its whole log.
    async fn stop(mut self) -> String {
        let pid = self.child.id().unwrap() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.log.lock().unwrap().join("\n")
    }
}

/// Sends a request and returns its status and everything it answered (headers and body).
async fn call(
    client: &reqwest::Client,
    request: reqwest::RequestBuilder,
    seen: &mut Vec<String>,
) -> (u16, Value) {
    let response = client.execute(request.build().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let text = response.text().await.unwrap();
    seen.push(format!("{status} {headers}\n{text}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn config(dir: &Path, delivery: &str, subscriptions: &str) -> std::path::PathBuf {
    let file = dir.join("classhook.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = {data:?}

[api]
tokens = ["{TOKEN}"]
tokens_env = "SECRETS_TEST_TOKENS"

[delivery]
allow_private_destinations = true
poll_interval = "10ms"
{delivery}

[[source]]
name = "school"
provider = "dreamclass"
secret = "{SCHOOL_SECRET}"
basic_auth = {{ username = "dreamclass", password = "{SCHOOL_PASSWORD}" }}

[[source]]
name = "courses"
provider = "loopwise"
secret_env = "SECRETS_TEST_COURSES_SECRET"

{subscriptions}
"#,
        data = dir.join("data").display().to_string()
    );
    std::fs::write(&file, text).unwrap();
    file
}

const ENV: &[(&str, &str)] = &[
    ("SECRETS_TEST_TOKENS", ENV_TOKEN),
    ("SECRETS_TEST_COURSES_SECRET", COURSES_SECRET),
    ("CLASSHOOK_SECRET_KEY", AT_REST_KEY),
];

fn key(secret: &str) -> KeyBytes {
    KeyBytes::new(secret.as_bytes().to_vec())
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn no_secret_appears_in_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let subscription = format!(
        "[[subscription]]\nname = \"from-config\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"{SUB_SECRET}\"\nbasic_auth = {{ username = \"classhook\", password = \"{SUB_PASSWORD}\" }}\nretry_schedule = [\"10ms\"]\n",
        receiver.url()
    );
    let file = config(dir.path(), "", &subscription);
    let gw = serve(&file, ENV).await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let hook = |source: &str| gw.url(&format!("/hooks/{source}"));

    // Ingest: accepted, failing Basic Auth, bad signatures, unknown source, bad JSON.
    let good = sample::build_request(
        ProviderKind::DreamClass,
        Some(&key(SCHOOL_SECRET)),
        "CLASS_CREATED",
        sample::sample_data(ProviderKind::DreamClass, "CLASS_CREATED", 1),
        "my-school",
    );
    let post = |url: String, request: &sample::SignedRequest, auth: Option<String>| {
        let mut builder = client.post(url).body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder
    };
    let auth = Some(basic("dreamclass", SCHOOL_PASSWORD));
    let (status, _) = call(
        &client,
        post(hook("school"), &good, auth.clone()),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        post(hook("school"), &good, auth.clone()),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200, "a retry");
    let wrong = Some(basic("dreamclass", WRONG_PASSWORD));
    let (status, _) = call(&client, post(hook("school"), &good, wrong), &mut seen).await;
    assert_eq!(status, 401);
    let (status, _) = call(&client, post(hook("school"), &good, None), &mut seen).await;
    assert_eq!(status, 401);
    let forged = sample::build_request(
        ProviderKind::DreamClass,
        Some(&key("not-the-school-secret")),
        "CLASS_UPDATED",
        sample::sample_data(ProviderKind::DreamClass, "CLASS_UPDATED", 2),
        "my-school",
    );
    let (status, _) = call(
        &client,
        post(hook("school"), &forged, auth.clone()),
        &mut seen,
    )
    .await;
    assert_eq!(status, 401);
    let course = sample::build_request(
        ProviderKind::Loopwise,
        Some(&key(COURSES_SECRET)),
        "course.created",
        sample::sample_data(ProviderKind::Loopwise, "course.created", 3),
        "",
    );
    let (status, _) = call(&client, post(hook("courses"), &course, None), &mut seen).await;
    assert_eq!(status, 200);
    let forged_course = sample::build_request(
        ProviderKind::Loopwise,
        Some(&key("not-the-courses-key")),
        "course.updated",
        sample::sample_data(ProviderKind::Loopwise, "course.updated", 4),
        "",
    );
    let (status, _) = call(
        &client,
        post(hook("courses"), &forged_course, None),
        &mut seen,
    )
    .await;
    assert_eq!(status, 401);
    let unsigned = sample::build_request(
        ProviderKind::Loopwise,
        None,
        "course.updated",
        sample::sample_data(ProviderKind::Loopwise, "course.updated", 5),
        "",
    );
    let (status, _) = call(&client, post(hook("courses"), &unsigned, None), &mut seen).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &client,
        post(hook("nowhere"), &good, auth.clone()),
        &mut seen,
    )
    .await;
    assert_eq!(status, 404);
    let not_json = sample::SignedRequest {
        headers: vec![],
        body: b"{not json".to_vec(),
    };
    let (status, _) = call(
        &client,
        post(hook("school"), &not_json, auth.clone()),
        &mut seen,
    )
    .await;
    assert_eq!(status, 400);

    // The delivery to the receiver (which legitimately gets the subscription's Basic
    // Auth: only the gateway's own outputs are checked).
    let delivered = receiver.wait_for(1).await;
    assert_eq!(
        delivered[0].header("authorization"),
        basic("classhook", SUB_PASSWORD)
    );

    // The API: a wrong token, then every route with the right ones.
    let api = |method: reqwest::Method, path: &str| {
        client
            .request(method, gw.url(&format!("/api/v1{path}")))
            .bearer_auth(TOKEN)
    };
    let (status, _) = call(
        &client,
        client
            .get(gw.url("/api/v1/events"))
            .bearer_auth(WRONG_TOKEN),
        &mut seen,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &client,
        client.get(gw.url("/metrics")).bearer_auth(WRONG_TOKEN),
        &mut seen,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &client,
        client.get(gw.url("/api/v1/stats")).bearer_auth(ENV_TOKEN),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200, "the token from the environment");
    use reqwest::Method as M;
    let (_, events) = call(&client, api(M::GET, "/events"), &mut seen).await;
    let event_id = events["items"][0]["id"].as_i64().unwrap();
    for path in [
        format!("/events/{event_id}"),
        format!("/events/{event_id}/raw"),
        "/rejections".into(),
        "/entities".into(),
        "/entities/class".into(),
        "/entities/class/1?source=school".into(),
        "/entities/class/1/history?source=school".into(),
        "/stats".into(),
        "/subscriptions".into(),
        "/subscriptions/from-config".into(),
        "/deliveries".into(),
        "/openapi.json".into(),
    ] {
        let (status, _) = call(&client, api(M::GET, &path), &mut seen).await;
        assert!(status == 200 || status == 404, "{path}: {status}");
    }
    let create = json!({"name": "crm", "url": receiver.url(), "events": ["course.*"],
        "secret": API_SUB_SECRET, "basic_auth": {"username": "crm", "password": API_SUB_PASSWORD}});
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions").json(&create),
        &mut seen,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions").json(&create),
        &mut seen,
    )
    .await;
    assert_eq!(status, 409);
    let mut invalid = create.clone();
    invalid["name"] = json!("bad");
    invalid["secret"] = json!(format!("whsec_{API_SUB_SECRET}!"));
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions").json(&invalid),
        &mut seen,
    )
    .await;
    assert_eq!(status, 400);
    let mut invalid = create.clone();
    invalid["name"] = json!("bad2");
    invalid["secret_encoding"] = json!("base64");
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions").json(&invalid),
        &mut seen,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &client,
        api(M::PATCH, "/subscriptions/crm").json(&json!({"secret": PATCHED_SECRET})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    // Rotations: with a given secret, then a generated one (shown once, in that
    // answer only), an ed25519 subscription's key pair, and a config subscription
    // whose secret is in the file (409).
    let (status, rotated) = call(
        &client,
        api(M::POST, "/subscriptions/crm/rotate-secret")
            .json(&json!({"secret": ROTATED_SECRET, "grace_period": "1h"})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["last_rotation"]["by"], "api token #1");
    assert!(rotated.get("secret").is_none(), "{rotated}");
    let generated = client
        .post(gw.url("/api/v1/subscriptions/crm/rotate-secret"))
        .bearer_auth(ENV_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(generated.status(), 200);
    let generated: Value = generated.json().await.unwrap();
    let generated = generated["secret"].as_str().unwrap().to_string();
    let (status, conflict) = call(
        &client,
        api(M::POST, "/subscriptions/from-config/rotate-secret").json(&json!({})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    let signer = json!({"name": "signer", "url": receiver.url(), "events": ["*"],
        "signing": "ed25519"});
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions").json(&signer),
        &mut seen,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions/signer/rotate-secret").json(&json!({"grace_period": "1h"})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&client, api(M::GET, "/subscriptions/signer"), &mut seen).await;
    assert_eq!(status, 200);
    for path in [
        "/subscriptions/crm",
        "/subscriptions/crm/pause",
        "/subscriptions/crm/resume",
    ] {
        let method = if path.ends_with("crm") {
            M::GET
        } else {
            M::POST
        };
        let (status, _) = call(&client, api(method, path), &mut seen).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions/crm/backfill").json(&json!({})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    receiver.wait_for(2).await;
    let (status, _) = call(
        &client,
        api(M::POST, "/subscriptions/from-config/replay").json(&json!({"dead_only": false})),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    let (_, deliveries) = call(&client, api(M::GET, "/deliveries"), &mut seen).await;
    let delivery = deliveries["items"][0]["id"].as_i64().unwrap();
    let (status, _) = call(
        &client,
        api(M::GET, &format!("/deliveries/{delivery}")),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        api(M::POST, &format!("/deliveries/{delivery}/replay")),
        &mut seen,
    )
    .await;
    // 409 while that delivery is still queued or in flight.
    assert!(status == 200 || status == 409, "{status}");
    let (status, _) = call(&client, api(M::DELETE, "/subscriptions/crm"), &mut seen).await;
    assert_eq!(status, 204);
    for path in ["/healthz", "/readyz"] {
        let (status, _) = call(&client, client.get(gw.url(path)), &mut seen).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = call(
        &client,
        client.get(gw.url("/metrics")).bearer_auth(TOKEN),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);

    // The rejection log holds the refused requests, credentials never.
    let (_, rejections) = call(&client, api(M::GET, "/rejections?limit=100"), &mut seen).await;
    assert!(
        rejections["items"].as_array().unwrap().len() >= 5,
        "{rejections}"
    );
    let log = gw.stop().await;
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
    assert!(
        !log.contains("stored in plain text"),
        "the key was set:\n{log}"
    );
    assert_clean("the log", &log);
    for answer in &seen {
        assert_clean("an answer", answer);
    }
    // The generated secret and the ed25519 secret keys (read from the store with
    // the at-rest key) appear nowhere either.
    let mut keys = vec![generated["whsec_".len()..].to_string()];
    let store = classhook::store::Store::open_existing(
        &classhook::store::Location::sqlite(dir.path().join("data")),
        classhook::store::StoreOptions {
            secrets: classhook::store::sealed::Sealer::with_keys(
                classhook::store::sealed::SecretKey::from_base64(AT_REST_KEY).unwrap(),
                None,
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let signer = store.get_subscription("signer").await.unwrap().unwrap();
    assert_eq!(signer.previous_keys.len(), 1);
    for secret in std::iter::once(signer.spec.secret.as_ref().unwrap())
        .chain(signer.previous_keys.iter().map(|k| &k.secret))
    {
        let text = secret.expose();
        assert!(text.starts_with("whsk_"), "an ed25519 secret key");
        keys.push(text["whsk_".len()..].to_string());
    }
    drop(store);
    for key in &keys {
        assert!(!log.contains(key.as_str()), "the log shows a signing key");
        for answer in &seen {
            assert!(
                !answer.contains(key.as_str()),
                "an answer shows a signing key: {answer}"
            );
        }
    }

    // A delivery through a proxy with credentials that cannot be reached: the
    // attempt's error and the log never show the proxy's password.
    let dir = tempfile::tempdir().unwrap();
    let proxy = RecordingProxy::start().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let subscription = format!(
        "[[subscription]]\nname = \"via-proxy\"\nurl = \"http://localhost:9/webhook\"\nevents = [\"*\"]\nsecret = \"{SUB_SECRET}\"\nbasic_auth = {{ username = \"classhook\", password = \"{SUB_PASSWORD}\" }}\nretry_schedule = []\n"
    );
    let file = config(
        dir.path(),
        &format!("proxy = \"http://proxyuser:{PROXY_PASSWORD}@{dead}\""),
        &subscription,
    );
    let gw = serve(&file, ENV).await;
    let mut seen = Vec::new();
    let (status, _) = call(
        &client,
        post(
            gw.url("/hooks/school"),
            &good,
            Some(basic("dreamclass", SCHOOL_PASSWORD)),
        ),
        &mut seen,
    )
    .await;
    assert_eq!(status, 200);
    let api = |path: &str| {
        client
            .get(gw.url(&format!("/api/v1{path}")))
            .bearer_auth(TOKEN)
    };
    let mut dead_letter = Value::Null;
    for _ in 0..200 {
        let (_, page) = call(&client, api("/deliveries?state=dead"), &mut seen).await;
        if let Some(id) = page["items"][0]["id"].as_i64() {
            dead_letter = call(&client, api(&format!("/deliveries/{id}")), &mut seen)
                .await
                .1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dead_letter["attempt_log"][0]["error"].is_string(),
        "the attempt through the unreachable proxy failed: {dead_letter}"
    );
    let log = gw.stop().await;
    assert_clean("the log (proxy)", &log);
    for answer in &seen {
        assert_clean("an answer (proxy)", answer);
    }
    assert!(proxy.requests().is_empty());

    // Config errors that hold secrets: the binary refuses to start and says why,
    // without the value.
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (format!("[api]\ntokens = \"{TOKEN}\"\n"), vec![]),
        (format!("[api]\ntokens = [\"{}\"]\n", &TOKEN[..12]), vec![]),
        (
            format!(
                "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\nbasic_auth = \"dreamclass:{SCHOOL_PASSWORD}\"\n"
            ),
            vec![],
        ),
        (
            format!(
                "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\nsecret = [\"{SCHOOL_SECRET}\"]\nsecret_encoding = \"base64\"\n"
            ),
            vec![],
        ),
        (
            "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\nsecret_encoding = \"base64\"\n"
                .into(),
            vec![("CLASSHOOK_SOURCE_S_SECRET", format!("{SCHOOL_SECRET}!"))],
        ),
        (
            format!("[delivery]\nproxy = \"socks9://proxyuser:{PROXY_PASSWORD}@proxy.example\"\n"),
            vec![],
        ),
        (
            String::new(),
            vec![(
                "CLASSHOOK_DELIVERY_PROXY",
                format!("proxyuser:{PROXY_PASSWORD}@proxy.example:3128"),
            )],
        ),
        (
            String::new(),
            vec![(
                "CLASSHOOK_API_TOKENS",
                format!("{TOKEN},{}", &ENV_TOKEN[..10]),
            )],
        ),
        (
            format!(
                "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\nbasic_auth = \"classhook:{SUB_PASSWORD}\"\n"
            ),
            vec![],
        ),
        (
            String::new(),
            vec![("CLASSHOOK_SECRET_KEY", SHORT_KEY.to_string())],
        ),
        (
            String::new(),
            vec![
                ("CLASSHOOK_SECRET_KEY", AT_REST_KEY.to_string()),
                ("CLASSHOOK_SECRET_KEY_PREVIOUS", format!("{AT_REST_KEY}!")),
            ],
        ),
    ];
    for (text, env) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_classhook"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("CLASSHOOK_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}: {stderr}");
        assert!(
            stderr.contains("bad.toml"),
            "the error names the file: {stderr}"
        );
        assert_clean(&format!("a config error for\n{text}\n{env:?}\n"), &stderr);
        assert_clean("stdout", &String::from_utf8_lossy(&output.stdout));
    }
}
