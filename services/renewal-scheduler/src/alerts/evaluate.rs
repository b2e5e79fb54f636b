//! Finding the alerts due: ACK deadlines per device (then the pools' reminders), on an
//! interval, one replica at a time.

use super::Kind;
use super::raise::{NewAlert, Raised, Subject, already_fired, raise, threshold_str};
use crate::Scheduler;
use crate::deadlines::{self, assess};
use crate::store::{alerts, devices};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tally_domain::alert::{AlertKind, AlertState, AlertThresholds, Threshold, due_alerts};
use utoipa::ToSchema;

/// Only one replica evaluates alerts at a time (the unique key dedupes anyway).
const ALERT_LOCK: i64 = 0x7363_6865_645f_616c; // "sched_al"

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Evaluation {
    pub devices: usize,
    pub fired: usize,
    pub silenced: usize,
    /// False when another replica was evaluating: nothing was done.
    pub evaluated: bool,
}

/// Fires the alerts due at `now` (the real clock, or a simulated one in tests and drills):
/// each (device, kind, deadline, threshold) once, recorded with its NATS event and webhook
/// deliveries in one transaction.
pub async fn evaluate(
    s: &Scheduler,
    now: DateTime<Utc>,
) -> Result<Evaluation, tally_store::StoreError> {
    let mut conn = s.pool.get().await?;
    let out = conn
        .transaction(async |c| {
            if !alerts::try_lock(c, ALERT_LOCK).await? {
                return Ok(Evaluation::default());
            }
            deadlines::refresh(c, s.now()).await?;
            // Only devices within the widest threshold of their deadline can have one due.
            let widest = Threshold::widest_days(&AlertThresholds::default().ack_deadline);
            let rows =
                devices::near_deadline(c, now, i32::try_from(widest).unwrap_or(i32::MAX)).await?;
            let subjects: Vec<String> = rows.iter().map(|d| d.id.to_string()).collect();
            let already = already_fired(c, AlertKind::AckDeadline, &subjects).await?;
            let silences = alerts::active_silences(c, now).await?;
            let empty = HashSet::new();
            let mut ev = Evaluation {
                devices: rows.len(),
                evaluated: true,
                ..Evaluation::default()
            };
            for d in &rows {
                let (comp, risk) = assess(d, now);
                let subject = d.id.to_string();
                let state = AlertState {
                    subject: subject.clone(),
                    ack_deadline: risk.deadline,
                    term_end: None,
                };
                for key in due_alerts(&state, now, already.get(&subject).unwrap_or(&empty)) {
                    let kind = match key.kind {
                        AlertKind::AckDeadline => Kind::AckDeadline,
                        AlertKind::TermEnd => Kind::TermEnd,
                    };
                    let silenced = silences
                        .iter()
                        .any(|m| m.matches(kind.as_str(), &d.site, Some(d.id)));
                    let mut message = match key.threshold {
                        Threshold::Passed => {
                            format!("{}: ACK deadline passed. {}", d.hostname, comp.reason)
                        }
                        Threshold::DaysBefore(n) => {
                            format!(
                                "{}: ACK deadline in {n} days or less. {}",
                                d.hostname, comp.reason
                            )
                        }
                    };
                    // A deadline from an assumed policy may not be the device's: say so.
                    if comp.policy_source == deadlines::PolicySource::Assumed.as_str() {
                        let why = comp.policy_reason.trim_end_matches('.');
                        let why = why
                            .strip_prefix("Cisco's default policy assumed: ")
                            .unwrap_or(why);
                        message.push_str(&format!(
                            " The deadline assumes Cisco's default policy: {why}."
                        ));
                    }
                    let alert = NewAlert {
                        kind,
                        severity: &comp.impact,
                        subject: Subject::device(d),
                        due: key.due,
                        threshold: threshold_str(key.threshold),
                        message,
                    };
                    match raise(c, s, &alert, silenced, now).await? {
                        Raised::Delivered => ev.fired += 1,
                        Raised::Silenced => ev.silenced += 1,
                        Raised::Already => {}
                    }
                }
            }
            let (fired, quiet) = crate::pools::evaluate(c, s, now, &silences).await?;
            ev.fired += fired;
            ev.silenced += quiet;
            Ok::<_, diesel::result::Error>(ev)
        })
        .await?;
    if out.fired > 0 {
        tally_platform::metrics::inc("alerts_fired", out.fired as u64);
    }
    Ok(out)
}

/// Brings stored deadlines and statuses up to `now`, so roll-ups stay a read of counts.
pub async fn keep_statuses(
    s: &Scheduler,
    now: DateTime<Utc>,
) -> Result<(), tally_store::StoreError> {
    let mut c = s.pool.get().await?;
    deadlines::refresh(&mut c, now).await?;
    deadlines::sweep(&mut c, now).await?;
    Ok(())
}

/// Evaluates alerts on the configured interval, with the configured clock offset (drills).
pub async fn run_alerts(s: Scheduler) {
    loop {
        let now = s.now();
        if let Err(e) = keep_statuses(&s, now).await {
            tracing::warn!(error = %e, "compliance status sweep failed");
        }
        match evaluate(&s, now).await {
            Ok(e) if e.fired > 0 => tracing::info!(fired = e.fired, "alerts fired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alert evaluation failed"),
        }
        tokio::time::sleep(s.cfg.alert_interval).await;
    }
}
