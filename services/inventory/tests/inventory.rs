#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Inventory HTTP API against a real database: CRUD, filters, groups, pagination, bulk import
//! (all or nothing) and the DevicesUpserted events written to the outbox; license changes from
//! tier-assignment consumed from a real NATS.

use actix_web::{http::StatusCode, test, web};
use diesel::sql_types::{Bytea, Text};
use diesel_async::RunQueryDsl;
use prost::Message;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tally_bus::proto;
use tally_inventory::Inventory;
use tally_platform::{ApiTokens, SecretBox};
use tally_testkit::{TestDb, count};

const OPERATOR: &str = "operator-token-0123456789";
const SECRET: &str = "test-secret-key-0123456789";

struct Ctx {
    _db: TestDb,
    pool: tally_store::Pool,
    secrets: SecretBox,
}

impl Ctx {
    fn inv(&self) -> Inventory {
        Inventory {
            pool: self.pool.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

async fn ctx() -> Ctx {
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    Ctx {
        _db: db,
        pool,
        secrets: SecretBox::from_secret(SECRET),
    }
}

/// The app as `tally serve` assembles it, with only the inventory routes.
macro_rules! app {
    ($ctx:expr) => {{
        let inv = web::Data::new($ctx.inv());
        let tokens = web::Data::new(ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap());
        let (app, _api) = tally_platform::api_app(Default::default(), tokens)
            .service(tally_platform::api_scope().configure(tally_inventory::routes))
            .app_data(inv)
            .split_for_parts();
        test::init_service(app).await
    }};
}

fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {OPERATOR}"))
}

/// Sends a request; returns status, content type and JSON body (Null when not JSON).
macro_rules! send {
    ($app:expr, $req:expr $(,)?) => {{
        let resp = test::call_service(&$app, $req.insert_header(auth()).to_request()).await;
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = test::read_body(resp).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, ct, v, body)
    }};
}

/// Rows in `table`.
async fn rows(pool: &tally_store::Pool, table: &str) -> i64 {
    count(pool, &format!("SELECT count(*) FROM {table}")).await
}

#[derive(diesel::QueryableByName)]
struct OutRow {
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
}

async fn outbox(pool: &tally_store::Pool) -> Vec<OutRow> {
    let mut c = pool.get().await.unwrap();
    diesel::sql_query("SELECT subject, payload FROM inventory.outbox ORDER BY seq")
        .load(&mut c)
        .await
        .unwrap()
}

/// The fields a problem names, in order.
fn error_fields(p: &Value) -> Vec<&str> {
    p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

/// A device page's total and its serials, in order.
fn page(v: &Value) -> (i64, Vec<String>) {
    (
        v["total"].as_i64().unwrap(),
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["serial"].as_str().unwrap().to_owned())
            .collect(),
    )
}

fn device(serial: &str, site: &str, pid: &str) -> Value {
    json!({
        "udi_pid": pid,
        "serial": serial,
        "hostname": format!("host-{serial}"),
        "base_url": "https://10.0.0.1",
        "site": site,
        "smart_account": "acme.example",
        "virtual_account": "Campus",
        "username": "admin",
        "password": "s3cret-PASSWORD",
        "dna_tier": "dna-advantage"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_and_duplicate() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let (status, _, created, raw) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices")
            .set_json(device("FCW0001", "hq", "C9300-48P"))
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let text = String::from_utf8(raw.to_vec()).unwrap();
    assert!(!text.contains("s3cret-PASSWORD"), "password leaked: {text}");
    assert!(created.get("password").is_none());
    assert!(created.get("password_sealed").is_none());
    assert_eq!(created["serial"], "FCW0001");
    assert_eq!(created["model"], "C9300-48P", "model defaults to udi_pid");
    assert_eq!(created["revision"], 1);
    assert_eq!(created["dna_tier"], "dna-advantage");
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, _, got, raw) = send!(
        app,
        test::TestRequest::get().uri(&format!("/api/v1/devices/{id}"))
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);
    assert!(!String::from_utf8(raw.to_vec()).unwrap().contains("s3cret"));

    // Stored sealed, opens with the key.
    let mut c = ctx.pool.get().await.unwrap();
    let sealed: String = diesel::select(diesel::dsl::sql::<Text>(
        "(SELECT password_sealed FROM inventory.devices)",
    ))
    .get_result(&mut c)
    .await
    .unwrap();
    assert!(!sealed.contains("s3cret"));
    assert_eq!(ctx.secrets.open(&sealed).unwrap(), "s3cret-PASSWORD");

    // Same UDI again: 409, nothing added.
    let (status, ct, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices")
            .set_json(device("FCW0001", "other", "C9300-48P"))
    );
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(p["code"], "duplicate-udi");
    assert!(p["detail"].as_str().unwrap().contains("FCW0001"), "{p}");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 1);
    // One event for the one create; the refused duplicate rolled back its event too.
    let out = outbox(&ctx.pool).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject, "inventory.devices.upserted");
    let ev = proto::DevicesUpserted::decode(out[0].payload.as_slice()).unwrap();
    assert_eq!(ev.devices.len(), 1);
    assert_eq!(ev.devices[0].device_id, id);
    assert_eq!(
        ctx.secrets.open(&ev.devices[0].password_sealed).unwrap(),
        "s3cret-PASSWORD"
    );

    // Unknown id: 404 problem.
    let (status, _, p, _) = send!(
        app,
        test::TestRequest::get().uri(&format!("/api/v1/devices/{}", uuid::Uuid::new_v4()))
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(p["code"], "not-found");
    // Not a uuid: 400 invalid-path.
    let (status, _, p, _) = send!(app, test::TestRequest::get().uri("/api/v1/devices/nope"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(p["code"], "invalid-path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_names_fields() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let mut d = device("", "hq", "C9300-48P");
    d["base_url"] = json!("ftp://x");
    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post().uri("/api/v1/devices").set_json(d)
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["code"], "validation-failed");
    let fields = error_fields(&p);
    assert_eq!(fields, ["serial", "base_url"], "{p}");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let mut items = Vec::new();
    for i in 0..7 {
        items.push(device(&format!("AAA{i:04}"), "hq", "C9300-48P"));
    }
    for i in 0..5 {
        items.push(device(&format!("BBB{i:04}"), "branch", "C9200-24P"));
    }
    for i in 0..3 {
        items.push(device(&format!("CCC{i:04}"), "hq", "C9200-24P"));
    }
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .set_json(Value::Array(items))
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"total": 15, "created": 15, "updated": 0}));

    let (_, _, v, _) = send!(app, test::TestRequest::get().uri("/api/v1/devices?site=hq"));
    let (total, serials) = page(&v);
    assert_eq!(total, 10);
    assert_eq!(serials.len(), 10);
    assert!(serials.iter().all(|s| !s.starts_with("BBB")));

    let (_, _, v, _) = send!(
        app,
        test::TestRequest::get().uri("/api/v1/devices?model=C9200-24P")
    );
    assert_eq!(page(&v).0, 8);

    let (_, _, v, _) = send!(
        app,
        test::TestRequest::get().uri("/api/v1/devices?site=hq&model=C9200-24P")
    );
    let (total, serials) = page(&v);
    assert_eq!(total, 3);
    assert_eq!(serials, ["CCC0000", "CCC0001", "CCC0002"]);

    // Pages of 4, ordered by hostname: together they are every device once.
    let mut seen = Vec::new();
    for offset in [0, 4, 8, 12] {
        let (_, _, v, _) = send!(
            app,
            test::TestRequest::get().uri(&format!("/api/v1/devices?limit=4&offset={offset}"))
        );
        assert_eq!(v["total"], 15);
        assert_eq!(v["limit"], 4);
        assert_eq!(v["offset"], offset);
        seen.extend(page(&v).1);
    }
    assert_eq!(seen.len(), 15);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 15, "pages overlap: {seen:?}");

    let (_, _, v, _) = send!(
        app,
        test::TestRequest::get().uri("/api/v1/devices?q=bbb0003")
    );
    assert_eq!(page(&v), (1, vec!["BBB0003".to_owned()]));

    for (limit, detail) in [
        (0, "limit: 0 is not between 1 and 1000"),
        (1001, "limit: 1001 is not between 1 and 1000"),
    ] {
        let (status, _, p, _) = send!(
            app,
            test::TestRequest::get().uri(&format!("/api/v1/devices?limit={limit}"))
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p["code"], "validation-failed");
        assert_eq!(p["errors"][0]["field"], "limit");
        assert_eq!(p["detail"], detail);
    }
    // A negative offset reads as 0 on this route.
    let (status, _, v, _) = send!(
        app,
        test::TestRequest::get().uri("/api/v1/devices?limit=1&offset=-5")
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["offset"], 0);
    let (status, _, p, _) = send!(app, test::TestRequest::get().uri("/api/v1/devices?limit=x"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(p["code"], "invalid-query");

    // Sites were created on first use, with counts.
    let (_, _, v, _) = send!(app, test::TestRequest::get().uri("/api/v1/sites"));
    assert_eq!(
        v,
        json!([
            {"name": "branch", "description": "", "devices": 5},
            {"name": "hq", "description": "", "devices": 10}
        ])
    );
}

const CSV_HEADER: &str =
    "udi_pid,serial,hostname,base_url,site,smart_account,virtual_account,username,password\n";

fn csv_rows(n: usize, bad: &[usize]) -> String {
    let mut s = String::from(CSV_HEADER);
    for i in 0..n {
        if bad.contains(&i) {
            // Empty serial and a base URL that is not one.
            s.push_str(&format!(
                "C9300-48P,,sw{i},not a url,site{},acme,Campus,admin,pw\n",
                i % 4
            ));
        } else {
            s.push_str(&format!(
                "C9300-48P,FOC{i:07},sw{i},https://10.1.{}.{},site{},acme,Campus,admin,pw{i}\n",
                i / 250,
                i % 250,
                i % 4
            ));
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import_with_a_bad_row_changes_nothing() {
    let ctx = ctx().await;
    let app = app!(ctx);
    // Row index 41 is CSV line 43 (header is line 1).
    let body = csv_rows(100, &[41]);
    let (status, ct, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv"))
            .set_payload(body)
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(p["code"], "validation-failed");
    let fields = error_fields(&p);
    assert_eq!(fields, ["row 43: serial", "row 43: base_url"], "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was changed")
    );
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 0);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 0);
    assert_eq!(rows(&ctx.pool, "inventory.sites").await, 0);

    // The same UDI twice in one file is refused too.
    let mut body = csv_rows(3, &[]);
    body.push_str("C9300-48P,FOC0000001,dup,https://10.9.9.9,x,acme,Campus,admin,pw\n");
    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv; charset=utf-8"))
            .set_payload(body)
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["errors"][0]["field"], "row 5: serial", "{p}");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import_of_2000_rows_and_reimport() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let body = csv_rows(2000, &[]);
    let t = Instant::now();
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv"))
            .set_payload(body.clone())
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"total": 2000, "created": 2000, "updated": 0}));
    eprintln!("import of 2000 rows: {:?}", t.elapsed());
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 2000);
    assert_eq!(rows(&ctx.pool, "inventory.sites").await, 4);

    // One DevicesUpserted per 1000 devices, carrying sealed (never clear) passwords.
    let out = outbox(&ctx.pool).await;
    assert_eq!(out.len(), 2);
    let mut serials = std::collections::HashSet::new();
    for row in &out {
        assert_eq!(row.subject, "inventory.devices.upserted");
        let ev = proto::DevicesUpserted::decode(row.payload.as_slice()).unwrap();
        assert_eq!(ev.devices.len(), 1000);
        for d in &ev.devices {
            assert_eq!(d.revision, 1);
            assert!(d.password_sealed.starts_with("v1:"));
            serials.insert(d.udi_serial.clone());
        }
    }
    assert_eq!(serials.len(), 2000);
    let d0 = proto::DevicesUpserted::decode(out[0].payload.as_slice()).unwrap();
    let sample = d0
        .devices
        .iter()
        .find(|d| d.udi_serial == "FOC0000007")
        .unwrap();
    assert_eq!(ctx.secrets.open(&sample.password_sealed).unwrap(), "pw7");

    // Relay them onto JetStream and consume them back.
    let bus = tally_testkit::bus().await.unwrap();
    let n = tally_bus::relay::relay_once(&bus, &ctx.pool, tally_store::outbox::Schema::Inventory)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(tally_bus::consumer::run(
        bus.clone(),
        "test-inventory",
        &[<proto::DevicesUpserted as tally_bus::Event>::SUBJECT],
        move |d| {
            let tx = tx.clone();
            async move {
                tx.send(d).unwrap();
                Ok(())
            }
        },
    ));
    let mut got = 0;
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("event on the bus")
            .unwrap();
        assert_eq!(d.subject, "inventory.devices.upserted");
        got += proto::DevicesUpserted::decode(d.payload)
            .unwrap()
            .devices
            .len();
    }
    assert_eq!(got, 2000);
    consumer.abort();

    // Re-import: every device updated, none created, revision 2.
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv"))
            .set_payload(body)
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r, json!({"total": 2000, "created": 0, "updated": 2000}));
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 2000);
    assert_eq!(
        count(
            &ctx.pool,
            "SELECT count(*) FROM inventory.devices WHERE revision = 2"
        )
        .await,
        2000
    );
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_problems() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let (status, ct, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices")
            .insert_header(("content-type", "application/json"))
            .set_payload("{\"udi_pid\": \"C9300\", ")
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(p["code"], "invalid-json");

    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices")
            .insert_header(("content-type", "text/plain"))
            .set_payload(device("X1", "hq", "C9300-48P").to_string())
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{p}");
    assert_eq!(p["code"], "unsupported-media-type");

    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "application/xml"))
            .set_payload("<devices/>")
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{p}");
    assert_eq!(p["code"], "unsupported-media-type");

    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "application/json"))
            .set_payload("[{]")
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert_eq!(p["code"], "invalid-json");

    // Unknown JSON field in an import row is named with its row.
    let mut d = device("Z1", "hq", "C9300-48P");
    d["colour"] = json!("red");
    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .set_json(json!([device("Z0", "hq", "C9300-48P"), d]))
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["field"], "row 2");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_filter_and_import() {
    let ctx = ctx().await;
    let app = app!(ctx);
    let mut d = device("GRP0001", "hq", "C9300-48P");
    d["groups"] = json!(["access", "voice"]);
    let (status, _, created, _) = send!(
        app,
        test::TestRequest::post().uri("/api/v1/devices").set_json(d)
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["groups"], json!(["access", "voice"]));
    let id = created["id"].as_str().unwrap().to_owned();
    // Other services learn the groups from the event.
    let out = outbox(&ctx.pool).await;
    let ev = proto::DevicesUpserted::decode(out[0].payload.as_slice()).unwrap();
    assert_eq!(ev.devices[0].groups, ["access", "voice"]);

    // A bad name: 422 naming it, nothing written.
    let mut bad = device("GRP0002", "hq", "C9300-48P");
    bad["groups"] = json!(["wan", "wan 2"]);
    let (status, ct, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices")
            .set_json(bad)
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(error_fields(&p), ["groups[1]"], "{p}");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 1);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 1);

    // JSON import: `groups` as an array, omitted for none.
    let mut items = Vec::new();
    for i in 0..3 {
        let mut d = device(&format!("WAN{i:04}"), "hq", "ISR4331");
        d["groups"] = json!(["wan"]);
        items.push(d);
    }
    for i in 0..2 {
        let mut d = device(&format!("BR{i:04}"), "branch", "C9200-24P");
        d["groups"] = json!(["access", "wan"]);
        items.push(d);
    }
    items.push(device("NONE0001", "branch", "C9200-24P"));
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .set_json(Value::Array(items))
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["created"], 6);

    // CSV import: an optional `groups` column, names separated by `;`.
    let csv = "udi_pid,serial,hostname,base_url,site,smart_account,virtual_account,username,password,groups\n\
               C9200-24P,CSV0001,csv1,https://10.2.0.1,branch,acme,Campus,admin,pw,access;voice\n\
               C9200-24P,CSV0002,csv2,https://10.2.0.2,branch,acme,Campus,admin,pw,\n";
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv"))
            .set_payload(csv)
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["created"], 2);

    // A bad name in a CSV import refuses the whole file, naming row and name.
    let bad_csv = csv
        .replace("CSV000", "BAD000")
        .replace("access;voice", "access;voice/2");
    let (status, _, p, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .insert_header(("content-type", "text/csv"))
            .set_payload(bad_csv)
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(error_fields(&p), ["row 2: groups[1]"], "{p}");
    assert_eq!(rows(&ctx.pool, "inventory.devices").await, 9);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 3);

    // Filter by group, alone and with the other filters (ordered by hostname).
    let list = async |query: &str| {
        let (status, _, v, _) = send!(
            app,
            test::TestRequest::get().uri(&format!("/api/v1/devices?{query}"))
        );
        assert_eq!(status, StatusCode::OK, "{v}");
        page(&v)
    };
    assert_eq!(
        list("group=access").await,
        (
            4,
            ["CSV0001", "BR0000", "BR0001", "GRP0001"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(list("group=access&site=branch").await.0, 3);
    assert_eq!(list("group=wan&model=ISR4331").await.0, 3);
    assert_eq!(list("group=wan").await.0, 5);
    assert_eq!(list("group=voice&q=csv").await.1, ["CSV0001"]);
    assert_eq!(list("group=nope").await.0, 0);

    // Replacing a device replaces its groups.
    let mut d = device("GRP0001", "hq", "C9300-48P");
    d["groups"] = json!(["wan"]);
    let (status, _, v, _) = send!(
        app,
        test::TestRequest::put()
            .uri(&format!("/api/v1/devices/{id}"))
            .set_json(d)
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["groups"], json!(["wan"]));
    assert_eq!(list("group=access").await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn license_changes_are_recorded_once() {
    use tally_bus::{Event, consumer::Delivery, consumer::HandlerError};
    use tally_store::outbox::Schema;
    let ctx = ctx().await;
    let app = app!(ctx);
    let (status, _, r, _) = send!(
        app,
        test::TestRequest::post()
            .uri("/api/v1/devices/import")
            .set_json(json!([
                device("LIC0001", "hq", "C9300-48P"),
                device("LIC0002", "hq", "C9300-48P")
            ]))
    );
    assert_eq!(status, StatusCode::OK, "{r}");
    let (_, _, listed, _) = send!(app, test::TestRequest::get().uri("/api/v1/devices"));
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let mut c = ctx.pool.get().await.unwrap();
    diesel::sql_query("DELETE FROM inventory.outbox")
        .execute(&mut c)
        .await
        .unwrap();

    let lic = |id: &str, nl: &str, dna: &str, va: &str| proto::DeviceLicense {
        device_id: id.to_owned(),
        network_license: nl.to_owned(),
        dna_tier: dna.to_owned(),
        virtual_account: va.to_owned(),
        job_id: "job-1".to_owned(),
    };
    let ev = proto::DeviceLicensesChanged {
        devices: vec![
            // Moved to another virtual account, DNA subscription dropped.
            lic(&ids[0], "network-advantage", "", "Voice"),
            // An empty virtual account keeps the stored one.
            lic(&ids[1], "network-advantage", "dna-premier", ""),
            // Deleted since the job started: skipped.
            lic(
                &uuid::Uuid::new_v4().to_string(),
                "network-advantage",
                "",
                "x",
            ),
        ],
    };
    // Sent the way tier-assignment sends it: its outbox, then the relay.
    let bus = tally_testkit::bus().await.unwrap();
    tally_bus::emit(&mut c, Schema::Tiers, &ev).await.unwrap();
    let n = tally_bus::relay::relay_once(&bus, &ctx.pool, Schema::Tiers)
        .await
        .unwrap();
    assert_eq!(n, 1);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let inv = ctx.inv();
    let consumer = tokio::spawn(tally_bus::consumer::run(
        bus.clone(),
        tally_inventory::DURABLE,
        &[proto::DeviceLicensesChanged::SUBJECT],
        move |d: Delivery| {
            let (inv, tx) = (inv.clone(), tx.clone());
            async move {
                let r = tally_inventory::handle(&inv, d.clone()).await;
                tx.send((d, format!("{r:?}"))).unwrap();
                r
            }
        },
    ));
    let (delivery, result) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("license change on the bus")
        .unwrap();
    consumer.abort();
    assert_eq!(result, "Ok(())");

    let get = async |id: &str| {
        let (status, _, v, _) = send!(
            app,
            test::TestRequest::get().uri(&format!("/api/v1/devices/{id}"))
        );
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    };
    let a = get(&ids[0]).await;
    assert_eq!(
        (
            &a["network_license"],
            &a["dna_tier"],
            &a["virtual_account"],
            &a["revision"]
        ),
        (
            &json!("network-advantage"),
            &Value::Null,
            &json!("Voice"),
            &json!(2)
        )
    );
    let b = get(&ids[1]).await;
    assert_eq!(
        (
            &b["network_license"],
            &b["dna_tier"],
            &b["virtual_account"],
            &b["revision"]
        ),
        (
            &json!("network-advantage"),
            &json!("dna-premier"),
            &json!("Campus"),
            &json!(2)
        )
    );
    // Exactly one DevicesUpserted, carrying both devices as stored now.
    let out = outbox(&ctx.pool).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject, proto::DevicesUpserted::SUBJECT);
    let up = proto::DevicesUpserted::decode(out[0].payload.as_slice()).unwrap();
    let mut got: Vec<_> = up
        .devices
        .iter()
        .map(|d| {
            (
                d.device_id.as_str(),
                d.dna_tier.as_str(),
                d.virtual_account.as_str(),
                d.revision,
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (ids[0].as_str(), "", "Voice", 2),
        (ids[1].as_str(), "dna-premier", "Campus", 2),
    ];
    want.sort();
    assert_eq!(got, want);

    // Redelivered (a crash before the ack): nothing changes.
    tally_inventory::handle(&ctx.inv(), delivery.clone())
        .await
        .unwrap();
    assert_eq!(get(&ids[0]).await["revision"], 2);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 1);

    // A level that is not one can never be applied: poison, nothing written.
    let bad = proto::DeviceLicensesChanged {
        devices: vec![lic(&ids[0], "network-advantage", "dna-gold", "Voice")],
    };
    let r = tally_inventory::handle(
        &ctx.inv(),
        Delivery {
            msg_id: "bad-1".to_owned(),
            subject: delivery.subject.clone(),
            payload: bad.encode_to_vec().into(),
        },
    )
    .await;
    match r {
        Err(HandlerError::Poison(m)) => {
            assert!(m.contains("dna_tier") && m.contains("dna-gold"), "{m}")
        }
        other => panic!("expected poison, got {other:?}"),
    }
    assert_eq!(get(&ids[0]).await["revision"], 2);
    assert_eq!(rows(&ctx.pool, "inventory.outbox").await, 1);
    assert_eq!(rows(&ctx.pool, "inventory.inbox").await, 1);
}
