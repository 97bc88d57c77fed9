//! The few cryptographic operations classhook needs, each in one place:
//! HMAC-SHA256 (signing and constant-time verification), SHA-256, and constant-time
//! comparison of secrets such as passwords.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `expected` is the HMAC-SHA256 of `message` under `key`, compared in
/// constant time.
pub fn hmac_sha256_matches(key: &[u8], message: &[u8], expected: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.verify_slice(expected).is_ok()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two secrets in constant time, whatever their lengths: both sides are
/// hashed first so that neither a prefix nor the length leaks through timing.
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    sha256(given).ct_eq(&sha256(expected)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_sha256_matches(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac
        ));
        assert!(!hmac_sha256_matches(
            b"Jeff",
            b"what do ya want for nothing?",
            &mac
        ));
        assert!(!hmac_sha256_matches(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac[..31]
        ));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal(b"hunter2", b"hunter2"));
        assert!(!secrets_equal(b"hunter2", b"hunter3"));
        assert!(!secrets_equal(b"hunter", b"hunter2"));
        assert!(!secrets_equal(b"", b"x"));
    }
}
