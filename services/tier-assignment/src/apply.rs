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

use crate::plan::Mode;
use crate::store::history::{self, HistoryEvent, HistoryKind, NewEntries};
use crate::store::{self, ItemState, JobState, devices, items};
use crate::{Tiers, jobs};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::{DnaTier, NetworkLicense, rum};
use tally_store::outbox::{Schema, once};
use uuid::Uuid;

pub use crate::store::items::Work;

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
        .transaction(async |c| items::claim(c, t.cfg.slice, lease_ms).await)
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
        for (job, outcomes) in by_job {
            commit_outcomes(c, job, outcomes).await?;
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
    outcomes: Vec<Outcome>,
) -> Result<(), diesel::result::Error> {
    let (state, mode) = store::jobs::lock(c, job).await?;
    // Only outcomes whose claim still stands: past its lease another worker may own the item.
    let claims: Vec<Uuid> = outcomes.iter().map(|(w, _)| w.claim).collect();
    let held: HashSet<Uuid> = items::lock_held(c, job, &claims)
        .await?
        .into_iter()
        .collect();
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .filter(|(w, _)| held.contains(&w.device_id))
        .collect();
    if outcomes.is_empty() {
        return Ok(());
    }
    let all_or_nothing = mode == Mode::AllOrNothing;
    let any_failed = outcomes.iter().any(|(w, r)| !w.reverting() && r.is_err());
    // An all-or-nothing job undoes everything once one device fails.
    let rolling_back = state == JobState::RollingBack || (all_or_nothing && any_failed);
    let mut s = Sets::default();
    for (w, r) in outcomes {
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
    record_items(c, job, &s).await?;

    // Ledger: configured devices wait for their reload; failed ones never changed.
    devices::mark_pending_reload(c, job, &ids(&s.applied)).await?;
    let failed_ids: Vec<Uuid> = s.failed.iter().map(|(w, _)| w.device_id).collect();
    devices::restore_ledger(c, job, &failed_ids).await?;
    devices::restore_ledger(c, job, &ids(&s.reverted)).await?;
    // Left at the new level by a failed revert: that is what the device now has.
    let stuck: Vec<Uuid> = s.revert_failed.iter().map(|(w, _)| w.device_id).collect();
    devices::mark_pending_reload(c, job, &stuck).await?;

    write_history(c, job, &configured, HistoryEvent::Configured, false).await?;
    let reverted: Vec<&Work> = s.reverted.iter().collect();
    write_history(c, job, &reverted, HistoryEvent::Reverted, true).await?;

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
    store::jobs::add_outcomes(
        c,
        job,
        count(configured.len()),
        count(s.failed.len() + s.revert_failed.len()),
        count(s.reverted.len()),
    )
    .await?;
    if rolling_back && state == JobState::Applying {
        jobs::begin_rollback(c, job, first_error.as_deref().unwrap_or("a device failed")).await?;
    }
    jobs::finalize_if_done(c, job).await?;
    jobs::emit_changed(c, job).await?;
    Ok(())
}

/// Each item's outcome.
async fn record_items(
    c: &mut AsyncPgConnection,
    job: Uuid,
    s: &Sets,
) -> Result<(), diesel::result::Error> {
    items::set_outcome(c, job, &ids(&s.applied), ItemState::Applied, None).await?;
    items::set_outcome(c, job, &ids(&s.to_revert), ItemState::RevertPending, None).await?;
    for (w, e) in &s.failed {
        items::set_outcome(c, job, &[w.device_id], ItemState::Failed, Some(e)).await?;
    }
    for (w, e) in &s.revert_failed {
        let msg = format!("could not configure the old level back: {e}");
        items::set_outcome(c, job, &[w.device_id], ItemState::RevertFailed, Some(&msg)).await?;
    }
    items::set_outcome(c, job, &ids(&s.reverted), ItemState::Reverted, None).await
}

fn ids(w: &[Work]) -> Vec<Uuid> {
    w.iter().map(|w| w.device_id).collect()
}

/// One history row per changed level and per changed virtual account.
async fn write_history(
    c: &mut AsyncPgConnection,
    job: Uuid,
    work: &[&Work],
    event: HistoryEvent,
    back: bool,
) -> Result<(), diesel::result::Error> {
    let mut e = NewEntries::default();
    for w in work {
        let old = level_text(&w.from_network, w.from_dna.as_deref());
        let new = level_text(&w.to_network, w.to_dna.as_deref());
        let (a, b) = if back { (new, old) } else { (old, new) };
        if a != b {
            e.push(w.device_id, HistoryKind::Tier, a, b);
        }
        if w.from_va != w.to_va {
            let (a, b) = if back {
                (&w.to_va, &w.from_va)
            } else {
                (&w.from_va, &w.to_va)
            };
            e.push(
                w.device_id,
                HistoryKind::VirtualAccount,
                a.clone(),
                b.clone(),
            );
        }
    }
    history::insert(c, &e, event, Some(job), "").await
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
    once(&mut conn, Schema::Tiers, msg_id, async |c| {
        let pending = devices::lock_awaiting_reload(c, &ids).await?;
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
        devices::confirm(c, &dev).await?;
        let mut per_job: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        for (d, j, _) in &confirmed {
            if let Some(j) = j {
                per_job.entry(*j).or_default().push(*d);
            }
        }
        for (job, devs) in &per_job {
            let n = items::confirm(c, *job, devs).await?;
            store::jobs::add_confirmed(c, *job, i32::try_from(n).unwrap_or(i32::MAX)).await?;
            jobs::emit_changed(c, *job).await?;
        }
        // Each confirmation names the job that configured it.
        let mut groups: BTreeMap<Option<Uuid>, Vec<&Confirmed>> = BTreeMap::new();
        for row in &confirmed {
            groups.entry(row.1).or_default().push(row);
        }
        for (job, rows) in groups {
            let mut e = NewEntries::default();
            for (device, _, level) in rows {
                e.push(*device, HistoryKind::Tier, String::new(), level.clone());
            }
            let detail = format!("reported in cycle {}", ev.cycle_id);
            history::insert(c, &e, HistoryEvent::Confirmed, job, &detail).await?;
        }
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
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
    once(&mut conn, Schema::Tiers, msg_id, async |c| {
        let mut e = NewEntries::default();
        for d in &dev {
            e.push(*d, HistoryKind::Ack, String::new(), String::new());
        }
        let detail = format!("ACK installed, cycle {}", ev.cycle_id);
        history::insert(c, &e, HistoryEvent::Acknowledged, None, &detail).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
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
