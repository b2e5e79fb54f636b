#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Webhook delivery against real Postgres and a local HTTP receiver: signatures, retries, dead
//! letters, dedupe, racing workers and a worker that dies mid-attempt.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_platform::SecretBox;
use tally_store::Pool;
use tally_testkit::TestDb;
use tally_webhook::{
    Deliverer, Delivery, DeliveryConfig, DeliveryState, NewWebhook, Schema, SignatureError,
    WebhookError, Webhooks, verify_signature,
};
use uuid::Uuid;

const SECRET: &str = "whsec_test_0123456789";
const TOL: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
struct Hit {
    event_id: String,
    event: String,
    ts: String,
    sig: String,
    body: Vec<u8>,
}

/// What the receiver answers: scripted statuses first (0 = hang for 5 s), then `then`.
struct Receiver {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<u16>>,
    then: Mutex<u16>,
    delay: Duration,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

async fn hook(req: HttpRequest, body: web::Bytes, st: web::Data<Receiver>) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    st.hits.lock().unwrap().push(Hit {
        event_id: h("X-Tally-Event-Id"),
        event: h("X-Tally-Event"),
        ts: h("X-Tally-Timestamp"),
        sig: h("X-Tally-Signature"),
        body: body.to_vec(),
    });
    let next = st.script.lock().unwrap().pop_front();
    let status = next.unwrap_or_else(|| *st.then.lock().unwrap());
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return HttpResponse::Ok().finish();
    }
    if !st.delay.is_zero() {
        tokio::time::sleep(st.delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("boom")
}

async fn receiver(script: &[u16], then: u16, delay: Duration) -> (String, Arc<Receiver>) {
    let st = Arc::new(Receiver {
        hits: Mutex::default(),
        script: Mutex::new(script.iter().copied().collect()),
        then: Mutex::new(then),
        delay,
    });
    let data = web::Data::from(st.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(hook))
    })
    .workers(2)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}/hooks/tally"), st)
}

async fn setup() -> (TestDb, Pool, Webhooks) {
    let db = TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 8).unwrap();
    let hooks = Webhooks::new(
        Schema::new("sched").unwrap(),
        SecretBox::from_secret("test-platform-key"),
    );
    (db, pool, hooks)
}

/// A test database with one webhook (all kinds) pointing at a fresh receiver.
async fn hooked(
    script: &[u16],
    then: u16,
    delay: Duration,
) -> (TestDb, Pool, Webhooks, Arc<Receiver>) {
    let (db, pool, hooks) = setup().await;
    let (url, rx) = receiver(script, then, delay).await;
    let mut c = pool.get().await.unwrap();
    hooks.create(&mut c, new_hook(&url, &[])).await.unwrap();
    (db, pool, hooks, rx)
}

fn fast(max_attempts: u32) -> DeliveryConfig {
    DeliveryConfig {
        max_attempts,
        backoff_base: Duration::ZERO,
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        poll: Duration::from_millis(10),
        ..DeliveryConfig::default()
    }
}

fn new_hook(url: &str, events: &[&str]) -> NewWebhook {
    NewWebhook {
        url: url.to_owned(),
        secret: SECRET.to_owned(),
        description: "test receiver".to_owned(),
        events: events.iter().map(|s| (*s).to_owned()).collect(),
        enabled: true,
    }
}

async fn enqueue(pool: &Pool, hooks: &Webhooks, event: Uuid, kind: &str) -> usize {
    let mut c = pool.get().await.unwrap();
    hooks
        .enqueue(
            &mut c,
            event,
            kind,
            &serde_json::json!({"device": "C9300-24T:FOC1"}),
        )
        .await
        .unwrap()
}

async fn all(pool: &Pool, hooks: &Webhooks, state: Option<DeliveryState>) -> Vec<Delivery> {
    let mut c = pool.get().await.unwrap();
    hooks.deliveries(&mut c, state, 1000).await.unwrap()
}

/// Runs batches until nothing is due (bounded, so a stuck queue fails the test).
async fn drain(d: &Deliverer, pool: &Pool) -> usize {
    let mut total = 0;
    for _ in 0..50 {
        let n = d.deliver_batch(pool).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
    panic!("queue did not drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_once_with_a_valid_signature() {
    let (_db, pool, hooks, rx) = hooked(&[], 200, Duration::ZERO).await;
    let mut c = pool.get().await.unwrap();
    let w = hooks.list(&mut c).await.unwrap().remove(0);
    drop(c);
    let event = Uuid::now_v7();
    assert_eq!(enqueue(&pool, &hooks, event, "ack_deadline.7d").await, 1);

    let d = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    assert_eq!(drain(&d, &pool).await, 1);

    let hits = rx.hits();
    assert_eq!(hits.len(), 1);
    let h = &hits[0];
    assert_eq!(h.event_id, event.to_string());
    assert_eq!(h.event, "ack_deadline.7d");
    assert!(h.sig.starts_with("sha256="), "{}", h.sig);
    verify_signature(SECRET, &h.ts, &h.body, &h.sig, TOL).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(body["id"], event.to_string());
    assert_eq!(body["type"], "ack_deadline.7d");
    assert_eq!(body["data"]["device"], "C9300-24T:FOC1");

    let rows = all(&pool, &hooks, None).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.webhook_id, r.state, r.attempts),
        (w.id, DeliveryState::Delivered, 1)
    );
    assert_eq!(r.last_status, Some(200));
    assert!(r.delivered_at.is_some() && r.last_error.is_none());
    assert_eq!(r.payload, body, "the stored payload is what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_body_fails_verification() {
    let (_db, pool, hooks, rx) = hooked(&[], 204, Duration::ZERO).await;
    enqueue(&pool, &hooks, Uuid::now_v7(), "overdue").await;
    drain(&Deliverer::new(hooks, fast(8)).unwrap(), &pool).await;
    let h = rx.hits().pop().unwrap();
    verify_signature(SECRET, &h.ts, &h.body, &h.sig, TOL).unwrap();

    let mut body = h.body.clone();
    let i = body.iter().position(|b| *b == b'1').unwrap();
    body[i] = b'2';
    assert_eq!(
        verify_signature(SECRET, &h.ts, &body, &h.sig, TOL),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature("some-other-secret-value", &h.ts, &h.body, &h.sig, TOL),
        Err(SignatureError::Mismatch)
    );
    let later = (h.ts.parse::<i64>().unwrap() + 1).to_string();
    assert_eq!(
        verify_signature(SECRET, &later, &h.body, &h.sig, TOL),
        Err(SignatureError::Mismatch),
        "the timestamp is signed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_receiver_recovers() {
    let (_db, pool, hooks, rx) = hooked(&[500, 500], 200, Duration::ZERO).await;
    enqueue(&pool, &hooks, Uuid::now_v7(), "collection_failed").await;
    let d = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    assert_eq!(drain(&d, &pool).await, 3);

    assert_eq!(rx.hits().len(), 3);
    let r = &all(&pool, &hooks, None).await[0];
    assert_eq!(
        (r.state, r.attempts, r.last_status),
        (DeliveryState::Delivered, 3, Some(200))
    );
    // Every retry is freshly signed and carries the same event id.
    for h in rx.hits() {
        verify_signature(SECRET, &h.ts, &h.body, &h.sig, TOL).unwrap();
        assert_eq!(h.event_id, r.event_id.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_after_max_attempts_and_redelivers_on_request() {
    let (_db, pool, hooks, rx) = hooked(&[], 500, Duration::ZERO).await;
    enqueue(&pool, &hooks, Uuid::now_v7(), "out_of_compliance").await;
    let d = Deliverer::new(hooks.clone(), fast(3)).unwrap();
    assert_eq!(drain(&d, &pool).await, 3);
    assert_eq!(rx.hits().len(), 3);

    let dead = all(&pool, &hooks, Some(DeliveryState::Dead)).await;
    assert_eq!(dead.len(), 1);
    let r = &dead[0];
    assert_eq!((r.attempts, r.last_status), (3, Some(500)));
    let err = r.last_error.as_deref().unwrap();
    assert!(err.contains("500") && err.contains("boom"), "{err}");
    assert!(
        all(&pool, &hooks, Some(DeliveryState::Pending))
            .await
            .is_empty()
    );
    assert_eq!(
        d.deliver_batch(&pool).await.unwrap(),
        0,
        "dead rows are not retried"
    );

    // The operator fixes the receiver and requeues the dead letter.
    *rx.then.lock().unwrap() = 200;
    let mut c = pool.get().await.unwrap();
    assert!(hooks.redeliver(&mut c, r.id).await.unwrap());
    assert!(
        !hooks.redeliver(&mut c, r.id).await.unwrap(),
        "only dead rows are requeued"
    );
    drop(c);
    assert_eq!(drain(&d, &pool).await, 1);
    let r = &all(&pool, &hooks, None).await[0];
    assert_eq!(
        (r.state, r.attempts, r.last_status),
        (DeliveryState::Delivered, 1, Some(200))
    );
    assert_eq!(rx.hits().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_enqueue_delivers_once() {
    let (_db, pool, hooks, rx) = hooked(&[], 200, Duration::ZERO).await;
    let event = Uuid::now_v7();
    assert_eq!(enqueue(&pool, &hooks, event, "ack_deadline.1d").await, 1);
    assert_eq!(enqueue(&pool, &hooks, event, "ack_deadline.1d").await, 0);
    let d = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    drain(&d, &pool).await;
    // A replay after delivery is still a no-op.
    assert_eq!(enqueue(&pool, &hooks, event, "ack_deadline.1d").await, 0);
    drain(&d, &pool).await;
    assert_eq!(rx.hits().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_follows_filters_skips_disabled_and_rolls_back_with_the_caller() {
    let (_db, pool, hooks) = setup().await;
    let (url, _rx) = receiver(&[], 200, Duration::ZERO).await;
    let mut c = pool.get().await.unwrap();
    let acks = hooks
        .create(&mut c, new_hook(&url, &["ack_deadline.7d", "overdue"]))
        .await
        .unwrap();
    let every = hooks.create(&mut c, new_hook(&url, &[])).await.unwrap();
    let off = hooks.create(&mut c, new_hook(&url, &[])).await.unwrap();
    assert!(hooks.set_enabled(&mut c, off.id, false).await.unwrap());
    drop(c);

    assert_eq!(enqueue(&pool, &hooks, Uuid::now_v7(), "overdue").await, 2);
    assert_eq!(
        enqueue(&pool, &hooks, Uuid::now_v7(), "subscription_end.90d").await,
        1
    );
    let rows = all(&pool, &hooks, None).await;
    let to = |id| rows.iter().filter(|r| r.webhook_id == id).count();
    assert_eq!((to(acks.id), to(every.id), to(off.id)), (1, 2, 0));

    // The caller's transaction decides: rolled back, the deliveries never existed.
    let mut c = pool.get().await.unwrap();
    diesel::sql_query("BEGIN").execute(&mut c).await.unwrap();
    let n = hooks
        .enqueue(&mut c, Uuid::now_v7(), "overdue", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(n, 2);
    diesel::sql_query("ROLLBACK").execute(&mut c).await.unwrap();
    drop(c);
    assert_eq!(all(&pool, &hooks, None).await.len(), 3);

    // Deleting a webhook takes its queue with it.
    let mut c = pool.get().await.unwrap();
    assert!(hooks.delete(&mut c, every.id).await.unwrap());
    assert!(!hooks.delete(&mut c, every.id).await.unwrap());
    assert_eq!(hooks.list(&mut c).await.unwrap().len(), 2);
    drop(c);
    assert_eq!(all(&pool, &hooks, None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_deliverers_send_each_row_once() {
    let (_db, pool, hooks, rx) = hooked(&[], 200, Duration::from_millis(5)).await;
    let events: Vec<Uuid> = (0..120).map(|_| Uuid::now_v7()).collect();
    for e in &events {
        enqueue(&pool, &hooks, *e, "overdue").await;
    }
    let cfg = DeliveryConfig {
        batch: 4,
        ..fast(8)
    };
    // Four workers (as four replicas) start together on the same queue.
    let go = Arc::new(tokio::sync::Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let d = Deliverer::new(hooks.clone(), cfg.clone()).unwrap();
            let (pool, go) = (pool.clone(), go.clone());
            tokio::spawn(async move {
                go.wait().await;
                let mut mine = 0;
                loop {
                    let n = d.deliver_batch(&pool).await.unwrap();
                    if n == 0 {
                        return mine;
                    }
                    mine += n;
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for w in workers {
        claimed.push(w.await.unwrap());
    }
    assert_eq!(
        claimed.iter().sum::<usize>(),
        120,
        "each row claimed by exactly one worker ({claimed:?})"
    );
    assert!(
        claimed.iter().filter(|n| **n > 0).count() >= 2,
        "workers overlapped ({claimed:?})"
    );

    let hits = rx.hits();
    assert_eq!(hits.len(), 120);
    let ids: HashSet<String> = hits.iter().map(|h| h.event_id.clone()).collect();
    let want: HashSet<String> = events.iter().map(Uuid::to_string).collect();
    assert_eq!(ids, want);
    let rows = all(&pool, &hooks, None).await;
    assert!(
        rows.iter()
            .all(|r| r.state == DeliveryState::Delivered && r.attempts == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverer_skips_rows_another_worker_holds() {
    let (_db, pool, hooks, rx) = hooked(&[], 200, Duration::ZERO).await;
    let held = Uuid::now_v7();
    enqueue(&pool, &hooks, held, "overdue").await;
    enqueue(&pool, &hooks, Uuid::now_v7(), "overdue").await;

    // Another replica is in the middle of claiming one row.
    let mut other = pool.get().await.unwrap();
    diesel::sql_query("BEGIN")
        .execute(&mut other)
        .await
        .unwrap();
    diesel::sql_query("SELECT id FROM sched.webhook_deliveries WHERE event_id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Uuid, _>(held)
        .execute(&mut other)
        .await
        .unwrap();

    let d = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), d.deliver_batch(&pool))
        .await
        .expect("a locked row must be skipped, not waited for")
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(d.deliver_batch(&pool).await.unwrap(), 0);
    diesel::sql_query("ROLLBACK")
        .execute(&mut other)
        .await
        .unwrap();
    drop(other);
    assert_eq!(d.deliver_batch(&pool).await.unwrap(), 1);
    let mut ids: Vec<String> = rx.hits().into_iter().map(|h| h.event_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], held.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_attempt_loses_nothing() {
    let (_db, pool, hooks) = setup().await;
    // The first request hangs; the worker is dropped while waiting (as if the pod died).
    let (url, rx) = receiver(&[0], 200, Duration::ZERO).await;
    let mut c = pool.get().await.unwrap();
    hooks.create(&mut c, new_hook(&url, &[])).await.unwrap();
    drop(c);
    enqueue(&pool, &hooks, Uuid::now_v7(), "overdue").await;
    let d = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(500), d.deliver_batch(&pool)).await;
    assert!(cut.is_err(), "the attempt was still in flight");

    // Leased: no other worker takes it while the dead one might still be sending...
    let other = Deliverer::new(hooks.clone(), fast(8)).unwrap();
    assert_eq!(other.deliver_batch(&pool).await.unwrap(), 0);
    // ...and once the lease runs out, it is retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(drain(&other, &pool).await, 1);
    let r = &all(&pool, &hooks, None).await[0];
    assert_eq!((r.state, r.attempts), (DeliveryState::Delivered, 2));
    assert_eq!(
        rx.hits().len(),
        2,
        "at least once: the receiver dedupes by event id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_receiver_error_is_kept_without_the_url() {
    let (_db, pool, hooks) = setup().await;
    // A port nobody listens on; the path stands for a token some services put in the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks/T0KEN-in-path");
    let mut c = pool.get().await.unwrap();
    hooks.create(&mut c, new_hook(&url, &[])).await.unwrap();
    drop(c);
    enqueue(&pool, &hooks, Uuid::now_v7(), "overdue").await;
    let d = Deliverer::new(hooks.clone(), fast(1)).unwrap();
    assert_eq!(drain(&d, &pool).await, 1);
    let r = &all(&pool, &hooks, Some(DeliveryState::Dead)).await[0];
    let err = r.last_error.as_deref().unwrap();
    assert_eq!(r.last_status, None);
    assert!(!err.is_empty() && !err.contains("T0KEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_bad_urls_and_short_secrets_and_seals_the_secret() {
    let (_db, pool, hooks) = setup().await;
    let mut c = pool.get().await.unwrap();
    for url in [
        "ftp://example.com/x",
        "not a url",
        "https://u:p@example.com/",
    ] {
        match hooks.create(&mut c, new_hook(url, &[])).await {
            Err(WebhookError::Invalid { field: "url", .. }) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let short = NewWebhook {
        secret: "too-short".into(),
        ..new_hook("https://example.com/hook", &[])
    };
    let e = hooks.create(&mut c, short).await.unwrap_err();
    assert_eq!(e.to_string(), "secret: must be at least 16 characters");
    let bad_kind = new_hook("https://example.com/hook", &["bad kind"]);
    assert!(matches!(
        hooks.create(&mut c, bad_kind).await,
        Err(WebhookError::Invalid {
            field: "events",
            ..
        })
    ));
    assert!(
        hooks.list(&mut c).await.unwrap().is_empty(),
        "nothing half-written"
    );

    hooks
        .create(&mut c, new_hook("https://example.com/hook", &[]))
        .await
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        secret_sealed: String,
    }
    let s: Vec<S> = diesel::sql_query("SELECT secret_sealed FROM sched.webhooks")
        .load(&mut c)
        .await
        .unwrap();
    assert!(s[0].secret_sealed.starts_with("v1:") && !s[0].secret_sealed.contains(SECRET));
    let n: i64 = diesel::select(diesel::dsl::sql::<BigInt>("count(*) FROM sched.webhooks"))
        .get_result(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
