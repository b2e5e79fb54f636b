//! Webhooks for alerts: HMAC-signed POSTs, retried with backoff, dead-lettered after N attempts,
//! one delivery per (webhook, event).
//!
//! The queue lives in Postgres, in the caller's schema (tables `<schema>.webhooks` and
//! `<schema>.webhook_deliveries`). [`Webhooks::enqueue`] runs inside the caller's transaction, so
//! an alert and its deliveries commit together (the outbox pattern); a [`Deliverer`] on each replica
//! claims due rows with `FOR UPDATE SKIP LOCKED` and a lease, so replicas never send the same
//! attempt twice and a crash mid-attempt only delays a retry. Delivery is at least once: receivers
//! deduplicate by `X-Tally-Event-Id`. See [`signature`] for what receivers check.

mod deliver;
pub mod signature;
mod store;

pub use deliver::{Deliverer, DeliveryConfig, backoff};
pub use signature::{SignatureError, sign, verify_signature, verify_signature_at};
pub use store::{Delivery, DeliveryState, NewWebhook, Webhook, Webhooks};

/// A Postgres schema name, checked once because it is spliced into SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    pub fn new(name: &str) -> Result<Self, WebhookError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(WebhookError::invalid(
                "schema",
                "must be a lowercase SQL identifier",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Bad input; `field` names what to fix (a 422 validation problem at the API edge).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("webhook secret: {0}")]
    Secret(#[from] tally_platform::secret::SecretError),
    #[error("http client: {0}")]
    Client(String),
}

/// At the API edge: bad input is a validation problem naming the field; anything else is an
/// internal error (logged, not shown).
impl From<WebhookError> for tally_platform::Problem {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid { field, reason } => {
                Self::validation(vec![tally_platform::FieldError {
                    field: field.into(),
                    message: reason,
                }])
            }
            other => Self::internal(other),
        }
    }
}

impl WebhookError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(Schema::new("sched").is_ok());
        assert!(Schema::new("_x9").is_ok());
        for bad in ["", "9a", "Sched", "sched.x", "s; DROP TABLE x", "a\"b"] {
            assert!(Schema::new(bad).is_err(), "{bad}");
        }
    }
}
