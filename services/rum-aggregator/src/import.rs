//! ACK delivery: `AcksReceived` queues one row per device ACK; workers lock slices of pending
//! rows, `POST /import` each ACK into its device, and commit outcomes with `AcksImported` events.

use crate::Aggregator;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_southbound::Target;
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

pub async fn enqueue(
    agg: &Aggregator,
    msg_id: &str,
    ev: proto::AcksReceived,
) -> Result<(), HandlerError> {
    let mut ids = Vec::new();
    let mut devices = Vec::new();
    let mut cycles: Vec<Option<Uuid>> = Vec::new();
    let mut report_ids = Vec::new();
    let mut acks = Vec::new();
    for a in &ev.acks {
        let device = Uuid::parse_str(&a.device_id)
            .map_err(|e| HandlerError::Poison(format!("device id {:?}: {e}", a.device_id)))?;
        ids.push(Uuid::now_v7());
        devices.push(device);
        cycles.push(Uuid::parse_str(&a.cycle_id).ok());
        // Postgres arrays of arrays must be rectangular: keep ids as text, cast in SQL.
        report_ids.push(
            a.report_ids
                .iter()
                .map(|r| (*r as i64).to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        acks.push(a.ack.clone());
    }
    let mut conn = agg
        .pool
        .get()
        .await
        .map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Rum, msg_id).await? {
            return Ok(());
        }
        diesel::sql_query(
            "INSERT INTO rum.ack_imports (id, device_id, cycle_id, report_ids, ack) \
             SELECT u.id, u.device_id, u.cycle_id, \
             COALESCE(string_to_array(NULLIF(u.rids, ''), ',')::int8[], '{}'), u.ack \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[]) \
             AS u(id, device_id, cycle_id, rids, ack)",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&devices)
        .bind::<Array<Nullable<SqlUuid>>, _>(&cycles)
        .bind::<Array<Text>, _>(&report_ids)
        .bind::<Array<Text>, _>(&acks)
        .execute(c)
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

#[derive(QueryableByName, Debug)]
struct Job {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    cycle_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    ack: String,
    #[diesel(sql_type = Nullable<Text>)]
    base_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    username: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    password_sealed: Option<String>,
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
            let jobs: Vec<Job> = diesel::sql_query(
                "SELECT a.id, a.device_id, a.cycle_id, a.ack, d.base_url, d.username, d.password_sealed \
                 FROM rum.ack_imports a LEFT JOIN rum.devices d ON d.id = a.device_id AND NOT d.deleted \
                 WHERE a.state = 'pending' ORDER BY a.created_at LIMIT $1 FOR UPDATE OF a SKIP LOCKED",
            )
            .bind::<BigInt, _>(agg.cfg.slice)
            .load(c)
            .await?;
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
                let e = per_cycle.entry(cycle.clone()).or_insert_with(|| proto::AcksImported {
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
                states.push(if err.is_none() { "ok" } else { "failed" }.to_owned());
                errors.push(err);
            }
            diesel::sql_query(
                "UPDATE rum.ack_imports a SET state = u.state, error = u.error, \
                 attempts = a.attempts + 1, finished_at = now() \
                 FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, state, error) WHERE a.id = u.id",
            )
            .bind::<Array<SqlUuid>, _>(&ids)
            .bind::<Array<Text>, _>(&states)
            .bind::<Array<Nullable<Text>>, _>(&errors)
            .execute(c)
            .await?;
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
