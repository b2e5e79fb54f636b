#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The inbox helper runs a message's work once, however often the message is delivered.

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use tally_store::outbox::{Schema, once};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn sites(c: &mut tally_store::PgConn) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM inventory.sites")
        .get_result::<Count>(c)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread")]
async fn work_runs_once_per_message_id_and_a_failure_claims_nothing() {
    let db = tally_testkit::TestDb::new().await.unwrap();
    let pool = tally_store::pool(&db.url, 2).unwrap();
    let mut c = pool.get().await.unwrap();
    // Borrows from the test (as a handler borrows its event) are fine.
    let names = [String::from("a"), String::from("b"), String::from("c")];
    let add = async |c: &mut tally_store::PgConn, name: &str| {
        diesel::sql_query("INSERT INTO inventory.sites (name) VALUES ($1)")
            .bind::<Text, _>(name)
            .execute(c)
            .await
    };
    assert_eq!(
        once(&mut c, Schema::Inventory, "m1", async |c| add(c, &names[0])
            .await)
        .await
        .unwrap(),
        Some(1)
    );
    // Redelivered: skipped, nothing written.
    assert_eq!(
        once(&mut c, Schema::Inventory, "m1", async |c| add(c, &names[1])
            .await)
        .await
        .unwrap(),
        None
    );
    assert_eq!(sites(&mut c).await, 1);
    // Work that fails rolls back its claim too, so the redelivery does the work.
    let err = once(&mut c, Schema::Inventory, "m2", async |c| {
        add(c, &names[0]).await
    })
    .await;
    assert!(err.is_err(), "duplicate site name must fail");
    assert_eq!(
        once(&mut c, Schema::Inventory, "m2", async |c| add(c, &names[2])
            .await)
        .await
        .unwrap(),
        Some(1)
    );
    assert_eq!(sites(&mut c).await, 2);
}
