//! The token call, and the calls that start work: change of virtual account (transfer and
//! register, carried out by tier-assignment as a tier job) and deregister (refused as a task that
//! failed at once), followed through `GET /task/{id}` until tier-assignment's answer ends them.

use crate::Catalyst;
use actix_web::{HttpRequest, HttpResponse, get, http::StatusCode, post, put, web};
use serde::Deserialize;
use serde_json::json;
use tally_bus::{consumer::HandlerError, proto};
use tally_platform::{Problem, Role, catalyst_token::CatalystCaller};
use tally_renewal_scheduler::store::catalyst::{self as store, NewMove, TaskEnd, TaskKind};
use tally_store::outbox::{Schema, once};
use utoipa::ToSchema;
use uuid::Uuid;

const NOT_SUPPORTED: &str = "deregistering is not a task in Tally: a device stops reporting and \
     returns its licenses when it is removed from the inventory (DELETE /api/v1/devices/{id})";

/// A token for the next hour: HTTP Basic, any user name, a Tally API token as the password.
#[utoipa::path(
    tag = "catalyst",
    security(("catalyst-basic" = [])),
    responses(
        (status = 200, description = "`{\"Token\": \"<opaque>\"}`: send it as `X-Auth-Token`"),
        (status = 401, body = Problem),
    )
)]
#[post("/dna/system/api/v1/auth/token")]
pub(crate) async fn auth_token(req: HttpRequest) -> Result<HttpResponse, Problem> {
    let token = tally_platform::catalyst_token::issue_for_basic(&req)?;
    Ok(HttpResponse::Ok().json(json!({"Token": token})))
}

/// The devices a task is about.
#[derive(Deserialize, ToSchema)]
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

/// Change Virtual Account: a task that tier-assignment carries out with a tier job (the SDKs
/// POST it).
#[utoipa::path(
    tag = "catalyst",
    request_body = DeviceUuids,
    security(("x-auth-token" = [])),
    responses(
        (status = 202, description = "`{\"response\": {\"taskId\", \"url\"}, \"version\": \"1.0\"}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    )
)]
#[post(
    "/dna/intent/api/v1/licenses/smartAccount/{smart_account_id}/virtualAccount/{virtual_account_name}/device/transfer"
)]
pub(crate) async fn transfer(
    s: web::Data<Catalyst>,
    path: web::Path<(String, String)>,
    body: web::Json<DeviceUuids>,
    caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let (sa, va) = path.into_inner();
    move_devices(&s, &caller, TaskKind::Transfer, Some(sa), va, &body).await
}

/// Change Virtual Account as older docs show it (PUT): the same call as the POST.
#[utoipa::path(
    tag = "catalyst",
    request_body = DeviceUuids,
    security(("x-auth-token" = [])),
    responses(
        (status = 202, description = "`{\"response\": {\"taskId\", \"url\"}, \"version\": \"1.0\"}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    )
)]
#[put(
    "/dna/intent/api/v1/licenses/smartAccount/{smart_account_id}/virtualAccount/{virtual_account_name}/device/transfer"
)]
pub(crate) async fn transfer_put(
    s: web::Data<Catalyst>,
    path: web::Path<(String, String)>,
    body: web::Json<DeviceUuids>,
    caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let (sa, va) = path.into_inner();
    move_devices(&s, &caller, TaskKind::Transfer, Some(sa), va, &body).await
}

/// Register: under Smart Licensing Using Policy a device counts in the virtual account its
/// usage is reported under, so registering it to a virtual account is moving it there (within
/// its smart account), carried out like a transfer.
#[utoipa::path(
    tag = "catalyst",
    request_body = DeviceUuids,
    security(("x-auth-token" = [])),
    responses(
        (status = 202, description = "`{\"response\": {\"taskId\", \"url\"}, \"version\": \"1.0\"}`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    )
)]
#[put("/dna/intent/api/v1/licenses/smartAccount/virtualAccount/{virtual_account_name}/register")]
pub(crate) async fn register(
    s: web::Data<Catalyst>,
    virtual_account_name: web::Path<String>,
    body: web::Json<DeviceUuids>,
    caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let va = virtual_account_name.into_inner();
    move_devices(&s, &caller, TaskKind::Register, None, va, &body).await
}

/// Moves devices to a virtual account as a task that tier-assignment carries out. `sa` is the
/// smart account named in the path; a register names none and takes the devices' own.
async fn move_devices(
    s: &Catalyst,
    caller: &CatalystCaller,
    kind: TaskKind,
    sa: Option<String>,
    va: String,
    body: &DeviceUuids,
) -> Result<HttpResponse, Problem> {
    let caller = caller.require(Role::Operator)?;
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
        None => match store::smart_accounts_of(&mut c, &ids).await?.as_slice() {
            [one] => one.clone(),
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
                        many.join(", ")
                    ),
                ));
            }
        },
    };
    let known = store::devices_in(&mut c, &ids, &sa).await?;
    if known.len() != ids.len() {
        let known: std::collections::HashSet<Uuid> = known.into_iter().collect();
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
    let what = if kind == TaskKind::Register {
        "Registration"
    } else {
        "Transfer"
    };
    let progress = format!(
        "{what} of {} device(s) to virtual account {va} requested",
        ids.len()
    );
    store::request_move(
        &mut c,
        &NewMove {
            id,
            kind,
            smart_account: &sa,
            virtual_account: &va,
            device_ids: &ids,
            requested_by: &caller.name,
            progress: &progress,
        },
    )
    .await?;
    Ok(task_created(id))
}

/// Deregister exists only so scripts get a clear answer: a device leaves licensing by leaving
/// the inventory, which the inventory's own API does. The task fails at once, saying so.
#[utoipa::path(
    tag = "catalyst",
    request_body = DeviceUuids,
    security(("x-auth-token" = [])),
    responses(
        (status = 202, description = "A task that already ended with `isError: true`"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem),
    )
)]
#[put("/dna/intent/api/v1/licenses/smartAccount/virtualAccount/deregister")]
pub(crate) async fn deregister(
    s: web::Data<Catalyst>,
    body: web::Json<DeviceUuids>,
    caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let caller = caller.require(Role::Operator)?;
    let ids = parse_uuids(&body)?;
    let id = Uuid::new_v4();
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    store::insert_failed_task(
        &mut c,
        id,
        TaskKind::Deregister,
        "",
        &ids,
        &caller.name,
        NOT_SUPPORTED,
    )
    .await?;
    Ok(task_created(id))
}

/// A task, in Catalyst Center's shape: times in epoch milliseconds, `endTime` only once it
/// ended, `failureReason` only when it failed.
#[utoipa::path(
    tag = "catalyst",
    security(("x-auth-token" = [])),
    responses(
        (status = 200, description = "`{\"response\": {id, isError, progress, failureReason?, startTime, endTime?, lastUpdate, data, serviceType, username, rootId, version}, \"version\": \"1.0\"}`"),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
#[get("/dna/intent/api/v1/task/{task_id}")]
pub(crate) async fn get_task(
    s: web::Data<Catalyst>,
    task_id: web::Path<String>,
    _caller: CatalystCaller,
) -> Result<HttpResponse, Problem> {
    let raw = task_id.into_inner();
    let id = Uuid::parse_str(&raw).map_err(|_| Problem::not_found("task", &raw))?;
    let mut c = tally_platform::problem::conn(&s.pool).await?;
    let t = store::task(&mut c, id)
        .await?
        .ok_or_else(|| Problem::not_found("task", id))?;
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
/// the reason there is none. Once per message id (the scheduler's inbox, beside the task).
pub async fn transfer_accepted(
    s: &Catalyst,
    msg_id: &str,
    ev: proto::TransferAccepted,
) -> Result<(), HandlerError> {
    let Ok(task) = Uuid::parse_str(&ev.task_id) else {
        return Err(HandlerError::Poison(format!("task id {:?}", ev.task_id)));
    };
    let job_id = Uuid::parse_str(&ev.job_id).ok();
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
    let end = TaskEnd {
        failed,
        progress: &progress,
        failure_reason: failed.then_some(error.as_str()),
        job_id,
    };
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        store::finish_task(c, task, &end).await
    })
    .await?;
    Ok(())
}
