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
//! `storageOptions` are `object_store` configuration keys (`aws_endpoint`,
//! `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_allow_http`,
//! `azure_storage_account_key`, `google_service_account_key`, ...).

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
        url::Host::Domain(d) => *d == "localhost",
    }
}

/// Which local directories `file://` and `pvc://` URIs may name.
#[derive(Clone, Debug, Default)]
pub struct LocalPaths {
    /// `file://` URIs must lie in this directory (`/`: anywhere the process may write);
    /// `None` refuses `file://` altogether.
    pub file_root: Option<PathBuf>,
    /// `pvc://<claim>/...`: where each mounted claim is (claim name → directory).
    pub claims: BTreeMap<String, PathBuf>,
}

impl LocalPaths {
    /// Any directory the process may write (a command-line tool, a local pool).
    pub fn anywhere() -> Self {
        Self {
            file_root: Some(PathBuf::from("/")),
            claims: BTreeMap::new(),
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
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (k, v) in opts {
                let key: AmazonS3ConfigKey = k
                    .parse()
                    .map_err(|_| format!("storageOptions: '{k}' is not an S3 option"))?;
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
            let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            for (k, v) in opts {
                let key: GoogleConfigKey = k
                    .parse()
                    .map_err(|_| format!("storageOptions: '{k}' is not a GCS option"))?;
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
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_account(account)
                .with_container_name(container)
                .with_endpoint(endpoint)
                .with_allow_http(url.scheme() == "http");
            for (k, v) in opts {
                let key: AzureConfigKey = k
                    .parse()
                    .map_err(|_| format!("storageOptions: '{k}' is not an Azure option"))?;
                b = b.with_config(key, v);
            }
            let token = params
                .token
                .as_deref()
                .map(|t| t.trim().trim_start_matches('?'))
                .filter(|t| !t.is_empty());
            if let Some(sas) = token {
                b = b.with_config(AzureConfigKey::SasKey, sas);
            } else if is_loopback_or_ip(&host)
                && account == AZURITE_DEV_ACCOUNT
                && b.get_config_value(&AzureConfigKey::AccessKey).is_none()
            {
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
        let dest = open(&p("http://127.0.0.1:10000/devstoreaccount1/c/x/y"), &none).unwrap();
        assert_eq!(dest.prefix.as_ref(), "x/y");
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

    #[test]
    fn local_paths_stay_where_they_are_allowed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let claim = d.path().join("mnt-claim");
        let local = LocalPaths {
            file_root: Some(root.clone()),
            claims: BTreeMap::from([("backups".to_string(), claim.clone())]),
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
