//! Cycle bookkeeping: start (cron tick or on demand), counters per stage, completion.

use crate::Scheduler;
use crate::store::cycles::{self as store, Counts, Stage};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use tally_bus::{consumer::HandlerError, proto};
use tally_store::outbox::{Schema, once};
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

/// Starts a cycle. A scheduled one is keyed by its tick, so replicas seeing the same tick start
/// it once (`Ok(None)` for the others). An on-demand one is refused while another runs.
pub async fn start(
    s: &Scheduler,
    trigger: &str,
    tick: Option<DateTime<Utc>>,
) -> Result<Option<Uuid>, StartError> {
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if tick.is_none()
            && let Some(id) = store::running(c, true).await?
        {
            return Err(StartError::Running(id));
        }
        let id = Uuid::now_v7();
        if !store::insert(c, id, trigger, tick).await? {
            // The tick was taken by another replica (Ok(None)), or a cycle is running (unique
            // index).
            let taken = match tick {
                Some(t) => store::for_tick(c, t).await?.is_some(),
                None => false,
            };
            if !taken && let Some(r) = store::running(c, false).await? {
                return Err(StartError::Running(r));
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
    /// The ACK counters are left at 0: they come from the per-device outcomes below.
    pub counts: Counts,
    /// Devices whose ACK import succeeded / failed (each counted once per cycle).
    pub ack_ok_devices: Vec<Uuid>,
    pub ack_failed_devices: Vec<Uuid>,
    /// (device, stage, reason)
    pub failures: Vec<(String, Stage, String)>,
}

fn n(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl From<proto::CollectionStarted> for Update {
    fn from(e: proto::CollectionStarted) -> Self {
        Self {
            cycle_id: e.cycle_id,
            counts: Counts {
                devices: Some(n(e.devices)),
                ..Counts::default()
            },
            ..Default::default()
        }
    }
}

impl From<proto::CollectionProgress> for Update {
    fn from(e: proto::CollectionProgress) -> Self {
        Self {
            cycle_id: e.cycle_id,
            counts: Counts {
                devices_ok: n(e.devices_ok),
                devices_failed: n(e.devices_failed),
                devices_with_reports: n(e.devices_with_reports),
                reports_stored: n(e.reports_stored),
                reports_quarantined: n(e.reports_quarantined),
                reports_duplicate: n(e.reports_duplicate),
                ..Counts::default()
            },
            failures: e
                .failures
                .into_iter()
                .map(|f| (f.device_id, Stage::Collection, f.reason))
                .collect(),
            ..Default::default()
        }
    }
}

impl From<proto::UploadProgress> for Update {
    fn from(e: proto::UploadProgress) -> Self {
        Self {
            cycle_id: e.cycle_id,
            counts: Counts {
                reports_uploaded: n(e.reports_uploaded),
                reports_upload_failed: n(e.reports_failed),
                devices_upload_failed: n(e.devices_failed),
                batches: n(e.batches),
                ..Counts::default()
            },
            failures: e
                .failures
                .into_iter()
                .map(|f| (f.device_id, Stage::Upload, f.reason))
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
                .map(|f| (f.device_id, Stage::Ack, f.reason))
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
    let now = s.now();
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        crate::fleet::acks_installed(c, &u.ack_ok_devices, now).await?;
        if let Some(cycle) = cycle {
            add(c, cycle, &u).await?;
            crate::alerts::raise_failures(c, s, cycle, &u.failures).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// Records per-device ACK outcomes; returns (newly ok, newly failed) device counts, a device
/// moving from failed to ok counting -1 failed.
async fn ack_outcomes(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    u: &Update,
) -> Result<(i32, i32), diesel::result::Error> {
    let mut ok = 0;
    let mut failed = 0;
    if !u.ack_ok_devices.is_empty() {
        let (new_ok, recovered) = store::acks_ok(c, cycle, &u.ack_ok_devices).await?;
        ok = new_ok;
        failed -= recovered;
    }
    if !u.ack_failed_devices.is_empty() {
        failed += store::acks_failed(c, cycle, &u.ack_failed_devices).await?;
    }
    Ok((ok, failed))
}

async fn add(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    u: &Update,
) -> Result<(), diesel::result::Error> {
    let (acks_imported, acks_failed) = ack_outcomes(c, cycle, u).await?;
    let counts = Counts {
        acks_imported,
        acks_failed,
        ..u.counts
    };
    store::add_counts(c, cycle, &counts).await?;
    for (device, stage, reason) in &u.failures {
        if let Ok(d) = Uuid::parse_str(device) {
            store::record_failure(c, cycle, d, *stage, reason).await?;
        }
    }
    store::close_if_done(c, cycle).await?;
    Ok(())
}
