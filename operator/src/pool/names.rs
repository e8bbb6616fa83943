//! Names of a pool's objects and how it is addressed: the children's names, the labels and
//! selector of its pods, the partitions' host names and URLs, the audience of its tokens.
//! Pure functions of the ManagedHsm; every controller uses them.

use crate::crd::ManagedHsm;
use std::collections::BTreeMap;

/// The operator's name: the field manager of every server-side apply it makes and the
/// `app.kubernetes.io/managed-by` label of every object it creates.
pub const FIELD_MANAGER: &str = "keystead-operator";
/// Container port of the partitions' HTTPS listener.
pub const PARTITION_PORT: i32 = 8443;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the ManagedHsm has no {0}; it must come from the API server")]
    MissingMetadata(&'static str),
    #[error("internal error building {what}: {reason}")]
    Internal { what: &'static str, reason: String },
}

/// Names of a pool's children (a pure function of its name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub pool: String,
    pub namespace: String,
    pub statefulset: String,
    pub headless_service: String,
    pub client_service: String,
    pub service_account: String,
    pub config_map: String,
    pub ca_bundle: String,
    pub ca_secret: String,
    pub tls_secret: String,
    pub pdb: String,
    pub network_policy: String,
    /// The partitions' region configuration (`spec.replication`).
    pub region_config: String,
}

impl Names {
    pub fn new(pool: &str, namespace: &str) -> Self {
        Self {
            pool: pool.into(),
            namespace: namespace.into(),
            statefulset: pool.into(),
            headless_service: format!("{pool}-peers"),
            client_service: pool.into(),
            service_account: format!("{pool}-partition"),
            config_map: format!("{pool}-config"),
            ca_bundle: format!("{pool}-ca-bundle"),
            ca_secret: format!("{pool}-ca"),
            tls_secret: format!("{pool}-tls"),
            pdb: pool.into(),
            network_policy: pool.into(),
            region_config: format!("{pool}-region"),
        }
    }

    pub fn of(hsm: &ManagedHsm) -> Result<Self, BuildError> {
        let name = hsm
            .metadata
            .name
            .as_deref()
            .ok_or(BuildError::MissingMetadata("name"))?;
        let ns = hsm
            .metadata
            .namespace
            .as_deref()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        Ok(Self::new(name, ns))
    }

    /// Pod names of the partitions (`<pool>-0` .. `<pool>-2`).
    pub fn pods(&self, partitions: i32) -> Vec<String> {
        (0..partitions.max(0))
            .map(|i| format!("{}-{i}", self.statefulset))
            .collect()
    }

    /// PVC name of a partition's data volume.
    pub fn pvc(&self, pod: &str) -> String {
        format!("data-{pod}")
    }

    /// DNS names of a partition's certificate.
    pub fn partition_dns_names(
        &self,
        pod: &str,
        cluster_domain: &str,
        extra: &[String],
    ) -> Vec<String> {
        let (ns, peers, client) = (
            &self.namespace,
            &self.headless_service,
            &self.client_service,
        );
        let mut v = vec![
            pod.to_string(),
            format!("{pod}.{peers}"),
            format!("{pod}.{peers}.{ns}.svc"),
            format!("{pod}.{peers}.{ns}.svc.{cluster_domain}"),
            client.to_string(),
            format!("{client}.{ns}"),
            format!("{client}.{ns}.svc"),
            format!("{client}.{ns}.svc.{cluster_domain}"),
            "localhost".to_string(),
        ];
        v.extend(extra.iter().cloned());
        v
    }

    /// The pool's client endpoint.
    pub fn endpoint(&self, port: i32) -> String {
        let host = format!("{}.{}.svc", self.client_service, self.namespace);
        if port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{port}")
        }
    }

    /// The default audience of the pool: its endpoint's host without the first label, with
    /// the endpoint's port unless it is 443 (`https://<namespace>.svc[:port]`). The Azure
    /// SDKs accept a challenge `resource` only when the request's host (with its port, when
    /// not the default one) ends with `.<resource host>`; requests to the pool's endpoint
    /// `https://<pool>.<namespace>.svc[:port]` pass that check.
    pub fn default_audience(&self, port: i32) -> String {
        let host = format!("{}.svc", self.namespace);
        if port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{port}")
        }
    }

    /// The DNS name of one partition (its record in the headless Service).
    pub fn partition_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.headless_service, self.namespace)
    }

    /// The admin endpoint of one partition (through the headless Service).
    pub fn partition_url(&self, pod: &str) -> String {
        format!("https://{}:{PARTITION_PORT}", self.partition_host(pod))
    }

    /// The pool's ServiceAccount as a principal (the partitions' workload identity).
    pub fn service_account_principal(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// Labels of every child; the first two are the pods' selector.
pub fn labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "keystead-partition".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), pool.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "partition".to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "keystead".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        ),
    ])
}

/// The pods' selector.
pub fn selector(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "keystead-partition".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), pool.to_string()),
    ])
}

/// The audience of a pool's tokens: `spec.authentication.audience`, else
/// [`Names::default_audience`]. The partitions accept it, their 401 challenge names it, and
/// the operator requests its own tokens for it.
pub fn pool_audience(hsm: &ManagedHsm, names: &Names) -> String {
    hsm.spec
        .authentication
        .audience
        .clone()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| names.default_audience(hsm.spec.service.port))
}
