//! Bearer tokens with roles. Tokens come from configuration (`TALLY_API_TOKENS=role:token,...`) and
//! are kept only as SHA-256 digests, compared in constant time.

use crate::Problem;
use actix_web::{
    Error, FromRequest, HttpMessage, HttpRequest,
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    web,
};
use sha2::{Digest, Sha256};
use std::future::{Ready, ready};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected admin, operator or viewer"
            )),
        }
    }
}

#[derive(Clone, Default)]
pub struct ApiTokens {
    entries: Vec<([u8; 32], Role, String)>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.entries.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ApiTokens {
    /// Parses `role:token[,role:token...]`. Tokens must be at least 16 characters.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, item) in spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let (role, token) = item
                .split_once(':')
                .ok_or_else(|| format!("API token entry {} is not role:token", i + 1))?;
            let role: Role = role.trim().parse()?;
            let token = token.trim();
            if token.len() < 16 {
                return Err(format!(
                    "API token entry {} ({role:?}) is shorter than 16 characters",
                    i + 1
                ));
            }
            entries.push((
                digest(token),
                role,
                format!("{role:?}-{}", i + 1).to_lowercase(),
            ));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A short public fingerprint of one of our tokens (8 bytes of its digest, hex), carried by
    /// credentials issued against it so that they die with it.
    pub fn fingerprint_of(&self, token: &str) -> Option<String> {
        let d = digest(token);
        self.entries
            .iter()
            .any(|(h, _, _)| *h == d)
            .then(|| hex::encode(&d[..8]))
    }

    /// The role the token with this fingerprint has now, if it is still configured.
    pub fn role_of_fingerprint(&self, fingerprint: &str) -> Option<Role> {
        self.entries
            .iter()
            .find(|(h, _, _)| hex::encode(&h[..8]) == fingerprint)
            .map(|(_, role, _)| *role)
    }

    /// The role of `token`, if it is one of ours.
    pub fn role_of(&self, token: &str) -> Option<(Role, String)> {
        // Digests are compared, not tokens: timing reveals nothing an attacker can steer.
        let d = digest(token);
        self.entries
            .iter()
            .find(|(h, _, _)| *h == d)
            .map(|(_, role, name)| (*role, name.clone()))
    }
}

/// The authenticated caller, put in request extensions by [`require_token`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    pub name: String,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), Problem> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this call needs the {role:?} role; the token has {:?}",
                self.role
            )))
        }
    }
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| Problem::unauthorized("missing bearer token")),
        )
    }
}

fn bearer(req: &ServiceRequest) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Middleware for a scope: every request needs a valid bearer token; reads need `viewer`, every
/// other method needs `operator` (handlers ask for `admin` where they must).
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let tokens = req
        .app_data::<web::Data<ApiTokens>>()
        .cloned()
        .ok_or_else(|| Error::from(Problem::internal("API tokens not configured")))?;
    let token = bearer(&req).ok_or_else(|| {
        Error::from(Problem::unauthorized(
            "missing bearer token: send Authorization: Bearer <token>",
        ))
    })?;
    let (role, name) = tokens
        .role_of(&token)
        .ok_or_else(|| Error::from(Problem::unauthorized("unknown or revoked token")))?;
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        Role::Viewer
    } else {
        Role::Operator
    };
    let caller = Caller { role, name };
    caller.require(needed)?;
    req.extensions_mut().insert(caller);
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_and_matches_tokens() {
        let t = ApiTokens::parse("admin:aaaaaaaaaaaaaaaa1, viewer:bbbbbbbbbbbbbbbb2").unwrap();
        assert_eq!(t.role_of("aaaaaaaaaaaaaaaa1").unwrap().0, Role::Admin);
        assert_eq!(t.role_of("bbbbbbbbbbbbbbbb2").unwrap().0, Role::Viewer);
        assert!(t.role_of("nope").is_none());
        assert!(ApiTokens::parse("root:aaaaaaaaaaaaaaaaaa").is_err());
        assert!(ApiTokens::parse("admin:short").is_err());
        assert!(ApiTokens::parse("admin").is_err());
    }
}
