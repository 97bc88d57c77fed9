//! Signing keys over real sockets: a rotation keeps the old key signing for its
//! grace period and no longer; ed25519 `v1a` signatures checked by a verifier that
//! is not ours (Python's `cryptography`, driven by a script written from the
//! Standard Webhooks spec); config subscriptions' keys; the limits of a rotation.
//! Runs on either backend (`CLASSHOOK_TEST_BACKEND=postgres`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use classhook::clock::SystemClock;
use classhook::provider::dreamclass;
use common::receiver::{Received, Receiver, eventually_async};
use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "signing-test-token-0001";
const SECOND_TOKEN: &str = "signing-test-token-0002";
const OLD_KEY: &[u8] = b"the-old-hmac-key-of-32-bytes-xyz";

/// Sources, two API tokens, and prompt delivery to loopback.
fn sources(subscriptions: &str) -> String {
    format!(
        "[api]\ntokens = [\"{TOKEN}\", \"{SECOND_TOKEN}\"]\n\n[delivery]\nallow_private_destinations = true\npoll_interval = \"10ms\"\n\n{SOURCES}\n{subscriptions}"
    )
}

async fn start(subscriptions: &str) -> Gateway {
    Gateway::start_with("", &sources(subscriptions)).await
}

/// The independent verifier: Python with `cryptography` in a venv of its own under
/// `target/` (installed on first use, as scripts/api-conformance installs its tool;
/// once per test process, whichever test asks first).
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(install_python).clone()
}

fn install_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sig-venv");
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", "import cryptography"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv");
        let installed = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "cryptography==44.0.0",
            ])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install cryptography");
    }
    python
}

/// Whether the verifier accepts `received` under `key` (`whsec_…` or `whpk_…`).
fn verifies(received: &Received, key: &str) -> bool {
    verify_all(&[(received, key)])[0]
}

fn verify_all(cases: &[(&Received, &str)]) -> Vec<bool> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/signing/verify_standard_webhooks.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for (received, key) in cases {
        let line = json!({
            "id": received.header("webhook-id"),
            "timestamp": received.header("webhook-timestamp"),
            "body_b64": BASE64.encode(&received.body),
            "signature": received.header("webhook-signature"),
            "key": key,
        });
        input.push_str(&format!("{line}\n"));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the verifier failed");
    let answers: Vec<bool> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l == "ok")
        .collect();
    assert_eq!(answers.len(), cases.len());
    answers
}

/// Creates a subscription through the API; it must answer 201. Returns its view.
async fn create(gw: &Gateway, body: Value) -> Value {
    let (status, created) = gw
        .api(TOKEN, reqwest::Method::POST, "/subscriptions", Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn rotate(gw: &Gateway, name: &str, body: Value) -> (u16, Value) {
    let path = format!("/subscriptions/{name}/rotate-secret");
    gw.api(SECOND_TOKEN, reqwest::Method::POST, &path, Some(body))
        .await
}

/// Sends one more DreamClass event and returns what the receiver got for it.
async fn deliver_one(gw: &Gateway, receiver: &Receiver, seq: u64) -> Received {
    let before = receiver.received().len();
    let answer = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_UPDATED", seq))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    receiver.wait_for(before + 1).await[before].clone()
}

fn entries(received: &Received) -> Vec<String> {
    received
        .header("webhook-signature")
        .split(' ')
        .map(str::to_string)
        .collect()
}

fn whsec(bytes: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(bytes))
}

async fn stored_previous_keys(gw: &Gateway) -> i64 {
    backend::query_counts(gw.dir.path(), "SELECT count(*) FROM subscription_keys").await[0]
}

/// The verifier is not a rubber stamp: it accepts the spec's published test vector,
/// and a changed body, another key, a missing header all fail.
#[tokio::test]
async fn the_independent_verifier_refuses_what_it_must() {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    let vector = Received {
        headers,
        body: br#"{"test": 2432232314}"#.to_vec(),
        at: Instant::now(),
        at_ms: 0,
    };
    assert!(verifies(&vector, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));

    let gw = start("").await;
    let receiver = Receiver::start().await;
    let create_body = json!({"name": "crm", "url": receiver.url(), "events": ["*"],
        "secret": whsec(OLD_KEY)});
    create(&gw, create_body).await;
    let got = deliver_one(&gw, &receiver, 1).await;
    let mut tampered = got.clone();
    tampered.body.push(b' ');
    let mut unsigned = got.clone();
    unsigned.headers.remove("webhook-signature");
    assert_eq!(
        verify_all(&[
            (&got, &whsec(OLD_KEY)),
            (&tampered, &whsec(OLD_KEY)),
            (&got, &whsec(b"another key")),
            (&unsigned, &whsec(OLD_KEY)),
        ]),
        [true, false, false, false]
    );
    gw.stop().await;
}

/// HMAC: during the grace period the old secret still verifies (and the new one);
/// after it, only the new one, and the old key is gone from the store. The
/// DreamClass `signature` field carries the new key only. The rotation is recorded
/// with the token that made it, and the generated secret is shown once.
#[tokio::test]
async fn an_hmac_receiver_with_the_old_secret_verifies_during_the_grace_period_only() {
    let gw = start("").await;
    let receiver = Receiver::start().await;
    let create_body = json!({"name": "crm", "url": receiver.url(), "events": ["*"],
        "secret": whsec(OLD_KEY)});
    create(&gw, create_body).await;
    let before = deliver_one(&gw, &receiver, 1).await;
    assert!(verifies(&before, &whsec(OLD_KEY)));

    let (status, rotated) = rotate(&gw, "crm", json!({"grace_period": "2s"})).await;
    let rotated_at = Instant::now();
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert!(new_secret.starts_with("whsec_"), "{rotated}");
    assert_eq!(rotated["last_rotation"]["by"], "api token #2", "{rotated}");
    assert_eq!(rotated["previous_keys"].as_array().unwrap().len(), 1);
    assert!(rotated["previous_keys"][0]["expires_at"].is_string());
    assert_eq!(stored_previous_keys(&gw).await, 1);
    // Shown once: the subscription's view never holds it.
    let (_, view) = gw
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/crm", None)
        .await;
    assert!(view.get("secret").is_none(), "{view}");
    assert!(!view.to_string().contains(&new_secret["whsec_".len()..]));
    assert_eq!(view["last_rotation"]["by"], "api token #2");

    let during = deliver_one(&gw, &receiver, 2).await;
    assert!(
        rotated_at.elapsed() < Duration::from_secs(2),
        "the machine is too slow for a 2 s grace period"
    );
    assert_eq!(entries(&during).len(), 2, "{:?}", entries(&during));
    assert!(entries(&during).iter().all(|e| e.starts_with("v1,")));
    assert_eq!(
        verify_all(&[(&during, &whsec(OLD_KEY)), (&during, &new_secret)]),
        [true, true]
    );
    let new_key = BASE64.decode(&new_secret["whsec_".len()..]).unwrap();
    let body: Value = serde_json::from_slice(&during.body).unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["signature"], dreamclass::sign(&new_key, id));

    let wait = Duration::from_millis(2300).saturating_sub(rotated_at.elapsed());
    tokio::time::sleep(wait).await;
    let after = deliver_one(&gw, &receiver, 3).await;
    assert_eq!(entries(&after).len(), 1, "{:?}", entries(&after));
    assert_eq!(
        verify_all(&[(&after, &whsec(OLD_KEY)), (&after, &new_secret)]),
        [false, true]
    );
    // Forgotten: deleted from the store, not just skipped.
    eventually_async("the expired key leaves the store", async || {
        stored_previous_keys(&gw).await == 0
    })
    .await;
    let (_, view) = gw
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/crm", None)
        .await;
    assert_eq!(view["previous_keys"], json!([]), "{view}");
    gw.stop().await;
}

/// ed25519: the public key is in the API view; `v1a` entries verify with
/// Python's `cryptography`; a rotation gives a new key pair and the old public key
/// keeps verifying for the grace period only.
#[tokio::test]
async fn ed25519_signatures_verify_independently_and_rotate_with_a_grace_period() {
    let gw = start("").await;
    let receiver = Receiver::start().await;
    let create_body = json!({"name": "crm", "url": receiver.url(), "events": ["*"],
        "signing": "ed25519"});
    let created = create(&gw, create_body).await;
    assert_eq!(created["signing"], "ed25519");
    assert_eq!(created["has_secret"], true);
    let old_public = created["public_key"].as_str().unwrap().to_string();
    assert!(old_public.starts_with("whpk_"), "{created}");
    assert_eq!(BASE64.decode(&old_public[5..]).unwrap().len(), 32);
    assert!(!created.to_string().contains("whsk_"), "{created}");

    let first = deliver_one(&gw, &receiver, 1).await;
    assert_eq!(entries(&first).len(), 1);
    assert!(
        entries(&first)[0].starts_with("v1a,"),
        "{:?}",
        entries(&first)
    );
    let mut tampered = first.clone();
    tampered.body[0] = b' ';
    assert_eq!(
        verify_all(&[(&first, &old_public), (&tampered, &old_public)]),
        [true, false]
    );
    // No shared secret: the platform-faithful signature is empty.
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["signature"], "");

    let (status, rotated) = rotate(&gw, "crm", json!({"grace_period": "2s"})).await;
    let rotated_at = Instant::now();
    assert_eq!(status, 200, "{rotated}");
    assert!(
        rotated.get("secret").is_none(),
        "no secret is shown: {rotated}"
    );
    let new_public = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(new_public, old_public);
    assert_eq!(
        rotated["previous_keys"][0]["public_key"],
        old_public.as_str()
    );

    let during = deliver_one(&gw, &receiver, 2).await;
    assert!(
        rotated_at.elapsed() < Duration::from_secs(2),
        "the machine is too slow for a 2 s grace period"
    );
    assert_eq!(entries(&during).len(), 2, "{:?}", entries(&during));
    assert_eq!(
        verify_all(&[(&during, &old_public), (&during, &new_public)]),
        [true, true]
    );

    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(rotated_at.elapsed())).await;
    let after = deliver_one(&gw, &receiver, 3).await;
    assert_eq!(
        verify_all(&[(&after, &old_public), (&after, &new_public)]),
        [false, true]
    );
    eventually_async("the expired key leaves the store", async || {
        stored_previous_keys(&gw).await == 0
    })
    .await;

    // Switching schemes is a rotation too: the ed25519 key signs beside the new
    // HMAC secret for the grace period.
    let (status, switched) = rotate(
        &gw,
        "crm",
        json!({"signing": "hmac", "secret": whsec(OLD_KEY), "grace_period": "1h"}),
    )
    .await;
    assert_eq!(status, 200, "{switched}");
    assert_eq!(switched["signing"], "hmac");
    assert!(switched["public_key"].is_null());
    let both = deliver_one(&gw, &receiver, 4).await;
    assert_eq!(
        verify_all(&[(&both, &new_public), (&both, &whsec(OLD_KEY))]),
        [true, true]
    );
    gw.stop().await;
}

/// A rotation's input is checked (clear 400s), a missing subscription is a 404, and
/// at most three replaced keys are kept (the header has at most four entries).
#[tokio::test]
async fn rotations_are_bounded_and_checked() {
    let gw = start("").await;
    let receiver = Receiver::start().await;
    let create_body = json!({"name": "crm", "url": receiver.url(), "events": ["*"],
        "secret": whsec(OLD_KEY)});
    create(&gw, create_body).await;
    for (body, says) in [
        (json!({"grace_period": "8d"}), "7 days"),
        (json!({"grace_period": "soon"}), "grace_period"),
        (json!({"grace_period": "-1s"}), "grace_period"),
        (json!({"signing": "rsa"}), "signing"),
        (json!({"secret": ""}), "secret"),
        (
            json!({"signing": "ed25519", "secret": "chosen"}),
            "generates",
        ),
        (json!({"grace": "1h"}), "unknown field"),
    ] {
        let (status, answer) = rotate(&gw, "crm", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, answer) = rotate(&gw, "nobody", json!({})).await;
    assert_eq!(status, 404, "{answer}");

    for _ in 0..5 {
        let (status, _) = rotate(&gw, "crm", json!({"grace_period": "1h"})).await;
        assert_eq!(status, 200);
    }
    let (_, view) = gw
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/crm", None)
        .await;
    assert_eq!(view["previous_keys"].as_array().unwrap().len(), 3, "{view}");
    assert_eq!(stored_previous_keys(&gw).await, 3);
    let got = deliver_one(&gw, &receiver, 1).await;
    assert_eq!(entries(&got).len(), 4);

    // `0s` ends the replaced key at once (the older ones keep their own time).
    let (_, now) = rotate(&gw, "crm", json!({"grace_period": "0s"})).await;
    assert_eq!(now["previous_keys"].as_array().unwrap().len(), 3, "{now}");
    let newest = now["secret"].as_str().unwrap().to_string();
    let got = deliver_one(&gw, &receiver, 2).await;
    assert!(verifies(&got, &newest));

    // An ed25519 subscription's secret is its generated key: not set by PATCH.
    let create_body = json!({"name": "ed", "url": receiver.url(), "events": ["X"],
        "signing": "ed25519"});
    create(&gw, create_body).await;
    let (status, answer) = gw
        .api(
            TOKEN,
            reqwest::Method::PATCH,
            "/subscriptions/ed",
            Some(json!({"secret": "mine"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("rotate-secret")
    );
    let create = json!({"name": "ed2", "url": receiver.url(), "events": ["X"],
        "signing": "ed25519", "secret": "mine"});
    let (status, _) = gw
        .api(TOKEN, reqwest::Method::POST, "/subscriptions", Some(create))
        .await;
    assert_eq!(status, 400);
    gw.stop().await;
}

/// Config subscriptions: an HMAC secret lives in the file (409, change it there);
/// an ed25519 key pair is generated once, kept across restarts, and rotated here.
#[tokio::test]
async fn config_subscriptions_keep_generated_keys_and_refuse_file_secrets() {
    let receiver = Receiver::start().await;
    let subscriptions = format!(
        "[[subscription]]\nname = \"file-hmac\"\nurl = \"{0}\"\nevents = [\"X\"]\nsecret = \"file-secret\"\n\n[[subscription]]\nname = \"file-ed\"\nurl = \"{0}\"\nevents = [\"*\"]\nsigning = \"ed25519\"\n",
        receiver.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", &sources(&subscriptions));
    let mut gw = Gateway::start_config(dir, &config, Arc::new(SystemClock)).await;

    let (status, answer) = rotate(&gw, "file-hmac", json!({})).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("config file"),
        "{answer}"
    );
    assert!(!answer.to_string().contains("file-secret"));

    let (_, view) = gw
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/file-ed", None)
        .await;
    let generated = view["public_key"].as_str().unwrap().to_string();
    let got = deliver_one(&gw, &receiver, 1).await;
    assert!(verifies(&got, &generated));

    // A restart keeps the key pair (the file holds none).
    gw.running.take().unwrap().stop().await;
    let gw2 = Gateway::start_config(gw.dir, &config, Arc::new(SystemClock)).await;
    let (_, view) = gw2
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/file-ed", None)
        .await;
    assert_eq!(view["public_key"], generated.as_str());

    let (status, rotated) = rotate(&gw2, "file-ed", json!({"grace_period": "0s"})).await;
    assert_eq!(status, 200, "{rotated}");
    let rotated_key = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(rotated_key, generated);
    assert_eq!(stored_previous_keys(&gw2).await, 0, "0s keeps nothing");
    let mut gw2 = gw2;
    gw2.running.take().unwrap().stop().await;
    let gw3 = Gateway::start_config(gw2.dir, &config, Arc::new(SystemClock)).await;
    let (_, view) = gw3
        .api(TOKEN, reqwest::Method::GET, "/subscriptions/file-ed", None)
        .await;
    assert_eq!(
        view["public_key"],
        rotated_key.as_str(),
        "the rotated key stays"
    );
    assert_eq!(view["last_rotation"]["by"], "api token #2");
    let got = deliver_one(&gw3, &receiver, 2).await;
    assert_eq!(
        verify_all(&[(&got, &rotated_key), (&got, &generated)]),
        [true, false]
    );
    gw3.stop().await;

    // A secret beside signing = "ed25519" is a config error that says why.
    let bad = "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\nsigning = \"ed25519\"\nsecret = \"mine\"\n";
    let error = classhook::config::Config::from_toml_str(Path::new("t.toml"), bad, &[], &|_| None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("generates the key pair"), "{error}");
    assert!(!error.contains("mine"), "{error}");
    let bad = "[[subscription]]\nname = \"x\"\nurl = \"https://x.example\"\nevents = [\"*\"]\nsigning = \"rsa\"\n";
    let error = classhook::config::Config::from_toml_str(Path::new("t.toml"), bad, &[], &|_| None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("signing"), "{error}");
}

/// A delivery leased before a rotation and sent after it (it waited for the
/// subscription's one slot) is signed with the keys of the moment it is sent: with a
/// `0s` grace period the old key no longer signs it.
#[tokio::test]
async fn a_delivery_waiting_for_a_slot_is_signed_with_the_keys_after_a_rotation() {
    let gw = start("").await;
    let receiver = Receiver::start().await;
    let create_body = json!({"name": "crm", "url": receiver.url(), "events": ["*"],
        "secret": whsec(OLD_KEY), "max_in_flight": 1});
    create(&gw, create_body).await;
    receiver.script([common::receiver::Reply::Held(200)]);
    let held = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_UPDATED", 1))
        .await;
    assert_eq!(held.status, 200);
    receiver.wait_for(1).await;
    let waiting = gw
        .post("/hooks/school", &dreamclass_sample("CLASS_UPDATED", 2))
        .await;
    assert_eq!(waiting.status, 200);
    // Leased (prefetched) behind the held request: the dispatcher polls every 10 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, rotated) = rotate(&gw, "crm", json!({"grace_period": "0s"})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    receiver.release(1);
    let got = receiver.wait_for(2).await;
    assert_eq!(entries(&got[1]).len(), 1, "{:?}", entries(&got[1]));
    assert_eq!(
        verify_all(&[(&got[1], &new_secret), (&got[1], &whsec(OLD_KEY))]),
        [true, false]
    );
    gw.stop().await;
}
