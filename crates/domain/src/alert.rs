//! Which deadline alerts are due: thresholds as data, and a pure function a scheduler calls with
//! what it already sent, so each alert goes out once however often (or out of order) it runs.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The deadline compliance is judged by ([`crate::policy::Deadlines::governing`]): the ACK
    /// deadline when the policy requires ACKs.
    AckDeadline,
    /// A subscription term's end, for renewal.
    TermEnd,
}

/// A point before (or at) a deadline where an alert fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// `n` days or less left.
    DaysBefore(u32),
    /// The deadline has passed.
    Passed,
}

impl Threshold {
    /// The most days ahead any of `list` fires: nothing further away can have an alert due.
    pub fn widest_days(list: &[Self]) -> i64 {
        list.iter()
            .filter_map(|t| match t {
                Self::DaysBefore(n) => Some(i64::from(*n)),
                Self::Passed => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Higher is more urgent: passed, then fewer days left.
    fn urgency(self) -> i64 {
        match self {
            Self::Passed => i64::MAX,
            Self::DaysBefore(n) => -i64::from(n),
        }
    }

    fn reached(self, due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        match self {
            Self::Passed => now >= due,
            // Beyond chrono's range the threshold lies before all time: reached.
            Self::DaysBefore(n) => TimeDelta::try_days(i64::from(n))
                .and_then(|d| due.checked_sub_signed(d))
                .is_none_or(|from| now >= from),
        }
    }
}

/// Identifies one alert for deduplication. The deadline is part of the key: a new ACK moves the
/// deadline, and the next cycle's alerts must fire again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    /// The caller's id of what is watched (a device, a device and entitlement, a license pool).
    pub subject: String,
    pub kind: AlertKind,
    pub due: DateTime<Utc>,
    pub threshold: Threshold,
}

/// The thresholds per kind, configurable; [`Default`] is what the issue and seed ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertThresholds {
    pub ack_deadline: Vec<Threshold>,
    pub term_end: Vec<Threshold>,
}

impl Default for AlertThresholds {
    /// ACK deadline at 30/14/7/1 days and when passed; term end at 90/60/30 days (the seed's
    /// best practice: renewal alerts 90 days ahead).
    fn default() -> Self {
        use Threshold::{DaysBefore, Passed};
        Self {
            ack_deadline: vec![
                DaysBefore(30),
                DaysBefore(14),
                DaysBefore(7),
                DaysBefore(1),
                Passed,
            ],
            term_end: vec![DaysBefore(90), DaysBefore(60), DaysBefore(30)],
        }
    }
}

/// What one subject's alerts are computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    pub subject: String,
    /// The governing deadline; `None` when nothing is due.
    pub ack_deadline: Option<DateTime<Utc>>,
    pub term_end: Option<DateTime<Utc>>,
}

/// [`due_alerts_with`] under the default thresholds.
pub fn due_alerts(
    state: &AlertState,
    now: DateTime<Utc>,
    already_sent: &HashSet<AlertKey>,
) -> Vec<AlertKey> {
    due_alerts_with(&AlertThresholds::default(), state, now, already_sent)
}

/// The alerts to send now: per kind at most one, the most urgent threshold reached, unless it or
/// a more urgent one was already sent for the same deadline. Crossing several thresholds at once
/// (a device first seen 5 days before its deadline) sends only the most urgent; a clock that
/// goes back never re-sends a milder one.
pub fn due_alerts_with(
    thresholds: &AlertThresholds,
    state: &AlertState,
    now: DateTime<Utc>,
    already_sent: &HashSet<AlertKey>,
) -> Vec<AlertKey> {
    [
        (
            AlertKind::AckDeadline,
            state.ack_deadline,
            &thresholds.ack_deadline,
        ),
        (AlertKind::TermEnd, state.term_end, &thresholds.term_end),
    ]
    .into_iter()
    .filter_map(|(kind, due, list)| {
        let due = due?;
        let key = |threshold| AlertKey {
            subject: state.subject.clone(),
            kind,
            due,
            threshold,
        };
        let most = list
            .iter()
            .copied()
            .filter(|t| t.reached(due, now))
            .max_by_key(|t| t.urgency())?;
        let covered = list
            .iter()
            .filter(|t| t.urgency() >= most.urgency())
            .any(|t| already_sent.contains(&key(*t)));
        (!covered).then(|| key(most))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 4, 15, 8, 22, 14).unwrap()
    }

    fn state(ack: Option<DateTime<Utc>>, term: Option<DateTime<Utc>>) -> AlertState {
        AlertState {
            subject: "C9300-48P:FCW2501XXXX".into(),
            ack_deadline: ack,
            term_end: term,
        }
    }

    /// Runs the scheduler over `nows`, returning the thresholds sent in order.
    fn run(s: &AlertState, nows: &[DateTime<Utc>]) -> Vec<(AlertKind, Threshold)> {
        let mut sent = HashSet::new();
        let mut out = Vec::new();
        for now in nows {
            for k in due_alerts(s, *now, &sent) {
                out.push((k.kind, k.threshold));
                sent.insert(k);
            }
        }
        out
    }

    #[test]
    fn each_ack_threshold_fires_once_in_order() {
        let d = at();
        let nows: Vec<_> = (-40..=3).map(|n| d + TimeDelta::days(n)).collect();
        let got: Vec<_> = run(&state(Some(d), None), &nows)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        use Threshold::{DaysBefore, Passed};
        assert_eq!(
            got,
            [
                DaysBefore(30),
                DaysBefore(14),
                DaysBefore(7),
                DaysBefore(1),
                Passed
            ]
        );
    }

    /// The ACK alerts sent when the scheduler runs at these days before the deadline.
    fn ack_run(days_before: &[i64]) -> Vec<(AlertKind, Threshold)> {
        let nows: Vec<_> = days_before
            .iter()
            .map(|n| at() - TimeDelta::days(*n))
            .collect();
        run(&state(Some(at()), None), &nows)
    }

    #[test]
    fn first_seen_5_days_before_fires_only_the_7_day_alert() {
        let got = ack_run(&[5, 4]);
        assert_eq!(got, [(AlertKind::AckDeadline, Threshold::DaysBefore(7))]);
    }

    #[test]
    fn term_end_reminders_at_90_60_30_days() {
        let end = at();
        let nows: Vec<_> = (-120..=10).map(|n| end + TimeDelta::days(n)).collect();
        let got: Vec<_> = run(&state(None, Some(end)), &nows)
            .into_iter()
            .map(|(k, t)| {
                assert_eq!(k, AlertKind::TermEnd);
                t
            })
            .collect();
        use Threshold::DaysBefore;
        assert_eq!(got, [DaysBefore(90), DaysBefore(60), DaysBefore(30)]);
    }

    #[test]
    fn a_clock_going_back_does_not_resend_a_milder_alert() {
        let got = ack_run(&[6, 20]);
        assert_eq!(got, [(AlertKind::AckDeadline, Threshold::DaysBefore(7))]);
    }

    #[test]
    fn a_new_deadline_rearms_the_alerts() {
        let d = at();
        let mut sent = HashSet::new();
        sent.extend(due_alerts(&state(Some(d), None), d, &sent));
        let next = d + TimeDelta::days(90);
        let got = due_alerts(&state(Some(next), None), next - TimeDelta::days(29), &sent);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].threshold, Threshold::DaysBefore(30));
        assert_eq!(got[0].due, next);
    }

    #[test]
    fn nothing_before_the_first_threshold_or_without_deadlines() {
        let d = at();
        let none = HashSet::new();
        assert!(due_alerts(&state(Some(d), Some(d)), d - TimeDelta::days(91), &none).is_empty());
        assert!(due_alerts(&state(None, None), d, &none).is_empty());
    }
}
