//! Entitlement pools from CSSM's licenses API (paged), or from a file of the same shape for
//! air-gapped sites, and drift: Tally's ledger against CSSM's in-use count.

use crate::{Tiers, store};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Jsonb, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
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

#[derive(QueryableByName)]
struct PoolRow {
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = BigInt)]
    cssm_in_use: i64,
    #[diesel(sql_type = BigInt)]
    cssm_available: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Jsonb)]
    details: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    synced_at: DateTime<Utc>,
}

/// Every pool CSSM lists and every pool the ledger holds, with drift.
pub async fn list(c: &mut AsyncPgConnection) -> Result<Vec<PoolView>, diesel::result::Error> {
    let rows: Vec<PoolRow> = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, quantity, cssm_in_use, cssm_available, \
         status, details, synced_at FROM tiers.pools",
    )
    .load(c)
    .await?;
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
    let (mut vas, mut names, mut q, mut iu, mut av, mut st, mut details) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((va, name), m) in merged {
        vas.push(va);
        names.push(name);
        q.push(m.0);
        iu.push(m.1);
        av.push(m.2);
        st.push(m.3);
        details.push(serde_json::Value::Array(m.4).to_string());
    }
    diesel::sql_query("DELETE FROM tiers.pools WHERE smart_account = $1")
        .bind::<Text, _>(smart_account)
        .execute(c)
        .await?;
    diesel::sql_query(
        "INSERT INTO tiers.pools (smart_account, virtual_account, license, quantity, cssm_in_use, \
         cssm_available, status, details, synced_at) \
         SELECT $1, u.va, u.l, u.q, u.iu, u.av, u.st, u.d::jsonb, now() \
         FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::text[], $8::text[]) \
         AS u(va, l, q, iu, av, st, d)",
    )
    .bind::<Text, _>(smart_account)
    .bind::<Array<Text>, _>(&vas)
    .bind::<Array<Text>, _>(&names)
    .bind::<Array<BigInt>, _>(&q)
    .bind::<Array<BigInt>, _>(&iu)
    .bind::<Array<BigInt>, _>(&av)
    .bind::<Array<Text>, _>(&st)
    .bind::<Array<Text>, _>(&details)
    .execute(c)
    .await?;
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
    let rows: Vec<PoolRow> = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, quantity, cssm_in_use, cssm_available, \
         status, details, synced_at FROM tiers.pools WHERE smart_account = $1 \
         ORDER BY virtual_account, license",
    )
    .bind::<Text, _>(smart_account)
    .load(c)
    .await?;
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

/// Smart accounts of the managed devices: the ones whose pools matter.
async fn smart_accounts(c: &mut AsyncPgConnection) -> Result<Vec<String>, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Sa {
        #[diesel(sql_type = Text)]
        smart_account: String,
    }
    let rows: Vec<Sa> = diesel::sql_query(
        "SELECT DISTINCT smart_account FROM tiers.devices WHERE NOT deleted ORDER BY 1",
    )
    .load(c)
    .await?;
    Ok(rows.into_iter().map(|r| r.smart_account).collect())
}

/// Syncs every smart account's pools from CSSM now.
pub async fn sync(t: &Tiers) -> Result<SyncSummary, SyncError> {
    let cssm = t.cssm.clone().ok_or(SyncError::Offline)?;
    let mut conn = t.pool.get().await.map_err(tally_store::StoreError::from)?;
    let accounts = smart_accounts(&mut conn).await?;
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
        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        let l: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(SYNC_LOCK)
            .get_result(c)
            .await?;
        if !l.locked {
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
