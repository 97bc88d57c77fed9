//! Test harness: the real gateway on a free loopback port with a fresh data directory.
#![allow(dead_code)]

pub mod backend;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod relay;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use classhook::clock::SystemClock;
use classhook::config::Config;
use classhook::provider::ProviderKind;
use classhook::provider::sample::{self, SignedRequest};
use classhook::secret::KeyBytes;
use classhook::server::{self, Running};
use classhook::store::Store;
use serde_json::Value;

pub const SCHOOL_SECRET: &str = "school-secret";
pub const COURSES_SECRET: &str = "courses-signing-key";

/// Two signed sources, one with Basic Auth, one base64-keyed, one unsigned.
pub const SOURCES: &str = r#"
[[source]]
name = "school"
provider = "dreamclass"
secret = "school-secret"
tenants = ["my-school", "other-school"]

[[source]]
name = "school-b64"
provider = "dreamclass"
secret = "a2V5LWJ5dGVzLWZvci10ZXN0cw=="
secret_encoding = "base64"

[[source]]
name = "school-auth"
provider = "dreamclass"
secret = "school-secret"
basic_auth = { username = "dreamclass", password = "pa55word" }

[[source]]
name = "courses"
provider = "loopwise"
secret = "courses-signing-key"

[[source]]
name = "open"
provider = "dreamclass"
"#;

pub struct Gateway {
    pub running: Option<Running>,
    pub addr: std::net::SocketAddr,
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with("", SOURCES).await
    }

    /// `server_extra` goes into `[server]`; `sources` is appended to the file.
    pub async fn start_with(server_extra: &str, sources: &str) -> Gateway {
        Gateway::start_with_clock(server_extra, sources, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        server_extra: &str,
        sources: &str,
        clock: Arc<dyn classhook::clock::Clock>,
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), server_extra, sources);
        Gateway::start_config(dir, &config, clock).await
    }

    /// Starts a config made by the caller, whose data lives in `dir`.
    pub async fn start_config(
        dir: tempfile::TempDir,
        config: &Config,
        clock: Arc<dyn classhook::clock::Clock>,
    ) -> Gateway {
        let running = server::start(config, clock).await.unwrap();
        Gateway {
            addr: running.addr,
            store: running.store.clone(),
            running: Some(running),
            dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts a signed CLASS_CREATED for each class number in `range` to source
    /// `school`, each answered 200.
    pub async fn post_classes(&self, range: std::ops::Range<u64>) {
        for n in range {
            let answer = self
                .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
                .await;
            assert_eq!(answer.status, 200);
        }
    }

    /// Calls the API at `/api/v1{path}` with `token`, and `body` as JSON if any;
    /// returns the status and the JSON answer (`Null` when there is none).
    pub async fn api(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.url(&format!("/api/v1{path}")))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` text (a gateway without an API token).
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, request: &SignedRequest) -> Answer {
        self.post_raw(path, &request.headers, request.body.clone())
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Answer {
        self.post_with(&self.client, path, headers, body).await
    }

    /// Like `post_raw`, through `client` (e.g. one from [`client_from`]).
    pub async fn post_with(
        &self,
        client: &reqwest::Client,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Answer {
        let mut builder = client.post(self.url(path)).body(body);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        Answer::from(builder.send().await.unwrap()).await
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// A client whose connections leave from `ip` (every 127.x.y.z is on loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

pub fn config_in(dir: &Path, server_extra: &str, sources: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\ninstance = \"gw\"\n{server_extra}\n{}\n{sources}",
        dir.join("data").display().to_string(),
        backend::database_section(dir)
    );
    Config::from_toml_str(Path::new("test.toml"), &text, &[], &|_| None).unwrap()
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    async fn from(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        Answer {
            status,
            headers,
            json,
        }
    }

    /// The error code of a JSON error answer.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

pub fn key(secret: &str) -> KeyBytes {
    KeyBytes::new(secret.as_bytes().to_vec())
}

/// A DreamClass event signed with `secret` as UTF-8 key bytes.
pub fn dreamclass(event_type: &str, data: Value, tenant: &str) -> SignedRequest {
    sample::build_request(
        ProviderKind::DreamClass,
        Some(&key(SCHOOL_SECRET)),
        event_type,
        data,
        tenant,
    )
}

pub fn dreamclass_sample(event_type: &str, seq: u64) -> SignedRequest {
    dreamclass(
        event_type,
        sample::sample_data(ProviderKind::DreamClass, event_type, seq),
        "my-school",
    )
}

/// A Loopwise event signed with the courses source's key.
pub fn loopwise(event_type: &str, data: Value) -> SignedRequest {
    sample::build_request(
        ProviderKind::Loopwise,
        Some(&key(COURSES_SECRET)),
        event_type,
        data,
        "",
    )
}

/// Builds a DreamClass body from a JSON value (for hand-made envelopes).
pub fn raw_json(value: &Value) -> (Vec<(String, String)>, Vec<u8>) {
    (
        vec![("content-type".into(), "application/json".into())],
        serde_json::to_vec(value).unwrap(),
    )
}

/// Request headers as pairs (what `SignedRequest` holds) in the form ingest reads.
pub fn header_map(headers: &[(String, String)]) -> http::HeaderMap {
    headers
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            )
        })
        .collect()
}

/// The `id` of a DreamClass request body.
pub fn id_of(request: &SignedRequest) -> String {
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// Waits (bounded) until the rejection log holds `n` entries; the log is written
/// asynchronously, after the answer.
pub async fn rejections_at_least(store: &Store, n: usize) -> Vec<classhook::store::Rejection> {
    for _ in 0..100 {
        let found = store.list_rejections(1000).await.unwrap();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.list_rejections(1000).await.unwrap()
}
