//! The simulators' own ACK documents: what the simulated CSSM signs for a device's acknowledged
//! reports and the simulated device verifies before it takes them.
//!
//! Form: `<smartLicense><smartLicenseRumAck><data><![CDATA[{"payload":"<body JSON>","signature":{..}}]]></data></smartLicenseRumAck></smartLicense>`.
//! The body's fields are the simulators' own (Cisco does not publish them); see docs/formats.md.
//!
//! A real CSSM can send a policy with an ACK (`<smartLicensePolicy>` next to the ACK); so can the
//! simulated one: a `<smartLicensePolicy><data>` sibling of `<smartLicenseRumAck>`, its CDATA
//! signed the same way, whose body names the device and the policy ([`PolicyBody`]). A device
//! installs it only when its signature verifies and it names that device.
//! Only this crate builds or reads them: Tally's services treat every ACK as opaque (CSSM's real
//! format is unpublished), and `scripts/test` fails when a service depends on this crate outside
//! its dev-dependencies.

use crate::yang_state::SimPolicy;
use serde::{Deserialize, Serialize};
use tally_domain::Udi;
use tally_domain::sign::{SignError, Signer, verify_b64};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error("ACK is not well-formed XML: {0}")]
    Xml(String),
    #[error("ACK has no <smartLicenseRumAck><data>")]
    MissingData,
    #[error("ACK has a <smartLicensePolicy> without <data>")]
    PolicyMissingData,
    #[error("ACK data is not valid JSON: {0}")]
    BadJson(String),
    #[error("ACK signature: {0}")]
    Signature(#[from] SignError),
    #[error("ACK is not valid base64")]
    BadBase64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBody {
    pub version: String,
    pub sudi: Udi,
    /// Report ids this ACK acknowledges.
    pub report_ids: Vec<u64>,
    /// When CSSM produced the ACK (Unix seconds).
    pub ack_time: i64,
    pub smart_account: String,
    pub virtual_account: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckSignature {
    pub signing_type: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AckData {
    payload: String,
    signature: AckSignature,
}

/// A policy sent with an ACK: the device it is for, and the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBody {
    pub sudi: Udi,
    pub policy: SimPolicy,
    /// When CSSM issued it (Unix seconds).
    pub issued_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    pub body: PolicyBody,
    pub payload: String,
    pub signature: AckSignature,
}

impl SignedPolicy {
    pub fn verify(&self, cssm_public_key: &[u8]) -> Result<(), AckError> {
        verify(cssm_public_key, &self.payload, &self.signature)
    }
}

fn verify(key: &[u8], payload: &str, signature: &AckSignature) -> Result<(), AckError> {
    Ok(verify_b64(key, payload.as_bytes(), &signature.value)?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAck {
    pub body: AckBody,
    pub payload: String,
    pub signature: AckSignature,
    /// The policy sent with the ACK, if any.
    pub policy: Option<SignedPolicy>,
}

impl SignedAck {
    pub fn verify(&self, cssm_public_key: &[u8]) -> Result<(), AckError> {
        verify(cssm_public_key, &self.payload, &self.signature)
    }
}

/// `payload` signed, as the JSON a `<data>` CDATA section carries.
fn signed_data(payload: String, signer: &Signer, key_id: &str) -> String {
    let data = AckData {
        signature: AckSignature {
            signing_type: "CSSM".into(),
            key: key_id.into(),
            value: signer.sign_b64(payload.as_bytes()),
        },
        payload,
    };
    serde_json::to_string(&data).unwrap_or_default()
}

/// Signs `body` and wraps it in the ACK XML document.
pub fn build_ack_document(body: &AckBody, signer: &Signer, key_id: &str) -> String {
    build_ack_document_with_policy(body, None, signer, key_id)
}

/// [`build_ack_document`], with `policy` for the ACK's device sent along when given.
pub fn build_ack_document_with_policy(
    body: &AckBody,
    policy: Option<SimPolicy>,
    signer: &Signer,
    key_id: &str,
) -> String {
    let data = signed_data(
        serde_json::to_string(body).unwrap_or_default(),
        signer,
        key_id,
    );
    let policy = policy.map_or_else(String::new, |p| {
        let pb = PolicyBody {
            sudi: body.sudi.clone(),
            policy: p,
            issued_time: body.ack_time,
        };
        let data = signed_data(
            serde_json::to_string(&pb).unwrap_or_default(),
            signer,
            key_id,
        );
        format!("<smartLicensePolicy><data><![CDATA[{data}]]></data></smartLicensePolicy>")
    });
    format!(
        "<smartLicense><smartLicenseRumAck><data><![CDATA[{data}]]></data></smartLicenseRumAck>{policy}</smartLicense>"
    )
}

/// Accepts the ACK XML document, or the same base64-encoded (as CSSM's API and `POST /import` carry it).
pub fn parse_ack_document(input: &str) -> Result<SignedAck, AckError> {
    let trimmed = input.trim();
    let xml = if trimmed.starts_with('<') {
        trimmed.to_owned()
    } else {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let bytes = STANDARD.decode(trimmed).map_err(|_| AckError::BadBase64)?;
        String::from_utf8(bytes).map_err(|_| AckError::BadBase64)?
    };
    let (ack, policy) = extract_data(&xml)?;
    let data = ack.ok_or(AckError::MissingData)?;
    let data: AckData =
        serde_json::from_str(&data).map_err(|e| AckError::BadJson(e.to_string()))?;
    let body: AckBody =
        serde_json::from_str(&data.payload).map_err(|e| AckError::BadJson(e.to_string()))?;
    let policy = match policy {
        None => None,
        Some(None) => return Err(AckError::PolicyMissingData),
        Some(Some(p)) => {
            let p: AckData =
                serde_json::from_str(&p).map_err(|e| AckError::BadJson(e.to_string()))?;
            let pb: PolicyBody =
                serde_json::from_str(&p.payload).map_err(|e| AckError::BadJson(e.to_string()))?;
            Some(SignedPolicy {
                body: pb,
                payload: p.payload,
                signature: p.signature,
            })
        }
    };
    Ok(SignedAck {
        body,
        payload: data.payload,
        signature: data.signature,
        policy,
    })
}

/// The CDATA of `<smartLicenseRumAck><data>`, and whether there is a `<smartLicensePolicy>`
/// (`Some`) with the CDATA of its `<data>` (`Some(Some)`).
#[allow(clippy::type_complexity)]
fn extract_data(xml: &str) -> Result<(Option<String>, Option<Option<String>>), AckError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut data = None::<String>;
    let mut policy = None::<Option<String>>;
    loop {
        match reader
            .read_event()
            .map_err(|e| AckError::Xml(e.to_string()))?
        {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if name == "smartLicensePolicy" {
                    policy.get_or_insert(None);
                }
                path.push(name);
            }
            Event::Empty(e) if e.name().as_ref() == b"smartLicensePolicy" => {
                policy.get_or_insert(None);
            }
            Event::End(_) => {
                path.pop();
            }
            Event::CData(c) if path.last().map(String::as_str) == Some("data") => {
                let s =
                    std::str::from_utf8(c.as_ref()).map_err(|e| AckError::Xml(e.to_string()))?;
                let parent = path.iter().rev().nth(1).map(String::as_str);
                if parent == Some("smartLicensePolicy") {
                    policy
                        .get_or_insert(None)
                        .get_or_insert_with(String::new)
                        .push_str(s);
                } else {
                    data.get_or_insert_with(String::new).push_str(s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(AckError::Xml("unclosed element".into()));
    }
    Ok((data, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_verify_and_tamper() {
        let signer = Signer::derive(b"cssm", "ack").unwrap();
        let body = AckBody {
            version: "1.0".into(),
            sudi: Udi::new("C9300-48P", "FCW1").unwrap(),
            report_ids: vec![1, 2],
            ack_time: 1_700_000_000,
            smart_account: "acme.com".into(),
            virtual_account: "Campus".into(),
            status: "ACK".into(),
        };
        let doc = build_ack_document(&body, &signer, "cssm-1");
        let ack = parse_ack_document(&doc).unwrap();
        assert_eq!(ack.body, body);
        ack.verify(&signer.public_key()).unwrap();
        use base64::{Engine, engine::general_purpose::STANDARD};
        let ack2 = parse_ack_document(&STANDARD.encode(&doc)).unwrap();
        assert_eq!(ack2, ack);
        let tampered = doc.replace("Campus", "Campu5");
        let bad = parse_ack_document(&tampered).unwrap();
        assert!(bad.verify(&signer.public_key()).is_err());
        assert_eq!(
            parse_ack_document("<smartLicense></smartLicense>"),
            Err(AckError::MissingData)
        );
        assert_eq!(parse_ack_document("!!!"), Err(AckError::BadBase64));
        assert_eq!(ack.policy, None);
    }

    #[test]
    fn a_policy_travels_with_the_ack_signed_and_bound_to_the_device() {
        let signer = Signer::derive(b"cssm", "ack").unwrap();
        let body = AckBody {
            version: "1.0".into(),
            sudi: Udi::new("C9300-48P", "FCW1").unwrap(),
            report_ids: vec![1],
            ack_time: 1_700_000_000,
            smart_account: "acme.com".into(),
            virtual_account: "Campus".into(),
            status: "ACK".into(),
        };
        let doc =
            build_ack_document_with_policy(&body, Some(SimPolicy::Custom306060), &signer, "k");
        assert!(doc.contains("</smartLicenseRumAck><smartLicensePolicy><data><![CDATA["));
        let ack = parse_ack_document(&doc).unwrap();
        assert_eq!(ack.body, body);
        ack.verify(&signer.public_key()).unwrap();
        let p = ack.policy.clone().unwrap();
        assert_eq!(p.body.policy, SimPolicy::Custom306060);
        assert_eq!(p.body.sudi, body.sudi);
        p.verify(&signer.public_key()).unwrap();
        // The ACK's own signature does not cover the policy: it has its own.
        let tampered = doc.replace("custom_30_60_60", "enforced");
        let bad = parse_ack_document(&tampered).unwrap();
        bad.verify(&signer.public_key()).unwrap();
        assert!(bad.policy.unwrap().verify(&signer.public_key()).is_err());
        let empty = doc.replace(
            &doc[doc.find("<smartLicensePolicy>").unwrap()..doc.find("</smartLicense>").unwrap()],
            "<smartLicensePolicy/>",
        );
        assert_eq!(parse_ack_document(&empty), Err(AckError::PolicyMissingData));
    }
}
