//! Subscription secrets at rest: with `CLASSHOOK_SECRET_KEY` set, neither a config
//! subscription's nor an API subscription's secret or Basic Auth password is in the
//! database files, deliveries are still signed with them, the key can be rotated,
//! a forgotten key is named, and the commands that never send work without it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use classhook::clock::SystemClock;
use classhook::config::Config;
use classhook::crypto;
use classhook::store::sealed::SecretKey;
use common::receiver::{Received, Receiver};
use common::*;
use serde_json::json;

const CONFIG_SECRET: &str = "cfgSubSecret-H7j8K9l0";
const CONFIG_PASSWORD: &str = "cfgSubPass-Q2w3E4r5";
const API_SECRET: &str = "apiSubSecret-Z1x2C3v4";
const API_PASSWORD: &str = "apiSubPass-B5n6M7q8";
const PATCHED_SECRET: &str = "patchedSubSecret-T9y8U7i6";
const ROTATED_SECRET: &str = "rotatedSubSecret-P4o5I6u7";

const KEY_VAR: &str = "CLASSHOOK_SECRET_KEY";
const PREVIOUS_VAR: &str = "CLASSHOOK_SECRET_KEY_PREVIOUS";

/// The config file's text: the test sources, delivery to loopback, and one config
/// subscription with a secret and a Basic Auth password.
fn config_text(dir: &Path, receiver: &Receiver) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = {data:?}

[delivery]
allow_private_destinations = true
poll_interval = "10ms"

{SOURCES}

[[subscription]]
name = "from-config"
url = "{url}"
events = ["*"]
secret = "{CONFIG_SECRET}"
basic_auth = {{ username = "cfg", password = "{CONFIG_PASSWORD}" }}
"#,
        data = dir.join("data").display().to_string(),
        url = receiver.url(),
    )
}

/// The configuration with these keys in the environment (none: plain text).
fn config(
    dir: &Path,
    receiver: &Receiver,
    key: Option<&SecretKey>,
    previous: Option<&SecretKey>,
) -> Config {
    let env = [(KEY_VAR, key), (PREVIOUS_VAR, previous)];
    let lookup = |name: &str| {
        env.iter()
            .find(|(var, _)| *var == name)
            .and_then(|(_, key)| key.map(SecretKey::to_base64))
    };
    Config::from_toml_str(
        &dir.join("classhook.toml"),
        &config_text(dir, receiver),
        &[],
        &lookup,
    )
    .unwrap()
}

async fn start(dir: tempfile::TempDir, config: &Config) -> Gateway {
    Gateway::start_config(dir, config, Arc::new(SystemClock)).await
}

/// Stops the gateway and hands its data directory back.
async fn stop(gw: Gateway) -> tempfile::TempDir {
    let Gateway { running, dir, .. } = gw;
    running.unwrap().stop().await;
    dir
}

async fn create_api_subscription(gw: &Gateway, receiver: &Receiver) {
    let created = gw
        .client
        .post(gw.url("/api/v1/subscriptions"))
        .json(&json!({
            "name": "crm",
            "url": receiver.url(),
            "events": ["*"],
            "secret": API_SECRET,
            "basic_auth": {"username": "crm", "password": API_PASSWORD},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

/// The stored `(name, basic_password, secret)` of every subscription, read straight
/// from the database file.
fn stored_rows(dir: &Path) -> Vec<(String, Option<String>, Option<String>)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("data").join(classhook::store::DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT name, basic_password, secret FROM subscriptions ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every stored secret is sealed under `key`, the keys kept after a rotation too.
fn assert_sealed_under(dir: &Path, key: &SecretKey) {
    let prefix = format!("sealed:v1:{}:", key.id());
    let rows = stored_rows(dir);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (name, password, secret) in rows {
        for value in [password.unwrap(), secret.unwrap()] {
            assert!(value.starts_with(&prefix), "{name}: {value}");
        }
    }
    for value in stored_previous_keys(dir) {
        assert!(value.starts_with(&prefix), "a previous key: {value}");
    }
}

/// The stored keys a rotation replaced, read straight from the database file.
fn stored_previous_keys(dir: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("data").join(classhook::store::DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT secret FROM subscription_keys ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Rotates crm's secret to `secret`, keeping the old one for an hour.
async fn rotate_api_subscription(gw: &Gateway, secret: &str) {
    let rotated = gw
        .client
        .post(gw.url("/api/v1/subscriptions/crm/rotate-secret"))
        .json(&json!({"secret": secret, "grace_period": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200, "{}", rotated.text().await.unwrap());
}

/// None of `secrets` is anywhere in the bytes of the database file or its WAL.
fn assert_not_in_files(dir: &Path, secrets: &[&str]) {
    for secret in secrets {
        assert!(!in_files(dir, secret), "the database files hold {secret:?}");
    }
}

/// Whether `secret` is anywhere in the bytes of the database file or its WAL.
fn in_files(dir: &Path, secret: &str) -> bool {
    let data = dir.join("data");
    let mut looked = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(classhook::store::DATABASE_FILE) {
            continue;
        }
        // The WAL goes when the last connection closes, perhaps right now.
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.unwrap(),
        };
        looked += bytes.len();
        if bytes
            .windows(secret.len())
            .any(|window| window == secret.as_bytes())
        {
            return true;
        }
    }
    assert!(looked > 0, "no database file in {}", data.display());
    false
}

/// What a Standard Webhooks verifier does.
fn signed_with(received: &Received, secret: &str) -> bool {
    let mut signed = format!(
        "{}.{}.",
        received.header("webhook-id"),
        received.header("webhook-timestamp")
    )
    .into_bytes();
    signed.extend_from_slice(&received.body);
    let expected = format!(
        "v1,{}",
        BASE64.encode(crypto::hmac_sha256(secret.as_bytes(), &signed))
    );
    received
        .header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// Posts one event and checks that both subscriptions received it, signed with their
/// secrets and with their Basic Auth; `already` is how many the receiver had.
async fn assert_delivered_signed(gw: &Gateway, receiver: &Receiver, seq: u64, already: usize) {
    assert_delivered_signed_n(gw, receiver, seq, already, 2).await
}

/// Like [`assert_delivered_signed`], when `coming` requests are on their way.
async fn assert_delivered_signed_n(
    gw: &Gateway,
    receiver: &Receiver,
    seq: u64,
    already: usize,
    coming: usize,
) {
    let event = dreamclass_sample("CLASS_CREATED", seq);
    assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    let received = receiver.wait_for(already + coming).await;
    let new = &received[already..];
    let with_auth = |user: &str, password: &str| {
        new.iter()
            .filter(|r| r.header("authorization") == basic(user, password))
            .collect::<Vec<_>>()
    };
    let (to_config, to_crm) = (
        with_auth("cfg", CONFIG_PASSWORD),
        with_auth("crm", API_PASSWORD),
    );
    assert_eq!(
        to_config.len() + to_crm.len(),
        coming,
        "each with its Basic Auth"
    );
    assert!(!to_config.is_empty() && !to_crm.is_empty());
    assert!(to_config.iter().all(|r| signed_with(r, CONFIG_SECRET)));
    assert!(to_crm.iter().all(|r| signed_with(r, API_SECRET)));
}

#[tokio::test]
async fn with_a_key_no_subscription_secret_is_in_the_database_files() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let config = config(dir.path(), &receiver, Some(&key), None);
    let gw = start(dir, &config).await;
    create_api_subscription(&gw, &receiver).await;
    assert_delivered_signed(&gw, &receiver, 1, 0).await;

    // A changed secret is sealed too, and signs from then on.
    let patched = gw
        .client
        .patch(gw.url("/api/v1/subscriptions/crm"))
        .json(&json!({"secret": PATCHED_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_UPDATED", 1))
            .await
            .status,
        200
    );
    let received = receiver.wait_for(4).await;
    let to_crm = received[2..]
        .iter()
        .find(|r| r.header("authorization") == basic("crm", API_PASSWORD))
        .unwrap();
    assert!(signed_with(to_crm, PATCHED_SECRET));

    // A rotation keeps the replaced secret (in its whsec_ form), sealed as well.
    rotate_api_subscription(&gw, ROTATED_SECRET).await;
    assert_eq!(stored_previous_keys(gw.dir.path()).len(), 1);
    let patched_canonical = BASE64.encode(PATCHED_SECRET);
    let secrets = [
        CONFIG_SECRET,
        CONFIG_PASSWORD,
        API_SECRET,
        API_PASSWORD,
        PATCHED_SECRET,
        patched_canonical.as_str(),
        ROTATED_SECRET,
    ];
    // While it runs (the WAL holds the latest pages), then after it stopped.
    assert_sealed_under(gw.dir.path(), &key);
    assert_not_in_files(gw.dir.path(), &secrets);
    let dir = stop(gw).await;
    assert_not_in_files(dir.path(), &secrets);
    assert_sealed_under(dir.path(), &key);
}

#[tokio::test]
async fn the_key_rotates_and_a_forgotten_key_is_named() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (SecretKey::generate(), SecretKey::generate());

    let first = config(dir.path(), &receiver, Some(&old), None);
    let gw = start(dir, &first).await;
    create_api_subscription(&gw, &receiver).await;
    rotate_api_subscription(&gw, ROTATED_SECRET).await;
    let dir = stop(gw).await;
    assert_sealed_under(dir.path(), &old);
    assert_eq!(stored_previous_keys(dir.path()).len(), 1);

    // Only the new key: the old one is forgotten, and the error says which one is
    // needed (never a secret).
    let only_new = config(dir.path(), &receiver, Some(&new), None);
    let error = match classhook::server::start(&only_new, Arc::new(SystemClock)).await {
        Ok(_) => panic!("started without the key the secrets are sealed under"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(&format!("encrypted with key {}", old.id())),
        "{error}"
    );
    assert!(
        error.contains(&format!("set {KEY_VAR} to that key")),
        "{error}"
    );
    assert!(!error.contains(API_SECRET) && !error.contains(CONFIG_SECRET));
    assert_sealed_under(dir.path(), &old);

    // New key with the old one as previous: everything moves to the new key.
    let rotating = config(dir.path(), &receiver, Some(&new), Some(&old));
    let gw = start(dir, &rotating).await;
    assert_sealed_under(gw.dir.path(), &new);
    assert_delivered_signed(&gw, &receiver, 1, 0).await;
    let dir = stop(gw).await;

    // From now on the new key alone is enough.
    let gw = start(dir, &only_new).await;
    assert_delivered_signed(&gw, &receiver, 2, 2).await;
    let dir = stop(gw).await;
    assert_sealed_under(dir.path(), &new);
    assert_not_in_files(
        dir.path(),
        &[CONFIG_SECRET, CONFIG_PASSWORD, API_SECRET, API_PASSWORD],
    );
}

#[tokio::test]
async fn plain_text_from_before_the_key_is_sealed_once_one_is_set() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = config(dir.path(), &receiver, None, None);
    let gw = start(dir, &plain).await;
    create_api_subscription(&gw, &receiver).await;
    // Without a key, a secret that looks sealed would later be read as sealed.
    let refused = gw
        .client
        .post(gw.url("/api/v1/subscriptions"))
        .json(
            &json!({"name": "odd", "url": receiver.url(), "events": ["*"],
            "secret": "sealed:v1:00000000:AAAA"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let dir = stop(gw).await;
    let rows = stored_rows(dir.path());
    assert!(
        rows.contains(&(
            "crm".into(),
            Some(API_PASSWORD.into()),
            Some(API_SECRET.into())
        )),
        "without a key secrets are stored as they are: {rows:?}"
    );
    assert!(in_files(dir.path(), API_SECRET) && in_files(dir.path(), CONFIG_PASSWORD));

    let key = SecretKey::generate();
    let keyed = config(dir.path(), &receiver, Some(&key), None);
    let gw = start(dir, &keyed).await;
    assert_sealed_under(gw.dir.path(), &key);
    assert_delivered_signed(&gw, &receiver, 1, 0).await;
    let dir = stop(gw).await;
    // Re-sealing leaves no plain copy behind in freed space or the WAL.
    assert_not_in_files(
        dir.path(),
        &[CONFIG_SECRET, CONFIG_PASSWORD, API_SECRET, API_PASSWORD],
    );

    // Once sealed, starting without the key is refused, naming it.
    let error = match classhook::server::start(&plain, Arc::new(SystemClock)).await {
        Ok(_) => panic!("started without a key on sealed secrets"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(&format!(
            "encrypted with key {}, but no key is set: set {KEY_VAR} to that key",
            key.id()
        )),
        "{error}"
    );
}

/// Runs the binary with the config file and no key in its environment.
async fn run_without_key(config: &Path, args: &[&str]) -> (i32, String, String) {
    run_with_key(config, args, None).await
}

/// Runs the binary with the config file and only this key in its environment.
async fn run_with_key(
    config: &Path,
    args: &[&str],
    key: Option<&SecretKey>,
) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_classhook"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove(KEY_VAR)
        .env_remove(PREVIOUS_VAR)
        .env_remove("CLASSHOOK_CONFIG");
    if let Some(key) = key {
        command.env(KEY_VAR, key.to_base64());
    }
    let output = command.stdin(Stdio::null()).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the command finished within 30 s")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn commands_that_never_send_work_without_the_key() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let keyed = config(dir.path(), &receiver, Some(&key), None);
    let gw = start(dir, &keyed).await;
    create_api_subscription(&gw, &receiver).await;
    assert_delivered_signed(&gw, &receiver, 1, 0).await;
    let dir = stop(gw).await;
    let file = dir.path().join("classhook.toml");
    std::fs::write(&file, config_text(dir.path(), &receiver)).unwrap();
    let backup = dir.path().join("backup.db");

    for args in [
        &["events"][..],
        &["export", "--events"],
        &["deliveries"],
        &["deliveries", "--subscription", "crm"],
        &["replay", "--subscription", "crm", "--all", "--dry-run"],
        &["replay", "--subscription", "crm", "--all"],
        &["mirror", "rebuild"],
        &["event", "show", "1"],
        &["rejections"],
        &["subscriptions", "list"],
        &["subscriptions", "pause", "crm"],
        &["subscriptions", "resume", "crm"],
        &["backup", backup.to_str().unwrap()],
    ] {
        let (code, out, err) = run_without_key(&file, args).await;
        assert_eq!(code, 0, "{args:?}: {out}\n{err}");
        for secret in [API_SECRET, API_PASSWORD, CONFIG_SECRET, CONFIG_PASSWORD] {
            assert!(!out.contains(secret) && !err.contains(secret), "{args:?}");
        }
    }
    let (_, out, _) = run_without_key(&file, &["deliveries", "--subscription", "crm"]).await;
    assert!(out.contains("crm"), "{out}");
    let copy = std::fs::read(&backup).unwrap();
    for secret in [API_SECRET, API_PASSWORD, CONFIG_SECRET, CONFIG_PASSWORD] {
        let found = copy.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "the backup holds {secret:?}");
    }
    // Secrets are not read, but that they are there is still told.
    let (_, out, _) = run_without_key(&file, &["subscriptions", "list", "--json"]).await;
    let crm: serde_json::Value = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|s| s["name"] == "crm")
        .unwrap();
    assert_eq!(crm["has_secret"], true, "{crm}");
    assert_eq!(crm["basic_auth_username"], "crm", "{crm}");
    assert_eq!(crm["paused"], false, "{crm}");
    // Nothing was written back: the secrets are still sealed, and still open.
    assert_sealed_under(dir.path(), &key);
    // The replay queued crm's one delivery again: it goes out beside the new two.
    let gw = start(dir, &keyed).await;
    assert_delivered_signed_n(&gw, &receiver, 2, 2, 3).await;
    stop(gw).await;
}

#[tokio::test]
async fn secret_key_prints_a_fresh_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    let (code, first, err) = run_without_key(&file, &["secret-key"]).await;
    assert_eq!(code, 0, "needs no config file: {err}");
    let (_, second, _) = run_without_key(&file, &["secret-key"]).await;
    let first = first.trim_end_matches('\n');
    assert!(!first.contains('\n'), "only the key: {first:?}");
    assert_eq!(BASE64.decode(first).unwrap().len(), 32);
    assert!(SecretKey::from_base64(first).is_ok());
    assert_ne!(first, second.trim());
}

#[tokio::test]
async fn after_a_lost_key_the_secrets_are_forgotten_and_set_again() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (lost, new) = (SecretKey::generate(), SecretKey::generate());
    let first = config(dir.path(), &receiver, Some(&lost), None);
    let gw = start(dir, &first).await;
    create_api_subscription(&gw, &receiver).await;
    let dir = stop(gw).await;
    let file = dir.path().join("classhook.toml");
    std::fs::write(&file, config_text(dir.path(), &receiver)).unwrap();

    // Without --yes it only says which, and which key they need.
    let (code, out, err) = run_with_key(&file, &["forget-secrets"], Some(&new)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "crm: subscription secrets are encrypted with key {}",
            lost.id()
        )),
        "{out}"
    );
    assert!(out.contains("from-config: "), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_sealed_under(dir.path(), &lost);

    let (code, out, err) = run_with_key(&file, &["forget-secrets", "--yes"], Some(&new)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("forgot the secrets of 2 subscriptions"),
        "{out}"
    );
    let rows = stored_rows(dir.path());
    assert!(rows.contains(&("crm".into(), None, None)), "{rows:?}");

    // The new key starts: the config subscription has its secrets again, the API
    // one waits, paused, until they are set again.
    let keyed = config(dir.path(), &receiver, Some(&new), None);
    let gw = start(dir, &keyed).await;
    let crm = gw.store.get_subscription("crm").await.unwrap().unwrap();
    assert!(crm.paused && crm.spec.secret.is_none() && crm.spec.basic_auth.is_none());
    assert!(crm.paused_reason.unwrap().contains("lost key"));
    let patched = gw
        .client
        .patch(gw.url("/api/v1/subscriptions/crm"))
        .json(&json!({"secret": API_SECRET, "basic_auth": {"username": "crm", "password": API_PASSWORD}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let resumed = gw
        .client
        .post(gw.url("/api/v1/subscriptions/crm/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    assert_sealed_under(gw.dir.path(), &new);
    assert_delivered_signed(&gw, &receiver, 1, 0).await;
    stop(gw).await;
}
