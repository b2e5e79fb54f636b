//! Publishes a schema's outbox rows to JetStream, oldest first, and deletes them once the stream
//! acknowledged each one. `Nats-Msg-Id` is the row id, so a row published twice (crash between
//! publish and delete) is dropped by the stream's duplicate window.

use crate::Bus;
use async_nats::jetstream::message::PublishMessage;
use diesel_async::AsyncConnection;
use std::time::Duration;
use tally_store::{Pool, outbox, outbox::Schema};

const BATCH: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("publish: {0}")]
    Publish(String),
}

/// Publishes one batch; returns how many rows went out.
pub async fn relay_once(bus: &Bus, pool: &Pool, schema: Schema) -> Result<usize, RelayError> {
    let mut conn = pool.get().await.map_err(tally_store::StoreError::from)?;
    conn.transaction(async |c| {
        let rows = outbox::lock_batch(c, schema, BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let publish = PublishMessage::build()
                .payload(row.payload.clone().into())
                .message_id(row.id.to_string());
            let ack = bus
                .js
                .send_publish(bus.subject(&row.subject), publish)
                .await
                .map_err(|e| RelayError::Publish(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| RelayError::Publish(e.to_string()))?;
        }
        let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
        outbox::delete(c, schema, &ids).await?;
        Ok(rows.len())
    })
    .await
}

/// Runs until the task is dropped.
pub async fn run(bus: Bus, pool: Pool, schema: Schema) {
    loop {
        match relay_once(&bus, &pool, schema).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => {
                tracing::warn!(schema = schema.as_str(), error = %e, "outbox relay failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
