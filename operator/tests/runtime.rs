//! Runtime pieces without a cluster: the Lease decision, metrics exposition, the
//! SecurityDomain certificate handling and status builder.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use keystead_operator::crd::{SecurityDomainPhase, SecurityDomainStatus};
use keystead_operator::leader::{self, LeaseDecision};
use keystead_operator::metrics::Metrics;
use keystead_operator::security_domain::plan as sd_plan;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn lease(holder: Option<&str>, renewed: Option<&str>) -> Lease {
    Lease {
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|r| MicroTime(ts(r))),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    }
}

#[test]
fn lease_decisions() {
    let now = ts("2026-01-01T00:00:20Z");
    assert_eq!(leader::decide(None, "a", now), LeaseDecision::Create);
    assert_eq!(
        leader::decide(
            Some(&lease(Some("a"), Some("2026-01-01T00:00:00Z"))),
            "a",
            now
        ),
        LeaseDecision::Renew
    );
    assert_eq!(
        leader::decide(
            Some(&lease(Some("b"), Some("2026-01-01T00:00:10Z"))),
            "a",
            now
        ),
        LeaseDecision::Follow { holder: "b".into() }
    );
    // Expired at 00:00:15 + ... renewed at 00:00:04 → ends 00:00:19 < now.
    assert_eq!(
        leader::decide(
            Some(&lease(Some("b"), Some("2026-01-01T00:00:04Z"))),
            "a",
            now
        ),
        LeaseDecision::TakeOver
    );
    assert_eq!(
        leader::decide(Some(&lease(None, None)), "a", now),
        LeaseDecision::TakeOver
    );
    assert_eq!(
        leader::decide(Some(&lease(Some("b"), None)), "a", now),
        LeaseDecision::TakeOver
    );
}

#[test]
fn metrics_exposition_has_every_family() {
    let m = Metrics::default();
    m.reconcile_started("managedhsm");
    m.failure("managedhsm", "kube_api");
    m.observe_duration("managedhsm", 0.2);
    m.pool_health("hsm", "pool", 2, true);
    m.leader.set(1);
    let text = m.render();
    for want in [
        "keystead_operator_reconciles_total{controller=\"managedhsm\"} 1",
        "keystead_operator_reconcile_errors_total{controller=\"managedhsm\",reason=\"kube_api\"} 1",
        "keystead_operator_reconcile_duration_seconds_count{controller=\"managedhsm\"} 1",
        "keystead_operator_pool_healthy_partitions{namespace=\"hsm\",pool=\"pool\"} 2",
        "keystead_operator_pool_ready{namespace=\"hsm\",pool=\"pool\"} 1",
        "keystead_operator_leader 1",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    m.forget_pool("hsm", "pool");
    assert!(!m.render().contains("pool=\"pool\""));
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
    let c = sd_plan::custodians(&pems).unwrap();
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
    assert_eq!(
        sd_plan::custodians(&rev).unwrap().thumbprints,
        c.thumbprints
    );

    let too_few = sd_plan::custodians(&pems[..2]).unwrap_err();
    assert!(too_few.contains("3 to 10"), "{too_few}");
    let dup =
        sd_plan::custodians(&[pems[0].clone(), pems[0].clone(), pems[1].clone()]).unwrap_err();
    assert!(dup.contains("twice"), "{dup}");
    let bad =
        sd_plan::custodians(&["junk".to_string(), pems[0].clone(), pems[1].clone()]).unwrap_err();
    assert!(bad.starts_with("certificate 1"), "{bad}");
}

#[test]
fn security_domain_status_keeps_transition_times() {
    let t0 = Time(ts("2026-01-01T00:00:00Z"));
    let t1 = Time(ts("2026-01-01T00:05:00Z"));
    let s0 = sd_plan::status_for(
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
    let s1 = sd_plan::status_for(
        &s0,
        SecurityDomainPhase::WaitingForTransferBlob,
        "WaitingForTransferBlob",
        "x",
        Some(1),
        &t1,
    );
    assert_eq!(s0, s1, "same phase later: identical status (no write)");
    let s2 = sd_plan::status_for(
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
