//! Cycle bookkeeping: start (cron tick or on demand), counters per stage, completion.

use crate::Scheduler;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tally_bus::{consumer::HandlerError, proto};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cycle {0} is still running")]
    Running(Uuid),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
}

#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Starts a cycle. A scheduled one is keyed by its tick, so replicas seeing the same tick start
/// it once (`Ok(None)` for the others). An on-demand one is refused while another runs.
pub async fn start(
    s: &Scheduler,
    trigger: &str,
    tick: Option<DateTime<Utc>>,
) -> Result<Option<Uuid>, StartError> {
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if tick.is_none() {
            let running: Vec<IdRow> = diesel::sql_query(
                "SELECT id FROM sched.cycles WHERE state = 'running' ORDER BY started_at LIMIT 1 FOR UPDATE",
            )
            .load(c)
            .await?;
            if let Some(r) = running.into_iter().next() {
                return Err(StartError::Running(r.id));
            }
        }
        let id = Uuid::now_v7();
        let n = diesel::sql_query(
            "INSERT INTO sched.cycles (id, trigger, scheduled_for) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(trigger)
        .bind::<Nullable<Timestamptz>, _>(tick)
        .execute(c)
        .await?;
        if n == 0 {
            // The tick was taken by another replica, or a cycle is running (unique index).
            if let Some(t) = tick {
                let taken: Vec<IdRow> =
                    diesel::sql_query("SELECT id FROM sched.cycles WHERE scheduled_for = $1")
                        .bind::<Timestamptz, _>(t)
                        .load(c)
                        .await?;
                if taken.is_empty() {
                    let running: Vec<IdRow> = diesel::sql_query(
                        "SELECT id FROM sched.cycles WHERE state = 'running' LIMIT 1",
                    )
                    .load(c)
                    .await?;
                    if let Some(r) = running.into_iter().next() {
                        return Err(StartError::Running(r.id));
                    }
                }
            } else {
                let running: Vec<IdRow> = diesel::sql_query(
                    "SELECT id FROM sched.cycles WHERE state = 'running' LIMIT 1",
                )
                .load(c)
                .await?;
                if let Some(r) = running.into_iter().next() {
                    return Err(StartError::Running(r.id));
                }
            }
            return Ok(None);
        }
        tally_bus::emit(
            c,
            Schema::Sched,
            &proto::CycleStarted {
                cycle_id: id.to_string(),
                trigger: trigger.to_owned(),
                started_at_ms: Utc::now().timestamp_millis(),
            },
        )
        .await?;
        tracing::info!(cycle = %id, trigger, "cycle started");
        Ok(Some(id))
    })
    .await
}

/// Fires a cycle at each tick of `cron` until dropped.
pub async fn run_cron(s: Scheduler, cron: croner::Cron) {
    loop {
        let now = Utc::now();
        let next = match cron.find_next_occurrence(&now, false) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cron has no next occurrence; scheduled cycles stop");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        match start(&s, "schedule", Some(next)).await {
            Ok(Some(id)) => tracing::info!(cycle = %id, tick = %next, "scheduled cycle started"),
            Ok(None) => tracing::debug!(tick = %next, "another replica started this tick's cycle"),
            Err(StartError::Running(id)) => tracing::warn!(
                running = %id, tick = %next,
                "scheduled cycle skipped: the previous cycle is still running"
            ),
            Err(e) => tracing::error!(error = %e, tick = %next, "scheduled cycle could not start"),
        }
    }
}

/// Counter increments carried by one event.
#[derive(Debug, Default)]
pub struct Update {
    pub cycle_id: String,
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
    /// Devices whose ACK import succeeded / failed (each counted once per cycle).
    pub ack_ok_devices: Vec<Uuid>,
    pub ack_failed_devices: Vec<Uuid>,
    /// (device, stage, reason)
    pub failures: Vec<(String, &'static str, String)>,
}

fn n(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl From<proto::CollectionStarted> for Update {
    fn from(e: proto::CollectionStarted) -> Self {
        Self {
            cycle_id: e.cycle_id,
            devices: Some(n(e.devices)),
            ..Default::default()
        }
    }
}

impl From<proto::CollectionProgress> for Update {
    fn from(e: proto::CollectionProgress) -> Self {
        Self {
            cycle_id: e.cycle_id,
            devices_ok: n(e.devices_ok),
            devices_failed: n(e.devices_failed),
            devices_with_reports: n(e.devices_with_reports),
            reports_stored: n(e.reports_stored),
            reports_quarantined: n(e.reports_quarantined),
            reports_duplicate: n(e.reports_duplicate),
            failures: e
                .failures
                .into_iter()
                .map(|f| (f.device_id, "collection", f.reason))
                .collect(),
            ..Default::default()
        }
    }
}

impl From<proto::UploadProgress> for Update {
    fn from(e: proto::UploadProgress) -> Self {
        Self {
            cycle_id: e.cycle_id,
            reports_uploaded: n(e.reports_uploaded),
            reports_upload_failed: n(e.reports_failed),
            devices_upload_failed: n(e.devices_failed),
            batches: n(e.batches),
            failures: e
                .failures
                .into_iter()
                .map(|f| (f.device_id, "upload", f.reason))
                .collect(),
            ..Default::default()
        }
    }
}

impl From<proto::AcksImported> for Update {
    fn from(e: proto::AcksImported) -> Self {
        Self {
            cycle_id: e.cycle_id,
            ack_ok_devices: e
                .ok_devices
                .iter()
                .filter_map(|d| Uuid::parse_str(d).ok())
                .collect(),
            ack_failed_devices: e
                .failures
                .iter()
                .filter_map(|f| Uuid::parse_str(&f.device_id).ok())
                .collect(),
            failures: e
                .failures
                .into_iter()
                .map(|f| (f.device_id, "ack", f.reason))
                .collect(),
            ..Default::default()
        }
    }
}

/// Applies an event's counters once (inbox), then closes the cycle when every stage is done.
pub async fn apply(s: &Scheduler, msg_id: &str, u: Update) -> Result<(), HandlerError> {
    // Work outside any cycle (manual uploads) has no cycle to count, but its ACKs still count
    // for the devices' deadlines.
    let cycle = Uuid::parse_str(&u.cycle_id).ok();
    if cycle.is_none() && u.ack_ok_devices.is_empty() {
        return Ok(());
    }
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Sched, msg_id).await? {
            return Ok(());
        }
        crate::fleet::acks_installed(c, &u.ack_ok_devices, crate::compliance::clock(s)).await?;
        if let Some(cycle) = cycle {
            add(c, cycle, &u).await?;
            crate::compliance::raise_failures(c, s, cycle, &u.failures).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await
}

#[derive(diesel::QueryableByName)]
struct Flip {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    inserted: bool,
}

/// Records per-device ACK outcomes; returns (newly ok, newly failed) device counts, a device
/// moving from failed to ok counting -1 failed.
async fn ack_outcomes(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    u: &Update,
) -> Result<(i32, i32), diesel::result::Error> {
    use diesel::sql_types::Array;
    let mut ok = 0;
    let mut failed = 0;
    if !u.ack_ok_devices.is_empty() {
        // DISTINCT: one import slice can install two ACKs of a device (its reports went in two
        // batches), and DO UPDATE may touch a row only once per statement.
        let rows: Vec<Flip> = diesel::sql_query(
            "INSERT INTO sched.cycle_acks (cycle_id, device_id, ok) SELECT DISTINCT $1, d, true FROM unnest($2::uuid[]) AS d \
             ON CONFLICT (cycle_id, device_id) DO UPDATE SET ok = true WHERE NOT sched.cycle_acks.ok \
             RETURNING (xmax = 0) AS inserted",
        )
        .bind::<SqlUuid, _>(cycle)
        .bind::<Array<SqlUuid>, _>(&u.ack_ok_devices)
        .load(c)
        .await?;
        ok = rows.len() as i32;
        failed -= rows.iter().filter(|r| !r.inserted).count() as i32;
    }
    if !u.ack_failed_devices.is_empty() {
        failed += diesel::sql_query(
            "INSERT INTO sched.cycle_acks (cycle_id, device_id, ok) SELECT $1, d, false FROM unnest($2::uuid[]) AS d \
             ON CONFLICT (cycle_id, device_id) DO NOTHING",
        )
        .bind::<SqlUuid, _>(cycle)
        .bind::<Array<SqlUuid>, _>(&u.ack_failed_devices)
        .execute(c)
        .await? as i32;
    }
    Ok((ok, failed))
}

async fn add(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    u: &Update,
) -> Result<(), diesel::result::Error> {
    let (acks_ok, acks_failed) = ack_outcomes(c, cycle, u).await?;
    diesel::sql_query(
        "UPDATE sched.cycles SET \
         devices = COALESCE($2, devices), collection_started = collection_started OR $2 IS NOT NULL, \
         devices_ok = devices_ok + $3, devices_failed = devices_failed + $4, \
         devices_with_reports = devices_with_reports + $5, reports_stored = reports_stored + $6, \
         reports_quarantined = reports_quarantined + $7, reports_duplicate = reports_duplicate + $8, \
         reports_uploaded = reports_uploaded + $9, reports_upload_failed = reports_upload_failed + $10, \
         devices_upload_failed = devices_upload_failed + $11, batches = batches + $12, \
         acks_imported = acks_imported + $13, acks_failed = acks_failed + $14 WHERE id = $1",
    )
    .bind::<SqlUuid, _>(cycle)
    .bind::<Nullable<Int4>, _>(u.devices)
    .bind::<Int4, _>(u.devices_ok)
    .bind::<Int4, _>(u.devices_failed)
    .bind::<Int4, _>(u.devices_with_reports)
    .bind::<Int4, _>(u.reports_stored)
    .bind::<Int4, _>(u.reports_quarantined)
    .bind::<Int4, _>(u.reports_duplicate)
    .bind::<Int4, _>(u.reports_uploaded)
    .bind::<Int4, _>(u.reports_upload_failed)
    .bind::<Int4, _>(u.devices_upload_failed)
    .bind::<Int4, _>(u.batches)
    .bind::<Int4, _>(acks_ok)
    .bind::<Int4, _>(acks_failed)
    .execute(c)
    .await?;
    for (device, stage, reason) in &u.failures {
        if let Ok(d) = Uuid::parse_str(device) {
            diesel::sql_query(
                "INSERT INTO sched.cycle_failures (cycle_id, device_id, stage, reason) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (cycle_id, device_id, stage) DO UPDATE SET reason = excluded.reason, at = now()",
            )
            .bind::<SqlUuid, _>(cycle)
            .bind::<SqlUuid, _>(d)
            .bind::<Text, _>(*stage)
            .bind::<Text, _>(reason)
            .execute(c)
            .await?;
        }
    }
    // Every device collected, and every device with new reports either holds an ACK, failed
    // its import, or was refused upstream.
    diesel::sql_query(
        "UPDATE sched.cycles SET state = CASE WHEN devices_failed + reports_quarantined + devices_upload_failed \
         + acks_failed > 0 THEN 'complete_with_errors' ELSE 'complete' END, finished_at = now() \
         WHERE id = $1 AND state = 'running' AND collection_started \
         AND devices_ok + devices_failed >= devices \
         AND acks_imported + acks_failed + devices_upload_failed >= devices_with_reports",
    )
    .bind::<SqlUuid, _>(cycle)
    .execute(c)
    .await?;
    Ok(())
}
