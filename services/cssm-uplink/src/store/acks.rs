//! `uplink.acks`: the ACK document CSSM returned for each device of a batch.

use super::schema::uplink::unmatched_acks;
use diesel::prelude::*;
use diesel::sql_types::{Array, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// ACKs of one batch as columns, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Debug, Default)]
pub struct NewAcks {
    pub device: Vec<Uuid>,
    /// Each device's report ids, comma-separated (arrays of arrays cannot be unnested by row).
    pub report_ids: Vec<String>,
    pub ack: Vec<String>,
}

/// Records the ACKs of `batch` (an ACK already recorded for a device is kept).
pub async fn insert(conn: &mut AsyncPgConnection, batch: Uuid, a: &NewAcks) -> QueryResult<usize> {
    diesel::sql_query(include_str!("sql/insert_acks.sql"))
        .bind::<SqlUuid, _>(batch)
        .bind::<Array<SqlUuid>, _>(&a.device)
        .bind::<Array<Text>, _>(&a.report_ids)
        .bind::<Array<Text>, _>(&a.ack)
        .execute(conn)
        .await
}

/// An ACK entry that matched no device of its batch, kept with why.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = unmatched_acks, check_for_backend(diesel::pg::Pg))]
pub struct NewUnmatched {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub udi_pid: Option<String>,
    pub udi_serial: Option<String>,
    pub report_ids: Vec<Option<i64>>,
    /// The ACK document, or what CSSM sent when it could not be read as one.
    pub ack: String,
    pub reason: String,
}

/// Records ACK entries that matched no device.
pub async fn insert_unmatched(
    conn: &mut AsyncPgConnection,
    rows: &[NewUnmatched],
) -> QueryResult<usize> {
    diesel::insert_into(unmatched_acks::table)
        .values(rows)
        .execute(conn)
        .await
}
