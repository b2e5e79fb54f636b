//! `sched.cycles` with its per-stage counters, and each cycle's per-device ACK outcomes and
//! failures.

use super::sched::{cycle_failures, cycles};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Nullable, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Result<T> = std::result::Result<T, diesel::result::Error>;

tally_store::text_enum! {
    /// Where a cycle is.
    pub enum CycleState {
        Running = "running",
        Complete = "complete",
        CompleteWithErrors = "complete_with_errors",
    }
}

tally_store::text_enum! {
    /// The stage of a cycle a device failed.
    pub enum Stage { Collection = "collection", Upload = "upload", Ack = "ack" }
}

/// A cycle with its counters.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = cycles, check_for_backend(diesel::pg::Pg))]
pub struct CycleRow {
    pub id: Uuid,
    pub trigger: String,
    pub state: CycleState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub collection_started: bool,
    pub devices: i32,
    pub devices_ok: i32,
    pub devices_failed: i32,
    pub devices_with_reports: i32,
    pub reports_stored: i32,
    pub reports_quarantined: i32,
    pub reports_duplicate: i32,
    pub reports_uploaded: i32,
    pub reports_upload_failed: i32,
    pub devices_upload_failed: i32,
    pub batches: i32,
    pub acks_imported: i32,
    pub acks_failed: i32,
}

/// Cycles, newest first.
pub async fn list(c: &mut AsyncPgConnection, limit: i64, offset: i64) -> Result<Vec<CycleRow>> {
    cycles::table
        .order(cycles::started_at.desc())
        .limit(limit)
        .offset(offset)
        .select(CycleRow::as_select())
        .load(c)
        .await
}

pub async fn get(c: &mut AsyncPgConnection, id: Uuid) -> Result<Option<CycleRow>> {
    cycles::table
        .find(id)
        .select(CycleRow::as_select())
        .first(c)
        .await
        .optional()
}

/// When the cycle started.
pub async fn started_at(c: &mut AsyncPgConnection, id: Uuid) -> Result<Option<DateTime<Utc>>> {
    cycles::table
        .find(id)
        .select(cycles::started_at)
        .first(c)
        .await
        .optional()
}

/// The running cycle, oldest first, locked when `lock` (an on-demand start waits for a
/// concurrent one to commit).
pub async fn running(c: &mut AsyncPgConnection, lock: bool) -> Result<Option<Uuid>> {
    let q = cycles::table
        .filter(cycles::state.eq(CycleState::Running))
        .select(cycles::id);
    if lock {
        q.order(cycles::started_at)
            .for_update()
            .first(c)
            .await
            .optional()
    } else {
        q.first(c).await.optional()
    }
}

/// The cycle started for a scheduled tick.
pub async fn for_tick(c: &mut AsyncPgConnection, tick: DateTime<Utc>) -> Result<Option<Uuid>> {
    cycles::table
        .filter(cycles::scheduled_for.eq(tick))
        .select(cycles::id)
        .first(c)
        .await
        .optional()
}

/// Inserts a running cycle unless its tick is taken or one is running (unique indexes); true
/// when inserted.
pub async fn insert(
    c: &mut AsyncPgConnection,
    id: Uuid,
    trigger: &str,
    tick: Option<DateTime<Utc>>,
) -> Result<bool> {
    let n = diesel::insert_into(cycles::table)
        .values((
            cycles::id.eq(id),
            cycles::trigger.eq(trigger),
            cycles::scheduled_for.eq(tick),
        ))
        .on_conflict_do_nothing()
        .execute(c)
        .await?;
    Ok(n == 1)
}

#[derive(QueryableByName)]
struct Flip {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    inserted: bool,
}

/// Records that these devices installed the cycle's ACK: returns (newly ok, previously failed
/// now ok).
pub async fn acks_ok(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    devices: &[Uuid],
) -> Result<(i32, i32)> {
    // DISTINCT in the SQL: one import slice can install two ACKs of a device (its reports went
    // in two batches), and DO UPDATE may touch a row only once per statement.
    let rows: Vec<Flip> = diesel::sql_query(include_str!("sql/ack_ok.sql"))
        .bind::<SqlUuid, _>(cycle)
        .bind::<Array<SqlUuid>, _>(devices)
        .load(c)
        .await?;
    let recovered = rows.iter().filter(|r| !r.inserted).count();
    Ok((count(rows.len()), count(recovered)))
}

/// Records that these devices failed the cycle's ACK import (unless recorded before); returns
/// how many are new.
pub async fn acks_failed(c: &mut AsyncPgConnection, cycle: Uuid, devices: &[Uuid]) -> Result<i32> {
    let n = diesel::sql_query(include_str!("sql/ack_failed.sql"))
        .bind::<SqlUuid, _>(cycle)
        .bind::<Array<SqlUuid>, _>(devices)
        .execute(c)
        .await?;
    Ok(count(n))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Increments of a cycle's counters; `devices` set once, when collection starts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub devices: Option<i32>,
    pub devices_ok: i32,
    pub devices_failed: i32,
    pub devices_with_reports: i32,
    pub reports_stored: i32,
    pub reports_quarantined: i32,
    pub reports_duplicate: i32,
    pub reports_uploaded: i32,
    pub reports_upload_failed: i32,
    pub devices_upload_failed: i32,
    pub batches: i32,
    pub acks_imported: i32,
    pub acks_failed: i32,
}

pub async fn add_counts(c: &mut AsyncPgConnection, cycle: Uuid, n: &Counts) -> Result<()> {
    diesel::sql_query(include_str!("sql/add_cycle_counts.sql"))
        .bind::<SqlUuid, _>(cycle)
        .bind::<Nullable<Int4>, _>(n.devices)
        .bind::<Int4, _>(n.devices_ok)
        .bind::<Int4, _>(n.devices_failed)
        .bind::<Int4, _>(n.devices_with_reports)
        .bind::<Int4, _>(n.reports_stored)
        .bind::<Int4, _>(n.reports_quarantined)
        .bind::<Int4, _>(n.reports_duplicate)
        .bind::<Int4, _>(n.reports_uploaded)
        .bind::<Int4, _>(n.reports_upload_failed)
        .bind::<Int4, _>(n.devices_upload_failed)
        .bind::<Int4, _>(n.batches)
        .bind::<Int4, _>(n.acks_imported)
        .bind::<Int4, _>(n.acks_failed)
        .execute(c)
        .await?;
    Ok(())
}

/// Records (or updates the reason of) a device's failure of a stage in the cycle.
pub async fn record_failure(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    device: Uuid,
    stage: Stage,
    reason: &str,
) -> Result<()> {
    use diesel::upsert::excluded;
    diesel::insert_into(cycle_failures::table)
        .values((
            cycle_failures::cycle_id.eq(cycle),
            cycle_failures::device_id.eq(device),
            cycle_failures::stage.eq(stage.as_str()),
            cycle_failures::reason.eq(reason),
        ))
        .on_conflict((
            cycle_failures::cycle_id,
            cycle_failures::device_id,
            cycle_failures::stage,
        ))
        .do_update()
        .set((
            cycle_failures::reason.eq(excluded(cycle_failures::reason)),
            cycle_failures::at.eq(diesel::dsl::now),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// Completes the cycle when every device was collected and every device with new reports holds
/// an ACK, failed its import, or was refused upstream.
pub async fn close_if_done(c: &mut AsyncPgConnection, cycle: Uuid) -> Result<bool> {
    let n = diesel::sql_query(include_str!("sql/close_cycle.sql"))
        .bind::<SqlUuid, _>(cycle)
        .execute(c)
        .await?;
    Ok(n == 1)
}

// A device that failed a stage of a cycle (a plain comment keeps the OpenAPI schema as it was).
#[derive(Debug, Serialize, Deserialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = cycle_failures, check_for_backend(diesel::pg::Pg))]
pub struct Failure {
    pub device_id: Uuid,
    /// `collection`, `upload` or `ack`.
    pub stage: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A page of a cycle's failures, by stage and device.
pub async fn failures(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    limit: i64,
    offset: i64,
) -> Result<Vec<Failure>> {
    cycle_failures::table
        .filter(cycle_failures::cycle_id.eq(cycle))
        .order((cycle_failures::stage, cycle_failures::device_id))
        .limit(limit)
        .offset(offset)
        .select(Failure::as_select())
        .load(c)
        .await
}
