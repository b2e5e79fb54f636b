//! One way to assemble the HTTP app: `tally serve` and every service's tests call [`api_app`],
//! so a test exercises the same token check, body limits and error shapes production does.

use crate::{ApiTokens, auth::require_token, problem};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, Error, middleware, web};
use utoipa_actix_web::{AppExt, UtoipaApp, scope::Scope};

/// Largest JSON body accepted (a 100,000-device import).
pub const JSON_LIMIT: usize = 16 * 1024 * 1024;

/// An app documented from `doc` (the routes add their paths to it), with the API tokens and
/// problem+json extractor errors. Add [`api_scope`] holding the service routes and each
/// service's data with `app_data`, then `split_for_parts` (the OpenAPI document comes with it):
///
/// ```ignore
/// let (app, api) = api_app(ApiDoc::openapi(), tokens)
///     .service(api_scope().configure(tally_inventory::routes))
///     .app_data(inventory)
///     .split_for_parts();
/// ```
pub fn api_app(
    doc: utoipa::openapi::OpenApi,
    tokens: web::Data<ApiTokens>,
) -> UtoipaApp<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = Error,
        InitError = (),
    >,
> {
    App::new()
        .into_utoipa_app()
        .openapi(doc)
        .app_data(tokens)
        .app_data(problem::json_config(JSON_LIMIT))
        .app_data(problem::query_config())
        .app_data(problem::path_config())
}

/// `/api/v1`, behind the bearer-token check (reads need `viewer`, writes `operator`).
pub fn api_scope() -> Scope<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    utoipa_actix_web::scope("/api/v1").wrap(middleware::from_fn(require_token))
}
