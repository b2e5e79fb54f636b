//! The IOS-XE RESTCONF boot-level resource, `Cisco-IOS-XE-native:native/license/boot/level`
//! (YANG submodule `Cisco-IOS-XE-license`): a choice of the containers `network-advantage` and
//! `network-essentials`, each with an optional leaf `addon`. The published enum of `addon` has
//! `dna-essentials` and `dna-advantage`; `dna-premier` is Tally's extension so the simulator can
//! carry every DNA tier. Only `dna-essentials` may ride on `network-essentials`, as on a device.

use crate::common::SimError;
use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde_json::{Map, Value, json};
use tally_domain::{DnaTier, NetworkLicense};

/// The RESTCONF media type (RFC 8040) both for bodies sent and answers.
pub const YANG_JSON: &str = "application/yang-data+json";
/// The node name of the level container in RESTCONF JSON (module-qualified at the top).
pub const LEVEL_NODE: &str = "Cisco-IOS-XE-native:level";

/// A boot level: the network license and the DNA add-on, if any.
pub(crate) type Level = (NetworkLicense, Option<DnaTier>);

/// A RESTCONF error (RFC 8040 section 7.1), rendered as `{"ietf-restconf:errors":{"error":[...]}}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct RestconfError {
    status: StatusCode,
    error_type: &'static str,
    tag: &'static str,
    message: String,
    /// Not a RESTCONF answer at all: the device's HTTP server has no RESTCONF behind the path.
    plain: bool,
}

impl RestconfError {
    fn new(status: StatusCode, error_type: &'static str, tag: &'static str, m: String) -> Self {
        Self {
            status,
            error_type,
            tag,
            message: m,
            plain: false,
        }
    }
    /// A device whose RESTCONF feature is off: its web server answers a plain 404 page.
    pub(crate) fn not_enabled() -> Self {
        Self {
            plain: true,
            ..Self::new(StatusCode::NOT_FOUND, "", "", "Not Found".into())
        }
    }
    /// `GET` of a data node the device does not have.
    pub(crate) fn no_such_node(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "application",
            "invalid-value",
            format!("uri keypath not found: {path}"),
        )
    }
    /// The client accepts no media type the device can answer with.
    pub(crate) fn not_acceptable(got: &str) -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "protocol",
            "invalid-value",
            format!("cannot answer in {got:?}; accept {YANG_JSON}"),
        )
    }
    pub(crate) fn invalid_value(m: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "application",
            "invalid-value",
            m.into(),
        )
    }
    fn unknown_element(m: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "application",
            "unknown-element",
            m.into(),
        )
    }
    fn malformed(m: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "rpc",
            "malformed-message",
            m.into(),
        )
    }
    pub(crate) fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "protocol",
            "invalid-value",
            format!("content type {got:?} is not supported; send {YANG_JSON}"),
        )
    }
    /// The change was refused at commit time, e.g. the configuration is locked by another session.
    pub(crate) fn lock_denied() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "protocol",
            "lock-denied",
            "configuration is locked by another session; boot level not changed".into(),
        )
    }
    pub(crate) fn operation_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application",
            "operation-failed",
            "internal error".into(),
        )
    }
}

impl From<SimError> for RestconfError {
    fn from(e: SimError) -> Self {
        match e {
            SimError::BadRequest(m) => Self::invalid_value(m),
            SimError::Unauthorized => Self::new(
                StatusCode::UNAUTHORIZED,
                "protocol",
                "access-denied",
                "authentication required".into(),
            ),
            SimError::NotFound(m) => {
                Self::new(StatusCode::NOT_FOUND, "protocol", "invalid-value", m)
            }
            SimError::Internal(m) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application",
                "operation-failed",
                m,
            ),
        }
    }
}

impl ResponseError for RestconfError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        if self.plain {
            return b
                .content_type("text/html")
                .body("<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>");
        }
        if self.status == StatusCode::UNAUTHORIZED {
            b.insert_header(("WWW-Authenticate", "Basic realm=\"restconf\""));
        }
        b.content_type(YANG_JSON).json(json!({
            "ietf-restconf:errors": {"error": [{
                "error-type": self.error_type,
                "error-tag": self.tag,
                "error-message": self.message,
            }]}
        }))
    }
}

/// The resource's JSON for `level`: no `addon` leaf when there is no DNA tier.
pub(crate) fn level_json((network, dna): Level) -> Value {
    let mut case = Map::new();
    if let Some(d) = dna {
        case.insert("addon".into(), Value::from(d.as_str()));
    }
    let mut choice = Map::new();
    choice.insert(network.as_str().into(), Value::Object(case));
    let mut top = Map::new();
    top.insert(LEVEL_NODE.into(), Value::Object(choice));
    Value::Object(top)
}

/// Parses a PUT (`merge_into` = `None`: replace) or PATCH (`Some(current)`: RFC 8040 merge, so
/// the same network case without `addon` keeps the current add-on) body, and checks the result
/// as the device's YANG would.
pub(crate) fn parse_level(body: &[u8], merge_into: Option<Level>) -> Result<Level, RestconfError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RestconfError::malformed(format!("body is not JSON: {e}")))?;
    let top = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| RestconfError::malformed(format!("body must hold exactly {LEVEL_NODE}")))?;
    let choice = match top.get(LEVEL_NODE) {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(RestconfError::invalid_value("level must be a container")),
        None => {
            let found = top.keys().next().map(String::as_str).unwrap_or_default();
            return Err(RestconfError::unknown_element(format!(
                "unknown node {found:?}; expected {LEVEL_NODE}"
            )));
        }
    };
    let mut cases = choice.iter();
    let (case, leaves) = match (cases.next(), cases.next()) {
        (Some(c), None) => c,
        _ => {
            return Err(RestconfError::invalid_value(
                "level is a choice: give exactly one of network-advantage, network-essentials",
            ));
        }
    };
    let network: NetworkLicense = case.parse().map_err(|_| {
        RestconfError::invalid_value(format!(
            "unknown network license {case:?}; expected network-advantage or network-essentials"
        ))
    })?;
    let leaves = leaves
        .as_object()
        .ok_or_else(|| RestconfError::invalid_value(format!("{case} must be a container")))?;
    if let Some(k) = leaves.keys().find(|k| *k != "addon") {
        return Err(RestconfError::unknown_element(format!(
            "unknown leaf {k:?} in {case}; expected addon"
        )));
    }
    let dna = match leaves.get("addon") {
        None => merge_into
            .filter(|(current, _)| *current == network)
            .and_then(|(_, d)| d),
        Some(Value::String(s)) => Some(s.parse::<DnaTier>().map_err(|_| {
            RestconfError::invalid_value(format!(
                "unknown addon {s:?}; expected dna-essentials, dna-advantage or dna-premier"
            ))
        })?),
        Some(other) => {
            return Err(RestconfError::invalid_value(format!(
                "addon must be a string, got {other}"
            )));
        }
    };
    if network == NetworkLicense::NetworkEssentials
        && matches!(dna, Some(DnaTier::DnaAdvantage | DnaTier::DnaPremier))
    {
        return Err(RestconfError::invalid_value(format!(
            "addon {} is not allowed with network-essentials (only dna-essentials is)",
            dna.map(DnaTier::as_str).unwrap_or_default()
        )));
    }
    Ok((network, dna))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_the_same_document() {
        for level in [
            (NetworkLicense::NetworkAdvantage, Some(DnaTier::DnaPremier)),
            (
                NetworkLicense::NetworkEssentials,
                Some(DnaTier::DnaEssentials),
            ),
            (NetworkLicense::NetworkEssentials, None),
        ] {
            let text = level_json(level).to_string();
            assert_eq!(parse_level(text.as_bytes(), None).unwrap(), level);
        }
        assert_eq!(
            level_json((NetworkLicense::NetworkAdvantage, None)).to_string(),
            r#"{"Cisco-IOS-XE-native:level":{"network-advantage":{}}}"#
        );
    }

    #[test]
    fn merge_keeps_the_addon_only_within_the_same_case() {
        let current = (
            NetworkLicense::NetworkAdvantage,
            Some(DnaTier::DnaAdvantage),
        );
        let same = br#"{"Cisco-IOS-XE-native:level":{"network-advantage":{}}}"#;
        assert_eq!(parse_level(same, Some(current)).unwrap(), current);
        assert_eq!(
            parse_level(same, None).unwrap(),
            (NetworkLicense::NetworkAdvantage, None)
        );
        let other = br#"{"Cisco-IOS-XE-native:level":{"network-essentials":{}}}"#;
        assert_eq!(
            parse_level(other, Some(current)).unwrap(),
            (NetworkLicense::NetworkEssentials, None)
        );
    }

    #[test]
    fn refuses_what_the_yang_does_not_allow() {
        for (body, needle) in [
            (
                r#"{"Cisco-IOS-XE-native:level":{"network-premium":{}}}"#,
                "network-premium",
            ),
            (
                r#"{"Cisco-IOS-XE-native:level":{"network-advantage":{"addon":"dna-gold"}}}"#,
                "dna-gold",
            ),
            (
                r#"{"Cisco-IOS-XE-native:level":{"network-essentials":{"addon":"dna-advantage"}}}"#,
                "not allowed",
            ),
            (
                r#"{"Cisco-IOS-XE-native:level":{"network-advantage":{},"network-essentials":{}}}"#,
                "choice",
            ),
            (r#"{"level":{"network-advantage":{}}}"#, "unknown node"),
            ("not json", "not JSON"),
        ] {
            let e = parse_level(body.as_bytes(), None).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }
}
