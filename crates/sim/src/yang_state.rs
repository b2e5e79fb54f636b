//! The smart-licensing operational state of a simulated device, as the published YANG module
//! `cisco-smart-license` (YangModels/yang `vendor/cisco/xe/17181/cisco-smart-license.yang`,
//! revision 2021-03-01; the same file ships for 26.1.1) shapes it: `licensing/state` with
//! `smart-enabled` and `state-info/{policy, rum-ack}`. Rendered in the RESTCONF JSON encoding
//! (RFC 7951): the top node of an answer is qualified with the module name, the nodes below it
//! are not; `uint32` leaves are JSON numbers, `yang:date-and-time` leaves RFC 3339 strings.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tally_domain::policy::{LicenseKind, Policy, PolicyAttrs, Usage};

/// The module name qualifying the top node of every answer.
pub const MODULE: &str = "cisco-smart-license";

/// The policy a simulated device runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimPolicy {
    /// Cisco's default policy (`policy-type-cisco-default`).
    #[default]
    CiscoDefault,
    /// A customer policy seen in the wild: first report within 30 days, then every 60 days,
    /// and within 60 days of a change, for perpetual and subscription licenses alike.
    #[serde(rename = "custom_30_60_60")]
    Custom306060,
    /// A policy under which enforced and export-controlled licenses must be reported every 30
    /// days (and within 30 days of a change); the other kinds as Cisco's default.
    Enforced,
}

impl SimPolicy {
    /// The YANG `policy-types-enum` value.
    pub fn yang_type(self) -> &'static str {
        match self {
            Self::CiscoDefault => "policy-type-cisco-default",
            Self::Custom306060 | Self::Enforced => "policy-type-custom",
        }
    }

    /// The policy's attributes, as Tally's domain names them.
    pub fn policy(self) -> Policy {
        let default = Policy::cisco_default();
        match self {
            Self::CiscoDefault => default,
            Self::Custom306060 => Policy {
                name: "Custom 30/60/60".into(),
                ..default
            }
            .with_attrs(LicenseKind::Perpetual, PolicyAttrs::new(30, 60, 60))
            .with_attrs(LicenseKind::Subscription, PolicyAttrs::new(30, 60, 60)),
            Self::Enforced => Policy {
                name: "Enforced 0/30/30".into(),
                ..default
            }
            .with_attrs(LicenseKind::Enforced, PolicyAttrs::new(0, 30, 30)),
        }
    }

    /// The export row: the domain folds export into enforced, the YANG keeps them apart.
    fn export(self) -> PolicyAttrs {
        self.policy().enforced
    }
}

/// What a device knows of its licensing state.
#[derive(Debug, Clone)]
pub struct StateView {
    pub policy: SimPolicy,
    pub policy_installed: DateTime<Utc>,
    /// When the device last took an ACK (`None`: never).
    pub last_ack: Option<DateTime<Utc>>,
    /// When the device expects its next ACK (`None`: no ACK is required).
    pub next_ack_deadline: Option<DateTime<Utc>>,
    pub pid: String,
    pub serial: String,
    /// Off: the device runs software whose model predates `rum-ack` (revision 2020-11-01,
    /// IOS-XE 17.4): its state has no `rum-ack` container.
    pub rum_ack: bool,
}

/// The device's own next ACK deadline under `policy`, for a license of `kind` first used at
/// `first_use`: the deadline engine run the way the device runs it.
pub fn device_ack_deadline(
    policy: SimPolicy,
    kind: LicenseKind,
    first_use: DateTime<Utc>,
    last_ack: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    policy
        .policy()
        .deadlines(&Usage {
            kind,
            first_use,
            last_report: last_ack,
            last_ack,
            changes: Vec::new(),
        })
        .ack_deadline
        .map(|d| d.at)
}

fn date_time(t: DateTime<Utc>) -> Value {
    // yang:date-and-time with a numeric offset, as IOS-XE writes it; fractions so that two
    // ACKs within one second still move the leaf (microseconds: a test may import twice in one ms).
    Value::from(
        t.to_rfc3339_opts(SecondsFormat::Micros, false)
            .replace('Z', "+00:00"),
    )
}

fn attrs(a: PolicyAttrs) -> Value {
    json!({
        "reporting-first-time": a.first_report_days,
        "reporting-ongoing": a.reporting_frequency_days,
        "reporting-macd": a.report_on_change_days,
    })
}

/// The `licensing` container's `state` (unqualified; see [`select`]).
pub fn licensing(v: &StateView) -> Value {
    let p = v.policy.policy();
    let mut rum_ack = Map::new();
    if let Some(t) = v.last_ack {
        rum_ack.insert("last-received-time".into(), date_time(t));
    }
    if let Some(t) = v.next_ack_deadline {
        rum_ack.insert("next-report-deadline".into(), date_time(t));
    }
    let mut state = json!({
        "state": {
            "always-enabled": true,
            "smart-enabled": true,
            "version": "5.5.0_rel/52",
            "state-info": {
                "custom-id": "",
                "udi": {"pid": v.pid, "sn": v.serial},
                "policy": {
                    "policy-type": v.policy.yang_type(),
                    "policy-name": p.name,
                    "install-time": date_time(v.policy_installed),
                    "ack-required": p.ack_required,
                    "policy-enforced": attrs(p.enforced),
                    "policy-export": attrs(v.policy.export()),
                    "policy-subscription": attrs(p.subscription),
                    "policy-perpetual": attrs(p.perpetual),
                },
                "rum-ack": Value::Object(rum_ack),
            }
        }
    });
    if !v.rum_ack
        && let Some(info) = state
            .get_mut("state")
            .and_then(|s| s.get_mut("state-info"))
            .and_then(Value::as_object_mut)
    {
        info.remove("rum-ack");
    }
    state
}

/// The answer to `GET .../data/cisco-smart-license:licensing[/<path>]`: the node at `path`
/// (segments may carry the module prefix) under its module-qualified name, or `None` when there
/// is no such node.
pub fn select(licensing: Value, path: &str) -> Option<Value> {
    let mut name = "licensing".to_owned();
    let mut node = licensing;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.strip_prefix("cisco-smart-license:").unwrap_or(seg);
        node = node.as_object_mut()?.remove(seg)?;
        name = seg.to_owned();
    }
    let mut top = Map::new();
    top.insert(format!("{MODULE}:{name}"), node);
    Some(Value::Object(top))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn view(policy: SimPolicy) -> StateView {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap();
        StateView {
            policy,
            policy_installed: t,
            last_ack: Some(t),
            next_ack_deadline: device_ack_deadline(policy, LicenseKind::Subscription, t, Some(t)),
            pid: "C9300-24P".into(),
            serial: "FCW0000001".into(),
            rum_ack: true,
        }
    }

    #[test]
    fn answers_are_qualified_at_the_top_only() {
        let v = select(licensing(&view(SimPolicy::CiscoDefault)), "state").unwrap();
        let info = &v["cisco-smart-license:state"]["state-info"];
        assert_eq!(info["policy"]["policy-type"], "policy-type-cisco-default");
        assert_eq!(
            info["rum-ack"]["last-received-time"],
            "2026-12-01T08:00:00.000000+00:00"
        );
        assert_eq!(
            info["rum-ack"]["next-report-deadline"],
            "2027-03-01T08:00:00.000000+00:00"
        );
        let v = select(
            licensing(&view(SimPolicy::Custom306060)),
            "cisco-smart-license:state/state-info/policy/policy-subscription",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"cisco-smart-license:policy-subscription": {
                "reporting-first-time": 30, "reporting-ongoing": 60, "reporting-macd": 60}})
        );
        assert!(select(licensing(&view(SimPolicy::Enforced)), "state/nope").is_none());
    }

    #[test]
    fn policies_differ_where_they_should() {
        assert_eq!(
            SimPolicy::Custom306060
                .policy()
                .subscription
                .reporting_frequency_days,
            60
        );
        assert_eq!(
            SimPolicy::Enforced
                .policy()
                .enforced
                .reporting_frequency_days,
            30
        );
        assert_eq!(
            SimPolicy::Enforced.policy().subscription,
            Policy::cisco_default().subscription
        );
    }
}
