//! How a receiver knows a request came from Tally and is fresh.
//!
//! Every delivery carries:
//!
//! | header              | value                                                   |
//! |---------------------|---------------------------------------------------------|
//! | `X-Tally-Event-Id`  | the event's UUID; the same on every retry (dedupe by it) |
//! | `X-Tally-Event`     | the event kind, e.g. `ack_deadline.7d`                  |
//! | `X-Tally-Timestamp` | Unix seconds when this attempt was signed               |
//! | `X-Tally-Signature` | `sha256=` + lowercase hex HMAC-SHA256                   |
//!
//! The HMAC key is the webhook's secret (its UTF-8 bytes) and the signed message is
//! `<X-Tally-Timestamp>.<raw request body>`: the decimal timestamp, one `.`, then the body bytes
//! exactly as received (verify before parsing JSON; re-serialising changes the bytes). A receiver
//! should:
//!
//! 1. recompute the HMAC and compare it in constant time with the header's hex value;
//! 2. refuse timestamps further than a few minutes from its own clock (replay protection, the
//!    timestamp is inside the signed message so it cannot be changed);
//! 3. answer 2xx quickly and process later, deduplicating by `X-Tally-Event-Id`: delivery is at
//!    least once, so the same event may arrive again after a timeout or a crash.
//!
//! Any other answer (or none within 10 s) is retried with backoff. [`verify_signature`] does 1 and 2.

use ring::hmac;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const HEADER_EVENT_ID: &str = "X-Tally-Event-Id";
pub const HEADER_EVENT: &str = "X-Tally-Event";
pub const HEADER_TIMESTAMP: &str = "X-Tally-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Tally-Signature";

const SCHEME: &str = "sha256=";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature header is not `sha256=<hex>`")]
    MalformedHeader,
    #[error("timestamp is not Unix seconds")]
    MalformedTimestamp,
    #[error("timestamp is outside the tolerance (replayed or clock skew)")]
    Stale,
    #[error("signature does not match the body")]
    Mismatch,
}

fn message(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + 1 + body.len());
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// The `X-Tally-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, &message(&timestamp.to_string(), body));
    format!("{SCHEME}{}", hex::encode(tag.as_ref()))
}

/// Checks a received delivery: `timestamp` and `header` are the raw `X-Tally-Timestamp` and
/// `X-Tally-Signature` values, `body` the raw body; refuses timestamps more than `tolerance` from
/// this machine's clock.
pub fn verify_signature(
    secret: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    verify_signature_at(secret, timestamp, body, header, tolerance, now)
}

/// [`verify_signature`] against a given clock (Unix seconds), for tests and replays.
pub fn verify_signature_at(
    secret: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
    tolerance: Duration,
    now: i64,
) -> Result<(), SignatureError> {
    let tag = header
        .trim()
        .strip_prefix(SCHEME)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::MalformedHeader)?;
    // Only plain digits: the signed text must be exactly what was parsed.
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::MalformedTimestamp);
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::MalformedTimestamp)?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    // ring compares in constant time.
    hmac::verify(&key, &message(timestamp, body), &tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "whsec_0123456789abcdef";
    const T: Duration = Duration::from_secs(300);

    #[test]
    fn known_vector() {
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_0123456789abcdef
        assert_eq!(
            sign(S, 1_700_000_000, br#"{"a":1}"#),
            "sha256=9f5e37cdc7ea587c7c02062d93283cad000d66a831b2a1676418696db47ed6c2"
        );
    }

    #[test]
    fn accepts_own_signature_and_refuses_tampering() {
        let body = br#"{"id":"x"}"#;
        let h = sign(S, 1000, body);
        assert_eq!(verify_signature_at(S, "1000", body, &h, T, 1100), Ok(()));
        assert_eq!(
            verify_signature_at(S, "1000", br#"{"id":"y"}"#, &h, T, 1100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature_at("another-secret-16", "1000", body, &h, T, 1100),
            Err(SignatureError::Mismatch)
        );
        // Moving the timestamp forward to dodge the tolerance breaks the signature.
        assert_eq!(
            verify_signature_at(S, "1099", body, &h, T, 1100),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refuses_stale_and_malformed() {
        let h = sign(S, 1000, b"{}");
        assert_eq!(
            verify_signature_at(S, "1000", b"{}", &h, T, 1301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature_at(S, "1000", b"{}", &h, T, 699),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature_at(S, "+1000", b"{}", &h, T, 1000),
            Err(SignatureError::MalformedTimestamp)
        );
        assert_eq!(
            verify_signature_at(S, "1000", b"{}", "md5=00", T, 1000),
            Err(SignatureError::MalformedHeader)
        );
        assert_eq!(
            verify_signature_at(S, "1000", b"{}", "sha256=zz", T, 1000),
            Err(SignatureError::MalformedHeader)
        );
    }
}
