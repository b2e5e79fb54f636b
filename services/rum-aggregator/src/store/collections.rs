//! `rum.collections`: the durable queue of one row per device to collect in a cycle.

use super::schema::rum::{collections, devices};
use super::{Page, Scope};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a device's collection in a cycle stands.
    pub enum CollectionState { Pending = "pending", Done = "done", Failed = "failed" }
}

/// Queues one collection per known device for the cycle; returns how many rows it queued (a
/// redelivered cycle queues none twice).
pub async fn queue_cycle(conn: &mut AsyncPgConnection, cycle: Uuid) -> QueryResult<usize> {
    diesel::insert_into(collections::table)
        .values(
            devices::table
                .filter(diesel::dsl::not(devices::deleted))
                .select((cycle.into_sql::<SqlUuid>(), devices::id)),
        )
        .into_columns((collections::cycle_id, collections::device_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
}

/// A pending collection with what is needed to reach its device.
#[derive(QueryableByName, Debug, Clone)]
pub struct CollectionJob {
    #[diesel(sql_type = SqlUuid)]
    pub cycle_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub device_id: Uuid,
    #[diesel(sql_type = Text)]
    pub udi_pid: String,
    #[diesel(sql_type = Text)]
    pub udi_serial: String,
    #[diesel(sql_type = Text)]
    pub base_url: String,
    #[diesel(sql_type = Text)]
    pub username: String,
    #[diesel(sql_type = Text)]
    pub password_sealed: String,
    #[diesel(sql_type = Text)]
    pub smart_account: String,
    #[diesel(sql_type = Text)]
    pub virtual_account: String,
    #[diesel(sql_type = Bool)]
    pub deleted: bool,
}

/// Locks up to `limit` pending collections for the current transaction; other workers skip them.
pub async fn claim_slice(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> QueryResult<Vec<CollectionJob>> {
    diesel::sql_query(include_str!("sql/claim_collections.sql"))
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

/// Per-device outcomes of a slice as columns, for one `UPDATE ... FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub cycle: Vec<Uuid>,
    pub device: Vec<Uuid>,
    pub state: Vec<CollectionState>,
    pub error: Vec<Option<String>>,
    pub reports_new: Vec<i32>,
}

/// Records each collection's outcome and counts the attempt.
pub async fn finish(conn: &mut AsyncPgConnection, o: &Outcomes) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/finish_collections.sql"))
        .bind::<Array<SqlUuid>, _>(&o.cycle)
        .bind::<Array<SqlUuid>, _>(&o.device)
        .bind::<Array<Text>, _>(&o.state)
        .bind::<Array<Nullable<Text>>, _>(&o.error)
        .bind::<Array<Int4>, _>(&o.reports_new)
        .execute(conn)
        .await
}

/// A device's collection outcome in one cycle.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = collections, check_for_backend(diesel::pg::Pg))]
pub struct CollectionRow {
    pub cycle_id: Uuid,
    pub device_id: Uuid,
    pub state: CollectionState,
    pub error: Option<String>,
    pub reports_new: i32,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Collections in `scope` (and `state`), by cycle then device.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    state: Option<CollectionState>,
    page: Page,
) -> QueryResult<Vec<CollectionRow>> {
    let mut q = collections::table
        .select(CollectionRow::as_select())
        .into_boxed();
    if let Some(d) = scope.device_id {
        q = q.filter(collections::device_id.eq(d));
    }
    if let Some(c) = scope.cycle_id {
        q = q.filter(collections::cycle_id.eq(c));
    }
    if let Some(s) = state {
        q = q.filter(collections::state.eq(s));
    }
    q.order((collections::cycle_id, collections::device_id))
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}
