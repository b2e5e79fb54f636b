//! The Catalyst Center (DNA Center) licensing Intent API, so automation written for Catalyst
//! Center (the `dnacentersdk` Python SDK, Ansible `cisco.dnac`, Terraform `dnacenter`) works
//! against Tally unchanged. Field names and types follow what those SDKs read.
//!
//! Auth is Catalyst Center's own: HTTP Basic on `/dna/system/api/v1/auth/token` (the password is
//! one of Tally's API tokens) gives an HMAC-signed token that every other call sends as
//! `X-Auth-Token`. Answers are read from the scheduler's own copy of the fleet (`sched.devices`).

use crate::Scheduler;
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tally_bus::{consumer::HandlerError, proto};
use tally_platform::{ApiTokens, Problem, auth::Caller, auth::Role};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

/// How long a token from `/dna/system/api/v1/auth/token` stays valid (Catalyst Center: 1 hour).
pub const TOKEN_TTL_SECS: i64 = 3600;
pub const MAX_PAGE: i64 = 500;
const NOT_SUPPORTED: &str = "deregistering is not a task in Tally: a device stops reporting and \
     returns its licenses when it is removed from the inventory (DELETE /api/v1/devices/{id})";

/// The token signing key, derived from `TALLY_SECRET_KEY` so every replica verifies the others'
/// tokens, and separate from the credential-sealing key so one never stands in for the other.
pub fn token_key(secret: &str) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let derived = hmac::sign(&root, b"tally catalyst-token v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

#[derive(Serialize, Deserialize)]
struct Claims {
    role: String,
    name: String,
    /// Fingerprint of the API token it was issued against (`ApiTokens::fingerprint_of`).
    #[serde(default)]
    tok: String,
    exp: i64,
}

/// `<claims>.<signature>`, both base64url.
pub fn issue_token(key: &hmac::Key, role: Role, name: &str, tok: &str, exp: i64) -> String {
    let role = match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    };
    let claims = json!({"role": role, "name": name, "tok": tok, "exp": exp}).to_string();
    let body = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    let sig = hmac::sign(key, body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// The caller named by a token we signed and that has not expired, with the fingerprint of the
/// API token it was issued against.
pub fn verify_token(key: &hmac::Key, token: &str, now: i64) -> Option<(Caller, String)> {
    let (body, sig) = token.split_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    hmac::verify(key, body.as_bytes(), &sig).ok()?;
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    (claims.exp > now).then_some(())?;
    Some((
        Caller {
            role: claims.role.parse().ok()?,
            name: claims.name,
        },
        claims.tok,
    ))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    const I: &str = "/dna/intent/api/v1";
    cfg.route("/dna/system/api/v1/auth/token", web::post().to(auth_token))
        .route(
            &format!("{I}/licenses/device/count"),
            web::get().to(device_count),
        )
        .route(
            &format!("{I}/licenses/device/summary"),
            web::get().to(device_summary),
        )
        .route(
            &format!("{I}/licenses/device/{{device_uuid}}/details"),
            web::get().to(device_details),
        )
        .route(
            &format!("{I}/licenses/smartAccounts"),
            web::get().to(smart_accounts),
        )
        .route(
            &format!("{I}/licenses/smartAccount/{{sa}}/virtualAccounts"),
            web::get().to(virtual_accounts),
        )
        .route(
            &format!("{I}/networkDeviceLicenses/summary"),
            web::get().to(network_summary),
        )
        .route(
            &format!("{I}/licenses/term/smartAccount/{{sa}}/virtualAccount/{{va}}"),
            web::get().to(license_terms),
        )
        .route(
            &format!("{I}/licenses/usage/smartAccount/{{sa}}/virtualAccount/{{va}}"),
            web::get().to(license_usage),
        )
        // The SDKs POST a transfer; older docs show PUT: both are accepted.
        .route(
            &format!("{I}/licenses/smartAccount/{{sa}}/virtualAccount/{{va}}/device/transfer"),
            web::route()
                .guard(actix_web::guard::Any(actix_web::guard::Post()).or(actix_web::guard::Put()))
                .to(transfer),
        )
        .route(
            &format!("{I}/licenses/smartAccount/virtualAccount/{{va}}/register"),
            web::put().to(register),
        )
        .route(
            &format!("{I}/licenses/smartAccount/virtualAccount/deregister"),
            web::put().to(deregister),
        )
        .route(&format!("{I}/task/{{task_id}}"), web::get().to(get_task));
}

fn unauthorized(detail: &str) -> Problem {
    Problem::unauthorized(detail.to_owned())
}

fn key(s: &Scheduler) -> Result<&hmac::Key, Problem> {
    s.cfg
        .token_key
        .as_ref()
        .ok_or_else(|| Problem::unavailable("the Catalyst Center API needs TALLY_SECRET_KEY"))
}

/// The caller of a `/dna/intent` call: a valid `X-Auth-Token` with at least `need`.
fn authorize(req: &HttpRequest, s: &Scheduler, need: Role) -> Result<Caller, Problem> {
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            unauthorized("missing X-Auth-Token: get one from POST /dna/system/api/v1/auth/token")
        })?;
    let (mut caller, tok) = verify_token(key(s)?, token.trim(), Utc::now().timestamp())
        .ok_or_else(|| unauthorized("invalid or expired X-Auth-Token"))?;
    // A token dies with the API token it was issued against.
    let tokens = req
        .app_data::<web::Data<ApiTokens>>()
        .ok_or_else(|| Problem::internal("API tokens not configured"))?;
    let Some(now) = tokens.role_of_fingerprint(&tok) else {
        return Err(unauthorized(
            "X-Auth-Token was issued against an API token that is no longer configured",
        ));
    };
    // A token whose role was lowered since keeps only the lower role.
    caller.role = caller.role.min(now);
    caller.require(need)?;
    Ok(caller)
}

async fn auth_token(req: HttpRequest, s: web::Data<Scheduler>) -> Result<HttpResponse, Problem> {
    let tokens = req
        .app_data::<web::Data<ApiTokens>>()
        .ok_or_else(|| Problem::internal("API tokens not configured"))?;
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, v)| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| {
            unauthorized("send HTTP Basic credentials; the password is a Tally API token")
        })?;
    let (_, password) = basic
        .split_once(':')
        .ok_or_else(|| unauthorized("malformed HTTP Basic credentials"))?;
    let (role, name) = tokens
        .role_of(password)
        .ok_or_else(|| unauthorized("unknown or revoked API token"))?;
    let tok = tokens.fingerprint_of(password).unwrap_or_default();
    let exp = Utc::now().timestamp() + TOKEN_TTL_SECS;
    Ok(HttpResponse::Ok().json(json!({"Token": issue_token(key(&s)?, role, &name, &tok, exp)})))
}

// Catalyst Center's vocabulary, computed from Tally's fleet copy so filters and sorting agree.
const DEVICE_TYPE: &str = "CASE WHEN udi_pid LIKE 'C9800%' THEN 'Wireless Controller' \
     WHEN udi_pid ~ '^(C9[2-6]|WS-C|IE-|C1000)' THEN 'Switches and Hubs' ELSE 'Routers' END";
const REGISTRATION: &str = "CASE WHEN last_upload_at IS NOT NULL OR last_ack_at IS NOT NULL \
     THEN 'Registered' ELSE 'Unregistered' END";
const DNA_LEVEL: &str = "CASE dna_tier WHEN 'dna-essentials' THEN 'Essentials' \
     WHEN 'dna-advantage' THEN 'Advantage' WHEN 'dna-premier' THEN 'Premier' ELSE 'NA' END";
// Past its ACK deadline (the deadline engine's, stored) or holding an overcommitted pool.
const OUT_OF_COMPLIANCE: &str = "(out_of_compliance OR COALESCE(deadline <= now(), false))";

fn filter_sql() -> String {
    format!(
        "NOT deleted AND ($1::text IS NULL OR lower({DEVICE_TYPE}) = lower($1)) \
         AND ($2::text IS NULL OR lower({REGISTRATION}) = lower($2)) \
         AND ($3::text IS NULL OR lower({DNA_LEVEL}) = lower($3)) \
         AND ($4::text IS NULL OR virtual_account = $4) \
         AND ($5::text IS NULL OR smart_account = $5) \
         AND ($6::uuid IS NULL OR id = $6)"
    )
}

#[derive(Deserialize, Default)]
pub struct Filters {
    device_type: Option<String>,
    registration_status: Option<String>,
    dna_level: Option<String>,
    virtual_account_name: Option<String>,
    smart_account_id: Option<String>,
    device_uuid: Option<String>,
}

struct Bound {
    device_type: Option<String>,
    registration_status: Option<String>,
    dna_level: Option<String>,
    virtual_account_name: Option<String>,
    smart_account_id: Option<String>,
    device_uuid: Option<Uuid>,
}

fn bad(param: &str, msg: impl std::fmt::Display) -> Problem {
    Problem::bad_request("invalid-query", format!("{param}: {msg}"))
}

impl Filters {
    fn bind(self) -> Result<Bound, Problem> {
        let some = |v: Option<String>| v.filter(|s| !s.is_empty());
        let device_uuid = match some(self.device_uuid) {
            Some(v) => Some(Uuid::parse_str(&v).map_err(|e| bad("device_uuid", e))?),
            None => None,
        };
        Ok(Bound {
            device_type: some(self.device_type),
            registration_status: some(self.registration_status),
            dna_level: some(self.dna_level),
            virtual_account_name: some(self.virtual_account_name),
            smart_account_id: some(self.smart_account_id),
            device_uuid,
        })
    }
}

macro_rules! bind_filters {
    ($q:expr, $f:expr) => {
        $q.bind::<Nullable<Text>, _>($f.device_type.clone())
            .bind::<Nullable<Text>, _>($f.registration_status.clone())
            .bind::<Nullable<Text>, _>($f.dna_level.clone())
            .bind::<Nullable<Text>, _>($f.virtual_account_name.clone())
            .bind::<Nullable<Text>, _>($f.smart_account_id.clone())
            .bind::<Nullable<SqlUuid>, _>($f.device_uuid)
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn device_count(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    q: web::Query<Filters>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let f = q.into_inner().bind()?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let sql = format!(
        "SELECT count(*) AS n FROM sched.devices WHERE {}",
        filter_sql()
    );
    let rows: Vec<Count> = bind_filters!(diesel::sql_query(sql), f)
        .load(&mut c)
        .await
        .map_err(Problem::internal)?;
    let n = rows.as_slice().first().map_or(0, |r| r.n);
    Ok(HttpResponse::Ok().json(json!({"response": n, "version": "1.0"})))
}

#[derive(QueryableByName)]
struct DeviceRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    hostname: String,
    #[diesel(sql_type = Text)]
    udi_pid: String,
    #[diesel(sql_type = Text)]
    udi_serial: String,
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = Text)]
    software_version: String,
    #[diesel(sql_type = Text)]
    base_url: String,
    #[diesel(sql_type = Text)]
    site: String,
    #[diesel(sql_type = Array<Text>)]
    groups: Vec<String>,
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    dna_tier: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_upload_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    device_type: String,
    #[diesel(sql_type = Text)]
    registration_status: String,
    #[diesel(sql_type = Text)]
    dna_level: String,
    #[diesel(sql_type = Bool)]
    out_of_compliance: bool,
}

fn device_select() -> String {
    format!(
        "SELECT id, hostname, udi_pid, udi_serial, model, software_version, base_url, site, groups, \
         smart_account, virtual_account, network_license, dna_tier, updated_at, last_upload_at, \
         {DEVICE_TYPE} AS device_type, {REGISTRATION} AS registration_status, \
         {DNA_LEVEL} AS dna_level, {OUT_OF_COMPLIANCE} AS out_of_compliance FROM sched.devices"
    )
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

impl DeviceRow {
    fn summary(&self) -> Value {
        let tag = |i: usize| self.groups.get(i).cloned().unwrap_or_default();
        json!({
            "device_uuid": self.id.to_string(),
            "device_name": self.hostname,
            "device_type": self.device_type,
            "model": self.model,
            "ip_address": host_of(&self.base_url),
            "mac_address": "",
            "site": self.site,
            "software_version": self.software_version,
            "dna_level": self.dna_level,
            "network_license": network_level(&self.network_license),
            "license_mode": "Smart Licensing Using Policy",
            "is_license_expired": false,
            "registration_status": self.registration_status,
            "authorization_status": if self.out_of_compliance { "OUT_OF_COMPLIANCE" } else { "AUTHORIZED" },
            "reservation_status": "NA",
            "virtual_account_name": self.virtual_account,
            "smart_account_name": self.smart_account,
            "last_updated_time": time(self.updated_at),
            "last_successful_rum_usage_upload_time": self.last_upload_at.map(time).unwrap_or_default(),
            "is_wireless": self.device_type == "Wireless Controller",
            "is_wireless_capable": self.device_type == "Wireless Controller",
            "customer_tag1": tag(0),
            "customer_tag2": tag(1),
            "customer_tag3": tag(2),
            "customer_tag4": tag(3),
        })
    }

    fn details(&self) -> Value {
        let mut features = vec![self.network_license.clone()];
        features.extend(self.dna_tier.clone());
        json!({
            "device_uuid": self.id.to_string(),
            "device_name": self.hostname,
            "device_type": self.device_type,
            "model": self.model,
            "site": self.site,
            "ip_address": host_of(&self.base_url),
            "mac_address": "",
            "software_version": self.software_version,
            "license_mode": "Smart Licensing Using Policy",
            "is_license_expired": false,
            "network_license": network_level(&self.network_license),
            "dna_level": self.dna_level,
            "evaluation_license_expiry": "",
            "virtual_account_name": self.virtual_account,
            "sntc_status": "UNKNOWN",
            "feature_license": features,
            "has_sup_cards": false,
            "udi": format!("PID:{},SN:{}", self.udi_pid, self.udi_serial),
            "stacked_devices": [],
            "is_stacked_device": false,
            "access_points": [],
            "chassis_details": {
                "board_serial_number": self.udi_serial,
                "modules": [],
                "supervisor_cards": [],
                "port": 0,
            },
        })
    }
}

#[derive(Deserialize)]
pub struct Page {
    page_number: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    sort_by: Option<String>,
    #[serde(flatten)]
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

async fn device_summary(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    q: web::Query<Page>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
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
    let column = match q.sort_by.as_deref().filter(|v| !v.is_empty()) {
        None | Some("device_name") => "hostname",
        Some("device_uuid") => "id",
        Some("device_type") => "device_type",
        Some("dna_level") => "dna_level",
        Some("model") => "model",
        Some("site") => "site",
        Some("virtual_account_name") => "virtual_account",
        Some("registration_status") => "registration_status",
        Some("last_updated_time") => "updated_at",
        Some(other) => return Err(bad("sort_by", format!("cannot sort by {other:?}"))),
    };
    let f = q.filters.bind()?;
    let dir = if desc { "DESC" } else { "ASC" };
    let offset = (page - 1).saturating_mul(limit);
    let plain = matches!(
        column,
        "hostname" | "id" | "model" | "site" | "virtual_account" | "updated_at"
    );
    let sql = if plain {
        // Skip to the page over the sort column and id only (an index scan), then build the
        // page's 500 rows: deep pages stay cheap.
        format!(
            "SELECT d.* FROM ({select} WHERE id IN (SELECT id FROM sched.devices WHERE {filter} \
             ORDER BY {column} {dir}, id {dir} LIMIT {limit} OFFSET {offset})) d \
             ORDER BY {column} {dir}, id {dir}",
            select = device_select(),
            filter = filter_sql(),
        )
    } else {
        format!(
            "SELECT * FROM ({} WHERE {}) d ORDER BY {column} {dir}, id {dir} LIMIT {limit} \
             OFFSET {offset}",
            device_select(),
            filter_sql(),
        )
    };
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    crate::compliance::refresh(&mut c, crate::compliance::clock(&s))
        .await
        .map_err(Problem::internal)?;
    let rows: Vec<DeviceRow> = bind_filters!(diesel::sql_query(sql), f)
        .load(&mut c)
        .await
        .map_err(Problem::internal)?;
    let items: Vec<Value> = rows.iter().map(DeviceRow::summary).collect();
    Ok(HttpResponse::Ok().json(json!({"response": items, "version": "1.0"})))
}

async fn device_details(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let raw = path.into_inner();
    let id = Uuid::parse_str(&raw).map_err(|_| Problem::not_found("device", &raw))?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<DeviceRow> =
        diesel::sql_query(format!("{} WHERE id = $1 AND NOT deleted", device_select()))
            .bind::<SqlUuid, _>(id)
            .load(&mut c)
            .await
            .map_err(Problem::internal)?;
    let row = rows
        .as_slice()
        .first()
        .ok_or_else(|| Problem::not_found("device", id))?;
    Ok(HttpResponse::Ok().json(row.details()))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

async fn smart_accounts(
    req: HttpRequest,
    s: web::Data<Scheduler>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<Name> = diesel::sql_query(
        "SELECT DISTINCT smart_account AS name FROM sched.devices WHERE NOT deleted ORDER BY 1",
    )
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    // Tally knows a smart account by its name (its domain in CSSM): it is also the id.
    let items: Vec<Value> = rows
        .iter()
        .map(|r| json!({"name": r.name, "id": r.name, "domain": r.name, "is_active_smart_account": true}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"response": items, "version": "1.0"})))
}

async fn virtual_accounts(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let sa = path.into_inner();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<Name> = diesel::sql_query(
        "SELECT DISTINCT virtual_account AS name FROM sched.devices \
         WHERE smart_account = $1 AND NOT deleted ORDER BY 1",
    )
    .bind::<Text, _>(&sa)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    if rows.is_empty() {
        return Err(Problem::not_found("smart account", &sa));
    }
    let vas: Vec<Value> = rows
        .iter()
        .map(|r| json!({"virtual_account_id": r.name, "virtual_account_name": r.name}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "smart_account_id": sa,
        "smart_account_name": sa,
        "virtual_account_details": vas,
    })))
}

#[derive(QueryableByName)]
struct Rollup {
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    net_ess: i64,
    #[diesel(sql_type = BigInt)]
    net_adv: i64,
    #[diesel(sql_type = BigInt)]
    dna_ess: i64,
    #[diesel(sql_type = BigInt)]
    dna_adv: i64,
    #[diesel(sql_type = BigInt)]
    dna_prem: i64,
    #[diesel(sql_type = BigInt)]
    unregistered: i64,
    #[diesel(sql_type = BigInt)]
    out_of_compliance: i64,
    #[diesel(sql_type = BigInt)]
    expired: i64,
    #[diesel(sql_type = BigInt)]
    expiring: i64,
}

async fn network_summary(
    req: HttpRequest,
    s: web::Data<Scheduler>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    crate::compliance::refresh(&mut c, crate::compliance::clock(&s))
        .await
        .map_err(Problem::internal)?;
    let rows: Vec<Rollup> = diesel::sql_query(format!(
        "SELECT count(*) AS total, \
         count(*) FILTER (WHERE network_license = 'network-essentials') AS net_ess, \
         count(*) FILTER (WHERE network_license = 'network-advantage') AS net_adv, \
         count(*) FILTER (WHERE dna_tier = 'dna-essentials') AS dna_ess, \
         count(*) FILTER (WHERE dna_tier = 'dna-advantage') AS dna_adv, \
         count(*) FILTER (WHERE dna_tier = 'dna-premier') AS dna_prem, \
         count(*) FILTER (WHERE {REGISTRATION} = 'Unregistered') AS unregistered, \
         count(*) FILTER (WHERE {OUT_OF_COMPLIANCE}) AS out_of_compliance, \
         (SELECT COALESCE(sum(quantity), 0)::int8 FROM sched.pool_terms \
          WHERE end_date <= now()) AS expired, \
         (SELECT COALESCE(sum(quantity), 0)::int8 FROM sched.pool_terms \
          WHERE end_date > now() AND end_date <= now() + interval '90 days') AS expiring \
         FROM sched.devices WHERE NOT deleted"
    ))
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    let r = rows
        .as_slice()
        .first()
        .ok_or_else(|| Problem::internal("empty roll-up"))?;
    Ok(HttpResponse::Ok().json(json!({
        "response": {
            "totalDeviceCount": r.total,
            "networkEssentialsCount": r.net_ess,
            "networkAdvantageCount": r.net_adv,
            "dnaEssentialsCount": r.dna_ess,
            "dnaAdvantageCount": r.dna_adv,
            "dnaPremierCount": r.dna_prem,
            "cnsCount": 0,
            "unregisteredNetworkDeviceCount": r.unregistered,
            "outOfComplianceNetworkDeviceCount": r.out_of_compliance,
            // Licenses in subscription lines that ended, or end within 90 days (last pool sync).
            "expiredLicensesCount": r.expired,
            "expiringLicensesCount": r.expiring,
        },
        "version": "1.0",
    })))
}

/// The kind of device a model is, in the words of the term and usage calls' `device_type`.
fn kind_of_model(model: &str) -> &'static str {
    let m = model.trim_end_matches('*');
    if m.starts_with("C9800") || m.starts_with("AIR-") {
        "wireless"
    } else if ["C92", "C93", "C94", "C95", "C96", "WS-C", "IE-", "C1000"]
        .iter()
        .any(|p| m.starts_with(p))
    {
        "switch"
    } else {
        "router"
    }
}

/// `device_type` as the SDKs send it (router, switch, wireless, ise, or Catalyst Center's own
/// names); absent or empty means every type.
fn device_kind(v: Option<&str>) -> Result<Option<&'static str>, Problem> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "router" | "routers" => Ok(Some("router")),
        "switch" | "switches" | "switches and hubs" => Ok(Some("switch")),
        "wireless" | "wireless controller" => Ok(Some("wireless")),
        // Tally manages no ISE nodes.
        "ise" => Ok(Some("ise")),
        other => Err(bad(
            "device_type",
            format!("{other:?} is not one of router, switch, wireless, ise"),
        )),
    }
}

#[derive(Deserialize)]
pub struct DeviceTypeQuery {
    device_type: Option<String>,
}

#[derive(QueryableByName)]
struct TermLine {
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = Text)]
    level: String,
    #[diesel(sql_type = Array<Text>)]
    models: Vec<String>,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    start_date: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    end_date: Option<DateTime<Utc>>,
}

fn level_name(level: &str) -> &'static str {
    match level {
        "dna-essentials" | "network-essentials" => "Essentials",
        "dna-advantage" | "network-advantage" => "Advantage",
        "dna-premier" => "Premier",
        _ => "NA",
    }
}

/// The model a pool is for: its first model pattern, else its license name.
fn pool_model(models: &[String], license: &str) -> String {
    models.first().map_or_else(
        || license.to_owned(),
        |m| m.trim_end_matches('*').to_owned(),
    )
}

/// License term details: each DNA subscription line of the virtual account's pools, from the
/// last pool sync.
async fn license_terms(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<(String, String)>,
    q: web::Query<DeviceTypeQuery>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let (sa, va) = path.into_inner();
    let kind = device_kind(q.device_type.as_deref())?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<TermLine> = diesel::sql_query(
        "SELECT p.license, p.level, p.models, t.quantity, t.start_date, t.end_date \
         FROM sched.pools p JOIN sched.pool_terms t USING (smart_account, virtual_account, license) \
         WHERE p.smart_account = $1 AND p.virtual_account = $2 AND p.level LIKE 'dna-%' \
         ORDER BY t.end_date NULLS LAST, p.license, t.line",
    )
    .bind::<Text, _>(&sa)
    .bind::<Text, _>(&va)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    let now = Utc::now();
    let date = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let details: Vec<Value> = rows
        .iter()
        .filter(|r| {
            let model = pool_model(&r.models, &r.license);
            kind.is_none_or(|k| kind_of_model(&model) == k)
        })
        .map(|r| {
            json!({
                "model": pool_model(&r.models, &r.license),
                "virtual_account_name": va,
                "license_term_start_date": date(r.start_date),
                "license_term_end_date": date(r.end_date),
                "dna_level": level_name(&r.level),
                "purchased_dna_license_count": r.quantity.to_string(),
                "is_license_expired": r.end_date.is_some_and(|e| e <= now).to_string(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"license_details": details})))
}

#[derive(QueryableByName)]
struct PoolLine {
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = Text)]
    level: String,
    #[diesel(sql_type = Array<Text>)]
    models: Vec<String>,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
}

#[derive(QueryableByName)]
struct UsedLine {
    #[diesel(sql_type = Text)]
    udi_pid: String,
    #[diesel(sql_type = Text)]
    network_license: String,
    #[diesel(sql_type = Nullable<Text>)]
    dna_tier: Option<String>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn by_type(counts: &BTreeMap<&'static str, i64>) -> Value {
    json!({
        "total_license_count": counts.values().sum::<i64>(),
        "license_count_by_type": counts
            .iter()
            .map(|(t, n)| json!({"license_type": t, "license_count": n}))
            .collect::<Vec<_>>(),
    })
}

/// License usage: purchased (the pools CSSM lists) and used (the devices holding each level)
/// DNA and network licenses of a virtual account, by level.
async fn license_usage(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<(String, String)>,
    q: web::Query<DeviceTypeQuery>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let (sa, va) = path.into_inner();
    let kind = device_kind(q.device_type.as_deref())?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let pools: Vec<PoolLine> = diesel::sql_query(
        "SELECT license, level, models, quantity FROM sched.pools \
         WHERE smart_account = $1 AND virtual_account = $2",
    )
    .bind::<Text, _>(&sa)
    .bind::<Text, _>(&va)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    let used: Vec<UsedLine> = diesel::sql_query(
        "SELECT udi_pid, network_license, dna_tier, count(*) AS n FROM sched.devices \
         WHERE smart_account = $1 AND virtual_account = $2 AND NOT deleted GROUP BY 1, 2, 3",
    )
    .bind::<Text, _>(&sa)
    .bind::<Text, _>(&va)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    if pools.is_empty() && used.is_empty() {
        return Err(Problem::not_found("virtual account", format!("{sa}/{va}")));
    }
    let (mut bought_dna, mut bought_net) = (BTreeMap::new(), BTreeMap::new());
    for p in &pools {
        if kind.is_some_and(|k| kind_of_model(&pool_model(&p.models, &p.license)) != k) {
            continue;
        }
        let into = if p.level.starts_with("dna-") {
            &mut bought_dna
        } else {
            &mut bought_net
        };
        *into.entry(level_name(&p.level)).or_insert(0) += p.quantity;
    }
    let (mut used_dna, mut used_net) = (BTreeMap::new(), BTreeMap::new());
    for u in &used {
        if kind.is_some_and(|k| kind_of_model(&u.udi_pid) != k) {
            continue;
        }
        *used_net.entry(level_name(&u.network_license)).or_insert(0) += u.n;
        if let Some(t) = &u.dna_tier {
            *used_dna.entry(level_name(t)).or_insert(0) += u.n;
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "purchased_dna_license": by_type(&bought_dna),
        "purchased_network_license": by_type(&bought_net),
        "used_dna_license": by_type(&used_dna),
        "used_network_license": by_type(&used_net),
    })))
}

#[derive(Deserialize)]
pub struct DeviceUuids {
    #[serde(default)]
    device_uuids: Vec<String>,
}

fn task_created(id: Uuid) -> HttpResponse {
    HttpResponse::build(StatusCode::ACCEPTED).json(json!({
        "response": {"taskId": id.to_string(), "url": format!("/dna/intent/api/v1/task/{id}")},
        "version": "1.0",
    }))
}

fn parse_uuids(body: &DeviceUuids) -> Result<Vec<Uuid>, Problem> {
    if body.device_uuids.is_empty() {
        return Err(Problem::bad_request(
            "invalid-body",
            "device_uuids: give at least one device",
        ));
    }
    body.device_uuids
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Uuid::parse_str(v).map_err(|e| {
                Problem::bad_request("invalid-body", format!("device_uuids[{i}]: {v:?}: {e}"))
            })
        })
        .collect()
}

/// Change Virtual Account: a task that tier-assignment carries out with a tier job.
async fn transfer(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<(String, String)>,
    body: web::Json<DeviceUuids>,
) -> Result<HttpResponse, Problem> {
    let (sa, va) = path.into_inner();
    move_devices(&req, &s, "transfer", Some(sa), va, &body).await
}

/// Register: under Smart Licensing Using Policy a device counts in the virtual account its
/// usage is reported under, so registering it to a virtual account is moving it there (within
/// its smart account), carried out like a transfer.
async fn register(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<String>,
    body: web::Json<DeviceUuids>,
) -> Result<HttpResponse, Problem> {
    move_devices(&req, &s, "register", None, path.into_inner(), &body).await
}

/// Moves devices to a virtual account as a task that tier-assignment carries out. `sa` is the
/// smart account named in the path; a register names none and takes the devices' own.
async fn move_devices(
    req: &HttpRequest,
    s: &Scheduler,
    kind: &str,
    sa: Option<String>,
    va: String,
    body: &DeviceUuids,
) -> Result<HttpResponse, Problem> {
    let caller = authorize(req, s, Role::Operator)?;
    if va.trim().is_empty() {
        return Err(Problem::bad_request(
            "invalid-path",
            "virtual_account_name is empty",
        ));
    }
    let mut ids = parse_uuids(body)?;
    ids.sort_unstable();
    ids.dedup();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let sa = match sa {
        Some(sa) => sa,
        None => {
            let accounts: Vec<Name> = diesel::sql_query(
                "SELECT DISTINCT smart_account AS name FROM sched.devices \
                 WHERE id = ANY($1) AND NOT deleted ORDER BY 1",
            )
            .bind::<Array<SqlUuid>, _>(&ids)
            .load(&mut c)
            .await
            .map_err(Problem::internal)?;
            match accounts.as_slice() {
                [one] => one.name.clone(),
                [] => {
                    return Err(Problem::bad_request(
                        "unknown-devices",
                        "device_uuids: none of these devices is known",
                    ));
                }
                many => {
                    return Err(Problem::bad_request(
                        "invalid-body",
                        format!(
                            "device_uuids: the devices are in several smart accounts ({}); \
                             register them one smart account at a time",
                            many.iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
    };
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let known: Vec<Id> = diesel::sql_query(
        "SELECT id FROM sched.devices WHERE id = ANY($1) AND smart_account = $2 AND NOT deleted",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Text, _>(&sa)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    if known.len() != ids.len() {
        let known: std::collections::HashSet<Uuid> = known.into_iter().map(|r| r.id).collect();
        let missing: Vec<String> = ids
            .iter()
            .filter(|i| !known.contains(i))
            .take(10)
            .map(Uuid::to_string)
            .collect();
        return Err(Problem::bad_request(
            "unknown-devices",
            format!(
                "device_uuids: not devices of smart account {sa:?} (a transfer stays within one smart account): {}",
                missing.join(", ")
            ),
        ));
    }
    let id = Uuid::new_v4();
    let what = if kind == "register" {
        "Registration"
    } else {
        "Transfer"
    };
    let progress = format!(
        "{what} of {} device(s) to virtual account {va} requested",
        ids.len()
    );
    c.transaction(async |c| {
        diesel::sql_query(
            "INSERT INTO sched.catalyst_tasks (id, kind, smart_account, virtual_account, device_ids, \
             requested_by, progress) VALUES ($1, $7, $2, $3, $4, $5, $6)",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(&sa)
        .bind::<Text, _>(&va)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Text, _>(&caller.name)
        .bind::<Text, _>(&progress)
        .bind::<Text, _>(kind)
        .execute(c)
        .await?;
        tally_bus::emit(
            c,
            Schema::Sched,
            &proto::TransferRequested {
                task_id: id.to_string(),
                device_ids: ids.iter().map(Uuid::to_string).collect(),
                smart_account: sa.clone(),
                virtual_account: va.clone(),
                requested_by: caller.name.clone(),
            },
        )
        .await?;
        Ok::<_, diesel::result::Error>(())
    })
    .await
    .map_err(Problem::internal)?;
    Ok(task_created(id))
}

/// Deregister exists only so scripts get a clear answer: a device leaves licensing by leaving
/// the inventory, which the inventory's own API does.
async fn unsupported_task(
    req: &HttpRequest,
    s: &Scheduler,
    kind: &str,
    va: &str,
    body: &DeviceUuids,
) -> Result<HttpResponse, Problem> {
    let caller = authorize(req, s, Role::Operator)?;
    let ids = parse_uuids(body)?;
    let id = Uuid::new_v4();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    diesel::sql_query(
        "INSERT INTO sched.catalyst_tasks (id, kind, smart_account, virtual_account, device_ids, \
         requested_by, progress, is_error, failure_reason, finished_at) \
         VALUES ($1, $2, '', $3, $4, $5, $6, true, $6, now())",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(va)
    .bind::<Array<SqlUuid>, _>(&ids)
    .bind::<Text, _>(&caller.name)
    .bind::<Text, _>(NOT_SUPPORTED)
    .execute(&mut c)
    .await
    .map_err(Problem::internal)?;
    Ok(task_created(id))
}

async fn deregister(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    body: web::Json<DeviceUuids>,
) -> Result<HttpResponse, Problem> {
    unsupported_task(&req, &s, "deregister", "", &body).await
}

#[derive(QueryableByName)]
struct TaskRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    requested_by: String,
    #[diesel(sql_type = Bool)]
    is_error: bool,
    #[diesel(sql_type = Text)]
    progress: String,
    #[diesel(sql_type = Nullable<Text>)]
    failure_reason: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    job_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<DateTime<Utc>>,
}

async fn get_task(
    req: HttpRequest,
    s: web::Data<Scheduler>,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    authorize(&req, &s, Role::Viewer)?;
    let raw = path.into_inner();
    let id = Uuid::parse_str(&raw).map_err(|_| Problem::not_found("task", &raw))?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let rows: Vec<TaskRow> = diesel::sql_query(
        "SELECT id, kind, requested_by, is_error, progress, failure_reason, job_id, created_at, \
         finished_at FROM sched.catalyst_tasks WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .load(&mut c)
    .await
    .map_err(Problem::internal)?;
    let t = rows
        .as_slice()
        .first()
        .ok_or_else(|| Problem::not_found("task", id))?;
    // Catalyst Center's task shape: times in epoch milliseconds, endTime only once it ended.
    let mut r = json!({
        "id": t.id.to_string(),
        "rootId": t.id.to_string(),
        "serviceType": format!("Tally Catalyst API ({})", t.kind),
        "username": t.requested_by,
        "isError": t.is_error,
        "progress": t.progress,
        "startTime": t.created_at.timestamp_millis(),
        "lastUpdate": t.finished_at.unwrap_or(t.created_at).timestamp_millis(),
        "version": t.created_at.timestamp_millis(),
        "data": t.job_id.map(|j| j.to_string()).unwrap_or_default(),
    });
    if let Some(obj) = r.as_object_mut() {
        if let Some(end) = t.finished_at {
            obj.insert("endTime".into(), json!(end.timestamp_millis()));
        }
        if let Some(reason) = &t.failure_reason {
            obj.insert("failureReason".into(), json!(reason));
        }
    }
    Ok(HttpResponse::Ok().json(json!({"response": r, "version": "1.0"})))
}

/// tier-assignment answered a transfer: the task ends, with the job that moves the devices or
/// the reason there is none.
pub async fn transfer_accepted(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::TransferAccepted,
) -> Result<(), HandlerError> {
    let Ok(task) = Uuid::parse_str(&ev.task_id) else {
        return Err(HandlerError::Poison(format!("task id {:?}", ev.task_id)));
    };
    let job = Uuid::parse_str(&ev.job_id).ok();
    // A job that rejected every device moves nothing: the client must see a failure.
    let error = if ev.error.is_empty() && ev.devices == 0 {
        format!(
            "tier job {} rejected every device (see /api/v1/tiers/jobs/{})",
            ev.job_id, ev.job_id
        )
    } else {
        ev.error.clone()
    };
    let failed = !error.is_empty();
    let progress = if failed {
        format!("Transfer refused: {error}")
    } else {
        format!(
            "Transfer of {} device(s) accepted: tier job {} moves them to the virtual account",
            ev.devices, ev.job_id
        )
    };
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        if !claim(c, Schema::Sched, msg_id).await? {
            return Ok(());
        }
        diesel::sql_query(
            "UPDATE sched.catalyst_tasks SET is_error = $2, progress = $3, failure_reason = $4, \
             job_id = $5, finished_at = now() WHERE id = $1 AND finished_at IS NULL",
        )
        .bind::<SqlUuid, _>(task)
        .bind::<Bool, _>(failed)
        .bind::<Text, _>(&progress)
        .bind::<Nullable<Text>, _>(failed.then_some(error.clone()))
        .bind::<Nullable<SqlUuid>, _>(job)
        .execute(c)
        .await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_verify_only_when_signed_and_fresh() {
        let k = token_key("0123456789abcdef0123");
        let t = issue_token(&k, Role::Operator, "operator-2", "00aa", 1000);
        let (c, tok) = verify_token(&k, &t, 999).unwrap();
        assert_eq!(
            (c.role, c.name.as_str(), tok.as_str()),
            (Role::Operator, "operator-2", "00aa")
        );
        assert!(verify_token(&k, &t, 1000).is_none(), "expired");
        assert!(verify_token(&token_key("another-secret-key-xx"), &t, 0).is_none());
        let (body, sig) = t.split_once('.').unwrap();
        let forged =
            URL_SAFE_NO_PAD.encode(br#"{"role":"admin","name":"operator-2","exp":9999999999}"#);
        assert!(verify_token(&k, &format!("{forged}.{sig}"), 0).is_none());
        assert!(verify_token(&k, body, 0).is_none());
    }

    #[test]
    fn ip_address_is_the_host_of_the_api_address() {
        assert_eq!(host_of("https://10.1.2.3:8443/"), "10.1.2.3");
        assert_eq!(host_of("http://[fd00::1]:80/x"), "fd00::1");
        assert_eq!(host_of("https://user@sw1.example.net"), "sw1.example.net");
        assert_eq!(host_of("10.0.0.9"), "10.0.0.9");
    }
}
