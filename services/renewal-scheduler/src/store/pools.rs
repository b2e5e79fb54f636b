//! `sched.pools` and `sched.pool_terms` as tier-assignment last announced them per smart
//! account (`sched.pool_syncs` keeps the newest announcement's time), and the devices'
//! out-of-compliance flag they drive.

use super::sched::{pool_terms, pools};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

type Result<T> = std::result::Result<T, diesel::result::Error>;

/// Records an announcement of the smart account's pools made at `at`, unless a newer one was
/// recorded: true when this one is the newest (and should be applied).
pub async fn claim_sync(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    at: DateTime<Utc>,
) -> Result<bool> {
    let n = diesel::sql_query(include_str!("sql/claim_pool_sync.sql"))
        .bind::<Text, _>(smart_account)
        .bind::<Timestamptz, _>(at)
        .execute(c)
        .await?;
    Ok(n == 1)
}

/// Since when each of the account's overcommitted pools has been over, by (virtual account,
/// license).
pub async fn over_since(
    c: &mut AsyncPgConnection,
    smart_account: &str,
) -> Result<Vec<(String, String, DateTime<Utc>)>> {
    let rows: Vec<(String, String, Option<DateTime<Utc>>)> = pools::table
        .filter(pools::smart_account.eq(smart_account))
        .filter(pools::over_since.is_not_null())
        .select((pools::virtual_account, pools::license, pools::over_since))
        .load(c)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(va, l, t)| Some((va, l, t?)))
        .collect())
}

/// Forgets the account's pools and terms (before writing the announced ones).
pub async fn clear(c: &mut AsyncPgConnection, smart_account: &str) -> Result<()> {
    diesel::delete(pool_terms::table.filter(pool_terms::smart_account.eq(smart_account)))
        .execute(c)
        .await?;
    diesel::delete(pools::table.filter(pools::smart_account.eq(smart_account)))
        .execute(c)
        .await?;
    Ok(())
}

/// One smart account's pools, as parallel columns.
#[derive(Debug, Default)]
pub struct NewPools {
    pub virtual_accounts: Vec<String>,
    pub licenses: Vec<String>,
    pub levels: Vec<String>,
    pub quantities: Vec<i64>,
    pub cssm_in_use: Vec<i64>,
    pub held: Vec<i64>,
    pub over_since: Vec<Option<DateTime<Utc>>>,
    /// Each pool's model patterns as a JSON array.
    pub models_json: Vec<String>,
}

pub async fn insert_pools(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    p: &NewPools,
    synced_at: DateTime<Utc>,
) -> Result<usize> {
    diesel::sql_query(include_str!("sql/insert_pools.sql"))
        .bind::<Text, _>(smart_account)
        .bind::<Array<Text>, _>(&p.virtual_accounts)
        .bind::<Array<Text>, _>(&p.licenses)
        .bind::<Array<Text>, _>(&p.levels)
        .bind::<Array<BigInt>, _>(&p.quantities)
        .bind::<Array<BigInt>, _>(&p.cssm_in_use)
        .bind::<Array<BigInt>, _>(&p.held)
        .bind::<Array<Nullable<Timestamptz>>, _>(&p.over_since)
        .bind::<Timestamptz, _>(synced_at)
        .bind::<Array<Text>, _>(&p.models_json)
        .execute(c)
        .await
}

/// One smart account's subscription lines, as parallel columns.
#[derive(Debug, Default)]
pub struct NewTerms {
    pub virtual_accounts: Vec<String>,
    pub licenses: Vec<String>,
    pub lines: Vec<i32>,
    pub subscription_ids: Vec<String>,
    pub license_types: Vec<String>,
    pub quantities: Vec<i64>,
    pub starts: Vec<Option<DateTime<Utc>>>,
    pub ends: Vec<Option<DateTime<Utc>>>,
}

pub async fn insert_terms(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    t: &NewTerms,
) -> Result<usize> {
    diesel::sql_query(include_str!("sql/insert_pool_terms.sql"))
        .bind::<Text, _>(smart_account)
        .bind::<Array<Text>, _>(&t.virtual_accounts)
        .bind::<Array<Text>, _>(&t.licenses)
        .bind::<Array<Integer>, _>(&t.lines)
        .bind::<Array<Text>, _>(&t.subscription_ids)
        .bind::<Array<Text>, _>(&t.license_types)
        .bind::<Array<BigInt>, _>(&t.quantities)
        .bind::<Array<Nullable<Timestamptz>>, _>(&t.starts)
        .bind::<Array<Nullable<Timestamptz>>, _>(&t.ends)
        .execute(c)
        .await
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Sets out-of-compliance on the account's devices from its pools (a device holding a level
/// whose pool in its virtual account is overcommitted, where the pool's models fit it); returns
/// the devices whose flag changed.
pub async fn flag_account(c: &mut AsyncPgConnection, smart_account: &str) -> Result<Vec<Uuid>> {
    let rows: Vec<IdRow> = diesel::sql_query(include_str!("sql/flag_account.sql"))
        .bind::<Text, _>(smart_account)
        .load(c)
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// [`flag_account`] for devices that just joined or changed, from the pools already known.
pub async fn flag_devices(c: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<usize> {
    diesel::sql_query(include_str!("sql/flag_devices.sql"))
        .bind::<Array<SqlUuid>, _>(ids)
        .execute(c)
        .await
}

/// An overcommitted pool.
#[derive(Debug, Queryable)]
pub struct OverPool {
    pub smart_account: String,
    pub virtual_account: String,
    pub license: String,
    pub quantity: i64,
    pub cssm_in_use: i64,
    pub held: i64,
    pub over_since: DateTime<Utc>,
}

/// Every overcommitted pool, by account and license.
pub async fn overcommitted(c: &mut AsyncPgConnection) -> Result<Vec<OverPool>> {
    pools::table
        .filter(pools::over_since.is_not_null())
        .order((pools::smart_account, pools::virtual_account, pools::license))
        .select((
            pools::smart_account,
            pools::virtual_account,
            pools::license,
            pools::quantity,
            pools::cssm_in_use,
            pools::held,
            pools::over_since.assume_not_null(),
        ))
        .load(c)
        .await
}

/// A subscription line that ends.
#[derive(Debug, QueryableByName)]
pub struct EndingTerm {
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Text)]
    pub license: String,
    #[diesel(sql_type = Integer)]
    pub line: i32,
    #[diesel(sql_type = Text)]
    pub subscription_id: String,
    #[diesel(sql_type = BigInt)]
    pub quantity: i64,
    #[diesel(sql_type = Timestamptz)]
    pub end_date: DateTime<Utc>,
}

/// Subscription (not perpetual) lines ending after `after` and no later than `until`, soonest
/// first.
pub async fn terms_ending(
    c: &mut AsyncPgConnection,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<EndingTerm>> {
    diesel::sql_query(include_str!("sql/terms_due.sql"))
        .bind::<Timestamptz, _>(until)
        .bind::<Timestamptz, _>(after)
        .load(c)
        .await
}
