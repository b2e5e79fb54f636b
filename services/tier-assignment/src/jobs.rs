//! Jobs: a plan committed. The commit recomputes the plan under one advisory lock, so two jobs
//! drawing on the same pool are serialized and the second sees the first one's holdings.

use crate::Tiers;
use crate::plan::{self, Mode, Plan, PlanInput, PlanRequest};
use crate::store::{self, devices, items, jobs::NewJob};
use chrono::Utc;
use diesel::OptionalExtension;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tally_bus::proto;
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

pub use crate::store::{Job, JobState};

/// Serializes job commits across every replica.
const COMMIT_LOCK: i64 = 0x7469_6572_735f_6a6f; // "tiers_jo"

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

/// Whether a job in `state` (its text) is over: unknown states are not.
pub fn is_finished(state: &str) -> bool {
    state.parse::<JobState>().is_ok_and(JobState::is_finished)
}

pub async fn get(
    c: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<Job>, diesel::result::Error> {
    store::jobs::get(c, id).await
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
        store::jobs::lock_commits(c, COMMIT_LOCK).await?;
        if let Some(key) = idempotency_key
            && let Some((id, request_hash)) = store::jobs::by_key(c, key).await?
        {
            if request_hash != hash {
                return Err(JobError::KeyReused(key.to_owned()));
            }
            let job = get(c, id).await?.ok_or(JobError::NotFound(id))?;
            return Ok(Created {
                job,
                created: false,
            });
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
            (false, _) => JobState::Applying,
            (true, true) => JobState::Done,
            (true, false) => JobState::Failed,
        };
        let request = serde_json::to_value(req).unwrap_or_default();
        let pools = serde_json::to_value(&plan.pools).unwrap_or_default();
        store::jobs::insert(
            c,
            &NewJob {
                id,
                idempotency_key,
                request_hash: &hash,
                request: &request,
                mode: req.mode,
                state,
                fingerprint: &plan.fingerprint,
                requested_by,
                devices_total: i32::try_from(plan.changes.len() + plan.rejected.len())
                    .unwrap_or(i32::MAX),
                rejected: i32::try_from(plan.rejected.len()).unwrap_or(i32::MAX),
                pools: &pools,
            },
        )
        .await?;
        items::write(c, id, &plan.changes, &plan.rejected).await?;
        emit_changed(c, id).await?;
        let job = get(c, id).await?.ok_or(JobError::NotFound(id))?;
        Ok(Created { job, created: true })
    })
    .await
}

/// Starts undoing an all-or-nothing job: items not yet configured are cancelled, configured ones
/// are queued to be configured back. Items another worker holds right now are left to it; it
/// sees the job rolling back when it commits.
pub async fn begin_rollback(
    c: &mut AsyncPgConnection,
    job: Uuid,
    reason: &str,
) -> Result<(), diesel::result::Error> {
    store::jobs::set_rolling_back(c, job, reason).await?;
    cancel_pending(c, job).await?;
    items::revert_configured(c, job).await?;
    Ok(())
}

/// Cancels the job's items no worker holds right now and restores their ledger rows.
async fn cancel_pending(c: &mut AsyncPgConnection, job: Uuid) -> Result<(), diesel::result::Error> {
    let ids = items::cancel_pending(c, job).await?;
    devices::restore_ledger(c, job, &ids).await?;
    store::jobs::add_cancelled(c, job, i32::try_from(ids.len()).unwrap_or(i32::MAX)).await?;
    Ok(())
}

/// Ends the job once no item is waiting for a worker.
pub async fn finalize_if_done(
    c: &mut AsyncPgConnection,
    job: Uuid,
) -> Result<(), diesel::result::Error> {
    if items::any_open(c, job).await? {
        return Ok(());
    }
    store::jobs::finish(c, job).await?;
    Ok(())
}

/// Cancels a job: no more devices are configured; an all-or-nothing job also configures its
/// devices back.
pub async fn cancel(t: &Tiers, id: Uuid) -> Result<Job, JobError> {
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        let (state, mode) = store::jobs::lock(c, id)
            .await
            .optional()?
            .ok_or(JobError::NotFound(id))?;
        if state.is_finished() {
            return Err(JobError::Finished(id, state.to_string()));
        }
        store::jobs::request_cancel(c, id).await?;
        if mode == Mode::AllOrNothing {
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
    once(&mut conn, Schema::Tiers, msg_id, async |c| {
        tally_bus::emit(c, Schema::Tiers, &accepted).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}
