//! The NATS JetStream bus: protobuf messages (from `proto/`), subject names, stream setup, the
//! outbox relay and an idempotent consumer helper that acks only after the handler committed.

pub mod consumer;
pub mod projection;
pub mod relay;
pub mod router;

use async_nats::jetstream;
use std::time::Duration;
use tally_store::outbox::{self, Schema};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/tally.v1.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// A message type and the subject it travels on (relative to `<ns>.events.`).
pub trait Event: prost::Message + Default {
    const SUBJECT: &'static str;
}

macro_rules! events {
    ($($ty:ident => $subject:literal),* $(,)?) => {
        $(impl Event for proto::$ty { const SUBJECT: &'static str = $subject; })*
    };
}

events! {
    DevicesUpserted => "inventory.devices.upserted",
    DevicesDeleted => "inventory.devices.deleted",
    CycleStarted => "sched.cycle.started",
    CollectionStarted => "rum.collection.started",
    ReportsCollected => "rum.reports.collected",
    CollectionProgress => "rum.collection.progress",
    UploadProgress => "uplink.upload.progress",
    AcksReceived => "uplink.acks.received",
    UplinkProblem => "uplink.problem",
    AcksImported => "rum.acks.imported",
    DevicePoliciesRead => "rum.devices.policies",
    TierJobChanged => "tiers.job.changed",
    DeviceLicensesChanged => "tiers.devices.licensed",
    TransferRequested => "sched.transfer.requested",
    TransferAccepted => "tiers.transfer.accepted",
    AlertRaised => "sched.alert.raised",
    PoolsSynced => "tiers.pools.synced",
}

/// Writes `event` to the service's outbox inside the caller's transaction.
pub async fn emit<E: Event>(
    conn: &mut tally_store::PgConn,
    schema: Schema,
    event: &E,
) -> Result<uuid::Uuid, diesel::result::Error> {
    outbox::enqueue(conn, schema, E::SUBJECT, &event.encode_to_vec()).await
}

/// A connection to NATS plus the namespace every subject and stream name lives under, so that
/// several installations (or tests) can share one NATS server.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub ns: String,
}

impl Bus {
    pub async fn connect(url: &str, ns: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("tally-{ns}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            ns: ns.to_owned(),
        })
    }

    pub fn subject(&self, relative: &str) -> String {
        format!("{}.events.{}", self.ns, relative)
    }

    pub fn relative<'a>(&self, subject: &'a str) -> &'a str {
        subject
            .strip_prefix(&format!("{}.events.", self.ns))
            .unwrap_or(subject)
    }

    pub fn stream_name(&self) -> String {
        format!("{}_EVENTS", self.ns.to_uppercase().replace(['.', '-'], "_"))
    }

    /// Creates (or updates) the event stream: file storage, a 10-minute duplicate window for
    /// `Nats-Msg-Id` dedupe, events kept 7 days.
    pub async fn ensure_stream(&self) -> Result<jetstream::stream::Stream, BusError> {
        let cfg = jetstream::stream::Config {
            name: self.stream_name(),
            subjects: vec![format!("{}.events.>", self.ns)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(600),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_message_size: 8 * 1024 * 1024,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(cfg)
            .await
            .map_err(|e| BusError::JetStream(e.to_string()))
    }

    /// True when the server answers and JetStream is usable.
    pub async fn ready(&self) -> bool {
        self.js.query_account().await.is_ok()
    }
}
