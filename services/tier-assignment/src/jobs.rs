//! Jobs: a plan committed. The commit recomputes the plan under one advisory lock, so two jobs
//! drawing on the same pool are serialized and the second sees the first one's holdings.

use crate::plan::{self, Mode, Plan, PlanInput, PlanRequest};
use crate::{Tiers, store};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, Bool, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tally_bus::proto;
use tally_store::outbox::Schema;
use utoipa::ToSchema;
use uuid::Uuid;

/// Serializes job commits across every replica.
const COMMIT_LOCK: i64 = 0x7469_6572_735f_6a6f; // "tiers_jo"

/// Rows per multi-row statement when writing a job.
const CHUNK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Db(#[from] diesel::result::Error),
    #[error("{0}")]
    Store(#[from] tally_store::StoreError),
    #[error("the idempotency key {0:?} was used for another request")]
    KeyReused(String),
    #[error("the plan changed since the dry-run (fingerprint {expected} expected, {actual} now)")]
    PlanChanged { expected: String, actual: String },
    #[error("refused: {} of {} devices break a rule or do not fit a pool", .0.rejected.len(), .0.selected)]
    Refused(Box<Plan>),
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("job {0} is already {1}")]
    Finished(Uuid, String),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Job {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub idempotency_key: Option<String>,
    #[diesel(sql_type = Text)]
    pub mode: String,
    /// applying, rolling_back, done, partial, failed, rolled_back, cancelled.
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Bool)]
    pub cancel_requested: bool,
    #[diesel(sql_type = Text)]
    pub fingerprint: String,
    #[diesel(sql_type = Text)]
    pub requested_by: String,
    #[diesel(sql_type = Jsonb)]
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    #[diesel(sql_type = Int4)]
    pub devices_total: i32,
    #[diesel(sql_type = Int4)]
    pub rejected: i32,
    #[diesel(sql_type = Int4)]
    pub applied: i32,
    #[diesel(sql_type = Int4)]
    pub failed: i32,
    #[diesel(sql_type = Int4)]
    pub cancelled: i32,
    #[diesel(sql_type = Int4)]
    pub reverted: i32,
    #[diesel(sql_type = Int4)]
    pub confirmed: i32,
    #[diesel(sql_type = Jsonb)]
    #[schema(value_type = Vec<Object>)]
    pub pools: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

pub const JOB_COLUMNS: &str = "id, idempotency_key, mode, state, cancel_requested, fingerprint, \
    requested_by, request, devices_total, rejected, applied, failed, cancelled, reverted, confirmed, \
    pools, error, created_at, updated_at, finished_at";

pub fn is_finished(state: &str) -> bool {
    matches!(
        state,
        "done" | "partial" | "failed" | "rolled_back" | "cancelled"
    )
}

pub async fn get(
    c: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<Job>, diesel::result::Error> {
    diesel::sql_query(format!(
        "SELECT {JOB_COLUMNS} FROM tiers.jobs WHERE id = $1"
    ))
    .bind::<SqlUuid, _>(id)
    .get_result(c)
    .await
    .map(Some)
    .or_else(|e| match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    })
}

/// Writes the job's current state to the outbox (`tiers.job.changed`).
pub async fn emit_changed(
    c: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<(), diesel::result::Error> {
    if let Some(j) = get(c, id).await? {
        let n = |v: i32| u32::try_from(v).unwrap_or(0);
        tally_bus::emit(
            c,
            Schema::Tiers,
            &proto::TierJobChanged {
                job_id: j.id.to_string(),
                state: j.state,
                mode: j.mode,
                devices_total: n(j.devices_total),
                devices_applied: n(j.applied),
                devices_failed: n(j.failed),
                devices_cancelled: n(j.cancelled),
                devices_confirmed: n(j.confirmed),
                requested_by: j.requested_by,
                at_ms: Utc::now().timestamp_millis(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Computes the plan for `req` on the current state (the dry-run).
pub async fn compute(
    c: &mut AsyncPgConnection,
    req: &PlanRequest,
    target: &plan::ParsedTarget,
) -> Result<Plan, diesel::result::Error> {
    let rules = store::load_rules(c).await?.rules;
    let devices = store::select_devices(c, &req.select).await?;
    let quantity = store::quantities(c).await?;
    let held = store::held(c).await?;
    Ok(plan::plan(&PlanInput {
        rules: &rules,
        devices: &devices,
        quantity: &quantity,
        held: &held,
        target,
        mode: req.mode,
    }))
}

#[derive(Debug)]
pub struct Created {
    pub job: Job,
    /// False when the idempotency key named an existing job, which is returned instead.
    pub created: bool,
}

/// Commits a job: the plan, its items, the ledger holdings, and the job event, all or nothing.
pub async fn create(
    t: &Tiers,
    req: &PlanRequest,
    target: &plan::ParsedTarget,
    idempotency_key: Option<&str>,
    requested_by: &str,
) -> Result<Created, JobError> {
    let hash = req.hash();
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(COMMIT_LOCK)
            .execute(c)
            .await?;
        if let Some(key) = idempotency_key {
            #[derive(QueryableByName)]
            struct Existing {
                #[diesel(sql_type = SqlUuid)]
                id: Uuid,
                #[diesel(sql_type = Text)]
                request_hash: String,
            }
            let existing: Vec<Existing> = diesel::sql_query(
                "SELECT id, request_hash FROM tiers.jobs WHERE idempotency_key = $1",
            )
            .bind::<Text, _>(key)
            .load(c)
            .await?;
            if let Some(e) = existing.into_iter().next() {
                if e.request_hash != hash {
                    return Err(JobError::KeyReused(key.to_owned()));
                }
                let job = get(c, e.id).await?.ok_or(JobError::NotFound(e.id))?;
                return Ok(Created {
                    job,
                    created: false,
                });
            }
        }
        let plan = compute(c, req, target).await?;
        if let Some(expected) = &req.expect_fingerprint
            && expected != &plan.fingerprint
        {
            return Err(JobError::PlanChanged {
                expected: expected.clone(),
                actual: plan.fingerprint,
            });
        }
        if req.mode == Mode::AllOrNothing && !plan.rejected.is_empty() {
            return Err(JobError::Refused(Box::new(plan)));
        }
        let id = Uuid::now_v7();
        let state = match (plan.changes.is_empty(), plan.rejected.is_empty()) {
            (false, _) => "applying",
            (true, true) => "done",
            (true, false) => "failed",
        };
        let request = serde_json::to_value(req).unwrap_or_default();
        let pools = serde_json::to_value(&plan.pools).unwrap_or_default();
        diesel::sql_query(
            "INSERT INTO tiers.jobs (id, idempotency_key, request_hash, request, mode, state, \
             fingerprint, requested_by, devices_total, rejected, pools, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             CASE WHEN $6 = 'applying' THEN NULL ELSE now() END)",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Nullable<Text>, _>(idempotency_key)
        .bind::<Text, _>(&hash)
        .bind::<Jsonb, _>(&request)
        .bind::<Text, _>(req.mode.as_str())
        .bind::<Text, _>(state)
        .bind::<Text, _>(&plan.fingerprint)
        .bind::<Text, _>(requested_by)
        .bind::<Int4, _>(
            i32::try_from(plan.changes.len() + plan.rejected.len()).unwrap_or(i32::MAX),
        )
        .bind::<Int4, _>(i32::try_from(plan.rejected.len()).unwrap_or(i32::MAX))
        .bind::<Jsonb, _>(&pools)
        .execute(c)
        .await?;
        write_items(c, id, &plan).await?;
        emit_changed(c, id).await?;
        let job = get(c, id).await?.ok_or(JobError::NotFound(id))?;
        Ok(Created { job, created: true })
    })
    .await
}

async fn write_items(
    c: &mut AsyncPgConnection,
    job: Uuid,
    plan: &Plan,
) -> Result<(), diesel::result::Error> {
    for (n, chunk) in plan.changes.chunks(CHUNK).enumerate() {
        let col = |f: fn(&plan::Change) -> &str| -> Vec<String> {
            chunk.iter().map(|x| f(x).to_owned()).collect()
        };
        let opt = |f: fn(&plan::Change) -> &Option<String>| -> Vec<Option<String>> {
            chunk.iter().map(|x| f(x).clone()).collect()
        };
        let ids: Vec<Uuid> = chunk.iter().map(|x| x.device_id).collect();
        let seq: Vec<i32> = (0..chunk.len())
            .map(|i| i32::try_from(n * CHUNK + i).unwrap_or(i32::MAX))
            .collect();
        // One statement: the items (with the levels each device holds now, read in the same
        // snapshot) and the ledger rows that now hold the new licenses.
        diesel::sql_query(
            "WITH u AS (SELECT * FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[], \
               $6::text[], $7::text[], $8::text[]) AS u(id, seq, n, d, v, np, dp)), \
             items AS (INSERT INTO tiers.job_items (job_id, device_id, seq, hostname, state, \
               from_network, from_dna, from_va, from_network_pool, from_dna_pool, to_network, \
               to_dna, to_va, to_network_pool, to_dna_pool) \
               SELECT $1, d.id, u.seq, d.hostname, 'pending', d.network_license, d.dna_tier, \
               d.virtual_account, d.network_pool, d.dna_pool, u.n, u.d, u.v, u.np, u.dp \
               FROM u JOIN tiers.devices d ON d.id = u.id) \
             UPDATE tiers.devices d SET network_license = u.n, dna_tier = u.d, virtual_account = u.v, \
             network_pool = u.np, dna_pool = u.dp, state = 'applying', job_id = $1 \
             FROM u WHERE d.id = u.id",
        )
        .bind::<SqlUuid, _>(job)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Int4>, _>(&seq)
        .bind::<Array<Text>, _>(col(|x| &x.to.network_license))
        .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.dna_tier))
        .bind::<Array<Text>, _>(col(|x| &x.to.virtual_account))
        .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.network_pool))
        .bind::<Array<Nullable<Text>>, _>(opt(|x| &x.to.dna_pool))
        .execute(c)
        .await?;
    }
    for (n, chunk) in plan.rejected.chunks(CHUNK).enumerate() {
        let ids: Vec<Uuid> = chunk.iter().map(|x| x.device_id).collect();
        let seq: Vec<i32> = (0..chunk.len())
            .map(|i| i32::try_from(plan.changes.len() + n * CHUNK + i).unwrap_or(i32::MAX))
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
        diesel::sql_query(
            "INSERT INTO tiers.job_items (job_id, device_id, seq, hostname, state, from_network, \
             from_dna, from_va, to_network, to_dna, to_va, error) \
             SELECT $1, u.id, u.seq, u.hostname, 'rejected', d.network_license, d.dna_tier, \
             d.virtual_account, d.network_license, d.dna_tier, d.virtual_account, u.error \
             FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[]) AS u(id, seq, hostname, error) \
             JOIN tiers.devices d ON d.id = u.id",
        )
        .bind::<SqlUuid, _>(job)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Int4>, _>(&seq)
        .bind::<Array<Text>, _>(&hostnames)
        .bind::<Array<Text>, _>(&errors)
        .execute(c)
        .await?;
    }
    Ok(())
}

/// Gives items back to their old levels in the ledger (they were never configured, or were
/// configured back).
pub async fn restore_ledger(
    c: &mut AsyncPgConnection,
    job: Uuid,
    devices: &[Uuid],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "UPDATE tiers.devices d SET network_license = i.from_network, dna_tier = i.from_dna, \
         virtual_account = i.from_va, network_pool = i.from_network_pool, dna_pool = i.from_dna_pool, \
         state = 'active', job_id = NULL \
         FROM tiers.job_items i WHERE i.job_id = $1 AND i.device_id = ANY($2) AND d.id = i.device_id \
         AND d.job_id = $1",
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Array<SqlUuid>, _>(devices)
    .execute(c)
    .await?;
    Ok(())
}

/// Starts undoing an all-or-nothing job: items not yet configured are cancelled, configured ones
/// are queued to be configured back. Items another worker holds right now are left to it; it
/// sees the job rolling back when it commits.
pub async fn begin_rollback(
    c: &mut AsyncPgConnection,
    job: Uuid,
    reason: &str,
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "UPDATE tiers.jobs SET state = 'rolling_back', error = coalesce(error, $2), updated_at = now() \
         WHERE id = $1",
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Text, _>(reason)
    .execute(c)
    .await?;
    cancel_pending(c, job).await?;
    diesel::sql_query(
        "UPDATE tiers.job_items SET state = 'revert_pending', updated_at = now() \
         WHERE job_id = $1 AND state IN ('applied', 'confirmed')",
    )
    .bind::<SqlUuid, _>(job)
    .execute(c)
    .await?;
    Ok(())
}

/// Cancels the job's items no worker holds right now and restores their ledger rows.
async fn cancel_pending(c: &mut AsyncPgConnection, job: Uuid) -> Result<(), diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        device_id: Uuid,
    }
    let ids: Vec<Id> = diesel::sql_query(
        "UPDATE tiers.job_items SET state = 'cancelled', updated_at = now() \
         WHERE (job_id, device_id) IN (SELECT job_id, device_id FROM tiers.job_items \
         WHERE job_id = $1 AND state = 'pending' FOR UPDATE SKIP LOCKED) RETURNING device_id",
    )
    .bind::<SqlUuid, _>(job)
    .load(c)
    .await?;
    let ids: Vec<Uuid> = ids.into_iter().map(|i| i.device_id).collect();
    restore_ledger(c, job, &ids).await?;
    diesel::sql_query("UPDATE tiers.jobs SET cancelled = cancelled + $2 WHERE id = $1")
        .bind::<SqlUuid, _>(job)
        .bind::<Int4, _>(i32::try_from(ids.len()).unwrap_or(i32::MAX))
        .execute(c)
        .await?;
    Ok(())
}

/// Ends the job once no item is waiting for a worker.
pub async fn finalize_if_done(
    c: &mut AsyncPgConnection,
    job: Uuid,
) -> Result<(), diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Open {
        #[diesel(sql_type = Bool)]
        open: bool,
    }
    let open: Open = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM tiers.job_items WHERE job_id = $1 \
         AND state IN ('pending', 'revert_pending', 'pushing', 'reverting')) AS open",
    )
    .bind::<SqlUuid, _>(job)
    .get_result(c)
    .await?;
    if open.open {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE tiers.jobs SET state = CASE \
           WHEN state = 'rolling_back' THEN CASE \
             WHEN EXISTS (SELECT 1 FROM tiers.job_items WHERE job_id = $1 AND state = 'revert_failed') \
             THEN 'failed' WHEN cancel_requested THEN 'cancelled' ELSE 'rolled_back' END \
           WHEN cancel_requested THEN 'cancelled' \
           WHEN failed > 0 OR rejected > 0 THEN CASE WHEN applied > 0 THEN 'partial' ELSE 'failed' END \
           ELSE 'done' END, \
         finished_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('applying', 'rolling_back')",
    )
    .bind::<SqlUuid, _>(job)
    .execute(c)
    .await?;
    Ok(())
}

/// Cancels a job: no more devices are configured; an all-or-nothing job also configures its
/// devices back.
pub async fn cancel(t: &Tiers, id: Uuid) -> Result<Job, JobError> {
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        let job: Option<Job> = diesel::sql_query(format!(
            "SELECT {JOB_COLUMNS} FROM tiers.jobs WHERE id = $1 FOR UPDATE"
        ))
        .bind::<SqlUuid, _>(id)
        .get_result(c)
        .await
        .map(Some)
        .or_else(|e| match e {
            diesel::result::Error::NotFound => Ok(None),
            e => Err(e),
        })?;
        let job = job.ok_or(JobError::NotFound(id))?;
        if is_finished(&job.state) {
            return Err(JobError::Finished(id, job.state));
        }
        diesel::sql_query(
            "UPDATE tiers.jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
        )
        .bind::<SqlUuid, _>(id)
        .execute(c)
        .await?;
        if job.mode == Mode::AllOrNothing.as_str() {
            begin_rollback(c, id, "cancelled by an operator").await?;
        } else {
            cancel_pending(c, id).await?;
        }
        finalize_if_done(c, id).await?;
        emit_changed(c, id).await?;
        get(c, id).await?.ok_or(JobError::NotFound(id))
    })
    .await
}

/// A virtual account transfer asked for through the Catalyst Center API: a best-effort job that
/// moves the devices, answered with `TransferAccepted`. The task id is the idempotency key, so a
/// redelivered request finds its job instead of starting another.
pub async fn transfer(
    t: &Tiers,
    msg_id: &str,
    ev: proto::TransferRequested,
) -> Result<(), tally_bus::consumer::HandlerError> {
    use tally_bus::consumer::HandlerError;
    let ids = ev
        .device_ids
        .iter()
        .map(|d| Uuid::parse_str(d))
        .collect::<Result<Vec<_>, _>>();
    let req = PlanRequest {
        select: plan::Selector {
            device_ids: ids.clone().unwrap_or_default(),
            ..plan::Selector::default()
        },
        target: plan::Target {
            virtual_account: Some(ev.virtual_account.clone()),
            ..plan::Target::default()
        },
        mode: Mode::BestEffort,
        expect_fingerprint: None,
    };
    let outcome = match (ids, req.validate()) {
        (Err(e), _) => Err(format!("device_uuids: {e}")),
        (_, Err(errs)) => Err(errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")),
        (Ok(_), Ok(target)) => {
            let key = format!("transfer:{}", ev.task_id);
            let by = format!("catalyst-api:{}", ev.requested_by);
            match create(t, &req, &target, Some(&key), &by).await {
                Ok(c) => Ok(c.job),
                Err(JobError::Db(e)) => return Err(HandlerError::Retry(e.to_string())),
                Err(JobError::Store(e)) => return Err(HandlerError::Retry(e.to_string())),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let accepted = match outcome {
        Ok(job) => proto::TransferAccepted {
            task_id: ev.task_id.clone(),
            job_id: job.id.to_string(),
            error: String::new(),
            devices: u32::try_from(job.devices_total - job.rejected).unwrap_or(0),
        },
        Err(error) => proto::TransferAccepted {
            task_id: ev.task_id.clone(),
            error,
            ..Default::default()
        },
    };
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !tally_store::outbox::claim(c, Schema::Tiers, msg_id).await? {
            return Ok(());
        }
        tally_bus::emit(c, Schema::Tiers, &accepted).await?;
        Ok::<_, HandlerError>(())
    })
    .await
}
