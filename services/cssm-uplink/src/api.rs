//! REST routes under `/api/v1/uplink`: batches, status, offline export and ACK bundle import.

use crate::{Mode, Uplink, offline};
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use tally_platform::{FieldError, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Largest ACK bundle accepted.
pub const MAX_ACK_BUNDLE_BYTES: usize = 512 * 1024 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_batches)
        .service(status)
        .service(export_bundle)
        .service(import_ack_bundle)
        .service(requeue_exported);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchFilter {
    /// `new`, `polling`, `complete`, `failed`, `exported`.
    pub state: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Batch {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub mode: String,
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub poll_id: Option<String>,
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Int4)]
    pub reports: i32,
    #[diesel(sql_type = Int4)]
    pub devices: i32,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// Upload batches, newest first.
#[utoipa::path(tag = "uplink", params(BatchFilter), responses((status = 200, body = Vec<Batch>)))]
#[get("/uplink/batches")]
async fn list_batches(
    up: web::Data<Uplink>,
    f: web::Query<BatchFilter>,
) -> Result<web::Json<Vec<Batch>>, Problem> {
    let limit = f.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(vec![FieldError {
            field: "limit".into(),
            message: "must be between 1 and 1000".into(),
        }]));
    }
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let rows = diesel::sql_query(
        "SELECT id, mode, smart_account, virtual_account, state, poll_id, attempts, error, reports, devices, \
         created_at, updated_at FROM uplink.batches WHERE ($1::text IS NULL OR state = $1) \
         ORDER BY created_at DESC LIMIT $2 OFFSET $3",
    )
    .bind::<Nullable<Text>, _>(f.state.clone())
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(f.offset.unwrap_or(0).max(0))
    .load(&mut conn)
    .await?;
    Ok(web::Json(rows))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct ReportCounts {
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub batched: i64,
    #[diesel(sql_type = BigInt)]
    pub exported: i64,
    #[diesel(sql_type = BigInt)]
    pub acked: i64,
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
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
    let rows: Vec<ReportCounts> = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
         count(*) FILTER (WHERE state = 'batched') AS batched, \
         count(*) FILTER (WHERE state = 'exported') AS exported, \
         count(*) FILTER (WHERE state = 'acked') AS acked, \
         count(*) FILTER (WHERE state = 'failed') AS failed FROM uplink.reports",
    )
    .load(&mut conn)
    .await?;
    let reports = rows
        .into_iter()
        .next()
        .ok_or_else(|| Problem::internal("status query returned no row"))?;
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
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{}\"", e.file_name),
        ))
        .insert_header(("x-tally-reports", e.reports.to_string()))
        .insert_header(("x-tally-devices", e.devices.to_string()))
        .body(e.bytes))
}

/// Upload the ACK bundle CSSM returned for an exported usage bundle.
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

/// Put exported reports whose ACK bundle never came back in line again (a lost bundle file).
#[utoipa::path(tag = "uplink", responses((status = 200, body = Requeued)))]
#[post("/uplink/offline/requeue")]
async fn requeue_exported(up: web::Data<Uplink>) -> Result<web::Json<Requeued>, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let n = diesel::sql_query(
        "UPDATE uplink.reports SET state = 'pending', batch_id = NULL WHERE state = 'exported'",
    )
    .execute(&mut conn)
    .await?;
    diesel::sql_query(
        "UPDATE uplink.batches SET state = 'failed', error = 'requeued by operator' WHERE state = 'exported'",
    )
    .execute(&mut conn)
    .await?;
    Ok(web::Json(Requeued { reports: n }))
}
