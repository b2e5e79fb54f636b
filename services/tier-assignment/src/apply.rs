//! Applying jobs to devices, in three steps so that no push is ever unrecorded:
//! 1. claim a slice of items (`FOR UPDATE SKIP LOCKED`, so replicas share the work) and commit
//!    the claim (`pushing` / `reverting`, a token and a lease) before talking to any device;
//! 2. push the boot level through the southbound RESTCONF call, outside any transaction;
//! 3. commit the outcomes with the ledger, history and events in one transaction.
//!
//! A worker that dies after its pushes leaves claimed items; when the lease runs out another
//! worker takes them again: pushing the same level twice is harmless, and if the job was cancelled
//! or is rolling back meanwhile, the item is configured back instead. Devices then wait for a
//! reload; their next RUM report confirms it.

use crate::{Tiers, jobs};
use diesel::QueryableByName;
use diesel::sql_types::{Array, Int4, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::{DnaTier, NetworkLicense, rum};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

#[derive(QueryableByName, Debug, Clone)]
pub struct Work {
    #[diesel(sql_type = SqlUuid)]
    job_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    from_network: String,
    #[diesel(sql_type = Nullable<Text>)]
    from_dna: Option<String>,
    #[diesel(sql_type = Text)]
    from_va: String,
    #[diesel(sql_type = Text)]
    to_network: String,
    #[diesel(sql_type = Nullable<Text>)]
    to_dna: Option<String>,
    #[diesel(sql_type = Text)]
    to_va: String,
    #[diesel(sql_type = Text)]
    base_url: String,
    #[diesel(sql_type = Text)]
    username: String,
    #[diesel(sql_type = Text)]
    password_sealed: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    deleted: bool,
    #[diesel(sql_type = SqlUuid)]
    claim: Uuid,
}

impl Work {
    fn reverting(&self) -> bool {
        self.state == "reverting"
    }
    /// The levels this push configures.
    fn levels(&self) -> (&str, Option<&str>, &str) {
        if self.reverting() {
            (&self.from_network, self.from_dna.as_deref(), &self.from_va)
        } else {
            (&self.to_network, self.to_dna.as_deref(), &self.to_va)
        }
    }
}

/// A push and how it went.
type Outcome = (Work, Result<(), String>);

fn level_text(network: &str, dna: Option<&str>) -> String {
    match dna {
        Some(d) => format!("{network} addon {d}"),
        None => network.to_owned(),
    }
}

async fn push(t: &Tiers, w: &Work) -> Result<(), String> {
    if w.deleted {
        return Err("the device was removed from inventory".into());
    }
    let (network, dna, _) = w.levels();
    let network: NetworkLicense = network.parse().map_err(|e| format!("{e}"))?;
    let dna: Option<DnaTier> = dna
        .map(str::parse)
        .transpose()
        .map_err(|e| format!("{e}"))?;
    let password = t
        .secrets
        .open(&w.password_sealed)
        .map_err(|e| format!("credentials: {e}"))?;
    t.client
        .set_boot_level(&w.base_url, &w.username, &password, network, dna)
        .await
        .map_err(|e| e.to_string())
}

pub async fn run_worker(t: Tiers) {
    loop {
        match apply_slice(&t).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(300)).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "tier apply slice failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Claims a slice and commits the claim: from here on a push to these devices is on record.
/// Items whose claim expired (their worker died) are taken again, and configured back if their
/// job no longer applies.
pub async fn claim_slice(t: &Tiers) -> Result<Vec<Work>, tally_store::StoreError> {
    let mut conn = t.pool.get().await?;
    let lease_ms = i64::try_from(t.cfg.claim_lease.as_millis()).unwrap_or(i64::MAX);
    let work = conn
        .transaction(async |c| {
            diesel::sql_query(
                "WITH picked AS ( \
                   SELECT i.job_id, i.device_id, \
                   CASE WHEN i.state IN ('pending', 'pushing') AND j.state = 'applying' THEN 'pushing' \
                        ELSE 'reverting' END AS next \
                   FROM tiers.job_items i JOIN tiers.jobs j ON j.id = i.job_id \
                   WHERE (i.state = 'pending' AND j.state = 'applying') \
                      OR (i.state = 'revert_pending' AND j.state = 'rolling_back') \
                      OR (i.state IN ('pushing', 'reverting') AND i.claimed_until < now()) \
                   ORDER BY i.job_id, i.seq LIMIT $1 FOR UPDATE OF i SKIP LOCKED) \
                 UPDATE tiers.job_items i SET state = p.next, claim = gen_random_uuid(), \
                   claimed_until = now() + $2 * interval '1 millisecond', updated_at = now() \
                 FROM picked p, tiers.devices d \
                 WHERE i.job_id = p.job_id AND i.device_id = p.device_id AND d.id = i.device_id \
                 RETURNING i.job_id, i.device_id, i.state, i.from_network, i.from_dna, i.from_va, \
                   i.to_network, i.to_dna, i.to_va, d.base_url, d.username, d.password_sealed, \
                   d.deleted, i.claim",
            )
            .bind::<diesel::sql_types::BigInt, _>(t.cfg.slice)
            .bind::<diesel::sql_types::BigInt, _>(lease_ms)
            .load::<Work>(c)
            .await
        })
        .await?;
    Ok(work)
}

/// Pushes the claimed items to their devices, `concurrency` at a time.
async fn push_all(t: &Tiers, work: Vec<Work>) -> Vec<Outcome> {
    futures::stream::iter(work)
        .map(|w| async move {
            let r = push(t, &w).await;
            (w, r)
        })
        .buffer_unordered(t.cfg.concurrency.max(1))
        .collect()
        .await
}

/// Works one slice: claim, push, commit. Returns how many items it handled (0: nothing to do).
pub async fn apply_slice(t: &Tiers) -> Result<usize, tally_store::StoreError> {
    let work = claim_slice(t).await?;
    if work.is_empty() {
        return Ok(0);
    }
    let outcomes = push_all(t, work).await;
    let n = outcomes.len();
    let mut by_job: BTreeMap<Uuid, Vec<Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_job.entry(o.0.job_id).or_default().push(o);
    }
    let mut conn = t.pool.get().await?;
    conn.transaction(async |c| {
        for (job, items) in by_job {
            commit_outcomes(c, job, items).await?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    Ok(n)
}

#[derive(Default)]
struct Sets {
    applied: Vec<Work>,
    to_revert: Vec<Work>,
    failed: Vec<(Work, String)>,
    reverted: Vec<Work>,
    revert_failed: Vec<(Work, String)>,
}

async fn commit_outcomes(
    c: &mut AsyncPgConnection,
    job: Uuid,
    items: Vec<Outcome>,
) -> Result<(), diesel::result::Error> {
    #[derive(QueryableByName)]
    struct J {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = Text)]
        mode: String,
    }
    let j: J = diesel::sql_query("SELECT state, mode FROM tiers.jobs WHERE id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(job)
        .get_result(c)
        .await?;
    // Only outcomes whose claim still stands: past its lease another worker may own the item.
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = SqlUuid)]
        device_id: Uuid,
    }
    let claims: Vec<Uuid> = items.iter().map(|(w, _)| w.claim).collect();
    let held: HashSet<Uuid> = diesel::sql_query(
        "SELECT device_id FROM tiers.job_items WHERE job_id = $1 AND claim = ANY($2) \
         AND state IN ('pushing', 'reverting') FOR UPDATE",
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Array<SqlUuid>, _>(&claims)
    .load::<Held>(c)
    .await?
    .into_iter()
    .map(|h| h.device_id)
    .collect();
    let items: Vec<Outcome> = items
        .into_iter()
        .filter(|(w, _)| held.contains(&w.device_id))
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let all_or_nothing = j.mode == crate::plan::Mode::AllOrNothing.as_str();
    let any_failed = items.iter().any(|(w, r)| !w.reverting() && r.is_err());
    // An all-or-nothing job undoes everything once one device fails.
    let rolling_back = j.state == "rolling_back" || (all_or_nothing && any_failed);
    let mut s = Sets::default();
    for (w, r) in items {
        match (w.reverting(), r) {
            (false, Ok(())) if rolling_back => s.to_revert.push(w),
            (false, Ok(())) => s.applied.push(w),
            (false, Err(e)) => s.failed.push((w, e)),
            (true, Ok(())) => s.reverted.push(w),
            (true, Err(e)) => s.revert_failed.push((w, e)),
        }
    }
    // Called as a slice method: diesel's `RunQueryDsl::first` would shadow it.
    let first_error =
        <[(Work, String)]>::first(&s.failed).map(|(w, e)| format!("device {}: {e}", w.device_id));

    let configured: Vec<&Work> = s.applied.iter().chain(&s.to_revert).collect();
    set_items(c, job, &ids(&s.applied), "applied", None).await?;
    set_items(c, job, &ids(&s.to_revert), "revert_pending", None).await?;
    for (w, e) in &s.failed {
        set_items(c, job, &[w.device_id], "failed", Some(e)).await?;
    }
    for (w, e) in &s.revert_failed {
        let msg = format!("could not configure the old level back: {e}");
        set_items(c, job, &[w.device_id], "revert_failed", Some(&msg)).await?;
    }
    set_items(c, job, &ids(&s.reverted), "reverted", None).await?;

    // Ledger: configured devices wait for their reload; failed ones never changed.
    diesel::sql_query(
        "UPDATE tiers.devices SET state = 'pending_reload' WHERE id = ANY($1) AND job_id = $2",
    )
    .bind::<Array<SqlUuid>, _>(ids(&s.applied))
    .bind::<SqlUuid, _>(job)
    .execute(c)
    .await?;
    let failed_ids: Vec<Uuid> = s.failed.iter().map(|(w, _)| w.device_id).collect();
    jobs::restore_ledger(c, job, &failed_ids).await?;
    jobs::restore_ledger(c, job, &ids(&s.reverted)).await?;
    // Left at the new level by a failed revert: that is what the device now has.
    let stuck: Vec<Uuid> = s.revert_failed.iter().map(|(w, _)| w.device_id).collect();
    diesel::sql_query(
        "UPDATE tiers.devices SET state = 'pending_reload' WHERE id = ANY($1) AND job_id = $2",
    )
    .bind::<Array<SqlUuid>, _>(&stuck)
    .bind::<SqlUuid, _>(job)
    .execute(c)
    .await?;

    history(c, job, &configured, "configured", false).await?;
    let reverted: Vec<&Work> = s.reverted.iter().collect();
    history(c, job, &reverted, "reverted", true).await?;

    let mut changed: Vec<proto::DeviceLicense> = Vec::new();
    for (w, back) in configured
        .iter()
        .map(|w| (*w, false))
        .chain(s.reverted.iter().map(|w| (w, true)))
    {
        let (n, d, va) = if back {
            (&w.from_network, &w.from_dna, &w.from_va)
        } else {
            (&w.to_network, &w.to_dna, &w.to_va)
        };
        changed.push(proto::DeviceLicense {
            device_id: w.device_id.to_string(),
            network_license: n.clone(),
            dna_tier: d.clone().unwrap_or_default(),
            virtual_account: va.clone(),
            job_id: job.to_string(),
        });
    }
    if !changed.is_empty() {
        tally_bus::emit(
            c,
            Schema::Tiers,
            &proto::DeviceLicensesChanged { devices: changed },
        )
        .await?;
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    diesel::sql_query(
        "UPDATE tiers.jobs SET applied = applied + $2, failed = failed + $3, reverted = reverted + $4, \
         updated_at = now() WHERE id = $1",
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Int4, _>(count(configured.len()))
    .bind::<Int4, _>(count(s.failed.len() + s.revert_failed.len()))
    .bind::<Int4, _>(count(s.reverted.len()))
    .execute(c)
    .await?;
    if rolling_back && j.state == "applying" {
        jobs::begin_rollback(c, job, first_error.as_deref().unwrap_or("a device failed")).await?;
    }
    jobs::finalize_if_done(c, job).await?;
    jobs::emit_changed(c, job).await?;
    Ok(())
}

fn ids(w: &[Work]) -> Vec<Uuid> {
    w.iter().map(|w| w.device_id).collect()
}

async fn set_items(
    c: &mut AsyncPgConnection,
    job: Uuid,
    devices: &[Uuid],
    state: &str,
    error: Option<&str>,
) -> Result<(), diesel::result::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE tiers.job_items SET state = $3, error = coalesce($4, error), attempts = attempts + 1, \
         updated_at = now() WHERE job_id = $1 AND device_id = ANY($2)",
    )
    .bind::<SqlUuid, _>(job)
    .bind::<Array<SqlUuid>, _>(devices)
    .bind::<Text, _>(state)
    .bind::<Nullable<Text>, _>(error)
    .execute(c)
    .await?;
    Ok(())
}

/// One history row per changed level and per changed virtual account.
async fn history(
    c: &mut AsyncPgConnection,
    job: Uuid,
    items: &[&Work],
    event: &str,
    back: bool,
) -> Result<(), diesel::result::Error> {
    let mut dev = Vec::new();
    let mut kind = Vec::new();
    let mut from = Vec::new();
    let mut to = Vec::new();
    for w in items {
        let old = level_text(&w.from_network, w.from_dna.as_deref());
        let new = level_text(&w.to_network, w.to_dna.as_deref());
        let (a, b) = if back { (new, old) } else { (old, new) };
        if a != b {
            dev.push(w.device_id);
            kind.push("tier".to_owned());
            from.push(a);
            to.push(b);
        }
        if w.from_va != w.to_va {
            let (a, b) = if back {
                (&w.to_va, &w.from_va)
            } else {
                (&w.from_va, &w.to_va)
            };
            dev.push(w.device_id);
            kind.push("virtual_account".to_owned());
            from.push(a.clone());
            to.push(b.clone());
        }
    }
    insert_history(c, &dev, &kind, event, &from, &to, Some(job), "").await
}

#[allow(clippy::too_many_arguments)]
async fn insert_history(
    c: &mut AsyncPgConnection,
    devices: &[Uuid],
    kinds: &[String],
    event: &str,
    from: &[String],
    to: &[String],
    job: Option<Uuid>,
    detail: &str,
) -> Result<(), diesel::result::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "INSERT INTO tiers.history (device_id, kind, event, from_value, to_value, job_id, detail) \
         SELECT u.d, u.k, $2, nullif(u.f, ''), nullif(u.t, ''), $6, $7 \
         FROM unnest($1::uuid[], $3::text[], $4::text[], $5::text[]) AS u(d, k, f, t)",
    )
    .bind::<Array<SqlUuid>, _>(devices)
    .bind::<Text, _>(event)
    .bind::<Array<Text>, _>(kinds)
    .bind::<Array<Text>, _>(from)
    .bind::<Array<Text>, _>(to)
    .bind::<Nullable<SqlUuid>, _>(job)
    .bind::<Text, _>(detail)
    .execute(c)
    .await?;
    Ok(())
}

/// The DNA tier an entitlement tag names (`...C9300_DNA_Advantage,1.0_...`), if any.
pub fn dna_tier_of_tag(tag: &str) -> Option<DnaTier> {
    let t = tag.to_ascii_lowercase();
    [
        ("dna_premier", DnaTier::DnaPremier),
        ("dna_advantage", DnaTier::DnaAdvantage),
        ("dna_essentials", DnaTier::DnaEssentials),
    ]
    .into_iter()
    .find(|(token, _)| t.contains(token))
    .map(|(_, tier)| tier)
}

/// The network license an entitlement tag names (`...C9300_Network_Advantage,1.0_...`), if any.
pub fn network_of_tag(tag: &str) -> Option<NetworkLicense> {
    let t = tag.to_ascii_lowercase();
    [
        ("network_advantage", NetworkLicense::NetworkAdvantage),
        ("network_essentials", NetworkLicense::NetworkEssentials),
    ]
    .into_iter()
    .find(|(token, _)| t.contains(token))
    .map(|(_, n)| n)
}

/// (device, the job that configured it, the level it now runs)
type Confirmed = (Uuid, Option<Uuid>, String);

/// What a device's reports in one collection show it running.
#[derive(Default)]
struct Running {
    dna: HashSet<Option<DnaTier>>,
    network: HashSet<NetworkLicense>,
}

/// Devices waiting for a reload are confirmed when their reports show both levels the job
/// configured: the device runs them now.
pub async fn confirm_from_reports(
    t: &Tiers,
    msg_id: &str,
    ev: proto::ReportsCollected,
) -> Result<(), HandlerError> {
    let mut seen: HashMap<Uuid, Running> = HashMap::new();
    for r in &ev.reports {
        let Ok(id) = Uuid::parse_str(&r.device_id) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&r.body) else {
            continue;
        };
        // Reports were checked when collected; one that does not parse here says nothing.
        if let Ok(info) = rum::inspect_report(text) {
            let r = seen.entry(id).or_default();
            r.dna.insert(dna_tier_of_tag(&info.entitlement_tag));
            r.network.extend(network_of_tag(&info.entitlement_tag));
        }
    }
    if seen.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = seen.keys().copied().collect();
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Tiers, msg_id).await? {
            return Ok(());
        }
        #[derive(QueryableByName)]
        struct Pending {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
            #[diesel(sql_type = Text)]
            network_license: String,
            #[diesel(sql_type = Nullable<Text>)]
            dna_tier: Option<String>,
            #[diesel(sql_type = Nullable<SqlUuid>)]
            job_id: Option<Uuid>,
        }
        let pending: Vec<Pending> = diesel::sql_query(
            // Only once the job that configured it has ended: until then the job may still
            // configure the device back, and a confirmed device would look free to other jobs.
            "SELECT d.id, d.network_license, d.dna_tier, d.job_id FROM tiers.devices d \
             LEFT JOIN tiers.jobs j ON j.id = d.job_id \
             WHERE d.id = ANY($1) AND d.state = 'pending_reload' \
             AND (j.id IS NULL OR j.state NOT IN ('applying', 'rolling_back')) FOR UPDATE OF d",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .load(c)
        .await?;
        let mut confirmed: Vec<Confirmed> = Vec::new();
        for p in pending {
            let want: Option<DnaTier> = p.dna_tier.as_deref().and_then(|d| d.parse().ok());
            let Some(running) = seen.get(&p.id) else {
                continue;
            };
            let dna_shows = match want {
                Some(w) => running.dna.contains(&Some(w)),
                None => !running.dna.iter().any(Option::is_some),
            };
            // A device that reports no network tag says nothing about it; one that does must
            // run the configured license.
            let network_shows = p
                .network_license
                .parse::<NetworkLicense>()
                .is_ok_and(|n| running.network.is_empty() || running.network.contains(&n));
            let shows = dna_shows && network_shows;
            if shows {
                let level = level_text(&p.network_license, p.dna_tier.as_deref());
                confirmed.push((p.id, p.job_id, level));
            }
        }
        if confirmed.is_empty() {
            return Ok(());
        }
        let dev: Vec<Uuid> = confirmed.iter().map(|c| c.0).collect();
        diesel::sql_query(
            "UPDATE tiers.devices SET state = 'active', job_id = NULL, \
             reported_dna_tier = dna_tier, reported_at = now() WHERE id = ANY($1)",
        )
        .bind::<Array<SqlUuid>, _>(&dev)
        .execute(c)
        .await?;
        let mut per_job: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (d, j, _) in &confirmed {
            if let Some(j) = j {
                per_job.entry(*j).or_default().push(*d);
            }
        }
        for (job, devices) in &per_job {
            let n = diesel::sql_query(
                "UPDATE tiers.job_items SET state = 'confirmed', updated_at = now() \
                 WHERE job_id = $1 AND device_id = ANY($2) AND state = 'applied'",
            )
            .bind::<SqlUuid, _>(job)
            .bind::<Array<SqlUuid>, _>(devices)
            .execute(c)
            .await?;
            diesel::sql_query(
                "UPDATE tiers.jobs SET confirmed = confirmed + $2, updated_at = now() WHERE id = $1",
            )
            .bind::<SqlUuid, _>(job)
            .bind::<Int4, _>(i32::try_from(n).unwrap_or(i32::MAX))
            .execute(c)
            .await?;
            jobs::emit_changed(c, *job).await?;
        }
        // Each confirmation names the job that configured it.
        let mut groups: BTreeMap<Option<Uuid>, Vec<&Confirmed>> = BTreeMap::new();
        for row in &confirmed {
            groups.entry(row.1).or_default().push(row);
        }
        for (job, rows) in groups {
            let dev: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
            let kinds = vec!["tier".to_owned(); dev.len()];
            let empty = vec![String::new(); dev.len()];
            let to: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
            insert_history(
                c,
                &dev,
                &kinds,
                "confirmed",
                &empty,
                &to,
                job,
                &format!("reported in cycle {}", ev.cycle_id),
            )
            .await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await
}

/// Every ACK a device installed goes into its history.
pub async fn record_acks(
    t: &Tiers,
    msg_id: &str,
    ev: proto::AcksImported,
) -> Result<(), HandlerError> {
    let dev: Vec<Uuid> = ev
        .ok_devices
        .iter()
        .filter_map(|d| Uuid::parse_str(d).ok())
        .collect();
    if dev.is_empty() {
        return Ok(());
    }
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Tiers, msg_id).await? {
            return Ok(());
        }
        let kinds = vec!["ack".to_owned(); dev.len()];
        let empty = vec![String::new(); dev.len()];
        insert_history(
            c,
            &dev,
            &kinds,
            "acknowledged",
            &empty,
            &empty,
            None,
            &format!("ACK installed, cycle {}", ev.cycle_id),
        )
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tags_name_their_tier() {
        assert_eq!(
            dna_tier_of_tag("regid.2017-05.com.cisco.C9300_DNA_Advantage,1.0_ab"),
            Some(DnaTier::DnaAdvantage)
        );
        assert_eq!(
            dna_tier_of_tag("regid.2017-05.com.cisco.c9200_dna_premier,1.0_ab"),
            Some(DnaTier::DnaPremier)
        );
        assert_eq!(
            dna_tier_of_tag("regid.2017-03.com.cisco.C9300_Network_Advantage,1.0_ab"),
            None
        );
    }
}
