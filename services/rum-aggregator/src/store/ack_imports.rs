//! `rum.ack_imports`: the durable queue of ACKs to install on devices.

use super::schema::rum::ack_imports;
use super::{Page, Scope};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where an ACK's installation on its device stands.
    pub enum AckImportState { Pending = "pending", Ok = "ok", Failed = "failed" }
}

/// ACKs to queue, as columns for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct NewImports {
    pub id: Vec<Uuid>,
    pub device: Vec<Uuid>,
    pub cycle: Vec<Option<Uuid>>,
    /// Each ACK's report ids joined by `,`: Postgres arrays of arrays must be rectangular, so
    /// they travel as text and SQL casts them.
    pub report_ids: Vec<String>,
    pub ack: Vec<String>,
}

/// Queues the ACKs, pending.
pub async fn enqueue(conn: &mut AsyncPgConnection, new: &NewImports) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/enqueue_ack_imports.sql"))
        .bind::<Array<SqlUuid>, _>(&new.id)
        .bind::<Array<SqlUuid>, _>(&new.device)
        .bind::<Array<Nullable<SqlUuid>>, _>(&new.cycle)
        .bind::<Array<Text>, _>(&new.report_ids)
        .bind::<Array<Text>, _>(&new.ack)
        .execute(conn)
        .await
}

/// A pending import with what is needed to reach its device (`None` when it is not in the
/// inventory any more).
#[derive(QueryableByName, Debug)]
pub struct ImportJob {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub cycle_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub ack: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub base_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub username: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub password_sealed: Option<String>,
}

/// Locks up to `limit` of the oldest pending imports for the current transaction; other workers
/// skip them.
pub async fn claim_slice(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<ImportJob>> {
    diesel::sql_query(include_str!("sql/claim_ack_imports.sql"))
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// Records each import's outcome (same order in the three slices) and counts the attempt.
pub async fn finish(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    states: &[AckImportState],
    errors: &[Option<String>],
) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/finish_ack_imports.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Text>, _>(states)
        .bind::<Array<Nullable<Text>>, _>(errors)
        .execute(conn)
        .await
}

/// An ACK handed (or to hand) to a device, with its outcome.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ack_imports, check_for_backend(diesel::pg::Pg))]
pub struct AckImportRow {
    pub id: Uuid,
    pub device_id: Uuid,
    pub cycle_id: Option<Uuid>,
    /// Never holds NULLs (they are cast from report ids); the column type allows them.
    pub report_ids: Vec<Option<i64>>,
    pub state: AckImportState,
    pub error: Option<String>,
    pub attempts: i32,
    pub ack: String,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Imports in `scope` (and `state`), newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    state: Option<AckImportState>,
    page: Page,
) -> QueryResult<Vec<AckImportRow>> {
    let mut q = ack_imports::table
        .select(AckImportRow::as_select())
        .into_boxed();
    if let Some(d) = scope.device_id {
        q = q.filter(ack_imports::device_id.eq(d));
    }
    if let Some(c) = scope.cycle_id {
        q = q.filter(ack_imports::cycle_id.eq(c));
    }
    if let Some(s) = state {
        q = q.filter(ack_imports::state.eq(s));
    }
    q.order(ack_imports::created_at.desc())
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}

/// Makes failed imports (of one cycle, or all) pending again; returns how many.
pub async fn retry_failed(conn: &mut AsyncPgConnection, cycle: Option<Uuid>) -> QueryResult<usize> {
    let mut q = diesel::update(ack_imports::table)
        .set(ack_imports::state.eq(AckImportState::Pending))
        .filter(ack_imports::state.eq(AckImportState::Failed))
        .into_boxed();
    if let Some(c) = cycle {
        q = q.filter(ack_imports::cycle_id.eq(c));
    }
    q.execute(conn).await
}
