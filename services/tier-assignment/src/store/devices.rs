//! `tiers.devices`: inventory's devices as this service keeps them, and the license ledger (the
//! levels, virtual account and pools each device holds).

use super::coalesce;
use super::jobs::JobState;
use super::schema::tiers::{devices, jobs};
use crate::plan::{DeviceView, Levels, Selector};
use diesel::dsl::{not, now};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Int8, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tally_bus::projection::Columns;
use tally_platform::Page;
use utoipa::ToSchema;
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a device's levels stand in the ledger.
    pub enum DeviceState {
        /// The device runs what the ledger holds (or no job has changed it).
        Active = "active",
        /// A job is configuring it.
        Applying = "applying",
        /// Configured; the new level runs once the device reloads and reports.
        PendingReload = "pending_reload",
    }
}

/// Writes a `DevicesUpserted` chunk (`ids` are its parsed device ids; `network_pools` and
/// `dna_pools` what each device holds under the current rules). Newer revisions win; the ledger
/// columns are only written for new devices.
pub async fn upsert(
    c: &mut AsyncPgConnection,
    ids: &[Uuid],
    cols: &Columns<'_>,
    network_pools: &[Option<String>],
    dna_pools: &[Option<String>],
) -> QueryResult<usize> {
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
        .bind::<Array<Text>, _>(col(|d| &d.username))
        .bind::<Array<Text>, _>(col(|d| &d.password_sealed))
        .bind::<Array<Bool>, _>(cols.is_cube())
        .bind::<Array<Int8>, _>(cols.revisions())
        .bind::<Array<Text>, _>(col(|d| &d.smart_account))
        .bind::<Array<Text>, _>(col(|d| &d.virtual_account))
        .bind::<Array<Text>, _>(col(|d| &d.network_license))
        .bind::<Array<Nullable<Text>>, _>(cols.dna_tiers())
        .bind::<Array<Nullable<Text>>, _>(network_pools)
        .bind::<Array<Nullable<Text>>, _>(dna_pools)
        .execute(c)
        .await
}

/// How filters name "no DNA tier".
const NO_DNA: &str = "none";

/// `C9300-48*` -> `C9300-48%` for LIKE, with LIKE's own wildcards escaped.
pub fn like(pattern: &str) -> String {
    let escaped = pattern
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    match escaped.strip_suffix('*') {
        Some(p) => format!("{p}%"),
        None => escaped,
    }
}

/// A selected device with the state of the job that last configured it.
#[derive(Queryable)]
struct Selected {
    id: Uuid,
    hostname: String,
    model: String,
    software_version: String,
    state: DeviceState,
    job_state: Option<JobState>,
    smart_account: String,
    virtual_account: String,
    network_license: String,
    dna_tier: Option<String>,
    network_pool: Option<String>,
    dna_pool: Option<String>,
}

impl Selected {
    /// A device counts as busy while the job that configured it can still undo it.
    fn state(&self) -> DeviceState {
        match self.job_state {
            Some(JobState::Applying | JobState::RollingBack)
                if self.state != DeviceState::Active =>
            {
                DeviceState::Applying
            }
            _ => self.state,
        }
    }
}

/// The selected devices, ordered by hostname (the order a job admits them in).
pub async fn select_devices(
    c: &mut AsyncPgConnection,
    s: &Selector,
) -> QueryResult<Vec<DeviceView>> {
    let mut q = devices::table
        .left_join(jobs::table.on(jobs::id.nullable().eq(devices::job_id)))
        .filter(not(devices::deleted))
        .select((
            devices::id,
            devices::hostname,
            devices::model,
            devices::software_version,
            devices::state,
            jobs::state.nullable(),
            devices::smart_account,
            devices::virtual_account,
            devices::network_license,
            devices::dna_tier,
            devices::network_pool,
            devices::dna_pool,
        ))
        .into_boxed();
    if !s.device_ids.is_empty() {
        q = q.filter(devices::id.eq_any(s.device_ids.clone()));
    }
    if let Some(site) = &s.site {
        q = q.filter(devices::site.eq(site.clone()));
    }
    if let Some(g) = &s.group {
        q = q.filter(devices::groups.contains(vec![Some(g.clone())]));
    }
    if let Some(m) = &s.model {
        q = q.filter(devices::model.like(like(m)));
    }
    if let Some(h) = &s.hostname {
        q = q.filter(devices::hostname.like(like(h)));
    }
    if let Some(t) = &s.dna_tier {
        q = q.filter(coalesce(devices::dna_tier, Some(NO_DNA)).eq(t.clone()));
    }
    if let Some(n) = &s.network_license {
        q = q.filter(devices::network_license.eq(n.clone()));
    }
    if let Some(va) = &s.virtual_account {
        q = q.filter(devices::virtual_account.eq(va.clone()));
    }
    let rows: Vec<Selected> = q.order((devices::hostname, devices::id)).load(c).await?;
    Ok(rows
        .into_iter()
        .map(|r| DeviceView {
            id: r.id,
            state: r.state(),
            hostname: r.hostname,
            model: r.model,
            software_version: r.software_version,
            current: Levels {
                smart_account: r.smart_account,
                virtual_account: r.virtual_account,
                network_license: r.network_license,
                dna_tier: r.dna_tier,
                network_pool: r.network_pool,
                dna_pool: r.dna_pool,
            },
        })
        .collect())
}

// A device as the ledger holds it (no doc comment: it would become the schema's description).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = devices, check_for_backend(diesel::pg::Pg))]
pub struct LedgerDevice {
    pub id: Uuid,
    pub hostname: String,
    pub model: String,
    pub site: String,
    pub smart_account: String,
    pub virtual_account: String,
    pub network_license: String,
    pub dna_tier: Option<String>,
    pub network_pool: Option<String>,
    pub dna_pool: Option<String>,
    /// active, applying, pending_reload.
    pub state: String,
    pub job_id: Option<Uuid>,
    pub reported_dna_tier: Option<String>,
}

/// What the ledger list is narrowed to; every field set must match.
#[derive(Debug, Default)]
pub struct LedgerQuery<'a> {
    pub site: Option<&'a str>,
    pub group: Option<&'a str>,
    /// A LIKE pattern (see [`like`]).
    pub model: Option<String>,
    /// A DNA tier or `none`.
    pub dna_tier: Option<&'a str>,
    pub state: Option<DeviceState>,
}

/// The ledger's devices (not deleted), by hostname.
pub async fn ledger(
    c: &mut AsyncPgConnection,
    f: LedgerQuery<'_>,
    page: Page,
) -> QueryResult<Vec<LedgerDevice>> {
    let mut q = devices::table
        .filter(not(devices::deleted))
        .select(LedgerDevice::as_select())
        .into_boxed();
    if let Some(site) = f.site {
        q = q.filter(devices::site.eq(site));
    }
    if let Some(g) = f.group {
        q = q.filter(devices::groups.contains(vec![Some(g)]));
    }
    if let Some(m) = f.model {
        q = q.filter(devices::model.like(m));
    }
    if let Some(t) = f.dna_tier {
        q = q.filter(coalesce(devices::dna_tier, Some(NO_DNA)).eq(t));
    }
    if let Some(s) = f.state {
        q = q.filter(devices::state.eq(s));
    }
    q.order((devices::hostname, devices::id))
        .limit(page.limit)
        .offset(page.offset)
        .load(c)
        .await
}

/// Configured devices of `job` wait for their reload.
pub async fn mark_pending_reload(
    c: &mut AsyncPgConnection,
    job: Uuid,
    ids: &[Uuid],
) -> QueryResult<usize> {
    diesel::update(
        devices::table
            .filter(devices::id.eq_any(ids))
            .filter(devices::job_id.eq(job)),
    )
    .set(devices::state.eq(DeviceState::PendingReload))
    .execute(c)
    .await
}

/// Gives `job`'s items back to their old levels in the ledger (they were never configured, or
/// were configured back).
pub async fn restore_ledger(
    c: &mut AsyncPgConnection,
    job: Uuid,
    ids: &[Uuid],
) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/restore_ledger.sql"))
        .bind::<SqlUuid, _>(job)
        .bind::<Array<SqlUuid>, _>(ids)
        .execute(c)
        .await
}

/// A device waiting for its reload, locked.
#[derive(QueryableByName)]
pub struct AwaitingReload {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub dna_tier: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub job_id: Option<Uuid>,
}

/// Locks the devices among `ids` that wait for a reload, once the job that configured them has
/// ended: until then the job may still configure the device back, and a confirmed device would
/// look free to other jobs.
pub async fn lock_awaiting_reload(
    c: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<AwaitingReload>> {
    diesel::sql_query(include_str!("sql/lock_pending_reload.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .load(c)
        .await
}

/// The devices run their levels now: they are no longer tied to a job.
pub async fn confirm(c: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<usize> {
    diesel::update(devices::table.filter(devices::id.eq_any(ids)))
        .set((
            devices::state.eq(DeviceState::Active),
            devices::job_id.eq(None::<Uuid>),
            devices::reported_dna_tier.eq(devices::dna_tier),
            devices::reported_at.eq(now),
        ))
        .execute(c)
        .await
}

/// Smart accounts of the managed devices: the ones whose pools matter.
pub async fn smart_accounts(c: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    devices::table
        .filter(not(devices::deleted))
        .select(devices::smart_account)
        .distinct()
        .order(devices::smart_account)
        .load(c)
        .await
}
