//! Reporting policy and the ACK deadline it implies.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Policy attributes for one license kind (days; 0 means "not required").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAttrs {
    pub first_report_days: u32,
    pub reporting_frequency_days: u32,
    pub report_on_change_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub ack_required: bool,
    pub perpetual: PolicyAttrs,
    pub subscription: PolicyAttrs,
    pub enforced: PolicyAttrs,
}

impl Policy {
    /// Cisco's default policy (slp-reference section 1).
    pub fn cisco_default() -> Self {
        Self {
            name: "Cisco default".into(),
            ack_required: true,
            perpetual: PolicyAttrs {
                first_report_days: 365,
                reporting_frequency_days: 0,
                report_on_change_days: 90,
            },
            subscription: PolicyAttrs {
                first_report_days: 90,
                reporting_frequency_days: 90,
                report_on_change_days: 90,
            },
            enforced: PolicyAttrs {
                first_report_days: 0,
                reporting_frequency_days: 0,
                report_on_change_days: 0,
            },
        }
    }

    /// Next ACK deadline for a device holding a subscription (DNA) license: the reporting
    /// frequency after the last ACK, or the first-report window after first use when never acked.
    pub fn next_subscription_ack_deadline(
        &self,
        first_use: DateTime<Utc>,
        last_ack: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let a = self.subscription;
        match last_ack {
            Some(t) if a.reporting_frequency_days > 0 => {
                Some(t + Duration::days(i64::from(a.reporting_frequency_days)))
            }
            Some(_) => None,
            None if a.first_report_days > 0 => {
                Some(first_use + Duration::days(i64::from(a.first_report_days)))
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn seed_004_example() {
        // show license status: Last ACK 2026-01-15 08:22:14 UTC -> Next ACK deadline 2026-04-15 08:22:14 UTC
        let last = Utc.with_ymd_and_hms(2026, 1, 15, 8, 22, 14).unwrap();
        let d = Policy::cisco_default()
            .next_subscription_ack_deadline(last, Some(last))
            .unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2026, 4, 15, 8, 22, 14).unwrap());
    }

    #[test]
    fn first_report_window_when_never_acked() {
        let first = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let d = Policy::cisco_default()
            .next_subscription_ack_deadline(first, None)
            .unwrap();
        assert_eq!(d, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap());
    }
}
