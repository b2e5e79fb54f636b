//! `uplink.exports`: every offline usage bundle as it was downloaded, kept until its ACKs are in,
//! and the queries the offline ACK import runs on the reports and ACKs of exported batches.

use super::schema::uplink::{acks, batches, exports, reports};
use super::{BatchMode, BatchState, ReportState};
use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = exports, check_for_backend(diesel::pg::Pg))]
pub struct NewExport<'a> {
    pub id: Uuid,
    pub file_name: &'a str,
    pub smart_account: &'a str,
    pub bundle: &'a [u8],
    pub reports: i32,
    pub devices: i32,
    /// Nullable elements: how diesel maps a Postgres `text[]`.
    pub names_without_ids: Vec<Option<String>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, e: &NewExport<'_>) -> QueryResult<usize> {
    diesel::insert_into(exports::table)
        .values(e)
        .execute(conn)
        .await
}

/// Ties the batches (one per virtual account) to the export they went out in.
pub async fn link_batches(
    conn: &mut AsyncPgConnection,
    export: Uuid,
    batch_ids: &[Uuid],
) -> QueryResult<usize> {
    diesel::update(batches::table.filter(batches::id.eq_any(batch_ids)))
        .set(batches::export_id.eq(export))
        .execute(conn)
        .await
}

/// An export as listed (without its bytes).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = exports, check_for_backend(diesel::pg::Pg))]
pub struct ExportRow {
    pub id: Uuid,
    pub file_name: String,
    pub smart_account: String,
    pub reports: i32,
    pub devices: i32,
    pub created_at: DateTime<Utc>,
    pub names_without_ids: Vec<Option<String>>,
}

/// Every kept export, newest first.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<ExportRow>> {
    exports::table
        .select(ExportRow::as_select())
        .order(exports::created_at.desc())
        .load(conn)
        .await
}

/// Reports still waiting for their ACK, per export.
pub async fn waiting(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<(Uuid, i64)>> {
    reports::table
        .inner_join(batches::table.on(batches::id.nullable().eq(reports::batch_id)))
        .filter(batches::export_id.eq_any(ids))
        .filter(reports::state.eq(ReportState::Exported))
        .group_by(batches::export_id)
        .select((batches::export_id.assume_not_null(), count_star()))
        .load(conn)
        .await
}

/// One export's file name and bytes.
pub async fn bundle(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<(String, Vec<u8>)>> {
    exports::table
        .find(id)
        .select((exports::file_name, exports::bundle))
        .first(conn)
        .await
        .optional()
}

/// Drops the exports none of whose reports wait for an ACK any more.
pub async fn drop_answered(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    let still: Vec<Uuid> = waiting(conn, ids)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    diesel::delete(
        exports::table
            .filter(exports::id.eq_any(ids))
            .filter(exports::id.ne_all(still)),
    )
    .execute(conn)
    .await
}

/// An exported report waiting for its ACK, with the export and batch it went out in.
#[derive(Debug, Clone, Queryable)]
pub struct Waiting {
    pub device_id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub batch_id: Uuid,
    pub export_id: Option<Uuid>,
}

/// Exported reports waiting for an ACK of the devices named by id or by UDI, oldest export first.
pub async fn waiting_of(
    conn: &mut AsyncPgConnection,
    devices: &[Uuid],
    serials: &[String],
) -> QueryResult<Vec<Waiting>> {
    reports::table
        .inner_join(batches::table.on(batches::id.nullable().eq(reports::batch_id)))
        .filter(reports::state.eq(ReportState::Exported))
        .filter(
            reports::device_id
                .eq_any(devices)
                .or(reports::udi_serial.eq_any(serials)),
        )
        .order((batches::created_at.asc(), reports::report_id.asc()))
        .select((
            reports::device_id,
            reports::udi_pid,
            reports::udi_serial,
            batches::id,
            batches::export_id,
        ))
        .load(conn)
        .await
}

/// The devices among `devices` that already have an ACK recorded from an offline batch.
pub async fn acked_offline(
    conn: &mut AsyncPgConnection,
    devices: &[Uuid],
) -> QueryResult<Vec<Uuid>> {
    acks::table
        .inner_join(batches::table.on(batches::id.eq(acks::batch_id)))
        .filter(batches::mode.eq(BatchMode::Offline))
        .filter(acks::device_id.eq_any(devices))
        .select(acks::device_id)
        .distinct()
        .load(conn)
        .await
}

/// Devices (by UDI serial) that already have an ACK recorded from an offline batch.
pub async fn acked_offline_serials(
    conn: &mut AsyncPgConnection,
    serials: &[String],
) -> QueryResult<Vec<(String, String)>> {
    reports::table
        .filter(reports::udi_serial.eq_any(serials))
        .filter(reports::state.eq(ReportState::Acked))
        .inner_join(batches::table.on(batches::id.nullable().eq(reports::batch_id)))
        .filter(batches::mode.eq(BatchMode::Offline))
        .select((reports::udi_pid, reports::udi_serial))
        .distinct()
        .load(conn)
        .await
}

/// Marks the exported reports of `devices` in `batch` acked; returns how many.
pub async fn ack_reports(
    conn: &mut AsyncPgConnection,
    batch: Uuid,
    devices: &[Uuid],
) -> QueryResult<usize> {
    diesel::update(
        reports::table
            .filter(reports::batch_id.eq(batch))
            .filter(reports::device_id.eq_any(devices))
            .filter(reports::state.eq(ReportState::Exported)),
    )
    .set((
        reports::state.eq(ReportState::Acked),
        reports::error.eq(None::<&str>),
    ))
    .execute(conn)
    .await
}

/// How many reports of `batch` still wait for an ACK.
pub async fn waiting_in_batch(conn: &mut AsyncPgConnection, batch: Uuid) -> QueryResult<i64> {
    reports::table
        .filter(reports::batch_id.eq(batch))
        .filter(reports::state.eq(ReportState::Exported))
        .count()
        .get_result(conn)
        .await
}

/// Puts the reports of one export that still wait for an ACK back to pending, and fails its
/// batches that were still exported; drops the export. Returns how many reports, or `None` when
/// no such export is kept.
pub async fn requeue(conn: &mut AsyncPgConnection, export: Uuid) -> QueryResult<Option<usize>> {
    let exists: i64 = exports::table
        .filter(exports::id.eq(export))
        .count()
        .get_result(conn)
        .await?;
    if exists == 0 {
        return Ok(None);
    }
    let batch_ids: Vec<Uuid> = batches::table
        .filter(batches::export_id.eq(export))
        .select(batches::id)
        .load(conn)
        .await?;
    let n = diesel::update(
        reports::table
            .filter(reports::batch_id.eq_any(&batch_ids))
            .filter(reports::state.eq(ReportState::Exported)),
    )
    .set((
        reports::state.eq(ReportState::Pending),
        reports::batch_id.eq(None::<Uuid>),
    ))
    .execute(conn)
    .await?;
    diesel::update(
        batches::table
            .filter(batches::id.eq_any(&batch_ids))
            .filter(batches::state.eq(BatchState::Exported)),
    )
    .set((
        batches::state.eq(BatchState::Failed),
        batches::error.eq("requeued by operator"),
        batches::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    diesel::delete(exports::table.find(export))
        .execute(conn)
        .await?;
    Ok(Some(n))
}

/// Drops every kept export (the operator put all exported reports back in line).
pub async fn delete_all(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(exports::table).execute(conn).await
}
