//! The web dashboard: its security rules over plain HTTP (sessions, CSRF, headers),
//! every page with real data, and (in `ui/browser.rs`) a scenario in headless
//! Chromium with axe-core checks and screenshots.

#[path = "ui/browser.rs"]
mod browser;
mod common;

use classhook::provider::sample;
use common::receiver::eventually_async;
use common::*;
use reqwest::redirect::Policy;
use serde_json::json;

pub const TOKEN: &str = "ui-test-token-0123456789";

pub fn with_tokens(extra: &str) -> String {
    format!("[api]\ntokens = [\"{TOKEN}\"]\n{extra}\n{SOURCES}")
}

/// A client that shows redirects instead of following them, and no cookie jar: the
/// tests carry the cookie themselves.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The session cookie this answer sets: (id, whole Set-Cookie line).
    fn session(&self) -> Option<(String, String)> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("classhook_session="))
            .map(|line| {
                let id = line["classhook_session=".len()..]
                    .split(';')
                    .next()
                    .unwrap()
                    .to_string();
                (id, line.to_string())
            })
    }

    /// The value of the first `csrf_token` field.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf_token\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.text[at + "name=\"csrf_token\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

async fn get(gw: &Gateway, path: &str, cookie: Option<&str>) -> Page {
    let mut request = client().get(gw.url(path));
    if let Some(id) = cookie {
        request = request.header("cookie", format!("classhook_session={id}"));
    }
    answer(request.send().await.unwrap()).await
}

async fn post(gw: &Gateway, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    let mut request = client().post(gw.url(path)).form(form);
    if let Some(id) = cookie {
        request = request.header("cookie", format!("classhook_session={id}"));
    }
    answer(request.send().await.unwrap()).await
}

async fn answer(response: reqwest::Response) -> Page {
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

/// Signs in through the form; returns the session id and its CSRF token.
async fn sign_in(gw: &Gateway) -> (String, String) {
    let login = get(gw, "/ui/login", None).await;
    let (anonymous, _) = login.session().unwrap();
    let done = post(
        gw,
        "/ui/login",
        Some(&anonymous),
        &[("csrf_token", &login.csrf()), ("token", TOKEN)],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.text);
    let (id, _) = done.session().expect("a new session on sign-in");
    assert_ne!(id, anonymous, "the session id changes on sign-in");
    let overview = get(gw, "/ui", Some(&id)).await;
    assert_eq!(overview.status, 200);
    (id, overview.csrf())
}

fn assert_secure_headers(page: &Page, what: &str) {
    let header = |name: &str| {
        page.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_string()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
    assert_eq!(header("referrer-policy"), "same-origin", "{what}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
}

#[tokio::test]
async fn without_a_session_the_dashboard_sends_you_to_sign_in() {
    let gw = Gateway::start_with("", &with_tokens("")).await;
    for path in ["/ui", "/ui/events", "/ui/subscriptions", "/ui/events/1"] {
        let page = get(&gw, path, None).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location(), "/ui/login", "{path}");
        assert_secure_headers(&page, path);
    }
    let page = get(&gw, "/ui/", None).await;
    assert_eq!((page.status, page.location()), (308, "/ui"));
    let page = get(&gw, "/ui/no-such-page", None).await;
    assert_eq!(page.status, 303, "signed out: to the login first");
    let page = get(&gw, "/ui", Some("made-up-session")).await;
    assert_eq!(page.location(), "/ui/login");
    // A POST without a session is refused, not performed.
    let page = post(&gw, "/ui/subscriptions/x/pause", None, &[]).await;
    assert_eq!(page.status, 403);
    gw.stop().await;
}

#[tokio::test]
async fn the_login_form_is_labelled_and_a_wrong_token_stays_there_with_an_alert() {
    let gw = Gateway::start_with("", &with_tokens("")).await;
    let login = get(&gw, "/ui/login", None).await;
    assert_eq!(login.status, 200);
    assert_secure_headers(&login, "login");
    assert!(
        login
            .text
            .contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#)
    );
    assert!(login.text.contains(r#"<label for="token">"#));
    assert!(login.text.contains(r#"id="token" name="token""#));
    assert!(
        login
            .text
            .contains(r#"<button type="submit">Sign in</button>"#)
    );
    let (anonymous, set_cookie) = login.session().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "not configured as HTTPS");

    let wrong = "not-the-token-42";
    let refused = post(
        &gw,
        "/ui/login",
        Some(&anonymous),
        &[("csrf_token", &login.csrf()), ("token", wrong)],
    )
    .await;
    assert_eq!(refused.status, 401);
    assert!(refused.text.contains(r#"role="alert""#), "{}", refused.text);
    assert!(!refused.text.contains(wrong), "the token is never echoed");
    assert!(refused.session().is_none(), "no session for a wrong token");

    // The login form needs its CSRF token too.
    let no_csrf = post(&gw, "/ui/login", Some(&anonymous), &[("token", TOKEN)]).await;
    assert_eq!(no_csrf.status, 403);

    let (id, _) = sign_in(&gw).await;
    let overview = get(&gw, "/ui", Some(&id)).await;
    assert!(
        !overview.text.contains(TOKEN),
        "the token never appears in a page"
    );
    assert!(overview.text.contains("Sign out"));
    gw.stop().await;
}

#[tokio::test]
async fn every_post_needs_the_sessions_csrf_token() {
    let gw = Gateway::start_with("", &with_tokens("")).await;
    let (id, csrf) = sign_in(&gw).await;
    for form in [vec![], vec![("csrf_token", "wrong")]] {
        let page = post(&gw, "/ui/subscriptions/x/pause", Some(&id), &form).await;
        assert_eq!(page.status, 403, "{form:?}");
        assert_secure_headers(&page, "403");
    }
    // Another session's token is not this session's.
    let (_, other_csrf) = sign_in(&gw).await;
    assert_ne!(csrf, other_csrf);
    let page = post(
        &gw,
        "/ui/logout",
        Some(&id),
        &[("csrf_token", other_csrf.as_str())],
    )
    .await;
    assert_eq!(page.status, 403);

    let out = post(&gw, "/ui/logout", Some(&id), &[("csrf_token", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), "/ui/login");
    assert!(out.session().unwrap().1.contains("Max-Age=0"));
    assert_eq!(get(&gw, "/ui", Some(&id)).await.location(), "/ui/login");
    gw.stop().await;
}

#[tokio::test]
async fn behind_https_the_cookie_is_secure() {
    let gw = Gateway::start_with("https = true", &with_tokens("")).await;
    let (_, set_cookie) = get(&gw, "/ui/login", None).await.session().unwrap();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    gw.stop().await;
}

#[tokio::test]
async fn without_tokens_the_dashboard_is_open_but_posts_still_need_csrf() {
    let gw = Gateway::start().await;
    let page = get(&gw, "/ui", None).await;
    assert_eq!(page.status, 200);
    assert!(!page.text.contains("Sign out"));
    let (id, _) = page.session().expect("a session for the CSRF token");
    let refused = post(&gw, "/ui/subscriptions/x/pause", Some(&id), &[]).await;
    assert_eq!(refused.status, 403);
    let login = get(&gw, "/ui/login", Some(&id)).await;
    assert_eq!(login.location(), "/ui");
    let slash = get(&gw, "/ui/events/", Some(&id)).await;
    assert_eq!((slash.status, slash.location()), (308, "/ui/events"));
    let missing = get(&gw, "/ui/no-such-page", Some(&id)).await;
    assert_eq!(missing.status, 404);
    assert!(missing.text.contains("role=\"alert\""));
    gw.stop().await;
}

#[tokio::test]
async fn assets_are_compiled_in_and_cached_for_long() {
    let gw = Gateway::start().await;
    let page = get(&gw, "/ui", None).await;
    let css = page
        .text
        .split('"')
        .find(|s| s.starts_with("/ui/assets/style-"))
        .unwrap()
        .to_string();
    let asset = get(&gw, &css, None).await;
    assert_eq!(asset.status, 200);
    assert!(
        asset.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(
        asset.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    assert_secure_headers(&asset, "asset");
    assert_eq!(get(&gw, "/ui/assets/nope.js", None).await.status, 404);
    assert_eq!(page.headers["cache-control"], "no-store");
    gw.stop().await;
}

#[tokio::test]
async fn every_page_shows_real_data() {
    let receiver = receiver::Receiver::start().await;
    let config = format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"50ms\"\n{}\n[[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\nretry_schedule = []\nrate_limit = \"600/min\"\n",
        with_tokens(""),
        receiver.url()
    );
    receiver.script([receiver::Reply::Status(500)]);
    let gw = Gateway::start_with("", &config).await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    let uuid = id_of(&event);
    assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    // A DreamClass signature made with the base64-decoded key, sent to a utf8 source.
    let b64 = sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&key("other-encoding")),
        "CLASS_CREATED",
        json!({"id": "c-1"}),
        "my-school",
    );
    let _ = gw.post("/hooks/school", &b64).await;
    let _ = gw.post("/hooks/nowhere", &event).await;
    // Signed with the configured base64 secret's text as UTF-8 bytes: the other encoding.
    let utf8 = sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&key("a2V5LWJ5dGVzLWZvci10ZXN0cw==")),
        "CLASS_CREATED",
        json!({"id": "c-2"}),
        "my-school",
    );
    assert_eq!(gw.post("/hooks/school-b64", &utf8).await.status, 401);
    // No Basic Auth where the source asks for it.
    assert_eq!(gw.post("/hooks/school-auth", &event).await.status, 401);
    rejections_at_least(&gw.store, 4).await;
    receiver.wait_for(1).await;
    let (id, csrf) = sign_in(&gw).await;

    let overview = get(&gw, "/ui", Some(&id)).await;
    assert!(overview.text.contains("<svg"), "a chart");
    assert!(overview.text.contains("Dead letters"));
    assert!(overview.text.contains("unknown_source"));

    let events = get(&gw, "/ui/events?source=school", Some(&id)).await;
    assert!(events.text.contains(&uuid), "the platform id in full");
    assert!(
        events
            .text
            .contains("data-tail=\"/ui/events/tail?source=school&#38;after=")
    );
    let seq = gw
        .store
        .find_event("school", &format!("id:{uuid}"))
        .await
        .unwrap()
        .unwrap()
        .summary
        .seq;

    // Another event's delivery, which the first event's page must not list.
    let other = dreamclass_sample("CLASS_UPDATED", 2);
    assert_eq!(gw.post("/hooks/school", &other).await.status, 200);
    let mut deliveries = Vec::new();
    eventually_async("both events have a delivery", async || {
        deliveries = gw
            .store
            .list_deliveries(classhook::store::DeliveryFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        deliveries.len() == 2
    })
    .await;
    let one = get(&gw, &format!("/ui/events/{seq}"), Some(&id)).await;
    for d in &deliveries {
        assert_eq!(
            one.text.contains(&d.webhook_id),
            d.event_seq == seq,
            "delivery {} of event {} on the page of event {seq}",
            d.id,
            d.event_seq
        );
    }
    assert_eq!(one.status, 200);
    assert!(one.text.contains("CLASS_CREATED"));
    assert!(
        one.text.contains("&#34;type&#34;: &#34;CLASS_CREATED&#34;"),
        "pretty-printed body"
    );
    assert!(one.text.contains("crm"), "its delivery");
    assert!(
        one.text.contains("href=\"/ui/entities/class/"),
        "a link to its entity"
    );
    let raw = get(&gw, &format!("/ui/events/{seq}/raw"), Some(&id)).await;
    assert_eq!(
        raw.text.as_bytes(),
        event.body.as_slice(),
        "the exact bytes"
    );
    assert_eq!(
        get(&gw, &format!("/ui/events/{uuid}"), Some(&id))
            .await
            .status,
        200
    );
    assert_eq!(get(&gw, "/ui/events/999999", Some(&id)).await.status, 404);

    let kinds = get(&gw, "/ui/entities", Some(&id)).await;
    assert!(
        kinds
            .text
            .contains("href=\"/ui/entities/class?platform=dreamclass\""),
        "{}",
        kinds.text
    );
    let classes = get(&gw, "/ui/entities/class?platform=dreamclass", Some(&id)).await;
    assert_eq!(classes.status, 200);
    assert!(
        classes
            .text
            .contains("<label for=\"e-f-code\">code</label>"),
        "the kind's filters"
    );
    let class_id = gw
        .store
        .get_event(seq)
        .await
        .unwrap()
        .unwrap()
        .summary
        .entity_id
        .unwrap();
    assert!(classes.text.contains(&class_id));
    let found = get(
        &gw,
        &format!("/ui/entities/class?platform=dreamclass&id={class_id}"),
        Some(&id),
    )
    .await;
    assert!(
        found
            .text
            .contains(&format!("/ui/entities/class/{class_id}?source=school"))
    );
    let entity = get(
        &gw,
        &format!("/ui/entities/class/{class_id}?source=school&tenant=my-school"),
        Some(&id),
    )
    .await;
    assert_eq!(entity.status, 200, "{}", entity.text);
    assert!(
        entity.text.contains(&format!("href=\"/ui/events/{seq}\"")),
        "its history"
    );
    assert_eq!(
        get(
            &gw,
            "/ui/entities/class?platform=dreamclass&classId=x",
            Some(&id)
        )
        .await
        .status,
        200
    );

    let rejections = get(&gw, "/ui/rejections", Some(&id)).await;
    assert!(rejections.text.contains("Hint:"));
    assert!(rejections.text.contains("No [[source]] has this name"));
    assert!(
        rejections.text.contains("holds with the other DreamClass key encoding: set secret_encoding = &#34;utf8&#34; on source &#34;school-b64&#34;"),
        "{}",
        rejections.text
    );
    assert!(rejections.text.contains("holds under neither key encoding"));
    assert!(rejections.text.contains("Basic Auth was missing or wrong"));
    assert!(!rejections.text.contains("pa55word"), "no secret in a page");

    eventually_async("the delivery is dead", async || {
        gw.store
            .delivery_queue()
            .await
            .unwrap()
            .iter()
            .any(|q| q.dead == 1)
    })
    .await;
    let subs = get(&gw, "/ui/subscriptions", Some(&id)).await;
    assert!(subs.text.contains("crm") && subs.text.contains(">Pause</button>"));
    assert!(
        subs.text.contains("<dt>Rate limit</dt><dd>600/min</dd>"),
        "{}",
        subs.text
    );
    let dead = get(&gw, "/ui/deliveries?state=dead", Some(&id)).await;
    assert!(dead.text.contains("<h1>Dead letters</h1>"));
    assert!(dead.text.contains("Replay all dead letters"));

    let paused = post(
        &gw,
        "/ui/subscriptions/crm/pause",
        Some(&id),
        &[("csrf_token", &csrf)],
    )
    .await;
    assert_eq!(paused.status, 303);
    assert!(
        gw.store
            .get_subscription("crm")
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    let replayed = post(
        &gw,
        "/ui/subscriptions/crm/replay-dead",
        Some(&id),
        &[("csrf_token", &csrf)],
    )
    .await;
    assert_eq!(
        replayed.location(),
        "/ui/deliveries?subscription=crm&replayed=1"
    );
    let shown = get(&gw, replayed.location(), Some(&id)).await;
    assert!(
        shown
            .text
            .contains("1 dead letter of &#34;crm&#34; queued again."),
        "{}",
        shown.text
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_live_tail_streams_new_rows_and_ends_when_the_gateway_stops() {
    let gw = Gateway::start().await;
    let (id, _) = get(&gw, "/ui", None).await.session().unwrap();
    let mut tail = client()
        .get(gw.url("/ui/events/tail?after=0"))
        .header("cookie", format!("classhook_session={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    assert!(
        tail.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let event = dreamclass_sample("CLASS_CREATED", 7);
    let uuid = id_of(&event);
    assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    let mut seen = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !seen.contains(&uuid) {
            let chunk = tail.chunk().await.unwrap().expect("the tail stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "the new event reached the tail: {seen}");
    assert!(seen.contains("event: row"));
    // An open tail does not hold the shutdown for its grace (10 s).
    let started = std::time::Instant::now();
    gw.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The subscriptions page rotates signing keys through a form with the session's
/// CSRF token: an ed25519 key pair (new public key shown), an API HMAC secret
/// (generated, shown in that answer only); a config HMAC secret is not rotatable.
#[tokio::test]
async fn signing_keys_rotate_from_the_subscriptions_page() {
    let receiver = receiver::Receiver::start().await;
    let config = format!(
        "[delivery]\nallow_private_destinations = true\n{tokens}\n\
         [[subscription]]\nname = \"signed\"\nurl = \"{url}\"\nevents = [\"X\"]\nsigning = \"ed25519\"\n\n\
         [[subscription]]\nname = \"filed\"\nurl = \"{url}\"\nevents = [\"X\"]\nsecret = \"file-secret\"\n",
        tokens = with_tokens(""),
        url = receiver.url()
    );
    let gw = Gateway::start_with("", &config).await;
    let created = gw
        .client
        .post(gw.url("/api/v1/subscriptions"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "crm", "url": receiver.url(), "events": ["X"], "secret": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (id, csrf) = sign_in(&gw).await;
    let stored = |name: &'static str| {
        let store = gw.store.clone();
        async move { store.get_subscription(name).await.unwrap().unwrap() }
    };

    let page = get(&gw, "/ui/subscriptions", Some(&id)).await;
    let before = stored("signed").await.public_key.unwrap();
    assert!(page.text.contains(&before), "the public key is shown");
    assert!(
        page.text
            .contains("aria-label=\"Rotate the signing key of signed\"")
    );
    assert!(
        page.text
            .contains("aria-label=\"Rotate the signing key of crm\"")
    );
    assert!(
        !page
            .text
            .contains("aria-label=\"Rotate the signing key of filed\""),
        "a config HMAC secret is changed in the file"
    );

    let refused = post(
        &gw,
        "/ui/subscriptions/signed/rotate-secret",
        Some(&id),
        &[("grace_period", "1h")],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(stored("signed").await.public_key.unwrap(), before);

    let done = post(
        &gw,
        "/ui/subscriptions/signed/rotate-secret",
        Some(&id),
        &[("csrf_token", &csrf), ("grace_period", "2h")],
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let after = stored("signed").await;
    let new_key = after.public_key.clone().unwrap();
    assert_ne!(new_key, before);
    assert!(
        done.text.contains(&format!("New public key: {new_key}")),
        "{}",
        done.text
    );
    assert!(done.text.contains("Replaced keys keep signing until"));
    assert_eq!(after.rotated.unwrap().by, "dashboard");
    assert_eq!(after.previous_keys.len(), 1);

    let done = post(
        &gw,
        "/ui/subscriptions/crm/rotate-secret",
        Some(&id),
        &[("csrf_token", &csrf), ("grace_period", "0s")],
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text);
    let secret = stored("crm").await.spec.secret.unwrap();
    assert!(secret.expose().starts_with("whsec_"));
    assert!(
        done.text.contains("New secret, shown only now"),
        "{}",
        done.text
    );
    assert!(done.text.contains(secret.expose()), "shown once");
    let later = get(&gw, "/ui/subscriptions", Some(&id)).await;
    assert!(!later.text.contains(secret.expose()), "and never again");
    assert!(later.text.contains("by dashboard"));

    for (name, grace, status) in [("filed", "1h", 409), ("signed", "9days", 400)] {
        let page = post(
            &gw,
            &format!("/ui/subscriptions/{name}/rotate-secret"),
            Some(&id),
            &[("csrf_token", &csrf), ("grace_period", grace)],
        )
        .await;
        assert_eq!(page.status, status, "{name}: {}", page.text);
    }
    gw.stop().await;
}
