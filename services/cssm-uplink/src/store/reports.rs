//! `uplink.reports`: every collected report, from pending through batched or exported to acked
//! or failed.

use super::schema::uplink::reports;
use chrono::{DateTime, Utc};
use diesel::dsl::{case_when, count_star, min};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a report stands on its way to CSSM.
    pub enum ReportState {
        Pending = "pending",
        Batched = "batched",
        Exported = "exported",
        Acked = "acked",
        Failed = "failed",
    }
}

/// Why a report of a completed batch failed when CSSM sent no ACK for its device.
pub const NO_ACK: &str = "CSSM returned no ACK for this device";

/// Reports of one event as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct NewReports {
    pub pid: Vec<String>,
    pub serial: Vec<String>,
    pub report_id: Vec<i64>,
    pub device: Vec<Uuid>,
    pub sa: Vec<String>,
    pub va: Vec<String>,
    pub body: Vec<Vec<u8>>,
}

/// Stores the reports as pending (a report already stored is left alone).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    cols: &NewReports,
    cycle: Option<Uuid>,
) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/insert_reports.sql"))
        .bind::<Array<Text>, _>(&cols.pid)
        .bind::<Array<Text>, _>(&cols.serial)
        .bind::<Array<BigInt>, _>(&cols.report_id)
        .bind::<Array<SqlUuid>, _>(&cols.device)
        .bind::<Nullable<SqlUuid>, _>(cycle)
        .bind::<Array<Text>, _>(&cols.sa)
        .bind::<Array<Text>, _>(&cols.va)
        .bind::<Array<Bytea>, _>(&cols.body)
        .execute(conn)
        .await
}

/// Pending reports of one smart/virtual account: how many, and since when.
#[derive(Debug, Clone, Queryable)]
pub struct PendingGroup {
    pub smart_account: String,
    pub virtual_account: String,
    pub n: i64,
    pub oldest: DateTime<Utc>,
}

/// Pending reports grouped by smart/virtual account.
pub async fn pending_groups(conn: &mut AsyncPgConnection) -> QueryResult<Vec<PendingGroup>> {
    reports::table
        .filter(reports::state.eq(ReportState::Pending))
        .group_by((reports::smart_account, reports::virtual_account))
        .select((
            reports::smart_account,
            reports::virtual_account,
            count_star(),
            // A group has at least one report, so a least `received_at`.
            min(reports::received_at).assume_not_null(),
        ))
        .load(conn)
        .await
}

/// A smart/virtual account with pending reports.
#[derive(Debug, Clone, Queryable)]
pub struct PendingAccount {
    pub smart_account: String,
    pub virtual_account: String,
}

/// Every smart/virtual account with pending reports, in name order.
pub async fn pending_accounts(conn: &mut AsyncPgConnection) -> QueryResult<Vec<PendingAccount>> {
    reports::table
        .filter(reports::state.eq(ReportState::Pending))
        .select((reports::smart_account, reports::virtual_account))
        .distinct()
        .order((reports::smart_account, reports::virtual_account))
        .load(conn)
        .await
}

/// A report's key and its device.
#[derive(Debug, Clone, QueryableByName)]
pub struct ReportKey {
    #[diesel(sql_type = Text)]
    pub udi_pid: String,
    #[diesel(sql_type = Text)]
    pub udi_serial: String,
    #[diesel(sql_type = BigInt)]
    pub report_id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
}

/// Locks up to `limit` pending reports of one account for the current transaction, by device
/// then report id; other formers skip them.
pub async fn claim_pending(
    conn: &mut AsyncPgConnection,
    smart_account: &str,
    virtual_account: &str,
    limit: i64,
) -> QueryResult<Vec<ReportKey>> {
    diesel::sql_query(include_str!("sql/claim_pending_reports.sql"))
        .bind::<Text, _>(smart_account)
        .bind::<Text, _>(virtual_account)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// Keys as the three columns the `unnest` statements take.
fn key_columns(keys: &[ReportKey]) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
    (
        keys.iter().map(|k| k.udi_pid.as_str()).collect(),
        keys.iter().map(|k| k.udi_serial.as_str()).collect(),
        keys.iter().map(|k| k.report_id).collect(),
    )
}

/// Sets the state and batch of the reports.
pub async fn mark(
    conn: &mut AsyncPgConnection,
    keys: &[ReportKey],
    state: ReportState,
    batch: Option<Uuid>,
) -> QueryResult<usize> {
    let (pid, serial, id) = key_columns(keys);
    diesel::sql_query(include_str!("sql/mark_reports.sql"))
        .bind::<Array<Text>, _>(pid)
        .bind::<Array<Text>, _>(serial)
        .bind::<Array<BigInt>, _>(id)
        .bind::<Text, _>(state)
        .bind::<Nullable<SqlUuid>, _>(batch)
        .execute(conn)
        .await
}

/// Marks the reports failed, with why.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    keys: &[ReportKey],
    error: &str,
) -> QueryResult<usize> {
    let (pid, serial, id) = key_columns(keys);
    diesel::sql_query(include_str!("sql/fail_reports.sql"))
        .bind::<Array<Text>, _>(pid)
        .bind::<Array<Text>, _>(serial)
        .bind::<Array<BigInt>, _>(id)
        .bind::<Text, _>(error)
        .execute(conn)
        .await
}

/// A report of a batch, with what is sent to CSSM.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = reports, check_for_backend(diesel::pg::Pg))]
pub struct BatchReport {
    pub udi_pid: String,
    pub udi_serial: String,
    pub report_id: i64,
    pub device_id: Uuid,
    pub cycle_id: Option<Uuid>,
    pub body: Vec<u8>,
}

impl BatchReport {
    pub fn key(&self) -> ReportKey {
        ReportKey {
            udi_pid: self.udi_pid.clone(),
            udi_serial: self.udi_serial.clone(),
            report_id: self.report_id,
            device_id: self.device_id,
        }
    }
}

/// The reports of a batch (online or exported), by device then report id.
pub async fn of_batch(conn: &mut AsyncPgConnection, batch: Uuid) -> QueryResult<Vec<BatchReport>> {
    reports::table
        .filter(reports::batch_id.eq(batch))
        .order((reports::device_id, reports::report_id))
        .select(BatchReport::as_select())
        .load(conn)
        .await
}

/// Settles the reports of a completed batch: those of `acked` devices are acked, the others
/// failed for want of an ACK.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    batch: Uuid,
    acked: &[Uuid],
) -> QueryResult<usize> {
    let is_acked = reports::device_id.eq_any(acked);
    diesel::update(reports::table.filter(reports::batch_id.eq(batch)))
        .set((
            reports::state.eq(
                case_when::<_, _, Text>(is_acked.clone(), ReportState::Acked)
                    .otherwise(ReportState::Failed),
            ),
            reports::error
                .eq(case_when::<_, _, Nullable<Text>>(is_acked, None::<&str>)
                    .otherwise(Some(NO_ACK))),
        ))
        .execute(conn)
        .await
}

/// Puts every pending report of one account into export `batch`.
pub async fn export_pending(
    conn: &mut AsyncPgConnection,
    smart_account: &str,
    virtual_account: &str,
    batch: Uuid,
) -> QueryResult<usize> {
    diesel::update(
        reports::table
            .filter(reports::state.eq(ReportState::Pending))
            .filter(reports::smart_account.eq(smart_account))
            .filter(reports::virtual_account.eq(virtual_account)),
    )
    .set((
        reports::state.eq(ReportState::Exported),
        reports::batch_id.eq(batch),
    ))
    .execute(conn)
    .await
}

/// An exported report waiting for its ACK.
#[derive(Debug, Clone, Queryable)]
pub struct Exported {
    pub device_id: Uuid,
    pub batch_id: Uuid,
    pub report_id: i64,
}

/// The exported reports of `devices`.
pub async fn exported_of(
    conn: &mut AsyncPgConnection,
    devices: &[Uuid],
) -> QueryResult<Vec<Exported>> {
    reports::table
        .filter(reports::state.eq(ReportState::Exported))
        .filter(reports::device_id.eq_any(devices))
        .select((
            reports::device_id,
            // Exported reports always carry their export's id.
            reports::batch_id.assume_not_null(),
            reports::report_id,
        ))
        .load(conn)
        .await
}

/// Puts the failed reports of `batch` back to pending, out of the batch; returns how many.
pub async fn requeue_failed(conn: &mut AsyncPgConnection, batch: Uuid) -> QueryResult<usize> {
    diesel::update(
        reports::table
            .filter(reports::batch_id.eq(batch))
            .filter(reports::state.eq(ReportState::Failed)),
    )
    .set((
        reports::state.eq(ReportState::Pending),
        reports::batch_id.eq(None::<Uuid>),
        reports::error.eq(None::<&str>),
    ))
    .execute(conn)
    .await
}

/// Puts every exported report back to pending (its ACK bundle is lost); returns how many.
pub async fn requeue_exported(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::update(reports::table.filter(reports::state.eq(ReportState::Exported)))
        .set((
            reports::state.eq(ReportState::Pending),
            reports::batch_id.eq(None::<Uuid>),
        ))
        .execute(conn)
        .await
}

/// How many reports are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: i64,
    pub batched: i64,
    pub exported: i64,
    pub acked: i64,
    pub failed: i64,
}

/// Reports by state, in one scan.
pub async fn counts(conn: &mut AsyncPgConnection) -> QueryResult<Counts> {
    let rows: Vec<(ReportState, i64)> = reports::table
        .group_by(reports::state)
        .select((reports::state, count_star()))
        .load(conn)
        .await?;
    let mut c = Counts::default();
    for (state, n) in rows {
        *match state {
            ReportState::Pending => &mut c.pending,
            ReportState::Batched => &mut c.batched,
            ReportState::Exported => &mut c.exported,
            ReportState::Acked => &mut c.acked,
            ReportState::Failed => &mut c.failed,
        } = n;
    }
    Ok(c)
}
