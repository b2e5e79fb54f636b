//! The Catalyst Center calls over a large fleet (the fleet of the scheduler's `compliance`
//! bench), against real Postgres (a fresh database cloned from the migrated template): 500-row
//! device summary pages (first, middle, last) and the license roll-up, called through the HTTP
//! routes in-process (no network), with p50/p99 over repeated calls. Not a test: it prints
//! timings.
//!
//! `cargo bench -p tally-catalyst-api --bench catalyst -- 1000000` (needs TALLY_TEST_NATS_URL,
//! see `scripts/ensure-services`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../renewal-scheduler/benches/fleet/mod.rs"]
mod fleet;

use actix_web::{test, web};
use chrono::Utc;
use std::time::Instant;
use tally_catalyst_api::Catalyst;
use tally_platform::{ApiTokens, catalyst_token::TokenKey};

const TOKEN: &str = "viewer:bench-viewer-token-0123456789";
const SECRET: &str = "bench-secret-key-0123456789";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = fleet::devices_arg();
    let calls = 200;
    tally_platform::init_crypto();
    let db = tally_testkit::TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let s = Catalyst {
        pool,
        bus,
        clock_offset: chrono::TimeDelta::zero(),
    };
    let now = Utc::now();
    let mut c = s.pool.get().await.unwrap();
    let load = fleet::load(&mut c, n, now).await;
    let started = Instant::now();
    let assessed = tally_renewal_scheduler::deadlines::refresh(&mut c, now)
        .await
        .unwrap();
    let refresh = started.elapsed();
    fleet::analyze(&mut c).await;
    println!(
        "{n} devices: loaded in {:.1} s (insert with count triggers); deadline engine over {assessed} \
         devices in {:.1} s",
        load.as_secs_f64(),
        refresh.as_secs_f64()
    );

    let tokens = web::Data::new(ApiTokens::parse(TOKEN).unwrap());
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .app_data(web::Data::new(TokenKey::from_secret(SECRET)))
        .app_data(web::Data::new(s.clone()))
        .configure(tally_catalyst_api::routes)
        .split_for_parts();
    let app = test::init_service(app).await;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "bench:bench-viewer-token-0123456789",
    );
    let req = test::TestRequest::post()
        .uri("/dna/system/api/v1/auth/token")
        .insert_header(("Authorization", format!("Basic {basic}")))
        .to_request();
    let v: serde_json::Value = test::call_and_read_body_json(&app, req).await;
    let dna_token = v["Token"].as_str().unwrap().to_owned();

    let last_page = (n + 499) / 500;
    let page = |p: i64| {
        format!("/dna/intent/api/v1/licenses/device/summary?page_number={p}&order=asc&limit=500")
    };
    // Deep pages and the full-scan roll-up are slow by nature: fewer calls.
    let cases: Vec<(String, String, usize)> = vec![
        ("Catalyst summary page 1 (500 rows)".into(), page(1), calls),
        (
            format!("Catalyst summary page {} (500 rows)", last_page / 2),
            page(last_page / 2),
            20,
        ),
        (
            format!("Catalyst summary page {last_page} (last)"),
            page(last_page),
            20,
        ),
        (
            "Catalyst networkDeviceLicenses/summary".into(),
            "/dna/intent/api/v1/networkDeviceLicenses/summary".into(),
            20,
        ),
    ];
    println!("\n| call | p50 | p99 | max | calls |\n|---|---:|---:|---:|---:|");
    for (name, uri, k) in &cases {
        fleet::time(&app, name, *k, || {
            test::TestRequest::get()
                .uri(uri)
                .insert_header(("X-Auth-Token", dna_token.as_str()))
                .to_request()
        })
        .await;
    }
    println!(
        "\nbench peak RSS: {:.0} MiB",
        tally_platform::metrics::peak_rss_mib()
    );
}
