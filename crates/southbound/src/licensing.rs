//! A device's smart-licensing operational state over RESTCONF (RFC 8040, JSON encoding RFC 7951),
//! as Cisco's published YANG module `cisco-smart-license` shapes it (YangModels/yang,
//! `vendor/cisco/xe/17181/cisco-smart-license.yang`, revision 2021-03-01):
//!
//! - `licensing/state/smart-enabled`;
//! - `licensing/state/state-info/policy`: `policy-type` (enum `policy-types-enum`),
//!   `policy-name`, `install-time`, `ack-required`, and per license kind (`policy-enforced`,
//!   `policy-export`, `policy-subscription`, `policy-perpetual`) the days `reporting-first-time`,
//!   `reporting-ongoing`, `reporting-macd`;
//! - `licensing/state/state-info/rum-ack`: `last-received-time` (when an ACK was last received)
//!   and `next-report-deadline` (when the next ACK is expected).
//!
//! The reader is tolerant: module prefixes anywhere or nowhere, numbers and booleans as JSON
//! values or strings, several date-time spellings; a leaf it cannot read is left out and named in
//! [`LicensingState::unreadable`], never an error for the whole answer.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tally_domain::policy::{Policy, PolicyAttrs};

/// Path of the state container below a device's base URL.
pub const LICENSING_STATE_PATH: &str = "restconf/data/cisco-smart-license:licensing/state";

pub(crate) fn url(base_url: &str) -> String {
    format!("{}/{LICENSING_STATE_PATH}", base_url.trim_end_matches('/'))
}

/// The outcome of reading the state: read, or RESTCONF (or the model) is not available on the
/// device, which is not an error of the device: RESTCONF is a feature of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRead {
    Read(LicensingState),
    /// Why the state cannot be had from this device (no RESTCONF, refused credentials, no
    /// `cisco-smart-license` model).
    Unavailable(String),
}

/// YANG `policy-types-enum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    CiscoInvalid,
    CiscoDefault,
    PlatformDefault,
    FactoryInstalled,
    Custom,
    Plr,
    Fla,
    Controller,
    Merged,
    /// A value this version of the model does not list.
    Unknown,
}

impl PolicyType {
    const ALL: [(Self, &'static str); 9] = [
        (Self::CiscoInvalid, "policy-type-cisco-invalid"),
        (Self::CiscoDefault, "policy-type-cisco-default"),
        (Self::PlatformDefault, "policy-type-platform-default"),
        (Self::FactoryInstalled, "policy-type-factory-installed"),
        (Self::Custom, "policy-type-custom"),
        (Self::Plr, "policy-type-plr"),
        (Self::Fla, "policy-type-fla"),
        (Self::Controller, "policy-type-controller"),
        (Self::Merged, "policy-type-merged"),
    ];

    /// The YANG enum name (`unknown` for [`Self::Unknown`]).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("unknown", |(_, s)| s)
    }

    /// Reads the enum by name (with or without a module prefix or the `policy-type-` start) or
    /// by its numeric value.
    fn read(v: &Value) -> Self {
        if let Some(n) = number(v) {
            return usize::try_from(n)
                .ok()
                .and_then(|n| Self::ALL.get(n))
                .map_or(Self::Unknown, |(t, _)| *t);
        }
        let Some(s) = v.as_str() else {
            return Self::Unknown;
        };
        let s = s
            .rsplit(':')
            .next()
            .unwrap_or(s)
            .trim()
            .to_ascii_lowercase();
        Self::ALL
            .iter()
            .find(|(_, name)| *name == s || name.strip_prefix("policy-type-") == Some(&s))
            .map_or(Self::Unknown, |(t, _)| *t)
    }
}

/// One license kind's reporting attributes (days; 0: not required), as the device gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindAttrs {
    pub reporting_first_time: Option<u32>,
    pub reporting_ongoing: Option<u32>,
    pub reporting_macd: Option<u32>,
}

/// `state-info/policy` as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePolicy {
    pub policy_type: Option<PolicyType>,
    pub name: Option<String>,
    pub install_time: Option<DateTime<Utc>>,
    pub ack_required: Option<bool>,
    pub enforced: Option<KindAttrs>,
    pub export: Option<KindAttrs>,
    pub subscription: Option<KindAttrs>,
    pub perpetual: Option<KindAttrs>,
}

impl DevicePolicy {
    /// The policy in Tally's terms, and the fields that were missing and taken from Cisco's
    /// default. Tally's `enforced` row is the device's `policy-enforced` (its `policy-export`
    /// when that is missing).
    pub fn to_policy(&self) -> (Policy, Vec<&'static str>) {
        let d = Policy::cisco_default();
        let mut missing = Vec::new();
        let mut row = |name: &'static str, got: Option<KindAttrs>, def: PolicyAttrs| {
            let g = got.unwrap_or_default();
            let mut pick = |field: &'static str, v: Option<u32>, dv: u32| {
                v.unwrap_or_else(|| {
                    missing.push(field);
                    dv
                })
            };
            if got.is_none() {
                missing.push(name);
                return def;
            }
            PolicyAttrs::new(
                pick(
                    "reporting-first-time",
                    g.reporting_first_time,
                    def.first_report_days,
                ),
                pick(
                    "reporting-ongoing",
                    g.reporting_ongoing,
                    def.reporting_frequency_days,
                ),
                pick(
                    "reporting-macd",
                    g.reporting_macd,
                    def.report_on_change_days,
                ),
            )
        };
        let perpetual = row("policy-perpetual", self.perpetual, d.perpetual);
        let subscription = row("policy-subscription", self.subscription, d.subscription);
        let enforced = row("policy-enforced", self.enforced.or(self.export), d.enforced);
        let ack_required = self.ack_required.unwrap_or_else(|| {
            missing.push("ack-required");
            d.ack_required
        });
        let name = match (&self.name, self.policy_type) {
            (Some(n), _) if !n.trim().is_empty() => n.clone(),
            (_, Some(PolicyType::CiscoDefault)) => d.name.clone(),
            (_, Some(t)) => t.as_str().to_owned(),
            (_, None) => "device policy".to_owned(),
        };
        (
            Policy {
                name,
                ack_required,
                perpetual,
                subscription,
                enforced,
            },
            missing,
        )
    }
}

/// What Tally reads of `licensing/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicensingState {
    pub smart_enabled: Option<bool>,
    /// `None`: the device gave no `state-info/policy` container.
    pub policy: Option<DevicePolicy>,
    /// `rum-ack/last-received-time`; `None`: never (or not given).
    pub last_ack_received: Option<DateTime<Utc>>,
    /// `rum-ack/next-report-deadline`: the device's own next ACK deadline.
    pub next_ack_deadline: Option<DateTime<Utc>>,
    /// The answer has a `rum-ack` container (software before the model's 2021-03-01 revision
    /// has none, so "no last ACK received" means nothing there).
    pub has_rum_ack: bool,
    /// Leaves that were present but could not be read, each with its value.
    pub unreadable: Vec<String>,
}

/// `node` with every object key's module prefix (`module:`) removed, recursively.
fn unqualified(node: Value) -> Value {
    match node {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let k = k.rsplit_once(':').map_or(k.as_str(), |(_, n)| n).to_owned();
                    (k, unqualified(v))
                })
                .collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(unqualified).collect()),
        other => other,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A `yang:date-and-time` as devices may write it: RFC 3339 with `Z`, a `+hh:mm`/`+hhmm` offset
/// or none (taken as UTC), `T` or a space between date and time, any fraction; or Unix seconds
/// (milliseconds when it is too large for seconds). Times before 1990 (a device's "never", often
/// the epoch) read as `None` too.
pub fn parse_date_and_time(v: &Value) -> Result<Option<DateTime<Utc>>, BadDateTime> {
    let bad = || BadDateTime(v.to_string());
    let t = match v {
        Value::Null => return Ok(None),
        Value::Number(_) => v.as_i64().and_then(epoch).ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok().and_then(epoch).ok_or_else(bad)?
            } else {
                text_time(s).ok_or_else(bad)?
            }
        }
        _ => return Err(bad()),
    };
    Ok((t.timestamp() >= 631_152_000).then_some(t))
}

/// A value that is no date and time in any form [`parse_date_and_time`] knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a date-and-time: {0}")]
pub struct BadDateTime(pub String);

fn epoch(n: i64) -> Option<DateTime<Utc>> {
    if n.abs() >= 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }
}

fn text_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Some(t.with_timezone(&Utc));
    }
    let upper = s.to_ascii_uppercase();
    if let Ok(t) = DateTime::parse_from_str(&upper, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    let bare = upper.trim_end_matches('Z');
    NaiveDateTime::parse_from_str(bare, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

struct Reader<'a> {
    unreadable: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn bad(&mut self, path: &str, v: &Value) {
        self.unreadable.push(format!("{path} = {v}"));
    }
    fn time(&mut self, o: &Value, path: &str, leaf: &str) -> Option<DateTime<Utc>> {
        let v = o.get(leaf)?;
        parse_date_and_time(v).unwrap_or_else(|_| {
            self.bad(&format!("{path}/{leaf}"), v);
            None
        })
    }
    fn bool(&mut self, o: &Value, path: &str, leaf: &str) -> Option<bool> {
        let v = o.get(leaf)?;
        let b = boolean(v);
        if b.is_none() {
            self.bad(&format!("{path}/{leaf}"), v);
        }
        b
    }
    fn days(&mut self, o: &Value, path: &str, leaf: &str) -> Option<u32> {
        let v = o.get(leaf)?;
        let n = number(v).and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            self.bad(&format!("{path}/{leaf}"), v);
        }
        n
    }
    fn attrs(&mut self, policy: &Value, kind: &str) -> Option<KindAttrs> {
        let o = policy.get(kind).filter(|v| v.is_object())?;
        let path = format!("policy/{kind}");
        Some(KindAttrs {
            reporting_first_time: self.days(o, &path, "reporting-first-time"),
            reporting_ongoing: self.days(o, &path, "reporting-ongoing"),
            reporting_macd: self.days(o, &path, "reporting-macd"),
        })
    }
}

/// Reads a `GET .../licensing/state` answer (or one of `licensing`, or of `state-info`). An empty
/// body (RESTCONF's 204 for no data) reads as a state with nothing in it; a body that is not a
/// JSON object is an error.
pub fn read_state(body: &[u8]) -> Result<LicensingState, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(LicensingState::default());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("answer is not a JSON object".into());
    }
    let mut v = unqualified(v);
    // Down to the `state` container, whichever node the answer starts at.
    if let Some(l) = v.get_mut("licensing").map(Value::take) {
        v = l;
    }
    if let Some(s) = v.get_mut("state").map(Value::take) {
        v = s;
    }
    let mut out = LicensingState::default();
    let mut r = Reader {
        unreadable: &mut out.unreadable,
    };
    let smart_enabled = r.bool(&v, "state", "smart-enabled");
    let info = if v.get("state-info").is_some() {
        v.get("state-info").cloned().unwrap_or_default()
    } else {
        v
    };
    let policy = info
        .get("policy")
        .filter(|p| p.is_object())
        .map(|p| DevicePolicy {
            policy_type: p.get("policy-type").map(PolicyType::read),
            name: p
                .get("policy-name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            install_time: r.time(p, "policy", "install-time"),
            ack_required: r.bool(p, "policy", "ack-required"),
            enforced: r.attrs(p, "policy-enforced"),
            export: r.attrs(p, "policy-export"),
            subscription: r.attrs(p, "policy-subscription"),
            perpetual: r.attrs(p, "policy-perpetual"),
        });
    out.has_rum_ack = info.get("rum-ack").is_some_and(Value::is_object);
    let (last, next) = match info.get("rum-ack").filter(|a| a.is_object()) {
        Some(a) => (
            r.time(a, "rum-ack", "last-received-time"),
            r.time(a, "rum-ack", "next-report-deadline"),
        ),
        None => (None, None),
    };
    out.smart_enabled = smart_enabled;
    out.policy = policy;
    out.last_ack_received = last;
    out.next_ack_deadline = next;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, h, m, s).unwrap()
    }

    /// A `GET .../licensing/state` answer as a 17.x device shapes it after the published model.
    const CISCO: &str = r#"{
      "cisco-smart-license:state": {
        "always-enabled": true,
        "smart-enabled": true,
        "version": "5.5.0_rel/52",
        "state-info": {
          "custom-id": "",
          "policy": {
            "policy-type": "policy-type-custom",
            "policy-name": "Custom 30/60/60",
            "install-time": "2026-12-01T08:00:00+00:00",
            "ack-required": true,
            "policy-enforced": {"reporting-first-time": 0, "reporting-ongoing": 0, "reporting-macd": 0},
            "policy-export": {"reporting-first-time": 0, "reporting-ongoing": 0, "reporting-macd": 0},
            "policy-subscription": {"reporting-first-time": 30, "reporting-ongoing": 60, "reporting-macd": 60},
            "policy-perpetual": {"reporting-first-time": 30, "reporting-ongoing": 60, "reporting-macd": 60}
          },
          "rum-ack": {
            "last-received-time": "2026-12-04T10:11:12+00:00",
            "next-report-deadline": "2027-02-02T10:11:12+00:00"
          },
          "usage": [{"entitlement-tag": "regid.x", "count": 1}]
        }
      }
    }"#;

    #[test]
    fn reads_a_cisco_shaped_answer() {
        let s = read_state(CISCO.as_bytes()).unwrap();
        assert_eq!(s.smart_enabled, Some(true));
        assert!(s.has_rum_ack);
        assert_eq!(s.last_ack_received, Some(t(10, 11, 12)));
        assert_eq!(
            s.next_ack_deadline,
            Some(Utc.with_ymd_and_hms(2027, 2, 2, 10, 11, 12).unwrap())
        );
        assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
        let p = s.policy.unwrap();
        assert_eq!(p.policy_type, Some(PolicyType::Custom));
        let (policy, missing) = p.to_policy();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(policy.name, "Custom 30/60/60");
        assert!(policy.ack_required);
        assert_eq!(policy.subscription, PolicyAttrs::new(30, 60, 60));
        assert_eq!(policy.perpetual, PolicyAttrs::new(30, 60, 60));
        assert_eq!(policy.enforced, PolicyAttrs::new(0, 0, 0));
    }

    #[test]
    fn any_top_node_and_prefixes_anywhere() {
        let inner = json!({"smart-enabled": "true", "state-info": {
            "cisco-smart-license:rum-ack": {"cisco-smart-license:last-received-time": "2026-12-04T10:11:12Z"}}});
        for body in [
            json!({"cisco-smart-license:licensing": {"state": inner.clone()}}),
            json!({"licensing": {"state": inner.clone()}}),
            json!({"state": inner.clone()}),
            json!({"cisco-smart-license:state-info": inner["state-info"].clone()}),
        ] {
            let s = read_state(body.to_string().as_bytes()).unwrap();
            assert_eq!(s.last_ack_received, Some(t(10, 11, 12)), "{body}");
        }
    }

    #[test]
    fn date_and_time_in_every_plausible_spelling() {
        let want = Some(t(10, 11, 12));
        for v in [
            json!("2026-12-04T10:11:12Z"),
            json!("2026-12-04T10:11:12.000+00:00"),
            json!("2026-12-04T11:11:12+01:00"),
            json!("2026-12-04T11:11:12+0100"),
            json!("2026-12-04T10:11:12"),
            json!("2026-12-04 10:11:12"),
            json!("2026-12-04t10:11:12z"),
            json!("2026-12-04T10:11:12-00:00"),
            json!(1_796_379_072),
            json!("1796379072"),
            json!(1_796_379_072_000_i64),
        ] {
            assert_eq!(parse_date_and_time(&v), Ok(want), "{v}");
        }
        for never in [
            json!(""),
            json!(null),
            json!(0),
            json!("1970-01-01T00:00:00+00:00"),
        ] {
            assert_eq!(parse_date_and_time(&never), Ok(None), "{never}");
        }
        assert!(parse_date_and_time(&json!("yesterday")).is_err());
        assert!(parse_date_and_time(&json!(true)).is_err());
    }

    #[test]
    fn missing_and_odd_leaves_do_not_fail_the_read() {
        // No state-info (smart licensing not enabled): nothing, no error.
        let s = read_state(br#"{"cisco-smart-license:state":{"smart-enabled":false}}"#).unwrap();
        assert_eq!(s.smart_enabled, Some(false));
        assert!(s.policy.is_none() && s.last_ack_received.is_none() && !s.has_rum_ack);
        assert_eq!(read_state(b"").unwrap(), LicensingState::default());

        // Strings for numbers, numeric enum, an unreadable leaf, a kind missing.
        let body = json!({"cisco-smart-license:state": {"state-info": {
            "policy": {"policy-type": 1, "ack-required": "maybe",
                "policy-subscription": {"reporting-first-time": "120", "reporting-ongoing": -1},
                "policy-export": {"reporting-ongoing": 30}},
            "rum-ack": {"last-received-time": "soon"}}}});
        let s = read_state(body.to_string().as_bytes()).unwrap();
        assert_eq!(s.last_ack_received, None);
        assert_eq!(s.unreadable.len(), 3, "{:?}", s.unreadable);
        assert!(
            s.unreadable
                .iter()
                .any(|u| u.contains("rum-ack/last-received-time"))
        );
        let p = s.policy.unwrap();
        assert_eq!(p.policy_type, Some(PolicyType::CiscoDefault));
        let (policy, missing) = p.to_policy();
        assert_eq!(policy.name, "Cisco default");
        assert_eq!(policy.subscription, PolicyAttrs::new(120, 90, 90));
        // Export stands in for a missing enforced row; the rest is Cisco's default.
        assert_eq!(policy.enforced, PolicyAttrs::new(0, 30, 0));
        assert_eq!(policy.perpetual, Policy::cisco_default().perpetual);
        for m in [
            "ack-required",
            "policy-perpetual",
            "reporting-ongoing",
            "reporting-macd",
        ] {
            assert!(missing.contains(&m), "{m}: {missing:?}");
        }

        for bad in [&b"[1]"[..], b"not json", b"\"x\""] {
            assert!(read_state(bad).is_err());
        }
        assert_eq!(
            PolicyType::read(&json!("cisco-smart-license:policy-type-merged")),
            PolicyType::Merged
        );
        assert_eq!(PolicyType::read(&json!("custom")), PolicyType::Custom);
        assert_eq!(
            PolicyType::read(&json!("policy-type-new")),
            PolicyType::Unknown
        );
    }
}
