//! The configuration of one partition (`keystead-partition serve --config FILE`): the
//! contract between the partition that reads it and the operator (a ConfigMap) or the local
//! runner (a file per partition) that write it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration that cannot be read or is not valid (the message names the field).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Refuse the configuration with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(ConfigError(format!($($msg)+)));
        }
    };
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionConfig {
    /// Name of the pool (used in the exchange certificate and the domain metadata).
    pub pool_name: String,
    /// This partition's id within the pool (e.g. `p0` or the pod name).
    pub partition_id: String,
    /// Address to listen on for HTTPS (`127.0.0.1:8443`, `0.0.0.0:8443`).
    pub listen: String,
    /// Base URL clients use (`https://127.0.0.1:8443`, the pool's Service name): every
    /// `kid`, `nextLink` and `azure-asyncoperation` URL is built from it (never from the
    /// request's Host header).
    pub public_url: String,
    /// Data directory (command log, snapshots, sealed domain, audit log).
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    pub auth: AuthSettings,
    /// Principals granted the Administrator role at `/` when the pool is first created.
    pub initial_administrators: Vec<String>,
    #[serde(default = "default_retention")]
    pub soft_delete_retention_days: i64,
    #[serde(default)]
    pub purge_protection: bool,
    #[serde(default)]
    pub seal: SealSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    /// Members of the pool's Raft group, this partition included (empty: a pool of one
    /// partition without replication). See docs/replication.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSettings>,
    /// This partition's workload-identity token (subject `partition:<partitionId>`),
    /// presented to peers with its pool-CA client certificate; re-read on every call so a
    /// rotated (projected) token is picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_token_file: Option<PathBuf>,
    /// Kubernetes workload identity of the peers: the pool's ServiceAccount principal
    /// (`system:serviceaccount:<ns>:<name>`). When set, a peer's token must have this
    /// subject and be bound to a pod whose name is the peer's partition id (the
    /// `kubernetes.io.pod.name` claim of a projected service-account token) instead of
    /// carrying the subject `partition:<partitionId>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_service_account: Option<String>,
    /// Static host name → IP address overrides for outgoing peer connections (like
    /// `curl --resolve`): a peer URL's host found here is connected to at that address (the
    /// URL's port is kept) and its certificate is still verified for the host name. For
    /// hosts without cluster DNS, or DNS that lags behind new pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_addresses: BTreeMap<String, IpAddr>,
    /// The directory `file://` backup destinations must lie in (`/`: anywhere this process
    /// may write, what a local pool uses). Unset: `file://` destinations are refused — a
    /// partition in Kubernetes writes backups to mounted claims (`backupClaims`) or object
    /// stores. See docs/backup.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_filesystem_root: Option<PathBuf>,
    /// PersistentVolumeClaims mounted for backups: claim name → mount directory; a
    /// `pvc://<claimName>/<path>` destination is `<path>` in that directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backup_claims: BTreeMap<String, PathBuf>,
    /// Backup and restore requests may name a loopback host as their object store (the
    /// emulators of a development pool). Off by default: in a cluster a loopback address
    /// reaches the partition's own services. Link-local hosts are refused always. See
    /// docs/threat-model.md.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup_loopback_endpoints: bool,
    /// Whether an Administrator may download the activated security domain again (to
    /// custodian certificates of its choosing). `refused` (opt-in): once activated, the
    /// domain leaves the pool only as the file made at activation; custodians are changed by
    /// recovering into a pool configured to allow it. Every re-download is recorded
    /// pool-wide and raises a Warning Event (docs/threat-model.md).
    #[serde(default)]
    pub security_domain_redownload: RedownloadPolicy,
    /// Bounds of the HTTPS listener and of expensive work (docs/limits.md); every field has
    /// a safe default.
    #[serde(default)]
    pub limits: Limits,
    /// How a replicated pool makes reads linearizable (docs/replication.md): `readIndex`
    /// (default) confirms the leadership with a quorum for every batch of reads; `lease`
    /// (opt-in) lets the leader read alone for 900 ms after a confirmation, assuming the
    /// partitions' clocks run at about the same rate. Every partition of a pool must use
    /// the same setting.
    #[serde(default, skip_serializing_if = "ReadConsistency::is_default")]
    pub read_consistency: ReadConsistency,
}

/// `readConsistency` of the partition configuration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ReadConsistency {
    /// A quorum confirms the leadership for every batch of reads.
    #[default]
    ReadIndex,
    /// The leader reads alone for a while after a confirmation (leader lease).
    Lease,
}

impl ReadConsistency {
    fn is_default(&self) -> bool {
        *self == ReadConsistency::ReadIndex
    }
}

/// `securityDomainRedownload` of the partition configuration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RedownloadPolicy {
    #[default]
    Allowed,
    Refused,
}

/// Bounds of the HTTPS listener (which also carries the peer API) and of RSA key generation.
/// See docs/limits.md.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// A TLS handshake not finished within this time is abandoned and its connection closed.
    pub tls_handshake_timeout_seconds: u64,
    /// An HTTP/1.1 request head (request line and headers) not received within this time
    /// closes the connection; hyper also starts this clock while a kept-alive connection
    /// waits for its next request.
    pub header_read_timeout_seconds: u64,
    /// A connection (HTTP/1.1 or HTTP/2) with no request in progress for this long is closed
    /// (HTTP/2 with a GOAWAY); traffic without requests (pings) does not keep it open.
    pub idle_timeout_seconds: u64,
    /// Connections served at once; further connections wait in the listen backlog (they are
    /// not accepted) until one closes. Unset: [`DEFAULT_MAX_CONNECTIONS`], lowered to fit
    /// the process's open-files limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// RSA key generations running at once (off the request workers); 0: the number of CPUs.
    pub key_generation_concurrency: usize,
}

/// The connection cap when `limits.maxConnections` is unset (and the open-files limit allows).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout_seconds: 10,
            header_read_timeout_seconds: 30,
            idle_timeout_seconds: 120,
            max_connections: None,
            key_generation_concurrency: 0,
        }
    }
}

impl Limits {
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_seconds)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// RSA key generations allowed at once (the configured value, or the number of CPUs).
    pub fn key_generations(&self) -> usize {
        match self.key_generation_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            (
                "tlsHandshakeTimeoutSeconds",
                self.tls_handshake_timeout_seconds,
            ),
            ("headerReadTimeoutSeconds", self.header_read_timeout_seconds),
            ("idleTimeoutSeconds", self.idle_timeout_seconds),
        ] {
            ensure!(
                (1..=3600).contains(&v),
                "limits.{name} must be between 1 and 3600 seconds, got {v}"
            );
        }
        if let Some(n) = self.max_connections {
            ensure!(
                (1..=1_000_000).contains(&n),
                "limits.maxConnections must be between 1 and 1000000, got {n}"
            );
        }
        ensure!(
            self.key_generation_concurrency <= 1024,
            "limits.keyGenerationConcurrency must be at most 1024 (0: the number of CPUs), got {}",
            self.key_generation_concurrency
        );
        Ok(())
    }
}

/// One member of the Raft group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSettings {
    /// Raft node id (distinct per member, never reused for another identity).
    pub id: u64,
    /// Partition id: the common name of its pool-CA certificate.
    pub name: String,
    /// Base URL of its HTTPS port (`https://127.0.0.1:8443`, a StatefulSet DNS name).
    pub url: String,
}

fn default_retention() -> i64 {
    90
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The pool CA (trusted for peers' client certificates).
    pub ca_file: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSettings {
    /// Audience tokens must carry (also the `resource` of the 401 challenge). When omitted:
    /// the origin of `publicUrl` (see [`PartitionConfig::audience`]). Azure's own
    /// [`AZURE_AUDIENCE`] is accepted only when set here explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Authority named in the 401 challenge (`<authority>/<tenant>`).
    #[serde(default = "default_authority")]
    pub authority: String,
    pub issuers: Vec<IssuerSettings>,
}

/// The audience of Azure Key Vault Managed HSM itself: tokens that `az` and Entra ID issue
/// for the real service. A pool accepts it only when configured explicitly (compatibility
/// with stock Entra ID tokens); see docs/authentication.md.
pub const AZURE_AUDIENCE: &str = "https://managedhsm.azure.net";

/// The authority named in the 401 challenge when `auth.authority` is not set.
pub const DEFAULT_AUTHORITY: &str = "https://login.keystead.local/keystead";

fn default_authority() -> String {
    DEFAULT_AUTHORITY.into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSettings {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Put before the token's subject to form the RBAC principal, so that issuers cannot
    /// mint each other's principals. With several issuers, every issuer but one must have
    /// one, and no prefix may start with another; see docs/authentication.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_prefix: Option<String>,
    /// A JWKS file (local issuer); otherwise OIDC discovery at the issuer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// CA bundle to reach the issuer for discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Bearer token file used for discovery (the Kubernetes API server's issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealSettings {
    /// `memoryOnly` (default) or `sealingKeyFile`.
    #[serde(default)]
    pub mode: SealMode,
    /// With `sealingKeyFile`: a file of exactly 32 random bytes (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SealMode {
    #[default]
    MemoryOnly,
    SealingKeyFile,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSettings {
    /// Audit file; `<dataDir>/audit.log` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Also write each record to stdout.
    #[serde(default = "default_true")]
    pub stdout: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: None,
            stdout: true,
        }
    }
}

fn default_true() -> bool {
    true
}

impl PartitionConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read the partition configuration {}: {e}",
                path.display()
            ))
        })?;
        let cfg: PartitionConfig = serde_json::from_str(&text).map_err(|e| {
            ConfigError(format!(
                "the partition configuration {} is not valid; see docs/local-pool.md for its fields: {e}",
                path.display()
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure!(
            (7..=90).contains(&self.soft_delete_retention_days),
            "softDeleteRetentionDays must be between 7 and 90, got {}",
            self.soft_delete_retention_days
        );
        ensure!(
            !self.initial_administrators.is_empty(),
            "initialAdministrators is empty: name at least one principal who may run the security-domain ceremony"
        );
        ensure!(
            self.public_url.starts_with("https://"),
            "publicUrl must be an https URL (bearer tokens are only sent over TLS), got {}",
            self.public_url
        );
        if !self.peers.is_empty() {
            ensure!(
                self.peers.iter().any(|p| p.name == self.partition_id),
                "peers does not list this partition ('{}'); list every member, this one included",
                self.partition_id
            );
            ensure!(
                self.peers.len() > 1,
                "peers lists only this partition: list the pool's current members too (a new member must find the existing group, or it would start a group of its own); a pool of one runs without peers"
            );
            ensure!(
                self.peer_token_file.is_some(),
                "peers is set but peerTokenFile is not: partitions authenticate each other with a workload token"
            );
        }
        if let Some(a) = &self.auth.audience {
            ensure!(
                !a.trim().is_empty(),
                "auth.audience is empty: omit it (the audience is then the origin of publicUrl) or name this pool's resource, e.g. https://hsm.example.com"
            );
        }
        let issuers: Vec<crate::principal::IssuerPrefix<'_>> = self
            .auth
            .issuers
            .iter()
            .map(|i| crate::principal::IssuerPrefix {
                issuer: &i.issuer,
                prefix: i.principal_prefix.as_deref(),
            })
            .collect();
        let problems = crate::principal::check(&issuers);
        ensure!(
            problems.is_empty(),
            "auth.issuers: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        if let Some(sa) = &self.peer_service_account {
            ensure!(
                sa.starts_with("system:serviceaccount:") && sa.split(':').count() == 4,
                "peerServiceAccount must be a service-account principal `system:serviceaccount:<namespace>:<name>`, got {sa:?}"
            );
        }
        if self.seal.mode == SealMode::SealingKeyFile {
            ensure!(
                self.seal.key_file.is_some(),
                "seal.mode is sealingKeyFile but seal.keyFile is not set"
            );
        }
        self.limits.validate()?;
        Ok(())
    }

    /// The audience tokens must carry and the `resource` of the 401 challenge:
    /// `auth.audience`, else the origin of `publicUrl` (`https://host[:port]`).
    pub fn audience(&self) -> String {
        if let Some(a) = &self.auth.audience {
            return a.clone();
        }
        match url::Url::parse(&self.public_url) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => self.public_url.trim_end_matches('/').to_string(),
        }
    }

    /// Where this partition may write and read `file://` and `pvc://` backups.
    #[cfg(feature = "store")]
    pub fn backup_paths(&self) -> crate::store::LocalPaths {
        crate::store::LocalPaths {
            file_root: self.backup_filesystem_root.clone(),
            claims: self.backup_claims.clone(),
            loopback_endpoints: self.backup_loopback_endpoints,
        }
    }

    pub fn audit_file(&self) -> PathBuf {
        self.audit
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_peers(peers: serde_json::Value) -> PartitionConfig {
        serde_json::from_value(serde_json::json!({
            "poolName": "pool", "partitionId": "p3", "listen": "127.0.0.1:1",
            "publicUrl": "https://127.0.0.1:1", "dataDir": "/tmp/x",
            "tls": {"certFile": "c", "keyFile": "k", "caFile": "ca"},
            "auth": {"issuers": []}, "initialAdministrators": ["admin"],
            "peers": peers, "peerTokenFile": "t",
        }))
        .unwrap()
    }

    #[test]
    fn peers_must_list_this_partition_and_the_pool() {
        let me = serde_json::json!({"id": 4, "name": "p3", "url": "https://127.0.0.1:1"});
        let other = serde_json::json!({"id": 1, "name": "p0", "url": "https://127.0.0.1:2"});
        assert!(
            with_peers(serde_json::json!([me.clone(), other.clone()]))
                .validate()
                .is_ok()
        );
        let e = with_peers(serde_json::json!([other]))
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("does not list this partition"),
            "{e}"
        );
        // Alone, a new member would start a group of its own instead of joining the pool.
        let e = with_peers(serde_json::json!([me])).validate().unwrap_err();
        assert!(e.to_string().contains("only this partition"), "{e}");
        assert!(with_peers(serde_json::json!([])).validate().is_ok());
    }

    #[test]
    fn limits_default_and_are_checked() {
        let mut cfg = with_peers(serde_json::json!([]));
        assert_eq!(cfg.limits, Limits::default());
        assert!(cfg.validate().is_ok());
        cfg.limits.idle_timeout_seconds = 0;
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("limits.idleTimeoutSeconds"), "{e}");
        cfg.limits = Limits {
            max_connections: Some(0),
            ..Limits::default()
        };
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("limits.maxConnections"), "{e}");
        // Partial sections take the other defaults; unknown fields are refused.
        let l: Limits = serde_json::from_value(serde_json::json!({"maxConnections": 8})).unwrap();
        assert_eq!(l.max_connections, Some(8));
        assert_eq!(l.tls_handshake_timeout_seconds, 10);
        assert!(serde_json::from_value::<Limits>(serde_json::json!({"maxConns": 8})).is_err());
        assert!(Limits::default().key_generations() >= 1);
    }

    fn with_auth(auth: serde_json::Value) -> PartitionConfig {
        serde_json::from_value(serde_json::json!({
            "poolName": "pool", "partitionId": "p0", "listen": "127.0.0.1:1",
            "publicUrl": "https://hsm.example.com:8443/", "dataDir": "/tmp/x",
            "tls": {"certFile": "c", "keyFile": "k", "caFile": "ca"},
            "auth": auth, "initialAdministrators": ["admin"],
        }))
        .unwrap()
    }

    fn issuers(list: serde_json::Value) -> Result<(), ConfigError> {
        with_auth(serde_json::json!({"issuers": list})).validate()
    }

    #[test]
    fn issuers_need_principal_prefixes_that_keep_them_apart() {
        use serde_json::json;
        let k8s = json!({"issuer": "https://k8s"});
        let entra =
            |p: &str| json!({"issuer": "https://login.example.com/t", "principalPrefix": p});
        // One issuer: a prefix is optional.
        assert!(issuers(json!([k8s.clone()])).is_ok());
        assert!(issuers(json!([entra("entra:")])).is_ok());
        // Several: all but one prefixed, prefixes prefix-free and clear of partition:/system:.
        assert!(issuers(json!([k8s.clone(), entra("entra:")])).is_ok());
        assert!(
            issuers(json!([k8s.clone(), entra("entra:"), {"issuer": "https://kc", "principalPrefix": "kc:"}]))
                .is_ok()
        );
        let e = issuers(json!([k8s.clone(), {"issuer": "https://login.example.com/t"}]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("auth.issuers: ")
                && e.contains("\"https://k8s\"")
                && e.contains("\"https://login.example.com/t\"")
                && e.contains("set principalPrefix"),
            "{e}"
        );
        let e = issuers(
            json!([entra("entra:"), {"issuer": "https://kc", "principalPrefix": "entra:kc:"}]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overlap") && e.contains("https://kc"), "{e}");
        for reserved in ["partition:", "system:", "sys"] {
            let e = issuers(json!([k8s.clone(), entra(reserved)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("reserved namespace"), "{reserved}: {e}");
        }
        let e = issuers(json!([k8s.clone(), entra("")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not valid"), "{e}");
        let e = issuers(json!([k8s.clone(), k8s.clone()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn the_audience_is_the_pools_own_resource_unless_set() {
        let cfg = with_auth(serde_json::json!({"issuers": []}));
        assert_eq!(cfg.audience(), "https://hsm.example.com:8443");
        // The default is not written back (a changed publicUrl changes it).
        assert!(
            serde_json::to_value(&cfg).unwrap()["auth"]
                .get("audience")
                .is_none()
        );
        let cfg = with_auth(serde_json::json!({"issuers": [], "audience": AZURE_AUDIENCE}));
        assert_eq!(cfg.audience(), AZURE_AUDIENCE);
        let e = with_auth(serde_json::json!({"issuers": [], "audience": " "}))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("auth.audience is empty"), "{e}");
    }
}
