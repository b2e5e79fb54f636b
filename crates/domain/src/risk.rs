//! What a missed deadline does to a device, and the ranked "at risk" list (seed 000: CUBE, SRST
//! and CME stop working; routers, switches and WLCs raise syslog alarms).

use crate::policy::{DeadlineStatus, Deadlines, DueRule};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::{cmp::Ordering, fmt, str::FromStr};

/// What a device does for the network, as far as a missed deadline is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRole {
    /// Cisco Unified Border Element.
    Cube,
    /// Survivable Remote Site Telephony.
    Srst,
    /// Communications Manager Express.
    Cme,
    Switch,
    Router,
    Wlc,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown device role {0:?}; expected cube, srst, cme, switch, router or wlc")]
pub struct RoleParseError(pub String);

impl DeviceRole {
    pub const ALL: [Self; 6] = [
        Self::Cube,
        Self::Srst,
        Self::Cme,
        Self::Switch,
        Self::Router,
        Self::Wlc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cube => "cube",
            Self::Srst => "srst",
            Self::Cme => "cme",
            Self::Switch => "switch",
            Self::Router => "router",
            Self::Wlc => "wlc",
        }
    }

    pub fn impact(self) -> Impact {
        match self {
            Self::Cube | Self::Srst | Self::Cme => Impact::Critical,
            Self::Switch | Self::Router | Self::Wlc => Impact::Warning,
        }
    }

    /// What the device does on a missed deadline, in an operator's words.
    fn consequence(self) -> &'static str {
        match self {
            Self::Cube => "CUBE shuts down (calls stop)",
            Self::Srst => "SRST shuts down (no fallback for phones)",
            Self::Cme => "CME shuts down (call control stops)",
            Self::Switch => "switch raises syslog alarms",
            Self::Router => "router raises syslog alarms",
            Self::Wlc => "wireless controller raises syslog alarms",
        }
    }
}

impl fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceRole {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| RoleParseError(s.to_owned()))
    }
}

/// Impact of a missed deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// The device stops working.
    Critical,
    /// The device keeps working and raises alarms.
    Warning,
}

/// One device's risk: its nearest deadline over all its entitlements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRisk {
    /// Stable id for ties (the UDI, say).
    pub key: String,
    pub role: DeviceRole,
    pub impact: Impact,
    pub status: DeadlineStatus,
    /// The entitlement whose deadline is nearest.
    pub entitlement: Option<String>,
    pub deadline: Option<DateTime<Utc>>,
    /// Whole days left (negative when overdue); `None` when nothing is due.
    pub days_left: Option<i64>,
    pub reason: String,
}

impl DeviceRisk {
    /// Risk of one device from the deadlines of its entitlements (tag, deadlines).
    pub fn assess(
        key: impl Into<String>,
        role: DeviceRole,
        entitlements: &[(&str, Deadlines)],
        now: DateTime<Utc>,
    ) -> Self {
        let nearest = entitlements
            .iter()
            .filter_map(|(tag, d)| d.governing().map(|due| (*tag, d, due)))
            .min_by_key(|(tag, _, due)| (due.at, *tag));
        let Some((tag, d, due)) = nearest else {
            return Self {
                key: key.into(),
                role,
                impact: role.impact(),
                status: DeadlineStatus::NoReportingNeeded,
                entitlement: None,
                deadline: None,
                days_left: None,
                reason: "no report is due under the installed policy".into(),
            };
        };
        let status = d.status(now);
        let days = crate::policy::days_left(due.at, now);
        let what = if d.ack_deadline.is_some() {
            format!("an ACK for {tag}")
        } else {
            format!("a report of {tag}")
        };
        let why = match due.rule {
            DueRule::FirstReport => "first report since first use",
            DueRule::Periodic => "periodic report",
            DueRule::UsageChange => "report of a usage change",
        };
        let when = due.at.format("%Y-%m-%d %H:%M UTC");
        let reason = if status == DeadlineStatus::Overdue {
            format!(
                "{} now: {what} was due {when}, {} days ago ({why})",
                role.consequence(),
                -days
            )
        } else {
            format!(
                "{} unless {what} is in by {when}, {days} days left ({why})",
                role.consequence()
            )
        };
        Self {
            key: key.into(),
            role,
            impact: role.impact(),
            status,
            entitlement: Some(tag.to_owned()),
            deadline: Some(due.at),
            days_left: Some(days),
            reason,
        }
    }
}

/// The at-risk order: critical before others, then fewer days left first (nothing due last),
/// then by key so the order never depends on input order.
pub fn rank_cmp(a: &DeviceRisk, b: &DeviceRisk) -> Ordering {
    let k = |r: &DeviceRisk| {
        (
            r.impact != Impact::Critical,
            r.days_left.is_none(),
            r.days_left,
        )
    };
    k(a).cmp(&k(b)).then_with(|| a.key.cmp(&b.key))
}

/// Sorts `risks` into the at-risk order ([`rank_cmp`]).
pub fn rank(risks: &mut [DeviceRisk]) {
    risks.sort_by(rank_cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LicenseKind, Policy, Usage};
    use chrono::{TimeDelta, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap()
    }

    /// Deadlines of a DNA license acked `ago` days before `now()`.
    fn dna(ago: i64) -> Deadlines {
        let ack = now() - TimeDelta::days(ago);
        Policy::cisco_default().deadlines(&Usage {
            kind: LicenseKind::Subscription,
            first_use: ack - TimeDelta::days(400),
            last_report: Some(ack),
            last_ack: Some(ack),
            changes: Vec::new(),
        })
    }

    #[test]
    fn voice_roles_are_critical() {
        for r in DeviceRole::ALL {
            let critical = matches!(r, DeviceRole::Cube | DeviceRole::Srst | DeviceRole::Cme);
            assert_eq!(r.impact() == Impact::Critical, critical, "{r}");
            assert_eq!(r.as_str().to_uppercase().parse::<DeviceRole>(), Ok(r));
        }
        assert!("firewall".parse::<DeviceRole>().is_err());
    }

    #[test]
    fn assess_takes_the_nearest_entitlement_and_says_why() {
        let r = DeviceRisk::assess(
            "ISR4451:FDO1",
            DeviceRole::Cube,
            &[("dna-advantage", dna(80)), ("network-advantage", dna(10))],
            now(),
        );
        assert_eq!(r.entitlement.as_deref(), Some("dna-advantage"));
        assert_eq!(r.days_left, Some(10));
        assert_eq!(r.status, DeadlineStatus::DueSoon);
        assert!(r.reason.starts_with("CUBE shuts down"), "{}", r.reason);
        assert!(
            r.reason.contains("an ACK for dna-advantage"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("10 days left"), "{}", r.reason);

        let late = DeviceRisk::assess(
            "x",
            DeviceRole::Switch,
            &[("dna-essentials", dna(93))],
            now(),
        );
        assert_eq!(late.status, DeadlineStatus::Overdue);
        assert!(late.reason.contains("3 days ago"), "{}", late.reason);

        let none = DeviceRisk::assess("y", DeviceRole::Cme, &[], now());
        assert_eq!(
            (none.status, none.days_left),
            (DeadlineStatus::NoReportingNeeded, None)
        );
    }

    #[test]
    fn ranking_critical_first_then_days_left_then_key() {
        let mut v = vec![
            DeviceRisk::assess("sw-b", DeviceRole::Switch, &[("t", dna(95))], now()),
            DeviceRisk::assess("cube-far", DeviceRole::Cube, &[("t", dna(1))], now()),
            DeviceRisk::assess("sw-a", DeviceRole::Switch, &[("t", dna(95))], now()),
            DeviceRisk::assess("srst-idle", DeviceRole::Srst, &[], now()),
            DeviceRisk::assess("cme-near", DeviceRole::Cme, &[("t", dna(85))], now()),
        ];
        rank(&mut v);
        let keys: Vec<_> = v.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["cme-near", "cube-far", "srst-idle", "sw-a", "sw-b"]);
    }
}
