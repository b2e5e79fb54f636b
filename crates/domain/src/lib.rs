//! Pure types and rules of Smart Licensing Using Policy: identities, tiers, policies and deadline
//! math, and the wire formats (RUM reports, offline bundles; ACK documents are opaque to Tally). No network or database.

pub mod alert;
pub mod bundle;
pub mod policy;
pub mod risk;
pub mod rules;
pub mod rum;
pub mod sign;
pub mod tier;
pub mod udi;

pub use tier::{DnaTier, NetworkLicense};
pub use udi::{Udi, UdiError};
