//! Tally's REST API (`/api/v1`) as typed calls with the caller's bearer token: one client for
//! `tally tiers`, `tally demo` and the end-to-end tests.
//!
//! A route is a method ([`routes`]); its answer deserializes into the type the caller names: the
//! CLI names the services' DTOs, the e2e harness `serde_json::Value`. So this crate depends on
//! no service, and the e2e tests, which only drive the binary, build none of them.

mod error;
mod routes;

pub use error::{Error, FieldError, Problem};
pub use reqwest::{Method, StatusCode};
pub use routes::Listing;

use serde::de::DeserializeOwned;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A 2xx answer whose status matters (201 a new job, 200 one an idempotency key already started).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub status: StatusCode,
    pub body: T,
}

/// The REST API of one Tally with one token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The server's URL (`/readyz`, `/metrics`).
    base: String,
    /// `<base>/api/v1`
    api: String,
    token: String,
}

impl Client {
    /// `base_url` is the server's URL or its API root (`.../api/v1`). Waits up to 10 s for a
    /// connection and 300 s for an answer: plans and listings of 100,000 devices take a while.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self> {
        // reqwest is built without a TLS provider: the process picks ring once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(Error::Build)?;
        Ok(Self::with_http(http, base_url, token))
    }

    /// Over an HTTP client of the caller's (other timeouts, a shared pool).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: impl Into<String>) -> Self {
        let url = base_url.trim_end_matches('/');
        let base = url.strip_suffix("/api/v1").unwrap_or(url).to_owned();
        Self {
            http,
            api: format!("{base}/api/v1"),
            base,
            token: token.into(),
        }
    }

    /// The server's URL, without `/api/v1`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `<base>/api/v1`
    pub fn api(&self) -> &str {
        &self.api
    }

    /// The underlying HTTP client, for calls outside Tally's API (the simulators).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to `<api><path>` (`path` may carry a query string) with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token)
    }

    /// Sends `req`; an answer that is not 2xx becomes [`Error::Http`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = req.send().await.map_err(|source| Error::Transport {
            api: self.api.clone(),
            source,
        })?;
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let body = r.text().await.unwrap_or_default();
        Err(Error::http(status, body))
    }

    /// Sends `req` and decodes the JSON answer with its status.
    pub async fn answer<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer<T>> {
        let r = self.send(req).await?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(Error::Read)?;
        let body = serde_json::from_slice(&bytes).map_err(Error::Decode)?;
        Ok(Answer { status, body })
    }

    /// Sends `req` and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        Ok(self.answer(req).await?.body)
    }

    /// Sends `req`; the answer as text (CSV).
    pub async fn text(&self, req: reqwest::RequestBuilder) -> Result<String> {
        self.send(req).await?.text().await.map_err(Error::Read)
    }

    /// Sends `req`; the answer's bytes (bundles).
    pub async fn bytes(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        let b = self.send(req).await?.bytes().await.map_err(Error::Read)?;
        Ok(b.to_vec())
    }

    /// `GET <api><path>`, JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `POST <api><path>` with a JSON body, JSON.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
    ) -> Result<T> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// `POST <api><path>` with a body of `content_type`; the answer's bytes.
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let req = self
            .request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.bytes(req).await
    }

    /// `GET /readyz` answers 2xx (no token needed).
    pub async fn ready(&self) -> bool {
        self.http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// `GET /metrics`: the Prometheus text (no token needed).
    pub async fn metrics(&self) -> Result<String> {
        self.text(self.http.get(format!("{}/metrics", self.base)))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn takes_the_server_url_or_the_api_root() {
        for url in [
            "http://h:8080",
            "http://h:8080/",
            "http://h:8080/api/v1",
            "http://h:8080/api/v1/",
        ] {
            // `new`, not `with_http`: it also picks the TLS provider reqwest needs to build.
            let c = Client::new(url, "t").unwrap();
            assert_eq!(c.base(), "http://h:8080", "{url}");
            assert_eq!(c.api(), "http://h:8080/api/v1", "{url}");
        }
    }
}
