//! The simulators' own ACK documents: what the simulated CSSM signs for a device's acknowledged
//! reports and the simulated device verifies before it takes them.
//!
//! Form: `<smartLicense><smartLicenseRumAck><data><![CDATA[{"payload":"<body JSON>","signature":{..}}]]></data></smartLicenseRumAck></smartLicense>`.
//! The body's fields are the simulators' own (Cisco does not publish them); see docs/formats.md.
//! Only this crate builds or reads them: Tally's services treat every ACK as opaque (CSSM's real
//! format is unpublished), and `scripts/test` fails when a service depends on this crate outside
//! its dev-dependencies.

use serde::{Deserialize, Serialize};
use tally_domain::Udi;
use tally_domain::sign::{SignError, Signer, verify_b64};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error("ACK is not well-formed XML: {0}")]
    Xml(String),
    #[error("ACK has no <smartLicenseRumAck><data>")]
    MissingData,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAck {
    pub body: AckBody,
    pub payload: String,
    pub signature: AckSignature,
}

impl SignedAck {
    pub fn verify(&self, cssm_public_key: &[u8]) -> Result<(), AckError> {
        Ok(verify_b64(
            cssm_public_key,
            self.payload.as_bytes(),
            &self.signature.value,
        )?)
    }
}

/// Signs `body` and wraps it in the ACK XML document.
pub fn build_ack_document(body: &AckBody, signer: &Signer, key_id: &str) -> String {
    let payload = serde_json::to_string(body).unwrap_or_default();
    let data = AckData {
        signature: AckSignature {
            signing_type: "CSSM".into(),
            key: key_id.into(),
            value: signer.sign_b64(payload.as_bytes()),
        },
        payload,
    };
    let data = serde_json::to_string(&data).unwrap_or_default();
    format!(
        "<smartLicense><smartLicenseRumAck><data><![CDATA[{data}]]></data></smartLicenseRumAck></smartLicense>"
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
    let data = extract_data(&xml)?;
    let data: AckData =
        serde_json::from_str(&data).map_err(|e| AckError::BadJson(e.to_string()))?;
    let body: AckBody =
        serde_json::from_str(&data.payload).map_err(|e| AckError::BadJson(e.to_string()))?;
    Ok(SignedAck {
        body,
        payload: data.payload,
        signature: data.signature,
    })
}

fn extract_data(xml: &str) -> Result<String, AckError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut data = None::<String>;
    loop {
        match reader
            .read_event()
            .map_err(|e| AckError::Xml(e.to_string()))?
        {
            Event::Start(e) => path.push(String::from_utf8_lossy(e.name().as_ref()).into_owned()),
            Event::End(_) => {
                path.pop();
            }
            Event::CData(c) if path.last().map(String::as_str) == Some("data") => {
                let s =
                    std::str::from_utf8(c.as_ref()).map_err(|e| AckError::Xml(e.to_string()))?;
                data.get_or_insert_with(String::new).push_str(s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(AckError::Xml("unclosed element".into()));
    }
    data.ok_or(AckError::MissingData)
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
    }
}
