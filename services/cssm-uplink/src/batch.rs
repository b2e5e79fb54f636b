//! Online path: accept collected reports, form batches, send them, poll for ACKs.

use crate::Uplink;
use crate::store::batches::{self, DueBatch, NewBatch};
use crate::store::reports::{self, BatchReport, NO_ACK, NewReports, ReportKey};
use crate::store::{BatchMode, BatchState, ReportState, acks};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_cssm::{DeviceUsage, PollOutcome, UploadOutcome};
use tally_domain::Udi;
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// Most ACKs in one `AcksReceived` message (each ACK document is about 1 KiB).
const ACKS_PER_EVENT: usize = 400;

pub async fn accept(
    up: &Uplink,
    msg_id: &str,
    ev: proto::ReportsCollected,
) -> Result<(), HandlerError> {
    let mut conn = up.pool.get().await.map_err(tally_store::StoreError::from)?;
    let cycle = Uuid::parse_str(&ev.cycle_id).ok();
    let mut cols = NewReports::default();
    for r in ev.reports {
        let device = Uuid::parse_str(&r.device_id)
            .map_err(|e| HandlerError::Poison(format!("device id {:?}: {e}", r.device_id)))?;
        cols.pid.push(r.udi_pid);
        cols.serial.push(r.udi_serial);
        cols.report_id.push(r.report_id as i64);
        cols.device.push(device);
        cols.sa.push(r.smart_account);
        cols.va.push(r.virtual_account);
        cols.body.push(r.body);
    }
    // An event with no reports still claims its id: a redelivery of it does nothing either.
    once(&mut conn, Schema::Uplink, msg_id, async |c| {
        if !cols.pid.is_empty() {
            reports::insert(c, &cols, cycle).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// Forms batches from pending reports: per smart/virtual account, full ones at once, the rest
/// once the oldest report has lingered. Returns the number of batches formed.
pub async fn form_batches(up: &Uplink, force: bool) -> Result<usize, tally_store::StoreError> {
    let mut conn = up.pool.get().await?;
    let max = up.cfg.batch_max_reports.max(1) as i64;
    let linger = chrono::Duration::from_std(up.cfg.linger).unwrap_or_default();
    let n = conn
        .transaction(async |c| {
            // One former at a time (senders and replicas alike): two formers skipping each
            // other's locked rows would split a device's reports over two batches.
            batches::lock_forming(c).await?;
            let groups = reports::pending_groups(c).await?;
            let mut formed = 0;
            for g in groups {
                let ripe = force || g.n >= max || g.oldest + linger <= chrono::Utc::now();
                if !ripe {
                    continue;
                }
                let mut picks: Vec<ReportKey> =
                    reports::claim_pending(c, &g.smart_account, &g.virtual_account, max + 1)
                        .await?;
                // A device's reports travel together: when the cap cuts through a device, it
                // waits for the next batch (unless it alone exceeds the cap).
                if let Some(beyond) = picks.get(max as usize).map(|p| p.device_id) {
                    picks.truncate(max as usize);
                    let keep = picks.iter().filter(|p| p.device_id != beyond).count();
                    if keep > 0 {
                        picks.truncate(keep);
                    }
                }
                if picks.is_empty() {
                    continue;
                }
                let id = Uuid::now_v7();
                let mut devices: Vec<Uuid> = picks.iter().map(|p| p.device_id).collect();
                devices.dedup();
                batches::insert(
                    c,
                    &NewBatch {
                        id,
                        mode: BatchMode::Online,
                        smart_account: &g.smart_account,
                        virtual_account: &g.virtual_account,
                        nonce: &Uuid::new_v4().to_string(),
                        state: BatchState::New,
                        reports: picks.len() as i32,
                        devices: devices.len() as i32,
                    },
                )
                .await?;
                reports::mark(c, &picks, ReportState::Batched, Some(id)).await?;
                formed += 1;
            }
            Ok::<_, diesel::result::Error>(formed)
        })
        .await?;
    Ok(n)
}

/// Polls come every `poll_initial` at first (CSSM usually answers within seconds), then back off
/// exponentially to `poll_max` for uploads CSSM takes minutes over.
fn backoff(up: &Uplink, attempts: i32) -> chrono::Duration {
    let base = up.cfg.poll_initial.as_millis() as i64;
    let ms = base
        .saturating_mul(1i64 << (attempts - 4).clamp(0, 16))
        .min(up.cfg.poll_max.as_millis() as i64);
    chrono::Duration::milliseconds(ms.max(100))
}

/// Sends or polls one due batch. Returns false when none was due.
pub async fn step(up: &Uplink) -> Result<bool, tally_store::StoreError> {
    let Some(cssm) = up.cssm.clone() else {
        return Ok(false);
    };
    let mut conn = up.pool.get().await?;
    let worked = conn
        .transaction(async |c| {
            let Some(b) = batches::claim_due(c).await? else {
                return Ok(false);
            };
            let reports = reports::of_batch(c, b.id).await?;
            if b.state == BatchState::New {
                send(up, &cssm, c, &b, &reports).await?;
            } else if let Some(poll_id) = &b.poll_id {
                poll(up, &cssm, c, &b, poll_id, &reports).await?;
            }
            Ok::<_, diesel::result::Error>(true)
        })
        .await?;
    Ok(worked)
}

async fn retry_later(
    up: &Uplink,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    error: &str,
) -> Result<(), diesel::result::Error> {
    tracing::warn!(batch = %b.id, error, "CSSM call failed; will retry");
    batches::retry_later(c, b.id, error, chrono::Utc::now() + backoff(up, b.attempts)).await?;
    Ok(())
}

async fn send(
    up: &Uplink,
    cssm: &tally_cssm::CssmClient,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    reports: &[BatchReport],
) -> Result<(), diesel::result::Error> {
    let udis: Vec<(Uuid, Udi)> = {
        let mut v: Vec<(Uuid, Udi)> = reports
            .iter()
            .map(|r| {
                (
                    r.device_id,
                    Udi {
                        udi_pid: r.udi_pid.clone(),
                        udi_serial_number: r.udi_serial.clone(),
                    },
                )
            })
            .collect();
        v.dedup();
        v
    };
    let usage: Vec<DeviceUsage<'_>> = udis
        .iter()
        .map(|(d, udi)| DeviceUsage {
            udi,
            reports: reports
                .iter()
                .filter(|r| r.device_id == *d)
                .map(|r| r.body.as_slice())
                .collect(),
        })
        .collect();
    match cssm
        .report_usage(&b.smart_account, &b.virtual_account, &b.nonce, &usage)
        .await
    {
        Ok(UploadOutcome::Accepted { poll_id }) => {
            batches::accepted(c, b.id, &poll_id, chrono::Utc::now() + backoff(up, 0)).await?;
            tracing::info!(batch = %b.id, reports = reports.len(), devices = udis.len(), "batch accepted by CSSM");
            Ok(())
        }
        Ok(UploadOutcome::Failed {
            message,
            duplicates,
        }) => refused(c, b, reports, &message, &duplicates).await,
        Err(e) if e.is_transient() => retry_later(up, c, b, &e.to_string()).await,
        Err(e) => retry_later(up, c, b, &e.to_string()).await,
    }
}

/// CSSM refused a batch. Duplicates are dropped (CSSM has them already); when it named them, the
/// rest go back to pending and travel in the next batch; otherwise the whole batch fails.
async fn refused(
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    reports: &[BatchReport],
    message: &str,
    duplicates: &[(Udi, u64)],
) -> Result<(), diesel::result::Error> {
    tracing::warn!(batch = %b.id, message, duplicates = duplicates.len(), "CSSM refused a batch");
    let is_dup = |r: &BatchReport| {
        duplicates.iter().any(|(u, id)| {
            u.udi_pid == r.udi_pid
                && u.udi_serial_number == r.udi_serial
                && *id as i64 == r.report_id
        })
    };
    let (dups, rest): (Vec<&BatchReport>, Vec<&BatchReport>) =
        reports.iter().partition(|r| is_dup(r));
    let requeue = !dups.is_empty();
    let keys = |v: &[&BatchReport]| -> Vec<ReportKey> { v.iter().map(|r| r.key()).collect() };
    let failed: Vec<&BatchReport> = if requeue {
        dups.clone()
    } else {
        reports.iter().collect()
    };
    let why = if requeue {
        "CSSM already has this report (duplicate)"
    } else {
        message
    };
    reports::fail(c, &keys(&failed), why).await?;
    if requeue {
        reports::mark(c, &keys(&rest), ReportState::Pending, None).await?;
    }
    batches::fail(c, b.id, message).await?;
    // Devices left with nothing in flight will get no ACK from this cycle: say so.
    let requeued: std::collections::HashSet<Uuid> = if requeue {
        rest.iter().map(|r| r.device_id).collect()
    } else {
        Default::default()
    };
    let mut per_cycle: BTreeMap<String, proto::UploadProgress> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for r in &failed {
        let cycle = r.cycle_id.map(|c| c.to_string()).unwrap_or_default();
        let e = per_cycle
            .entry(cycle.clone())
            .or_insert_with(|| proto::UploadProgress {
                cycle_id: cycle,
                ..Default::default()
            });
        e.reports_failed += 1;
        if !requeued.contains(&r.device_id) && seen.insert(r.device_id) {
            e.devices_failed += 1;
            e.failures.push(proto::DeviceFailure {
                device_id: r.device_id.to_string(),
                reason: format!("CSSM refused the upload: {message}"),
            });
        }
    }
    for ev in per_cycle.values() {
        tally_platform::metrics::inc("reports_upload_failed", u64::from(ev.reports_failed));
        tally_bus::emit(c, Schema::Uplink, ev).await?;
    }
    Ok(())
}

async fn poll(
    up: &Uplink,
    cssm: &tally_cssm::CssmClient,
    c: &mut AsyncPgConnection,
    b: &DueBatch,
    poll_id: &str,
    reports: &[BatchReport],
) -> Result<(), diesel::result::Error> {
    match cssm.poll(poll_id).await {
        Ok(PollOutcome::Pending) => {
            batches::poll_later(c, b.id, chrono::Utc::now() + backoff(up, b.attempts + 1)).await?;
            Ok(())
        }
        Ok(PollOutcome::Complete(acks)) => {
            let docs: Vec<(Udi, Vec<u64>, String)> = acks
                .into_iter()
                .filter_map(|a| {
                    use base64::Engine;
                    let doc = base64::engine::general_purpose::STANDARD
                        .decode(a.smart_license.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())?;
                    Some((a.sudi, a.report_ids, doc))
                })
                .collect();
            complete(c, b.id, reports, docs, BatchMode::Online).await
        }
        Err(e) => retry_later(up, c, b, &e.to_string()).await,
    }
}

/// Records CSSM's ACKs for a batch (online or offline) and publishes them, one per device.
/// Devices of the batch that got no ACK are reported as failed.
pub(crate) async fn complete(
    c: &mut AsyncPgConnection,
    batch: Uuid,
    reports: &[BatchReport],
    acks: Vec<(Udi, Vec<u64>, String)>,
    source: BatchMode,
) -> Result<(), diesel::result::Error> {
    let mut by_udi: HashMap<(String, String), (Uuid, Option<Uuid>)> = HashMap::new();
    for r in reports {
        let e = by_udi
            .entry((r.udi_pid.clone(), r.udi_serial.clone()))
            .or_insert((r.device_id, r.cycle_id));
        if e.1.is_none() {
            e.1 = r.cycle_id;
        }
    }
    let mut events: Vec<proto::DeviceAck> = Vec::new();
    let mut acked = std::collections::HashSet::new();
    for (udi, report_ids, doc) in acks {
        let Some((device, cycle)) =
            by_udi.get(&(udi.udi_pid.clone(), udi.udi_serial_number.clone()))
        else {
            tracing::warn!(batch = %batch, udi = %udi, "ACK for a device not in the batch; ignored");
            continue;
        };
        if !acked.insert(*device) {
            continue;
        }
        events.push(proto::DeviceAck {
            device_id: device.to_string(),
            cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
            udi_pid: udi.udi_pid,
            udi_serial: udi.udi_serial_number,
            report_ids,
            ack: doc,
        });
    }
    if !events.is_empty() {
        let rows = acks::NewAcks {
            device: events
                .iter()
                .filter_map(|e| Uuid::parse_str(&e.device_id).ok())
                .collect(),
            report_ids: events
                .iter()
                .map(|e| {
                    e.report_ids
                        .iter()
                        .map(|r| (*r as i64).to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect(),
            ack: events.iter().map(|e| e.ack.clone()).collect(),
        };
        acks::insert(c, batch, &rows).await?;
    }
    reports::settle(c, batch, &acked.iter().copied().collect::<Vec<_>>()).await?;
    batches::complete(c, batch).await?;
    let mut per_cycle: BTreeMap<String, proto::UploadProgress> = BTreeMap::new();
    let mut missing = std::collections::HashSet::new();
    for r in reports {
        let cycle = r.cycle_id.map(|c| c.to_string()).unwrap_or_default();
        let e = per_cycle
            .entry(cycle.clone())
            .or_insert_with(|| proto::UploadProgress {
                cycle_id: cycle,
                batches: 1,
                ..Default::default()
            });
        if acked.contains(&r.device_id) {
            e.reports_uploaded += 1;
        } else {
            e.reports_failed += 1;
            if missing.insert(r.device_id) {
                e.devices_failed += 1;
                e.failures.push(proto::DeviceFailure {
                    device_id: r.device_id.to_string(),
                    reason: NO_ACK.into(),
                });
            }
        }
    }
    for ev in per_cycle.values() {
        tally_platform::metrics::inc("reports_uploaded", u64::from(ev.reports_uploaded));
        tally_bus::emit(c, Schema::Uplink, ev).await?;
    }
    for chunk in events.chunks(ACKS_PER_EVENT) {
        tally_bus::emit(
            c,
            Schema::Uplink,
            &proto::AcksReceived {
                acks: chunk.to_vec(),
                source: source.as_str().to_owned(),
            },
        )
        .await?;
    }
    tracing::info!(batch = %batch, acks = acked.len(), source = source.as_str(), "ACKs received");
    Ok(())
}

/// Forms batches and works due ones until the task is dropped.
pub async fn run(up: Uplink) {
    loop {
        let formed = form_batches(&up, false).await;
        if let Err(e) = &formed {
            tracing::warn!(error = %e, "forming batches failed");
        }
        let mut worked = 0;
        loop {
            match step(&up).await {
                Ok(true) => worked += 1,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "uplink step failed");
                    break;
                }
            }
            if worked >= 16 {
                break;
            }
        }
        if worked == 0 && !matches!(formed, Ok(n) if n > 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
