//! Every query of the renewal scheduler: typed functions over `schema::sched`, with the
//! statements the DSL cannot say (bulk unnest upserts, revision guards, locks) in `.sql` files.

pub mod catalyst;
pub mod schema;
