//! Backup stores (feature `store`): a URI (plus optional credentials) mapped onto an
//! `object_store`. The partition writes and reads backups through it; the operator deletes
//! expired backup folders and `kubectl hsm` lists and verifies them through the same code.
//!
//! - `https://<account>.blob.core.windows.net/<container>[/<prefix>]`: Azure Blob, with the
//!   SAS `token`, or (no token) the account key / workload identity from the environment
//!   (`AZURE_STORAGE_ACCOUNT_KEY`, ... as read by `object_store`).
//! - `http(s)://<host>[:port]/<account>/<container>[/<prefix>]` with a loopback or IP host:
//!   path-style Azure (the Azurite emulator). Without a token and without a key, the
//!   emulator's well-known development key is used for the account `devstoreaccount1`.
//! - `s3://<bucket>[/<prefix>]`: S3 or S3-compatible; endpoint, region and credentials from
//!   the `AWS_*` environment or from `storageOptions`.
//! - `gs://<bucket>[/<prefix>]`: Google Cloud Storage; credentials from `GOOGLE_*`
//!   environment or `storageOptions`.
//! - `file:///<absolute path>`: a directory on the partition's filesystem, only under the
//!   root the opener allows ([`LocalPaths::file_root`]; a local pool allows its user's
//!   files, a partition in Kubernetes none).
//! - `pvc://<claimName>[/<prefix>]`: a PersistentVolumeClaim mounted into the partition
//!   (Kubernetes; [`LocalPaths::claims`] says where each claim is mounted).
//!
//! `storageOptions` are `object_store` configuration keys, but only those on an allow-list
//! per store ([`ALLOWED_OPTIONS`]): the store's region and endpoint, static credentials, the
//! addressing style. Every other key — files, credential/metadata/MSI endpoints, authority
//! hosts, container and web-identity credentials, proxies, TLS switches — is refused with
//! an error naming it: a caller holding only `backup/start` must not be able to make the
//! partition read its own files or send its own credentials anywhere (docs/threat-model.md).
//!
//! Ambient credentials (the process environment, workload or managed identity) are used
//! only when the caller names the provider's own endpoint and gives no credential of its
//! own; a caller-chosen endpoint (an S3 `aws_endpoint`, a path-style or custom Azure host, a
//! GCS key's `gcs_base_url`) needs complete static credentials in the request, and its host
//! must not be link-local, multicast or (unless [`LocalPaths::loopback_endpoints`]) loopback.
//!
//! One file on purpose (~640 lines of code): the URI → store mapping and the endpoint and
//! option rules that keep it safe are read and changed together.

use object_store::ClientConfigKey;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The Azurite emulator's published development account key (not a secret).
const AZURITE_DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const AZURITE_DEV_ACCOUNT: &str = "devstoreaccount1";

/// Where a backup goes or comes from, as the Azure API sends it (`sasTokenParameters`).
/// `Debug` redacts the token and the option values (credentials).
#[derive(Serialize, Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageParameters {
    pub storage_resource_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_managed_identity: Option<bool>,
    /// Keystead extension: `object_store` configuration keys for non-Azure stores.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_options: BTreeMap<String, String>,
}

impl std::fmt::Debug for StorageParameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageParameters")
            .field(
                "storage_resource_uri",
                &strip_query(&self.storage_resource_uri),
            )
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("use_managed_identity", &self.use_managed_identity)
            .field(
                "storage_options",
                &self.storage_options.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// An opened destination: the store and the prefix (folder parent) inside it.
pub struct Destination {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URI of the prefix, without any token (for results and messages).
    pub base_url: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// Path of `file` in backup folder `folder`.
    pub fn path(&self, folder: &str, file: &str) -> Path {
        self.folder_path(folder).join(file)
    }

    pub fn folder_path(&self, folder: &str) -> Path {
        self.prefix.clone().join(folder)
    }

    /// The URL of a backup folder as reported to clients.
    pub fn folder_url(&self, folder: &str) -> String {
        format!("{}/{folder}", self.base_url.trim_end_matches('/'))
    }
}

fn strip_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

fn prefix_of(segments: &[&str]) -> Result<Path, String> {
    let joined = segments
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    Path::parse(&joined).map_err(|e| format!("the path '{joined}' is not a valid object path: {e}"))
}

fn is_loopback_or_ip(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => true,
        url::Host::Domain(d) => is_localhost_name(d),
    }
}

fn is_localhost_name(d: &str) -> bool {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// The `storageOptions` keys a caller may give, per store (any alias `object_store`
/// accepts for the same setting is accepted too). Everything else is refused.
pub const ALLOWED_OPTIONS: &[(&str, &[&str])] = &[
    (
        "S3 (s3://)",
        &[
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "aws_region",
            "aws_endpoint",
            "aws_virtual_hosted_style_request",
            "aws_allow_http",
        ],
    ),
    (
        "Azure Blob (https://)",
        &[
            "azure_storage_account_key",
            "azure_storage_sas_key",
            "azure_storage_client_id",
            "azure_storage_client_secret",
            "azure_storage_tenant_id",
        ],
    ),
    ("GCS (gs://)", &["google_service_account_key"]),
];

fn allowed_list(store: usize) -> String {
    ALLOWED_OPTIONS[store].1.join(", ")
}

fn refused_option(k: &str, store: usize) -> String {
    format!(
        "storageOptions: '{k}' is not accepted for {}: give only {}. Options that name files, credential, metadata or authority endpoints, proxies or TLS settings are never honoured (see docs/threat-model.md)",
        ALLOWED_OPTIONS[store].0,
        allowed_list(store)
    )
}

fn s3_option(k: &str) -> Result<AmazonS3ConfigKey, String> {
    use AmazonS3ConfigKey as K;
    let key: K = k.parse().map_err(|_| {
        format!(
            "storageOptions: '{k}' is not an S3 option; give only {}",
            allowed_list(0)
        )
    })?;
    match key {
        K::AccessKeyId
        | K::SecretAccessKey
        | K::Token
        | K::Region
        | K::Endpoint
        | K::VirtualHostedStyleRequest
        | K::Client(ClientConfigKey::AllowHttp) => Ok(key),
        _ => Err(refused_option(k, 0)),
    }
}

fn azure_option(k: &str) -> Result<AzureConfigKey, String> {
    use AzureConfigKey as K;
    let key: K = k.parse().map_err(|_| {
        format!(
            "storageOptions: '{k}' is not an Azure option; give only {}",
            allowed_list(1)
        )
    })?;
    match key {
        K::AccessKey | K::SasKey | K::ClientId | K::ClientSecret | K::AuthorityId => Ok(key),
        _ => Err(refused_option(k, 1)),
    }
}

fn gcs_option(k: &str) -> Result<GoogleConfigKey, String> {
    let key: GoogleConfigKey = k.parse().map_err(|_| {
        format!(
            "storageOptions: '{k}' is not a GCS option; give only {}",
            allowed_list(2)
        )
    })?;
    match key {
        GoogleConfigKey::ServiceAccountKey => Ok(key),
        _ => Err(refused_option(k, 2)),
    }
}

/// Refuse a caller-named store host the partition must not talk to: link-local (cloud
/// metadata services), multicast, broadcast, and loopback or unspecified addresses unless
/// `local.loopback_endpoints`. Host names are checked as written (see docs/threat-model.md).
fn check_endpoint_host(host: &url::Host<&str>, local: &LocalPaths) -> Result<(), String> {
    use std::net::IpAddr;
    let ip = match host {
        url::Host::Ipv4(a) => Some(IpAddr::V4(*a)),
        url::Host::Ipv6(a) => Some(match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(*a),
        }),
        url::Host::Domain(_) => None,
    };
    let (loopback, forbidden) = match ip {
        Some(IpAddr::V4(a)) => (
            a.is_loopback() || a.is_unspecified(),
            a.is_link_local() || a.is_multicast() || a.is_broadcast(),
        ),
        Some(IpAddr::V6(a)) => (
            a.is_loopback() || a.is_unspecified(),
            a.is_unicast_link_local() || a.is_multicast(),
        ),
        None => (
            matches!(host, url::Host::Domain(d) if is_localhost_name(d)),
            false,
        ),
    };
    if forbidden {
        return Err(format!(
            "the storage endpoint host '{host}' is link-local, multicast or broadcast: backups never go there (cloud metadata services live there); name the object store's own address"
        ));
    }
    if loopback && !local.loopback_endpoints {
        return Err(format!(
            "the storage endpoint host '{host}' is a loopback address, which this partition does not take (it would reach the partition's own services); name the object store's address, or for a local development pool set backupLoopbackEndpoints in the partition configuration"
        ));
    }
    Ok(())
}

/// Check a caller-named endpoint URL (S3 `aws_endpoint`, a GCS key's `gcs_base_url`).
fn check_endpoint_url(what: &str, raw: &str, local: &LocalPaths) -> Result<(), String> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| format!("{what} '{raw}' is not a URL ({e}); give http(s)://host[:port]"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{what} '{raw}' is not an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} must not carry credentials in the URL"));
    }
    let host = url
        .host()
        .ok_or_else(|| format!("{what} '{raw}' has no host"))?;
    check_endpoint_host(&host, local)
}

/// Azure's own Blob endpoints (public and sovereign clouds): the only hosts a partition
/// may use its ambient (managed) identity with.
const AZURE_BLOB_SUFFIXES: &[&str] = &[
    ".blob.core.windows.net",
    ".blob.core.usgovcloudapi.net",
    ".blob.core.chinacloudapi.cn",
];

/// Which local directories `file://` and `pvc://` URIs may name, and whether a caller may
/// name loopback store endpoints.
#[derive(Clone, Debug, Default)]
pub struct LocalPaths {
    /// `file://` URIs must lie in this directory (`/`: anywhere the process may write);
    /// `None` refuses `file://` altogether.
    pub file_root: Option<PathBuf>,
    /// `pvc://<claim>/...`: where each mounted claim is (claim name → directory).
    pub claims: BTreeMap<String, PathBuf>,
    /// A caller may name a loopback host as the store (`http://127.0.0.1:10000/...`,
    /// `aws_endpoint=http://localhost:9000`): emulators of a development pool. Off in a
    /// partition unless its configuration sets `backupLoopbackEndpoints`.
    pub loopback_endpoints: bool,
}

impl LocalPaths {
    /// Any directory the process may write and loopback stores (a command-line tool acting
    /// for its user, a local development pool).
    pub fn anywhere() -> Self {
        Self {
            file_root: Some(PathBuf::from("/")),
            claims: BTreeMap::new(),
            loopback_endpoints: true,
        }
    }
}

/// A local directory store rooted at `dir` (created if missing).
fn local_store(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the backup directory {}: {e}", dir.display()))?;
    Ok(Arc::new(
        LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| format!("cannot open {}: {e}", dir.display()))?
            // A deleted backup folder leaves no empty directory behind.
            .with_automatic_cleanup(true),
    ))
}

/// The claim a `pvc://<claim>/...` storage URI names (`None`: not a claim URI, or no name).
pub fn claim_of(uri: &str) -> Option<&str> {
    let rest = uri.trim().strip_prefix("pvc://")?;
    rest.split(['/', '?']).next().filter(|c| !c.is_empty())
}

/// Refuse a local URI whose path could leave its root ('.', '..', percent escapes, which
/// the URL parser would resolve).
fn plain_local_path(raw: &str, base_url: &str) -> Result<(), String> {
    let path = strip_query(raw);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    if path.split('/').any(|s| s == "." || s == "..") || path.contains(['%', '\\']) {
        return Err(format!(
            "'{base_url}' is not a plain path; give one without '.', '..' or escapes"
        ));
    }
    Ok(())
}

/// Open the destination named by `params` (the URI is the parent of backup folders);
/// `local` says which `file://` and `pvc://` locations this process may use.
pub fn open(params: &StorageParameters, local: &LocalPaths) -> Result<Destination, String> {
    let raw = params.storage_resource_uri.trim();
    if raw.is_empty() {
        return Err("storageResourceUri is empty; give the container URL (https://<account>.blob.core.windows.net/<container>), s3://bucket/prefix, gs://bucket/prefix or file:///path".into());
    }
    let url = url::Url::parse(raw).map_err(|e| {
        format!(
            "storageResourceUri '{}' is not a URL ({e}); give https://<account>.blob.core.windows.net/<container>, s3://bucket/prefix, gs://bucket/prefix or file:///path",
            strip_query(raw)
        )
    })?;
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let base_url = strip_query(raw).trim_end_matches('/').to_string();
    let opts = &params.storage_options;
    let store: Arc<dyn ObjectStore>;
    let prefix;
    match url.scheme() {
        "file" => {
            let Some(root) = &local.file_root else {
                return Err(format!(
                    "'{base_url}': this partition takes no file:// destinations (its configuration sets no backupFilesystemRoot); in Kubernetes back up to a PersistentVolumeClaim listed in the ManagedHsm's spec.backupVolumes (pvc://<claimName>/<path>) or to an object store"
                ));
            };
            plain_local_path(raw, &base_url)?;
            let dir = url
                .to_file_path()
                .map_err(|_| format!("'{base_url}' is not an absolute file path"))?;
            if !dir.starts_with(root) {
                return Err(format!(
                    "'{base_url}' is outside {}, the only directory this partition writes backups to",
                    root.display()
                ));
            }
            store = local_store(&dir)?;
            prefix = Path::default();
        }
        "pvc" => {
            let claim = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or("pvc:// URI without a claim name: use pvc://<claimName>/<path>")?;
            let Some(mount) = local.claims.get(claim) else {
                let mounted: Vec<&str> = local.claims.keys().map(String::as_str).collect();
                return Err(format!(
                    "the PersistentVolumeClaim '{claim}' is not mounted in this partition (mounted: {}); add it to the ManagedHsm's spec.backupVolumes",
                    if mounted.is_empty() {
                        "none".to_string()
                    } else {
                        mounted.join(", ")
                    }
                ));
            };
            plain_local_path(raw, &base_url)?;
            let mut dir = mount.clone();
            dir.extend(&segments);
            store = local_store(&dir)?;
            prefix = Path::default();
        }
        "s3" => {
            let bucket = url
                .host_str()
                .ok_or("s3:// URI without a bucket: use s3://bucket/prefix")?;
            let mut keys = Vec::new();
            for (k, v) in opts {
                let key = s3_option(k)?;
                if key == AmazonS3ConfigKey::Endpoint {
                    check_endpoint_url("storageOptions aws_endpoint", v, local)?;
                }
                keys.push((key, v));
            }
            let has = |want: AmazonS3ConfigKey| keys.iter().any(|(k, _)| *k == want);
            let own_credentials = has(AmazonS3ConfigKey::AccessKeyId)
                || has(AmazonS3ConfigKey::SecretAccessKey)
                || has(AmazonS3ConfigKey::Token);
            if own_credentials
                && !(has(AmazonS3ConfigKey::AccessKeyId) && has(AmazonS3ConfigKey::SecretAccessKey))
            {
                return Err("storageOptions: give both aws_access_key_id and aws_secret_access_key (and aws_session_token if the credentials are temporary)".into());
            }
            if has(AmazonS3ConfigKey::Endpoint) && !own_credentials {
                return Err("storageOptions: an S3 store at aws_endpoint needs aws_access_key_id and aws_secret_access_key in the request; the partition never sends its own credentials to an endpoint a caller chose".into());
            }
            // Ambient credentials only for AWS itself and no credentials of the caller's.
            let mut b = if own_credentials || has(AmazonS3ConfigKey::Endpoint) {
                AmazonS3Builder::new()
            } else {
                AmazonS3Builder::from_env()
            }
            .with_bucket_name(bucket);
            for (key, v) in keys {
                b = b.with_config(key, v);
            }
            store = Arc::new(
                b.build()
                    .map_err(|e| format!("cannot open S3 bucket '{bucket}': {e}"))?,
            );
            prefix = prefix_of(&segments)?;
        }
        "gs" => {
            let bucket = url
                .host_str()
                .ok_or("gs:// URI without a bucket: use gs://bucket/prefix")?;
            let mut keys = Vec::new();
            for (k, v) in opts {
                let key = gcs_option(k)?;
                // A service-account key may name its own store endpoint: the same rules
                // as any caller-chosen endpoint.
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(v)
                    && let Some(base) = m.get("gcs_base_url")
                {
                    let base = base.as_str().unwrap_or_default();
                    check_endpoint_url("gcs_base_url of the service-account key", base, local)?;
                }
                keys.push((key, v));
            }
            // Ambient credentials only when the caller gives no key of its own.
            let mut b = if keys.is_empty() {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            }
            .with_bucket_name(bucket);
            for (key, v) in keys {
                b = b.with_config(key, v);
            }
            store = Arc::new(
                b.build()
                    .map_err(|e| format!("cannot open GCS bucket '{bucket}': {e}"))?,
            );
            prefix = prefix_of(&segments)?;
        }
        "http" | "https" => {
            let host = url.host().ok_or("the storage URL has no host")?;
            let caller_host = !AZURE_BLOB_SUFFIXES.iter().any(|sfx| {
                url.host_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .ends_with(sfx)
            });
            if caller_host {
                check_endpoint_host(&host, local)?;
            }
            let (account, container, rest, endpoint) = if is_loopback_or_ip(&host) {
                // Path-style (emulator): /<account>/<container>/<prefix...>
                if segments.len() < 2 {
                    return Err(format!(
                        "'{base_url}' is a path-style storage URL and needs /<account>/<container>"
                    ));
                }
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let endpoint = format!("{}://{}{port}/{}", url.scheme(), host, segments[0]);
                (segments[0], segments[1], &segments[2..], endpoint)
            } else {
                let host_str = url.host_str().unwrap_or_default();
                let account = host_str.split('.').next().unwrap_or_default();
                if !host_str.contains(".blob.") || account.is_empty() {
                    return Err(format!(
                        "'{base_url}' is not an Azure Blob container URL (https://<account>.blob.core.windows.net/<container>)"
                    ));
                }
                if segments.is_empty() {
                    return Err(format!("'{base_url}' names no container"));
                }
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let endpoint = format!("{}://{host_str}{port}", url.scheme());
                (account, segments[0], &segments[1..], endpoint)
            };
            let mut keys = Vec::new();
            for (k, v) in opts {
                keys.push((azure_option(k)?, v.as_str()));
            }
            let token = params
                .token
                .as_deref()
                .map(|t| t.trim().trim_start_matches('?'))
                .filter(|t| !t.is_empty());
            if let Some(sas) = token {
                keys.push((AzureConfigKey::SasKey, sas));
            }
            let has = |want: AzureConfigKey| keys.iter().any(|(k, _)| *k == want);
            let service_principal = [
                AzureConfigKey::ClientId,
                AzureConfigKey::ClientSecret,
                AzureConfigKey::AuthorityId,
            ];
            let sp_given = service_principal.iter().filter(|k| has(**k)).count();
            if sp_given != 0 && sp_given != service_principal.len() {
                // A partial service principal would fall back to a managed identity of the
                // partition's host with the caller's client id.
                return Err("storageOptions: a service principal needs azure_storage_client_id, azure_storage_client_secret and azure_storage_tenant_id together".into());
            }
            let own_credentials =
                has(AzureConfigKey::AccessKey) || has(AzureConfigKey::SasKey) || sp_given != 0;
            let emulator = is_loopback_or_ip(&host) && account == AZURITE_DEV_ACCOUNT;
            if caller_host && !own_credentials && !emulator {
                return Err(format!(
                    "'{base_url}' is not an Azure Blob endpoint, so it needs credentials in the request (a SAS token, or storageOptions azure_storage_account_key); the partition never sends its own identity to a host a caller chose"
                ));
            }
            // Ambient credentials (the pool's managed/workload identity) only for Azure's
            // own endpoints and no credentials of the caller's.
            let mut b = if own_credentials || caller_host {
                MicrosoftAzureBuilder::new()
            } else {
                MicrosoftAzureBuilder::from_env()
            }
            .with_account(account)
            .with_container_name(container)
            .with_endpoint(endpoint)
            .with_allow_http(url.scheme() == "http");
            for (key, v) in keys {
                b = b.with_config(key, v);
            }
            if emulator && !own_credentials {
                b = b.with_access_key(AZURITE_DEV_KEY);
            }
            store = Arc::new(b.build().map_err(|e| {
                format!("cannot open Azure container '{container}' of account '{account}': {e}")
            })?);
            prefix = prefix_of(rest)?;
        }
        other => {
            return Err(format!(
                "unsupported storage scheme '{other}': use https (Azure Blob), s3, gs, pvc or file"
            ));
        }
    }
    Ok(Destination {
        store,
        prefix,
        base_url,
    })
}

/// Split a folder URL into its parent and the folder name (the last path segment).
pub fn split_folder(folder_url: &str) -> Result<(String, String), String> {
    let clean = strip_query(folder_url.trim()).trim_end_matches('/');
    match clean.rsplit_once('/') {
        Some((parent, folder)) if !folder.is_empty() && !parent.ends_with('/') => {
            Ok((parent.to_string(), folder.to_string()))
        }
        _ => Err(format!(
            "'{clean}' is not a backup folder URL (<storage URI>/<folder>)"
        )),
    }
}

/// Delete every object of backup folder `folder` of `dest`; returns how many were deleted.
/// A folder that does not exist (or is already empty) is not an error.
pub async fn delete_folder(dest: &Destination, folder: &str) -> Result<usize, String> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    validate_folder(folder)?;
    let prefix = dest.folder_path(folder);
    let what = dest.folder_url(folder);
    let objects: Vec<_> = dest
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| format!("cannot list {what}: {e}"))?;
    let mut n = 0;
    for o in objects {
        match dest.store.delete(&o.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
            Err(e) => return Err(format!("cannot delete {} of {what}: {e}", o.location)),
        }
    }
    Ok(n)
}

/// Validate a backup folder name (one path segment).
pub fn validate_folder(folder: &str) -> Result<(), String> {
    if folder.is_empty()
        || folder.len() > 200
        || folder == "."
        || folder == ".."
        || !folder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "'{folder}' is not a backup folder name (letters, digits, '-', '_', '.'; as returned in azureStorageBlobContainerUri)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(uri: &str) -> StorageParameters {
        StorageParameters {
            storage_resource_uri: uri.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_the_schemes() {
        let none = LocalPaths::default();
        let d = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/b", d.path().display());
        let dest = open(&p(&uri), &LocalPaths::anywhere()).unwrap();
        assert_eq!(dest.folder_url("f"), format!("{uri}/f"));
        assert!(d.path().join("b").is_dir());
        let dest = open(
            &p("http://127.0.0.1:10000/devstoreaccount1/c/x/y"),
            &LocalPaths::anywhere(),
        )
        .unwrap();
        assert_eq!(dest.prefix.as_ref(), "x/y");
        let e = open(&p("http://127.0.0.1:10000/devstoreaccount1/c"), &none).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let mut sas = p("https://acct.blob.core.windows.net/c");
        sas.token = Some("?sv=2021&sig=abc".into());
        assert!(!format!("{sas:?}").contains("abc"));
        let dest = open(&sas, &none).unwrap();
        assert_eq!(dest.prefix.as_ref(), "");
        assert!(
            open(&p("ftp://x/y"), &none)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(open(&p("https://example.com/c"), &none).is_err());
        assert!(open(&p("not a url"), &none).is_err());
    }

    #[tokio::test]
    async fn delete_folder_removes_every_object_and_the_directory() {
        use object_store::{ObjectStoreExt, PutPayload};
        let d = tempfile::tempdir().unwrap();
        let dest = open(
            &p(&format!("file://{}/b", d.path().display())),
            &LocalPaths::anywhere(),
        )
        .unwrap();
        for f in ["chunk-00000.bin", "manifest.json"] {
            dest.store
                .put(&dest.path("pool-1", f), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        dest.store
            .put(
                &dest.path("pool-2", "manifest.json"),
                PutPayload::from_static(b"y"),
            )
            .await
            .unwrap();
        assert_eq!(delete_folder(&dest, "pool-1").await.unwrap(), 2);
        assert!(!d.path().join("b/pool-1").exists());
        assert!(d.path().join("b/pool-2/manifest.json").exists());
        // Gone already: not an error.
        assert_eq!(delete_folder(&dest, "pool-1").await.unwrap(), 0);
        assert!(delete_folder(&dest, "../x").await.is_err());
    }

    #[test]
    fn gcs_uris_and_options() {
        let none = LocalPaths::default();
        let mut g = p("gs://hsm-bucket/nightly/eu");
        g.storage_options.insert(
            "google_service_account_key".into(),
            r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#.into(),
        );
        let dest = open(&g, &none).unwrap();
        assert_eq!(dest.prefix.as_ref(), "nightly/eu");
        assert_eq!(dest.folder_url("f"), "gs://hsm-bucket/nightly/eu/f");
        assert!(
            !format!("{g:?}").contains("disable_oauth"),
            "option values are redacted"
        );
        let mut bad = p("gs://hsm-bucket");
        bad.storage_options.insert("aws_region".into(), "x".into());
        let e = open(&bad, &none).unwrap_err();
        assert!(e.contains("'aws_region' is not a GCS option"), "{e}");
        let mut broken = p("gs://hsm-bucket");
        broken
            .storage_options
            .insert("google_service_account_key".into(), "not json".into());
        let e = open(&broken, &none).unwrap_err();
        assert!(e.contains("cannot open GCS bucket 'hsm-bucket'"), "{e}");
        assert!(!e.contains("not json"), "no credential in the message: {e}");
        assert!(
            open(&p("gs:///x"), &none)
                .unwrap_err()
                .contains("without a bucket")
        );
    }

    fn with(uri: &str, opts: &[(&str, &str)]) -> StorageParameters {
        let mut p = p(uri);
        for (k, v) in opts {
            p.storage_options.insert(k.to_string(), v.to_string());
        }
        p
    }

    /// The options of the reported exploit chain (and every other key that names a file,
    /// a credential/metadata/authority endpoint, a proxy or a TLS switch) are refused by
    /// name before any store is built, for each store and any alias of the key.
    #[test]
    fn storage_options_outside_the_allow_list_are_refused_by_name() {
        let dev = LocalPaths::anywhere();
        let cases: &[(&str, &[&str])] = &[
            (
                "http://127.0.0.1:10000/acct/cont",
                &[
                    "azure_federated_token_file",
                    "federated_token_file",
                    "azure_authority_host",
                    "authority_host",
                    "azure_msi_endpoint",
                    "msi_endpoint",
                    "azure_identity_endpoint",
                    "azure_object_id",
                    "azure_msi_resource_id",
                    "azure_use_azure_cli",
                    "azure_storage_use_emulator",
                    "azure_storage_endpoint",
                    "azure_fabric_token_service_url",
                    "azure_storage_token",
                    "azure_skip_signature",
                    "azure_storage_account_name",
                    "allow_invalid_certificates",
                    "proxy_url",
                ],
            ),
            (
                "s3://bucket/p",
                &[
                    "aws_container_credentials_full_uri",
                    "aws_container_credentials_relative_uri",
                    "aws_container_authorization_token_file",
                    "aws_web_identity_token_file",
                    "aws_role_arn",
                    "aws_sts_endpoint",
                    "aws_metadata_endpoint",
                    "aws_imdsv1_fallback",
                    "aws_skip_signature",
                    "aws_bucket",
                    "aws_allow_invalid_certificates",
                    "aws_proxy_url",
                    "aws_sse_customer_key_base64",
                ],
            ),
            (
                "gs://bucket/p",
                &[
                    "google_service_account",
                    "google_service_account_path",
                    "google_application_credentials",
                    "google_base_url",
                    "google_bearer_token",
                    "google_skip_signature",
                    "allow_invalid_certificates",
                ],
            ),
        ];
        for (uri, keys) in cases {
            for key in *keys {
                let e = open(&with(uri, &[(key, "/etc/passwd")]), &dev).unwrap_err();
                assert!(
                    e.contains(&format!("'{key}'")) && e.contains("give only"),
                    "{uri} {key}: {e}"
                );
                assert!(
                    !e.contains("/etc/passwd"),
                    "no option value in the message: {e}"
                );
            }
        }
        // The reported chain, whole: refused at its first option.
        let e = open(
            &with(
                "http://127.0.0.1:9/acct/cont",
                &[
                    ("azure_client_id", "x"),
                    ("azure_tenant_id", "t"),
                    ("azure_federated_token_file", "/pool/p0/tls.key"),
                    ("azure_authority_host", "http://127.0.0.1:9"),
                ],
            ),
            &dev,
        )
        .unwrap_err();
        assert!(
            e.contains("azure_authority_host") || e.contains("azure_federated_token_file"),
            "{e}"
        );
    }

    #[test]
    fn caller_chosen_endpoints_need_their_own_credentials_and_an_allowed_host() {
        let dev = LocalPaths::anywhere();
        let cluster = LocalPaths::default();
        let s3_keys = [
            ("aws_access_key_id", "AKIA"),
            ("aws_secret_access_key", "s"),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
        ];
        let s3_at = |endpoint: &str| {
            let mut o = s3_keys.to_vec();
            o.push(("aws_endpoint", endpoint));
            with("s3://bucket/p", &o)
        };
        // Allowed: a store in the cluster network, loopback in a development pool.
        assert!(open(&s3_at("http://10.0.0.5:9000"), &cluster).is_ok());
        assert!(open(&s3_at("https://minio.backup.svc:9000"), &cluster).is_ok());
        assert!(open(&s3_at("http://127.0.0.1:9000"), &dev).is_ok());
        // Refused: loopback in a cluster; link-local (metadata services) anywhere.
        for (endpoint, local, want) in [
            ("http://127.0.0.1:9000", &cluster, "loopback"),
            ("http://localhost:9000", &cluster, "loopback"),
            ("http://[::1]:9000", &cluster, "loopback"),
            ("http://0.0.0.0:9000", &cluster, "loopback"),
            ("http://[::ffff:127.0.0.1]:9000", &cluster, "loopback"),
            ("http://169.254.169.254", &dev, "link-local"),
            ("http://[fe80::1]:80", &dev, "link-local"),
            ("http://[::ffff:169.254.169.254]", &dev, "link-local"),
            ("http://0xa9fea9fe", &dev, "link-local"),
            ("file:///etc", &dev, "not an http(s) URL"),
            ("http://user:pw@10.0.0.5", &dev, "credentials in the URL"),
        ] {
            let e = open(&s3_at(endpoint), local).unwrap_err();
            assert!(e.contains(want), "{endpoint}: {e}");
        }
        // A caller-chosen endpoint never gets the partition's ambient credentials.
        let e = open(
            &with("s3://bucket", &[("aws_endpoint", "http://10.0.0.5:9000")]),
            &cluster,
        )
        .unwrap_err();
        assert!(e.contains("never sends its own credentials"), "{e}");
        let e = open(
            &with("s3://bucket", &[("aws_access_key_id", "AKIA")]),
            &cluster,
        )
        .unwrap_err();
        assert!(
            e.contains("both aws_access_key_id and aws_secret_access_key"),
            "{e}"
        );
        // Azure: a host that is not Azure's own needs credentials in the request.
        let e = open(&p("https://evil.blob.example.com/c"), &cluster).unwrap_err();
        assert!(e.contains("needs credentials in the request"), "{e}");
        let e = open(&p("http://10.0.0.5:10000/acct/c"), &cluster).unwrap_err();
        assert!(e.contains("needs credentials in the request"), "{e}");
        let mut sas = p("http://10.0.0.5:10000/acct/c");
        sas.token = Some("sv=1&sig=x".into());
        assert!(open(&sas, &cluster).is_ok());
        let e = open(&p("http://169.254.169.254/acct/c"), &dev).unwrap_err();
        assert!(e.contains("link-local"), "{e}");
        // A partial service principal would fall back to the host's managed identity.
        let e = open(
            &with(
                "https://acct.blob.core.windows.net/c",
                &[
                    ("azure_storage_client_id", "x"),
                    ("azure_storage_tenant_id", "t"),
                ],
            ),
            &cluster,
        )
        .unwrap_err();
        assert!(e.contains("together"), "{e}");
        // GCS: a key naming its own base URL follows the endpoint rules.
        let key = |base: &str| {
            format!(
                r#"{{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true, "gcs_base_url": "{base}"}}"#
            )
        };
        let e = open(
            &with(
                "gs://b",
                &[("google_service_account_key", &key("http://169.254.169.254"))],
            ),
            &dev,
        )
        .unwrap_err();
        assert!(e.contains("link-local"), "{e}");
        let e = open(
            &with(
                "gs://b",
                &[("google_service_account_key", &key("http://127.0.0.1:4443"))],
            ),
            &cluster,
        )
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(
            open(
                &with(
                    "gs://b",
                    &[("google_service_account_key", &key("http://127.0.0.1:4443"))]
                ),
                &dev,
            )
            .is_ok()
        );
    }

    #[test]
    fn local_paths_stay_where_they_are_allowed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let claim = d.path().join("mnt-claim");
        let local = LocalPaths {
            file_root: Some(root.clone()),
            claims: BTreeMap::from([("backups".to_string(), claim.clone())]),
            ..Default::default()
        };
        // Inside the root, and a mounted claim (with a prefix).
        let inside = format!("file://{}/x", root.display());
        assert_eq!(
            open(&p(&inside), &local).unwrap().folder_url("f"),
            format!("{inside}/f")
        );
        let dest = open(&p("pvc://backups/hsm/prod"), &local).unwrap();
        assert_eq!(dest.folder_url("f"), "pvc://backups/hsm/prod/f");
        assert!(claim.join("hsm/prod").is_dir());
        // Outside the root, escapes, unknown claims, no file root at all.
        for (uri, want) in [
            (format!("file://{}/other", d.path().display()), "outside"),
            (
                format!("file://{}/../x", root.display()),
                "not a plain path",
            ),
            (
                format!("file://{}/%2e%2e/x", root.display()),
                "not a plain path",
            ),
            (
                "pvc://other/x".to_string(),
                "add it to the ManagedHsm's spec.backupVolumes",
            ),
            ("pvc://backups/a/%2e%2e/b".to_string(), "not a plain path"),
            ("pvc://backups/a/../../b".to_string(), "not a plain path"),
            ("pvc:///x".to_string(), "without a claim"),
        ] {
            let e = open(&p(&uri), &local).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
        }
        assert!(!d.path().join("other").exists() && !d.path().join("x").exists());
        let e = open(&p(&inside), &LocalPaths::default()).unwrap_err();
        assert!(e.contains("spec.backupVolumes"), "{e}");
    }

    #[test]
    fn folders() {
        assert_eq!(
            split_folder("https://a.blob.core.windows.net/c/pool-1").unwrap(),
            ("https://a.blob.core.windows.net/c".into(), "pool-1".into())
        );
        assert!(split_folder("nofolder").is_err());
        assert!(validate_folder("pool-20260101T000000Z").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            assert!(validate_folder(bad).is_err(), "{bad}");
        }
    }
}
