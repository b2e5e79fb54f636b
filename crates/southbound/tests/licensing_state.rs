//! The licensing-state reader against the fleet simulator over real HTTP: policy and last ACK
//! read, RESTCONF missing or refused told apart from real errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tally_domain::policy::{Policy, PolicyAttrs};
use tally_domain::sign::Signer;
use tally_sim::ack::{AckBody, build_ack_document};
use tally_sim::fleet::{Fault, FleetConfig, FleetState, start_fleet};
use tally_sim::yang_state::SimPolicy;
use tally_southbound::{DeviceClient, PolicyType, SouthboundError, StateRead, Target};

fn client() -> DeviceClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    DeviceClient::new(Duration::from_secs(5), 1).unwrap()
}

async fn fleet(n: usize) -> std::sync::Arc<FleetState> {
    let (_addr, _handle, st) = start_fleet(FleetConfig {
        devices: n,
        seed: 11,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    st
}

fn ack(st: &FleetState, i: usize) {
    st.close_reports(i).unwrap();
    let ids = st
        .unacked_reports(i)
        .unwrap()
        .iter()
        .map(|t| tally_domain::rum::inspect_report(t).unwrap().report_id)
        .collect();
    let info = st.info(i).unwrap();
    let body = AckBody {
        version: "1.0".into(),
        sudi: st.udi(i).unwrap(),
        report_ids: ids,
        ack_time: chrono::Utc::now().timestamp(),
        smart_account: info.smart_account,
        virtual_account: info.virtual_account,
        status: "ACK".into(),
    };
    let signer = Signer::derive(b"tally-sim-cssm", "cssm-ack").unwrap();
    st.import_ack(i, &build_ack_document(&body, &signer, "k"))
        .unwrap();
}

async fn read(c: &DeviceClient, base: &str, password: &str) -> Result<StateRead, SouthboundError> {
    c.licensing_state(&Target {
        base_url: base,
        username: "admin",
        password,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_policy_and_last_ack() {
    let st = fleet(3).await;
    let c = client();
    st.set_policy(1, SimPolicy::Custom306060).unwrap();
    let StateRead::Read(s0) = read(&c, &st.device_url(0), "cisco-sim").await.unwrap() else {
        panic!("device 0 has RESTCONF");
    };
    assert_eq!(s0.smart_enabled, Some(true));
    assert_eq!(s0.last_ack_received, None);
    let p0 = s0.policy.unwrap();
    assert_eq!(p0.policy_type, Some(PolicyType::CiscoDefault));
    assert_eq!(p0.to_policy(), (Policy::cisco_default(), vec![]));

    ack(&st, 1);
    let StateRead::Read(s1) = read(&c, &st.device_url(1), "cisco-sim").await.unwrap() else {
        panic!("device 1 has RESTCONF");
    };
    let last = st.last_ack_time(1).unwrap().unwrap();
    assert_eq!(s1.last_ack_received, Some(last));
    assert_eq!(
        s1.next_ack_deadline,
        Some(last + chrono::TimeDelta::days(60))
    );
    let (p1, missing) = s1.policy.unwrap().to_policy();
    assert!(missing.is_empty());
    assert_eq!(p1.name, "Custom 30/60/60");
    assert_eq!(p1.subscription, PolicyAttrs::new(30, 60, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_restconf_is_an_outcome_not_an_error() {
    let st = fleet(2).await;
    let c = client();
    st.set_restconf(1, false).unwrap();
    match read(&c, &st.device_url(1), "cisco-sim").await.unwrap() {
        StateRead::Unavailable(r) => assert!(r.contains("HTTP 404"), "{r}"),
        other => panic!("{other:?}"),
    }
    // Credentials RESTCONF will not take.
    match read(&c, &st.device_url(0), "wrong").await.unwrap() {
        StateRead::Unavailable(r) => assert!(r.contains("HTTP 401"), "{r}"),
        other => panic!("{other:?}"),
    }
    // Nothing listening: a closed loopback port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    match read(&c, &format!("http://127.0.0.1:{port}"), "x")
        .await
        .unwrap()
    {
        StateRead::Unavailable(r) => assert!(r.contains("refused the connection"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_errors() {
    let st = fleet(1).await;
    let c = client();
    st.set_fault(0, Fault::Http500).unwrap();
    let e = read(&c, &st.device_url(0), "cisco-sim").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("500"), "{e}");
}
