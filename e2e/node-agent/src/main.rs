//! `keystead-node-agent`: the one simulated part of the test control plane. It registers
//! Nodes, runs the pods the scheduler binds to them as local processes, provisions their
//! PersistentVolumeClaims as host directories and makes Service addresses reachable.
//! What it does and does not do: docs/dev-cluster.md.

mod addresses;
mod cache;
mod nodes;
mod pods;
mod probes;
mod proxy;
mod storage;
mod volumes;

use anyhow::{Context, bail};
use clap::Parser;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Kubeconfig of the agent (the dev cluster's admin credentials).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// State directory: pod directories, volumes, the address table.
    #[arg(long)]
    dir: PathBuf,
    /// A Node to register and serve: NAME=ZONE[,LABEL=VALUE...]. Repeat for more Nodes.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// First two octets of the pod addresses, in 100.64.0.0/10: "100.N" gives 100.N.x.y.
    #[arg(long, default_value = "100.64")]
    pod_network: String,
    /// An image the agent can run: REPOSITORY-BASENAME=BINARY (the image `reg/x/NAME:tag`
    /// runs BINARY). Repeat for more images.
    #[arg(long = "image")]
    images: Vec<String>,
    /// The StorageClass whose claims the agent provisions as host directories.
    #[arg(long, default_value = "standard")]
    storage_class: String,
    /// Cluster DNS domain of the pod names handed to partitions.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

/// What every part of the agent shares.
pub struct Agent {
    pub client: kube::Client,
    /// The API server's URL as the agent reaches it (pods get the same in their kubeconfig).
    pub api_url: String,
    pub dir: PathBuf,
    pub nodes: Vec<nodes::NodeSpec>,
    pub images: BTreeMap<String, PathBuf>,
    pub storage_class: String,
    pub cluster_domain: String,
    pub addresses: addresses::Addresses,
    pub caches: cache::Caches,
}

impl Agent {
    pub fn serves(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.name == node)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYSTEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.dir)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cli.kubeconfig)
        .with_context(|| format!("cannot read {}", cli.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let api_url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config)?;
    let caches = cache::Caches::start(&client).await?;
    let nodes = cli
        .nodes
        .iter()
        .map(|n| nodes::NodeSpec::parse(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut images = BTreeMap::new();
    for i in &cli.images {
        let Some((repo, bin)) = i.split_once('=') else {
            bail!("--image {i}: expected REPOSITORY-BASENAME=BINARY");
        };
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!(
                "--image {i}: {} is not a file (build it first)",
                bin.display()
            );
        }
        images.insert(repo.to_string(), bin);
    }
    let net = parse_network(&cli.pod_network)?;
    let agent = Arc::new(Agent {
        client,
        api_url,
        addresses: addresses::Addresses::load(cli.dir.join("addresses.json"), net)?,
        dir: cli.dir,
        nodes,
        images,
        storage_class: cli.storage_class,
        cluster_domain: cli.cluster_domain,
        caches,
    });
    tracing::info!(nodes = agent.nodes.len(), api = %agent.api_url, "node agent starting");
    let runs = pods::Runs::default();
    let tasks = vec![
        tokio::spawn(nodes::run(agent.clone())),
        tokio::spawn(storage::run(agent.clone())),
        tokio::spawn(proxy::run(agent.clone())),
        tokio::spawn(pods::run(agent.clone(), runs.clone())),
    ];
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = futures::future::select_all(tasks) => {
            let (r, _, _) = r;
            bail!("a part of the node agent stopped: {r:?}");
        }
    }
    tracing::info!("stopping: every container gets SIGTERM");
    pods::stop_all(&runs).await;
    agent.addresses.release_all();
    Ok(())
}

fn parse_network(s: &str) -> anyhow::Result<[u8; 2]> {
    let usage =
        || format!("--pod-network {s}: expected 100.N with N in 64..=127 (pods get 100.N.x.y)");
    let Some(("100", n)) = s.split_once('.') else {
        bail!(usage());
    };
    match n.parse::<u8>() {
        Ok(n) if (64..=127).contains(&n) => Ok([100, n]),
        _ => bail!(usage()),
    }
}

/// `A.B` + index → a pod address (index 0 is A.B.0.1; .0 and .255 are skipped).
pub fn pod_ip(net: [u8; 2], index: u32) -> Ipv4Addr {
    let per = 254u32;
    let hi = index / per;
    let lo = index % per + 1;
    Ipv4Addr::new(net[0], net[1], (hi % 256) as u8, lo as u8)
}
