//! `kubectl hsm sd ...`: the security-domain ceremony.
//!
//! The offline subcommands here (`keygen`, `transfer`, `rehearse`, `inspect`) never talk to a
//! cluster: run them on the custodians' offline machine. The format and the ceremony are
//! described in `docs/security-domain.md`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keystead_core::sd::{
    self, CustodianKey, CustodianPrivateKey, ExchangeCertificate, SdError, generate_custodian,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::client::{Output, PoolArgs, print_json};

#[derive(Subcommand, Debug)]
pub enum SdCommand {
    /// Generate a custodian key pair and self-signed certificate (offline):
    /// writes DIR/NAME.cer (certificate) and DIR/NAME.key (PKCS#8 private key, mode 0600).
    Keygen(KeygenArgs),
    /// Build the transfer (upload) blob offline from the domain file, at least quorum
    /// custodian private keys, and the pool's exchange key.
    Transfer(TransferArgs),
    /// Check offline that a set of private keys reaches the quorum of a domain file and
    /// opens it. Writes nothing; exits non-zero when the quorum is not reached.
    Rehearse(RehearseArgs),
    /// Show the public header of a domain file (or a transfer blob); no keys needed.
    Inspect(InspectArgs),
    /// Activate a pool (or re-protect an active one): send 3-10 custodian certificates and
    /// the quorum, save the returned security-domain file.
    Download(crate::sd_online::DownloadArgs),
    /// Start recovery: have the pool generate its one-time exchange key and save its
    /// certificate for the custodians.
    ExchangeKey(crate::sd_online::ExchangeKeyArgs),
    /// Upload the transfer blob the custodians built offline; the pool activates.
    Upload(crate::sd_online::UploadArgs),
    /// Show the pool's activation status and domain fingerprint.
    Status,
}

/// Where a private key's passphrase comes from. Both options may be repeated: every
/// encrypted key is tried with each passphrase given.
#[derive(Args, Debug, Default)]
pub struct PassphraseArgs {
    /// File holding a passphrase (first line; a trailing newline is ignored). Repeatable.
    #[arg(long = "passphrase-file", value_name = "FILE")]
    pub passphrase_files: Vec<PathBuf>,
    /// Environment variable holding a passphrase. Repeatable.
    #[arg(long = "passphrase-env", value_name = "VAR")]
    pub passphrase_envs: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Custodian name: used as the certificate subject and the file names.
    #[arg(long)]
    pub name: String,
    /// Directory for NAME.cer and NAME.key (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// RSA key size: 2048, 3072 or 4096.
    #[arg(long, default_value_t = 3072, value_parser = parse_bits)]
    pub bits: u32,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// The security-domain file (as downloaded).
    #[arg(long, value_name = "FILE")]
    pub domain: PathBuf,
    /// A custodian private key (PEM). Repeat for each key; at least the quorum.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// The pool's exchange key: its certificate (PEM) or the transfer-key JSON.
    #[arg(long, value_name = "FILE")]
    pub exchange_key: PathBuf,
    /// Where to write the transfer blob (must not exist; written with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RehearseArgs {
    /// The security-domain file.
    #[arg(long, value_name = "FILE")]
    pub domain: PathBuf,
    /// A custodian private key (PEM). Repeat for each key.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct InspectArgs {
    /// A security-domain file.
    #[arg(long, value_name = "FILE")]
    pub domain: Option<PathBuf>,
    /// A transfer blob.
    #[arg(long, value_name = "FILE")]
    pub blob: Option<PathBuf>,
}

pub async fn run(pool: &PoolArgs, cmd: SdCommand) -> anyhow::Result<()> {
    let output = pool.output;
    match cmd {
        SdCommand::Download(a) => crate::sd_online::download(pool, a).await,
        SdCommand::ExchangeKey(a) => crate::sd_online::exchange_key(pool, a).await,
        SdCommand::Upload(a) => crate::sd_online::upload(pool, a).await,
        SdCommand::Status => crate::sd_online::status(pool).await,
        SdCommand::Keygen(a) => keygen(a, output),
        SdCommand::Transfer(a) => transfer(a, output),
        SdCommand::Rehearse(a) => rehearse(a, output),
        SdCommand::Inspect(a) => inspect(a, output),
    }
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "2048" => Ok(2048),
        "3072" => Ok(3072),
        "4096" => Ok(4096),
        _ => Err("RSA key size must be 2048, 3072 or 4096".to_owned()),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn read_passphrases(p: &PassphraseArgs) -> anyhow::Result<Vec<Zeroizing<String>>> {
    let mut out = Vec::new();
    for f in &p.passphrase_files {
        let text = Zeroizing::new(
            fs::read_to_string(f)
                .with_context(|| format!("cannot read passphrase file {}", f.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("passphrase file {} is empty", f.display());
        }
        out.push(Zeroizing::new(line.to_owned()));
    }
    for var in &p.passphrase_envs {
        let v = Zeroizing::new(std::env::var(var).with_context(|| {
            format!("environment variable {var} (from --passphrase-env) is not set")
        })?);
        if v.is_empty() {
            bail!("environment variable {var} (from --passphrase-env) is empty");
        }
        out.push(v);
    }
    Ok(out)
}

/// Write a new file (never overwriting) with mode 0600 on Unix.
fn write_new_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_new(path, contents, 0o600)
}

/// Write a new file (never overwriting) with `mode` on Unix.
fn write_new(path: &Path, contents: &[u8], #[allow(unused)] mode: u32) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists: refusing to overwrite it; choose another path or move the old file away",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    let res = f.write_all(contents).and_then(|()| f.sync_all());
    if let Err(e) = res {
        let _ = fs::remove_file(path);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    Ok(())
}

fn refuse_existing(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists: refusing to overwrite it; choose another path or move the old file away",
            path.display()
        );
    }
    Ok(())
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn key_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Load private keys, trying each passphrase on encrypted ones. Labels are file names.
fn load_private_keys(
    paths: &[PathBuf],
    passphrases: &[Zeroizing<String>],
) -> anyhow::Result<Vec<CustodianPrivateKey>> {
    let mut keys = Vec::with_capacity(paths.len());
    for path in paths {
        let label = key_label(path);
        let text = Zeroizing::new(read_text(path, "private key")?);
        let key = if text.contains("ENCRYPTED PRIVATE KEY") && !passphrases.is_empty() {
            let mut last = None;
            let mut found = None;
            for p in passphrases {
                match CustodianPrivateKey::from_pem(&text, Some(p.as_str())) {
                    Ok(k) => {
                        found = Some(k);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (found, last) {
                (Some(k), _) => k,
                (None, Some(SdError::Passphrase(_))) => bail!(
                    "none of the {} passphrase(s) given opens {label}: check the passphrase",
                    passphrases.len()
                ),
                (None, Some(e)) => return Err(e).with_context(|| format!("key {label}")),
                (None, None) => bail!("no passphrase was tried for {label}"),
            }
        } else {
            CustodianPrivateKey::from_pem(&text, None).with_context(|| format!("key {label}"))?
        };
        keys.push(key.with_label(label));
    }
    Ok(keys)
}

#[derive(Serialize)]
struct KeygenOutput {
    name: String,
    certificate: String,
    private_key: String,
    thumbprint: String,
    public_key_thumbprint: String,
    bits: usize,
    encrypted: bool,
}

fn keygen(a: KeygenArgs, output: Output) -> anyhow::Result<()> {
    if !valid_name(&a.name) {
        bail!(
            "custodian name {:?} is invalid: use 1 to 64 characters from [A-Za-z0-9._-], not starting with '.'",
            a.name
        );
    }
    let passphrases = read_passphrases(&a.passphrase)?;
    if passphrases.len() > 1 {
        bail!("keygen takes at most one passphrase (--passphrase-file or --passphrase-env)");
    }
    let cert_path = a.out_dir.join(format!("{}.cer", a.name));
    let key_path = a.out_dir.join(format!("{}.key", a.name));
    refuse_existing(&cert_path)?;
    refuse_existing(&key_path)?;
    fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create directory {}", a.out_dir.display()))?;
    let (cert_pem, key_pem) =
        generate_custodian(&a.name, a.bits, passphrases.first().map(|p| p.as_str()))?;
    let public = CustodianKey::from_pem(&cert_pem)?;
    write_new_private(&key_path, key_pem.as_bytes())?;
    if let Err(e) = write_new(&cert_path, cert_pem.as_bytes(), 0o644) {
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    let out = KeygenOutput {
        name: a.name,
        certificate: cert_path.display().to_string(),
        private_key: key_path.display().to_string(),
        thumbprint: public.thumbprint().to_owned(),
        public_key_thumbprint: public.public_key_thumbprint().to_owned(),
        bits: public.bits(),
        encrypted: !passphrases.is_empty(),
    };
    if output == Output::Json {
        return print_json(&out);
    }
    println!("Custodian {} ({} bits)", out.name, out.bits);
    println!(
        "  certificate   {}  (give this one to the pool administrator)",
        out.certificate
    );
    println!(
        "  private key   {}  ({}; keep it offline)",
        out.private_key,
        if out.encrypted {
            "passphrase-protected"
        } else {
            "NOT passphrase-protected"
        }
    );
    println!("  thumbprint    {}", out.thumbprint);
    Ok(())
}

#[derive(Serialize)]
struct TransferOutput {
    out: String,
    domain_id: String,
    fingerprint: String,
    exchange_key_thumbprint: String,
    pool_id: String,
}

fn transfer(a: TransferArgs, output: Output) -> anyhow::Result<()> {
    refuse_existing(&a.out)?;
    let file = read_text(&a.domain, "security-domain file")?;
    let exchange_text = read_text(&a.exchange_key, "exchange key")?;
    let exchange = ExchangeCertificate::parse(&exchange_text)
        .with_context(|| format!("exchange key {}", a.exchange_key.display()))?;
    let passphrases = read_passphrases(&a.passphrase)?;
    let keys = load_private_keys(&a.keys, &passphrases)?;
    let blob = sd::build_transfer_blob(&file, &keys, &exchange)?;
    let summary = sd::inspect_transfer_blob(&blob)?;
    write_new_private(&a.out, blob.as_bytes())?;
    let out = TransferOutput {
        out: a.out.display().to_string(),
        domain_id: summary.domain_id,
        fingerprint: summary.fingerprint,
        exchange_key_thumbprint: summary.exchange_thumbprint,
        pool_id: summary.pool_id,
    };
    if output == Output::Json {
        return print_json(&out);
    }
    println!("Transfer blob written to {}", out.out);
    println!("  domain          {}", out.domain_id);
    println!("  fingerprint     {}", out.fingerprint);
    println!("  for pool        {}", out.pool_id);
    println!("  exchange key    {}", out.exchange_key_thumbprint);
    println!(
        "Check that the pool and exchange-key thumbprint match what the pool publishes before uploading."
    );
    Ok(())
}

fn rehearse(a: RehearseArgs, output: Output) -> anyhow::Result<()> {
    let file = read_text(&a.domain, "security-domain file")?;
    let passphrases = read_passphrases(&a.passphrase)?;
    let keys = load_private_keys(&a.keys, &passphrases)?;
    let report = sd::rehearse(&file, &keys).context("rehearsal failed")?;
    if output == Output::Json {
        return print_json(&report);
    }
    println!(
        "Quorum reached: {} key(s) open security domain {}",
        report.matched.len(),
        report.domain_id
    );
    println!("  fingerprint   {}", report.fingerprint);
    println!(
        "  quorum        {} of {} shares",
        report.quorum, report.shares
    );
    for m in &report.matched {
        println!("  matched       {}  ->  share {}", m.key, m.thumbprint);
    }
    Ok(())
}

fn inspect(a: InspectArgs, output: Output) -> anyhow::Result<()> {
    if let Some(path) = a.blob {
        let text = read_text(&path, "transfer blob")?;
        let s = sd::inspect_transfer_blob(&text)?;
        if output == Output::Json {
            return print_json(&s);
        }
        println!("Transfer blob   {}", path.display());
        println!("  domain        {}", s.domain_id);
        println!("  fingerprint   {}", s.fingerprint);
        println!("  for pool      {}", s.pool_id);
        println!("  exchange key  {}", s.exchange_thumbprint);
        return Ok(());
    }
    let Some(path) = a.domain else {
        bail!("give --domain FILE or --blob FILE");
    };
    let text = read_text(&path, "security-domain file")?;
    let s = sd::inspect_domain_file(&text)?;
    if output == Output::Json {
        return print_json(&s);
    }
    println!("Security domain {}", s.domain_id);
    println!("  fingerprint   {}", s.fingerprint);
    println!("  version       {}", s.version);
    println!("  origin pool   {}", s.origin_pool);
    println!("  created       {} (Unix seconds)", s.created);
    println!("  quorum        {} of {}", s.quorum, s.shares.len());
    for (i, share) in s.shares.iter().enumerate() {
        println!("  custodian {:<3} {}", i + 1, share.thumbprint);
    }
    println!("(header only: integrity is verified by `rehearse` with the custodian keys)");
    Ok(())
}
