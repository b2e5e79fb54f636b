//! Collection: a cycle queues one row per device; workers take slices of pending rows, run
//! close-reports then all-reports on each device, and commit reports, quarantine, outcomes and
//! the `ReportsCollected` events in one transaction. Each device's own policy is read from its
//! `cisco-smart-license` state on the way (see [`read_policy`]); a failure to read it never fails
//! the collection.

use crate::Aggregator;
use crate::store::collections::{self, CollectionJob as Job, CollectionState, Outcomes};
use crate::store::policies::{self, NewPolicies, PolicySource};
use crate::store::reports::{self, NewQuarantine, NewReports, ReportKey};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::policy::Policy;
use tally_domain::{Udi, rum};
use tally_southbound::{SouthboundError, StateRead, Target};
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

/// Keeps each `ReportsCollected` message well under NATS' default 1 MiB payload limit.
const EVENT_BYTES: usize = 600 * 1024;

pub async fn start_cycle(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::CycleStarted,
) -> Result<(), HandlerError> {
    let cycle = Uuid::parse_str(&ev.cycle_id)
        .map_err(|e| HandlerError::Poison(format!("cycle id {:?}: {e}", ev.cycle_id)))?;
    let mut conn = agg
        .pool
        .get()
        .await
        .map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Rum, msg_id, async |c| {
        let n = collections::queue_cycle(c, cycle).await?;
        tally_bus::emit(
            c,
            Schema::Rum,
            &proto::CollectionStarted {
                cycle_id: ev.cycle_id.clone(),
                devices: u32::try_from(n).unwrap_or(u32::MAX),
            },
        )
        .await?;
        tracing::info!(cycle = %cycle, devices = n, "collection queued");
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

/// One accepted report: what was read off it, and its exact text.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub info: rum::ReportInfo,
    pub raw: String,
}

#[derive(Debug, Default)]
pub struct Checked {
    pub accepted: Vec<Accepted>,
    /// (reason, exact bytes)
    pub quarantined: Vec<(String, Vec<u8>)>,
}

/// Checks each report object; a report for another UDI than the device's is quarantined too.
pub fn check_reports(expected: &Udi, raws: Vec<String>) -> Checked {
    let mut out = Checked::default();
    for raw in raws {
        match rum::inspect_report(&raw) {
            Ok(info) if &info.udi == expected => out.accepted.push(Accepted { info, raw }),
            Ok(info) => out.quarantined.push((
                format!(
                    "report is for {} but was collected from {expected}",
                    info.udi
                ),
                raw.into_bytes(),
            )),
            Err(e) => out.quarantined.push((e.to_string(), raw.into_bytes())),
        }
    }
    out
}

/// A stored read as `DevicePoliciesRead` carries it to the scheduler.
fn policy_event(device: Uuid, p: &PolicyRead) -> proto::DevicePolicy {
    let attrs = |a: tally_domain::policy::PolicyAttrs| proto::PolicyAttrs {
        first_report_days: a.first_report_days,
        reporting_frequency_days: a.reporting_frequency_days,
        report_on_change_days: a.report_on_change_days,
    };
    let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or(0, |t| t.timestamp_millis());
    proto::DevicePolicy {
        device_id: device.to_string(),
        source: p.source.as_str().to_owned(),
        reason: p.reason.clone().unwrap_or_default(),
        name: p.policy.name.clone(),
        ack_required: p.policy.ack_required,
        perpetual: Some(attrs(p.policy.perpetual)),
        subscription: Some(attrs(p.policy.subscription)),
        enforced: Some(attrs(p.policy.enforced)),
        last_ack_ms: ms(p.last_ack_received),
        next_ack_deadline_ms: ms(p.device_next_ack_deadline),
        read_at_ms: p.read_at.timestamp_millis(),
    }
}

struct Outcome {
    job: Job,
    checked: Checked,
    error: Option<String>,
    policy: Option<PolicyRead>,
}

/// A device's policy as one collection read it (or had to assume it).
#[derive(Debug, Clone)]
pub struct PolicyRead {
    pub source: PolicySource,
    /// Why the policy is assumed (or what was odd about the device's answer).
    pub reason: Option<String>,
    pub policy: Policy,
    pub policy_type: Option<String>,
    pub device_policy: Option<serde_json::Value>,
    pub installed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_ack_received: Option<chrono::DateTime<chrono::Utc>>,
    pub device_next_ack_deadline: Option<chrono::DateTime<chrono::Utc>>,
    pub notes: Option<String>,
    pub read_failed: bool,
    pub read_at: chrono::DateTime<chrono::Utc>,
}

impl PolicyRead {
    fn assumed(reason: String, read_failed: bool) -> Self {
        Self {
            source: PolicySource::Assumed,
            reason: Some(format!("Cisco's default policy assumed: {reason}")),
            policy: Policy::cisco_default(),
            policy_type: None,
            device_policy: None,
            installed_at: None,
            last_ack_received: None,
            device_next_ack_deadline: None,
            notes: None,
            read_failed,
            read_at: chrono::Utc::now(),
        }
    }
}

/// Reads the device's own policy, last ACK received and next ACK deadline from its
/// `cisco-smart-license` state. Never fails: a device without RESTCONF, or a read that failed,
/// gives Cisco's default policy marked assumed, with the reason.
pub fn policy_of(read: Result<StateRead, SouthboundError>) -> PolicyRead {
    let state = match read {
        Ok(StateRead::Read(s)) => s,
        Ok(StateRead::Unavailable(reason)) => return PolicyRead::assumed(reason, false),
        Err(e) => {
            return PolicyRead::assumed(format!("reading the device's state failed: {e}"), true);
        }
    };
    let mut notes: Vec<String> = state
        .unreadable
        .iter()
        .map(|u| format!("unreadable: {u}"))
        .collect();
    let Some(dp) = state.policy.clone() else {
        let why = match state.smart_enabled {
            Some(false) => "the device reports smart licensing as not enabled".to_owned(),
            _ => "the device's state has no state-info/policy".to_owned(),
        };
        let mut p = PolicyRead::assumed(why, false);
        p.last_ack_received = state.last_ack_received;
        p.device_next_ack_deadline = state.next_ack_deadline;
        p.notes = (!notes.is_empty()).then(|| notes.join("; "));
        return p;
    };
    let (policy, missing) = dp.to_policy();
    if !missing.is_empty() {
        notes.push(format!(
            "missing, Cisco's default used: {}",
            missing.join(", ")
        ));
    }
    PolicyRead {
        source: PolicySource::Device,
        reason: None,
        policy,
        policy_type: dp.policy_type.map(|t| t.as_str().to_owned()),
        device_policy: serde_json::to_value(&dp).ok(),
        installed_at: dp.install_time,
        last_ack_received: state.last_ack_received,
        device_next_ack_deadline: state.next_ack_deadline,
        notes: (!notes.is_empty()).then(|| notes.join("; ")),
        read_failed: false,
        read_at: chrono::Utc::now(),
    }
}

async fn collect_one(agg: &Aggregator, job: Job) -> Outcome {
    let mut checked = Checked::default();
    if job.deleted {
        return Outcome {
            job,
            checked,
            error: Some("device was removed from inventory".into()),
            policy: None,
        };
    }
    let password = match agg.secrets.open(&job.password_sealed) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                job,
                checked,
                error: Some(format!("credentials: {e}")),
                policy: None,
            };
        }
    };
    let target = Target {
        base_url: &job.base_url,
        username: &job.username,
        password: &password,
    };
    let udi = Udi {
        udi_pid: job.udi_pid.clone(),
        udi_serial_number: job.udi_serial.clone(),
    };
    let result = async {
        agg.client.close_reports(&target).await?;
        agg.client.all_reports(&target).await
    }
    .await;
    let error = match result {
        Ok(raws) => {
            checked = check_reports(&udi, raws);
            None
        }
        Err(SouthboundError::Malformed { reason, body }) => {
            checked.quarantined.push((reason.clone(), body));
            Some(format!("all-reports: {reason}"))
        }
        Err(e) => Some(e.to_string()),
    };
    // After the reports, so that a slow or missing RESTCONF never delays them.
    let policy = Some(policy_of(agg.client.licensing_state(&target).await));
    Outcome {
        job,
        checked,
        error,
        policy,
    }
}

/// Per-cycle tallies of one slice, turned into events.
#[derive(Default)]
struct CycleTally {
    reports: Vec<proto::CollectedReport>,
    devices_ok: u32,
    devices_failed: u32,
    devices_with_reports: u32,
    quarantined: u32,
    duplicates: u32,
    failures: Vec<proto::DeviceFailure>,
}

/// Works one slice. Returns how many devices it handled (0: nothing pending).
pub async fn collect_slice(agg: &Aggregator) -> Result<usize, tally_store::StoreError> {
    let mut conn = agg.pool.get().await?;
    let n = conn
        .transaction(async |c| {
            let jobs = collections::claim_slice(c, agg.cfg.slice).await?;
            if jobs.is_empty() {
                return Ok(0);
            }
            let n = jobs.len();
            let outcomes: Vec<Outcome> = futures::stream::iter(jobs)
                .map(|j| collect_one(agg, j))
                .buffer_unordered(agg.cfg.concurrency.max(1))
                .collect()
                .await;
            commit(c, outcomes).await?;
            Ok::<_, diesel::result::Error>(n)
        })
        .await?;
    Ok(n)
}

/// Stores each device's policy read (one per device) and sends the reads that did not fail as
/// one `DevicePoliciesRead`, in the caller's transaction. A failed read is stored only where
/// nothing was (see policies::record) and not sent: the scheduler keeps the last policy the
/// device gave.
pub(crate) async fn record_policies(
    c: &mut AsyncPgConnection,
    latest: BTreeMap<Uuid, &PolicyRead>,
) -> Result<(), diesel::result::Error> {
    let mut pol = NewPolicies::default();
    let mut read = proto::DevicePoliciesRead::default();
    for (device, p) in latest {
        if !p.read_failed {
            read.devices.push(policy_event(device, p));
        }
        pol.device.push(device);
        pol.source.push(p.source);
        pol.reason.push(p.reason.clone());
        pol.policy
            .push(serde_json::to_value(&p.policy).unwrap_or_default());
        pol.policy_type.push(p.policy_type.clone());
        pol.ack_required.push(p.policy.ack_required);
        pol.device_policy.push(p.device_policy.clone());
        pol.installed_at.push(p.installed_at);
        pol.last_ack_received.push(p.last_ack_received);
        pol.device_next_ack_deadline
            .push(p.device_next_ack_deadline);
        pol.notes.push(p.notes.clone());
        pol.read_failed.push(p.read_failed);
        pol.read_at.push(p.read_at);
    }
    policies::record(c, &pol).await?;
    if !read.devices.is_empty() {
        tally_bus::emit(c, Schema::Rum, &read).await?;
    }
    Ok(())
}

async fn commit(
    c: &mut AsyncPgConnection,
    outcomes: Vec<Outcome>,
) -> Result<(), diesel::result::Error> {
    // 1. Reports, deduplicated on (udi, report_id): only the new ones travel on.
    let mut cols = NewReports::default();
    for o in &outcomes {
        for a in &o.checked.accepted {
            cols.push(o.job.device_id, o.job.cycle_id, &a.info, &a.raw);
        }
    }
    let new: HashSet<ReportKey> = reports::insert_new(c, &cols).await?.into_iter().collect();

    // 2. Each device's policy, one row per device (a device can be in two cycles' slices).
    let mut latest: BTreeMap<Uuid, &PolicyRead> = BTreeMap::new();
    for o in &outcomes {
        if let Some(p) = &o.policy {
            latest.insert(o.job.device_id, p);
        }
    }
    record_policies(c, latest).await?;

    // 3. Quarantine, outcomes, tallies.
    let mut q = NewQuarantine::default();
    let mut upd = Outcomes::default();
    let mut tallies: BTreeMap<Uuid, CycleTally> = BTreeMap::new();
    for o in outcomes {
        let t = tallies.entry(o.job.cycle_id).or_default();
        for (reason, body) in o.checked.quarantined {
            q.device.push(o.job.device_id);
            q.cycle.push(o.job.cycle_id);
            q.reason.push(reason);
            q.body.push(body);
            t.quarantined += 1;
        }
        let mut fresh = 0i32;
        for a in o.checked.accepted {
            let key = ReportKey::of(&a.info);
            if new.contains(&key) {
                fresh += 1;
                t.reports.push(proto::CollectedReport {
                    device_id: o.job.device_id.to_string(),
                    udi_pid: key.udi_pid,
                    udi_serial: key.udi_serial,
                    report_id: a.info.report_id,
                    smart_account: o.job.smart_account.clone(),
                    virtual_account: o.job.virtual_account.clone(),
                    body: a.raw.into_bytes(),
                });
            } else {
                t.duplicates += 1;
            }
        }
        match &o.error {
            None => {
                t.devices_ok += 1;
                if fresh > 0 {
                    t.devices_with_reports += 1;
                }
            }
            Some(reason) => {
                t.devices_failed += 1;
                t.failures.push(proto::DeviceFailure {
                    device_id: o.job.device_id.to_string(),
                    reason: reason.clone(),
                });
            }
        }
        upd.cycle.push(o.job.cycle_id);
        upd.device.push(o.job.device_id);
        upd.state.push(if o.error.is_none() {
            CollectionState::Done
        } else {
            CollectionState::Failed
        });
        upd.error.push(o.error);
        upd.reports_new.push(fresh);
    }
    reports::quarantine(c, &q).await?;
    collections::finish(c, &upd).await?;

    // 4. Events: counts ride on the first message of each cycle, reports are split by size.
    for (cycle, t) in tallies {
        tally_platform::metrics::inc("reports_collected", t.reports.len() as u64);
        tally_platform::metrics::inc("reports_quarantined", u64::from(t.quarantined));
        tally_platform::metrics::inc("devices_collect_failed", u64::from(t.devices_failed));
        emit_collected(c, cycle, t).await?;
    }
    Ok(())
}

async fn emit_collected(
    c: &mut AsyncPgConnection,
    cycle: Uuid,
    t: CycleTally,
) -> Result<(), diesel::result::Error> {
    tally_bus::emit(
        c,
        Schema::Rum,
        &proto::CollectionProgress {
            cycle_id: cycle.to_string(),
            devices_ok: t.devices_ok,
            devices_failed: t.devices_failed,
            reports_stored: u32::try_from(t.reports.len()).unwrap_or(u32::MAX),
            reports_quarantined: t.quarantined,
            reports_duplicate: t.duplicates,
            failures: t.failures,
            devices_with_reports: t.devices_with_reports,
        },
    )
    .await?;
    let mut pieces: Vec<proto::ReportsCollected> = Vec::new();
    // A device's reports stay in one message, so the uplink batches them together.
    let mut size = 0usize;
    let mut reports = t.reports.into_iter().peekable();
    while let Some(first) = reports.next() {
        let device = first.device_id.clone();
        let mut group = vec![first];
        while let Some(r) = reports.next_if(|r| r.device_id == device) {
            group.push(r);
        }
        let bytes: usize = group.iter().map(|r| r.body.len() + 200).sum();
        let full = pieces
            .last()
            .is_none_or(|p| !p.reports.is_empty() && size + bytes > EVENT_BYTES);
        if full {
            pieces.push(proto::ReportsCollected {
                cycle_id: cycle.to_string(),
                ..Default::default()
            });
            size = 0;
        }
        size += bytes;
        if let Some(p) = pieces.last_mut() {
            p.reports.extend(group);
        }
    }
    for ev in &pieces {
        tally_bus::emit(c, Schema::Rum, ev).await?;
    }
    Ok(())
}

pub async fn run_worker(agg: Aggregator) {
    loop {
        match collect_slice(&agg).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "collection slice failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
