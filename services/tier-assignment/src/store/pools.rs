//! `tiers.pools` (entitlement pools as CSSM lists them) and what the ledger holds of each.

use super::schema::tiers::pools;
use crate::plan::PoolKey;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::HashMap;

diesel::define_sql_function!(fn pg_try_advisory_xact_lock(key: BigInt) -> Bool);

/// A pool as CSSM last listed it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = pools, check_for_backend(diesel::pg::Pg))]
pub struct PoolRow {
    pub smart_account: String,
    pub virtual_account: String,
    pub license: String,
    pub quantity: i64,
    pub cssm_in_use: i64,
    pub cssm_available: i64,
    pub status: String,
    pub details: serde_json::Value,
    pub synced_at: DateTime<Utc>,
}

/// Every pool.
pub async fn all(c: &mut AsyncPgConnection) -> QueryResult<Vec<PoolRow>> {
    pools::table.select(PoolRow::as_select()).load(c).await
}

/// The smart account's pools, by virtual account and license.
pub async fn of_account(
    c: &mut AsyncPgConnection,
    smart_account: &str,
) -> QueryResult<Vec<PoolRow>> {
    pools::table
        .filter(pools::smart_account.eq(smart_account))
        .select(PoolRow::as_select())
        .order((pools::virtual_account, pools::license))
        .load(c)
        .await
}

/// A smart account's pools as columns, for one `INSERT ... SELECT FROM unnest(...)`; `details`
/// are JSON arrays as text.
#[derive(Debug, Default)]
pub struct NewPools {
    pub virtual_accounts: Vec<String>,
    pub licenses: Vec<String>,
    pub quantities: Vec<i64>,
    pub in_use: Vec<i64>,
    pub available: Vec<i64>,
    pub statuses: Vec<String>,
    pub details: Vec<String>,
}

/// Replaces the smart account's pools with `p`, synced now.
pub async fn replace(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    p: &NewPools,
) -> QueryResult<()> {
    diesel::delete(pools::table.filter(pools::smart_account.eq(smart_account)))
        .execute(c)
        .await?;
    diesel::sql_query(include_str!("sql/insert_pools.sql"))
        .bind::<Text, _>(smart_account)
        .bind::<Array<Text>, _>(&p.virtual_accounts)
        .bind::<Array<Text>, _>(&p.licenses)
        .bind::<Array<BigInt>, _>(&p.quantities)
        .bind::<Array<BigInt>, _>(&p.in_use)
        .bind::<Array<BigInt>, _>(&p.available)
        .bind::<Array<Text>, _>(&p.statuses)
        .bind::<Array<Text>, _>(&p.details)
        .execute(c)
        .await?;
    Ok(())
}

/// Takes the transaction-scoped advisory lock `key` if it is free.
pub async fn try_lock(c: &mut AsyncPgConnection, key: i64) -> QueryResult<bool> {
    diesel::select(pg_try_advisory_xact_lock(key))
        .get_result(c)
        .await
}

#[derive(QueryableByName)]
struct PoolCount {
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn to_map(rows: Vec<PoolCount>) -> HashMap<PoolKey, i64> {
    rows.into_iter()
        .map(|r| ((r.smart_account, r.virtual_account, r.license), r.n))
        .collect()
}

/// Purchased quantity per pool.
pub async fn quantities(c: &mut AsyncPgConnection) -> QueryResult<HashMap<PoolKey, i64>> {
    let rows: Vec<(String, String, String, i64)> = pools::table
        .select((
            pools::smart_account,
            pools::virtual_account,
            pools::license,
            pools::quantity,
        ))
        .load(c)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(sa, va, license, n)| ((sa, va, license), n))
        .collect())
}

/// Devices holding each pool in the ledger, plus the licenses an unfinished job releases: a
/// release only counts once it can no longer be undone (a cancelled, failed or rolled-back
/// device takes its old license back without asking the pool).
pub async fn held(c: &mut AsyncPgConnection) -> QueryResult<HashMap<PoolKey, i64>> {
    let rows = diesel::sql_query(include_str!("sql/held.sql"))
        .load(c)
        .await?;
    Ok(to_map(rows))
}

/// Devices holding each pool whose new level waits for a reload (CSSM has not seen it in use).
pub async fn awaiting_reload(c: &mut AsyncPgConnection) -> QueryResult<HashMap<PoolKey, i64>> {
    let rows = diesel::sql_query(include_str!("sql/awaiting_reload.sql"))
        .load(c)
        .await?;
    Ok(to_map(rows))
}
