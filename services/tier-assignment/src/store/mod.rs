//! Every query tier-assignment runs, as typed functions on `schema.rs` (generated). Statements
//! the DSL cannot say (the SKIP LOCKED claims, bulk `unnest` writes, `UPDATE ... FROM`, the CTE
//! that writes a job's items with its ledger rows, the holdings count over a union) are the
//! `.sql` files in `sql/`, each bound by one function.

pub mod devices;
pub mod history;
pub mod items;
pub mod jobs;
pub mod pools;
pub mod rules;
pub mod schema;

pub use devices::{DeviceState, LedgerDevice, like, select_devices};
pub use history::{HistoryEntry, HistoryEvent, HistoryKind};
pub use items::{ItemState, JobItem};
pub use jobs::{Job, JobState};
pub use pools::{awaiting_reload, held, quantities};
pub use rules::{CurrentRules, load_rules};

use diesel::sql_types::{Nullable, Text};

diesel::define_sql_function!(fn coalesce(x: Nullable<Text>, y: Nullable<Text>) -> Nullable<Text>);
