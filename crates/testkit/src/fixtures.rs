//! Seeding a service's copy of inventory's devices the way production does: by publishing the
//! `DevicesUpserted` events inventory publishes, for the service's own consumer to project.
//!
//! ```ignore
//! let devices: Vec<_> = (0..3).map(fixtures::device).collect();
//! fixtures::publish_devices(&t.bus, devices).await?;
//! tally_testkit::consume_until(
//!     tally_tier_assignment::router(t.clone()).run(t.bus.clone(), tally_tier_assignment::DURABLE),
//!     &t.pool,
//!     "SELECT count(*) FROM tiers.devices",
//!     3,
//! )
//! .await;
//! ```

use async_nats::jetstream::message::PublishMessage;
use prost::Message;
use tally_bus::{Bus, BusError, Event, proto};
use uuid::Uuid;

/// Devices per `DevicesUpserted`, as inventory chunks them (its `store::devices::CHUNK`).
pub const CHUNK: usize = 1000;

/// The id of [`device`]`(i)`.
pub fn device_id(i: usize) -> Uuid {
    Uuid::from_u128(i as u128 + 1)
}

/// Device `i` as inventory publishes it: a 24-port Catalyst 9300 switch (`sw-<i>`) at site `hq`
/// in smart account `acme.example`, virtual account `Campus`, on Network and DNA Advantage, in
/// group `access`, revision 1. It has no credentials (`password_sealed` is empty): a test that
/// talks to the device seals its own with the service's key.
pub fn device(i: usize) -> proto::Device {
    proto::Device {
        device_id: device_id(i).to_string(),
        udi_pid: "C9300-24P".into(),
        udi_serial: format!("FCW{i:08}"),
        hostname: format!("sw-{i:04}"),
        model: "C9300-24P".into(),
        software_version: "17.12.4".into(),
        base_url: format!(
            "https://10.{}.{}.{}:443",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ),
        site: "hq".into(),
        smart_account: "acme.example".into(),
        virtual_account: "Campus".into(),
        username: "tally".into(),
        password_sealed: String::new(),
        is_cube: false,
        network_license: "network-advantage".into(),
        dna_tier: "dna-advantage".into(),
        revision: 1,
        groups: vec!["access".into()],
        voice_role: String::new(),
    }
}

/// Publishes `devices` as inventory does: `DevicesUpserted` on its subject, [`CHUNK`] devices a
/// message, each with a `Nats-Msg-Id` of its own (inventory's is its outbox row id). Returns once
/// the stream acknowledged every message.
pub async fn publish_devices(bus: &Bus, devices: Vec<proto::Device>) -> Result<(), BusError> {
    let subject = bus.subject(<proto::DevicesUpserted as Event>::SUBJECT);
    for chunk in devices.chunks(CHUNK) {
        let event = proto::DevicesUpserted {
            devices: chunk.to_vec(),
        };
        let publish = PublishMessage::build()
            .payload(event.encode_to_vec().into())
            .message_id(Uuid::now_v7().to_string());
        bus.js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| BusError::JetStream(e.to_string()))?
            .await
            .map_err(|e| BusError::JetStream(e.to_string()))?;
    }
    Ok(())
}
