//! The body of a backup or restore job (`FullBackupOperation` / `RestoreOperation` of the
//! Azure `backuprestore` API), as the partition answers `POST /backup`, `PUT /restore` and
//! their `…/pending` status, and as the operator and `kubectl hsm` read it.
//!
//! Keystead adds optional fields (ignored by Azure clients): on a finished backup the
//! folder's figures ([`BackupSummary`]), on a finished full restore the restore point.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    InProgress,
    Succeeded,
    Failed,
}

/// What kind of job this is (kept by the partition, not sent).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum JobKind {
    Backup,
    Restore,
    SelectiveRestore,
    RestoreCheck,
}

/// The error of a failed job: a stable code (`SecurityDomainMismatch`, `BackupIntegrity`,
/// `StorageError`, `KeyNotFound`, `Conflict`, `BadParameter`, …) and a message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innererror: Option<serde_json::Value>,
}

/// Figures of a finished backup (Keystead extension of the job body).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    /// Name of the backup folder (the last segment of `azureStorageBlobContainerUri`).
    pub folder: String,
    pub key_count: u64,
    pub deleted_key_count: u64,
    /// Bytes of the chunks and the manifest.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of `manifest.json` as written.
    pub manifest_sha256: String,
    /// Fingerprint of the security domain the backup is bound to.
    pub domain_fingerprint: String,
    /// Set for a single-key backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
}

/// The job body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub status: JobState,
    #[serde(default)]
    pub status_details: Option<String>,
    #[serde(default)]
    pub error: Option<JobError>,
    pub job_id: String,
    /// Unix seconds.
    pub start_time: i64,
    #[serde(default)]
    pub end_time: Option<i64>,
    /// The backup folder URL of a finished backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_storage_blob_container_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSummary>,
    /// Folder URL of the restore point a full restore took before it changed anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    #[serde(skip)]
    pub kind: Option<JobKind>,
}
