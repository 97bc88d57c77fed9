//! The dashboard in headless Chromium through chromedriver (WebDriver, fantoccini):
//! the scenario end to end, axe-core on every page, screenshots at desktop
//! and phone sizes into `target/ui-screenshots/`. Skipped (saying so) when Chromium,
//! chromedriver or axe-core are missing, unless `CLASSHOOK_REQUIRE_BROWSER=1`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::common::receiver::{Receiver, Reply};
use super::common::*;
use super::{TOKEN, with_tokens};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(15);
const SIZES: [(u32, u32, &str); 2] = [(1280, 800, "desktop"), (390, 844, "phone")];

fn axe_path() -> PathBuf {
    std::env::var_os("CLASSHOOK_AXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-deps/axe.min.js"))
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the browser test can run; when not, why.
fn missing() -> Option<String> {
    for (path, what) in [
        (PathBuf::from(CHROMIUM), "chromium"),
        (
            PathBuf::from(CHROMEDRIVER),
            "chromedriver (chromium-driver)",
        ),
        (axe_path(), "axe-core (scripts/ui-deps installs it)"),
    ] {
        if !path.exists() {
            return Some(format!("{what} is not at {}", path.display()));
        }
    }
    None
}

struct Driver {
    // Killed when dropped (kill_on_drop), should `stop` not have ended it.
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }

    /// Asks chromedriver to quit (it closes any browser left), then makes sure.
    async fn stop(mut self) {
        let _ = reqwest::get(format!("{}/shutdown", self.url)).await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,800", "--lang=en-US"]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

/// Runs axe-core in the page; panics on any serious or critical violation.
async fn axe(browser: &Client, axe_source: &str, page: &str) {
    browser
        .execute(&format!("{axe_source}\nreturn true;"), vec![])
        .await
        .expect("axe-core loads");
    let result = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => ({ id: v.id, impact: v.impact, help: v.help,
                              nodes: v.nodes.map(n => n.html).slice(0, 3) }))))
               .catch(e => done([{ id: 'axe-error', help: String(e) }]));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    assert_eq!(result, json!([]), "{page}: accessibility violations");
}

/// Screenshots at both sizes; at phone width nothing may scroll sideways.
async fn shoot(browser: &Client, name: &str) {
    for (width, height, label) in SIZES {
        viewport(browser, width, height).await;
        let png = browser.screenshot().await.unwrap();
        std::fs::write(screenshots().join(format!("{name}-{label}.png")), png).unwrap();
        if label == "phone" {
            let overflow = browser
                .execute(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                    vec![],
                )
                .await
                .unwrap();
            assert!(
                overflow.as_i64().unwrap_or(0) <= 0,
                "{name}: scrolls sideways by {overflow} px at {width} px"
            );
        }
    }
    viewport(browser, 1280, 800).await;
}

/// Sizes the window so that the page itself (the viewport) is `width`×`height`:
/// the window size includes the browser's frame, even headless.
async fn viewport(browser: &Client, width: u32, height: u32) {
    browser.set_window_size(width, height).await.unwrap();
    let inner = browser
        .execute("return [window.innerWidth, window.innerHeight];", vec![])
        .await
        .unwrap();
    let frame =
        |i: usize, want: u32| want + want.saturating_sub(inner[i].as_u64().unwrap_or(0) as u32);
    browser
        .set_window_size(frame(0, width), frame(1, height))
        .await
        .unwrap();
}

/// Checks, screenshots and accessibility of the page the browser is on.
async fn inspect(browser: &Client, axe_source: &str, name: &str) {
    axe(browser, axe_source, name).await;
    shoot(browser, name).await;
}

async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks what navigates to another page and waits (bounded) until that page has
/// loaded, so no later lookup finds an element of the page being left.
async fn click(browser: &Client, what: Locator<'_>) {
    browser
        .execute("window.__leaving = true;", vec![])
        .await
        .unwrap();
    browser.find(what).await.unwrap().click().await.unwrap();
    until("the next page loads", async || {
        browser
            .execute(
                "return !window.__leaving && document.readyState === 'complete';",
                vec![],
            )
            .await
            .map(|v| v == json!(true))
            .unwrap_or(false)
    })
    .await;
}

async fn count(browser: &Client, css: &str) -> i64 {
    browser
        .execute(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![Value::String(css.into())],
        )
        .await
        .unwrap()
        .as_i64()
        .unwrap()
}

/// Waits (bounded) until `check` holds in the browser.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    if let Some(why) = missing() {
        if std::env::var("CLASSHOOK_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("the browser test cannot run: {why}");
        }
        eprintln!(
            "SKIPPED the browser test: {why} (set CLASSHOOK_REQUIRE_BROWSER=1 to fail instead)"
        );
        return;
    }
    let axe_source = std::fs::read_to_string(axe_path()).unwrap();
    let receiver = Receiver::start().await;
    // The first delivery fails and, with no retries, is a dead letter at once.
    receiver.script([Reply::Status(500)]);
    let config = format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"50ms\"\n{}\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{url}\"\nevents = [\"CLASS_*\"]\nretry_schedule = []\n\
         [[subscription]]\nname = \"audit\"\nurl = \"{url}\"\nevents = [\"NO_SUCH_TYPE\"]\n",
        with_tokens(""),
        url = receiver.url()
    );
    let gw = Gateway::start_with("", &config).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    let bad = classhook::provider::sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&key("some-other-secret")),
        "CLASS_CREATED",
        json!({"id": "c-9"}),
        "my-school",
    );
    assert_eq!(gw.post("/hooks/school", &bad).await.status, 401);
    receiver.wait_for(1).await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    // A failed step must not leave Chromium running: catch it, close, then fail.
    let outcome = AssertUnwindSafe(scenario(&gw, &browser, &axe_source, &receiver))
        .catch_unwind()
        .await;
    let _ = browser.close().await;
    driver.stop().await;
    gw.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(gw: &Gateway, browser: &Client, axe_source: &str, receiver: &Receiver) {
    // Signing in: a wrong token is refused with an alert.
    browser.goto(&gw.url("/ui")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/ui/login");
    inspect(browser, axe_source, "login").await;
    let token = browser
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    token.send_keys("wrong-token").await.unwrap();
    click(browser, Locator::Css("main button[type=submit]")).await;
    let alert = text_of(browser, "[role=alert]").await;
    assert!(alert.contains("not one of"), "{alert}");
    inspect(browser, axe_source, "login-refused").await;
    let token = browser
        .find(Locator::Css("input[name=token]"))
        .await
        .unwrap();
    token.send_keys(TOKEN).await.unwrap();
    click(browser, Locator::Css("main button[type=submit]")).await;
    let heading = text_of(browser, "h1").await;
    assert_eq!(heading, "Overview");
    inspect(browser, axe_source, "overview").await;
    // The keyboard: the first Tab reaches "Skip to content", which is visible then.
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{e004}")
        .await
        .unwrap();
    let focused = browser.active_element().await.unwrap();
    assert_eq!(focused.text().await.unwrap(), "Skip to content");

    // Events arrive in the open page without reloading.
    browser.goto(&gw.url("/ui/events")).await.unwrap();
    inspect(browser, axe_source, "events").await;
    let before = count(browser, "#event-rows tr").await;
    let url = gw.url("/hooks/school");
    let (code, out, err) = process::run(
        &[
            "send",
            "--url",
            &url,
            "--provider",
            "dreamclass",
            "--secret",
            SCHOOL_SECRET,
            "--event",
            "CLASS_UPDATED",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "classhook send: {out} {err}");
    until("the sent event appears", async || {
        count(browser, "#event-rows tr").await > before
    })
    .await;
    let first = text_of(browser, "#event-rows tr:first-child").await;
    assert!(first.contains("CLASS_UPDATED"), "{first}");
    let status = text_of(browser, "#tail-status").await;
    assert!(status.contains("1 new event"), "{status}");

    // One event: its body visible, pretty-printed.
    click(browser, Locator::Css("#event-rows tr:first-child td.id a")).await;
    let body = text_of(browser, "pre.body").await;
    assert!(body.contains("\"type\": \"CLASS_UPDATED\""), "{body}");
    inspect(browser, axe_source, "event").await;

    // The mirror: kinds, a kind, one entity with its history.
    browser.goto(&gw.url("/ui/entities")).await.unwrap();
    inspect(browser, axe_source, "entities").await;
    click(browser, Locator::Css("table.list tbody tr:first-child a")).await;
    inspect(browser, axe_source, "entity-list").await;
    click(
        browser,
        Locator::Css("table.list tbody tr:first-child td.id a"),
    )
    .await;
    let history = count(browser, "table.list tbody tr").await;
    assert!(history >= 1, "the entity's history");
    inspect(browser, axe_source, "entity").await;

    // A rejection with its hint.
    browser.goto(&gw.url("/ui/rejections")).await.unwrap();
    let hint = text_of(browser, ".rejection .hint").await;
    assert!(hint.contains("neither key encoding"), "{hint}");
    inspect(browser, axe_source, "rejections").await;

    // Dead letters, from the overview's link; replay one and see it delivered.
    browser.goto(&gw.url("/ui")).await.unwrap();
    click(browser, Locator::XPath("//a[contains(., 'Dead letters')]")).await;
    assert_eq!(text_of(browser, "h1").await, "Dead letters");
    inspect(browser, axe_source, "dead-letters").await;
    click(
        browser,
        Locator::Css("table.list button[aria-label^='Replay delivery']"),
    )
    .await;
    let notice = text_of(browser, "[role=status]").await;
    assert!(notice.contains("queued again"), "{notice}");
    receiver.wait_for(2).await;
    until("the replayed delivery is delivered", async || {
        browser
            .goto(&gw.url("/ui/deliveries?state=delivered"))
            .await
            .unwrap();
        count(browser, "table.list tbody tr").await >= 1
    })
    .await;
    inspect(browser, axe_source, "deliveries").await;

    // Pause a subscription and see it paused in the API.
    browser.goto(&gw.url("/ui/subscriptions")).await.unwrap();
    inspect(browser, axe_source, "subscriptions").await;
    click(
        browser,
        Locator::Css("#sub-audit button[aria-label='Pause audit']"),
    )
    .await;
    let notice = text_of(browser, "[role=status]").await;
    assert!(notice.contains("\"audit\" is paused"), "{notice}");
    let api = gw
        .client
        .get(gw.url("/api/v1/subscriptions/audit"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(api["paused"], true, "{api}");
    inspect(browser, axe_source, "subscriptions-paused").await;
    click(
        browser,
        Locator::Css("#sub-crm button[aria-label='Send test event to crm']"),
    )
    .await;
    let notice = text_of(browser, "[role=status]").await;
    assert!(notice.contains("the receiver answered 200"), "{notice}");

    // A POST from the page itself, with the cookie but without the CSRF token.
    let status = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/subscriptions/audit/resume', { method: 'POST',
                   body: new URLSearchParams({ x: '1' }) })
               .then(r => done(r.status)).catch(e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert!(
        gw.store
            .get_subscription("audit")
            .await
            .unwrap()
            .unwrap()
            .paused
    );

    // Signing out ends the session.
    click(browser, Locator::Css("form.signout button")).await;
    browser.goto(&gw.url("/ui")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/ui/login");
}
