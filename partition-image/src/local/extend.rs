//! `keystead-partition local --dir B --extend A/pool.json` (docs/regions.md): pool B as a
//! replica region of the running local pool A — its region configuration (A's endpoints
//! and CA), and naming B on A with A's administrator token.

use super::PoolFile;
use anyhow::Context;
use keystead_core::region::{AcceptRegionRequest, PrimarySource, RegionConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The region configuration file of an extended pool (in its directory).
pub const REGION_CONFIG: &str = "region.json";

/// The region name of the pool `primary` describes.
pub fn primary_of(primary: &PoolFile) -> String {
    primary.pool_name.clone().unwrap_or_else(|| "local".into())
}

/// Write `DIR/region.json`: region `name`, replica of `primary`.
pub(super) fn write_region_config(
    dir: &Path,
    name: &str,
    primary: &PoolFile,
) -> anyhow::Result<PathBuf> {
    let cfg = RegionConfig {
        name: name.to_string(),
        primary: Some(PrimarySource {
            name: primary_of(primary),
            endpoints: primary.endpoints.clone(),
            ca_file: primary.ca_file.clone(),
        }),
        write_lease_ms: None,
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("cannot extend the pool: {e}"))?;
    let path = dir.join(REGION_CONFIG);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(path)
}

/// `PUT /admin/regions/{region}` on the primary with the region's CA, as the primary's
/// administrator (tried on each endpoint until one answers).
pub async fn name_region_on_primary(
    primary: &PoolFile,
    region: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    let ca = std::fs::read(&primary.ca_file)
        .with_context(|| format!("cannot read {}", primary.ca_file.display()))?;
    let token = std::fs::read_to_string(&primary.admin_token_file)
        .with_context(|| format!("cannot read {}", primary.admin_token_file.display()))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(15))
        .build()?;
    let body = AcceptRegionRequest {
        ca_certificate: ca_pem.to_string(),
    };
    let mut last = String::new();
    for ep in &primary.endpoints {
        let r = client
            .put(format!("{ep}/admin/regions/{region}?api-version=7.5"))
            .bearer_auth(token.trim())
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                anyhow::bail!("the primary refused to name region '{region}': {status} {text}");
            }
            Err(e) => last = format!("{ep}: {e}"),
        }
    }
    anyhow::bail!("no endpoint of the primary answers ({last}); start the primary pool first")
}
