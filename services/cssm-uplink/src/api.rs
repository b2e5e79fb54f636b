//! REST routes under `/api/v1/uplink`: batches, status, offline export and ACK bundle import.

use crate::store::{self, BatchMode, BatchState};
use crate::{Mode, Uplink, offline};
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_platform::{PageRules, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

mod accounts;
pub use accounts::{
    AccountDirectory, AccountEntry, AccountIdsSet, AccountsRefreshed, SetAccountIds, UnresolvedPair,
};

/// Largest ACK bundle accepted.
pub const MAX_ACK_BUNDLE_BYTES: usize = 512 * 1024 * 1024;

/// Batches per page: 100 unless asked, at most 1000.
const BATCH_PAGES: PageRules = PageRules::new(100, 1000);

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_batches)
        .service(status)
        .service(export_bundle)
        .service(import_ack_bundle)
        .service(requeue_exported)
        .service(retry_batch);
    cfg.service(list_exports)
        .service(download_export)
        .service(requeue_export);
    accounts::routes(cfg);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchFilter {
    /// `new`, `polling`, `complete`, `failed`, `exported`.
    pub state: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    pub id: Uuid,
    #[schema(value_type = String)]
    pub mode: BatchMode,
    pub smart_account: String,
    pub virtual_account: String,
    #[schema(value_type = String)]
    pub state: BatchState,
    pub poll_id: Option<String>,
    pub attempts: i32,
    pub error: Option<String>,
    pub reports: i32,
    pub devices: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::batches::BatchRow> for Batch {
    fn from(r: store::batches::BatchRow) -> Self {
        Self {
            id: r.id,
            mode: r.mode,
            smart_account: r.smart_account,
            virtual_account: r.virtual_account,
            state: r.state,
            poll_id: r.poll_id,
            attempts: r.attempts,
            error: r.error,
            reports: r.reports,
            devices: r.devices,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Upload batches, newest first.
#[utoipa::path(tag = "uplink", params(BatchFilter), responses((status = 200, body = Vec<Batch>)))]
#[get("/uplink/batches")]
async fn list_batches(
    up: web::Data<Uplink>,
    f: web::Query<BatchFilter>,
) -> Result<web::Json<Vec<Batch>>, Problem> {
    let page = BATCH_PAGES.page(f.limit, f.offset)?;
    // A state no batch can be in matches no batch.
    let Ok(state) = f.state.as_deref().map(str::parse::<BatchState>).transpose() else {
        return Ok(web::Json(Vec::new()));
    };
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let rows = store::batches::list(&mut conn, state, page).await?;
    Ok(web::Json(rows.into_iter().map(Batch::from).collect()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetriedBatch {
    pub id: Uuid,
    /// Reports put back in line; they go to CSSM in the next batch formed.
    pub reports: usize,
}

/// Put the reports of a batch CSSM refused for good (a 4xx, or FAILED for a reason other than a
/// duplicate) back in line, once the cause is fixed. 409 for a batch that is not such a failure
/// or was retried already.
#[utoipa::path(tag = "uplink", params(("id" = Uuid, Path, description = "batch id")), responses((status = 200, body = RetriedBatch), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/uplink/batches/{id}/retry")]
async fn retry_batch(
    up: web::Data<Uplink>,
    id: web::Path<Uuid>,
) -> Result<web::Json<RetriedBatch>, Problem> {
    let id = id.into_inner();
    match crate::batch::retry(&up, id).await? {
        crate::batch::Retry::Requeued { reports } => Ok(web::Json(RetriedBatch { id, reports })),
        crate::batch::Retry::NotFound => Err(Problem::not_found("batch", id)),
        crate::batch::Retry::NotRetryable(why) => Err(Problem::conflict("not-retryable", why)),
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportCounts {
    pub pending: i64,
    pub batched: i64,
    pub exported: i64,
    pub acked: i64,
    pub failed: i64,
}

impl From<store::reports::Counts> for ReportCounts {
    fn from(c: store::reports::Counts) -> Self {
        Self {
            pending: c.pending,
            batched: c.batched,
            exported: c.exported,
            acked: c.acked,
            failed: c.failed,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UplinkStatus {
    pub mode: Mode,
    pub reports: ReportCounts,
}

/// Mode and report counts by state.
#[utoipa::path(tag = "uplink", responses((status = 200, body = UplinkStatus)))]
#[get("/uplink/status")]
async fn status(up: web::Data<Uplink>) -> Result<web::Json<UplinkStatus>, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let reports = store::reports::counts(&mut conn).await?.into();
    Ok(web::Json(UplinkStatus {
        mode: up.cfg.mode,
        reports,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Required when several smart accounts have pending reports.
    pub smart_account: Option<String>,
}

/// Export every pending report as a `UD_SA_<ts>.tar.gz` bundle to upload to CSSM by hand. The
/// reports are marked exported in the same transaction, so no report goes in two bundles.
#[utoipa::path(tag = "uplink", params(ExportQuery), responses((status = 200, content_type = "application/gzip", body = Vec<u8>), (status = 409, body = Problem)))]
#[post("/uplink/offline/export")]
async fn export_bundle(
    up: web::Data<Uplink>,
    q: web::Query<ExportQuery>,
) -> Result<HttpResponse, Problem> {
    let e = offline::export(&up, q.smart_account.as_deref()).await?;
    let mut resp = HttpResponse::Ok();
    if e.names_without_ids.is_empty() {
        resp.insert_header(("x-tally-account-ids", "ids"));
    } else {
        // Said plainly: CSSM addresses accounts by id, and these had none.
        resp.insert_header(("x-tally-account-ids", "names"));
        resp.insert_header((
            "warning",
            format!(
                "299 tally \"the manifest carries names, not CSSM ids, for {}: give the ids with PUT /api/v1/uplink/accounts\"",
                e.names_without_ids
                    .join(", ")
                    .chars()
                    // A header holds visible ASCII only; the full names are in the export list.
                    .map(|c| if c == '"' { '\'' } else if (' '..='~').contains(&c) { c } else { '?' })
                    .collect::<String>()
            ),
        ));
    }
    Ok(resp
        .content_type("application/gzip")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}\"", e.file_name),
        ))
        .insert_header(("x-tally-export-id", e.id.to_string()))
        .insert_header(("x-tally-reports", e.reports.to_string()))
        .insert_header(("x-tally-devices", e.devices.to_string()))
        .body(e.bytes))
}

/// Upload the ACK bundle CSSM returned for an exported usage bundle. Each file is routed by the
/// device id in its name (else a UDI in it); matching files are imported, the others named in
/// `outcomes` with why (unknown device, already imported, unreadable).
#[utoipa::path(tag = "uplink", request_body(content = Vec<u8>, content_type = "application/gzip"), responses((status = 200, body = offline::AckImportResult), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[post("/uplink/offline/acks")]
async fn import_ack_bundle(
    up: web::Data<Uplink>,
    body: web::Payload,
) -> Result<web::Json<offline::AckImportResult>, Problem> {
    let bytes = tally_platform::problem::read_body(body, MAX_ACK_BUNDLE_BYTES).await?;
    Ok(web::Json(offline::import_acks(&up, &bytes).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Requeued {
    pub reports: usize,
}

/// Put the exported reports of every export whose ACK bundle never came back in line again (to
/// requeue one export, see `/uplink/offline/exports/{id}/requeue`).
#[utoipa::path(tag = "uplink", responses((status = 200, body = Requeued)))]
#[post("/uplink/offline/requeue")]
async fn requeue_exported(up: web::Data<Uplink>) -> Result<web::Json<Requeued>, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let n = store::reports::requeue_exported(&mut conn).await?;
    store::batches::fail_exported(&mut conn).await?;
    store::exports::delete_all(&mut conn).await?;
    Ok(web::Json(Requeued { reports: n }))
}

/// An offline export kept until its ACKs are in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OfflineExport {
    pub id: Uuid,
    /// The bundle's file name (`UD_SA_<ts>.tar.gz`).
    pub file_name: String,
    pub smart_account: String,
    pub reports: i32,
    pub devices: i32,
    /// Reports of this export still waiting for their ACK.
    pub reports_waiting: i64,
    pub created_at: DateTime<Utc>,
    /// Pairs whose manifest entries carry names because the directory had no ids for them.
    pub names_without_ids: Vec<String>,
}

/// Offline exports whose ACKs are not all in, newest first; each can be downloaded again.
#[utoipa::path(tag = "uplink", responses((status = 200, body = Vec<OfflineExport>)))]
#[get("/uplink/offline/exports")]
async fn list_exports(up: web::Data<Uplink>) -> Result<web::Json<Vec<OfflineExport>>, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let rows = store::exports::list(&mut conn).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let waiting: std::collections::HashMap<Uuid, i64> = store::exports::waiting(&mut conn, &ids)
        .await?
        .into_iter()
        .collect();
    Ok(web::Json(
        rows.into_iter()
            .map(|r| OfflineExport {
                reports_waiting: waiting.get(&r.id).copied().unwrap_or(0),
                id: r.id,
                file_name: r.file_name,
                smart_account: r.smart_account,
                reports: r.reports,
                devices: r.devices,
                created_at: r.created_at,
                names_without_ids: r.names_without_ids.into_iter().flatten().collect(),
            })
            .collect(),
    ))
}

/// Download a kept export again, byte for byte as first exported (a lost download).
#[utoipa::path(tag = "uplink", params(("id" = Uuid, Path)), responses((status = 200, content_type = "application/gzip", body = Vec<u8>), (status = 404, body = Problem)))]
#[get("/uplink/offline/exports/{id}")]
async fn download_export(
    up: web::Data<Uplink>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    let id = id.into_inner();
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let (file_name, bytes) = store::exports::bundle(&mut conn, id)
        .await?
        .ok_or_else(|| Problem::not_found("export", id))?;
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{file_name}\""),
        ))
        .body(bytes))
}

/// Put the reports of one export whose ACK bundle never came back in line again; other exports
/// keep waiting.
#[utoipa::path(tag = "uplink", params(("id" = Uuid, Path)), responses((status = 200, body = Requeued), (status = 404, body = Problem)))]
#[post("/uplink/offline/exports/{id}/requeue")]
async fn requeue_export(
    up: web::Data<Uplink>,
    id: web::Path<Uuid>,
) -> Result<web::Json<Requeued>, Problem> {
    let n = offline::requeue_export(&up, id.into_inner()).await?;
    Ok(web::Json(Requeued { reports: n }))
}
