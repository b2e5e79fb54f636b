//! Every query of the renewal scheduler: typed functions over `schema::sched` (generated), with
//! the statements the DSL cannot say (bulk `unnest` writes, `SKIP LOCKED` claims, the compliance
//! functions and trigger-backed counts) in `sql/`, each bound by one function.

pub mod alerts;
pub mod catalyst;
pub mod compliance;
pub mod cycles;
pub mod devices;
pub mod pools;
pub mod schema;

pub use schema::sched;

/// How long before its deadline a device counts as ACK pending, as the SQL files spell it:
/// the domain's warning window in seconds (days would follow the session's time zone across
/// DST). A unit test holds it to `WARNING_DAYS`.
pub const WARNING_WINDOW_SQL: &str = "interval '2592000 seconds'";

/// Devices looked at per statement when refreshing or sweeping stored statuses (the `LIMIT` in
/// `claim_unassessed.sql` and `sweep.sql`).
pub const REFRESH_CHUNK: usize = 5000;

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWED: &[(&str, &str)] = &[
        (
            "store_assessments",
            include_str!("sql/store_assessments.sql"),
        ),
        ("sweep", include_str!("sql/sweep.sql")),
        (
            "counts_maintained",
            include_str!("sql/counts_maintained.sql"),
        ),
        (
            "counts_every_device",
            include_str!("sql/counts_every_device.sql"),
        ),
        ("devices_page", include_str!("sql/devices_page.sql")),
        ("at_risk_page", include_str!("sql/at_risk_page.sql")),
    ];

    #[test]
    fn the_sql_files_use_the_domains_warning_window_and_chunk() {
        let secs = tally_domain::policy::WARNING_DAYS * 86_400;
        assert_eq!(WARNING_WINDOW_SQL, format!("interval '{secs} seconds'"));
        for (name, sql) in WINDOWED {
            assert!(sql.contains(WARNING_WINDOW_SQL), "{name}.sql");
            let intervals = sql.matches("interval '").count();
            assert_eq!(
                intervals,
                sql.matches(WARNING_WINDOW_SQL).count(),
                "{name}.sql"
            );
        }
        for sql in [
            include_str!("sql/claim_unassessed.sql"),
            include_str!("sql/sweep.sql"),
        ] {
            assert!(sql.contains(&format!("LIMIT {REFRESH_CHUNK} ")), "{sql}");
        }
    }
}
