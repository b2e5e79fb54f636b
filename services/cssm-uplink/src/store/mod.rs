//! Every query the uplink runs, as typed functions on `schema.rs` (generated). Statements the
//! DSL cannot say (the SKIP LOCKED claims, bulk `unnest` writes, the forming lock) are the `.sql`
//! files in `sql/`, each bound by one function. Callers own the transactions.

pub mod accounts;
pub mod acks;
pub mod batches;
pub mod exports;
pub mod reports;
pub mod schema;

pub use batches::{BatchMode, BatchState};
pub use reports::ReportState;
