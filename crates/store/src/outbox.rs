//! Transactional outbox and inbox, one pair of tables per service schema.
//!
//! A service writes its state change and the event in one transaction (`enqueue`); a relay
//! publishes outbox rows to JetStream with `Nats-Msg-Id` = the row's id and deletes them after the
//! stream acknowledged them. Consumers record each message id in their inbox in the same
//! transaction as their work (`claim`), so a redelivered message changes nothing.

use diesel::sql_types::{Bytea, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// The Postgres schema a service owns. Only these names are ever put into SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Inventory,
    Rum,
    Uplink,
    Tiers,
    Sched,
}

impl Schema {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Rum => "rum",
            Self::Uplink => "uplink",
            Self::Tiers => "tiers",
            Self::Sched => "sched",
        }
    }
}

/// Adds an event to the schema's outbox; call inside the transaction that makes the change.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    subject: &str,
    payload: &[u8],
) -> Result<Uuid, diesel::result::Error> {
    let id = Uuid::now_v7();
    diesel::sql_query(format!(
        "INSERT INTO {}.outbox (id, subject, payload) VALUES ($1, $2, $3)",
        schema.as_str()
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(subject)
    .bind::<Bytea, _>(payload)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(diesel::QueryableByName, Debug)]
pub struct OutboxRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Bytea)]
    pub payload: Vec<u8>,
}

/// Locks up to `limit` of the oldest rows (other relays skip them) for the current transaction.
pub async fn lock_batch(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    limit: i64,
) -> Result<Vec<OutboxRow>, diesel::result::Error> {
    diesel::sql_query(format!(
        "SELECT id, subject, payload FROM {}.outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        schema.as_str()
    ))
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}

pub async fn delete(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    ids: &[Uuid],
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(format!(
        "DELETE FROM {}.outbox WHERE id = ANY($1)",
        schema.as_str()
    ))
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .execute(conn)
    .await
}

/// Records `msg_id` as processed. False when it already was: the caller skips its work.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    msg_id: &str,
) -> Result<bool, diesel::result::Error> {
    let n = diesel::sql_query(format!(
        "INSERT INTO {}.inbox (msg_id) VALUES ($1) ON CONFLICT DO NOTHING",
        schema.as_str()
    ))
    .bind::<Text, _>(msg_id)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// An async closure over the connection whose future is `Send` (what `AsyncFnOnce` alone
/// cannot say); as diesel-async's transaction asks of its callback.
pub trait Work<C, R>: AsyncFnOnce(C) -> R + FnOnce(C) -> <Self as Work<C, R>>::Fut {
    type Fut: Future<Output = R>;
}

impl<F, C, Fut, R> Work<C, R> for F
where
    F: AsyncFnOnce(C) -> R + FnOnce(C) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Runs `work` exactly once per `msg_id`: in one transaction that first claims the id in the
/// schema's inbox. `None` when the message was handled before (its work is skipped). A
/// redelivered message therefore never does its work twice, and work that fails claims nothing.
///
/// ```ignore
/// once(&mut conn, Schema::Rum, &msg_id, async |c| store::upsert(c, &ev).await).await?;
/// ```
pub async fn once<'a, R, E, F>(
    conn: &mut AsyncPgConnection,
    schema: Schema,
    msg_id: &str,
    work: F,
) -> Result<Option<R>, E>
where
    for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<R, E>
        + Work<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>
        + Send
        + 'a,
    E: From<diesel::result::Error> + Send + 'a,
    R: Send + 'a,
{
    use diesel_async::AsyncConnection;
    conn.transaction(async move |c| {
        if !claim(c, schema, msg_id).await? {
            return Ok(None);
        }
        work(c).await.map(Some)
    })
    .await
}
