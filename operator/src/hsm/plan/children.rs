//! The desired child objects of a ManagedHsm: pure functions of the spec, the operator's
//! settings and the pool's TLS material. Nothing here talks to the API.

use super::tls::TlsState;
use crate::context::Settings;
use crate::crd::{AntiAffinity, ManagedHsm, SealMode};
use crate::pool::names::{BuildError, Names, PARTITION_PORT, labels, pool_audience, selector};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Annotation on the pod template (and so on each pod) with the hash of the desired template.
pub const TEMPLATE_HASH_ANNOTATION: &str = "keystead.io/template-hash";

const CONFIG_DIR: &str = "/etc/keystead/config";
const TLS_DIR: &str = "/etc/keystead/tls";
const SEAL_DIR: &str = "/etc/keystead/seal";
const DATA_DIR: &str = "/var/lib/keystead";
/// Where the claims of `spec.backupVolumes` are mounted: `<dir>/<claimName>`.
const BACKUP_DIR: &str = "/var/lib/keystead-backups";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the projected peer token (pod-bound, audience [`PEER_AUDIENCE`]) is mounted.
const PEER_TOKEN_DIR: &str = "/var/run/secrets/keystead/peer";
/// Audience of the partitions' peer tokens: a token for the pool's clients is no peer token.
pub const PEER_AUDIENCE: &str = "keystead.io/peer";
/// Lifetime the kubelet is asked for on a projected peer token (it renews at 80%).
const PEER_TOKEN_SECONDS: i64 = 3600;

/// All children of one pool. Destructure it without `..` so no child can be forgotten.
#[derive(Clone, Debug)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub headless_service: Service,
    pub client_service: Service,
    pub config_map: ConfigMap,
    pub ca_bundle: ConfigMap,
    pub ca_secret: Secret,
    pub tls_secret: Secret,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
}

fn owner_reference(hsm: &ManagedHsm) -> Result<OwnerReference, BuildError> {
    hsm.controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))
}

fn meta(hsm: &ManagedHsm, names: &Names, name: &str) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(&names.pool)),
        owner_references: Some(vec![owner_reference(hsm)?]),
        ..ObjectMeta::default()
    })
}

fn typed<T: serde::de::DeserializeOwned>(what: &'static str, v: Value) -> Result<T, BuildError> {
    serde_json::from_value(v).map_err(|e| BuildError::Internal {
        what,
        reason: e.to_string(),
    })
}

/// The partition configuration of one pod: the shared contract
/// [`PartitionConfig`](keystead_core::partition_config::PartitionConfig), as JSON.
pub fn partition_config(hsm: &ManagedHsm, names: &Names, pod: &str, settings: &Settings) -> Value {
    use keystead_core::partition_config as pc;
    let spec = &hsm.spec;
    let audience = pool_audience(hsm, names);
    // The cluster's service-account issuer is always trusted for the peer audience (the
    // partitions' workload identity); for the pool audience only when clients may use
    // service-account tokens. It has no principal prefix: its principals stay
    // `system:serviceaccount:<ns>:<name>` (the operator, the partitions' peer identity).
    let mut sa_audiences = Vec::new();
    if spec.authentication.kubernetes_service_accounts {
        sa_audiences.push(audience.clone());
    }
    sa_audiences.push(PEER_AUDIENCE.to_string());
    let mut issuers = vec![pc::IssuerSettings {
        issuer: settings.service_account_issuer.clone(),
        audiences: sa_audiences,
        principal_prefix: None,
        jwks_file: None,
        ca_file: Some(format!("{SA_DIR}/ca.crt").into()),
        bearer_token_file: Some(format!("{SA_DIR}/token").into()),
    }];
    for i in &spec.authentication.issuers {
        issuers.push(pc::IssuerSettings {
            issuer: i.issuer.clone(),
            audiences: if i.audiences.is_empty() {
                vec![audience.clone()]
            } else {
                i.audiences.clone()
            },
            principal_prefix: i.principal_prefix.clone(),
            jwks_file: None,
            ca_file: None,
            bearer_token_file: None,
        });
    }
    let mut admins = spec.initial_administrators.clone();
    if let Some(p) = &settings.operator_principal
        && !admins.contains(p)
    {
        admins.push(p.clone());
    }
    let seal = match spec.seal.mode {
        SealMode::MemoryOnly => pc::SealSettings::default(),
        SealMode::SealingKeySecret => pc::SealSettings {
            mode: pc::SealMode::SealingKeyFile,
            key_file: Some(format!("{SEAL_DIR}/sealing-key").into()),
        },
    };
    let cfg = pc::PartitionConfig {
        pool_name: names.pool.clone(),
        partition_id: pod.to_string(),
        listen: format!("0.0.0.0:{PARTITION_PORT}"),
        public_url: names.endpoint(spec.service.port),
        data_dir: DATA_DIR.into(),
        tls: pc::TlsFiles {
            cert_file: format!("{TLS_DIR}/{pod}.crt").into(),
            key_file: format!("{TLS_DIR}/{pod}.key").into(),
            ca_file: format!("{TLS_DIR}/ca.crt").into(),
        },
        auth: pc::AuthSettings {
            audience: Some(audience),
            authority: pc::DEFAULT_AUTHORITY.into(),
            issuers,
        },
        initial_administrators: admins,
        soft_delete_retention_days: spec.soft_delete_retention_days.into(),
        purge_protection: spec.purge_protection,
        seal,
        audit: pc::AuditSettings {
            file: None,
            stdout: true,
        },
        peers: peer_settings(hsm, names),
        peer_token_file: Some(format!("{PEER_TOKEN_DIR}/token").into()),
        peer_service_account: Some(names.service_account_principal()),
        host_addresses: BTreeMap::new(),
        backup_filesystem_root: None,
        backup_claims: spec
            .backup_volumes
            .iter()
            .map(|v| (v.claim_name.clone(), backup_mount(&v.claim_name).into()))
            .collect(),
        backup_loopback_endpoints: settings.loopback_storage_endpoints,
        security_domain_redownload: match spec.security_domain_redownload {
            crate::crd::RedownloadPolicy::Allowed => pc::RedownloadPolicy::Allowed,
            crate::crd::RedownloadPolicy::Refused => pc::RedownloadPolicy::Refused,
        },
        limits: pc::Limits::default(),
        read_consistency: match spec.read_consistency {
            crate::crd::ReadConsistency::ReadIndex => pc::ReadConsistency::ReadIndex,
            crate::crd::ReadConsistency::Lease => pc::ReadConsistency::Lease,
        },
    };
    serde_json::to_value(&cfg).unwrap_or(Value::Null)
}

/// Where a backup claim is mounted in the partitions.
pub fn backup_mount(claim: &str) -> String {
    format!("{BACKUP_DIR}/{claim}")
}

/// The Raft members of a pool: node id = ordinal + 1 (stable: a StatefulSet ordinal is never
/// reused for another identity), name = pod name (the certificate's common name), URL =
/// the pod's record in the headless Service.
pub fn peers(hsm: &ManagedHsm, names: &Names) -> Value {
    serde_json::to_value(peer_settings(hsm, names)).unwrap_or(Value::Null)
}

/// [`peers`], typed (what the partition configuration carries).
fn peer_settings(
    hsm: &ManagedHsm,
    names: &Names,
) -> Vec<keystead_core::partition_config::PeerSettings> {
    names
        .pods(hsm.spec.partitions)
        .iter()
        .enumerate()
        .map(|(i, pod)| keystead_core::partition_config::PeerSettings {
            id: i as u64 + 1,
            name: pod.clone(),
            url: names.partition_url(pod),
        })
        .collect()
}

/// SHA-256 (hex) of the pod template, stamped on the template so the rolling upgrade can
/// compare each pod with the desired state.
pub fn template_hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())[..16]
        .to_string()
}

fn pod_template(hsm: &ManagedHsm, names: &Names, config_hash: &str) -> Value {
    let spec = &hsm.spec;
    let sel = selector(&names.pool);
    let affinity_term =
        json!({"labelSelector": {"matchLabels": sel}, "topologyKey": spec.topology_key});
    let pod_anti_affinity = match spec.anti_affinity {
        AntiAffinity::Required => {
            json!({"requiredDuringSchedulingIgnoredDuringExecution": [affinity_term]})
        }
        AntiAffinity::Preferred => {
            json!({"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": affinity_term}]})
        }
    };
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": names.config_map}}),
        json!({"name": "tls", "projected": {"sources": [
            {"secret": {"name": names.tls_secret}},
            {"configMap": {"name": names.ca_bundle, "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
        ], "defaultMode": 0o400}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        // The partition's workload identity towards its peers: a token bound to this pod.
        json!({"name": "peer-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": PEER_AUDIENCE, "expirationSeconds": PEER_TOKEN_SECONDS, "path": "token"}}
        ], "defaultMode": 0o400}}),
    ];
    let mut mounts = vec![
        json!({"name": "data", "mountPath": DATA_DIR}),
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
        json!({"name": "peer-token", "mountPath": PEER_TOKEN_DIR, "readOnly": true}),
    ];
    if let (SealMode::SealingKeySecret, Some(s)) = (&spec.seal.mode, &spec.seal.secret) {
        volumes.push(
            json!({"name": "seal", "secret": {"secretName": s.name, "defaultMode": 0o400,
            "items": [{"key": "sealing-key", "path": "sealing-key"}]}}),
        );
        mounts.push(json!({"name": "seal", "mountPath": SEAL_DIR, "readOnly": true}));
    }
    let mut args = vec![
        "serve".to_string(),
        "--config".into(),
        format!("{CONFIG_DIR}/$(POD_NAME).json"),
    ];
    if spec.replication.is_some() {
        // The region configuration (`replication::plan::region_config`): read at start.
        use crate::replication::plan::{REGION_DIR, REGION_FILE};
        volumes.push(json!({"name": "region", "configMap": {"name": names.region_config}}));
        mounts.push(json!({"name": "region", "mountPath": REGION_DIR, "readOnly": true}));
        args.extend([
            "--region-config".into(),
            format!("{REGION_DIR}/{REGION_FILE}"),
        ]);
    }
    for (i, v) in spec.backup_volumes.iter().enumerate() {
        let name = format!("backup-{i}");
        volumes.push(json!({"name": name, "persistentVolumeClaim": {"claimName": v.claim_name}}));
        mounts.push(json!({"name": name, "mountPath": backup_mount(&v.claim_name)}));
    }
    let probe = |path: &str, period: i32, failures: i32| {
        json!({"httpGet": {"path": path, "port": "https", "scheme": "HTTPS"},
               "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures})
    };
    let mut container = json!({
        "name": "partition",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": "https", "containerPort": PARTITION_PORT, "protocol": "TCP"}],
        "startupProbe": probe("/healthz", 2, 60),
        "livenessProbe": probe("/healthz", 10, 3),
        // Ready only when it can serve what a client asks now: caught up with the group,
        // and holding the domain once the pool is activated (docs/replication.md).
        "readinessProbe": probe("/readyz", 5, 2),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    });
    if let Some(r) = &spec.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let mut template = json!({
        "metadata": {
            "labels": labels(&names.pool),
            "annotations": {"keystead.io/config-hash": config_hash},
        },
        "spec": {
            "serviceAccountName": names.service_account,
            "automountServiceAccountToken": true,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "affinity": {"podAntiAffinity": pod_anti_affinity},
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": spec.topology_key,
                "whenUnsatisfiable": if spec.anti_affinity == AntiAffinity::Required { "DoNotSchedule" } else { "ScheduleAnyway" },
                "labelSelector": {"matchLabels": sel},
            }],
            "containers": [container],
            "volumes": volumes,
        }
    });
    let hash = template_hash(&template);
    template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = Value::String(hash);
    template
}

/// The desired template hash of a built StatefulSet.
pub fn desired_template_hash(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .cloned()
}

/// Build every child of a valid pool.
pub fn build(
    hsm: &ManagedHsm,
    tls: &TlsState,
    settings: &Settings,
) -> Result<Children, BuildError> {
    let names = Names::of(hsm)?;
    let spec = &hsm.spec;
    let pods = names.pods(spec.partitions);
    let sel = selector(&names.pool);

    let service_account = ServiceAccount {
        metadata: meta(hsm, &names, &names.service_account)?,
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };

    let mut headless_service: Service = typed(
        "headless Service",
        json!({"spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": sel,
            "ports": [{"name": "https", "port": PARTITION_PORT, "targetPort": "https", "protocol": "TCP"}],
        }}),
    )?;
    headless_service.metadata = meta(hsm, &names, &names.headless_service)?;

    let mut client_service: Service = typed(
        "client Service",
        json!({"spec": {
            "type": format!("{:?}", spec.service.r#type),
            "selector": sel,
            "ports": [{"name": "https", "port": spec.service.port, "targetPort": "https", "protocol": "TCP"}],
        }}),
    )?;
    client_service.metadata = meta(hsm, &names, &names.client_service)?;

    let mut config_data = BTreeMap::new();
    for pod in &pods {
        let text = serde_json::to_string_pretty(&partition_config(hsm, &names, pod, settings))
            .map_err(|e| BuildError::Internal {
                what: "partition config",
                reason: e.to_string(),
            })?;
        config_data.insert(format!("{pod}.json"), text);
    }
    let config_hash = template_hash(&serde_json::to_value(&config_data).unwrap_or(Value::Null));
    let config_map = ConfigMap {
        metadata: meta(hsm, &names, &names.config_map)?,
        data: Some(config_data),
        ..ConfigMap::default()
    };

    let ca_bundle = ConfigMap {
        metadata: meta(hsm, &names, &names.ca_bundle)?,
        data: Some(BTreeMap::from([(
            "ca.crt".to_string(),
            tls.ca.cert_pem.clone(),
        )])),
        ..ConfigMap::default()
    };
    let ca_secret = Secret {
        metadata: meta(hsm, &names, &names.ca_secret)?,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(tls.ca.cert_pem.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(tls.ca.key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    let mut tls_data = BTreeMap::new();
    for (pod, ck) in &tls.partitions {
        tls_data.insert(
            format!("{pod}.crt"),
            ByteString(ck.cert_pem.as_bytes().to_vec()),
        );
        tls_data.insert(
            format!("{pod}.key"),
            ByteString(ck.key_pem.as_bytes().to_vec()),
        );
    }
    let tls_secret = Secret {
        metadata: meta(hsm, &names, &names.tls_secret)?,
        type_: Some("Opaque".into()),
        data: Some(tls_data),
        ..Secret::default()
    };

    let mut pvc = json!({
        "metadata": {"name": "data", "labels": labels(&names.pool)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.storage.size}}},
    });
    if let Some(sc) = &spec.storage.storage_class_name {
        pvc["spec"]["storageClassName"] = Value::String(sc.clone());
    }
    let mut statefulset: StatefulSet = typed(
        "StatefulSet",
        json!({"spec": {
            "replicas": spec.partitions,
            "serviceName": names.headless_service,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": sel},
            "template": pod_template(hsm, &names, &config_hash),
            "volumeClaimTemplates": [pvc],
        }}),
    )?;
    statefulset.metadata = meta(hsm, &names, &names.statefulset)?;

    let mut pdb: PodDisruptionBudget = typed(
        "PodDisruptionBudget",
        json!({"spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": sel},
        }}),
    )?;
    pdb.metadata = meta(hsm, &names, &names.pdb)?;

    let mut network_policy: NetworkPolicy = typed(
        "NetworkPolicy",
        json!({"spec": {
            "podSelector": {"matchLabels": sel},
            "policyTypes": ["Ingress", "Egress"],
            // Clients anywhere reach the data plane; nothing else is open.
            "ingress": [{"ports": [{"port": PARTITION_PORT, "protocol": "TCP"}]}],
            "egress": [
                // Peers of the same pool (Raft, healing).
                {"to": [{"podSelector": {"matchLabels": sel}}], "ports": [{"port": PARTITION_PORT, "protocol": "TCP"}]},
                // Cluster DNS.
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                // Token issuers (the API server's OIDC discovery and JWKS, external issuers).
                {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
            ],
        }}),
    )?;
    // Other regions (spec.replication) on ports not open above.
    let region_ports = crate::replication::plan::endpoint_ports(spec.replication.as_ref());
    if !region_ports.is_empty()
        && let Some(egress) = network_policy.spec.as_mut().and_then(|s| s.egress.as_mut())
    {
        egress.push(typed(
            "NetworkPolicy egress",
            json!({"ports": region_ports.iter().map(|p| json!({"port": p, "protocol": "TCP"})).collect::<Vec<_>>()}),
        )?);
    }
    network_policy.metadata = meta(hsm, &names, &names.network_policy)?;

    Ok(Children {
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
    })
}

/// Metadata-only helper for tests and the API layer: the name of a built object.
pub fn name_of<K: Resource>(k: &K) -> String {
    k.name_any()
}
