//! Proxy environment variables never carry deliveries: with them pointing at a
//! recording proxy, requests go directly to their destination (or are refused by the
//! guard), and the proxy receives nothing. Alone in its own test binary, because the
//! environment is shared by every thread of a process.

mod common;

use std::time::Duration;

use classhook::deliver::schedule::Outcome;
use classhook::deliver::send::{Outgoing, Sender};
use common::proxy::RecordingProxy;
use common::receiver::Receiver;

const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

fn request() -> Outgoing {
    Outgoing {
        headers: vec![("content-type".into(), "application/json".into())],
        body: b"{}".to_vec(),
    }
}

#[tokio::test]
async fn proxy_environment_variables_are_ignored() {
    let proxy = RecordingProxy::start().await;
    for var in PROXY_VARS {
        // SAFETY: the only test of this binary; set before any client is built, and
        // nothing else reads the environment concurrently.
        unsafe { std::env::set_var(var, proxy.url()) };
    }
    for var in ["NO_PROXY", "no_proxy"] {
        // SAFETY: as above.
        unsafe { std::env::remove_var(var) };
    }
    let receiver = Receiver::start().await;

    // Private destinations allowed: the request goes straight to the receiver.
    let sent = Sender::new(true)
        .send(&receiver.url(), request(), None, Duration::from_secs(5))
        .await;
    assert!(
        matches!(sent.outcome, Outcome::Success { status: 200 }),
        "{sent:?}"
    );
    assert_eq!(receiver.received().len(), 1);

    // Guarded: loopback by name or by address is refused, not handed to the proxy.
    let guarded = Sender::new(false);
    for url in [
        format!("http://localhost:{}/webhook", receiver.addr.port()),
        format!("http://localhost.:{}/webhook", receiver.addr.port()),
        receiver.url(),
        "http://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let refused = guarded
            .send(&url, request(), None, Duration::from_secs(5))
            .await;
        assert!(
            matches!(refused.outcome, Outcome::Failed { status: None, .. }),
            "{url}: {refused:?}"
        );
    }
    assert_eq!(receiver.received().len(), 1);
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}
