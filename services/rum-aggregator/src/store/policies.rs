//! `rum.device_policies`: each device's own policy as read from its `cisco-smart-license` state
//! during collection, or Cisco's default assumed with the reason.

use super::schema::rum::device_policies;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a stored policy comes from: read from the device, or assumed (Cisco's default).
    pub enum PolicySource { Device = "device", Assumed = "assumed" }
}

/// Policies to record, as columns for one `INSERT ... SELECT FROM unnest(...)`; one row per
/// device.
#[derive(Debug, Default)]
pub struct NewPolicies {
    pub device: Vec<Uuid>,
    pub source: Vec<PolicySource>,
    pub reason: Vec<Option<String>>,
    /// `tally_domain::policy::Policy` as JSON.
    pub policy: Vec<serde_json::Value>,
    pub policy_type: Vec<Option<String>>,
    pub ack_required: Vec<bool>,
    /// The device's leaves as read (`tally_southbound::DevicePolicy`).
    pub device_policy: Vec<Option<serde_json::Value>>,
    pub installed_at: Vec<Option<DateTime<Utc>>>,
    pub last_ack_received: Vec<Option<DateTime<Utc>>>,
    pub device_next_ack_deadline: Vec<Option<DateTime<Utc>>>,
    pub notes: Vec<Option<String>>,
    pub read_failed: Vec<bool>,
    pub read_at: Vec<DateTime<Utc>>,
}

/// Records the policies; a failed read does not replace a policy read from the device.
pub async fn record(conn: &mut AsyncPgConnection, new: &NewPolicies) -> QueryResult<usize> {
    if new.device.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(include_str!("sql/record_device_policies.sql"))
        .bind::<Array<SqlUuid>, _>(&new.device)
        .bind::<Array<Text>, _>(&new.source)
        .bind::<Array<Nullable<Text>>, _>(&new.reason)
        .bind::<Array<Jsonb>, _>(&new.policy)
        .bind::<Array<Nullable<Text>>, _>(&new.policy_type)
        .bind::<Array<Bool>, _>(&new.ack_required)
        .bind::<Array<Nullable<Jsonb>>, _>(&new.device_policy)
        .bind::<Array<Nullable<Timestamptz>>, _>(&new.installed_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(&new.last_ack_received)
        .bind::<Array<Nullable<Timestamptz>>, _>(&new.device_next_ack_deadline)
        .bind::<Array<Nullable<Text>>, _>(&new.notes)
        .bind::<Array<Bool>, _>(&new.read_failed)
        .bind::<Array<Timestamptz>, _>(&new.read_at)
        .execute(conn)
        .await
}

/// A device's stored policy.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = device_policies, check_for_backend(diesel::pg::Pg))]
pub struct PolicyRow {
    pub device_id: Uuid,
    pub source: PolicySource,
    pub reason: Option<String>,
    pub policy: serde_json::Value,
    pub policy_type: Option<String>,
    pub ack_required: bool,
    pub device_policy: Option<serde_json::Value>,
    pub installed_at: Option<DateTime<Utc>>,
    pub last_ack_received: Option<DateTime<Utc>>,
    pub device_next_ack_deadline: Option<DateTime<Utc>>,
    pub notes: Option<String>,
    pub read_failed: bool,
    pub read_at: DateTime<Utc>,
}

/// Stored policies (of one device, or all), by device id.
pub async fn list(
    conn: &mut AsyncPgConnection,
    device: Option<Uuid>,
    page: super::Page,
) -> QueryResult<Vec<PolicyRow>> {
    let mut q = device_policies::table
        .select(PolicyRow::as_select())
        .into_boxed();
    if let Some(d) = device {
        q = q.filter(device_policies::device_id.eq(d));
    }
    q.order(device_policies::device_id)
        .limit(page.limit)
        .offset(page.offset)
        .load(conn)
        .await
}

/// The last ACK received each of `ids` showed in a read of its state that worked, since `since`
/// (a device without such a read is absent): what it held before an import, without asking it
/// again.
pub async fn recent_last_acks(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    since: DateTime<Utc>,
) -> QueryResult<Vec<(Uuid, Option<DateTime<Utc>>)>> {
    device_policies::table
        .filter(device_policies::device_id.eq_any(ids))
        .filter(device_policies::source.eq(PolicySource::Device))
        .filter(device_policies::read_failed.eq(false))
        .filter(device_policies::read_at.ge(since))
        .select((
            device_policies::device_id,
            device_policies::last_ack_received,
        ))
        .load(conn)
        .await
}
