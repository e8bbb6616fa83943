//! `kubectl hsm key ...`: key operations against a pool.

use crate::client::{Output, PoolArgs, print_json};
use anyhow::Context;
use clap::Subcommand;
use keystead_core::b64;
use keystead_core::keys::{
    BackupKeyResult, DeletedKeyBundle, KeyBundle, KeyItem, KeyListResult, KeyOperationResult,
    KeyVerifyResult,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key: RSA (2048/3072/4096), EC (P-256, P-384, P-521, P-256K) or oct (128/192/256).
    Create {
        name: String,
        /// RSA, EC or oct (the -HSM suffix is implied).
        #[arg(long)]
        kty: String,
        /// Key size in bits (RSA, oct).
        #[arg(long)]
        size: Option<u32>,
        /// Curve (EC).
        #[arg(long)]
        curve: Option<String>,
        /// Allowed operations (repeat), e.g. --op sign --op verify.
        #[arg(long = "op")]
        ops: Vec<String>,
        /// Tags as key=value (repeat).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List keys.
    List,
    /// Show a key (public parts and attributes).
    Show {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Sign: the digest is computed here from --data-file, or given with --digest (base64url).
    Sign {
        name: String,
        #[arg(long)]
        alg: String,
        #[arg(long, conflicts_with = "digest")]
        data_file: Option<PathBuf>,
        #[arg(long, allow_hyphen_values = true)]
        digest: Option<String>,
        #[arg(long)]
        version: Option<String>,
    },
    /// Verify a signature (base64url) over a digest or a file's digest.
    Verify {
        name: String,
        #[arg(long)]
        alg: String,
        #[arg(long, conflicts_with = "digest")]
        data_file: Option<PathBuf>,
        #[arg(long, allow_hyphen_values = true)]
        digest: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        signature: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Encrypt a base64url value (AES-GCM answers include iv and tag).
    Encrypt(CipherArgs),
    /// Decrypt a base64url value.
    Decrypt(CipherArgs),
    /// Wrap a key (base64url).
    Wrap(CipherArgs),
    /// Unwrap a key (base64url).
    Unwrap(CipherArgs),
    /// Delete a key (soft delete: recoverable for the retention period).
    Delete { name: String },
    /// Recover a soft-deleted key.
    Recover { name: String },
    /// Purge a soft-deleted key for good (refused while purge protection holds it).
    Purge { name: String },
    /// Back up a key (all versions) to an opaque, domain-bound blob file.
    Backup {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a key from a backup blob file (only into a pool with the same security domain).
    Restore {
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Create a new version of a key.
    Rotate { name: String },
}

#[derive(clap::Args, Debug)]
pub struct CipherArgs {
    pub name: String,
    #[arg(long)]
    pub alg: String,
    /// The input, base64url.
    #[arg(long, allow_hyphen_values = true)]
    pub value: String,
    /// The IV, base64url: for decrypt, and for AES-CBC encrypt. AES-GCM encrypt takes none
    /// (the HSM generates it and returns it with the tag).
    #[arg(long, allow_hyphen_values = true)]
    pub iv: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub aad: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub tag: Option<String>,
    #[arg(long)]
    pub version: Option<String>,
}

fn digest_alg(alg: &str) -> anyhow::Result<&'static aws_lc_rs::digest::Algorithm> {
    Ok(match alg {
        "RS256" | "PS256" | "ES256" | "ES256K" => &aws_lc_rs::digest::SHA256,
        "RS384" | "PS384" | "ES384" => &aws_lc_rs::digest::SHA384,
        "RS512" | "PS512" | "ES512" => &aws_lc_rs::digest::SHA512,
        other => anyhow::bail!("unknown signature algorithm '{other}'"),
    })
}

fn digest_of(alg: &str, file: &Option<PathBuf>, digest: &Option<String>) -> anyhow::Result<String> {
    match (file, digest) {
        (Some(f), _) => {
            let data = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            Ok(b64::encode_url(aws_lc_rs::digest::digest(
                digest_alg(alg)?,
                &data,
            )))
        }
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => anyhow::bail!("give --data-file (hashed here) or --digest (base64url)"),
    }
}

fn vpath(name: &str, version: &Option<String>, op: &str) -> String {
    format!("/keys/{name}/{}/{op}", version.as_deref().unwrap_or(""))
}

fn print_key(out: Output, k: &KeyBundle) -> anyhow::Result<()> {
    if out == Output::Json {
        return print_json(k);
    }
    let key = k.key.clone().unwrap_or_default();
    println!("kid:      {}", key.kid.as_deref().unwrap_or(""));
    println!("kty:      {}", key.kty.as_deref().unwrap_or(""));
    if let Some(c) = &key.crv {
        println!("curve:    {c}");
    }
    if let Some(n) = &key.n {
        println!("size:     {} bits", n.as_bytes().len() * 8);
    }
    println!(
        "key_ops:  {}",
        key.key_ops.clone().unwrap_or_default().join(", ")
    );
    println!(
        "enabled:  {}",
        k.attributes
            .as_ref()
            .and_then(|a| a.enabled)
            .unwrap_or(true)
    );
    if let Some(t) = &k.tags {
        for (a, b) in t {
            println!("tag:      {a}={b}");
        }
    }
    Ok(())
}

pub async fn run(pool: &PoolArgs, cmd: KeyCommand) -> anyhow::Result<()> {
    let c = pool.client()?;
    let out = pool.output;
    match cmd {
        KeyCommand::Create {
            name,
            kty,
            size,
            curve,
            ops,
            tags,
        } => {
            let kty = match kty.to_ascii_uppercase().as_str() {
                "RSA" | "RSA-HSM" => "RSA-HSM",
                "EC" | "EC-HSM" => "EC-HSM",
                "OCT" | "OCT-HSM" => "oct-HSM",
                other => anyhow::bail!("unknown key type '{other}': use RSA, EC or oct"),
            };
            let mut tagmap = BTreeMap::new();
            for t in tags {
                let (k, v) = t.split_once('=').context("tags are key=value")?;
                tagmap.insert(k.to_string(), v.to_string());
            }
            let mut body = json!({"kty": kty});
            if let Some(s) = size {
                body["key_size"] = json!(s);
            }
            if let Some(cv) = curve {
                body["crv"] = json!(cv);
            }
            if !ops.is_empty() {
                body["key_ops"] = json!(ops);
            }
            if !tagmap.is_empty() {
                body["tags"] = json!(tagmap);
            }
            let k: KeyBundle = c
                .call(Method::POST, &format!("/keys/{name}/create"), Some(&body))
                .await?;
            print_key(out, &k)
        }
        KeyCommand::List => {
            let mut path = "/keys?maxresults=25".to_string();
            let mut all: Vec<KeyItem> = Vec::new();
            loop {
                let page: KeyListResult<KeyItem> =
                    c.call::<Value, _>(Method::GET, &path, None).await?;
                all.extend(page.value);
                match page.next_link {
                    Some(next) => {
                        path = next
                            .strip_prefix(&c.endpoint)
                            .map(str::to_string)
                            .context("nextLink points to another host")?;
                    }
                    None => break,
                }
            }
            if out == Output::Json {
                return print_json(&all);
            }
            for k in all {
                let kid = k.kid.clone().unwrap_or_default();
                let name = kid.rsplit('/').next().unwrap_or("");
                let enabled = k
                    .attributes
                    .as_ref()
                    .and_then(|a| a.enabled)
                    .unwrap_or(true);
                println!("{name}\tenabled={enabled}");
            }
            Ok(())
        }
        KeyCommand::Show { name, version } => {
            let path = format!("/keys/{name}/{}", version.unwrap_or_default());
            let k: KeyBundle = c.call::<Value, _>(Method::GET, &path, None).await?;
            print_key(out, &k)
        }
        KeyCommand::Sign {
            name,
            alg,
            data_file,
            digest,
            version,
        } => {
            let d = digest_of(&alg, &data_file, &digest)?;
            let r: KeyOperationResult = c
                .call(
                    Method::POST,
                    &vpath(&name, &version, "sign"),
                    Some(&json!({"alg": alg, "value": d})),
                )
                .await?;
            if out == Output::Json {
                return print_json(&r);
            }
            println!(
                "{}",
                r.value
                    .map(|v| b64::encode_url(v.as_bytes()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        KeyCommand::Verify {
            name,
            alg,
            data_file,
            digest,
            signature,
            version,
        } => {
            let d = digest_of(&alg, &data_file, &digest)?;
            let r: KeyVerifyResult = c
                .call(
                    Method::POST,
                    &vpath(&name, &version, "verify"),
                    Some(&json!({"alg": alg, "digest": d, "value": signature})),
                )
                .await?;
            if out == Output::Json {
                print_json(&r)?;
            } else {
                println!("{}", if r.value { "valid" } else { "INVALID" });
            }
            if !r.value {
                anyhow::bail!("the signature does not verify");
            }
            Ok(())
        }
        KeyCommand::Encrypt(a) => cipher(&c, out, a, "encrypt").await,
        KeyCommand::Decrypt(a) => cipher(&c, out, a, "decrypt").await,
        KeyCommand::Wrap(a) => cipher(&c, out, a, "wrapkey").await,
        KeyCommand::Unwrap(a) => cipher(&c, out, a, "unwrapkey").await,
        KeyCommand::Delete { name } => {
            let d: DeletedKeyBundle = c
                .call::<Value, _>(Method::DELETE, &format!("/keys/{name}"), None)
                .await?;
            if out == Output::Json {
                return print_json(&d);
            }
            println!(
                "deleted {name}; recoverable until {} (Unix seconds) with `kubectl hsm key recover {name}`",
                d.scheduled_purge_date.unwrap_or(0)
            );
            Ok(())
        }
        KeyCommand::Recover { name } => {
            let k: KeyBundle = c
                .call::<Value, _>(Method::POST, &format!("/deletedkeys/{name}/recover"), None)
                .await?;
            print_key(out, &k)
        }
        KeyCommand::Purge { name } => {
            c.raw::<Value>(Method::DELETE, &format!("/deletedkeys/{name}"), None)
                .await?;
            if out == Output::Json {
                return print_json(&json!({"purged": name}));
            }
            println!("purged {name}");
            Ok(())
        }
        KeyCommand::Backup { name, out: file } => {
            anyhow::ensure!(
                !file.exists(),
                "{} exists; choose another file",
                file.display()
            );
            let r: BackupKeyResult = c
                .call::<Value, _>(Method::POST, &format!("/keys/{name}/backup"), None)
                .await?;
            std::fs::write(&file, b64::encode_url(r.value.as_bytes()))?;
            if out == Output::Json {
                return print_json(&json!({"key": name, "file": file}));
            }
            println!("backed up {name} to {}", file.display());
            Ok(())
        }
        KeyCommand::Restore { input } => {
            let blob = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let k: KeyBundle = c
                .call(
                    Method::POST,
                    "/keys/restore",
                    Some(&json!({"value": blob.trim()})),
                )
                .await?;
            print_key(out, &k)
        }
        KeyCommand::Rotate { name } => {
            let k: KeyBundle = c
                .call::<Value, _>(Method::POST, &format!("/keys/{name}/rotate"), None)
                .await?;
            print_key(out, &k)
        }
    }
}

async fn cipher(
    c: &crate::client::Client,
    out: Output,
    a: CipherArgs,
    op: &str,
) -> anyhow::Result<()> {
    let mut body = json!({"alg": a.alg, "value": a.value});
    for (k, v) in [("iv", &a.iv), ("aad", &a.aad), ("tag", &a.tag)] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let r: KeyOperationResult = c
        .call(Method::POST, &vpath(&a.name, &a.version, op), Some(&body))
        .await?;
    if out == Output::Json {
        return print_json(&r);
    }
    println!(
        "value: {}",
        r.value
            .map(|v| b64::encode_url(v.as_bytes()))
            .unwrap_or_default()
    );
    if let Some(iv) = r.iv {
        println!("iv:    {}", b64::encode_url(iv.as_bytes()));
    }
    if let Some(tag) = r.tag {
        println!("tag:   {}", b64::encode_url(tag.as_bytes()));
    }
    Ok(())
}
