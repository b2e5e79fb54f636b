//! The device license calls: count, the paged summary and one device's details, from the
//! scheduler's fleet copy in Catalyst Center's vocabulary (`store::catalyst::CatalystDevice`).

use crate::Catalyst;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tally_platform::{Problem, catalyst_token::CatalystCaller};
use tally_renewal_scheduler::store::catalyst::{
    self as store, CatalystDevice, DeviceFilter, SortBy,
};
use utoipa::IntoParams;
use uuid::Uuid;

pub const MAX_PAGE: i64 = 500;

/// Device filters, in Catalyst Center's words; empty values match any.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filters {
    /// `Routers`, `Switches and Hubs` or `Wireless Controller` (any case).
    device_type: Option<String>,
    /// `Registered` or `Unregistered`.
    registration_status: Option<String>,
    /// `Essentials`, `Advantage`, `Premier` or `NA`.
    dna_level: Option<String>,
    virtual_account_name: Option<String>,
    /// The smart account's name (it is also its id).
    smart_account_id: Option<String>,
    device_uuid: Option<String>,
}

pub(crate) fn bad(param: &str, msg: impl std::fmt::Display) -> Problem {
    Problem::bad_request("invalid-query", format!("{param}: {msg}"))
}

impl Filters {
    fn bind(self) -> Result<DeviceFilter, Problem> {
        let some = |v: Option<String>| v.filter(|s| !s.is_empty());
        let device_id = match some(self.device_uuid) {
            Some(v) => Some(Uuid::parse_str(&v).map_err(|e| bad("device_uuid", e))?),
            None => None,
        };
        Ok(DeviceFilter {
            device_type: some(self.device_type),
            registration_status: some(self.registration_status),
            dna_level: some(self.dna_level),
            virtual_account: some(self.virtual_account_name),
            smart_account: some(self.smart_account_id),
            device_id,
        })
    }
}

/// Number of devices matching the filters: `{"response": n, "version": "1.0"}`.
#[utoipa::path(
    tag = "catalyst",
    params(Filters),
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"response\": <count>, \"version\": \"1.0\"}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/licenses/device/count")]
pub(crate) async fn device_count(
    s: web::Data<Catalyst>,
    q: web::Query<Filters>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let f = q.into_inner().bind()?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let n = store::count_devices(&mut c, &f).await?;
    Ok(HttpResponse::Ok().json(json!({"response": n, "version": "1.0"})))
}

/// The host of a device's API address, which is what Catalyst Center shows as its IP address.
pub fn host_of(base_url: &str) -> &str {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn network_level(net: &str) -> &'static str {
    match net {
        "network-advantage" => "Advantage",
        "network-essentials" => "Essentials",
        _ => "NA",
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn summary(d: &CatalystDevice) -> Value {
    let tag = |i: usize| d.groups.get(i).cloned().unwrap_or_default();
    json!({
        "device_uuid": d.id.to_string(),
        "device_name": d.hostname,
        "device_type": d.device_type,
        "model": d.model,
        "ip_address": host_of(&d.base_url),
        "mac_address": "",
        "site": d.site,
        "software_version": d.software_version,
        "dna_level": d.dna_level,
        "network_license": network_level(&d.network_license),
        "license_mode": "Smart Licensing Using Policy",
        "is_license_expired": false,
        "registration_status": d.registration_status,
        "authorization_status": if d.out_of_compliance { "OUT_OF_COMPLIANCE" } else { "AUTHORIZED" },
        "reservation_status": "NA",
        "virtual_account_name": d.virtual_account,
        "smart_account_name": d.smart_account,
        "last_updated_time": time(d.updated_at),
        "last_successful_rum_usage_upload_time": d.last_upload_at.map(time).unwrap_or_default(),
        "is_wireless": d.device_type == "Wireless Controller",
        "is_wireless_capable": d.device_type == "Wireless Controller",
        "customer_tag1": tag(0),
        "customer_tag2": tag(1),
        "customer_tag3": tag(2),
        "customer_tag4": tag(3),
    })
}

fn details(d: &CatalystDevice) -> Value {
    let mut features = vec![d.network_license.clone()];
    features.extend(d.dna_tier.clone());
    json!({
        "device_uuid": d.id.to_string(),
        "device_name": d.hostname,
        "device_type": d.device_type,
        "model": d.model,
        "site": d.site,
        "ip_address": host_of(&d.base_url),
        "mac_address": "",
        "software_version": d.software_version,
        "license_mode": "Smart Licensing Using Policy",
        "is_license_expired": false,
        "network_license": network_level(&d.network_license),
        "dna_level": d.dna_level,
        "evaluation_license_expiry": "",
        "virtual_account_name": d.virtual_account,
        "sntc_status": "UNKNOWN",
        "feature_license": features,
        "has_sup_cards": false,
        "udi": format!("PID:{},SN:{}", d.udi_pid, d.udi_serial),
        "stacked_devices": [],
        "is_stacked_device": false,
        "access_points": [],
        "chassis_details": {
            "board_serial_number": d.udi_serial,
            "modules": [],
            "supervisor_cards": [],
            "port": 0,
        },
    })
}

/// A page of the device summary (the filters above apply too).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// From 1 (required).
    page_number: Option<String>,
    /// `asc` or `desc` (required).
    order: Option<String>,
    /// 1 to 500 (required).
    limit: Option<String>,
    /// `device_name` (default), `device_uuid`, `device_type`, `dna_level`, `model`, `site`,
    /// `virtual_account_name`, `registration_status` or `last_updated_time`.
    sort_by: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    filters: Filters,
}

fn int_param(name: &str, v: Option<&str>, min: i64, max: i64) -> Result<i64, Problem> {
    let v = v.ok_or_else(|| bad(name, "is required"))?;
    // The SDKs' docs type some of these as numbers: accept "2.0" as 2.
    let n = v
        .parse::<i64>()
        .ok()
        .or_else(|| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .map(|f| f as i64)
        })
        .ok_or_else(|| bad(name, format!("{v:?} is not an integer")))?;
    if n < min || n > max {
        return Err(bad(name, format!("{n} is out of range {min}..={max}")));
    }
    Ok(n)
}

/// The device license summary, one page: `{"response": [...], "version": "1.0"}`.
#[utoipa::path(
    tag = "catalyst",
    params(Page, Filters),
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"response\": [<device summary>...], \"version\": \"1.0\"}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/licenses/device/summary")]
pub(crate) async fn device_summary(
    s: web::Data<Catalyst>,
    q: web::Query<Page>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let q = q.into_inner();
    let page = int_param(
        "page_number",
        q.page_number.as_deref(),
        1,
        i64::from(i32::MAX),
    )?;
    let limit = int_param("limit", q.limit.as_deref(), 1, MAX_PAGE)?;
    let desc = match q.order.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(bad("order", format!("{o:?} is not asc or desc"))),
        None => return Err(bad("order", "is required (asc or desc)")),
    };
    let sort = match q.sort_by.as_deref().filter(|v| !v.is_empty()) {
        None | Some("device_name") => SortBy::Hostname,
        Some("device_uuid") => SortBy::Id,
        Some("device_type") => SortBy::DeviceType,
        Some("dna_level") => SortBy::DnaLevel,
        Some("model") => SortBy::Model,
        Some("site") => SortBy::Site,
        Some("virtual_account_name") => SortBy::VirtualAccount,
        Some("registration_status") => SortBy::RegistrationStatus,
        Some("last_updated_time") => SortBy::UpdatedAt,
        Some(other) => return Err(bad("sort_by", format!("cannot sort by {other:?}"))),
    };
    let f = q.filters.bind()?;
    let offset = (page - 1).saturating_mul(limit);
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    // Out-of-compliance reads the stored deadlines: bring them up to date first.
    tally_renewal_scheduler::deadlines::refresh(&mut c, s.now()).await?;
    let rows = store::device_page(&mut c, &f, sort, desc, limit, offset).await?;
    let items: Vec<Value> = rows.iter().map(summary).collect();
    Ok(HttpResponse::Ok().json(json!({"response": items, "version": "1.0"})))
}

/// One device's license details.
#[utoipa::path(
    tag = "catalyst",
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "The device: `udi` (`PID:..,SN:..`), `feature_license`, `chassis_details`, ..."),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/licenses/device/{device_uuid}/details")]
pub(crate) async fn device_details(
    s: web::Data<Catalyst>,
    device_uuid: web::Path<String>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let raw = device_uuid.into_inner();
    let id = Uuid::parse_str(&raw).map_err(|_| Problem::not_found("device", &raw))?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let row = store::device(&mut c, id)
        .await?
        .ok_or_else(|| Problem::not_found("device", id))?;
    Ok(HttpResponse::Ok().json(details(&row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_address_is_the_host_of_the_api_address() {
        assert_eq!(host_of("https://10.1.2.3:8443/"), "10.1.2.3");
        assert_eq!(host_of("http://[fd00::1]:80/x"), "fd00::1");
        assert_eq!(host_of("https://user@sw1.example.net"), "sw1.example.net");
        assert_eq!(host_of("10.0.0.9"), "10.0.0.9");
    }
}
