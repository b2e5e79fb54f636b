//! `sched.alerts` (each alert once per subject, kind, due time and threshold) and
//! `sched.silences`.

use super::sched::{alerts, silences};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Result<T> = std::result::Result<T, diesel::result::Error>;

// An alert as it is stored, listed and sent as CSV (the columns in this order). A plain comment:
// a doc comment would change the OpenAPI schema.
#[derive(
    Debug, Default, Serialize, Deserialize, ToSchema, Queryable, Selectable, QueryableByName,
)]
#[diesel(table_name = alerts, check_for_backend(diesel::pg::Pg))]
pub struct Alert {
    pub id: Uuid,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub device_id: Option<Uuid>,
    pub hostname: String,
    pub site: String,
    pub virtual_account: String,
    pub due: DateTime<Utc>,
    pub threshold: String,
    pub message: String,
    pub silenced: bool,
    pub fired_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
}

/// A new alert's row.
#[derive(Insertable)]
#[diesel(table_name = alerts)]
pub struct NewAlertRow<'a> {
    pub id: Uuid,
    pub subject: &'a str,
    pub kind: &'a str,
    pub due: DateTime<Utc>,
    pub threshold: &'a str,
    pub severity: &'a str,
    pub device_id: Option<Uuid>,
    pub hostname: &'a str,
    pub site: &'a str,
    pub virtual_account: &'a str,
    pub message: &'a str,
    pub silenced: bool,
    pub fired_at: DateTime<Utc>,
}

/// Inserts the alert unless one with its subject, kind, due time and threshold exists; true
/// when it was new.
pub async fn insert_once(c: &mut AsyncPgConnection, a: &NewAlertRow<'_>) -> Result<bool> {
    let n = diesel::insert_into(alerts::table)
        .values(a)
        .on_conflict((
            alerts::subject,
            alerts::kind,
            alerts::due,
            alerts::threshold,
        ))
        .do_nothing()
        .execute(c)
        .await?;
    Ok(n == 1)
}

/// What an alert already fired for (its key).
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = alerts, check_for_backend(diesel::pg::Pg))]
pub struct Sent {
    pub subject: String,
    pub due: DateTime<Utc>,
    pub threshold: String,
}

/// The alerts of `kind` already fired about these subjects.
pub async fn sent(c: &mut AsyncPgConnection, kind: &str, subjects: &[String]) -> Result<Vec<Sent>> {
    alerts::table
        .filter(alerts::kind.eq(kind))
        .filter(alerts::subject.eq_any(subjects))
        .select(Sent::as_select())
        .load(c)
        .await
}

/// Which alerts a list holds (`None` matches any).
#[derive(Debug, Default, Clone)]
pub struct AlertFilter {
    /// Some(true): not acknowledged; Some(false): acknowledged.
    pub open: Option<bool>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub device_id: Option<Uuid>,
}

/// Alerts, newest first.
pub async fn list(c: &mut AsyncPgConnection, f: &AlertFilter, limit: i64) -> Result<Vec<Alert>> {
    let mut q = alerts::table.select(Alert::as_select()).into_boxed();
    match f.open {
        Some(true) => q = q.filter(alerts::acknowledged_at.is_null()),
        Some(false) => q = q.filter(alerts::acknowledged_at.is_not_null()),
        None => {}
    }
    if let Some(k) = &f.kind {
        q = q.filter(alerts::kind.eq(k));
    }
    if let Some(s) = &f.severity {
        q = q.filter(alerts::severity.eq(s));
    }
    if let Some(d) = f.device_id {
        q = q.filter(alerts::device_id.eq(d));
    }
    q.order((alerts::fired_at.desc(), alerts::id))
        .limit(limit)
        .load(c)
        .await
}

/// Marks an alert acknowledged by `by` (the first acknowledgement stays); `None` when there is
/// no such alert.
pub async fn acknowledge(c: &mut AsyncPgConnection, id: Uuid, by: &str) -> Result<Option<Alert>> {
    diesel::sql_query(include_str!("sql/ack_alert.sql"))
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<Text, _>(by)
        .get_result(c)
        .await
        .optional()
}

/// Takes the transaction-scoped advisory lock `key` if it is free.
pub async fn try_lock(c: &mut AsyncPgConnection, key: i64) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let l: Locked = diesel::sql_query(include_str!("sql/try_alert_lock.sql"))
        .bind::<BigInt, _>(key)
        .get_result(c)
        .await?;
    Ok(l.locked)
}

// A silence: matching alerts are recorded but not delivered until it ends.
#[derive(Debug, Serialize, Deserialize, ToSchema, Queryable, Selectable)]
#[diesel(table_name = silences, check_for_backend(diesel::pg::Pg))]
pub struct Silence {
    pub id: Uuid,
    pub kind: Option<String>,
    pub site: Option<String>,
    pub device_id: Option<Uuid>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
}

impl Silence {
    /// Fields left empty match anything.
    pub fn matches(&self, kind: &str, site: &str, device: Option<Uuid>) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
            && self.site.as_deref().is_none_or(|s| s == site)
            && self.device_id.is_none_or(|id| Some(id) == device)
    }
}

/// Silences still in force at `now`.
pub async fn active_silences(
    c: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Silence>> {
    silences::table
        .filter(silences::until.gt(now))
        .select(Silence::as_select())
        .load(c)
        .await
}

/// Every silence, latest ending first.
pub async fn list_silences(c: &mut AsyncPgConnection) -> Result<Vec<Silence>> {
    silences::table
        .order(silences::until.desc())
        .select(Silence::as_select())
        .load(c)
        .await
}

#[derive(Insertable)]
#[diesel(table_name = silences)]
pub struct NewSilenceRow<'a> {
    pub id: Uuid,
    pub kind: Option<&'a str>,
    pub site: Option<&'a str>,
    pub device_id: Option<Uuid>,
    pub until: DateTime<Utc>,
    pub reason: &'a str,
    pub created_by: &'a str,
}

pub async fn create_silence(c: &mut AsyncPgConnection, s: &NewSilenceRow<'_>) -> Result<Silence> {
    diesel::insert_into(silences::table)
        .values(s)
        .returning(Silence::as_returning())
        .get_result(c)
        .await
}

/// True when it existed.
pub async fn delete_silence(c: &mut AsyncPgConnection, id: Uuid) -> Result<bool> {
    let n = diesel::delete(silences::table.find(id)).execute(c).await?;
    Ok(n == 1)
}
