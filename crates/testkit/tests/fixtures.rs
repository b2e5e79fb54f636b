#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The device fixture goes out as inventory's own event: `DevicesUpserted` on its subject, in
//! inventory's chunks, one message id each, received whole by a consumer routed on that type.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tally_bus::{consumer::HandlerError, proto, router::Router};
use tally_testkit::fixtures;

type Seen = Arc<Mutex<Vec<(String, proto::DevicesUpserted)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_devices_reach_a_devices_upserted_consumer_in_inventory_chunks() {
    let bus = tally_testkit::bus().await.unwrap();
    let devices: Vec<proto::Device> = (0..2500).map(fixtures::device).collect();
    fixtures::publish_devices(&bus, devices.clone())
        .await
        .unwrap();

    let seen: Seen = Arc::default();
    let router =
        Router::new(seen.clone()).on(|s: Seen, id, ev: proto::DevicesUpserted| async move {
            s.lock()
                .map_err(|e| HandlerError::Retry(e.to_string()))?
                .push((id, ev));
            Ok(())
        });
    let consumer = tokio::spawn(router.run(bus.clone(), "fixture-test"));
    let deadline = std::time::Instant::now() + tally_testkit::WAIT;
    while seen.lock().unwrap().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "not all chunks arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    consumer.abort();

    let seen = seen.lock().unwrap();
    let sizes: Vec<usize> = seen.iter().map(|(_, ev)| ev.devices.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    let ids: HashSet<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 3, "a message id of its own per chunk");
    let got: Vec<proto::Device> = seen.iter().flat_map(|(_, ev)| ev.devices.clone()).collect();
    assert_eq!(got, devices);
    // Plausible and distinct: ids, hostnames, serials and addresses all differ.
    for f in [
        |d: &proto::Device| d.device_id.clone(),
        |d: &proto::Device| d.hostname.clone(),
        |d: &proto::Device| d.udi_serial.clone(),
        |d: &proto::Device| d.base_url.clone(),
    ] {
        assert_eq!(got.iter().map(f).collect::<HashSet<_>>().len(), 2500);
    }
    assert_eq!(got[0].device_id, fixtures::device_id(0).to_string());
}
