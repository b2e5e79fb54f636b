//! The account directory: CSSM addresses accounts by the ids `v2/accounts/search` lists, while the
//! inventory holds names (a smart account's domain, a virtual account's name). Cisco's sample
//! matches the domain case-insensitively and the VA name exactly; Tally does that, and also takes
//! a smart account's id or listed name, and a VA's id, when that is what the inventory holds
//! (docs/interop.md). Ids an operator gives win over CSSM's (air-gapped sites, or an API client
//! that may not search).
//!
//! The directory is refreshed on a miss (at most once per `accounts_miss_refresh`), on a schedule
//! and on request. A batch whose accounts CSSM does not know fails with the reason and waits: it
//! goes again when a refresh or an operator's ids make its pair resolve.

use crate::Uplink;
use crate::store::accounts::{self as store, Entry, Refresh, Source};
use crate::store::{batches, reports};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use std::collections::BTreeSet;
use tally_cssm::CssmError;
use tally_cssm::accounts::SmartAccountId;

/// The ids to send for a pair, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub smart_account_id: String,
    pub virtual_account_id: String,
    pub source: Source,
}

/// The ids of `(smart_account, virtual_account)`, or why there are none (naming both).
pub fn resolve(
    entries: &[Entry],
    smart_account: &str,
    virtual_account: &str,
) -> Result<Ids, String> {
    let ids = |e: &Entry| Ids {
        smart_account_id: e.smart_account_id.clone(),
        virtual_account_id: e.virtual_account_id.clone(),
        source: e.source,
    };
    if let Some(e) = entries.iter().find(|e| {
        e.source == Source::Operator
            && e.smart_account.eq_ignore_ascii_case(smart_account)
            && e.virtual_account == virtual_account
    }) {
        return Ok(ids(e));
    }
    let cssm: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.source == Source::Cssm)
        .collect();
    let pair = format!("smart account {smart_account:?} / virtual account {virtual_account:?}");
    if cssm.is_empty() {
        return Err(format!(
            "{pair}: the account directory holds no account CSSM listed (no refresh has worked \
             yet) and no ids an operator gave"
        ));
    }
    // The smart account by domain (as Cisco's sample), else by id, else by its listed name when
    // that names one account only.
    let mut sa: Vec<&Entry> = cssm
        .iter()
        .copied()
        .filter(|e| e.smart_account.eq_ignore_ascii_case(smart_account))
        .collect();
    if sa.is_empty() {
        sa = cssm
            .iter()
            .copied()
            .filter(|e| e.smart_account_id == smart_account)
            .collect();
    }
    if sa.is_empty() {
        let named: Vec<&Entry> = cssm
            .iter()
            .copied()
            .filter(|e| {
                e.smart_account_name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(smart_account))
            })
            .collect();
        let distinct: BTreeSet<&str> = named.iter().map(|e| e.smart_account_id.as_str()).collect();
        if distinct.len() == 1 {
            sa = named;
        }
    }
    if sa.is_empty() {
        let known: BTreeSet<&str> = cssm.iter().map(|e| e.smart_account.as_str()).collect();
        return Err(format!(
            "{pair}: CSSM lists no such smart account (by domain, id or name) to this API \
             client; it lists {}",
            list(known)
        ));
    }
    if let Some(e) = sa
        .iter()
        .find(|e| e.virtual_account == virtual_account)
        .or_else(|| sa.iter().find(|e| e.virtual_account_id == virtual_account))
    {
        return Ok(ids(e));
    }
    let vas: BTreeSet<&str> = sa.iter().map(|e| e.virtual_account.as_str()).collect();
    Err(format!(
        "{pair}: CSSM lists no such virtual account in smart account {} (id {}); its virtual \
         accounts are {} (names match exactly)",
        sa[0].smart_account,
        sa[0].smart_account_id,
        list(vas)
    ))
}

fn list(names: BTreeSet<&str>) -> String {
    let n = names.len();
    let mut s: Vec<String> = names
        .into_iter()
        .take(20)
        .map(|v| format!("{v:?}"))
        .collect();
    if n > 20 {
        s.push(format!("and {} more", n - 20));
    }
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

/// Directory entries from a search answer.
pub fn entries_of(found: &[SmartAccountId]) -> Vec<Entry> {
    found
        .iter()
        .flat_map(|sa| {
            sa.virtual_accounts.iter().map(move |va| Entry {
                source: Source::Cssm,
                smart_account: sa.domain.clone(),
                smart_account_name: sa.name.clone(),
                virtual_account: va.name.clone(),
                smart_account_id: sa.account_id.clone(),
                virtual_account_id: va.virtual_account_id.clone(),
            })
        })
        .collect()
}

/// What a refresh found and what it set going again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub smart_accounts: usize,
    pub virtual_accounts: usize,
    /// Reports of batches that waited on an unknown account and now go again.
    pub requeued_reports: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("offline mode: there is no CSSM to ask; give the ids with PUT /api/v1/uplink/accounts")]
    Offline,
    #[error("v2/accounts/search: {0}")]
    Cssm(#[from] CssmError),
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
}

impl From<diesel::result::Error> for RefreshError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Asks CSSM for every account the client may use and replaces the directory's CSSM entries;
/// batches that waited on a pair that resolves now go again. A failed search is recorded (shown
/// at `GET /api/v1/uplink/accounts`) and leaves the entries as they were.
pub async fn refresh(up: &Uplink) -> Result<Refreshed, RefreshError> {
    let Some(cssm) = up.cssm.clone() else {
        return Err(RefreshError::Offline);
    };
    let found = cssm.search_accounts().await;
    let mut conn = up.pool.get().await.map_err(tally_store::StoreError::from)?;
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "account directory refresh failed");
            store::record_refresh(
                &mut conn,
                &Refresh {
                    at: chrono::Utc::now(),
                    error: Some(e.to_string()),
                    smart_accounts: 0,
                    virtual_accounts: 0,
                },
            )
            .await?;
            return Err(e.into());
        }
    };
    let rows = entries_of(&found);
    let out = conn
        .transaction(async |c| {
            store::replace_cssm(c, &rows).await?;
            store::record_refresh(
                c,
                &Refresh {
                    at: chrono::Utc::now(),
                    error: None,
                    smart_accounts: i32::try_from(found.len()).unwrap_or(i32::MAX),
                    virtual_accounts: i32::try_from(rows.len()).unwrap_or(i32::MAX),
                },
            )
            .await?;
            let requeued_reports = requeue_resolvable(c).await?;
            Ok::<_, diesel::result::Error>(Refreshed {
                smart_accounts: found.len(),
                virtual_accounts: rows.len(),
                requeued_reports,
            })
        })
        .await?;
    tracing::info!(
        smart_accounts = out.smart_accounts,
        virtual_accounts = out.virtual_accounts,
        requeued = out.requeued_reports,
        "account directory refreshed"
    );
    Ok(out)
}

/// Puts the reports of every batch that failed on an unknown account, and whose pair resolves
/// now, back in line (once per batch). Returns how many reports.
pub async fn requeue_resolvable(c: &mut AsyncPgConnection) -> Result<usize, diesel::result::Error> {
    let waiting = store::unresolved_batches(c).await?;
    if waiting.is_empty() {
        return Ok(0);
    }
    let entries = store::all(c).await?;
    let mut n = 0;
    for b in waiting {
        if resolve(&entries, &b.smart_account, &b.virtual_account).is_ok() {
            n += reports::requeue_failed(c, b.id).await?;
            batches::mark_retried(c, b.id).await?;
            tracing::info!(batch = %b.id, "accounts resolve now; the batch's reports go again");
        }
    }
    Ok(n)
}

/// Why a batch cannot be sent yet.
pub enum Lookup {
    /// CSSM does not know the pair (or could not be asked for good): fail the batch with this.
    Unknown(String),
    /// Asking CSSM failed for now: try the batch again later.
    Transient(String),
    Db(diesel::result::Error),
}

/// The ids to send a batch of `(smart_account, virtual_account)` with. On a miss the directory
/// is refreshed first, unless a refresh ran within `accounts_miss_refresh`.
pub async fn ids_for_send(
    up: &Uplink,
    c: &mut AsyncPgConnection,
    smart_account: &str,
    virtual_account: &str,
) -> Result<Ids, Lookup> {
    let entries = store::all(c).await.map_err(Lookup::Db)?;
    let miss = match resolve(&entries, smart_account, virtual_account) {
        Ok(ids) => return Ok(ids),
        Err(why) => why,
    };
    let last = store::last_refresh(c).await.map_err(Lookup::Db)?;
    let recent = last.as_ref().is_some_and(|r| {
        chrono::Utc::now() - r.at
            < chrono::Duration::from_std(up.cfg.accounts_miss_refresh).unwrap_or_default()
    });
    if recent {
        let why = match last.and_then(|r| r.error) {
            Some(e) => format!("{miss} (the last directory refresh failed: {e})"),
            None => miss,
        };
        return Err(Lookup::Unknown(why));
    }
    match refresh(up).await {
        Ok(_) => {}
        Err(RefreshError::Cssm(e)) if e.is_transient() => {
            return Err(Lookup::Transient(format!(
                "refreshing the account directory: {e}"
            )));
        }
        Err(RefreshError::Cssm(e)) => {
            return Err(Lookup::Unknown(format!(
                "{miss} (CSSM refused the directory refresh: {e}; an operator can give the ids \
                 with PUT /api/v1/uplink/accounts)"
            )));
        }
        Err(e) => return Err(Lookup::Transient(e.to_string())),
    }
    let entries = store::all(c).await.map_err(Lookup::Db)?;
    resolve(&entries, smart_account, virtual_account).map_err(Lookup::Unknown)
}

/// The ids an offline manifest carries for a pair, when the directory has them (no CSSM call).
pub async fn ids_for(
    c: &mut AsyncPgConnection,
    smart_account: &str,
    virtual_account: &str,
) -> Result<Option<Ids>, diesel::result::Error> {
    let entries = store::all(c).await?;
    Ok(resolve(&entries, smart_account, virtual_account).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(
        source: Source,
        sa: &str,
        name: Option<&str>,
        va: &str,
        sa_id: &str,
        va_id: &str,
    ) -> Entry {
        Entry {
            source,
            smart_account: sa.into(),
            smart_account_name: name.map(str::to_owned),
            virtual_account: va.into(),
            smart_account_id: sa_id.into(),
            virtual_account_id: va_id.into(),
        }
    }

    fn dir() -> Vec<Entry> {
        vec![
            e(
                Source::Cssm,
                "acme.example",
                Some("ACME Corp"),
                "Campus",
                "1001",
                "2001",
            ),
            e(
                Source::Cssm,
                "acme.example",
                Some("ACME Corp"),
                "Branch",
                "1001",
                "2002",
            ),
            e(Source::Cssm, "other.example", None, "Lab", "1002", "3001"),
        ]
    }

    #[test]
    fn matches_as_the_sample_and_takes_ids_and_names() {
        let d = dir();
        let ids = |sa, va| resolve(&d, sa, va).map(|i| (i.smart_account_id, i.virtual_account_id));
        assert_eq!(
            ids("ACME.example", "Branch"),
            Ok(("1001".into(), "2002".into()))
        );
        assert_eq!(ids("1001", "2001"), Ok(("1001".into(), "2001".into())));
        assert_eq!(
            ids("acme corp", "Campus"),
            Ok(("1001".into(), "2001".into()))
        );
        // The VA name is matched exactly, as Cisco's sample does.
        let err = ids("acme.example", "branch").unwrap_err();
        assert!(
            err.contains("\"acme.example\"") && err.contains("\"branch\""),
            "{err}"
        );
        assert!(err.contains("\"Branch\", \"Campus\""), "{err}");
        let err = ids("nobody.example", "Campus").unwrap_err();
        assert!(
            err.contains("no such smart account") && err.contains("\"Campus\""),
            "{err}"
        );
        assert!(
            resolve(&[], "acme.example", "Campus")
                .unwrap_err()
                .contains("no refresh")
        );
    }

    #[test]
    fn operator_ids_win() {
        let mut d = dir();
        d.push(e(
            Source::Operator,
            "Acme.Example",
            None,
            "Campus",
            "9",
            "99",
        ));
        let i = resolve(&d, "acme.example", "Campus").unwrap();
        assert_eq!(
            (i.smart_account_id.as_str(), i.source),
            ("9", Source::Operator)
        );
        // Only the operator's entry: no CSSM listing needed.
        let only = vec![e(Source::Operator, "air.gapped", None, "Site", "5", "55")];
        assert_eq!(
            resolve(&only, "air.gapped", "Site")
                .unwrap()
                .virtual_account_id,
            "55"
        );
    }

    #[test]
    fn an_ambiguous_name_is_not_guessed() {
        let d = vec![
            e(Source::Cssm, "a.example", Some("Same"), "V", "1", "11"),
            e(Source::Cssm, "b.example", Some("Same"), "V", "2", "21"),
        ];
        assert!(resolve(&d, "same", "V").is_err());
    }
}
