//! `keystead-operator`: the Keystead controller binary.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "keystead-operator",
    version,
    about = "Keystead operator: runs ManagedHsm pools of HSM partitions on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig or service account.
    Run {
        /// Address of the metrics and health endpoint.
        #[arg(long, default_value = "0.0.0.0:8080", env = "KEYSTEAD_METRICS_ADDR")]
        metrics_addr: String,
        /// Namespace of the leader-election Lease (and of the operator's ServiceAccount).
        #[arg(long, env = "POD_NAMESPACE", default_value = "keystead-system")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(
            long,
            env = "KEYSTEAD_LEASE_NAME",
            default_value = "keystead-operator-leader"
        )]
        lease_name: String,
        /// Identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME", default_value = "keystead-operator")]
        pod_name: String,
        /// The operator's own ServiceAccount: TokenRequest for the pools' audience, and the
        /// principal added to every pool's initial administrators.
        #[arg(long, env = "KEYSTEAD_SERVICE_ACCOUNT")]
        service_account: Option<String>,
        /// Cluster DNS domain.
        #[arg(long, env = "KEYSTEAD_CLUSTER_DOMAIN", default_value = "cluster.local")]
        cluster_domain: String,
        /// Issuer of the cluster's service-account tokens (what the partitions trust).
        #[arg(
            long,
            env = "KEYSTEAD_SERVICE_ACCOUNT_ISSUER",
            default_value = "https://kubernetes.default.svc.cluster.local"
        )]
        service_account_issuer: String,
        /// Let Backup and Restore destinations name loopback object stores (development
        /// and tests with local emulators). Never in a real cluster: there a loopback
        /// address reaches the partition's own services. Link-local is refused always.
        #[arg(long, env = "KEYSTEAD_ALLOW_LOOPBACK_STORAGE_ENDPOINTS")]
        allow_loopback_storage_endpoints: bool,
    },
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Output directories (each receives one YAML file per CRD). With none, print all
        /// CRDs to stdout as one multi-document YAML stream.
        #[arg(long = "out", value_name = "DIR")]
        out: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out } => {
            if out.is_empty() {
                for (_, text) in keystead_operator::crdgen::render_all()? {
                    print!("---\n{text}");
                }
            } else {
                for dir in out {
                    for file in keystead_operator::crdgen::write_all(&dir)? {
                        eprintln!("wrote {}", dir.join(file).display());
                    }
                }
            }
            Ok(())
        }
        Command::Run {
            metrics_addr,
            lease_namespace,
            lease_name,
            pod_name,
            service_account,
            cluster_domain,
            service_account_issuer,
            allow_loopback_storage_endpoints,
        } => {
            // JSON logs; the filter is KEYSTEAD_LOG, else RUST_LOG, else info
            // (keystead_core::log, the same for every binary).
            let filter =
                tracing_subscriber::EnvFilter::try_new(keystead_core::log::log_filter("info"))
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(keystead_operator::run::run(
                keystead_operator::run::RunOptions {
                    metrics_addr,
                    lease_namespace,
                    lease_name,
                    pod_name,
                    service_account,
                    cluster_domain,
                    service_account_issuer,
                    allow_loopback_storage_endpoints,
                },
            ))
        }
    }
}
