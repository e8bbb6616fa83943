//! Runtime pieces without a cluster: the Lease decision and the metrics exposition (the
//! SecurityDomain's certificate handling and status builder are in sd_plan.rs).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use keystead_operator::leader::{self, LeaseDecision};
use keystead_operator::metrics::Metrics;

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
