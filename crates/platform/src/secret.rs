//! Seals southbound credentials with AES-256-GCM under a key from configuration, so passwords are
//! never stored or sent on the bus in clear.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this key (wrong TALLY_SECRET_KEY?)")]
    WrongKey,
    #[error("random source failed")]
    Random,
}

#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key is the SHA-256 of the configured secret (any length, at least 16 characters advised).
    pub fn from_secret(secret: &str) -> Self {
        Self {
            key: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    fn key(&self) -> Result<LessSafeKey, SecretError> {
        UnboundKey::new(&AES_256_GCM, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| SecretError::WrongKey)
    }

    pub fn seal(&self, plain: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut buf = plain.as_bytes().to_vec();
        self.key()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| SecretError::WrongKey)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1:{}", B64.encode(out)))
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let raw = sealed
            .strip_prefix("v1:")
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SecretError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key()?
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn seals_and_opens_only_with_the_key() {
        let b = SecretBox::from_secret("k1");
        let s = b.seal("cisco").unwrap();
        assert!(!s.contains("cisco"));
        assert_eq!(b.open(&s).unwrap(), "cisco");
        assert_ne!(b.seal("cisco").unwrap(), s, "fresh nonce each time");
        assert_eq!(
            SecretBox::from_secret("k2").open(&s),
            Err(SecretError::WrongKey)
        );
        assert_eq!(b.open("garbage"), Err(SecretError::Malformed));
    }
}
