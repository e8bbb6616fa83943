//! Region helpers of the test cluster (docs/regions.md): a pool extended from a running
//! one as a replica region, as `keystead-partition local --extend` does.

use super::*;
use keystead_partition::local::{PoolFile, REGION_CONFIG, name_region_on_primary};

/// Name region `name` (whose pool file is `pool`) on the primary of `primary_pool_json`;
/// the region configuration file its partitions start with.
pub(super) async fn name_on_primary(
    primary_pool_json: &std::path::Path,
    name: &str,
    pool: &PoolFile,
) -> PathBuf {
    let primary = PoolFile::load(primary_pool_json).unwrap();
    let ca = std::fs::read_to_string(&pool.ca_file).unwrap();
    name_region_on_primary(&primary, name, &ca).await.unwrap();
    pool.ca_file.with_file_name(REGION_CONFIG)
}

impl Cluster {
    /// Region `name`: three partitions with a CA of their own, a replica region of
    /// `primary` (which must run, activated).
    pub async fn extend(primary: &Cluster, name: &str) -> Cluster {
        Self::start_inner(
            |_, _| {},
            |_, _| {},
            super::Opts {
                extend: Some(primary.dir.join("pool.json")),
                ..super::Opts::pool(name)
            },
        )
        .await
    }

    /// A primary activated and a replica region `west` of it that has joined.
    pub async fn primary_and_replica() -> (Cluster, Cluster) {
        let a = Cluster::start().await;
        a.activate().await;
        let b = Cluster::extend(&a, "west").await;
        b.until_joined().await;
        (a, b)
    }

    /// [`Cluster::primary_and_replica`] with each region on hosts of its own (network
    /// namespaces, `netns.rs`) joined by one link that [`Cluster::cut_region_link`] cuts,
    /// where the machine allows it; else on loopback ([`Cluster::on_hosts`] says which).
    pub async fn primary_and_replica_on_hosts() -> (Cluster, Cluster) {
        let a = Cluster::start_on_hosts().await;
        a.activate().await;
        let b = Self::start_inner(
            |_, _| {},
            |_, _| {},
            super::Opts {
                extend: Some(a.dir.join("pool.json")),
                hosts: a.on_hosts(),
                join: Some(&a),
                ..super::Opts::pool("west")
            },
        )
        .await;
        b.until_joined().await;
        (a, b)
    }

    /// The region part of partition `i`'s status.
    pub async fn region(&self, i: usize) -> Option<Value> {
        self.status(i).await.map(|v| v["region"].clone())
    }

    /// Wait until every partition of this replica region has joined and holds the domain.
    pub async fn until_joined(&self) {
        for i in 0..N {
            self.until("the region joined its primary", 120, || async move {
                matches!(self.status(i).await, Some(v) if v["domainLoaded"] == true && v["region"]["joined"] == true)
            })
            .await;
        }
    }

    /// Whether partition `i` serves key `name`.
    pub async fn has_key(&self, i: usize, name: &str) -> bool {
        self.call(i, Method::GET, &format!("/keys/{name}"), None)
            .await
            .0
            == StatusCode::OK
    }

    /// Run every partition with region configuration `cfg` (JSON) from now on: restarted,
    /// back with the domain.
    pub async fn restart_with_region_config(&mut self, cfg: &Value) {
        let path = self.dir.join("own-region.json");
        std::fs::write(&path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
        self.region_config = Some(path);
        self.restart_all().await;
    }

    /// A request to partition `i` with a bearer token of another pool (the same issuer).
    pub fn token(&self) -> &str {
        &self.token
    }
}
