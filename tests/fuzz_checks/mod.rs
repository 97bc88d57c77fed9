//! The properties the fuzz targets check, in one place: `fuzz/fuzz_targets/*.rs`
//! include this file (`#[path]`) and call one function per target with the fuzzer's
//! bytes, and `tests/fuzz_regressions.rs` calls the same functions with every file
//! of `tests/fuzz-corpus/<target>/`. A violated property panics.
//!
//! Only the library's public API is used, so the checks see what ingest, the config
//! loader and the writer see; nothing fuzz-specific is compiled into the library.

#![allow(dead_code)] // each including crate uses its own subset

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use classhook::config::{Config, SecretEncoding};
use classhook::crypto;
use classhook::deliver::subscription::{SubscriptionSpec, pattern_matches};
use classhook::provider::{Described, Envelope, EnvelopeError, ProviderKind, dreamclass, loopwise};
use classhook::secret::{KeyBytes, Secret};
use http::{HeaderMap, HeaderValue};

/// A target's check of one input.
pub type Check = fn(&[u8]);

/// Every target: its name (the folder under `tests/fuzz-corpus/` and the fuzz
/// target's name) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("dreamclass_envelope", dreamclass_envelope),
    ("loopwise_envelope", loopwise_envelope),
    ("signatures", signatures),
    ("config", config),
    ("patterns", patterns),
];

const KEY: &[u8] = b"fuzz-source-secret";

/// `data` is a request body for a DreamClass source.
pub fn dreamclass_envelope(data: &[u8]) {
    let Some(envelope) = envelope_checks(ProviderKind::DreamClass, data) else {
        return;
    };
    let Envelope::DreamClass(e) = &envelope else {
        panic!("a DreamClass body parsed as {envelope:?}");
    };
    let key = KeyBytes::new(KEY.to_vec());
    let none = HeaderMap::new();
    // The signature verifies exactly when it is the base64 HMAC of the id.
    let expected = crypto::hmac_sha256(KEY, e.id.as_bytes());
    let given_is_right = BASE64.decode(e.signature.trim()).ok().as_deref() == Some(&expected[..]);
    assert_eq!(envelope.verify(&key, &none, data).is_ok(), given_is_right);
    // Signed as DreamClass signs, it verifies, whatever else the body says.
    let mut signed = e.clone();
    signed.signature = dreamclass::sign(KEY, &e.id);
    let signed = Envelope::DreamClass(signed);
    assert!(signed.verify(&key, &none, data).is_ok());
    assert!(
        signed
            .verify(&KeyBytes::new(b"another key".to_vec()), &none, data)
            .is_err()
    );
}

/// `data` is `header NUL body` (the header value of `Loopwise-Webhook-Signature`,
/// or of `Teachify-Webhook-Signature` when it starts with `T:`), or only a body.
pub fn loopwise_envelope(data: &[u8]) {
    let (header, body) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (Some(&data[..nul]), &data[nul + 1..]),
        None => (None, data),
    };
    let Some(envelope) = envelope_checks(ProviderKind::Loopwise, body) else {
        return;
    };
    let key = KeyBytes::new(KEY.to_vec());
    let expected = crypto::hmac_sha256(KEY, body);
    let mut headers = HeaderMap::new();
    let mut given_is_right = false;
    if let Some(header) = header {
        let (name, value) = match header.strip_prefix(b"T:") {
            Some(rest) => (loopwise::LEGACY_SIGNATURE_HEADER, rest),
            None => (loopwise::SIGNATURE_HEADER, header),
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            given_is_right = value
                .to_str()
                .ok()
                .and_then(|text| hex::decode(text.trim()).ok())
                .as_deref()
                == Some(&expected[..]);
            headers.insert(name, value);
        }
    }
    assert_eq!(
        envelope.verify(&key, &headers, body).is_ok(),
        given_is_right
    );
    // Signed as Loopwise signs, under either header name, it verifies.
    for name in [
        loopwise::SIGNATURE_HEADER,
        loopwise::LEGACY_SIGNATURE_HEADER,
    ] {
        let mut headers = HeaderMap::new();
        let value = loopwise::sign(KEY, body);
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
        assert!(envelope.verify(&key, &headers, body).is_ok());
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(envelope.verify(&key, &headers, &tampered).is_err());
    }
}

/// What both envelope targets check: parsing fails as JSON exactly when serde_json
/// refuses the body (after a leading UTF-8 byte order mark, which ingest ignores as
/// RFC 8259 allows); describing never panics and says the same every time; the body
/// written out again (other spacing, keys reordered) is the same event, with the
/// same dedupe key.
fn envelope_checks(kind: ProviderKind, body: &[u8]) -> Option<Envelope> {
    let parsed = Envelope::parse(kind, body);
    let value = serde_json::from_slice::<serde_json::Value>(classhook::canonical::json_text(body));
    assert_eq!(
        matches!(parsed, Err(EnvelopeError::NotJson(_))),
        value.is_err(),
        "the envelope parser and serde_json disagree on whether this is JSON: {parsed:?}"
    );
    let envelope = parsed.ok()?;
    let described = envelope.describe();
    assert_eq!(
        format!("{described:?}"),
        format!("{:?}", envelope.describe())
    );
    assert_eq!(described.event_type, envelope.event_type());
    assert_eq!(described.tenant.as_deref(), envelope.tenant());
    match kind {
        ProviderKind::DreamClass => assert!(described.dedupe_key.starts_with("id:")),
        ProviderKind::Loopwise => {
            assert!(described.dedupe_key.starts_with("sha256:"));
            assert_eq!(described.dedupe_key.len(), "sha256:".len() + 64);
        }
    }
    if let Some(reason) = &described.status_reason {
        // Reasons quote what a sender sent only shortened.
        assert!(reason.len() < 4096, "a reason of {} bytes", reason.len());
    }

    // The same value written out again: pretty-printed, it is the same event; with
    // its keys in reverse order too, it has the same identity (which field a schema
    // complains about first, and the generic mirror's key order, may differ).
    let value = value.expect("parsed above");
    let repeated =
        matches!(described.status_reason.as_deref(), Some(r) if r.contains("more than once"));
    for (rewritten, same_order) in [
        (serde_json::to_vec_pretty(&value).unwrap(), true),
        (serde_json::to_vec(&reversed(value.clone())).unwrap(), false),
    ] {
        // With serde_json's `float_roundtrip`, every number written reads back as
        // itself, so a rewrite is always the same value (the fuzzer once found a
        // 60-digit integer that did not: tests/fuzz-corpus/README.md).
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&rewritten)
                .ok()
                .as_ref(),
            Some(&value),
            "a rewritten body reads back as another value"
        );
        let reparsed = Envelope::parse(kind, &rewritten)
            .unwrap_or_else(|e| panic!("the rewritten body is refused: {e}"));
        let again = reparsed.describe();
        assert_eq!(described.dedupe_key, again.dedupe_key);
        assert_eq!(identity(&described), identity(&again));
        if !repeated {
            assert_eq!(described.status, again.status);
        }
        if same_order && !repeated {
            // Without repeated keys (which a rewrite drops) it is the same event.
            assert_eq!(format!("{described:?}"), format!("{again:?}"));
        }
    }
    Some(envelope)
}

fn identity(d: &Described) -> String {
    format!(
        "{:?}",
        (
            &d.tenant,
            &d.event_type,
            &d.event_id,
            &d.entity,
            d.version_ms
        )
    )
}

fn reversed(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .rev()
                .map(|(k, v)| (k, reversed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(reversed).collect()),
        other => other,
    }
}

#[derive(Debug, Arbitrary)]
pub struct SignatureInput {
    pub key: Vec<u8>,
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
    /// A DreamClass event id: a UUID written in one of its accepted forms.
    pub uuid: [u8; 16],
    pub uuid_form: u8,
    /// A configured secret, decoded as base64 or used as UTF-8.
    pub secret: String,
    pub base64: bool,
    pub loopwise: bool,
}

/// The HMAC checks with arbitrary key, message and signature, at every level:
/// `crypto`, each platform's verification, and the key decoding of a secret.
pub fn signatures(data: &[u8]) {
    if let Ok(input) = SignatureInput::arbitrary_take_rest(Unstructured::new(data)) {
        check_signatures(&input);
    }
}

pub fn check_signatures(input: &SignatureInput) {
    let SignatureInput {
        key,
        message,
        signature,
        ..
    } = input;
    let mac = crypto::hmac_sha256(key, message);
    assert_eq!(
        crypto::hmac_sha256_matches(key, message, signature),
        signature[..] == mac[..]
    );
    assert!(crypto::hmac_sha256_matches(key, message, &mac));
    let mut flipped = mac;
    flipped[message.len() % 32] ^= 1 << (key.len() % 8);
    assert!(!crypto::hmac_sha256_matches(key, message, &flipped));
    assert!(!crypto::hmac_sha256_matches(key, message, &mac[..31]));
    assert_eq!(crypto::secrets_equal(key, signature), key == signature);

    // DreamClass: base64 of the HMAC of the id, in the body.
    let uuid = uuid::Uuid::from_bytes(input.uuid);
    let id = match input.uuid_form % 5 {
        0 => uuid.hyphenated().to_string(),
        1 => uuid.simple().to_string(),
        2 => uuid.braced().to_string(),
        3 => uuid.urn().to_string(),
        _ => uuid.hyphenated().to_string().to_uppercase(),
    };
    let given = String::from_utf8_lossy(signature);
    let body = serde_json::json!({
        "id": id, "type": "CLASS_UPDATED", "tenant": "t", "signature": given,
        "timestamp": 1, "data": {}
    });
    let body = serde_json::to_vec(&body).unwrap();
    let envelope = Envelope::parse(ProviderKind::DreamClass, &body).unwrap();
    let key_bytes = KeyBytes::new(key.clone());
    let none = HeaderMap::new();
    let expected = crypto::hmac_sha256(key, id.as_bytes());
    assert_eq!(
        envelope.verify(&key_bytes, &none, &body).is_ok(),
        BASE64.decode(given.trim()).ok().as_deref() == Some(&expected[..])
    );
    let Envelope::DreamClass(mut signed) = envelope else {
        unreachable!()
    };
    signed.signature = dreamclass::sign(key, &id);
    assert!(
        Envelope::DreamClass(signed)
            .verify(&key_bytes, &none, &body)
            .is_ok()
    );

    // Loopwise: hex of the HMAC of the exact body, in a header.
    let envelope = Envelope::parse(ProviderKind::Loopwise, br#"{"type":"x","data":{}}"#).unwrap();
    let mut headers = HeaderMap::new();
    let mut right = false;
    if let Ok(value) = HeaderValue::from_bytes(signature) {
        right = value
            .to_str()
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .as_deref()
            == Some(&mac[..]);
        headers.insert(loopwise::SIGNATURE_HEADER, value);
    }
    assert_eq!(
        envelope.verify(&key_bytes, &headers, message).is_ok(),
        right
    );
    headers.insert(
        loopwise::SIGNATURE_HEADER,
        HeaderValue::from_str(&loopwise::sign(key, message)).unwrap(),
    );
    assert!(envelope.verify(&key_bytes, &headers, message).is_ok());

    // A configured secret becomes key bytes; an error never shows it.
    let provider = if input.loopwise {
        ProviderKind::Loopwise
    } else {
        ProviderKind::DreamClass
    };
    let encoding = if input.base64 {
        SecretEncoding::Base64
    } else {
        SecretEncoding::Utf8
    };
    let secret = Secret::new(input.secret.clone());
    match classhook::config::signing_key(provider, Some(&secret), encoding) {
        Ok(Some(bytes)) => {
            let want = match encoding {
                SecretEncoding::Utf8 => input.secret.as_bytes().to_vec(),
                SecretEncoding::Base64 => BASE64.decode(input.secret.trim()).unwrap(),
            };
            assert_eq!(bytes.expose(), &want[..]);
        }
        Ok(None) => panic!("a secret gave no key"),
        Err(message) => {
            if input.secret.trim().len() >= 8 {
                assert!(!message.contains(input.secret.trim()), "{message}");
            }
        }
    }
}

/// Markers around every secret the config check places, so that any echo of one in
/// an error message is found, however the message quotes or escapes it.
const SECRET_START: &str = "Qz7sEcReT";
const SECRET_END: &str = "TeRcEs7zQ";
/// Digits that stand for a secret given as a number (a type error).
const SECRET_NUMBER: u64 = 987_650_123_417;

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Form {
    /// `"…"` with escapes.
    Basic,
    /// `'…'` (what cannot be written literally is dropped).
    Literal,
    /// `"""…"""`.
    Multiline,
    /// Unquoted: a syntax error.
    Bare,
    /// A number: a type error.
    Number,
    /// `["…"]`
    InArray,
    /// `{ value = "…" }`
    InTable,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Place {
    SourceSecret(Form, bool),
    SourcePassword(Form),
    BasicAuth(Form),
    ApiTokens(Form),
    DeliveryProxy(Form),
    SubscriptionSecret(Form),
    SubscriptionPassword(Form),
    /// `CLASSHOOK_SOURCE_S_SECRET` (base64 when the bool is true).
    EnvSourceSecret(bool),
    EnvSourcePassword,
    EnvApiTokens,
    EnvProxy,
    /// `secret_env = "VAR"` with the secret in VAR (base64 when true).
    LookupSecret(bool),
    LookupPassword,
}

#[derive(Debug, Arbitrary)]
pub struct ConfigInput {
    pub place: Place,
    pub secret: String,
    /// `CLASSHOOK_*` overrides (or any other variables), after the placed one.
    pub vars: Vec<(String, String)>,
    /// What `*_env` names resolve to.
    pub lookups: Vec<(String, String)>,
    /// Any TOML (or not), after the placed secret.
    pub text: String,
}

/// `data` as the input of `Config::from_toml_str`: one secret placed under a
/// secret-bearing key (in the file, an override or a `*_env` variable) in some form,
/// then arbitrary text, arbitrary overrides and arbitrary variables. Loading never
/// panics, and its error never shows the secret.
pub fn config(data: &[u8]) {
    if let Ok(input) = ConfigInput::arbitrary_take_rest(Unstructured::new(data)) {
        check_config(&input);
    }
}

pub fn check_config(input: &ConfigInput) {
    let secret = format!("{SECRET_START}{}{SECRET_END}", input.secret);
    let (head, vars, lookups) = place(&input.place, &secret);
    let text = format!("{head}\n{}", input.text);
    let mut all_vars = vars;
    all_vars.extend(input.vars.iter().cloned());
    let mut all_lookups = lookups;
    all_lookups.extend(input.lookups.iter().cloned());
    let lookup = |name: &str| {
        all_lookups
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let result = Config::from_toml_str(Path::new("fuzz.toml"), &text, &all_vars, &lookup);
    let Err(error) = result else { return };
    let message = error.to_string();
    // Only a secret that nothing else given repeats can be told apart.
    let given_elsewhere = |marker: &str| {
        input.text.contains(marker)
            || input.secret.contains(marker)
            || input
                .vars
                .iter()
                .chain(&input.lookups)
                .any(|(n, v)| n.contains(marker) || v.contains(marker))
    };
    for marker in [SECRET_START, SECRET_END] {
        if !given_elsewhere(marker) {
            assert!(
                !message.contains(marker),
                "a config error shows a secret ({:?}): {message}",
                input.place
            );
        }
    }
    let number = SECRET_NUMBER.to_string();
    if !given_elsewhere(&number) {
        assert!(
            !message.contains(&number),
            "a config error shows a secret: {message}"
        );
    }
}

/// The TOML, overrides and variables that put `secret` at `place`.
#[allow(clippy::type_complexity)]
fn place(place: &Place, secret: &str) -> (String, Vec<(String, String)>, Vec<(String, String)>) {
    let source = "[[source]]\nname = \"s\"\nprovider = \"dreamclass\"\n";
    let subscription =
        "[[subscription]]\nname = \"sub\"\nurl = \"https://example.com/h\"\nevents = [\"*\"]\n";
    let var = |name: &str| vec![(name.to_string(), secret.to_string())];
    match place {
        Place::SourceSecret(form, base64) => {
            let encoding = if *base64 {
                "secret_encoding = \"base64\"\n"
            } else {
                ""
            };
            (
                format!("{source}{encoding}secret = {}", value(form, secret)),
                vec![],
                vec![],
            )
        }
        Place::SourcePassword(form) => (
            format!(
                "{source}[source.basic_auth]\nusername = \"u\"\npassword = {}",
                value(form, secret)
            ),
            vec![],
            vec![],
        ),
        Place::BasicAuth(form) => (
            format!("{source}basic_auth = {}", value(form, secret)),
            vec![],
            vec![],
        ),
        Place::ApiTokens(form) => (
            format!("[api]\ntokens = {}", value(form, secret)),
            vec![],
            vec![],
        ),
        Place::DeliveryProxy(form) => (
            format!("[delivery]\nproxy = {}", value(form, secret)),
            vec![],
            vec![],
        ),
        Place::SubscriptionSecret(form) => (
            format!("{subscription}secret = {}", value(form, secret)),
            vec![],
            vec![],
        ),
        Place::SubscriptionPassword(form) => (
            format!(
                "{subscription}basic_auth = {{ username = \"u\", password = {} }}",
                value(form, secret)
            ),
            vec![],
            vec![],
        ),
        Place::EnvSourceSecret(base64) => {
            let encoding = if *base64 {
                "secret_encoding = \"base64\"\n"
            } else {
                ""
            };
            (
                format!("{source}{encoding}"),
                var("CLASSHOOK_SOURCE_S_SECRET"),
                vec![],
            )
        }
        Place::EnvSourcePassword => (
            format!("{source}basic_auth = {{ username = \"u\", password = \"p\" }}"),
            var("CLASSHOOK_SOURCE_S_BASIC_AUTH_PASSWORD"),
            vec![],
        ),
        Place::EnvApiTokens => (String::new(), var("CLASSHOOK_API_TOKENS"), vec![]),
        Place::EnvProxy => (String::new(), var("CLASSHOOK_DELIVERY_PROXY"), vec![]),
        Place::LookupSecret(base64) => {
            let encoding = if *base64 {
                "secret_encoding = \"base64\"\n"
            } else {
                ""
            };
            (
                format!("{source}{encoding}secret_env = \"FUZZ_SECRET\""),
                vec![],
                var("FUZZ_SECRET"),
            )
        }
        Place::LookupPassword => (
            format!(
                "{source}basic_auth = {{ username = \"u\", password_env = \"FUZZ_PASSWORD\" }}"
            ),
            vec![],
            var("FUZZ_PASSWORD"),
        ),
    }
}

/// `secret` written as a TOML value in `form`.
fn value(form: &Form, secret: &str) -> String {
    let basic = || toml::Value::String(secret.to_string()).to_string();
    match form {
        Form::Basic => basic(),
        Form::Literal => format!(
            "'{}'",
            secret
                .chars()
                .filter(|c| *c != '\'' && (!c.is_control() || *c == '\t'))
                .collect::<String>()
        ),
        Form::Multiline => format!(
            "\"\"\"{}\"\"\"",
            basic().trim_matches('"').replace("\\n", "\n")
        ),
        Form::Bare => secret
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '+'))
            .collect(),
        Form::Number => SECRET_NUMBER.to_string(),
        Form::InArray => format!("[{}]", basic()),
        Form::InTable => format!("{{ value = {} }}", basic()),
    }
}

/// A text for the pattern check: mostly over a small alphabet with `*`, so that
/// patterns and types share prefixes; sometimes anything.
#[derive(Debug)]
struct Text(String);

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const ALPHABET: &[char] = &['A', 'B', '_', '.', 'a', '*', 'é', '!', '+', '\u{7f}', '\0'];
        if u.ratio(1, 8)? {
            return Ok(Text(String::arbitrary(u)?));
        }
        let len = u.int_in_range(0..=12)?;
        let text = (0..len)
            .map(|_| u.choose(ALPHABET).copied())
            .collect::<arbitrary::Result<String>>()?;
        Ok(Text(text))
    }
}

#[derive(Debug, Arbitrary)]
struct PatternInput {
    patterns: Vec<Text>,
    types: Vec<Text>,
}

/// Whether a pattern matches a type, written as plainly as possible.
fn reference_match(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| {
        if p == "*" {
            return true;
        }
        match p.strip_suffix('*') {
            Some(prefix) => {
                event_type.len() >= prefix.len()
                    && &event_type.as_bytes()[..prefix.len()] == prefix.as_bytes()
            }
            None => p == event_type,
        }
    })
}

/// Pattern validation never panics, and for a valid list the search over sorted
/// patterns (`SubscriptionSpec::matches`) says what a scan of every pattern says,
/// for the given types, every pattern itself, and every prefix and extension of one.
pub fn patterns(data: &[u8]) {
    if let Ok(input) = PatternInput::arbitrary_take_rest(Unstructured::new(data)) {
        check_patterns(
            input.patterns.into_iter().map(|t| t.0).collect(),
            input.types.into_iter().map(|t| t.0).collect(),
        );
    }
}

pub fn check_patterns(patterns: Vec<String>, mut types: Vec<String>) {
    let mut spec = SubscriptionSpec {
        name: "fuzz".into(),
        url: "https://example.com/hooks".into(),
        events: patterns.clone(),
        sources: None,
        tenants: None,
        basic_auth: None,
        secret: None,
        secret_encoding: SecretEncoding::Utf8,
        signing: Default::default(),
        timeout: std::time::Duration::from_secs(10),
        retry_schedule: vec![],
        max_in_flight: 1,
        rate_limit: None,
    };
    spec.normalize();
    assert!(spec.events.is_sorted());
    let once = spec.events.clone();
    spec.normalize();
    assert_eq!(once, spec.events, "normalizing twice changes the list");
    if spec.validate().is_err() {
        return;
    }
    for p in &patterns {
        let stem = p.strip_suffix('*').unwrap_or(p);
        types.push(p.clone());
        types.push(stem.to_string());
        for (i, _) in stem.char_indices() {
            types.push(stem[..i].to_string());
        }
        for tail in ["", "A", "*", "é", "!", "\u{7f}"] {
            types.push(format!("{stem}{tail}"));
            types.push(format!("{stem}{tail}A"));
        }
    }
    for t in &types {
        let want = reference_match(&patterns, t);
        assert_eq!(
            patterns.iter().any(|p| pattern_matches(p, t)),
            want,
            "pattern_matches disagrees with the reference for {t:?}"
        );
        assert_eq!(
            spec.matches(t, "src", None),
            want,
            "the sorted search disagrees with a scan: type {t:?}, patterns {:?}",
            spec.events
        );
    }
}
