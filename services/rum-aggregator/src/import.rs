//! ACK delivery: `AcksReceived` queues one row per device ACK; workers lock slices of pending
//! rows, `POST /import` each ACK into its device, read the device back, and commit outcomes with
//! `AcksImported` events.
//!
//! Read-back: the device's `cisco-smart-license` `rum-ack/last-received-time` is read before and
//! after the import. The ACK is confirmed only when it moved; a device that answered 2xx but whose
//! last ACK received did not move fails with that reason; a device whose state cannot be read
//! (no RESTCONF, or the read failed) is delivered but unconfirmed, never failed for that alone.
//!
//! The state read after the import also shows the device's policy: a policy that arrived with
//! the ACK (CSSM can send `<smartLicensePolicy>` with it; Tally never reads the ACK document) is
//! there once the device installed it. Each read is recorded in `rum.device_policies` as
//! collection records it, and sent as `DevicePoliciesRead` in the same transaction as the
//! import's outcome, so the scheduler need not wait for the next collection.

use crate::Aggregator;
use crate::collect::{PolicyRead, policy_of, record_policies};
use crate::store::ack_imports::{
    self, AckImportState, Confirmation, Finished, ImportJob as Job, NewImports,
};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_southbound::{StateRead, Target};
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

/// What the device showed of its last ACK received before the import.
enum Before {
    Read(Option<DateTime<Utc>>),
    /// RESTCONF (or the model) is not available: nothing to read back, the reason.
    Unavailable(String),
    /// The read failed: the reason.
    Failed(String),
}

fn show(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
}

/// How recent a stored read of a device's last ACK received must be to stand in for reading it
/// again before an import (collection read it minutes earlier in an online cycle).
const KNOWN_BEFORE_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Imports one ACK and reads the device back; the policy the last read after the import showed.
/// `known_before`: the device's last ACK received as a recent read showed it (the read before
/// the import is then not made again).
async fn import_one(
    agg: &Aggregator,
    job: Job,
    known_before: Option<Option<DateTime<Utc>>>,
) -> (Finished, Option<PolicyRead>) {
    let mut policy = None;
    let done = import_read_back(agg, job, known_before, &mut policy).await;
    (done, policy)
}

async fn import_read_back(
    agg: &Aggregator,
    job: Job,
    known_before: Option<Option<DateTime<Utc>>>,
    policy: &mut Option<PolicyRead>,
) -> Finished {
    let mut done = Finished {
        id: job.id,
        state: AckImportState::Failed,
        error: None,
        confirmation: None,
        confirmation_reason: None,
        ack_received_before: None,
        ack_received_after: None,
    };
    let (Some(base_url), Some(username), Some(sealed)) =
        (&job.base_url, &job.username, &job.password_sealed)
    else {
        done.error = Some("device is not in inventory".into());
        return done;
    };
    let password = match agg.secrets.open(sealed) {
        Ok(p) => p,
        Err(e) => {
            done.error = Some(format!("credentials: {e}"));
            return done;
        }
    };
    let target = Target {
        base_url,
        username,
        password: &password,
    };
    let before = match known_before {
        Some(t) => Before::Read(t),
        None => match agg.client.licensing_state(&target).await {
            Ok(StateRead::Read(s)) => Before::Read(s.last_ack_received),
            Ok(StateRead::Unavailable(r)) => Before::Unavailable(r),
            Err(e) => Before::Failed(e.to_string()),
        },
    };
    if let Err(e) = agg.client.import_ack(&target, &job.ack).await {
        done.error = Some(e.to_string());
        return done;
    }
    done.state = AckImportState::Ok;
    let unconfirmed = |done: &mut Finished, reason: String| {
        done.confirmation = Some(Confirmation::Unconfirmed);
        done.confirmation_reason = Some(reason);
    };
    let before = match before {
        Before::Unavailable(r) => {
            unconfirmed(&mut done, r);
            return done;
        }
        Before::Read(t) => {
            done.ack_received_before = t;
            Ok(t)
        }
        Before::Failed(e) => Err(e),
    };
    let attempts = agg.readback.attempts.max(1);
    let mut last_read = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(agg.readback.delay).await;
        }
        match agg.client.licensing_state(&target).await {
            Ok(StateRead::Read(s)) if !s.has_rum_ack => {
                *policy = Some(policy_of(Ok(StateRead::Read(s))));
                // Software before the model's 2021-03-01 revision: nothing to read back.
                unconfirmed(
                    &mut done,
                    "the device's cisco-smart-license state has no rum-ack (software before \
                     the model's RUM ACK status)"
                        .into(),
                );
                return done;
            }
            Ok(StateRead::Read(s)) => {
                let after = s.last_ack_received;
                *policy = Some(policy_of(Ok(StateRead::Read(s))));
                done.ack_received_after = after;
                last_read = Some(Ok(after));
                let moved = match (&before, after) {
                    (_, None) | (Err(_), _) => false,
                    (Ok(None), Some(_)) => true,
                    // Any change counts: a device whose clock was set back still took it.
                    (Ok(Some(b)), Some(a)) => a != *b,
                };
                if moved {
                    done.confirmation = Some(Confirmation::Confirmed);
                    return done;
                }
                if before.is_err() {
                    break;
                }
            }
            Ok(StateRead::Unavailable(r)) => {
                unconfirmed(&mut done, r);
                return done;
            }
            Err(e) => last_read = Some(Err(e.to_string())),
        }
    }
    match (before, last_read) {
        (Ok(b), Some(Ok(a))) => {
            let reason = format!(
                "device accepted the ACK but its last ACK received did not move (before: {}, after: {})",
                show(b),
                show(a)
            );
            done.state = AckImportState::Failed;
            done.error = Some(reason.clone());
            done.confirmation = Some(Confirmation::NotApplied);
            done.confirmation_reason = Some(reason);
        }
        (Err(e), _) => unconfirmed(
            &mut done,
            format!("the last ACK received could not be read before the import: {e}"),
        ),
        (Ok(_), Some(Err(e))) => unconfirmed(&mut done, format!("read-back failed: {e}")),
        (Ok(_), None) => unconfirmed(&mut done, "read-back did not run".into()),
    }
    done
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
            let mut device_of = BTreeMap::new();
            let mut cycle_of = BTreeMap::new();
            for j in &jobs {
                device_of.insert(j.id, j.device_id);
                cycle_of.insert(j.id, j.cycle_id);
            }
            let ids: Vec<Uuid> = jobs.iter().map(|j| j.device_id).collect();
            let known: BTreeMap<Uuid, Option<DateTime<Utc>>> =
                crate::store::policies::recent_last_acks(c, &ids, Utc::now() - KNOWN_BEFORE_FOR)
                    .await?
                    .into_iter()
                    .collect();
            let (results, read): (Vec<Finished>, Vec<Option<PolicyRead>>) =
                futures::stream::iter(jobs)
                    .map(|j| {
                        let before = known.get(&j.device_id).copied();
                        import_one(agg, j, before)
                    })
                    .buffer_unordered(agg.cfg.concurrency.max(1))
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .unzip();
            // One policy per device (a device can have two imports in a slice): the last read.
            let mut latest: BTreeMap<Uuid, &PolicyRead> = BTreeMap::new();
            for (done, p) in results.iter().zip(&read) {
                if let (Some(device), Some(p)) = (device_of.get(&done.id), p) {
                    let newer = latest.get(device).is_none_or(|q| q.read_at <= p.read_at);
                    if newer {
                        latest.insert(*device, p);
                    }
                }
            }
            let mut per_cycle: BTreeMap<String, proto::AcksImported> = BTreeMap::new();
            for done in &results {
                let device = device_of.get(&done.id).copied().unwrap_or_default();
                let cycle = cycle_of
                    .get(&done.id)
                    .copied()
                    .flatten()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let e = per_cycle
                    .entry(cycle.clone())
                    .or_insert_with(|| proto::AcksImported {
                        cycle_id: cycle,
                        ..Default::default()
                    });
                if done.state == AckImportState::Ok {
                    e.ok += 1;
                    e.ok_devices.push(device.to_string());
                } else {
                    e.failed += 1;
                    e.failures.push(proto::DeviceFailure {
                        device_id: device.to_string(),
                        reason: done.error.clone().unwrap_or_default(),
                    });
                }
                let metric = match done.confirmation {
                    Some(Confirmation::Confirmed) => "acks_confirmed",
                    Some(Confirmation::Unconfirmed) => "acks_unconfirmed",
                    Some(Confirmation::NotApplied) => "acks_not_applied",
                    None => continue,
                };
                tally_platform::metrics::inc(metric, 1);
            }
            ack_imports::finish(c, &results).await?;
            record_policies(c, latest).await?;
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
