//! The command line, run as a user would: serve, send, events, verify, config errors.

mod common;

use common::process::{run, serve, write_config};

const SOURCES: &str = r#"
[[source]]
name = "school"
provider = "dreamclass"
secret = "school-secret"

[[source]]
name = "school-b64"
provider = "dreamclass"
secret = "a2V5LWJ5dGVzLWZvci10ZXN0cw=="
secret_encoding = "base64"

[[source]]
name = "courses"
provider = "loopwise"
secret = "courses-key"
basic_auth = { username = "lw", password = "pw" }
"#;

/// A copy of `config` beside it naming the port the gateway really listens on (the
/// config says port 0), for commands that talk to it.
fn live_config(config: &std::path::Path, addr: std::net::SocketAddr) -> String {
    let live = config.with_file_name("live.toml");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(&live, text).unwrap();
    live.to_str().unwrap().to_string()
}

#[tokio::test]
async fn send_stores_an_event_that_events_lists() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let mut served = serve(&config).await;
    let live = &live_config(&config, served.addr);

    for (source, event_type) in [
        ("school", "CLASS_CREATED"),
        ("school-b64", "STUDENT_PERIOD_UPDATED"),
        ("courses", "course.student_enroll"),
        ("courses", "payment.paid"),
    ] {
        let (code, out, err) = run(
            &[
                "send", "--config", live, "--source", source, "--event", event_type,
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{source} {event_type}: {out} {err}");
        assert!(out.starts_with("200"), "{out}");
    }
    let (code, out, err) = run(&["events", "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    for expected in [
        "CLASS_CREATED",
        "STUDENT_PERIOD_UPDATED",
        "course.student_enroll",
        "payment.paid",
    ] {
        assert!(out.contains(expected), "{expected} missing from:\n{out}");
    }
    let (_, out, _) = run(
        &[
            "events", "--config", live, "--source", "courses", "--limit", "1",
        ],
        None,
    )
    .await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("payment.paid"), "{out}");

    // Each line shows the sequence number and the platform id (the DreamClass id, a
    // Loopwise sha256 key): the API finds the event by either.
    for source in ["school", "courses"] {
        let (_, out, _) = run(
            &[
                "events", "--config", live, "--source", source, "--limit", "1",
            ],
            None,
        )
        .await;
        let line: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        let (seq, platform_id) = (line[0], *line.last().unwrap());
        assert!(seq.parse::<i64>().is_ok(), "{out}");
        if source == "courses" {
            assert!(platform_id.starts_with("sha256:"), "{out}");
        }
        for id in [seq, platform_id] {
            let event: serde_json::Value =
                reqwest::get(format!("http://{}/api/v1/events/{id}", served.addr))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            assert_eq!(event["id"].to_string(), seq, "{id}: {event}");
        }
    }

    // A wrong secret is refused and `send` says so with its exit code.
    let url = format!("http://{}/hooks/school", served.addr);
    let (code, out, _) = run(
        &[
            "send",
            "--url",
            &url,
            "--provider",
            "dreamclass",
            "--secret",
            "wrong",
            "--event",
            "CLASS_CREATED",
        ],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        out.starts_with("401") && out.contains("signature_invalid"),
        "{out}"
    );
    served.child.start_kill().unwrap();
}

/// Splits `send --print` output into headers and body.
fn split_printed(out: &str) -> (Vec<String>, String) {
    let (head, body) = out.split_once("\n\n").unwrap();
    let headers = head.lines().skip(1).map(str::to_string).collect();
    (headers, body.trim_end().to_string())
}

#[tokio::test]
async fn verify_tells_which_dreamclass_key_encoding_holds() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a2V5LWJ5dGVzLWZvci10ZXN0cw==";
    for (encoding, expected) in [
        ("utf8", "secret_encoding = \"utf8\""),
        ("base64", "secret_encoding = \"base64\""),
    ] {
        let (code, out, err) = run(
            &[
                "send",
                "--print",
                "--url",
                "http://127.0.0.1:1/hooks/x",
                "--provider",
                "dreamclass",
                "--secret",
                secret,
                "--secret-encoding",
                encoding,
                "--event",
                "ATTENDANCE_CREATED",
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let (_, body) = split_printed(&out);
        let file = dir.path().join(format!("{encoding}.json"));
        std::fs::write(&file, &body).unwrap();

        let (code, out, _) = run(
            &[
                "verify",
                "--provider",
                "dreamclass",
                "--secret",
                secret,
                "--body",
                file.to_str().unwrap(),
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("HOLDS") && out.contains(expected),
            "{encoding}: {out}"
        );

        // Read from standard input too; a wrong secret does not hold.
        let (code, out, _) = run(
            &["verify", "--provider", "dreamclass", "--secret", "other"],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("does not hold"), "{out}");
    }
}

#[tokio::test]
async fn verify_checks_loopwise_headers_and_reads_secrets_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let config = config.to_str().unwrap();
    let (code, out, _) = run(
        &[
            "send",
            "--print",
            "--config",
            config,
            "--source",
            "courses",
            "--event",
            "course.created",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    let (headers, body) = split_printed(&out);
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("authorization: Basic")),
        "{headers:?}"
    );
    let signature = headers
        .iter()
        .find(|h| h.starts_with("loopwise-webhook-signature"))
        .unwrap()
        .clone();
    let file = dir.path().join("body.json");
    std::fs::write(&file, &body).unwrap();
    let file = file.to_str().unwrap();

    let (code, out, _) = run(
        &[
            "verify", "--config", config, "--source", "courses", "--body", file, "--header",
            &signature,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(
        &[
            "verify", "--config", config, "--source", "courses", "--body", file,
        ],
        None,
    )
    .await;
    assert_eq!(code, 1, "no signature header: does not hold");
    assert!(!out.contains("trailing newline"), "{out}");

    // Saved with a trailing newline (as `echo` or an editor would): the signature
    // over the exact bytes fails, and verify says it holds without the newline.
    let with_newline = dir.path().join("body-newline.json");
    std::fs::write(&with_newline, format!("{body}\n")).unwrap();
    let (code, out, _) = run(
        &[
            "verify",
            "--config",
            config,
            "--source",
            "courses",
            "--body",
            with_newline.to_str().unwrap(),
            "--header",
            &signature,
        ],
        None,
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("does not hold")
            && out.contains("HOLDS for the body without its trailing newline"),
        "{out}"
    );
    let teachify = signature.replace("loopwise-webhook-signature", "Teachify-Webhook-Signature");
    let (code, _, _) = run(
        &[
            "verify",
            "--provider",
            "loopwise",
            "--secret",
            "courses-key",
            "--body",
            file,
            "--header",
            &teachify,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn a_bad_config_stops_start_up_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\nsecret_env = \"CLASSHOOK_TEST_UNSET_VAR\"\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", file.to_str().unwrap()], None).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.toml")
            && err.contains("source[0].secret_env")
            && err.contains("CLASSHOOK_TEST_UNSET_VAR"),
        "{err}"
    );

    let (code, _, err) = run(
        &[
            "serve",
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test]
async fn export_and_mirror_rebuild_work_on_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let mut served = serve(&config).await;
    let live = &live_config(&config, served.addr);
    for event in [
        "CLASS_CREATED",
        "CLASS_CREATED",
        "ATTENDANCE_CREATED",
        "PAYMENT_CREATED",
    ] {
        let (code, out, _) = run(
            &[
                "send", "--config", live, "--source", "school", "--event", event,
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{out}");
    }
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();

    let (code, out, err) = run(&["export", "--config", live, "--events"], None).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["type"], "PAYMENT_CREATED");

    let (code, out, _) = run(
        &[
            "export", "--config", live, "--kind", "class", "--format", "csv",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    let mut rows = out.lines();
    assert_eq!(
        rows.next().unwrap(),
        "kind,source,tenant,id,deleted,version_ms,event_id,code,name,startDate,endDate,capacity,description"
    );
    assert_eq!(rows.clone().count(), 2, "{out}");
    assert!(rows.next().unwrap().starts_with("class,school,my-school,"));

    // Both platforms are configured: `payment` alone means Loopwise's typed table;
    // the DreamClass source's generic payments are one `--source` away.
    let (code, out, _) = run(
        &[
            "export", "--config", live, "--kind", "payment", "--format", "csv",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains(",trade_no,"), "{out}");
    let (code, out, _) = run(
        &[
            "export", "--config", live, "--kind", "payment", "--format", "csv", "--source",
            "school",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().ends_with(",data"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let (code, out, _) = run(
        &[
            "export",
            "--config",
            live,
            "--events",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (0, ""));

    // A kind, a subscription or a pattern that does not exist is said so, not an
    // empty answer; prefix patterns match as subscriptions do.
    let (code, _, err) = run(&["export", "--config", live, "--kind", "nosuch"], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("no entity kind \"nosuch\""), "{err}");
    let (code, _, err) = run(
        &["deliveries", "--config", live, "--subscription", "nosuch"],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no subscription named \"nosuch\""), "{err}");
    let (code, out, _) = run(&["events", "--config", live, "--type", "CLASS_*"], None).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "two CLASS_CREATED: {out}");
    let (code, _, err) = run(&["events", "--config", live, "--type", "CL*SS"], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("a `*` only at the end"), "{err}");

    let (code, out, err) = run(&["mirror", "rebuild", "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("from 4 events (4 changed an entity, 0 re-described)"),
        "{out}"
    );
    assert_eq!(err, "", "no progress bar off a terminal");
    // On a terminal (a pseudo-terminal from `script`), the bar is drawn on stderr.
    if let Ok(status) = std::process::Command::new("script")
        .arg("--version")
        .output()
        .map(|o| o.status)
        && status.success()
    {
        let command = format!(
            "{} mirror rebuild --config {live}",
            common::process::binary().display()
        );
        let typed = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .unwrap();
        let screen = String::from_utf8_lossy(&typed.stdout);
        assert!(typed.status.success(), "{screen}");
        assert!(screen.contains("rebuilding the mirror"), "{screen}");
        assert!(screen.contains("mirror rebuilt from 4 events"), "{screen}");
    }
    let (_, after, _) = run(
        &[
            "export", "--config", live, "--kind", "class", "--format", "csv",
        ],
        None,
    )
    .await;
    assert_eq!(
        after.lines().count(),
        3,
        "the rebuilt mirror has the same classes: {after}"
    );
}

#[tokio::test]
async fn deliveries_and_replay_work_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sources = format!(
        "{SOURCES}\n[delivery]\nallow_private_destinations = true\npoll_interval = \"20ms\"\n\n\
         [[subscription]]\nname = \"nowhere\"\nurl = \"http://{closed}/hook\"\nevents = [\"CLASS_*\"]\nretry_schedule = []\n"
    );
    let config = write_config(dir.path(), &sources);
    let mut served = serve(&config).await;
    let live = &live_config(&config, served.addr);
    let (code, _, _) = run(
        &[
            "send",
            "--config",
            live,
            "--source",
            "school",
            "--event",
            "CLASS_CREATED",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    let mut listed = String::new();
    for _ in 0..200 {
        listed = run(&["deliveries", "--config", live, "--dead"], None)
            .await
            .1;
        if listed.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains("nowhere") && listed.contains("dead"),
        "{listed}"
    );
    // Without --dead, replaying a subscription re-sends delivered ones too: only
    // with --all.
    let (code, _, err) = run(
        &["replay", "--config", live, "--subscription", "nowhere"],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("--dead") && err.contains("--all"), "{err}");
    // --dry-run shows what would be queued and changes nothing.
    let (code, out, err) = run(
        &[
            "replay",
            "--config",
            live,
            "--subscription",
            "nowhere",
            "--all",
            "--dry-run",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dry run: 1 deliveries of nowhere would be queued again"),
        "{out}"
    );
    assert!(out.lines().nth(1).unwrap().contains("dead"), "{out}");
    let (_, still, _) = run(&["deliveries", "--config", live, "--dead"], None).await;
    assert_eq!(still, listed, "a dry run changes nothing");
    let (code, out, err) = run(
        &[
            "replay",
            "--config",
            live,
            "--subscription",
            "nowhere",
            "--dead",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 deliveries of nowhere queued again"),
        "{out}"
    );
    served.child.start_kill().unwrap();
}

/// A config whose secrets all come from variables that are not set.
const UNSET_SECRETS: &str = r#"
[api]
tokens_env = "CLASSHOOK_TEST_UNSET_TOKENS"

[[source]]
name = "school"
provider = "dreamclass"
secret_env = "CLASSHOOK_TEST_UNSET_SECRET"

[[subscription]]
name = "crm"
url = "https://crm.example.com/hook"
events = ["*"]
secret_env = "CLASSHOOK_TEST_UNSET_CRM_SECRET"
"#;

#[tokio::test]
async fn read_only_commands_need_no_secrets_but_serving_and_sending_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), UNSET_SECRETS);
    // A data directory with a database in it, as a gateway leaves it.
    let skipped =
        classhook::config::Config::load_with(&config, classhook::config::Secrets::Skip).unwrap();
    let store = classhook::store::Store::open(
        &skipped.store_location(),
        classhook::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    store
        .sync_config_subscriptions(skipped.subscriptions.clone())
        .await
        .unwrap();
    drop(store);
    let config = config.to_str().unwrap();
    for args in [
        &["events"][..],
        &["deliveries"],
        &["export", "--events"],
        &["export", "--kind", "class"],
        &["mirror", "rebuild"],
        &["replay", "--subscription", "crm", "--dead"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--config", config]);
        let (code, out, err) = run(&args, None).await;
        assert_eq!(code, 0, "{args:?}: {out} {err}");
        assert!(!err.contains("CLASSHOOK_TEST_UNSET"), "{args:?}: {err}");
    }
    // Those that receive or send still need their secrets, and say which.
    for args in [
        &["serve"][..],
        &[
            "send",
            "--print",
            "--source",
            "school",
            "--event",
            "CLASS_CREATED",
        ],
        &["verify", "--source", "school"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--config", config]);
        let (code, _, err) = run(&args, None).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("CLASSHOOK_TEST_UNSET_"), "{args:?}: {err}");
    }
    // A configuration loaded without its secrets cannot serve.
    let refused =
        classhook::server::start(&skipped, std::sync::Arc::new(classhook::clock::SystemClock))
            .await;
    assert!(matches!(
        refused,
        Err(classhook::server::StartError::SecretsNotLoaded)
    ));
}

#[tokio::test]
async fn a_relative_data_dir_is_beside_the_config_and_a_missing_database_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("classhook.toml");
    std::fs::write(&config, format!("[server]\ndata_dir = \"data\"\n{SOURCES}")).unwrap();
    drop(
        classhook::store::Store::open(
            &classhook::store::Location::sqlite(dir.path().join("data")),
            classhook::store::StoreOptions::default(),
        )
        .await
        .unwrap(),
    );
    // The tests run in the crate's directory, not the config's.
    assert_ne!(std::env::current_dir().unwrap(), dir.path());
    let config = config.to_str().unwrap();
    let (code, out, err) = run(&["events", "--config", config], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("received"), "{out}");

    // No database there: said once, with the path looked at; nothing is created.
    let empty = dir.path().join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let other = empty.join("classhook.toml");
    std::fs::write(&other, "[server]\ndata_dir = \"nothing\"\n").unwrap();
    let other = other.to_str().unwrap();
    let expected = format!(
        "there is no database at {}",
        empty.join("nothing").join("classhook.db").display()
    );
    for args in [
        &["events"][..],
        &["deliveries"],
        &["export", "--events"],
        &["mirror", "rebuild"],
        &["replay", "--subscription", "x", "--dead"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--config", other]);
        let (code, _, err) = run(&args, None).await;
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(&expected), "{args:?}: {err}");
        assert_eq!(err.matches("no database").count(), 1, "{err}");
    }
    assert!(!empty.join("nothing").exists(), "nothing was created");
}

#[tokio::test]
async fn send_warns_about_undocumented_types_touches_one_entity_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let config = config.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "send",
            "--print",
            "--config",
            config,
            "--source",
            "courses",
            "--event",
            "CLASS_CREATED",
            "--entity-id",
            "x-1",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("not a documented loopwise event type") && err.contains("unknown_type"),
        "{err}"
    );
    assert!(out.contains("\"id\":\"x-1\""), "{out}");
    let (_, out, err) = run(
        &[
            "send",
            "--print",
            "--config",
            config,
            "--source",
            "school",
            "--event",
            "CLASS_UPDATED",
            "--entity-id",
            "77",
        ],
        None,
    )
    .await;
    assert!(!err.contains("warning"), "{err}");
    assert!(out.contains("\"data\":{\"id\":77,"), "{out}");

    // Nothing listens at the config's address (port 0 is never connectable).
    let (code, _, err) = run(
        &[
            "send",
            "--config",
            config,
            "--source",
            "school",
            "--event",
            "CLASS_CREATED",
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("is `classhook serve` running at that address?"),
        "{err}"
    );

    let missing = dir.path().join("none.toml");
    let (code, _, err) = run(
        &[
            "send",
            "--config",
            missing.to_str().unwrap(),
            "--source",
            "school",
            "--event",
            "CLASS_CREATED",
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("--config") && err.contains("CLASSHOOK_CONFIG"),
        "{err}"
    );
}

#[tokio::test]
async fn export_into_a_pipe_that_closes_early_exits_quietly_and_dates_are_times() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), SOURCES);
    // Enough events that the output outgrows the pipe's buffer.
    {
        let config = classhook::config::Config::load(&config_path).unwrap();
        let store = classhook::store::Store::open(
            &config.store_location(),
            classhook::store::StoreOptions::default(),
        )
        .await
        .unwrap();
        let source = config.sources.iter().find(|s| s.name == "school").unwrap();
        for n in 0..400 {
            let request = classhook::provider::sample::build_request(
                classhook::provider::ProviderKind::DreamClass,
                source.signing_key.as_ref(),
                "CLASS_CREATED",
                classhook::provider::sample::sample_data(
                    classhook::provider::ProviderKind::DreamClass,
                    "CLASS_CREATED",
                    n,
                ),
                "my-school",
            );
            let event = classhook::ingest::authenticate(
                source,
                &http::HeaderMap::new(),
                request.body.into(),
                1_795_478_400_000 + n as i64,
            )
            .unwrap();
            store.append(event).await.unwrap();
        }
    }
    let config = config_path.to_str().unwrap();
    let mut child = tokio::process::Command::new(common::process::binary())
        .args(["export", "--config", config, "--events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut first = String::new();
        tokio::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .await
            .unwrap();
        assert!(first.starts_with('{'), "{first}");
    } // the reader goes away, like `| head -1`
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "nothing said: {stderr}");

    // A date is a time: midnight UTC of that day.
    let (code, out, err) = run(
        &[
            "export",
            "--config",
            config,
            "--events",
            "--since",
            "2026-11-24",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 400);
}

#[tokio::test]
async fn a_missing_choice_names_both_alternatives() {
    for (args, both) in [
        (&["export"][..], ["--kind", "--events"]),
        (&["replay"][..], ["--delivery", "--subscription"]),
    ] {
        let (code, _, err) = run(args, None).await;
        assert_ne!(code, 0);
        for flag in both {
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}

#[tokio::test]
async fn a_port_in_use_is_said_once_and_leaves_nothing_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("classhook.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{}\"\ndata_dir = {:?}\n{SOURCES}",
            taken.local_addr().unwrap(),
            data.display().to_string()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", config.to_str().unwrap()], None).await;
    assert_ne!(code, 0);
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(!data.exists(), "no data directory created");
}

#[tokio::test]
async fn scripts_get_json_lines_and_every_api_only_view_has_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sources = format!(
        "{SOURCES}\n[delivery]\nallow_private_destinations = true\npoll_interval = \"20ms\"\n\n\
         [[subscription]]\nname = \"nowhere\"\nurl = \"http://{closed}/hook\"\nevents = [\"CLASS_*\"]\nretry_schedule = []\nsecret = \"whsec_c2VjcmV0LWtleS1mb3ItY2xp\"\nrate_limit = \"600/min\"\nordering = \"entity\"\n\n\
         [[subscription]]\nname = \"signed\"\nurl = \"http://{closed}/hook\"\nevents = [\"none.*\"]\nsigning = \"ed25519\"\n"
    );
    let config = write_config(dir.path(), &sources);
    let mut served = serve(&config).await;
    let live = &live_config(&config, served.addr);
    let send = |args: &'static [&'static str]| {
        let mut all = vec!["send", "--config", live];
        all.extend(args);
        async move { run(&all, None).await }
    };
    assert_eq!(
        send(&["--source", "school", "--event", "CLASS_CREATED"])
            .await
            .0,
        0
    );
    assert_eq!(
        send(&["--source", "courses", "--event", "payment.paid"])
            .await
            .0,
        0
    );
    let url = format!("http://{}/hooks/school", served.addr);
    let refused = run(
        &[
            "send",
            "--url",
            &url,
            "--provider",
            "dreamclass",
            "--secret",
            "wrong",
            "--event",
            "CLASS_CREATED",
        ],
        None,
    )
    .await;
    assert_eq!(refused.0, 1, "{refused:?}");

    // `--json`: one object per line, the API's shapes.
    let (code, out, err) = run(&["events", "--config", live, "--json"], None).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    let school = events.iter().find(|e| e["source"] == "school").unwrap();
    assert_eq!(school["type"], "CLASS_CREATED");
    let seq = school["id"].to_string();
    let uuid = school["event_id"].as_str().unwrap().to_string();

    // `event show`, by either name: the body pretty-printed, or its exact bytes.
    let (code, shown, err) = run(&["event", "show", &uuid, "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains(&format!("seq            {seq}")), "{shown}");
    assert!(shown.contains("\"type\": \"CLASS_CREATED\""), "{shown}");
    assert!(shown.to_lowercase().contains("content-type"), "{shown}");
    let raw = reqwest::get(format!("http://{}/api/v1/events/{seq}/raw", served.addr))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (code, bytes, _) = run(&["event", "show", &seq, "--raw", "--config", live], None).await;
    assert_eq!(code, 0);
    assert_eq!(
        bytes.as_bytes(),
        &raw[..],
        "--raw is the body byte for byte"
    );
    let (_, json, _) = run(&["event", "show", &seq, "--json", "--config", live], None).await;
    let detail: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(detail["event_id"], uuid.as_str());
    let (code, _, err) = run(&["event", "show", "nosuch", "--config", live], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("is not an event id"), "{err}");

    // `rejections`: the refused request, why.
    let (code, out, _) = run(&["rejections", "--config", live, "--json"], None).await;
    assert_eq!(code, 0);
    let rejection: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(rejection["reason"], "signature_invalid", "{out}");

    // `deliveries --json`, then `subscriptions`: list without secrets, pause, resume.
    let mut deliveries = String::new();
    for _ in 0..200 {
        deliveries = run(&["deliveries", "--config", live, "--json"], None)
            .await
            .1;
        if deliveries.contains("\"dead\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let delivery: serde_json::Value =
        serde_json::from_str(deliveries.lines().next().unwrap()).unwrap();
    assert_eq!(delivery["subscription"], "nowhere", "{deliveries}");
    let (_, listed, _) = run(&["subscriptions", "list", "--config", live, "--json"], None).await;
    let subscription: serde_json::Value =
        serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(subscription["name"], "nowhere");
    assert_eq!(subscription["has_secret"], true);
    assert!(!listed.contains("c2VjcmV0"), "no secret shown: {listed}");
    assert_eq!(subscription["rate_limit"], "600/min");
    assert_eq!(subscription["ordering"], "entity");
    let (code, out, err) = run(
        &[
            "subscriptions",
            "pause",
            "nowhere",
            "--reason",
            "maintenance",
            "--config",
            live,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "nowhere paused");
    let (_, table, _) = run(&["subscriptions", "list", "--config", live], None).await;
    assert!(table.contains("paused: maintenance"), "{table}");
    assert!(table.contains("rate limit 600/min"), "{table}");
    assert!(table.contains("one at a time per entity"), "{table}");
    let (code, _, _) = run(
        &["subscriptions", "resume", "nowhere", "--config", live],
        None,
    )
    .await;
    assert_eq!(code, 0);
    let (_, table, _) = run(&["subscriptions", "list", "--config", live], None).await;
    assert!(table.contains("active"), "{table}");
    let (code, _, err) = run(
        &["subscriptions", "pause", "nosuch", "--config", live],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no subscription named \"nosuch\""), "{err}");

    // `subscriptions rotate-secret`: an ed25519 config subscription gets a new key
    // pair (its public key printed and listed, the old one kept for the grace
    // period); a config HMAC secret is changed in the file; a bad grace is named.
    let listed_public = |listed: &str| -> serde_json::Value {
        listed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|s| s["name"] == "signed")
            .unwrap()
    };
    let (_, listed, _) = run(&["subscriptions", "list", "--config", live, "--json"], None).await;
    let before = listed_public(&listed)["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(before.starts_with("whpk_"), "{listed}");
    let (code, out, err) = run(
        &[
            "subscriptions",
            "rotate-secret",
            "signed",
            "--grace-period",
            "1h",
            "--config",
            live,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed: signing key rotated"), "{out}");
    assert!(!out.contains("whsk_"), "{out}");
    let (_, listed, _) = run(&["subscriptions", "list", "--config", live, "--json"], None).await;
    let after = listed_public(&listed);
    let new_key = after["public_key"].as_str().unwrap();
    assert_ne!(new_key, before);
    assert!(out.contains(&format!("public key: {new_key}")), "{out}");
    assert_eq!(after["previous_keys"][0]["public_key"], before.as_str());
    assert_eq!(after["last_rotation"]["by"], "command line");
    let (_, table, _) = run(&["subscriptions", "list", "--config", live], None).await;
    assert!(table.contains(&format!("public key {new_key}")), "{table}");
    let (code, _, err) = run(
        &[
            "subscriptions",
            "rotate-secret",
            "nowhere",
            "--config",
            live,
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("config file"), "{err}");
    let (code, _, err) = run(
        &[
            "subscriptions",
            "rotate-secret",
            "signed",
            "--grace-period",
            "9days",
            "--config",
            live,
        ],
        None,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("--grace-period") && err.contains("7 days"),
        "{err}"
    );

    // Completions for the usual shells.
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, _) = run(&["completions", shell], None).await;
        assert_eq!(code, 0, "{shell}");
        assert!(script.contains("subscriptions"), "{shell}");
    }
    served.child.start_kill().unwrap();
}

#[tokio::test]
async fn backup_copies_a_running_store_and_the_copy_restores() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SOURCES);
    let mut served = serve(&config).await;
    let live = &live_config(&config, served.addr);
    for _ in 0..3 {
        let (code, _, err) = run(
            &[
                "send",
                "--config",
                live,
                "--source",
                "school",
                "--event",
                "CLASS_CREATED",
            ],
            None,
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(&["healthcheck", "--config", live], None).await;
    assert_eq!(code, 0, "the gateway is healthy: {err}");

    // Taken while the gateway runs.
    let copy = dir.path().join("copy.db");
    if common::backend::is_postgres() {
        // The database lives on the server: the command says how to back it up there.
        let (code, _, err) = run(&["backup", copy.to_str().unwrap(), "--config", live], None).await;
        assert_ne!(code, 0);
        assert!(err.contains("pg_dump"), "{err}");
        served.child.start_kill().unwrap();
        return;
    }
    let (code, out, err) = run(&["backup", copy.to_str().unwrap(), "--config", live], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("backed up 3 events"), "{out}");
    let (code, _, err) = run(&["backup", copy.to_str().unwrap(), "--config", live], None).await;
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();
    let (code, _, _) = run(&["healthcheck", "--config", live], None).await;
    assert_eq!(code, 1, "nothing answers any more");

    // Restoring is putting the copy in place of the database.
    let restored = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(restored.path().join("data")).unwrap();
    std::fs::copy(&copy, restored.path().join("data").join("classhook.db")).unwrap();
    let config = write_config(restored.path(), SOURCES);
    let (code, out, err) = run(
        &["events", "--config", config.to_str().unwrap(), "--json"],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
}

/// `migrate` with nothing but `CLASSHOOK_DATABASE_URL`, no config file anywhere: a
/// rolling upgrade migrates before any instance's config is in place. Without the
/// URL it still asks for a config file, and it writes nothing where it runs.
#[tokio::test]
async fn migrate_needs_only_the_database_url() {
    if common::backend::skip_unless_postgres(
        "migrate_needs_only_the_database_url",
        "it migrates a PostgreSQL database named by URL alone",
    ) {
        return;
    }
    let Some(database) =
        classhook::store::postgres::testing::TestDatabase::create("migrate_by_url").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let migrate = |url: Option<&str>| {
        let mut command = tokio::process::Command::new(common::process::binary());
        command
            .arg("migrate")
            .current_dir(dir.path())
            .env_remove("CLASSHOOK_CONFIG")
            .env_remove("CLASSHOOK_DATABASE_URL")
            .kill_on_drop(true);
        if let Some(url) = url {
            command.env("CLASSHOOK_DATABASE_URL", url);
        }
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
                .await
                .expect("migrate finished within 30 s")
                .unwrap()
        }
    };
    let done = migrate(Some(database.url())).await;
    let (out, err) = (
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr),
    );
    assert!(done.status.success(), "{err}");
    assert!(out.contains("is up to date"), "{out}");
    let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0, "the tables are there");

    let refused = migrate(None).await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("no config file"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written in the working directory"
    );
}
