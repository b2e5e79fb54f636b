//! Entitlement pools as tier-assignment announces them (`PoolsSynced`): subscription terms for
//! renewal reminders (90/60/30 days before the term ends), overcommitted pools for
//! out-of-compliance, and what the Catalyst Center term and usage calls answer.

use crate::Scheduler;
use crate::compliance::{self, NewAlert, Raised, SilenceRow, Subject};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use std::collections::{HashMap, HashSet};
use tally_bus::{consumer::HandlerError, proto};
use tally_domain::alert::{
    AlertKey, AlertKind, AlertState, AlertThresholds, Threshold, due_alerts,
};
use tally_store::outbox::{Schema, claim};
use uuid::Uuid;

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

/// Devices holding a level whose pool in their virtual account is overcommitted, where the
/// pool's license fits the device's model (an exact model or a `prefix*` pattern; a pool no
/// rule names fits every model).
const OVER: &str = "EXISTS (SELECT 1 FROM sched.pools p WHERE p.smart_account = d.smart_account \
     AND p.virtual_account = d.virtual_account AND p.over_since IS NOT NULL \
     AND p.level <> '' AND p.level IN (d.network_license, d.dna_tier) \
     AND (cardinality(p.models) = 0 OR EXISTS (SELECT 1 FROM unnest(p.models) m \
     WHERE d.model = m OR (right(m, 1) = '*' AND starts_with(d.model, left(m, -1))))))";

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Flags (or clears) out-of-compliance on the devices of one smart account, and runs the
/// deadline engine for the devices it changed.
async fn flag_account(
    c: &mut AsyncPgConnection,
    sa: &str,
    now: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    let changed: Vec<IdRow> = diesel::sql_query(format!(
        "UPDATE sched.devices d SET out_of_compliance = {OVER} \
         WHERE d.smart_account = $1 AND NOT d.deleted AND d.out_of_compliance IS DISTINCT FROM {OVER} \
         RETURNING d.id"
    ))
    .bind::<Text, _>(sa)
    .load(c)
    .await?;
    let ids: Vec<Uuid> = changed.into_iter().map(|r| r.id).collect();
    compliance::refresh_ids(c, &ids, now).await?;
    Ok(())
}

/// Flags devices that just joined or changed, from the pools already known.
pub async fn flag_devices(
    c: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(format!(
        "UPDATE sched.devices d SET out_of_compliance = {OVER} \
         WHERE d.id = ANY($1) AND NOT d.deleted AND d.out_of_compliance IS DISTINCT FROM {OVER}"
    ))
    .bind::<Array<SqlUuid>, _>(ids)
    .execute(c)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct OverRow {
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = Timestamptz)]
    over_since: DateTime<Utc>,
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
    conn.transaction(async |c| {
        if !claim(c, Schema::Sched, msg_id).await? {
            return Ok(());
        }
        // One announcement per smart account at a time; a redelivered older one must not undo
        // a newer one (even one that emptied the account).
        let newer = diesel::sql_query(
            "INSERT INTO sched.pool_syncs (smart_account, synced_at) VALUES ($1, $2) \
             ON CONFLICT (smart_account) DO UPDATE SET synced_at = excluded.synced_at \
             WHERE sched.pool_syncs.synced_at <= excluded.synced_at",
        )
        .bind::<Text, _>(&ev.smart_account)
        .bind::<Timestamptz, _>(at)
        .execute(c)
        .await?;
        if newer == 0 {
            return Ok(());
        }
        let prior: Vec<OverRow> = diesel::sql_query(
            "SELECT virtual_account, license, over_since FROM sched.pools \
             WHERE smart_account = $1 AND over_since IS NOT NULL",
        )
        .bind::<Text, _>(&ev.smart_account)
        .load(c)
        .await?;
        let prior: HashMap<(String, String), DateTime<Utc>> = prior
            .into_iter()
            .map(|r| ((r.virtual_account, r.license), r.over_since))
            .collect();
        for table in ["sched.pool_terms", "sched.pools"] {
            diesel::sql_query(format!("DELETE FROM {table} WHERE smart_account = $1"))
                .bind::<Text, _>(&ev.smart_account)
                .execute(c)
                .await?;
        }
        let n = ev.pools.len();
        let mut models = Vec::with_capacity(n);
        let (mut va, mut lic, mut lvl, mut q, mut iu, mut held, mut over) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut tva, mut tlic, mut line, mut sub, mut ty, mut tq, mut start, mut end) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for p in &ev.pools {
            let is_over = p.cssm_in_use > p.quantity || p.held > p.quantity;
            let key = (p.virtual_account.clone(), p.license.clone());
            over.push(is_over.then(|| prior.get(&key).copied().unwrap_or(at)));
            va.push(p.virtual_account.clone());
            lic.push(p.license.clone());
            lvl.push(p.level.clone());
            models.push(serde_json::to_string(&p.models).unwrap_or_else(|_| "[]".into()));
            q.push(p.quantity);
            iu.push(p.cssm_in_use);
            held.push(p.held);
            for (i, t) in p.terms.iter().enumerate() {
                tva.push(p.virtual_account.clone());
                tlic.push(p.license.clone());
                line.push(i32::try_from(i).unwrap_or(i32::MAX));
                sub.push(t.subscription_id.clone());
                ty.push(t.license_type.clone());
                tq.push(t.quantity);
                start.push(parse_date(&t.start_date));
                end.push(parse_date(&t.end_date));
            }
        }
        diesel::sql_query(
            "INSERT INTO sched.pools (smart_account, virtual_account, license, level, quantity, \
             cssm_in_use, held, over_since, synced_at, models) \
             SELECT $1, u.va, u.l, u.lvl, u.q, u.iu, u.h, u.o, $9, \
             ARRAY(SELECT jsonb_array_elements_text(u.m::jsonb)) FROM unnest($2::text[], \
             $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::timestamptz[], \
             $10::text[]) AS u(va, l, lvl, q, iu, h, o, m) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(&ev.smart_account)
        .bind::<Array<Text>, _>(&va)
        .bind::<Array<Text>, _>(&lic)
        .bind::<Array<Text>, _>(&lvl)
        .bind::<Array<BigInt>, _>(&q)
        .bind::<Array<BigInt>, _>(&iu)
        .bind::<Array<BigInt>, _>(&held)
        .bind::<Array<Nullable<Timestamptz>>, _>(&over)
        .bind::<Timestamptz, _>(at)
        .bind::<Array<Text>, _>(&models)
        .execute(c)
        .await?;
        diesel::sql_query(
            "INSERT INTO sched.pool_terms (smart_account, virtual_account, license, line, \
             subscription_id, license_type, quantity, start_date, end_date) \
             SELECT $1, u.va, u.l, u.i, u.s, u.t, u.q, u.b, u.e FROM unnest($2::text[], $3::text[], \
             $4::int4[], $5::text[], $6::text[], $7::int8[], $8::timestamptz[], $9::timestamptz[]) \
             AS u(va, l, i, s, t, q, b, e) ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(&ev.smart_account)
        .bind::<Array<Text>, _>(&tva)
        .bind::<Array<Text>, _>(&tlic)
        .bind::<Array<Integer>, _>(&line)
        .bind::<Array<Text>, _>(&sub)
        .bind::<Array<Text>, _>(&ty)
        .bind::<Array<BigInt>, _>(&tq)
        .bind::<Array<Nullable<Timestamptz>>, _>(&start)
        .bind::<Array<Nullable<Timestamptz>>, _>(&end)
        .execute(c)
        .await?;
        flag_account(c, &ev.smart_account, compliance::clock(s)).await?;
        Ok::<_, HandlerError>(())
    })
    .await
}

#[derive(QueryableByName)]
struct PoolRow {
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = BigInt)]
    cssm_in_use: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
    #[diesel(sql_type = Timestamptz)]
    over_since: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct TermRow {
    #[diesel(sql_type = Text)]
    smart_account: String,
    #[diesel(sql_type = Text)]
    virtual_account: String,
    #[diesel(sql_type = Text)]
    license: String,
    #[diesel(sql_type = Integer)]
    line: i32,
    #[diesel(sql_type = Text)]
    subscription_id: String,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = Timestamptz)]
    end_date: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct SentRow {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Timestamptz)]
    due: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    threshold: String,
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
    silences: &[SilenceRow],
) -> Result<(usize, usize), diesel::result::Error> {
    let (mut fired, mut silenced) = (0, 0);
    let mut count = |r: Raised| match r {
        Raised::Delivered => fired += 1,
        Raised::Silenced => silenced += 1,
        Raised::Already => {}
    };
    let over: Vec<PoolRow> = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, quantity, cssm_in_use, held, over_since \
         FROM sched.pools WHERE over_since IS NOT NULL ORDER BY 1, 2, 3",
    )
    .load(c)
    .await?;
    for p in &over {
        let kind = "out_of_compliance";
        let subject = pool_subject(
            &p.smart_account,
            &p.virtual_account,
            format!(
                "pool:{}/{}/{}",
                p.smart_account, p.virtual_account, p.license
            ),
        );
        let quiet = silences.iter().any(|m| m.matches(kind, "", None));
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
        count(compliance::raise(c, s, &alert, quiet, now).await?);
    }
    let widest = Threshold::widest_days(&AlertThresholds::default().term_end);
    let terms: Vec<TermRow> = diesel::sql_query(
        "SELECT smart_account, virtual_account, license, line, subscription_id, quantity, end_date \
         FROM sched.pool_terms WHERE end_date IS NOT NULL AND upper(license_type) <> 'PERPETUAL' \
         AND end_date <= $1 AND end_date > $2 ORDER BY end_date, 1, 2, 3, 4",
    )
    .bind::<Timestamptz, _>(now + TimeDelta::days(widest))
    // Terms that have already ended get no reminder (the roll-up counts them as expired).
    .bind::<Timestamptz, _>(now)
    .load(c)
    .await?;
    let subject_of = |t: &TermRow| {
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
    let sent: Vec<SentRow> = diesel::sql_query(
        "SELECT subject, due, threshold FROM sched.alerts WHERE kind = 'term_end' \
         AND subject = ANY($1)",
    )
    .bind::<Array<Text>, _>(&subjects)
    .load(c)
    .await?;
    let mut already: HashMap<String, HashSet<AlertKey>> = HashMap::new();
    for r in sent {
        if let Some(threshold) = compliance::parse_threshold(&r.threshold) {
            already
                .entry(r.subject.clone())
                .or_default()
                .insert(AlertKey {
                    subject: r.subject,
                    kind: AlertKind::TermEnd,
                    due: r.due,
                    threshold,
                });
        }
    }
    let empty = HashSet::new();
    for (t, id) in terms.iter().zip(subjects) {
        let state = AlertState {
            subject: id.clone(),
            ack_deadline: None,
            term_end: Some(t.end_date),
        };
        for key in due_alerts(&state, now, already.get(&id).unwrap_or(&empty)) {
            let kind = "term_end";
            let quiet = silences.iter().any(|m| m.matches(kind, "", None));
            let days = tally_domain::policy::days_left(t.end_date, now);
            let alert = NewAlert {
                kind,
                severity: "warning",
                subject: pool_subject(&t.smart_account, &t.virtual_account, id.clone()),
                due: key.due,
                threshold: compliance::threshold_str(key.threshold),
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
            count(compliance::raise(c, s, &alert, quiet, now).await?);
        }
    }
    Ok((fired, silenced))
}
