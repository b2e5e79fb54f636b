//! What can go wrong talking to Tally, and what the server said when it refused.

use reqwest::StatusCode;
use serde::Deserialize;

/// A field error of a problem document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document as Tally writes it (`tally_platform::Problem`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// Stable machine code, e.g. `validation-failed`.
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// No answer: refused, timed out, TLS...
    #[error("no answer from {api}: {}", causes(.source))]
    Transport {
        api: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not 2xx.
    #[error("HTTP {status}: {}", excerpt(.body))]
    Http {
        status: StatusCode,
        /// The body as a problem document, when it is one (has a `code`).
        problem: Option<Problem>,
        body: String,
    },
    #[error("reading the answer: {0}")]
    Read(#[source] reqwest::Error),
    #[error("unexpected answer ({0})")]
    Decode(#[source] serde_json::Error),
}

impl Error {
    pub(crate) fn http(status: StatusCode, body: String) -> Self {
        let problem = serde_json::from_str::<Problem>(&body)
            .ok()
            .filter(|p| !p.code.is_empty());
        Error::Http {
            status,
            problem,
            body,
        }
    }

    /// The status of an answer that was not 2xx.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An error and its causes ("error sending request: ... : Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

/// A body short enough for one message.
fn excerpt(body: &str) -> String {
    body.trim().chars().take(2000).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_problem_body_is_kept_with_its_field_errors() {
        let body = r#"{"type":"https://tally.dev/problems/validation-failed","title":"Bad Request",
            "status":400,"detail":"2 problems","code":"validation-failed",
            "errors":[{"field":"row 1","message":"no serial"},{"field":"row 2","message":"x"}]}"#;
        let e = Error::http(StatusCode::BAD_REQUEST, body.into());
        let Error::Http { problem, .. } = &e else {
            panic!("{e:?}")
        };
        let p = problem.as_ref().unwrap();
        assert_eq!(p.code, "validation-failed");
        assert_eq!(p.detail, "2 problems");
        assert_eq!(p.errors[0].field, "row 1");
        assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn other_bodies_are_shown_as_they_came() {
        let e = Error::http(StatusCode::BAD_GATEWAY, " upstream down\n".into());
        assert!(matches!(&e, Error::Http { problem: None, .. }));
        assert_eq!(e.to_string(), "HTTP 502 Bad Gateway: upstream down");
        let e = Error::http(StatusCode::NOT_FOUND, r#"{"message":"no"}"#.into());
        assert!(matches!(&e, Error::Http { problem: None, .. }));
    }
}
