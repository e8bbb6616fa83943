//! The pool-side steps of the ceremony: download, exchange key (init recovery), upload,
//! status. The offline steps are in `sd.rs`.

use crate::client::{Output, PoolArgs, print_json};
use anyhow::Context;
use clap::Args;
use keystead_core::sd::CustodianKey;
use keystead_core::sd::wire::{SecurityDomainObject, TransferKey};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// A custodian certificate (PEM) or RSA public key; repeat 3 to 10 times.
    #[arg(long = "cert", value_name = "FILE", required = true)]
    pub certs: Vec<PathBuf>,
    /// How many custodian keys are needed to recover (2..number of certificates).
    #[arg(long)]
    pub quorum: u32,
    /// Where to write the security-domain file (must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExchangeKeyArgs {
    /// Where to write the exchange certificate (PEM); the transfer-key JSON goes beside it
    /// with a `.json` extension.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The transfer blob built with `kubectl hsm sd transfer`.
    #[arg(long, value_name = "FILE")]
    pub blob: PathBuf,
}

fn write_new(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub async fn download(pool: &PoolArgs, a: DownloadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.out.exists(),
        "{} exists; choose another file for the security domain",
        a.out.display()
    );
    let mut jwks = Vec::new();
    for path in &a.certs {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let key = CustodianKey::from_pem(&pem)
            .with_context(|| format!("{} is not a usable custodian certificate", path.display()))?;
        jwks.push(key.to_jwk()?);
    }
    let c = pool.client()?;
    let r: SecurityDomainObject = c
        .call(
            Method::POST,
            "/securitydomain/download",
            Some(&json!({"certificates": jwks, "required": a.quorum})),
        )
        .await?;
    write_new(&a.out, r.value.as_bytes())?;
    let summary = keystead_core::sd::inspect_domain_file(&r.value)?;
    let status: Value = c
        .call::<Value, _>(Method::GET, "/securitydomain/download/pending", None)
        .await?;
    if pool.output == Output::Json {
        return print_json(
            &json!({"file": a.out, "fingerprint": summary.fingerprint, "quorum": summary.quorum, "status": status["status"]}),
        );
    }
    println!("security domain written to {}", a.out.display());
    println!("fingerprint: {}", summary.fingerprint);
    println!(
        "quorum:      {} of {}",
        summary.quorum,
        summary.shares.len()
    );
    println!("pool status: {}", status["status"].as_str().unwrap_or("?"));
    println!("Keep the file and give each custodian's private key to its custodian only.");
    Ok(())
}

pub async fn exchange_key(pool: &PoolArgs, a: ExchangeKeyArgs) -> anyhow::Result<()> {
    let c = pool.client()?;
    let tk: TransferKey = c
        .call::<Value, _>(Method::GET, "/securitydomain/upload", None)
        .await?;
    let cert = keystead_core::sd::ExchangeCertificate::from_transfer_key_json(&tk.transfer_key)?;
    let pem = pem::encode(&pem::Pem::new(
        "CERTIFICATE",
        cert.certificate_der().to_vec(),
    ));
    write_new(&a.out, pem.as_bytes())?;
    let json_path = a.out.with_extension("json");
    write_new(&json_path, tk.transfer_key.as_bytes())?;
    if pool.output == Output::Json {
        return print_json(
            &json!({"certificate": a.out, "transferKey": json_path, "thumbprint": cert.thumbprint(), "poolId": cert.pool_id()}),
        );
    }
    println!("exchange certificate written to {}", a.out.display());
    println!("thumbprint: {}", cert.thumbprint());
    println!("pool id:    {}", cert.pool_id());
    println!(
        "Custodians now run, offline: kubectl hsm sd transfer --domain sd.json --key ... --exchange-key {} --out blob.json",
        a.out.display()
    );
    Ok(())
}

pub async fn upload(pool: &PoolArgs, a: UploadArgs) -> anyhow::Result<()> {
    let blob = std::fs::read_to_string(&a.blob)
        .with_context(|| format!("cannot read {}", a.blob.display()))?;
    let c = pool.client()?;
    let r: Value = c
        .call(
            Method::POST,
            "/securitydomain/upload",
            Some(&json!({"value": blob.trim()})),
        )
        .await?;
    let status: Value = c
        .call::<Value, _>(Method::GET, "/securitydomain/upload/pending", None)
        .await?;
    if pool.output == Output::Json {
        return print_json(&json!({"accepted": r, "status": status}));
    }
    println!("upload: {}", status["status"].as_str().unwrap_or("?"));
    if let Some(d) = status["status_details"].as_str() {
        println!("{d}");
    }
    Ok(())
}

pub async fn status(pool: &PoolArgs) -> anyhow::Result<()> {
    let c = pool.client()?;
    let s: keystead_core::status::PoolStatus = c
        .call::<Value, _>(Method::GET, "/admin/status", None)
        .await?;
    if pool.output == Output::Json {
        return print_json(&s);
    }
    println!("activation:  {:?}", s.activation);
    if let Some(fp) = &s.security_domain_fingerprint {
        println!("fingerprint: {fp}");
    }
    println!("domain held: {}", s.domain_loaded);
    Ok(())
}
