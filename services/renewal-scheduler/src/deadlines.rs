//! The deadline engine: each device's reporting deadline, role and status, stored so roll-ups
//! are a read of maintained counts.

pub use crate::compliance::{refresh, refresh_ids, sweep};
