#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bearer-token middleware: who gets in, with which role, and how refusals look.

use actix_web::{App, HttpResponse, http::StatusCode, middleware, test, web};
use tally_platform::{ApiTokens, Caller, auth::require_token};

const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

async fn whoami(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"role": caller.role, "name": caller.name}))
}

macro_rules! app {
    () => {{
        let tokens = ApiTokens::parse(&format!(
            "admin:{ADMIN},operator:{OPERATOR},viewer:{VIEWER}"
        ))
        .unwrap();
        test::init_service(
            App::new().app_data(web::Data::new(tokens)).service(
                web::scope("/api/v1")
                    .wrap(middleware::from_fn(require_token))
                    .route("/thing", web::get().to(whoami))
                    .route("/thing", web::post().to(whoami))
                    .route("/thing", web::delete().to(whoami)),
            ),
        )
        .await
    }};
}

fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

/// Status, content type and parsed body of a response.
async fn parts(
    resp: actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
) -> (StatusCode, String, serde_json::Value) {
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = test::read_body(resp).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, ct, json)
}

/// Middleware refusals come back as `Err(actix_web::Error)`; the server renders them with
/// `error_response`, which is what a client sees.
macro_rules! call {
    ($app:expr, $req:expr $(,)?) => {{
        match test::try_call_service(&$app, $req.to_request()).await {
            Ok(resp) => parts(resp).await,
            Err(e) => {
                let resp = e.error_response();
                let status = resp.status();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
                (
                    status,
                    ct,
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .unwrap_or(serde_json::Value::Null),
                )
            }
        }
    }};
}

#[actix_web::test]
async fn missing_token_is_401_problem() {
    let app = app!();
    let (status, ct, body) = call!(app, test::TestRequest::get().uri("/api/v1/thing"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["code"], "unauthorized", "{body}");
    assert_eq!(body["status"], 401);
}

#[actix_web::test]
async fn non_bearer_scheme_is_401() {
    let app = app!();
    let (status, _, body) = call!(
        app,
        test::TestRequest::get()
            .uri("/api/v1/thing")
            .insert_header(("authorization", format!("Basic {VIEWER}"))),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
}

#[actix_web::test]
async fn wrong_token_is_401() {
    let app = app!();
    let (status, ct, body) = call!(
        app,
        test::TestRequest::get()
            .uri("/api/v1/thing")
            .insert_header(bearer("not-a-token-we-know-of")),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["code"], "unauthorized");
    assert!(
        body["detail"].as_str().unwrap().contains("unknown"),
        "{body}"
    );
}

#[actix_web::test]
async fn viewer_reads_but_cannot_write() {
    let app = app!();
    let (status, _, body) = call!(
        app,
        test::TestRequest::get()
            .uri("/api/v1/thing")
            .insert_header(bearer(VIEWER)),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "viewer");
    assert_eq!(body["name"], "viewer-3");

    for req in [
        test::TestRequest::post().uri("/api/v1/thing"),
        test::TestRequest::delete().uri("/api/v1/thing"),
    ] {
        let (status, ct, body) = call!(app, req.insert_header(bearer(VIEWER)));
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(ct, "application/problem+json");
        assert_eq!(body["code"], "forbidden", "{body}");
        assert_eq!(body["status"], 403);
    }
}

#[actix_web::test]
async fn operator_and_admin_write() {
    let app = app!();
    let (status, _, body) = call!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/thing")
            .insert_header(bearer(OPERATOR)),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "operator");
    // Bearer scheme is case-insensitive and the token is trimmed.
    let (status, _, body) = call!(
        app,
        test::TestRequest::delete()
            .uri("/api/v1/thing")
            .insert_header(("authorization", format!("bearer  {ADMIN} "))),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "admin");
}

#[actix_web::test]
async fn handler_level_role_check() {
    assert!(
        Caller {
            role: tally_platform::Role::Operator,
            name: "op".into()
        }
        .require(tally_platform::Role::Admin)
        .is_err()
    );
    let p = Caller {
        role: tally_platform::Role::Viewer,
        name: "v".into(),
    }
    .require(tally_platform::Role::Operator)
    .unwrap_err();
    assert_eq!(p.status, 403);
    assert_eq!(p.code, "forbidden");
}
