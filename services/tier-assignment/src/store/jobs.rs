//! `tiers.jobs`: one row per committed plan, with its per-outcome device counts.

use super::coalesce;
use super::schema::tiers::jobs;
use crate::plan::Mode;
use chrono::{DateTime, Utc};
use diesel::dsl::{case_when, now};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tally_platform::Page;
use utoipa::ToSchema;
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a job stands.
    pub enum JobState {
        Applying = "applying",
        /// An all-or-nothing job configuring its devices back.
        RollingBack = "rolling_back",
        Done = "done",
        /// Some devices changed, others failed or were rejected.
        Partial = "partial",
        Failed = "failed",
        RolledBack = "rolled_back",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// No item of the job will change any more.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Applying | Self::RollingBack)
    }
}

/// A job's mode is stored as its JSON name.
fn stored_mode(s: &str) -> QueryResult<Mode> {
    [Mode::AllOrNothing, Mode::BestEffort]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            diesel::result::Error::DeserializationError(format!("unknown Mode {s:?}").into())
        })
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct Job {
    pub id: Uuid,
    pub idempotency_key: Option<String>,
    pub mode: String,
    /// applying, rolling_back, done, partial, failed, rolled_back, cancelled.
    pub state: String,
    pub cancel_requested: bool,
    pub fingerprint: String,
    pub requested_by: String,
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub devices_total: i32,
    pub rejected: i32,
    pub applied: i32,
    pub failed: i32,
    pub cancelled: i32,
    pub reverted: i32,
    pub confirmed: i32,
    #[schema(value_type = Vec<Object>)]
    pub pools: serde_json::Value,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn get(c: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Job>> {
    jobs::table
        .find(id)
        .select(Job::as_select())
        .first(c)
        .await
        .optional()
}

/// Jobs (in `state`), newest first.
pub async fn list(
    c: &mut AsyncPgConnection,
    state: Option<JobState>,
    page: Page,
) -> QueryResult<Vec<Job>> {
    let mut q = jobs::table.select(Job::as_select()).into_boxed();
    if let Some(s) = state {
        q = q.filter(jobs::state.eq(s));
    }
    q.order(jobs::created_at.desc())
        .limit(page.limit)
        .offset(page.offset)
        .load(c)
        .await
}

/// Serializes job commits across every replica until the transaction ends.
pub async fn lock_commits(c: &mut AsyncPgConnection, key: i64) -> QueryResult<()> {
    diesel::sql_query(include_str!("sql/lock_commits.sql"))
        .bind::<BigInt, _>(key)
        .execute(c)
        .await
        .map(drop)
}

/// The job's state and mode, its row locked until the transaction ends (`NotFound` if there is
/// no such job).
pub async fn lock(c: &mut AsyncPgConnection, id: Uuid) -> QueryResult<(JobState, Mode)> {
    let (state, mode): (JobState, String) = jobs::table
        .find(id)
        .select((jobs::state, jobs::mode))
        .for_update()
        .first(c)
        .await?;
    Ok((state, stored_mode(&mode)?))
}

/// The job an idempotency key started, with its request's hash.
pub async fn by_key(c: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<(Uuid, String)>> {
    jobs::table
        .filter(jobs::idempotency_key.eq(key))
        .select((jobs::id, jobs::request_hash))
        .first(c)
        .await
        .optional()
}

/// A job to be written.
pub struct NewJob<'a> {
    pub id: Uuid,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
    pub request: &'a serde_json::Value,
    pub mode: Mode,
    pub state: JobState,
    pub fingerprint: &'a str,
    pub requested_by: &'a str,
    pub devices_total: i32,
    pub rejected: i32,
    pub pools: &'a serde_json::Value,
}

/// Writes the job; one that starts finished (nothing to change) gets its finish time now.
pub async fn insert(c: &mut AsyncPgConnection, j: &NewJob<'_>) -> QueryResult<usize> {
    let finished = j.state != JobState::Applying;
    diesel::insert_into(jobs::table)
        .values((
            jobs::id.eq(j.id),
            jobs::idempotency_key.eq(j.idempotency_key),
            jobs::request_hash.eq(j.request_hash),
            jobs::request.eq(j.request),
            jobs::mode.eq(j.mode.as_str()),
            jobs::state.eq(j.state),
            jobs::fingerprint.eq(j.fingerprint),
            jobs::requested_by.eq(j.requested_by),
            jobs::devices_total.eq(j.devices_total),
            jobs::rejected.eq(j.rejected),
            jobs::pools.eq(j.pools),
            jobs::finished_at.eq(case_when(
                finished.into_sql::<Bool>(),
                now.into_sql::<Timestamptz>(),
            )),
        ))
        .execute(c)
        .await
}

/// The job rolls back: `reason` is its error unless it already has one.
pub async fn set_rolling_back(
    c: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
) -> QueryResult<usize> {
    diesel::update(jobs::table.find(id))
        .set((
            jobs::state.eq(JobState::RollingBack),
            jobs::error.eq(coalesce(jobs::error, Some(reason))),
            jobs::updated_at.eq(now),
        ))
        .execute(c)
        .await
}

pub async fn request_cancel(c: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::update(jobs::table.find(id))
        .set((jobs::cancel_requested.eq(true), jobs::updated_at.eq(now)))
        .execute(c)
        .await
}

pub async fn add_cancelled(c: &mut AsyncPgConnection, id: Uuid, n: i32) -> QueryResult<usize> {
    diesel::update(jobs::table.find(id))
        .set(jobs::cancelled.eq(jobs::cancelled + n))
        .execute(c)
        .await
}

/// Counts a slice's outcomes: devices configured, failed (either way) and configured back.
pub async fn add_outcomes(
    c: &mut AsyncPgConnection,
    id: Uuid,
    applied: i32,
    failed: i32,
    reverted: i32,
) -> QueryResult<usize> {
    diesel::update(jobs::table.find(id))
        .set((
            jobs::applied.eq(jobs::applied + applied),
            jobs::failed.eq(jobs::failed + failed),
            jobs::reverted.eq(jobs::reverted + reverted),
            jobs::updated_at.eq(now),
        ))
        .execute(c)
        .await
}

pub async fn add_confirmed(c: &mut AsyncPgConnection, id: Uuid, n: i32) -> QueryResult<usize> {
    diesel::update(jobs::table.find(id))
        .set((
            jobs::confirmed.eq(jobs::confirmed + n),
            jobs::updated_at.eq(now),
        ))
        .execute(c)
        .await
}

/// Ends an applying or rolling-back job in the state its items and counts give.
pub async fn finish(c: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/finalize_job.sql"))
        .bind::<SqlUuid, _>(id)
        .execute(c)
        .await
}
