//! Alerts: recorded once per subject, kind, due time and threshold, delivered on NATS and to
//! webhooks unless silenced. `raise` records and delivers; `evaluate` finds what is due.

pub mod evaluate;
pub mod raise;
pub mod uplink;

pub use evaluate::{Evaluation, evaluate, keep_statuses, run_alerts};
pub use raise::{NewAlert, Raised, Subject, raise, raise_failures};

tally_store::text_enum! {
    /// What an alert is about; an operator can silence or filter on it.
    pub enum Kind {
        AckDeadline = "ack_deadline",
        TermEnd = "term_end",
        CollectionFailed = "collection_failed",
        UploadFailed = "upload_failed",
        AckFailed = "ack_failed",
        OutOfCompliance = "out_of_compliance",
        /// The device's own next ACK deadline and Tally's are a day or more apart.
        DeadlineMismatch = "deadline_mismatch",
    }
}
