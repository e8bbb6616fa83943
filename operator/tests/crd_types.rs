//! Behaviour of the CRD types themselves: defaults, schema bounds and rules.

use keystead_operator::crd::*;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn spec_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let v = serde_json::to_value(crd).unwrap();
    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

#[test]
fn managed_hsm_defaults_are_production_safe() {
    let spec: ManagedHsmSpec =
        serde_json::from_value(json!({"initialAdministrators": ["alice"]})).unwrap();
    assert_eq!(spec.partitions, 3);
    assert_eq!(spec.soft_delete_retention_days, 90);
    assert!(!spec.purge_protection);
    assert_eq!(spec.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spec.anti_affinity, AntiAffinity::Required);
    assert_eq!(spec.seal.mode, SealMode::MemoryOnly);
    assert!(spec.healing.enabled);
    assert_eq!(spec.storage.size, "1Gi");
}

#[test]
fn managed_hsm_schema_bounds() {
    let s = spec_schema(&ManagedHsm::crd());
    let p = &s["properties"];
    assert_eq!(p["partitions"]["minimum"].as_f64(), Some(3.0));
    assert_eq!(p["partitions"]["maximum"].as_f64(), Some(3.0));
    assert_eq!(p["softDeleteRetentionDays"]["minimum"].as_f64(), Some(7.0));
    assert_eq!(p["softDeleteRetentionDays"]["maximum"].as_f64(), Some(90.0));
    assert_eq!(
        p["purgeProtection"]["x-kubernetes-validations"][0]["rule"],
        "self || !oldSelf"
    );
    assert!(
        s["required"]
            .as_array()
            .unwrap()
            .contains(&json!("initialAdministrators"))
    );
}

#[test]
fn security_domain_schema_bounds() {
    let s = spec_schema(&SecurityDomain::crd());
    let d = &s["properties"]["download"];
    assert_eq!(d["properties"]["certificates"]["minItems"], 3);
    assert_eq!(d["properties"]["certificates"]["maxItems"], 10);
    assert_eq!(d["properties"]["quorum"]["minimum"].as_f64(), Some(2.0));
    let rules: Vec<String> = d["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect();
    assert!(
        rules
            .iter()
            .any(|r| r.contains("self.quorum <= size(self.certificates)"))
    );
    assert_eq!(
        s["properties"]["hsmRef"]["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
}

#[test]
fn every_kind_has_a_short_name_and_printer_columns() {
    for crd in [
        ManagedHsm::crd(),
        SecurityDomain::crd(),
        Backup::crd(),
        BackupSchedule::crd(),
        Restore::crd(),
    ] {
        assert!(
            !crd.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .is_empty()
        );
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(cols.len() >= 3, "{}", crd.spec.names.kind);
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
    }
    let cols: Vec<String> = ManagedHsm::crd().spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(cols, ["Phase", "Ready", "Endpoint", "Region", "Age"]);
}

#[test]
fn backup_schedule_cron_rule_is_five_fields() {
    let s = spec_schema(&BackupSchedule::crd());
    let rule = s["properties"]["schedule"]["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rule.contains("{4}"), "{rule}");
}
