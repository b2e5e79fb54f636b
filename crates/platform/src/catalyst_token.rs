//! Catalyst Center's own token auth, for the Catalyst Center-compatible API: HTTP Basic on
//! `POST /dna/system/api/v1/auth/token` (the password is one of Tally's API tokens, see
//! [`crate::auth`]) gives an HMAC-signed token that every other call sends as `X-Auth-Token`.
//!
//! The token carries the role and a fingerprint of the API token it was issued against, so it
//! shares the bearer auth's notion of roles and of which API tokens are live: it dies with its API
//! token and keeps only a role lowered since. The process serving that API registers a
//! [`TokenKey`] and [`ApiTokens`] as app data; handlers take a [`CatalystCaller`].

use crate::{
    Problem,
    auth::{ApiTokens, Caller, Role},
};
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::future::{Ready, ready};

/// How long a token from `/dna/system/api/v1/auth/token` stays valid (Catalyst Center: 1 hour).
pub const TOKEN_TTL_SECS: i64 = 3600;

/// The token signing key, derived from `TALLY_SECRET_KEY` so every replica verifies the others'
/// tokens, and separate from the credential-sealing key so one never stands in for the other.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn from_secret(secret: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, b"tally catalyst-token v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// `<claims>.<signature>`, both base64url.
    pub fn issue(&self, role: Role, name: &str, tok: &str, exp: i64) -> String {
        let role = match role {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        };
        let claims = json!({"role": role, "name": name, "tok": tok, "exp": exp}).to_string();
        let body = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        let sig = hmac::sign(&self.0, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The caller named by a token we signed and that has not expired, with the fingerprint of
    /// the API token it was issued against.
    pub fn verify(&self, token: &str, now: i64) -> Option<(Caller, String)> {
        let (body, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        hmac::verify(&self.0, body.as_bytes(), &sig).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (claims.exp > now).then_some(())?;
        Some((
            Caller {
                role: claims.role.parse().ok()?,
                name: claims.name,
            },
            claims.tok,
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    role: String,
    name: String,
    /// Fingerprint of the API token it was issued against (`ApiTokens::fingerprint_of`).
    #[serde(default)]
    tok: String,
    exp: i64,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn key(req: &HttpRequest) -> Result<&TokenKey, Problem> {
    req.app_data::<web::Data<TokenKey>>()
        .map(|k| k.get_ref())
        .ok_or_else(|| Problem::unavailable("the Catalyst Center API needs TALLY_SECRET_KEY"))
}

fn api_tokens(req: &HttpRequest) -> Result<&ApiTokens, Problem> {
    req.app_data::<web::Data<ApiTokens>>()
        .map(|t| t.get_ref())
        .ok_or_else(|| Problem::internal("API tokens not configured"))
}

/// `POST /dna/system/api/v1/auth/token`: a token for the API token sent as the HTTP Basic
/// password (the user name is free), valid for [`TOKEN_TTL_SECS`].
pub fn issue_for_basic(req: &HttpRequest) -> Result<String, Problem> {
    let tokens = api_tokens(req)?;
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, v)| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| {
            Problem::unauthorized("send HTTP Basic credentials; the password is a Tally API token")
        })?;
    let (_, password) = basic
        .split_once(':')
        .ok_or_else(|| Problem::unauthorized("malformed HTTP Basic credentials"))?;
    let (role, name) = tokens
        .role_of(password)
        .ok_or_else(|| Problem::unauthorized("unknown or revoked API token"))?;
    let tok = tokens.fingerprint_of(password).unwrap_or_default();
    let exp = now_secs() + TOKEN_TTL_SECS;
    Ok(key(req)?.issue(role, &name, &tok, exp))
}

/// The caller of a Catalyst Center call: a valid `X-Auth-Token` whose API token is still
/// configured, with the lower of the token's role and that API token's role now. Every role may
/// read; handlers that start work ask for more with [`Caller::require`].
#[derive(Debug, Clone)]
pub struct CatalystCaller(pub Caller);

impl CatalystCaller {
    fn from_req(req: &HttpRequest) -> Result<Self, Problem> {
        let token = req
            .headers()
            .get("x-auth-token")
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                Problem::unauthorized(
                    "missing X-Auth-Token: get one from POST /dna/system/api/v1/auth/token",
                )
            })?;
        let (mut caller, tok) = key(req)?
            .verify(token.trim(), now_secs())
            .ok_or_else(|| Problem::unauthorized("invalid or expired X-Auth-Token"))?;
        // A token dies with the API token it was issued against.
        let Some(now) = api_tokens(req)?.role_of_fingerprint(&tok) else {
            return Err(Problem::unauthorized(
                "X-Auth-Token was issued against an API token that is no longer configured",
            ));
        };
        // A token whose role was lowered since keeps only the lower role.
        caller.role = caller.role.min(now);
        Ok(Self(caller))
    }

    pub fn require(&self, role: Role) -> Result<&Caller, Problem> {
        self.0.require(role)?;
        Ok(&self.0)
    }
}

impl FromRequest for CatalystCaller {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::from_req(req))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_verify_only_when_signed_and_fresh() {
        let k = TokenKey::from_secret("0123456789abcdef0123");
        let t = k.issue(Role::Operator, "operator-2", "00aa", 1000);
        let (c, tok) = k.verify(&t, 999).unwrap();
        assert_eq!(
            (c.role, c.name.as_str(), tok.as_str()),
            (Role::Operator, "operator-2", "00aa")
        );
        assert!(k.verify(&t, 1000).is_none(), "expired");
        assert!(
            TokenKey::from_secret("another-secret-key-xx")
                .verify(&t, 0)
                .is_none()
        );
        let (body, sig) = t.split_once('.').unwrap();
        let forged =
            URL_SAFE_NO_PAD.encode(br#"{"role":"admin","name":"operator-2","exp":9999999999}"#);
        assert!(k.verify(&format!("{forged}.{sig}"), 0).is_none());
        assert!(k.verify(body, 0).is_none());
    }
}
