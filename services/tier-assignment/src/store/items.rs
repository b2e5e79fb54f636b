//! `tiers.job_items`: one row per device a job takes, in the order it takes them, with the
//! levels it had and the levels it gets; workers claim them in slices.

use super::coalesce;
use super::schema::tiers::job_items as items;
use crate::plan::{Change, Rejection};
use chrono::{DateTime, Utc};
use diesel::dsl::{exists, now};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tally_platform::Page;
use utoipa::ToSchema;
use uuid::Uuid;

tally_store::text_enum! {
    /// Where one device of a job stands.
    pub enum ItemState {
        /// Waiting for a worker.
        Pending = "pending",
        /// A worker holds it and is configuring the device.
        Pushing = "pushing",
        Applied = "applied",
        /// The device's reports show it runs the new level.
        Confirmed = "confirmed",
        Failed = "failed",
        /// Broke a rule or did not fit a pool; never configured.
        Rejected = "rejected",
        Cancelled = "cancelled",
        /// Configured, waiting for a worker to configure it back (rollback).
        RevertPending = "revert_pending",
        /// A worker holds it and is configuring the old level back.
        Reverting = "reverting",
        Reverted = "reverted",
        RevertFailed = "revert_failed",
    }
}

/// States in which an item still waits for, or is held by, a worker.
pub const OPEN: [ItemState; 4] = [
    ItemState::Pending,
    ItemState::RevertPending,
    ItemState::Pushing,
    ItemState::Reverting,
];

/// Rows per multi-row statement when writing a job.
const CHUNK: usize = 10_000;

fn seq(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Writes the job's items: the changes (with the levels each device holds now, read in the same
/// snapshot) together with the ledger rows that now hold the new licenses, then the rejections.
pub async fn write(
    c: &mut AsyncPgConnection,
    job: Uuid,
    changes: &[Change],
    rejected: &[Rejection],
) -> QueryResult<()> {
    for (n, chunk) in changes.chunks(CHUNK).enumerate() {
        let col = |f: fn(&Change) -> &str| -> Vec<String> {
            chunk.iter().map(|x| f(x).to_owned()).collect()
        };
        let opt = |f: fn(&Change) -> &Option<String>| -> Vec<Option<String>> {
            chunk.iter().map(|x| f(x).clone()).collect()
        };
        let ids: Vec<Uuid> = chunk.iter().map(|x| x.device_id).collect();
        let seqs: Vec<i32> = (0..chunk.len()).map(|i| seq(n * CHUNK + i)).collect();
        diesel::sql_query(include_str!("sql/write_items.sql"))
            .bind::<SqlUuid, _>(job)
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<Int4>, _>(&seqs)
            .bind::<Array<Text>, _>(col(|x| &x.to.network_license))
            .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.dna_tier))
            .bind::<Array<Text>, _>(col(|x| &x.to.virtual_account))
            .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.network_pool))
            .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.dna_pool))
            .execute(c)
            .await?;
    }
    for (n, chunk) in rejected.chunks(CHUNK).enumerate() {
        let ids: Vec<Uuid> = chunk.iter().map(|x| x.device_id).collect();
        let seqs: Vec<i32> = (0..chunk.len())
            .map(|i| seq(changes.len() + n * CHUNK + i))
            .collect();
        let hostnames: Vec<String> = chunk.iter().map(|x| x.hostname.clone()).collect();
        let errors: Vec<String> = chunk
            .iter()
            .map(|x| {
                x.violations
                    .iter()
                    .map(|v| format!("{}: {} ({})", v.code, v.message, v.rule))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .collect();
        diesel::sql_query(include_str!("sql/insert_rejected_items.sql"))
            .bind::<SqlUuid, _>(job)
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<Int4>, _>(&seqs)
            .bind::<Array<Text>, _>(&hostnames)
            .bind::<Array<Text>, _>(&errors)
            .execute(c)
            .await?;
    }
    Ok(())
}

/// A claimed item with what is needed to reach its device.
#[derive(QueryableByName, Debug, Clone)]
pub struct Work {
    #[diesel(sql_type = SqlUuid)]
    pub job_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    /// `Pushing` or `Reverting`.
    #[diesel(sql_type = Text)]
    pub state: ItemState,
    #[diesel(sql_type = Text)]
    pub from_network: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub from_dna: Option<String>,
    #[diesel(sql_type = Text)]
    pub from_va: String,
    #[diesel(sql_type = Text)]
    pub to_network: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub to_dna: Option<String>,
    #[diesel(sql_type = Text)]
    pub to_va: String,
    #[diesel(sql_type = Text)]
    pub base_url: String,
    #[diesel(sql_type = Text)]
    pub username: String,
    #[diesel(sql_type = Text)]
    pub password_sealed: String,
    #[diesel(sql_type = Bool)]
    pub deleted: bool,
    /// The claim's token: an outcome only counts while the item still carries it.
    #[diesel(sql_type = SqlUuid)]
    pub claim: Uuid,
}

impl Work {
    pub fn reverting(&self) -> bool {
        self.state == ItemState::Reverting
    }
    /// The levels this push configures.
    pub fn levels(&self) -> (&str, Option<&str>, &str) {
        if self.reverting() {
            (&self.from_network, self.from_dna.as_deref(), &self.from_va)
        } else {
            (&self.to_network, self.to_dna.as_deref(), &self.to_va)
        }
    }
}

/// Claims up to `limit` items for `lease_ms` milliseconds: pending ones of applying jobs, ones
/// to configure back of rolling-back jobs, and ones whose claim expired (their worker died),
/// which are configured back if their job no longer applies. Other workers skip locked rows.
pub async fn claim(c: &mut AsyncPgConnection, limit: i64, lease_ms: i64) -> QueryResult<Vec<Work>> {
    diesel::sql_query(include_str!("sql/claim_items.sql"))
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(lease_ms)
        .load(c)
        .await
}

/// Of `claims`, the items still held by them (locked): past its lease another worker may own
/// an item.
pub async fn lock_held(
    c: &mut AsyncPgConnection,
    job: Uuid,
    claims: &[Uuid],
) -> QueryResult<Vec<Uuid>> {
    items::table
        .filter(items::job_id.eq(job))
        .filter(items::claim.eq_any(claims))
        .filter(items::state.eq_any([ItemState::Pushing, ItemState::Reverting]))
        .select(items::device_id)
        .for_update()
        .load(c)
        .await
}

/// Records the outcome of the pushes to `devices`: their new state, the error if any (an item
/// keeps its earlier error otherwise), one more attempt.
pub async fn set_outcome(
    c: &mut AsyncPgConnection,
    job: Uuid,
    devices: &[Uuid],
    state: ItemState,
    error: Option<&str>,
) -> QueryResult<()> {
    if devices.is_empty() {
        return Ok(());
    }
    diesel::update(
        items::table
            .filter(items::job_id.eq(job))
            .filter(items::device_id.eq_any(devices)),
    )
    .set((
        items::state.eq(state),
        items::error.eq(coalesce(error, items::error)),
        items::attempts.eq(items::attempts + 1),
        items::updated_at.eq(now),
    ))
    .execute(c)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Cancelled {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
}

/// Cancels the job's pending items no worker holds right now; returns their devices.
pub async fn cancel_pending(c: &mut AsyncPgConnection, job: Uuid) -> QueryResult<Vec<Uuid>> {
    let rows: Vec<Cancelled> = diesel::sql_query(include_str!("sql/cancel_pending_items.sql"))
        .bind::<SqlUuid, _>(job)
        .load(c)
        .await?;
    Ok(rows.into_iter().map(|r| r.device_id).collect())
}

/// Queues the job's configured items to be configured back.
pub async fn revert_configured(c: &mut AsyncPgConnection, job: Uuid) -> QueryResult<usize> {
    diesel::update(
        items::table
            .filter(items::job_id.eq(job))
            .filter(items::state.eq_any([ItemState::Applied, ItemState::Confirmed])),
    )
    .set((
        items::state.eq(ItemState::RevertPending),
        items::updated_at.eq(now),
    ))
    .execute(c)
    .await
}

/// Whether an item of the job still waits for, or is held by, a worker.
pub async fn any_open(c: &mut AsyncPgConnection, job: Uuid) -> QueryResult<bool> {
    diesel::select(exists(
        items::table
            .filter(items::job_id.eq(job))
            .filter(items::state.eq_any(OPEN)),
    ))
    .get_result(c)
    .await
}

/// The job's applied items among `devices` are confirmed; returns how many.
pub async fn confirm(c: &mut AsyncPgConnection, job: Uuid, devices: &[Uuid]) -> QueryResult<usize> {
    diesel::update(
        items::table
            .filter(items::job_id.eq(job))
            .filter(items::device_id.eq_any(devices))
            .filter(items::state.eq(ItemState::Applied)),
    )
    .set((
        items::state.eq(ItemState::Confirmed),
        items::updated_at.eq(now),
    ))
    .execute(c)
    .await
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = items, check_for_backend(diesel::pg::Pg))]
pub struct JobItem {
    pub device_id: Uuid,
    pub hostname: String,
    /// pending, pushing, applied, confirmed, failed, rejected, cancelled, revert_pending,
    /// reverting, reverted, revert_failed.
    pub state: String,
    pub from_network: String,
    pub from_dna: Option<String>,
    pub from_va: String,
    pub to_network: String,
    pub to_dna: Option<String>,
    pub to_va: String,
    pub to_dna_pool: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub updated_at: DateTime<Utc>,
}

/// The job's items (in `state`), in the order the job took the devices.
pub async fn list(
    c: &mut AsyncPgConnection,
    job: Uuid,
    state: Option<ItemState>,
    page: Page,
) -> QueryResult<Vec<JobItem>> {
    let mut q = items::table
        .filter(items::job_id.eq(job))
        .select(JobItem::as_select())
        .into_boxed();
    if let Some(s) = state {
        q = q.filter(items::state.eq(s));
    }
    q.order(items::seq)
        .limit(page.limit)
        .offset(page.offset)
        .load(c)
        .await
}
