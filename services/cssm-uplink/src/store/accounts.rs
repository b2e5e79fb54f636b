//! `uplink.accounts` (the account directory) and `uplink.account_refreshes` (its last refresh).

use super::schema::uplink::{account_refreshes, accounts, batches};
use super::{BatchMode, BatchState};
use crate::store::batches::ErrorClass;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

tally_store::text_enum! {
    /// Where a directory entry's ids come from: CSSM's `v2/accounts/search`, or an operator.
    pub enum Source { Cssm = "cssm", Operator = "operator" }
}

/// One directory entry: a (smart account, virtual account) pair and its CSSM ids.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = accounts, check_for_backend(diesel::pg::Pg))]
pub struct Entry {
    pub source: Source,
    /// The smart account's `domain` (cssm rows) or the name the operator gave.
    pub smart_account: String,
    /// The smart account's `name` as CSSM lists it, when it has one.
    pub smart_account_name: Option<String>,
    pub virtual_account: String,
    pub smart_account_id: String,
    pub virtual_account_id: String,
}

/// Every entry with when it was last written, operator ones first.
pub async fn listed(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(Entry, DateTime<Utc>)>> {
    accounts::table
        .select((Entry::as_select(), accounts::updated_at))
        .order((
            accounts::source.desc(),
            accounts::smart_account,
            accounts::virtual_account,
        ))
        .load(conn)
        .await
}

/// Every entry, operator ones first.
pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Entry>> {
    Ok(listed(conn).await?.into_iter().map(|(e, _)| e).collect())
}

/// Replaces every `cssm` entry with what a refresh found.
pub async fn replace_cssm(conn: &mut AsyncPgConnection, rows: &[Entry]) -> QueryResult<()> {
    diesel::delete(accounts::table.filter(accounts::source.eq(Source::Cssm)))
        .execute(conn)
        .await?;
    // Postgres takes at most 65,535 binds a statement: 6 columns a row.
    for chunk in rows.chunks(10_000) {
        diesel::insert_into(accounts::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Writes (or overwrites) the ids an operator gave for a pair.
pub async fn set_operator(conn: &mut AsyncPgConnection, e: &Entry) -> QueryResult<usize> {
    diesel::insert_into(accounts::table)
        .values(e)
        .on_conflict((
            accounts::source,
            accounts::smart_account,
            accounts::virtual_account,
        ))
        .do_update()
        .set((
            accounts::smart_account_id.eq(excluded(accounts::smart_account_id)),
            accounts::virtual_account_id.eq(excluded(accounts::virtual_account_id)),
            accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

/// Removes the ids an operator gave for a pair; returns how many rows went.
pub async fn delete_operator(
    conn: &mut AsyncPgConnection,
    smart_account: &str,
    virtual_account: &str,
) -> QueryResult<usize> {
    diesel::delete(
        accounts::table
            .filter(accounts::source.eq(Source::Operator))
            .filter(accounts::smart_account.eq(smart_account))
            .filter(accounts::virtual_account.eq(virtual_account)),
    )
    .execute(conn)
    .await
}

/// The last refresh from CSSM.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = account_refreshes, check_for_backend(diesel::pg::Pg))]
pub struct Refresh {
    pub at: DateTime<Utc>,
    /// Why it failed; `None` when it worked.
    pub error: Option<String>,
    pub smart_accounts: i32,
    pub virtual_accounts: i32,
}

pub async fn record_refresh(conn: &mut AsyncPgConnection, r: &Refresh) -> QueryResult<usize> {
    diesel::insert_into(account_refreshes::table)
        .values((account_refreshes::id.eq(1i16), r))
        .on_conflict(account_refreshes::id)
        .do_update()
        .set((
            account_refreshes::at.eq(excluded(account_refreshes::at)),
            account_refreshes::error.eq(excluded(account_refreshes::error)),
            account_refreshes::smart_accounts.eq(excluded(account_refreshes::smart_accounts)),
            account_refreshes::virtual_accounts.eq(excluded(account_refreshes::virtual_accounts)),
        ))
        .execute(conn)
        .await
}

pub async fn last_refresh(conn: &mut AsyncPgConnection) -> QueryResult<Option<Refresh>> {
    account_refreshes::table
        .select(Refresh::as_select())
        .first(conn)
        .await
        .optional()
}

/// An online batch that failed because CSSM did not know its accounts, not yet retried.
#[derive(Debug, Clone, Queryable)]
pub struct Unresolved {
    pub id: Uuid,
    pub smart_account: String,
    pub virtual_account: String,
}

/// Online batches that failed because CSSM did not know their accounts and were not retried.
#[diesel::dsl::auto_type(no_type_alias)]
fn waiting() -> _ {
    let mode: BatchMode = BatchMode::Online;
    let state: BatchState = BatchState::Failed;
    let class: ErrorClass = ErrorClass::UnknownAccount;
    batches::table
        .filter(batches::mode.eq(mode))
        .filter(batches::state.eq(state))
        .filter(batches::error_class.eq(class))
        .filter(batches::retried_at.is_null())
}

/// Batches waiting for the directory to learn their accounts, oldest first, locked (others'
/// locked ones skipped) until the transaction ends.
pub async fn unresolved_batches(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Unresolved>> {
    waiting()
        .order(batches::created_at)
        .select((
            batches::id,
            batches::smart_account,
            batches::virtual_account,
        ))
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// The pairs of every batch waiting on an unknown account (one row per batch), without locking.
pub async fn unresolved_list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(String, String)>> {
    waiting()
        .select((batches::smart_account, batches::virtual_account))
        .load(conn)
        .await
}
