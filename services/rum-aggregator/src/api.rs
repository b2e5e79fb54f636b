//! REST routes under `/api/v1`: stored reports (metadata and exact bytes), manual upload of report
//! files, quarantine, per-device collection and ACK outcomes, collector status.

use crate::Aggregator;
use crate::collect::check_reports;
use crate::store::{self, AckImportState, CollectionState, Confirmation, Page, Scope};
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use tally_bus::proto;
use tally_domain::{Udi, rum};
use tally_platform::{FieldError, Problem};
use tally_store::outbox::Schema;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Largest report file accepted by the upload route.
pub const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_reports)
        .service(raw_report)
        .service(upload_reports)
        .service(list_quarantine)
        .service(list_collections)
        .service(list_ack_imports)
        .service(retry_ack_imports)
        .service(collector_status);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    pub device_id: Option<Uuid>,
    pub cycle_id: Option<Uuid>,
    /// `pending`, `done`/`ok` or `failed` (collections and ACK imports).
    pub state: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl Filter {
    fn page(&self) -> Result<Page, Problem> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Problem::validation(vec![FieldError {
                field: "limit".into(),
                message: "must be between 1 and 1000".into(),
            }]));
        }
        Ok(Page {
            limit,
            offset: self.offset.unwrap_or(0).max(0),
        })
    }

    fn scope(&self) -> Scope {
        Scope {
            device_id: self.device_id,
            cycle_id: self.cycle_id,
        }
    }

    /// The state asked for; `Err` when it names no state of `S`, so no row can match.
    fn state<S: std::str::FromStr>(&self) -> Result<Option<S>, S::Err> {
        self.state.as_deref().map(str::parse).transpose()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportMeta {
    pub device_id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub report_id: i64,
    pub cycle_id: Option<Uuid>,
    pub entitlement_tag: String,
    pub software_version: String,
    pub usage_count: i64,
    pub end_time: i64,
    pub bytes: i64,
    pub received_at: DateTime<Utc>,
}

impl From<store::reports::ReportRow> for ReportMeta {
    fn from(r: store::reports::ReportRow) -> Self {
        Self {
            device_id: r.device_id,
            udi_pid: r.udi_pid,
            udi_serial: r.udi_serial,
            report_id: r.report_id,
            cycle_id: r.cycle_id,
            entitlement_tag: r.entitlement_tag,
            software_version: r.software_version,
            usage_count: r.usage_count,
            end_time: r.end_time,
            bytes: i64::from(r.bytes),
            received_at: r.received_at,
        }
    }
}

/// Reports stored, newest first.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<ReportMeta>)))]
#[get("/reports")]
async fn list_reports(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<ReportMeta>>, Problem> {
    let page = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = store::reports::list(&mut conn, f.scope(), page).await?;
    Ok(web::Json(rows.into_iter().map(ReportMeta::from).collect()))
}

/// The report object exactly as the device sent it.
#[utoipa::path(tag = "reports", responses((status = 200, content_type = "application/json", body = String), (status = 404, body = Problem)))]
#[get("/reports/{device_id}/{report_id}/raw")]
async fn raw_report(
    agg: web::Data<Aggregator>,
    path: web::Path<(Uuid, i64)>,
) -> Result<HttpResponse, Problem> {
    let (device, report) = *path;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let body = store::reports::raw_body(&mut conn, device, report)
        .await?
        .ok_or_else(|| Problem::not_found("report", format!("{report} of device {device}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadResult {
    pub reports: usize,
    pub accepted: usize,
    pub duplicates: usize,
}

/// Upload a report file (`<smartLicense>` envelope, as `license smart save usage` writes it) for
/// devices that cannot be reached. All or nothing: any bad report or unknown device refuses the
/// whole file. Reports seen before are counted as duplicates and not sent again.
#[utoipa::path(tag = "reports", request_body(content = String, content_type = "application/xml"), responses((status = 200, body = UploadResult), (status = 400, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
#[post("/reports/upload")]
async fn upload_reports(
    agg: web::Data<Aggregator>,
    body: web::Payload,
) -> Result<web::Json<UploadResult>, Problem> {
    let body = tally_platform::problem::read_body(body, MAX_UPLOAD_BYTES).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("invalid-envelope", "report file is not UTF-8 text"))?;
    let raws = rum::parse_envelope(text)
        .map_err(|e| Problem::bad_request("invalid-envelope", e.to_string()))?;
    let mut errors = Vec::new();
    let mut reports = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match rum::inspect_report(raw) {
            Ok(info) => reports.push((info, raw.clone())),
            Err(e) => errors.push(FieldError {
                field: format!("report {}", i + 1),
                message: e.to_string(),
            }),
        }
    }
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let mut udis: Vec<Udi> = reports.iter().map(|(i, _)| i.udi.clone()).collect();
    udis.sort();
    udis.dedup();
    let known = store::devices::known_by_udi(&mut conn, &udis).await?;
    for u in &udis {
        if !known
            .iter()
            .any(|k| k.udi_pid == u.udi_pid && k.udi_serial == u.udi_serial_number)
        {
            errors.push(FieldError {
                field: "udi".into(),
                message: format!("unknown device {u}: add it to the inventory first"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let total = reports.len();
    let mut accepted = 0;
    conn.transaction(async |c| {
        for k in &known {
            let udi = Udi {
                udi_pid: k.udi_pid.clone(),
                udi_serial_number: k.udi_serial.clone(),
            };
            let mine: Vec<String> = reports
                .iter()
                .filter(|(i, _)| i.udi == udi)
                .map(|(_, r)| r.clone())
                .collect();
            let checked = check_reports(&udi, mine);
            let mut ev = proto::ReportsCollected::default();
            for a in checked.accepted {
                if store::reports::insert_uploaded(c, k.id, &a.info, &a.raw).await? {
                    accepted += 1;
                    ev.reports.push(proto::CollectedReport {
                        device_id: k.id.to_string(),
                        udi_pid: k.udi_pid.clone(),
                        udi_serial: k.udi_serial.clone(),
                        report_id: a.info.report_id,
                        smart_account: k.smart_account.clone(),
                        virtual_account: k.virtual_account.clone(),
                        body: a.raw.into_bytes(),
                    });
                }
            }
            if !ev.reports.is_empty() {
                tally_bus::emit(c, Schema::Rum, &ev).await?;
            }
        }
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    Ok(web::Json(UploadResult {
        reports: total,
        accepted,
        duplicates: total - accepted,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Quarantined {
    pub id: i64,
    pub device_id: Option<Uuid>,
    pub cycle_id: Option<Uuid>,
    pub reason: String,
    /// The rejected bytes as text (lossy if not UTF-8).
    pub body: String,
    pub received_at: DateTime<Utc>,
}

impl From<store::reports::QuarantineRow> for Quarantined {
    fn from(r: store::reports::QuarantineRow) -> Self {
        Self {
            id: r.id,
            device_id: r.device_id,
            cycle_id: r.cycle_id,
            reason: r.reason,
            // Quarantined bodies need not be UTF-8.
            body: String::from_utf8_lossy(&r.body).into_owned(),
            received_at: r.received_at,
        }
    }
}

/// Reports refused as malformed, with the reason and the bytes received.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<Quarantined>)))]
#[get("/quarantine")]
async fn list_quarantine(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<Quarantined>>, Problem> {
    let page = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = store::reports::list_quarantine(&mut conn, f.scope(), page).await?;
    Ok(web::Json(rows.into_iter().map(Quarantined::from).collect()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Collection {
    pub cycle_id: Uuid,
    pub device_id: Uuid,
    #[schema(value_type = String)]
    pub state: CollectionState,
    pub error: Option<String>,
    pub reports_new: i32,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<store::collections::CollectionRow> for Collection {
    fn from(r: store::collections::CollectionRow) -> Self {
        Self {
            cycle_id: r.cycle_id,
            device_id: r.device_id,
            state: r.state,
            error: r.error,
            reports_new: r.reports_new,
            finished_at: r.finished_at,
        }
    }
}

/// Per-device collection outcome in each cycle.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<Collection>)))]
#[get("/collections")]
async fn list_collections(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<Collection>>, Problem> {
    let page = f.page()?;
    let Ok(state) = f.state::<CollectionState>() else {
        return Ok(web::Json(Vec::new()));
    };
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = store::collections::list(&mut conn, f.scope(), state, page).await?;
    Ok(web::Json(rows.into_iter().map(Collection::from).collect()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AckImport {
    pub id: Uuid,
    pub device_id: Uuid,
    pub cycle_id: Option<Uuid>,
    pub report_ids: Vec<i64>,
    #[schema(value_type = String)]
    pub state: AckImportState,
    pub error: Option<String>,
    pub attempts: i32,
    /// The ACK document, for devices that must be given it by hand.
    pub ack: String,
    pub finished_at: Option<DateTime<Utc>>,
    /// What reading the device back showed: `confirmed` (its last ACK received moved),
    /// `unconfirmed` (delivered, but its state could not be read) or `not_applied` (it answered
    /// 2xx but did not move); absent while pending or when the import itself failed.
    #[schema(value_type = Option<String>)]
    pub confirmation: Option<Confirmation>,
    /// Why the import is unconfirmed or not applied.
    pub confirmation_reason: Option<String>,
    /// The device's last ACK received before the import, as its state showed it.
    pub ack_received_before: Option<DateTime<Utc>>,
    /// The device's last ACK received after the import, as its state showed it.
    pub ack_received_after: Option<DateTime<Utc>>,
}

impl From<store::ack_imports::AckImportRow> for AckImport {
    fn from(r: store::ack_imports::AckImportRow) -> Self {
        Self {
            id: r.id,
            device_id: r.device_id,
            cycle_id: r.cycle_id,
            report_ids: r.report_ids.into_iter().flatten().collect(),
            state: r.state,
            error: r.error,
            attempts: r.attempts,
            ack: r.ack,
            finished_at: r.finished_at,
            confirmation: r.confirmation,
            confirmation_reason: r.confirmation_reason,
            ack_received_before: r.ack_received_before,
            ack_received_after: r.ack_received_after,
        }
    }
}

/// [`Filter`] and what read-back showed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AckImportFilter {
    pub device_id: Option<Uuid>,
    pub cycle_id: Option<Uuid>,
    /// `pending`, `ok` or `failed`.
    pub state: Option<String>,
    /// What reading the device back showed: `confirmed`, `unconfirmed` or `not_applied`.
    pub confirmation: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl AckImportFilter {
    fn common(&self) -> Filter {
        Filter {
            device_id: self.device_id,
            cycle_id: self.cycle_id,
            state: self.state.clone(),
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// ACKs handed (or to hand) to devices, with each outcome and what reading the device back
/// showed.
#[utoipa::path(tag = "reports", params(AckImportFilter), responses((status = 200, body = Vec<AckImport>)))]
#[get("/ack-imports")]
async fn list_ack_imports(
    agg: web::Data<Aggregator>,
    q: web::Query<AckImportFilter>,
) -> Result<web::Json<Vec<AckImport>>, Problem> {
    let f = q.common();
    let page = f.page()?;
    let confirmation = q
        .confirmation
        .as_deref()
        .map(str::parse::<Confirmation>)
        .transpose();
    let (Ok(state), Ok(confirmation)) = (f.state::<AckImportState>(), confirmation) else {
        return Ok(web::Json(Vec::new()));
    };
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = store::ack_imports::list(&mut conn, f.scope(), state, confirmation, page).await?;
    Ok(web::Json(rows.into_iter().map(AckImport::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RetryRequest {
    /// Only this cycle's failed imports; all failed imports when absent.
    pub cycle_id: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryResult {
    pub requeued: usize,
}

/// Queue failed ACK imports again.
#[utoipa::path(tag = "reports", request_body = RetryRequest, responses((status = 200, body = RetryResult)))]
#[post("/ack-imports/retry")]
async fn retry_ack_imports(
    agg: web::Data<Aggregator>,
    body: web::Json<RetryRequest>,
) -> Result<web::Json<RetryResult>, Problem> {
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let n = store::ack_imports::retry_failed(&mut conn, body.cycle_id).await?;
    Ok(web::Json(RetryResult { requeued: n }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectorStatus {
    /// Devices the collector knows from inventory's events.
    pub devices_known: i64,
    pub collections_pending: i64,
    pub ack_imports_pending: i64,
    pub reports_stored: i64,
    pub reports_quarantined: i64,
}

/// What the collector knows and has queued.
#[utoipa::path(tag = "reports", responses((status = 200, body = CollectorStatus)))]
#[get("/collector/status")]
async fn collector_status(
    agg: web::Data<Aggregator>,
) -> Result<web::Json<CollectorStatus>, Problem> {
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let s = store::status(&mut conn).await?;
    Ok(web::Json(CollectorStatus {
        devices_known: s.devices_known,
        collections_pending: s.collections_pending,
        ack_imports_pending: s.ack_imports_pending,
        reports_stored: s.reports_stored,
        reports_quarantined: s.reports_quarantined,
    }))
}
