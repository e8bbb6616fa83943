//! `kubectl hsm audit ...`: audit-log tools.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::Output;
use keystead_core::audit::{CheckpointKey, VerifyOptions, verify_lines_with};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log file: every record unmodified, none deleted,
    /// inserted or reordered. Exits non-zero and names the first bad line otherwise.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The audit log (JSON lines, as written by a partition).
    pub file: PathBuf,
    /// The hash the last record must have (e.g. printed by an earlier verification); detects
    /// records removed from the end of the file.
    #[arg(long, value_name = "HASH")]
    pub expect_last_hash: Option<String>,
    /// Accept a log whose first record is not seq 1 (rotated by an external tool).
    #[arg(long)]
    pub allow_partial_start: bool,
    /// The certificate (PEM) of the partition that wrote the log (`p0/tls.crt` of a local
    /// pool; `tls.crt` of the partition in Kubernetes). Repeatable. With it, every signed
    /// checkpoint must verify: rewriting records before a checkpoint is detected without an
    /// anchor kept elsewhere.
    #[arg(long = "signer-cert", value_name = "PEM")]
    pub signer_certs: Vec<PathBuf>,
}

pub async fn run(cmd: AuditCommand, output: Output) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(args) => verify(&args, output),
    }
}

fn verify(args: &VerifyArgs, output: Output) -> anyhow::Result<()> {
    let file = File::open(&args.file)
        .with_context(|| format!("cannot open the audit log {}", args.file.display()))?;
    let mut checkpoint_keys = Vec::new();
    for path in &args.signer_certs {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the certificate {}", path.display()))?;
        checkpoint_keys.push(
            CheckpointKey::from_cert_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    let options = VerifyOptions {
        allow_partial_start: args.allow_partial_start,
        expect_last_hash: args.expect_last_hash.clone(),
        checkpoint_keys,
    };
    match verify_lines_with(BufReader::new(file), &options) {
        Ok(report) => {
            match output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "ok": true,
                        "file": args.file.display().to_string(),
                        "records": report.records,
                        "firstSeq": report.first_seq,
                        "lastSeq": report.last_seq,
                        "lastHash": report.last_hash,
                        "checkpoints": report.checkpoints,
                        "checkpointsVerified": report.checkpoints_verified,
                        "lastCheckpointSeq": report.last_checkpoint_seq,
                        "unsignedTail": report.unsigned_tail,
                    })
                ),
                Output::Text => {
                    println!("{}: chain intact", args.file.display());
                    println!("records:   {}", report.records);
                    let seq = |s: Option<u64>| s.map_or("-".to_owned(), |s| s.to_string());
                    println!("first seq: {}", seq(report.first_seq));
                    println!("last seq:  {}", seq(report.last_seq));
                    println!("last hash: {}", report.last_hash);
                    println!(
                        "checkpoints: {} ({} verified), last at seq {}; {} records after it are not covered by a signature",
                        report.checkpoints,
                        report.checkpoints_verified,
                        seq(report.last_checkpoint_seq),
                        report.unsigned_tail
                    );
                }
            }
            Ok(())
        }
        Err(e) => {
            if output == Output::Json {
                println!(
                    "{}",
                    json!({
                        "ok": false,
                        "file": args.file.display().to_string(),
                        "line": e.line,
                        "reason": e.reason,
                    })
                );
            }
            anyhow::bail!(
                "the audit chain of {} is broken at line {}: {}",
                args.file.display(),
                e.line,
                e.reason
            )
        }
    }
}
