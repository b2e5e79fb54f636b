//! REST routes for compliance (per device, at risk, roll-ups), alerts (list, acknowledge,
//! evaluate now or at a simulated time), silences and alert webhooks.

use crate::{Scheduler, compliance};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use tally_platform::{Caller, FieldError, Problem, auth::Role};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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

fn db(e: impl std::fmt::Display) -> Problem {
    Problem::internal(e)
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

/// Per-device compliance: status, deadline, days left, impact and why; a page at a time.
#[utoipa::path(tag = "compliance", params(ComplianceQuery), responses((status = 200, body = Vec<compliance::DeviceCompliance>), (status = 422, body = Problem)))]
#[get("/compliance/devices")]
async fn devices(
    s: web::Data<Scheduler>,
    req: HttpRequest,
    q: web::Query<ComplianceQuery>,
) -> Result<HttpResponse, Problem> {
    let q = q.into_inner();
    if let Some(st) = &q.status
        && !compliance::STATUSES.contains(&st.as_str())
    {
        return Err(invalid(
            "status",
            format!("{st:?} is not one of {}", compliance::STATUSES.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=100_000).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("{limit} is not between 1 and 100000"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(invalid("offset", format!("{offset} is negative")));
    }
    let now = compliance::clock(&s);
    let f = compliance::DeviceFilter {
        site: q.site,
        virtual_account: q.virtual_account,
        status: q.status,
        limit,
        offset,
    };
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let out = compliance::devices_page(&mut c, &f, q.at.unwrap_or(now), now)
        .await
        .map_err(db)?;
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
    let out = compliance::at_risk_page(&mut c, q.at.unwrap_or(now), now, limit as i64)
        .await
        .map_err(db)?;
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
    if !compliance::DIMENSIONS.contains(&q.by.as_str()) {
        return Err(invalid(
            "by",
            format!(
                "{:?} is not one of {}",
                q.by,
                compliance::DIMENSIONS.join(", ")
            ),
        ));
    }
    let now = compliance::clock(&s);
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let out = compliance::summary(&mut c, &q.by, q.at.unwrap_or(now), now)
        .await
        .map_err(db)?;
    if tally_platform::csv_body::wanted(&req, q.format.as_deref()) {
        return tally_platform::csv_body::response(&out);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Alert {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub severity: String,
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub device_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub hostname: String,
    #[diesel(sql_type = Text)]
    pub site: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Timestamptz)]
    pub due: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub threshold: String,
    #[diesel(sql_type = Text)]
    pub message: String,
    #[diesel(sql_type = Bool)]
    pub silenced: bool,
    #[diesel(sql_type = Timestamptz)]
    pub fired_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    pub acknowledged_by: Option<String>,
}

const ALERT_COLUMNS: &str = "id, kind, severity, subject, device_id, hostname, site, virtual_account, \
    due, threshold, message, silenced, fired_at, acknowledged_at, acknowledged_by";

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
    let limit = q.limit.unwrap_or(1000);
    if !(1..=100_000).contains(&limit) {
        return Err(invalid("limit", "must be between 1 and 100000"));
    }
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<Alert> = diesel::sql_query(format!(
        "SELECT {ALERT_COLUMNS} FROM sched.alerts WHERE ($1::bool IS NULL OR (acknowledged_at IS NULL) = $1) \
         AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR severity = $3) \
         AND ($4::uuid IS NULL OR device_id = $4) ORDER BY fired_at DESC, id LIMIT $5"
    ))
    .bind::<Nullable<Bool>, _>(open)
    .bind::<Nullable<Text>, _>(q.kind.clone())
    .bind::<Nullable<Text>, _>(q.severity.clone())
    .bind::<Nullable<SqlUuid>, _>(q.device_id)
    .bind::<BigInt, _>(limit)
    .load(&mut c)
    .await
    .map_err(db)?;
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
    let rows: Vec<Alert> = diesel::sql_query(format!(
        "UPDATE sched.alerts SET acknowledged_at = coalesce(acknowledged_at, now()), \
         acknowledged_by = coalesce(acknowledged_by, $2) WHERE id = $1 RETURNING {ALERT_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(*id)
    .bind::<Text, _>(&caller.name)
    .load(&mut c)
    .await
    .map_err(db)?;
    rows.into_iter()
        .next()
        .map(web::Json)
        .ok_or_else(|| Problem::not_found("alert", *id))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluateRequest {
    /// Evaluate as if it were this time (admin drills and tests); default now.
    pub at: Option<DateTime<Utc>>,
}

/// Evaluates alerts now (or at a simulated time, admin only).
#[utoipa::path(tag = "alerts", request_body = EvaluateRequest, responses((status = 200, body = compliance::Evaluation)))]
#[post("/alerts/evaluate")]
async fn evaluate(
    s: web::Data<Scheduler>,
    caller: Caller,
    body: web::Json<EvaluateRequest>,
) -> Result<web::Json<compliance::Evaluation>, Problem> {
    if body.at.is_some() {
        caller.require(Role::Admin)?;
    }
    let at = body.at.unwrap_or_else(|| compliance::clock(&s));
    compliance::evaluate(&s, at)
        .await
        .map(web::Json)
        .map_err(db)
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Silence {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    pub kind: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub site: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub device_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    pub until: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub created_by: String,
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
    let rows = diesel::sql_query(
        "SELECT id, kind, site, device_id, until, reason, created_by FROM sched.silences ORDER BY until DESC",
    )
    .load(&mut c)
    .await
    .map_err(db)?;
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
        && !compliance::KINDS.contains(&k.as_str())
    {
        errors.push(FieldError {
            field: "kind".into(),
            message: format!("{k:?} is not one of {}", compliance::KINDS.join(", ")),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let row: Silence = diesel::sql_query(
        "INSERT INTO sched.silences (id, kind, site, device_id, until, reason, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, kind, site, device_id, until, reason, created_by",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<Nullable<Text>, _>(body.kind.clone())
    .bind::<Nullable<Text>, _>(body.site.clone())
    .bind::<Nullable<SqlUuid>, _>(body.device_id)
    .bind::<Timestamptz, _>(body.until)
    .bind::<Text, _>(&body.reason)
    .bind::<Text, _>(&caller.name)
    .get_result(&mut c)
    .await
    .map_err(db)?;
    Ok(HttpResponse::Created().json(row))
}

#[utoipa::path(tag = "alerts", responses((status = 204), (status = 404, body = Problem)))]
#[delete("/silences/{id}")]
async fn delete_silence(
    s: web::Data<Scheduler>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let n = diesel::sql_query("DELETE FROM sched.silences WHERE id = $1")
        .bind::<SqlUuid, _>(*id)
        .execute(&mut c)
        .await
        .map_err(db)?;
    if n == 0 {
        return Err(Problem::not_found("silence", *id));
    }
    Ok(HttpResponse::NoContent().finish())
}

fn webhooks(s: &Scheduler) -> Result<&tally_webhook::Webhooks, Problem> {
    s.webhooks
        .as_ref()
        .ok_or_else(|| Problem::unavailable("webhooks are not configured in this process"))
}

fn webhook_error(e: tally_webhook::WebhookError) -> Problem {
    match e {
        tally_webhook::WebhookError::Invalid { field, reason } => invalid(field, reason),
        other => Problem::internal(other),
    }
}

/// Alert webhooks (admin). Secrets are sealed and never shown again.
#[utoipa::path(tag = "alerts", responses((status = 200, body = Vec<Object>)))]
#[get("/webhooks")]
async fn list_webhooks(s: web::Data<Scheduler>, caller: Caller) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let w = webhooks(&s)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    Ok(HttpResponse::Ok().json(w.list(&mut c).await.map_err(webhook_error)?))
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
        .await
        .map_err(webhook_error)?;
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
    if !w.delete(&mut c, *id).await.map_err(webhook_error)? {
        return Err(Problem::not_found("webhook", *id));
    }
    Ok(HttpResponse::NoContent().finish())
}
