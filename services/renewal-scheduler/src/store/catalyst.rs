//! Reads and writes of the Catalyst Center-compatible adapter (`tally-catalyst-api`) on the
//! scheduler's tables: the fleet copy in Catalyst Center's vocabulary, the pools and terms of the
//! last pool sync, and the adapter's tasks (`sched.catalyst_tasks`, whose events go out through
//! the scheduler's outbox). The adapter owns no schema: its SQL lives here, beside `sched`'s.

use super::schema::sched::{catalyst_tasks, devices, pool_terms, pools};
use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, not};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tally_bus::proto::TransferRequested;
use tally_store::outbox::Schema;
use uuid::Uuid;

type Result<T> = std::result::Result<T, diesel::result::Error>;

tally_store::text_enum! {
    /// What a Catalyst task does (`sched.catalyst_tasks.kind`).
    pub enum TaskKind {
        Transfer = "transfer",
        Register = "register",
        Deregister = "deregister",
    }
}

/// The device filters of the count and summary calls, in Catalyst Center's vocabulary (device
/// type, registration status and DNA level as `count_devices.sql` computes them); `None`
/// matches any.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub device_type: Option<String>,
    pub registration_status: Option<String>,
    pub dna_level: Option<String>,
    pub virtual_account: Option<String>,
    pub smart_account: Option<String>,
    pub device_id: Option<Uuid>,
}

/// Binds a [`DeviceFilter`] as `$1`..`$6` of the `catalyst_*` device statements.
macro_rules! bind_filter {
    ($q:expr, $f:expr) => {
        $q.bind::<Nullable<Text>, _>($f.device_type.as_deref())
            .bind::<Nullable<Text>, _>($f.registration_status.as_deref())
            .bind::<Nullable<Text>, _>($f.dna_level.as_deref())
            .bind::<Nullable<Text>, _>($f.virtual_account.as_deref())
            .bind::<Nullable<Text>, _>($f.smart_account.as_deref())
            .bind::<Nullable<SqlUuid>, _>($f.device_id)
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Devices (not deleted) matching `f`.
pub async fn count_devices(c: &mut AsyncPgConnection, f: &DeviceFilter) -> Result<i64> {
    let rows: Vec<Count> = bind_filter!(
        diesel::sql_query(include_str!("sql/catalyst_count_devices.sql")),
        f
    )
    .load(c)
    .await?;
    Ok(rows.as_slice().first().map_or(0, |r| r.n))
}

/// A device with Catalyst Center's computed columns.
#[derive(Debug, Clone, QueryableByName)]
pub struct CatalystDevice {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub hostname: String,
    #[diesel(sql_type = Text)]
    pub udi_pid: String,
    #[diesel(sql_type = Text)]
    pub udi_serial: String,
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = Text)]
    pub software_version: String,
    #[diesel(sql_type = Text)]
    pub base_url: String,
    #[diesel(sql_type = Text)]
    pub site: String,
    #[diesel(sql_type = Array<Text>)]
    pub groups: Vec<String>,
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Text)]
    pub network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub dna_tier: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_upload_at: Option<DateTime<Utc>>,
    /// `Wireless Controller`, `Switches and Hubs` or `Routers`, from the PID.
    #[diesel(sql_type = Text)]
    pub device_type: String,
    /// `Registered` once CSSM acknowledged its usage or it installed an ACK.
    #[diesel(sql_type = Text)]
    pub registration_status: String,
    /// `Essentials`, `Advantage`, `Premier` or `NA`.
    #[diesel(sql_type = Text)]
    pub dna_level: String,
    /// Past its stored ACK deadline or holding a level of an overcommitted pool.
    #[diesel(sql_type = Bool)]
    pub out_of_compliance: bool,
}

/// What a summary page is sorted by (then by id, in the same direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Hostname,
    Id,
    DeviceType,
    DnaLevel,
    Model,
    Site,
    VirtualAccount,
    RegistrationStatus,
    UpdatedAt,
}

impl SortBy {
    /// The column as the page statements name it.
    fn column(self) -> &'static str {
        match self {
            Self::Hostname => "hostname",
            Self::Id => "id",
            Self::DeviceType => "device_type",
            Self::DnaLevel => "dna_level",
            Self::Model => "model",
            Self::Site => "site",
            Self::VirtualAccount => "virtual_account",
            Self::RegistrationStatus => "registration_status",
            Self::UpdatedAt => "updated_at",
        }
    }

    /// A stored column (not one computed from the vocabulary): the page can skip ahead on it.
    fn stored(self) -> bool {
        !matches!(
            self,
            Self::DeviceType | Self::DnaLevel | Self::RegistrationStatus
        )
    }
}

/// One page of devices matching `f`, sorted by `sort` (descending when `desc`).
pub async fn device_page(
    c: &mut AsyncPgConnection,
    f: &DeviceFilter,
    sort: SortBy,
    desc: bool,
    limit: i64,
    offset: i64,
) -> Result<Vec<CatalystDevice>> {
    let sql = if sort.stored() {
        include_str!("sql/catalyst_device_page_stored.sql")
    } else {
        include_str!("sql/catalyst_device_page_computed.sql")
    };
    // A sort column and direction cannot be bound: both come from the closed lists above.
    let sql = sql
        .replace("{column}", sort.column())
        .replace("{dir}", if desc { "DESC" } else { "ASC" });
    bind_filter!(diesel::sql_query(sql), f)
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(offset)
        .load(c)
        .await
}

/// One device (not deleted).
pub async fn device(c: &mut AsyncPgConnection, id: Uuid) -> Result<Option<CatalystDevice>> {
    let rows: Vec<CatalystDevice> = diesel::sql_query(include_str!("sql/catalyst_device.sql"))
        .bind::<SqlUuid, _>(id)
        .load(c)
        .await?;
    Ok(rows.into_iter().next())
}

/// The smart accounts of the fleet, by name.
pub async fn smart_accounts(c: &mut AsyncPgConnection) -> Result<Vec<String>> {
    devices::table
        .filter(not(devices::deleted))
        .select(devices::smart_account)
        .distinct()
        .order(devices::smart_account)
        .load(c)
        .await
}

/// The virtual accounts of a smart account's devices, by name.
pub async fn virtual_accounts(c: &mut AsyncPgConnection, sa: &str) -> Result<Vec<String>> {
    devices::table
        .filter(devices::smart_account.eq(sa))
        .filter(not(devices::deleted))
        .select(devices::virtual_account)
        .distinct()
        .order(devices::virtual_account)
        .load(c)
        .await
}

/// The smart accounts of these devices (not deleted), by name.
pub async fn smart_accounts_of(c: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<Vec<String>> {
    devices::table
        .filter(devices::id.eq_any(ids))
        .filter(not(devices::deleted))
        .select(devices::smart_account)
        .distinct()
        .order(devices::smart_account)
        .load(c)
        .await
}

/// Those of these devices that are in smart account `sa` (and not deleted).
pub async fn devices_in(c: &mut AsyncPgConnection, ids: &[Uuid], sa: &str) -> Result<Vec<Uuid>> {
    devices::table
        .filter(devices::id.eq_any(ids))
        .filter(devices::smart_account.eq(sa))
        .filter(not(devices::deleted))
        .select(devices::id)
        .load(c)
        .await
}

/// The fleet's counts for `networkDeviceLicenses/summary`.
#[derive(Debug, Clone, QueryableByName)]
pub struct Rollup {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub net_ess: i64,
    #[diesel(sql_type = BigInt)]
    pub net_adv: i64,
    #[diesel(sql_type = BigInt)]
    pub dna_ess: i64,
    #[diesel(sql_type = BigInt)]
    pub dna_adv: i64,
    #[diesel(sql_type = BigInt)]
    pub dna_prem: i64,
    #[diesel(sql_type = BigInt)]
    pub unregistered: i64,
    #[diesel(sql_type = BigInt)]
    pub out_of_compliance: i64,
    /// Licenses of subscription lines that ended (last pool sync).
    #[diesel(sql_type = BigInt)]
    pub expired: i64,
    /// Licenses of subscription lines that end within 90 days.
    #[diesel(sql_type = BigInt)]
    pub expiring: i64,
}

/// The fleet's counts by level, registration and compliance, and the terms' expiring licenses.
pub async fn rollup(c: &mut AsyncPgConnection) -> Result<Option<Rollup>> {
    let rows: Vec<Rollup> = diesel::sql_query(include_str!("sql/catalyst_rollup.sql"))
        .load(c)
        .await?;
    Ok(rows.into_iter().next())
}

/// A pool of a virtual account, as CSSM listed it at the last sync.
#[derive(Debug, Clone, Queryable)]
pub struct PoolLine {
    pub license: String,
    /// `dna-advantage`, `network-essentials`...
    pub level: String,
    /// Model patterns (`C9300-24*`) the license is for.
    pub models: Vec<Option<String>>,
    pub quantity: i64,
}

/// The pools of a virtual account.
pub async fn pools(c: &mut AsyncPgConnection, sa: &str, va: &str) -> Result<Vec<PoolLine>> {
    pools::table
        .filter(pools::smart_account.eq(sa))
        .filter(pools::virtual_account.eq(va))
        .select((pools::license, pools::level, pools::models, pools::quantity))
        .load(c)
        .await
}

/// A subscription line of a DNA pool.
#[derive(Debug, Clone, Queryable)]
pub struct TermLine {
    pub license: String,
    pub level: String,
    pub models: Vec<Option<String>>,
    pub quantity: i64,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
}

/// The subscription lines of a virtual account's DNA pools, by end date (open-ended last).
pub async fn dna_terms(c: &mut AsyncPgConnection, sa: &str, va: &str) -> Result<Vec<TermLine>> {
    pools::table
        .inner_join(
            pool_terms::table.on(pool_terms::smart_account
                .eq(pools::smart_account)
                .and(pool_terms::virtual_account.eq(pools::virtual_account))
                .and(pool_terms::license.eq(pools::license))),
        )
        .filter(pools::smart_account.eq(sa))
        .filter(pools::virtual_account.eq(va))
        .filter(pools::level.like("dna-%"))
        .order((
            pool_terms::end_date.asc().nulls_last(),
            pools::license,
            pool_terms::line,
        ))
        .select((
            pools::license,
            pools::level,
            pools::models,
            pool_terms::quantity,
            pool_terms::start_date,
            pool_terms::end_date,
        ))
        .load(c)
        .await
}

/// Devices of a virtual account holding one combination of licenses.
#[derive(Debug, Clone, Queryable)]
pub struct UsedLine {
    pub udi_pid: String,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub n: i64,
}

/// The devices of a virtual account (not deleted), counted by PID and licenses held.
pub async fn used(c: &mut AsyncPgConnection, sa: &str, va: &str) -> Result<Vec<UsedLine>> {
    devices::table
        .filter(devices::smart_account.eq(sa))
        .filter(devices::virtual_account.eq(va))
        .filter(not(devices::deleted))
        .group_by((
            devices::udi_pid,
            devices::network_license,
            devices::dna_tier,
        ))
        .select((
            devices::udi_pid,
            devices::network_license,
            devices::dna_tier,
            count_star(),
        ))
        .load(c)
        .await
}

/// A task asking tier-assignment to move devices into a virtual account.
#[derive(Debug, Clone)]
pub struct NewMove<'a> {
    pub id: Uuid,
    pub kind: TaskKind,
    pub smart_account: &'a str,
    pub virtual_account: &'a str,
    pub device_ids: &'a [Uuid],
    pub requested_by: &'a str,
    pub progress: &'a str,
}

/// Writes the task and its `TransferRequested` (the scheduler's outbox) in one transaction.
pub async fn request_move(c: &mut AsyncPgConnection, t: &NewMove<'_>) -> Result<()> {
    c.transaction(async |c| {
        diesel::insert_into(catalyst_tasks::table)
            .values((
                catalyst_tasks::id.eq(t.id),
                catalyst_tasks::kind.eq(t.kind),
                catalyst_tasks::smart_account.eq(t.smart_account),
                catalyst_tasks::virtual_account.eq(t.virtual_account),
                catalyst_tasks::device_ids.eq(t.device_ids),
                catalyst_tasks::requested_by.eq(t.requested_by),
                catalyst_tasks::progress.eq(t.progress),
            ))
            .execute(c)
            .await?;
        tally_bus::emit(
            c,
            Schema::Sched,
            &TransferRequested {
                task_id: t.id.to_string(),
                device_ids: t.device_ids.iter().map(Uuid::to_string).collect(),
                smart_account: t.smart_account.to_owned(),
                virtual_account: t.virtual_account.to_owned(),
                requested_by: t.requested_by.to_owned(),
            },
        )
        .await?;
        Ok(())
    })
    .await
}

/// Writes a task that ended at once in error with `reason` (a call Tally does not carry out).
pub async fn insert_failed_task(
    c: &mut AsyncPgConnection,
    id: Uuid,
    kind: TaskKind,
    virtual_account: &str,
    device_ids: &[Uuid],
    requested_by: &str,
    reason: &str,
) -> Result<()> {
    diesel::insert_into(catalyst_tasks::table)
        .values((
            catalyst_tasks::id.eq(id),
            catalyst_tasks::kind.eq(kind),
            catalyst_tasks::smart_account.eq(""),
            catalyst_tasks::virtual_account.eq(virtual_account),
            catalyst_tasks::device_ids.eq(device_ids),
            catalyst_tasks::requested_by.eq(requested_by),
            catalyst_tasks::progress.eq(reason),
            catalyst_tasks::is_error.eq(true),
            catalyst_tasks::failure_reason.eq(reason),
            catalyst_tasks::finished_at.eq(diesel::dsl::now),
        ))
        .execute(c)
        .await?;
    Ok(())
}

/// A task as `GET /task/{id}` shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = catalyst_tasks, check_for_backend(diesel::pg::Pg))]
pub struct Task {
    pub id: Uuid,
    pub kind: TaskKind,
    pub requested_by: String,
    pub is_error: bool,
    pub progress: String,
    pub failure_reason: Option<String>,
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn task(c: &mut AsyncPgConnection, id: Uuid) -> Result<Option<Task>> {
    catalyst_tasks::table
        .find(id)
        .select(Task::as_select())
        .first(c)
        .await
        .optional()
}

/// How a task ended, from tier-assignment's answer.
#[derive(Debug, Clone)]
pub struct TaskEnd<'a> {
    pub failed: bool,
    pub progress: &'a str,
    pub failure_reason: Option<&'a str>,
    pub job_id: Option<Uuid>,
}

/// Ends a task that has not ended yet (a later answer changes nothing).
pub async fn finish_task(c: &mut AsyncPgConnection, id: Uuid, end: &TaskEnd<'_>) -> Result<usize> {
    diesel::update(
        catalyst_tasks::table
            .filter(catalyst_tasks::id.eq(id))
            .filter(catalyst_tasks::finished_at.is_null()),
    )
    .set((
        catalyst_tasks::is_error.eq(end.failed),
        catalyst_tasks::progress.eq(end.progress),
        catalyst_tasks::failure_reason.eq(end.failure_reason),
        catalyst_tasks::job_id.eq(end.job_id),
        catalyst_tasks::finished_at.eq(diesel::dsl::now),
    ))
    .execute(c)
    .await
}
