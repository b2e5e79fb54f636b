//! Client for CSSM's licensing REST API: OAuth2 client credentials, `v2/devices/reportusage`,
//! `v2/accounts/poll` and `v1/accounts/{domain}/licenses`. Report objects are embedded in the
//! request as the exact bytes collected, because CSSM checks each signature over them.

pub mod accounts;

pub use accounts::{SmartAccountId, VirtualAccountId};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::{Duration, Instant};
use tally_domain::Udi;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum CssmError {
    #[error("CSSM unreachable: {0}")]
    Unreachable(String),
    #[error("CSSM refused the client credentials: {0}")]
    Auth(String),
    #[error("CSSM answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("CSSM answer is malformed: {0}")]
    Malformed(String),
    /// CSSM answered the poll with an error: `OK_POLL` with a non-empty `message` (as Cisco's
    /// sample reads it), or a status that is neither `OK_POLL` nor `COMPLETE`.
    #[error("CSSM refused: {}", refusal(.status, .message, .message_code))]
    Refused {
        status: String,
        message: String,
        message_code: String,
    },
}

fn refusal(status: &str, message: &str, code: &str) -> String {
    let mut out = format!("{status}: {message}");
    if !code.is_empty() {
        out.push_str(&format!(" ({code})"));
    }
    out
}

/// Whether trying the same call again later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, HTTP 5xx, 408 or 429: back off and try again.
    Transient,
    /// Any other 4xx, refused credentials, a refusal or an answer Tally cannot read: trying the
    /// same request again gives the same answer, so it waits for an operator.
    Permanent,
}

impl CssmError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unreachable(_) => ErrorClass::Transient,
            Self::Status { status, .. } if *status >= 500 || *status == 408 || *status == 429 => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// `X-CSW-REQUESTING-SYSTEM`: the system talking to CSSM, as a UDI object the way Cisco's
/// sample sends it (`{"udi_pid": ..., "udi_serial_number": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RequestingSystem {
    pub udi_pid: String,
    pub udi_serial_number: String,
}

impl RequestingSystem {
    /// PID every Tally installation sends unless configured otherwise.
    pub const DEFAULT_PID: &'static str = "TALLY";

    /// The default for an installation: PID `TALLY`, serial `TLY` + 12 hex digits of a SHA-256
    /// of `seed` (the CSSM API client id: one per installation, the same on every replica and
    /// after every restart, and not readable back from the header).
    pub fn for_installation(seed: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(seed.as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02X}")).collect();
        Self {
            udi_pid: Self::DEFAULT_PID.into(),
            udi_serial_number: format!("TLY{hex}"),
        }
    }

    /// A configured value: a JSON object with non-empty `udi_pid` and `udi_serial_number`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: Self = serde_json::from_str(text).map_err(|e| {
            format!(
                "requesting system must be a JSON object {{\"udi_pid\": ..., \"udi_serial_number\": ...}}: {e}"
            )
        })?;
        if r.udi_pid.trim().is_empty() || r.udi_serial_number.trim().is_empty() {
            return Err("requesting system needs a non-empty udi_pid and udi_serial_number".into());
        }
        Ok(r)
    }

    /// The header value: the object as compact JSON.
    pub fn header(&self) -> String {
        serde_json::json!({"udi_pid": self.udi_pid, "udi_serial_number": self.udi_serial_number})
            .to_string()
    }
}

/// A JSON object is taken as the UDI itself; any other text seeds the installation default.
impl From<&str> for RequestingSystem {
    fn from(text: &str) -> Self {
        Self::parse(text).unwrap_or_else(|_| Self::for_installation(text))
    }
}

impl From<String> for RequestingSystem {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct CssmConfig {
    /// e.g. `https://swapi.cisco.com/services/api/smart-accounts-and-licensing/`
    pub api_base: String,
    /// OAuth2 token endpoint.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Sent as `X-CSW-REQUESTING-SYSTEM` on every API call.
    pub requesting_system: RequestingSystem,
    pub timeout: Duration,
}

/// One device's reports in a reportusage request.
pub struct DeviceUsage<'a> {
    pub udi: &'a Udi,
    /// Report objects, exact text.
    pub reports: Vec<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    Accepted {
        /// As CSSM gave it (a JSON number's exact digits, or a string).
        poll_id: String,
        /// CSSM gave `poll_id` as a JSON number: the poll sends it back as one.
        poll_id_numeric: bool,
    },
    /// CSSM refused the whole request; `duplicates` names reports it had already seen.
    Failed {
        message: String,
        message_code: String,
        duplicates: Vec<(Udi, u64)>,
    },
}

impl UploadOutcome {
    /// A refusal for reports CSSM already has: named duplicates, or a `message`/`message_code`
    /// that says so.
    pub fn is_duplicate(&self) -> bool {
        match self {
            Self::Accepted { .. } => false,
            Self::Failed {
                message,
                message_code,
                duplicates,
            } => {
                !duplicates.is_empty()
                    || message.to_ascii_lowercase().contains("duplicate")
                    || message_code.to_ascii_lowercase().contains("duplicate")
            }
        }
    }
}

/// One entry of `data.acknowledgements`. Cisco's sample reads only `smart_license`; `sudi` and
/// `report_ids` are used when present.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Acknowledgement {
    #[serde(default, deserialize_with = "lenient_udi")]
    pub sudi: Option<Udi>,
    #[serde(default, deserialize_with = "lenient_ids")]
    pub report_ids: Vec<u64>,
    /// Base64 of the ACK document (`None` when CSSM sent none).
    #[serde(default)]
    pub smart_license: Option<String>,
}

/// A `sudi` that is absent, null or not a UDI object is no `sudi`.
fn lenient_udi<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Udi>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value::<Udi>(v).ok())
}

/// Report ids as numbers or numeric strings; anything else is left out.
fn lenient_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_u64().or_else(|| e.as_str()?.trim().parse().ok()))
                .collect()
        })
        .unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    Pending,
    Complete(Vec<Acknowledgement>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LicenseDetail {
    pub license_type: String,
    pub quantity: i64,
    #[serde(default)]
    pub start_date: Option<String>,
    #[serde(default)]
    pub end_date: Option<String>,
    #[serde(default)]
    pub subscription_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct License {
    pub license: String,
    pub virtual_account: String,
    pub quantity: i64,
    pub in_use: i64,
    pub available: i64,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub license_details: Vec<LicenseDetail>,
}

pub struct CssmClient {
    http: reqwest::Client,
    cfg: CssmConfig,
    token: Mutex<Option<(String, Instant)>>,
}

impl CssmClient {
    pub fn new(cfg: CssmConfig) -> Result<Self, CssmError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| CssmError::Unreachable(e.to_string()))?;
        Ok(Self {
            http,
            cfg,
            token: Mutex::new(None),
        })
    }

    async fn token(&self, refresh: bool) -> Result<String, CssmError> {
        let mut guard = self.token.lock().await;
        if !refresh
            && let Some((t, until)) = guard.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let resp = self
            .http
            .post(&self.cfg.token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.cfg.client_id.as_str()),
                ("client_secret", self.cfg.client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|e| CssmError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| CssmError::Unreachable(e.to_string()))?;
        if status.as_u16() == 400 || status.as_u16() == 401 {
            return Err(CssmError::Auth(body));
        }
        if !status.is_success() {
            return Err(CssmError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let t: Token =
            serde_json::from_str(&body).map_err(|e| CssmError::Malformed(e.to_string()))?;
        // Renew a minute early.
        let ttl = t.expires_in.unwrap_or(3600).saturating_sub(60).max(1);
        *guard = Some((
            t.access_token.clone(),
            Instant::now() + Duration::from_secs(ttl),
        ));
        Ok(t.access_token)
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<String, CssmError> {
        self.call(reqwest::Method::POST, path, headers, Some(body))
            .await
    }

    /// A call under the API base with the bearer token (renewed once on a 401) and the
    /// requesting system; the answer's text, or the status and (the start of) the body.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<String, CssmError> {
        let url = format!("{}/{}", self.cfg.api_base.trim_end_matches('/'), path);
        for refresh in [false, true] {
            let token = self.token(refresh).await?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header("accept", "application/json")
                .header(
                    "X-CSW-REQUESTING-SYSTEM",
                    self.cfg.requesting_system.header(),
                );
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| CssmError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| CssmError::Unreachable(e.to_string()))?;
            if status.as_u16() == 401 && !refresh {
                continue;
            }
            if !status.is_success() {
                return Err(CssmError::Status {
                    status: status.as_u16(),
                    body: text.chars().take(2000).collect(),
                });
            }
            return Ok(text);
        }
        Err(CssmError::Auth("token refused twice".into()))
    }

    /// `POST v2/devices/reportusage`. `nonce` identifies this request: resending an unanswered
    /// request uses the same nonce, so CSSM can tell a retry from a second upload.
    pub async fn report_usage(
        &self,
        smart_account_id: &str,
        virtual_account_id: &str,
        nonce: &str,
        devices: &[DeviceUsage<'_>],
    ) -> Result<UploadOutcome, CssmError> {
        let body = report_usage_body(nonce, chrono::Utc::now().timestamp_millis(), devices)?;
        let answer = self
            .post(
                "v2/devices/reportusage",
                &[
                    ("X-CSW-SMART-ACCOUNT-ID", smart_account_id),
                    ("X-CSW-VIRTUAL-ACCOUNT-ID", virtual_account_id),
                ],
                body,
            )
            .await;
        match answer {
            Ok(text) => parse_upload(&text),
            // Cisco's sample reads `status`/`message` whatever the HTTP status: a 4xx carrying
            // a FAILED answer is that refusal (a duplicate keeps its own handling).
            Err(CssmError::Status { status, body })
                if (400..500).contains(&status) && !matches!(status, 408 | 429) =>
            {
                match parse_upload(&body) {
                    Ok(f @ UploadOutcome::Failed { .. }) => Ok(f),
                    _ => Err(CssmError::Status { status, body }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `POST v2/accounts/poll` for the acknowledgements of an accepted upload. `numeric`: send
    /// `poll_id` back as the JSON number CSSM gave. `accounts`: the smart and virtual account ids
    /// of the upload, sent in the same headers (as Cisco's sample polls).
    pub async fn poll(
        &self,
        poll_id: &str,
        numeric: bool,
        accounts: Option<(&str, &str)>,
    ) -> Result<PollOutcome, CssmError> {
        let body = poll_body(
            chrono::Utc::now().timestamp_millis(),
            &uuid::Uuid::new_v4().to_string(),
            poll_id,
            numeric,
        );
        let headers: Vec<(&str, &str)> = match accounts {
            Some((sa, va)) => vec![
                ("X-CSW-SMART-ACCOUNT-ID", sa),
                ("X-CSW-VIRTUAL-ACCOUNT-ID", va),
            ],
            None => Vec::new(),
        };
        let text = self.post("v2/accounts/poll", &headers, body).await?;
        parse_poll(&text)
    }

    /// `POST v1/accounts/{domain}/licenses`, one page.
    pub async fn licenses(
        &self,
        domain: &str,
        virtual_accounts: &[String],
        limit: u32,
        offset: u32,
    ) -> Result<(u64, Vec<License>), CssmError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            #[serde(default)]
            total_records: Option<u64>,
            licenses: Vec<License>,
        }
        let body = serde_json::json!({"virtualAccounts": virtual_accounts, "limit": limit, "offset": offset}).to_string();
        let text = self
            .post(&format!("v1/accounts/{domain}/licenses"), &[], body)
            .await?;
        let page: Page =
            serde_json::from_str(&text).map_err(|e| CssmError::Malformed(e.to_string()))?;
        Ok((
            page.total_records.unwrap_or(page.licenses.len() as u64),
            page.licenses,
        ))
    }
}

/// Builds the reportusage JSON by hand so each report object goes in as its exact bytes.
pub fn report_usage_body(
    nonce: &str,
    timestamp_ms: i64,
    devices: &[DeviceUsage<'_>],
) -> Result<String, CssmError> {
    let mut out = String::with_capacity(
        devices
            .iter()
            .map(|d| d.reports.iter().map(|r| r.len() + 1).sum::<usize>() + 100)
            .sum::<usize>()
            + 100,
    );
    out.push_str(r#"{"data":{"timestamp":"#);
    out.push_str(&timestamp_ms.to_string());
    out.push_str(r#","nonce":"#);
    out.push_str(&serde_json::to_string(nonce).map_err(|e| CssmError::Malformed(e.to_string()))?);
    out.push_str(r#","reports":["#);
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"sudi":"#);
        out.push_str(
            &serde_json::to_string(d.udi).map_err(|e| CssmError::Malformed(e.to_string()))?,
        );
        out.push_str(r#","usage":["#);
        for (j, r) in d.reports.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let text = std::str::from_utf8(r).map_err(|e| CssmError::Malformed(e.to_string()))?;
            // Must be one JSON value, or the whole request would be garbage.
            let _: &RawValue =
                serde_json::from_str(text).map_err(|e| CssmError::Malformed(e.to_string()))?;
            out.push_str(text);
        }
        out.push_str("]}");
    }
    out.push_str("]}}");
    Ok(out)
}

/// The poll request; a numeric `poll_id` goes back as the number, every digit kept.
pub fn poll_body(timestamp_ms: i64, nonce: &str, poll_id: &str, numeric: bool) -> String {
    let id = if numeric && !poll_id.is_empty() && poll_id.bytes().all(|b| b.is_ascii_digit()) {
        poll_id.to_owned()
    } else {
        serde_json::Value::from(poll_id).to_string()
    };
    format!(
        r#"{{"data":{{"timestamp":{timestamp_ms},"nonce":{},"poll_id":{id},"action":"acknowledgements"}}}}"#,
        serde_json::Value::from(nonce)
    )
}

/// A JSON field as text: `null` and absent are empty, numbers keep their digits.
fn text_of(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `poll_id` at the top level (Cisco's sample) or under `data`, as a string or a number; the
/// number's exact digits are kept (it can exceed 2^53).
fn find_poll_id(text: &str) -> Option<(String, bool)> {
    #[derive(Deserialize)]
    struct Ids<'a> {
        #[serde(borrow, default)]
        poll_id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let read = |raw: &RawValue| -> Option<(String, bool)> {
        let t = raw.get().trim();
        if let Ok(s) = serde_json::from_str::<String>(t) {
            return (!s.trim().is_empty()).then(|| (s.trim().to_owned(), false));
        }
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| (t.to_owned(), true))
    };
    let ids: Ids = serde_json::from_str(text).ok()?;
    if let Some(found) = ids.poll_id.and_then(read) {
        return Some(found);
    }
    let data: Ids = serde_json::from_str(ids.data?.get()).ok()?;
    data.poll_id.and_then(read)
}

pub fn parse_upload(text: &str) -> Result<UploadOutcome, CssmError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CssmError::Malformed(e.to_string()))?;
    let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
    if status == "FAILED" {
        let duplicates = v
            .pointer("/data/duplicates")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        let udi: Udi = serde_json::from_value(e.get("sudi")?.clone()).ok()?;
                        Some((udi, e.get("report_id")?.as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = text_of(v.get("message"));
        return Ok(UploadOutcome::Failed {
            message: if message.is_empty() {
                "FAILED".into()
            } else {
                message
            },
            message_code: text_of(v.get("message_code")),
            duplicates,
        });
    }
    let Some((poll_id, poll_id_numeric)) = find_poll_id(text) else {
        return Err(CssmError::Malformed(format!("no poll_id in {text:.200}")));
    };
    Ok(UploadOutcome::Accepted {
        poll_id,
        poll_id_numeric,
    })
}

pub fn parse_poll(text: &str) -> Result<PollOutcome, CssmError> {
    #[derive(Deserialize)]
    struct Data {
        #[serde(default)]
        acknowledgements: Option<Vec<Acknowledgement>>,
    }
    #[derive(Deserialize)]
    struct Poll {
        status: String,
        #[serde(default)]
        message: Option<serde_json::Value>,
        #[serde(default)]
        message_code: Option<serde_json::Value>,
        #[serde(default)]
        data: Option<Data>,
    }
    let p: Poll = serde_json::from_str(text)
        .map_err(|e| CssmError::Malformed(format!("{e} in {text:.200}")))?;
    let message = text_of(p.message.as_ref());
    let message_code = text_of(p.message_code.as_ref());
    match p.status.as_str() {
        // Cisco's sample: OK_POLL with an empty message is "not yet"; with a message, an error.
        "OK_POLL" if message.trim().is_empty() => Ok(PollOutcome::Pending),
        "COMPLETE" => Ok(PollOutcome::Complete(
            p.data.and_then(|d| d.acknowledgements).unwrap_or_default(),
        )),
        other => Err(CssmError::Refused {
            status: other.to_owned(),
            message,
            message_code,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_embeds_reports_verbatim() {
        let udi = Udi::new("C9300-48P", "FCW1").unwrap();
        let r1 = br#"{"payload":"{\"x\": 1}" , "signature":{}}"#;
        let body = report_usage_body(
            "n1",
            5,
            &[DeviceUsage {
                udi: &udi,
                reports: vec![r1],
            }],
        )
        .unwrap();
        assert!(body.contains(std::str::from_utf8(r1).unwrap()));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"]["nonce"], "n1");
        assert_eq!(v["data"]["reports"][0]["sudi"]["udi_serial_number"], "FCW1");
        assert!(
            report_usage_body(
                "n",
                5,
                &[DeviceUsage {
                    udi: &udi,
                    reports: vec![b"{broken"]
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn parses_answers() {
        assert_eq!(
            parse_upload(r#"{"status":"SUCCESS","data":{"poll_id":"p1"}}"#).unwrap(),
            UploadOutcome::Accepted {
                poll_id: "p1".into(),
                poll_id_numeric: false,
            }
        );
        match parse_upload(r#"{"status":"FAILED","message":"duplicate report","data":{"duplicates":[{"sudi":{"udi_pid":"A","udi_serial_number":"B"},"report_id":7}]}}"#).unwrap() {
            UploadOutcome::Failed { duplicates, .. } => assert_eq!(duplicates[0].1, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_poll(r#"{"status":"OK_POLL"}"#).unwrap(),
            PollOutcome::Pending
        );
        assert!(parse_poll(r#"{"status":"WHAT"}"#).is_err());
    }

    /// The answer shapes of Cisco's sample code and Postman collection (gve-sw
    /// gve_devnet_smart_licensing_using_policy_offline_reservation_tools).
    #[test]
    fn reads_answers_as_ciscos_sample_does() {
        // reportusage: poll_id at the top level, a number beyond 2^53 kept digit for digit.
        assert_eq!(
            parse_upload(r#"{"status":"OK_POLL","message_code":null,"message":null,"timestamp":1644340472292,"nonce":"random1234","type":null,"poll_id":77412347487202314,"poll_interval":300,"action":"acknowledgements"}"#).unwrap(),
            UploadOutcome::Accepted { poll_id: "77412347487202314".into(), poll_id_numeric: true }
        );
        assert_eq!(
            parse_upload(r#"{"status":"SUCCESS","message":"","poll_id":"abc"}"#).unwrap(),
            UploadOutcome::Accepted {
                poll_id: "abc".into(),
                poll_id_numeric: false
            }
        );
        assert!(parse_upload(r#"{"status":"SUCCESS","message":""}"#).is_err());
        assert!(parse_upload(r#"{"status":"SUCCESS","poll_id":""}"#).is_err());
        assert!(parse_upload(r#"{"status":"SUCCESS","poll_id":1.5}"#).is_err());
        // FAILED: message and message_code read; a duplicate is told from other refusals.
        let f = parse_upload(r#"{"status":"FAILED","message":"Invalid virtual account","message_code":"INVALID_VA"}"#).unwrap();
        assert!(!f.is_duplicate());
        assert_eq!(
            f,
            UploadOutcome::Failed {
                message: "Invalid virtual account".into(),
                message_code: "INVALID_VA".into(),
                duplicates: vec![]
            }
        );
        assert!(
            parse_upload(r#"{"status":"FAILED","message":"Duplicate report"}"#)
                .unwrap()
                .is_duplicate()
        );
        // Poll: OK_POLL with an empty or null message waits; with a message it is an error.
        assert_eq!(
            parse_poll(r#"{"status":"OK_POLL","message":"","message_code":""}"#).unwrap(),
            PollOutcome::Pending
        );
        assert_eq!(
            parse_poll(r#"{"status":"OK_POLL","message":null,"message_code":null,"poll_id":1}"#)
                .unwrap(),
            PollOutcome::Pending
        );
        match parse_poll(
            r#"{"status":"OK_POLL","message":"Poll request expired","message_code":"POLL_EXPIRED"}"#,
        ) {
            Err(e @ CssmError::Refused { .. }) => {
                assert_eq!(e.class(), ErrorClass::Permanent);
                let t = e.to_string();
                assert!(
                    t.contains("Poll request expired") && t.contains("POLL_EXPIRED"),
                    "{t}"
                );
            }
            other => panic!("{other:?}"),
        }
        // ACK entries: only smart_license is required; sudi and report_ids are used if present.
        let done = parse_poll(r#"{"status":"COMPLETE","message_code":"","message":"","data":{"acknowledgements":[{"smart_license":"QUNL"},{"sudi":{"udi_pid":"A","udi_serial_number":"B"},"report_ids":[1,"2"],"smart_license":"QUNL","extra":true},{"sudi":null,"smart_license":null}]}}"#).unwrap();
        let PollOutcome::Complete(acks) = done else {
            panic!()
        };
        assert_eq!(acks.len(), 3);
        assert_eq!(acks[0].sudi, None);
        assert_eq!(acks[0].smart_license.as_deref(), Some("QUNL"));
        assert_eq!(
            acks[1].sudi,
            Some(Udi {
                udi_pid: "A".into(),
                udi_serial_number: "B".into()
            })
        );
        assert_eq!(acks[1].report_ids, vec![1, 2]);
        assert_eq!(
            (acks[2].sudi.clone(), acks[2].smart_license.clone()),
            (None, None)
        );
        // The poll request sends a numeric poll_id back as the number.
        let b = poll_body(5, "n", "77412347487202314", true);
        assert!(b.contains(r#""poll_id":77412347487202314,"#), "{b}");
        assert!(poll_body(5, "n", "abc", true).contains(r#""poll_id":"abc""#));
        assert!(poll_body(5, "n", "123", false).contains(r#""poll_id":"123""#));
    }

    #[test]
    fn error_classes() {
        let st = |s| CssmError::Status {
            status: s,
            body: String::new(),
        };
        for s in [500, 502, 503, 408, 429] {
            assert_eq!(st(s).class(), ErrorClass::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert_eq!(st(s).class(), ErrorClass::Permanent, "{s}");
        }
        assert!(CssmError::Unreachable("x".into()).is_transient());
        assert!(!CssmError::Auth("x".into()).is_transient());
        assert!(!CssmError::Malformed("x".into()).is_transient());
    }

    #[test]
    fn requesting_system_is_a_udi_object_with_a_stable_default() {
        let a = RequestingSystem::for_installation("client-1");
        assert_eq!(a, RequestingSystem::for_installation("client-1"));
        assert_ne!(a, RequestingSystem::for_installation("client-2"));
        assert_eq!(a.udi_pid, "TALLY");
        assert!(a.udi_serial_number.starts_with("TLY") && a.udi_serial_number.len() == 15);
        assert!(!a.udi_serial_number.contains("client"));
        let v: serde_json::Value = serde_json::from_str(&a.header()).unwrap();
        assert_eq!(v["udi_pid"], "TALLY");
        assert_eq!(v["udi_serial_number"], a.udi_serial_number.as_str());
        let c = RequestingSystem::parse(r#"{"udi_pid":"TALLY-LAB","udi_serial_number":"LAB01"}"#)
            .unwrap();
        assert_eq!(
            c.header(),
            r#"{"udi_pid":"TALLY-LAB","udi_serial_number":"LAB01"}"#
        );
        assert!(RequestingSystem::parse(r#"{"udi_pid":"","udi_serial_number":"X"}"#).is_err());
        assert!(RequestingSystem::parse("Tally 1.0").is_err());
        assert_eq!(
            RequestingSystem::from("Tally 1.0"),
            RequestingSystem::for_installation("Tally 1.0")
        );
    }
}
