//! The boot-level client against the fleet simulator over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tally_domain::{DnaTier, NetworkLicense};
use tally_sim::fleet::{Fault, FleetConfig, FleetState, start_fleet};
use tally_southbound::{BootLevel, DeviceClient, SouthboundError};

const RETRIES: u32 = 2;

fn client() -> DeviceClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    DeviceClient::new(Duration::from_secs(5), RETRIES).unwrap()
}

/// A running fleet simulator; it stops with the test's runtime.
async fn fleet(n: usize) -> std::sync::Arc<FleetState> {
    let (_addr, _handle, st) = start_fleet(FleetConfig {
        devices: n,
        seed: 9,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    st
}

fn requests(st: &FleetState) -> u64 {
    st.summary()["boot_level_requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_configures_the_boot_level() {
    let st = fleet(4).await;
    let c = client();
    let url = st.device_url(2);
    let info = st.info(2).unwrap();
    let got = c.boot_level(&url, "admin", "cisco-sim").await.unwrap();
    assert_eq!(got.network.as_str(), info.network_license);
    assert_eq!(got.dna.map(DnaTier::as_str), info.dna_tier.as_deref());

    for want in [
        BootLevel {
            network: NetworkLicense::NetworkAdvantage,
            dna: Some(DnaTier::DnaPremier),
        },
        BootLevel {
            network: NetworkLicense::NetworkEssentials,
            dna: Some(DnaTier::DnaEssentials),
        },
        BootLevel {
            network: NetworkLicense::NetworkAdvantage,
            dna: None,
        },
    ] {
        c.set_boot_level(&url, "admin", "cisco-sim", want.network, want.dna)
            .await
            .unwrap();
        assert_eq!(
            c.boot_level(&url, "admin", "cisco-sim").await.unwrap(),
            want
        );
        assert_eq!(st.configured_level(2).unwrap(), (want.network, want.dna));
    }
    // Configured, not running: the running level changes only at reload.
    assert_eq!(
        st.info(2).unwrap().network_license,
        info.network_license,
        "running level changed before a reload"
    );
}

/// A set that the device refuses: exactly one request (no retry); the error.
async fn refused_set(
    c: &DeviceClient,
    st: &FleetState,
    network: NetworkLicense,
    dna: DnaTier,
) -> SouthboundError {
    let n = requests(st);
    let e = c
        .set_boot_level(&st.device_url(0), "admin", "cisco-sim", network, Some(dna))
        .await
        .unwrap_err();
    assert_eq!(requests(st) - n, 1, "a refusal must not be retried: {e}");
    assert!(!e.is_transient());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_not_retried_and_say_why() {
    let st = fleet(2).await;
    let c = client();
    let url = st.device_url(0);

    // The YANG pairing: only dna-essentials rides on network-essentials.
    let e = refused_set(
        &c,
        &st,
        NetworkLicense::NetworkEssentials,
        DnaTier::DnaAdvantage,
    )
    .await;
    match &e {
        SouthboundError::Refused {
            url: u,
            status,
            tag,
            message,
        } => {
            assert!(u.starts_with(&url), "{u}");
            assert_eq!(*status, 400);
            assert_eq!(tag, "invalid-value");
            assert!(
                message.contains("not allowed with network-essentials"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&url), "{e}");

    // The device refuses the change (configuration locked): 409, one request, reason kept.
    st.set_fault(0, Fault::BootLevelRefused).unwrap();
    let e = refused_set(
        &c,
        &st,
        NetworkLicense::NetworkAdvantage,
        DnaTier::DnaAdvantage,
    )
    .await;
    assert!(
        matches!(&e, SouthboundError::Refused { status: 409, tag, .. } if tag == "lock-denied"),
        "{e:?}"
    );
    assert!(e.to_string().contains("locked"), "{e}");

    // Wrong credentials: 401, not retried.
    let n = requests(&st);
    let e = c.boot_level(&url, "admin", "wrong").await.unwrap_err();
    assert_eq!(requests(&st) - n, 1);
    assert!(
        matches!(e, SouthboundError::Refused { status: 401, .. }),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let st = fleet(2).await;
    let c = client();
    let url = st.device_url(1);
    st.set_fault(1, Fault::Http500).unwrap();
    let n = requests(&st);
    let e = c.boot_level(&url, "admin", "cisco-sim").await.unwrap_err();
    assert_eq!(requests(&st) - n, u64::from(RETRIES) + 1);
    assert!(e.is_transient());
    assert!(
        matches!(e, SouthboundError::Refused { status: 500, .. }),
        "{e:?}"
    );

    // Unreachable devices are transient too, and the error names the device.
    let e = c
        .boot_level("http://127.0.0.1:9", "admin", "cisco-sim")
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains("http://127.0.0.1:9/restconf/"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_report_shows_the_new_tier_after_reload() {
    let st = fleet(30).await;
    let c = client();
    let dev = (0..st.len())
        .find(|i| {
            let d = st.info(*i).unwrap();
            d.model.starts_with("C9200") && d.dna_tier.as_deref() != Some("dna-essentials")
        })
        .unwrap();
    let url = st.device_url(dev);
    c.set_boot_level(
        &url,
        "admin",
        "cisco-sim",
        NetworkLicense::NetworkEssentials,
        Some(DnaTier::DnaEssentials),
    )
    .await
    .unwrap();
    assert!(st.reload(dev).unwrap(), "the reload changed the level");
    let t = tally_southbound::Target {
        base_url: &url,
        username: "admin",
        password: "cisco-sim",
    };
    c.close_reports(&t).await.unwrap();
    let tags: Vec<String> = c
        .all_reports(&t)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            tally_domain::rum::inspect_report(r)
                .unwrap()
                .entitlement_tag
        })
        .collect();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert!(tags[0].contains("C9200_Network_Essentials"), "{tags:?}");
    assert!(tags[1].contains("C9200_DNA_Essentials"), "{tags:?}");
}
