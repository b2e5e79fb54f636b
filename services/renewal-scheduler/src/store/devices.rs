//! `sched.devices`: the scheduler's copy of inventory's devices, and the deadline engine's
//! stored results on each (deadline, role, status and until when that status holds).

use super::sched::devices;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tally_bus::projection::Columns;
use uuid::Uuid;

type Result<T> = std::result::Result<T, diesel::result::Error>;

/// What the deadline engine and the compliance reads need of a device.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = devices, check_for_backend(diesel::pg::Pg))]
pub struct FleetRow {
    pub id: Uuid,
    pub hostname: String,
    pub model: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub is_cube: bool,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub last_upload_at: Option<DateTime<Utc>>,
    pub last_ack_at: Option<DateTime<Utc>>,
    /// Holds a level whose pool in its virtual account is overcommitted.
    pub out_of_compliance: bool,
    /// cube, srst, cme, or empty.
    pub voice_role: String,
    /// The device's own policy as last read (`deadlines::PolicyDoc`); `None`: never read.
    pub policy: Option<serde_json::Value>,
    /// When its network license or DNA tier last changed (report-on-change runs from here).
    pub licenses_changed_at: Option<DateTime<Utc>>,
}

/// Every device not deleted, by hostname.
pub async fn fleet(c: &mut AsyncPgConnection) -> Result<Vec<FleetRow>> {
    devices::table
        .filter(devices::deleted.eq(false))
        .order((devices::hostname, devices::id))
        .select(FleetRow::as_select())
        .load(c)
        .await
}

/// These devices (deleted ones too).
pub async fn by_ids(c: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<Vec<FleetRow>> {
    devices::table
        .filter(devices::id.eq_any(ids))
        .select(FleetRow::as_select())
        .load(c)
        .await
}

/// Writes inventory's devices; newer revisions win and a deleted device is not brought back
/// (ids are never reused).
pub async fn upsert(c: &mut AsyncPgConnection, ids: &[Uuid], cols: &Columns<'_>) -> Result<usize> {
    let col = |f| cols.text(f);
    diesel::sql_query(include_str!("sql/upsert_devices.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Text>, _>(col(|d| &d.hostname))
        .bind::<Array<Text>, _>(col(|d| &d.udi_pid))
        .bind::<Array<Text>, _>(col(|d| &d.udi_serial))
        .bind::<Array<Text>, _>(col(|d| &d.model))
        .bind::<Array<Text>, _>(col(|d| &d.software_version))
        .bind::<Array<Text>, _>(col(|d| &d.base_url))
        .bind::<Array<Text>, _>(col(|d| &d.site))
        .bind::<Array<Text>, _>(cols.groups_json())
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Bool>, _>(cols.is_cube())
        .bind::<Array<Text>, _>(col(|d| &d.network_license))
        .bind::<Array<Nullable<Text>>, _>(cols.dna_tiers())
        .bind::<Array<Int8>, _>(cols.revisions())
        .bind::<Array<Text>, _>(col(|d| &d.voice_role))
        .execute(c)
        .await
}

/// CSSM answered an upload of these devices' usage now.
pub async fn mark_uploaded(c: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<usize> {
    diesel::update(devices::table.filter(devices::id.eq_any(ids)))
        .set(devices::last_upload_at.eq(diesel::dsl::now))
        .execute(c)
        .await
}

/// These devices installed an ACK now.
pub async fn mark_acked(c: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<usize> {
    diesel::update(devices::table.filter(devices::id.eq_any(ids)))
        .set(devices::last_ack_at.eq(diesel::dsl::now))
        .execute(c)
        .await
}

/// Locks up to [`super::REFRESH_CHUNK`] devices whose inputs changed since their deadline was
/// computed (a trigger clears `assessed`), all of them or only `ids`; rows another transaction
/// holds are skipped.
pub async fn claim_unassessed(
    c: &mut AsyncPgConnection,
    ids: Option<&[Uuid]>,
) -> Result<Vec<FleetRow>> {
    diesel::sql_query(include_str!("sql/claim_unassessed.sql"))
        .bind::<Nullable<Array<SqlUuid>>, _>(ids)
        .load(c)
        .await
}

/// The deadline engine's results for some devices, as parallel columns.
pub struct Assessments {
    pub ids: Vec<Uuid>,
    pub deadlines: Vec<Option<DateTime<Utc>>>,
    pub ack_pending: Vec<bool>,
    pub roles: Vec<String>,
    pub critical: Vec<bool>,
}

/// Stores assessments made at `now`; the stored status and until when it holds are computed
/// in SQL (`sched.compliance_status`), where the maintained counts read them.
pub async fn store_assessments(
    c: &mut AsyncPgConnection,
    a: &Assessments,
    now: DateTime<Utc>,
) -> Result<usize> {
    diesel::sql_query(include_str!("sql/store_assessments.sql"))
        .bind::<Array<SqlUuid>, _>(&a.ids)
        .bind::<Array<Nullable<Timestamptz>>, _>(&a.deadlines)
        .bind::<Array<Bool>, _>(&a.ack_pending)
        .bind::<Array<Text>, _>(&a.roles)
        .bind::<Array<Bool>, _>(&a.critical)
        .bind::<Timestamptz, _>(now)
        .execute(c)
        .await
}

/// Moves up to [`super::REFRESH_CHUNK`] stored statuses whose time has come to what they are
/// at `now`.
pub async fn sweep_chunk(c: &mut AsyncPgConnection, now: DateTime<Utc>) -> Result<usize> {
    diesel::sql_query(include_str!("sql/sweep.sql"))
        .bind::<Timestamptz, _>(now)
        .execute(c)
        .await
}

/// Devices whose deadline is at most `days` after `at`, by id: the only ones that can have an
/// ACK-deadline alert due.
pub async fn near_deadline(
    c: &mut AsyncPgConnection,
    at: DateTime<Utc>,
    days: i32,
) -> Result<Vec<FleetRow>> {
    diesel::sql_query(include_str!("sql/near_deadline.sql"))
        .bind::<Timestamptz, _>(at)
        .bind::<diesel::sql_types::Integer, _>(days)
        .load(c)
        .await
}

/// A page of devices at `at`, by hostname: those on a site, in a virtual account, with a
/// status (`None` matches any).
pub async fn page(
    c: &mut AsyncPgConnection,
    site: Option<&str>,
    virtual_account: Option<&str>,
    status: Option<&str>,
    at: DateTime<Utc>,
    limit: i64,
    offset: i64,
) -> Result<Vec<FleetRow>> {
    diesel::sql_query(include_str!("sql/devices_page.sql"))
        .bind::<Nullable<Text>, _>(site)
        .bind::<Nullable<Text>, _>(virtual_account)
        .bind::<Nullable<Text>, _>(status)
        .bind::<Timestamptz, _>(at)
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(offset)
        .load(c)
        .await
}

/// The most urgent devices due soon or overdue at `at`: critical ones first, then by deadline.
pub async fn at_risk(
    c: &mut AsyncPgConnection,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<FleetRow>> {
    diesel::sql_query(include_str!("sql/at_risk_page.sql"))
        .bind::<Timestamptz, _>(at)
        .bind::<BigInt, _>(limit)
        .load(c)
        .await
}

/// The newest time a stored status was computed at (an index lookup).
pub async fn assessed_as_of(c: &mut AsyncPgConnection) -> Result<Option<DateTime<Utc>>> {
    devices::table
        .select(diesel::dsl::max(devices::assessed_at))
        .get_result(c)
        .await
}

/// Stores policies read from devices (`docs[i]` for `ids[i]`, read at `read_at_ms[i]`); an older
/// read never replaces a newer one. Returns the devices whose policy was written.
pub async fn set_policies(
    c: &mut AsyncPgConnection,
    ids: &[Uuid],
    docs: &[serde_json::Value],
    read_at_ms: &[i64],
) -> Result<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let rows: Vec<Id> = diesel::sql_query(include_str!("sql/set_policies.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<diesel::sql_types::Jsonb>, _>(docs)
        .bind::<Array<Int8>, _>(read_at_ms)
        .load(c)
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
