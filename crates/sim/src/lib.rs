//! Simulators that speak the real Smart Licensing Using Policy formats, for tests and demos:
//! [`fleet`] runs many simulated IOS-XE devices (Cisco's device-side `smartlic-service` REST API)
//! in one process (and the RESTCONF boot-level resource, [`restconf`]), [`cssm`] simulates Cisco Smart Software Manager (OAuth2, `reportusage`, `poll`,
//! licenses, and the offline bundle exchange). Devices sign their RUM reports and CSSM checks those
//! signatures and signs ACKs with keys derived from shared secrets (see `tally_domain::sign`).

pub mod ack;
mod common;
pub mod cssm;
pub mod fleet;
pub mod restconf;
pub mod yang_state;

pub use common::SimError;
pub use cssm::{
    CssmConfig, CssmState, LicensePool, PoolChange, SmartAccount, StatsSnapshot, VirtualAccount,
    fleet_pools, run_cssm, start_cssm,
};
pub use fleet::{
    DeviceInfo, Fault, FleetConfig, FleetState, SIM_ONLY_FIELDS, run_fleet, start_fleet,
};
