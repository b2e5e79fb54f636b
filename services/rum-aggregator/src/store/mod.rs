//! Every query the rum-aggregator runs, as typed functions on `schema.rs` (generated). Statements
//! the DSL cannot say (SKIP LOCKED slice claims, bulk `unnest` writes, the revision-guarded
//! upsert) are the `.sql` files in `sql/`, each bound by one function.

pub mod ack_imports;
pub mod collections;
pub mod devices;
pub mod policies;
pub mod reports;
pub mod schema;

pub use ack_imports::{AckImportState, Confirmation};
pub use collections::CollectionState;
pub use policies::PolicySource;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use schema::rum::{
    ack_imports as acks, collections as colls, devices as devs, quarantine, reports as reps,
};
use uuid::Uuid;

/// A page of a list: at most `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// The rows a list is narrowed to: one device's, one cycle's, both, or all.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    pub device_id: Option<Uuid>,
    pub cycle_id: Option<Uuid>,
}

/// What the collector knows and has queued.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub devices_known: i64,
    pub collections_pending: i64,
    pub ack_imports_pending: i64,
    pub reports_stored: i64,
    pub reports_quarantined: i64,
}

/// The collector's counts, read in one statement (one snapshot).
pub async fn status(conn: &mut AsyncPgConnection) -> QueryResult<Status> {
    let (devices_known, collections_pending, ack_imports_pending, reports_stored, quarantined) =
        diesel::select((
            devs::table
                .filter(diesel::dsl::not(devs::deleted))
                .count()
                .single_value(),
            colls::table
                .filter(colls::state.eq(CollectionState::Pending))
                .count()
                .single_value(),
            acks::table
                .filter(acks::state.eq(AckImportState::Pending))
                .count()
                .single_value(),
            reps::table.count().single_value(),
            quarantine::table.count().single_value(),
        ))
        .get_result::<(
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        )>(conn)
        .await?;
    Ok(Status {
        devices_known: devices_known.unwrap_or(0),
        collections_pending: collections_pending.unwrap_or(0),
        ack_imports_pending: ack_imports_pending.unwrap_or(0),
        reports_stored: reports_stored.unwrap_or(0),
        reports_quarantined: quarantined.unwrap_or(0),
    })
}
