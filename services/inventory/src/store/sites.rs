//! `inventory.sites`: site names and descriptions (devices name their site by name).

use super::schema::inventory::{devices, sites};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::HashMap;

/// A site with how many devices name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRow {
    pub name: String,
    pub description: String,
    pub devices: i64,
}

/// Every site, by name, with its device count.
pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<SiteRow>> {
    let all: Vec<(String, String)> = sites::table
        .select((sites::name, sites::description))
        .order(sites::name)
        .load(conn)
        .await?;
    let counts: Vec<(String, i64)> = devices::table
        .group_by(devices::site)
        .select((devices::site, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    let counts: HashMap<_, _> = counts.into_iter().collect();
    Ok(all
        .into_iter()
        .map(|(name, description)| SiteRow {
            devices: counts.get(&name).copied().unwrap_or(0),
            name,
            description,
        })
        .collect())
}

/// Creates the site, or sets the description of the one that exists.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    name: &str,
    description: &str,
) -> QueryResult<usize> {
    diesel::insert_into(sites::table)
        .values((sites::name.eq(name), sites::description.eq(description)))
        .on_conflict(sites::name)
        .do_update()
        .set(sites::description.eq(description))
        .execute(conn)
        .await
}
