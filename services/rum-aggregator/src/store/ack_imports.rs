//! `rum.ack_imports`: the durable queue of ACKs to install on devices.

use super::schema::rum::ack_imports;
use super::{Page, Scope};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where an ACK's installation on its device stands.
    pub enum AckImportState { Pending = "pending", Ok = "ok", Failed = "failed" }
}

tally_store::text_enum! {
    /// What reading the device back after an import showed.
    pub enum Confirmation {
        /// The device's last ACK received moved: it took the ACK.
        Confirmed = "confirmed",
        /// Delivered (2xx), but the device's state could not be read (no RESTCONF, or the read
        /// failed): not known to have taken it, not known not to.
        Unconfirmed = "unconfirmed",
        /// The device answered 2xx but its last ACK received did not move (the import failed).
        NotApplied = "not_applied",
    }
}

/// One import's outcome, for [`finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub id: Uuid,
    pub state: AckImportState,
    pub error: Option<String>,
    pub confirmation: Option<Confirmation>,
    pub confirmation_reason: Option<String>,
    pub ack_received_before: Option<DateTime<Utc>>,
    pub ack_received_after: Option<DateTime<Utc>>,
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

/// Records each import's outcome and read-back, and counts the attempt.
pub async fn finish(conn: &mut AsyncPgConnection, done: &[Finished]) -> QueryResult<usize> {
    let col = |f: fn(&Finished) -> Option<String>| done.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&Finished) -> Option<DateTime<Utc>>| done.iter().map(f).collect::<Vec<_>>();
    diesel::sql_query(include_str!("sql/finish_ack_imports.sql"))
        .bind::<Array<SqlUuid>, _>(done.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(done.iter().map(|d| d.state).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(col(|d| d.error.clone()))
        .bind::<Array<Nullable<Text>>, _>(done.iter().map(|d| d.confirmation).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(col(|d| d.confirmation_reason.clone()))
        .bind::<Array<Nullable<Timestamptz>>, _>(time(|d| d.ack_received_before))
        .bind::<Array<Nullable<Timestamptz>>, _>(time(|d| d.ack_received_after))
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
    pub confirmation: Option<Confirmation>,
    pub confirmation_reason: Option<String>,
    pub ack_received_before: Option<DateTime<Utc>>,
    pub ack_received_after: Option<DateTime<Utc>>,
}

/// Imports in `scope` (and `state`, and read-back `confirmation`), newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    state: Option<AckImportState>,
    confirmation: Option<Confirmation>,
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
    if let Some(k) = confirmation {
        q = q.filter(ack_imports::confirmation.eq(k));
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
