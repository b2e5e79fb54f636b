//! REST routes under `/api/v1/cycles`: start a cycle, follow its stages, list failures.

use crate::Scheduler;
use crate::cycles::{self, StartError};
use crate::store::cycles::{self as store, CycleRow};
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_platform::{PageRules, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use crate::store::cycles::Failure;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(start_cycle)
        .service(list_cycles)
        .service(get_cycle)
        .service(cycle_failures);
    crate::alerts_api::routes(cfg);
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionStage {
    /// Devices queued for collection (known once collection started).
    pub devices: i32,
    pub started: bool,
    pub devices_ok: i32,
    pub devices_failed: i32,
    pub reports_stored: i32,
    pub reports_quarantined: i32,
    /// Reports collected again that were already stored (not sent twice).
    pub reports_duplicate: i32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadStage {
    pub batches: i32,
    pub reports_uploaded: i32,
    pub reports_failed: i32,
    pub devices_failed: i32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AckStage {
    /// Devices with new reports: each should end up holding an ACK.
    pub devices_expected: i32,
    pub devices_imported: i32,
    pub devices_failed: i32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cycle {
    pub id: Uuid,
    /// `api`, `schedule`...
    pub trigger: String,
    /// `running`, `complete`, `complete_with_errors`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub collection: CollectionStage,
    pub upload: UploadStage,
    pub ack: AckStage,
}

impl From<CycleRow> for Cycle {
    fn from(r: CycleRow) -> Self {
        Self {
            id: r.id,
            trigger: r.trigger,
            state: r.state.as_str().to_owned(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            collection: CollectionStage {
                devices: r.devices,
                started: r.collection_started,
                devices_ok: r.devices_ok,
                devices_failed: r.devices_failed,
                reports_stored: r.reports_stored,
                reports_quarantined: r.reports_quarantined,
                reports_duplicate: r.reports_duplicate,
            },
            upload: UploadStage {
                batches: r.batches,
                reports_uploaded: r.reports_uploaded,
                reports_failed: r.reports_upload_failed,
                devices_failed: r.devices_upload_failed,
            },
            ack: AckStage {
                devices_expected: r.devices_with_reports,
                devices_imported: r.acks_imported,
                devices_failed: r.acks_failed,
            },
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub id: Uuid,
}

/// Start a license cycle now: collect from every device, upload, hand out ACKs.
#[utoipa::path(tag = "cycles", responses((status = 202, body = Started), (status = 409, body = Problem)))]
#[post("/cycles")]
async fn start_cycle(s: web::Data<Scheduler>) -> Result<HttpResponse, Problem> {
    match cycles::start(&s, "api", None).await {
        Ok(Some(id)) => Ok(HttpResponse::Accepted()
            .insert_header(("location", format!("/api/v1/cycles/{id}")))
            .json(Started { id })),
        Ok(None) => Err(Problem::internal("cycle insert did nothing")),
        Err(StartError::Running(id)) => Err(Problem::conflict(
            "cycle-running",
            format!("cycle {id} is still running; wait for it or follow /api/v1/cycles/{id}"),
        )),
        Err(StartError::Db(e)) => Err(e.into()),
        Err(StartError::Store(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

const CYCLE_PAGES: PageRules = PageRules::new(50, 500);

/// Cycles, newest first.
#[utoipa::path(tag = "cycles", params(Page), responses((status = 200, body = Vec<Cycle>)))]
#[get("/cycles")]
async fn list_cycles(
    s: web::Data<Scheduler>,
    p: web::Query<Page>,
) -> Result<web::Json<Vec<Cycle>>, Problem> {
    let page = CYCLE_PAGES.page(p.limit, p.offset)?;
    let mut conn = tally_platform::problem::conn(&s.pool).await?;
    let rows = store::list(&mut conn, page.limit, page.offset).await?;
    Ok(web::Json(rows.into_iter().map(Cycle::from).collect()))
}

/// One cycle with its counts per stage.
#[utoipa::path(tag = "cycles", responses((status = 200, body = Cycle), (status = 404, body = Problem)))]
#[get("/cycles/{id}")]
async fn get_cycle(
    s: web::Data<Scheduler>,
    id: web::Path<Uuid>,
) -> Result<web::Json<Cycle>, Problem> {
    let mut conn = tally_platform::problem::conn(&s.pool).await?;
    store::get(&mut conn, *id)
        .await?
        .map(|r| web::Json(r.into()))
        .ok_or_else(|| Problem::not_found("cycle", *id))
}

/// Devices that failed a stage of the cycle, with the reason.
#[utoipa::path(tag = "cycles", params(Page), responses((status = 200, body = Vec<Failure>)))]
#[get("/cycles/{id}/failures")]
async fn cycle_failures(
    s: web::Data<Scheduler>,
    id: web::Path<Uuid>,
    p: web::Query<Page>,
) -> Result<web::Json<Vec<Failure>>, Problem> {
    let mut conn = tally_platform::problem::conn(&s.pool).await?;
    let rows = store::failures(
        &mut conn,
        *id,
        p.limit.unwrap_or(100).clamp(1, 1000),
        p.offset.unwrap_or(0).max(0),
    )
    .await?;
    Ok(web::Json(rows))
}
