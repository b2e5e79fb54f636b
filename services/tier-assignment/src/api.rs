//! REST routes under `/api/v1/tiers`: catalogue, rules, pools and drift, dry-run plans, jobs
//! (create, follow, per-device results, cancel), the device ledger and history (JSON or CSV).

use crate::Tiers;
use crate::jobs::{self, Job, JobError};
use crate::plan::{Plan, PlanRequest};
use crate::pools::{self, PoolView, SyncError, SyncSummary};
use crate::store::devices::LedgerQuery;
use crate::store::history::HistoryQuery;
use crate::store::{self, DeviceState, HistoryKind, ItemState, JobState};
use actix_web::{HttpRequest, HttpResponse, delete, get, http::StatusCode, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::{fmt::Display, str::FromStr};
use tally_domain::{DnaTier, NetworkLicense, rules::Rules};
use tally_platform::{Caller, FieldError, PageRules, Problem, auth::Role};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use crate::store::{HistoryEntry, JobItem, LedgerDevice};

tally_store::text_enum! {
    /// The codes of the problems these routes answer with, beside the platform's own.
    pub enum ProblemCode {
        IdempotencyKeyReused = "idempotency-key-reused",
        PlanChanged = "plan-changed",
        PlanRefused = "plan-refused",
        JobFinished = "job-finished",
        SyncUnavailable = "sync-unavailable",
        CssmFailed = "cssm-failed",
    }
}

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(catalogue)
        .service(get_rules)
        .service(put_rules)
        .service(reset_rules)
        .service(list_pools)
        .service(drift)
        .service(sync_pools)
        .service(import_pools)
        .service(dry_run)
        .service(create_job)
        .service(list_jobs)
        .service(get_job)
        .service(job_items)
        .service(cancel_job)
        .service(list_ledger)
        .service(history);
}

impl From<JobError> for Problem {
    fn from(e: JobError) -> Self {
        match e {
            JobError::KeyReused(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemCode::IdempotencyKeyReused.as_str(),
                e.to_string(),
            ),
            JobError::PlanChanged { .. } => {
                Problem::conflict(ProblemCode::PlanChanged.as_str(), e.to_string())
            }
            JobError::Refused(ref plan) => {
                let errors = plan
                    .rejected
                    .iter()
                    .take(1000)
                    .flat_map(|r| {
                        r.violations.iter().map(|v| FieldError {
                            field: format!("device {} ({})", r.hostname, r.device_id),
                            message: format!("{}: {} [rule: {}]", v.code, v.message, v.rule),
                        })
                    })
                    .collect();
                Problem::conflict(ProblemCode::PlanRefused.as_str(), format!("{e}; nothing was changed (all_or_nothing). Dry-run the request to see every violation, or use best_effort."))
                    .with_errors(errors)
            }
            JobError::NotFound(id) => Problem::not_found("job", id),
            JobError::Finished(..) => {
                Problem::conflict(ProblemCode::JobFinished.as_str(), e.to_string())
            }
            JobError::Db(e) => Problem::internal(e),
            JobError::Store(e) => Problem::internal(e),
        }
    }
}

/// `value` is not one of `allowed`: a 422 naming the field, not an empty list.
fn not_one_of(field: &str, value: &str, allowed: &[impl Display]) -> Problem {
    let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    Problem::validation(vec![FieldError {
        field: field.into(),
        message: format!("{value:?} is not one of {}", allowed.join(", ")),
    }])
}

/// A filter value that can only be one of `allowed`.
fn one_of<T: FromStr + Display + PartialEq>(
    field: &str,
    value: Option<&str>,
    allowed: &[T],
) -> Result<Option<T>, Problem> {
    match value {
        None => Ok(None),
        Some(v) => match v.parse::<T>() {
            Ok(t) if allowed.contains(&t) => Ok(Some(t)),
            _ => Err(not_one_of(field, v, allowed)),
        },
    }
}

const DNA_FILTER: &[&str] = &["none", "dna-essentials", "dna-advantage", "dna-premier"];

fn dna_filter(value: Option<&str>) -> Result<(), Problem> {
    match value {
        Some(v) if !DNA_FILTER.contains(&v) => Err(not_one_of("dna_tier", v, DNA_FILTER)),
        _ => Ok(()),
    }
}

/// The item states a list can be narrowed to.
const ITEM_FILTER: &[ItemState] = &[
    ItemState::Pending,
    ItemState::Applied,
    ItemState::Confirmed,
    ItemState::Failed,
    ItemState::Rejected,
    ItemState::Cancelled,
    ItemState::RevertPending,
    ItemState::Reverted,
    ItemState::RevertFailed,
];

const JOB_PAGES: PageRules = PageRules::new(50, 1000);
const ITEM_PAGES: PageRules = PageRules::new(100_000, 1_000_000);
const LEDGER_PAGES: PageRules = PageRules::new(1000, 1_000_000);
const HISTORY_PAGES: PageRules = PageRules::new(10_000, 1_000_000);

#[derive(Debug, Serialize, ToSchema)]
pub struct Catalogue {
    pub network_licenses: Vec<String>,
    pub dna_tiers: Vec<String>,
}

/// The license levels a device can be given (`license boot level <network> addon <dna>`).
#[utoipa::path(tag = "tiers", responses((status = 200, body = Catalogue)))]
#[get("/tiers/catalogue")]
async fn catalogue() -> web::Json<Catalogue> {
    web::Json(Catalogue {
        network_licenses: NetworkLicense::ALL.iter().map(|t| t.to_string()).collect(),
        dna_tiers: DnaTier::ALL.iter().map(|t| t.to_string()).collect(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RulesDoc {
    /// 0: the shipped defaults.
    pub version: i64,
    #[schema(value_type = Object)]
    pub rules: Rules,
}

/// The rules jobs are checked against: licenses per model, DNA/network pairing, minimum software.
#[utoipa::path(tag = "tiers", responses((status = 200, body = RulesDoc)))]
#[get("/tiers/rules")]
async fn get_rules(t: web::Data<Tiers>) -> Result<web::Json<RulesDoc>, Problem> {
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let r = store::load_rules(&mut c).await?;
    Ok(web::Json(RulesDoc {
        version: r.version,
        rules: r.rules,
    }))
}

/// Replaces the rules (admin). Every problem is named; nothing is stored unless all are valid.
#[utoipa::path(tag = "tiers", request_body = Object, responses((status = 200, body = RulesDoc), (status = 422, body = Problem)))]
#[put("/tiers/rules")]
async fn put_rules(
    t: web::Data<Tiers>,
    caller: Caller,
    body: web::Bytes,
) -> Result<web::Json<RulesDoc>, Problem> {
    caller.require(Role::Admin)?;
    let rules: Rules = serde_json::from_slice(&body).map_err(|e| {
        Problem::validation(vec![FieldError {
            field: "body".into(),
            message: format!("not a rules document: {e}"),
        }])
    })?;
    rules.validate().map_err(|e| {
        Problem::validation(
            e.problems
                .into_iter()
                .map(|p| {
                    let (field, message) = p.split_once(": ").unwrap_or(("rules", &p));
                    FieldError {
                        field: field.to_owned(),
                        message: message.to_owned(),
                    }
                })
                .collect(),
        )
    })?;
    let doc = serde_json::to_value(&rules).map_err(Problem::internal)?;
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let version = store::rules::replace(&mut c, &doc, &caller.name).await?;
    Ok(web::Json(RulesDoc { version, rules }))
}

/// Goes back to the shipped default rules (admin).
#[utoipa::path(tag = "tiers", responses((status = 200, body = RulesDoc)))]
#[delete("/tiers/rules")]
async fn reset_rules(t: web::Data<Tiers>, caller: Caller) -> Result<web::Json<RulesDoc>, Problem> {
    caller.require(Role::Admin)?;
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    store::rules::reset(&mut c).await?;
    Ok(web::Json(RulesDoc {
        version: 0,
        rules: Rules::defaults(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatQuery {
    /// `csv` for CSV (or send `Accept: text/csv`).
    pub format: Option<String>,
}

/// Entitlement pools per virtual account and license: purchased, CSSM's in-use, Tally's
/// holdings, what is left, and drift.
#[utoipa::path(tag = "tiers", params(FormatQuery), responses((status = 200, body = Vec<PoolView>)))]
#[get("/tiers/pools")]
async fn list_pools(
    t: web::Data<Tiers>,
    req: HttpRequest,
    q: web::Query<FormatQuery>,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let pools = pools::list(&mut c).await?;
    pools_response(&req, q.format.as_deref(), pools)
}

#[derive(Serialize, Default)]
struct PoolCsv<'a> {
    smart_account: &'a str,
    virtual_account: &'a str,
    license: &'a str,
    quantity: Option<i64>,
    cssm_in_use: Option<i64>,
    held: i64,
    awaiting_reload: i64,
    available: Option<i64>,
    drift: Option<i64>,
    overcommitted: bool,
}

fn pools_response(
    req: &HttpRequest,
    format: Option<&str>,
    pools: Vec<PoolView>,
) -> Result<HttpResponse, Problem> {
    if tally_platform::csv_body::wanted(req, format) {
        let rows: Vec<PoolCsv<'_>> = pools
            .iter()
            .map(|p| PoolCsv {
                smart_account: &p.smart_account,
                virtual_account: &p.virtual_account,
                license: &p.license,
                quantity: p.quantity,
                cssm_in_use: p.cssm_in_use,
                held: p.held,
                awaiting_reload: p.awaiting_reload,
                available: p.available,
                drift: p.drift,
                overcommitted: p.overcommitted,
            })
            .collect();
        return tally_platform::csv_body::response(&rows);
    }
    Ok(HttpResponse::Ok().json(pools))
}

/// Pools where Tally's ledger and CSSM's in-use count disagree, or that CSSM does not list.
#[utoipa::path(tag = "tiers", params(FormatQuery), responses((status = 200, body = Vec<PoolView>)))]
#[get("/tiers/pools/drift")]
async fn drift(
    t: web::Data<Tiers>,
    req: HttpRequest,
    q: web::Query<FormatQuery>,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let pools: Vec<PoolView> = pools::list(&mut c)
        .await?
        .into_iter()
        .filter(|p| p.drift != Some(0))
        .collect();
    pools_response(&req, q.format.as_deref(), pools)
}

/// Syncs the pools from CSSM now (online installations).
#[utoipa::path(tag = "tiers", responses((status = 200, body = SyncSummary), (status = 409, body = Problem), (status = 502, body = Problem)))]
#[post("/tiers/pools/sync")]
async fn sync_pools(t: web::Data<Tiers>) -> Result<web::Json<SyncSummary>, Problem> {
    match pools::sync(&t).await {
        Ok(s) => Ok(web::Json(s)),
        Err(e @ (SyncError::Offline | SyncError::Busy)) => Err(Problem::conflict(
            ProblemCode::SyncUnavailable.as_str(),
            e.to_string(),
        )),
        Err(e @ SyncError::Cssm(_)) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            ProblemCode::CssmFailed.as_str(),
            e.to_string(),
        )),
        Err(e) => Err(Problem::internal(e)),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PoolImport {
    pub smart_account: String,
    /// CSSM's `licenses` answer, as saved from the CSSM portal or API on a connected machine.
    #[schema(value_type = Vec<Object>)]
    pub licenses: Vec<tally_cssm::License>,
}

/// Replaces a smart account's pools from a file (air-gapped installations).
#[utoipa::path(tag = "tiers", request_body = PoolImport, responses((status = 200, body = Vec<PoolView>), (status = 422, body = Problem)))]
#[post("/tiers/pools/import")]
async fn import_pools(
    t: web::Data<Tiers>,
    body: web::Bytes,
) -> Result<web::Json<Vec<PoolView>>, Problem> {
    let imp: PoolImport = serde_json::from_slice(&body).map_err(|e| {
        Problem::validation(vec![FieldError {
            field: "body".into(),
            message: format!(
                "expected {{\"smart_account\": ..., \"licenses\": [...]}} as CSSM lists them: {e}"
            ),
        }])
    })?;
    let mut errors = Vec::new();
    if imp.smart_account.trim().is_empty() {
        errors.push(FieldError {
            field: "smart_account".into(),
            message: "empty".into(),
        });
    }
    for (i, l) in imp.licenses.iter().enumerate() {
        if l.quantity < 0 || l.in_use < 0 {
            errors.push(FieldError {
                field: format!("licenses[{i}]"),
                message: "quantity and inUse must not be negative".into(),
            });
        }
        if l.license.trim().is_empty() || l.virtual_account.trim().is_empty() {
            errors.push(FieldError {
                field: format!("licenses[{i}]"),
                message: "license and virtualAccount are required".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    use diesel_async::AsyncConnection;
    c.transaction(async |c| pools::store_pools(c, &imp.smart_account, &imp.licenses).await)
        .await?;
    Ok(web::Json(pools::list(&mut c).await?))
}

/// Dry-run: exactly what a job with this request would change, the pool impact and every
/// violation. Nothing is written.
#[utoipa::path(tag = "tiers", request_body = PlanRequest, responses((status = 200, body = Plan), (status = 422, body = Problem)))]
#[post("/tiers/plan")]
async fn dry_run(
    t: web::Data<Tiers>,
    body: web::Json<PlanRequest>,
) -> Result<web::Json<Plan>, Problem> {
    let target = body.validate().map_err(Problem::validation)?;
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let plan = jobs::compute(&mut c, &body, &target).await?;
    Ok(web::Json(plan))
}

/// Starts a job. Send an `Idempotency-Key` header so a retry returns the same job instead of
/// starting another; all_or_nothing jobs are refused (409, every violation listed) unless every
/// device passes.
#[utoipa::path(tag = "tiers", request_body = PlanRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = Job), (status = 200, body = Job, description = "The job this idempotency key started"),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post("/tiers/jobs")]
async fn create_job(
    t: web::Data<Tiers>,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<PlanRequest>,
) -> Result<HttpResponse, Problem> {
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.trim().is_empty() && k.len() <= 255 => Some(k.trim().to_owned()),
            _ => {
                return Err(Problem::validation(vec![FieldError {
                    field: "Idempotency-Key".into(),
                    message: "must be 1 to 255 visible ASCII characters".into(),
                }]));
            }
        },
    };
    let target = body.validate().map_err(Problem::validation)?;
    let created = jobs::create(&t, &body, &target, key.as_deref(), &caller.name).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header(("Location", format!("/api/v1/tiers/jobs/{}", created.job.id)))
        .json(created.job))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    pub state: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Jobs, newest first.
#[utoipa::path(tag = "tiers", params(JobFilter), responses((status = 200, body = Vec<Job>)))]
#[get("/tiers/jobs")]
async fn list_jobs(
    t: web::Data<Tiers>,
    f: web::Query<JobFilter>,
) -> Result<web::Json<Vec<Job>>, Problem> {
    let page = JOB_PAGES.page(f.limit, f.offset)?;
    let state = one_of("state", f.state.as_deref(), JobState::ALL)?;
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let rows = store::jobs::list(&mut c, state, page).await?;
    Ok(web::Json(rows))
}

/// One job: state and per-state device counts.
#[utoipa::path(tag = "tiers", responses((status = 200, body = Job), (status = 404, body = Problem)))]
#[get("/tiers/jobs/{id}")]
async fn get_job(t: web::Data<Tiers>, id: web::Path<Uuid>) -> Result<web::Json<Job>, Problem> {
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    jobs::get(&mut c, *id)
        .await?
        .map(web::Json)
        .ok_or_else(|| Problem::not_found("job", *id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemFilter {
    pub state: Option<String>,
    /// `csv` for CSV.
    pub format: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Per-device results of a job, in the order the job took the devices.
#[utoipa::path(tag = "tiers", params(ItemFilter), responses((status = 200, body = Vec<JobItem>), (status = 404, body = Problem)))]
#[get("/tiers/jobs/{id}/items")]
async fn job_items(
    t: web::Data<Tiers>,
    id: web::Path<Uuid>,
    req: HttpRequest,
    f: web::Query<ItemFilter>,
) -> Result<HttpResponse, Problem> {
    let page = ITEM_PAGES.page(f.limit, f.offset)?;
    let state = one_of("state", f.state.as_deref(), ITEM_FILTER)?;
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    if jobs::get(&mut c, *id).await?.is_none() {
        return Err(Problem::not_found("job", *id));
    }
    let rows = store::items::list(&mut c, *id, state, page).await?;
    if tally_platform::csv_body::wanted(&req, f.format.as_deref()) {
        return tally_platform::csv_body::response(&rows);
    }
    Ok(HttpResponse::Ok().json(rows))
}

/// Cancels a job: devices not yet configured are left alone; an all_or_nothing job also
/// configures its devices back.
#[utoipa::path(tag = "tiers", responses((status = 200, body = Job), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/tiers/jobs/{id}/cancel")]
async fn cancel_job(t: web::Data<Tiers>, id: web::Path<Uuid>) -> Result<web::Json<Job>, Problem> {
    Ok(web::Json(jobs::cancel(&t, *id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerFilter {
    pub site: Option<String>,
    pub group: Option<String>,
    /// Exact model or prefix ending in `*`.
    pub model: Option<String>,
    pub dna_tier: Option<String>,
    pub state: Option<String>,
    pub format: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// The license ledger: what each device holds, and whether it waits for a reload.
#[utoipa::path(tag = "tiers", params(LedgerFilter), responses((status = 200, body = Vec<LedgerDevice>)))]
#[get("/tiers/devices")]
async fn list_ledger(
    t: web::Data<Tiers>,
    req: HttpRequest,
    f: web::Query<LedgerFilter>,
) -> Result<HttpResponse, Problem> {
    let page = LEDGER_PAGES.page(f.limit, f.offset)?;
    let state = one_of("state", f.state.as_deref(), DeviceState::ALL)?;
    dna_filter(f.dna_tier.as_deref())?;
    let filter = LedgerQuery {
        site: f.site.as_deref(),
        group: f.group.as_deref(),
        model: f.model.as_deref().map(store::like),
        dna_tier: f.dna_tier.as_deref(),
        state,
    };
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let rows = store::devices::ledger(&mut c, filter, page).await?;
    if tally_platform::csv_body::wanted(&req, f.format.as_deref()) {
        return tally_platform::csv_body::response(&rows);
    }
    Ok(HttpResponse::Ok().json(rows))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryFilter {
    pub device_id: Option<Uuid>,
    /// tier, virtual_account or ack.
    pub kind: Option<String>,
    pub job_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Entries after this id (pages in order).
    pub after: Option<i64>,
    pub limit: Option<i64>,
    pub format: Option<String>,
}

/// Every tier change, virtual account change and ACK per device, oldest first.
#[utoipa::path(tag = "tiers", params(HistoryFilter), responses((status = 200, body = Vec<HistoryEntry>), (status = 422, body = Problem)))]
#[get("/tiers/history")]
async fn history(
    t: web::Data<Tiers>,
    req: HttpRequest,
    f: web::Query<HistoryFilter>,
) -> Result<HttpResponse, Problem> {
    let page = HISTORY_PAGES.page(f.limit, None)?;
    let kind = one_of("kind", f.kind.as_deref(), HistoryKind::ALL)?;
    let filter = HistoryQuery {
        device_id: f.device_id,
        kind,
        job_id: f.job_id,
        since: f.since,
        until: f.until,
        after: f.after.unwrap_or(0),
    };
    let mut c = tally_platform::problem::conn(&t.pool).await?;
    let rows = store::history::list(&mut c, filter, page.limit).await?;
    if tally_platform::csv_body::wanted(&req, f.format.as_deref()) {
        return tally_platform::csv_body::response(&rows);
    }
    Ok(HttpResponse::Ok().json(rows))
}
