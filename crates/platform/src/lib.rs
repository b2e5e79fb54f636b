//! What every service needs at its edges: HTTP errors as `application/problem+json`, bearer-token
//! auth with roles (and the Catalyst Center API's `X-Auth-Token` derived from it), secrets
//! sealing, health and metrics, logging and TLS provider setup.

pub mod app;
pub mod auth;
pub mod catalyst_token;
pub mod csv_body;
pub mod metrics;
pub mod page;
pub mod problem;
pub mod secret;

pub use app::{api_app, api_scope};
pub use auth::{ApiTokens, Caller, Role};
pub use page::{Page, PageRules};
pub use problem::{FieldError, Problem};
pub use secret::SecretBox;

// Every binary that links the platform (the `tally` binary, the benches, the tests) allocates
// with mimalloc: planning a 100,000-device tier job spent most of its time in glibc's malloc and
// free, and mimalloc cut the dry-run by 22 % and the commit by 25 % (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs rustls' ring provider once per process (reqwest is built without a provider of its own).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// JSON logs (or human-readable with `TALLY_LOG_FORMAT=text`), level from `RUST_LOG`, else
/// `default_level`.
pub fn init_logging(default_level: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let text = std::env::var("TALLY_LOG_FORMAT").is_ok_and(|v| v == "text");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if text {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
