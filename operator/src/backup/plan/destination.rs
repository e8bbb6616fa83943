//! Where a backup goes: a destination's store URI and parameters (credentials from its
//! Secret), and whether the claims of a pool's `spec.backupVolumes` can take backups
//! (`BackupVolumesReady`). Pure functions only.

use crate::conditions::{self as c, Status};
use crate::crd::{BackupDestination, BackupVolume};
use k8s_openapi::ByteString;
use keystead_core::store::StorageParameters;
use std::collections::BTreeMap;

/// The Secret holding a destination's credentials (none for `filesystem`).
pub fn credentials_secret(d: &BackupDestination) -> Option<&str> {
    if let Some(s3) = &d.s3 {
        return Some(&s3.credentials.name);
    }
    if let Some(a) = &d.azure_blob {
        return Some(&a.credentials.name);
    }
    d.gcs.as_ref().map(|g| g.credentials.name.as_str())
}

fn clean_prefix(p: Option<&str>) -> Result<String, String> {
    let p = p.unwrap_or_default().trim().trim_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!(
            "the prefix or path '{p}' may not contain '.' or '..' segments"
        ));
    }
    Ok(p.to_string())
}

fn join(base: &str, prefix: &str) -> String {
    let base = base.trim_end_matches('/');
    if prefix.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{prefix}")
    }
}

fn secret_value(
    data: Option<&BTreeMap<String, ByteString>>,
    key: &str,
) -> Result<Option<String>, String> {
    match data.and_then(|d| d.get(key)) {
        None => Ok(None),
        Some(b) => String::from_utf8(b.0.clone())
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| format!("the Secret's key {key} is not UTF-8 text")),
    }
}

/// The store URI of a destination: the parent of its backup folders, as the partition is
/// given it. A `filesystem` destination is `pvc://<claimName>/<path>`, which the partitions
/// resolve to where they mount the claim. It holds no credential.
pub fn destination_uri(d: &BackupDestination) -> Result<String, String> {
    if let Some(f) = &d.filesystem {
        let claim = clean_prefix(Some(&f.claim_name))?;
        if claim.is_empty() || claim.contains('/') {
            return Err(format!(
                "claimName '{}' is not a PersistentVolumeClaim name",
                f.claim_name
            ));
        }
        let path = clean_prefix(f.path.as_deref())?;
        Ok(join(&format!("pvc://{claim}"), &path))
    } else if let Some(s3) = &d.s3 {
        Ok(join(
            &format!("s3://{}", s3.bucket),
            &clean_prefix(s3.prefix.as_deref())?,
        ))
    } else if let Some(a) = &d.azure_blob {
        Ok(join(&a.container_uri, &clean_prefix(a.prefix.as_deref())?))
    } else if let Some(g) = &d.gcs {
        Ok(join(
            &format!("gs://{}", g.bucket),
            &clean_prefix(g.prefix.as_deref())?,
        ))
    } else {
        Err("the destination names no store; set one of filesystem, s3, azureBlob, gcs".into())
    }
}

/// The store parameters the partition (and the operator, to delete folders) opens for a
/// destination: [`destination_uri`] and the credentials from `secret`, the data of
/// [`credentials_secret`]. Errors say what is wrong with the spec or the Secret; values
/// never appear.
pub fn storage_parameters(
    d: &BackupDestination,
    secret: Option<&BTreeMap<String, ByteString>>,
) -> Result<StorageParameters, String> {
    let mut p = StorageParameters {
        storage_resource_uri: destination_uri(d)?,
        ..StorageParameters::default()
    };
    let need = |key: &str, name: &str| -> Result<String, String> {
        secret_value(secret, key)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the Secret {name} has no key {key}"))
    };
    if let Some(s3) = &d.s3 {
        let name = &s3.credentials.name;
        let o = &mut p.storage_options;
        o.insert("aws_access_key_id".into(), need("AWS_ACCESS_KEY_ID", name)?);
        o.insert(
            "aws_secret_access_key".into(),
            need("AWS_SECRET_ACCESS_KEY", name)?,
        );
        if let Some(t) = secret_value(secret, "AWS_SESSION_TOKEN")? {
            o.insert("aws_session_token".into(), t);
        }
        if let Some(e) = &s3.endpoint {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(format!("the S3 endpoint '{e}' is not an http(s) URL"));
            }
            o.insert("aws_endpoint".into(), e.clone());
            if e.starts_with("http://") {
                o.insert("aws_allow_http".into(), "true".into());
            }
        }
        o.insert(
            "aws_region".into(),
            s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
        );
    } else if let Some(a) = &d.azure_blob {
        let name = &a.credentials.name;
        match (
            secret_value(secret, "sasToken")?.filter(|v| !v.is_empty()),
            secret_value(secret, "accountKey")?.filter(|v| !v.is_empty()),
        ) {
            (Some(sas), _) => p.token = Some(sas),
            (None, Some(key)) => {
                p.storage_options
                    .insert("azure_storage_account_key".into(), key);
            }
            (None, None) => {
                return Err(format!(
                    "the Secret {name} has neither sasToken nor accountKey"
                ));
            }
        }
    } else if let Some(g) = &d.gcs {
        p.storage_options.insert(
            "google_service_account_key".into(),
            need("service-account.json", &g.credentials.name)?,
        );
    }
    Ok(p)
}

/// What the operator sees of a claim listed in `spec.backupVolumes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimState {
    pub name: String,
    /// `None`: the claim does not exist.
    pub found: Option<ClaimFound>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimFound {
    /// `status.phase` (`Pending`, `Bound`, `Lost`).
    pub phase: Option<String>,
    /// `spec.accessModes`.
    pub access_modes: Vec<String>,
}

/// `BackupVolumesReady` of a pool listing `claims` in `spec.backupVolumes` (`None` when it
/// lists none: no condition). Every partition mounts every claim, on different nodes, so a
/// claim must exist, be Bound and be ReadWriteMany.
pub fn backup_volumes_condition(claims: &[ClaimState]) -> Option<c::Cond> {
    if claims.is_empty() {
        return None;
    }
    let missing: Vec<&str> = claims
        .iter()
        .filter(|c| c.found.is_none())
        .map(|c| c.name.as_str())
        .collect();
    let found = || {
        claims
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.found.as_ref()?)))
    };
    let not_shared: Vec<&str> = found()
        .filter(|(_, f)| !f.access_modes.iter().any(|m| m == "ReadWriteMany"))
        .map(|(n, _)| n)
        .collect();
    let not_bound: Vec<&str> = found()
        .filter(|(_, f)| f.phase.as_deref() != Some("Bound"))
        .map(|(n, _)| n)
        .collect();
    let cond = |reason, msg: String| {
        Some(c::Cond::new(
            c::BACKUP_VOLUMES_READY,
            Status::False,
            reason,
            msg,
        ))
    };
    if !missing.is_empty() {
        return cond(
            c::Reason::VolumeMissing,
            format!(
                "the PersistentVolumeClaim(s) {} of spec.backupVolumes do not exist in this namespace; partitions that mount them cannot start: create them (ReadWriteMany) or remove them from spec.backupVolumes",
                missing.join(", ")
            ),
        );
    }
    if !not_shared.is_empty() {
        return cond(
            c::Reason::VolumeNotShared,
            format!(
                "the PersistentVolumeClaim(s) {} are not ReadWriteMany; the three partitions run on different nodes and all mount them, so partitions may not start: use ReadWriteMany claims",
                not_shared.join(", ")
            ),
        );
    }
    if !not_bound.is_empty() {
        return cond(
            c::Reason::VolumeNotBound,
            format!(
                "the PersistentVolumeClaim(s) {} are not Bound yet",
                not_bound.join(", ")
            ),
        );
    }
    let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
    Some(c::Cond::new(
        c::BACKUP_VOLUMES_READY,
        Status::True,
        c::Reason::VolumesBound,
        format!(
            "{} mounted in every partition for filesystem backups",
            names.join(", ")
        ),
    ))
}

/// Why a job on `uri` cannot start on pool `pool` (spec `backup_volumes`) now: its claim is
/// not one the pool mounts.
pub fn claim_not_mounted(uri: &str, pool: &str, backup_volumes: &[BackupVolume]) -> Option<String> {
    let claim = keystead_core::store::claim_of(uri)?;
    (!backup_volumes.iter().any(|v| v.claim_name == claim)).then(|| {
        format!(
            "the PersistentVolumeClaim {claim} is not mounted in the partitions of {pool}: add {{claimName: {claim}}} to the ManagedHsm's spec.backupVolumes (the partitions roll one at a time); waiting"
        )
    })
}
