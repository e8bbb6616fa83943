//! Background backup and restore jobs and their status, in the memory of the partition's
//! `App` ([`Jobs`]).
//!
//! A job runs on the partition that accepted it; the other partitions of the pool answer
//! status requests for it by asking their peers (`GET /internal/jobs/{jobId}`), so a client
//! behind a load-balanced Service can poll any partition.
//! A partition restart loses job status (a poller then gets 404), never data: a backup
//! folder without its manifest is incomplete and is never restored, and a restore commits
//! as one command or not at all.

use crate::consensus::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Finished jobs kept per partition before the oldest are forgotten.
const MAX_FINISHED: usize = 1000;

pub use keystead_core::backup_job::{
    BackupSummary, JobError, JobKind as Kind, JobState as Status, JobStatus,
};

/// A job as one partition reports it to another (the Azure body does not carry the kind).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerJob {
    pub kind: Kind,
    pub status: JobStatus,
}

impl PeerJob {
    /// The job's status with its kind restored.
    pub fn into_status(self) -> JobStatus {
        JobStatus {
            kind: Some(self.kind),
            ..self.status
        }
    }
}

/// `jobId` as it may appear in a peer path: the ids this module makes are hex.
pub fn valid_id(job_id: &str) -> bool {
    !job_id.is_empty() && job_id.len() <= 64 && job_id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The jobs of this partition, in memory (held by its `App`): their status by pool and
/// job id, and one lock per pool so that its backups and restores run one at a time.
#[derive(Default)]
pub struct Jobs {
    /// (pool id, job id) → (creation order, status).
    registry: Mutex<HashMap<(String, String), (u64, JobStatus)>>,
    seq: AtomicU64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

impl Jobs {
    /// Record a new job of `pool_id` and return its status.
    pub fn create(&self, pool_id: &str, kind: Kind, details: &str, now: i64) -> JobStatus {
        let job_id = uuid::Uuid::new_v4().simple().to_string();
        let st = JobStatus {
            status: Status::InProgress,
            status_details: Some(details.to_string()),
            error: None,
            job_id: job_id.clone(),
            start_time: now,
            end_time: None,
            azure_storage_blob_container_uri: None,
            backup: None,
            restore_point: None,
            kind: Some(kind),
        };
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let finished = r
            .values()
            .filter(|(_, s)| s.status != Status::InProgress)
            .count();
        if finished >= MAX_FINISHED {
            let mut old: Vec<_> = r
                .iter()
                .filter(|(_, (_, s))| s.status != Status::InProgress)
                .map(|(k, (n, _))| (*n, k.clone()))
                .collect();
            old.sort();
            for (_, k) in old.into_iter().take(finished + 1 - MAX_FINISHED) {
                r.remove(&k);
            }
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        r.insert((pool_id.to_string(), job_id), (seq, st.clone()));
        st
    }

    /// Change a job's status.
    pub fn update(&self, pool_id: &str, job_id: &str, f: impl FnOnce(&mut JobStatus)) {
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, st)) = r.get_mut(&(pool_id.to_string(), job_id.to_string())) {
            f(st);
        }
    }

    /// Mark a job finished: succeeded, or failed with `error`.
    pub fn finish(&self, pool_id: &str, job_id: &str, now: i64, result: Result<String, JobError>) {
        self.update(pool_id, job_id, |st| {
            st.end_time = Some(now);
            match result {
                Ok(details) => {
                    st.status = Status::Succeeded;
                    st.status_details = Some(details);
                }
                Err(e) => {
                    st.status = Status::Failed;
                    st.status_details = Some(e.message.clone());
                    st.error = Some(e);
                }
            }
        });
    }

    /// The status of a job of `pool_id`.
    pub fn get(&self, pool_id: &str, job_id: &str) -> Option<JobStatus> {
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        r.get(&(pool_id.to_string(), job_id.to_string()))
            .map(|(_, s)| s.clone())
    }

    /// This partition's job, for a peer.
    pub fn get_for_peer(&self, pool_id: &str, job_id: &str) -> Option<PeerJob> {
        let st = self.get(pool_id, job_id)?;
        Some(PeerJob {
            kind: st.kind?,
            status: st,
        })
    }

    /// The lock of `pool_id`: its backups and restores run one at a time.
    pub fn pool_lock(&self, pool_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(pool_id.to_string()).or_default().clone()
    }
}

/// `GET /internal/jobs/{jobId}`: a backup or restore job running (or finished) on a peer.
pub const JOBS_PATH: &str = "/internal/jobs/";

/// Ask the other members for a job this partition does not know (jobs live in the memory
/// of the partition that runs them). `job_id` must satisfy `job::valid_id`.
pub async fn find_job(store: &Store, job_id: &str) -> Option<JobStatus> {
    let replica = store.replica()?.clone();
    let path = format!("{JOBS_PATH}{job_id}");
    for m in replica.other_members() {
        match replica
            .client
            .get::<PeerJob>(&m.url, &path, Duration::from_secs(3))
            .await
        {
            Ok(j) => return Some(j.into_status()),
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer does not report the job"),
        }
    }
    None
}
