//! Reading backups from a destination without the security domain: list the folders with
//! their manifests, and check a folder's chunks against its manifest. The partition, the
//! operator and `kubectl hsm` read backups the same way.

use crate::backup_format::{self as format, FormatError, Manifest};
use crate::store::{self as dest, Destination};
use object_store::ObjectStoreExt;

/// Why a backup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the storage operation on {what} failed: {reason}")]
    Storage { what: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

fn storage(what: impl Into<String>, e: impl std::fmt::Display) -> ReadError {
    ReadError::Storage {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// The bytes of `file` in `folder`, refused when larger than `limit`.
pub async fn get_bytes(
    dest: &Destination,
    folder: &str,
    file: &str,
    limit: u64,
) -> Result<bytes::Bytes, ReadError> {
    let what = format!("{}/{file}", dest.folder_url(folder));
    let r = dest
        .store
        .get(&dest.path(folder, file))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => ReadError::Storage {
                what: what.clone(),
                reason: "it does not exist (is the folder name right, and did the backup finish?)"
                    .into(),
            },
            e => storage(&what, e),
        })?;
    if r.meta.size > limit {
        return Err(ReadError::Invalid(format!(
            "{what} is {} bytes, more than the {limit} bytes a backup file may have",
            r.meta.size
        )));
    }
    r.bytes().await.map_err(|e| storage(&what, e))
}

/// Read and parse the manifest of `folder` (no MAC check).
pub async fn read_manifest(dest: &Destination, folder: &str) -> Result<Manifest, ReadError> {
    dest::validate_folder(folder).map_err(ReadError::Invalid)?;
    let bytes = get_bytes(dest, folder, format::MANIFEST, format::MAX_MANIFEST_BYTES).await?;
    Ok(format::parse_manifest(&bytes)?)
}

/// Check the manifest and every chunk's size and digest, without the domain.
pub async fn verify_digests(dest: &Destination, folder: &str) -> Result<Manifest, ReadError> {
    let m = read_manifest(dest, folder).await?;
    for c in &m.body.chunks {
        let bytes = get_bytes(dest, folder, &c.name, format::MAX_CHUNK_BYTES).await?;
        format::check_chunk_digest(c, &bytes)?;
    }
    Ok(m)
}

/// One backup folder found under a destination.
#[derive(Debug)]
pub struct Listed {
    pub folder: String,
    /// The parsed manifest, or why it could not be read (e.g. an unfinished backup).
    pub manifest: Result<Manifest, ReadError>,
}

/// List the backup folders under `dest` with their manifests (no MAC check).
pub async fn list_backups(dest: &Destination) -> Result<Vec<Listed>, ReadError> {
    let prefix = (!dest.prefix.as_ref().is_empty()).then_some(&dest.prefix);
    let listing = dest
        .store
        .list_with_delimiter(prefix)
        .await
        .map_err(|e| storage(&dest.base_url, e))?;
    let mut out = vec![];
    for p in listing.common_prefixes {
        let Some(folder) = p.filename().map(str::to_string) else {
            continue;
        };
        if dest::validate_folder(&folder).is_err() {
            continue;
        }
        let manifest = read_manifest(dest, &folder).await;
        out.push(Listed { folder, manifest });
    }
    out.sort_by(|a, b| a.folder.cmp(&b.folder));
    Ok(out)
}
