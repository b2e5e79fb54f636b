//! `tally tiers ...`: bulk DNA tier and network license assignment through the REST API
//! (`/api/v1/tiers`), for operators and their scripts.
//!
//! Exit codes: 0 success; 2 the request was refused or invalid (HTTP 4xx, a plan that is not
//! executable, bad flags or files: nothing changed); 1 anything else (network, server, a job
//! that ended partial, failed, rolled back or cancelled).
//!
//! [`args`] is the command line, [`render`] what is printed, [`commands`] the calls on
//! [`tally_client::Client`]; this module turns the client's errors into messages and exit codes.

mod args;
mod commands;
mod render;

pub use args::TiersArgs;

use args::TiersCommand;
use commands::Format;
use std::io::Write;
use tally_client::{Client, Error, Problem, StatusCode};

/// Problem `errors` printed before "... and N more".
const MAX_ERRORS: usize = 50;

/// A failure and its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

pub(crate) fn failed(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

pub(crate) type Res<T> = Result<T, Failure>;

pub async fn run(args: TiersArgs) -> anyhow::Result<()> {
    tally_platform::init_crypto();
    finish(dispatch(args).await)
}

/// Ends a CLI command: on a failure, its message on stderr and its exit code.
pub(crate) fn finish(r: Res<()>) -> anyhow::Result<()> {
    if let Err(f) = r {
        let _ = std::io::stdout().flush();
        eprintln!("{}", f.message);
        std::process::exit(f.code);
    }
    Ok(())
}

async fn dispatch(args: TiersArgs) -> Res<()> {
    let api = connect(&args.url, args.token)?;
    match args.command {
        TiersCommand::Plan(c) => commands::plan(&api, c).await,
        TiersCommand::Apply(c) => commands::apply(&api, c).await,
        TiersCommand::Watch { job_id, json } => commands::watch(&api, job_id, json).await,
        TiersCommand::Jobs { state, limit, json } => commands::jobs(&api, state, limit, json).await,
        TiersCommand::Items {
            job_id,
            state,
            csv,
            json,
        } => commands::items(&api, job_id, state, Format { csv, json }).await,
        TiersCommand::Cancel { job_id } => commands::cancel(&api, job_id).await,
        TiersCommand::Pools { drift, csv, json } => commands::pools(&api, drift, csv, json).await,
        TiersCommand::Sync { json } => commands::sync(&api, json).await,
        TiersCommand::ImportPools {
            file,
            smart_account,
            json,
        } => commands::import_pools(&api, &file, smart_account, json).await,
        TiersCommand::Devices(c) => commands::devices(&api, c).await,
        TiersCommand::History(c) => commands::history(&api, c).await,
        TiersCommand::Rules(c) => commands::rules(&api, c).await,
    }
}

/// The REST API with the caller's token (`url` may be the server's or its API root).
pub(crate) fn connect(url: &str, token: Option<String>) -> Res<Client> {
    let token = token
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| invalid("error: no API token: pass --token or set TALLY_TOKEN"))?;
    Client::new(url, token).map_err(|e| failed(format!("error: {e}")))
}

/// A client error as the operator reads it, `what` naming the step that failed.
pub(crate) trait Doing<T> {
    fn doing(self, what: &str) -> Res<T>;
}

impl<T> Doing<T> for tally_client::Result<T> {
    fn doing(self, what: &str) -> Res<T> {
        self.map_err(|e| failure(what, e))
    }
}

fn failure(what: &str, e: Error) -> Failure {
    let Error::Http {
        status, problem, ..
    } = &e
    else {
        // No answer, an unreadable or unexpected one: worth a retry.
        return failed(format!("error: {what}: {e}"));
    };
    let mut msg = match problem {
        Some(p) => problem_message(what, *status, p),
        None => format!("error: {what}: {e}"),
    };
    match status.as_u16() {
        401 => msg.push_str("\n  hint: check --token / TALLY_TOKEN"),
        403 => msg.push_str(
            "\n  hint: reading needs a viewer token, changes an operator token, rules an admin token",
        ),
        _ => {}
    }
    // 4xx: Tally refused the request and changed nothing (408 and 429 are worth a retry).
    let refused = status.is_client_error() && !matches!(status.as_u16(), 408 | 429);
    Failure {
        code: if refused { 2 } else { 1 },
        message: msg,
    }
}

/// An error answer that is a problem document (RFC 9457): its code, detail and every field error.
fn problem_message(what: &str, status: StatusCode, p: &Problem) -> String {
    let mut m = format!("error: {what}: {} (HTTP {status})", p.code);
    if !p.detail.is_empty() {
        m.push_str(&format!(": {}", p.detail));
    } else if !p.title.is_empty() {
        m.push_str(&format!(": {}", p.title));
    }
    // A single field error is the detail already.
    let repeats =
        matches!(p.errors.as_slice(), [e] if format!("{}: {}", e.field, e.message) == p.detail);
    for e in p.errors.iter().take(MAX_ERRORS).filter(|_| !repeats) {
        m.push_str(&format!("\n  {}: {}", e.field, e.message));
    }
    if p.errors.len() > MAX_ERRORS {
        m.push_str(&format!(
            "\n  ... and {} more (tally tiers plan --json lists every violation)",
            p.errors.len() - MAX_ERRORS
        ));
    }
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tally_client::FieldError;

    fn http(status: u16, problem: Option<Problem>, body: &str) -> Error {
        Error::Http {
            status: StatusCode::from_u16(status).unwrap(),
            problem,
            body: body.into(),
        }
    }

    #[test]
    fn a_refusal_names_its_code_detail_and_field_errors_and_exits_2() {
        let p = Problem {
            code: "plan-refused".into(),
            title: "Conflict".into(),
            detail: "2 devices do not fit".into(),
            errors: vec![
                FieldError {
                    field: "sw-1".into(),
                    message: "pool empty".into(),
                },
                FieldError {
                    field: "sw-2".into(),
                    message: "pool empty".into(),
                },
            ],
        };
        let f = failure("start the job", http(409, Some(p), "{}"));
        assert_eq!(f.code, 2);
        assert_eq!(
            f.message,
            "error: start the job: plan-refused (HTTP 409 Conflict): 2 devices do not fit\n  sw-1: pool empty\n  sw-2: pool empty"
        );
    }

    #[test]
    fn a_single_field_error_is_not_repeated_and_401_hints_at_the_token() {
        let p = Problem {
            code: "unauthorized".into(),
            detail: "token: unknown".into(),
            errors: vec![FieldError {
                field: "token".into(),
                message: "unknown".into(),
            }],
            ..Problem::default()
        };
        let f = failure("list the jobs", http(401, Some(p), "{}"));
        assert_eq!(f.code, 2);
        assert_eq!(
            f.message,
            "error: list the jobs: unauthorized (HTTP 401 Unauthorized): token: unknown\n  hint: check --token / TALLY_TOKEN"
        );
    }

    #[test]
    fn other_answers_show_the_body_and_server_errors_and_throttling_exit_1() {
        let f = failure("sync the pools", http(502, None, "upstream down"));
        assert_eq!(f.code, 1);
        assert_eq!(
            f.message,
            "error: sync the pools: HTTP 502 Bad Gateway: upstream down"
        );
        assert_eq!(failure("x", http(429, None, "")).code, 1);
        assert_eq!(failure("x", http(404, None, "")).code, 2);
    }
}
