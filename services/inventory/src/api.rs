//! REST routes under `/api/v1`: devices (CRUD, filters, pagination, bulk import) and sites.

use crate::Inventory;
use crate::model::{Device, DeviceInput, ValidDevice};
use crate::store::{InventoryError, devices, sites};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use serde::{Deserialize, Serialize};
use tally_platform::{FieldError, Page, PageRules, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Most rows one bulk import may carry.
pub const MAX_IMPORT_ROWS: usize = 200_000;
/// Largest bulk import body.
pub const MAX_IMPORT_BYTES: usize = 128 * 1024 * 1024;

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list_devices)
        .service(create_device)
        .service(import_devices)
        .service(get_device)
        .service(replace_device)
        .service(delete_device)
        .service(list_sites)
        .service(create_site);
}

impl From<InventoryError> for Problem {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Duplicate(udi) => Problem::conflict(
                "duplicate-udi",
                format!("a device with UDI {udi} already exists"),
            ),
            other => Problem::internal(other),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    pub site: Option<String>,
    pub model: Option<String>,
    pub smart_account: Option<String>,
    pub virtual_account: Option<String>,
    /// Devices in this group.
    pub group: Option<String>,
    /// Substring of hostname or serial number.
    pub q: Option<String>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<Device>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl DeviceFilter {
    fn filter(&self) -> devices::Filter<'_> {
        devices::Filter {
            site: self.site.as_deref(),
            model: self.model.as_deref(),
            smart_account: self.smart_account.as_deref(),
            virtual_account: self.virtual_account.as_deref(),
            group: self.group.as_deref(),
            q: self.q.as_deref(),
        }
    }
}

/// Devices per page when none is asked for, and the most one page holds.
const DEVICE_PAGES: PageRules = PageRules::new(100, 1000);

/// List devices, filtered and paged.
#[utoipa::path(tag = "inventory", params(DeviceFilter), responses((status = 200, body = DevicePage)))]
#[get("/devices")]
async fn list_devices(
    inv: web::Data<Inventory>,
    f: web::Query<DeviceFilter>,
) -> Result<web::Json<DevicePage>, Problem> {
    // A negative offset reads as 0 on this route (the other list routes name it as invalid);
    // its clients have always been able to send one.
    let Page { limit, offset } = DEVICE_PAGES.page(f.limit, f.offset.map(|o| o.max(0)))?;
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let total = devices::count(&mut conn, &f.filter()).await?;
    let rows = devices::list(&mut conn, &f.filter(), limit, offset).await?;
    Ok(web::Json(DevicePage {
        items: rows.into_iter().map(Device::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// Get one device.
#[utoipa::path(tag = "inventory", responses((status = 200, body = Device), (status = 404, body = Problem)))]
#[get("/devices/{id}")]
async fn get_device(
    inv: web::Data<Inventory>,
    id: web::Path<Uuid>,
) -> Result<web::Json<Device>, Problem> {
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let row = devices::get(&mut conn, *id)
        .await?
        .ok_or_else(|| Problem::not_found("device", *id))?;
    Ok(web::Json(row.into()))
}

/// Add a device. 409 if its UDI is already known.
#[utoipa::path(tag = "inventory", request_body = DeviceInput, responses((status = 201, body = Device), (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post("/devices")]
async fn create_device(
    inv: web::Data<Inventory>,
    body: web::Json<DeviceInput>,
) -> Result<HttpResponse, Problem> {
    let v = body.validate(true).map_err(Problem::validation)?;
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let rows = devices::upsert_all(&mut conn, &inv.secrets, &[v], true).await?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| Problem::internal("insert returned no row"))?;
    Ok(HttpResponse::Created().json(Device::from(row)))
}

/// Replace a device. Omit `password` to keep the stored one.
#[utoipa::path(tag = "inventory", request_body = DeviceInput, responses((status = 200, body = Device), (status = 404, body = Problem), (status = 422, body = Problem)))]
#[put("/devices/{id}")]
async fn replace_device(
    inv: web::Data<Inventory>,
    id: web::Path<Uuid>,
    body: web::Json<DeviceInput>,
) -> Result<web::Json<Device>, Problem> {
    let v = body.validate(false).map_err(Problem::validation)?;
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let row = devices::replace(&mut conn, &inv.secrets, *id, &v)
        .await?
        .ok_or_else(|| Problem::not_found("device", *id))?;
    Ok(web::Json(row.into()))
}

/// Remove a device.
#[utoipa::path(tag = "inventory", responses((status = 204), (status = 404, body = Problem)))]
#[delete("/devices/{id}")]
async fn delete_device(
    inv: web::Data<Inventory>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Problem> {
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    if devices::delete(&mut conn, *id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Problem::not_found("device", *id))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    pub total: usize,
    pub created: usize,
    pub updated: usize,
}

/// Parses a bulk import body: CSV with a header row (same names as the JSON fields) or a JSON
/// array. Every bad row is named; nothing is returned unless every row is good.
pub fn parse_import(content_type: &str, body: &[u8]) -> Result<Vec<ValidDevice>, Problem> {
    let mut errors = Vec::new();
    let mut good = Vec::new();
    let mut push = |row: usize,
                    input: Result<DeviceInput, String>,
                    errors: &mut Vec<FieldError>| {
        match input {
            Err(msg) => errors.push(FieldError {
                field: format!("row {row}"),
                message: msg,
            }),
            Ok(d) => match d.validate(true) {
                Ok(v) => good.push((row, v)),
                Err(es) => errors.extend(es.into_iter().map(|e| FieldError {
                    field: format!("row {row}: {}", e.field),
                    message: e.message,
                })),
            },
        }
    };
    if content_type.starts_with("text/csv") {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(body);
        let mut headers = rdr
            .headers()
            .map_err(|e| Problem::bad_request("invalid-csv", format!("header row: {e}")))?
            .clone();
        // A CSV field holds no list: `groups` is `;`-separated names, taken out of the row
        // before the rest is read as a DeviceInput.
        let groups_col = headers.iter().position(|h| h == "groups");
        if let Some(g) = groups_col {
            headers = without(&headers, g);
        }
        for (i, rec) in rdr.records().enumerate() {
            if i >= MAX_IMPORT_ROWS {
                return Err(Problem::bad_request(
                    "too-many-rows",
                    format!("an import holds at most {MAX_IMPORT_ROWS} rows"),
                ));
            }
            let row = i + 2; // line number: the header is line 1
            let input = rec.map_err(|e| e.to_string()).and_then(|r| {
                let (r, groups) = match groups_col {
                    Some(g) => (without(&r, g), split_groups(r.get(g).unwrap_or(""))),
                    None => (r, Vec::new()),
                };
                let mut d = r
                    .deserialize::<DeviceInput>(Some(&headers))
                    .map_err(|e| e.to_string())?;
                d.groups = groups;
                Ok(d)
            });
            push(row, input, &mut errors);
        }
    } else if content_type.starts_with("application/json") {
        let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
            Problem::bad_request(
                "invalid-json",
                format!("expected a JSON array of devices: {e}"),
            )
        })?;
        if items.len() > MAX_IMPORT_ROWS {
            return Err(Problem::bad_request(
                "too-many-rows",
                format!("an import holds at most {MAX_IMPORT_ROWS} rows"),
            ));
        }
        for (i, item) in items.into_iter().enumerate() {
            push(
                i + 1,
                serde_json::from_value(item).map_err(|e| e.to_string()),
                &mut errors,
            );
        }
    } else {
        return Err(Problem::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send text/csv or application/json",
        ));
    }
    // The same UDI twice in one import is ambiguous.
    let mut seen = std::collections::HashMap::new();
    for (row, v) in &good {
        if let Some(first) = seen.insert(v.udi.clone(), *row) {
            errors.push(FieldError {
                field: format!("row {row}: serial"),
                message: format!("UDI {} is already in row {first}", v.udi),
            });
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| {
            e.field
                .trim_start_matches("row ")
                .split(':')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        });
        let n = errors.len();
        return Err(Problem::validation(errors).with_detail(format!(
            "import refused, nothing was changed: {n} problem(s) found"
        )));
    }
    if good.is_empty() {
        return Err(Problem::bad_request(
            "empty-import",
            "the import holds no rows",
        ));
    }
    Ok(good.into_iter().map(|(_, v)| v).collect())
}

/// The record without field `i`.
fn without(r: &csv::StringRecord, i: usize) -> csv::StringRecord {
    r.iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, f)| f)
        .collect()
}

/// A CSV `groups` field: names separated by `;`, empty for none. Empty names are kept so that
/// validation names them.
fn split_groups(field: &str) -> Vec<String> {
    if field.trim().is_empty() {
        return Vec::new();
    }
    field.split(';').map(|g| g.trim().to_owned()).collect()
}

trait WithDetail {
    fn with_detail(self, d: String) -> Self;
}
impl WithDetail for Problem {
    fn with_detail(mut self, d: String) -> Self {
        self.detail = d;
        self
    }
}

/// Bulk import (all or nothing): CSV (`text/csv`, header row) or JSON array. Devices are matched
/// by UDI: new ones created, known ones updated. In CSV, the optional `groups` column holds group
/// names separated by `;`.
#[utoipa::path(tag = "inventory", request_body(content = Vec<DeviceInput>, description = "JSON array, or CSV with the same column names (`groups`: names separated by `;`)"), responses((status = 200, body = ImportResult), (status = 422, body = Problem)))]
#[post("/devices/import")]
async fn import_devices(
    inv: web::Data<Inventory>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<web::Json<ImportResult>, Problem> {
    let body = tally_platform::problem::read_body(body, MAX_IMPORT_BYTES).await?;
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let devices = parse_import(&ct, &body)?;
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let rows = devices::upsert_all(&mut conn, &inv.secrets, &devices, false).await?;
    let created = rows.iter().filter(|r| r.revision == 1).count();
    Ok(web::Json(ImportResult {
        total: rows.len(),
        created,
        updated: rows.len() - created,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub name: String,
    pub description: String,
    pub devices: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SiteInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// List sites with their device counts.
#[utoipa::path(tag = "inventory", responses((status = 200, body = Vec<Site>)))]
#[get("/sites")]
async fn list_sites(inv: web::Data<Inventory>) -> Result<web::Json<Vec<Site>>, Problem> {
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    let rows = sites::list(&mut conn).await?;
    Ok(web::Json(
        rows.into_iter()
            .map(|r| Site {
                name: r.name,
                description: r.description,
                devices: r.devices,
            })
            .collect(),
    ))
}

/// Create (or describe) a site.
#[utoipa::path(tag = "inventory", request_body = SiteInput, responses((status = 201, body = Site), (status = 422, body = Problem)))]
#[post("/sites")]
async fn create_site(
    inv: web::Data<Inventory>,
    body: web::Json<SiteInput>,
) -> Result<HttpResponse, Problem> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(Problem::validation(vec![FieldError {
            field: "name".into(),
            message: "must be 1 to 255 characters".into(),
        }]));
    }
    let mut conn = tally_platform::problem::conn(&inv.pool).await?;
    sites::upsert(&mut conn, name, &body.description).await?;
    Ok(HttpResponse::Created().json(Site {
        name: name.to_owned(),
        description: body.description.clone(),
        devices: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "udi_pid,serial,hostname,base_url,smart_account,virtual_account,username,password,dna_tier\n";

    #[test]
    fn csv_import_names_every_bad_row() {
        let body = format!(
            "{HEADER}C9300-48P,FCW1,sw1,https://10.0.0.1,acme,Campus,admin,pw,dna-advantage\n\
             C9300-48P,,sw2,https://10.0.0.2,acme,Campus,admin,pw,\n\
             C9300-48P,FCW3,sw3,not a url,acme,Campus,admin,pw,dna-gold\n\
             C9300-48P,FCW1,sw4,https://10.0.0.4,acme,Campus,admin,pw,\n"
        );
        let p = parse_import("text/csv", body.as_bytes()).unwrap_err();
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "row 3: serial",
                "row 4: base_url",
                "row 4: dna_tier",
                "row 5: serial"
            ],
            "{:?}",
            p.errors
        );
        assert_eq!(p.status, 422);
    }

    #[test]
    fn csv_groups_column_is_optional_and_split_on_semicolons() {
        let body = "udi_pid,serial,groups,hostname,base_url,smart_account,virtual_account,username,password\n\
                    C9300-48P,A1,access; wan,sw1,https://10.0.0.1,acme,Campus,admin,pw\n\
                    C9300-48P,A2,,sw2,https://10.0.0.2,acme,Campus,admin,pw\n";
        let got = parse_import("text/csv", body.as_bytes()).unwrap();
        assert_eq!(got[0].groups, ["access", "wan"]);
        assert!(got[1].groups.is_empty());
        assert_eq!(got[1].hostname, "sw2", "columns after groups still line up");

        let bad = "udi_pid,serial,hostname,base_url,smart_account,virtual_account,username,password,groups\n\
                   C9300-48P,A1,sw1,https://10.0.0.1,acme,Campus,admin,pw,access;;wan/1\n";
        let p = parse_import("text/csv", bad.as_bytes()).unwrap_err();
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["row 2: groups[1]", "row 2: groups[2]"],
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn csv_unknown_columns_are_refused_by_name() {
        // The fleet simulator's CSV: its own `index` column is not a device field (as before
        // groups existed); without it the file imports.
        let sim = "hostname,udi_pid,serial,model,software_version,base_url,site,smart_account,virtual_account,network_license,dna_tier,is_cube,username,password\n\
                   sw0,C9300-48P,FCW0,C9300-48P,17.9.4a,http://127.0.0.1:1/d/0,hq,acme,Campus,network-advantage,,false,admin,cisco-sim\n";
        assert_eq!(parse_import("text/csv", sim.as_bytes()).unwrap().len(), 1);
        let with_index = format!("index,{}", sim.replacen('\n', "\n0,", 1));
        let p = parse_import("text/csv", with_index.as_bytes()).unwrap_err();
        assert_eq!(p.errors[0].field, "row 2");
        assert!(p.errors[0].message.contains("index"), "{:?}", p.errors);
    }

    #[test]
    fn json_import_and_unknown_columns() {
        let ok = r#"[{"udi_pid":"C9200-24P","serial":"A1","hostname":"h","base_url":"http://x","smart_account":"s","virtual_account":"v","username":"u","password":"p"}]"#;
        assert_eq!(
            parse_import("application/json", ok.as_bytes())
                .unwrap()
                .len(),
            1
        );
        let bad = r#"[{"udi_pid":"C9200-24P","serial":"A1","hostname":"h","base_url":"http://x","smart_account":"s","virtual_account":"v","username":"u","password":"p","colour":"red"}]"#;
        let p = parse_import("application/json", bad.as_bytes()).unwrap_err();
        assert_eq!(p.errors[0].field, "row 1");
        assert!(p.errors[0].message.contains("colour"));
        assert_eq!(
            parse_import("application/xml", b"").unwrap_err().status,
            415
        );
        assert_eq!(
            parse_import("text/csv", HEADER.as_bytes())
                .unwrap_err()
                .code,
            "empty-import"
        );
    }
}
