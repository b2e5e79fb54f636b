//! Accounts and licenses: smart and virtual accounts, the fleet's license roll-up, and a virtual
//! account's license terms and usage from the pools of the last pool sync.

use crate::Catalyst;
use crate::devices::bad;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tally_platform::{Problem, catalyst_token::CatalystCaller};
use tally_renewal_scheduler::store::catalyst as store;
use utoipa::IntoParams;

/// The smart accounts of the fleet.
#[utoipa::path(
    tag = "catalyst",
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"response\": [{name, id, domain, is_active_smart_account}], \"version\": \"1.0\"}`"),
        (status = 401, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/licenses/smartAccounts")]
pub(crate) async fn smart_accounts(
    s: web::Data<Catalyst>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let names = store::smart_accounts(&mut c).await?;
    // Tally knows a smart account by its name (its domain in CSSM): it is also the id.
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "id": n, "domain": n, "is_active_smart_account": true}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"response": items, "version": "1.0"})))
}

/// The virtual accounts of a smart account.
#[utoipa::path(
    tag = "catalyst",
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{smart_account_id, smart_account_name, virtual_account_details: [{virtual_account_id, virtual_account_name}]}`"),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/licenses/smartAccount/{smart_account_id}/virtualAccounts")]
pub(crate) async fn virtual_accounts(
    s: web::Data<Catalyst>,
    smart_account_id: web::Path<String>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let sa = smart_account_id.into_inner();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let names = store::virtual_accounts(&mut c, &sa).await?;
    if names.is_empty() {
        return Err(Problem::not_found("smart account", &sa));
    }
    let vas: Vec<Value> = names
        .iter()
        .map(|n| json!({"virtual_account_id": n, "virtual_account_name": n}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "smart_account_id": sa,
        "smart_account_name": sa,
        "virtual_account_details": vas,
    })))
}

/// The fleet's license roll-up.
#[utoipa::path(
    tag = "catalyst",
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"response\": {totalDeviceCount, networkEssentialsCount, networkAdvantageCount, dnaEssentialsCount, dnaAdvantageCount, dnaPremierCount, cnsCount, unregisteredNetworkDeviceCount, outOfComplianceNetworkDeviceCount, expiredLicensesCount, expiringLicensesCount}, \"version\": \"1.0\"}`"),
        (status = 401, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/networkDeviceLicenses/summary")]
pub(crate) async fn network_summary(
    s: web::Data<Catalyst>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    // Out-of-compliance reads the stored deadlines: bring them up to date first.
    tally_renewal_scheduler::deadlines::refresh(&mut c, s.now()).await?;
    let r = store::rollup(&mut c)
        .await?
        .ok_or_else(|| Problem::internal("empty roll-up"))?;
    Ok(HttpResponse::Ok().json(json!({
        "response": {
            "totalDeviceCount": r.total,
            "networkEssentialsCount": r.net_ess,
            "networkAdvantageCount": r.net_adv,
            "dnaEssentialsCount": r.dna_ess,
            "dnaAdvantageCount": r.dna_adv,
            "dnaPremierCount": r.dna_prem,
            "cnsCount": 0,
            "unregisteredNetworkDeviceCount": r.unregistered,
            "outOfComplianceNetworkDeviceCount": r.out_of_compliance,
            // Licenses in subscription lines that ended, or end within 90 days (last pool sync).
            "expiredLicensesCount": r.expired,
            "expiringLicensesCount": r.expiring,
        },
        "version": "1.0",
    })))
}

/// The kind of device a model is, in the words of the term and usage calls' `device_type`.
fn kind_of_model(model: &str) -> &'static str {
    let m = model.trim_end_matches('*');
    if m.starts_with("C9800") || m.starts_with("AIR-") {
        "wireless"
    } else if ["C92", "C93", "C94", "C95", "C96", "WS-C", "IE-", "C1000"]
        .iter()
        .any(|p| m.starts_with(p))
    {
        "switch"
    } else {
        "router"
    }
}

/// `device_type` as the SDKs send it (router, switch, wireless, ise, or Catalyst Center's own
/// names); absent or empty means every type.
fn device_kind(v: Option<&str>) -> Result<Option<&'static str>, Problem> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "router" | "routers" => Ok(Some("router")),
        "switch" | "switches" | "switches and hubs" => Ok(Some("switch")),
        "wireless" | "wireless controller" => Ok(Some("wireless")),
        // Tally manages no ISE nodes.
        "ise" => Ok(Some("ise")),
        other => Err(bad(
            "device_type",
            format!("{other:?} is not one of router, switch, wireless, ise"),
        )),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceTypeQuery {
    /// `router`, `switch`, `wireless`, `ise` or Catalyst Center's names; empty: every type.
    device_type: Option<String>,
}

fn level_name(level: &str) -> &'static str {
    match level {
        "dna-essentials" | "network-essentials" => "Essentials",
        "dna-advantage" | "network-advantage" => "Advantage",
        "dna-premier" => "Premier",
        _ => "NA",
    }
}

/// The model a pool is for: its first model pattern, else its license name.
fn pool_model(models: &[Option<String>], license: &str) -> String {
    models.iter().flatten().next().map_or_else(
        || license.to_owned(),
        |m| m.trim_end_matches('*').to_owned(),
    )
}

/// License term details: each DNA subscription line of the virtual account's pools, from the
/// last pool sync (all values strings, as the SDKs type them).
#[utoipa::path(
    tag = "catalyst",
    params(DeviceTypeQuery),
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"license_details\": [{model, virtual_account_name, license_term_start_date, license_term_end_date, dna_level, purchased_dna_license_count, is_license_expired}]}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
#[get(
    "/dna/intent/api/v1/licenses/term/smartAccount/{smart_account_id}/virtualAccount/{virtual_account_name}"
)]
pub(crate) async fn license_terms(
    s: web::Data<Catalyst>,
    path: web::Path<(String, String)>,
    q: web::Query<DeviceTypeQuery>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let (sa, va) = path.into_inner();
    let kind = device_kind(q.device_type.as_deref())?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows = store::dna_terms(&mut c, &sa, &va).await?;
    let now = Utc::now();
    let date = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let details: Vec<Value> = rows
        .iter()
        .filter(|r| {
            let model = pool_model(&r.models, &r.license);
            kind.is_none_or(|k| kind_of_model(&model) == k)
        })
        .map(|r| {
            json!({
                "model": pool_model(&r.models, &r.license),
                "virtual_account_name": va,
                "license_term_start_date": date(r.start_date),
                "license_term_end_date": date(r.end_date),
                "dna_level": level_name(&r.level),
                "purchased_dna_license_count": r.quantity.to_string(),
                "is_license_expired": r.end_date.is_some_and(|e| e <= now).to_string(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"license_details": details})))
}

fn by_type(counts: &BTreeMap<&'static str, i64>) -> Value {
    json!({
        "total_license_count": counts.values().sum::<i64>(),
        "license_count_by_type": counts
            .iter()
            .map(|(t, n)| json!({"license_type": t, "license_count": n}))
            .collect::<Vec<_>>(),
    })
}

/// License usage: purchased (the pools CSSM lists) and used (the devices holding each level)
/// DNA and network licenses of a virtual account, by level.
#[utoipa::path(
    tag = "catalyst",
    params(DeviceTypeQuery),
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{purchased_dna_license, purchased_network_license, used_dna_license, used_network_license}`, each `{total_license_count, license_count_by_type: [{license_type, license_count}]}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
#[get(
    "/dna/intent/api/v1/licenses/usage/smartAccount/{smart_account_id}/virtualAccount/{virtual_account_name}"
)]
pub(crate) async fn license_usage(
    s: web::Data<Catalyst>,
    path: web::Path<(String, String)>,
    q: web::Query<DeviceTypeQuery>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let (sa, va) = path.into_inner();
    let kind = device_kind(q.device_type.as_deref())?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let pools = store::pools(&mut c, &sa, &va).await?;
    let used = store::used(&mut c, &sa, &va).await?;
    if pools.is_empty() && used.is_empty() {
        return Err(Problem::not_found("virtual account", format!("{sa}/{va}")));
    }
    let (mut bought_dna, mut bought_net) = (BTreeMap::new(), BTreeMap::new());
    for p in &pools {
        if kind.is_some_and(|k| kind_of_model(&pool_model(&p.models, &p.license)) != k) {
            continue;
        }
        let into = if p.level.starts_with("dna-") {
            &mut bought_dna
        } else {
            &mut bought_net
        };
        *into.entry(level_name(&p.level)).or_insert(0) += p.quantity;
    }
    let (mut used_dna, mut used_net) = (BTreeMap::new(), BTreeMap::new());
    for u in &used {
        if kind.is_some_and(|k| kind_of_model(&u.udi_pid) != k) {
            continue;
        }
        *used_net.entry(level_name(&u.network_license)).or_insert(0) += u.n;
        if let Some(t) = &u.dna_tier {
            *used_dna.entry(level_name(t)).or_insert(0) += u.n;
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "purchased_dna_license": by_type(&bought_dna),
        "purchased_network_license": by_type(&bought_net),
        "used_dna_license": by_type(&used_dna),
        "used_network_license": by_type(&used_net),
    })))
}
