#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the wire formats: what goes in comes out byte for byte.

use proptest::prelude::*;
use tally_domain::bundle::{AckBundle, DeviceFile, UsageBundle, VaUsage};
use tally_domain::{Udi, rum};

fn udi() -> impl Strategy<Value = Udi> {
    ("[A-Z0-9][A-Z0-9-]{0,15}", "[A-Z0-9]{1,12}")
        .prop_map(|(p, s)| Udi::new(p, s).expect("generated UDIs are valid"))
}

proptest! {
    #[test]
    fn envelope_round_trip_is_byte_exact(reports in prop::collection::vec("([ -~\t\näé€]|\\]\\]>){0,200}", 1..5)) {
        // "]]>" is generated often: envelope() splits the CDATA section around it.
        let xml = rum::envelope(&reports).unwrap();
        prop_assert_eq!(rum::parse_envelope(&xml).unwrap(), reports);
    }

    #[test]
    fn report_objects_keep_payload_bytes(u in udi(), id in any::<u64>(), ws in "[ \t]{0,3}") {
        // Whatever whitespace the device put in its payload text survives inspection untouched.
        let payload = format!(
            "{{\"version\":\"2.0\",{ws}\"asset_identification\":{{\"report_id\":{id},\"asset\":{{\"name\":\"regid.x\"}},\"instance\":{{\"sudi\":{}}}}},\"signature\":{{\"signing_type\":\"builtin\",\"key\":\"k\",\"value\":\"v\"}},\"meta\":{{\"entitlement_tag\":\"t\",\"utility_enabled\":false,\"software_version\":\"17.9.4\"}},\"measurements\":[]}}",
            serde_json::to_string(&u).unwrap()
        );
        let obj = rum::report_object(&payload, &rum::ReportSignature {
            sudi: u.clone(), signing_type: "builtin".into(), key: "k".into(), value: "c2ln".into(),
        });
        let info = rum::inspect_report(&obj).unwrap();
        prop_assert_eq!(info.report_id, id);
        prop_assert_eq!(info.udi, u);
        let back: serde_json::Value = serde_json::from_str(&obj).unwrap();
        prop_assert_eq!(back["payload"].as_str().unwrap(), payload.as_str());
    }

    #[test]
    fn bundles_round_trip(files in prop::collection::vec(("[a-f0-9-]{1,36}", "[ -~]{0,300}"), 0..20), ts in 1_000_000_000i64..2_000_000_000) {
        let devices: Vec<DeviceFile> = files.iter().enumerate()
            .map(|(i, (id, c))| DeviceFile { device_id: format!("{id}{i}"), content: c.clone() })
            .collect();
        let usage = UsageBundle {
            created_by: "t".into(), sa_name: "acme".into(), sa_id: "1".into(), timestamp: ts,
            vas: vec![VaUsage { va_name: "Campus".into(), va_id: "2".into(), devices: devices.clone() }],
        };
        prop_assert_eq!(UsageBundle::from_tar_gz(&usage.to_tar_gz().unwrap()).unwrap(), usage);
        let acks = AckBundle { timestamp: ts, vas: vec![("Campus".into(), devices.clone())] };
        match AckBundle::from_tar_gz(&acks.to_tar_gz().unwrap()) {
            Ok(back) => prop_assert_eq!(back, devices),
            Err(_) => prop_assert!(devices.is_empty()),
        }
    }

    #[test]
    fn udi_validation_names_the_bad_field(p in "[A-Z0-9-]{1,10}", s in ".{0,50}") {
        match Udi::new(p.clone(), s.clone()) {
            Ok(u) => prop_assert!(u.udi_serial_number.chars().all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))),
            Err(e) => prop_assert!(e.to_string().contains("udi_serial_number")),
        }
    }
}
