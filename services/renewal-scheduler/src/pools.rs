//! Entitlement pools as tier-assignment announces them (`PoolsSynced`): subscription terms for
//! renewal reminders (90/60/30 days before the term ends), overcommitted pools for
//! out-of-compliance, and what the Catalyst Center term and usage calls answer.

use crate::Scheduler;
use crate::alerts::raise::{already_fired, threshold_str};
use crate::alerts::{Kind, NewAlert, Raised, Subject, raise};
use crate::deadlines;
use crate::store::alerts::Silence;
use crate::store::pools::{self as store, EndingTerm, NewPools, NewTerms};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use diesel_async::AsyncPgConnection;
use std::collections::{HashMap, HashSet};
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::alert::{AlertKind, AlertState, AlertThresholds, Threshold, due_alerts};
use tally_store::outbox::{Schema, once};

/// A date as CSSM gives it (RFC 3339, or a bare date meaning its start in UTC).
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc())
        })
}

/// Replaces the smart account's pools with the announced ones, keeping since when each
/// overcommitted pool has been over, and flags its devices.
pub async fn synced(
    s: &Scheduler,
    msg_id: &str,
    ev: proto::PoolsSynced,
) -> Result<(), HandlerError> {
    let at = DateTime::from_timestamp_millis(ev.synced_at_ms).unwrap_or_else(Utc::now);
    let mut conn = s.pool.get().await.map_err(tally_store::StoreError::from)?;
    once(&mut conn, Schema::Sched, msg_id, async |c| {
        // One announcement per smart account at a time; a redelivered older one must not undo
        // a newer one (even one that emptied the account).
        if !store::claim_sync(c, &ev.smart_account, at).await? {
            return Ok(());
        }
        let prior: HashMap<(String, String), DateTime<Utc>> =
            store::over_since(c, &ev.smart_account)
                .await?
                .into_iter()
                .map(|(va, l, t)| ((va, l), t))
                .collect();
        store::clear(c, &ev.smart_account).await?;
        let mut pools = NewPools::default();
        let mut terms = NewTerms::default();
        for p in &ev.pools {
            let is_over = p.cssm_in_use > p.quantity || p.held > p.quantity;
            let key = (p.virtual_account.clone(), p.license.clone());
            pools
                .over_since
                .push(is_over.then(|| prior.get(&key).copied().unwrap_or(at)));
            pools.virtual_accounts.push(p.virtual_account.clone());
            pools.licenses.push(p.license.clone());
            pools.levels.push(p.level.clone());
            pools
                .models_json
                .push(serde_json::to_string(&p.models).unwrap_or_else(|_| "[]".into()));
            pools.quantities.push(p.quantity);
            pools.cssm_in_use.push(p.cssm_in_use);
            pools.held.push(p.held);
            for (i, t) in p.terms.iter().enumerate() {
                terms.virtual_accounts.push(p.virtual_account.clone());
                terms.licenses.push(p.license.clone());
                terms.lines.push(i32::try_from(i).unwrap_or(i32::MAX));
                terms.subscription_ids.push(t.subscription_id.clone());
                terms.license_types.push(t.license_type.clone());
                terms.quantities.push(t.quantity);
                terms.starts.push(parse_date(&t.start_date));
                terms.ends.push(parse_date(&t.end_date));
            }
        }
        store::insert_pools(c, &ev.smart_account, &pools, at).await?;
        store::insert_terms(c, &ev.smart_account, &terms).await?;
        // Flags (or clears) out-of-compliance on the account's devices, and runs the deadline
        // engine for the devices it changed.
        let changed = store::flag_account(c, &ev.smart_account).await?;
        deadlines::refresh_ids(c, &changed, s.now()).await?;
        Ok::<_, HandlerError>(())
    })
    .await?;
    Ok(())
}

fn pool_subject(sa: &str, va: &str, what: String) -> Subject {
    Subject {
        id: what,
        device_id: None,
        hostname: String::new(),
        site: String::new(),
        virtual_account: format!("{sa}/{va}"),
    }
}

/// Fires renewal reminders (each subscription line at 90/60/30 days before its end) and one
/// out-of-compliance alert per overcommitted pool and episode, in the caller's transaction.
pub async fn evaluate(
    c: &mut AsyncPgConnection,
    s: &Scheduler,
    now: DateTime<Utc>,
    silences: &[Silence],
) -> Result<(usize, usize), diesel::result::Error> {
    let (mut fired, mut silenced) = (0, 0);
    let mut count = |r: Raised| match r {
        Raised::Delivered => fired += 1,
        Raised::Silenced => silenced += 1,
        Raised::Already => {}
    };
    for p in &store::overcommitted(c).await? {
        let kind = Kind::OutOfCompliance;
        let subject = pool_subject(
            &p.smart_account,
            &p.virtual_account,
            format!(
                "pool:{}/{}/{}",
                p.smart_account, p.virtual_account, p.license
            ),
        );
        let quiet = silences.iter().any(|m| m.matches(kind.as_str(), "", None));
        let alert = NewAlert {
            kind,
            severity: "warning",
            subject,
            due: p.over_since,
            threshold: "over_quantity".into(),
            message: format!(
                "{} in {}/{}: {} bought, CSSM counts {} in use and Tally's ledger {} held: \
                 out of compliance until licenses are added or devices moved",
                p.license, p.smart_account, p.virtual_account, p.quantity, p.cssm_in_use, p.held
            ),
        };
        count(raise(c, s, &alert, quiet, now).await?);
    }
    let widest = Threshold::widest_days(&AlertThresholds::default().term_end);
    // Terms that have already ended get no reminder (the roll-up counts them as expired).
    let terms = store::terms_ending(c, now, now + TimeDelta::days(widest)).await?;
    let subject_of = |t: &EndingTerm| {
        let sub = if t.subscription_id.is_empty() {
            format!("line {}", t.line)
        } else {
            t.subscription_id.clone()
        };
        format!(
            "term:{}/{}/{}/{sub}",
            t.smart_account, t.virtual_account, t.license
        )
    };
    let subjects: Vec<String> = terms.iter().map(subject_of).collect();
    let already = already_fired(c, AlertKind::TermEnd, &subjects).await?;
    let empty = HashSet::new();
    for (t, id) in terms.iter().zip(subjects) {
        let state = AlertState {
            subject: id.clone(),
            ack_deadline: None,
            term_end: Some(t.end_date),
        };
        for key in due_alerts(&state, now, already.get(&id).unwrap_or(&empty)) {
            let kind = Kind::TermEnd;
            let quiet = silences.iter().any(|m| m.matches(kind.as_str(), "", None));
            let days = tally_domain::policy::days_left(t.end_date, now);
            let alert = NewAlert {
                kind,
                severity: "warning",
                subject: pool_subject(&t.smart_account, &t.virtual_account, id.clone()),
                due: key.due,
                threshold: threshold_str(key.threshold),
                message: format!(
                    "{} x{} in {}/{}: subscription {} ends {}, in {days} days: renew it",
                    t.license,
                    t.quantity,
                    t.smart_account,
                    t.virtual_account,
                    if t.subscription_id.is_empty() {
                        "(no id)"
                    } else {
                        &t.subscription_id
                    },
                    t.end_date.format("%Y-%m-%d")
                ),
            };
            count(raise(c, s, &alert, quiet, now).await?);
        }
    }
    Ok((fired, silenced))
}
