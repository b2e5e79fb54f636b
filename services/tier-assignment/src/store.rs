//! Reads shared by the planner, the API and the workers.

use crate::plan::{DeviceView, Levels, PoolKey, Selector};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::HashMap;
use tally_domain::rules::Rules;
use uuid::Uuid;

pub struct CurrentRules {
    pub rules: Rules,
    /// 0 for the shipped defaults.
    pub version: i64,
}

#[derive(QueryableByName)]
struct RulesRow {
    #[diesel(sql_type = Jsonb)]
    doc: serde_json::Value,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

pub async fn load_rules(c: &mut AsyncPgConnection) -> Result<CurrentRules, diesel::result::Error> {
    let row: Option<RulesRow> =
        diesel::sql_query("SELECT doc, version FROM tiers.rules WHERE id = 1")
            .get_result(c)
            .await
            .map(Some)
            .or_else(|e| match e {
                diesel::result::Error::NotFound => Ok(None),
                e => Err(e),
            })?;
    Ok(match row {
        // Stored rules were validated when written; a row that no longer parses (written by a
        // newer release) falls back to the defaults rather than stopping every job.
        Some(r) => match serde_json::from_value::<Rules>(r.doc) {
            Ok(rules) => CurrentRules {
                rules,
                version: r.version,
            },
            Err(e) => {
                tracing::error!(error = %e, "stored tier rules do not parse; using the defaults");
                CurrentRules {
                    rules: Rules::defaults(),
                    version: 0,
                }
            }
        },
        None => CurrentRules {
            rules: Rules::defaults(),
            version: 0,
        },
    })
}

#[derive(QueryableByName)]
struct DeviceRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    hostname: String,
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = Text)]
    software_version: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    dna_tier: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    network_pool: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    dna_pool: Option<String>,
}

/// `C9300-48*` -> `C9300-48%` for LIKE, with LIKE's own wildcards escaped.
pub fn like(pattern: &str) -> String {
    let escaped = pattern
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    match escaped.strip_suffix('*') {
        Some(p) => format!("{p}%"),
        None => escaped,
    }
}

/// The selected devices, ordered by hostname (the order a job admits them in).
pub async fn select_devices(
    c: &mut AsyncPgConnection,
    s: &Selector,
) -> Result<Vec<DeviceView>, diesel::result::Error> {
    let ids = (!s.device_ids.is_empty()).then(|| s.device_ids.clone());
    let rows: Vec<DeviceRow> = diesel::sql_query(
        // A device counts as busy while the job that configured it can still undo it.
        "SELECT d.id, hostname, model, software_version, \
         CASE WHEN d.state <> 'active' AND j.state IN ('applying', 'rolling_back') \
           THEN 'applying' ELSE d.state END AS state, \
         smart_account, virtual_account, network_license, dna_tier, network_pool, dna_pool \
         FROM tiers.devices d LEFT JOIN tiers.jobs j ON j.id = d.job_id \
         WHERE NOT deleted AND ($1::uuid[] IS NULL OR d.id = ANY($1)) \
         AND ($2::text IS NULL OR site = $2) AND ($3::text IS NULL OR $3 = ANY(groups)) \
         AND ($4::text IS NULL OR model LIKE $4) AND ($5::text IS NULL OR hostname LIKE $5) \
         AND ($6::text IS NULL OR coalesce(dna_tier, 'none') = $6) \
         AND ($7::text IS NULL OR network_license = $7) \
         AND ($8::text IS NULL OR virtual_account = $8) ORDER BY hostname, d.id",
    )
    .bind::<Nullable<Array<SqlUuid>>, _>(ids)
    .bind::<Nullable<Text>, _>(s.site.clone())
    .bind::<Nullable<Text>, _>(s.group.clone())
    .bind::<Nullable<Text>, _>(s.model.as_deref().map(like))
    .bind::<Nullable<Text>, _>(s.hostname.as_deref().map(like))
    .bind::<Nullable<Text>, _>(s.dna_tier.clone())
    .bind::<Nullable<Text>, _>(s.network_license.clone())
    .bind::<Nullable<Text>, _>(s.virtual_account.clone())
    .load(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DeviceView {
            id: r.id,
            hostname: r.hostname,
            model: r.model,
            software_version: r.software_version,
            state: r.state,
            current: Levels {
                smart_account: r.smart_account,
                virtual_account: r.virtual_account,
                network_license: r.network_license,
                dna_tier: r.dna_tier,
                network_pool: r.network_pool,
                dna_pool: r.dna_pool,
            },
        })
        .collect())
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
pub async fn quantities(
    c: &mut AsyncPgConnection,
) -> Result<HashMap<PoolKey, i64>, diesel::result::Error> {
    let rows = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, quantity AS n FROM tiers.pools",
    )
    .load(c)
    .await?;
    Ok(to_map(rows))
}

/// Devices holding each pool in the ledger, plus the licenses an unfinished job releases: a
/// release only counts once it can no longer be undone (a cancelled, failed or rolled-back
/// device takes its old license back without asking the pool).
pub async fn held(
    c: &mut AsyncPgConnection,
) -> Result<HashMap<PoolKey, i64>, diesel::result::Error> {
    let rows = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, count(*) AS n FROM ( \
           SELECT smart_account, virtual_account, network_pool AS license FROM tiers.devices \
           WHERE NOT deleted AND network_pool IS NOT NULL \
           UNION ALL \
           SELECT smart_account, virtual_account, dna_pool FROM tiers.devices \
           WHERE NOT deleted AND dna_pool IS NOT NULL \
           UNION ALL \
           SELECT d.smart_account, i.from_va, p.old FROM tiers.job_items i \
           JOIN tiers.jobs j ON j.id = i.job_id JOIN tiers.devices d ON d.id = i.device_id \
           CROSS JOIN LATERAL (VALUES (i.from_network_pool, i.to_network_pool), \
             (i.from_dna_pool, i.to_dna_pool)) AS p(old, new) \
           WHERE NOT d.deleted AND p.old IS NOT NULL \
           AND (p.old IS DISTINCT FROM p.new OR i.from_va <> i.to_va) \
           AND (i.state IN ('pending', 'revert_pending', 'pushing', 'reverting') OR (i.state = 'applied' \
             AND j.mode = 'all_or_nothing' AND j.state IN ('applying', 'rolling_back')))) h \
         GROUP BY smart_account, virtual_account, license",
    )
    .load(c)
    .await?;
    Ok(to_map(rows))
}

/// Devices holding each pool whose new level waits for a reload (CSSM has not seen it in use).
pub async fn awaiting_reload(
    c: &mut AsyncPgConnection,
) -> Result<HashMap<PoolKey, i64>, diesel::result::Error> {
    let rows = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, count(*) AS n FROM ( \
           SELECT smart_account, virtual_account, network_pool AS license FROM tiers.devices \
           WHERE NOT deleted AND network_pool IS NOT NULL AND state = 'pending_reload' \
           UNION ALL \
           SELECT smart_account, virtual_account, dna_pool FROM tiers.devices \
           WHERE NOT deleted AND dna_pool IS NOT NULL AND state = 'pending_reload') h \
         GROUP BY smart_account, virtual_account, license",
    )
    .load(c)
    .await?;
    Ok(to_map(rows))
}
