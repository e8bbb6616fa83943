//! `DIR/pool.json` of a local pool (`keystead-partition local --dir DIR`): how clients and
//! tools (`kubectl hsm --pool`) find the pool's endpoints, CA, token and issuer.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolFile {
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub admin_token_file: PathBuf,
    pub issuer: String,
    /// Where the local issuer's key lives (for `kubectl hsm token`).
    pub issuer_dir: PathBuf,
    pub audience: String,
    /// The pool's name (its region name when extended; absent in older pool files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
}

/// A pool file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PoolFileError {
    #[error("cannot read {0} (start a pool with `keystead-partition local --dir DIR`): {1}")]
    Read(String, std::io::Error),
    #[error("{0} is not a pool file: {1}")]
    Parse(String, serde_json::Error),
}

impl PoolFile {
    pub fn load(path: &Path) -> Result<PoolFile, PoolFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PoolFileError::Read(path.display().to_string(), e))?;
        serde_json::from_str(&text).map_err(|e| PoolFileError::Parse(path.display().to_string(), e))
    }
}

/// The pids of a local pool's partition processes by partition name (`p0`, `p1`, ...): the
/// children of the runner (`keystead-partition local`, pid `runner`) whose command line names
/// `<name>/config.json`, read from `/proc` (Linux). For tests and tools that signal one
/// partition of a local pool.
pub fn partition_pids(runner: u32) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    let tasks = format!("/proc/{runner}/task");
    for task in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let name = cmdline
                .split('\0')
                .filter_map(|arg| arg.strip_suffix("/config.json"))
                .filter_map(|dir| dir.rsplit('/').next())
                .find(|n| {
                    n.len() > 1 && n.starts_with('p') && n[1..].bytes().all(|b| b.is_ascii_digit())
                });
            if let Some(n) = name {
                out.insert(n.to_string(), pid);
            }
        }
    }
    out
}
