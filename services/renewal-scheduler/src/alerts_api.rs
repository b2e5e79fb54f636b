//! REST routes for compliance (per device, at risk, roll-ups), alerts (list, acknowledge,
//! evaluate now or at a simulated time), silences and alert webhooks.

use crate::compliance::{self, Dimension, Status};
use crate::store::alerts::{self as store, AlertFilter};
use crate::{Scheduler, alerts};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_platform::{Caller, FieldError, Page, PageRules, Problem, auth::Role};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use crate::store::alerts::{Alert, Silence};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(devices)
        .service(at_risk)
        .service(summary)
        .service(list_alerts)
        .service(ack_alert)
        .service(evaluate)
        .service(list_silences)
        .service(create_silence)
        .service(delete_silence)
        .service(list_webhooks)
        .service(create_webhook)
        .service(delete_webhook);
}

/// The text values of an enum, for an error naming what is allowed.
fn names<T: std::fmt::Display>(all: &[T]) -> String {
    all.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(field: &str, message: impl Into<String>) -> Problem {
    Problem::validation(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ComplianceQuery {
    /// in_compliance, ack_pending, out_of_compliance or ack_overdue.
    pub status: Option<String>,
    pub site: Option<String>,
    pub virtual_account: Option<String>,
    /// Evaluate at this time instead of now (what-if, drills).
    pub at: Option<DateTime<Utc>>,
    /// Devices per page, by hostname (1-100000, default 1000).
    pub limit: Option<i64>,
    /// Devices to skip (default 0).
    pub offset: Option<i64>,
    /// `csv` for CSV.
    pub format: Option<String>,
}

/// Devices per compliance page when none is asked for, and the most one page holds.
const DEVICE_PAGES: PageRules = PageRules::new(1000, 100_000);

/// Per-device compliance: status, deadline, days left, impact and why; a page at a time.
#[utoipa::path(tag = "compliance", params(ComplianceQuery), responses((status = 200, body = Vec<compliance::DeviceCompliance>), (status = 422, body = Problem)))]
#[get("/compliance/devices")]
async fn devices(
    s: web::Data<Scheduler>,
    req: HttpRequest,
    q: web::Query<ComplianceQuery>,
) -> Result<HttpResponse, Problem> {
    let q = q.into_inner();
    let status = match &q.status {
        None => None,
        Some(st) => Some(st.parse::<Status>().map_err(|_| {
            invalid(
                "status",
                format!("{st:?} is not one of {}", names(Status::ALL)),
            )
        })?),
    };
    let Page { limit, offset } = DEVICE_PAGES.page(q.limit, q.offset)?;
    let now = compliance::clock(&s);
    let f = compliance::DeviceFilter {
        site: q.site,
        virtual_account: q.virtual_account,
        status,
        limit,
        offset,
    };
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let out = compliance::devices_page(&mut c, &f, q.at.unwrap_or(now), now).await?;
    if tally_platform::csv_body::wanted(&req, q.format.as_deref()) {
        return tally_platform::csv_body::response(&out);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtRiskQuery {
    pub limit: Option<usize>,
    pub at: Option<DateTime<Utc>>,
    pub format: Option<String>,
}

/// Devices due soon or overdue, ranked: devices that stop working (CUBE, SRST, CME) first, then
/// by nearest deadline.
#[utoipa::path(tag = "compliance", params(AtRiskQuery), responses((status = 200, body = Vec<compliance::DeviceCompliance>)))]
#[get("/compliance/at-risk")]
async fn at_risk(
    s: web::Data<Scheduler>,
    req: HttpRequest,
    q: web::Query<AtRiskQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=100_000).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 100000"));
    }
    let now = compliance::clock(&s);
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let out = compliance::at_risk_page(&mut c, q.at.unwrap_or(now), now, limit as i64).await?;
    if tally_platform::csv_body::wanted(&req, q.format.as_deref()) {
        return tally_platform::csv_body::response(&out);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// smart_account, virtual_account, site or tier.
    pub by: String,
    pub at: Option<DateTime<Utc>>,
    pub format: Option<String>,
}

/// Compliance roll-up per smart account, virtual account, site or tier.
#[utoipa::path(tag = "compliance", params(SummaryQuery), responses((status = 200, body = Vec<compliance::RollUp>), (status = 422, body = Problem)))]
#[get("/compliance/summary")]
async fn summary(
    s: web::Data<Scheduler>,
    req: HttpRequest,
    q: web::Query<SummaryQuery>,
) -> Result<HttpResponse, Problem> {
    let by: Dimension = q.by.parse().map_err(|_| {
        invalid(
            "by",
            format!("{:?} is not one of {}", q.by, names(Dimension::ALL)),
        )
    })?;
    let now = compliance::clock(&s);
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let out = compliance::summary(&mut c, by, q.at.unwrap_or(now), now).await?;
    if tally_platform::csv_body::wanted(&req, q.format.as_deref()) {
        return tally_platform::csv_body::response(&out);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// open (not acknowledged) or acknowledged.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub device_id: Option<Uuid>,
    pub limit: Option<i64>,
    pub format: Option<String>,
}

/// Alerts per list when none is asked for, and the most one list holds (no offset: newest first).
const ALERT_PAGES: PageRules = PageRules::new(1000, 100_000);

/// Alerts, newest first.
#[utoipa::path(tag = "alerts", params(AlertQuery), responses((status = 200, body = Vec<Alert>)))]
#[get("/alerts")]
async fn list_alerts(
    s: web::Data<Scheduler>,
    req: HttpRequest,
    q: web::Query<AlertQuery>,
) -> Result<HttpResponse, Problem> {
    let open = match q.state.as_deref() {
        None => None,
        Some("open") => Some(true),
        Some("acknowledged") => Some(false),
        Some(o) => {
            return Err(invalid(
                "state",
                format!("{o:?} is not open or acknowledged"),
            ));
        }
    };
    let Page { limit, .. } = ALERT_PAGES.page(q.limit, None)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let f = AlertFilter {
        open,
        kind: q.kind.clone(),
        severity: q.severity.clone(),
        device_id: q.device_id,
    };
    let rows = store::list(&mut c, &f, limit).await?;
    if tally_platform::csv_body::wanted(&req, q.format.as_deref()) {
        return tally_platform::csv_body::response(&rows);
    }
    Ok(HttpResponse::Ok().json(rows))
}

/// Acknowledges an alert (it stays in the list, marked with who and when).
#[utoipa::path(tag = "alerts", responses((status = 200, body = Alert), (status = 404, body = Problem)))]
#[post("/alerts/{id}/ack")]
async fn ack_alert(
    s: web::Data<Scheduler>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<web::Json<Alert>, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    store::acknowledge(&mut c, *id, &caller.name)
        .await?
        .map(web::Json)
        .ok_or_else(|| Problem::not_found("alert", *id))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluateRequest {
    /// Evaluate as if it were this time (admin drills and tests); default now.
    pub at: Option<DateTime<Utc>>,
}

/// Evaluates alerts now (or at a simulated time, admin only).
#[utoipa::path(tag = "alerts", request_body = EvaluateRequest, responses((status = 200, body = alerts::Evaluation)))]
#[post("/alerts/evaluate")]
async fn evaluate(
    s: web::Data<Scheduler>,
    caller: Caller,
    body: web::Json<EvaluateRequest>,
) -> Result<web::Json<alerts::Evaluation>, Problem> {
    if body.at.is_some() {
        caller.require(Role::Admin)?;
    }
    let at = body.at.unwrap_or_else(|| compliance::clock(&s));
    // Not `?`: through `From` a pool error would become a 503, and this route has always
    // answered a failed evaluation, pool or not, with a 500.
    alerts::evaluate(&s, at)
        .await
        .map(web::Json)
        .map_err(Problem::internal)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub kind: Option<String>,
    pub site: Option<String>,
    pub device_id: Option<Uuid>,
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// Silences: matching alerts are recorded but not delivered until the silence ends.
#[utoipa::path(tag = "alerts", responses((status = 200, body = Vec<Silence>)))]
#[get("/silences")]
async fn list_silences(s: web::Data<Scheduler>) -> Result<web::Json<Vec<Silence>>, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows = store::list_silences(&mut c).await?;
    Ok(web::Json(rows))
}

#[utoipa::path(tag = "alerts", request_body = NewSilence, responses((status = 201, body = Silence), (status = 422, body = Problem)))]
#[post("/silences")]
async fn create_silence(
    s: web::Data<Scheduler>,
    caller: Caller,
    body: web::Json<NewSilence>,
) -> Result<HttpResponse, Problem> {
    let mut errors = Vec::new();
    if body.reason.trim().is_empty() {
        errors.push(FieldError {
            field: "reason".into(),
            message: "say why".into(),
        });
    }
    if body.until <= Utc::now() {
        errors.push(FieldError {
            field: "until".into(),
            message: "must be in the future".into(),
        });
    }
    if let Some(k) = &body.kind
        && k.parse::<alerts::Kind>().is_err()
    {
        errors.push(FieldError {
            field: "kind".into(),
            message: format!("{k:?} is not one of {}", names(alerts::Kind::ALL)),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let new = store::NewSilenceRow {
        id: Uuid::now_v7(),
        kind: body.kind.as_deref(),
        site: body.site.as_deref(),
        device_id: body.device_id,
        until: body.until,
        reason: &body.reason,
        created_by: &caller.name,
    };
    let row = store::create_silence(&mut c, &new).await?;
    Ok(HttpResponse::Created().json(row))
}

#[utoipa::path(tag = "alerts", responses((status = 204), (status = 404, body = Problem)))]
#[delete("/silences/{id}")]
async fn delete_silence(
    s: web::Data<Scheduler>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    if !store::delete_silence(&mut c, *id).await? {
        return Err(Problem::not_found("silence", *id));
    }
    Ok(HttpResponse::NoContent().finish())
}

fn webhooks(s: &Scheduler) -> Result<&tally_webhook::Webhooks, Problem> {
    s.webhooks
        .as_ref()
        .ok_or_else(|| Problem::unavailable("webhooks are not configured in this process"))
}

/// Alert webhooks (admin). Secrets are sealed and never shown again.
#[utoipa::path(tag = "alerts", responses((status = 200, body = Vec<Object>)))]
#[get("/webhooks")]
async fn list_webhooks(s: web::Data<Scheduler>, caller: Caller) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let w = webhooks(&s)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    Ok(HttpResponse::Ok().json(w.list(&mut c).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub url: String,
    /// At least 16 characters; receivers check `X-Tally-Signature` with it (docs/webhooks.md).
    pub secret: String,
    #[serde(default)]
    pub description: String,
    /// Alert kinds to receive; empty for all.
    #[serde(default)]
    pub events: Vec<String>,
}

#[utoipa::path(tag = "alerts", request_body = WebhookRequest, responses((status = 201, body = Object), (status = 422, body = Problem)))]
#[post("/webhooks")]
async fn create_webhook(
    s: web::Data<Scheduler>,
    caller: Caller,
    body: web::Json<WebhookRequest>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let w = webhooks(&s)?;
    let body = body.into_inner();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let created = w
        .create(
            &mut c,
            tally_webhook::NewWebhook {
                url: body.url,
                secret: body.secret,
                description: body.description,
                events: body.events,
                enabled: true,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(created))
}

#[utoipa::path(tag = "alerts", responses((status = 204), (status = 404, body = Problem)))]
#[delete("/webhooks/{id}")]
async fn delete_webhook(
    s: web::Data<Scheduler>,
    caller: Caller,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let w = webhooks(&s)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    if !w.delete(&mut c, *id).await? {
        return Err(Problem::not_found("webhook", *id));
    }
    Ok(HttpResponse::NoContent().finish())
}
