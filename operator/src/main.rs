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
        /// Namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "keystead-system")]
        lease_namespace: String,
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
        Command::Run { .. } => {
            anyhow::bail!(
                "the controllers are not implemented yet (see issue 6); `keystead-operator crdgen` works"
            )
        }
    }
}
