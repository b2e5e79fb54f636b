#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Device policy and read-back over RESTCONF against an in-process fleet and a real database:
//! an ACK is confirmed only when the device's last ACK received moved; a device that answers
//! SUCCESS but does not move fails with that reason; a device without RESTCONF is delivered but
//! unconfirmed; collection stores each device's own policy with its source and time, and a
//! device without RESTCONF is still collected, its policy assumed with the reason.

mod common;

use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_bus::proto;
use tally_domain::sign::Signer;
use tally_platform::SecretBox;
use tally_rum_aggregator::{Aggregator, Config, collect, import};
use tally_sim::ack::{AckBody, build_ack_document_with_policy};
use tally_sim::fleet::{FleetConfig, FleetState};
use tally_sim::yang_state::SimPolicy;
use tally_testkit::{TestDb, fixtures};
use uuid::Uuid;

struct Ctx {
    _db: TestDb,
    agg: Aggregator,
    fleet: Arc<FleetState>,
    _fleet_handle: actix_web::dev::ServerHandle,
    ids: Vec<Uuid>,
}

async fn setup(devices: usize) -> Ctx {
    tally_platform::init_crypto();
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let bus = tally_testkit::bus().await.unwrap();
    let (_addr, handle, fleet) = tally_sim::start_fleet(FleetConfig {
        devices,
        seed: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let agg = Aggregator::new(
        pool,
        bus,
        SecretBox::from_secret("test-secret-key-0123456789"),
        Config {
            concurrency: 8,
            workers: 1,
            slice: 8,
            device_timeout: Duration::from_secs(2),
            device_retries: 0,
        },
    )
    .unwrap();
    let ids: Vec<Uuid> = (0..devices).map(|_| Uuid::now_v7()).collect();
    let mut list = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        list.push(common::device(&fleet, i, *id, &agg.secrets));
    }
    fixtures::publish_devices(&agg.bus, list).await.unwrap();
    tally_testkit::consume_until(
        tally_rum_aggregator::router(agg.clone())
            .run(agg.bus.clone(), tally_rum_aggregator::DURABLE),
        &agg.pool,
        "SELECT count(*) FROM rum.devices",
        devices as i64,
    )
    .await;
    Ctx {
        _db: db,
        agg,
        fleet,
        _fleet_handle: handle,
        ids,
    }
}

/// Closes device `i`'s reports and returns a CSSM-signed ACK for them.
fn ack_for(fleet: &FleetState, id: Uuid, i: usize, cycle: Uuid) -> proto::DeviceAck {
    ack_with_policy(fleet, id, i, cycle, None)
}

/// [`ack_for`], with `policy` sent along as CSSM can send one.
fn ack_with_policy(
    fleet: &FleetState,
    id: Uuid,
    i: usize,
    cycle: Uuid,
    policy: Option<SimPolicy>,
) -> proto::DeviceAck {
    fleet.close_reports(i).unwrap();
    let report_ids: Vec<u64> = fleet
        .unacked_reports(i)
        .unwrap()
        .iter()
        .map(|t| tally_domain::rum::inspect_report(t).unwrap().report_id)
        .collect();
    let info = fleet.info(i).unwrap();
    let udi = fleet.udi(i).unwrap();
    let body = AckBody {
        version: "1.0".into(),
        sudi: udi.clone(),
        report_ids: report_ids.clone(),
        ack_time: chrono::Utc::now().timestamp(),
        smart_account: info.smart_account,
        virtual_account: info.virtual_account,
        status: "ACK".into(),
    };
    let signer = Signer::derive(b"tally-sim-cssm", "cssm-ack").unwrap();
    proto::DeviceAck {
        device_id: id.to_string(),
        cycle_id: cycle.to_string(),
        udi_pid: udi.udi_pid,
        udi_serial: udi.udi_serial_number,
        report_ids,
        ack: build_ack_document_with_policy(&body, policy, &signer, "cssm-sim-1"),
    }
}

/// Queues `acks` as one `AcksReceived` (message `msg_id`) and works every import.
async fn import_all(agg: &Aggregator, msg_id: &str, acks: Vec<proto::DeviceAck>) {
    import::enqueue(
        agg,
        msg_id,
        proto::AcksReceived {
            acks,
            source: "test".into(),
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    while import::import_slice(agg).await.unwrap() > 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "imports stuck");
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct ImportRow {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

async fn imports(agg: &Aggregator) -> BTreeMap<Uuid, ImportRow> {
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<ImportRow> =
        diesel::sql_query("SELECT device_id, state, error FROM rum.ack_imports")
            .load(&mut c)
            .await
            .unwrap();
    rows.into_iter().map(|r| (r.device_id, r)).collect()
}

#[derive(diesel::QueryableByName, Debug)]
struct ReadBack {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    confirmation: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    confirmation_reason: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    ack_received_before: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    ack_received_after: Option<chrono::DateTime<chrono::Utc>>,
}

async fn readbacks(agg: &Aggregator) -> BTreeMap<Uuid, ReadBack> {
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<ReadBack> = diesel::sql_query(
        "SELECT device_id, confirmation, confirmation_reason, ack_received_before, \
         ack_received_after FROM rum.ack_imports",
    )
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.device_id, r)).collect()
}

async fn outbox_events<M: Message + Default>(agg: &Aggregator, subject: &str) -> Vec<M> {
    #[derive(diesel::QueryableByName)]
    struct Out {
        #[diesel(sql_type = Text)]
        subject: String,
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        payload: Vec<u8>,
    }
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<Out> = diesel::sql_query("SELECT subject, payload FROM rum.outbox ORDER BY seq")
        .load(&mut c)
        .await
        .unwrap();
    rows.into_iter()
        .filter(|r| r.subject == subject)
        .map(|r| M::decode(r.payload.as_slice()).unwrap())
        .collect()
}

async fn acks_imported(agg: &Aggregator) -> Vec<proto::AcksImported> {
    outbox_events(agg, "rum.acks.imported").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_is_confirmed_only_when_the_device_shows_it() {
    // 0: takes ACKs; 1: no RESTCONF; 2: says SUCCESS but applies nothing; 3: takes ACKs, and
    // already took one before (its last ACK must move again); 4: takes ACKs, but its software's
    // model has no rum-ack (nothing to read back).
    let ctx = setup(5).await;
    let (agg, fleet) = (&ctx.agg, &ctx.fleet);
    fleet.set_restconf(1, false).unwrap();
    fleet.set_apply_acks(2, false).unwrap();
    fleet.set_rum_ack(4, false).unwrap();
    let cycle = Uuid::now_v7();
    let earlier = ack_for(fleet, ctx.ids[3], 3, cycle);
    fleet.import_ack(3, &earlier.ack).unwrap();
    let before3 = fleet.last_ack_time(3).unwrap().unwrap();

    let acks = (0..5)
        .map(|i| ack_for(fleet, ctx.ids[i], i, cycle))
        .collect();
    import_all(agg, "acks-1", acks).await;

    let rows = imports(agg).await;
    let row = |i: usize| &rows[&ctx.ids[i]];
    // The device that answered SUCCESS without applying the ACK is a failure, with the reason.
    assert_eq!(row(2).state, "failed", "{:?}", row(2));
    let reason = row(2).error.clone().unwrap_or_default();
    assert!(reason.contains("did not move"), "{reason}");
    // No RESTCONF is never a failure by itself.
    assert_eq!(row(1).state, "ok", "{:?}", row(1));
    assert_eq!(row(1).error, None);
    assert_eq!(row(0).state, "ok");
    assert_eq!(row(3).state, "ok");
    assert_eq!(row(4).state, "ok", "{:?}", row(4));

    let rb = readbacks(agg).await;
    let rb = |i: usize| &rb[&ctx.ids[i]];
    assert_eq!(rb(0).confirmation.as_deref(), Some("confirmed"));
    assert_eq!(rb(0).ack_received_before, None);
    assert_eq!(rb(0).ack_received_after, fleet.last_ack_time(0).unwrap());
    assert_eq!(rb(3).confirmation.as_deref(), Some("confirmed"));
    assert_eq!(rb(3).ack_received_before, Some(before3));
    assert!(rb(3).ack_received_after.unwrap() > before3);
    assert_eq!(rb(1).confirmation.as_deref(), Some("unconfirmed"));
    let why = rb(1).confirmation_reason.clone().unwrap_or_default();
    assert!(why.contains("RESTCONF is not available"), "{why}");
    assert_eq!(rb(2).confirmation.as_deref(), Some("not_applied"));
    assert_eq!(rb(4).confirmation.as_deref(), Some("unconfirmed"));
    let why = rb(4).confirmation_reason.clone().unwrap_or_default();
    assert!(why.contains("no rum-ack"), "{why}");
    assert_eq!(fleet.last_ack_time(2).unwrap(), None);

    // The scheduler hears of the failure; the unconfirmed delivery counts as delivered.
    let evs = acks_imported(agg).await;
    let failed: Vec<String> = evs
        .iter()
        .flat_map(|e| e.failures.iter().map(|f| f.device_id.clone()))
        .collect();
    assert_eq!(failed, vec![ctx.ids[2].to_string()]);
    let ok: u32 = evs.iter().map(|e| e.ok).sum();
    assert_eq!(ok, 4);
}

#[derive(diesel::QueryableByName, Debug)]
struct PolicyRow {
    #[diesel(sql_type = SqlUuid)]
    device_id: Uuid,
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    policy_type: Option<String>,
    #[diesel(sql_type = Text)]
    policy: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_ack_received: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    device_next_ack_deadline: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Timestamptz)]
    read_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Bool)]
    ack_required: bool,
}

async fn policies(agg: &Aggregator) -> BTreeMap<Uuid, PolicyRow> {
    let mut c = agg.pool.get().await.unwrap();
    let rows: Vec<PolicyRow> = diesel::sql_query(
        "SELECT device_id, source, reason, policy_type, policy::text AS policy, \
         last_ack_received, device_next_ack_deadline, read_at, ack_required \
         FROM rum.device_policies",
    )
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.device_id, r)).collect()
}

async fn run_cycle(agg: &Aggregator, msg_id: &str) -> Uuid {
    let cycle = Uuid::now_v7();
    collect::start_cycle(
        agg,
        msg_id,
        proto::CycleStarted {
            cycle_id: cycle.to_string(),
            trigger: "test".into(),
            started_at_ms: 0,
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    while collect::collect_slice(agg).await.unwrap() > 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "collection stuck");
    }
    cycle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_stores_each_devices_own_policy() {
    // 0: Cisco default; 1: custom 30/60/60, acked before; 2: enforced; 3: no RESTCONF.
    let ctx = setup(4).await;
    let (agg, fleet) = (&ctx.agg, &ctx.fleet);
    fleet.set_policy(1, SimPolicy::Custom306060).unwrap();
    fleet.set_policy(2, SimPolicy::Enforced).unwrap();
    fleet.set_restconf(3, false).unwrap();
    let a = ack_for(fleet, ctx.ids[1], 1, Uuid::now_v7());
    fleet.import_ack(1, &a.ack).unwrap();
    let acked1 = fleet.last_ack_time(1).unwrap().unwrap();

    let started = chrono::Utc::now();
    let cycle = run_cycle(agg, "cycle-1").await;

    // Every device was collected, the one without RESTCONF too.
    assert_eq!(
        tally_testkit::count(
            &agg.pool,
            &format!(
                "SELECT count(*) FROM rum.collections WHERE cycle_id = '{cycle}' AND state = 'done'"
            ),
        )
        .await,
        4
    );
    let p = policies(agg).await;
    assert_eq!(p.len(), 4, "{p:?}");
    let row = |i: usize| &p[&ctx.ids[i]];
    for i in 0..3 {
        assert_eq!(row(i).source, "device", "{:?}", row(i));
        assert_eq!(row(i).reason, None);
        assert!(row(i).read_at >= started);
        assert!(row(i).ack_required);
    }
    assert_eq!(
        row(0).policy_type.as_deref(),
        Some("policy-type-cisco-default")
    );
    let pol = |i: usize| -> serde_json::Value { serde_json::from_str(&row(i).policy).unwrap() };
    assert_eq!(
        pol(0)["subscription"],
        serde_json::json!({"first_report_days": 90, "reporting_frequency_days": 90, "report_on_change_days": 90})
    );
    assert_eq!(row(1).policy_type.as_deref(), Some("policy-type-custom"));
    assert_eq!(pol(1)["name"], "Custom 30/60/60");
    assert_eq!(pol(1)["subscription"]["reporting_frequency_days"], 60);
    assert_eq!(row(1).last_ack_received, Some(acked1));
    assert_eq!(
        row(1).device_next_ack_deadline,
        Some(acked1 + chrono::TimeDelta::days(60))
    );
    assert_eq!(pol(2)["enforced"]["reporting_frequency_days"], 30);
    assert_eq!(row(0).last_ack_received, None);
    assert!(row(0).device_next_ack_deadline.is_some());

    // No RESTCONF: Cisco's default, assumed, with the reason.
    assert_eq!(row(3).source, "assumed");
    let why = row(3).reason.clone().unwrap_or_default();
    assert!(why.contains("RESTCONF is not available"), "{why}");
    assert_eq!(pol(3)["name"], "Cisco default");
    assert_eq!(row(3).policy_type, None);

    // The scheduler hears of each read, as stored.
    let evs: Vec<proto::DevicePoliciesRead> = outbox_events(agg, "rum.devices.policies").await;
    let sent: BTreeMap<String, proto::DevicePolicy> = evs
        .iter()
        .flat_map(|e| e.devices.iter().cloned())
        .map(|d| (d.device_id.clone(), d))
        .collect();
    assert_eq!(sent.len(), 4);
    let d1 = &sent[&ctx.ids[1].to_string()];
    assert_eq!(
        (d1.source.as_str(), d1.name.as_str()),
        ("device", "Custom 30/60/60")
    );
    assert_eq!(d1.subscription.unwrap().reporting_frequency_days, 60);
    assert_eq!(d1.last_ack_ms, acked1.timestamp_millis());
    assert_eq!(
        d1.next_ack_deadline_ms,
        (acked1 + chrono::TimeDelta::days(60)).timestamp_millis()
    );
    assert_eq!(d1.read_at_ms, row(1).read_at.timestamp_millis());
    let d3 = &sent[&ctx.ids[3].to_string()];
    assert_eq!(d3.source, "assumed");
    assert!(
        d3.reason.contains("RESTCONF is not available"),
        "{}",
        d3.reason
    );
    assert_eq!(sent[&ctx.ids[0].to_string()].last_ack_ms, 0);

    // A later read replaces the row: the device changed its policy.
    fleet.set_policy(0, SimPolicy::Custom306060).unwrap();
    run_cycle(agg, "cycle-2").await;
    let p2 = policies(agg).await;
    assert_eq!(
        p2[&ctx.ids[0]].policy_type.as_deref(),
        Some("policy-type-custom")
    );
    assert!(p2[&ctx.ids[0]].read_at > p[&ctx.ids[0]].read_at);

    // A read that fails (HTTP 500) keeps what the device said before; a device never read
    // before gets the default, assumed, marked as a failed read.
    fleet.set_fault(1, tally_sim::Fault::Http500).unwrap();
    fleet.set_restconf(3, true).unwrap();
    fleet.set_fault(3, tally_sim::Fault::Http500).unwrap();
    let mut c = agg.pool.get().await.unwrap();
    diesel::sql_query("DELETE FROM rum.device_policies WHERE device_id = $1")
        .bind::<SqlUuid, _>(ctx.ids[3])
        .execute(&mut c)
        .await
        .unwrap();
    let before = outbox_events::<proto::DevicePoliciesRead>(agg, "rum.devices.policies")
        .await
        .len();
    run_cycle(agg, "cycle-3").await;
    // A failed read is not sent: the scheduler keeps what it had.
    let evs: Vec<proto::DevicePoliciesRead> = outbox_events(agg, "rum.devices.policies").await;
    let sent: Vec<String> = evs[before..]
        .iter()
        .flat_map(|e| e.devices.iter().map(|d| d.device_id.clone()))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(!sent.contains(&ctx.ids[1].to_string()));
    assert!(!sent.contains(&ctx.ids[3].to_string()));
    let p3 = policies(agg).await;
    let kept = &p3[&ctx.ids[1]];
    assert_eq!(kept.source, "device");
    assert_eq!(kept.read_at, p2[&ctx.ids[1]].read_at);
    assert_eq!(kept.policy_type.as_deref(), Some("policy-type-custom"));
    let fresh = &p3[&ctx.ids[3]];
    assert_eq!(fresh.source, "assumed");
    let why = fresh.reason.clone().unwrap_or_default();
    assert!(why.contains("500"), "{why}");
}

const OPERATOR: &str = "operator-token-0123456789";

async fn list_ack_imports(agg: &Aggregator, query: &str) -> Vec<serde_json::Value> {
    use actix_web::{test, web};
    let tokens =
        web::Data::new(tally_platform::ApiTokens::parse(&format!("operator:{OPERATOR}")).unwrap());
    let (app, _api) = tally_platform::api_app(Default::default(), tokens)
        .service(tally_platform::api_scope().configure(tally_rum_aggregator::routes))
        .app_data(web::Data::new(agg.clone()))
        .split_for_parts();
    let app = test::init_service(app).await;
    let req = test::TestRequest::get()
        .uri(&format!("/api/v1/ack-imports{query}"))
        .insert_header(("authorization", format!("Bearer {OPERATOR}")))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), actix_web::http::StatusCode::OK);
    serde_json::from_slice(&test::read_body(resp).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_imports_route_shows_what_read_back_saw() {
    // 0: takes the ACK (confirmed); 1: no RESTCONF (unconfirmed); 2: says SUCCESS but applies
    // nothing (not_applied).
    let ctx = setup(3).await;
    let (agg, fleet) = (&ctx.agg, &ctx.fleet);
    fleet.set_restconf(1, false).unwrap();
    fleet.set_apply_acks(2, false).unwrap();
    let cycle = Uuid::now_v7();
    let acks = (0..3)
        .map(|i| ack_for(fleet, ctx.ids[i], i, cycle))
        .collect();
    import_all(agg, "acks-api", acks).await;

    let rows = list_ack_imports(agg, "").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_device: BTreeMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["device_id"].as_str().unwrap().to_owned(), r))
        .collect();
    let row = |i: usize| by_device[&ctx.ids[i].to_string()];
    let time = |v: &serde_json::Value| -> Option<chrono::DateTime<chrono::Utc>> {
        v.as_str().map(|s| s.parse().unwrap())
    };

    // Existing fields are kept.
    assert_eq!(row(0)["state"], "ok");
    assert_eq!(row(0)["attempts"], 1);
    assert!(row(0)["ack"].as_str().unwrap().contains("smartLicense"));

    assert_eq!(row(0)["confirmation"], "confirmed");
    assert!(row(0)["confirmation_reason"].is_null());
    assert_eq!(time(&row(0)["ack_received_before"]), None);
    assert_eq!(
        time(&row(0)["ack_received_after"]),
        fleet.last_ack_time(0).unwrap()
    );
    assert!(row(0)["ack_received_after"].is_string());

    assert_eq!(row(1)["state"], "ok");
    assert_eq!(row(1)["confirmation"], "unconfirmed");
    let why = row(1)["confirmation_reason"].as_str().unwrap_or_default();
    assert!(why.contains("RESTCONF is not available"), "{why}");
    assert!(row(1)["ack_received_before"].is_null());
    assert!(row(1)["ack_received_after"].is_null());

    assert_eq!(row(2)["state"], "failed");
    assert_eq!(row(2)["confirmation"], "not_applied");
    let why = row(2)["confirmation_reason"].as_str().unwrap_or_default();
    assert!(why.contains("did not move"), "{why}");
    assert!(row(2)["ack_received_before"].is_null());
    assert!(row(2)["ack_received_after"].is_null());

    // Filtered by read-back outcome.
    for (i, k) in [(0, "confirmed"), (1, "unconfirmed"), (2, "not_applied")] {
        let only = list_ack_imports(agg, &format!("?confirmation={k}")).await;
        assert_eq!(only.len(), 1, "{k}: {only:?}");
        assert_eq!(only[0]["device_id"], ctx.ids[i].to_string());
    }
    let none = list_ack_imports(agg, "?confirmation=maybe").await;
    assert!(none.is_empty(), "{none:?}");
    let failed = list_ack_imports(agg, "?state=ok&confirmation=not_applied").await;
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_arriving_with_an_ack_is_recorded_and_sent_at_read_back() {
    // Both devices run Cisco's default; CSSM sends 30/60/60 with device 0's ACK only.
    let ctx = setup(2).await;
    let (agg, fleet) = (&ctx.agg, &ctx.fleet);
    let cycle = run_cycle(agg, "cycle-1").await;
    let p = policies(agg).await;
    assert_eq!(
        p[&ctx.ids[0]].policy_type.as_deref(),
        Some("policy-type-cisco-default")
    );
    let before = outbox_events::<proto::DevicePoliciesRead>(agg, "rum.devices.policies")
        .await
        .len();
    let acks = vec![
        ack_with_policy(fleet, ctx.ids[0], 0, cycle, Some(SimPolicy::Custom306060)),
        ack_for(fleet, ctx.ids[1], 1, cycle),
    ];
    import_all(agg, "acks-policy", acks).await;
    let rb = readbacks(agg).await;
    assert_eq!(rb[&ctx.ids[0]].confirmation.as_deref(), Some("confirmed"));
    let acked0 = fleet.last_ack_time(0).unwrap().unwrap();

    // Without another collection, the stored policy is the one that came with the ACK.
    let p = policies(agg).await;
    let row = &p[&ctx.ids[0]];
    assert_eq!(row.source, "device");
    assert_eq!(row.policy_type.as_deref(), Some("policy-type-custom"));
    let pol: serde_json::Value = serde_json::from_str(&row.policy).unwrap();
    assert_eq!(pol["name"], "Custom 30/60/60");
    assert_eq!(pol["subscription"]["reporting_frequency_days"], 60);
    assert_eq!(row.last_ack_received, Some(acked0));
    assert_eq!(
        row.device_next_ack_deadline,
        Some(acked0 + chrono::TimeDelta::days(60))
    );
    assert_eq!(
        p[&ctx.ids[1]].policy_type.as_deref(),
        Some("policy-type-cisco-default")
    );

    // The scheduler hears of it from the import, in the outbox with the import's outcome.
    let evs: Vec<proto::DevicePoliciesRead> = outbox_events(agg, "rum.devices.policies").await;
    let sent: Vec<&proto::DevicePolicy> = evs[before..]
        .iter()
        .flat_map(|e| e.devices.iter())
        .filter(|d| d.device_id == ctx.ids[0].to_string())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let d0 = sent[0];
    assert_eq!(
        (d0.source.as_str(), d0.name.as_str()),
        ("device", "Custom 30/60/60")
    );
    assert_eq!(d0.subscription.unwrap().reporting_frequency_days, 60);
    assert_eq!(d0.last_ack_ms, acked0.timestamp_millis());
    assert_eq!(d0.read_at_ms, row.read_at.timestamp_millis());
}

/// An import right after a collection takes the device's last ACK received from the state read
/// collection just made: one read after the import, not one before and one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_after_a_collection_reads_the_device_once() {
    let ctx = setup(4).await;
    let (agg, fleet) = (&ctx.agg, &ctx.fleet);
    // Device 3 says SUCCESS but applies nothing: the stored "before" still catches it.
    fleet.set_apply_acks(3, false).unwrap();
    let cycle = run_cycle(agg, "c-1").await;
    let reads = |f: &FleetState| f.summary()["state_requests"].as_u64().unwrap();
    let after_collection = reads(fleet);
    assert_eq!(
        after_collection, 4,
        "one state read per device during collection"
    );
    let acks = (0..4)
        .map(|i| ack_for(fleet, ctx.ids[i], i, cycle))
        .collect();
    import_all(agg, "acks-1", acks).await;
    let rows = imports(agg).await;
    for i in 0..3 {
        assert_eq!(rows[&ctx.ids[i]].state, "ok", "{:?}", rows[&ctx.ids[i]]);
    }
    assert_eq!(rows[&ctx.ids[3]].state, "failed");
    let backs = readbacks(agg).await;
    for i in 0..3 {
        assert_eq!(
            backs[&ctx.ids[i]].confirmation.as_deref(),
            Some("confirmed"),
            "{i}"
        );
    }
    assert_eq!(
        backs[&ctx.ids[3]].confirmation.as_deref(),
        Some("not_applied")
    );
    // Three devices confirmed at the first read after; the fourth read up to the attempts.
    let import_reads = reads(fleet) - after_collection;
    assert!(
        (3 + 1..=3 + 3).contains(&import_reads),
        "{import_reads} state reads for 4 imports"
    );
}
