//! How a subscription's deliveries are signed, and how its keys rotate.
//!
//! Two schemes, as the Standard Webhooks spec names them: `v1` (HMAC-SHA256 under a
//! shared secret) and `v1a` (ed25519; classhook holds the secret key `whsk_…`, the
//! receiver the public key `whpk_…`). A rotation makes a new current key and keeps
//! the replaced one valid for a grace period: meanwhile every delivery's
//! `webhook-signature` carries one entry per valid key, current first.
//!
//! Key forms: `whsec_<base64 of the HMAC key>`; `whsk_<base64 of the 32-byte ed25519
//! seed>` (RFC 8032's private key; the 64-byte seed‖public form of libsodium is
//! accepted too); `whpk_<base64 of the 32-byte public key>`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey as Ed25519Key};
use rand::RngCore;
use serde::Serialize;
use utoipa::ToSchema;

use super::subscription::{Subscription, SubscriptionSpec};
use crate::config::SecretEncoding;
use crate::crypto;
use crate::secret::Secret;

/// The scheme a subscription signs `webhook-signature` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Signing {
    /// `v1`: HMAC-SHA256 under the subscription's `secret` (the default).
    #[default]
    Hmac,
    /// `v1a`: ed25519 under a key pair classhook generates.
    Ed25519,
}

impl Signing {
    pub fn as_str(self) -> &'static str {
        match self {
            Signing::Hmac => "hmac",
            Signing::Ed25519 => "ed25519",
        }
    }

    pub fn parse(text: &str) -> Result<Signing, String> {
        match text {
            "hmac" => Ok(Signing::Hmac),
            "ed25519" => Ok(Signing::Ed25519),
            _ => Err(format!("{:?} must be \"hmac\" or \"ed25519\"", text)),
        }
    }
}

/// Limits of rotation.
pub mod limits {
    use std::time::Duration;

    /// The grace period when a rotation names none.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(86_400);
    pub const GRACE_MAX: Duration = Duration::from_secs(7 * 86_400);
    /// Replaced keys still valid at once: `webhook-signature` carries at most this
    /// many entries besides the current key's. A rotation beyond it forgets the
    /// replaced key that would expire first.
    pub const PREVIOUS_KEYS_MAX: usize = 3;
}

/// A replaced key, valid until `expires_at_ms`. `secret` is in canonical form
/// (`whsec_…` or `whsk_…`), so it signs without the spec it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousKey {
    pub secret: Secret,
    pub expires_at_ms: i64,
    /// An ed25519 key's `whpk_…`, stored in plain text.
    pub public_key: Option<String>,
}

impl std::fmt::Debug for PreviousKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreviousKey(until {})", self.expires_at_ms)
    }
}

/// The last rotation of a subscription's key: when, and by whom (an API token's
/// place in the config, `dashboard`, `command line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub at_ms: i64,
    pub by: String,
}

/// A key ready to sign with. `Debug` never shows key material.
#[derive(Clone)]
pub enum SigningKey {
    Hmac(Vec<u8>),
    Ed25519(Box<Ed25519Key>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::Hmac(k) => write!(f, "SigningKey::Hmac({} bytes)", k.len()),
            SigningKey::Ed25519(_) => f.write_str("SigningKey::Ed25519"),
        }
    }
}

impl SigningKey {
    /// The key a canonical secret (`whsec_…`, `whsk_…`) holds.
    pub fn from_canonical(secret: &Secret) -> Result<SigningKey, String> {
        let text = secret.expose();
        if text.starts_with("whsk_") {
            return ed25519_from_secret(text).map(|k| SigningKey::Ed25519(Box::new(k)));
        }
        let encoded = text.strip_prefix("whsec_").ok_or_else(|| {
            "a stored previous key has neither prefix whsec_ nor whsk_".to_string()
        })?;
        BASE64
            .decode(encoded)
            .map(SigningKey::Hmac)
            .map_err(|_| "a whsec_ secret must be base64 after the prefix".to_string())
    }

    /// The same key as a canonical secret.
    pub fn canonical(&self) -> Secret {
        match self {
            SigningKey::Hmac(bytes) => Secret::new(format!("whsec_{}", BASE64.encode(bytes))),
            SigningKey::Ed25519(key) => {
                Secret::new(format!("whsk_{}", BASE64.encode(key.to_bytes())))
            }
        }
    }

    /// One `webhook-signature` entry: `v1,<base64 HMAC>` or `v1a,<base64 ed25519>`
    /// of `id.timestamp.body`.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut signed = format!("{webhook_id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(body);
        match self {
            SigningKey::Hmac(key) => {
                format!("v1,{}", BASE64.encode(crypto::hmac_sha256(key, &signed)))
            }
            SigningKey::Ed25519(key) => {
                format!("v1a,{}", BASE64.encode(key.sign(&signed).to_bytes()))
            }
        }
    }

    /// The HMAC key, for the platform-faithful signatures (none for ed25519).
    pub fn hmac_bytes(&self) -> Option<&[u8]> {
        match self {
            SigningKey::Hmac(bytes) => Some(bytes),
            SigningKey::Ed25519(_) => None,
        }
    }

    /// `whpk_…` for an ed25519 key.
    pub fn public_key(&self) -> Option<String> {
        match self {
            SigningKey::Hmac(_) => None,
            SigningKey::Ed25519(key) => Some(format!(
                "whpk_{}",
                BASE64.encode(key.verifying_key().to_bytes())
            )),
        }
    }
}

fn ed25519_from_secret(text: &str) -> Result<Ed25519Key, String> {
    let bad = || "a whsk_ key must be base64 of a 32-byte ed25519 seed".to_string();
    let bytes = BASE64
        .decode(text.strip_prefix("whsk_").ok_or_else(bad)?)
        .map_err(|_| bad())?;
    match bytes.len() {
        32 => Ok(Ed25519Key::from_bytes(
            &bytes.as_slice().try_into().expect("32 bytes"),
        )),
        64 => {
            let key = Ed25519Key::from_bytes(&bytes[..32].try_into().expect("32 bytes"));
            if key.verifying_key().to_bytes()[..] != bytes[32..] {
                return Err("a 64-byte whsk_ key's second half is not its public key".into());
            }
            Ok(key)
        }
        _ => Err(bad()),
    }
}

/// The subscription's current key (`None` without a secret). A Standard Webhooks
/// secret (`whsec_<base64>`) is decoded as that standard says; other HMAC secrets
/// by `secret_encoding`; an ed25519 subscription's secret is its `whsk_` key.
pub fn current_key(spec: &SubscriptionSpec) -> Result<Option<SigningKey>, String> {
    let Some(secret) = &spec.secret else {
        return Ok(None);
    };
    let text = secret.expose();
    if spec.signing == Signing::Ed25519 {
        return ed25519_from_secret(text).map(|k| Some(SigningKey::Ed25519(Box::new(k))));
    }
    if let Some(encoded) = text.strip_prefix("whsec_") {
        return BASE64
            .decode(encoded)
            .map(|k| Some(SigningKey::Hmac(k)))
            .map_err(|_| "a whsec_ secret must be base64 after the prefix".to_string());
    }
    match spec.secret_encoding {
        SecretEncoding::Utf8 => Ok(Some(SigningKey::Hmac(text.as_bytes().to_vec()))),
        SecretEncoding::Base64 => BASE64
            .decode(text.trim())
            .map(|k| Some(SigningKey::Hmac(k)))
            .map_err(|_| "secret is not valid base64 (standard alphabet, padded)".to_string()),
    }
}

/// Every key valid at `now_ms`: the current one first, then replaced keys still in
/// their grace period (the one expiring last first). A previous key that does not
/// parse is skipped: it can only be one this version did not write.
pub fn valid_keys(
    spec: &SubscriptionSpec,
    previous: &[PreviousKey],
    now_ms: i64,
) -> Result<Vec<SigningKey>, String> {
    let mut keys: Vec<SigningKey> = current_key(spec)?.into_iter().collect();
    let mut live: Vec<&PreviousKey> = previous
        .iter()
        .filter(|p| p.expires_at_ms > now_ms)
        .collect();
    live.sort_by_key(|p| std::cmp::Reverse(p.expires_at_ms));
    keys.extend(
        live.into_iter()
            .filter_map(|p| SigningKey::from_canonical(&p.secret).ok()),
    );
    Ok(keys)
}

/// A fresh random HMAC secret, `whsec_` and 32 random bytes.
pub fn generate_hmac_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SigningKey::Hmac(bytes.to_vec()).canonical()
}

/// A fresh ed25519 key pair's secret key, `whsk_…`.
pub fn generate_ed25519_secret() -> Secret {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::Ed25519(Box::new(Ed25519Key::from_bytes(&seed))).canonical()
}

/// The public key (`whpk_…`) of an ed25519 subscription; `None` for HMAC, or while
/// its key is not readable (a command that does not open secrets).
pub fn public_key(spec: &SubscriptionSpec) -> Option<String> {
    if spec.signing != Signing::Ed25519 {
        return None;
    }
    current_key(spec).ok().flatten()?.public_key()
}

/// Parses a grace period like the other durations (`24h`, `90m`, `0s`), at most 7
/// days. The error names the field and never repeats more than the caller sent.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|e| {
        format!(
            "`grace_period` {:?}: {e} (e.g. \"24h\", \"0s\")",
            short(text)
        )
    })?;
    if grace > limits::GRACE_MAX {
        return Err(format!(
            "`grace_period` {} is longer than the longest allowed, 7 days",
            humantime::format_duration(grace)
        ));
    }
    Ok(grace)
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What a rotation asks for.
#[derive(Debug)]
pub struct RotationRequest {
    /// The new HMAC secret; `None`: one is generated (and shown once).
    pub secret: Option<Secret>,
    /// The scheme after the rotation; `None`: the one it has.
    pub signing: Option<Signing>,
    /// How long the replaced key stays valid.
    pub grace: Duration,
    pub now_ms: i64,
    /// Who rotates, as recorded.
    pub by: String,
}

/// A subscription's keys after a rotation, for the store to write as they are.
#[derive(Debug)]
pub struct KeySet {
    pub signing: Signing,
    pub secret: Secret,
    pub secret_encoding: SecretEncoding,
    /// The new key's `whpk_…` (ed25519).
    pub public_key: Option<String>,
    pub previous: Vec<PreviousKey>,
    pub rotated: Rotated,
}

/// Why a rotation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The caller's input is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// The subscription's state forbids it (409).
    #[error("{0}")]
    Conflict(String),
}

/// The keys `current` has after `request`: the new key becomes current; the one it
/// replaces stays valid for the grace period (none for `0s`); replaced keys already
/// expired are forgotten, and at most [`limits::PREVIOUS_KEYS_MAX`] are kept (those
/// expiring last). The rule every backend applies, in the transaction that writes
/// the result.
pub fn rotate(current: &Subscription, request: RotationRequest) -> Result<KeySet, RotationError> {
    let spec = &current.spec;
    let signing = request.signing.unwrap_or(spec.signing);
    if current.managed_by == super::subscription::ManagedBy::Config && signing == Signing::Hmac {
        return Err(RotationError::Conflict(format!(
            "subscription {:?} is declared in the config file, whose `secret` is used at every start: change it there (classhook generates and rotates only ed25519 keys of config subscriptions)",
            spec.name
        )));
    }
    if current.managed_by == super::subscription::ManagedBy::Config && signing != spec.signing {
        return Err(RotationError::Conflict(format!(
            "subscription {:?} is declared in the config file: change `signing` there",
            spec.name
        )));
    }
    let secret = match (signing, request.secret) {
        (Signing::Ed25519, Some(_)) => {
            return Err(RotationError::Invalid(
                "`secret` cannot be given for ed25519 signing: classhook generates the key pair"
                    .into(),
            ));
        }
        (Signing::Ed25519, None) => generate_ed25519_secret(),
        (Signing::Hmac, Some(secret)) => secret,
        (Signing::Hmac, None) => generate_hmac_secret(),
    };
    let mut next = spec.clone();
    next.signing = signing;
    next.secret = Some(secret.clone());
    // A new secret is read as given when it is whsec_, else as UTF-8 text, whatever
    // the old one's encoding was: the caller states it in full.
    next.secret_encoding = SecretEncoding::Utf8;
    next.validate()
        .map_err(|e| RotationError::Invalid(format!("`{}` {}", e.field, e.message)))?;
    let public_key = current_key(&next)
        .map_err(RotationError::Invalid)?
        .and_then(|k| k.public_key());

    let mut previous: Vec<PreviousKey> = current
        .previous_keys
        .iter()
        .filter(|p| p.expires_at_ms > request.now_ms)
        .cloned()
        .collect();
    let grace_ms = i64::try_from(request.grace.as_millis()).unwrap_or(i64::MAX);
    if grace_ms > 0 {
        // An unreadable current key cannot sign, so it is not kept.
        if let Ok(Some(old)) = current_key(spec) {
            previous.push(PreviousKey {
                secret: old.canonical(),
                expires_at_ms: request.now_ms.saturating_add(grace_ms),
                public_key: old.public_key(),
            });
        }
    }
    previous.sort_by_key(|p| std::cmp::Reverse(p.expires_at_ms));
    previous.truncate(limits::PREVIOUS_KEYS_MAX);
    Ok(KeySet {
        signing,
        secret,
        secret_encoding: SecretEncoding::Utf8,
        public_key,
        previous,
        rotated: Rotated {
            at_ms: request.now_ms,
            by: request.by,
        },
    })
}

/// For a config subscription with ed25519 signing: the key pair it already has in
/// the store (the file holds none), or a new one. What every backend's config sync
/// does per declared subscription.
pub fn keep_generated_key(stored: Option<&Subscription>, declared: &mut SubscriptionSpec) {
    if declared.signing != Signing::Ed25519 || declared.secret.is_some() {
        return;
    }
    declared.secret = Some(
        stored
            .filter(|s| s.spec.signing == Signing::Ed25519)
            .and_then(|s| s.spec.secret.clone())
            .filter(|s| ed25519_from_secret(s.expose()).is_ok())
            .unwrap_or_else(generate_ed25519_secret),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::subscription::ManagedBy;

    fn subscription(signing: Signing, secret: &str, managed_by: ManagedBy) -> Subscription {
        let mut spec = SubscriptionSpec::with_defaults("crm".into());
        spec.url = "https://crm.example/hooks".into();
        spec.events = vec!["*".into()];
        spec.signing = signing;
        spec.secret = Some(Secret::new(secret));
        Subscription::unstored(spec, managed_by)
    }

    fn request(grace: u64, now_ms: i64) -> RotationRequest {
        RotationRequest {
            secret: None,
            signing: None,
            grace: Duration::from_secs(grace),
            now_ms,
            by: "test".into(),
        }
    }

    /// RFC 8032, section 7.1, TEST 1: the key, its public key, and the signature of
    /// the empty message.
    #[test]
    fn ed25519_matches_rfc8032_test_1() {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let key =
            SigningKey::from_canonical(&Secret::new(format!("whsk_{}", BASE64.encode(&seed))))
                .unwrap();
        let public = key.public_key().unwrap();
        assert_eq!(
            hex::encode(
                BASE64
                    .decode(public.strip_prefix("whpk_").unwrap())
                    .unwrap()
            ),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let SigningKey::Ed25519(inner) = &key else {
            panic!("not ed25519")
        };
        assert_eq!(
            hex::encode(inner.sign(b"").to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    /// The Standard Webhooks spec's published `v1` test vector.
    #[test]
    fn hmac_matches_the_standard_webhooks_test_vector() {
        let key =
            SigningKey::from_canonical(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
                .unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn entries_name_their_scheme() {
        let hmac = SigningKey::Hmac(b"key".to_vec());
        assert!(hmac.sign("msg_1", 1, b"{}").starts_with("v1,"));
        let ed = SigningKey::from_canonical(&generate_ed25519_secret()).unwrap();
        let entry = ed.sign("msg_1", 1, b"{}");
        let signature = BASE64.decode(entry.strip_prefix("v1a,").unwrap()).unwrap();
        assert_eq!(signature.len(), 64);
        // Canonical forms round-trip.
        let again = SigningKey::from_canonical(&ed.canonical()).unwrap();
        assert_eq!(again.public_key(), ed.public_key());
        let hmac_again = SigningKey::from_canonical(&hmac.canonical()).unwrap();
        assert_eq!(hmac_again.hmac_bytes(), Some(&b"key"[..]));
    }

    #[test]
    fn rotation_keeps_the_old_key_for_the_grace_period_only() {
        let current = subscription(Signing::Hmac, "old-secret", ManagedBy::Api);
        let set = rotate(&current, request(3600, 1_000)).unwrap();
        assert!(set.secret.expose().starts_with("whsec_"));
        assert_eq!(set.previous.len(), 1);
        assert_eq!(set.previous[0].expires_at_ms, 1_000 + 3_600_000);
        let old = SigningKey::from_canonical(&set.previous[0].secret).unwrap();
        assert_eq!(old.hmac_bytes(), Some(&b"old-secret"[..]));

        let mut next = current.clone();
        next.spec.secret = Some(set.secret.clone());
        next.previous_keys = set.previous.clone();
        let spec = &next.spec;
        assert_eq!(
            valid_keys(spec, &next.previous_keys, 2_000).unwrap().len(),
            2
        );
        assert_eq!(
            valid_keys(spec, &next.previous_keys, 1_000 + 3_600_000)
                .unwrap()
                .len(),
            1
        );

        // `0s` keeps nothing; expired keys are dropped at the next rotation.
        let set = rotate(&next, request(0, 5_000_000)).unwrap();
        assert!(set.previous.is_empty(), "{:?}", set.previous);
    }

    #[test]
    fn at_most_three_previous_keys_are_kept() {
        let mut current = subscription(Signing::Hmac, "k0", ManagedBy::Api);
        for i in 1..=6 {
            let set = rotate(&current, request(3600, i * 1000)).unwrap();
            current.spec.secret = Some(set.secret);
            current.previous_keys = set.previous;
        }
        assert_eq!(current.previous_keys.len(), limits::PREVIOUS_KEYS_MAX);
        // The newest replaced keys stay.
        assert_eq!(current.previous_keys[0].expires_at_ms, 6000 + 3_600_000);
    }

    #[test]
    fn config_subscriptions_rotate_only_generated_keys() {
        let hmac = subscription(Signing::Hmac, "file-secret", ManagedBy::Config);
        assert!(matches!(
            rotate(&hmac, request(60, 0)),
            Err(RotationError::Conflict(_))
        ));
        let ed = subscription(
            Signing::Ed25519,
            generate_ed25519_secret().expose(),
            ManagedBy::Config,
        );
        let set = rotate(&ed, request(60, 0)).unwrap();
        assert!(set.secret.expose().starts_with("whsk_"));
        assert_eq!(set.previous.len(), 1);
        let mut with_secret = request(60, 0);
        with_secret.secret = Some(Secret::new("chosen"));
        assert!(matches!(
            rotate(&ed, with_secret),
            Err(RotationError::Invalid(_))
        ));
    }

    #[test]
    fn grace_periods_parse_within_seven_days() {
        assert_eq!(parse_grace("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_grace("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("7days").unwrap(), limits::GRACE_MAX);
        assert!(parse_grace("8days").unwrap_err().contains("7 days"));
        assert!(parse_grace("soon").unwrap_err().contains("grace_period"));
    }

    #[test]
    fn config_ed25519_keys_survive_a_restart() {
        let stored = subscription(
            Signing::Ed25519,
            generate_ed25519_secret().expose(),
            ManagedBy::Config,
        );
        let mut declared = stored.spec.clone();
        declared.secret = None;
        keep_generated_key(Some(&stored), &mut declared);
        assert_eq!(declared.secret, stored.spec.secret);
        let mut fresh = stored.spec.clone();
        fresh.secret = None;
        keep_generated_key(None, &mut fresh);
        assert!(fresh.secret.unwrap().expose().starts_with("whsk_"));
    }
}
