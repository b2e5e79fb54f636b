//! Ed25519 signatures as the simulators use them: a device signs its RUM payloads, CSSM signs ACKs.
//! Keys are derived from a secret and a label (e.g. the device UDI), so a simulated CSSM can check
//! a simulated device's signature the way real CSSM checks a device's SUDI-based signature.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::{
    hmac,
    signature::{self, Ed25519KeyPair, KeyPair},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("signature is not valid base64")]
    BadEncoding,
    #[error("signature does not match the signed bytes")]
    Mismatch,
    #[error("key derivation failed")]
    Key,
}

pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// Deterministic key for `label` under `secret`.
    pub fn derive(secret: &[u8], label: &str) -> Result<Self, SignError> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&key, label.as_bytes());
        let pair = Ed25519KeyPair::from_seed_unchecked(tag.as_ref()).map_err(|_| SignError::Key)?;
        Ok(Self { pair })
    }

    /// Base64 signature over `msg`.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        B64.encode(self.pair.sign(msg).as_ref())
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

/// Checks a base64 Ed25519 signature against a raw public key.
pub fn verify_b64(public_key: &[u8], msg: &[u8], sig_b64: &str) -> Result<(), SignError> {
    let sig = B64.decode(sig_b64).map_err(|_| SignError::BadEncoding)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, &sig)
        .map_err(|_| SignError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn signs_and_detects_tampering() {
        let s = Signer::derive(b"fleet", "PID:C9300-48P,SN:A1").unwrap();
        let sig = s.sign_b64(b"payload");
        verify_b64(&s.public_key(), b"payload", &sig).unwrap();
        assert_eq!(
            verify_b64(&s.public_key(), b"payload ", &sig),
            Err(SignError::Mismatch)
        );
        let other = Signer::derive(b"fleet", "PID:C9300-48P,SN:A2").unwrap();
        assert_ne!(other.public_key(), s.public_key());
        assert_eq!(
            verify_b64(&s.public_key(), b"x", "%%"),
            Err(SignError::BadEncoding)
        );
    }
}
