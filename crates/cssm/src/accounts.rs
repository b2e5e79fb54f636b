//! `GET v2/accounts/search`: the smart accounts and virtual accounts the API client may use, with
//! the ids CSSM addresses them by (`X-CSW-SMART-ACCOUNT-ID`, `X-CSW-VIRTUAL-ACCOUNT-ID`).
//!
//! Answer as Cisco's published samples read it: `{"status": "COMPLETE", "accounts": [{
//! "account_id", "domain", "name", "virtual_accounts": [{"virtual_account_id", "name"}]}]}`.
//! Paging is not published: Tally asks `limit`/`offset` (offset = accounts read so far) and stops
//! at a page that brings no account it has not seen: an empty one, or the same accounts again
//! from a server that ignores the parameters. See docs/interop.md.

use crate::{CssmClient, CssmError};
use serde::Deserialize;
use std::collections::HashSet;

/// Accounts asked for per page.
pub const SEARCH_PAGE: usize = 1000;
/// Pages read at most (a server that never ends its listing ends it here).
const MAX_PAGES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VirtualAccountId {
    #[serde(deserialize_with = "id_text")]
    pub virtual_account_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SmartAccountId {
    #[serde(deserialize_with = "id_text")]
    pub account_id: String,
    pub domain: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub virtual_accounts: Vec<VirtualAccountId>,
}

/// An id as text whether CSSM sends it as a string or as a number.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string or a number, not {other}"
        ))),
    }
}

/// One page of the search answer.
pub fn parse_search(text: &str) -> Result<Vec<SmartAccountId>, CssmError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        accounts: Option<Vec<SmartAccountId>>,
    }
    let p: Page = serde_json::from_str(text)
        .map_err(|e| CssmError::Malformed(format!("accounts/search: {e}")))?;
    if let Some(s) = p.status.as_deref()
        && !matches!(s, "COMPLETE" | "SUCCESS")
    {
        return Err(CssmError::Malformed(format!(
            "accounts/search status {s:?}: {}",
            p.message.unwrap_or_default()
        )));
    }
    p.accounts
        .ok_or_else(|| CssmError::Malformed(format!("accounts/search: no accounts in {text:.200}")))
}

impl CssmClient {
    /// Every account the client may use, page after page until the listing is exhausted.
    pub async fn search_accounts(&self) -> Result<Vec<SmartAccountId>, CssmError> {
        let mut out: Vec<SmartAccountId> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..MAX_PAGES {
            let path = format!(
                "v2/accounts/search?limit={SEARCH_PAGE}&offset={}",
                out.len()
            );
            let text = self.call(reqwest::Method::GET, &path, &[], None).await?;
            let mut fresh = 0;
            for a in parse_search(&text)? {
                if seen.insert(a.account_id.clone()) {
                    fresh += 1;
                    out.push(a);
                }
            }
            // Exhausted: an empty page, or one of accounts already seen (a server that does
            // not page answers everything every time). A short page is not the end: a server
            // may hold fewer a page than asked.
            if fresh == 0 {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sample_answer() {
        // The shape of the published sample answer (numbers as ids are read too).
        let text = r#"{"message_code":"","accounts":[{"account_id":"123456","domain":"testaccount.local","name":"testaccount.local","virtual_accounts":[{"default":false,"name":"Lab-01","virtual_account_id":"11"},{"default":false,"name":"Lab-02","virtual_account_id":12}]}],"message":"","status":"COMPLETE"}"#;
        let a = parse_search(text).unwrap();
        assert_eq!(a[0].account_id, "123456");
        assert_eq!(a[0].virtual_accounts[1].virtual_account_id, "12");
        assert_eq!(a[0].domain, "testaccount.local");
        assert_eq!(a[0].virtual_accounts[0].name, "Lab-01");
        assert!(parse_search(r#"{"status":"FAILED","message":"no"}"#).is_err());
        assert!(parse_search(r#"{"status":"COMPLETE"}"#).is_err());
    }
}
