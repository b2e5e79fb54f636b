//! The IOS-XE RESTCONF boot-level resource (RFC 8040, YANG `Cisco-IOS-XE-native`, submodule
//! `Cisco-IOS-XE-license`): `native/license/boot/level` is a choice of the containers
//! `network-advantage` and `network-essentials`, each with an optional `addon` leaf. Cisco's
//! published `addon` enum has `dna-essentials` and `dna-advantage`; `dna-premier` is sent as is, a
//! device that does not know it refuses it with its own message.

use crate::SouthboundError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tally_domain::{DnaTier, NetworkLicense};

/// Path of the resource below a device's base URL.
pub const BOOT_LEVEL_PATH: &str = "restconf/data/Cisco-IOS-XE-native:native/license/boot/level";
pub(crate) const YANG_JSON: &str = "application/yang-data+json";
const LEVEL_NODE: &str = "Cisco-IOS-XE-native:level";

/// A device's license boot level: the network license and the DNA add-on, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BootLevel {
    pub network: NetworkLicense,
    pub dna: Option<DnaTier>,
}

pub(crate) fn url(base_url: &str) -> String {
    format!("{}/{BOOT_LEVEL_PATH}", base_url.trim_end_matches('/'))
}

/// The PUT body, e.g. `{"Cisco-IOS-XE-native:level":{"network-advantage":{"addon":"dna-advantage"}}}`.
pub(crate) fn level_body(level: BootLevel) -> String {
    let case = match level.dna {
        Some(d) => json!({ "addon": d.as_str() }),
        None => json!({}),
    };
    json!({ LEVEL_NODE: { level.network.as_str(): case } }).to_string()
}

/// Reads a GET answer; anything else than one known network case with a known add-on is
/// malformed (kept with its body, naming the device).
pub(crate) fn parse_level(url: &str, body: Vec<u8>) -> Result<BootLevel, SouthboundError> {
    read_level(&body).map_err(|reason| SouthboundError::Malformed {
        reason: format!("{url}: {reason}"),
        body,
    })
}

fn read_level(body: &[u8]) -> Result<BootLevel, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        // RESTCONF answers an empty 204 for data that is not configured.
        return Err("no license boot level is configured".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    // Top-level nodes are module-qualified in RESTCONF JSON; accept the bare name too.
    let choice = v
        .get(LEVEL_NODE)
        .or_else(|| v.get("level"))
        .and_then(Value::as_object)
        .ok_or_else(|| format!("answer has no {LEVEL_NODE} container"))?;
    let mut cases = choice.iter();
    let (case, leaves) = match (cases.next(), cases.next()) {
        (Some(c), None) => c,
        _ => return Err("level must hold exactly one network license".into()),
    };
    let network: NetworkLicense = case.parse().map_err(|e| format!("{e}"))?;
    let dna = match leaves.get("addon") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<DnaTier>().map_err(|e| format!("{e}"))?),
        Some(other) => return Err(format!("addon is not a string: {other}")),
    };
    Ok(BootLevel { network, dna })
}

#[derive(Deserialize)]
struct Errors {
    #[serde(rename = "ietf-restconf:errors")]
    errors: ErrorList,
}
#[derive(Deserialize)]
struct ErrorList {
    #[serde(default)]
    error: Vec<ErrorItem>,
}
#[derive(Deserialize)]
struct ErrorItem {
    #[serde(rename = "error-tag", default)]
    tag: String,
    #[serde(rename = "error-message", default)]
    message: String,
}

/// The error for an answer with a failure status, carrying the RESTCONF `error-message` (or the
/// start of a body that is not a RESTCONF error).
pub(crate) fn refused(url: &str, status: u16, body: &[u8]) -> SouthboundError {
    let (tag, message) = match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.error.is_empty() => {
            let tag = e.errors.error[0].tag.clone();
            let messages: Vec<&str> = e
                .errors
                .error
                .iter()
                .map(|i| i.message.as_str())
                .filter(|m| !m.is_empty())
                .collect();
            (tag, messages.join("; "))
        }
        _ => (
            String::new(),
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect(),
        ),
    };
    let message = if message.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no reason given")
            .to_owned()
    } else {
        message
    };
    SouthboundError::Refused {
        url: url.to_owned(),
        status,
        tag,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_through_the_reader() {
        for network in NetworkLicense::ALL {
            for dna in [
                None,
                Some(DnaTier::DnaEssentials),
                Some(DnaTier::DnaPremier),
            ] {
                let l = BootLevel { network, dna };
                assert_eq!(read_level(level_body(l).as_bytes()).unwrap(), l);
            }
        }
        assert_eq!(
            level_body(BootLevel {
                network: NetworkLicense::NetworkAdvantage,
                dna: Some(DnaTier::DnaAdvantage)
            }),
            r#"{"Cisco-IOS-XE-native:level":{"network-advantage":{"addon":"dna-advantage"}}}"#
        );
    }

    #[test]
    fn unknown_answers_are_malformed_and_name_the_device() {
        for body in [
            &b""[..],
            b"{}",
            br#"{"Cisco-IOS-XE-native:level":{"network-premium":{}}}"#,
            br#"{"Cisco-IOS-XE-native:level":{"network-advantage":{"addon":"dna-gold"}}}"#,
        ] {
            match parse_level("http://d/1", body.to_vec()) {
                Err(SouthboundError::Malformed { reason, .. }) => {
                    assert!(reason.starts_with("http://d/1: "), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn refusals_carry_the_device_message() {
        let body = br#"{"ietf-restconf:errors":{"error":[{"error-type":"application","error-tag":"invalid-value","error-message":"bad addon"}]}}"#;
        let e = refused("http://d/1/x", 400, body);
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("http://d/1/x") && text.contains("bad addon"),
            "{text}"
        );
        assert!(text.contains("invalid-value"), "{text}");
        let e = refused("http://d/1/x", 503, b"<html>busy</html>");
        assert!(e.is_transient());
        assert!(e.to_string().contains("<html>busy</html>"));
        assert!(refused("u", 401, b"").to_string().contains("Unauthorized"));
    }
}
