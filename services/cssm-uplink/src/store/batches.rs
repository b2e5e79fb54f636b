//! `uplink.batches`: one row per reportusage upload (online) or exported bundle part (offline).

use super::schema::uplink::batches;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Int4, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tally_platform::Page;
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a batch stands: online ones go `new`, `polling`, then `complete` or `failed`;
    /// offline ones are `exported` until their ACKs come back.
    pub enum BatchState {
        New = "new",
        Polling = "polling",
        Complete = "complete",
        Failed = "failed",
        Exported = "exported",
    }
}

tally_store::text_enum! {
    /// How a batch travels to CSSM.
    pub enum BatchMode { Online = "online", Offline = "offline" }
}

tally_store::text_enum! {
    /// Why a batch's last CSSM call failed: a transient error keeps it in line (with backoff);
    /// a permanent one or a duplicate ends it; an unknown account waits for the account
    /// directory to learn it.
    pub enum ErrorClass {
        Transient = "transient",
        Permanent = "permanent",
        Duplicate = "duplicate",
        UnknownAccount = "unknown_account",
    }
}

/// Advisory lock key serialising batch forming ("uplink" in ASCII).
const FORM_LOCK: i64 = 0x75_70_6c_69_6e_6b;

/// Takes the forming lock until the transaction ends.
pub async fn lock_forming(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(include_str!("sql/lock_forming.sql"))
        .bind::<BigInt, _>(FORM_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// A batch as formed; attempts, times and errors take their defaults.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = batches, check_for_backend(diesel::pg::Pg))]
pub struct NewBatch<'a> {
    pub id: Uuid,
    pub mode: BatchMode,
    pub smart_account: &'a str,
    pub virtual_account: &'a str,
    pub nonce: &'a str,
    pub state: BatchState,
    pub reports: i32,
    pub devices: i32,
}

pub async fn insert(conn: &mut AsyncPgConnection, b: &NewBatch<'_>) -> QueryResult<usize> {
    diesel::insert_into(batches::table)
        .values(b)
        .execute(conn)
        .await
}

/// An online batch due to be sent or polled.
#[derive(QueryableByName, Debug)]
pub struct DueBatch {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Text)]
    pub nonce: String,
    #[diesel(sql_type = Text)]
    pub state: BatchState,
    #[diesel(sql_type = Nullable<Text>)]
    pub poll_id: Option<String>,
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub poll_id_numeric: bool,
}

/// Locks the online batch due first for the current transaction; other senders skip it.
pub async fn claim_due(conn: &mut AsyncPgConnection) -> QueryResult<Option<DueBatch>> {
    let due: Vec<DueBatch> = diesel::sql_query(include_str!("sql/claim_due_batch.sql"))
        .load(conn)
        .await?;
    Ok(due.into_iter().next())
}

/// Counts a failed CSSM call and waits until `next` to try again.
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &str,
    next: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::attempts.eq(batches::attempts + 1),
            batches::error.eq(error),
            batches::error_class.eq(ErrorClass::Transient),
            batches::next_attempt_at.eq(next),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// CSSM accepted the upload: poll `poll_id` from `next` on.
pub async fn accepted(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    poll_id: &str,
    poll_id_numeric: bool,
    next: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::state.eq(BatchState::Polling),
            batches::poll_id.eq(poll_id),
            batches::poll_id_numeric.eq(poll_id_numeric),
            batches::attempts.eq(0),
            batches::error.eq(None::<&str>),
            batches::error_class.eq(None::<ErrorClass>),
            batches::next_attempt_at.eq(next),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// CSSM has not finished: poll again at `next`.
pub async fn poll_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    next: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::attempts.eq(batches::attempts + 1),
            batches::next_attempt_at.eq(next),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// CSSM refused the batch.
pub async fn fail(conn: &mut AsyncPgConnection, id: Uuid, error: &str) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::state.eq(BatchState::Failed),
            batches::error.eq(error),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// The batch failed for good (`class` permanent or duplicate), with why.
pub async fn fail_as(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &str,
    class: ErrorClass,
) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::state.eq(BatchState::Failed),
            batches::error.eq(error),
            batches::error_class.eq(class),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// What an operator retry needs to know about a batch.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = batches, check_for_backend(diesel::pg::Pg))]
pub struct RetryCheck {
    pub state: BatchState,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub retried_at: Option<DateTime<Utc>>,
}

/// Locks batch `id` until the transaction ends; `None` when there is none.
pub async fn lock_for_retry(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<RetryCheck>> {
    batches::table
        .find(id)
        .select(RetryCheck::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The operator put the batch's reports back in line.
pub async fn mark_retried(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::retried_at.eq(diesel::dsl::now),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// The smart and virtual account of a batch.
pub async fn accounts(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(String, String)>> {
    batches::table
        .find(id)
        .select((batches::smart_account, batches::virtual_account))
        .first(conn)
        .await
        .optional()
}

/// The batch's ACKs are recorded.
pub async fn complete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(batches::table.find(id))
        .set((
            batches::state.eq(BatchState::Complete),
            batches::error.eq(None::<&str>),
            batches::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// Fails every exported batch, whose reports the operator put back in line.
pub async fn fail_exported(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::update(batches::table.filter(batches::state.eq(BatchState::Exported)))
        .set((
            batches::state.eq(BatchState::Failed),
            batches::error.eq("requeued by operator"),
        ))
        .execute(conn)
        .await
}

/// A batch as listed.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = batches, check_for_backend(diesel::pg::Pg))]
pub struct BatchRow {
    pub id: Uuid,
    pub mode: BatchMode,
    pub smart_account: String,
    pub virtual_account: String,
    pub state: BatchState,
    pub poll_id: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub reports: i32,
    pub devices: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Batches (in `state`), newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    state: Option<BatchState>,
    page: Page,
) -> QueryResult<Vec<BatchRow>> {
    let mut q = batches::table.select(BatchRow::as_select()).into_boxed();
    if let Some(s) = state {
        q = q.filter(batches::state.eq(s));
    }
    q.order(batches::created_at.desc())
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}
