//! REST routes under `/api/v1`: stored reports (metadata and exact bytes), manual upload of report
//! files, quarantine, per-device collection and ACK outcomes, collector status.

use crate::Aggregator;
use crate::collect::check_reports;
use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
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
    fn page(&self) -> Result<(i64, i64), Problem> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Problem::validation(vec![FieldError {
                field: "limit".into(),
                message: "must be between 1 and 1000".into(),
            }]));
        }
        Ok((limit, self.offset.unwrap_or(0).max(0)))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct ReportMeta {
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    #[diesel(sql_type = Text)]
    pub udi_pid: String,
    #[diesel(sql_type = Text)]
    pub udi_serial: String,
    #[diesel(sql_type = BigInt)]
    pub report_id: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub cycle_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub entitlement_tag: String,
    #[diesel(sql_type = Text)]
    pub software_version: String,
    #[diesel(sql_type = BigInt)]
    pub usage_count: i64,
    #[diesel(sql_type = BigInt)]
    pub end_time: i64,
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
}

/// Reports stored, newest first.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<ReportMeta>)))]
#[get("/reports")]
async fn list_reports(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<ReportMeta>>, Problem> {
    let (limit, offset) = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = diesel::sql_query(
        "SELECT device_id, udi_pid, udi_serial, report_id, cycle_id, entitlement_tag, software_version, \
         usage_count, end_time, octet_length(body)::int8 AS bytes, received_at FROM rum.reports \
         WHERE ($1::uuid IS NULL OR device_id = $1) AND ($2::uuid IS NULL OR cycle_id = $2) \
         ORDER BY received_at DESC, report_id LIMIT $3 OFFSET $4",
    )
    .bind::<Nullable<SqlUuid>, _>(f.device_id)
    .bind::<Nullable<SqlUuid>, _>(f.cycle_id)
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(&mut conn)
    .await?;
    Ok(web::Json(rows))
}

#[derive(QueryableByName)]
struct Body {
    #[diesel(sql_type = Bytea)]
    body: Vec<u8>,
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
    let rows: Vec<Body> =
        diesel::sql_query("SELECT body FROM rum.reports WHERE device_id = $1 AND report_id = $2")
            .bind::<SqlUuid, _>(device)
            .bind::<BigInt, _>(report)
            .load(&mut conn)
            .await?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| Problem::not_found("report", format!("{report} of device {device}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(row.body))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadResult {
    pub reports: usize,
    pub accepted: usize,
    pub duplicates: usize,
}

#[derive(QueryableByName)]
struct KnownDevice {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    udi_pid: String,
    #[diesel(sql_type = Text)]
    udi_serial: String,
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
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
    let known: Vec<KnownDevice> = diesel::sql_query(
        "SELECT id, udi_pid, udi_serial, smart_account, virtual_account FROM rum.devices \
         WHERE NOT deleted AND (udi_pid || ':' || udi_serial) = ANY($1)",
    )
    .bind::<Array<Text>, _>(
        udis.iter()
            .map(|u| format!("{}:{}", u.udi_pid, u.udi_serial_number))
            .collect::<Vec<_>>(),
    )
    .load(&mut conn)
    .await?;
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
                let n = diesel::sql_query(
                    "INSERT INTO rum.reports (udi_pid, udi_serial, report_id, device_id, entitlement_tag, \
                     software_version, usage_count, end_time, body) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) \
                     ON CONFLICT DO NOTHING",
                )
                .bind::<Text, _>(&k.udi_pid)
                .bind::<Text, _>(&k.udi_serial)
                .bind::<BigInt, _>(a.info.report_id as i64)
                .bind::<SqlUuid, _>(k.id)
                .bind::<Text, _>(&a.info.entitlement_tag)
                .bind::<Text, _>(&a.info.software_version)
                .bind::<BigInt, _>(i64::try_from(a.info.count).unwrap_or(i64::MAX))
                .bind::<BigInt, _>(a.info.end_time)
                .bind::<Bytea, _>(a.raw.as_bytes())
                .execute(c)
                .await?;
                if n == 1 {
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

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Quarantined {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub device_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub cycle_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// The rejected bytes as text (lossy if not UTF-8).
    #[diesel(sql_type = Bytea, deserialize_as = LossyText)]
    pub body: String,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
}

/// Bytes shown as text; quarantined bodies need not be UTF-8.
struct LossyText(String);

impl From<LossyText> for String {
    fn from(t: LossyText) -> Self {
        t.0
    }
}

impl diesel::deserialize::FromSql<Bytea, diesel::pg::Pg> for LossyText {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        Ok(Self(String::from_utf8_lossy(bytes.as_bytes()).into_owned()))
    }
}

impl diesel::deserialize::Queryable<Bytea, diesel::pg::Pg> for LossyText {
    type Row = Self;
    fn build(row: Self) -> diesel::deserialize::Result<Self> {
        Ok(row)
    }
}

/// Reports refused as malformed, with the reason and the bytes received.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<Quarantined>)))]
#[get("/quarantine")]
async fn list_quarantine(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<Quarantined>>, Problem> {
    let (limit, offset) = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = diesel::sql_query(
        "SELECT id, device_id, cycle_id, reason, body, received_at \
         FROM rum.quarantine WHERE ($1::uuid IS NULL OR device_id = $1) AND ($2::uuid IS NULL OR cycle_id = $2) \
         ORDER BY id DESC LIMIT $3 OFFSET $4",
    )
    .bind::<Nullable<SqlUuid>, _>(f.device_id)
    .bind::<Nullable<SqlUuid>, _>(f.cycle_id)
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(&mut conn)
    .await?;
    Ok(web::Json(rows))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct Collection {
    #[diesel(sql_type = SqlUuid)]
    pub cycle_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub reports_new: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Per-device collection outcome in each cycle.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<Collection>)))]
#[get("/collections")]
async fn list_collections(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<Collection>>, Problem> {
    let (limit, offset) = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = diesel::sql_query(
        "SELECT cycle_id, device_id, state, error, reports_new, finished_at FROM rum.collections \
         WHERE ($1::uuid IS NULL OR device_id = $1) AND ($2::uuid IS NULL OR cycle_id = $2) \
         AND ($3::text IS NULL OR state = $3) ORDER BY cycle_id, device_id LIMIT $4 OFFSET $5",
    )
    .bind::<Nullable<SqlUuid>, _>(f.device_id)
    .bind::<Nullable<SqlUuid>, _>(f.cycle_id)
    .bind::<Nullable<Text>, _>(f.state.clone())
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(&mut conn)
    .await?;
    Ok(web::Json(rows))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct AckImport {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub cycle_id: Option<Uuid>,
    #[diesel(sql_type = Array<BigInt>)]
    pub report_ids: Vec<i64>,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub attempts: i32,
    /// The ACK document, for devices that must be given it by hand.
    #[diesel(sql_type = Text)]
    pub ack: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// ACKs handed (or to hand) to devices, with each outcome.
#[utoipa::path(tag = "reports", params(Filter), responses((status = 200, body = Vec<AckImport>)))]
#[get("/ack-imports")]
async fn list_ack_imports(
    agg: web::Data<Aggregator>,
    f: web::Query<Filter>,
) -> Result<web::Json<Vec<AckImport>>, Problem> {
    let (limit, offset) = f.page()?;
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows = diesel::sql_query(
        "SELECT id, device_id, cycle_id, report_ids, state, error, attempts, ack, finished_at FROM rum.ack_imports \
         WHERE ($1::uuid IS NULL OR device_id = $1) AND ($2::uuid IS NULL OR cycle_id = $2) \
         AND ($3::text IS NULL OR state = $3) ORDER BY created_at DESC LIMIT $4 OFFSET $5",
    )
    .bind::<Nullable<SqlUuid>, _>(f.device_id)
    .bind::<Nullable<SqlUuid>, _>(f.cycle_id)
    .bind::<Nullable<Text>, _>(f.state.clone())
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(&mut conn)
    .await?;
    Ok(web::Json(rows))
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
    let n = diesel::sql_query(
        "UPDATE rum.ack_imports SET state = 'pending' WHERE state = 'failed' \
         AND ($1::uuid IS NULL OR cycle_id = $1)",
    )
    .bind::<Nullable<SqlUuid>, _>(body.cycle_id)
    .execute(&mut conn)
    .await?;
    Ok(web::Json(RetryResult { requeued: n }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema, QueryableByName)]
pub struct CollectorStatus {
    /// Devices the collector knows from inventory's events.
    #[diesel(sql_type = BigInt)]
    pub devices_known: i64,
    #[diesel(sql_type = BigInt)]
    pub collections_pending: i64,
    #[diesel(sql_type = BigInt)]
    pub ack_imports_pending: i64,
    #[diesel(sql_type = BigInt)]
    pub reports_stored: i64,
    #[diesel(sql_type = BigInt)]
    pub reports_quarantined: i64,
}

/// What the collector knows and has queued.
#[utoipa::path(tag = "reports", responses((status = 200, body = CollectorStatus)))]
#[get("/collector/status")]
async fn collector_status(
    agg: web::Data<Aggregator>,
) -> Result<web::Json<CollectorStatus>, Problem> {
    let mut conn = tally_platform::problem::conn(&agg.pool).await?;
    let rows: Vec<CollectorStatus> = diesel::sql_query(
        "SELECT (SELECT count(*) FROM rum.devices WHERE NOT deleted) AS devices_known, \
         (SELECT count(*) FROM rum.collections WHERE state = 'pending') AS collections_pending, \
         (SELECT count(*) FROM rum.ack_imports WHERE state = 'pending') AS ack_imports_pending, \
         (SELECT count(*) FROM rum.reports) AS reports_stored, \
         (SELECT count(*) FROM rum.quarantine) AS reports_quarantined",
    )
    .load(&mut conn)
    .await?;
    rows.into_iter()
        .next()
        .map(web::Json)
        .ok_or_else(|| Problem::internal("status query returned no row"))
}
