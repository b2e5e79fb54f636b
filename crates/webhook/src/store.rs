//! Every query of the webhook tables: endpoint CRUD, enqueue inside the caller's transaction, the
//! deliverer's claims and outcomes, and the dead-letter listing and requeue.
//!
//! The tables live in the caller's schema, so statements name it in their text: [`Schema`] is
//! checked to be a plain identifier once, and every value is a bind.

use crate::{Schema, WebhookError};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Double, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use tally_platform::SecretBox;
use tally_store::PgConn;
use uuid::Uuid;

pub const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 256;
const MAX_URL_LEN: usize = 2048;
const MAX_KIND_LEN: usize = 64;

/// Access to the webhook tables of one schema; holds the key that seals and opens secrets.
#[derive(Debug, Clone)]
pub struct Webhooks {
    schema: Schema,
    secrets: SecretBox,
}

/// What an operator registers. `secret` is the HMAC key (at least 16 characters) the receiver
/// shares; it is sealed at rest and never returned.
#[derive(Clone)]
pub struct NewWebhook {
    pub url: String,
    pub secret: String,
    pub description: String,
    /// Event kinds to receive; empty means all.
    pub events: Vec<String>,
    pub enabled: bool,
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("secret", &"..")
            .field("description", &self.description)
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A registered webhook, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct Webhook {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub description: String,
    #[diesel(sql_type = Array<Text>)]
    pub events: Vec<String>,
    #[diesel(sql_type = Bool)]
    pub enabled: bool,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

tally_store::text_enum! {
    /// Where a delivery stands (the table's CHECK constraint allows exactly these).
    pub enum DeliveryState {
        Pending = "pending",
        Delivered = "delivered",
        /// Gave up after the configured attempts; kept with its last status and error until
        /// requeued.
        Dead = "dead",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub kind: String,
    /// The body sent, as JSON.
    pub payload: serde_json::Value,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct DeliveryRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    event_id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
    #[diesel(sql_type = Text)]
    state: DeliveryState,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Int4>)]
    last_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    delivered_at: Option<DateTime<Utc>>,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Self {
            id: r.id,
            webhook_id: r.webhook_id,
            event_id: r.event_id,
            kind: r.kind,
            payload: serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null),
            state: r.state,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        }
    }
}

/// A due delivery claimed by a deliverer, with where and how to send it.
#[derive(QueryableByName)]
pub(crate) struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub webhook_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub event_id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Bytea)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub secret_sealed: String,
}

/// A failed attempt as recorded: pending again after `wait_secs`, or dead.
pub(crate) struct Failure<'a> {
    pub state: DeliveryState,
    pub wait_secs: f64,
    pub status: Option<i32>,
    pub error: &'a str,
}

fn check_url(url: &str) -> Result<(), WebhookError> {
    let bad = |r: &str| WebhookError::invalid("url", r);
    if url.len() > MAX_URL_LEN {
        return Err(bad("longer than 2048 characters"));
    }
    let u = reqwest::Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("needs a host"));
    }
    // Credentials in the URL would sit unsealed in the table and in listings.
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "must not carry user:password; the receiver authenticates the signature",
        ));
    }
    Ok(())
}

/// Event kinds travel in a header, so they stay to a safe token alphabet.
fn check_kind(field: &'static str, kind: &str) -> Result<(), WebhookError> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(WebhookError::invalid(
            field,
            "event kinds are 1-64 characters of letters, digits and . _ - :",
        ))
    }
}

impl Webhooks {
    pub fn new(schema: Schema, secrets: SecretBox) -> Self {
        Self { schema, secrets }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(crate) fn open_secret(&self, sealed: &str) -> Result<String, WebhookError> {
        Ok(self.secrets.open(sealed)?)
    }

    fn s(&self) -> &str {
        self.schema.as_str()
    }

    /// Registers a webhook after checking the URL (http/https with a host), the secret's length
    /// and the event kinds.
    pub async fn create(
        &self,
        conn: &mut PgConn,
        new: NewWebhook,
    ) -> Result<Webhook, WebhookError> {
        check_url(&new.url)?;
        let secret_chars = new.secret.chars().count();
        if secret_chars < MIN_SECRET_LEN {
            return Err(WebhookError::invalid(
                "secret",
                format!("must be at least {MIN_SECRET_LEN} characters"),
            ));
        }
        if secret_chars > MAX_SECRET_LEN {
            return Err(WebhookError::invalid(
                "secret",
                format!("must be at most {MAX_SECRET_LEN} characters"),
            ));
        }
        for k in &new.events {
            check_kind("events", k)?;
        }
        let sealed = self.secrets.seal(&new.secret)?;
        let rows: Vec<Webhook> = diesel::sql_query(format!(
            "INSERT INTO {}.webhooks (id, url, secret_sealed, description, events, enabled)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, url, description, events, enabled, created_at",
            self.s()
        ))
        .bind::<SqlUuid, _>(Uuid::now_v7())
        .bind::<Text, _>(&new.url)
        .bind::<Text, _>(&sealed)
        .bind::<Text, _>(&new.description)
        .bind::<Array<Text>, _>(&new.events)
        .bind::<Bool, _>(new.enabled)
        .load(conn)
        .await?;
        rows.into_iter()
            .next()
            .ok_or(WebhookError::Db(diesel::result::Error::NotFound))
    }

    pub async fn list(&self, conn: &mut PgConn) -> Result<Vec<Webhook>, WebhookError> {
        Ok(diesel::sql_query(format!(
            "SELECT id, url, description, events, enabled, created_at
             FROM {}.webhooks ORDER BY created_at, id",
            self.s()
        ))
        .load(conn)
        .await?)
    }

    /// Pauses or resumes a webhook. A paused one gets no new deliveries and its pending ones wait.
    pub async fn set_enabled(
        &self,
        conn: &mut PgConn,
        id: Uuid,
        enabled: bool,
    ) -> Result<bool, WebhookError> {
        let n = diesel::sql_query(format!(
            "UPDATE {}.webhooks SET enabled = $2 WHERE id = $1",
            self.s()
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<Bool, _>(enabled)
        .execute(conn)
        .await?;
        Ok(n == 1)
    }

    /// Deletes a webhook and its deliveries; false when it did not exist.
    pub async fn delete(&self, conn: &mut PgConn, id: Uuid) -> Result<bool, WebhookError> {
        let n = diesel::sql_query(format!("DELETE FROM {}.webhooks WHERE id = $1", self.s()))
            .bind::<SqlUuid, _>(id)
            .execute(conn)
            .await?;
        Ok(n == 1)
    }

    /// Queues `event_id` for every enabled webhook whose filter takes `kind`; returns how many
    /// deliveries were added. Call it in the transaction that records the event: both commit or
    /// neither does. An event id already queued for a webhook adds nothing, so replays are safe.
    ///
    /// The body sent is `{"id", "type", "created_at", "data": payload}`, fixed here once.
    pub async fn enqueue(
        &self,
        conn: &mut PgConn,
        event_id: Uuid,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<usize, WebhookError> {
        check_kind("kind", kind)?;
        let body = serde_json::to_vec(&serde_json::json!({
            "id": event_id,
            "type": kind,
            "created_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": payload,
        }))
        .map_err(|e| WebhookError::invalid("payload", e.to_string()))?;
        let n = diesel::sql_query(format!(
            "INSERT INTO {s}.webhook_deliveries (id, webhook_id, event_id, kind, payload)
             SELECT gen_random_uuid(), w.id, $1, $2, $3 FROM {s}.webhooks w
             WHERE w.enabled AND (cardinality(w.events) = 0 OR $2 = ANY (w.events))
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            s = self.s()
        ))
        .bind::<SqlUuid, _>(event_id)
        .bind::<Text, _>(kind)
        .bind::<Bytea, _>(&body)
        .execute(conn)
        .await?;
        Ok(n)
    }

    /// Deliveries, newest first, optionally only those in `state` (e.g. the dead letters).
    pub async fn deliveries(
        &self,
        conn: &mut PgConn,
        state: Option<DeliveryState>,
        limit: i64,
    ) -> Result<Vec<Delivery>, WebhookError> {
        let rows: Vec<DeliveryRow> = diesel::sql_query(format!(
            "SELECT id, webhook_id, event_id, kind, payload, state, attempts, next_attempt_at,
                    last_status, last_error, created_at, delivered_at
             FROM {}.webhook_deliveries
             WHERE $1::text IS NULL OR state = $1
             ORDER BY created_at DESC, id DESC LIMIT $2",
            self.s()
        ))
        .bind::<Nullable<Text>, _>(state)
        .bind::<BigInt, _>(limit.clamp(1, 1000))
        .load(conn)
        .await?;
        Ok(rows.into_iter().map(Delivery::from).collect())
    }

    /// One delivery by id.
    pub async fn delivery(
        &self,
        conn: &mut PgConn,
        id: Uuid,
    ) -> Result<Option<Delivery>, WebhookError> {
        let rows: Vec<DeliveryRow> = diesel::sql_query(format!(
            "SELECT id, webhook_id, event_id, kind, payload, state, attempts, next_attempt_at,
                    last_status, last_error, created_at, delivered_at
             FROM {}.webhook_deliveries WHERE id = $1",
            self.s()
        ))
        .bind::<SqlUuid, _>(id)
        .load(conn)
        .await?;
        Ok(rows.into_iter().next().map(Delivery::from))
    }

    /// Requeues a dead delivery with a fresh set of attempts; false when it is not dead (pending
    /// or delivered ones are left alone so a click cannot double-send).
    pub async fn redeliver(&self, conn: &mut PgConn, id: Uuid) -> Result<bool, WebhookError> {
        let n = diesel::sql_query(format!(
            "UPDATE {}.webhook_deliveries
             SET state = 'pending', attempts = 0, next_attempt_at = now(), claim = NULL
             WHERE id = $1 AND state = 'dead'",
            self.s()
        ))
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await?;
        Ok(n == 1)
    }

    /// Claims up to `batch` due deliveries of enabled webhooks in one statement: counts the
    /// attempt, sets the `claim` token, and leases each row for `lease_secs` so other workers
    /// skip it while it is in flight.
    pub(crate) async fn claim_due(
        &self,
        conn: &mut PgConn,
        batch: i64,
        claim: Uuid,
        lease_secs: f64,
    ) -> Result<Vec<Claimed>, WebhookError> {
        Ok(diesel::sql_query(format!(
            include_str!("sql/claim_deliveries.sql"),
            s = self.s()
        ))
        .bind::<BigInt, _>(batch)
        .bind::<SqlUuid, _>(claim)
        .bind::<Double, _>(lease_secs)
        .load(conn)
        .await?)
    }

    /// Records a delivered attempt; 0 when `claim` no longer holds the row (a late result).
    pub(crate) async fn record_delivered(
        &self,
        conn: &mut PgConn,
        id: Uuid,
        claim: Uuid,
        status: Option<i32>,
    ) -> Result<usize, WebhookError> {
        Ok(diesel::sql_query(format!(
            "UPDATE {s}.webhook_deliveries
             SET state = 'delivered', delivered_at = now(), last_status = $3,
                 last_error = NULL, claim = NULL
             WHERE id = $1 AND claim = $2",
            s = self.s()
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(claim)
        .bind::<Nullable<Int4>, _>(status)
        .execute(conn)
        .await?)
    }

    /// Records a failed attempt; 0 when `claim` no longer holds the row (a late result).
    pub(crate) async fn record_failed(
        &self,
        conn: &mut PgConn,
        id: Uuid,
        claim: Uuid,
        f: &Failure<'_>,
    ) -> Result<usize, WebhookError> {
        Ok(diesel::sql_query(format!(
            "UPDATE {s}.webhook_deliveries
             SET state = $3, next_attempt_at = now() + make_interval(secs => $4),
                 last_status = $5, last_error = $6, claim = NULL
             WHERE id = $1 AND claim = $2",
            s = self.s()
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(claim)
        .bind::<Text, _>(f.state)
        .bind::<Double, _>(f.wait_secs)
        .bind::<Nullable<Int4>, _>(f.status)
        .bind::<Text, _>(f.error)
        .execute(conn)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.example.com/tally").is_ok());
        assert!(check_url("http://10.0.0.5:8080/x?y=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "example.com/hook",
            "https://",
            "https://user:pw@example.com/",
            "javascript:alert(1)",
        ] {
            match check_url(bad) {
                Err(WebhookError::Invalid { field: "url", .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn kinds_are_header_safe_tokens() {
        assert!(check_kind("kind", "ack_deadline.7d").is_ok());
        assert!(check_kind("kind", "").is_err());
        assert!(check_kind("kind", "a\r\nX-Evil: 1").is_err());
        assert!(check_kind("kind", &"a".repeat(65)).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let n = NewWebhook {
            url: "https://x".into(),
            secret: "super-secret-value-123".into(),
            description: String::new(),
            events: vec![],
            enabled: true,
        };
        assert!(!format!("{n:?}").contains("super-secret"));
    }
}
