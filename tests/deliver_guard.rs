//! The destination guard around deliveries: an explicit `[delivery] proxy` never
//! carries a request to an internal target, and internal address literals are refused
//! when a subscription is declared, created or changed.

mod common;

use std::path::Path;
use std::time::Duration;

use classhook::config::Config;
use classhook::deliver::schedule::Outcome;
use classhook::deliver::send::{Outgoing, Sender};
use classhook::secret::Secret;
use common::proxy::RecordingProxy;
use common::*;
use serde_json::{Value, json};

fn request() -> Outgoing {
    Outgoing {
        headers: vec![("content-type".into(), "application/json".into())],
        body: b"{}".to_vec(),
    }
}

#[tokio::test]
async fn through_an_explicit_proxy_internal_targets_are_refused_before_the_proxy() {
    let proxy = RecordingProxy::start().await;
    let sender = Sender::with_proxy(false, Some(&Secret::new(proxy.url()))).unwrap();
    for url in [
        "http://localhost:9/webhook",    // a loopback name
        "http://localhost.:9/webhook",   // resolved, to loopback
        "http://127.0.0.1:9/webhook",    // a literal
        "http://[64:ff9b::a9fe:a9fe]/",  // NAT64 of 169.254.169.254
        "http://no-such-host.invalid/x", // does not resolve
    ] {
        let attempted = sender
            .send(url, request(), None, Duration::from_secs(5))
            .await;
        assert!(
            matches!(attempted.outcome, Outcome::Failed { status: None, .. }),
            "{url}: {attempted:?}"
        );
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[tokio::test]
async fn an_explicit_proxy_carries_allowed_requests() {
    let proxy = RecordingProxy::start().await;
    // The proxy URL may hold credentials; the proxy is on loopback (operator's choice).
    let configured = format!("http://user:pa55@{}", proxy.addr);
    let sender = Sender::with_proxy(true, Some(&Secret::new(configured))).unwrap();
    let attempted = sender
        .send(
            "http://localhost:9/webhook",
            request(),
            None,
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(attempted.outcome, Outcome::Success { status: 200 }),
        "{attempted:?}"
    );
    assert_eq!(attempted.response_excerpt.as_deref(), Some("proxied"));
    assert_eq!(
        proxy.requests(),
        vec!["POST http://localhost:9/webhook HTTP/1.1".to_string()]
    );
}

fn config(delivery: &str, subscription_url: &str) -> Result<Config, String> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[delivery]\n{delivery}\n\n[[subscription]]\nname = \"crm\"\nurl = \"{subscription_url}\"\nevents = [\"*\"]\n"
    );
    Config::from_toml_str(Path::new("gateway.toml"), &text, &[], &|_| None)
        .map_err(|e| e.to_string())
}

#[test]
fn config_subscriptions_to_internal_literals_are_refused_unless_allowed() {
    for url in [
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
        "http://[2002:7f00:1::1]/",
        "http://198.18.0.1/",
        "http://localhost:8080/",
    ] {
        let error = config("", url).unwrap_err();
        assert!(
            error.contains("gateway.toml")
                && error.contains("subscription[0].url")
                && error.contains("not allowed"),
            "{url}: {error}"
        );
        assert!(
            config("allow_private_destinations = true", url).is_ok(),
            "{url}"
        );
    }
    assert!(config("", "https://crm.example/hook").is_ok());
}

#[test]
fn a_bad_proxy_is_a_config_error_that_does_not_repeat_it() {
    for proxy in ["ftp://user:hunter2@proxy:21", "user:hunter2@proxy"] {
        let error =
            config(&format!("proxy = \"{proxy}\""), "https://crm.example/hook").unwrap_err();
        assert!(
            error.contains("gateway.toml") && error.contains("delivery.proxy"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
    let dir = Path::new("gateway.toml");
    let ok = Config::from_toml_str(
        dir,
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        &[(
            "CLASSHOOK_DELIVERY_PROXY".to_string(),
            "http://user:hunter2@10.0.0.5:3128".to_string(),
        )],
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        ok.delivery.proxy.as_ref().map(Secret::expose),
        Some("http://user:hunter2@10.0.0.5:3128")
    );
    assert!(!format!("{:?}", ok.delivery).contains("hunter2"));
}

#[tokio::test]
async fn the_api_refuses_internal_literals_with_the_reason() {
    let token = "guard-test-token-0123456789";
    let sources = format!("[api]\ntokens = [\"{token}\"]\n[delivery]\nenabled = false\n{SOURCES}");
    let gw = Gateway::start_with("", &sources).await;
    let call = |method: reqwest::Method, path: &str, body: Value| {
        gw.client
            .request(method, gw.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[64:ff9b::7f00:1]/",
        "http://[fec0::1]/",
    ] {
        let response = call(
            reqwest::Method::POST,
            "/api/v1/subscriptions",
            json!({"name": "inward", "url": url, "events": ["*"]}),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("not allowed"),
            "{url}: {body}"
        );
    }
    let created = call(
        reqwest::Method::POST,
        "/api/v1/subscriptions",
        json!({"name": "outward", "url": "https://crm.example/hook", "events": ["*"]}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let changed = call(
        reqwest::Method::PATCH,
        "/api/v1/subscriptions/outward",
        json!({"url": "http://[::127.0.0.1]:8080/"}),
    )
    .await
    .unwrap();
    assert_eq!(changed.status(), 400);
    let body: Value = changed.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("not allowed"),
        "{body}"
    );
    let (_, kept) = (
        (),
        call(
            reqwest::Method::GET,
            "/api/v1/subscriptions/outward",
            json!({}),
        )
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap(),
    );
    assert_eq!(kept["url"], "https://crm.example/hook");
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_delivers_through_its_configured_proxy() {
    let proxy = RecordingProxy::start().await;
    let config = format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"10ms\"\nproxy = \"http://{}\"\n{SOURCES}\n[[subscription]]\nname = \"crm\"\nurl = \"http://localhost:9/webhook\"\nevents = [\"*\"]\n",
        proxy.addr
    );
    let gw = Gateway::start_with("", &config).await;
    let answer = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
        .await;
    assert_eq!(answer.status, 200);
    common::receiver::eventually("delivered through the proxy", || {
        !proxy.requests().is_empty()
    })
    .await;
    assert_eq!(
        proxy.requests(),
        vec!["POST http://localhost:9/webhook HTTP/1.1".to_string()]
    );
    gw.stop().await;
}
