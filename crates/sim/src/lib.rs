//! Simulators that speak the real Smart Licensing Using Policy formats, for tests and demos:
//! [`fleet`] runs many simulated IOS-XE devices (Cisco's device-side `smartlic-service` REST API)
//! in one process, [`cssm`] simulates Cisco Smart Software Manager (OAuth2, `reportusage`, `poll`,
//! licenses, and the offline bundle exchange). Devices sign their RUM reports and CSSM checks those
//! signatures and signs ACKs with keys derived from shared secrets (see `tally_domain::sign`).

mod common;
pub mod cssm;
pub mod fleet;

pub use common::SimError;
pub use cssm::{
    CssmConfig, CssmState, LicensePool, SmartAccount, StatsSnapshot, VirtualAccount, run_cssm,
    start_cssm,
};
pub use fleet::{DeviceInfo, Fault, FleetConfig, FleetState, run_fleet, start_fleet};
