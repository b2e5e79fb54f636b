//! `/api/v1/uplink/accounts`: the account directory (names -> CSSM ids), the ids an operator
//! gives, and a refresh on request.

use crate::Uplink;
use crate::accounts::{self, RefreshError};
use crate::store::accounts::{self as store, Entry, Source};
use actix_web::{HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tally_platform::{FieldError, Problem};
use utoipa::{IntoParams, ToSchema};

pub fn routes(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(list)
        .service(set)
        .service(remove)
        .service(refresh);
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountEntry {
    /// `cssm` (listed by v2/accounts/search) or `operator` (given by hand; wins).
    #[schema(value_type = String)]
    pub source: Source,
    /// The smart account's domain as CSSM lists it, or the name the operator gave.
    pub smart_account: String,
    pub smart_account_name: Option<String>,
    pub virtual_account: String,
    pub smart_account_id: String,
    pub virtual_account_id: String,
    pub updated_at: DateTime<Utc>,
}

impl AccountEntry {
    fn of(e: Entry, updated_at: DateTime<Utc>) -> Self {
        Self {
            source: e.source,
            smart_account: e.smart_account,
            smart_account_name: e.smart_account_name,
            virtual_account: e.virtual_account,
            smart_account_id: e.smart_account_id,
            virtual_account_id: e.virtual_account_id,
            updated_at,
        }
    }
}

/// A pair the inventory uses that the directory cannot resolve, with the batches waiting on it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnresolvedPair {
    pub smart_account: String,
    pub virtual_account: String,
    pub batches_waiting: usize,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountDirectory {
    /// When CSSM was last asked (`None`: never).
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed (`None`: it worked, or none ran).
    pub refresh_error: Option<String>,
    pub smart_accounts: i32,
    pub virtual_accounts: i32,
    pub entries: Vec<AccountEntry>,
    /// Pairs of batches that failed because CSSM does not know them; they go again by themselves
    /// once a refresh or an operator's ids resolve them.
    pub unresolved: Vec<UnresolvedPair>,
}

/// The account directory: every (smart account, virtual account) and the ids CSSM knows it by.
#[utoipa::path(tag = "uplink", responses((status = 200, body = AccountDirectory)))]
#[get("/uplink/accounts")]
async fn list(up: web::Data<Uplink>) -> Result<web::Json<AccountDirectory>, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let listed = store::listed(&mut conn).await?;
    let entries: Vec<Entry> = listed.iter().map(|(e, _)| e.clone()).collect();
    let last = store::last_refresh(&mut conn).await?;
    let waiting = store::unresolved_list(&mut conn).await?;
    let mut unresolved: BTreeMap<(String, String), UnresolvedPair> = BTreeMap::new();
    for (sa, va) in waiting {
        let reason = accounts::resolve(&entries, &sa, &va)
            .err()
            .unwrap_or_else(|| {
                "resolves now; its batches go again at the next refresh or operator change".into()
            });
        unresolved
            .entry((sa.clone(), va.clone()))
            .or_insert(UnresolvedPair {
                smart_account: sa,
                virtual_account: va,
                batches_waiting: 0,
                reason,
            })
            .batches_waiting += 1;
    }
    Ok(web::Json(AccountDirectory {
        refreshed_at: last.as_ref().map(|r| r.at),
        refresh_error: last.as_ref().and_then(|r| r.error.clone()),
        smart_accounts: last.as_ref().map_or(0, |r| r.smart_accounts),
        virtual_accounts: last.as_ref().map_or(0, |r| r.virtual_accounts),
        entries: listed
            .into_iter()
            .map(|(e, updated_at)| AccountEntry::of(e, updated_at))
            .collect(),
        unresolved: unresolved.into_values().collect(),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetAccountIds {
    /// The smart account as the inventory names it (matched case-insensitively).
    pub smart_account: String,
    /// The virtual account as the inventory names it (matched exactly).
    pub virtual_account: String,
    pub smart_account_id: String,
    pub virtual_account_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountIdsSet {
    pub entry: AccountEntry,
    /// Reports of batches that waited on this pair and go again now.
    pub requeued_reports: usize,
}

/// Longest name or id taken.
const MAX_FIELD: usize = 200;

fn check(field: &str, v: &str, errors: &mut Vec<FieldError>) {
    let message = if v.trim().is_empty() {
        "must not be empty".to_owned()
    } else if v.len() > MAX_FIELD {
        format!("is {} bytes; at most {MAX_FIELD}", v.len())
    } else if v.chars().any(char::is_control) {
        "must not hold control characters (it goes into an HTTP header)".to_owned()
    } else if v != v.trim() {
        "must not start or end with white space".to_owned()
    } else {
        return;
    };
    errors.push(FieldError {
        field: field.into(),
        message,
    });
}

/// Give the CSSM ids of a pair by hand (an air-gapped site, or an API client that may not
/// search). They win over what CSSM lists; batches waiting on the pair go again.
#[utoipa::path(tag = "uplink", request_body = SetAccountIds, responses((status = 200, body = AccountIdsSet), (status = 422, body = Problem)))]
#[put("/uplink/accounts")]
async fn set(
    up: web::Data<Uplink>,
    body: web::Json<SetAccountIds>,
) -> Result<web::Json<AccountIdsSet>, Problem> {
    let b = body.into_inner();
    let mut errors = Vec::new();
    check("smart_account", &b.smart_account, &mut errors);
    check("virtual_account", &b.virtual_account, &mut errors);
    check("smart_account_id", &b.smart_account_id, &mut errors);
    check("virtual_account_id", &b.virtual_account_id, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let e = Entry {
        source: Source::Operator,
        smart_account: b.smart_account,
        smart_account_name: None,
        virtual_account: b.virtual_account,
        smart_account_id: b.smart_account_id,
        virtual_account_id: b.virtual_account_id,
    };
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let requeued_reports = {
        use diesel_async::AsyncConnection;
        conn.transaction(async |c| {
            store::set_operator(c, &e).await?;
            accounts::requeue_resolvable(c).await
        })
        .await?
    };
    tracing::info!(smart_account = %e.smart_account, virtual_account = %e.virtual_account, requeued_reports, "operator gave account ids");
    Ok(web::Json(AccountIdsSet {
        entry: AccountEntry::of(e, Utc::now()),
        requeued_reports,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PairQuery {
    pub smart_account: String,
    pub virtual_account: String,
}

/// Forget the ids an operator gave for a pair (CSSM's, if it lists the pair, apply again).
#[utoipa::path(tag = "uplink", params(PairQuery), responses((status = 204), (status = 404, body = Problem)))]
#[delete("/uplink/accounts")]
async fn remove(up: web::Data<Uplink>, q: web::Query<PairQuery>) -> Result<HttpResponse, Problem> {
    let mut conn = tally_platform::problem::conn(&up.pool).await?;
    let n = store::delete_operator(&mut conn, &q.smart_account, &q.virtual_account).await?;
    if n == 0 {
        return Err(Problem::not_found(
            "operator account ids for",
            format!("{} / {}", q.smart_account, q.virtual_account),
        ));
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountsRefreshed {
    pub smart_accounts: usize,
    pub virtual_accounts: usize,
    pub requeued_reports: usize,
}

/// Ask CSSM for the accounts now (`v2/accounts/search`, every page). 409 in offline mode; 502
/// with CSSM's reason when the search fails.
#[utoipa::path(tag = "uplink", responses((status = 200, body = AccountsRefreshed), (status = 409, body = Problem), (status = 502, body = Problem)))]
#[post("/uplink/accounts/refresh")]
async fn refresh(up: web::Data<Uplink>) -> Result<web::Json<AccountsRefreshed>, Problem> {
    match accounts::refresh(&up).await {
        Ok(r) => Ok(web::Json(AccountsRefreshed {
            smart_accounts: r.smart_accounts,
            virtual_accounts: r.virtual_accounts,
            requeued_reports: r.requeued_reports,
        })),
        Err(e @ RefreshError::Offline) => Err(Problem::conflict("offline-mode", e.to_string())),
        Err(e @ RefreshError::Cssm(_)) => Err(Problem::new(
            actix_web::http::StatusCode::BAD_GATEWAY,
            "cssm-refused",
            e.to_string(),
        )),
        Err(RefreshError::Store(e)) => Err(e.into()),
    }
}
