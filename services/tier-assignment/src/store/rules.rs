//! `tiers.rules`: the rules document replaced through the API; no row means the shipped defaults.

use super::schema::tiers::rules;
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tally_domain::rules::Rules;

/// The table's only row.
const ID: i16 = 1;

pub struct CurrentRules {
    pub rules: Rules,
    /// 0 for the shipped defaults.
    pub version: i64,
}

pub async fn load_rules(c: &mut AsyncPgConnection) -> QueryResult<CurrentRules> {
    let row: Option<(serde_json::Value, i64)> = rules::table
        .find(ID)
        .select((rules::doc, rules::version))
        .first(c)
        .await
        .optional()?;
    Ok(match row {
        // Stored rules were validated when written; a row that no longer parses (written by a
        // newer release) falls back to the defaults rather than stopping every job.
        Some((doc, version)) => match serde_json::from_value::<Rules>(doc) {
            Ok(rules) => CurrentRules { rules, version },
            Err(e) => {
                tracing::error!(error = %e, "stored tier rules do not parse; using the defaults");
                CurrentRules {
                    rules: Rules::defaults(),
                    version: 0,
                }
            }
        },
        None => CurrentRules {
            rules: Rules::defaults(),
            version: 0,
        },
    })
}

/// Stores `doc` (already validated) as the rules and returns its version: 1, or one more than
/// the rules it replaces.
pub async fn replace(
    c: &mut AsyncPgConnection,
    doc: &serde_json::Value,
    by: &str,
) -> QueryResult<i64> {
    diesel::insert_into(rules::table)
        .values((
            rules::id.eq(ID),
            rules::doc.eq(doc),
            rules::version.eq(1),
            rules::updated_by.eq(by),
        ))
        .on_conflict(rules::id)
        .do_update()
        .set((
            rules::doc.eq(excluded(rules::doc)),
            rules::version.eq(rules::version + 1),
            rules::updated_by.eq(excluded(rules::updated_by)),
            rules::updated_at.eq(now),
        ))
        .returning(rules::version)
        .get_result(c)
        .await
}

/// Goes back to the shipped defaults.
pub async fn reset(c: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::delete(rules::table).execute(c).await
}
