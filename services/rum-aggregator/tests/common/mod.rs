//! Shared by the service tests: a fleet device as inventory publishes it.
#![allow(clippy::unwrap_used, dead_code)]

use tally_bus::proto;
use tally_platform::SecretBox;
use tally_sim::FleetState;
use uuid::Uuid;

/// Fleet device `i` as inventory's `DevicesUpserted` carries it, with device id `id`.
pub fn device(fleet: &FleetState, i: usize, id: Uuid, secrets: &SecretBox) -> proto::Device {
    let info = fleet.info(i).unwrap();
    proto::Device {
        device_id: id.to_string(),
        udi_pid: info.udi_pid.clone(),
        udi_serial: info.serial.clone(),
        hostname: info.hostname.clone(),
        model: info.model.clone(),
        software_version: info.software_version.clone(),
        base_url: info.base_url.clone(),
        site: info.site.clone(),
        smart_account: info.smart_account.clone(),
        virtual_account: info.virtual_account.clone(),
        username: info.username.clone(),
        password_sealed: secrets.seal(&info.password).unwrap(),
        is_cube: info.is_cube,
        network_license: info.network_license.clone(),
        dna_tier: info.dna_tier.clone().unwrap_or_default(),
        revision: 1,
        groups: vec![],
        voice_role: info.voice_role.clone(),
    }
}
