//! ACK delivery: `AcksReceived` queues one row per device ACK; workers lock slices of pending
//! rows, `POST /import` each ACK into its device, and commit outcomes with `AcksImported` events.

use crate::Aggregator;
use crate::store::ack_imports::{self, AckImportState, ImportJob as Job, NewImports};
use diesel_async::AsyncConnection;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_southbound::Target;
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

pub async fn enqueue(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::AcksReceived,
) -> Result<(), HandlerError> {
    let mut new = NewImports::default();
    for a in &ev.acks {
        let device = Uuid::parse_str(&a.device_id)
            .map_err(|e| HandlerError::Poison(format!("device id {:?}: {e}", a.device_id)))?;
        new.id.push(Uuid::now_v7());
        new.device.push(device);
        new.cycle.push(Uuid::parse_str(&a.cycle_id).ok());
        new.report_ids.push(
            a.report_ids
                .iter()
                .map(|r| (*r as i64).to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        new.ack.push(a.ack.clone());
    }
    let mut conn = agg
        .pool
        .get()
        .await
        .map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Rum, msg_id, async |c| {
        ack_imports::enqueue(c, &new).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

async fn import_one(agg: &Aggregator, job: Job) -> (Job, Option<String>) {
    let err = import_err(agg, &job).await;
    (job, err)
}

async fn import_err(agg: &Aggregator, job: &Job) -> Option<String> {
    let (Some(base_url), Some(username), Some(sealed)) =
        (&job.base_url, &job.username, &job.password_sealed)
    else {
        return Some("device is not in inventory".into());
    };
    let password = match agg.secrets.open(sealed) {
        Ok(p) => p,
        Err(e) => return Some(format!("credentials: {e}")),
    };
    let target = Target {
        base_url,
        username,
        password: &password,
    };
    agg.client
        .import_ack(&target, &job.ack)
        .await
        .err()
        .map(|e| e.to_string())
}

/// Works one slice of pending imports. Returns how many it handled.
pub async fn import_slice(agg: &Aggregator) -> Result<usize, tally_store::StoreError> {
    let mut conn = agg.pool.get().await?;
    let n = conn
        .transaction(async |c| {
            let jobs = ack_imports::claim_slice(c, agg.cfg.slice).await?;
            if jobs.is_empty() {
                return Ok(0);
            }
            let n = jobs.len();
            let results: Vec<(Job, Option<String>)> = futures::stream::iter(jobs)
                .map(|j| import_one(agg, j))
                .buffer_unordered(agg.cfg.concurrency.max(1))
                .collect()
                .await;
            let mut ids = Vec::with_capacity(n);
            let mut states = Vec::with_capacity(n);
            let mut errors = Vec::with_capacity(n);
            let mut per_cycle: BTreeMap<String, proto::AcksImported> = BTreeMap::new();
            for (job, err) in results {
                let cycle = job.cycle_id.map(|c| c.to_string()).unwrap_or_default();
                let e = per_cycle
                    .entry(cycle.clone())
                    .or_insert_with(|| proto::AcksImported {
                        cycle_id: cycle,
                        ..Default::default()
                    });
                match &err {
                    None => {
                        e.ok += 1;
                        e.ok_devices.push(job.device_id.to_string());
                    }
                    Some(reason) => {
                        e.failed += 1;
                        e.failures.push(proto::DeviceFailure {
                            device_id: job.device_id.to_string(),
                            reason: reason.clone(),
                        });
                    }
                }
                ids.push(job.id);
                states.push(if err.is_none() {
                    AckImportState::Ok
                } else {
                    AckImportState::Failed
                });
                errors.push(err);
            }
            ack_imports::finish(c, &ids, &states, &errors).await?;
            for ev in per_cycle.values() {
                tally_platform::metrics::inc("acks_imported", u64::from(ev.ok));
                tally_platform::metrics::inc("acks_import_failed", u64::from(ev.failed));
                tally_bus::emit(c, Schema::Rum, ev).await?;
            }
            Ok::<_, diesel::result::Error>(n)
        })
        .await?;
    Ok(n)
}

pub async fn run_worker(agg: Aggregator) {
    loop {
        match import_slice(&agg).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "ACK import slice failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
