//! Entitlement pools from CSSM's licenses API (paged), or from a file of the same shape for
//! air-gapped sites, and drift: Tally's ledger against CSSM's in-use count.

use crate::Tiers;
use crate::store::{self, pools::NewPools};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tally_bus::proto;
use tally_cssm::License;
use tally_store::outbox::Schema;
use utoipa::ToSchema;

/// Only one replica syncs at a time.
const SYNC_LOCK: i64 = 0x7469_6572_735f_706f; // "tiers_po"
const PAGE: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no CSSM connection: this installation is offline; import the pools as a file")]
    Offline,
    #[error("CSSM: {0}")]
    Cssm(#[from] tally_cssm::CssmError),
    #[error("{0}")]
    Db(#[from] diesel::result::Error),
    #[error("{0}")]
    Store(#[from] tally_store::StoreError),
    #[error("another replica is syncing the pools right now")]
    Busy,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncSummary {
    pub smart_accounts: Vec<String>,
    pub pools: usize,
    /// Pools whose ledger count differs from CSSM's in-use count after the sync.
    pub drifting: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub smart_account: String,
    pub virtual_account: String,
    pub license: String,
    /// Purchased (CSSM); absent when CSSM lists no such pool but Tally has devices holding it.
    pub quantity: Option<i64>,
    pub cssm_in_use: Option<i64>,
    pub cssm_available: Option<i64>,
    pub status: Option<String>,
    /// Devices holding it in Tally's ledger (assigned levels, including jobs in flight).
    pub held: i64,
    /// Of those, devices configured but not yet reloaded: part of a positive drift that will go
    /// away once they reload and report.
    pub awaiting_reload: i64,
    pub available: Option<i64>,
    /// held - CSSM in use: positive when CSSM has not yet seen usage Tally assigned (or devices
    /// report elsewhere), negative when CSSM counts usage Tally does not know of.
    pub drift: Option<i64>,
    pub overcommitted: bool,
    #[schema(value_type = Vec<Object>)]
    pub details: serde_json::Value,
    pub synced_at: Option<DateTime<Utc>>,
}

/// Every pool CSSM lists and every pool the ledger holds, with drift.
pub async fn list(c: &mut AsyncPgConnection) -> Result<Vec<PoolView>, diesel::result::Error> {
    let rows = store::pools::all(c).await?;
    let mut held = store::held(c).await?;
    let waiting = store::awaiting_reload(c).await?;
    let mut out: BTreeMap<(String, String, String), PoolView> = BTreeMap::new();
    for r in rows {
        let key = (r.smart_account, r.virtual_account, r.license);
        let h = held.remove(&key).unwrap_or(0);
        let w = waiting.get(&key).copied().unwrap_or(0);
        out.insert(
            key.clone(),
            PoolView {
                smart_account: key.0,
                virtual_account: key.1,
                license: key.2,
                quantity: Some(r.quantity),
                cssm_in_use: Some(r.cssm_in_use),
                cssm_available: Some(r.cssm_available),
                status: Some(r.status),
                held: h,
                awaiting_reload: w,
                available: Some(r.quantity - h),
                drift: Some(h - r.cssm_in_use),
                overcommitted: h > r.quantity,
                details: r.details,
                synced_at: Some(r.synced_at),
            },
        );
    }
    for (key, h) in held {
        let w = waiting.get(&key).copied().unwrap_or(0);
        out.insert(
            key.clone(),
            PoolView {
                smart_account: key.0,
                virtual_account: key.1,
                license: key.2,
                quantity: None,
                cssm_in_use: None,
                cssm_available: None,
                status: None,
                held: h,
                awaiting_reload: w,
                available: None,
                drift: None,
                overcommitted: true,
                details: serde_json::Value::Array(vec![]),
                synced_at: None,
            },
        );
    }
    Ok(out.into_values().collect())
}

/// Replaces the smart account's pools with `licenses` (what CSSM lists now).
pub async fn store_pools(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    licenses: &[License],
) -> Result<(), diesel::result::Error> {
    // CSSM lists a license once per virtual account, but one subscription per line is possible:
    // sum them, keeping every line's details.
    type Merged = (i64, i64, i64, String, Vec<serde_json::Value>);
    let mut merged: BTreeMap<(String, String), Merged> = BTreeMap::new();
    for l in licenses {
        let m = merged
            .entry((l.virtual_account.clone(), l.license.clone()))
            .or_insert_with(|| (0, 0, 0, l.status.clone(), Vec::new()));
        m.0 += l.quantity;
        m.1 += l.in_use;
        m.2 += l.available;
        for d in &l.license_details {
            m.4.push(serde_json::json!({
                "license_type": d.license_type, "quantity": d.quantity,
                "start_date": d.start_date, "end_date": d.end_date,
                "subscription_id": d.subscription_id,
            }));
        }
    }
    let mut p = NewPools::default();
    for ((va, name), m) in merged {
        p.virtual_accounts.push(va);
        p.licenses.push(name);
        p.quantities.push(m.0);
        p.in_use.push(m.1);
        p.available.push(m.2);
        p.statuses.push(m.3);
        p.details.push(serde_json::Value::Array(m.4).to_string());
    }
    store::pools::replace(c, smart_account, &p).await?;
    announce(c, smart_account).await
}

/// Tells everyone the smart account's pools as they stand now (renewal reminders and
/// compliance come from this), in the caller's transaction.
async fn announce(
    c: &mut AsyncPgConnection,
    smart_account: &str,
) -> Result<(), diesel::result::Error> {
    let rules = store::load_rules(c).await?.rules;
    let held = store::held(c).await?;
    let rows = store::pools::of_account(c, smart_account).await?;
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let pools = rows
        .iter()
        .map(|r| proto::Pool {
            virtual_account: r.virtual_account.clone(),
            license: r.license.clone(),
            level: rules
                .license_named(&r.license)
                .map(|(_, l)| l.level.as_str().to_owned())
                .unwrap_or_default(),
            models: rules
                .license_named(&r.license)
                .map(|(_, l)| l.models.clone())
                .unwrap_or_default(),
            quantity: r.quantity,
            cssm_in_use: r.cssm_in_use,
            held: held
                .get(&(
                    r.smart_account.clone(),
                    r.virtual_account.clone(),
                    r.license.clone(),
                ))
                .copied()
                .unwrap_or(0),
            terms: r
                .details
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .map(|d| proto::PoolTerm {
                            subscription_id: text(d, "subscription_id"),
                            license_type: text(d, "license_type"),
                            quantity: d
                                .get("quantity")
                                .and_then(serde_json::Value::as_i64)
                                .unwrap_or(0),
                            start_date: text(d, "start_date"),
                            end_date: text(d, "end_date"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    tally_bus::emit(
        c,
        Schema::Tiers,
        &proto::PoolsSynced {
            smart_account: smart_account.to_owned(),
            pools,
            synced_at_ms: Utc::now().timestamp_millis(),
        },
    )
    .await?;
    Ok(())
}

/// Syncs every smart account's pools from CSSM now.
pub async fn sync(t: &Tiers) -> Result<SyncSummary, SyncError> {
    let cssm = t.cssm.clone().ok_or(SyncError::Offline)?;
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    let accounts = store::devices::smart_accounts(&mut conn).await?;
    // Fetch outside the transaction: CSSM can be slow, and pages are a consistent enough view.
    let mut fetched = Vec::new();
    for sa in &accounts {
        let mut all: Vec<License> = Vec::new();
        loop {
            let offset = u32::try_from(all.len()).unwrap_or(u32::MAX);
            let (total, page) = cssm.licenses(sa, &[], PAGE, offset).await?;
            let got = page.len();
            all.extend(page);
            if got == 0 || all.len() as u64 >= total {
                break;
            }
        }
        fetched.push((sa.clone(), all));
    }
    let pools = fetched.iter().map(|(_, l)| l.len()).sum();
    conn.transaction(async |c| {
        if !store::pools::try_lock(c, SYNC_LOCK).await? {
            return Err(SyncError::Busy);
        }
        for (sa, licenses) in &fetched {
            store_pools(c, sa, licenses).await?;
        }
        Ok(())
    })
    .await?;
    let drifting = list(&mut conn)
        .await?
        .iter()
        .filter(|p| p.drift.is_some_and(|d| d != 0))
        .count();
    if drifting > 0 {
        tracing::warn!(drifting, "license pools drift from CSSM's in-use counts");
    }
    tally_platform::metrics::inc("pool_syncs", 1);
    Ok(SyncSummary {
        smart_accounts: accounts,
        pools,
        drifting,
    })
}

/// Syncs shortly after start, then on the configured interval.
pub async fn run_sync(t: Tiers) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    loop {
        match sync(&t).await {
            Ok(s) => tracing::info!(
                pools = s.pools,
                drifting = s.drifting,
                "pools synced from CSSM"
            ),
            Err(SyncError::Busy) => {}
            Err(e) => tracing::warn!(error = %e, "pool sync failed"),
        }
        tokio::time::sleep(t.cfg.pool_sync_interval).await;
    }
}
