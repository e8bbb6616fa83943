//! Custom resources of Keystead: group `keystead.io`, version `v1alpha1`.
//!
//! Over 600 lines on purpose: this file is the single source of the generated CRD schemas
//! (every field's documentation becomes the schema's description), read as one contract;
//! split by resource it would scatter the shared references (`HsmReference`, secrets,
//! destinations) that several resources embed.
//!
//! These types are the API contract. `keystead-operator crdgen` turns them into the YAML in
//! `crds/` (and the chart's copy); a test fails when the committed YAML drifts.
//!
//! Conditions are the contract; `phase` is derived from them for `kubectl get`, never the
//! other way round. Validation lives in the schema (OpenAPI bounds and CEL rules) wherever
//! Kubernetes can enforce it.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod replication;
pub use replication::{
    CaConfigMapRef, PeerRegion, RegionLag, ReplicationRole, ReplicationSpec, ReplicationStatus,
};

pub const GROUP: &str = "keystead.io";
pub const VERSION: &str = "v1alpha1";

// ---------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------

/// A reference to the ManagedHsm (pool) in the same namespace. Immutable once set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "the pool reference is immutable; create a new object to target another pool"}
]))]
pub struct HsmReference {
    /// Name of the ManagedHsm in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret; each kind documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A reference to a Secret holding object-store credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

// ---------------------------------------------------------------------------------------
// ManagedHsm
// ---------------------------------------------------------------------------------------

/// A pool of three replicated HSM partitions, owned by a customer security domain.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keystead.io",
    version = "v1alpha1",
    kind = "ManagedHsm",
    plural = "managedhsms",
    singular = "managedhsm",
    shortname = "mhsm",
    category = "keystead",
    namespaced,
    status = "ManagedHsmStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyPartitions","description":"Ready partitions out of the pool's partitions"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".status.replication.role","description":"Region role (spec.replication)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedHsmSpec {
    /// Container image of the partition.
    #[serde(default = "default_image")]
    pub image: String,

    /// Number of partitions. Fixed to 3 in v1alpha1: a Raft group of three tolerates the loss
    /// of one partition without losing an acknowledged change.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 3, max = 3))]
    pub partitions: i32,

    /// Persistent storage of each partition (Raft log, snapshots; wrapped material only).
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory of each partition container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node label that partitions are spread across (required anti-affinity).
    /// On a single-zone cluster set it to `kubernetes.io/hostname`.
    #[serde(default = "default_topology_key")]
    #[schemars(length(min = 1, max = 316))]
    pub topology_key: String,

    /// `Required` (default) refuses to schedule two partitions in one topology domain;
    /// `Preferred` allows it when the cluster has fewer domains than partitions.
    #[serde(default)]
    pub anti_affinity: AntiAffinity,

    /// Principals (token subjects) granted the Managed HSM Administrator role at scope `/`
    /// when the pool is created. Needed to run the security-domain ceremony.
    #[schemars(length(min = 1, max = 32))]
    pub initial_administrators: Vec<String>,

    /// How long soft-deleted keys, and a deleted pool, stay recoverable (7–90 days).
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 7, max = 90))]
    pub soft_delete_retention_days: i32,

    /// When true, nothing soft-deleted (keys, the pool) can be purged before its retention
    /// ends. Once enabled it can never be disabled.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self || !oldSelf", "message": "purgeProtection cannot be disabled once it has been enabled"}
    ]))]
    pub purge_protection: bool,

    /// TLS of the data plane and of partition-to-partition traffic. TLS is always on.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Token issuers whose bearer tokens the pool accepts.
    #[serde(default)]
    pub authentication: AuthenticationSpec,

    /// How a partition keeps the domain key across restarts.
    #[serde(default)]
    pub seal: SealSpec,

    /// Healing policy for partitions that stay unhealthy.
    #[serde(default)]
    pub healing: HealingSpec,

    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Region replication (docs/regions.md): this pool as the primary or a replica region
    /// of a topology of pools in several clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,

    /// Re-create a soft-deleted pool of the same name from its retained data instead of
    /// provisioning a new one.
    #[serde(default)]
    pub recover: bool,

    /// Whether an Administrator may download the activated security domain again, to
    /// custodian certificates of its choosing. `Refused` (opt-in): the domain leaves the
    /// pool only as the file made at activation. Either way every re-download raises a
    /// Warning Event `SecurityDomainDownloaded` naming who did it.
    #[serde(default)]
    pub security_domain_redownload: RedownloadPolicy,

    /// How reads are made linearizable (docs/replication.md). `ReadIndex` (default): the
    /// leader confirms its leadership with a quorum for every batch of reads. `Lease`
    /// (opt-in): for 900 ms after a confirmation the leader reads alone — faster (no
    /// round per batch), assuming the nodes' clocks run at about the same rate. A change
    /// restarts the partitions one at a time.
    #[serde(default)]
    pub read_consistency: ReadConsistency,

    /// PersistentVolumeClaims that `filesystem` backup destinations may name. Each is
    /// mounted into every partition (`/var/lib/keystead-backups/<claimName>`); the
    /// partitions run on different nodes, so a claim must be ReadWriteMany. Changing the
    /// list rolls the partitions one at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["claimName"]))]
    pub backup_volumes: Vec<BackupVolume>,
}

/// A PersistentVolumeClaim of the pool's namespace mounted into the partitions for backups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolume {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub claim_name: String,
}

fn default_image() -> String {
    "ghcr.io/keystead/keystead-partition:0.1.0".to_string()
}
fn default_partitions() -> i32 {
    3
}
fn default_topology_key() -> String {
    "topology.kubernetes.io/zone".to_string()
}
fn default_retention_days() -> i32 {
    90
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AntiAffinity {
    #[default]
    Required,
    Preferred,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each partition's volume, as a Kubernetes quantity.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Validity of the pool's internal CA.
    #[serde(default = "default_ca_validity_days")]
    #[schemars(range(min = 30, max = 3650))]
    pub ca_validity_days: i32,
    /// Validity of each partition's serving certificate.
    #[serde(default = "default_cert_validity_days")]
    #[schemars(range(min = 1, max = 397))]
    pub certificate_validity_days: i32,
    /// Certificates are re-issued this many days before they expire.
    #[serde(default = "default_renew_before_days")]
    #[schemars(range(min = 1, max = 180))]
    pub renew_before_days: i32,
    /// Extra DNS names for the client-facing certificate (for example an Ingress host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_dns_names: Vec<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            ca_validity_days: default_ca_validity_days(),
            certificate_validity_days: default_cert_validity_days(),
            renew_before_days: default_renew_before_days(),
            extra_dns_names: Vec::new(),
        }
    }
}

fn default_ca_validity_days() -> i32 {
    1825
}
fn default_cert_validity_days() -> i32 {
    90
}
fn default_renew_before_days() -> i32 {
    30
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationSpec {
    /// Accept service-account tokens of this cluster (audience `audience`).
    #[serde(default = "default_true")]
    pub kubernetes_service_accounts: bool,
    /// Audience that tokens must carry, and the `resource` of the 401 challenge. Default:
    /// the pool's endpoint host without its first label (`https://<namespace>.svc`, with
    /// `:<port>` unless the port is 443), so the Azure SDKs' challenge-resource check passes
    /// for the endpoint `https://<pool>.<namespace>.svc[:port]`. Set
    /// `https://managedhsm.azure.net` only to accept tokens issued for Azure's own Managed
    /// HSM (docs/authentication.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Further OIDC issuers (discovery at `{issuer}/.well-known/openid-configuration`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub issuers: Vec<OidcIssuer>,
}

impl Default for AuthenticationSpec {
    fn default() -> Self {
        Self {
            kubernetes_service_accounts: true,
            audience: None,
            issuers: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OidcIssuer {
    /// Issuer URL (`iss` claim); must be https.
    #[schemars(regex(pattern = r"^https://"))]
    pub issuer: String,
    /// Audiences accepted from this issuer; the pool audience when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Put before this issuer's token subjects to form their principals (for example
    /// `entra:` makes the subject `alice` the principal `entra:alice`), so that no issuer
    /// can mint another's principals — the cluster's service accounts keep theirs
    /// unprefixed. Required; no prefix may start with another, nor overlap `system:` or
    /// `partition:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub principal_prefix: Option<String>,
    /// ConfigMap key holding a CA bundle to reach the issuer, when it is not publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealSpec {
    /// `MemoryOnly` (default): the domain key lives only in partition memory; a partition
    /// that restarts gets it again from a healthy peer, and a restart of all three needs a
    /// security-domain upload. `SealingKeySecret`: the domain key is sealed on disk under a
    /// key mounted from a Secret, so a whole pool restarts unattended.
    #[serde(default)]
    pub mode: SealMode,
    /// With `SealingKeySecret`: the Secret (key `sealing-key`, 32 random bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReadConsistency {
    #[default]
    ReadIndex,
    Lease,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RedownloadPolicy {
    #[default]
    Allowed,
    Refused,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SealMode {
    #[default]
    MemoryOnly,
    SealingKeySecret,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealingSpec {
    /// Replace a partition automatically when it stays unhealthy this long.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds a partition may stay unhealthy before it is replaced.
    #[serde(default = "default_unhealthy_seconds")]
    #[schemars(range(min = 30, max = 86400))]
    pub unhealthy_threshold_seconds: i32,
}

impl Default for HealingSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            unhealthy_threshold_seconds: default_unhealthy_seconds(),
        }
    }
}

fn default_unhealthy_seconds() -> i32 {
    300
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Type of the client Service.
    #[serde(default)]
    pub r#type: ServiceType,
    /// Port of the client Service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            r#type: ServiceType::default(),
            port: default_port(),
        }
    }
}

fn default_port() -> i32 {
    443
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    LoadBalancer,
    NodePort,
}

/// Observed state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedHsmStatus {
    /// Summary for `kubectl get`, derived from the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HsmPhase>,
    /// `Ready`, `PartitionsHealthy`, `SecurityDomainActivated`, `LastBackupSucceeded`,
    /// `ReplicationHealthy`; see docs/operator.md for every reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready partitions out of the total, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_partitions: Option<String>,
    /// Per-partition health, read from the partitions' admin API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
    /// Data-plane endpoint of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The audience tokens for this pool must carry (`spec.authentication.audience` or its
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// ConfigMap (key `ca.crt`) with the CA bundle clients must trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_config_map: Option<String>,
    /// SHA-256 fingerprint of the activated security domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_domain_fingerprint: Option<String>,
    /// How many times the activated security domain was downloaded again (each raised a
    /// Warning Event `SecurityDomainDownloaded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_domain_redownloads: Option<i64>,
    /// Last completed backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupReference>,
    /// Next scheduled backup of any BackupSchedule for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_backup_time: Option<Time>,
    /// Region replication: role, epoch, position and lag (`spec.replication` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    /// Set while the pool is soft-deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_purge_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum HsmPhase {
    Provisioning,
    Provisioned,
    Activated,
    RecoveryPending,
    Degraded,
    Healing,
    SoftDeleted,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Pod name of the partition.
    pub name: String,
    /// Whether the partition serves requests.
    pub ready: bool,
    /// Raft role as the partition reports it: `leader`, `follower`, `candidate` or `learner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<i64>,
    /// Log entries behind the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Since when the partition has been unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    /// Name of the Backup object.
    pub name: String,
    /// Folder of the backup in its store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

// ---------------------------------------------------------------------------------------
// SecurityDomain
// ---------------------------------------------------------------------------------------

/// The security-domain ceremony of one pool: activation by download, or recovery by upload.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keystead.io",
    version = "v1alpha1",
    kind = "SecurityDomain",
    plural = "securitydomains",
    singular = "securitydomain",
    shortname = "hsmsd",
    category = "keystead",
    namespaced,
    status = "SecurityDomainStatus",
    printcolumn = r#"{"name":"HSM","type":"string","jsonPath":".spec.hsmRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Fingerprint","type":"string","jsonPath":".status.fingerprint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.mode != 'Download' || has(self.download)", "message": "mode Download needs spec.download (the custodians' certificates and the quorum)"},
    {"rule": "self.mode != 'Upload' || has(self.upload)", "message": "mode Upload needs spec.upload (it may be empty until the transfer blob exists)"}
]))]
pub struct SecurityDomainSpec {
    /// The pool this ceremony is for (immutable).
    pub hsm_ref: HsmReference,
    /// `Download`: activate a new pool, or re-protect an active pool's domain with new
    /// wrapping keys. `Upload`: recover a pool from a security domain.
    pub mode: SecurityDomainMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<DownloadSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum SecurityDomainMode {
    Download,
    Upload,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.certificates) != has(self.certificatesFrom)", "message": "give the custodians' certificates either inline (certificates) or from a ConfigMap (certificatesFrom), not both"},
    {"rule": "!has(self.certificates) || self.quorum <= size(self.certificates)", "message": "quorum must not exceed the number of wrapping keys"}
]))]
pub struct DownloadSpec {
    /// PEM certificates (RSA, 2048 bits or more) of the 3–10 custodians, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 10))]
    pub certificates: Option<Vec<String>>,
    /// A ConfigMap whose values are the custodians' PEM certificates (3–10 entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_from: Option<ConfigMapRef>,
    /// How many custodian keys are needed to recover the domain (2..number of keys).
    #[schemars(range(min = 2, max = 10))]
    pub quorum: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadSpec {
    /// The Secret (default key `transfer.json`) with the transfer blob the custodians made
    /// offline with `kubectl hsm sd transfer` for the published exchange key. Until it is
    /// set the ceremony waits in `WaitingForTransferBlob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_blob_secret: Option<SecretKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityDomainStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SecurityDomainPhase>,
    /// `Ready`, `SecurityDomainActivated`; see docs/operator.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Secret holding the encrypted security-domain file (key `security-domain.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_secret: Option<String>,
    /// ConfigMap publishing the pool's one-time exchange certificate (key `exchange.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_key_config_map: Option<String>,
    /// SHA-256 fingerprint of the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// SHA-256 thumbprints of the wrapping keys currently protecting the domain file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrapping_key_thumbprints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum SecurityDomainPhase {
    Pending,
    Downloading,
    WaitingForTransferBlob,
    Uploading,
    Activated,
    Failed,
}

// ---------------------------------------------------------------------------------------
// Backup destinations
// ---------------------------------------------------------------------------------------

/// Where a backup goes. Exactly one store is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.filesystem), has(self.s3), has(self.azureBlob), has(self.gcs)].filter(x, x).size() == 1", "message": "set exactly one of filesystem, s3, azureBlob, gcs"}
]))]
pub struct BackupDestination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<AzureBlobDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsDestination>,
}

/// A PersistentVolumeClaim mounted into the partitions: one listed in the pool's
/// `spec.backupVolumes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemDestination {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub claim_name: String,
    /// Folder inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint of an S3-compatible server; AWS when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials: SecretRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureBlobDestination {
    /// `https://{account}.blob.core.windows.net/{container}` (or an emulator URL).
    #[schemars(regex(pattern = r"^https?://"))]
    pub container_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with either `sasToken` or `accountKey`.
    pub credentials: SecretRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsDestination {
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with `service-account.json`.
    pub credentials: SecretRef,
}

// ---------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------

/// One full backup, or a backup of one key, of a pool to an object store.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keystead.io",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    singular = "backup",
    shortname = "hsmbackup",
    category = "keystead",
    namespaced,
    status = "BackupStatus",
    printcolumn = r#"{"name":"HSM","type":"string","jsonPath":".spec.hsmRef.name"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.keyName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keyCount"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a Backup is immutable once created; create a new Backup instead"}
]))]
pub struct BackupSpec {
    /// The pool to back up.
    pub hsm_ref: HsmReference,
    /// Back up only this key (all its versions); a full backup when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub key_name: Option<String>,
    pub destination: BackupDestination,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Job id of the pool's backup operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The partition (pod) that runs the job: job status lives in that partition's memory,
    /// so it is polled there (and lost if that partition restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_partition: Option<String>,
    /// URL of the backup folder, known from the job's start (the folder is complete only
    /// when the Backup has Succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Keys in the backup (soft-deleted keys not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i64>,
    /// Soft-deleted keys in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_key_count: Option<i64>,
    /// Bytes of the backup folder (chunks and manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// SHA-256 of the backup manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Fingerprint of the security domain the backup is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_domain_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Derived from the `Succeeded` condition (see docs/operator.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

// ---------------------------------------------------------------------------------------
// BackupSchedule
// ---------------------------------------------------------------------------------------

/// Backups of a pool on a standard 5-field cron schedule, with retention.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keystead.io",
    version = "v1alpha1",
    kind = "BackupSchedule",
    plural = "backupschedules",
    singular = "backupschedule",
    shortname = "hsmbs",
    category = "keystead",
    namespaced,
    status = "BackupScheduleStatus",
    printcolumn = r#"{"name":"HSM","type":"string","jsonPath":".spec.hsmRef.name"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"date","jsonPath":".status.nextScheduleTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// The pool to back up (immutable).
    pub hsm_ref: HsmReference,
    /// Standard 5-field cron (minute hour day-of-month month day-of-week), in UTC.
    /// Not seconds-first.
    #[schemars(length(min = 9, max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^\\\\s*[0-9A-Za-z*/,?-]+(\\\\s+[0-9A-Za-z*/,?-]+){4}\\\\s*$')", "message": "schedule must be a standard 5-field cron expression (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"}
    ]))]
    pub schedule: String,
    /// Stop creating new backups; existing ones and retention are kept.
    #[serde(default)]
    pub suspend: bool,
    /// Take the first backup immediately instead of waiting for the first cron time.
    #[serde(default)]
    pub immediate: bool,
    /// Back up only this key; full backups when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub key_name: Option<String>,
    pub destination: BackupDestination,
    #[serde(default)]
    pub retention: RetentionSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many successful backups (the newest ones); failed ones older than
    /// the newest success are deleted too.
    #[serde(default = "default_keep_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_count: i32,
    /// Delete backups older than this many days (never the newest successful one, never a
    /// running one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_age_days: Option<i32>,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            max_count: default_keep_count(),
            max_age_days: None,
        }
    }
}

fn default_keep_count() -> i32 {
    7
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// `Ready` (the schedule is valid and active, or suspended) and `LastBackupSucceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Name of the newest successful Backup of this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    /// Backups of this schedule that exist now (any phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<i32>,
}

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

/// A full or single-key restore of a pool from a backup. A restore point (full backup) is
/// always taken first; the restore is all-or-nothing.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keystead.io",
    version = "v1alpha1",
    kind = "Restore",
    plural = "restores",
    singular = "restore",
    shortname = "hsmrestore",
    category = "keystead",
    namespaced,
    status = "RestoreStatus",
    printcolumn = r#"{"name":"HSM","type":"string","jsonPath":".spec.hsmRef.name"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.keyName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a Restore is immutable once created; create a new Restore instead"},
    {"rule": "has(self.backupName) != has(self.source)", "message": "name the backup either by backupName or by source (destination and folder), not both"}
]))]
pub struct RestoreSpec {
    /// The pool to restore into.
    pub hsm_ref: HsmReference,
    /// A completed Backup object in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// A backup folder in a store, for backups made elsewhere (another cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RestoreSource>,
    /// Restore only this key (all its versions); a full restore when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-]{1,127}$"))]
    pub key_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    pub destination: BackupDestination,
    /// Folder of the backup inside the store.
    #[schemars(length(min = 1, max = 1024))]
    pub folder: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Folder URL of the restore point (a full backup of the pool as it was) that the pool
    /// wrote before a full restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// Folder URL of the backup that was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The partition (pod) that runs the job (its status is polled there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Derived from the `Succeeded` condition (see docs/operator.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}
