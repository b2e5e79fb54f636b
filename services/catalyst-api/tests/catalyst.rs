#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Catalyst Center-compatible licensing API: its token auth, the reads over the scheduler's
//! fleet copy (through the scheduler's store), and transfer tasks (outbox event out,
//! TransferAccepted back).

use actix_web::{test, web};
use base64::Engine;
use diesel::sql_types::{Bytea, Text};
use diesel_async::RunQueryDsl;
use prost::Message;
use serde_json::{Value, json};
use std::sync::Arc;
use tally_bus::proto;
use tally_catalyst_api::{Catalyst, transfer_accepted};
use tally_platform::{ApiTokens, auth::Role, catalyst_token::TokenKey};
use tally_renewal_scheduler::{Config, Scheduler};
use tally_testkit::TestDb;

const SECRET: &str = "catalyst-test-secret-key";
const ADMIN: &str = "admin-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

async fn catalyst() -> (TestDb, Catalyst) {
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let s = Catalyst {
        pool,
        bus,
        clock_offset: chrono::TimeDelta::zero(),
    };
    (db, s)
}

/// The scheduler on the same database, for what it writes that the adapter reads (pools).
fn scheduler(s: &Catalyst) -> Scheduler {
    Scheduler {
        pool: s.pool.clone(),
        bus: s.bus.clone(),
        cfg: Arc::new(Config::default()),
        webhooks: None,
    }
}

/// Seven devices: sw-0..4 in VA "campus" (switches), rtr-5..6 in VA "wan" (routers), SA "acme".
async fn seed(s: &Catalyst) {
    let mut c = s.pool.get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO sched.devices (id, hostname, udi_pid, udi_serial, model, software_version, \
         base_url, site, groups, smart_account, virtual_account, is_cube, network_license, \
         dna_tier, revision) \
         SELECT ('00000000-0000-0000-0000-00000000000' || i)::uuid, \
         CASE WHEN i < 5 THEN 'sw-' ELSE 'rtr-' END || i, \
         CASE WHEN i < 5 THEN 'C9300-24P' ELSE 'ISR4331/K9' END, 'FCW' || i, \
         CASE WHEN i < 5 THEN 'C9300-24P' ELSE 'ISR4331' END, '17.12.4', \
         'https://10.0.0.' || i || ':443', 'HQ', ARRAY['floor-' || i], 'acme', \
         CASE WHEN i < 5 THEN 'campus' ELSE 'wan' END, i >= 5, 'network-advantage', \
         CASE WHEN i % 2 = 0 THEN 'dna-advantage' ELSE 'dna-essentials' END, 1 \
         FROM generate_series(0, 6) AS i",
    )
    .execute(&mut c)
    .await
    .unwrap();
}

/// The Catalyst routes on an app with these API tokens, as `tally serve` mounts them: at the
/// root of the app `api_app` builds, beside (not in) the bearer-checked `/api/v1` scope.
macro_rules! app_with {
    ($s:expr, $tokens:expr) => {{
        let tokens = web::Data::new(ApiTokens::parse($tokens).unwrap());
        let (app, _api) = tally_platform::api_app(Default::default(), tokens)
            .app_data(web::Data::new(TokenKey::from_secret(SECRET)))
            .app_data(web::Data::new($s.clone()))
            .configure(tally_catalyst_api::routes)
            .split_for_parts();
        test::init_service(app).await
    }};
}

macro_rules! app {
    ($s:expr) => {
        app_with!($s, &format!("admin:{ADMIN},viewer:{VIEWER}"))
    };
}

fn basic(user: &str, pass: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {b}")
}

macro_rules! token {
    ($app:expr, $pass:expr) => {{
        let req = test::TestRequest::post()
            .uri("/dna/system/api/v1/auth/token")
            .insert_header(("Authorization", basic("ops", $pass)))
            .to_request();
        let resp = test::call_service($app, req).await;
        assert_eq!(resp.status(), 200);
        let v: Value = test::read_body_json(resp).await;
        v["Token"].as_str().unwrap().to_owned()
    }};
}

macro_rules! get {
    ($app:expr, $tok:expr, $uri:expr $(,)?) => {{
        let req = test::TestRequest::get()
            .uri(&$uri)
            .insert_header(("X-Auth-Token", $tok.to_string()))
            .to_request();
        let resp = test::call_service($app, req).await;
        let status = resp.status().as_u16();
        let body = test::read_body(resp).await;
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refuses_missing_bad_expired_and_forged_tokens() {
    let (_db, s) = catalyst().await;
    let app = app!(s);
    const COUNT: &str = "/dna/intent/api/v1/licenses/device/count";
    // No token.
    let resp = test::call_service(&app, test::TestRequest::get().uri(COUNT).to_request()).await;
    assert_eq!(resp.status(), 401);
    // A password that is not one of Tally's API tokens, and no credentials at all.
    for auth in [Some(basic("ops", "not-a-token-at-all")), None] {
        let mut req = test::TestRequest::post().uri("/dna/system/api/v1/auth/token");
        if let Some(a) = auth {
            req = req.insert_header(("Authorization", a));
        }
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status(), 401);
    }
    // Expired, signed with another key, and tampered tokens.
    let key = TokenKey::from_secret(SECRET);
    let tokens = ApiTokens::parse(&format!("admin:{ADMIN},viewer:{VIEWER}")).unwrap();
    let tok = tokens.fingerprint_of(ADMIN).unwrap();
    let expired = key.issue(
        Role::Admin,
        "admin-1",
        &tok,
        chrono::Utc::now().timestamp() - 1,
    );
    let foreign = TokenKey::from_secret("some-other-secret-key").issue(
        Role::Admin,
        "admin-1",
        &tok,
        chrono::Utc::now().timestamp() + 600,
    );
    // Signed with the right key and fresh, but for an API token that is not configured.
    let orphan = key.issue(
        Role::Admin,
        "admin-1",
        "0000000000000000",
        chrono::Utc::now().timestamp() + 600,
    );
    let good = token!(&app, ADMIN);
    let tampered = format!("x{good}");
    for bad in [expired, foreign, orphan, tampered, "garbage".to_owned()] {
        assert_eq!(get!(&app, &bad, COUNT).0, 401, "{bad}");
    }
    let (status, body) = get!(&app, &good, COUNT);
    assert_eq!(
        (status, body),
        (200, json!({"response": 0, "version": "1.0"}))
    );
    // A viewer's token reads but may not start tasks.
    let viewer = token!(&app, VIEWER);
    assert_eq!(get!(&app, &viewer, COUNT).0, 200);
    let req = test::TestRequest::post()
        .uri("/dna/intent/api/v1/licenses/smartAccount/acme/virtualAccount/wan/device/transfer")
        .insert_header(("X-Auth-Token", viewer.as_str()))
        .set_json(json!({"device_uuids": ["00000000-0000-0000-0000-000000000001"]}))
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 403);
    // Without the admin API token (a restart with another TALLY_API_TOKENS), tokens issued
    // against it stop working at once; the viewer's still work.
    let after = app_with!(s, &format!("viewer:{VIEWER}"));
    let (status, body) = get!(&after, &good, COUNT);
    assert_eq!(status, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no longer configured"),
        "{body}"
    );
    assert_eq!(get!(&after, &viewer, COUNT).0, 200);
    // The admin's API token reconfigured as a viewer's: its X-Auth-Token reads, starts nothing.
    let lowered = app_with!(s, &format!("viewer:{ADMIN}"));
    assert_eq!(get!(&lowered, &good, COUNT).0, 200);
    let req = test::TestRequest::post()
        .uri("/dna/intent/api/v1/licenses/smartAccount/acme/virtualAccount/wan/device/transfer")
        .insert_header(("X-Auth-Token", good.as_str()))
        .set_json(json!({"device_uuids": ["00000000-0000-0000-0000-000000000001"]}))
        .to_request();
    assert_eq!(test::call_service(&lowered, req).await.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_pages_filters_and_refuses_bad_parameters() {
    let (_db, s) = catalyst().await;
    seed(&s).await;
    let app = app!(s);
    let tok = token!(&app, VIEWER);
    const SUMMARY: &str = "/dna/intent/api/v1/licenses/device/summary";
    let mut names = Vec::new();
    for page in 1..=3 {
        let (status, body) = get!(
            &app,
            &tok,
            &format!("{SUMMARY}?page_number={page}&order=asc&limit=3"),
        );
        assert_eq!(status, 200, "{body}");
        let items = body["response"].as_array().unwrap();
        assert_eq!(items.len(), if page < 3 { 3 } else { 1 });
        names.extend(
            items
                .iter()
                .map(|i| i["device_name"].as_str().unwrap().to_owned()),
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 7);
    // One item in full: the fields and types Catalyst Center's SDKs read.
    let (_, body) = get!(
        &app,
        &tok,
        &format!("{SUMMARY}?page_number=1&order=desc&limit=1"),
    );
    let item = &body["response"][0];
    assert_eq!(item["device_name"], "sw-4");
    assert_eq!(item["device_uuid"], "00000000-0000-0000-0000-000000000004");
    assert_eq!(item["device_type"], "Switches and Hubs");
    assert_eq!(item["ip_address"], "10.0.0.4");
    assert_eq!(item["dna_level"], "Advantage");
    assert_eq!(item["network_license"], "Advantage");
    assert_eq!(item["virtual_account_name"], "campus");
    assert_eq!(item["smart_account_name"], "acme");
    assert_eq!(item["registration_status"], "Unregistered");
    assert_eq!(item["is_license_expired"], false);
    assert_eq!(item["customer_tag1"], "floor-4");
    for f in [
        "model",
        "site",
        "software_version",
        "license_mode",
        "authorization_status",
        "reservation_status",
        "last_updated_time",
        "last_successful_rum_usage_upload_time",
        "customer_tag2",
        "customer_tag3",
        "customer_tag4",
    ] {
        assert!(item[f].is_string(), "{f}: {item}");
    }
    // Filters.
    let (_, body) = get!(
        &app,
        &tok,
        &format!(
            "{SUMMARY}?page_number=1&order=asc&limit=500&virtual_account_name=wan&dna_level=Advantage"
        ),
    );
    let names: Vec<&str> = body["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["device_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rtr-6"]);
    // Bad parameters name the parameter.
    for (q, param) in [
        ("page_number=1&order=asc&limit=0", "limit"),
        ("page_number=1&order=asc&limit=501", "limit"),
        ("page_number=1&order=asc", "limit"),
        ("page_number=0&order=asc&limit=10", "page_number"),
        ("page_number=1&order=up&limit=10", "order"),
        ("page_number=1&limit=10", "order"),
        (
            "page_number=1&order=asc&limit=10&device_uuid=nope",
            "device_uuid",
        ),
        (
            "page_number=1&order=asc&limit=10&sort_by=password",
            "sort_by",
        ),
    ] {
        let (status, body) = get!(&app, &tok, &format!("{SUMMARY}?{q}"));
        assert_eq!(status, 400, "{q}");
        assert!(
            body["detail"].as_str().unwrap().starts_with(param),
            "{q}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_details_accounts_and_rollup() {
    let (_db, s) = catalyst().await;
    seed(&s).await;
    let app = app!(s);
    let tok = token!(&app, VIEWER);
    const I: &str = "/dna/intent/api/v1";
    for (q, n) in [
        ("", 7),
        ("?device_type=Routers", 2),
        ("?device_type=Switches%20and%20Hubs&dna_level=Essentials", 2),
        ("?virtual_account_name=campus&smart_account_id=acme", 5),
        ("?smart_account_id=other", 0),
        ("?registration_status=Registered", 0),
    ] {
        let (status, body) = get!(&app, &tok, &format!("{I}/licenses/device/count{q}"));
        assert_eq!((status, body["response"].as_i64()), (200, Some(n)), "{q}");
    }
    let (status, d) = get!(
        &app,
        &tok,
        &format!("{I}/licenses/device/00000000-0000-0000-0000-000000000005/details"),
    );
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["udi"], "PID:ISR4331/K9,SN:FCW5");
    assert_eq!(d["device_type"], "Routers");
    assert_eq!(
        d["feature_license"],
        json!(["network-advantage", "dna-essentials"])
    );
    for unknown in ["00000000-0000-0000-0000-0000000000ff", "not-a-uuid"] {
        let (status, _) = get!(
            &app,
            &tok,
            &format!("{I}/licenses/device/{unknown}/details"),
        );
        assert_eq!(status, 404, "{unknown}");
    }
    let (_, sa) = get!(&app, &tok, &format!("{I}/licenses/smartAccounts"));
    assert_eq!(
        sa["response"],
        json!([{"name": "acme", "id": "acme", "domain": "acme", "is_active_smart_account": true}])
    );
    let (_, va) = get!(
        &app,
        &tok,
        &format!("{I}/licenses/smartAccount/acme/virtualAccounts"),
    );
    assert_eq!(va["smart_account_id"], "acme");
    assert_eq!(
        va["virtual_account_details"],
        json!([
            {"virtual_account_id": "campus", "virtual_account_name": "campus"},
            {"virtual_account_id": "wan", "virtual_account_name": "wan"},
        ])
    );
    let (status, _) = get!(
        &app,
        &tok,
        &format!("{I}/licenses/smartAccount/nope/virtualAccounts"),
    );
    assert_eq!(status, 404);
    let (_, sum) = get!(&app, &tok, &format!("{I}/networkDeviceLicenses/summary"));
    let r = &sum["response"];
    assert_eq!(r["totalDeviceCount"], 7);
    assert_eq!(r["dnaAdvantageCount"], 4);
    assert_eq!(r["dnaEssentialsCount"], 3);
    assert_eq!(r["networkAdvantageCount"], 7);
    assert_eq!(r["unregisteredNetworkDeviceCount"], 7);
}

#[derive(diesel::QueryableByName)]
struct Out {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_is_a_task_that_tier_assignment_completes() {
    let (_db, s) = catalyst().await;
    seed(&s).await;
    let app = app!(s);
    let tok = token!(&app, ADMIN);
    const URI: &str =
        "/dna/intent/api/v1/licenses/smartAccount/acme/virtualAccount/wan/device/transfer";
    let post = |body: Value| {
        test::TestRequest::post()
            .uri(URI)
            .insert_header(("X-Auth-Token", tok.as_str()))
            .set_json(body)
            .to_request()
    };
    // Devices must exist in that smart account.
    let resp = test::call_service(
        &app,
        post(json!({"device_uuids": ["00000000-0000-0000-0000-0000000000ff"]})),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = test::call_service(&app, post(json!({"device_uuids": []}))).await;
    assert_eq!(resp.status(), 400);
    let ids = [
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
    ];
    let resp = test::call_service(&app, post(json!({"device_uuids": ids}))).await;
    assert_eq!(resp.status(), 202);
    let v: Value = test::read_body_json(resp).await;
    let task = v["response"]["taskId"].as_str().unwrap().to_owned();
    assert_eq!(
        v["response"]["url"],
        format!("/dna/intent/api/v1/task/{task}")
    );
    // The event is in the outbox, written with the task.
    let mut c = s.pool.get().await.unwrap();
    let out: Vec<Out> = diesel::sql_query("SELECT subject, payload FROM sched.outbox")
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject, "sched.transfer.requested");
    let ev = proto::TransferRequested::decode(out[0].payload.as_slice()).unwrap();
    assert_eq!(ev.task_id, task);
    assert_eq!(ev.device_ids, ids);
    assert_eq!(
        (ev.smart_account.as_str(), ev.virtual_account.as_str()),
        ("acme", "wan")
    );
    assert_eq!(ev.requested_by, "admin-1");
    let task_uri = format!("/dna/intent/api/v1/task/{task}");
    let (_, t) = get!(&app, &tok, &task_uri);
    assert_eq!(t["response"]["isError"], false);
    assert!(t["response"].get("endTime").is_none(), "{t}");
    // tier-assignment's answer ends it; a redelivery changes nothing.
    let job = uuid::Uuid::new_v4().to_string();
    let accepted = proto::TransferAccepted {
        task_id: task.clone(),
        job_id: job.clone(),
        error: String::new(),
        devices: 2,
    };
    transfer_accepted(&s, "msg-1", accepted.clone())
        .await
        .unwrap();
    transfer_accepted(&s, "msg-1", accepted).await.unwrap();
    let (_, t) = get!(&app, &tok, &task_uri);
    let r = &t["response"];
    assert_eq!(r["isError"], false);
    assert!(r["progress"].as_str().unwrap().contains(&job), "{t}");
    assert!(r["endTime"].as_i64().unwrap() >= r["startTime"].as_i64().unwrap());
    assert!(r.get("failureReason").is_none());
    // A refused transfer ends the task in error, with the reason.
    let resp = test::call_service(&app, post(json!({"device_uuids": [ids[0]]}))).await;
    let v: Value = test::read_body_json(resp).await;
    let task2 = v["response"]["taskId"].as_str().unwrap().to_owned();
    transfer_accepted(
        &s,
        "msg-2",
        proto::TransferAccepted {
            task_id: task2.clone(),
            job_id: String::new(),
            error: "no pool for dna-advantage in wan".into(),
            devices: 0,
        },
    )
    .await
    .unwrap();
    let (_, t) = get!(&app, &tok, &format!("/dna/intent/api/v1/task/{task2}"));
    assert_eq!(t["response"]["isError"], true);
    assert_eq!(
        t["response"]["failureReason"],
        "no pool for dna-advantage in wan"
    );
    // Register moves devices into the virtual account, within their own smart account, as a
    // task like a transfer (the path names no smart account).
    let put = |uri: &str, body: Value| {
        test::TestRequest::put()
            .uri(uri)
            .insert_header(("X-Auth-Token", tok.as_str()))
            .set_json(body)
            .to_request()
    };
    const REGISTER: &str = "/dna/intent/api/v1/licenses/smartAccount/virtualAccount/wan/register";
    let resp = test::call_service(&app, put(REGISTER, json!({"device_uuids": [ids[0]]}))).await;
    assert_eq!(resp.status(), 202);
    let v: Value = test::read_body_json(resp).await;
    let task3 = v["response"]["taskId"].as_str().unwrap().to_owned();
    let out: Vec<Out> =
        diesel::sql_query("SELECT subject, payload FROM sched.outbox ORDER BY seq DESC LIMIT 1")
            .load(&mut c)
            .await
            .unwrap();
    let ev = proto::TransferRequested::decode(out[0].payload.as_slice()).unwrap();
    assert_eq!(
        (
            ev.task_id.as_str(),
            ev.smart_account.as_str(),
            ev.virtual_account.as_str()
        ),
        (task3.as_str(), "acme", "wan")
    );
    let (_, t) = get!(&app, &tok, &format!("/dna/intent/api/v1/task/{task3}"));
    assert_eq!(t["response"]["isError"], false, "{t}");
    assert!(
        t["response"]["progress"]
            .as_str()
            .unwrap()
            .starts_with("Registration of 1")
    );
    // Unknown devices are refused by name of the field.
    let resp = test::call_service(
        &app,
        put(
            REGISTER,
            json!({"device_uuids": ["00000000-0000-0000-0000-0000000000ff"]}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 400);
    // Deregister is answered with a task that failed at once, saying what to do instead.
    let req = put(
        "/dna/intent/api/v1/licenses/smartAccount/virtualAccount/deregister",
        json!({"device_uuids": [ids[0]]}),
    );
    let v: Value = test::read_body_json(test::call_service(&app, req).await).await;
    let (_, t) = get!(
        &app,
        &tok,
        &format!(
            "/dna/intent/api/v1/task/{}",
            v["response"]["taskId"].as_str().unwrap()
        ),
    );
    assert_eq!(t["response"]["isError"], true);
    assert!(
        t["response"]["failureReason"]
            .as_str()
            .unwrap()
            .contains("DELETE /api/v1/devices")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_and_usage_come_from_the_synced_pools() {
    use tally_bus::proto::{Pool, PoolTerm, PoolsSynced};
    let (_db, s) = catalyst().await;
    seed(&s).await;
    let now = chrono::Utc::now();
    let day = |d: i64| {
        (now + chrono::TimeDelta::days(d))
            .format("%Y-%m-%d")
            .to_string()
    };
    let term = |id: &str, q: i64, end: String| PoolTerm {
        subscription_id: id.into(),
        license_type: "TERM".into(),
        quantity: q,
        start_date: day(-700),
        end_date: end,
    };
    let pool = |license: &str, level: &str, models: &[&str], q: i64, held: i64, terms| Pool {
        virtual_account: "campus".into(),
        license: license.into(),
        level: level.into(),
        quantity: q,
        cssm_in_use: held.min(q),
        held,
        terms,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
    };
    // campus: sw-0, 2, 4 on DNA Advantage, sw-1, 3 on DNA Essentials (one bought: overcommitted).
    tally_renewal_scheduler::pools::synced(
        &scheduler(&s),
        "pools-1",
        PoolsSynced {
            smart_account: "acme".into(),
            synced_at_ms: now.timestamp_millis(),
            pools: vec![
                pool(
                    "C9300 DNA Advantage, 24-port, 3Y",
                    "dna-advantage",
                    &["C9300-24*"],
                    5,
                    3,
                    vec![term("Sub-A", 3, day(20)), term("Sub-B", 2, day(400))],
                ),
                pool(
                    "C9300 DNA Essentials, 24-port, 3Y",
                    "dna-essentials",
                    &["C9300-24*"],
                    1,
                    2,
                    vec![term("Sub-C", 1, day(-1))],
                ),
                pool(
                    "Network Advantage",
                    "network-advantage",
                    &["C9300-24*"],
                    10,
                    5,
                    vec![],
                ),
            ],
        },
    )
    .await
    .unwrap();
    let app = app!(s);
    let tok = token!(&app, VIEWER);
    const I: &str = "/dna/intent/api/v1";
    let (status, body) = get!(
        &app,
        &tok,
        format!("{I}/licenses/term/smartAccount/acme/virtualAccount/campus?device_type=switch"),
    );
    assert_eq!(status, 200, "{body}");
    let lines = body["license_details"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(
        lines[0],
        json!({
            "model": "C9300-24", "virtual_account_name": "campus",
            "license_term_start_date": day(-700), "license_term_end_date": day(-1),
            "dna_level": "Essentials", "purchased_dna_license_count": "1",
            "is_license_expired": "true",
        })
    );
    assert_eq!(lines[1]["license_term_end_date"], day(20));
    assert_eq!(lines[1]["is_license_expired"], "false");
    // Routers have no DNA terms in campus; an unknown type is refused by name.
    let (_, body) = get!(
        &app,
        &tok,
        format!("{I}/licenses/term/smartAccount/acme/virtualAccount/campus?device_type=router"),
    );
    assert_eq!(body["license_details"], json!([]));
    let (status, body) = get!(
        &app,
        &tok,
        format!("{I}/licenses/term/smartAccount/acme/virtualAccount/campus?device_type=toaster"),
    );
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("device_type"),
        "{body}"
    );
    let (status, body) = get!(
        &app,
        &tok,
        format!("{I}/licenses/usage/smartAccount/acme/virtualAccount/campus?device_type=switch"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "purchased_dna_license": {"total_license_count": 6, "license_count_by_type": [
                {"license_type": "Advantage", "license_count": 5},
                {"license_type": "Essentials", "license_count": 1}]},
            "purchased_network_license": {"total_license_count": 10, "license_count_by_type": [
                {"license_type": "Advantage", "license_count": 10}]},
            "used_dna_license": {"total_license_count": 5, "license_count_by_type": [
                {"license_type": "Advantage", "license_count": 3},
                {"license_type": "Essentials", "license_count": 2}]},
            "used_network_license": {"total_license_count": 5, "license_count_by_type": [
                {"license_type": "Advantage", "license_count": 5}]},
        })
    );
    let (status, _) = get!(
        &app,
        &tok,
        format!("{I}/licenses/usage/smartAccount/acme/virtualAccount/nope?device_type=switch"),
    );
    assert_eq!(status, 404);
    // The roll-up counts the two devices on the overcommitted pool and the terms' licenses.
    let (_, sum) = get!(&app, &tok, format!("{I}/networkDeviceLicenses/summary"));
    let r = &sum["response"];
    assert_eq!(r["outOfComplianceNetworkDeviceCount"], 2, "{sum}");
    assert_eq!(r["expiredLicensesCount"], 1);
    assert_eq!(r["expiringLicensesCount"], 3);
    let (_, page) = get!(
        &app,
        &tok,
        format!("{I}/licenses/device/summary?page_number=1&order=asc&limit=10"),
    );
    let sw1 = page["response"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_name"] == "sw-1")
        .unwrap();
    assert_eq!(sw1["authorization_status"], "OUT_OF_COMPLIANCE");
}
