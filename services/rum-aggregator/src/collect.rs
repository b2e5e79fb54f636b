//! Collection: a cycle queues one row per device; workers take slices of pending rows, run
//! close-reports then all-reports on each device, and commit reports, quarantine, outcomes and
//! the `ReportsCollected` events in one transaction.

use crate::Aggregator;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::{Udi, rum};
use tally_southbound::{SouthboundError, Target};
use tally_store::outbox::{Schema, claim};
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
    conn.transaction(async |c| {
        if !claim(c, Schema::Rum, msg_id).await? {
            return Ok(());
        }
        let n = diesel::sql_query(
            "INSERT INTO rum.collections (cycle_id, device_id) \
             SELECT $1, id FROM rum.devices WHERE NOT deleted ON CONFLICT DO NOTHING",
        )
        .bind::<SqlUuid, _>(cycle)
        .execute(c)
        .await?;
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
    .await
}

#[derive(QueryableByName, Debug, Clone)]
struct Job {
    #[diesel(sql_type = SqlUuid)]
    cycle_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Text)]
    udi_pid: String,
    #[diesel(sql_type = Text)]
    udi_serial: String,
    #[diesel(sql_type = Text)]
    base_url: String,
    #[diesel(sql_type = Text)]
    username: String,
    #[diesel(sql_type = Text)]
    password_sealed: String,
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Bool)]
    deleted: bool,
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

struct Outcome {
    job: Job,
    checked: Checked,
    error: Option<String>,
}

async fn collect_one(agg: &Aggregator, job: Job) -> Outcome {
    let mut checked = Checked::default();
    if job.deleted {
        return Outcome {
            job,
            checked,
            error: Some("device was removed from inventory".into()),
        };
    }
    let password = match agg.secrets.open(&job.password_sealed) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                job,
                checked,
                error: Some(format!("credentials: {e}")),
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
    Outcome {
        job,
        checked,
        error,
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
            let jobs: Vec<Job> = diesel::sql_query(
                "SELECT c.cycle_id, c.device_id, d.udi_pid, d.udi_serial, d.base_url, d.username, \
                 d.password_sealed, d.smart_account, d.virtual_account, d.deleted \
                 FROM rum.collections c JOIN rum.devices d ON d.id = c.device_id \
                 WHERE c.state = 'pending' ORDER BY c.cycle_id, c.device_id \
                 LIMIT $1 FOR UPDATE OF c SKIP LOCKED",
            )
            .bind::<BigInt, _>(agg.cfg.slice)
            .load(c)
            .await?;
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

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    udi_pid: String,
    #[diesel(sql_type = Text)]
    udi_serial: String,
    #[diesel(sql_type = BigInt)]
    report_id: i64,
}

/// New reports as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Default)]
struct ReportColumns {
    pid: Vec<String>,
    serial: Vec<String>,
    report_id: Vec<i64>,
    device: Vec<Uuid>,
    cycle: Vec<Uuid>,
    tag: Vec<String>,
    version: Vec<String>,
    count: Vec<i64>,
    end_time: Vec<i64>,
    body: Vec<Vec<u8>>,
}

impl ReportColumns {
    fn push(&mut self, device: Uuid, cycle: Uuid, a: &Accepted) {
        self.pid.push(a.info.udi.udi_pid.clone());
        self.serial.push(a.info.udi.udi_serial_number.clone());
        // Report ids are u64 on the wire; stored bit-for-bit in a BIGINT.
        self.report_id.push(a.info.report_id as i64);
        self.device.push(device);
        self.cycle.push(cycle);
        self.tag.push(a.info.entitlement_tag.clone());
        self.version.push(a.info.software_version.clone());
        self.count
            .push(i64::try_from(a.info.count).unwrap_or(i64::MAX));
        self.end_time.push(a.info.end_time);
        self.body.push(a.raw.clone().into_bytes());
    }
}

/// Per-device outcomes as columns, for one `UPDATE ... FROM unnest(...)`.
#[derive(Default)]
struct OutcomeColumns {
    cycle: Vec<Uuid>,
    device: Vec<Uuid>,
    state: Vec<String>,
    error: Vec<Option<String>>,
    reports_new: Vec<i32>,
}

async fn commit(
    c: &mut AsyncPgConnection,
    outcomes: Vec<Outcome>,
) -> Result<(), diesel::result::Error> {
    // 1. Reports, deduplicated on (udi, report_id): only the new ones travel on.
    let mut cols = ReportColumns::default();
    for o in &outcomes {
        for a in &o.checked.accepted {
            cols.push(o.job.device_id, o.job.cycle_id, a);
        }
    }
    let new: HashSet<(String, String, i64)> = if cols.pid.is_empty() {
        HashSet::new()
    } else {
        let keys: Vec<Key> = diesel::sql_query(
            "INSERT INTO rum.reports (udi_pid, udi_serial, report_id, device_id, cycle_id, \
             entitlement_tag, software_version, usage_count, end_time, body) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::uuid[], $5::uuid[], \
             $6::text[], $7::text[], $8::int8[], $9::int8[], $10::bytea[]) \
             ON CONFLICT DO NOTHING RETURNING udi_pid, udi_serial, report_id",
        )
        .bind::<Array<Text>, _>(&cols.pid)
        .bind::<Array<Text>, _>(&cols.serial)
        .bind::<Array<BigInt>, _>(&cols.report_id)
        .bind::<Array<SqlUuid>, _>(&cols.device)
        .bind::<Array<SqlUuid>, _>(&cols.cycle)
        .bind::<Array<Text>, _>(&cols.tag)
        .bind::<Array<Text>, _>(&cols.version)
        .bind::<Array<BigInt>, _>(&cols.count)
        .bind::<Array<BigInt>, _>(&cols.end_time)
        .bind::<Array<diesel::sql_types::Bytea>, _>(&cols.body)
        .load(c)
        .await?;
        keys.into_iter()
            .map(|k| (k.udi_pid, k.udi_serial, k.report_id))
            .collect()
    };

    // 2. Quarantine, outcomes, tallies.
    let mut q: (Vec<Uuid>, Vec<Uuid>, Vec<String>, Vec<Vec<u8>>) = Default::default();
    let mut upd = OutcomeColumns::default();
    let mut tallies: BTreeMap<Uuid, CycleTally> = BTreeMap::new();
    for o in outcomes {
        let t = tallies.entry(o.job.cycle_id).or_default();
        for (reason, body) in o.checked.quarantined {
            q.0.push(o.job.device_id);
            q.1.push(o.job.cycle_id);
            q.2.push(reason);
            q.3.push(body);
            t.quarantined += 1;
        }
        let mut fresh = 0i32;
        for a in o.checked.accepted {
            let key = (
                a.info.udi.udi_pid.clone(),
                a.info.udi.udi_serial_number.clone(),
                a.info.report_id as i64,
            );
            if new.contains(&key) {
                fresh += 1;
                t.reports.push(proto::CollectedReport {
                    device_id: o.job.device_id.to_string(),
                    udi_pid: key.0,
                    udi_serial: key.1,
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
        upd.state
            .push(if o.error.is_none() { "done" } else { "failed" }.to_owned());
        upd.error.push(o.error);
        upd.reports_new.push(fresh);
    }
    if !q.0.is_empty() {
        diesel::sql_query(
            "INSERT INTO rum.quarantine (device_id, cycle_id, reason, body) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])",
        )
        .bind::<Array<SqlUuid>, _>(&q.0)
        .bind::<Array<SqlUuid>, _>(&q.1)
        .bind::<Array<Text>, _>(&q.2)
        .bind::<Array<diesel::sql_types::Bytea>, _>(&q.3)
        .execute(c)
        .await?;
    }
    diesel::sql_query(
        "UPDATE rum.collections c SET state = u.state, error = u.error, reports_new = u.n, \
         attempts = c.attempts + 1, finished_at = now() \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int4[]) \
         AS u(cycle_id, device_id, state, error, n) \
         WHERE c.cycle_id = u.cycle_id AND c.device_id = u.device_id",
    )
    .bind::<Array<SqlUuid>, _>(&upd.cycle)
    .bind::<Array<SqlUuid>, _>(&upd.device)
    .bind::<Array<Text>, _>(&upd.state)
    .bind::<Array<Nullable<Text>>, _>(&upd.error)
    .bind::<Array<Int4>, _>(&upd.reports_new)
    .execute(c)
    .await?;

    // 3. Events: counts ride on the first message of each cycle, reports are split by size.
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
