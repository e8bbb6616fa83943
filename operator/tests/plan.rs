//! Pure reconcile tests from YAML fixtures: validation, every child object, TLS rotation,
//! conditions, phase and every lifecycle transition. No API server, no network.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use keystead_core::status::PoolStatus;
use keystead_operator::conditions::{self as c, Cond, Reason, Status};
use keystead_operator::context::Settings;
use keystead_operator::crd::{HsmPhase, ManagedHsm, ManagedHsmStatus};
use keystead_operator::hsm::plan::children;
use keystead_operator::hsm::plan::lifecycle::{self, Action, PurgeDecision, RecoveryDecision};
use keystead_operator::hsm::plan::observed::{self, ObservedPartition};
use keystead_operator::hsm::plan::status;
use keystead_operator::hsm::plan::tls::{self, CertAction, TlsState};
use keystead_operator::hsm::plan::validate::{self, InvalidSpec};
use keystead_operator::pool::names::{self, Names};
use serde::Deserialize;
use std::collections::BTreeMap;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hsm(name: &str) -> ManagedHsm {
    serde_saphyr::from_str(&fixture(name)).expect("fixture parses as a ManagedHsm")
}

fn at(s: &str) -> Time {
    Time(s.parse::<Timestamp>().expect("RFC 3339"))
}

fn test_tls(pods: &[String]) -> TlsState {
    let now = at("2026-01-01T00:00:00Z").0;
    let now = time::OffsetDateTime::from_unix_timestamp(now.as_second()).unwrap();
    let ca = tls::generate_ca("pool", "hsm", 365, now).unwrap();
    let partitions = pods
        .iter()
        .map(|p| {
            (
                p.clone(),
                tls::issue_partition_cert(&ca, p, std::slice::from_ref(p), 90, now).unwrap(),
            )
        })
        .collect();
    TlsState { ca, partitions }
}

fn settings() -> Settings {
    Settings {
        operator_principal: Some("system:serviceaccount:keystead-system:keystead-operator".into()),
        ..Settings::default()
    }
}

fn container(pod: &PodSpec) -> &Container {
    &pod.containers[0]
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

#[test]
fn valid_fixtures_have_no_problems() {
    assert_eq!(
        validate::validate(&hsm("managedhsm-basic.yaml"), &settings()),
        vec![]
    );
    assert_eq!(
        validate::validate(&hsm("managedhsm-full.yaml"), &settings()),
        vec![]
    );
}

#[test]
fn invalid_fixture_reports_every_problem_with_a_typed_reason() {
    let problems = validate::validate(&hsm("managedhsm-invalid.yaml"), &settings());
    let codes: Vec<&str> = problems.iter().map(InvalidSpec::code).collect();
    assert_eq!(
        codes,
        vec![
            "NameNotDns1035",
            "PartitionCount",
            "EmptyImage",
            "DuplicateAdministrator",
            "EmptyAdministrator",
            "SealSecretMissing",
            "RenewBeforeNotBelowValidity",
            "InvalidDnsName",
            "Replication",
            "EmptyAudience",
            "PrincipalPrefixMissing",
            "PrincipalPrefix",
            "PrincipalPrefix",
        ]
    );
    let msg = validate::message(&problems);
    assert!(msg.contains("set partitions: 3"), "{msg}");
    assert!(msg.contains("\"alice\" twice"), "{msg}");
    // Issuers: each problem names the issuer and what to set.
    assert!(
        msg.contains("issuer \"https://login.example.com/tenant\" has no principalPrefix; set one such as \"login:\""),
        "{msg}"
    );
    assert!(
        msg.contains("\"system:kc:\" of issuer \"https://kc.example.com\" overlaps the reserved namespace \"system:\""),
        "{msg}"
    );
    assert!(
        msg.contains("\"a:\" of issuer \"https://a.example.com\" and \"a:b:\" of issuer \"https://b.example.com\" overlap"),
        "{msg}"
    );
}

#[test]
fn listed_issuers_need_a_principal_prefix_and_the_cluster_issuer_is_not_listed() {
    let mut h = hsm("managedhsm-basic.yaml");
    let issuer = |i: &str, p: Option<&str>| -> keystead_operator::crd::OidcIssuer {
        serde_json::from_value(serde_json::json!({"issuer": i, "principalPrefix": p})).unwrap()
    };
    h.spec.authentication.issuers = vec![
        issuer("https://login.example.com", Some("entra:")),
        issuer("https://kc.example.com", Some("kc:")),
    ];
    assert_eq!(validate::validate(&h, &settings()), vec![]);
    h.spec
        .authentication
        .issuers
        .push(issuer("https://dex.example.com", None));
    assert_eq!(
        validate::validate(&h, &settings()),
        vec![InvalidSpec::PrincipalPrefixMissing {
            issuer: "https://dex.example.com".into(),
            suggestion: "dex".into()
        }]
    );
    h.spec.authentication.issuers = vec![issuer(&settings().service_account_issuer, Some("k:"))];
    assert!(matches!(
        validate::validate(&h, &settings())[..],
        [InvalidSpec::ClusterIssuerListed { .. }]
    ));
}

#[test]
fn long_pool_names_are_refused() {
    let mut h = hsm("managedhsm-basic.yaml");
    h.metadata.name = Some("a".repeat(validate::MAX_POOL_NAME + 1));
    assert!(matches!(
        validate::validate(&h, &settings())[..],
        [InvalidSpec::NameTooLong { .. }]
    ));
    h.metadata.name = Some("a".repeat(validate::MAX_POOL_NAME));
    assert_eq!(validate::validate(&h, &settings()), vec![]);
}

#[test]
fn invalid_spec_gives_failed_phase() {
    let now = at("2026-01-01T00:00:00Z");
    let conds = c::merge(&[], &status::invalid_conditions("bad"), Some(2), &now);
    assert_eq!(c::phase(&conds), HsmPhase::Failed);
    assert_eq!(conds[0].reason, "InvalidSpec");
    assert_eq!(conds[0].observed_generation, Some(2));
}

// ---------------------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------------------

#[test]
fn every_child_has_owner_reference_labels_and_namespace() {
    let h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let tls = test_tls(&names.pods(3));
    let children::Children {
        service_account,
        headless_service,
        client_service,
        config_map,
        ca_bundle,
        ca_secret,
        tls_secret,
        statefulset,
        pdb,
        network_policy,
    } = children::build(&h, &tls, &settings()).unwrap();
    let metas = [
        (&service_account.metadata, "pool-partition"),
        (&headless_service.metadata, "pool-peers"),
        (&client_service.metadata, "pool"),
        (&config_map.metadata, "pool-config"),
        (&ca_bundle.metadata, "pool-ca-bundle"),
        (&ca_secret.metadata, "pool-ca"),
        (&tls_secret.metadata, "pool-tls"),
        (&statefulset.metadata, "pool"),
        (&pdb.metadata, "pool"),
        (&network_policy.metadata, "pool"),
    ];
    for (m, name) in metas {
        assert_eq!(m.name.as_deref(), Some(name));
        assert_eq!(m.namespace.as_deref(), Some("hsm"));
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ManagedHsm");
        assert_eq!(owners[0].uid, "0b6f7a52-7c1f-4d43-9d55-2f1d3b1a0001");
        assert_eq!(owners[0].controller, Some(true));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "keystead-partition");
        assert_eq!(labels["app.kubernetes.io/instance"], "pool");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "keystead-operator");
    }
}

#[test]
fn statefulset_of_three_with_required_anti_affinity_and_on_delete() {
    let h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let ch = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    let spec = ch.statefulset.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("pool-peers"));
    assert_eq!(
        spec.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(pvc.metadata.name.as_deref(), Some("data"));
    let req = pvc
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(req["storage"].0, "1Gi");

    let pod = spec.template.spec.as_ref().unwrap();
    let anti = pod
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let req = anti
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    assert_eq!(req[0].topology_key, "topology.kubernetes.io/zone");
    assert!(
        anti.preferred_during_scheduling_ignored_during_execution
            .is_none()
    );
    let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(spread.max_skew, 1);
    assert_eq!(spread.when_unsatisfiable, "DoNotSchedule");

    // Restricted security context.
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let ctr = container(pod);
    let sc = ctr.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &vec!["ALL".to_string()]
    );
    assert!(sc.privileged.is_none());
    assert!(pod.host_network.is_none());

    // Probes, image, config.
    assert_eq!(
        ctr.image.as_deref(),
        Some("ghcr.io/keystead/keystead-partition:0.1.0")
    );
    // Alive: the process answers (/healthz). Ready for the Service: caught up, and holding
    // the domain once the pool is activated (/readyz, docs/replication.md).
    for (probe, path) in [
        (&ctr.readiness_probe, "/readyz"),
        (&ctr.liveness_probe, "/healthz"),
        (&ctr.startup_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }
    assert_eq!(
        ctr.args.as_ref().unwrap(),
        &vec![
            "serve".to_string(),
            "--config".into(),
            "/etc/keystead/config/$(POD_NAME).json".into()
        ]
    );
    let volumes: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, vec!["config", "tls", "tmp", "peer-token"]);
    // The peer token: projected, bound to the pod, for the peer audience only.
    let peer = &pod.volumes.as_ref().unwrap()[3];
    let sat = peer.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some(children::PEER_AUDIENCE));
    assert_eq!(sat.path, "token");
    let mount = ctr
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "peer-token")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/secrets/keystead/peer");
    assert!(children::desired_template_hash(&ch.statefulset).is_some());
}

#[test]
fn preferred_anti_affinity_sealing_resources_and_storage_class() {
    let h = hsm("managedhsm-full.yaml");
    let names = Names::of(&h).unwrap();
    let ch = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    let spec = ch.statefulset.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let anti = pod
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none()
    );
    let pref = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        pref.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert_eq!(
        pod.topology_spread_constraints.as_ref().unwrap()[0].when_unsatisfiable,
        "ScheduleAnyway"
    );
    let seal = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "seal")
        .unwrap();
    assert_eq!(
        seal.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("payments-seal")
    );
    let ctr = container(pod);
    assert_eq!(
        ctr.image.as_deref(),
        Some("registry.example/keystead-partition:0.2.0")
    );
    assert_eq!(
        ctr.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "250m"
    );
    let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(
        pvc.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("fast")
    );
    let svc = ch.client_service.spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(svc.ports.as_ref().unwrap()[0].port, 8443);
}

#[test]
fn services_pdb_network_policy_and_service_account() {
    let h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let ch = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    let headless = ch.headless_service.spec.as_ref().unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert_eq!(
        headless.selector.as_ref().unwrap(),
        &names::selector("pool")
    );
    let client = ch.client_service.spec.as_ref().unwrap();
    assert_eq!(client.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(client.ports.as_ref().unwrap()[0].port, 443);
    assert!(client.publish_not_ready_addresses.is_none());

    let pdb = ch.pdb.spec.as_ref().unwrap();
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap(),
        &names::selector("pool")
    );

    let np = ch.network_policy.spec.as_ref().unwrap();
    assert_eq!(
        np.policy_types.as_ref().unwrap(),
        &vec!["Ingress".to_string(), "Egress".to_string()]
    );
    let ingress = np.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1);
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8443))
    );
    assert_eq!(
        ch.service_account.automount_service_account_token,
        Some(true)
    );
}

#[test]
fn partition_configs_follow_the_partition_contract() {
    let h = hsm("managedhsm-full.yaml");
    let names = Names::of(&h).unwrap();
    let ch = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    let data = ch.config_map.data.as_ref().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        vec!["payments-0.json", "payments-1.json", "payments-2.json"]
    );
    let cfg: serde_json::Value = serde_json::from_str(&data["payments-1.json"]).unwrap();
    assert_eq!(cfg["poolName"], "payments");
    assert_eq!(cfg["partitionId"], "payments-1");
    assert_eq!(cfg["listen"], "0.0.0.0:8443");
    assert_eq!(cfg["publicUrl"], "https://payments.team-a.svc:8443");
    assert_eq!(cfg["tls"]["certFile"], "/etc/keystead/tls/payments-1.crt");
    assert_eq!(cfg["tls"]["caFile"], "/etc/keystead/tls/ca.crt");
    assert_eq!(cfg["auth"]["audience"], "https://hsm.example.com");
    let issuers = cfg["auth"]["issuers"].as_array().unwrap();
    assert_eq!(issuers.len(), 2);
    assert_eq!(
        issuers[0]["audiences"],
        serde_json::json!(["https://hsm.example.com", children::PEER_AUDIENCE])
    );
    assert_eq!(issuers[1]["issuer"], "https://login.example.com");
    // Listed issuers carry their principal prefix; the cluster's issuer has none.
    assert_eq!(issuers[1]["principalPrefix"], "login:");
    assert!(issuers[0].get("principalPrefix").is_none());
    // One Raft group: every member by its headless-Service name, node ids from the ordinals.
    assert_eq!(
        cfg["peers"],
        serde_json::json!([
            {"id": 1, "name": "payments-0", "url": "https://payments-0.payments-peers.team-a.svc:8443"},
            {"id": 2, "name": "payments-1", "url": "https://payments-1.payments-peers.team-a.svc:8443"},
            {"id": 3, "name": "payments-2", "url": "https://payments-2.payments-peers.team-a.svc:8443"},
        ])
    );
    assert_eq!(cfg["peerTokenFile"], "/var/run/secrets/keystead/peer/token");
    assert_eq!(
        cfg["peerServiceAccount"],
        "system:serviceaccount:team-a:payments-partition"
    );
    // The operator's principal is added for the ceremony calls.
    assert_eq!(
        cfg["initialAdministrators"],
        serde_json::json!([
            "alice",
            "bob",
            "system:serviceaccount:keystead-system:keystead-operator"
        ])
    );
    assert_eq!(cfg["softDeleteRetentionDays"], 7);
    assert_eq!(cfg["purgeProtection"], true);
    assert_eq!(cfg["seal"]["mode"], "sealingKeyFile");
    assert_eq!(cfg["seal"]["keyFile"], "/etc/keystead/seal/sealing-key");
    // The partition itself accepts every rendered configuration (deny_unknown_fields).
    for (key, text) in data {
        let parsed: Result<keystead_core::partition_config::PartitionConfig, _> =
            serde_json::from_str(text);
        assert!(parsed.is_ok(), "{key}: {:?}", parsed.err());
        // ... and its own validation (peers include itself, a peer token is configured).
        parsed.unwrap().validate().unwrap();
    }
    let basic = hsm("managedhsm-basic.yaml");
    let cfg =
        children::partition_config(&basic, &Names::of(&basic).unwrap(), "pool-0", &settings());
    let parsed: keystead_core::partition_config::PartitionConfig =
        serde_json::from_value(cfg).unwrap();
    assert_eq!(parsed.seal, Default::default());
    // Without an audience in the spec: the endpoint `https://pool.hsm.svc` minus its first
    // label — never Azure's own audience.
    assert_eq!(parsed.audience(), "https://hsm.svc");
    assert_eq!(
        names::pool_audience(&basic, &Names::of(&basic).unwrap()),
        "https://hsm.svc"
    );
    let mut port = basic.clone();
    port.spec.service.port = 8443;
    assert_eq!(
        names::pool_audience(&port, &Names::of(&port).unwrap()),
        "https://hsm.svc:8443"
    );

    // Without service-account client tokens the cluster issuer stays trusted for peers only.
    let mut no_sa = basic.clone();
    no_sa.spec.authentication.kubernetes_service_accounts = false;
    let cfg =
        children::partition_config(&no_sa, &Names::of(&no_sa).unwrap(), "pool-0", &settings());
    assert_eq!(
        cfg["auth"]["issuers"][0]["audiences"],
        serde_json::json!([children::PEER_AUDIENCE])
    );
}

#[test]
fn secrets_and_ca_bundle_carry_the_tls_material() {
    let h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let tls = test_tls(&names.pods(3));
    let ch = children::build(&h, &tls, &settings()).unwrap();
    assert_eq!(
        ch.ca_bundle.data.as_ref().unwrap()["ca.crt"],
        tls.ca.cert_pem
    );
    assert!(
        ch.ca_bundle.data.as_ref().unwrap()["ca.crt"].starts_with("-----BEGIN CERTIFICATE-----")
    );
    let ca = ch.ca_secret.data.as_ref().unwrap();
    assert_eq!(ch.ca_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert!(ca.contains_key("tls.crt") && ca.contains_key("tls.key"));
    let keys: Vec<&String> = ch.tls_secret.data.as_ref().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "pool-0.crt",
            "pool-0.key",
            "pool-1.crt",
            "pool-1.key",
            "pool-2.crt",
            "pool-2.key"
        ]
    );
    // Debug output never shows key material.
    let dbg = format!("{tls:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
}

#[test]
fn template_hash_changes_with_image_and_config_only() {
    let h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let tls = test_tls(&names.pods(3));
    let base = children::desired_template_hash(
        &children::build(&h, &tls, &settings()).unwrap().statefulset,
    );
    let again = children::desired_template_hash(
        &children::build(&h, &tls, &settings()).unwrap().statefulset,
    );
    assert_eq!(base, again, "building twice gives the same template");
    let mut img = h.clone();
    img.spec.image = "ghcr.io/keystead/keystead-partition:0.2.0".into();
    let new_image = children::desired_template_hash(
        &children::build(&img, &tls, &settings())
            .unwrap()
            .statefulset,
    );
    assert_ne!(base, new_image);
    let mut cfg = h.clone();
    cfg.spec.soft_delete_retention_days = 30;
    let new_cfg = children::desired_template_hash(
        &children::build(&cfg, &tls, &settings())
            .unwrap()
            .statefulset,
    );
    assert_ne!(
        base, new_cfg,
        "a configuration change rolls the partitions too"
    );
}

#[test]
fn certificates_carry_every_partition_dns_name() {
    let names = Names::new("pool", "hsm");
    let dns = names.partition_dns_names("pool-1", "cluster.local", &["hsm.example.com".into()]);
    for want in [
        "pool-1.pool-peers.hsm.svc",
        "pool-1.pool-peers.hsm.svc.cluster.local",
        "pool.hsm.svc",
        "hsm.example.com",
    ] {
        assert!(dns.iter().any(|d| d == want), "{want} missing from {dns:?}");
    }
    assert_eq!(
        names.partition_url("pool-1"),
        "https://pool-1.pool-peers.hsm.svc:8443"
    );
    assert_eq!(names.endpoint(443), "https://pool.hsm.svc");
}

// ---------------------------------------------------------------------------------------
// TLS rotation
// ---------------------------------------------------------------------------------------

fn odt(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn renewal_is_a_function_of_not_after_and_renew_before_days() {
    let not_after = odt("2026-03-31T00:00:00Z");
    assert!(!tls::needs_renewal(
        not_after,
        odt("2026-02-28T23:59:59Z"),
        30
    ));
    assert!(tls::needs_renewal(
        not_after,
        odt("2026-03-01T00:00:00Z"),
        30
    ));
    assert!(tls::needs_renewal(
        not_after,
        odt("2026-04-01T00:00:00Z"),
        30
    ));
    assert!(!tls::needs_renewal(
        not_after,
        odt("2026-03-29T23:59:59Z"),
        1
    ));
}

#[test]
fn plan_issues_keeps_and_renews() {
    let now = odt("2026-01-01T00:00:00Z");
    let pods: Vec<String> = vec!["pool-0".into(), "pool-1".into()];
    let fresh = tls::plan_tls(None, &BTreeMap::new(), &pods, 30, now);
    assert_eq!(fresh.ca, CertAction::Issue);
    assert!(fresh.partitions.values().all(|a| *a == CertAction::Issue));

    let ca = tls::generate_ca("pool", "hsm", 365, now).unwrap();
    let short = tls::issue_partition_cert(&ca, "pool-0", &["pool-0".into()], 40, now).unwrap();
    let long = tls::issue_partition_cert(&ca, "pool-1", &["pool-1".into()], 90, now).unwrap();
    let existing = BTreeMap::from([
        ("pool-0".to_string(), short.cert_pem.clone()),
        ("pool-1".to_string(), long.cert_pem.clone()),
    ]);
    let plan = tls::plan_tls(Some(&ca.cert_pem), &existing, &pods, 30, now);
    assert!(plan.is_noop(), "{plan:?}");
    let later = now + time::Duration::days(11);
    let plan = tls::plan_tls(Some(&ca.cert_pem), &existing, &pods, 30, later);
    assert_eq!(plan.ca, CertAction::Keep);
    assert_eq!(plan.partitions["pool-0"], CertAction::Renew);
    assert_eq!(plan.partitions["pool-1"], CertAction::Keep);

    // A CA close to expiry re-issues everything.
    let plan = tls::plan_tls(
        Some(&ca.cert_pem),
        &existing,
        &pods,
        30,
        now + time::Duration::days(340),
    );
    assert_eq!(plan.ca, CertAction::Renew);
    assert!(plan.partitions.values().all(|a| *a == CertAction::Renew));
    // Garbage in a Secret is renewed, not a crash.
    let bad = BTreeMap::from([("pool-0".to_string(), "not pem".to_string())]);
    let plan = tls::plan_tls(Some(&ca.cert_pem), &bad, &pods, 30, now);
    assert_eq!(plan.partitions["pool-0"], CertAction::Renew);
    assert_eq!(plan.partitions["pool-1"], CertAction::Issue);
}

#[test]
fn issued_certificates_have_the_requested_validity() {
    let now = odt("2026-01-01T00:00:00Z");
    let ca = tls::generate_ca("pool", "hsm", 365, now).unwrap();
    let leaf = tls::issue_partition_cert(
        &ca,
        "pool-0",
        &["pool-0.pool-peers.hsm.svc".into()],
        90,
        now,
    )
    .unwrap();
    assert_eq!(
        tls::cert_not_after(&leaf.cert_pem, "leaf").unwrap(),
        now + time::Duration::days(90)
    );
    assert_eq!(
        tls::cert_not_after(&ca.cert_pem, "ca").unwrap(),
        now + time::Duration::days(365)
    );
    assert!(
        tls::cert_not_after("garbage", "x")
            .unwrap_err()
            .to_string()
            .contains("delete the Secret")
    );
}

// ---------------------------------------------------------------------------------------
// Conditions, phase, transitions
// ---------------------------------------------------------------------------------------

#[test]
fn merge_keeps_transition_time_when_status_is_unchanged() {
    let t0 = at("2026-01-01T00:00:00Z");
    let t1 = at("2026-01-01T01:00:00Z");
    let first = c::merge(
        &[],
        &[Cond::new(
            c::READY,
            Status::False,
            Reason::Provisioning,
            "a",
        )],
        Some(1),
        &t0,
    );
    let same = c::merge(
        &first,
        &[Cond::new(
            c::READY,
            Status::False,
            Reason::WaitingForSecurityDomain,
            "b",
        )],
        Some(2),
        &t1,
    );
    assert_eq!(
        same[0].last_transition_time, t0,
        "status unchanged: time kept"
    );
    assert_eq!(same[0].reason, "WaitingForSecurityDomain");
    assert_eq!(same[0].observed_generation, Some(2));
    let flipped = c::merge(
        &same,
        &[Cond::new(c::READY, Status::True, Reason::PoolReady, "c")],
        Some(2),
        &t1,
    );
    assert_eq!(flipped[0].last_transition_time, t1);
    // Other condition types survive; output is sorted by type.
    let other = Condition {
        type_: "Zeta".into(),
        status: "True".into(),
        reason: "X".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: t0.clone(),
    };
    let mut with_other = flipped.clone();
    with_other.insert(0, other);
    let merged = c::merge(
        &with_other,
        &[Cond::new(c::READY, Status::True, Reason::PoolReady, "c")],
        Some(2),
        &t1,
    );
    assert_eq!(
        merged.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
        vec!["Ready", "Zeta"]
    );
    // Idempotent: merging the same fresh conditions again changes nothing.
    assert_eq!(
        c::merge(
            &merged,
            &[Cond::new(c::READY, Status::True, Reason::PoolReady, "c")],
            Some(2),
            &t1
        ),
        merged
    );
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Expect {
    phase: HsmPhase,
    ready: String,
    ready_reason: String,
    healthy_reason: String,
    sd_status: String,
    action: String,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    unhealthy_since: BTreeMap<String, String>,
    #[serde(default)]
    requeue_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Scenario {
    name: String,
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    healing_enabled: Option<bool>,
    #[serde(default)]
    previous: Option<ManagedHsmStatus>,
    observed: Vec<ObservedPartition>,
    expect: Expect,
}

fn action_str(a: &Action) -> String {
    match a {
        Action::None => "None".into(),
        Action::ReplacePod { pod, .. } => format!("ReplacePod:{pod}"),
        Action::ReplacePodAndVolume { pod, pvc, .. } => format!("ReplacePodAndVolume:{pod}:{pvc}"),
        Action::UpgradePod { pod } => format!("UpgradePod:{pod}"),
    }
}

#[test]
fn every_transition_from_the_fixture() {
    let scenarios: Vec<Scenario> = serde_saphyr::from_str(&fixture("transitions.yaml")).unwrap();
    assert!(scenarios.len() >= 15);
    let base = hsm("managedhsm-basic.yaml");
    let names = Names::of(&base).unwrap();
    for s in scenarios {
        let mut spec = base.spec.clone();
        if let Some(e) = s.healing_enabled {
            spec.healing.enabled = e;
        }
        let now = at(s.now.as_deref().unwrap_or("2026-01-01T00:10:00Z"));
        let d = status::derive_status(&spec, &s.observed, "h", s.previous.as_ref(), &now);
        let conds = c::merge(
            s.previous
                .as_ref()
                .map(|p| &p.conditions[..])
                .unwrap_or(&[]),
            &d.conditions,
            Some(3),
            &now,
        );
        let get = |t: &str| c::find(&conds, t).unwrap_or_else(|| panic!("{}: no {t}", s.name));
        let n = &s.name;
        assert_eq!(c::phase(&conds), s.expect.phase, "{n}: phase");
        assert_eq!(get(c::READY).status, s.expect.ready, "{n}: Ready");
        assert_eq!(
            get(c::READY).reason,
            s.expect.ready_reason,
            "{n}: Ready reason"
        );
        assert_eq!(
            get(c::PARTITIONS_HEALTHY).reason,
            s.expect.healthy_reason,
            "{n}: PartitionsHealthy reason"
        );
        assert_eq!(
            get(c::SECURITY_DOMAIN_ACTIVATED).status,
            s.expect.sd_status,
            "{n}: SecurityDomainActivated"
        );
        assert_eq!(get(c::LAST_BACKUP_SUCCEEDED).status, "Unknown", "{n}");
        assert!(
            conds.iter().all(|c| c.observed_generation == Some(3)),
            "{n}: observedGeneration"
        );
        assert_eq!(d.fingerprint, s.expect.fingerprint, "{n}: fingerprint");
        for (pod, since) in &s.expect.unhealthy_since {
            let st = d.partitions.iter().find(|p| &p.name == pod).unwrap();
            assert_eq!(
                st.unhealthy_since.as_ref(),
                Some(&at(since)),
                "{n}: unhealthySince of {pod}"
            );
            assert!(!st.ready && st.message.is_some(), "{n}");
        }
        if let Some(secs) = s.expect.requeue_seconds {
            assert_eq!(
                d.requeue_after,
                Some(std::time::Duration::from_secs(secs)),
                "{n}: requeue"
            );
        }
        let action = lifecycle::next_action(&spec, &s.observed, &d.partitions, "h", &now, |p| {
            names.pvc(p)
        });
        assert_eq!(action_str(&action), s.expect.action, "{n}: action");
    }
}

#[test]
fn healthy_partitions_clear_their_unhealthy_clock() {
    let spec = hsm("managedhsm-basic.yaml").spec;
    let now = at("2026-01-01T00:10:00Z");
    let prev: ManagedHsmStatus = serde_json::from_value(serde_json::json!({
        "partitions": [{"name": "pool-0", "ready": false, "unhealthySince": "2026-01-01T00:00:00Z"}]
    }))
    .unwrap();
    let obs: Vec<ObservedPartition> = serde_json::from_value(serde_json::json!([
        {"name": "pool-0", "podExists": true, "podReady": true, "templateHash": "h", "admin": {"activation": "Activated", "domainLoaded": true}}
    ]))
    .unwrap();
    let d = status::derive_status(&spec, &obs, "h", Some(&prev), &now);
    assert_eq!(d.partitions[0].unhealthy_since, None);
    assert!(d.partitions[0].ready);
}

/// The readiness probe is `/readyz`: a partition that answers with the domain but has not
/// caught up is not Ready (no Service traffic), yet healing does not replace it for that —
/// catching up a large pool can take longer than the threshold. Without the domain the
/// clock runs as before.
#[test]
fn a_partition_catching_up_is_not_ready_but_is_not_replaced_for_it() {
    let base = hsm("managedhsm-basic.yaml");
    let names = Names::of(&base).unwrap();
    let spec = base.spec;
    let now = at("2026-01-01T00:10:00Z");
    let prev: ManagedHsmStatus = serde_json::from_value(serde_json::json!({
        "partitions": [{"name": "pool-0", "ready": false, "unhealthySince": "2026-01-01T00:00:00Z"}]
    }))
    .unwrap();
    let observed = |domain_loaded: bool| -> Vec<ObservedPartition> {
        serde_json::from_value(serde_json::json!([
            {"name": "pool-0", "podExists": true, "podReady": false, "templateHash": "h",
             "admin": {"activation": "Activated", "domainLoaded": domain_loaded}},
            {"name": "pool-1", "podExists": true, "podReady": true, "templateHash": "h",
             "admin": {"activation": "Activated", "domainLoaded": true}},
            {"name": "pool-2", "podExists": true, "podReady": true, "templateHash": "h",
             "admin": {"activation": "Activated", "domainLoaded": true}},
        ]))
        .unwrap()
    };
    let catching_up = observed(true);
    let d = status::derive_status(&spec, &catching_up, "h", Some(&prev), &now);
    let p0 = &d.partitions[0];
    assert!(!p0.ready);
    assert_eq!(
        p0.unhealthy_since, None,
        "no healing clock while it catches up"
    );
    assert!(
        p0.message
            .as_deref()
            .is_some_and(|m| m.contains("not caught up")),
        "{:?}",
        p0.message
    );
    let action = lifecycle::next_action(&spec, &catching_up, &d.partitions, "h", &now, |p| {
        names.pvc(p)
    });
    assert_eq!(action_str(&action), "None");

    let sealed = observed(false);
    let d = status::derive_status(&spec, &sealed, "h", Some(&prev), &now);
    assert_eq!(
        d.partitions[0].unhealthy_since,
        Some(at("2026-01-01T00:00:00Z"))
    );
    assert!(
        d.partitions[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("domain key is not loaded")),
        "{:?}",
        d.partitions[0].message
    );
    let action = lifecycle::next_action(&spec, &sealed, &d.partitions, "h", &now, |p| names.pvc(p));
    assert_eq!(action_str(&action), "ReplacePod:pool-0");
}

// ---------------------------------------------------------------------------------------
// Soft delete, purge, recovery
// ---------------------------------------------------------------------------------------

#[test]
fn soft_delete_annotations_and_purge_decisions() {
    let deleted: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let ann = lifecycle::soft_delete_annotations(deleted, 7, true);
    assert_eq!(
        ann[lifecycle::PURGE_AFTER_ANNOTATION],
        "2026-01-08T00:00:00Z"
    );
    assert_eq!(ann[lifecycle::PURGE_PROTECTED_ANNOTATION], "true");
    let until: Timestamp = "2026-01-08T00:00:00Z".parse().unwrap();
    let before: Timestamp = "2026-01-07T23:59:59Z".parse().unwrap();

    assert_eq!(
        lifecycle::purge_decision(&ann, before),
        PurgeDecision::Keep { until }
    );
    assert_eq!(lifecycle::purge_decision(&ann, until), PurgeDecision::Purge);

    let mut early = ann.clone();
    early.insert(lifecycle::PURGE_REQUEST_ANNOTATION.into(), "true".into());
    assert_eq!(
        lifecycle::purge_decision(&early, before),
        PurgeDecision::EarlyPurgeRefused { until }
    );
    assert_eq!(
        lifecycle::purge_decision(&early, until),
        PurgeDecision::Purge
    );

    let mut unprotected = lifecycle::soft_delete_annotations(deleted, 7, false);
    assert_eq!(
        lifecycle::purge_decision(&unprotected, before),
        PurgeDecision::Keep { until }
    );
    unprotected.insert(lifecycle::PURGE_REQUEST_ANNOTATION.into(), "true".into());
    assert_eq!(
        lifecycle::purge_decision(&unprotected, before),
        PurgeDecision::Purge
    );

    assert_eq!(
        lifecycle::purge_decision(&BTreeMap::new(), before),
        PurgeDecision::NotSoftDeleted
    );
    let garbage = BTreeMap::from([(
        lifecycle::PURGE_AFTER_ANNOTATION.to_string(),
        "soon".to_string(),
    )]);
    assert!(matches!(
        lifecycle::purge_decision(&garbage, before),
        PurgeDecision::Unreadable(_)
    ));
}

#[test]
fn recovery_decisions() {
    let until: Timestamp = "2026-01-08T00:00:00Z".parse().unwrap();
    assert_eq!(
        lifecycle::recovery_decision(false, None),
        RecoveryDecision::Fresh
    );
    assert_eq!(
        lifecycle::recovery_decision(true, Some(Some(until))),
        RecoveryDecision::Recover
    );
    assert_eq!(
        lifecycle::recovery_decision(false, Some(Some(until))),
        RecoveryDecision::Conflict { until: Some(until) }
    );
    assert_eq!(
        lifecycle::recovery_decision(true, None),
        RecoveryDecision::NothingToRecover
    );
}

#[test]
fn raft_role_term_and_lag_come_from_the_partitions_replication_view() {
    use keystead_operator::hsm::plan::observed::{ObservedPartition, fill_replication};
    // The shape of `GET /admin/status` of a replicated partition (role lowercase, nested).
    let admin = |role: &str, members: serde_json::Value| {
        serde_json::from_value(serde_json::json!({
            "activation": "Activated", "domainLoaded": true, "appliedIndex": 7,
            "replication": {"nodeId": 1, "name": "x", "role": role, "term": 3,
                            "leader": "pool-1", "members": members},
        }))
        .unwrap()
    };
    let leader_view = serde_json::json!([
        {"nodeId": 1, "name": "pool-0", "voter": true, "matchedIndex": 7, "lag": 0},
        {"nodeId": 2, "name": "pool-1", "voter": true, "matchedIndex": 7, "lag": 0},
        {"nodeId": 3, "name": "pool-2", "voter": true, "matchedIndex": 2, "lag": 5},
    ]);
    let follower_view = serde_json::json!([{"nodeId": 1, "name": "pool-0", "voter": true}]);
    let mut observed: Vec<ObservedPartition> = ["pool-0", "pool-1", "pool-2"]
        .iter()
        .map(|n| ObservedPartition {
            name: n.to_string(),
            admin: Some(if *n == "pool-1" {
                admin("leader", leader_view.clone())
            } else {
                admin("follower", follower_view.clone())
            }),
            ..Default::default()
        })
        .collect();
    fill_replication(&mut observed);
    use keystead_operator::hsm::plan::observed::{role, term};
    let a = |i: usize| observed[i].admin.clone().unwrap();
    assert_eq!(role(&a(1)), Some("leader"));
    assert_eq!(role(&a(0)), Some("follower"));
    assert_eq!(term(&a(0)), Some(3));
    assert_eq!(observed[2].lag, Some(5));
    assert_eq!(observed[0].lag, Some(0));
}

#[test]
fn backup_volumes_are_mounted_in_every_partition_and_named_in_its_config() {
    let mut h = hsm("managedhsm-basic.yaml");
    let names = Names::of(&h).unwrap();
    let without = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    h.spec.backup_volumes = serde_json::from_value(
        serde_json::json!([{"claimName": "hsm-backups"}, {"claimName": "dr"}]),
    )
    .unwrap();
    let ch = children::build(&h, &test_tls(&names.pods(3)), &settings()).unwrap();
    let pod = ch
        .statefulset
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let claims: Vec<(String, String)> = pod
        .volumes
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            let c = v.persistent_volume_claim.as_ref()?;
            Some((v.name.clone(), c.claim_name.clone()))
        })
        .collect();
    assert_eq!(
        claims,
        vec![
            ("backup-0".to_string(), "hsm-backups".to_string()),
            ("backup-1".to_string(), "dr".to_string())
        ]
    );
    let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
    for (volume, path) in [
        ("backup-0", "/var/lib/keystead-backups/hsm-backups"),
        ("backup-1", "/var/lib/keystead-backups/dr"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| m.name == volume && m.mount_path == path && m.read_only != Some(true)),
            "{volume} at {path}: {mounts:?}"
        );
    }
    // The partition resolves pvc://<claim>/... to the mount; it takes no file:// at all.
    let cfg = children::partition_config(&h, &names, "pool-0", &settings());
    let parsed: keystead_core::partition_config::PartitionConfig =
        serde_json::from_value(cfg).unwrap();
    assert_eq!(parsed.backup_filesystem_root, None);
    assert_eq!(
        parsed
            .backup_claims
            .get("hsm-backups")
            .map(|p| p.display().to_string()),
        Some("/var/lib/keystead-backups/hsm-backups".to_string())
    );
    // Adding a claim changes the pod template: the partitions roll to mount it.
    assert_ne!(
        children::desired_template_hash(&without.statefulset),
        children::desired_template_hash(&ch.statefulset)
    );
}

/// A re-download of the security domain the pool reports and the status has not counted
/// yet gives one Warning Event note naming who and when; once counted, none.
#[test]
fn a_security_domain_redownload_is_reported_once_naming_who() {
    let admin = |n: i64| -> PoolStatus {
        serde_json::from_value(serde_json::json!({
            "activation": "Activated", "securityDomainRedownloads": n,
            "lastSecurityDomainRedownload": {"principal": "system:serviceaccount:ops:mallory",
                "time": 1_796_000_000, "wrappingKeys": 3, "quorum": 2},
        }))
        .unwrap()
    };
    let observed: Vec<ObservedPartition> = [(0, 1), (1, 2), (2, 1)]
        .iter()
        .map(|(i, n)| ObservedPartition {
            name: format!("pool-{i}"),
            admin: Some(admin(*n)),
            ..Default::default()
        })
        .collect();
    let (count, note) = observed::redownload_note(&observed, 0).expect("a new re-download");
    assert_eq!(count, 2, "the highest count any partition reports");
    assert!(note.contains("system:serviceaccount:ops:mallory"), "{note}");
    assert!(note.contains("2026-"), "a readable time: {note}");
    assert!(note.contains("quorum 2"), "{note}");
    assert!(
        observed::redownload_note(&observed, 2).is_none(),
        "already reported"
    );
    let silent: Vec<ObservedPartition> = vec![ObservedPartition {
        name: "pool-0".into(),
        admin: Some(
            serde_json::from_value(serde_json::json!({"activation": "Activated"})).unwrap(),
        ),
        ..Default::default()
    }];
    assert!(observed::redownload_note(&silent, 0).is_none());
}

/// The configuration the operator writes for the first partition of `h`.
fn first_partition_config(h: &ManagedHsm) -> serde_json::Value {
    let names = Names::of(h).unwrap();
    let pod = names.pods(3)[0].clone();
    children::partition_config(h, &names, &pod, &settings())
}

#[test]
fn the_redownload_policy_reaches_the_partition_config() {
    let mut h = hsm("managedhsm-basic.yaml");
    let cfg = first_partition_config(&h);
    assert_eq!(cfg["securityDomainRedownload"], "allowed");
    h.spec.security_domain_redownload = keystead_operator::crd::RedownloadPolicy::Refused;
    let cfg = first_partition_config(&h);
    assert_eq!(cfg["securityDomainRedownload"], "refused");
    // The partition takes what the operator writes.
    let parsed: keystead_core::partition_config::PartitionConfig =
        serde_json::from_value(cfg).unwrap();
    assert_eq!(
        parsed.security_domain_redownload,
        keystead_core::partition_config::RedownloadPolicy::Refused
    );
}

#[test]
fn the_read_consistency_reaches_the_partition_config_and_changes_its_hash() {
    let mut h = hsm("managedhsm-basic.yaml");
    let before = first_partition_config(&h);
    // The default is left out of the file (read-index rounds).
    assert!(before.get("readConsistency").is_none(), "{before}");
    h.spec.read_consistency = keystead_operator::crd::ReadConsistency::Lease;
    let cfg = first_partition_config(&h);
    assert_eq!(cfg["readConsistency"], "lease");
    assert_ne!(
        cfg, before,
        "a change of the field changes the configuration (and its hash)"
    );
    let parsed: keystead_core::partition_config::PartitionConfig =
        serde_json::from_value(cfg).unwrap();
    assert_eq!(
        parsed.read_consistency,
        keystead_core::partition_config::ReadConsistency::Lease
    );
}

#[test]
fn a_partition_certificate_that_misses_an_extra_name_or_address_is_not_kept() {
    let now = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    let ca = tls::generate_ca("pool", "hsm", 365, now).unwrap();
    let names = vec!["pool-0".to_string(), "127.100.0.7".to_string()];
    let cert = tls::issue_partition_cert(&ca, "pool-0", &names, 90, now).unwrap();
    assert!(tls::names_cover(&cert.cert_pem, &names));
    assert!(tls::names_cover(&cert.cert_pem, &names[..1]));
    let more = [names.clone(), vec!["127.100.0.8".to_string()]].concat();
    assert!(!tls::names_cover(&cert.cert_pem, &more), "a new address");
    let more = [names, vec!["hsm.example.com".to_string()]].concat();
    assert!(!tls::names_cover(&cert.cert_pem, &more), "a new DNS name");
}
