//! Durable pull consumers. A message is acked only after its handler returned `Ok` (the handler
//! commits its work and the message id in its inbox in one transaction), NAK'd with a delay on a
//! transient error, and terminated when it can never be handled (undecodable).

use crate::{Bus, BusError};
use async_nats::jetstream::{AckKind, consumer::pull};
use futures::StreamExt;
use std::{future::Future, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (database or network trouble).
    #[error("transient: {0}")]
    Retry(String),
    /// Can never succeed (undecodable message): dropped with an error log.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<diesel::result::Error> for HandlerError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Retry(e.to_string())
    }
}
impl From<tally_store::StoreError> for HandlerError {
    fn from(e: tally_store::StoreError) -> Self {
        Self::Retry(e.to_string())
    }
}
impl From<prost::DecodeError> for HandlerError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Poison(e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    /// `Nats-Msg-Id`, the producer's outbox id: the key for the consumer's inbox.
    pub msg_id: String,
    /// Subject relative to `<ns>.events.`.
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// Consumes `subjects` (relative) with the durable consumer `durable` until the task is dropped.
/// Replicas sharing `durable` share the work.
pub async fn run<F, Fut>(
    bus: Bus,
    durable: &str,
    subjects: &[&str],
    handler: F,
) -> Result<(), BusError>
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let stream = bus.ensure_stream().await?;
    let filter_subjects: Vec<String> = subjects.iter().map(|s| bus.subject(s)).collect();
    // Create or update: a new release's filters and timings apply to an existing consumer.
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subjects,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            // Redelivery after a crash waits this long; handlers are short and idempotent,
            // so a slow one being redelivered early costs only a skipped inbox claim.
            ack_wait: Duration::from_secs(15),
            max_ack_pending: 64,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::JetStream(e.to_string()))?;
    loop {
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::JetStream(e.to_string()))?;
        while let Some(next) = messages.next().await {
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(durable, error = %e, "consumer stream error");
                    break;
                }
            };
            let msg_id = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_else(|| {
                    msg.info()
                        .map(|i| format!("{}:{}", i.stream, i.stream_sequence))
                        .unwrap_or_default()
                });
            let delivery = Delivery {
                msg_id,
                subject: bus.relative(msg.subject.as_str()).to_owned(),
                payload: msg.payload.clone(),
            };
            let result = handler(delivery).await;
            let ack = match result {
                Ok(()) => msg.ack().await,
                Err(HandlerError::Retry(e)) => {
                    tracing::warn!(durable, error = %e, "handler failed; message will be redelivered");
                    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await
                }
                Err(HandlerError::Poison(e)) => {
                    tracing::error!(durable, subject = %msg.subject, error = %e, "dropping message that can never be handled");
                    msg.ack_with(AckKind::Term).await
                }
            };
            if let Err(e) = ack {
                tracing::warn!(durable, error = %e, "ack failed; message may be redelivered (handled idempotently)");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
