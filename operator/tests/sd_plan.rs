//! The SecurityDomain plan without a cluster: every gate of a ceremony's reconcile, the
//! status and requeue each outcome carries, the custodians' certificates and the status
//! builder.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use keystead_core::status::PoolStatus;
use keystead_operator::crd::{
    DownloadSpec, ManagedHsm, SecurityDomain, SecurityDomainPhase, SecurityDomainStatus,
};
use keystead_operator::pool::names::Names;
use keystead_operator::security_domain::plan::{self, Ceremony, Custodians, Outcome};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;
use std::time::Duration;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn now() -> Time {
    Time(ts("2026-01-01T00:00:00Z"))
}

fn sd(mode: &str, status: Option<SecurityDomainStatus>) -> SecurityDomain {
    let mut sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "activation", "namespace": "hsm", "generation": 2},
        "spec": {"hsmRef": {"name": "pool"}, "mode": mode,
                 "download": {"certificates": ["a", "b", "c"], "quorum": 2}, "upload": {}},
    }))
    .unwrap();
    sd.status = status;
    sd
}

fn pool(ready: usize) -> ManagedHsm {
    let partitions: Vec<_> = (0..3)
        .map(|i| json!({"name": format!("pool-{i}"), "ready": i < ready}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
        "metadata": {"name": "pool", "namespace": "hsm"},
        "spec": {"initialAdministrators": ["alice"]},
        "status": {"partitions": partitions},
    }))
    .unwrap()
}

fn activated(generation: i64, thumbprints: &[&str]) -> SecurityDomainStatus {
    SecurityDomainStatus {
        phase: Some(SecurityDomainPhase::Activated),
        observed_generation: Some(generation),
        wrapping_key_thumbprints: thumbprints.iter().map(|t| t.to_string()).collect(),
        fingerprint: Some("fp-old".into()),
        ..SecurityDomainStatus::default()
    }
}

fn secs(s: u64) -> Requeue {
    Requeue::requeue(Duration::from_secs(s))
}

/// Phase, reason of the `Ready` condition and requeue of an outcome that writes.
fn written(o: &Outcome) -> (SecurityDomainPhase, String, Requeue) {
    let st = o.status.as_ref().expect("a status to write");
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (
        st.phase.clone().unwrap(),
        ready.reason.clone(),
        o.requeue.clone(),
    )
}

#[test]
fn the_pool_gate_waits_for_a_pool_that_runs_and_keeps_a_finished_ceremony() {
    let cer = Ceremony::of(&sd("Download", None), now());
    let missing = cer.pool(None).unwrap_err();
    assert_eq!(
        written(&missing),
        (
            SecurityDomainPhase::Pending,
            "PoolNotFound".into(),
            secs(30)
        )
    );
    let not_ready = cer.pool(Some(pool(1))).unwrap_err();
    assert_eq!(
        written(&not_ready),
        (
            SecurityDomainPhase::Pending,
            "PoolNotReady".into(),
            secs(15)
        )
    );
    assert!(cer.pool(Some(pool(2))).is_ok());

    // Activated at this generation: the pool's dip is waited out without a write.
    let done = Ceremony::of(&sd("Download", Some(activated(2, &["t"]))), now());
    assert_eq!(
        done.pool(Some(pool(1))).unwrap_err(),
        Outcome::later(secs(60))
    );
    // Activated at an older generation: the new spec waits like a new ceremony.
    let changed = Ceremony::of(&sd("Download", Some(activated(1, &["t"]))), now());
    let o = changed.pool(Some(pool(0))).unwrap_err();
    assert_eq!(written(&o).1, "PoolNotReady");
}

#[test]
fn the_ca_bundle_and_the_pool_connection_are_waited_for() {
    let cer = Ceremony::of(&sd("Download", None), now());
    let o = cer.no_ca_bundle(&Names::new("pool", "hsm"));
    assert_eq!(
        written(&o),
        (
            SecurityDomainPhase::Pending,
            "PoolNotReady".into(),
            secs(15)
        )
    );
    assert!(
        o.status.unwrap().conditions[0]
            .message
            .contains("pool-ca-bundle")
    );
    let o = cer.unreachable("no token");
    assert_eq!(
        written(&o),
        (
            SecurityDomainPhase::Pending,
            "PoolUnreachable".into(),
            secs(15)
        )
    );
}

#[test]
fn a_download_spec_is_refused_until_it_changes() {
    let cer = Ceremony::of(&sd("Download", None), now());
    assert_eq!(
        written(&cer.no_download_spec()),
        (
            SecurityDomainPhase::Failed,
            "InvalidSpec".into(),
            Requeue::await_change()
        )
    );
    assert_eq!(
        written(&cer.certificates_not_found("custodians")),
        (
            SecurityDomainPhase::Pending,
            "CertificatesNotFound".into(),
            secs(30)
        )
    );
    let pems: Vec<String> = (0..3).map(custodian_cert).collect();
    let dl = |quorum| DownloadSpec {
        certificates: Some(pems.clone()),
        certificates_from: None,
        quorum,
    };
    assert_eq!(cer.custodians(&dl(3), &pems).unwrap().jwks.len(), 3);
    for quorum in [1, 4] {
        let refused = cer.custodians(&dl(quorum), &pems).unwrap_err();
        assert_eq!(
            written(&refused),
            (
                SecurityDomainPhase::Failed,
                "InvalidSpec".into(),
                Requeue::await_change()
            )
        );
    }
    let refused = cer.custodians(&dl(2), &pems[..2]).unwrap_err();
    assert_eq!(written(&refused).1, "InvalidCertificates");
}

fn custodians(thumbprints: &[&str]) -> Custodians {
    Custodians {
        jwks: vec![],
        thumbprints: thumbprints.iter().map(|t| t.to_string()).collect(),
    }
}

#[test]
fn a_download_is_made_once_per_set_of_custodians() {
    let fresh = Ceremony::of(&sd("Download", None), now());
    let same = custodians(&["a", "b", "c"]);
    let none = SecurityDomainStatus::default();
    assert!(!fresh.download_finished(&same, &none));
    // The API server's current status says it is done while the cache lags: done.
    assert!(fresh.download_finished(&same, &activated(2, &["a", "b", "c"])));
    let done = Ceremony::of(&sd("Download", Some(activated(2, &["a", "b", "c"]))), now());
    assert!(done.download_finished(&same, &none));
    // New custodians: a new download (a re-split of the domain).
    assert!(!done.download_finished(&custodians(&["a", "b", "d"]), &none));
    assert_eq!(done.finished(), Outcome::later(secs(600)));

    assert_eq!(
        written(&fresh.download_failed("refused")),
        (
            SecurityDomainPhase::Failed,
            "DownloadFailed".into(),
            secs(60)
        )
    );
    let o = done.downloaded(custodians(&["a", "b", "d"]), None);
    assert_eq!(
        written(&o),
        (
            SecurityDomainPhase::Activated,
            "Activated".into(),
            secs(600)
        )
    );
    let st = o.status.unwrap();
    assert_eq!(st.domain_secret.as_deref(), Some("activation-domain"));
    assert_eq!(st.wrapping_key_thumbprints, ["a", "b", "d"]);
    assert_eq!(
        st.fingerprint.as_deref(),
        Some("fp-old"),
        "an unreadable fingerprint keeps the known one"
    );
    let st = done.downloaded(same, Some("fp-new".into())).status.unwrap();
    assert_eq!(st.fingerprint.as_deref(), Some("fp-new"));
}

#[test]
fn an_upload_publishes_the_exchange_key_then_waits_for_the_blob() {
    let fresh = Ceremony::of(&sd("Upload", None), now());
    assert!(!fresh.upload_finished());
    assert!(
        fresh.needs_exchange_key(true),
        "the status does not name it yet"
    );
    assert!(fresh.needs_exchange_key(false));
    let named = SecurityDomainStatus {
        exchange_key_config_map: Some("activation-exchange".into()),
        ..SecurityDomainStatus::default()
    };
    let waiting = Ceremony::of(&sd("Upload", Some(named)), now());
    assert!(!waiting.needs_exchange_key(true));
    assert!(
        waiting.needs_exchange_key(false),
        "its ConfigMap was deleted"
    );
    assert_eq!(
        written(&fresh.exchange_key_failed("no")),
        (
            SecurityDomainPhase::Failed,
            "ExchangeKeyFailed".into(),
            secs(60)
        )
    );

    let o = fresh.waiting_for_blob();
    assert_eq!(
        written(&o),
        (
            SecurityDomainPhase::WaitingForTransferBlob,
            "WaitingForTransferBlob".into(),
            secs(30)
        )
    );
    assert_eq!(
        o.status.unwrap().exchange_key_config_map.as_deref(),
        Some("activation-exchange")
    );

    let failed = fresh.uploaded(Err("bad blob".into()));
    assert_eq!(
        written(&failed),
        (SecurityDomainPhase::Failed, "UploadFailed".into(), secs(60))
    );
    assert_eq!(
        failed.status.unwrap().exchange_key_config_map.as_deref(),
        Some("activation-exchange")
    );
    let ok = fresh.uploaded(Ok(Some("fp".into())));
    assert_eq!(
        written(&ok),
        (
            SecurityDomainPhase::Activated,
            "Activated".into(),
            secs(600)
        )
    );
    assert_eq!(ok.status.unwrap().fingerprint.as_deref(), Some("fp"));
    let done = Ceremony::of(&sd("Upload", Some(activated(2, &[]))), now());
    assert!(done.upload_finished());
}

#[test]
fn a_refused_upload_counts_when_the_pool_already_holds_its_domain() {
    let admin = |activation: &str, loaded: bool| -> PoolStatus {
        serde_json::from_value(json!({"activation": activation, "domainLoaded": loaded})).unwrap()
    };
    assert!(plan::already_uploaded(Some(&admin("Activated", true))));
    assert!(!plan::already_uploaded(Some(&admin("Activated", false))));
    assert!(!plan::already_uploaded(Some(&admin(
        "RecoveryPending",
        true
    ))));
    assert!(!plan::already_uploaded(None));
}

#[test]
fn the_ceremony_talks_to_the_first_ready_partition_that_stays() {
    let names = Names::new("pool", "hsm");
    let pod = |name: &str, ready: bool, deleting: bool| -> Option<Pod> {
        let mut p = json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Some(serde_json::from_value(p).unwrap())
    };
    let pods = [None, pod("pool-1", true, true), pod("pool-2", true, false)];
    assert_eq!(plan::target(&names, &pods), "pool-2");
    assert_eq!(
        plan::target(&names, &[pod("pool-0", false, false), None]),
        "pool-0"
    );
}

fn custodian_cert(i: usize) -> String {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let params = rcgen::CertificateParams::new(vec![format!("custodian-{i}")]).unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn custodian_certificates_become_jwks_with_sorted_thumbprints() {
    let pems: Vec<String> = (0..3).map(custodian_cert).collect();
    let c = plan::custodians(&pems).unwrap();
    assert_eq!(c.jwks.len(), 3);
    assert!(
        c.jwks
            .iter()
            .all(|j| j["kty"] == "RSA" && j["x5c"].is_array())
    );
    let mut sorted = c.thumbprints.clone();
    sorted.sort();
    assert_eq!(c.thumbprints, sorted);
    // Order of the input does not change the thumbprint set (re-download detection).
    let mut rev = pems.clone();
    rev.reverse();
    assert_eq!(plan::custodians(&rev).unwrap().thumbprints, c.thumbprints);

    let too_few = plan::custodians(&pems[..2]).unwrap_err();
    assert!(too_few.contains("3 to 10"), "{too_few}");
    let dup = plan::custodians(&[pems[0].clone(), pems[0].clone(), pems[1].clone()]).unwrap_err();
    assert!(dup.contains("twice"), "{dup}");
    let bad =
        plan::custodians(&["junk".to_string(), pems[0].clone(), pems[1].clone()]).unwrap_err();
    assert!(bad.starts_with("certificate 1"), "{bad}");
}

#[test]
fn security_domain_status_keeps_transition_times() {
    let t0 = Time(ts("2026-01-01T00:00:00Z"));
    let t1 = Time(ts("2026-01-01T00:05:00Z"));
    let s0 = plan::status_for(
        &SecurityDomainStatus::default(),
        SecurityDomainPhase::WaitingForTransferBlob,
        "WaitingForTransferBlob",
        "x",
        Some(1),
        &t0,
    );
    assert_eq!(
        s0.conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect::<Vec<_>>(),
        vec!["Ready", "SecurityDomainActivated"]
    );
    let s1 = plan::status_for(
        &s0,
        SecurityDomainPhase::WaitingForTransferBlob,
        "WaitingForTransferBlob",
        "x",
        Some(1),
        &t1,
    );
    assert_eq!(s0, s1, "same phase later: identical status (no write)");
    let s2 = plan::status_for(
        &s1,
        SecurityDomainPhase::Activated,
        "Activated",
        "y",
        Some(1),
        &t1,
    );
    assert!(
        s2.conditions
            .iter()
            .all(|c| c.status == "True" && c.last_transition_time == t1)
    );
    assert_eq!(s2.last_transition_time, Some(t1));
}
