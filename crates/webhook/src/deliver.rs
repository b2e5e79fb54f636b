//! The delivery worker: claims due rows, POSTs them signed, records the outcome.
//!
//! A claim is one statement (`FOR UPDATE SKIP LOCKED`, then `attempts + 1`, a fresh `claim` token
//! and `next_attempt_at` pushed out by a lease), so the HTTP call holds no lock or connection. If
//! the process dies mid-attempt the lease runs out and another worker retries; a late result from
//! a stale worker is dropped because its claim token no longer matches.

use crate::signature::{HEADER_EVENT, HEADER_EVENT_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign};
use crate::store::{Claimed, Failure};
use crate::{DeliveryState, WebhookError, Webhooks};
use std::time::Duration;
use tally_store::Pool;
use uuid::Uuid;

/// Retry policy and limits. The defaults retry at about 5 s, 30 s, 3 min, 18 min, then hourly,
/// and dead-letter after the 8th failed attempt (about 4.5 hours after the first).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Attempts before a delivery is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failure; each further failure waits 6 times longer.
    pub backoff_base: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Whole-request timeout: a receiver that has not answered by then has failed.
    pub timeout: Duration,
    /// How long a claimed row stays invisible to other workers; longer than `timeout`.
    pub lease: Duration,
    /// Rows claimed (and sent concurrently) per batch.
    pub batch: i64,
    /// Sleep between polls when nothing was due.
    pub poll: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(60),
            batch: 32,
            poll: Duration::from_secs(1),
        }
    }
}

/// The nominal wait after `failed` attempts (1-based): `base * 6^(failed-1)`, capped. The
/// deliverer adds ±20 % jitter so endpoints that failed together do not retry in lockstep.
pub fn backoff(cfg: &DeliveryConfig, failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(12);
    cfg.backoff_base
        .saturating_mul(6u32.saturating_pow(exp))
        .min(cfg.backoff_max)
}

fn jittered(d: Duration, cap: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    d.mul_f64(rand::random_range(0.8..1.2)).min(cap)
}

struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct Deliverer {
    webhooks: Webhooks,
    cfg: DeliveryConfig,
    client: reqwest::Client,
}

const MAX_ERROR_LEN: usize = 500;
const BODY_SNIPPET: usize = 200;

impl Deliverer {
    pub fn new(webhooks: Webhooks, cfg: DeliveryConfig) -> Result<Self, WebhookError> {
        if cfg.max_attempts == 0 {
            return Err(WebhookError::invalid("max_attempts", "must be at least 1"));
        }
        if cfg.lease <= cfg.timeout {
            // Otherwise a slow attempt's row could be claimed and sent again while in flight.
            return Err(WebhookError::invalid(
                "lease",
                "must be longer than timeout",
            ));
        }
        if cfg.batch < 1 {
            return Err(WebhookError::invalid("batch", "must be at least 1"));
        }
        tally_platform::init_crypto();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            // A redirect would re-send the signed body to a URL nobody registered.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tally-Webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self {
            webhooks,
            cfg,
            client,
        })
    }

    /// Delivers due rows until the task is dropped; safe to run on every replica.
    pub async fn run(&self, pool: Pool) {
        loop {
            match self.deliver_batch(&pool).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook delivery batch failed"),
            }
            tokio::time::sleep(self.cfg.poll).await;
        }
    }

    /// Claims up to `batch` due deliveries, attempts them concurrently and records each outcome;
    /// returns how many were attempted.
    pub async fn deliver_batch(&self, pool: &Pool) -> Result<usize, WebhookError> {
        let claim = Uuid::new_v4();
        let rows: Vec<Claimed> = {
            let mut conn = pool
                .get()
                .await
                .map_err(|e| WebhookError::Pool(e.to_string()))?;
            self.webhooks
                .claim_due(
                    &mut conn,
                    self.cfg.batch,
                    claim,
                    self.cfg.lease.as_secs_f64(),
                )
                .await?
        };
        let n = rows.len();
        let results = futures::future::join_all(rows.iter().map(|r| async move {
            let outcome = self.attempt(r).await;
            self.record(pool, r, claim, &outcome).await
        }))
        .await;
        // Every row was attempted; a failed record only means its lease will bring it back.
        for r in results {
            if let Err(e) = r {
                tracing::warn!(error = %e, "recording a webhook delivery outcome failed");
            }
        }
        Ok(n)
    }

    async fn attempt(&self, r: &Claimed) -> Outcome {
        let secret = match self.webhooks.open_secret(&r.secret_sealed) {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    status: None,
                    error: Some(e.to_string()),
                };
            }
        };
        let ts = chrono::Utc::now().timestamp();
        let res = self
            .client
            .post(&r.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_EVENT_ID, r.event_id.to_string())
            .header(HEADER_EVENT, &r.kind)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, sign(&secret, ts, &r.payload))
            .body(r.payload.clone())
            .send()
            .await;
        match res {
            Ok(resp) if resp.status().is_success() => Outcome {
                status: Some(resp.status().as_u16()),
                error: None,
            },
            Ok(resp) => {
                let status = resp.status();
                let snippet = body_snippet(resp).await;
                Outcome {
                    status: Some(status.as_u16()),
                    error: Some(if snippet.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {snippet}")
                    }),
                }
            }
            // Without the URL: it may itself be a credential (e.g. a chat webhook token).
            Err(e) => Outcome {
                status: None,
                error: Some(describe(&e.without_url())),
            },
        }
    }

    async fn record(
        &self,
        pool: &Pool,
        r: &Claimed,
        claim: Uuid,
        o: &Outcome,
    ) -> Result<(), WebhookError> {
        let mut conn = pool
            .get()
            .await
            .map_err(|e| WebhookError::Pool(e.to_string()))?;
        let status = o.status.map(i32::from);
        let attempts = u32::try_from(r.attempts).unwrap_or(u32::MAX);
        let n = if o.ok() {
            tracing::info!(delivery = %r.id, webhook = %r.webhook_id, event = %r.event_id,
                kind = %r.kind, attempts, status, "webhook delivered");
            self.webhooks
                .record_delivered(&mut conn, r.id, claim, status)
                .await?
        } else {
            let dead = attempts >= self.cfg.max_attempts;
            let wait = jittered(backoff(&self.cfg, attempts), self.cfg.backoff_max);
            let error: String = o
                .error
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(MAX_ERROR_LEN)
                .collect();
            if dead {
                tracing::warn!(delivery = %r.id, webhook = %r.webhook_id, event = %r.event_id,
                    kind = %r.kind, attempts, status, error = %error,
                    "webhook delivery dead-lettered");
            } else {
                tracing::warn!(delivery = %r.id, webhook = %r.webhook_id, event = %r.event_id,
                    kind = %r.kind, attempts, status, error = %error,
                    retry_in_s = wait.as_secs_f64(), "webhook delivery failed; will retry");
            }
            let failure = Failure {
                state: if dead {
                    DeliveryState::Dead
                } else {
                    DeliveryState::Pending
                },
                wait_secs: wait.as_secs_f64(),
                status,
                error: &error,
            };
            self.webhooks
                .record_failed(&mut conn, r.id, claim, &failure)
                .await?
        };
        if n == 0 {
            tracing::warn!(delivery = %r.id, "webhook delivery outcome was late; another worker owns the row now");
        }
        Ok(())
    }
}

/// The start of an error answer, as a hint for the operator looking at a dead letter.
async fn body_snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < BODY_SNIPPET {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf)
        .chars()
        .filter(|c| !c.is_control())
        .take(BODY_SNIPPET)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// An error with its causes ("error sending request" alone says nothing).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let c = DeliveryConfig::default();
        let secs: Vec<u64> = (1..=8).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(secs, [5, 30, 180, 1080, 3600, 3600, 3600, 3600]);
        assert_eq!(backoff(&c, u32::MAX), Duration::from_secs(3600));
        let zero = DeliveryConfig {
            backoff_base: Duration::ZERO,
            ..c.clone()
        };
        assert_eq!(backoff(&zero, 5), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_a_fifth_and_the_cap() {
        let cap = Duration::from_secs(3600);
        for _ in 0..200 {
            let d = jittered(Duration::from_secs(100), cap);
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
            assert!(jittered(cap, cap) <= cap);
        }
        assert_eq!(jittered(Duration::ZERO, cap), Duration::ZERO);
    }

    #[test]
    fn config_refuses_a_lease_shorter_than_the_timeout() {
        let w = Webhooks::new(
            crate::Schema::new("sched").unwrap(),
            tally_platform::SecretBox::from_secret("k"),
        );
        let cfg = DeliveryConfig {
            lease: Duration::from_secs(5),
            ..DeliveryConfig::default()
        };
        assert!(matches!(
            Deliverer::new(w.clone(), cfg),
            Err(WebhookError::Invalid { field: "lease", .. })
        ));
        let cfg = DeliveryConfig {
            max_attempts: 0,
            ..DeliveryConfig::default()
        };
        assert!(Deliverer::new(w, cfg).is_err());
    }
}
