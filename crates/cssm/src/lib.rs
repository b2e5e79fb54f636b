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
}

impl CssmError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
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
    /// Sent as `X-CSW-REQUESTING-SYSTEM`.
    pub requesting_system: String,
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
        poll_id: String,
    },
    /// CSSM refused the whole request; `duplicates` names reports it had already seen.
    Failed {
        message: String,
        duplicates: Vec<(Udi, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Acknowledgement {
    pub sudi: Udi,
    #[serde(default)]
    pub report_ids: Vec<u64>,
    /// Base64 of the ACK document.
    pub smart_license: String,
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
        let url = format!("{}/{}", self.cfg.api_base.trim_end_matches('/'), path);
        for refresh in [false, true] {
            let token = self.token(refresh).await?;
            let mut req = self
                .http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("X-CSW-REQUESTING-SYSTEM", &self.cfg.requesting_system)
                .body(body.clone());
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
                    body: text.chars().take(500).collect(),
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
        let text = self
            .post(
                "v2/devices/reportusage",
                &[
                    ("X-CSW-SMART-ACCOUNT-ID", smart_account_id),
                    ("X-CSW-VIRTUAL-ACCOUNT-ID", virtual_account_id),
                ],
                body,
            )
            .await?;
        parse_upload(&text)
    }

    /// `POST v2/accounts/poll` for the acknowledgements of an accepted upload.
    pub async fn poll(&self, poll_id: &str) -> Result<PollOutcome, CssmError> {
        let body = serde_json::json!({"data": {
            "timestamp": chrono::Utc::now().timestamp_millis(),
            "nonce": uuid::Uuid::new_v4().to_string(),
            "poll_id": poll_id,
            "action": "acknowledgements",
        }})
        .to_string();
        let text = self.post("v2/accounts/poll", &[], body).await?;
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
        return Ok(UploadOutcome::Failed {
            message: v
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("FAILED")
                .to_owned(),
            duplicates,
        });
    }
    let poll_id = v
        .pointer("/data/poll_id")
        .and_then(|p| p.as_str())
        .ok_or_else(|| CssmError::Malformed(format!("no poll_id in {text:.200}")))?;
    Ok(UploadOutcome::Accepted {
        poll_id: poll_id.to_owned(),
    })
}

pub fn parse_poll(text: &str) -> Result<PollOutcome, CssmError> {
    #[derive(Deserialize)]
    struct Data {
        #[serde(default)]
        acknowledgements: Vec<Acknowledgement>,
    }
    #[derive(Deserialize)]
    struct Poll {
        status: String,
        data: Option<Data>,
    }
    let p: Poll = serde_json::from_str(text).map_err(|e| CssmError::Malformed(e.to_string()))?;
    match p.status.as_str() {
        "OK_POLL" => Ok(PollOutcome::Pending),
        "COMPLETE" => Ok(PollOutcome::Complete(
            p.data.map(|d| d.acknowledgements).unwrap_or_default(),
        )),
        other => Err(CssmError::Malformed(format!("poll status {other:?}"))),
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
                poll_id: "p1".into()
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
}
