//! `rum.reports` (reports exactly as received, deduplicated on UDI and report id) and
//! `rum.quarantine` (reports refused, with the reason and the bytes).

use super::schema::rum::{quarantine, reports};
use super::{Page, Scope};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tally_domain::rum::ReportInfo;
use uuid::Uuid;

diesel::define_sql_function!(fn octet_length(x: Bytea) -> Int4);

/// Report ids are u64 on the wire; stored bit-for-bit in a BIGINT.
fn stored_id(info: &ReportInfo) -> i64 {
    info.report_id as i64
}

fn stored_count(info: &ReportInfo) -> i64 {
    i64::try_from(info.count).unwrap_or(i64::MAX)
}

/// New reports as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct NewReports {
    pid: Vec<String>,
    serial: Vec<String>,
    report_id: Vec<i64>,
    device: Vec<Uuid>,
    cycle: Vec<Uuid>,
    tag: Vec<String>,
    version: Vec<String>,
    count: Vec<i64>,
    end_time: Vec<i64>,
    body: Vec<Vec<u8>>,
}

impl NewReports {
    pub fn push(&mut self, device: Uuid, cycle: Uuid, info: &ReportInfo, raw: &str) {
        self.pid.push(info.udi.udi_pid.clone());
        self.serial.push(info.udi.udi_serial_number.clone());
        self.report_id.push(stored_id(info));
        self.device.push(device);
        self.cycle.push(cycle);
        self.tag.push(info.entitlement_tag.clone());
        self.version.push(info.software_version.clone());
        self.count.push(stored_count(info));
        self.end_time.push(info.end_time);
        self.body.push(raw.as_bytes().to_vec());
    }

    pub fn is_empty(&self) -> bool {
        self.pid.is_empty()
    }
}

/// A report's identity: what CSSM deduplicates on.
#[derive(QueryableByName, Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportKey {
    #[diesel(sql_type = Text)]
    pub udi_pid: String,
    #[diesel(sql_type = Text)]
    pub udi_serial: String,
    #[diesel(sql_type = BigInt)]
    pub report_id: i64,
}

impl ReportKey {
    pub fn of(info: &ReportInfo) -> Self {
        Self {
            udi_pid: info.udi.udi_pid.clone(),
            udi_serial: info.udi.udi_serial_number.clone(),
            report_id: stored_id(info),
        }
    }
}

/// Stores the reports not seen before and returns their keys; the others are left as they were.
pub async fn insert_new(
    conn: &mut AsyncPgConnection,
    r: &NewReports,
) -> QueryResult<Vec<ReportKey>> {
    if r.is_empty() {
        return Ok(Vec::new());
    }
    diesel::sql_query(include_str!("sql/insert_reports.sql"))
        .bind::<Array<Text>, _>(&r.pid)
        .bind::<Array<Text>, _>(&r.serial)
        .bind::<Array<BigInt>, _>(&r.report_id)
        .bind::<Array<SqlUuid>, _>(&r.device)
        .bind::<Array<SqlUuid>, _>(&r.cycle)
        .bind::<Array<Text>, _>(&r.tag)
        .bind::<Array<Text>, _>(&r.version)
        .bind::<Array<BigInt>, _>(&r.count)
        .bind::<Array<BigInt>, _>(&r.end_time)
        .bind::<Array<Bytea>, _>(&r.body)
        .load(conn)
        .await
}

#[derive(Insertable)]
#[diesel(table_name = reports)]
struct UploadedReport<'a> {
    udi_pid: &'a str,
    udi_serial: &'a str,
    report_id: i64,
    device_id: Uuid,
    entitlement_tag: &'a str,
    software_version: &'a str,
    usage_count: i64,
    end_time: i64,
    body: &'a [u8],
}

/// Stores one uploaded report (no cycle) of the device; false when it was stored before.
pub async fn insert_uploaded(
    conn: &mut AsyncPgConnection,
    device: Uuid,
    info: &ReportInfo,
    raw: &str,
) -> QueryResult<bool> {
    let row = UploadedReport {
        udi_pid: &info.udi.udi_pid,
        udi_serial: &info.udi.udi_serial_number,
        report_id: stored_id(info),
        device_id: device,
        entitlement_tag: &info.entitlement_tag,
        software_version: &info.software_version,
        usage_count: stored_count(info),
        end_time: info.end_time,
        body: raw.as_bytes(),
    };
    let n = diesel::insert_into(reports::table)
        .values(&row)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// A stored report's metadata.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = reports, check_for_backend(diesel::pg::Pg))]
pub struct ReportRow {
    pub device_id: Uuid,
    pub udi_pid: String,
    pub udi_serial: String,
    pub report_id: i64,
    pub cycle_id: Option<Uuid>,
    pub entitlement_tag: String,
    pub software_version: String,
    pub usage_count: i64,
    pub end_time: i64,
    /// Size of the body in bytes.
    #[diesel(select_expression = octet_length(reports::body))]
    #[diesel(select_expression_type = octet_length<reports::body>)]
    pub bytes: i32,
    pub received_at: DateTime<Utc>,
}

/// Reports in `scope`, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    page: Page,
) -> QueryResult<Vec<ReportRow>> {
    let mut q = reports::table.select(ReportRow::as_select()).into_boxed();
    if let Some(d) = scope.device_id {
        q = q.filter(reports::device_id.eq(d));
    }
    if let Some(c) = scope.cycle_id {
        q = q.filter(reports::cycle_id.eq(c));
    }
    q.order((reports::received_at.desc(), reports::report_id))
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}

/// The exact bytes of one of the device's reports.
pub async fn raw_body(
    conn: &mut AsyncPgConnection,
    device: Uuid,
    report_id: i64,
) -> QueryResult<Option<Vec<u8>>> {
    reports::table
        .filter(reports::device_id.eq(device))
        .filter(reports::report_id.eq(report_id))
        .select(reports::body)
        .first(conn)
        .await
        .optional()
}

/// Refused reports as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct NewQuarantine {
    pub device: Vec<Uuid>,
    pub cycle: Vec<Uuid>,
    pub reason: Vec<String>,
    pub body: Vec<Vec<u8>>,
}

/// Stores the refused reports with their reasons.
pub async fn quarantine(conn: &mut AsyncPgConnection, q: &NewQuarantine) -> QueryResult<usize> {
    if q.device.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(include_str!("sql/insert_quarantine.sql"))
        .bind::<Array<SqlUuid>, _>(&q.device)
        .bind::<Array<SqlUuid>, _>(&q.cycle)
        .bind::<Array<Text>, _>(&q.reason)
        .bind::<Array<Bytea>, _>(&q.body)
        .execute(conn)
        .await
}

/// A refused report.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = quarantine, check_for_backend(diesel::pg::Pg))]
pub struct QuarantineRow {
    pub id: i64,
    pub device_id: Option<Uuid>,
    pub cycle_id: Option<Uuid>,
    pub reason: String,
    pub body: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// Refused reports in `scope`, newest first.
pub async fn list_quarantine(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    page: Page,
) -> QueryResult<Vec<QuarantineRow>> {
    let mut q = quarantine::table
        .select(QuarantineRow::as_select())
        .into_boxed();
    if let Some(d) = scope.device_id {
        q = q.filter(quarantine::device_id.eq(d));
    }
    if let Some(c) = scope.cycle_id {
        q = q.filter(quarantine::cycle_id.eq(c));
    }
    q.order(quarantine::id.desc())
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}
