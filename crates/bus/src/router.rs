//! A typed consumer router: one list of `(event type, handler)` pairs gives both the subjects a
//! durable consumer filters on and the dispatch of each delivery, so the two cannot disagree.
//!
//! ```ignore
//! let router = Router::new(agg)
//!     .on(|a: Aggregator, id: String, ev: DevicesUpserted| async move { projection::upsert(&a, &id, ev).await })
//!     .on(|a: Aggregator, id: String, ev: CycleStarted| async move { collect::start_cycle(&a, &id, ev).await });
//! router.run(bus, DURABLE).await
//! ```

use crate::consumer::{Delivery, HandlerError};
use crate::{Bus, BusError, Event};
use futures::future::BoxFuture;
use std::{future::Future, sync::Arc};

type Handler<S> = Arc<
    dyn Fn(S, String, bytes::Bytes) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync,
>;

/// Handlers by subject, each decoding its own event type. `S` is the service's state (cheap to
/// clone: pools and `Arc`s).
pub struct Router<S> {
    state: S,
    routes: Vec<(&'static str, Handler<S>)>,
}

impl<S: Clone + Send + Sync + 'static> Router<S> {
    pub fn new(state: S) -> Self {
        Self {
            state,
            routes: Vec::new(),
        }
    }

    /// Routes events of type `E` (its [`Event::SUBJECT`]) to `f(state, message id, event)`.
    /// A payload that does not decode as `E` is poison. Registering one event type twice is a
    /// programming error: the later registration is ignored (and logged).
    pub fn on<E, F, Fut>(mut self, f: F) -> Self
    where
        E: Event + Send + 'static,
        F: Fn(S, String, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        if self.routes.iter().any(|(s, _)| *s == E::SUBJECT) {
            tracing::error!(
                subject = E::SUBJECT,
                "event routed twice; keeping the first handler"
            );
            return self;
        }
        let f = Arc::new(f);
        self.routes.push((
            E::SUBJECT,
            Arc::new(move |s, id, payload| {
                let f = f.clone();
                Box::pin(async move {
                    let ev = E::decode(payload)?;
                    f(s, id, ev).await
                })
            }),
        ));
        self
    }

    /// The relative subjects the consumer filters on, in registration order.
    pub fn subjects(&self) -> Vec<&'static str> {
        self.routes.iter().map(|(s, _)| *s).collect()
    }

    /// Hands one delivery to its handler. A subject with no handler is poison.
    pub async fn dispatch(&self, d: Delivery) -> Result<(), HandlerError> {
        match self.routes.iter().find(|(s, _)| *s == d.subject) {
            Some((_, h)) => h(self.state.clone(), d.msg_id, d.payload).await,
            None => Err(HandlerError::Poison(format!(
                "unexpected subject {}",
                d.subject
            ))),
        }
    }

    /// Consumes every routed subject with the durable consumer `durable` until dropped.
    pub async fn run(self, bus: Bus, durable: &str) -> Result<(), BusError> {
        let subjects = self.subjects();
        let router = Arc::new(self);
        crate::consumer::run(bus, durable, &subjects, move |d| {
            let r = router.clone();
            async move { r.dispatch(d).await }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CycleStarted, DevicesDeleted};
    use prost::Message;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<String>>>;

    fn delivery(subject: &str, payload: Vec<u8>) -> Delivery {
        Delivery {
            msg_id: "m1".into(),
            subject: subject.into(),
            payload: payload.into(),
        }
    }

    fn router(seen: Seen) -> Router<Seen> {
        Router::new(seen)
            .on(|s: Seen, id: String, ev: DevicesDeleted| async move {
                s.lock()
                    .map_err(|e| HandlerError::Retry(e.to_string()))?
                    .push(format!("deleted {id} {}", ev.device_ids.join(",")));
                Ok(())
            })
            .on(|s: Seen, id: String, _ev: CycleStarted| async move {
                s.lock()
                    .map_err(|e| HandlerError::Retry(e.to_string()))?
                    .push(format!("cycle {id}"));
                Ok(())
            })
    }

    #[tokio::test]
    async fn subjects_and_dispatch_come_from_one_list() {
        let seen: Seen = Arc::default();
        let r = router(seen.clone());
        assert_eq!(
            r.subjects(),
            vec![
                <DevicesDeleted as Event>::SUBJECT,
                <CycleStarted as Event>::SUBJECT
            ]
        );
        let ev = DevicesDeleted {
            device_ids: vec!["a".into(), "b".into()],
        };
        r.dispatch(delivery(DevicesDeleted::SUBJECT, ev.encode_to_vec()))
            .await
            .unwrap();
        r.dispatch(delivery(CycleStarted::SUBJECT, Vec::new()))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["deleted m1 a,b", "cycle m1"]);
    }

    #[tokio::test]
    async fn unknown_subjects_and_undecodable_payloads_are_poison() {
        let r = router(Arc::default());
        let e = r.dispatch(delivery("nope", Vec::new())).await.unwrap_err();
        assert!(matches!(e, HandlerError::Poison(m) if m.contains("nope")));
        let e = r
            .dispatch(delivery(DevicesDeleted::SUBJECT, vec![0xff, 0xff, 0xff]))
            .await
            .unwrap_err();
        assert!(matches!(e, HandlerError::Poison(_)));
    }

    #[test]
    fn an_event_routed_twice_keeps_the_first_handler() {
        let r = router(Arc::default()).on(|_: Seen, _: String, _: CycleStarted| async { Ok(()) });
        assert_eq!(r.subjects().len(), 2);
    }
}
