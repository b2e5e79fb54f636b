//! `tiers.history`: every tier change, virtual account change and ACK per device.

use super::schema::tiers::{devices, history};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

tally_store::text_enum! {
    /// What a history entry is about.
    pub enum HistoryKind {
        /// The device's levels (`<network> addon <dna>`).
        Tier = "tier",
        VirtualAccount = "virtual_account",
        Ack = "ack",
    }
}

tally_store::text_enum! {
    /// What happened.
    pub enum HistoryEvent {
        /// A job configured the device.
        Configured = "configured",
        /// The device's reports show it runs the level.
        Confirmed = "confirmed",
        /// A rollback configured the old level back.
        Reverted = "reverted",
        /// The device installed an ACK.
        Acknowledged = "acknowledged",
    }
}

/// History entries as columns, for one `INSERT ... SELECT FROM unnest(...)`. An empty
/// `from`/`to` value is stored as none.
#[derive(Debug, Default)]
pub struct NewEntries {
    pub devices: Vec<Uuid>,
    pub kinds: Vec<HistoryKind>,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

impl NewEntries {
    pub fn push(&mut self, device: Uuid, kind: HistoryKind, from: String, to: String) {
        self.devices.push(device);
        self.kinds.push(kind);
        self.from.push(from);
        self.to.push(to);
    }
}

/// Writes the entries, all of one `event`, `job` and `detail`.
pub async fn insert(
    c: &mut AsyncPgConnection,
    e: &NewEntries,
    event: HistoryEvent,
    job: Option<Uuid>,
    detail: &str,
) -> QueryResult<()> {
    if e.devices.is_empty() {
        return Ok(());
    }
    diesel::sql_query(include_str!("sql/insert_history.sql"))
        .bind::<Array<SqlUuid>, _>(&e.devices)
        .bind::<Text, _>(event)
        .bind::<Array<Text>, _>(&e.kinds)
        .bind::<Array<Text>, _>(&e.from)
        .bind::<Array<Text>, _>(&e.to)
        .bind::<Nullable<SqlUuid>, _>(job)
        .bind::<Text, _>(detail)
        .execute(c)
        .await?;
    Ok(())
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema, Queryable)]
pub struct HistoryEntry {
    pub id: i64,
    pub device_id: Uuid,
    pub hostname: Option<String>,
    pub at: DateTime<Utc>,
    /// tier, virtual_account, ack.
    pub kind: String,
    /// configured, confirmed, reverted, acknowledged.
    pub event: String,
    pub from_value: Option<String>,
    pub to_value: Option<String>,
    pub job_id: Option<Uuid>,
    pub detail: String,
}

/// What the history is narrowed to; every field set must match.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryQuery {
    pub device_id: Option<Uuid>,
    pub kind: Option<HistoryKind>,
    pub job_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Entries after this id.
    pub after: i64,
}

/// Entries, oldest first, with the device's hostname when the ledger still knows it.
pub async fn list(
    c: &mut AsyncPgConnection,
    f: HistoryQuery,
    limit: i64,
) -> QueryResult<Vec<HistoryEntry>> {
    let mut q = history::table
        .left_join(devices::table.on(devices::id.eq(history::device_id)))
        .filter(history::id.gt(f.after))
        .select((
            history::id,
            history::device_id,
            devices::hostname.nullable(),
            history::at,
            history::kind,
            history::event,
            history::from_value,
            history::to_value,
            history::job_id,
            history::detail,
        ))
        .into_boxed();
    if let Some(d) = f.device_id {
        q = q.filter(history::device_id.eq(d));
    }
    if let Some(k) = f.kind {
        q = q.filter(history::kind.eq(k));
    }
    if let Some(j) = f.job_id {
        q = q.filter(history::job_id.eq(j));
    }
    if let Some(s) = f.since {
        q = q.filter(history::at.ge(s));
    }
    if let Some(u) = f.until {
        q = q.filter(history::at.lt(u));
    }
    q.order(history::id).limit(limit).load(c).await
}
