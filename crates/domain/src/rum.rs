//! RUM reports: the signed report object a device hands out (`GET /all-reports`), its payload, and
//! the `<smartLicense><RUMReport>` XML envelope used in files and offline bundles.
//!
//! A report object is kept as the exact text received; this module only inspects it. Forwarding
//! re-uses those bytes, because CSSM checks the signature over the payload string byte-for-byte.

use crate::udi::Udi;
use serde::{Deserialize, Serialize};

/// Largest report object accepted (a real one is about 1-2 KiB).
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum RumError {
    #[error("report is larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("report is not a JSON object: {0}")]
    NotJson(String),
    #[error("report has no payload string")]
    MissingPayload,
    #[error("payload is not valid JSON: {0}")]
    PayloadNotJson(String),
    #[error("report has no signature")]
    MissingSignature,
    #[error("signature has an empty {0}")]
    EmptySignatureField(&'static str),
    #[error("unsupported payload version {0:?}; expected \"2.0\"")]
    UnsupportedVersion(String),
    #[error("payload has no {0}")]
    MissingField(&'static str),
    #[error("payload is for {payload}, signature is for {signature}")]
    SudiMismatch { payload: String, signature: String },
    #[error("measurement count {0:?} is not a whole number")]
    BadCount(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is not well-formed XML: {0}")]
    Xml(String),
    #[error("envelope root must be <smartLicense>, found <{0}>")]
    WrongRoot(String),
    #[error("unexpected element <{0}> in <smartLicense>; expected <RUMReport>")]
    UnexpectedElement(String),
    #[error("envelope holds no <RUMReport>")]
    Empty,
    #[error("a report contains \"]]>\" and cannot be carried in CDATA")]
    CdataTerminator,
    #[error("report text is not UTF-8")]
    NotUtf8,
}

/// The outer signature of a report object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSignature {
    pub sudi: Udi,
    pub signing_type: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InnerSignature {
    pub signing_type: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub sudi: Udi,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetIdentification {
    pub report_id: u64,
    pub asset: Asset,
    pub instance: Instance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaUdi {
    pub role: String,
    pub sudi: Udi,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadMeta {
    pub entitlement_tag: String,
    pub utility_enabled: bool,
    pub software_version: String,
    #[serde(default)]
    pub ha_udi: Vec<HaUdi>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementValue {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MeasurementMeta {
    #[serde(default)]
    pub added_sudi_list: Vec<Udi>,
    #[serde(default)]
    pub removed_sudi_list: Vec<Udi>,
    #[serde(default)]
    pub termination_reason: String,
    #[serde(default)]
    pub clock_change_delta: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    pub log_time: i64,
    pub metric_name: String,
    pub start_time: i64,
    pub end_time: i64,
    pub sample_interval: i64,
    pub num_samples: i64,
    pub value: MeasurementValue,
    #[serde(default)]
    pub meta: MeasurementMeta,
}

/// RUM payload, version 2.0 (slp-reference section 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub version: String,
    pub asset_identification: AssetIdentification,
    pub signature: InnerSignature,
    pub meta: PayloadMeta,
    pub measurements: Vec<Measurement>,
}

/// What Tally reads off a report, leaving its bytes alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportInfo {
    pub report_id: u64,
    pub udi: Udi,
    pub entitlement_tag: String,
    pub software_version: String,
    /// Highest count over the measurements.
    pub count: u64,
    /// End of the last measurement window (Unix seconds).
    pub end_time: i64,
}

/// Borrowed view of a report object: payload string and signature.
#[derive(Deserialize)]
struct ReportObjectView {
    payload: Option<String>,
    signature: Option<Box<serde_json::value::RawValue>>,
}

/// Checks that a report object is well formed and signed, and reads its identity and usage.
/// Signature *validity* is CSSM's to check; Tally checks that one is present and complete.
pub fn inspect_report(raw: &str) -> Result<ReportInfo, RumError> {
    if raw.len() > MAX_REPORT_BYTES {
        return Err(RumError::TooLarge);
    }
    let view: ReportObjectView =
        serde_json::from_str(raw).map_err(|e| RumError::NotJson(e.to_string()))?;
    let payload_text = view.payload.ok_or(RumError::MissingPayload)?;
    let sig = match view.signature {
        None => return Err(RumError::MissingSignature),
        Some(v) if v.get() == "null" => return Err(RumError::MissingSignature),
        Some(v) => serde_json::from_str::<ReportSignature>(v.get())
            .map_err(|e| RumError::NotJson(format!("signature: {e}")))?,
    };
    if sig.value.trim().is_empty() {
        return Err(RumError::EmptySignatureField("value"));
    }
    if sig.signing_type.trim().is_empty() {
        return Err(RumError::EmptySignatureField("signing_type"));
    }
    // One parse in the common case; a second, smaller one only to name what is wrong.
    let payload: Payload = match serde_json::from_str(&payload_text) {
        Ok(p) => p,
        Err(e) => {
            #[derive(Deserialize)]
            struct Version {
                version: Option<serde_json::Value>,
            }
            return Err(match serde_json::from_str::<Version>(&payload_text) {
                Err(e) => RumError::PayloadNotJson(e.to_string()),
                Ok(Version { version: None }) => RumError::MissingField("version"),
                Ok(Version { version: Some(v) }) if v != "2.0" => RumError::UnsupportedVersion(
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                ),
                Ok(_) => RumError::PayloadNotJson(e.to_string()),
            });
        }
    };
    if payload.version != "2.0" {
        return Err(RumError::UnsupportedVersion(payload.version));
    }
    let udi = payload.asset_identification.instance.sudi.clone();
    if udi != sig.sudi {
        return Err(RumError::SudiMismatch {
            payload: udi.to_string(),
            signature: sig.sudi.to_string(),
        });
    }
    let mut count = 0u64;
    let mut end_time = 0i64;
    for m in &payload.measurements {
        let c: u64 = m
            .value
            .value
            .parse()
            .map_err(|_| RumError::BadCount(m.value.value.clone()))?;
        count = count.max(c);
        end_time = end_time.max(m.end_time);
    }
    Ok(ReportInfo {
        report_id: payload.asset_identification.report_id,
        udi,
        entitlement_tag: payload.meta.entitlement_tag,
        software_version: payload.meta.software_version,
        count,
        end_time,
    })
}

/// Builds the report object text for a payload and its signature, as a device emits it.
pub fn report_object(payload_text: &str, signature: &ReportSignature) -> String {
    #[derive(Serialize)]
    struct Obj<'a> {
        payload: &'a str,
        signature: &'a ReportSignature,
    }
    // Serialising a str and a plain struct cannot fail.
    serde_json::to_string(&Obj {
        payload: payload_text,
        signature,
    })
    .unwrap_or_default()
}

/// `<smartLicense>` envelope carrying each report object in its own `<RUMReport>` CDATA. A report
/// containing `]]>` (which would end a CDATA section) is carried in two or more adjacent CDATA
/// sections split inside it (`]]` + `]]><![CDATA[` + `>`), which an XML reader joins back into
/// the exact text.
pub fn envelope<S: AsRef<str>>(reports: &[S]) -> Result<String, EnvelopeError> {
    let mut out = String::from("<smartLicense>");
    for r in reports {
        out.push_str("<RUMReport><![CDATA[");
        out.push_str(&r.as_ref().replace("]]>", "]]]]><![CDATA[>"));
        out.push_str("]]></RUMReport>");
    }
    out.push_str("</smartLicense>");
    Ok(out)
}

/// Reads the report objects out of an envelope, each as the exact text between its CDATA markers.
pub fn parse_envelope(xml: &str) -> Result<Vec<String>, EnvelopeError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut in_report = false;
    let mut saw_root = false;
    let mut current = String::new();
    let mut out = Vec::new();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| EnvelopeError::Xml(e.to_string()))?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    0 if name == "smartLicense" => saw_root = true,
                    0 => return Err(EnvelopeError::WrongRoot(name)),
                    1 if name == "RUMReport" => {
                        in_report = true;
                        current.clear();
                    }
                    _ => return Err(EnvelopeError::UnexpectedElement(name)),
                }
                depth += 1;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if in_report && depth == 1 {
                    in_report = false;
                    out.push(std::mem::take(&mut current));
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                return Err(if depth == 0 {
                    EnvelopeError::WrongRoot(name)
                } else {
                    EnvelopeError::UnexpectedElement(name)
                });
            }
            Event::CData(c) if in_report => {
                let s = std::str::from_utf8(c.as_ref()).map_err(|_| EnvelopeError::NotUtf8)?;
                current.push_str(s);
            }
            Event::Text(t) => {
                let bytes: &[u8] = t.as_ref();
                if !bytes.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(EnvelopeError::Xml(
                        "text outside CDATA; report objects must be in CDATA".into(),
                    ));
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            _ => {
                return Err(EnvelopeError::Xml("unexpected XML content".into()));
            }
        }
    }
    if !saw_root {
        return Err(EnvelopeError::Xml("no <smartLicense> root".into()));
    }
    if depth != 0 {
        return Err(EnvelopeError::Xml("unclosed element".into()));
    }
    if out.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_payload(udi: &Udi, report_id: u64) -> Payload {
        Payload {
            version: "2.0".into(),
            asset_identification: AssetIdentification {
                report_id,
                asset: Asset {
                    name: "regid.2017-03.com.cisco.advantagek9".into(),
                },
                instance: Instance { sudi: udi.clone() },
            },
            signature: InnerSignature {
                signing_type: "builtin".into(),
                key: "k".into(),
                value: "dmFsdWU=".into(),
            },
            meta: PayloadMeta {
                entitlement_tag: "regid.2017-03.com.cisco.advantagek9,1.0".into(),
                utility_enabled: false,
                software_version: "17.9.4".into(),
                ha_udi: vec![],
            },
            measurements: vec![Measurement {
                log_time: 1_700_000_000,
                metric_name: "ENTITLEMENT".into(),
                start_time: 1_699_000_000,
                end_time: 1_700_000_000,
                sample_interval: 3600,
                num_samples: 24,
                value: MeasurementValue {
                    kind: "COUNT".into(),
                    value: "1".into(),
                },
                meta: MeasurementMeta::default(),
            }],
        }
    }

    pub fn sample_report(udi: &Udi, report_id: u64) -> String {
        let payload = serde_json::to_string(&sample_payload(udi, report_id)).unwrap();
        report_object(
            &payload,
            &ReportSignature {
                sudi: udi.clone(),
                signing_type: "builtin".into(),
                key: "regid.2017-03.com.cisco.advantagek9".into(),
                value: "c2ln".into(),
            },
        )
    }

    #[test]
    fn inspects_a_well_formed_report() {
        let udi = Udi::new("C9300-48P", "FCW1").unwrap();
        let info = inspect_report(&sample_report(&udi, 42)).unwrap();
        assert_eq!(info.report_id, 42);
        assert_eq!(info.udi, udi);
        assert_eq!(info.count, 1);
    }

    #[test]
    fn names_what_is_wrong() {
        let udi = Udi::new("C9300-48P", "FCW1").unwrap();
        let good = sample_report(&udi, 1);
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v.as_object_mut().unwrap().remove("signature");
        assert_eq!(
            inspect_report(&v.to_string()),
            Err(RumError::MissingSignature)
        );
        assert!(matches!(
            inspect_report("{not json"),
            Err(RumError::NotJson(_))
        ));
        assert_eq!(
            inspect_report(r#"{"signature":null}"#),
            Err(RumError::MissingPayload)
        );
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["signature"]["sudi"]["udi_serial_number"] = "OTHER".into();
        assert!(matches!(
            inspect_report(&v.to_string()),
            Err(RumError::SudiMismatch { .. })
        ));
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["payload"] = r#"{"version":"3.0"}"#.into();
        assert_eq!(
            inspect_report(&v.to_string()),
            Err(RumError::UnsupportedVersion("3.0".into()))
        );
        v["payload"] = r#"{"asset_identification":{}}"#.into();
        assert_eq!(
            inspect_report(&v.to_string()),
            Err(RumError::MissingField("version"))
        );
        v["payload"] = "not json".into();
        assert!(matches!(
            inspect_report(&v.to_string()),
            Err(RumError::PayloadNotJson(_))
        ));
    }

    #[test]
    fn envelope_round_trip_is_byte_exact() {
        let udi = Udi::new("C9300-48P", "FCW1").unwrap();
        let reports = vec![sample_report(&udi, 1), sample_report(&udi, 2)];
        let xml = envelope(&reports).unwrap();
        assert_eq!(parse_envelope(&xml).unwrap(), reports);
        let spaced = format!(
            "<?xml version=\"1.0\"?>\n<smartLicense>\n  <RUMReport><![CDATA[{}]]></RUMReport>\n</smartLicense>\n",
            reports[0]
        );
        assert_eq!(parse_envelope(&spaced).unwrap(), vec![reports[0].clone()]);
    }

    #[test]
    fn envelope_errors() {
        assert!(matches!(
            parse_envelope("<smartLicense>"),
            Err(EnvelopeError::Xml(_))
        ));
        assert!(matches!(
            parse_envelope("<other/>"),
            Err(EnvelopeError::WrongRoot(_))
        ));
        assert_eq!(
            parse_envelope("<smartLicense></smartLicense>"),
            Err(EnvelopeError::Empty)
        );
        assert!(matches!(
            parse_envelope("<smartLicense><Foo/></smartLicense>"),
            Err(EnvelopeError::UnexpectedElement(_))
        ));
        // "]]>" inside a report splits its CDATA section; the text comes back whole.
        let tricky = ["a]]>b]]>]]>", "]]>", "x]]"];
        let xml = envelope(&tricky).unwrap();
        assert_eq!(parse_envelope(&xml).unwrap(), tricky);
    }
}
