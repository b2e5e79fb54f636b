//! Client for Cisco's device-side licensing REST API (`/smartlic-service`, HTTP Basic auth):
//! close-reports, all-reports (kept as the exact text of each report object) and import; and for
//! the IOS-XE RESTCONF boot-level resource (read and configure the license boot level); and the
//! `cisco-smart-license` operational state (the device's own policy and its last ACK received,
//! [`DeviceClient::licensing_state`]).

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::{future::Future, time::Duration};
use tally_domain::{DnaTier, NetworkLicense};

mod licensing;
mod restconf;
pub use licensing::{
    BadDateTime, DevicePolicy, KindAttrs, LICENSING_STATE_PATH, LicensingState, PolicyType,
    StateRead, parse_date_and_time, read_state,
};
pub use restconf::{BOOT_LEVEL_PATH, BootLevel};

/// Largest all-reports answer read from one device.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SouthboundError {
    #[error("device unreachable: {0}")]
    Unreachable(String),
    #[error("device timed out")]
    Timeout,
    #[error("device refused the credentials (HTTP 401)")]
    Unauthorized,
    #[error("device answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("device answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The answer is not the documented JSON; `body` is kept for quarantine.
    #[error("device answer is malformed: {reason}")]
    Malformed { reason: String, body: Vec<u8> },
    /// A RESTCONF call answered with an error status; `message` is the device's own
    /// `error-message` (why it refused), `tag` its `error-tag` (e.g. `invalid-value`).
    #[error("device {url} answered HTTP {status} ({tag}): {message}")]
    Refused {
        url: String,
        status: u16,
        tag: String,
        message: String,
    },
}

impl SouthboundError {
    /// Worth another try: network trouble and server errors, not refusals.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout => true,
            // 408: the device's HTTP server gave up waiting (busy); 429: rate limited.
            Self::Status { status, .. } | Self::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// e.g. `https://10.0.0.1` (the API lives under `<base>/smartlic-service`).
    pub base_url: &'a str,
    pub username: &'a str,
    pub password: &'a str,
}

#[derive(Clone)]
pub struct DeviceClient {
    http: reqwest::Client,
    retries: u32,
}

impl DeviceClient {
    /// `timeout` bounds each request; transient failures are retried `retries` times with backoff.
    pub fn new(timeout: Duration, retries: u32) -> Result<Self, SouthboundError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // Several devices can share a host and port (a NAT, a terminal server, the simulator).
            .pool_max_idle_per_host(1024)
            // Device management certificates are mostly self-signed; operators opt into checks
            // per deployment (see docs/config.md).
            .tls_danger_accept_invalid_certs(
                std::env::var("TALLY_SOUTHBOUND_VERIFY_TLS").map_or(true, |v| v != "true"),
            )
            .build()
            .map_err(|e| SouthboundError::Unreachable(e.to_string()))?;
        Ok(Self { http, retries })
    }

    fn url(t: &Target<'_>, path: &str) -> String {
        format!(
            "{}/smartlic-service/{path}",
            t.base_url.trim_end_matches('/')
        )
    }

    /// Runs `once` until it succeeds, fails for good, or transient failures used up the retries.
    async fn retrying<T, F, Fut>(&self, once: F) -> Result<T, SouthboundError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SouthboundError>>,
    {
        let mut attempt = 0;
        loop {
            match once().await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * 4u64.pow(attempt - 1))).await;
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        t: &Target<'_>,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, SouthboundError> {
        self.retrying(|| self.send_once(t, method.clone(), path, body.clone()))
            .await
    }

    async fn send_once(
        &self,
        t: &Target<'_>,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, SouthboundError> {
        let mut req = self
            .http
            .request(method, Self::url(t, path))
            .basic_auth(t.username, Some(t.password))
            .header("accept", "application/json");
        if let Some(b) = body {
            req = req.header("content-type", "text/plain").body(b);
        }
        let (status, bytes) = exchange(req).await?;
        if status == 401 {
            return Err(SouthboundError::Unauthorized);
        }
        if !(200..300).contains(&status) {
            return Err(SouthboundError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        Ok(bytes)
    }

    /// `GET <base>/restconf/data/Cisco-IOS-XE-native:native/license/boot/level`: the configured
    /// boot level (the one the device runs after its next reload).
    pub async fn boot_level(
        &self,
        base_url: &str,
        user: &str,
        pass: &str,
    ) -> Result<BootLevel, SouthboundError> {
        let url = restconf::url(base_url);
        let body = self
            .retrying(|| self.restconf_once(&url, user, pass, reqwest::Method::GET, None))
            .await?;
        restconf::parse_level(&url, body)
    }

    /// `PUT` of the boot level: configures `network` with the `dna` add-on (none: no add-on). The
    /// device runs it after its next reload; a refusal carries the device's reason.
    pub async fn set_boot_level(
        &self,
        base_url: &str,
        user: &str,
        pass: &str,
        network: NetworkLicense,
        dna: Option<DnaTier>,
    ) -> Result<(), SouthboundError> {
        let url = restconf::url(base_url);
        let body = restconf::level_body(BootLevel { network, dna });
        self.retrying(|| {
            self.restconf_once(&url, user, pass, reqwest::Method::PUT, Some(body.clone()))
        })
        .await
        .map(|_| ())
    }

    /// `GET <base>/restconf/data/cisco-smart-license:licensing/state`: the device's own policy,
    /// its last ACK received and its next ACK deadline. A device without RESTCONF (a plain 404,
    /// 405 or 501, a refused connection), one that refuses the credentials on RESTCONF (401,
    /// 403), and one whose RESTCONF has no such data (a RESTCONF 404) are
    /// [`StateRead::Unavailable`], not errors; network trouble, server errors (after the
    /// retries) and answers that are not JSON are.
    pub async fn licensing_state(&self, t: &Target<'_>) -> Result<StateRead, SouthboundError> {
        let url = licensing::url(t.base_url);
        let got = self
            .retrying(|| async {
                let req = self
                    .http
                    .get(&url)
                    .basic_auth(t.username, Some(t.password))
                    .header("accept", restconf::YANG_JSON);
                match req.send().await {
                    Err(e) if connection_refused(&e) => Ok(Err(format!(
                        "RESTCONF is not available: {url} refused the connection"
                    ))),
                    Err(e) => Err(transport(e)),
                    Ok(resp) => {
                        let (status, body) = read_answer(resp).await?;
                        if (200..300).contains(&status) {
                            return Ok(Ok(body));
                        }
                        match restconf::refused(&url, status, &body) {
                            SouthboundError::Refused { tag, message, .. }
                                if matches!(status, 404 | 405 | 501) && tag.is_empty() =>
                            {
                                Ok(Err(format!(
                                    "RESTCONF is not available: {url} answered HTTP {status} ({message})"
                                )))
                            }
                            SouthboundError::Refused { message, .. } if status == 404 => {
                                Ok(Err(format!(
                                    "RESTCONF has no cisco-smart-license state: {url} answered HTTP 404 ({message})"
                                )))
                            }
                            SouthboundError::Refused { message, .. }
                                if matches!(status, 401 | 403) =>
                            {
                                Ok(Err(format!(
                                    "RESTCONF refused the credentials: {url} answered HTTP {status} ({message})"
                                )))
                            }
                            e => Err(e),
                        }
                    }
                }
            })
            .await?;
        match got {
            Err(reason) => Ok(StateRead::Unavailable(reason)),
            Ok(body) => licensing::read_state(&body)
                .map(StateRead::Read)
                .map_err(|reason| SouthboundError::Malformed {
                    reason: format!("{url}: {reason}"),
                    body,
                }),
        }
    }

    async fn restconf_once(
        &self,
        url: &str,
        user: &str,
        pass: &str,
        method: reqwest::Method,
        body: Option<String>,
    ) -> Result<Vec<u8>, SouthboundError> {
        let mut req = self
            .http
            .request(method, url)
            .basic_auth(user, Some(pass))
            .header("accept", restconf::YANG_JSON);
        if let Some(b) = body {
            req = req.header("content-type", restconf::YANG_JSON).body(b);
        }
        let (status, bytes) = exchange(req).await?;
        if !(200..300).contains(&status) {
            return Err(restconf::refused(url, status, &bytes));
        }
        Ok(bytes)
    }

    /// `POST /close-reports`: closes open reports so they can be collected.
    pub async fn close_reports(&self, t: &Target<'_>) -> Result<(), SouthboundError> {
        self.send(t, reqwest::Method::POST, "close-reports", None)
            .await
            .map(|_| ())
    }

    /// `GET /all-reports`: each report object as the exact text the device sent.
    pub async fn all_reports(&self, t: &Target<'_>) -> Result<Vec<String>, SouthboundError> {
        let body = self
            .send(t, reqwest::Method::GET, "all-reports", None)
            .await?;
        split_reports(body)
    }

    /// `POST /import`: installs an ACK document, sent base64-encoded as the documented flow says.
    pub async fn import_ack(
        &self,
        t: &Target<'_>,
        ack_document: &str,
    ) -> Result<(), SouthboundError> {
        self.send(
            t,
            reqwest::Method::POST,
            "import",
            Some(B64.encode(ack_document.as_bytes())),
        )
        .await
        .map(|_| ())
    }
}

fn transport(e: reqwest::Error) -> SouthboundError {
    if e.is_timeout() {
        SouthboundError::Timeout
    } else {
        SouthboundError::Unreachable(e.to_string())
    }
}

/// The connection was refused (nothing listens there), as opposed to other network trouble.
fn connection_refused(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Sends `req` and reads the answer, at most [`MAX_RESPONSE_BYTES`] of it.
async fn exchange(req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), SouthboundError> {
    read_answer(req.send().await.map_err(transport)?).await
}

async fn read_answer(resp: reqwest::Response) -> Result<(u16, Vec<u8>), SouthboundError> {
    let status = resp.status().as_u16();
    if resp
        .content_length()
        .is_some_and(|l| l as usize > MAX_RESPONSE_BYTES)
    {
        return Err(SouthboundError::TooLarge);
    }
    let bytes = resp.bytes().await.map_err(transport)?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(SouthboundError::TooLarge);
    }
    Ok((status, bytes.to_vec()))
}

/// Splits an all-reports answer `{"usage":[...]}` into the raw text of each report object.
pub fn split_reports(body: Vec<u8>) -> Result<Vec<String>, SouthboundError> {
    #[derive(Deserialize)]
    struct AllReports<'a> {
        #[serde(borrow)]
        usage: Option<Vec<&'a RawValue>>,
    }
    let parsed: Result<AllReports<'_>, _> = serde_json::from_slice(&body);
    match parsed {
        Ok(AllReports { usage: Some(list) }) => {
            Ok(list.into_iter().map(|r| r.get().to_owned()).collect())
        }
        Ok(AllReports { usage: None }) => Err(SouthboundError::Malformed {
            reason: "answer has no \"usage\" array".into(),
            body,
        }),
        Err(e) => Err(SouthboundError::Malformed {
            reason: format!("answer is not valid JSON: {e}"),
            body,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_report_text_exactly() {
        let body =
            br#"{"usage": [ {"payload":"{\"a\": 1}","signature":{"x" : 1}} ,{"payload":"b"}]}"#;
        let r = split_reports(body.to_vec()).unwrap();
        assert_eq!(r[0], r#"{"payload":"{\"a\": 1}","signature":{"x" : 1}}"#);
        assert_eq!(r[1], r#"{"payload":"b"}"#);
    }

    #[test]
    fn busy_devices_are_retried_refusals_are_not() {
        let status = |s| SouthboundError::Status {
            status: s,
            body: String::new(),
        };
        assert!(status(408).is_transient());
        assert!(status(429).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(404).is_transient());
        assert!(!SouthboundError::Unauthorized.is_transient());
        assert!(SouthboundError::Timeout.is_transient());
    }

    #[test]
    fn malformed_answers_keep_their_body() {
        match split_reports(b"{\"usage\": [{\"payload\":".to_vec()) {
            Err(SouthboundError::Malformed { body, .. }) => assert!(!body.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            split_reports(b"{}".to_vec()),
            Err(SouthboundError::Malformed { .. })
        ));
    }
}
