#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the deadline engine, the alert thresholds and the at-risk ranking.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use std::collections::HashSet;
use tally_domain::alert::{
    AlertKind, AlertState, AlertThresholds, Threshold, due_alerts, due_alerts_with,
};
use tally_domain::policy::{DeadlineStatus, LicenseKind, Policy, PolicyAttrs, Usage};
use tally_domain::risk::{DeviceRisk, DeviceRole, Impact, rank};

const YEARS: i64 = 6 * 365 * 86_400;

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
}

/// A time within six years of 2024, to the second.
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0..YEARS).prop_map(|s| epoch() + TimeDelta::seconds(s))
}

fn attrs() -> impl Strategy<Value = PolicyAttrs> {
    // Zeros are common in real policies, so make them likely.
    let days = prop_oneof![Just(0u32), 1u32..400];
    (days.clone(), days.clone(), days).prop_map(|(a, b, c)| PolicyAttrs::new(a, b, c))
}

fn policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), attrs(), attrs(), attrs()).prop_map(|(ack, p, s, e)| Policy {
        name: "generated".into(),
        ack_required: ack,
        perpetual: p,
        subscription: s,
        enforced: e,
    })
}

fn kind() -> impl Strategy<Value = LicenseKind> {
    prop_oneof![
        Just(LicenseKind::Perpetual),
        Just(LicenseKind::Subscription),
        Just(LicenseKind::Enforced)
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        kind(),
        time(),
        proptest::option::of(time()),
        proptest::option::of(time()),
        prop::collection::vec(time(), 0..4),
    )
        .prop_map(|(kind, first_use, last_report, last_ack, changes)| Usage {
            kind,
            first_use,
            last_report,
            last_ack,
            changes,
        })
}

fn role() -> impl Strategy<Value = DeviceRole> {
    proptest::sample::select(DeviceRole::ALL.to_vec())
}

proptest! {
    #[test]
    fn ack_deadline_is_after_the_last_ack(p in policy(), u in usage()) {
        let d = p.deadlines(&u);
        if let (Some(due), Some(ack)) = (d.ack_deadline, u.last_ack) {
            prop_assert!(due.at > ack, "deadline {} not after ACK {}", due.at, ack);
        }
        if let (Some(due), Some(sent)) = (d.next_report, u.last_report) {
            prop_assert!(due.at > sent, "next report {} not after report {}", due.at, sent);
        }
        if !p.ack_required {
            prop_assert!(d.ack_deadline.is_none() && !d.ack_pending);
        }
    }

    #[test]
    fn overdue_stays_overdue_without_a_new_ack(
        p in policy(),
        u in usage(),
        now in time(),
        later in prop::collection::vec(0..YEARS, 1..6),
        new_report in proptest::option::of(0..YEARS),
        new_change in proptest::option::of(0..YEARS),
    ) {
        let p = Policy { ack_required: true, ..p };
        prop_assume!(p.deadlines(&u).status(now) == DeadlineStatus::Overdue);
        // Time passes, and the device may send a report or change its usage, but no ACK comes.
        let mut v = u.clone();
        if let Some(s) = new_report {
            v.last_report = Some(now + TimeDelta::seconds(s));
        }
        if let Some(s) = new_change {
            v.changes.push(now + TimeDelta::seconds(s));
        }
        let d = p.deadlines(&v);
        let mut t = now;
        for step in later {
            t += TimeDelta::seconds(step);
            prop_assert_eq!(d.status(t), DeadlineStatus::Overdue, "at {}", t);
        }
    }

    #[test]
    fn status_never_improves_as_time_passes(p in policy(), u in usage(), a in time(), b in time()) {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let d = p.deadlines(&u);
        let rank = |s| match s {
            DeadlineStatus::NoReportingNeeded | DeadlineStatus::Ok => 0,
            DeadlineStatus::DueSoon => 1,
            DeadlineStatus::Overdue => 2,
        };
        prop_assert!(rank(d.status(a)) <= rank(d.status(b)));
    }

    #[test]
    fn each_threshold_fires_at_most_once(
        ack in proptest::option::of(time()),
        term in proptest::option::of(time()),
        nows in prop::collection::vec(time(), 1..40),
        custom in prop::collection::vec(
            prop_oneof![Just(Threshold::Passed), (0u32..200).prop_map(Threshold::DaysBefore)],
            0..6,
        ),
    ) {
        let state = AlertState { subject: "dev".into(), ack_deadline: ack, term_end: term };
        let thresholds = AlertThresholds { ack_deadline: custom.clone(), term_end: custom };
        for with_custom in [false, true] {
            let mut sent = HashSet::new();
            for now in &nows {
                let fired = if with_custom {
                    due_alerts_with(&thresholds, &state, *now, &sent)
                } else {
                    due_alerts(&state, *now, &sent)
                };
                // At most one per kind per run: the most urgent, not every threshold crossed.
                let kinds: HashSet<AlertKind> = fired.iter().map(|k| k.kind).collect();
                prop_assert_eq!(kinds.len(), fired.len());
                for k in fired {
                    if let Threshold::DaysBefore(n) = k.threshold {
                        prop_assert!(k.due - *now <= TimeDelta::days(i64::from(n)));
                    }
                    prop_assert!(sent.insert(k.clone()), "{:?} fired twice", k);
                }
            }
        }
    }

    #[test]
    fn ranking_puts_every_critical_device_first(
        devices in prop::collection::vec((role(), proptest::option::of(-200i64..200)), 0..40),
    ) {
        let now = epoch();
        let p = Policy::cisco_default();
        let risks: Vec<DeviceRisk> = devices
            .iter()
            .enumerate()
            .map(|(i, (role, days))| {
                // A DNA license whose ACK deadline is `days` away (or nothing due when None).
                let ents: Vec<(&str, _)> = days
                    .iter()
                    .map(|d| {
                        let ack = now + TimeDelta::days(d - 90);
                        let u = Usage {
                            kind: LicenseKind::Subscription,
                            first_use: ack - TimeDelta::days(1),
                            last_report: Some(ack),
                            last_ack: Some(ack),
                            changes: Vec::new(),
                        };
                        ("dna-advantage", p.deadlines(&u))
                    })
                    .collect();
                DeviceRisk::assess(format!("dev-{i:03}"), *role, &ents, now)
            })
            .collect();
        let mut ranked = risks.clone();
        rank(&mut ranked);
        let first_other = ranked.iter().position(|r| r.impact != Impact::Critical);
        if let Some(i) = first_other {
            prop_assert!(ranked[i..].iter().all(|r| r.impact != Impact::Critical));
        }
        for w in ranked.windows(2) {
            if w[0].impact == w[1].impact {
                let k = |r: &DeviceRisk| (r.days_left.is_none(), r.days_left, r.key.clone());
                prop_assert!(k(&w[0]) <= k(&w[1]), "{:?} before {:?}", w[0].key, w[1].key);
            }
        }
        // The order does not depend on the input order.
        let mut reversed: Vec<_> = risks.into_iter().rev().collect();
        rank(&mut reversed);
        prop_assert_eq!(ranked, reversed);
    }
}
