//! The fleet the compliance benchmarks run over, in the scheduler's fleet copy: 4 smart accounts x
//! 10 virtual accounts, 2,000 sites, 3% CUBE routers, four tiers; last ACKs spread over 120 days,
//! 5% never acked. Shared by this crate's `compliance` bench and catalyst-api's `catalyst` bench
//! (`#[path]`): one fleet, so their figures compare.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::{Duration, Instant};

/// Inserts `n` devices (with the count triggers) and analyzes the table; returns how long the
/// insert took.
pub async fn load(c: &mut AsyncPgConnection, n: i64, now: DateTime<Utc>) -> Duration {
    let started = Instant::now();
    let chunk = 100_000;
    for from in (0..n).step_by(chunk) {
        let to = (from + chunk as i64).min(n) - 1;
        diesel::sql_query(
            "INSERT INTO sched.devices (id, hostname, udi_pid, udi_serial, model, software_version, \
             base_url, site, groups, smart_account, virtual_account, is_cube, network_license, \
             dna_tier, revision, first_seen_at, last_upload_at, last_ack_at) \
             SELECT gen_random_uuid(), 'dev-' || lpad(i::text, 7, '0'), \
             CASE WHEN i % 33 = 0 THEN 'ISR4331/K9' ELSE 'C9300-48P' END, 'FCW' || i, \
             CASE WHEN i % 33 = 0 THEN 'ISR4331' ELSE 'C9300-48P' END, '17.12.4', \
             'https://10.' || (i / 65536) % 256 || '.' || (i / 256) % 256 || '.' || i % 256, \
             'site-' || lpad((i % 2000)::text, 4, '0'), ARRAY['access'], 'sa-' || i % 4, \
             'va-' || (i / 4) % 10, i % 33 = 0, 'network-advantage', \
             (ARRAY[NULL, 'dna-essentials', 'dna-advantage', 'dna-premier'])[1 + i % 4], 1, \
             $3 - interval '200 days', \
             CASE WHEN i % 20 = 0 THEN NULL ELSE $3 - (i % 120) * interval '1 day' - (i % 1440) * interval '1 minute' END, \
             CASE WHEN i % 20 = 0 THEN NULL ELSE $3 - (i % 120) * interval '1 day' - (i % 1440) * interval '1 minute' END \
             FROM generate_series($1::int8, $2::int8) AS i",
        )
        .bind::<diesel::sql_types::BigInt, _>(from)
        .bind::<diesel::sql_types::BigInt, _>(to)
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .execute(c)
        .await
        .unwrap();
    }
    let took = started.elapsed();
    analyze(c).await;
    took
}

pub async fn analyze(c: &mut AsyncPgConnection) {
    diesel::sql_query("VACUUM ANALYZE sched.devices")
        .execute(c)
        .await
        .unwrap();
}

/// The `n` of `cargo bench ... -- <n>` (1,000,000 without one).
pub fn devices_arg() -> i64 {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000)
}

/// The `p` percentile of sorted timings, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Sends `req()` `k + 1` times to `app` (the first call warms caches and is not counted) and
/// prints a table row: p50, p99, max.
pub async fn time<S, R, B, E>(app: &S, name: &str, k: usize, req: impl Fn() -> R)
where
    S: actix_web::dev::Service<R, Response = actix_web::dev::ServiceResponse<B>, Error = E>,
    E: std::fmt::Debug,
    B: actix_web::body::MessageBody,
{
    use actix_web::test;
    let mut times = Vec::with_capacity(k);
    for i in 0..=k {
        let req = req();
        let t = Instant::now();
        let resp = test::call_service(app, req).await;
        let status = resp.status();
        let uri = resp.request().uri().to_string();
        let body = test::read_body(resp).await;
        let took = t.elapsed();
        assert!(
            status.is_success(),
            "{uri}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        if i > 0 {
            times.push(took);
        }
    }
    times.sort();
    println!(
        "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0),
        times.len()
    );
}
