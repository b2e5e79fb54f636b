//! Reporting policy and the deadlines it implies, per device and entitlement.
//!
//! How each policy field is used (Cisco's semantics, slp-reference section 1; 0 days means "no
//! such requirement"):
//! - `first_report_days`: the first report must be made within N days of first use. Until that
//!   first report only this window counts: the first report carries all usage up to then.
//! - `reporting_frequency_days`: after a report, the next one is due N days later.
//! - `report_on_change_days`: a change in usage (count) after the last report must be reported
//!   within N days.
//! - `ack_required`: the obligation is met only when CSSM's ACK is back on the device, not when
//!   the device sends; the ACK deadline is then what compliance is judged by.
//!
//! The next due time is the earliest of the obligations that apply. With no first-report window
//! and no report yet, the other two rules count from first use.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// Warnings start this many days before a deadline, as the device's own syslog warnings do.
pub const WARNING_DAYS: i64 = 30;

/// Policy attributes for one license kind (days; 0 means "not required").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAttrs {
    pub first_report_days: u32,
    pub reporting_frequency_days: u32,
    pub report_on_change_days: u32,
}

impl PolicyAttrs {
    pub const fn new(first_report: u32, frequency: u32, on_change: u32) -> Self {
        Self {
            first_report_days: first_report,
            reporting_frequency_days: frequency,
            report_on_change_days: on_change,
        }
    }
}

/// Which policy row applies to an entitlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseKind {
    /// Unenforced, non-export perpetual (e.g. `network-advantage`).
    Perpetual,
    /// Unenforced subscription (the DNA add-ons).
    Subscription,
    /// Enforced or export-controlled.
    Enforced,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub ack_required: bool,
    pub perpetual: PolicyAttrs,
    pub subscription: PolicyAttrs,
    pub enforced: PolicyAttrs,
}

/// What is known about one entitlement's usage on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub kind: LicenseKind,
    /// When the entitlement was first used on the device; the first-report window starts here.
    pub first_use: DateTime<Utc>,
    /// Last report sent (to CSSM, CSLU, On-Prem or a controller).
    pub last_report: Option<DateTime<Utc>>,
    /// Last ACK installed on the device. An ACK implies the report it answers was sent.
    pub last_ack: Option<DateTime<Utc>>,
    /// Times the count changed, in any order; those up to the last ACK may be left out. Not
    /// just the last change: the earliest unreported one sets the due time, else a count that
    /// keeps changing would push the deadline out for ever.
    pub changes: Vec<DateTime<Utc>>,
}

/// The rule that set a due time, so an operator can be told why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DueRule {
    FirstReport,
    Periodic,
    UsageChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    pub at: DateTime<Utc>,
    pub rule: DueRule,
}

/// Result of the deadline engine for one device and entitlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// When the device must next send a report; `None` when nothing needs reporting.
    pub next_report: Option<Due>,
    /// When an ACK must be on the device; `None` when ACKs are not required or nothing is due.
    pub ack_deadline: Option<Due>,
    /// A report was sent after the last ACK and its ACK has not come back yet.
    pub ack_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineStatus {
    /// The policy asks for nothing more (0 days, nothing changed since the last report).
    NoReportingNeeded,
    Ok,
    /// Within [`WARNING_DAYS`] of the deadline.
    DueSoon,
    Overdue,
}

/// Whole days from `now` to `at`, rounded down: 12 hours overdue is -1, not 0.
pub fn days_left(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (at - now).num_seconds().div_euclid(86_400)
}

/// `t` plus `days`, or `None` beyond chrono's range (year 262143), i.e. never.
fn plus_days(t: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    TimeDelta::try_days(i64::from(days)).and_then(|d| t.checked_add_signed(d))
}

/// The earliest obligation given the last report that counts (`anchor`, ignored when before
/// first use: that report was not about this usage).
fn next_due(a: PolicyAttrs, u: &Usage, anchor: Option<DateTime<Utc>>) -> Option<Due> {
    let anchor = anchor.filter(|t| *t >= u.first_use);
    let due = |days: u32, from: DateTime<Utc>, rule: DueRule| {
        (days > 0)
            .then(|| plus_days(from, days))
            .flatten()
            .map(|at| Due { at, rule })
    };
    let since = match anchor {
        None if a.first_report_days > 0 => {
            return due(a.first_report_days, u.first_use, DueRule::FirstReport);
        }
        None => u.first_use,
        Some(t) => t,
    };
    let periodic = due(a.reporting_frequency_days, since, DueRule::Periodic);
    let change = u
        .changes
        .iter()
        .filter(|c| **c > since)
        .min()
        .and_then(|c| due(a.report_on_change_days, *c, DueRule::UsageChange));
    // On a tie the change is named: it is the newer reason.
    [change, periodic]
        .into_iter()
        .flatten()
        .min_by_key(|d| d.at)
}

impl Deadlines {
    /// The deadline compliance is judged by: the ACK deadline when ACKs are required, else the
    /// next report.
    pub fn governing(&self) -> Option<Due> {
        self.ack_deadline.or(self.next_report)
    }

    pub fn status(&self, now: DateTime<Utc>) -> DeadlineStatus {
        match self.governing() {
            None => DeadlineStatus::NoReportingNeeded,
            Some(d) if now >= d.at => DeadlineStatus::Overdue,
            Some(d) if (d.at - now).num_seconds() <= WARNING_DAYS * 86_400 => {
                DeadlineStatus::DueSoon
            }
            Some(_) => DeadlineStatus::Ok,
        }
    }

    /// Whole days left to the governing deadline (negative when overdue).
    pub fn days_left(&self, now: DateTime<Utc>) -> Option<i64> {
        self.governing().map(|d| days_left(d.at, now))
    }
}

/// A subscription's term, for renewal reminders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionTerm {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl SubscriptionTerm {
    /// Whole days until the term ends (negative once it has).
    pub fn days_left(&self, now: DateTime<Utc>) -> i64 {
        days_left(self.end, now)
    }

    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.end
    }
}

impl Policy {
    /// Cisco's default policy (slp-reference section 1).
    pub fn cisco_default() -> Self {
        Self {
            name: "Cisco default".into(),
            ack_required: true,
            perpetual: PolicyAttrs::new(365, 0, 90),
            subscription: PolicyAttrs::new(90, 90, 90),
            enforced: PolicyAttrs::new(0, 0, 0),
        }
    }

    /// This policy with `kind`'s row replaced, as a custom policy imported on the device does.
    pub fn with_attrs(mut self, kind: LicenseKind, attrs: PolicyAttrs) -> Self {
        *match kind {
            LicenseKind::Perpetual => &mut self.perpetual,
            LicenseKind::Subscription => &mut self.subscription,
            LicenseKind::Enforced => &mut self.enforced,
        } = attrs;
        self
    }

    pub fn attrs(&self, kind: LicenseKind) -> PolicyAttrs {
        match kind {
            LicenseKind::Perpetual => self.perpetual,
            LicenseKind::Subscription => self.subscription,
            LicenseKind::Enforced => self.enforced,
        }
    }

    /// The deadline engine: next report due and ACK deadline for one device and entitlement.
    /// A report counts from when it was sent; for the ACK deadline only an ACK counts.
    pub fn deadlines(&self, usage: &Usage) -> Deadlines {
        let a = self.attrs(usage.kind);
        // An ACK answers a report, so the device has reported at least by then.
        let reported = usage.last_report.max(usage.last_ack);
        Deadlines {
            next_report: next_due(a, usage, reported),
            ack_deadline: self
                .ack_required
                .then(|| next_due(a, usage, usage.last_ack))
                .flatten(),
            ack_pending: self.ack_required && usage.last_report > usage.last_ack,
        }
    }

    /// Next ACK deadline for a device holding a subscription (DNA) license: the reporting
    /// frequency after the last ACK, or the first-report window after first use when never acked.
    pub fn next_subscription_ack_deadline(
        &self,
        first_use: DateTime<Utc>,
        last_ack: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let usage = Usage {
            kind: LicenseKind::Subscription,
            first_use,
            last_report: last_ack,
            last_ack,
            changes: Vec::new(),
        };
        next_due(self.subscription, &usage, last_ack).map(|d| d.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn usage(kind: LicenseKind, first_use: DateTime<Utc>) -> Usage {
        Usage {
            kind,
            first_use,
            last_report: None,
            last_ack: None,
            changes: Vec::new(),
        }
    }

    fn acked(kind: LicenseKind, first_use: DateTime<Utc>, ack: DateTime<Utc>) -> Usage {
        Usage {
            last_report: Some(ack),
            last_ack: Some(ack),
            ..usage(kind, first_use)
        }
    }

    fn days(n: i64) -> TimeDelta {
        TimeDelta::days(n)
    }

    #[test]
    fn seed_004_example() {
        // show license status: Last ACK 2026-01-15 08:22:14 UTC -> Next ACK deadline 2026-04-15 08:22:14 UTC
        let last = Utc.with_ymd_and_hms(2026, 1, 15, 8, 22, 14).unwrap();
        let want = Utc.with_ymd_and_hms(2026, 4, 15, 8, 22, 14).unwrap();
        let p = Policy::cisco_default();
        assert_eq!(
            p.next_subscription_ack_deadline(last, Some(last)),
            Some(want)
        );
        // The same through the engine, with the device installed months earlier (seed: 2025-06-01).
        let installed = Utc.with_ymd_and_hms(2025, 6, 1, 11, 4, 33).unwrap();
        let d = p.deadlines(&acked(LicenseKind::Subscription, installed, last));
        let ack = d.ack_deadline.unwrap();
        assert_eq!((ack.at, ack.rule), (want, DueRule::Periodic));
        assert_eq!(d.next_report.unwrap().at, want);
        assert!(!d.ack_pending);
    }

    #[test]
    fn first_report_window_when_never_acked() {
        let first = t(2026, 1, 1);
        let d = Policy::cisco_default()
            .next_subscription_ack_deadline(first, None)
            .unwrap();
        assert_eq!(d, t(2026, 4, 1));
    }

    #[test]
    fn default_perpetual_reports_once_then_only_on_change() {
        let p = Policy::cisco_default();
        let first = t(2026, 1, 1);
        let d = p.deadlines(&usage(LicenseKind::Perpetual, first));
        assert_eq!(d.ack_deadline.unwrap().at, first + days(365));
        assert_eq!(d.ack_deadline.unwrap().rule, DueRule::FirstReport);
        assert_eq!(d.status(first), DeadlineStatus::Ok);
        assert_eq!(d.status(first + days(340)), DeadlineStatus::DueSoon);
        assert_eq!(d.status(first + days(365)), DeadlineStatus::Overdue);
        // Reporting frequency 0: once acked and unchanged, nothing more is due.
        let d = p.deadlines(&acked(LicenseKind::Perpetual, first, t(2026, 3, 1)));
        assert_eq!(d.governing(), None);
        assert_eq!(d.status(t(2030, 1, 1)), DeadlineStatus::NoReportingNeeded);
    }

    #[test]
    fn default_subscription_is_90_days_from_first_use_then_from_each_ack() {
        let p = Policy::cisco_default();
        let first = t(2026, 1, 1);
        let d = p.deadlines(&usage(LicenseKind::Subscription, first));
        assert_eq!(d.ack_deadline.unwrap().at, first + days(90));
        let ack = t(2026, 2, 10);
        let d = p.deadlines(&acked(LicenseKind::Subscription, first, ack));
        assert_eq!(d.ack_deadline.unwrap().at, ack + days(90));
        assert_eq!(d.days_left(ack), Some(90));
    }

    #[test]
    fn enforced_needs_no_reporting_even_after_a_change() {
        let p = Policy::cisco_default();
        let mut u = usage(LicenseKind::Enforced, t(2026, 1, 1));
        u.changes = vec![t(2026, 2, 1)];
        let d = p.deadlines(&u);
        assert_eq!((d.next_report, d.ack_deadline), (None, None));
        assert_eq!(d.status(t(2027, 1, 1)), DeadlineStatus::NoReportingNeeded);
    }

    #[test]
    fn custom_30_60_60() {
        let p = Policy::cisco_default()
            .with_attrs(LicenseKind::Subscription, PolicyAttrs::new(30, 60, 60));
        let first = t(2026, 1, 1);
        let d = p.deadlines(&usage(LicenseKind::Subscription, first));
        assert_eq!(d.ack_deadline.unwrap().at, first + days(30));
        let ack = t(2026, 1, 20);
        let mut u = acked(LicenseKind::Subscription, first, ack);
        assert_eq!(p.deadlines(&u).ack_deadline.unwrap().at, ack + days(60));
        // A change 10 days after the ACK is due 70 days after it: the periodic 60 comes first.
        u.changes = vec![ack + days(10)];
        let due = p.deadlines(&u).ack_deadline.unwrap();
        assert_eq!((due.at, due.rule), (ack + days(60), DueRule::Periodic));
        // Perpetual keeps Cisco's row.
        let d = p.deadlines(&usage(LicenseKind::Perpetual, first));
        assert_eq!(d.ack_deadline.unwrap().at, first + days(365));
    }

    #[test]
    fn report_on_change_shortens_the_next_due_date() {
        let p = Policy::cisco_default();
        let first = t(2026, 1, 1);
        let ack = t(2026, 2, 1);
        let mut u = acked(LicenseKind::Perpetual, first, ack);
        u.changes = vec![ack + days(10)];
        let due = p.deadlines(&u).ack_deadline.unwrap();
        assert_eq!((due.at, due.rule), (ack + days(100), DueRule::UsageChange));

        let p = p.with_attrs(LicenseKind::Subscription, PolicyAttrs::new(90, 90, 30));
        let mut u = acked(LicenseKind::Subscription, first, ack);
        assert_eq!(p.deadlines(&u).ack_deadline.unwrap().at, ack + days(90));
        u.changes = vec![ack + days(20)];
        let due = p.deadlines(&u).ack_deadline.unwrap();
        assert_eq!((due.at, due.rule), (ack + days(50), DueRule::UsageChange));
        // A change already covered by the ACK does not count again.
        u.changes = vec![ack - days(1)];
        assert_eq!(p.deadlines(&u).ack_deadline.unwrap().at, ack + days(90));
    }

    #[test]
    fn the_earliest_unreported_change_counts_not_the_latest() {
        let ack = t(2026, 2, 1);
        let mut u = acked(LicenseKind::Perpetual, t(2026, 1, 1), ack);
        u.changes = vec![ack + days(50), ack + days(10), ack - days(5)];
        let due = Policy::cisco_default().deadlines(&u).ack_deadline.unwrap();
        assert_eq!(due.at, ack + days(100));
    }

    #[test]
    fn changes_before_the_first_report_are_covered_by_its_window() {
        let mut u = usage(LicenseKind::Perpetual, t(2026, 1, 1));
        u.changes = vec![t(2026, 1, 2)];
        let due = Policy::cisco_default().deadlines(&u).ack_deadline.unwrap();
        assert_eq!(
            (due.at, due.rule),
            (t(2026, 1, 1) + days(365), DueRule::FirstReport)
        );
    }

    #[test]
    fn sending_does_not_meet_an_ack_deadline() {
        let p = Policy::cisco_default();
        let ack = t(2026, 1, 1);
        let mut u = acked(LicenseKind::Subscription, t(2025, 1, 1), ack);
        u.last_report = Some(ack + days(80));
        let d = p.deadlines(&u);
        assert!(d.ack_pending);
        assert_eq!(d.next_report.unwrap().at, ack + days(170));
        assert_eq!(d.ack_deadline.unwrap().at, ack + days(90));
        assert_eq!(d.status(ack + days(91)), DeadlineStatus::Overdue);
    }

    #[test]
    fn without_ack_required_the_report_is_the_deadline() {
        let p = Policy {
            ack_required: false,
            ..Policy::cisco_default()
        };
        let sent = t(2026, 1, 1);
        let mut u = usage(LicenseKind::Subscription, t(2025, 12, 1));
        u.last_report = Some(sent);
        let d = p.deadlines(&u);
        assert_eq!(d.ack_deadline, None);
        assert!(!d.ack_pending);
        assert_eq!(d.governing().unwrap().at, sent + days(90));
    }

    #[test]
    fn an_ack_from_before_first_use_does_not_count() {
        let first = t(2026, 1, 1);
        let u = acked(LicenseKind::Subscription, first, first - days(10));
        let due = Policy::cisco_default().deadlines(&u).ack_deadline.unwrap();
        assert_eq!((due.at, due.rule), (first + days(90), DueRule::FirstReport));
    }

    #[test]
    fn status_boundaries_and_whole_days() {
        let at = t(2026, 4, 15);
        let d = Deadlines {
            next_report: None,
            ack_deadline: Some(Due {
                at,
                rule: DueRule::Periodic,
            }),
            ack_pending: false,
        };
        let s = TimeDelta::seconds;
        assert_eq!(d.status(at - days(30) - s(1)), DeadlineStatus::Ok);
        assert_eq!(d.status(at - days(30)), DeadlineStatus::DueSoon);
        assert_eq!(d.status(at - s(1)), DeadlineStatus::DueSoon);
        assert_eq!(d.status(at), DeadlineStatus::Overdue);
        assert_eq!(days_left(at, at - s(1)), 0);
        assert_eq!(days_left(at, at + s(1)), -1);
        assert_eq!(days_left(at, at - days(2) - s(1)), 2);
    }

    #[test]
    fn huge_custom_days_mean_never_not_a_panic() {
        let p = Policy::cisco_default()
            .with_attrs(LicenseKind::Subscription, PolicyAttrs::new(u32::MAX, 0, 0));
        let d = p.deadlines(&usage(LicenseKind::Subscription, t(2026, 1, 1)));
        assert_eq!(d.governing(), None);
    }

    #[test]
    fn term_days_left() {
        let term = SubscriptionTerm {
            start: t(2025, 1, 1),
            end: t(2028, 1, 1),
        };
        assert_eq!(term.days_left(t(2027, 12, 2)), 30);
        assert!(!term.expired(t(2027, 12, 31)));
        assert!(term.expired(t(2028, 1, 1)));
    }
}
