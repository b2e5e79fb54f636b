//! The compliance roll-ups: counts per dimension key, status and criticality, from the counts a
//! trigger maintains on `sched.devices` (`sched.compliance_counts`).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

tally_store::text_enum! {
    /// A device's compliance status, from best to worst.
    pub enum Status {
        InCompliance = "in_compliance",
        AckPending = "ack_pending",
        OutOfCompliance = "out_of_compliance",
        AckOverdue = "ack_overdue",
    }
}

tally_store::text_enum! {
    /// What a roll-up groups by (`sched.compliance_keys` gives each device's key per dimension).
    pub enum Dimension {
        SmartAccount = "smart_account",
        VirtualAccount = "virtual_account",
        Site = "site",
        Tier = "tier",
    }
}

/// Devices of one key with one status and criticality.
#[derive(Debug, QueryableByName)]
pub struct Count {
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = Text)]
    pub status: Status,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub critical: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// Counts at `at` from the maintained counts, looking one by one only at devices whose stored
/// status has expired by `at`. Valid for an `at` no earlier than the stored statuses.
pub async fn maintained(
    c: &mut AsyncPgConnection,
    by: Dimension,
    at: DateTime<Utc>,
) -> Result<Vec<Count>, diesel::result::Error> {
    diesel::sql_query(include_str!("sql/counts_maintained.sql"))
        .bind::<Text, _>(by)
        .bind::<Timestamptz, _>(at)
        .load(c)
        .await
}

/// Counts at `at` from every device's stored deadline (any `at`, past ones too).
pub async fn every_device(
    c: &mut AsyncPgConnection,
    by: Dimension,
    at: DateTime<Utc>,
) -> Result<Vec<Count>, diesel::result::Error> {
    diesel::sql_query(include_str!("sql/counts_every_device.sql"))
        .bind::<Text, _>(by)
        .bind::<Timestamptz, _>(at)
        .load(c)
        .await
}
