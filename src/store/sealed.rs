//! Subscription secrets at rest. Every backend stores a subscription's `secret` (an
//! HMAC secret or an ed25519 `whsk_` key), the keys a rotation replaced, and its
//! Basic Auth password through [`Sealer`]: sealed with XChaCha20-Poly1305 under the
//! operator's key (`CLASSHOOK_SECRET_KEY`), or as plain text when no key is set.
//!
//! Stored form: `sealed:v1:<key id>:<base64(nonce || ciphertext)>`, where the key id
//! is the hex of the first 4 bytes of SHA-256(key) and the nonce is 24 random bytes
//! per value. The column's name is the associated data, so a value moved to another
//! column does not open. A stored value without the `sealed:` prefix is plain text
//! (written without a key, or by an earlier version) and is read as it is.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::secret::Secret;

/// The column names backends pass as `column`: the associated data of each value,
/// the same on every backend so that a row copied between them still opens.
pub const SUBSCRIPTION_SECRET: &str = "subscriptions.secret";
pub const SUBSCRIPTION_BASIC_PASSWORD: &str = "subscriptions.basic_password";
/// A key replaced by a rotation, kept for its grace period.
pub const SUBSCRIPTION_PREVIOUS_KEY: &str = "subscription_keys.secret";

/// The variables the keys come from unless `[server] secret_key_env` /
/// `previous_secret_key_env` name others.
pub const DEFAULT_KEY_ENV: &str = "CLASSHOOK_SECRET_KEY";
pub const DEFAULT_PREVIOUS_KEY_ENV: &str = "CLASSHOOK_SECRET_KEY_PREVIOUS";

const PREFIX: &str = "sealed:";
const VERSION: &str = "v1";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Identifies a key in stored values and messages without revealing it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    fn parse(text: &str) -> Option<KeyId> {
        let mut id = [0u8; 4];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(KeyId(id))
    }
}

/// A 32-byte key; `Debug` shows only its id.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// Why a configured key is unusable; never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is empty")]
    Empty,
    #[error("is not base64 (standard alphabet, padded)")]
    NotBase64,
    #[error("decodes to {0} bytes, but a key is {KEY_LEN}")]
    WrongLength(usize),
}

impl SecretKey {
    /// A fresh random key (what `classhook secret-key` prints).
    pub fn generate() -> SecretKey {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        SecretKey::from_bytes(bytes)
    }

    /// A key as the environment gives it: base64 of 32 bytes (surrounding
    /// whitespace ignored).
    pub fn from_base64(text: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let decoded = BASE64.decode(text).map_err(|_| KeyError::NotBase64)?;
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(decoded.len()))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        let digest = crate::crypto::sha256(&bytes);
        let id = KeyId([digest[0], digest[1], digest[2], digest[3]]);
        SecretKey { bytes, id }
    }

    /// The key as `CLASSHOOK_SECRET_KEY` takes it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// Why a stored secret cannot be read or written. Never holds a secret or a stored
/// value: only key ids, column names and variable names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "subscription secrets are encrypted with key {stored}, but no key is set: set {var} to that key (if it is lost: `classhook forget-secrets`)"
    )]
    NoKey { stored: KeyId, var: String },
    #[error(
        "subscription secrets are encrypted with key {stored}, which is not the key set ({current}){previous}: set {var} to that key (or {previous_var}, with the new key in {var}, while rotating; if it is lost: `classhook forget-secrets`)"
    )]
    UnknownKey {
        stored: KeyId,
        current: KeyId,
        /// ", nor the previous key (…)" when one is set.
        previous: String,
        var: String,
        previous_var: String,
    },
    #[error(
        "cannot decrypt a stored {column} with key {key}: it was altered, or moved from another column"
    )]
    CannotDecrypt { column: String, key: KeyId },
    #[error("a stored {column} is sealed in a form this classhook cannot read")]
    UnknownForm { column: String },
    #[error(
        "this command did not read subscription secrets (it neither receives nor sends), so it cannot change a subscription"
    )]
    Withheld,
    #[error(
        "a {column} that starts with \"{PREFIX}\" can be stored only with {var} set (it would be read as an encrypted value)"
    )]
    LooksSealed { column: String, var: String },
}

/// A subscription whose stored secrets the keys given cannot open (see
/// [`crate::store::Backend::forget_unreadable_secrets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub subscription: String,
    /// Declared in the config file: the next `serve` stores its secrets again.
    pub from_config: bool,
    /// Why the first of its values did not open.
    pub reason: SealError,
}

/// What to clear of a subscription whose stored values no key set opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forget {
    /// The Basic Auth password (and so its username: Basic Auth is both or none).
    pub basic_auth: bool,
    pub secret: bool,
    /// Why the first of them did not open.
    pub reason: SealError,
}

/// Why an API subscription whose secrets were forgotten is paused.
pub const FORGOTTEN_REASON: &str = "its secrets were sealed under a lost key and are forgotten: set secret and basic_auth again, then resume";

/// Seals and opens subscription secrets; cheap to clone. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Sealer {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    /// The variable names, for messages.
    key_var: String,
    previous_var: String,
}

#[derive(Clone)]
enum Mode {
    /// No key: secrets are written as plain text; sealed values cannot be opened.
    Plain,
    /// Written sealed under `current`; values sealed under `previous` still open.
    Keys {
        current: SecretKey,
        previous: Option<SecretKey>,
    },
    /// For commands that neither receive nor send: stored secrets are not opened
    /// (they read as empty) and nothing can be sealed, so such a command cannot
    /// write a secret back.
    Withheld,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.mode {
            Mode::Plain => f.write_str("Sealer(plain text)"),
            Mode::Withheld => f.write_str("Sealer(withheld)"),
            Mode::Keys { current, previous } => {
                write!(f, "Sealer(key {}", current.id)?;
                if let Some(previous) = previous {
                    write!(f, ", previous {}", previous.id)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Sealer::plain()
    }
}

impl Sealer {
    fn with_mode(mode: Mode) -> Sealer {
        Sealer {
            inner: Arc::new(Inner {
                mode,
                key_var: DEFAULT_KEY_ENV.into(),
                previous_var: DEFAULT_PREVIOUS_KEY_ENV.into(),
            }),
        }
    }

    /// No key: secrets are stored as plain text.
    pub fn plain() -> Sealer {
        Sealer::with_mode(Mode::Plain)
    }

    /// Seals under `current`; `previous` (while rotating) still opens.
    pub fn with_keys(current: SecretKey, previous: Option<SecretKey>) -> Sealer {
        Sealer::with_mode(Mode::Keys { current, previous })
    }

    /// Secrets are neither opened nor sealed (commands that never send).
    pub fn withheld() -> Sealer {
        Sealer::with_mode(Mode::Withheld)
    }

    /// The same sealer, naming these variables in its messages.
    pub fn named(&self, key_var: &str, previous_var: &str) -> Sealer {
        Sealer {
            inner: Arc::new(Inner {
                mode: self.inner.mode.clone(),
                key_var: key_var.into(),
                previous_var: previous_var.into(),
            }),
        }
    }

    /// The key new values are sealed under (`None`: plain text, or withheld).
    pub fn current_key(&self) -> Option<KeyId> {
        match &self.inner.mode {
            Mode::Keys { current, .. } => Some(current.id),
            _ => None,
        }
    }

    /// Whether secrets written through this sealer are stored as plain text.
    pub fn writes_plain_text(&self) -> bool {
        matches!(self.inner.mode, Mode::Plain)
    }

    /// The variable the current key comes from, for messages.
    pub fn key_var(&self) -> &str {
        &self.inner.key_var
    }

    /// What to store for `plaintext` in `column`.
    pub fn seal(&self, column: &str, plaintext: &Secret) -> Result<String, SealError> {
        match &self.inner.mode {
            Mode::Withheld => Err(SealError::Withheld),
            Mode::Plain if plaintext.expose().starts_with(PREFIX) => Err(SealError::LooksSealed {
                column: column.into(),
                var: self.inner.key_var.clone(),
            }),
            Mode::Plain => Ok(plaintext.expose().to_string()),
            Mode::Keys { current, .. } => Ok(seal_with(current, column, plaintext)),
        }
    }

    /// The secret a stored value of `column` holds. Plain text is read as it is; a
    /// sealed value needs its key. Withheld: every value reads as empty.
    pub fn open(&self, column: &str, stored: &str) -> Result<Secret, SealError> {
        if matches!(self.inner.mode, Mode::Withheld) {
            return Ok(Secret::new(""));
        }
        let Some(sealed) = Sealed::parse(column, stored)? else {
            return Ok(Secret::new(stored));
        };
        let key = self.key_for(sealed.key)?;
        let plaintext = key
            .cipher()
            .decrypt(
                sealed.nonce(),
                Payload {
                    msg: sealed.ciphertext(),
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| SealError::CannotDecrypt {
                column: column.into(),
                key: key.id,
            })?;
        String::from_utf8(plaintext)
            .map(Secret::new)
            .map_err(|_| SealError::CannotDecrypt {
                column: column.into(),
                key: key.id,
            })
    }

    /// A stored value sealed again under the current key, when it is plain text or
    /// sealed under another key (`None`: leave it; always `None` without a key).
    pub fn reseal(&self, column: &str, stored: &str) -> Result<Option<String>, SealError> {
        let Mode::Keys { current, .. } = &self.inner.mode else {
            return Ok(None);
        };
        if let Some(sealed) = Sealed::parse(column, stored)?
            && sealed.key == current.id
        {
            return Ok(None);
        }
        let secret = self.open(column, stored)?;
        Ok(Some(seal_with(current, column, &secret)))
    }

    /// For one subscription's stored Basic Auth password and secret: what to write
    /// back so that both are sealed under the current key (`None` each where the
    /// stored value is right as it is). What every backend's
    /// `reseal_subscription_secrets` does per row.
    pub fn reseal_subscription(
        &self,
        basic_password: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), SealError> {
        let reseal = |column: &str, stored: Option<&str>| match stored {
            Some(stored) => self.reseal(column, stored),
            None => Ok(None),
        };
        Ok((
            reseal(SUBSCRIPTION_BASIC_PASSWORD, basic_password)?,
            reseal(SUBSCRIPTION_SECRET, secret)?,
        ))
    }

    /// For one subscription's stored Basic Auth password and secret: which of them
    /// these keys cannot open (`None`: both open). What every backend's
    /// `forget_unreadable_secrets` does per row.
    pub fn unreadable_subscription(
        &self,
        basic_password: Option<&str>,
        secret: Option<&str>,
    ) -> Option<Forget> {
        let fails = |column: &str, stored: Option<&str>| {
            stored.and_then(|stored| self.open(column, stored).err())
        };
        let password = fails(SUBSCRIPTION_BASIC_PASSWORD, basic_password);
        let secret = fails(SUBSCRIPTION_SECRET, secret);
        let (basic_auth, forget_secret) = (password.is_some(), secret.is_some());
        secret.or(password).map(|reason| Forget {
            basic_auth,
            secret: forget_secret,
            reason,
        })
    }

    fn key_for(&self, id: KeyId) -> Result<&SecretKey, SealError> {
        match &self.inner.mode {
            Mode::Keys { current, .. } if current.id == id => Ok(current),
            Mode::Keys {
                previous: Some(previous),
                ..
            } if previous.id == id => Ok(previous),
            Mode::Keys { current, previous } => Err(SealError::UnknownKey {
                stored: id,
                current: current.id,
                previous: previous
                    .as_ref()
                    .map(|p| format!(", nor the previous key ({})", p.id))
                    .unwrap_or_default(),
                var: self.inner.key_var.clone(),
                previous_var: self.inner.previous_var.clone(),
            }),
            Mode::Plain | Mode::Withheld => Err(SealError::NoKey {
                stored: id,
                var: self.inner.key_var.clone(),
            }),
        }
    }
}

fn seal_with(key: &SecretKey, column: &str, plaintext: &Secret) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.expose().as_bytes(),
                aad: column.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 seals any value shorter than 256 GiB");
    let mut packed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    packed.extend_from_slice(&nonce);
    packed.extend_from_slice(&ciphertext);
    format!("{PREFIX}{VERSION}:{}:{}", key.id, BASE64.encode(packed))
}

/// A stored value's sealed parts.
struct Sealed {
    key: KeyId,
    /// nonce || ciphertext (with its tag).
    packed: Vec<u8>,
}

impl Sealed {
    /// `None` for plain text; an error for a `sealed:` value of another form.
    fn parse(column: &str, stored: &str) -> Result<Option<Sealed>, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        let unknown = || SealError::UnknownForm {
            column: column.into(),
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(VERSION), Some(key), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        let key = KeyId::parse(key).ok_or_else(unknown)?;
        let packed = BASE64.decode(data).map_err(|_| unknown())?;
        // A nonce and at least Poly1305's 16-byte tag.
        if packed.len() < NONCE_LEN + 16 {
            return Err(unknown());
        }
        Ok(Some(Sealed { key, packed }))
    }

    fn nonce(&self) -> &XNonce {
        XNonce::from_slice(&self.packed[..NONCE_LEN])
    }

    fn ciphertext(&self) -> &[u8] {
        &self.packed[NONCE_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "whsec_dGhlLXN1YnNjcmlwdGlvbi1zZWNyZXQ=";

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes([byte; KEY_LEN])
    }

    fn secret() -> Secret {
        Secret::new(PLAIN)
    }

    #[test]
    fn sealed_values_round_trip_and_hide_the_secret() {
        let sealer = Sealer::with_keys(key(1), None);
        for column in [SUBSCRIPTION_SECRET, SUBSCRIPTION_BASIC_PASSWORD] {
            let stored = sealer.seal(column, &secret()).unwrap();
            assert!(
                stored.starts_with(&format!("sealed:v1:{}:", key(1).id())),
                "{stored}"
            );
            assert!(!stored.contains(PLAIN));
            assert_eq!(sealer.open(column, &stored).unwrap(), secret());
            // A fresh nonce every time: equal secrets are not equal rows.
            assert_ne!(stored, sealer.seal(column, &secret()).unwrap());
        }
        let empty = sealer.seal(SUBSCRIPTION_SECRET, &Secret::new("")).unwrap();
        assert_eq!(
            sealer.open(SUBSCRIPTION_SECRET, &empty).unwrap(),
            Secret::new("")
        );
    }

    #[test]
    fn the_column_is_bound_to_the_value() {
        let sealer = Sealer::with_keys(key(1), None);
        let stored = sealer.seal(SUBSCRIPTION_SECRET, &secret()).unwrap();
        let error = sealer
            .open(SUBSCRIPTION_BASIC_PASSWORD, &stored)
            .unwrap_err();
        assert_eq!(
            error,
            SealError::CannotDecrypt {
                column: SUBSCRIPTION_BASIC_PASSWORD.into(),
                key: key(1).id(),
            }
        );
        assert!(error.to_string().starts_with("cannot decrypt"), "{error}");
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let sealer = Sealer::with_keys(key(1), None);
        let stored = sealer.seal(SUBSCRIPTION_SECRET, &secret()).unwrap();
        let (head, data) = stored.rsplit_once(':').unwrap();
        let mut packed = BASE64.decode(data).unwrap();
        for at in [0, NONCE_LEN, packed.len() - 1] {
            packed[at] ^= 0x01;
            let tampered = format!("{head}:{}", BASE64.encode(&packed));
            let error = sealer.open(SUBSCRIPTION_SECRET, &tampered).unwrap_err();
            assert!(matches!(error, SealError::CannotDecrypt { .. }), "{error}");
            packed[at] ^= 0x01;
        }
        let truncated = &stored[..stored.len() - 8];
        assert!(sealer.open(SUBSCRIPTION_SECRET, truncated).is_err());
        for odd in ["sealed:", "sealed:v2:00000000:AAAA", "sealed:v1:zz:AAAA"] {
            let error = sealer.open(SUBSCRIPTION_SECRET, odd).unwrap_err();
            assert!(matches!(error, SealError::UnknownForm { .. }), "{odd}");
        }
    }

    #[test]
    fn plain_text_reads_as_it_is() {
        for sealer in [Sealer::plain(), Sealer::with_keys(key(1), Some(key(2)))] {
            assert_eq!(sealer.open(SUBSCRIPTION_SECRET, PLAIN).unwrap(), secret());
        }
        let plain = Sealer::plain();
        assert_eq!(plain.seal(SUBSCRIPTION_SECRET, &secret()).unwrap(), PLAIN);
        assert!(plain.writes_plain_text());
        // Stored as plain text it would later be taken for a sealed value.
        let error = plain
            .seal(SUBSCRIPTION_SECRET, &Secret::new("sealed:v1:x"))
            .unwrap_err();
        assert!(matches!(error, SealError::LooksSealed { .. }));
    }

    #[test]
    fn a_missing_or_unknown_key_is_named() {
        let old = Sealer::with_keys(key(1), None);
        let stored = old.seal(SUBSCRIPTION_SECRET, &secret()).unwrap();
        let id = key(1).id().to_string();

        let error = Sealer::plain()
            .open(SUBSCRIPTION_SECRET, &stored)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "subscription secrets are encrypted with key {id}, but no key is set: set CLASSHOOK_SECRET_KEY to that key (if it is lost: `classhook forget-secrets`)"
            )
        );

        let other = Sealer::with_keys(key(2), Some(key(3))).named("MY_KEY", "MY_OLD_KEY");
        let message = other
            .open(SUBSCRIPTION_SECRET, &stored)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("encrypted with key {id}")),
            "{message}"
        );
        assert!(message.contains(&key(2).id().to_string()), "{message}");
        assert!(message.contains(&key(3).id().to_string()), "{message}");
        assert!(message.contains("set MY_KEY to that key"), "{message}");
        assert!(message.contains("MY_OLD_KEY"), "{message}");
        assert!(!message.contains(PLAIN) && !message.contains(&stored));
    }

    #[test]
    fn the_previous_key_opens_and_values_move_to_the_current_one() {
        let old = Sealer::with_keys(key(1), None);
        let stored = old.seal(SUBSCRIPTION_SECRET, &secret()).unwrap();
        let rotating = Sealer::with_keys(key(2), Some(key(1)));
        assert_eq!(
            rotating.open(SUBSCRIPTION_SECRET, &stored).unwrap(),
            secret()
        );

        let moved = rotating
            .reseal(SUBSCRIPTION_SECRET, &stored)
            .unwrap()
            .unwrap();
        assert!(moved.starts_with(&format!("sealed:v1:{}:", key(2).id())));
        let new_only = Sealer::with_keys(key(2), None);
        assert_eq!(
            new_only.open(SUBSCRIPTION_SECRET, &moved).unwrap(),
            secret()
        );
        // Already under the current key: left alone.
        assert_eq!(rotating.reseal(SUBSCRIPTION_SECRET, &moved).unwrap(), None);
        // Plain text is sealed; without a key nothing moves.
        let sealed = new_only
            .reseal(SUBSCRIPTION_SECRET, PLAIN)
            .unwrap()
            .unwrap();
        assert_eq!(
            new_only.open(SUBSCRIPTION_SECRET, &sealed).unwrap(),
            secret()
        );
        assert_eq!(
            Sealer::plain().reseal(SUBSCRIPTION_SECRET, PLAIN).unwrap(),
            None
        );
        // A value under a key that is neither: an error, not a silent skip.
        assert!(matches!(
            Sealer::with_keys(key(3), None).reseal(SUBSCRIPTION_SECRET, &stored),
            Err(SealError::UnknownKey { .. })
        ));
    }

    #[test]
    fn per_subscription_helpers_say_what_to_write_and_what_to_forget() {
        let old = Sealer::with_keys(key(1), None);
        let password = old.seal(SUBSCRIPTION_BASIC_PASSWORD, &secret()).unwrap();
        let rotating = Sealer::with_keys(key(2), Some(key(1)));
        let (new_password, new_secret) = rotating
            .reseal_subscription(Some(&password), Some(PLAIN))
            .unwrap();
        for (column, value) in [
            (SUBSCRIPTION_BASIC_PASSWORD, new_password.unwrap()),
            (SUBSCRIPTION_SECRET, new_secret.unwrap()),
        ] {
            let only_new = Sealer::with_keys(key(2), None);
            assert_eq!(only_new.open(column, &value).unwrap(), secret());
        }
        assert_eq!(
            rotating.reseal_subscription(None, None).unwrap(),
            (None, None)
        );

        let forget = Sealer::with_keys(key(2), None)
            .unreadable_subscription(Some(&password), Some(PLAIN))
            .unwrap();
        assert!(forget.basic_auth && !forget.secret, "{forget:?}");
        assert!(matches!(forget.reason, SealError::UnknownKey { .. }));
        assert_eq!(
            rotating.unreadable_subscription(Some(&password), Some(PLAIN)),
            None
        );
    }

    #[test]
    fn withheld_reads_nothing_and_writes_nothing() {
        let stored = Sealer::with_keys(key(1), None)
            .seal(SUBSCRIPTION_SECRET, &secret())
            .unwrap();
        let withheld = Sealer::withheld();
        for value in [stored.as_str(), PLAIN] {
            assert_eq!(
                withheld.open(SUBSCRIPTION_SECRET, value).unwrap(),
                Secret::new("")
            );
        }
        assert_eq!(
            withheld.seal(SUBSCRIPTION_SECRET, &secret()),
            Err(SealError::Withheld)
        );
    }

    #[test]
    fn keys_parse_from_base64_and_never_show() {
        let made = SecretKey::generate();
        let text = made.to_base64();
        let parsed = SecretKey::from_base64(&format!(" {text}\n")).unwrap();
        assert_eq!(parsed.id(), made.id());
        assert_ne!(SecretKey::generate().id(), made.id());
        assert_eq!(
            SecretKey::from_base64(&BASE64.encode([7u8; 16])).unwrap_err(),
            KeyError::WrongLength(16)
        );
        assert_eq!(
            SecretKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(SecretKey::from_base64("  ").unwrap_err(), KeyError::Empty);
        let shown = format!(
            "{made:?} {:?}",
            Sealer::with_keys(made.clone(), Some(parsed))
        );
        assert!(!shown.contains(&text), "{shown}");
        assert!(shown.contains(&made.id().to_string()), "{shown}");
    }
}
